//! A restored container sees its own cgroups, as a freshly started one does:
//! `/sys/fs/cgroup/<controller>` inside is the container's cgroup (memory and
//! CPU limits read there are the container's), not the hierarchy root or the
//! runtime's cgroup. Programs that size themselves from cgroups (JVM, Go,
//! numpy's thread pools) read the limits there. Real containerd + runc + CRIU
//! of the test bed (cgroup v1 hierarchies plus cgroup2 at
//! `/sys/fs/cgroup/unified`), driven through `lazarus serve` as kubelet does.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use lazarus_e2e::{Cri, LazarusProcess, Node, Testbed, container_config, pod_config, wait_for};
use lazarus_proto::v1;

const NAMESPACE: &str = "lazarus-e2e";
const COUNTER: &str = "i=0; while true; do echo $i > /count; i=$((i+1)); sleep 1; done";
const MEMORY_LIMIT: i64 = 256 * 1024 * 1024;
const CPU_QUOTA: i64 = 50_000;
const CPU_PERIOD: i64 = 100_000;
/// What the container reads of its cgroups, one `name=value` per line.
const VIEW: &str = "echo memory.limit=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes); \
    echo cpu.quota=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us); \
    echo cpu.period=$(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us); \
    for c in cpu memory pids; do echo $c.holds_self=$(grep -cx $$ /sys/fs/cgroup/$c/cgroup.procs); done; \
    for c in cpu cpuacct cpuset memory pids blkio devices freezer; do \
      echo $c.subdirs=$(find /sys/fs/cgroup/$c -mindepth 1 -maxdepth 1 -type d | wc -l); done";

struct Bed {
    bed: Testbed,
    dir: tempfile::TempDir,
    cri: Cri,
    _lazarus: LazarusProcess,
    image: String,
}

impl Bed {
    async fn up() -> Result<Bed> {
        let Node { bed, dir, cri, lazarus } = Node::up("").await?;
        let image = bed.workload_image()?.to_owned();
        Ok(Bed { bed, dir, cri, _lazarus: lazarus, image })
    }

    /// A pod with one counter container limited to 256 MiB and half a CPU;
    /// returns (pod id, container id, the pod's cgroup parent).
    async fn sized(&mut self, name: &str, annotations: &[(&str, &str)]) -> Result<(String, String, String)> {
        let pod = pod_config(name, NAMESPACE, &self.dir.path().join("pods").join(name), annotations);
        std::fs::create_dir_all(&pod.log_directory)?;
        let pod_id = self.cri.run_pod(&pod).await?;
        let image = self.image.clone();
        self.cri.pull(&image, &pod).await?;
        let mut config = container_config(&pod, "sized", &image, &["/bin/sh", "-c", COUNTER]);
        let resources = config.linux.as_mut().and_then(|l| l.resources.as_mut()).context("resources")?;
        resources.memory_limit_in_bytes = MEMORY_LIMIT;
        resources.cpu_quota = CPU_QUOTA;
        resources.cpu_period = CPU_PERIOD;
        let id = self.cri.create_container(&pod_id, config, &pod).await?;
        self.cri.runtime.start_container(v1::StartContainerRequest { container_id: id.clone() }).await?;
        let parent = pod.linux.as_ref().map(|l| l.cgroup_parent.clone()).unwrap_or_default();
        Ok((pod_id, id, parent))
    }

    /// The container's view of its cgroups.
    async fn view(&mut self, id: &str) -> Result<String> {
        let (code, out, err) = self.cri.exec(id, &["/bin/sh", "-c", VIEW]).await?;
        ensure!(code == 0, "reading the cgroup view failed ({code}): {err}");
        Ok(out)
    }

    fn checkpoint(&self, container_id: &str) -> Result<String> {
        lazarus_e2e::checkpoint_cli(&self.bed, self.dir.path(), container_id, &[])
    }

    async fn remove_pod(&mut self, pod_id: &str) -> Result<()> {
        self.cri.runtime.stop_pod_sandbox(v1::StopPodSandboxRequest { pod_sandbox_id: pod_id.to_owned() }).await?;
        self.cri.runtime.remove_pod_sandbox(v1::RemovePodSandboxRequest { pod_sandbox_id: pod_id.to_owned() }).await?;
        Ok(())
    }

    async fn pid(&mut self, id: &str) -> Result<u32> {
        let status = self
            .cri
            .runtime
            .container_status(v1::ContainerStatusRequest { container_id: id.to_owned(), verbose: true })
            .await?
            .into_inner();
        let info: serde_json::Value = serde_json::from_str(status.info.get("info").context("no info")?)?;
        info.get("pid").and_then(serde_json::Value::as_u64).and_then(|p| u32::try_from(p).ok()).context("no pid")
    }
}

/// The cgroup of `pid` in each v1 hierarchy, as the host sees it.
fn host_cgroups(pid: u32) -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            (!controllers.is_empty()).then(|| (controllers.to_owned(), path.to_owned()))
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_container_sees_its_own_cgroups_and_limits() -> Result<()> {
    let _serial = lazarus_e2e::serial().await;
    let mut bed = Bed::up().await?;

    let (pod_id, id, _) = bed.sized("cgroup-fresh", &[]).await?;
    let fresh = bed.view(&id).await?;
    println!("fresh container's view:\n{fresh}");
    ensure!(fresh.contains(&format!("memory.limit={MEMORY_LIMIT}\n")), "the fresh container's memory limit: {fresh}");
    ensure!(fresh.contains(&format!("cpu.quota={CPU_QUOTA}\n")), "the fresh container's CPU quota: {fresh}");
    wait_for(Duration::from_secs(10), "the counter", || {
        let mut cri = bed.cri.clone();
        let id = id.clone();
        async move { cri.read_counter(&id).await.ok().filter(|c| *c >= 2) }
    })
    .await?;
    let reference = bed.checkpoint(&id)?;
    bed.remove_pod(&pod_id).await?;

    // Two generations: the restored container is checkpointed and restored
    // again (a periodic checkpoint of a job that came back once).
    let mut reference = reference;
    let mut last_count = 2;
    for generation in 1..=2 {
        let name = format!("cgroup-restored-{generation}");
        let (pod_id, id, parent) = bed.sized(&name, &[("lazarus.dev/restore-from", &reference)]).await?;
        let counter = bed.cri.read_counter(&id).await?;
        ensure!(counter >= last_count, "generation {generation} not restored: the counter reads {counter}");
        let restored = bed.view(&id).await?;
        println!("generation {generation}: restored container's view:\n{restored}");
        ensure!(
            restored == fresh,
            "generation {generation}: the restored container's cgroup view differs from a fresh one's:\n\
             fresh:\n{fresh}\nrestored:\n{restored}"
        );
        // The host side: the restored process is in the new pod's cgroups.
        let pid = bed.pid(&id).await?;
        for (controllers, path) in host_cgroups(pid)? {
            if controllers.contains("memory") || controllers.contains("cpu") || controllers.contains("pids") {
                ensure!(
                    path.starts_with(&parent),
                    "{controllers}: the restored process is in {path}, not under {parent}"
                );
            }
        }
        last_count = counter + 1;
        wait_for(Duration::from_secs(10), "the restored counter", || {
            let mut cri = bed.cri.clone();
            let id = id.clone();
            async move { cri.read_counter(&id).await.ok().filter(|c| *c >= last_count) }
        })
        .await?;
        reference = bed.checkpoint(&id)?;
        bed.remove_pod(&pod_id).await?;
    }
    Ok(())
}
