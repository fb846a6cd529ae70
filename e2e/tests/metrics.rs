//! The operability endpoint of a real `lazarus serve` (`metrics_listen`) in
//! front of the test bed's containerd: CRI calls, a checkpoint on stop, a
//! restore and a refused restore move the counters with the right labels;
//! the scraped text passes a real `promtool check metrics` (Debian's
//! `prometheus` package); `/healthz` and `/readyz` answer, and `/readyz` says
//! 503 while containerd is stopped. `lazarus version` reports the runtime and
//! CRIU.
//!
//! Scraped with a plain HTTP/1.1 GET over a TCP socket, independently of
//! lazarus's code.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail, ensure};
use lazarus_e2e::{Cri, E2E_LABEL, LazarusProcess, Testbed, container_config, pod_config, wait_for};
use lazarus_proto::v1;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A namespace of its own: this test sweeps only its own pods.
const NAMESPACE: &str = "lazarus-e2e-metrics";
const CONTAINER: &str = "app";
const COUNTER: &str = "i=0; while true; do echo $i > /count; i=$((i+1)); sleep 1; done";

/// An HTTP answer: status, content type, body.
struct Answer {
    status: u16,
    content_type: String,
    body: String,
}

/// `GET path` on `address` with a plain socket.
async fn get(address: &str, path: &str, accept: Option<&str>) -> Result<Answer> {
    let mut stream =
        tokio::net::TcpStream::connect(address).await.with_context(|| format!("connecting to {address}"))?;
    let accept = accept.map(|a| format!("Accept: {a}\r\n")).unwrap_or_default();
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: {address}\r\n{accept}Connection: close\r\n\r\n").as_bytes())
        .await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .context("reading the answer")??;
    let text = String::from_utf8(raw)?;
    let (head, body) = text.split_once("\r\n\r\n").context("no end of headers")?;
    let status = head.split(' ').nth(1).context("no status")?.parse()?;
    let content_type = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-type")).map(|(_, v)| v.trim()))
        .unwrap_or_default()
        .to_owned();
    ensure!(!head.to_ascii_lowercase().contains("transfer-encoding: chunked"), "unexpected chunked answer");
    Ok(Answer { status, content_type, body: body.to_owned() })
}

/// `name{labels}` → value of every sample in Prometheus text.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' ').and_then(|(k, v)| Some((k.to_owned(), v.parse().ok()?))))
        .collect()
}

fn value(samples: &HashMap<String, f64>, key: &str) -> Result<f64> {
    samples.get(key).copied().with_context(|| {
        let mut near: Vec<&String> =
            samples.keys().filter(|k| k.starts_with(key.split('{').next().unwrap_or(key))).collect();
        near.sort();
        format!("no sample {key}; that family has: {near:?}")
    })
}

/// Runs `promtool check metrics` on `text`.
fn promtool_check(text: &str) -> Result<()> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running promtool (Debian's prometheus package; e2e/testbed/testbed.sh up installs it)")?;
    std::io::Write::write_all(child.stdin.as_mut().context("promtool stdin")?, text.as_bytes())?;
    drop(child.stdin.take());
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "promtool check metrics failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// `lazarus version` against `upstream`: (exit success, stdout).
fn lazarus_version(upstream: &std::path::Path) -> Result<(bool, String)> {
    let out = Command::new(lazarus_e2e::lazarus_bin()?)
        .args(["version", "--upstream"])
        .arg(format!("unix://{}", upstream.display()))
        .output()?;
    Ok((out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// Stops and removes this test's pods (and no one else's).
async fn sweep(cri: &mut Cri) -> Result<()> {
    let filter = v1::PodSandboxFilter {
        label_selector: [
            (E2E_LABEL.to_owned(), "true".to_owned()),
            ("io.kubernetes.pod.namespace".to_owned(), NAMESPACE.to_owned()),
        ]
        .into(),
        ..Default::default()
    };
    let pods = cri.runtime.list_pod_sandbox(v1::ListPodSandboxRequest { filter: Some(filter) }).await?.into_inner();
    for pod in pods.items {
        cri.runtime.stop_pod_sandbox(v1::StopPodSandboxRequest { pod_sandbox_id: pod.id.clone() }).await?;
        cri.runtime.remove_pod_sandbox(v1::RemovePodSandboxRequest { pod_sandbox_id: pod.id }).await?;
    }
    Ok(())
}

/// A pod with one counting container, started; returns (pod id, container id).
async fn counting_pod(cri: &mut Cri, pod: &v1::PodSandboxConfig, image: &str) -> Result<(String, String)> {
    std::fs::create_dir_all(&pod.log_directory)?;
    let pod_id = cri.run_pod(pod).await?;
    cri.pull(image, pod).await?;
    let id = cri
        .create_container(&pod_id, container_config(pod, CONTAINER, image, &["/bin/sh", "-c", COUNTER]), pod)
        .await?;
    cri.runtime.start_container(v1::StartContainerRequest { container_id: id.clone() }).await?;
    let counting = cri.clone();
    wait_for(Duration::from_secs(30), "the counter to reach 2", || {
        let mut cri = counting.clone();
        let id = id.clone();
        async move { cri.read_counter(&id).await.ok().filter(|n| *n >= 2) }
    })
    .await?;
    Ok((pod_id, id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_version_of_a_running_daemon() -> Result<()> {
    let _serial = lazarus_e2e::serial().await;
    let bed = Testbed::load()?;
    lazarus_e2e::install_runc_wrapper()?;
    let containerd = bed.containerd_socket()?;
    let image = bed.workload_image()?.to_owned();
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let address = format!("127.0.0.1:{port}");
    let config = format!("metrics_listen = {address:?}\nrestore_dir = {:?}\n", bed.var("LAZARUS_RESTORE_DIR")?);
    let lazarus =
        LazarusProcess::start_with_config(dir.path(), &dir.path().join("cri.sock"), &containerd, Some(&config))?;
    let mut cri = Cri::connect(&lazarus.socket)?;
    sweep(&mut cri).await?;

    let result = exercise(&bed, &lazarus, &mut cri, &address, &image, dir.path()).await;
    let swept = sweep(&mut cri).await;
    result.with_context(|| format!("lazarus log:\n{}", lazarus.log_text()))?;
    swept?;
    let exit = lazarus.terminate()?;
    ensure!(exit.success(), "lazarus exit {exit}");
    Ok(())
}

async fn exercise(
    bed: &Testbed,
    lazarus: &LazarusProcess,
    cri: &mut Cri,
    address: &str,
    image: &str,
    dir: &std::path::Path,
) -> Result<()> {
    let containerd = bed.containerd_socket()?;
    let health = get(address, "/healthz", None).await?;
    ensure!(health.status == 200 && health.body == "ok\n", "/healthz: {} {:?}", health.status, health.body);
    let ready = get(address, "/readyz", None).await?;
    ensure!(ready.status == 200 && ready.body.contains("containerd"), "/readyz: {} {:?}", ready.status, ready.body);
    println!("/readyz: {}", ready.body.trim());

    // CRI calls: two Versions, one NOT_FOUND.
    for _ in 0..2 {
        cri.runtime.version(v1::VersionRequest { version: "0.1.0".into() }).await?;
    }
    let missing = cri
        .runtime
        .container_status(v1::ContainerStatusRequest { container_id: "no-such-container".into(), verbose: false })
        .await
        .expect_err("ContainerStatus of a missing container");
    ensure!(missing.code() == tonic::Code::NotFound, "{missing:?}");

    // A checkpoint on stop, through the daemon.
    let pod =
        pod_config("metered", NAMESPACE, &dir.join("pods/metered"), &[("lazarus.dev/checkpoint-on-stop", "true")]);
    let (pod_id, id) = counting_pod(cri, &pod, image).await?;
    cri.runtime.stop_container(v1::StopContainerRequest { container_id: id.clone(), timeout: 30 }).await?;
    cri.runtime.stop_pod_sandbox(v1::StopPodSandboxRequest { pod_sandbox_id: pod_id.clone() }).await?;
    cri.runtime.remove_pod_sandbox(v1::RemovePodSandboxRequest { pod_sandbox_id: pod_id }).await?;

    // Restored from it: same pod name, restore-from latest.
    let back = pod_config("metered", NAMESPACE, &dir.join("pods/back"), &[("lazarus.dev/restore-from", "latest")]);
    std::fs::create_dir_all(&back.log_directory)?;
    let back_id = cri.run_pod(&back).await?;
    let restored = cri
        .create_container(&back_id, container_config(&back, CONTAINER, image, &["/bin/sh", "-c", COUNTER]), &back)
        .await?;
    cri.runtime.start_container(v1::StartContainerRequest { container_id: restored.clone() }).await?;
    let counter = cri.read_counter(&restored).await?;
    ensure!(counter >= 2, "the restored counter starts at {counter}: not restored");

    // A refused restore: the pod chose the plain runc handler, so nothing could restore.
    let refused_pod = pod_config(
        "refused",
        NAMESPACE,
        &dir.join("pods/refused"),
        &[("lazarus.dev/restore-from", "local:lazarus-e2e-metrics/refused/app:20260101T000000.000Z")],
    );
    let refused_id = cri
        .runtime
        .run_pod_sandbox(v1::RunPodSandboxRequest { config: Some(refused_pod.clone()), runtime_handler: "runc".into() })
        .await?
        .into_inner()
        .pod_sandbox_id;
    let status = cri
        .create_container(&refused_id, container_config(&refused_pod, CONTAINER, image, &["/bin/true"]), &refused_pod)
        .await
        .expect_err("a restore on the runc handler is refused");
    ensure!(format!("{status:#}").contains("runtime handler"), "{status:#}");

    // The scrape, in the Prometheus text format (what curl and promtool get).
    let scraped = get(address, "/metrics", None).await?;
    ensure!(scraped.status == 200, "/metrics: {}", scraped.status);
    ensure!(scraped.content_type == "text/plain; version=0.0.4; charset=utf-8", "{}", scraped.content_type);
    let text = scraped.body;
    promtool_check(&text)?;
    println!("promtool check metrics: ok ({} lines)", text.lines().count());
    let s = samples(&text);
    let at_least = |key: &str, min: f64| -> Result<f64> {
        let v = value(&s, key)?;
        ensure!(v >= min, "{key} = {v}, expected at least {min}");
        Ok(v)
    };
    at_least(r#"lazarus_cri_requests_total{method="Version",code="OK"}"#, 2.0)?;
    at_least(r#"lazarus_cri_requests_total{method="ContainerStatus",code="NOT_FOUND"}"#, 1.0)?;
    at_least(r#"lazarus_cri_requests_total{method="StopContainer",code="OK"}"#, 1.0)?;
    at_least(r#"lazarus_cri_requests_total{method="RunPodSandbox",code="OK"}"#, 3.0)?;
    at_least(r#"lazarus_cri_requests_total{method="CreateContainer",code="FAILED_PRECONDITION"}"#, 1.0)?;
    at_least(r#"lazarus_cri_requests_total{method="ExecSync",code="OK"}"#, 1.0)?;
    at_least(r#"lazarus_cri_request_duration_seconds_count{method="Version"}"#, 2.0)?;
    at_least(r#"lazarus_cri_request_duration_seconds_bucket{le="+Inf",method="Version"}"#, 2.0)?;
    ensure!(value(&s, r#"lazarus_checkpoints_total{trigger="stop",result="ok"}"#)? == 1.0, "one checkpoint on stop");
    ensure!(value(&s, r#"lazarus_checkpoints_total{trigger="stop",result="failed"}"#)? == 0.0, "no failed one");
    ensure!(value(&s, "lazarus_checkpoint_duration_seconds_count")? == 1.0, "checkpoint duration observed");
    ensure!(value(&s, "lazarus_checkpoint_frozen_seconds_count")? == 1.0, "CRIU frozen time observed");
    at_least("lazarus_checkpoint_bytes_total", 1.0)?;
    at_least("lazarus_store_size_bytes", 1.0)?;
    let last = value(
        &s,
        &format!(
            r#"lazarus_last_successful_checkpoint_timestamp_seconds{{namespace="{NAMESPACE}",pod="metered",container="{CONTAINER}"}}"#
        ),
    )?;
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH)?.as_secs_f64();
    ensure!(now - last < 300.0 && last <= now + 1.0, "last checkpoint at {last}, now {now}");
    ensure!(value(&s, r#"lazarus_restores_total{result="restored"}"#)? == 1.0, "one restore");
    ensure!(value(&s, r#"lazarus_restores_total{result="failed"}"#)? == 1.0, "one refused restore");
    ensure!(value(&s, r#"lazarus_restore_failures_total{reason="handler"}"#)? == 1.0, "refused for the handler");
    ensure!(value(&s, "lazarus_restore_duration_seconds_count")? == 1.0, "restore preparation observed");
    at_least("lazarus_restore_bytes_total", 1.0)?;

    // OpenMetrics for scrapers that ask (Prometheus does).
    let om = get(address, "/metrics", Some("application/openmetrics-text;version=1.0.0,text/plain;q=0.5")).await?;
    ensure!(
        om.content_type == "application/openmetrics-text; version=1.0.0; charset=utf-8",
        "OpenMetrics content type: {}",
        om.content_type
    );
    ensure!(om.body.ends_with("# EOF\n") && om.body.contains("# TYPE lazarus_cri_requests counter"), "{}", om.body);

    // `lazarus version`.
    let (ok, printed) = lazarus_version(&containerd)?;
    println!("lazarus version:\n{printed}");
    ensure!(ok, "lazarus version failed:\n{printed}");
    ensure!(printed.starts_with("lazarus "), "{printed}");
    ensure!(printed.contains("runtime: containerd "), "no runtime version:\n{printed}");
    ensure!(printed.lines().any(|l| l.starts_with("criu: /") && l.contains(" 4.")), "no CRIU version:\n{printed}");
    ensure!(printed.contains("criu check: ok"), "criu check:\n{printed}");

    // containerd down: not ready (healthy still), calls UNAVAILABLE; back up: ready.
    bed.control("containerd-stop")?;
    let down = async {
        let ready = get(address, "/readyz", None).await?;
        ensure!(ready.status == 503, "/readyz with containerd stopped: {} {:?}", ready.status, ready.body);
        ensure!(ready.body.contains(&*containerd.to_string_lossy()), "/readyz names the upstream: {:?}", ready.body);
        println!("/readyz while containerd is down: {}", ready.body.trim());
        ensure!(get(address, "/healthz", None).await?.status == 200, "/healthz while containerd is down");
        let status = cri.runtime.list_pod_sandbox(v1::ListPodSandboxRequest { filter: None }).await.expect_err("down");
        ensure!(status.code() == tonic::Code::Unavailable, "{status:?}");
        let (ok, printed) = lazarus_version(&containerd)?;
        ensure!(!ok && printed.contains("is unavailable"), "lazarus version while containerd is down:\n{printed}");
        let s = samples(&get(address, "/metrics", None).await?.body);
        at_least_in(&s, r#"lazarus_cri_requests_total{method="ListPodSandbox",code="UNAVAILABLE"}"#, 1.0)
    }
    .await;
    bed.control("containerd-start")?;
    down?;
    wait_for(Duration::from_secs(30), "/readyz to say ready again", || async {
        get(address, "/readyz", None).await.ok().filter(|a| a.status == 200)
    })
    .await?;
    ensure!(lazarus.log_text().contains("serving /metrics"), "startup log line");
    Ok(())
}

fn at_least_in(s: &HashMap<String, f64>, key: &str, min: f64) -> Result<()> {
    let v = value(s, key)?;
    if v < min {
        bail!("{key} = {v}, expected at least {min}");
    }
    Ok(())
}
