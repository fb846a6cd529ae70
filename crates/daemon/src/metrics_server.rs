//! The operability endpoint (`metrics_listen`, off by default): plain HTTP/1.1
//! on a TCP address.
//!
//! - `GET /metrics`: every metric ([`crate::metrics`]); OpenMetrics text when
//!   the scraper's `Accept` asks for it (Prometheus does), else the Prometheus
//!   text format 0.0.4 (`curl`, `promtool check metrics`);
//! - `GET /healthz`: `200 ok` while the process serves;
//! - `GET /readyz`: `200` when the upstream runtime answers a CRI `Version`
//!   call within [`READY_TIMEOUT`], else `503` with the reason.
//!
//! The endpoint has no authentication: bind it to a loopback address or
//! firewall it.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Response, StatusCode, header};
use http_body_util::Full;
use hyper_util::rt::{TokioIo, TokioTimer};
use lazarus_proto::v1;
use tokio::net::TcpListener;

use crate::metrics::{self, Metrics};
use crate::upstream::Upstream;

/// How long `/readyz` waits for the upstream's `Version`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a client may take to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// What the endpoint answers from.
#[derive(Debug, Clone)]
pub struct Endpoint {
    metrics: Metrics,
    upstream: Upstream,
}

impl Endpoint {
    /// An endpoint serving `metrics` and checking `upstream`.
    pub fn new(metrics: Metrics, upstream: Upstream) -> Self {
        Endpoint { metrics, upstream }
    }

    /// Answers one request.
    pub async fn respond<B>(&self, request: &http::Request<B>) -> Response<Full<Bytes>> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into());
        }
        match request.uri().path() {
            "/metrics" => {
                let accept = request.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok());
                let (body, content_type) = if metrics::wants_openmetrics(accept) {
                    (self.metrics.encode_openmetrics(), metrics::OPENMETRICS_CONTENT_TYPE)
                } else {
                    (self.metrics.encode_prometheus_text(), metrics::PROMETHEUS_TEXT_CONTENT_TYPE)
                };
                let mut response = Response::new(Full::new(Bytes::from(body)));
                response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
                response
            }
            "/healthz" => text(StatusCode::OK, "ok\n".into()),
            "/readyz" => match self.ready().await {
                Ok(runtime) => text(StatusCode::OK, format!("ok: {runtime} at {}\n", self.upstream.name())),
                Err(reason) => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {reason}\n")),
            },
            _ => text(StatusCode::NOT_FOUND, "not found: try /metrics, /healthz or /readyz\n".into()),
        }
    }

    /// The upstream's name and version, or why it did not answer (naming it).
    async fn ready(&self) -> Result<String, String> {
        let request = v1::VersionRequest { version: "v1".into() };
        let call = self.upstream.unary::<_, v1::VersionResponse>("/runtime.v1.RuntimeService/Version", &request, &[]);
        match tokio::time::timeout(READY_TIMEOUT, call).await {
            Ok(Ok(version)) => Ok(format!("{} {}", version.runtime_name, version.runtime_version)),
            // lazarus's own error says "upstream … is unavailable: …".
            Ok(Err(status)) if status.message().starts_with("lazarus: ") => {
                Err(status.message().trim_start_matches("lazarus: ").to_owned())
            }
            Ok(Err(status)) => Err(format!(
                "upstream {} answered Version with {:?}: {}",
                self.upstream.name(),
                status.code(),
                status.message()
            )),
            Err(_) => Err(format!(
                "upstream {} did not answer Version within {}",
                self.upstream.name(),
                crate::duration::format(READY_TIMEOUT)
            )),
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// Serves `listener` until the task is dropped.
pub async fn run(listener: TcpListener, endpoint: Endpoint) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint: accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let endpoint = endpoint.clone();
                async move { Ok::<_, Infallible>(endpoint.respond(&request).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "metrics endpoint connection ended with an error");
            }
        });
    }
}

/// Updates the store size and each container's newest checkpoint time from
/// the store every `period` (checkpoints taken by `lazarus checkpoint`, in
/// another process, and retention show up here).
pub async fn refresh_store_metrics(store: std::sync::Arc<lazarus_store::Store>, metrics: Metrics, period: Duration) {
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let store = store.clone();
        // Reads the index and stats every blob: off the event loop.
        match crate::blocking::run(move || store_metrics(&store)).await {
            Ok((size, newest)) => {
                metrics.set_store_size(size);
                metrics.set_last_checkpoints(&newest);
            }
            Err(e) => tracing::debug!(error = %e, "reading the store for metrics failed"),
        }
    }
}

/// The store's size and the newest checkpoint time (Unix seconds) per
/// `namespace/pod/container`.
pub fn store_metrics(
    store: &lazarus_store::Store,
) -> Result<(u64, std::collections::HashMap<String, f64>), lazarus_store::StoreError> {
    use lazarus_format::annotations as ann;
    let size = store.total_size()?;
    let mut newest = std::collections::HashMap::new();
    for entry in store.list()? {
        let (Some(key), Some(created)) = (entry.annotation(ann::CONTAINER_KEY), entry.annotation(ann::CREATED)) else {
            continue;
        };
        let Some(time) = crate::checkpoint::schedule::parse_rfc3339(created) else { continue };
        let secs = time.duration_since(std::time::SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        let slot = newest.entry(key.to_owned()).or_insert(secs);
        if secs > *slot {
            *slot = secs;
        }
    }
    Ok((size, newest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint() -> Endpoint {
        let config = crate::config::Config::resolve(
            crate::config::FileConfig::default(),
            crate::config::Overrides {
                upstream: Some("unix:///nonexistent/lazarus-test/containerd.sock".into()),
                ..Default::default()
            },
        )
        .expect("config");
        Endpoint::new(Metrics::new(), Upstream::new(&config).expect("upstream"))
    }

    async fn get(endpoint: &Endpoint, path: &str, accept: Option<&str>) -> (StatusCode, String, String) {
        use http_body_util::BodyExt;
        let mut request = http::Request::builder().uri(path);
        if let Some(accept) = accept {
            request = request.header(header::ACCEPT, accept);
        }
        let response = endpoint.respond(&request.body(()).expect("request")).await;
        let status = response.status();
        let content_type =
            response.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        let body = response.into_body().collect().await.expect("body").to_bytes();
        (status, content_type, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn health_readiness_and_formats() {
        let endpoint = endpoint();
        assert_eq!(get(&endpoint, "/healthz", None).await.0, StatusCode::OK);
        let (status, _, body) = get(&endpoint, "/readyz", None).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("/nonexistent/lazarus-test/containerd.sock"), "{body}");
        let (status, content_type, body) =
            get(&endpoint, "/metrics", Some("application/openmetrics-text;version=1.0.0,text/plain;q=0.5")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type, metrics::OPENMETRICS_CONTENT_TYPE);
        assert!(body.ends_with("# EOF\n"), "{body}");
        let (_, content_type, body) = get(&endpoint, "/metrics", None).await;
        assert_eq!(content_type, metrics::PROMETHEUS_TEXT_CONTENT_TYPE);
        assert!(body.contains("# TYPE lazarus_checkpoints_total counter"), "{body}");
        assert_eq!(get(&endpoint, "/nothing", None).await.0, StatusCode::NOT_FOUND);
    }
}
