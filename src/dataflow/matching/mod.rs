//! HMM map matching in the dataflow (issue 14): reports without
//! `segment_id` are matched per vehicle, as trajectories
//! ([`crate::geo::hmm`]), and join the congestion input as
//! `((segment, window), vehicle)` updates like the pre-aggregated reports.
//!
//! ```text
//! fixes (Stage, at the batch's time) -> exchange by vehicle -> Match -> congestion updates
//! ```
//!
//! # Determinism, and when a window is final
//! A fix's decision is a pure function of its vehicle's fixes
//! ([`crate::geo::hmm`]: those up to `t + lag`, taken in the order of
//! [`Fix::order_key`], then speed and vehicle hash). The operator keeps,
//! per vehicle, the fixes of the windows still open (and one window
//! before) with their current
//! decisions, the live [`Track`] over all of them, and a snapshot of the
//! track before the first fix of each window:
//! - fixes of one dataflow time are taken together once the time is
//!   complete, sorted, so which worker decoded them changes nothing;
//! - a fix that sorts before fixes already taken (a late one) restores the
//!   snapshot before it and takes the fixes from there again; decisions
//!   that change are retracted and replaced (corrections, never silent);
//! - a fix is due once the watermark (the frontier) is `lag` past it: every
//!   fix on time up to `t + lag` is in. Its vehicle's own later fixes
//!   usually decided it already; if not (the vehicle went quiet), it is
//!   decided by finishing a copy of the track, which is what the next fix
//!   decides unless it comes within the lag;
//! - the operator holds its output `lag` behind its input, so a window is
//!   final downstream only once every fix in it is due: final rows come
//!   `lag` later than with the point matcher, and are exact for every fix
//!   on time (a late fix may still correct them);
//! - a vehicle idle for `max_gap` (by the watermark) has its track
//!   finished: the same decisions as the break its next fix would cause.
//!
//! So the final decisions, and the aggregates, are those of the vehicle's
//! fixes in order, whatever the worker count, batching or arrival order
//! within the allowed lateness. A fix older than every fix kept for its
//! vehicle (only possible past the allowed lateness, as a correction) is
//! matched alone by the point matcher and counted ([`MatchCounts::alone`]).
//!
//! State per vehicle: the fixes of about two windows (~60 bytes each), a
//! snapshot per window (a track: about 2 KB), dropped once the vehicle has
//! been idle for `max_gap` past the oldest window kept.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use differential_dataflow::AsCollection;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;

use crate::aggregate::SpeedSum;
use crate::geo::hmm::{Decision, Fix, Hmm, Reason, Track};
use crate::geo::Unmatched;
use crate::reference::Reference;
use crate::time::TimeSpec;

use super::CongestionKey;

/// Updates the operator gathers before it sends them (about 40 bytes
/// each: 2.6 MiB per worker at worst), as the Stage's batches.
pub const MAX_GATHERED: usize = 1 << 16;

/// What the dataflow needs to match by HMM.
#[derive(Clone)]
pub struct Matching {
    /// The reference data (the point matcher matches what is too old).
    pub reference: Arc<Reference>,
    /// The HMM.
    pub hmm: Arc<Hmm>,
    /// What was decided, over all workers.
    pub counts: Arc<MatchCounts>,
}

impl Matching {
    /// Matching by `reference`'s HMM, if it has one.
    pub fn of(reference: &Arc<Reference>) -> Option<Self> {
        reference.hmm.as_ref().map(|hmm| Matching {
            reference: reference.clone(),
            hmm: hmm.clone(),
            counts: Arc::default(),
        })
    }
}

/// A vehicle report the HMM matches: what the dataflow needs of it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct FixRecord {
    /// Hash of the vehicle id (unkeyed): whose track it joins.
    pub device: u64,
    /// The vehicle hash distinct counts use ([`crate::resolve::Item`]).
    pub vehicle: u64,
    /// Event time, ms.
    pub ts: u64,
    /// Longitude, degrees.
    pub lon: f64,
    /// Latitude, degrees.
    pub lat: f64,
    /// Heading, degrees, when known.
    pub heading: Option<f64>,
    /// Speed, µm/s.
    pub speed: i64,
}

/// The order a vehicle's fixes are matched in: [`Fix::order_key`], then
/// the rest of the report, so that equal fixes never depend on arrival.
type Key = ((u64, u64, u64, u64), i64, u64);

impl FixRecord {
    /// The fix the matcher takes.
    pub fn fix(&self) -> Fix {
        Fix {
            ts_ms: self.ts,
            lon: self.lon,
            lat: self.lat,
            heading_deg: self.heading,
        }
    }

    fn key(&self) -> Key {
        (self.fix().order_key(), self.speed, self.vehicle)
    }
}

/// What matching decided, counted over a run (all workers). A changed
/// decision moves its fix from one count to the other, so the counts are
/// those of the final decisions, whatever the arrival order.
#[derive(Debug, Default)]
pub struct MatchCounts {
    /// Fixes placed on a segment.
    pub matched: AtomicI64,
    /// Fixes on no segment, by [`Unmatched::index`].
    pub unmatched: [AtomicI64; Unmatched::ALL.len()],
    /// Decisions changed after they were first made: by a late fix, or by
    /// the vehicle's later fixes after a due decision.
    pub changed: AtomicU64,
    /// Fixes older than every fix kept for their vehicle, matched alone by
    /// the point matcher.
    pub alone: AtomicU64,
    /// Late fixes that took their vehicle's track back to a snapshot.
    pub retaken: AtomicU64,
}

/// One invocation's counts, added to the shared ones at its end.
#[derive(Default)]
struct LocalCounts {
    matched: i64,
    unmatched: [i64; Unmatched::ALL.len()],
    changed: u64,
    alone: u64,
    retaken: u64,
}

impl LocalCounts {
    fn count(&mut self, result: Result<u32, Reason>, n: i64) {
        match result {
            Ok(_) => self.matched += n,
            Err(r) => self.unmatched[r.unmatched().index()] += n,
        }
    }

    fn publish(&mut self, to: &MatchCounts) {
        let add = |a: &AtomicU64, n: &mut u64| {
            if *n > 0 {
                a.fetch_add(std::mem::take(n), Ordering::Relaxed);
            }
        };
        let net = |a: &AtomicI64, n: &mut i64| {
            if *n != 0 {
                a.fetch_add(std::mem::take(n), Ordering::Relaxed);
            }
        };
        net(&to.matched, &mut self.matched);
        for (a, n) in to.unmatched.iter().zip(self.unmatched.iter_mut()) {
            net(a, n);
        }
        add(&to.changed, &mut self.changed);
        add(&to.alone, &mut self.alone);
        add(&to.retaken, &mut self.retaken);
    }
}

/// Congestion updates being made, by key and time.
#[derive(Default)]
pub struct Changes {
    /// The time new values are stamped with.
    now: u64,
    updates: FxHashMap<(CongestionKey, u64), SpeedSum>,
    counts: LocalCounts,
}

impl Changes {
    fn add(&mut self, spec: &TimeSpec, rec: &FixRecord, segment: u32, sign: i64) {
        let window = spec.window_start(rec.ts);
        let retire = spec.retire_at(window);
        if retire <= self.now {
            return;
        }
        let key = ((segment, window), rec.vehicle);
        let s = SpeedSum {
            count: sign,
            sum: sign * rec.speed,
        };
        *self.updates.entry((key, self.now)).or_default() += &s;
        let undo = SpeedSum {
            count: -s.count,
            sum: -s.sum,
        };
        *self.updates.entry((key, retire)).or_default() += &undo;
    }

    /// `rec`'s decision went from `old` to `new`.
    fn decided(
        &mut self,
        spec: &TimeSpec,
        rec: &FixRecord,
        old: Option<Result<u32, Reason>>,
        new: Result<u32, Reason>,
    ) {
        if old == Some(new) {
            return;
        }
        if let Some(old) = old {
            self.counts.count(old, -1);
            self.counts.changed += 1;
        }
        self.counts.count(new, 1);
        if let Some(Ok(seg)) = old {
            self.add(spec, rec, seg, -1);
        }
        if let Ok(seg) = new {
            self.add(spec, rec, seg, 1);
        }
    }

    /// The updates, without those that cancelled out.
    fn drain(&mut self) -> impl Iterator<Item = (CongestionKey, u64, SpeedSum)> + '_ {
        self.updates
            .drain()
            .filter(|(_, s)| s.count != 0 || s.sum != 0)
            .map(|((key, time), s)| (key, time, s))
    }
}

/// A fix kept for its vehicle, with its current decision.
#[derive(Clone, Copy, Debug)]
struct Kept {
    rec: FixRecord,
    decided: Option<Result<u32, Reason>>,
}

/// The track before the fix of index `index`, the first of its window.
#[derive(Clone, Debug)]
struct Snapshot {
    index: u64,
    track: Track,
}

/// One vehicle's matching state.
#[derive(Clone, Debug, Default)]
struct Vehicle {
    /// Kept fixes in key order; the track has taken all of them.
    fixes: VecDeque<Kept>,
    /// Track index of `fixes[0]`.
    base: u64,
    track: Track,
    snapshots: VecDeque<Snapshot>,
    /// The track was finished (idle): a next fix within `max_gap` of the
    /// last one must be taken from a snapshot.
    finished: bool,
    /// Fixes before this index were decided by finishing a copy.
    flushed_to: u64,
    /// Key of the last fix given up (older fixes are matched alone).
    pruned: Option<Key>,
}

/// Every vehicle's matching state on one worker: the operator's logic,
/// without timely (tests drive it directly).
pub struct Fleet {
    hmm: Arc<Hmm>,
    reference: Arc<Reference>,
    spec: TimeSpec,
    vehicles: FxHashMap<u64, Vehicle>,
    /// The horizon of the last [`Fleet::advance`]: a new vehicle's fixes
    /// before it are matched alone.
    horizon: u64,
    decisions: Vec<Decision>,
    /// Scratch: one vehicle's fixes of a time that join its track.
    fresh: Vec<FixRecord>,
}

impl Fleet {
    /// An empty fleet matching with `reference`'s HMM (which it must have).
    pub fn new(reference: Arc<Reference>, hmm: Arc<Hmm>, spec: TimeSpec) -> Self {
        Fleet {
            hmm,
            reference,
            spec,
            vehicles: FxHashMap::default(),
            horizon: 0,
            decisions: Vec::new(),
            fresh: Vec::new(),
        }
    }

    /// Vehicles with state.
    pub fn vehicles(&self) -> usize {
        self.vehicles.len()
    }

    /// The oldest fix time a vehicle keeps at frontier `f`: the open
    /// windows' fixes (a fix within the allowed lateness arriving from now
    /// on is in a window ending after the watermark, at least `f`) and one
    /// window before them.
    fn horizon(&self, f: u64) -> u64 {
        self.spec.window_start(f).saturating_sub(self.spec.size_ms)
    }

    /// Takes the fixes of one complete dataflow time (any order, any
    /// vehicles).
    pub fn add(&mut self, mut recs: Vec<FixRecord>, out: &mut Changes) {
        if recs.len() > 1 {
            recs.sort_unstable_by(|a, b| {
                a.device.cmp(&b.device).then_with(|| a.key().cmp(&b.key()))
            });
        }
        let horizon = self.horizon;
        let mut fresh = std::mem::take(&mut self.fresh);
        let mut i = 0;
        while i < recs.len() {
            let device = recs[i].device;
            let n = recs[i..].iter().take_while(|r| r.device == device).count();
            let group = &recs[i..i + n];
            i += n;
            let v = self.vehicles.entry(device).or_default();
            fresh.clear();
            for rec in group {
                let too_old = match v.pruned {
                    Some(k) => rec.key() <= k,
                    None => v.track.pushed() == 0 && rec.ts < horizon,
                };
                if too_old {
                    // Its trajectory is gone: matched alone.
                    out.counts.alone += 1;
                    let result = self
                        .reference
                        .matcher
                        .locate(rec.lon, rec.lat, rec.heading)
                        .map_err(|_| Reason::OffRoad);
                    out.decided(&self.spec, rec, None, result);
                } else {
                    fresh.push(*rec);
                }
            }
            if fresh.is_empty() {
                continue;
            }
            take(v, &self.hmm, &self.spec, &fresh, out, &mut self.decisions);
        }
        self.fresh = fresh;
    }

    /// The frontier moved to `f` (`None`: the input is done): decides what
    /// is due, finishes idle vehicles, forgets what is too old.
    pub fn advance(&mut self, f: Option<u64>, out: &mut Changes) {
        let s = self.hmm.settings();
        let (lag, max_gap) = (s.lag_ms, s.max_gap_ms);
        // Every fix on time before the watermark is in.
        let clock = f.unwrap_or(u64::MAX);
        let horizon = f.map_or(u64::MAX, |f| self.horizon(f));
        self.horizon = self.horizon.max(horizon);
        let (hmm, spec, decisions) = (&self.hmm, &self.spec, &mut self.decisions);
        self.vehicles.retain(|_, v| {
            let Some(last) = v.fixes.back().map(|k| k.rec.ts) else {
                return false;
            };
            if !v.finished && clock > last.saturating_add(max_gap) {
                decisions.clear();
                v.track.finish(hmm, decisions);
                record(v, spec, decisions, out);
                v.finished = true;
            } else if !v.finished {
                let due = v
                    .fixes
                    .partition_point(|k| k.rec.ts.saturating_add(lag) <= clock);
                let live = v.track.pushed() - v.track.undecided() as u64;
                let due_index = v.base + due as u64;
                if due_index > live.max(v.flushed_to) {
                    decisions.clear();
                    let mut copy = v.track.clone();
                    copy.finish(hmm, decisions);
                    decisions.retain(|d| d.index >= live && d.index < due_index);
                    record(v, spec, decisions, out);
                    v.flushed_to = due_index;
                }
            }
            prune(v, horizon);
            !(v.finished && last.saturating_add(max_gap) < horizon)
        });
    }
}

/// Takes a vehicle's new fixes (sorted, none older than its pruned key).
fn take(
    v: &mut Vehicle,
    hmm: &Hmm,
    spec: &TimeSpec,
    fresh: &[FixRecord],
    out: &mut Changes,
    decisions: &mut Vec<Decision>,
) {
    let max_gap = hmm.settings().max_gap_ms;
    let first = fresh[0].key();
    let last = v.fixes.back().map(|k| (k.rec.key(), k.rec.ts));
    let in_order = match last {
        None => v.track.pushed() == 0,
        Some((key, ts)) => first >= key && !(v.finished && fresh[0].ts - ts <= max_gap),
    };
    decisions.clear();
    let from = if in_order {
        v.finished = false;
        let from = v.fixes.len();
        v.fixes.extend(fresh.iter().map(|rec| Kept {
            rec: *rec,
            decided: None,
        }));
        from
    } else {
        // Merge, then take the fixes again from the newest snapshot at or
        // before the first new one.
        out.counts.retaken += 1;
        let at_index = v.base + v.fixes.partition_point(|k| k.rec.key() <= first) as u64;
        for rec in fresh {
            let p = v.fixes.partition_point(|k| k.rec.key() <= rec.key());
            v.fixes.insert(
                p,
                Kept {
                    rec: *rec,
                    decided: None,
                },
            );
        }
        while v.snapshots.back().is_some_and(|s| s.index > at_index) {
            v.snapshots.pop_back();
        }
        v.finished = false;
        match v.snapshots.back() {
            Some(s) => {
                v.track = s.track.clone();
                v.flushed_to = v.flushed_to.min(s.index);
                (s.index - v.base) as usize
            }
            None => {
                // Every fix again from an empty track (the first fix of a
                // vehicle always has a snapshot, and pruning keeps one).
                v.track = Track::new();
                v.base = 0;
                v.flushed_to = 0;
                0
            }
        }
    };
    for p in from..v.fixes.len() {
        let rec = v.fixes[p].rec;
        let index = v.base + p as u64;
        let first_of_window =
            p == 0 || spec.window_start(v.fixes[p - 1].rec.ts) != spec.window_start(rec.ts);
        if first_of_window && v.snapshots.back().is_none_or(|s| s.index < index) {
            v.snapshots.push_back(Snapshot {
                index,
                track: v.track.clone(),
            });
        }
        // In key order by construction: a push cannot fail.
        let _ = v.track.push(hmm, &rec.fix(), decisions);
    }
    record(v, spec, decisions, out);
}

/// Applies decisions to the kept fixes, emitting what changed.
fn record(v: &mut Vehicle, spec: &TimeSpec, decisions: &[Decision], out: &mut Changes) {
    for d in decisions {
        let Some(k) = d
            .index
            .checked_sub(v.base)
            .and_then(|p| v.fixes.get_mut(p as usize))
        else {
            continue;
        };
        out.decided(spec, &k.rec, k.decided, d.result);
        k.decided = Some(d.result);
    }
}

/// Forgets the fixes and snapshots no late fix can need any more: keeps
/// the snapshots of windows from `horizon` on and the newest before.
fn prune(v: &mut Vehicle, horizon: u64) {
    // A fix at or after the horizon sorts after every fix before the
    // horizon: the newest snapshot before it covers it.
    while v.snapshots.len() > 1
        && v.snapshots[1]
            .index
            .checked_sub(v.base)
            .and_then(|p| v.fixes.get(p as usize))
            .is_some_and(|k| k.rec.ts < horizon)
    {
        v.snapshots.pop_front();
    }
    let live = v.track.pushed() - v.track.undecided() as u64;
    let keep_from = v.snapshots.front().map_or(live, |s| s.index).min(live);
    while v.base < keep_from {
        let Some(k) = v.fixes.pop_front() else { break };
        v.pruned = Some(k.rec.key());
        v.base += 1;
    }
}

/// The operator: fixes exchanged by vehicle, matched, out as congestion
/// updates. `counts` gathers what was decided. Without `provisional`,
/// updates are gathered over a window's worth of the held time.
pub fn match_fixes<'scope>(
    fixes: timely::dataflow::StreamVec<'scope, u64, FixRecord>,
    reference: Arc<Reference>,
    hmm: Arc<Hmm>,
    spec: TimeSpec,
    provisional: bool,
    counts: Arc<MatchCounts>,
) -> differential_dataflow::VecCollection<'scope, u64, CongestionKey, SpeedSum> {
    type Update = (CongestionKey, u64, SpeedSum);
    fixes
        .unary_frontier::<timely::container::CapacityContainerBuilder<Vec<Update>>, _, _, _>(
            Exchange::new(|r: &FixRecord| r.device),
            "Match",
            move |_cap, _info| {
                let lag = hmm.settings().lag_ms;
                let mut fleet = Fleet::new(reference, hmm, spec);
                let mut stash: BTreeMap<u64, Vec<FixRecord>> = BTreeMap::new();
                // Held at the least stashed time, or `lag` behind the
                // frontier while any fix may still be decided.
                let mut cap: Option<Capability<u64>> = None;
                let mut changes = Changes::default();
                let mut seen: Option<Option<u64>> = None;
                move |(input, frontier), output| {
                    input.for_each(|incoming, data| {
                        let Some(&time) = incoming.least() else {
                            return;
                        };
                        if let Some(c) = incoming.retain_least(0) {
                            if cap.as_ref().is_none_or(|held| c.time() < held.time()) {
                                cap = Some(c);
                            }
                        }
                        stash.entry(time).or_default().append(data);
                    });
                    let f = frontier.frontier().first().copied();
                    let Some(held) = cap.as_ref() else {
                        return;
                    };
                    changes.now = *held.time();
                    while let Some((&time, _)) = stash.first_key_value() {
                        if f.is_some_and(|f| time >= f) {
                            break;
                        }
                        if let Some((_, recs)) = stash.pop_first() {
                            fleet.add(recs, &mut changes);
                        }
                    }
                    if seen != Some(f) {
                        seen = Some(f);
                        fleet.advance(f, &mut changes);
                    }
                    changes.counts.publish(&counts);
                    let least = stash.first_key_value().map(|(&t, _)| t);
                    let behind = f
                        .filter(|_| fleet.vehicles() > 0)
                        .map(|f| f.saturating_sub(lag));
                    let hold = match (least, behind) {
                        (Some(t), Some(b)) => Some(t.min(b)),
                        (t, b) => t.or(b),
                    };
                    // Updates gather at the held time (one per key, as the
                    // Stage's batches) while holding it back holds up no
                    // final row: until the time to hold crosses into
                    // another window, unless provisional rows are wanted
                    // fresh or the batch is full.
                    let now = *held.time();
                    let keep = !provisional
                        && changes.updates.len() < MAX_GATHERED
                        && hold.is_some_and(|t| spec.window_start(t) == spec.window_start(now));
                    if keep {
                        return;
                    }
                    let mut session = output.session(held);
                    for update in changes.drain() {
                        session.give(update);
                    }
                    drop(session);
                    match hold {
                        Some(t) => {
                            if let Some(c) = cap.as_mut() {
                                if *c.time() < t {
                                    c.downgrade(&t);
                                }
                            }
                        }
                        None => cap = None,
                    }
                }
            },
        )
        .as_collection()
}

#[cfg(test)]
mod tests;
