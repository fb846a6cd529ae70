//! Restore cost: for processes holding 1 GiB and 4 GiB of incompressible
//! memory, in one run, side by side:
//!
//! 1. raw `criu restore -d` of a plain host process dumped with `criu dump`
//!    (the reference);
//! 2. `runc restore --detach` of the same program in a standalone runc
//!    container (own bundle and runc root, `runc spec` namespaces), from
//!    `runc checkpoint` images;
//! 3. a restore through the CRI and `lazarus serve`: the program in a pod is
//!    checkpointed with `lazarus checkpoint`, its pod removed, and a new pod
//!    annotated `lazarus.dev/restore-from` gets it back; `CreateContainer`
//!    (resolve, verify, unpack, checks) and `StartContainer` (the wrapper's
//!    `runc restore`) are timed separately. A fresh start of the same
//!    container is timed for context.
//!
//! The page cache is synced and dropped before each side restores: every one
//! reads its images from the disk (the same state for all three).
//!
//! Every restored process is checked: it runs, and its memory is the exact
//! xorshift sequence memhog wrote (read back through `/proc/PID/mem`). The
//! daemon's peak RSS during the restore is reported (VmHWM, and VmRSS
//! sampled every 5 ms).
//!
//! `cargo bench -p lazarus-e2e --bench restore [-- --sizes 1024,4096]`
//! (needs `e2e/testbed/testbed.sh up`, gcc with static glibc; run as root).
//! Pods are created in the namespace `lazarus-bench-restore` only, and only
//! pods of that namespace are removed.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use lazarus_e2e::bench::build_memhog;
use lazarus_e2e::{Cri, LazarusProcess, Testbed, container_config, pod_config, wait_for};
use lazarus_proto::v1;

const NAMESPACE: &str = "lazarus-bench-restore";

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// CRIU's `stats-restore`, read independently of lazarus.
mod criu_stats {
    use prost::Message;
    #[derive(Clone, PartialEq, Message)]
    pub struct RestoreStats {
        #[prost(uint64, tag = "1")]
        pub pages_compared: u64,
        #[prost(uint64, tag = "2")]
        pub pages_skipped_cow: u64,
        #[prost(uint32, tag = "3")]
        pub forking_time: u32,
        #[prost(uint32, tag = "4")]
        pub restore_time: u32,
        #[prost(uint64, tag = "5")]
        pub pages_restored: u64,
    }
    #[derive(Clone, PartialEq, Message)]
    pub struct StatsEntry {
        #[prost(message, optional, tag = "2")]
        pub restore: Option<RestoreStats>,
    }
    /// CRIU's own restore time in ms, from a `stats-restore` file.
    pub fn restore_ms(path: &std::path::Path) -> Option<f64> {
        let bytes = std::fs::read(path).ok()?;
        let header = bytes.get(8..12)?;
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let stats = StatsEntry::decode(bytes.get(12..12 + len)?).ok()?.restore?;
        Some(f64::from(stats.restore_time) / 1000.0)
    }
}

/// Checks that process `pid` holds memhog's `mib` MiB of xorshift output,
/// word for word (memhog's sequence, regenerated here).
fn verify_memory(pid: u32, mib: usize) -> Result<()> {
    const SEED: u64 = 0x9E37_79B9_7F4A_7C15;
    fn next(x: &mut u64) -> u64 {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *x
    }
    let need = (mib as u64) << 20;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let mem = std::fs::File::open(format!("/proc/{pid}/mem"))?;
    let mut first = SEED;
    let first = next(&mut first);
    for line in maps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(range), Some(perms)) = (fields.first(), fields.get(1)) else { continue };
        if fields.len() > 5 || !perms.starts_with("rw") {
            continue; // file-backed or named ([heap], [stack]) or read-only
        }
        let Some((start, end)) = range.split_once('-') else { continue };
        let (start, end) = (u64::from_str_radix(start, 16)?, u64::from_str_radix(end, 16)?);
        if end - start < need {
            continue;
        }
        let mut page = [0u8; 4096];
        mem.read_exact_at(&mut page, start)?;
        let Some(offset) = page
            .chunks_exact(8)
            .position(|w| u64::from_ne_bytes(w.try_into().unwrap_or_default()) == first)
            .map(|i| i as u64 * 8)
        else {
            continue;
        };
        ensure!(end - start - offset >= need, "memhog's buffer runs past its mapping");
        let mut x = SEED;
        let mut buf = vec![0u8; 1 << 20];
        let mut at = start + offset;
        while at < start + offset + need {
            mem.read_exact_at(&mut buf, at)?;
            for (i, word) in buf.chunks_exact(8).enumerate() {
                let expected = next(&mut x);
                if u64::from_ne_bytes(word.try_into().unwrap_or_default()) != expected {
                    bail!("memory differs at {:#x}", at + i as u64 * 8);
                }
            }
            at += buf.len() as u64;
        }
        return Ok(());
    }
    bail!("no mapping of process {pid} starts with memhog's sequence")
}

/// Apparent size of a directory tree in bytes.
fn tree_size(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else { return 0 };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path).map_or(0, |entries| entries.flatten().map(|e| tree_size(&e.path())).sum())
}

/// A field of `/proc/PID/status` in KiB (`VmHWM`, `VmRSS`).
fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field).and_then(|v| v.strip_prefix(':')))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

fn kill(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
}

/// Starts memhog with stdout on a pipe and waits for its "ready" line.
fn spawn_until_ready(mut command: Command) -> Result<Child> {
    let mut child = command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    ensure!(line.starts_with("ready"), "memhog: {line:?}");
    Ok(child)
}

struct Raw {
    dump: Duration,
    restore: Duration,
    criu_restore_ms: Option<f64>,
    images: u64,
    remove: Duration,
}

/// Reference 1: `criu dump` (not leave-running) of a plain host process, then
/// `criu restore -d` from the images.
/// Every side restores from a cold page cache: dirty pages written, then the
/// clean ones dropped, so no side reads its images from memory another left.
fn drop_page_cache() -> Result<()> {
    ensure!(Command::new("sync").status()?.success(), "sync failed");
    std::fs::write("/proc/sys/vm/drop_caches", "3").context("dropping the page cache")
}

fn raw_criu(memhog: &Path, mib: usize, dir: &Path) -> Result<Raw> {
    let mut command = Command::new("setsid");
    command.arg(memhog).arg(mib.to_string());
    let mut child = spawn_until_ready(command)?;
    let pid = child.id();
    let images = dir.join(format!("raw-{mib}"));
    std::fs::create_dir_all(&images)?;
    let started = Instant::now();
    let out =
        Command::new("criu").args(["dump", "-t", &pid.to_string(), "-o", "dump.log", "-D"]).arg(&images).output()?;
    let dump = started.elapsed();
    if !out.status.success() {
        let _ = child.kill();
        let _ = child.wait();
        bail!("criu dump failed: {}", std::fs::read_to_string(images.join("dump.log")).unwrap_or_default());
    }
    child.wait()?; // reaped: its pid is free for the restore
    let size = tree_size(&images);
    let pidfile = dir.join(format!("raw-{mib}.pid"));
    drop_page_cache()?;
    let started = Instant::now();
    let out = Command::new("criu")
        .args(["restore", "-d", "-o", "restore.log", "--pidfile"])
        .arg(&pidfile)
        .arg("-D")
        .arg(&images)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .output()?;
    let restore = started.elapsed();
    if !out.status.success() {
        bail!("criu restore failed: {}", std::fs::read_to_string(images.join("restore.log")).unwrap_or_default());
    }
    let restored: u32 = std::fs::read_to_string(&pidfile)?.trim().parse()?;
    let verified = verify_memory(restored, mib);
    kill(restored);
    verified.context("raw criu restore")?;
    let criu_restore_ms = criu_stats::restore_ms(&images.join("stats-restore"));
    // What deleting images of this size costs here (lazarus deletes its
    // unpacked tree after StartContainer).
    let started = Instant::now();
    std::fs::remove_dir_all(&images)?;
    let remove = started.elapsed();
    let result = Raw { dump, restore, criu_restore_ms, images: size, remove };
    std::fs::remove_file(&pidfile)?;
    Ok(result)
}

struct Runc {
    restore: Duration,
    criu_restore_ms: Option<f64>,
}

/// Reference 2: memhog in a standalone runc container (bundle from `runc
/// spec`, rootfs holding only the static memhog), `runc checkpoint`, then
/// `runc restore --detach` from those images.
fn runc_restore(runc: &str, memhog: &Path, mib: usize, dir: &Path) -> Result<Runc> {
    let root = dir.join("runc-root");
    let bundle = dir.join(format!("runc-bundle-{mib}"));
    let id = format!("{NAMESPACE}-{mib}");
    std::fs::create_dir_all(bundle.join("rootfs"))?;
    std::fs::copy(memhog, bundle.join("rootfs/memhog"))?;
    let status = Command::new(runc).arg("spec").arg("--bundle").arg(&bundle).status()?;
    ensure!(status.success(), "runc spec failed");
    let config_path = bundle.join("config.json");
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(&config_path)?)?;
    config["process"]["terminal"] = false.into();
    config["process"]["args"] = serde_json::json!(["/memhog", mib.to_string()]);
    std::fs::write(&config_path, serde_json::to_vec_pretty(&config)?)?;
    let runc_cmd = |args: &[&str]| {
        let mut c = Command::new(runc);
        c.arg("--root").arg(&root).args(args);
        c
    };
    let _ = runc_cmd(&["delete", "-f", &id]).stderr(Stdio::null()).status();

    let mut run = runc_cmd(&["run", "--detach", "--bundle"]);
    run.arg(&bundle).arg(&id);
    let mut child = spawn_until_ready(run)?;
    child.wait()?;
    let images = dir.join(format!("runc-images-{mib}"));
    let out = runc_cmd(&["checkpoint", "--image-path"])
        .arg(&images)
        .arg("--work-path")
        .arg(dir.join(format!("runc-dump-work-{mib}")))
        .arg(&id)
        .output()?;
    ensure!(out.status.success(), "runc checkpoint: {}", String::from_utf8_lossy(&out.stderr));
    let work = dir.join(format!("runc-restore-work-{mib}"));
    // runc hands its stdout to the restored process in place of the dumped
    // pipe: a pipe again, whose read end is kept (not read to its end, which
    // would wait for the restored process) until the container is deleted.
    let runc_log = dir.join(format!("runc-restore-{mib}.log"));
    drop_page_cache()?;
    let started = Instant::now();
    let mut restoring = runc_cmd(&["restore", "--detach", "--image-path"])
        .arg(&images)
        .arg("--work-path")
        .arg(&work)
        .arg("--bundle")
        .arg(&bundle)
        .arg(&id)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&runc_log)?)
        .spawn()?;
    let status = restoring.wait()?;
    let restore = started.elapsed();
    let _stdout = restoring.stdout.take();
    ensure!(
        status.success(),
        "runc restore: {} {}",
        std::fs::read_to_string(&runc_log).unwrap_or_default(),
        std::fs::read_to_string(work.join("restore.log")).unwrap_or_default()
    );
    std::fs::remove_file(&runc_log)?;
    let state = runc_cmd(&["state", &id]).output()?;
    let state: serde_json::Value = serde_json::from_slice(&state.stdout)?;
    let pid = u32::try_from(state["pid"].as_u64().context("runc state: no pid")?)?;
    let verified = verify_memory(pid, mib);
    let _ = runc_cmd(&["delete", "-f", &id]).status();
    verified.context("runc restore")?;
    let result = Runc { restore, criu_restore_ms: criu_stats::restore_ms(&work.join("stats-restore")) };
    for d in [bundle, images, work, dir.join(format!("runc-dump-work-{mib}"))] {
        std::fs::remove_dir_all(d)?;
    }
    Ok(result)
}

/// `lazarus serve` in front of the test bed's containerd, with restores.
struct Bed {
    bed: Testbed,
    dir: tempfile::TempDir,
    cri: Cri,
    lazarus: LazarusProcess,
    image: String,
    memhog: PathBuf,
}

struct Through {
    create: Duration,
    start: Duration,
    fresh_create: Duration,
    fresh_start: Duration,
    fresh_ready: Duration,
    wrapper_ms: Option<f64>,
    criu_restore_ms: Option<f64>,
    unpacked: u64,
    layer: u64,
    hwm_before: u64,
    hwm_after: u64,
    rss_max: u64,
}

impl Bed {
    async fn up(memhog: PathBuf) -> Result<Bed> {
        let bed = Testbed::load()?;
        lazarus_e2e::install_runc_wrapper()?;
        let dir = tempfile::tempdir_in("/var/tmp")?;
        let config = format!("restore_dir = {:?}\n", bed.var("LAZARUS_RESTORE_DIR")?);
        let socket = dir.path().join("cri.sock");
        let lazarus = LazarusProcess::start_with_config(dir.path(), &socket, &bed.containerd_socket()?, Some(&config))?;
        let cri = Cri::connect(&socket)?;
        let image = bed.workload_image()?.to_owned();
        let mut bed = Bed { bed, dir, cri, lazarus, image, memhog };
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
            self.remove_pod(&pod.id).await?;
        }
        Ok(())
    }

    async fn remove_pod(&mut self, pod_id: &str) -> Result<()> {
        self.cri.runtime.stop_pod_sandbox(v1::StopPodSandboxRequest { pod_sandbox_id: pod_id.to_owned() }).await?;
        self.cri.runtime.remove_pod_sandbox(v1::RemovePodSandboxRequest { pod_sandbox_id: pod_id.to_owned() }).await?;
        Ok(())
    }

    fn pod(&self, name: &str, annotations: &[(&str, &str)]) -> Result<v1::PodSandboxConfig> {
        let logs = self.dir.path().join("pods").join(name);
        std::fs::create_dir_all(&logs)?;
        Ok(pod_config(name, NAMESPACE, &logs, annotations))
    }

    /// RunPodSandbox + PullImage through lazarus (not timed).
    async fn run_pod(&mut self, pod: &v1::PodSandboxConfig) -> Result<String> {
        let id = self.cri.run_pod(pod).await?;
        let image = self.image.clone();
        self.cri.pull(&image, pod).await?;
        Ok(id)
    }

    fn memhog_config(&self, pod: &v1::PodSandboxConfig, mib: usize) -> v1::ContainerConfig {
        let mut config = container_config(pod, "memhog", &self.image, &["/memhog", &mib.to_string()]);
        config.mounts.push(v1::Mount {
            container_path: "/memhog".into(),
            host_path: self.memhog.display().to_string(),
            readonly: true,
            ..Default::default()
        });
        config
    }

    async fn create(&mut self, pod_id: &str, pod: &v1::PodSandboxConfig, mib: usize) -> Result<String> {
        let config = self.memhog_config(pod, mib);
        self.cri.create_container(pod_id, config, pod).await
    }

    async fn start(&mut self, id: &str) -> Result<()> {
        self.cri.runtime.start_container(v1::StartContainerRequest { container_id: id.to_owned() }).await?;
        Ok(())
    }

    async fn wait_ready(&self, pod: &v1::PodSandboxConfig) -> Result<()> {
        let log = Path::new(&pod.log_directory).join("memhog/0.log");
        wait_for(Duration::from_secs(120), "memhog ready", || {
            let log = log.clone();
            async move { std::fs::read_to_string(&log).ok().filter(|t| t.contains("ready")).map(|_| ()) }
        })
        .await
    }

    /// `lazarus checkpoint` against the daemon's own store; returns the `local:` reference.
    fn checkpoint(&self, container: &str) -> Result<String> {
        let out = Command::new(lazarus_e2e::lazarus_bin()?)
            .args(["checkpoint", container])
            .arg("--config")
            .arg(self.dir.path().join("config.toml"))
            .arg("--upstream")
            .arg(format!("unix://{}", self.bed.containerd_socket()?.display()))
            .arg("--state-dir")
            .arg(self.dir.path().join("state"))
            .arg("--run-dir")
            .arg(self.dir.path().join("run"))
            .output()?;
        ensure!(out.status.success(), "lazarus checkpoint failed: {}", String::from_utf8_lossy(&out.stderr));
        let reference = String::from_utf8(out.stdout)?.lines().next().unwrap_or_default().trim().to_owned();
        ensure!(reference.starts_with("local:"), "unexpected reference {reference:?}");
        Ok(reference)
    }

    /// The checkpoint's stored size (every layer) from the store's manifest.
    fn layer_size(&self, reference: &str) -> Result<u64> {
        let digest = reference.rsplit_once('@').context("reference without digest")?.1;
        let manifest = self.dir.path().join("state/store/blobs/sha256").join(digest.trim_start_matches("sha256:"));
        let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(manifest)?)?;
        let layers = manifest["layers"].as_array().context("layers")?;
        Ok(layers.iter().filter_map(|l| l["size"].as_u64()).sum())
    }

    async fn container_pid(&mut self, id: &str) -> Result<u32> {
        let request = v1::ContainerStatusRequest { container_id: id.to_owned(), verbose: true };
        let status = self.cri.runtime.container_status(request).await?.into_inner();
        let info: serde_json::Value = serde_json::from_str(status.info.get("info").context("verbose info")?)?;
        Ok(u32::try_from(info["pid"].as_u64().context("pid")?)?)
    }

    fn plan_dir(&self, id: &str) -> Result<PathBuf> {
        Ok(Path::new(self.bed.var("LAZARUS_RESTORE_DIR")?).join(id))
    }

    async fn through_lazarus(&mut self, mib: usize) -> Result<Through> {
        self.sweep().await?;
        // The container to checkpoint.
        let name = format!("memhog-{mib}");
        let pod = self.pod(&name, &[])?;
        let pod_id = self.run_pod(&pod).await?;
        let id = self.create(&pod_id, &pod, mib).await?;
        self.start(&id).await?;
        self.wait_ready(&pod).await?;
        let reference = self.checkpoint(&format!("{NAMESPACE}/{name}/memhog"))?;
        let layer = self.layer_size(&reference)?;
        self.remove_pod(&pod_id).await?;

        // Context: a fresh start of the same container.
        let fresh = self.pod(&format!("memhog-{mib}-fresh"), &[])?;
        let fresh_id = self.run_pod(&fresh).await?;
        let started = Instant::now();
        let id = self.create(&fresh_id, &fresh, mib).await?;
        let fresh_create = started.elapsed();
        self.start(&id).await?;
        let fresh_start = started.elapsed() - fresh_create;
        self.wait_ready(&fresh).await?;
        let fresh_ready = started.elapsed();
        self.remove_pod(&fresh_id).await?;

        // The restore.
        let restored = self.pod(&format!("memhog-{mib}-restored"), &[("lazarus.dev/restore-from", &reference)])?;
        let restored_id = self.run_pod(&restored).await?;
        let daemon = self.lazarus.pid();
        let hwm_before = status_kib(daemon, "VmHWM")?;
        let stop = Arc::new(AtomicBool::new(false));
        let rss_max = Arc::new(AtomicU64::new(0));
        let sampler = {
            let (stop, rss_max) = (stop.clone(), rss_max.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(rss) = status_kib(daemon, "VmRSS") {
                        rss_max.fetch_max(rss, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        drop_page_cache()?;
        let started = Instant::now();
        let id = self.create(&restored_id, &restored, mib).await?;
        let create = started.elapsed();
        let plan = self.plan_dir(&id)?;
        let unpacked = tree_size(&plan.join("tree"));
        let started = Instant::now();
        self.start(&id).await?;
        let start = started.elapsed();
        stop.store(true, Ordering::Relaxed);
        let _ = sampler.join();
        let hwm_after = status_kib(daemon, "VmHWM")?;

        let status = self.cri.container_status(&id).await?;
        ensure!(
            status.state == v1::ContainerState::ContainerRunning as i32,
            "restored container not running: {status:?}"
        );
        let pid = self.container_pid(&id).await?;
        verify_memory(pid, mib).context("lazarus restore")?;
        let wrapper_log = std::fs::read_to_string(plan.join("wrapper.log")).unwrap_or_default();
        let wrapper_ms = wrapper_log.lines().find_map(|l| {
            let (_, rest) = l.split_once("create: restored from ")?;
            rest.rsplit_once(" in ")?.1.trim_end_matches(" ms").trim().parse().ok()
        });
        let criu_restore_ms = criu_stats::restore_ms(&plan.join("work/stats-restore"));
        self.remove_pod(&restored_id).await?;
        Ok(Through {
            create,
            start,
            fresh_create,
            fresh_start,
            fresh_ready,
            wrapper_ms,
            criu_restore_ms,
            unpacked,
            layer,
            hwm_before,
            hwm_after,
            rss_max: rss_max.load(Ordering::Relaxed),
        })
    }
}

fn opt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "?".to_owned(), |v| format!("{v:.0}"))
}

fn mib_of(bytes: u64) -> f64 {
    bytes as f64 / 1_048_576.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let sizes: Vec<usize> = args
        .iter()
        .position(|a| a == "--sizes")
        .and_then(|i| args.get(i + 1))
        .map_or_else(|| vec![1024, 4096], |s| s.split(',').filter_map(|n| n.parse().ok()).collect());
    let testbed = Testbed::load()?;
    let dir = tempfile::tempdir_in("/var/tmp")?;
    let memhog = build_memhog(dir.path())?;
    lazarus_e2e::lazarus_bin()?; // built before anything is timed
    let mut bed = Bed::up(memhog.clone()).await?;
    let runc = testbed.var("RUNC_BIN")?.to_owned();
    println!(
        "restore benchmark: containerd {} ({}), CRIU {}, runc {}, kernel {}, {} cores; images on {}\n",
        testbed.var("CONTAINERD_VERSION").unwrap_or("?"),
        testbed.flavor(),
        testbed.var("CRIU_VERSION").unwrap_or("?"),
        Command::new(&runc)
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.lines().next().map(str::to_owned))
            .unwrap_or_default(),
        std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        std::thread::available_parallelism().map_or(0, usize::from),
        dir.path().display()
    );
    let mut rows = Vec::new();
    let mut details = Vec::new();
    for &mib in &sizes {
        let raw = raw_criu(&memhog, mib, dir.path())?;
        let runc = runc_restore(&runc, &memhog, mib, dir.path())?;
        let lz = bed.through_lazarus(mib).await?;
        let raw_ms = ms(raw.restore);
        let total = lz.create + lz.start;
        rows.push(format!(
            "| {mib} MiB | {raw_ms:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {:.2} | {:.2} | {:.0} + {:.0} ms (ready {:.0} ms) | {:.0} MiB | {} → {} KiB (sampled max {} KiB) |",
            ms(runc.restore),
            ms(lz.create),
            ms(lz.start),
            ms(total),
            ms(lz.start) / raw_ms,
            ms(total) / raw_ms,
            ms(lz.fresh_create),
            ms(lz.fresh_start),
            ms(lz.fresh_ready),
            mib_of(lz.unpacked),
            lz.hwm_before,
            lz.hwm_after,
            lz.rss_max,
        ));
        details.push(format!(
            "| {mib} MiB | {:.0} ms | {:.0} MiB ({:.0} ms) | {} ms | {} ms | {} ms | {} ms | {:.0} MiB | yes |",
            ms(raw.dump),
            mib_of(raw.images),
            ms(raw.remove),
            opt_ms(raw.criu_restore_ms),
            opt_ms(runc.criu_restore_ms),
            opt_ms(lz.criu_restore_ms),
            opt_ms(lz.wrapper_ms),
            mib_of(lz.layer),
        ));
    }
    bed.sweep().await?;
    println!(
        "| memory | raw criu restore -d | runc restore --detach | lazarus CreateContainer | lazarus StartContainer | lazarus total | StartContainer ÷ raw criu | total ÷ raw criu | fresh start: create + start | unpacked | lazarus VmHWM before → after |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
    println!(
        "\n| memory | raw criu dump | raw images (rm -r) | CRIU restore_time: raw | runc | lazarus | lazarus-runc (diff + runc restore) | checkpoint layer (zstd) | memory intact in all three |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for row in details {
        println!("{row}");
    }
    Ok(())
}
