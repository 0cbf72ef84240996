//! The worker side of ingest: decode a chunk, classify each record against
//! the chunk's watermark, pre-aggregate, and feed the dataflow inputs.
//!
//! Raw records straight into differential cost several times the work
//! itself (measured: 4-8 times a plain loop). So a [`Stage`] sums reports per
//! `(segment, window, vehicle)` over a whole batch of chunks and hands
//! differential one [`SpeedSum`] update per key and batch, plus its mirror
//! image at the window's retirement time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use crate::aggregate::SpeedSum;
use crate::dataflow::connectors::ChargerReading;
use crate::dataflow::matching::FixRecord;
use crate::dataflow::Inputs;
use crate::input::{Chunk, ChunkClock};
use crate::model::{RecordError, RejectReason};
use crate::reference::Reference;
use crate::resolve::{resolve, Item, Matched};
use crate::time::{ChunkTimes, Fate, TimeSpec};

/// Distinct keys in a pre-aggregation batch before it is flushed. Bounds the
/// batch map: about 40 bytes per key, so 2.6 MiB per worker at worst.
pub const FLUSH_KEYS: usize = 1 << 16;
/// Records in a batch before it is flushed, whatever its key count.
pub const FLUSH_RECORDS: u64 = 1 << 17;
/// Longest a record waits in an open batch when input pauses: a batch is
/// flushed when the input queue is empty and the batch is this old. Large
/// enough that a brief stall of the reader does not cut batches short
/// (fewer, richer updates), small against the seconds-scale freshness the
/// aggregates need.
pub const FLUSH_IDLE: Duration = Duration::from_millis(20);
/// Error messages kept per worker for the run summary (all are counted).
pub const MAX_REPORTED_ERRORS: usize = 20;

pub use crate::geo::Unmatched;

/// What one worker counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IngestStats {
    /// Non-empty lines read.
    pub records: u64,
    /// Accepted vehicle reports.
    pub vehicle: u64,
    /// Accepted charger reports.
    pub charger: u64,
    /// Rejected records by [`RejectReason::index`].
    pub rejected: [u64; RejectReason::ALL.len()],
    /// Accepted behind the watermark, window still open.
    pub late: u64,
    /// Accepted after their window was final: corrections.
    pub corrections: u64,
    /// Dropped: window already retired.
    pub expired: u64,
    /// Vehicle reports without `segment_id` that map matching placed on a
    /// segment.
    pub map_matched: u64,
    /// HMM decisions changed after they were first made (a late report,
    /// or the vehicle's next reports after a decision fell due).
    pub rematched: u64,
    /// Reports the HMM could not place in their trajectory (older than
    /// every report kept for the vehicle), matched alone.
    pub matched_alone: u64,
    /// Vehicle reports counting toward no segment, by
    /// [`Unmatched::index`].
    pub unmatched: [u64; Unmatched::ALL.len()],
    /// Connector windows whose energy register went backwards (counted
    /// from their lowest reading; [`crate::dataflow::connectors`]).
    pub energy_resets: u64,
    /// Connector windows whose energy was above what the connector can
    /// deliver, capped.
    pub energy_capped: u64,
    /// The first errors, as `(line, message)`.
    pub errors: Vec<(u64, String)>,
}

/// The counts of a running dataflow, over all workers: each worker adds
/// what it counted since its last chunk (so a node's metrics are live,
/// and nothing is counted per record for them).
#[derive(Debug, Default)]
pub struct LiveStats {
    /// Records read.
    pub records: AtomicU64,
    /// Rejected, by [`RejectReason::index`].
    pub rejected: [AtomicU64; RejectReason::ALL.len()],
    /// Accepted behind the watermark, window still open.
    pub late: AtomicU64,
    /// Accepted after their window was final.
    pub corrections: AtomicU64,
    /// Dropped: window retired.
    pub expired: AtomicU64,
    /// Placed on a segment by the point matcher.
    pub map_matched: AtomicU64,
    /// Counting toward no segment, by [`Unmatched::index`].
    pub unmatched: [AtomicU64; Unmatched::ALL.len()],
    /// The HMM's decisions, when it matches (set by the run).
    pub hmm: std::sync::OnceLock<std::sync::Arc<crate::dataflow::matching::MatchCounts>>,
}

impl LiveStats {
    /// Adds what `now` counted beyond `published`, then remembers `now`.
    pub fn catch_up(&self, now: &IngestStats, published: &mut IngestStats) {
        let add = |a: &AtomicU64, n: u64, p: u64| {
            if n > p {
                a.fetch_add(n - p, Ordering::Relaxed);
            }
        };
        add(&self.records, now.records, published.records);
        for ((a, n), p) in self
            .rejected
            .iter()
            .zip(now.rejected)
            .zip(published.rejected)
        {
            add(a, n, p);
        }
        add(&self.late, now.late, published.late);
        add(&self.corrections, now.corrections, published.corrections);
        add(&self.expired, now.expired, published.expired);
        add(&self.map_matched, now.map_matched, published.map_matched);
        for ((a, n), p) in self
            .unmatched
            .iter()
            .zip(now.unmatched)
            .zip(published.unmatched)
        {
            add(a, n, p);
        }
        published.records = now.records;
        published.rejected = now.rejected;
        published.late = now.late;
        published.corrections = now.corrections;
        published.expired = now.expired;
        published.map_matched = now.map_matched;
        published.unmatched = now.unmatched;
    }

    /// Publishes the counts (inside a node registry's scope): the
    /// `edgeflow_records_*` metrics.
    pub fn publish_metrics(&self) {
        use crate::metrics as M;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let hmm = self.hmm.get();
        let net = |a: &std::sync::atomic::AtomicI64| a.load(Ordering::Relaxed).max(0) as u64;
        metrics::counter!(M::RECORDS_READ).absolute(get(&self.records));
        for r in RejectReason::ALL {
            let n = get(&self.rejected[r.index()]);
            if n > 0 {
                metrics::counter!(M::RECORDS_REJECTED, "reason" => r.as_str()).absolute(n);
            }
        }
        metrics::counter!(M::RECORDS_LATE).absolute(get(&self.late));
        metrics::counter!(M::RECORDS_CORRECTIONS).absolute(get(&self.corrections));
        metrics::counter!(M::RECORDS_EXPIRED).absolute(get(&self.expired));
        let matched = get(&self.map_matched) + hmm.map_or(0, |h| net(&h.matched));
        metrics::counter!(M::RECORDS_MAP_MATCHED).absolute(matched);
        for why in Unmatched::ALL {
            let n = get(&self.unmatched[why.index()])
                + hmm.map_or(0, |h| net(&h.unmatched[why.index()]));
            metrics::counter!(M::RECORDS_UNMATCHED, "reason" => why.name()).absolute(n);
        }
    }
}

impl IngestStats {
    /// Adds another worker's counts.
    pub fn merge(&mut self, o: &IngestStats) {
        self.records += o.records;
        self.vehicle += o.vehicle;
        self.charger += o.charger;
        for (a, b) in self.rejected.iter_mut().zip(o.rejected) {
            *a += b;
        }
        self.late += o.late;
        self.corrections += o.corrections;
        self.expired += o.expired;
        self.map_matched += o.map_matched;
        self.rematched += o.rematched;
        self.matched_alone += o.matched_alone;
        self.energy_resets += o.energy_resets;
        self.energy_capped += o.energy_capped;
        for (a, b) in self.unmatched.iter_mut().zip(o.unmatched) {
            *a += b;
        }
        self.errors.extend(o.errors.iter().cloned());
        self.errors.sort();
        self.errors.truncate(MAX_REPORTED_ERRORS);
    }

    /// All unmatched vehicle reports.
    pub fn unmatched_total(&self) -> u64 {
        self.unmatched.iter().sum()
    }

    /// All rejected records.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.iter().sum()
    }

    fn reject(&mut self, line: u64, err: &RecordError) {
        self.rejected[err.reason.index()] += 1;
        if self.errors.len() < MAX_REPORTED_ERRORS {
            self.errors.push((line, err.to_string()));
        }
    }
}

/// Pacing of a replay at a multiple of event time.
#[derive(Clone, Copy, Debug)]
pub struct Pacing {
    /// When the run started.
    pub start: Instant,
    /// Event-time seconds per wall-clock second.
    pub speed: f64,
}

/// One worker's ingest state: the current pre-aggregation batch.
pub struct Stage<'a> {
    reference: &'a Reference,
    spec: TimeSpec,
    clock: &'a ChunkClock,
    pacing: Option<Pacing>,
    reports: FxHashMap<(u32, u64, u64), SpeedSum>,
    /// Low-SoC EV reports per `(segment, window, vehicle)`.
    low_soc: FxHashMap<(u64, u64, u64), isize>,
    readings: Vec<ChargerReading>,
    /// Time of the batch: the watermark of its first chunk.
    batch_time: Option<u64>,
    /// When the batch got its first chunk.
    batch_opened: Option<Instant>,
    batch_records: u64,
    /// Records in a batch before it is flushed ([`FLUSH_RECORDS`] unless
    /// the run says otherwise).
    pub flush_records: u64,
    /// Watermark of the last chunk processed.
    watermark: u64,
    /// Granularity of dataflow times, ms (see [`Stage::tick`]).
    tick_ms: u64,
    items: Vec<(u64, Item)>,
    /// Reports to match by HMM, for the batch.
    fixes: Vec<FixRecord>,
    /// Windows retiring at or before this are frozen ([`crate::checkpoint`]).
    frozen: u64,
    /// Counts.
    pub stats: IngestStats,
}

impl<'a> Stage<'a> {
    /// A stage for one worker. With `provisional`, dataflow times are
    /// seconds of watermark; without, window ends.
    pub fn new(
        reference: &'a Reference,
        spec: TimeSpec,
        clock: &'a ChunkClock,
        pacing: Option<Pacing>,
        provisional: bool,
    ) -> Self {
        // Final values only: one time per window. Provisional values are
        // wanted fresh: one time per second of event time. So are the HMM's
        // decisions, which fall due `lag` after a fix: with window ticks, a
        // window's last fixes would be due only a window later.
        let fine = provisional || reference.hmm.is_some();
        let tick_ms = if fine && spec.size_ms.is_multiple_of(1000) {
            1000
        } else {
            spec.size_ms
        };
        Stage {
            reference,
            spec,
            clock,
            pacing,
            reports: FxHashMap::default(),
            low_soc: FxHashMap::default(),
            readings: Vec::new(),
            batch_time: None,
            batch_opened: None,
            batch_records: 0,
            flush_records: FLUSH_RECORDS,
            watermark: 0,
            tick_ms,
            items: Vec::new(),
            fixes: Vec::new(),
            frozen: 0,
            stats: IngestStats::default(),
        }
    }

    /// Ignores records of windows retiring at or before `horizon`: their
    /// rows were final before a checkpoint and live in the sinks only.
    /// They are counted as expired.
    pub fn freeze(&mut self, horizon: u64) {
        self.frozen = horizon;
    }

    /// Decodes, classifies and pre-aggregates one chunk.
    pub fn process(&mut self, chunk: &Chunk, inputs: &Inputs) {
        let (reference, stats, items) = (self.reference, &mut self.stats, &mut self.items);
        match &chunk.resolved {
            // Resolved at ingest: nothing to decode.
            Some(resolved) => {
                for (i, item) in resolved.iter().enumerate() {
                    stats.records += 1;
                    items.push((chunk.first_line + i as u64, *item));
                }
            }
            None => chunk.for_each_record(|line, record| {
                stats.records += 1;
                match record.and_then(|r| resolve(&r, reference)) {
                    Ok(item) => items.push((line, item)),
                    Err(e) => stats.reject(line, &e),
                }
            }),
        }
        let times = match chunk.tick() {
            Some(t) => ChunkTimes::tick(t),
            None => ChunkTimes::new(
                items.iter().map(|(_, i)| (i.device(), i.ts())),
                self.clock.floor(),
                &self.spec,
            ),
        };
        let max_ts = times.max;
        self.clock.publish(chunk.seq, times);
        let (prefix, first) = self.clock.prefix_before(chunk.seq);
        let watermark = self.spec.watermark(prefix);
        if let (Some(p), Some(first), Some(max)) = (self.pacing, first, max_ts) {
            let offset =
                Duration::try_from_secs_f64(max.saturating_sub(first) as f64 / 1000.0 / p.speed);
            if let Some(due) = offset.ok().and_then(|o| p.start.checked_add(o)) {
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
            }
        }
        // Each worker sees its chunks in order, so the watermark only grows.
        self.watermark = self.watermark.max(watermark);
        let time = self.tick(self.watermark).max(inputs.time());
        self.batch_time.get_or_insert(time);
        self.batch_opened.get_or_insert_with(Instant::now);
        for (_, item) in self.items.drain(..) {
            let ts = item.ts();
            let window = self.spec.window_start(ts);
            if self.spec.retire_at(window) <= self.frozen {
                self.stats.expired += 1;
                continue;
            }
            match self.spec.classify(ts, watermark) {
                Fate::Expired => {
                    self.stats.expired += 1;
                    continue;
                }
                Fate::Correction => self.stats.corrections += 1,
                Fate::Late => self.stats.late += 1,
                Fate::OnTime => {}
            }
            match item {
                Item::Report {
                    segment: Some(segment),
                    vehicle,
                    speed,
                    how,
                    low_soc,
                    ..
                } => {
                    self.stats.vehicle += 1;
                    if how == Matched::ByNode {
                        self.stats.map_matched += 1;
                    }
                    if let Some(cell) = low_soc {
                        *self.low_soc.entry((cell, window, vehicle)).or_default() += 1;
                    }
                    let s = self.reports.entry((segment, window, vehicle)).or_default();
                    s.count += 1;
                    s.sum += speed;
                }
                Item::Report {
                    how,
                    low_soc,
                    vehicle,
                    ..
                } => {
                    self.stats.vehicle += 1;
                    if let Matched::No(why) = how {
                        self.stats.unmatched[why.index()] += 1;
                    }
                    // Off the road, it still needs charge where it is.
                    if let Some(cell) = low_soc {
                        *self.low_soc.entry((cell, window, vehicle)).or_default() += 1;
                    }
                }
                Item::Fix {
                    vehicle,
                    device,
                    ts,
                    speed,
                    low_soc,
                    position,
                    heading,
                } => {
                    // Counted matched or unmatched once the dataflow
                    // decides ([`crate::dataflow::matching::MatchCounts`]).
                    self.stats.vehicle += 1;
                    if let Some(cell) = low_soc {
                        *self.low_soc.entry((cell, window, vehicle)).or_default() += 1;
                    }
                    self.fixes.push(FixRecord {
                        device,
                        vehicle,
                        ts,
                        lon: position[0],
                        lat: position[1],
                        heading,
                        speed,
                    });
                }
                Item::Reading {
                    charger,
                    connector,
                    reading,
                } => {
                    self.stats.charger += 1;
                    self.readings.push(ChargerReading {
                        charger,
                        connector,
                        window,
                        reading,
                        carry: false,
                    });
                }
            }
            self.batch_records += 1;
        }
    }

    /// Whether the batch should go to the dataflow now.
    pub fn should_flush(&self) -> bool {
        self.pacing.is_some()
            || self.reports.len() >= FLUSH_KEYS
            || self.fixes.len() >= FLUSH_KEYS
            || self.batch_records >= self.flush_records
    }

    /// The dataflow time for a watermark: rounded down to the tick, so the
    /// batches of all workers within a tick share one time and differential
    /// consolidates them. A tick that divides the window size changes no
    /// window's finality (windows end on ticks).
    fn tick(&self, watermark: u64) -> u64 {
        watermark - watermark % self.tick_ms
    }

    /// Brings an idle worker's watermark up to the clock's: every chunk it
    /// may still take comes after every chunk folded into the clock, so its
    /// watermark is at least that. Without this, a worker that took no chunk
    /// for a while (the others took them all) would hold its input, and so
    /// the frontier, back: no window would become final until it took one.
    pub fn follow_clock(&mut self) {
        let watermark = self.spec.watermark(self.clock.floor());
        self.watermark = self.watermark.max(watermark);
    }

    /// The watermark this worker's input has reached (for tests).
    pub fn watermark(&self) -> u64 {
        self.watermark
    }

    /// Whether the input paused long enough to flush a partial batch.
    pub fn idle_flush_due(&self) -> bool {
        self.batch_opened.is_none_or(|t| t.elapsed() >= FLUSH_IDLE)
    }

    /// Hands the batch to the dataflow and advances the inputs to the
    /// current watermark.
    pub fn flush(&mut self, inputs: &mut Inputs) {
        self.batch_opened = None;
        if let Some(time) = self.batch_time.take() {
            for ((segment, window, vehicle), sum) in self.reports.drain() {
                let key = ((segment, window), vehicle);
                let mut negated = sum;
                differential_dataflow::difference::Abelian::negate(&mut negated);
                inputs.congestion.update_at(key, time, sum);
                inputs
                    .congestion
                    .update_at(key, self.spec.retire_at(window), negated);
            }
            for ((cell, window, vehicle), n) in self.low_soc.drain() {
                let key = ((cell, window), vehicle);
                inputs.low_soc.update_at(key, time, n);
                inputs
                    .low_soc
                    .update_at(key, self.spec.retire_at(window), -n);
            }
            for r in self.readings.drain(..) {
                inputs.charging.update_at(r, time, 1);
            }
            inputs.send_fixes(time, &mut self.fixes);
            self.batch_records = 0;
        }
        let time = self.tick(self.watermark).max(inputs.time());
        inputs.advance_to(time);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_that_took_no_chunk_follows_the_clock_so_windows_can_close() {
        let spec = TimeSpec::new(
            Duration::from_secs(60),
            Duration::from_secs(5),
            Duration::from_secs(900),
        );
        let clock = ChunkClock::new(spec);
        let reference = Reference::default();
        let mut idle = Stage::new(&reference, spec, &clock, None, false);
        // Another worker took chunks 0 and 1 and published them.
        let t = 1_767_258_000_000;
        for (seq, ts) in [(0, t), (1, t + 120_000)] {
            clock.publish(seq, ChunkTimes::new([(1, ts)], clock.floor(), &spec));
        }
        assert_eq!(idle.watermark(), 0);
        idle.follow_clock();
        assert_eq!(idle.watermark(), t + 120_000 - 5_000);
    }
}
