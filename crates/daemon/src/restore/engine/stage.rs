//! Staging one candidate: downloaded (registry) or read (store, archive),
//! verified, unpacked into a staging dir and checked; then, once containerd
//! named the container, committed as its restore plan.

use super::candidates::Candidate;
use super::*;
use std::collections::BTreeMap;

use oci_spec::image::{ImageConfiguration, ImageManifest};

use crate::restore::checks::Target;
use lazarus_format::annotations as ann;
use lazarus_format::metadata::CheckpointMetadata;
use lazarus_format::plan::{Origin, Plan};
use lazarus_format::tree_files;

/// A checkpoint unpacked and checked, waiting for containerd's container id.
/// Dropped without [`Staged::commit`], it removes its files.
#[derive(Debug)]
pub struct Staged {
    pub(super) dir: PathBuf,
    pub(super) restore_dir: PathBuf,
    pub(super) origin: Origin,
    pub(super) committed: bool,
    /// Bytes unpacked (for the metrics).
    pub(super) bytes: u64,
    /// The containers of the pod cut the checkpoint was taken in (`lazarus.dev/pod-cut`).
    pub(super) pod_cut: Option<Vec<String>>,
    /// Set once the pod's containers are bound to this cut (restore/engine/cuts.rs).
    pub(super) cut_member: Option<super::cuts::CutMember>,
    /// Pod data destinations a sibling of the same cut put back already.
    pub(super) skip_pod_data: Vec<String>,
}

impl Staged {
    /// The checkpoint's reference.
    pub fn source(&self) -> &str {
        &self.origin.source
    }

    /// Makes the staged tree the restore plan of `container_id`. Blocking:
    /// call through `blocking::run`.
    #[expect(clippy::disallowed_methods, reason = "runs on the blocking pool (Restorer::commit)")]
    pub fn commit(mut self, container_id: &str) -> Result<PathBuf, RestoreError> {
        if !plan::valid_container_id(container_id) {
            return Err(RestoreError::Runtime(format!(
                "the runtime returned an unusable container id {container_id:?}"
            )));
        }
        let dest = plan::plan_dir(&self.restore_dir, container_id);
        std::fs::rename(&self.dir, &dest).map_err(io("moving the restore plan to", &dest))?;
        self.committed = true;
        let plan = Plan {
            version: plan::VERSION,
            source: self.origin.source.clone(),
            checkpoint_dir: dest.join(plan::TREE_DIR),
            tcp_close: true,
            skip_pod_data: self.skip_pod_data.clone(),
        };
        let written = write_json_atomic(&dest.join(plan::ORIGIN_FILE), &self.origin)
            .and_then(|()| write_json_atomic(&dest.join(plan::PLAN_FILE), &plan));
        if let Err(source) = written {
            std::fs::remove_dir_all(&dest).ok();
            return Err(RestoreError::Io { action: "writing the restore plan in", path: dest, source });
        }
        Ok(dest)
    }
}

impl Drop for Staged {
    /// An uncommitted staging dir is removed in the background: it may hold
    /// gigabytes of unpacked images.
    fn drop(&mut self) {
        if !self.committed {
            crate::blocking::remove_tree_later(self.dir.clone());
        }
    }
}

impl Restorer {
    /// Unpacks `candidate` into a fresh staging dir and runs the checks.
    pub(super) async fn stage(
        &self,
        subject: &Subject,
        candidate: &Candidate,
        image_ids: &[String],
        wait: Duration,
    ) -> Result<Staged, RestoreError> {
        let candidate = &self.pin(candidate.clone()).await?;
        let reference = candidate.reference();
        let downloaded = match candidate {
            Candidate::Registry { reference: pinned } => Some(self.download(pinned, wait).await?),
            _ => None,
        };
        let restore_dir = self.config.restore_dir.clone();
        let dir = crate::blocking::run(move || staging_dir(&restore_dir)).await?;
        let mut staged = Staged {
            dir: dir.clone(),
            restore_dir: self.config.restore_dir.clone(),
            origin: Origin { key: subject.key(), checkpoint: candidate.identity(), source: reference.clone() },
            committed: false,
            bytes: 0,
            pod_cut: None,
            cut_member: None,
            skip_pod_data: Vec::new(),
        };
        let tree = dir.join(plan::TREE_DIR);
        let (store, candidate2, tree2, downloaded2) =
            (self.store.clone(), candidate.clone(), tree.clone(), downloaded.clone());
        let started = std::time::Instant::now();
        // Unpacking (and hashing) gigabytes, and reading what the checkpoint
        // says of itself, on the blocking pool.
        let outcome = crate::blocking::run(move || {
            let (annotations, image_arch, unpacked) = match downloaded2 {
                Some(download) => unpack_download(&candidate2.reference(), &download, &tree2),
                None => unpack_candidate(&store, &candidate2, &tree2),
            }?;
            let meta = CheckpointMetadata::read(&tree2, &annotations, image_arch.as_deref());
            let pod_cut = super::cuts::members_of(&annotations);
            let has_images = tree2.join(ann::files::CHECKPOINT_DIR).is_dir();
            let volumes = super::volumes::read_record(&tree2)
                .map_err(|reason| RestoreError::Corrupt { reference: candidate2.reference(), reason })?;
            Ok::<_, RestoreError>((meta, has_images, unpacked, volumes, pod_cut))
        })
        .await;
        if let Some(download) = &downloaded {
            self.fetcher.release(&download.layer_digest);
            for (file, _) in &download.files {
                self.fetcher.release(file.digest().as_ref());
            }
        }
        let (meta, has_images, unpacked, volumes, pod_cut) = outcome?;
        let target =
            Target { namespace: &subject.namespace, image_ids, image_name: &subject.image.image, arch: ann::go_arch() };
        let cross = checks::cross_namespace_allowed(&reference, &self.config.cross_namespace_sources);
        checks::check(&meta, &target, cross)
            .map_err(|failure| RestoreError::Check { reference: reference.clone(), failure })?;
        if !has_images {
            return Err(RestoreError::Corrupt {
                reference,
                reason: format!("it has no {}/ directory of CRIU images", ann::files::CHECKPOINT_DIR),
            });
        }
        if let Some(record) = volumes {
            self.check_volumes(subject, &reference, record).await?;
        }
        tracing::info!(
            checkpoint = %reference,
            files = unpacked.files,
            bytes = unpacked.bytes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            checkpoint_namespace = meta.namespace.as_deref().unwrap_or(""),
            "checkpoint verified, unpacked and checked"
        );
        staged.bytes = unpacked.bytes;
        staged.pod_cut = pod_cut;
        Ok(staged)
    }

    /// The volume pre-check ([`super::volumes`]): refuses this attempt when
    /// the new container's volumes do not hold the files as recorded.
    async fn check_volumes(
        &self,
        subject: &Subject,
        reference: &str,
        record: lazarus_format::volumes::Record,
    ) -> Result<(), RestoreError> {
        let mounts = subject.mounts.clone();
        let appends_ok = subject.annotations.get(ann::VOLUME_APPENDS_OK).cloned();
        let checked = record.volumes.len();
        let mismatches =
            crate::blocking::run(move || super::volumes::mismatches(&record, &mounts, appends_ok.as_deref())).await;
        if !mismatches.is_empty() {
            return Err(RestoreError::Volume { reference: reference.to_owned(), mismatches });
        }
        tracing::debug!(checkpoint = %reference, volumes = checked, "the volumes hold the checkpoint's open files as recorded");
        Ok(())
    }

    /// Downloads a registry checkpoint's manifest, config and layer (verified).
    async fn download(&self, pinned: &Reference, wait: Duration) -> Result<Download, RestoreError> {
        let fetch_err = |source| RestoreError::Fetch { reference: pinned.to_string(), source };
        let resolved = self.fetcher.resolve(pinned).await.map_err(fetch_err)?;
        let config = resolved.manifest.config();
        let config_path =
            self.fetcher.blob(pinned, config.digest().as_ref(), config.size(), wait).await.map_err(fetch_err)?;
        let config_bytes = {
            let path = config_path.clone();
            #[expect(clippy::disallowed_methods, reason = "runs on the blocking pool")]
            let read = crate::blocking::run(move || std::fs::read(path)).await;
            read.map_err(io("reading", &config_path))?
        };
        self.fetcher.release(config.digest().as_ref());
        let arch =
            serde_json::from_slice::<ImageConfiguration>(&config_bytes).ok().map(|c| c.architecture().to_string());
        let Some((layer, file_layers)) = resolved.manifest.layers().split_first() else {
            return Err(fetch_err(FetchError::NotACheckpoint(format!("{pinned}: the manifest has no layer"))));
        };
        // Every blob started (a few at a time), then each waited for within the one deadline.
        let deadline = tokio::time::Instant::now() + wait;
        for file in file_layers {
            drop(self.fetcher.start(pinned, file.digest().as_ref(), file.size()));
        }
        let layer_digest = layer.digest().to_string();
        let layer_path = self.fetcher.blob(pinned, &layer_digest, layer.size(), wait).await.map_err(fetch_err)?;
        let mut files = Vec::with_capacity(file_layers.len());
        for file in file_layers {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let path = self.fetcher.blob(pinned, file.digest().as_ref(), file.size(), left).await.map_err(fetch_err)?;
            files.push((file.clone(), path));
        }
        let annotations = resolved.manifest.annotations().clone().unwrap_or_default().into_iter().collect();
        Ok(Download { layer_path, layer_digest, files, annotations, arch })
    }
}

/// A registry checkpoint downloaded and verified.
#[derive(Debug, Clone)]
struct Download {
    layer_path: PathBuf,
    layer_digest: String,
    /// The large files' layers ([`lazarus_format::tree_files`], [`lazarus_format::chunks`]), downloaded.
    files: Vec<(oci_spec::image::Descriptor, PathBuf)>,
    annotations: BTreeMap<String, String>,
    arch: Option<String>,
}

#[expect(clippy::disallowed_methods, reason = "runs on the blocking pool (Restorer::stage)")]
fn unpack_download(reference: &str, download: &Download, tree: &Path) -> Result<UnpackOutcome, RestoreError> {
    let file = std::fs::File::open(&download.layer_path).map_err(io("opening", &download.layer_path))?;
    // Verified while downloading; unpacking checks the archive's safety.
    let mut unpacked = archive::unpack(file, tree, None, &download.layer_path)
        .map_err(|source| RestoreError::Unpack { reference: reference.to_owned(), source })?;
    let layers: Vec<_> = download.files.iter().map(|(d, _)| d.clone()).collect();
    let corrupt = |reason: String| RestoreError::Corrupt { reference: reference.to_owned(), reason };
    let stored = crate::checkpoint::image::stored_files(&layers, |digest| {
        let found = download.files.iter().find(|(d, _)| d.digest().as_ref() == digest);
        found.map(|(_, path)| path.clone()).ok_or_else(|| format!("layer {digest} was not downloaded"))
    })
    .map_err(corrupt)?;
    let placed = place_files(&stored, tree).map_err(corrupt)?;
    unpacked.files += placed.0;
    unpacked.bytes += placed.1;
    Ok((download.annotations.clone(), download.arch.clone(), unpacked))
}

/// Manifest annotations, image architecture and what was unpacked.
type UnpackOutcome = (BTreeMap<String, String>, Option<String>, archive::Unpacked);

#[expect(clippy::disallowed_methods, reason = "runs on the blocking pool (Restorer::stage)")]
fn unpack_candidate(store: &Store, candidate: &Candidate, tree: &Path) -> Result<UnpackOutcome, RestoreError> {
    let reference = candidate.reference();
    match candidate {
        Candidate::Registry { reference } => Err(RestoreError::Runtime(format!("{reference} was not downloaded"))),
        Candidate::Archive { path } => {
            let file = std::fs::File::open(path).map_err(io("opening", path))?;
            let unpacked = archive::unpack(file, tree, None, path)
                .map_err(|source| RestoreError::Unpack { reference: reference.clone(), source })?;
            Ok((BTreeMap::new(), None, unpacked))
        }
        Candidate::Local { digest, .. } => {
            let corrupt = |reason: String| RestoreError::Corrupt { reference: reference.clone(), reason };
            // `read_blob` verifies the content against its digest.
            let bytes = store.read_blob(digest).map_err(|e| corrupt(format!("manifest: {e}")))?;
            let manifest: ImageManifest =
                serde_json::from_slice(&bytes).map_err(|e| corrupt(format!("manifest: {e}")))?;
            // The tree's archive, then its large files as they are (lazarus_format::tree_files).
            let Some((layer, files)) = manifest.layers().split_first() else {
                return Err(corrupt("the manifest has no layer".to_owned()));
            };
            let stored = crate::checkpoint::image::stored_files(files, |digest| {
                store.blob_path(digest).map_err(|e| format!("layer {digest}: {e}"))
            })
            .map_err(corrupt)?;
            let config_digest = manifest.config().digest().to_string();
            let arch = store
                .read_blob(&config_digest)
                .ok()
                .and_then(|b| serde_json::from_slice::<ImageConfiguration>(&b).ok())
                .map(|c| c.architecture().to_string());
            let layer_digest = layer.digest().to_string();
            let path = store.blob_path(&layer_digest).map_err(|e| corrupt(format!("layer: {e}")))?;
            let file = std::fs::File::open(&path).map_err(io("opening", &path))?;
            let mut unpacked = archive::unpack(file, tree, Some(&layer_digest), &path)
                .map_err(|source| RestoreError::Unpack { reference: reference.clone(), source })?;
            let placed = place_files(&stored, tree).map_err(corrupt)?;
            unpacked.files += placed.0;
            unpacked.bytes += placed.1;
            let annotations = manifest.annotations().clone().unwrap_or_default().into_iter().collect();
            Ok((annotations, arch, unpacked))
        }
    }
}

/// The checkpoint's large files, every blob checked against its digest: a file stored as it is
/// is hard-linked from the store into `tree` (no copy), a compressed one decompressed, a chunked
/// one written from its chunks; two files at a time. Returns (files, bytes).
fn place_files(files: &[tree_files::StoredFile], tree: &Path) -> Result<(u64, u64), String> {
    let placed = lazarus_format::fsutil::on_workers(
        files,
        2,
        |file| tree_files::place_file(file, tree).map(|_| file.size()).map_err(|e| e.to_string()),
        || Err("a worker placing the checkpoint's files panicked".to_owned()),
    );
    let mut bytes = 0;
    for outcome in placed {
        bytes += outcome?;
    }
    Ok((files.len() as u64, bytes))
}

/// A fresh staging dir (a unique name from tempfile) with an empty `tree/`;
/// the caller's `Staged` owns its removal.
#[expect(clippy::disallowed_methods, reason = "runs on the blocking pool (Restorer::stage)")]
fn staging_dir(restore_dir: &Path) -> Result<PathBuf, RestoreError> {
    let dir = tempfile::Builder::new()
        .prefix(STAGING_PREFIX)
        .tempdir_in(restore_dir)
        .map_err(io("creating a staging dir in", restore_dir))?
        .keep();
    let tree = dir.join(plan::TREE_DIR);
    if let Err(e) = std::fs::create_dir(&tree) {
        crate::blocking::remove_tree_later(dir);
        return Err(io("creating", &tree)(e));
    }
    Ok(dir)
}
