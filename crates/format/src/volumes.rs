//! Files a container held open on its volumes at checkpoint time, and the one
//! comparison the restore pre-check makes against what a new pod's volumes hold.
//!
//! CRIU's images name every open file; on restore CRIU reopens them at the
//! offsets of the checkpoint. A volume (a bind mount from the host) is not part
//! of the checkpoint: on a new node it may be empty, or the old pod may have
//! gone on appending to a file after the checkpoint. CRIU then refuses with
//! raw text or, for an `O_APPEND` writer, restores silently with duplicated
//! records. lazarus records each such file's size and mtime inside the cut
//! ([`FILE`] in the checkpoint tree) and refuses a restore whose volumes do not
//! match ([`compare`]) before anything is created.

use serde::{Deserialize, Serialize};

/// The record's file in the checkpoint tree.
pub const FILE: &str = "volumes.json";
/// The record format version.
pub const VERSION: u64 = 1;

/// Container paths never recorded: kubelet's per-pod files differ in every
/// new pod, and the pseudo file systems are not volumes.
pub const SKIPPED_FILES: &[&str] = &["/etc/hosts", "/etc/hostname", "/etc/resolv.conf", "/dev/termination-log"];
/// Container paths (and everything below them) never recorded.
pub const SKIPPED_TREES: &[&str] = &["/proc", "/sys", "/dev"];

/// `volumes.json`: the volumes with files open at checkpoint time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// [`VERSION`].
    pub version: u64,
    /// Volumes with at least one open file, by destination.
    pub volumes: Vec<Volume>,
}

/// What kind of volume a bind mount is, from its host source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// `…/volumes/kubernetes.io~empty-dir/…`: pod-scoped scratch; its content
    /// travels with the checkpoint, so it is not checked here.
    EmptyDir,
    /// A volume plugin's mount (`kubernetes.io~csi`, `~nfs`, …): a persistent volume.
    Persistent,
    /// Any other host directory or file.
    HostPath,
}

impl Kind {
    /// The kind of a bind mount whose host source is `source`.
    pub fn of_source(source: &str) -> Kind {
        if source.contains("/volumes/kubernetes.io~empty-dir/") {
            Kind::EmptyDir
        } else if source.contains("/volumes/kubernetes.io~") {
            Kind::Persistent
        } else {
            Kind::HostPath
        }
    }

    /// The label used in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::EmptyDir => "emptyDir",
            Kind::Persistent => "persistent volume",
            Kind::HostPath => "hostPath",
        }
    }
}

/// One volume and the files open on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// Where it is mounted in the container.
    pub destination: String,
    /// Its host source at checkpoint time (for messages only: a new pod has its own).
    pub source: String,
    /// Its kind.
    pub kind: Kind,
    /// Its open files, sorted by path.
    pub files: Vec<OpenFile>,
}

/// One file open at checkpoint time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenFile {
    /// Relative to the volume's destination.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
}

/// What a file looks like now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
}

/// How a file differs from its record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Not there (or not a regular file).
    Missing,
    /// Longer than at checkpoint time: written to after it (CRIU would restore
    /// the old offset over the new records).
    Grew {
        /// Recorded size.
        from: u64,
        /// Size now.
        to: u64,
    },
    /// Shorter than at checkpoint time.
    Shrank {
        /// Recorded size.
        from: u64,
        /// Size now.
        to: u64,
    },
    /// Same size, but modified since.
    Modified,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::Missing => write!(f, "missing"),
            Change::Grew { from, to } => {
                write!(f, "grew from {from} to {to} bytes after the checkpoint (restoring would duplicate records)")
            }
            Change::Shrank { from, to } => write!(f, "shrank from {from} to {to} bytes"),
            Change::Modified => write!(f, "mtime changed (same size, modified after the checkpoint)"),
        }
    }
}

/// Whether the file `observed` (None: missing) still matches `recorded`.
/// `appends_ok`: the volume was opted into "appended files are fine", so a file
/// that only grew (its mtime changed with it) matches.
pub fn compare(recorded: &OpenFile, observed: Option<Observed>, appends_ok: bool) -> Option<Change> {
    let Some(now) = observed else { return Some(Change::Missing) };
    if now.size > recorded.size {
        return (!appends_ok).then_some(Change::Grew { from: recorded.size, to: now.size });
    }
    if now.size < recorded.size {
        return Some(Change::Shrank { from: recorded.size, to: now.size });
    }
    (now.mtime_ns != recorded.mtime_ns).then_some(Change::Modified)
}

/// Whether the pod annotation [`crate::annotations::VOLUME_APPENDS_OK`]
/// (`value`: comma-separated container paths, or `*`) covers the volume
/// mounted at `destination`.
pub fn appends_ok(value: Option<&str>, destination: &str) -> bool {
    let Some(value) = value else { return false };
    let destination = destination.trim_end_matches('/');
    value.split(',').map(|v| v.trim().trim_end_matches('/')).any(|v| v == "*" || (!v.is_empty() && v == destination))
}

/// Whether the container path `path` is never recorded: kubelet's per-pod
/// files, `/proc`, `/sys`, `/dev` (with `/dev/shm`) and what is below them.
pub fn skipped(path: &str) -> bool {
    let path = path.trim_end_matches('/');
    SKIPPED_FILES.contains(&path)
        || SKIPPED_TREES.iter().any(|t| path == *t || path.strip_prefix(t).is_some_and(|rest| rest.starts_with('/')))
}

/// The destination in `destinations` that `path` lies under (the deepest one),
/// and `path` relative to it. Paths are absolute container paths.
pub fn volume_of<'a>(path: &str, destinations: &[&'a str]) -> Option<(&'a str, String)> {
    destinations
        .iter()
        .filter_map(|d| {
            let base = d.trim_end_matches('/');
            let rest = path.strip_prefix(base)?.strip_prefix('/')?;
            (!rest.is_empty()).then(|| (*d, rest.to_owned()))
        })
        .max_by_key(|(d, _)| d.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(size: u64, mtime_ns: i64) -> OpenFile {
        OpenFile { path: "log".into(), size, mtime_ns }
    }

    #[test]
    fn unchanged_files_match_and_every_change_is_named() {
        let recorded = file(1200, 5);
        assert_eq!(compare(&recorded, Some(Observed { size: 1200, mtime_ns: 5 }), false), None);
        assert_eq!(compare(&recorded, None, false), Some(Change::Missing));
        assert_eq!(compare(&recorded, None, true), Some(Change::Missing));
        assert_eq!(
            compare(&recorded, Some(Observed { size: 1350, mtime_ns: 9 }), false),
            Some(Change::Grew { from: 1200, to: 1350 })
        );
        assert_eq!(
            compare(&recorded, Some(Observed { size: 10, mtime_ns: 9 }), true),
            Some(Change::Shrank { from: 1200, to: 10 })
        );
        assert_eq!(compare(&recorded, Some(Observed { size: 1200, mtime_ns: 6 }), false), Some(Change::Modified));
        assert_eq!(compare(&recorded, Some(Observed { size: 1200, mtime_ns: 6 }), true), Some(Change::Modified));
        assert_eq!(
            Change::Grew { from: 1200, to: 1350 }.to_string(),
            "grew from 1200 to 1350 bytes after the checkpoint (restoring would duplicate records)"
        );
    }

    #[test]
    fn appends_are_fine_only_where_the_annotation_says() {
        let recorded = file(1200, 5);
        assert_eq!(compare(&recorded, Some(Observed { size: 1350, mtime_ns: 9 }), true), None);
        assert!(appends_ok(Some("/data, /logs/"), "/logs"));
        assert!(appends_ok(Some("/data"), "/data/"));
        assert!(appends_ok(Some("*"), "/anything"));
        assert!(!appends_ok(Some("/data"), "/data2"));
        assert!(!appends_ok(Some(""), "/data"));
        assert!(!appends_ok(None, "/data"));
    }

    #[test]
    fn kinds_come_from_the_host_source() {
        let pod = "/var/lib/kubelet/pods/0c1d/volumes";
        assert_eq!(Kind::of_source(&format!("{pod}/kubernetes.io~empty-dir/scratch")), Kind::EmptyDir);
        assert_eq!(Kind::of_source(&format!("{pod}/kubernetes.io~csi/pvc-1/mount")), Kind::Persistent);
        assert_eq!(Kind::of_source(&format!("{pod}/kubernetes.io~nfs/share")), Kind::Persistent);
        assert_eq!(Kind::of_source("/srv/data"), Kind::HostPath);
    }

    #[test]
    fn kubelet_files_and_pseudo_file_systems_are_skipped() {
        for path in ["/etc/hosts", "/etc/hostname", "/etc/resolv.conf", "/dev/termination-log", "/dev/shm/x", "/proc"] {
            assert!(skipped(path), "{path}");
        }
        for path in ["/data/log", "/etc/hosts.d", "/devices", "/sysdata/x"] {
            assert!(!skipped(path), "{path}");
        }
    }

    #[test]
    fn files_belong_to_the_deepest_volume() {
        let destinations = ["/data", "/data/inner/", "/logs"];
        assert_eq!(volume_of("/data/a/b", &destinations), Some(("/data", "a/b".to_owned())));
        assert_eq!(volume_of("/data/inner/c", &destinations), Some(("/data/inner/", "c".to_owned())));
        assert_eq!(volume_of("/data", &destinations), None);
        assert_eq!(volume_of("/database/x", &destinations), None);
        assert_eq!(volume_of("/tmp/x", &destinations), None);
    }

    #[test]
    fn the_record_round_trips_as_json() {
        let record = Record {
            version: VERSION,
            volumes: vec![Volume {
                destination: "/data".into(),
                source: "/srv/data".into(),
                kind: Kind::HostPath,
                files: vec![file(3, 1_700_000_000_123_456_789)],
            }],
        };
        let text = serde_json::to_string(&record).expect("json");
        assert!(text.contains("\"kind\":\"host-path\""), "{text}");
        assert_eq!(serde_json::from_str::<Record>(&text).expect("parse"), record);
    }
}
