//! Checkpoint identity for pods re-created under new names: a Job's retried
//! pod (new name, same `batch.kubernetes.io/job-name` label) and pods carrying
//! `lazarus.dev/checkpoint-name` find their `latest` checkpoint; the namespace
//! still binds; a malformed name is refused with its rule. Real containerd +
//! runc + CRIU of the test bed, driven through `lazarus serve` as kubelet does.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use lazarus_e2e::{Cri, LazarusProcess, Node, Testbed, container_config, pod_config, wait_for};
use lazarus_proto::v1;

const NAMESPACE: &str = "lazarus-e2e";
const OTHER_NAMESPACE: &str = "lazarus-e2e-other";
const COUNTER: &str = "i=0; while true; do echo $i > /count; echo count $i; i=$((i+1)); sleep 1; done";
const JOB_LABEL: &str = "batch.kubernetes.io/job-name";

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

    /// A pod as a controller makes it: `name`, with `labels` added to kubelet's.
    fn pod(
        &self,
        name: &str,
        namespace: &str,
        labels: &[(&str, &str)],
        annotations: &[(&str, &str)],
    ) -> v1::PodSandboxConfig {
        let mut pod = pod_config(name, namespace, &self.dir.path().join("pods").join(name), annotations);
        pod.labels.extend(labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        pod
    }

    /// A running counter "worker" in a new pod; returns (pod id, container id).
    async fn counter(&mut self, pod: &v1::PodSandboxConfig) -> Result<(String, String)> {
        std::fs::create_dir_all(&pod.log_directory)?;
        let pod_id = self.cri.run_pod(pod).await?;
        let image = self.image.clone();
        self.cri.pull(&image, pod).await?;
        let config = container_config(pod, "worker", &image, &["/bin/sh", "-c", COUNTER]);
        let id = self.cri.create_container(&pod_id, config, pod).await?;
        self.cri.runtime.start_container(v1::StartContainerRequest { container_id: id.clone() }).await?;
        Ok((pod_id, id))
    }

    async fn counter_at_least(&self, id: &str, n: u64) -> Result<u64> {
        let cri = self.cri.clone();
        wait_for(Duration::from_secs(30), &format!("the counter to reach {n}"), || {
            let mut cri = cri.clone();
            let id = id.to_owned();
            async move { cri.read_counter(&id).await.ok().filter(|c| *c >= n) }
        })
        .await
    }

    /// `lazarus checkpoint ID` against the daemon's store; returns the reference.
    fn checkpoint(&self, container_id: &str) -> Result<String> {
        lazarus_e2e::checkpoint_cli(&self.bed, self.dir.path(), container_id, &[])
    }

    async fn remove_pod(&mut self, pod_id: &str) -> Result<()> {
        self.cri.runtime.stop_pod_sandbox(v1::StopPodSandboxRequest { pod_sandbox_id: pod_id.to_owned() }).await?;
        self.cri.runtime.remove_pod_sandbox(v1::RemovePodSandboxRequest { pod_sandbox_id: pod_id.to_owned() }).await?;
        Ok(())
    }

    /// Checkpoints the counter of a new pod `pod`, removes the pod; returns
    /// the reference and the counter value before the checkpoint.
    async fn checkpointed(&mut self, pod: &v1::PodSandboxConfig) -> Result<(String, u64)> {
        let (pod_id, id) = self.counter(pod).await?;
        let before = self.counter_at_least(&id, 3).await?;
        let reference = self.checkpoint(&id)?;
        self.remove_pod(&pod_id).await?;
        Ok((reference, before))
    }

    /// Starts the counter of a new pod `pod` and returns its first value.
    async fn first_value(&mut self, pod: &v1::PodSandboxConfig) -> Result<(String, u64)> {
        let (pod_id, id) = self.counter(pod).await?;
        let value = self.counter_at_least(&id, 0).await?;
        Ok((pod_id, value))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_job_pod_with_a_new_name_restores_its_jobs_latest() -> Result<()> {
    let _serial = lazarus_e2e::serial().await;
    let mut bed = Bed::up().await?;
    let latest = [("lazarus.dev/restore-from", "latest")];
    let job = format!("assembly-{:x}", lazarus_e2e::rand_u64() & 0xffff);

    // The Job's first pod: checkpointed under the Job's name, not the pod's.
    let first = bed.pod(&format!("{job}-x7k2q"), NAMESPACE, &[(JOB_LABEL, &job)], &latest);
    let (reference, before) = bed.checkpointed(&first).await?;
    println!("first pod checkpointed: {reference} at {before}");
    ensure!(
        reference.starts_with(&format!("local:{NAMESPACE}/{job}/worker:")),
        "the checkpoint is not kept under the Job's name: {reference}"
    );

    // The retried pod has a new name: `latest` finds the Job's checkpoint.
    let retry = bed.pod(&format!("{job}-p9m4z"), NAMESPACE, &[(JOB_LABEL, &job)], &latest);
    let (pod_id, value) = bed.first_value(&retry).await?;
    println!("retried pod's counter starts at {value}");
    ensure!(value >= before, "the retried Job pod did not continue from {before}: its counter reads {value}");
    bed.remove_pod(&pod_id).await?;

    // Same Job name in another namespace: the identity never crosses it (fresh start).
    let stranger = bed.pod(&format!("{job}-zz1aa"), OTHER_NAMESPACE, &[(JOB_LABEL, &job)], &latest);
    let (pod_id, value) = bed.first_value(&stranger).await?;
    ensure!(value < before, "a pod of another namespace restored {NAMESPACE}'s checkpoint (counter {value})");
    bed.remove_pod(&pod_id).await?;

    // A pod without the label, named like neither, finds nothing: fresh.
    let unrelated = bed.pod(&format!("{job}-other"), NAMESPACE, &[], &latest);
    let (pod_id, value) = bed.first_value(&unrelated).await?;
    ensure!(value < before, "a pod of another identity restored the Job's checkpoint (counter {value})");
    bed.remove_pod(&pod_id).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checkpoint_name_annotation_names_the_history_and_is_validated() -> Result<()> {
    let _serial = lazarus_e2e::serial().await;
    let mut bed = Bed::up().await?;
    let name = format!("genome-run-{:x}", lazarus_e2e::rand_u64() & 0xffff);
    let annotated = [("lazarus.dev/checkpoint-name", name.as_str()), ("lazarus.dev/restore-from", "latest")];

    let first = bed.pod("workflow-step-a1", NAMESPACE, &[], &annotated);
    let (reference, before) = bed.checkpointed(&first).await?;
    ensure!(
        reference.starts_with(&format!("local:{NAMESPACE}/{name}/worker:")),
        "the checkpoint is not kept under the annotation's name: {reference}"
    );
    let next = bed.pod("workflow-step-b2", NAMESPACE, &[], &annotated);
    let (pod_id, value) = bed.first_value(&next).await?;
    println!("{reference} at {before}; the next pod's counter starts at {value}");
    ensure!(value >= before, "the annotated pod did not continue from {before}: its counter reads {value}");
    bed.remove_pod(&pod_id).await?;

    // A malformed name: CreateContainer refused with the rule, nothing created.
    let bad = bed.pod(
        "workflow-step-c3",
        NAMESPACE,
        &[],
        &[("lazarus.dev/checkpoint-name", "Not/A-Name"), ("lazarus.dev/restore-from", "latest")],
    );
    std::fs::create_dir_all(&bad.log_directory)?;
    let pod_id = bed.cri.run_pod(&bad).await?;
    let config = container_config(&bad, "worker", &bed.image, &["/bin/sh", "-c", COUNTER]);
    let request =
        v1::CreateContainerRequest { pod_sandbox_id: pod_id.clone(), config: Some(config), sandbox_config: Some(bad) };
    let status = match bed.cri.runtime.create_container(request).await {
        Ok(created) => bail!("a malformed checkpoint name was accepted: {}", created.into_inner().container_id),
        Err(status) => status,
    };
    println!("malformed name: {:?} {}", status.code(), status.message());
    ensure!(status.code() == tonic::Code::InvalidArgument, "code {:?}", status.code());
    ensure!(
        status.message().contains("lazarus.dev/checkpoint-name") && status.message().contains("a-z, 0-9"),
        "the refusal does not name the annotation and its rule: {}",
        status.message()
    );
    let filter = v1::ContainerFilter { pod_sandbox_id: pod_id.clone(), ..Default::default() };
    let left = bed.cri.runtime.list_containers(v1::ListContainersRequest { filter: Some(filter) }).await?;
    ensure!(left.into_inner().containers.is_empty(), "a refused restore left a container");
    bed.remove_pod(&pod_id).await.context("removing the refused pod")?;
    Ok(())
}
