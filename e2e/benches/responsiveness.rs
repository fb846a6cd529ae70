//! Responsiveness under checkpoint/restore load (issue 10): the latency of
//! plain CRI passthrough calls (Version, ListContainers, ContainerStatus)
//! through one `lazarus serve`, measured
//!
//! - **idle**: nothing but the probe calls, and
//! - **busy**: while that same daemon takes a 1 GiB checkpoint
//!   (`StopContainer` of a pod annotated `checkpoint-on-stop`), restores a
//!   1 GiB checkpoint from its local store (`restore-from: local:…`) and
//!   restores another one from the test bed's registry (`restore-from:
//!   127.0.0.1:5000/…`; the daemon's download cache is empty, so the
//!   download, its verification and unpacking all happen in the window),
//!   all three started at once;
//!
//! in one run, interleaved (idle, busy, idle, busy, …) so both see the same
//! machine. Probe calls come from a few concurrent clients (one connection
//! each) at a steady total rate, open loop: a call is sent on schedule
//! whether or not the previous one has been answered, so a daemon that
//! stalls for S ms delays every call that falls in the stall (no coordinated
//! omission). A call's latency is measured from the moment it is sent. The
//! clients run all the time; a call counts for the window in which it was
//! sent, calls sent while pods are prepared or cleaned up between windows
//! count for neither.
//!
//! Nothing is asserted: the goal (busy p99 ≤ 2× idle p99) is
//! reported, not checked.
//!
//! As a control, the same calls go straight to containerd at a lower rate
//! (`--direct-rate`, 0 for none) in the same windows: what the machine and
//! containerd alone do to them.
//!
//! `cargo bench -p lazarus-e2e --bench responsiveness [-- --size MIB --rounds N
//! --idle-secs S --clients N --rate CALLS_PER_S --direct-rate CALLS_PER_S --settle-secs S]`
//! (needs `e2e/testbed/testbed.sh up`, gcc with static glibc; run as root).
//! Pods are created in the namespace `lazarus-bench-responsiveness` only,
//! and only pods of that namespace are removed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use lazarus_e2e::bench::build_memhog;
use lazarus_e2e::{Cri, LazarusProcess, Testbed, container_config, pod_config, wait_for};
use lazarus_proto::v1;

const NAMESPACE: &str = "lazarus-bench-responsiveness";
/// Sleeping containers in the probe pod (what ListContainers lists besides the bench's own).
const PROBE_CONTAINERS: usize = 10;
/// A probe call that takes longer than this counts as an error.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    Version,
    ListContainers,
    ContainerStatus,
}

const CALLS: [Call; 3] = [Call::Version, Call::ListContainers, Call::ContainerStatus];

impl Call {
    fn name(self) -> &'static str {
        match self {
            Call::Version => "Version",
            Call::ListContainers => "ListContainers",
            Call::ContainerStatus => "ContainerStatus",
        }
    }
}

/// One probe call.
#[derive(Clone, Copy, Debug)]
struct Sample {
    call: Call,
    sent: Instant,
    /// Latency in ms; `None` for a failed or timed-out call.
    ms: Option<f64>,
}

/// One operation (or step of one) of a busy window, for "what was running".
#[derive(Clone, Debug)]
struct Phase {
    name: String,
    start: Instant,
    end: Instant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Idle,
    Busy,
}

/// A measurement window.
#[derive(Clone, Debug)]
struct Window {
    round: usize,
    kind: Kind,
    start: Instant,
    end: Instant,
    /// The daemon's CPU time (user + system) in the window, seconds.
    cpu_s: f64,
    phases: Vec<Phase>,
}

fn arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return f64::NAN };
    let Some((_, after_comm)) = stat.rsplit_once(')') else { return f64::NAN };
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); after the comm field they are at 11 and 12.
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // sysconf(_SC_CLK_TCK) is 100 on every Linux the project runs on.
    (ticks(11) + ticks(12)) as f64 / 100.0
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// The probe clients: `clients` connections, `rate` calls per second in all,
/// each client cycling through [`CALLS`]; open loop.
struct Probes {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Probes {
    fn start(socket: &Path, clients: usize, rate: f64, container_id: &str) -> Result<Probes> {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let period = Duration::from_secs_f64(clients as f64 / rate);
        let container_id: Arc<str> = container_id.into();
        let mut tasks = Vec::new();
        for client in 0..clients {
            let cri = Cri::connect(socket)?;
            let (stop, samples, container_id) = (stop.clone(), samples.clone(), container_id.clone());
            tasks.push(tokio::spawn(async move {
                // Clients staggered over one period.
                tokio::time::sleep(period.mul_f64(client as f64 / clients as f64)).await;
                let mut ticks = tokio::time::interval(period);
                let mut n = client;
                while !stop.load(Ordering::Relaxed) {
                    ticks.tick().await;
                    let call = CALLS[n % CALLS.len()];
                    n += 1;
                    let (mut cri, samples, container_id) = (cri.clone(), samples.clone(), container_id.clone());
                    tokio::spawn(async move {
                        let sent = Instant::now();
                        let ok = tokio::time::timeout(CALL_TIMEOUT, one_call(&mut cri, call, &container_id)).await;
                        let ms = matches!(ok, Ok(Ok(()))).then(|| sent.elapsed().as_secs_f64() * 1000.0);
                        if let Ok(mut samples) = samples.lock() {
                            samples.push(Sample { call, sent, ms });
                        }
                    });
                }
            }));
        }
        Ok(Probes { stop, samples, tasks })
    }

    async fn stop(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let _ = task.await;
        }
        // Let calls in flight finish (they are outside every window by now).
        tokio::time::sleep(Duration::from_secs(1)).await;
        self.samples.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

async fn one_call(cri: &mut Cri, call: Call, container_id: &str) -> Result<()> {
    match call {
        Call::Version => {
            cri.runtime.version(v1::VersionRequest { version: "0.1.0".into() }).await?;
        }
        Call::ListContainers => {
            let n = cri.runtime.list_containers(v1::ListContainersRequest { filter: None }).await?;
            ensure!(
                n.get_ref().containers.len() >= PROBE_CONTAINERS,
                "expected at least {PROBE_CONTAINERS} containers"
            );
        }
        Call::ContainerStatus => {
            cri.runtime
                .container_status(v1::ContainerStatusRequest { container_id: container_id.to_owned(), verbose: false })
                .await?;
        }
    }
    Ok(())
}

/// Records how long `f` took as a phase named `name`.
async fn timed<T>(
    phases: &Mutex<Vec<Phase>>,
    name: &str,
    f: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let start = Instant::now();
    let result = f.await;
    let end = Instant::now();
    if let Ok(mut phases) = phases.lock() {
        phases.push(Phase { name: name.to_owned(), start, end });
    }
    result.with_context(|| format!("busy window: {name}"))
}

/// `lazarus serve` in front of the test bed's containerd, and what the
/// busy windows need.
struct Bed {
    bed: Testbed,
    dir: tempfile::TempDir,
    cri: Cri,
    lazarus: LazarusProcess,
    image: String,
    memhog: PathBuf,
    mib: usize,
}

impl Bed {
    async fn up(dir: tempfile::TempDir, memhog: PathBuf, mib: usize) -> Result<Bed> {
        let bed = Testbed::load()?;
        lazarus_e2e::install_runc_wrapper()?;
        let registry = bed.var("REGISTRY")?.to_owned();
        let host = registry.split(':').next().unwrap_or("127.0.0.1");
        let config = format!(
            "restore_dir = {:?}\n\
             restore_allowed_registries = [\"{registry}/lazarus-bench\"]\n\
             insecure_registries = [{host:?}]\n",
            bed.var("LAZARUS_RESTORE_DIR")?
        );
        let socket = dir.path().join("cri.sock");
        let lazarus = LazarusProcess::start_with_config(dir.path(), &socket, &bed.containerd_socket()?, Some(&config))?;
        let cri = Cri::connect(&socket)?;
        let image = bed.workload_image()?.to_owned();
        let mut bed = Bed { bed, dir, cri, lazarus, image, memhog, mib };
        bed.sweep().await?;
        Ok(bed)
    }

    /// Stops and removes the pods of [`NAMESPACE`], and only those.
    async fn sweep(&mut self) -> Result<()> {
        let filter = v1::PodSandboxFilter {
            label_selector: [("io.kubernetes.pod.namespace".to_owned(), NAMESPACE.to_owned())].into(),
            ..Default::default()
        };
        let request = v1::ListPodSandboxRequest { filter: Some(filter) };
        let pods = self.cri.runtime.list_pod_sandbox(request).await?.into_inner().items;
        for pod in pods {
            ensure!(pod.metadata.as_ref().is_some_and(|m| m.namespace == NAMESPACE), "filter let through {pod:?}");
            self.cri.remove_pod(&pod.id).await?;
        }
        Ok(())
    }

    fn pod(&self, name: &str, annotations: &[(&str, &str)]) -> Result<v1::PodSandboxConfig> {
        let logs = self.dir.path().join("pods").join(format!("{name}-{:x}", lazarus_e2e::rand_u64()));
        std::fs::create_dir_all(&logs)?;
        Ok(pod_config(name, NAMESPACE, &logs, annotations))
    }

    /// RunPodSandbox + PullImage.
    async fn run_pod(&mut self, pod: &v1::PodSandboxConfig) -> Result<String> {
        let id = self.cri.run_pod(pod).await?;
        let image = self.image.clone();
        self.cri.pull(&image, pod).await?;
        Ok(id)
    }

    fn memhog_config(&self, pod: &v1::PodSandboxConfig) -> v1::ContainerConfig {
        memhog_config(pod, &self.image, &self.memhog, self.mib)
    }

    /// A pod running memhog, filled and ready; returns (pod id, container id).
    async fn memhog_pod(&mut self, pod: &v1::PodSandboxConfig) -> Result<(String, String)> {
        let pod_id = self.run_pod(pod).await?;
        let config = self.memhog_config(pod);
        let id = self.cri.create_container(&pod_id, config, pod).await?;
        self.cri.runtime.start_container(v1::StartContainerRequest { container_id: id.clone() }).await?;
        let log = Path::new(&pod.log_directory).join("memhog/0.log");
        wait_for(Duration::from_secs(300), "memhog ready", || {
            let log = log.clone();
            async move { std::fs::read_to_string(&log).ok().filter(|t| t.contains("ready")).map(|_| ()) }
        })
        .await?;
        Ok((pod_id, id))
    }

    /// `lazarus checkpoint` of `container` into the store under `state`
    /// (the daemon's own, or another node's); returns stdout's lines.
    fn checkpoint(
        &self,
        container: &str,
        config: &Path,
        state: &Path,
        run: &Path,
        extra: &[&str],
    ) -> Result<Vec<String>> {
        let out = Command::new(lazarus_e2e::lazarus_bin()?)
            .args(["checkpoint", container])
            .args(extra)
            .arg("--config")
            .arg(config)
            .arg("--upstream")
            .arg(format!("unix://{}", self.bed.containerd_socket()?.display()))
            .arg("--state-dir")
            .arg(state)
            .arg("--run-dir")
            .arg(run)
            .output()?;
        ensure!(out.status.success(), "lazarus checkpoint failed: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8(out.stdout)?.lines().map(|l| l.trim().to_owned()).collect())
    }

    /// The checkpoints the busy windows restore: one in the daemon's store
    /// (`local:` reference) and one pushed to the registry from another
    /// node's store, which the daemon has never seen.
    async fn sources(&mut self) -> Result<(String, String)> {
        let pod = self.pod("source", &[])?;
        let (pod_id, _) = self.memhog_pod(&pod).await?;
        let key = format!("{NAMESPACE}/source/memhog");
        let local = self.checkpoint(
            &key,
            &self.dir.path().join("config.toml"),
            &self.dir.path().join("state"),
            &self.dir.path().join("run"),
            &[],
        )?;
        let local = local.first().cloned().unwrap_or_default();
        ensure!(local.starts_with("local:"), "unexpected reference {local:?}");
        let other = self.dir.path().join("other-node");
        std::fs::create_dir_all(&other)?;
        let registry = self.bed.var("REGISTRY")?.to_owned();
        let host = registry.split(':').next().unwrap_or("127.0.0.1");
        std::fs::write(other.join("config.toml"), format!("insecure_registries = [{host:?}]\n"))?;
        let repository = format!("{registry}/lazarus-bench/responsiveness-{:x}", lazarus_e2e::rand_u64());
        let pushed = self.checkpoint(
            &key,
            &other.join("config.toml"),
            &other.join("state"),
            &other.join("run"),
            &["--keep", "1", "--repository", &repository],
        )?;
        let remote = pushed.get(1).cloned().context("lazarus checkpoint --repository printed no pushed reference")?;
        ensure!(remote.starts_with(&registry), "unexpected pushed reference {remote:?}");
        // The other node's local copy is not needed any more.
        std::fs::remove_dir_all(other.join("state"))?;
        self.cri.remove_pod(&pod_id).await?;
        Ok((local, remote))
    }

    /// The pod whose containers the probes ask about: sleeping busybox containers.
    async fn probe_pod(&mut self) -> Result<String> {
        let pod = self.pod("probe", &[])?;
        let pod_id = self.run_pod(&pod).await?;
        let mut last = String::new();
        for i in 0..PROBE_CONTAINERS {
            let config = container_config(&pod, &format!("c{i}"), &self.image, &["/bin/sleep", "2147483647"]);
            last = self.cri.create_container(&pod_id, config, &pod).await?;
            self.cri.runtime.start_container(v1::StartContainerRequest { container_id: last.clone() }).await?;
        }
        Ok(last)
    }

    /// Checkpoints taken before stop so far, from the daemon's log.
    fn stop_checkpoints(&self) -> usize {
        self.lazarus.log_text().matches("checkpointed before stop").count()
    }

    /// Entries of the daemon's download cache.
    fn cache_entries(&self) -> Result<usize> {
        let cache = Path::new(self.bed.var("LAZARUS_RESTORE_DIR")?).join(".cache");
        Ok(std::fs::read_dir(cache).map(|d| d.count()).unwrap_or(0))
    }

    /// One busy window: prepares it (not measured), runs the three
    /// operations at once (measured), checks and cleans up (not measured).
    async fn busy(&mut self, round: usize, local: &str, remote: &str, settle: Duration) -> Result<Window> {
        // The container to checkpoint: stable pod name with keep 1, so every
        // round's checkpoint replaces the previous one in the store.
        let ckpt_pod =
            self.pod("ckpt", &[("lazarus.dev/checkpoint-on-stop", "true"), ("lazarus.dev/checkpoint-keep", "1")])?;
        let (ckpt_pod_id, ckpt_id) = self.memhog_pod(&ckpt_pod).await?;
        let local_pod = self.pod(&format!("restore-local-{round}"), &[("lazarus.dev/restore-from", local)])?;
        let local_pod_id = self.run_pod(&local_pod).await?;
        let remote_pod = self.pod(&format!("restore-registry-{round}"), &[("lazarus.dev/restore-from", remote)])?;
        ensure!(self.cache_entries()? == 0, "the daemon's download cache is not empty before round {round}");
        let stops_before = self.stop_checkpoints();
        tokio::time::sleep(settle).await;

        let phases = Mutex::new(Vec::new());
        let socket = self.lazarus.socket.clone();
        let (image, memhog, mib) = (self.image.clone(), self.memhog.clone(), self.mib);
        let cpu_before = cpu_seconds(self.lazarus.pid());
        let start = Instant::now();
        let checkpoint = async {
            let mut cri = Cri::connect(&socket)?;
            timed(&phases, &format!("{mib} MiB checkpoint + stop (StopContainer, checkpoint-on-stop)"), async {
                let request = v1::StopContainerRequest { container_id: ckpt_id.clone(), timeout: 120 };
                cri.runtime.stop_container(request).await?;
                Ok(())
            })
            .await
        };
        let local_restore = async {
            let mut cri = Cri::connect(&socket)?;
            let config = memhog_config(&local_pod, &image, &memhog, mib);
            let id = timed(
                &phases,
                "local restore: CreateContainer (verify, unpack)",
                cri.create_container(&local_pod_id, config, &local_pod),
            )
            .await?;
            timed(&phases, "local restore: StartContainer (runc restore)", async {
                cri.runtime.start_container(v1::StartContainerRequest { container_id: id.clone() }).await?;
                Ok(())
            })
            .await?;
            anyhow::Ok(id)
        };
        let registry_restore = async {
            let mut cri = Cri::connect(&socket)?;
            let pod_id =
                timed(&phases, "registry restore: RunPodSandbox (download starts)", cri.run_pod(&remote_pod)).await?;
            timed(&phases, "registry restore: PullImage", cri.pull(&image, &remote_pod)).await?;
            let config = memhog_config(&remote_pod, &image, &memhog, mib);
            let id = timed(&phases, "registry restore: CreateContainer (download, verify, unpack)", async {
                // kubelet retries a CreateContainer answered "still downloading".
                loop {
                    match cri.create_container(&pod_id, config.clone(), &remote_pod).await {
                        Err(e)
                            if e.downcast_ref::<tonic::Status>()
                                .is_some_and(|s| s.code() == tonic::Code::Unavailable) =>
                        {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        other => break other,
                    }
                }
            })
            .await?;
            timed(&phases, "registry restore: StartContainer (runc restore)", async {
                cri.runtime.start_container(v1::StartContainerRequest { container_id: id.clone() }).await?;
                Ok(())
            })
            .await?;
            anyhow::Ok((pod_id, id))
        };
        let (checkpointed, local_restored, remote_restored) = tokio::join!(checkpoint, local_restore, registry_restore);
        let end = Instant::now();
        let cpu_s = cpu_seconds(self.lazarus.pid()) - cpu_before;

        // Checks and clean-up, outside the window.
        let mut problems = Vec::new();
        if let Err(e) = &checkpointed {
            problems.push(format!("{e:#}"));
        } else if self.stop_checkpoints() != stops_before + 1 {
            problems.push(format!(
                "StopContainer did not checkpoint (no new \"checkpointed before stop\" in {})",
                self.lazarus.log.display()
            ));
        }
        let remote_pod_id = remote_restored.as_ref().ok().map(|(pod, _)| pod.clone());
        let restored = [
            ("local restore", local_restored.map_err(|e| format!("{e:#}"))),
            ("registry restore", remote_restored.map(|(_, id)| id).map_err(|e| format!("{e:#}"))),
        ];
        for (what, id) in restored {
            match id {
                Err(e) => problems.push(e),
                Ok(id) => {
                    let status = self.cri.container_status(&id).await?;
                    if status.state != v1::ContainerState::ContainerRunning as i32 {
                        problems.push(format!("{what}: the restored container is not running: {status:?}"));
                    }
                }
            }
        }
        for pod_id in [Some(ckpt_pod_id), Some(local_pod_id), remote_pod_id].into_iter().flatten() {
            self.cri.remove_pod(&pod_id).await?;
        }
        if !problems.is_empty() {
            bail!("round {round}: {}", problems.join("\n"));
        }
        let mut phases = phases.into_inner().unwrap_or_default();
        phases.sort_by_key(|p| p.start);
        Ok(Window { round, kind: Kind::Busy, start, end, cpu_s, phases })
    }
}

fn memhog_config(pod: &v1::PodSandboxConfig, image: &str, memhog: &Path, mib: usize) -> v1::ContainerConfig {
    // memhog as PID 1 would ignore StopContainer's SIGTERM (and the stop
    // would wait out its whole timeout after the checkpoint): a shell that
    // exits on TERM runs it.
    let script = format!("trap 'exit 0' TERM; /memhog {mib} & wait");
    let mut config = container_config(pod, "memhog", image, &["/bin/sh", "-c", &script]);
    config.mounts.push(v1::Mount {
        container_path: "/memhog".into(),
        host_path: memhog.display().to_string(),
        readonly: true,
        ..Default::default()
    });
    config
}

/// Latencies (ms) of the successful samples of `call` (all calls: `None`)
/// sent in windows of `kind`, sorted; and the number of failed ones.
fn latencies(samples: &[Sample], windows: &[Window], kind: Kind, call: Option<Call>) -> (Vec<f64>, usize) {
    let mut ok = Vec::new();
    let mut failed = 0;
    for s in samples {
        if call.is_some_and(|c| c != s.call) || !windows.iter().any(|w| w.kind == kind && in_window(s, w)) {
            continue;
        }
        match s.ms {
            Some(ms) => ok.push(ms),
            None => failed += 1,
        }
    }
    ok.sort_by(f64::total_cmp);
    (ok, failed)
}

fn in_window(s: &Sample, w: &Window) -> bool {
    s.sent >= w.start && s.sent < w.end
}

fn secs(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64()
}

/// What was running (the phases overlapping [from, to]), with their times in the window.
fn running(w: &Window, from: Instant, to: Instant) -> String {
    let names: Vec<String> = w
        .phases
        .iter()
        .filter(|p| p.start < to && p.end > from)
        .map(|p| format!("{} (+{:.2}–{:.2} s)", p.name, secs(w.start, p.start), secs(w.start, p.end)))
        .collect();
    if names.is_empty() { "nothing of the window's operations (between them)".to_owned() } else { names.join("; ") }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let mib: usize = arg("--size", 1024);
    let rounds: usize = arg("--rounds", 5);
    let idle = Duration::from_secs_f64(arg("--idle-secs", 15.0));
    let clients: usize = arg("--clients", 4).max(1);
    let rate: f64 = arg("--rate", 200.0);
    let settle = Duration::from_secs_f64(arg("--settle-secs", 5.0));
    // The control: the same calls straight to containerd (0: none).
    let direct_rate: f64 = arg("--direct-rate", 50.0);
    ensure!(rate > 0.0 && rounds > 0, "--rate and --rounds must be positive");

    let testbed = Testbed::load()?;
    let dir = tempfile::tempdir_in("/var/tmp")?;
    let memhog = build_memhog(dir.path())?;
    lazarus_e2e::lazarus_bin()?; // built before anything is timed
    let mut bed = Bed::up(dir, memhog, mib).await?;
    println!(
        "responsiveness benchmark: containerd {} ({}), CRIU {}, kernel {}, {} cores; {mib} MiB per operation, \
         {rounds} rounds of idle {:.0} s + busy; {clients} clients, {rate:.0} calls/s in all (open loop), \
         calls cycling Version, ListContainers ({} + the bench's containers), ContainerStatus\n",
        testbed.var("CONTAINERD_VERSION").unwrap_or("?"),
        testbed.flavor(),
        testbed.var("CRIU_VERSION").unwrap_or("?"),
        std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        std::thread::available_parallelism().map_or(0, usize::from),
        idle.as_secs_f64(),
        PROBE_CONTAINERS,
    );
    let probe_id = bed.probe_pod().await?;
    eprintln!("preparing the checkpoints to restore ({mib} MiB each: one local, one pushed to the registry)…");
    let (local, remote) = bed.sources().await?;
    eprintln!("local: {local}\nregistry: {remote}");

    let probes = Probes::start(&bed.lazarus.socket, clients, rate, &probe_id)?;
    let direct = if direct_rate > 0.0 {
        Some(Probes::start(&testbed.containerd_socket()?, clients, direct_rate, &probe_id)?)
    } else {
        None
    };
    // Warm-up: connections made, nothing counted.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut windows = Vec::new();
    let result: Result<()> = async {
        for round in 1..=rounds {
            let cpu_before = cpu_seconds(bed.lazarus.pid());
            let start = Instant::now();
            tokio::time::sleep(idle).await;
            let end = Instant::now();
            let cpu_s = cpu_seconds(bed.lazarus.pid()) - cpu_before;
            windows.push(Window { round, kind: Kind::Idle, start, end, cpu_s, phases: Vec::new() });
            eprintln!("round {round}: idle {:.1} s; preparing the busy window…", secs(start, end));
            let busy = bed.busy(round, &local, &remote, settle).await?;
            eprintln!("round {round}: busy {:.1} s", secs(busy.start, busy.end));
            windows.push(busy);
            tokio::time::sleep(settle).await;
        }
        Ok(())
    }
    .await;
    let samples = probes.stop().await;
    let direct = match direct {
        Some(direct) => direct.stop().await,
        None => Vec::new(),
    };
    let swept = bed.sweep().await;
    // The daemon's log outlives the run's temporary directory.
    let log = PathBuf::from("/var/tmp/lazarus-bench-responsiveness.log");
    std::fs::copy(&bed.lazarus.log, &log).with_context(|| format!("copying the daemon's log to {}", log.display()))?;
    if let Err(e) = result {
        let text = bed.lazarus.log_text();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        eprintln!("daemon log (last 40 lines, all of it in {}):", log.display());
        for line in tail.iter().rev() {
            eprintln!("  {line}");
        }
        return Err(e);
    }
    swept?;
    report(&samples, &direct, direct_rate, &windows, &log);
    Ok(())
}

fn summary(samples: &[Sample], windows: &[Window]) {
    let ms = |v: f64| format!("{v:.2}");
    println!(
        "| call | idle calls | idle p50 ms | idle p99 ms | busy calls | busy p50 ms | busy p99 ms | p99 busy ÷ idle |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let rows = CALLS.iter().map(|c| (c.name(), Some(*c))).chain([("all", None)]);
    for (name, call) in rows {
        let (idle, idle_failed) = latencies(samples, windows, Kind::Idle, call);
        let (busy, busy_failed) = latencies(samples, windows, Kind::Busy, call);
        let failed = |n: usize| if n == 0 { String::new() } else { format!(" (+{n} failed)") };
        let (i99, b99) = (percentile(&idle, 0.99), percentile(&busy, 0.99));
        println!(
            "| {name} | {}{} | {} | {} | {}{} | {} | {} | {:.2} |",
            idle.len(),
            failed(idle_failed),
            ms(percentile(&idle, 0.5)),
            ms(i99),
            busy.len(),
            failed(busy_failed),
            ms(percentile(&busy, 0.5)),
            ms(b99),
            b99 / i99,
        );
    }
}

fn window_p99(samples: &[Sample], w: &Window) -> f64 {
    let mut lat: Vec<f64> = samples.iter().filter(|s| in_window(s, w)).filter_map(|s| s.ms).collect();
    lat.sort_by(f64::total_cmp);
    percentile(&lat, 0.99)
}

fn report(samples: &[Sample], direct: &[Sample], direct_rate: f64, windows: &[Window], log: &Path) {
    let ms = |v: f64| format!("{v:.2}");
    println!("through lazarus:\n");
    summary(samples, windows);
    if !direct.is_empty() {
        println!(
            "\ncontrol, the same calls sent directly to containerd at {direct_rate:.0} calls/s in the same windows \
             (not through lazarus):\n"
        );
        summary(direct, windows);
    }
    println!("\n| round | window | length s | calls | p50 ms | p99 ms | max ms | lazarus CPU s | direct p99 ms |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for w in windows {
        let mut lat: Vec<f64> = samples.iter().filter(|s| in_window(s, w)).filter_map(|s| s.ms).collect();
        lat.sort_by(f64::total_cmp);
        let failed = samples.iter().filter(|s| in_window(s, w) && s.ms.is_none()).count();
        println!(
            "| {} | {} | {:.1} | {}{} | {} | {} | {} | {:.2} | {} |",
            w.round,
            if w.kind == Kind::Idle { "idle" } else { "busy" },
            secs(w.start, w.end),
            lat.len(),
            if failed == 0 { String::new() } else { format!(" (+{failed} failed)") },
            ms(percentile(&lat, 0.5)),
            ms(percentile(&lat, 0.99)),
            ms(lat.last().copied().unwrap_or(f64::NAN)),
            w.cpu_s,
            ms(window_p99(direct, w)),
        );
    }
    let busy: Vec<&Window> = windows.iter().filter(|w| w.kind == Kind::Busy).collect();
    let total: f64 = busy.iter().map(|w| secs(w.start, w.end)).sum();
    println!(
        "\nbusy windows: {} , {total:.1} s in all; their operations (seconds from the window's start):",
        busy.len()
    );
    for w in &busy {
        let ops: Vec<String> = w
            .phases
            .iter()
            .map(|p| format!("{} +{:.2}–{:.2}", p.name, secs(w.start, p.start), secs(w.start, p.end)))
            .collect();
        println!("- round {}: {}", w.round, ops.join("; "));
    }

    // The slowest calls sent during busy windows, and what was running.
    let mut slow: Vec<(&Sample, &Window)> = samples
        .iter()
        .filter(|s| s.ms.is_some())
        .filter_map(|s| busy.iter().find(|w| in_window(s, w)).map(|w| (s, *w)))
        .collect();
    slow.sort_by(|a, b| b.0.ms.unwrap_or(0.0).total_cmp(&a.0.ms.unwrap_or(0.0)));
    println!("\nslowest calls during busy windows:");
    for (s, w) in slow.iter().take(5) {
        let took = s.ms.unwrap_or(0.0);
        println!(
            "- {} {:.2} ms, round {}, sent at +{:.2} s; running: {}",
            s.call.name(),
            took,
            w.round,
            secs(w.start, s.sent),
            running(w, s.sent, s.sent + Duration::from_secs_f64(took / 1000.0)),
        );
    }
    let mut idle_slow: Vec<(&Sample, &Window)> = samples
        .iter()
        .filter(|s| s.ms.is_some())
        .filter_map(|s| windows.iter().find(|w| w.kind == Kind::Idle && in_window(s, w)).map(|w| (s, w)))
        .collect();
    idle_slow.sort_by(|a, b| b.0.ms.unwrap_or(0.0).total_cmp(&a.0.ms.unwrap_or(0.0)));
    if let Some((s, w)) = idle_slow.first() {
        println!(
            "\nslowest call during idle windows: {} {:.2} ms, round {}, sent at +{:.2} s",
            s.call.name(),
            s.ms.unwrap_or(0.0),
            w.round,
            secs(w.start, s.sent)
        );
    }
    println!("\ndaemon log: {}", log.display());
}
