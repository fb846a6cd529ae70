//! The lazarus checkpoint format: the on-disk contract between the daemon
//! (`lazarus serve`), the `lazarus-runc` wrapper, the store and the registry.
//!
//! - [`annotations`]: names lazarus reads from pods and writes into checkpoint
//!   images, the files of a checkpoint tree;
//! - [`timefmt`]: the time formats (created annotations, time tags, runc logs);
//! - [`identity`]: the name a pod's checkpoints are kept under;
//! - [`plan`]: the restore plan directory the daemon leaves for the wrapper;
//! - [`rootfs_diff`]: the container's writable-layer diff, taken and applied;
//! - [`archive`]: safe unpacking of a checkpoint tree, digest checked on the way;
//! - [`tree_files`], [`chunks`]: the large files of a tree stored as blobs of their own, cut into
//!   content-defined chunks shared between versions;
//! - [`metadata`]: what a checkpoint says about where it came from;
//! - [`pod_data`]: `/dev/shm` and `emptyDir` volumes captured in the cut and put back before CRIU restores;
//! - [`criu_log`]: what is quoted of CRIU's logs when a dump or restore fails;
//! - [`volumes`]: files open on volumes at checkpoint time, and the restore pre-check's comparison;
//! - [`criu_stats`]: CRIU's `stats-dump` image (frozen time);
//! - [`compression`], [`digest`], [`fsutil`], [`errors`]: the one copy of compression
//!   sniffing, sha256 streaming, atomic writes, `PATH` search and error chains.
//!
//! Nothing here speaks gRPC or HTTP: the wrapper containerd execs for every
//! runc call links this crate only.

pub mod annotations;
pub mod archive;
pub mod chunks;
pub mod compression;
pub mod criu_log;
pub mod criu_stats;
pub mod digest;
pub mod errors;
pub mod fsutil;
pub mod identity;
pub mod metadata;
pub mod plan;
pub mod pod_data;
pub mod rootfs_diff;
pub mod timefmt;
pub mod tree_files;
pub mod volumes;
