//! Checkpoints in OCI registries: a small OCI Distribution client that
//! streams blobs between files and registries, and the push of committed
//! checkpoints with registry-side retention.
//!
//! - [`reference`]: `host[:port]/path[:tag][@digest]`, validated;
//! - [`auth`]: docker `config.json` credentials, `WWW-Authenticate` challenges;
//! - [`client`]: [`RegistryClient`] (blobs, manifests, tags, deletes; Bearer
//!   and Basic auth; HTTPS, or HTTP for insecure registries; timeouts);
//! - [`push`]: pushing a checkpoint from the local store, tags, retention.

pub mod auth;
pub mod client;
pub mod push;
pub mod reference;

pub use auth::{Challenge, Credential, Credentials, CredentialsError};
pub use client::{BlobPush, FetchedManifest, FileBody, RegistryClient, RegistryError, RegistrySettings};
pub use push::{PushError, Pushed, RetentionOutcome, apply_retention, push_checkpoint};
pub use reference::{Reference, ReferenceError};
