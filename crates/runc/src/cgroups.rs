//! The restored container's view of its cgroup v1 hierarchies.
//!
//! On cgroup v1 without a cgroup namespace, runc gives a container one bind
//! mount per hierarchy: `/sys/fs/cgroup/<controller>` inside is the
//! container's own cgroup directory of that hierarchy. `runc restore` passes
//! CRIU these bind mounts as external mounts too, but computes their sources
//! from `/proc/self/cgroup` of the runc process (`getCgroupMounts` in runc's
//! libcontainer: right for `runc init`, which already sits in the container's
//! cgroups, wrong for `runc restore`, which sits in the shim's). So a restored
//! container saw the hierarchy roots and containerd's memory cgroup: memory
//! and CPU limits read inside were not its own (JVMs, Go's runtime and
//! thread pools size themselves from them).
//!
//! CRIU reads `ext-mount-map KEY:VALUE` lines of the configuration file runc
//! hands it (`org.criu.config`) after the RPC options, and its lookup takes
//! the entry added last, so these lines override runc's: the key is the
//! mount's destination (runc's dump names external mounts by destination),
//! the value the container's cgroup directory of that hierarchy, which runc
//! creates (moving CRIU into it) before CRIU mounts anything.

use std::path::{Component, Path, PathBuf};

use serde_json::Value;

/// Why the container's cgroup directories cannot be named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CgroupError {
    /// `linux.cgroupsPath` in a form the wrapper does not know.
    #[error(
        "the bundle's linux.cgroupsPath {0:?} is neither an absolute cgroupfs path nor systemd's slice:prefix:name"
    )]
    UnknownPath(String),
}

/// `ext-mount-map` lines for CRIU's configuration file: one per cgroup v1
/// hierarchy in `mountinfo` (the wrapper's `/proc/self/mountinfo`), for each
/// cgroup mount of `spec`. Empty when there is nothing to correct: no cgroup
/// mount, a cgroup namespace (CRIU restores real mounts then), no v1
/// hierarchy (cgroup v2 only), no `cgroupsPath`.
pub fn ext_mount_lines(spec: &Value, mountinfo: &str) -> Result<Vec<String>, CgroupError> {
    let has_cgroupns = spec["linux"]["namespaces"]
        .as_array()
        .is_some_and(|namespaces| namespaces.iter().any(|ns| ns["type"].as_str() == Some("cgroup")));
    let destinations: Vec<&str> = spec["mounts"]
        .as_array()
        .map(|mounts| {
            mounts
                .iter()
                .filter(|m| m["type"].as_str() == Some("cgroup"))
                .filter_map(|m| m["destination"].as_str())
                .collect()
        })
        .unwrap_or_default();
    let Some(cgroups_path) = spec["linux"]["cgroupsPath"].as_str().filter(|p| !p.is_empty()) else {
        return Ok(Vec::new());
    };
    if has_cgroupns || destinations.is_empty() {
        return Ok(Vec::new());
    }
    let hierarchies = v1_hierarchies(mountinfo);
    if hierarchies.is_empty() {
        return Ok(Vec::new());
    }
    let path = container_cgroup(cgroups_path)?;
    let mut lines = Vec::new();
    for destination in destinations {
        for hierarchy in &hierarchies {
            let Some(base) = hierarchy.mountpoint.file_name() else { continue };
            // The container's directory as this mount shows it: below the mount's root.
            let Ok(relative) = path.strip_prefix(&hierarchy.root) else { continue };
            let source = hierarchy.mountpoint.join(relative);
            let key = Path::new(destination).join(base);
            lines.push(format!("ext-mount-map {}:{}", key.display(), source.display()));
        }
    }
    Ok(lines)
}

/// A cgroup v1 hierarchy as mounted in the wrapper's mount namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hierarchy {
    /// `major:minor` of the hierarchy's superblock (one per hierarchy).
    device: String,
    /// The cgroup directory at the mount's root.
    root: PathBuf,
    /// Where it is mounted.
    mountpoint: PathBuf,
}

/// The `cgroup` (v1) hierarchies of a mountinfo text, each by its first
/// mount (later mounts of the same superblock are bind mounts elsewhere).
fn v1_hierarchies(mountinfo: &str) -> Vec<Hierarchy> {
    let mut found: Vec<Hierarchy> = Vec::new();
    for line in mountinfo.lines() {
        // id parent major:minor root mountpoint options [optional…] - fstype source superoptions
        let Some((before, after)) = line.split_once(" - ") else { continue };
        if after.split(' ').next() != Some("cgroup") {
            continue;
        }
        let fields: Vec<&str> = before.split(' ').collect();
        let (Some(device), Some(root), Some(mountpoint)) = (fields.get(2), fields.get(3), fields.get(4)) else {
            continue;
        };
        if !found.iter().any(|h| h.device == *device) {
            found.push(Hierarchy {
                device: (*device).to_owned(),
                root: PathBuf::from(unescape(root)),
                mountpoint: PathBuf::from(unescape(mountpoint)),
            });
        }
    }
    found
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        if let (b'\\', Some(digits)) = (bytes[i], octal) {
            let value = digits.iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The container's cgroup directory (from a hierarchy's root) that runc
/// makes of `linux.cgroupsPath`: an absolute cgroupfs path as it is, or
/// systemd's `slice:prefix:name` as systemd lays it out
/// (`a-b.slice:cri-containerd:ID` → `/a.slice/a-b.slice/cri-containerd-ID.scope`).
fn container_cgroup(cgroups_path: &str) -> Result<PathBuf, CgroupError> {
    let unknown = || CgroupError::UnknownPath(cgroups_path.to_owned());
    if cgroups_path.starts_with('/') {
        let path = PathBuf::from(cgroups_path);
        if path.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(unknown());
        }
        return Ok(path);
    }
    let parts: Vec<&str> = cgroups_path.split(':').collect();
    let [slice, prefix, name] = parts.as_slice() else { return Err(unknown()) };
    if name.is_empty() || name.contains('/') || prefix.contains('/') {
        return Err(unknown());
    }
    let mut path = expand_slice(if slice.is_empty() { "system.slice" } else { slice }).ok_or_else(unknown)?;
    let unit = if name.ends_with(".slice") {
        (*name).to_owned()
    } else if prefix.is_empty() {
        format!("{name}.scope")
    } else {
        format!("{prefix}-{name}.scope")
    };
    path.push(unit);
    Ok(path)
}

/// systemd's slice nesting: `a-b-c.slice` is `/a.slice/a-b.slice/a-b-c.slice`; `-.slice` is the root.
fn expand_slice(slice: &str) -> Option<PathBuf> {
    let stem = slice.strip_suffix(".slice")?;
    if stem == "-" {
        return Some(PathBuf::from("/"));
    }
    if stem.is_empty() || stem.contains('/') || stem.starts_with('-') || stem.ends_with('-') || stem.contains("--") {
        return None;
    }
    let mut path = PathBuf::from("/");
    let mut prefix = String::new();
    for part in stem.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push(format!("{prefix}.slice"));
    }
    Some(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// This machine's layout: v1 hierarchies under /sys/fs/cgroup plus cgroup2 at unified.
    const MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
77 60 0:32 /kubepods /var/lib/x/memory rw,relatime - cgroup cgroup rw,memory
";

    fn spec(cgroups_path: &str, namespaces: &[&str]) -> Value {
        json!({
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup"},
            ],
            "linux": {
                "cgroupsPath": cgroups_path,
                "namespaces": namespaces.iter().map(|t| json!({"type": t})).collect::<Vec<_>>(),
            },
        })
    }

    #[test]
    fn each_v1_hierarchy_maps_to_the_containers_own_directory() {
        let lines = ext_mount_lines(&spec("/kubepods/pod1/abc", &["pid", "mount"]), MOUNTINFO).expect("lines");
        assert_eq!(
            lines,
            [
                "ext-mount-map /sys/fs/cgroup/cpu:/sys/fs/cgroup/cpu/kubepods/pod1/abc",
                "ext-mount-map /sys/fs/cgroup/memory:/sys/fs/cgroup/memory/kubepods/pod1/abc",
                "ext-mount-map /sys/fs/cgroup/systemd:/sys/fs/cgroup/systemd/kubepods/pod1/abc",
            ]
        );
    }

    #[test]
    fn nothing_to_correct_with_a_cgroup_namespace_v2_only_or_no_path() {
        assert!(ext_mount_lines(&spec("/k/abc", &["cgroup"]), MOUNTINFO).expect("ns").is_empty());
        let v2_only = "41 31 0:38 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert!(ext_mount_lines(&spec("/k/abc", &[]), v2_only).expect("v2").is_empty());
        assert!(ext_mount_lines(&spec("", &[]), MOUNTINFO).expect("no path").is_empty());
        let no_cgroup_mount = json!({"mounts": [], "linux": {"cgroupsPath": "/k/abc"}});
        assert!(ext_mount_lines(&no_cgroup_mount, MOUNTINFO).expect("no mount").is_empty());
    }

    #[test]
    fn a_mount_whose_root_is_not_above_the_container_is_skipped() {
        let mountinfo = "35 31 0:32 /other /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert!(ext_mount_lines(&spec("/kubepods/abc", &[]), mountinfo).expect("lines").is_empty());
        let nested = "35 31 0:32 /kubepods /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert_eq!(
            ext_mount_lines(&spec("/kubepods/abc", &[]), nested).expect("lines"),
            ["ext-mount-map /sys/fs/cgroup/memory:/sys/fs/cgroup/memory/abc"]
        );
    }

    #[test]
    fn systemd_paths_expand_as_systemd_lays_them_out() {
        assert_eq!(
            container_cgroup("kubepods-besteffort-pod12.slice:cri-containerd:abc").expect("systemd"),
            Path::new(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod12.slice/cri-containerd-abc.scope"
            )
        );
        assert_eq!(container_cgroup(":cri:abc").expect("default slice"), Path::new("/system.slice/cri-abc.scope"));
        assert_eq!(container_cgroup("-.slice::abc").expect("root"), Path::new("/abc.scope"));
        for bad in ["relative/path", "a:b", "/a/../b", "bad--x.slice:p:n", "x.slice:p:a/b"] {
            assert!(container_cgroup(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape(r"/mnt/with\040space"), "/mnt/with space");
        assert_eq!(unescape(r"/plain"), "/plain");
        assert_eq!(unescape(r"/odd\04"), r"/odd\04");
    }
}
