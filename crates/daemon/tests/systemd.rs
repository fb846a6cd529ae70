//! The real `lazarus serve` binary under systemd's protocols, without systemd:
//! readiness notification (`Type=notify`, a datagram socket of the test's as
//! `NOTIFY_SOCKET`) and socket activation (`systemd-socket-activate`, from
//! Debian's `systemd` package, passes the listening socket as systemd does).
//!
//! Hermetic: every path is below a temporary dir, and the config says
//! `require_criu = false`, so neither CRIU nor root is needed. The two
//! socket-activation tests need `systemd-socket-activate` and are ignored by
//! default: `cargo test -p lazarus-daemon --test systemd -- --include-ignored`
//! runs them (and fails, not passes, when the tool is missing).

#![allow(clippy::disallowed_methods, reason = "test code: the blocking rule is for the daemon's event loop")]

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lazarus_proto::v1;
use lazarus_proto::v1::runtime_service_client::RuntimeServiceClient;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tonic::transport::Endpoint;

const LAZARUS: &str = env!("CARGO_BIN_EXE_lazarus");

/// `lazarus serve` arguments with every path under `dir` and an upstream nobody listens on;
/// writes `dir/config.toml` with `require_criu = false` (the tests need no CRIU).
fn serve_args(dir: &Path, listen: &Path) -> Vec<String> {
    let arg = |p: PathBuf| p.to_string_lossy().into_owned();
    let config = dir.join("config.toml");
    std::fs::write(&config, "require_criu = false\n").expect("write config.toml");
    vec![
        "serve".into(),
        "--config".into(),
        arg(config),
        "--listen".into(),
        arg(listen.to_owned()),
        "--upstream".into(),
        format!("unix://{}", dir.join("no-containerd.sock").display()),
        "--state-dir".into(),
        arg(dir.join("state")),
        "--run-dir".into(),
        arg(dir.join("run")),
    ]
}

fn spawn(mut cmd: Command, log: &Path) -> Child {
    let log = std::fs::File::create(log).expect("log file");
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LAZARUS_CONFIG")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_FDNAMES")
        .env("LAZARUS_LOG", "info")
        .spawn()
        .expect("spawn")
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if start.elapsed() > within {
            let _ = child.kill();
            panic!("lazarus did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sigterm(child: &Child) {
    kill(Pid::from_raw(i32::try_from(child.id()).expect("pid")), Signal::SIGTERM).expect("SIGTERM");
}

fn wait_for_path(path: &Path) {
    let start = Instant::now();
    while !path.exists() {
        assert!(start.elapsed() < Duration::from_secs(20), "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A CRI `Version` call on `socket`: lazarus answers it itself with UNAVAILABLE
/// naming the missing upstream, which proves lazarus serves that socket.
async fn version_status(socket: &Path) -> tonic::Status {
    let socket = socket.to_owned();
    let channel = Endpoint::try_from("http://lazarus.invalid")
        .expect("endpoint")
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move { tokio::net::UnixStream::connect(socket).await.map(hyper_util::rt::TokioIo::new) }
        }))
        .await
        .expect("connect");
    let reply = tokio::time::timeout(
        Duration::from_secs(20),
        RuntimeServiceClient::new(channel).version(v1::VersionRequest { version: "0.1.0".into() }),
    )
    .await
    .expect("Version answered in time");
    reply.expect_err("no upstream: Version must fail")
}

#[test]
fn type_notify_gets_ready_once_serving_and_stopping_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).expect("bind notify socket");
    notify.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let socket = dir.path().join("cri.sock");
    let log = dir.path().join("lazarus.log");
    let mut cmd = Command::new(LAZARUS);
    cmd.args(serve_args(dir.path(), &socket));
    let mut child = spawn_with_notify(cmd, &log, &notify_path);

    let mut buf = [0u8; 512];
    let n = notify.recv(&mut buf).expect("READY=1 within 30 s");
    let ready = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(ready.starts_with("READY=1\n"), "{ready:?}");
    assert!(ready.contains(&format!("STATUS=serving the CRI on {}", socket.display())), "{ready:?}");
    // Ready means the socket accepts connections.
    std::os::unix::net::UnixStream::connect(&socket).expect("socket accepts once READY=1 was sent");

    sigterm(&child);
    let n = notify.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");
    let status = wait_exit(&mut child, Duration::from_secs(30));
    assert!(status.success(), "exit status {status}: {}", std::fs::read_to_string(&log).unwrap_or_default());
    assert!(!socket.exists(), "a socket lazarus bound itself is removed at shutdown");
}

/// Like [`spawn`], keeping `NOTIFY_SOCKET` for the child.
fn spawn_with_notify(mut cmd: Command, log: &Path, notify: &Path) -> Child {
    let log = std::fs::File::create(log).expect("log file");
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .env_remove("LAZARUS_CONFIG")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_FDNAMES")
        .env("NOTIFY_SOCKET", notify)
        .env("LAZARUS_LOG", "info")
        .spawn()
        .expect("spawn")
}

/// `systemd-socket-activate` (Debian's `systemd` package); a test that asked for it fails without it.
fn socket_activate() -> PathBuf {
    ["/usr/bin/systemd-socket-activate", "/bin/systemd-socket-activate"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("systemd-socket-activate is not installed (Debian package systemd)")
}

/// Runs lazarus under `systemd-socket-activate -l bound`, with `--listen listen`.
fn activated(tool: &Path, dir: &Path, bound: &Path, listen: &Path, log: &Path) -> Child {
    let mut cmd = Command::new(tool);
    cmd.arg("-l").arg(bound).arg("--fdname=cri").arg("-E").arg("LAZARUS_LOG=info").arg(LAZARUS);
    cmd.args(serve_args(dir, listen));
    let child = spawn(cmd, log);
    // It binds the socket, then execs lazarus (same pid) on the first connection.
    wait_for_path(bound);
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs systemd-socket-activate (Debian package systemd); run with --include-ignored"]
async fn socket_activation_serves_the_passed_socket_and_leaves_it_to_systemd() {
    let tool = socket_activate();
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("cri.sock");
    let log = dir.path().join("lazarus.log");
    let mut child = activated(&tool, dir.path(), &socket, &socket, &log);

    let status = version_status(&socket).await;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}\n{text}");
    assert!(status.message().contains("no-containerd.sock"), "lazarus answered: {status:?}");
    assert!(text.contains("using the socket passed by systemd"), "{text}");

    sigterm(&child);
    let exit = wait_exit(&mut child, Duration::from_secs(30));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(exit.success(), "exit status {exit}: {text}");
    assert!(text.contains("lazarus stopped"), "{text}");
    assert!(socket.exists(), "an activated socket belongs to systemd and must be left in place");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs systemd-socket-activate (Debian package systemd); run with --include-ignored"]
async fn an_activated_socket_wins_over_another_listen_path_with_a_warning() {
    let tool = socket_activate();
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("systemd.sock");
    let configured = dir.path().join("configured.sock");
    let log = dir.path().join("lazarus.log");
    let mut child = activated(&tool, dir.path(), &socket, &configured, &log);

    let status = version_status(&socket).await;
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("systemd passed a socket other than the configured `listen` path"), "{text}");
    assert!(!configured.exists(), "lazarus must not bind the configured path as well");

    sigterm(&child);
    assert!(wait_exit(&mut child, Duration::from_secs(30)).success());
    assert!(socket.exists());
}
