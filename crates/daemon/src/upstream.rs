//! The connection to the runtime lazarus fronts (containerd).
//!
//! One HTTP/2 connection, shared by all calls and dialled lazily. When the
//! runtime is down a call fails at once with `UNAVAILABLE`; the next call
//! dials again, so lazarus follows containerd restarts without restarting
//! itself.
//!
//! The `h2` crate is used directly: a CRI request is always one message
//! (the CRI has no client-streaming methods), so lazarus queues its headers
//! and its data together and they leave in one write — with hyper's client
//! they leave in two, each waking containerd. Responses stream through as
//! they arrive (server-streaming methods such as `GetContainerEvents`).

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{Reason, RecvStream};
use http::uri::{Authority, PathAndQuery, Scheme};
use http_body::{Body as HttpBody, Frame};
use tonic::Status;
use tonic::body::Body;

use crate::config::Config;
use crate::error::{ProxyError, chain};

/// HTTP/2 receive window per stream and connection: large enough that a
/// 16 MiB CRI message does not stall on window updates.
const RECEIVE_WINDOW: u32 = 4 * 1024 * 1024;

/// Where the upstream listens.
#[derive(Debug, Clone)]
enum Target {
    Unix(PathBuf),
    Tcp(String),
}

/// The upstream runtime endpoint.
#[derive(Debug, Clone)]
pub struct Upstream {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    name: Arc<str>,
    target: Target,
    authority: Authority,
    connect_timeout: Duration,
    /// The open connection, if any.
    connection: Mutex<Option<Connection>>,
    /// Serializes dialling so a burst of calls opens one connection.
    dialling: tokio::sync::Mutex<()>,
}

#[derive(Debug, Clone)]
struct Connection {
    sender: SendRequest<Bytes>,
    /// Set by the connection's task when it ends.
    closed: Arc<AtomicBool>,
}

impl Upstream {
    /// Prepares (but does not dial) the connection to `config.upstream`.
    pub fn new(config: &Config) -> Result<Self, ProxyError> {
        let name: Arc<str> = config.upstream.as_str().into();
        let invalid = |reason: String| ProxyError::UpstreamUnavailable { upstream: name.clone(), reason };
        let (target, authority) = if let Some(path) = config.upstream.strip_prefix("unix://") {
            (Target::Unix(PathBuf::from(path)), Authority::from_static("localhost"))
        } else {
            let uri: http::Uri = config.upstream.parse().map_err(|e| invalid(chain(&e)))?;
            let authority = uri.authority().cloned().ok_or_else(|| invalid("no host:port".into()))?;
            let port = authority.port_u16().unwrap_or(80);
            (Target::Tcp(format!("{}:{port}", authority.host())), authority)
        };
        Ok(Upstream {
            inner: Arc::new(Inner {
                name,
                target,
                authority,
                connect_timeout: config.upstream_connect_timeout,
                connection: Mutex::new(None),
                dialling: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// The endpoint, as configured.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    fn unavailable(&self, reason: String) -> ProxyError {
        ProxyError::UpstreamUnavailable { upstream: self.inner.name.clone(), reason }
    }

    fn open_connection(&self) -> Option<Connection> {
        let guard = self.inner.connection.lock().unwrap_or_else(PoisonError::into_inner);
        guard.as_ref().filter(|c| !c.closed.load(Ordering::Acquire)).cloned()
    }

    /// The open connection, or a new one.
    async fn connection(&self) -> Result<Connection, ProxyError> {
        if let Some(connection) = self.open_connection() {
            return Ok(connection);
        }
        let _dialling = self.inner.dialling.lock().await;
        if let Some(connection) = self.open_connection() {
            return Ok(connection);
        }
        let connection = tokio::time::timeout(self.inner.connect_timeout, self.dial())
            .await
            .map_err(|_| self.unavailable(format!("connecting timed out after {:?}", self.inner.connect_timeout)))??;
        *self.inner.connection.lock().unwrap_or_else(PoisonError::into_inner) = Some(connection.clone());
        tracing::info!(upstream = %self.inner.name, "connected to the upstream runtime");
        Ok(connection)
    }

    async fn dial(&self) -> Result<Connection, ProxyError> {
        let dial_error = |e: std::io::Error| self.unavailable(format!("connecting: {e}"));
        let mut builder = h2::client::Builder::new();
        builder.initial_window_size(RECEIVE_WINDOW).initial_connection_window_size(RECEIVE_WINDOW);
        let closed = Arc::new(AtomicBool::new(false));
        let sender = match &self.inner.target {
            Target::Unix(path) => {
                let stream = tokio::net::UnixStream::connect(path).await.map_err(dial_error)?;
                let (sender, connection) = builder.handshake(stream).await.map_err(|e| self.unavailable(chain(&e)))?;
                self.drive(connection, closed.clone());
                sender
            }
            Target::Tcp(address) => {
                let stream = tokio::net::TcpStream::connect(address).await.map_err(dial_error)?;
                stream.set_nodelay(true).map_err(dial_error)?;
                let (sender, connection) = builder.handshake(stream).await.map_err(|e| self.unavailable(chain(&e)))?;
                self.drive(connection, closed.clone());
                sender
            }
        };
        Ok(Connection { sender, closed })
    }

    /// Runs the connection's I/O until it ends, then marks it closed.
    fn drive<T>(&self, connection: h2::client::Connection<T, Bytes>, closed: Arc<AtomicBool>)
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let name = self.inner.name.clone();
        tokio::spawn(async move {
            let result = connection.await;
            closed.store(true, Ordering::Release);
            match result {
                Ok(()) => tracing::info!(upstream = %name, "upstream connection closed"),
                Err(e) => tracing::warn!(upstream = %name, error = %chain(&e), "upstream connection lost"),
            }
        });
    }

    /// Sends one unary gRPC request (`head` and the whole `body`) upstream,
    /// bytes untouched, and returns the response as it streams back, frame
    /// for frame as the upstream sends it (a Trailers-Only answer stays one
    /// HEADERS frame). A transport failure becomes
    /// [`ProxyError::UpstreamUnavailable`] (one while the response streams
    /// ends it with an `UNAVAILABLE` status); a stream the upstream resets
    /// becomes [`ProxyError::UpstreamReset`] (mid-response: the body ends
    /// with an error carrying the same reset, see [`reset_reason`]). A request
    /// the upstream never processed is sent once more: on a new connection
    /// when the old one was going away (GOAWAY) or gone before it was sent,
    /// on the same one when the stream was refused (REFUSED_STREAM).
    pub async fn forward(&self, head: http::request::Parts, body: Bytes) -> Result<http::Response<Body>, ProxyError> {
        let mut request = http::Request::from_parts(head, ());
        let mut uri = std::mem::take(request.uri_mut()).into_parts();
        uri.scheme = Some(Scheme::HTTP);
        uri.authority = Some(self.inner.authority.clone());
        if uri.path_and_query.is_none() {
            uri.path_and_query = Some(PathAndQuery::from_static("/"));
        }
        *request.uri_mut() = http::Uri::from_parts(uri).map_err(|e| self.unavailable(chain(&e)))?;
        *request.version_mut() = http::Version::HTTP_2;

        let mut retried = false;
        loop {
            match self.send(request.clone(), body.clone()).await {
                Ok(response) => return Ok(response),
                Err(Attempt::NotProcessed(e)) if !retried => {
                    tracing::debug!(
                        upstream = %self.inner.name,
                        method = request.uri().path(),
                        error = %chain(&e),
                        "upstream did not take the request; sending it on a new connection"
                    );
                    retried = true;
                }
                Err(Attempt::NotProcessed(e) | Attempt::Lost(e)) => return Err(self.unavailable(chain(&e))),
                Err(Attempt::Reset(reason)) => {
                    return Err(ProxyError::UpstreamReset { upstream: self.inner.name.clone(), reason });
                }
                Err(Attempt::Failed(e)) => return Err(e),
            }
        }
    }

    /// One attempt of [`Upstream::forward`].
    async fn send(&self, request: http::Request<()>, body: Bytes) -> Result<http::Response<Body>, Attempt> {
        let connection = self.connection().await.map_err(Attempt::Failed)?;
        let closed = |e: &h2::Error| {
            if e.is_io() || e.is_go_away() {
                connection.closed.store(true, Ordering::Release);
            }
        };
        // Not sent at all (the connection is going away or gone): safe to send again.
        let not_sent = |e: h2::Error| {
            closed(&e);
            Attempt::NotProcessed(e)
        };
        let mut sender = connection.sender.clone().ready().await.map_err(not_sent)?;
        let end_of_stream = body.is_empty();
        let (response, mut stream) = sender.send_request(request, end_of_stream).map_err(not_sent)?;
        if !end_of_stream {
            // Queued with the headers: both go out in the connection's next write.
            stream.send_data(body, true).map_err(|e| {
                closed(&e);
                Attempt::Lost(e)
            })?;
        }
        let response = response.await.map_err(|e| {
            closed(&e);
            match e.reason() {
                // Beyond the GOAWAY's last stream id, or refused: never processed.
                Some(Reason::REFUSED_STREAM) if e.is_remote() => Attempt::NotProcessed(e),
                Some(_) if e.is_go_away() && e.is_remote() => Attempt::NotProcessed(e),
                Some(reason) if e.is_reset() && e.is_remote() => Attempt::Reset(reason),
                _ => Attempt::Lost(e),
            }
        })?;
        let upstream = self.inner.name.clone();
        // A body that is over already (Trailers-Only) reports it, so the
        // answer leaves lazarus as one HEADERS frame with END_STREAM.
        Ok(response.map(|recv| Body::new(UpstreamBody { recv, upstream, state: BodyState::Data })))
    }
}

/// How one attempt to send a request upstream failed.
enum Attempt {
    /// Not processed by the upstream (not sent, GOAWAY, REFUSED_STREAM): safe to send again.
    NotProcessed(h2::Error),
    /// The connection failed with the request possibly processed.
    Lost(h2::Error),
    /// The upstream reset the stream with this code.
    Reset(Reason),
    /// No connection.
    Failed(ProxyError),
}

/// The code a gRPC client derives from an HTTP/2 RST_STREAM (gRPC's
/// PROTOCOL-HTTP2 error table).
pub fn code_for_reset(reason: Reason) -> tonic::Code {
    match reason {
        Reason::REFUSED_STREAM => tonic::Code::Unavailable,
        Reason::CANCEL => tonic::Code::Cancelled,
        Reason::ENHANCE_YOUR_CALM => tonic::Code::ResourceExhausted,
        Reason::INADEQUATE_SECURITY => tonic::Code::PermissionDenied,
        _ => tonic::Code::Internal,
    }
}

/// The upstream's RST_STREAM code carried by a response body's error: the
/// body ends with it when the upstream resets a stream mid-response, and
/// lazarus resets the client's stream with the same code.
pub fn reset_reason(status: &Status) -> Option<Reason> {
    std::error::Error::source(status)?.downcast_ref::<h2::Error>()?.reason()
}

impl Upstream {
    /// Makes a unary gRPC call of lazarus's own (not a forwarded one) and
    /// decodes the answer. `headers` are extra metadata, e.g.
    /// `containerd-namespace`.
    pub async fn unary<Req, Resp>(
        &self,
        path: &str,
        request: &Req,
        headers: &[(&'static str, &str)],
    ) -> Result<Resp, Status>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        use http_body_util::BodyExt;
        let mut builder = http::Request::builder()
            .method(http::Method::POST)
            .uri(path)
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let (head, ()) =
            builder.body(()).map_err(|e| Status::internal(format!("building {path} request: {e}")))?.into_parts();
        let body = crate::grpc_frame::encode(&request.encode_to_vec());
        let response = self.forward(head, body).await.map_err(Status::from)?;
        let (parts, body) = response.into_parts();
        let collected = body.collect().await?;
        let status = collected
            .trailers()
            .and_then(Status::from_header_map)
            .or_else(|| Status::from_header_map(&parts.headers))
            .unwrap_or_else(|| Status::unknown(format!("{path}: answer without grpc-status")));
        if status.code() != tonic::Code::Ok {
            return Err(status);
        }
        let raw = collected.to_bytes();
        let message = crate::grpc_frame::unary_message(&raw, usize::MAX)
            .map_err(|e| Status::internal(format!("{path}: {}", e.reason())))?;
        Resp::decode(message).map_err(|e| Status::internal(format!("{path}: decoding the response: {e}")))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyState {
    Data,
    Trailers,
    Done,
}

/// A response body streaming from upstream. Flow-control capacity is handed
/// back as data is passed on; a transport error ends the call with a proper
/// gRPC status in trailers instead of a reset stream.
struct UpstreamBody {
    recv: RecvStream,
    upstream: Arc<str>,
    state: BodyState,
}

impl UpstreamBody {
    /// Ends the body after a receive error: a reset by the upstream is passed
    /// on as the same reset; anything else ends the call with `UNAVAILABLE`
    /// in trailers.
    fn lost(&mut self, e: h2::Error) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        self.state = BodyState::Done;
        if let (Some(reason), true, true) = (e.reason(), e.is_reset(), e.is_remote()) {
            let mut status = Status::new(
                code_for_reset(reason),
                format!("lazarus: upstream {} reset the stream mid-response: {reason:?}", self.upstream),
            );
            status.set_source(Arc::new(e));
            return Poll::Ready(Some(Err(status)));
        }
        let status = Status::from(ProxyError::UpstreamUnavailable {
            upstream: self.upstream.clone(),
            reason: format!("connection lost mid-call: {}", chain(&e)),
        });
        let mut trailers = http::HeaderMap::new();
        Poll::Ready(Some(status.add_header(&mut trailers).map(|()| Frame::trailers(trailers))))
    }
}

impl HttpBody for UpstreamBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        loop {
            match self.state {
                BodyState::Data => match self.recv.poll_data(cx) {
                    Poll::Ready(Some(Ok(data))) => {
                        let _ = self.recv.flow_control().release_capacity(data.len());
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Poll::Ready(Some(Err(e))) => return self.lost(e),
                    Poll::Ready(None) => self.state = BodyState::Trailers,
                    Poll::Pending => return Poll::Pending,
                },
                BodyState::Trailers => {
                    return match self.recv.poll_trailers(cx) {
                        Poll::Ready(Ok(trailers)) => {
                            self.state = BodyState::Done;
                            Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))))
                        }
                        Poll::Ready(Err(e)) => self.lost(e),
                        Poll::Pending => Poll::Pending,
                    };
                }
                BodyState::Done => return Poll::Ready(None),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        // In `Data` with the receive half closed and nothing buffered (no
        // data, no trailers): a Trailers-Only answer, or one fully read.
        match self.state {
            BodyState::Data => self.recv.is_end_stream(),
            BodyState::Trailers => false,
            BodyState::Done => true,
        }
    }
}
