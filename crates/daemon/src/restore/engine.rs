//! The restore engine: resolves, verifies, unpacks and checks a checkpoint for
//! a container kubelet is creating, and follows the container's start.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lazarus_proto::v1;
use tonic::Code;
use tracing::Instrument;

use super::annotations::{self as ra, AnnotationError, Policy, RestoreRequest, Wanted};
use super::checks::{self, CheckFailure};
use super::fetch::{FetchError, Fetcher};
use crate::metrics::RestoreResult;
use crate::runtime::Runtime;
use lazarus_format::archive::{self, ArchiveError};
use lazarus_format::fsutil::{read_json, write_json_atomic};
use lazarus_format::identity;
use lazarus_format::plan;
use lazarus_registry::Reference;
use lazarus_store::Store;

/// Settings of the restore engine.
mod candidates;
mod cuts;
mod outcome;
mod stage;
mod volumes;

use candidates::{Candidate, newest_per_container};
pub use stage::Staged;

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
    /// How long a failure is remembered against a checkpoint (`restore_failure_expiry`).
    pub failure_expiry: Duration,
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
            failure_expiry: config.restore_failure_expiry,
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
    /// The new container's volumes do not hold the files the checkpoint's
    /// processes had open (the environment's fault: not remembered).
    #[error("{}", volume_message(reference, mismatches))]
    Volume {
        /// The checkpoint.
        reference: String,
        /// Each volume that does not match.
        mismatches: Vec<volumes::Mismatch>,
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
            RestoreError::Volume { .. } => "volume",
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
            RestoreError::Check { .. }
            | RestoreError::Handler { .. }
            | RestoreError::NoneUsable { .. }
            | RestoreError::Volume { .. } => Code::FailedPrecondition,
            RestoreError::Unpack { .. } | RestoreError::Corrupt { .. } => Code::DataLoss,
            RestoreError::Runtime(_) => Code::Unavailable,
            RestoreError::Fetch { source, .. } => source.code(),
            RestoreError::Io { .. } => Code::Internal,
        }
    }
}

impl RestoreError {
    /// Whether this attempt failed because of the node, not the checkpoint
    /// (a volume that does not match, a runtime that cannot be asked): kubelet's
    /// retry may succeed with the same checkpoint, so even best effort refuses
    /// rather than start fresh, and nothing is remembered against it.
    pub fn is_environment(&self) -> bool {
        matches!(self, RestoreError::Volume { .. } | RestoreError::Runtime(_))
    }
}

/// The refusal of a volume pre-check: the volumes and files first (the cause), then what to do.
fn volume_message(reference: &str, mismatches: &[volumes::Mismatch]) -> String {
    let listed: Vec<String> = mismatches.iter().map(ToString::to_string).collect();
    format!(
        "{}\nthe checkpoint {reference} had these files open: put them back as they were at its time \
         (a volume whose files may have grown can be allowed with {}), and kubelet's retry restores it",
        listed.join("\n"),
        lazarus_format::annotations::VOLUME_APPENDS_OK
    )
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RestoreError + use<> {
    let path = path.to_owned();
    move |source| RestoreError::Io { action, path, source }
}

/// The container a restore is for, from its `CreateContainerRequest`.
#[derive(Debug, Clone)]
struct Subject {
    namespace: String,
    /// The pod's checkpoint identity ([`lazarus_format::identity`]).
    identity: String,
    pod: String,
    container: String,
    sandbox_id: String,
    image: v1::ImageSpec,
    annotations: HashMap<String, String>,
    /// The new container's mounts: container path → host path.
    mounts: Vec<(String, String)>,
}

impl Subject {
    /// Where its checkpoints are kept: `namespace/<identity>/container`.
    fn key(&self) -> String {
        format!("{}/{}/{}", self.namespace, self.identity, self.container)
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
    /// The pod cut each sandbox's containers are restored from.
    cuts: cuts::Cuts,
}

/// How long `CreateContainer` waits for a download when kubelet sent no deadline.
const DEFAULT_WAIT: Duration = Duration::from_secs(100);
/// Time kept back from kubelet's deadline to answer before it.
const DEADLINE_MARGIN: Duration = Duration::from_secs(5);

const STAGING_PREFIX: &str = ".staging-";

impl Restorer {
    /// An engine restoring through `runtime` from `store`. Creates the
    /// restore dir and removes staging leftovers of an earlier run.
    #[expect(clippy::disallowed_methods, reason = "once at start-up (server::serve), before the first call")]
    pub fn new(
        runtime: Arc<dyn Runtime>,
        store: Arc<Store>,
        config: RestorerConfig,
        registry: lazarus_registry::RegistryClient,
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
        Ok(Restorer {
            runtime,
            store,
            config: Arc::new(config),
            fetcher,
            metrics: crate::metrics::Metrics::new(),
            cuts: cuts::Cuts::default(),
        })
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
        let refuse = |err: AnnotationError| {
            let err = RestoreError::from(err);
            let pod = format!("{}/{}", metadata.namespace, metadata.name);
            tracing::warn!(pod = %pod, container = %container, error = %err, "restore refused; the container is not created");
            self.metrics.restore(RestoreResult::Failed);
            self.metrics.restore_failed(err.reason());
            err
        };
        let wanted = match ra::request_for(&sandbox.annotations, &container) {
            Ok(Some(wanted)) => wanted,
            Ok(None) => return Ok(None),
            Err(err) => return Err(refuse(err)),
        };
        let identity = match identity::identity(&metadata.name, &sandbox.labels, &sandbox.annotations) {
            Ok(identity) => identity,
            Err(err) => {
                return Err(refuse(AnnotationError {
                    annotation: lazarus_format::annotations::CHECKPOINT_NAME.to_owned(),
                    value: err.value,
                    reason: err.reason.to_owned(),
                }));
            }
        };
        let subject = Subject {
            namespace: metadata.namespace.clone(),
            identity: identity.name,
            pod: metadata.name.clone(),
            container,
            sandbox_id: request.pod_sandbox_id.clone(),
            image: request.config.as_ref().and_then(|c| c.image.clone()).unwrap_or_default(),
            annotations: sandbox.annotations.clone(),
            mounts: request
                .config
                .as_ref()
                .map(|c| c.mounts.iter().map(|m| (m.container_path.clone(), m.host_path.clone())).collect())
                .unwrap_or_default(),
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
            // Best effort starts fresh only when no checkpoint can be used, never
            // because of the node (a volume, the runtime): kubelet retries those.
            Err(err) if wanted.policy == Policy::BestEffort && !err.is_environment() => {
                self.metrics.restore(RestoreResult::Fresh);
                self.metrics.restore_failed(err.reason());
                self.metrics.restore_fresh_start(err.reason());
                tracing::warn!(
                    pod = %format!("{}/{}", subject.namespace, subject.pod),
                    container = %subject.container,
                    reason = err.reason(),
                    error = %err,
                    "FreshStart: no checkpoint restored; best effort: the container starts from zero"
                );
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
                let failed = self.failed(&subject.key()).await;
                let (mut candidates, origin) = self.latest_candidates(subject).await?;
                // A sibling was restored from a pod cut: this container from the same one only.
                let bound = self.cuts.bound(subject);
                if let Some(cut) = &bound {
                    candidates.retain(|c| c.time_tag(&subject.container).as_deref() == Some(cut.tag.as_str()));
                    if candidates.is_empty() {
                        return Err(RestoreError::NoneUsable {
                            tried: format!(
                                "the pod's containers are restored from the pod cut {} ({}); {origin} has no checkpoint \
                                 of this container from it",
                                cut.tag,
                                cut.members.join(", ")
                            ),
                        });
                    }
                }
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
                        Ok(mut staged) => {
                            let (Some(members), Some(tag)) =
                                (staged.pod_cut.clone(), candidate.time_tag(&subject.container))
                            else {
                                return Ok(staged);
                            };
                            if let Some(cut) = &bound {
                                staged.skip_pod_data = cut.skip_pod_data(subject);
                            } else {
                                let missing = self.missing_from_cut(subject, &tag, &members).await;
                                if !missing.is_empty() {
                                    let reason = format!(
                                        "{reference}: its pod cut {tag} lacks the checkpoint of container(s) {}",
                                        missing.join(", ")
                                    );
                                    tracing::warn!(checkpoint = %reference, missing = ?missing, "pod cut incomplete; trying the next older checkpoint");
                                    tried.push(reason);
                                    continue;
                                }
                                self.cuts.choose(subject, &tag, members.clone());
                                tracing::info!(checkpoint = %reference, pod_cut = %tag, members = ?members, "the pod's containers are restored from this pod cut");
                            }
                            staged.cut_member = Some(cuts::CutMember {
                                sandbox_id: subject.sandbox_id.clone(),
                                container: subject.container.clone(),
                                host_paths: subject.mounts.iter().map(|(_, host)| host.clone()).collect(),
                            });
                            return Ok(staged);
                        }
                        Err(err @ RestoreError::Fetch { source: FetchError::StillDownloading { .. }, .. }) => {
                            return Err(err);
                        }
                        // The node's volumes, not this checkpoint: an older one would not match either.
                        Err(err) if err.is_environment() => return Err(err),
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
                        tracing::info!(pod = %pod_name, container = %container, checkpoint = %resolved.reference, layers = resolved.manifest.layers().len(), "prefetching the checkpoint for a pod being created");
                        for layer in resolved.manifest.layers() {
                            drop(this.fetcher.start(&resolved.reference, layer.digest().as_ref(), layer.size()));
                        }
                    }
                }
            }
        });
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

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

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
