//! Small file-system helpers with one copy each: atomic writes, JSON files,
//! executables on `PATH`, sizes in messages.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Writes `path` atomically: a temporary file next to it, fsynced, renamed
/// over it; `mode` sets its permissions first. On failure the temporary file
/// is removed and `path` is untouched.
pub fn write_atomic(path: &Path, content: &[u8], mode: Option<u32>) -> io::Result<()> {
    let name = path.file_name().map(OsStr::to_string_lossy).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.lazarus-{}.tmp", std::process::id()));
    let written = (|| {
        fs::write(&tmp, content)?;
        if let Some(mode) = mode {
            fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
        }
        File::open(&tmp)?.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// Writes `value` as pretty JSON to `path` atomically.
pub fn write_json_atomic(path: &Path, value: &impl Serialize) -> io::Result<()> {
    write_atomic(path, &serde_json::to_vec_pretty(value).map_err(io::Error::other)?, None)
}

/// Reads a JSON file; `None` when it is missing or not the JSON expected.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Option<T> {
    fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok())
}

/// The first executable regular file `name` in the absolute directories of
/// `path` (a `PATH` value) that `accept` takes.
pub fn find_executable(name: &str, path: &OsStr, accept: impl Fn(&Path) -> bool) -> Option<PathBuf> {
    std::env::split_paths(path).filter(|dir| dir.is_absolute()).map(|dir| dir.join(name)).find(|candidate| {
        fs::metadata(candidate).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
            && accept(candidate)
    })
}

/// `work` applied to every item on up to `workers` threads (blocking file work — hashing,
/// linking, compressing — one file per thread), the results in the order of `items`. A worker
/// that panics yields `panicked()` for every item it took.
pub fn on_workers<T: Sync, R: Send>(
    items: &[T],
    workers: usize,
    work: impl Fn(&T) -> R + Sync,
    panicked: impl Fn() -> R,
) -> Vec<R> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut done: Vec<(usize, R)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..items.len().min(workers.max(1)))
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(item) = items.get(i) else { break };
                        done.push((i, work(item)));
                    }
                    done
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
    });
    done.sort_by_key(|(i, _)| *i);
    let mut out = Vec::with_capacity(items.len());
    let mut results = done.into_iter().peekable();
    for i in 0..items.len() {
        match results.next_if(|(j, _)| *j == i) {
            Some((_, result)) => out.push(result),
            None => out.push(panicked()),
        }
    }
    out
}

/// `5.0 MiB`, `512 B`: sizes in messages.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_on_threads_keeps_the_order_and_names_a_panic() {
        let items: Vec<u32> = (0..20).collect();
        assert_eq!(on_workers(&items, 2, |n| n * 2, || u32::MAX), items.iter().map(|n| n * 2).collect::<Vec<_>>());
        let out = on_workers(&[1, 2, 3], 1, |n| if *n == 2 { panic!("boom") } else { *n }, || 0);
        assert_eq!(out, [0, 0, 0], "every item of the worker that panicked");
        assert!(on_workers(&[] as &[u32], 2, |n| *n, || 0).is_empty());
    }

    #[test]
    fn sizes_read_like_sizes() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(5 << 20), "5.0 MiB");
        assert_eq!(human_size(3 << 29), "1.5 GiB");
    }

    #[test]
    fn atomic_writes_replace_and_leave_no_temporary_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("plan.json");
        write_json_atomic(&path, &serde_json::json!({"a": 1})).expect("first");
        write_atomic(&path, b"{\"a\":2}", Some(0o600)).expect("second");
        assert_eq!(read_json::<serde_json::Value>(&path), Some(serde_json::json!({"a": 2})));
        assert_eq!(fs::metadata(&path).expect("meta").permissions().mode() & 0o777, 0o600);
        let names: Vec<_> = fs::read_dir(dir.path()).expect("ls").map(|e| e.expect("entry").file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("plan.json")]);
        assert!(write_atomic(&dir.path().join("missing/x"), b"", None).is_err());
        assert_eq!(read_json::<serde_json::Value>(&dir.path().join("none")), None);
    }

    #[test]
    fn path_search_takes_the_first_accepted_executable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        for d in [&a, &b] {
            fs::create_dir(d).expect("mkdir");
        }
        fs::write(a.join("tool"), b"").expect("write"); // not executable
        fs::write(b.join("tool"), b"").expect("write");
        fs::set_permissions(b.join("tool"), fs::Permissions::from_mode(0o755)).expect("chmod");
        let path =
            std::env::join_paths(["relative", a.to_str().expect("utf-8"), b.to_str().expect("utf-8")]).expect("join");
        assert_eq!(find_executable("tool", &path, |_| true), Some(b.join("tool")));
        assert_eq!(find_executable("tool", &path, |p| p != b.join("tool")), None);
        assert_eq!(find_executable("none", &path, |_| true), None);
    }
}
