//! `edgeflow send`: streams a recorded file to an edge node over QUIC.
//!
//! The file is cut into batches of `batch_lines` lines; batch `i` is the
//! sender's batch number `i`, so numbering is a function of the file and a
//! resend after a reconnect is recognised by the node. Up to `window`
//! batches are in flight; a batch leaves memory only once acknowledged. On a
//! lost connection the client reconnects, learns from WELCOME the first
//! batch the node does not have, and resends from there.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::{Bytes, BytesMut};

use crate::codec::{decode_json, encode_cbor};
use crate::ingest::frame::{Frame, ALPN};
use crate::log::Encoding;
use crate::wire::{envelope, tls};

/// How to send.
#[derive(Debug, Clone)]
pub struct SendOptions {
    /// The node.
    pub to: SocketAddr,
    /// TLS server name.
    pub server_name: String,
    /// CA certificate (PEM) to trust.
    pub ca: std::path::PathBuf,
    /// Bearer token.
    pub token: String,
    /// Sender id (batch numbers are per sender).
    pub sender: String,
    /// Wire encoding.
    pub encoding: Encoding,
    /// Lines per batch.
    pub batch_lines: usize,
    /// Batches in flight.
    pub window: usize,
    /// Reconnect attempts before giving up.
    pub max_reconnects: u32,
    /// Pace batches at this multiple of event time (`None`: as fast as the
    /// node acknowledges).
    pub pace: Option<f64>,
    /// Client certificate and key (PEM) for nodes that require mTLS.
    pub identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl SendOptions {
    /// Options to send to `to` with `token`, trusting `ca`: sender
    /// `edgeflow`, CBOR, 1,000 records per batch, 8 batches in flight, no
    /// reconnect, no pacing, no client certificate. Change any of them
    /// with struct update syntax.
    pub fn new(
        to: SocketAddr,
        server_name: impl Into<String>,
        ca: impl Into<std::path::PathBuf>,
        token: impl Into<String>,
    ) -> Self {
        SendOptions {
            to,
            server_name: server_name.into(),
            ca: ca.into(),
            token: token.into(),
            sender: "edgeflow".into(),
            encoding: Encoding::Cbor,
            batch_lines: 1000,
            window: 8,
            max_reconnects: 0,
            pace: None,
            identity: None,
        }
    }
}

/// Largest event time in a batch (for pacing).
fn batch_ts(encoding: Encoding, records: &Bytes) -> Option<u64> {
    let mut max = None;
    crate::input::Chunk::from_batch(0, encoding, records.clone()).for_each_record(|_, r| {
        if let Ok(r) = r {
            max = max.max(Some(r.ts_ms()));
        }
    });
    max
}

/// What a send did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SendReport {
    /// Batches acknowledged.
    pub batches: u64,
    /// Records the node accepted.
    pub accepted: u64,
    /// Records the node rejected.
    pub rejected: u64,
    /// Lines not sent: binary encoding needs valid JSON to convert.
    pub unconvertible: u64,
    /// Reconnects.
    pub reconnects: u32,
    /// Batches this run sent, found durable on reconnect though their ACK
    /// was lost: their accepted and rejected counts are not known here
    /// (they are in `batches`, not in `accepted` or `rejected`).
    pub durable_unanswered: u64,
    /// Batches the node had before this run (an earlier run sent them):
    /// not sent again; in `batches` only.
    pub already_durable: u64,
    /// The first rejection messages: (batch, index, message).
    pub rejections: Vec<(u64, u32, String)>,
}

/// Reads the file into batches in the chosen encoding.
pub fn batches(
    path: &Path,
    encoding: Encoding,
    batch_lines: usize,
    report: &mut SendReport,
) -> anyhow::Result<Vec<Bytes>> {
    let (input, _) = crate::runtime::Input::open(path)?;
    let crate::runtime::Input::JsonLines(mut reader) = input else {
        bail!("send takes a JSON Lines file")
    };
    let mut text = Vec::new();
    std::io::Read::read_to_end(&mut reader, &mut text)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let lines: Vec<&[u8]> = text
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let mut out = Vec::new();
    for chunk in lines.chunks(batch_lines.max(1)) {
        let mut b = BytesMut::new();
        for line in chunk {
            match encoding {
                Encoding::JsonLines => {
                    b.extend_from_slice(line);
                    b.extend_from_slice(b"\n");
                }
                Encoding::Cbor => match decode_json(line) {
                    Ok(r) => b.extend_from_slice(&encode_cbor(&r)),
                    Err(_) => report.unconvertible += 1,
                },
                Encoding::Partials | Encoding::Clock => {
                    bail!("telemetry cannot be sent as partials or clock ticks")
                }
            }
        }
        out.push(b.freeze());
    }
    Ok(out)
}

async fn read_frame(recv: &mut quinn::RecvStream) -> anyhow::Result<Frame> {
    let bytes = recv.read_to_end(64 << 20).await?;
    let mut buf = BytesMut::from(&bytes[..]);
    Frame::decode(&mut buf, 64 << 20)?
        .ok_or_else(|| anyhow!("the node closed the stream mid-frame"))
}

/// Connects and says HELLO; returns the connection, the control stream and
/// the first batch number the node lacks.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    opts: &SendOptions,
) -> anyhow::Result<(quinn::Connection, quinn::SendStream, u64)> {
    let peer = crate::wire::connect::Peer {
        to: opts.to,
        server_name: opts.server_name.clone(),
        ca: opts.ca.clone(),
        identity: opts.identity.is_some(),
    };
    let conn = crate::wire::connect::connect(endpoint, &peer).await?;
    match hello(&conn, opts).await {
        Ok((send, next)) => Ok((conn, send, next)),
        // A node refusing the client certificate does so now (TLS 1.3).
        Err(e) => Err(crate::wire::connect::refused(&conn, &peer).map_or(e, Into::into)),
    }
}

/// Says HELLO on a new connection: the control stream and the first batch
/// number the node lacks.
async fn hello(
    conn: &quinn::Connection,
    opts: &SendOptions,
) -> anyhow::Result<(quinn::SendStream, u64)> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(
        &Frame::Hello {
            token: opts.token.clone(),
            sender: opts.sender.clone(),
        }
        .to_bytes(),
    )
    .await?;
    let (kind, payload) = envelope::read(&mut recv, 4096)
        .await
        .context("no answer to HELLO")?;
    match Frame::parse(kind, payload)? {
        Frame::Welcome { next_sender_seq } => Ok((send, next_sender_seq)),
        Frame::Error { code, message } => bail!("node refused: error {code}: {message}"),
        other => bail!("unexpected answer to HELLO: {other:?}"),
    }
}

/// Records in a batch: non-blank lines, or CBOR items.
fn records_in(encoding: Encoding, batch: &Bytes) -> u64 {
    match encoding {
        Encoding::JsonLines => batch
            .split(|&b| b == b'\n')
            .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
            .count() as u64,
        Encoding::Cbor => crate::codec::cbor_items(batch).count() as u64,
        Encoding::Partials | Encoding::Clock => 0,
    }
}

/// Whether a failed connect is worth another try: not a refusal by the
/// node, not a TLS failure, and not a node that never answered this run.
fn retryable(e: &anyhow::Error, connected: bool) -> bool {
    match e.downcast_ref::<crate::wire::connect::ConnectError>() {
        Some(c) => connected && c.retryable(),
        None => !e.to_string().contains("refused"),
    }
}

/// An error that a reconnect cannot fix.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Fatal(pub String);

fn fatal_code(code: u64) -> bool {
    use crate::ingest::frame::ErrorCode;
    [
        ErrorCode::FrameTooLarge,
        ErrorCode::BadFrame,
        ErrorCode::Unauthorized,
        ErrorCode::BadHello,
        ErrorCode::BatchOverRate,
    ]
    .iter()
    .any(|c| *c as u64 == code)
}

/// Sends one batch on its stream and waits for its answer (ACK or ERROR).
pub async fn send_batch(
    (mut send, mut recv): (quinn::SendStream, quinn::RecvStream),
    seq: u64,
    encoding: Encoding,
    records: Bytes,
) -> anyhow::Result<(u64, Frame)> {
    let frame = Frame::Batch {
        sender_seq: seq,
        encoding,
        records,
    }
    .to_bytes();
    if let Err(e) = send.write_all(&frame).await {
        if let quinn::WriteError::Stopped(code) = &e {
            if code.into_inner() == crate::ingest::frame::ErrorCode::FrameTooLarge as u64 {
                return Err(Fatal(format!("batch {seq} ({} bytes) is larger than the node accepts: use a smaller --batch-lines", frame.len())).into());
            }
        }
        return Err(e.into());
    }
    send.finish()?;
    Ok((seq, read_frame(&mut recv).await?))
}

/// Sends every batch, resending after reconnects; `progress(acked, total)`.
pub async fn send(
    opts: &SendOptions,
    batches: Vec<Bytes>,
    mut progress: impl FnMut(u64, u64),
) -> anyhow::Result<SendReport> {
    let mut endpoint = quinn::Endpoint::client(
        (if opts.to.is_ipv6() {
            "[::]:0"
        } else {
            "0.0.0.0:0"
        })
        .parse()?,
    )?;
    endpoint.set_default_client_config(tls::client_config(&opts.ca, opts.identity.as_ref(), ALPN)?);
    let total = batches.len() as u64;
    let mut report = SendReport::default();
    let mut acked: BTreeMap<u64, ()> = BTreeMap::new();
    let mut attempt = 0u32;
    // Batches below this were sent at least once by this run.
    let mut sent_until = 0u64;
    // Whether a connection of this run got through: until one has, a
    // node that does not answer is an error to report, not to wait out.
    let mut connected = false;
    loop {
        let (conn, _control, next) = match connect(&endpoint, opts).await {
            Ok(c) => {
                connected = true;
                c
            }
            Err(e) if attempt < opts.max_reconnects && retryable(&e, connected) => {
                attempt += 1;
                report.reconnects += 1;
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt.min(10)))).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        // Everything below `next` is durable on the node.
        for s in 0..next.min(total) {
            if acked.insert(s, ()).is_none() {
                report.batches += 1;
                if s < sent_until {
                    report.durable_unanswered += 1;
                } else {
                    report.already_durable += 1;
                }
            }
        }
        let mut in_flight = tokio::task::JoinSet::new();
        let paced_from = (
            std::time::Instant::now(),
            opts.pace
                .and_then(|_| batches.get(next as usize))
                .and_then(|b| batch_ts(opts.encoding, b)),
        );
        let mut seq = next;
        let mut failed = None;
        while (seq < total || !in_flight.is_empty()) && failed.is_none() {
            while seq < total && in_flight.len() < opts.window.max(1) {
                if let (Some(speed), (start, Some(base))) = (opts.pace, paced_from) {
                    if let Some(ts) = batch_ts(opts.encoding, &batches[seq as usize]) {
                        let due = Duration::try_from_secs_f64(
                            ts.saturating_sub(base) as f64 / 1000.0 / speed,
                        )
                        .unwrap_or(Duration::ZERO);
                        tokio::time::sleep_until((start + due).into()).await;
                    }
                }
                // Streams are opened here, in batch order: the node commits
                // a connection's batches in the order of their streams.
                let stream = match conn.open_bi().await {
                    Ok(s) => s,
                    Err(e) => {
                        failed = Some(anyhow!(e));
                        break;
                    }
                };
                in_flight.spawn(send_batch(
                    stream,
                    seq,
                    opts.encoding,
                    batches[seq as usize].clone(),
                ));
                seq += 1;
                sent_until = sent_until.max(seq);
            }
            if failed.is_some() {
                break;
            }
            match in_flight.join_next().await {
                Some(Ok(Ok((
                    s,
                    Frame::Ack {
                        accepted,
                        rejections,
                        ..
                    },
                )))) => {
                    if acked.insert(s, ()).is_none() {
                        report.batches += 1;
                        report.accepted += u64::from(accepted);
                        // An ACK lists at most 1,000 rejections: the rest
                        // of the batch that was not accepted counts too.
                        let records = records_in(opts.encoding, &batches[s as usize]);
                        report.rejected += records
                            .saturating_sub(u64::from(accepted))
                            .max(rejections.len() as u64);
                        for (i, _, m) in rejections {
                            if report.rejections.len() < 20 {
                                report.rejections.push((s, i, m));
                            }
                        }
                    }
                    progress(acked.len() as u64, total);
                }
                Some(Ok(Ok((s, Frame::Error { code, message }))))
                    if fatal_code(u64::from(code)) =>
                {
                    return Err(Fatal(format!("batch {s}: node error {code}: {message}")).into())
                }
                Some(Ok(Ok((s, Frame::Error { code, message })))) => {
                    failed = Some(anyhow!("batch {s}: node error {code}: {message}"))
                }
                Some(Ok(Ok((s, other)))) => {
                    failed = Some(anyhow!("batch {s}: unexpected answer {other:?}"))
                }
                Some(Ok(Err(e))) if e.is::<Fatal>() => return Err(e),
                Some(Ok(Err(e))) => failed = Some(e),
                Some(Err(e)) => failed = Some(anyhow!(e)),
                None => break,
            }
        }
        match failed {
            None => {
                conn.close(0u32.into(), b"done");
                endpoint.wait_idle().await;
                return Ok(report);
            }
            Some(e) if attempt < opts.max_reconnects => {
                attempt += 1;
                report.reconnects += 1;
                tracing::warn!("send: {e:#}; reconnecting");
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt.min(10)))).await;
            }
            Some(e) => return Err(e),
        }
    }
}
