//! The one boundary for blocking work.
//!
//! The daemon runs a single-threaded event loop that every kubelet call goes
//! through, so anything that can take long — walking, hashing or removing
//! file trees, reading and writing files, subprocesses — runs on tokio's
//! blocking pool through this module. The rule is checked mechanically:
//! `crates/daemon/clippy.toml` disallows `std::fs` calls, blocking `Command`
//! calls and `std::thread::sleep` in this crate, and code that runs on the
//! blocking pool (the closures given to [`run`], the functions only they call)
//! carries a reviewed `#[expect(clippy::disallowed_methods, reason = …)]`.

use std::io;
use std::path::PathBuf;
use std::process::{Command, Output};

/// Runs `work` on the blocking pool and waits for it without blocking the
/// event loop. A panic in `work` is resumed here, as if it had run inline.
pub async fn run<T, F>(work: F) -> T
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        // Only when the runtime shuts down under the task: nothing waits for
        // the answer any more.
        Err(error) => panic!("blocking task cancelled: {error}"),
    }
}

/// Removes the tree at `path` on the blocking pool and waits for it; a tree
/// that is already gone is no error.
pub async fn remove_tree(path: PathBuf) -> io::Result<()> {
    run(move || remove_tree_now(&path)).await
}

/// Removes the tree at `path` in the background (multi-GiB staging and
/// unpacked checkpoint trees take seconds): for `Drop` impls and other places
/// that cannot wait. Failures are logged. Outside a tokio runtime (a CLI
/// command finishing, a test) it is removed at once.
pub fn remove_tree_later(path: PathBuf) {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            handle.spawn_blocking(move || {
                if let Err(error) = remove_tree_now(&path) {
                    tracing::warn!(path = %path.display(), %error, "could not remove a directory");
                }
            });
        }
        Err(_) => {
            if let Err(error) = remove_tree_now(&path) {
                tracing::warn!(path = %path.display(), %error, "could not remove a directory");
            }
        }
    }
}

/// Removes the file at `path` in the background (a cached multi-GiB blob);
/// failures other than "already gone" are logged.
pub fn remove_file_later(path: PathBuf) {
    let remove = move || {
        #[expect(clippy::disallowed_methods, reason = "runs on the blocking pool, or outside any runtime")]
        let removed = std::fs::remove_file(&path);
        if let Err(error) = removed
            && error.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), %error, "could not remove a file");
        }
    };
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => drop(handle.spawn_blocking(remove)),
        Err(_) => remove(),
    }
}

#[expect(clippy::disallowed_methods, reason = "runs on the blocking pool (remove_tree, remove_tree_later)")]
fn remove_tree_now(path: &std::path::Path) -> io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Runs `command` to completion on the blocking pool and returns its output.
pub async fn output(mut command: Command) -> io::Result<Output> {
    #[expect(clippy::disallowed_methods, reason = "runs on the blocking pool")]
    run(move || command.output()).await
}

#[cfg(test)]
mod tests {
    #![expect(clippy::disallowed_methods, reason = "test set-up")]

    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn trees_are_removed_off_the_event_loop_and_missing_ones_are_fine() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("a/b")).expect("mkdir");
        std::fs::write(tree.join("a/b/f"), b"x").expect("write");
        remove_tree(tree.clone()).await.expect("remove");
        assert!(!tree.exists());
        remove_tree(tree.clone()).await.expect("already gone is fine");
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").expect("write");
        assert!(remove_tree(file).await.is_err(), "a file is not a tree");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn background_removal_finishes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("x")).expect("mkdir");
        remove_tree_later(tree.clone());
        // The runtime's blocking pool is the only one removing it; wait for it
        // (bounded) by asking the pool for a no-op after it.
        for _ in 0..1000 {
            if !tree.exists() {
                break;
            }
            run(|| ()).await;
            tokio::task::yield_now().await;
        }
        assert!(!tree.exists());
    }

    #[test]
    fn outside_a_runtime_removal_is_immediate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("x")).expect("mkdir");
        remove_tree_later(tree.clone());
        assert!(!tree.exists());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn commands_and_panics_come_back() {
        let out = output(Command::new("true")).await.expect("true runs");
        assert!(out.status.success());
        let missing = output(Command::new("/nonexistent/lazarus-test")).await;
        assert_eq!(missing.map(|_| ()).map_err(|e| e.kind()), Err(io::ErrorKind::NotFound));
        let panicked = tokio::spawn(run(|| panic!("boom"))).await;
        assert!(panicked.is_err_and(|e| e.is_panic()));
    }
}
