//! The request path: one function every CRI call goes through.

use bytes::Bytes;
use tonic::body::Body;

use crate::error::ProxyError;
use crate::upstream::Upstream;
use crate::{intercept, passthrough};

/// The proxy's shared state; cheap to clone (one per connection).
#[derive(Debug, Clone)]
pub struct Proxy {
    upstream: Upstream,
    checkpointer: Option<crate::checkpoint::Checkpointer>,
    restorer: Option<crate::restore::Restorer>,
}

impl Proxy {
    /// A proxy in front of `upstream`.
    pub fn new(upstream: Upstream) -> Self {
        Proxy { upstream, checkpointer: None, restorer: None }
    }

    /// Enables checkpoint-on-stop with `engine`.
    pub fn with_checkpointer(mut self, engine: crate::checkpoint::Checkpointer) -> Self {
        self.checkpointer = Some(engine);
        self
    }

    /// Enables restores with `engine`.
    pub fn with_restorer(mut self, engine: crate::restore::Restorer) -> Self {
        self.restorer = Some(engine);
        self
    }

    /// The upstream runtime.
    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// Handles one gRPC call. Never fails at the HTTP level: errors are gRPC
    /// statuses (see [`ProxyError`]).
    pub async fn handle<B>(&self, request: http::Request<B>) -> http::Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let result = match intercept::route(request.uri().path()) {
            Some(which) => {
                intercept::handle(which, &self.upstream, self.checkpointer.as_ref(), self.restorer.as_ref(), request)
                    .await
            }
            None => passthrough::forward(&self.upstream, request).await,
        };
        result.unwrap_or_else(status_response)
    }
}

fn status_response(err: ProxyError) -> http::Response<Body> {
    match &err {
        ProxyError::UpstreamUnavailable { .. } => tracing::warn!(error = %err, "call failed"),
        _ => tracing::info!(error = %err, "call rejected"),
    }
    tonic::Status::from(err).into_http()
}
