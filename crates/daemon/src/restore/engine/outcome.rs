//! After the restore was prepared: the plan committed or the created
//! container taken back, the start's outcome (a failure is remembered, so
//! `latest` takes an older checkpoint next time), and plans of removed
//! containers.

use super::*;
use std::collections::BTreeMap;

use lazarus_format::plan::Origin;

impl Restorer {
    /// Checkpoints of `key` whose restore failed before.
    pub(super) fn failed(&self, key: &str) -> Vec<String> {
        failed_checkpoints(&self.config.failures_file, key)
    }

    fn remember_failure(&self, origin: &Origin) {
        if let Err(e) = record_failure(&self.config.failures_file, origin) {
            tracing::warn!(error = %e, path = %self.config.failures_file.display(), "cannot record the failed restore");
        }
    }

    /// Whether `container_id` has a restore plan.
    pub fn has_plan(&self, container_id: &str) -> bool {
        plan::valid_container_id(container_id)
            && plan::plan_dir(&self.config.restore_dir, container_id).join(plan::PLAN_FILE).is_file()
    }

    /// After `StartContainer` of a container with a plan: on failure the
    /// checkpoint is remembered as failed for this container (the next
    /// `latest` attempt takes an older one); either way the unpacked images
    /// are removed, the logs kept until the container is removed.
    pub fn started(&self, container_id: &str, error: Option<&str>) {
        let dir = plan::plan_dir(&self.config.restore_dir, container_id);
        let origin: Option<Origin> = read_json(&dir.join(plan::ORIGIN_FILE));
        let result: Option<plan::RestoreResult> = read_json(&dir.join(plan::RESULT_FILE));
        let (key, source) =
            origin.as_ref().map_or((String::new(), String::new()), |o| (o.key.clone(), o.source.clone()));
        // The key is namespace/pod/container.
        let (pod, container) = key.rsplit_once('/').unwrap_or(("", key.as_str()));
        match error {
            None if result.as_ref().is_some_and(|r| r.ok) => {
                self.metrics.restore(RestoreResult::Restored);
                tracing::info!(pod, container, container_id, checkpoint = %source, "container restored from its checkpoint");
            }
            None => {
                self.metrics.restore(RestoreResult::Failed);
                self.metrics.restore_failed("wrapper");
                tracing::error!(
                    pod,
                    container,
                    container_id,
                    checkpoint = %source,
                    "StartContainer succeeded but the wrapper did not restore (is the pod's runtime handler's BinaryName lazarus-runc, with the same LAZARUS_RESTORE_DIR?)"
                );
            }
            Some(message) => {
                let log = result.map(|r| r.restore_log.join(" | ")).unwrap_or_default();
                self.metrics.restore(RestoreResult::Failed);
                self.metrics.restore_failed("criu");
                tracing::warn!(pod, container, container_id, checkpoint = %source, error = %message, restore_log = %log, "restore failed; this checkpoint will be skipped next time");
                if let Some(origin) = &origin {
                    self.remember_failure(origin);
                }
            }
        }
        let tree = dir.join(plan::TREE_DIR);
        // Gigabytes of images: removed on the blocking pool, not on the event
        // loop (StartContainer's answer does not wait for it).
        crate::blocking::remove_tree_later(tree);
    }

    /// After containerd created the container `container_id` for `staged`:
    /// the staged tree becomes its restore plan. If that fails the container
    /// is removed again ([`discard`](Self::discard)): a container promised a
    /// restore never starts fresh.
    pub async fn commit(&self, staged: Staged, container_id: &str) -> Result<PathBuf, RestoreError> {
        let id = container_id.to_owned();
        match crate::blocking::run(move || staged.commit(&id)).await {
            Ok(dir) => Ok(dir),
            Err(err) => {
                tracing::error!(container_id, error = %err, "the restore plan could not be written; removing the created container");
                self.discard(container_id).await;
                Err(err)
            }
        }
    }

    /// Removes a container created for a restore that can no longer happen
    /// (its plan could not be written), so it never starts fresh by mistake.
    pub async fn discard(&self, container_id: &str) {
        if let Err(status) = self.runtime.remove_container(container_id).await {
            tracing::error!(container_id, error = %status.message(), "cannot remove a container whose restore plan failed");
        }
        self.removed(container_id).await;
    }

    /// Removes the plans of containers the runtime no longer knows (removed
    /// while lazarus was down). Run once at start; a runtime that cannot be
    /// asked leaves everything in place.
    pub async fn sweep_stale_plans(&self) {
        let restore_dir = self.config.restore_dir.clone();
        #[expect(clippy::disallowed_methods, reason = "runs on the blocking pool")]
        let listed = crate::blocking::run(move || {
            std::fs::read_dir(&restore_dir).map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|name| !name.starts_with('.') && plan::valid_container_id(name))
                    .collect::<Vec<String>>()
            })
        })
        .await;
        let Ok(ids) = listed else { return };
        for id in ids {
            match self.runtime.container_status(&id, false).await {
                Err(status) if status.code() == Code::NotFound => {
                    tracing::info!(container_id = %id, "removing the restore plan of a container that no longer exists");
                    let dir = plan::plan_dir(&self.config.restore_dir, &id);
                    if let Err(e) = crate::blocking::remove_tree(dir).await {
                        tracing::warn!(container_id = %id, error = %e, "cannot remove a stale restore plan");
                    }
                }
                Err(status) => {
                    tracing::debug!(error = %status.message(), "runtime not answering; stale restore plans stay for now");
                    return;
                }
                Ok(_) => {}
            }
        }
    }

    /// After `RemoveContainer`: the plan dir goes too, before the answer (on
    /// the blocking pool: it may still hold an unpacked checkpoint).
    pub async fn removed(&self, container_id: &str) {
        if !plan::valid_container_id(container_id) {
            return;
        }
        let dir = plan::plan_dir(&self.config.restore_dir, container_id);
        // One stat here spares the blocking pool for every container without a plan.
        if !dir.exists() {
            return;
        }
        if let Err(error) = crate::blocking::remove_tree(dir.clone()).await {
            tracing::warn!(container_id, path = %dir.display(), %error, "cannot remove the restore plan");
        }
    }
}

/// Serializes updates of the failures file within this process.
static FAILURES: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Checkpoints whose restore failed for the container `key` (`namespace/pod/container`).
pub(super) fn failed_checkpoints(file: &Path, key: &str) -> Vec<String> {
    let all: BTreeMap<String, Vec<String>> = read_json(file).unwrap_or_default();
    all.get(key).cloned().unwrap_or_default()
}

/// Remembers that `origin.checkpoint` failed to restore for `origin.key`.
pub(super) fn record_failure(file: &Path, origin: &Origin) -> std::io::Result<()> {
    let _guard = FAILURES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut all: BTreeMap<String, Vec<String>> = read_json(file).unwrap_or_default();
    let list = all.entry(origin.key.clone()).or_default();
    if !list.contains(&origin.checkpoint) {
        list.push(origin.checkpoint.clone());
    }
    write_json_atomic(file, &all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_restores_are_remembered_per_container() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("restore-failures.json");
        assert!(failed_checkpoints(&file, "ns/p/c").is_empty());
        let origin = |key: &str, checkpoint: &str| Origin {
            key: key.into(),
            checkpoint: checkpoint.into(),
            source: format!("local:{key}@{checkpoint}"),
        };
        record_failure(&file, &origin("ns/p/c", "sha256:a")).expect("record");
        record_failure(&file, &origin("ns/p/c", "sha256:a")).expect("record twice");
        record_failure(&file, &origin("ns/p/c", "sha256:b")).expect("record");
        record_failure(&file, &origin("ns/q/c", "sha256:c")).expect("record");
        assert_eq!(failed_checkpoints(&file, "ns/p/c"), vec!["sha256:a".to_owned(), "sha256:b".to_owned()]);
        assert_eq!(failed_checkpoints(&file, "ns/q/c"), vec!["sha256:c".to_owned()]);
    }
}
