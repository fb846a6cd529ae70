//! A small OCI Distribution client that streams blobs between files and the
//! registry (checkpoints are gigabytes: nothing is held in memory but
//! manifests and tag lists).
//!
//! hyper 1 (HTTP/1.1) with rustls (ring, the system's CA certificates plus
//! `registry_ca_files`). Registries listed in `insecure_registries` are
//! reached over plain HTTP, every other one over HTTPS only — redirects and
//! token servers included.
//!
//! Authentication: anonymous first; a `401` with `WWW-Authenticate: Bearer`
//! fetches a token from the realm (Basic credentials from `config.json` if
//! any, or the OAuth2 refresh-token grant for an `identitytoken`), a `Basic`
//! challenge sends the credentials. The resulting header is cached per
//! registry and repository.
//!
//! Timeouts: connecting may take `connect_timeout`; after that a request
//! fails when it makes no progress (no upload chunk taken, no response
//! headers, no download chunk) for `idle_timeout`. A registry that goes away
//! mid-transfer therefore fails the transfer instead of hanging.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, LINK, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use lazarus_format::digest::{Digester, sha256_hex};
use tokio::io::{AsyncRead, ReadBuf};

use super::auth::{Challenge, Credential, Credentials, CredentialsError, parse_challenge};
use super::reference::{Reference, ReferenceError, validate_digest};

/// Media types a manifest GET accepts.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";
/// Largest manifest accepted (the distribution spec's suggested limit).
pub const MAX_MANIFEST_SIZE: usize = 4 * 1024 * 1024;
/// Default connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a request may make no progress.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Upload/download chunk size.
const CHUNK: usize = 256 * 1024;
/// Redirects followed on a blob download.
const MAX_REDIRECTS: usize = 5;
/// Characters of an error body kept in error messages.
const EXCERPT: usize = 300;
/// Largest JSON document (tag list page, token) read.
const MAX_JSON: usize = 4 * 1024 * 1024;

/// Something went wrong talking to a registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A reference, tag or digest is malformed.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// The credentials file cannot be used.
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    /// TLS settings (CA files) cannot be used.
    #[error("setting up TLS for registries: {reason}")]
    Tls {
        /// Why.
        reason: String,
    },
    /// The request did not get an answer: connection refused or reset, TLS
    /// failure, connection closed mid-transfer.
    #[error("registry {registry}: {what}: {reason}")]
    Transport {
        /// `host[:port]`.
        registry: String,
        /// What was being done.
        what: String,
        /// The transport error with its causes.
        reason: String,
    },
    /// No progress for the idle timeout.
    #[error("registry {registry}: {what}: no progress for {}s; giving up", timeout.as_secs())]
    Timeout {
        /// `host[:port]`.
        registry: String,
        /// What was being done.
        what: String,
        /// The idle timeout.
        timeout: Duration,
    },
    /// An unexpected HTTP status.
    #[error("registry {registry}: {what} in {repository}: HTTP {status}{}", excerpt_suffix(body))]
    Status {
        /// `host[:port]`.
        registry: String,
        /// The repository path.
        repository: String,
        /// What was being done.
        what: String,
        /// The status code.
        status: u16,
        /// The start of the response body.
        body: String,
    },
    /// The manifest, blob or repository does not exist.
    #[error("registry {registry}: {what} in {repository}: not found")]
    NotFound {
        /// `host[:port]`.
        registry: String,
        /// The repository path.
        repository: String,
        /// What was looked for.
        what: String,
    },
    /// Authentication failed or is impossible.
    #[error("registry {registry}: authentication failed: {reason}")]
    Auth {
        /// `host[:port]`.
        registry: String,
        /// Why.
        reason: String,
    },
    /// Content does not match its digest or size.
    #[error("registry {registry}: {what} in {repository}: {reason}")]
    Integrity {
        /// `host[:port]`.
        registry: String,
        /// The repository path.
        repository: String,
        /// What was transferred.
        what: String,
        /// The mismatch.
        reason: String,
    },
    /// The registry refuses to delete manifests (405 / `UNSUPPORTED`):
    /// deletes are disabled on it.
    #[error(
        "registry {registry} does not allow deleting manifests in {repository} (HTTP {status}); \
         registry-side retention needs deletes enabled (distribution: storage.delete.enabled)"
    )]
    DeleteUnsupported {
        /// `host[:port]`.
        registry: String,
        /// The repository path.
        repository: String,
        /// The status code.
        status: u16,
    },
    /// The registry answered something lazarus cannot use.
    #[error("registry {registry}: {what}: {reason}")]
    Protocol {
        /// `host[:port]`.
        registry: String,
        /// What was being done.
        what: String,
        /// What was wrong.
        reason: String,
    },
    /// A URL would be fetched over plain HTTP from a registry not listed as insecure.
    #[error(
        "refusing plain HTTP to {url}: only hosts listed in insecure_registries are reached over http \
         (registry {registry})"
    )]
    InsecureUrl {
        /// `host[:port]`.
        registry: String,
        /// The URL.
        url: String,
    },
    /// Local file I/O.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was done.
        action: &'static str,
        /// Where.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

fn excerpt_suffix(body: &str) -> String {
    if body.is_empty() { String::new() } else { format!(": {body}") }
}

impl RegistryError {
    /// Whether the registry could not be reached or went away (as opposed to
    /// answering with an error).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, RegistryError::Transport { .. } | RegistryError::Timeout { .. })
    }
}

/// How the client reaches registries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrySettings {
    /// Docker-style `config.json` with credentials; `None`: anonymous.
    pub credentials_file: Option<PathBuf>,
    /// `host[:port]` reached over plain HTTP (a bare `host` covers every port).
    pub insecure: Vec<String>,
    /// PEM files with extra CA certificates, trusted besides the system's.
    pub ca_files: Vec<PathBuf>,
    /// How long connecting may take.
    pub connect_timeout: Duration,
    /// How long a request may make no progress.
    pub idle_timeout: Duration,
}

impl Default for RegistrySettings {
    fn default() -> Self {
        RegistrySettings {
            credentials_file: None,
            insecure: Vec::new(),
            ca_files: Vec::new(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

impl RegistrySettings {
    /// Whether `registry` (`host[:port]`) is reached over plain HTTP.
    pub fn is_insecure(&self, registry: &str) -> bool {
        let host = registry.rsplit_once(':').map_or(registry, |(host, _)| host);
        self.insecure.iter().any(|entry| entry == registry || entry == host)
    }
}

/// A manifest fetched from a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedManifest {
    /// `sha256:<hex>` of `bytes` (verified against the requested digest, if any).
    pub digest: String,
    /// The `Content-Type` the registry gave (`application/vnd.oci.image.manifest.v1+json`, …).
    pub media_type: String,
    /// The manifest exactly as stored.
    pub bytes: Bytes,
}

/// The outcome of [`RegistryClient::push_blob_from_file`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobPush {
    /// The registry had it already (same digest and size).
    Existed,
    /// Uploaded and verified.
    Uploaded,
}

type ReqBody = UnsyncBoxBody<Bytes, std::io::Error>;
type HttpClient = Client<HttpsConnector<HttpConnector>, ReqBody>;

/// A body that can be rebuilt for a retry after authentication.
#[derive(Debug, Clone)]
enum Payload {
    Empty,
    Bytes(Bytes),
    File { path: PathBuf, size: u64 },
}

/// Time of the last progress of one request, shared with its body.
#[derive(Debug, Clone)]
struct Progress {
    epoch: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Progress {
    fn new() -> Progress {
        Progress { epoch: Instant::now(), last_ms: Arc::new(AtomicU64::new(0)) }
    }
    fn touch(&self) {
        self.last_ms.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    fn idle_for(&self) -> Duration {
        self.epoch.elapsed().saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// An [`http_body::Body`] streaming `len` bytes of a file in chunks, without
/// holding more than one chunk in memory.
#[derive(Debug)]
pub struct FileBody {
    file: tokio::fs::File,
    remaining: u64,
    buf: BytesMut,
    progress: Option<Progress>,
}

impl FileBody {
    /// Streams the first `len` bytes of `file` (from its current position).
    pub fn new(file: tokio::fs::File, len: u64) -> FileBody {
        FileBody { file, remaining: len, buf: BytesMut::new(), progress: None }
    }

    fn with_progress(mut self, progress: Progress) -> FileBody {
        self.progress = Some(progress);
        self
    }
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let want = usize::try_from(this.remaining).unwrap_or(usize::MAX).min(CHUNK);
        if this.buf.len() != want {
            this.buf.clear();
            this.buf.resize(want, 0);
        }
        let mut read = ReadBuf::new(&mut this.buf[..]);
        match Pin::new(&mut this.file).poll_read(cx, &mut read) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Ready(Ok(())) => {
                let n = read.filled().len();
                if n == 0 {
                    let missing = this.remaining;
                    this.remaining = 0;
                    return Poll::Ready(Some(Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("the file ended {missing} bytes short of its expected size"),
                    ))));
                }
                this.buf.truncate(n);
                let chunk = this.buf.split().freeze();
                this.remaining -= n as u64;
                if let Some(progress) = &this.progress {
                    progress.touch();
                }
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// What one request is about, for error messages and authentication.
struct Op<'a> {
    reference: &'a Reference,
    what: String,
}

impl Op<'_> {
    fn registry(&self) -> String {
        self.reference.registry.clone()
    }
    fn repository(&self) -> String {
        self.reference.repository.clone()
    }
}

/// The OCI Distribution client. Cheap to clone (connections and tokens are shared).
#[derive(Clone)]
pub struct RegistryClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: HttpClient,
    settings: RegistrySettings,
    /// `Authorization` value per (registry, repository).
    auth: Mutex<HashMap<(String, String), HeaderValue>>,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient").field("settings", &self.inner.settings).finish_non_exhaustive()
    }
}

/// The TLS configuration: ring, TLS 1.2/1.3, the system's roots plus `ca_files`.
pub fn tls_config(ca_files: &[PathBuf]) -> Result<rustls::ClientConfig, RegistryError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::debug!(error = %error, "loading a system CA certificate failed");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(added, ignored, "system CA certificates loaded for registries");
    for path in ca_files {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
            .map_err(|e| RegistryError::Tls { reason: format!("reading CA file {}: {e}", path.display()) })?;
        if certs.is_empty() {
            return Err(RegistryError::Tls { reason: format!("CA file {} holds no PEM certificate", path.display()) });
        }
        for cert in certs {
            roots.add(cert).map_err(|e| RegistryError::Tls {
                reason: format!("CA file {}: unusable certificate: {e}", path.display()),
            })?;
        }
    }
    if roots.is_empty() {
        tracing::warn!(
            "no CA certificates found (system store empty, no registry_ca_files): HTTPS registries will fail"
        );
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| RegistryError::Tls { reason: e.to_string() })?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

impl RegistryClient {
    /// A client with these settings; reads the system's and the extra CA
    /// certificates now (the credentials file is read when a registry asks
    /// for credentials, so it may change while lazarus runs).
    pub fn new(settings: RegistrySettings) -> Result<RegistryClient, RegistryError> {
        let tls = tls_config(&settings.ca_files)?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(settings.connect_timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(https);
        Ok(RegistryClient { inner: Arc::new(Inner { http: client, settings, auth: Mutex::default() }) })
    }

    /// The settings.
    pub fn settings(&self) -> &RegistrySettings {
        &self.inner.settings
    }

    fn base(&self, reference: &Reference) -> String {
        let scheme = if self.inner.settings.is_insecure(&reference.registry) { "http" } else { "https" };
        format!("{scheme}://{}", reference.api_host())
    }

    fn v2(&self, reference: &Reference, rest: &str) -> String {
        format!("{}/v2/{}/{rest}", self.base(reference), reference.repository)
    }

    /// Whether `blob` exists in the repository; its size if so.
    pub async fn blob_size(&self, repository: &Reference, digest: &str) -> Result<Option<u64>, RegistryError> {
        validate_digest(digest).map_err(|reason| ReferenceError { input: digest.to_owned(), reason })?;
        let op = Op { reference: repository, what: format!("checking blob {digest}") };
        let response = self
            .send(&op, Method::HEAD, self.v2(repository, &format!("blobs/{digest}")), HeaderMap::new(), Payload::Empty)
            .await?;
        match response.status() {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => {
                if let Some(found) = header(&response, "docker-content-digest")
                    && found != digest
                {
                    return Err(integrity(&op, format!("the registry reports digest {found}")));
                }
                Ok(Some(content_length(&response).unwrap_or(0)))
            }
            _ => Err(self.status_error(&op, response).await),
        }
    }

    /// Uploads blob `digest` of `size` bytes from the file at `path` (one
    /// monolithic PUT, streamed from the file), unless the repository has it
    /// already; then checks that the registry serves it with that digest and
    /// size.
    pub async fn push_blob_from_file(
        &self,
        repository: &Reference,
        digest: &str,
        size: u64,
        path: &Path,
    ) -> Result<BlobPush, RegistryError> {
        if self.blob_size(repository, digest).await? == Some(size) {
            return Ok(BlobPush::Existed);
        }
        let op = Op { reference: repository, what: format!("uploading blob {digest} ({size} bytes)") };
        let start = self
            .send(
                &op,
                Method::POST,
                self.v2(repository, "blobs/uploads/"),
                HeaderMap::new(),
                Payload::Bytes(Bytes::new()),
            )
            .await?;
        if start.status() != StatusCode::ACCEPTED {
            return Err(self.status_error(&op, start).await);
        }
        let location = header(&start, "location")
            .ok_or_else(|| protocol(&op, "the upload was started without a Location header".into()))?;
        let location = resolve_location(&self.base(repository), &location);
        let separator = if location.contains('?') { '&' } else { '?' };
        let url = format!("{location}{separator}digest={}", digest.replace(':', "%3A"));
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        headers.insert(CONTENT_LENGTH, HeaderValue::from(size));
        let put = self.send(&op, Method::PUT, url, headers, Payload::File { path: path.to_owned(), size }).await?;
        if put.status() != StatusCode::CREATED {
            return Err(self.status_error(&op, put).await);
        }
        if let Some(found) = header(&put, "docker-content-digest")
            && found != digest
        {
            return Err(integrity(&op, format!("the registry stored it as {found}")));
        }
        drain(put).await;
        match self.blob_size(repository, digest).await? {
            Some(stored) if stored == size => Ok(BlobPush::Uploaded),
            Some(stored) => Err(integrity(&op, format!("the registry holds {stored} bytes, expected {size}"))),
            None => Err(integrity(&op, "the registry does not serve the blob after the upload".into())),
        }
    }

    /// Stores `manifest` (of `media_type`) under `reference`'s tag (or
    /// digest) and returns its digest, checked against the registry's
    /// `Docker-Content-Digest`. The registry refuses a manifest whose blobs it
    /// lacks, so push blobs first.
    pub async fn put_manifest(
        &self,
        reference: &Reference,
        media_type: &str,
        manifest: Bytes,
    ) -> Result<String, RegistryError> {
        let digest = format!("sha256:{}", sha256_hex(&manifest));
        let target = reference.manifest_reference().unwrap_or(&digest).to_owned();
        let op = Op { reference, what: format!("putting manifest {digest} as {target}") };
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_str(media_type).map_err(|_| protocol(&op, format!("bad media type {media_type:?}")))?,
        );
        let response = self
            .send(
                &op,
                Method::PUT,
                self.v2(reference, &format!("manifests/{target}")),
                headers,
                Payload::Bytes(manifest),
            )
            .await?;
        if response.status() != StatusCode::CREATED && !response.status().is_success() {
            return Err(self.status_error(&op, response).await);
        }
        if let Some(found) = header(&response, "docker-content-digest")
            && found != digest
        {
            return Err(integrity(&op, format!("the registry computed digest {found}")));
        }
        drain(response).await;
        Ok(digest)
    }

    /// Fetches the manifest `reference` names (by digest if it has one, else
    /// by tag). Accepts OCI and Docker v2 manifests and indexes. A manifest
    /// fetched by digest is verified against it.
    pub async fn get_manifest(&self, reference: &Reference) -> Result<FetchedManifest, RegistryError> {
        let target = reference.manifest_reference().unwrap_or("latest").to_owned();
        let op = Op { reference, what: format!("fetching manifest {target}") };
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static(MANIFEST_ACCEPT));
        let response = self
            .send(&op, Method::GET, self.v2(reference, &format!("manifests/{target}")), headers, Payload::Empty)
            .await?;
        match response.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Err(not_found(&op)),
            _ => return Err(self.status_error(&op, response).await),
        }
        let media_type = header(&response, "content-type").unwrap_or_default();
        let announced = header(&response, "docker-content-digest");
        let bytes = self.read_limited(&op, response, MAX_MANIFEST_SIZE).await?;
        let digest = format!("sha256:{}", sha256_hex(&bytes));
        if let Some(expected) = &reference.digest
            && *expected != digest
        {
            return Err(integrity(&op, format!("the content hashes to {digest}")));
        }
        if let Some(announced) = announced
            && announced != digest
        {
            return Err(integrity(&op, format!("the registry announced {announced}, the content hashes to {digest}")));
        }
        Ok(FetchedManifest { digest, media_type, bytes })
    }

    /// The digest of the manifest `reference` names, `None` if there is none.
    pub async fn manifest_digest(&self, reference: &Reference) -> Result<Option<String>, RegistryError> {
        let target = reference.manifest_reference().unwrap_or("latest").to_owned();
        let op = Op { reference, what: format!("checking manifest {target}") };
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static(MANIFEST_ACCEPT));
        let response = self
            .send(&op, Method::HEAD, self.v2(reference, &format!("manifests/{target}")), headers, Payload::Empty)
            .await?;
        match response.status() {
            StatusCode::NOT_FOUND => Ok(None),
            StatusCode::OK => match header(&response, "docker-content-digest") {
                Some(digest) => Ok(Some(digest)),
                // Not every registry announces digests on HEAD: hash the content.
                None => Ok(Some(self.get_manifest(reference).await?.digest)),
            },
            _ => Err(self.status_error(&op, response).await),
        }
    }

    /// Streams blob `digest` into a new file at `dest` (created or
    /// truncated), following redirects, and verifies its sha256 (and size,
    /// when `expected_size` is given). Returns the size. On error the partial
    /// file is removed; on success it is fsynced.
    pub async fn pull_blob_to_file(
        &self,
        repository: &Reference,
        digest: &str,
        expected_size: Option<u64>,
        dest: &Path,
    ) -> Result<u64, RegistryError> {
        validate_digest(digest).map_err(|reason| ReferenceError { input: digest.to_owned(), reason })?;
        let result = self.pull_blob_inner(repository, digest, expected_size, dest).await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(dest).await;
        }
        result
    }

    async fn pull_blob_inner(
        &self,
        repository: &Reference,
        digest: &str,
        expected_size: Option<u64>,
        dest: &Path,
    ) -> Result<u64, RegistryError> {
        let op = Op { reference: repository, what: format!("downloading blob {digest}") };
        let mut url = self.v2(repository, &format!("blobs/{digest}"));
        let mut redirects = 0;
        let response = loop {
            let response = self.send(&op, Method::GET, url.clone(), HeaderMap::new(), Payload::Empty).await?;
            match response.status() {
                StatusCode::OK => break response,
                StatusCode::NOT_FOUND => return Err(not_found(&op)),
                StatusCode::MOVED_PERMANENTLY
                | StatusCode::FOUND
                | StatusCode::SEE_OTHER
                | StatusCode::TEMPORARY_REDIRECT
                | StatusCode::PERMANENT_REDIRECT => {
                    redirects += 1;
                    if redirects > MAX_REDIRECTS {
                        return Err(protocol(&op, format!("more than {MAX_REDIRECTS} redirects")));
                    }
                    let location = header(&response, "location")
                        .ok_or_else(|| protocol(&op, "a redirect without a Location header".into()))?;
                    url = resolve_location(&url, &location);
                }
                _ => return Err(self.status_error(&op, response).await),
            }
        };
        if let (Some(expected), Some(announced)) = (expected_size, content_length(&response))
            && expected != announced
        {
            return Err(integrity(&op, format!("the registry announces {announced} bytes, expected {expected}")));
        }
        let io = |action: &'static str| {
            let path = dest.to_owned();
            move |source| RegistryError::Io { action, path, source }
        };
        // The file is written, hashed and synced by a blocking writer task: the
        // event loop only moves chunks (hashing a GiB blob costs seconds of CPU).
        let file = std::fs::File::create(dest).map_err(io("creating"))?;
        let (chunks, writer) = blob_writer(file);
        let mut size = 0u64;
        let mut body = response.into_body();
        let idle = self.inner.settings.idle_timeout;
        loop {
            let frame = match tokio::time::timeout(idle, body.frame()).await {
                Err(_) => return Err(timeout(&op, idle)),
                Ok(None) => break,
                Ok(Some(Err(e))) => return Err(transport(&op, &e)),
                Ok(Some(Ok(frame))) => frame,
            };
            let Ok(data) = frame.into_data() else { continue };
            size += data.len() as u64;
            if let Some(expected) = expected_size
                && size > expected
            {
                return Err(integrity(&op, format!("more than the expected {expected} bytes")));
            }
            if chunks.send(data).await.is_err() {
                break; // the writer failed; its error is reported below
            }
        }
        drop(chunks);
        let digester = match writer.await {
            Ok(Ok(digester)) => digester,
            Ok(Err(e)) => return Err(io("writing")(e)),
            Err(e) => return Err(io("writing")(std::io::Error::other(e))),
        };
        let actual = digester.oci();
        if actual != digest {
            return Err(integrity(&op, format!("the content ({size} bytes) hashes to {actual}")));
        }
        if let Some(expected) = expected_size
            && size != expected
        {
            return Err(integrity(&op, format!("{size} bytes received, expected {expected}")));
        }
        Ok(size)
    }

    /// Every tag of the repository (following `Link` pagination); empty if
    /// the repository does not exist.
    pub async fn list_tags(&self, repository: &Reference) -> Result<Vec<String>, RegistryError> {
        let op = Op { reference: repository, what: "listing tags".into() };
        let mut url = self.v2(repository, "tags/list?n=1000");
        let mut tags = Vec::new();
        for _ in 0..10_000 {
            let response = self.send(&op, Method::GET, url.clone(), HeaderMap::new(), Payload::Empty).await?;
            match response.status() {
                StatusCode::OK => {}
                StatusCode::NOT_FOUND => return Ok(tags),
                _ => return Err(self.status_error(&op, response).await),
            }
            let next = header(&response, LINK.as_str()).and_then(|link| next_link(&link));
            let bytes = self.read_limited(&op, response, MAX_JSON).await?;
            #[derive(serde::Deserialize)]
            struct TagList {
                #[serde(default)]
                tags: Option<Vec<String>>,
            }
            let page: TagList =
                serde_json::from_slice(&bytes).map_err(|e| protocol(&op, format!("the tag list is not JSON: {e}")))?;
            tags.extend(page.tags.unwrap_or_default());
            match next {
                Some(next) => url = resolve_location(&url, &next),
                None => return Ok(tags),
            }
        }
        Err(protocol(&op, "the tag list does not end".into()))
    }

    /// Deletes the manifest `digest` (and with it every tag pointing at it).
    /// A manifest already gone is not an error;
    /// [`RegistryError::DeleteUnsupported`] when the registry has deletes disabled.
    pub async fn delete_manifest(&self, repository: &Reference, digest: &str) -> Result<(), RegistryError> {
        validate_digest(digest).map_err(|reason| ReferenceError { input: digest.to_owned(), reason })?;
        let op = Op { reference: repository, what: format!("deleting manifest {digest}") };
        let response = self
            .send(
                &op,
                Method::DELETE,
                self.v2(repository, &format!("manifests/{digest}")),
                HeaderMap::new(),
                Payload::Empty,
            )
            .await?;
        let status = response.status();
        match status {
            s if s.is_success() => {
                drain(response).await;
                Ok(())
            }
            StatusCode::NOT_FOUND => Ok(()),
            StatusCode::METHOD_NOT_ALLOWED => Err(RegistryError::DeleteUnsupported {
                registry: op.registry(),
                repository: op.repository(),
                status: status.as_u16(),
            }),
            _ => match self.status_error(&op, response).await {
                RegistryError::Status { body, .. } if body.contains("UNSUPPORTED") => {
                    Err(RegistryError::DeleteUnsupported {
                        registry: op.registry(),
                        repository: op.repository(),
                        status: status.as_u16(),
                    })
                }
                other => Err(other),
            },
        }
    }

    /// Sends one request, authenticating on a `401` challenge and retrying
    /// once. Fails on no progress for the idle timeout.
    async fn send(
        &self,
        op: &Op<'_>,
        method: Method,
        url: String,
        headers: HeaderMap,
        payload: Payload,
    ) -> Result<Response<Incoming>, RegistryError> {
        let uri: Uri = url.parse().map_err(|e| protocol(op, format!("bad URL {url:?}: {e}")))?;
        let host = uri.authority().map(|a| a.as_str().to_owned()).unwrap_or_default();
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") if self.inner.settings.is_insecure(&host) => {}
            _ => return Err(RegistryError::InsecureUrl { registry: op.registry(), url }),
        }
        // Credentials go only to the registry itself, not to redirect targets.
        let same_host = host.eq_ignore_ascii_case(op.reference.api_host());
        let key = (op.reference.registry.clone(), op.reference.repository.clone());
        for attempt in 0..2 {
            let mut request = Request::builder().method(method.clone()).uri(uri.clone());
            if let Some(h) = request.headers_mut() {
                h.extend(headers.clone());
                if same_host
                    && let Some(auth) = self.inner.auth.lock().unwrap_or_else(PoisonError::into_inner).get(&key)
                {
                    h.insert(AUTHORIZATION, auth.clone());
                }
                h.insert(
                    http::header::USER_AGENT,
                    HeaderValue::from_static(concat!("lazarus/", env!("CARGO_PKG_VERSION"))),
                );
            }
            let progress = Progress::new();
            let body = Self::body(&payload, &progress).await?;
            let request = request.body(body).map_err(|e| protocol(op, format!("building the request: {e}")))?;
            let response = self.request_with_watchdog(op, request, &progress).await?;
            if response.status() != StatusCode::UNAUTHORIZED || !same_host || attempt == 1 {
                if response.status() == StatusCode::UNAUTHORIZED {
                    let reason = self.status_error(op, response).await.to_string();
                    return Err(RegistryError::Auth { registry: op.registry(), reason });
                }
                return Ok(response);
            }
            let challenge = header(&response, WWW_AUTHENTICATE.as_str());
            drain(response).await;
            let challenge = challenge.as_deref().and_then(parse_challenge).ok_or_else(|| RegistryError::Auth {
                registry: op.registry(),
                reason: format!("HTTP 401 without a usable WWW-Authenticate challenge ({challenge:?})"),
            })?;
            let value = self.authenticate(op, &challenge, &method).await?;
            self.inner.auth.lock().unwrap_or_else(PoisonError::into_inner).insert(key.clone(), value);
        }
        unreachable!("the loop returns on its second attempt")
    }

    async fn body(payload: &Payload, progress: &Progress) -> Result<ReqBody, RegistryError> {
        Ok(match payload {
            Payload::Empty => Empty::<Bytes>::new().map_err(|never| match never {}).boxed_unsync(),
            Payload::Bytes(bytes) => Full::new(bytes.clone()).map_err(|never| match never {}).boxed_unsync(),
            Payload::File { path, size } => {
                let file = tokio::fs::File::open(path).await.map_err(|source| RegistryError::Io {
                    action: "opening",
                    path: path.clone(),
                    source,
                })?;
                FileBody::new(file, *size).with_progress(progress.clone()).boxed_unsync()
            }
        })
    }

    async fn request_with_watchdog(
        &self,
        op: &Op<'_>,
        request: Request<ReqBody>,
        progress: &Progress,
    ) -> Result<Response<Incoming>, RegistryError> {
        let idle = self.inner.settings.idle_timeout;
        let mut call = std::pin::pin!(self.inner.http.request(request));
        loop {
            let wait = idle.saturating_sub(progress.idle_for());
            tokio::select! {
                result = &mut call => return result.map_err(|e| transport(op, &e)),
                () = tokio::time::sleep(wait) => {
                    if progress.idle_for() >= idle {
                        return Err(timeout(op, idle));
                    }
                }
            }
        }
    }

    /// The `Authorization` value answering `challenge`.
    async fn authenticate(
        &self,
        op: &Op<'_>,
        challenge: &Challenge,
        method: &Method,
    ) -> Result<HeaderValue, RegistryError> {
        let registry = op.registry();
        let auth_err = |reason: String| RegistryError::Auth { registry: registry.clone(), reason };
        let credential = match &self.inner.settings.credentials_file {
            Some(path) => Credentials::load(path)?.for_registry(&op.reference.registry, path).cloned(),
            None => None,
        };
        match challenge {
            Challenge::Basic => {
                let value = credential.as_ref().and_then(Credential::basic_header).ok_or_else(|| {
                    auth_err(
                        "the registry asks for a user name and password and registry_credentials has none for it"
                            .into(),
                    )
                })?;
                HeaderValue::from_str(&value).map_err(|_| auth_err("the credentials are not a valid header".into()))
            }
            Challenge::Bearer { realm, service, scope } => {
                let scope = scope.clone().unwrap_or_else(|| {
                    let actions = if *method == Method::GET || *method == Method::HEAD { "pull" } else { "pull,push" };
                    format!("repository:{}:{actions}", op.reference.repository)
                });
                let token = self.fetch_token(op, realm, service.as_deref(), &scope, credential.as_ref()).await?;
                HeaderValue::from_str(&format!("Bearer {token}"))
                    .map_err(|_| auth_err("the token server returned a token that is not a valid header".into()))
            }
        }
    }

    async fn fetch_token(
        &self,
        op: &Op<'_>,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        credential: Option<&Credential>,
    ) -> Result<String, RegistryError> {
        let registry = op.registry();
        let auth_err = |reason: String| RegistryError::Auth { registry: registry.clone(), reason };
        let uri: Uri = realm.parse().map_err(|_| auth_err(format!("token realm {realm:?} is not a URL")))?;
        let realm_host = uri.authority().map(|a| a.as_str().to_owned()).unwrap_or_default();
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") if self.inner.settings.is_insecure(&realm_host) => {}
            _ => return Err(RegistryError::InsecureUrl { registry, url: realm.to_owned() }),
        }
        let mut query = vec![("scope", scope)];
        if let Some(service) = service {
            query.push(("service", service));
        }
        let request = match credential {
            Some(Credential::IdentityToken(token)) => {
                let mut form = vec![
                    ("grant_type", "refresh_token"),
                    ("refresh_token", token.as_str()),
                    ("client_id", "lazarus"),
                    ("scope", scope),
                ];
                if let Some(service) = service {
                    form.push(("service", service));
                }
                Request::post(realm)
                    .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(Full::new(Bytes::from(encode_query(&form))).map_err(|never| match never {}).boxed_unsync())
            }
            other => {
                let separator = if realm.contains('?') { '&' } else { '?' };
                let mut builder = Request::get(format!("{realm}{separator}{}", encode_query(&query)));
                if let Some(basic) = other.and_then(Credential::basic_header) {
                    builder = builder.header(AUTHORIZATION, basic);
                }
                builder.body(Empty::<Bytes>::new().map_err(|never| match never {}).boxed_unsync())
            }
        }
        .map_err(|e| auth_err(format!("building the token request: {e}")))?;
        let token_op = Op { reference: op.reference, what: format!("fetching a token from {realm}") };
        let response = self.request_with_watchdog(&token_op, request, &Progress::new()).await?;
        if !response.status().is_success() {
            let status = response.status().as_u16();
            let body = self.read_limited(&token_op, response, EXCERPT * 4).await.unwrap_or_default();
            return Err(auth_err(format!(
                "token server {realm} answered HTTP {status}{}",
                excerpt_suffix(&excerpt(&body))
            )));
        }
        let bytes = self.read_limited(&token_op, response, MAX_JSON).await?;
        #[derive(serde::Deserialize)]
        struct Token {
            #[serde(default)]
            token: Option<String>,
            #[serde(default)]
            access_token: Option<String>,
        }
        let parsed: Token =
            serde_json::from_slice(&bytes).map_err(|e| auth_err(format!("token server {realm}: not JSON: {e}")))?;
        parsed
            .token
            .filter(|t| !t.is_empty())
            .or(parsed.access_token.filter(|t| !t.is_empty()))
            .ok_or_else(|| auth_err(format!("token server {realm} returned no token")))
    }

    /// Reads a whole response body of at most `limit` bytes.
    async fn read_limited(
        &self,
        op: &Op<'_>,
        response: Response<Incoming>,
        limit: usize,
    ) -> Result<Bytes, RegistryError> {
        let idle = self.inner.settings.idle_timeout;
        let mut body = response.into_body();
        let mut out = BytesMut::new();
        loop {
            match tokio::time::timeout(idle, body.frame()).await {
                Err(_) => return Err(timeout(op, idle)),
                Ok(None) => return Ok(out.freeze()),
                Ok(Some(Err(e))) => return Err(transport(op, &e)),
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        if out.len() + data.len() > limit {
                            return Err(protocol(op, format!("the response is larger than {limit} bytes")));
                        }
                        out.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    /// An error for an unexpected status, with the start of the body.
    async fn status_error(&self, op: &Op<'_>, response: Response<Incoming>) -> RegistryError {
        let status = response.status().as_u16();
        let body = match tokio::time::timeout(Duration::from_secs(5), response.into_body().collect()).await {
            Ok(Ok(collected)) => collected.to_bytes(),
            _ => Bytes::new(),
        };
        RegistryError::Status {
            registry: op.registry(),
            repository: op.repository(),
            what: op.what.clone(),
            status,
            body: excerpt(&body),
        }
    }
}

/// Reads and discards a (small) response body so the connection can be reused.
async fn drain(response: Response<Incoming>) {
    let _ = tokio::time::timeout(Duration::from_secs(5), response.into_body().collect()).await;
}

fn header(response: &Response<Incoming>, name: &str) -> Option<String> {
    response.headers().get(name).and_then(|v| v.to_str().ok()).map(|v| v.trim().to_owned())
}

fn content_length(response: &Response<Incoming>) -> Option<u64> {
    header(response, CONTENT_LENGTH.as_str()).and_then(|v| v.parse().ok())
}

/// The first [`EXCERPT`] characters of a body, on one line.
pub fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() > EXCERPT { format!("{}…", line.chars().take(EXCERPT).collect::<String>()) } else { line }
}

/// Resolves a `Location` (absolute, absolute-path or relative) against `base`
/// (`scheme://host[/…]`).
pub fn resolve_location(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        return location.to_owned();
    }
    let origin_end = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[origin_end..].find('/').map_or(base.len(), |i| origin_end + i);
    if location.starts_with('/') {
        return format!("{}{location}", &base[..path_start]);
    }
    // Relative to the base's directory.
    let path = &base[path_start..];
    let path = path.split('?').next().unwrap_or(path);
    let dir = path.rfind('/').map_or("/", |i| &path[..=i]);
    format!("{}{dir}{location}", &base[..path_start])
}

/// The target of a `Link: <url>; rel="next"` header.
pub fn next_link(link: &str) -> Option<String> {
    link.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        let is_next = params.split(';').any(|p| {
            let p = p.trim().replace(' ', "");
            p == "rel=\"next\"" || p == "rel=next"
        });
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        is_next.then(|| target.to_owned())
    })
}

/// `a=b&c=d` with percent-encoding of everything but unreserved characters.
pub fn encode_query(pairs: &[(&str, &str)]) -> String {
    let encode = |s: &str| {
        let mut out = String::with_capacity(s.len());
        for b in s.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    };
    pairs.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect::<Vec<_>>().join("&")
}

fn transport(op: &Op<'_>, err: &(dyn std::error::Error + 'static)) -> RegistryError {
    let mut reason = lazarus_format::errors::chain(err);
    if reason.contains("InvalidContentType") {
        reason.push_str(
            " (the registry does not speak TLS: if it is a plain-HTTP registry, list it in insecure_registries)",
        );
    } else if reason.contains("UnknownIssuer") {
        reason.push_str(" (the registry's certificate is not signed by a trusted CA: add the CA to registry_ca_files)");
    }
    RegistryError::Transport { registry: op.registry(), what: op.what.clone(), reason }
}

fn timeout(op: &Op<'_>, timeout: Duration) -> RegistryError {
    RegistryError::Timeout { registry: op.registry(), what: op.what.clone(), timeout }
}

fn protocol(op: &Op<'_>, reason: String) -> RegistryError {
    RegistryError::Protocol { registry: op.registry(), what: op.what.clone(), reason }
}

fn integrity(op: &Op<'_>, reason: String) -> RegistryError {
    RegistryError::Integrity { registry: op.registry(), repository: op.repository(), what: op.what.clone(), reason }
}

fn not_found(op: &Op<'_>) -> RegistryError {
    RegistryError::NotFound { registry: op.registry(), repository: op.repository(), what: op.what.clone() }
}

/// A blocking task that writes the chunks it is sent to `file`, hashing them,
/// and syncs it at the end; its result is the digest of what it wrote.
fn blob_writer(
    mut file: std::fs::File,
) -> (tokio::sync::mpsc::Sender<Bytes>, tokio::task::JoinHandle<std::io::Result<Digester>>) {
    use std::io::Write as _;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let writer = tokio::task::spawn_blocking(move || {
        let mut digester = Digester::new();
        while let Some(chunk) = rx.blocking_recv() {
            digester.update(&chunk);
            file.write_all(&chunk)?;
        }
        file.sync_all()?;
        Ok(digester)
    });
    (tx, writer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn file_body_streams_exactly_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("blob");
        let data: Vec<u8> = (0..(CHUNK * 2 + 12_345)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).expect("write");
        let file = tokio::fs::File::open(&path).await.expect("open");
        let progress = Progress::new();
        let body = FileBody::new(file, data.len() as u64).with_progress(progress.clone());
        assert_eq!(body.size_hint().exact(), Some(data.len() as u64));
        let mut body = std::pin::pin!(body);
        let mut got = Vec::new();
        let mut frames = 0;
        while let Some(frame) = body.frame().await {
            let chunk = frame.expect("frame").into_data().expect("data");
            assert!(chunk.len() <= CHUNK);
            got.extend_from_slice(&chunk);
            frames += 1;
        }
        assert_eq!(got, data);
        assert_eq!(frames, 3);
        assert!(body.is_end_stream());
        assert!(progress.last_ms.load(Ordering::Relaxed) > 0 || progress.idle_for() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn file_body_fails_on_a_short_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("blob");
        std::fs::write(&path, b"short").expect("write");
        let file = tokio::fs::File::open(&path).await.expect("open");
        let mut body = std::pin::pin!(FileBody::new(file, 10));
        assert_eq!(&body.frame().await.expect("frame").expect("data").into_data().expect("data")[..], b"short");
        let err = body.frame().await.expect("frame").expect_err("short file");
        assert!(err.to_string().contains("5 bytes short"), "{err}");
        assert!(body.frame().await.is_none());
    }

    #[test]
    fn locations_resolve() {
        let base = "http://127.0.0.1:5000";
        assert_eq!(
            resolve_location(base, "/v2/a/blobs/uploads/x?_state=y"),
            "http://127.0.0.1:5000/v2/a/blobs/uploads/x?_state=y"
        );
        assert_eq!(resolve_location(base, "https://s3.example.com/b?sig=1"), "https://s3.example.com/b?sig=1");
        assert_eq!(
            resolve_location("https://r.io/v2/a/tags/list?n=1", "list?last=x"),
            "https://r.io/v2/a/tags/list?last=x"
        );
    }

    #[test]
    fn link_headers_give_the_next_page() {
        assert_eq!(
            next_link(r#"</v2/a/tags/list?last=t9&n=10>; rel="next""#).as_deref(),
            Some("/v2/a/tags/list?last=t9&n=10")
        );
        assert_eq!(
            next_link(r#"<https://x/prev>; rel="prev", <https://x/next>; rel=next"#).as_deref(),
            Some("https://x/next")
        );
        assert_eq!(next_link(r#"</a>; rel="prev""#), None);
    }

    #[test]
    fn queries_are_encoded() {
        assert_eq!(
            encode_query(&[("scope", "repository:team/job:pull,push"), ("service", "r.io")]),
            "scope=repository%3Ateam%2Fjob%3Apull%2Cpush&service=r.io"
        );
    }

    #[test]
    fn insecure_matching() {
        let settings =
            RegistrySettings { insecure: vec!["127.0.0.1:5000".into(), "reg.lan".into()], ..Default::default() };
        assert!(settings.is_insecure("127.0.0.1:5000"));
        assert!(!settings.is_insecure("127.0.0.1:5001"));
        assert!(settings.is_insecure("reg.lan:8080"));
        assert!(settings.is_insecure("reg.lan"));
        assert!(!settings.is_insecure("registry.example.com"));
    }

    #[test]
    fn excerpts_are_short_and_on_one_line() {
        let body = format!("{{\"errors\":\n[{{\"code\":\"UNSUPPORTED\",\"message\":\"{}\"}}]}}", "x".repeat(500));
        let e = excerpt(body.as_bytes());
        assert!(e.starts_with("{\"errors\": [{\"code\":\"UNSUPPORTED\""), "{e}");
        assert_eq!(e.chars().count(), EXCERPT + 1);
    }

    /// A fake registry on loopback: `handler` answers each request.
    async fn fake_registry<F>(handler: F) -> String
    where
        F: Fn(Request<Incoming>, String) -> Response<Full<Bytes>> + Send + Sync + Clone + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        let origin = address.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (handler, origin) = (handler.clone(), origin.clone());
                let service = hyper::service::service_fn(move |request| {
                    let response = handler(request, origin.clone());
                    async move { Ok::<_, std::convert::Infallible>(response) }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
                );
            }
        });
        address
    }

    fn reply(status: u16, headers: &[(&str, &str)], body: &str) -> Response<Full<Bytes>> {
        let mut response = Response::builder().status(status);
        for (name, value) in headers {
            response = response.header(*name, *value);
        }
        response.body(Full::new(Bytes::from(body.to_owned()))).expect("response")
    }

    fn insecure(address: &str, credentials: Option<PathBuf>) -> RegistryClient {
        RegistryClient::new(RegistrySettings {
            insecure: vec![address.to_owned()],
            credentials_file: credentials,
            idle_timeout: Duration::from_millis(500),
            ..Default::default()
        })
        .expect("client")
    }

    /// Token auth as Distribution's token servers do it: 401 with a Bearer
    /// challenge, a token for Basic credentials, the request again with it;
    /// tag lists paginated with `Link`.
    #[tokio::test]
    async fn bearer_tokens_are_fetched_with_credentials_and_tag_pages_followed() {
        let tokens = Arc::new(AtomicU64::new(0));
        let issued = tokens.clone();
        let address = fake_registry(move |request, origin| {
            let auth = request.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
            let path = request.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
            if path.starts_with("/token?") {
                assert!(path.contains("scope=repository%3Ateam%2Fjob%3Apull"), "{path}");
                assert!(path.contains("service=fake"), "{path}");
                if auth != "Basic dXNlcjpzZWNyZXQ=" {
                    return reply(401, &[], "bad credentials");
                }
                issued.fetch_add(1, Ordering::SeqCst);
                return reply(200, &[], r#"{"token":"t0k"}"#);
            }
            if auth != "Bearer t0k" {
                let challenge =
                    format!(r#"Bearer realm="http://{origin}/token",service="fake",scope="repository:team/job:pull""#);
                return reply(
                    401,
                    &[("www-authenticate", challenge.as_str())],
                    r#"{"errors":[{"code":"UNAUTHORIZED"}]}"#,
                );
            }
            match path.as_str() {
                "/v2/team/job/tags/list?n=1000" => reply(
                    200,
                    &[("link", r#"</v2/team/job/tags/list?last=b&n=1000>; rel="next""#)],
                    r#"{"name":"team/job","tags":["a","b"]}"#,
                ),
                "/v2/team/job/tags/list?last=b&n=1000" => reply(200, &[], r#"{"name":"team/job","tags":["c"]}"#),
                other => reply(404, &[], other),
            }
        })
        .await;
        let dir = tempfile::tempdir().expect("tempdir");
        let credentials = dir.path().join("config.json");
        std::fs::write(&credentials, format!(r#"{{"auths":{{"http://{address}":{{"auth":"dXNlcjpzZWNyZXQ="}}}}}}"#))
            .expect("write");
        let repository = Reference::parse(&format!("{address}/team/job")).expect("reference");

        let client = insecure(&address, Some(credentials.clone()));
        assert_eq!(client.list_tags(&repository).await.expect("tags"), ["a", "b", "c"]);
        assert_eq!(client.list_tags(&repository).await.expect("tags again"), ["a", "b", "c"]);
        assert_eq!(tokens.load(Ordering::SeqCst), 1, "the token is cached per repository");

        std::fs::write(
            &credentials,
            format!(r#"{{"auths":{{"{address}":{{"username":"user","password":"wrong"}}}}}}"#),
        )
        .expect("write");
        let err = insecure(&address, Some(credentials)).list_tags(&repository).await.expect_err("wrong password");
        assert!(matches!(err, RegistryError::Auth { .. }), "{err}");
        assert!(err.to_string().contains("HTTP 401") && err.to_string().contains(&address), "{err}");
    }

    #[tokio::test]
    async fn basic_challenges_send_the_credentials_and_deletes_can_be_unsupported() {
        let address = fake_registry(|request, _| {
            let auth = request.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
            if auth != "Basic dXNlcjpzZWNyZXQ=" {
                return reply(401, &[("www-authenticate", r#"Basic realm="fake""#)], "");
            }
            match *request.method() {
                Method::DELETE => {
                    reply(405, &[], r#"{"errors":[{"code":"UNSUPPORTED","message":"deletes disabled"}]}"#)
                }
                _ => reply(404, &[], r#"{"errors":[{"code":"MANIFEST_UNKNOWN"}]}"#),
            }
        })
        .await;
        let dir = tempfile::tempdir().expect("tempdir");
        let credentials = dir.path().join("config.json");
        std::fs::write(
            &credentials,
            format!(r#"{{"auths":{{"{address}":{{"username":"user","password":"secret"}}}}}}"#),
        )
        .expect("write");
        let client = insecure(&address, Some(credentials));
        let repository = Reference::parse(&format!("{address}/team/job")).expect("reference");
        let digest = format!("sha256:{}", "0".repeat(64));
        let err = client.delete_manifest(&repository, &digest).await.expect_err("405");
        assert!(matches!(err, RegistryError::DeleteUnsupported { status: 405, .. }), "{err}");
        let err = client.get_manifest(&repository.with_tag("x").expect("tag")).await.expect_err("missing");
        assert!(matches!(err, RegistryError::NotFound { .. }), "{err}");
        assert_eq!(client.manifest_digest(&repository.with_tag("x").expect("tag")).await.expect("head"), None);

        let anonymous = insecure(&address, None);
        let err = anonymous.list_tags(&repository).await.expect_err("no credentials");
        assert!(err.to_string().contains("registry_credentials has none"), "{err}");
    }

    /// A registry that accepts the connection and then never answers, or
    /// stops reading an upload: the request fails after the idle timeout.
    #[tokio::test]
    async fn a_stalled_registry_fails_the_request_after_the_idle_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        let held = Arc::new(Mutex::new(Vec::new()));
        let keep = held.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                // Read nothing, answer nothing, keep the connection open.
                keep.lock().unwrap_or_else(PoisonError::into_inner).push(stream);
            }
        });
        let client = insecure(&address, None);
        let repository = Reference::parse(&format!("{address}/team/job")).expect("reference");
        let started = Instant::now();
        let err = client.list_tags(&repository).await.expect_err("no answer");
        assert!(matches!(err, RegistryError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());

        // An upload the registry stops reading (socket buffers fill up).
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("blob");
        std::fs::write(&path, vec![7u8; 32 << 20]).expect("write");
        let op = Op { reference: &repository, what: "uploading".into() };
        let started = Instant::now();
        let err = client
            .send(
                &op,
                Method::PUT,
                format!("http://{address}/v2/team/job/blobs/uploads/x"),
                HeaderMap::new(),
                Payload::File { path, size: 32 << 20 },
            )
            .await
            .expect_err("stalled upload");
        assert!(matches!(err, RegistryError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        assert!(err.to_string().contains("no progress"), "{err}");
    }

    #[tokio::test]
    async fn plain_http_is_refused_for_registries_not_listed_as_insecure() {
        let client = RegistryClient::new(RegistrySettings::default()).expect("client");
        let reference = Reference::parse("127.0.0.1:9/a").expect("ref");
        let op = Op { reference: &reference, what: "test".into() };
        let err = client
            .send(&op, Method::GET, "http://127.0.0.1:9/v2/".into(), HeaderMap::new(), Payload::Empty)
            .await
            .expect_err("plain http");
        assert!(matches!(err, RegistryError::InsecureUrl { .. }), "{err}");
    }
}
