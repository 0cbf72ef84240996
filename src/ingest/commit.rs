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

use crate::checkpoint::Tracker;
use crate::input::Chunk;
use crate::log::{Encoding, LogWriter};
use crate::pipeline::Item;
use crate::reference::Reference;

/// Least time between two attempts to write a checkpoint after one failed.
pub const CHECKPOINT_RETRY: Duration = Duration::from_secs(10);

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
}

impl Retention {
    /// Writes a checkpoint and deletes segments when the sinks allow it.
    /// False when writing the checkpoint failed (try again later).
    fn maybe_checkpoint(&mut self, log: &mut LogWriter, senders: &SenderTable) -> bool {
        let durable = self.sinks_durable.load(Ordering::Acquire);
        let proposal = match senders.lock() {
            Ok(t) => self.tracker.proposal(&self.reference, &t, durable),
            Err(_) => return true,
        };
        let Some(cp) = proposal else { return true };
        if let Err(e) = cp.store(&self.dir) {
            eprintln!("edgeflow: log retention: cannot write the checkpoint: {e}");
            return false;
        }
        self.tracker.checkpointed(&cp);
        if let Err(e) = log.delete_before(cp.first_seq) {
            // The checkpoint stands; the next start deletes them.
            eprintln!("edgeflow: log retention: {e}");
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
    /// Durable, at this log position.
    Appended(u64),
    /// Already accepted earlier: nothing appended.
    Duplicate,
    /// Not the next batch of its sender: `expected` is.
    Gap {
        /// The next batch number expected.
        expected: u64,
    },
    /// The log failed: the node cannot accept anything.
    Failed(String),
}

struct Request {
    sender: String,
    sender_seq: u64,
    encoding: Encoding,
    records: Bytes,
    resolved: Arc<[Item]>,
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

impl Committer {
    /// Starts the commit thread. `senders` holds each sender's next batch
    /// number (from log recovery); new entries go to `live` in order.
    pub fn start(
        mut log: LogWriter,
        senders: FxHashMap<String, u64>,
        live: SyncSender<Chunk>,
        mut retention: Retention,
    ) -> std::io::Result<(Committer, JoinHandle<()>)> {
        let (tx, mut rx) = mpsc::channel::<Request>(COMMIT_QUEUE);
        let senders: SenderTable = Arc::new(Mutex::new(senders));
        let table = senders.clone();
        let thread = std::thread::Builder::new()
            .name("edgeflow-commit".into())
            .spawn(move || {
                let mut failed: Option<String> = None;
                let mut pending: Vec<(Request, Committed)> = Vec::new();
                let mut chunks = Vec::new();
                let mut next_checkpoint = Instant::now();
                while let Some(first) = rx.blocking_recv() {
                    let mut batch = vec![first];
                    while let Ok(more) = rx.try_recv() {
                        batch.push(more);
                    }
                    for req in batch {
                        let outcome = match &failed {
                            Some(e) => Committed::Failed(e.clone()),
                            None => {
                                let Ok(mut t) = table.lock() else { break };
                                let next = t.get(&req.sender).copied().unwrap_or(0);
                                // The empty sender: unsequenced datagrams, no deduplication.
                                let sequenced = !req.sender.is_empty();
                                if sequenced && req.sender_seq < next {
                                    Committed::Duplicate
                                } else if sequenced && req.sender_seq > next {
                                    Committed::Gap { expected: next }
                                } else {
                                    match log.append(
                                        &req.sender,
                                        req.sender_seq,
                                        req.encoding,
                                        req.records.clone(),
                                    ) {
                                        Ok(seq) => {
                                            if log.segment_first_seq() == seq {
                                                retention.tracker.segment_started(seq);
                                            }
                                            retention.tracker.observe(&req.resolved);
                                            if sequenced {
                                                t.insert(req.sender.clone(), next + 1);
                                            }
                                            chunks.push(
                                                Chunk::from_batch(
                                                    seq,
                                                    req.encoding,
                                                    req.records.clone(),
                                                )
                                                .with_resolved(req.resolved.clone()),
                                            );
                                            Committed::Appended(seq)
                                        }
                                        Err(e) => {
                                            failed = Some(e.to_string());
                                            Committed::Failed(e.to_string())
                                        }
                                    }
                                }
                            }
                        };
                        pending.push((req, outcome));
                    }
                    if !chunks.is_empty() {
                        if let Err(e) = log.sync() {
                            failed = Some(e.to_string());
                            for (_, outcome) in pending.iter_mut() {
                                if matches!(outcome, Committed::Appended(_)) {
                                    *outcome = Committed::Failed(e.to_string());
                                }
                            }
                            chunks.clear();
                        }
                    }
                    for (req, outcome) in pending.drain(..) {
                        // A sender that went away no longer needs its answer.
                        let _ = req.reply.send(outcome);
                    }
                    for chunk in chunks.drain(..) {
                        if live.send(chunk).is_err() {
                            failed = Some("the dataflow stopped".into());
                        }
                    }
                    if failed.is_none()
                        && Instant::now() >= next_checkpoint
                        && !retention.maybe_checkpoint(&mut log, &table)
                    {
                        next_checkpoint = Instant::now() + CHECKPOINT_RETRY;
                    }
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
    /// in their order, then await: they share one fsync. `resolved` are the
    /// batch's records as the dataflow needs them (from validation).
    pub async fn submit(
        &self,
        sender: &str,
        sender_seq: u64,
        encoding: Encoding,
        records: Bytes,
        resolved: Arc<[Item]>,
    ) -> impl std::future::Future<Output = Committed> {
        let (reply, answer) = oneshot::channel();
        let req = Request {
            sender: sender.to_owned(),
            sender_seq,
            encoding,
            records,
            resolved,
            reply,
        };
        let queued = self.tx.send(req).await.is_ok();
        async move {
            match (queued, answer.await) {
                (true, Ok(c)) => c,
                _ => Committed::Failed("the log is closed".into()),
            }
        }
    }

    /// Commits a batch; resolves once it is durable (or refused).
    pub async fn commit(
        &self,
        sender: &str,
        sender_seq: u64,
        encoding: Encoding,
        records: Bytes,
        resolved: Arc<[Item]>,
    ) -> Committed {
        self.submit(sender, sender_seq, encoding, records, resolved)
            .await
            .await
    }
}
