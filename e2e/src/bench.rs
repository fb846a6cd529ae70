//! What the checkpoint benchmarks share: building memhog, the raw `criu dump`
//! reference, disk and CPU accounting, memhog in a test-bed pod, and the
//! `lazarus checkpoint` command line.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use lazarus_proto::v1;

use crate::{Cri, Testbed, container_config, pod_config, wait_for};

/// Builds `e2e/bench-tools/memhog.c` statically into `dir`; the binary's path.
pub fn build_memhog(dir: &Path) -> Result<PathBuf> {
    let source = crate::repo_root().join("e2e/bench-tools/memhog.c");
    let out = dir.join("memhog");
    let status = Command::new("gcc").args(["-O2", "-static", "-o"]).arg(&out).arg(&source).status()?;
    ensure!(status.success(), "gcc -static memhog.c failed (needs libc6-dev)");
    Ok(out)
}

/// `stats-dump` frozen time in ms.
pub fn frozen_ms(stats: &Path) -> Option<f64> {
    let bytes = std::fs::read(stats).ok()?;
    criu_stats::parse(&bytes).map(|s| f64::from(s.frozen_time) / 1000.0)
}

/// CRIU's `stats-dump`, read independently of lazarus (the benches measure
/// lazarus, so they do not reuse lazarus's own parser).
mod criu_stats {
    use prost::Message;
    #[derive(Clone, PartialEq, Message)]
    pub struct DumpStats {
        #[prost(uint32, tag = "1")]
        pub freezing_time: u32,
        #[prost(uint32, tag = "2")]
        pub frozen_time: u32,
    }
    #[derive(Clone, PartialEq, Message)]
    pub struct StatsEntry {
        #[prost(message, optional, tag = "1")]
        pub dump: Option<DumpStats>,
    }
    pub fn parse(bytes: &[u8]) -> Option<DumpStats> {
        let header = bytes.get(8..12)?;
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        StatsEntry::decode(bytes.get(12..12 + len)?).ok()?.dump
    }
}

/// Sectors written by every disk so far (`/sys/block/*/stat`, field 7), in bytes.
pub fn disk_written() -> u64 {
    let Ok(entries) = std::fs::read_dir("/sys/block") else { return 0 };
    entries
        .filter_map(Result::ok)
        .filter(|e| !e.file_name().to_string_lossy().starts_with("loop"))
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter_map(|t| t.split_whitespace().nth(6).and_then(|v| v.parse::<u64>().ok()))
        .sum::<u64>()
        * 512
}

/// CPU time (user + system) of the waited-for children so far.
pub fn children_cpu() -> Duration {
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN);
    usage.map_or(Duration::ZERO, |u| {
        let t = |tv: nix::sys::time::TimeVal| Duration::new(tv.tv_sec() as u64, tv.tv_usec() as u32 * 1000);
        t(u.user_time()) + t(u.system_time())
    })
}

/// `sync`; how long it took.
pub fn sync_all() -> Result<Duration> {
    let started = Instant::now();
    ensure!(Command::new("sync").status()?.success(), "sync failed");
    Ok(started.elapsed())
}

/// The reference: `criu dump --leave-running` of a plain host memhog, then `sync`.
#[derive(Debug, Clone)]
pub struct Raw {
    /// `criu dump` alone.
    pub dump: Duration,
    /// The `sync` after it.
    pub sync: Duration,
    /// CRIU's own frozen time.
    pub frozen_ms: Option<f64>,
    /// Bytes the disks were given until after the `sync`.
    pub written: u64,
    /// CPU time of criu and sync.
    pub cpu: Duration,
}

impl Raw {
    /// Dump and sync.
    pub fn wall(&self) -> Duration {
        self.dump + self.sync
    }
}

/// Runs `memhog MIB MEMORY` as a plain host process, dumps it with
/// `criu dump --leave-running` into a directory under `dir` and syncs; kills
/// it and removes the images afterwards.
pub fn raw_criu(memhog: &Path, mib: usize, memory: &str, dir: &Path) -> Result<Raw> {
    let mut child = Command::new("setsid")
        .arg(memhog)
        .arg(mib.to_string())
        .arg(memory)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    ensure!(line.starts_with("ready"), "memhog: {line:?}");
    let pid = child.id();
    let images = dir.join(format!("raw-{mib}"));
    std::fs::create_dir_all(&images)?;
    sync_all()?;
    let (written_before, cpu_before) = (disk_written(), children_cpu());
    let started = Instant::now();
    let out = Command::new("criu")
        .args(["dump", "--leave-running", "-t", &pid.to_string(), "-o", "dump.log", "-D"])
        .arg(&images)
        .output()?;
    let dump = started.elapsed();
    let sync = sync_all()?;
    let (written, cpu) = (disk_written() - written_before, children_cpu().saturating_sub(cpu_before));
    let _ = child.kill();
    let _ = child.wait();
    if !out.status.success() {
        bail!("criu dump failed: {}", std::fs::read_to_string(images.join("dump.log")).unwrap_or_default());
    }
    let result = Raw { dump, sync, frozen_ms: frozen_ms(&images.join("stats-dump")), written, cpu };
    std::fs::remove_dir_all(&images)?;
    sync_all()?;
    Ok(result)
}

/// memhog running in a test-bed pod.
#[derive(Debug, Clone)]
pub struct MemhogPod {
    /// The pod sandbox.
    pub pod_id: String,
    /// The memhog container.
    pub container_id: String,
    /// The container's CRI log (kubelet's format: time, stream, tag, line).
    pub log: PathBuf,
}

/// Runs pod `name` (namespace `lazarus-bench`, pod annotations
/// `annotations`, logs under `logs`) with one container `memhog` running
/// `/memhog ARGS…` (the host's `memhog` bind-mounted read-only) through CRI
/// on `cri`, and waits until memhog printed "ready".
pub async fn start_memhog_pod(
    bed: &Testbed,
    cri: &mut Cri,
    memhog: &Path,
    name: &str,
    args: &[&str],
    annotations: &[(&str, &str)],
    logs: &Path,
) -> Result<MemhogPod> {
    let pod = pod_config(name, "lazarus-bench", logs, annotations);
    let pod_id = cri.run_pod(&pod).await?;
    let image = bed.workload_image()?.to_owned();
    cri.pull(&image, &pod).await?;
    let command: Vec<&str> = std::iter::once("/memhog").chain(args.iter().copied()).collect();
    let mut config = container_config(&pod, "memhog", &image, &command);
    config.mounts.push(v1::Mount {
        container_path: "/memhog".into(),
        host_path: memhog.display().to_string(),
        readonly: true,
        ..Default::default()
    });
    let container_id = cri.create_container(&pod_id, config, &pod).await?;
    cri.runtime.start_container(v1::StartContainerRequest { container_id: container_id.clone() }).await?;
    let log = logs.join("memhog/0.log");
    wait_for_log(&log, "ready", Duration::from_secs(120)).await?;
    Ok(MemhogPod { pod_id, container_id, log })
}

/// Waits until `log` holds `needle`.
pub async fn wait_for_log(log: &Path, needle: &str, timeout: Duration) -> Result<()> {
    wait_for(timeout, &format!("{needle:?} in {}", log.display()), || async move {
        std::fs::read_to_string(log).ok().filter(|t| t.contains(needle)).map(|_| ())
    })
    .await
}

/// `lazarus checkpoint CONTAINER --log-level info` against the test bed's
/// containerd with state dir `state` and run dir `run`; callers add flags
/// and run it.
pub fn checkpoint_command(bed: &Testbed, container: &str, state: &Path, run: &Path) -> Result<Command> {
    let mut command = Command::new(crate::lazarus_bin()?);
    command
        .args(["checkpoint", container, "--log-level", "info", "--upstream"])
        .arg(format!("unix://{}", bed.containerd_socket()?.display()))
        .arg("--state-dir")
        .arg(state)
        .arg("--run-dir")
        .arg(run);
    Ok(command)
}

/// Bytes as MiB.
pub fn mib_of(bytes: u64) -> f64 {
    bytes as f64 / 1_048_576.0
}
