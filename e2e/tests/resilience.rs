//! lazarus when its neighbours come and go: containerd restarted under a
//! running proxy, and the proxy itself restarted (cleanly and by SIGKILL)
//! under connected clients. Real containerd from the test bed.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use lazarus_e2e::{Cri, LazarusProcess, Testbed, pod_config, wait_for};
use lazarus_proto::v1;

async fn run_pod(cri: &mut Cri, name: &str, log_dir: &std::path::Path) -> Result<String> {
    cri.run_pod(&pod_config(name, "lazarus-e2e", log_dir, &[])).await
}

async fn pod_ids(cri: &mut Cri) -> Result<Vec<String>, tonic::Status> {
    Ok(cri
        .runtime
        .list_pod_sandbox(v1::ListPodSandboxRequest { filter: None })
        .await?
        .into_inner()
        .items
        .into_iter()
        .map(|p| p.id)
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_restart_gives_unavailable_then_service_resumes() -> Result<()> {
    let _serial = lazarus_e2e::serial().await;
    let bed = Testbed::load()?;
    let dir = tempfile::tempdir()?;
    let containerd = bed.containerd_socket()?;
    let mut lazarus = LazarusProcess::start(dir.path(), &dir.path().join("lazarus.sock"), &containerd)?;
    let mut cri = Cri::connect(&lazarus.socket)?;
    cri.sweep_test_pods().await?;
    let pod_id = run_pod(&mut cri, "survivor", &dir.path().join("pods")).await?;

    bed.control("containerd-stop")?;
    let result = async {
        for _ in 0..3 {
            let status = pod_ids(&mut cri).await.expect_err("ListPodSandbox must fail while containerd is down");
            ensure!(status.code() == tonic::Code::Unavailable, "ListPodSandbox while down: {status:?}");
            ensure!(
                status.message().contains(&*containerd.to_string_lossy()),
                "the error must name the upstream: {status:?}"
            );
        }
        let status = cri
            .runtime
            .version(v1::VersionRequest { version: "0.1.0".into() })
            .await
            .expect_err("Version must fail while containerd is down");
        ensure!(status.code() == tonic::Code::Unavailable, "Version while down: {status:?}");
        println!("while containerd is down: {:?} {}", status.code(), status.message());
        Ok(())
    }
    .await;
    bed.control("containerd-start")?;
    result?;

    let mut failures_after_restart = 0;
    let ids = wait_for(Duration::from_secs(30), "ListPodSandbox through lazarus after the restart", || {
        let mut cri = cri.clone();
        failures_after_restart += 1;
        async move { pod_ids(&mut cri).await.ok() }
    })
    .await?;
    println!("calls until served again: {failures_after_restart}");
    ensure!(ids.contains(&pod_id), "the pod made before the restart is listed again");
    ensure!(lazarus.is_running(), "lazarus kept running through the containerd restart");
    cri.sweep_test_pods().await?;
    let exit = lazarus.terminate()?;
    ensure!(exit.success(), "lazarus exit {exit}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_reconnect_to_a_restarted_proxy_and_see_the_same_pods() -> Result<()> {
    let _serial = lazarus_e2e::serial().await;
    let bed = Testbed::load()?;
    let dir = tempfile::tempdir()?;
    let containerd = bed.containerd_socket()?;
    let socket = dir.path().join("lazarus.sock");
    let first = LazarusProcess::start(dir.path(), &socket, &containerd)?;
    // One client for the whole test, as kubelet keeps one connection.
    let mut cri = Cri::connect(&socket)?;
    cri.sweep_test_pods().await?;
    let pod_id = run_pod(&mut cri, "steady", &dir.path().join("pods")).await?;

    // A clean stop: exit 0, socket gone.
    let exit = first.terminate()?;
    ensure!(exit.success(), "SIGTERM exit status {exit}");
    ensure!(!socket.exists(), "socket removed on SIGTERM");
    ensure!(pod_ids(&mut cri).await.is_err(), "no answer while no proxy runs");

    let second = LazarusProcess::start(dir.path(), &socket, &containerd)?;
    let ids = wait_for(Duration::from_secs(20), "the client to reconnect", || {
        let mut cri = cri.clone();
        async move { pod_ids(&mut cri).await.ok() }
    })
    .await?;
    ensure!(ids.contains(&pod_id), "same pods after a proxy restart");

    // A second proxy on a live socket is refused with a clear message.
    let refused = std::process::Command::new(lazarus_e2e::lazarus_bin()?)
        .args(["serve", "--listen"])
        .arg(&socket)
        .arg("--upstream")
        .arg(format!("unix://{}", containerd.display()))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--run-dir")
        .arg(dir.path().join("run"))
        .output()
        .context("running a second lazarus")?;
    ensure!(!refused.status.success(), "a second lazarus on a live socket must fail");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    ensure!(stderr.contains("in use"), "second lazarus stderr: {stderr}");

    // A crash leaves a stale socket file; the next start replaces it.
    second.kill()?;
    ensure!(socket.exists(), "SIGKILL leaves the socket file behind");
    let third = LazarusProcess::start(dir.path(), &socket, &containerd)?;
    let ids = wait_for(Duration::from_secs(20), "the client to reconnect after a crash", || {
        let mut cri = cri.clone();
        async move { pod_ids(&mut cri).await.ok() }
    })
    .await?;
    ensure!(ids.contains(&pod_id), "same pods after a proxy crash and restart");
    cri.sweep_test_pods().await?;
    third.terminate()?;
    Ok(())
}
