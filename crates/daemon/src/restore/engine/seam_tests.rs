//! The restore engine's rules, against the recording fake runtime and a
//! store in a temporary directory (no containerd, CRIU or root).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use lazarus_proto::v1;
use sha2::{Digest, Sha256};
use tonic::{Code, Status};

use super::outcome::{failed_checkpoints, record_failure, record_failure_at};
use super::*;
use oci_spec::image::ImageManifest;

use crate::checkpoint::Compression;
use crate::runtime::fake::FakeRuntime;
use lazarus_format::annotations as ann;
use lazarus_format::plan::Origin;
use lazarus_registry::{RegistryClient, RegistrySettings};

const HANDLER: &str = "lazarus";
const HOUR: Duration = Duration::from_secs(3600);
const IMAGE: &str = "docker.io/library/app:1";

fn image_id() -> String {
    format!("sha256:{}", "a".repeat(64))
}

struct Bed {
    _dir: tempfile::TempDir,
    fake: Arc<FakeRuntime>,
    store: Arc<Store>,
    restorer: Restorer,
}

fn bed_with(settings: RegistrySettings, allowed_registries: Vec<String>) -> Bed {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(Store::open(&dir.path().join("store")).expect("store"));
    let fake = FakeRuntime::new();
    fake.script(|s| {
        s.pod_sandbox_status.always(Ok(v1::PodSandboxStatusResponse {
            status: Some(v1::PodSandboxStatus { runtime_handler: HANDLER.into(), ..Default::default() }),
            ..Default::default()
        }));
        s.image_status.always(Ok(v1::ImageStatusResponse {
            image: Some(v1::Image { id: image_id(), ..Default::default() }),
            ..Default::default()
        }));
        s.remove_container.always(Ok(()));
    });
    let config = RestorerConfig {
        restore_dir: dir.path().join("restore"),
        runtime_handler: HANDLER.into(),
        allowed_registries,
        allowed_dirs: Vec::new(),
        cross_namespace_sources: Vec::new(),
        failures_file: dir.path().join("restore-failures.json"),
        failure_expiry: Duration::from_secs(3600),
    };
    let registry = RegistryClient::new(settings).expect("registry client");
    let restorer = Restorer::new(fake.clone(), store.clone(), config, registry).expect("restorer");
    Bed { _dir: dir, fake, store, restorer }
}

fn bed() -> Bed {
    bed_with(RegistrySettings::default(), Vec::new())
}

/// kubelet's `CreateContainer` of container `app` in pod `ns/p` (sandbox `sb1`).
fn create_request(annotations: &[(&str, &str)]) -> v1::CreateContainerRequest {
    v1::CreateContainerRequest {
        pod_sandbox_id: "sb1".into(),
        config: Some(v1::ContainerConfig {
            metadata: Some(v1::ContainerMetadata { name: "app".into(), attempt: 0 }),
            image: Some(v1::ImageSpec { image: IMAGE.into(), ..Default::default() }),
            ..Default::default()
        }),
        sandbox_config: Some(v1::PodSandboxConfig {
            metadata: Some(v1::PodSandboxMetadata {
                name: "p".into(),
                namespace: "ns".into(),
                uid: "u".into(),
                attempt: 0,
            }),
            annotations: annotations.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            ..Default::default()
        }),
    }
}

/// Commits a checkpoint of `ns/p/app` created at `created`; returns its manifest digest.
fn commit_checkpoint(store: &Store, created: &str, tag: &str) -> String {
    commit_checkpoint_full(store, created, tag, "ns/p/app", &[])
}

/// Commits a checkpoint kept under `key` (`namespace/<identity>/container`).
fn commit_checkpoint_keyed(store: &Store, created: &str, tag: &str, key: &str) -> String {
    commit_checkpoint_full(store, created, tag, key, &[])
}

/// Same as [`commit_checkpoint`], with extra files (name, content) in the checkpoint tree.
fn commit_checkpoint_with(store: &Store, created: &str, tag: &str, extra: &[(&str, &str)]) -> String {
    commit_checkpoint_full(store, created, tag, "ns/p/app", extra)
}

/// Commits a checkpoint kept under `key` with extra files in its tree.
fn commit_checkpoint_full(store: &Store, created: &str, tag: &str, key: &str, extra: &[(&str, &str)]) -> String {
    let scratch = tempfile::tempdir().expect("tempdir");
    let tree = scratch.path().join("tree");
    std::fs::create_dir_all(tree.join(ann::files::CHECKPOINT_DIR)).expect("tree");
    for (name, content) in extra {
        std::fs::write(tree.join(name), content).expect("extra file");
    }
    std::fs::write(tree.join(ann::files::CHECKPOINT_DIR).join("pages-1.img"), tag).expect("image");
    let annotations: BTreeMap<String, String> = [
        (ann::CRIU_POD_NAMESPACE, "ns"),
        (ann::CRIU_POD_NAME, "p"),
        (ann::CRIU_CONTAINER_NAME, "app"),
        (ann::CRIU_ROOTFS_IMAGE_ID, image_id().as_str()),
        (ann::CRIU_HOST_ARCH, ann::go_arch()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let packaged =
        crate::checkpoint::image::package(store, &tree, scratch.path(), Compression::Zstd, &annotations, created)
            .expect("package");
    let index: BTreeMap<String, String> = [
        (ann::REF_NAME.to_owned(), format!("{key}:{tag}")),
        (ann::CONTAINER_KEY.to_owned(), key.to_owned()),
        (ann::CREATED.to_owned(), created.to_owned()),
    ]
    .into();
    let (descriptor, _) = store.commit_with_retention(&packaged.manifest, index, None).expect("commit");
    descriptor.digest().to_string()
}

/// Overwrites the layer blob of checkpoint `digest` with other bytes.
fn damage_layer(store: &Store, digest: &str) {
    let manifest: ImageManifest = serde_json::from_slice(&store.read_blob(digest).expect("manifest")).expect("json");
    let layer = manifest.layers()[0].digest().to_string();
    let path = store.blob_path(&layer).expect("layer path");
    std::fs::write(path, b"not the layer").expect("damage");
}

/// `lazarus_restores_total{result}` (0 when never counted).
fn restores(restorer: &Restorer, result: &str) -> f64 {
    let text = restorer.metrics.encode_prometheus_text();
    let name = format!("lazarus_restores_total{{result=\"{result}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(name.as_str())).and_then(|v| v.trim().parse().ok()).unwrap_or(0.0)
}

/// `lazarus_restore_fresh_starts_total{reason}` (0 when never counted).
fn fresh_starts(restorer: &Restorer, reason: &str) -> f64 {
    let text = restorer.metrics.encode_prometheus_text();
    let name = format!("lazarus_restore_fresh_starts_total{{reason=\"{reason}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(name.as_str())).and_then(|v| v.trim().parse().ok()).unwrap_or(0.0)
}

fn expect_staged(result: Result<Option<Staged>, RestoreError>) -> Staged {
    match result {
        Ok(Some(staged)) => staged,
        Ok(None) => panic!("expected a staged restore, got a fresh start"),
        Err(e) => panic!("expected a staged restore, got {e}"),
    }
}

#[tokio::test]
async fn best_effort_without_a_usable_checkpoint_starts_fresh() {
    let bed = bed();
    let request = create_request(&[(ra::RESTORE_FROM, "latest"), (ra::RESTORE_POLICY, "best-effort")]);
    let prepared = bed.restorer.prepare(&request, None).await.expect("best effort never refuses");
    assert!(prepared.is_none(), "nothing to restore: a fresh start");
    assert_eq!(bed.fake.calls(), ["PodSandboxStatus sb1", format!("ImageStatus {IMAGE}").as_str()]);
    assert_eq!(restores(&bed.restorer, "fresh"), 1.0);
    assert_eq!(fresh_starts(&bed.restorer, "none_usable"), 1.0);

    // The same pod with the policy required is refused, saying why.
    let request = create_request(&[(ra::RESTORE_FROM, "latest"), (ra::RESTORE_POLICY, "required")]);
    let err = bed.restorer.prepare(&request, None).await.expect_err("required refuses");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(err.to_string(), "no usable checkpoint for latest: the local store (ns/p/app) has no checkpoint");
}

#[tokio::test]
async fn best_effort_starts_fresh_on_the_wrong_runtime_handler_required_refuses() {
    let bed = bed();
    bed.fake.script(|s| {
        s.pod_sandbox_status.then(Ok(v1::PodSandboxStatusResponse {
            status: Some(v1::PodSandboxStatus { runtime_handler: "runc".into(), ..Default::default() }),
            ..Default::default()
        }));
        s.pod_sandbox_status.then(Ok(v1::PodSandboxStatusResponse {
            status: Some(v1::PodSandboxStatus { runtime_handler: "runc".into(), ..Default::default() }),
            ..Default::default()
        }));
    });
    commit_checkpoint(&bed.store, "2026-11-22T00:00:01.000Z", "t1");
    let best_effort = create_request(&[(ra::RESTORE_FROM, "latest"), (ra::RESTORE_POLICY, "best-effort")]);
    assert!(bed.restorer.prepare(&best_effort, None).await.expect("fresh").is_none());
    let required = create_request(&[(ra::RESTORE_FROM, "latest"), (ra::RESTORE_POLICY, "required")]);
    let err = bed.restorer.prepare(&required, None).await.expect_err("refused");
    assert_eq!(err.reason(), "handler");
    assert_eq!(err.code(), Code::FailedPrecondition);
    // The handler is checked before anything else is asked.
    assert_eq!(bed.fake.calls(), ["PodSandboxStatus sb1", "PodSandboxStatus sb1"]);
}

#[tokio::test]
async fn latest_skips_a_remembered_failure_and_a_corrupt_checkpoint() {
    let bed = bed();
    let oldest = commit_checkpoint(&bed.store, "2026-11-22T00:00:01.000Z", "t1");
    let corrupt = commit_checkpoint(&bed.store, "2026-11-22T00:00:02.000Z", "t2");
    let failed = commit_checkpoint(&bed.store, "2026-11-22T00:00:03.000Z", "t3");
    damage_layer(&bed.store, &corrupt);
    record_failure(
        &bed.restorer.config.failures_file,
        &Origin { key: "ns/p/app".into(), checkpoint: failed.clone(), source: "t3".into() },
        "damaged",
        HOUR,
    )
    .expect("remember");

    let request = create_request(&[(ra::RESTORE_FROM, "latest"), (ra::RESTORE_POLICY, "required")]);
    let staged = expect_staged(bed.restorer.prepare(&request, None).await);
    assert_eq!(staged.source(), format!("local:ns/p/app:t1@{oldest}"));
    assert_eq!(staged.origin.checkpoint, oldest);
    assert!(staged.dir.join(plan::TREE_DIR).join(ann::files::CHECKPOINT_DIR).join("pages-1.img").is_file());

    // Nothing usable at all: each one tried is named in the refusal.
    record_failure(
        &bed.restorer.config.failures_file,
        &Origin { key: "ns/p/app".into(), checkpoint: oldest.clone(), source: "t1".into() },
        "damaged",
        HOUR,
    )
    .expect("remember");
    drop(staged);
    let err = bed.restorer.prepare(&request, None).await.expect_err("none usable");
    assert_eq!(err.reason(), "none_usable");
    let message = err.to_string();
    assert!(message.contains(&format!("local:ns/p/app:t3@{failed}: its restore failed before")), "{message}");
    assert!(message.contains(&format!("checkpoint local:ns/p/app:t2@{corrupt} is unusable")), "{message}");
    assert!(message.contains(&format!("local:ns/p/app:t1@{oldest}: its restore failed before")), "{message}");
    // A staged restore dropped uncommitted leaves nothing behind.
    let left = || -> Vec<_> {
        std::fs::read_dir(&bed.restorer.config.restore_dir)
            .expect("restore dir")
            .flatten()
            .map(|e| e.file_name())
            .filter(|n| n != ".cache")
            .collect()
    };
    crate::blocking::eventually("staging dirs removed", || left().is_empty()).await;
}

#[tokio::test]
async fn a_failed_commit_removes_the_created_container() {
    let bed = bed();
    let digest = commit_checkpoint(&bed.store, "2026-11-22T00:00:01.000Z", "t1");
    let request = create_request(&[(ra::RESTORE_FROM, "latest")]);
    let staged = expect_staged(bed.restorer.prepare(&request, None).await);
    assert_eq!(staged.origin.checkpoint, digest);
    // `origin.json` cannot be written: a directory is in its place.
    std::fs::create_dir(staged.dir.join(plan::ORIGIN_FILE)).expect("obstacle");

    let err = bed.restorer.commit(staged, "c1").await.expect_err("plan not written");
    assert_eq!(err.reason(), "io");
    assert!(err.to_string().starts_with("writing the restore plan in "), "{err}");
    assert_eq!(bed.fake.calls().last().map(String::as_str), Some("RemoveContainer c1"));
    assert!(!plan::plan_dir(&bed.restorer.config.restore_dir, "c1").exists());
    assert!(!bed.restorer.has_plan("c1"));

    // A commit that succeeds removes nothing.
    let staged = expect_staged(bed.restorer.prepare(&request, None).await);
    let dir = bed.restorer.commit(staged, "c2").await.expect("committed");
    assert!(bed.restorer.has_plan("c2"));
    assert!(dir.join(plan::ORIGIN_FILE).is_file());
    assert_eq!(bed.fake.calls().iter().filter(|c| c.starts_with("RemoveContainer")).count(), 1);
}

/// A registry on loopback that serves one checkpoint's manifest and config
/// at once and never answers for its layer.
async fn stalling_registry(manifest: Vec<u8>, config: Vec<u8>, config_digest: String) -> String {
    use http_body_util::Full;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let (manifest, config) = (bytes::Bytes::from(manifest), bytes::Bytes::from(config));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (manifest, config, config_digest) = (manifest.clone(), config.clone(), config_digest.clone());
            let service = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                let (manifest, config, config_digest) = (manifest.clone(), config.clone(), config_digest.clone());
                async move {
                    let path = request.uri().path().to_owned();
                    let response = if path.starts_with("/v2/team/job/manifests/") {
                        http::Response::builder()
                            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
                            .body(Full::new(manifest))
                    } else if path == format!("/v2/team/job/blobs/{config_digest}") {
                        http::Response::builder().body(Full::new(config))
                    } else if path.starts_with("/v2/team/job/blobs/") {
                        // The layer: a download slower than kubelet's deadline.
                        std::future::pending::<()>().await;
                        unreachable!("pending never ends")
                    } else {
                        http::Response::builder().status(404).body(Full::new(bytes::Bytes::new()))
                    };
                    Ok::<_, std::convert::Infallible>(response.expect("response"))
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    address
}

#[tokio::test]
async fn a_deadline_too_short_for_the_download_answers_still_downloading() {
    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#.to_vec();
    let config_digest = format!("sha256:{:x}", Sha256::digest(&config));
    let layer_digest = format!("sha256:{:x}", Sha256::digest(b"layer"));
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": ann::LAYER_ZSTD, "digest": layer_digest, "size": 1_000_000}],
    });
    let manifest = serde_json::to_vec(&manifest).expect("manifest");
    let address = stalling_registry(manifest, config, config_digest).await;
    let settings = RegistrySettings { insecure: vec![address.clone()], ..Default::default() };
    let bed = bed_with(settings, vec![address.clone()]);
    let reference = format!("{address}/team/job:app-20261122T000000.000Z");
    // Best effort, even: a download that is still going is no reason to start fresh.
    let request = create_request(&[(ra::RESTORE_FROM, reference.as_str()), (ra::RESTORE_POLICY, "best-effort")]);

    let started = std::time::Instant::now();
    // kubelet's 2 s leaves less than the 5 s margin: the engine waits its minimum, 1 s.
    let err = bed.restorer.prepare(&request, Some(Duration::from_secs(2))).await.expect_err("still downloading");
    let waited = started.elapsed();
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(err.reason(), "downloading");
    assert!(err.to_string().contains(&format!("still downloading layer {layer_digest} (1000000 bytes)")), "{err}");
    assert!(waited >= Duration::from_secs(1) && waited < Duration::from_secs(4), "{waited:?}");
    assert_eq!(restores(&bed.restorer, "pending"), 1.0);
    assert_eq!(restores(&bed.restorer, "fresh"), 0.0);
}

#[tokio::test]
async fn a_runtime_that_cannot_be_asked_is_unavailable() {
    let bed = bed();
    bed.fake.script(|s| {
        s.pod_sandbox_status.then(Err(Status::unavailable("connection refused")));
    });
    let request = create_request(&[(ra::RESTORE_FROM, "latest"), (ra::RESTORE_POLICY, "required")]);
    let err = bed.restorer.prepare(&request, None).await.expect_err("refused");
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(err.to_string(), "asking the runtime: PodSandboxStatus sb1: connection refused");
}

#[tokio::test]
async fn a_failed_start_is_remembered_and_latest_skips_it_next_time() {
    let bed = bed();
    let digest = commit_checkpoint(&bed.store, "2026-11-22T00:00:01.000Z", "t1");
    let request = create_request(&[(ra::RESTORE_FROM, "latest"), (ra::RESTORE_POLICY, "required")]);
    let staged = expect_staged(bed.restorer.prepare(&request, None).await);
    bed.restorer.commit(staged, "c1").await.expect("plan");
    bed.restorer.started("c1", Some("runc restore: criu failed"));
    assert_eq!(failed_checkpoints(&bed.restorer.config.failures_file, "ns/p/app", HOUR), vec![digest.clone()]);

    let err = bed.restorer.prepare(&request, None).await.expect_err("the only one failed before");
    assert_eq!(
        err.to_string(),
        format!("no usable checkpoint for latest: local:ns/p/app:t1@{digest}: its restore failed before")
    );
    // A start that succeeded is not remembered.
    let other = commit_checkpoint(&bed.store, "2026-11-22T00:00:02.000Z", "t2");
    let staged = expect_staged(bed.restorer.prepare(&request, None).await);
    assert_eq!(staged.origin.checkpoint, other);
    bed.restorer.commit(staged, "c2").await.expect("plan");
    bed.restorer.started("c2", None);
    assert_eq!(failed_checkpoints(&bed.restorer.config.failures_file, "ns/p/app", HOUR), vec![digest]);
}

#[tokio::test]
async fn stale_plans_go_only_when_the_runtime_says_the_container_is_gone() {
    let bed = bed();
    let restore_dir = bed.restorer.config.restore_dir.clone();
    for id in ["gone", "alive"] {
        std::fs::create_dir_all(plan::plan_dir(&restore_dir, id)).expect("plan dir");
    }
    // `alive` is known to the runtime, `gone` is not; answered in the order they are asked.
    let listed: Vec<String> = std::fs::read_dir(&restore_dir)
        .expect("dir")
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.'))
        .collect();
    bed.fake.script(|s| {
        for name in &listed {
            let answer = if name == "alive" {
                Ok(v1::ContainerStatusResponse::default())
            } else {
                Err(Status::not_found("no such container"))
            };
            s.container_status.then(answer);
        }
    });
    bed.restorer.sweep_stale_plans().await;
    assert!(!plan::plan_dir(&restore_dir, "gone").exists());
    assert!(plan::plan_dir(&restore_dir, "alive").exists());
    let mut calls = bed.fake.calls();
    calls.sort();
    assert_eq!(calls, ["ContainerStatus alive", "ContainerStatus gone"]);

    // A runtime that cannot be asked leaves every plan in place.
    std::fs::create_dir_all(plan::plan_dir(&restore_dir, "unknown")).expect("plan dir");
    bed.fake.script(|s| {
        s.container_status.always(Err(Status::unavailable("connection refused")));
    });
    bed.restorer.sweep_stale_plans().await;
    assert!(plan::plan_dir(&restore_dir, "unknown").exists());
    assert!(plan::plan_dir(&restore_dir, "alive").exists());
}

#[tokio::test]
async fn latest_of_a_retried_job_pod_is_its_jobs_checkpoint_and_names_are_validated() {
    let bed = bed();
    let of_pod = commit_checkpoint(&bed.store, "2026-11-22T00:00:01.000Z", "t1");
    let of_job = commit_checkpoint_keyed(&bed.store, "2026-11-22T00:00:02.000Z", "t2", "ns/assembly/app");
    let of_name = commit_checkpoint_keyed(&bed.store, "2026-11-22T00:00:03.000Z", "t3", "ns/genome-7/app");
    let latest = [(ra::RESTORE_FROM, "latest"), (ra::RESTORE_POLICY, "required")];

    // A Job's pod (pod name "p", label job-name=assembly): the Job's checkpoint.
    let mut request = create_request(&latest);
    let sandbox = request.sandbox_config.as_mut().expect("sandbox");
    sandbox.labels.insert(lazarus_format::identity::JOB_NAME_LABEL.into(), "assembly".into());
    let staged = expect_staged(bed.restorer.prepare(&request, None).await);
    assert_eq!(staged.origin.checkpoint, of_job);
    assert_eq!(staged.origin.key, "ns/assembly/app");

    // The annotation wins over the label.
    let mut request = create_request(&[latest[0], latest[1], (ann::CHECKPOINT_NAME, "genome-7")]);
    let sandbox = request.sandbox_config.as_mut().expect("sandbox");
    sandbox.labels.insert(lazarus_format::identity::JOB_NAME_LABEL.into(), "assembly".into());
    assert_eq!(expect_staged(bed.restorer.prepare(&request, None).await).origin.checkpoint, of_name);

    // No label, no annotation: the pod's own name, as before.
    assert_eq!(expect_staged(bed.restorer.prepare(&create_request(&latest), None).await).origin.checkpoint, of_pod);

    // A malformed name is refused before anything is asked of the runtime.
    let calls = bed.fake.calls().len();
    let request = create_request(&[latest[0], (ann::CHECKPOINT_NAME, "a/b")]);
    let err = bed.restorer.prepare(&request, None).await.expect_err("refused");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.reason(), "annotation");
    assert!(err.to_string().starts_with("annotation lazarus.dev/checkpoint-name=\"a/b\" rejected:"), "{err}");
    assert_eq!(bed.fake.calls().len(), calls);
}

/// A `result.json` the wrapper leaves after CRIU failed with `lines`.
fn failed_result(dir: &std::path::Path, lines: &[&str]) {
    let result = serde_json::json!({
        "ok": false,
        "error": "runc restore: criu failed",
        "restore_log": lines,
        "finished": "2026-11-22T00:00:09Z",
    });
    std::fs::write(dir.join(plan::RESULT_FILE), result.to_string()).expect("result.json");
}

#[tokio::test]
async fn a_failure_of_the_node_is_not_remembered_a_damaged_checkpoint_is() {
    let bed = bed();
    let digest = commit_checkpoint(&bed.store, "2026-11-22T00:00:01.000Z", "t1");
    let request = create_request(&[(ra::RESTORE_FROM, "latest"), (ra::RESTORE_POLICY, "required")]);
    let staged = expect_staged(bed.restorer.prepare(&request, None).await);
    let dir = bed.restorer.commit(staged, "c1").await.expect("plan");
    failed_result(
        &dir,
        &[
            "(00.01) Error (criu/files-reg.c:2353): Can't open file data/log on restore: No such file or directory",
            "(00.02) Error (criu/cr-restore.c:2522): Restoring FAILED.",
        ],
    );
    bed.restorer.started("c1", Some("runc restore: criu failed"));
    assert!(failed_checkpoints(&bed.restorer.config.failures_file, "ns/p/app", HOUR).is_empty());
    // kubelet's retry gets the same checkpoint.
    let staged = expect_staged(bed.restorer.prepare(&request, None).await);
    assert_eq!(staged.origin.checkpoint, digest);

    // CRIU's images damaged: remembered, and latest has nothing else.
    let dir = bed.restorer.commit(staged, "c2").await.expect("plan");
    failed_result(&dir, &["(00.00) Error (criu/image.c:558): Magic doesn't match for inventory.img"]);
    bed.restorer.started("c2", Some("runc restore: criu failed"));
    assert_eq!(failed_checkpoints(&bed.restorer.config.failures_file, "ns/p/app", HOUR), vec![digest.clone()]);
    let text = std::fs::read_to_string(&bed.restorer.config.failures_file).expect("failures file");
    assert!(text.contains("Magic doesn't match"), "the cause is kept: {text}");
    let err = bed.restorer.prepare(&request, None).await.expect_err("the only checkpoint failed");
    assert_eq!(err.reason(), "none_usable");
}

#[tokio::test]
async fn a_remembered_failure_expires_and_latest_takes_the_checkpoint_again() {
    let bed = bed();
    let digest = commit_checkpoint(&bed.store, "2026-11-22T00:00:01.000Z", "t1");
    let origin = Origin { key: "ns/p/app".into(), checkpoint: digest.clone(), source: "t1".into() };
    let file = &bed.restorer.config.failures_file;
    // Recorded two hours ago; the engine remembers for one.
    let then = std::time::SystemTime::now() - 2 * HOUR;
    record_failure_at(file, &origin, "damaged", HOUR, then).expect("remember");
    let request = create_request(&[(ra::RESTORE_FROM, "latest"), (ra::RESTORE_POLICY, "required")]);
    let staged = expect_staged(bed.restorer.prepare(&request, None).await);
    assert_eq!(staged.origin.checkpoint, digest);
    // Recorded a minute ago: skipped.
    record_failure_at(file, &origin, "damaged", HOUR, std::time::SystemTime::now() - Duration::from_secs(60))
        .expect("remember");
    drop(staged);
    let err = bed.restorer.prepare(&request, None).await.expect_err("skipped");
    assert!(err.to_string().contains("its restore failed before"), "{err}");
}

#[tokio::test]
async fn best_effort_refuses_when_a_volume_does_not_match_and_remembers_nothing() {
    let bed = bed();
    let host = tempfile::tempdir().expect("host dir");
    std::fs::write(host.path().join("log"), "1\n2\n3\n").expect("log");
    let record = serde_json::json!({"version": 1, "volumes": [{
        "destination": "/data", "source": "/old/node/data", "kind": "host-path",
        "files": [{"path": "log", "size": 4, "mtime_ns": 1}],
    }]})
    .to_string();
    let older = commit_checkpoint(&bed.store, "2026-11-22T00:00:01.000Z", "t1");
    let newest = commit_checkpoint_with(
        &bed.store,
        "2026-11-22T00:00:02.000Z",
        "t2",
        &[(lazarus_format::volumes::FILE, record.as_str())],
    );
    let mut request = create_request(&[(ra::RESTORE_FROM, "latest"), (ra::RESTORE_POLICY, "best-effort")]);
    if let Some(config) = request.config.as_mut() {
        config.mounts.push(v1::Mount {
            container_path: "/data".into(),
            host_path: host.path().display().to_string(),
            ..Default::default()
        });
    }
    let err = bed.restorer.prepare(&request, None).await.expect_err("an environment refusal is an error");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(err.reason(), "volume");
    let message = err.to_string();
    let first = message.lines().next().unwrap_or_default();
    assert_eq!(
        first,
        format!(
            "volume /data (hostPath, host path {}): file log grew from 4 to 6 bytes after the checkpoint (restoring would duplicate records)",
            host.path().display()
        )
    );
    assert!(message.contains(&newest), "names the checkpoint: {message}");
    // Not a fresh start, not the older checkpoint, nothing remembered.
    assert_eq!(restores(&bed.restorer, "fresh"), 0.0);
    assert_eq!(restores(&bed.restorer, "failed"), 1.0);
    assert!(failed_checkpoints(&bed.restorer.config.failures_file, "ns/p/app", HOUR).is_empty());
    assert_ne!(older, newest);

    // Opted into appends, the same attempt restores the newest checkpoint.
    let mut allowed = request.clone();
    if let Some(sandbox) = allowed.sandbox_config.as_mut() {
        sandbox.annotations.insert(ann::VOLUME_APPENDS_OK.into(), "/data".into());
    }
    let staged = expect_staged(bed.restorer.prepare(&allowed, None).await);
    assert_eq!(staged.origin.checkpoint, newest);

    // Not mounted at all in the new container: refused too, naming the volume.
    let mut unmounted = request.clone();
    if let Some(config) = unmounted.config.as_mut() {
        config.mounts.clear();
    }
    let err = bed.restorer.prepare(&unmounted, None).await.expect_err("not mounted");
    assert!(err.to_string().starts_with("volume /data (hostPath) is not mounted in the new container"), "{err}");
}
