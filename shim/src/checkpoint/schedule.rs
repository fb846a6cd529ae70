//! Periodic checkpoints of annotated pods (`lazarus.dev/checkpoint-interval`).
//!
//! The daemon scans the runtime's pods every few seconds. A container of a
//! pod with a valid interval is checkpointed when due; due times come from the
//! newest checkpoint in the store (else the container's start), so a lazarus
//! restart does not reset them. A run still going is never started twice; a
//! failed run is retried after the next interval, doubling up to 8 intervals.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use lazarus_proto::v1;

use super::Checkpointer;
use super::annotations as ann;
use crate::duration;

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
        let upstream = self.engine.upstream();
        let pods: v1::ListPodSandboxResponse = upstream
            .unary(
                "/runtime.v1.RuntimeService/ListPodSandbox",
                &v1::ListPodSandboxRequest {
                    filter: Some(v1::PodSandboxFilter {
                        state: Some(v1::PodSandboxStateValue { state: v1::PodSandboxState::SandboxReady as i32 }),
                        ..Default::default()
                    }),
                },
                &[],
            )
            .await?;
        let mut seen = HashSet::new();
        for pod in pods.items {
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
            let containers: v1::ListContainersResponse = upstream
                .unary(
                    "/runtime.v1.RuntimeService/ListContainers",
                    &v1::ListContainersRequest {
                        filter: Some(v1::ContainerFilter {
                            pod_sandbox_id: pod.id.clone(),
                            state: Some(v1::ContainerStateValue { state: v1::ContainerState::ContainerRunning as i32 }),
                            ..Default::default()
                        }),
                    },
                    &[],
                )
                .await?;
            let namespace_pod =
                pod.metadata.as_ref().map(|m| format!("{}/{}", m.namespace, m.name)).unwrap_or_default();
            for container in containers.containers {
                seen.insert(container.id.clone());
                let name = container.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
                self.consider(&container.id, &namespace_pod, &name, container.created_at, interval);
            }
        }
        // Forget containers that are gone.
        self.due.lock().unwrap_or_else(PoisonError::into_inner).retain(|id, _| seen.contains(id));
        Ok(())
    }

    fn consider(&self, container_id: &str, pod: &str, name: &str, created_at_nanos: i64, interval: Duration) {
        let key = &format!("{pod}/{name}");
        let now = SystemTime::now();
        let due = {
            let mut due = self.due.lock().unwrap_or_else(PoisonError::into_inner);
            due.entry(container_id.to_owned())
                .or_insert_with(|| {
                    // Rebuilt from what exists: the newest checkpoint, else the start.
                    let last = super::listing::entries(self.engine.store(), Some(key))
                        .ok()
                        .and_then(|e| e.last().map(|l| l.created.clone()))
                        .and_then(|c| parse_rfc3339(&c));
                    let base = last.unwrap_or_else(|| {
                        SystemTime::UNIX_EPOCH + Duration::from_nanos(u64::try_from(created_at_nanos).unwrap_or(0))
                    });
                    Due { at: base + interval + jitter(container_id, interval), failures: 0 }
                })
                .clone()
        };
        if due.at > now {
            return;
        }
        if !self.running.lock().unwrap_or_else(PoisonError::into_inner).insert(container_id.to_owned()) {
            return; // still going
        }
        let this = self.clone();
        let container_id = container_id.to_owned();
        let (pod, name) = (pod.to_owned(), name.to_owned());
        tokio::spawn(async move {
            let request = super::CheckpointRequest { trigger: crate::metrics::Trigger::Periodic, ..Default::default() };
            let result = this.engine.checkpoint_with(&container_id, request).await;
            let mut due = this.due.lock().unwrap_or_else(PoisonError::into_inner);
            let entry = due.entry(container_id.clone()).or_insert(Due { at: SystemTime::now(), failures: 0 });
            match result {
                Ok(checkpoint) => {
                    tracing::info!(pod = %pod, container = %name, container_id = %container_id, reference = %checkpoint.reference, "periodic checkpoint");
                    *entry = Due { at: SystemTime::now() + interval + jitter(&container_id, interval), failures: 0 };
                }
                Err(e) => {
                    let failures = entry.failures + 1;
                    let retry = backoff(interval, failures);
                    tracing::warn!(
                        pod = %pod,
                        container = %name,
                        container_id = %container_id,
                        failures,
                        retry_in = %duration::format(retry),
                        error = %e,
                        "periodic checkpoint failed; previous checkpoints are kept"
                    );
                    *entry = Due { at: SystemTime::now() + retry, failures };
                }
            }
            drop(due);
            this.running.lock().unwrap_or_else(PoisonError::into_inner).remove(&container_id);
        });
    }
}

/// Parses the RFC 3339 UTC times lazarus writes (`2026-11-22T23:35:05.123Z`).
pub fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, mo, da) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (h, mi, s) = (t.next()??, t.next()??, t.next()??);
    let millis: u64 = format!("{frac:0<3}")[..3].parse().ok()?;
    // Days from civil (inverse of capture::civil_from_days).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + da - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = u64::try_from(days * 86_400 + h * 3600 + mi * 60 + s).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis))
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
    }
}
