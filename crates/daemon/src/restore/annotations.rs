//! The pod annotations that ask for a restore, parsed by pure functions.

use std::collections::HashMap;

/// Pod annotation: restore every container of the pod from this checkpoint.
pub const RESTORE_FROM: &str = "lazarus.dev/restore-from";
/// Pod annotation prefix: `lazarus.dev/restore-from.<container-name>` restores one container.
pub const RESTORE_FROM_PREFIX: &str = "lazarus.dev/restore-from.";
/// Pod annotation: `required` or `best-effort`.
pub const RESTORE_POLICY: &str = "lazarus.dev/restore-policy";
/// The value of `restore-from` that means "the newest valid checkpoint of this container".
pub const LATEST: &str = "latest";

/// What to do when no checkpoint can be restored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// The container is not created fresh: `CreateContainer` fails, saying why.
    Required,
    /// Older checkpoints are tried, then the container starts fresh; each step logged.
    BestEffort,
}

impl Policy {
    /// The annotation value.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Required => "required",
            Policy::BestEffort => "best-effort",
        }
    }
}

/// Where a container's checkpoint comes from, as the pod wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wanted {
    /// `latest`: the newest valid checkpoint of this container.
    Latest,
    /// An explicit reference: an OCI reference, a `local:` store reference or an archive path.
    Reference(String),
}

/// One container's restore request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreRequest {
    /// The annotation it came from (for messages).
    pub annotation: String,
    /// What to restore.
    pub wanted: Wanted,
    /// What to do when it cannot be restored.
    pub policy: Policy,
}

/// A restore annotation lazarus cannot act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {annotation}={value:?} rejected: {reason}")]
pub struct AnnotationError {
    /// The annotation key.
    pub annotation: String,
    /// Its value.
    pub value: String,
    /// Why it was rejected.
    pub reason: String,
}

/// Whether any annotation of the pod asks for a restore (then its sandbox must
/// run with lazarus's runtime handler).
pub fn pod_wants_restore(annotations: &HashMap<String, String>) -> bool {
    annotations.keys().any(|k| k == RESTORE_FROM || k.starts_with(RESTORE_FROM_PREFIX))
}

/// The restore request for `container` of a pod with `annotations`: the
/// container's own `restore-from.<name>` wins over the pod-wide `restore-from`.
/// `Ok(None)` when the pod does not ask for one.
pub fn request_for(
    annotations: &HashMap<String, String>,
    container: &str,
) -> Result<Option<RestoreRequest>, AnnotationError> {
    let own = format!("{RESTORE_FROM_PREFIX}{container}");
    let Some((key, value)) =
        annotations.get_key_value(own.as_str()).or_else(|| annotations.get_key_value(RESTORE_FROM))
    else {
        return Ok(None);
    };
    let reject =
        |reason: &str| AnnotationError { annotation: key.clone(), value: value.clone(), reason: reason.to_owned() };
    let trimmed = value.trim();
    let wanted = if trimmed.is_empty() {
        return Err(reject("empty; expected \"latest\", an image reference, local:… or an archive path"));
    } else if trimmed == LATEST {
        Wanted::Latest
    } else if trimmed.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(reject("a checkpoint reference has no whitespace"));
    } else {
        Wanted::Reference(trimmed.to_owned())
    };
    let policy = match annotations.get(RESTORE_POLICY).map(|v| v.trim()) {
        None | Some("") => match wanted {
            Wanted::Latest => Policy::BestEffort,
            Wanted::Reference(_) => Policy::Required,
        },
        Some("required") => Policy::Required,
        Some("best-effort") => Policy::BestEffort,
        Some(other) => {
            return Err(AnnotationError {
                annotation: RESTORE_POLICY.to_owned(),
                value: other.to_owned(),
                reason: "expected \"required\" or \"best-effort\"".to_owned(),
            });
        }
    };
    Ok(Some(RestoreRequest { annotation: key.clone(), wanted, policy }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn no_annotation_no_restore() {
        assert_eq!(request_for(&pod(&[("other", "x")]), "app"), Ok(None));
        assert!(!pod_wants_restore(&pod(&[("lazarus.dev/checkpoint-interval", "1m")])));
    }

    #[test]
    fn latest_defaults_to_best_effort_and_references_to_required() {
        let latest = request_for(&pod(&[(RESTORE_FROM, "latest")]), "app").unwrap_or_default();
        assert_eq!(latest.map(|r| (r.wanted, r.policy)), Some((Wanted::Latest, Policy::BestEffort)));
        let explicit = request_for(&pod(&[(RESTORE_FROM, " reg.example/a/b:t ")]), "app").unwrap_or_default();
        assert_eq!(
            explicit.map(|r| (r.wanted, r.policy)),
            Some((Wanted::Reference("reg.example/a/b:t".into()), Policy::Required))
        );
    }

    #[test]
    fn the_container_annotation_wins_and_others_are_untouched() {
        let annotations = pod(&[(RESTORE_FROM, "latest"), ("lazarus.dev/restore-from.db", "local:ns/p/db")]);
        let db = request_for(&annotations, "db").unwrap_or_default().map(|r| r.wanted);
        assert_eq!(db, Some(Wanted::Reference("local:ns/p/db".into())));
        let app = request_for(&annotations, "app").unwrap_or_default().map(|r| r.wanted);
        assert_eq!(app, Some(Wanted::Latest));
        let only_db = pod(&[("lazarus.dev/restore-from.db", "latest")]);
        assert_eq!(request_for(&only_db, "app"), Ok(None));
        assert!(pod_wants_restore(&only_db));
    }

    #[test]
    fn policy_can_be_overridden_and_bad_values_name_the_annotation() {
        let annotations = pod(&[(RESTORE_FROM, "latest"), (RESTORE_POLICY, "required")]);
        assert_eq!(request_for(&annotations, "a").unwrap_or_default().map(|r| r.policy), Some(Policy::Required));
        let err = request_for(&pod(&[(RESTORE_FROM, "latest"), (RESTORE_POLICY, "maybe")]), "a").err();
        assert!(err.is_some_and(|e| e.to_string().contains("lazarus.dev/restore-policy=\"maybe\"")));
        let err = request_for(&pod(&[(RESTORE_FROM, "  ")]), "a").err();
        assert!(err.is_some_and(|e| e.annotation == RESTORE_FROM && e.reason.contains("empty")));
        let err = request_for(&pod(&[(RESTORE_FROM, "a b")]), "a").err();
        assert!(err.is_some_and(|e| e.reason.contains("whitespace")));
    }
}
