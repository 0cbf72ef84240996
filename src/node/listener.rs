//! The node's one QUIC endpoint, serving both protocols: it admits each
//! arriving connection ([`crate::wire::admission`]: unauthenticated slots,
//! per-source limits, Retry under pressure), then hands it by its ALPN to
//! the ingest server or the subscription server. `serve(endpoint, ...)`
//! runs on any bound endpoint, so tests run the real node on port 0.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use thiserror::Error;
use tokio::sync::watch;

use crate::ingest::frame::ErrorCode;
use crate::ingest::server::IngestContext;
use crate::subscribe::server::SubContext;
use crate::topology::Ingest;
use crate::wire::admission::Admit;
use crate::wire::tls::TlsError;

/// Why the node cannot listen.
#[derive(Debug, Error)]
pub enum ListenError {
    /// Certificate or key unreadable or invalid.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The UDP socket could not be bound.
    #[error("cannot listen on {addr}: {source}{}", crate::observe::bind_hint(.source))]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

/// Builds the node's QUIC endpoint from the `[ingest]` section: its
/// certificate (mTLS with `client_ca`), both protocols by ALPN (`intake`:
/// telemetry ingest on an edge, the push protocol on central; and
/// subscriptions), and the transport limits of docs/PROTOCOL.md "Limits a
/// client meets".
pub fn endpoint(settings: &Ingest, intake: &[u8]) -> Result<quinn::Endpoint, ListenError> {
    let config = server_config(settings, intake)?;
    quinn::Endpoint::server(config, settings.listen).map_err(|source| ListenError::Bind {
        addr: settings.listen,
        source,
    })
}

/// The endpoint's TLS and transport settings from `[ingest]` (a reload
/// puts new ones in force for the connections that arrive after it).
pub fn server_config(settings: &Ingest, intake: &[u8]) -> Result<quinn::ServerConfig, ListenError> {
    let s = &settings.limits;
    let alpns = [intake, crate::subscribe::proto::ALPN];
    let crypto = crate::wire::tls::server_crypto(
        &settings.cert,
        &settings.key,
        settings.client_ca.as_deref(),
        &alpns,
    )?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(s.max_streams.into())
        .max_concurrent_uni_streams(0u8.into())
        .max_idle_timeout(settings.idle_timeout.try_into().ok())
        .receive_window(quinn::VarInt::from_u64(s.receive_window).unwrap_or(quinn::VarInt::MAX))
        .stream_receive_window(
            quinn::VarInt::from_u64((s.max_frame_bytes as u64 + 64).min(s.receive_window))
                .unwrap_or(quinn::VarInt::MAX),
        )
        .datagram_receive_buffer_size(Some(64 << 10));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// Serves until `shutdown` turns true; then stops accepting, lets every
/// ingest connection finish its batches, and returns the subscription
/// connections still running: they outlive ingest at a stop, since they
/// carry the last aggregates, computed after ingest has stopped. Without
/// `subscriptions` (a node with no operators, a cluster process other
/// than 0) the subscription protocol is refused with the reason given,
/// and the endpoint closed here.
pub async fn serve(
    endpoint: quinn::Endpoint,
    ingest: Arc<IngestContext>,
    subscriptions: Result<Arc<SubContext>, &'static str>,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinSet<()> {
    let refusal = subscriptions.as_ref().err().copied().unwrap_or_default();
    let subscriptions = subscriptions.ok();
    let admission = ingest.admission.clone();
    let mut tasks = tokio::task::JoinSet::new();
    let sub_tasks = Arc::new(Mutex::new(tokio::task::JoinSet::new()));
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let source = incoming.remote_address().ip();
                let pending = match admission.arrive(source, incoming.remote_address_validated()) {
                    Admit::Yes(pending) => pending,
                    Admit::Retry => {
                        if let Err(e) = incoming.retry() {
                            e.into_incoming().refuse();
                        }
                        continue;
                    }
                    Admit::Refuse(why) => {
                        ingest.counters.refused.fetch_add(1, Ordering::Relaxed);
                        static ADMISSION: crate::observe::Every =
                            crate::observe::Every::new(crate::observe::REFUSALS_LOGGED_EVERY);
                        crate::observe::refused(&ADMISSION, incoming.remote_address(), &format!("{why:?}"));
                        incoming.refuse();
                        continue;
                    }
                };
                let ctx = ingest.clone();
                let stop = shutdown.clone();
                let (subs, sub_tasks) = (subscriptions.clone(), sub_tasks.clone());
                tasks.spawn(async move {
                    let remote = incoming.remote_address();
                    let conn = match incoming.await {
                        Ok(conn) => conn,
                        Err(e) => {
                            ctx.counters.handshake_failed.fetch_add(1, Ordering::Relaxed);
                            static HANDSHAKE: crate::observe::Every =
                                crate::observe::Every::new(crate::observe::REFUSALS_LOGGED_EVERY);
                            crate::observe::refused(&HANDSHAKE, remote, &format!("handshake failed: {e}"));
                            return;
                        }
                    };
                    if alpn(&conn).as_deref() != Some(crate::subscribe::proto::ALPN) {
                        ctx.counters.connections.fetch_add(1, Ordering::Relaxed);
                        ctx.counters.open.fetch_add(1, Ordering::Relaxed);
                        crate::ingest::server::connection(conn, &ctx, stop, pending).await;
                        ctx.counters.open.fetch_sub(1, Ordering::Relaxed);
                        return;
                    }
                    match (subs, sub_tasks.lock()) {
                        (Some(subs), Ok(mut set)) => {
                            // Reap the subscription connections that ended.
                            while set.try_join_next().is_some() {}
                            set.spawn(crate::subscribe::server::connection(conn, subs, pending));
                        }
                        _ => conn.close(
                            quinn::VarInt::from_u32(ErrorCode::Unauthorized as u32),
                            refusal.as_bytes(),
                        ),
                    }
                });
            }
            _ = shutdown.changed() => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    // Drain: connections see the shutdown, finish their batches, close.
    while tasks.join_next().await.is_some() {}
    if subscriptions.is_none() {
        endpoint.close(
            quinn::VarInt::from_u32(ErrorCode::ShuttingDown as u32),
            b"shutting down",
        );
    }
    sub_tasks
        .lock()
        .map(|mut set| std::mem::take(&mut *set))
        .unwrap_or_default()
}

/// The protocol a connection negotiated.
fn alpn(conn: &quinn::Connection) -> Option<Vec<u8>> {
    conn.handshake_data()?
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?
        .protocol
}
