//! From differential output to aggregate updates with a status.
//!
//! The dataflow's output is a collection of `(AggKey, AggValue)`: the
//! current value of every (key, window) in retention, as diffs at
//! timestamps. The [`Emitter`] turns it into [`Emission`]s once the frontier
//! says a timestamp is complete:
//!
//! * a changed row whose window is still open: [`Status::Provisional`];
//! * a row whose window the frontier (the watermark) has passed, for the
//!   first time: [`Status::Final`];
//! * a change to a row already emitted as final (a late record within
//!   retention): [`Status::Correction`], carrying the new final value.
//!
//! * a row emitted before whose value is retracted and not replaced (only
//!   reference changes do that, e.g. a zone removed): [`Status::Retraction`].
//!
//! A row is forgotten once the watermark reaches its window's retirement
//! (the dataflow stops sending anything about it from then on).
//! The emitter is pure (no timely types), so it is tested on its own.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::aggregate::{AggKey, AggValue};
use crate::time::TimeSpec;

/// How final an emitted value is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Status {
    /// The window is still open; the value may change.
    Provisional,
    /// The watermark passed the window's end: this is its value.
    Final,
    /// A late record changed a final window: this is its new value.
    Correction,
    /// The row no longer exists (its zone was removed from the zone file):
    /// `value` is the last value emitted. Only rows emitted before are
    /// retracted.
    Retraction,
}

/// The key of a row: which window it is in.
pub trait RowKey: Copy + Ord + std::hash::Hash + std::fmt::Debug {
    /// The start of the row's window, ms.
    fn window(&self) -> u64;
}

impl RowKey for AggKey {
    fn window(&self) -> u64 {
        self.window
    }
}

/// One update leaving the dataflow: an aggregate row (by default), or
/// another kind of row with a window, such as the partials an edge pushes
/// to central ([`crate::dataflow::partials::PartialKey`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Emission<K = AggKey, V = AggValue> {
    /// How final.
    pub status: Status,
    /// Which row.
    pub key: K,
    /// Its value.
    pub value: V,
    /// The watermark when it was emitted, ms.
    pub watermark: u64,
}

#[derive(Clone, Debug)]
struct Row<V> {
    /// `None` between a retraction and the update that replaces it.
    value: Option<V>,
    final_sent: bool,
}

/// Counts of what the emitter sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EmitStats {
    /// Provisional emissions.
    pub provisional: u64,
    /// Rows emitted final.
    pub finals: u64,
    /// Corrections of final rows.
    pub corrections: u64,
    /// Rows retracted.
    pub retractions: u64,
}

/// Turns timestamped diffs of rows into emissions (see the module doc).
#[derive(Debug)]
pub struct Emitter<K = AggKey, V = AggValue> {
    spec: TimeSpec,
    pending: Vec<(u64, K, V, isize)>,
    rows: FxHashMap<K, Row<V>>,
    /// Open rows by window end, waiting for the watermark.
    awaiting: BTreeMap<u64, Vec<K>>,
    /// Rows by retirement time, to forget them.
    retiring: BTreeMap<u64, Vec<K>>,
    /// Whether provisional values are wanted at all.
    provisional: bool,
    stats: EmitStats,
}

impl<K: RowKey, V: Clone + PartialEq> Emitter<K, V> {
    /// A new emitter. Without `provisional`, only final rows and corrections
    /// are emitted (replay needs nothing else).
    pub fn new(spec: TimeSpec, provisional: bool) -> Self {
        Emitter {
            spec,
            pending: Vec::new(),
            rows: FxHashMap::default(),
            awaiting: BTreeMap::new(),
            retiring: BTreeMap::new(),
            provisional,
            stats: EmitStats::default(),
        }
    }

    /// Buffers one diff of the output collection.
    pub fn push(&mut self, time: u64, key: K, value: V, diff: isize) {
        self.pending.push((time, key, value, diff));
    }

    /// What was emitted so far.
    pub fn stats(&self) -> EmitStats {
        self.stats
    }

    /// The frontier moved to `frontier` (`None`: the input is exhausted).
    /// Applies every buffered diff before it, one timestamp at a time, and
    /// emits after each: a window whose end lies between two timestamps is
    /// final before the later one applies (which may be its retirement).
    pub fn advance(&mut self, frontier: Option<u64>, out: &mut Vec<Emission<K, V>>) {
        let horizon = frontier.unwrap_or(u64::MAX);
        let (mut ready, rest): (Vec<_>, Vec<_>) =
            self.pending.drain(..).partition(|u| u.0 < horizon);
        self.pending = rest;
        // Within a time, retractions first, so `-old +new` leaves `new`.
        ready.sort_by_key(|&(t, k, _, d)| (t, k, d));
        let mut dirty: Vec<K> = Vec::new();
        let mut retracted: FxHashMap<K, V> = FxHashMap::default();
        let mut ready = ready.into_iter().peekable();
        while let Some(&(time, ..)) = ready.peek() {
            while let Some((_, key, value, diff)) = ready.next_if(|u| u.0 == time) {
                match self.rows.get_mut(&key) {
                    Some(row) if diff < 0 && row.value.as_ref() == Some(&value) => {
                        row.value = None;
                        retracted.insert(key, value);
                    }
                    Some(row) if diff > 0 => row.value = Some(value),
                    None if diff > 0 => {
                        self.rows.insert(
                            key,
                            Row {
                                value: Some(value),
                                final_sent: false,
                            },
                        );
                        self.awaiting
                            .entry(self.spec.window_end(key.window()))
                            .or_default()
                            .push(key);
                        self.retiring
                            .entry(self.spec.retire_at(key.window()))
                            .or_default()
                            .push(key);
                    }
                    // The reduce retracts exactly what it emitted; anything
                    // else would be a bug upstream, and is not trusted.
                    _ => continue,
                }
                dirty.push(key);
            }
            // Everything before the next timestamp is applied: the state is
            // that of a watermark at the next timestamp (or the frontier).
            let watermark = ready.peek().map_or(horizon, |u| u.0);
            self.emit(&mut dirty, &retracted, watermark, out);
        }
        self.emit(&mut dirty, &retracted, horizon, out);
        self.retire(horizon);
    }

    fn emit(
        &mut self,
        dirty: &mut Vec<K>,
        retracted: &FxHashMap<K, V>,
        watermark: u64,
        out: &mut Vec<Emission<K, V>>,
    ) {
        dirty.sort();
        dirty.dedup();
        for key in dirty.drain(..) {
            let Some(row) = self.rows.get_mut(&key) else {
                continue;
            };
            let Some(value) = row.value.clone() else {
                // Retracted and not replaced: the row is gone. Retirement
                // retractions never get here (the dataflow filters them).
                let sent = row.final_sent || self.provisional;
                self.rows.remove(&key);
                if let (true, Some(value)) = (sent, retracted.get(&key).cloned()) {
                    out.push(Emission {
                        status: Status::Retraction,
                        key,
                        value,
                        watermark,
                    });
                    self.count(Status::Retraction);
                }
                continue;
            };
            let closed = self.spec.window_end(key.window()) <= watermark;
            let status = match (closed, row.final_sent) {
                (false, _) if self.provisional => Status::Provisional,
                (false, _) => continue,
                (true, false) => Status::Final,
                (true, true) => Status::Correction,
            };
            row.final_sent |= closed;
            out.push(Emission {
                status,
                key,
                value,
                watermark,
            });
            self.count(status);
        }
        // Rows whose window closed without a change.
        while let Some((&end, _)) = self.awaiting.first_key_value() {
            if end > watermark {
                break;
            }
            let Some((_, keys)) = self.awaiting.pop_first() else {
                break;
            };
            for key in keys {
                if let Some(row) = self.rows.get_mut(&key) {
                    if let (Some(value), false) = (row.value.clone(), row.final_sent) {
                        row.final_sent = true;
                        out.push(Emission {
                            status: Status::Final,
                            key,
                            value,
                            watermark,
                        });
                        self.count(Status::Final);
                    }
                }
            }
        }
    }

    /// Forgets rows whose window retired at or before `watermark`.
    fn retire(&mut self, watermark: u64) {
        while let Some((&at, _)) = self.retiring.first_key_value() {
            if at > watermark {
                break;
            }
            if let Some((_, keys)) = self.retiring.pop_first() {
                for key in keys {
                    self.rows.remove(&key);
                }
            }
        }
    }

    fn count(&mut self, status: Status) {
        match status {
            Status::Provisional => self.stats.provisional += 1,
            Status::Final => self.stats.finals += 1,
            Status::Correction => self.stats.corrections += 1,
            Status::Retraction => self.stats.retractions += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::aggregate::{Congestion, Kind};

    /// Windows of 60 s, retention 120 s.
    fn spec() -> TimeSpec {
        TimeSpec::new(
            Duration::from_secs(60),
            Duration::from_secs(5),
            Duration::from_secs(120),
        )
    }

    fn key(segment: u32, window: u64) -> AggKey {
        AggKey {
            kind: Kind::Congestion,
            key: segment,
            window,
        }
    }

    fn value(samples: u64) -> AggValue {
        AggValue::Congestion(Congestion {
            samples,
            vehicles: 1,
            speed_sum: 0,
        })
    }

    /// What `advance(frontier)` emits, as (status, segment, window, samples).
    fn advance(e: &mut Emitter, frontier: Option<u64>) -> Vec<(Status, u32, u64, u64)> {
        let mut out = Vec::new();
        e.advance(frontier, &mut out);
        out.into_iter()
            .map(|m| match m.value {
                AggValue::Congestion(c) => (m.status, m.key.key, m.key.window, c.samples),
                _ => unreachable!("congestion only"),
            })
            .collect()
    }

    #[test]
    fn open_windows_are_provisional_then_final_once_the_watermark_passes_their_end() {
        let mut e = Emitter::new(spec(), true);
        e.push(10_000, key(1, 0), value(1), 1);
        assert_eq!(
            advance(&mut e, Some(10_001)),
            [(Status::Provisional, 1, 0, 1)]
        );
        // Same window, new value: the old one retracted, the new one added.
        e.push(20_000, key(1, 0), value(1), -1);
        e.push(20_000, key(1, 0), value(2), 1);
        assert_eq!(
            advance(&mut e, Some(20_001)),
            [(Status::Provisional, 1, 0, 2)]
        );
        // Nothing changes, the watermark passes 60 s: final, once.
        assert_eq!(advance(&mut e, Some(60_000)), [(Status::Final, 1, 0, 2)]);
        assert_eq!(advance(&mut e, Some(61_000)), []);
        assert_eq!(
            e.stats(),
            EmitStats {
                provisional: 2,
                finals: 1,
                corrections: 0,
                retractions: 0
            }
        );
    }

    #[test]
    fn without_provisional_only_final_rows_and_corrections_leave() {
        let mut e = Emitter::new(spec(), false);
        e.push(10_000, key(1, 0), value(1), 1);
        assert_eq!(advance(&mut e, Some(30_000)), []);
        assert_eq!(advance(&mut e, Some(60_000)), [(Status::Final, 1, 0, 1)]);
        // A late record within retention: a correction with the new value.
        e.push(70_000, key(1, 0), value(1), -1);
        e.push(70_000, key(1, 0), value(3), 1);
        assert_eq!(
            advance(&mut e, Some(70_001)),
            [(Status::Correction, 1, 0, 3)]
        );
    }

    #[test]
    fn a_window_ending_between_two_timestamps_is_final_before_the_later_one_applies() {
        let mut e = Emitter::new(spec(), false);
        e.push(10_000, key(1, 0), value(1), 1);
        // At 65 s the window [0, 60 s) has ended: the diff then corrects it.
        e.push(65_000, key(1, 0), value(1), -1);
        e.push(65_000, key(1, 0), value(2), 1);
        assert_eq!(
            advance(&mut e, Some(70_000)),
            [(Status::Final, 1, 0, 1), (Status::Correction, 1, 0, 2)]
        );
    }

    #[test]
    fn diffs_at_or_beyond_the_frontier_wait() {
        let mut e = Emitter::new(spec(), true);
        e.push(10_000, key(1, 0), value(1), 1);
        e.push(30_000, key(2, 0), value(1), 1);
        assert_eq!(
            advance(&mut e, Some(30_000)),
            [(Status::Provisional, 1, 0, 1)]
        );
        assert_eq!(
            advance(&mut e, Some(30_001)),
            [(Status::Provisional, 2, 0, 1)]
        );
    }

    #[test]
    fn a_removed_row_is_retracted_only_if_it_was_ever_sent() {
        // Final mode: row 1 was final, row 2 was never sent.
        let mut e = Emitter::new(spec(), false);
        e.push(10_000, key(1, 0), value(1), 1);
        e.push(70_000, key(2, 60_000), value(1), 1);
        assert_eq!(advance(&mut e, Some(70_001)), [(Status::Final, 1, 0, 1)]);
        e.push(80_000, key(1, 0), value(1), -1);
        e.push(80_000, key(2, 60_000), value(1), -1);
        assert_eq!(
            advance(&mut e, Some(80_001)),
            [(Status::Retraction, 1, 0, 1)]
        );
        // Gone: its window end passes without a final.
        assert_eq!(advance(&mut e, Some(200_000)), []);
        assert_eq!(e.stats().retractions, 1);
    }

    #[test]
    fn a_retraction_that_does_not_match_the_row_is_not_trusted() {
        let mut e = Emitter::new(spec(), true);
        e.push(10_000, key(1, 0), value(2), 1);
        advance(&mut e, Some(10_001));
        e.push(20_000, key(1, 0), value(5), -1);
        assert_eq!(advance(&mut e, Some(20_001)), []);
        assert_eq!(advance(&mut e, Some(60_000)), [(Status::Final, 1, 0, 2)]);
    }

    #[test]
    fn retired_rows_are_forgotten_and_state_stays_bounded() {
        let mut e = Emitter::new(spec(), false);
        // An hour of windows over ten segments, the watermark following.
        for minute in 0..60u64 {
            let start = minute * 60_000;
            for segment in 0..10 {
                e.push(start + 1_000, key(segment, start), value(minute + 1), 1);
            }
            advance(&mut e, Some(start + 1_001));
            // Held: the open window and those within retention (two), each
            // of ten rows; never more, however long it runs.
            assert!(e.rows.len() <= 40, "minute {minute}: {} rows", e.rows.len());
            assert!(e.retiring.len() <= 4 && e.awaiting.len() <= 2);
        }
        assert_eq!(e.stats().finals, 59 * 10);
        // The input ends: the last windows are final, then all retire.
        let last = advance(&mut e, None);
        assert_eq!(last.len(), 10);
        assert!(last.iter().all(|r| r.0 == Status::Final && r.3 == 60));
        assert!(e.rows.is_empty() && e.retiring.is_empty() && e.awaiting.is_empty());
    }

    #[test]
    fn the_order_of_diffs_within_a_timestamp_changes_nothing() {
        let diffs = [
            (10_000, key(1, 0), value(1), 1),
            (10_000, key(2, 0), value(4), 1),
            (20_000, key(1, 0), value(1), -1),
            (20_000, key(1, 0), value(2), 1),
            (20_000, key(3, 0), value(7), 1),
        ];
        let run = |order: &[usize]| {
            let mut e = Emitter::new(spec(), true);
            for &i in order {
                let (t, k, v, d) = diffs[i].clone();
                e.push(t, k, v, d);
            }
            let mut all = advance(&mut e, Some(30_000));
            all.extend(advance(&mut e, None));
            all
        };
        let first = run(&[0, 1, 2, 3, 4]);
        assert_eq!(first, run(&[4, 3, 2, 1, 0]));
        assert_eq!(first, run(&[3, 0, 4, 2, 1]));
        assert!(first.contains(&(Status::Final, 1, 0, 2)));
    }
}
