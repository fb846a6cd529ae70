//! Volumes through the real containerd + runc + CRIU of the test bed, driven
//! through `lazarus serve` the way kubelet drives it: a container holds a
//! file open with `O_APPEND` on a hostPath-style bind mount (a directory of
//! the test's) and appends numbered records, counting in memory. The
//! checkpoint records the file's size and mtime; a restore into volumes that
//! no longer match is refused before anything is created, naming the volume
//! and the file, and a refusal never poisons `latest`. Records are read from
//! the host, not from inside the program.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use lazarus_e2e::{Cri, LazarusProcess, Node, Testbed, check_sequence, container_config, pod_config, wait_for};
use lazarus_proto::v1;

const NAMESPACE: &str = "lazarus-e2e";
const POD: &str = "volumes";
const CONTAINER: &str = "writer";
/// Appends record `i` to `/data/log` (opened once, `O_APPEND`, fd 3) every
/// 0.2 s while `/data/go` exists; the counter lives in the shell's memory.
const WRITER: &str = "i=0; exec 3>>/data/log; \
    while true; do if [ -e /data/go ]; then i=$((i+1)); echo $i >&3; fi; echo $i > /count; sleep 0.2; done";

struct Bed {
    bed: Testbed,
    dir: tempfile::TempDir,
    cri: Cri,
    _lazarus: LazarusProcess,
    image: String,
}

impl Bed {
    async fn up() -> Result<Bed> {
        let Node { bed, dir, cri, lazarus } = Node::up("").await?;
        let image = bed.workload_image()?.to_owned();
        Ok(Bed { bed, dir, cri, _lazarus: lazarus, image })
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// A host directory for a volume.
    fn volume_dir(&self, name: &str) -> Result<PathBuf> {
        let path = self.dir.path().join("volumes").join(name);
        std::fs::create_dir_all(&path)?;
        Ok(path)
    }

    /// `lazarus checkpoint` into the daemon's store; returns the reference.
    fn checkpoint(&self) -> Result<String> {
        lazarus_e2e::checkpoint_cli(&self.bed, self.dir.path(), &format!("{NAMESPACE}/{POD}/{CONTAINER}"), &[])
    }

    fn pod(&self, annotations: &[(&str, &str)]) -> v1::PodSandboxConfig {
        pod_config(POD, NAMESPACE, &self.dir.path().join("pods").join(lazarus_e2e::rand_u64().to_string()), annotations)
    }

    async fn run_pod(&mut self, pod: &v1::PodSandboxConfig) -> Result<String> {
        std::fs::create_dir_all(&pod.log_directory)?;
        let id = self.cri.run_pod(pod).await?;
        let image = self.image.clone();
        self.cri.pull(&image, pod).await?;
        Ok(id)
    }

    /// The writer's CreateContainerRequest, `/data` bound to `volume`.
    fn request(&self, pod_id: &str, pod: &v1::PodSandboxConfig, volume: &Path) -> v1::CreateContainerRequest {
        let mut config = container_config(pod, CONTAINER, &self.image, &["/bin/sh", "-c", WRITER]);
        config.mounts.push(v1::Mount {
            container_path: "/data".into(),
            host_path: volume.display().to_string(),
            ..Default::default()
        });
        v1::CreateContainerRequest {
            pod_sandbox_id: pod_id.to_owned(),
            config: Some(config),
            sandbox_config: Some(pod.clone()),
        }
    }

    async fn create_and_start(&mut self, pod_id: &str, pod: &v1::PodSandboxConfig, volume: &Path) -> Result<String> {
        let request = self.request(pod_id, pod, volume);
        let id = self.cri.runtime.create_container(request).await?.into_inner().container_id;
        self.cri.runtime.start_container(v1::StartContainerRequest { container_id: id.clone() }).await?;
        Ok(id)
    }

    /// CreateContainer that must be refused; checks nothing was created.
    async fn refused(&mut self, pod_id: &str, pod: &v1::PodSandboxConfig, volume: &Path) -> Result<tonic::Status> {
        let request = self.request(pod_id, pod, volume);
        let status = match self.cri.runtime.create_container(request).await {
            Ok(created) => bail!("CreateContainer was not refused: {}", created.into_inner().container_id),
            Err(status) => status,
        };
        let filter = v1::ContainerFilter { pod_sandbox_id: pod_id.to_owned(), ..Default::default() };
        let left = self
            .cri
            .runtime
            .list_containers(v1::ListContainersRequest { filter: Some(filter) })
            .await?
            .into_inner()
            .containers;
        ensure!(left.is_empty(), "a refused restore left containers behind: {left:?}");
        ensure!(status.message().len() <= 1024, "message longer than 1 KiB: {}", status.message().len());
        Ok(status)
    }

    /// Failures remembered for the writer, from `restore-failures.json`.
    fn remembered(&self) -> Result<Vec<serde_json::Value>> {
        let path = self.state_dir().join("restore-failures.json");
        if !path.exists() {
            return Ok(Vec::new());
        }
        let all: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
        Ok(all[format!("{NAMESPACE}/{POD}/{CONTAINER}")].as_array().cloned().unwrap_or_default())
    }
}

/// The records in `volume/log`.
fn records(volume: &Path) -> Result<Vec<u64>> {
    let text = std::fs::read_to_string(volume.join("log")).unwrap_or_default();
    text.lines().map(|l| l.trim().parse::<u64>().with_context(|| format!("record {l:?}"))).collect()
}

/// Waits for at least `n` records.
async fn records_at_least(volume: &Path, n: usize) -> Result<Vec<u64>> {
    wait_for(Duration::from_secs(30), &format!("{n} records in {}", volume.display()), || {
        let found = records(volume).ok().filter(|r| r.len() >= n);
        async move { found }
    })
    .await
}

/// Stops the writer (removes `go`) and waits until its file stands still.
async fn pause_writer(volume: &Path) -> Result<()> {
    std::fs::remove_file(volume.join("go")).ok();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_that_do_not_match_are_refused_by_name_and_latest_stays_usable() -> Result<()> {
    let _serial = lazarus_e2e::serial().await;
    let mut bed = Bed::up().await?;
    let volume = bed.volume_dir("data")?;

    // The writer on its volume, paused after some records, checkpointed, its pod removed.
    let pod = bed.pod(&[]);
    let pod_id = bed.run_pod(&pod).await?;
    std::fs::write(volume.join("go"), "")?;
    bed.create_and_start(&pod_id, &pod, &volume).await?;
    records_at_least(&volume, 5).await?;
    pause_writer(&volume).await?;
    let at_checkpoint = records(&volume)?;
    let size = std::fs::metadata(volume.join("log"))?.len();
    let reference = bed.checkpoint()?;
    println!("checkpoint {reference}: {} records, {size} bytes", at_checkpoint.len());
    bed.cri.remove_pod(&pod_id).await?;
    check_sequence("the volume's log", &at_checkpoint)?;

    let latest = [("lazarus.dev/restore-from", "latest"), ("lazarus.dev/restore-policy", "best-effort")];

    // (b) A new node: the volume is an empty directory. Refused, naming the volume and the file —
    // under best effort too: the node's fault is no reason to start from zero.
    let empty = bed.volume_dir("empty")?;
    let pod = bed.pod(&latest);
    let pod_id = bed.run_pod(&pod).await?;
    let status = bed.refused(&pod_id, &pod, &empty).await?;
    println!("empty volume: {:?} {}", status.code(), status.message());
    ensure!(status.code() == tonic::Code::FailedPrecondition, "{status:?}");
    let expected = format!("volume /data (hostPath, host path {}): file log missing", empty.display());
    ensure!(status.message().contains(&expected), "{}", status.message());
    ensure!(!empty.join("log").exists(), "the refused restore created the file");

    // (c) The file changed: same records written anew (same size, another mtime).
    let changed = bed.volume_dir("changed")?;
    std::fs::copy(volume.join("log"), changed.join("log"))?;
    let status = bed.refused(&pod_id, &pod, &changed).await?;
    println!("changed file: {}", status.message());
    ensure!(status.message().contains("file log mtime changed"), "{}", status.message());

    // (e) The volume without its file, then the file put back: the retry restores the same `latest`.
    std::fs::rename(volume.join("log"), volume.join("log.away"))?;
    let status = bed.refused(&pod_id, &pod, &volume).await?;
    ensure!(status.message().contains("file log missing"), "{}", status.message());
    std::fs::rename(volume.join("log.away"), volume.join("log"))?;
    ensure!(bed.remembered()?.is_empty(), "a refusal for the volume was remembered: {:?}", bed.remembered()?);

    // (a) The same directory, unchanged: restored; the records go on without duplicates.
    bed.create_and_start(&pod_id, &pod, &volume).await?;
    std::fs::write(volume.join("go"), "")?;
    let after = records_at_least(&volume, at_checkpoint.len() + 5).await?;
    check_sequence("the volume's log", &after)?;
    println!("restored: records {} to {}", at_checkpoint.len(), after.len());
    ensure!(bed.remembered()?.is_empty(), "failures remembered: {:?}", bed.remembered()?);

    bed.cri.remove_pod(&pod_id).await?;

    // (d) A writer on another volume, checkpointed while writing; the old pod goes on
    // appending, then dies. (Checkpoints of restored containers restoring again is the
    // subject of e2e/tests/cgroups.rs and consistency.rs.)
    let volume = bed.volume_dir("grown")?;
    let pod = bed.pod(&[]);
    let pod_id = bed.run_pod(&pod).await?;
    std::fs::write(volume.join("go"), "")?;
    bed.create_and_start(&pod_id, &pod, &volume).await?;
    records_at_least(&volume, 5).await?;
    let reference = bed.checkpoint()?;
    let checkpointed = records(&volume)?.len();
    records_at_least(&volume, checkpointed + 5).await?;
    bed.cri.remove_pod(&pod_id).await?;
    let grown = std::fs::metadata(volume.join("log"))?.len();
    println!("checkpoint {reference}; the file grew to {grown} bytes after it");
    let pod = bed.pod(&latest);
    let pod_id = bed.run_pod(&pod).await?;
    let status = bed.refused(&pod_id, &pod, &volume).await?;
    println!("grown file: {}", status.message());
    ensure!(status.message().contains(&format!("to {grown} bytes after the checkpoint")), "{}", status.message());
    ensure!(status.message().contains("file log grew from "), "{}", status.message());
    bed.cri.remove_pod(&pod_id).await?;

    // The same, with the volume opted into appended files: restored.
    let opted: Vec<(&str, &str)> = latest.iter().copied().chain([("lazarus.dev/volume-appends-ok", "/data")]).collect();
    let pod = bed.pod(&opted);
    let pod_id = bed.run_pod(&pod).await?;
    let restored = bed.create_and_start(&pod_id, &pod, &volume).await?;
    let status = bed.cri.container_status(&restored).await?;
    ensure!(status.state == v1::ContainerState::ContainerRunning as i32, "not running: {status:?}");
    let counter = bed.cri.read_counter(&restored).await?;
    ensure!(counter >= checkpointed as u64, "counter {counter}: not restored from the checkpoint at {checkpointed}");
    bed.cri.remove_pod(&pod_id).await?;
    ensure!(bed.remembered()?.is_empty(), "failures remembered: {:?}", bed.remembered()?);
    Ok(())
}
