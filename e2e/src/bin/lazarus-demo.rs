//! The README demo's client: runs a counter pod through a lazarus socket the
//! way kubelet would, and shows what the runtime reports.
//!
//! `lazarus-demo --socket /run/lazarus-demo/cri.sock` (test bed must be up).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use lazarus_e2e::{Cri, Testbed, container_config, pod_config, wait_for};
use lazarus_proto::v1;

const COUNTER: &str = "trap 'exit 143' TERM; i=0; while true; do echo \"count $i\"; i=$((i+1)); sleep 1; done";

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let socket = args
        .iter()
        .position(|a| a == "--socket")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .context("usage: lazarus-demo --socket PATH")?;
    let bed = Testbed::load()?;
    let mut cri = Cri::connect(&socket)?;
    cri.sweep_test_pods().await?;

    let version = cri.runtime.version(v1::VersionRequest { version: "0.1.0".into() }).await?.into_inner();
    println!(
        "runtime behind {}: {} {} (CRI {})",
        socket.display(),
        version.runtime_name,
        version.runtime_version,
        version.runtime_api_version
    );

    let log_dir = PathBuf::from("/var/log/lazarus-demo/pods/counter");
    // A fresh log per run (kubelet gives every pod its own directory).
    let _ = std::fs::remove_dir_all(&log_dir);
    // Annotated as a user would: checkpoint before every stop, keep 3.
    let pod = pod_config(
        "counter",
        "demo",
        &log_dir,
        &[("lazarus.dev/checkpoint-on-stop", "true"), ("lazarus.dev/checkpoint-keep", "3")],
    );
    let pod_id = cri.run_pod(&pod).await?;
    let image = bed.workload_image()?.to_owned();
    cri.pull(&image, &pod).await?;
    let config = container_config(&pod, "counter", &image, &["/bin/sh", "-c", COUNTER]);
    let container_id = cri.create_container(&pod_id, config, &pod).await?;
    cri.runtime.start_container(v1::StartContainerRequest { container_id: container_id.clone() }).await?;

    let sandbox = cri
        .runtime
        .pod_sandbox_status(v1::PodSandboxStatusRequest { pod_sandbox_id: pod_id.clone(), verbose: false })
        .await?
        .into_inner()
        .status
        .context("no pod status")?;
    let ip = sandbox.network.map(|n| n.ip).unwrap_or_default();
    println!("pod demo/counter {} — IP {ip}", &pod_id[..12]);

    let log_path = log_dir.join("counter/0.log");
    let log = wait_for(Duration::from_secs(20), "three log lines", || {
        let log_path = log_path.clone();
        async move { std::fs::read_to_string(&log_path).ok().filter(|t| t.lines().count() >= 3) }
    })
    .await?;
    let status = cri.container_status(&container_id).await?;
    println!(
        "container counter {} — {}",
        &container_id[..12],
        v1::ContainerState::try_from(status.state).map(|s| s.as_str_name()).unwrap_or("?")
    );
    println!("its log ({}):", log_path.display());
    for line in log.lines() {
        println!("    {line}");
    }
    let exec = cri
        .runtime
        .exec_sync(v1::ExecSyncRequest {
            container_id: container_id.clone(),
            cmd: vec![
                "/bin/sh".into(),
                "-c".into(),
                "echo \"hello from $(hostname), pid 1 is $(cat /proc/1/comm)\"".into(),
            ],
            timeout: 10,
        })
        .await?
        .into_inner();
    ensure!(exec.exit_code == 0, "exec failed: {}", String::from_utf8_lossy(&exec.stderr));
    print!("exec: {}", String::from_utf8_lossy(&exec.stdout));

    cri.runtime.stop_container(v1::StopContainerRequest { container_id: container_id.clone(), timeout: 10 }).await?;
    let stopped = cri.container_status(&container_id).await?;
    println!(
        "stopped: exit code {} — lazarus checkpointed it first (lazarus.dev/checkpoint-on-stop: \"true\")",
        stopped.exit_code
    );
    let last = std::fs::read_to_string(&log_path).ok().and_then(|t| t.lines().filter_map(count_of).max());
    cri.runtime.remove_container(v1::RemoveContainerRequest { container_id }).await?;
    cri.runtime.stop_pod_sandbox(v1::StopPodSandboxRequest { pod_sandbox_id: pod_id.clone() }).await?;
    cri.runtime.remove_pod_sandbox(v1::RemovePodSandboxRequest { pod_sandbox_id: pod_id }).await?;
    println!("pod removed (its last count was {})", last.map_or("?".into(), |n| n.to_string()));

    // The pod comes back — on a node, this is the pod re-created after a drain
    // or a node loss — annotated to restore its latest checkpoint.
    println!();
    println!("a new pod demo/counter, annotated lazarus.dev/restore-from: latest");
    let log_dir = PathBuf::from("/var/log/lazarus-demo/pods/counter-restored");
    let _ = std::fs::remove_dir_all(&log_dir);
    let pod = pod_config(
        "counter",
        "demo",
        &log_dir,
        &[
            ("lazarus.dev/restore-from", "latest"),
            ("lazarus.dev/checkpoint-on-stop", "true"),
            ("lazarus.dev/checkpoint-keep", "3"),
        ],
    );
    let pod_id = cri.run_pod(&pod).await?;
    let sandbox = cri
        .runtime
        .pod_sandbox_status(v1::PodSandboxStatusRequest { pod_sandbox_id: pod_id.clone(), verbose: false })
        .await?
        .into_inner()
        .status
        .context("no pod status")?;
    println!(
        "pod demo/counter {} — IP {}, runtime handler {:?} (set by lazarus)",
        &pod_id[..12],
        sandbox.network.map(|n| n.ip).unwrap_or_default(),
        sandbox.runtime_handler
    );
    let config = container_config(&pod, "counter", &image, &["/bin/sh", "-c", COUNTER]);
    let container_id = cri.create_container(&pod_id, config, &pod).await?;
    cri.runtime.start_container(v1::StartContainerRequest { container_id: container_id.clone() }).await?;
    let log_path = log_dir.join("counter/0.log");
    let log = wait_for(Duration::from_secs(20), "three log lines from the restored container", || {
        let log_path = log_path.clone();
        async move { std::fs::read_to_string(&log_path).ok().filter(|t| t.lines().count() >= 3) }
    })
    .await?;
    let status = cri.container_status(&container_id).await?;
    println!(
        "container counter {} — {}, restored from its checkpoint",
        &container_id[..12],
        v1::ContainerState::try_from(status.state).map(|s| s.as_str_name()).unwrap_or("?")
    );
    println!("its log in the new pod ({}):", log_path.display());
    for line in log.lines() {
        println!("    {line}");
    }
    let first = log.lines().find_map(count_of);
    ensure!(
        first.is_some_and(|n| n > 0),
        "the restored counter started from {first:?}; it should count on from the checkpoint"
    );
    println!("it counts on from {} instead of starting at 0", first.unwrap_or_default());
    cri.runtime.stop_container(v1::StopContainerRequest { container_id: container_id.clone(), timeout: 10 }).await?;
    cri.runtime.remove_container(v1::RemoveContainerRequest { container_id }).await?;
    cri.runtime.stop_pod_sandbox(v1::StopPodSandboxRequest { pod_sandbox_id: pod_id.clone() }).await?;
    cri.runtime.remove_pod_sandbox(v1::RemovePodSandboxRequest { pod_sandbox_id: pod_id }).await?;
    println!("pod removed; every call above went through lazarus");
    Ok(())
}

/// The number of a `count N` line of a CRI log file.
fn count_of(line: &str) -> Option<u64> {
    line.rsplit_once("count ").and_then(|(_, n)| n.trim().parse().ok())
}
