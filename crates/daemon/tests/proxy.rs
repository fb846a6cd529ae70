//! The proxy's request path against a fake upstream gRPC server on a unix
//! socket: raw forwarding, interception, streaming, upstream failures and
//! graceful shutdown. (The real containerd is exercised by the e2e crate.)

#![allow(clippy::disallowed_methods, reason = "test code: the blocking rule is for the daemon's event loop")]

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use lazarus_daemon::config::{Config, FileConfig, Overrides};
use lazarus_daemon::grpc_frame;
use prost::Message;
use tokio::sync::{Notify, oneshot};
use tonic::Code;
use tonic::body::Body;
use tonic::transport::{Channel, Endpoint};
use tower::ServiceExt;

const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A fake gRPC server that echoes request bytes, paths and metadata.
struct FakeUpstream {
    task: tokio::task::JoinHandle<()>,
    /// Notified: release the held-back last message of `/test.Stream/Hold`.
    release: Arc<Notify>,
    /// Notified: drop every open connection.
    kill: Arc<Notify>,
    /// Notified by the upstream when a `/Slow` call has arrived.
    slow_arrived: Arc<Notify>,
    /// Notified: answer the held `/Slow` call.
    slow_finish: Arc<Notify>,
}

impl FakeUpstream {
    async fn start(path: &Path) -> FakeUpstream {
        let _ = std::fs::remove_file(path);
        let listener = tokio::net::UnixListener::bind(path).expect("bind fake upstream");
        let release = Arc::new(Notify::new());
        let kill = Arc::new(Notify::new());
        let slow = Slow { arrived: Arc::new(Notify::new()), finish: Arc::new(Notify::new()) };
        let (release2, kill2, slow2) = (release.clone(), kill.clone(), slow.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let release = release2.clone();
                let kill = kill2.clone();
                let slow = slow2.clone();
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req| fake_handler(req, release.clone(), slow.clone()));
                    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = conn => {}
                        () = kill.notified() => {}
                    }
                });
            }
        });
        FakeUpstream { task, release, kill, slow_arrived: slow.arrived, slow_finish: slow.finish }
    }

    fn stop(self, path: &Path) {
        self.kill.notify_waiters();
        self.task.abort();
        let _ = std::fs::remove_file(path);
    }
}

type FakeBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// A `/Slow` call says it arrived and is answered when told.
#[derive(Clone)]
struct Slow {
    arrived: Arc<Notify>,
    finish: Arc<Notify>,
}

async fn fake_handler(
    req: http::Request<hyper::body::Incoming>,
    release: Arc<Notify>,
    slow: Slow,
) -> Result<http::Response<FakeBody>, Infallible> {
    let path = req.uri().path().to_owned();
    let meta = req.headers().get("x-meta").cloned();
    let body = req.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().expect("header"));
    trailers.insert("x-echo-path", path.parse().expect("header"));
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(8);
    if path.ends_with("/Hold") {
        tokio::spawn(async move {
            let _ = tx.send(Ok(Frame::data(grpc_frame::encode(b"first")))).await;
            release.notified().await;
            let _ = tx.send(Ok(Frame::data(grpc_frame::encode(b"second")))).await;
            let _ = tx.send(Ok(Frame::trailers(trailers))).await;
        });
    } else {
        if path.ends_with("/Slow") {
            slow.arrived.notify_one();
            slow.finish.notified().await;
        }
        let _ = tx.send(Ok(Frame::data(body))).await;
        let _ = tx.send(Ok(Frame::trailers(trailers))).await;
    }
    let mut response = http::Response::builder().header("content-type", "application/grpc");
    if let Some(meta) = meta {
        response = response.header("x-meta", meta);
    }
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    Ok(response.body(BodyExt::boxed(body)).expect("response"))
}

/// A lazarus proxy running in this process, as `lazarus serve` runs it.
struct RunningProxy {
    listen: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningProxy {
    async fn start(dir: &Path, upstream: &Path) -> RunningProxy {
        let listen = dir.join("lazarus/cri.sock");
        let config = Config::resolve(
            FileConfig {
                shutdown_timeout: Some("5s".into()),
                // Temporary paths only: restore_dir defaults to <state_dir>/restore.
                ..FileConfig::default()
            },
            Overrides {
                listen: Some(listen.clone()),
                upstream: Some(format!("unix://{}", upstream.display())),
                state_dir: Some(dir.join("state")),
                run_dir: Some(dir.join("run")),
                ..Overrides::default()
            },
        )
        .expect("config");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            lazarus_daemon::server::serve(&config, async {
                let _ = stopped.await;
            })
            .await
            .expect("serve");
        });
        for _ in 0..200 {
            if listen.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(listen.exists(), "proxy socket did not appear");
        RunningProxy { listen, stop: Some(stop), task }
    }

    fn client(&self) -> Channel {
        Endpoint::from_shared(format!("unix://{}", self.listen.display())).expect("endpoint").connect_lazy()
    }

    /// Tells the proxy to stop; it stops accepting at once and drains open calls.
    fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    async fn shutdown(mut self) {
        self.begin_shutdown();
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("proxy stops within its grace period")
            .expect("proxy task");
    }
}

struct Reply {
    headers: HeaderMap,
    data: Bytes,
    trailers: Option<HeaderMap>,
}

impl Reply {
    fn status(&self) -> tonic::Status {
        self.trailers
            .as_ref()
            .and_then(tonic::Status::from_header_map)
            .or_else(|| tonic::Status::from_header_map(&self.headers))
            .expect("a grpc-status in headers or trailers")
    }
}

fn grpc_request(path: &str, body: Bytes) -> http::Request<Body> {
    http::Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("x-meta", "kept")
        .body(Body::new(Full::new(body)))
        .expect("request")
}

async fn call(channel: &Channel, path: &str, body: Bytes) -> Reply {
    let response = tokio::time::timeout(CALL_TIMEOUT, channel.clone().oneshot(grpc_request(path, body)))
        .await
        .expect("call finished in time")
        .expect("http call");
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.expect("body");
    Reply { headers: parts.headers, trailers: collected.trailers().cloned(), data: collected.to_bytes() }
}

/// A VersionRequest carrying field 99, which no CRI version defines.
fn version_request_with_unknown_field() -> Bytes {
    let mut message = lazarus_proto::v1::VersionRequest { version: "v1".into() }.encode_to_vec();
    message.extend_from_slice(&[0x98, 0x06, 0x2a]);
    grpc_frame::encode(&message)
}

#[tokio::test]
async fn unknown_methods_and_fields_pass_through_byte_for_byte() {
    let dir = tempfile::tempdir().expect("tempdir");
    let upstream_path = dir.path().join("upstream.sock");
    let upstream = FakeUpstream::start(&upstream_path).await;
    let proxy = RunningProxy::start(dir.path(), &upstream_path).await;
    let client = proxy.client();

    let body = version_request_with_unknown_field();
    for path in [
        "/runtime.v1.RuntimeService/SomeMethodFromTheFuture",
        "/runtime.v1.ImageService/ListImages",
        // intercepted: decoded on the side, forwarded with the original bytes
        "/runtime.v1.RuntimeService/Version",
    ] {
        let reply = call(&client, path, body.clone()).await;
        assert_eq!(reply.data, body, "{path}: bytes changed");
        let trailers = reply.trailers.as_ref().expect("trailers");
        assert_eq!(trailers.get("x-echo-path").expect("echo path"), path);
        assert_eq!(reply.headers.get("x-meta").expect("metadata"), "kept", "{path}");
        assert_eq!(reply.status().code(), Code::Ok, "{path}");
    }
    proxy.shutdown().await;
    upstream.stop(&upstream_path);
}

#[tokio::test]
async fn server_streams_are_relayed_as_they_happen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let upstream_path = dir.path().join("upstream.sock");
    let upstream = FakeUpstream::start(&upstream_path).await;
    let proxy = RunningProxy::start(dir.path(), &upstream_path).await;

    let response = proxy
        .client()
        .oneshot(grpc_request("/runtime.v1.RuntimeService/Hold", grpc_frame::encode(b"")))
        .await
        .expect("call");
    let mut body = response.into_body();
    // The first message must arrive while upstream still holds the second.
    let first = tokio::time::timeout(CALL_TIMEOUT, body.frame())
        .await
        .expect("first message relayed before the stream ends")
        .expect("a frame")
        .expect("ok frame");
    assert_eq!(first.into_data().expect("data"), grpc_frame::encode(b"first"));
    upstream.release.notify_waiters();
    let rest = body.collect().await.expect("rest");
    let status = rest.trailers().and_then(tonic::Status::from_header_map).expect("status");
    assert_eq!(rest.to_bytes(), grpc_frame::encode(b"second"));
    assert_eq!(status.code(), Code::Ok);
    proxy.shutdown().await;
    upstream.stop(&upstream_path);
}

#[tokio::test]
async fn upstream_down_is_unavailable_and_the_proxy_reconnects() {
    let dir = tempfile::tempdir().expect("tempdir");
    let upstream_path = dir.path().join("upstream.sock");
    let proxy = RunningProxy::start(dir.path(), &upstream_path).await;
    let client = proxy.client();
    let body = grpc_frame::encode(b"");

    // Never started.
    for path in ["/runtime.v1.RuntimeService/ListContainers", "/runtime.v1.RuntimeService/Version"] {
        let status = call(&client, path, body.clone()).await.status();
        assert_eq!(status.code(), Code::Unavailable, "{path}: {status:?}");
        assert!(status.message().contains(&*upstream_path.to_string_lossy()), "{status:?}");
    }

    // Comes up: served without restarting the proxy.
    let upstream = FakeUpstream::start(&upstream_path).await;
    let reply = call(&client, "/runtime.v1.RuntimeService/ListContainers", body.clone()).await;
    assert_eq!(reply.status().code(), Code::Ok);

    // Goes away again (restart): UNAVAILABLE, then served again.
    upstream.stop(&upstream_path);
    let mut saw_unavailable = false;
    for _ in 0..3 {
        let status = call(&client, "/runtime.v1.RuntimeService/ListContainers", body.clone()).await.status();
        if status.code() == Code::Unavailable {
            saw_unavailable = true;
            break;
        }
    }
    assert!(saw_unavailable, "calls must fail with UNAVAILABLE while upstream is down");
    let upstream = FakeUpstream::start(&upstream_path).await;
    let reply = call(&client, "/runtime.v1.RuntimeService/ListContainers", body).await;
    assert_eq!(reply.status().code(), Code::Ok);
    proxy.shutdown().await;
    upstream.stop(&upstream_path);
}

#[tokio::test]
async fn upstream_dying_mid_stream_ends_the_call_with_unavailable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let upstream_path = dir.path().join("upstream.sock");
    let upstream = FakeUpstream::start(&upstream_path).await;
    let proxy = RunningProxy::start(dir.path(), &upstream_path).await;
    let response = proxy
        .client()
        .oneshot(grpc_request("/runtime.v1.RuntimeService/Hold", grpc_frame::encode(b"")))
        .await
        .expect("call");
    let mut body = response.into_body();
    let first = body.frame().await.expect("frame").expect("ok");
    assert!(first.is_data());
    upstream.kill.notify_waiters();
    let rest = tokio::time::timeout(CALL_TIMEOUT, body.collect())
        .await
        .expect("stream ends")
        .expect("ended with trailers, not a reset");
    let status = rest.trailers().and_then(tonic::Status::from_header_map).expect("status");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("upstream"), "{status:?}");
    proxy.shutdown().await;
    upstream.stop(&upstream_path);
}

#[tokio::test]
async fn intercepted_messages_over_16_mib_are_resource_exhausted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let upstream_path = dir.path().join("upstream.sock");
    let upstream = FakeUpstream::start(&upstream_path).await;
    let proxy = RunningProxy::start(dir.path(), &upstream_path).await;
    let big =
        lazarus_proto::v1::VersionRequest { version: "x".repeat(grpc_frame::MAX_MESSAGE_SIZE + 10) }.encode_to_vec();
    let status = call(&proxy.client(), "/runtime.v1.RuntimeService/Version", grpc_frame::encode(&big)).await.status();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("over the limit of 16777216 bytes"), "{status:?}");
    // Just under the limit is fine.
    let fits =
        lazarus_proto::v1::VersionRequest { version: "x".repeat(grpc_frame::MAX_MESSAGE_SIZE - 16) }.encode_to_vec();
    let reply = call(&proxy.client(), "/runtime.v1.RuntimeService/Version", grpc_frame::encode(&fits)).await;
    assert_eq!(reply.status().code(), Code::Ok);
    assert_eq!(reply.data.len(), fits.len() + grpc_frame::HEADER_LEN);
    proxy.shutdown().await;
    upstream.stop(&upstream_path);
}

#[tokio::test]
async fn shutdown_lets_open_calls_finish_and_removes_the_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let upstream_path = dir.path().join("upstream.sock");
    let upstream = FakeUpstream::start(&upstream_path).await;
    let proxy = RunningProxy::start(dir.path(), &upstream_path).await;
    let client = proxy.client();
    let listen = proxy.listen.clone();
    let body = grpc_frame::encode(b"slow");
    let in_flight = tokio::spawn({
        let client = client.clone();
        let body = body.clone();
        async move { call(&client, "/runtime.v1.RuntimeService/Slow", body).await }
    });
    // The call is open at the upstream; then the proxy is told to stop.
    tokio::time::timeout(CALL_TIMEOUT, upstream.slow_arrived.notified()).await.expect("the call reached the upstream");
    let mut proxy = proxy;
    proxy.begin_shutdown();
    // Shutting down: the socket no longer accepts connections, the open call is still waiting.
    let start = std::time::Instant::now();
    while std::os::unix::net::UnixStream::connect(&listen).is_ok() {
        assert!(start.elapsed() < CALL_TIMEOUT, "the proxy kept accepting after it was told to stop");
        tokio::task::yield_now().await;
    }
    assert!(!in_flight.is_finished(), "the upstream has not answered yet");
    upstream.slow_finish.notify_one();
    let reply = tokio::time::timeout(CALL_TIMEOUT, in_flight).await.expect("answered").expect("in-flight call");
    proxy.shutdown().await;
    assert_eq!(reply.status().code(), Code::Ok, "the open call completed");
    assert_eq!(reply.data, body);
    assert!(!listen.exists(), "socket removed on shutdown");
    upstream.stop(&upstream_path);
}
