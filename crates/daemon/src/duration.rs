//! Go-style durations (`"90s"`, `"30m"`, `"1h30m"`, `"1.5h"`, `"250ms"`), the
//! syntax Kubernetes users already write in manifests and configs.

use std::time::Duration;

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason} (expected e.g. \"30s\", \"15m\", \"1h30m\")")]
pub struct DurationError {
    /// The text that was rejected.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Parses a Go-style duration. Units: `ns`, `us`/`µs`, `ms`, `s`, `m`, `h`.
/// Negative durations and a bare number other than `0` are rejected.
pub fn parse(input: &str) -> Result<Duration, DurationError> {
    let err = |reason| DurationError { input: input.to_owned(), reason };
    let s = input.trim();
    if s.is_empty() {
        return Err(err("empty"));
    }
    if s.starts_with('-') {
        return Err(err("negative durations are not allowed"));
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = s;
    let mut total_nanos: f64 = 0.0;
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if number_len == 0 {
            return Err(err("expected a number"));
        }
        let value: f64 = rest[..number_len].parse().map_err(|_| err("malformed number"))?;
        rest = &rest[number_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let nanos_per_unit = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => return Err(err("missing unit")),
            _ => return Err(err("unknown unit")),
        };
        rest = &rest[unit_len..];
        total_nanos += value * nanos_per_unit;
    }
    if !total_nanos.is_finite() || total_nanos > u64::MAX as f64 {
        return Err(err("too large"));
    }
    Ok(Duration::from_nanos(total_nanos.round() as u64))
}

/// Formats a duration the way [`parse`] reads it back (`"1h30m"`, `"250ms"`).
pub fn format(d: Duration) -> String {
    if d.is_zero() {
        return "0s".to_owned();
    }
    if d.subsec_nanos() != 0 && d.as_secs() == 0 {
        return if d.subsec_nanos().is_multiple_of(1_000_000) {
            format!("{}ms", d.subsec_millis())
        } else {
            format!("{}ns", d.subsec_nanos())
        };
    }
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || d.subsec_nanos() != 0 {
        if d.subsec_millis() != 0 {
            out.push_str(&format!("{s}.{:03}s", d.subsec_millis()));
        } else {
            out.push_str(&format!("{s}s"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("10us"), Ok(Duration::from_micros(10)));
        assert_eq!(parse("10µs"), Ok(Duration::from_micros(10)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert_eq!(parse(" 2h "), Ok(Duration::from_secs(7200)));
    }

    #[test]
    fn rejects_malformed_durations_with_reason() {
        for (input, reason) in [
            ("", "empty"),
            ("30", "missing unit"),
            ("-5m", "negative durations are not allowed"),
            ("5 minutes", "unknown unit"),
            ("m", "expected a number"),
            ("1..5s", "malformed number"),
            ("5d", "unknown unit"),
        ] {
            let e = parse(input).expect_err(input);
            assert_eq!(e.reason, reason, "{input}");
            assert!(e.to_string().contains(&format!("{input:?}")));
        }
    }

    #[test]
    fn format_round_trips() {
        for d in [
            Duration::from_secs(5400),
            Duration::from_secs(30),
            Duration::from_millis(250),
            Duration::from_millis(1500),
            Duration::ZERO,
        ] {
            assert_eq!(parse(&format(d)), Ok(d), "{}", format(d));
        }
        assert_eq!(format(Duration::from_secs(5400)), "1h30m");
    }
}
