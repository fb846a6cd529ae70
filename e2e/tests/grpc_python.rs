//! A second, independent gRPC client stack: Python grpcio (gRPC's C core,
//! installed by the test bed) runs kubelet's call sequence and its error
//! paths (`e2e/grpc-python/cri_client.py`) through a real `lazarus serve` and
//! directly against the test bed's containerd; every step must end with the
//! same code and message both ways, except where lazarus is documented to
//! answer itself (a malformed restore annotation).
//!
//! grpcio, like grpc-go (kubelet, crictl), takes `grpc-status` only from a
//! HEADERS frame that ends the stream: an error containerd answers
//! Trailers-Only and lazarus forwarded as HEADERS + empty DATA became
//! `INTERNAL` here, which tonic-based tests cannot see.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, ensure};
use lazarus_e2e::{Cri, LazarusProcess, Testbed, repo_root};
use serde_json::Value;

const NAMESPACE: &str = "lazarus-e2e";
/// The step lazarus answers itself (docs/annotations.md).
const REFUSED_STEP: &str = "CreateContainer with a malformed restore-from";

/// grpcio's own messages for an expired deadline (client-side: they vary with timing, not with the server).
const DEADLINE_MESSAGES: [&str; 3] = ["Deadline Exceeded", "Stream removed (Deadline Exceeded)", RST_CANCEL];
/// grpcio's message for containerd 2.1's RST_STREAM CANCEL (error code 8) at an expired deadline.
const RST_CANCEL: &str = "Stream removed (RST_STREAM (Received RST_STREAM with error code 8))";

/// How grpcio ends a call whose deadline expired: DEADLINE_EXCEEDED, or CANCELLED when
/// containerd 2.1's RST_STREAM CANCEL at expiry wins the race with grpcio's own timer.
fn expired(step: &Step) -> bool {
    step.code == "DEADLINE_EXCEEDED" || (step.code == "CANCELLED" && step.message == RST_CANCEL)
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Step {
    step: String,
    code: String,
    message: String,
    summary: String,
}

/// Runs the Python client against `endpoint`; its steps.
fn run_client(python: &str, bed: &Testbed, endpoint: &Path, pod: &str, log_dir: &Path) -> Result<Vec<Step>> {
    std::fs::create_dir_all(log_dir)?;
    let root = repo_root();
    let output = Command::new(python)
        .arg(root.join("e2e/grpc-python/cri_client.py"))
        .arg("--endpoint")
        .arg(format!("unix://{}", endpoint.display()))
        .arg("--proto")
        .arg(root.join("crates/proto/vendor/cri-api/api.proto"))
        .args(["--image", bed.workload_image()?, "--pod", pod, "--namespace", NAMESPACE, "--flavor", bed.flavor()])
        .arg("--log-dir")
        .arg(log_dir)
        .output()
        .with_context(|| format!("running {python} e2e/grpc-python/cri_client.py"))?;
    ensure!(
        output.status.success(),
        "cri_client.py against {} failed ({}):\n{}",
        endpoint.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let doc: Value = serde_json::from_slice(&output.stdout).context("cri_client.py output is not JSON")?;
    let field = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
    let steps = doc
        .get("steps")
        .and_then(Value::as_array)
        .context("no steps in cri_client.py output")?
        .iter()
        .map(|s| Step {
            step: field(s, "step"),
            code: field(s, "code"),
            message: field(s, "message"),
            summary: field(s, "summary"),
        })
        .collect();
    Ok(steps)
}

fn find<'a>(steps: &'a [Step], name: &str) -> Result<&'a Step> {
    steps.iter().find(|s| s.step == name).with_context(|| format!("no step {name:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_sees_the_same_codes_and_messages_through_lazarus_as_directly() -> Result<()> {
    let _serial = lazarus_e2e::serial().await;
    let bed = Testbed::load()?;
    let python = bed
        .var("GRPC_PYTHON")
        .context("the test bed has no Python grpcio: run this tree's e2e/testbed/testbed.sh up")?
        .to_owned();
    let dir = tempfile::tempdir()?;
    let containerd = bed.containerd_socket()?;
    let mut direct = Cri::connect(&containerd)?;
    direct.sweep_test_pods().await?;
    let lazarus = LazarusProcess::start(dir.path(), &dir.path().join("lazarus.sock"), &containerd)?;

    let through = run_client(&python, &bed, &lazarus.socket, "grpcio-proxied", &dir.path().join("pods/proxied"))
        .with_context(|| format!("through lazarus; its log:\n{}", lazarus.log_text()))?;
    let reference = run_client(&python, &bed, &containerd, "grpcio-direct", &dir.path().join("pods/direct"))?;
    for step in &through {
        println!("{:<48} {:<18} {}", step.step, step.code, step.message);
    }

    // Directly, containerd created the container lazarus refuses: the client removed it again.
    let cleanup = "RemoveContainer of the not-refused container";
    assert_eq!(find(&reference, cleanup)?.code, "OK", "{reference:#?}");
    let reference: Vec<Step> = reference.into_iter().filter(|s| s.step != cleanup).collect();

    // The same steps in the same order, each with the same outcome.
    let names = |steps: &[Step]| steps.iter().map(|s| s.step.clone()).collect::<Vec<_>>();
    assert_eq!(names(&through), names(&reference), "the two runs made different calls");
    let mut differences = Vec::new();
    for (proxied, own) in through.iter().zip(&reference) {
        // The pod names differ (two pods): compare everything but them.
        let normalize = |s: &Step, pod: &str| Step {
            summary: s.summary.replace(pod, "<pod-name>"),
            message: s.message.replace(pod, "<pod-name>"),
            ..s.clone()
        };
        let (proxied, own) = (normalize(proxied, "grpcio-proxied"), normalize(own, "grpcio-direct"));
        if expired(&proxied) && expired(&own) {
            // grpcio writes these itself, after whichever came first: its own timer, or
            // containerd 2.1's RST_STREAM CANCEL at expiry (forwarded as such by lazarus), which
            // grpcio reports as DEADLINE_EXCEEDED or, when the reset wins outright, as CANCELLED —
            // seen directly against containerd as well as through lazarus.
            for message in [&proxied.message, &own.message] {
                assert!(DEADLINE_MESSAGES.contains(&message.as_str()), "{}: {message:?}", proxied.step);
            }
            continue;
        }
        if proxied.step != REFUSED_STEP && proxied != own {
            differences.push(format!("{}:\n  through lazarus: {proxied:?}\n  directly:        {own:?}", proxied.step));
        }
    }
    assert!(differences.is_empty(), "through lazarus differs from containerd:\n{}", differences.join("\n"));

    // What kubelet relies on, as containerd gives it.
    let code = |name: &str| find(&through, name).map(|s| s.code.clone());
    for ok in [
        "Version",
        "Status",
        "RunPodSandbox",
        "PodSandboxStatus",
        "PullImage",
        "ImageStatus",
        "CreateContainer",
        "StartContainer",
        "ContainerStatus",
        "ExecSync",
        "StopContainer",
        "RemoveContainer",
        "StopPodSandbox",
        "RemovePodSandbox",
    ] {
        assert_eq!(code(ok)?, "OK", "{ok}: {:?}", find(&through, ok)?);
    }
    assert_eq!(find(&through, "ContainerStatus")?.summary, "state=CONTAINER_RUNNING name=counter");
    assert!(
        find(&through, "ExecSync")?.summary.starts_with("exit=0 stdout='hello from "),
        "{:?}",
        find(&through, "ExecSync")?
    );
    assert_eq!(code("ContainerStatus of a removed container")?, "NOT_FOUND");
    assert_eq!(code("PodSandboxStatus of a removed pod")?, "NOT_FOUND");
    assert_eq!(code("StartContainer of a removed container")?, "NOT_FOUND");
    let past_deadline = find(&through, "ExecSync past its deadline")?;
    assert!(expired(past_deadline), "not an expired deadline: {past_deadline:?}");
    assert_eq!(code("Exec with tty and stderr")?, "INVALID_ARGUMENT");
    match bed.flavor() {
        "1.6" => {
            // kubelet v1.35 accepts only UNIMPLEMENTED as "RuntimeConfig not supported".
            assert_eq!(code("RuntimeConfig")?, "UNIMPLEMENTED");
            assert_eq!(code("GetContainerEvents")?, "UNIMPLEMENTED", "a stream ending with an error");
        }
        _ => {
            assert_eq!(code("RuntimeConfig")?, "OK");
            assert_eq!(code("GetContainerEvents")?, "DEADLINE_EXCEEDED", "a stream ended by its deadline");
        }
    }
    let codes = |steps: &[Step]| steps.iter().filter(|s| s.code != "OK").count();
    assert!(codes(&through) >= 7, "the run must exercise the error paths: {through:#?}");

    // lazarus's own refusal, as docs/annotations.md specifies it; containerd itself creates the container.
    let refused = find(&through, REFUSED_STEP)?;
    assert_eq!(refused.code, "INVALID_ARGUMENT", "{refused:?}");
    assert_eq!(
        refused.message,
        "lazarus: restoring container refused of pod lazarus-e2e/grpcio-proxied: annotation \
         lazarus.dev/restore-from=\"not a reference\" rejected: a checkpoint reference has no whitespace",
    );
    assert_eq!(find(&reference, REFUSED_STEP)?.code, "OK", "containerd knows no lazarus annotation");

    let exit = lazarus.terminate()?;
    assert!(exit.success(), "lazarus exit status {exit}");
    Ok(())
}
