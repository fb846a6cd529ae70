//! lazarus: a node-level CRI gRPC proxy between kubelet and containerd.
//!
//! Every CRI call is forwarded to the upstream runtime as raw HTTP/2 gRPC
//! ([`passthrough`]); the few methods lazarus acts on are decoded on the side
//! ([`intercept`]) while their bytes still travel upstream unchanged.

pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod containerd_api;
pub mod duration;
pub mod error;
pub mod grpc_frame;
pub mod intercept;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod metrics_server;
pub mod passthrough;
pub mod proxy;
pub mod registry;
pub mod restore;
pub mod rootfs_diff;
pub mod runc_wrapper;
pub mod runtime;
pub mod sd_notify;
pub mod server;
pub mod store;
pub mod timefmt;
pub mod upstream;
pub mod version;

pub use config::Config;
pub use proxy::Proxy;
