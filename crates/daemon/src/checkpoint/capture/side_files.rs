//! What a checkpoint carries besides CRIU's images: spec, CRI status,
//! metadata, CRIU's log, and the image annotations.

use super::target::Target;
use super::*;
use std::collections::BTreeMap;
use std::time::SystemTime;

use lazarus_proto::v1;
use serde_json::json;

/// Now as a `created` annotation and a time tag (formats in [`lazarus_format::timefmt`]).
pub(super) fn now_rfc3339() -> (String, String) {
    lazarus_format::timefmt::created_and_tag(SystemTime::now())
}

/// What a checkpoint records about the node it was taken on.
#[derive(Debug, Clone)]
pub(super) struct HostFacts {
    /// `uname -r`.
    pub(super) kernel: String,
    /// CRIU's version.
    pub(super) criu: String,
}

impl HostFacts {
    /// Reads them (a file in /proc and, once per process, `criu --version`):
    /// blocking, call through `blocking::run`.
    pub(super) fn read() -> HostFacts {
        HostFacts { kernel: kernel_release(), criu: criu_version() }
    }
}

/// Spec, CRI status, metadata and CRIU's log, written while the container
/// runs again. Blocking: call through `blocking::run`.
#[expect(clippy::disallowed_methods, reason = "runs on the blocking pool (Checkpointer::take)")]
pub(super) fn write_metadata_files(
    target: &Target,
    host: &HostFacts,
    tree: &Path,
    work: &Path,
    created: &str,
) -> Result<(), CheckpointError> {
    let id = &target.id;
    let metadata = target.pod.metadata.clone().unwrap_or_default();
    let name = target.status.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
    let image = target.status.image.as_ref().map(|i| i.image.clone()).unwrap_or_default();
    let config = json!({
        "id": id,
        "name": name,
        "rootfsImage": image,
        "rootfsImageRef": target.status.image_ref,
        "rootfsImageName": image,
        "runtime": "runc",
        "createdTime": lazarus_format::timefmt::rfc3339_seconds_from_nanos(target.status.created_at),
        "checkpointedTime": created,
        "restored": false,
        "pod": {"name": metadata.name, "namespace": metadata.namespace, "uid": metadata.uid},
        "engine": {"name": "lazarus", "version": env!("CARGO_PKG_VERSION"), "runtime": target.runtime_version},
        "host": {"arch": ann::go_arch(), "kernel": host.kernel, "criu": host.criu},
    });
    let status = json!({
        "id": id,
        "state": v1::ContainerState::try_from(target.status.state).map_or("unknown", |s| s.as_str_name()),
        "createdAt": target.status.created_at,
        "startedAt": target.status.started_at,
        "image": image,
        "imageRef": target.status.image_ref,
        "labels": target.status.labels,
        "annotations": target.status.annotations,
        "logPath": target.status.log_path,
        "podSandboxId": target.pod.id,
        "podAnnotations": target.pod.annotations,
    });
    for (name, value) in
        [(files::CONFIG_DUMP, &config), (files::SPEC_DUMP, &target.spec), (files::STATUS_DUMP, &status)]
    {
        let path = tree.join(name);
        let bytes = serde_json::to_vec_pretty(value).map_err(|e| io("encoding", &path)(e.into()))?;
        std::fs::write(&path, bytes).map_err(io("writing", &path))?;
    }
    for (from, to) in [
        (work.join(files::DUMP_LOG), tree.join(files::DUMP_LOG)),
        (work.join(files::STATS_DUMP), tree.join(files::STATS_DUMP)),
    ] {
        if from.exists() {
            std::fs::copy(&from, &to).map_err(io("copying", &from))?;
        }
    }
    Ok(())
}

/// The image annotations of a checkpoint.
pub(super) fn annotations(
    target: &Target,
    host: &HostFacts,
    container_name: &str,
    stats: Option<&lazarus_format::criu_stats::DumpStats>,
    dump_time: Duration,
) -> BTreeMap<String, String> {
    let metadata = target.pod.metadata.clone().unwrap_or_default();
    let image = target.status.image.as_ref().map(|i| i.image.clone()).unwrap_or_default();
    let mut a: BTreeMap<String, String> = [
        (ann::CRIU_CONTAINER_NAME, container_name.to_owned()),
        (ann::CRIO_CHECKPOINT_NAME, container_name.to_owned()),
        (ann::PODMAN_CHECKPOINT_NAME, container_name.to_owned()),
        (ann::CRIU_ENGINE_NAME, "lazarus".to_owned()),
        (ann::CRIU_ENGINE_VERSION, env!("CARGO_PKG_VERSION").to_owned()),
        (ann::CRIU_POD_NAME, metadata.name.clone()),
        (ann::CRIU_POD_NAMESPACE, metadata.namespace.clone()),
        (ann::LAZARUS_POD_UID, metadata.uid.clone()),
        (ann::CRIU_ROOTFS_IMAGE_NAME, image),
        (ann::CRIU_ROOTFS_IMAGE_ID, target.status.image_id.clone()),
        (ann::CRIU_ROOTFS_IMAGE_REF, target.status.image_ref.clone()),
        (ann::CRIU_RUNTIME_NAME, "runc".to_owned()),
        (ann::CRIU_VERSION, host.criu.clone()),
        (ann::CRIU_HOST_ARCH, ann::go_arch().to_owned()),
        (ann::LAZARUS_KERNEL, host.kernel.clone()),
        (ann::LAZARUS_CONTAINER_ID, target.id.clone()),
        ("lazarus.dev/dump-time-ms", dump_time.as_millis().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    if let Some(stats) = stats {
        a.insert("lazarus.dev/criu-freezing-time-us".into(), stats.freezing_time.to_string());
        a.insert("lazarus.dev/criu-frozen-time-us".into(), stats.frozen_time.to_string());
        a.insert("lazarus.dev/criu-pages-written".into(), stats.pages_written.to_string());
    }
    a
}

#[expect(clippy::disallowed_methods, reason = "called from HostFacts::read, on the blocking pool")]
fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_owned()).unwrap_or_default()
}

/// `criu --version`'s version, once per process.
#[expect(clippy::disallowed_methods, reason = "called from HostFacts::read, on the blocking pool")]
fn criu_version() -> String {
    static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    VERSION
        .get_or_init(|| {
            std::process::Command::new("criu")
                .arg("--version")
                .output()
                .ok()
                .and_then(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .find_map(|l| l.strip_prefix("Version:").map(|v| v.trim().to_owned()))
                })
                .unwrap_or_default()
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_sort_by_time() {
        let (created, tag) = now_rfc3339();
        assert_eq!(created.len(), "2026-11-22T23:35:05.123Z".len());
        assert!(tag.chars().all(|c| c.is_ascii_alphanumeric() || c == '.'), "{tag}");
        // Tags of different times, listed out of order, sort by time as strings: across a
        // millisecond, a second, a day, a month and a year boundary, and against 1970.
        let at =
            |ms: u64| lazarus_format::timefmt::created_and_tag(SystemTime::UNIX_EPOCH + Duration::from_millis(ms)).1;
        let times = [
            1_795_391_493_919, // 2026-11-22T23:51:33.919Z
            1_795_391_493_920,
            1_795_391_494_001,
            1_795_392_000_000, // the next day
            1_798_761_600_000, // 2027-01-01
            0,
            999,
            1_000,
        ];
        let mut tags: Vec<String> = times.iter().map(|&ms| at(ms)).collect();
        tags.sort();
        let mut by_time = times.to_vec();
        by_time.sort_unstable();
        assert_eq!(tags, by_time.iter().map(|&ms| at(ms)).collect::<Vec<_>>());
        assert_eq!(at(1_795_391_493_919), "20261122T235133.919Z");
        // A tag taken now sorts after one taken a second earlier.
        let earlier = lazarus_format::timefmt::created_and_tag(SystemTime::now() - Duration::from_secs(1)).1;
        assert!(earlier < tag, "{earlier} !< {tag}");
    }
}
