//! Real programs from Debian's packages, in the test bed's Debian image
//! (`testbed.sh` builds it from the minbase root: python3-numpy, redis-server,
//! postgresql-15, procps, a user `worker`), driven through `lazarus serve` as
//! kubelet drives it. Each workload is checkpointed with `lazarus checkpoint`,
//! its pod removed, and restored into a new pod annotated
//! `lazarus.dev/restore-from`; its state is then checked from outside the
//! program (ExecSync, the pod's log file, a recomputation in a fresh container).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use lazarus_e2e::{Cri, LazarusProcess, Node, Testbed, container_config, pod_config, wait_for};
use lazarus_proto::v1;

const NAMESPACE: &str = "lazarus-e2e-workloads";

/// Who a container runs as: the image's default (root), kubelet's `runAsUser`
/// (a uid) or, for an image user without `runAsUser`, its name.
#[derive(Debug, Clone, Copy)]
enum User {
    Root,
    Uid(i64),
    Name(&'static str),
}

struct Bed {
    bed: Testbed,
    dir: tempfile::TempDir,
    /// Through lazarus, as kubelet.
    cri: Cri,
    _lazarus: LazarusProcess,
    image: String,
}

/// A running container and the pod it is in.
struct Running {
    pod: v1::PodSandboxConfig,
    pod_id: String,
    id: String,
    name: String,
}

impl Running {
    /// The container's CRI log file, without the CRI prefix (time, stream, tag).
    fn log_lines(&self) -> Vec<String> {
        let path = Path::new(&self.pod.log_directory).join(format!("{}/0.log", self.name));
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.splitn(4, ' ').nth(3).map(str::to_owned))
            .collect()
    }
}

impl Bed {
    async fn up() -> Result<Bed> {
        Bed::up_with("").await
    }

    /// A node whose config has `extra_config` (TOML lines) besides the restore dir.
    async fn up_with(extra_config: &str) -> Result<Bed> {
        let Node { bed, dir, mut cri, lazarus } = Node::up(extra_config).await?;
        let image = bed.debian_image()?.to_owned();
        // Imported by testbed.sh, not in the registry: kubelet's IfNotPresent finds it.
        let status = cri
            .image
            .image_status(v1::ImageStatusRequest {
                image: Some(v1::ImageSpec { image: image.clone(), ..Default::default() }),
                verbose: false,
            })
            .await?
            .into_inner();
        ensure!(status.image.is_some(), "{image} is not in containerd: run `e2e/testbed/testbed.sh up` again");
        Ok(Bed { bed, dir, cri, _lazarus: lazarus, image })
    }

    /// `lazarus checkpoint NAMESPACE/POD/CONTAINER` against the daemon's store.
    fn checkpoint(&self, running: &Running) -> Result<String> {
        let metadata = running.pod.metadata.clone().unwrap_or_default();
        let key = format!("{}/{}/{}", metadata.namespace, metadata.name, running.name);
        let started = Instant::now();
        let reference = lazarus_e2e::checkpoint_cli(&self.bed, self.dir.path(), &key, &[])?;
        println!("checkpoint of {key} in {:.1}s: {reference}", started.elapsed().as_secs_f64());
        Ok(reference)
    }

    /// A new pod (annotations as given) with one container of the Debian image.
    async fn run(
        &mut self,
        pod_name: &str,
        annotations: &[(&str, &str)],
        name: &str,
        command: &[&str],
        user: User,
    ) -> Result<Running> {
        let pod = pod_config(pod_name, NAMESPACE, &self.dir.path().join("pods").join(pod_name), annotations);
        std::fs::create_dir_all(&pod.log_directory)?;
        let pod_id = self.cri.run_pod(&pod).await?;
        let mut config = container_config(&pod, name, &self.image, command);
        if let Some(context) = config.linux.as_mut().and_then(|l| l.security_context.as_mut()) {
            match user {
                User::Root => {}
                User::Uid(uid) => context.run_as_user = Some(v1::Int64Value { value: uid }),
                User::Name(name) => name.clone_into(&mut context.run_as_username),
            }
        }
        let id = self.cri.create_container(&pod_id, config, &pod).await?;
        let started = Instant::now();
        self.cri.runtime.start_container(v1::StartContainerRequest { container_id: id.clone() }).await?;
        if !annotations.is_empty() {
            println!("restore of {name} (StartContainer) in {:.1}s", started.elapsed().as_secs_f64());
        }
        let status = self.cri.container_status(&id).await?;
        ensure!(status.state == v1::ContainerState::ContainerRunning as i32, "{name} not running: {status:?}");
        Ok(Running { pod, pod_id, id, name: name.to_owned() })
    }

    /// Restores `from`'s checkpoint `reference` into a new pod, the container
    /// configured as before (kubelet re-creates it from the same spec).
    async fn restore(&mut self, from: &Running, reference: &str, command: &[&str], user: User) -> Result<Running> {
        let pod_name = format!("{}-restored", from.pod.metadata.as_ref().map(|m| m.name.as_str()).unwrap_or_default());
        let restored =
            self.run(&pod_name, &[("lazarus.dev/restore-from", reference)], &from.name, command, user).await?;
        let status = self
            .cri
            .runtime
            .pod_sandbox_status(v1::PodSandboxStatusRequest { pod_sandbox_id: restored.pod_id.clone(), verbose: false })
            .await?
            .into_inner()
            .status
            .context("pod status")?;
        ensure!(status.runtime_handler == "lazarus", "the new pod is not on lazarus's handler: {status:?}");
        Ok(restored)
    }

    async fn remove(&mut self, running: &Running) -> Result<()> {
        self.cri.remove_pod(&running.pod_id).await
    }

    /// ExecSync; fails unless the command exits 0; returns stdout.
    async fn exec(&mut self, running: &Running, cmd: &[&str]) -> Result<String> {
        let request = v1::ExecSyncRequest {
            container_id: running.id.clone(),
            cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
            timeout: 60,
        };
        let out = self.cri.runtime.exec_sync(request).await?.into_inner();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        ensure!(
            out.exit_code == 0,
            "{cmd:?} in {} exited {}: {stdout}{}",
            running.name,
            out.exit_code,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(stdout)
    }

    /// Polls `cmd` in the container until its trimmed stdout satisfies `ok`.
    async fn exec_until(
        &mut self,
        running: &Running,
        cmd: &[&str],
        what: &str,
        ok: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.exec(running, cmd).await;
            match out {
                Ok(text) if ok(text.trim()) => return Ok(text.trim().to_owned()),
                Ok(_) | Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(200)).await,
                Ok(text) => bail!("timed out waiting for {what}: {cmd:?} printed {text:?}"),
                Err(e) => bail!("timed out waiting for {what}: {e:#}"),
            }
        }
    }

    /// Waits until a container has exited; returns its exit code.
    async fn exited(&mut self, running: &Running, timeout: Duration) -> Result<i32> {
        let cri = self.cri.clone();
        wait_for(timeout, &format!("{} to exit", running.name), || {
            let mut cri = cri.clone();
            let id = running.id.clone();
            async move {
                let status = cri.container_status(&id).await.ok()?;
                (status.state == v1::ContainerState::ContainerExited as i32).then_some(status.exit_code)
            }
        })
        .await
    }
}

// --- numpy --------------------------------------------------------------------

/// A deterministic iteration over 300 MiB of uint64 (an LCG step on every
/// element, wrapping); after each step the step number, the wrapping sum and
/// the xor of all elements go to stdout and `/tmp/state`. `recompute N` runs
/// N steps at full speed and prints step N's line.
const NUMPY: &str = r#"
import os, sys, time
import numpy as np
N = 300 * 2**20 // 8
A, C = np.uint64(6364136223846793005), np.uint64(1442695040888963407)
x = np.arange(N, dtype=np.uint64)
def line(step):
    return "step %d sum %d xor %d" % (step, int(x.sum(dtype=np.uint64)), int(np.bitwise_xor.reduce(x)))
def advance():
    np.multiply(x, A, out=x)
    np.add(x, C, out=x)
if sys.argv[1] == "recompute":
    for _ in range(int(sys.argv[2])):
        advance()
    print(line(int(sys.argv[2])), flush=True)
    sys.exit(0)
step = 0
while True:
    step += 1
    advance()
    text = line(step)
    print(text, flush=True)
    with open("/tmp/state.new", "w") as f:
        f.write(text + "\n")
    os.rename("/tmp/state.new", "/tmp/state")
    time.sleep(0.5)
"#;

fn step_of(line: &str) -> Option<u64> {
    line.strip_prefix("step ")?.split_whitespace().next()?.parse().ok()
}

async fn numpy_step(bed: &mut Bed, running: &Running) -> Result<u64> {
    let state = bed.exec(running, &["cat", "/tmp/state"]).await?;
    step_of(state.trim()).with_context(|| format!("/tmp/state: {state:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numpy_holding_300_mib_continues_and_matches_a_recomputation() -> Result<()> {
    let _serial = lazarus_e2e::serial().await;
    let mut bed = Bed::up().await?;
    let command = ["python3", "-c", NUMPY, "run"];
    let job = bed.run("numpy", &[], "numpy", &command, User::Root).await?;
    bed.exec_until(&job, &["cat", "/tmp/state"], "numpy's third step", |s| step_of(s).is_some_and(|n| n >= 3)).await?;
    let rss = bed.exec(&job, &["sh", "-c", "grep VmRSS /proc/1/status"]).await?;
    let rss_kib: u64 = rss.split_whitespace().nth(1).and_then(|v| v.parse().ok()).context("VmRSS")?;
    ensure!(rss_kib > 300 * 1024, "numpy holds only {rss_kib} KiB");
    let before = numpy_step(&mut bed, &job).await?;
    let reference = bed.checkpoint(&job)?;
    let after = numpy_step(&mut bed, &job).await?;
    bed.remove(&job).await?;
    println!("numpy: VmRSS {rss_kib} KiB, checkpoint between steps {before} and {after}");

    let restored = bed.restore(&job, &reference, &command, User::Root).await?;
    // The new pod's log starts right after the checkpointed step.
    let first = wait_for(Duration::from_secs(30), "numpy's first step after the restore", || {
        let first = restored.log_lines().first().and_then(|l| step_of(l));
        async move { first }
    })
    .await?;
    ensure!(
        first > before && first <= after + 1,
        "after the restore numpy went on at step {first}; the checkpoint was taken between steps {before} and {after}"
    );
    let target = first + 5;
    let lines = wait_for(Duration::from_secs(60), &format!("numpy's step {target}"), || {
        let lines = restored.log_lines();
        async move { lines.iter().any(|l| step_of(l) == Some(target)).then_some(lines) }
    })
    .await?;
    let steps: Vec<u64> = lines.iter().filter_map(|l| step_of(l)).collect();
    ensure!(steps.windows(2).all(|w| w[1] == w[0] + 1), "steps after the restore are not consecutive: {steps:?}");
    let restored_line = lines.iter().find(|l| step_of(l) == Some(target)).cloned().unwrap_or_default();
    let previous = lines.iter().find(|l| step_of(l) == Some(target - 1)).cloned().unwrap_or_default();
    bed.remove(&restored).await?;

    // The same computation from scratch in a fresh container.
    let started = Instant::now();
    let target_text = target.to_string();
    let fresh = bed
        .run("numpy-recompute", &[], "numpy", &["python3", "-c", NUMPY, "recompute", &target_text], User::Root)
        .await?;
    let code = bed.exited(&fresh, Duration::from_secs(120)).await?;
    ensure!(code == 0, "the recomputation exited {code}: {:?}", fresh.log_lines());
    let recomputed = fresh.log_lines().into_iter().find(|l| step_of(l) == Some(target)).unwrap_or_default();
    bed.remove(&fresh).await?;
    println!(
        "numpy: restored went on at step {first}; step {target}: restored {restored_line:?}, recomputed {recomputed:?} \
         in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let sums = |l: &str| l.split_once(" sum ").map(|(_, rest)| rest.to_owned());
    ensure!(sums(&restored_line).is_some() && sums(&restored_line) != sums(&previous), "no change between steps");
    ensure!(
        restored_line == recomputed,
        "step {target} after the restore differs from the recomputation: {restored_line:?} vs {recomputed:?}"
    );
    Ok(())
}

// --- redis ----------------------------------------------------------------------

const REDIS: &[&str] = &[
    "redis-server",
    "--save",
    "",
    "--appendonly",
    "no",
    "--bind",
    "127.0.0.1",
    "--port",
    "6379",
    "--protected-mode",
    "no",
];
const KEYS: u64 = 100_000;
/// Lua run by the server: how many of key:1..key:N do not hold value:(7i).
const REDIS_CHECK: &str = "local bad = 0 for i = 1, tonumber(ARGV[1]) do \
    if redis.call('GET', 'key:' .. i) ~= 'value:' .. (i * 7) then bad = bad + 1 end end return bad";

async fn redis(bed: &mut Bed, running: &Running, args: &[&str]) -> Result<String> {
    let mut cmd = vec!["redis-cli", "--raw"];
    cmd.extend_from_slice(args);
    Ok(bed.exec(running, &cmd).await?.trim().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_with_100k_keys_keeps_every_value_and_accepts_writes() -> Result<()> {
    let _serial = lazarus_e2e::serial().await;
    let mut bed = Bed::up().await?;
    let server = bed.run("redis", &[], "redis", REDIS, User::Root).await?;
    bed.exec_until(&server, &["redis-cli", "ping"], "redis to answer PING", |s| s == "PONG").await?;
    let load =
        format!("seq 1 {KEYS} | awk '{{ printf \"SET key:%d value:%d\\r\\n\", $1, $1 * 7 }}' | redis-cli --pipe");
    let loaded = bed.exec(&server, &["sh", "-c", &load]).await?;
    ensure!(loaded.contains("errors: 0") && loaded.contains(&format!("replies: {KEYS}")), "redis-cli --pipe: {loaded}");
    let keys = KEYS.to_string();
    ensure!(redis(&mut bed, &server, &["DBSIZE"]).await? == keys, "DBSIZE before the checkpoint");
    ensure!(redis(&mut bed, &server, &["EVAL", REDIS_CHECK, "0", &keys]).await? == "0", "values before the checkpoint");
    let reference = bed.checkpoint(&server)?;
    // Written after the checkpoint: must not come back.
    redis(&mut bed, &server, &["SET", "key:1", "changed-after-the-checkpoint"]).await?;
    ensure!(redis(&mut bed, &server, &["EVAL", REDIS_CHECK, "0", &keys]).await? == "1", "the check sees a change");
    bed.remove(&server).await?;

    let restored = bed.restore(&server, &reference, REDIS, User::Root).await?;
    let dbsize = redis(&mut bed, &restored, &["DBSIZE"]).await?;
    let bad = redis(&mut bed, &restored, &["EVAL", REDIS_CHECK, "0", &keys]).await?;
    let sample = redis(&mut bed, &restored, &["GET", "key:54321"]).await?;
    println!("redis after the restore: DBSIZE {dbsize}, {bad} values differ, key:54321 = {sample}");
    ensure!(dbsize == keys, "DBSIZE after the restore: {dbsize}");
    ensure!(bad == "0", "{bad} of {KEYS} values differ after the restore");
    ensure!(sample == "value:380247", "key:54321 = {sample}");
    ensure!(redis(&mut bed, &restored, &["SET", "written-after-restore", "yes"]).await? == "OK", "SET");
    ensure!(redis(&mut bed, &restored, &["GET", "written-after-restore"]).await? == "yes", "GET");
    ensure!(redis(&mut bed, &restored, &["INCR", "key:counter"]).await? == "1", "INCR");
    ensure!(redis(&mut bed, &restored, &["DBSIZE"]).await? == (KEYS + 2).to_string(), "DBSIZE after writes");
    bed.remove(&restored).await?;
    Ok(())
}

/// The store's bytes: every blob's size.
fn store_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir.join("state/store/blobs/sha256"))? {
        total += entry?.metadata()?.len();
    }
    Ok(total)
}

/// For the newest two checkpoints in the store of `dir`: per file of the tree, the bytes of the
/// newer's chunks and how many of them the older does not have.
fn new_bytes_per_file(dir: &Path) -> Result<Vec<(String, u64, u64)>> {
    let store = dir.join("state/store");
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(store.join("index.json"))?)?;
    let manifests = index["manifests"].as_array().cloned().unwrap_or_default();
    let layers = |m: &serde_json::Value| -> Result<Vec<serde_json::Value>> {
        let digest = m["digest"].as_str().context("digest")?.trim_start_matches("sha256:").to_owned();
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(store.join("blobs/sha256").join(digest))?)?;
        Ok(manifest["layers"].as_array().cloned().unwrap_or_default())
    };
    let [.., older, newer] = manifests.as_slice() else { bail!("fewer than two checkpoints") };
    let old: std::collections::HashSet<String> =
        layers(older)?.iter().filter_map(|l| l["digest"].as_str().map(str::to_owned)).collect();
    let mut files: Vec<(String, u64, u64)> = Vec::new();
    for layer in layers(newer)? {
        let title = layer["annotations"]["org.opencontainers.image.title"].as_str().unwrap_or("(the tree)").to_owned();
        let size = layer["size"].as_u64().unwrap_or(0);
        let new = if old.contains(layer["digest"].as_str().unwrap_or_default()) { 0 } else { size };
        match files.iter_mut().find(|f| f.0 == title) {
            Some(file) => {
                file.1 += size;
                file.2 += new;
            }
            None => files.push((title, size, new)),
        }
    }
    Ok(files)
}

/// `uploaded_bytes=N` of the "checkpoint pushed" line `lazarus checkpoint` logs.
fn uploaded_bytes(log: &str) -> Result<u64> {
    let line = log.lines().find(|l| l.contains("checkpoint pushed")).with_context(|| format!("no push in:\n{log}"))?;
    let value = line.split("uploaded_bytes=").nth(1).context("no uploaded_bytes")?;
    Ok(value.split(|c: char| !c.is_ascii_digit()).next().unwrap_or_default().parse()?)
}

/// 64 MiB of incompressible uint64 (seeded) in one numpy array; `/tmp/change` present: the first
/// 1 % of it is rewritten (another seed); `/tmp/hash` present: the sha256 of the whole array goes
/// to `/tmp/hash.out`. `/tmp/state` says which it holds.
const NUMPY_VERSIONS: &str = r#"
import hashlib, os, time
import numpy as np
x = np.random.default_rng(1).integers(0, 2**63, size=64 * 2**20 // 8, dtype=np.uint64)
def put(path, text):
    with open(path + ".new", "w") as f:
        f.write(text + "\n")
    os.rename(path + ".new", path)
put("/tmp/state", "ready")
changed = False
while True:
    if os.path.exists("/tmp/change") and not changed:
        n = len(x) // 100
        x[:n] = np.random.default_rng(2).integers(0, 2**63, size=n, dtype=np.uint64)
        changed = True
        put("/tmp/state", "changed")
    if os.path.exists("/tmp/hash"):
        os.remove("/tmp/hash")
        put("/tmp/hash.out", hashlib.sha256(x.tobytes()).hexdigest())
    time.sleep(0.1)
"#;

/// The sha256 of the numpy array in `running`, asked of the program.
async fn array_digest(bed: &mut Bed, running: &Running) -> Result<String> {
    bed.exec(running, &["sh", "-c", "rm -f /tmp/hash.out; touch /tmp/hash"]).await?;
    bed.exec_until(running, &["sh", "-c", "cat /tmp/hash.out 2>/dev/null || true"], "the array's digest", |s| {
        s.len() == 64
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_version_shares_chunks_and_comes_back_on_another_node_from_the_registry() -> Result<()> {
    let _serial = lazarus_e2e::serial().await;
    let registry_config = "insecure_registries = [\"127.0.0.1\"]\nrestore_allowed_registries = [\"127.0.0.1:5000\"]\n";
    let mut bed = Bed::up_with(registry_config).await?;
    let registry = bed.bed.var("REGISTRY")?.to_owned();
    let repository = format!("{registry}/lazarus-e2e/versions-{:x}", lazarus_e2e::rand_u64());
    let command = ["python3", "-c", NUMPY_VERSIONS];
    let program = bed.run("array-versions", &[], "array", &command, User::Root).await?;
    bed.exec_until(&program, &["cat", "/tmp/state"], "the array", |s| s == "ready").await?;
    let key = format!("{NAMESPACE}/array-versions/array");
    let checkpoint = |bed: &Bed| -> Result<(u64, u64, String)> {
        let before = store_bytes(bed.dir.path())?;
        let out = lazarus_e2e::lazarus_cli(
            &bed.bed,
            bed.dir.path(),
            &["checkpoint", &key, "--repository", &repository, "--log-level", "info"],
        )?;
        let (stdout, stderr) = (String::from_utf8(out.stdout)?, String::from_utf8_lossy(&out.stderr).into_owned());
        ensure!(out.status.success(), "lazarus checkpoint failed:\n{stderr}");
        let pushed = stdout.lines().nth(1).with_context(|| format!("no registry reference: {stdout}"))?.to_owned();
        Ok((store_bytes(bed.dir.path())? - before, uploaded_bytes(&stderr)?, pushed))
    };
    let (stored1, uploaded1, _) = checkpoint(&bed)?;
    bed.exec(&program, &["touch", "/tmp/change"]).await?;
    bed.exec_until(&program, &["cat", "/tmp/state"], "the change", |s| s == "changed").await?;
    let changed = array_digest(&mut bed, &program).await?;
    let (stored2, uploaded2, pushed) = checkpoint(&bed)?;
    println!(
        "64 MiB array: the first version stored {stored1} bytes and uploaded {uploaded1}; with 1 % of it \
         rewritten, the second stored {stored2} and uploaded {uploaded2}"
    );
    let files = new_bytes_per_file(bed.dir.path())?;
    for (title, size, new) in &files {
        println!("  {title}: {size} bytes, {new} of them new");
    }
    // The interpreter's own memory (~25 MiB: its heap, arenas, numpy's generator) churns between
    // the two; the array's 63 MiB that did not change must be shared.
    let (_, pages, new) = files.iter().find(|f| f.0 == "checkpoint/pages-1.img").context("no pages file")?;
    ensure!(stored1 > 64 << 20 && uploaded1 > 64 << 20, "the first version holds the whole array");
    ensure!(pages - new >= 48 << 20, "only {} bytes of the second version's memory are shared", pages - new);
    ensure!(
        stored2 + (48 << 20) <= stored1,
        "the second version added {stored2} bytes to the store, the first {stored1}"
    );
    ensure!(uploaded2 <= stored2, "the second version uploaded {uploaded2} bytes, more than it stored ({stored2})");
    ensure!(
        uploaded2 + (48 << 20) <= uploaded1,
        "the second version uploaded {uploaded2} bytes, the first {uploaded1}"
    );
    bed.remove(&program).await?;

    // Another node (its own store) restores the second version from the registry.
    let mut other = Bed::up_with(registry_config).await?;
    let restored = other.restore(&program, &pushed, &command, User::Root).await?;
    ensure!(other.exec(&restored, &["cat", "/tmp/state"]).await?.trim() == "changed", "the second version's state");
    let digest = array_digest(&mut other, &restored).await?;
    ensure!(digest == changed, "the array on the other node hashes to {digest}, before the checkpoint {changed}");
    other.remove(&restored).await?;
    Ok(())
}

// --- a shell process tree with pipes --------------------------------------------

/// producer | filter | consumer: numbers 1, 2, …; awk keeps a running sum in
/// its memory; the consumer appends "n sum" to a file, one open per line.
/// (Debian's awk is mawk: without `-W interactive` it reads a pipe in blocks.)
const PIPELINE: &str = "i=0; while true; do i=$((i+1)); echo $i; sleep 0.2; done \
    | awk -W interactive '{ s += $1; print $1, s; fflush() }' \
    | while read n s; do echo \"$n $s\" >> /tmp/pipeline.txt; done";

/// Checks "n sum" lines: n = 1, 2, … without gaps or duplicates, sum = n(n+1)/2.
fn check_pipeline(text: &str) -> Result<u64> {
    let mut last = 0;
    for line in text.lines() {
        let mut words = line.split_whitespace().map(str::parse::<u64>);
        let (Some(Ok(n)), Some(Ok(sum)), None) = (words.next(), words.next(), words.next()) else {
            bail!("malformed line {line:?}");
        };
        ensure!(n == last + 1, "line {n} follows line {last} (a gap or a duplicate)");
        ensure!(sum == n * (n + 1) / 2, "line {n}: awk's sum is {sum}, not {}", n * (n + 1) / 2);
        last = n;
    }
    Ok(last)
}

#[test]
fn pipeline_check_catches_gaps_duplicates_and_a_lost_sum() {
    assert_eq!(check_pipeline("1 1\n2 3\n3 6\n").ok(), Some(3));
    assert!(check_pipeline("1 1\n3 6\n").is_err());
    assert!(check_pipeline("1 1\n2 3\n2 3\n").is_err());
    assert!(check_pipeline("1 1\n2 3\n3 3\n").is_err());
    assert!(check_pipeline("1 1\n2\n").is_err());
}

/// The command names of the container's processes, sorted, without `ps` itself.
async fn process_names(bed: &mut Bed, running: &Running) -> Result<Vec<String>> {
    let out = bed.exec(running, &["ps", "-e", "-o", "comm="]).await?;
    let mut names: Vec<String> =
        out.lines().map(|l| l.trim().to_owned()).filter(|n| !n.is_empty() && n != "ps" && n != "sleep").collect();
    names.sort();
    Ok(names)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shell_pipeline_goes_on_without_gaps_or_duplicates() -> Result<()> {
    let _serial = lazarus_e2e::serial().await;
    let mut bed = Bed::up().await?;
    let command = ["sh", "-c", PIPELINE];
    let job = bed.run("pipeline", &[], "pipeline", &command, User::Root).await?;
    let cat = ["cat", "/tmp/pipeline.txt"];
    bed.exec_until(&job, &cat, "ten lines", |s| s.lines().count() >= 10).await?;
    let tree = process_names(&mut bed, &job).await?;
    ensure!(tree.iter().filter(|n| *n == "sh").count() >= 3 && tree.contains(&"awk".to_owned()), "processes: {tree:?}");
    let before = check_pipeline(&bed.exec(&job, &cat).await?)?;
    let reference = bed.checkpoint(&job)?;
    let after = check_pipeline(&bed.exec(&job, &cat).await?)?;
    bed.remove(&job).await?;

    let restored = bed.restore(&job, &reference, &command, User::Root).await?;
    let at_restore = check_pipeline(&bed.exec(&restored, &cat).await?)?;
    ensure!(
        at_restore >= before && at_restore <= after,
        "the restored file ends at line {at_restore}; the checkpoint was taken between lines {before} and {after}"
    );
    let target = at_restore + 10;
    let text =
        bed.exec_until(&restored, &cat, &format!("line {target}"), |s| s.lines().count() as u64 >= target).await?;
    let last = check_pipeline(&text)?;
    let restored_tree = process_names(&mut bed, &restored).await?;
    println!(
        "pipeline: checkpoint between lines {before} and {after}, restored at {at_restore}, now at {last}; \
         processes before {tree:?}, after {restored_tree:?}"
    );
    ensure!(restored_tree == tree, "the process tree changed: {tree:?} → {restored_tree:?}");
    bed.remove(&restored).await?;
    Ok(())
}

// --- a non-root container ------------------------------------------------------------

/// A counter in /tmp/count and a file of its own in the user's home.
const COUNTER: &str = "echo mine > /home/worker/owned.txt; i=0; \
    while true; do echo $i > /tmp/count; echo count $i; i=$((i+1)); sleep 0.5; done";

async fn count(bed: &mut Bed, running: &Running) -> Result<u64> {
    Ok(bed.exec(running, &["cat", "/tmp/count"]).await?.trim().parse()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_running_as_uid_1000_is_checkpointed_and_restored() -> Result<()> {
    let _serial = lazarus_e2e::serial().await;
    let mut bed = Bed::up().await?;
    let uid: i64 = bed.bed.var("DEBIAN_IMAGE_UID")?.parse()?;
    let command = ["sh", "-c", COUNTER];
    let job = bed.run("nonroot", &[], "counter", &command, User::Uid(uid)).await?;
    // Far enough that a fresh start could not be taken for the restored counter.
    bed.exec_until(&job, &["cat", "/tmp/count"], "the counter", |s| s.parse::<u64>().is_ok_and(|n| n >= 8)).await?;
    let uids = |status: &str| status.lines().find(|l| l.starts_with("Uid:")).map(str::to_owned).unwrap_or_default();
    let status = bed.exec(&job, &["cat", "/proc/1/status"]).await?;
    ensure!(uids(&status).split_whitespace().skip(1).all(|u| u == uid.to_string()), "not uid {uid}: {}", uids(&status));
    let before = count(&mut bed, &job).await?;
    let reference = bed.checkpoint(&job)?;
    let after = count(&mut bed, &job).await?;
    bed.remove(&job).await?;

    let restored = bed.restore(&job, &reference, &command, User::Uid(uid)).await?;
    let first = count(&mut bed, &restored).await?;
    ensure!(first >= before && first <= after + 1, "restored counter {first}, checkpoint between {before} and {after}");
    bed.exec_until(&restored, &["cat", "/tmp/count"], "the counter to go on", |s| {
        s.parse::<u64>().is_ok_and(|n| n >= first + 2)
    })
    .await?;
    let status = bed.exec(&restored, &["cat", "/proc/1/status"]).await?;
    let owner =
        bed.exec(&restored, &["sh", "-c", "stat -c %u /home/worker/owned.txt; cat /home/worker/owned.txt"]).await?;
    println!(
        "non-root: checkpoint between {before} and {after}, restored at {first}; {}; owned.txt: {owner:?}",
        uids(&status)
    );
    ensure!(uids(&status).split_whitespace().skip(1).all(|u| u == uid.to_string()), "restored as {}", uids(&status));
    ensure!(owner.split_whitespace().collect::<Vec<_>>() == [uid.to_string().as_str(), "mine"], "owned.txt: {owner:?}");
    bed.remove(&restored).await?;
    Ok(())
}

// --- PostgreSQL 15 with default settings ------------------------------------------------

/// initdb's defaults (dynamic_shared_memory_type = posix: segments in
/// /dev/shm), the server as the image's `postgres` user; its socket in /tmp.
const POSTGRES: &str = "set -e; /usr/lib/postgresql/15/bin/initdb -D /tmp/pgdata >/tmp/initdb.log 2>&1; \
    exec /usr/lib/postgresql/15/bin/postgres -D /tmp/pgdata -k /tmp";
const ROWS: u64 = 10_000;
/// Row count, id sum and a digest of every value in order.
const SUMMARY: &str = "SELECT count(*), sum(id), md5(string_agg(v, ',' ORDER BY id)) FROM items";

async fn psql(bed: &mut Bed, running: &Running, sql: &str) -> Result<String> {
    let cmd = [
        "/usr/lib/postgresql/15/bin/psql",
        "-h",
        "/tmp",
        "-d",
        "postgres",
        "-X",
        "-A",
        "-t",
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        sql,
    ];
    Ok(bed.exec(running, &cmd).await?.trim().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_with_default_settings_keeps_its_rows_and_answers_queries() -> Result<()> {
    let _serial = lazarus_e2e::serial().await;
    let mut bed = Bed::up().await?;
    let command = ["sh", "-c", POSTGRES];
    let db = bed.run("postgres", &[], "postgres", &command, User::Name("postgres")).await?;
    let ready = ["/usr/lib/postgresql/15/bin/pg_isready", "-h", "/tmp", "-d", "postgres"];
    bed.exec_until(&db, &ready, "PostgreSQL to accept connections", |s| s.contains("accepting connections")).await?;
    ensure!(psql(&mut bed, &db, "SHOW dynamic_shared_memory_type").await? == "posix", "not PostgreSQL's default");
    ensure!(psql(&mut bed, &db, "SELECT current_user").await? == "postgres", "not the postgres user");
    let shm = bed.exec(&db, &["ls", "/dev/shm"]).await?;
    ensure!(shm.contains("PostgreSQL."), "no PostgreSQL segment in /dev/shm: {shm:?}");
    psql(
        &mut bed,
        &db,
        &format!(
            "CREATE TABLE items (id int PRIMARY KEY, v text NOT NULL); \
             INSERT INTO items SELECT g, md5(g::text) FROM generate_series(1, {ROWS}) g"
        ),
    )
    .await?;
    let summary = psql(&mut bed, &db, SUMMARY).await?;
    ensure!(summary.starts_with(&format!("{ROWS}|{}|", ROWS * (ROWS + 1) / 2)), "before the checkpoint: {summary}");
    let reference = bed.checkpoint(&db)?;
    // Written after the checkpoint: must not come back.
    psql(&mut bed, &db, "INSERT INTO items VALUES (0, 'after the checkpoint')").await?;
    bed.remove(&db).await?;

    let restored = bed.restore(&db, &reference, &command, User::Name("postgres")).await?;
    let after = psql(&mut bed, &restored, SUMMARY).await?;
    println!("postgres: before the checkpoint {summary}, after the restore {after}");
    ensure!(after == summary, "rows after the restore: {after}, at the checkpoint: {summary}");
    psql(&mut bed, &restored, "INSERT INTO items VALUES (-1, 'after the restore')").await?;
    let count = psql(&mut bed, &restored, "SELECT count(*) FROM items").await?;
    ensure!(count == (ROWS + 1).to_string(), "count after an insert: {count}");
    bed.remove(&restored).await?;
    Ok(())
}
