//! Checkpoint cost: for processes holding 1 and 4 GiB of incompressible
//! memory, in one run, raw `criu dump --leave-running` of a plain process
//! followed by `sync` vs `lazarus checkpoint` of the same program in a
//! container (through containerd, runc and CRIU) until it is committed to
//! the store (durable: lazarus fsyncs what it stores). The page cache is
//! synced before each side. Compared: wall time, CRIU's frozen time (from its
//! own statistics), the whole cut lazarus holds, bytes the disk was given
//! (`/sys/block/*/stat`, until a `sync` after each side), lazarus's CPU
//! seconds and peak RSS, the stored size. `runc checkpoint` of the same
//! container is timed too, for what CRIU costs for a container.
//!
//! `cargo bench -p lazarus-e2e --bench checkpoint [-- --sizes 1024,4096 --rounds 1 --memory compressible]`
//! (needs `e2e/testbed/testbed.sh up`, gcc with static glibc).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use lazarus_e2e::bench::{
    build_memhog, checkpoint_command, children_cpu, disk_written, frozen_ms, mib_of, raw_criu, start_memhog_pod,
    sync_all,
};
use lazarus_e2e::{Cri, Testbed};

/// The peak RSS (`VmHWM`) of process `pid`, read every 10 ms until `done`.
fn watch_peak_rss(pid: u32, done: std::sync::Arc<std::sync::atomic::AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut peak = 0;
        while !done.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status"))
                && let Some(kib) = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            {
                peak = peak.max(kib);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        peak
    })
}

struct Through {
    runc_wall: Duration,
    runc_frozen_ms: f64,
    /// `lazarus checkpoint` until it returned: committed to the store.
    wall: Duration,
    /// The `sync` after it (what it left unwritten).
    sync: Duration,
    dump_ms: f64,
    /// CRIU's own frozen time.
    frozen_ms: f64,
    /// The whole cut lazarus holds the container frozen for: dump and writable layer.
    cut_ms: f64,
    /// Bytes of every layer.
    size: u64,
    layers: usize,
    written: u64,
    cpu: Duration,
    peak_rss_kib: u64,
}

async fn through_lazarus(
    bed: &Testbed,
    cri: &mut Cri,
    memhog: &Path,
    (mib, memory): (usize, &str),
    dir: &Path,
) -> Result<Through> {
    cri.sweep_test_pods().await?;
    let logs = dir.join(format!("pods-{mib}"));
    let id = start_memhog_pod(bed, cri, memhog, &format!("memhog-{mib}"), &[&mib.to_string(), memory], &[], &logs)
        .await?
        .container_id;
    // Reference 2: runc's own checkpoint of the same container, with the
    // options containerd passes for lazarus (what CRIU does in a container:
    // namespaces, network lock, /dev tmpfs…).
    let images = dir.join(format!("runc-{mib}"));
    let work = dir.join(format!("runc-work-{mib}"));
    let started = Instant::now();
    let out = Command::new(bed.var("RUNC_BIN")?)
        .arg("--root")
        .arg(Path::new(bed.var("RUNC_ROOT")?).join("k8s.io"))
        .args(["checkpoint", "--leave-running", "--tcp-established", "--file-locks", "--image-path"])
        .arg(&images)
        .arg("--work-path")
        .arg(&work)
        .arg(&id)
        .output()?;
    let runc_wall = started.elapsed();
    ensure!(out.status.success(), "runc checkpoint: {}", String::from_utf8_lossy(&out.stderr));
    let runc_frozen_ms = frozen_ms(&work.join("stats-dump")).unwrap_or(f64::NAN);
    std::fs::remove_dir_all(&images)?;
    std::fs::remove_dir_all(&work)?;

    let state = dir.join("state");
    sync_all()?;
    let (written_before, cpu_before) = (disk_written(), children_cpu());
    let started = Instant::now();
    let child = checkpoint_command(bed, &id, &state, &dir.join("run"))?
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = watch_peak_rss(child.id(), done.clone());
    let out = child.wait_with_output()?;
    let wall = started.elapsed();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak_rss_kib = watcher.join().unwrap_or(0);
    let sync = sync_all()?;
    let (written, cpu) = (disk_written() - written_before, children_cpu().saturating_sub(cpu_before));
    ensure!(out.status.success(), "lazarus checkpoint: {}", String::from_utf8_lossy(&out.stderr));
    if std::env::var_os("LAZARUS_BENCH_VERBOSE").is_some() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    }
    let reference = String::from_utf8(out.stdout)?;
    let digest = reference.lines().next().unwrap_or_default().trim().rsplit('@').next().context("digest")?.to_owned();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("store/blobs/sha256").join(&digest[7..]))?)?;
    let number =
        |key: &str| manifest["annotations"][key].as_str().and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
    let layers = manifest["layers"].as_array().cloned().unwrap_or_default();
    let result = Through {
        runc_wall,
        runc_frozen_ms,
        wall,
        sync,
        dump_ms: number("lazarus.dev/dump-time-ms"),
        frozen_ms: number("lazarus.dev/criu-frozen-time-us") / 1000.0,
        cut_ms: number("lazarus.dev/frozen-time-ms"),
        size: layers.iter().filter_map(|l| l["size"].as_u64()).sum(),
        layers: layers.len(),
        written,
        cpu,
        peak_rss_kib,
    };
    cri.sweep_test_pods().await?;
    std::fs::remove_dir_all(&state)?;
    Ok(result)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    let sizes: Vec<usize> =
        value("--sizes").map_or_else(|| vec![1024, 4096], |s| s.split(',').filter_map(|n| n.parse().ok()).collect());
    let rounds: usize = value("--rounds").and_then(|r| r.parse().ok()).unwrap_or(1);
    // `incompressible` (xorshift) or `compressible` (each page's number).
    let memory = value("--memory").unwrap_or_else(|| "incompressible".to_owned());
    let bed = Testbed::load()?;
    let dir = tempfile::tempdir_in("/var/tmp")?;
    let memhog = build_memhog(dir.path())?;
    let mut cri = Cri::connect(&bed.containerd_socket()?)?;
    lazarus_e2e::lazarus_bin()?; // built before anything is timed
    println!(
        "checkpoint benchmark: containerd {}, CRIU {}, images on {}, {rounds} round(s), interleaved, {memory} memory\n",
        bed.var("CONTAINERD_VERSION").unwrap_or("?"),
        bed.var("CRIU_VERSION").unwrap_or("?"),
        dir.path().display()
    );
    println!(
        "| memory | raw: criu dump + sync (dump / sync) | lazarus: committed (+ sync after) | **wall lazarus ÷ raw** | CRIU frozen raw / lazarus | **frozen ÷ raw** | whole cut frozen | runc checkpoint: wall / frozen | disk written raw / lazarus | lazarus CPU / peak RSS | stored (layers) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for _ in 0..rounds {
        for &mib in &sizes {
            let raw = raw_criu(&memhog, mib, &memory, dir.path())?;
            let through = through_lazarus(&bed, &mut cri, &memhog, (mib, &memory), dir.path()).await?;
            let raw_frozen = raw.frozen_ms.unwrap_or(f64::NAN);
            let raw_wall = raw.wall();
            println!(
                "| {mib} MiB | {:.0} ms ({:.0} / {:.0}) | {:.0} ms (+{:.0}) | {:.2} | {raw_frozen:.0} / {:.0} ms | {:.2} | {:.0} ms | {:.0} / {:.0} ms | {:.0} / {:.0} MiB | {:.1} s / {:.1} MiB | {:.0} MiB ({}) |",
                raw_wall.as_secs_f64() * 1000.0,
                raw.dump.as_secs_f64() * 1000.0,
                raw.sync.as_secs_f64() * 1000.0,
                through.wall.as_secs_f64() * 1000.0,
                through.sync.as_secs_f64() * 1000.0,
                through.wall.as_secs_f64() / raw_wall.as_secs_f64(),
                through.frozen_ms,
                through.frozen_ms / raw_frozen,
                through.cut_ms,
                through.runc_wall.as_secs_f64() * 1000.0,
                through.runc_frozen_ms,
                mib_of(raw.written),
                mib_of(through.written),
                through.cpu.as_secs_f64(),
                through.peak_rss_kib as f64 / 1024.0,
                mib_of(through.size),
                through.layers,
            );
            let _ = (through.dump_ms, raw.cpu);
        }
    }
    Ok(())
}
