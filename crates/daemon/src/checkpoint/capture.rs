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
//!
//! The phases live in submodules: `target` (1), `dump` (2, with the staging
//! directory), `side_files` (3, `cri_json` for `status.dump`), `commit` (4) and `push` (5); this module
//! holds the engine, its errors and the order of the phases.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::Status;

use super::freeze::{self, FreezeError};
use super::image::PackageError;
use super::locks::{self, LockError};
use super::markers::Markers;
use crate::metrics::{Metrics, Trigger};
use crate::runtime::Runtime;
use lazarus_format::annotations::{self as ann, files};
use lazarus_format::rootfs_diff;
use lazarus_registry::{Reference, RegistryClient, RegistryError, RegistrySettings};
use lazarus_store::{Store, StoreError};

mod commit;
mod cri_json;
mod dump;
mod open_files;
mod pod_data;
mod push;
mod side_files;
mod target;

pub use commit::keep_from_annotations;
use commit::{Commit, Committed};
use dump::{CutPart, Staging};
pub use pod_data::PodDataCaptureError;
use pod_data::PodDataSources;
pub use push::repository_from_annotations;
use side_files::{HostFacts, annotations, now_rfc3339, write_metadata_files};
use target::Target;

/// Layer compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// zstd (default).
    #[default]
    Zstd,
    /// gzip, for consumers without zstd.
    Gzip,
}

/// The layout a checkpoint is pushed to a registry in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RegistryLayout {
    /// The store's own layout (default): large files as content-defined chunks, so a version
    /// uploads only the chunks the repository does not have yet. Read by lazarus.
    #[default]
    Incremental,
    /// One tar of the whole tree (checkpointctl's layout), what containerd, CRI-O and Podman
    /// restore from; every version is uploaded whole.
    Portable,
}

impl std::str::FromStr for RegistryLayout {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "incremental" => Ok(RegistryLayout::Incremental),
            "portable" => Ok(RegistryLayout::Portable),
            other => Err(format!("unknown registry layout {other:?}: expected \"incremental\" or \"portable\"")),
        }
    }
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
    /// Capturing `/dev/shm` or an `emptyDir` volume (a volume over its cap included).
    #[error("capturing the pod data of container {container_id}: {source}")]
    PodData {
        /// The container.
        container_id: String,
        /// Why.
        source: PodDataCaptureError,
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
    /// The pod's `lazarus.dev/checkpoint-name` cannot be a checkpoint name.
    #[error("container {container_id}: {source}")]
    Identity {
        /// The container.
        container_id: String,
        /// Why.
        source: lazarus_format::identity::IdentityError,
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
            CheckpointError::PodData { source: PodDataCaptureError::TooLarge { .. }, .. } => "pod_data_too_large",
            CheckpointError::PodData { .. } => "pod_data",
            CheckpointError::Io { .. } => "io",
            CheckpointError::Lock(LockError::Busy { .. }) => "busy",
            CheckpointError::Lock(_) => "lock",
            CheckpointError::Freeze(FreezeError::Resume { .. }) => "thaw",
            CheckpointError::Freeze(_) => "freeze",
            CheckpointError::Stopping { .. } => "stopping",
            CheckpointError::Identity { .. } => "annotation",
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
            CheckpointError::Identity { .. } => tonic::Code::InvalidArgument,
            CheckpointError::PodData { source: PodDataCaptureError::TooLarge { .. }, .. } => {
                tonic::Code::FailedPrecondition
            }
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
    /// The layout checkpoints are pushed in.
    pub registry_layout: RegistryLayout,
    /// Largest `emptyDir` volume captured into a checkpoint, in bytes; a larger one refuses it.
    pub empty_dir_capture_max_size: u64,
    /// Largest `/dev/shm` captured into a checkpoint, in bytes; a larger one refuses it.
    pub dev_shm_capture_max_size: u64,
}

impl From<&crate::config::Config> for CheckpointerConfig {
    fn from(config: &crate::config::Config) -> Self {
        CheckpointerConfig {
            state_dir: config.state_dir.clone(),
            run_dir: config.run_dir.clone(),
            max_concurrent: config.max_concurrent_checkpoints,
            compression: config.checkpoint_compression,
            store_max_size: config.store_max_size,
            registry: config.registry_settings(),
            registry_layout: config.registry_layout,
            empty_dir_capture_max_size: config.empty_dir_capture_max_size,
            dev_shm_capture_max_size: config.dev_shm_capture_max_size,
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
    /// Bytes it added to the store: its layers but the chunks an earlier checkpoint stored already.
    pub added: u64,
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
    /// The checkpoints of the pod's other containers taken in the same cut
    /// (same tag), when the pod has several checkpointed containers running.
    pub pod_cut: Vec<Checkpoint>,
}

/// One container of a cut, prepared before the freeze.
struct Member {
    target: Arc<target::Target>,
    /// The container's name.
    name: String,
    /// Its checkpoints' key, `namespace/<identity>/container`.
    key: String,
    staging: Staging,
    pod_data: PodDataSources,
    volume_mounts: Vec<open_files::VolumeMount>,
}

/// What the members of one cut share.
struct CutContext<'a> {
    /// `namespace/pod`, for logs.
    pod: &'a str,
    created: &'a str,
    tag: &'a str,
    keep: usize,
    trigger: Trigger,
    /// The cut's container names (sorted, comma-separated) when it has several.
    cut_names: Option<&'a str>,
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
    /// Where a container's writable layer is, by its process id.
    upperdir: UpperDir,
    /// The cuts before a stop, by pod (checkpoint/pod_cut.rs).
    stop_cuts: super::pod_cut::StopCuts,
}

/// Finds the overlay upper directory of a container by its process id:
/// [`rootfs_diff::overlay_upperdir`], or in tests a directory of the test's.
#[derive(Clone)]
struct UpperDir(Arc<dyn Fn(u32) -> Result<PathBuf, rootfs_diff::RootfsDiffError> + Send + Sync>);

impl std::fmt::Debug for UpperDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UpperDir")
    }
}

impl Checkpointer {
    /// An engine over `runtime` storing into `store`.
    pub fn new(runtime: Arc<dyn Runtime>, store: Arc<Store>, config: CheckpointerConfig) -> Self {
        Checkpointer {
            runtime,
            store,
            config: Arc::new(config),
            metrics: Metrics::new(),
            registry: Arc::default(),
            upperdir: UpperDir(Arc::new(rootfs_diff::overlay_upperdir)),
            stop_cuts: super::pod_cut::StopCuts::default(),
        }
    }

    /// Reads every container's writable layer from `dir` (tests: no overlay, no root).
    #[cfg(test)]
    pub(crate) fn with_upperdir(mut self, dir: &Path) -> Self {
        let dir = dir.to_owned();
        self.upperdir = UpperDir(Arc::new(move |_pid| Ok(dir.clone())));
        self
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
                crate::blocking::run(move || RegistryClient::new(settings)).await
            })
            .await
            .cloned()
    }

    /// The cuts before a stop, by pod.
    pub fn stop_cuts(&self) -> &super::pod_cut::StopCuts {
        &self.stop_cuts
    }

    /// The runtime.
    pub fn runtime(&self) -> &dyn Runtime {
        &*self.runtime
    }

    /// The store checkpoints go to.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
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
        if trigger != Trigger::Stop && self.stopping_markers().exists(&container_id).await {
            return Err(CheckpointError::Stopping { container_id });
        }
        let asked = self.inspect(&container_id).await?;
        // The asked container first, then the pod's other checkpointed running
        // containers: one cut (checkpoint/pod_cut.rs).
        let targets = self.cut_targets(asked).await?;
        let ids: Vec<String> = targets.iter().map(|t| t.id.clone()).collect();
        let lock_dir = self.config.run_dir.join("locks");
        let permit = locks::acquire_all(&lock_dir, &ids, self.config.max_concurrent, trigger == Trigger::Stop).await?;
        for id in &ids {
            // With the locks held, a marker is one an interrupted run left.
            freeze::thaw_if_abandoned(&*self.runtime, &self.frozen_markers(), id).await?;
            if trigger != Trigger::Stop && self.stopping_markers().exists(id).await {
                return Err(CheckpointError::Stopping { container_id: id.clone() });
            }
        }
        let pod_status = &targets[0].pod;
        let metadata = pod_status.metadata.clone().unwrap_or_default();
        let pod = format!("{}/{}", metadata.namespace, metadata.name);
        let identity = lazarus_format::identity::identity(&metadata.name, &pod_status.labels, &pod_status.annotations)
            .map_err(|source| CheckpointError::Identity { container_id: container_id.clone(), source })?;
        let keep = keep.unwrap_or_else(|| keep_from_annotations(&pod_status.annotations));
        let repository = match requested_repository {
            Some(repository) => Ok(Some(repository)),
            None => repository_from_annotations(&pod_status.annotations),
        };
        let (created, tag) = now_rfc3339();
        let mut names: Vec<String> = targets.iter().map(Target::container_name).collect();
        names.sort();
        let cut_names = (names.len() > 1).then(|| names.join(","));
        let mut members = Vec::with_capacity(targets.len());
        for target in targets {
            let name = target.container_name();
            let key = format!("{}/{}/{name}", metadata.namespace, identity.name);
            tracing::info!(pod = %pod, container = %name, container_id = %target.id, checkpoint_name = %identity.name, identity_from = identity.source.as_str(), trigger = trigger.as_str(), pod_cut = cut_names.as_deref(), "checkpoint started");
            let staging = {
                let (root, id, tag) = (self.config.state_dir.join("staging"), target.id.clone(), tag.clone());
                crate::blocking::run(move || Staging::prepare(&root, &id, &tag)).await
            };
            let staging = match staging {
                Ok(staging) => staging,
                Err(e) => {
                    for member in members {
                        let Member { staging, .. } = member;
                        staging.remove().await;
                    }
                    return Err(e);
                }
            };
            let pod_data = PodDataSources::of(&target, &self.config);
            let volume_mounts = open_files::volume_mounts(&target.spec);
            members.push(Member { target: Arc::new(target), name, key, staging, pod_data, volume_mounts });
        }
        let context =
            CutContext { pod: &pod, created: &created, tag: &tag, keep, trigger, cut_names: cut_names.as_deref() };
        // Everything from here on is written into the staging directories; they are
        // removed before the answer (on the blocking pool), whatever the outcome.
        let result = async {
            // A volume already over its cap: refused without freezing anything.
            for member in &members {
                self.check_pod_data(&member.target.id, &member.pod_data).await?;
            }
            // The cut: every container frozen from before the first dump until the
            // last one's files are captured. It runs as a task of its own, so a caller
            // that stops waiting (the grace period of a stop) never leaves one frozen.
            let parts: Vec<CutPart> = members
                .iter()
                .map(|m| CutPart {
                    id: m.target.id.clone(),
                    pid: m.target.pid,
                    images: m.staging.images(),
                    work: m.staging.work(),
                    tree: m.staging.tree(),
                    volume_mounts: m.volume_mounts.clone(),
                    pod_data: m.pod_data.clone(),
                })
                .collect();
            let cut = {
                let this = self.clone();
                tokio::spawn(async move {
                    let outcome = this.cut(&parts).await;
                    drop(thawed);
                    outcome
                })
            };
            let cut = cut.await.map_err(|e| CheckpointError::Io {
                action: "checkpointing",
                path: members[0].staging.path.clone(),
                source: std::io::Error::other(e.to_string()),
            })??;
            let mut committed = Vec::with_capacity(members.len());
            for (member, dump_time) in members.iter().zip(&cut.dump_times) {
                let checkpoint = self.commit_member(member, &context, *dump_time, cut.frozen_time, started).await?;
                committed.push(checkpoint);
            }
            // The registry: never fails or undoes the local checkpoints.
            let repository = match &repository {
                Ok(repository) => repository.clone(),
                Err(reason) => {
                    self.metrics.annotation_rejected(ann::CHECKPOINT_REPOSITORY);
                    for checkpoint in &mut committed {
                        self.metrics.checkpoint_pushed(false);
                        tracing::warn!(pod = %pod, reference = %checkpoint.reference, "{reason}; the local checkpoint is kept, nothing is pushed");
                        checkpoint.push_error = Some(reason.clone());
                    }
                    None
                }
            };
            if let Some(repository) = repository {
                // Pushing is network I/O: give the node-wide slot to the next dump,
                // keep the containers' locks (one checkpoint or push at a time).
                let _container_locks = permit.release_slot();
                for (checkpoint, member) in committed.iter_mut().zip(&members) {
                    self.push(checkpoint, &member.target.id, &member.name, &repository, keep).await;
                }
            }
            let mut committed = committed.into_iter();
            let Some(mut asked) = committed.next() else {
                return Err(CheckpointError::NotFound { container: container_id.clone() });
            };
            for sibling in committed {
                self.metrics.checkpoint_succeeded(trigger, &sibling.key, sibling.total_time, Some(sibling.frozen_time), sibling.size);
                asked.pod_cut.push(sibling);
            }
            Ok::<Checkpoint, CheckpointError>(asked)
        }
        .await;
        for member in members {
            let Member { staging, .. } = member;
            staging.remove().await;
        }
        result
    }

    /// After the cut, while the containers run: one member's side files,
    /// package and commit.
    async fn commit_member(
        &self,
        member: &Member,
        context: &CutContext<'_>,
        dump_time: Duration,
        frozen_time: Duration,
        started: Instant,
    ) -> Result<Checkpoint, CheckpointError> {
        let Member { target, name, key, staging, .. } = member;
        let (tree, work, container_id) = (staging.tree(), staging.work(), target.id.as_str());
        // One trip to the blocking pool: CRIU's statistics (next to its log, in
        // the work directory), the host facts and the side files.
        let (stats, host, side) = {
            let (target, tree, work, created) =
                (target.clone(), tree.clone(), work.clone(), context.created.to_owned());
            #[expect(clippy::disallowed_methods, reason = "runs on the blocking pool")]
            crate::blocking::run(move || {
                let stats = std::fs::read(work.join(files::STATS_DUMP))
                    .ok()
                    .and_then(|b| lazarus_format::criu_stats::parse(&b));
                let host = HostFacts::read();
                let written = write_metadata_files(&target, &host, &tree, &work, &created);
                (stats, host, written)
            })
            .await
        };
        let criu_frozen_time = stats.as_ref().map(|s| Duration::from_micros(u64::from(s.frozen_time)));
        tracing::info!(
            pod = %context.pod,
            container = %name,
            container_id = %container_id,
            dump_ms = dump_time.as_millis() as u64,
            frozen_ms = frozen_time.as_millis() as u64,
            criu_frozen_ms = criu_frozen_time.map(|d| d.as_millis() as u64),
            "memory and writable layer captured; container running again"
        );
        side?;
        let mut annotations = annotations(target, &host, name, stats.as_ref(), dump_time);
        annotations.insert(ann::LAZARUS_FROZEN_TIME_MS.to_owned(), frozen_time.as_millis().to_string());
        annotations.insert(ann::LAZARUS_TRIGGER.to_owned(), context.trigger.as_str().to_owned());
        if let Some(names) = context.cut_names {
            annotations.insert(ann::POD_CUT.to_owned(), names.to_owned());
        }
        let commit = Commit { container_id, key, tag: context.tag, created: context.created, keep: context.keep };
        let Committed { digest, layer_size, added, pruned } =
            self.package_and_commit(&tree, &staging.path, annotations, commit).await?;
        let checkpoint = Checkpoint {
            reference: format!("local:{key}:{}@{digest}", context.tag),
            digest,
            key: key.clone(),
            tag: context.tag.to_owned(),
            size: layer_size,
            added,
            dump_time,
            frozen_time,
            criu_frozen_time,
            total_time: started.elapsed(),
            pruned,
            pushed: None,
            push_error: None,
            pod_cut: Vec::new(),
        };
        tracing::info!(
            pod = %context.pod,
            container = %name,
            container_id = %container_id,
            reference = %checkpoint.reference,
            size = checkpoint.size,
            added = checkpoint.added,
            total_ms = checkpoint.total_time.as_millis() as u64,
            pruned,
            "checkpoint committed"
        );
        Ok(checkpoint)
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
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + use<> {
    let path = path.to_owned();
    move |source| CheckpointError::Io { action, path, source }
}
