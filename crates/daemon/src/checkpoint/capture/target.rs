//! Finding the container to checkpoint and what the runtime tells about it.

use super::*;
use lazarus_proto::v1;

/// Everything the runtime tells about a container.
#[derive(Debug)]
pub(super) struct Target {
    pub(super) id: String,
    pub(super) status: v1::ContainerStatus,
    pub(super) pod: v1::PodSandboxStatus,
    pub(super) pid: u32,
    pub(super) spec: serde_json::Value,
    pub(super) runtime_version: String,
}

impl Target {
    /// The container's name (its CRI metadata).
    pub(super) fn container_name(&self) -> String {
        self.status.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default()
    }
}

impl Checkpointer {
    /// The containers of one cut: `asked` first, then — when the pod
    /// checkpoints `asked` and others too — the pod's other running containers
    /// it checkpoints, by name ([`crate::checkpoint::pod_cut`]). A container the
    /// pod's `lazarus.dev/checkpoint-containers` leaves out is checkpointed
    /// alone when asked for by hand.
    pub(super) async fn cut_targets(&self, asked: Target) -> Result<Vec<Target>, CheckpointError> {
        let annotations = &asked.pod.annotations;
        if let Err(reason) = crate::checkpoint::pod_cut::selection(annotations) {
            self.metrics.annotation_rejected(ann::CHECKPOINT_CONTAINERS);
            tracing::warn!(container_id = %asked.id, "{reason}; every container of the pod is checkpointed");
        }
        if !crate::checkpoint::pod_cut::is_selected(annotations, &asked.container_name()) {
            return Ok(vec![asked]);
        }
        let listed = self
            .runtime
            .list_containers(v1::ContainerFilter {
                pod_sandbox_id: asked.pod.id.clone(),
                state: Some(v1::ContainerStateValue { state: v1::ContainerState::ContainerRunning as i32 }),
                ..Default::default()
            })
            .await
            .map_err(|s| runtime_error("ListContainers", &asked.id, &s))?;
        let mut others: Vec<(String, String)> = listed
            .into_iter()
            .filter(|c| c.id != asked.id)
            .map(|c| (c.metadata.map(|m| m.name).unwrap_or_default(), c.id))
            .filter(|(name, _)| crate::checkpoint::pod_cut::is_selected(annotations, name))
            .collect();
        others.sort();
        let mut targets = vec![asked];
        for (_, id) in others {
            match self.inspect(&id).await {
                Ok(target) => targets.push(target),
                // Ended since it was listed: not part of the cut.
                Err(CheckpointError::NotFound { .. } | CheckpointError::NotRunning { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(targets)
    }

    /// Resolves a container id or `namespace/pod/container` to the id of a
    /// running container.
    pub async fn resolve(&self, container: &str) -> Result<String, CheckpointError> {
        let parts: Vec<&str> = container.split('/').collect();
        let filter = match parts.as_slice() {
            [namespace, pod, name] => v1::ContainerFilter {
                state: Some(v1::ContainerStateValue { state: v1::ContainerState::ContainerRunning as i32 }),
                label_selector: [
                    ("io.kubernetes.pod.namespace".to_owned(), (*namespace).to_owned()),
                    ("io.kubernetes.pod.name".to_owned(), (*pod).to_owned()),
                    ("io.kubernetes.container.name".to_owned(), (*name).to_owned()),
                ]
                .into(),
                ..Default::default()
            },
            _ => v1::ContainerFilter { id: container.to_owned(), ..Default::default() },
        };
        let listed =
            self.runtime.list_containers(filter).await.map_err(|s| runtime_error("ListContainers", container, &s))?;
        match listed.as_slice() {
            [] => Err(CheckpointError::NotFound { container: container.to_owned() }),
            [one] => Ok(one.id.clone()),
            many => Err(CheckpointError::Ambiguous { container: container.to_owned(), count: many.len() }),
        }
    }

    pub(super) async fn inspect(&self, container_id: &str) -> Result<Target, CheckpointError> {
        let response = self.runtime.container_status(container_id, true).await.map_err(|s| match s.code() {
            tonic::Code::NotFound => CheckpointError::NotFound { container: container_id.to_owned() },
            _ => runtime_error("ContainerStatus", container_id, &s),
        })?;
        let status = response.status.ok_or_else(|| info_error(container_id, "ContainerStatus without a status"))?;
        if status.state != v1::ContainerState::ContainerRunning as i32 {
            let state = v1::ContainerState::try_from(status.state).map_or("unknown", |s| s.as_str_name());
            return Err(CheckpointError::NotRunning { container_id: container_id.to_owned(), state: state.to_owned() });
        }
        let info: serde_json::Value =
            response.info.get("info").and_then(|text| serde_json::from_str(text).ok()).ok_or_else(|| {
                info_error(container_id, "the runtime's verbose ContainerStatus has no \"info\" JSON")
            })?;
        let pid = info
            .get("pid")
            .and_then(serde_json::Value::as_u64)
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p > 0)
            .ok_or_else(|| info_error(container_id, "no process id in the runtime's container info"))?;
        let sandbox_id = info
            .get("sandboxID")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| info_error(container_id, "no sandboxID in the runtime's container info"))?
            .to_owned();
        let spec = info.get("runtimeSpec").cloned().unwrap_or(serde_json::Value::Null);
        let pod = self
            .runtime
            .pod_sandbox_status(&sandbox_id)
            .await
            .map_err(|s| runtime_error("PodSandboxStatus", container_id, &s))?;
        let pod = pod.status.ok_or_else(|| info_error(container_id, "PodSandboxStatus without a status"))?;
        let mut status = status;
        if status.image_id.is_empty() {
            // containerd 1.6 does not fill image_id; the image store knows it.
            let spec = v1::ImageSpec { image: status.image_ref.clone(), ..Default::default() };
            let image = self.runtime.image_status(&spec).await;
            if let Some(found) = image.ok().and_then(|i| i.image) {
                status.image_id = found.id;
            }
        }
        let version = self.runtime.version().await.map_err(|s| runtime_error("Version", container_id, &s))?;
        Ok(Target {
            id: container_id.to_owned(),
            status,
            pod,
            pid,
            spec,
            runtime_version: format!("{} {}", version.runtime_name, version.runtime_version),
        })
    }
}

pub(super) fn runtime_error(call: &'static str, container: &str, status: &Status) -> CheckpointError {
    CheckpointError::Runtime {
        call,
        container_id: container.to_owned(),
        status: format!("{:?}: {}", status.code(), status.message()),
    }
}

pub(super) fn info_error(container_id: &str, what: &str) -> CheckpointError {
    CheckpointError::Info { container_id: container_id.to_owned(), what: what.to_owned() }
}
