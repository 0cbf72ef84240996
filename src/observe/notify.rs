//! The service manager's readiness protocol (`sd_notify`): with
//! `NOTIFY_SOCKET` set (systemd's `Type=notify`), the node says
//! `READY=1` once it serves and `STOPPING=1` when it drains. Without it,
//! nothing happens.

use std::os::unix::net::UnixDatagram;

/// Sends `state` (`"READY=1"`, `"STOPPING=1"`, `"STATUS=..."` lines) to
/// the service manager, if there is one; a failure is logged, never fatal.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = UnixDatagram::unbound().and_then(|socket| {
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
        match bytes.strip_prefix(b"@") {
            // An abstract socket (Linux).
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.send_to_addr(state.as_bytes(), &addr)
            }
            None => socket.send_to(state.as_bytes(), &path),
        }
    });
    if let Err(e) = sent {
        tracing::warn!(
            "cannot tell the service manager {state:?} through NOTIFY_SOCKET {path:?}: {e}"
        );
    }
}
