//! The checks a checkpoint must pass before lazarus commits to restoring it.
//! Pure functions over [`CheckpointMetadata`] and the container being created.

use std::path::Path;

use lazarus_format::metadata::{CheckpointMetadata, image_digest};

/// The container a checkpoint is about to be restored into.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    /// Namespace of the new pod.
    pub namespace: &'a str,
    /// Identifiers of the image the container is created from (image id, repo digests, the reference kubelet passed).
    pub image_ids: &'a [String],
    /// Image name, for messages.
    pub image_name: &'a str,
    /// This node's architecture (Go naming).
    pub arch: &'a str,
}

/// A check a checkpoint failed; each says which and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckFailure {
    /// The checkpoint belongs to another namespace.
    #[error(
        "namespace check failed: the checkpoint was taken in namespace {checkpoint:?}, the pod is in {pod:?} \
         (a checkpoint holds process memory; node config restore_cross_namespace_sources can allow a source)"
    )]
    Namespace {
        /// The checkpoint's namespace (empty when not recorded).
        checkpoint: String,
        /// The pod's.
        pod: String,
    },
    /// The checkpoint was taken from another image.
    #[error(
        "image check failed: the checkpoint was taken from image {checkpoint}, the container is created from {container}"
    )]
    Image {
        /// The checkpoint's image identifiers.
        checkpoint: String,
        /// The new container's.
        container: String,
    },
    /// The checkpoint does not say which image it ran.
    #[error("image check failed: the checkpoint does not record the digest of its image")]
    ImageUnknown,
    /// Another CPU architecture.
    #[error("architecture check failed: the checkpoint was taken on {checkpoint}, this node is {node}")]
    Arch {
        /// The checkpoint's.
        checkpoint: String,
        /// This node's.
        node: String,
    },
    /// The source is not on the node's allow list.
    #[error("source check failed: {location} is not allowed by the node config ({setting} = {allowed:?})")]
    SourceNotAllowed {
        /// The source.
        location: String,
        /// The config key.
        setting: &'static str,
        /// Its value.
        allowed: Vec<String>,
    },
}

/// Namespace, image and architecture checks. `cross_namespace` is true when
/// the node config allows this source to be restored into any namespace.
pub fn check(meta: &CheckpointMetadata, target: &Target<'_>, cross_namespace: bool) -> Result<(), CheckFailure> {
    if !cross_namespace && meta.namespace.as_deref() != Some(target.namespace) {
        return Err(CheckFailure::Namespace {
            checkpoint: meta.namespace.clone().unwrap_or_default(),
            pod: target.namespace.to_owned(),
        });
    }
    let wanted: Vec<String> = target.image_ids.iter().filter_map(|i| image_digest(i)).collect();
    let have: Vec<String> = meta.image_ids.iter().filter_map(|i| image_digest(i)).collect();
    if have.is_empty() {
        return Err(CheckFailure::ImageUnknown);
    }
    if !have.iter().any(|d| wanted.contains(d)) {
        let name = meta.image_name.clone().unwrap_or_default();
        return Err(CheckFailure::Image {
            checkpoint: format!("{name} ({})", have.join(", ")).trim().to_owned(),
            container: format!("{} ({})", target.image_name, wanted.join(", ")).trim().to_owned(),
        });
    }
    if let Some(arch) = &meta.arch
        && arch != target.arch
    {
        return Err(CheckFailure::Arch { checkpoint: arch.clone(), node: target.arch.to_owned() });
    }
    Ok(())
}

/// Whether `reference` (a registry reference) names an allowed registry:
/// entries are `host[:port]` or `host[:port]/path` prefixes, matched on whole
/// path segments.
pub fn registry_allowed(reference: &str, allowed: &[String]) -> Result<(), CheckFailure> {
    let ok = allowed.iter().map(|a| a.trim_end_matches('/')).filter(|a| !a.is_empty()).any(|a| {
        reference == a
            || reference
                .strip_prefix(a)
                .is_some_and(|rest| rest.starts_with('/') || rest.starts_with(':') || rest.starts_with('@'))
    });
    if ok {
        Ok(())
    } else {
        Err(CheckFailure::SourceNotAllowed {
            location: reference.to_owned(),
            setting: "restore_allowed_registries",
            allowed: allowed.to_vec(),
        })
    }
}

/// Whether the archive at `path` (already canonicalized by the caller) lies
/// under one of the allowed directories.
pub fn archive_allowed(path: &Path, allowed: &[std::path::PathBuf]) -> Result<(), CheckFailure> {
    let ok = allowed.iter().any(|dir| {
        let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
        path.starts_with(&dir) && path != dir
    });
    if ok {
        Ok(())
    } else {
        Err(CheckFailure::SourceNotAllowed {
            location: path.display().to_string(),
            setting: "restore_allowed_dirs",
            allowed: allowed.iter().map(|p| p.display().to_string()).collect(),
        })
    }
}

/// Whether the node config lets `source` be restored into another namespace.
pub fn cross_namespace_allowed(source: &str, allowed: &[String]) -> bool {
    allowed.iter().filter(|a| !a.is_empty()).any(|a| source.starts_with(a.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn meta(ns: &str, image: &str, arch: Option<&str>) -> CheckpointMetadata {
        CheckpointMetadata {
            namespace: Some(ns.to_owned()),
            image_ids: vec![image.to_owned()],
            arch: arch.map(str::to_owned),
            ..Default::default()
        }
    }

    fn target<'a>(ids: &'a [String]) -> Target<'a> {
        Target { namespace: "team", image_ids: ids, image_name: "reg/app:1", arch: "amd64" }
    }

    #[test]
    fn a_matching_checkpoint_passes() {
        let ids = vec![format!("reg/app@{A}"), B.to_owned()];
        assert_eq!(check(&meta("team", A, Some("amd64")), &target(&ids), false), Ok(()));
    }

    #[test]
    fn each_mismatch_names_its_check() {
        let ids = vec![A.to_owned()];
        let err = check(&meta("other", A, None), &target(&ids), false).expect_err("ns");
        assert!(err.to_string().starts_with("namespace check failed"), "{err}");
        assert_eq!(check(&meta("other", A, None), &target(&ids), true), Ok(()));
        let err = check(&meta("team", B, None), &target(&ids), false).expect_err("image");
        assert!(err.to_string().starts_with("image check failed"), "{err}");
        let err = check(&meta("team", "busybox:latest", None), &target(&ids), false).expect_err("no digest");
        assert_eq!(err, CheckFailure::ImageUnknown);
        let err = check(&meta("team", A, Some("arm64")), &target(&ids), false).expect_err("arch");
        assert!(err.to_string().starts_with("architecture check failed"), "{err}");
        let unknown_ns = CheckpointMetadata { namespace: None, ..meta("x", A, None) };
        assert!(matches!(check(&unknown_ns, &target(&ids), false), Err(CheckFailure::Namespace { .. })));
    }

    #[test]
    fn registries_match_on_segments() {
        let allowed = vec!["reg.example.com/team".to_owned(), "127.0.0.1:5000".to_owned()];
        assert!(registry_allowed("reg.example.com/team/job:t", &allowed).is_ok());
        assert!(registry_allowed("127.0.0.1:5000/x/y@sha256:0", &allowed).is_ok());
        assert!(registry_allowed("reg.example.com/teamevil/job:t", &allowed).is_err());
        assert!(registry_allowed("127.0.0.1:50000/x", &allowed).is_err());
        let err = registry_allowed("evil.example/x:y", &[]).expect_err("empty list");
        assert!(err.to_string().contains("restore_allowed_registries"), "{err}");
    }

    #[test]
    fn archives_must_be_inside_an_allowed_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        let allowed = vec![dir.path().to_path_buf()];
        let root = std::fs::canonicalize(dir.path()).expect("canonical");
        assert!(archive_allowed(&root.join("a.tar"), &allowed).is_ok());
        assert!(archive_allowed(&root, &allowed).is_err());
        assert!(archive_allowed(Path::new("/etc/shadow"), &allowed).is_err());
    }
}
