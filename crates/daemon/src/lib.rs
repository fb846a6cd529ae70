//! lazarus: a node-level CRI gRPC proxy between kubelet and containerd.
//!
//! Every CRI call is forwarded to the upstream runtime as raw HTTP/2 gRPC
//! ([`passthrough`]); the few methods lazarus acts on are decoded on the side
//! ([`intercept`]) while their bytes still travel upstream unchanged.
//!
//! The composition root is [`server::serve`]: it builds the upstream
//! connection, the store, the checkpoint and restore engines, the scheduler
//! and the metrics endpoint from one [`config::Config`] and runs the proxy.
//! [`cli::main`] is what the `lazarus` binary runs. Everything else is private
//! to this crate; the checkpoint format, the store and the registry client are
//! crates of their own (`lazarus-format`, `lazarus-store`, `lazarus-registry`).

// The blocking rule (clippy.toml) is for the daemon's code; its tests set up
// files as they please.
#![cfg_attr(test, allow(clippy::disallowed_methods, reason = "test set-up"))]

mod blocking;
mod checkpoint;
pub mod cli;
pub mod config;
mod containerd_api;
mod duration;
mod error;
pub mod grpc_frame;
mod intercept;
mod listener;
mod logging;
mod metrics;
mod metrics_server;
mod passthrough;
mod proxy;
mod restore;
mod runtime;
mod sd_notify;
pub mod server;
mod upstream;
mod version;

pub use intercept::parse_grpc_timeout;
