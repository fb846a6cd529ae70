//! What a checkpoint carries besides CRIU's images: spec, CRI status,
//! metadata, CRIU's log, and the image annotations.

use super::target::Target;
use super::*;
use std::collections::BTreeMap;
use std::time::SystemTime;

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
    // checkpointctl's `ContainerConfig` (what containerd 2.x and CRI-O write
    // and read), then lazarus's own keys (`pod`, `engine`, `host`: Go's
    // decoder ignores them). Times are RFC 3339 (Go's `time.Time`);
    // `restoredTime` is Go's zero time, as containerd marshals it.
    let config = json!({
        "id": id,
        "name": name,
        "rootfsImage": image,
        "rootfsImageRef": target.status.image_ref,
        "rootfsImageName": image,
        "runtime": "runc",
        "createdTime": lazarus_format::timefmt::rfc3339_seconds_from_nanos(target.status.created_at),
        "checkpointedTime": created,
        "restoredTime": GO_ZERO_TIME,
        "restored": false,
        "pod": {"name": metadata.name, "namespace": metadata.namespace, "uid": metadata.uid},
        "engine": {"name": "lazarus", "version": env!("CARGO_PKG_VERSION"), "runtime": target.runtime_version},
        "host": {"arch": ann::go_arch(), "kernel": host.kernel, "criu": host.criu},
    });
    // The CRI `ContainerStatus` exactly as containerd marshals it (containerd's
    // CRI restore unmarshals it into that struct).
    let status = super::cri_json::container_status(&target.status);
    let spec = spec_dump(&target.spec, &target.status.annotations);
    for (name, value) in [(files::CONFIG_DUMP, &config), (files::SPEC_DUMP, &spec), (files::STATUS_DUMP, &status)] {
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

/// Go's zero `time.Time` in JSON (`encoding/json` writes it for a time never set).
const GO_ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// CRI-O's restore reads the container's CRI annotations from this spec
/// annotation (a JSON object as a string); containerd's spec has no such key.
const CRIO_ANNOTATIONS: &str = "io.kubernetes.cri-o.Annotations";

/// `spec.dump`: the container's OCI runtime spec as the runtime reported it,
/// plus, when it is not there, CRI-O's annotation holding the container's CRI
/// annotations (without it CRI-O refuses the restore; other readers ignore it).
fn spec_dump(
    spec: &serde_json::Value,
    cri_annotations: &std::collections::HashMap<String, String>,
) -> serde_json::Value {
    let mut spec = spec.clone();
    let Some(object) = spec.as_object_mut() else { return spec };
    let annotations = object.entry("annotations").or_insert_with(|| json!({}));
    if let Some(annotations) = annotations.as_object_mut()
        && !annotations.contains_key(CRIO_ANNOTATIONS)
    {
        let sorted: BTreeMap<&String, &String> = cri_annotations.iter().collect();
        let text = serde_json::to_string(&sorted).unwrap_or_else(|_| "{}".to_owned());
        annotations.insert(CRIO_ANNOTATIONS.to_owned(), text.into());
    }
    spec
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
    fn spec_dump_carries_cri_os_annotation_and_keeps_the_spec() {
        let spec = json!({"ociVersion": "1.2.0", "process": {"args": ["sh"]}, "annotations": {"a": "b"}});
        let cri = [("io.kubernetes.container.hash".to_owned(), "1234".to_owned())].into();
        let dumped = spec_dump(&spec, &cri);
        assert_eq!(dumped["process"], spec["process"]);
        assert_eq!(dumped["annotations"]["a"], "b");
        let inner: BTreeMap<String, String> =
            serde_json::from_str(dumped["annotations"][CRIO_ANNOTATIONS].as_str().expect("a string")).expect("json");
        assert_eq!(inner.get("io.kubernetes.container.hash").map(String::as_str), Some("1234"));
        // A spec without annotations gets the map; one that has the key keeps it.
        assert!(spec_dump(&json!({"ociVersion": "1.2.0"}), &cri)["annotations"][CRIO_ANNOTATIONS].is_string());
        let crio = json!({"annotations": {CRIO_ANNOTATIONS: "{\"x\":\"y\"}"}});
        assert_eq!(spec_dump(&crio, &cri), crio);
    }

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
