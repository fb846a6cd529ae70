//! The CRI `ContainerStatus` as containerd writes it into `status.dump`.
//!
//! containerd 2.x marshals the cri-api Go struct with `encoding/json`, and its
//! CRI restore (2.1 – 2.3) unmarshals `status.dump` into the same struct. The
//! keys are the struct's json tags (the proto field names: `created_at`,
//! `image_ref`, `log_path`, except `uidMappings`/`gidMappings` of a mount),
//! every field is `omitempty` (zero values are left out), enums are numbers,
//! and `image` is an `ImageSpec` object. lazarus vendors the same cri-api
//! (v0.32) containerd 2.1 builds with. Windows resources are left out: the
//! checkpoints are of Linux containers.

use std::collections::HashMap;

use lazarus_proto::v1;
use serde_json::{Map, Value};

/// A JSON object with Go's `omitempty`: zero values are not written.
#[derive(Default)]
struct GoObject(Map<String, Value>);

impl GoObject {
    fn put(mut self, key: &str, value: Value) -> Self {
        self.0.insert(key.to_owned(), value);
        self
    }
    fn str(self, key: &str, value: &str) -> Self {
        if value.is_empty() { self } else { self.put(key, value.into()) }
    }
    fn int(self, key: &str, value: i64) -> Self {
        if value == 0 { self } else { self.put(key, value.into()) }
    }
    fn uint(self, key: &str, value: u64) -> Self {
        if value == 0 { self } else { self.put(key, value.into()) }
    }
    fn bool(self, key: &str, value: bool) -> Self {
        if value { self.put(key, true.into()) } else { self }
    }
    fn map(self, key: &str, value: &HashMap<String, String>) -> Self {
        if value.is_empty() {
            return self;
        }
        let map: Map<String, Value> = value.iter().map(|(k, v)| (k.clone(), Value::from(v.as_str()))).collect();
        self.put(key, Value::Object(map))
    }
    fn object(self, key: &str, value: Option<Value>) -> Self {
        match value {
            Some(v) => self.put(key, v),
            None => self,
        }
    }
    fn array(self, key: &str, value: Vec<Value>) -> Self {
        if value.is_empty() { self } else { self.put(key, Value::Array(value)) }
    }
    fn done(self) -> Value {
        Value::Object(self.0)
    }
}

fn image_spec(spec: &v1::ImageSpec) -> Value {
    GoObject::default()
        .str("image", &spec.image)
        .map("annotations", &spec.annotations)
        .str("user_specified_image", &spec.user_specified_image)
        .str("runtime_handler", &spec.runtime_handler)
        .done()
}

fn id_mappings(mappings: &[v1::IdMapping]) -> Vec<Value> {
    mappings
        .iter()
        .map(|m| {
            GoObject::default()
                .uint("host_id", m.host_id.into())
                .uint("container_id", m.container_id.into())
                .uint("length", m.length.into())
                .done()
        })
        .collect()
}

fn mount(m: &v1::Mount) -> Value {
    GoObject::default()
        .str("container_path", &m.container_path)
        .str("host_path", &m.host_path)
        .bool("readonly", m.readonly)
        .bool("selinux_relabel", m.selinux_relabel)
        .int("propagation", m.propagation.into())
        .array("uidMappings", id_mappings(&m.uid_mappings))
        .array("gidMappings", id_mappings(&m.gid_mappings))
        .bool("recursive_read_only", m.recursive_read_only)
        .object("image", m.image.as_ref().map(image_spec))
        .done()
}

fn linux_resources(r: &v1::LinuxContainerResources) -> Value {
    let hugepages = r
        .hugepage_limits
        .iter()
        .map(|h| GoObject::default().str("page_size", &h.page_size).uint("limit", h.limit).done())
        .collect();
    GoObject::default()
        .int("cpu_period", r.cpu_period)
        .int("cpu_quota", r.cpu_quota)
        .int("cpu_shares", r.cpu_shares)
        .int("memory_limit_in_bytes", r.memory_limit_in_bytes)
        .int("oom_score_adj", r.oom_score_adj)
        .str("cpuset_cpus", &r.cpuset_cpus)
        .str("cpuset_mems", &r.cpuset_mems)
        .array("hugepage_limits", hugepages)
        .map("unified", &r.unified)
        .int("memory_swap_limit_in_bytes", r.memory_swap_limit_in_bytes)
        .done()
}

fn user(u: &v1::ContainerUser) -> Value {
    let linux = u.linux.as_ref().map(|l| {
        GoObject::default()
            .int("uid", l.uid)
            .int("gid", l.gid)
            .array("supplemental_groups", l.supplemental_groups.iter().map(|g| Value::from(*g)).collect())
            .done()
    });
    GoObject::default().object("linux", linux).done()
}

/// `status` as containerd's `json.Marshal(status)` writes it.
pub(super) fn container_status(status: &v1::ContainerStatus) -> Value {
    let metadata = status
        .metadata
        .as_ref()
        .map(|m| GoObject::default().str("name", &m.name).uint("attempt", m.attempt.into()).done());
    let resources = status
        .resources
        .as_ref()
        .map(|r| GoObject::default().object("linux", r.linux.as_ref().map(linux_resources)).done());
    GoObject::default()
        .str("id", &status.id)
        .object("metadata", metadata)
        .int("state", status.state.into())
        .int("created_at", status.created_at)
        .int("started_at", status.started_at)
        .int("finished_at", status.finished_at)
        .int("exit_code", status.exit_code.into())
        .object("image", status.image.as_ref().map(image_spec))
        .str("image_ref", &status.image_ref)
        .str("reason", &status.reason)
        .str("message", &status.message)
        .map("labels", &status.labels)
        .map("annotations", &status.annotations)
        .array("mounts", status.mounts.iter().map(mount).collect())
        .str("log_path", &status.log_path)
        .object("resources", resources)
        .str("image_id", &status.image_id)
        .object("user", status.user.as_ref().map(user))
        .done()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_types_are_the_go_structs() {
        let status = v1::ContainerStatus {
            id: "c1".into(),
            metadata: Some(v1::ContainerMetadata { name: "app".into(), attempt: 2 }),
            state: v1::ContainerState::ContainerRunning as i32,
            created_at: 1_700_000_000_123_456_789,
            started_at: 1_700_000_001_000_000_000,
            image: Some(v1::ImageSpec {
                image: "reg/app:1".into(),
                user_specified_image: "reg/app:1".into(),
                ..Default::default()
            }),
            image_ref: "reg/app@sha256:ab".into(),
            image_id: "sha256:cd".into(),
            labels: [("io.kubernetes.pod.namespace".to_owned(), "team".to_owned())].into(),
            mounts: vec![v1::Mount {
                container_path: "/data".into(),
                host_path: "/srv/data".into(),
                readonly: true,
                propagation: v1::MountPropagation::PropagationHostToContainer as i32,
                uid_mappings: vec![v1::IdMapping { host_id: 1000, container_id: 0, length: 1 }],
                ..Default::default()
            }],
            log_path: "/var/log/pods/x/app/2.log".into(),
            resources: Some(v1::ContainerResources {
                linux: Some(v1::LinuxContainerResources {
                    cpu_shares: 2,
                    memory_limit_in_bytes: 1 << 30,
                    ..Default::default()
                }),
                windows: None,
            }),
            user: Some(v1::ContainerUser {
                linux: Some(v1::LinuxContainerUser { uid: 0, gid: 0, supplemental_groups: vec![10] }),
            }),
            ..Default::default()
        };
        let json = container_status(&status);
        let expected = serde_json::json!({
            "id": "c1",
            "metadata": {"name": "app", "attempt": 2},
            "state": 1,
            "created_at": 1_700_000_000_123_456_789_i64,
            "started_at": 1_700_000_001_000_000_000_i64,
            "image": {"image": "reg/app:1", "user_specified_image": "reg/app:1"},
            "image_ref": "reg/app@sha256:ab",
            "image_id": "sha256:cd",
            "labels": {"io.kubernetes.pod.namespace": "team"},
            "mounts": [{
                "container_path": "/data",
                "host_path": "/srv/data",
                "readonly": true,
                "propagation": 1,
                "uidMappings": [{"host_id": 1000, "length": 1}],
            }],
            "log_path": "/var/log/pods/x/app/2.log",
            "resources": {"linux": {"cpu_shares": 2, "memory_limit_in_bytes": 1_073_741_824}},
            "user": {"linux": {"supplemental_groups": [10]}},
        });
        assert_eq!(json, expected);
    }

    #[test]
    fn zero_values_are_left_out() {
        assert_eq!(container_status(&v1::ContainerStatus::default()), serde_json::json!({}));
    }
}
