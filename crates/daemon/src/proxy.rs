//! The request path: one function every CRI call goes through.

use bytes::Bytes;
use tonic::body::Body;

use crate::error::ProxyError;
use crate::metrics::{self, MeteredBody, Metrics};
use crate::upstream::Upstream;
use crate::{intercept, passthrough};

/// The proxy's shared state; cheap to clone (one per connection).
#[derive(Debug, Clone)]
pub struct Proxy {
    upstream: Upstream,
    checkpointer: Option<crate::checkpoint::Checkpointer>,
    restorer: Option<crate::restore::Restorer>,
    metrics: Metrics,
}

impl Proxy {
    /// A proxy in front of `upstream`.
    pub fn new(upstream: Upstream) -> Self {
        Proxy { upstream, checkpointer: None, restorer: None, metrics: Metrics::new() }
    }

    /// Counts calls into `metrics` (shared with the engines and the endpoint).
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
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

    /// Handles one gRPC call. Errors are gRPC statuses (see [`ProxyError`]),
    /// sent Trailers-Only; the one exception is a stream the upstream reset,
    /// which fails with [`ResetStream`] so the client's stream is reset with
    /// the same code. The call is counted in the metrics (method, status
    /// code, duration) when its status is known: at once for a trailers-only
    /// answer or a reset, else when the response body's trailers pass.
    pub async fn handle<B>(&self, request: http::Request<B>) -> Result<http::Response<MeteredBody<Body>>, ResetStream>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let started = std::time::Instant::now();
        let method = metrics::method_label(request.uri().path());
        let result = match intercept::route(request.uri().path()) {
            Some(which) => {
                intercept::handle(which, &self.upstream, self.checkpointer.as_ref(), self.restorer.as_ref(), request)
                    .await
            }
            None => passthrough::forward(&self.upstream, request).await,
        };
        let response = match result {
            Ok(response) => response,
            Err(ProxyError::UpstreamReset { upstream, reason }) => {
                tracing::info!(upstream = %upstream, method, reason = ?reason, "upstream reset the stream; resetting the client's");
                let code = crate::upstream::code_for_reset(reason);
                self.metrics.cri_call(method, metrics::code_name(code), started.elapsed());
                return Err(ResetStream(h2::Error::from(reason)));
            }
            Err(err) => status_response(err),
        };
        Ok(match metrics::status_code_name(response.headers()) {
            // Trailers-only (an error, lazarus's own or the runtime's): the status is known now.
            Some(code) => {
                self.metrics.cri_call(method, code, started.elapsed());
                response.map(MeteredBody::counted)
            }
            None => response.map(|body| MeteredBody::new(body, self.metrics.clone(), method, started)),
        })
    }
}

/// The answer to a call whose upstream stream was reset: the HTTP/2 server
/// resets the client's stream with the code of the error it carries (hyper
/// looks for an `h2::Error` among an error's sources).
#[derive(Debug, thiserror::Error)]
#[error("resetting the stream as the upstream did")]
pub struct ResetStream(#[source] h2::Error);

impl ResetStream {
    /// The RST_STREAM code.
    pub fn reason(&self) -> Option<h2::Reason> {
        self.0.reason()
    }
}

/// A lazarus-made error: Trailers-Only (tonic's `into_http` gives an empty
/// body that reports its end, so hyper sends one HEADERS frame with END_STREAM).
fn status_response(err: ProxyError) -> http::Response<Body> {
    match &err {
        ProxyError::UpstreamUnavailable { .. } => tracing::warn!(error = %err, "call failed"),
        _ => tracing::info!(error = %err, "call rejected"),
    }
    tonic::Status::from(err).into_http()
}
