//! Checkpoints of running containers: CRIU through containerd's task API,
//! packaged as OCI images in the node-local store.
//!
//! - [`capture`]: freeze-dump-resume a container and collect everything a
//!   restore needs (CRIU images, writable-layer diff, spec, status, metadata);
//! - [`image`]: package that tree as a single-layer OCI image;
//! - [`locks`]: one checkpoint per container, a node-wide cap;
//! - [`annotations`]: the names lazarus reads and writes.

pub mod annotations;
pub mod capture;
pub mod criu_stats;
pub mod image;
pub mod listing;
pub mod locks;
pub mod on_stop;
pub mod schedule;

pub use capture::{Checkpoint, CheckpointError, CheckpointRequest, Checkpointer, CheckpointerConfig, Compression};
