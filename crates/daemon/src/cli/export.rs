//! `lazarus checkpoints export REF FILE`: a checkpoint of the local store as a
//! kubelet-style archive — an uncompressed tar of the checkpoint tree in
//! checkpointctl's layout (`config.dump`, `spec.dump`, `status.dump`,
//! `checkpoint/`, `rootfs-diff.tar`, `deleted.files`, …), what kubelet's
//! checkpoint API leaves in `/var/lib/kubelet/checkpoints/`.
//!
//! The image's one layer *is* that tar, compressed: the export decompresses
//! it into the file as it reads it (streamed, any size), checks the layer's
//! sha256 on the way, and only then gives the file its name. `FILE` is never
//! overwritten: an existing file (or anything else at that path) is an error,
//! and the name appears only once the archive is complete (a hard link from a
//! temporary file in the same directory, which fails if the name was taken
//! meanwhile; the directory's filesystem must support hard links, as every
//! Linux disk filesystem does). The archive is mode 0600: it holds the
//! process's memory.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use lazarus_format::compression::decompressing;
use lazarus_format::digest::HashingReader;
use lazarus_store::Store;
use lazarus_store::query::find;

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The reference names no checkpoint of the store (the query's message).
    #[error("{0}")]
    NotFound(String),
    /// Something is at the destination already.
    #[error("{} exists; not overwriting it (remove it or choose another name)", .0.display())]
    Exists(PathBuf),
    /// The stored manifest is not one lazarus can export.
    #[error("checkpoint {reference}: {reason}")]
    NotACheckpoint {
        /// The checkpoint.
        reference: String,
        /// Why.
        reason: String,
    },
    /// The layer's bytes do not have its digest.
    #[error("checkpoint {reference}: layer {expected} is damaged (its data has {actual}); nothing was written")]
    Damaged {
        /// The checkpoint.
        reference: String,
        /// The layer's digest.
        expected: String,
        /// What the data hashes to.
        actual: String,
    },
    /// Reading the store or writing the archive.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// What was exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exported {
    /// `local:…@sha256:…` of the checkpoint.
    pub reference: String,
    /// Bytes of the archive.
    pub bytes: u64,
}

/// Exports `reference` of `store` to `file` on the blocking pool.
pub async fn export(store: Store, reference: String, file: PathBuf) -> Result<Exported, ExportError> {
    crate::blocking::run(move || export_now(&store, &reference, &file)).await
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ExportError + use<> {
    let path = path.to_owned();
    move |source| ExportError::Io { action, path, source }
}

/// The export itself: blocking.
#[expect(clippy::disallowed_methods, reason = "runs on the blocking pool (export)")]
fn export_now(store: &Store, reference: &str, file: &Path) -> Result<Exported, ExportError> {
    if std::fs::symlink_metadata(file).is_ok() {
        return Err(ExportError::Exists(file.to_owned()));
    }
    let found = find(store, reference).map_err(ExportError::NotFound)?;
    let reference = found.reference();
    let not_checkpoint = |reason: String| ExportError::NotACheckpoint { reference: reference.clone(), reason };
    let manifest =
        found.manifest.as_ref().ok_or_else(|| not_checkpoint(format!("manifest {} is unreadable", found.digest)))?;
    if manifest.layers().len() > 1 {
        // Large files stored as they are (lazarus_format::tree_files): the tar is written
        // from the first layer and the files.
        return export_tree(store, manifest, &reference, file);
    }
    let [layer] = manifest.layers().as_slice() else {
        return Err(not_checkpoint("the manifest has no layer".to_owned()));
    };
    let expected = layer.digest().to_string();
    let blob = store.blob_path(&expected).map_err(|e| not_checkpoint(format!("layer {expected}: {e}")))?;
    // Open before anything else: the open file stays readable even if the
    // store's garbage collection removes the blob meanwhile.
    let input = File::open(&blob).map_err(io("opening", &blob))?;

    let bytes = write_then_name(file, |partial, output| {
        let (written, actual) = write_partial(input, &blob, partial, output)?;
        // A wrong digest explains a failed decompression too: say that.
        if actual != expected {
            return Err(ExportError::Damaged { reference: reference.clone(), expected: expected.clone(), actual });
        }
        written
    })?;
    tracing::info!(reference = %reference, file = %file.display(), bytes, "checkpoint exported");
    Ok(Exported { reference, bytes })
}

/// The export of a checkpoint with large files of their own: the tree's tar
/// written from its layers into a new file, named once complete.
fn export_tree(
    store: &Store,
    manifest: &oci_spec::image::ImageManifest,
    reference: &str,
    file: &Path,
) -> Result<Exported, ExportError> {
    let bytes = write_then_name(file, |partial, output| {
        let mut writer = BufWriter::with_capacity(1 << 20, output);
        crate::checkpoint::image::write_stored_tree(store, manifest, &mut writer).map_err(|e| match e {
            crate::checkpoint::image::PackageError::Damaged { layer, actual } => {
                ExportError::Damaged { reference: reference.to_owned(), expected: layer, actual }
            }
            other => ExportError::NotACheckpoint { reference: reference.to_owned(), reason: other.to_string() },
        })?;
        let output = writer.into_inner().map_err(|e| io("writing", partial)(e.into_error()))?;
        output.sync_all().map_err(io("writing", partial))?;
        Ok(output.metadata().map_err(io("reading", partial))?.len())
    })?;
    tracing::info!(reference = %reference, file = %file.display(), bytes, "checkpoint exported");
    Ok(Exported { reference: reference.to_owned(), bytes })
}

/// Runs `write` on a temporary file next to `file` (created, mode 0600), then gives it the name
/// `file` — complete, and never replacing anything (a hard link, which fails
/// if the name was taken meanwhile). The temporary name is removed either way.
/// Returns what `write` returned (the archive's bytes).
#[expect(clippy::disallowed_methods, reason = "runs on the blocking pool (export)")]
fn write_then_name(
    file: &Path,
    write: impl FnOnce(&Path, File) -> Result<u64, ExportError>,
) -> Result<u64, ExportError> {
    let dir = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "export".into());
    let partial = dir.join(format!(".{name}.lazarus-export-{}", std::process::id()));
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .map_err(io("creating a file in", &dir));
    let result = created.and_then(|output| write(&partial, output)).and_then(|bytes| {
        std::fs::hard_link(&partial, file).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => ExportError::Exists(file.to_owned()),
            _ => io("naming the archive", file)(e),
        })?;
        Ok(bytes)
    });
    let _ = std::fs::remove_file(&partial);
    result
}

/// Decompresses the layer read from `input` into `output`, the new file at `partial`;
/// returns the outcome of writing it (the bytes written) and the sha256 of
/// everything read — after a failure too, the rest of the input is hashed.
fn write_partial(
    input: File,
    blob: &Path,
    partial: &Path,
    output: File,
) -> Result<(Result<u64, ExportError>, String), ExportError> {
    let mut hashing = BufReader::with_capacity(1 << 20, HashingReader::new(input));
    let written = (|| {
        let mut writer = BufWriter::with_capacity(1 << 20, output);
        let mut decoded = decompressing(&mut hashing).map_err(io("decompressing", blob))?;
        let bytes = std::io::copy(&mut decoded, &mut writer).map_err(io("decompressing into", partial))?;
        drop(decoded);
        let output = writer.into_inner().map_err(|e| io("writing", partial)(e.into_error()))?;
        output.sync_all().map_err(io("writing", partial))?;
        Ok(bytes)
    })();
    // What follows the compressed stream's end counts for the digest too.
    std::io::copy(&mut hashing, &mut std::io::sink()).map_err(io("reading", blob))?;
    Ok((written, hashing.into_inner().into_digester().oci()))
}

#[cfg(test)]
mod tests {
    #![expect(clippy::disallowed_methods, reason = "test set-up")]

    use super::*;
    use std::collections::BTreeMap;

    /// A store with one checkpoint whose layer is `tar` compressed with zstd;
    /// returns the store, its reference and the layer's path.
    fn store_with(dir: &Path, tar: &[u8]) -> (Store, String, PathBuf) {
        use oci_spec::image::{DescriptorBuilder, ImageManifestBuilder, MediaType};
        use std::str::FromStr;
        let store = Store::open(&dir.join("store")).expect("store");
        let layer = store.write_blob_bytes(&zstd::encode_all(tar, 1).expect("zstd")).expect("layer");
        let config = store.write_blob_bytes(b"{}").expect("config");
        let descriptor = |media: MediaType, blob: &lazarus_store::BlobInfo| {
            DescriptorBuilder::default()
                .media_type(media)
                .digest(oci_spec::image::Digest::from_str(&blob.digest).expect("digest"))
                .size(blob.size)
                .build()
                .expect("descriptor")
        };
        let manifest = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(descriptor(MediaType::ImageConfig, &config))
            .layers(vec![descriptor(MediaType::ImageLayerZstd, &layer)])
            .build()
            .expect("manifest")
            .to_string()
            .expect("json");
        let annotations: BTreeMap<String, String> = [
            (lazarus_format::annotations::CONTAINER_KEY.to_owned(), "ns/pod/app".to_owned()),
            (lazarus_format::annotations::REF_NAME.to_owned(), "ns/pod/app:20261203T000000.000Z".to_owned()),
            (lazarus_format::annotations::CREATED.to_owned(), "2026-12-03T00:00:00.000Z".to_owned()),
        ]
        .into();
        let digest = store.commit(manifest.as_bytes(), annotations).expect("commit").digest().to_string();
        let path = store.blob_path(&layer.digest).expect("path");
        drop((layer, config));
        (store, digest, path)
    }

    fn tree_tar() -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, data) in [("config.dump", &b"{}"[..]), ("checkpoint/inventory.img", b"criu")] {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o600);
            header.set_entry_type(tar::EntryType::Regular);
            builder.append_data(&mut header, name, data).expect("append");
        }
        builder.into_inner().expect("tar")
    }

    #[tokio::test(flavor = "current_thread")]
    async fn exports_the_tree_as_a_plain_tar_and_never_overwrites() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tar = tree_tar();
        let (store, digest, _) = store_with(dir.path(), &tar);
        let out = dir.path().join("checkpoint.tar");
        let exported = export(store.clone(), "ns/pod/app".into(), out.clone()).await.expect("export");
        assert_eq!(std::fs::read(&out).expect("archive"), tar);
        assert_eq!(exported.bytes, tar.len() as u64);
        assert!(exported.reference.ends_with(&digest), "{exported:?}");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&out).expect("meta").permissions().mode() & 0o777, 0o600);

        // By digest too; an existing file is refused and left as it was.
        std::fs::write(&out, b"mine").expect("write");
        let err = export(store.clone(), digest.clone(), out.clone()).await.expect_err("exists");
        assert!(matches!(err, ExportError::Exists(_)), "{err}");
        assert!(err.to_string().contains("not overwriting"), "{err}");
        assert_eq!(std::fs::read(&out).expect("kept"), b"mine");

        let err = export(store.clone(), digest.clone(), dir.path().join("no/such/dir.tar")).await.expect_err("no dir");
        assert!(
            err.to_string().starts_with(&format!("creating a file in {}", dir.path().join("no/such").display())),
            "{err}"
        );
        let err = export(store.clone(), "ns/pod/other".into(), dir.path().join("x.tar")).await.expect_err("unknown");
        assert!(matches!(err, ExportError::NotFound(_)) && err.to_string().contains("ns/pod/other"), "{err}");
        assert!(!dir.path().join("x.tar").exists());
        // Nothing temporary left behind.
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().contains("lazarus-export"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_damaged_layer_writes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, digest, layer) = store_with(dir.path(), &tree_tar());
        // Same compressed bytes plus trailing garbage: it still decompresses,
        // only the digest can tell.
        let mut bytes = std::fs::read(&layer).expect("layer");
        bytes.extend_from_slice(b"garbage");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&layer, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        std::fs::write(&layer, bytes).expect("damage");
        let out = dir.path().join("checkpoint.tar");
        let err = export(store, digest, out.clone()).await.expect_err("damaged");
        assert!(matches!(err, ExportError::Damaged { .. }), "{err}");
        assert!(!out.exists());
    }
}
