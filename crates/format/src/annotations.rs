//! Names lazarus writes into checkpoint images and reads from pods.

/// Pod annotation: take periodic checkpoints at this Go-style interval.
pub const CHECKPOINT_INTERVAL: &str = "lazarus.dev/checkpoint-interval";
/// Pod annotation: checkpoint before the container is stopped (`"true"`).
pub const CHECKPOINT_ON_STOP: &str = "lazarus.dev/checkpoint-on-stop";
/// Pod annotation: how many checkpoints to keep per container (default 3).
pub const CHECKPOINT_KEEP: &str = "lazarus.dev/checkpoint-keep";
/// Pod annotation: OCI repository checkpoints are pushed to.
pub const CHECKPOINT_REPOSITORY: &str = "lazarus.dev/checkpoint-repository";

/// Pod annotation: the name the pod's checkpoints are kept under, in place of
/// the pod's name (see [`crate::identity`]): pods re-created under new names
/// (Jobs, Deployments, workflow engines) find their `latest`.
pub const CHECKPOINT_NAME: &str = "lazarus.dev/checkpoint-name";

/// Pod annotation: volumes (comma-separated container paths, or `*`) whose open
/// files may have grown since the checkpoint without refusing the restore (the
/// program tolerates records after its checkpointed position).
pub const VOLUME_APPENDS_OK: &str = "lazarus.dev/volume-appends-ok";

/// Pod annotation: the containers lazarus checkpoints (comma-separated
/// container names); absent: all of them. Two or more of them running are
/// checkpointed as one pod cut (all frozen, then all dumped, then all thawed).
pub const CHECKPOINT_CONTAINERS: &str = "lazarus.dev/checkpoint-containers";

/// Checkpoint annotation: the containers (comma-separated names, sorted)
/// checkpointed in the same pod cut as this one, this one included; their
/// checkpoints share its time tag. Absent on a checkpoint of one container.
pub const POD_CUT: &str = "lazarus.dev/pod-cut";

/// Checkpoints kept per container when the pod does not say.
pub const DEFAULT_KEEP: usize = 3;

/// Index annotation grouping a container's checkpoints:
/// `namespace/<identity>/container` (the identity is the pod's name unless
/// [`CHECKPOINT_NAME`] or a Job label says otherwise).
pub const CONTAINER_KEY: &str = "lazarus.dev/container-key";
/// OCI: the tag of a manifest in an image layout.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// OCI: creation time (RFC 3339).
pub const CREATED: &str = "org.opencontainers.image.created";

/// containerd looks for this to recognise a checkpoint image.
pub const CRIU_CONTAINER_NAME: &str = "org.criu.checkpoint.container.name";
/// CRI-O's checkpoint image marker.
pub const CRIO_CHECKPOINT_NAME: &str = "io.kubernetes.cri-o.annotations.checkpoint.name";
/// Podman's checkpoint image marker.
pub const PODMAN_CHECKPOINT_NAME: &str = "io.podman.annotations.checkpoint.name";
/// checkpointctl's set.
pub const CRIU_ENGINE_NAME: &str = "org.criu.checkpoint.engine.name";
/// Engine version.
pub const CRIU_ENGINE_VERSION: &str = "org.criu.checkpoint.engine.version";
/// Pod name.
pub const CRIU_POD_NAME: &str = "org.criu.checkpoint.pod.name";
/// Pod namespace.
pub const CRIU_POD_NAMESPACE: &str = "org.criu.checkpoint.pod.namespace";
/// Image the container ran.
pub const CRIU_ROOTFS_IMAGE_NAME: &str = "org.criu.checkpoint.rootfsImageName";
/// Its image id (config digest).
pub const CRIU_ROOTFS_IMAGE_ID: &str = "org.criu.checkpoint.rootfsImageID";
/// Its manifest digest reference.
pub const CRIU_ROOTFS_IMAGE_REF: &str = "org.criu.checkpoint.rootfsImageRef";
/// OCI runtime.
pub const CRIU_RUNTIME_NAME: &str = "org.criu.checkpoint.runtime.name";
/// CRIU version used for the dump.
pub const CRIU_VERSION: &str = "org.criu.checkpoint.criu.version";
/// CPU architecture (Go naming: amd64, arm64).
pub const CRIU_HOST_ARCH: &str = "org.criu.checkpoint.host.arch";
/// Kernel release of the node.
pub const LAZARUS_KERNEL: &str = "lazarus.dev/host-kernel";
/// Pod uid.
pub const LAZARUS_POD_UID: &str = "lazarus.dev/pod-uid";
/// Container id at checkpoint time.
pub const LAZARUS_CONTAINER_ID: &str = "lazarus.dev/container-id";
/// How long the container was frozen for the cut (dump and writable layer), in ms.
pub const LAZARUS_FROZEN_TIME_MS: &str = "lazarus.dev/frozen-time-ms";
/// What took the checkpoint: `manual`, `periodic` or `stop`.
pub const LAZARUS_TRIGGER: &str = "lazarus.dev/trigger";

/// Media type of the layer holding the checkpoint tree.
pub const LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// Same, gzip.
pub const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// Files of a checkpoint tree (checkpointctl's names).
pub mod files {
    /// Container metadata (JSON).
    pub const CONFIG_DUMP: &str = "config.dump";
    /// OCI runtime spec (JSON).
    pub const SPEC_DUMP: &str = "spec.dump";
    /// CRI container status (JSON).
    pub const STATUS_DUMP: &str = "status.dump";
    /// CRIU images directory.
    pub const CHECKPOINT_DIR: &str = "checkpoint";
    /// Writable-layer changes.
    pub const ROOTFS_DIFF: &str = "rootfs-diff.tar";
    /// Paths deleted from the image's layers (JSON array).
    pub const DELETED_FILES: &str = "deleted.files";
    /// CRIU's dump log.
    pub const DUMP_LOG: &str = "dump.log";
    /// CRIU's dump statistics.
    pub const STATS_DUMP: &str = "stats-dump";
}

/// The Go architecture name of this build target.
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        other => other,
    }
}
