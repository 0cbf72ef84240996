//! A central node's dataflow thread: its log's entries (edges' push
//! batches, in log order) through central's merge
//! ([`crate::dataflow::central`]), every batch of emissions to the files
//! sinks and the subscription hub, as an edge's dataflow thread does.
//!
//! ```text
//! log entries ─ feeder: read (push::inbox), edge marks, central watermark
//!      │ broadcast, in log order
//!      v
//! worker k: the updates of the keys it owns -> Upserts -> central dataflow
//!      │ (worker 0) emissions
//!      v
//! this thread: files sinks, hub
//! ```
//!
//! Central's watermark is the oldest of its edges' pushed watermarks (an
//! edge that has pushed nothing yet holds it at 0), so a window is final at
//! central once every edge has passed it. It is a function of the log
//! alone: a restarted central, replaying its log, reaches the same state.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::sinks::FilesSinks;
use super::EdgeError;
use crate::dataflow::central::{self, Upserts};
use crate::dataflow::emit::{Emission, EmitStats, Status};
use crate::dataflow::partials::{PartialKey, PartialValue};
use crate::dataflow::ZoneFlow;
use crate::geo::zones::Membership;
use crate::input::Chunk;
use crate::log::Encoding;
use crate::output::FinalTable;
use crate::push::completeness::Completeness;
use crate::reference::Reference;
use crate::runtime::{RunError, RunSummary};
use crate::subscribe::hub::Hub;
use crate::topology::Topology;

/// How long a worker waits for the next batch before stepping anyway, and
/// this thread for emissions before writing the sinks if due.
const POLL: Duration = Duration::from_millis(50);

/// What central knows of its edges, live: each edge's pushed watermark,
/// the stragglers and the windows final without them
/// ([`Completeness`]), and what became of the updates.
#[derive(Debug)]
pub struct EdgeMarks {
    /// The edges, in topology order.
    pub names: Vec<String>,
    /// Central's watermark, its edges' marks and stragglers.
    pub completeness: Mutex<Completeness>,
    /// Updates that changed a partial.
    pub applied: AtomicU64,
    /// Updates equal to what their edge sent last for their key: resends
    /// after a reconnect or an edge's restart, and final values equal to
    /// the last provisional one. Applied once, they change nothing.
    pub unchanged: AtomicU64,
    /// Updates of windows already retired at central (older than
    /// `[windows] retention` behind its watermark): they could change
    /// nothing, and are dropped.
    pub expired: AtomicU64,
    /// Log entries from no configured edge, or that no longer read
    /// (central's settings changed since they were logged): skipped.
    pub skipped: AtomicU64,
}

impl EdgeMarks {
    /// No edge has pushed yet; windows of `window_ms`, stragglers left
    /// out after `timeout_ms` of event time.
    pub fn new(names: Vec<String>, window_ms: u64, timeout_ms: u64) -> Self {
        EdgeMarks {
            completeness: Mutex::new(Completeness::new(names.len(), window_ms, timeout_ms)),
            names,
            applied: AtomicU64::new(0),
            unchanged: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
        }
    }

    /// A copy of the completeness state.
    pub fn snapshot(&self) -> Option<Completeness> {
        self.completeness.lock().ok().map(|c| c.clone())
    }

    /// Publishes the updates by outcome and each edge's pushed watermark
    /// and straggling (inside a node registry's scope; one series per
    /// configured edge).
    pub fn publish_metrics(&self) {
        use crate::metrics as M;
        for (outcome, n) in [
            ("applied", &self.applied),
            ("unchanged", &self.unchanged),
            ("expired", &self.expired),
        ] {
            metrics::counter!(M::CENTRAL_UPDATES, "outcome" => outcome)
                .absolute(n.load(Ordering::Relaxed));
        }
        metrics::counter!(M::CENTRAL_SKIPPED).absolute(self.skipped.load(Ordering::Relaxed));
        if let Some(c) = self.snapshot() {
            for ((name, mark), straggling) in self.names.iter().zip(c.marks()).zip(c.straggling()) {
                metrics::gauge!(M::CENTRAL_EDGE_WATERMARK, "edge" => name.clone())
                    .set(*mark as f64);
                metrics::gauge!(M::CENTRAL_EDGE_STRAGGLING, "edge" => name.clone())
                    .set(f64::from(u8::from(*straggling)));
            }
        }
    }

    /// `edges.csv` of a files sink: each edge's pushed watermark and
    /// whether it is a straggler now.
    pub fn edges_csv(&self) -> String {
        let mut out = String::from(EDGES_HEADER);
        out.push('\n');
        if let Some(c) = self.snapshot() {
            for ((name, mark), straggling) in self.names.iter().zip(c.marks()).zip(c.straggling()) {
                out += &format!("{name},{mark},{straggling}\n");
            }
        }
        out
    }

    /// `missing.csv` of a files sink: every window that went final without
    /// an edge, and the edge.
    pub fn missing_csv(&self) -> String {
        let mut out = String::from(MISSING_HEADER);
        out.push('\n');
        if let Some(c) = self.snapshot() {
            for &(window, edge) in c.missing() {
                out += &format!("{window},{}\n", self.names[edge]);
            }
        }
        out
    }
}

/// Header of a central files sink's `edges.csv`.
pub const EDGES_HEADER: &str = "edge,pushed_watermark_ms,straggling";
/// Header of a central files sink's `missing.csv`.
pub const MISSING_HEADER: &str = "window_start_ms,edge";

/// What central's dataflow thread is fed and feeds.
pub struct CentralFeed {
    /// The node's topology.
    pub topology: Topology,
    /// Its reference data.
    pub reference: Arc<Reference>,
    /// Worker threads.
    pub workers: usize,
    /// The subscription hub, when operators may subscribe.
    pub hub: Option<Arc<Hub>>,
    /// The log's entries, in order.
    pub live: mpsc::Receiver<Chunk>,
    /// Where the files sinks publish how far they are durable.
    pub sinks_durable: Arc<AtomicU64>,
    /// The window the log replay reaches: no sink write before it.
    pub recovered_to: Arc<AtomicU64>,
    /// The edges' marks, published here.
    pub edges: Arc<EdgeMarks>,
    /// Central's watermark (its edges' completeness), published here for
    /// the city sinks.
    pub watermark: Arc<AtomicU64>,
    /// The city sinks' feeds.
    pub city: crate::sink::Feeds,
    /// Rows emitted, by status (for `/metrics`).
    pub emitted: Arc<super::dataflow::Emitted>,
}

/// One log entry, read: its edge's updates and central's watermark once
/// they are in.
struct Step {
    edge: u32,
    updates: Vec<(PartialKey, PartialValue)>,
    watermark: u64,
}

/// Starts central's dataflow thread; it ends when the log's hand-over
/// ends, with the run's summary (an error if the sinks' last write
/// failed).
pub fn start(feed: CentralFeed) -> Result<JoinHandle<Result<RunSummary, RunError>>, EdgeError> {
    std::thread::Builder::new()
        .name("edgeflow-central".into())
        .spawn(move || run(feed))
        .map_err(|e| EdgeError::Runtime(e.to_string()))
}

fn run(feed: CentralFeed) -> Result<RunSummary, RunError> {
    let start = Instant::now();
    let CentralFeed {
        topology,
        reference,
        workers,
        hub,
        live,
        sinks_durable,
        recovered_to,
        edges,
        watermark: central_watermark,
        city,
        emitted,
    } = feed;
    let workers = workers.max(1);
    let spec = topology.time;
    let (step_txs, step_rxs): (Vec<_>, Vec<_>) =
        (0..workers).map(|_| mpsc::channel::<Arc<Step>>()).unzip();
    let step_rxs = Arc::new(Mutex::new(
        step_rxs.into_iter().map(Some).collect::<Vec<_>>(),
    ));
    let feeder = {
        let (reference, edges, hub) = (reference.clone(), edges.clone(), hub.clone());
        std::thread::Builder::new()
            .name("edgeflow-central-feed".into())
            .spawn(move || {
                feed_steps(
                    live,
                    &reference,
                    spec.size_ms,
                    &edges,
                    (hub, central_watermark),
                    step_txs,
                )
            })
            .map_err(|e| RunError::Dataflow(format!("cannot start the feeder: {e}")))?
    };
    let (emit_tx, emit_rx) = mpsc::channel::<Vec<Emission>>();
    let emit_tx = Arc::new(Mutex::new(Some(emit_tx)));
    let zones = ZoneFlow::of(&reference);
    let membership = Arc::new(if zones.is_some() {
        reference.membership(&reference.zones)
    } else {
        Membership::default()
    });
    let provisional = hub.is_some();
    let counts = edges.clone();
    let config = if workers == 1 {
        timely::Config::thread()
    } else {
        timely::Config::process(workers)
    };
    let guards = timely::execute(config, move |worker| {
        let me = worker.index();
        let peers = worker.peers();
        let sender = (me == 0)
            .then(|| emit_tx.lock().ok().and_then(|mut t| t.take()))
            .flatten();
        let (mut inputs, completion) =
            central::build(worker, spec, provisional, zones.clone(), sender);
        if me == 0 {
            inputs.zones.update(&Membership::default(), &membership);
        }
        let rx = step_rxs
            .lock()
            .ok()
            .and_then(|mut r| r.get_mut(me).and_then(Option::take));
        let mut upserts = Upserts::default();
        if let Some(rx) = rx {
            loop {
                let first = match rx.recv_timeout(POLL) {
                    Ok(step) => Some(step),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                };
                // What else waits goes in before the next step.
                let waiting = std::iter::from_fn(|| rx.try_recv().ok());
                for step in first.into_iter().chain(waiting) {
                    let (mut applied, mut unchanged, mut expired) = (0, 0, 0);
                    for (key, value) in &step.updates {
                        if owner(key, peers) != me {
                            continue;
                        }
                        if spec.retire_at(key.window) <= inputs.time() {
                            expired += 1;
                        } else if upserts.apply(&mut inputs, step.edge, *key, value.clone()) {
                            applied += 1;
                        } else {
                            unchanged += 1;
                        }
                    }
                    counts.applied.fetch_add(applied, Ordering::Relaxed);
                    counts.unchanged.fetch_add(unchanged, Ordering::Relaxed);
                    counts.expired.fetch_add(expired, Ordering::Relaxed);
                    upserts.advance(&mut inputs, &spec, step.watermark);
                }
                // Flush what was applied at the current time.
                let now = inputs.time();
                inputs.advance_to(now);
                worker.step();
            }
        }
        drop(inputs);
        while !completion.done() {
            worker.step();
        }
    })
    .map_err(|e| RunError::Dataflow(format!("central's dataflow failed to start: {e}")))?;

    let mut stats = EmitStats::default();
    let mut sink = FilesSinks::new(
        FinalTable::default(),
        &topology,
        &recovered_to,
        &sinks_durable,
    )
    .with_edges(edges.clone());
    loop {
        match emit_rx.recv_timeout(POLL) {
            Ok(batch) => {
                count(&mut stats, &batch);
                emitted.count(&batch);
                sink.apply(&batch);
                if let Some(hub) = &hub {
                    hub.publish(&batch);
                }
                city.send(&batch);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => sink.write_if_due(),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let joined = guards.join();
    let fed = feeder.join();
    let written = sink.finish();
    if joined.iter().any(Result::is_err) || fed.is_err() {
        return Err(RunError::Dataflow("a central worker panicked".into()));
    }
    if !written {
        return Err(RunError::Dataflow(
            "the files sink's last write failed (see above)".into(),
        ));
    }
    Ok(RunSummary {
        emitted: stats,
        elapsed: start.elapsed(),
        ..RunSummary::default()
    })
}

/// The worker that applies `key`'s upserts (each worker keeps the latest
/// partials of its own keys).
fn owner(key: &PartialKey, peers: usize) -> usize {
    let h = (key.key ^ (key.kind as u64).rotate_left(56)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    ((h >> 32) % peers as u64) as usize
}

/// Counts a batch of emissions by status.
fn count(stats: &mut EmitStats, batch: &[Emission]) {
    for e in batch {
        match e.status {
            Status::Provisional => stats.provisional += 1,
            Status::Final => stats.finals += 1,
            Status::Correction => stats.corrections += 1,
            Status::Retraction => stats.retractions += 1,
        }
    }
}

/// Reads the log's entries in order and hands every worker each one's
/// updates with central's watermark once they are in.
fn feed_steps(
    live: mpsc::Receiver<Chunk>,
    reference: &Reference,
    window_ms: u64,
    edges: &EdgeMarks,
    (hub, watermark_out): (Option<Arc<Hub>>, Arc<AtomicU64>),
    workers: Vec<mpsc::Sender<Arc<Step>>>,
) {
    let resolution = reference.zone_settings.position_resolution;
    let hub_watermark = hub.as_ref().map(|h| h.input_watermark());
    for chunk in live {
        let edge = edges.names.iter().position(|n| **n == *chunk.sender);
        let read = (chunk.encoding == Encoding::Partials)
            .then(|| crate::push::inbox::read(&chunk.data, reference, window_ms, resolution));
        let (Some(edge), Some(Ok((header, updates)))) = (edge, read) else {
            if edges.skipped.fetch_add(1, Ordering::Relaxed) == 0 {
                tracing::warn!(
                    "central: log entry {} (from {:?}) is no push of a configured edge, or no longer reads under central's settings: skipped (counted)",
                    chunk.seq, chunk.sender
                );
            }
            continue;
        };
        let watermark = match edges.completeness.lock() {
            Ok(mut c) => c.pushed(edge, header.watermark_ms),
            Err(_) => return,
        };
        if let Some(w) = &hub_watermark {
            w.fetch_max(watermark, Ordering::AcqRel);
        }
        watermark_out.fetch_max(watermark, Ordering::AcqRel);
        let step = Arc::new(Step {
            edge: edge as u32,
            updates: updates.into_iter().filter_map(Result::ok).collect(),
            watermark,
        });
        for w in &workers {
            let _ = w.send(step.clone());
        }
    }
}
