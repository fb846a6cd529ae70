//! Holding a container frozen for the whole cut.
//!
//! A checkpoint is one instant: the memory CRIU dumps and the files the
//! process has written (the writable layer) must come from the same moment,
//! or a restore is refused (CRIU checks the size of files open for writing)
//! or, worse, resumes a process whose files are newer than its memory. So
//! lazarus pauses the container through containerd (`Tasks.Pause`: runc's
//! cgroup freezer) before the dump; CRIU finds the cgroup frozen, dumps, and
//! leaves it frozen (it puts back the freezer state it found); lazarus
//! captures the files, then resumes (`Tasks.Resume`).
//!
//! While a container is held, a marker file `<run_dir>/frozen/<container_id>`
//! exists. A process killed in between leaves it behind, and whoever next
//! holds that container's checkpoint lock — the daemon when it starts, the
//! next checkpoint of the container — thaws the container first
//! ([`thaw_abandoned`]).

use std::path::Path;
use std::time::Duration;

use tonic::Status;

use super::markers::Markers;
use crate::containerd_api::Process;
use crate::runtime::Runtime;

/// How often a failed resume is tried again before giving up.
const RESUME_ATTEMPTS: u32 = 5;
const RESUME_RETRY: Duration = Duration::from_millis(200);

/// Why a container could not be frozen or thawed.
#[derive(Debug, thiserror::Error)]
pub enum FreezeError {
    /// `Tasks.Pause` failed: nothing was dumped, the container runs on.
    #[error("pausing container {container_id} for the checkpoint: {status}")]
    Pause {
        /// The container.
        container_id: String,
        /// containerd's answer.
        status: String,
    },
    /// `Tasks.Resume` kept failing: the container is still frozen.
    #[error(
        "resuming container {container_id} after the checkpoint failed {attempts} times ({status}); \
         it stays paused until `lazarus serve` restarts or the next checkpoint of it thaws it"
    )]
    Resume {
        /// The container.
        container_id: String,
        /// Attempts made.
        attempts: u32,
        /// containerd's last answer.
        status: String,
    },
    /// The marker file could not be written.
    #[error("writing the freeze marker: {0}")]
    Marker(std::io::Error),
}

fn status_text(status: &Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

/// Whether containerd reports the task paused (or pausing). A task that is
/// gone is not paused.
async fn is_paused(runtime: &dyn Runtime, container_id: &str) -> Result<bool, Status> {
    match runtime.task_status(container_id).await {
        Ok(status) => Ok(status == Process::PAUSED || status == Process::PAUSING),
        Err(status) if status.code() == tonic::Code::NotFound => Ok(false),
        Err(status) => Err(status),
    }
}

/// Freezes `container_id` (marker first, then `Tasks.Pause`).
pub async fn freeze(runtime: &dyn Runtime, markers: &Markers, container_id: &str) -> Result<(), FreezeError> {
    markers.set(container_id).await.map_err(FreezeError::Marker)?;
    if let Err(status) = runtime.pause_task(container_id).await {
        markers.clear(container_id).await;
        return Err(FreezeError::Pause { container_id: container_id.to_owned(), status: status_text(&status) });
    }
    Ok(())
}

/// Thaws `container_id` (`Tasks.Resume`, tried again while containerd still
/// reports it paused), then removes its marker. The marker stays when the
/// container could not be thawed, so it is tried again later.
pub async fn thaw(runtime: &dyn Runtime, markers: &Markers, container_id: &str) -> Result<(), FreezeError> {
    let mut last = String::new();
    for attempt in 1..=RESUME_ATTEMPTS {
        match runtime.resume_task(container_id).await {
            Ok(()) => {
                markers.clear(container_id).await;
                return Ok(());
            }
            Err(status) => {
                last = status_text(&status);
                // "cannot resume a running process", a task that is gone: not frozen.
                if let Ok(false) = is_paused(runtime, container_id).await {
                    markers.clear(container_id).await;
                    return Ok(());
                }
                tracing::warn!(container_id, attempt, error = %last, "resuming the container failed; trying again");
                tokio::time::sleep(RESUME_RETRY).await;
            }
        }
    }
    Err(FreezeError::Resume { container_id: container_id.to_owned(), attempts: RESUME_ATTEMPTS, status: last })
}

/// Thaws `container_id` if a marker says a checkpoint left it frozen. Call
/// with the container's checkpoint lock held (so the marker is not one of a
/// checkpoint still running).
pub async fn thaw_if_abandoned(
    runtime: &dyn Runtime,
    markers: &Markers,
    container_id: &str,
) -> Result<(), FreezeError> {
    if !markers.exists(container_id).await {
        return Ok(());
    }
    tracing::warn!(container_id, "an interrupted checkpoint left the container frozen; thawing it");
    thaw(runtime, markers, container_id).await
}

/// Thaws every container an interrupted checkpoint left frozen, skipping
/// those whose checkpoint is still running (their lock is held). Returns how
/// many were thawed.
pub async fn thaw_abandoned(runtime: &dyn Runtime, markers: &Markers, lock_dir: &Path) -> usize {
    let mut thawed = 0;
    for container_id in markers.list().await {
        let Ok(_lock) = super::locks::try_container(lock_dir, &container_id) else { continue };
        match thaw_if_abandoned(runtime, markers, &container_id).await {
            Ok(()) => thawed += 1,
            Err(e) => tracing::error!(container_id = %container_id, error = %e, "could not thaw a container"),
        }
    }
    thawed
}
