//! Unpacking a checkpoint tree (an image layer or a kubelet archive) into a
//! fresh directory, safely.
//!
//! A checkpoint holds regular files and directories only. Anything else
//! (symlinks, hard links, device nodes, fifos) and any path that would land
//! outside the destination (absolute paths, `..`) is refused with an error
//! naming the entry; nothing is written outside the destination. The input's
//! compression (zstd, gzip, none) is detected from its first bytes, and its
//! sha256 can be checked in the same pass.

use std::io::{BufReader, Read};
use std::path::{Component, Path, PathBuf};

use crate::compression::decompressing;
use crate::digest::HashingReader;

/// Why a checkpoint tree could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Reading or writing failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// An entry is not allowed in a checkpoint.
    #[error("archive entry {entry:?}: {reason}")]
    Refused {
        /// The entry's path as written in the archive.
        entry: String,
        /// Why.
        reason: &'static str,
    },
    /// The bytes read do not have the digest they were named by.
    #[error("digest mismatch: expected {expected}, the data has {actual}")]
    DigestMismatch {
        /// The digest it should have.
        expected: String,
        /// The digest it has.
        actual: String,
    },
}

/// What was unpacked.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Unpacked {
    /// Regular files written.
    pub files: u64,
    /// Bytes of file content written.
    pub bytes: u64,
}

/// Unpacks the (possibly compressed) tar read from `input` into `dest`, which
/// must be an empty directory created by the caller. When `expected_digest`
/// (`sha256:<hex>`) is given, the raw input is hashed on the way and a
/// mismatch is an error (the caller then discards `dest`).
pub fn unpack(
    input: impl Read,
    dest: &Path,
    expected_digest: Option<&str>,
    source_name: &Path,
) -> Result<Unpacked, ArchiveError> {
    let io = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| ArchiveError::Io { action, path, source }
    };
    let mut hashing = BufReader::with_capacity(1 << 20, HashingReader::new(input));
    let decoded = decompressing(&mut hashing).map_err(io("decompressing", source_name))?;
    let extracted = extract(tar::Archive::new(decoded), dest, source_name);
    // Read what follows the tar's end (padding) — or, after an error, the
    // rest — so the digest covers everything: a damaged blob is reported as
    // the digest mismatch it is, not as whatever the decoder tripped over.
    let drained = std::io::copy(&mut hashing, &mut std::io::sink());
    if let Some(expected) = expected_digest {
        let actual = hashing.into_inner().into_digester().oci();
        if drained.is_ok() && actual != expected {
            return Err(ArchiveError::DigestMismatch { expected: expected.to_owned(), actual });
        }
    }
    let unpacked = extracted?;
    drained.map_err(io("reading", source_name))?;
    Ok(unpacked)
}

fn extract(mut archive: tar::Archive<impl Read>, dest: &Path, source_name: &Path) -> Result<Unpacked, ArchiveError> {
    let io = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| ArchiveError::Io { action, path, source }
    };
    let mut unpacked = Unpacked::default();
    for entry in archive.entries().map_err(io("reading", source_name))? {
        let mut entry = entry.map_err(io("reading", source_name))?;
        let raw_path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let relative = safe_relative(&raw_path)?;
        let Some(relative) = relative else { continue };
        let target = dest.join(&relative);
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            std::fs::create_dir_all(&target).map_err(io("creating", &target))?;
        } else if kind.is_file() || kind == tar::EntryType::Continuous {
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
            }
            if std::fs::symlink_metadata(&target).is_ok() {
                return Err(ArchiveError::Refused { entry: raw_path, reason: "appears twice in the archive" });
            }
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&target)
                .map_err(io("creating", &target))?;
            let n = std::io::copy(&mut entry, &mut file).map_err(io("writing", &target))?;
            unpacked.files += 1;
            unpacked.bytes += n;
        } else if matches!(kind, tar::EntryType::XGlobalHeader | tar::EntryType::XHeader) {
            continue;
        } else {
            let reason = match kind {
                tar::EntryType::Symlink => "symlinks are not allowed in a checkpoint",
                tar::EntryType::Link => "hard links are not allowed in a checkpoint",
                tar::EntryType::Char | tar::EntryType::Block => "device nodes are not allowed in a checkpoint",
                tar::EntryType::Fifo => "fifos are not allowed in a checkpoint",
                _ => "unsupported entry type",
            };
            return Err(ArchiveError::Refused { entry: raw_path, reason });
        }
    }
    Ok(unpacked)
}

/// The entry path made relative and checked; `None` for the archive root (`./`).
fn safe_relative(raw: &str) -> Result<Option<PathBuf>, ArchiveError> {
    let mut out = PathBuf::new();
    for component in Path::new(raw).components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err(ArchiveError::Refused { entry: raw.to_owned(), reason: "absolute path" });
            }
            Component::ParentDir => {
                return Err(ArchiveError::Refused { entry: raw.to_owned(), reason: "path leaves the directory (..)" });
            }
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, kind, data) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            // set_path refuses `..`; write the raw name like a hostile archive would.
            let name = &mut header.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            if *kind == tar::EntryType::Symlink {
                header.set_link_name("/etc/passwd").ok();
            }
            header.set_cksum();
            builder.append(&header, *data).ok();
        }
        builder.into_inner().unwrap_or_default()
    }

    fn sha(bytes: &[u8]) -> String {
        format!("sha256:{}", crate::digest::sha256_hex(bytes))
    }

    #[test]
    fn unpacks_plain_zstd_and_gzip_and_checks_the_digest() {
        let tar = tar_with(&[
            ("./", tar::EntryType::Directory, b""),
            ("checkpoint/", tar::EntryType::Directory, b""),
            ("checkpoint/pages-1.img", tar::EntryType::Regular, b"pages"),
            ("config.dump", tar::EntryType::Regular, b"{}"),
        ]);
        let zst = zstd::encode_all(&tar[..], 1).unwrap_or_default();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar).ok();
        let gz = gz.finish().unwrap_or_default();
        for input in [&tar, &zst, &gz] {
            let dir = tempfile::tempdir().expect("tempdir");
            let got = unpack(&input[..], dir.path(), Some(&sha(input)), Path::new("t")).expect("unpack");
            assert_eq!(got, Unpacked { files: 2, bytes: 7 });
            assert_eq!(std::fs::read(dir.path().join("checkpoint/pages-1.img")).ok(), Some(b"pages".to_vec()));
        }
    }

    #[test]
    fn a_flipped_byte_is_a_digest_mismatch() {
        let tar = tar_with(&[("config.dump", tar::EntryType::Regular, b"{}")]);
        let mut zst = zstd::encode_all(&tar[..], 1).unwrap_or_default();
        let expected = sha(&zst);
        let last = zst.len() - 1;
        zst[last] ^= 0x01;
        let dir = tempfile::tempdir().expect("tempdir");
        let err = unpack(&zst[..], dir.path(), Some(&expected), Path::new("t")).expect_err("corrupt");
        assert!(matches!(err, ArchiveError::DigestMismatch { .. } | ArchiveError::Io { .. }), "unexpected error {err}");
    }

    #[test]
    fn hostile_entries_are_refused_and_nothing_lands_outside() {
        let outside = tempfile::tempdir().expect("tempdir");
        let dest = outside.path().join("dest");
        for (path, kind, reason) in [
            ("../escape", tar::EntryType::Regular, "(..)"),
            ("/abs", tar::EntryType::Regular, "absolute"),
            ("link", tar::EntryType::Symlink, "symlinks"),
            ("dev", tar::EntryType::Char, "device"),
            ("fifo", tar::EntryType::Fifo, "fifos"),
        ] {
            std::fs::create_dir_all(&dest).ok();
            let tar = tar_with(&[(path, kind, b"x")]);
            let err = unpack(&tar[..], &dest, None, Path::new("t")).expect_err(path);
            assert!(err.to_string().contains(reason), "{path}: {err}");
            std::fs::remove_dir_all(&dest).ok();
        }
        assert!(!outside.path().join("escape").exists());
    }

    #[test]
    fn duplicate_entries_are_refused() {
        let tar = tar_with(&[("a", tar::EntryType::Regular, b"1"), ("a", tar::EntryType::Regular, b"2")]);
        let dir = tempfile::tempdir().expect("tempdir");
        let err = unpack(&tar[..], dir.path(), None, Path::new("t")).expect_err("dup");
        assert!(err.to_string().contains("twice"), "{err}");
    }
}
