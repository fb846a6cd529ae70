//! Kubernetes CRI v1 (`runtime.v1`) messages, clients and servers generated
//! from the vendored `api.proto` (k8s.io/cri-api v0.32, see
//! `vendor/cri-api/README.md`).
//!
//! lazarus forwards every CRI call it does not intercept as raw bytes, so this
//! crate only has to know the methods it decodes; methods and fields newer
//! than this file pass through untouched.

#![allow(missing_docs, clippy::all, missing_debug_implementations)]

/// The `runtime.v1` package.
pub mod runtime {
    pub mod v1 {
        tonic::include_proto!("runtime.v1");
    }
}

pub use runtime::v1;

/// gRPC path prefix of the CRI runtime service.
pub const RUNTIME_SERVICE: &str = "/runtime.v1.RuntimeService/";
/// gRPC path prefix of the CRI image service.
pub const IMAGE_SERVICE: &str = "/runtime.v1.ImageService/";
