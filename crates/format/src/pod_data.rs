//! Pod data in a checkpoint: the container's `/dev/shm` and its `emptyDir` volumes.
//!
//! CRIU dumps a process's memory and the *names* of the files it has open or mapped; on
//! external mounts (everything the runtime bind-mounts into the container) it expects the
//! files to be there again on restore, with the size they had. `/dev/shm` (POSIX shared
//! memory: PostgreSQL's `dynamic_shared_memory_type = posix`, Python's
//! `multiprocessing.shared_memory`) and kubelet's `emptyDir` volumes are pod-scoped: a new pod
//! gets them empty. So their content is captured inside the cut, while the container is
//! frozen, and put back into the new pod's directories before CRIU restores.
//!
//! In the checkpoint tree:
//!
//! * [`DEV_SHM_TAR`] (`devshm-checkpoint.tar`, the name checkpointctl, CRI-O and Podman use):
//!   an uncompressed tar of the content of the `/dev/shm` mount, paths relative to it. Podman
//!   writes the same (its tar of the container's shm directory) and unpacks it into the new
//!   container's shm directory before the restore;
//! * [`EMPTY_DIRS_DIR`]`/<name>.tar`: one tar per `emptyDir` volume mounted into the container,
//!   in the same form;
//! * [`MANIFEST`] (`pod-data.json`): a [`Manifest`] listing each volume with its destination in
//!   the container, its name, its size, and whether and why it was not captured.
//!
//! The tars are written by [`capture`] (the walk of [`rootfs_diff::write_diff`]: regular files,
//! directories, symlinks and hard links with their modes, owners and mtimes; symlinks never
//! followed; mount points and special files skipped) and put back by [`restore`], which refuses
//! absolute paths, `..`, device nodes, fifos and symlinks that lead outside the volume, and
//! never writes through a symlink. A symlink that leads outside its volume is refused at
//! capture already ([`measure`]), so every checkpoint taken can be restored.
//!
//! Mounts are recognised in an OCI runtime spec ([`mounts`]): an `emptyDir` by the source path
//! segment [`EMPTY_DIR_SEGMENT`] (`/var/lib/kubelet/pods/<uid>/volumes/kubernetes.io~empty-dir/<name>`),
//! `/dev/shm` by its destination. [`placements`] decides, for a new container's spec, where
//! each captured volume goes, and refuses what cannot be restored faithfully.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::fsutil::human_size;
use crate::rootfs_diff::{self, RootfsDiffError};

/// The tar of `/dev/shm` in a checkpoint tree (checkpointctl's name).
pub const DEV_SHM_TAR: &str = "devshm-checkpoint.tar";
/// The directory of the `emptyDir` tars in a checkpoint tree.
pub const EMPTY_DIRS_DIR: &str = "empty-dirs";
/// The manifest of the captured pod data in a checkpoint tree.
pub const MANIFEST: &str = "pod-data.json";
/// The manifest's format version.
pub const VERSION: u32 = 1;
/// The destination of the POSIX shared-memory mount.
pub const DEV_SHM: &str = "/dev/shm";
/// The name [`Manifest::dev_shm`] carries.
pub const DEV_SHM_NAME: &str = "dev-shm";
/// The path segment of kubelet's `emptyDir` volume directories, followed by the volume's name.
pub const EMPTY_DIR_SEGMENT: &str = "/volumes/kubernetes.io~empty-dir/";
/// Pod annotation: `"false"` leaves the pod's `emptyDir` volumes out of its checkpoints.
pub const CAPTURE_EMPTY_DIRS: &str = "lazarus.dev/capture-empty-dirs";

/// Why pod data could not be captured or put back.
#[derive(Debug, thiserror::Error)]
pub enum PodDataError {
    /// A file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the file.
        context: String,
        /// The error.
        source: io::Error,
    },
    /// Archiving or unpacking failed.
    #[error("{context}: {source}")]
    Archive {
        /// What was being done.
        context: String,
        /// The error.
        source: RootfsDiffError,
    },
    /// A symlink in a volume leads outside it.
    #[error(
        "{volume}: the symlink {path} points to {target}, outside the volume; it cannot be captured and put back safely"
    )]
    SymlinkOutside {
        /// The volume (`emptyDir "scratch" at /scratch`).
        volume: String,
        /// The symlink, relative to the volume.
        path: String,
        /// Its target.
        target: String,
    },
    /// An archive entry is not allowed.
    #[error("{archive}: entry {entry:?} {reason}")]
    Refused {
        /// The archive.
        archive: String,
        /// The entry's path.
        entry: String,
        /// Why.
        reason: String,
    },
    /// The manifest is unreadable.
    #[error("{path}: {reason}")]
    Manifest {
        /// The manifest.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A captured volume has no mount with its destination in the new container.
    #[error(
        "the checkpoint holds the content of {volume}, but the new container mounts nothing at {destination}: \
         the pod must mount the same volumes"
    )]
    NoMount {
        /// The volume.
        volume: String,
        /// Its destination in the container.
        destination: String,
    },
    /// The new container's mount at a captured volume's destination is not what it was.
    #[error("the checkpoint holds the content of {volume}, but the new container's mount at {destination} {reason}")]
    WrongMount {
        /// The volume.
        volume: String,
        /// Its destination.
        destination: String,
        /// What the new mount is.
        reason: String,
    },
    /// A volume was not captured but had content, and the new one is empty.
    #[error(
        "{volume} held {files} files ({}) at the checkpoint but was not captured ({reason}), \
         and the new pod's is empty: the process would run against data it no longer has",
        human_size(*bytes)
    )]
    LostContent {
        /// The volume.
        volume: String,
        /// Its files at the checkpoint.
        files: u64,
        /// Their bytes.
        bytes: u64,
        /// Why it was not captured.
        reason: String,
    },
}

/// The manifest of a checkpoint's pod data ([`MANIFEST`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`VERSION`].
    pub version: u32,
    /// The container's `/dev/shm`, when it had one that is not an `emptyDir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev_shm: Option<Volume>,
    /// Every `emptyDir` volume mounted into the container.
    #[serde(default)]
    pub empty_dirs: Vec<Volume>,
}

/// One volume of the manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// The `emptyDir`'s name ([`DEV_SHM_NAME`] for `/dev/shm`).
    pub name: String,
    /// Where it is mounted in the container.
    pub destination: String,
    /// Its host directory at the checkpoint (for people; restores use the new container's).
    pub source: String,
    /// Its tar, relative to the checkpoint tree; `None` when it was not captured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<String>,
    /// Regular files in it at the checkpoint.
    pub files: u64,
    /// Their bytes (apparent size; a hard-linked file counted once).
    pub bytes: u64,
    /// Why it was not captured, when it was not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_captured: Option<String>,
}

impl Volume {
    /// `emptyDir "scratch" at /scratch`, `/dev/shm`: how messages name it.
    pub fn describe(&self) -> String {
        if self.name == DEV_SHM_NAME && self.destination == DEV_SHM {
            DEV_SHM.to_owned()
        } else {
            format!("emptyDir {:?} at {}", self.name, self.destination)
        }
    }
}

impl Manifest {
    /// Reads the manifest of the checkpoint tree `tree`; `None` when it has none.
    pub fn read(tree: &Path) -> Result<Option<Manifest>, PodDataError> {
        let path = tree.join(MANIFEST);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(PodDataError::Io { context: format!("reading {}", path.display()), source }),
        };
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|err| PodDataError::Manifest { path: path.clone(), reason: format!("not a manifest: {err}") })?;
        if manifest.version != VERSION {
            return Err(PodDataError::Manifest {
                path,
                reason: format!("version {} (this lazarus reads {VERSION})", manifest.version),
            });
        }
        Ok(Some(manifest))
    }

    /// Every volume, `/dev/shm` first.
    pub fn volumes(&self) -> impl Iterator<Item = &Volume> {
        self.dev_shm.iter().chain(&self.empty_dirs)
    }
}

// ---------------------------------------------------------------------------------------------
// Mounts of an OCI runtime spec.

/// One mount of an OCI runtime spec, as far as pod data cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Its destination in the container.
    pub destination: String,
    /// Its source (a host path for bind mounts).
    pub source: String,
    /// Its `type` (`bind`, `tmpfs`, …; empty when the spec has none).
    pub kind: String,
    /// Whether it is a bind mount (`type` `bind` or a `bind`/`rbind` option).
    pub bind: bool,
}

impl Mount {
    /// The `emptyDir` volume name, when this is a bind mount of one.
    pub fn empty_dir(&self) -> Option<&str> {
        if self.bind { empty_dir_name(&self.source) } else { None }
    }
}

/// The mounts of an OCI runtime spec (`mounts[]`), in order; malformed entries are left out.
pub fn mounts(spec: &Value) -> Vec<Mount> {
    let Some(list) = spec.get("mounts").and_then(Value::as_array) else { return Vec::new() };
    list.iter()
        .filter_map(|m| {
            let destination = m.get("destination")?.as_str()?;
            let source = m.get("source").and_then(Value::as_str).unwrap_or_default();
            let kind = m.get("type").and_then(Value::as_str).unwrap_or_default();
            let options = m.get("options").and_then(Value::as_array);
            let bind = kind == "bind"
                || options.is_some_and(|o| o.iter().any(|v| matches!(v.as_str(), Some("bind" | "rbind"))));
            Some(Mount {
                destination: normalize_destination(destination),
                source: source.to_owned(),
                kind: kind.to_owned(),
                bind,
            })
        })
        .collect()
}

/// `/dev/shm/` and `/dev//shm` are `/dev/shm`.
fn normalize_destination(destination: &str) -> String {
    let parts: Vec<&str> = destination.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
    format!("/{}", parts.join("/"))
}

/// The volume name in a kubelet `emptyDir` path
/// (`/var/lib/kubelet/pods/<uid>/volumes/kubernetes.io~empty-dir/<name>`): the one component
/// after [`EMPTY_DIR_SEGMENT`]; `None` for anything else (subPath mounts included: kubelet binds
/// those from `volume-subpaths/`).
pub fn empty_dir_name(source: &str) -> Option<&str> {
    let at = source.rfind(EMPTY_DIR_SEGMENT)?;
    let name = source[at + EMPTY_DIR_SEGMENT.len()..].trim_end_matches('/');
    let plain = !name.is_empty() && name != "." && name != ".." && !name.contains('/');
    plain.then_some(name)
}

/// The last mount at `/dev/shm` (the visible one).
pub fn dev_shm_mount(mounts: &[Mount]) -> Option<&Mount> {
    mounts.iter().rev().find(|m| m.destination == DEV_SHM)
}

/// The last mount at `destination`.
fn mount_at<'a>(mounts: &'a [Mount], destination: &str) -> Option<&'a Mount> {
    mounts.iter().rev().find(|m| m.destination == destination)
}

// ---------------------------------------------------------------------------------------------
// Capture.

/// What a volume holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Regular files.
    pub files: u64,
    /// Their bytes (apparent size; a hard-linked file counted once).
    pub bytes: u64,
}

/// Counts what `dir` holds, the way [`capture`] archives it: regular files below it on its
/// filesystem, symlinks not followed. A symlink that leads outside `dir` is an error
/// ([`PodDataError::SymlinkOutside`]); `volume` names the volume in errors.
pub fn measure(dir: &Path, volume: &str) -> Result<Usage, PodDataError> {
    walk_usage(dir, volume, true)
}

/// [`measure`] of a volume that is not captured: symlinks are not judged.
pub fn measure_only(dir: &Path, volume: &str) -> Result<Usage, PodDataError> {
    walk_usage(dir, volume, false)
}

fn walk_usage(dir: &Path, volume: &str, judge_symlinks: bool) -> Result<Usage, PodDataError> {
    let meta = fs::metadata(dir).map_err(|source| io_error(format!("inspecting {}", dir.display()), source))?;
    let mut walk =
        Measure { device: meta.dev(), usage: Usage::default(), seen: HashSet::new(), volume, judge_symlinks };
    walk.dir(dir, Path::new(""))?;
    Ok(walk.usage)
}

struct Measure<'a> {
    device: u64,
    usage: Usage,
    seen: HashSet<(u64, u64)>,
    volume: &'a str,
    judge_symlinks: bool,
}

impl Measure<'_> {
    fn dir(&mut self, dir: &Path, rel: &Path) -> Result<(), PodDataError> {
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            // Removed meanwhile (by another container of the pod): nothing to count.
            Err(err) if err.kind() == io::ErrorKind::NotFound && !rel.as_os_str().is_empty() => return Ok(()),
            Err(source) => return Err(io_error(format!("reading {}", dir.display()), source)),
        };
        for entry in entries {
            let entry = entry.map_err(|source| io_error(format!("reading {}", dir.display()), source))?;
            let path = entry.path();
            let rel = rel.join(entry.file_name());
            let meta = match fs::symlink_metadata(&path) {
                Ok(meta) => meta,
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => return Err(io_error(format!("inspecting {}", path.display()), source)),
            };
            if meta.dev() != self.device {
                continue;
            }
            let kind = meta.file_type();
            if kind.is_dir() {
                self.dir(&path, &rel)?;
            } else if kind.is_file() {
                if meta.nlink() > 1 && !self.seen.insert((meta.dev(), meta.ino())) {
                    continue;
                }
                self.usage.files += 1;
                self.usage.bytes += meta.len();
            } else if kind.is_symlink() && self.judge_symlinks {
                let target = match fs::read_link(&path) {
                    Ok(target) => target,
                    Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                    Err(source) => return Err(io_error(format!("reading the symlink {}", path.display()), source)),
                };
                if !symlink_stays_inside(&rel, &target) {
                    return Err(PodDataError::SymlinkOutside {
                        volume: self.volume.to_owned(),
                        path: rel.display().to_string(),
                        target: target.display().to_string(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// Whether the symlink at `rel` (relative to a volume's root) pointing to `target` resolves
/// inside the volume, judged on the names alone: a relative target whose `..` never climbs above
/// the root. (A symlink it passes through is checked on its own.)
pub fn symlink_stays_inside(rel: &Path, target: &Path) -> bool {
    let mut depth: usize =
        rel.parent().map_or(0, |p| p.components().filter(|c| matches!(c, Component::Normal(_))).count());
    for component in target.components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// Writes the content of `dir` to `out` as an uncompressed tar, paths relative to `dir`
/// ([`rootfs_diff::write_diff`]'s walk); returns what it archived. Call it with the processes
/// that write to `dir` frozen.
pub fn capture(dir: &Path, out: impl Write) -> Result<Usage, PodDataError> {
    let summary = rootfs_diff::write_diff(dir, out)
        .map_err(|source| PodDataError::Archive { context: format!("archiving {}", dir.display()), source })?;
    if !summary.deleted.is_empty() {
        tracing::warn!(dir = %dir.display(), nodes = ?summary.deleted, "character devices 0:0 in a volume are not captured");
    }
    Ok(Usage { files: summary.files, bytes: summary.bytes })
}

// ---------------------------------------------------------------------------------------------
// Restore.

/// Where one captured volume goes in a new container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The volume, as the manifest lists it.
    pub volume: Volume,
    /// Its tar.
    pub archive: PathBuf,
    /// The host directory of the new container's mount it goes into.
    pub target: PathBuf,
}

/// Where the pod data of the checkpoint tree `tree` (with its manifest, if it has one) goes in
/// the new container whose runtime spec is `spec`; checks that it can go there, changes nothing.
///
/// * a captured `emptyDir` needs a bind mount of an `emptyDir` at the same destination;
/// * captured `/dev/shm` needs a bind mount at `/dev/shm` (containerd binds the sandbox's shm);
/// * a volume that was not captured but held files, whose new directory is empty, is refused
///   ([`PodDataError::LostContent`]); one whose new directory has content (the same pod's
///   directory, kept across a container restart) is left as it is;
/// * a tree without a manifest but with a [`DEV_SHM_TAR`] (CRI-O, Podman) puts it into
///   `/dev/shm` under the same rule.
pub fn placements(tree: &Path, manifest: Option<&Manifest>, spec: &Value) -> Result<Vec<Placement>, PodDataError> {
    let mounts = mounts(spec);
    let foreign;
    let manifest = match manifest {
        Some(manifest) => manifest,
        None if tree.join(DEV_SHM_TAR).is_file() => {
            foreign = Manifest {
                version: VERSION,
                dev_shm: Some(Volume {
                    name: DEV_SHM_NAME.to_owned(),
                    destination: DEV_SHM.to_owned(),
                    archive: Some(DEV_SHM_TAR.to_owned()),
                    ..Volume::default()
                }),
                empty_dirs: Vec::new(),
            };
            &foreign
        }
        None => return Ok(Vec::new()),
    };
    let mut out = Vec::new();
    for volume in manifest.volumes() {
        let is_shm = manifest.dev_shm.as_ref() == Some(volume);
        let described = volume.describe();
        let found = mount_at(&mounts, &volume.destination);
        let Some(archive) = &volume.archive else {
            let reason = volume.not_captured.clone().unwrap_or_else(|| "no reason recorded".to_owned());
            if volume.files == 0 {
                continue;
            }
            let target_empty = match found.filter(|m| m.bind) {
                Some(mount) => dir_is_empty(Path::new(&mount.source))?,
                None => true,
            };
            if target_empty && !(is_shm && found.is_some_and(|m| m.source == DEV_SHM)) {
                return Err(PodDataError::LostContent {
                    volume: described,
                    files: volume.files,
                    bytes: volume.bytes,
                    reason,
                });
            }
            continue;
        };
        let archive = safe_tree_path(tree, archive).ok_or_else(|| PodDataError::Manifest {
            path: tree.join(MANIFEST),
            reason: format!("{described}: archive path {archive:?} leaves the checkpoint tree"),
        })?;
        let mount = found.ok_or_else(|| PodDataError::NoMount {
            volume: described.clone(),
            destination: volume.destination.clone(),
        })?;
        let wrong = |reason: String| PodDataError::WrongMount {
            volume: described.clone(),
            destination: volume.destination.clone(),
            reason,
        };
        if !mount.bind {
            return Err(wrong(format!(
                "is a {} mount, not a bind mount of a host directory it could be put into",
                if mount.kind.is_empty() { "typeless" } else { &mount.kind }
            )));
        }
        if is_shm {
            if mount.source == DEV_SHM {
                return Err(wrong(
                    "is the node's /dev/shm (hostIPC): the checkpoint's shared memory would land on the node"
                        .to_owned(),
                ));
            }
        } else if mount.empty_dir() != Some(volume.name.as_str()) {
            return Err(wrong(format!(
                "is {}, not the pod's emptyDir {:?}: its content is not replaced",
                mount.source, volume.name
            )));
        }
        if !Path::new(&mount.source).is_absolute() {
            return Err(wrong(format!("has the relative source {:?}", mount.source)));
        }
        out.push(Placement { volume: volume.clone(), archive, target: PathBuf::from(&mount.source) });
    }
    Ok(out)
}

/// `tree/rel`, when `rel` is a plain relative path.
fn safe_tree_path(tree: &Path, rel: &str) -> Option<PathBuf> {
    let rel = Path::new(rel);
    let plain = rel.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    (plain && !rel.as_os_str().is_empty()).then(|| tree.join(rel))
}

/// Whether `dir` has no entries (a missing directory counts as empty).
fn dir_is_empty(dir: &Path) -> Result<bool, PodDataError> {
    match fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(source) => Err(io_error(format!("reading {}", dir.display()), source)),
    }
}

/// Checks every entry of the tar at `archive` before anything is written: relative paths
/// without `..`, regular files, directories, hard links and symlinks that stay inside.
pub fn check_archive(archive: &Path) -> Result<Usage, PodDataError> {
    let shown = archive.display().to_string();
    let file = File::open(archive).map_err(|source| io_error(format!("opening {shown}"), source))?;
    let mut tar = tar::Archive::new(BufReader::new(file));
    let reading = |source| io_error(format!("reading {shown}"), source);
    let refuse = |entry: &str, reason: &str| PodDataError::Refused {
        archive: shown.clone(),
        entry: entry.to_owned(),
        reason: reason.to_owned(),
    };
    let mut usage = Usage::default();
    for entry in tar.entries().map_err(reading)? {
        let entry = entry.map_err(reading)?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let path = Path::new(&raw);
        if path.components().any(|c| matches!(c, Component::RootDir | Component::Prefix(_))) {
            return Err(refuse(&raw, "is an absolute path"));
        }
        if path.components().any(|c| c == Component::ParentDir) {
            return Err(refuse(&raw, "leaves the volume (..)"));
        }
        let kind = entry.header().entry_type();
        match kind {
            tar::EntryType::Directory | tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => {}
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                usage.files += 1;
                usage.bytes += entry.header().size().map_err(reading)?;
            }
            tar::EntryType::Link => {
                let target = entry.link_name_bytes().map(|b| String::from_utf8_lossy(&b).into_owned());
                let target = target.unwrap_or_default();
                let target = Path::new(&target);
                if target.components().any(|c| matches!(c, Component::RootDir | Component::ParentDir)) {
                    return Err(refuse(&raw, "is a hard link to a path outside the volume"));
                }
            }
            tar::EntryType::Symlink => {
                let target = entry.link_name_bytes().map(|b| String::from_utf8_lossy(&b).into_owned());
                let target = target.unwrap_or_default();
                if !symlink_stays_inside(path, Path::new(&target)) {
                    return Err(refuse(&raw, &format!("is a symlink to {target}, outside the volume")));
                }
            }
            tar::EntryType::Char | tar::EntryType::Block => return Err(refuse(&raw, "is a device node")),
            tar::EntryType::Fifo => return Err(refuse(&raw, "is a fifo")),
            _ => return Err(refuse(&raw, "is of an unsupported type")),
        }
    }
    Ok(usage)
}

/// Replaces the content of the directory `target` with the tar at `archive`: checks the whole
/// archive ([`check_archive`]), removes what `target` holds (never following a symlink, never
/// crossing into another mount), then unpacks ([`rootfs_diff::apply_diff`]: modes, owners and
/// mtimes kept, nothing written through a symlink). `target` itself stays (it is a mount point).
pub fn restore(archive: &Path, target: &Path) -> Result<Usage, PodDataError> {
    let usage = check_archive(archive)?;
    clear_dir(target)?;
    let file = File::open(archive).map_err(|source| io_error(format!("opening {}", archive.display()), source))?;
    rootfs_diff::apply_diff(BufReader::new(file), &[], target).map_err(|source| PodDataError::Archive {
        context: format!("unpacking {} into {}", archive.display(), target.display()),
        source,
    })?;
    Ok(usage)
}

/// Removes every entry of `dir`, not `dir` itself.
fn clear_dir(dir: &Path) -> Result<(), PodDataError> {
    let device = fs::metadata(dir).map_err(|source| io_error(format!("inspecting {}", dir.display()), source))?.dev();
    let entries = fs::read_dir(dir).map_err(|source| io_error(format!("reading {}", dir.display()), source))?;
    for entry in entries {
        let entry = entry.map_err(|source| io_error(format!("reading {}", dir.display()), source))?;
        let path = entry.path();
        let meta =
            fs::symlink_metadata(&path).map_err(|source| io_error(format!("inspecting {}", path.display()), source))?;
        if meta.dev() != device {
            return Err(io_error(
                format!("clearing {}", dir.display()),
                io::Error::other(format!("{} is another mount; it is not removed", path.display())),
            ));
        }
        let removed = if meta.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
        removed.map_err(|source| io_error(format!("removing {}", path.display()), source))?;
    }
    Ok(())
}

fn io_error(context: String, source: io::Error) -> PodDataError {
    PodDataError::Io { context, source }
}

#[cfg(test)]
mod tests;
