//! The edge node: QUIC ingest → durable log → dataflow → sinks.
//!
//! ```text
//! QUIC connections ─ validate ─> commit thread ─ fsync ─> ACK
//!                                     │ (bounded: backpressure)
//!                                     v
//!                      runtime::run(Input::Live) ─> emissions ─> files sink
//! ```
//!
//! On start the node opens its log (cutting a torn tail), replays every
//! entry from its checkpoint on into a fresh dataflow (the files sink keeps
//! the rows of windows before it), then accepts new batches; so a restarted
//! node carries on with the state it had, and senders' resends are
//! recognised by their batch numbers. [`EdgeHandle::shutdown`] stops
//! accepting, lets in-flight batches finish, drains the dataflow and writes
//! the sinks one last time.
//!
//! - [`listener`]: the QUIC endpoint, admission, dispatch by ALPN.
//! - [`sinks`]: the files sinks.
//! - [`zones`]: the zone file watcher.
//! - [`reload`]: the topology reloaded in place.
//! - [`site`]: a node as one process of a site (`[cluster]`).
//! - `stop`: winding a node down in order, and its report.
//! - [`certs`]: development certificates.
//! - `observe`: what a `/metrics` scrape reads (the collectors).

pub mod central;
pub mod certs;
pub mod dataflow;
pub mod listener;
mod observe;
pub mod recover;
pub mod reload;
pub mod sinks;
pub mod site;
mod stop;
mod web;
pub mod zones;

pub use certs::{issue_client_cert, make_certs, make_certs_in, CertPaths};
pub use stop::print_report;
use stop::{wind_down, WindDown};
pub use zones::ZONE_POLL;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use thiserror::Error;
use tokio::sync::watch;

use crate::checkpoint::{CheckpointError, Tracker};
use crate::ingest::commit::{Committer, Retention};
use crate::ingest::intake::{Intake, Telemetry};
use crate::ingest::server::{IngestContext, IngestCounters};
use crate::input::Chunk;
use crate::log::disk::Disk;
use crate::observe::Registry;
use crate::push::client::{Feed as PushFeed, PushStatus, Pusher};
use crate::push::intake::Partials;
use crate::runtime::RunSummary;
use crate::sink::{SinkContext, SinkStatus, SinkTask};
use crate::subscribe::hub::{Hub, HubSettings};
use crate::subscribe::server::SubContext;
use crate::topology::Topology;
use crate::wire::budget::Budget;
use tokio::sync::mpsc::UnboundedReceiver;

/// Chunks queued between the commit thread and the dataflow reader.
pub const LIVE_QUEUE: usize = 64;
/// Longest wait at shutdown for subscribers to read their last rows.
pub const SUBSCRIBER_DRAIN: Duration = Duration::from_secs(10);

/// Why a node cannot start or run.
#[derive(Debug, Error)]
pub enum EdgeError {
    /// The topology lacks what the edge role needs.
    #[error("topology: {0}")]
    Topology(String),
    /// The log could not be opened or replayed.
    #[error("log: {0}")]
    Log(#[from] crate::log::LogError),
    /// The log's checkpoint could not be read.
    #[error("log: {0}")]
    Checkpoint(#[from] CheckpointError),
    /// The server could not start.
    #[error("ingest: {0}")]
    Server(#[from] crate::node::listener::ListenError),
    /// A thread or runtime could not start, or the dataflow failed.
    #[error("runtime: {0}")]
    Runtime(String),
    /// The observability listener could not start.
    #[error("{0}")]
    Observe(#[from] crate::observe::http::HttpError),
    /// The live map's listener could not start.
    #[error("{0}")]
    Web(#[from] crate::web::WebError),
    /// A process of a site was stopped while the others ran on: its
    /// dataflow cannot end alone. Its log holds every record it
    /// acknowledged; the site restarts from the logs.
    #[error("process {process} of the site stopped alone: the other processes did not stop within [cluster] stop_wait ({} s), and the site's dataflow ends only with every process's input. Its log holds every record it acknowledged. The others stop (exit 3) once it is gone: restart every process of the site (docs/SCALING.md, \"Restarting a site\")", waited.as_secs())]
    StoppedAlone {
        /// This process's index.
        process: usize,
        /// How long it waited for the others.
        waited: std::time::Duration,
    },
}

/// What a node did, reported when it stops.
#[derive(Debug)]
pub struct EdgeReport {
    /// The dataflow's run summary.
    pub summary: RunSummary,
    /// Entries found in the log at start.
    pub recovered_entries: u64,
    /// Bytes of torn tail cut at start.
    pub truncated_bytes: u64,
    /// Log entries lost to damage skipped at start (`[log] on_corruption
    /// = "skip"`).
    pub skipped_entries: u64,
    /// Ingest counters.
    pub counters: Arc<IngestCounters>,
    /// An edge's central sink.
    pub push: Option<Arc<PushStatus>>,
    /// A central node's edges.
    pub edges: Option<Arc<central::EdgeMarks>>,
    /// The city sinks, by name.
    pub sinks: Vec<(String, Arc<SinkStatus>)>,
}

/// A running node.
pub struct EdgeHandle {
    /// The bound UDP address.
    pub addr: SocketAddr,
    /// A central node's edges: their pushed watermarks, updates applied
    /// and unchanged, live.
    pub edges: Option<Arc<central::EdgeMarks>>,
    /// An edge's central sink: what it pushed, live.
    pub push: Option<Arc<PushStatus>>,
    /// The city sinks, by name: what they delivered, live.
    pub sinks: Vec<(String, Arc<SinkStatus>)>,
    /// Ingest counters, live.
    pub counters: Arc<IngestCounters>,
    /// The budget of buffered frame bytes, live.
    pub budget: Budget,
    /// Zone files loaded and handed to the dataflow since the start.
    pub zone_reloads: Arc<AtomicU64>,
    /// The node's metrics and readiness.
    pub registry: Arc<Registry>,
    /// Reloads the topology in place ([`reload`]).
    pub reloader: Arc<reload::Reloader>,
    /// The observability listener's address, when it has one.
    pub observe_addr: Option<SocketAddr>,
    /// The live map's address (`[web] listen`), when it serves one.
    pub web_addr: Option<SocketAddr>,
    /// Set when the dataflow ends: before a shutdown, only if it failed
    /// (in a cluster: another process of the site was lost).
    pub dataflow_ended: Arc<std::sync::atomic::AtomicBool>,
    observe: Option<crate::observe::http::Server>,
    shutdown: watch::Sender<bool>,
    thread: JoinHandle<Result<EdgeReport, EdgeError>>,
}

impl EdgeHandle {
    /// Reads the topology file again and applies what may change in
    /// place, or changes nothing ([`reload`]).
    pub fn reload(&self) -> Result<reload::Reloaded, reload::ReloadError> {
        self.reloader.reload()
    }

    /// Stops the node gracefully and waits for it (`/ready` answers 503
    /// from the start of it; the listener stops last).
    pub fn shutdown(self) -> Result<EdgeReport, EdgeError> {
        self.registry.ready.stopping.store(true, Ordering::Release);
        let _ = self.shutdown.send(true);
        let report = self
            .thread
            .join()
            .map_err(|_| EdgeError::Runtime("the node thread panicked".into()))?;
        drop(self.observe);
        report
    }
}

/// The role a node plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Devices send telemetry (`edgeflow-ingest/1`); the dataflow computes
    /// aggregates (and, with a central sink, pushes partials).
    Edge,
    /// Edges push partials (`edgeflow-push/1`); the dataflow merges them
    /// city-wide ([`central`]).
    Central,
}

/// Starts an edge node; returns once it listens.
pub fn start(topology: Topology, workers: usize) -> Result<EdgeHandle, EdgeError> {
    start_on(topology, workers, Disk::real())
}

/// Starts a central node; returns once it listens.
pub fn start_central(topology: Topology, workers: usize) -> Result<EdgeHandle, EdgeError> {
    start_as(Role::Central, topology, workers, Disk::real())
}

/// [`start`] with its log on `disk` (a simulated one in power-loss tests).
pub fn start_on(topology: Topology, workers: usize, disk: Disk) -> Result<EdgeHandle, EdgeError> {
    start_as(Role::Edge, topology, workers, disk)
}

/// Starts a node in `role` with its log on `disk`: recover (open and check
/// the log), build (hub, zone watcher, dataflow), replay the log into the
/// dataflow, serve (commit thread, listener).
pub fn start_as(
    role: Role,
    topology: Topology,
    workers: usize,
    disk: Disk,
) -> Result<EdgeHandle, EdgeError> {
    let ingest = topology
        .ingest
        .clone()
        .ok_or_else(|| EdgeError::Topology("the edge role needs an [ingest] section".into()))?;
    let log = topology
        .log
        .clone()
        .ok_or_else(|| EdgeError::Topology("the edge role needs a [log] section".into()))?;
    // The observability listener first: /ready says 503 while the log
    // is recovered.
    let registry = Arc::new(Registry::new());
    let observe = topology
        .observability
        .map(|addr| crate::observe::http::serve(addr, registry.clone()))
        .transpose()?;
    let recovery_started = std::time::Instant::now();
    let recovered = recover::open(&topology, &log, disk.clone())?;
    let built = build(role, &topology, &ingest, workers, &recovered.resume)?;
    registry.ready.dataflow.store(true, Ordering::Release);
    let intake = intake(role, &topology, &built.reference)?;
    let mut tracker = Tracker::new(topology.time, &recovered.resume);
    let replayed = recover::replay(
        &topology,
        &log,
        &recovered,
        &built.reference,
        &mut tracker,
        &built.live_tx,
        &built.input_watermark,
    )?;
    if let Some(c) = &topology.cluster {
        // The site's frozen horizon, once every process is up: records of
        // windows frozen anywhere are expired here too.
        let running = || !built.dataflow.is_finished();
        let frozen = site::agreed(&built.site, running, c.addresses.len()).ok_or_else(|| {
            EdgeError::Runtime("the dataflow stopped before the site's processes connected".into())
        })?;
        tracker.freeze(frozen);
        tracing::info!(
            "process {} of {}: the site is connected (frozen horizon {frozen})",
            c.process,
            c.addresses.len()
        );
    }
    built.recovered_to.store(replayed.window, Ordering::Release);
    registry.ready.recovered.store(true, Ordering::Release);
    tracing::info!(
        "log recovered in {:.1} s: {} entries found ({} torn bytes cut, {} entries lost to damage skipped), replayed into the dataflow from the checkpoint on",
        recovery_started.elapsed().as_secs_f64(),
        recovered.recovery.entries,
        recovered.recovery.truncated_bytes,
        recovered.recovery.skipped.iter().map(|s| s.entries).sum::<u64>(),
    );
    serve(Serve {
        registry,
        observe,
        role,
        topology,
        ingest,
        log,
        intake,
        disk,
        recovered,
        next: replayed.next,
        tracker,
        built,
    })
}

/// Who may connect to a node in `role`, and what they send: fleets'
/// telemetry to an edge, edges' partials to central (at least one of
/// them configured).
fn intake(
    role: Role,
    topology: &Topology,
    reference: &Arc<crate::reference::Reference>,
) -> Result<Arc<dyn Intake>, EdgeError> {
    match role {
        Role::Edge if topology.fleets.is_empty() => Err(EdgeError::Topology(
            "no [[fleet]]: nobody could send telemetry".into(),
        )),
        Role::Edge => Ok(Arc::new(Telemetry {
            reference: reference.clone(),
            token_hashes: arc_swap::ArcSwap::from_pointee(Telemetry::token_hashes(topology)),
        })),
        Role::Central if topology.edges.is_empty() => Err(EdgeError::Topology(
            "no [[edge]]: no edge could push to this central node".into(),
        )),
        Role::Central => Ok(Arc::new(Partials {
            reference: reference.clone(),
            edges: arc_swap::ArcSwap::from_pointee(topology.edges.clone()),
            window_ms: topology.time.size_ms,
        })),
    }
}

/// What [`build`] starts: the dataflow fed live (with its files sinks and
/// the subscription hub), the zone watcher, and what the listener and the
/// commit thread need of them.
struct Built {
    /// A central sink's push task, to start on the node's runtime.
    push: Option<(Pusher, UnboundedReceiver<PushFeed>, Arc<PushStatus>)>,
    /// A central node's edges.
    edges: Option<Arc<central::EdgeMarks>>,
    /// The city sinks' tasks, to start on the node's runtime.
    sinks: Vec<SinkTask>,
    reference: Arc<crate::reference::Reference>,
    hub: Option<Arc<Hub>>,
    sub_ctx: Option<Arc<SubContext>>,
    stopping_tx: watch::Sender<bool>,
    budget: Budget,
    live_tx: mpsc::SyncSender<Chunk>,
    sinks_durable: Arc<AtomicU64>,
    zone_reloads: Arc<AtomicU64>,
    zone_watch: Option<mpsc::Sender<()>>,
    recovered_to: Arc<AtomicU64>,
    dataflow: JoinHandle<Result<RunSummary, crate::runtime::RunError>>,
    input_watermark: Arc<AtomicU64>,
    emitted: Arc<dataflow::Emitted>,
    live_stats: Arc<crate::pipeline::LiveStats>,
    hub_for_metrics: Option<Arc<Hub>>,
    /// The city sinks' `min_vehicles`, for reloads.
    sink_privacy: Arc<AtomicU64>,
    /// Ticks at each reload, for subscriptions.
    reloads_tx: watch::Sender<u64>,
    /// What the processes of a cluster tell each other.
    site: Arc<crate::runtime::SiteLink>,
    /// Set when the dataflow thread ends.
    dataflow_ended: Arc<std::sync::atomic::AtomicBool>,
}

/// Starts the node's parts that do not listen: the subscription hub (when
/// operators may subscribe), the zone watcher, and the dataflow thread with
/// its files sinks, fed live from `resume` on.
fn build(
    role: Role,
    topology: &Topology,
    ingest: &crate::topology::Ingest,
    workers: usize,
    resume: &crate::checkpoint::Resume,
) -> Result<Built, EdgeError> {
    // A cluster's processes other than 0 get no emissions: they have no
    // sinks and serve no subscriptions (process 0 does, for the site).
    let emits = topology.cluster.as_ref().is_none_or(|c| c.emits());
    let stripped;
    let topology = if emits {
        topology
    } else {
        let mut t = topology.clone();
        t.sinks.clear();
        t.operators.clear();
        stripped = t;
        &stripped
    };
    let reference = Arc::new(topology.reference.clone());
    // Subscriptions: a hub fed by the dataflow, when operators may subscribe.
    let operators = topology.operators.clone();
    let epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let hub = (!operators.is_empty()).then(|| {
        Arc::new(Hub::new(
            reference.clone(),
            topology.time,
            HubSettings {
                min_vehicles: topology.privacy_min_vehicles,
                max_pending: topology.sub_max_pending,
                max_lag: topology.sub_max_lag,
            },
            epoch,
        ))
    });
    let (stopping_tx, stopping_rx) = watch::channel(false);
    let budget = Budget::new(ingest.limits.max_buffered_bytes);
    let (reloads_tx, reloads_rx) = watch::channel(0u64);
    let sub_ctx = hub.as_ref().map(|hub| {
        Arc::new(SubContext {
            hub: hub.clone(),
            operators: arc_swap::ArcSwap::from_pointee(operators),
            reloads: reloads_rx,
            reference: reference.clone(),
            request_timeout: ingest.hello_timeout,
            budget: budget.clone(),
            stopping: stopping_rx,
        })
    });
    let (live_tx, live_rx) = mpsc::sync_channel::<Chunk>(LIVE_QUEUE);
    let sinks_durable = Arc::new(AtomicU64::new(0));

    // Zone file reloads.
    let zones = zones::Watcher::start(topology.zone_file.clone(), reference.clone())
        .map_err(|e| EdgeError::Runtime(e.to_string()))?;
    // Set once the log is replayed: the window the replay reaches.
    let recovered_to = Arc::new(AtomicU64::new(u64::MAX));
    // The dataflow, fed live, and its files sinks.
    let edges = (role == Role::Central).then(|| {
        let names = topology.edges.iter().map(|e| e.name.clone()).collect();
        let timeout = topology.straggler_timeout.as_millis() as u64;
        Arc::new(central::EdgeMarks::new(
            names,
            topology.time.size_ms,
            timeout,
        ))
    });
    // The input watermark, as the commit thread follows the log; bounds
    // what the hub tells subscribers. Central's is its edges' (published
    // by its dataflow thread): the log's telemetry clock sees no records.
    let input_watermark = match (&hub, role) {
        (Some(h), Role::Edge) => h.input_watermark(),
        _ => Arc::new(AtomicU64::new(0)),
    };
    // A central sink: its push task, fed by the dataflow thread.
    let central_sink = topology.sinks.iter().find_map(|s| match s {
        crate::topology::Sink::Central(c) => Some(c.clone()),
        _ => None,
    });
    let (push_tx, push) = match central_sink {
        Some(sink) if role == Role::Edge => {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let status = Arc::new(PushStatus::default());
            let pusher = Pusher {
                sink,
                sender: topology.node_id.clone(),
                reference: reference.clone(),
                window_ms: topology.time.size_ms,
                hold_until: recovered_to.clone(),
                input_watermark: input_watermark.clone(),
                status: status.clone(),
            };
            (Some(tx), Some((pusher, rx, status)))
        }
        _ => (None, None),
    };
    // The city sinks: tasks fed by the dataflow thread. Central's
    // watermark is its edges' completeness, published by its dataflow.
    let sink_watermark = match role {
        Role::Edge => input_watermark.clone(),
        Role::Central => Arc::new(AtomicU64::new(0)),
    };
    let sink_privacy = Arc::new(AtomicU64::new(topology.privacy_min_vehicles));
    let (city, sinks) = crate::sink::start(
        topology,
        &SinkContext {
            node: topology.node_id.clone(),
            reference: reference.clone(),
            window_ms: topology.time.size_ms,
            hold_until: recovered_to.clone(),
            input_watermark: sink_watermark.clone(),
            min_vehicles: sink_privacy.clone(),
            log_dir: topology
                .log
                .as_ref()
                .map(|l| l.dir.clone())
                .unwrap_or_default(),
        },
    );
    let emitted = Arc::new(dataflow::Emitted::default());
    let live_stats = Arc::new(crate::pipeline::LiveStats::default());
    // What process 0 tells the others: how far all its outputs are durable.
    let gates = std::iter::once(sinks_durable.clone())
        .chain(push.iter().map(|(_, _, status)| status.delivered.clone()))
        .chain(sinks.iter().map(|t| t.status.delivered.clone()))
        .collect();
    let site = Arc::new(crate::runtime::SiteLink::with_gates(gates));
    let dataflow_ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let dataflow = match &edges {
        None => dataflow::start(dataflow::Feed {
            emitted: emitted.clone(),
            live_stats: live_stats.clone(),
            city,
            push: push_tx,
            topology: topology.clone(),
            reference: reference.clone(),
            workers,
            resume: resume.clone(),
            hub: hub.clone(),
            live: live_rx,
            zones: zones.changes,
            sinks_durable: sinks_durable.clone(),
            recovered_to: recovered_to.clone(),
            cluster: topology.cluster.clone(),
            site: site.clone(),
            ended: dataflow_ended.clone(),
        })?,
        Some(edges) => central::start(central::CentralFeed {
            topology: topology.clone(),
            reference: reference.clone(),
            workers,
            hub: hub.clone(),
            live: live_rx,
            sinks_durable: sinks_durable.clone(),
            recovered_to: recovered_to.clone(),
            edges: edges.clone(),
            watermark: sink_watermark,
            city,
            emitted: emitted.clone(),
        })?,
    };
    Ok(Built {
        push,
        edges,
        sinks,
        reference,
        hub_for_metrics: hub.clone(),
        hub,
        sub_ctx,
        stopping_tx,
        budget,
        live_tx,
        sinks_durable,
        zone_reloads: zones.reloads,
        zone_watch: zones.stop,
        recovered_to,
        dataflow,
        input_watermark,
        emitted,
        live_stats,
        sink_privacy,
        reloads_tx,
        site,
        dataflow_ended,
    })
}

/// Everything [`serve`] takes over.
struct Serve {
    registry: Arc<Registry>,
    observe: Option<crate::observe::http::Server>,
    role: Role,
    topology: Topology,
    ingest: crate::topology::Ingest,
    log: crate::topology::Log,
    intake: Arc<dyn Intake>,
    disk: Disk,
    recovered: recover::Recovered,
    next: rustc_hash::FxHashMap<String, u64>,
    tracker: Tracker,
    built: Built,
}

/// Starts the commit thread on the recovered log and the listener; returns
/// once the node listens.
fn serve(s: Serve) -> Result<EdgeHandle, EdgeError> {
    let Serve {
        registry,
        observe,
        role,
        topology,
        ingest,
        log,
        intake,
        disk,
        recovered,
        next,
        tracker,
        built,
    } = s;
    let Built {
        push,
        edges,
        sinks,
        reference,
        hub,
        sub_ctx,
        stopping_tx,
        budget,
        live_tx,
        sinks_durable,
        zone_reloads,
        zone_watch,
        recovered_to: _,
        dataflow,
        input_watermark,
        emitted,
        live_stats,
        hub_for_metrics,
        sink_privacy,
        reloads_tx,
        site,
        dataflow_ended,
    } = built;
    let handle_budget = budget.clone();
    let recovery = recovered.recovery;
    let cluster = topology.cluster.clone();
    // A process other than 0 keeps its log until process 0's outputs are
    // durable past it.
    let sinks_durable = match &cluster {
        Some(c) if !c.emits() => site.durable.clone(),
        _ => sinks_durable,
    };
    let retention = Retention {
        site: cluster.as_ref().map(|_| site.clone()),
        metrics: registry.scope(crate::ingest::commit::LogMetrics::registered),
        tracker,
        reference: reference.clone(),
        dir: log.dir.clone(),
        sinks_durable,
        settings: recovered.settings,
        disk,
        watermark: input_watermark.clone(),
        // Central's log is its state: its tracker follows no records, so
        // it would see every segment as retired.
        deletes: role == Role::Edge,
        gates: (push.iter().map(|(_, _, status)| status.delivered.clone()))
            .chain(sinks.iter().map(|t| t.status.delivered.clone()))
            .collect(),
    };
    let sink_status: Vec<(String, Arc<SinkStatus>)> = (sinks.iter())
        .map(|t| (t.name.clone(), t.status.clone()))
        .collect();
    let report_sinks = sink_status.clone();
    let push_status = push.as_ref().map(|(_, _, s)| s.clone());
    let (report_push, report_edges) = (push_status.clone(), edges.clone());
    let counters = Arc::new(IngestCounters::default());
    if let Some(edges) = edges.clone() {
        registry.collect(Box::new(move || edges.publish_metrics()));
    }
    observe::collectors(&observe::Collectors {
        registry: &registry,
        counters: &counters,
        budget: &budget,
        sinks: &sink_status,
        watermark: &input_watermark,
        log_dir: &log.dir,
        emitted: &emitted,
        live_stats: &live_stats,
        hub: &hub_for_metrics,
        recovered_entries: recovery.entries,
    });
    let (committer, commit_thread) = Committer::start(
        recovered.writer,
        next,
        live_tx,
        retention,
        counters.log_failures.clone(),
    )
    .map_err(|e| EdgeError::Runtime(e.to_string()))?;
    let follow_log = committer.downgrade();
    let ctx = Arc::new(IngestContext::new(
        reference,
        intake,
        committer,
        ingest.clone(),
        counters.clone(),
        topology.time.max_future_ms,
        budget,
    ));
    let reloader = Arc::new(reload::Reloader::new(
        &topology,
        reload::Parts {
            role,
            ingest: Arc::downgrade(&ctx),
            subscriptions: sub_ctx.clone(),
            hub: hub.clone(),
            sink_privacy,
            reloads: reloads_tx,
        },
    ));
    let reload_counts = reloader.counts.clone();
    registry.collect(Box::new(move || reload_counts.publish_metrics()));
    let thread_reloader = reloader.clone();

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (addr_tx, addr_rx) =
        mpsc::channel::<Result<(SocketAddr, Option<SocketAddr>, Arc<IngestCounters>), EdgeError>>();
    // The live map: bound now, so that a taken port fails the start.
    let web = web::bind(&topology, &ingest, sub_ctx.as_ref(), cluster.as_ref())?;
    let web_addr = web.as_ref().map(|(bound, _)| bound.addr);
    let recovered_entries = recovery.entries;
    let truncated_bytes = recovery.truncated_bytes;
    let skipped_entries = recovery.skipped.iter().map(|s| s.entries).sum();
    let thread_registry = registry.clone();
    let thread = std::thread::Builder::new()
        .name("edgeflow-edge".into())
        .spawn(move || {
            let ready = &thread_registry.ready;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| EdgeError::Runtime(e.to_string()))?;
            let counters = ctx.counters.clone();
            let push = push.map(|(pusher, feed, _)| runtime.spawn(pusher.run(feed)));
            let sinks: Vec<_> = sinks.into_iter().map(|t| runtime.spawn(t.run)).collect();
            if cluster.is_some() {
                runtime.spawn(site::follow(site, follow_log, shutdown_rx.clone()));
            }
            let web = web.map(|(bound, ctx)| runtime.spawn(web::serve(bound, ctx)));
            let subs = match (sub_ctx, &cluster) {
                (Some(s), _) => Ok(s),
                (None, Some(c)) if !c.emits() => Err("subscriptions to a site are served by its process 0 ([cluster] processes), which gets every aggregate; this process only ingests"),
                (None, _) => Err("this node has no operators"),
            };
            let served = runtime.block_on(async {
                let alpn = match role {
                    Role::Edge => crate::ingest::frame::ALPN,
                    Role::Central => crate::push::ALPN,
                };
                let endpoint = match crate::node::listener::endpoint(&ingest, alpn) {
                    Ok(e) => e,
                    Err(e) => {
                        let _ = addr_tx.send(Err(EdgeError::Server(e)));
                        return None;
                    }
                };
                let addr = endpoint.local_addr().unwrap_or(ingest.listen);
                let _ = thread_reloader.endpoint.set(endpoint.clone());
                ready.listening.store(true, Ordering::Release);
                let _ = addr_tx.send(Ok((addr, web_addr, ctx.counters.clone())));
                let subs =
                    crate::node::listener::serve(endpoint.clone(), ctx, subs, shutdown_rx).await;
                Some((endpoint, subs))
            });
            let summary = wind_down(WindDown {
                runtime,
                served,
                push,
                sinks,
                zone_watch,
                commit_thread,
                dataflow,
                hub,
                stopping_tx,
                web,
                site: cluster.as_ref().map(|c| (c.process, c.stop_wait)),
            });
            Ok(EdgeReport {
                summary: summary?,
                recovered_entries,
                truncated_bytes,
                skipped_entries,
                counters,
                push: report_push,
                edges: report_edges,
                sinks: report_sinks,
            })
        })
        .map_err(|e| EdgeError::Runtime(e.to_string()))?;
    match addr_rx.recv() {
        Ok(Ok((addr, web_addr, counters))) => Ok(EdgeHandle {
            push: push_status,
            sinks: sink_status,
            edges,
            addr,
            counters,
            budget: handle_budget,
            zone_reloads,
            reloader,
            observe_addr: observe.as_ref().map(|o| o.addr),
            web_addr,
            dataflow_ended,
            observe,
            registry,
            shutdown: shutdown_tx,
            thread,
        }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => match thread.join() {
            Ok(Err(e)) => Err(e),
            _ => Err(EdgeError::Runtime("the node stopped while starting".into())),
        },
    }
}
