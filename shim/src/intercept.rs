//! CRI methods lazarus looks into.
//!
//! An intercepted unary call is read whole (up to kubelet's 16 MiB limit),
//! decoded on the side for lazarus's own logic, and then forwarded with its
//! **original bytes** — so fields newer than the vendored `api.proto` survive
//! interception too. The response is read, decoded for inspection and handed
//! back with its original bytes and trailers.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Frame, SizeHint};
use http_body_util::{BodyExt, Limited};
use lazarus_proto::v1;
use prost::Message;
use tonic::body::Body;

use crate::error::{ProxyError, chain};
use crate::grpc_frame::{self, FrameError, MAX_MESSAGE_SIZE};
use crate::upstream::Upstream;

/// The methods lazarus intercepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intercept {
    /// `RuntimeService/Version`: the seam's proof; observed and logged.
    Version,
    /// `RuntimeService/StopContainer`: checkpoint first for pods annotated
    /// `lazarus.dev/checkpoint-on-stop: "true"`.
    StopContainer,
}

/// Which interception, if any, applies to a gRPC path. Called for every call:
/// a plain string comparison, no allocation.
pub fn route(path: &str) -> Option<Intercept> {
    match path {
        "/runtime.v1.RuntimeService/Version" => Some(Intercept::Version),
        "/runtime.v1.RuntimeService/StopContainer" => Some(Intercept::StopContainer),
        _ => None,
    }
}

/// Handles an intercepted call.
pub async fn handle<B>(
    which: Intercept,
    upstream: &Upstream,
    checkpointer: Option<&crate::checkpoint::Checkpointer>,
    request: http::Request<B>,
) -> Result<http::Response<Body>, ProxyError>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match which {
        Intercept::Version => {
            let call = UnaryCall::<v1::VersionRequest>::read(request).await?;
            if let Some(req) = &call.message {
                tracing::debug!(kubelet_api_version = %req.version, "intercepted Version");
            }
            let response = call.forward::<v1::VersionResponse>(upstream).await?;
            if let Some(resp) = &response.message {
                tracing::debug!(
                    runtime = %resp.runtime_name,
                    runtime_version = %resp.runtime_version,
                    runtime_api_version = %resp.runtime_api_version,
                    "upstream answered Version"
                );
            }
            Ok(response.into_http())
        }
        Intercept::StopContainer => {
            let call = UnaryCall::<v1::StopContainerRequest>::read(request).await?;
            if let (Some(req), Some(engine)) = (&call.message, checkpointer) {
                crate::checkpoint::on_stop::checkpoint_before_stop(engine, &req.container_id, req.timeout).await;
            }
            Ok(call.forward::<v1::StopContainerResponse>(upstream).await?.into_http())
        }
    }
}

/// A unary request read whole, with its decoded message when decodable.
#[derive(Debug)]
pub struct UnaryCall<M> {
    parts: http::request::Parts,
    raw: Bytes,
    /// The decoded request; `None` when the client compressed it (it is then
    /// forwarded without being looked at).
    pub message: Option<M>,
}

impl<M: Message + Default> UnaryCall<M> {
    /// Reads and decodes a unary request body.
    pub async fn read<B>(request: http::Request<B>) -> Result<Self, ProxyError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (parts, body) = request.into_parts();
        let method = parts.uri.path().to_owned();
        let raw = read_body(&method, body).await?;
        let message = decode(&method, "request", &raw)?;
        Ok(UnaryCall { parts, raw, message })
    }

    /// The gRPC method path.
    pub fn method(&self) -> &str {
        self.parts.uri.path()
    }

    /// Forwards the original bytes upstream and reads the response.
    pub async fn forward<R: Message + Default>(self, upstream: &Upstream) -> Result<UnaryResponse<R>, ProxyError> {
        let method = self.parts.uri.path().to_owned();
        let response = upstream.forward(self.parts, self.raw).await?;
        let (parts, body) = response.into_parts();
        let collected = body.collect().await.map_err(|status| ProxyError::UpstreamUnavailable {
            upstream: upstream.name().into(),
            reason: status.message().to_owned(),
        })?;
        let trailers = collected.trailers().cloned();
        let raw = collected.to_bytes();
        // A failed call has an empty body (the status is in the headers or
        // trailers); there is nothing to decode then.
        let message = if raw.is_empty() { None } else { decode(&method, "response", &raw)? };
        Ok(UnaryResponse { parts, raw, trailers, message })
    }
}

/// Reads a whole request body: one gRPC message, at most kubelet's 16 MiB
/// (the CRI has no client-streaming methods).
pub async fn read_body<B>(method: &str, body: B) -> Result<Bytes, ProxyError>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    Ok(Limited::new(body, MAX_MESSAGE_SIZE + grpc_frame::HEADER_LEN)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ProxyError::MessageTooLarge {
                    method: method.to_owned(),
                    size: MAX_MESSAGE_SIZE + 1,
                    limit: MAX_MESSAGE_SIZE,
                }
            } else {
                ProxyError::RequestBody { method: method.to_owned(), reason: chain(&*e) }
            }
        })?
        .to_bytes())
}

/// A unary response read whole.
#[derive(Debug)]
pub struct UnaryResponse<M> {
    parts: http::response::Parts,
    raw: Bytes,
    trailers: Option<HeaderMap>,
    /// The decoded response, when the call succeeded with an uncompressed body.
    pub message: Option<M>,
}

impl<M> UnaryResponse<M> {
    /// The response as it came from upstream, bytes and trailers unchanged.
    pub fn into_http(self) -> http::Response<Body> {
        http::Response::from_parts(
            self.parts,
            Body::new(Buffered { data: (!self.raw.is_empty()).then_some(self.raw), trailers: self.trailers }),
        )
    }
}

fn decode<M: Message + Default>(method: &str, what: &'static str, raw: &Bytes) -> Result<Option<M>, ProxyError> {
    match grpc_frame::unary_message(raw, MAX_MESSAGE_SIZE) {
        Ok(message) => M::decode(message).map(Some).map_err(|source| ProxyError::Decode {
            method: method.to_owned(),
            what,
            source,
        }),
        Err(FrameError::Compressed) => {
            tracing::debug!(method, what, "compressed message forwarded without inspection");
            Ok(None)
        }
        Err(FrameError::TooLarge(size)) => {
            Err(ProxyError::MessageTooLarge { method: method.to_owned(), size, limit: MAX_MESSAGE_SIZE })
        }
        Err(e) => Err(ProxyError::MalformedFrame { method: method.to_owned(), reason: e.reason() }),
    }
}

/// A body already in memory: one data frame, then the trailers.
struct Buffered {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl http_body::Body for Buffered {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    #[test]
    fn only_known_paths_are_intercepted() {
        assert_eq!(route("/runtime.v1.RuntimeService/Version"), Some(Intercept::Version));
        assert_eq!(route("/runtime.v1.RuntimeService/ListContainers"), None);
        assert_eq!(route("/runtime.v1alpha2.RuntimeService/Version"), None);
        assert_eq!(route("/runtime.v1.RuntimeService/Versionx"), None);
    }

    #[tokio::test]
    async fn reading_keeps_unknown_fields_in_the_raw_bytes() {
        let mut message = v1::VersionRequest { version: "v1".into() }.encode_to_vec();
        // Field 99, varint 7: unknown to runtime.v1.VersionRequest.
        message.extend_from_slice(&[0x98, 0x06, 0x07]);
        let body = grpc_frame::encode(&message);
        let request = http::Request::builder()
            .uri("/runtime.v1.RuntimeService/Version")
            .body(Full::new(body.clone()))
            .expect("request");
        let call = UnaryCall::<v1::VersionRequest>::read(request).await.expect("read");
        assert_eq!(call.message.as_ref().map(|m| m.version.as_str()), Some("v1"));
        assert_eq!(call.raw, body);
    }

    #[tokio::test]
    async fn undecodable_requests_are_invalid_argument() {
        let request = http::Request::builder()
            .uri("/runtime.v1.RuntimeService/Version")
            .body(Full::new(grpc_frame::encode(&[0xff, 0xff])))
            .expect("request");
        let err = UnaryCall::<v1::VersionRequest>::read(request).await.expect_err("garbage");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.to_string().contains("Version"), "{err}");
    }
}
