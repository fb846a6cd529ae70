//! Checkpoint concurrency across processes (the daemon and the CLI): one
//! checkpoint at a time per container, and at most N on the node. Both are
//! `flock(2)` locks on files under the run directory, so they hold between
//! processes and vanish with a crashed holder.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// Why a lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another checkpoint of the same container is running.
    #[error("a checkpoint of container {container_id} is already running")]
    Busy {
        /// The container.
        container_id: String,
    },
    /// `flock(2)` failed for another reason than the lock being held.
    #[error("locking {path}: {errno}")]
    Flock {
        /// The lock file.
        path: PathBuf,
        /// The error number `flock` returned.
        errno: Errno,
    },
    /// The lock file could not be opened.
    #[error("opening lock file {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Held for the whole checkpoint (of one container, or of every container
/// of a pod cut); released on drop.
#[derive(Debug)]
pub struct CheckpointPermit {
    _containers: Vec<Flock<File>>,
    _slot: Flock<File>,
}

/// The containers' locks alone: held while a committed checkpoint is pushed
/// to a registry, which does not take one of the node-wide slots.
#[derive(Debug)]
pub struct ContainerLock {
    _containers: Vec<Flock<File>>,
}

impl CheckpointPermit {
    /// Gives the node-wide slot back and keeps the containers' locks.
    pub fn release_slot(self) -> ContainerLock {
        ContainerLock { _containers: self._containers }
    }
}

#[expect(clippy::disallowed_methods, reason = "a lock file in the run directory: one open of an empty file, no data")]
fn open(path: &Path) -> Result<File, LockError> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|source| LockError::Open { path: path.to_owned(), source })
}

/// Takes the container's lock, failing at once if it is held.
#[expect(clippy::disallowed_methods, reason = "the lock directory is created once; later calls find it")]
pub fn try_container(dir: &Path, container_id: &str) -> Result<ContainerLock, LockError> {
    std::fs::create_dir_all(dir).map_err(|source| LockError::Open { path: dir.to_owned(), source })?;
    let container_path = dir.join(format!("container-{container_id}.lock"));
    match Flock::lock(open(&container_path)?, FlockArg::LockExclusiveNonblock) {
        Ok(container) => Ok(ContainerLock { _containers: vec![container] }),
        Err((_, Errno::EWOULDBLOCK)) => Err(LockError::Busy { container_id: container_id.to_owned() }),
        Err((_, errno)) => Err(LockError::Flock { path: container_path, errno }),
    }
}

/// The locks of every container of a cut (one container, or several of a
/// pod), taken in the order of their ids (two cuts over the same containers
/// never wait for each other in a circle), then one of `slots` node-wide
/// slots, waiting until one is free: a cut is one checkpoint for the node's
/// limit. `wait`: wait while another checkpoint of a container runs (the
/// checkpoint before a stop must not be skipped because a periodic one is
/// still going; the caller bounds the wait), else fail at once with the first
/// busy one.
pub async fn acquire_all(
    dir: &Path,
    container_ids: &[String],
    slots: usize,
    wait: bool,
) -> Result<CheckpointPermit, LockError> {
    let mut sorted: Vec<&String> = container_ids.iter().collect();
    sorted.sort();
    sorted.dedup();
    let mut held = Vec::with_capacity(sorted.len());
    for id in &sorted {
        let lock = if wait { lock_waiting(dir, id).await? } else { try_container(dir, id)? };
        held.extend(lock._containers);
    }
    let first = sorted.first().map_or("", |id| id.as_str());
    with_slot(dir, ContainerLock { _containers: held }, first, slots).await
}

async fn lock_waiting(dir: &Path, container_id: &str) -> Result<ContainerLock, LockError> {
    let mut waited = false;
    loop {
        match try_container(dir, container_id) {
            Ok(lock) => return Ok(lock),
            Err(LockError::Busy { .. }) => {
                if !waited {
                    tracing::info!(container_id, "waiting for the container's running checkpoint to finish");
                    waited = true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn with_slot(
    dir: &Path,
    container: ContainerLock,
    container_id: &str,
    slots: usize,
) -> Result<CheckpointPermit, LockError> {
    let mut waited = false;
    loop {
        for n in 0..slots.max(1) {
            let path = dir.join(format!("slot-{n}.lock"));
            match Flock::lock(open(&path)?, FlockArg::LockExclusiveNonblock) {
                Ok(slot) => return Ok(CheckpointPermit { _containers: container._containers, _slot: slot }),
                Err((_, Errno::EWOULDBLOCK)) => {}
                Err((_, errno)) => return Err(LockError::Flock { path, errno }),
            }
        }
        if !waited {
            tracing::info!(container_id, slots, "node-wide checkpoint limit reached; waiting for a slot");
            waited = true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn acquire(dir: &Path, container_id: &str, slots: usize) -> Result<CheckpointPermit, LockError> {
        acquire_all(dir, &[container_id.to_owned()], slots, false).await
    }

    async fn acquire_waiting(dir: &Path, container_id: &str, slots: usize) -> Result<CheckpointPermit, LockError> {
        acquire_all(dir, &[container_id.to_owned()], slots, true).await
    }

    // Paused clocks: the waiters' retry sleeps pass at once and deterministically
    // (flock is synchronous), so "still waiting after 10 s of retries" is checked
    // without a wall-clock sleep.
    #[tokio::test(start_paused = true)]
    async fn one_checkpoint_per_container_and_slots_are_shared() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = acquire(dir.path(), "a", 1).await.expect("first");
        let err = acquire(dir.path(), "a", 1).await.expect_err("same container is busy");
        assert!(err.to_string().contains("already running"), "{err}");
        // Another container waits for the single slot until `first` is dropped.
        let waiting = tokio::spawn({
            let dir = dir.path().to_owned();
            async move { acquire(&dir, "b", 1).await }
        });
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(!waiting.is_finished(), "second container must wait for the slot");
        // It holds b's lock already and waits for the slot only.
        assert!(matches!(try_container(dir.path(), "b"), Err(LockError::Busy { .. })));
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("slot freed")
            .expect("task")
            .expect("permit");
        drop(second);
    }

    #[tokio::test]
    async fn a_released_slot_frees_the_node_but_not_the_container() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pushing = acquire(dir.path(), "a", 1).await.expect("first").release_slot();
        let other = tokio::time::timeout(Duration::from_secs(5), acquire(dir.path(), "b", 1))
            .await
            .expect("the slot is free")
            .expect("permit");
        let err = acquire(dir.path(), "a", 1).await.expect_err("container a is still locked");
        assert!(matches!(err, LockError::Busy { .. }), "{err}");
        drop((pushing, other));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_acquire_gets_the_container_once_it_is_free() {
        let dir = tempfile::tempdir().expect("tempdir");
        let running = acquire(dir.path(), "a", 2).await.expect("first");
        let (tx, rx) = tokio::sync::oneshot::channel();
        let waiting = tokio::spawn({
            let dir = dir.path().to_owned();
            async move {
                let permit = acquire_waiting(&dir, "a", 2).await;
                let _ = tx.send(());
                permit
            }
        });
        // Still held: the waiter cannot have it.
        assert!(matches!(try_container(dir.path(), "a"), Err(LockError::Busy { .. })));
        assert!(tokio::time::timeout(Duration::from_secs(10), rx).await.is_err(), "got a held lock");
        drop(running);
        let permit = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("lock freed")
            .expect("task")
            .expect("permit");
        assert!(matches!(try_container(dir.path(), "a"), Err(LockError::Busy { .. })), "the waiter holds it");
        drop(permit);
        try_container(dir.path(), "a").expect("free again");
    }

    #[tokio::test]
    async fn a_pod_cut_holds_every_container_and_one_slot() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ids = ["b".to_owned(), "a".to_owned()];
        let cut = acquire_all(dir.path(), &ids, 2, false).await.expect("cut");
        for id in ["a", "b"] {
            assert!(matches!(try_container(dir.path(), id), Err(LockError::Busy { .. })), "{id} is held");
        }
        // One slot of two is taken: a single checkpoint of another container still gets one.
        let other = tokio::time::timeout(Duration::from_secs(5), acquire(dir.path(), "c", 2))
            .await
            .expect("a slot is free")
            .expect("permit");
        drop(other);
        // A second cut over one of them fails at once, holding nothing.
        let err = acquire_all(dir.path(), &["c".to_owned(), "b".to_owned()], 2, false).await.expect_err("b is busy");
        assert!(matches!(err, LockError::Busy { ref container_id } if container_id == "b"), "{err}");
        try_container(dir.path(), "c").expect("c was let go again");
        let pushing = cut.release_slot();
        assert!(matches!(try_container(dir.path(), "a"), Err(LockError::Busy { .. })), "still held while pushing");
        drop(pushing);
        try_container(dir.path(), "a").expect("free");
        try_container(dir.path(), "b").expect("free");
    }

    #[test]
    fn only_a_held_lock_is_busy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let held = try_container(dir.path(), "a").expect("first");
        assert!(matches!(try_container(dir.path(), "a"), Err(LockError::Busy { .. })));
        drop(held);
        try_container(dir.path(), "a").expect("free again");
        // Other errnos (not producible here) name the file and the errno instead of "already running".
        let err = LockError::Flock { path: dir.path().join("x.lock"), errno: Errno::ENOLCK };
        let text = err.to_string();
        assert!(text.starts_with("locking ") && text.contains("x.lock") && text.contains("ENOLCK"), "{text}");
    }
}
