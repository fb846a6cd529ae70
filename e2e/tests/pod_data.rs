//! `/dev/shm` and `emptyDir` volumes are part of the cut: captured while the
//! container is frozen, put back into the new pod's directories before CRIU
//! restores. Real containerd + runc + CRIU through a real `lazarus serve`,
//! driven the way kubelet drives it; emptyDirs are host directories shaped
//! like kubelet's (`<tmp>/pods/<uid>/volumes/kubernetes.io~empty-dir/<name>`),
//! mounted with a CRI `Mount` as kubelet does.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use lazarus_e2e::{
    Cri, LazarusProcess, Node, Testbed, check_sequence, container_config, numbers, pod_config, wait_for,
};
use lazarus_proto::v1;

const NAMESPACE: &str = "lazarus-e2e";

/// Holds `/dev/shm/x` open (`exec 3<>`) and writes its counter into it, one
/// line per step, at the fd's offset.
const SHM_HOLDER: &str = "exec 3<>/dev/shm/x; i=0; \
    while true; do i=$((i+1)); echo $i >&3; echo $i > /count; usleep 100000; done";

/// Two processes on the emptyDir at /scratch: one appends a line per step and
/// closes the file between writes (`>>` each time), one holds `held` open.
const SCRATCH_WRITERS: &str = "(exec 4>/scratch/held; j=0; \
    while true; do j=$((j+1)); echo $j >&4; echo $j > /count2; usleep 50000; done) & \
    i=0; while true; do i=$((i+1)); echo $i >> /scratch/appended; echo $i > /count; usleep 50000; done";

/// One in-memory counter written to a held file in /dev/shm and appended to
/// an emptyDir file, 100 times a second.
const BOTH_WRITER: &str = "exec 3>/dev/shm/seq; i=0; \
    while true; do i=$((i+1)); echo $i >&3; echo $i >> /scratch/seq; echo $i > /count; usleep 10000; done";

struct Bed {
    bed: Testbed,
    dir: tempfile::TempDir,
    cri: Cri,
    _lazarus: LazarusProcess,
    image: String,
}

impl Bed {
    async fn up(extra_config: &str) -> Result<Bed> {
        let Node { bed, dir, cri, lazarus } = Node::up(extra_config).await?;
        let image = bed.workload_image()?.to_owned();
        Ok(Bed { bed, dir, cri, _lazarus: lazarus, image })
    }

    fn pod(&self, name: &str, annotations: &[(&str, &str)]) -> v1::PodSandboxConfig {
        pod_config(
            name,
            NAMESPACE,
            &self.dir.path().join("logs").join(format!("{name}-{:x}", lazarus_e2e::rand_u64())),
            annotations,
        )
    }

    /// A new, empty emptyDir directory for `pod`, where kubelet would make it.
    fn empty_dir(&self, pod: &v1::PodSandboxConfig, name: &str) -> Result<PathBuf> {
        let uid = pod.metadata.as_ref().map(|m| m.uid.clone()).unwrap_or_default();
        let dir = self.dir.path().join("pods").join(uid).join("volumes/kubernetes.io~empty-dir").join(name);
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// A new pod running `script` in container `name`, with `mounts`
    /// (container path, host path); returns (pod id, container id).
    async fn run(
        &mut self,
        pod: &v1::PodSandboxConfig,
        name: &str,
        script: &str,
        mounts: &[(&str, &Path)],
    ) -> Result<(String, String)> {
        self.run_command(pod, name, &["/bin/sh", "-c", script], mounts).await
    }

    /// [`Bed::run`] with any command; the Debian image is imported, never pulled.
    async fn run_command(
        &mut self,
        pod: &v1::PodSandboxConfig,
        name: &str,
        command: &[&str],
        mounts: &[(&str, &Path)],
    ) -> Result<(String, String)> {
        std::fs::create_dir_all(&pod.log_directory)?;
        let pod_id = self.cri.run_pod(pod).await?;
        let image = self.image.clone();
        if image == self.bed.workload_image()? {
            self.cri.pull(&image, pod).await?;
        }
        let mut config = container_config(pod, name, &image, command);
        config.mounts = mounts
            .iter()
            .map(|(container_path, host_path)| v1::Mount {
                container_path: (*container_path).to_owned(),
                host_path: host_path.display().to_string(),
                ..Default::default()
            })
            .collect();
        let id = self.cri.create_container(&pod_id, config, pod).await?;
        let started = self.cri.runtime.start_container(v1::StartContainerRequest { container_id: id.clone() }).await;
        if let Err(status) = started {
            bail!("StartContainer of {name}: {:?}: {}", status.code(), status.message());
        }
        Ok((pod_id, id))
    }

    fn lazarus(&self, args: &[&str]) -> Result<std::process::Output> {
        lazarus_e2e::lazarus_cli(&self.bed, self.dir.path(), args)
    }

    /// `lazarus checkpoint`; returns the reference.
    fn checkpoint(&self, container: &str) -> Result<String> {
        lazarus_e2e::checkpoint_cli(&self.bed, self.dir.path(), container, &["--keep", "2"])
    }

    /// `lazarus checkpoint` that must fail; returns its stderr.
    fn checkpoint_refused(&self, container: &str) -> Result<String> {
        let out = self.lazarus(&["checkpoint", container])?;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        ensure!(
            !out.status.success(),
            "the checkpoint of {container} was taken: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        Ok(stderr)
    }

    fn list(&self, key: &str) -> Result<String> {
        let out = Command::new(lazarus_e2e::lazarus_bin()?)
            .args(["checkpoints", "list", key, "--state-dir"])
            .arg(self.dir.path().join("state"))
            .output()?;
        ensure!(out.status.success(), "lazarus checkpoints list failed: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8(out.stdout)?)
    }

    async fn counter_file(&mut self, id: &str, file: &str) -> Result<u64> {
        let cri = self.cri.clone();
        wait_for(Duration::from_secs(10), &format!("a readable {file} in {id}"), || {
            let mut cri = cri.clone();
            let (id, file) = (id.to_owned(), file.to_owned());
            async move {
                let (code, out, _) = cri.exec(&id, &["cat", &file]).await.ok()?;
                if code == 0 { out.trim().parse().ok() } else { None }
            }
        })
        .await
    }

    async fn counter(&mut self, id: &str) -> Result<u64> {
        self.counter_file(id, "/count").await
    }

    async fn counter_at_least(&mut self, id: &str, file: &str, n: u64) -> Result<u64> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let value = self.counter_file(id, file).await?;
            if value >= n {
                return Ok(value);
            }
            ensure!(Instant::now() < deadline, "{file} of {id} stays at {value}, below {n}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The host directory bound at `destination` in the container (its runtime spec).
    async fn host_source(&mut self, id: &str, destination: &str) -> Result<PathBuf> {
        let status = self
            .cri
            .runtime
            .container_status(v1::ContainerStatusRequest { container_id: id.to_owned(), verbose: true })
            .await?
            .into_inner();
        let info: serde_json::Value = serde_json::from_str(status.info.get("info").context("verbose info")?)?;
        let mounts = info["runtimeSpec"]["mounts"].as_array().context("runtimeSpec.mounts")?;
        let source = mounts
            .iter()
            .rev()
            .find(|m| m["destination"] == destination)
            .and_then(|m| m["source"].as_str())
            .with_context(|| format!("no mount at {destination} in {id}"))?;
        Ok(PathBuf::from(source))
    }

    /// What a process of the container has open as `fd` (`readlink /proc/PID/fd/FD`).
    async fn open_file(&mut self, id: &str, pid: &str, fd: u32) -> Result<String> {
        let (code, out, err) = self.cri.exec(id, &["readlink", &format!("/proc/{pid}/fd/{fd}")]).await?;
        ensure!(code == 0, "readlink /proc/{pid}/fd/{fd} in {id}: {err}");
        Ok(out.trim().to_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_held_open_in_dev_shm_comes_back() -> Result<()> {
    let _serial = lazarus_e2e::serial().await;
    let mut bed = Bed::up("").await?;
    let pod = bed.pod("shm", &[]);
    let (pod_id, id) = bed.run(&pod, "holder", SHM_HOLDER, &[]).await?;
    bed.counter_at_least(&id, "/count", 10).await?;
    let reference = bed.checkpoint(&format!("{NAMESPACE}/shm/holder"))?;
    let after = bed.counter(&id).await?;
    bed.cri.remove_pod(&pod_id).await?;

    let restored = bed.pod("shm", &[("lazarus.dev/restore-from", &reference)]);
    let (new_pod, new_id) = bed.run(&restored, "holder", SHM_HOLDER, &[]).await.context("restoring")?;
    let resumed = bed.counter(&new_id).await?;
    ensure!(resumed >= 10, "restored at {resumed}: the counter started over");
    bed.counter_at_least(&new_id, "/count", resumed + 5).await?;
    // From the host: the new pod's shm directory holds the file, 1..n without a gap.
    let shm = bed.host_source(&new_id, "/dev/shm").await?;
    let lines = check_sequence("/dev/shm/x", &numbers(&shm.join("x"))?)?;
    ensure!(lines >= resumed + 5, "/dev/shm/x has {lines} lines, the counter is past {}", resumed + 5);
    // The restored shell still holds it.
    let held = bed.open_file(&new_id, "1", 3).await?;
    ensure!(held == "/dev/shm/x", "fd 3 of the restored process is {held:?}");
    println!("checkpoint at ≤{after}, restored at {resumed}, {} holds 1..{lines}, fd 3 → {held}", shm.display());
    bed.cri.remove_pod(&new_pod).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_dir_comes_back_into_a_new_empty_one() -> Result<()> {
    let _serial = lazarus_e2e::serial().await;
    let mut bed = Bed::up("").await?;
    let pod = bed.pod("scratch", &[]);
    let old_dir = bed.empty_dir(&pod, "scratch")?;
    let (pod_id, id) = bed.run(&pod, "writers", SCRATCH_WRITERS, &[("/scratch", &old_dir)]).await?;
    bed.counter_at_least(&id, "/count", 15).await?;
    bed.counter_at_least(&id, "/count2", 15).await?;
    let reference = bed.checkpoint(&format!("{NAMESPACE}/scratch/writers"))?;
    // The old pod goes on writing after the checkpoint (a node that dies later), then goes.
    let after = bed.counter(&id).await?;
    bed.counter_at_least(&id, "/count", after + 10).await?;
    bed.cri.remove_pod(&pod_id).await?;

    let restored = bed.pod("scratch", &[("lazarus.dev/restore-from", &reference)]);
    let new_dir = bed.empty_dir(&restored, "scratch")?;
    ensure!(std::fs::read_dir(&new_dir)?.next().is_none(), "the new emptyDir is not empty");
    let (new_pod, new_id) =
        bed.run(&restored, "writers", SCRATCH_WRITERS, &[("/scratch", &new_dir)]).await.context("restoring")?;
    let (resumed, resumed2) = (bed.counter(&new_id).await?, bed.counter_file(&new_id, "/count2").await?);
    ensure!(resumed >= 15 && resumed2 >= 15, "restored at {resumed}/{resumed2}: the counters started over");
    bed.counter_at_least(&new_id, "/count", resumed + 10).await?;
    bed.counter_at_least(&new_id, "/count2", resumed2 + 10).await?;
    // From the host: both files in the NEW directory are 1..n — what they held at the
    // checkpoint (a line missing at the start if it came back empty, lines twice if the
    // old pod's later writes came back) and what the restored processes wrote on.
    for (file, counter) in [("appended", resumed + 10), ("held", resumed2 + 10)] {
        let lines = check_sequence(file, &numbers(&new_dir.join(file))?)?;
        ensure!(lines >= counter, "{file} has {lines} lines, its counter is past {counter}");
    }
    let shell = bed.cri.exec(&new_id, &["sh", "-c", "for p in /proc/[0-9]*; do readlink $p/fd/4; done"]).await?;
    ensure!(shell.1.lines().any(|l| l == "/scratch/held"), "no restored process holds /scratch/held: {shell:?}");
    println!(
        "checkpoint ≤{after}, restored at {resumed}/{resumed2}; {} holds appended 1..{} and held 1..{}",
        new_dir.display(),
        numbers(&new_dir.join("appended"))?.len(),
        numbers(&new_dir.join("held"))?.len()
    );
    bed.cri.remove_pod(&new_pod).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_cap_a_checkpoint_is_refused_and_nothing_is_committed() -> Result<()> {
    let _serial = lazarus_e2e::serial().await;
    let mut bed = Bed::up("empty_dir_capture_max_size = \"64KiB\"\ndev_shm_capture_max_size = \"64KiB\"\n").await?;
    let big = "dd if=/dev/zero of=/scratch/big bs=1024 count=1024 2>/dev/null; \
        i=0; while true; do i=$((i+1)); echo $i > /count; usleep 100000; done";
    let pod = bed.pod("capped", &[]);
    let dir = bed.empty_dir(&pod, "scratch")?;
    let (pod_id, id) = bed.run(&pod, "big", big, &[("/scratch", &dir)]).await?;
    bed.counter_at_least(&id, "/count", 3).await?;
    let refused = bed.checkpoint_refused(&format!("{NAMESPACE}/capped/big"))?;
    println!("emptyDir over the cap: {}", refused.trim());
    ensure!(
        refused.contains("emptyDir \"scratch\" at /scratch holds 1.0 MiB in 1 files, over the 64.0 KiB cap")
            && refused.contains("empty_dir_capture_max_size")
            && refused.contains("lazarus.dev/capture-empty-dirs"),
        "unexpected refusal: {refused}"
    );
    ensure!(bed.list(&format!("{NAMESPACE}/capped/big"))?.trim().is_empty(), "a checkpoint was committed");
    let n = bed.counter(&id).await?;
    bed.counter_at_least(&id, "/count", n + 3).await.context("the container was not resumed after the refusal")?;
    bed.cri.remove_pod(&pod_id).await?;

    let shm_big = "dd if=/dev/zero of=/dev/shm/big bs=1024 count=1024 2>/dev/null; \
        i=0; while true; do i=$((i+1)); echo $i > /count; usleep 100000; done";
    let pod = bed.pod("shmcapped", &[]);
    let (pod_id, id) = bed.run(&pod, "big", shm_big, &[]).await?;
    bed.counter_at_least(&id, "/count", 3).await?;
    let refused = bed.checkpoint_refused(&id)?;
    println!("/dev/shm over the cap: {}", refused.trim());
    ensure!(
        refused.contains("/dev/shm holds 1.0 MiB in 1 files, over the 64.0 KiB cap (dev_shm_capture_max_size)"),
        "unexpected refusal: {refused}"
    );
    ensure!(bed.list(&format!("{NAMESPACE}/shmcapped/big"))?.trim().is_empty(), "a checkpoint was committed");
    bed.cri.remove_pod(&pod_id).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_dir_left_out_by_annotation_is_never_restored_empty() -> Result<()> {
    let _serial = lazarus_e2e::serial().await;
    let mut bed = Bed::up("").await?;
    let off = [("lazarus.dev/capture-empty-dirs", "false")];
    let pod = bed.pod("leftout", &off);
    let dir = bed.empty_dir(&pod, "scratch")?;
    let (pod_id, id) = bed.run(&pod, "writers", SCRATCH_WRITERS, &[("/scratch", &dir)]).await?;
    bed.counter_at_least(&id, "/count", 5).await?;
    let reference = bed.checkpoint(&id)?;
    bed.cri.remove_pod(&pod_id).await?;

    let mut annotations = off.to_vec();
    annotations.push(("lazarus.dev/restore-from", &reference));
    let restored = bed.pod("leftout", &annotations);
    let new_dir = bed.empty_dir(&restored, "scratch")?;
    let refused = bed.run(&restored, "writers", SCRATCH_WRITERS, &[("/scratch", &new_dir)]).await;
    let message = refused.err().context("a restore into an empty emptyDir the checkpoint left out succeeded")?;
    let message = format!("{message:#}");
    println!("refused: {message}");
    ensure!(
        message.contains("emptyDir \"scratch\" at /scratch held") && message.contains("was not captured"),
        "unexpected refusal: {message}"
    );
    bed.cri.sweep_test_pods().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_on_dev_shm_and_an_empty_dir_restores_clean_5_times() -> Result<()> {
    let _serial = lazarus_e2e::serial().await;
    let mut bed = Bed::up("").await?;
    let pod = bed.pod("seq", &[]);
    let dir = bed.empty_dir(&pod, "scratch")?;
    let (mut pod_id, mut id) = bed.run(&pod, "writer", BOTH_WRITER, &[("/scratch", &dir)]).await?;
    bed.counter_at_least(&id, "/count", 50).await?;
    for cycle in 1..=5 {
        let started = Instant::now();
        let before = bed.counter(&id).await?;
        let reference = bed.checkpoint(&format!("{NAMESPACE}/seq/writer")).with_context(|| format!("cycle {cycle}"))?;
        let after = bed.counter(&id).await?;
        bed.counter_at_least(&id, "/count", after + 20).await?;
        bed.cri.remove_pod(&pod_id).await?;

        let restored = bed.pod("seq", &[("lazarus.dev/restore-from", &reference)]);
        let new_dir = bed.empty_dir(&restored, "scratch")?;
        let (new_pod, new_id) = bed
            .run(&restored, "writer", BOTH_WRITER, &[("/scratch", &new_dir)])
            .await
            .with_context(|| format!("cycle {cycle}: restoring {reference}"))?;
        let resumed = bed.counter(&new_id).await?;
        ensure!(resumed >= before, "cycle {cycle}: restored at {resumed}, the checkpoint was after {before}");
        bed.counter_at_least(&new_id, "/count", resumed + 10).await?;
        let shm = bed.host_source(&new_id, "/dev/shm").await?;
        for (what, path) in [("/dev/shm/seq", shm.join("seq")), ("/scratch/seq", new_dir.join("seq"))] {
            let lines = check_sequence(what, &numbers(&path)?).with_context(|| format!("cycle {cycle}"))?;
            ensure!(lines >= resumed, "cycle {cycle}: {what} has {lines} lines, the counter is at {resumed}");
        }
        println!(
            "cycle {cycle}: checkpoint in {before}..{after}, restored at {resumed}, both files clean, {:.1} s",
            started.elapsed().as_secs_f64()
        );
        (pod_id, id) = (new_pod, new_id);
    }
    bed.cri.remove_pod(&pod_id).await?;
    Ok(())
}

/// Python's `multiprocessing.shared_memory`: a segment in /dev/shm, mapped, with
/// slot `i` (4 bytes) set to `i` each step and the step in memory.
const SHARED_MEMORY: &str = "
import time
from multiprocessing import shared_memory
shm = shared_memory.SharedMemory(name='lazarus-slots', create=True, size=4 * 100000)
i = 0
while True:
    i += 1
    shm.buf[4 * i:4 * i + 4] = i.to_bytes(4, 'little')
    with open('/count', 'w') as f:
        f.write(str(i))
    time.sleep(0.05)
";

/// The slots 1..n of the segment that are set; each must hold its index.
fn slots(path: &Path) -> Result<u64> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut n = 0;
    for (i, chunk) in bytes.chunks_exact(4).enumerate().skip(1) {
        let value = u32::from_le_bytes(chunk.try_into()?);
        if value == 0 {
            break;
        }
        ensure!(u64::from(value) == i as u64, "slot {i} holds {value}");
        n = i as u64;
    }
    let rest = &bytes[(4 * (n as usize + 1)).min(bytes.len())..];
    ensure!(rest.iter().all(|b| *b == 0), "slots after {n} are set: a gap");
    Ok(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_shared_memory_comes_back() -> Result<()> {
    let _serial = lazarus_e2e::serial().await;
    let mut bed = Bed::up("").await?;
    bed.image = bed.bed.debian_image()?.to_owned();
    let pod = bed.pod("pyshm", &[]);
    let (pod_id, id) = bed.run_command(&pod, "py", &["python3", "-c", SHARED_MEMORY], &[]).await?;
    bed.counter_at_least(&id, "/count", 20).await?;
    let reference = bed.checkpoint(&format!("{NAMESPACE}/pyshm/py"))?;
    let after = bed.counter(&id).await?;
    bed.counter_at_least(&id, "/count", after + 10).await?;
    bed.cri.remove_pod(&pod_id).await?;

    let restored = bed.pod("pyshm", &[("lazarus.dev/restore-from", &reference)]);
    let (new_pod, new_id) =
        bed.run_command(&restored, "py", &["python3", "-c", SHARED_MEMORY], &[]).await.context("restoring")?;
    let resumed = bed.counter(&new_id).await?;
    ensure!(resumed >= 20, "restored at {resumed}: started over");
    bed.counter_at_least(&new_id, "/count", resumed + 10).await?;
    let shm = bed.host_source(&new_id, "/dev/shm").await?;
    let n = slots(&shm.join("lazarus-slots"))?;
    ensure!(n >= resumed + 10, "the segment has slots 1..{n}, the counter is past {}", resumed + 10);
    println!("checkpoint ≤{after}, restored at {resumed}; {} holds slots 1..{n}", shm.display());
    bed.cri.remove_pod(&new_pod).await?;
    Ok(())
}
