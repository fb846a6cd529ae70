//! The few messages of containerd's native API lazarus uses, on the same
//! socket as the CRI. Field numbers follow containerd's
//! `api/services/tasks/v1/tasks.proto`, `api/types/descriptor.proto` and
//! `runtime/v2/runc/options/oci.proto` (stable since containerd 1.3; the
//! same in 1.6, 1.7 and 2.x), written out as prost structs rather than a
//! second vendored proto tree.

use prost::Message;

/// containerd's namespace for Kubernetes containers.
pub const K8S_NAMESPACE: &str = "k8s.io";
/// gRPC path of `Tasks.Checkpoint`.
pub const TASKS_CHECKPOINT: &str = "/containerd.services.tasks.v1.Tasks/Checkpoint";
/// gRPC path of `Tasks.Pause` (the runtime freezes the container's cgroup).
pub const TASKS_PAUSE: &str = "/containerd.services.tasks.v1.Tasks/Pause";
/// gRPC path of `Tasks.Resume` (thaws it).
pub const TASKS_RESUME: &str = "/containerd.services.tasks.v1.Tasks/Resume";
/// gRPC path of `Tasks.Get` (a task's state).
pub const TASKS_GET: &str = "/containerd.services.tasks.v1.Tasks/Get";
/// Type URL under which the runc shim reads checkpoint options. containerd
/// registers it by its bare name (no `type.googleapis.com/` prefix).
pub const RUNC_CHECKPOINT_OPTIONS: &str = "containerd.runc.v1.CheckpointOptions";

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, Message)]
pub struct Any {
    /// Type URL.
    #[prost(string, tag = "1")]
    pub type_url: String,
    /// Encoded message.
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// `containerd.services.tasks.v1.CheckpointTaskRequest`.
#[derive(Clone, PartialEq, Message)]
pub struct CheckpointTaskRequest {
    /// The container (= task) id.
    #[prost(string, tag = "1")]
    pub container_id: String,
    /// Digest of a parent checkpoint (unused).
    #[prost(string, tag = "2")]
    pub parent_checkpoint: String,
    /// Runtime-specific options: [`CheckpointOptions`].
    #[prost(message, optional, tag = "3")]
    pub options: Option<Any>,
}

/// `containerd.services.tasks.v1.PauseTaskRequest` and `ResumeTaskRequest`
/// (the same one field).
#[derive(Clone, PartialEq, Message)]
pub struct TaskRequest {
    /// The container (= task) id.
    #[prost(string, tag = "1")]
    pub container_id: String,
}

/// `containerd.services.tasks.v1.GetResponse`.
#[derive(Clone, PartialEq, Message)]
pub struct GetTaskResponse {
    /// The task's init process.
    #[prost(message, optional, tag = "1")]
    pub process: Option<Process>,
}

/// The part of `containerd.v1.types.Process` lazarus reads.
#[derive(Clone, PartialEq, Message)]
pub struct Process {
    /// `containerd.v1.types.Status`: 2 running, 3 stopped, 4 paused, 5 pausing.
    #[prost(int32, tag = "4")]
    pub status: i32,
}

impl Process {
    /// `Status.PAUSED`.
    pub const PAUSED: i32 = 4;
    /// `Status.PAUSING`.
    pub const PAUSING: i32 = 5;
}

/// `google.protobuf.Empty`, the answer of `Pause` and `Resume`.
#[derive(Clone, PartialEq, Message)]
pub struct Empty {}

/// `containerd.types.Descriptor`.
#[derive(Clone, PartialEq, Message)]
pub struct Descriptor {
    /// Media type.
    #[prost(string, tag = "1")]
    pub media_type: String,
    /// Digest.
    #[prost(string, tag = "2")]
    pub digest: String,
    /// Size.
    #[prost(int64, tag = "3")]
    pub size: i64,
}

/// `containerd.services.tasks.v1.CheckpointTaskResponse`.
#[derive(Clone, PartialEq, Message)]
pub struct CheckpointTaskResponse {
    /// Content written to containerd's store (none when `image_path` is set).
    #[prost(message, repeated, tag = "1")]
    pub descriptors: Vec<Descriptor>,
}

/// `containerd.runc.v1.CheckpointOptions`.
#[derive(Clone, PartialEq, Message)]
pub struct CheckpointOptions {
    /// Stop the container after the dump (lazarus: false, it keeps running).
    #[prost(bool, tag = "1")]
    pub exit: bool,
    /// Dump established TCP connections.
    #[prost(bool, tag = "2")]
    pub open_tcp: bool,
    /// Dump external unix sockets.
    #[prost(bool, tag = "3")]
    pub external_unix_sockets: bool,
    /// Dump a terminal.
    #[prost(bool, tag = "4")]
    pub terminal: bool,
    /// Dump file locks.
    #[prost(bool, tag = "5")]
    pub file_locks: bool,
    /// Namespaces to leave empty.
    #[prost(string, repeated, tag = "6")]
    pub empty_namespaces: Vec<String>,
    /// CRIU cgroups mode (`soft`, `full`, `strict`, `ignore`).
    #[prost(string, tag = "7")]
    pub cgroups_mode: String,
    /// Where CRIU writes the images.
    #[prost(string, tag = "8")]
    pub image_path: String,
    /// Where CRIU writes its log and work files.
    #[prost(string, tag = "9")]
    pub work_path: String,
}

impl CheckpointOptions {
    /// Packs the options the way the runc shim unpacks them.
    pub fn to_any(&self) -> Any {
        Any { type_url: RUNC_CHECKPOINT_OPTIONS.to_owned(), value: self.encode_to_vec() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_encode_with_containerd_field_numbers() {
        let options = CheckpointOptions {
            open_tcp: true,
            file_locks: true,
            image_path: "/i".into(),
            work_path: "/w".into(),
            ..Default::default()
        };
        // open_tcp=2 (0x10 0x01), file_locks=5 (0x28 0x01), image_path=8 (0x42), work_path=9 (0x4a)
        assert_eq!(options.encode_to_vec(), vec![0x10, 1, 0x28, 1, 0x42, 2, b'/', b'i', 0x4a, 2, b'/', b'w']);
        assert_eq!(options.to_any().type_url, "containerd.runc.v1.CheckpointOptions");
    }
}
