//! The restore plan: the contract between lazarus and the `lazarus-runc`
//! wrapper, one directory per container id under the restore dir.
//!
//! ```text
//! <restore_dir>/<container-id>/
//!   plan.json      {"version":1,"source":…,"checkpoint_dir":…,"tcp_close":true}
//!   origin.json    which checkpoint (key, digest) — lazarus's own bookkeeping
//!   tree/          the unpacked checkpoint (checkpoint/, rootfs-diff.tar, deleted.files, …)
//!   work/          CRIU's restore work dir and restore.log (written by the wrapper)
//!   result.json    the wrapper's outcome; `restored` marker on success
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::runc_wrapper::plan::{PLAN_FILE, Plan, RESULT_FILE, RestoreResult, VERSION};

/// lazarus's record of which checkpoint a plan came from.
pub const ORIGIN_FILE: &str = "origin.json";
/// The unpacked checkpoint tree.
pub const TREE_DIR: &str = "tree";
pub use crate::runc_wrapper::{DEFAULT_RESTORE_DIR, RESTORE_DIR_ENV};

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

/// Writes `value` as JSON to `path` atomically (temp + rename).
pub fn write_json(path: &Path, value: &impl Serialize) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?)?;
    std::fs::rename(&tmp, path)
}

/// Reads a JSON file.
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    std::fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok())
}

/// Whether a container id is safe as a directory name (containerd ids are 64 hex).
pub fn valid_container_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_lazarus_writes_is_the_plan_the_wrapper_reads() {
        let plan = Plan { version: VERSION, source: "s".into(), checkpoint_dir: "/r/x/tree".into(), tcp_close: true };
        let text = serde_json::to_vec(&plan).unwrap_or_default();
        let read = Plan::parse(&text, Path::new("/r/x/plan.json")).expect("the wrapper reads it");
        assert_eq!(read, plan);
    }

    #[test]
    fn container_ids_cannot_leave_the_restore_dir() {
        assert!(valid_container_id("0123abcd"));
        assert!(!valid_container_id("../etc"));
        assert!(!valid_container_id(""));
        assert!(!valid_container_id("a/b"));
    }
}
