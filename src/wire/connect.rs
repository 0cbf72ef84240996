//! Connecting to a node as a client (`send`, `simulate`, `subscribe`),
//! failing fast with what went wrong and how to fix it: a TLS failure
//! never fixes itself, so it is never retried; a node that does not
//! answer is given [`HANDSHAKE_TIMEOUT`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

/// How long a client waits for a node's QUIC handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a connection could not be made.
#[derive(Debug, Error)]
pub enum ConnectError {
    /// Nothing answered in time.
    #[error("no answer from {to} within {} s: is the node running, and is {} its [ingest] listen port? QUIC runs over UDP: a firewall on the way must let UDP through", .after.as_secs(), .to.port())]
    Unreachable {
        /// The node's address.
        to: SocketAddr,
        /// How long the client waited.
        after: Duration,
    },
    /// The TLS handshake failed: a reconnect cannot fix it.
    #[error("TLS with {to} failed ({why}): {hint}")]
    Tls {
        /// The node's address.
        to: SocketAddr,
        /// What TLS said.
        why: String,
        /// The likely fix.
        hint: String,
    },
    /// The connection could not start (an invalid server name, ...).
    #[error("cannot connect to {to}: {source}")]
    Start {
        /// The node's address.
        to: SocketAddr,
        /// quinn's reason.
        source: quinn::ConnectError,
    },
    /// The connection failed another way (it may work again).
    #[error("connection to {to} failed: {source}")]
    Lost {
        /// The node's address.
        to: SocketAddr,
        /// quinn's reason.
        source: quinn::ConnectionError,
    },
}

impl ConnectError {
    /// Whether trying again may help (a node restarting), as opposed to a
    /// setting to fix first.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            ConnectError::Unreachable { .. } | ConnectError::Lost { .. }
        )
    }
}

/// What a client knows of the node it connects to, for the hints.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The node's address.
    pub to: SocketAddr,
    /// The TLS name asked for.
    pub server_name: String,
    /// The CA trusted.
    pub ca: PathBuf,
    /// Whether a client certificate was offered.
    pub identity: bool,
}

/// Connects within [`HANDSHAKE_TIMEOUT`].
pub async fn connect(
    endpoint: &quinn::Endpoint,
    peer: &Peer,
) -> Result<quinn::Connection, ConnectError> {
    let to = peer.to;
    let connecting = endpoint
        .connect(to, &peer.server_name)
        .map_err(|source| ConnectError::Start { to, source })?;
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await {
        Err(_) => Err(ConnectError::Unreachable {
            to,
            after: HANDSHAKE_TIMEOUT,
        }),
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(classify(e, peer)),
    }
}

/// Why a connection whose handshake completed was closed, when it was
/// TLS: with TLS 1.3 the node checks a client certificate after the
/// client's handshake is done, so its refusal shows on the first stream.
pub fn refused(conn: &quinn::Connection, peer: &Peer) -> Option<ConnectError> {
    match classify(conn.close_reason()?, peer) {
        e @ ConnectError::Tls { .. } => Some(e),
        _ => None,
    }
}

/// TLS alerts (RFC 8446 section 6).
const BAD_CERTIFICATE: u8 = 42;
const CERTIFICATE_EXPIRED: u8 = 45;
const CERTIFICATE_UNKNOWN: u8 = 46;
const UNKNOWN_CA: u8 = 48;
const DECRYPT_ERROR: u8 = 51;
const CERTIFICATE_REQUIRED: u8 = 116;
const NO_APPLICATION_PROTOCOL: u8 = 120;

/// Names a failed handshake's cause and its fix.
fn classify(e: quinn::ConnectionError, peer: &Peer) -> ConnectError {
    use quinn::ConnectionError as C;
    let to = peer.to;
    let (code, why) = match &e {
        C::TimedOut => {
            return ConnectError::Unreachable {
                to,
                after: HANDSHAKE_TIMEOUT,
            }
        }
        // This side refused: rustls checked the node's certificate.
        C::TransportError(t) => (t.code, t.reason.clone()),
        // The node refused.
        C::ConnectionClosed(c) => (
            c.error_code,
            String::from_utf8_lossy(&c.reason).into_owned(),
        ),
        _ => return ConnectError::Lost { to, source: e },
    };
    // QUIC carries a TLS alert as the error code 0x100 + alert.
    let Some(alert) = u64::from(code)
        .checked_sub(0x100)
        .and_then(|a| u8::try_from(a).ok())
    else {
        return ConnectError::Lost { to, source: e };
    };
    let lower = why.to_lowercase();
    let ca = peer.ca.display();
    let name = &peer.server_name;
    let local = matches!(e, C::TransportError(_));
    let hint = if local
        && ["unknownissuer", "unknown issuer", "badsignature"]
            .iter()
            .any(|w| lower.contains(w))
    {
        format!("the node's certificate is not signed by the CA in --ca {ca}: pass the CA that issued it (ca.pem from `edgeflow certs`, or your PKI's)")
    } else if local && (lower.contains("notvalidforname") || lower.contains("not valid for name")) {
        format!("the node's certificate does not hold the name {name:?}: connect by a name it holds, or say which with --server-name")
    } else if lower.contains("expired") || (alert == CERTIFICATE_EXPIRED && local) {
        "the node's certificate has expired (or this machine's clock is wrong): renew it and reload the node (SIGHUP)".into()
    } else if alert == CERTIFICATE_REQUIRED && !peer.identity {
        "the node requires a client certificate (mTLS): pass --cert and --key (`edgeflow certs --client NAME --out DIR` issues one from a development CA)".into()
    } else if matches!(
        alert,
        BAD_CERTIFICATE
            | UNKNOWN_CA
            | CERTIFICATE_UNKNOWN
            | CERTIFICATE_EXPIRED
            | DECRYPT_ERROR
            | CERTIFICATE_REQUIRED
    ) && !local
    {
        "the node does not accept this client certificate: it must be issued by the CA of the node's [ingest] client_ca, and be current".into()
    } else if alert == NO_APPLICATION_PROTOCOL {
        "the node does not speak this protocol (ALPN) there: is that an edgeflow node's port, of a version that has this command?".into()
    } else {
        format!("check --ca {ca}, --server-name and the node's [ingest] certificate")
    };
    ConnectError::Tls { to, why, hint }
}
