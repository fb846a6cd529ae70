//! The daemon's Prometheus metrics: one registry, counted into by the proxy,
//! the checkpoint engine, its scheduler and the restore engine, and served by
//! [`crate::metrics_server`] when `metrics_listen` is set.
//!
//! Built on `prometheus-client` (the official Rust client). Label values are
//! `&'static str` wherever they come from a fixed set (methods, codes,
//! reasons), so counting a CRI call on the proxy's hot path allocates nothing
//! once a label set has been seen. Every metric is listed in `docs/metrics.md`.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// `Content-Type` of the OpenMetrics text format.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// `Content-Type` of the Prometheus text format (0.0.4).
pub const PROMETHEUS_TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Buckets of CRI call latencies (seconds): from a cached `Version` (~100 µs)
/// to a `PullImage` or a `CreateContainer` that prepares a restore (minutes).
const CRI_BUCKETS: [f64; 16] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0];
/// Buckets of whole checkpoints (seconds): dump, packaging, commit.
const CHECKPOINT_BUCKETS: [f64; 12] = [0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0];
/// Buckets of CRIU's frozen time (seconds).
const FROZEN_BUCKETS: [f64; 12] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
/// Buckets of restore preparations (seconds): resolve, download, verify, unpack, check.
const RESTORE_BUCKETS: [f64; 12] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

/// `method` and `code` of a CRI call.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    method: &'static str,
    code: &'static str,
}

/// `method` of a CRI call.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: &'static str,
}

/// What started a checkpoint, and how it ended.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckpointLabels {
    trigger: &'static str,
    result: &'static str,
}

/// A short, stable failure reason.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// An outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// A rejected annotation.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AnnotationLabels {
    annotation: &'static str,
}

/// One container of one pod.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ContainerLabels {
    namespace: String,
    pod: String,
    container: String,
}

/// What started a checkpoint (label `trigger`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Trigger {
    /// `lazarus checkpoint` (counted in that process, not the daemon's).
    #[default]
    Manual,
    /// `lazarus.dev/checkpoint-interval`.
    Periodic,
    /// `lazarus.dev/checkpoint-on-stop`, before `StopContainer`.
    Stop,
}

impl Trigger {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Manual => "manual",
            Trigger::Periodic => "periodic",
            Trigger::Stop => "stop",
        }
    }
}

/// How a restore attempt ended (label `result` of `lazarus_restores_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreResult {
    /// The container runs from its checkpoint.
    Restored,
    /// Refused at `CreateContainer`, or the restore inside `StartContainer` failed.
    Failed,
    /// Best effort: nothing usable, the container started fresh.
    Fresh,
    /// A registry download is still going; kubelet retries the call.
    Pending,
}

impl RestoreResult {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RestoreResult::Restored => "restored",
            RestoreResult::Failed => "failed",
            RestoreResult::Fresh => "fresh",
            RestoreResult::Pending => "pending",
        }
    }
}

/// The metrics registry and every metric in it. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

struct Inner {
    registry: Registry,
    cri_requests: Family<CallLabels, Counter>,
    cri_duration: HistogramFamily<MethodLabels>,
    checkpoints: Family<CheckpointLabels, Counter>,
    checkpoint_failures: Family<ReasonLabels, Counter>,
    checkpoint_duration: Histogram,
    checkpoint_frozen: Histogram,
    checkpoint_bytes: Counter,
    checkpoint_pushes: Family<ResultLabels, Counter>,
    last_checkpoint: Family<ContainerLabels, Gauge<f64, AtomicU64>>,
    /// The containers `last_checkpoint` has a series for (a `Family` cannot be iterated).
    containers: Mutex<HashSet<ContainerLabels>>,
    store_size: Gauge,
    rejected_annotations: Family<AnnotationLabels, Counter>,
    restores: Family<ResultLabels, Counter>,
    restore_failures: Family<ReasonLabels, Counter>,
    restore_fresh_starts: Family<ReasonLabels, Counter>,
    restore_duration: Histogram,
    restore_bytes: Counter,
}

fn cri_histogram() -> Histogram {
    Histogram::new(CRI_BUCKETS)
}

impl Metrics {
    /// A registry with every metric registered (all at zero).
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let cri_requests = Family::<CallLabels, Counter>::default();
        registry.register(
            "lazarus_cri_requests",
            "CRI calls handled, by method and gRPC status code of the answer",
            cri_requests.clone(),
        );
        let cri_duration: HistogramFamily<MethodLabels> = Family::new_with_constructor(cri_histogram);
        registry.register_with_unit(
            "lazarus_cri_request_duration",
            "Time from a CRI call's arrival to the end of its answer (a stream's lifetime for server streams)",
            Unit::Seconds,
            cri_duration.clone(),
        );
        let checkpoints = Family::<CheckpointLabels, Counter>::default();
        registry.register(
            "lazarus_checkpoints",
            "Checkpoints taken by this daemon, by trigger and result",
            checkpoints.clone(),
        );
        let checkpoint_failures = Family::<ReasonLabels, Counter>::default();
        registry.register("lazarus_checkpoint_failures", "Failed checkpoints by reason", checkpoint_failures.clone());
        let checkpoint_duration = Histogram::new(CHECKPOINT_BUCKETS);
        registry.register_with_unit(
            "lazarus_checkpoint_duration",
            "Wall time of successful checkpoints, packaging and commit included",
            Unit::Seconds,
            checkpoint_duration.clone(),
        );
        let checkpoint_frozen = Histogram::new(FROZEN_BUCKETS);
        registry.register_with_unit(
            "lazarus_checkpoint_frozen",
            "How long the container was frozen for the cut: dump and writable layer",
            Unit::Seconds,
            checkpoint_frozen.clone(),
        );
        let checkpoint_bytes = Counter::default();
        registry.register_with_unit(
            "lazarus_checkpoint",
            "Compressed layer bytes of committed checkpoints",
            Unit::Bytes,
            checkpoint_bytes.clone(),
        );
        let checkpoint_pushes = Family::<ResultLabels, Counter>::default();
        registry.register(
            "lazarus_checkpoint_pushes",
            "Pushes of checkpoints to a registry, by result",
            checkpoint_pushes.clone(),
        );
        let last_checkpoint = Family::<ContainerLabels, Gauge<f64, AtomicU64>>::default();
        registry.register_with_unit(
            "lazarus_last_successful_checkpoint_timestamp",
            "Unix time of the newest checkpoint of each container in the local store",
            Unit::Seconds,
            last_checkpoint.clone(),
        );
        let store_size = Gauge::default();
        registry.register_with_unit(
            "lazarus_store_size",
            "Size of the node-local checkpoint store (all blobs)",
            Unit::Bytes,
            store_size.clone(),
        );
        let rejected_annotations = Family::<AnnotationLabels, Counter>::default();
        registry.register(
            "lazarus_rejected_annotations",
            "Malformed lazarus.dev annotations that were ignored",
            rejected_annotations.clone(),
        );
        let restores = Family::<ResultLabels, Counter>::default();
        registry.register("lazarus_restores", "Restore attempts by result", restores.clone());
        let restore_failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "lazarus_restore_failures",
            "Restores refused, fallen back to a fresh start or failed in CRIU, by reason",
            restore_failures.clone(),
        );
        let restore_fresh_starts = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "lazarus_restore_fresh_starts",
            "Containers asking for a best-effort restore that started from zero, by reason",
            restore_fresh_starts.clone(),
        );
        let restore_duration = Histogram::new(RESTORE_BUCKETS);
        registry.register_with_unit(
            "lazarus_restore_duration",
            "Time to prepare a restore at CreateContainer (resolve, download, verify, unpack, check)",
            Unit::Seconds,
            restore_duration.clone(),
        );
        let restore_bytes = Counter::default();
        registry.register_with_unit(
            "lazarus_restore",
            "Bytes of checkpoint data unpacked for restores",
            Unit::Bytes,
            restore_bytes.clone(),
        );
        // Series of fixed label sets exist from the start (at 0), so rates and
        // alerts work before the first event.
        for trigger in [Trigger::Periodic, Trigger::Stop] {
            for result in ["ok", "failed"] {
                drop(checkpoints.get_or_create(&CheckpointLabels { trigger: trigger.as_str(), result }));
            }
        }
        for result in ["ok", "failed"] {
            drop(checkpoint_pushes.get_or_create(&ResultLabels { result }));
        }
        for result in [RestoreResult::Restored, RestoreResult::Failed, RestoreResult::Fresh, RestoreResult::Pending] {
            drop(restores.get_or_create(&ResultLabels { result: result.as_str() }));
        }
        Metrics {
            inner: Arc::new(Inner {
                registry,
                cri_requests,
                cri_duration,
                checkpoints,
                checkpoint_failures,
                checkpoint_duration,
                checkpoint_frozen,
                checkpoint_bytes,
                checkpoint_pushes,
                last_checkpoint,
                containers: Mutex::default(),
                store_size,
                rejected_annotations,
                restores,
                restore_failures,
                restore_fresh_starts,
                restore_duration,
                restore_bytes,
            }),
        }
    }

    /// Counts one CRI call (`method`: [`method_label`], `code`: [`code_name`]).
    pub fn cri_call(&self, method: &'static str, code: &'static str, elapsed: Duration) {
        self.inner.cri_requests.get_or_create(&CallLabels { method, code }).inc();
        self.inner.cri_duration.get_or_create(&MethodLabels { method }).observe(elapsed.as_secs_f64());
    }

    /// A committed checkpoint of `namespace/pod/container`.
    pub fn checkpoint_succeeded(
        &self,
        trigger: Trigger,
        key: &str,
        total: Duration,
        frozen: Option<Duration>,
        bytes: u64,
    ) {
        let inner = &self.inner;
        inner.checkpoints.get_or_create(&CheckpointLabels { trigger: trigger.as_str(), result: "ok" }).inc();
        inner.checkpoint_duration.observe(total.as_secs_f64());
        if let Some(frozen) = frozen {
            inner.checkpoint_frozen.observe(frozen.as_secs_f64());
        }
        inner.checkpoint_bytes.inc_by(bytes);
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        if let Some(labels) = container_labels(key) {
            inner.last_checkpoint.get_or_create(&labels).set(now.as_secs_f64());
            inner.containers.lock().unwrap_or_else(PoisonError::into_inner).insert(labels);
        }
    }

    /// A checkpoint that failed; `reason` is a short stable token
    /// ([`crate::checkpoint::CheckpointError::reason`], or `timeout`).
    pub fn checkpoint_failed(&self, trigger: Trigger, reason: &'static str) {
        self.inner.checkpoints.get_or_create(&CheckpointLabels { trigger: trigger.as_str(), result: "failed" }).inc();
        self.inner.checkpoint_failures.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// A push to a registry (`ok` or `failed`).
    pub fn checkpoint_pushed(&self, ok: bool) {
        self.inner.checkpoint_pushes.get_or_create(&ResultLabels { result: if ok { "ok" } else { "failed" } }).inc();
    }

    /// A malformed annotation was ignored.
    pub fn annotation_rejected(&self, annotation: &'static str) {
        self.inner.rejected_annotations.get_or_create(&AnnotationLabels { annotation }).inc();
    }

    /// The local store's size in bytes.
    pub fn set_store_size(&self, bytes: u64) {
        self.inner.store_size.set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Sets the newest checkpoint time of each container from the store
    /// (`namespace/pod/container` → Unix seconds) and drops the series of
    /// containers that have no checkpoint left.
    pub fn set_last_checkpoints(&self, newest: &std::collections::HashMap<String, f64>) {
        let family = &self.inner.last_checkpoint;
        let mut known = self.inner.containers.lock().unwrap_or_else(PoisonError::into_inner);
        let mut now_known = HashSet::with_capacity(newest.len());
        for (key, time) in newest {
            if let Some(labels) = container_labels(key) {
                family.get_or_create(&labels).set(*time);
                now_known.insert(labels);
            }
        }
        for gone in known.difference(&now_known) {
            family.remove(gone);
        }
        *known = now_known;
    }

    /// A restore attempt ended with `result`.
    pub fn restore(&self, result: RestoreResult) {
        self.inner.restores.get_or_create(&ResultLabels { result: result.as_str() }).inc();
    }

    /// A restore failed (refused, fallen back or failed in CRIU) for `reason`.
    pub fn restore_failed(&self, reason: &'static str) {
        self.inner.restore_failures.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// Best effort: the container started from zero for `reason` ([`crate::restore::RestoreError::reason`]).
    pub fn restore_fresh_start(&self, reason: &'static str) {
        self.inner.restore_fresh_starts.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// A restore was prepared in `elapsed`, unpacking `bytes`.
    pub fn restore_prepared(&self, elapsed: Duration, bytes: u64) {
        self.inner.restore_duration.observe(elapsed.as_secs_f64());
        self.inner.restore_bytes.inc_by(bytes);
    }

    /// The OpenMetrics text of every metric (ends with `# EOF`).
    pub fn encode_openmetrics(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.inner.registry);
        out
    }

    /// The Prometheus text format (0.0.4) of every metric, for scrapers that
    /// do not ask for OpenMetrics (`curl`, `promtool check metrics`).
    pub fn encode_prometheus_text(&self) -> String {
        openmetrics_to_prometheus_text(&self.encode_openmetrics())
    }
}

fn container_labels(key: &str) -> Option<ContainerLabels> {
    let mut parts = key.splitn(3, '/');
    let (namespace, pod, container) = (parts.next()?, parts.next()?, parts.next()?);
    Some(ContainerLabels { namespace: namespace.to_owned(), pod: pod.to_owned(), container: container.to_owned() })
}

/// Rewrites OpenMetrics text as the Prometheus text format 0.0.4: counter
/// families are named with their `_total` suffix (OpenMetrics names the
/// family without it), `# UNIT` and `# EOF` lines go. Samples are the same.
pub fn openmetrics_to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let rewritten = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{prefix}{name}_total {tail}"))
        });
        match rewritten {
            Some(line) => out.push_str(&line),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Whether a scraper's `Accept` header asks for OpenMetrics.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.contains("application/openmetrics-text"))
}

/// CRI methods known by name (cri-api's, and a few newer ones). Others are
/// interned up to [`MAX_OTHER_METHODS`], then counted as `other`.
const KNOWN_METHODS: [&str; 37] = [
    "Attach",
    "CheckpointContainer",
    "ContainerStats",
    "ContainerStatus",
    "CreateContainer",
    "Exec",
    "ExecSync",
    "GetContainerEvents",
    "ImageFsInfo",
    "ImageStatus",
    "ListContainerStats",
    "ListContainers",
    "ListImages",
    "ListMetricDescriptors",
    "ListPodSandbox",
    "ListPodSandboxMetrics",
    "ListPodSandboxStats",
    "PodSandboxStats",
    "PodSandboxStatus",
    "PortForward",
    "PullImage",
    "RemoveContainer",
    "RemoveImage",
    "RemovePodSandbox",
    "ReopenContainerLog",
    "RunPodSandbox",
    "RuntimeConfig",
    "StartContainer",
    "Status",
    "StopContainer",
    "StopPodSandbox",
    "UpdateContainerResources",
    "UpdatePodSandboxResources",
    "UpdateRuntimeConfig",
    "Version",
    "CheckpointPod",
    "RestorePod",
];

/// Method names beyond [`KNOWN_METHODS`] that get a label of their own.
const MAX_OTHER_METHODS: usize = 32;

static OTHER_METHODS: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());

/// The `method` label of a gRPC path: its last segment
/// (`/runtime.v1.RuntimeService/RunPodSandbox` → `RunPodSandbox`). Methods
/// lazarus has never heard of keep their name too (the first
/// [`MAX_OTHER_METHODS`] of them; then `other`), so a client cannot grow the
/// label set without bound. No allocation for known methods.
pub fn method_label(path: &str) -> &'static str {
    let name = path.rsplit('/').next().unwrap_or("");
    if let Some(known) = KNOWN_METHODS.iter().find(|m| **m == name) {
        return known;
    }
    if name.is_empty() || name.len() > 64 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return "other";
    }
    let mut others = OTHER_METHODS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(seen) = others.iter().find(|m| **m == name) {
        return seen;
    }
    if others.len() >= MAX_OTHER_METHODS {
        return "other";
    }
    // Bounded above: at most MAX_OTHER_METHODS short strings, for the process's life.
    let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
    others.push(leaked);
    leaked
}

/// The canonical name of a gRPC status code (`OK`, `NOT_FOUND`, …).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The code name of a `grpc-status` header value; `None` if absent.
/// Values that are not a known code count as `UNKNOWN`, as gRPC says.
pub fn status_code_name(headers: &http::HeaderMap) -> Option<&'static str> {
    let value = headers.get("grpc-status")?;
    let code = std::str::from_utf8(value.as_bytes())
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .map_or(tonic::Code::Unknown, tonic::Code::from_i32);
    Some(code_name(code))
}

/// A response body that counts its call when its status is known: at its
/// trailers, at an error, at an end without trailers (`UNKNOWN`), or when
/// dropped before the end — the client went away (`CANCELLED`).
#[derive(Debug)]
pub struct MeteredBody<B> {
    inner: B,
    meter: Option<Meter>,
}

#[derive(Debug)]
struct Meter {
    metrics: Metrics,
    method: &'static str,
    started: Instant,
}

impl Meter {
    fn finish(self, code: &'static str) {
        self.metrics.cri_call(self.method, code, self.started.elapsed());
    }
}

impl<B> MeteredBody<B> {
    /// A body whose call has been counted already (or is not counted).
    pub fn counted(inner: B) -> Self {
        MeteredBody { inner, meter: None }
    }

    /// A body that counts the call `method`, started at `started`, when it ends.
    pub fn new(inner: B, metrics: Metrics, method: &'static str, started: Instant) -> Self {
        MeteredBody { inner, meter: Some(Meter { metrics, method, started }) }
    }
}

impl<B> http_body::Body for MeteredBody<B>
where
    B: http_body::Body<Data = Bytes, Error = tonic::Status> + Unpin,
{
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if this.meter.is_some() {
            let code = match &polled {
                Poll::Ready(Some(Ok(frame))) => frame.trailers_ref().map(|t| status_code_name(t).unwrap_or("UNKNOWN")),
                Poll::Ready(Some(Err(status))) => Some(code_name(status.code())),
                Poll::Ready(None) => Some("UNKNOWN"),
                Poll::Pending => None,
            };
            // (Taken only once the status is known.)
            if let Some(code) = code
                && let Some(meter) = this.meter.take()
            {
                meter.finish(code);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for MeteredBody<B> {
    fn drop(&mut self) {
        if let Some(meter) = self.meter.take() {
            meter.finish("CANCELLED");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// The value of the sample `name{labels}` in Prometheus text, if present.
    fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn methods_are_the_last_path_segment_and_bounded() {
        assert_eq!(method_label("/runtime.v1.RuntimeService/RunPodSandbox"), "RunPodSandbox");
        assert_eq!(method_label("/runtime.v1.ImageService/PullImage"), "PullImage");
        assert_eq!(method_label("/runtime.v1.RuntimeService/StreamPodSandboxes"), "StreamPodSandboxes");
        assert!(std::ptr::eq(
            method_label("/runtime.v1.RuntimeService/StreamPodSandboxes"),
            method_label("/x.Y/StreamPodSandboxes")
        ));
        assert_eq!(method_label("/"), "other");
        assert_eq!(method_label("/runtime.v1.RuntimeService/bad name"), "other");
        for i in 0..2 * MAX_OTHER_METHODS {
            let label = method_label(&format!("/x.Y/Made{i}"));
            assert!(label == format!("Made{i}") || label == "other", "{label}");
        }
        assert_eq!(method_label("/x.Y/OneMoreAfterTheCap"), "other");
        assert_eq!(
            method_label("/runtime.v1.RuntimeService/Version"),
            "Version",
            "known methods always keep their name"
        );
    }

    #[test]
    fn status_codes_have_their_canonical_names() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(status_code_name(&headers), None);
        for (value, name) in
            [("0", "OK"), ("5", "NOT_FOUND"), ("14", "UNAVAILABLE"), ("99", "UNKNOWN"), ("x", "UNKNOWN")]
        {
            headers.insert("grpc-status", http::HeaderValue::from_static(value));
            assert_eq!(status_code_name(&headers), Some(name), "{value}");
        }
        assert_eq!(code_name(tonic::Code::FailedPrecondition), "FAILED_PRECONDITION");
    }

    #[test]
    fn every_metric_is_exported_in_both_formats() {
        let m = Metrics::new();
        m.cri_call("Version", "OK", Duration::from_micros(300));
        m.cri_call("Version", "OK", Duration::from_micros(200));
        m.cri_call("ListContainers", "UNAVAILABLE", Duration::from_millis(2));
        m.checkpoint_succeeded(
            Trigger::Stop,
            "ns/pod/app",
            Duration::from_secs(3),
            Some(Duration::from_millis(80)),
            4096,
        );
        m.checkpoint_failed(Trigger::Periodic, "criu");
        m.checkpoint_pushed(true);
        m.annotation_rejected("lazarus.dev/checkpoint-interval");
        m.set_store_size(123_456);
        m.restore(RestoreResult::Restored);
        m.restore(RestoreResult::Failed);
        m.restore_failed("image");
        m.restore_fresh_start("none_usable");
        m.restore_prepared(Duration::from_millis(700), 1000);

        let om = m.encode_openmetrics();
        assert!(om.ends_with("# EOF\n"), "{om}");
        assert!(om.contains("# TYPE lazarus_cri_requests counter\n"), "{om}");
        assert!(om.contains("# UNIT lazarus_store_size_bytes bytes\n"), "{om}");

        let text = m.encode_prometheus_text();
        assert!(!text.contains("# EOF") && !text.contains("# UNIT"), "{text}");
        for family in [
            "lazarus_cri_requests_total counter",
            "lazarus_cri_request_duration_seconds histogram",
            "lazarus_checkpoints_total counter",
            "lazarus_checkpoint_failures_total counter",
            "lazarus_checkpoint_duration_seconds histogram",
            "lazarus_checkpoint_frozen_seconds histogram",
            "lazarus_checkpoint_bytes_total counter",
            "lazarus_checkpoint_pushes_total counter",
            "lazarus_last_successful_checkpoint_timestamp_seconds gauge",
            "lazarus_store_size_bytes gauge",
            "lazarus_rejected_annotations_total counter",
            "lazarus_restores_total counter",
            "lazarus_restore_failures_total counter",
            "lazarus_restore_fresh_starts_total counter",
            "lazarus_restore_duration_seconds histogram",
            "lazarus_restore_bytes_total counter",
        ] {
            assert!(text.contains(&format!("# TYPE {family}\n")), "{family} missing:\n{text}");
            let name = family.split(' ').next().unwrap_or_default();
            assert!(text.contains(&format!("# HELP {name} ")), "{name} has no help:\n{text}");
        }
        assert_eq!(sample(&text, r#"lazarus_cri_requests_total{method="Version",code="OK"}"#), Some(2.0));
        assert_eq!(
            sample(&text, r#"lazarus_cri_requests_total{method="ListContainers",code="UNAVAILABLE"}"#),
            Some(1.0)
        );
        assert_eq!(sample(&text, r#"lazarus_cri_request_duration_seconds_count{method="Version"}"#), Some(2.0));
        assert_eq!(
            sample(&text, r#"lazarus_cri_request_duration_seconds_bucket{le="0.0005",method="Version"}"#),
            Some(2.0)
        );
        assert_eq!(sample(&text, r#"lazarus_checkpoints_total{trigger="stop",result="ok"}"#), Some(1.0));
        assert_eq!(sample(&text, r#"lazarus_checkpoints_total{trigger="periodic",result="failed"}"#), Some(1.0));
        assert_eq!(sample(&text, r#"lazarus_checkpoint_failures_total{reason="criu"}"#), Some(1.0));
        assert_eq!(sample(&text, "lazarus_checkpoint_bytes_total"), Some(4096.0));
        assert_eq!(sample(&text, "lazarus_checkpoint_frozen_seconds_sum"), Some(0.08));
        assert_eq!(sample(&text, r#"lazarus_checkpoint_pushes_total{result="ok"}"#), Some(1.0));
        assert_eq!(sample(&text, "lazarus_store_size_bytes"), Some(123_456.0));
        assert_eq!(sample(&text, r#"lazarus_restores_total{result="restored"}"#), Some(1.0));
        assert_eq!(sample(&text, r#"lazarus_restore_failures_total{reason="image"}"#), Some(1.0));
        assert_eq!(sample(&text, r#"lazarus_restore_fresh_starts_total{reason="none_usable"}"#), Some(1.0));
        assert_eq!(sample(&text, "lazarus_restore_bytes_total"), Some(1000.0));
        let last = sample(
            &text,
            r#"lazarus_last_successful_checkpoint_timestamp_seconds{namespace="ns",pod="pod",container="app"}"#,
        )
        .expect("last checkpoint time");
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).expect("now").as_secs_f64();
        assert!((now - last).abs() < 60.0, "{last} vs {now}");
    }

    #[test]
    fn last_checkpoint_series_follow_the_store() {
        let m = Metrics::new();
        m.checkpoint_succeeded(Trigger::Manual, "ns/a/app", Duration::from_secs(1), None, 1);
        let newest: std::collections::HashMap<String, f64> =
            [("ns/b/app".to_owned(), 1_700_000_000.5)].into_iter().collect();
        m.set_last_checkpoints(&newest);
        let text = m.encode_prometheus_text();
        assert!(!text.contains(r#"pod="a""#), "a has no checkpoint in the store any more:\n{text}");
        assert_eq!(
            sample(
                &text,
                r#"lazarus_last_successful_checkpoint_timestamp_seconds{namespace="ns",pod="b",container="app"}"#
            ),
            Some(1_700_000_000.5)
        );
    }

    #[test]
    fn counters_are_renamed_for_the_text_format() {
        let om = "# HELP a_total x.\n# HELP c Calls.\n# TYPE c counter\nc_total{m=\"v\"} 1\n# HELP g Size.\n# TYPE g gauge\n# UNIT g bytes\ng 2\n# EOF\n";
        assert_eq!(
            openmetrics_to_prometheus_text(om),
            "# HELP a_total x.\n# HELP c_total Calls.\n# TYPE c_total counter\nc_total{m=\"v\"} 1\n# HELP g Size.\n# TYPE g gauge\ng 2\n"
        );
        assert!(wants_openmetrics(Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5")));
        assert!(!wants_openmetrics(Some("*/*")));
        assert!(!wants_openmetrics(None));
    }

    fn trailers(code: &'static str) -> http::HeaderMap {
        let mut t = http::HeaderMap::new();
        t.insert("grpc-status", http::HeaderValue::from_static(code));
        t
    }

    /// A body of one data frame and the trailers.
    fn body(code: &'static str) -> tonic::body::Body {
        let frames: Vec<Result<Frame<Bytes>, tonic::Status>> =
            vec![Ok(Frame::data(Bytes::from_static(b"x"))), Ok(Frame::trailers(trailers(code)))];
        tonic::body::Body::new(http_body_util::StreamBody::new(futures_util::stream::iter(frames)))
    }

    fn count(m: &Metrics, method: &str, code: &str) -> Option<f64> {
        sample(
            &m.encode_prometheus_text(),
            &format!(r#"lazarus_cri_requests_total{{method="{method}",code="{code}"}}"#),
        )
    }

    #[tokio::test]
    async fn bodies_count_their_call_at_the_trailers_or_when_dropped() {
        let m = Metrics::new();
        let metered = MeteredBody::new(body("5"), m.clone(), "ContainerStatus", Instant::now());
        assert_eq!(count(&m, "ContainerStatus", "NOT_FOUND"), None, "not before the trailers");
        let collected = metered.collect().await.expect("body");
        assert_eq!(collected.trailers().and_then(|t| t.get("grpc-status")).map(|v| v.as_bytes()), Some(&b"5"[..]));
        assert_eq!(count(&m, "ContainerStatus", "NOT_FOUND"), Some(1.0));

        drop(MeteredBody::new(body("0"), m.clone(), "GetContainerEvents", Instant::now()));
        assert_eq!(count(&m, "GetContainerEvents", "CANCELLED"), Some(1.0), "a stream the client left");

        drop(MeteredBody::counted(body("0")));
        assert_eq!(count(&m, "Version", "OK"), None);
    }

    #[tokio::test]
    async fn the_proxy_counts_calls_to_an_upstream_that_is_down() {
        let config = crate::config::Config::resolve(
            crate::config::FileConfig::default(),
            crate::config::Overrides {
                upstream: Some("unix:///nonexistent/lazarus-test/containerd.sock".into()),
                ..Default::default()
            },
        )
        .expect("config");
        let m = Metrics::new();
        let proxy = crate::proxy::Proxy::new(crate::upstream::Upstream::new(&config).expect("upstream"))
            .with_metrics(m.clone());
        for path in ["/runtime.v1.RuntimeService/ListContainers", "/runtime.v1.RuntimeService/Version"] {
            let request = http::Request::builder()
                .uri(path)
                .body(http_body_util::Full::new(crate::grpc_frame::encode(&[])))
                .expect("request");
            let response = proxy.handle(request).await.expect("a status, not a reset");
            assert_eq!(status_code_name(response.headers()), Some("UNAVAILABLE"));
        }
        assert_eq!(count(&m, "ListContainers", "UNAVAILABLE"), Some(1.0));
        assert_eq!(count(&m, "Version", "UNAVAILABLE"), Some(1.0));
    }
}
