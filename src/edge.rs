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
//! entry into a fresh dataflow, then accepts new batches; so a restarted
//! node carries on with the state it had, and senders' resends are
//! recognised by their batch numbers. [`EdgeHandle::shutdown`] stops
//! accepting, lets in-flight batches finish, drains the dataflow and writes
//! the sinks one last time.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::sync::watch;

use crate::ingest::commit::Committer;
use crate::ingest::server::{self, IngestContext, IngestCounters};
use crate::input::Chunk;
use crate::log::{LogReader, LogWriter};
use crate::output::FinalTable;
use crate::replay::{Input, ReplayOptions, RunSummary};
use crate::topology::{SinkSection, Topology};

/// Chunks queued between the commit thread and the dataflow reader.
pub const LIVE_QUEUE: usize = 64;
/// Least time between two rewrites of a files sink.
pub const SINK_INTERVAL: Duration = Duration::from_secs(1);

/// Why a node cannot start or run.
#[derive(Debug, Error)]
pub enum EdgeError {
    /// The topology lacks what the edge role needs.
    #[error("topology: {0}")]
    Topology(String),
    /// The log could not be opened or replayed.
    #[error("log: {0}")]
    Log(#[from] crate::log::LogError),
    /// The server could not start.
    #[error("ingest: {0}")]
    Server(#[from] server::ServerError),
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
    /// Ingest counters.
    pub counters: Arc<IngestCounters>,
}

/// A running node.
pub struct EdgeHandle {
    /// The bound UDP address.
    pub addr: SocketAddr,
    /// Ingest counters, live.
    pub counters: Arc<IngestCounters>,
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

fn write_sinks(sinks: &[SinkSection], table: &FinalTable, topology: &Topology) {
    for sink in sinks {
        match sink {
            SinkSection::Files { dir } => {
                if let Err(e) = table.write_csv(dir, &topology.reference, topology.time.size_ms) {
                    eprintln!("edgeflow: files sink {}: {e}", dir.display());
                }
            }
        }
    }
}

/// Starts a node; returns once it listens.
pub fn start(topology: Topology, workers: usize) -> Result<EdgeHandle, EdgeError> {
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

    let (writer, recovery) = LogWriter::open(&log_cfg.dir, log_cfg.segment_bytes)?;
    if recovery.truncated_bytes > 0 {
        eprintln!(
            "edgeflow: log: cut a torn tail of {} bytes (never acknowledged)",
            recovery.truncated_bytes
        );
    }
    let (live_tx, live_rx) = mpsc::sync_channel::<Chunk>(LIVE_QUEUE);

    // The dataflow, fed live.
    let reference = Arc::new(topology.reference.clone());
    let dataflow = {
        let topology = topology.clone();
        std::thread::Builder::new()
            .name("edgeflow-dataflow".into())
            .spawn(move || {
                let mut table = FinalTable::default();
                let mut written = Instant::now();
                let mut dirty = false;
                let sinks = topology.sinks.clone();
                let summary = crate::replay::run(
                    Input::Live(live_rx),
                    reference,
                    topology.time,
                    ReplayOptions::new(workers),
                    |batch| {
                        table.apply(batch);
                        dirty = true;
                        if written.elapsed() >= SINK_INTERVAL {
                            write_sinks(&sinks, &table, &topology);
                            written = Instant::now();
                            dirty = false;
                        }
                    },
                    |_| {},
                );
                if dirty || table.is_empty() {
                    write_sinks(&sinks, &table, &topology);
                }
                summary
            })
            .map_err(|e| EdgeError::Runtime(e.to_string()))?
    };

    // Rebuild the state from the log, then go live.
    for entry in LogReader::open(&log_cfg.dir)? {
        let entry = entry?;
        if live_tx
            .send(Chunk::from_batch(entry.seq, entry.encoding, entry.records))
            .is_err()
        {
            return Err(EdgeError::Runtime(
                "the dataflow stopped during recovery".into(),
            ));
        }
    }
    let next: rustc_hash::FxHashMap<String, u64> = recovery
        .senders
        .iter()
        .map(|(s, last)| (s.clone(), last + 1))
        .collect();
    let (committer, commit_thread) =
        Committer::start(writer, next, live_tx).map_err(|e| EdgeError::Runtime(e.to_string()))?;

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (addr_tx, addr_rx) =
        mpsc::channel::<Result<(SocketAddr, Arc<IngestCounters>), EdgeError>>();
    let recovered_entries = recovery.entries;
    let truncated_bytes = recovery.truncated_bytes;
    let reference = Arc::new(topology.reference.clone());
    let thread = std::thread::Builder::new()
        .name("edgeflow-edge".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| EdgeError::Runtime(e.to_string()))?;
            let cert = ingest.section.cert.clone();
            let key = ingest.section.key.clone();
            let ctx = Arc::new(IngestContext::new(
                reference,
                token_hashes,
                committer,
                ingest.clone(),
            ));
            let counters = ctx.counters.clone();
            runtime.block_on(async {
                let endpoint = match server::endpoint(&ingest, &cert, &key) {
                    Ok(e) => e,
                    Err(e) => {
                        let _ = addr_tx.send(Err(EdgeError::Server(e)));
                        return;
                    }
                };
                let addr = endpoint.local_addr().unwrap_or(ingest.listen);
                let _ = addr_tx.send(Ok((addr, ctx.counters.clone())));
                server::serve(endpoint, ctx, shutdown_rx).await;
            });
            // Every connection is done: closing the log hand-over ends the
            // dataflow once it has taken in everything acknowledged.
            drop(runtime);
            commit_thread
                .join()
                .map_err(|_| EdgeError::Runtime("the commit thread panicked".into()))?;
            let summary = dataflow
                .join()
                .map_err(|_| EdgeError::Runtime("the dataflow thread panicked".into()))?
                .map_err(|e| EdgeError::Runtime(e.to_string()))?;
            Ok(EdgeReport {
                summary,
                recovered_entries,
                truncated_bytes,
                counters,
            })
        })
        .map_err(|e| EdgeError::Runtime(e.to_string()))?;
    match addr_rx.recv() {
        Ok(Ok((addr, counters))) => Ok(EdgeHandle {
            addr,
            counters,
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
        "edge stopped: {} connections, {} batches acknowledged ({} resends recognised), {} records accepted, {} rejected, {} datagrams",
        c.connections.load(Ordering::Relaxed),
        c.batches.load(Ordering::Relaxed),
        c.duplicates.load(Ordering::Relaxed),
        c.accepted.load(Ordering::Relaxed),
        c.rejected.load(Ordering::Relaxed),
        c.datagrams.load(Ordering::Relaxed),
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
    /// The server certificate chain.
    pub cert: PathBuf,
    /// The server key.
    pub key: PathBuf,
    /// A client certificate signed by the CA (for nodes requiring mTLS).
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
}

/// Makes a development CA, a server certificate for `names` (DNS names or
/// IP addresses) and a client certificate, both signed by it, as PEM files
/// in `dir`.
pub fn make_certs(dir: &std::path::Path, names: &[String]) -> anyhow::Result<CertPaths> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    std::fs::create_dir_all(dir)?;
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "edgeflow development CA");
    let ca = ca_params.self_signed(&ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names.to_vec())?;
    params.distinguished_name.push(
        DnType::CommonName,
        names.first().map_or("edgeflow", String::as_str),
    );
    let cert = params.signed_by(&key, &ca, &ca_key)?;
    let client_key = KeyPair::generate()?;
    let mut client_params = CertificateParams::new(Vec::<String>::new())?;
    client_params
        .distinguished_name
        .push(DnType::CommonName, "edgeflow development client");
    let client = client_params.signed_by(&client_key, &ca, &ca_key)?;
    let paths = CertPaths {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client.key"),
    };
    crate::output::write_durably(&paths.client_cert, client.pem().as_bytes())?;
    crate::output::write_durably(&paths.client_key, client_key.serialize_pem().as_bytes())?;
    crate::output::write_durably(&paths.ca, ca.pem().as_bytes())?;
    crate::output::write_durably(&paths.cert, cert.pem().as_bytes())?;
    crate::output::write_durably(&paths.key, key.serialize_pem().as_bytes())?;
    Ok(paths)
}
