//! Committing a packaged checkpoint to the local store, and retention.

use super::*;
use crate::checkpoint::image;
use lazarus_store::Retention;
use std::collections::BTreeMap;

/// What one commit is about.
pub(super) struct Commit<'a> {
    pub(super) container_id: &'a str,
    /// `namespace/pod/container`.
    pub(super) key: &'a str,
    pub(super) tag: &'a str,
    pub(super) created: &'a str,
    /// Checkpoints of the container to keep, this one included.
    pub(super) keep: usize,
}

/// What committing a checkpoint produced.
pub(super) struct Committed {
    /// Manifest digest.
    pub(super) digest: String,
    /// Compressed layer size.
    pub(super) layer_size: u64,
    /// Bytes it added to the store (chunks the store had are not counted).
    pub(super) added: u64,
    /// Older checkpoints removed by retention and the size cap.
    pub(super) pruned: usize,
}

impl Checkpointer {
    /// Packages `tree` as an OCI image (the small files' layer is written in
    /// `scratch`, the large files are chunks), commits it and prunes the container's checkpoints to
    /// `keep` in the same index replacement, then applies the store's size cap.
    pub(super) async fn package_and_commit(
        &self,
        tree: &Path,
        scratch: &Path,
        annotations: BTreeMap<String, String>,
        commit: Commit<'_>,
    ) -> Result<Committed, CheckpointError> {
        let Commit { container_id, key, tag, created, keep } = commit;
        let store = self.store.clone();
        let compression = self.config.compression;
        let (tree2, scratch, created2, annotations2) =
            (tree.to_owned(), scratch.to_owned(), created.to_owned(), annotations);
        let mut packaged = crate::blocking::run(move || {
            image::package(&store, &tree2, &scratch, compression, &annotations2, &created2)
        })
        .await
        .map_err(|source| CheckpointError::Package { container_id: container_id.to_owned(), source })?;

        let index_annotations: BTreeMap<String, String> = [
            (ann::REF_NAME.to_owned(), format!("{key}:{tag}")),
            (ann::CONTAINER_KEY.to_owned(), key.to_owned()),
            (ann::CREATED.to_owned(), created.to_owned()),
            (ann::LAZARUS_CONTAINER_ID.to_owned(), container_id.to_owned()),
        ]
        .into();
        let store_err = |source| CheckpointError::Store { container_id: container_id.to_owned(), source };
        let store = self.store.clone();
        let manifest = std::mem::take(&mut packaged.manifest);
        let blobs = std::mem::take(&mut packaged.blobs);
        // `packaged.blobs` stays alive (leased against garbage collection) until the commit returns.
        let retention_key = key.to_owned();
        // Committed and pruned to `keep` in one index replacement: no reader sees keep + 1.
        let committed = crate::blocking::run(move || {
            let retention = Retention { key: ann::CONTAINER_KEY, value: &retention_key, keep };
            // The blobs were hashed as they were written: not read again.
            let committed = store.commit_written(&manifest, index_annotations, Some(retention), &blobs);
            drop(blobs);
            committed
        })
        .await
        .map_err(store_err)?;
        let (committed, removed) = committed;
        let digest = committed.digest().to_string();
        // The size cap reads manifests and deletes blobs: off the event loop.
        let this = self.clone();
        let (pruned, store_size) = crate::blocking::run(move || -> Result<(usize, Option<u64>), StoreError> {
            let mut pruned = removed.len();
            if let Some(max) = this.config.store_max_size {
                pruned += this.enforce_size_cap(max)?;
            }
            Ok((pruned, this.store.total_size().ok()))
        })
        .await
        .map_err(store_err)?;
        if let Some(bytes) = store_size {
            self.metrics.set_store_size(bytes);
        }
        Ok(Committed { digest, layer_size: packaged.layer_size, added: packaged.written, pruned })
    }
    /// Removes the oldest checkpoints until the store fits `max` bytes,
    /// keeping every container's newest one.
    pub(super) fn enforce_size_cap(&self, max: u64) -> Result<usize, StoreError> {
        let entries = self.store.list()?;
        let mut newest: std::collections::HashMap<String, String> = std::collections::HashMap::new();
        for entry in &entries {
            if let Some(key) = entry.annotation(ann::CONTAINER_KEY) {
                newest.insert(key.to_owned(), entry.digest());
            }
        }
        let removed = self.store.enforce_size_cap(max, |entry| {
            entry.annotation(ann::CONTAINER_KEY).is_some_and(|key| newest.get(key) == Some(&entry.digest()))
        })?;
        for entry in &removed {
            tracing::info!(
                checkpoint = entry.ref_name().unwrap_or_default(),
                max_bytes = max,
                "removed to keep the local store under its size cap"
            );
        }
        Ok(removed.len())
    }
}

/// The pod's `lazarus.dev/checkpoint-keep`, or the default; a malformed value
/// is logged and the default used.
pub fn keep_from_annotations(annotations: &std::collections::HashMap<String, String>) -> usize {
    match annotations.get(ann::CHECKPOINT_KEEP) {
        None => ann::DEFAULT_KEEP,
        Some(value) => match value.trim().parse::<usize>() {
            Ok(n) if n >= 1 => n,
            _ => {
                tracing::warn!(
                    annotation = ann::CHECKPOINT_KEEP,
                    value = %value,
                    default = ann::DEFAULT_KEEP,
                    "rejected annotation: expected a whole number >= 1; using the default"
                );
                ann::DEFAULT_KEEP
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_annotation_is_validated() {
        let mut a = std::collections::HashMap::new();
        assert_eq!(keep_from_annotations(&a), 3);
        a.insert(ann::CHECKPOINT_KEEP.to_owned(), "5".to_owned());
        assert_eq!(keep_from_annotations(&a), 5);
        for bad in ["0", "-1", "many", ""] {
            a.insert(ann::CHECKPOINT_KEEP.to_owned(), bad.to_owned());
            assert_eq!(keep_from_annotations(&a), 3, "{bad}");
        }
    }
}
