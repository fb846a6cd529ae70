//! The changes a container made to its root filesystem, as checkpoint archives carry them.
//!
//! A checkpoint archive (the layout checkpointctl, CRI-O and Podman share) describes the
//! container's writable layer with two files:
//!
//! * `rootfs-diff.tar`: every file, directory, symlink and hard link the container added or
//!   modified, under relative paths (`etc/motd`);
//! * `deleted.files`: a JSON array of the container paths it deleted from its image's layers
//!   (`["/etc/motd"]`).
//!
//! containerd's overlayfs snapshotter keeps exactly these changes in the overlay's upper
//! directory. [`overlay_upperdir`] finds that directory in the mount table of the container's
//! init process, [`write_diff`] turns it into the archive and the list of deletions (overlayfs
//! marks a deletion with a *whiteout*, a character device numbered 0:0), and
//! [`write_deleted_files`] / [`read_deleted_files`] handle the JSON. [`apply_diff`] is the
//! restore side: it replays both inside a new container's root filesystem.
//!
//! # Symlinks are never followed
//! Both directions work on directory file descriptors (`openat(2)` and friends with
//! `O_NOFOLLOW`), one path component at a time, instead of on path strings. A symlink — whether
//! a still-running container swaps one into its upper directory while it is archived, or a
//! hostile archive carries one — is therefore never followed: [`write_diff`] cannot be tricked
//! into archiving a host file, and [`apply_diff`] refuses every entry or deletion whose parent
//! directories include a symlink, even one that would stay inside the rootfs. (A diff taken
//! from an upper directory never needs one: overlayfs resolves symlinks before it writes.)
//! Symlinks themselves are restored verbatim, whatever they point to: the container resolves
//! them against its own root.
//!
//! # Opaque directories
//! A directory the container deleted and created again is *opaque* in the upper directory
//! (xattr `trusted.overlay.opaque` = `y`, read with the `xattr` crate): the image's entries
//! below it are gone. [`write_diff`] lists it in [`DiffSummary::opaque_dirs`] and among the
//! deletions, before its new contents in the archive — what an OCI `.wh..wh..opq` whiteout
//! says, in this format's terms — so [`apply_diff`] removes the image's directory and then
//! unpacks the new one, and no old entry comes back.
//!
//! # Limitations
//! * Extended attributes are neither archived nor restored: no file capabilities
//!   (`security.capability`), ACLs or SELinux labels.
//! * The overlayfs features that also live in xattrs, `redirect_dir` (renamed directories) and
//!   `metacopy` (metadata-only copy-ups), are not understood either; containerd enables neither.
//! * Device nodes, fifos and sockets are skipped: CRIU recreates what the processes need, and
//!   a device node in a checkpoint is a security risk on restore.
//! * Timestamps keep whole seconds (plain tar headers); on restore, atime is set to mtime.
//! * [`apply_diff`] streams: if it refuses an entry half-way, the entries before it have been
//!   applied. The rootfs of a restore that failed is to be discarded.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, AtFlags, OFlag, openat, readlinkat};
use nix::sys::stat::{FileStat, Mode, SFlag, UtimensatFlags, fchmod, fstat, fstatat, futimens, mkdirat, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fchownat, linkat, symlinkat, unlinkat};
use tar::{Archive, Builder, EntryType, Header};
use tracing::{debug, warn};

/// Why the writable layer could not be located, archived or restored.
#[derive(Debug, thiserror::Error)]
pub enum RootfsDiffError {
    /// The container's root is not an overlayfs mount.
    #[error("no overlay root mount in {mountinfo}: lazarus needs containerd's overlayfs snapshotter")]
    NoOverlayRoot {
        /// Where the mount table came from (`/proc/<pid>/mountinfo`).
        mountinfo: String,
    },
    /// The container's root is an overlay without a writable layer.
    #[error("the overlay root mount in {mountinfo} has no upperdir= option: the container has no writable layer")]
    NoUpperdir {
        /// Where the mount table came from.
        mountinfo: String,
    },
    /// A mount table line does not have the `mountinfo` format.
    #[error("{mountinfo}, line {line}: {reason}")]
    MalformedMountinfo {
        /// Where the mount table came from.
        mountinfo: String,
        /// The 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A system call or an I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the file.
        context: String,
        /// The underlying error.
        source: io::Error,
    },
    /// A deletion's (whiteout's or opaque directory's) name cannot be written into `deleted.files`.
    #[error("deleted path {path} has a name that is not UTF-8, which deleted.files (JSON) cannot record")]
    NonUtf8Whiteout {
        /// The deleted container path, with invalid bytes replaced.
        path: String,
    },
    /// `deleted.files` is not a JSON array of strings.
    #[error("deleted.files is not a JSON array of paths: {0}")]
    DeletedFiles(#[source] serde_json::Error),
    /// A path of `deleted.files` could lead outside the rootfs, or names nothing deletable.
    #[error("deleted.files entry {path} {reason}")]
    RefusedDeletion {
        /// The path, as listed.
        path: String,
        /// Why it is refused.
        reason: String,
    },
    /// An archive entry could lead outside the rootfs, or is of a refused kind.
    #[error("archive entry {entry} {reason}")]
    RefusedEntry {
        /// The entry's path in the archive (invalid UTF-8 replaced).
        entry: String,
        /// Why it is refused.
        reason: String,
    },
}

/// Attaches a description of the failed operation to an I/O or system error.
trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, RootfsDiffError>;
}

impl<T, E: Into<io::Error>> Context<T> for Result<T, E> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, RootfsDiffError> {
        self.map_err(|err| RootfsDiffError::Io { context: what(), source: err.into() })
    }
}

// ---------------------------------------------------------------------------------------------
// Locating the upper directory.

/// The upper (writable) directory of the overlay mounted as `/` for process `pid`: the
/// container's writable layer, as a host path.
///
/// Reads `/proc/<pid>/mountinfo`, i.e. the mount namespace of the container's init process.
pub fn overlay_upperdir(pid: u32) -> Result<PathBuf, RootfsDiffError> {
    let path = format!("/proc/{pid}/mountinfo");
    let text = std::fs::read_to_string(&path).context(|| format!("reading {path}"))?;
    upperdir_of_mount(&text, Path::new("/"), &path)
}

/// The `upperdir=` of the overlay mounted as `/` in a `mountinfo` text (see `proc_pid_mountinfo(5)`).
///
/// When several overlays are stacked on `/`, the last one listed, the visible one, counts.
pub fn upperdir_from_mountinfo(text: &str) -> Result<PathBuf, RootfsDiffError> {
    upperdir_of_mount(text, Path::new("/"), "mountinfo")
}

/// The `upperdir=` of the last overlay mounted on `mount_point` in `text`; `origin` names the
/// text in errors.
fn upperdir_of_mount(text: &str, mount_point: &Path, origin: &str) -> Result<PathBuf, RootfsDiffError> {
    let malformed = |line, reason| RootfsDiffError::MalformedMountinfo { mountinfo: origin.to_owned(), line, reason };
    let mut found = None;
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let mount = Mount::parse(line).map_err(|reason| malformed(index + 1, reason))?;
        if mount.fstype == "overlay" && unescape_octal(mount.mount_point) == mount_point.as_os_str().as_bytes() {
            found = Some((index + 1, mount.super_options));
        }
    }
    let Some((line, options)) = found else {
        return Err(RootfsDiffError::NoOverlayRoot { mountinfo: origin.to_owned() });
    };
    // Options are split on the raw commas: a comma inside a value is escaped (`\054`).
    let upper = options
        .split(',')
        .filter_map(|option| option.split_once('='))
        .filter(|(key, _)| *key == "upperdir")
        .map(|(_, value)| PathBuf::from(OsString::from_vec(unescape_octal(value))))
        .next_back()
        .ok_or_else(|| RootfsDiffError::NoUpperdir { mountinfo: origin.to_owned() })?;
    if !upper.is_absolute() {
        return Err(malformed(line, "the overlay's upperdir= is not an absolute path"));
    }
    Ok(upper)
}

/// The fields of one `mountinfo` line that matter here, still escaped.
#[derive(Debug)]
struct Mount<'a> {
    mount_point: &'a str,
    fstype: &'a str,
    super_options: &'a str,
}

impl<'a> Mount<'a> {
    /// Parses `id parent major:minor root mount-point options [optional...] - fstype source super-options`.
    fn parse(line: &'a str) -> Result<Self, &'static str> {
        let fields: Vec<&str> = line.split(' ').collect();
        let mount_point = *fields.get(4).ok_or("too few fields for a mount entry")?;
        let separator = fields
            .iter()
            .skip(6)
            .position(|field| *field == "-")
            .map(|position| position + 6)
            .ok_or("no ` - ` separator after the optional fields")?;
        match fields.get(separator + 1..=separator + 3) {
            Some(&[fstype, _source, super_options]) => Ok(Mount { mount_point, fstype, super_options }),
            _ => Err("missing filesystem type, source or super options after the separator"),
        }
    }
}

/// Decodes the `\NNN` octal escapes the kernel writes for space, tab, newline, backslash (and,
/// in option values, comma and equals sign).
fn unescape_octal(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if let Some(byte) = bytes.get(index + 1..index + 4).filter(|_| bytes[index] == b'\\').and_then(octal_byte) {
            out.push(byte);
            index += 4;
        } else {
            out.push(bytes[index]);
            index += 1;
        }
    }
    out
}

/// The byte three octal digits spell, if they do and it fits.
fn octal_byte(digits: &[u8]) -> Option<u8> {
    digits
        .iter()
        .try_fold(0u16, |value, digit| match digit {
            b'0'..=b'7' => Some(value * 8 + u16::from(digit - b'0')),
            _ => None,
        })
        .and_then(|value| u8::try_from(value).ok())
}

// ---------------------------------------------------------------------------------------------
// Archiving the upper directory.

/// What [`write_diff`] archived and found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiffSummary {
    /// Entries written to the archive: files, directories, symlinks and hard links.
    pub files: u64,
    /// Bytes of regular-file content written to the archive.
    pub bytes: u64,
    /// Container paths (`/etc/motd`) the container deleted: the whiteouts, in walk order.
    pub deleted: Vec<String>,
    /// Container paths of opaque directories (also in `deleted`, before anything below them).
    pub opaque_dirs: Vec<String>,
}

/// Writes the changes recorded in an overlay upper directory to `out` as a tar archive
/// (`rootfs-diff.tar`) and returns the deletions it found, for `deleted.files`.
///
/// Every regular file, directory, symlink and hard link below `upperdir` is archived under its
/// path relative to `upperdir`, with its mode, owner and mtime; the directory itself is not.
/// Whiteouts are reported in [`DiffSummary::deleted`] instead; other special files are skipped
/// with a warning. The walk stays on `upperdir`'s filesystem and never follows symlinks.
/// Entries come in a stable order (sorted by name, parents before children).
pub fn write_diff(upperdir: &Path, out: impl Write) -> Result<DiffSummary, RootfsDiffError> {
    let dir = open_directory(AT_FDCWD, upperdir.as_os_str(), OFlag::empty())
        .context(|| format!("opening the overlay upper directory {}", upperdir.display()))?;
    let device = fstat(&dir).context(|| format!("inspecting {}", upperdir.display()))?.st_dev;
    let mut walker = DiffWalker {
        upperdir,
        device,
        tar: Builder::new(out),
        seen_inodes: HashMap::new(),
        summary: DiffSummary::default(),
    };
    walker.walk(dir, Path::new(""))?;
    let mut out = walker.tar.into_inner().context(|| "finishing the rootfs diff archive".to_owned())?;
    out.flush().context(|| "writing the rootfs diff archive".to_owned())?;
    debug!(
        upperdir = %upperdir.display(),
        files = walker.summary.files,
        bytes = walker.summary.bytes,
        deleted = walker.summary.deleted.len(),
        "archived the container's writable layer"
    );
    Ok(walker.summary)
}

/// The xattr overlayfs marks an opaque directory with in its upper directory.
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Whether the upper directory `dir` is opaque (`trusted.overlay.opaque` = `y`). Only
/// `trusted.*`, which a container cannot set through the overlay; a filesystem without
/// xattrs has no opaque directories.
fn is_opaque(dir: &File) -> io::Result<bool> {
    use xattr::FileExt;
    match dir.get_xattr(OPAQUE_XATTR) {
        Ok(value) => Ok(value.as_deref() == Some(b"y")),
        Err(err) if err.raw_os_error() == Some(Errno::ENOTSUP as i32) => Ok(false),
        Err(err) => Err(err),
    }
}

/// The state of one [`write_diff`] walk.
struct DiffWalker<'a, W: Write> {
    upperdir: &'a Path,
    /// The upper directory's filesystem; entries elsewhere are mount points and skipped.
    device: u64,
    tar: Builder<W>,
    /// Archive path of the first occurrence of each multiply-linked inode, by (device, inode).
    seen_inodes: HashMap<(u64, u64), PathBuf>,
    summary: DiffSummary,
}

impl<W: Write> DiffWalker<'_, W> {
    /// Archives the contents of the directory open as `dir`, found at `rel` in the upper directory.
    fn walk(&mut self, dir: OwnedFd, rel: &Path) -> Result<(), RootfsDiffError> {
        let names = sorted_names(&dir).context(|| format!("reading {}", self.host_path(rel).display()))?;
        for name in names {
            self.visit(&dir, &name, &rel.join(&name))?;
        }
        Ok(())
    }

    /// Archives (or records, or skips) the entry `name` of `dir`, whose archive path is `rel`.
    fn visit(&mut self, dir: &OwnedFd, name: &OsStr, rel: &Path) -> Result<(), RootfsDiffError> {
        let stat = match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(Errno::ENOENT) => {
                debug!(path = %self.host_path(rel).display(), "vanished while the upper directory was walked");
                return Ok(());
            }
            Err(err) => return Err(err).context(|| format!("inspecting {}", self.host_path(rel).display())),
        };
        if stat.st_dev != self.device {
            warn!(path = %self.host_path(rel).display(), "skipping a mount point in the container's writable layer");
            return Ok(());
        }
        match FileKind::of(&stat) {
            FileKind::Directory => self.add_directory(dir, name, rel),
            FileKind::Regular => self.add_file(dir, name, rel),
            FileKind::Symlink => self.add_symlink(dir, name, rel, &stat),
            FileKind::CharDevice if stat.st_rdev == 0 => self.add_whiteout(rel),
            kind => {
                warn!(
                    path = %self.host_path(rel).display(),
                    kind = kind.description(),
                    "skipping a special file in the container's writable layer: CRIU recreates what processes need"
                );
                Ok(())
            }
        }
    }

    fn add_directory(&mut self, dir: &OwnedFd, name: &OsStr, rel: &Path) -> Result<(), RootfsDiffError> {
        let child = match open_directory(dir, name, OFlag::O_NOFOLLOW) {
            Ok(child) => child,
            Err(err) => return self.open_failed(rel, err),
        };
        let stat = fstat(&child).context(|| format!("inspecting {}", self.host_path(rel).display()))?;
        if stat.st_dev != self.device {
            warn!(path = %self.host_path(rel).display(), "skipping a mount point in the container's writable layer");
            return Ok(());
        }
        let child = File::from(child);
        if is_opaque(&child).context(|| format!("reading the xattrs of {}", self.host_path(rel).display()))? {
            let path = self.container_path(rel)?;
            debug!(path, "opaque directory: the image's entries below it are deleted");
            self.summary.deleted.push(path.clone());
            self.summary.opaque_dirs.push(path);
        }
        let mut header = header_for(&stat, EntryType::Directory);
        self.tar.append_data(&mut header, rel, io::empty()).context(|| self.archiving(rel))?;
        self.summary.files += 1;
        self.walk(OwnedFd::from(child), rel)
    }

    fn add_file(&mut self, dir: &OwnedFd, name: &OsStr, rel: &Path) -> Result<(), RootfsDiffError> {
        // O_NONBLOCK: should the file have been swapped for a fifo, opening it must not hang.
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
        let file = match openat(dir, name, flags, Mode::empty()) {
            Ok(fd) => File::from(fd),
            Err(err) => return self.open_failed(rel, err),
        };
        let stat = fstat(&file).context(|| format!("inspecting {}", self.host_path(rel).display()))?;
        if FileKind::of(&stat) != FileKind::Regular {
            return Err(self.changed_type(rel));
        }
        if self.add_hard_link(&stat, rel)? {
            return Ok(());
        }
        let size = u64::try_from(stat.st_size).unwrap_or(0);
        let mut header = header_for(&stat, EntryType::Regular);
        header.set_size(size);
        let content = ExactReader { inner: file, remaining: size };
        self.tar.append_data(&mut header, rel, content).context(|| self.archiving(rel))?;
        self.summary.files += 1;
        self.summary.bytes += size;
        Ok(())
    }

    fn add_symlink(&mut self, dir: &OwnedFd, name: &OsStr, rel: &Path, stat: &FileStat) -> Result<(), RootfsDiffError> {
        let target = match readlinkat(dir, name) {
            Ok(target) => target,
            Err(err) => return self.open_failed(rel, err),
        };
        if self.add_hard_link(stat, rel)? {
            return Ok(());
        }
        let mut header = header_for(stat, EntryType::Symlink);
        self.tar.append_link(&mut header, rel, target).context(|| self.archiving(rel))?;
        self.summary.files += 1;
        Ok(())
    }

    /// Archives `rel` as a hard link if its inode was archived before; remembers it otherwise.
    fn add_hard_link(&mut self, stat: &FileStat, rel: &Path) -> Result<bool, RootfsDiffError> {
        if stat.st_nlink < 2 {
            return Ok(false);
        }
        let Some(first) = self.seen_inodes.get(&(stat.st_dev, stat.st_ino)) else {
            self.seen_inodes.insert((stat.st_dev, stat.st_ino), rel.to_owned());
            return Ok(false);
        };
        let mut header = header_for(stat, EntryType::Link);
        self.tar.append_link(&mut header, rel, first).context(|| self.archiving(rel))?;
        self.summary.files += 1;
        Ok(true)
    }

    fn add_whiteout(&mut self, rel: &Path) -> Result<(), RootfsDiffError> {
        let path = self.container_path(rel)?;
        self.summary.deleted.push(path);
        Ok(())
    }

    /// `/rel`, as `deleted.files` lists it (UTF-8 only: it is JSON).
    fn container_path(&self, rel: &Path) -> Result<String, RootfsDiffError> {
        let container_path = Path::new("/").join(rel);
        match container_path.to_str() {
            Some(path) => Ok(path.to_owned()),
            None => Err(RootfsDiffError::NonUtf8Whiteout { path: container_path.to_string_lossy().into_owned() }),
        }
    }

    /// Handles a failure to open an entry that was just listed. The container may still be
    /// running, so the entry may have vanished since (then it is skipped) or changed type.
    fn open_failed(&self, rel: &Path, err: Errno) -> Result<(), RootfsDiffError> {
        match err {
            Errno::ENOENT => {
                debug!(path = %self.host_path(rel).display(), "vanished while the upper directory was walked");
                Ok(())
            }
            Errno::ELOOP | Errno::ENOTDIR => Err(self.changed_type(rel)),
            err => Err(err).context(|| format!("opening {}", self.host_path(rel).display())),
        }
    }

    fn changed_type(&self, rel: &Path) -> RootfsDiffError {
        RootfsDiffError::Io {
            context: self.archiving(rel),
            source: io::Error::other("it changed type while the upper directory was walked"),
        }
    }

    fn host_path(&self, rel: &Path) -> PathBuf {
        self.upperdir.join(rel)
    }

    fn archiving(&self, rel: &Path) -> String {
        format!("archiving {}", self.host_path(rel).display())
    }
}

/// A tar header of type `kind` carrying the mode, owner and mtime of `stat`; size 0.
fn header_for(stat: &FileStat, kind: EntryType) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(stat.st_mode & 0o7777);
    header.set_uid(stat.st_uid.into());
    header.set_gid(stat.st_gid.into());
    header.set_mtime(u64::try_from(stat.st_mtime).unwrap_or(0));
    header.set_size(0);
    header
}

/// Reads exactly `remaining` bytes, the size already written in the tar header: a file that
/// grew is cut at that size, one that shrank is an error (rather than a corrupt archive).
struct ExactReader<R> {
    inner: R,
    remaining: u64,
}

impl<R: Read> Read for ExactReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let limit = usize::try_from(self.remaining).map_or(buf.len(), |remaining| remaining.min(buf.len()));
        let read = self.inner.read(&mut buf[..limit])?;
        if read == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the file shrank while it was being archived"));
        }
        self.remaining -= read as u64;
        Ok(read)
    }
}

// ---------------------------------------------------------------------------------------------
// deleted.files

/// Writes `deleted.files`: the JSON array of deleted container paths.
pub fn write_deleted_files(deleted: &[String], mut out: impl Write) -> Result<(), RootfsDiffError> {
    serde_json::to_writer(&mut out, deleted).context(|| "writing deleted.files".to_owned())?;
    out.flush().context(|| "writing deleted.files".to_owned())
}

/// Turns a rootfs diff in OCI layer form — as containerd 2.x's `CheckpointContainer` writes it:
/// possibly gzip- or zstd-compressed, deletions as `.wh.<name>` whiteout entries and opaque
/// directories as `.wh..wh..opq` — into the form [`apply_diff`] takes: a plain tar written to
/// `out`, and the deleted container paths returned (an opaque directory is deleted and
/// re-created empty before its new entries land in it). A lazarus diff passes through unchanged.
pub fn normalize_layer(input: impl Read, out: impl Write) -> Result<Vec<String>, RootfsDiffError> {
    let decoded = crate::compression::decompressing(io::BufReader::new(input))
        .context(|| "reading the rootfs diff archive".to_owned())?;
    let mut archive = Archive::new(decoded);
    let mut builder = Builder::new(out);
    let mut deleted = Vec::new();
    let reading = || "reading the rootfs diff archive".to_owned();
    for entry in archive.entries().context(reading)? {
        let mut entry = entry.context(reading)?;
        let path = entry.path().context(reading)?.into_owned();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if let Some(hidden) = name.strip_prefix(".wh.") {
            let parent = path.parent().unwrap_or(Path::new(""));
            let parent_text = parent
                .to_str()
                .ok_or_else(|| RootfsDiffError::NonUtf8Whiteout { path: path.to_string_lossy().into_owned() })?;
            let container_path = |rel: &str| format!("/{}", rel.trim_start_matches("./").trim_matches('/'));
            if hidden == ".wh..opq" {
                deleted.push(container_path(parent_text));
                let mut header = Header::new_gnu();
                header.set_entry_type(EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                header.set_uid(0);
                header.set_gid(0);
                header.set_mtime(0);
                builder
                    .append_data(&mut header, parent, io::empty())
                    .context(|| "writing the rootfs diff".to_owned())?;
            } else {
                deleted.push(container_path(&format!("{parent_text}/{hidden}")));
            }
            continue;
        }
        let header = entry.header().clone();
        builder.append(&header, &mut entry).context(|| "writing the rootfs diff".to_owned())?;
    }
    builder.into_inner().and_then(|mut w| w.flush()).context(|| "writing the rootfs diff".to_owned())?;
    Ok(deleted)
}

/// Reads `deleted.files`. The paths are validated when they are applied, by [`apply_diff`].
pub fn read_deleted_files(input: impl Read) -> Result<Vec<String>, RootfsDiffError> {
    serde_json::from_reader(input).map_err(RootfsDiffError::DeletedFiles)
}

// ---------------------------------------------------------------------------------------------
// Applying a diff.

/// What [`apply_diff`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplySummary {
    /// Paths of `deleted.files` that existed and were removed.
    pub removed: u64,
    /// Archive entries applied.
    pub entries: u64,
    /// Bytes of regular-file content written.
    pub bytes: u64,
}

/// Replays a checkpoint's rootfs changes inside `rootfs`, the new container's root filesystem:
/// removes every path of `deleted` (absolute container paths, directories recursively), then
/// unpacks the `rootfs-diff.tar` read from `tar`, restoring modes, owners and mtimes.
///
/// Nothing is ever created, changed or removed outside `rootfs`, whatever the archive and the
/// list contain: absolute archive paths, `..` components, device nodes and fifos, hard links to
/// anything outside `rootfs`, and paths through a symlink are refused with an error naming the
/// entry. An existing entry in the way of an archived one is replaced (a directory only by a
/// non-directory); a symlink in the way is replaced, never written through.
pub fn apply_diff(tar: impl Read, deleted: &[String], rootfs: &Path) -> Result<ApplySummary, RootfsDiffError> {
    let root = open_directory(AT_FDCWD, rootfs.as_os_str(), OFlag::empty())
        .context(|| format!("opening the container rootfs {}", rootfs.display()))?;
    let target = Rootfs { root, path: rootfs };
    let mut summary = ApplySummary::default();
    for path in deleted {
        if target.remove_deleted(path)? {
            summary.removed += 1;
        }
    }
    let mut unpacker = Unpacker { rootfs: &target, directory_times: Vec::new(), summary };
    let mut archive = Archive::new(tar);
    for entry in archive.entries().context(|| "reading the rootfs diff archive".to_owned())? {
        unpacker.unpack(entry.context(|| "reading the rootfs diff archive".to_owned())?)?;
    }
    unpacker.finish()
}

/// The restore target: an open root directory and its path, for messages.
struct Rootfs<'a> {
    root: OwnedFd,
    path: &'a Path,
}

/// Why a chain of directories could not be opened below the rootfs.
#[derive(Debug)]
enum Descent {
    /// This prefix does not exist (and was not to be created).
    Missing(String),
    /// This prefix is a symlink.
    Symlink(String),
    /// This prefix is neither a directory nor a symlink.
    NotDirectory(String),
    /// Opening or creating this prefix failed.
    Failed(String, io::Error),
}

impl Rootfs<'_> {
    /// Opens the directory `dirs` below the root one component at a time, refusing symlinks;
    /// missing directories are created (mode 0755) if `create` is set.
    fn descend(&self, dirs: &[&OsStr], create: bool) -> Result<OwnedFd, Descent> {
        let mut current = self.root.try_clone().map_err(|err| Descent::Failed(String::new(), err))?;
        for (depth, name) in dirs.iter().enumerate() {
            let prefix = || join_components(&dirs[..=depth]);
            current = match open_directory(&current, name, OFlag::O_NOFOLLOW) {
                Ok(next) => next,
                Err(Errno::ENOENT) if create => {
                    match mkdirat(&current, *name, Mode::from_bits_truncate(0o755)) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(err) => return Err(Descent::Failed(prefix(), err.into())),
                    }
                    open_directory(&current, name, OFlag::O_NOFOLLOW)
                        .map_err(|err| Descent::Failed(prefix(), err.into()))?
                }
                Err(Errno::ENOENT) => return Err(Descent::Missing(prefix())),
                Err(err) => {
                    return Err(match lstat_at(&current, name) {
                        Ok(Some(stat)) if FileKind::of(&stat) == FileKind::Symlink => Descent::Symlink(prefix()),
                        Ok(Some(stat)) if FileKind::of(&stat) != FileKind::Directory => Descent::NotDirectory(prefix()),
                        _ => Descent::Failed(prefix(), err.into()),
                    });
                }
            };
        }
        Ok(current)
    }

    /// Removes the container path `path` (a `deleted.files` entry) if it exists; `Ok(false)` if
    /// it did not.
    fn remove_deleted(&self, path: &str) -> Result<bool, RootfsDiffError> {
        let refuse =
            |reason: &str| RootfsDiffError::RefusedDeletion { path: path.to_owned(), reason: reason.to_owned() };
        let Some(relative) = path.strip_prefix('/') else {
            return Err(refuse("is not an absolute path inside the container"));
        };
        let components = split_components(relative.as_bytes()).map_err(|fault| refuse(fault.describe()))?;
        let Some((name, dirs)) = components.split_last() else {
            return Err(refuse(PathFault::Root.describe()));
        };
        let parent = match self.descend(dirs, false) {
            Ok(parent) => parent,
            Err(Descent::Missing(_) | Descent::NotDirectory(_)) => {
                debug!(path, "deleted path is already absent from the rootfs");
                return Ok(false);
            }
            Err(Descent::Symlink(prefix)) => {
                return Err(refuse(&format!(
                    "resolves through the symlink /{prefix}, which could lead outside the container rootfs"
                )));
            }
            Err(Descent::Failed(prefix, err)) => {
                return Err(RootfsDiffError::Io {
                    context: format!("opening {}", self.host_path(&prefix)),
                    source: err,
                });
            }
        };
        remove_entry(&parent, name).context(|| format!("removing {}", self.host_path(relative)))
    }

    fn host_path(&self, relative: &str) -> String {
        self.path.join(relative).display().to_string()
    }
}

/// The state of one [`apply_diff`] unpacking.
struct Unpacker<'a> {
    rootfs: &'a Rootfs<'a>,
    /// Directories whose mtime is set once everything below them is written, in archive order.
    directory_times: Vec<(Vec<OsString>, TimeSpec)>,
    summary: ApplySummary,
}

/// The metadata an archive entry carries, checked.
struct Metadata {
    mode: Mode,
    uid: Uid,
    gid: Gid,
    mtime: TimeSpec,
}

impl Metadata {
    fn of(header: &Header) -> Result<Self, String> {
        let malformed = |err: io::Error| format!("has a malformed header: {err}");
        let out_of_range = |what: &str| format!("has an out-of-range {what}");
        let id = |value: u64, what: &str| u32::try_from(value).map_err(|_| out_of_range(what));
        Ok(Metadata {
            mode: Mode::from_bits_truncate(header.mode().map_err(malformed)? & 0o7777),
            uid: Uid::from_raw(id(header.uid().map_err(malformed)?, "uid")?),
            gid: Gid::from_raw(id(header.gid().map_err(malformed)?, "gid")?),
            mtime: TimeSpec::new(
                nix::libc::time_t::try_from(header.mtime().map_err(malformed)?).map_err(|_| out_of_range("mtime"))?,
                0,
            ),
        })
    }
}

impl Unpacker<'_> {
    /// Applies one archive entry, or refuses it.
    fn unpack<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), RootfsDiffError> {
        let raw_path = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        let refuse = |reason: String| RootfsDiffError::RefusedEntry { entry: shown.clone(), reason };
        let kind = entry.header().entry_type();
        if kind == EntryType::XGlobalHeader {
            return Ok(());
        }
        if raw_path.starts_with(b"/") {
            return Err(refuse("escapes the container rootfs: it is an absolute path".to_owned()));
        }
        let components = match split_components(&raw_path) {
            Ok(components) => components,
            Err(PathFault::Root) if kind == EntryType::Directory => {
                debug!(entry = %shown, "ignoring the archive's entry for the rootfs itself");
                return Ok(());
            }
            Err(fault) => return Err(refuse(fault.describe().to_owned())),
        };
        let Some((name, dirs)) = components.split_last() else {
            return Err(refuse(PathFault::Root.describe().to_owned()));
        };
        check_entry_type(kind).map_err(&refuse)?;
        let metadata = Metadata::of(entry.header()).map_err(&refuse)?;
        let link = entry.link_name_bytes().map(|link| link.into_owned());
        let parent = self.parent_of(dirs).map_err(&refuse)?;

        let host_path = || self.rootfs.host_path(&join_components(&components));
        match kind {
            EntryType::Directory => {
                make_directory(&parent, name, &metadata).context(|| format!("creating {}", host_path()))?;
                let components = components.iter().map(|component| component.to_os_string()).collect();
                self.directory_times.push((components, metadata.mtime));
            }
            EntryType::Symlink => {
                let target = link.filter(|target| !target.is_empty());
                let target = target.ok_or_else(|| refuse("is a symlink without a target".to_owned()))?;
                make_symlink(&parent, name, OsStr::from_bytes(&target), &metadata)
                    .context(|| format!("creating the symlink {}", host_path()))?;
            }
            EntryType::Link => {
                let target = link.ok_or_else(|| refuse("is a hard link without a target".to_owned()))?;
                self.make_hard_link(&parent, name, &target).map_err(|err| match err {
                    LinkError::Refused(reason) => refuse(reason),
                    LinkError::Io(source) => {
                        RootfsDiffError::Io { context: format!("creating the hard link {}", host_path()), source }
                    }
                })?;
            }
            _ => {
                let written =
                    make_file(&parent, name, &mut entry, &metadata).context(|| format!("writing {}", host_path()))?;
                self.summary.bytes += written;
            }
        }
        self.summary.entries += 1;
        Ok(())
    }

    /// Opens (creating if needed) the parent directories of an entry; the reason of a refusal.
    fn parent_of(&self, dirs: &[&OsStr]) -> Result<OwnedFd, String> {
        self.rootfs.descend(dirs, true).map_err(|descent| match descent {
            Descent::Symlink(prefix) => {
                format!("goes through the symlink {prefix}, which could lead outside the container rootfs")
            }
            Descent::NotDirectory(prefix) => format!("needs {prefix} to be a directory, and it is not one"),
            Descent::Missing(prefix) => format!("needs {prefix}, which could not be created"),
            Descent::Failed(prefix, err) => format!("cannot open {}: {err}", self.rootfs.host_path(&prefix)),
        })
    }

    fn make_hard_link(&self, parent: &OwnedFd, name: &OsStr, target: &[u8]) -> Result<(), LinkError> {
        let shown = String::from_utf8_lossy(target);
        let refused = |reason: String| LinkError::Refused(format!("is a hard link to {shown}, {reason}"));
        if target.starts_with(b"/") {
            return Err(refused("which escapes the container rootfs".into()));
        }
        let components = split_components(target).map_err(|fault| match fault {
            PathFault::ParentDir => refused("which escapes the container rootfs".into()),
            fault => refused(fault.describe().into()),
        })?;
        let Some((target_name, target_dirs)) = components.split_last() else {
            return Err(refused(PathFault::Root.describe().into()));
        };
        let target_parent = self.rootfs.descend(target_dirs, false).map_err(|descent| match descent {
            Descent::Missing(_) | Descent::NotDirectory(_) => refused("which does not exist".into()),
            Descent::Symlink(prefix) => {
                refused(format!("which goes through the symlink {prefix} and could lead outside the container rootfs"))
            }
            Descent::Failed(_, err) => LinkError::Io(err),
        })?;
        let target_stat = match lstat_at(&target_parent, target_name).map_err(LinkError::Io)? {
            None => return Err(refused("which does not exist".into())),
            Some(stat) if FileKind::of(&stat) == FileKind::Directory => return Err(refused("a directory".into())),
            Some(stat) => stat,
        };
        if let Some(existing) = lstat_at(parent, name).map_err(LinkError::Io)? {
            if (existing.st_dev, existing.st_ino) == (target_stat.st_dev, target_stat.st_ino) {
                return Ok(());
            }
            remove_entry(parent, name).map_err(LinkError::Io)?;
        }
        linkat(&target_parent, *target_name, parent, name, AtFlags::empty()).map_err(|err| LinkError::Io(err.into()))
    }

    /// Sets the directories' mtimes, deepest last-written first, now that nothing else is written
    /// into them.
    fn finish(self) -> Result<ApplySummary, RootfsDiffError> {
        for (components, mtime) in self.directory_times.iter().rev() {
            let components: Vec<&OsStr> = components.iter().map(OsString::as_os_str).collect();
            let Some((name, dirs)) = components.split_last() else { continue };
            let host_path = || self.rootfs.host_path(&join_components(&components));
            // A later entry may have replaced the directory; then its time is no longer ours to set.
            let Ok(parent) = self.rootfs.descend(dirs, false) else { continue };
            let Ok(dir) = open_directory(&parent, name, OFlag::O_NOFOLLOW) else { continue };
            futimens(&dir, mtime, mtime).context(|| format!("setting the mtime of {}", host_path()))?;
        }
        Ok(self.summary)
    }
}

/// Refuses the entry types lazarus never restores, and those it does not know.
fn check_entry_type(kind: EntryType) -> Result<(), String> {
    match kind {
        EntryType::Directory
        | EntryType::Regular
        | EntryType::Continuous
        | EntryType::GNUSparse
        | EntryType::Symlink
        | EntryType::Link => Ok(()),
        EntryType::Char => Err("is a character device node, which lazarus never restores".to_owned()),
        EntryType::Block => Err("is a block device node, which lazarus never restores".to_owned()),
        EntryType::Fifo => Err("is a fifo, which lazarus never restores".to_owned()),
        other => Err(format!("has an unsupported type {other:?}")),
    }
}

/// Why a hard link entry could not be applied.
enum LinkError {
    Refused(String),
    Io(io::Error),
}

/// Makes `name` a directory with `metadata` (but for the mtime, set last), replacing a non-directory.
fn make_directory(parent: &OwnedFd, name: &OsStr, metadata: &Metadata) -> io::Result<()> {
    match lstat_at(parent, name)? {
        Some(stat) if FileKind::of(&stat) == FileKind::Directory => {}
        existing => {
            if existing.is_some() {
                remove_entry(parent, name)?;
            }
            mkdirat(parent, name, Mode::from_bits_truncate(0o700))?;
        }
    }
    let dir = open_directory(parent, name, OFlag::O_NOFOLLOW)?;
    fchown(&dir, Some(metadata.uid), Some(metadata.gid))?;
    fchmod(&dir, metadata.mode)?;
    Ok(())
}

/// Replaces whatever is at `name` with a new regular file holding `content`; the bytes written.
fn make_file(parent: &OwnedFd, name: &OsStr, content: &mut impl Read, metadata: &Metadata) -> io::Result<u64> {
    remove_entry(parent, name)?;
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut file = File::from(openat(parent, name, flags, Mode::from_bits_truncate(0o600))?);
    let written = io::copy(content, &mut file)?;
    // chown before chmod: chown clears the set-user-ID and set-group-ID bits.
    fchown(&file, Some(metadata.uid), Some(metadata.gid))?;
    fchmod(&file, metadata.mode)?;
    futimens(&file, &metadata.mtime, &metadata.mtime)?;
    Ok(written)
}

/// Replaces whatever is at `name` with a symlink to `target`.
fn make_symlink(parent: &OwnedFd, name: &OsStr, target: &OsStr, metadata: &Metadata) -> io::Result<()> {
    remove_entry(parent, name)?;
    symlinkat(target, parent, name)?;
    fchownat(parent, name, Some(metadata.uid), Some(metadata.gid), AtFlags::AT_SYMLINK_NOFOLLOW)?;
    utimensat(parent, name, &metadata.mtime, &metadata.mtime, UtimensatFlags::NoFollowSymlink)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Path and file-descriptor helpers.

/// Why a path cannot name an entry inside the rootfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PathFault {
    ParentDir,
    Root,
    Nul,
}

impl PathFault {
    fn describe(self) -> &'static str {
        match self {
            PathFault::ParentDir => "escapes the container rootfs: it contains `..`",
            PathFault::Root => "names the container's root directory itself",
            PathFault::Nul => "contains a NUL byte",
        }
    }
}

/// The plain components of a slash-separated relative path, without empty and `.` ones.
fn split_components(path: &[u8]) -> Result<Vec<&OsStr>, PathFault> {
    let mut components = Vec::new();
    for component in path.split(|byte| *byte == b'/') {
        match component {
            b"" | b"." => {}
            b".." => return Err(PathFault::ParentDir),
            _ if component.contains(&0) => return Err(PathFault::Nul),
            _ => components.push(OsStr::from_bytes(component)),
        }
    }
    if components.is_empty() { Err(PathFault::Root) } else { Ok(components) }
}

fn join_components(components: &[&OsStr]) -> String {
    components.iter().map(|component| component.to_string_lossy()).collect::<Vec<_>>().join("/")
}

/// Opens the directory `name` of `dir` for reading; `extra` adds flags such as `O_NOFOLLOW`.
fn open_directory(dir: impl AsFd, name: &OsStr, extra: OFlag) -> nix::Result<OwnedFd> {
    openat(dir, name, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | extra, Mode::empty())
}

/// `lstat` of `name` in `dir`; `None` if it does not exist.
fn lstat_at(dir: impl AsFd, name: &OsStr) -> io::Result<Option<FileStat>> {
    match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(stat) => Ok(Some(stat)),
        Err(Errno::ENOENT) => Ok(None),
        Err(err) => Err(err.into()),
    }
}

/// The names in the directory open as `dir`, without `.` and `..`, sorted.
fn sorted_names(dir: impl AsFd) -> io::Result<Vec<OsString>> {
    // Listed through the descriptor's magic link in /proc: the very directory `dir` is open on,
    // wherever its path may lead by now.
    let path = format!("/proc/self/fd/{}", dir.as_fd().as_raw_fd());
    let mut names =
        std::fs::read_dir(path)?.map(|entry| entry.map(|entry| entry.file_name())).collect::<io::Result<Vec<_>>>()?;
    names.sort();
    Ok(names)
}

/// Removes `name` from `parent`, a directory with all its contents; `Ok(false)` if there was
/// nothing to remove.
fn remove_entry(parent: &OwnedFd, name: &OsStr) -> io::Result<bool> {
    match lstat_at(parent, name)? {
        None => Ok(false),
        Some(stat) if FileKind::of(&stat) == FileKind::Directory => {
            remove_tree(parent, name, fstat(parent)?.st_dev)?;
            Ok(true)
        }
        Some(_) => {
            unlinkat(parent, name, UnlinkatFlags::NoRemoveDir)?;
            Ok(true)
        }
    }
}

/// Removes the directory `name` of `parent` and everything below it, refusing to descend into
/// anything mounted (whose device differs from `device`).
fn remove_tree(parent: &impl AsFd, name: &OsStr, device: u64) -> io::Result<()> {
    let fd = open_directory(parent, name, OFlag::O_NOFOLLOW)?;
    if fstat(&fd)?.st_dev != device {
        return Err(io::Error::other(format!("{} is a mount point; refusing to empty it", name.to_string_lossy())));
    }
    let dir = fd;
    for child in sorted_names(&dir)? {
        match lstat_at(&dir, &child)? {
            Some(stat) if FileKind::of(&stat) == FileKind::Directory => remove_tree(&dir, &child, device)?,
            Some(_) => unlinkat(&dir, child.as_os_str(), UnlinkatFlags::NoRemoveDir)?,
            None => {}
        }
    }
    unlinkat(parent, name, UnlinkatFlags::RemoveDir)?;
    Ok(())
}

/// The type of a file, from its `stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileKind {
    Directory,
    Regular,
    Symlink,
    CharDevice,
    BlockDevice,
    Fifo,
    Socket,
    Unknown,
}

impl FileKind {
    fn of(stat: &FileStat) -> Self {
        match SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits()) {
            SFlag::S_IFDIR => FileKind::Directory,
            SFlag::S_IFREG => FileKind::Regular,
            SFlag::S_IFLNK => FileKind::Symlink,
            SFlag::S_IFCHR => FileKind::CharDevice,
            SFlag::S_IFBLK => FileKind::BlockDevice,
            SFlag::S_IFIFO => FileKind::Fifo,
            SFlag::S_IFSOCK => FileKind::Socket,
            _ => FileKind::Unknown,
        }
    }

    fn description(self) -> &'static str {
        match self {
            FileKind::Directory => "directory",
            FileKind::Regular => "regular file",
            FileKind::Symlink => "symlink",
            FileKind::CharDevice => "character device",
            FileKind::BlockDevice => "block device",
            FileKind::Fifo => "fifo",
            FileKind::Socket => "socket",
            FileKind::Unknown => "file of unknown type",
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::fs;
    use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
    use std::os::unix::net::UnixListener;
    use std::time::{Duration, SystemTime};

    use nix::mount::{MntFlags, MsFlags, mount, umount2};
    use nix::sys::stat::{makedev, mknod};
    use nix::unistd::{chown, mkfifo};

    use super::*;

    const CONTAINERD_ROOT: &str = "1191 1074 0:95 / / rw,relatime master:420 - overlay overlay rw,\
        lowerdir=/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/24/fs:\
        /var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/23/fs,\
        upperdir=/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/25/fs,\
        workdir=/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/25/work";

    // --- mountinfo -------------------------------------------------------------------------

    #[test]
    fn finds_the_upperdir_of_containerds_overlay_root() {
        let text = format!(
            "1190 1074 0:94 / /dev rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755\n{CONTAINERD_ROOT}\n\
             1192 1191 0:96 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw\n"
        );
        assert_eq!(
            upperdir_from_mountinfo(&text).expect("upperdir"),
            PathBuf::from("/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/25/fs")
        );
    }

    #[test]
    fn decodes_octal_escapes_in_mount_points_and_options() {
        let text = "36 35 0:40 / / rw shared:1 master:2 - overlay overlay \
                    rw,lowerdir=/l\\0401:/l2,upperdir=/var/lib/my\\040upper\\054dir\\134x/fs,workdir=/w";
        assert_eq!(upperdir_from_mountinfo(text).expect("upperdir"), PathBuf::from("/var/lib/my upper,dir\\x/fs"));
        assert_eq!(unescape_octal("a\\040b\\011c\\12\\999"), b"a b\tc\\12\\999".to_vec());
    }

    #[test]
    fn the_last_overlay_stacked_on_root_wins_and_other_mount_points_do_not_count() {
        let text = "20 1 0:40 / / rw - overlay overlay rw,lowerdir=/a,upperdir=/old,workdir=/w\n\
                    21 20 0:41 / /data rw - overlay overlay rw,lowerdir=/b,upperdir=/data-upper,workdir=/w2\n\
                    22 20 0:42 / / rw - overlay overlay rw,lowerdir=/c,upperdir=/new,workdir=/w3\n";
        assert_eq!(upperdir_from_mountinfo(text).expect("upperdir"), PathBuf::from("/new"));
    }

    #[test]
    fn explains_a_root_that_is_not_an_overlay() {
        let text = "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard\n\
                    28 27 0:41 / /mnt rw - overlay overlay rw,lowerdir=/b,upperdir=/u,workdir=/w\n";
        let err = upperdir_from_mountinfo(text).expect_err("not an overlay root");
        assert_eq!(
            err.to_string(),
            "no overlay root mount in mountinfo: lazarus needs containerd's overlayfs snapshotter"
        );
    }

    #[test]
    fn explains_an_overlay_root_without_a_writable_layer() {
        let text = "20 1 0:40 / / ro - overlay overlay ro,lowerdir=/a:/b\n";
        let err = upperdir_from_mountinfo(text).expect_err("no upperdir");
        assert!(matches!(err, RootfsDiffError::NoUpperdir { .. }), "{err}");
    }

    #[test]
    fn rejects_malformed_lines_with_their_number() {
        let text = format!("{CONTAINERD_ROOT}\n1200 1191 0:97 / /sys rw - sysfs\n");
        let err = upperdir_from_mountinfo(&text).expect_err("malformed");
        assert!(matches!(err, RootfsDiffError::MalformedMountinfo { line: 2, .. }), "{err}");
        assert!(upperdir_from_mountinfo("1 2 3").is_err());
    }

    #[test]
    fn reads_the_mount_table_of_a_process() {
        // Whatever this machine's root is, the answer is an upper dir or the explanation naming the file.
        let pid = std::process::id();
        match overlay_upperdir(pid) {
            Ok(upper) => assert!(upper.is_absolute()),
            Err(err) => {
                assert!(matches!(err, RootfsDiffError::NoOverlayRoot { .. }), "{err}");
                assert!(err.to_string().contains(&format!("/proc/{pid}/mountinfo")), "{err}");
            }
        }
    }

    // --- deleted.files ---------------------------------------------------------------------

    #[test]
    fn deleted_files_round_trip_as_a_json_array() {
        let deleted = vec!["/etc/motd".to_owned(), "/opt/with space".to_owned()];
        let mut out = Vec::new();
        write_deleted_files(&deleted, &mut out).expect("write");
        assert_eq!(out, br#"["/etc/motd","/opt/with space"]"#);
        assert_eq!(read_deleted_files(out.as_slice()).expect("read"), deleted);
        assert!(matches!(read_deleted_files(&b"{\"a\": 1}"[..]), Err(RootfsDiffError::DeletedFiles(_))));
        assert!(matches!(read_deleted_files(&b"[\"/a\","[..]), Err(RootfsDiffError::DeletedFiles(_))));
    }

    // --- fixtures ----------------------------------------------------------------------------

    /// Tests that need root are `#[ignore]`d with the reason (as root:
    /// `cargo test -p lazarus-format --lib -- --include-ignored`); asked for without root they fail.
    fn require_root() {
        assert!(Uid::effective().is_root(), "this test needs root; it is ignored by default for that reason");
    }

    const MOTD_MTIME: u64 = 1_600_000_000;
    const ETC_MTIME: u64 = 1_500_000_000;

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
    }

    fn long_path() -> String {
        format!("var/lib/{}/{}/file.txt", "d".repeat(60), "e".repeat(60))
    }

    /// An upper directory as a container would leave it, with one of each kind of entry.
    fn build_upper(upper: &Path) {
        let mkdir = |rel: &str| fs::create_dir_all(upper.join(rel)).expect("mkdir");
        for dir in ["etc", "usr/bin", "data", "empty", "home/app", "run", "dev"] {
            mkdir(dir);
        }
        let motd = upper.join("etc/motd");
        fs::write(&motd, "hello from the container\n").expect("write");
        fs::set_permissions(&motd, fs::Permissions::from_mode(0o644)).expect("chmod");
        File::options().write(true).open(&motd).expect("open").set_modified(at(MOTD_MTIME)).expect("mtime");

        let long = upper.join(long_path());
        fs::create_dir_all(long.parent().expect("parent")).expect("mkdir");
        fs::write(&long, "deep").expect("write");

        symlink("../lib/tool.real", upper.join("usr/bin/tool")).expect("symlink");
        symlink("/usr/share/zoneinfo/UTC", upper.join("etc/localtime")).expect("symlink");
        fs::write(upper.join("data/hardlink"), "shared").expect("write");
        fs::hard_link(upper.join("data/hardlink"), upper.join("data/original")).expect("link");

        let secret = upper.join("home/app/secret");
        fs::write(&secret, "s3cr3t").expect("write");
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).expect("chmod");
        chown(&secret, Some(Uid::from_raw(1000)), Some(Gid::from_raw(1000))).expect("chown");

        // Whiteouts: a deleted file and a deleted directory.
        let whiteout = |rel: &str| {
            mknod(&upper.join(rel), SFlag::S_IFCHR, Mode::empty(), makedev(0, 0)).expect("mknod whiteout");
        };
        whiteout("etc/removed");
        whiteout("opt");

        // Special files that are not whiteouts: skipped.
        mkfifo(&upper.join("run/pipe"), Mode::from_bits_truncate(0o600)).expect("mkfifo");
        mknod(&upper.join("dev/null"), SFlag::S_IFCHR, Mode::from_bits_truncate(0o666), makedev(1, 3)).expect("mknod");
        drop(UnixListener::bind(upper.join("run/socket")).expect("socket"));

        File::open(upper.join("etc")).expect("open").set_modified(at(ETC_MTIME)).expect("mtime");
    }

    #[derive(Debug)]
    struct Listed {
        kind: EntryType,
        mode: u32,
        uid: u64,
        gid: u64,
        mtime: u64,
        link: Option<PathBuf>,
        content: Vec<u8>,
    }

    fn list_tar(tar: &[u8]) -> BTreeMap<String, Listed> {
        let mut archive = Archive::new(tar);
        let mut listing = BTreeMap::new();
        for entry in archive.entries().expect("entries") {
            let mut entry = entry.expect("entry");
            let header = entry.header();
            let mut listed = Listed {
                kind: header.entry_type(),
                mode: header.mode().expect("mode"),
                uid: header.uid().expect("uid"),
                gid: header.gid().expect("gid"),
                mtime: header.mtime().expect("mtime"),
                link: entry.link_name().expect("link").map(|link| link.into_owned()),
                content: Vec::new(),
            };
            entry.read_to_end(&mut listed.content).expect("content");
            let path = String::from_utf8(entry.path_bytes().into_owned()).expect("utf-8 path");
            assert!(listing.insert(path, listed).is_none(), "duplicate entry");
        }
        listing
    }

    // --- write_diff ----------------------------------------------------------------------------

    #[test]
    #[ignore = "needs root (mknod, chown); run with --include-ignored"]
    fn archives_the_upper_dir_and_reports_whiteouts() {
        require_root();
        let upper = tempfile::tempdir().expect("tempdir");
        build_upper(upper.path());
        let mut tar = Vec::new();
        let summary = write_diff(upper.path(), &mut tar).expect("write_diff");

        assert_eq!(summary.deleted, ["/etc/removed", "/opt"]);
        assert!(summary.opaque_dirs.is_empty());
        let listing = list_tar(&tar);
        let paths: Vec<&str> = listing.keys().map(String::as_str).collect();
        let long = long_path();
        let mut expected = vec![
            "data",
            "data/hardlink",
            "data/original",
            "dev",
            "empty",
            "etc",
            "etc/localtime",
            "etc/motd",
            "home",
            "home/app",
            "home/app/secret",
            "run",
            "usr",
            "usr/bin",
            "usr/bin/tool",
            "var",
            "var/lib",
            &long[..68],
            &long[..129],
            &long,
        ];
        expected.sort_unstable();
        assert_eq!(paths, expected);
        assert!(long.len() > 100);
        assert!(paths.iter().all(|path| !path.starts_with('/') && !path.split('/').any(|c| c == "..")));
        assert_eq!(summary.files, expected.len() as u64);
        assert_eq!(summary.bytes, ("hello from the container\n".len() + "deep".len() + "shared".len() + 6) as u64);

        let motd = &listing["etc/motd"];
        assert_eq!((motd.kind, motd.mode, motd.mtime), (EntryType::Regular, 0o644, MOTD_MTIME));
        assert_eq!(motd.content, b"hello from the container\n");
        let secret = &listing["home/app/secret"];
        assert_eq!((secret.mode, secret.uid, secret.gid), (0o600, 1000, 1000));
        assert_eq!(listing[&long].content, b"deep");
        assert_eq!(listing["etc"].kind, EntryType::Directory);
        assert_eq!(listing["etc"].mtime, ETC_MTIME);
        let tool = &listing["usr/bin/tool"];
        assert_eq!((tool.kind, tool.link.as_deref()), (EntryType::Symlink, Some(Path::new("../lib/tool.real"))));
        assert_eq!(listing["data/hardlink"].kind, EntryType::Regular);
        let original = &listing["data/original"];
        assert_eq!((original.kind, original.link.as_deref()), (EntryType::Link, Some(Path::new("data/hardlink"))));
    }

    #[test]
    fn a_missing_upper_dir_is_an_error_naming_it() {
        let err = write_diff(Path::new("/nonexistent/lazarus/upper"), Vec::new()).expect_err("missing");
        assert!(err.to_string().contains("/nonexistent/lazarus/upper"), "{err}");
    }

    // --- apply_diff ----------------------------------------------------------------------------

    #[test]
    #[ignore = "needs root (mknod, chown); run with --include-ignored"]
    fn a_diff_applied_to_a_fresh_rootfs_reproduces_the_container() {
        require_root();
        let upper = tempfile::tempdir().expect("tempdir");
        build_upper(upper.path());
        let mut tar = Vec::new();
        let summary = write_diff(upper.path(), &mut tar).expect("write_diff");

        // The new container's rootfs: the image's files, some of which the container had deleted.
        let rootfs = tempfile::tempdir().expect("tempdir");
        let root = rootfs.path();
        fs::create_dir_all(root.join("opt/pkg/bin")).expect("mkdir");
        fs::write(root.join("opt/pkg/bin/run"), "image").expect("write");
        fs::create_dir_all(root.join("etc")).expect("mkdir");
        fs::write(root.join("etc/removed"), "image").expect("write");
        fs::write(root.join("etc/motd"), "image motd").expect("write");
        fs::write(root.join("etc/untouched"), "image").expect("write");

        let applied = apply_diff(tar.as_slice(), &summary.deleted, root).expect("apply_diff");
        assert_eq!(applied.removed, 2);
        assert_eq!(applied.entries, summary.files);
        assert_eq!(applied.bytes, summary.bytes);

        assert!(!root.join("etc/removed").exists());
        assert!(!root.join("opt").exists());
        assert_eq!(fs::read(root.join("etc/untouched")).expect("read"), b"image");
        assert_eq!(fs::read(root.join("etc/motd")).expect("read"), b"hello from the container\n");
        let motd = fs::symlink_metadata(root.join("etc/motd")).expect("stat");
        assert_eq!((motd.mode() & 0o7777, motd.mtime()), (0o644, MOTD_MTIME as i64));
        let secret = fs::symlink_metadata(root.join("home/app/secret")).expect("stat");
        assert_eq!((secret.mode() & 0o7777, secret.uid(), secret.gid()), (0o600, 1000, 1000));
        assert_eq!(fs::read(root.join("home/app/secret")).expect("read"), b"s3cr3t");
        assert_eq!(fs::read(root.join(long_path())).expect("read"), b"deep");
        assert_eq!(fs::read_link(root.join("usr/bin/tool")).expect("readlink"), Path::new("../lib/tool.real"));
        assert_eq!(fs::read_link(root.join("etc/localtime")).expect("readlink"), Path::new("/usr/share/zoneinfo/UTC"));
        let hardlink = fs::metadata(root.join("data/hardlink")).expect("stat");
        let original = fs::metadata(root.join("data/original")).expect("stat");
        assert_eq!(hardlink.ino(), original.ino());
        assert_eq!(fs::read(root.join("data/original")).expect("read"), b"shared");
        assert_eq!(fs::read_dir(root.join("empty")).expect("read_dir").count(), 0);
        // Directory times survive the files written into them afterwards.
        assert_eq!(fs::metadata(root.join("etc")).expect("stat").mtime(), ETC_MTIME as i64);
        assert_eq!(
            fs::metadata(root.join("etc")).expect("stat").mode() & 0o7777,
            fs::metadata(upper.path().join("etc")).expect("stat").mode() & 0o7777
        );
        // Skipped special files were never archived.
        for skipped in ["run/pipe", "run/socket", "dev/null"] {
            assert!(fs::symlink_metadata(root.join(skipped)).is_err(), "{skipped}");
        }
    }

    /// A rootfs next to a directory that must stay untouched, holding one file.
    struct Playground {
        _base: tempfile::TempDir,
        rootfs: PathBuf,
        outside: PathBuf,
    }

    impl Playground {
        fn new() -> Self {
            let base = tempfile::tempdir().expect("tempdir");
            let rootfs = base.path().join("rootfs");
            let outside = base.path().join("outside");
            fs::create_dir(&rootfs).expect("mkdir");
            fs::create_dir(&outside).expect("mkdir");
            fs::write(outside.join("secret"), "host secret").expect("write");
            Playground { _base: base, rootfs, outside }
        }

        /// Applies `tar` and `deleted`, expects a refusal mentioning `expected`, and checks that
        /// nothing outside the rootfs changed.
        fn refuses(&self, tar: &[u8], deleted: &[&str], expected: &str) -> RootfsDiffError {
            let deleted: Vec<String> = deleted.iter().map(|path| (*path).to_owned()).collect();
            let err = apply_diff(tar, &deleted, &self.rootfs).expect_err("hostile input must be refused");
            assert!(err.to_string().contains(expected), "expected {expected:?} in: {err}");
            let mut names: Vec<_> = fs::read_dir(&self.outside)
                .expect("read_dir")
                .map(|entry| entry.expect("entry").file_name().into_string().expect("utf-8"))
                .collect();
            names.sort();
            assert_eq!(names, ["secret"], "something appeared outside the rootfs");
            let secret = fs::symlink_metadata(self.outside.join("secret")).expect("stat");
            assert_eq!(fs::read(self.outside.join("secret")).expect("read"), b"host secret");
            assert_eq!(secret.nlink(), 1, "the host file got hard-linked");
            assert_eq!(secret.mode() & 0o7777, 0o644);
            err
        }
    }

    /// Builds an archive entry by hand, bypassing the `tar` crate's own path checks.
    fn raw_entry(tar: &mut Builder<Vec<u8>>, kind: EntryType, path: &str, link: &str, content: &[u8]) {
        let mut header = Header::new_gnu();
        header.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        header.set_entry_type(kind);
        header.set_mode(0o777);
        // Owned by whoever runs the test: apply_diff chowns, which only root may do to others.
        header.set_uid(Uid::effective().as_raw().into());
        header.set_gid(Gid::effective().as_raw().into());
        header.set_mtime(0);
        header.set_size(content.len() as u64);
        if matches!(kind, EntryType::Block | EntryType::Char) {
            header.set_device_major(8).expect("major");
            header.set_device_minor(0).expect("minor");
        }
        header.set_cksum();
        tar.append(&header, content).expect("append");
    }

    fn archive(entries: &[(EntryType, &str, &str, &[u8])]) -> Vec<u8> {
        let mut tar = Builder::new(Vec::new());
        for (kind, path, link, content) in entries {
            raw_entry(&mut tar, *kind, path, link, content);
        }
        tar.into_inner().expect("finish")
    }

    #[test]
    fn refuses_absolute_and_dotdot_paths() {
        let playground = Playground::new();
        let absolute = format!("{}/pwned", playground.outside.display());
        let tar = archive(&[(EntryType::Regular, &absolute, "", b"x")]);
        playground.refuses(&tar, &[], &format!("archive entry {absolute} escapes the container rootfs"));

        for path in ["../outside/pwned", "etc/../../outside/pwned", "./../outside/pwned"] {
            let tar = archive(&[(EntryType::Regular, path, "", b"x")]);
            playground.refuses(&tar, &[], &format!("archive entry {path} escapes the container rootfs"));
        }
        let tar = archive(&[(EntryType::Directory, "../outside/newdir", "", b"")]);
        playground.refuses(&tar, &[], "archive entry ../outside/newdir escapes the container rootfs");
    }

    #[test]
    fn never_writes_through_a_symlink() {
        let playground = Playground::new();
        let outside = playground.outside.display().to_string();
        let tar =
            archive(&[(EntryType::Symlink, "escape", &outside, b""), (EntryType::Regular, "escape/pwned", "", b"x")]);
        playground.refuses(&tar, &[], "archive entry escape/pwned goes through the symlink escape");
        // The symlink itself is harmless inside the container, and was created.
        assert_eq!(fs::read_link(playground.rootfs.join("escape")).expect("readlink"), playground.outside);

        let tar =
            archive(&[(EntryType::Symlink, "up", "..", b""), (EntryType::Directory, "up/outside/newdir", "", b"")]);
        playground.refuses(&tar, &[], "archive entry up/outside/newdir goes through the symlink up");

        // A symlink already in the rootfs, even pointing inside it, is not followed either.
        fs::create_dir(playground.rootfs.join("real")).expect("mkdir");
        symlink("real", playground.rootfs.join("alias")).expect("symlink");
        let tar = archive(&[(EntryType::Regular, "alias/file", "", b"x")]);
        playground.refuses(&tar, &[], "archive entry alias/file goes through the symlink alias");
        assert!(!playground.rootfs.join("real/file").exists());
    }

    #[test]
    #[ignore = "needs root (mknod, chown); run with --include-ignored"]
    fn replaces_a_symlink_in_the_way_instead_of_following_it() {
        require_root();
        let playground = Playground::new();
        fs::create_dir(playground.rootfs.join("etc")).expect("mkdir");
        symlink(playground.outside.join("secret"), playground.rootfs.join("etc/passwd")).expect("symlink");
        symlink(&playground.outside, playground.rootfs.join("lib")).expect("symlink");
        let tar = archive(&[
            (EntryType::Regular, "etc/passwd", "", b"root:x:0:0::/root:/bin/sh\n"),
            (EntryType::Directory, "lib", "", b""),
            (EntryType::Regular, "lib/libc.so", "", b"elf"),
        ]);
        apply_diff(tar.as_slice(), &[], &playground.rootfs).expect("apply_diff");
        let passwd = fs::symlink_metadata(playground.rootfs.join("etc/passwd")).expect("stat");
        assert!(passwd.file_type().is_file());
        assert!(fs::symlink_metadata(playground.rootfs.join("lib")).expect("stat").is_dir());
        assert_eq!(fs::read(playground.rootfs.join("lib/libc.so")).expect("read"), b"elf");
        assert_eq!(fs::read(playground.outside.join("secret")).expect("read"), b"host secret");
        assert!(!playground.outside.join("libc.so").exists());
    }

    #[test]
    fn refuses_device_nodes_and_fifos() {
        let playground = Playground::new();
        let tar = archive(&[(EntryType::Block, "dev/sda", "", b"")]);
        playground.refuses(&tar, &[], "archive entry dev/sda is a block device node");
        let tar = archive(&[(EntryType::Char, "dev/mem", "", b"")]);
        playground.refuses(&tar, &[], "archive entry dev/mem is a character device node");
        let tar = archive(&[(EntryType::Fifo, "run/fifo", "", b"")]);
        playground.refuses(&tar, &[], "archive entry run/fifo is a fifo");
        assert!(fs::read_dir(&playground.rootfs).expect("read_dir").next().is_none());
    }

    #[test]
    fn refuses_hard_links_that_leave_the_rootfs() {
        let playground = Playground::new();
        let tar = archive(&[(EntryType::Link, "shadow", "/etc/shadow", b"")]);
        playground.refuses(&tar, &[], "archive entry shadow is a hard link to /etc/shadow, which escapes");
        let tar = archive(&[(EntryType::Link, "stolen", "../outside/secret", b"")]);
        playground.refuses(&tar, &[], "archive entry stolen is a hard link to ../outside/secret, which escapes");
        let outside = playground.outside.display().to_string();
        let tar = archive(&[
            (EntryType::Symlink, "escape", &outside, b""),
            (EntryType::Link, "stolen", "escape/secret", b""),
        ]);
        playground.refuses(
            &tar,
            &[],
            "archive entry stolen is a hard link to escape/secret, which goes through the symlink",
        );
        let tar = archive(&[(EntryType::Link, "dangling", "not/there", b"")]);
        playground.refuses(&tar, &[], "archive entry dangling is a hard link to not/there, which does not exist");
        assert!(fs::symlink_metadata(playground.rootfs.join("stolen")).is_err());
        assert!(fs::symlink_metadata(playground.rootfs.join("shadow")).is_err());
    }

    #[test]
    fn refuses_deletions_outside_the_rootfs() {
        let playground = Playground::new();
        let empty = archive(&[]);
        for (path, expected) in [
            ("../outside/secret", "deleted.files entry ../outside/secret is not an absolute path"),
            ("outside/secret", "deleted.files entry outside/secret is not an absolute path"),
            ("/../outside/secret", "deleted.files entry /../outside/secret escapes the container rootfs"),
            ("/etc/../../outside/secret", "escapes the container rootfs"),
            ("/", "deleted.files entry / names the container's root directory"),
        ] {
            playground.refuses(&empty, &[path], expected);
        }
        symlink(&playground.outside, playground.rootfs.join("escape")).expect("symlink");
        playground.refuses(
            &empty,
            &["/escape/secret"],
            "deleted.files entry /escape/secret resolves through the symlink /escape",
        );

        // A symlink named by the list is removed itself, not what it points to.
        let summary =
            apply_diff(empty.as_slice(), &["/escape".to_owned(), "/never/existed".to_owned()], &playground.rootfs)
                .expect("apply_diff");
        assert_eq!(summary.removed, 1);
        assert!(fs::symlink_metadata(playground.rootfs.join("escape")).is_err());
        assert_eq!(fs::read(playground.outside.join("secret")).expect("read"), b"host secret");
    }

    // --- a real overlay ------------------------------------------------------------------------

    /// Unmounts on drop, so that a failing test does not leave the mount behind.
    struct Unmount(PathBuf);

    impl Drop for Unmount {
        fn drop(&mut self) {
            if let Err(err) = umount2(&self.0, MntFlags::MNT_DETACH) {
                eprintln!("unmounting {}: {err}", self.0.display());
            }
        }
    }

    #[test]
    #[ignore = "needs root and overlayfs (mount); run with --include-ignored"]
    fn sees_the_changes_made_through_a_real_overlay_mount() {
        require_root();
        let base = tempfile::tempdir().expect("tempdir");
        let [lower, upper, work, merged] = ["lower", "up per", "work", "merged"].map(|name| base.path().join(name));
        for dir in [&lower, &upper, &work, &merged] {
            fs::create_dir(dir).expect("mkdir");
        }
        fs::write(lower.join("keep.txt"), "from the image").expect("write");
        fs::write(lower.join("gone.txt"), "from the image").expect("write");
        fs::create_dir(lower.join("olddir")).expect("mkdir");
        fs::write(lower.join("olddir/inner.txt"), "from the image").expect("write");
        fs::create_dir(lower.join("cache")).expect("mkdir");
        fs::write(lower.join("cache/old.txt"), "from the image").expect("write");

        let options = format!("lowerdir={},upperdir={},workdir={}", lower.display(), upper.display(), work.display());
        mount(Some("overlay"), &merged, Some("overlay"), MsFlags::empty(), Some(options.as_str()))
            .expect("mounting overlayfs");
        let unmount = Unmount(merged.clone());

        fs::write(merged.join("new.txt"), "made by the container").expect("write");
        fs::write(merged.join("keep.txt"), "changed by the container").expect("write");
        fs::remove_file(merged.join("gone.txt")).expect("rm");
        fs::remove_dir_all(merged.join("olddir")).expect("rm -r");
        // Deleted and made again: opaque in the upper dir.
        fs::remove_dir_all(merged.join("cache")).expect("rm -r");
        fs::create_dir(merged.join("cache")).expect("mkdir");
        fs::write(merged.join("cache/new.txt"), "made by the container").expect("write");

        // The kernel's own mountinfo, escapes included, leads to the upper dir.
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        assert_eq!(upperdir_of_mount(&mountinfo, &merged, "/proc/self/mountinfo").expect("upperdir"), upper);

        let mut tar = Vec::new();
        let summary = write_diff(&upper, &mut tar).expect("write_diff");
        drop(unmount);
        assert_eq!(summary.deleted, ["/cache", "/gone.txt", "/olddir"]);
        assert_eq!(summary.opaque_dirs, ["/cache"]);
        let listing = list_tar(&tar);
        assert_eq!(
            listing.keys().map(String::as_str).collect::<Vec<_>>(),
            ["cache", "cache/new.txt", "keep.txt", "new.txt"]
        );
        assert_eq!(listing["keep.txt"].content, b"changed by the container");

        // Restored onto the image: the image's cache/old.txt does not come back.
        let rootfs = base.path().join("rootfs");
        fs::create_dir(&rootfs).expect("mkdir");
        for entry in ["keep.txt", "gone.txt", "olddir/inner.txt", "cache/old.txt"] {
            fs::create_dir_all(rootfs.join(entry).parent().expect("parent")).expect("mkdir");
            fs::write(rootfs.join(entry), "from the image").expect("write");
        }
        apply_diff(tar.as_slice(), &summary.deleted, &rootfs).expect("apply_diff");
        assert!(!rootfs.join("cache/old.txt").exists(), "an opaque directory hides the image's entries");
        assert_eq!(fs::read_to_string(rootfs.join("cache/new.txt")).expect("read"), "made by the container");
        assert!(!rootfs.join("gone.txt").exists() && !rootfs.join("olddir").exists());
    }

    #[test]
    #[ignore = "needs root (trusted.* xattrs); run with --include-ignored"]
    fn an_opaque_directory_is_a_deletion_before_its_new_contents() {
        require_root();
        let upper = tempfile::tempdir().expect("tempdir");
        for dir in ["cache", "notopaque", "other"] {
            fs::create_dir(upper.path().join(dir)).expect("mkdir");
            fs::write(upper.path().join(dir).join("new"), "n").expect("write");
        }
        xattr::set(upper.path().join("cache"), OPAQUE_XATTR, b"y").expect("set trusted.overlay.opaque");
        // Only "y" is opaque (kernels use other values for other markers).
        xattr::set(upper.path().join("notopaque"), OPAQUE_XATTR, b"x").expect("set trusted.overlay.opaque");
        let mut tar = Vec::new();
        let summary = write_diff(upper.path(), &mut tar).expect("write_diff");
        assert_eq!(summary.opaque_dirs, ["/cache"]);
        assert_eq!(summary.deleted, ["/cache"]);
        assert!(list_tar(&tar).contains_key("cache/new"));

        let rootfs = tempfile::tempdir().expect("rootfs");
        for dir in ["cache", "notopaque"] {
            fs::create_dir(rootfs.path().join(dir)).expect("mkdir");
            fs::write(rootfs.path().join(dir).join("old"), "o").expect("write");
        }
        apply_diff(tar.as_slice(), &summary.deleted, rootfs.path()).expect("apply_diff");
        assert!(!rootfs.path().join("cache/old").exists(), "the opaque dir's image entries are gone");
        assert!(rootfs.path().join("cache/new").exists());
        assert!(rootfs.path().join("notopaque/old").exists(), "a plain dir keeps the image's entries");
    }

    #[test]
    fn a_directory_without_the_xattr_is_not_opaque() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = File::open(dir.path()).expect("open dir");
        assert!(!is_opaque(&file).expect("read xattrs"));
    }

    #[test]
    #[ignore = "needs root (the directory normalize_layer makes for an opaque whiteout is owned by root); run with --include-ignored"]
    fn oci_layer_whiteouts_become_deletions() {
        require_root();
        let mut builder = Builder::new(Vec::new());
        for (path, kind, data) in [
            ("bin/", EntryType::Directory, &b""[..]),
            ("bin/.wh.vi", EntryType::Regular, &b""[..]),
            ("data.txt", EntryType::Regular, &b"stateful\n"[..]),
            ("var/cache/.wh..wh..opq", EntryType::Regular, &b""[..]),
            ("var/cache/new", EntryType::Regular, &b"n"[..]),
        ] {
            let mut header = Header::new_gnu();
            header.set_entry_type(kind);
            header.set_mode(0o644);
            header.set_size(data.len() as u64);
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(0);
            builder.append_data(&mut header, path, data).expect("append");
        }
        let plain = builder.into_inner().expect("tar");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&plain).expect("gzip");
        let gz = gz.finish().expect("gzip");
        let mut out = Vec::new();
        let deleted = normalize_layer(&gz[..], &mut out).expect("normalize");
        assert_eq!(deleted, vec!["/bin/vi".to_owned(), "/var/cache".to_owned()]);
        let names: Vec<String> = Archive::new(&out[..])
            .entries()
            .expect("entries")
            .map(|e| e.expect("entry").path().expect("path").to_string_lossy().trim_end_matches('/').to_owned())
            .collect();
        assert_eq!(names, vec!["bin", "data.txt", "var/cache", "var/cache/new"]);

        let rootfs = tempfile::tempdir().expect("rootfs");
        std::fs::create_dir_all(rootfs.path().join("bin")).expect("bin");
        std::fs::write(rootfs.path().join("bin/vi"), "vi").expect("vi");
        std::fs::create_dir_all(rootfs.path().join("var/cache")).expect("cache");
        std::fs::write(rootfs.path().join("var/cache/old"), "old").expect("old");
        apply_diff(&out[..], &deleted, rootfs.path()).expect("apply");
        assert!(!rootfs.path().join("bin/vi").exists());
        assert!(!rootfs.path().join("var/cache/old").exists());
        assert_eq!(std::fs::read_to_string(rootfs.path().join("var/cache/new")).ok().as_deref(), Some("n"));
        assert_eq!(std::fs::read_to_string(rootfs.path().join("data.txt")).ok().as_deref(), Some("stateful\n"));
    }
}
