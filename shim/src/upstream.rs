//! The connection to the runtime lazarus fronts (containerd).
//!
//! One lazily connected HTTP/2 channel, shared by all calls. When the runtime
//! is down a call fails at once with `UNAVAILABLE`; the next call dials again,
//! so lazarus follows containerd restarts without restarting itself.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::Status;
use tonic::body::Body;
use tonic::transport::{Channel, Endpoint};
use tower::ServiceExt;

use crate::config::Config;
use crate::error::{ProxyError, chain};

/// The upstream runtime endpoint.
#[derive(Debug, Clone)]
pub struct Upstream {
    name: Arc<str>,
    channel: Channel,
}

impl Upstream {
    /// Prepares (but does not dial) the channel to `config.upstream`.
    pub fn new(config: &Config) -> Result<Self, ProxyError> {
        let unavailable =
            |reason: String| ProxyError::UpstreamUnavailable { upstream: config.upstream.as_str().into(), reason };
        let endpoint = Endpoint::from_shared(config.upstream.clone())
            .map_err(|e| unavailable(chain(&e)))?
            .connect_timeout(config.upstream_connect_timeout)
            .tcp_nodelay(true);
        Ok(Upstream { name: config.upstream.as_str().into(), channel: endpoint.connect_lazy() })
    }

    /// The endpoint, as configured.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A client for the decoded CRI runtime service on the same channel.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// Sends one HTTP/2 gRPC request upstream, bytes untouched. A transport
    /// failure becomes [`ProxyError::UpstreamUnavailable`]; a failure while the
    /// response body streams ends the stream with an `UNAVAILABLE` status.
    pub async fn forward(&self, request: http::Request<Body>) -> Result<http::Response<Body>, ProxyError> {
        let response = self
            .channel
            .clone()
            .oneshot(request)
            .await
            .map_err(|e| ProxyError::UpstreamUnavailable { upstream: self.name.clone(), reason: chain(&e) })?;
        let upstream = self.name.clone();
        Ok(response.map(|body| Body::new(UpstreamBody { inner: body, upstream, finished: false })))
    }
}

/// A response body from upstream whose transport errors end the call with a
/// proper gRPC status instead of a reset stream.
struct UpstreamBody {
    inner: Body,
    upstream: Arc<str>,
    finished: bool,
}

impl HttpBody for UpstreamBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.finished {
            return Poll::Ready(None);
        }
        match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
            Some(Err(status)) => {
                self.finished = true;
                let status = Status::from(ProxyError::UpstreamUnavailable {
                    upstream: self.upstream.clone(),
                    reason: format!("connection lost mid-call: {}", status.message()),
                });
                let mut trailers = http::HeaderMap::new();
                Poll::Ready(Some(status.add_header(&mut trailers).map(|()| Frame::trailers(trailers))))
            }
            other => Poll::Ready(other),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
