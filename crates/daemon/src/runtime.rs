//! The runtime seam: every CRI and containerd call the checkpoint and
//! restore engines make, as typed methods of one trait.
//!
//! In production the calls go to the runtime socket through [`Upstream`]
//! (CRI `runtime.v1` and containerd's `Tasks` service on the same socket);
//! in tests a recording fake ([`fake`]) answers them from a script, so the
//! engines' decisions — fallback order, rollback, thaw after a failed dump —
//! are checked without containerd, CRIU or root.

use std::future::Future;
use std::pin::Pin;

use lazarus_proto::v1;
use tonic::Status;

use crate::containerd_api::{self, CheckpointOptions, CheckpointTaskRequest, CheckpointTaskResponse};
use crate::containerd_api::{Empty, GetTaskResponse, TaskRequest};
use crate::upstream::Upstream;

#[cfg(test)]
pub mod fake;

/// The answer of one runtime call.
pub type Call<'a, T> = Pin<Box<dyn Future<Output = Result<T, Status>> + Send + 'a>>;

/// The calls the engines make to the container runtime.
pub trait Runtime: Send + Sync + std::fmt::Debug {
    /// CRI `ListContainers`.
    fn list_containers(&self, filter: v1::ContainerFilter) -> Call<'_, Vec<v1::Container>>;
    /// CRI `ListPodSandbox`.
    fn list_pod_sandboxes(&self, filter: v1::PodSandboxFilter) -> Call<'_, Vec<v1::PodSandbox>>;
    /// CRI `ContainerStatus` (`verbose`: with the runtime's `info` JSON).
    fn container_status(&self, container_id: &str, verbose: bool) -> Call<'_, v1::ContainerStatusResponse>;
    /// CRI `PodSandboxStatus` (not verbose).
    fn pod_sandbox_status(&self, pod_sandbox_id: &str) -> Call<'_, v1::PodSandboxStatusResponse>;
    /// CRI `ImageStatus` (not verbose).
    fn image_status(&self, image: &v1::ImageSpec) -> Call<'_, v1::ImageStatusResponse>;
    /// CRI `Version` (API `v1`).
    fn version(&self) -> Call<'_, v1::VersionResponse>;
    /// CRI `RemoveContainer`.
    fn remove_container(&self, container_id: &str) -> Call<'_, ()>;
    /// containerd `Tasks.Pause` (the cgroup freezer).
    fn pause_task(&self, container_id: &str) -> Call<'_, ()>;
    /// containerd `Tasks.Resume`.
    fn resume_task(&self, container_id: &str) -> Call<'_, ()>;
    /// containerd `Tasks.Get`: the init process's status
    /// ([`containerd_api::Process`]; 0 when the answer has no process).
    fn task_status(&self, container_id: &str) -> Call<'_, i32>;
    /// containerd `Tasks.Checkpoint` with runc's options: CRIU dumps into
    /// `options.image_path`, its log and statistics into `options.work_path`.
    fn checkpoint_task(&self, container_id: &str, options: CheckpointOptions) -> Call<'_, ()>;
}

const LIST_CONTAINERS: &str = "/runtime.v1.RuntimeService/ListContainers";
const LIST_POD_SANDBOX: &str = "/runtime.v1.RuntimeService/ListPodSandbox";
const CONTAINER_STATUS: &str = "/runtime.v1.RuntimeService/ContainerStatus";
const POD_SANDBOX_STATUS: &str = "/runtime.v1.RuntimeService/PodSandboxStatus";
const IMAGE_STATUS: &str = "/runtime.v1.ImageService/ImageStatus";
const VERSION: &str = "/runtime.v1.RuntimeService/Version";
const REMOVE_CONTAINER: &str = "/runtime.v1.RuntimeService/RemoveContainer";

/// containerd's native API wants the namespace as metadata.
const NAMESPACE: [(&str, &str); 1] = [("containerd-namespace", containerd_api::K8S_NAMESPACE)];

impl Runtime for Upstream {
    fn list_containers(&self, filter: v1::ContainerFilter) -> Call<'_, Vec<v1::Container>> {
        Box::pin(async move {
            let request = v1::ListContainersRequest { filter: Some(filter) };
            let listed: v1::ListContainersResponse = self.unary(LIST_CONTAINERS, &request, &[]).await?;
            Ok(listed.containers)
        })
    }

    fn list_pod_sandboxes(&self, filter: v1::PodSandboxFilter) -> Call<'_, Vec<v1::PodSandbox>> {
        Box::pin(async move {
            let request = v1::ListPodSandboxRequest { filter: Some(filter) };
            let listed: v1::ListPodSandboxResponse = self.unary(LIST_POD_SANDBOX, &request, &[]).await?;
            Ok(listed.items)
        })
    }

    fn container_status(&self, container_id: &str, verbose: bool) -> Call<'_, v1::ContainerStatusResponse> {
        let request = v1::ContainerStatusRequest { container_id: container_id.to_owned(), verbose };
        Box::pin(async move { self.unary(CONTAINER_STATUS, &request, &[]).await })
    }

    fn pod_sandbox_status(&self, pod_sandbox_id: &str) -> Call<'_, v1::PodSandboxStatusResponse> {
        let request = v1::PodSandboxStatusRequest { pod_sandbox_id: pod_sandbox_id.to_owned(), verbose: false };
        Box::pin(async move { self.unary(POD_SANDBOX_STATUS, &request, &[]).await })
    }

    fn image_status(&self, image: &v1::ImageSpec) -> Call<'_, v1::ImageStatusResponse> {
        let request = v1::ImageStatusRequest { image: Some(image.clone()), verbose: false };
        Box::pin(async move { self.unary(IMAGE_STATUS, &request, &[]).await })
    }

    fn version(&self) -> Call<'_, v1::VersionResponse> {
        Box::pin(async move { self.unary(VERSION, &v1::VersionRequest { version: "v1".into() }, &[]).await })
    }

    fn remove_container(&self, container_id: &str) -> Call<'_, ()> {
        let request = v1::RemoveContainerRequest { container_id: container_id.to_owned() };
        Box::pin(async move {
            self.unary::<_, v1::RemoveContainerResponse>(REMOVE_CONTAINER, &request, &[]).await.map(|_| ())
        })
    }

    fn pause_task(&self, container_id: &str) -> Call<'_, ()> {
        let request = TaskRequest { container_id: container_id.to_owned() };
        Box::pin(
            async move { self.unary::<_, Empty>(containerd_api::TASKS_PAUSE, &request, &NAMESPACE).await.map(|_| ()) },
        )
    }

    fn resume_task(&self, container_id: &str) -> Call<'_, ()> {
        let request = TaskRequest { container_id: container_id.to_owned() };
        Box::pin(
            async move { self.unary::<_, Empty>(containerd_api::TASKS_RESUME, &request, &NAMESPACE).await.map(|_| ()) },
        )
    }

    fn task_status(&self, container_id: &str) -> Call<'_, i32> {
        let request = TaskRequest { container_id: container_id.to_owned() };
        Box::pin(async move {
            let response: GetTaskResponse = self.unary(containerd_api::TASKS_GET, &request, &NAMESPACE).await?;
            Ok(response.process.map_or(0, |p| p.status))
        })
    }

    fn checkpoint_task(&self, container_id: &str, options: CheckpointOptions) -> Call<'_, ()> {
        let request = CheckpointTaskRequest {
            container_id: container_id.to_owned(),
            parent_checkpoint: String::new(),
            options: Some(options.to_any()),
        };
        Box::pin(async move {
            self.unary::<_, CheckpointTaskResponse>(containerd_api::TASKS_CHECKPOINT, &request, &NAMESPACE)
                .await
                .map(|_| ())
        })
    }
}
