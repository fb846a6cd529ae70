//! Daemon configuration: a TOML file, overridden by command-line flags.
//!
//! [`parse`] and [`Config::resolve`] are pure so tests exercise exactly what
//! `lazarus serve` does with a file and flags.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::duration;
use crate::logging::{LogFormat, LogSettings};

/// Where kubelet connects by default.
pub const DEFAULT_LISTEN: &str = "/run/lazarus/cri.sock";
/// The runtime lazarus forwards to by default.
pub const DEFAULT_UPSTREAM: &str = "unix:///run/containerd/containerd.sock";
/// Persistent state (checkpoint store, …).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/lazarus";
/// Runtime state that does not survive a reboot (restore plans, …).
pub const DEFAULT_RUN_DIR: &str = "/run/lazarus";
/// How long in-flight calls may take to finish after SIGTERM.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a failed restore is remembered against its checkpoint by default.
pub const DEFAULT_RESTORE_FAILURE_EXPIRY: Duration = Duration::from_secs(24 * 3600);
/// Checkpoints running at once on a node.
pub const DEFAULT_MAX_CONCURRENT_CHECKPOINTS: usize = 2;
/// How long connecting to the upstream may take before a call fails.
pub const DEFAULT_UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Default cap of each `emptyDir` volume and of `/dev/shm` captured into a checkpoint: 1 GiB.
pub const DEFAULT_POD_DATA_CAPTURE_MAX_SIZE: u64 = 1 << 30;
/// The containerd runtime handler restored pods run with.
pub const DEFAULT_RESTORE_HANDLER: &str = "lazarus";
/// Where kubelet's checkpoint API writes archives.
pub const DEFAULT_RESTORE_ALLOWED_DIR: &str = "/var/lib/kubelet/checkpoints";

/// Errors in the configuration file or flags.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown keys / wrong types.
    #[error("parsing config file {path}: {message}")]
    Parse {
        /// The file (or `<inline>`).
        path: PathBuf,
        /// What the TOML parser said, with line and column.
        message: String,
    },
    /// A value is syntactically fine but not usable.
    #[error("invalid {key} {value:?}: {reason}")]
    Invalid {
        /// The setting (flag or key) at fault.
        key: &'static str,
        /// The rejected value.
        value: String,
        /// Why it was rejected.
        reason: String,
    },
}

/// The configuration file as written (`/etc/lazarus/config.toml`). Every key is
/// optional; unknown keys are an error so typos do not pass silently.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Unix socket path kubelet connects to.
    pub listen: Option<PathBuf>,
    /// The runtime's CRI endpoint (`unix:///path` or `http://host:port`).
    pub upstream: Option<String>,
    /// Persistent state directory.
    pub state_dir: Option<PathBuf>,
    /// Runtime state directory.
    pub run_dir: Option<PathBuf>,
    /// Log filter (`info`, `debug`, `lazarus_daemon=trace,info`, …).
    pub log_level: Option<String>,
    /// `plain` or `json`.
    pub log_format: Option<String>,
    /// Go-style duration in-flight calls get after SIGTERM.
    pub shutdown_timeout: Option<String>,
    /// Go-style duration a connection attempt to the upstream may take.
    pub upstream_connect_timeout: Option<String>,
    /// Node-wide maximum of checkpoints running at once (default 2).
    pub max_concurrent_checkpoints: Option<usize>,
    /// Checkpoint layer compression: `zstd` (default) or `gzip`.
    pub checkpoint_compression: Option<String>,
    /// Size cap of the local checkpoint store (`"50GiB"`, `"500MiB"`, bytes); none by default.
    pub store_max_size: Option<String>,
    /// Largest `emptyDir` volume captured into a checkpoint (`"1GiB"`); a larger one refuses it.
    pub empty_dir_capture_max_size: Option<String>,
    /// Largest `/dev/shm` captured into a checkpoint (`"1GiB"`); a larger one refuses it.
    pub dev_shm_capture_max_size: Option<String>,
    /// Docker-style `config.json` with registry credentials; none: anonymous.
    pub registry_credentials: Option<PathBuf>,
    /// The layout checkpoints are pushed in: `incremental` (default) or `portable`.
    pub registry_layout: Option<String>,
    /// Registries (`host[:port]`, or `host` for every port) reached over plain HTTP.
    pub insecure_registries: Option<Vec<String>>,
    /// PEM files with CA certificates trusted for registries besides the system's.
    pub registry_ca_files: Option<Vec<PathBuf>>,
    /// Where restore plans are unpacked; the `lazarus-runc` wrapper must use the same
    /// (`LAZARUS_RESTORE_DIR`). Default `<state_dir>/restore` (`/var/lib/lazarus/restore`).
    pub restore_dir: Option<PathBuf>,
    /// containerd runtime handler whose `BinaryName` is `lazarus-runc` (default `lazarus`).
    pub restore_runtime_handler: Option<String>,
    /// Registries checkpoints may be restored from (`host[:port]` or `host[:port]/path`); default none.
    pub restore_allowed_registries: Option<Vec<String>>,
    /// Directories checkpoint archives may be restored from (default `/var/lib/kubelet/checkpoints`).
    pub restore_allowed_dirs: Option<Vec<PathBuf>>,
    /// Sources (reference prefixes) that may be restored into a namespace other than their own.
    pub restore_cross_namespace_sources: Option<Vec<String>>,
    /// Go-style duration a restore failure is remembered against a checkpoint (default 24h).
    pub restore_failure_expiry: Option<String>,
    /// `host:port` of the HTTP endpoint for `/metrics`, `/healthz` and `/readyz`; none (off) by default.
    pub metrics_listen: Option<String>,
    /// Whether `lazarus serve` refuses to start without a usable CRIU (default true).
    pub require_criu: Option<bool>,
}

/// Values given on the command line; `Some` wins over the file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `--listen`.
    pub listen: Option<PathBuf>,
    /// `--upstream`.
    pub upstream: Option<String>,
    /// `--state-dir`.
    pub state_dir: Option<PathBuf>,
    /// `--run-dir`.
    pub run_dir: Option<PathBuf>,
    /// `--log-level` (or `LAZARUS_LOG`).
    pub log_level: Option<String>,
    /// `--log-format`.
    pub log_format: Option<String>,
}

/// The effective configuration of a running daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Unix socket path kubelet connects to.
    pub listen: PathBuf,
    /// The runtime's endpoint, validated.
    pub upstream: String,
    /// Persistent state directory.
    pub state_dir: PathBuf,
    /// Runtime state directory.
    pub run_dir: PathBuf,
    /// Logging.
    pub log: LogSettings,
    /// Grace period for in-flight calls on shutdown.
    pub shutdown_timeout: Duration,
    /// Upstream connect timeout.
    pub upstream_connect_timeout: Duration,
    /// Node-wide maximum of concurrent checkpoints.
    pub max_concurrent_checkpoints: usize,
    /// Checkpoint layer compression.
    pub checkpoint_compression: crate::checkpoint::Compression,
    /// The layout checkpoints are pushed to registries in.
    pub registry_layout: crate::checkpoint::RegistryLayout,
    /// Size cap of the local checkpoint store, in bytes.
    pub store_max_size: Option<u64>,
    /// Largest `emptyDir` volume captured into a checkpoint, in bytes.
    pub empty_dir_capture_max_size: u64,
    /// Largest `/dev/shm` captured into a checkpoint, in bytes.
    pub dev_shm_capture_max_size: u64,
    /// Docker-style `config.json` with registry credentials.
    pub registry_credentials: Option<PathBuf>,
    /// Registries reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Extra CA certificate files for registries.
    pub registry_ca_files: Vec<PathBuf>,
    /// Where restore plans are unpacked.
    pub restore_dir: PathBuf,
    /// The runtime handler of restored pods.
    pub restore_runtime_handler: String,
    /// Registries checkpoints may be restored from.
    pub restore_allowed_registries: Vec<String>,
    /// Directories checkpoint archives may be restored from.
    pub restore_allowed_dirs: Vec<PathBuf>,
    /// Sources that may be restored into another namespace.
    pub restore_cross_namespace_sources: Vec<String>,
    /// How long a restore failure is remembered against a checkpoint.
    pub restore_failure_expiry: Duration,
    /// Address of the metrics and health endpoint; `None`: off.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Refuse to start without a usable CRIU.
    pub require_criu: bool,
}

/// Parses the text of a configuration file. `origin` names it in errors.
pub fn parse(text: &str, origin: &Path) -> Result<FileConfig, ConfigError> {
    toml::from_str(text)
        .map_err(|e| ConfigError::Parse { path: origin.to_owned(), message: e.to_string().trim_end().to_owned() })
}

/// Reads and parses a configuration file.
#[expect(clippy::disallowed_methods, reason = "read once at start-up, before the event loop runs")]
pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    parse(&text, path)
}

impl Config {
    /// How the registry client reaches registries: credentials, insecure
    /// registries and extra CA files from this configuration, timeouts default.
    pub fn registry_settings(&self) -> lazarus_registry::RegistrySettings {
        lazarus_registry::RegistrySettings {
            credentials_file: self.registry_credentials.clone(),
            insecure: self.insecure_registries.clone(),
            ca_files: self.registry_ca_files.clone(),
            ..Default::default()
        }
    }

    /// Combines file and flags (flags win) and validates the result.
    pub fn resolve(file: FileConfig, flags: Overrides) -> Result<Self, ConfigError> {
        let listen = flags.listen.or(file.listen).unwrap_or_else(|| DEFAULT_LISTEN.into());
        if !listen.is_absolute() {
            return Err(invalid("listen", listen.display(), "must be an absolute path"));
        }
        let upstream = flags.upstream.or(file.upstream).unwrap_or_else(|| DEFAULT_UPSTREAM.into());
        validate_upstream(&upstream)?;
        let state_dir = absolute_dir("state-dir", flags.state_dir.or(file.state_dir), DEFAULT_STATE_DIR)?;
        let run_dir = absolute_dir("run-dir", flags.run_dir.or(file.run_dir), DEFAULT_RUN_DIR)?;
        let format = match flags.log_format.or(file.log_format).as_deref() {
            None | Some("plain") => LogFormat::Plain,
            Some("json") => LogFormat::Json,
            Some(other) => return Err(invalid("log-format", other, "expected \"plain\" or \"json\"")),
        };
        let filter = flags.log_level.or(file.log_level).unwrap_or_else(|| "info".to_owned());
        crate::logging::validate_filter(&filter).map_err(|reason| invalid("log-level", &filter, reason))?;
        let shutdown_timeout = duration_setting("shutdown_timeout", file.shutdown_timeout, DEFAULT_SHUTDOWN_TIMEOUT)?;
        let upstream_connect_timeout = duration_setting(
            "upstream_connect_timeout",
            file.upstream_connect_timeout,
            DEFAULT_UPSTREAM_CONNECT_TIMEOUT,
        )?;
        if upstream_connect_timeout.is_zero() {
            return Err(invalid("upstream_connect_timeout", "0", "must be greater than zero"));
        }
        let max_concurrent_checkpoints = file.max_concurrent_checkpoints.unwrap_or(DEFAULT_MAX_CONCURRENT_CHECKPOINTS);
        if max_concurrent_checkpoints == 0 {
            return Err(invalid("max_concurrent_checkpoints", 0, "must be at least 1"));
        }
        let checkpoint_compression = match file.checkpoint_compression.as_deref() {
            None => crate::checkpoint::Compression::default(),
            Some(text) => text.parse().map_err(|reason: String| invalid("checkpoint_compression", text, reason))?,
        };
        let registry_layout = match file.registry_layout.as_deref() {
            None => crate::checkpoint::RegistryLayout::default(),
            Some(text) => text.parse().map_err(|reason: String| invalid("registry_layout", text, reason))?,
        };
        let store_max_size = match file.store_max_size.as_deref() {
            None => None,
            Some(text) => Some(parse_size(text).map_err(|reason| invalid("store_max_size", text, reason))?),
        };
        let empty_dir_capture_max_size = size_setting(
            "empty_dir_capture_max_size",
            file.empty_dir_capture_max_size.as_deref(),
            DEFAULT_POD_DATA_CAPTURE_MAX_SIZE,
        )?;
        let dev_shm_capture_max_size = size_setting(
            "dev_shm_capture_max_size",
            file.dev_shm_capture_max_size.as_deref(),
            DEFAULT_POD_DATA_CAPTURE_MAX_SIZE,
        )?;
        // Below the state dir by default: the wrapper's default when state_dir is the default,
        // and a test's temporary state dir keeps its restore plans too.
        let restore_dir = match file.restore_dir {
            None => state_dir.join("restore"),
            given => absolute_dir("restore_dir", given, lazarus_format::plan::DEFAULT_RESTORE_DIR)?,
        };
        let restore_runtime_handler = file.restore_runtime_handler.unwrap_or_else(|| DEFAULT_RESTORE_HANDLER.into());
        if restore_runtime_handler.is_empty()
            || !restore_runtime_handler
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return Err(invalid(
                "restore_runtime_handler",
                &restore_runtime_handler,
                "expected a runtime handler name",
            ));
        }
        let restore_allowed_dirs =
            file.restore_allowed_dirs.unwrap_or_else(|| vec![PathBuf::from(DEFAULT_RESTORE_ALLOWED_DIR)]);
        if let Some(dir) = restore_allowed_dirs.iter().find(|d| !d.is_absolute()) {
            return Err(invalid("restore_allowed_dirs", dir.display(), "must be absolute paths"));
        }
        let restore_allowed_registries = file.restore_allowed_registries.unwrap_or_default();
        if let Some(bad) = restore_allowed_registries.iter().find(|r| r.is_empty() || r.contains("://")) {
            return Err(invalid("restore_allowed_registries", bad, "expected host[:port] or host[:port]/path"));
        }
        let registry_credentials = match file.registry_credentials {
            Some(path) if !path.is_absolute() => {
                return Err(invalid("registry_credentials", path.display(), "must be an absolute path"));
            }
            other => other,
        };
        let insecure_registries = parse_insecure_registries(file.insecure_registries.unwrap_or_default())?;
        let registry_ca_files = file.registry_ca_files.unwrap_or_default();
        if let Some(path) = registry_ca_files.iter().find(|p| !p.is_absolute()) {
            return Err(invalid("registry_ca_files", path.display(), "must be absolute paths"));
        }
        let metrics_listen = match file.metrics_listen.as_deref() {
            None => None,
            Some(text) => Some(text.parse().map_err(|_| {
                invalid(
                    "metrics_listen",
                    text,
                    "expected an IP address and port, e.g. \"127.0.0.1:9464\" or \"[::1]:9464\"",
                )
            })?),
        };
        Ok(Config {
            listen,
            upstream,
            state_dir,
            run_dir,
            log: LogSettings { filter, format },
            shutdown_timeout,
            upstream_connect_timeout,
            max_concurrent_checkpoints,
            checkpoint_compression,
            registry_layout,
            store_max_size,
            empty_dir_capture_max_size,
            dev_shm_capture_max_size,
            registry_credentials,
            insecure_registries,
            registry_ca_files,
            restore_dir,
            restore_runtime_handler,
            restore_allowed_registries,
            restore_allowed_dirs,
            restore_cross_namespace_sources: file.restore_cross_namespace_sources.unwrap_or_default(),
            restore_failure_expiry: duration_setting(
                "restore_failure_expiry",
                file.restore_failure_expiry,
                DEFAULT_RESTORE_FAILURE_EXPIRY,
            )?,
            metrics_listen,
            require_criu: file.require_criu.unwrap_or(true),
        })
    }
}

fn invalid(key: &'static str, value: impl std::fmt::Display, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key, value: value.to_string(), reason: reason.into() }
}

fn absolute_dir(key: &'static str, value: Option<PathBuf>, default: &str) -> Result<PathBuf, ConfigError> {
    let dir = value.unwrap_or_else(|| default.into());
    if dir.is_absolute() { Ok(dir) } else { Err(invalid(key, dir.display(), "must be an absolute path")) }
}

fn size_setting(key: &'static str, value: Option<&str>, default: u64) -> Result<u64, ConfigError> {
    match value {
        None => Ok(default),
        Some(text) => parse_size(text).map_err(|reason| invalid(key, text, reason)),
    }
}

fn duration_setting(key: &'static str, value: Option<String>, default: Duration) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(text) => duration::parse(&text).map_err(|e| invalid(key, &text, e.reason)),
    }
}

/// Parses a size: bytes, or a number with `KiB`, `MiB`, `GiB`, `TiB` (or
/// `K`, `M`, `G`, `T`, also powers of 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number.parse().map_err(|_| "expected a size like \"50GiB\"".to_owned())?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "T" | "TiB" => 1 << 40,
        other => return Err(format!("unknown unit {other:?}: use B, KiB, MiB, GiB or TiB")),
    };
    let bytes = value * factor as f64;
    if bytes < 1.0 || !bytes.is_finite() {
        return Err("must be at least 1 byte".into());
    }
    Ok(bytes as u64)
}

/// Validates `insecure_registries`: each entry `host` or `host:port`, no
/// scheme, no path.
pub fn parse_insecure_registries(entries: Vec<String>) -> Result<Vec<String>, ConfigError> {
    for entry in &entries {
        if entry.contains("://") || entry.contains('/') {
            return Err(invalid("insecure_registries", entry, "expected host or host:port, without scheme or path"));
        }
        lazarus_registry::reference::validate_domain(entry)
            .map_err(|reason| invalid("insecure_registries", entry, reason))?;
    }
    Ok(entries)
}

/// What `upstream` accepts, for error messages.
const UPSTREAM_FORMS: &str = "use unix:///path/to/socket or http://host:port";

/// Accepts `unix:///absolute/path` and `http://host:port` (a runtime serving
/// plaintext HTTP/2 over TCP, e.g. in tests). lazarus has no TLS client for its
/// upstream, so `https://` is refused instead of being dialled in plaintext; a
/// TCP endpoint needs its port (gRPC has no default one), and a path, query or
/// credentials in the URI would be silently ignored, so they are refused too.
pub fn validate_upstream(uri: &str) -> Result<(), ConfigError> {
    let bad = |reason: String| invalid("upstream", uri, reason);
    if let Some(path) = uri.strip_prefix("unix://") {
        if !path.starts_with('/') {
            return Err(bad("a unix endpoint needs an absolute path: unix:///run/containerd/containerd.sock".into()));
        }
        return Ok(());
    }
    let Some((scheme, _)) = uri.split_once("://") else {
        if uri.starts_with('/') {
            return Err(bad(format!("a socket path needs the unix:// scheme: unix://{uri}")));
        }
        return Err(bad(format!("no scheme: {UPSTREAM_FORMS}")));
    };
    match scheme.to_ascii_lowercase().as_str() {
        "http" => {}
        "https" => {
            return Err(bad(format!(
                "TLS to the upstream is not supported (lazarus speaks plaintext HTTP/2 to the runtime): {UPSTREAM_FORMS}"
            )));
        }
        _ => return Err(bad(format!("unsupported scheme {scheme:?}: {UPSTREAM_FORMS}"))),
    }
    let parsed: http::Uri = uri.parse().map_err(|e| bad(format!("not a valid URI ({e}): {UPSTREAM_FORMS}")))?;
    let Some(authority) = parsed.authority() else {
        return Err(bad(format!("no host: {UPSTREAM_FORMS}")));
    };
    if authority.as_str().contains('@') {
        return Err(bad("credentials in the URI are not supported: use http://host:port".into()));
    }
    if authority.host().is_empty() {
        return Err(bad(format!("no host: {UPSTREAM_FORMS}")));
    }
    if authority.port_u16().is_none() {
        return Err(bad(format!(
            "a TCP endpoint needs a port, e.g. http://{}:10010 (gRPC has no default port)",
            authority.host()
        )));
    }
    if !matches!(parsed.path(), "" | "/") || parsed.query().is_some() {
        return Err(bad(format!("a path or query is not used by gRPC: use http://{authority}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> &'static Path {
        Path::new("/etc/lazarus/config.toml")
    }

    #[test]
    fn defaults_match_the_documentation() {
        let c = Config::resolve(FileConfig::default(), Overrides::default()).expect("defaults");
        assert_eq!(c.listen, Path::new("/run/lazarus/cri.sock"));
        assert_eq!(c.upstream, "unix:///run/containerd/containerd.sock");
        assert_eq!(c.state_dir, Path::new("/var/lib/lazarus"));
        assert_eq!(c.run_dir, Path::new("/run/lazarus"));
        assert_eq!(c.log.format, LogFormat::Plain);
        assert_eq!(c.log.filter, "info");
        assert_eq!(c.shutdown_timeout, Duration::from_secs(10));
        assert_eq!(c.max_concurrent_checkpoints, 2);
        assert_eq!(c.checkpoint_compression, crate::checkpoint::Compression::Zstd);
        assert_eq!(c.restore_dir, Path::new("/var/lib/lazarus/restore"));
        assert_eq!(c.restore_runtime_handler, "lazarus");
        assert!(c.restore_allowed_registries.is_empty());
        assert_eq!(c.restore_allowed_dirs, vec![PathBuf::from("/var/lib/kubelet/checkpoints")]);
        assert!(c.restore_cross_namespace_sources.is_empty());
    }

    #[test]
    fn restore_settings_are_validated() {
        let text = "restore_dir = \"/srv/restore\"\nrestore_runtime_handler = \"lazarus-gpu\"\n\
                    restore_allowed_registries = [\"reg.example.com/team\"]\n\
                    restore_allowed_dirs = [\"/srv/archives\"]\n\
                    restore_cross_namespace_sources = [\"reg.example.com/shared/\"]\n";
        let c = Config::resolve(parse(text, origin()).expect("parses"), Overrides::default()).expect("valid");
        assert_eq!(c.restore_dir, Path::new("/srv/restore"));
        assert_eq!(c.restore_runtime_handler, "lazarus-gpu");
        assert_eq!(c.restore_allowed_registries, vec!["reg.example.com/team".to_owned()]);
        assert_eq!(c.restore_allowed_dirs, vec![PathBuf::from("/srv/archives")]);
        assert_eq!(c.restore_cross_namespace_sources, vec!["reg.example.com/shared/".to_owned()]);
        for (text, key) in [
            ("restore_dir = \"relative\"", "restore_dir"),
            ("restore_runtime_handler = \"a b\"", "restore_runtime_handler"),
            ("restore_allowed_dirs = [\"rel\"]", "restore_allowed_dirs"),
            ("restore_allowed_registries = [\"https://reg\"]", "restore_allowed_registries"),
        ] {
            let err = Config::resolve(parse(text, origin()).expect("parses"), Overrides::default()).expect_err(text);
            assert!(err.to_string().contains(key), "{err}");
        }
    }

    #[test]
    fn checkpoint_settings_are_validated() {
        let file =
            parse("max_concurrent_checkpoints = 4\ncheckpoint_compression = \"gzip\"\n", origin()).expect("valid");
        let c = Config::resolve(file, Overrides::default()).expect("valid");
        assert_eq!(c.max_concurrent_checkpoints, 4);
        assert_eq!(c.checkpoint_compression, crate::checkpoint::Compression::Gzip);
        assert_eq!(c.registry_layout, crate::checkpoint::RegistryLayout::Incremental, "the default");
        let file = parse("registry_layout = \"portable\"\n", origin()).expect("valid");
        let c = Config::resolve(file, Overrides::default()).expect("valid");
        assert_eq!(c.registry_layout, crate::checkpoint::RegistryLayout::Portable);
        for (text, key) in [
            ("max_concurrent_checkpoints = 0", "max_concurrent_checkpoints"),
            ("checkpoint_compression = \"lz4\"", "checkpoint_compression"),
            ("registry_layout = \"oci\"", "registry_layout"),
        ] {
            let err = Config::resolve(parse(text, origin()).expect("parses"), Overrides::default()).expect_err(text);
            assert!(err.to_string().contains(key), "{err}");
        }
    }

    #[test]
    fn file_values_apply_and_flags_override_them() {
        let file = parse(
            r#"
            listen = "/run/a.sock"
            upstream = "unix:///run/b.sock"
            state_dir = "/srv/state"
            log_format = "json"
            shutdown_timeout = "3s"
            "#,
            origin(),
        )
        .expect("valid file");
        let flags = Overrides { listen: Some("/run/flag.sock".into()), ..Overrides::default() };
        let c = Config::resolve(file, flags).expect("valid");
        assert_eq!(c.listen, Path::new("/run/flag.sock"));
        assert_eq!(c.upstream, "unix:///run/b.sock");
        assert_eq!(c.state_dir, Path::new("/srv/state"));
        assert_eq!(c.restore_dir, Path::new("/srv/state/restore"), "restore_dir follows state_dir");
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.shutdown_timeout, Duration::from_secs(3));
    }

    #[test]
    fn unknown_keys_are_an_error_naming_the_key_and_file() {
        let err = parse("listen = \"/a\"\nupstrem = \"unix:///x\"\n", origin()).expect_err("typo");
        let msg = err.to_string();
        assert!(msg.contains("/etc/lazarus/config.toml"), "{msg}");
        assert!(msg.contains("upstrem"), "{msg}");
    }

    #[test]
    fn wrong_types_are_an_error() {
        let err = parse("listen = 5\n", origin()).expect_err("type");
        assert!(err.to_string().contains("listen"), "{err}");
    }

    #[test]
    fn bad_values_are_rejected_with_the_setting_named() {
        let cases = [
            (Overrides { upstream: Some("/run/containerd/containerd.sock".into()), ..Default::default() }, "upstream"),
            (Overrides { upstream: Some("unix://relative.sock".into()), ..Default::default() }, "upstream"),
            (Overrides { listen: Some("cri.sock".into()), ..Default::default() }, "listen"),
            (Overrides { state_dir: Some("var/lib".into()), ..Default::default() }, "state-dir"),
            (Overrides { log_format: Some("xml".into()), ..Default::default() }, "log-format"),
            (Overrides { log_level: Some("lazarus=loud".into()), ..Default::default() }, "log-level"),
        ];
        for (flags, key) in cases {
            let err = Config::resolve(FileConfig::default(), flags).expect_err(key);
            assert!(matches!(&err, ConfigError::Invalid { key: k, .. } if *k == key), "{key}: {err}");
        }
        let file = FileConfig { shutdown_timeout: Some("soon".into()), ..Default::default() };
        let err = Config::resolve(file, Overrides::default()).expect_err("duration");
        assert!(err.to_string().contains("shutdown_timeout"), "{err}");
    }

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("50GiB"), Ok(50 << 30));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs").is_err());
        assert!(parse_size("0").is_err());
        let err = Config::resolve(parse("store_max_size = \"huge\"", origin()).expect("parses"), Overrides::default())
            .expect_err("invalid");
        assert!(err.to_string().contains("store_max_size"), "{err}");
    }

    #[test]
    fn pod_data_caps_default_to_1_gib_and_are_configurable() {
        let config = Config::resolve(FileConfig::default(), Overrides::default()).expect("defaults");
        assert_eq!((config.empty_dir_capture_max_size, config.dev_shm_capture_max_size), (1 << 30, 1 << 30));
        let text = "empty_dir_capture_max_size = \"64KiB\"\ndev_shm_capture_max_size = \"2GiB\"";
        let config = Config::resolve(parse(text, origin()).expect("parses"), Overrides::default()).expect("valid");
        assert_eq!((config.empty_dir_capture_max_size, config.dev_shm_capture_max_size), (64 << 10, 2 << 30));
        for key in ["empty_dir_capture_max_size", "dev_shm_capture_max_size"] {
            let file = parse(&format!("{key} = \"lots\""), origin()).expect("parses");
            let err = Config::resolve(file, Overrides::default()).expect_err(key);
            assert!(err.to_string().contains(key), "{err}");
        }
    }

    #[test]
    fn registry_settings_are_validated() {
        let c = Config::resolve(FileConfig::default(), Overrides::default()).expect("defaults");
        assert_eq!(c.registry_credentials, None);
        assert!(c.insecure_registries.is_empty() && c.registry_ca_files.is_empty());
        let text = "registry_credentials = \"/etc/lazarus/registry.json\"\n\
                    insecure_registries = [\"127.0.0.1:5000\", \"registry.lan\"]\n\
                    registry_ca_files = [\"/etc/lazarus/ca.pem\"]\n";
        let c = Config::resolve(parse(text, origin()).expect("parses"), Overrides::default()).expect("valid");
        assert_eq!(c.registry_credentials.as_deref(), Some(Path::new("/etc/lazarus/registry.json")));
        assert_eq!(c.insecure_registries, vec!["127.0.0.1:5000".to_owned(), "registry.lan".to_owned()]);
        assert_eq!(c.registry_ca_files, vec![PathBuf::from("/etc/lazarus/ca.pem")]);
        for (text, key, value) in [
            ("registry_credentials = \"config.json\"", "registry_credentials", "config.json"),
            ("insecure_registries = [\"http://127.0.0.1:5000\"]", "insecure_registries", "http://127.0.0.1:5000"),
            ("insecure_registries = [\"reg.lan/team\"]", "insecure_registries", "reg.lan/team"),
            ("insecure_registries = [\"reg.lan:port\"]", "insecure_registries", "reg.lan:port"),
            ("registry_ca_files = [\"ca.pem\"]", "registry_ca_files", "ca.pem"),
        ] {
            let err = Config::resolve(parse(text, origin()).expect("parses"), Overrides::default()).expect_err(text);
            assert!(matches!(&err, ConfigError::Invalid { key: k, .. } if *k == key), "{text}: {err}");
            assert!(err.to_string().contains(value), "{err}");
        }
        assert!(parse("insecure_registries = \"127.0.0.1:5000\"", origin()).is_err(), "a list is required");
    }

    #[test]
    fn metrics_and_criu_settings() {
        let c = Config::resolve(FileConfig::default(), Overrides::default()).expect("defaults");
        assert_eq!(c.metrics_listen, None, "the endpoint is off by default");
        assert!(c.require_criu);
        let text = "metrics_listen = \"127.0.0.1:9464\"\nrequire_criu = false\n";
        let c = Config::resolve(parse(text, origin()).expect("parses"), Overrides::default()).expect("valid");
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9464".parse().expect("address")));
        assert!(!c.require_criu);
        let c =
            Config::resolve(parse("metrics_listen = \"[::1]:9464\"", origin()).expect("parses"), Overrides::default())
                .expect("valid");
        assert_eq!(c.metrics_listen.map(|a| a.port()), Some(9464));
        for bad in ["localhost:9464", "127.0.0.1", ":9464", "http://127.0.0.1:9464"] {
            let text = format!("metrics_listen = {bad:?}");
            let err = Config::resolve(parse(&text, origin()).expect("parses"), Overrides::default()).expect_err(bad);
            assert!(matches!(&err, ConfigError::Invalid { key: "metrics_listen", .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn tcp_upstreams_are_accepted() {
        for ok in ["http://127.0.0.1:10010", "http://[::1]:10010", "http://runtime.local:10010/", "HTTP://h:1"] {
            let flags = Overrides { upstream: Some(ok.into()), ..Default::default() };
            assert!(Config::resolve(FileConfig::default(), flags).is_ok(), "{ok}");
        }
    }

    /// The reason `resolve` gives for the upstream `uri`.
    fn upstream_refusal(uri: &str) -> String {
        let flags = Overrides { upstream: Some(uri.into()), ..Default::default() };
        let err = Config::resolve(FileConfig::default(), flags).expect_err(uri);
        assert!(matches!(&err, ConfigError::Invalid { key: "upstream", .. }), "{uri}: {err}");
        let msg = err.to_string();
        assert!(msg.starts_with(&format!("invalid upstream {uri:?}: ")), "{msg}");
        msg
    }

    #[test]
    fn https_upstreams_are_refused_not_dialled_in_plaintext() {
        for uri in ["https://127.0.0.1:10010", "https://runtime.example.com", "HTTPS://h:443"] {
            let msg = upstream_refusal(uri);
            assert!(msg.contains("TLS to the upstream is not supported"), "{msg}");
            assert!(msg.contains("unix:///path/to/socket or http://host:port"), "{msg}");
        }
    }

    #[test]
    fn upstreams_that_would_be_misread_are_refused() {
        let cases = [
            ("http://127.0.0.1", "needs a port, e.g. http://127.0.0.1:10010"),
            ("http://runtime.local", "needs a port"),
            ("http://127.0.0.1:10010/runtime.v1", "a path or query is not used by gRPC: use http://127.0.0.1:10010"),
            ("http://127.0.0.1:10010?x=1", "a path or query is not used"),
            ("http://user:pw@127.0.0.1:10010", "credentials in the URI are not supported"),
            ("http://", "unix:///path/to/socket or http://host:port"),
            ("tcp://127.0.0.1:10010", "unsupported scheme \"tcp\": use unix:///path/to/socket or http://host:port"),
            ("grpc://127.0.0.1:10010", "unsupported scheme \"grpc\""),
            ("unix:/run/containerd/containerd.sock", "no scheme"),
            ("/run/containerd/containerd.sock", "needs the unix:// scheme: unix:///run/containerd/containerd.sock"),
            ("containerd.sock", "no scheme"),
            ("unix://run/containerd.sock", "needs an absolute path"),
        ];
        for (uri, want) in cases {
            let msg = upstream_refusal(uri);
            assert!(msg.contains(want), "{uri}: {msg}");
        }
    }
}
