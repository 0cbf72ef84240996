//! The edge node: QUIC ingest → durable log → dataflow → sinks.
//!
//! ```text
//! QUIC connections ─ validate ─> commit thread ─ fsync ─> ACK
//!                                     │ (bounded: backpressure)
//!                                     v
//!                      replay::run(Input::Live) ─> emissions ─> files sink
//! ```
//!
//! On start the node opens its log (cutting a torn tail), replays every
//! entry from its checkpoint on into a fresh dataflow (the files sink keeps
//! the rows of windows before it), then accepts new batches; so a restarted
//! node carries on with the state it had, and senders' resends are
//! recognised by their batch numbers. [`EdgeHandle::shutdown`] stops
//! accepting, lets in-flight batches finish, drains the dataflow and writes
//! the sinks one last time.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::sync::watch;

use crate::aggregate::Kind;
use crate::checkpoint::{Checkpoint, CheckpointError, Settings, Tracker};
use crate::ingest::commit::{Committer, Retention};
use crate::ingest::server::{IngestContext, IngestCounters};
use crate::input::Chunk;
use crate::log::disk::Disk;
use crate::log::{LogReader, LogWriter};
use crate::output::FinalTable;
use crate::replay::{Input, ReplayOptions, RunSummary};
use crate::subscribe::hub::{Hub, HubSettings};
use crate::subscribe::server::{Operator, SubContext};
use crate::topology::{SinkSection, Topology};
use crate::wire::budget::Budget;

/// Chunks queued between the commit thread and the dataflow reader.
pub const LIVE_QUEUE: usize = 64;
/// Least time between two rewrites of a files sink.
pub const SINK_INTERVAL: Duration = Duration::from_secs(1);
/// Longest wait at shutdown for subscribers to read their last rows.
pub const SUBSCRIBER_DRAIN: Duration = Duration::from_secs(10);
/// How often the zone file is checked for changes.
pub const ZONE_POLL: Duration = Duration::from_secs(1);

/// Watches the zone file; when it changes and loads cleanly, sends the
/// membership change to the dataflow. A file with problems is reported and
/// ignored (the zones in force stay). Stops when `stop` is dropped.
fn watch_zones(
    path: PathBuf,
    reference: Arc<crate::reference::Reference>,
    changes: mpsc::Sender<crate::replay::ZoneChange>,
    stop: mpsc::Receiver<()>,
    reloads: Arc<AtomicU64>,
) {
    let modified = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut seen = modified(&path);
    let mut current = reference.membership(&reference.zones);
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(ZONE_POLL) {
        let now = modified(&path);
        if now == seen {
            continue;
        }
        seen = now;
        let loaded = crate::geo::zones::load(&path).and_then(|zones| {
            let problems = crate::geo::zones::check_cover(&zones, &reference.zone_settings);
            if problems.is_empty() {
                Ok(zones)
            } else {
                Err(problems
                    .into_iter()
                    .map(|message| crate::reference::Problem {
                        file: path.clone(),
                        place: "zones.max_position_cells".into(),
                        message,
                    })
                    .collect())
            }
        });
        match loaded {
            Ok(zones) => {
                let next = reference.membership(&zones);
                let (gone, added) = current.diff(&next);
                eprintln!(
                    "edgeflow: zones reloaded from {}: {} zones; {} memberships added, {} removed",
                    path.display(),
                    zones.len(),
                    added.segments.len() + added.chargers.len() + added.cells.len(),
                    gone.segments.len() + gone.chargers.len() + gone.cells.len()
                );
                current = next;
                if changes.send((gone, added)).is_err() {
                    return;
                }
                reloads.fetch_add(1, Ordering::Relaxed);
            }
            Err(problems) => {
                for p in problems {
                    eprintln!("edgeflow: zone file not reloaded: {p}");
                }
            }
        }
    }
}

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
}

/// A running node.
pub struct EdgeHandle {
    /// The bound UDP address.
    pub addr: SocketAddr,
    /// Ingest counters, live.
    pub counters: Arc<IngestCounters>,
    /// The budget of buffered frame bytes, live.
    pub budget: Budget,
    /// Zone files loaded and handed to the dataflow since the start.
    pub zone_reloads: Arc<AtomicU64>,
    shutdown: watch::Sender<bool>,
    thread: JoinHandle<Result<EdgeReport, EdgeError>>,
}

impl EdgeHandle {
    /// Stops the node gracefully and waits for it.
    pub fn shutdown(self) -> Result<EdgeReport, EdgeError> {
        let _ = self.shutdown.send(true);
        self.thread
            .join()
            .map_err(|_| EdgeError::Runtime("the node thread panicked".into()))?
    }
}

/// The files sinks of a node: the final table, rewritten at most once per
/// [`SINK_INTERVAL`] while it has unwritten changes.
struct FilesSinks<'a> {
    table: FinalTable,
    sinks: Vec<SinkSection>,
    topology: &'a Topology,
    written: Instant,
    dirty: bool,
    /// Largest emission watermark applied.
    seen: u64,
    /// Published after each durable write: how far the sinks are durable.
    durable: &'a AtomicU64,
    /// No write before emissions reach this watermark: while the log is
    /// replayed at start, the files on disk (which hold the windows being
    /// recomputed) stay as they are.
    hold_until: &'a AtomicU64,
}

impl FilesSinks<'_> {
    fn apply(&mut self, batch: &[crate::dataflow::emit::Emission]) {
        self.table.apply(batch);
        self.seen = batch.iter().map(|e| e.watermark).fold(self.seen, u64::max);
        self.dirty = true;
        self.write_if_due();
    }

    fn write_if_due(&mut self) {
        if self.seen < self.hold_until.load(Ordering::Acquire) {
            return;
        }
        if self.dirty && self.written.elapsed() >= SINK_INTERVAL {
            // A failed write stays dirty: it is tried again a second later.
            if write_sinks(&self.sinks, &self.table, self.topology) {
                self.durable.fetch_max(self.seen, Ordering::AcqRel);
                self.dirty = false;
            }
            self.written = Instant::now();
        }
    }

    /// The last write, at shutdown: whether the sinks hold everything.
    fn finish(self) -> bool {
        !(self.dirty || self.table.is_empty())
            || write_sinks(&self.sinks, &self.table, self.topology)
    }
}

/// The topology's operators, checked.
fn operators(topology: &Topology) -> Result<Vec<Operator>, EdgeError> {
    topology
        .operators
        .iter()
        .map(|o| {
            let mut token_sha256 = [0u8; 32];
            hex::decode_to_slice(&o.token_sha256, &mut token_sha256)
                .map_err(|e| EdgeError::Topology(format!("operator {}: {e}", o.name)))?;
            let kinds = match &o.kinds {
                None => vec![Kind::Congestion, Kind::Charging, Kind::Zone],
                Some(k) => k
                    .iter()
                    .filter_map(|k| match k.as_str() {
                        "congestion" => Some(Kind::Congestion),
                        "charging" => Some(Kind::Charging),
                        "zone" => Some(Kind::Zone),
                        _ => None,
                    })
                    .collect(),
            };
            Ok(Operator {
                name: o.name.clone(),
                token_sha256,
                kinds,
                segments: o.segments.clone(),
                chargers: o.chargers.clone(),
                zones: o.zones.clone(),
            })
        })
        .collect()
}

/// Writes every sink; false if one failed.
fn write_sinks(sinks: &[SinkSection], table: &FinalTable, topology: &Topology) -> bool {
    let mut ok = true;
    for sink in sinks {
        match sink {
            SinkSection::Files { dir } => {
                if let Err(e) = table.write_csv(dir, &topology.reference, topology.time.size_ms) {
                    eprintln!("edgeflow: files sink {}: {e}", dir.display());
                    ok = false;
                }
            }
        }
    }
    ok
}

/// Starts a node; returns once it listens.
pub fn start(topology: Topology, workers: usize) -> Result<EdgeHandle, EdgeError> {
    start_on(topology, workers, Disk::real())
}

/// [`start`] with its log on `disk` (a simulated one in power-loss tests).
pub fn start_on(topology: Topology, workers: usize, disk: Disk) -> Result<EdgeHandle, EdgeError> {
    let ingest = topology
        .ingest
        .clone()
        .ok_or_else(|| EdgeError::Topology("the edge role needs an [ingest] section".into()))?;
    let log_cfg = topology
        .log
        .clone()
        .ok_or_else(|| EdgeError::Topology("the edge role needs a [log] section".into()))?;
    let mut token_hashes = Vec::new();
    for f in &topology.fleets {
        let mut h = [0u8; 32];
        hex::decode_to_slice(&f.token_sha256, &mut h)
            .map_err(|e| EdgeError::Topology(format!("fleet {}: {e}", f.name)))?;
        token_hashes.push(h);
    }
    if token_hashes.is_empty() {
        return Err(EdgeError::Topology(
            "no [[fleet]]: nobody could send telemetry".into(),
        ));
    }

    // The lock first: nothing is read or repaired while another node runs.
    let (mut writer, recovery) = LogWriter::open_on(
        &log_cfg.dir,
        log_cfg.segment_bytes,
        disk.clone(),
        log_cfg.on_corruption,
    )?;
    for s in &recovery.skipped {
        eprintln!(
            "edgeflow: log: skipped damage at byte {} of {}: {} bytes, {} entries lost ({}), as [log] on_corruption = \"skip\" allows",
            s.offset,
            s.path.display(),
            s.bytes,
            s.entries,
            s.reason
        );
    }
    let checkpoint = Checkpoint::load(&log_cfg.dir)?;
    let settings = Settings::of(&topology.time, &topology.reference_sha256);
    if let Some(cp) = &checkpoint {
        if let Some(notice) = cp.check_settings(&log_cfg.dir, &settings)? {
            eprintln!("edgeflow: {notice}");
        }
    }
    if let Some((path, at)) = &recovery.truncated_at {
        eprintln!(
            "edgeflow: log: cut a torn tail of {} bytes at byte {at} of {} (written after the last fsync: never acknowledged)",
            recovery.truncated_bytes,
            path.display()
        );
    }
    let first_seq = checkpoint.as_ref().map_or(0, |cp| cp.first_seq);
    if recovery.first_seq > first_seq {
        return Err(EdgeError::Topology(format!(
            "log {}: entries {first_seq}..{} are missing (the oldest segment starts at {}, {})",
            log_cfg.dir.display(),
            recovery.first_seq,
            recovery.first_seq,
            if checkpoint.is_some() {
                "after the checkpoint's first entry"
            } else {
                "and there is no checkpoint"
            }
        )));
    }
    if first_seq > writer.next_seq() {
        return Err(EdgeError::Topology(format!(
            "log {}: the checkpoint keeps entries from {first_seq} on, but the log ends before entry {}: {} does not belong to this log",
            log_cfg.dir.display(),
            writer.next_seq(),
            crate::checkpoint::FILE,
        )));
    }
    // Left over from a crash between writing the checkpoint and deleting.
    writer.delete_before(first_seq)?;
    let reference = Arc::new(topology.reference.clone());
    let resume = checkpoint
        .as_ref()
        .map(|cp| cp.resume(&reference))
        .unwrap_or_default();
    let mut tracker = Tracker::new(topology.time, &resume);

    // Subscriptions: a hub fed by the dataflow, when operators may subscribe.
    let operators = operators(&topology)?;
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
    let budget = Budget::new(ingest.section.max_buffered_bytes);
    let handle_budget = budget.clone();
    let sub_ctx = hub.as_ref().map(|hub| {
        Arc::new(SubContext {
            hub: hub.clone(),
            operators,
            reference: reference.clone(),
            request_timeout: ingest.hello_timeout,
            budget: budget.clone(),
            stopping: stopping_rx,
        })
    });
    let (live_tx, live_rx) = mpsc::sync_channel::<Chunk>(LIVE_QUEUE);
    let sinks_durable = Arc::new(AtomicU64::new(0));

    // Zone file reloads.
    let zone_reloads = Arc::new(AtomicU64::new(0));
    let (zone_rx, zone_watch) = match &topology.zone_file {
        Some(path) => {
            let (tx, rx) = mpsc::channel();
            let (stop_tx, stop_rx) = mpsc::channel();
            let (path, reference) = (path.clone(), reference.clone());
            let reloads = zone_reloads.clone();
            std::thread::Builder::new()
                .name("edgeflow-zones".into())
                .spawn(move || watch_zones(path, reference, tx, stop_rx, reloads))
                .map_err(|e| EdgeError::Runtime(e.to_string()))?;
            (Some(rx), Some(stop_tx))
        }
        None => (None, None),
    };

    // Set once the log is replayed: the window the replay reaches.
    let recovered_to = Arc::new(AtomicU64::new(u64::MAX));
    // The dataflow, fed live.
    let dataflow = {
        let topology = topology.clone();
        let reference = reference.clone();
        let sinks_durable = sinks_durable.clone();
        let recovered_to = recovered_to.clone();
        let resume = resume.clone();
        let hub_df = hub.clone();
        let mut table = FinalTable::default();
        for sink in &topology.sinks {
            let SinkSection::Files { dir } = sink;
            // Rows of frozen windows only: the kept log rebuilds the rest.
            let (spec, horizon) = (topology.time, resume.horizon);
            let warnings = table
                .load_csv(dir, &reference, |k| spec.retire_at(k.window) <= horizon)
                .map_err(|e| EdgeError::Runtime(format!("files sink {}: {e}", dir.display())))?;
            for w in warnings {
                eprintln!("edgeflow: files sink: {w}");
            }
        }
        std::thread::Builder::new()
            .name("edgeflow-dataflow".into())
            .spawn(move || {
                let sink = std::cell::RefCell::new(FilesSinks {
                    table,
                    sinks: topology.sinks.clone(),
                    topology: &topology,
                    written: Instant::now(),
                    dirty: false,
                    seen: 0,
                    hold_until: &recovered_to,
                    durable: &sinks_durable,
                });
                let summary = crate::replay::run(
                    Input::Live(crate::replay::Live {
                        chunks: live_rx,
                        resume,
                        zones: zone_rx,
                    }),
                    reference,
                    topology.time,
                    ReplayOptions {
                        // Provisional values only when someone can see them.
                        provisional: hub_df.is_some(),
                        ..ReplayOptions::new(workers)
                    },
                    |batch| {
                        sink.borrow_mut().apply(batch);
                        if let Some(hub) = &hub_df {
                            hub.publish(batch);
                        }
                    },
                    // Called when no emission came for a while: write what
                    // is still unwritten.
                    |_| sink.borrow_mut().write_if_due(),
                );
                let written = sink.into_inner().finish();
                summary.and_then(|s| {
                    written.then_some(s).ok_or_else(|| {
                        crate::replay::ReplayError::Dataflow(
                            "the files sink's last write failed (see above)".into(),
                        )
                    })
                })
            })
            .map_err(|e| EdgeError::Runtime(e.to_string()))?
    };

    // Rebuild the state from the log, then go live.
    let starts: std::collections::BTreeSet<u64> = crate::log::segments(&log_cfg.dir)?
        .into_iter()
        .map(|(first, _)| first)
        .collect();
    // The input watermark, as the tracker follows the log; bounds what the
    // hub tells subscribers.
    let input_watermark = hub
        .as_ref()
        .map_or_else(|| Arc::new(AtomicU64::new(0)), |h| h.input_watermark());
    input_watermark.store(tracker.watermark(), Ordering::Release);
    let mut last_watermark = 0;
    for entry in LogReader::open_with(&log_cfg.dir, log_cfg.on_corruption)? {
        let entry = entry?;
        if entry.seq < first_seq {
            continue;
        }
        let chunk = Chunk::from_batch(entry.seq, entry.encoding, entry.records);
        if starts.contains(&entry.seq) {
            tracker.segment_started(entry.seq);
        }
        last_watermark = tracker.watermark();
        tracker.observe(&chunk.resolve_all(&reference));
        input_watermark.store(tracker.watermark(), Ordering::Release);
        if live_tx.send(chunk).is_err() {
            return Err(EdgeError::Runtime(
                "the dataflow stopped during recovery".into(),
            ));
        }
    }
    recovered_to.store(
        topology.time.window_start(last_watermark),
        Ordering::Release,
    );
    let mut next: rustc_hash::FxHashMap<String, u64> = recovery
        .senders
        .iter()
        .map(|(s, last)| (s.clone(), last + 1))
        .collect();
    for (sender, n) in checkpoint.iter().flat_map(|cp| &cp.senders) {
        let e = next.entry(sender.clone()).or_insert(*n);
        *e = (*e).max(*n);
    }
    let retention = Retention {
        tracker,
        reference: reference.clone(),
        dir: log_cfg.dir.clone(),
        sinks_durable,
        settings,
        disk,
        watermark: input_watermark,
    };
    let counters = Arc::new(IngestCounters::default());
    let (committer, commit_thread) = Committer::start(
        writer,
        next,
        live_tx,
        retention,
        counters.log_failures.clone(),
    )
    .map_err(|e| EdgeError::Runtime(e.to_string()))?;
    let max_future_ms = topology.time.max_future_ms;

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (addr_tx, addr_rx) =
        mpsc::channel::<Result<(SocketAddr, Arc<IngestCounters>), EdgeError>>();
    let recovered_entries = recovery.entries;
    let truncated_bytes = recovery.truncated_bytes;
    let skipped_entries = recovery.skipped.iter().map(|s| s.entries).sum();
    let thread = std::thread::Builder::new()
        .name("edgeflow-edge".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| EdgeError::Runtime(e.to_string()))?;
            let ctx = Arc::new(IngestContext::new(
                reference,
                token_hashes,
                committer,
                ingest.clone(),
                counters,
                max_future_ms,
                budget,
            ));
            let counters = ctx.counters.clone();
            let served = runtime.block_on(async {
                let endpoint = match crate::node::listener::endpoint(&ingest) {
                    Ok(e) => e,
                    Err(e) => {
                        let _ = addr_tx.send(Err(EdgeError::Server(e)));
                        return None;
                    }
                };
                let addr = endpoint.local_addr().unwrap_or(ingest.listen);
                let _ = addr_tx.send(Ok((addr, ctx.counters.clone())));
                let subs =
                    crate::node::listener::serve(endpoint.clone(), ctx, sub_ctx, shutdown_rx).await;
                Some((endpoint, subs))
            });
            // Every ingest connection is done: closing the log hand-over
            // ends the dataflow once it has taken in everything
            // acknowledged. Subscriptions go on until its last emissions.
            drop(zone_watch);
            commit_thread
                .join()
                .map_err(|_| EdgeError::Runtime("the commit thread panicked".into()))?;
            // On failure too, subscribers are told and the endpoint closed
            // before the error is returned.
            let summary = dataflow
                .join()
                .map_err(|_| EdgeError::Runtime("the dataflow thread panicked".into()))
                .and_then(|r| r.map_err(|e| EdgeError::Runtime(e.to_string())));
            if let Some(hub) = &hub {
                hub.close();
            }
            let _ = stopping_tx.send(true);
            if let Some((endpoint, mut subs)) = served {
                runtime.block_on(async {
                    let drained = async { while subs.join_next().await.is_some() {} };
                    let _ = tokio::time::timeout(SUBSCRIBER_DRAIN, drained).await;
                    endpoint.close(
                        quinn::VarInt::from_u32(
                            crate::ingest::frame::ErrorCode::ShuttingDown as u32,
                        ),
                        b"shutting down",
                    );
                    endpoint.wait_idle().await;
                });
            }
            drop(runtime);
            Ok(EdgeReport {
                summary: summary?,
                recovered_entries,
                truncated_bytes,
                skipped_entries,
                counters,
            })
        })
        .map_err(|e| EdgeError::Runtime(e.to_string()))?;
    match addr_rx.recv() {
        Ok(Ok((addr, counters))) => Ok(EdgeHandle {
            addr,
            counters,
            budget: handle_budget,
            zone_reloads,
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

/// Prints a node's report to stderr.
pub fn print_report(r: &EdgeReport) {
    let c = &r.counters;
    eprintln!(
        "edge stopped: {} connections, {} batches acknowledged ({} resends recognised), {} records accepted, {} rejected ({} too late), {} datagrams, {} failed log writes",
        c.connections.load(Ordering::Relaxed),
        c.batches.load(Ordering::Relaxed),
        c.duplicates.load(Ordering::Relaxed),
        c.accepted.load(Ordering::Relaxed),
        c.rejected.load(Ordering::Relaxed),
        c.expired.load(Ordering::Relaxed),
        c.datagrams.load(Ordering::Relaxed),
        c.log_failures.load(Ordering::Relaxed),
    );
    eprintln!(
        "  log: {} entries recovered at start ({} torn bytes cut); dataflow: {} records, {} windows final, {} corrections",
        r.recovered_entries, r.truncated_bytes, r.summary.ingest.records, r.summary.emitted.finals, r.summary.emitted.corrections
    );
}

/// Where `certs` writes.
#[derive(Debug, Clone)]
pub struct CertPaths {
    /// The development CA certificate (give it to clients).
    pub ca: PathBuf,
    /// The CA's private key (0600): keep it to issue more client
    /// certificates (`edgeflow certs --client NAME`).
    pub ca_key: PathBuf,
    /// The server certificate chain.
    pub cert: PathBuf,
    /// The server key.
    pub key: PathBuf,
    /// A client certificate signed by the CA (for nodes requiring mTLS).
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
}

impl CertPaths {
    /// The files `certs` writes in `dir`.
    pub fn in_dir(dir: &std::path::Path) -> Self {
        CertPaths {
            ca: dir.join("ca.pem"),
            ca_key: dir.join("ca.key"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        }
    }
}

/// The development CA's certificate parameters: the same every time, so
/// that the CA can be rebuilt from its key to issue more certificates.
fn ca_params() -> Result<rcgen::CertificateParams, rcgen::Error> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyUsagePurpose};
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "edgeflow development CA");
    Ok(ca_params)
}

/// A client certificate named `name`, signed by the CA.
fn client_certificate(
    name: &str,
    ca: &rcgen::Certificate,
    ca_key: &rcgen::KeyPair,
) -> anyhow::Result<(rcgen::Certificate, rcgen::KeyPair)> {
    use rcgen::{CertificateParams, DnType, KeyPair};
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    Ok((params.signed_by(&key, ca, ca_key)?, key))
}

/// Refuses to overwrite any of `paths` unless `force`.
fn refuse_overwrite(paths: &[&std::path::Path], force: bool) -> anyhow::Result<()> {
    if force {
        return Ok(());
    }
    if let Some(p) = paths.iter().find(|p| p.exists()) {
        anyhow::bail!(
            "{} exists: replacing a CA breaks every client that trusts it; use --force to replace, or --client NAME to issue a client certificate from it",
            p.display()
        );
    }
    Ok(())
}

/// Makes a development CA, a server certificate for `names` (DNS names or
/// IP addresses) and a client certificate, both signed by it, as PEM files
/// in `dir`. Keys are written readable by their owner only (0600) and the
/// CA key is kept. Existing files are an error unless `force`.
pub fn make_certs_in(
    dir: &std::path::Path,
    names: &[String],
    force: bool,
) -> anyhow::Result<CertPaths> {
    use rcgen::{CertificateParams, DnType, KeyPair};
    let paths = CertPaths::in_dir(dir);
    refuse_overwrite(
        &[
            &paths.ca,
            &paths.ca_key,
            &paths.cert,
            &paths.key,
            &paths.client_cert,
            &paths.client_key,
        ],
        force,
    )?;
    std::fs::create_dir_all(dir)?;
    let ca_key = KeyPair::generate()?;
    let ca = ca_params()?.self_signed(&ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names.to_vec())?;
    params.distinguished_name.push(
        DnType::CommonName,
        names.first().map_or("edgeflow", String::as_str),
    );
    let cert = params.signed_by(&key, &ca, &ca_key)?;
    let (client, client_key) = client_certificate("edgeflow development client", &ca, &ca_key)?;
    crate::output::write_private(&paths.ca_key, ca_key.serialize_pem().as_bytes())?;
    crate::output::write_private(&paths.key, key.serialize_pem().as_bytes())?;
    crate::output::write_private(&paths.client_key, client_key.serialize_pem().as_bytes())?;
    crate::output::write_durably(&paths.client_cert, client.pem().as_bytes())?;
    crate::output::write_durably(&paths.cert, cert.pem().as_bytes())?;
    crate::output::write_durably(&paths.ca, ca.pem().as_bytes())?;
    Ok(paths)
}

/// [`make_certs_in`] for a new directory (tests, demos): replaces what is
/// there.
pub fn make_certs(dir: &std::path::Path, names: &[String]) -> anyhow::Result<CertPaths> {
    make_certs_in(dir, names, true)
}

/// Issues a client certificate `client-NAME.pem` (key `client-NAME.key`,
/// 0600) from the CA that `certs` left in `dir` (`ca.pem`, `ca.key`).
/// Returns the certificate and key paths.
pub fn issue_client_cert(
    dir: &std::path::Path,
    name: &str,
    force: bool,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    use anyhow::Context;
    crate::model::check_id(name, "client name").map_err(|e| anyhow::anyhow!("{e}"))?;
    let paths = CertPaths::in_dir(dir);
    let key_pem = std::fs::read_to_string(&paths.ca_key).with_context(|| {
        format!(
            "{}: the CA key is needed to issue client certificates (CAs made before it was kept cannot issue more: make a new one with --force)",
            paths.ca_key.display()
        )
    })?;
    let ca_key = rcgen::KeyPair::from_pem(&key_pem)
        .with_context(|| format!("{}: not a private key", paths.ca_key.display()))?;
    // The same subject and key as ca.pem: what it signs verifies against it.
    let ca = ca_params()?.self_signed(&ca_key)?;
    let cert_path = dir.join(format!("client-{name}.pem"));
    let key_path = dir.join(format!("client-{name}.key"));
    refuse_overwrite(&[&cert_path, &key_path], force)?;
    let (cert, key) = client_certificate(name, &ca, &ca_key)?;
    crate::output::write_private(&key_path, key.serialize_pem().as_bytes())?;
    crate::output::write_durably(&cert_path, cert.pem().as_bytes())?;
    Ok((cert_path, key_path))
}
