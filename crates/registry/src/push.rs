//! Pushing a committed checkpoint from the local store to a registry, and
//! registry-side retention.
//!
//! Tags, per container name: `<container>-<YYYYMMDDTHHMMSS.mmmZ>` (the local
//! store's time tag, so tags sort by time) and a moving `<container>-latest`.
//!
//! Order — never a corrupt `latest`: every blob (config, layers) is uploaded
//! from the store's files and verified (the registry checks the digest on
//! upload; lazarus then checks digest and size of what it serves), then the
//! manifest is put under the time tag (the registry refuses a manifest whose
//! blobs it lacks), and only then `-latest` is moved to it. A push that fails
//! at any step leaves `-latest` on the previous checkpoint.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock, PoisonError};

use bytes::Bytes;
use oci_spec::image::ImageManifest;

use super::client::{BlobPush, RegistryClient, RegistryError};
use super::reference::{Reference, ReferenceError, validate_tag};
use lazarus_store::{Store, StoreError};

/// Suffix of the moving tag.
pub const LATEST_SUFFIX: &str = "latest";

/// Why a push failed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// Reading the checkpoint from the local store.
    #[error("reading checkpoint {digest} from the local store: {source}")]
    Store {
        /// The manifest.
        digest: String,
        /// Why.
        source: StoreError,
    },
    /// The local manifest is not an OCI image manifest.
    #[error("checkpoint {digest} in the local store is not an image manifest: {reason}")]
    Manifest {
        /// The manifest.
        digest: String,
        /// Why.
        reason: String,
    },
    /// The tag would be invalid.
    #[error(transparent)]
    Tag(#[from] ReferenceError),
    /// The registry.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// A pushed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// `host/repo:<container>-<time>@sha256:…`.
    pub reference: String,
    /// The manifest digest.
    pub digest: String,
    /// The time tag.
    pub tag: String,
    /// Blobs uploaded (the others were there already).
    pub uploaded: usize,
    /// Bytes uploaded.
    pub uploaded_bytes: u64,
}

/// `<container>-<time tag>`.
pub fn time_tag(container: &str, time: &str) -> String {
    format!("{container}-{time}")
}

/// `<container>-latest`.
pub fn latest_tag(container: &str) -> String {
    format!("{container}-{LATEST_SUFFIX}")
}

/// Whether `suffix` is a lazarus time tag: `YYYYMMDDTHHMMSS.mmmZ`.
pub fn is_time_suffix(suffix: &str) -> bool {
    let b = suffix.as_bytes();
    b.len() == 20
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'.'
        && b[16..19].iter().all(u8::is_ascii_digit)
        && b[19] == b'Z'
}

/// Pushes checkpoint `manifest_digest` of the local store to `repository`
/// as `<container>-<time>` and then moves `<container>-latest` to it.
pub async fn push_checkpoint(
    client: &RegistryClient,
    store: &Store,
    manifest_digest: &str,
    repository: &Reference,
    container: &str,
    time: &str,
) -> Result<Pushed, PushError> {
    let tag = time_tag(container, time);
    let latest = latest_tag(container);
    validate_tag(&tag).map_err(|reason| ReferenceError { input: tag.clone(), reason })?;
    validate_tag(&latest).map_err(|reason| ReferenceError { input: latest.clone(), reason })?;
    let repository = Reference { tag: None, digest: None, ..repository.clone() };

    let store_err = |source| PushError::Store { digest: manifest_digest.to_owned(), source };
    let (store2, digest2) = (store.clone(), manifest_digest.to_owned());
    let manifest_bytes = tokio::task::spawn_blocking(move || store2.read_blob(&digest2))
        .await
        .map_err(|e| store_err(StoreError::Source { source: std::io::Error::other(e.to_string()) }))?
        .map_err(store_err)?;
    let manifest = ImageManifest::from_reader(&manifest_bytes[..])
        .map_err(|e| PushError::Manifest { digest: manifest_digest.to_owned(), reason: e.to_string() })?;
    let media_type = manifest
        .media_type()
        .as_ref()
        .map_or_else(|| "application/vnd.oci.image.manifest.v1+json".to_owned(), ToString::to_string);

    let mut uploaded = 0;
    let mut uploaded_bytes = 0;
    for descriptor in std::iter::once(manifest.config()).chain(manifest.layers()) {
        let digest = descriptor.digest().to_string();
        let path = store.blob_path(&digest).map_err(store_err)?;
        let started = std::time::Instant::now();
        match client.push_blob_from_file(&repository, &digest, descriptor.size(), &path).await? {
            BlobPush::Existed => tracing::debug!(repository = %repository, digest, "blob already in the registry"),
            BlobPush::Uploaded => {
                uploaded += 1;
                uploaded_bytes += descriptor.size();
                tracing::debug!(
                    repository = %repository,
                    digest,
                    size = descriptor.size(),
                    ms = started.elapsed().as_millis() as u64,
                    "blob uploaded and verified"
                );
            }
        }
    }
    let manifest_bytes = Bytes::from(manifest_bytes);
    let tagged = repository.with_tag(&tag)?;
    let digest = client.put_manifest(&tagged, &media_type, manifest_bytes.clone()).await?;
    if digest != manifest_digest {
        return Err(PushError::Manifest {
            digest: manifest_digest.to_owned(),
            reason: format!("its bytes hash to {digest}"),
        });
    }
    // Last: the moving tag. Until here `-latest` still names the previous checkpoint.
    client.put_manifest(&repository.with_tag(&latest)?, &media_type, manifest_bytes).await?;
    Ok(Pushed { reference: format!("{tagged}@{digest}"), digest, tag, uploaded, uploaded_bytes })
}

/// Which of `tags` retention keeps and removes: of this container's time
/// tags (`<container>-<time>`), the newest `keep` stay; the others go. Other
/// containers' tags and `-latest` are not touched. Both lists oldest first.
pub fn retention_choice(tags: &[String], container: &str, keep: usize) -> (Vec<String>, Vec<String>) {
    let prefix = format!("{container}-");
    let mut mine: Vec<String> =
        tags.iter().filter(|t| t.strip_prefix(&prefix).is_some_and(is_time_suffix)).cloned().collect();
    mine.sort();
    mine.dedup();
    let split = mine.len().saturating_sub(keep);
    let kept = mine.split_off(split);
    (kept, mine)
}

/// What registry retention did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionOutcome {
    /// Time tags whose manifests were deleted.
    pub removed: Vec<String>,
    /// Time tags kept.
    pub kept: Vec<String>,
    /// Set when the registry does not allow deletes (retention skipped).
    pub delete_unsupported: bool,
}

/// Registries already warned about having deletes disabled (warned once per process).
fn warned_delete_unsupported() -> &'static Mutex<HashSet<String>> {
    static WARNED: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    WARNED.get_or_init(Mutex::default)
}

/// Registry retention for `container` in `repository`: keeps the newest
/// `keep` time tags and deletes the manifests of the older ones by digest —
/// never the manifest `-latest` or a kept tag points to. A registry with
/// deletes disabled is warned about once and left alone.
pub async fn apply_retention(
    client: &RegistryClient,
    repository: &Reference,
    container: &str,
    keep: usize,
) -> Result<RetentionOutcome, RegistryError> {
    let repository = Reference { tag: None, digest: None, ..repository.clone() };
    let tags = client.list_tags(&repository).await?;
    let (kept, remove) = retention_choice(&tags, container, keep.max(1));
    let mut outcome = RetentionOutcome { kept: kept.clone(), ..Default::default() };
    if remove.is_empty() {
        return Ok(outcome);
    }
    // Deleting a manifest deletes every tag pointing at it: protect the digests of what stays.
    let mut protected = HashSet::new();
    let latest = latest_tag(container);
    for tag in kept.iter().chain(std::iter::once(&latest)) {
        if let Some(digest) = client.manifest_digest(&repository.with_tag(tag)?).await? {
            protected.insert(digest);
        }
    }
    for tag in remove {
        let Some(digest) = client.manifest_digest(&repository.with_tag(&tag)?).await? else { continue };
        if protected.contains(&digest) {
            tracing::debug!(repository = %repository, tag, digest, "kept: a newer tag or -latest names the same manifest");
            continue;
        }
        match client.delete_manifest(&repository, &digest).await {
            Ok(()) => {
                tracing::info!(repository = %repository, tag, digest, "registry retention: removed checkpoint");
                outcome.removed.push(tag);
            }
            Err(e @ RegistryError::DeleteUnsupported { .. }) => {
                let first = warned_delete_unsupported()
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(repository.registry.clone());
                if first {
                    tracing::warn!(repository = %repository, error = %e, "registry retention skipped");
                } else {
                    tracing::debug!(repository = %repository, error = %e, "registry retention skipped");
                }
                outcome.delete_unsupported = true;
                return Ok(outcome);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn time_suffixes() {
        assert!(is_time_suffix("20261122T235133.919Z"));
        for bad in ["latest", "20261122T235133Z", "20261122T235133.919", "2026112xT235133.919Z", ""] {
            assert!(!is_time_suffix(bad), "{bad}");
        }
        assert_eq!(time_tag("worker", "20261122T235133.919Z"), "worker-20261122T235133.919Z");
        assert!(validate_tag(&time_tag(&"a".repeat(63), "20261122T235133.919Z")).is_ok());
    }

    #[test]
    fn retention_keeps_the_newest_time_tags_of_one_container() {
        let all = tags(&[
            "worker-20261122T235133.919Z",
            "worker-latest",
            "worker-20251231T235959.999Z",
            "worker-20261122T235134.001Z",
            "worker-helper-20200101T000000.000Z",
            "sidecar-20200101T000000.000Z",
            "worker-20261122T235133.920Z",
            "worker-manual",
        ]);
        let (kept, removed) = retention_choice(&all, "worker", 2);
        assert_eq!(kept, tags(&["worker-20261122T235133.920Z", "worker-20261122T235134.001Z"]));
        assert_eq!(removed, tags(&["worker-20251231T235959.999Z", "worker-20261122T235133.919Z"]));

        // "worker-helper-…" belongs to the container "worker-helper", not to "worker".
        let (kept, removed) = retention_choice(&all, "worker-helper", 1);
        assert_eq!((kept.len(), removed.len()), (1, 0));

        let (kept, removed) = retention_choice(&all, "worker", 10);
        assert_eq!((kept.len(), removed.len()), (4, 0));
        let (kept, removed) = retention_choice(&[], "worker", 3);
        assert!(kept.is_empty() && removed.is_empty());
    }
}
