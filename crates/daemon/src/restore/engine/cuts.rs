//! Every container of a pod from the same pod cut.
//!
//! The checkpoints of a pod's containers taken in one cut share a time tag
//! and list the cut's containers in `lazarus.dev/pod-cut`
//! (`checkpoint::pod_cut`). kubelet creates a pod's containers one after the
//! other, each with its own `CreateContainer`; for `latest`:
//!
//! - the first of them takes its newest usable checkpoint whose cut is
//!   complete (every other container of the cut that is restored from
//!   `latest` has a checkpoint of the same tag where it would look for one);
//!   an incomplete cut is skipped like an unusable checkpoint. The choice is
//!   recorded for the pod sandbox;
//! - the others take their checkpoint of that cut and no other: a container
//!   without one is refused (`NoneUsable`, then the pod's restore policy), it
//!   never comes back from another instant than its siblings;
//! - pod-scoped data (`/dev/shm`, `emptyDir`s) is put back once: a container
//!   restored after a sibling of the same cut has started leaves what the
//!   sibling put back (and has written since) as it is (`Plan::skip_pod_data`).
//!
//! The choice binds once another container has been created from it; a first
//! container whose restore failed before any sibling used the cut chooses
//! again on kubelet's retry. The record lives in memory: after a lazarus
//! restart the same rule picks the same cut from the same checkpoints.

use super::*;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

/// How long a sandbox's chosen cut is remembered.
const MEMORY: Duration = Duration::from_secs(24 * 3600);

/// The cut a pod sandbox's containers are restored from.
#[derive(Debug, Clone)]
pub(super) struct ChosenCut {
    /// The time tag the cut's checkpoints share.
    pub(super) tag: String,
    /// The cut's container names.
    pub(super) members: Vec<String>,
    /// Containers created from it, by container id: (name, host paths of its mounts).
    created: HashMap<String, (String, Vec<String>)>,
    /// Names of the containers restored from it (StartContainer succeeded).
    restored: HashSet<String>,
    /// Host paths of the mounts of restored containers (their `emptyDir`s are back).
    restored_paths: HashSet<String>,
    at: Instant,
}

impl ChosenCut {
    /// Whether a container other than `container` was created or restored from it.
    fn binds(&self, container: &str) -> bool {
        self.restored.iter().chain(self.created.values().map(|(name, _)| name)).any(|name| name != container)
    }

    /// The pod data destinations `subject` leaves alone: what containers restored
    /// from this cut in the sandbox put back (and have written to since).
    pub(super) fn skip_pod_data(&self, subject: &Subject) -> Vec<String> {
        let mut skip = Vec::new();
        if !self.restored.is_empty() {
            skip.push(lazarus_format::pod_data::DEV_SHM.to_owned());
        }
        for (destination, host) in &subject.mounts {
            if self.restored_paths.contains(host) && !skip.contains(destination) {
                skip.push(destination.clone());
            }
        }
        skip
    }
}

/// The chosen cuts, by pod sandbox id. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub(super) struct Cuts {
    by_sandbox: Arc<Mutex<HashMap<String, ChosenCut>>>,
}

/// A staged checkpoint's place in a pod cut.
#[derive(Debug, Clone)]
pub(super) struct CutMember {
    pub(super) sandbox_id: String,
    pub(super) container: String,
    pub(super) host_paths: Vec<String>,
}

impl Cuts {
    /// The cut `subject`'s sandbox is bound to, if it includes the container.
    pub(super) fn bound(&self, subject: &Subject) -> Option<ChosenCut> {
        let cuts = self.by_sandbox.lock().unwrap_or_else(PoisonError::into_inner);
        cuts.get(&subject.sandbox_id)
            .filter(|cut| cut.members.contains(&subject.container) && cut.binds(&subject.container))
            .cloned()
    }

    /// Records that the sandbox's containers come from the cut `tag`.
    pub(super) fn choose(&self, subject: &Subject, tag: &str, members: Vec<String>) {
        let mut cuts = self.by_sandbox.lock().unwrap_or_else(PoisonError::into_inner);
        cuts.retain(|_, cut| cut.at.elapsed() < MEMORY);
        if cuts.get(&subject.sandbox_id).is_some_and(|cut| cut.tag == tag) {
            return;
        }
        cuts.insert(
            subject.sandbox_id.clone(),
            ChosenCut {
                tag: tag.to_owned(),
                members,
                created: HashMap::new(),
                restored: HashSet::new(),
                restored_paths: HashSet::new(),
                at: Instant::now(),
            },
        );
    }

    /// containerd created `container_id` from a checkpoint of the cut.
    pub(super) fn created(&self, member: &CutMember, container_id: &str) {
        let mut cuts = self.by_sandbox.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(cut) = cuts.get_mut(&member.sandbox_id) {
            cut.created.insert(container_id.to_owned(), (member.container.clone(), member.host_paths.clone()));
        }
    }

    /// `container_id`'s StartContainer ended: restored (its pod data is back) or not.
    pub(super) fn started(&self, container_id: &str, restored: bool) {
        let mut cuts = self.by_sandbox.lock().unwrap_or_else(PoisonError::into_inner);
        for cut in cuts.values_mut() {
            if let Some((name, paths)) = cut.created.remove(container_id)
                && restored
            {
                cut.restored.insert(name);
                cut.restored_paths.extend(paths);
            }
        }
    }
}

/// The pod cut a checkpoint's annotations name: its container names.
pub(super) fn members_of(annotations: &BTreeMap<String, String>) -> Option<Vec<String>> {
    let names: Vec<String> = annotations
        .get(lazarus_format::annotations::POD_CUT)?
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect();
    (names.len() > 1).then_some(names)
}

impl Restorer {
    /// The other containers of the cut `members` that `subject`'s pod restores
    /// from `latest` and that have no checkpoint tagged `tag` where they would look.
    pub(super) async fn missing_from_cut(&self, subject: &Subject, tag: &str, members: &[String]) -> Vec<String> {
        let mut missing = Vec::new();
        for other in members.iter().filter(|m| **m != subject.container) {
            let wants_latest = matches!(
                ra::request_for(&subject.annotations, other),
                Ok(Some(RestoreRequest { wanted: Wanted::Latest, .. }))
            );
            if !wants_latest {
                continue;
            }
            let sibling = Subject { container: other.clone(), ..subject.clone() };
            let found = match self.latest_candidates(&sibling).await {
                Ok((candidates, _)) => candidates.iter().any(|c| c.time_tag(other).as_deref() == Some(tag)),
                Err(_) => false,
            };
            if !found {
                missing.push(other.clone());
            }
        }
        missing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(container: &str, mounts: &[(&str, &str)]) -> Subject {
        Subject {
            namespace: "ns".into(),
            identity: "pod".into(),
            pod: "pod".into(),
            container: container.into(),
            sandbox_id: "sb".into(),
            image: v1::ImageSpec::default(),
            annotations: HashMap::new(),
            mounts: mounts.iter().map(|(d, h)| ((*d).to_owned(), (*h).to_owned())).collect(),
        }
    }

    #[test]
    fn a_cut_binds_once_a_sibling_used_it_and_its_pod_data_goes_back_once() {
        let cuts = Cuts::default();
        let (a, b) = (subject("a", &[("/scratch", "/pods/u/scratch")]), subject("b", &[("/work", "/pods/u/scratch")]));
        cuts.choose(&a, "T1", vec!["a".into(), "b".into()]);
        assert!(cuts.bound(&a).is_none(), "the chooser alone: it may choose again");
        assert!(cuts.bound(&b).is_none(), "nobody created from it yet");
        let member =
            CutMember { sandbox_id: "sb".into(), container: "a".into(), host_paths: vec!["/pods/u/scratch".into()] };
        cuts.created(&member, "id-a");
        let bound = cuts.bound(&b).expect("a was created from it: b is bound");
        assert_eq!(bound.tag, "T1");
        assert!(bound.skip_pod_data(&b).is_empty(), "a has not started yet: nothing of it put back");
        cuts.started("id-a", true);
        let bound = cuts.bound(&b).expect("bound");
        assert_eq!(bound.skip_pod_data(&b), vec!["/dev/shm".to_owned(), "/work".to_owned()]);
        // a restarted after its restore: what b may have written since stays too.
        assert_eq!(bound.skip_pod_data(&a), vec!["/dev/shm".to_owned(), "/scratch".to_owned()]);
        assert!(cuts.bound(&subject("c", &[])).is_none(), "not a member");
    }

    #[test]
    fn a_failed_start_does_not_count_as_restored() {
        let cuts = Cuts::default();
        let b = subject("b", &[]);
        cuts.choose(&subject("a", &[]), "T1", vec!["a".into(), "b".into()]);
        cuts.created(&CutMember { sandbox_id: "sb".into(), container: "a".into(), host_paths: vec![] }, "id-a");
        cuts.started("id-a", false);
        assert!(cuts.bound(&b).is_none(), "a failed before b used it: chosen again");
    }

    #[test]
    fn only_a_cut_of_several_is_a_pod_cut() {
        let mut annotations = BTreeMap::new();
        assert_eq!(members_of(&annotations), None);
        annotations.insert(lazarus_format::annotations::POD_CUT.to_owned(), "db,worker".to_owned());
        assert_eq!(members_of(&annotations), Some(vec!["db".to_owned(), "worker".to_owned()]));
        annotations.insert(lazarus_format::annotations::POD_CUT.to_owned(), "worker".to_owned());
        assert_eq!(members_of(&annotations), None);
    }
}
