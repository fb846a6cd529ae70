//! kubelet's CRI call sequence through a real `lazarus serve` process in
//! front of the test bed's real containerd — every step compared with the
//! same call made directly to containerd.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use lazarus_e2e::{Cri, LazarusProcess, Testbed, container_config, ip_in_subnet, pod_config, wait_for};
use lazarus_proto::v1;
use tokio::sync::oneshot;

const POD: &str = "sequence";
const NAMESPACE: &str = "lazarus-e2e";
const COUNTER: &str =
    "trap 'echo terminated; exit 143' TERM; i=0; while true; do echo count $i; i=$((i+1)); sleep 1; done";

/// Watches GetContainerEvents in the background, as kubelet's evented PLEG
/// does. containerd sends the stream's response headers only with the first
/// event, so opening the stream must not block the caller.
struct EventWatch {
    stop: Option<oneshot::Sender<()>>,
    state: Arc<Mutex<WatchState>>,
}

#[derive(Default)]
struct WatchState {
    /// Set when the call failed (e.g. UNIMPLEMENTED on containerd 1.6).
    failed: Option<tonic::Status>,
    events: Vec<v1::ContainerEventResponse>,
}

impl EventWatch {
    fn start(cri: &Cri) -> EventWatch {
        let mut cri = cri.clone();
        let (stop, mut stopped) = oneshot::channel::<()>();
        let state = Arc::new(Mutex::new(WatchState::default()));
        let sink = state.clone();
        tokio::spawn(async move {
            let mut stream = tokio::select! {
                _ = &mut stopped => return,
                opened = cri.runtime.get_container_events(v1::GetEventsRequest {}) => match opened {
                    Ok(response) => response.into_inner(),
                    Err(status) => {
                        lock(&sink).failed = Some(status);
                        return;
                    }
                },
            };
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    next = stream.message() => match next {
                        Ok(Some(event)) => lock(&sink).events.push(event),
                        Ok(None) => break,
                        Err(status) => {
                            lock(&sink).failed = Some(status);
                            break;
                        }
                    },
                }
            }
        });
        EventWatch { stop: Some(stop), state }
    }

    /// The failure, or the event names seen so far for one container.
    fn outcome(&self, container_id: &str) -> Result<Vec<&'static str>, tonic::Status> {
        let state = lock(&self.state);
        if let Some(status) = &state.failed {
            return Err(status.clone());
        }
        Ok(state
            .events
            .iter()
            .filter(|e| e.container_id == container_id)
            .map(|e| event_name(e.container_event_type))
            .collect())
    }

    /// Waits until the call failed or all four lifecycle events of the
    /// container arrived; returns a normalized description.
    async fn settle(mut self, container_id: &str) -> Result<String> {
        const ALL: [&str; 4] = ["created", "started", "stopped", "deleted"];
        let outcome = wait_for(Duration::from_secs(15), "container events", || {
            let outcome = self.outcome(container_id);
            async move {
                match outcome {
                    Err(status) => Some(Err(status)),
                    Ok(seen) if ALL.iter().all(|e| seen.contains(e)) => Some(Ok(seen)),
                    Ok(_) => None,
                }
            }
        })
        .await
        .with_context(|| format!("GetContainerEvents: saw only {:?}", self.outcome(container_id)))?;
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match outcome {
            Err(status) => Ok(format!("{:?} {}", status.code(), status.message())),
            Ok(seen) => {
                ensure!(seen.first() == Some(&"created"), "events out of order: {seen:?}");
                Ok("created, started, stopped, deleted".to_owned())
            }
        }
    }
}

fn lock(state: &Mutex<WatchState>) -> std::sync::MutexGuard<'_, WatchState> {
    state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn event_name(t: i32) -> &'static str {
    match v1::ContainerEventType::try_from(t) {
        Ok(v1::ContainerEventType::ContainerCreatedEvent) => "created",
        Ok(v1::ContainerEventType::ContainerStartedEvent) => "started",
        Ok(v1::ContainerEventType::ContainerStoppedEvent) => "stopped",
        Ok(v1::ContainerEventType::ContainerDeletedEvent) => "deleted",
        Err(_) => "unknown",
    }
}

/// Runs kubelet's sequence against `cri`, cross-checking every read-only
/// answer with `direct` (containerd itself). Returns a transcript of
/// normalized outcomes (no ids or timestamps) to compare runs with.
async fn kubelet_sequence(cri: &mut Cri, direct: &mut Cri, bed: &Testbed, log_dir: &Path) -> Result<Vec<String>> {
    let mut transcript = Vec::new();
    let image = bed.workload_image()?.to_owned();

    // Version and Status, as kubelet asks at start-up.
    let version = cri.runtime.version(v1::VersionRequest { version: "0.1.0".into() }).await?.into_inner();
    let direct_version = direct.runtime.version(v1::VersionRequest { version: "0.1.0".into() }).await?.into_inner();
    ensure!(version == direct_version, "Version differs: {version:?} vs {direct_version:?}");
    transcript.push(format!(
        "Version: {} {} api {}",
        version.runtime_name, version.runtime_version, version.runtime_api_version
    ));

    let status = cri.runtime.status(v1::StatusRequest { verbose: false }).await?.into_inner();
    let direct_status = direct.runtime.status(v1::StatusRequest { verbose: false }).await?.into_inner();
    ensure!(status == direct_status, "Status differs: {status:?} vs {direct_status:?}");
    let conditions = status.status.context("Status without conditions")?.conditions;
    ensure!(conditions.iter().all(|c| c.status), "runtime not ready: {conditions:?}");
    transcript.push(format!(
        "Status: {}",
        conditions.iter().map(|c| format!("{}={}", c.r#type, c.status)).collect::<Vec<_>>().join(",")
    ));

    // The event stream kubelet's evented PLEG keeps open.
    let events = EventWatch::start(cri);
    let direct_events = EventWatch::start(direct);

    // Pod.
    let pod = pod_config(POD, NAMESPACE, log_dir, &[("example.com/note", "kubelet sequence")]);
    let pod_id = cri.run_pod(&pod).await?;
    let pod_status = cri
        .runtime
        .pod_sandbox_status(v1::PodSandboxStatusRequest { pod_sandbox_id: pod_id.clone(), verbose: false })
        .await?
        .into_inner();
    let direct_pod_status = direct
        .runtime
        .pod_sandbox_status(v1::PodSandboxStatusRequest { pod_sandbox_id: pod_id.clone(), verbose: false })
        .await?
        .into_inner();
    ensure!(pod_status == direct_pod_status, "PodSandboxStatus differs");
    let sandbox = pod_status.status.context("no sandbox status")?;
    let ip = sandbox.network.map(|n| n.ip).unwrap_or_default();
    let subnet = bed.cni_subnet()?;
    ensure!(ip_in_subnet(&ip, subnet), "pod IP {ip:?} is not in the CNI subnet {subnet}");
    transcript.push(format!(
        "RunPodSandbox: state={} ip in {subnet}",
        v1::PodSandboxState::try_from(sandbox.state).map(|s| s.as_str_name()).unwrap_or("?")
    ));

    // Image.
    let image_ref = cri.pull(&image, &pod).await?;
    ensure!(image_ref.starts_with("sha256:"), "PullImage image_ref {image_ref:?}");
    transcript.push(format!("PullImage: {image_ref}"));
    let image_spec = v1::ImageSpec { image: image.clone(), ..Default::default() };
    let image_status = cri
        .image
        .image_status(v1::ImageStatusRequest { image: Some(image_spec.clone()), verbose: false })
        .await?
        .into_inner();
    let direct_image_status = direct
        .image
        .image_status(v1::ImageStatusRequest { image: Some(image_spec), verbose: false })
        .await?
        .into_inner();
    ensure!(image_status == direct_image_status, "ImageStatus differs");
    let found = image_status.image.context("ImageStatus: image not found after pull")?;
    ensure!(found.repo_tags.contains(&image), "ImageStatus tags {:?}", found.repo_tags);
    ensure!(found.size > 0, "ImageStatus size 0");
    transcript.push(format!("ImageStatus: {} size>0", found.id));
    // containerd lists images in map order: compare them sorted.
    let mut images = cri.image.list_images(v1::ListImagesRequest { filter: None }).await?.into_inner();
    let mut direct_images = direct.image.list_images(v1::ListImagesRequest { filter: None }).await?.into_inner();
    images.images.sort_by(|a, b| a.id.cmp(&b.id));
    direct_images.images.sort_by(|a, b| a.id.cmp(&b.id));
    ensure!(images == direct_images, "ListImages differs");
    ensure!(images.images.iter().any(|i| i.id == found.id), "ListImages lacks the pulled image");
    transcript.push("ListImages: has the pulled image".into());

    // Container.
    let container_id = cri
        .create_container(&pod_id, container_config(&pod, "counter", &image, &["/bin/sh", "-c", COUNTER]), &pod)
        .await?;
    transcript.push("CreateContainer: ok".into());
    cri.runtime.start_container(v1::StartContainerRequest { container_id: container_id.clone() }).await?;
    transcript.push("StartContainer: ok".into());

    let container_status = |id: String| v1::ContainerStatusRequest { container_id: id, verbose: false };
    let status = cri.runtime.container_status(container_status(container_id.clone())).await?.into_inner();
    let direct_cstatus = direct.runtime.container_status(container_status(container_id.clone())).await?.into_inner();
    ensure!(status == direct_cstatus, "ContainerStatus differs");
    let cs = status.status.context("no container status")?;
    ensure!(cs.state == v1::ContainerState::ContainerRunning as i32, "container not running: {cs:?}");
    transcript.push(format!(
        "ContainerStatus: RUNNING name={} image={}",
        cs.metadata.map(|m| m.name).unwrap_or_default(),
        cs.image.map(|i| i.image).unwrap_or_default()
    ));

    let filter = v1::ContainerFilter { pod_sandbox_id: pod_id.clone(), ..Default::default() };
    let listed =
        cri.runtime.list_containers(v1::ListContainersRequest { filter: Some(filter.clone()) }).await?.into_inner();
    let direct_listed =
        direct.runtime.list_containers(v1::ListContainersRequest { filter: Some(filter) }).await?.into_inner();
    ensure!(listed == direct_listed, "ListContainers differs");
    ensure!(listed.containers.len() == 1 && listed.containers[0].id == container_id, "ListContainers: {listed:?}");
    transcript.push("ListContainers: 1".into());

    let exec = cri
        .runtime
        .exec_sync(v1::ExecSyncRequest {
            container_id: container_id.clone(),
            cmd: vec![
                "/bin/sh".into(),
                "-c".into(),
                "echo hello from $(hostname); cat /proc/1/cmdline | head -c 7".into(),
            ],
            timeout: 10,
        })
        .await?
        .into_inner();
    let stdout = String::from_utf8_lossy(&exec.stdout).into_owned();
    ensure!(exec.exit_code == 0, "ExecSync exit {} stderr {:?}", exec.exit_code, String::from_utf8_lossy(&exec.stderr));
    ensure!(stdout.starts_with(&format!("hello from {POD}\n/bin/sh")), "ExecSync stdout {stdout:?}");
    transcript.push(format!("ExecSync: exit 0 stdout {stdout:?}"));

    // Logs, in the CRI log format, where kubelet reads them.
    let log_path = log_dir.join("counter/0.log");
    let log = wait_for(Duration::from_secs(20), &format!("counter log lines in {}", log_path.display()), || {
        let log_path = log_path.clone();
        async move { std::fs::read_to_string(&log_path).ok().filter(|t| t.contains(" stdout F count 2\n")) }
    })
    .await?;
    ensure!(log.lines().next().is_some_and(|l| l.ends_with(" stdout F count 0")), "first log line: {log:?}");
    transcript.push("logs: count 0, 1, 2 in CRI format".into());

    // Stop and clean up, as kubelet does when a pod is deleted.
    cri.runtime.stop_container(v1::StopContainerRequest { container_id: container_id.clone(), timeout: 10 }).await?;
    let stopped = cri.runtime.container_status(container_status(container_id.clone())).await?.into_inner();
    let stopped_direct = direct.runtime.container_status(container_status(container_id.clone())).await?.into_inner();
    ensure!(stopped == stopped_direct, "ContainerStatus after stop differs");
    let stopped = stopped.status.context("no status")?;
    ensure!(stopped.state == v1::ContainerState::ContainerExited as i32, "not exited: {stopped:?}");
    transcript.push(format!("StopContainer: EXITED code {}", stopped.exit_code));
    cri.runtime.remove_container(v1::RemoveContainerRequest { container_id: container_id.clone() }).await?;
    transcript.push("RemoveContainer: ok".into());

    let through = events.settle(&container_id).await?;
    let reference = direct_events.settle(&container_id).await?;
    ensure!(through == reference, "GetContainerEvents: {through:?} through lazarus, {reference:?} direct");
    transcript.push(format!("GetContainerEvents: {through}"));

    cri.runtime.stop_pod_sandbox(v1::StopPodSandboxRequest { pod_sandbox_id: pod_id.clone() }).await?;
    cri.runtime.remove_pod_sandbox(v1::RemovePodSandboxRequest { pod_sandbox_id: pod_id.clone() }).await?;
    let left = direct.runtime.list_pod_sandbox(v1::ListPodSandboxRequest { filter: None }).await?.into_inner();
    ensure!(left.items.iter().all(|p| p.id != pod_id), "pod still listed after RemovePodSandbox");
    transcript.push("StopPodSandbox, RemovePodSandbox: gone".into());
    Ok(transcript)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_sequence_through_lazarus_matches_containerd() -> Result<()> {
    let _serial = lazarus_e2e::serial().await;
    let bed = Testbed::load()?;
    let dir = tempfile::tempdir()?;
    let containerd = bed.containerd_socket()?;
    let lazarus = LazarusProcess::start(dir.path(), &dir.path().join("lazarus.sock"), &containerd)?;
    let mut proxied = Cri::connect(&lazarus.socket)?;
    let mut direct = Cri::connect(&containerd)?;
    direct.sweep_test_pods().await?;

    let proxied_logs = dir.path().join("pods/proxied");
    let through_proxy = kubelet_sequence(&mut proxied, &mut direct.clone(), &bed, &proxied_logs)
        .await
        .with_context(|| format!("through lazarus; its log:\n{}", lazarus.log_text()))?;
    let direct_logs = dir.path().join("pods/direct");
    let mut reference = direct.clone();
    let straight = kubelet_sequence(&mut reference, &mut direct, &bed, &direct_logs).await.context("direct")?;
    for line in &through_proxy {
        println!("{line}");
    }
    assert_eq!(through_proxy, straight, "the sequence through lazarus differs from containerd's own");

    let exit = lazarus.terminate()?;
    assert!(exit.success(), "lazarus exit status {exit}");
    Ok(())
}

/// Methods newer than lazarus's vendored api.proto (cri-api 0.33+) and
/// methods no CRI has: forwarded untouched, so the answer through lazarus is
/// containerd's own, byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_newer_than_the_vendored_proto_reach_containerd() -> Result<()> {
    let _serial = lazarus_e2e::serial().await;
    let bed = Testbed::load()?;
    let dir = tempfile::tempdir()?;
    let containerd = bed.containerd_socket()?;
    let lazarus = LazarusProcess::start(dir.path(), &dir.path().join("lazarus.sock"), &containerd)?;
    let proxied = lazarus_e2e::channel(&lazarus.socket)?;
    let direct = lazarus_e2e::channel(&containerd)?;
    // An empty message is a valid encoding of every request type.
    let empty = bytes::Bytes::from_static(&[0, 0, 0, 0, 0]);
    for path in [
        "/runtime.v1.RuntimeService/UpdatePodSandboxResources",
        "/runtime.v1.RuntimeService/StreamPodSandboxes",
        "/runtime.v1.RuntimeService/StreamContainers",
        "/runtime.v1.ImageService/StreamImages",
        "/runtime.v1.RuntimeService/ListMetricDescriptors",
        "/runtime.v1.RuntimeService/NoSuchMethod",
    ] {
        let through = lazarus_e2e::raw_unary(&proxied, path, empty.clone()).await?;
        let reference = lazarus_e2e::raw_unary(&direct, path, empty.clone()).await?;
        println!("{path}: {:?} {:?}", through.code, through.message);
        assert_eq!(through, reference, "{path}");
        assert!(!through.message.contains("lazarus"), "{path}: answered by lazarus, not containerd");
    }
    lazarus.terminate()?;
    Ok(())
}
