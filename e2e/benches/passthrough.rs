//! Passthrough overhead: the same CRI calls made directly to the test bed's
//! containerd and through a `lazarus serve` process in front of it, in one
//! run, interleaved in rounds so both sides see the same machine.
//!
//! `cargo bench -p lazarus-e2e --bench passthrough [-- --calls N --rss-calls N]`
//! (needs `e2e/testbed/testbed.sh up`). Prints a markdown table.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use lazarus_e2e::{Cri, LazarusProcess, Testbed, container_config, pod_config};
use lazarus_proto::v1;

const CONCURRENT_CLIENTS: usize = 16;
const ROUNDS: usize = 5;
const CONTAINERS: usize = 50;

#[derive(Clone, Copy, Debug)]
enum Call {
    Version,
    ListContainers,
    ContainerStatus,
}

impl Call {
    fn name(self) -> &'static str {
        match self {
            Call::Version => "Version",
            Call::ListContainers => "ListContainers (50)",
            Call::ContainerStatus => "ContainerStatus",
        }
    }
}

async fn one_call(cri: &mut Cri, call: Call, container_id: &str) -> Result<()> {
    match call {
        Call::Version => {
            cri.runtime.version(v1::VersionRequest { version: "0.1.0".into() }).await?;
        }
        Call::ListContainers => {
            let n = cri.runtime.list_containers(v1::ListContainersRequest { filter: None }).await?;
            anyhow::ensure!(n.get_ref().containers.len() >= CONTAINERS, "expected at least {CONTAINERS} containers");
        }
        Call::ContainerStatus => {
            cri.runtime
                .container_status(v1::ContainerStatusRequest { container_id: container_id.to_owned(), verbose: false })
                .await?;
        }
    }
    Ok(())
}

/// Runs `calls` calls spread over `clients` concurrent clients; returns
/// per-call latencies (µs) and the wall time.
async fn run(clients: &[Cri], call: Call, calls: usize, container_id: &Arc<str>) -> Result<(Vec<f64>, Duration)> {
    let per_client = calls / clients.len();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for cri in clients {
        let mut cri = cri.clone();
        let container_id = container_id.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_client);
            for _ in 0..per_client {
                let t = Instant::now();
                one_call(&mut cri, call, &container_id).await?;
                latencies.push(t.elapsed().as_secs_f64() * 1e6);
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut all = Vec::with_capacity(calls);
    for task in tasks {
        all.extend(task.await??);
    }
    Ok((all, started.elapsed()))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

struct Side {
    latencies: Vec<f64>,
    wall: Duration,
}

impl Side {
    fn new() -> Side {
        Side { latencies: Vec::new(), wall: Duration::ZERO }
    }
    fn add(&mut self, (latencies, wall): (Vec<f64>, Duration)) {
        self.latencies.extend(latencies);
        self.wall += wall;
    }
    fn stats(&mut self) -> (f64, f64, f64) {
        self.latencies.sort_by(f64::total_cmp);
        let throughput = self.latencies.len() as f64 / self.wall.as_secs_f64();
        (percentile(&self.latencies, 0.5), percentile(&self.latencies, 0.99), throughput)
    }
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let calls = arg("--calls", 20_000);
    let rss_calls = arg("--rss-calls", 1_000_000);
    let bed = Testbed::load()?;
    let containerd = bed.containerd_socket()?;
    let dir = tempfile::tempdir()?;
    let lazarus = LazarusProcess::start(dir.path(), &dir.path().join("lazarus.sock"), &containerd)?;
    let connect_many = |socket: &std::path::Path| -> Result<Vec<Cri>> {
        (0..CONCURRENT_CLIENTS).map(|_| Cri::connect(socket)).collect()
    };
    let direct = connect_many(&containerd)?;
    let proxied = connect_many(&lazarus.socket)?;

    // A pod with 50 created containers for ListContainers/ContainerStatus.
    let mut setup = direct[0].clone();
    setup.sweep_test_pods().await?;
    let pod = pod_config("bench", "lazarus-e2e", &dir.path().join("pods"), &[]);
    let pod_id = setup.run_pod(&pod).await?;
    let image = bed.workload_image()?.to_owned();
    setup.pull(&image, &pod).await?;
    let mut container_id = String::new();
    for i in 0..CONTAINERS {
        let config = container_config(&pod, &format!("c{i}"), &image, &["/bin/sleep", "3600"]);
        container_id = setup.create_container(&pod_id, config, &pod).await?;
    }
    let container_id: Arc<str> = container_id.into();

    // A plain byte relay (socat) as the floor of what any userspace hop
    // costs on this machine: the same wake-ups, no HTTP/2 at all.
    let relay = start_socat_relay(dir.path(), &containerd);
    let relayed = match &relay {
        Some((_, socket)) => Some(connect_many(socket)?),
        None => None,
    };

    println!(
        "lazarus passthrough benchmark: containerd {} ({}), {calls} calls per cell and side, {ROUNDS} interleaved rounds{}\n",
        bed.var("CONTAINERD_VERSION").unwrap_or("?"),
        containerd.display(),
        if relay.is_some() {
            "; socat = a plain unix-socket byte relay, the floor of any proxy hop"
        } else {
            "; socat not installed, no relay floor"
        }
    );
    println!(
        "| call | clients | direct p50 µs | lazarus p50 µs (added) | socat p50 µs (added) | direct p99 µs | lazarus p99 µs (added) | socat p99 µs (added) | throughput lazarus/direct | throughput socat/direct |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let cpu_before = cpu_ticks(lazarus.pid())?;
    let mut lazarus_calls = 0usize;
    for call in [Call::Version, Call::ListContainers, Call::ContainerStatus] {
        for clients in [1, CONCURRENT_CLIENTS] {
            let warm = 200.max(clients);
            run(&direct[..clients], call, warm, &container_id).await?;
            run(&proxied[..clients], call, warm, &container_id).await?;
            if let Some(relayed) = &relayed {
                run(&relayed[..clients], call, warm, &container_id).await?;
            }
            let (mut d, mut p, mut r) = (Side::new(), Side::new(), Side::new());
            let per_round = (calls / ROUNDS).max(clients);
            for _ in 0..ROUNDS {
                d.add(run(&direct[..clients], call, per_round, &container_id).await?);
                p.add(run(&proxied[..clients], call, per_round, &container_id).await?);
                if let Some(relayed) = &relayed {
                    r.add(run(&relayed[..clients], call, per_round, &container_id).await?);
                }
            }
            lazarus_calls += p.latencies.len() + warm;
            let (d50, d99, dt) = d.stats();
            let (p50, p99, pt) = p.stats();
            let (r50, r99, rt) = if relayed.is_some() { r.stats() } else { (f64::NAN, f64::NAN, f64::NAN) };
            println!(
                "| {} | {clients} | {d50:.0} | {p50:.0} ({:+.0}) | {r50:.0} ({:+.0}) | {d99:.0} | {p99:.0} ({:+.0}) | {r99:.0} ({:+.0}) | {:.2} | {:.2} |",
                call.name(),
                p50 - d50,
                r50 - d50,
                p99 - d99,
                r99 - d99,
                pt / dt,
                rt / dt,
            );
        }
    }
    let cpu_after = cpu_ticks(lazarus.pid())?;
    println!(
        "\nlazarus CPU: {:.1} µs per call (user+system, over {lazarus_calls} calls)",
        (cpu_after - cpu_before) as f64 * 1e6 / clock_ticks_per_second() / lazarus_calls as f64
    );

    let rss_before = lazarus.rss_kib()?;
    let started = Instant::now();
    run(&proxied, Call::Version, rss_calls, &container_id).await.context("RSS run")?;
    let rss_after = lazarus.rss_kib()?;
    println!(
        "\nproxy RSS: {rss_before} KiB before, {rss_after} KiB after {rss_calls} Version calls ({CONCURRENT_CLIENTS} clients, {:.0} s)",
        started.elapsed().as_secs_f64()
    );

    setup.sweep_test_pods().await?;
    lazarus.terminate()?;
    drop(relay);
    Ok(())
}

/// The socat process; killed when dropped, also on error paths.
struct Relay(std::process::Child);

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_socat_relay(dir: &std::path::Path, upstream: &std::path::Path) -> Option<(Relay, std::path::PathBuf)> {
    let socket = dir.join("socat.sock");
    let child = std::process::Command::new("socat")
        .arg(format!("UNIX-LISTEN:{},fork,backlog=128", socket.display()))
        .arg(format!("UNIX-CONNECT:{}", upstream.display()))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let child = Relay(child);
    for _ in 0..100 {
        if socket.exists() {
            return Some((child, socket));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_comm = stat.rsplit_once(')').map(|(_, rest)| rest).context("malformed /proc/PID/stat")?;
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); after the comm field they are at 11 and 12.
    Ok(fields.get(11).context("utime")?.parse::<u64>()? + fields.get(12).context("stime")?.parse::<u64>()?)
}

fn clock_ticks_per_second() -> f64 {
    // sysconf(_SC_CLK_TCK); 100 on every Linux the project runs on.
    100.0
}
