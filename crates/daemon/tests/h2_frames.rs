//! The HTTP/2 frames lazarus puts on the wire, read by a raw HTTP/2 client
//! written here (no HTTP/2 or gRPC library between the test and the bytes),
//! in front of a fake containerd built on the `h2` crate's server, which
//! sends exactly the frames each case asks for.
//!
//! grpc-go (kubelet, crictl) reads `grpc-status` only from a HEADERS frame
//! that ends the stream; a status in HEADERS followed by an empty DATA frame
//! becomes `Internal: server closed the stream without sending trailers`.
//! Clients built on tonic do not notice, so the frames are checked here.
//! HPACK: requests are encoded by hand (literals without indexing); response
//! header blocks are decoded with `loona-hpack`.

#![allow(clippy::disallowed_methods, reason = "test code: the blocking rule is for the daemon's event loop")]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes};
use h2::Reason;
use lazarus_daemon::config::{Config, FileConfig, Overrides};
use lazarus_daemon::grpc_frame;
use lazarus_proto::v1;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{Notify, oneshot};

const WAIT: Duration = Duration::from_secs(10);

// --- A raw HTTP/2 client ------------------------------------------------------

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// What the client saw on one stream, frame by frame.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    /// A HEADERS frame (with its CONTINUATIONs), decoded.
    Headers { fields: Vec<(String, String)>, end_stream: bool },
    /// A DATA frame.
    Data { len: usize, end_stream: bool },
    /// RST_STREAM with its error code.
    Reset(u32),
}

impl Seen {
    fn field(&self, name: &str) -> Option<&str> {
        match self {
            Seen::Headers { fields, .. } => fields.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str()),
            _ => None,
        }
    }

    /// `grpc-message`, percent-decoded as gRPC specifies.
    fn grpc_message(&self) -> Option<String> {
        let raw = self.field("grpc-message")?.as_bytes();
        let mut out = Vec::with_capacity(raw.len());
        let mut i = 0;
        while i < raw.len() {
            let hex = raw.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
            match (raw[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
                (b'%', Some(byte)) => {
                    out.push(byte);
                    i += 3;
                }
                (byte, _) => {
                    out.push(byte);
                    i += 1;
                }
            }
        }
        Some(String::from_utf8_lossy(&out).into_owned())
    }
}

struct RawClient {
    io: UnixStream,
    decoder: loona_hpack::Decoder<'static>,
    next_stream: u32,
}

/// An HPACK integer with an `prefix`-bit prefix; `first` holds the pattern bits.
fn hpack_int(out: &mut Vec<u8>, first: u8, prefix: u32, mut value: usize) {
    let max = (1usize << prefix) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// A header block of "literal header field without indexing — new name"
/// representations (RFC 7541 §6.2.2), no Huffman coding.
fn hpack_literals(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        hpack_int(&mut out, 0x00, 7, name.len());
        out.extend_from_slice(name.as_bytes());
        hpack_int(&mut out, 0x00, 7, value.len());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

impl RawClient {
    async fn connect(socket: &Path) -> RawClient {
        let mut io = UnixStream::connect(socket).await.expect("connect to lazarus");
        io.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.expect("preface");
        let mut client = RawClient { io, decoder: loona_hpack::Decoder::new(), next_stream: 1 };
        client.send_frame(SETTINGS, 0, 0, &[]).await;
        client
    }

    async fn send_frame(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let len = u32::try_from(payload.len()).expect("frame size");
        let mut frame = Vec::with_capacity(9 + payload.len());
        frame.extend_from_slice(&len.to_be_bytes()[1..]);
        frame.push(kind);
        frame.push(flags);
        frame.extend_from_slice(&stream.to_be_bytes());
        frame.extend_from_slice(payload);
        self.io.write_all(&frame).await.expect("write frame");
    }

    async fn read_frame(&mut self) -> (u8, u8, u32, Bytes) {
        let mut head = [0u8; 9];
        tokio::time::timeout(WAIT, self.io.read_exact(&mut head))
            .await
            .expect("a frame from lazarus in time")
            .expect("read frame header");
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        self.io.read_exact(&mut payload).await.expect("read frame payload");
        (head[3], head[4], stream, Bytes::from(payload))
    }

    /// Opens a stream: HEADERS (`te: trailers`, gRPC content type, `extra`),
    /// then one DATA frame with `message` framed as gRPC, ending the stream.
    async fn start_call(&mut self, path: &str, message: &[u8], extra: &[(&str, &str)]) -> u32 {
        let stream = self.next_stream;
        self.next_stream += 2;
        let mut fields = vec![
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "localhost"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ];
        fields.extend_from_slice(extra);
        let block = hpack_literals(&fields);
        self.send_frame(HEADERS, END_HEADERS, stream, &block).await;
        self.send_frame(DATA, END_STREAM, stream, &grpc_frame::encode(message)).await;
        stream
    }

    async fn reset(&mut self, stream: u32, reason: Reason) {
        self.send_frame(RST_STREAM, 0, stream, &u32::from(reason).to_be_bytes()).await;
    }

    /// Reads frames until the next HEADERS, DATA or RST_STREAM of `stream`
    /// (answering SETTINGS and PING, decoding every header block in order).
    async fn next(&mut self, stream: u32) -> Seen {
        loop {
            let (kind, flags, id, mut payload) = self.read_frame().await;
            match kind {
                SETTINGS if flags & ACK == 0 => self.send_frame(SETTINGS, ACK, 0, &[]).await,
                PING if flags & ACK == 0 => self.send_frame(PING, ACK, 0, &payload).await,
                GOAWAY => panic!("lazarus sent GOAWAY: {payload:?}"),
                HEADERS => {
                    if flags & PADDED != 0 {
                        let pad = usize::from(payload[0]);
                        payload.advance(1);
                        payload.truncate(payload.len() - pad);
                    }
                    if flags & PRIORITY != 0 {
                        payload.advance(5);
                    }
                    let mut block = payload.to_vec();
                    let mut end_headers = flags & END_HEADERS != 0;
                    while !end_headers {
                        let (kind, cflags, cid, more) = self.read_frame().await;
                        assert_eq!((kind, cid), (CONTINUATION, id), "a header block is continued at once");
                        block.extend_from_slice(&more);
                        end_headers = cflags & END_HEADERS != 0;
                    }
                    let decoded = self.decoder.decode(&block).expect("a valid HPACK header block");
                    if id == stream {
                        let fields = decoded
                            .into_iter()
                            .map(|(n, v)| {
                                (String::from_utf8_lossy(&n).into_owned(), String::from_utf8_lossy(&v).into_owned())
                            })
                            .collect();
                        return Seen::Headers { fields, end_stream: flags & END_STREAM != 0 };
                    }
                }
                DATA if id == stream => {
                    let len =
                        if flags & PADDED != 0 { payload.len() - 1 - usize::from(payload[0]) } else { payload.len() };
                    return Seen::Data { len, end_stream: flags & END_STREAM != 0 };
                }
                RST_STREAM if id == stream => {
                    return Seen::Reset(u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]));
                }
                _ => {}
            }
        }
    }

    /// Every frame of `stream` until it ends (END_STREAM or RST_STREAM).
    async fn finish(&mut self, stream: u32) -> Vec<Seen> {
        let mut seen = Vec::new();
        loop {
            let frame = self.next(stream).await;
            let ended = matches!(
                frame,
                Seen::Reset(_) | Seen::Headers { end_stream: true, .. } | Seen::Data { end_stream: true, .. }
            );
            seen.push(frame);
            if ended {
                return seen;
            }
        }
    }

    /// A whole call.
    async fn call(&mut self, path: &str, message: &[u8], extra: &[(&str, &str)]) -> Vec<Seen> {
        let stream = self.start_call(path, message, extra).await;
        self.finish(stream).await
    }
}

/// Asserts `seen` is one Trailers-Only answer: a single HEADERS frame with
/// END_STREAM, `:status` 200, gRPC content type and `grpc-status` `code`.
fn assert_trailers_only(what: &str, seen: &[Seen], code: &str) {
    let [only] = seen else { panic!("{what}: expected one HEADERS frame with END_STREAM, got {seen:#?}") };
    assert!(matches!(only, Seen::Headers { end_stream: true, .. }), "{what}: not trailers-only: {seen:#?}");
    assert_eq!(only.field(":status"), Some("200"), "{what}: {seen:#?}");
    assert_eq!(only.field("content-type"), Some("application/grpc"), "{what}: {seen:#?}");
    assert_eq!(only.field("grpc-status"), Some(code), "{what}: {seen:#?}");
    assert_eq!(only.field("content-length"), None, "{what}: {seen:#?}");
}

// --- A fake containerd that sends exactly the frames asked for ----------------

/// How the fake answers; chosen by the request's `x-fake` header. Calls
/// without it (lazarus's own calls, intercepted methods' side calls) get
/// `trailers-only`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// One HEADERS frame, END_STREAM: `grpc-status: 5` and a message.
    TrailersOnly,
    /// Trailers-only with status details and binary/custom metadata.
    TrailersOnlyDetails,
    /// Response HEADERS, no DATA, then trailers with details and metadata.
    HeadersThenTrailers,
    /// HEADERS, one message, trailers with metadata.
    Message,
    /// RST_STREAM with this code instead of any HEADERS.
    ResetBeforeHeaders(u32),
    /// HEADERS and one message, then RST_STREAM with this code.
    ResetAfterMessage(u32),
    /// HEADERS and one message; then waits for `release` (second message and
    /// `grpc-status: 0`) or the client's reset (reported).
    Hold,
    /// Waits for the request's `grpc-timeout`, then RST_STREAM CANCEL, as
    /// containerd 2.1's grpc-go does when a deadline expires.
    Deadline,
    /// RST_STREAM REFUSED_STREAM the first time (not processed), then a message.
    RefuseOnce,
}

fn answer_of(request: &http::Request<h2::RecvStream>) -> Answer {
    let value = request.headers().get("x-fake").and_then(|v| v.to_str().ok()).unwrap_or("trailers-only");
    let (name, code) = value.split_once(' ').unwrap_or((value, "0"));
    let code: u32 = code.parse().expect("fake reset code");
    match name {
        "trailers-only" => Answer::TrailersOnly,
        "trailers-only-details" => Answer::TrailersOnlyDetails,
        "headers-then-trailers" => Answer::HeadersThenTrailers,
        "message" => Answer::Message,
        "reset-before-headers" => Answer::ResetBeforeHeaders(code),
        "reset-after-message" => Answer::ResetAfterMessage(code),
        "hold" => Answer::Hold,
        "deadline" => Answer::Deadline,
        "refuse-once" => Answer::RefuseOnce,
        other => panic!("unknown x-fake answer {other}"),
    }
}

/// A message every response type decodes: field 1, the string "answer"
/// (`VersionResponse.version`; the passthrough never decodes it).
const ANSWER: &[u8] = b"\x0a\x06answer";

/// Status details as containerd would send them (any bytes; base64 on the wire).
const DETAILS_BIN: &str = "CAUSBm5vIHN1Y2g";
const CUSTOM_BIN: &str = "AAECAw";

#[derive(Default)]
struct FakeLog {
    /// (path, `x-fake`, `grpc-timeout`) of every request seen.
    requests: Vec<(String, Option<String>, Option<String>)>,
    /// Resets the fake received from lazarus: (path, code).
    resets: Vec<(String, Reason)>,
    connections: usize,
}

struct FakeContainerd {
    path: PathBuf,
    log: Arc<Mutex<FakeLog>>,
    release: Arc<Notify>,
    /// Sends GOAWAY (graceful shutdown) on every open connection.
    goaway: Arc<Notify>,
    reset_seen: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

fn grpc_head(extra: &[(&str, &str)]) -> http::Response<()> {
    let mut response = http::Response::builder().status(200).header("content-type", "application/grpc");
    for (name, value) in extra {
        response = response.header(*name, *value);
    }
    response.body(()).expect("response head")
}

fn header_map(fields: &[(&'static str, &str)]) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    for (name, value) in fields {
        map.insert(*name, value.parse().expect("header value"));
    }
    map
}

impl FakeContainerd {
    async fn start(path: &Path) -> FakeContainerd {
        let listener = tokio::net::UnixListener::bind(path).expect("bind fake containerd");
        let log = Arc::new(Mutex::new(FakeLog::default()));
        let (release, goaway, reset_seen) = (Arc::new(Notify::new()), Arc::new(Notify::new()), Arc::new(Notify::new()));
        let task = tokio::spawn({
            let (log, release, goaway, reset_seen) = (log.clone(), release.clone(), goaway.clone(), reset_seen.clone());
            async move {
                while let Ok((io, _)) = listener.accept().await {
                    log.lock().expect("log").connections += 1;
                    let (log, release, goaway, reset_seen) =
                        (log.clone(), release.clone(), goaway.clone(), reset_seen.clone());
                    tokio::spawn(async move {
                        let Ok(mut connection) = h2::server::handshake(io).await else { return };
                        let mut going_away = false;
                        loop {
                            let accepted = tokio::select! {
                                accepted = connection.accept() => accepted,
                                () = goaway.notified(), if !going_away => {
                                    going_away = true;
                                    connection.graceful_shutdown();
                                    continue;
                                }
                            };
                            let Some(Ok((request, respond))) = accepted else { return };
                            tokio::spawn(serve_one(request, respond, log.clone(), release.clone(), reset_seen.clone()));
                        }
                    });
                }
            }
        });
        FakeContainerd { path: path.to_owned(), log, release, goaway, reset_seen, task }
    }

    fn log(&self) -> std::sync::MutexGuard<'_, FakeLog> {
        self.log.lock().expect("log")
    }
}

impl Drop for FakeContainerd {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn serve_one(
    request: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    log: Arc<Mutex<FakeLog>>,
    release: Arc<Notify>,
    reset_seen: Arc<Notify>,
) {
    let answer = answer_of(&request);
    let path = request.uri().path().to_owned();
    let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let timeout = header("grpc-timeout");
    log.lock().expect("log").requests.push((path.clone(), header("x-fake"), timeout.clone()));
    let mut body = request.into_body();
    while let Some(Ok(chunk)) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let not_found = [("grpc-status", "5"), ("grpc-message", "fake: no such container")];
    let refused_before =
        log.lock().expect("log").requests.iter().filter(|(_, x, _)| x.as_deref() == Some("refuse-once")).count() > 1;
    let answer = match answer {
        Answer::RefuseOnce if refused_before => Answer::Message,
        Answer::RefuseOnce => Answer::ResetBeforeHeaders(u32::from(Reason::REFUSED_STREAM)),
        other => other,
    };
    let result: Result<(), h2::Error> = async {
        match answer {
            Answer::TrailersOnly => {
                respond.send_response(grpc_head(&not_found), true)?;
            }
            Answer::TrailersOnlyDetails => {
                let head = grpc_head(&[
                    ("grpc-status", "3"),
                    ("grpc-message", "fake: bad request"),
                    ("grpc-status-details-bin", DETAILS_BIN),
                    ("x-custom-bin", CUSTOM_BIN),
                    ("x-custom", "kept"),
                ]);
                respond.send_response(head, true)?;
            }
            Answer::HeadersThenTrailers => {
                let mut send = respond.send_response(grpc_head(&[("x-initial", "meta")]), false)?;
                send.send_trailers(header_map(&[
                    ("grpc-status", "5"),
                    ("grpc-message", "fake: gone"),
                    ("grpc-status-details-bin", DETAILS_BIN),
                    ("x-trailer-bin", CUSTOM_BIN),
                ]))?;
            }
            Answer::Message => {
                let mut send = respond.send_response(grpc_head(&[]), false)?;
                send.send_data(grpc_frame::encode(ANSWER), false)?;
                send.send_trailers(header_map(&[
                    ("grpc-status", "0"),
                    ("grpc-status-details-bin", DETAILS_BIN),
                    ("x-trailer-bin", CUSTOM_BIN),
                ]))?;
            }
            Answer::ResetBeforeHeaders(code) => respond.send_reset(Reason::from(code)),
            Answer::ResetAfterMessage(code) => {
                let mut send = respond.send_response(grpc_head(&[]), false)?;
                send.send_data(grpc_frame::encode(b"part"), false)?;
                // Let the message leave before the reset.
                tokio::time::sleep(Duration::from_millis(100)).await;
                send.send_reset(Reason::from(code));
            }
            Answer::Hold => {
                let mut send = respond.send_response(grpc_head(&[]), false)?;
                send.send_data(grpc_frame::encode(b"first"), false)?;
                let reset = std::future::poll_fn(|cx| send.poll_reset(cx));
                tokio::select! {
                    reason = reset => {
                        log.lock().expect("log").resets.push((path.clone(), reason?));
                        reset_seen.notify_waiters();
                    }
                    () = release.notified() => {
                        send.send_data(grpc_frame::encode(b"second"), false)?;
                        send.send_trailers(header_map(&[("grpc-status", "0")]))?;
                    }
                }
            }
            Answer::RefuseOnce => unreachable!("resolved above"),
            Answer::Deadline => {
                let expiry = timeout
                    .as_deref()
                    .and_then(lazarus_daemon::parse_grpc_timeout)
                    .expect("a grpc-timeout on the request");
                tokio::time::sleep(expiry).await;
                respond.send_reset(Reason::CANCEL);
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        log.lock().expect("log").resets.push((path, e.reason().unwrap_or(Reason::INTERNAL_ERROR)));
    }
}

// --- lazarus, in this process, as `lazarus serve` runs it -----------------------

struct Lazarus {
    socket: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Lazarus {
    async fn start(dir: &Path, upstream: &Path) -> Lazarus {
        let socket = dir.join("lazarus/cri.sock");
        let config = Config::resolve(
            FileConfig {
                shutdown_timeout: Some("2s".into()),
                restore_dir: Some(dir.join("restore")),
                ..FileConfig::default()
            },
            Overrides {
                listen: Some(socket.clone()),
                upstream: Some(format!("unix://{}", upstream.display())),
                state_dir: Some(dir.join("state")),
                run_dir: Some(dir.join("run")),
                ..Overrides::default()
            },
        )
        .expect("config");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let stopped = async {
                let _ = stopped.await;
            };
            lazarus_daemon::server::serve(&config, stopped).await.expect("serve");
        });
        for _ in 0..500 {
            if UnixStream::connect(&socket).await.is_ok() {
                return Lazarus { socket, stop: Some(stop), task };
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("lazarus did not listen on {}", socket.display());
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(WAIT, &mut self.task).await.expect("lazarus stops").expect("lazarus task");
    }
}

struct Scene {
    _dir: tempfile::TempDir,
    fake: FakeContainerd,
    lazarus: Lazarus,
    client: RawClient,
}

impl Scene {
    async fn new() -> Scene {
        let dir = tempfile::tempdir().expect("tempdir");
        let fake = FakeContainerd::start(&dir.path().join("containerd.sock")).await;
        let lazarus = Lazarus::start(dir.path(), &fake.path).await;
        let client = RawClient::connect(&lazarus.socket).await;
        Scene { _dir: dir, fake, lazarus, client }
    }

    /// Closes the client's connection, then stops lazarus (no open call left to drain).
    async fn stop(self) {
        drop(self.client);
        self.lazarus.stop().await;
    }
}

const RUNTIME: &str = "/runtime.v1.RuntimeService";

/// Every intercepted method and a few passthrough ones, including the server
/// stream `GetContainerEvents` (containerd 1.6 answers it `UNIMPLEMENTED`
/// trailers-only).
const METHODS: [&str; 10] = [
    "Version",
    "StopContainer",
    "RunPodSandbox",
    "CreateContainer",
    "StartContainer",
    "RemoveContainer",
    "ContainerStatus",
    "PodSandboxStatus",
    "GetContainerEvents",
    "SomeMethodFromTheFuture",
];

#[tokio::test]
async fn trailers_only_answers_leave_lazarus_trailers_only() {
    let mut scene = Scene::new().await;
    for method in METHODS {
        let path = format!("{RUNTIME}/{method}");
        let seen = scene.client.call(&path, b"", &[("x-fake", "trailers-only")]).await;
        assert_trailers_only(&path, &seen, "5");
        assert_eq!(seen[0].grpc_message().as_deref(), Some("fake: no such container"), "{path}");
    }
    // The image service too, and metadata in a trailers-only answer.
    let seen =
        scene.client.call("/runtime.v1.ImageService/ImageStatus", b"", &[("x-fake", "trailers-only-details")]).await;
    assert_trailers_only("ImageStatus", &seen, "3");
    for (name, value) in [("grpc-status-details-bin", DETAILS_BIN), ("x-custom-bin", CUSTOM_BIN), ("x-custom", "kept")]
    {
        assert_eq!(seen[0].field(name), Some(value), "{name}: {seen:#?}");
    }
    scene.stop().await;
}

#[tokio::test]
async fn lazarus_own_refusals_are_trailers_only() {
    let mut scene = Scene::new().await;
    // A request that does not decode: INVALID_ARGUMENT from lazarus.
    let seen = scene.client.call(&format!("{RUNTIME}/Version"), &[0xff, 0xff], &[]).await;
    assert_trailers_only("undecodable Version", &seen, "3");
    let message = seen[0].grpc_message().unwrap_or_default();
    assert!(message.starts_with("lazarus: /runtime.v1.RuntimeService/Version: decoding the request"), "{message}");

    // A malformed restore annotation: CreateContainer refused before containerd sees it.
    let request = create_container_restoring_from(" not a reference ");
    let seen = scene.client.call(&format!("{RUNTIME}/CreateContainer"), &request.encode_to_vec(), &[]).await;
    assert_trailers_only("refused restore", &seen, "3");
    let message = seen[0].grpc_message().unwrap_or_default();
    assert!(message.starts_with("lazarus: restoring container worker of pod lazarus-test/frames: "), "{message}");
    assert!(message.contains("lazarus.dev/restore-from"), "{message}");
    assert!(
        !scene.fake.log().requests.iter().any(|(p, _, _)| p.ends_with("/CreateContainer")),
        "a refused CreateContainer never reaches containerd"
    );
    let Scene { fake, lazarus, client, .. } = scene;
    drop(client);
    lazarus.stop().await;

    // containerd down: UNAVAILABLE from lazarus, passthrough and intercepted.
    drop(fake);
    let dir = tempfile::tempdir().expect("tempdir");
    let lazarus = Lazarus::start(dir.path(), &dir.path().join("nobody.sock")).await;
    let mut client = RawClient::connect(&lazarus.socket).await;
    for method in ["ListContainers", "StopContainer"] {
        let seen = client.call(&format!("{RUNTIME}/{method}"), b"", &[]).await;
        assert_trailers_only(method, &seen, "14");
    }
    drop(client);
    lazarus.stop().await;
}

#[tokio::test]
async fn headers_then_trailers_and_metadata_pass_as_sent() {
    let mut scene = Scene::new().await;
    for method in ["ListContainers", "Version"] {
        let path = format!("{RUNTIME}/{method}");
        // Response headers without a body, then trailers with details and binary metadata.
        let seen = scene.client.call(&path, b"", &[("x-fake", "headers-then-trailers")]).await;
        let [head, trailers] = &seen[..] else { panic!("{path}: expected HEADERS, trailers: {seen:#?}") };
        assert!(matches!(head, Seen::Headers { end_stream: false, .. }), "{path}: {seen:#?}");
        assert_eq!(head.field("x-initial"), Some("meta"), "{path}");
        assert_eq!(head.field("grpc-status"), None, "{path}");
        assert!(matches!(trailers, Seen::Headers { end_stream: true, .. }), "{path}: {seen:#?}");
        assert_eq!(trailers.field("grpc-status"), Some("5"), "{path}");
        assert_eq!(trailers.grpc_message().as_deref(), Some("fake: gone"), "{path}");
        assert_eq!(trailers.field("grpc-status-details-bin"), Some(DETAILS_BIN), "{path}");
        assert_eq!(trailers.field("x-trailer-bin"), Some(CUSTOM_BIN), "{path}");

        // A message, then trailers with metadata.
        let seen = scene.client.call(&path, b"", &[("x-fake", "message")]).await;
        let [head, data, trailers] = &seen[..] else { panic!("{path}: expected HEADERS, DATA, trailers: {seen:#?}") };
        assert!(matches!(head, Seen::Headers { end_stream: false, .. }), "{path}: {seen:#?}");
        assert_eq!(head.field("content-length"), None, "{path}: {seen:#?}");
        assert_eq!(*data, Seen::Data { len: grpc_frame::encode(ANSWER).len(), end_stream: false }, "{path}");
        assert_eq!(trailers.field("grpc-status"), Some("0"), "{path}");
        assert_eq!(trailers.field("grpc-status-details-bin"), Some(DETAILS_BIN), "{path}");
        assert_eq!(trailers.field("x-trailer-bin"), Some(CUSTOM_BIN), "{path}");
    }
    scene.stop().await;
}

#[tokio::test]
async fn upstream_resets_reach_the_client_with_their_code() {
    let mut scene = Scene::new().await;
    for method in ["ListContainers", "StopContainer"] {
        let path = format!("{RUNTIME}/{method}");
        for reason in [Reason::CANCEL, Reason::ENHANCE_YOUR_CALM, Reason::INTERNAL_ERROR] {
            let code = u32::from(reason);
            let seen = scene.client.call(&path, b"", &[("x-fake", &format!("reset-before-headers {code}"))]).await;
            assert_eq!(seen, [Seen::Reset(code)], "{path}: reset {reason:?} before headers");
        }
    }
    // After the response started (a passthrough stream): headers and the message, then the same reset.
    let seen =
        scene.client.call(&format!("{RUNTIME}/GetContainerEvents"), b"", &[("x-fake", "reset-after-message 8")]).await;
    assert!(matches!(seen.first(), Some(Seen::Headers { end_stream: false, .. })), "{seen:#?}");
    assert!(matches!(seen.get(1), Some(Seen::Data { end_stream: false, .. })), "{seen:#?}");
    assert_eq!(seen.last(), Some(&Seen::Reset(u32::from(Reason::CANCEL))), "{seen:#?}");
    assert_eq!(seen.len(), 3, "{seen:#?}");
    scene.stop().await;
}

#[tokio::test]
async fn a_refused_stream_is_sent_again() {
    let mut scene = Scene::new().await;
    let path = format!("{RUNTIME}/ListContainers");
    let seen = scene.client.call(&path, b"", &[("x-fake", "refuse-once")]).await;
    assert_eq!(seen.last().and_then(|s| s.field("grpc-status")), Some("0"), "{seen:#?}");
    assert!(!seen.iter().any(|s| matches!(s, Seen::Reset(_))), "{seen:#?}");
    let (tries, connections) = {
        let log = scene.fake.log();
        (log.requests.iter().filter(|(p, _, _)| *p == path).count(), log.connections)
    };
    // REFUSED_STREAM is about the stream, not the connection: the same connection serves the retry.
    assert_eq!((tries, connections), (2, 1), "refused once, then sent again");
    scene.stop().await;
}

#[tokio::test]
async fn grpc_timeout_expiry_is_the_upstream_reset() {
    let mut scene = Scene::new().await;
    for method in ["ExecSync", "StopContainer"] {
        let path = format!("{RUNTIME}/{method}");
        let seen = scene.client.call(&path, b"", &[("x-fake", "deadline"), ("grpc-timeout", "300m")]).await;
        assert_eq!(seen, [Seen::Reset(u32::from(Reason::CANCEL))], "{path}");
        let log = scene.fake.log();
        let forwarded = log.requests.iter().find(|(p, _, _)| *p == path).and_then(|(_, _, t)| t.clone());
        assert_eq!(forwarded.as_deref(), Some("300m"), "{path}: grpc-timeout forwarded as sent");
    }
    scene.stop().await;
}

#[tokio::test]
async fn a_client_cancelling_a_stream_cancels_it_upstream() {
    let mut scene = Scene::new().await;
    let path = format!("{RUNTIME}/GetContainerEvents");
    let stream = scene.client.start_call(&path, b"", &[("x-fake", "hold")]).await;
    assert!(matches!(scene.client.next(stream).await, Seen::Headers { end_stream: false, .. }));
    assert!(matches!(scene.client.next(stream).await, Seen::Data { end_stream: false, .. }));
    let reset_seen = scene.fake.reset_seen.notified();
    scene.client.reset(stream, Reason::CANCEL).await;
    tokio::time::timeout(WAIT, reset_seen).await.expect("containerd's stream is reset when the client cancels");
    assert_eq!(scene.fake.log().resets, [(path.clone(), Reason::CANCEL)]);

    // The connection is still good for the next call.
    let seen = scene.client.call(&format!("{RUNTIME}/Version"), b"", &[("x-fake", "message")]).await;
    assert_eq!(seen.last().and_then(|s| s.field("grpc-status")), Some("0"), "{seen:#?}");
    scene.stop().await;
}

#[tokio::test]
async fn goaway_from_upstream_lets_open_calls_finish_and_new_calls_redial() {
    let mut scene = Scene::new().await;
    let path = format!("{RUNTIME}/GetContainerEvents");
    let held = scene.client.start_call(&path, b"", &[("x-fake", "hold")]).await;
    assert!(matches!(scene.client.next(held).await, Seen::Headers { end_stream: false, .. }));
    assert!(matches!(scene.client.next(held).await, Seen::Data { end_stream: false, .. }));
    assert_eq!(scene.fake.log().connections, 1);

    // containerd shuts down gracefully (GOAWAY) while the stream is open.
    // notify_one: the permit is kept if the fake's connection task is not waiting this instant.
    scene.fake.goaway.notify_one();

    // New calls are never failed: until lazarus has read the GOAWAY, containerd
    // still takes them on the old connection (h2's graceful shutdown announces
    // the last stream id only after a ping); once it has, lazarus dials a new
    // connection. Calls go on until that happens (bounded), each must succeed.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let seen = scene.client.call(&format!("{RUNTIME}/ListContainers"), b"", &[("x-fake", "message")]).await;
        assert_eq!(seen.last().and_then(|s| s.field("grpc-status")), Some("0"), "new call after GOAWAY: {seen:#?}");
        if scene.fake.log().connections == 2 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "lazarus never dialled again after GOAWAY");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The open call finishes on the old connection as containerd sends it.
    scene.fake.release.notify_waiters();
    let rest = scene.client.finish(held).await;
    assert!(matches!(rest.first(), Some(Seen::Data { end_stream: false, .. })), "{rest:#?}");
    assert_eq!(rest.last().and_then(|s| s.field("grpc-status")), Some("0"), "{rest:#?}");
    scene.stop().await;
}

/// A CreateContainer request as kubelet sends it, its pod annotated `lazarus.dev/restore-from: value`.
fn create_container_restoring_from(value: &str) -> v1::CreateContainerRequest {
    let pod = v1::PodSandboxMetadata {
        name: "frames".into(),
        uid: "uid-frames".into(),
        namespace: "lazarus-test".into(),
        attempt: 0,
    };
    v1::CreateContainerRequest {
        pod_sandbox_id: "sandbox-frames".into(),
        config: Some(v1::ContainerConfig {
            metadata: Some(v1::ContainerMetadata { name: "worker".into(), attempt: 0 }),
            ..Default::default()
        }),
        sandbox_config: Some(v1::PodSandboxConfig {
            metadata: Some(pod),
            annotations: [("lazarus.dev/restore-from".to_owned(), value.to_owned())].into(),
            ..Default::default()
        }),
    }
}
