//! Several containers of a pod in one cut.
//!
//! A pod's containers share state outside their memory: `/dev/shm`, `emptyDir`
//! volumes, connections over the pod's loopback. Checkpointed one at a time,
//! each container's checkpoint is an instant of its own, and a restored pod is
//! a mix no execution ever reached. So the containers lazarus checkpoints in a
//! pod (all of them, or those `lazarus.dev/checkpoint-containers` names) are
//! checkpointed together — the semantics of CRI `CheckpointPod` (cri-api
//! v0.37, KEP-5823): every one frozen, then every one dumped and its files
//! captured, then every one thawed. Their checkpoints share one time tag and
//! carry `lazarus.dev/pod-cut` with the names of the cut's containers; a
//! restore of `latest` takes every container of a pod from the same cut
//! (`restore::engine::cuts`). A container the annotation leaves out (a
//! sidecar: a log shipper, a proxy) is never frozen nor checkpointed.
//!
//! Before a stop: kubelet stops a pod's containers in parallel, each with its
//! own `StopContainer`. The first to arrive takes the cut of all the pod's
//! running containers; the others join it ([`StopCuts`]) and go on to their
//! stop once it has thawed them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use lazarus_format::annotations as ann;

/// The pod's `lazarus.dev/checkpoint-containers`: `Ok(None)` when absent (all
/// containers), else the names. `Err` (annotation, value, reason) when
/// malformed; callers then checkpoint every container (never fewer than asked).
pub fn selection(annotations: &HashMap<String, String>) -> Result<Option<Vec<String>>, String> {
    let Some(value) = annotations.get(ann::CHECKPOINT_CONTAINERS) else { return Ok(None) };
    let names: Vec<String> = value.split(',').map(str::trim).map(str::to_owned).collect();
    if let Some(bad) = names.iter().find(|n| !valid_container_name(n)) {
        return Err(format!(
            "{}={value:?} rejected: {bad:?} is not a container name (comma-separated names of 1-63 of a-z 0-9 -)",
            ann::CHECKPOINT_CONTAINERS
        ));
    }
    Ok(Some(names))
}

/// Whether the container `name` is one lazarus checkpoints in a pod with these annotations.
pub fn is_selected(annotations: &HashMap<String, String>, name: &str) -> bool {
    match selection(annotations) {
        Ok(Some(names)) => names.iter().any(|n| n == name),
        Ok(None) | Err(_) => true,
    }
}

/// A Kubernetes container name: a DNS label.
fn valid_container_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// How far a cut before a stop has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopCutPhase {
    /// Freezing, dumping.
    Running,
    /// Every container runs again (packaging and committing may go on).
    Thawed,
    /// Committed or failed.
    Done,
}

/// How long a finished cut before a stop is remembered for the pod's other
/// containers' `StopContainer` calls (kubelet sends them together).
const STOP_CUT_MEMORY: Duration = Duration::from_secs(600);

#[derive(Debug)]
struct StopCut {
    members: Vec<String>,
    phase: tokio::sync::watch::Receiver<StopCutPhase>,
    started: Instant,
}

/// The cuts before a stop, by pod sandbox: the first `StopContainer` of a
/// pod's cut starts it, the others join it. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct StopCuts {
    cuts: Arc<Mutex<HashMap<String, StopCut>>>,
}

/// Joining the cut before a stop.
#[derive(Debug)]
pub enum Joined {
    /// A cut covering this container is running or done: wait on it.
    Existing(tokio::sync::watch::Receiver<StopCutPhase>),
    /// This call starts it: report the phases through the sender.
    New(tokio::sync::watch::Sender<StopCutPhase>),
}

impl StopCuts {
    /// The cut before a stop of `container_id` in `sandbox_id`, whose running
    /// checkpointed containers are `members`: an existing one that covers the
    /// container, or a new one (replacing one that does not cover it, e.g. a
    /// restarted container's predecessor's).
    pub fn join(&self, sandbox_id: &str, container_id: &str, members: Vec<String>) -> Joined {
        let mut cuts = self.cuts.lock().unwrap_or_else(PoisonError::into_inner);
        cuts.retain(|_, cut| cut.started.elapsed() < STOP_CUT_MEMORY);
        if let Some(cut) = cuts.get(sandbox_id)
            && cut.members.iter().any(|m| m == container_id)
        {
            return Joined::Existing(cut.phase.clone());
        }
        let (sender, phase) = tokio::sync::watch::channel(StopCutPhase::Running);
        cuts.insert(sandbox_id.to_owned(), StopCut { members, phase, started: Instant::now() });
        Joined::New(sender)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_selection_names_containers_or_means_all() {
        let mut a = HashMap::new();
        assert_eq!(selection(&a), Ok(None));
        assert!(is_selected(&a, "sidecar"));
        a.insert(ann::CHECKPOINT_CONTAINERS.to_owned(), " worker , db".to_owned());
        assert_eq!(selection(&a), Ok(Some(vec!["worker".to_owned(), "db".to_owned()])));
        assert!(is_selected(&a, "db") && !is_selected(&a, "log-shipper"));
        for bad in ["", "worker,,db", "Worker", "a_b", "-x"] {
            a.insert(ann::CHECKPOINT_CONTAINERS.to_owned(), bad.to_owned());
            let err = selection(&a).expect_err(bad);
            assert!(err.contains(ann::CHECKPOINT_CONTAINERS), "{err}");
            assert!(is_selected(&a, "log-shipper"), "malformed: every container, never fewer");
        }
    }

    #[tokio::test]
    async fn a_pods_stop_calls_join_the_first_cut_that_covers_them() {
        let cuts = StopCuts::default();
        let members = vec!["c1".to_owned(), "c2".to_owned()];
        let Joined::New(sender) = cuts.join("pod", "c1", members.clone()) else { panic!("the first starts it") };
        let Joined::Existing(mut phase) = cuts.join("pod", "c2", members.clone()) else { panic!("c2 joins") };
        sender.send_replace(StopCutPhase::Thawed);
        phase.changed().await.expect("sender alive");
        assert_eq!(*phase.borrow(), StopCutPhase::Thawed);
        // A restarted container (new id) is not covered by the old cut: a new one.
        assert!(matches!(cuts.join("pod", "c3", vec!["c3".to_owned(), "c2".to_owned()]), Joined::New(_)));
        assert!(matches!(cuts.join("other", "c9", vec!["c9".to_owned()]), Joined::New(_)));
    }
}
