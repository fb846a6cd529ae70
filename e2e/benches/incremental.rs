//! Incremental checkpoint versions (issue 12, goal 2): what the second
//! checkpoint of a container costs when its process changed a few of its
//! pages since the first. The goal: the second checkpoint of a 4 GiB process
//! that changed 5 % of its pages adds at most 10 % of 4 GiB to the local store
//! and to the registry upload.
//!
//! For each memory size and run length: memhog (`e2e/bench-tools/memhog.c`,
//! incompressible memory) in a test-bed container through CRI, its pod
//! annotated with `lazarus.dev/checkpoint-repository` (a fresh repository in
//! the test bed's registry per row, so each checkpoint is pushed); `lazarus
//! checkpoint` into a fresh state dir; SIGUSR1 to memhog, which rewrites
//! `--percent` % of its pages with new incompressible data in runs of
//! `--run-kib` KiB at seeded, non-overlapping positions; `lazarus checkpoint`
//! again into the same state dir. For each checkpoint: wall time of the
//! command (committed and pushed; the push's own time from lazarus's
//! "checkpoint pushed" log line), how much the store's blobs grew (apparent
//! sizes of the files in `store/blobs/sha256`, after minus before; "registry
//! layout": the part the push itself wrote there, the manifest, config and
//! layers of a pushed manifest that is not the local one), bytes the
//! disks were given until a `sync` after it (`/sys/block/*/stat`; the
//! registry's copy is on the same disk here), and bytes uploaded (the
//! `uploaded_bytes` of that log line). The reference wall is a raw `criu dump
//! --leave-running` + `sync` of the same program as a plain host process.
//!
//! `cargo bench -p lazarus-e2e --bench incremental [-- --sizes 1024,4096 --percent 5 --run-kib 1024,16384 --memory compressible --no-push]`
//! (needs `e2e/testbed/testbed.sh up`, gcc with static glibc; the pushed
//! repositories stay in the test bed's registry).

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use lazarus_e2e::bench::{
    MemhogPod, build_memhog, checkpoint_command, disk_written, mib_of, raw_criu, start_memhog_pod, sync_all,
    wait_for_log,
};
use lazarus_e2e::{Cri, Testbed, rand_u64};

/// What `lazarus checkpoint` reported pushing.
struct Upload {
    /// The pushed manifest's digest.
    digest: String,
    bytes: u64,
    blobs: u64,
    push_ms: u64,
}

/// One checkpoint version.
struct Version {
    /// `lazarus checkpoint` until it returned: committed and pushed.
    wall: Duration,
    /// Bytes the store's blobs grew by.
    stored: u64,
    /// Of those, the blobs the push wrote in the registry's layout.
    registry_layout: u64,
    /// Bytes the disks were given, until a `sync` after it.
    written: u64,
    upload: Option<Upload>,
}

/// The files in the store's blobs dir: name → apparent size (each inode once); none before the store exists.
fn blobs(state: &Path) -> Result<HashMap<String, u64>> {
    let dir = state.join("store/blobs/sha256");
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut inodes = HashSet::new();
    let mut files = HashMap::new();
    for entry in entries {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_file() && inodes.insert((meta.dev(), meta.ino())) {
            files.insert(entry.file_name().to_string_lossy().into_owned(), meta.len());
        }
    }
    Ok(files)
}

/// Bytes of the blobs new since `before` that only the pushed manifest
/// `pushed` names (itself, its config and layers) when it is not the local
/// manifest `local`: what the push wrote into the store in the registry's layout.
fn registry_layout_bytes(
    state: &Path,
    before: &HashMap<String, u64>,
    after: &HashMap<String, u64>,
    (local, pushed): (&str, &str),
) -> Result<u64> {
    if local == pushed {
        return Ok(0);
    }
    let hex = |digest: &str| digest.strip_prefix("sha256:").unwrap_or(digest).to_owned();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("store/blobs/sha256").join(hex(pushed)))?)?;
    let mut names = vec![hex(pushed)];
    names.extend(
        std::iter::once(&manifest["config"])
            .chain(manifest["layers"].as_array().into_iter().flatten())
            .filter_map(|d| d["digest"].as_str().map(hex)),
    );
    names.sort();
    names.dedup();
    Ok(names.iter().filter(|n| !before.contains_key(*n)).filter_map(|n| after.get(n)).sum())
}

/// The "checkpoint pushed" line of lazarus's JSON log.
fn pushed(log: &str) -> Option<Upload> {
    log.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).find_map(|line| {
        (line["message"] == "checkpoint pushed").then(|| Upload {
            digest: line["reference"]
                .as_str()
                .and_then(|r| r.rsplit_once('@'))
                .map(|(_, d)| d.to_owned())
                .unwrap_or_default(),
            bytes: line["uploaded_bytes"].as_u64().unwrap_or(0),
            blobs: line["uploaded"].as_u64().unwrap_or(0),
            push_ms: line["push_ms"].as_u64().unwrap_or(0),
        })
    })
}

/// `lazarus checkpoint` of `container` into `state`; `config` lists the registry as insecure when pushing.
fn checkpoint(bed: &Testbed, container: &str, state: &Path, run: &Path, config: Option<&Path>) -> Result<Version> {
    let before = blobs(state)?;
    let mut command = checkpoint_command(bed, container, state, run)?;
    command.args(["--log-format", "json"]);
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    sync_all()?;
    let written_before = disk_written();
    let started = Instant::now();
    let out = command.output()?;
    let wall = started.elapsed();
    sync_all()?;
    let written = disk_written() - written_before;
    let log = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "lazarus checkpoint: {log}");
    if std::env::var_os("LAZARUS_BENCH_VERBOSE").is_some() {
        eprintln!("{log}");
    }
    let upload = pushed(&log);
    ensure!(config.is_none() || upload.is_some(), "no \"checkpoint pushed\" in lazarus's log:\n{log}");
    let stdout = String::from_utf8(out.stdout)?;
    let local = stdout.lines().next().and_then(|l| l.trim().rsplit_once('@')).map(|(_, d)| d).context("digest")?;
    let after = blobs(state)?;
    let registry_layout = match &upload {
        Some(u) => registry_layout_bytes(state, &before, &after, (local, &u.digest))?,
        None => 0,
    };
    let stored = after.values().sum::<u64>().saturating_sub(before.values().sum());
    Ok(Version { wall, stored, registry_layout, written, upload })
}

/// The host pid of a container's init process (`runc state`).
fn container_pid(bed: &Testbed, container: &str) -> Result<i32> {
    let out = Command::new(bed.var("RUNC_BIN")?)
        .arg("--root")
        .arg(Path::new(bed.var("RUNC_ROOT")?).join("k8s.io"))
        .args(["state", container])
        .output()?;
    ensure!(out.status.success(), "runc state {container}: {}", String::from_utf8_lossy(&out.stderr));
    let state: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let pid = state["pid"].as_i64().context("runc state without a pid")?;
    Ok(i32::try_from(pid)?)
}

/// SIGUSR1 to memhog; the pages it reports rewriting.
async fn dirty(bed: &Testbed, memhog: &MemhogPod) -> Result<u64> {
    let pid = nix::unistd::Pid::from_raw(container_pid(bed, &memhog.container_id)?);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGUSR1)?;
    wait_for_log(&memhog.log, "dirtied", Duration::from_secs(120)).await?;
    let log = std::fs::read_to_string(&memhog.log)?;
    let count = log
        .lines()
        .find_map(|l| l.split_once("dirtied ").and_then(|(_, rest)| rest.split_whitespace().next()))
        .context("no page count after \"dirtied\"")?;
    Ok(count.parse()?)
}

/// Stops and removes the pods an earlier run of the benches left in `lazarus-bench`.
async fn sweep(cri: &mut Cri) -> Result<()> {
    let filter = lazarus_proto::v1::PodSandboxFilter {
        label_selector: [
            (lazarus_e2e::E2E_LABEL.to_owned(), "true".to_owned()),
            ("io.kubernetes.pod.namespace".to_owned(), "lazarus-bench".to_owned()),
        ]
        .into(),
        ..Default::default()
    };
    let request = lazarus_proto::v1::ListPodSandboxRequest { filter: Some(filter) };
    for pod in cri.runtime.list_pod_sandbox(request).await?.into_inner().items {
        cri.remove_pod(&pod.id).await?;
    }
    Ok(())
}

struct Row {
    dirtied_pages: u64,
    first: Version,
    second: Version,
}

/// memhog of `mib` MiB in a pod, checkpointed, dirtied, checkpointed again.
async fn two_versions(
    bed: &Testbed,
    cri: &mut Cri,
    memhog: &Path,
    (mib, memory, percent, run_kib): (usize, &str, f64, usize),
    registry: Option<&str>,
    dir: &Path,
) -> Result<Row> {
    sweep(cri).await?;
    let logs = dir.join(format!("pods-{mib}-{run_kib}"));
    let repository = registry.map(|r| format!("{r}/lazarus-bench/incremental-{:x}", rand_u64()));
    let annotations: Vec<(&str, &str)> =
        repository.iter().map(|r| ("lazarus.dev/checkpoint-repository", r.as_str())).collect();
    let config = match registry {
        Some(registry) => {
            let path = dir.join("config.toml");
            std::fs::write(&path, format!("insecure_registries = [{registry:?}]\n"))?;
            Some(path)
        }
        None => None,
    };
    let args = [mib.to_string(), memory.to_owned(), percent.to_string(), run_kib.to_string()];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let pod = start_memhog_pod(bed, cri, memhog, &format!("incremental-{mib}"), &args, &annotations, &logs).await?;
    let (state, run) = (dir.join("state"), dir.join("run"));
    let first = checkpoint(bed, &pod.container_id, &state, &run, config.as_deref())?;
    let dirtied_pages = dirty(bed, &pod).await?;
    let second = checkpoint(bed, &pod.container_id, &state, &run, config.as_deref())?;
    cri.remove_pod(&pod.pod_id).await?;
    std::fs::remove_dir_all(&state)?;
    std::fs::remove_dir_all(&logs)?;
    sync_all()?;
    Ok(Row { dirtied_pages, first, second })
}

/// Whether something listens on `address` (`host:port`).
fn reachable(address: &str) -> bool {
    use std::net::ToSocketAddrs;
    address
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok())
}

/// The size of memhog's pages (`getconf PAGESIZE`).
fn page_size() -> u64 {
    Command::new("getconf")
        .arg("PAGESIZE")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(4096)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    let list = |flag: &str, default: &[usize]| {
        value(flag).map_or_else(|| default.to_vec(), |s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
    };
    let sizes: Vec<usize> = list("--sizes", &[1024, 4096]);
    let run_kibs: Vec<usize> = list("--run-kib", &[1024]);
    let percent: f64 = value("--percent").and_then(|p| p.parse().ok()).unwrap_or(5.0);
    // `incompressible` (xorshift) or `compressible` (each page's number); what is dirtied is always incompressible.
    let memory = value("--memory").unwrap_or_else(|| "incompressible".to_owned());
    let bed = Testbed::load()?;
    let registry = match bed.var("REGISTRY") {
        Ok(registry) if !args.iter().any(|a| a == "--no-push") && reachable(registry) => Some(registry.to_owned()),
        _ => None,
    };
    let dir = tempfile::tempdir_in("/var/tmp")?;
    let memhog = build_memhog(dir.path())?;
    let mut cri = Cri::connect(&bed.containerd_socket()?)?;
    lazarus_e2e::lazarus_bin()?; // built before anything is timed
    let page = page_size();
    println!(
        "incremental checkpoint benchmark: containerd {}, CRIU {}, images on {}, {memory} memory, {}\n",
        bed.var("CONTAINERD_VERSION").unwrap_or("?"),
        bed.var("CRIU_VERSION").unwrap_or("?"),
        dir.path().display(),
        registry.as_deref().map_or_else(|| "no registry: nothing pushed".to_owned(), |r| format!("pushed to {r}")),
    );
    println!(
        "| memory | dirtied | run | raw: criu dump + sync | #1 wall (push) | #1 store growth | #1 upload | #2 wall (push) | #2 store growth | #2 upload | **#2 store growth ÷ memory** | **#2 upload ÷ memory** | wall #2 ÷ raw | disk written #1 / #2 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for &mib in &sizes {
        for &run_kib in &run_kibs {
            let raw = raw_criu(&memhog, mib, &memory, dir.path())?;
            let row = two_versions(
                &bed,
                &mut cri,
                &memhog,
                (mib, &memory, percent, run_kib),
                registry.as_deref(),
                dir.path(),
            )
            .await?;
            let memory_bytes = (mib as u64) << 20;
            let percent_of = |b: u64| b as f64 * 100.0 / memory_bytes as f64;
            let wall = |v: &Version| match &v.upload {
                Some(u) => format!("{:.0} ms (push {})", ms(v.wall), u.push_ms),
                None => format!("{:.0} ms", ms(v.wall)),
            };
            let stored = |v: &Version| match v.registry_layout {
                0 => format!("{:.0} MiB", mib_of(v.stored)),
                layout => format!("{:.0} MiB (registry layout {:.0})", mib_of(v.stored), mib_of(layout)),
            };
            let upload = |v: &Version| {
                v.upload
                    .as_ref()
                    .map_or_else(|| "–".to_owned(), |u| format!("{:.0} MiB ({})", mib_of(u.bytes), u.blobs))
            };
            let upload_ratio = row
                .second
                .upload
                .as_ref()
                .map_or_else(|| "–".to_owned(), |u| format!("**{:.1} %**", percent_of(u.bytes)));
            println!(
                "| {mib} MiB | {percent} % ({} pages, {:.1} %) | {run_kib} KiB | {:.0} ms | {} | {} | {} | {} | {} | {} | **{:.1} %** | {upload_ratio} | {:.2} | {:.0} / {:.0} MiB |",
                row.dirtied_pages,
                percent_of(row.dirtied_pages * page),
                ms(raw.wall()),
                wall(&row.first),
                stored(&row.first),
                upload(&row.first),
                wall(&row.second),
                stored(&row.second),
                upload(&row.second),
                percent_of(row.second.stored),
                row.second.wall.as_secs_f64() / raw.wall().as_secs_f64(),
                mib_of(row.first.written),
                mib_of(row.second.written),
            );
        }
    }
    Ok(())
}
