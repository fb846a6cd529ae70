//! Inside the cut: the files the container's processes hold open on its
//! volumes (bind mounts of the runtime spec), with their size and mtime, so a
//! restore can refuse volumes that no longer match
//! ([`lazarus_format::volumes`], checked in `restore::engine::volumes`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::fs::MetadataExt;

use super::*;
use lazarus_format::volumes::{self, Kind, OpenFile, Record, Volume};

/// A bind mount of the runtime spec that may hold a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct VolumeMount {
    /// Container path.
    pub(super) destination: String,
    /// Host path.
    pub(super) source: String,
}

/// The bind mounts of an OCI runtime spec, but for kubelet's per-pod files and
/// what is under `/proc`, `/sys` and `/dev` (`/dev/shm` among them).
pub(super) fn volume_mounts(spec: &serde_json::Value) -> Vec<VolumeMount> {
    let Some(mounts) = spec.get("mounts").and_then(serde_json::Value::as_array) else { return Vec::new() };
    mounts
        .iter()
        .filter_map(|m| {
            let text = |key: &str| m.get(key).and_then(serde_json::Value::as_str).unwrap_or("").to_owned();
            let options: Vec<&str> = m
                .get("options")
                .and_then(serde_json::Value::as_array)
                .map(|o| o.iter().filter_map(serde_json::Value::as_str).collect())
                .unwrap_or_default();
            let bind = text("type") == "bind" || options.iter().any(|o| *o == "bind" || *o == "rbind");
            let (destination, source) = (text("destination"), text("source"));
            (bind && destination.starts_with('/') && !volumes::skipped(&destination))
                .then_some(VolumeMount { destination, source })
        })
        .collect()
}

impl Checkpointer {
    /// Records the files the processes of the container (init `pid` and its
    /// descendants) hold open or have mapped on `mounts` into the tree's
    /// [`volumes::FILE`]. The container is frozen: nothing opens or grows meanwhile.
    pub(super) async fn record_open_files(
        &self,
        id: &str,
        pid: u32,
        mounts: &[VolumeMount],
        tree: &Path,
    ) -> Result<(), CheckpointError> {
        let (mounts, path, id) = (mounts.to_vec(), tree.join(volumes::FILE), id.to_owned());
        crate::blocking::run(move || {
            let started = std::time::Instant::now();
            let record = if mounts.is_empty() {
                Record { version: volumes::VERSION, volumes: Vec::new() }
            } else {
                open_files_record(Path::new("/proc"), pid, &mounts)
            };
            let files: usize = record.volumes.iter().map(|v| v.files.len()).sum();
            let elapsed_us = started.elapsed().as_micros() as u64;
            tracing::debug!(container_id = %id, volumes = record.volumes.len(), files, elapsed_us, "open files on volumes recorded");
            lazarus_format::fsutil::write_json_atomic(&path, &record).map_err(io("writing", &path))
        })
        .await
    }
}

/// The record of `pid`'s process tree under `proc` (normally `/proc`).
#[expect(clippy::disallowed_methods, reason = "runs on the blocking pool (record_open_files)")]
fn open_files_record(proc: &Path, pid: u32, mounts: &[VolumeMount]) -> Record {
    let destinations: Vec<&str> = mounts.iter().map(|m| m.destination.as_str()).collect();
    let mut found: BTreeMap<String, BTreeMap<String, OpenFile>> = BTreeMap::new();
    for process in process_tree(proc, pid) {
        let base = proc.join(process.to_string());
        for path in open_paths(&base) {
            if volumes::skipped(&path) {
                continue;
            }
            let Some((destination, relative)) = volumes::volume_of(&path, &destinations) else { continue };
            // Through the process's root: the container's view of the file.
            let Ok(meta) = std::fs::metadata(base.join("root").join(path.trim_start_matches('/'))) else {
                tracing::debug!(path = %path, "an open file on a volume cannot be stat'ed; not recorded");
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            let mtime_ns = meta.mtime().saturating_mul(1_000_000_000).saturating_add(meta.mtime_nsec());
            found
                .entry(destination.to_owned())
                .or_default()
                .insert(relative.clone(), OpenFile { path: relative, size: meta.len(), mtime_ns });
        }
    }
    let volumes = found
        .into_iter()
        .map(|(destination, files)| {
            let source =
                mounts.iter().find(|m| m.destination == destination).map(|m| m.source.clone()).unwrap_or_default();
            Volume { kind: Kind::of_source(&source), destination, source, files: files.into_values().collect() }
        })
        .collect();
    Record { version: volumes::VERSION, volumes }
}

/// `pid` and its descendants. `/proc/P/task/T/children` where the kernel has
/// it (`CONFIG_PROC_CHILDREN`), else the parent pids of every process.
fn process_tree(proc: &Path, pid: u32) -> Vec<u32> {
    let mut parents: Option<HashMap<u32, Vec<u32>>> = None;
    let mut seen = BTreeSet::from([pid]);
    let mut queue = vec![pid];
    while let Some(process) = queue.pop() {
        let children = children_of(proc, process).unwrap_or_else(|| {
            parents.get_or_insert_with(|| parent_map(proc)).get(&process).cloned().unwrap_or_default()
        });
        for child in children {
            if seen.insert(child) {
                queue.push(child);
            }
        }
    }
    seen.into_iter().collect()
}

/// The children of every thread of `pid`, or `None` if the kernel does not say.
#[expect(clippy::disallowed_methods, reason = "runs on the blocking pool (record_open_files)")]
fn children_of(proc: &Path, pid: u32) -> Option<Vec<u32>> {
    let tasks = std::fs::read_dir(proc.join(pid.to_string()).join("task")).ok()?;
    let mut children = Vec::new();
    for task in tasks.flatten() {
        let text = std::fs::read_to_string(task.path().join("children")).ok()?;
        children.extend(text.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
    }
    Some(children)
}

/// Parent pid → child pids, from every `/proc/N/stat`.
#[expect(clippy::disallowed_methods, reason = "runs on the blocking pool (record_open_files)")]
fn parent_map(proc: &Path) -> HashMap<u32, Vec<u32>> {
    let mut map: HashMap<u32, Vec<u32>> = HashMap::new();
    let Ok(entries) = std::fs::read_dir(proc) else { return map };
    for entry in entries.flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // `pid (comm) state ppid …`; comm may hold spaces and parentheses.
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            map.entry(ppid).or_default().push(child);
        }
    }
    map
}

/// Absolute paths of the open files (`fd/*`) and file-backed mappings (`maps`)
/// of the process at `base` (`/proc/P`), as the process sees them; deleted
/// files left out.
#[expect(clippy::disallowed_methods, reason = "runs on the blocking pool (record_open_files)")]
fn open_paths(base: &Path) -> BTreeSet<String> {
    let mut paths = BTreeSet::new();
    if let Ok(fds) = std::fs::read_dir(base.join("fd")) {
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path())
                && let Some(target) = target.to_str()
            {
                paths.insert(target.to_owned());
            }
        }
    }
    if let Ok(maps) = std::fs::read_to_string(base.join("maps")) {
        paths.extend(maps.lines().filter_map(mapped_path).map(str::to_owned));
    }
    paths.retain(|p| p.starts_with('/') && !p.ends_with(" (deleted)"));
    paths
}

/// The path column of a `/proc/P/maps` line (`addr perms offset dev inode path`).
fn mapped_path(line: &str) -> Option<&str> {
    let mut rest = line;
    for _ in 0..5 {
        rest = rest.trim_start();
        rest = &rest[rest.find(char::is_whitespace)?..];
    }
    let path = rest.trim_start();
    path.starts_with('/').then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_mounts_but_kubelet_files_and_pseudo_file_systems() {
        let spec = serde_json::json!({"mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev/shm", "type": "bind", "source": "/run/sandbox/shm", "options": ["rbind"]},
            {"destination": "/etc/hosts", "type": "bind", "source": "/var/lib/sb/hosts", "options": ["rbind"]},
            {"destination": "/data", "type": "bind", "source": "/srv/data", "options": ["rbind", "rw"]},
            {"destination": "/logs", "source": "/var/lib/kubelet/pods/u/volumes/kubernetes.io~empty-dir/l", "options": ["bind"]},
            {"destination": "/tmpfs", "type": "tmpfs", "source": "tmpfs"},
        ]});
        assert_eq!(
            volume_mounts(&spec),
            [
                VolumeMount { destination: "/data".into(), source: "/srv/data".into() },
                VolumeMount {
                    destination: "/logs".into(),
                    source: "/var/lib/kubelet/pods/u/volumes/kubernetes.io~empty-dir/l".into()
                },
            ]
        );
        assert!(volume_mounts(&serde_json::Value::Null).is_empty());
    }

    #[test]
    fn the_path_column_of_maps() {
        assert_eq!(
            mapped_path("7f1c2a000000-7f1c2a021000 rw-s 00000000 08:01 1234       /data/my file.db"),
            Some("/data/my file.db")
        );
        assert_eq!(mapped_path("7ffd1000-7ffd2000 rw-p 00000000 00:00 0          [stack]"), None);
        assert_eq!(mapped_path("7ffd1000-7ffd2000 rw-p 00000000 00:00 0"), None);
    }

    /// This test's own process holds a file open on a "volume" (a temporary
    /// directory mounted nowhere: the process's root is the host's `/`).
    #[test]
    fn an_open_file_of_this_process_is_recorded_with_its_size_and_mtime() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        let mut file = std::fs::File::create(&path).expect("create");
        std::io::Write::write_all(&mut file, b"12345").expect("write");
        let meta = std::fs::metadata(&path).expect("stat");
        let destination = dir.path().to_str().expect("utf-8").to_owned();
        let mounts = [VolumeMount { destination: destination.clone(), source: destination.clone() }];
        let record = open_files_record(Path::new("/proc"), std::process::id(), &mounts);
        let volume = record.volumes.iter().find(|v| v.destination == destination).expect("the volume is recorded");
        assert_eq!(volume.kind, Kind::HostPath);
        assert_eq!(
            volume.files,
            [OpenFile { path: "log".into(), size: 5, mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec() }]
        );
        drop(file);
        assert!(process_tree(Path::new("/proc"), std::process::id()).contains(&std::process::id()));
    }
}
