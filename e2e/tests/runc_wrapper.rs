//! The `lazarus-runc` wrapper behind the test bed's `lazarus` runtime handler, driven through
//! the CRI like kubelet does, with the real containerd, runc and CRIU:
//!
//! * without a restore plan it is invisible: pods and containers run as with runc;
//! * with a plan, `StartContainer` restores the container from a checkpoint taken by
//!   `lazarus checkpoint` (counter, writable layer, listening socket, closed connection);
//! * a restore that fails is reported in `StartContainer`'s error, with CRIU's log.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use lazarus_e2e::{Cri, Testbed, container_config, pod_config, wait_for};
use lazarus_proto::v1;

const NAMESPACE: &str = "lazarus-e2e";
const HANDLER: &str = "lazarus";
/// A counter with state in memory, in its writable layer (a new file, a deleted image file), a
/// listening TCP server and an established connection to it.
const STATEFUL: &str = lazarus_e2e::STATEFUL_WORKLOAD;

/// The test bed, the wrapper installed, a scratch directory and a CRI client.
struct Bed {
    testbed: Testbed,
    dir: tempfile::TempDir,
    cri: Cri,
    restore_dir: PathBuf,
    /// Pods this test made, removed at the end whatever happened.
    pods: Vec<String>,
}

impl Bed {
    async fn new() -> Result<Bed> {
        let testbed = Testbed::load()?;
        let wrapper = lazarus_e2e::install_runc_wrapper()?;
        // Built now, so that building it does not delay a checkpoint.
        lazarus_e2e::lazarus_bin()?;
        println!("wrapper installed at {}", wrapper.display());
        let restore_dir = PathBuf::from(testbed.var("LAZARUS_RESTORE_DIR")?);
        let cri = Cri::connect(&testbed.containerd_socket()?)?;
        Ok(Bed { testbed, dir: tempfile::tempdir()?, cri, restore_dir, pods: Vec::new() })
    }

    /// RunPodSandbox with `handler` ("" for the default, runc).
    async fn run_pod(&mut self, name: &str, handler: &str) -> Result<(String, v1::PodSandboxConfig)> {
        let pod = pod_config(name, NAMESPACE, &self.dir.path().join("pods").join(name), &[]);
        let request = v1::RunPodSandboxRequest { config: Some(pod.clone()), runtime_handler: handler.to_owned() };
        let id = self.cri.runtime.run_pod_sandbox(request).await?.into_inner().pod_sandbox_id;
        self.pods.push(id.clone());
        self.cri.pull(self.testbed.workload_image()?, &pod).await?;
        Ok((id, pod))
    }

    async fn create(&mut self, pod_id: &str, pod: &v1::PodSandboxConfig, name: &str, script: &str) -> Result<String> {
        let image = self.testbed.workload_image()?.to_owned();
        self.cri.create_container(pod_id, container_config(pod, name, &image, &["/bin/sh", "-c", script]), pod).await
    }

    async fn start(&mut self, id: &str) -> std::result::Result<(), tonic::Status> {
        self.cri.runtime.start_container(v1::StartContainerRequest { container_id: id.to_owned() }).await.map(|_| ())
    }

    async fn remove_pod(&mut self, id: &str) -> Result<()> {
        self.cri.runtime.stop_pod_sandbox(v1::StopPodSandboxRequest { pod_sandbox_id: id.to_owned() }).await?;
        self.cri.runtime.remove_pod_sandbox(v1::RemovePodSandboxRequest { pod_sandbox_id: id.to_owned() }).await?;
        self.pods.retain(|pod| pod != id);
        Ok(())
    }

    async fn cleanup(&mut self) {
        for id in self.pods.clone() {
            if let Err(err) = self.remove_pod(&id).await {
                eprintln!("removing pod {id}: {err}");
            }
        }
    }

    async fn exec(&mut self, id: &str, cmd: &[&str]) -> Result<(i32, String)> {
        let request = v1::ExecSyncRequest {
            container_id: id.to_owned(),
            cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
            timeout: 10,
        };
        let reply = self.cri.runtime.exec_sync(request).await?.into_inner();
        Ok((reply.exit_code, String::from_utf8_lossy(&reply.stdout).into_owned()))
    }

    async fn state(&mut self, id: &str) -> Result<i32> {
        Ok(self.cri.container_status(id).await?.state)
    }

    fn plan_dir(&self, id: &str) -> PathBuf {
        self.restore_dir.join(id)
    }

    /// Writes the restore plan of container `id`, as lazarus will.
    fn write_plan(&self, id: &str, source: &str, checkpoint_dir: &Path) -> Result<PathBuf> {
        let dir = self.plan_dir(id);
        std::fs::create_dir_all(&dir)?;
        let plan = serde_json::json!({
            "version": 1,
            "source": source,
            "checkpoint_dir": checkpoint_dir,
            "tcp_close": true,
        });
        std::fs::write(dir.join("plan.json.tmp"), serde_json::to_vec_pretty(&plan)?)?;
        std::fs::rename(dir.join("plan.json.tmp"), dir.join("plan.json"))?;
        Ok(dir)
    }

    /// `lazarus checkpoint ID` into this test's own state dir; returns the reference.
    fn checkpoint(&self, id: &str) -> Result<String> {
        let out = Command::new(lazarus_e2e::lazarus_bin()?)
            .args(["checkpoint", id, "--upstream"])
            .arg(format!("unix://{}", self.testbed.containerd_socket()?.display()))
            .arg("--state-dir")
            .arg(self.dir.path().join("state"))
            .arg("--run-dir")
            .arg(self.dir.path().join("run"))
            .output()?;
        ensure!(
            out.status.success(),
            "lazarus checkpoint failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?.trim().to_owned())
    }

    /// Unpacks the newest checkpoint of the local store into `dest` — read straight from the
    /// OCI layout (index.json → manifest → the one zstd tar layer), not with lazarus's code.
    fn unpack_checkpoint(&self, dest: &Path) -> Result<()> {
        let store = self.dir.path().join("state/store");
        let blob = |digest: &str| -> Result<Vec<u8>> {
            let hex = digest.strip_prefix("sha256:").context("a sha256 digest")?;
            Ok(std::fs::read(store.join("blobs/sha256").join(hex))?)
        };
        let index: serde_json::Value = serde_json::from_slice(&std::fs::read(store.join("index.json"))?)?;
        let newest = index["manifests"].as_array().and_then(|m| m.last()).context("no checkpoint in the store")?;
        let manifest: serde_json::Value = serde_json::from_slice(&blob(newest["digest"].as_str().context("digest")?)?)?;
        let layer = &manifest["layers"][0];
        ensure!(layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd", "layer {layer}");
        let compressed = blob(layer["digest"].as_str().context("layer digest")?)?;
        let tar = zstd::decode_all(&compressed[..])?;
        std::fs::create_dir_all(dest)?;
        tar::Archive::new(&tar[..]).unpack(dest)?;
        Ok(())
    }
}

/// Whether a `ps -o pid,args` listing has the TCP client of [`STATEFUL`] (the shell's own
/// command line mentions it too, hence the match at the start of the arguments).
fn has_client(ps: &str) -> bool {
    ps.lines().any(|line| {
        line.trim_start().split_once(' ').is_some_and(|(_, args)| args.trim_start().starts_with("nc 127.0.0.1 8080"))
    })
}

/// Runs `body`, then removes the pods it made, whatever its outcome.
async fn with_bed<F>(body: F) -> Result<()>
where
    F: for<'a> FnOnce(&'a mut Bed) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send + 'a>>,
{
    let _serial = lazarus_e2e::serial().await;
    let mut bed = Bed::new().await?;
    let outcome = body(&mut bed).await;
    bed.cleanup().await;
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_plan_the_wrapper_is_plain_runc() -> Result<()> {
    with_bed(|bed| {
        Box::pin(async move {
            let (pod_id, pod) = bed.run_pod("wrapped", HANDLER).await?;
            let id = bed.create(&pod_id, &pod, "plain", "echo hello; sleep 1000000").await?;
            bed.start(&id).await?;
            ensure!(bed.state(&id).await? == v1::ContainerState::ContainerRunning as i32, "not running");
            let (code, out) = bed.exec(&id, &["/bin/sh", "-c", "echo exec works"]).await?;
            ensure!(code == 0 && out == "exec works\n", "ExecSync: {code} {out:?}");
            // The container really runs under the wrapper's handler.
            let verbose = bed
                .cri
                .runtime
                .container_status(v1::ContainerStatusRequest { container_id: id.clone(), verbose: true })
                .await?
                .into_inner();
            let info = verbose.info.get("info").cloned().unwrap_or_default();
            ensure!(info.contains("lazarus-runc"), "the container's runtime options lack the wrapper: {info}");
            bed.cri.runtime.stop_container(v1::StopContainerRequest { container_id: id.clone(), timeout: 5 }).await?;
            let status = bed.cri.container_status(&id).await?;
            ensure!(status.state == v1::ContainerState::ContainerExited as i32, "not exited: {status:?}");
            bed.cri.runtime.remove_container(v1::RemoveContainerRequest { container_id: id.clone() }).await?;
            ensure!(
                !bed.plan_dir(&id).exists(),
                "the wrapper wrote into {} without a plan",
                bed.plan_dir(&id).display()
            );
            bed.remove_pod(&pod_id).await?;
            println!("passthrough: ran, exec'd, stopped and removed {id} through the wrapper");
            Ok(())
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_container_restores_from_a_checkpoint() -> Result<()> {
    with_bed(|bed| {
        Box::pin(async move {
            // A stateful container in a plain runc pod, checkpointed with lazarus.
            let (old_pod, pod) = bed.run_pod("wrapper-src", "").await?;
            let old = bed.create(&old_pod, &pod, "stateful", STATEFUL).await?;
            bed.start(&old).await?;
            let cri = bed.cri.clone();
            wait_for(Duration::from_secs(20), "the counter to reach 3", || {
                let mut cri = cri.clone();
                let old = old.clone();
                async move { cri.read_counter(&old).await.ok().filter(|n| *n >= 3) }
            })
            .await?;
            let (_, ps) = bed.exec(&old, &["ps", "-o", "pid,args"]).await?;
            ensure!(has_client(&ps), "no connected client before the checkpoint:\n{ps}");
            let before = bed.cri.read_counter(&old).await?;
            let reference = bed.checkpoint(&old)?;
            println!("checkpoint of {old} at count ≥ {before}: {reference}");
            let tree = bed.dir.path().join("tree");
            bed.unpack_checkpoint(&tree)?;
            ensure!(tree.join("checkpoint/inventory.img").is_file(), "no CRIU images unpacked");
            // The old container's processes must be gone before they are restored.
            bed.remove_pod(&old_pod).await?;

            // The same container in a new pod of the wrapper's handler, restored on start.
            let (new_pod, pod) = bed.run_pod("wrapper-dst", HANDLER).await?;
            let id = bed.create(&new_pod, &pod, "stateful", STATEFUL).await?;
            let plan_dir = bed.write_plan(&id, &reference, &tree)?;
            let started = std::time::Instant::now();
            if let Err(status) = bed.start(&id).await {
                let log = std::fs::read_to_string(plan_dir.join("work/restore.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                bail!("StartContainer failed: {status:?}\nrestore.log tail:\n{}", tail.join("\n"));
            }
            println!("StartContainer (restore) took {:?}", started.elapsed());
            ensure!(bed.state(&id).await? == v1::ContainerState::ContainerRunning as i32, "not running after restore");

            // Memory: the counter goes on from where it was, in the new pod's log.
            let log_path = bed.dir.path().join("pods/wrapper-dst/stateful/0.log");
            let log = wait_for(Duration::from_secs(20), "two counter lines in the new pod's log", || {
                let log_path = log_path.clone();
                async move {
                    std::fs::read_to_string(&log_path).ok().filter(|text| text.matches(" stdout F count ").count() >= 2)
                }
            })
            .await?;
            let counts: Vec<u64> =
                log.lines().filter_map(|line| line.split(" stdout F count ").nth(1)?.trim().parse().ok()).collect();
            ensure!(counts[0] >= before, "the restored counter started at {} (checkpointed at ≥ {before})", counts[0]);
            ensure!(counts.windows(2).all(|w| w[1] == w[0] + 1), "the counter does not count on: {counts:?}");
            println!("counter: ≥ {before} at the checkpoint, first restored log line count {}", counts[0]);
            let now = bed.cri.read_counter(&id).await?;
            ensure!(now >= counts[0], "/count {now} is behind the log");

            // The writable layer and the sockets.
            let (code, data) = bed.exec(&id, &["cat", "/data.txt"]).await?;
            ensure!(code == 0 && data == "stateful\n", "/data.txt: {code} {data:?}");
            let (code, _) = bed.exec(&id, &["test", "-e", "/bin/vi"]).await?;
            ensure!(code != 0, "/bin/vi, deleted before the checkpoint, is back");
            // busybox nc listens on `::` (dual stack): /proc/net/tcp6, state 0A = LISTEN.
            let (_, tcp) = bed.exec(&id, &["cat", "/proc/net/tcp", "/proc/net/tcp6"]).await?;
            let listening = tcp.lines().any(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                fields.len() > 3 && fields[1].ends_with(":1F90") && fields[3] == "0A"
            });
            let (_, ps) = bed.exec(&id, &["ps", "-o", "pid,args"]).await?;
            ensure!(listening, "no socket listening on port 8080 after the restore:\n{tcp}\n{ps}");
            // The established connection came back closed: its client sees the end and exits.
            let cri = bed.cri.clone();
            let ps = wait_for(Duration::from_secs(10), "the client of the closed connection to exit", || {
                let mut cri = cri.clone();
                let request = v1::ExecSyncRequest {
                    container_id: id.clone(),
                    cmd: vec!["ps".into(), "-o".into(), "pid,args".into()],
                    timeout: 10,
                };
                async move {
                    let reply = cri.runtime.exec_sync(request).await.ok()?.into_inner();
                    let ps = String::from_utf8_lossy(&reply.stdout).into_owned();
                    (!has_client(&ps)).then_some(ps)
                }
            })
            .await
            .with_context(|| format!("processes after the restore:\n{ps}"))?;
            print!("processes after the restore:\n{ps}");
            let restore_log = std::fs::read_to_string(plan_dir.join("work/restore.log"))?;
            ensure!(
                restore_log.contains("Will drop all TCP connections on restore"),
                "CRIU did not get tcp-close through org.criu.config"
            );
            println!("tcp-close reached CRIU through org.criu.config; port 8080 listens again");

            // What the wrapper left.
            let result: serde_json::Value = serde_json::from_slice(&std::fs::read(plan_dir.join("result.json"))?)?;
            ensure!(result["ok"] == true && result["error"] == "", "result.json: {result}");
            ensure!(plan_dir.join("restored").exists(), "no restored marker");
            let wrapper_log = std::fs::read_to_string(plan_dir.join("wrapper.log"))?;
            ensure!(
                wrapper_log.lines().count() == 2
                    && wrapper_log.contains("create: restored from ")
                    && wrapper_log.contains("start: the container was restored, runc start skipped"),
                "wrapper.log:\n{wrapper_log}"
            );
            print!("wrapper.log:\n{wrapper_log}");

            // The restored container is an ordinary one to containerd.
            // (sh as PID 1 ignores SIGTERM: the stop ends with SIGKILL after the timeout.)
            bed.cri.runtime.stop_container(v1::StopContainerRequest { container_id: id.clone(), timeout: 2 }).await?;
            let status = bed.cri.container_status(&id).await?;
            ensure!(status.state == v1::ContainerState::ContainerExited as i32, "not exited: {status:?}");
            println!("stopped: exit code {}", status.exit_code);
            bed.remove_pod(&new_pod).await?;
            std::fs::remove_dir_all(&plan_dir)?;
            Ok(())
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_restore_fails_start_container_with_criu_s_reason() -> Result<()> {
    with_bed(|bed| {
        Box::pin(async move {
            // A checkpoint whose CRIU images are garbage (runc needs descriptors.json to get
            // as far as CRIU).
            let tree = bed.dir.path().join("corrupt");
            std::fs::create_dir_all(tree.join("checkpoint"))?;
            std::fs::write(tree.join("checkpoint/descriptors.json"), r#"["/dev/null","pipe:[1]","pipe:[2]"]"#)?;
            std::fs::write(tree.join("checkpoint/inventory.img"), b"this is no CRIU image")?;

            let (pod_id, pod) = bed.run_pod("wrapper-fail", HANDLER).await?;
            let id = bed.create(&pod_id, &pod, "doomed", "sleep 1000000").await?;
            let plan_dir = bed.write_plan(&id, "local:corrupt", &tree)?;
            let status = match bed.start(&id).await {
                Ok(()) => bail!("StartContainer succeeded from a corrupt checkpoint"),
                Err(status) => status,
            };
            let message = status.message();
            println!("StartContainer: {:?}: {message}", status.code());
            ensure!(
                message.contains(&format!("lazarus: restoring container {id} from local:corrupt failed: ")),
                "{message}"
            );
            ensure!(
                message.contains("criu restore.log") && message.contains("Error (criu/"),
                "no CRIU log line: {message}"
            );
            let result: serde_json::Value = serde_json::from_slice(&std::fs::read(plan_dir.join("result.json"))?)?;
            ensure!(result["ok"] == false, "result.json: {result}");
            ensure!(result["restore_log"].as_array().is_some_and(|lines| !lines.is_empty()), "result.json: {result}");
            ensure!(!plan_dir.join("restored").exists(), "restored marker after a failure");
            ensure!(
                bed.state(&id).await? != v1::ContainerState::ContainerRunning as i32,
                "running after a failed restore"
            );
            bed.remove_pod(&pod_id).await?;
            std::fs::remove_dir_all(&plan_dir)?;
            Ok(())
        })
    })
    .await
}
