//! The node-local checkpoint store: an [OCI image layout] on disk.
//!
//! ```text
//! <root>/oci-layout          {"imageLayoutVersion":"1.0.0"}
//! <root>/index.json          one manifest descriptor per checkpoint, oldest first
//! <root>/blobs/sha256/<hex>  manifests, configs and layers, named by their digest
//! <root>/tmp/                staging area for blobs being written (not part of the layout)
//! <root>/.lock               `flock`ed by every change to index.json and by garbage collection
//! ```
//!
//! Any OCI layout reader (`skopeo`, `oras`, …) can read the store; it ignores
//! `tmp/` and `.lock`.
//!
//! # How a checkpoint becomes visible
//!
//! 1. [`Store::write_blob`] streams each config and layer into `tmp/`, hashing
//!    as it goes, fsyncs it and renames it into `blobs/sha256/`. The returned
//!    [`BlobInfo`] holds a *lease* on the blob (a shared `flock` on the file).
//! 2. [`Store::commit`] re-hashes every blob the manifest references, writes the
//!    manifest blob, and appends its descriptor to `index.json` (write
//!    `index.json.tmp`, fsync, rename, fsync the directory) under the exclusive
//!    store lock. Until that rename nothing points at the new blobs, so a crash
//!    at any step leaves the previous index intact.
//!
//! # Garbage collection and concurrent writers
//!
//! Several processes (the daemon, a CLI) may use the same store. Garbage
//! collection ([`Store::open`], [`Store::remove`], [`Store::collect_garbage`], …)
//! runs under the store lock. It removes a staging file in `tmp/` once its
//! writer no longer holds its `flock`, and a blob only when no index entry
//! references it, nobody holds a lease on it, and either
//!
//! - it belonged to an entry removed by the same call and has not been written
//!   again since that entry was committed, or
//! - it has not been written for [`ORPHAN_GRACE`] (leftovers of a crashed or
//!   failed checkpoint).
//!
//! Locks die with their process, so a crashed writer's blobs are collected in
//! due course. Keep each [`BlobInfo`] until the manifest referencing it is
//! committed: the lease is what makes that safe; the grace period and the
//! refreshed modification time of a re-written blob are a second line of
//! defence for writers that let go early.
//!
//! [OCI image layout]: https://github.com/opencontainers/image-spec/blob/main/image-layout.md

pub mod query;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lazarus_format::digest::{Digester, HashingWriter, sha256_hex as digest_hex};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use oci_spec::image::{
    ANNOTATION_CREATED, ANNOTATION_REF_NAME, Descriptor, Digest, ImageIndex, ImageManifest, MediaType,
};
use tempfile::NamedTempFile;

const OCI_LAYOUT_FILE: &str = "oci-layout";
const OCI_LAYOUT_TMP_FILE: &str = "oci-layout.tmp";
const OCI_LAYOUT_CONTENT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
const INDEX_FILE: &str = "index.json";
const INDEX_TMP_FILE: &str = "index.json.tmp";
const LOCK_FILE: &str = ".lock";
const TMP_DIR: &str = "tmp";
const BLOBS_DIR: &str = "blobs";
const SHA256: &str = "sha256";
const SHA256_PREFIX: &str = "sha256:";
const SHA256_HEX_LEN: usize = 64;
/// Mode of every directory the store creates.
const DIR_MODE: u32 = 0o700;
/// Mode of the files the store writes itself (blobs come from `tempfile`, also 0600).
const FILE_MODE: u32 = 0o600;
/// Read/hash buffer: large enough to keep syscalls rare on multi-GB layers.
const IO_BUFFER: usize = 256 * 1024;
/// How often a writer retries a staging file a concurrent cleanup removed under it.
const STAGING_ATTEMPTS: usize = 5;

/// Garbage collection keeps a blob no entry has ever referenced until it has
/// not been written for this long: it may belong to a checkpoint being committed.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(60 * 60);

/// Something went wrong in the checkpoint store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A filesystem operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done ("writing", "renaming into", …).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The reader given to [`Store::write_blob`] failed.
    #[error("reading the blob contents: {source}")]
    Source {
        /// The error.
        source: io::Error,
    },
    /// A `flock` could not be taken.
    #[error("locking {path}: {source}")]
    Lock {
        /// The locked file.
        path: PathBuf,
        /// The error.
        source: Errno,
    },
    /// A digest is malformed or uses an algorithm other than sha256.
    #[error("invalid digest {digest:?}: {reason}")]
    InvalidDigest {
        /// The digest as given.
        digest: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A blob is not in `blobs/`.
    #[error("blob {digest} is missing")]
    MissingBlob {
        /// The blob's digest.
        digest: String,
    },
    /// A blob's size or content does not match its digest.
    #[error("blob {digest} is corrupt: {problem}")]
    CorruptBlob {
        /// The blob's digest.
        digest: String,
        /// What was found instead.
        problem: String,
    },
    /// A manifest cannot be committed or read.
    #[error("manifest {digest} is invalid: {reason}")]
    InvalidManifest {
        /// The manifest's digest.
        digest: String,
        /// Why.
        reason: String,
    },
    /// `index.json` (or an index blob) cannot be used.
    #[error("{path} is not a valid image index: {reason}")]
    InvalidIndex {
        /// The index file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The index references something this store cannot look into, so it
    /// cannot tell which blobs are still in use.
    #[error("cannot tell which blobs {digest} references: unsupported media type {media_type}")]
    UnsupportedMediaType {
        /// The referenced content.
        digest: String,
        /// Its media type.
        media_type: String,
    },
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io { action, path: path.to_owned(), source }
}

/// A blob in `blobs/`, as returned by [`Store::write_blob`].
///
/// Holding it keeps the blob safe from garbage collection (in this and every
/// other process): keep it until the manifest referencing the blob has been
/// [committed](Store::commit). Clones share the lease.
#[derive(Debug, Clone)]
#[must_use = "dropping a BlobInfo lets garbage collection remove the uncommitted blob"]
pub struct BlobInfo {
    /// `sha256:<hex>`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    oci_digest: Digest,
    lease: Arc<Lease>,
}

impl BlobInfo {
    /// A descriptor of this blob with `media_type`, e.g. for a manifest's
    /// config or layers.
    pub fn descriptor(&self, media_type: MediaType) -> Descriptor {
        Descriptor::new(media_type, self.size, self.oci_digest.clone())
    }
}

/// Which entries a commit keeps: the newest `keep` annotated `key = value`.
#[derive(Debug, Clone, Copy)]
pub struct Retention<'a> {
    /// Index annotation grouping the entries (e.g. the container key).
    pub key: &'a str,
    /// Its value.
    pub value: &'a str,
    /// How many to keep (at least 1: the new one).
    pub keep: usize,
}

/// One checkpoint in the store: a manifest descriptor of `index.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The manifest descriptor (digest, size, annotations).
    pub descriptor: Descriptor,
    /// The `org.opencontainers.image.created` annotation, if set.
    pub created: Option<String>,
}

impl Entry {
    fn new(descriptor: Descriptor) -> Self {
        let created = descriptor.annotations().as_ref().and_then(|a| a.get(ANNOTATION_CREATED)).cloned();
        Entry { descriptor, created }
    }

    /// The manifest digest, `sha256:<hex>`.
    pub fn digest(&self) -> String {
        self.descriptor.digest().to_string()
    }

    /// The value of annotation `key`.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.descriptor.annotations().as_ref()?.get(key).map(String::as_str)
    }

    /// The `org.opencontainers.image.ref.name` annotation.
    pub fn ref_name(&self) -> Option<&str> {
        self.annotation(ANNOTATION_REF_NAME)
    }

    /// Whether annotation `key` is set to `value`.
    pub fn has_annotation(&self, key: &str, value: &str) -> bool {
        self.annotation(key) == Some(value)
    }
}

/// The checkpoint store rooted at one directory. Cheap to clone; every
/// operation locks what it needs, so handles may be used from several threads
/// and processes at once.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Opens the store at `root`, creating the layout (directories 0700) if
    /// missing, and cleans up after an interrupted earlier run: a stale
    /// `index.json.tmp`, abandoned staging files and blobs no entry references
    /// (see [`collect_garbage`](Self::collect_garbage)). A failed garbage
    /// collection is logged, not fatal: the committed entries stay usable.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        let store = Store { root: root.to_owned() };
        for dir in [store.root.clone(), store.blobs_dir(), store.tmp_dir()] {
            DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(&dir)
                .map_err(io_err("creating directory", &dir))?;
        }
        let lock = store.lock()?;
        for name in [INDEX_TMP_FILE, OCI_LAYOUT_TMP_FILE] {
            let path = store.root.join(name);
            if remove_if_exists(&path)? {
                tracing::info!(path = %path.display(), "removed leftover of an interrupted write");
            }
        }
        store.init_layout(&lock)?;
        if let Err(e) = store.collect_garbage_locked(&lock, &Released::new()) {
            tracing::warn!(error = %e, "store garbage collection skipped");
        }
        Ok(store)
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Streams `reader` into a new blob and returns its digest and size. The
    /// data is fsynced before it enters `blobs/`; if the blob exists already
    /// (and is intact) the existing file is kept.
    pub fn write_blob(&self, mut reader: impl Read) -> Result<BlobInfo, StoreError> {
        let mut staged = self.stage()?;
        let path = staged.file.path().to_owned();
        let mut digester = Digester::new();
        let mut buf = vec![0u8; IO_BUFFER];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(source) => return Err(StoreError::Source { source }),
            };
            digester.update(&buf[..n]);
            staged.file.write_all(&buf[..n]).map_err(io_err("writing", &path))?;
        }
        staged.file.as_file().sync_all().map_err(io_err("syncing", &path))?;
        let size = digester.size();
        self.install(staged, &digester.hex(), size)
    }

    /// Takes the file at `path` as a blob **without copying it**: moved into
    /// the store's staging directory (it must be on the store's filesystem),
    /// hashed while the kernel writes it to disk (`fsync` on a second thread),
    /// and renamed into `blobs/`. A checkpoint's CRIU images are written once,
    /// by CRIU, and become the stored form as they are. The file is gone from
    /// `path` afterwards; when the blob exists already (an identical file of
    /// an earlier checkpoint) the existing copy is kept and this one dropped.
    pub fn adopt_file(&self, path: &Path) -> Result<BlobInfo, StoreError> {
        let file = OpenOptions::new().read(true).write(true).open(path).map_err(io_err("opening", path))?;
        let meta = file.metadata().map_err(io_err("reading", path))?;
        if !meta.is_file() {
            let source = io::Error::new(ErrorKind::InvalidInput, "not a regular file");
            return Err(StoreError::Io { action: "adopting", path: path.to_owned(), source });
        }
        let dup = file.try_clone().map_err(io_err("opening", path))?;
        // Locked before it enters tmp/: a garbage collection finds it held, like any staging file.
        let lock = lock_file(dup, FlockArg::LockExclusive, path)?;
        let dir = self.tmp_dir();
        let staged_path = tempfile::Builder::new()
            .prefix("blob-")
            .make_in(&dir, |candidate| {
                // No replacing: a name another writer took is skipped.
                nix::fcntl::renameat2(
                    nix::fcntl::AT_FDCWD,
                    path,
                    nix::fcntl::AT_FDCWD,
                    candidate,
                    nix::fcntl::RenameFlags::RENAME_NOREPLACE,
                )
                .map_err(io::Error::from)
            })
            .map_err(io_err("moving into the staging directory", path))?
            .into_temp_path();
        let staged = Staged { file: NamedTempFile::from_parts(file, staged_path), _lock: lock };
        let (hex, size) = hash_while_syncing(staged.file.as_file(), staged.file.path())?;
        self.install(staged, &hex, size)
    }

    /// A new blob written by `produce` (hashed as it writes; fsynced before it
    /// enters `blobs/`): for data made on the fly, without a file of its own first.
    pub fn write_blob_streamed(
        &self,
        produce: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> Result<BlobInfo, StoreError> {
        let mut staged = self.stage()?;
        let path = staged.file.path().to_owned();
        let mut hashing = HashingWriter::new(io::BufWriter::with_capacity(IO_BUFFER, staged.file.as_file_mut()));
        produce(&mut hashing).map_err(|source| StoreError::Source { source })?;
        let (digester, mut writer) = hashing.finish();
        writer.flush().map_err(io_err("writing", &path))?;
        drop(writer);
        staged.file.as_file().sync_all().map_err(io_err("syncing", &path))?;
        let size = digester.size();
        self.install(staged, &digester.hex(), size)
    }

    /// [`write_blob`](Self::write_blob) for data already in memory.
    pub fn write_blob_bytes(&self, bytes: &[u8]) -> Result<BlobInfo, StoreError> {
        self.write_blob(bytes)
    }

    /// One of many small blobs of a checkpoint (a chunk of a large file): when the store has a
    /// blob with its digest and size already, that blob, leased — found by name and size, **not
    /// re-read**: blobs are synced before they enter `blobs/`, and readers check every digest —
    /// else `data` written to a locked staging file, not yet synced. Staged blobs are synced and
    /// moved into `blobs/` together by [`Store::install_staged`].
    pub fn store_chunk(&self, data: &[u8]) -> Result<Chunk, StoreError> {
        let hex = digest_hex(data);
        let digest = format!("{SHA256_PREFIX}{hex}");
        let size = data.len() as u64;
        let path = self.blob_file(&hex);
        if fs::symlink_metadata(&path).is_ok_and(|m| m.is_file() && m.len() == size) {
            match Lease::acquire(&path, &digest) {
                Ok(lease) if FileId::of_path(&path) == Some(lease.id) => {
                    let oci_digest = Digest::try_from(digest.as_str()).map_err(|_| StoreError::InvalidDigest {
                        digest: digest.clone(),
                        reason: "not a sha256 digest",
                    })?;
                    return Ok(Chunk::Existing(BlobInfo { digest, size, oci_digest, lease: Arc::new(lease) }));
                }
                // Removed or replaced meanwhile: write it.
                Ok(_) | Err(StoreError::MissingBlob { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let mut staged = self.stage()?;
        staged.file.write_all(data).map_err(io_err("writing", staged.file.path()))?;
        Ok(Chunk::Staged(StagedBlob { staged, hex, size }))
    }

    /// Syncs the staged blobs ([`Store::store_chunk`]), moves them into `blobs/` (keeping a copy
    /// another writer put there first) with one sync of the directory, and leases each. In the
    /// order given.
    pub fn install_staged(&self, staged: Vec<StagedBlob>) -> Result<Vec<BlobInfo>, StoreError> {
        for blob in &staged {
            blob.staged.file.as_file().sync_all().map_err(io_err("syncing", blob.staged.file.path()))?;
        }
        let lock = self.lock()?;
        let mut installed = Vec::with_capacity(staged.len());
        for StagedBlob { staged: Staged { file, _lock: staging_lock }, hex, size } in staged {
            let digest = format!("{SHA256_PREFIX}{hex}");
            let dest = self.blob_file(&hex);
            let present = fs::symlink_metadata(&dest).is_ok_and(|m| m.is_file() && m.len() == size);
            if !present {
                file.persist(&dest).map_err(|e| io_err("renaming into", &dest)(e.error))?;
            }
            drop(staging_lock);
            let oci_digest = Digest::try_from(digest.as_str())
                .map_err(|_| StoreError::InvalidDigest { digest: digest.clone(), reason: "not a sha256 digest" })?;
            let lease = Lease::acquire(&dest, &digest)?;
            installed.push(BlobInfo { digest, size, oci_digest, lease: Arc::new(lease) });
        }
        sync_dir(&self.blobs_dir())?;
        drop(lock);
        Ok(installed)
    }

    /// Commits an image manifest: the only way a checkpoint becomes visible.
    ///
    /// Refuses the manifest unless its config and every layer are in `blobs/`
    /// with the size and sha256 their descriptors state (the files are
    /// re-hashed). Then writes the manifest blob and appends its descriptor,
    /// annotated with `index_annotations` (e.g. `org.opencontainers.image.ref.name`,
    /// `org.opencontainers.image.created`), to `index.json`. Returns that
    /// descriptor.
    pub fn commit(
        &self,
        manifest_json: &[u8],
        index_annotations: BTreeMap<String, String>,
    ) -> Result<Descriptor, StoreError> {
        self.commit_with_retention(manifest_json, index_annotations, None).map(|(descriptor, _)| descriptor)
    }

    /// [`commit`](Self::commit), and in the same `index.json` replacement
    /// remove the oldest entries beyond `retention.keep` of those annotated
    /// `retention.key = retention.value` (the new one included): a reader never
    /// sees more than `keep` of them. Returns the descriptor and the removed
    /// entries (their blobs are collected like [`remove`](Self::remove)'s).
    pub fn commit_with_retention(
        &self,
        manifest_json: &[u8],
        index_annotations: BTreeMap<String, String>,
        retention: Option<Retention<'_>>,
    ) -> Result<(Descriptor, Vec<Entry>), StoreError> {
        self.commit_written(manifest_json, index_annotations, retention, &[])
    }

    /// [`commit_with_retention`](Self::commit_with_retention) for a manifest
    /// whose blobs this process has just written: those of `written` (hashed
    /// while written, leased since, still the files in `blobs/`) are not
    /// hashed again; every other blob is.
    pub fn commit_written(
        &self,
        manifest_json: &[u8],
        index_annotations: BTreeMap<String, String>,
        retention: Option<Retention<'_>>,
        written: &[BlobInfo],
    ) -> Result<(Descriptor, Vec<Entry>), StoreError> {
        let invalid = |reason: String| StoreError::InvalidManifest {
            digest: format!("{SHA256_PREFIX}{}", digest_hex(manifest_json)),
            reason,
        };
        let manifest = ImageManifest::from_reader(manifest_json).map_err(|e| invalid(e.to_string()))?;
        if manifest.schema_version() != 2 {
            return Err(invalid(format!("schemaVersion is {}, expected 2", manifest.schema_version())));
        }
        if let Some(media_type) = manifest.media_type()
            && *media_type != MediaType::ImageManifest
        {
            return Err(invalid(format!("mediaType is {media_type}, expected {}", MediaType::ImageManifest)));
        }

        // Hash outside the store lock (layers can be large); the leases keep the
        // verified files in place until the index names them.
        let mut blobs = Vec::with_capacity(manifest.layers().len() + 2);
        for descriptor in std::iter::once(manifest.config()).chain(manifest.layers()) {
            let digest = descriptor.digest().to_string();
            let known = written.iter().find(|blob| {
                blob.digest == digest
                    && blob.size == descriptor.size()
                    && descriptor_hex(descriptor)
                        .is_ok_and(|hex| FileId::of_path(&self.blob_file(hex)) == Some(blob.lease.id))
            });
            match known {
                Some(blob) => blobs.push(blob.clone()),
                None => blobs.push(self.verify_descriptor(descriptor)?),
            }
        }
        let manifest_blob = self.write_blob_bytes(manifest_json)?;
        blobs.push(manifest_blob.clone());

        let mut descriptor = manifest_blob.descriptor(MediaType::ImageManifest);
        if let Some(artifact_type) = manifest.artifact_type() {
            descriptor.set_artifact_type(Some(artifact_type.clone()));
        }
        if !index_annotations.is_empty() {
            descriptor.set_annotations(Some(index_annotations.into_iter().collect()));
        }

        let lock = self.lock()?;
        for blob in &blobs {
            self.confirm_locked(&lock, blob)?;
        }
        let mut index = self.read_index()?;
        let mut entries: Vec<Entry> = index.manifests().iter().cloned().map(Entry::new).collect();
        entries.push(Entry::new(descriptor.clone()));
        let doomed: BTreeSet<usize> = match &retention {
            None => BTreeSet::new(),
            Some(r) => {
                let matching: Vec<usize> = entries
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| e.has_annotation(r.key, r.value))
                    .map(|(i, _)| i)
                    .collect();
                let surplus = matching.len().saturating_sub(r.keep.max(1));
                matching[..surplus].iter().copied().collect()
            }
        };
        let (removed, kept): (Vec<_>, Vec<_>) = entries.into_iter().enumerate().partition(|(i, _)| doomed.contains(i));
        let removed: Vec<Entry> = removed.into_iter().map(|(_, e)| e).collect();
        let released = self.released_by(&removed);
        index.set_manifests(kept.into_iter().map(|(_, e)| e.descriptor).collect());
        self.write_index(&lock, &index)?;
        let entry = Entry::new(descriptor.clone());
        tracing::info!(digest = %entry.digest(), ref_name = entry.ref_name(), "committed checkpoint");
        for old in &removed {
            tracing::info!(digest = %old.digest(), ref_name = old.ref_name(), "removed checkpoint");
        }
        if !removed.is_empty()
            && let Err(e) = self.collect_garbage_locked(&lock, &released)
        {
            tracing::warn!(error = %e, "store garbage collection failed");
        }
        drop(lock);
        Ok((descriptor, removed))
    }

    /// All entries of `index.json`, oldest first.
    pub fn list(&self) -> Result<Vec<Entry>, StoreError> {
        Ok(self.read_index()?.manifests().iter().cloned().map(Entry::new).collect())
    }

    /// The entries whose annotation `key` is `value`, oldest first.
    pub fn list_with_annotation(&self, key: &str, value: &str) -> Result<Vec<Entry>, StoreError> {
        let mut entries = self.list()?;
        entries.retain(|e| e.has_annotation(key, value));
        Ok(entries)
    }

    /// Where blob `digest` (`sha256:<hex>`) is stored; it may not exist.
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, StoreError> {
        Ok(self.blob_file(sha256_hex(digest)?))
    }

    /// Reads a whole blob, verifying its content against `digest`.
    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>, StoreError> {
        let path = self.blob_path(digest)?;
        let bytes = fs::read(&path).map_err(|e| missing_or(e, digest, "reading", &path))?;
        let found = digest_hex(&bytes);
        check_hash(digest, &found)?;
        Ok(bytes)
    }

    /// Recomputes the sha256 of blob `digest`; fails if it is missing or its
    /// content does not match.
    pub fn verify_blob(&self, digest: &str) -> Result<(), StoreError> {
        let path = self.blob_path(digest)?;
        let file = File::open(&path).map_err(|e| missing_or(e, digest, "opening", &path))?;
        check_hash(digest, &hash_file(&file, &path)?)
    }

    /// Removes the entries with these manifest digests from `index.json`, then
    /// collects the blobs no remaining entry references. Unknown digests are
    /// ignored (another process may have removed them). Returns the removed
    /// entries.
    pub fn remove(&self, manifest_digests: &[String]) -> Result<Vec<Entry>, StoreError> {
        for digest in manifest_digests {
            sha256_hex(digest)?;
        }
        self.remove_where(|entries| {
            Ok(entries
                .iter()
                .enumerate()
                .filter(|(_, e)| manifest_digests.contains(&e.digest()))
                .map(|(i, _)| i)
                .collect())
        })
    }

    /// Retention: of the entries whose annotation `key` is `value`, keeps the
    /// newest `keep` and removes the others. Returns the removed entries.
    pub fn prune_keep_newest(&self, key: &str, value: &str, keep: usize) -> Result<Vec<Entry>, StoreError> {
        self.remove_where(|entries| {
            let matching: Vec<usize> =
                entries.iter().enumerate().filter(|(_, e)| e.has_annotation(key, value)).map(|(i, _)| i).collect();
            let surplus = matching.len().saturating_sub(keep);
            Ok(matching[..surplus].iter().copied().collect())
        })
    }

    /// Total size in bytes of all blobs.
    pub fn total_size(&self) -> Result<u64, StoreError> {
        Ok(self.blob_files()?.values().map(fs::Metadata::len).sum())
    }

    /// Removes the oldest entries until the blobs the entries reference take at
    /// most `max_bytes`, skipping every entry `protect` returns true for. Blobs
    /// shared with a remaining entry do not count as freed; blobs of checkpoints
    /// still being written (not referenced yet) do not count at all. Returns the
    /// removed entries; if only protected entries are left the store may stay
    /// above the cap (logged).
    pub fn enforce_size_cap(&self, max_bytes: u64, protect: impl Fn(&Entry) -> bool) -> Result<Vec<Entry>, StoreError> {
        self.remove_where(|entries| {
            let mut refs = Vec::with_capacity(entries.len());
            for entry in entries {
                let mut blobs = BTreeSet::new();
                self.references(&entry.descriptor, &mut blobs)?;
                refs.push(blobs);
            }
            let mut users: HashMap<&str, usize> = HashMap::new();
            for hex in refs.iter().flatten() {
                *users.entry(hex.as_str()).or_default() += 1;
            }
            let sizes: HashMap<String, u64> =
                self.blob_files()?.into_iter().map(|(hex, meta)| (hex, meta.len())).collect();
            let mut total: u64 = users.keys().filter_map(|hex| sizes.get(*hex)).sum();
            let mut doomed = BTreeSet::new();
            for (i, entry) in entries.iter().enumerate() {
                if total <= max_bytes {
                    break;
                }
                if protect(entry) {
                    continue;
                }
                doomed.insert(i);
                for hex in &refs[i] {
                    if let Some(count) = users.get_mut(hex.as_str()) {
                        *count -= 1;
                        if *count == 0 {
                            total = total.saturating_sub(sizes.get(hex).copied().unwrap_or(0));
                        }
                    }
                }
            }
            if total > max_bytes {
                tracing::warn!(total, max_bytes, "checkpoint store stays above its size cap: the rest is protected");
            }
            Ok(doomed)
        })
    }

    /// Removes abandoned staging files and the blobs no entry references that
    /// no writer holds and nobody has written for [`ORPHAN_GRACE`]. Returns the
    /// bytes freed. [`Store::open`] and the removal methods do this already.
    pub fn collect_garbage(&self) -> Result<u64, StoreError> {
        let lock = self.lock()?;
        self.collect_garbage_locked(&lock, &Released::new())
    }

    fn blobs_dir(&self) -> PathBuf {
        self.root.join(BLOBS_DIR).join(SHA256)
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join(TMP_DIR)
    }

    fn blob_file(&self, hex: &str) -> PathBuf {
        self.blobs_dir().join(hex)
    }

    /// Takes the exclusive store lock, waiting for other holders.
    fn lock(&self) -> Result<StoreLock, StoreError> {
        let path = self.root.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(FILE_MODE)
            .open(&path)
            .map_err(io_err("opening", &path))?;
        Ok(StoreLock { _flock: lock_file(file, FlockArg::LockExclusive, &path)? })
    }

    fn init_layout(&self, lock: &StoreLock) -> Result<(), StoreError> {
        if !self.root.join(OCI_LAYOUT_FILE).exists() {
            self.replace_file(lock, OCI_LAYOUT_FILE, OCI_LAYOUT_TMP_FILE, OCI_LAYOUT_CONTENT)?;
        }
        if !self.root.join(INDEX_FILE).exists() {
            let mut index = ImageIndex::default();
            index.set_media_type(Some(MediaType::ImageIndex));
            self.write_index(lock, &index)?;
        }
        Ok(())
    }

    fn read_index(&self) -> Result<ImageIndex, StoreError> {
        let path = self.root.join(INDEX_FILE);
        let bytes = fs::read(&path).map_err(io_err("reading", &path))?;
        let index: ImageIndex = serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::InvalidIndex { path: path.clone(), reason: e.to_string() })?;
        if index.schema_version() != 2 {
            let reason = format!("schemaVersion is {}, expected 2", index.schema_version());
            return Err(StoreError::InvalidIndex { path, reason });
        }
        Ok(index)
    }

    fn write_index(&self, lock: &StoreLock, index: &ImageIndex) -> Result<(), StoreError> {
        let path = self.root.join(INDEX_FILE);
        let json =
            serde_json::to_vec_pretty(index).map_err(|e| StoreError::InvalidIndex { path, reason: e.to_string() })?;
        self.replace_file(lock, INDEX_FILE, INDEX_TMP_FILE, &json)
    }

    /// Atomically replaces `<root>/<name>` with `bytes` through `<root>/<tmp_name>`.
    fn replace_file(&self, _lock: &StoreLock, name: &str, tmp_name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let tmp = self.root.join(tmp_name);
        let dest = self.root.join(name);
        let write = || -> Result<(), StoreError> {
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(FILE_MODE)
                .open(&tmp)
                .map_err(io_err("creating", &tmp))?;
            file.write_all(bytes).map_err(io_err("writing", &tmp))?;
            file.sync_all().map_err(io_err("syncing", &tmp))?;
            fs::rename(&tmp, &dest).map_err(io_err("renaming into", &dest))
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        sync_dir(&self.root)
    }

    /// Creates a locked staging file in `tmp/`.
    fn stage(&self) -> Result<Staged, StoreError> {
        let dir = self.tmp_dir();
        for _ in 0..STAGING_ATTEMPTS {
            let file = tempfile::Builder::new()
                .prefix("blob-")
                .tempfile_in(&dir)
                .map_err(io_err("creating a staging file in", &dir))?;
            let dup = file.as_file().try_clone().map_err(io_err("opening", file.path()))?;
            match Flock::lock(dup, FlockArg::LockExclusiveNonblock) {
                // A cleanup that found the file before we locked it has removed it
                // or is about to: take another one.
                Ok(lock) if same_file(file.path(), file.as_file()) => return Ok(Staged { file, _lock: lock }),
                Ok(_) | Err((_, Errno::EWOULDBLOCK)) => continue,
                Err((_, source)) => return Err(StoreError::Lock { path: file.path().to_owned(), source }),
            }
        }
        let source = io::Error::other("staging files kept disappearing");
        Err(StoreError::Io { action: "staging a blob in", path: dir, source })
    }

    /// Moves a fully written staging file into `blobs/` (or keeps an intact
    /// existing copy) and leases the result.
    fn install(&self, staged: Staged, hex: &str, size: u64) -> Result<BlobInfo, StoreError> {
        let digest = format!("{SHA256_PREFIX}{hex}");
        let oci_digest = Digest::try_from(digest.as_str())
            .map_err(|_| StoreError::InvalidDigest { digest: digest.clone(), reason: "not a sha256 digest" })?;
        let dest = self.blob_file(hex);
        // Checked before taking the lock: hashing a large existing blob takes a while.
        let intact_existing = File::open(&dest)
            .ok()
            .filter(|file| check_file(file, &dest, &digest, Some(size)).is_ok())
            .and_then(|file| FileId::of(&file).map(|id| (file, id)));

        let lock = self.lock()?;
        match intact_existing {
            Some((file, id)) if FileId::of_path(&dest) == Some(id) => {
                // Written again: garbage collection must see it as fresh.
                file.set_modified(SystemTime::now()).map_err(io_err("touching", &dest))?;
            }
            _ => {
                if dest.exists() {
                    tracing::warn!(digest, "replacing a corrupt copy of the blob");
                }
                let Staged { file, _lock: staging_lock } = staged;
                file.persist(&dest).map_err(|e| io_err("renaming into", &dest)(e.error))?;
                drop(staging_lock);
                sync_dir(&self.blobs_dir())?;
            }
        }
        let lease = Lease::acquire(&dest, &digest)?;
        drop(lock);
        Ok(BlobInfo { digest, size, oci_digest, lease: Arc::new(lease) })
    }

    /// Leases the blob `descriptor` points at and checks its size and hash.
    fn verify_descriptor(&self, descriptor: &Descriptor) -> Result<BlobInfo, StoreError> {
        let digest = descriptor.digest().to_string();
        let hex = descriptor_hex(descriptor)?;
        let path = self.blob_file(hex);
        for _ in 0..STAGING_ATTEMPTS {
            let lease = Lease::acquire(&path, &digest)?;
            // Leased after a writer replaced a corrupt copy? Lease the new file.
            if FileId::of_path(&path) != Some(lease.id) {
                continue;
            }
            check_file(&lease.file, &path, &digest, Some(descriptor.size()))?;
            return Ok(BlobInfo {
                digest,
                size: descriptor.size(),
                oci_digest: descriptor.digest().clone(),
                lease: Arc::new(lease),
            });
        }
        Err(StoreError::MissingBlob { digest })
    }

    /// Under the store lock: the blob is still the file that was verified, or
    /// an intact replacement.
    fn confirm_locked(&self, _lock: &StoreLock, blob: &BlobInfo) -> Result<(), StoreError> {
        let hex = sha256_hex(&blob.digest)?;
        let path = self.blob_file(hex);
        match FileId::of_path(&path) {
            None => Err(StoreError::MissingBlob { digest: blob.digest.clone() }),
            Some(id) if id == blob.lease.id => Ok(()),
            Some(_) => {
                let file = File::open(&path).map_err(|e| missing_or(e, &blob.digest, "opening", &path))?;
                check_file(&file, &path, &blob.digest, Some(blob.size))
            }
        }
    }

    /// Removes the entries `select` picks (indices into the entries, oldest
    /// first) under the store lock, then collects garbage.
    fn remove_where(
        &self,
        select: impl FnOnce(&[Entry]) -> Result<BTreeSet<usize>, StoreError>,
    ) -> Result<Vec<Entry>, StoreError> {
        let lock = self.lock()?;
        let mut index = self.read_index()?;
        let entries: Vec<Entry> = index.manifests().iter().cloned().map(Entry::new).collect();
        let doomed = select(&entries)?;
        if doomed.is_empty() {
            return Ok(Vec::new());
        }
        let (removed, kept): (Vec<_>, Vec<_>) = entries.into_iter().enumerate().partition(|(i, _)| doomed.contains(i));
        let removed: Vec<Entry> = removed.into_iter().map(|(_, e)| e).collect();
        let released = self.released_by(&removed);
        index.set_manifests(kept.into_iter().map(|(_, e)| e.descriptor).collect());
        self.write_index(&lock, &index)?;
        for entry in &removed {
            tracing::info!(digest = %entry.digest(), ref_name = entry.ref_name(), "removed checkpoint");
        }
        // The entries are gone either way; what is not collected now is on a later run.
        if let Err(e) = self.collect_garbage_locked(&lock, &released) {
            tracing::warn!(error = %e, "store garbage collection failed");
        }
        Ok(removed)
    }

    /// The blobs `removed` referenced, each with the time the newest of those
    /// entries was committed (its manifest blob's modification time). An entry
    /// whose manifest cannot be read releases nothing: its blobs are left to
    /// the grace period.
    fn released_by(&self, removed: &[Entry]) -> Released {
        let mut released = Released::new();
        for entry in removed {
            let mut blobs = BTreeSet::new();
            let committed_at = descriptor_hex(&entry.descriptor)
                .and_then(|hex| {
                    let path = self.blob_file(hex);
                    fs::metadata(&path).and_then(|m| m.modified()).map_err(io_err("inspecting", &path))
                })
                .and_then(|time| self.references(&entry.descriptor, &mut blobs).map(|()| time));
            match committed_at {
                Ok(time) => {
                    for hex in blobs {
                        let at = released.entry(hex).or_insert(time);
                        *at = (*at).max(time);
                    }
                }
                Err(e) => {
                    tracing::warn!(digest = %entry.digest(), error = %e, "its blobs are left to the grace period")
                }
            }
        }
        released
    }

    fn collect_garbage_locked(&self, lock: &StoreLock, released: &Released) -> Result<u64, StoreError> {
        self.clean_staging(lock)?;
        let mut live = BTreeSet::new();
        for descriptor in self.read_index()?.manifests() {
            self.references(descriptor, &mut live)?;
        }
        let now = SystemTime::now();
        let mut freed = 0;
        for (hex, meta) in self.blob_files()? {
            if live.contains(&hex) {
                continue;
            }
            let digest = format!("{SHA256_PREFIX}{hex}");
            let written = meta.modified().unwrap_or(now);
            let collectable = match released.get(&hex) {
                // Written again after the removed entry was committed: a writer may be about to commit it.
                Some(committed_at) => written <= *committed_at,
                None => now.duration_since(written).is_ok_and(|age| age >= ORPHAN_GRACE),
            };
            if !collectable {
                tracing::debug!(digest, "keeping recently written unreferenced blob");
                continue;
            }
            let size = meta.len();
            let path = self.blob_file(&hex);
            let file = match File::open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("opening", &path)(e)),
            };
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(_unused) => {
                    remove_if_exists(&path)?;
                    tracing::info!(digest, size, "removed unreferenced blob");
                    freed += size;
                }
                Err((_, Errno::EWOULDBLOCK)) => {
                    tracing::debug!(digest, "keeping unreferenced blob a writer holds");
                }
                Err((_, source)) => return Err(StoreError::Lock { path, source }),
            }
        }
        if freed > 0 {
            sync_dir(&self.blobs_dir())?;
        }
        Ok(freed)
    }

    /// Removes staging files whose writer is gone (it holds a `flock` while writing).
    fn clean_staging(&self, _lock: &StoreLock) -> Result<(), StoreError> {
        let dir = self.tmp_dir();
        for item in fs::read_dir(&dir).map_err(io_err("listing", &dir))? {
            let item = item.map_err(io_err("listing", &dir))?;
            let path = item.path();
            if item.file_type().map_err(io_err("inspecting", &path))?.is_dir() {
                // The store never creates directories here.
                fs::remove_dir_all(&path).map_err(io_err("removing", &path))?;
                tracing::info!(path = %path.display(), "removed leftover staging directory");
                continue;
            }
            let file = match File::open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("opening", &path)(e)),
            };
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(file) if same_file(&path, &file) => {
                    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
                    if remove_if_exists(&path)? {
                        tracing::info!(path = %path.display(), size, "removed leftover staging file");
                    }
                }
                Ok(_) | Err((_, Errno::EWOULDBLOCK)) => {}
                Err((_, source)) => return Err(StoreError::Lock { path, source }),
            }
        }
        Ok(())
    }

    /// Adds to `blobs` the hex digests of `descriptor` and everything it
    /// references (config and layers of a manifest, manifests of an index).
    fn references(&self, descriptor: &Descriptor, blobs: &mut BTreeSet<String>) -> Result<(), StoreError> {
        let hex = descriptor_hex(descriptor)?;
        if !blobs.insert(hex.to_owned()) {
            return Ok(());
        }
        let digest = descriptor.digest().to_string();
        match descriptor.media_type() {
            MediaType::ImageManifest => {
                let bytes = self.read_blob(&digest)?;
                let manifest = ImageManifest::from_reader(bytes.as_slice())
                    .map_err(|e| StoreError::InvalidManifest { digest, reason: e.to_string() })?;
                for child in std::iter::once(manifest.config()).chain(manifest.layers()) {
                    blobs.insert(descriptor_hex(child)?.to_owned());
                }
            }
            MediaType::ImageIndex => {
                let bytes = self.read_blob(&digest)?;
                let index = ImageIndex::from_reader(bytes.as_slice())
                    .map_err(|e| StoreError::InvalidIndex { path: self.blob_file(hex), reason: e.to_string() })?;
                for child in index.manifests() {
                    self.references(child, blobs)?;
                }
            }
            other => return Err(StoreError::UnsupportedMediaType { digest, media_type: other.to_string() }),
        }
        Ok(())
    }

    /// Metadata of every blob file, by hex digest.
    fn blob_files(&self) -> Result<BTreeMap<String, fs::Metadata>, StoreError> {
        let dir = self.blobs_dir();
        let mut files = BTreeMap::new();
        for item in fs::read_dir(&dir).map_err(io_err("listing", &dir))? {
            let item = item.map_err(io_err("listing", &dir))?;
            let Some(hex) = item.file_name().to_str().filter(|name| is_sha256_hex(name)).map(str::to_owned) else {
                continue;
            };
            match item.metadata() {
                Ok(meta) if meta.is_file() => {
                    files.insert(hex, meta);
                }
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("inspecting", &item.path())(e)),
            }
        }
        Ok(files)
    }
}

/// Blobs (hex digests) the entries removed by one operation referenced, with
/// the time the newest of those entries was committed.
type Released = HashMap<String, SystemTime>;

/// The exclusive store lock; functions taking `&StoreLock` must run under it.
#[derive(Debug)]
struct StoreLock {
    _flock: Flock<File>,
}

/// A staging file in `tmp/`, exclusively locked while it is being written.
#[derive(Debug)]
struct Staged {
    file: NamedTempFile,
    _lock: Flock<File>,
}

/// What [`Store::store_chunk`] did with a chunk.
#[derive(Debug)]
pub enum Chunk {
    /// The store had it: leased.
    Existing(BlobInfo),
    /// Written to the staging directory; [`Store::install_staged`] makes it a blob.
    Staged(StagedBlob),
}

/// A blob written to the staging directory, not yet synced nor in `blobs/`. Dropped, it is
/// removed.
#[derive(Debug)]
#[must_use = "a staged blob is removed when dropped: install it with Store::install_staged"]
pub struct StagedBlob {
    staged: Staged,
    hex: String,
    size: u64,
}

impl StagedBlob {
    /// `sha256:<hex>`.
    pub fn digest(&self) -> String {
        format!("{SHA256_PREFIX}{}", self.hex)
    }

    /// Its size.
    pub fn size(&self) -> u64 {
        self.size
    }
}

/// A shared lock on a blob file: garbage collection leaves it alone.
#[derive(Debug)]
struct Lease {
    file: Flock<File>,
    id: FileId,
}

impl Lease {
    fn acquire(path: &Path, digest: &str) -> Result<Lease, StoreError> {
        let file = File::open(path).map_err(|e| missing_or(e, digest, "opening", path))?;
        let id = FileId::of(&file).ok_or_else(|| StoreError::MissingBlob { digest: digest.to_owned() })?;
        Ok(Lease { file: lock_file(file, FlockArg::LockShared, path)?, id })
    }
}

/// Identity of a file, to tell whether a path still names an open file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    fn of(file: &File) -> Option<FileId> {
        file.metadata().ok().map(|m| FileId { dev: m.dev(), ino: m.ino() })
    }

    fn of_path(path: &Path) -> Option<FileId> {
        fs::symlink_metadata(path).ok().map(|m| FileId { dev: m.dev(), ino: m.ino() })
    }
}

/// sha256 and size of `file`, read from the start, while a second thread
/// `fsync`s it: the hash is CPU work, the sync the disk's, and they overlap.
fn hash_while_syncing(file: &File, path: &Path) -> Result<(String, u64), StoreError> {
    std::thread::scope(|scope| {
        let syncing = scope.spawn(|| file.sync_all());
        let mut digester = Digester::new();
        let mut buf = vec![0u8; IO_BUFFER];
        let mut offset = 0u64;
        loop {
            let n = match file.read_at(&mut buf, offset) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(source) => return Err(StoreError::Io { action: "reading", path: path.to_owned(), source }),
            };
            offset += n as u64;
            digester.update(&buf[..n]);
        }
        let synced = syncing.join().unwrap_or_else(|_| Err(io::Error::other("the syncing thread panicked")));
        synced.map_err(io_err("syncing", path))?;
        let size = digester.size();
        Ok((digester.hex(), size))
    })
}

fn same_file(path: &Path, file: &File) -> bool {
    FileId::of(file).is_some_and(|id| FileId::of_path(path) == Some(id))
}

/// `flock`s `file`, retrying when a signal interrupts the wait.
fn lock_file(mut file: File, arg: FlockArg, path: &Path) -> Result<Flock<File>, StoreError> {
    loop {
        match Flock::lock(file, arg) {
            Ok(locked) => return Ok(locked),
            Err((f, Errno::EINTR)) => file = f,
            Err((_, source)) => return Err(StoreError::Lock { path: path.to_owned(), source }),
        }
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("syncing directory", dir))
}

/// Removes a file; false if it was already gone.
fn remove_if_exists(path: &Path) -> Result<bool, StoreError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err("removing", path)(e)),
    }
}

fn missing_or(e: io::Error, digest: &str, action: &'static str, path: &Path) -> StoreError {
    if e.kind() == ErrorKind::NotFound {
        StoreError::MissingBlob { digest: digest.to_owned() }
    } else {
        io_err(action, path)(e)
    }
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == SHA256_HEX_LEN && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The hex part of a `sha256:<hex>` digest; anything else is refused (it
/// would otherwise end up in a path).
fn sha256_hex(digest: &str) -> Result<&str, StoreError> {
    let invalid = |reason| StoreError::InvalidDigest { digest: digest.to_owned(), reason };
    let hex = digest.strip_prefix(SHA256_PREFIX).ok_or_else(|| invalid("only sha256 digests are supported"))?;
    if !is_sha256_hex(hex) {
        return Err(invalid("expected sha256: and 64 lower-case hex digits"));
    }
    Ok(hex)
}

fn descriptor_hex(descriptor: &Descriptor) -> Result<&str, StoreError> {
    descriptor.as_digest_sha256().ok_or_else(|| StoreError::InvalidDigest {
        digest: descriptor.digest().to_string(),
        reason: "only sha256 digests are supported",
    })
}

/// sha256 (hex) of a file's content, read from offset 0.
fn hash_file(file: &File, path: &Path) -> Result<String, StoreError> {
    let mut digester = Digester::new();
    let mut buf = vec![0u8; IO_BUFFER];
    loop {
        let n = match file.read_at(&mut buf, digester.size()) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err("reading", path)(e)),
        };
        digester.update(&buf[..n]);
    }
    Ok(digester.hex())
}

fn check_hash(digest: &str, found_hex: &str) -> Result<(), StoreError> {
    if sha256_hex(digest)? == found_hex {
        Ok(())
    } else {
        Err(StoreError::CorruptBlob {
            digest: digest.to_owned(),
            problem: format!("content hashes to sha256:{found_hex}"),
        })
    }
}

/// Checks a blob file's size (if known) and content against its digest.
fn check_file(file: &File, path: &Path, digest: &str, size: Option<u64>) -> Result<(), StoreError> {
    if let Some(expected) = size {
        let found = file.metadata().map_err(io_err("inspecting", path))?.len();
        if found != expected {
            let problem = format!("expected size {expected}, found {found}");
            return Err(StoreError::CorruptBlob { digest: digest.to_owned(), problem });
        }
    }
    check_hash(digest, &hash_file(file, path)?)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use oci_spec::image::ImageManifestBuilder;

    use super::*;

    const KEY: &str = "lazarus.dev/container-key";

    /// The blobs of one committed checkpoint.
    #[derive(Debug, Clone)]
    struct Committed {
        manifest: String,
        config: String,
        layer: String,
    }

    impl Committed {
        fn blobs(&self) -> [&str; 3] {
            [&self.manifest, &self.config, &self.layer]
        }
    }

    fn manifest_json(config: Descriptor, layers: Vec<Descriptor>) -> Vec<u8> {
        ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(config)
            .layers(layers)
            .build()
            .expect("manifest")
            .to_string()
            .expect("manifest JSON")
            .into_bytes()
    }

    fn annotations(container: &str, n: usize) -> BTreeMap<String, String> {
        BTreeMap::from([
            (KEY.to_owned(), container.to_owned()),
            (ANNOTATION_REF_NAME.to_owned(), format!("{}-{n}", container.replace('/', "-"))),
            (ANNOTATION_CREATED.to_owned(), format!("2025-01-01T00:00:{n:02}Z")),
        ])
    }

    /// Commits checkpoint `n` of `container`: a unique config, a unique layer of
    /// `layer_size` bytes, then the `shared` layers.
    fn checkpoint(store: &Store, container: &str, n: usize, layer_size: usize, shared: &[&BlobInfo]) -> Committed {
        let config =
            store.write_blob_bytes(format!(r#"{{"container":"{container}","n":{n}}}"#).as_bytes()).expect("config");
        let mut layer_bytes = format!("{container}#{n}#").into_bytes();
        layer_bytes.resize(layer_size.max(layer_bytes.len()), b'.');
        let layer = store.write_blob_bytes(&layer_bytes).expect("layer");
        let layers = std::iter::once(&layer).chain(shared.iter().copied()).map(|b| b.descriptor(MediaType::ImageLayer));
        let json = manifest_json(config.descriptor(MediaType::ImageConfig), layers.collect());
        let descriptor = store.commit(&json, annotations(container, n)).expect("commit");
        Committed { manifest: descriptor.digest().to_string(), config: config.digest, layer: layer.digest }
    }

    fn flip_first_byte(path: &Path) {
        let mut bytes = fs::read(path).expect("read blob");
        bytes[0] ^= 0xff;
        fs::write(path, bytes).expect("write blob");
    }

    /// Makes a blob look last written at `time`.
    fn set_written(store: &Store, digest: &str, time: SystemTime) {
        let file = File::options().write(true).open(store.blob_path(digest).expect("path")).expect("open blob");
        file.set_modified(time).expect("set mtime");
    }

    fn ago(age: Duration) -> SystemTime {
        SystemTime::now() - age
    }

    fn exists(store: &Store, digest: &str) -> bool {
        store.blob_path(digest).expect("blob path").exists()
    }

    fn digests(entries: &[Entry]) -> Vec<String> {
        entries.iter().map(Entry::digest).collect()
    }

    fn sha256_of(bytes: &[u8]) -> String {
        format!("sha256:{}", digest_hex(bytes))
    }

    #[test]
    fn an_adopted_file_becomes_a_blob_without_a_copy_and_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("store")).expect("open");
        let staging = dir.path().join("store").join("..").join("staging");
        fs::create_dir_all(&staging).expect("staging");
        let first = staging.join("pages-1.img");
        fs::write(&first, vec![9u8; 3 << 20]).expect("write");
        let ino = fs::metadata(&first).expect("meta").ino();
        let blob = store.adopt_file(&first).expect("adopt");
        assert_eq!(blob.digest, sha256_of(&vec![9u8; 3 << 20]));
        assert_eq!(blob.size, 3 << 20);
        assert!(!first.exists(), "moved, not copied");
        let path = store.blob_path(&blob.digest).expect("path");
        assert_eq!(fs::metadata(&path).expect("blob").ino(), ino, "the same file");
        // The same content again (an idle process's pages in the next checkpoint): one blob.
        let second = staging.join("pages-2.img");
        fs::write(&second, vec![9u8; 3 << 20]).expect("write");
        let again = store.adopt_file(&second).expect("adopt again");
        assert_eq!(again.digest, blob.digest);
        assert_eq!(fs::metadata(&path).expect("blob").ino(), ino, "the first copy kept");
        assert!(!second.exists());
        assert_eq!(fs::read_dir(store.tmp_dir()).expect("tmp").count(), 0, "nothing left in tmp/");
        // Committed with the leases it came with: not hashed again, and a blob replaced
        // meanwhile (another inode) is hashed, so damage is still refused.
        let config = store.write_blob_bytes(b"{}").expect("config");
        let json =
            manifest_json(config.descriptor(MediaType::ImageConfig), vec![blob.descriptor(MediaType::ImageLayer)]);
        store.commit_written(&json, annotations("ns/p/c", 1), None, &[config.clone(), blob.clone()]).expect("commit");
        fs::remove_file(&path).expect("unlink");
        fs::write(&path, vec![8u8; 3 << 20]).expect("replace");
        let json2 =
            manifest_json(config.descriptor(MediaType::ImageConfig), vec![blob.descriptor(MediaType::ImageLayer)]);
        let err = store
            .commit_written(&json2, annotations("ns/p/c", 2), None, &[config, blob])
            .expect_err("the file in blobs/ is not the one written");
        assert!(err.to_string().contains("sha256"), "{err}");
    }

    #[test]
    fn chunks_are_written_once_and_shared_ones_outlive_the_checkpoint_that_wrote_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let store_all = |chunks: &[&[u8]]| -> (Vec<BlobInfo>, usize) {
            let (mut existing, mut staged) = (Vec::new(), Vec::new());
            for chunk in chunks {
                match store.store_chunk(chunk).expect("chunk") {
                    Chunk::Existing(blob) => existing.push(blob),
                    Chunk::Staged(blob) => staged.push(blob),
                }
            }
            let written = staged.len();
            let mut blobs = store.install_staged(staged).expect("install");
            blobs.extend(existing);
            (blobs, written)
        };
        // Staged, nothing is in blobs/ yet; dropped, nothing is left.
        let staged = match store.store_chunk(b"unwanted").expect("chunk") {
            Chunk::Staged(blob) => blob,
            Chunk::Existing(_) => panic!("a new chunk was found in the store"),
        };
        assert!(!exists(&store, &staged.digest()));
        drop(staged);
        assert_eq!(fs::read_dir(store.tmp_dir()).expect("tmp").count(), 0, "a dropped staged chunk is removed");

        let (first, written) = store_all(&[b"chunk one", b"chunk two", b"chunk one"]);
        assert_eq!(written, 3, "the same chunk twice in one call is staged twice, installed once");
        let commit = |n: usize, blobs: &[BlobInfo]| {
            let config = store.write_blob_bytes(format!("config {n}").as_bytes()).expect("config");
            let layers = blobs.iter().map(|b| b.descriptor(MediaType::Other("chunk".into()))).collect();
            let json = manifest_json(config.descriptor(MediaType::ImageConfig), layers);
            let written: Vec<BlobInfo> = blobs.iter().cloned().chain([config]).collect();
            let (descriptor, _) =
                store.commit_written(&json, annotations("ns/pod/c", n), None, &written).expect("commit");
            descriptor.digest().to_string()
        };
        let v1 = commit(1, &first);
        drop(first);
        let (second, written) = store_all(&[b"chunk one", b"chunk three"]);
        assert_eq!(written, 1, "only the new chunk is written");
        let v2 = commit(2, &second);
        drop(second);
        store.remove(&[v1]).expect("remove v1");
        for chunk in [&b"chunk one"[..], b"chunk three"] {
            let digest = format!("sha256:{}", digest_hex(chunk));
            store.verify_blob(&digest).expect("a chunk of v2 survives v1's removal");
        }
        assert!(!exists(&store, &format!("sha256:{}", digest_hex(b"chunk two"))), "v1's own chunk is collected");
        store.remove(&[v2]).expect("remove v2");
        assert_eq!(store.total_size().expect("size"), 0);
    }

    #[test]
    fn a_streamed_blob_is_hashed_as_it_is_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("store")).expect("open");
        let blob = store
            .write_blob_streamed(|out| {
                out.write_all(b"one ")?;
                out.write_all(b"two")
            })
            .expect("blob");
        assert_eq!(blob.digest, sha256_of(b"one two"));
        assert_eq!(store.read_blob(&blob.digest).expect("read"), b"one two");
        let err = store.write_blob_streamed(|_| Err(io::Error::other("producer failed"))).expect_err("fails");
        assert!(err.to_string().contains("producer failed"), "{err}");
    }

    #[test]
    fn commit_makes_the_checkpoint_visible_in_a_valid_layout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("state/store");
        let store = Store::open(&root).expect("open");
        assert_eq!(fs::metadata(&root).expect("root").mode() & 0o777, 0o700);

        let committed = checkpoint(&store, "ns/pod/app", 0, 100, &[]);

        let layout: serde_json::Value =
            serde_json::from_slice(&fs::read(root.join("oci-layout")).expect("oci-layout")).expect("oci-layout JSON");
        assert_eq!(layout, serde_json::json!({"imageLayoutVersion": "1.0.0"}));
        let index: serde_json::Value =
            serde_json::from_slice(&fs::read(root.join("index.json")).expect("index.json")).expect("index JSON");
        assert_eq!(index["schemaVersion"], 2);
        assert_eq!(index["manifests"].as_array().expect("manifests").len(), 1);
        let descriptor = &index["manifests"][0];
        assert_eq!(descriptor["mediaType"], "application/vnd.oci.image.manifest.v1+json");
        assert_eq!(descriptor["digest"], committed.manifest.as_str());
        assert_eq!(descriptor["annotations"][ANNOTATION_REF_NAME], "ns-pod-app-0");
        assert_eq!(descriptor["annotations"][KEY], "ns/pod/app");

        let entries = store.list().expect("list");
        assert_eq!(digests(&entries), [committed.manifest.as_str()]);
        assert_eq!(entries[0].created.as_deref(), Some("2025-01-01T00:00:00Z"));
        assert_eq!(entries[0].ref_name(), Some("ns-pod-app-0"));
        assert_eq!(store.list_with_annotation(KEY, "ns/pod/app").expect("filter").len(), 1);
        assert!(store.list_with_annotation(KEY, "ns/pod/other").expect("filter").is_empty());

        let manifest = ImageManifest::from_reader(store.read_blob(&committed.manifest).expect("manifest").as_slice())
            .expect("stored manifest parses");
        assert_eq!(manifest.config().digest().to_string(), committed.config);
        assert_eq!(manifest.layers()[0].digest().to_string(), committed.layer);
        assert_eq!(manifest.layers()[0].size(), 100);
        for digest in committed.blobs() {
            store.verify_blob(digest).expect("committed blob verifies");
        }

        // Reopening (which collects garbage) keeps everything committed.
        let store = Store::open(&root).expect("reopen");
        assert_eq!(digests(&store.list().expect("list")), [committed.manifest.as_str()]);
        for digest in committed.blobs() {
            store.verify_blob(digest).expect("committed blob survives reopening");
        }
    }

    #[test]
    fn commit_refuses_missing_or_altered_blobs_and_leaves_the_index_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        checkpoint(&store, "ns/pod/app", 0, 10, &[]);
        let index_path = dir.path().join("index.json");
        let index_before = fs::read(&index_path).expect("index");
        let config = store.write_blob_bytes(b"{}").expect("config");
        let config_descriptor = config.descriptor(MediaType::ImageConfig);

        // A layer that was never written.
        let absent = Digest::try_from(sha256_of(b"never written")).expect("digest");
        let json = manifest_json(config_descriptor.clone(), vec![Descriptor::new(MediaType::ImageLayer, 13, absent)]);
        let err = store.commit(&json, annotations("ns/pod/app", 1)).expect_err("missing layer");
        assert!(matches!(err, StoreError::MissingBlob { .. }), "{err}");

        // A layer whose bytes were altered after writing.
        let altered = store.write_blob_bytes(b"0123456789").expect("layer");
        flip_first_byte(&store.blob_path(&altered.digest).expect("path"));
        let json = manifest_json(config_descriptor.clone(), vec![altered.descriptor(MediaType::ImageLayer)]);
        let err = store.commit(&json, annotations("ns/pod/app", 1)).expect_err("altered layer");
        assert!(matches!(err, StoreError::CorruptBlob { .. }), "{err}");
        assert!(err.to_string().starts_with(&format!("blob {} is corrupt: content hashes to sha256:", altered.digest)));

        // A truncated layer.
        let truncated = store.write_blob_bytes(b"abcdefghij").expect("layer");
        let path = store.blob_path(&truncated.digest).expect("path");
        fs::write(&path, b"abcdefghi").expect("truncate");
        let json = manifest_json(config_descriptor.clone(), vec![truncated.descriptor(MediaType::ImageLayer)]);
        let err = store.commit(&json, annotations("ns/pod/app", 1)).expect_err("truncated layer");
        assert_eq!(err.to_string(), format!("blob {} is corrupt: expected size 10, found 9", truncated.digest));

        // A descriptor that lies about the size of an intact blob.
        let intact = store.write_blob_bytes(b"intact").expect("layer");
        let mut lying = intact.descriptor(MediaType::ImageLayer);
        lying.set_size(7);
        let err = store.commit(&manifest_json(config_descriptor, vec![lying]), BTreeMap::new()).expect_err("size");
        assert!(matches!(err, StoreError::CorruptBlob { .. }), "{err}");

        // Not a manifest at all.
        let err = store.commit(b"{\"schemaVersion\":2}", BTreeMap::new()).expect_err("not a manifest");
        assert!(matches!(err, StoreError::InvalidManifest { .. }), "{err}");

        assert_eq!(fs::read(&index_path).expect("index"), index_before, "index.json changed");
        assert_eq!(store.list().expect("list").len(), 1);
    }

    #[test]
    fn open_cleans_up_after_an_interrupted_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let store = Store::open(root).expect("open");
        let committed = checkpoint(&store, "ns/pod/app", 0, 50, &[]);
        let entries_before = store.list().expect("list");

        // A blob being streamed when the process died.
        let staging = root.join("tmp/blob-interrupted");
        fs::write(&staging, b"half a layer").expect("staging file");
        // Blobs written but never committed, by a run that died a while ago.
        let orphan = store.write_blob_bytes(b"orphaned layer").expect("orphan").digest.clone();
        let raw_orphan = sha256_of(b"raw orphan");
        fs::write(store.blob_path(&raw_orphan).expect("path"), b"raw orphan").expect("raw orphan");
        for digest in [&orphan, &raw_orphan] {
            set_written(&store, digest, ago(ORPHAN_GRACE + Duration::from_secs(60)));
        }
        // A blob written moments ago by a writer that let go of its BlobInfo early.
        let recent = store.write_blob_bytes(b"layer of a checkpoint in progress").expect("recent").digest.clone();
        // An index update that never got renamed into place.
        fs::write(root.join("index.json.tmp"), b"{\"schemaVer").expect("stale index");
        assert!(exists(&store, &orphan) && exists(&store, &raw_orphan));

        let store = Store::open(root).expect("reopen");
        assert!(!staging.exists(), "staging file left behind");
        assert!(!exists(&store, &orphan), "uncommitted blob left behind");
        assert!(!exists(&store, &raw_orphan), "unreferenced blob left behind");
        assert!(exists(&store, &recent), "a blob younger than ORPHAN_GRACE was collected");
        assert!(!root.join("index.json.tmp").exists(), "stale index.json.tmp left behind");
        assert_eq!(store.list().expect("list"), entries_before);
        for digest in committed.blobs() {
            store.verify_blob(digest).expect("committed blob verifies");
        }
    }

    #[test]
    fn open_spares_blobs_and_staging_files_live_writers_hold() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let pending_config = store.write_blob_bytes(b"{}").expect("config");
        let pending_layer = store.write_blob_bytes(b"layer not committed yet").expect("layer");
        let abandoned = store.write_blob_bytes(b"layer of a failed checkpoint").expect("layer");
        // The checkpoint takes longer than the grace period: only the leases protect its blobs.
        for blob in [&pending_config, &pending_layer, &abandoned] {
            set_written(&store, &blob.digest, ago(ORPHAN_GRACE * 2));
        }
        let abandoned_digest = abandoned.digest.clone();
        drop(abandoned);
        let staging = dir.path().join("tmp/blob-being-written");
        fs::write(&staging, b"partial").expect("staging file");
        let writer_lock =
            Flock::lock(File::open(&staging).expect("open staging"), FlockArg::LockExclusive).expect("lock staging");

        // Another process opens the store meanwhile.
        Store::open(dir.path()).expect("open again");
        assert!(staging.exists(), "a live writer's staging file was removed");
        assert!(exists(&store, &pending_layer.digest), "a leased blob was collected");
        assert!(!exists(&store, &abandoned_digest), "a stale blob nobody holds was kept");

        let json = manifest_json(
            pending_config.descriptor(MediaType::ImageConfig),
            vec![pending_layer.descriptor(MediaType::ImageLayer)],
        );
        store.commit(&json, annotations("ns/pod/app", 0)).expect("commit after concurrent open");

        drop(writer_lock);
        Store::open(dir.path()).expect("open once the writer is gone");
        assert!(!staging.exists(), "abandoned staging file kept");
    }

    #[test]
    fn concurrent_commits_from_two_handles_lose_no_entry() {
        const PER_WRITER: usize = 20;
        let dir = tempfile::tempdir().expect("tempdir");
        let writers = [Store::open(dir.path()).expect("open a"), Store::open(dir.path()).expect("open b")];
        let collector = Store::open(dir.path()).expect("open c");
        let done = AtomicBool::new(false);

        std::thread::scope(|scope| {
            let handles: Vec<_> = writers
                .iter()
                .enumerate()
                .map(|(w, store)| {
                    scope.spawn(move || {
                        for n in 0..PER_WRITER {
                            checkpoint(store, &format!("ns/pod/c{w}"), n, 4096, &[]);
                        }
                    })
                })
                .collect();
            // Garbage collection running all along must not take anything a writer holds.
            scope.spawn(|| {
                while !done.load(Ordering::Relaxed) {
                    collector.collect_garbage().expect("collect garbage");
                    Store::open(dir.path()).expect("open while writing");
                }
            });
            let results: Vec<_> = handles.into_iter().map(|handle| handle.join()).collect();
            done.store(true, Ordering::Relaxed);
            for result in results {
                result.expect("writer thread");
            }
        });

        let store = Store::open(dir.path()).expect("reopen");
        let entries = store.list().expect("list");
        assert_eq!(entries.len(), 2 * PER_WRITER);
        for w in 0..2 {
            let names: Vec<_> = store
                .list_with_annotation(KEY, &format!("ns/pod/c{w}"))
                .expect("filter")
                .iter()
                .map(|e| e.ref_name().expect("ref name").to_owned())
                .collect();
            let expected: Vec<_> = (0..PER_WRITER).map(|n| format!("ns-pod-c{w}-{n}")).collect();
            assert_eq!(names, expected);
        }
        for entry in &entries {
            let mut blobs = BTreeSet::new();
            store.references(&entry.descriptor, &mut blobs).expect("references");
            for hex in blobs {
                store.verify_blob(&format!("sha256:{hex}")).expect("blob verifies");
            }
        }
    }

    #[test]
    fn a_commit_with_retention_never_shows_more_than_keep() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let first: Vec<_> = (0..2).map(|n| checkpoint(&store, "ns/pod/a", n, 64, &[])).collect();
        let other = checkpoint(&store, "ns/pod/b", 0, 64, &[]);
        // The third of `a`, committed keeping 2: one index replacement adds it and drops the oldest.
        let config = store.write_blob_bytes(br#"{"container":"ns/pod/a","n":2}"#).expect("config");
        let layer = store.write_blob_bytes(b"ns/pod/a#2#").expect("layer");
        let json =
            manifest_json(config.descriptor(MediaType::ImageConfig), vec![layer.descriptor(MediaType::ImageLayer)]);
        let retention = Retention { key: KEY, value: "ns/pod/a", keep: 2 };
        let (descriptor, removed) =
            store.commit_with_retention(&json, annotations("ns/pod/a", 2), Some(retention)).expect("commit");
        assert_eq!(digests(&removed), vec![first[0].manifest.clone()]);
        let kept = digests(&store.list_with_annotation(KEY, "ns/pod/a").expect("filter"));
        assert_eq!(kept, vec![first[1].manifest.clone(), descriptor.digest().to_string()]);
        assert_eq!(digests(&store.list_with_annotation(KEY, "ns/pod/b").expect("filter")), vec![other.manifest]);
        for digest in first[0].blobs() {
            assert!(!exists(&store, digest), "blob {digest} of the dropped checkpoint survived");
        }
        store.verify_blob(&layer.digest).expect("the new layer is kept");
    }

    #[test]
    fn prune_keeps_the_newest_per_key_and_collects_only_unreferenced_blobs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let shared = store.write_blob_bytes(b"base layer every checkpoint shares").expect("shared");
        let a: Vec<_> = (0..5).map(|n| checkpoint(&store, "ns/pod/a", n, 64, &[&shared])).collect();
        let b: Vec<_> = (0..2).map(|n| checkpoint(&store, "ns/pod/b", n, 64, &[&shared])).collect();
        let shared_digest = shared.digest.clone();
        drop(shared); // from now on only the manifests keep it alive

        let removed = store.prune_keep_newest(KEY, "ns/pod/a", 2).expect("prune");
        assert_eq!(digests(&removed), a[..3].iter().map(|c| c.manifest.clone()).collect::<Vec<_>>());
        let kept = store.list_with_annotation(KEY, "ns/pod/a").expect("filter");
        assert_eq!(digests(&kept), a[3..].iter().map(|c| c.manifest.clone()).collect::<Vec<_>>());
        let other = store.list_with_annotation(KEY, "ns/pod/b").expect("filter");
        assert_eq!(digests(&other), b.iter().map(|c| c.manifest.clone()).collect::<Vec<_>>());
        for gone in &a[..3] {
            for digest in gone.blobs() {
                assert!(!exists(&store, digest), "blob {digest} of a pruned checkpoint survived");
            }
        }
        for alive in a[3..].iter().chain(&b) {
            for digest in alive.blobs() {
                store.verify_blob(digest).expect("blob of a kept checkpoint");
            }
        }
        store.verify_blob(&shared_digest).expect("shared layer survives");
        assert!(store.prune_keep_newest(KEY, "ns/pod/a", 2).expect("prune again").is_empty());

        // Removing one of the manifests sharing a blob keeps the blob; removing the last one frees it.
        store.remove(std::slice::from_ref(&b[0].manifest)).expect("remove b0");
        store.verify_blob(&shared_digest).expect("shared layer still referenced");
        let rest = digests(&store.list().expect("list"));
        assert_eq!(store.remove(&rest).expect("remove the rest").len(), 3);
        assert!(!exists(&store, &shared_digest), "shared layer outlived its last manifest");
        assert_eq!(store.total_size().expect("size"), 0);
        assert!(store.remove(&rest).expect("removing twice is a no-op").is_empty());
    }

    #[test]
    fn size_cap_removes_oldest_first_and_never_protected_entries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let mut order = Vec::new();
        for n in 0..3 {
            for container in ["ns/pod/a", "ns/pod/b"] {
                order.push(checkpoint(&store, container, n, 1000, &[]).manifest);
            }
        }
        // Protect each container's newest checkpoint, as lazarus does.
        let newest: BTreeSet<String> = ["ns/pod/a", "ns/pod/b"]
            .iter()
            .filter_map(|c| store.list_with_annotation(KEY, c).expect("filter").last().map(Entry::digest))
            .collect();
        let protect = |e: &Entry| newest.contains(&e.digest());

        let total = store.total_size().expect("size");
        assert!(store.enforce_size_cap(total, protect).expect("at the cap").is_empty());

        let removed = store.enforce_size_cap(total - 1, protect).expect("just over");
        assert_eq!(digests(&removed), order[..1]);
        assert!(store.total_size().expect("size") < total);

        let removed = store.enforce_size_cap(0, protect).expect("cap below the protected entries");
        assert_eq!(digests(&removed), order[1..4]);
        let left = digests(&store.list().expect("list"));
        assert_eq!(left, order[4..]);
        assert!(left.iter().all(|d| newest.contains(d)));
        assert!(store.total_size().expect("size") > 0);
    }

    #[test]
    fn verify_blob_detects_corruption() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let blob = store.write_blob_bytes(b"checkpoint pages").expect("blob");
        store.verify_blob(&blob.digest).expect("intact");
        assert_eq!(store.read_blob(&blob.digest).expect("read"), b"checkpoint pages");

        flip_first_byte(&store.blob_path(&blob.digest).expect("path"));
        let err = store.verify_blob(&blob.digest).expect_err("corrupt");
        assert!(matches!(err, StoreError::CorruptBlob { .. }), "{err}");
        let message = err.to_string();
        assert!(message.contains(&blob.digest) && message.contains("content hashes to sha256:"), "{message}");
        assert!(matches!(store.read_blob(&blob.digest), Err(StoreError::CorruptBlob { .. })));

        let absent = sha256_of(b"absent");
        assert!(matches!(store.verify_blob(&absent), Err(StoreError::MissingBlob { .. })));
        for bad in ["sha256:../../../etc/passwd", "md5:d41d8cd98f00b204e9800998ecf8427e", "sha256:ABC"] {
            assert!(matches!(store.blob_path(bad), Err(StoreError::InvalidDigest { .. })), "{bad}");
        }
    }

    #[test]
    fn write_blob_deduplicates_and_replaces_a_corrupt_copy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let first = store.write_blob_bytes(b"same bytes").expect("first");
        let path = store.blob_path(&first.digest).expect("path");
        let inode = fs::metadata(&path).expect("blob").ino();
        let second = store.write_blob(&b"same bytes"[..]).expect("second");
        assert_eq!((second.digest.as_str(), second.size), (first.digest.as_str(), 10));
        assert_eq!(fs::metadata(&path).expect("blob").ino(), inode, "an intact blob was replaced");

        flip_first_byte(&path);
        let third = store.write_blob_bytes(b"same bytes").expect("third");
        assert_eq!(third.digest, first.digest);
        store.verify_blob(&first.digest).expect("corrupt copy replaced");
        assert_eq!(fs::read_dir(dir.path().join("tmp")).expect("tmp").count(), 0, "staging files left");
    }

    #[test]
    fn garbage_collection_stops_when_a_manifest_is_unreadable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let committed = checkpoint(&store, "ns/pod/app", 0, 10, &[]);
        flip_first_byte(&store.blob_path(&committed.manifest).expect("path"));
        let orphan = store.write_blob_bytes(b"orphan").expect("orphan").digest.clone();
        set_written(&store, &orphan, ago(ORPHAN_GRACE * 2));

        // Which blobs the damaged manifest references is unknown: delete nothing.
        let store = Store::open(dir.path()).expect("open despite the damage");
        assert!(matches!(store.collect_garbage(), Err(StoreError::CorruptBlob { .. })));
        for digest in [&committed.config, &committed.layer, &orphan] {
            assert!(exists(&store, digest), "{digest} collected");
        }
    }

    #[test]
    fn a_blob_written_again_survives_the_removal_of_its_entry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let shared = store.write_blob_bytes(b"empty rootfs diff").expect("layer");
        let old = checkpoint(&store, "ns/pod/a", 0, 10, &[&shared]);
        // Committed a minute ago; since then another checkpoint wrote the same layer
        // and (carelessly) dropped its BlobInfo before committing.
        let a_minute_ago = ago(Duration::from_secs(60));
        for digest in old.blobs().into_iter().chain([shared.digest.as_str()]) {
            set_written(&store, digest, a_minute_ago);
        }
        drop(shared);
        let again = store.write_blob_bytes(b"empty rootfs diff").expect("same layer").digest.clone();

        store.remove(std::slice::from_ref(&old.manifest)).expect("remove");
        assert!(exists(&store, &again), "a blob written after the removed entry was collected with it");
        for digest in old.blobs() {
            assert!(!exists(&store, digest), "blob {digest} of the removed entry survived");
        }

        // Never committed after all: collected once ORPHAN_GRACE has passed.
        set_written(&store, &again, ago(ORPHAN_GRACE + Duration::from_secs(1)));
        store.collect_garbage().expect("collect garbage");
        assert!(!exists(&store, &again));
    }
}
