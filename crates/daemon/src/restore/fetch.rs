//! Fetching checkpoints from a registry, started as early as possible and not
//! tied to one CRI call.
//!
//! kubelet gives `CreateContainer` about two minutes and a checkpoint can be
//! gigabytes. A download starts when `RunPodSandbox` arrives for an annotated
//! pod (or at the latest when `CreateContainer` does), runs in its own task,
//! and lands in `<restore_dir>/.cache/<digest>` verified. A `CreateContainer`
//! that reaches its deadline first answers "still downloading"; the download
//! goes on, and kubelet's retry picks up the finished blob.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oci_spec::image::ImageManifest;
use tokio::sync::watch;
use tonic::Code;

use lazarus_registry::{Reference, RegistryClient, RegistryError};

/// The outcome of one download, shared by everyone waiting for it.
type Outcome = Option<Result<PathBuf, FetchError>>;

/// A checkpoint manifest resolved in a registry.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The reference with its manifest digest.
    pub reference: Reference,
    /// The manifest.
    pub manifest: ImageManifest,
}

/// Why a fetch failed. Cloned to everyone waiting for one download, hence the `Arc`s.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    /// The registry said no, or could not be reached, or the data is wrong;
    /// typed, so that a wrong tag stays `NOT_FOUND` (see [`FetchError::code`]).
    #[error(transparent)]
    Registry(Arc<RegistryError>),
    /// The verified download could not be moved into the cache.
    #[error("{action} {}: {source}", path.display())]
    Cache {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: Arc<std::io::Error>,
    },
    /// The download task went away without a result (the daemon is shutting down).
    #[error("the download of {digest} ended without a result")]
    Abandoned {
        /// The layer.
        digest: String,
    },
    /// The manifest is not a checkpoint image.
    #[error("{0}")]
    NotACheckpoint(String),
    /// Still downloading when the caller's time ran out.
    #[error("still downloading layer {digest} ({size} bytes); the download goes on and a retry will use it")]
    StillDownloading {
        /// The layer.
        digest: String,
        /// Its size.
        size: u64,
    },
}

impl From<RegistryError> for FetchError {
    fn from(err: RegistryError) -> Self {
        FetchError::Registry(Arc::new(err))
    }
}

impl FetchError {
    /// The gRPC code a `CreateContainer` refused for this reason is answered with:
    /// only what a retry can fix is `UNAVAILABLE`.
    pub fn code(&self) -> Code {
        match self {
            FetchError::Registry(err) => crate::error::registry_code(err),
            FetchError::NotACheckpoint(_) => Code::FailedPrecondition,
            FetchError::StillDownloading { .. } | FetchError::Abandoned { .. } => Code::Unavailable,
            FetchError::Cache { .. } => Code::Internal,
        }
    }
}

/// Downloads checkpoint blobs, once each, into a cache directory.
#[derive(Debug, Clone)]
pub struct Fetcher {
    client: RegistryClient,
    cache: PathBuf,
    inflight: Arc<Mutex<HashMap<String, watch::Receiver<Outcome>>>>,
    /// Downloads running at once: a checkpoint in the store's layout is thousands of chunks.
    slots: Arc<tokio::sync::Semaphore>,
}

/// Blobs downloaded at once.
const PARALLEL_DOWNLOADS: usize = 4;

impl Fetcher {
    /// A fetcher with its cache under `restore_dir`; leftovers of an earlier
    /// run are removed (a partial download never counts).
    #[expect(clippy::disallowed_methods, reason = "once at start-up, before the first call (server::serve)")]
    pub fn new(client: RegistryClient, restore_dir: &Path) -> Fetcher {
        let cache = restore_dir.join(".cache");
        std::fs::remove_dir_all(&cache).ok();
        std::fs::create_dir_all(&cache).ok();
        Fetcher {
            client,
            cache,
            inflight: Arc::default(),
            slots: Arc::new(tokio::sync::Semaphore::new(PARALLEL_DOWNLOADS)),
        }
    }

    /// The client.
    pub fn client(&self) -> &RegistryClient {
        &self.client
    }

    /// Resolves `reference` to its manifest (verified against its digest when it has one).
    pub async fn resolve(&self, reference: &Reference) -> Result<Resolved, FetchError> {
        let fetched = self.client.get_manifest(reference).await?;
        let manifest: ImageManifest = serde_json::from_slice(&fetched.bytes)
            .map_err(|e| FetchError::NotACheckpoint(format!("{reference}: not an OCI image manifest: {e}")))?;
        if manifest.layers().is_empty() {
            return Err(FetchError::NotACheckpoint(format!(
                "{reference}: a checkpoint image has layers, this one none"
            )));
        }
        let pinned = reference.with_digest(&fetched.digest).map_err(RegistryError::from)?;
        Ok(Resolved { reference: pinned, manifest })
    }

    /// The cached, verified blob `digest` of `repository`, downloading it if
    /// needed. Waits at most `wait`; the download itself is not cancelled.
    pub async fn blob(
        &self,
        repository: &Reference,
        digest: &str,
        size: u64,
        wait: Duration,
    ) -> Result<PathBuf, FetchError> {
        let mut receiver = self.start(repository, digest, size);
        let done = tokio::time::timeout(wait, receiver.wait_for(Option::is_some)).await;
        match done {
            Err(_) => Err(FetchError::StillDownloading { digest: digest.to_owned(), size }),
            Ok(Err(_)) => Err(FetchError::Abandoned { digest: digest.to_owned() }),
            Ok(Ok(outcome)) => match outcome.clone() {
                Some(result) => result,
                None => Err(FetchError::Abandoned { digest: digest.to_owned() }),
            },
        }
    }

    /// Starts downloading (if not cached or under way) and returns the way to wait for it.
    pub fn start(&self, repository: &Reference, digest: &str, size: u64) -> watch::Receiver<Outcome> {
        let path = self.cache.join(digest.replace(':', "-"));
        let mut inflight = self.inflight.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(existing) = inflight.get(digest) {
            let failed = matches!(&*existing.borrow(), Some(Err(_)));
            let gone = matches!(&*existing.borrow(), Some(Ok(p)) if !p.exists());
            if !failed && !gone {
                return existing.clone();
            }
        }
        let (sender, receiver) = watch::channel(None);
        inflight.insert(digest.to_owned(), receiver.clone());
        drop(inflight);
        let (client, repository, digest) = (self.client.clone(), repository.clone(), digest.to_owned());
        let slots = self.slots.clone();
        tokio::spawn(async move {
            let _slot = slots.acquire_owned().await.ok();
            let partial = path.with_extension("partial");
            let started = std::time::Instant::now();
            tracing::info!(registry = %repository.registry, repository = %repository.repository, digest = %digest, size, "downloading checkpoint layer");
            let result = match client.pull_blob_to_file(&repository, &digest, Some(size), &partial).await {
                Ok(_) => {
                    let (from, to) = (partial.clone(), path.clone());
                    #[expect(clippy::disallowed_methods, reason = "runs on the blocking pool")]
                    let moved = crate::blocking::run(move || std::fs::rename(&from, &to)).await;
                    moved.map(|()| path.clone()).map_err(|e| FetchError::Cache {
                        action: "moving the download into the cache",
                        path: partial.clone(),
                        source: Arc::new(e),
                    })
                }
                Err(e) => Err(FetchError::from(e)),
            };
            match &result {
                Ok(_) => {
                    tracing::info!(digest = %digest, size, elapsed_ms = started.elapsed().as_millis() as u64, "checkpoint layer downloaded and verified")
                }
                Err(e) => tracing::warn!(digest = %digest, error = %e, "checkpoint layer download failed"),
            }
            sender.send_replace(Some(result));
        });
        receiver
    }

    /// Forgets a cached blob once it has been unpacked.
    pub fn release(&self, digest: &str) {
        let path = self.cache.join(digest.replace(':', "-"));
        crate::blocking::remove_file_later(path);
        self.inflight.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(digest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(err: RegistryError) -> Code {
        FetchError::from(err).code()
    }

    #[test]
    fn registry_errors_keep_their_meaning_as_grpc_codes() {
        let host = || "reg.example.com".to_owned();
        let repo = || "team/job".to_owned();
        let what = || "manifest job-20261122T235133.919Z".to_owned();
        assert_eq!(
            registry(RegistryError::NotFound { registry: host(), repository: repo(), what: what() }),
            Code::NotFound
        );
        assert_eq!(
            registry(RegistryError::Auth { registry: host(), reason: "HTTP 401: bad credentials".into() }),
            Code::PermissionDenied
        );
        assert_eq!(
            registry(RegistryError::Transport { registry: host(), what: what(), reason: "connection refused".into() }),
            Code::Unavailable
        );
        assert_eq!(
            registry(RegistryError::Timeout { registry: host(), what: what(), timeout: Duration::from_secs(30) }),
            Code::Unavailable
        );
        assert_eq!(
            registry(RegistryError::Integrity {
                registry: host(),
                repository: repo(),
                what: what(),
                reason: "digest".into()
            }),
            Code::DataLoss
        );
        let status = |status: u16| RegistryError::Status {
            registry: host(),
            repository: repo(),
            what: what(),
            status,
            body: String::new(),
        };
        for (http, code) in [
            (401, Code::PermissionDenied),
            (403, Code::PermissionDenied),
            (404, Code::NotFound),
            (429, Code::Unavailable),
            (502, Code::Unavailable),
            (503, Code::Unavailable),
            (400, Code::Internal),
        ] {
            assert_eq!(registry(status(http)), code, "HTTP {http}");
        }
    }

    #[test]
    fn fetch_errors_map_once_and_keep_the_registry_text() {
        let err = FetchError::from(RegistryError::NotFound {
            registry: "reg.example.com".into(),
            repository: "team/job".into(),
            what: "manifest latest".into(),
        });
        assert_eq!(err.to_string(), "registry reg.example.com: manifest latest in team/job: not found");
        assert_eq!(err.code(), Code::NotFound);
        assert_eq!(FetchError::NotACheckpoint("x".into()).code(), Code::FailedPrecondition);
        assert_eq!(FetchError::StillDownloading { digest: "sha256:ab".into(), size: 1 }.code(), Code::Unavailable);
        assert_eq!(FetchError::Abandoned { digest: "sha256:ab".into() }.code(), Code::Unavailable);
    }
}
