//! Several containers of one pod in one cut: all frozen, then all dumped,
//! then all thawed, and restored from the same cut. Real containerd + runc +
//! CRIU through a real `lazarus serve`, driven the way kubelet drives it: the
//! containers of a pod created one after the other, `StopContainer` for all
//! of them at once when the pod goes.
//!
//! The two checkpointed containers write into one `emptyDir` (each its own
//! file, a line per step of its in-memory counter). Cut one at a time, the
//! emptyDir captured with one container would hold the other's file from
//! another instant than the other's memory, and the restore of the second
//! would put back the shared directory over what the first has written since
//! it was restored: either shows as a gap or a repeated line, read from the
//! host. A third container, a sidecar the pod's
//! `lazarus.dev/checkpoint-containers` leaves out, is never checkpointed and
//! starts fresh in the new pod.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use lazarus_e2e::{
    Cri, LazarusProcess, Node, Testbed, check_sequence, container_config, numbers, pod_config, wait_for,
};
use lazarus_proto::v1;

const NAMESPACE: &str = "lazarus-e2e";
const POD: &str = "cut";

/// A counter appended to the emptyDir file `/scratch/<name>` (opened for each
/// line) and written to `/count`, 20 times a second.
fn writer(name: &str) -> String {
    format!(
        "trap 'exit 0' TERM; i=0; \
         while true; do i=$((i+1)); echo $i >> /scratch/{name}; echo $i > /count; usleep 50000; done"
    )
}

/// The sidecar: counts its own steps, touches nothing shared.
const SIDECAR: &str = "trap 'exit 0' TERM; i=0; while true; do i=$((i+1)); echo $i > /count; usleep 50000; done";

struct Bed {
    bed: Testbed,
    dir: tempfile::TempDir,
    cri: Cri,
    lazarus: LazarusProcess,
    image: String,
}

/// A pod's containers, as kubelet created them.
struct Pod {
    id: String,
    /// Container ids by name.
    containers: Vec<(String, String)>,
    /// The host directory of its emptyDir `scratch`.
    scratch: PathBuf,
}

impl Pod {
    fn container(&self, name: &str) -> Result<&str> {
        self.containers.iter().find(|(n, _)| n == name).map(|(_, id)| id.as_str()).context("no such container")
    }
}

impl Bed {
    async fn up() -> Result<Bed> {
        let Node { bed, dir, cri, lazarus } = Node::up("").await?;
        let image = bed.workload_image()?.to_owned();
        Ok(Bed { bed, dir, cri, lazarus, image })
    }

    /// The pod `cut` with `annotations`, its containers `a`, `b` and `log`
    /// created and started one after the other, all three mounting a new
    /// emptyDir at /scratch.
    async fn run_pod(&mut self, annotations: &[(&str, &str)]) -> Result<Pod> {
        let log_dir = self.dir.path().join("logs").join(format!("{POD}-{:x}", lazarus_e2e::rand_u64()));
        let config = pod_config(POD, NAMESPACE, &log_dir, annotations);
        std::fs::create_dir_all(&config.log_directory)?;
        let uid = config.metadata.as_ref().map(|m| m.uid.clone()).unwrap_or_default();
        let scratch = self.dir.path().join("pods").join(uid).join("volumes/kubernetes.io~empty-dir/scratch");
        std::fs::create_dir_all(&scratch)?;
        let id = self.cri.run_pod(&config).await?;
        self.cri.pull(&self.image.clone(), &config).await?;
        let mut containers = Vec::new();
        for (name, script) in [("a", writer("a")), ("b", writer("b")), ("log", SIDECAR.to_owned())] {
            let mut container = container_config(&config, name, &self.image, &["/bin/sh", "-c", &script]);
            container.mounts = vec![v1::Mount {
                container_path: "/scratch".into(),
                host_path: scratch.display().to_string(),
                ..Default::default()
            }];
            let container_id =
                self.cri.create_container(&id, container, &config).await.with_context(|| format!("creating {name}"))?;
            let started = self
                .cri
                .runtime
                .start_container(v1::StartContainerRequest { container_id: container_id.clone() })
                .await;
            if let Err(status) = started {
                bail!("StartContainer of {name}: {:?}: {}", status.code(), status.message());
            }
            containers.push((name.to_owned(), container_id));
        }
        Ok(Pod { id, containers, scratch })
    }

    async fn counter(&mut self, id: &str) -> Result<u64> {
        let cri = self.cri.clone();
        wait_for(Duration::from_secs(10), &format!("a readable /count in {id}"), || {
            let mut cri = cri.clone();
            let id = id.to_owned();
            async move {
                let (code, out, _) = cri.exec(&id, &["cat", "/count"]).await.ok()?;
                if code == 0 { out.trim().parse().ok() } else { None }
            }
        })
        .await
    }

    async fn counter_at_least(&mut self, id: &str, n: u64) -> Result<u64> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let value = self.counter(id).await?;
            if value >= n {
                return Ok(value);
            }
            ensure!(Instant::now() < deadline, "/count of {id} stays at {value}, below {n}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn lazarus_cli(&self, args: &[&str]) -> Result<String> {
        let out = lazarus_e2e::lazarus_cli(&self.bed, self.dir.path(), args)?;
        ensure!(out.status.success(), "lazarus {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8(out.stdout)?)
    }

    /// The tags of the checkpoints of `container` in the local store, oldest first.
    fn tags(&self, container: &str) -> Result<Vec<String>> {
        let key = format!("{NAMESPACE}/{POD}/{container}");
        let listed = self.lazarus_cli(&["checkpoints", "list", &key])?;
        let prefix = format!("{key}:");
        let mut tags: Vec<String> = listed
            .lines()
            .filter_map(|l| l.split_whitespace().next()?.strip_prefix(prefix.as_str()).map(str::to_owned))
            .collect();
        tags.sort();
        Ok(tags)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pods_containers_are_cut_together_and_come_back_from_the_same_cut() -> Result<()> {
    let _serial = lazarus_e2e::serial().await;
    let mut bed = Bed::up().await?;
    bed.cri.sweep_test_pods().await?;
    let checkpointed = [("lazarus.dev/checkpoint-containers", "a,b"), ("lazarus.dev/checkpoint-on-stop", "true")];
    let pod = bed.run_pod(&checkpointed).await?;
    let (a, b, log) =
        (pod.container("a")?.to_owned(), pod.container("b")?.to_owned(), pod.container("log")?.to_owned());
    bed.counter_at_least(&a, 10).await?;
    bed.counter_at_least(&b, 10).await?;

    // By hand: a checkpoint of `a` is a cut of `a` and `b`, one tag, the sidecar left out.
    let printed = bed.lazarus_cli(&["checkpoint", &format!("{NAMESPACE}/{POD}/a"), "--keep", "3"])?;
    let references: Vec<&str> = printed.lines().filter(|l| l.starts_with("local:")).collect();
    let [ref_a, ref_b] = references.as_slice() else {
        bail!("expected the checkpoints of a and b, printed {printed:?}")
    };
    let tag_of = |r: &str| r.split('@').next().and_then(|n| n.rsplit_once(':')).map(|(_, t)| t.to_owned());
    ensure!(ref_a.contains("/cut/a:") && ref_b.contains("/cut/b:"), "{printed}");
    ensure!(tag_of(ref_a) == tag_of(ref_b), "one cut, one tag: {printed}");
    let inspected = bed.lazarus_cli(&["checkpoints", "inspect", ref_b])?;
    ensure!(inspected.contains("lazarus.dev/pod-cut") && inspected.contains("a,b"), "the cut is named: {inspected}");
    ensure!(bed.tags("log")?.is_empty(), "the sidecar has no checkpoint");

    // The pod goes: kubelet stops its containers in parallel, each with its own
    // grace period. The first StopContainer takes the cut; the other joins it.
    // The sidecar has counted well past where a fresh one would be at its first read.
    let sidecar_before = bed.counter_at_least(&log, 100).await?;
    let stops: Vec<_> = [a.clone(), b.clone(), log.clone()]
        .into_iter()
        .map(|id| {
            let mut runtime = bed.cri.runtime.clone();
            tokio::spawn(async move {
                runtime
                    .stop_container(v1::StopContainerRequest { container_id: id.clone(), timeout: 10 })
                    .await
                    .map(drop)
            })
        })
        .collect();
    for stop in stops {
        stop.await?.context("StopContainer")?;
    }
    let (tags_a, tags_b) = (bed.tags("a")?, bed.tags("b")?);
    ensure!(
        tags_a.len() == 2 && tags_a == tags_b,
        "one cut by hand and one before the stop, the same tags: a {tags_a:?}, b {tags_b:?}"
    );
    let stop_tag = tags_a.last().cloned().context("a stop cut")?;
    ensure!(bed.tags("log")?.is_empty(), "the sidecar is never checkpointed");
    let log_text = bed.lazarus.log_text();
    ensure!(
        !log_text.lines().any(|l| l.contains("checkpoint started") && l.contains(&log)),
        "the sidecar was part of a cut"
    );
    check_sequence("old /scratch/a", &numbers(&pod.scratch.join("a"))?)?;
    bed.cri.remove_pod(&pod.id).await?;

    // The new pod: a and b from `latest` — the stop cut, both — the sidecar fresh.
    let restoring = [
        ("lazarus.dev/checkpoint-containers", "a,b"),
        ("lazarus.dev/restore-from.a", "latest"),
        ("lazarus.dev/restore-from.b", "latest"),
        ("lazarus.dev/restore-policy", "required"),
    ];
    let restored = bed.run_pod(&restoring).await.context("restoring the pod")?;
    let (new_a, new_b, new_log) = (
        restored.container("a")?.to_owned(),
        restored.container("b")?.to_owned(),
        restored.container("log")?.to_owned(),
    );
    let resumed_a = bed.counter(&new_a).await?;
    let resumed_b = bed.counter(&new_b).await?;
    ensure!(resumed_a >= 10 && resumed_b >= 10, "restored at a={resumed_a} b={resumed_b}: a counter started over");
    let log_text = bed.lazarus.log_text();
    for container in ["a", "b"] {
        let wanted = format!("{NAMESPACE}/{POD}/{container}:{stop_tag}");
        ensure!(
            log_text.lines().any(|l| l.contains("container restored from its checkpoint") && l.contains(&wanted)),
            "{container} was not restored from the stop cut {stop_tag}"
        );
    }
    let fresh = bed.counter(&new_log).await?;
    ensure!(fresh < sidecar_before, "the sidecar started fresh: at {fresh}, it had counted to {sidecar_before}");
    ensure!(
        !log_text.lines().any(|l| l.contains("container restored from its checkpoint") && l.contains("/cut/log")),
        "the sidecar was restored"
    );
    // From the host: both files of the shared emptyDir go on without a gap or a
    // repeated line past the restore — the cut's instant for both, and what `a`
    // wrote before `b` was restored is still there.
    let after_a = bed.counter_at_least(&new_a, resumed_a + 20).await?;
    let after_b = bed.counter_at_least(&new_b, resumed_b + 20).await?;
    let lines_a = check_sequence("/scratch/a", &numbers(&restored.scratch.join("a"))?)?;
    let lines_b = check_sequence("/scratch/b", &numbers(&restored.scratch.join("b"))?)?;
    ensure!(
        lines_a + 1 >= after_a && lines_b + 1 >= after_b,
        "files behind the counters: a {lines_a}/{after_a}, b {lines_b}/{after_b}"
    );
    bed.cri.remove_pod(&restored.id).await?;
    Ok(())
}
