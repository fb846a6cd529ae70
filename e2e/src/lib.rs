//! Shared harness of the end-to-end tests and benchmarks: the test bed's
//! description, a real `lazarus serve` process, CRI clients, and pod and
//! container configurations shaped the way kubelet sends them.
//!
//! Everything here talks to the real containerd, runc and CNI started by
//! `e2e/testbed/testbed.sh up`; nothing is faked.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use lazarus_proto::v1;
use lazarus_proto::v1::image_service_client::ImageServiceClient;
use lazarus_proto::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint};

pub mod bench;

/// kubelet's CRI message size limit.
pub const MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;
/// Label put on every pod the tests create, so leftovers can be swept.
pub const E2E_LABEL: &str = "lazarus.dev/e2e";

/// Where `testbed.sh up` writes its description.
pub fn testbed_env_path() -> PathBuf {
    std::env::var_os("LAZARUS_TESTBED_ENV").map_or_else(|| "/run/lazarus-testbed/env".into(), PathBuf::from)
}

/// The repository root: of the `e2e` package cargo runs the tests of
/// (`CARGO_MANIFEST_DIR` at run time), else of the one this was compiled in.
/// Not the compile-time value alone: cargo keeps a build of this library
/// fresh when the target dir is copied to another checkout of the workspace,
/// and the tests would build and run the other checkout's binaries.
pub fn repo_root() -> PathBuf {
    let manifest_dir =
        std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    manifest_dir.parent().map(Path::to_path_buf).unwrap_or_default()
}

/// The test bed: a private containerd with CNI, a local registry, images.
#[derive(Debug, Clone)]
pub struct Testbed {
    vars: HashMap<String, String>,
}

impl Testbed {
    /// Reads the test bed's env file; a clear error when the bed is not up.
    pub fn load() -> Result<Testbed> {
        let path = testbed_env_path();
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "the test bed is not up ({} is missing): run `e2e/testbed/testbed.sh up` as root first",
                path.display()
            )
        })?;
        let vars = text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().trim_matches('"').to_owned()))
            .collect();
        Ok(Testbed { vars })
    }

    /// A variable of the env file.
    pub fn var(&self, key: &str) -> Result<&str> {
        self.vars.get(key).map(String::as_str).with_context(|| format!("test bed env file has no {key}"))
    }

    /// containerd's socket path.
    pub fn containerd_socket(&self) -> Result<PathBuf> {
        self.var("CONTAINERD_SOCKET").map(PathBuf::from)
    }

    /// `1.6` or `2.1`.
    pub fn flavor(&self) -> &str {
        self.vars.get("CONTAINERD_FLAVOR").map_or("1.6", String::as_str)
    }

    /// The workload image in the local registry.
    pub fn workload_image(&self) -> Result<&str> {
        self.var("WORKLOAD_IMAGE")
    }

    /// The Debian workload image (Debian's python3-numpy, redis-server,
    /// postgresql-15, procps and a user `worker`, uid 1000), imported into
    /// containerd by `testbed.sh up`, not in the registry: never pull it.
    pub fn debian_image(&self) -> Result<&str> {
        self.var("DEBIAN_IMAGE")
            .context("the test bed predates the Debian image: run `e2e/testbed/testbed.sh up` again")
    }

    /// The pod network, e.g. `10.233.0.0/24`.
    pub fn cni_subnet(&self) -> Result<&str> {
        self.var("CNI_SUBNET")
    }

    /// Runs `testbed.sh SUBCOMMAND` (e.g. `containerd-stop`).
    pub fn control(&self, subcommand: &str) -> Result<()> {
        let script = repo_root().join("e2e/testbed/testbed.sh");
        let status = Command::new("bash")
            .arg(&script)
            .arg(subcommand)
            .status()
            .with_context(|| format!("running {} {subcommand}", script.display()))?;
        ensure!(status.success(), "{} {subcommand} failed: {status}", script.display());
        Ok(())
    }
}

/// Serializes tests that use or stop/start shared parts of the test bed.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// The `lazarus` binary under test: `LAZARUS_BIN`, or built from this
/// workspace with the same cargo that runs the tests (release when the caller
/// is optimized, as `cargo bench` is).
pub fn lazarus_bin() -> Result<PathBuf> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("LAZARUS_BIN") {
            return Ok(PathBuf::from(bin));
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let release = !cfg!(debug_assertions);
        let mut cmd = Command::new(cargo);
        cmd.current_dir(repo_root()).args(["build", "--quiet", "-p", "lazarus-daemon", "--bin", "lazarus"]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().map_err(|e| format!("running cargo build: {e}"))?;
        if !status.success() {
            return Err(format!("cargo build of the lazarus binary failed: {status}"));
        }
        let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo_root().join("target"), PathBuf::from);
        Ok(target.join(if release { "release" } else { "debug" }).join("lazarus"))
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

/// Installs the `lazarus-runc` wrapper under test where the test bed's `lazarus` runtime
/// handler runs it (`LAZARUS_RUNC_WRAPPER` of the test bed's env file), once per test
/// process, and returns that path. The binary is `LAZARUS_RUNC_BIN`, or built from this workspace like
/// [`lazarus_bin`]; it is copied next to the destination and renamed over it, so a shim
/// running the previous one never sees a half-written file.
pub fn install_runc_wrapper() -> Result<PathBuf> {
    static INSTALLED: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dest = PathBuf::from(Testbed::load()?.var("LAZARUS_RUNC_WRAPPER")?);
    INSTALLED
        .get_or_init(|| {
            let built = match std::env::var_os("LAZARUS_RUNC_BIN") {
                Some(bin) => PathBuf::from(bin),
                None => {
                    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
                    let release = !cfg!(debug_assertions);
                    let mut cmd = Command::new(cargo);
                    cmd.current_dir(repo_root()).args([
                        "build",
                        "--quiet",
                        "-p",
                        "lazarus-runc",
                        "--bin",
                        "lazarus-runc",
                    ]);
                    if release {
                        cmd.arg("--release");
                    }
                    let status = cmd.status().map_err(|e| format!("running cargo build: {e}"))?;
                    if !status.success() {
                        return Err(format!("cargo build of the lazarus-runc binary failed: {status}"));
                    }
                    let target =
                        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo_root().join("target"), PathBuf::from);
                    target.join(if release { "release" } else { "debug" }).join("lazarus-runc")
                }
            };
            let install = || -> std::io::Result<()> {
                use std::os::unix::fs::PermissionsExt;
                let dir = dest.parent().unwrap_or(Path::new("/"));
                std::fs::create_dir_all(dir)?;
                let tmp = dir.join(format!(".lazarus-runc.{}.tmp", std::process::id()));
                std::fs::copy(&built, &tmp)?;
                std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
                std::fs::rename(&tmp, &dest)
            };
            install().map_err(|e| format!("installing {} as {}: {e}", built.display(), dest.display()))?;
            Ok(dest.clone())
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// One test's lazarus node on the test bed: `lazarus serve` with its own
/// directory (config, state, run dir, sockets) in front of the test bed's
/// containerd, the runc wrapper installed, a CRI client through it, and the
/// test pods earlier runs left swept.
#[derive(Debug)]
pub struct Node {
    /// The test bed.
    pub bed: Testbed,
    /// This node's directory (`config.toml`, `state/`, `run/`, `cri.sock`).
    pub dir: tempfile::TempDir,
    /// CRI through lazarus, as kubelet.
    pub cri: Cri,
    /// The daemon.
    pub lazarus: LazarusProcess,
}

impl Node {
    /// A node whose `config.toml` names the test bed's restore dir, plus `extra_config` (TOML lines).
    pub async fn up(extra_config: &str) -> Result<Node> {
        let bed = Testbed::load()?;
        install_runc_wrapper()?;
        let dir = tempfile::tempdir()?;
        let config = format!("restore_dir = {:?}\n{extra_config}", bed.var("LAZARUS_RESTORE_DIR")?);
        let socket = dir.path().join("cri.sock");
        let lazarus = LazarusProcess::start_with_config(dir.path(), &socket, &bed.containerd_socket()?, Some(&config))?;
        let mut cri = Cri::connect(&socket)?;
        cri.sweep_test_pods().await?;
        Ok(Node { bed, dir, cri, lazarus })
    }
}

/// `lazarus ARGS` against the node in `dir` (its `config.toml`, state and
/// run dirs) and the test bed's containerd; the finished process's output.
pub fn lazarus_cli(bed: &Testbed, dir: &Path, args: &[&str]) -> Result<std::process::Output> {
    Ok(Command::new(lazarus_bin()?)
        .args(args)
        .arg("--config")
        .arg(dir.join("config.toml"))
        .arg("--upstream")
        .arg(format!("unix://{}", bed.containerd_socket()?.display()))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--run-dir")
        .arg(dir.join("run"))
        .output()?)
}

/// `lazarus checkpoint CONTAINER EXTRA…` against the node in `dir`: the
/// `local:` reference it prints.
pub fn checkpoint_cli(bed: &Testbed, dir: &Path, container: &str, extra: &[&str]) -> Result<String> {
    let args: Vec<&str> = ["checkpoint", container].into_iter().chain(extra.iter().copied()).collect();
    let out = lazarus_cli(bed, dir, &args)?;
    ensure!(out.status.success(), "lazarus checkpoint {container} failed: {}", String::from_utf8_lossy(&out.stderr));
    let reference = String::from_utf8(out.stdout)?.lines().next().unwrap_or_default().trim().to_owned();
    ensure!(reference.starts_with("local:"), "lazarus checkpoint printed no local: reference but {reference:?}");
    Ok(reference)
}

/// A `lazarus serve` child process.
#[derive(Debug)]
pub struct LazarusProcess {
    child: Child,
    /// Its CRI socket.
    pub socket: PathBuf,
    /// Where its stderr goes.
    pub log: PathBuf,
}

impl LazarusProcess {
    /// Starts `lazarus serve` on `socket` in front of `upstream_socket`,
    /// with state under `dir`; waits until the socket accepts connections.
    pub fn start(dir: &Path, socket: &Path, upstream_socket: &Path) -> Result<LazarusProcess> {
        Self::start_with_config(dir, socket, upstream_socket, None)
    }

    /// Like [`LazarusProcess::start`], with a configuration file's text
    /// (written to `dir/config.toml`) for settings that have no flag.
    pub fn start_with_config(
        dir: &Path,
        socket: &Path,
        upstream_socket: &Path,
        config: Option<&str>,
    ) -> Result<LazarusProcess> {
        let log = dir.join(format!("lazarus-{}.log", std::process::id()));
        let log_file = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
        let mut command = Command::new(lazarus_bin()?);
        command.arg("serve");
        if let Some(text) = config {
            let path = dir.join("config.toml");
            std::fs::write(&path, text)?;
            command.arg("--config").arg(path);
        }
        let child = command
            .arg("--listen")
            .arg(socket)
            .arg("--upstream")
            .arg(format!("unix://{}", upstream_socket.display()))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--run-dir")
            .arg(dir.join("run"))
            .arg("--log-level")
            .arg(std::env::var("LAZARUS_E2E_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .context("spawning lazarus serve")?;
        let mut process = LazarusProcess { child, socket: socket.to_owned(), log };
        process.wait_ready()?;
        Ok(process)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("lazarus exited during start-up ({status}); log:\n{}", self.log_text());
            }
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("lazarus did not listen on {} within 20s; log:\n{}", self.socket.display(), self.log_text())
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal.
    pub fn signal(&self, signal: nix::sys::signal::Signal) -> Result<()> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id())?);
        nix::sys::signal::kill(pid, signal)?;
        Ok(())
    }

    /// SIGTERM, then waits for the exit status.
    pub fn terminate(mut self) -> Result<std::process::ExitStatus> {
        self.signal(nix::sys::signal::Signal::SIGTERM)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("lazarus did not exit within 30s of SIGTERM")
    }

    /// SIGKILL (a crash), then reaps it.
    pub fn kill(mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Resident set size in KiB, from /proc.
    pub fn rss_kib(&self) -> Result<u64> {
        rss_kib(self.child.id())
    }

    /// The daemon's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for LazarusProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// VmRSS of a process in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/PID/status")
}

/// A channel to a CRI endpoint on a unix socket (lazy: it dials on first use
/// and redials after failures, as kubelet's client does).
pub fn channel(socket: &Path) -> Result<Channel> {
    Ok(Endpoint::from_shared(format!("unix://{}", socket.display()))?
        .connect_timeout(Duration::from_secs(5))
        .connect_lazy())
}

/// Both CRI services on one endpoint.
#[derive(Debug, Clone)]
pub struct Cri {
    /// RuntimeService.
    pub runtime: RuntimeServiceClient<Channel>,
    /// ImageService.
    pub image: ImageServiceClient<Channel>,
}

impl Cri {
    /// Clients for the endpoint at `socket`, with kubelet's 16 MiB limits.
    pub fn connect(socket: &Path) -> Result<Cri> {
        let channel = channel(socket)?;
        Ok(Cri {
            runtime: RuntimeServiceClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE),
            image: ImageServiceClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE),
        })
    }

    /// RunPodSandbox with the default runtime handler; returns the pod id.
    pub async fn run_pod(&mut self, config: &v1::PodSandboxConfig) -> Result<String> {
        let request = v1::RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: String::new() };
        let id = self.runtime.run_pod_sandbox(request).await?.into_inner().pod_sandbox_id;
        ensure!(!id.is_empty(), "RunPodSandbox returned no id");
        Ok(id)
    }

    /// PullImage for a pod; returns the image reference (`sha256:…`).
    pub async fn pull(&mut self, image: &str, pod: &v1::PodSandboxConfig) -> Result<String> {
        let request = v1::PullImageRequest {
            image: Some(v1::ImageSpec { image: image.to_owned(), ..Default::default() }),
            auth: None,
            sandbox_config: Some(pod.clone()),
        };
        Ok(self.image.pull_image(request).await?.into_inner().image_ref)
    }

    /// CreateContainer in a pod; returns the container id.
    pub async fn create_container(
        &mut self,
        pod_id: &str,
        config: v1::ContainerConfig,
        pod: &v1::PodSandboxConfig,
    ) -> Result<String> {
        let request = v1::CreateContainerRequest {
            pod_sandbox_id: pod_id.to_owned(),
            config: Some(config),
            sandbox_config: Some(pod.clone()),
        };
        let id = self.runtime.create_container(request).await?.into_inner().container_id;
        ensure!(!id.is_empty(), "CreateContainer returned no id");
        Ok(id)
    }

    /// ContainerStatus (not verbose).
    pub async fn container_status(&mut self, container_id: &str) -> Result<v1::ContainerStatus> {
        let request = v1::ContainerStatusRequest { container_id: container_id.to_owned(), verbose: false };
        self.runtime.container_status(request).await?.into_inner().status.context("ContainerStatus without a status")
    }

    /// Reads the number a container keeps in `/count` (the tests' counters).
    pub async fn read_counter(&mut self, container_id: &str) -> Result<u64> {
        let request = v1::ExecSyncRequest {
            container_id: container_id.to_owned(),
            cmd: vec!["cat".into(), "/count".into()],
            timeout: 10,
        };
        let exec = self.runtime.exec_sync(request).await?.into_inner();
        ensure!(exec.exit_code == 0, "cat /count: {}", String::from_utf8_lossy(&exec.stderr));
        Ok(String::from_utf8_lossy(&exec.stdout).trim().parse()?)
    }

    /// ExecSync `cmd` in a container; returns (exit code, stdout, stderr).
    pub async fn exec(&mut self, container_id: &str, cmd: &[&str]) -> Result<(i32, String, String)> {
        let request = v1::ExecSyncRequest {
            container_id: container_id.to_owned(),
            cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
            timeout: 10,
        };
        let out = self.runtime.exec_sync(request).await?.into_inner();
        Ok((
            out.exit_code,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// StopPodSandbox + RemovePodSandbox.
    pub async fn remove_pod(&mut self, pod_id: &str) -> Result<()> {
        self.runtime.stop_pod_sandbox(v1::StopPodSandboxRequest { pod_sandbox_id: pod_id.to_owned() }).await?;
        self.runtime.remove_pod_sandbox(v1::RemovePodSandboxRequest { pod_sandbox_id: pod_id.to_owned() }).await?;
        Ok(())
    }

    /// Stops and removes every pod carrying [`E2E_LABEL`].
    pub async fn sweep_test_pods(&mut self) -> Result<()> {
        let filter = v1::PodSandboxFilter {
            label_selector: [(E2E_LABEL.to_owned(), "true".to_owned())].into(),
            ..Default::default()
        };
        let pods =
            self.runtime.list_pod_sandbox(v1::ListPodSandboxRequest { filter: Some(filter) }).await?.into_inner().items;
        for pod in pods {
            self.runtime.stop_pod_sandbox(v1::StopPodSandboxRequest { pod_sandbox_id: pod.id.clone() }).await?;
            self.runtime.remove_pod_sandbox(v1::RemovePodSandboxRequest { pod_sandbox_id: pod.id }).await?;
        }
        Ok(())
    }
}

/// A pod sandbox configuration as kubelet builds it (metadata, hostname, log
/// directory, DNS, labels, annotations, Linux namespaces and cgroup parent).
pub fn pod_config(name: &str, namespace: &str, log_dir: &Path, annotations: &[(&str, &str)]) -> v1::PodSandboxConfig {
    let uid = format!("{:x}", rand_u64());
    v1::PodSandboxConfig {
        metadata: Some(v1::PodSandboxMetadata {
            name: name.to_owned(),
            uid: uid.clone(),
            namespace: namespace.to_owned(),
            attempt: 0,
        }),
        hostname: name.to_owned(),
        log_directory: log_dir.display().to_string(),
        dns_config: Some(v1::DnsConfig {
            servers: vec!["127.0.0.53".into()],
            searches: vec![format!("{namespace}.svc.cluster.local")],
            options: vec!["ndots:5".into()],
        }),
        port_mappings: vec![],
        labels: [
            (E2E_LABEL.to_owned(), "true".to_owned()),
            ("io.kubernetes.pod.name".to_owned(), name.to_owned()),
            ("io.kubernetes.pod.namespace".to_owned(), namespace.to_owned()),
            ("io.kubernetes.pod.uid".to_owned(), uid.clone()),
        ]
        .into(),
        annotations: annotations.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        linux: Some(v1::LinuxPodSandboxConfig {
            cgroup_parent: format!("/lazarus-e2e/pod{uid}"),
            security_context: Some(v1::LinuxSandboxSecurityContext {
                namespace_options: Some(kubelet_namespaces()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        windows: None,
    }
}

/// The namespaces kubelet asks for: the pod's network and IPC, a private PID namespace.
fn kubelet_namespaces() -> v1::NamespaceOption {
    v1::NamespaceOption {
        network: v1::NamespaceMode::Pod as i32,
        pid: v1::NamespaceMode::Container as i32,
        ipc: v1::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// A container configuration for a container of `pod`, as kubelet builds it
/// (including the `io.kubernetes.pod.*` labels it puts on every container).
pub fn container_config(pod: &v1::PodSandboxConfig, name: &str, image: &str, command: &[&str]) -> v1::ContainerConfig {
    let metadata = pod.metadata.clone().unwrap_or_default();
    v1::ContainerConfig {
        metadata: Some(v1::ContainerMetadata { name: name.to_owned(), attempt: 0 }),
        image: Some(v1::ImageSpec { image: image.to_owned(), ..Default::default() }),
        command: command.iter().map(|s| (*s).to_owned()).collect(),
        log_path: format!("{name}/0.log"),
        labels: [
            (E2E_LABEL.to_owned(), "true".to_owned()),
            ("io.kubernetes.container.name".to_owned(), name.to_owned()),
            ("io.kubernetes.pod.name".to_owned(), metadata.name),
            ("io.kubernetes.pod.namespace".to_owned(), metadata.namespace),
            ("io.kubernetes.pod.uid".to_owned(), metadata.uid),
        ]
        .into(),
        linux: Some(v1::LinuxContainerConfig {
            resources: Some(v1::LinuxContainerResources {
                cpu_period: 100_000,
                cpu_shares: 2,
                oom_score_adj: 1000,
                ..Default::default()
            }),
            security_context: Some(v1::LinuxContainerSecurityContext {
                namespace_options: Some(kubelet_namespaces()),
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}

/// The stateful workload the checkpoint and restore suites run: a counter in
/// `/count` and on stdout, a file written in the writable layer, a file deleted
/// from the image, and a listening echo server on 8080 with a connected client.
pub const STATEFUL_WORKLOAD: &str = "echo stateful > /data.txt; rm /bin/vi; \
    nc -ll -p 8080 -e /bin/cat & sleep 1; (sleep 1000000 | nc 127.0.0.1 8080 >/dev/null &); \
    i=0; while true; do echo $i > /count; echo count $i; i=$((i+1)); sleep 1; done";

/// A process-unique pseudo-random number (pod uids, names).
pub fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    h.finish()
}

/// Polls `check` every 100 ms until it returns `Some` or `timeout` passes.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether `ip` (dotted quad) lies in `cidr` (`a.b.c.d/n`).
pub fn ip_in_subnet(ip: &str, cidr: &str) -> bool {
    let parse = |s: &str| s.parse::<std::net::Ipv4Addr>().ok().map(u32::from);
    let Some((net, bits)) = cidr.split_once('/') else { return false };
    let (Some(ip), Some(net), Ok(bits)) = (parse(ip), parse(net), bits.parse::<u32>()) else { return false };
    let mask = if bits == 0 { 0 } else { u32::MAX << (32 - bits.min(32)) };
    ip & mask == net & mask
}

/// The complete lines of a host file as numbers (a line still being written is left out).
pub fn numbers(path: &Path) -> Result<Vec<u64>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .map(|l| l.trim().parse::<u64>().with_context(|| format!("{}: line {l:?} is not a number", path.display())))
        .collect()
}

/// `numbers` (the records of `what`, in order) must be exactly 1, 2, …, n: no
/// number twice, none missing. Returns n.
pub fn check_sequence(what: &str, numbers: &[u64]) -> Result<u64> {
    for (i, n) in numbers.iter().enumerate() {
        let want = i as u64 + 1;
        if *n != want {
            let from = i.saturating_sub(3);
            let to = (i + 3).min(numbers.len());
            bail!("{what}: line {want} is {n} (lines {}..{}: {:?})", from + 1, to, &numbers[from..to]);
        }
    }
    Ok(numbers.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_are_checked() {
        assert_eq!(check_sequence("f", &[1, 2, 3]).ok(), Some(3));
        assert!(check_sequence("f", &[1, 2, 2, 3]).is_err(), "a duplicate");
        assert!(check_sequence("f", &[1, 3]).is_err(), "a gap");
        assert!(check_sequence("f", &[2, 3]).is_err(), "a missing start");
        assert!(check_sequence("f", &[3, 4]).is_err(), "a missing start: an emptyDir that came back empty");
    }

    #[test]
    fn subnet_membership() {
        assert!(ip_in_subnet("10.233.0.7", "10.233.0.0/24"));
        assert!(!ip_in_subnet("10.233.1.7", "10.233.0.0/24"));
        assert!(!ip_in_subnet("garbage", "10.233.0.0/24"));
    }
}

/// The outcome of a raw unary gRPC call: status and response bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawReply {
    /// gRPC status code.
    pub code: tonic::Code,
    /// gRPC status message.
    pub message: String,
    /// Response body (framed messages).
    pub body: bytes::Bytes,
}

/// Calls `path` with an already framed request body, without any generated
/// code — for methods newer than the vendored proto.
pub async fn raw_unary(channel: &Channel, path: &str, framed: bytes::Bytes) -> Result<RawReply> {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let request = http::Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(http_body_util::Full::new(framed)))?;
    let response = channel.clone().oneshot(request).await?;
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.map_err(|s| anyhow::anyhow!("response body: {s}"))?;
    let status = collected
        .trailers()
        .and_then(tonic::Status::from_header_map)
        .or_else(|| tonic::Status::from_header_map(&parts.headers))
        .context("response without grpc-status")?;
    Ok(RawReply { code: status.code(), message: status.message().to_owned(), body: collected.to_bytes() })
}
