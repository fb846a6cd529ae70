//! Errors of the proxy's request path, and their one mapping to gRPC statuses.

use std::sync::Arc;

use tonic::{Code, Status};

/// Something went wrong while handling one CRI call.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The upstream runtime could not be reached (down, restarting, socket missing).
    #[error("upstream {upstream} is unavailable: {reason}")]
    UpstreamUnavailable {
        /// The upstream endpoint.
        upstream: Arc<str>,
        /// The transport error, with its causes.
        reason: String,
    },
    /// The upstream reset the call's stream (RST_STREAM) before answering,
    /// e.g. containerd 2.1 when the call's `grpc-timeout` expires. The
    /// client's stream is reset with the same code.
    #[error("upstream {upstream} reset the stream: {reason:?}")]
    UpstreamReset {
        /// The upstream endpoint.
        upstream: Arc<str>,
        /// The RST_STREAM error code.
        reason: h2::Reason,
    },
    /// The client's request body could not be read.
    #[error("reading the {method} request: {reason}")]
    RequestBody {
        /// The gRPC method path.
        method: String,
        /// Why.
        reason: String,
    },
    /// A message is larger than kubelet's limit.
    #[error("{method}: {}", too_large(*size, *limit))]
    MessageTooLarge {
        /// The gRPC method path.
        method: String,
        /// Size announced in the gRPC frame; `None` when the body was cut off at the
        /// limit before a frame header told it.
        size: Option<usize>,
        /// The limit.
        limit: usize,
    },
    /// A request body is not a single well-formed gRPC frame.
    #[error("{method}: malformed gRPC request: {reason}")]
    MalformedFrame {
        /// The gRPC method path.
        method: String,
        /// Why.
        reason: &'static str,
    },
    /// A message could not be decoded as the CRI type it should be.
    #[error("{method}: decoding the {what}: {source}")]
    Decode {
        /// The gRPC method path.
        method: String,
        /// "request" or "response".
        what: &'static str,
        /// The protobuf error.
        source: prost::DecodeError,
    },
    /// A container whose pod asks for a restore cannot be restored, and is not created.
    #[error("restoring container {container} of pod {pod}: {source}")]
    Restore {
        /// The container name.
        container: String,
        /// `namespace/name` of the pod.
        pod: String,
        /// Why (boxed: restore errors are large and rare).
        source: Box<crate::restore::RestoreError>,
    },
}

fn too_large(size: Option<usize>, limit: usize) -> String {
    match size {
        Some(size) => format!("message of {size} bytes exceeds the limit of {limit} bytes"),
        None => format!("message over the limit of {limit} bytes (not read further)"),
    }
}

impl ProxyError {
    /// The gRPC code this error is reported with.
    pub fn code(&self) -> Code {
        match self {
            ProxyError::UpstreamUnavailable { .. } => Code::Unavailable,
            ProxyError::UpstreamReset { reason, .. } => crate::upstream::code_for_reset(*reason),
            ProxyError::RequestBody { .. } => Code::Cancelled,
            ProxyError::MessageTooLarge { .. } => Code::ResourceExhausted,
            ProxyError::MalformedFrame { .. } => Code::Internal,
            ProxyError::Decode { .. } => Code::InvalidArgument,
            ProxyError::Restore { source, .. } => source.code(),
        }
    }
}

impl From<ProxyError> for Status {
    fn from(err: ProxyError) -> Self {
        let message = format!("lazarus: {err}");
        match &err {
            // kubelet shows it in `kubectl describe` events: the cause first, short;
            // the whole text is in lazarus's log (the restore engine logs every refusal).
            ProxyError::Restore { .. } => Status::new(err.code(), cap_message(&message, MAX_REFUSAL)),
            _ => Status::new(err.code(), message),
        }
    }
}

/// The longest gRPC message of a refused restore, in bytes.
pub const MAX_REFUSAL: usize = 1024;

/// `text` cut to at most `max` bytes at a line boundary, marked with `…` when
/// cut (a first line longer than that is cut at a character boundary).
pub fn cap_message(text: &str, max: usize) -> String {
    const MARK: &str = "…";
    if text.len() <= max {
        return text.to_owned();
    }
    let budget = max.saturating_sub(MARK.len() + 1);
    let mut kept = 0;
    for line in text.split_inclusive('\n') {
        if kept + line.len() > budget {
            break;
        }
        kept += line.len();
    }
    if kept == 0 {
        kept = budget;
        while !text.is_char_boundary(kept) {
            kept -= 1;
        }
        return format!("{}{MARK}", &text[..kept]);
    }
    format!("{}\n{MARK}", text[..kept].trim_end_matches('\n'))
}

/// The gRPC code for a registry error, the one mapping (restores use it through
/// `FetchError::code`): only what a retry can fix is `UNAVAILABLE`; a wrong tag is
/// `NOT_FOUND`, refused credentials `PERMISSION_DENIED`.
pub fn registry_code(err: &lazarus_registry::RegistryError) -> Code {
    use lazarus_registry::RegistryError as E;
    match err {
        E::NotFound { .. } => Code::NotFound,
        E::Auth { .. } => Code::PermissionDenied,
        E::Transport { .. } | E::Timeout { .. } => Code::Unavailable,
        E::Status { status, .. } => match status {
            401 | 403 => Code::PermissionDenied,
            404 => Code::NotFound,
            408 | 429 | 500..=599 => Code::Unavailable,
            _ => Code::Internal,
        },
        E::Reference(_) => Code::InvalidArgument,
        E::Integrity { .. } => Code::DataLoss,
        E::Credentials(_) | E::Tls { .. } | E::InsecureUrl { .. } | E::DeleteUnsupported { .. } => {
            Code::FailedPrecondition
        }
        E::Protocol { .. } | E::Io { .. } => Code::Internal,
    }
}

pub use lazarus_format::errors::chain;

#[cfg(test)]
mod tests {
    #[test]
    fn refusal_messages_are_capped_at_a_line_boundary() {
        use super::cap_message;
        assert_eq!(cap_message("short", 1024), "short");
        let long: String = (0..100).map(|i| format!("line {i} of the refusal\n")).collect();
        let capped = cap_message(&long, 1024);
        assert!(capped.len() <= 1024, "{}", capped.len());
        assert!(capped.starts_with("line 0 of the refusal\nline 1 "), "{capped}");
        assert!(capped.ends_with("of the refusal\n…"), "{capped}");
        let one = "é".repeat(1000);
        let cut = cap_message(&one, 1024);
        assert!(cut.len() <= 1024 && cut.ends_with('…'), "{}", cut.len());
    }

    use super::*;

    #[test]
    fn upstream_errors_become_unavailable_naming_the_upstream() {
        let status = Status::from(ProxyError::UpstreamUnavailable {
            upstream: "unix:///run/containerd/containerd.sock".into(),
            reason: "connection refused".into(),
        });
        assert_eq!(status.code(), Code::Unavailable);
        assert!(status.message().contains("unix:///run/containerd/containerd.sock"));
        assert!(status.message().contains("connection refused"));
    }

    #[test]
    fn too_large_reports_the_real_size_or_says_over_the_limit() {
        let err = |size| ProxyError::MessageTooLarge { method: "/m".into(), size, limit: 16 };
        assert_eq!(err(Some(20)).to_string(), "/m: message of 20 bytes exceeds the limit of 16 bytes");
        assert_eq!(err(None).to_string(), "/m: message over the limit of 16 bytes (not read further)");
        assert_eq!(err(None).code(), Code::ResourceExhausted);
    }

    #[test]
    fn chain_joins_causes_once() {
        let inner = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let outer = ProxyError::RequestBody { method: "/x".into(), reason: chain(&inner) };
        assert_eq!(chain(&outer), "reading the /x request: no such file");
    }
}
