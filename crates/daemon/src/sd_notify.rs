//! systemd's readiness protocol (sd_notify(3)) for `Type=notify`: one datagram
//! of `KEY=VALUE` lines to the socket named by `NOTIFY_SOCKET`. Outside systemd
//! (no `NOTIFY_SOCKET`) nothing is sent.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;

/// Environment variable systemd sets for `Type=notify` services.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Sends `state` (e.g. `"READY=1\nSTATUS=serving"`) to the service manager.
/// `Ok(false)` when lazarus does not run under one.
pub fn notify(state: &str) -> io::Result<bool> {
    match std::env::var_os(NOTIFY_SOCKET) {
        Some(target) if !target.is_empty() => send(&target, state).map(|()| true),
        _ => Ok(false),
    }
}

/// Sends `state` to the notification socket `target`: an absolute path, or an
/// abstract socket written `@name`.
pub fn send(target: &OsStr, state: &str) -> io::Result<()> {
    let bytes = target.as_bytes();
    let addr = match bytes.first() {
        Some(b'/') => SocketAddr::from_pathname(Path::new(target))?,
        Some(b'@') => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(&bytes[1..])?
        }
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{NOTIFY_SOCKET}={target:?} is neither an absolute path nor an abstract socket (@name)"),
            ));
        }
    };
    let socket = UnixDatagram::unbound()?;
    let sent = socket.send_to_addr(state.as_bytes(), &addr)?;
    if sent != state.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "notification datagram cut short"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_one_datagram_to_a_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let receiver = UnixDatagram::bind(&path).expect("bind");
        send(path.as_os_str(), "READY=1\nSTATUS=serving").expect("send");
        let mut buf = [0u8; 256];
        let n = receiver.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=serving");
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("lazarus-test-notify-{}", std::process::id());
        let receiver =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).expect("addr")).expect("bind");
        send(OsStr::new(&format!("@{name}")), "STOPPING=1").expect("send");
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"STOPPING=1");
    }

    #[test]
    fn a_relative_target_is_refused() {
        let err = send(OsStr::new("notify.sock"), "READY=1").expect_err("relative");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains(NOTIFY_SOCKET), "{err}");
    }
}
