//! The dataflow runtime: runs an input through the dataflow, whether a
//! recording (JSON Lines), a node's log (`edgeflow replay`) or a node's live
//! input ([`Input::Live`], fed by the commit loop). The same code path for
//! all three is what makes a replay reproduce what the node computed live.
//!
//! One reader thread cuts the input into chunks ([`crate::input`]) and queues
//! them on one bounded channel that the timely workers take from; each worker
//! decodes its chunks ([`crate::pipeline`]) into the dataflow
//! ([`crate::dataflow`]); worker 0 sends emissions back to the caller's
//! thread. The final aggregates depend only on the input, never on the
//! worker count or timing: that is what the tests check. With
//! [`RunOptions::cluster`] the workers of several processes run one
//! dataflow (timely's cluster communication), each process reading its own
//! input; process 0 gets the emissions.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::checkpoint::{Checkpoint, Resume};
use crate::dataflow::connectors::ChargerLimits;
use crate::dataflow::emit::{Emission, EmitStats, Status};
use crate::dataflow::partials::PartialEmission;
use crate::geo::zones::Membership;
use crate::input::{Chunk, ChunkClock, Chunker};
use crate::pipeline::{IngestStats, Pacing, Stage};
use crate::reference::Reference;
use crate::time::TimeSpec;

mod cluster;
pub use cluster::{Cluster, SiteLink};

/// Chunks queued per worker. Bounds the reader's lead: 4 chunks of ~200 KiB
/// per worker.
pub const CHUNK_QUEUE: usize = 4;

/// What can stop a replay.
#[derive(Debug, Error)]
pub enum RunError {
    /// The input could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Input {
        /// The input.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Reading the input failed part way (I/O error, damaged log).
    #[error("input stopped: {0}")]
    Read(String),
    /// A log directory could not be opened.
    #[error("cannot open log: {0}")]
    Log(String),
    /// The timely runtime failed to start or a worker panicked.
    #[error("dataflow failed: {0}")]
    Dataflow(String),
}

/// How to run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Worker threads.
    pub workers: usize,
    /// Pace at this multiple of event time; `None`: as fast as possible.
    pub speed: Option<f64>,
    /// Emit provisional values too.
    pub provisional: bool,
    /// Lines per chunk: the granularity at which the watermark advances
    /// ([`crate::input::CHUNK_LINES`] unless a test wants many small chunks).
    /// Part of how an input is read, like a log's batch boundaries: results
    /// are identical for any worker count given the same chunk size.
    pub chunk_lines: usize,
    /// Replay a damaged log, skipping its damaged entries (and saying so in
    /// [`RunSummary::log_notes`]), instead of failing.
    pub accept_damage: bool,
    /// Records a worker pre-aggregates before handing them to the dataflow
    /// ([`crate::pipeline::FLUSH_RECORDS`]; distinct keys are bounded by
    /// [`crate::pipeline::FLUSH_KEYS`] too): with retention, this bounds the
    /// dataflow's state. Smaller batches cost throughput and change no
    /// result.
    pub flush_records: u64,
    /// Count the updates the dataflow's arrangements hold
    /// ([`RunSummary::state`], from differential's log). Off by default: the
    /// log costs about 7 % of replay throughput on one worker (`edgeflow
    /// bench`, 10M records: 0.70 against 0.75 times the plain loop).
    pub measure_state: bool,
    /// Keep the partials an edge pushes to central and hand them to
    /// [`run_with`]'s `on_partials` ([`crate::dataflow::partials`]).
    pub partials: bool,
    /// Where the workers add their counts as they go (a node's metrics).
    pub live: Option<Arc<crate::pipeline::LiveStats>>,
    /// Run as one process of a timely cluster ([`Cluster`]); `None`: this
    /// process alone.
    pub cluster: Option<Cluster>,
    /// What the processes of a cluster tell each other, shared with the
    /// caller ([`SiteLink`]); `None`: the run keeps its own. Without a
    /// cluster, only its frozen horizon is set (the run's checkpoint's).
    pub site: Option<Arc<SiteLink>>,
}

impl RunOptions {
    /// As fast as possible, final values only, default chunks.
    pub fn new(workers: usize) -> Self {
        RunOptions {
            workers,
            speed: None,
            provisional: false,
            chunk_lines: crate::input::CHUNK_LINES,
            accept_damage: false,
            flush_records: crate::pipeline::FLUSH_RECORDS,
            measure_state: false,
            partials: false,
            live: None,
            cluster: None,
            site: None,
        }
    }
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct RunSummary {
    /// Ingest counts, all workers.
    pub ingest: IngestStats,
    /// Emission counts.
    pub emitted: EmitStats,
    /// Wall-clock time, from the start of the dataflow (after `setup`).
    pub elapsed: Duration,
    /// Wall-clock time before the dataflow started: a cluster's processes
    /// connecting to each other (timely polls for them once a second).
    pub setup: Duration,
    /// Bytes this process sent to the other processes of its cluster
    /// (timely's messages with their headers); 0 alone.
    pub exchanged: u64,
    /// Input bytes read.
    pub bytes: u64,
    /// What reading a log found that a person should know: a torn tail
    /// (normal after a crash: never acknowledged), or damage accepted with
    /// `accept_damage`.
    pub log_notes: Vec<String>,
    /// Updates the dataflow's arrangements held, at the end and at most
    /// (zero unless [`RunOptions::measure_state`]).
    pub state: crate::dataflow::gauge::StateReading,
}

impl RunSummary {
    /// Publishes the run's counts to the installed `metrics` recorder (a
    /// no-op when none is installed).
    pub fn publish_metrics(&self) {
        use crate::metrics as M;
        let s = &self.ingest;
        metrics::counter!(M::RECORDS_READ).increment(s.records);
        for reason in crate::model::RejectReason::ALL {
            let n = s.rejected[reason.index()];
            if n > 0 {
                metrics::counter!(M::RECORDS_REJECTED, "reason" => reason.as_str()).increment(n);
            }
        }
        metrics::counter!(M::RECORDS_CORRECTIONS).increment(s.corrections);
        metrics::counter!(M::RECORDS_EXPIRED).increment(s.expired);
        metrics::counter!(M::RECORDS_MAP_MATCHED).increment(s.map_matched);
        for why in crate::geo::Unmatched::ALL {
            let n = s.unmatched[why.index()];
            if n > 0 {
                metrics::counter!(M::RECORDS_UNMATCHED, "reason" => why.name()).increment(n);
            }
        }
        let e = &self.emitted;
        metrics::counter!(M::ROWS_EMITTED, "status" => "final").increment(e.finals);
        metrics::counter!(M::ROWS_EMITTED, "status" => "correction").increment(e.corrections);
        metrics::counter!(M::ROWS_EMITTED, "status" => "provisional").increment(e.provisional);
    }

    /// Records per second of wall-clock time.
    pub fn records_per_s(&self) -> f64 {
        self.ingest.records as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Counts bytes read, for progress.
struct Counting<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Where the records come from.
pub enum Input {
    /// JSON Lines, cut into chunks of `RunOptions::chunk_lines` lines.
    JsonLines(Box<dyn Read + Send>),
    /// A durable log directory: one chunk per entry, from its checkpoint
    /// if old segments were deleted ([`crate::checkpoint`]).
    Log(PathBuf),
    /// An edge node's live input.
    Live(Live),
}

/// A change of zone membership: pairs retracted, pairs added.
pub type ZoneChange = (Membership, Membership);

/// What an edge node feeds its dataflow.
pub struct Live {
    /// Chunks handed over by the log writer, in order, numbered from the
    /// resume point's `first_seq`; the run ends when the sender is dropped.
    pub chunks: mpsc::Receiver<Chunk>,
    /// Where the log starts.
    pub resume: Resume,
    /// Zone membership changes (a reloaded zone file), applied when they
    /// arrive.
    pub zones: Option<mpsc::Receiver<ZoneChange>>,
}

impl Input {
    /// Where the dataflow starts: a log's checkpoint, or the beginning.
    fn resume(&self, reference: &Reference) -> Result<Resume, RunError> {
        match self {
            Input::JsonLines(_) => Ok(Resume::default()),
            Input::Log(dir) => {
                let log = |e: &dyn std::fmt::Display| RunError::Log(e.to_string());
                let checkpoint = Checkpoint::load(dir).map_err(|e| log(&e))?;
                let resume = checkpoint
                    .as_ref()
                    .map(|cp| cp.resume(reference))
                    .unwrap_or_default();
                let oldest = crate::log::segments(dir)
                    .map_err(|e| log(&e))?
                    .first()
                    .map(|(first, _)| *first);
                crate::checkpoint::check_oldest(
                    dir,
                    resume.first_seq,
                    checkpoint.is_some(),
                    oldest,
                )
                .map_err(|e| log(&e))?;
                Ok(resume)
            }
            Input::Live(live) => Ok(live.resume.clone()),
        }
    }

    /// Opens a recording: a log directory, or a JSON Lines file (gunzipped
    /// when its name ends in `.gz`). Returns it with its size in bytes.
    pub fn open(path: &Path) -> Result<(Input, u64), RunError> {
        let err = |source| RunError::Input {
            path: path.display().to_string(),
            source,
        };
        if path.is_dir() {
            let segments = crate::log::segments(path).map_err(|e| RunError::Log(e.to_string()))?;
            if segments.is_empty() {
                return Err(RunError::Log(format!(
                    "{} holds no log segments: not a log directory",
                    path.display()
                )));
            }
            let total = segments
                .iter()
                .filter_map(|(_, p)| std::fs::metadata(p).ok())
                .map(|m| m.len())
                .sum();
            return Ok((Input::Log(path.to_owned()), total));
        }
        let file = std::fs::File::open(path).map_err(err)?;
        let total = file.metadata().map_err(err)?.len();
        let file = std::io::BufReader::with_capacity(1 << 20, file);
        let reader: Box<dyn Read + Send> = if path.extension().is_some_and(|e| e == "gz") {
            Box::new(flate2::bufread::MultiGzDecoder::new(file))
        } else {
            Box::new(file)
        };
        Ok((Input::JsonLines(reader), total))
    }
}

/// Reads `input` as chunks onto the workers' shared queue.
fn read_chunks(
    input: Input,
    first_seq: u64,
    options: &RunOptions,
    bytes: Arc<AtomicU64>,
    queue: mpsc::SyncSender<Chunk>,
    notes: &mut Vec<String>,
) -> Result<(), String> {
    let chunk_lines = options.chunk_lines.max(1);
    let deal = |chunk: Chunk| queue.send(chunk).is_ok();
    match input {
        Input::JsonLines(reader) => {
            let mut chunker = Chunker::with_chunk_lines(
                Counting {
                    inner: reader,
                    count: bytes,
                },
                chunk_lines,
            );
            while let Some(chunk) = chunker.next_chunk().map_err(|e| e.to_string())? {
                if !deal(chunk) {
                    break;
                }
            }
        }
        Input::Log(dir) => {
            // Where the log ends: its first segment's start while no entry
            // is read.
            let mut end = crate::log::segments(&dir)
                .map_err(|e| e.to_string())?
                .first()
                .map_or(0, |(first, _)| *first);
            let policy = if options.accept_damage {
                crate::log::OnCorruption::Skip
            } else {
                crate::log::OnCorruption::Stop
            };
            let mut reader =
                crate::log::LogReader::open_with(&dir, policy).map_err(|e| e.to_string())?;
            for entry in reader.by_ref() {
                let entry =
                    entry.map_err(|e| format!("{e} (--accept-damage skips damaged entries)"))?;
                end = entry.seq + 1;
                if entry.seq < first_seq {
                    // Before the checkpoint: left over from a crash between
                    // writing it and deleting these segments.
                    continue;
                }
                bytes.fetch_add(entry.records.len() as u64 + 8, Ordering::Relaxed);
                if !deal(Chunk::from_batch(entry.seq, entry.encoding, entry.records)) {
                    return Ok(());
                }
            }
            for s in reader.skipped() {
                notes.push(format!(
                    "skipped damage at byte {} of {}: {} bytes, {} entries lost ({}) (--accept-damage)",
                    s.offset,
                    s.path.display(),
                    s.bytes,
                    s.entries,
                    s.reason
                ));
            }
            if let Some((path, at)) = reader.torn_tail() {
                notes.push(format!(
                    "the log ends in a torn tail at byte {at} of {} (written after the node's last fsync, so never acknowledged; normal after a crash)",
                    path.display()
                ));
            }
            crate::checkpoint::check_end(&dir, first_seq, end).map_err(|e| e.to_string())?;
        }
        Input::Live(live) => {
            for chunk in live.chunks {
                bytes.fetch_add(chunk.data.len() as u64, Ordering::Relaxed);
                if !deal(chunk) {
                    break;
                }
            }
        }
    }
    Ok(())
}

/// Runs `input` through the dataflow. `on_emissions` sees every batch of
/// emissions on the calling thread; `on_progress` sees input bytes read so
/// far, about ten times a second.
pub fn run(
    input: Input,
    reference: Arc<Reference>,
    spec: TimeSpec,
    options: RunOptions,
    on_emissions: impl FnMut(&[Emission]),
    on_progress: impl FnMut(u64),
) -> Result<RunSummary, RunError> {
    run_with(
        input,
        reference,
        spec,
        options,
        on_emissions,
        |_| {},
        on_progress,
    )
}

/// [`run`], and with [`RunOptions::partials`] `on_partials` sees every
/// batch of partials on the calling thread.
pub fn run_with(
    input: Input,
    reference: Arc<Reference>,
    spec: TimeSpec,
    options: RunOptions,
    mut on_emissions: impl FnMut(&[Emission]),
    mut on_partials: impl FnMut(&[PartialEmission]),
    mut on_progress: impl FnMut(u64),
) -> Result<RunSummary, RunError> {
    let workers = options.workers.max(1);
    let start = Instant::now();
    let bytes = Arc::new(AtomicU64::new(0));
    let read_error: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));

    // One queue that every worker takes chunks from, in order: a worker busy
    // with dataflow work (worker 0 also runs the emitter) takes fewer chunks
    // instead of holding up the chunk whose maximum the others' watermarks
    // wait for. Which worker decodes a chunk changes no result.
    let (queue, receiver) = mpsc::sync_channel::<Chunk>(CHUNK_QUEUE * workers);
    let receiver = Arc::new(Mutex::new(receiver));

    let resume = input.resume(&reference)?;
    let mut input = input;
    let zone_changes = match &mut input {
        Input::Live(live) => live.zones.take(),
        _ => None,
    };
    let zone_changes = Arc::new(Mutex::new(zone_changes));
    let zone_flow = crate::dataflow::ZoneFlow::of(&reference);
    let membership = Arc::new(if zone_flow.is_some() {
        reference.membership(&reference.zones)
    } else {
        Membership::default()
    });
    let first_seq = resume.first_seq;
    let reader = {
        let bytes = bytes.clone();
        let read_error = read_error.clone();
        let options = options.clone();
        std::thread::Builder::new()
            .name("edgeflow-reader".into())
            .spawn(move || {
                let mut notes = Vec::new();
                if let Err(e) = read_chunks(input, first_seq, &options, bytes, queue, &mut notes) {
                    if let Ok(mut slot) = read_error.lock() {
                        *slot = Some(e);
                    }
                }
                notes
            })
            .map_err(|e| RunError::Dataflow(format!("cannot start the reader thread: {e}")))?
    };

    let clock = Arc::new(ChunkClock::starting_at(
        resume.first_seq,
        resume.clock.clone(),
        spec,
    ));
    let resume = Arc::new(resume);
    let (emit_tx, emit_rx) = mpsc::channel::<Vec<Emission>>();
    let emit_tx = Arc::new(Mutex::new(Some(emit_tx)));
    let (partial_tx, partial_rx) = mpsc::channel::<Vec<PartialEmission>>();
    let partial_tx = Arc::new(Mutex::new(options.partials.then_some(partial_tx)));
    let pacing = options.speed.map(|speed| Pacing { start, speed });
    let provisional = options.provisional;
    let finished = Arc::new(AtomicUsize::new(0));
    let all_finished = finished.clone();

    let limits = Arc::new(ChargerLimits::of(&reference));
    let counted = limits.clone();
    let matching = crate::dataflow::matching::Matching::of(&reference);
    let matched = matching.as_ref().map(|m| m.counts.clone());
    if let (Some(live), Some(m)) = (&options.live, &matched) {
        let _ = live.hmm.set(m.clone());
    }
    let gauge = Arc::new(crate::dataflow::gauge::StateGauge::default());
    let state = gauge.clone();
    let site = options.site.clone().unwrap_or_default();
    if options.cluster.is_none() {
        site.agree(resume.horizon);
    }
    // The worker that reads this process's reference data into the
    // dataflow (its first).
    let first_local = options.cluster.as_ref().map_or(0, |c| c.process * workers);
    let mut config = if workers == 1 {
        timely::Config::thread()
    } else {
        timely::Config::process(workers)
    };
    if let Some(c) = &options.cluster {
        c.check().map_err(RunError::Dataflow)?;
        config.communication = timely::CommunicationConfig::Cluster {
            threads: workers,
            process: c.process,
            addresses: c.addresses.clone(),
            report: false,
            zerocopy: false,
        };
    }
    let connecting = Instant::now();
    let exchanged = Arc::new(AtomicU64::new(0));
    let hooks = cluster::counting_hooks(exchanged.clone());
    let (allocators, others) = config
        .communication
        .try_build_with(hooks)
        .map_err(RunError::Dataflow)?;
    let guards = timely::execute::execute_from(allocators, others, config.worker, move |worker| {
        let (tx, partial_tx) = if worker.index() == 0 {
            (
                emit_tx.lock().ok().and_then(|mut t| t.take()),
                partial_tx.lock().ok().and_then(|mut t| t.take()),
            )
        } else {
            (None, None)
        };
        if options.measure_state {
            gauge.attach(worker);
        }
        let (mut inputs, completion) = crate::dataflow::build(
            worker,
            spec,
            provisional,
            zone_flow.clone(),
            crate::dataflow::Outputs {
                emissions: tx,
                partials: options.partials,
                partial_emissions: partial_tx,
            },
            limits.clone(),
            matching.clone(),
        );
        // Worker 0 feeds the reference collections; the others see them
        // through the exchange.
        let zone_changes = if worker.index() == 0 {
            inputs.update_zones(&Membership::default(), &membership);
            zone_changes.lock().ok().and_then(|mut z| z.take())
        } else {
            None
        };
        // A cluster's processes agree on the frozen horizon before any
        // record goes in.
        let mut site_flow = options
            .cluster
            .as_ref()
            .map(|c| cluster::site_flow(worker, &site, c, workers, resume.horizon));
        while site.frozen().is_none() {
            worker.step_or_park(Some(Duration::from_millis(1)));
        }
        let mut stage = Stage::new(&reference, spec, &clock, pacing, provisional);
        let mut published = crate::pipeline::IngestStats::default();
        stage.flush_records = options.flush_records.max(1);
        stage.freeze(site.frozen().unwrap_or(resume.horizon));
        if worker.index() == first_local {
            for carry in &resume.carries {
                inputs.charging.update(*carry, 1);
            }
        }
        loop {
            // Take the next chunk; the queue is released before decoding.
            let next = match receiver.lock().map(|rx| rx.try_recv()) {
                Ok(Ok(chunk)) => Some(chunk),
                Ok(Err(TryRecvError::Empty)) => {
                    if stage.idle_flush_due() {
                        stage.follow_clock();
                        stage.flush(&mut inputs);
                    }
                    worker.step();
                    // Wait briefly for input rather than spin; a chunk that
                    // arrives ends the wait at once.
                    match receiver
                        .lock()
                        .map(|rx| rx.recv_timeout(Duration::from_millis(1)))
                    {
                        Ok(Ok(chunk)) => Some(chunk),
                        Ok(Err(RecvTimeoutError::Timeout)) => None,
                        _ => break,
                    }
                }
                _ => break,
            };
            if let Some(flow) = &mut site_flow {
                flow.tell(&site, || clock.floor());
            }
            if let Some(rx) = &zone_changes {
                while let Ok((gone, added)) = rx.try_recv() {
                    inputs.update_zones(&gone, &added);
                }
            }
            if let Some(chunk) = next {
                stage.process(&chunk, &inputs);
                if let Some(live) = &options.live {
                    live.catch_up(&stage.stats, &mut published);
                }
                if stage.should_flush() {
                    stage.flush(&mut inputs);
                    worker.step();
                }
            }
        }
        stage.flush(&mut inputs);
        drop(inputs);
        drop(site_flow);
        while !completion.done() {
            worker.step_or_park(Some(Duration::from_millis(1)));
        }
        finished.fetch_add(1, Ordering::SeqCst);
        stage.stats
    })
    .map_err(RunError::Dataflow)?;
    // The workers run from here on; before, timely set up its
    // communication (for a cluster, the connections to the others).
    let setup = connecting.elapsed();
    let running = Instant::now();

    let mut emitted = EmitStats::default();
    loop {
        // Every worker is past its last step: whatever was sent is queued.
        let last = all_finished.load(Ordering::SeqCst) == workers;
        let received = if last {
            emit_rx.try_recv().map_err(|e| match e {
                TryRecvError::Empty => RecvTimeoutError::Disconnected,
                TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
            })
        } else {
            emit_rx.recv_timeout(Duration::from_millis(100))
        };
        match received {
            Ok(batch) => {
                for e in &batch {
                    match e.status {
                        Status::Provisional => emitted.provisional += 1,
                        Status::Final => emitted.finals += 1,
                        Status::Correction => emitted.corrections += 1,
                        Status::Retraction => emitted.retractions += 1,
                    }
                }
                on_emissions(&batch);
            }
            Err(RecvTimeoutError::Timeout) => on_progress(bytes.load(Ordering::Relaxed)),
            Err(RecvTimeoutError::Disconnected) => break,
        }
        while let Ok(batch) = partial_rx.try_recv() {
            on_partials(&batch);
        }
    }
    // The workers are done: every partial sent is queued.
    while let Ok(batch) = partial_rx.try_recv() {
        on_partials(&batch);
    }
    let mut ingest = IngestStats::default();
    for result in guards.join() {
        let stats = result.map_err(RunError::Dataflow)?;
        ingest.merge(&stats);
    }
    ingest.energy_resets = counted.anomalies.resets.load(Ordering::Relaxed);
    ingest.energy_capped = counted.anomalies.capped.load(Ordering::Relaxed);
    if let Some(m) = matched {
        let count = |n: &std::sync::atomic::AtomicI64| n.load(Ordering::Relaxed).max(0) as u64;
        ingest.map_matched += count(&m.matched);
        for (a, n) in ingest.unmatched.iter_mut().zip(&m.unmatched) {
            *a += count(n);
        }
        ingest.rematched = m.changed.load(Ordering::Relaxed);
        ingest.matched_alone = m.alone.load(Ordering::Relaxed);
    }
    let log_notes = reader.join().unwrap_or_default();
    if let Some(e) = read_error.lock().ok().and_then(|mut e| e.take()) {
        return Err(RunError::Read(e));
    }
    Ok(RunSummary {
        ingest,
        emitted,
        elapsed: running.elapsed(),
        setup,
        exchanged: exchanged.load(Ordering::Relaxed),
        bytes: bytes.load(Ordering::Relaxed),
        log_notes,
        state: state.read(),
    })
}
