//! The QUIC ingest server, per connection (the node's listener accepts
//! connections and hands those that speak this protocol to [`connection`]):
//! a HELLO on the first bidirectional stream within
//! `hello_timeout` (token checked against the fleets' SHA-256 hashes), then
//! one batch per bidirectional stream, each validated record by record,
//! committed durably and acknowledged. Every failure is an ERROR frame with a
//! documented code to that client; nothing a client sends can stop the
//! server or slow the others beyond the shared log.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;

use super::commit::{Batch, Committed, Committer};
use super::frame::{kind, reason_code, ErrorCode, Frame};
use super::intake::Intake;
use super::validate::{ack, now_ms, validate, Validated};
use crate::log::Encoding;
use crate::reference::Reference;
use crate::topology::Ingest;
use crate::wire::admission::{Admission, Unauthenticated};
use crate::wire::budget::{Budget, Held};
use crate::wire::envelope::FrameError;
use arc_swap::ArcSwap;

/// Largest HELLO frame, bytes.
pub const MAX_HELLO_BYTES: usize = 1024;

/// Counters of the ingest server, live in the node's handle and printed in
/// its report at a stop.
#[derive(Debug, Default)]
pub struct IngestCounters {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Connections refused (over `max_connections`).
    pub refused: AtomicU64,
    /// Connections closed for a bad or missing token.
    pub unauthorized: AtomicU64,
    /// Protocol errors sent (bad frames, gaps, limits).
    pub protocol_errors: AtomicU64,
    /// Batches acknowledged.
    pub batches: AtomicU64,
    /// Batches recognised as resends.
    pub duplicates: AtomicU64,
    /// Records accepted.
    pub accepted: AtomicU64,
    /// Records rejected.
    pub rejected: AtomicU64,
    /// Datagram records accepted.
    pub datagrams: AtomicU64,
    /// Records left out of acknowledged batches as too late (reason
    /// `expired`; also counted in `rejected`).
    pub expired: AtomicU64,
    /// Log appends or fsyncs that failed (batches answered
    /// `log_unavailable` meanwhile).
    pub log_failures: Arc<AtomicU64>,
    /// Records taken in: accepted and rejected, batches and datagrams.
    pub received: AtomicU64,
    /// Bytes of records in acknowledged batches and datagrams, as sent.
    pub bytes: AtomicU64,
    /// Records rejected, by reject code ([`reason_code`]; 0: a datagram
    /// refused because the intake takes none).
    pub rejected_by: [AtomicU64; REJECT_CODES],
    /// QUIC handshakes that failed.
    pub handshake_failed: AtomicU64,
    /// Connections open now.
    pub open: AtomicU64,
}

/// Slots of [`IngestCounters::rejected_by`]: every reject code is below.
pub const REJECT_CODES: usize = 32;

impl IngestCounters {
    /// Counts a batch's rejections by their codes.
    pub fn count_rejections(&self, rejections: &[(u32, u8, String)]) {
        let mut by = [0u64; REJECT_CODES];
        for r in rejections {
            by[usize::from(r.1).min(REJECT_CODES - 1)] += 1;
        }
        for (slot, n) in self.rejected_by.iter().zip(by) {
            if n > 0 {
                slot.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    /// Publishes the counters (inside a node registry's scope).
    pub fn publish_metrics(&self) {
        use crate::metrics as M;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        metrics::counter!(M::INGEST_RECEIVED).absolute(get(&self.received));
        metrics::counter!(M::INGEST_ACCEPTED).absolute(get(&self.accepted) + get(&self.datagrams));
        metrics::counter!(M::INGEST_BYTES).absolute(get(&self.bytes));
        metrics::counter!(M::INGEST_BATCHES).absolute(get(&self.batches));
        metrics::counter!(M::INGEST_RESENDS).absolute(get(&self.duplicates));
        metrics::counter!(M::INGEST_DATAGRAMS).absolute(get(&self.datagrams));
        metrics::counter!(M::INGEST_PROTOCOL_ERRORS).absolute(get(&self.protocol_errors));
        metrics::counter!(M::LOG_FAILURES).absolute(get(&self.log_failures));
        for (code, slot) in self.rejected_by.iter().enumerate() {
            let n = get(slot);
            if n == 0 {
                continue;
            }
            let reason = if code == 0 {
                "no_datagrams"
            } else {
                crate::model::RejectReason::ALL
                    .iter()
                    .find(|r| usize::from(reason_code(**r)) == code)
                    .map_or("other", |r| r.as_str())
            };
            metrics::counter!(M::INGEST_REJECTED, "reason" => reason).absolute(n);
        }
        for (outcome, n) in [
            ("accepted", &self.connections),
            ("refused", &self.refused),
            ("unauthorized", &self.unauthorized),
            ("handshake_failed", &self.handshake_failed),
        ] {
            metrics::counter!(M::CONNECTIONS, "outcome" => outcome).absolute(get(n));
        }
        metrics::gauge!(M::CONNECTIONS_OPEN).set(get(&self.open) as f64);
    }
}

/// Everything a connection needs.
pub struct IngestContext {
    /// Reference data (datagrams are checked against it).
    pub reference: Arc<Reference>,
    /// Who may connect, and what their batches must hold.
    pub intake: Arc<dyn Intake>,
    /// The log.
    pub committer: Committer,
    /// The `[ingest]` settings: timeouts and limits (swapped whole by a
    /// reload; each use reads the settings in force).
    pub settings: ArcSwap<Ingest>,
    /// The node's connection slots (their limits follow a reload).
    pub admission: Arc<Admission>,
    /// Counters.
    pub counters: Arc<IngestCounters>,
    /// `[windows] max_future`, ms: records further ahead of the wall clock
    /// are refused.
    pub max_future_ms: u64,
    /// Bytes buffered for frames still arriving or waiting for the log.
    pub budget: Budget,
}

impl IngestContext {
    /// A context for connections checked by `intake`.
    pub fn new(
        reference: Arc<Reference>,
        intake: Arc<dyn Intake>,
        committer: Committer,
        settings: Ingest,
        counters: Arc<IngestCounters>,
        max_future_ms: u64,
        budget: Budget,
    ) -> Self {
        IngestContext {
            reference,
            intake,
            committer,
            counters,
            max_future_ms,
            budget,
            admission: Admission::new(admission_limits(&settings)),
            settings: ArcSwap::from_pointee(settings),
        }
    }
}

/// The admission limits of an `[ingest]` section.
pub fn admission_limits(settings: &Ingest) -> crate::wire::admission::Limits {
    let l = &settings.limits;
    crate::wire::admission::Limits {
        max_connections: l.max_connections,
        max_unauthenticated: l.max_unauthenticated,
        max_unauthenticated_per_source: l.max_unauthenticated_per_source,
    }
}

/// How long to wait for a peer to receive an answer before moving on.
const ANSWER_GRACE: Duration = Duration::from_secs(2);

async fn send_error(send: &mut quinn::SendStream, code: ErrorCode, message: &str) {
    let frame = Frame::Error {
        code: code as u16,
        message: message.to_owned(),
    }
    .to_bytes();
    let _ = send.write_all(&frame).await;
    let _ = send.finish();
    // Let the frame arrive before a connection close can overtake it.
    let _ = tokio::time::timeout(ANSWER_GRACE, send.stopped()).await;
}

/// Reads and decodes one frame of at most `max` payload bytes, its bytes
/// taken from the node's budget (held while the result lives).
async fn read_frame(
    budget: &Budget,
    recv: &mut quinn::RecvStream,
    max: usize,
) -> Result<(Frame, Held), (ErrorCode, String)> {
    let (mut buf, held) = budget.read_frame(recv, max).await.map_err(|e| {
        let code = match e {
            FrameError::TooLarge { .. } => ErrorCode::FrameTooLarge,
            FrameError::CutShort(_) | FrameError::Malformed(_) => ErrorCode::BadFrame,
        };
        (code, e.to_string())
    })?;
    match Frame::decode(&mut buf, max) {
        Ok(Some(f)) => Ok((f, held)),
        Ok(None) => Err((ErrorCode::BadFrame, "incomplete frame".into())),
        Err(e) => Err((ErrorCode::BadFrame, e.to_string())),
    }
}

/// Serves one ingest connection (the node's listener hands it over after
/// admission, [`crate::node::listener`]): HELLO, then batches, until the
/// client leaves or `shutdown` turns true.
pub async fn connection(
    conn: quinn::Connection,
    ctx: &Arc<IngestContext>,
    mut shutdown: watch::Receiver<bool>,
    pending: Unauthenticated,
) {
    let close = |code: ErrorCode, why: &str| {
        conn.close(quinn::VarInt::from_u32(code as u32), why.as_bytes())
    };
    // HELLO on the first bidirectional stream, within the deadline; a stop
    // meanwhile is answered too.
    let deadline = tokio::time::Instant::now() + ctx.settings.load().hello_timeout;
    let accepted = tokio::select! {
        r = tokio::time::timeout_at(deadline, conn.accept_bi()) => r,
        _ = shutdown.changed() => {
            close(ErrorCode::ShuttingDown, "node stopping");
            return;
        }
    };
    let (mut send, mut recv) = match accepted {
        Err(_) => {
            // No stream to answer on: the close carries the code.
            ctx.counters.protocol_errors.fetch_add(1, Ordering::Relaxed);
            close(ErrorCode::HelloTimeout, "no HELLO in time");
            return;
        }
        Ok(Err(_)) => return,
        Ok(Ok(streams)) => streams,
    };
    let read = tokio::select! {
        r = tokio::time::timeout_at(deadline, read_frame(&ctx.budget, &mut recv, MAX_HELLO_BYTES)) => Some(r),
        _ = shutdown.changed() => None,
    };
    let (mut control, sender) = match read {
        None => {
            send_error(&mut send, ErrorCode::ShuttingDown, "node stopping").await;
            close(ErrorCode::ShuttingDown, "node stopping");
            return;
        }
        Some(Err(_)) => {
            ctx.counters.protocol_errors.fetch_add(1, Ordering::Relaxed);
            send_error(&mut send, ErrorCode::HelloTimeout, "no HELLO in time").await;
            close(ErrorCode::HelloTimeout, "no HELLO in time");
            return;
        }
        Some(Ok(Err((_, why)))) => {
            ctx.counters.protocol_errors.fetch_add(1, Ordering::Relaxed);
            send_error(&mut send, ErrorCode::BadHello, &why).await;
            close(ErrorCode::BadHello, "bad HELLO");
            return;
        }
        Some(Ok(Ok((Frame::Hello { token, sender }, _hello_bytes)))) => {
            if let Err(why) = ctx.intake.admit(&token, &sender) {
                ctx.counters.unauthorized.fetch_add(1, Ordering::Relaxed);
                static UNAUTHORIZED: crate::observe::Every =
                    crate::observe::Every::new(crate::observe::REFUSALS_LOGGED_EVERY);
                crate::observe::refused(&UNAUTHORIZED, conn.remote_address(), &why);
                send_error(&mut send, ErrorCode::Unauthorized, &why).await;
                close(ErrorCode::Unauthorized, &why);
                return;
            }
            if let Err(e) = crate::model::check_id(&sender, "sender") {
                send_error(&mut send, ErrorCode::BadHello, &e.to_string()).await;
                close(ErrorCode::BadHello, "bad sender id");
                return;
            }
            (send, sender)
        }
        Some(Ok(Ok(_))) => {
            ctx.counters.protocol_errors.fetch_add(1, Ordering::Relaxed);
            let why = "the first frame must be HELLO";
            send_error(&mut send, ErrorCode::BadHello, why).await;
            close(ErrorCode::BadHello, why);
            return;
        }
    };
    // Authenticated: from now on it holds one of `max_connections` slots.
    let Some(_slot) = pending.authenticate() else {
        ctx.counters.refused.fetch_add(1, Ordering::Relaxed);
        static OVERLOADED: crate::observe::Every =
            crate::observe::Every::new(crate::observe::REFUSALS_LOGGED_EVERY);
        crate::observe::refused(
            &OVERLOADED,
            conn.remote_address(),
            "over [ingest] max_connections",
        );
        send_error(
            &mut control,
            ErrorCode::Overloaded,
            "the node serves max_connections sessions; retry later",
        )
        .await;
        close(ErrorCode::Overloaded, "too many connections");
        return;
    };
    let welcome = Frame::Welcome {
        next_sender_seq: ctx.committer.next_sender_seq(&sender),
    }
    .to_bytes();
    if control.write_all(&welcome).await.is_err() {
        return;
    }
    let rate = Arc::new(Mutex::new(RateLimit::new(
        ctx.settings.load().limits.max_records_per_s,
    )));
    let turns = Arc::new(Turns::default());
    let mut tickets = 0u64;
    let sender: Arc<str> = sender.into();
    let mut batches = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            stream = conn.accept_bi() => {
                let Ok((send, recv)) = stream else { break };
                let (ctx, rate, sender, turns) = (ctx.clone(), rate.clone(), sender.clone(), turns.clone());
                let ticket = tickets;
                tickets += 1;
                batches.spawn(async move { batch(send, recv, &ctx, &rate, &sender, Turn(&turns, ticket)).await });
            }
            datagram = conn.read_datagram() => {
                let Ok(d) = datagram else { break };
                single_record(d, ctx, &sender).await;
            }
            _ = shutdown.changed() => {
                // Batches under way get `drain_timeout` to arrive and commit;
                // one still unread after that is dropped unacknowledged (its
                // sender resends it), so no client can hold the stop up.
                let drained = tokio::time::timeout(ctx.settings.load().drain_timeout, async {
                    while batches.join_next().await.is_some() {}
                })
                .await;
                if drained.is_err() {
                    batches.shutdown().await;
                }
                let _ = control.write_all(&Frame::Error { code: ErrorCode::ShuttingDown as u16, message: "node stopping".into() }.to_bytes()).await;
                let _ = control.finish();
                close(ErrorCode::ShuttingDown, "node stopping");
                return;
            }
            Some(_) = batches.join_next(), if !batches.is_empty() => {}
        }
    }
    while batches.join_next().await.is_some() {}
}

/// Commit order within a connection: batches reach the log in the order
/// their streams were opened, whatever order their validation finishes in,
/// so a sender's batch numbers arrive in sequence. A batch that ends early
/// (refused, malformed) passes its turn on, but only once every earlier
/// batch has had its own: `next` advances over consecutive finished tickets.
#[derive(Default)]
struct Turns {
    state: Mutex<TurnState>,
    changed: tokio::sync::Notify,
}

#[derive(Default)]
struct TurnState {
    /// The ticket whose turn it is.
    next: u64,
    /// Tickets after `next` that have finished.
    done: std::collections::BTreeSet<u64>,
}

impl Turns {
    async fn wait(&self, ticket: u64) {
        loop {
            let notified = self.changed.notified();
            if self.state.lock().map(|s| s.next == ticket).unwrap_or(true) {
                return;
            }
            notified.await;
        }
    }

    fn finish(&self, ticket: u64) {
        if let Ok(mut s) = self.state.lock() {
            s.done.insert(ticket);
            while let Some(&t) = s.done.first() {
                if t != s.next {
                    break;
                }
                s.done.pop_first();
                s.next += 1;
            }
        }
        self.changed.notify_waiters();
    }
}

/// Passes the turn on when dropped, whatever happened to the batch.
struct Turn<'a>(&'a Turns, u64);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.0.finish(self.1);
    }
}

/// A token bucket: `per_s` records per second, bursting one second's worth.
struct RateLimit {
    per_s: f64,
    tokens: f64,
    at: Instant,
}

impl RateLimit {
    fn new(per_s: u64) -> Self {
        RateLimit {
            per_s: per_s as f64,
            tokens: per_s as f64,
            at: Instant::now(),
        }
    }
    fn take(&mut self, n: usize) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * self.per_s).min(self.per_s);
        self.at = now;
        if self.tokens >= n as f64 {
            self.tokens -= n as f64;
            true
        } else {
            false
        }
    }
}

async fn batch(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    ctx: &IngestContext,
    rate: &Mutex<RateLimit>,
    sender: &str,
    turn: Turn<'_>,
) {
    let fail = |code: ErrorCode| {
        ctx.counters.protocol_errors.fetch_add(1, Ordering::Relaxed);
        code
    };
    // The whole batch within `batch_timeout`, its bytes within the
    // node's budget (held until it is answered).
    let max = ctx.settings.load().limits.max_frame_bytes;
    let read = tokio::time::timeout(
        ctx.settings.load().batch_timeout,
        read_frame(&ctx.budget, &mut recv, max),
    );
    let (frame, _held) = match read.await {
        Ok(Ok(read)) => read,
        Ok(Err((code, why))) => {
            send_error(&mut send, fail(code), &why).await;
            let _ = recv.stop(quinn::VarInt::from_u32(code as u32));
            return;
        }
        Err(_) => {
            let code = ErrorCode::BatchTimeout;
            let why = format!(
                "the batch did not arrive within batch_timeout ({:?}); send it again",
                ctx.settings.load().batch_timeout
            );
            send_error(&mut send, fail(code), &why).await;
            let _ = recv.stop(quinn::VarInt::from_u32(code as u32));
            return;
        }
    };
    let Frame::Batch {
        sender_seq,
        encoding,
        records,
    } = frame
    else {
        send_error(
            &mut send,
            fail(ErrorCode::BadFrame),
            &format!("expected BATCH (type 0x{:02x})", kind::BATCH),
        )
        .await;
        return;
    };
    let intake = ctx.intake.clone();
    let latest = now_ms().saturating_add(ctx.max_future_ms);
    let batch_bytes = records.len() as u64;
    let Validated {
        kept,
        ends,
        items,
        index,
        mut rejections,
        accepted: valid,
    } = match tokio::task::spawn_blocking(move || intake.check(encoding, &records, latest)).await {
        Ok(Ok(v)) => v,
        Ok(Err((code, why))) => {
            send_error(&mut send, fail(code), &why).await;
            return;
        }
        Err(_) => {
            send_error(&mut send, fail(ErrorCode::Overloaded), "validation failed").await;
            return;
        }
    };
    let allowed = rate
        .lock()
        .map(|mut r| r.take(valid + rejections.len()))
        .unwrap_or(false);
    if !allowed {
        let limit = ctx.settings.load().limits.max_records_per_s;
        let records = valid + rejections.len();
        let (code, why) = if records as u64 > limit {
            // Waiting cannot help: the bucket never holds this many.
            (ErrorCode::BatchOverRate, format!("a batch of {records} records exceeds max_records_per_s ({limit}): send smaller batches"))
        } else {
            (
                ErrorCode::RateLimited,
                format!("over {limit} records/s on this connection; retry later"),
            )
        };
        send_error(&mut send, fail(code), &why).await;
        return;
    }
    turn.0.wait(turn.1).await;
    let durable = ctx
        .committer
        .submit(Batch {
            sender: sender.to_owned(),
            sender_seq,
            encoding,
            records: Bytes::from(kept),
            ends,
            items,
        })
        .await;
    drop(turn);
    match durable.await {
        Committed::Appended { expired, .. } => {
            let accepted = (valid - expired.len()) as u32;
            for &e in &expired {
                let i = index.get(e as usize).copied().unwrap_or(e);
                rejections.push((
                    i,
                    reason_code(crate::model::RejectReason::Expired),
                    "too late: its window had retired (older than windows.retention behind the watermark)".into(),
                ));
            }
            if !expired.is_empty() {
                rejections.sort_by_key(|r| r.0);
                ctx.counters
                    .expired
                    .fetch_add(expired.len() as u64, Ordering::Relaxed);
            }
            ctx.counters.batches.fetch_add(1, Ordering::Relaxed);
            ctx.counters
                .accepted
                .fetch_add(u64::from(accepted), Ordering::Relaxed);
            ctx.counters
                .rejected
                .fetch_add(rejections.len() as u64, Ordering::Relaxed);
            ctx.counters.received.fetch_add(
                u64::from(accepted) + rejections.len() as u64,
                Ordering::Relaxed,
            );
            ctx.counters.bytes.fetch_add(batch_bytes, Ordering::Relaxed);
            ctx.counters.count_rejections(&rejections);
            let ack = ack(
                sender_seq,
                accepted,
                rejections,
                ctx.settings.load().limits.max_frame_bytes,
            )
            .to_bytes();
            let _ = send.write_all(&ack).await;
            let _ = send.finish();
        }
        Committed::Duplicate => {
            ctx.counters.duplicates.fetch_add(1, Ordering::Relaxed);
            let ack = Frame::Ack {
                sender_seq,
                accepted: 0,
                rejections: Vec::new(),
            }
            .to_bytes();
            let _ = send.write_all(&ack).await;
            let _ = send.finish();
        }
        Committed::Gap { expected } => {
            send_error(
                &mut send,
                fail(ErrorCode::SequenceGap),
                &format!("batch {sender_seq} but {expected} is next"),
            )
            .await;
        }
        Committed::Refused(why) => {
            send_error(&mut send, fail(ErrorCode::FrameTooLarge), &why).await
        }
        Committed::Unavailable(why) => send_error(&mut send, ErrorCode::LogUnavailable, &why).await,
        Committed::Failed(why) => send_error(&mut send, ErrorCode::ShuttingDown, &why).await,
    }
    // Wait until the peer has the answer before dropping the stream.
    let _ = tokio::time::timeout(ANSWER_GRACE, send.stopped()).await;
}

async fn single_record(datagram: Bytes, ctx: &IngestContext, _sender: &str) {
    ctx.counters.received.fetch_add(1, Ordering::Relaxed);
    if !ctx.intake.datagrams() {
        ctx.counters.rejected.fetch_add(1, Ordering::Relaxed);
        ctx.counters.rejected_by[0].fetch_add(1, Ordering::Relaxed);
        return;
    }
    let encoding = if datagram.first() == Some(&b'{') {
        Encoding::JsonLines
    } else {
        Encoding::Cbor
    };
    let latest = now_ms().saturating_add(ctx.max_future_ms);
    let Validated {
        kept,
        ends,
        items,
        rejections,
        ..
    } = validate(encoding, &datagram, &ctx.reference, latest);
    if items.len() != 1 {
        ctx.counters.rejected.fetch_add(1, Ordering::Relaxed);
        match rejections.first() {
            Some(r) => ctx.counters.count_rejections(std::slice::from_ref(r)),
            None => ctx.counters.count_rejections(&[(
                0,
                reason_code(crate::model::RejectReason::Syntax),
                String::new(),
            )]),
        }
        return;
    }
    let bytes = datagram.len() as u64;
    // Datagrams are unsequenced (the empty sender: no deduplication), best
    // effort and never acknowledged.
    let batch = Batch {
        sender: String::new(),
        sender_seq: 0,
        encoding,
        records: Bytes::from(kept),
        ends,
        items,
    };
    if let Committed::Appended { expired, .. } = ctx.committer.commit(batch).await {
        if expired.is_empty() {
            ctx.counters.datagrams.fetch_add(1, Ordering::Relaxed);
            ctx.counters.bytes.fetch_add(bytes, Ordering::Relaxed);
        } else {
            ctx.counters.expired.fetch_add(1, Ordering::Relaxed);
            ctx.counters.rejected.fetch_add(1, Ordering::Relaxed);
            ctx.counters.count_rejections(&[(
                0,
                reason_code(crate::model::RejectReason::Expired),
                String::new(),
            )]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(turns: &Turns, ticket: u64) -> bool {
        use std::future::Future;
        let mut wait = std::pin::pin!(turns.wait(ticket));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        wait.as_mut().poll(&mut cx).is_ready()
    }

    #[test]
    fn a_batch_that_ends_early_does_not_skip_an_earlier_one() {
        let turns = Turns::default();
        // Batch 1 is refused before batch 0 has had its turn.
        drop(Turn(&turns, 1));
        assert!(ready(&turns, 0), "batch 0 still gets its turn");
        assert!(!ready(&turns, 2), "batch 2 waits for batch 0");
        drop(Turn(&turns, 0));
        assert!(ready(&turns, 2), "then batch 2 goes, batch 1 being done");
        drop(Turn(&turns, 3));
        drop(Turn(&turns, 2));
        assert!(ready(&turns, 4));
    }
}
