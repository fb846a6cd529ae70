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
use http_body::Frame;
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
    /// `RuntimeService/RunPodSandbox`: pods asking for a restore are put on
    /// lazarus's runtime handler.
    RunPodSandbox,
    /// `RuntimeService/CreateContainer`: a restore is prepared (or refused) first.
    CreateContainer,
    /// `RuntimeService/StartContainer`: the outcome of a restore is recorded.
    StartContainer,
    /// `RuntimeService/RemoveContainer`: the container's restore plan goes too.
    RemoveContainer,
}

/// Which interception, if any, applies to a gRPC path. Called for every call:
/// a plain string comparison, no allocation.
pub fn route(path: &str) -> Option<Intercept> {
    match path {
        "/runtime.v1.RuntimeService/Version" => Some(Intercept::Version),
        "/runtime.v1.RuntimeService/StopContainer" => Some(Intercept::StopContainer),
        "/runtime.v1.RuntimeService/RunPodSandbox" => Some(Intercept::RunPodSandbox),
        "/runtime.v1.RuntimeService/CreateContainer" => Some(Intercept::CreateContainer),
        "/runtime.v1.RuntimeService/StartContainer" => Some(Intercept::StartContainer),
        "/runtime.v1.RuntimeService/RemoveContainer" => Some(Intercept::RemoveContainer),
        _ => None,
    }
}

/// Handles an intercepted call.
pub async fn handle<B>(
    which: Intercept,
    upstream: &Upstream,
    checkpointer: Option<&crate::checkpoint::Checkpointer>,
    restorer: Option<&crate::restore::Restorer>,
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
        Intercept::RunPodSandbox => {
            let mut call = UnaryCall::<v1::RunPodSandboxRequest>::read(request).await?;
            if let (Some(req), Some(restorer)) = (call.message.take(), restorer) {
                if let Some(field) = crate::restore::engine::runtime_handler_patch(restorer, &req) {
                    call.append_to_message(&field);
                }
                if let Some(config) = &req.config {
                    restorer.prefetch(config);
                }
            }
            Ok(call.forward::<v1::RunPodSandboxResponse>(upstream).await?.into_http())
        }
        Intercept::CreateContainer => {
            let mut call = UnaryCall::<v1::CreateContainerRequest>::read(request).await?;
            let (Some(req), Some(restorer)) = (call.message.take(), restorer) else {
                return Ok(call.forward::<v1::CreateContainerResponse>(upstream).await?.into_http());
            };
            let staged = restorer.prepare(&req, call.deadline()).await.map_err(|e| restore_error(&req, e))?;
            let response = call.forward::<v1::CreateContainerResponse>(upstream).await?;
            if let (Some(staged), Some(created)) = (staged, &response.message)
                && let Err(source) = restorer.commit(staged, &created.container_id).await
            {
                // Never let it start fresh when a restore was promised: it was taken back.
                return Err(restore_error(&req, source));
            }
            Ok(response.into_http())
        }
        Intercept::StartContainer => {
            let call = UnaryCall::<v1::StartContainerRequest>::read(request).await?;
            let id = call.message.as_ref().map(|r| r.container_id.clone());
            let response = call.forward::<v1::StartContainerResponse>(upstream).await?;
            if let (Some(id), Some(restorer)) = (id, restorer)
                && restorer.has_plan(&id)
            {
                restorer.started(&id, response.error_message().as_deref());
            }
            Ok(response.into_http())
        }
        Intercept::RemoveContainer => {
            let call = UnaryCall::<v1::RemoveContainerRequest>::read(request).await?;
            let id = call.message.as_ref().map(|r| r.container_id.clone());
            let response = call.forward::<v1::RemoveContainerResponse>(upstream).await?;
            if let (Some(id), Some(restorer), true) = (id, restorer, response.message.is_some()) {
                restorer.removed(&id).await;
            }
            Ok(response.into_http())
        }
    }
}

/// A refused restore, with the container and pod it was for.
fn restore_error(req: &v1::CreateContainerRequest, source: crate::restore::RestoreError) -> ProxyError {
    let pod = req.sandbox_config.as_ref().and_then(|c| c.metadata.as_ref());
    ProxyError::Restore {
        container: req.config.as_ref().and_then(|c| c.metadata.as_ref()).map(|m| m.name.clone()).unwrap_or_default(),
        pod: pod.map(|m| format!("{}/{}", m.namespace, m.name)).unwrap_or_default(),
        source: Box::new(source),
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

    /// Appends encoded protobuf fields to the request message. Protobuf's
    /// last-field-wins rule makes an appended scalar field replace an earlier
    /// one, and every other byte — unknown fields included — stays as it was.
    pub fn append_to_message(&mut self, fields: &[u8]) {
        let Ok(message) = grpc_frame::unary_message(&self.raw, MAX_MESSAGE_SIZE) else { return };
        let mut out = Vec::with_capacity(message.len() + fields.len());
        out.extend_from_slice(&message);
        out.extend_from_slice(fields);
        self.raw = grpc_frame::encode(&out);
        self.parts.headers.remove(http::header::CONTENT_LENGTH);
    }

    /// The caller's deadline, from its `grpc-timeout` header.
    pub fn deadline(&self) -> Option<std::time::Duration> {
        parse_grpc_timeout(self.parts.headers.get("grpc-timeout")?.to_str().ok()?)
    }

    /// Forwards the original bytes upstream and reads the response.
    pub async fn forward<R: Message + Default>(self, upstream: &Upstream) -> Result<UnaryResponse<R>, ProxyError> {
        let method = self.parts.uri.path().to_owned();
        let response = upstream.forward(self.parts, self.raw).await?;
        let (parts, body) = response.into_parts();
        let collected = body.collect().await.map_err(|status| match crate::upstream::reset_reason(&status) {
            // Reset mid-response: the client gets the same reset (and no headers: they were buffered).
            Some(reason) => ProxyError::UpstreamReset { upstream: upstream.name().into(), reason },
            None => ProxyError::UpstreamUnavailable {
                upstream: upstream.name().into(),
                reason: status.message().to_owned(),
            },
        })?;
        let trailers = collected.trailers().cloned();
        let raw = collected.to_bytes();
        // A failed call has an empty body (the status is in the headers or
        // trailers); there is nothing to decode then.
        let message = if raw.is_empty() { None } else { decode(&method, "response", &raw)? };
        Ok(UnaryResponse { parts, raw, trailers, message })
    }
}

/// Parses a `grpc-timeout` value: up to 8 digits and a unit (`H`, `M`, `S`,
/// `m`, `u`, `n`).
pub fn parse_grpc_timeout(value: &str) -> Option<std::time::Duration> {
    use std::time::Duration;
    let (digits, unit) = value.split_at_checked(value.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
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
                // Cut off at the limit: the real size is not known.
                ProxyError::MessageTooLarge { method: method.to_owned(), size: None, limit: MAX_MESSAGE_SIZE }
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
    /// The upstream's error message when the call failed (`grpc-status` ≠ 0).
    pub fn error_message(&self) -> Option<String> {
        let headers = self.trailers.as_ref().filter(|t| t.contains_key("grpc-status")).unwrap_or(&self.parts.headers);
        let status = tonic::Status::from_header_map(headers)?;
        (status.code() != tonic::Code::Ok).then(|| status.message().to_owned())
    }

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
            Err(ProxyError::MessageTooLarge { method: method.to_owned(), size: Some(size), limit: MAX_MESSAGE_SIZE })
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

    /// True for a Trailers-Only answer (no data, no trailers: the status is
    /// in the headers), so it leaves lazarus as one HEADERS frame.
    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    // No exact size hint: hyper would add a `content-length` the upstream did not send.
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

    #[test]
    fn grpc_timeouts_parse() {
        use std::time::Duration;
        assert_eq!(parse_grpc_timeout("120S"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("1500m"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
        assert_eq!(parse_grpc_timeout("10x"), None);
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
