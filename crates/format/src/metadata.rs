//! What a checkpoint says about where it came from, read from its files.
//!
//! One reader for every source: lazarus's own images, and the archives
//! kubelet's checkpoint API makes through containerd 2.x or CRI-O. They all
//! carry `config.dump` and `spec.dump` (checkpointctl's layout); lazarus's
//! images add pod fields and host facts to `config.dump`, and image
//! annotations. `status.dump` (containerd's and lazarus's) is the last
//! resort, in both layouts: the CRI `ContainerStatus` as containerd marshals
//! it (`image` an object, `image_ref`, `image_id`), written by lazarus since
//! its checkpoints restore with containerd's own CRI restore, and lazarus's
//! older one (`image` a string, `imageRef`), in stores from before.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::annotations::{self as ann, files};

/// Facts about a checkpoint that the restore checks use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckpointMetadata {
    /// Namespace of the pod the checkpoint was taken from, when recorded.
    pub namespace: Option<String>,
    /// Pod name, when recorded.
    pub pod: Option<String>,
    /// Container name, when recorded.
    pub container: Option<String>,
    /// Every identifier of the container image it ran (image ids, repo digests, names with digests).
    pub image_ids: Vec<String>,
    /// Image name, for messages.
    pub image_name: Option<String>,
    /// CPU architecture (Go naming), when recorded.
    pub arch: Option<String>,
}

fn non_empty(value: Option<&Value>) -> Option<String> {
    value.and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned)
}

impl CheckpointMetadata {
    /// Reads `config.dump` and `spec.dump` of the unpacked tree at `tree`,
    /// completed by the image's manifest `annotations` and config
    /// `architecture` when the checkpoint came as an image.
    pub fn read(tree: &Path, annotations: &BTreeMap<String, String>, image_arch: Option<&str>) -> Self {
        let load = |name: &str| -> Value {
            std::fs::read(tree.join(name)).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or(Value::Null)
        };
        let config = load(files::CONFIG_DUMP);
        let spec = load(files::SPEC_DUMP);
        let status = load(files::STATUS_DUMP);
        let label = |key: &str| non_empty(status.get("labels").and_then(|l| l.get(key)));
        // `image`: an `ImageSpec` object (CRI JSON), or a string (lazarus before).
        let status_image = non_empty(status.pointer("/image/image")).or_else(|| non_empty(status.get("image")));
        let spec_annotation = |key: &str| non_empty(spec.pointer(&format!("/annotations/{}", key.replace('/', "~1"))));
        let annotation = |key: &str| annotations.get(key).map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());

        let namespace = annotation(ann::CRIU_POD_NAMESPACE)
            .or_else(|| non_empty(config.pointer("/pod/namespace")))
            .or_else(|| spec_annotation("io.kubernetes.cri.sandbox-namespace"))
            .or_else(|| spec_annotation("io.kubernetes.pod.namespace"))
            .or_else(|| label("io.kubernetes.pod.namespace"));
        let pod = annotation(ann::CRIU_POD_NAME)
            .or_else(|| non_empty(config.pointer("/pod/name")))
            .or_else(|| spec_annotation("io.kubernetes.cri.sandbox-name"))
            .or_else(|| spec_annotation("io.kubernetes.pod.name"))
            .or_else(|| label("io.kubernetes.pod.name"));
        let container = annotation(ann::CRIU_CONTAINER_NAME)
            .or_else(|| spec_annotation("io.kubernetes.cri.container-name"))
            .or_else(|| spec_annotation("io.kubernetes.container.name"))
            .or_else(|| non_empty(config.get("name")))
            .or_else(|| non_empty(status.pointer("/metadata/name")))
            .or_else(|| label("io.kubernetes.container.name"));
        let mut image_ids: Vec<String> = [
            annotation(ann::CRIU_ROOTFS_IMAGE_ID),
            annotation(ann::CRIU_ROOTFS_IMAGE_REF),
            non_empty(config.get("rootfsImageRef")),
            non_empty(config.get("rootfsImageID")),
            non_empty(config.get("rootfsImage")),
            non_empty(status.get("image_ref")),
            non_empty(status.get("image_id")),
            non_empty(status.get("imageRef")),
        ]
        .into_iter()
        .flatten()
        .collect();
        image_ids.sort();
        image_ids.dedup();
        let image_name = annotation(ann::CRIU_ROOTFS_IMAGE_NAME)
            .or_else(|| non_empty(config.get("rootfsImageName")))
            .or_else(|| spec_annotation("io.kubernetes.cri.image-name"))
            .or_else(|| status_image.clone());
        let arch = annotation(ann::CRIU_HOST_ARCH)
            .or_else(|| non_empty(config.pointer("/host/arch")))
            .or_else(|| image_arch.map(str::to_owned).filter(|a| !a.is_empty()));
        CheckpointMetadata { namespace, pod, container, image_ids, image_name, arch }
    }
}

/// The digest part of an image identifier: `sha256:…` of `repo@sha256:…`,
/// `sha256:…` itself, or a bare 64-hex id; `None` for a name without digest.
pub fn image_digest(identifier: &str) -> Option<String> {
    let tail = identifier.rsplit_once('@').map_or(identifier, |(_, d)| d);
    if let Some(hex) = tail.strip_prefix("sha256:") {
        return is_hex64(hex).then(|| format!("sha256:{hex}"));
    }
    is_hex64(tail).then(|| format!("sha256:{tail}"))
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn digests_are_found_in_every_spelling() {
        assert_eq!(image_digest(&format!("sha256:{D}")), Some(format!("sha256:{D}")));
        assert_eq!(image_digest(&format!("reg/x@sha256:{D}")), Some(format!("sha256:{D}")));
        assert_eq!(image_digest(D), Some(format!("sha256:{D}")));
        assert_eq!(image_digest("busybox:latest"), None);
        assert_eq!(image_digest("sha256:abc"), None);
    }

    #[test]
    fn reads_a_containerd_kubelet_archive() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("config.dump"),
            format!(r#"{{"id":"c1","name":"app","rootfsImageName":"reg/app:1","rootfsImageRef":"sha256:{D}"}}"#),
        )
        .ok();
        std::fs::write(
            dir.path().join("spec.dump"),
            r#"{"annotations":{"io.kubernetes.cri.sandbox-namespace":"team-a","io.kubernetes.cri.sandbox-name":"job-0","io.kubernetes.cri.container-name":"app"}}"#,
        )
        .ok();
        let m = CheckpointMetadata::read(dir.path(), &BTreeMap::new(), None);
        assert_eq!(m.namespace.as_deref(), Some("team-a"));
        assert_eq!(m.pod.as_deref(), Some("job-0"));
        assert_eq!(m.container.as_deref(), Some("app"));
        assert_eq!(m.image_ids, vec![format!("sha256:{D}")]);
        assert_eq!(m.arch, None);
    }

    /// `status.dump` alone, in the CRI layout (containerd, lazarus now) and in
    /// lazarus's old one (checkpoints already in stores).
    #[test]
    fn reads_status_dump_in_both_layouts() {
        let labels = r#""labels":{"io.kubernetes.pod.namespace":"team-a","io.kubernetes.pod.name":"job-0","io.kubernetes.container.name":"app"}"#;
        let cri = format!(
            r#"{{"id":"c1","metadata":{{"name":"app","attempt":1}},"state":1,"image":{{"image":"reg/app:1"}},"image_ref":"reg/app@sha256:{D}","image_id":"sha256:{D}",{labels}}}"#
        );
        let old = format!(
            r#"{{"id":"c1","state":"CONTAINER_RUNNING","image":"reg/app:1","imageRef":"reg/app@sha256:{D}",{labels}}}"#
        );
        for status in [cri, old] {
            let dir = tempfile::tempdir().expect("tempdir");
            std::fs::write(dir.path().join("status.dump"), &status).ok();
            let m = CheckpointMetadata::read(dir.path(), &BTreeMap::new(), None);
            assert_eq!(m.namespace.as_deref(), Some("team-a"), "{status}");
            assert_eq!(m.pod.as_deref(), Some("job-0"));
            assert_eq!(m.container.as_deref(), Some("app"));
            assert_eq!(m.image_name.as_deref(), Some("reg/app:1"));
            assert!(m.image_ids.contains(&format!("reg/app@sha256:{D}")), "{:?}", m.image_ids);
            assert!(m.image_ids.iter().all(|i| image_digest(i) == Some(format!("sha256:{D}"))), "{:?}", m.image_ids);
        }
    }

    #[test]
    fn image_annotations_take_precedence() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("config.dump"), r#"{"pod":{"namespace":"x"},"host":{"arch":"arm64"}}"#).ok();
        let annotations: BTreeMap<String, String> =
            [(ann::CRIU_POD_NAMESPACE.to_owned(), "y".to_owned())].into_iter().collect();
        let m = CheckpointMetadata::read(dir.path(), &annotations, Some("amd64"));
        assert_eq!(m.namespace.as_deref(), Some("y"));
        assert_eq!(m.arch.as_deref(), Some("arm64"));
    }
}
