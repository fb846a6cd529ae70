//! Restore: bring a container back from a CRIU checkpoint through a runtime
//! that cannot restore.
//!
//! The flow, for a pod annotated `lazarus.dev/restore-from…`:
//! 1. `RunPodSandbox` — lazarus puts the pod on its runtime handler (whose
//!    runc is the `lazarus-runc` wrapper) unless the pod chose a handler.
//! 2. `CreateContainer` — before forwarding, the checkpoint is resolved,
//!    verified (digests), unpacked and checked (namespace, image, arch,
//!    allowed source) into a staging directory; a refusal fails the call with
//!    a message saying which check failed, and nothing is created. After
//!    containerd created the container, the staged tree becomes the restore
//!    plan `<restore_dir>/<container id>/`.
//! 3. `StartContainer` — containerd's shim calls the wrapper's `create`, which
//!    applies the rootfs diff and runs `runc restore` instead. A failure is
//!    remembered so the next attempt takes an older checkpoint.

pub mod annotations;
pub mod checks;
pub mod engine;
pub mod fetch;

pub use engine::{RestoreError, Restorer, RestorerConfig};
