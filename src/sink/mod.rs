//! The city sinks: a node's aggregate rows delivered to a city's systems
//! (issue 13), beside the files sinks and the push to central.
//!
//! - [`driver`]: the delivery loop every city sink shares, over a
//!   [`driver::Target`] (transport and encoding).
//! - [`ngsi`]: rows as NGSI-LD entities of the Smart Data Models, pure;
//!   [`ngsi_sink`]: their upserts to a context broker.
//! - [`mqtt`]: rows published to an MQTT broker (QoS 1, retained finals).
//! - [`postgres`]: rows upserted into PostgreSQL/PostGIS tables.
//!
//! Every city sink is a task on the node's runtime, fed by the dataflow
//! thread through [`Feeds`] (never blocking it: the task coalesces what it
//! is sent per key in a [`crate::delivery::outbox::Outbox`]). It delivers
//! with the guarantee of the push to central: a batch counts as delivered
//! once the target acknowledged it; the node's log keeps every window past
//! the sink's delivered frontier ([`SinkStatus::delivered`], up to
//! `max_hold`), so a restarted node recomputes and delivers what the target
//! lacks; and the sink's [`crate::delivery::ledger::Ledger`] of
//! acknowledged windows keeps a restart from resending what the target
//! has. What leaves passes the privacy projection
//! ([`crate::aggregate::project`], `privacy.min_vehicles`).

pub mod driver;
pub mod mqtt;
pub mod ngsi;
pub mod ngsi_sink;
pub mod postgres;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use crate::aggregate::Kind;
use crate::dataflow::emit::{Emission, Status};
use crate::reference::Reference;
use crate::topology::{Sink, Topology};

/// Longest a changed row waits for others to share its request.
pub const LINGER: Duration = Duration::from_millis(200);
/// First wait after a failure; doubled per failure up to [`MAX_BACKOFF`],
/// with up to half of it added at random.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// Longest wait after failures (a `Retry-After` may ask for more).
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Longest a sink may take to deliver what is left when the node stops.
pub const DRAIN: Duration = Duration::from_secs(10);

/// What the dataflow thread sends a sink: the final rows and corrections
/// of a batch of emissions, and the batch's watermark.
#[derive(Clone, Debug, Default)]
pub struct Feed {
    /// The rows.
    pub rows: Vec<Emission>,
    /// The largest emission watermark of the batch.
    pub watermark: u64,
}

/// A sink's figures, live (published as metrics by
/// [`SinkStatus::publish_metrics`]).
#[derive(Debug, Default)]
pub struct SinkStatus {
    /// The sink's name (the metrics' `sink` label).
    pub name: String,
    /// The delivered frontier (see [`crate::delivery::gate`]).
    pub delivered: Arc<AtomicU64>,
    /// Requests the target acknowledged (in whole or in part).
    pub batches: AtomicU64,
    /// Rows sent (resends included).
    pub sent: AtomicU64,
    /// Rows the target acknowledged.
    pub acknowledged: AtomicU64,
    /// Rows sent again after a failure.
    pub retried: AtomicU64,
    /// Rows the target refused for good (counted, said in the log).
    pub dead_lettered: AtomicU64,
    /// Corrections of a window older than one the target already has
    /// (an entity never goes back in time), not sent.
    pub superseded: AtomicU64,
    /// Rows found acknowledged in the ledger after a restart, not resent.
    pub already_delivered: AtomicU64,
    /// Windows given up to log retention unacknowledged (`max_hold`).
    pub given_up: AtomicU64,
    /// Rows given up unsent: more than `max_backlog` waited.
    pub dropped: AtomicU64,
    /// Rows waiting or in flight.
    pub backlog: AtomicU64,
    /// How far (event time, ms) the oldest undelivered row is behind the
    /// node's watermark.
    pub oldest_age_ms: AtomicU64,
    /// Whether the last request reached the target.
    pub connected: AtomicBool,
}

impl SinkStatus {
    /// Publishes the figures (label `sink`, the sink's name) to the
    /// installed `metrics` recorder, as they stand: called by the delivery
    /// loop after each step, never per row.
    pub fn publish_metrics(&self) {
        use crate::metrics::*;
        use std::sync::atomic::Ordering::Relaxed;
        let (s, sink) = (self, self.name.clone());
        for (outcome, n) in [
            ("sent", &s.sent),
            ("acknowledged", &s.acknowledged),
            ("retried", &s.retried),
            ("dead_lettered", &s.dead_lettered),
            ("superseded", &s.superseded),
            ("already_delivered", &s.already_delivered),
            ("dropped", &s.dropped),
        ] {
            metrics::counter!(SINK_ROWS, "sink" => sink.clone(), "outcome" => outcome)
                .absolute(n.load(Relaxed));
        }
        metrics::counter!(SINK_REQUESTS, "sink" => sink.clone()).absolute(s.batches.load(Relaxed));
        metrics::counter!(SINK_GIVEN_UP, "sink" => sink.clone()).absolute(s.given_up.load(Relaxed));
        metrics::gauge!(SINK_BACKLOG, "sink" => sink.clone()).set(s.backlog.load(Relaxed) as f64);
        metrics::gauge!(SINK_OLDEST_AGE, "sink" => sink.clone())
            .set(s.oldest_age_ms.load(Relaxed) as f64);
        metrics::gauge!(SINK_CONNECTED, "sink" => sink)
            .set(f64::from(u8::from(s.connected.load(Relaxed))));
    }
}

/// What every city sink of a node shares.
#[derive(Clone)]
pub struct SinkContext {
    /// The node's id (entity ids, topics).
    pub node: String,
    /// Its reference data.
    pub reference: Arc<Reference>,
    /// Window length, ms.
    pub window_ms: u64,
    /// Nothing leaves before the node's watermark reaches this: the log
    /// replay at start passes through values the target already has.
    pub hold_until: Arc<AtomicU64>,
    /// The node's input watermark: a sink never claims more.
    pub input_watermark: Arc<AtomicU64>,
    /// `privacy.min_vehicles`, as a reload leaves it (rows delivered
    /// from then on are held to it).
    pub min_vehicles: Arc<AtomicU64>,
    /// The log directory: a sink keeps its state in `sink-<name>` there
    /// unless told otherwise.
    pub log_dir: PathBuf,
}

/// Where the dataflow thread sends each city sink its emissions.
#[derive(Default)]
pub struct Feeds {
    feeds: Vec<Wanted>,
}

/// What one sink wants of the emissions, and where it takes them.
struct Wanted {
    kinds: Vec<Kind>,
    provisional: bool,
    tx: UnboundedSender<Feed>,
}

impl Feeds {
    /// Whether there is no city sink.
    pub fn is_empty(&self) -> bool {
        self.feeds.is_empty()
    }

    /// Sends each sink the rows of its kinds in `batch`: final rows,
    /// corrections and retractions, provisional rows to a sink that wants
    /// them (a sink that stopped is skipped).
    pub fn send(&self, batch: &[Emission]) {
        let Some(watermark) = batch.iter().map(|e| e.watermark).max() else {
            return;
        };
        for w in &self.feeds {
            let rows = (batch.iter())
                .filter(|e| match e.status {
                    Status::Final | Status::Correction | Status::Retraction => true,
                    Status::Provisional => w.provisional,
                })
                .filter(|e| w.kinds.contains(&e.key.kind))
                .cloned()
                .collect();
            let _ = w.tx.send(Feed { rows, watermark });
        }
    }
}

/// A city sink's task, ready to run on the node's runtime.
pub struct SinkTask {
    /// Its name.
    pub name: String,
    /// Its figures, live.
    pub status: Arc<SinkStatus>,
    /// The task.
    pub run: Run,
}

/// The city sinks of `topology`: their feeds (for the dataflow thread) and
/// their tasks (for the node's runtime).
pub fn start(topology: &Topology, ctx: &SinkContext) -> (Feeds, Vec<SinkTask>) {
    let mut feeds = Feeds::default();
    let mut tasks = Vec::new();
    for sink in &topology.sinks {
        let (kinds, provisional, target) = match sink {
            Sink::Ngsi(cfg) => (
                cfg.kinds.clone(),
                false,
                ngsi_sink::Ngsi::new(cfg.clone(), ctx.clone()).map(boxed),
            ),
            Sink::Mqtt(cfg) => (
                cfg.kinds.clone(),
                cfg.provisional,
                mqtt::Mqtt::new(cfg.clone(), ctx.clone()).map(boxed),
            ),
            Sink::Postgres(cfg) => (
                cfg.kinds.clone(),
                false,
                postgres::Postgres::new(cfg.clone(), ctx.clone()).map(boxed),
            ),
            Sink::Files { .. } | Sink::Central(_) => continue,
        };
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let status = Arc::new(SinkStatus {
            name: sink.name().to_owned(),
            ..SinkStatus::default()
        });
        feeds.feeds.push(Wanted {
            kinds,
            provisional,
            tx,
        });
        let name = sink.name().to_owned();
        let run = match target {
            Ok(t) => t(ctx.clone(), status.clone(), rx),
            Err(e) => {
                let said = format!("sink {name}: {e:#}; nothing is delivered");
                Box::pin(async move {
                    tracing::warn!("{said}");
                    let mut rx = rx;
                    while rx.recv().await.is_some() {}
                }) as Run
            }
        };
        tasks.push(SinkTask { name, status, run });
    }
    (feeds, tasks)
}

/// A sink's task.
type Run = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Starts a target's driver, given its context, figures and feed.
type Starter = Box<dyn FnOnce(SinkContext, Arc<SinkStatus>, UnboundedReceiver<Feed>) -> Run>;

fn boxed<T: driver::Target>(target: T) -> Starter {
    Box::new(move |ctx, status, rx| Box::pin(driver::Driver::new(target, ctx, status).run(rx)))
}
