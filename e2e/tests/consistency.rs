//! A checkpoint is one instant: memory and writable layer from the same
//! moment, and nothing taken while a container shuts down becomes `latest`.
//! Real containerd + runc + CRIU through a real `lazarus serve`, driven the
//! way kubelet drives it.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use lazarus_e2e::{Cri, LazarusProcess, Testbed, check_sequence, container_config, pod_config, wait_for};
use lazarus_proto::v1;

const NAMESPACE: &str = "lazarus-e2e";

/// Appends a numbered line 100 times a second to two files in its writable
/// layer and keeps the number in memory (the shell's `$i`): one file opened
/// `O_APPEND` (`>>`, as loggers do), one opened for writing at its offset
/// (`>`). If the files were captured at another instant than the memory, a
/// restore is refused (CRIU checks the size of files open for writing) or
/// the restored process writes numbers the file already has, or skips some.
const WRITER: &str = "mkdir -p /var/tmp; exec 3>>/var/tmp/append.log 4>/var/tmp/offset.log; i=0; \
    while true; do i=$((i+1)); echo $i >&3; echo $i >&4; echo $i > /count; usleep 10000; done";

/// Handles SIGTERM the way a graceful program does: says goodbye, takes its
/// time to shut down (longer than two scheduler scans), exits 0.
const GRACEFUL: &str = "trap 'echo bye; sleep 12; exit 0' TERM; i=0; \
    while true; do i=$((i+1)); echo $i > /count; echo count $i; sleep 1; done";

/// A 200 MiB file in the writable layer (capturing it keeps the container
/// frozen for a while), then a counter.
const BIG_LAYER: &str = "dd if=/dev/urandom of=/big bs=1M count=200 2>/dev/null; i=0; \
    while true; do i=$((i+1)); echo $i > /count; sleep 0.2; done";

struct Bed {
    bed: Testbed,
    dir: tempfile::TempDir,
    cri: Cri,
    lazarus: Option<LazarusProcess>,
    image: String,
}

impl Bed {
    async fn up() -> Result<Bed> {
        let bed = Testbed::load()?;
        lazarus_e2e::install_runc_wrapper()?;
        let dir = tempfile::tempdir()?;
        let config = format!("restore_dir = {:?}\n", bed.var("LAZARUS_RESTORE_DIR")?);
        let socket = dir.path().join("cri.sock");
        let lazarus = LazarusProcess::start_with_config(dir.path(), &socket, &bed.containerd_socket()?, Some(&config))?;
        let mut cri = Cri::connect(&socket)?;
        cri.sweep_test_pods().await?;
        let image = bed.workload_image()?.to_owned();
        Ok(Bed { bed, dir, cri, lazarus: Some(lazarus), image })
    }

    /// Stops `lazarus serve` and starts it again with the same state.
    fn restart_lazarus(&mut self) -> Result<()> {
        if let Some(old) = self.lazarus.take() {
            old.terminate()?;
        }
        let config = std::fs::read_to_string(self.dir.path().join("config.toml"))?;
        let socket = self.dir.path().join("cri.sock");
        self.lazarus = Some(LazarusProcess::start_with_config(
            self.dir.path(),
            &socket,
            &self.bed.containerd_socket()?,
            Some(&config),
        )?);
        Ok(())
    }

    /// The task's status as containerd's own `ctr` reports it (`RUNNING`, `PAUSED`…).
    fn task_status(&self, id: &str) -> Result<String> {
        let out = Command::new(self.bed.var("CTR_BIN")?)
            .arg("--address")
            .arg(self.bed.containerd_socket()?)
            .args(["-n", "k8s.io", "tasks", "ls"])
            .output()?;
        ensure!(out.status.success(), "ctr tasks ls: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout)?;
        text.lines()
            .find_map(|l| {
                let fields: Vec<&str> = l.split_whitespace().collect();
                (fields.first() == Some(&id)).then(|| fields.last().copied().unwrap_or_default().to_owned())
            })
            .with_context(|| format!("ctr tasks ls has no task {id}:\n{text}"))
    }

    /// Starts `lazarus checkpoint ID` and SIGKILLs it while the container is
    /// frozen and its writable layer is being captured (after the dump).
    fn kill_checkpoint_while_frozen(&self, id: &str) -> Result<()> {
        let mut child = Command::new(lazarus_e2e::lazarus_bin()?)
            .args(["checkpoint", id])
            .arg("--upstream")
            .arg(format!("unix://{}", self.bed.containerd_socket()?.display()))
            .arg("--state-dir")
            .arg(self.dir.path().join("state"))
            .arg("--run-dir")
            .arg(self.dir.path().join("run"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let marker = self.dir.path().join("run/frozen").join(id);
        let staging = self.dir.path().join("state/staging");
        let deadline = Instant::now() + Duration::from_secs(30);
        let in_the_cut = loop {
            let diff_started = std::fs::read_dir(&staging)
                .ok()
                .and_then(|mut d| d.next())
                .and_then(Result::ok)
                .is_some_and(|d| d.path().join("tree/rootfs-diff.tar").exists());
            if marker.exists() && diff_started {
                break true;
            }
            if Instant::now() > deadline || child.try_wait()?.is_some() {
                break false;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        child.kill()?;
        child.wait()?;
        ensure!(
            in_the_cut,
            "never saw the checkpoint capture the writable layer while frozen; cannot test interruption"
        );
        Ok(())
    }

    fn pod(&self, name: &str, annotations: &[(&str, &str)]) -> v1::PodSandboxConfig {
        pod_config(
            name,
            NAMESPACE,
            &self.dir.path().join("pods").join(format!("{name}-{:x}", lazarus_e2e::rand_u64())),
            annotations,
        )
    }

    /// A new pod running `script` in container `name`; returns (pod id, container id).
    async fn run(&mut self, pod: &v1::PodSandboxConfig, name: &str, script: &str) -> Result<(String, String)> {
        std::fs::create_dir_all(&pod.log_directory)?;
        let pod_id = self.cri.run_pod(pod).await?;
        let image = self.image.clone();
        self.cri.pull(&image, pod).await?;
        let config = container_config(pod, name, &image, &["/bin/sh", "-c", script]);
        let id = self.cri.create_container(&pod_id, config, pod).await?;
        self.cri.runtime.start_container(v1::StartContainerRequest { container_id: id.clone() }).await?;
        Ok((pod_id, id))
    }

    /// `lazarus checkpoint` into the daemon's store; returns the reference.
    fn checkpoint(&self, container: &str) -> Result<String> {
        let out = Command::new(lazarus_e2e::lazarus_bin()?)
            .args(["checkpoint", container, "--keep", "2"])
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

    /// `lazarus checkpoints list NS/POD/CONTAINER` of the daemon's store, one line each.
    fn list(&self, key: &str) -> Result<String> {
        let out = Command::new(lazarus_e2e::lazarus_bin()?)
            .args(["checkpoints", "list", key, "--state-dir"])
            .arg(self.dir.path().join("state"))
            .output()?;
        ensure!(out.status.success(), "lazarus checkpoints list failed: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8(out.stdout)?)
    }

    /// The counter in `/count`; the writer rewrites it 100 times a second, so
    /// a read can catch it empty: read again.
    async fn counter(&mut self, id: &str) -> Result<u64> {
        let cri = self.cri.clone();
        wait_for(Duration::from_secs(10), &format!("a readable counter in {id}"), || {
            let mut cri = cri.clone();
            let id = id.to_owned();
            async move { cri.read_counter(&id).await.ok() }
        })
        .await
    }

    async fn counter_at_least(&mut self, id: &str, n: u64) -> Result<u64> {
        let cri = self.cri.clone();
        wait_for(Duration::from_secs(30), &format!("the counter of {id} to reach {n}"), || {
            let mut cri = cri.clone();
            let id = id.to_owned();
            async move { cri.read_counter(&id).await.ok().filter(|c| *c >= n) }
        })
        .await
    }

    /// The complete lines of a file in the container, as numbers; a line
    /// being written while `cat` reads (no newline yet) is left out.
    async fn numbers(&mut self, id: &str, path: &str) -> Result<Vec<u64>> {
        let (code, out, err) = self.cri.exec(id, &["cat", path]).await?;
        ensure!(code == 0, "cat {path} in {id}: exit {code}: {err}");
        let complete = match out.rfind('\n') {
            Some(end) => &out[..end],
            None => "",
        };
        complete
            .lines()
            .map(|l| l.trim().parse::<u64>().with_context(|| format!("{path}: line {l:?} is not a number")))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_in_the_writable_layer_restores_clean_20_times() -> Result<()> {
    let _serial = lazarus_e2e::serial().await;
    let mut bed = Bed::up().await?;
    let pod = bed.pod("writer", &[]);
    let (mut pod_id, mut id) = bed.run(&pod, "writer", WRITER).await?;
    bed.counter_at_least(&id, 50).await?;
    let key = format!("{NAMESPACE}/writer/writer");
    for cycle in 1..=20 {
        let started = Instant::now();
        let at_checkpoint = bed.counter(&id).await?;
        let reference = bed.checkpoint(&key).with_context(|| format!("cycle {cycle}: checkpoint"))?;
        // The old pod keeps writing after the checkpoint, as a pod on a node
        // that dies later would; then it goes.
        bed.counter_at_least(&id, at_checkpoint + 20).await?;
        bed.cri.remove_pod(&pod_id).await?;

        let restored = bed.pod("writer", &[("lazarus.dev/restore-from", &reference)]);
        let (new_pod, new_id) = bed
            .run(&restored, "writer", WRITER)
            .await
            .with_context(|| format!("cycle {cycle}: restoring {reference}"))?;
        let resumed = bed.counter(&new_id).await?;
        ensure!(resumed >= at_checkpoint, "cycle {cycle}: restored at {resumed}, checkpoint was at {at_checkpoint}");
        bed.counter_at_least(&new_id, resumed + 10).await?;
        for file in ["/var/tmp/append.log", "/var/tmp/offset.log"] {
            let numbers = bed.numbers(&new_id, file).await?;
            let lines =
                check_sequence(file, &numbers).with_context(|| format!("cycle {cycle}, restored from {reference}"))?;
            ensure!(lines >= resumed, "cycle {cycle}: {file} has {lines} lines, the restored counter is at {resumed}");
        }
        println!(
            "cycle {cycle}: checkpoint at {at_checkpoint}, restored at {resumed}, files 1..{} clean, {:.1} s",
            bed.counter(&new_id).await?,
            started.elapsed().as_secs_f64()
        );
        (pod_id, id) = (new_pod, new_id);
    }
    bed.cri.remove_pod(&pod_id).await?;
    Ok(())
}

/// Reads the container's CRI log.
fn log_of(pod: &v1::PodSandboxConfig, name: &str) -> String {
    std::fs::read_to_string(Path::new(&pod.log_directory).join(format!("{name}/0.log"))).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_never_becomes_latest() -> Result<()> {
    let _serial = lazarus_e2e::serial().await;
    let mut bed = Bed::up().await?;
    let annotations = [
        ("lazarus.dev/checkpoint-interval", "3s"),
        ("lazarus.dev/checkpoint-on-stop", "true"),
        ("lazarus.dev/checkpoint-keep", "3"),
    ];
    let pod = bed.pod("graceful", &annotations);
    let (pod_id, id) = bed.run(&pod, "worker", GRACEFUL).await?;
    let key = format!("{NAMESPACE}/graceful/worker");
    // Periodic checkpoints happen while it works.
    let bed_ref = &bed;
    wait_for(Duration::from_secs(30), "a periodic checkpoint", || {
        let listed = bed_ref.list(&key).unwrap_or_default();
        async move { (listed.lines().count() >= 1).then_some(()) }
    })
    .await?;
    let before_stop = bed.counter(&id).await?;

    // kubelet's order: StopContainer with the pod's grace period; the
    // workload shuts down for 12 s, the scheduler scans (every 5 s) meanwhile.
    let stop_started = Instant::now();
    let stop = tokio::spawn({
        let mut runtime = bed.cri.runtime.clone();
        let request = v1::StopContainerRequest { container_id: id.clone(), timeout: 30 };
        async move { runtime.stop_container(request).await }
    });
    // A manual checkpoint during the shutdown is refused, with the reason.
    wait_for(Duration::from_secs(10), "the workload to receive SIGTERM", || {
        let said_bye = log_of(&pod, "worker").contains("bye");
        async move { said_bye.then_some(()) }
    })
    .await?;
    let refused = bed.checkpoint(&id).expect_err("a checkpoint during the shutdown must be refused").to_string();
    ensure!(refused.contains("is being stopped"), "unexpected refusal: {refused}");
    stop.await??;
    let stop_took = stop_started.elapsed();
    ensure!(stop_took >= Duration::from_secs(10), "the workload did not take its time to shut down: {stop_took:?}");
    ensure!(log_of(&pod, "worker").contains("bye"), "the workload never saw SIGTERM");
    let listed = bed.list(&key)?;
    println!("after a {:.1} s stop, the store has:\n{listed}", stop_took.as_secs_f64());
    bed.cri.remove_pod(&pod_id).await?;

    // Re-created like a StatefulSet's pod: same name, restore from latest.
    let mut restore = annotations.to_vec();
    restore.push(("lazarus.dev/restore-from", "latest"));
    let restored = bed.pod("graceful", &restore);
    let (new_pod, new_id) = bed.run(&restored, "worker", GRACEFUL).await?;
    let resumed = bed.counter(&new_id).await?;
    ensure!(resumed >= before_stop, "restored at {resumed}, it was at {before_stop} before the stop");
    // It works on: counting, not shutting down.
    bed.counter_at_least(&new_id, resumed + 4).await?;
    let status = bed.cri.container_status(&new_id).await?;
    ensure!(
        status.state == v1::ContainerState::ContainerRunning as i32,
        "restored container is not running: {status:?}"
    );
    let log = log_of(&restored, "worker");
    ensure!(!log.contains("bye"), "the restored workload is shutting down again:\n{log}");
    println!("restored at {resumed} (was {before_stop} before the stop), counting on");
    bed.cri.remove_pod(&new_pod).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_killed_while_the_container_is_frozen_never_leaves_it_frozen() -> Result<()> {
    let _serial = lazarus_e2e::serial().await;
    let mut bed = Bed::up().await?;
    let pod = bed.pod("frozen", &[]);
    let (pod_id, id) = bed.run(&pod, "big", BIG_LAYER).await?;
    bed.counter_at_least(&id, 2).await?;
    ensure!(bed.task_status(&id)? == "RUNNING", "not running before the test");

    // Killed in the middle of the cut: the container stays frozen…
    bed.kill_checkpoint_while_frozen(&id)?;
    ensure!(
        bed.task_status(&id)? == "PAUSED",
        "a killed checkpoint did not leave the container paused: the test sees nothing"
    );
    // …until the next checkpoint of it, which thaws it first and succeeds.
    let reference = bed.checkpoint(&id)?;
    ensure!(bed.task_status(&id)? == "RUNNING", "the next checkpoint did not thaw the container");
    let n = bed.counter(&id).await?;
    bed.counter_at_least(&id, n + 3).await?;
    println!("killed mid-cut → PAUSED; next checkpoint {reference} thawed it, counting on from {n}");

    // Killed again; this time a restart of `lazarus serve` thaws it.
    bed.kill_checkpoint_while_frozen(&id)?;
    ensure!(bed.task_status(&id)? == "PAUSED", "a killed checkpoint did not leave the container paused");
    bed.restart_lazarus()?;
    let status = wait_for(Duration::from_secs(10), "lazarus serve to thaw the container at start", || {
        let status = bed.task_status(&id).unwrap_or_default();
        async move { (status == "RUNNING").then_some(status) }
    })
    .await?;
    let n = bed.counter(&id).await?;
    bed.counter_at_least(&id, n + 3).await?;
    println!("killed mid-cut → PAUSED; lazarus serve's start thawed it ({status}), counting on from {n}");
    bed.cri.remove_pod(&pod_id).await?;
    Ok(())
}
