//! The restore engine: resolves, verifies, unpacks and checks a checkpoint for
//! a container kubelet is creating, and follows the container's start.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lazarus_proto::v1;
use oci_spec::image::{ImageConfiguration, ImageManifest};
use sha2::{Digest, Sha256};
use tonic::Code;
use tracing::Instrument;

use super::annotations::{self as ra, AnnotationError, Policy, RestoreRequest, Wanted};
use super::archive::{self, ArchiveError};
use super::checks::{self, CheckFailure, Target};
use super::fetch::{FetchError, Fetcher};
use super::metadata::CheckpointMetadata;
use super::plan::{self, Origin, Plan};
use crate::checkpoint::annotations as ann;
use crate::checkpoint::listing;
use crate::metrics::RestoreResult;
use crate::registry::Reference;
use crate::runtime::Runtime;
use crate::store::Store;

/// Settings of the restore engine.
#[derive(Debug, Clone)]
pub struct RestorerConfig {
    /// Where restore plans live; the `lazarus-runc` wrapper must be told the
    /// same directory (`LAZARUS_RESTORE_DIR`, default `/var/lib/lazarus/restore`).
    pub restore_dir: PathBuf,
    /// The containerd runtime handler whose `BinaryName` is `lazarus-runc`.
    pub runtime_handler: String,
    /// Registries (`host[:port]` or `host[:port]/path` prefixes) checkpoints may come from.
    pub allowed_registries: Vec<String>,
    /// Directories checkpoint archives may come from.
    pub allowed_dirs: Vec<PathBuf>,
    /// Sources (prefixes of references) that may be restored into another namespace.
    pub cross_namespace_sources: Vec<String>,
    /// Where failed restores are remembered (survives lazarus restarts).
    pub failures_file: PathBuf,
}

impl From<&crate::config::Config> for RestorerConfig {
    fn from(config: &crate::config::Config) -> Self {
        RestorerConfig {
            restore_dir: config.restore_dir.clone(),
            runtime_handler: config.restore_runtime_handler.clone(),
            allowed_registries: config.restore_allowed_registries.clone(),
            allowed_dirs: config.restore_allowed_dirs.clone(),
            cross_namespace_sources: config.restore_cross_namespace_sources.clone(),
            failures_file: config.state_dir.join("restore-failures.json"),
        }
    }
}

/// Why a container cannot be restored.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// A restore annotation is malformed.
    #[error(transparent)]
    Annotation(#[from] AnnotationError),
    /// The reference names nothing.
    #[error("checkpoint {reference} not found: {reason}")]
    NotFound {
        /// The reference.
        reference: String,
        /// Where it was looked for.
        reason: String,
    },
    /// A check failed.
    #[error("checkpoint {reference}: {failure}")]
    Check {
        /// The checkpoint.
        reference: String,
        /// Which check and why.
        failure: CheckFailure,
    },
    /// The checkpoint's data is damaged or unsafe.
    #[error("checkpoint {reference} is unusable: {source}")]
    Unpack {
        /// The checkpoint.
        reference: String,
        /// Why.
        source: ArchiveError,
    },
    /// The checkpoint's manifest or config is damaged.
    #[error("checkpoint {reference} is unusable: {reason}")]
    Corrupt {
        /// The checkpoint.
        reference: String,
        /// Why.
        reason: String,
    },
    /// The pod does not run with lazarus's runtime handler, so nothing would restore.
    #[error(
        "pod sandbox {sandbox} runs with runtime handler {actual:?}; a restore needs the handler {wanted:?} \
         (lazarus sets it on RunPodSandbox for pods with restore annotations unless the pod names a RuntimeClass)"
    )]
    Handler {
        /// The sandbox id.
        sandbox: String,
        /// Its handler.
        actual: String,
        /// lazarus's handler.
        wanted: String,
    },
    /// `latest`, and no checkpoint could be used.
    #[error("no usable checkpoint for latest: {tried}")]
    NoneUsable {
        /// What was tried and why each failed; or that there were none.
        tried: String,
    },
    /// The runtime could not be asked.
    #[error("asking the runtime: {0}")]
    Runtime(String),
    /// The registry could not deliver the checkpoint.
    #[error("checkpoint {reference}: {source}")]
    Fetch {
        /// The checkpoint.
        reference: String,
        /// Why.
        source: FetchError,
    },
    /// A local file operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

impl RestoreError {
    /// A short, stable token for the metrics (`lazarus_restore_failures_total{reason}`).
    pub fn reason(&self) -> &'static str {
        match self {
            RestoreError::Annotation(_) => "annotation",
            RestoreError::NotFound { .. } => "not_found",
            RestoreError::Check { failure, .. } => match failure {
                CheckFailure::Namespace { .. } => "namespace",
                CheckFailure::Image { .. } | CheckFailure::ImageUnknown => "image",
                CheckFailure::Arch { .. } => "arch",
                CheckFailure::SourceNotAllowed { .. } => "source",
            },
            RestoreError::Unpack { .. } | RestoreError::Corrupt { .. } => "integrity",
            RestoreError::Handler { .. } => "handler",
            RestoreError::NoneUsable { .. } => "none_usable",
            RestoreError::Runtime(_) => "runtime",
            RestoreError::Fetch { source: FetchError::StillDownloading { .. }, .. } => "downloading",
            RestoreError::Fetch { source: FetchError::NotACheckpoint(_), .. } => "not_a_checkpoint",
            RestoreError::Fetch { .. } => "registry",
            RestoreError::Io { .. } => "io",
        }
    }

    /// The gRPC code a refused `CreateContainer` is answered with.
    pub fn code(&self) -> Code {
        match self {
            RestoreError::Annotation(_) => Code::InvalidArgument,
            RestoreError::NotFound { .. } => Code::NotFound,
            RestoreError::Check { .. } | RestoreError::Handler { .. } | RestoreError::NoneUsable { .. } => {
                Code::FailedPrecondition
            }
            RestoreError::Unpack { .. } | RestoreError::Corrupt { .. } => Code::DataLoss,
            RestoreError::Runtime(_) => Code::Unavailable,
            RestoreError::Fetch { source, .. } => source.code(),
            RestoreError::Io { .. } => Code::Internal,
        }
    }
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RestoreError + use<> {
    let path = path.to_owned();
    move |source| RestoreError::Io { action, path, source }
}

/// One concrete checkpoint to try.
#[derive(Debug, Clone)]
enum Candidate {
    /// In the node-local store, by manifest digest.
    Local { reference: String, digest: String },
    /// A checkpoint archive on the node (kubelet's checkpoint API writes these).
    Archive { path: PathBuf },
    /// In a registry, by tag or digest.
    Registry { reference: Reference },
}

impl Candidate {
    fn reference(&self) -> String {
        match self {
            Candidate::Local { reference, .. } => reference.clone(),
            Candidate::Archive { path } => path.display().to_string(),
            Candidate::Registry { reference } => reference.to_string(),
        }
    }

    /// The identity failures are remembered by.
    fn identity(&self) -> String {
        match self {
            Candidate::Local { digest, .. } => digest.clone(),
            Candidate::Archive { path } => path.display().to_string(),
            Candidate::Registry { reference } => reference.digest.clone().unwrap_or_else(|| reference.to_string()),
        }
    }
}

/// The container a restore is for, from its `CreateContainerRequest`.
#[derive(Debug, Clone)]
struct Subject {
    namespace: String,
    pod: String,
    container: String,
    sandbox_id: String,
    image: v1::ImageSpec,
    annotations: HashMap<String, String>,
}

impl Subject {
    fn key(&self) -> String {
        format!("{}/{}/{}", self.namespace, self.pod, self.container)
    }
}

/// A checkpoint unpacked and checked, waiting for containerd's container id.
/// Dropped without [`Staged::commit`], it removes its files.
#[derive(Debug)]
pub struct Staged {
    dir: PathBuf,
    restore_dir: PathBuf,
    origin: Origin,
    committed: bool,
    /// Bytes unpacked (for the metrics).
    bytes: u64,
}

impl Staged {
    /// The checkpoint's reference.
    pub fn source(&self) -> &str {
        &self.origin.source
    }

    /// Makes the staged tree the restore plan of `container_id`.
    pub fn commit(mut self, container_id: &str) -> Result<PathBuf, RestoreError> {
        if !plan::valid_container_id(container_id) {
            return Err(RestoreError::Runtime(format!(
                "the runtime returned an unusable container id {container_id:?}"
            )));
        }
        let dest = plan::plan_dir(&self.restore_dir, container_id);
        std::fs::rename(&self.dir, &dest).map_err(io("moving the restore plan to", &dest))?;
        self.committed = true;
        let plan = Plan {
            version: plan::VERSION,
            source: self.origin.source.clone(),
            checkpoint_dir: dest.join(plan::TREE_DIR),
            tcp_close: true,
        };
        let written = plan::write_json(&dest.join(plan::ORIGIN_FILE), &self.origin)
            .and_then(|()| plan::write_json(&dest.join(plan::PLAN_FILE), &plan));
        if let Err(source) = written {
            std::fs::remove_dir_all(&dest).ok();
            return Err(RestoreError::Io { action: "writing the restore plan in", path: dest, source });
        }
        Ok(dest)
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            std::fs::remove_dir_all(&self.dir).ok();
        }
    }
}

/// The restore engine. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Restorer {
    runtime: Arc<dyn Runtime>,
    store: Arc<Store>,
    config: Arc<RestorerConfig>,
    fetcher: Fetcher,
    metrics: crate::metrics::Metrics,
}

/// How long `CreateContainer` waits for a download when kubelet sent no deadline.
const DEFAULT_WAIT: Duration = Duration::from_secs(100);
/// Time kept back from kubelet's deadline to answer before it.
const DEADLINE_MARGIN: Duration = Duration::from_secs(5);

const STAGING_PREFIX: &str = ".staging-";

impl Restorer {
    /// An engine restoring through `runtime` from `store`. Creates the
    /// restore dir and removes staging leftovers of an earlier run.
    pub fn new(
        runtime: Arc<dyn Runtime>,
        store: Arc<Store>,
        config: RestorerConfig,
        registry: crate::registry::RegistryClient,
    ) -> Result<Self, RestoreError> {
        std::fs::create_dir_all(&config.restore_dir).map_err(io("creating", &config.restore_dir))?;
        if let Ok(entries) = std::fs::read_dir(&config.restore_dir) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(STAGING_PREFIX) {
                    tracing::info!(path = %entry.path().display(), "removing an unfinished restore staging dir");
                    std::fs::remove_dir_all(entry.path()).ok();
                }
            }
        }
        let fetcher = Fetcher::new(registry, &config.restore_dir);
        Ok(Restorer { runtime, store, config: Arc::new(config), fetcher, metrics: crate::metrics::Metrics::new() })
    }

    /// Counts into `metrics` (the daemon's registry).
    pub fn with_metrics(mut self, metrics: crate::metrics::Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The runtime handler pods with restore annotations are put on.
    pub fn runtime_handler(&self) -> &str {
        &self.config.runtime_handler
    }

    /// The restore dir.
    pub fn restore_dir(&self) -> &Path {
        &self.config.restore_dir
    }

    /// Prepares the restore of the container `request` creates, if its pod asks
    /// for one. `Ok(None)`: create it fresh (no restore asked, or best effort
    /// found nothing usable). `Err`: do not create it; the message says why.
    ///
    /// `deadline` is the caller's (kubelet's `grpc-timeout`): a download that
    /// takes longer goes on in the background and the call answers
    /// `UNAVAILABLE` ("still downloading") in time for kubelet to retry.
    pub async fn prepare(
        &self,
        request: &v1::CreateContainerRequest,
        deadline: Option<Duration>,
    ) -> Result<Option<Staged>, RestoreError> {
        let wait = deadline.map_or(DEFAULT_WAIT, |d| d.saturating_sub(DEADLINE_MARGIN).max(Duration::from_secs(1)));
        let Some(sandbox) = &request.sandbox_config else { return Ok(None) };
        let container = request.config.as_ref().and_then(|c| c.metadata.as_ref()).map(|m| m.name.clone());
        let Some(container) = container else { return Ok(None) };
        let metadata = sandbox.metadata.clone().unwrap_or_default();
        let wanted = match ra::request_for(&sandbox.annotations, &container) {
            Ok(Some(wanted)) => wanted,
            Ok(None) => return Ok(None),
            Err(err) => {
                let err = RestoreError::from(err);
                let pod = format!("{}/{}", metadata.namespace, metadata.name);
                tracing::warn!(pod = %pod, container = %container, error = %err, "restore refused; the container is not created");
                self.metrics.restore(RestoreResult::Failed);
                self.metrics.restore_failed(err.reason());
                return Err(err);
            }
        };
        let subject = Subject {
            namespace: metadata.namespace,
            pod: metadata.name,
            container,
            sandbox_id: request.pod_sandbox_id.clone(),
            image: request.config.as_ref().and_then(|c| c.image.clone()).unwrap_or_default(),
            annotations: sandbox.annotations.clone(),
        };
        let span = tracing::info_span!("restore", pod = %format!("{}/{}", subject.namespace, subject.pod), container = %subject.container);
        span.in_scope(|| tracing::info!(annotation = %wanted.annotation, wanted = ?wanted.wanted, policy = wanted.policy.as_str(), "restore requested"));
        let started = std::time::Instant::now();
        // Instrumented, not entered: the event loop runs other calls while this one awaits.
        let result = self.prepare_for(&subject, &wanted, wait).instrument(span.clone()).await;
        let _enter = span.enter(); // no await below
        match result {
            Ok(staged) => {
                self.metrics.restore_prepared(started.elapsed(), staged.bytes);
                Ok(Some(staged))
            }
            // Not a reason to give up on the checkpoint: kubelet retries.
            Err(err @ RestoreError::Fetch { source: FetchError::StillDownloading { .. }, .. }) => {
                tracing::info!(error = %err, "checkpoint still downloading; answering so kubelet retries");
                self.metrics.restore(RestoreResult::Pending);
                Err(err)
            }
            Err(err) if wanted.policy == Policy::BestEffort => {
                self.metrics.restore(RestoreResult::Fresh);
                self.metrics.restore_failed(err.reason());
                tracing::warn!(error = %err, "no checkpoint restored; best effort: the container starts fresh");
                Ok(None)
            }
            Err(err) => {
                self.metrics.restore(RestoreResult::Failed);
                self.metrics.restore_failed(err.reason());
                tracing::warn!(error = %err, "restore refused; the container is not created");
                Err(err)
            }
        }
    }

    async fn prepare_for(
        &self,
        subject: &Subject,
        wanted: &RestoreRequest,
        wait: Duration,
    ) -> Result<Staged, RestoreError> {
        self.check_handler(&subject.sandbox_id).await?;
        let image_ids = self.image_ids(&subject.image).await?;
        match &wanted.wanted {
            Wanted::Reference(reference) => {
                let candidate = self.resolve(reference)?;
                self.stage(subject, &candidate, &image_ids, wait).await
            }
            Wanted::Latest => {
                let failed = self.failed(&subject.key());
                let (candidates, origin) = self.latest_candidates(subject).await?;
                if candidates.is_empty() {
                    return Err(RestoreError::NoneUsable { tried: format!("{origin} has no checkpoint") });
                }
                let mut tried = Vec::new();
                for candidate in candidates {
                    let candidate = match self.pin(candidate).await {
                        Ok(candidate) => candidate,
                        Err(err) => {
                            tracing::warn!(error = %err, "checkpoint unusable; trying the next older one");
                            tried.push(err.to_string());
                            continue;
                        }
                    };
                    let reference = candidate.reference();
                    if failed.contains(&candidate.identity()) {
                        tracing::info!(checkpoint = %reference, "skipping a checkpoint whose restore failed before");
                        tried.push(format!("{reference}: its restore failed before"));
                        continue;
                    }
                    match self.stage(subject, &candidate, &image_ids, wait).await {
                        Ok(staged) => return Ok(staged),
                        Err(err @ RestoreError::Fetch { source: FetchError::StillDownloading { .. }, .. }) => {
                            return Err(err);
                        }
                        Err(err) => {
                            tracing::warn!(checkpoint = %reference, error = %err, "checkpoint unusable; trying the next older one");
                            tried.push(err.to_string());
                        }
                    }
                }
                Err(RestoreError::NoneUsable { tried: tried.join("; ") })
            }
        }
    }

    /// The sandbox must run with lazarus's handler, or the wrapper never sees the container.
    async fn check_handler(&self, sandbox_id: &str) -> Result<(), RestoreError> {
        let status = self
            .runtime
            .pod_sandbox_status(sandbox_id)
            .await
            .map_err(|s| RestoreError::Runtime(format!("PodSandboxStatus {sandbox_id}: {}", s.message())))?;
        let actual = status.status.map(|s| s.runtime_handler).unwrap_or_default();
        if actual != self.config.runtime_handler {
            return Err(RestoreError::Handler {
                sandbox: sandbox_id.to_owned(),
                actual,
                wanted: self.config.runtime_handler.clone(),
            });
        }
        Ok(())
    }

    /// Every identifier of the image the container is created from.
    async fn image_ids(&self, image: &v1::ImageSpec) -> Result<Vec<String>, RestoreError> {
        let status = self
            .runtime
            .image_status(image)
            .await
            .map_err(|s| RestoreError::Runtime(format!("ImageStatus {}: {}", image.image, s.message())))?;
        let mut ids = vec![image.image.clone()];
        if let Some(found) = status.image {
            ids.push(found.id);
            ids.extend(found.repo_digests);
        }
        Ok(ids)
    }

    fn resolve(&self, reference: &str) -> Result<Candidate, RestoreError> {
        if reference.starts_with('/') {
            let path = std::fs::canonicalize(reference).map_err(|e| RestoreError::NotFound {
                reference: reference.to_owned(),
                reason: format!("archive: {e}"),
            })?;
            checks::archive_allowed(&path, &self.config.allowed_dirs)
                .map_err(|failure| RestoreError::Check { reference: reference.to_owned(), failure })?;
            return Ok(Candidate::Archive { path });
        }
        if reference.starts_with("local:") {
            let found = listing::find(&self.store, reference)
                .map_err(|reason| RestoreError::NotFound { reference: reference.to_owned(), reason })?;
            return Ok(Candidate::Local { reference: found.reference(), digest: found.digest });
        }
        checks::registry_allowed(reference, &self.config.allowed_registries)
            .map_err(|failure| RestoreError::Check { reference: reference.to_owned(), failure })?;
        let parsed = Reference::parse(reference).map_err(|e| {
            RestoreError::Annotation(AnnotationError {
                annotation: ra::RESTORE_FROM.to_owned(),
                value: reference.to_owned(),
                reason: e.to_string(),
            })
        })?;
        if parsed.tag.is_none() && parsed.digest.is_none() {
            return Err(RestoreError::NotFound {
                reference: reference.to_owned(),
                reason: "a registry reference needs a tag or a digest (or use latest with lazarus.dev/checkpoint-repository)".to_owned(),
            });
        }
        Ok(Candidate::Registry { reference: parsed })
    }

    /// A registry candidate by tag becomes one by digest (what failures are remembered by).
    async fn pin(&self, candidate: Candidate) -> Result<Candidate, RestoreError> {
        match candidate {
            Candidate::Registry { reference } if reference.digest.is_none() => {
                let resolved = self
                    .fetcher
                    .resolve(&reference)
                    .await
                    .map_err(|source| RestoreError::Fetch { reference: reference.to_string(), source })?;
                Ok(Candidate::Registry { reference: resolved.reference })
            }
            other => Ok(other),
        }
    }

    /// The pod's checkpoint repository, if it names one.
    fn repository_of(annotations: &HashMap<String, String>) -> Option<Result<Reference, RestoreError>> {
        let value = annotations.get(ann::CHECKPOINT_REPOSITORY)?.trim();
        Some(Reference::parse(value).map_err(|e| {
            RestoreError::Annotation(AnnotationError {
                annotation: ann::CHECKPOINT_REPOSITORY.to_owned(),
                value: value.to_owned(),
                reason: e.to_string(),
            })
        }))
    }

    /// Newest first, the checkpoints of this container in the pod's repository
    /// (by time tag). Empty if there are none; an error if the registry cannot be asked.
    async fn registry_candidates(
        &self,
        repository: &Reference,
        container: &str,
    ) -> Result<Vec<Candidate>, RestoreError> {
        let name = repository.repository_name();
        checks::registry_allowed(&name, &self.config.allowed_registries)
            .map_err(|failure| RestoreError::Check { reference: name.clone(), failure })?;
        let tags = self
            .fetcher
            .client()
            .list_tags(repository)
            .await
            .map_err(|e| RestoreError::Fetch { reference: name.clone(), source: FetchError::from(e) })?;
        let prefix = format!("{container}-");
        let mut ours: Vec<String> = tags
            .into_iter()
            .filter(|t| t.strip_prefix(&prefix).is_some_and(crate::registry::push::is_time_suffix))
            .collect();
        ours.sort();
        ours.reverse();
        ours.into_iter()
            .map(|tag| {
                repository
                    .with_tag(&tag)
                    .map(|reference| Candidate::Registry { reference })
                    .map_err(|e| RestoreError::Corrupt { reference: name.clone(), reason: format!("tag {tag}: {e}") })
            })
            .collect()
    }

    /// Newest first: this container's checkpoints in the pod's repository, or
    /// (no repository, or the registry unreachable) in the local store. Also
    /// says where it looked.
    async fn latest_candidates(&self, subject: &Subject) -> Result<(Vec<Candidate>, String), RestoreError> {
        if let Some(repository) = Self::repository_of(&subject.annotations) {
            let repository = repository?;
            match self.registry_candidates(&repository, &subject.container).await {
                Ok(found) => return Ok((found, format!("repository {}", repository.repository_name()))),
                Err(err @ RestoreError::Check { .. }) => return Err(err),
                Err(err) => {
                    tracing::warn!(error = %err, "cannot list the repository; looking in the local store");
                }
            }
        }
        Ok((self.local_candidates(subject)?, format!("the local store ({})", subject.key())))
    }

    /// Newest first: the local store's checkpoints of this pod's container.
    fn local_candidates(&self, subject: &Subject) -> Result<Vec<Candidate>, RestoreError> {
        let key = subject.key();
        let listed = listing::entries(&self.store, Some(&key))
            .map_err(|reason| RestoreError::NotFound { reference: format!("latest of {key}"), reason })?;
        let mut listed: Vec<_> = listed.into_iter().collect();
        listed.sort_by(|a, b| a.created.cmp(&b.created).then(a.name.cmp(&b.name)));
        Ok(listed.into_iter().rev().map(|l| Candidate::Local { reference: l.reference(), digest: l.digest }).collect())
    }

    /// Unpacks `candidate` into a fresh staging dir and runs the checks.
    async fn stage(
        &self,
        subject: &Subject,
        candidate: &Candidate,
        image_ids: &[String],
        wait: Duration,
    ) -> Result<Staged, RestoreError> {
        let candidate = &self.pin(candidate.clone()).await?;
        let reference = candidate.reference();
        let downloaded = match candidate {
            Candidate::Registry { reference: pinned } => Some(self.download(pinned, wait).await?),
            _ => None,
        };
        // A unique name from tempfile; `Staged` owns the removal from here on.
        let dir = tempfile::Builder::new()
            .prefix(STAGING_PREFIX)
            .tempdir_in(&self.config.restore_dir)
            .map_err(io("creating a staging dir in", &self.config.restore_dir))?
            .keep();
        let mut staged = Staged {
            dir: dir.clone(),
            restore_dir: self.config.restore_dir.clone(),
            origin: Origin { key: subject.key(), checkpoint: candidate.identity(), source: reference.clone() },
            committed: false,
            bytes: 0,
        };
        let tree = dir.join(plan::TREE_DIR);
        std::fs::create_dir(&tree).map_err(io("creating", &tree))?;
        let (store, candidate2, tree2, downloaded2) =
            (self.store.clone(), candidate.clone(), tree.clone(), downloaded.clone());
        let started = std::time::Instant::now();
        let outcome = tokio::task::spawn_blocking(move || match downloaded2 {
            Some(download) => unpack_download(&candidate2.reference(), &download, &tree2),
            None => unpack_candidate(&store, &candidate2, &tree2),
        })
        .await
        .map_err(|e| RestoreError::Runtime(format!("unpacking task: {e}")))?;
        if let Some(download) = &downloaded {
            self.fetcher.release(&download.layer_digest);
        }
        let (annotations, image_arch, unpacked) = outcome?;
        let meta = CheckpointMetadata::read(&tree, &annotations, image_arch.as_deref());
        let target =
            Target { namespace: &subject.namespace, image_ids, image_name: &subject.image.image, arch: ann::go_arch() };
        let cross = checks::cross_namespace_allowed(&reference, &self.config.cross_namespace_sources);
        checks::check(&meta, &target, cross)
            .map_err(|failure| RestoreError::Check { reference: reference.clone(), failure })?;
        if !tree.join(ann::files::CHECKPOINT_DIR).is_dir() {
            return Err(RestoreError::Corrupt {
                reference,
                reason: format!("it has no {}/ directory of CRIU images", ann::files::CHECKPOINT_DIR),
            });
        }
        tracing::info!(
            checkpoint = %reference,
            files = unpacked.files,
            bytes = unpacked.bytes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            checkpoint_namespace = meta.namespace.as_deref().unwrap_or(""),
            "checkpoint verified, unpacked and checked"
        );
        staged.bytes = unpacked.bytes;
        Ok(staged)
    }

    /// Downloads a registry checkpoint's manifest, config and layer (verified).
    async fn download(&self, pinned: &Reference, wait: Duration) -> Result<Download, RestoreError> {
        let fetch_err = |source| RestoreError::Fetch { reference: pinned.to_string(), source };
        let resolved = self.fetcher.resolve(pinned).await.map_err(fetch_err)?;
        let config = resolved.manifest.config();
        let config_path =
            self.fetcher.blob(pinned, config.digest().as_ref(), config.size(), wait).await.map_err(fetch_err)?;
        let config_bytes = std::fs::read(&config_path).map_err(io("reading", &config_path))?;
        self.fetcher.release(config.digest().as_ref());
        let arch =
            serde_json::from_slice::<ImageConfiguration>(&config_bytes).ok().map(|c| c.architecture().to_string());
        let layer = resolved.manifest.layers()[0].clone();
        let layer_digest = layer.digest().to_string();
        let layer_path = self.fetcher.blob(pinned, &layer_digest, layer.size(), wait).await.map_err(fetch_err)?;
        let annotations = resolved.manifest.annotations().clone().unwrap_or_default().into_iter().collect();
        Ok(Download { layer_path, layer_digest, annotations, arch })
    }

    /// Starts downloading what the pod will restore, as soon as the pod
    /// exists: explicit registry references, and the newest checkpoint of
    /// each container in the pod's repository for `latest`.
    pub fn prefetch(&self, pod: &v1::PodSandboxConfig) {
        let wanted: Vec<(String, String)> = pod
            .annotations
            .iter()
            .filter(|(k, _)| *k == ra::RESTORE_FROM || k.starts_with(ra::RESTORE_FROM_PREFIX))
            .map(|(k, v)| (k.strip_prefix(ra::RESTORE_FROM_PREFIX).unwrap_or("").to_owned(), v.trim().to_owned()))
            .collect();
        if wanted.is_empty() {
            return;
        }
        let this = self.clone();
        let annotations = pod.annotations.clone();
        let pod_name = pod.metadata.as_ref().map(|m| format!("{}/{}", m.namespace, m.name)).unwrap_or_default();
        tokio::spawn(async move {
            for (container, value) in wanted {
                let references: Vec<Reference> = if value == ra::LATEST {
                    let Some(Ok(repository)) = Self::repository_of(&annotations) else { continue };
                    if checks::registry_allowed(&repository.repository_name(), &this.config.allowed_registries).is_err()
                    {
                        continue;
                    }
                    let Ok(tags) = this.fetcher.client().list_tags(&repository).await else { continue };
                    newest_per_container(&tags, (!container.is_empty()).then_some(container.as_str()))
                        .into_iter()
                        .filter_map(|tag| repository.with_tag(&tag).ok())
                        .collect()
                } else if value.starts_with('/') || value.starts_with("local:") {
                    continue;
                } else {
                    match this.resolve(&value) {
                        Ok(Candidate::Registry { reference }) => vec![reference],
                        _ => continue,
                    }
                };
                for reference in references {
                    if let Ok(resolved) = this.fetcher.resolve(&reference).await {
                        let layer = &resolved.manifest.layers()[0];
                        tracing::info!(pod = %pod_name, container = %container, checkpoint = %resolved.reference, "prefetching the checkpoint for a pod being created");
                        drop(this.fetcher.start(&resolved.reference, layer.digest().as_ref(), layer.size()));
                    }
                }
            }
        });
    }

    /// Checkpoints of `key` whose restore failed before.
    fn failed(&self, key: &str) -> Vec<String> {
        failed_checkpoints(&self.config.failures_file, key)
    }

    fn remember_failure(&self, origin: &Origin) {
        if let Err(e) = record_failure(&self.config.failures_file, origin) {
            tracing::warn!(error = %e, path = %self.config.failures_file.display(), "cannot record the failed restore");
        }
    }

    /// Whether `container_id` has a restore plan.
    pub fn has_plan(&self, container_id: &str) -> bool {
        plan::valid_container_id(container_id)
            && plan::plan_dir(&self.config.restore_dir, container_id).join(plan::PLAN_FILE).is_file()
    }

    /// After `StartContainer` of a container with a plan: on failure the
    /// checkpoint is remembered as failed for this container (the next
    /// `latest` attempt takes an older one); either way the unpacked images
    /// are removed, the logs kept until the container is removed.
    pub fn started(&self, container_id: &str, error: Option<&str>) {
        let dir = plan::plan_dir(&self.config.restore_dir, container_id);
        let origin: Option<Origin> = plan::read_json(&dir.join(plan::ORIGIN_FILE));
        let result: Option<plan::RestoreResult> = plan::read_json(&dir.join(plan::RESULT_FILE));
        let (key, source) =
            origin.as_ref().map_or((String::new(), String::new()), |o| (o.key.clone(), o.source.clone()));
        // The key is namespace/pod/container.
        let (pod, container) = key.rsplit_once('/').unwrap_or(("", key.as_str()));
        match error {
            None if result.as_ref().is_some_and(|r| r.ok) => {
                self.metrics.restore(RestoreResult::Restored);
                tracing::info!(pod, container, container_id, checkpoint = %source, "container restored from its checkpoint");
            }
            None => {
                self.metrics.restore(RestoreResult::Failed);
                self.metrics.restore_failed("wrapper");
                tracing::error!(
                    pod,
                    container,
                    container_id,
                    checkpoint = %source,
                    "StartContainer succeeded but the wrapper did not restore (is the pod's runtime handler's BinaryName lazarus-runc, with the same LAZARUS_RESTORE_DIR?)"
                );
            }
            Some(message) => {
                let log = result.map(|r| r.restore_log.join(" | ")).unwrap_or_default();
                self.metrics.restore(RestoreResult::Failed);
                self.metrics.restore_failed("criu");
                tracing::warn!(pod, container, container_id, checkpoint = %source, error = %message, restore_log = %log, "restore failed; this checkpoint will be skipped next time");
                if let Some(origin) = &origin {
                    self.remember_failure(origin);
                }
            }
        }
        let tree = dir.join(plan::TREE_DIR);
        if tree.exists() {
            // Gigabytes of images: removed on the blocking pool, not on the event loop
            // (StartContainer's answer does not wait for it).
            let remove = move || {
                if let Err(e) = std::fs::remove_dir_all(&tree) {
                    tracing::warn!(path = %tree.display(), error = %e, "cannot remove the unpacked checkpoint");
                }
            };
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn_blocking(remove)),
                Err(_) => remove(),
            }
        }
    }

    /// After containerd created the container `container_id` for `staged`:
    /// the staged tree becomes its restore plan. If that fails the container
    /// is removed again ([`discard`](Self::discard)): a container promised a
    /// restore never starts fresh.
    pub async fn commit(&self, staged: Staged, container_id: &str) -> Result<PathBuf, RestoreError> {
        match staged.commit(container_id) {
            Ok(dir) => Ok(dir),
            Err(err) => {
                tracing::error!(container_id, error = %err, "the restore plan could not be written; removing the created container");
                self.discard(container_id).await;
                Err(err)
            }
        }
    }

    /// Removes a container created for a restore that can no longer happen
    /// (its plan could not be written), so it never starts fresh by mistake.
    pub async fn discard(&self, container_id: &str) {
        if let Err(status) = self.runtime.remove_container(container_id).await {
            tracing::error!(container_id, error = %status.message(), "cannot remove a container whose restore plan failed");
        }
        self.removed(container_id);
    }

    /// Removes the plans of containers the runtime no longer knows (removed
    /// while lazarus was down). Run once at start; a runtime that cannot be
    /// asked leaves everything in place.
    pub async fn sweep_stale_plans(&self) {
        let Ok(entries) = std::fs::read_dir(&self.config.restore_dir) else { return };
        let ids: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|name| !name.starts_with('.') && plan::valid_container_id(name))
            .collect();
        for id in ids {
            match self.runtime.container_status(&id, false).await {
                Err(status) if status.code() == Code::NotFound => {
                    tracing::info!(container_id = %id, "removing the restore plan of a container that no longer exists");
                    let dir = plan::plan_dir(&self.config.restore_dir, &id);
                    let removed = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
                    if let Ok(Err(e)) = removed {
                        tracing::warn!(container_id = %id, error = %e, "cannot remove a stale restore plan");
                    }
                }
                Err(status) => {
                    tracing::debug!(error = %status.message(), "runtime not answering; stale restore plans stay for now");
                    return;
                }
                Ok(_) => {}
            }
        }
    }

    /// After `RemoveContainer`: the plan dir goes too.
    pub fn removed(&self, container_id: &str) {
        if !plan::valid_container_id(container_id) {
            return;
        }
        let dir = plan::plan_dir(&self.config.restore_dir, container_id);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).ok();
        }
    }
}

/// The protobuf bytes that put a `RunPodSandbox` on lazarus's runtime handler
/// (field 2, `runtime_handler`), for a pod asking for a restore that did not
/// choose a handler itself. `None`: leave the request as it is.
pub fn runtime_handler_patch(restorer: &Restorer, request: &v1::RunPodSandboxRequest) -> Option<Vec<u8>> {
    let config = request.config.as_ref()?;
    if !ra::pod_wants_restore(&config.annotations) {
        return None;
    }
    let pod = config.metadata.as_ref().map(|m| format!("{}/{}", m.namespace, m.name)).unwrap_or_default();
    let handler = restorer.runtime_handler();
    if !request.runtime_handler.is_empty() {
        if request.runtime_handler != handler {
            tracing::warn!(
                pod = %pod,
                runtime_handler = %request.runtime_handler,
                lazarus_handler = %handler,
                "pod asks for a restore but chose another runtime handler; its containers cannot be restored"
            );
        }
        return None;
    }
    tracing::info!(pod = %pod, runtime_handler = %handler, "pod asks for a restore: running it with lazarus's runtime handler");
    Some(encode_string_field(2, handler))
}

fn encode_string_field(field: u32, value: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 6);
    prost::encoding::encode_key(field, prost::encoding::WireType::LengthDelimited, &mut out);
    prost::encoding::encode_varint(value.len() as u64, &mut out);
    out.extend_from_slice(value.as_bytes());
    out
}

/// Serializes updates of the failures file within this process.
static FAILURES: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Checkpoints whose restore failed for the container `key` (`namespace/pod/container`).
fn failed_checkpoints(file: &Path, key: &str) -> Vec<String> {
    let all: BTreeMap<String, Vec<String>> = plan::read_json(file).unwrap_or_default();
    all.get(key).cloned().unwrap_or_default()
}

/// Remembers that `origin.checkpoint` failed to restore for `origin.key`.
fn record_failure(file: &Path, origin: &Origin) -> std::io::Result<()> {
    let _guard = FAILURES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut all: BTreeMap<String, Vec<String>> = plan::read_json(file).unwrap_or_default();
    let list = all.entry(origin.key.clone()).or_default();
    if !list.contains(&origin.checkpoint) {
        list.push(origin.checkpoint.clone());
    }
    plan::write_json(file, &all)
}

/// A registry checkpoint downloaded and verified.
#[derive(Debug, Clone)]
struct Download {
    layer_path: PathBuf,
    layer_digest: String,
    annotations: BTreeMap<String, String>,
    arch: Option<String>,
}

/// The newest time tag per container name (or of one container).
fn newest_per_container(tags: &[String], only: Option<&str>) -> Vec<String> {
    let mut newest: BTreeMap<&str, &String> = BTreeMap::new();
    for tag in tags {
        let Some((container, suffix)) = tag.len().checked_sub(21).and_then(|i| tag.split_at_checked(i)) else {
            continue;
        };
        let Some(suffix) = suffix.strip_prefix('-') else { continue };
        if !crate::registry::push::is_time_suffix(suffix) || only.is_some_and(|o| o != container) {
            continue;
        }
        if newest.get(container).is_none_or(|n| *n < tag) {
            newest.insert(container, tag);
        }
    }
    newest.into_values().cloned().collect()
}

fn unpack_download(reference: &str, download: &Download, tree: &Path) -> Result<UnpackOutcome, RestoreError> {
    let file = std::fs::File::open(&download.layer_path).map_err(io("opening", &download.layer_path))?;
    // Verified while downloading; unpacking checks the archive's safety.
    let unpacked = archive::unpack(file, tree, None, &download.layer_path)
        .map_err(|source| RestoreError::Unpack { reference: reference.to_owned(), source })?;
    Ok((download.annotations.clone(), download.arch.clone(), unpacked))
}

/// Manifest annotations, image architecture and what was unpacked.
type UnpackOutcome = (BTreeMap<String, String>, Option<String>, archive::Unpacked);

fn unpack_candidate(store: &Store, candidate: &Candidate, tree: &Path) -> Result<UnpackOutcome, RestoreError> {
    let reference = candidate.reference();
    match candidate {
        Candidate::Registry { reference } => Err(RestoreError::Runtime(format!("{reference} was not downloaded"))),
        Candidate::Archive { path } => {
            let file = std::fs::File::open(path).map_err(io("opening", path))?;
            let unpacked = archive::unpack(file, tree, None, path)
                .map_err(|source| RestoreError::Unpack { reference: reference.clone(), source })?;
            Ok((BTreeMap::new(), None, unpacked))
        }
        Candidate::Local { digest, .. } => {
            let corrupt = |reason: String| RestoreError::Corrupt { reference: reference.clone(), reason };
            let bytes = store.read_blob(digest).map_err(|e| corrupt(format!("manifest: {e}")))?;
            let actual = format!("sha256:{:x}", Sha256::digest(&bytes));
            if &actual != digest {
                return Err(corrupt(format!("manifest digest mismatch: expected {digest}, the data has {actual}")));
            }
            let manifest: ImageManifest =
                serde_json::from_slice(&bytes).map_err(|e| corrupt(format!("manifest: {e}")))?;
            let [layer] = manifest.layers().as_slice() else {
                return Err(corrupt(format!("expected one layer, the manifest has {}", manifest.layers().len())));
            };
            let config_digest = manifest.config().digest().to_string();
            let arch = store
                .read_blob(&config_digest)
                .ok()
                .filter(|b| format!("sha256:{:x}", Sha256::digest(b)) == config_digest)
                .and_then(|b| serde_json::from_slice::<ImageConfiguration>(&b).ok())
                .map(|c| c.architecture().to_string());
            let layer_digest = layer.digest().to_string();
            let path = store.blob_path(&layer_digest).map_err(|e| corrupt(format!("layer: {e}")))?;
            let file = std::fs::File::open(&path).map_err(io("opening", &path))?;
            let unpacked = archive::unpack(file, tree, Some(&layer_digest), &path)
                .map_err(|source| RestoreError::Unpack { reference: reference.clone(), source })?;
            let annotations = manifest.annotations().clone().unwrap_or_default().into_iter().collect();
            Ok((annotations, arch, unpacked))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn failed_restores_are_remembered_per_container() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("restore-failures.json");
        assert!(failed_checkpoints(&file, "ns/p/c").is_empty());
        let origin = |key: &str, checkpoint: &str| Origin {
            key: key.into(),
            checkpoint: checkpoint.into(),
            source: format!("local:{key}@{checkpoint}"),
        };
        record_failure(&file, &origin("ns/p/c", "sha256:a")).expect("record");
        record_failure(&file, &origin("ns/p/c", "sha256:a")).expect("record twice");
        record_failure(&file, &origin("ns/p/c", "sha256:b")).expect("record");
        record_failure(&file, &origin("ns/q/c", "sha256:c")).expect("record");
        assert_eq!(failed_checkpoints(&file, "ns/p/c"), vec!["sha256:a".to_owned(), "sha256:b".to_owned()]);
        assert_eq!(failed_checkpoints(&file, "ns/q/c"), vec!["sha256:c".to_owned()]);
    }

    #[test]
    fn newest_tag_per_container() {
        let tags: Vec<String> = [
            "app-20261122T000000.000Z",
            "app-20261123T000000.000Z",
            "app-latest",
            "side-car-20261101T000000.000Z",
            "x-notatime",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        assert_eq!(
            newest_per_container(&tags, None),
            vec!["app-20261123T000000.000Z", "side-car-20261101T000000.000Z"]
        );
        assert_eq!(newest_per_container(&tags, Some("side-car")), vec!["side-car-20261101T000000.000Z"]);
    }

    #[test]
    fn the_appended_handler_wins_and_keeps_unknown_fields() {
        let original = v1::RunPodSandboxRequest { config: None, runtime_handler: String::new() };
        let mut bytes = original.encode_to_vec();
        bytes.extend_from_slice(&[0x98, 0x06, 0x07]); // field 99: unknown
        bytes.extend_from_slice(&encode_string_field(2, "lazarus"));
        let decoded = v1::RunPodSandboxRequest::decode(&bytes[..]).expect("decodes");
        assert_eq!(decoded.runtime_handler, "lazarus");
        assert!(bytes.windows(3).any(|w| w == [0x98, 0x06, 0x07]));
        let mut overridden = v1::RunPodSandboxRequest { config: None, runtime_handler: "runc".into() }.encode_to_vec();
        overridden.extend_from_slice(&encode_string_field(2, "lazarus"));
        assert_eq!(
            v1::RunPodSandboxRequest::decode(&overridden[..]).map(|r| r.runtime_handler).ok(),
            Some("lazarus".into())
        );
    }
}

#[cfg(test)]
mod seam_tests;
