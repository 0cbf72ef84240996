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

/// One aggregate update leaving the dataflow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Emission {
    /// How final.
    pub status: Status,
    /// Which row.
    pub key: AggKey,
    /// Its value.
    pub value: AggValue,
    /// The watermark when it was emitted, ms.
    pub watermark: u64,
}

#[derive(Clone, Debug)]
struct Row {
    /// `None` between a retraction and the update that replaces it.
    value: Option<AggValue>,
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
pub struct Emitter {
    spec: TimeSpec,
    pending: Vec<(u64, AggKey, AggValue, isize)>,
    rows: FxHashMap<AggKey, Row>,
    /// Open rows by window end, waiting for the watermark.
    awaiting: BTreeMap<u64, Vec<AggKey>>,
    /// Rows by retirement time, to forget them.
    retiring: BTreeMap<u64, Vec<AggKey>>,
    /// Whether provisional values are wanted at all.
    provisional: bool,
    stats: EmitStats,
}

impl Emitter {
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
    pub fn push(&mut self, time: u64, key: AggKey, value: AggValue, diff: isize) {
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
    pub fn advance(&mut self, frontier: Option<u64>, out: &mut Vec<Emission>) {
        let horizon = frontier.unwrap_or(u64::MAX);
        let (mut ready, rest): (Vec<_>, Vec<_>) =
            self.pending.drain(..).partition(|u| u.0 < horizon);
        self.pending = rest;
        // Within a time, retractions first, so `-old +new` leaves `new`.
        ready.sort_by_key(|&(t, k, _, d)| (t, k, d));
        let mut dirty: Vec<AggKey> = Vec::new();
        let mut retracted: FxHashMap<AggKey, AggValue> = FxHashMap::default();
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
                            .entry(self.spec.window_end(key.window))
                            .or_default()
                            .push(key);
                        self.retiring
                            .entry(self.spec.retire_at(key.window))
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
        dirty: &mut Vec<AggKey>,
        retracted: &FxHashMap<AggKey, AggValue>,
        watermark: u64,
        out: &mut Vec<Emission>,
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
            let closed = self.spec.window_end(key.window) <= watermark;
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
