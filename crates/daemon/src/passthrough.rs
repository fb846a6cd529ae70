//! Raw forwarding of CRI calls lazarus does not act on.
//!
//! Nothing is decoded: headers (including `grpc-timeout` and metadata), the
//! message bytes (including fields newer than lazarus's `api.proto`), trailers
//! and streaming responses go through as they are. Methods lazarus has never
//! heard of are forwarded too.

use bytes::Bytes;
use tonic::body::Body;

use crate::error::ProxyError;
use crate::upstream::Upstream;

/// Forwards `request` to the upstream unchanged.
pub async fn forward<B>(upstream: &Upstream, request: http::Request<B>) -> Result<http::Response<Body>, ProxyError>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (head, body) = request.into_parts();
    let body = crate::intercept::read_body(head.uri.path(), body).await?;
    upstream.forward(head, body).await
}
