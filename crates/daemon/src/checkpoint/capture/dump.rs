//! The cut: the container paused, dumped by CRIU, its writable layer and
//! pod data (`/dev/shm`, `emptyDir` volumes) captured, then resumed — always
//! resumed; and the staging directory it is written into.

use super::open_files::VolumeMount;
use super::*;
use crate::containerd_api::CheckpointOptions;

/// What the cut reads of the container's volumes.
#[derive(Debug, Clone, Copy)]
pub(super) struct Volumes<'a> {
    /// The spec's bind-mount volumes, for the open-file records.
    pub(super) mounts: &'a [VolumeMount],
    /// `/dev/shm` and the `emptyDir` volumes, captured into the tree.
    pub(super) pod_data: &'a PodDataSources,
}

/// One container of a cut: where its dump and files go.
#[derive(Debug, Clone)]
pub(super) struct CutPart {
    pub(super) id: String,
    pub(super) pid: u32,
    pub(super) images: PathBuf,
    pub(super) work: PathBuf,
    pub(super) tree: PathBuf,
    pub(super) volume_mounts: Vec<VolumeMount>,
    pub(super) pod_data: PodDataSources,
}

impl Checkpointer {
    /// The cut over one container or several of a pod: every one paused
    /// first, then each dumped with its writable layer and pod data, then
    /// every one resumed — always resumed, and the first failure reported.
    /// A failure anywhere fails the whole cut: nothing of it is committed.
    pub(super) async fn cut(&self, parts: &[CutPart]) -> Result<Cut, CheckpointError> {
        let markers = self.frozen_markers();
        let frozen_at = Instant::now();
        let mut frozen = Vec::with_capacity(parts.len());
        let mut captured = Ok(());
        for part in parts {
            match freeze::freeze(&*self.runtime, &markers, &part.id).await {
                Ok(()) => frozen.push(part.id.as_str()),
                Err(e) => {
                    captured = Err(CheckpointError::from(e));
                    break;
                }
            }
        }
        let mut dump_times = Vec::with_capacity(parts.len());
        if captured.is_ok() {
            for part in parts {
                let dump_started = Instant::now();
                let volumes = Volumes { mounts: &part.volume_mounts, pod_data: &part.pod_data };
                captured =
                    self.dump_and_capture(&part.id, part.pid, &part.images, &part.work, &part.tree, volumes).await;
                dump_times.push(dump_started.elapsed());
                if captured.is_err() {
                    break;
                }
            }
        }
        let mut thawed = Ok(());
        for id in frozen {
            let outcome = freeze::thaw(&*self.runtime, &markers, id).await;
            if let Err(e) = outcome {
                tracing::error!(container_id = id, error = %e, "the container could not be resumed after its checkpoint");
                if thawed.is_ok() {
                    thawed = Err(e);
                }
            }
        }
        let frozen_time = frozen_at.elapsed();
        captured?;
        thawed?;
        Ok(Cut { dump_times, frozen_time })
    }

    /// CRIU's dump (the container stays frozen after it), the writable layer
    /// and the pod data.
    async fn dump_and_capture(
        &self,
        id: &str,
        pid: u32,
        images: &Path,
        work: &Path,
        tree: &Path,
        volumes: Volumes<'_>,
    ) -> Result<(), CheckpointError> {
        let options = CheckpointOptions {
            exit: false,
            open_tcp: true,
            file_locks: true,
            image_path: images.display().to_string(),
            work_path: work.display().to_string(),
            ..Default::default()
        };
        if let Err(status) = self.runtime.checkpoint_task(id, options).await {
            let log_path = work.join(files::DUMP_LOG);
            let log = crate::blocking::run(move || dump_log_excerpt(&log_path)).await;
            return Err(CheckpointError::Criu {
                container_id: id.to_owned(),
                message: status.message().to_owned(),
                log,
            });
        }
        self.capture_writable_layer(id, pid, tree).await?;
        // The files the processes hold open on bind-mount volumes, with size
        // and mtime, for the restore pre-check (capture/open_files.rs).
        self.record_open_files(id, pid, volumes.mounts, tree).await?;
        // `/dev/shm` and the `emptyDir` volumes, still frozen (capture/pod_data.rs).
        self.capture_pod_data(id, volumes.pod_data, tree).await
    }

    /// The writable layer's changes: `rootfs-diff.tar` and `deleted.files`.
    async fn capture_writable_layer(&self, id: &str, pid: u32, tree: &Path) -> Result<(), CheckpointError> {
        let upper =
            (self.upperdir.0)(pid).map_err(|source| CheckpointError::Rootfs { container_id: id.to_owned(), source })?;
        let diff_path = tree.join(files::ROOTFS_DIFF);
        let deleted_path = tree.join(files::DELETED_FILES);
        let id = id.to_owned();
        crate::blocking::run(move || write_writable_layer(&upper, &diff_path, &deleted_path, &id)).await
    }
}

/// `rootfs-diff.tar` and `deleted.files` of the upper dir `upper`.
#[expect(clippy::disallowed_methods, reason = "runs on the blocking pool (capture_writable_layer)")]
fn write_writable_layer(upper: &Path, diff_path: &Path, deleted_path: &Path, id: &str) -> Result<(), CheckpointError> {
    let file = std::fs::File::create(diff_path).map_err(io("creating", diff_path))?;
    let summary = rootfs_diff::write_diff(upper, std::io::BufWriter::new(file))
        .map_err(|source| CheckpointError::Rootfs { container_id: id.to_owned(), source })?;
    let deleted = std::fs::File::create(deleted_path).map_err(io("creating", deleted_path))?;
    rootfs_diff::write_deleted_files(&summary.deleted, deleted)
        .map_err(|source| CheckpointError::Rootfs { container_id: id.to_owned(), source })
}

/// The lines of CRIU's dump log that explain a failure
/// ([`lazarus_format::criu_log::relevant_lines`]), with the log's path.
#[expect(clippy::disallowed_methods, reason = "runs on the blocking pool (dump_and_capture)")]
pub fn dump_log_excerpt(path: &Path) -> String {
    let Ok(text) = std::fs::read_to_string(path) else { return String::new() };
    let picked = lazarus_format::criu_log::relevant_lines(&text);
    if picked.is_empty() {
        return String::new();
    }
    format!("\nfrom {}:\n  {}", path.display(), picked.join("\n  "))
}

/// What the cut measured.
#[derive(Debug, Clone)]
pub(super) struct Cut {
    /// Each container's dump and capture, in the order of the parts.
    pub(super) dump_times: Vec<Duration>,
    /// From the first pause to the last resume.
    pub(super) frozen_time: Duration,
}

/// A staging directory removed when dropped (success or failure).
pub(super) struct Staging {
    pub(super) path: PathBuf,
}

impl Staging {
    /// A fresh staging directory for one checkpoint of `container_id`, with
    /// `tree/checkpoint/` (CRIU's images) and `work/` in it; leftovers of
    /// interrupted runs for the container are removed first. Blocking: call
    /// it through `blocking::run`.
    #[expect(clippy::disallowed_methods, reason = "runs on the blocking pool (Checkpointer::take)")]
    pub(super) fn prepare(root: &Path, container_id: &str, tag: &str) -> Result<Staging, CheckpointError> {
        clean_staging(root, container_id);
        let path = root.join(format!("{container_id}-{tag}"));
        std::fs::create_dir_all(&path).map_err(io("creating", &path))?;
        let staging = Staging { path };
        for dir in [staging.images(), staging.work()] {
            std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
        }
        Ok(staging)
    }

    /// The checkpoint tree that becomes the image layer.
    pub(super) fn tree(&self) -> PathBuf {
        self.path.join("tree")
    }

    /// CRIU's images, in the tree.
    pub(super) fn images(&self) -> PathBuf {
        self.tree().join(files::CHECKPOINT_DIR)
    }

    /// CRIU's work directory (its log and statistics), outside the tree.
    pub(super) fn work(&self) -> PathBuf {
        self.path.join("work")
    }
}

impl Staging {
    /// Removes the directory on the blocking pool and waits for it.
    pub(super) async fn remove(mut self) {
        let path = std::mem::take(&mut self.path);
        if let Err(error) = crate::blocking::remove_tree(path.clone()).await {
            tracing::warn!(path = %path.display(), %error, "could not remove the staging directory");
        }
    }
}

impl Drop for Staging {
    /// A staging directory not removed by [`Staging::remove`] (its checkpoint
    /// was abandoned half-way) is removed in the background: a multi-GiB tree
    /// takes seconds. A leftover (the process ended first) goes at the
    /// container's next checkpoint.
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            crate::blocking::remove_tree_later(self.path.clone());
        }
    }
}

/// Removes staging directories a killed process left for this container.
/// Called with the container's checkpoint lock held, so none is in use.
#[expect(clippy::disallowed_methods, reason = "runs on the blocking pool (Staging::prepare)")]
fn clean_staging(root: &Path, container_id: &str) {
    let Ok(entries) = std::fs::read_dir(root) else { return };
    let prefix = format!("{container_id}-");
    for entry in entries.filter_map(Result::ok) {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let path = entry.path();
            tracing::info!(path = %path.display(), "removing a checkpoint staging directory left by an interrupted run");
            if let Err(e) = std::fs::remove_dir_all(&path) {
                tracing::warn!(path = %path.display(), error = %e, "could not remove leftover staging directory");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_log_excerpt_picks_errors_and_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("dump.log");
        let mut text = String::new();
        for i in 0..50 {
            text.push_str(&format!("(00.0{i}) line {i}\n"));
        }
        text.push_str(
            "(01.000) Error (criu/sk-inet.c:190): inet: Connected TCP socket, consider using --tcp-established\n",
        );
        text.push_str("(01.001) Dumping FAILED.\n");
        std::fs::write(&log, text).expect("write");
        let excerpt = dump_log_excerpt(&log);
        assert!(excerpt.contains("Connected TCP socket"), "{excerpt}");
        assert!(excerpt.contains("Dumping FAILED."), "{excerpt}");
        assert!(!excerpt.contains("line 3\n"), "{excerpt}");
        assert_eq!(dump_log_excerpt(&dir.path().join("missing")), "");
    }
}
