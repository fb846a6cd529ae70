//! Error text with its causes, the one way lazarus words a chained error.

use std::error::Error as StdError;

/// `err` and its sources joined with `: `, a cause that is already part of the
/// text before it not repeated (many errors print their source themselves).
pub fn chain(err: &(dyn StdError + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("reading the plan")]
    struct Outer(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("reading the plan: {0}")]
    struct Repeats(#[source] std::io::Error);

    #[test]
    fn causes_are_joined_once() {
        let cause = || std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        assert_eq!(chain(&Outer(cause())), "reading the plan: no such file");
        assert_eq!(chain(&Repeats(cause())), "reading the plan: no such file");
    }
}
