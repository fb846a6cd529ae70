//! Checkpoint before stop: kubelet's `StopContainer` for a container of a pod
//! annotated `lazarus.dev/checkpoint-on-stop: "true"` first takes a
//! checkpoint — within the grace period kubelet passed — and then the stop
//! goes on, whatever happened to the checkpoint.
//!
//! From the moment `StopContainer` arrives for a container of a pod lazarus
//! checkpoints (on stop or periodically), the container is marked
//! `stopping`: no periodic or manual checkpoint of it is taken any more, so
//! the checkpoint before the stop (or, without one, the last periodic one)
//! is what `latest` comes back to — never a state in the middle of the
//! program's shutdown.

use std::time::Duration;

use lazarus_proto::v1;

use super::Checkpointer;
use super::pod_cut::{Joined, StopCutPhase};
use crate::metrics::Trigger;
use lazarus_format::annotations as ann;

/// Time left for the stop itself after the checkpoint's share of the grace period.
const STOP_RESERVE: Duration = Duration::from_secs(2);

/// Whether the pod asks for a checkpoint on stop; a malformed value is
/// rejected (logged) and treated as "no".
pub fn wants_checkpoint_on_stop(annotations: &std::collections::HashMap<String, String>) -> bool {
    match annotations.get(ann::CHECKPOINT_ON_STOP).map(|v| v.trim()) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            tracing::warn!(
                annotation = ann::CHECKPOINT_ON_STOP,
                value = %other,
                "rejected annotation: expected \"true\" or \"false\"; not checkpointing on stop"
            );
            false
        }
    }
}

/// Checkpoints `container_id` if its pod asks for it and it is running,
/// within `timeout_seconds` (kubelet's grace period) less a reserve for the stop.
pub async fn checkpoint_before_stop(engine: &Checkpointer, container_id: &str, timeout_seconds: i64) {
    let runtime = engine.runtime();
    let Ok(status) = runtime.container_status(container_id, true).await else { return };
    let running = status.status.as_ref().is_some_and(|s| s.state == v1::ContainerState::ContainerRunning as i32);
    let sandbox_id = status
        .info
        .get("info")
        .and_then(|i| serde_json::from_str::<serde_json::Value>(i).ok())
        .and_then(|i| i.get("sandboxID").and_then(|s| s.as_str()).map(str::to_owned));
    let (true, Some(sandbox_id)) = (running, sandbox_id) else { return };
    let pod = runtime.pod_sandbox_status(&sandbox_id).await;
    let Some(pod) = pod.ok().and_then(|p| p.status) else { return };
    let pod_name = pod.metadata.as_ref().map(|m| format!("{}/{}", m.namespace, m.name)).unwrap_or_default();
    let pod_name = pod_name.as_str();
    let container = status.status.as_ref().and_then(|s| s.metadata.as_ref()).map_or("", |m| m.name.as_str());
    if !super::pod_cut::is_selected(&pod.annotations, container) {
        // lazarus.dev/checkpoint-containers leaves it out: a sidecar lazarus does not touch.
        return;
    }
    let on_stop = wants_checkpoint_on_stop(&pod.annotations);
    if (on_stop || pod.annotations.contains_key(ann::CHECKPOINT_INTERVAL))
        && let Err(e) = engine.stopping_markers().set(container_id).await
    {
        tracing::error!(
            pod = pod_name,
            container,
            container_id,
            error = %e,
            "could not mark the container as stopping; a periodic checkpoint may still be taken during its shutdown"
        );
    }
    if !on_stop {
        return;
    }
    let grace = Duration::from_secs(u64::try_from(timeout_seconds).unwrap_or(0));
    let budget = grace.saturating_sub(STOP_RESERVE);
    if budget.is_zero() {
        engine.metrics().checkpoint_failed(Trigger::Stop, "grace_period");
        tracing::warn!(
            pod = pod_name,
            container,
            container_id,
            grace_seconds = timeout_seconds,
            "grace period too short to checkpoint before stop"
        );
        return;
    }
    // The pod's checkpointed running containers are cut together: the first
    // StopContainer of them starts the cut, the others (kubelet sends them
    // together) join it and wait for the same cut (checkpoint/pod_cut.rs).
    let members = stop_cut_members(engine, &sandbox_id, container_id, &pod.annotations).await;
    let phase = match engine.stop_cuts().join(&sandbox_id, container_id, members) {
        Joined::Existing(phase) => {
            tracing::info!(
                pod = pod_name,
                container,
                container_id,
                "the pod's cut before stop covers this container; waiting for it"
            );
            phase
        }
        Joined::New(sender) => start_stop_cut(engine, container_id, pod_name, container, sender),
    };
    // The stop waits for the checkpoint within the budget, and at any rate until
    // the containers are thawed — a SIGTERM must never reach a container frozen
    // in the middle of its dump.
    let mut waiting = phase.clone();
    if tokio::time::timeout(budget, waiting.wait_for(|p| *p == StopCutPhase::Done)).await.is_err() {
        let mut thawing = phase;
        let _ = thawing.wait_for(|p| *p != StopCutPhase::Running).await;
        tracing::warn!(
            pod = pod_name,
            container,
            container_id,
            budget_seconds = budget.as_secs(),
            "checkpoint before stop did not finish within the grace period; stopping now, the checkpoint \
             of the state before the stop goes on in the background"
        );
    }
}

/// The running containers of the sandbox the pod checkpoints, `container_id` among them.
async fn stop_cut_members(
    engine: &Checkpointer,
    sandbox_id: &str,
    container_id: &str,
    annotations: &std::collections::HashMap<String, String>,
) -> Vec<String> {
    let listed = engine
        .runtime()
        .list_containers(v1::ContainerFilter {
            pod_sandbox_id: sandbox_id.to_owned(),
            state: Some(v1::ContainerStateValue { state: v1::ContainerState::ContainerRunning as i32 }),
            ..Default::default()
        })
        .await
        .unwrap_or_default();
    let mut members: Vec<String> = listed
        .into_iter()
        .filter(|c| c.metadata.as_ref().is_some_and(|m| super::pod_cut::is_selected(annotations, &m.name)))
        .map(|c| c.id)
        .collect();
    if !members.iter().any(|m| m == container_id) {
        members.push(container_id.to_owned());
    }
    members
}

/// Starts the checkpoint before stop of `container_id` (and of the pod's other
/// checkpointed containers, one cut) as a task of its own: when the budget runs
/// out it goes on and is committed, a consistent state from before the stop.
/// Its phases are reported through `sender`.
fn start_stop_cut(
    engine: &Checkpointer,
    container_id: &str,
    pod_name: &str,
    container: &str,
    sender: tokio::sync::watch::Sender<StopCutPhase>,
) -> tokio::sync::watch::Receiver<StopCutPhase> {
    let phase = sender.subscribe();
    let sender = std::sync::Arc::new(sender);
    let (thawed_tx, thawed) = tokio::sync::oneshot::channel();
    {
        let sender = sender.clone();
        tokio::spawn(async move {
            let _ = thawed.await;
            sender.send_if_modified(|p| {
                let running = *p == StopCutPhase::Running;
                if running {
                    *p = StopCutPhase::Thawed;
                }
                running
            });
        });
    }
    let request = super::CheckpointRequest { trigger: Trigger::Stop, thawed: Some(thawed_tx), ..Default::default() };
    let (engine, container_id, pod_name, container) =
        (engine.clone(), container_id.to_owned(), pod_name.to_owned(), container.to_owned());
    tokio::spawn(async move {
        let task = {
            let (engine, container_id) = (engine.clone(), container_id.clone());
            tokio::spawn(async move { engine.checkpoint_with(&container_id, request).await })
        };
        let (pod_name, container, container_id) = (pod_name.as_str(), container.as_str(), container_id.as_str());
        match task.await {
            Ok(Ok(checkpoint)) => {
                let pod_cut: Vec<&str> = checkpoint.pod_cut.iter().map(|c| c.reference.as_str()).collect();
                tracing::info!(pod = pod_name, container, container_id, reference = %checkpoint.reference, pod_cut = ?pod_cut, "checkpointed before stop")
            }
            Ok(Err(e)) => {
                tracing::warn!(pod = pod_name, container, container_id, error = %e, "checkpoint before stop failed; stopping anyway")
            }
            Err(e) => {
                tracing::error!(pod = pod_name, container, container_id, error = %e, "checkpoint before stop panicked; stopping anyway")
            }
        }
        sender.send_replace(StopCutPhase::Done);
    });
    phase
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_true_means_yes() {
        let mut a = std::collections::HashMap::new();
        assert!(!wants_checkpoint_on_stop(&a));
        a.insert(ann::CHECKPOINT_ON_STOP.to_owned(), "true".to_owned());
        assert!(wants_checkpoint_on_stop(&a));
        for v in ["false", "yes", "1", "TRUE "] {
            a.insert(ann::CHECKPOINT_ON_STOP.to_owned(), v.to_owned());
            assert!(!wants_checkpoint_on_stop(&a), "{v}");
        }
    }
}
