//! The restore plan: the contract between lazarus and the `lazarus-runc`
//! wrapper, one directory per container id under the restore dir — what lazarus
//! leaves for the wrapper, and what the wrapper leaves behind.
//!
//! ```text
//! <restore_dir>/<container-id>/
//!   plan.json     written by lazarus:
//!                 {"version":1,"source":"…","checkpoint_dir":"/abs/tree","tcp_close":true}
//!   origin.json   which checkpoint (key, digest): lazarus's own bookkeeping    (lazarus)
//!   tree/         the unpacked checkpoint (checkpoint/, rootfs-diff.tar, …)   (lazarus)
//!   criu.conf     `tcp-close` for CRIU, when the plan asks for it          (wrapper)
//!   work/         CRIU's work directory, with its restore.log              (wrapper)
//!   result.json   {"ok":…,"error":"…","restore_log":[…],"finished":"…"}   (wrapper)
//!   restored      marker: the container was restored, `runc start` is a no-op (wrapper)
//!   wrapper.log   one line per create/start call the wrapper saw           (wrapper)
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where lazarus tells the wrapper its restore dir is (set in containerd's runtime options).
pub const RESTORE_DIR_ENV: &str = "LAZARUS_RESTORE_DIR";
/// The restore directory when [`RESTORE_DIR_ENV`] is not set.
pub const DEFAULT_RESTORE_DIR: &str = "/var/lib/lazarus/restore";
/// lazarus's record of which checkpoint a plan came from.
pub const ORIGIN_FILE: &str = "origin.json";
/// The unpacked checkpoint tree.
pub const TREE_DIR: &str = "tree";
/// The plan format version this wrapper understands.
pub const VERSION: u64 = 1;
/// The plan.
pub const PLAN_FILE: &str = "plan.json";
/// The outcome of the restore.
pub const RESULT_FILE: &str = "result.json";
/// Marker: restored, the shim's `runc start` must not reach runc.
pub const RESTORED_MARKER: &str = "restored";
/// The wrapper's log.
pub const WRAPPER_LOG: &str = "wrapper.log";
/// The CRIU configuration file the wrapper writes.
pub const CRIU_CONF: &str = "criu.conf";
/// CRIU's work directory.
pub const WORK_DIR: &str = "work";
/// CRIU's log in the work directory (runc's name for it).
pub const RESTORE_LOG: &str = "restore.log";

/// Why a plan cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// Unreadable.
    #[error("reading the restore plan {path}: {source}")]
    Read {
        /// The plan file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Not the JSON expected.
    #[error("the restore plan {path} is malformed: {source}")]
    Malformed {
        /// The plan file.
        path: PathBuf,
        /// The error.
        source: serde_json::Error,
    },
    /// A version this wrapper does not know.
    #[error("the restore plan {path} has version {version}; this lazarus-runc understands version {VERSION} only")]
    Version {
        /// The plan file.
        path: PathBuf,
        /// Its version.
        version: u64,
    },
    /// `checkpoint_dir` is relative.
    #[error("the restore plan {path} names a relative checkpoint_dir {dir}")]
    RelativeCheckpointDir {
        /// The plan file.
        path: PathBuf,
        /// The directory.
        dir: PathBuf,
    },
}

/// `plan.json`. Unknown fields are ignored. lazarus writes it, the wrapper
/// reads it: one definition for both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Format version: [`VERSION`].
    pub version: u64,
    /// A human-readable reference to the checkpoint, for messages.
    pub source: String,
    /// Absolute path of the unpacked checkpoint tree (`checkpoint/`, `rootfs-diff.tar`,
    /// `deleted.files`).
    pub checkpoint_dir: PathBuf,
    /// Close the checkpoint's established TCP connections on restore (the pod has a new IP);
    /// listening sockets come back either way. Defaults to `true` when absent.
    #[serde(default = "default_tcp_close")]
    pub tcp_close: bool,
    /// Destinations (`/dev/shm`, an `emptyDir`'s path) whose pod data is not put back: another
    /// container of the pod, restored from the same pod cut, already put the same instant's
    /// content there and has run since (writing it again would undo what it wrote).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skip_pod_data: Vec<String>,
}

fn default_tcp_close() -> bool {
    true
}

impl Plan {
    /// Parses a plan's text; `path` names it in errors. The version is checked before the rest,
    /// so a future format fails on its version rather than on its shape.
    pub fn parse(text: &[u8], path: &Path) -> Result<Plan, PlanError> {
        #[derive(Deserialize)]
        struct Versioned {
            version: u64,
        }
        let malformed = |source| PlanError::Malformed { path: path.to_owned(), source };
        let versioned: Versioned = serde_json::from_slice(text).map_err(malformed)?;
        if versioned.version != VERSION {
            return Err(PlanError::Version { path: path.to_owned(), version: versioned.version });
        }
        let plan: Plan = serde_json::from_slice(text).map_err(malformed)?;
        if !plan.checkpoint_dir.is_absolute() {
            return Err(PlanError::RelativeCheckpointDir { path: path.to_owned(), dir: plan.checkpoint_dir });
        }
        Ok(plan)
    }

    /// Reads `<plan_dir>/plan.json`.
    pub fn read(plan_dir: &Path) -> Result<Plan, PlanError> {
        let path = plan_dir.join(PLAN_FILE);
        let text = std::fs::read(&path).map_err(|source| PlanError::Read { path: path.clone(), source })?;
        Plan::parse(&text, &path)
    }
}

/// `result.json`. `error` is empty and `restore_log` may be empty on success.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreResult {
    /// Whether the container was restored.
    pub ok: bool,
    /// The error message, empty on success.
    pub error: String,
    /// The relevant lines of CRIU's restore.log.
    pub restore_log: Vec<String>,
    /// When the wrapper finished (RFC 3339, UTC).
    pub finished: String,
}

/// `origin.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// `namespace/pod/container` of the container being restored.
    pub key: String,
    /// Identity of the checkpoint (manifest digest, or the archive path).
    pub checkpoint: String,
    /// Human-readable reference.
    pub source: String,
}

/// The plan directory of `container_id`.
pub fn plan_dir(restore_dir: &Path, container_id: &str) -> PathBuf {
    restore_dir.join(container_id)
}

/// Whether `id` can name a plan directory below the restore dir — the one rule
/// for lazarus and the wrapper: runc's own `[A-Za-z0-9_+.-]+` (containerd's ids
/// are 64 hex digits), at most 255 bytes (a file name), not `.` or `..`.
pub fn valid_container_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 255
        && id != "."
        && id != ".."
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'+' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Plan, String> {
        Plan::parse(text.as_bytes(), Path::new("/r/x/plan.json")).map_err(|e| e.to_string())
    }

    #[test]
    fn reads_the_contract_and_ignores_unknown_fields() {
        let plan = parse(
            r#"{"version": 1, "source": "local:ns/pod/c:20261122T235133.919Z@sha256:5d87",
                "checkpoint_dir": "/var/lib/lazarus/restore/x/tree", "tcp_close": false, "future": {"a": 1}}"#,
        )
        .expect("plan");
        assert_eq!(
            plan,
            Plan {
                version: 1,
                source: "local:ns/pod/c:20261122T235133.919Z@sha256:5d87".into(),
                checkpoint_dir: "/var/lib/lazarus/restore/x/tree".into(),
                tcp_close: false,
                skip_pod_data: Vec::new(),
            }
        );
        let plan = parse(r#"{"version":1,"source":"s","checkpoint_dir":"/t"}"#).expect("plan");
        assert!(plan.tcp_close, "tcp_close defaults to true");
    }

    #[test]
    fn refuses_other_versions_and_malformed_plans() {
        assert_eq!(
            parse(r#"{"version":2,"whatever":true}"#),
            Err("the restore plan /r/x/plan.json has version 2; this lazarus-runc understands version 1 only".into())
        );
        assert!(
            parse(r#"{"source":"s","checkpoint_dir":"/t"}"#)
                .is_err_and(|e| e.starts_with("the restore plan /r/x/plan.json is malformed: missing field `version`"))
        );
        assert!(parse(r#"{"version":1,"source":"s"}"#).is_err_and(|e| e.contains("missing field `checkpoint_dir`")));
        assert!(parse("not json").is_err_and(|e| e.contains("is malformed")));
        assert_eq!(
            parse(r#"{"version":1,"source":"s","checkpoint_dir":"tree"}"#),
            Err("the restore plan /r/x/plan.json names a relative checkpoint_dir tree".into())
        );
    }

    #[test]
    fn container_ids_cannot_leave_the_restore_dir() {
        assert!(valid_container_id("0123abcd"));
        assert!(valid_container_id("my-container_1.2+x"));
        assert!(valid_container_id(&"f".repeat(64)));
        for bad in ["", ".", "..", "../etc", "a/b", "a\0b", "a b", "ünï"] {
            assert!(!valid_container_id(bad), "{bad:?}");
        }
        assert!(!valid_container_id(&"a".repeat(256)));
    }

    #[test]
    fn the_plan_lazarus_writes_is_the_plan_the_wrapper_reads() {
        let plan = Plan {
            version: VERSION,
            source: "s".into(),
            checkpoint_dir: "/r/x/tree".into(),
            tcp_close: true,
            skip_pod_data: vec!["/dev/shm".into()],
        };
        let text = serde_json::to_vec(&plan).unwrap_or_default();
        let read = Plan::parse(&text, Path::new("/r/x/plan.json")).expect("the wrapper reads it");
        assert_eq!(read, plan);
    }

    #[test]
    fn result_json_shape() {
        let result = RestoreResult {
            ok: false,
            error: "e".into(),
            restore_log: vec!["l".into()],
            finished: "2026-01-01T00:00:00.000000Z".into(),
        };
        assert_eq!(
            serde_json::to_string(&result).expect("json"),
            r#"{"ok":false,"error":"e","restore_log":["l"],"finished":"2026-01-01T00:00:00.000000Z"}"#
        );
    }
}
