//! Periodic checkpoints of annotated pods (`lazarus.dev/checkpoint-interval`).
//!
//! The daemon scans the runtime's pods every few seconds. A container of a
//! pod with a valid interval is checkpointed one interval after the newer of
//! its start (for a restored container: its restore) and the newest
//! checkpoint of the same `namespace/pod/container` in the store, whatever
//! took it (periodic, on-stop, `lazarus checkpoint`); the store is read again
//! when a container falls due, so a lazarus restart does not reset the
//! schedule and a manual checkpoint pushes the next periodic one back. A run
//! still going is never started twice; a failed run is retried after the
//! next interval, doubling up to 8 intervals. Once kubelet has asked to stop
//! a container (its `stopping` marker), it is never checkpointed periodically
//! again: what it does during its shutdown is not progress to come back to.
//! A pod with several checkpointed containers is one cut (`pod_cut`): it is
//! scheduled once, by the first of them by name, from the newest start among
//! them; a sidecar `lazarus.dev/checkpoint-containers` leaves out is not
//! scheduled at all.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use lazarus_proto::v1;

use super::Checkpointer;
use crate::duration;
use lazarus_format::annotations as ann;

/// How often the runtime's pods are looked at.
pub const SCAN_PERIOD: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
struct Due {
    at: SystemTime,
    failures: u32,
}

/// The periodic scheduler's state.
#[derive(Debug, Clone)]
pub struct Scheduler {
    engine: Checkpointer,
    due: Arc<Mutex<HashMap<String, Due>>>,
    running: Arc<Mutex<HashSet<String>>>,
    /// (pod id, value) pairs already warned about, to log a rejection once.
    warned: Arc<Mutex<HashSet<(String, String)>>>,
}

/// Parses a pod's interval annotation. `Ok(None)`: not annotated.
pub fn interval_from_annotations(annotations: &HashMap<String, String>) -> Result<Option<Duration>, String> {
    let Some(value) = annotations.get(ann::CHECKPOINT_INTERVAL) else { return Ok(None) };
    match duration::parse(value) {
        Ok(d) if d >= Duration::from_secs(1) => Ok(Some(d)),
        Ok(_) => Err(format!("{}={value:?} rejected: the interval must be at least 1s", ann::CHECKPOINT_INTERVAL)),
        Err(e) => Err(format!("{}={value:?} rejected: {e}", ann::CHECKPOINT_INTERVAL)),
    }
}

/// Up to 10 % of `interval`, derived from the container id so that
/// containers of one pod spread out and a restart keeps the same offset.
pub fn jitter(container_id: &str, interval: Duration) -> Duration {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    container_id.hash(&mut h);
    let fraction = (h.finish() % 1000) as f64 / 10_000.0;
    interval.mul_f64(fraction)
}

/// When a container is next due: one interval (plus its jitter) after the
/// newer of its start and its newest checkpoint.
pub fn next_due(
    newest_checkpoint: Option<SystemTime>,
    started: SystemTime,
    interval: Duration,
    jitter: Duration,
) -> SystemTime {
    newest_checkpoint.map_or(started, |newest| newest.max(started)) + interval + jitter
}

/// Delay before retrying after `failures` consecutive failures.
pub fn backoff(interval: Duration, failures: u32) -> Duration {
    interval * 2u32.saturating_pow(failures.saturating_sub(1)).min(8)
}

impl Scheduler {
    /// A scheduler over `engine` (counting into the engine's metrics).
    pub fn new(engine: Checkpointer) -> Self {
        Scheduler { engine, due: Arc::default(), running: Arc::default(), warned: Arc::default() }
    }

    /// Runs until the task is dropped.
    pub async fn run(self) {
        let mut ticker = tokio::time::interval(SCAN_PERIOD);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if let Err(e) = self.scan().await {
                tracing::debug!(error = %e, "checkpoint schedule scan skipped");
            }
        }
    }

    /// One pass: schedule new containers, start the due ones.
    pub async fn scan(&self) -> Result<(), tonic::Status> {
        let runtime = self.engine.runtime();
        let pods = runtime
            .list_pod_sandboxes(v1::PodSandboxFilter {
                state: Some(v1::PodSandboxStateValue { state: v1::PodSandboxState::SandboxReady as i32 }),
                ..Default::default()
            })
            .await?;
        let mut seen = HashSet::new();
        for pod in pods {
            let interval = match interval_from_annotations(&pod.annotations) {
                Ok(Some(interval)) => interval,
                Ok(None) => continue,
                Err(reason) => {
                    let value = pod.annotations.get(ann::CHECKPOINT_INTERVAL).cloned().unwrap_or_default();
                    if self.warned.lock().unwrap_or_else(PoisonError::into_inner).insert((pod.id.clone(), value)) {
                        self.engine.metrics().annotation_rejected(ann::CHECKPOINT_INTERVAL);
                        let name =
                            pod.metadata.as_ref().map(|m| format!("{}/{}", m.namespace, m.name)).unwrap_or_default();
                        tracing::warn!(pod = %name, "{reason}; no periodic checkpoints for this pod");
                    }
                    continue;
                }
            };
            let containers = runtime
                .list_containers(v1::ContainerFilter {
                    pod_sandbox_id: pod.id.clone(),
                    state: Some(v1::ContainerStateValue { state: v1::ContainerState::ContainerRunning as i32 }),
                    ..Default::default()
                })
                .await?;
            let metadata = pod.metadata.clone().unwrap_or_default();
            let namespace_pod = format!("{}/{}", metadata.namespace, metadata.name);
            // The store groups checkpoints by identity (a re-created Job pod
            // counts from its predecessor's newest); a malformed identity
            // annotation fails the checkpoint itself, with its reason.
            let identity = lazarus_format::identity::identity(&metadata.name, &pod.labels, &pod.annotations)
                .map(|identity| format!("{}/{}", metadata.namespace, identity.name))
                .ok();
            // The containers the pod checkpoints; several of them are one cut,
            // scheduled as one: by the first of them by name, from the newest
            // start among them (checkpoint/pod_cut.rs).
            if let Err(reason) = super::pod_cut::selection(&pod.annotations) {
                let value = pod.annotations.get(ann::CHECKPOINT_CONTAINERS).cloned().unwrap_or_default();
                if self.warned.lock().unwrap_or_else(PoisonError::into_inner).insert((pod.id.clone(), value)) {
                    self.engine.metrics().annotation_rejected(ann::CHECKPOINT_CONTAINERS);
                    tracing::warn!(pod = %namespace_pod, "{reason}; every container of the pod is checkpointed");
                }
            }
            let mut selected: Vec<(String, v1::Container)> = containers
                .into_iter()
                .map(|c| (c.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default(), c))
                .filter(|(name, _)| super::pod_cut::is_selected(&pod.annotations, name))
                .collect();
            selected.sort_by(|a, b| a.0.cmp(&b.0));
            let newest_start = selected.iter().map(|(_, c)| c.created_at).max().unwrap_or(0);
            seen.extend(selected.iter().map(|(_, c)| c.id.clone()));
            if let Some((name, first)) = selected.first() {
                let key = identity.as_ref().map(|identity| format!("{identity}/{name}"));
                self.consider(&first.id, &namespace_pod, key, name, newest_start, interval);
            }
        }
        // Forget containers that are gone, and their stopping markers.
        self.due.lock().unwrap_or_else(PoisonError::into_inner).retain(|id, _| seen.contains(id));
        let stopping = self.engine.stopping_markers();
        for id in stopping.list().await {
            if !seen.contains(&id) {
                stopping.clear(&id).await;
            }
        }
        Ok(())
    }

    fn consider(
        &self,
        container_id: &str,
        pod: &str,
        key: Option<String>,
        name: &str,
        created_at_nanos: i64,
        interval: Duration,
    ) {
        let started = SystemTime::UNIX_EPOCH + Duration::from_nanos(u64::try_from(created_at_nanos).unwrap_or(0));
        let due = self
            .due
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(container_id.to_owned())
            // From the start alone; the store is read when this falls due.
            .or_insert_with(|| Due {
                at: next_due(None, started, interval, jitter(container_id, interval)),
                failures: 0,
            })
            .clone();
        if due.at > SystemTime::now() {
            return;
        }
        if !self.running.lock().unwrap_or_else(PoisonError::into_inner).insert(container_id.to_owned()) {
            return; // still going
        }
        let this = self.clone();
        let container_id = container_id.to_owned();
        let (pod, name) = (pod.to_owned(), name.to_owned());
        tokio::spawn(async move {
            let watched = Watched { container_id: &container_id, pod: &pod, key: key.as_deref(), name: &name };
            let next = this.run_due(&watched, started, interval, due.failures).await;
            this.due.lock().unwrap_or_else(PoisonError::into_inner).insert(container_id.clone(), next);
            this.running.lock().unwrap_or_else(PoisonError::into_inner).remove(&container_id);
        });
    }

    /// The newest checkpoint time of `key` in the store (read on the blocking pool).
    async fn newest_checkpoint(&self, key: &str) -> Option<SystemTime> {
        let (store, key) = (self.engine.store().clone(), key.to_owned());
        crate::blocking::run(move || {
            let entries = store.list().ok()?;
            entries
                .iter()
                .filter(|e| e.annotation(ann::CONTAINER_KEY) == Some(key.as_str()))
                .filter_map(|e| e.annotation(ann::CREATED).and_then(parse_rfc3339))
                .max()
        })
        .await
    }

    /// A container that fell due: checkpoint it unless it is stopping or a
    /// newer checkpoint (of any trigger) moved its due time. Returns its next due time.
    async fn run_due(&self, watched: &Watched<'_>, started: SystemTime, interval: Duration, failures: u32) -> Due {
        let Watched { container_id, pod, key, name } = *watched;
        let jitter = jitter(container_id, interval);
        if self.engine.stopping_markers().exists(container_id).await {
            tracing::debug!(pod, container = name, container_id, "stopping: no periodic checkpoint");
            return Due { at: SystemTime::now() + interval, failures };
        }
        if failures == 0 {
            let newest = match key {
                Some(key) => self.newest_checkpoint(key).await,
                None => None,
            };
            let due = next_due(newest, started, interval, jitter);
            if due > SystemTime::now() {
                return Due { at: due, failures };
            }
        }
        let request = super::CheckpointRequest { trigger: crate::metrics::Trigger::Periodic, ..Default::default() };
        match self.engine.checkpoint_with(container_id, request).await {
            Ok(checkpoint) => {
                tracing::info!(pod, container = name, container_id, reference = %checkpoint.reference, "periodic checkpoint");
                Due { at: SystemTime::now() + interval + jitter, failures: 0 }
            }
            Err(super::CheckpointError::Stopping { .. }) => {
                tracing::debug!(pod, container = name, container_id, "stopping: no periodic checkpoint");
                Due { at: SystemTime::now() + interval, failures }
            }
            Err(e) => {
                let failures = failures + 1;
                let retry = backoff(interval, failures);
                tracing::warn!(
                    pod,
                    container = name,
                    container_id,
                    failures,
                    retry_in = %duration::format(retry),
                    error = %e,
                    "periodic checkpoint failed; previous checkpoints are kept"
                );
                Due { at: SystemTime::now() + retry, failures }
            }
        }
    }
}

pub use lazarus_format::timefmt::parse_rfc3339;

/// A running container the scheduler checkpoints.
#[derive(Debug, Clone, Copy)]
struct Watched<'a> {
    container_id: &'a str,
    /// `namespace/pod`, for logs.
    pod: &'a str,
    /// Its checkpoints' key in the store (`namespace/<identity>/container`);
    /// `None` when the pod's identity annotation is malformed.
    key: Option<&'a str>,
    /// The container's name.
    name: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_are_validated() {
        let mut a = HashMap::new();
        assert_eq!(interval_from_annotations(&a), Ok(None));
        a.insert(ann::CHECKPOINT_INTERVAL.to_owned(), "30m".to_owned());
        assert_eq!(interval_from_annotations(&a), Ok(Some(Duration::from_secs(1800))));
        for bad in ["soon", "10", "-5m", "500ms"] {
            a.insert(ann::CHECKPOINT_INTERVAL.to_owned(), bad.to_owned());
            let err = interval_from_annotations(&a).expect_err(bad);
            assert!(err.contains(ann::CHECKPOINT_INTERVAL) && err.contains(bad), "{err}");
        }
    }

    #[test]
    fn jitter_is_bounded_and_stable() {
        let i = Duration::from_secs(600);
        let j = jitter("abc", i);
        assert!(j < i / 10);
        assert_eq!(j, jitter("abc", i));
    }

    #[test]
    fn backoff_doubles_up_to_eight_intervals() {
        let i = Duration::from_secs(60);
        assert_eq!(backoff(i, 1), i);
        assert_eq!(backoff(i, 2), i * 2);
        assert_eq!(backoff(i, 3), i * 4);
        assert_eq!(backoff(i, 10), i * 8);
    }

    #[test]
    fn rfc3339_round_trip() {
        let t = parse_rfc3339("2023-11-14T22:13:20.250Z").expect("parse");
        assert_eq!(t.duration_since(SystemTime::UNIX_EPOCH).expect("after epoch").as_millis(), 1_700_000_000_250);
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(
            parse_rfc3339("2023-11-14T22:13:20.5Z").and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok()),
            Some(Duration::from_millis(1_700_000_000_500))
        );
        assert_eq!(
            parse_rfc3339("2023-11-14T22:13:20Z").and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok()),
            Some(Duration::from_secs(1_700_000_000))
        );
    }

    #[test]
    fn rfc3339_garbage_from_disk_is_rejected_without_panicking() {
        for bad in [
            "2023-11-14T22:13:20.\u{e9}\u{e9}Z",
            "2023-11-14T22:13:20.é1Z",
            "2023-11-14T22:13:20.1é2Z",
            "2023-11-14T22:13:20.Z",
            "2023-11-14T22:13:20.-1Z",
            "2023-11-14T22:13:20.+12Z",
            "2023-13-14T22:13:20Z",
            "2023-11-14T25:13:20Z",
            "2023-11-14T22:13Z",
            "-2023-11-14T22:13:20Z",
            "Z",
            "",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_interval_counts_from_the_newest_checkpoint_or_the_start() {
        let t = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        let (interval, jitter) = (Duration::from_secs(100), Duration::from_secs(3));
        // Never checkpointed: from the start.
        assert_eq!(next_due(None, t(1000), interval, jitter), t(1103));
        // A manual or on-stop checkpoint after the start moves it.
        assert_eq!(next_due(Some(t(1500)), t(1000), interval, jitter), t(1603));
        // A restored container started after the checkpoint it came from:
        // from the restore, not from the old checkpoint.
        assert_eq!(next_due(Some(t(400)), t(1000), interval, jitter), t(1103));
    }
}
