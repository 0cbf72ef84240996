//! `[ingest]`: the QUIC endpoint and its limits, and their checks.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::duration;
use crate::reference::Problem;

/// Largest `[ingest] max_frame_bytes`: a BATCH frame (8-byte batch number,
/// 1-byte encoding, records) whose records fit one log entry with the
/// longest sender id.
pub const MAX_FRAME_BYTES: usize =
    crate::log::MAX_ENTRY_BYTES + 9 - crate::log::ENTRY_OVERHEAD + 8 - crate::log::MAX_SENDER_LEN;

/// `[ingest]`: the QUIC endpoint and its limits. Paths are relative to the
/// topology file.
#[derive(Debug, Deserialize, Clone)]
pub struct IngestSection {
    /// UDP address to listen on, e.g. `0.0.0.0:4433`.
    pub listen: String,
    /// Server certificate chain (PEM).
    pub cert: PathBuf,
    /// Server private key (PEM).
    pub key: PathBuf,
    /// Largest frame, bytes. Default 4 MiB. A connection buffers at most one
    /// frame per stream, so the worst case per connection is
    /// `max_frame_bytes * max_streams`.
    #[serde(default = "default_max_frame")]
    pub max_frame_bytes: usize,
    /// Concurrent connections. Default 20,000 (a 5G cell site's devices);
    /// about 10 KiB each when idle.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Concurrent batch streams per connection. Default 32.
    #[serde(default = "default_max_streams")]
    pub max_streams: u32,
    /// Close a connection silent this long. Default 30s.
    #[serde(default = "default_idle")]
    pub idle_timeout: String,
    /// Close a connection that sends no HELLO this long. Default 5s.
    #[serde(default = "default_hello")]
    pub hello_timeout: String,
    /// At shutdown, how long batches already under way may take to arrive
    /// and commit. Default 10s. A batch still unread then is dropped
    /// unacknowledged; its sender resends it to the next run.
    #[serde(default = "default_drain")]
    pub drain_timeout: String,
    /// Records per second one connection may send, averaged over a second.
    /// Default 200,000.
    #[serde(default = "default_rate")]
    pub max_records_per_s: u64,
    /// Per-connection QUIC receive window, bytes: how much a sender may have
    /// in flight before flow control stops it. Default 8 MiB.
    #[serde(default = "default_window")]
    pub receive_window: u64,
    /// Optional mTLS: when set, every client must also present a
    /// certificate signed by this CA (PEM); the token is still required.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// Longest a batch may take to arrive, from its first byte to its last
    /// (a 4 MiB batch at 1 Mbit/s takes about 34 s). Default 60s. A batch
    /// not complete by then is answered `batch_timeout` and its buffer
    /// freed: a client cannot hold memory by never finishing a batch.
    #[serde(default = "default_batch_timeout")]
    pub batch_timeout: String,
    /// Bytes the node buffers for batches and subscription requests still
    /// arriving or waiting for the log, all connections together. Default
    /// 256 MiB. When it is used up, reads wait (QUIC flow control then
    /// stops the senders). Worst-case memory of ingest buffers is this plus
    /// what QUIC holds unread: `receive_window` per connection, for
    /// `max_connections + max_unauthenticated` connections.
    #[serde(default = "default_max_buffered")]
    pub max_buffered_bytes: usize,
    /// Connections not yet authenticated (handshake, HELLO or the first
    /// SUBSCRIBE under way), node-wide. Default 1,024. They do not take
    /// `max_connections` slots, so idle strangers cannot keep fleets out;
    /// past half of this, new clients must first prove their address
    /// (a QUIC Retry).
    #[serde(default = "default_max_unauthenticated")]
    pub max_unauthenticated: usize,
    /// Connections not yet authenticated from one IP address. Default 32.
    #[serde(default = "default_max_unauthenticated_per_source")]
    pub max_unauthenticated_per_source: usize,
}

fn default_batch_timeout() -> String {
    "60s".into()
}
fn default_max_buffered() -> usize {
    256 << 20
}
fn default_max_unauthenticated() -> usize {
    1024
}
fn default_max_unauthenticated_per_source() -> usize {
    32
}

fn default_max_frame() -> usize {
    4 << 20
}
fn default_max_connections() -> usize {
    20_000
}
fn default_max_streams() -> u32 {
    32
}
fn default_idle() -> String {
    "30s".into()
}
fn default_hello() -> String {
    "5s".into()
}
fn default_drain() -> String {
    "10s".into()
}
fn default_rate() -> u64 {
    200_000
}
fn default_window() -> u64 {
    8 << 20
}

/// `[ingest]` checked, paths resolved, durations parsed.
#[derive(Debug, Clone)]
pub struct Ingest {
    /// Listen address.
    pub listen: std::net::SocketAddr,
    /// The section as written, with `cert` and `key` resolved.
    pub section: IngestSection,
    /// Idle timeout.
    pub idle_timeout: Duration,
    /// HELLO deadline.
    pub hello_timeout: Duration,
    /// Shutdown grace for batches under way.
    pub drain_timeout: Duration,
    /// Deadline of one batch's arrival.
    pub batch_timeout: Duration,
}

/// Checks an `[ingest]` section (paths relative to `base`), adding every
/// problem to `problems`; the section with paths resolved and durations
/// parsed when it is valid.
pub(super) fn check(
    i: &IngestSection,
    base: &Path,
    path: &Path,
    problems: &mut Vec<Problem>,
) -> Option<Ingest> {
    let push = |problems: &mut Vec<Problem>, place: &str, message: &str| {
        problems.push(Problem {
            file: path.to_owned(),
            place: place.into(),
            message: message.into(),
        })
    };
    let listen = i.listen.parse::<std::net::SocketAddr>().map_err(|e| {
        push(
            problems,
            "ingest.listen",
            &format!("{:?} is not an address like 0.0.0.0:4433: {e}", i.listen),
        )
    });
    let idle = duration(&i.idle_timeout, "ingest.idle_timeout", path, problems);
    let hello = duration(&i.hello_timeout, "ingest.hello_timeout", path, problems);
    let drain = duration(&i.drain_timeout, "ingest.drain_timeout", path, problems);
    let batch_timeout = duration(&i.batch_timeout, "ingest.batch_timeout", path, problems);
    for (place, d) in [
        ("ingest.idle_timeout", idle),
        ("ingest.hello_timeout", hello),
        ("ingest.drain_timeout", drain),
        ("ingest.batch_timeout", batch_timeout),
    ] {
        if d.is_some_and(|d| d < Duration::from_millis(100)) {
            push(
                problems,
                place,
                "must be at least 100ms (a zero timeout would close every connection)",
            );
        }
    }
    if i.receive_window < i.max_frame_bytes as u64 + 64 {
        push(
            problems,
            "ingest.receive_window",
            &format!(
                "must be at least max_frame_bytes + 64 ({}): a batch must fit in flight",
                i.max_frame_bytes + 64
            ),
        );
    }
    if i.max_buffered_bytes < i.max_frame_bytes {
        push(
            problems,
            "ingest.max_buffered_bytes",
            &format!(
                "must be at least max_frame_bytes ({}): one batch must fit",
                i.max_frame_bytes
            ),
        );
    }
    if i.max_unauthenticated == 0 || i.max_unauthenticated_per_source == 0 {
        push(
            problems,
            "ingest",
            "max_unauthenticated and max_unauthenticated_per_source must be at least 1",
        );
    }
    let client_ca = i.client_ca.as_ref().map(|p| ("ingest.client_ca", p));
    for (what, p) in [("ingest.cert", &i.cert), ("ingest.key", &i.key)]
        .into_iter()
        .chain(client_ca)
    {
        if !base.join(p).is_file() {
            push(
                problems,
                what,
                &format!("{} is not a readable file", base.join(p).display()),
            );
        }
    }
    if i.max_frame_bytes < 1024 || i.max_frame_bytes > MAX_FRAME_BYTES {
        push(
            problems,
            "ingest.max_frame_bytes",
            &format!(
                "must be between 1024 and {MAX_FRAME_BYTES} (the largest batch a log entry holds)"
            ),
        );
    }
    if i.max_connections == 0 || i.max_streams == 0 || i.max_records_per_s == 0 {
        push(
            problems,
            "ingest",
            "max_connections, max_streams and max_records_per_s must be at least 1",
        );
    }
    let mut section = i.clone();
    section.cert = base.join(&i.cert);
    section.key = base.join(&i.key);
    section.client_ca = i.client_ca.as_ref().map(|p| base.join(p));
    Some(Ingest {
        listen: listen.ok()?,
        section,
        idle_timeout: idle?,
        hello_timeout: hello?,
        drain_timeout: drain?,
        batch_timeout: batch_timeout?,
    })
}
