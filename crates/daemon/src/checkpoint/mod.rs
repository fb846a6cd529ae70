//! Checkpoints of running containers: CRIU through containerd's task API,
//! packaged as OCI images in the node-local store.
//!
//! - [`capture`]: freeze-dump-resume a container and collect everything a
//!   restore needs (CRIU images, writable-layer diff, spec, status, metadata);
//! - [`image`]: package that tree as a single-layer OCI image;
//! - [`freeze`]: the container held frozen from before the dump until its
//!   files are captured, so a checkpoint is one instant;
//! - [`locks`]: one checkpoint per container, a node-wide cap;
//! - [`markers`]: per-container marker files (frozen, stopping) in the run dir;
//! - the names lazarus reads and writes are in `lazarus_format::annotations`.

pub mod capture;
pub mod freeze;
pub mod image;
pub mod locks;
pub mod markers;
pub mod on_stop;
pub mod pod_cut;
pub mod schedule;
#[cfg(test)]
mod seam_tests;

pub use capture::{CheckpointError, CheckpointRequest, Checkpointer, CheckpointerConfig, Compression, RegistryLayout};
