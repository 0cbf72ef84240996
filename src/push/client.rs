//! An edge's central sink: pushes its partials to central over
//! `edgeflow-push/1` (docs/PROTOCOL.md, "Push").
//!
//! The node's dataflow thread hands over every batch of partials and its
//! watermark ([`Feed`]); this task keeps them in an [`Outbox`] (coalesced
//! per key), cuts batches at most every [`LINGER`] (or as soon as a full
//! one waits), keeps up to [`WINDOW`] in flight and forgets a batch once
//! central has acknowledged it (after central's fsync). A lost connection
//! puts what was in flight back into the outbox; the task reconnects with
//! exponential backoff and jitter, and central's WELCOME says which batch
//! numbers it already has. Batch numbers go on from WELCOME, so a restarted
//! edge (which resends what its log replay recomputes) never reuses one.
//!
//! The task publishes a **delivered frontier** ([`PushStatus::delivered`]):
//! the watermark up to which central has acknowledged everything. The
//! node's log keeps every segment of windows past it, so after a restart
//! of the edge the replay recomputes, and resends, whatever central may
//! lack. While central is away the frontier stays, up to `max_hold` behind
//! the edge's watermark; past that the oldest windows are given up to log
//! retention (counted in [`PushStatus::given_up`], said once per outage):
//! they stay in memory and are still pushed if central returns before the
//! edge restarts.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use bytes::Bytes;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::outbox::Outbox;
use crate::dataflow::partials::PartialEmission;
use crate::delivery::backoff::Backoff;
use crate::ingest::client::{connect, send_batch, SendOptions};
use crate::ingest::frame::{ErrorCode, Frame};
use crate::log::Encoding;
use crate::reference::Reference;
use crate::topology::CentralSink;
use crate::wire::tls;

/// Longest a changed partial waits for others to share its batch.
pub const LINGER: Duration = Duration::from_millis(200);
/// Batches in flight at most.
pub const WINDOW: usize = 8;
/// Updates per batch at most.
pub const MAX_UPDATES: usize = 2_000;
/// First wait before reconnecting; doubled per failure up to
/// [`MAX_BACKOFF`], with up to half of it added at random.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// Longest wait before reconnecting.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Longest the last partials may take to leave at a stop.
pub const DRAIN: Duration = Duration::from_secs(10);

/// What the dataflow thread hands the push task: every batch of partials.
/// Their emission watermarks are the edge's watermark as the push knows
/// it: the partials' emitter has passed them, so every partial of a
/// window ending before is among what it has handed over. (The aggregate
/// rows have an emitter of their own, which may be ahead.)
pub type Feed = Vec<PartialEmission>;

/// The push task's figures, live.
#[derive(Debug, Default)]
pub struct PushStatus {
    /// The delivered frontier: see the module documentation.
    pub delivered: Arc<AtomicU64>,
    /// Batches central acknowledged.
    pub batches: AtomicU64,
    /// Updates in them.
    pub updates: AtomicU64,
    /// Updates central refused (listed in its ACKs).
    pub refused: AtomicU64,
    /// Connections lost or refused, then retried.
    pub reconnects: AtomicU64,
    /// Windows given up to log retention unacknowledged (`max_hold`).
    pub given_up: AtomicU64,
    /// Whether a connection is up.
    pub connected: AtomicBool,
}

/// What the push task needs.
pub struct Pusher {
    /// The sink's settings.
    pub sink: CentralSink,
    /// This edge's name (its `node.id`): the HELLO sender.
    pub sender: String,
    /// The edge's reference data (partials' keys to ids).
    pub reference: Arc<Reference>,
    /// Window length, ms.
    pub window_ms: u64,
    /// No batch leaves before the edge's watermark reaches this (its log
    /// replay at start: see [`Outbox::hold`]).
    pub hold_until: Arc<AtomicU64>,
    /// The edge's input watermark (the commit thread's): a batch never
    /// claims more, whatever the dataflow's emissions say.
    pub input_watermark: Arc<AtomicU64>,
    /// Figures, live.
    pub status: Arc<PushStatus>,
}

/// A batch's fate: its number, and the answer or why there is none.
type Answer = (u64, anyhow::Result<Frame>);

impl Pusher {
    /// Runs until `feed` ends (the dataflow stopped), then pushes what is
    /// left for at most [`DRAIN`].
    pub async fn run(self, mut feed: UnboundedReceiver<Feed>) {
        let resolution = self
            .reference
            .places_low_soc()
            .then_some(self.reference.zone_settings.position_resolution);
        let mut outbox = Outbox::new(self.window_ms, resolution);
        outbox.hold();
        let mut state = State {
            outbox,
            watermark: 0,
            sent_watermark: None,
            last_cut: Instant::now(),
            outage_said: false,
            given_up_said: false,
        };
        let endpoint = match self.endpoint() {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!("central sink: {e:#}; nothing is pushed");
                while feed.recv().await.is_some() {}
                return;
            }
        };
        let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
        let mut retry_at = Instant::now();
        let mut drain_until: Option<Instant> = None;
        loop {
            // Not connected: take the feed until it is time to try.
            if drain_until.is_none() {
                tokio::select! {
                    _ = tokio::time::sleep_until(retry_at) => {}
                    msg = feed.recv() => {
                        match msg {
                            Some(m) => state.take(m, &self),
                            None => drain_until = Some(Instant::now() + DRAIN),
                        }
                        continue;
                    }
                }
            }
            if drain_until.is_some_and(|d| Instant::now() >= d)
                || (drain_until.is_some() && state.done())
            {
                break;
            }
            let connected =
                tokio::time::timeout(Duration::from_secs(5), connect(&endpoint, &self.options()))
                    .await
                    .map_err(|_| anyhow!("no answer within 5s"))
                    .and_then(|r| r);
            let (conn, _control, next) = match connected {
                Ok(c) => c,
                Err(e) => {
                    self.status.reconnects.fetch_add(1, Ordering::Relaxed);
                    state.say_outage(&format!("cannot reach central at {}: {e:#}", self.sink.to));
                    retry_at = Instant::now() + backoff.next_wait();
                    if drain_until.is_some() {
                        tokio::time::sleep_until(retry_at.min(drain_until.unwrap_or(retry_at)))
                            .await;
                    }
                    continue;
                }
            };
            self.status.connected.store(true, Ordering::Relaxed);
            if state.outage_said {
                tracing::info!("central sink: connected to {} again", self.sink.to);
                state.outage_said = false;
            }
            backoff.reset();
            let why = self
                .session(&conn, next, &mut state, &mut feed, &mut drain_until)
                .await;
            self.status.connected.store(false, Ordering::Relaxed);
            match why {
                Ok(()) => {
                    conn.close(0u32.into(), b"done");
                    endpoint.wait_idle().await;
                    return;
                }
                Err(e) => {
                    self.status.reconnects.fetch_add(1, Ordering::Relaxed);
                    state.say_outage(&format!("push to {} failed: {e:#}", self.sink.to));
                    retry_at = Instant::now() + backoff.next_wait();
                }
            }
        }
        let (waiting, in_flight) = state.outbox.backlog();
        if waiting + in_flight > 0 {
            tracing::warn!(
                "central sink: stopping with {} partials unacknowledged; the log keeps their windows, so the next start pushes them",
                waiting + in_flight
            );
        }
    }

    /// One connection: batches out, answers in, the feed taken meanwhile.
    /// `Ok` once the feed has ended and everything is acknowledged.
    async fn session(
        &self,
        conn: &quinn::Connection,
        next: u64,
        state: &mut State,
        feed: &mut UnboundedReceiver<Feed>,
        drain_until: &mut Option<Instant>,
    ) -> anyhow::Result<()> {
        // Central has every batch below `next`; what else was in flight
        // waits again.
        state.outbox.acked_below(next);
        state.outbox.lost(next);
        state.sent_watermark = None;
        let mut seq = next;
        let mut in_flight: JoinSet<Answer> = JoinSet::new();
        loop {
            while in_flight.len() < WINDOW {
                if !state.due() {
                    break;
                }
                let Some(cut) = state.outbox.next_batch(seq, &self.reference, MAX_UPDATES) else {
                    break;
                };
                state.last_cut = Instant::now();
                state.sent_watermark = Some(cut.watermark);
                // Streams open in batch order: central commits a
                // connection's batches in the order of their streams.
                let stream = conn.open_bi().await.context("opening a stream")?;
                let records = Bytes::from(cut.records);
                in_flight.spawn(async move {
                    let answer = send_batch(stream, seq, Encoding::Partials, records).await;
                    (seq, answer.map(|(_, frame)| frame))
                });
                seq += 1;
            }
            if drain_until.is_some() && in_flight.is_empty() && state.done() {
                return Ok(());
            }
            let linger = state.last_cut + LINGER;
            tokio::select! {
                msg = feed.recv(), if drain_until.is_none() => match msg {
                    Some(m) => state.take(m, self),
                    None => *drain_until = Some(Instant::now() + DRAIN),
                },
                answer = in_flight.join_next(), if !in_flight.is_empty() => {
                    let Some(answer) = answer else { continue };
                    let (s, frame) = answer.map_err(|e| anyhow!("batch task failed: {e}"))?;
                    if let Err(e) = self.answered(s, frame, state) {
                        state.outbox.lost(s);
                        return Err(e);
                    }
                }
                _ = tokio::time::sleep_until(linger), if state.lingering() => {}
                _ = tokio::time::sleep_until(drain_until.unwrap_or(linger)), if drain_until.is_some() => {
                    if drain_until.is_some_and(|d| Instant::now() >= d) {
                        return Err(anyhow!("the stop's drain time ran out"));
                    }
                }
            }
        }
    }

    /// Central's answer to batch `seq`.
    fn answered(
        &self,
        seq: u64,
        frame: anyhow::Result<Frame>,
        state: &mut State,
    ) -> anyhow::Result<()> {
        match frame? {
            Frame::Ack {
                accepted,
                rejections,
                ..
            } => {
                state.outbox.acked(seq);
                self.status.batches.fetch_add(1, Ordering::Relaxed);
                self.status
                    .updates
                    .fetch_add(u64::from(accepted), Ordering::Relaxed);
                if let Some((i, code, why)) = rejections.first() {
                    let before = self
                        .status
                        .refused
                        .fetch_add(rejections.len() as u64, Ordering::Relaxed);
                    if before == 0 {
                        tracing::warn!("central sink: central refused update {i} of batch {seq} (reason {code}): {why}; the rest was applied (refusals are counted)");
                    }
                }
                self.publish(state);
                Ok(())
            }
            Frame::Error { code, message } => {
                let fatal = [
                    ErrorCode::Unauthorized,
                    ErrorCode::BadHello,
                    ErrorCode::Mismatch,
                ]
                .iter()
                .any(|c| *c as u16 == code);
                let hint = if fatal {
                    " (a configuration error: fix central's [[edge]] or this sink)"
                } else {
                    ""
                };
                Err(anyhow!(
                    "central answered batch {seq} with error {code}: {message}{hint}"
                ))
            }
            other => Err(anyhow!("unexpected answer to batch {seq}: {other:?}")),
        }
    }

    /// Publishes the delivered frontier, giving windows up past `max_hold`.
    fn publish(&self, state: &mut State) {
        let given_up = crate::delivery::gate::publish(
            &self.status.delivered,
            &self.status.given_up,
            state.outbox.delivered(),
            state.watermark,
            self.sink.max_hold.as_millis() as u64,
            self.window_ms,
        );
        if given_up > 0 && !std::mem::replace(&mut state.given_up_said, true) {
            tracing::warn!("central sink: central has not acknowledged windows older than max_hold ({:?}): their log segments are no longer kept for it (counted in given_up)", self.sink.max_hold);
        }
    }

    fn endpoint(&self) -> anyhow::Result<quinn::Endpoint> {
        let any: SocketAddr = if self.sink.to.is_ipv6() {
            "[::]:0".parse()?
        } else {
            "0.0.0.0:0".parse()?
        };
        let mut endpoint = quinn::Endpoint::client(any)?;
        endpoint.set_default_client_config(tls::client_config(
            &self.sink.ca,
            self.sink.identity.as_ref(),
            super::ALPN,
        )?);
        Ok(endpoint)
    }

    fn options(&self) -> SendOptions {
        SendOptions {
            sender: self.sender.clone(),
            ..SendOptions::new(
                self.sink.to,
                self.sink.server_name.clone(),
                self.sink.ca.clone(),
                self.sink.token.clone(),
            )
        }
    }
}

/// The push task's state across connections.
struct State {
    outbox: Outbox,
    /// The edge's watermark.
    watermark: u64,
    /// The header watermark of the last batch cut on this connection.
    sent_watermark: Option<u64>,
    last_cut: Instant,
    /// An outage was said (said once, until connected again).
    outage_said: bool,
    /// Windows given up to log retention were said (once per run).
    given_up_said: bool,
}

impl State {
    fn take(&mut self, msg: Feed, pusher: &Pusher) {
        self.outbox.offer(&msg);
        let emitted = msg.iter().map(|e| e.watermark).max().unwrap_or(0);
        // The dataflow's time runs ahead of the input at its end (windows
        // emitted as they are when the node stops): claim no more than
        // the input's watermark.
        let watermark = emitted.min(pusher.input_watermark.load(Ordering::Acquire));
        self.outbox.advance(watermark);
        self.watermark = self.watermark.max(watermark);
        if self.watermark >= pusher.hold_until.load(Ordering::Acquire) {
            self.outbox.release();
        }
    }

    /// Whether a batch is due: a full one waits, or partials or a moved
    /// watermark have waited [`LINGER`].
    fn due(&self) -> bool {
        let (waiting, _) = self.outbox.backlog();
        waiting >= MAX_UPDATES || (self.has_news() && self.last_cut.elapsed() >= LINGER)
    }

    /// Whether partials wait or the watermark moved since the last batch.
    fn has_news(&self) -> bool {
        let (waiting, _) = self.outbox.backlog();
        waiting > 0 || self.sent_watermark.is_none_or(|s| s < self.watermark)
    }

    /// Whether news waits out [`LINGER`]: the only time the loop needs a
    /// timer (armed with nothing to send, a past deadline would spin it).
    fn lingering(&self) -> bool {
        self.has_news() && !self.due()
    }

    /// Nothing waits or is in flight.
    fn done(&self) -> bool {
        self.outbox.backlog() == (0, 0)
    }

    fn say_outage(&mut self, why: &str) {
        if !self.outage_said {
            tracing::warn!("central sink: {why}; holding partials and retrying with backoff");
            self.outage_said = true;
        }
    }
}
