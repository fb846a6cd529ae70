//! The unix socket kubelet connects to: bound by lazarus, or passed by systemd
//! (socket activation, `lazarus.socket`; see docs/install.md).

use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

/// `FileDescriptorName=` lazarus looks for when systemd passes more than one socket.
pub const ACTIVATION_FD_NAME: &str = "cri";

/// Mode of the CRI socket: owner and group (kubelet runs as root).
pub const SOCKET_MODE: u32 = 0o660;

/// Why the socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Another process answers on the socket.
    #[error("{path} is in use by a running process (another lazarus?); stop it or choose another --listen path")]
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// Something that is not a socket is in the way.
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// systemd's socket activation variables cannot be used.
    #[error("socket activation: {0}")]
    Activation(String),
    /// A filesystem operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ListenError + 'a {
    move |source| ListenError::Io { action, path: path.to_owned(), source }
}

/// Binds `path`: creates its parent directory, replaces a stale socket file
/// left by a crashed process, refuses a live one, and sets mode 0660.
#[expect(clippy::disallowed_methods, reason = "binds the socket once at start-up, before the first call")]
pub fn bind(path: &Path) -> Result<UnixListener, ListenError> {
    if let Some(parent) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(io("creating directory", parent))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => return Err(ListenError::InUse { path: path.to_owned() }),
            Err(e) if e.kind() == ErrorKind::ConnectionRefused || e.kind() == ErrorKind::NotFound => {
                tracing::info!(path = %path.display(), "replacing stale socket");
                std::fs::remove_file(path).map_err(io("removing stale socket", path))?;
            }
            Err(e) => return Err(io("probing existing socket", path)(e)),
        },
        Ok(_) => return Err(ListenError::NotASocket { path: path.to_owned() }),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(io("inspecting", path)(e)),
    }
    let listener = UnixListener::bind(path).map_err(io("binding", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))
        .map_err(io("setting permissions of", path))?;
    Ok(listener)
}

/// The socket lazarus serves on.
#[derive(Debug)]
pub struct Listener {
    /// The listening socket.
    pub socket: UnixListener,
    /// Its path (for an activated socket, the path systemd bound).
    pub path: PathBuf,
    /// Passed by systemd: systemd owns the file and keeps the socket open while
    /// lazarus restarts, so lazarus must not remove it.
    pub activated: bool,
}

/// Listens on the socket systemd passed (socket activation), or else binds
/// `path` as [`bind`] does. An activated socket whose path differs from
/// `path` is used anyway — it is the one kubelet was pointed at — with a warning.
/// Must be called from within the tokio runtime, before other threads read the
/// environment (adopting the socket unsets `LISTEN_PID` and `LISTEN_FDS`).
pub fn listen(path: &Path) -> Result<Listener, ListenError> {
    let var = |name: &str| std::env::var(name).ok();
    let Some(index) = activation_index(
        var("LISTEN_PID").as_deref(),
        var("LISTEN_FDS").as_deref(),
        var("LISTEN_FDNAMES").as_deref(),
        std::process::id(),
    )?
    else {
        return Ok(Listener { socket: bind(path)?, path: path.to_owned(), activated: false });
    };
    // listenfd checks that the descriptor is a unix stream socket and sets
    // FD_CLOEXEC; its `unsafe` fd adoption keeps this crate free of it.
    let std_listener = listenfd::ListenFd::from_env()
        .take_unix_listener(index)
        .map_err(|e| ListenError::Activation(format!("descriptor {} from systemd: {e}", 3 + index)))?
        .ok_or_else(|| ListenError::Activation(format!("descriptor {} from systemd is gone", 3 + index)))?;
    let adopt = |e: std::io::Error| ListenError::Activation(format!("using the socket from systemd: {e}"));
    std_listener.set_nonblocking(true).map_err(adopt)?;
    let socket = UnixListener::from_std(std_listener).map_err(adopt)?;
    let bound = socket.local_addr().ok().and_then(|a| a.as_pathname().map(Path::to_owned));
    match &bound {
        Some(bound) if bound == path => {
            tracing::info!(path = %path.display(), "using the socket passed by systemd (socket activation)")
        }
        _ => tracing::warn!(
            socket = %bound.as_deref().map_or_else(|| "(unnamed)".into(), |p| p.display().to_string()),
            listen = %path.display(),
            "systemd passed a socket other than the configured `listen` path; serving on systemd's socket \
             (make ListenStream= of lazarus.socket and `listen` agree)"
        ),
    }
    Ok(Listener { socket, path: bound.unwrap_or_else(|| path.to_owned()), activated: true })
}

/// Which of the descriptors systemd passed is the CRI socket (its index from
/// fd 3), following sd_listen_fds(3): `None` unless `LISTEN_FDS` is set and
/// `LISTEN_PID` names this process (variables meant for another process — a
/// parent's, inherited — are ignored). One socket is used whatever its name;
/// of several, the one named [`ACTIVATION_FD_NAME`] in `LISTEN_FDNAMES`.
pub fn activation_index(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    listen_fdnames: Option<&str>,
    own_pid: u32,
) -> Result<Option<usize>, ListenError> {
    let bad = |what: String| Err(ListenError::Activation(what));
    let Some(fds) = listen_fds.map(str::trim) else { return Ok(None) };
    let Some(pid) = listen_pid.map(str::trim) else { return Ok(None) };
    match pid.parse::<u32>() {
        Ok(pid) if pid == own_pid => {}
        Ok(_) => return Ok(None),
        Err(_) => return bad(format!("LISTEN_PID={pid:?} is not a process id")),
    }
    let count = match fds.parse::<usize>() {
        Ok(0) => return Ok(None),
        Ok(count) => count,
        Err(_) => return bad(format!("LISTEN_FDS={fds:?} is not a number of descriptors")),
    };
    if count == 1 {
        return Ok(Some(0));
    }
    let names: Vec<&str> = listen_fdnames.map(|n| n.split(':').collect()).unwrap_or_default();
    if names.len() != count {
        return bad(format!(
            "systemd passed {count} sockets but LISTEN_FDNAMES names {}; name the CRI socket \
             FileDescriptorName={ACTIVATION_FD_NAME}",
            names.len()
        ));
    }
    match names.iter().position(|n| *n == ACTIVATION_FD_NAME) {
        Some(index) => Ok(Some(index)),
        None => bad(format!(
            "systemd passed {count} sockets ({}) and none is named {ACTIVATION_FD_NAME:?}; set \
             FileDescriptorName={ACTIVATION_FD_NAME} in the CRI socket's unit",
            names.join(", ")
        )),
    }
}

/// Removes the socket file at shutdown (only if it is still a socket).
#[expect(clippy::disallowed_methods, reason = "one unlink at shutdown, after the last call")]
pub fn remove(path: &Path) {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
        && let Err(e) = std::fs::remove_file(path)
    {
        tracing::warn!(path = %path.display(), error = %e, "could not remove socket");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn creates_parent_and_sets_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a/b/cri.sock");
        let _listener = bind(&path).expect("bind");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
    }

    #[tokio::test]
    async fn replaces_a_stale_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cri.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).expect("stale"));
        assert!(path.exists(), "a closed listener leaves its file behind");
        let _listener = bind(&path).expect("stale socket replaced");
    }

    #[tokio::test]
    async fn refuses_a_live_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cri.sock");
        let _live = bind(&path).expect("first");
        let err = bind(&path).expect_err("second must fail");
        assert!(matches!(err, ListenError::InUse { .. }), "{err}");
        assert!(err.to_string().contains("in use"), "{err}");
    }

    #[test]
    fn activation_needs_both_variables_and_our_pid() {
        assert_eq!(activation_index(None, None, None, 42).ok(), Some(None));
        assert_eq!(activation_index(None, Some("1"), None, 42).ok(), Some(None), "no LISTEN_PID: not for us");
        assert_eq!(activation_index(Some("42"), None, None, 42).ok(), Some(None));
        assert_eq!(activation_index(Some("7"), Some("1"), None, 42).ok(), Some(None), "a parent's variables");
        assert_eq!(activation_index(Some("42"), Some("0"), None, 42).ok(), Some(None));
        assert_eq!(activation_index(Some("42"), Some("1"), None, 42).ok(), Some(Some(0)));
        assert_eq!(activation_index(Some(" 42\n"), Some("1"), Some("whatever"), 42).ok(), Some(Some(0)));
    }

    #[test]
    fn of_several_sockets_the_one_named_cri_is_taken() {
        assert_eq!(activation_index(Some("42"), Some("3"), Some("metrics:cri:x"), 42).ok(), Some(Some(1)));
        let err = activation_index(Some("42"), Some("2"), Some("a:b"), 42).expect_err("no cri");
        assert!(err.to_string().contains("FileDescriptorName=cri"), "{err}");
        let err = activation_index(Some("42"), Some("2"), None, 42).expect_err("no names");
        assert!(err.to_string().contains("names 0"), "{err}");
    }

    #[test]
    fn malformed_activation_variables_are_errors() {
        let err = activation_index(Some("42"), Some("two"), None, 42).expect_err("count");
        assert!(err.to_string().contains("LISTEN_FDS=\"two\""), "{err}");
        let err = activation_index(Some("pid"), Some("1"), None, 42).expect_err("pid");
        assert!(err.to_string().contains("LISTEN_PID=\"pid\""), "{err}");
    }

    #[tokio::test]
    async fn without_activation_listen_binds_the_path() {
        // The test process has no LISTEN_PID naming it.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cri.sock");
        let listener = listen(&path).expect("listen");
        assert!(!listener.activated);
        assert_eq!(listener.path, path);
        assert!(std::os::unix::net::UnixStream::connect(&path).is_ok());
    }

    #[tokio::test]
    async fn refuses_to_replace_a_regular_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cri.sock");
        std::fs::write(&path, b"precious").expect("write");
        let err = bind(&path).expect_err("not a socket");
        assert!(matches!(err, ListenError::NotASocket { .. }), "{err}");
        assert_eq!(std::fs::read(&path).expect("kept"), b"precious");
    }
}
