//! Restores through the real containerd + runc + CRIU of the test bed, driven
//! through `lazarus serve` the way kubelet drives it: a stateful container is
//! checkpointed, its pod removed, and a new pod annotated
//! `lazarus.dev/restore-from…` gets the container back — counting on from
//! where it was, with its file, its listening socket, its logs in the new
//! pod's log file — on a containerd that has no restore of its own.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use lazarus_e2e::{Cri, LazarusProcess, Testbed, container_config, pod_config, wait_for};
use lazarus_proto::v1;

const NAMESPACE: &str = "lazarus-e2e";
/// A counter in /count and on stdout, a file in the writable layer, a file
/// deleted from the image, a listening echo server with a connected client.
const STATEFUL: &str = lazarus_e2e::STATEFUL_WORKLOAD;

struct Bed {
    bed: Testbed,
    dir: tempfile::TempDir,
    /// Through lazarus, as kubelet.
    cri: Cri,
    lazarus: LazarusProcess,
    image: String,
}

impl Bed {
    async fn up() -> Result<Bed> {
        Self::up_with(r#"["127.0.0.1:5000/lazarus-e2e"]"#).await
    }

    /// With `restore_allowed_registries` set to `allowed_registries` (TOML).
    async fn up_with(allowed_registries: &str) -> Result<Bed> {
        let bed = Testbed::load()?;
        lazarus_e2e::install_runc_wrapper()?;
        let dir = tempfile::tempdir()?;
        let restore_dir = bed.var("LAZARUS_RESTORE_DIR")?.to_owned();
        let archives = dir.path().join("archives");
        std::fs::create_dir_all(&archives)?;
        let config = format!(
            "restore_dir = {restore_dir:?}\n\
             restore_allowed_dirs = [{archives:?}]\n\
             restore_allowed_registries = {allowed_registries}\n\
             insecure_registries = [\"127.0.0.1\"]\n"
        );
        let socket = dir.path().join("cri.sock");
        let lazarus = LazarusProcess::start_with_config(dir.path(), &socket, &bed.containerd_socket()?, Some(&config))?;
        let mut cri = Cri::connect(&socket)?;
        cri.sweep_test_pods().await?;
        let image = bed.workload_image()?.to_owned();
        Ok(Bed { bed, dir, cri, lazarus, image })
    }

    fn archives(&self) -> PathBuf {
        self.dir.path().join("archives")
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// `lazarus checkpoint` against the daemon's own store; returns the reference.
    fn checkpoint(&self, container: &str) -> Result<String> {
        self.checkpoint_with(container, &[])
    }

    fn checkpoint_with(&self, container: &str, extra: &[&str]) -> Result<String> {
        let out = Command::new(lazarus_e2e::lazarus_bin()?)
            .args(["checkpoint", container])
            .args(extra)
            .arg("--config")
            .arg(self.dir.path().join("config.toml"))
            .arg("--upstream")
            .arg(format!("unix://{}", self.bed.containerd_socket()?.display()))
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--run-dir")
            .arg(self.dir.path().join("run"))
            .output()?;
        ensure!(out.status.success(), "lazarus checkpoint failed: {}", String::from_utf8_lossy(&out.stderr));
        let reference = String::from_utf8(out.stdout)?.lines().next().unwrap_or_default().trim().to_owned();
        ensure!(reference.starts_with("local:"), "unexpected reference {reference:?}");
        Ok(reference)
    }

    fn pod(&self, name: &str, namespace: &str, annotations: &[(&str, &str)]) -> v1::PodSandboxConfig {
        pod_config(name, namespace, &self.dir.path().join("pods").join(name), annotations)
    }

    /// RunPodSandbox + pull through lazarus.
    async fn run_pod(&mut self, pod: &v1::PodSandboxConfig) -> Result<String> {
        std::fs::create_dir_all(&pod.log_directory)?;
        let id = self.cri.run_pod(pod).await?;
        let image = self.image.clone();
        self.cri.pull(&image, pod).await?;
        Ok(id)
    }

    async fn create(&mut self, pod_id: &str, pod: &v1::PodSandboxConfig, attempt: u32) -> Result<String> {
        let mut config = container_config(pod, "stateful", &self.image, &["/bin/sh", "-c", STATEFUL]);
        if let Some(m) = config.metadata.as_mut() {
            m.attempt = attempt;
        }
        config.log_path = format!("stateful/{attempt}.log");
        self.cri.create_container(pod_id, config, pod).await
    }

    async fn start(&mut self, id: &str) -> Result<()> {
        self.cri.runtime.start_container(v1::StartContainerRequest { container_id: id.to_owned() }).await?;
        Ok(())
    }

    async fn counter_at_least(&self, id: &str, n: u64) -> Result<u64> {
        let cri = self.cri.clone();
        wait_for(Duration::from_secs(30), &format!("the counter to reach {n}"), || {
            let mut cri = cri.clone();
            let id = id.to_owned();
            async move { cri.read_counter(&id).await.ok().filter(|c| *c >= n) }
        })
        .await
    }

    /// A running stateful container in a new pod; returns (pod id, container id).
    async fn stateful(&mut self, pod: &v1::PodSandboxConfig) -> Result<(String, String)> {
        let pod_id = self.run_pod(pod).await?;
        let id = self.create(&pod_id, pod, 0).await?;
        self.start(&id).await?;
        self.counter_at_least(&id, 3).await?;
        Ok((pod_id, id))
    }

    /// Checkpoints, returning the reference and the counter values around it.
    async fn checkpoint_counting(&mut self, id: &str, key: &str) -> Result<(String, u64, u64)> {
        let before = self.cri.read_counter(id).await?;
        let reference = self.checkpoint(key)?;
        let after = self.cri.read_counter(id).await?;
        Ok((reference, before, after))
    }

    async fn remove_pod(&mut self, pod_id: &str) -> Result<()> {
        self.cri.runtime.stop_pod_sandbox(v1::StopPodSandboxRequest { pod_sandbox_id: pod_id.to_owned() }).await?;
        self.cri.runtime.remove_pod_sandbox(v1::RemovePodSandboxRequest { pod_sandbox_id: pod_id.to_owned() }).await?;
        Ok(())
    }

    async fn containers_in(&mut self, pod_id: &str) -> Result<Vec<v1::Container>> {
        let filter = v1::ContainerFilter { pod_sandbox_id: pod_id.to_owned(), ..Default::default() };
        Ok(self
            .cri
            .runtime
            .list_containers(v1::ListContainersRequest { filter: Some(filter) })
            .await?
            .into_inner()
            .containers)
    }

    async fn exec(&mut self, id: &str, cmd: &[&str]) -> Result<(i32, String)> {
        let request = v1::ExecSyncRequest {
            container_id: id.to_owned(),
            cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
            timeout: 10,
        };
        let out = self.cri.runtime.exec_sync(request).await?.into_inner();
        Ok((out.exit_code, String::from_utf8_lossy(&out.stdout).into_owned()))
    }

    /// `CreateContainer` that must be refused; returns the status and checks
    /// that no container exists in the pod afterwards.
    async fn refused(&mut self, pod_id: &str, pod: &v1::PodSandboxConfig, image: &str) -> Result<tonic::Status> {
        let config = container_config(pod, "stateful", image, &["/bin/sh", "-c", STATEFUL]);
        let request = v1::CreateContainerRequest {
            pod_sandbox_id: pod_id.to_owned(),
            config: Some(config),
            sandbox_config: Some(pod.clone()),
        };
        let status = match self.cri.runtime.create_container(request).await {
            Ok(created) => bail!("CreateContainer was not refused: {}", created.into_inner().container_id),
            Err(status) => status,
        };
        let left = self.containers_in(pod_id).await?;
        ensure!(left.is_empty(), "a refused restore left containers behind: {left:?}");
        Ok(status)
    }

    /// The restore dir's plan of a container, if any (files the wrapper left).
    fn plan_dir(&self, id: &str) -> Result<PathBuf> {
        Ok(Path::new(self.bed.var("LAZARUS_RESTORE_DIR")?).join(id))
    }
}

/// Reads the container's log file in its pod's log directory.
fn log_of(pod: &v1::PodSandboxConfig, attempt: u32) -> String {
    std::fs::read_to_string(Path::new(&pod.log_directory).join(format!("stateful/{attempt}.log"))).unwrap_or_default()
}

/// The first "count N" in a CRI log file.
fn first_count(log: &str) -> Option<u64> {
    log.lines().find_map(|l| l.rsplit_once("count ").and_then(|(_, n)| n.trim().parse().ok()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stateful_container_comes_back_in_a_new_pod() -> Result<()> {
    let _serial = lazarus_e2e::serial().await;
    // A plan left behind by a container removed while lazarus was down.
    let restore_dir = PathBuf::from(Testbed::load()?.var("LAZARUS_RESTORE_DIR")?);
    let stale = restore_dir.join(format!("{:016x}{:016x}", lazarus_e2e::rand_u64(), lazarus_e2e::rand_u64()));
    std::fs::create_dir_all(stale.join("tree"))?;
    std::fs::write(stale.join("plan.json"), "{}")?;
    let mut bed = Bed::up().await?;
    wait_for(Duration::from_secs(10), "lazarus to remove a stale restore plan at start", || {
        let gone = !stale.exists();
        async move { gone.then_some(()) }
    })
    .await?;
    let pod = bed.pod("counter", NAMESPACE, &[]);
    let (pod_id, id) = bed.stateful(&pod).await?;
    let (reference, before, after) = bed.checkpoint_counting(&id, &format!("{NAMESPACE}/counter/stateful")).await?;
    println!("checkpoint {reference} taken at counter {before}..{after}");
    bed.remove_pod(&pod_id).await?;

    let restored_pod = bed.pod("counter-restored", NAMESPACE, &[("lazarus.dev/restore-from", &reference)]);
    let new_pod = bed.run_pod(&restored_pod).await?;
    let status = bed
        .cri
        .runtime
        .pod_sandbox_status(v1::PodSandboxStatusRequest { pod_sandbox_id: new_pod.clone(), verbose: false })
        .await?
        .into_inner()
        .status
        .context("pod status")?;
    ensure!(
        status.runtime_handler == "lazarus",
        "lazarus did not put the pod on its handler: {:?}",
        status.runtime_handler
    );
    let new_id = bed.create(&new_pod, &restored_pod, 0).await?;
    ensure!(bed.plan_dir(&new_id)?.join("plan.json").is_file(), "no restore plan for {new_id}");
    bed.start(&new_id).await?;
    let running = bed.cri.container_status(&new_id).await?;
    ensure!(
        running.state == v1::ContainerState::ContainerRunning as i32,
        "restored container not running: {running:?}"
    );

    // The counter goes on from the checkpoint, not from zero.
    let first = bed.cri.read_counter(&new_id).await?;
    ensure!(first >= before, "counter restarted: {first} < {before}");
    bed.counter_at_least(&new_id, first + 2).await?;
    let log = wait_for(Duration::from_secs(10), "output in the new pod's log", || {
        let log = log_of(&restored_pod, 0);
        async move { first_count(&log).is_some().then_some(log) }
    })
    .await?;
    let logged = first_count(&log).unwrap_or_default();
    ensure!(logged > before, "the new pod's log starts at count {logged}, the checkpoint was at {before}..{after}");
    println!("restored: counter at {first} (checkpoint at {before}..{after}), new log starts at count {logged}");

    // Writable layer: the file is there, the deleted file stays deleted.
    let (code, data) = bed.exec(&new_id, &["cat", "/data.txt"]).await?;
    ensure!(code == 0 && data.trim() == "stateful", "/data.txt after restore: {code} {data:?}");
    let (code, _) = bed.exec(&new_id, &["test", "-e", "/bin/vi"]).await?;
    ensure!(code != 0, "/bin/vi came back; deleted.files not applied");
    // The listening socket accepts connections (the established one was closed).
    let (code, echoed) = bed.exec(&new_id, &["sh", "-c", "echo ping | nc -w 2 127.0.0.1 8080"]).await?;
    ensure!(echoed.contains("ping"), "echo server after restore: exit {code}, {echoed:?}");
    // The plan's unpacked images are gone once started; the wrapper's result stays until removal.
    let tree = bed.plan_dir(&new_id)?.join("tree");
    wait_for(Duration::from_secs(10), "the unpacked checkpoint to be removed after start", || {
        let gone = !tree.exists();
        async move { gone.then_some(()) }
    })
    .await?;

    bed.cri.runtime.stop_container(v1::StopContainerRequest { container_id: new_id.clone(), timeout: 5 }).await?;
    let stopped = bed.cri.container_status(&new_id).await?;
    ensure!(stopped.state == v1::ContainerState::ContainerExited as i32, "not stopped: {stopped:?}");
    bed.cri.runtime.remove_container(v1::RemoveContainerRequest { container_id: new_id.clone() }).await?;
    ensure!(!bed.plan_dir(&new_id)?.exists(), "restore plan left after RemoveContainer");
    bed.remove_pod(&new_pod).await?;
    Ok(())
}

/// Flips one byte in the middle of a checkpoint's layer blob in the store.
fn corrupt_layer(state: &Path, manifest_digest: &str) -> Result<()> {
    let blob = |d: &str| state.join("store/blobs/sha256").join(d.trim_start_matches("sha256:"));
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(blob(manifest_digest))?)?;
    let layer = blob(manifest["layers"][0]["digest"].as_str().context("layer digest")?);
    let mut bytes = std::fs::read(&layer)?;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&layer, bytes)?;
    Ok(())
}

fn digest_of(reference: &str) -> Result<String> {
    Ok(reference.rsplit_once('@').context("reference without digest")?.1.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_restores_the_newest_valid_checkpoint_and_policies_decide_the_rest() -> Result<()> {
    let _serial = lazarus_e2e::serial().await;
    let mut bed = Bed::up().await?;
    let key = format!("{NAMESPACE}/job/stateful");
    let latest = [("lazarus.dev/restore-from", "latest")];
    let pod = bed.pod("job", NAMESPACE, &latest);
    // First run of the job: nothing to restore, best effort starts it fresh.
    let (pod_id, id) = bed.stateful(&pod).await?;
    ensure!(first_count(&log_of(&pod, 0)) == Some(0), "a job without checkpoints must start fresh");
    let (older, older_before, _) = bed.checkpoint_counting(&id, &key).await?;
    bed.counter_at_least(&id, older_before + 4).await?;
    let (newest, newest_before, newest_after) = bed.checkpoint_counting(&id, &key).await?;
    println!("checkpoints: {older} at {older_before}, {newest} at {newest_before}..{newest_after}");

    // A crash in the same pod: the next attempt restores the newest checkpoint.
    bed.cri.runtime.stop_container(v1::StopContainerRequest { container_id: id.clone(), timeout: 0 }).await?;
    let again = bed.create(&pod_id, &pod, 1).await?;
    bed.start(&again).await?;
    let value = bed.cri.read_counter(&again).await?;
    ensure!(value >= newest_before, "restart in the same pod: counter {value}, newest checkpoint at {newest_before}");

    // Node loss: the container is killed and the pod removed.
    let pid = container_pid(&mut bed, &again).await?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL)?;
    bed.remove_pod(&pod_id).await?;

    // The newest checkpoint corrupted: latest falls back to the older one.
    corrupt_layer(&bed.state_dir(), &digest_of(&newest)?)?;
    let pod = bed.pod("job", NAMESPACE, &latest);
    let pod_id = bed.run_pod(&pod).await?;
    let id = bed.create(&pod_id, &pod, 0).await?;
    bed.start(&id).await?;
    let value = bed.cri.read_counter(&id).await?;
    ensure!(
        value >= older_before && value < newest_before,
        "expected the older checkpoint (counter {older_before}..{newest_before}), got {value}"
    );
    ensure!(
        bed.lazarus.log_text().contains("digest mismatch"),
        "lazarus did not log why the newest checkpoint was skipped"
    );
    bed.remove_pod(&pod_id).await?;

    // None valid: best effort starts fresh, required refuses with a clear message.
    corrupt_layer(&bed.state_dir(), &digest_of(&older)?)?;
    let pod = bed.pod("job", NAMESPACE, &latest);
    let pod_id = bed.run_pod(&pod).await?;
    let id = bed.create(&pod_id, &pod, 0).await?;
    bed.start(&id).await?;
    let log = wait_for(Duration::from_secs(10), "the fresh container's output", || {
        let log = log_of(&pod, 0);
        async move { first_count(&log).is_some().then_some(log) }
    })
    .await?;
    ensure!(first_count(&log) == Some(0), "best effort with no valid checkpoint must start fresh: {log}");
    bed.remove_pod(&pod_id).await?;

    let pod = bed.pod(
        "job",
        NAMESPACE,
        &[("lazarus.dev/restore-from", "latest"), ("lazarus.dev/restore-policy", "required")],
    );
    let pod_id = bed.run_pod(&pod).await?;
    let image = bed.image.clone();
    let status = bed.refused(&pod_id, &pod, &image).await?;
    println!("required, none valid: {status:?}");
    ensure!(status.code() == tonic::Code::FailedPrecondition, "code {:?}", status.code());
    ensure!(
        status.message().contains("no usable checkpoint for latest") && status.message().contains("digest mismatch"),
        "message: {}",
        status.message()
    );
    bed.remove_pod(&pod_id).await?;
    Ok(())
}

async fn container_pid(bed: &mut Bed, id: &str) -> Result<i32> {
    let status = bed
        .cri
        .runtime
        .container_status(v1::ContainerStatusRequest { container_id: id.to_owned(), verbose: true })
        .await?
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(status.info.get("info").context("verbose info")?)?;
    Ok(i32::try_from(info["pid"].as_i64().context("pid")?)?)
}

/// A checkpointctl-layout archive (plain tar of the checkpoint tree), as
/// kubelet's checkpoint API writes through containerd 2.x or CRI-O, built from
/// a lazarus checkpoint's layer.
fn archive_from_checkpoint(state: &Path, manifest_digest: &str, out: &Path) -> Result<()> {
    let blob = |d: &str| state.join("store/blobs/sha256").join(d.trim_start_matches("sha256:"));
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(blob(manifest_digest))?)?;
    let layer = std::fs::read(blob(manifest["layers"][0]["digest"].as_str().context("layer digest")?))?;
    std::fs::write(out, zstd::decode_all(&layer[..])?)?;
    Ok(())
}

/// A tar whose only entry climbs out of the directory it is unpacked in.
fn hostile_archive(out: &Path) -> Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(1);
    header.set_mode(0o644);
    let name = b"../../escaped";
    header.as_old_mut().name[..name.len()].copy_from_slice(name);
    header.set_cksum();
    let mut builder = tar::Builder::new(Vec::new());
    builder.append(&header, &b"x"[..])?;
    std::fs::write(out, builder.into_inner()?)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_say_which_check_failed_and_create_nothing() -> Result<()> {
    let _serial = lazarus_e2e::serial().await;
    let mut bed = Bed::up().await?;
    let pod = bed.pod("source", NAMESPACE, &[]);
    let (pod_id, id) = bed.stateful(&pod).await?;
    let (reference, _, _) = bed.checkpoint_counting(&id, &format!("{NAMESPACE}/source/stateful")).await?;
    bed.remove_pod(&pod_id).await?;
    let hostile = bed.archives().join("hostile.tar");
    hostile_archive(&hostile)?;
    let outside = bed.dir.path().join("outside.tar");
    archive_from_checkpoint(&bed.state_dir(), &digest_of(&reference)?, &outside)?;
    let pause = bed.bed.var("PAUSE_IMAGE")?.to_owned();
    let image = bed.image.clone();

    let cases: Vec<(&str, String, &str, String, tonic::Code, &str)> = vec![
        (
            "wrong namespace",
            reference.clone(),
            "other-team",
            image.clone(),
            tonic::Code::FailedPrecondition,
            "namespace check failed",
        ),
        ("wrong image", reference.clone(), NAMESPACE, pause, tonic::Code::FailedPrecondition, "image check failed"),
        (
            "escaping archive",
            hostile.display().to_string(),
            NAMESPACE,
            image.clone(),
            tonic::Code::DataLoss,
            "path leaves the directory",
        ),
        (
            "archive outside the allowed dirs",
            outside.display().to_string(),
            NAMESPACE,
            image.clone(),
            tonic::Code::FailedPrecondition,
            "restore_allowed_dirs",
        ),
        (
            "registry not allowed",
            "evil.example.com/x/y:latest".to_owned(),
            NAMESPACE,
            image.clone(),
            tonic::Code::FailedPrecondition,
            "restore_allowed_registries",
        ),
        (
            "no such checkpoint",
            format!("local:{NAMESPACE}/nope/stateful"),
            NAMESPACE,
            image.clone(),
            tonic::Code::NotFound,
            "not found",
        ),
        (
            "malformed policy",
            reference.clone(),
            NAMESPACE,
            image.clone(),
            tonic::Code::InvalidArgument,
            "lazarus.dev/restore-policy",
        ),
    ];
    for (what, source, namespace, image, code, needle) in cases {
        let mut annotations = vec![("lazarus.dev/restore-from", source.as_str())];
        if what == "malformed policy" {
            annotations.push(("lazarus.dev/restore-policy", "sometimes"));
        }
        let pod = bed.pod("target", namespace, &annotations);
        let pod_id = bed.run_pod(&pod).await?;
        if image != bed.image {
            bed.cri.pull(&image, &pod).await?;
        }
        let status = bed.refused(&pod_id, &pod, &image).await?;
        println!("{what}: {:?} {}", status.code(), status.message());
        ensure!(status.code() == code, "{what}: code {:?}, expected {code:?}: {}", status.code(), status.message());
        ensure!(status.message().contains(needle), "{what}: message lacks {needle:?}: {}", status.message());
        ensure!(
            status.message().contains("restoring container stateful"),
            "{what}: message lacks context: {}",
            status.message()
        );
        bed.remove_pod(&pod_id).await?;
    }
    ensure!(!bed.dir.path().join("escaped").exists(), "the hostile archive wrote outside its directory");
    Ok(())
}

/// The stateful workload without network: containerd's own CheckpointContainer
/// (kubelet's checkpoint API) does not dump established TCP connections.
const STATEFUL_OFFLINE: &str = "echo stateful > /data.txt; rm /bin/vi; \
    i=0; while true; do echo $i > /count; echo count $i; i=$((i+1)); sleep 1; done";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubelet_checkpoint_archive_restores_too() -> Result<()> {
    let _serial = lazarus_e2e::serial().await;
    let mut bed = Bed::up().await?;
    let mut archives = Vec::new();

    // The checkpointctl layout (what CRI-O writes), built from a lazarus checkpoint.
    let pod = bed.pod("archived", NAMESPACE, &[]);
    let (pod_id, id) = bed.stateful(&pod).await?;
    let (reference, before, _) = bed.checkpoint_counting(&id, &format!("{NAMESPACE}/archived/stateful")).await?;
    let ours = bed.archives().join(format!("checkpoint-archived_{NAMESPACE}-stateful-2026-11-23T00:00:00Z.tar"));
    archive_from_checkpoint(&bed.state_dir(), &digest_of(&reference)?, &ours)?;
    archives.push((ours, "checkpointctl layout", before));
    bed.remove_pod(&pod_id).await?;

    // What kubelet's checkpoint API asks of the runtime (CRI CheckpointContainer,
    // containerd >= 2.0): the runtime's own archive, in kubelet's directory.
    let pod = bed.pod("archived", NAMESPACE, &[]);
    let pod_id = bed.run_pod(&pod).await?;
    let config = container_config(&pod, "stateful", &bed.image, &["/bin/sh", "-c", STATEFUL_OFFLINE]);
    let id = bed.cri.create_container(&pod_id, config, &pod).await?;
    bed.start(&id).await?;
    let before = bed.counter_at_least(&id, 3).await?;
    let kubelet_archive =
        bed.archives().join(format!("checkpoint-archived_{NAMESPACE}-stateful-2026-11-23T00:00:01Z.tar"));
    let request = v1::CheckpointContainerRequest {
        container_id: id.clone(),
        location: kubelet_archive.display().to_string(),
        timeout: 60,
    };
    match bed.cri.runtime.checkpoint_container(request).await {
        Ok(_) => {
            ensure!(kubelet_archive.is_file(), "CheckpointContainer succeeded but wrote no archive");
            archives.push((kubelet_archive, "containerd's CheckpointContainer", before));
        }
        Err(status) if status.code() == tonic::Code::Unimplemented => {
            println!("containerd {} has no CheckpointContainer: {}", bed.bed.flavor(), status.message());
        }
        Err(status) => {
            let log = status
                .message()
                .split_whitespace()
                .find(|w| w.ends_with("criu-dump.log"))
                .and_then(|p| std::fs::read_to_string(p).ok())
                .unwrap_or_default();
            let errors: Vec<&str> = log.lines().filter(|l| l.contains("Error")).collect();
            bail!("CheckpointContainer failed: {status:?}\ncriu-dump.log errors: {errors:#?}");
        }
    }
    bed.remove_pod(&pod_id).await?;

    for (archive, what, before) in archives {
        let path = archive.display().to_string();
        let pod = bed.pod("archived", NAMESPACE, &[("lazarus.dev/restore-from.stateful", path.as_str())]);
        let pod_id = bed.run_pod(&pod).await?;
        let id = bed.create(&pod_id, &pod, 0).await?;
        bed.start(&id).await?;
        let value = bed.cri.read_counter(&id).await?;
        println!("{what}: restored at counter {value} (checkpoint at {before})");
        ensure!(value >= before, "restored from {what}: counter {value}, checkpoint at {before}");
        let (code, data) = bed.exec(&id, &["cat", "/data.txt"]).await?;
        ensure!(code == 0 && data.trim() == "stateful", "{what}: /data.txt after restore: {code} {data:?}");
        let (code, _) = bed.exec(&id, &["test", "-e", "/bin/vi"]).await?;
        ensure!(code != 0, "{what}: /bin/vi came back; the deletion was not applied");
        ensure!(archive.exists(), "the archive must stay where it was");
        bed.remove_pod(&pod_id).await?;
    }

    // An archive whose CRIU images are damaged (digests cannot catch that: an
    // archive has none): StartContainer fails with CRIU's reason, and lazarus
    // remembers the checkpoint as failed for this container.
    let damaged = bed.archives().join("damaged.tar");
    damaged_archive(
        &bed.archives().join(format!("checkpoint-archived_{NAMESPACE}-stateful-2026-11-23T00:00:00Z.tar")),
        &damaged,
    )?;
    let path = damaged.display().to_string();
    let pod = bed.pod("archived", NAMESPACE, &[("lazarus.dev/restore-from", path.as_str())]);
    let pod_id = bed.run_pod(&pod).await?;
    let id = bed.create(&pod_id, &pod, 0).await?;
    let started = bed.cri.runtime.start_container(v1::StartContainerRequest { container_id: id.clone() }).await;
    let status = started.err().context("StartContainer of a damaged checkpoint succeeded")?;
    println!("damaged archive: {:?} {}", status.code(), status.message());
    ensure!(status.message().contains("lazarus: restoring container"), "message: {}", status.message());
    ensure!(status.message().contains("criu"), "no CRIU reason in: {}", status.message());
    let failures = std::fs::read_to_string(bed.state_dir().join("restore-failures.json"))?;
    let failures: serde_json::Value = serde_json::from_str(&failures)?;
    let recorded = failures[format!("{NAMESPACE}/archived/stateful")].as_array().cloned().unwrap_or_default();
    ensure!(
        recorded.iter().any(|c| c["checkpoint"].as_str() == Some(path.as_str()) && c["recorded"].is_string()),
        "failure not recorded: {failures}"
    );
    // Remembered as the checkpoint's fault, with CRIU's cause.
    ensure!(
        recorded.iter().any(|c| c["reason"].as_str().is_some_and(|r| r.contains("inventory.img"))),
        "the cause is not kept: {failures}"
    );
    bed.remove_pod(&pod_id).await?;
    Ok(())
}

/// A copy of a checkpoint archive with garbage in place of CRIU's inventory image.
fn damaged_archive(from: &Path, to: &Path) -> Result<()> {
    let input = std::fs::read(from)?;
    let mut builder = tar::Builder::new(Vec::new());
    for entry in tar::Archive::new(&input[..]).entries()? {
        let mut entry = entry?;
        let mut header = entry.header().clone();
        let path = entry.path()?.into_owned();
        if path.ends_with("inventory.img") {
            let garbage = [0x5a_u8; 64];
            header.set_size(garbage.len() as u64);
            header.set_cksum();
            builder.append(&header, &garbage[..])?;
        } else {
            builder.append(&header, &mut entry)?;
        }
    }
    std::fs::write(to, builder.into_inner()?)?;
    Ok(())
}

/// The registry's blob file of `digest` (Distribution's filesystem layout).
fn registry_blob(root: &Path, digest: &str) -> PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    root.join("docker/registry/v2/blobs/sha256").join(&hex[..2]).join(hex).join("data")
}

/// The layer digest of a manifest, fetched from the registry with curl.
fn registry_layer(registry: &str, repository: &str, tag: &str) -> Result<String> {
    let out = Command::new("curl")
        .args(["-fsS", "-H", "Accept: application/vnd.oci.image.manifest.v1+json"])
        .arg(format!("http://{registry}/v2/{repository}/manifests/{tag}"))
        .output()?;
    ensure!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
    let manifest: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(manifest["layers"][0]["digest"].as_str().context("layer digest")?.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_comes_from_the_registry_on_another_node() -> Result<()> {
    let _serial = lazarus_e2e::serial().await;
    let mut node_a = Bed::up().await?;
    let registry = node_a.bed.var("REGISTRY")?.to_owned();
    let repository = format!("lazarus-e2e/restore-{:x}", lazarus_e2e::rand_u64());
    let repository_name = format!("{registry}/{repository}");
    let annotations =
        [("lazarus.dev/checkpoint-repository", repository_name.as_str()), ("lazarus.dev/restore-from", "latest")];
    let key = format!("{NAMESPACE}/regjob/stateful");
    let pod = node_a.pod("regjob", NAMESPACE, &annotations);
    let (pod_id, id) = node_a.stateful(&pod).await?;
    let (_, older_before, _) = node_a.checkpoint_counting(&id, &key).await?;
    node_a.counter_at_least(&id, older_before + 4).await?;
    let (_, newest_before, _) = node_a.checkpoint_counting(&id, &key).await?;
    // Node A is lost: its container killed, its pod and its local store gone.
    let pid = container_pid(&mut node_a, &id).await?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL)?;
    node_a.remove_pod(&pod_id).await?;
    drop(node_a);

    // Node B (a fresh lazarus with an empty store) restores the newest from the registry.
    let mut node_b = Bed::up().await?;
    let pod = node_b.pod("regjob", NAMESPACE, &annotations);
    let pod_id = node_b.run_pod(&pod).await?;
    let id = node_b.create(&pod_id, &pod, 0).await?;
    node_b.start(&id).await?;
    let value = node_b.cri.read_counter(&id).await?;
    ensure!(
        value >= newest_before,
        "restored from the registry: counter {value}, newest checkpoint at {newest_before}"
    );
    ensure!(
        node_b.lazarus.log_text().contains(&repository_name),
        "node B's log does not name the repository it restored from"
    );
    node_b.remove_pod(&pod_id).await?;

    // The newest checkpoint's layer damaged in the registry: the previous one is restored.
    let tags = {
        let out =
            Command::new("curl").arg("-fsS").arg(format!("http://{registry}/v2/{repository}/tags/list")).output()?;
        let list: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let mut tags: Vec<String> = serde_json::from_value(list["tags"].clone())?;
        tags.retain(|t| t != "stateful-latest");
        tags.sort();
        tags
    };
    ensure!(tags.len() == 2, "two time tags expected in the registry: {tags:?}");
    let layer = registry_layer(&registry, &repository, &tags[1])?;
    let blob = registry_blob(Path::new(node_b.bed.var("REGISTRY_ROOT")?), &layer);
    let mut bytes = std::fs::read(&blob)?;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&blob, bytes)?;
    let pod = node_b.pod("regjob", NAMESPACE, &annotations);
    let pod_id = node_b.run_pod(&pod).await?;
    let id = node_b.create(&pod_id, &pod, 0).await?;
    node_b.start(&id).await?;
    let value = node_b.cri.read_counter(&id).await?;
    ensure!(
        value >= older_before && value < newest_before,
        "expected the older checkpoint (counter {older_before}..{newest_before}), got {value}"
    );
    node_b.remove_pod(&pod_id).await?;
    Ok(())
}

/// A TCP relay to `upstream` that passes responses at `bytes_per_second`: a
/// slow link to a real registry.
async fn throttled_relay(upstream: &str, bytes_per_second: u64) -> Result<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let upstream = upstream.to_owned();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else { return };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let up = tokio::io::copy(&mut client_read, &mut server_write);
                let down = async {
                    let mut buf = vec![0u8; 1024];
                    loop {
                        let n = server_read.read(&mut buf).await?;
                        if n == 0 {
                            break;
                        }
                        client_write.write_all(&buf[..n]).await?;
                        tokio::time::sleep(Duration::from_micros(n as u64 * 1_000_000 / bytes_per_second)).await;
                    }
                    Ok::<_, std::io::Error>(())
                };
                let _ = tokio::join!(up, down);
            });
        }
    });
    Ok(port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_download_outlives_kubelets_deadline_and_the_retry_restores() -> Result<()> {
    let _serial = lazarus_e2e::serial().await;
    // The relay listens on a port chosen at run time: allow the loopback registry host.
    let mut bed = Bed::up_with(r#"["127.0.0.1"]"#).await?;
    let registry = bed.bed.var("REGISTRY")?.to_owned();
    let repository = format!("lazarus-e2e/slow-{:x}", lazarus_e2e::rand_u64());
    let pod = bed.pod("slow", NAMESPACE, &[]);
    let (pod_id, id) = bed.stateful(&pod).await?;
    let before = bed.cri.read_counter(&id).await?;
    bed.checkpoint_with(&format!("{NAMESPACE}/slow/stateful"), &["--repository", &format!("{registry}/{repository}")])?;
    bed.remove_pod(&pod_id).await?;
    let layer = registry_layer(&registry, &repository, "stateful-latest")?;
    let size = {
        let out = Command::new("curl")
            .args(["-fsSI"])
            .arg(format!("http://{registry}/v2/{repository}/blobs/{layer}"))
            .output()?;
        let head = String::from_utf8_lossy(&out.stdout).to_lowercase();
        head.lines()
            .find_map(|l| l.strip_prefix("content-length:").and_then(|v| v.trim().parse::<u64>().ok()))
            .context("layer size")?
    };
    // About 15 s for the layer: longer than the deadline given below.
    let port = throttled_relay(&registry, (size / 15).max(1)).await?;
    let slow_ref = format!("127.0.0.1:{port}/{repository}:stateful-latest");
    println!("layer {layer} of {size} bytes behind a relay at {} B/s: {slow_ref}", size / 15);

    let pod = bed.pod("slow", NAMESPACE, &[("lazarus.dev/restore-from", slow_ref.as_str())]);
    let pod_id = bed.run_pod(&pod).await?;
    let config = container_config(&pod, "stateful", &bed.image, &["/bin/sh", "-c", STATEFUL]);
    let create = v1::CreateContainerRequest {
        pod_sandbox_id: pod_id.clone(),
        config: Some(config),
        sandbox_config: Some(pod.clone()),
    };
    let mut request = tonic::Request::new(create.clone());
    request.set_timeout(Duration::from_secs(8));
    let status = match bed.cri.runtime.create_container(request).await {
        Ok(created) => bail!("CreateContainer did not wait for the download: {}", created.into_inner().container_id),
        Err(status) => status,
    };
    println!("first CreateContainer: {:?} {}", status.code(), status.message());
    ensure!(status.code() == tonic::Code::Unavailable, "code {:?}: {}", status.code(), status.message());
    ensure!(status.message().contains("still downloading"), "message: {}", status.message());
    ensure!(bed.containers_in(&pod_id).await?.is_empty(), "a container was created while downloading");
    ensure!(bed.lazarus.log_text().contains("prefetching the checkpoint"), "RunPodSandbox did not start the download");
    // kubelet retries; the download went on meanwhile.
    let lazarus_log = bed.lazarus.log.clone();
    wait_for(Duration::from_secs(60), "the download to finish", || {
        let log = std::fs::read_to_string(&lazarus_log).unwrap_or_default();
        async move { log.contains("checkpoint layer downloaded and verified").then_some(()) }
    })
    .await?;
    let id = bed.cri.runtime.create_container(create).await?.into_inner().container_id;
    bed.start(&id).await?;
    let value = bed.cri.read_counter(&id).await?;
    ensure!(value >= before, "restored after the slow download: counter {value}, checkpoint at {before}");
    bed.remove_pod(&pod_id).await?;
    Ok(())
}
