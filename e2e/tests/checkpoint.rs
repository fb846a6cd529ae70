//! Checkpoints of a running stateful container (counter, file in its
//! writable layer, a deleted image file, a listening TCP server with a
//! connected client) through the real containerd + runc + CRIU of the test
//! bed, taken with `lazarus checkpoint`, stored as OCI images in the local
//! store. The container must keep running and counting throughout.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use lazarus_e2e::{Cri, Testbed, container_config, pod_config, wait_for};
use lazarus_proto::v1;
use sha2::{Digest, Sha256};

const POD: &str = "ckpt";
const NAMESPACE: &str = "lazarus-e2e";
const STATEFUL: &str = lazarus_e2e::STATEFUL_WORKLOAD;

struct Bed {
    bed: Testbed,
    dir: tempfile::TempDir,
    cri: Cri,
}

impl Bed {
    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn lazarus(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(lazarus_e2e::lazarus_bin().expect("lazarus binary"));
        cmd.args(args)
            .arg("--upstream")
            .arg(format!("unix://{}", self.bed.containerd_socket().expect("socket").display()))
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--run-dir")
            .arg(self.dir.path().join("run"));
        cmd
    }

    /// `lazarus checkpoint …`; returns the printed reference.
    fn checkpoint(&self, container: &str, extra: &[&str]) -> Result<String> {
        let mut args = vec!["checkpoint", container];
        args.extend_from_slice(extra);
        let out = self.lazarus(&args).output()?;
        ensure!(
            out.status.success(),
            "lazarus checkpoint failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?.trim().to_owned())
    }

    async fn count(&mut self, container_id: &str) -> Result<u64> {
        self.cri.read_counter(container_id).await
    }
}

async fn start_stateful(bed: &mut Bed) -> Result<String> {
    bed.cri.sweep_test_pods().await?;
    let image = bed.bed.workload_image()?.to_owned();
    let pod = pod_config(POD, NAMESPACE, &bed.dir.path().join("pods"), &[("lazarus.dev/checkpoint-keep", "2")]);
    let pod_id = bed.cri.run_pod(&pod).await?;
    bed.cri.pull(&image, &pod).await?;
    let config = container_config(&pod, "stateful", &image, &["/bin/sh", "-c", STATEFUL]);
    let id = bed.cri.create_container(&pod_id, config, &pod).await?;
    bed.cri.runtime.start_container(v1::StartContainerRequest { container_id: id.clone() }).await?;
    let cri = bed.cri.clone();
    wait_for(Duration::from_secs(20), "the counter to reach 3", || {
        let mut cri = cri.clone();
        let id = id.clone();
        async move { cri.read_counter(&id).await.ok().filter(|n| *n >= 3) }
    })
    .await?;
    Ok(id)
}

/// The store's index.json, read independently of lazarus's code.
fn index(state: &Path) -> Result<Vec<serde_json::Value>> {
    let text = std::fs::read_to_string(state.join("store/index.json"))?;
    let index: serde_json::Value = serde_json::from_str(&text)?;
    ensure!(index["schemaVersion"] == 2, "index.json schemaVersion");
    Ok(index["manifests"].as_array().cloned().unwrap_or_default())
}

fn blob(state: &Path, digest: &str) -> Result<Vec<u8>> {
    let hex = digest.strip_prefix("sha256:").context("sha256 digest")?;
    let bytes = std::fs::read(state.join("store/blobs/sha256").join(hex))?;
    ensure!(format!("{:x}", Sha256::digest(&bytes)) == hex, "blob {digest} does not match its digest");
    Ok(bytes)
}

/// Entries of the checkpoint layer, and the rootfs diff's entries.
fn layer_contents(state: &Path, manifest: &serde_json::Value) -> Result<(Vec<String>, Vec<String>, Vec<String>)> {
    let layer = &manifest["layers"][0];
    ensure!(layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd", "layer media type {layer}");
    let compressed = blob(state, layer["digest"].as_str().context("layer digest")?)?;
    let tar_bytes = zstd::decode_all(&compressed[..])?;
    let mut names = Vec::new();
    let mut diff_names = Vec::new();
    let mut deleted = Vec::new();
    let mut archive = tar::Archive::new(&tar_bytes[..]);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let name = entry.path()?.to_string_lossy().trim_end_matches('/').to_owned();
        if name == "rootfs-diff.tar" {
            let mut inner = Vec::new();
            entry.read_to_end(&mut inner)?;
            for e in tar::Archive::new(&inner[..]).entries()? {
                diff_names.push(e?.path()?.to_string_lossy().into_owned());
            }
        } else if name == "deleted.files" {
            let mut text = String::new();
            entry.read_to_string(&mut text)?;
            deleted = serde_json::from_str(&text)?;
        }
        names.push(name);
    }
    Ok((names, diff_names, deleted))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_of_a_running_stateful_container() -> Result<()> {
    let _serial = lazarus_e2e::serial().await;
    let testbed = Testbed::load()?;
    let cri = Cri::connect(&testbed.containerd_socket()?)?;
    let mut bed = Bed { bed: testbed, dir: tempfile::tempdir()?, cri };
    let id = start_stateful(&mut bed).await?;
    let key = format!("{NAMESPACE}/{POD}/stateful");
    let state = bed.state_dir();

    // On demand, by namespace/pod/container.
    let before = bed.count(&id).await?;
    let reference = bed.checkpoint(&key, &[])?;
    println!("checkpoint: {reference}");
    ensure!(reference.starts_with(&format!("local:{key}:")) && reference.contains("@sha256:"), "reference {reference}");
    let status = bed.cri.container_status(&id).await?;
    ensure!(status.state == v1::ContainerState::ContainerRunning as i32, "container stopped by the checkpoint");
    let after = wait_for(Duration::from_secs(10), "the counter to go on", || {
        let mut cri = bed.cri.clone();
        let id = id.clone();
        async move { cri.read_counter(&id).await.ok().filter(|n| *n > before + 1) }
    })
    .await?;
    println!("counter {before} before the checkpoint, {after} after");

    // The image: files, annotations, verified blobs.
    let manifests = index(&state)?;
    ensure!(manifests.len() == 1, "one checkpoint in the store, found {}", manifests.len());
    let digest = manifests[0]["digest"].as_str().context("digest")?.to_owned();
    ensure!(reference.ends_with(&digest), "reference names the committed manifest");
    let manifest: serde_json::Value = serde_json::from_slice(&blob(&state, &digest)?)?;
    let annotations: HashMap<String, String> = serde_json::from_value(manifest["annotations"].clone())?;
    for (k, v) in [
        ("org.criu.checkpoint.container.name", "stateful"),
        ("io.kubernetes.cri-o.annotations.checkpoint.name", "stateful"),
        ("io.podman.annotations.checkpoint.name", "stateful"),
        ("org.criu.checkpoint.pod.name", POD),
        ("org.criu.checkpoint.pod.namespace", NAMESPACE),
        ("org.criu.checkpoint.engine.name", "lazarus"),
        ("org.criu.checkpoint.runtime.name", "runc"),
        ("org.criu.checkpoint.host.arch", "amd64"),
    ] {
        ensure!(annotations.get(k).map(String::as_str) == Some(v), "annotation {k}: {:?}", annotations.get(k));
    }
    for k in [
        "org.criu.checkpoint.criu.version",
        "org.criu.checkpoint.rootfsImageRef",
        "org.criu.checkpoint.rootfsImageName",
    ] {
        ensure!(annotations.get(k).is_some_and(|v| !v.is_empty()), "annotation {k} missing");
    }
    let (names, diff, deleted) = layer_contents(&state, &manifest)?;
    for expected in [
        "config.dump",
        "spec.dump",
        "status.dump",
        "checkpoint",
        "rootfs-diff.tar",
        "deleted.files",
        "dump.log",
        "stats-dump",
    ] {
        ensure!(names.iter().any(|n| n == expected), "{expected} missing from the layer: {names:?}");
    }
    ensure!(names.iter().any(|n| n.starts_with("checkpoint/pages-")), "no CRIU memory pages in the image");
    ensure!(diff.iter().any(|n| n == "data.txt"), "rootfs diff lacks data.txt: {diff:?}");
    ensure!(deleted.iter().any(|n| n == "/bin/vi"), "deleted.files lacks /bin/vi: {deleted:?}");

    // Retention (the pod says keep 2), listing and inspecting.
    let second = bed.checkpoint(&id, &[])?;
    let third = bed.checkpoint(&id, &[])?;
    let manifests = index(&state)?;
    ensure!(manifests.len() == 2, "retention keeps 2, found {}", manifests.len());
    let kept: Vec<&str> = manifests.iter().filter_map(|m| m["digest"].as_str()).collect();
    ensure!(second.ends_with(kept[0]) && third.ends_with(kept[1]), "the two newest are kept: {kept:?}");
    ensure!(!kept.contains(&digest.as_str()), "the oldest was removed");
    ensure!(
        std::fs::metadata(state.join("store/blobs/sha256").join(&digest[7..])).is_err(),
        "its blobs were collected"
    );
    let list = bed.lazarus(&["checkpoints", "list", &key]).output()?;
    let list = String::from_utf8_lossy(&list.stdout).into_owned();
    ensure!(list.lines().count() == 3, "header + 2 rows:\n{list}");
    let inspect = bed.lazarus(&["checkpoints", "inspect", &third]).output()?;
    let inspect = String::from_utf8_lossy(&inspect.stdout).into_owned();
    ensure!(inspect.contains("frozen:") && inspect.contains("org.criu.checkpoint.criu.version"), "inspect:\n{inspect}");
    println!("{list}\n{inspect}");

    // A malformed request is refused with a clear error and changes nothing.
    let out = bed.lazarus(&["checkpoint", "lazarus-e2e/no-such-pod/stateful"]).output()?;
    ensure!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not found"), "unknown container");

    // SIGKILL of lazarus while a checkpoint is being taken: the store keeps
    // the previous checkpoints, the new one never appears, leftovers go away.
    let mut child = bed.lazarus(&["checkpoint", &id]).stdout(std::process::Stdio::null()).spawn()?;
    let staging = state.join("staging");
    let saw_staging = wait_for(Duration::from_secs(10), "a staging directory", || {
        let staging = staging.clone();
        async move { std::fs::read_dir(&staging).ok().and_then(|mut d| d.next()).map(|_| ()) }
    })
    .await;
    child.kill()?;
    child.wait()?;
    if saw_staging.is_err() {
        bail!("the checkpoint finished before it could be killed; cannot test interruption");
    }
    let after_kill = index(&state)?;
    let digests: Vec<&str> = after_kill.iter().filter_map(|m| m["digest"].as_str()).collect();
    ensure!(digests == kept, "the store changed after SIGKILL: {digests:?} vs {kept:?}");
    for d in &digests {
        let manifest: serde_json::Value = serde_json::from_slice(&blob(&state, d)?)?;
        layer_contents(&state, &manifest)?;
    }
    // The dump the killed CLI asked containerd for may still run: wait until no CRIU and no
    // `runc checkpoint` is left (the e2e suite holds the test bed alone), not a fixed time.
    wait_for(Duration::from_secs(60), "the interrupted dump's criu / runc checkpoint to end", || async {
        checkpoint_processes().is_empty().then_some(())
    })
    .await
    .with_context(|| format!("still running: {:?}", checkpoint_processes()))?;
    let fourth = bed.checkpoint(&id, &[])?;
    ensure!(std::fs::read_dir(&staging).map(|d| d.count()).unwrap_or(0) == 0, "leftover staging removed");
    ensure!(
        index(&state)?.last().and_then(|m| m["digest"].as_str()).is_some_and(|d| fourth.ends_with(d)),
        "newest last"
    );
    // The node's store size cap: older checkpoints go, the newest stays.
    let config = bed.dir.path().join("capped.toml");
    std::fs::write(&config, "store_max_size = \"1KiB\"\n")?;
    let capped = bed.checkpoint(&id, &["--config", &config.display().to_string()])?;
    let left = index(&state)?;
    ensure!(
        left.len() == 1 && capped.ends_with(left[0]["digest"].as_str().unwrap_or("?")),
        "size cap keeps only the newest: {left:?}"
    );
    let status = bed.cri.container_status(&id).await?;
    ensure!(status.state == v1::ContainerState::ContainerRunning as i32, "container still running at the end");
    // It counts on. Not one read: a `sleep` the dumps caught in nanosleep
    // can oversleep by seconds after a `--leave-running` dump (seen with and
    // without the freeze held over the writable layer; see docs/checkpoints.md).
    let waited = Instant::now();
    let cri = bed.cri.clone();
    let end = wait_for(Duration::from_secs(60), &format!("the counter to go past {after}"), || {
        let mut cri = cri.clone();
        let id = id.clone();
        async move { cri.read_counter(&id).await.ok().filter(|n| *n > after) }
    })
    .await?;
    println!("counter {after} → {end} at the end ({:.1} s until it moved)", waited.elapsed().as_secs_f64());
    bed.cri.sweep_test_pods().await?;
    Ok(())
}

/// `pid: command line` of every `criu` and `runc … checkpoint` process on the node.
fn checkpoint_processes() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())))
        .filter_map(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let args: Vec<String> = cmdline
                .split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let program = args.first()?.rsplit('/').next()?.to_owned();
            let dumping = program == "criu" || (program.ends_with("runc") && args.iter().any(|a| a == "checkpoint"));
            dumping.then(|| format!("{}: {}", e.file_name().to_string_lossy(), args.join(" ")))
        })
        .collect()
}

/// Digests of the store's entries for one container, oldest first.
fn digests_of(state: &Path, key: &str) -> Result<Vec<String>> {
    Ok(index(state)?
        .iter()
        .filter(|m| m["annotations"]["lazarus.dev/container-key"] == key)
        .filter_map(|m| m["digest"].as_str().map(str::to_owned))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_checkpoints_survive_a_restart_and_stop_takes_one_last() -> Result<()> {
    let _serial = lazarus_e2e::serial().await;
    let testbed = Testbed::load()?;
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state");
    let containerd = testbed.containerd_socket()?;
    let socket = dir.path().join("lazarus.sock");
    let lazarus = lazarus_e2e::LazarusProcess::start(dir.path(), &socket, &containerd)?;
    let mut cri = Cri::connect(&socket)?;
    cri.sweep_test_pods().await?;
    let image = testbed.workload_image()?.to_owned();

    // A pod asking for checkpoints every 2s, keeping 2, and one on stop.
    let pod = pod_config(
        "periodic",
        NAMESPACE,
        &dir.path().join("pods"),
        &[
            ("lazarus.dev/checkpoint-interval", "2s"),
            ("lazarus.dev/checkpoint-keep", "2"),
            ("lazarus.dev/checkpoint-on-stop", "true"),
        ],
    );
    // A pod with a malformed interval: left alone, the rejection logged.
    let bad_pod =
        pod_config("malformed", NAMESPACE, &dir.path().join("pods"), &[("lazarus.dev/checkpoint-interval", "soon")]);
    let counter = "i=0; while true; do echo $i > /count; i=$((i+1)); sleep 1; done";
    let mut ids = Vec::new();
    for pod in [&pod, &bad_pod] {
        let pod_id = cri.run_pod(pod).await?;
        cri.pull(&image, pod).await?;
        let id = cri
            .create_container(&pod_id, container_config(pod, "worker", &image, &["/bin/sh", "-c", counter]), pod)
            .await?;
        cri.runtime.start_container(v1::StartContainerRequest { container_id: id.clone() }).await?;
        ids.push(id);
    }
    let (id, bad_id) = (ids[0].clone(), ids[1].clone());
    let key = format!("{NAMESPACE}/periodic/worker");

    // At least three periodic checkpoints, never more than two kept.
    let mut seen = std::collections::BTreeSet::new();
    wait_for(Duration::from_secs(60), "three periodic checkpoints", || {
        let now = digests_of(&state, &key).unwrap_or_default();
        assert!(now.len() <= 2, "retention keeps at most 2, found {}", now.len());
        seen.extend(now);
        let enough = seen.len() >= 3;
        async move { enough.then_some(()) }
    })
    .await
    .with_context(|| format!("lazarus log:\n{}", lazarus.log_text()))?;
    println!("periodic checkpoints seen: {}", seen.len());
    ensure!(digests_of(&state, &format!("{NAMESPACE}/malformed/worker"))?.is_empty(), "malformed pod was checkpointed");
    let log = lazarus.log_text();
    ensure!(
        log.contains(r#"lazarus.dev/checkpoint-interval="soon" rejected"#),
        "the rejected annotation is logged with its value:\n{log}"
    );
    ensure!(
        cri.container_status(&bad_id).await?.state == v1::ContainerState::ContainerRunning as i32,
        "malformed pod untouched"
    );

    // A lazarus restart: the schedule is rebuilt and goes on.
    let exit = lazarus.terminate()?;
    ensure!(exit.success(), "lazarus exit {exit}");
    let before_restart = digests_of(&state, &key)?;
    let lazarus = lazarus_e2e::LazarusProcess::start(dir.path(), &socket, &containerd)?;
    wait_for(Duration::from_secs(30), "a periodic checkpoint after the restart", || {
        let now = digests_of(&state, &key).unwrap_or_default();
        let fresh = now.iter().any(|d| !before_restart.contains(d));
        async move { fresh.then_some(()) }
    })
    .await
    .with_context(|| format!("lazarus log:\n{}", lazarus.log_text()))?;

    // Stop through lazarus: a last checkpoint is taken first, then the stop.
    let before_stop = digests_of(&state, &key)?;
    let count_before = cri.read_counter(&id).await?;
    cri.runtime.stop_container(v1::StopContainerRequest { container_id: id.clone(), timeout: 20 }).await?;
    let status = cri.container_status(&id).await?;
    ensure!(status.state == v1::ContainerState::ContainerExited as i32, "stopped");
    let after_stop = digests_of(&state, &key)?;
    let last = after_stop.last().context("a checkpoint after stop")?;
    ensure!(!before_stop.contains(last), "the newest checkpoint was taken at stop: {before_stop:?} → {after_stop:?}");
    ensure!(
        lazarus.log_text().contains("checkpointed before stop"),
        "lazarus log lacks the stop checkpoint:\n{}",
        lazarus.log_text()
    );
    println!("counter was {count_before} when the stop came; last checkpoint {last}");
    cri.sweep_test_pods().await?;
    lazarus.terminate()?;
    Ok(())
}
