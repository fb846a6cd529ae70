//! Which checkpoints belong to a pod: its checkpoint identity.
//!
//! The local store groups a container's checkpoints under
//! `namespace/<identity>/container`. Pods made by a controller get a new name
//! on every retry (a Job's `myjob-x7k2q`, a Deployment's, a workflow engine's),
//! so keyed by the pod name, `restore-from: latest` in the retried pod would
//! find nothing. The identity is, first match wins:
//!
//! 1. the pod annotation `lazarus.dev/checkpoint-name` (any controller, or a
//!    person who wants two pods to share a history);
//! 2. a Job's pod: its `batch.kubernetes.io/job-name` label (or the older
//!    `job-name`), with `-<index>` for Indexed Jobs
//!    (`batch.kubernetes.io/job-completion-index`), so the pods of one index
//!    share a history and different indexes never mix;
//! 3. the pod's name — stable for StatefulSet pods and hand-made pods.
//!
//! The namespace is always part of the key: an identity never reaches into
//! another namespace.

use std::collections::HashMap;

use crate::annotations::CHECKPOINT_NAME;

/// A Job's pods carry the Job's name in this label (Kubernetes ≥ 1.27).
pub const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";
/// The label older Kubernetes versions set on a Job's pods.
pub const LEGACY_JOB_NAME_LABEL: &str = "job-name";
/// An Indexed Job's pods carry their completion index in this label (and annotation).
pub const JOB_COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";

/// Where an identity came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The `lazarus.dev/checkpoint-name` annotation.
    Annotation,
    /// The pod's Job (label).
    Job,
    /// The pod's name.
    PodName,
}

impl Source {
    /// For logs and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Annotation => "annotation",
            Source::Job => "job",
            Source::PodName => "pod-name",
        }
    }
}

/// A pod's checkpoint identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The name checkpoints are grouped under (in place of the pod name).
    pub name: String,
    /// Where it came from.
    pub source: Source,
}

/// Why an identity annotation cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "annotation {CHECKPOINT_NAME}={value:?} is not a valid checkpoint name: {reason} \
     (use 1-253 characters of a-z, 0-9, '-' and '.', starting and ending with a letter or digit)"
)]
pub struct IdentityError {
    /// The annotation's value.
    pub value: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// The checkpoint identity of a pod named `pod_name` with these labels and annotations.
pub fn identity(
    pod_name: &str,
    labels: &HashMap<String, String>,
    annotations: &HashMap<String, String>,
) -> Result<Identity, IdentityError> {
    if let Some(value) = annotations.get(CHECKPOINT_NAME) {
        validate(value).map_err(|reason| IdentityError { value: value.clone(), reason })?;
        return Ok(Identity { name: value.clone(), source: Source::Annotation });
    }
    let job = [JOB_NAME_LABEL, LEGACY_JOB_NAME_LABEL]
        .iter()
        .filter_map(|label| labels.get(*label))
        .find(|name| validate(name).is_ok());
    if let Some(job) = job {
        let index = labels
            .get(JOB_COMPLETION_INDEX)
            .or_else(|| annotations.get(JOB_COMPLETION_INDEX))
            .filter(|index| !index.is_empty() && index.bytes().all(|b| b.is_ascii_digit()));
        let name = match index {
            Some(index) => format!("{job}-{index}"),
            None => job.clone(),
        };
        return Ok(Identity { name, source: Source::Job });
    }
    Ok(Identity { name: pod_name.to_owned(), source: Source::PodName })
}

/// A DNS-1123 subdomain, as Kubernetes object names are: it is one segment
/// of the store's `namespace/name/container` keys and of file names.
fn validate(value: &str) -> Result<(), &'static str> {
    if value.is_empty() {
        return Err("it is empty");
    }
    if value.len() > 253 {
        return Err("it is longer than 253 characters");
    }
    if !value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.') {
        return Err("it has a character other than a-z, 0-9, '-' and '.'");
    }
    let edge_ok = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !edge_ok(value.bytes().next()) || !edge_ok(value.bytes().last()) {
        return Err("it must start and end with a letter or digit");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn the_annotation_wins_over_labels_and_name() {
        let labels = map(&[(JOB_NAME_LABEL, "assembly")]);
        let annotations = map(&[(CHECKPOINT_NAME, "genome-run-7")]);
        let id = identity("assembly-x7k2q", &labels, &annotations).expect("identity");
        assert_eq!(id, Identity { name: "genome-run-7".into(), source: Source::Annotation });
    }

    #[test]
    fn a_job_pod_is_known_by_its_job_and_index() {
        let id = identity("assembly-x7k2q", &map(&[(JOB_NAME_LABEL, "assembly")]), &map(&[])).expect("identity");
        assert_eq!(id, Identity { name: "assembly".into(), source: Source::Job });
        let id = identity("old-abcde", &map(&[(LEGACY_JOB_NAME_LABEL, "old")]), &map(&[])).expect("identity");
        assert_eq!(id.name, "old");
        let labels = map(&[(JOB_NAME_LABEL, "shards"), (JOB_COMPLETION_INDEX, "3")]);
        assert_eq!(identity("shards-3-zz9", &labels, &map(&[])).expect("identity").name, "shards-3");
        // The index as an annotation only (older clusters), and a malformed one ignored.
        let id =
            identity("s", &map(&[(JOB_NAME_LABEL, "s")]), &map(&[(JOB_COMPLETION_INDEX, "12")])).expect("identity");
        assert_eq!(id.name, "s-12");
        let labels = map(&[(JOB_NAME_LABEL, "s"), (JOB_COMPLETION_INDEX, "../x")]);
        assert_eq!(identity("s", &labels, &map(&[])).expect("identity").name, "s");
    }

    #[test]
    fn other_pods_are_known_by_their_name() {
        let id = identity("postgres-0", &map(&[("app", "db")]), &map(&[])).expect("identity");
        assert_eq!(id, Identity { name: "postgres-0".into(), source: Source::PodName });
        // A job label that could not be a name does not become a key segment.
        let id = identity("p", &map(&[(JOB_NAME_LABEL, "a/b")]), &map(&[])).expect("identity");
        assert_eq!(id.source, Source::PodName);
    }

    #[test]
    fn malformed_annotations_are_refused_with_the_rule() {
        for (value, reason) in [
            ("", "it is empty"),
            ("a/b", "it has a character other than a-z, 0-9, '-' and '.'"),
            ("Run", "it has a character other than a-z, 0-9, '-' and '.'"),
            ("-run", "it must start and end with a letter or digit"),
            ("..", "it must start and end with a letter or digit"),
        ] {
            let err = identity("p", &map(&[]), &map(&[(CHECKPOINT_NAME, value)])).expect_err("refused");
            assert_eq!(err.reason, reason, "{value:?}");
            assert!(err.to_string().contains(CHECKPOINT_NAME), "{err}");
        }
        let long = "a".repeat(254);
        assert!(identity("p", &map(&[]), &map(&[(CHECKPOINT_NAME, &long)])).is_err());
        assert!(identity("p", &map(&[]), &map(&[(CHECKPOINT_NAME, &"a".repeat(253))])).is_ok());
    }
}
