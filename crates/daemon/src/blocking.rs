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

/// Runs `work` on the blocking pool and waits for it without blocking the
/// event loop. A panic in `work` is resumed here, as if it had run inline.
pub async fn run<T, F>(work: F) -> T
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    #[expect(clippy::disallowed_methods, reason = "this is the boundary")]
    let task = tokio::task::spawn_blocking(work);
    match task.await {
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
    later(move || {
        if let Err(error) = remove_tree_now(&path) {
            tracing::warn!(path = %path.display(), %error, "could not remove a directory");
        }
    });
}

/// Removes the file at `path` in the background (a cached multi-GiB blob);
/// failures other than "already gone" are logged.
pub fn remove_file_later(path: PathBuf) {
    later(move || {
        #[expect(clippy::disallowed_methods, reason = "runs on the blocking pool, or outside any runtime")]
        let removed = std::fs::remove_file(&path);
        if let Err(error) = removed
            && error.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), %error, "could not remove a file");
        }
    });
}

/// Runs `work` on the blocking pool without waiting for it; outside a tokio
/// runtime, at once.
fn later(work: impl FnOnce() + Send + 'static) {
    match tokio::runtime::Handle::try_current() {
        #[expect(clippy::disallowed_methods, reason = "this is the boundary")]
        Ok(handle) => drop(handle.spawn_blocking(work)),
        Err(_) => work(),
    }
}

#[expect(clippy::disallowed_methods, reason = "runs on the blocking pool (remove_tree, remove_tree_later)")]
fn remove_tree_now(path: &std::path::Path) -> io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Test helper: waits (at most 10 s) until `done` holds — for effects of
/// [`remove_tree_later`], which nothing can await.
#[cfg(test)]
pub async fn eventually(what: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "not within 10 s: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
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
        eventually("the tree is removed", || !tree.exists()).await;
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
    async fn panics_come_back() {
        assert_eq!(run(|| 7).await, 7);
        let panicked = tokio::spawn(run(|| panic!("boom"))).await;
        assert!(panicked.is_err_and(|e| e.is_panic()));
    }
}
