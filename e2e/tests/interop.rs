//! lazarus checkpoints read by other programs than lazarus.
//!
//! 1. `lazarus checkpoints export` writes a kubelet-style archive; it is
//!    checked from outside lazarus's code — `tar -tf` for the layout, `tar
//!    -xOf` and this file's own JSON reading for `status.dump` (the CRI
//!    `ContainerStatus` as containerd marshals it), `spec.dump` (an OCI
//!    runtime spec) and `config.dump` (checkpointctl's `ContainerConfig`) —
//!    and restored by lazarus from the archive (both containerd flavours).
//! 2. containerd 2.1's **own** CRI restore of a lazarus checkpoint image:
//!    pushed to the test bed's registry, pulled by containerd and given as the
//!    image of `CreateContainer` in a new pod, with no lazarus in the path
//!    (the CRI calls go to containerd's socket). containerd 1.6 has no CRI
//!    restore: that test is ignored by default and `e2e/run-tests.sh` runs it
//!    in the 2.1 pass only.
//!
//! checkpointctl and CRI-O are not installable on these machines
//! (docs/compatibility.md): their readers are not run here.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use lazarus_e2e::{Cri, E2E_LABEL, LazarusProcess, Testbed, container_config, pod_config, wait_for};
use lazarus_proto::v1;
use serde_json::Value;

/// A namespace of its own: these tests sweep only their own pods.
const NAMESPACE: &str = "lazarus-e2e-interop";
const CONTAINER: &str = "counter";
/// A counter in /count and on stdout and a file in the writable layer; no
/// network (containerd's restore does not restore established TCP connections).
const COUNTER: &str =
    "echo interop > /data.txt; i=0; while true; do echo $i > /count; echo count $i; i=$((i+1)); sleep 1; done";

struct Bed {
    bed: Testbed,
    dir: tempfile::TempDir,
    /// Straight to containerd.
    containerd: Cri,
    image: String,
}

impl Bed {
    async fn new() -> Result<Bed> {
        let bed = Testbed::load()?;
        let containerd = Cri::connect(&bed.containerd_socket()?)?;
        let image = bed.workload_image()?.to_owned();
        let dir = tempfile::tempdir()?;
        std::fs::create_dir_all(dir.path().join("archives"))?;
        let mut bed = Bed { bed, dir, containerd, image };
        bed.sweep().await?;
        Ok(bed)
    }

    fn archives(&self) -> PathBuf {
        self.dir.path().join("archives")
    }

    /// The config the CLI and `lazarus serve` share: archives allowed from
    /// `archives/`, the registry insecure, checkpoints pushed in the layout
    /// containerd reads (`registry_layout = "portable"`), the test bed's restore dir.
    fn config(&self) -> Result<PathBuf> {
        let path = self.dir.path().join("config.toml");
        if !path.exists() {
            std::fs::write(
                &path,
                format!(
                    "restore_dir = {:?}\nrestore_allowed_dirs = [{:?}]\ninsecure_registries = [\"127.0.0.1\"]\nregistry_layout = \"portable\"\n",
                    self.bed.var("LAZARUS_RESTORE_DIR")?,
                    self.archives()
                ),
            )?;
        }
        Ok(path)
    }

    /// `lazarus ARGS` with this bed's config, upstream and state.
    fn lazarus(&self, args: &[&str]) -> Result<Output> {
        Ok(Command::new(lazarus_e2e::lazarus_bin()?)
            .args(args)
            .arg("--config")
            .arg(self.config()?)
            .arg("--upstream")
            .arg(format!("unix://{}", self.bed.containerd_socket()?.display()))
            .arg("--state-dir")
            .arg(self.dir.path().join("state"))
            .arg("--run-dir")
            .arg(self.dir.path().join("run"))
            .output()?)
    }

    /// `lazarus ARGS` that must succeed; its stdout lines.
    fn lazarus_ok(&self, args: &[&str]) -> Result<Vec<String>> {
        let out = self.lazarus(args)?;
        ensure!(
            out.status.success(),
            "lazarus {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?.lines().map(str::to_owned).collect())
    }

    fn pod(&self, name: &str, annotations: &[(&str, &str)]) -> v1::PodSandboxConfig {
        pod_config(name, NAMESPACE, &self.dir.path().join("pods").join(name), annotations)
    }

    /// A pod with the counter running on `cri`, checkpointable; returns (pod id, container id).
    async fn counter(cri: &mut Cri, pod: &v1::PodSandboxConfig, image: &str) -> Result<(String, String)> {
        std::fs::create_dir_all(&pod.log_directory)?;
        let pod_id = cri.run_pod(pod).await?;
        cri.pull(image, pod).await?;
        let config = container_config(pod, CONTAINER, image, &["/bin/sh", "-c", COUNTER]);
        let id = cri.create_container(&pod_id, config, pod).await?;
        cri.runtime.start_container(v1::StartContainerRequest { container_id: id.clone() }).await?;
        counter_at_least(cri, &id, 3).await?;
        Ok((pod_id, id))
    }

    /// Stops and removes this file's pods (and no one else's).
    async fn sweep(&mut self) -> Result<()> {
        let filter = v1::PodSandboxFilter {
            label_selector: [
                (E2E_LABEL.to_owned(), "true".to_owned()),
                ("io.kubernetes.pod.namespace".to_owned(), NAMESPACE.to_owned()),
            ]
            .into(),
            ..Default::default()
        };
        let pods = self
            .containerd
            .runtime
            .list_pod_sandbox(v1::ListPodSandboxRequest { filter: Some(filter) })
            .await?
            .into_inner();
        for pod in pods.items {
            self.containerd.remove_pod(&pod.id).await?;
        }
        Ok(())
    }
}

async fn counter_at_least(cri: &Cri, id: &str, n: u64) -> Result<u64> {
    wait_for(Duration::from_secs(30), &format!("the counter of {id} to reach {n}"), || {
        let mut cri = cri.clone();
        let id = id.to_owned();
        async move { cri.read_counter(&id).await.ok().filter(|c| *c >= n) }
    })
    .await
}

/// `tar ARGS` (GNU tar, not lazarus's code): stdout.
fn tar(args: &[&str]) -> Result<Vec<u8>> {
    let out = Command::new("tar").args(args).output().context("running tar")?;
    ensure!(out.status.success(), "tar {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    Ok(out.stdout)
}

/// One file of the archive, as JSON.
fn json_in(archive: &Path, name: &str) -> Result<Value> {
    let bytes = tar(&["-xOf", &archive.display().to_string(), name])?;
    serde_json::from_slice(&bytes).with_context(|| format!("{name} is not JSON"))
}

fn string<'a>(value: &'a Value, pointer: &str) -> Result<&'a str> {
    value.pointer(pointer).and_then(Value::as_str).filter(|s| !s.is_empty()).with_context(|| {
        format!("{pointer}: not a non-empty string in {}", serde_json::to_string_pretty(value).unwrap_or_default())
    })
}

/// A Go `time.Time` in JSON: RFC 3339 (`2026-12-03T17:00:00Z`, optional fraction, `Z` or an offset).
fn is_rfc3339(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() >= 20
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && (text.ends_with('Z') || text[19..].contains(['+', '-']))
}

/// The layout and the three JSON files of an exported archive, checked
/// against what containerd 2.1 and checkpointctl 1.5 unmarshal them into.
fn check_archive(archive: &Path, container_id: &str, image: &str) -> Result<()> {
    let listing = String::from_utf8(tar(&["-tf", &archive.display().to_string()])?)?;
    let names: Vec<&str> = listing.lines().map(|l| l.trim_start_matches("./").trim_end_matches('/')).collect();
    for expected in [
        "config.dump",
        "spec.dump",
        "status.dump",
        "checkpoint",
        "checkpoint/inventory.img",
        "rootfs-diff.tar",
        "deleted.files",
        "dump.log",
        "stats-dump",
    ] {
        ensure!(names.contains(&expected), "{expected} missing from the archive: {names:?}");
    }
    ensure!(names.iter().any(|n| n.starts_with("checkpoint/pages-")), "no CRIU pages in the archive: {names:?}");
    ensure!(names.iter().all(|n| !n.starts_with('/') && !n.contains("..")), "unsafe names: {names:?}");
    // Uncompressed: tar's own magic at offset 257 of the file.
    let head = std::fs::read(archive)?;
    ensure!(head.len() > 262 && &head[257..262] == b"ustar", "not an uncompressed tar");

    // status.dump: runtime.ContainerStatus (cri-api json tags; `image` an ImageSpec object).
    let status = json_in(archive, "status.dump")?;
    ensure!(status["image"].is_object(), "status.dump image is not an ImageSpec object: {}", status["image"]);
    ensure!(string(&status, "/image/image")?.contains("busybox"), "status.dump image: {}", status["image"]);
    ensure!(string(&status, "/id")? == container_id, "status.dump id: {}", status["id"]);
    ensure!(string(&status, "/metadata/name")? == CONTAINER, "status.dump metadata: {}", status["metadata"]);
    ensure!(
        status["state"].as_i64() == Some(v1::ContainerState::ContainerRunning as i64),
        "status.dump state must be the enum's number: {}",
        status["state"]
    );
    ensure!(status["created_at"].as_i64().is_some_and(|t| t > 0), "status.dump created_at: {}", status["created_at"]);
    ensure!(string(&status, "/image_ref")?.contains("@sha256:"), "status.dump image_ref: {}", status["image_ref"]);
    ensure!(
        string(&status, "/labels/io.kubernetes.pod.namespace")? == NAMESPACE,
        "status.dump labels: {}",
        status["labels"]
    );
    ensure!(!string(&status, "/log_path")?.is_empty(), "status.dump log_path");
    for camel in ["createdAt", "imageRef", "logPath", "podSandboxId"] {
        ensure!(status.get(camel).is_none(), "status.dump has the old key {camel}");
    }

    // spec.dump: the OCI runtime spec.
    let spec = json_in(archive, "spec.dump")?;
    ensure!(string(&spec, "/ociVersion")?.starts_with('1'), "spec.dump ociVersion");
    let args = spec.pointer("/process/args").and_then(Value::as_array).context("spec.dump process.args")?;
    ensure!(args.iter().any(|a| a.as_str().is_some_and(|a| a.contains("echo count"))), "spec.dump args: {args:?}");
    ensure!(spec.pointer("/root/path").is_some() && spec["linux"].is_object(), "spec.dump root/linux");
    ensure!(
        string(&spec, "/annotations/io.kubernetes.cri.container-name")? == CONTAINER,
        "spec.dump: checkpointctl reads containerd's container name from the annotations: {}",
        spec["annotations"]
    );
    let crio: Value =
        serde_json::from_str(string(&spec, "/annotations/io.kubernetes.cri-o.Annotations")?).context("CRI-O's")?;
    ensure!(crio.is_object(), "io.kubernetes.cri-o.Annotations is not a JSON object");

    // config.dump: checkpointctl's ContainerConfig.
    let config = json_in(archive, "config.dump")?;
    ensure!(string(&config, "/id")? == container_id, "config.dump id");
    ensure!(string(&config, "/name")? == CONTAINER, "config.dump name");
    ensure!(
        string(&config, "/rootfsImageName")? == image,
        "config.dump rootfsImageName: {}",
        config["rootfsImageName"]
    );
    let reference = string(&config, "/rootfsImageRef")?;
    ensure!(
        reference.contains("@sha256:") && reference.starts_with(image.split(':').next().unwrap_or_default()),
        "config.dump rootfsImageRef must be NAME@DIGEST (containerd pulls it): {reference}"
    );
    ensure!(!string(&config, "/runtime")?.is_empty(), "config.dump runtime");
    for key in ["createdTime", "checkpointedTime", "restoredTime"] {
        let time = string(&config, &format!("/{key}"))?;
        ensure!(is_rfc3339(time), "config.dump {key} is not RFC 3339: {time}");
    }
    ensure!(config["restored"] == Value::Bool(false), "config.dump restored: {}", config["restored"]);
    // deleted.files: a JSON array of strings.
    let deleted = json_in(archive, "deleted.files")?;
    ensure!(deleted.as_array().is_some_and(|a| a.iter().all(Value::is_string)), "deleted.files: {deleted}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exported_checkpoint_is_a_kubelet_archive_others_can_read_and_lazarus_restores() -> Result<()> {
    let _serial = lazarus_e2e::serial().await;
    let mut bed = Bed::new().await?;
    let pod = bed.pod("exported", &[]);
    let image = bed.image.clone();
    let (pod_id, id) = Bed::counter(&mut bed.containerd, &pod, &image).await?;
    let key = format!("{NAMESPACE}/exported/{CONTAINER}");
    let before = bed.containerd.read_counter(&id).await?;
    let reference = bed.lazarus_ok(&["checkpoint", &key])?.first().cloned().context("no reference printed")?;
    println!("checkpoint {reference} at counter {before}");

    // By the reference `checkpoint` printed.
    let archive = bed.archives().join(format!("checkpoint-exported_{NAMESPACE}-{CONTAINER}-2026-12-03T17:00:00Z.tar"));
    let started = std::time::Instant::now();
    let printed = bed.lazarus_ok(&["checkpoints", "export", &reference, &archive.display().to_string()])?;
    let size = std::fs::metadata(&archive)?.len();
    println!("exported in {:?}: {size} bytes; {printed:?}", started.elapsed());
    ensure!(printed.iter().any(|l| l.contains(&reference)), "export did not say what it wrote: {printed:?}");
    use std::os::unix::fs::PermissionsExt;
    ensure!(std::fs::metadata(&archive)?.permissions().mode() & 0o777 == 0o600, "the archive must be mode 0600");
    check_archive(&archive, &id, &image)?;

    // The same checkpoint by its key (the newest) and by its digest: the same bytes.
    let digest = reference.rsplit_once('@').context("digest")?.1.to_owned();
    for other in [key.as_str(), digest.as_str()] {
        let copy = bed.dir.path().join(format!("copy-{}.tar", lazarus_e2e::rand_u64()));
        bed.lazarus_ok(&["checkpoints", "export", other, &copy.display().to_string()])?;
        ensure!(std::fs::read(&copy)? == std::fs::read(&archive)?, "export of {other} differs");
    }
    // Never overwrites; unknown references are named.
    let original = std::fs::read(&archive)?;
    let out = bed.lazarus(&["checkpoints", "export", &reference, &archive.display().to_string()])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success() && stderr.contains("exists"), "export over an existing file: {stderr}");
    ensure!(std::fs::read(&archive)? == original, "the existing archive was changed");
    let missing = bed.dir.path().join("missing.tar");
    let out =
        bed.lazarus(&["checkpoints", "export", &format!("{NAMESPACE}/nothing/here"), &missing.display().to_string()])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success() && stderr.contains("nothing/here"), "unknown reference: {stderr}");
    ensure!(!missing.exists(), "a failed export left a file");
    bed.containerd.remove_pod(&pod_id).await?;

    // Round trip: lazarus restores the exported archive (an allowed directory).
    lazarus_e2e::install_runc_wrapper()?;
    let socket = bed.dir.path().join("cri.sock");
    let config = std::fs::read_to_string(bed.config()?)?;
    let lazarus =
        LazarusProcess::start_with_config(bed.dir.path(), &socket, &bed.bed.containerd_socket()?, Some(&config))?;
    let mut cri = Cri::connect(&socket)?;
    let path = archive.display().to_string();
    let pod = bed.pod("exported-restored", &[("lazarus.dev/restore-from", path.as_str())]);
    let (pod_id, id) = match Bed::counter(&mut cri, &pod, &image).await {
        Ok(ids) => ids,
        Err(e) => bail!("restore from the exported archive: {e:#}\nlazarus log:\n{}", lazarus.log_text()),
    };
    let value = cri.read_counter(&id).await?;
    println!("restored from the exported archive at counter {value} (checkpoint at {before})");
    ensure!(value >= before, "restored from the export: counter {value}, checkpoint at {before}");
    let (code, data, _) = cri.exec(&id, &["cat", "/data.txt"]).await?;
    ensure!(code == 0 && data.trim() == "interop", "/data.txt after restore: {code} {data:?}");
    // A fresh start would log "count 0" first.
    let logged = first_logged_count(&pod).await?;
    ensure!(logged > before, "the restored pod's log starts at count {logged}; the checkpoint was at {before}");
    cri.remove_pod(&pod_id).await?;
    lazarus.terminate()?;
    Ok(())
}

/// The first "count N" in the log file of the pod's counter (attempt 0).
async fn first_logged_count(pod: &v1::PodSandboxConfig) -> Result<u64> {
    let path = Path::new(&pod.log_directory).join(format!("{CONTAINER}/0.log"));
    wait_for(Duration::from_secs(10), "counts in the new pod's log", || {
        let log = std::fs::read_to_string(&path).unwrap_or_default();
        let first = log.lines().find_map(|l| l.rsplit_once("count ").and_then(|(_, n)| n.trim().parse().ok()));
        async move { first }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs containerd 2.1's CRI restore: run in the 2.1 pass (e2e/run-tests.sh runs it with --ignored there)"]
async fn containerd_2_1_restores_a_lazarus_checkpoint_image_with_its_own_cri_restore() -> Result<()> {
    let _serial = lazarus_e2e::serial().await;
    let mut bed = Bed::new().await?;
    // Run against 1.6 it must fail, not pass: 1.6 has no CRI restore.
    ensure!(
        bed.bed.flavor() == "2.1",
        "this test needs containerd 2.1's CRI restore; the test bed runs containerd {}",
        bed.bed.flavor()
    );
    let pod = bed.pod("origin", &[]);
    let image = bed.image.clone();
    let (pod_id, id) = Bed::counter(&mut bed.containerd, &pod, &image).await?;
    let key = format!("{NAMESPACE}/origin/{CONTAINER}");
    let registry = bed.bed.var("REGISTRY")?.to_owned();
    let repository = format!("{registry}/{NAMESPACE}/{CONTAINER}");
    let before = bed.containerd.read_counter(&id).await?;
    let printed = bed.lazarus_ok(&["checkpoint", &key, "--repository", &repository])?;
    let pushed = printed.get(1).with_context(|| format!("no registry reference printed: {printed:?}"))?.clone();
    println!("checkpoint at counter {before}, pushed as {pushed}");
    let (named, digest) = pushed.rsplit_once('@').context("pushed reference without digest")?;
    // The original is gone before the restore: nothing can keep counting but the restored one.
    bed.containerd.remove_pod(&pod_id).await?;

    // From here on only containerd: kubelet's calls for a pod whose image is the checkpoint.
    let pod = bed.pod("restored", &[]);
    std::fs::create_dir_all(&pod.log_directory)?;
    let pod_id = bed.containerd.run_pod(&pod).await?;
    let image_ref = bed.containerd.pull(named, &pod).await?;
    let pulled = bed
        .containerd
        .image
        .image_status(v1::ImageStatusRequest {
            image: Some(v1::ImageSpec { image: named.to_owned(), ..Default::default() }),
            verbose: false,
        })
        .await?
        .into_inner()
        .image
        .context("the pulled checkpoint image is unknown to containerd")?;
    ensure!(
        pulled.repo_digests.iter().any(|d| d.ends_with(digest)),
        "containerd pulled {image_ref} with digests {:?}, lazarus pushed {digest}",
        pulled.repo_digests
    );
    let config = container_config(&pod, CONTAINER, named, &["/bin/sh", "-c", COUNTER]);
    let created = bed.containerd.create_container(&pod_id, config, &pod).await;
    let new_id = created.with_context(|| format!("containerd's CreateContainer with the checkpoint image {named}"))?;
    bed.containerd
        .runtime
        .start_container(v1::StartContainerRequest { container_id: new_id.clone() })
        .await
        .with_context(|| format!("containerd's StartContainer (its restore) of {new_id}"))?;
    let status = bed.containerd.container_status(&new_id).await?;
    ensure!(status.state == v1::ContainerState::ContainerRunning as i32, "restored container not running: {status:?}");
    // containerd marks what its restore made and shows the base image, not the checkpoint.
    ensure!(
        status.annotations.get("restored").map(String::as_str) == Some("true"),
        "no restored=true annotation: containerd did not take its restore path: {:?}",
        status.annotations
    );
    let shown = status.image.as_ref().map(|i| i.image.clone()).unwrap_or_default();
    ensure!(shown.contains("busybox"), "restored container's image {shown:?}, expected the base image");

    // The counter goes on from the checkpoint, not from zero.
    let first = bed.containerd.read_counter(&new_id).await?;
    ensure!(first >= before, "counter restarted: {first} < {before}");
    counter_at_least(&bed.containerd, &new_id, first + 2).await?;
    let (code, data, _) = bed.containerd.exec(&new_id, &["cat", "/data.txt"]).await?;
    ensure!(code == 0 && data.trim() == "interop", "/data.txt after containerd's restore: {code} {data:?}");
    // Its stdout continues in the new pod's log (a fresh start would log "count 0" first).
    let logged = first_logged_count(&pod).await?;
    ensure!(logged > before, "the new pod's log starts at count {logged}; the checkpoint was at {before}");
    println!(
        "containerd 2.1 restored the lazarus checkpoint: counter at {first}, log from count {logged} (checkpoint at {before})"
    );
    bed.containerd.remove_pod(&pod_id).await?;
    Ok(())
}
