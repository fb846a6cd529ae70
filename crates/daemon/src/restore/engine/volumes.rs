//! The volume pre-check: before containerd is asked to create the container,
//! the files the checkpoint's processes held open on volumes
//! ([`lazarus_format::volumes`], recorded inside the cut) are looked up in the
//! new container's mounts. A missing mount or file, or one whose size or mtime
//! changed, refuses this attempt (the environment's fault: nothing is
//! remembered against the checkpoint, kubelet retries). emptyDir volumes are
//! not checked here: their content travels with the checkpoint.

use std::os::unix::fs::MetadataExt;
use std::path::Component;

use super::*;
use lazarus_format::volumes::{self, Kind, Observed, Record};

/// One volume that does not match the checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// Container path of the volume.
    pub destination: String,
    /// Its kind, from the checkpoint's record.
    pub kind: Kind,
    /// Its host path in the new container; `None`: not mounted at all.
    pub host_path: Option<String>,
    /// The files that differ and how (`log: missing`); empty when not mounted.
    pub files: Vec<String>,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = self.kind.as_str();
        match &self.host_path {
            None => write!(f, "volume {} ({kind}) is not mounted in the new container", self.destination),
            Some(host) => {
                write!(f, "volume {} ({kind}, host path {host}): {}", self.destination, self.files.join(", "))
            }
        }
    }
}

/// The volumes of `record` that do not match what the new container mounts
/// (`mounts`: container path → host path). Blocking (stats host files): call
/// through `blocking::run`.
#[expect(clippy::disallowed_methods, reason = "runs on the blocking pool (Restorer::check_volumes)")]
pub(super) fn mismatches(
    record: &Record,
    mounts: &[(String, String)],
    appends_ok_annotation: Option<&str>,
) -> Vec<Mismatch> {
    let root = node_root();
    let mut found = Vec::new();
    for volume in &record.volumes {
        if volume.kind == Kind::EmptyDir || volume.files.is_empty() {
            continue;
        }
        let destination = volume.destination.trim_end_matches('/');
        let host = mounts.iter().find(|(container, _)| container.trim_end_matches('/') == destination);
        let Some((_, host)) = host else {
            found.push(Mismatch {
                destination: volume.destination.clone(),
                kind: volume.kind,
                host_path: None,
                files: Vec::new(),
            });
            continue;
        };
        let appends_ok = volumes::appends_ok(appends_ok_annotation, &volume.destination);
        let files: Vec<String> = volume
            .files
            .iter()
            .filter_map(|file| {
                let relative = Path::new(&file.path);
                if relative.components().any(|c| !matches!(c, Component::Normal(_))) {
                    return Some(format!("{}: not a path below the volume", file.path));
                }
                let path = root.join(host.trim_start_matches('/')).join(relative);
                let observed = std::fs::metadata(path).ok().filter(|m| m.is_file()).map(|m| Observed {
                    size: m.len(),
                    mtime_ns: m.mtime().saturating_mul(1_000_000_000).saturating_add(m.mtime_nsec()),
                });
                volumes::compare(file, observed, appends_ok).map(|change| format!("file {} {change}", file.path))
            })
            .collect();
        if !files.is_empty() {
            found.push(Mismatch {
                destination: volume.destination.clone(),
                kind: volume.kind,
                host_path: Some(host.clone()),
                files,
            });
        }
    }
    found
}

/// Where host paths are looked up: containerd resolves a mount's `host_path`
/// in the node's mount namespace, and lazarus under systemd has a namespace of
/// its own (`PrivateTmp=`, `ProtectHome=` hide `/tmp` and `/home`). When ours
/// differs from init's, the node's view is `/proc/1/root`; else `/`.
#[expect(clippy::disallowed_methods, reason = "runs on the blocking pool (Restorer::check_volumes)")]
fn node_root() -> PathBuf {
    let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
    match (ns("1"), ns("self")) {
        (Some(init), Some(ours)) if init != ours && std::fs::metadata("/proc/1/root/").is_ok() => {
            PathBuf::from("/proc/1/root")
        }
        _ => PathBuf::from("/"),
    }
}

/// Reads the checkpoint tree's record; `Ok(None)` when it has none (older
/// checkpoints, kubelet archives). Blocking.
#[expect(clippy::disallowed_methods, reason = "runs on the blocking pool (Restorer::stage)")]
pub(super) fn read_record(tree: &Path) -> Result<Option<Record>, String> {
    let path = tree.join(volumes::FILE);
    match std::fs::read(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("reading {}: {e}", volumes::FILE)),
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| format!("{}: {e}", volumes::FILE)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lazarus_format::volumes::{OpenFile, Volume};

    fn record_of(dir: &Path, kind: Kind) -> Record {
        let meta = std::fs::metadata(dir.join("log")).expect("stat");
        Record {
            version: volumes::VERSION,
            volumes: vec![Volume {
                destination: "/data".into(),
                source: "/old/host/dir".into(),
                kind,
                files: vec![OpenFile {
                    path: "log".into(),
                    size: meta.len(),
                    mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
                }],
            }],
        }
    }

    #[test]
    fn volumes_are_compared_through_the_new_containers_mounts() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("log"), "1\n2\n").expect("write");
        let record = record_of(dir.path(), Kind::HostPath);
        let host = dir.path().display().to_string();
        let mounts = vec![("/data".to_owned(), host.clone())];
        assert_eq!(mismatches(&record, &mounts, None), []);

        // Not mounted at all.
        let missing = mismatches(&record, &[], None);
        assert_eq!(missing.len(), 1);
        assert_eq!(missing[0].to_string(), "volume /data (hostPath) is not mounted in the new container");

        // An empty directory in its place: the file is missing.
        let empty = tempfile::tempdir().expect("tempdir");
        let empty_host = empty.path().display().to_string();
        let found = mismatches(&record, &[("/data/".to_owned(), empty_host.clone())], None);
        assert_eq!(found[0].to_string(), format!("volume /data (hostPath, host path {empty_host}): file log missing"));

        // Appended to after the checkpoint: refused, unless the volume is opted in.
        std::fs::write(dir.path().join("log"), "1\n2\n3\n").expect("append");
        let grew = mismatches(&record, &mounts, None);
        assert!(
            grew[0]
                .to_string()
                .ends_with("file log grew from 4 to 6 bytes after the checkpoint (restoring would duplicate records)"),
            "{}",
            grew[0]
        );
        assert_eq!(mismatches(&record, &mounts, Some("/data")), []);
        assert_eq!(mismatches(&record, &mounts, Some("/other")).len(), 1);

        // emptyDir volumes travel with the checkpoint: not checked here.
        assert_eq!(mismatches(&record_of(dir.path(), Kind::EmptyDir), &[], None), []);
    }

    #[test]
    fn the_record_is_optional_but_must_parse() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(read_record(dir.path()), Ok(None));
        std::fs::write(dir.path().join(volumes::FILE), "{").expect("write");
        assert!(read_record(dir.path()).is_err());
    }
}
