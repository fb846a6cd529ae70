//! Taking one checkpoint of a running container.
//!
//! 1. find the container and its pod through the CRI (same socket);
//! 2. the cut, one instant ([`super::freeze`]): the container is paused
//!    (`Tasks.Pause`), CRIU dumps it through containerd's task API
//!    (`Tasks.Checkpoint`, runc `CheckpointOptions{exit: false, open_tcp,
//!    file_locks, image_path, work_path}`, which works on containerd 1.6, 1.7
//!    and 2.x) and leaves it frozen, the writable layer's changes are
//!    captured, and only then is it resumed (`Tasks.Resume`);
//! 3. spec, CRI status and metadata, while it runs again;
//! 4. packaged as an OCI image (after the container runs again) and
//!    committed to the node-local store, then retention;
//! 5. if the pod names a repository (or the caller does), pushed to that
//!    registry from the store's files, then registry retention. A failed push
//!    never undoes the local checkpoint.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use lazarus_proto::v1;
use serde_json::json;
use tonic::Status;

use super::annotations::{self as ann, files};
use super::freeze::{self, FreezeError};
use super::image::{self, PackageError};
use super::locks::{self, LockError};
use super::markers::Markers;
use crate::containerd_api::CheckpointOptions;
use crate::metrics::{Metrics, Trigger};
use crate::registry::{Reference, RegistryClient, RegistryError, RegistrySettings};
use crate::rootfs_diff;
use crate::runtime::Runtime;
use crate::store::{Retention, Store, StoreError};

/// Layer compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// zstd (default).
    #[default]
    Zstd,
    /// gzip, for consumers without zstd.
    Gzip,
}

impl std::str::FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "zstd" => Ok(Compression::Zstd),
            "gzip" => Ok(Compression::Gzip),
            other => Err(format!("unknown compression {other:?}: expected \"zstd\" or \"gzip\"")),
        }
    }
}

/// What went wrong while checkpointing one container.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// No such container.
    #[error("container {container} not found")]
    NotFound {
        /// What was asked for.
        container: String,
    },
    /// `namespace/pod/container` matched more than one running container.
    #[error("{container} matches {count} running containers; use a container id")]
    Ambiguous {
        /// What was asked for.
        container: String,
        /// How many.
        count: usize,
    },
    /// Only running containers can be checkpointed.
    #[error("container {container_id} is {state}, not running")]
    NotRunning {
        /// The container.
        container_id: String,
        /// Its state.
        state: String,
    },
    /// A CRI call to the runtime failed.
    #[error("{call} for container {container_id}: {status}")]
    Runtime {
        /// Which call.
        call: &'static str,
        /// The container.
        container_id: String,
        /// The runtime's answer.
        status: String,
    },
    /// CRIU (through containerd and runc) failed to dump.
    #[error("CRIU dump of container {container_id} failed: {message}{log}")]
    Criu {
        /// The container.
        container_id: String,
        /// containerd's error.
        message: String,
        /// The relevant lines of CRIU's dump.log, if it could be read.
        log: String,
    },
    /// The runtime's container info lacks something lazarus needs.
    #[error("container {container_id}: {what}")]
    Info {
        /// The container.
        container_id: String,
        /// What is missing or malformed.
        what: String,
    },
    /// Reading the writable layer.
    #[error("capturing the writable layer of container {container_id}: {source}")]
    Rootfs {
        /// The container.
        container_id: String,
        /// Why.
        source: rootfs_diff::RootfsDiffError,
    },
    /// Filesystem work in the staging directory.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was done.
        action: &'static str,
        /// Where.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Concurrency limits.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// Freezing or thawing the container around the cut.
    #[error(transparent)]
    Freeze(#[from] FreezeError),
    /// kubelet has asked to stop the container: its checkpoint before the
    /// stop is its last (a checkpoint taken while it shuts down would restore
    /// a program into its own shutdown).
    #[error(
        "container {container_id} is being stopped (StopContainer received); its checkpoint before the stop is its last"
    )]
    Stopping {
        /// The container.
        container_id: String,
    },
    /// Packaging the image.
    #[error("packaging the checkpoint of container {container_id}: {source}")]
    Package {
        /// The container.
        container_id: String,
        /// Why.
        source: PackageError,
    },
    /// Committing to the store.
    #[error("storing the checkpoint of container {container_id}: {source}")]
    Store {
        /// The container.
        container_id: String,
        /// Why.
        source: StoreError,
    },
}

impl CheckpointError {
    /// A short, stable token for the metrics (`lazarus_checkpoint_failures_total{reason}`).
    pub fn reason(&self) -> &'static str {
        match self {
            CheckpointError::NotFound { .. } => "not_found",
            CheckpointError::Ambiguous { .. } => "ambiguous",
            CheckpointError::NotRunning { .. } => "not_running",
            CheckpointError::Runtime { .. } => "runtime",
            CheckpointError::Criu { .. } => "criu",
            CheckpointError::Info { .. } => "runtime_info",
            CheckpointError::Rootfs { .. } => "rootfs",
            CheckpointError::Io { .. } => "io",
            CheckpointError::Lock(LockError::Busy { .. }) => "busy",
            CheckpointError::Lock(_) => "lock",
            CheckpointError::Freeze(FreezeError::Resume { .. }) => "thaw",
            CheckpointError::Freeze(_) => "freeze",
            CheckpointError::Stopping { .. } => "stopping",
            CheckpointError::Package { .. } => "package",
            CheckpointError::Store { .. } => "store",
        }
    }
}

impl From<CheckpointError> for Status {
    fn from(err: CheckpointError) -> Status {
        let code = match &err {
            CheckpointError::NotFound { .. } => tonic::Code::NotFound,
            CheckpointError::Ambiguous { .. } => tonic::Code::InvalidArgument,
            CheckpointError::NotRunning { .. } => tonic::Code::FailedPrecondition,
            CheckpointError::Lock(LockError::Busy { .. }) => tonic::Code::Aborted,
            CheckpointError::Stopping { .. } => tonic::Code::FailedPrecondition,
            CheckpointError::Runtime { .. } => tonic::Code::Unavailable,
            _ => tonic::Code::Internal,
        };
        Status::new(code, format!("lazarus: {err}"))
    }
}

/// Settings of the checkpoint engine.
#[derive(Debug, Clone)]
pub struct CheckpointerConfig {
    /// Persistent state: staging area and store live here.
    pub state_dir: PathBuf,
    /// Runtime state: lock files live here.
    pub run_dir: PathBuf,
    /// Node-wide maximum of concurrent checkpoints.
    pub max_concurrent: usize,
    /// Layer compression.
    pub compression: Compression,
    /// Size cap of the local store; the oldest checkpoints go first, never a
    /// container's newest.
    pub store_max_size: Option<u64>,
    /// How registries are reached (credentials, insecure registries, CA files).
    pub registry: RegistrySettings,
}

impl From<&crate::config::Config> for CheckpointerConfig {
    fn from(config: &crate::config::Config) -> Self {
        CheckpointerConfig {
            state_dir: config.state_dir.clone(),
            run_dir: config.run_dir.clone(),
            max_concurrent: config.max_concurrent_checkpoints,
            compression: config.checkpoint_compression,
            store_max_size: config.store_max_size,
            registry: RegistrySettings::from(config),
        }
    }
}

/// A committed checkpoint.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// `local:namespace/pod/container:tag@sha256:…`.
    pub reference: String,
    /// Manifest digest.
    pub digest: String,
    /// `namespace/pod/container`.
    pub key: String,
    /// The tag (UTC time, sorts by age).
    pub tag: String,
    /// Compressed layer size.
    pub size: u64,
    /// Wall time of the CRIU dump call.
    pub dump_time: Duration,
    /// How long the container was frozen: from `Tasks.Pause` to the end of
    /// `Tasks.Resume`, dump and writable layer included.
    pub frozen_time: Duration,
    /// CRIU's own frozen time, from its statistics (within `frozen_time`).
    pub criu_frozen_time: Option<Duration>,
    /// Wall time of the whole checkpoint, packaging included.
    pub total_time: Duration,
    /// Older checkpoints removed by retention.
    pub pruned: usize,
    /// The registry reference it was pushed to (`host/repo:tag@sha256:…`),
    /// when a repository was named and the push succeeded.
    pub pushed: Option<String>,
    /// Why the push failed, when a repository was named (or malformed) and
    /// the push did not succeed. The local checkpoint is committed either way.
    pub push_error: Option<String>,
}

/// What to do beyond the local checkpoint.
#[derive(Debug, Default)]
pub struct CheckpointRequest {
    /// Checkpoints to keep for the container, locally and in the registry
    /// (`None`: the pod's `lazarus.dev/checkpoint-keep`, else 3).
    pub keep: Option<usize>,
    /// Repository to push to; overrides the pod's
    /// `lazarus.dev/checkpoint-repository`.
    pub repository: Option<Reference>,
    /// What asked for it (the metrics' `trigger` label).
    pub trigger: Trigger,
    /// Told (or dropped) once the container runs again after the cut, or
    /// when the checkpoint ends without having frozen it.
    pub thawed: Option<tokio::sync::oneshot::Sender<()>>,
}

/// The checkpoint engine. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Checkpointer {
    runtime: Arc<dyn Runtime>,
    store: Arc<Store>,
    config: Arc<CheckpointerConfig>,
    metrics: Metrics,
    /// Built on the first push (reads the system's CA certificates).
    registry: Arc<tokio::sync::OnceCell<RegistryClient>>,
}

/// Everything the runtime tells about a container.
#[derive(Debug)]
struct Target {
    id: String,
    status: v1::ContainerStatus,
    pod: v1::PodSandboxStatus,
    pid: u32,
    spec: serde_json::Value,
    runtime_version: String,
}

/// Now as a `created` annotation and a time tag (formats in [`crate::timefmt`]).
fn now_rfc3339() -> (String, String) {
    crate::timefmt::created_and_tag(SystemTime::now())
}

impl Checkpointer {
    /// An engine over `runtime` storing into `store`.
    pub fn new(runtime: Arc<dyn Runtime>, store: Arc<Store>, config: CheckpointerConfig) -> Self {
        Checkpointer { runtime, store, config: Arc::new(config), metrics: Metrics::new(), registry: Arc::default() }
    }

    /// Counts into `metrics` (the daemon's registry, shared with the scheduler and the proxy).
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The metrics it counts into.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The registry client (built on first use).
    pub async fn registry_client(&self) -> Result<RegistryClient, RegistryError> {
        self.registry
            .get_or_try_init(|| async {
                // Reads the system's CA certificates: off the event loop.
                let settings = self.config.registry.clone();
                tokio::task::spawn_blocking(move || RegistryClient::new(settings))
                    .await
                    .map_err(|e| RegistryError::Tls { reason: format!("loading CA certificates: {e}") })?
            })
            .await
            .cloned()
    }

    /// The runtime.
    pub fn runtime(&self) -> &dyn Runtime {
        &*self.runtime
    }

    /// The store checkpoints go to.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
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

    async fn inspect(&self, container_id: &str) -> Result<Target, CheckpointError> {
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

    /// Checkpoints a running container (id or `namespace/pod/container`),
    /// commits the image to the local store and applies retention (`keep`
    /// newest of this container; `None` = the pod's annotation or the default);
    /// pushes it if the pod names a repository.
    pub async fn checkpoint(&self, container: &str, keep: Option<usize>) -> Result<Checkpoint, CheckpointError> {
        self.checkpoint_with(container, CheckpointRequest { keep, ..CheckpointRequest::default() }).await
    }

    /// [`checkpoint`](Self::checkpoint) with a repository that overrides the
    /// pod's. The result is an error only if the local checkpoint failed; a
    /// failed push is reported in [`Checkpoint::push_error`]. Counted in the
    /// metrics under `wanted.trigger`.
    pub async fn checkpoint_with(
        &self,
        container: &str,
        wanted: CheckpointRequest,
    ) -> Result<Checkpoint, CheckpointError> {
        let trigger = wanted.trigger;
        let result = self.take(container, wanted).await;
        match &result {
            Ok(c) => self.metrics.checkpoint_succeeded(trigger, &c.key, c.total_time, Some(c.frozen_time), c.size),
            Err(e) => self.metrics.checkpoint_failed(trigger, e.reason()),
        }
        result
    }

    async fn take(&self, container: &str, wanted: CheckpointRequest) -> Result<Checkpoint, CheckpointError> {
        let CheckpointRequest { keep, repository: requested_repository, trigger, thawed } = wanted;
        let started = Instant::now();
        let container_id = self.resolve(container).await?;
        let lock_dir = self.config.run_dir.join("locks");
        let permit = if trigger == Trigger::Stop {
            locks::acquire_waiting(&lock_dir, &container_id, self.config.max_concurrent).await?
        } else {
            locks::acquire(&lock_dir, &container_id, self.config.max_concurrent).await?
        };
        // With the lock held, a marker is one an interrupted run left.
        freeze::thaw_if_abandoned(&*self.runtime, &self.frozen_markers(), &container_id).await?;
        if trigger != Trigger::Stop && self.stopping_markers().exists(&container_id).await {
            return Err(CheckpointError::Stopping { container_id });
        }
        let target = self.inspect(&container_id).await?;
        let metadata = target.pod.metadata.clone().unwrap_or_default();
        let container_name = target.status.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
        let pod = format!("{}/{}", metadata.namespace, metadata.name);
        let key = format!("{pod}/{container_name}");
        let keep = keep.unwrap_or_else(|| keep_from_annotations(&target.pod.annotations));
        let (created, tag) = now_rfc3339();
        tracing::info!(pod = %pod, container = %container_name, container_id = %container_id, trigger = trigger.as_str(), "checkpoint started");

        let staging_root = self.config.state_dir.join("staging");
        clean_staging(&staging_root, &container_id);
        let staging = Staging::create(&staging_root, &container_id, &tag)?;
        let tree = staging.path.join("tree");
        let images = tree.join(files::CHECKPOINT_DIR);
        let work = staging.path.join("work");
        for dir in [&images, &work] {
            std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
        }

        // The cut: frozen from before the dump until the writable layer is
        // captured. It runs as a task of its own, so a caller that stops
        // waiting (the grace period of a stop) never leaves the container frozen.
        let cut = {
            let (this, target_id, images, work, tree) =
                (self.clone(), container_id.clone(), images.clone(), work.clone(), tree.clone());
            let pid = target.pid;
            tokio::spawn(async move {
                let outcome = this.cut(&target_id, pid, &images, &work, &tree).await;
                drop(thawed);
                outcome
            })
        };
        let cut = cut.await.map_err(|e| CheckpointError::Io {
            action: "checkpointing",
            path: staging.path.clone(),
            source: std::io::Error::other(e.to_string()),
        })??;
        let (dump_time, frozen_time) = (cut.dump_time, cut.frozen_time);
        // CRIU writes its statistics next to its log, in the work directory.
        let stats = std::fs::read(work.join(files::STATS_DUMP)).ok().and_then(|b| super::criu_stats::parse(&b));
        let criu_frozen_time = stats.as_ref().map(|s| Duration::from_micros(u64::from(s.frozen_time)));
        tracing::info!(
            pod = %pod,
            container = %container_name,
            container_id = %container_id,
            dump_ms = dump_time.as_millis() as u64,
            frozen_ms = frozen_time.as_millis() as u64,
            criu_frozen_ms = criu_frozen_time.map(|d| d.as_millis() as u64),
            "memory and writable layer captured; container running again"
        );

        // Everything else happens while the container runs.
        self.write_metadata_files(&target, &tree, &work, &created)?;
        let mut annotations = self.annotations(&target, &container_name, stats.as_ref(), dump_time);
        annotations.insert(ann::LAZARUS_FROZEN_TIME_MS.to_owned(), frozen_time.as_millis().to_string());
        annotations.insert(ann::LAZARUS_TRIGGER.to_owned(), trigger.as_str().to_owned());
        let store = self.store.clone();
        let compression = self.config.compression;
        let (tree2, scratch, created2, annotations2) =
            (tree.clone(), staging.path.clone(), created.clone(), annotations.clone());
        let mut packaged = tokio::task::spawn_blocking(move || {
            image::package(&store, &tree2, &scratch, compression, &annotations2, &created2)
        })
        .await
        .map_err(|e| CheckpointError::Io {
            action: "packaging",
            path: tree.clone(),
            source: std::io::Error::other(e.to_string()),
        })?
        .map_err(|source| CheckpointError::Package { container_id: container_id.clone(), source })?;

        let index_annotations: BTreeMap<String, String> = [
            (ann::REF_NAME.to_owned(), format!("{key}:{tag}")),
            (ann::CONTAINER_KEY.to_owned(), key.clone()),
            (ann::CREATED.to_owned(), created.clone()),
            (ann::LAZARUS_CONTAINER_ID.to_owned(), container_id.clone()),
        ]
        .into();
        let store_err = |source| CheckpointError::Store { container_id: container_id.clone(), source };
        let store = self.store.clone();
        let manifest = std::mem::take(&mut packaged.manifest);
        // `packaged.blobs` stays alive (leased against garbage collection) until the commit returns.
        let retention_key = key.clone();
        // Committed and pruned to `keep` in one index replacement: no reader sees keep + 1.
        let committed = tokio::task::spawn_blocking(move || {
            let retention = Retention { key: ann::CONTAINER_KEY, value: &retention_key, keep };
            store.commit_with_retention(&manifest, index_annotations, Some(retention))
        })
        .await
        .map_err(|e| CheckpointError::Io {
            action: "committing",
            path: PathBuf::new(),
            source: std::io::Error::other(e.to_string()),
        })?
        .map_err(store_err)?;
        drop(packaged.blobs);
        let (committed, removed) = committed;
        let digest = committed.digest().to_string();
        // The size cap reads manifests and deletes blobs: off the event loop.
        let this = self.clone();
        let (pruned, store_size) = tokio::task::spawn_blocking(move || -> Result<(usize, Option<u64>), StoreError> {
            let mut pruned = removed.len();
            if let Some(max) = this.config.store_max_size {
                pruned += this.enforce_size_cap(max)?;
            }
            Ok((pruned, this.store.total_size().ok()))
        })
        .await
        .map_err(|e| CheckpointError::Io {
            action: "applying retention",
            path: self.store.root().to_owned(),
            source: std::io::Error::other(e.to_string()),
        })?
        .map_err(store_err)?;
        if let Some(bytes) = store_size {
            self.metrics.set_store_size(bytes);
        }
        let mut checkpoint = Checkpoint {
            reference: format!("local:{key}:{tag}@{digest}"),
            digest,
            key,
            tag,
            size: packaged.layer_size,
            dump_time,
            frozen_time,
            criu_frozen_time,
            total_time: started.elapsed(),
            pruned,
            pushed: None,
            push_error: None,
        };
        tracing::info!(
            pod = %pod,
            container = %container_name,
            container_id = %container_id,
            reference = %checkpoint.reference,
            size = checkpoint.size,
            total_ms = checkpoint.total_time.as_millis() as u64,
            pruned,
            "checkpoint committed"
        );

        // The registry: never fails or undoes the local checkpoint.
        let repository = match requested_repository {
            Some(repository) => Some(repository),
            None => match repository_from_annotations(&target.pod.annotations) {
                Ok(repository) => repository,
                Err(reason) => {
                    self.metrics.annotation_rejected(ann::CHECKPOINT_REPOSITORY);
                    self.metrics.checkpoint_pushed(false);
                    tracing::warn!(
                        pod = %pod,
                        container = %container_name,
                        container_id = %container_id,
                        "{reason}; the local checkpoint is kept, nothing is pushed"
                    );
                    checkpoint.push_error = Some(reason);
                    None
                }
            },
        };
        if let Some(repository) = repository {
            // Pushing is network I/O: give the node-wide slot to the next dump,
            // keep this container's lock (one checkpoint or push at a time).
            let _container_lock = permit.release_slot();
            self.push(&mut checkpoint, &container_id, &container_name, &repository, keep).await;
        }
        Ok(checkpoint)
    }

    /// Pushes a committed checkpoint and applies registry retention; records
    /// the outcome in `checkpoint` and the metrics.
    async fn push(
        &self,
        checkpoint: &mut Checkpoint,
        container_id: &str,
        container_name: &str,
        repository: &Reference,
        keep: usize,
    ) {
        let started = Instant::now();
        let pod = checkpoint.key.rsplit_once('/').map_or(checkpoint.key.as_str(), |(pod, _)| pod).to_owned();
        let result = match self.registry_client().await {
            Ok(client) => crate::registry::push_checkpoint(
                &client,
                &self.store,
                &checkpoint.digest,
                repository,
                container_name,
                &checkpoint.tag,
            )
            .await
            .map(|pushed| (client, pushed))
            .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok((client, pushed)) => {
                self.metrics.checkpoint_pushed(true);
                tracing::info!(
                    pod = %pod,
                    container = container_name,
                    container_id,
                    reference = %pushed.reference,
                    uploaded = pushed.uploaded,
                    uploaded_bytes = pushed.uploaded_bytes,
                    push_ms = started.elapsed().as_millis() as u64,
                    "checkpoint pushed"
                );
                checkpoint.pushed = Some(pushed.reference);
                match crate::registry::apply_retention(&client, repository, container_name, keep).await {
                    Ok(outcome) if !outcome.removed.is_empty() => tracing::info!(
                        pod = %pod,
                        container = container_name,
                        container_id,
                        repository = %repository,
                        removed = outcome.removed.len(),
                        kept = outcome.kept.len(),
                        "registry retention applied"
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(
                        pod = %pod,
                        container = container_name,
                        container_id,
                        repository = %repository,
                        error = %e,
                        "registry retention failed; older checkpoints stay in the registry"
                    ),
                }
            }
            Err(error) => {
                self.metrics.checkpoint_pushed(false);
                tracing::warn!(
                    pod = %pod,
                    container = container_name,
                    container_id,
                    registry = %repository.registry,
                    repository = %repository,
                    local = %checkpoint.reference,
                    error = %error,
                    "pushing the checkpoint failed; the local checkpoint is kept and the registry's \
                     previous checkpoints are untouched"
                );
                checkpoint.push_error = Some(format!("pushing to {repository}: {error}"));
            }
        }
    }

    /// Removes the oldest checkpoints until the store fits `max` bytes,
    /// keeping every container's newest one.
    fn enforce_size_cap(&self, max: u64) -> Result<usize, StoreError> {
        let entries = self.store.list()?;
        let mut newest: std::collections::HashMap<String, String> = std::collections::HashMap::new();
        for entry in &entries {
            if let Some(key) = entry.annotation(ann::CONTAINER_KEY) {
                newest.insert(key.to_owned(), entry.digest());
            }
        }
        let removed = self.store.enforce_size_cap(max, |entry| {
            entry.annotation(ann::CONTAINER_KEY).is_some_and(|key| newest.get(key) == Some(&entry.digest()))
        })?;
        for entry in &removed {
            tracing::info!(
                checkpoint = entry.ref_name().unwrap_or_default(),
                max_bytes = max,
                "removed to keep the local store under its size cap"
            );
        }
        Ok(removed.len())
    }

    /// Markers of containers a checkpoint holds frozen.
    fn frozen_markers(&self) -> Markers {
        Markers::new(&self.config.run_dir, "frozen")
    }

    /// Markers of containers kubelet has asked to stop.
    pub fn stopping_markers(&self) -> Markers {
        Markers::new(&self.config.run_dir, "stopping")
    }

    /// Thaws the containers interrupted checkpoints left frozen (at start).
    pub async fn thaw_abandoned(&self) -> usize {
        freeze::thaw_abandoned(&*self.runtime, &self.frozen_markers(), &self.config.run_dir.join("locks")).await
    }

    /// The cut: pause, dump, writable layer, resume — always resume, and
    /// report the first failure.
    async fn cut(&self, id: &str, pid: u32, images: &Path, work: &Path, tree: &Path) -> Result<Cut, CheckpointError> {
        let markers = self.frozen_markers();
        let frozen_at = Instant::now();
        freeze::freeze(&*self.runtime, &markers, id).await?;
        let dump_started = Instant::now();
        let captured = self.dump_and_capture(id, pid, images, work, tree).await;
        let dump_time = dump_started.elapsed();
        let thawed = freeze::thaw(&*self.runtime, &markers, id).await;
        let frozen_time = frozen_at.elapsed();
        if let Err(e) = &thawed {
            tracing::error!(container_id = id, error = %e, "the container could not be resumed after its checkpoint");
        }
        captured?;
        thawed?;
        Ok(Cut { dump_time, frozen_time })
    }

    /// CRIU's dump (the container stays frozen after it) and the writable layer.
    async fn dump_and_capture(
        &self,
        id: &str,
        pid: u32,
        images: &Path,
        work: &Path,
        tree: &Path,
    ) -> Result<(), CheckpointError> {
        let options = CheckpointOptions {
            exit: false,
            open_tcp: true,
            file_locks: true,
            image_path: images.display().to_string(),
            work_path: work.display().to_string(),
            ..Default::default()
        };
        if let Err(status) = self.runtime.checkpoint_task(id, options).await {
            let log = dump_log_excerpt(&work.join(files::DUMP_LOG));
            return Err(CheckpointError::Criu {
                container_id: id.to_owned(),
                message: status.message().to_owned(),
                log,
            });
        }
        self.capture_writable_layer(id, pid, tree).await
    }

    /// The writable layer's changes: `rootfs-diff.tar` and `deleted.files`.
    async fn capture_writable_layer(&self, id: &str, pid: u32, tree: &Path) -> Result<(), CheckpointError> {
        let upper = rootfs_diff::overlay_upperdir(pid)
            .map_err(|source| CheckpointError::Rootfs { container_id: id.to_owned(), source })?;
        let diff_path = tree.join(files::ROOTFS_DIFF);
        let deleted_path = tree.join(files::DELETED_FILES);
        let (diff_path2, id2) = (diff_path.clone(), id.to_owned());
        tokio::task::spawn_blocking(move || {
            let file = std::fs::File::create(&diff_path2).map_err(io("creating", &diff_path2))?;
            let summary = rootfs_diff::write_diff(&upper, std::io::BufWriter::new(file))
                .map_err(|source| CheckpointError::Rootfs { container_id: id2.clone(), source })?;
            let deleted = std::fs::File::create(&deleted_path).map_err(io("creating", &deleted_path))?;
            rootfs_diff::write_deleted_files(&summary.deleted, deleted)
                .map_err(|source| CheckpointError::Rootfs { container_id: id2, source })
        })
        .await
        .map_err(|e| CheckpointError::Io {
            action: "archiving",
            path: diff_path.clone(),
            source: std::io::Error::other(e.to_string()),
        })?
    }

    /// Spec, CRI status, metadata and CRIU's log, written while the container runs again.
    fn write_metadata_files(
        &self,
        target: &Target,
        tree: &Path,
        work: &Path,
        created: &str,
    ) -> Result<(), CheckpointError> {
        let id = &target.id;
        let metadata = target.pod.metadata.clone().unwrap_or_default();
        let name = target.status.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
        let image = target.status.image.as_ref().map(|i| i.image.clone()).unwrap_or_default();
        let config = json!({
            "id": id,
            "name": name,
            "rootfsImage": image,
            "rootfsImageRef": target.status.image_ref,
            "rootfsImageName": image,
            "runtime": "runc",
            "createdTime": crate::timefmt::rfc3339_seconds_from_nanos(target.status.created_at),
            "checkpointedTime": created,
            "restored": false,
            "pod": {"name": metadata.name, "namespace": metadata.namespace, "uid": metadata.uid},
            "engine": {"name": "lazarus", "version": env!("CARGO_PKG_VERSION"), "runtime": target.runtime_version},
            "host": {"arch": ann::go_arch(), "kernel": kernel_release(), "criu": criu_version()},
        });
        let status = json!({
            "id": id,
            "state": v1::ContainerState::try_from(target.status.state).map_or("unknown", |s| s.as_str_name()),
            "createdAt": target.status.created_at,
            "startedAt": target.status.started_at,
            "image": image,
            "imageRef": target.status.image_ref,
            "labels": target.status.labels,
            "annotations": target.status.annotations,
            "logPath": target.status.log_path,
            "podSandboxId": target.pod.id,
            "podAnnotations": target.pod.annotations,
        });
        for (name, value) in
            [(files::CONFIG_DUMP, &config), (files::SPEC_DUMP, &target.spec), (files::STATUS_DUMP, &status)]
        {
            let path = tree.join(name);
            let bytes = serde_json::to_vec_pretty(value).unwrap_or_default();
            std::fs::write(&path, bytes).map_err(io("writing", &path))?;
        }
        for (from, to) in [
            (work.join(files::DUMP_LOG), tree.join(files::DUMP_LOG)),
            (work.join(files::STATS_DUMP), tree.join(files::STATS_DUMP)),
        ] {
            if from.exists() {
                std::fs::copy(&from, &to).map_err(io("copying", &from))?;
            }
        }
        Ok(())
    }

    fn annotations(
        &self,
        target: &Target,
        container_name: &str,
        stats: Option<&super::criu_stats::DumpStats>,
        dump_time: Duration,
    ) -> BTreeMap<String, String> {
        let metadata = target.pod.metadata.clone().unwrap_or_default();
        let image = target.status.image.as_ref().map(|i| i.image.clone()).unwrap_or_default();
        let mut a: BTreeMap<String, String> = [
            (ann::CRIU_CONTAINER_NAME, container_name.to_owned()),
            (ann::CRIO_CHECKPOINT_NAME, container_name.to_owned()),
            (ann::PODMAN_CHECKPOINT_NAME, container_name.to_owned()),
            (ann::CRIU_ENGINE_NAME, "lazarus".to_owned()),
            (ann::CRIU_ENGINE_VERSION, env!("CARGO_PKG_VERSION").to_owned()),
            (ann::CRIU_POD_NAME, metadata.name.clone()),
            (ann::CRIU_POD_NAMESPACE, metadata.namespace.clone()),
            (ann::LAZARUS_POD_UID, metadata.uid.clone()),
            (ann::CRIU_ROOTFS_IMAGE_NAME, image),
            (ann::CRIU_ROOTFS_IMAGE_ID, target.status.image_id.clone()),
            (ann::CRIU_ROOTFS_IMAGE_REF, target.status.image_ref.clone()),
            (ann::CRIU_RUNTIME_NAME, "runc".to_owned()),
            (ann::CRIU_VERSION, criu_version()),
            (ann::CRIU_HOST_ARCH, ann::go_arch().to_owned()),
            (ann::LAZARUS_KERNEL, kernel_release()),
            (ann::LAZARUS_CONTAINER_ID, target.id.clone()),
            ("lazarus.dev/dump-time-ms", dump_time.as_millis().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        if let Some(stats) = stats {
            a.insert("lazarus.dev/criu-freezing-time-us".into(), stats.freezing_time.to_string());
            a.insert("lazarus.dev/criu-frozen-time-us".into(), stats.frozen_time.to_string());
            a.insert("lazarus.dev/criu-pages-written".into(), stats.pages_written.to_string());
        }
        a
    }
}

fn runtime_error(call: &'static str, container: &str, status: &Status) -> CheckpointError {
    CheckpointError::Runtime {
        call,
        container_id: container.to_owned(),
        status: format!("{:?}: {}", status.code(), status.message()),
    }
}

fn info_error(container_id: &str, what: &str) -> CheckpointError {
    CheckpointError::Info { container_id: container_id.to_owned(), what: what.to_owned() }
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + use<> {
    let path = path.to_owned();
    move |source| CheckpointError::Io { action, path, source }
}

/// The pod's `lazarus.dev/checkpoint-keep`, or the default; a malformed value
/// is logged and the default used.
pub fn keep_from_annotations(annotations: &std::collections::HashMap<String, String>) -> usize {
    match annotations.get(ann::CHECKPOINT_KEEP) {
        None => ann::DEFAULT_KEEP,
        Some(value) => match value.trim().parse::<usize>() {
            Ok(n) if n >= 1 => n,
            _ => {
                tracing::warn!(
                    annotation = ann::CHECKPOINT_KEEP,
                    value = %value,
                    default = ann::DEFAULT_KEEP,
                    "rejected annotation: expected a whole number >= 1; using the default"
                );
                ann::DEFAULT_KEEP
            }
        },
    }
}

/// The pod's `lazarus.dev/checkpoint-repository`: `Ok(None)` when not
/// annotated, `Err` (annotation, value and reason) when malformed or when it
/// has a tag or digest (lazarus chooses the tags).
pub fn repository_from_annotations(
    annotations: &std::collections::HashMap<String, String>,
) -> Result<Option<Reference>, String> {
    let Some(value) = annotations.get(ann::CHECKPOINT_REPOSITORY) else { return Ok(None) };
    let reject = |reason: String| format!("{}={value:?} rejected: {reason}", ann::CHECKPOINT_REPOSITORY);
    let reference = Reference::parse(value).map_err(|e| reject(e.reason))?;
    if reference.tag.is_some() || reference.digest.is_some() {
        return Err(reject("expected a repository without tag or digest (lazarus chooses the tags)".into()));
    }
    Ok(Some(reference))
}

/// The lines of CRIU's dump log that explain a failure: errors and
/// warnings, then the last lines.
pub fn dump_log_excerpt(path: &Path) -> String {
    let Ok(text) = std::fs::read_to_string(path) else { return String::new() };
    let lines: Vec<&str> = text.lines().collect();
    let mut picked: Vec<&str> = lines.iter().copied().filter(|l| l.contains("Error") || l.contains("Warn")).collect();
    picked.truncate(20);
    for line in lines.iter().rev().take(5).rev() {
        if !picked.contains(line) {
            picked.push(line);
        }
    }
    if picked.is_empty() {
        return String::new();
    }
    format!("\nfrom {}:\n  {}", path.display(), picked.join("\n  "))
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_owned()).unwrap_or_default()
}

/// `criu --version`'s version, once per process.
fn criu_version() -> String {
    static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    VERSION
        .get_or_init(|| {
            std::process::Command::new("criu")
                .arg("--version")
                .output()
                .ok()
                .and_then(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .find_map(|l| l.strip_prefix("Version:").map(|v| v.trim().to_owned()))
                })
                .unwrap_or_default()
        })
        .clone()
}

/// What the cut measured.
#[derive(Debug, Clone, Copy)]
struct Cut {
    dump_time: Duration,
    frozen_time: Duration,
}

/// A staging directory removed when dropped (success or failure).
struct Staging {
    path: PathBuf,
}

impl Staging {
    fn create(root: &Path, container_id: &str, tag: &str) -> Result<Staging, CheckpointError> {
        let path = root.join(format!("{container_id}-{tag}"));
        std::fs::create_dir_all(&path).map_err(io("creating", &path))?;
        Ok(Staging { path })
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove staging directory");
        }
    }
}

/// Removes staging directories a killed process left for this container.
/// Called with the container's checkpoint lock held, so none is in use.
fn clean_staging(root: &Path, container_id: &str) {
    let Ok(entries) = std::fs::read_dir(root) else { return };
    let prefix = format!("{container_id}-");
    for entry in entries.filter_map(Result::ok) {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let path = entry.path();
            tracing::info!(path = %path.display(), "removing a checkpoint staging directory left by an interrupted run");
            if let Err(e) = std::fs::remove_dir_all(&path) {
                tracing::warn!(path = %path.display(), error = %e, "could not remove leftover staging directory");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_sort_by_time() {
        let (created, tag) = now_rfc3339();
        assert_eq!(created.len(), "2026-11-22T23:35:05.123Z".len());
        assert!(tag.chars().all(|c| c.is_ascii_alphanumeric() || c == '.'), "{tag}");
        // Tags of different times, listed out of order, sort by time as strings: across a
        // millisecond, a second, a day, a month and a year boundary, and against 1970.
        let at = |ms: u64| crate::timefmt::created_and_tag(SystemTime::UNIX_EPOCH + Duration::from_millis(ms)).1;
        let times = [
            1_795_391_493_919, // 2026-11-22T23:51:33.919Z
            1_795_391_493_920,
            1_795_391_494_001,
            1_795_392_000_000, // the next day
            1_798_761_600_000, // 2027-01-01
            0,
            999,
            1_000,
        ];
        let mut tags: Vec<String> = times.iter().map(|&ms| at(ms)).collect();
        tags.sort();
        let mut by_time = times.to_vec();
        by_time.sort_unstable();
        assert_eq!(tags, by_time.iter().map(|&ms| at(ms)).collect::<Vec<_>>());
        assert_eq!(at(1_795_391_493_919), "20261122T235133.919Z");
        // A tag taken now sorts after one taken a second earlier.
        let earlier = crate::timefmt::created_and_tag(SystemTime::now() - Duration::from_secs(1)).1;
        assert!(earlier < tag, "{earlier} !< {tag}");
    }

    #[test]
    fn keep_annotation_is_validated() {
        let mut a = std::collections::HashMap::new();
        assert_eq!(keep_from_annotations(&a), 3);
        a.insert(ann::CHECKPOINT_KEEP.to_owned(), "5".to_owned());
        assert_eq!(keep_from_annotations(&a), 5);
        for bad in ["0", "-1", "many", ""] {
            a.insert(ann::CHECKPOINT_KEEP.to_owned(), bad.to_owned());
            assert_eq!(keep_from_annotations(&a), 3, "{bad}");
        }
    }

    #[test]
    fn repository_annotation_is_validated() {
        let mut a = std::collections::HashMap::new();
        assert_eq!(repository_from_annotations(&a), Ok(None));
        a.insert(ann::CHECKPOINT_REPOSITORY.to_owned(), "registry.example.com/team/job".to_owned());
        let r = repository_from_annotations(&a).expect("valid").expect("set");
        assert_eq!((r.registry.as_str(), r.repository.as_str()), ("registry.example.com", "team/job"));
        for bad in ["team/job", "registry.example.com/Team", "registry.example.com/team/job:v1", ""] {
            a.insert(ann::CHECKPOINT_REPOSITORY.to_owned(), bad.to_owned());
            let err = repository_from_annotations(&a).expect_err(bad);
            assert!(err.starts_with(&format!("lazarus.dev/checkpoint-repository={bad:?} rejected: ")), "{err}");
        }
    }

    #[test]
    fn dump_log_excerpt_picks_errors_and_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("dump.log");
        let mut text = String::new();
        for i in 0..50 {
            text.push_str(&format!("(00.0{i}) line {i}\n"));
        }
        text.push_str(
            "(01.000) Error (criu/sk-inet.c:190): inet: Connected TCP socket, consider using --tcp-established\n",
        );
        text.push_str("(01.001) Dumping FAILED.\n");
        std::fs::write(&log, text).expect("write");
        let excerpt = dump_log_excerpt(&log);
        assert!(excerpt.contains("Connected TCP socket"), "{excerpt}");
        assert!(excerpt.contains("Dumping FAILED."), "{excerpt}");
        assert!(!excerpt.contains("line 3\n"), "{excerpt}");
        assert_eq!(dump_log_excerpt(&dir.path().join("missing")), "");
    }
}
