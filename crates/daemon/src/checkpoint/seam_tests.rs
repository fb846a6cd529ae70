//! The checkpoint engine's rules, against the recording fake runtime and a
//! store in a temporary directory (no containerd, CRIU or root): the
//! container is always thawed after it was paused, a container kubelet
//! stops is not checkpointed any more, and the grace period of a stop bounds
//! the checkpoint before it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lazarus_proto::v1;
use tonic::{Code, Status};

use super::markers::Markers;
use super::{CheckpointError, Checkpointer, CheckpointerConfig, Compression};
use crate::containerd_api::Process;
use crate::runtime::fake::FakeRuntime;
use lazarus_format::annotations::{self as ann, files};
use lazarus_registry::RegistrySettings;
use lazarus_store::Store;

/// No process has this id (`pid_max` is at most 2^22): its writable layer cannot be read.
const NO_SUCH_PID: u64 = 999_999_999;

struct Bed {
    dir: tempfile::TempDir,
    fake: Arc<FakeRuntime>,
    engine: Checkpointer,
}

impl Bed {
    fn frozen(&self) -> Markers {
        Markers::new(&self.dir.path().join("run"), "frozen")
    }

    fn staging_entries(&self) -> usize {
        std::fs::read_dir(self.dir.path().join("state").join("staging")).map_or(0, |d| d.count())
    }

    fn failures(&self, reason: &str) -> f64 {
        let text = self.engine.metrics().encode_prometheus_text();
        let name = format!("lazarus_checkpoint_failures_total{{reason=\"{reason}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(name.as_str())).and_then(|v| v.trim().parse().ok()).unwrap_or(0.0)
    }
}

/// A running container `c1` (`ns/p/app`, sandbox `sb1`) whose pod has `pod_annotations`.
fn bed(pod_annotations: &[(&str, &str)]) -> Bed {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(Store::open(&dir.path().join("state").join("store")).expect("store"));
    let fake = FakeRuntime::new();
    let info = serde_json::json!({"pid": NO_SUCH_PID, "sandboxID": "sb1", "runtimeSpec": {}}).to_string();
    let annotations = pod_annotations.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    fake.script(|s| {
        s.list_containers.always(Ok(vec![v1::Container { id: "c1".into(), ..Default::default() }]));
        s.container_status.always(Ok(v1::ContainerStatusResponse {
            status: Some(v1::ContainerStatus {
                id: "c1".into(),
                state: v1::ContainerState::ContainerRunning as i32,
                metadata: Some(v1::ContainerMetadata { name: "app".into(), attempt: 0 }),
                image_id: format!("sha256:{}", "a".repeat(64)),
                ..Default::default()
            }),
            info: [("info".to_owned(), info)].into(),
        }));
        s.pod_sandbox_status.always(Ok(v1::PodSandboxStatusResponse {
            status: Some(v1::PodSandboxStatus {
                id: "sb1".into(),
                metadata: Some(v1::PodSandboxMetadata {
                    name: "p".into(),
                    namespace: "ns".into(),
                    uid: "u".into(),
                    attempt: 0,
                }),
                annotations,
                ..Default::default()
            }),
            ..Default::default()
        }));
        s.version.always(Ok(v1::VersionResponse {
            runtime_name: "containerd".into(),
            runtime_version: "2.0.0".into(),
            ..Default::default()
        }));
        s.pause_task.always(Ok(()));
        s.resume_task.always(Ok(()));
        s.checkpoint_task.always(Ok(()));
    });
    let config = CheckpointerConfig {
        state_dir: dir.path().join("state"),
        run_dir: dir.path().join("run"),
        max_concurrent: 2,
        compression: Compression::Zstd,
        store_max_size: None,
        registry: RegistrySettings::default(),
        registry_layout: super::RegistryLayout::default(),
        empty_dir_capture_max_size: 1 << 30,
        dev_shm_capture_max_size: 1 << 30,
    };
    let engine = Checkpointer::new(fake.clone(), store, config);
    Bed { dir, fake, engine }
}

/// Writes what a failed CRIU dump leaves: its log in the work directory.
fn failing_dump_leaves_its_log(bed: &Bed) {
    bed.fake.script(|s| {
        s.checkpoint_task.always(Err(Status::unknown("criu failed: type NOTIFY errno 0")));
        s.dump_hook = Some(Arc::new(|options| {
            let log = std::path::Path::new(&options.work_path).join(files::DUMP_LOG);
            std::fs::write(log, "(00.001) Dumping\n(00.002) Error (criu/sk-unix.c:1): unix: external socket\n")
                .expect("dump.log");
        }));
    });
}

/// Resolved, inspected, and the pod's other containers listed (none: a cut of one).
const INSPECTED: [&str; 5] =
    ["ListContainers c1", "ContainerStatus c1", "PodSandboxStatus sb1", "Version", "ListContainers"];

fn calls_after_inspect(bed: &Bed) -> Vec<String> {
    let calls = bed.fake.calls();
    assert_eq!(calls[..INSPECTED.len()], INSPECTED, "{calls:?}");
    calls[INSPECTED.len()..].to_vec()
}

#[tokio::test]
async fn a_failed_dump_still_thaws_the_container() {
    let bed = bed(&[]);
    failing_dump_leaves_its_log(&bed);
    let err = bed.engine.checkpoint("c1", None).await.expect_err("the dump fails");
    assert!(matches!(err, CheckpointError::Criu { .. }), "{err}");
    assert_eq!(calls_after_inspect(&bed), ["PauseTask c1", "CheckpointTask c1", "ResumeTask c1"]);
    let text = err.to_string();
    assert!(text.starts_with("CRIU dump of container c1 failed: criu failed: type NOTIFY errno 0"), "{text}");
    assert!(text.contains("Error (criu/sk-unix.c:1): unix: external socket"), "the log excerpt: {text}");
    assert_eq!(Status::from(err).code(), Code::Internal);
    assert!(!bed.frozen().exists("c1").await, "thawed: no frozen marker");
    crate::blocking::eventually("staging removed", || bed.staging_entries() == 0).await;
    assert_eq!(bed.failures("criu"), 1.0);
}

#[tokio::test]
async fn a_failed_writable_layer_after_the_dump_still_thaws_the_container() {
    let bed = bed(&[]);
    bed.fake.script(|s| {
        // The files CRIU leaves in the image path it was given.
        s.dump_hook = Some(Arc::new(|options| {
            std::fs::write(std::path::Path::new(&options.image_path).join("pages-1.img"), b"pages").expect("image");
        }));
    });
    let err = bed.engine.checkpoint("c1", None).await.expect_err("no writable layer");
    assert_eq!(err.reason(), "rootfs", "{err}");
    assert!(err.to_string().starts_with("capturing the writable layer of container c1: "), "{err}");
    assert_eq!(calls_after_inspect(&bed), ["PauseTask c1", "CheckpointTask c1", "ResumeTask c1"]);
    assert!(!bed.frozen().exists("c1").await);
    crate::blocking::eventually("staging removed", || bed.staging_entries() == 0).await;
    assert!(bed.engine.store().list().expect("list").is_empty(), "nothing committed");
}

#[tokio::test]
async fn a_failed_pause_dumps_nothing_and_resumes_nothing() {
    let bed = bed(&[]);
    bed.fake.script(|s| {
        s.pause_task.always(Err(Status::failed_precondition("task is not running")));
    });
    let err = bed.engine.checkpoint("c1", None).await.expect_err("not paused");
    assert_eq!(err.reason(), "freeze");
    assert_eq!(err.to_string(), "pausing container c1 for the checkpoint: FailedPrecondition: task is not running");
    assert_eq!(calls_after_inspect(&bed), ["PauseTask c1"]);
    assert!(!bed.frozen().exists("c1").await);
}

#[tokio::test]
async fn a_resume_that_fails_is_retried_while_the_task_is_paused() {
    let bed = bed(&[]);
    failing_dump_leaves_its_log(&bed);
    bed.fake.script(|s| {
        s.resume_task.then(Err(Status::unavailable("shim busy"))).then(Ok(()));
        s.task_status.always(Ok(Process::PAUSED));
    });
    let err = bed.engine.checkpoint("c1", None).await.expect_err("the dump fails");
    assert_eq!(err.reason(), "criu");
    assert_eq!(
        calls_after_inspect(&bed),
        ["PauseTask c1", "CheckpointTask c1", "ResumeTask c1", "TaskStatus c1", "ResumeTask c1"]
    );
    assert!(!bed.frozen().exists("c1").await);
}

#[tokio::test]
async fn a_container_left_frozen_is_thawed_by_its_next_checkpoint_first() {
    let bed = bed(&[]);
    failing_dump_leaves_its_log(&bed);
    bed.fake.script(|s| {
        s.resume_task.always(Err(Status::unavailable("shim gone")));
        s.task_status.always(Ok(Process::PAUSED));
    });
    let err = bed.engine.checkpoint("c1", None).await.expect_err("the dump fails");
    assert_eq!(err.reason(), "criu", "the dump's failure is the one reported");
    let resumes = bed.fake.calls().iter().filter(|c| *c == "ResumeTask c1").count();
    assert_eq!(resumes, 5, "tried five times");
    assert!(bed.frozen().exists("c1").await, "still frozen: the marker stays");

    bed.fake.script(|s| {
        s.resume_task.always(Ok(()));
    });
    let before = bed.fake.calls().len();
    let err = bed.engine.checkpoint("c1", None).await.expect_err("the dump fails again");
    assert_eq!(err.reason(), "criu");
    let calls = bed.fake.calls()[before..].to_vec();
    assert_eq!(
        calls,
        [
            "ListContainers c1",
            "ContainerStatus c1",
            "PodSandboxStatus sb1",
            "Version",
            "ListContainers",
            "ResumeTask c1", // the abandoned freeze, once its lock is held, before the new cut
            "PauseTask c1",
            "CheckpointTask c1",
            "ResumeTask c1",
        ]
    );
    assert!(!bed.frozen().exists("c1").await);
}

#[tokio::test]
async fn a_container_being_stopped_is_not_checkpointed_any_more() {
    let bed = bed(&[]);
    bed.engine.stopping_markers().set("c1").await.expect("marker");
    let err = bed.engine.checkpoint("c1", None).await.expect_err("stopping");
    assert_eq!(err.reason(), "stopping");
    assert_eq!(Status::from(err).code(), Code::FailedPrecondition);
    assert_eq!(bed.fake.calls(), ["ListContainers c1"], "not even inspected");
}

#[tokio::test]
async fn a_grace_period_too_short_for_a_checkpoint_stops_without_one() {
    let bed = bed(&[(ann::CHECKPOINT_ON_STOP, "true")]);
    // 2 s is all the reserve the stop itself keeps.
    super::on_stop::checkpoint_before_stop(&bed.engine, "c1", 2).await;
    assert_eq!(bed.fake.calls(), ["ContainerStatus c1", "PodSandboxStatus sb1"], "no pause, no dump");
    assert!(bed.engine.stopping_markers().exists("c1").await, "no checkpoint of it from now on");
    assert_eq!(bed.failures("grace_period"), 1.0);
}

#[tokio::test]
async fn a_stop_waits_for_the_thaw_when_its_grace_period_runs_out_during_the_dump() {
    let bed = bed(&[(ann::CHECKPOINT_ON_STOP, "true")]);
    failing_dump_leaves_its_log(&bed);
    bed.fake.script(|s| s.dump_delay = Duration::from_millis(2500));
    let started = Instant::now();
    // 3 s of grace: 1 s for the checkpoint, which takes longer.
    super::on_stop::checkpoint_before_stop(&bed.engine, "c1", 3).await;
    let elapsed = started.elapsed();
    let calls = bed.fake.calls();
    assert_eq!(calls.last().map(String::as_str), Some("ResumeTask c1"), "the stop goes on once thawed: {calls:?}");
    assert!(calls.iter().any(|c| c == "CheckpointTask c1"), "{calls:?}");
    assert!(elapsed >= Duration::from_millis(2500), "waited for the thaw: {elapsed:?}");
}

#[tokio::test]
async fn a_pod_that_does_not_ask_is_not_checkpointed_on_stop() {
    let bed = bed(&[]);
    super::on_stop::checkpoint_before_stop(&bed.engine, "c1", 30).await;
    assert_eq!(bed.fake.calls(), ["ContainerStatus c1", "PodSandboxStatus sb1"]);
    assert!(!bed.engine.stopping_markers().exists("c1").await);
}

/// Writes what a successful CRIU dump leaves: an image in the image path.
fn dump_leaves_images(bed: &Bed) {
    bed.fake.script(|s| {
        s.dump_hook = Some(Arc::new(|options| {
            let images = std::path::Path::new(&options.image_path);
            std::fs::write(images.join("pages-1.img"), b"pages").expect("image");
            std::fs::write(images.join("inventory.img"), b"inventory").expect("image");
        }));
    });
}

#[tokio::test]
async fn a_checkpoint_is_committed_pruned_to_keep_and_restorable_by_latest() {
    let bed = bed(&[]);
    dump_leaves_images(&bed);
    let upper = bed.dir.path().join("upper");
    std::fs::create_dir_all(upper.join("var")).expect("upper");
    std::fs::write(upper.join("var").join("state.txt"), b"written by the program").expect("file");
    let engine = bed.engine.clone().with_upperdir(&upper);

    let mut taken = Vec::new();
    for _ in 0..3 {
        taken.push(engine.checkpoint("c1", Some(2)).await.expect("checkpoint"));
        // Tags have millisecond resolution.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let newest = taken.last().expect("three");
    assert_eq!(newest.key, "ns/p/app");
    assert_eq!(newest.reference, format!("local:ns/p/app:{}@{}", newest.tag, newest.digest));
    assert_eq!((taken[0].pruned, taken[1].pruned, taken[2].pruned), (0, 0, 1), "keep 2");
    assert_eq!((newest.pushed.as_deref(), newest.push_error.as_deref()), (None, None), "no repository");
    let listed = engine.store().list().expect("list");
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|e| e.annotation(ann::CONTAINER_KEY) == Some("ns/p/app")));
    assert!(!listed.iter().any(|e| e.digest() == taken[0].digest), "the oldest went");
    crate::blocking::eventually("staging removed", || bed.staging_entries() == 0).await;
    assert!(!bed.frozen().exists("c1").await);
    let calls = bed.fake.calls();
    let cut: Vec<&str> = calls.iter().map(String::as_str).filter(|c| c.ends_with("Task c1")).collect();
    assert_eq!(cut, ["PauseTask c1", "CheckpointTask c1", "ResumeTask c1"].repeat(3));

    // What was committed restores: `latest` stages the newest one, with the
    // images CRIU left and the writable layer.
    let (restorer, runtime) = restorer_and_runtime(&bed, &engine);
    let request = v1::CreateContainerRequest {
        pod_sandbox_id: "sb1".into(),
        config: Some(v1::ContainerConfig {
            metadata: Some(v1::ContainerMetadata { name: "app".into(), attempt: 1 }),
            image: Some(v1::ImageSpec { image: "docker.io/library/app:1".into(), ..Default::default() }),
            ..Default::default()
        }),
        sandbox_config: Some(v1::PodSandboxConfig {
            metadata: Some(v1::PodSandboxMetadata { name: "p".into(), namespace: "ns".into(), ..Default::default() }),
            annotations: [
                ("lazarus.dev/restore-from".to_owned(), "latest".to_owned()),
                ("lazarus.dev/restore-policy".to_owned(), "required".to_owned()),
            ]
            .into(),
            ..Default::default()
        }),
    };
    let staged = match restorer.prepare(&request, None).await {
        Ok(Some(staged)) => staged,
        Ok(None) => panic!("a fresh start"),
        Err(e) => panic!("not restorable: {e}"),
    };
    assert_eq!(staged.source(), newest.reference);
    let plan = restorer.commit(staged, "c2").await.expect("plan");
    let tree = plan.join("tree");
    assert_eq!(std::fs::read(tree.join(files::CHECKPOINT_DIR).join("pages-1.img")).expect("images"), b"pages");
    let diff = std::fs::File::open(tree.join(files::ROOTFS_DIFF)).expect("rootfs diff");
    let mut archive = tar::Archive::new(diff);
    let paths: Vec<String> = archive
        .entries()
        .expect("entries")
        .map(|e| e.expect("entry").path().expect("path").display().to_string())
        .collect();
    assert!(paths.iter().any(|p| p.trim_start_matches("./") == "var/state.txt"), "{paths:?}");
    assert!(tree.join(files::SPEC_DUMP).is_file() && tree.join(files::CONFIG_DUMP).is_file());
    assert!(!runtime.calls().iter().any(|c| c.starts_with("RemoveContainer")));
}

#[tokio::test]
async fn a_malformed_repository_keeps_the_local_checkpoint_and_pushes_nothing() {
    let bed = bed(&[(ann::CHECKPOINT_REPOSITORY, "team/job")]);
    dump_leaves_images(&bed);
    let upper = bed.dir.path().join("upper");
    std::fs::create_dir_all(&upper).expect("upper");
    let engine = bed.engine.clone().with_upperdir(&upper);
    let checkpoint = engine.checkpoint("c1", None).await.expect("the local checkpoint");
    assert_eq!(checkpoint.pushed, None);
    let error = checkpoint.push_error.expect("the push is refused");
    assert!(error.starts_with("lazarus.dev/checkpoint-repository=\"team/job\" rejected: "), "{error}");
    assert_eq!(engine.store().list().expect("list").len(), 1);
}

fn listed(id: &str, name: &str) -> v1::Container {
    v1::Container {
        id: id.into(),
        pod_sandbox_id: "sb1".into(),
        metadata: Some(v1::ContainerMetadata { name: name.into(), attempt: 0 }),
        ..Default::default()
    }
}

fn running(id: &str, name: &str) -> v1::ContainerStatusResponse {
    let info = serde_json::json!({"pid": NO_SUCH_PID, "sandboxID": "sb1", "runtimeSpec": {}}).to_string();
    v1::ContainerStatusResponse {
        status: Some(v1::ContainerStatus {
            id: id.into(),
            state: v1::ContainerState::ContainerRunning as i32,
            metadata: Some(v1::ContainerMetadata { name: name.into(), attempt: 0 }),
            image_id: format!("sha256:{}", "a".repeat(64)),
            ..Default::default()
        }),
        info: [("info".to_owned(), info)].into(),
    }
}

/// The pod `ns/p` runs `app` (c1), `db` (c2) and a `log` sidecar (c3) that
/// `lazarus.dev/checkpoint-containers` leaves out; one checkpoint of `app`.
async fn cut_of_app_and_db(bed: &Bed, engine: &Checkpointer) -> Result<super::capture::Checkpoint, CheckpointError> {
    bed.fake.script(|s| {
        s.list_containers.then(Ok(vec![listed("c1", "app")])).then(Ok(vec![
            listed("c1", "app"),
            listed("c3", "log"),
            listed("c2", "db"),
        ]));
        s.container_status.then(Ok(running("c1", "app"))).then(Ok(running("c2", "db")));
    });
    engine.checkpoint("c1", None).await
}

/// A restore engine over `engine`'s store; the new pods run with lazarus's handler.
fn restorer_over(bed: &Bed, engine: &Checkpointer) -> crate::restore::Restorer {
    restorer_and_runtime(bed, engine).0
}

/// [`restorer_over`] and the fake runtime it asks.
fn restorer_and_runtime(bed: &Bed, engine: &Checkpointer) -> (crate::restore::Restorer, Arc<FakeRuntime>) {
    let runtime = FakeRuntime::new();
    runtime.script(|s| {
        s.pod_sandbox_status.always(Ok(v1::PodSandboxStatusResponse {
            status: Some(v1::PodSandboxStatus { runtime_handler: "lazarus".into(), ..Default::default() }),
            ..Default::default()
        }));
        s.image_status.always(Ok(v1::ImageStatusResponse {
            image: Some(v1::Image { id: format!("sha256:{}", "a".repeat(64)), ..Default::default() }),
            ..Default::default()
        }));
    });
    let config = crate::restore::RestorerConfig {
        restore_dir: bed.dir.path().join("restore"),
        runtime_handler: "lazarus".into(),
        allowed_registries: Vec::new(),
        allowed_dirs: Vec::new(),
        cross_namespace_sources: Vec::new(),
        failures_file: bed.dir.path().join("restore-failures.json"),
        failure_expiry: Duration::from_secs(3600),
    };
    let registry = lazarus_registry::RegistryClient::new(RegistrySettings::default()).expect("client");
    let restorer =
        crate::restore::Restorer::new(runtime.clone(), engine.store().clone(), config, registry).expect("restorer");
    (restorer, runtime)
}

#[tokio::test]
async fn latest_skips_a_pod_cut_that_lacks_a_containers_checkpoint() {
    let bed = bed(&[(ann::CHECKPOINT_CONTAINERS, "app,db")]);
    dump_leaves_images(&bed);
    let upper = bed.dir.path().join("upper");
    std::fs::create_dir_all(&upper).expect("upper");
    let engine = bed.engine.clone().with_upperdir(&upper);
    let first = cut_of_app_and_db(&bed, &engine).await.expect("the first cut");
    tokio::time::sleep(Duration::from_millis(5)).await;
    let second = cut_of_app_and_db(&bed, &engine).await.expect("the second cut");
    // db's checkpoint of the second cut is gone: app's newest is of an incomplete cut.
    let [db_second] = second.pod_cut.as_slice() else { panic!("one sibling") };
    engine.store().remove(std::slice::from_ref(&db_second.digest)).expect("remove");
    let restorer = restorer_over(&bed, &engine);
    match restorer.prepare(&restore_request("app"), None).await {
        Ok(Some(staged)) => assert_eq!(staged.source(), first.reference, "the newest complete cut"),
        other => panic!("app not staged: {other:?}"),
    }
}

fn restore_request(container: &str) -> v1::CreateContainerRequest {
    v1::CreateContainerRequest {
        pod_sandbox_id: "sb-new".into(),
        config: Some(v1::ContainerConfig {
            metadata: Some(v1::ContainerMetadata { name: container.into(), attempt: 0 }),
            image: Some(v1::ImageSpec { image: "docker.io/library/app:1".into(), ..Default::default() }),
            ..Default::default()
        }),
        sandbox_config: Some(v1::PodSandboxConfig {
            metadata: Some(v1::PodSandboxMetadata { name: "p".into(), namespace: "ns".into(), ..Default::default() }),
            annotations: [
                ("lazarus.dev/restore-from".to_owned(), "latest".to_owned()),
                ("lazarus.dev/restore-policy".to_owned(), "required".to_owned()),
            ]
            .into(),
            ..Default::default()
        }),
    }
}

#[tokio::test]
async fn a_pod_cut_freezes_every_container_before_the_first_dump_and_they_restore_from_the_same_cut() {
    let bed = bed(&[(ann::CHECKPOINT_CONTAINERS, "app,db")]);
    dump_leaves_images(&bed);
    let upper = bed.dir.path().join("upper");
    std::fs::create_dir_all(&upper).expect("upper");
    let engine = bed.engine.clone().with_upperdir(&upper);

    let first = cut_of_app_and_db(&bed, &engine).await.expect("the first cut");
    let [db] = first.pod_cut.as_slice() else { panic!("one sibling: {:?}", first.pod_cut) };
    assert_eq!((first.key.as_str(), db.key.as_str()), ("ns/p/app", "ns/p/db"));
    assert_eq!(first.tag, db.tag, "one cut, one time tag");
    let tasks: Vec<String> = bed.fake.calls().into_iter().filter(|c| c.contains("Task ")).collect();
    assert_eq!(
        tasks,
        ["PauseTask c1", "PauseTask c2", "CheckpointTask c1", "CheckpointTask c2", "ResumeTask c1", "ResumeTask c2"],
        "all frozen, then all dumped, then all thawed"
    );
    assert!(!bed.fake.calls().iter().any(|c| c.ends_with(" c3")), "the sidecar is left alone");
    assert!(!bed.frozen().exists("c1").await && !bed.frozen().exists("c2").await);

    tokio::time::sleep(Duration::from_millis(5)).await;
    let second = cut_of_app_and_db(&bed, &engine).await.expect("the second cut");
    assert_ne!(second.tag, first.tag);
    // app's newest checkpoint goes: app comes back from the first cut, and so must db,
    // although db's newest is of the second.
    engine.store().remove(std::slice::from_ref(&second.digest)).expect("remove");

    let restorer = restorer_over(&bed, &engine);
    let app = match restorer.prepare(&restore_request("app"), None).await {
        Ok(Some(staged)) => staged,
        other => panic!("app not staged: {other:?}"),
    };
    assert_eq!(app.source(), first.reference);
    let plan = restorer.commit(app, "n1").await.expect("plan");
    // What the wrapper writes when runc restore succeeded.
    let result = serde_json::json!({"ok": true, "error": "", "restore_log": [], "finished": "2026-12-04T00:00:00Z"});
    std::fs::write(plan.join("result.json"), result.to_string()).expect("result.json");
    restorer.started("n1", None);
    let db_staged = match restorer.prepare(&restore_request("db"), None).await {
        Ok(Some(staged)) => staged,
        other => panic!("db not staged: {other:?}"),
    };
    assert_eq!(db_staged.source(), db.reference, "db from app's cut, not from its own newest");
    let plan_db = restorer.commit(db_staged, "n2").await.expect("plan");
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(plan_db.join("plan.json")).expect("plan.json")).expect("json");
    assert_eq!(written["skip_pod_data"], serde_json::json!(["/dev/shm"]), "app put the pod's /dev/shm back already");
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(plan.join("plan.json")).expect("plan.json")).expect("json");
    assert!(written.get("skip_pod_data").is_none(), "the first puts back everything");
}

#[tokio::test]
async fn a_failed_dump_of_one_container_fails_the_whole_cut_and_thaws_every_container() {
    let bed = bed(&[]);
    failing_dump_leaves_its_log(&bed);
    bed.fake.script(|s| {
        s.checkpoint_task = super::super::runtime::fake::Scripted::default();
        s.checkpoint_task.then(Ok(())).then(Err(Status::unknown("criu failed"))).always(Ok(()));
    });
    bed.fake.script(|s| {
        // Without the annotation the sidecar is in the cut too (after app, db by name).
        s.container_status.then(Ok(running("c1", "app"))).then(Ok(running("c2", "db"))).then(Ok(running("c3", "log")));
        s.list_containers.then(Ok(vec![listed("c1", "app")])).then(Ok(vec![
            listed("c1", "app"),
            listed("c3", "log"),
            listed("c2", "db"),
        ]));
    });
    let upper = bed.dir.path().join("upper");
    std::fs::create_dir_all(&upper).expect("upper");
    let err = bed.engine.clone().with_upperdir(&upper).checkpoint("c1", None).await.expect_err("db's dump fails");
    assert!(matches!(err, CheckpointError::Criu { ref container_id, .. } if container_id == "c2"), "{err}");
    let tasks: Vec<String> = bed.fake.calls().into_iter().filter(|c| c.contains("Task ")).collect();
    assert_eq!(
        tasks,
        [
            "PauseTask c1",
            "PauseTask c2",
            "PauseTask c3",
            "CheckpointTask c1",
            "CheckpointTask c2",
            "ResumeTask c1",
            "ResumeTask c2",
            "ResumeTask c3"
        ],
        "no annotation: every container is in the cut; the failure stops the dumps, every one is thawed"
    );
    assert!(bed.engine.store().list().expect("list").is_empty(), "nothing of the cut committed");
}

/// 12 MiB of incompressible memory (xorshift), as CRIU would write it: several chunks.
fn noise() -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..(12 << 20) / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect()
}

/// `noise()` after the process changed 64 KiB in its middle.
fn changed_noise() -> Vec<u8> {
    let mut pages = noise();
    for (i, byte) in pages[6 << 20..(6 << 20) + (64 << 10)].iter_mut().enumerate() {
        *byte = (i % 253) as u8;
    }
    pages
}

/// Writes what CRIU leaves for two processes, one with 12 MiB of incompressible memory, one
/// with 2 MiB of zeros: pages files large enough to be stored as chunks. From the second dump
/// on, 64 KiB of the first process's memory have changed.
fn dump_leaves_large_pages(bed: &Bed) {
    let dumps = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    bed.fake.script(move |s| {
        let dumps = dumps.clone();
        s.dump_hook = Some(Arc::new(move |options| {
            let images = std::path::Path::new(&options.image_path);
            let first = dumps.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
            std::fs::write(images.join("pages-1.img"), if first { noise() } else { changed_noise() }).expect("image");
            std::fs::write(images.join("pages-2.img"), vec![0u8; 2 << 20]).expect("image");
            std::fs::write(images.join("inventory.img"), b"inventory").expect("image");
        }));
    });
}

fn stored_manifest(engine: &Checkpointer, digest: &str) -> oci_spec::image::ImageManifest {
    let bytes = engine.store().read_blob(digest).expect("manifest");
    oci_spec::image::ImageManifest::from_reader(&bytes[..]).expect("manifest json")
}

/// The entries of a tar (compressed or not) with their data.
fn tar_entries(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    use std::io::Read;
    let decoded = lazarus_format::compression::decompressing(bytes).expect("decode");
    let mut archive = tar::Archive::new(decoded);
    let mut out = Vec::new();
    for entry in archive.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let mut data = Vec::new();
        entry.read_to_end(&mut data).expect("data");
        out.push((entry.path().expect("path").display().to_string().trim_start_matches("./").to_owned(), data));
    }
    out
}

#[tokio::test]
async fn large_files_are_chunks_shared_between_versions_put_together_on_restore_and_one_tar_when_they_leave() {
    use lazarus_format::{chunks, tree_files};
    let bed = bed(&[]);
    dump_leaves_large_pages(&bed);
    let upper = bed.dir.path().join("upper");
    std::fs::create_dir_all(&upper).expect("upper");
    let engine = bed.engine.clone().with_upperdir(&upper);
    let taken = engine.checkpoint("c1", None).await.expect("checkpoint");
    let manifest = stored_manifest(&engine, &taken.digest);
    let (archive, files) = manifest.layers().split_first().expect("layers");
    assert_eq!(archive.media_type(), &oci_spec::image::MediaType::ImageLayerZstd);
    let title = |d: &oci_spec::image::Descriptor| {
        d.annotations().as_ref().and_then(|a| a.get(tree_files::TITLE)).cloned().unwrap_or_default()
    };
    let of = |name: &str| files.iter().filter(|d| title(d) == name).cloned().collect::<Vec<_>>();
    let (pages, zeros) = (of("checkpoint/pages-1.img"), of("checkpoint/pages-2.img"));
    assert_eq!(pages.len() + zeros.len(), files.len(), "{files:?}");
    assert!(pages.len() >= 3, "12 MiB in {} chunks", pages.len());
    assert!(pages.iter().all(|d| d.media_type().to_string() == chunks::MEDIA_TYPE), "incompressible: as it is");
    assert!(zeros.iter().all(|d| d.media_type().to_string() == chunks::MEDIA_TYPE_ZSTD), "compressible: compressed");
    assert_eq!(pages.iter().map(|d| d.size()).sum::<u64>(), 12 << 20);
    assert!(zeros.iter().map(|d| d.size()).sum::<u64>() < 64 << 10, "2 MiB of zeros stored small");
    let expected = noise();
    let stored: Vec<u8> = pages
        .iter()
        .flat_map(|d| std::fs::read(engine.store().blob_path(d.digest().as_ref()).expect("p")).expect("chunk"))
        .collect();
    assert!(stored == expected, "the chunks are the file CRIU wrote, in order");
    assert_eq!(taken.size, manifest.layers().iter().map(|d| d.size()).sum::<u64>(), "the size counts every layer");
    assert_eq!(taken.added, taken.size, "the first checkpoint writes every chunk");
    let small =
        tar_entries(&std::fs::read(engine.store().blob_path(archive.digest().as_ref()).expect("p")).expect("r"));
    assert!(
        small.iter().any(|(p, _)| p == "checkpoint/inventory.img"),
        "{:?}",
        small.iter().map(|e| &e.0).collect::<Vec<_>>()
    );
    assert!(!small.iter().any(|(p, _)| p == "checkpoint/pages-1.img"), "not twice");

    // Restored: the files put together from their chunks.
    let restorer = restorer_over(&bed, &engine);
    let staged = match restorer.prepare(&restore_request("app"), None).await {
        Ok(Some(staged)) => staged,
        other => panic!("not staged: {other:?}"),
    };
    let plan = restorer.commit(staged, "n1").await.expect("plan");
    assert!(std::fs::read(plan.join("tree/checkpoint/pages-1.img")).expect("placed") == expected, "pages-1 whole");
    assert_eq!(std::fs::read(plan.join("tree/checkpoint/inventory.img")).expect("small image"), b"inventory");
    assert_eq!(std::fs::read(plan.join("tree/checkpoint/pages-2.img")).expect("decompressed"), vec![0u8; 2 << 20]);
    std::fs::remove_dir_all(&plan).expect("plan removed");

    // Leaving the node: one tar of the whole tree.
    let exported = bed.dir.path().join("exported.tar");
    crate::cli::export::export(engine.store().as_ref().clone(), taken.reference.clone(), exported.clone())
        .await
        .expect("export");
    let entries = tar_entries(&std::fs::read(&exported).expect("archive"));
    let find =
        |entries: &[(String, Vec<u8>)], name: &str| entries.iter().find(|(p, _)| p == name).map(|(_, d)| d.clone());
    assert!(find(&entries, "checkpoint/pages-1.img") == Some(expected.clone()), "pages-1 in the export");
    assert_eq!(find(&entries, "checkpoint/inventory.img").as_deref(), Some(&b"inventory"[..]));
    assert_eq!(find(&entries, "checkpoint/pages-2.img"), Some(vec![0u8; 2 << 20]));
    let compatible = super::image::compatible(engine.store(), &taken.digest, Compression::Zstd)
        .expect("convert")
        .expect("several layers: converted");
    let converted = stored_manifest(&engine, &compatible.manifest_digest);
    let [layer] = converted.layers().as_slice() else { panic!("one layer: {:?}", converted.layers()) };
    let entries =
        tar_entries(&std::fs::read(engine.store().blob_path(layer.digest().as_ref()).expect("p")).expect("r"));
    assert!(find(&entries, "checkpoint/pages-1.img") == Some(expected.clone()), "pages-1 in the registry's layout");
    assert_eq!(converted.annotations(), manifest.annotations(), "the same checkpoint");

    // The next version, 64 KiB changed: only the chunks around the change are new.
    let second = engine.checkpoint("c1", None).await.expect("second checkpoint");
    let manifest2 = stored_manifest(&engine, &second.digest);
    let old: std::collections::HashSet<String> = pages.iter().map(|d| d.digest().to_string()).collect();
    let pages2: Vec<_> = manifest2.layers().iter().filter(|d| title(d) == "checkpoint/pages-1.img").cloned().collect();
    let new_bytes: u64 = pages2.iter().filter(|d| !old.contains(d.digest().as_ref())).map(|d| d.size()).sum();
    let ours: std::collections::HashSet<String> = pages2.iter().map(|d| d.digest().to_string()).collect();
    let (changed, max) = (6u64 << 20..(6u64 << 20) + (64 << 10), chunks::Chunker::for_size(12 << 20).max_len() as u64);
    let mut offset = 0;
    for chunk in &pages {
        let range = offset..offset + chunk.size();
        offset = range.end;
        // The chunk holding the change and the one after (where the boundaries meet again) may differ.
        let untouched = range.end <= changed.start || range.start >= changed.end + max;
        assert!(!untouched || ours.contains(chunk.digest().as_ref()), "chunk at {range:?} not reused");
    }
    assert!((64 << 10..12 << 20).contains(&new_bytes), "{new_bytes} new bytes");
    let archive2 = &manifest2.layers()[0];
    assert!(second.added >= new_bytes && second.added <= new_bytes + archive2.size(), "added {}", second.added);
    let staged = match restorer.prepare(&restore_request("app"), None).await {
        Ok(Some(staged)) => staged,
        other => panic!("not staged: {other:?}"),
    };
    let plan = restorer.commit(staged, "n2").await.expect("plan");
    assert!(std::fs::read(plan.join("tree/checkpoint/pages-1.img")).expect("placed") == changed_noise(), "v2 whole");
    std::fs::remove_dir_all(&plan).expect("plan removed");

    // A damaged chunk both versions share is found before anything is restored from either.
    let shared = pages2.iter().find(|d| old.contains(d.digest().as_ref())).expect("a shared chunk");
    let blob = engine.store().blob_path(shared.digest().as_ref()).expect("blob");
    let mut damaged = std::fs::read(&blob).expect("chunk");
    damaged[12345] ^= 1;
    std::fs::remove_file(&blob).expect("unlink");
    std::fs::write(&blob, &damaged).expect("damage");
    let err = restorer.prepare(&restore_request("app"), None).await.expect_err("damaged");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert!(err.to_string().contains("(checkpoint/pages-1.img) is damaged"), "{err}");
}
