//! Group commit: one thread owns the log. It takes every batch waiting,
//! appends them all, fsyncs once, answers each sender, then hands the new
//! entries to the dataflow. Deduplication happens here, where batches are
//! ordered: per sender, the next expected batch number.
//!
//! Retention: a [`Tracker`] follows the entries; once the sinks are
//! durable past a checkpoint's horizon, this thread writes the checkpoint
//! and deletes the segments it covers ([`crate::checkpoint`]).
//!
//! Backpressure: the hand-over to the dataflow is a bounded channel. When
//! the dataflow falls behind, this thread waits, the request queue (bounded)
//! fills, stream handlers wait for their acknowledgement, and QUIC flow
//! control stops the senders. Nothing buffers without bound.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustc_hash::FxHashMap;
use tokio::sync::{mpsc, oneshot};

use crate::checkpoint::{Settings, Tracker};
use crate::input::Chunk;
use crate::log::disk::Disk;
use crate::log::{Encoding, LogError, LogWriter};
use crate::reference::Reference;
use crate::resolve::Item;
use crate::time::{ChunkTimes, Fate};

/// Least time between two attempts to write a checkpoint after one failed.
pub const CHECKPOINT_RETRY: Duration = Duration::from_secs(10);
/// Least time between two attempts to write the log after a write or fsync
/// failed (a full disk, a failing device). Meanwhile batches are answered
/// `log_unavailable` (retryable) at once.
pub const LOG_RETRY: Duration = Duration::from_secs(1);

/// What log retention needs: the tracker, and how far the sinks are durable.
pub struct Retention {
    /// Follows the log from where it starts.
    pub tracker: Tracker,
    /// Charger ids for the checkpoint.
    pub reference: Arc<Reference>,
    /// The log directory (the checkpoint lives there).
    pub dir: PathBuf,
    /// Watermark up to which every sink has durably written the final rows
    /// (published by the sink writer).
    pub sinks_durable: Arc<AtomicU64>,
    /// The settings checkpoints record.
    pub settings: Settings,
    /// The log's disk (checkpoints are written through it).
    pub disk: Disk,
    /// Where the input watermark is published after each group (for the
    /// subscription hub).
    pub watermark: Arc<AtomicU64>,
    /// Whether segments may be deleted behind a checkpoint (not in a
    /// central node, whose log is its state).
    pub deletes: bool,
    /// More frontiers retention waits for, like `sinks_durable`: a
    /// central sink's delivered frontier.
    pub gates: Vec<Arc<AtomicU64>>,
    /// What the commit thread counts (no-ops without an exporter).
    pub metrics: LogMetrics,
    /// A cluster process's link to its site: the commit thread publishes
    /// its log clock there ([`crate::runtime::SiteLink::logged`]).
    pub site: Option<Arc<crate::runtime::SiteLink>>,
}

/// The commit thread's metrics: handles added to per group, per fsync,
/// per checkpoint ([`crate::metrics`] names them).
#[derive(Clone)]
pub struct LogMetrics {
    /// Batches appended.
    pub appends: metrics::Counter,
    /// Bytes appended.
    pub bytes: metrics::Counter,
    /// Seconds per fsync.
    pub fsync: metrics::Histogram,
    /// Checkpoints written.
    pub checkpoints: metrics::Counter,
    /// Segments deleted.
    pub deleted: metrics::Counter,
}

impl Default for LogMetrics {
    fn default() -> Self {
        LogMetrics {
            appends: metrics::Counter::noop(),
            bytes: metrics::Counter::noop(),
            fsync: metrics::Histogram::noop(),
            checkpoints: metrics::Counter::noop(),
            deleted: metrics::Counter::noop(),
        }
    }
}

impl LogMetrics {
    /// Handles from the `metrics` recorder in force (call inside a
    /// node registry's scope).
    pub fn registered() -> Self {
        use crate::metrics as M;
        LogMetrics {
            appends: metrics::counter!(M::LOG_APPENDS),
            bytes: metrics::counter!(M::LOG_APPENDED_BYTES),
            fsync: metrics::histogram!(M::LOG_FSYNC_SECONDS),
            checkpoints: metrics::counter!(M::LOG_CHECKPOINTS),
            deleted: metrics::counter!(M::LOG_SEGMENTS_DELETED),
        }
    }
}

impl Retention {
    /// Writes a checkpoint and deletes segments when the sinks allow it.
    /// False when writing the checkpoint failed (try again later).
    fn maybe_checkpoint(&mut self, log: &mut LogWriter, senders: &SenderTable) -> bool {
        let durable = (self.gates.iter())
            .map(|g| g.load(Ordering::Acquire))
            .fold(self.sinks_durable.load(Ordering::Acquire), u64::min);
        let proposal = match senders.lock() {
            Ok(t) => self
                .tracker
                .proposal(&self.reference, &t, durable, &self.settings),
            Err(_) => return true,
        };
        let Some(cp) = proposal else { return true };
        if let Err(e) = cp.store_on(&self.disk, &self.dir) {
            tracing::warn!("log retention: cannot write the checkpoint: {e}");
            return false;
        }
        self.tracker.checkpointed(&cp);
        self.metrics.checkpoints.increment(1);
        match log.delete_before(cp.first_seq) {
            Ok(n) => {
                self.metrics.deleted.increment(n as u64);
                tracing::info!(
                    "log: checkpoint written (the log starts at entry {}); {n} segment(s) deleted",
                    cp.first_seq
                );
            }
            // The checkpoint stands; the next start deletes them.
            Err(e) => tracing::warn!("log retention: {e}"),
        }
        true
    }
}

/// Requests queued for the commit thread at most. Each holds one batch
/// (at most `max_frame_bytes`), so the queue costs at most
/// `COMMIT_QUEUE * max_frame_bytes` bytes.
pub const COMMIT_QUEUE: usize = 256;

/// What became of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Committed {
    /// Durable, at this log position. `expired` are the positions (in the
    /// batch's valid records) of records left out because their window had
    /// retired when the batch reached the log: they could change nothing.
    Appended {
        /// Log position.
        seq: u64,
        /// Positions of the records left out as too late.
        expired: Vec<u32>,
    },
    /// Already accepted earlier: nothing appended.
    Duplicate,
    /// Not the next batch of its sender: `expected` is.
    Gap {
        /// The next batch number expected.
        expected: u64,
    },
    /// The log cannot take this batch (a limit); others go on.
    Refused(String),
    /// The log cannot be written now (disk full or failing): retry later.
    Unavailable(String),
    /// The node cannot accept anything (it is stopping).
    Failed(String),
}

/// A batch for the log: its valid records, as bytes and resolved.
pub struct Batch {
    /// Who sent it (empty: an unsequenced datagram).
    pub sender: String,
    /// The sender's batch number.
    pub sender_seq: u64,
    /// Encoding of `records`.
    pub encoding: Encoding,
    /// The valid records' bytes, back to back.
    pub records: Bytes,
    /// End offset in `records` of each valid record's bytes.
    pub ends: Vec<u32>,
    /// The valid records, resolved for the dataflow.
    pub items: Vec<Item>,
}

struct Request {
    batch: Batch,
    reply: oneshot::Sender<Committed>,
}

/// Next expected batch number per sender, shared with the connections
/// (for WELCOME).
pub type SenderTable = Arc<Mutex<FxHashMap<String, u64>>>;

/// The handle connections use to commit batches.
#[derive(Clone)]
pub struct Committer {
    tx: mpsc::Sender<Request>,
    senders: SenderTable,
}

/// A batch appended in the current group, not yet known durable.
struct Staged {
    reply: oneshot::Sender<Committed>,
    seq: u64,
    sender: String,
    sender_seq: u64,
    segment_start: bool,
    chunk: Chunk,
    items: Arc<[Item]>,
    times: ChunkTimes,
    expired: Vec<u32>,
}

/// Why the log cannot be written now.
struct Outage {
    /// The last error.
    why: String,
    /// When the last attempt failed.
    since: Instant,
    /// Failed attempts so far.
    attempts: u64,
    /// Whether the log still has to be cut back to its last fsync.
    rollback_due: bool,
}

/// The commit thread's state.
struct CommitLoop {
    log: LogWriter,
    table: SenderTable,
    live: SyncSender<Chunk>,
    retention: Retention,
    /// Set while the log cannot be written.
    outage: Option<Outage>,
    /// The node cannot accept anything any more.
    failed: Option<String>,
    next_checkpoint: Instant,
    log_failures: Arc<AtomicU64>,
}

impl CommitLoop {
    /// Whether the log may be tried now; answers nothing. During an outage
    /// it is tried once per [`LOG_RETRY`], after cutting it back.
    fn log_ready(&mut self) -> bool {
        let Some(o) = &mut self.outage else {
            return true;
        };
        if o.since.elapsed() < LOG_RETRY {
            return false;
        }
        if o.rollback_due {
            if let Err(e) = self.log.rollback() {
                o.why = e.to_string();
                o.since = Instant::now();
                o.attempts += 1;
                return false;
            }
            o.rollback_due = false;
        }
        true
    }

    /// A write or fsync failed: cut the log back, refuse until it works.
    fn fail(&mut self, e: &LogError) {
        self.log_failures.fetch_add(1, Ordering::Relaxed);
        let why = e.to_string();
        if self.outage.is_none() {
            tracing::warn!("log: {why}: batches are refused as retryable (log_unavailable) until the log can be written again; retrying every {LOG_RETRY:?}");
        }
        let rollback_due = match self.log.rollback() {
            Ok(()) => false,
            Err(e) => {
                tracing::warn!("log: cannot roll back to the last fsync yet: {e}");
                true
            }
        };
        let attempts = self.outage.as_ref().map_or(0, |o| o.attempts) + 1;
        self.outage = Some(Outage {
            why,
            since: Instant::now(),
            attempts,
            rollback_due,
        });
    }

    /// Appends, syncs and answers one group of requests.
    fn group(&mut self, requests: Vec<Request>) {
        if let Some(why) = &self.failed {
            for r in requests {
                reply(r.reply, Committed::Failed(why.clone()));
            }
            return;
        }
        if !self.log_ready() {
            let why = self.unavailable_message();
            for r in requests {
                reply(r.reply, Committed::Unavailable(why.clone()));
            }
            return;
        }
        let mut answers: Vec<(oneshot::Sender<Committed>, Committed)> = Vec::new();
        // Answered `log_unavailable` once the group is over.
        let mut not_kept: Vec<oneshot::Sender<Committed>> = Vec::new();
        let spec = *self.retention.tracker.spec();
        let frozen = self.retention.tracker.frozen();
        let mut clock = self.retention.tracker.clock().clone();
        // Batch numbers as this group leaves them (applied once durable).
        let mut overlay: FxHashMap<String, u64> = FxHashMap::default();
        let mut staged: Vec<Staged> = Vec::new();
        let mut io_error: Option<LogError> = None;
        for Request { batch, reply } in requests {
            if io_error.is_some() {
                not_kept.push(reply);
                continue;
            }
            // A clock tick (a cluster process following its site): an
            // entry only if it moves this log's clock.
            let tick = (batch.encoding == Encoding::Clock)
                .then(|| Encoding::tick_time(&batch.records))
                .flatten();
            if batch.encoding == Encoding::Clock {
                match tick.filter(|&t| clock.max.is_none_or(|m| t > m)) {
                    Some(t) => match self.log.append("", 0, Encoding::Clock, batch.records) {
                        Ok(seq) => {
                            let times = ChunkTimes::tick(t);
                            clock.fold(&times, &spec);
                            let data = Encoding::tick_bytes(t);
                            staged.push(Staged {
                                reply,
                                seq,
                                sender: String::new(),
                                sender_seq: 0,
                                segment_start: self.log.segment_first_seq() == seq,
                                chunk: Chunk::from_batch(seq, Encoding::Clock, data),
                                items: Arc::from(Vec::new()),
                                times,
                                expired: Vec::new(),
                            });
                        }
                        Err(e) if e.is_io() => {
                            not_kept.push(reply);
                            io_error = Some(e);
                        }
                        Err(e) => answers.push((reply, Committed::Refused(e.to_string()))),
                    },
                    None => answers.push((reply, Committed::Duplicate)),
                }
                continue;
            }
            let next = overlay.get(&batch.sender).copied().unwrap_or_else(|| {
                self.table
                    .lock()
                    .ok()
                    .and_then(|t| t.get(&batch.sender).copied())
                    .unwrap_or(0)
            });
            // The empty sender: unsequenced datagrams, no deduplication.
            let sequenced = !batch.sender.is_empty();
            if sequenced && batch.sender_seq < next {
                answers.push((reply, Committed::Duplicate));
                continue;
            }
            if sequenced && batch.sender_seq > next {
                answers.push((reply, Committed::Gap { expected: next }));
                continue;
            }
            // Records whose window retired before this entry: the dataflow
            // would judge them expired (same clock), so they are left out
            // and the sender is told.
            let watermark = clock.watermark(&spec);
            let expired: Vec<u32> = batch
                .items
                .iter()
                .enumerate()
                .filter(|(_, i)| {
                    spec.classify(i.ts(), watermark) == Fate::Expired
                        || spec.retire_at(spec.window_start(i.ts())) <= frozen
                })
                .map(|(n, _)| n as u32)
                .collect();
            let (records, items) = if expired.is_empty() {
                (batch.records, batch.items)
            } else {
                keep_all_but(&batch.records, &batch.ends, batch.items, &expired)
            };
            let bytes = records.len() as u64;
            match self.log.append(
                &batch.sender,
                batch.sender_seq,
                batch.encoding,
                records.clone(),
            ) {
                Ok(seq) => {
                    self.retention.metrics.appends.increment(1);
                    self.retention.metrics.bytes.increment(bytes);
                    let times = ChunkTimes::new(
                        items.iter().map(|i| (i.device(), i.ts())),
                        clock.max,
                        &spec,
                    );
                    clock.fold(&times, &spec);
                    if sequenced {
                        overlay.insert(batch.sender.clone(), next + 1);
                    }
                    let items: Arc<[Item]> = items.into();
                    let chunk = Chunk::from_batch(seq, batch.encoding, records)
                        .with_sender(&batch.sender)
                        .with_resolved(items.clone());
                    staged.push(Staged {
                        reply,
                        seq,
                        sender: batch.sender,
                        sender_seq: batch.sender_seq,
                        segment_start: self.log.segment_first_seq() == seq,
                        chunk,
                        items,
                        times,
                        expired,
                    });
                }
                Err(e) if e.is_io() => {
                    not_kept.push(reply);
                    io_error = Some(e);
                }
                Err(e) => answers.push((reply, Committed::Refused(e.to_string()))),
            }
        }
        if !staged.is_empty() && io_error.is_none() {
            let began = Instant::now();
            let synced = self.log.sync();
            self.retention
                .metrics
                .fsync
                .record(began.elapsed().as_secs_f64());
            if let Err(e) = synced {
                io_error = Some(e);
            }
        }
        // Entries up to the last fsync are durable, even in a failed group
        // (a segment roll syncs the segment it leaves).
        let durable = self.log.durable_seq();
        let mut chunks = Vec::new();
        for s in staged {
            if s.seq >= durable {
                not_kept.push(s.reply);
                continue;
            }
            let t = &mut self.retention.tracker;
            if s.segment_start {
                t.segment_started(s.seq);
            }
            t.observe_with(&s.items, &s.times);
            self.retention
                .watermark
                .store(t.watermark(), Ordering::Release);
            if let Some(site) = &self.retention.site {
                let max = t.clock().max.unwrap_or(0);
                site.logged.store(max, Ordering::Release);
            }
            if !s.sender.is_empty() {
                if let Ok(mut table) = self.table.lock() {
                    table.insert(s.sender, s.sender_seq + 1);
                }
            }
            chunks.push(s.chunk);
            let outcome = Committed::Appended {
                seq: s.seq,
                expired: s.expired,
            };
            answers.push((s.reply, outcome));
        }
        match &io_error {
            Some(e) => self.fail(e),
            None => {
                if let Some(o) = self.outage.take() {
                    tracing::info!("log: writing again after {} failed attempt(s)", o.attempts);
                }
            }
        }
        for (to, outcome) in answers {
            reply(to, outcome);
        }
        let why = self.unavailable_message();
        for to in not_kept {
            reply(to, Committed::Unavailable(why.clone()));
        }
        for chunk in chunks {
            if self.live.send(chunk).is_err() {
                self.failed = Some("the dataflow stopped".into());
            }
        }
        if self.failed.is_none()
            && self.retention.deletes
            && self.outage.is_none()
            && Instant::now() >= self.next_checkpoint
            && !self.retention.maybe_checkpoint(&mut self.log, &self.table)
        {
            self.next_checkpoint = Instant::now() + CHECKPOINT_RETRY;
        }
    }

    /// What a sender is told while the log cannot be written.
    fn unavailable_message(&self) -> String {
        let why = self.outage.as_ref().map_or("", |o| o.why.as_str());
        format!("the log cannot be written ({why}); retry later")
    }
}

/// Answers a request (a sender that went away no longer needs it).
fn reply(to: oneshot::Sender<Committed>, outcome: Committed) {
    let _ = to.send(outcome);
}

/// The records of a batch without those at positions `drop` (sorted).
fn keep_all_but(
    records: &Bytes,
    ends: &[u32],
    items: Vec<Item>,
    drop: &[u32],
) -> (Bytes, Vec<Item>) {
    let mut bytes = Vec::with_capacity(records.len());
    let mut kept = Vec::with_capacity(items.len() - drop.len());
    let mut skip = drop.iter().peekable();
    let mut start = 0usize;
    for (n, item) in items.into_iter().enumerate() {
        let end = ends.get(n).map_or(records.len(), |&e| e as usize);
        if skip.peek() == Some(&&(n as u32)) {
            skip.next();
        } else {
            bytes.extend_from_slice(&records[start..end]);
            kept.push(item);
        }
        start = end;
    }
    (bytes.into(), kept)
}

/// A handle on the commit thread that does not keep it running: the log
/// closes when the last [`Committer`] goes.
pub struct WeakCommitter {
    tx: mpsc::WeakSender<Request>,
}

impl WeakCommitter {
    /// Queues a clock tick at `event_ms` ([`Encoding::Clock`]): appended
    /// if it moves the log's clock (answered `Duplicate` if not). `None`
    /// once the log is closed.
    pub fn tick(&self, event_ms: u64) -> Option<impl std::future::Future<Output = Committed>> {
        let tx = self.tx.upgrade()?;
        let (reply, answer) = oneshot::channel();
        let batch = Batch {
            sender: String::new(),
            sender_seq: 0,
            encoding: Encoding::Clock,
            records: Encoding::tick_bytes(event_ms),
            ends: Vec::new(),
            items: Vec::new(),
        };
        Some(async move {
            match tx.send(Request { batch, reply }).await {
                Ok(()) => answer
                    .await
                    .unwrap_or_else(|_| Committed::Failed("the log is closed".into())),
                Err(_) => Committed::Failed("the log is closed".into()),
            }
        })
    }
}

impl Committer {
    /// A handle that does not keep the commit thread running.
    pub fn downgrade(&self) -> WeakCommitter {
        WeakCommitter {
            tx: self.tx.downgrade(),
        }
    }

    /// Starts the commit thread. `senders` holds each sender's next batch
    /// number (from log recovery); new entries go to `live` in order.
    /// `log_failures` counts failed log writes.
    pub fn start(
        log: LogWriter,
        senders: FxHashMap<String, u64>,
        live: SyncSender<Chunk>,
        retention: Retention,
        log_failures: Arc<AtomicU64>,
    ) -> std::io::Result<(Committer, JoinHandle<()>)> {
        let (tx, mut rx) = mpsc::channel::<Request>(COMMIT_QUEUE);
        let senders: SenderTable = Arc::new(Mutex::new(senders));
        let mut state = CommitLoop {
            log,
            table: senders.clone(),
            live,
            retention,
            outage: None,
            failed: None,
            next_checkpoint: Instant::now(),
            log_failures,
        };
        let thread = std::thread::Builder::new()
            .name("edgeflow-commit".into())
            .spawn(move || {
                while let Some(first) = rx.blocking_recv() {
                    let mut group = vec![first];
                    while let Ok(more) = rx.try_recv() {
                        group.push(more);
                    }
                    state.group(group);
                }
            })?;
        Ok((Committer { tx, senders }, thread))
    }

    /// Next batch number expected from `sender`.
    pub fn next_sender_seq(&self, sender: &str) -> u64 {
        self.senders
            .lock()
            .ok()
            .and_then(|t| t.get(sender).copied())
            .unwrap_or(0)
    }

    /// Queues a batch for the log, in call order; the returned future
    /// resolves once it is durable (or refused). Queue batches of one sender
    /// in their order, then await: they share one fsync.
    pub async fn submit(&self, batch: Batch) -> impl std::future::Future<Output = Committed> {
        let (reply, answer) = oneshot::channel();
        let queued = self.tx.send(Request { batch, reply }).await.is_ok();
        async move {
            match (queued, answer.await) {
                (true, Ok(c)) => c,
                _ => Committed::Failed("the log is closed".into()),
            }
        }
    }

    /// Commits a batch; resolves once it is durable (or refused).
    pub async fn commit(&self, batch: Batch) -> Committed {
        self.submit(batch).await.await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_left_out_keep_the_others_bytes_whole() {
        let records = Bytes::from("{\"a\":1}\n{\"b\":2}\n{\"c\":3}\n");
        let ends = vec![8, 16, 24];
        let item = Item::Report {
            segment: None,
            vehicle: 1,
            device: 1,
            ts: 5,
            speed: 0,
            how: crate::resolve::Matched::OnBoard,
            low_soc: None,
        };
        let (bytes, items) = keep_all_but(&records, &ends, vec![item; 3], &[1]);
        assert_eq!(bytes, Bytes::from("{\"a\":1}\n{\"c\":3}\n"));
        assert_eq!(items.len(), 2);
    }
}
