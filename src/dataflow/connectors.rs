//! Per-connector charging windows: the one aggregate that is not a sum.
//!
//! TELEMETRY.md §3 defines a connector's energy in a window as its last
//! register reading in the window minus its last reading *before* the
//! window, however long ago, or minus its first reading ever. That baseline
//! crosses windows and is a "latest" (a max by time), which has no inverse:
//! differential's abelian differences cannot retract it once its window is
//! retired. So each connector keeps, in [`ConnectorState`], a summary per
//! window still in retention plus the last reading of the newest retired
//! window (the *carry*); memory is bounded by retention, not history.
//!
//! The [`connector_windows`] operator applies readings in timestamp order (a
//! time is applied only once the input frontier has passed it, so the result
//! does not depend on arrival interleaving) and turns every change of a
//! connector's window value into differential updates: `-old +new` at the
//! time of the change, mirrored by `+old -new` at the window's retirement
//! time, so the collection forgets the window exactly when it retires.
//! A differential `reduce` then sums connectors per charger.

use std::collections::{BTreeMap, BTreeSet};

use differential_dataflow::{AsCollection, VecCollection};
use rustc_hash::{FxHashMap, FxHasher};
use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;

use crate::aggregate::ConnectorWindow;
use crate::model::ConnectorStatus;
use crate::time::TimeSpec;

/// One register reading. Ordered by time first, then the other fields, so
/// "last" and "first" are total orders and ties resolve the same way
/// everywhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Reading {
    /// Event time, ms.
    pub ts_ms: u64,
    /// Energy register, Wh.
    pub energy_wh: u64,
    /// Connector status.
    pub status: ConnectorStatus,
    /// Power, mW.
    pub power_mw: i64,
}

/// A reading addressed to its connector and window: the input of the charging
/// dataflow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ChargerReading {
    /// Charger index in the reference data.
    pub charger: u32,
    /// Connector number.
    pub connector: u32,
    /// Window start, ms.
    pub window: u64,
    /// The reading.
    pub reading: Reading,
    /// A baseline restored from a checkpoint ([`crate::checkpoint`]): it
    /// belongs to no window, it only sets the connector's carry.
    pub carry: bool,
}

#[derive(Clone, Debug)]
struct WindowSummary {
    first: Reading,
    last: Reading,
    power_sum_mw: i64,
    count: i64,
    emitted: Option<ConnectorWindow>,
}

/// One connector's windows within retention, and the carry.
#[derive(Clone, Debug, Default)]
pub struct ConnectorState {
    windows: BTreeMap<u64, WindowSummary>,
    carry: Option<Reading>,
}

impl ConnectorState {
    /// Adds a reading. Returns the windows whose value may have changed: the
    /// reading's own and the next one (whose baseline it may be).
    pub fn add(&mut self, window: u64, r: Reading) -> [Option<u64>; 2] {
        let w = self.windows.entry(window).or_insert(WindowSummary {
            first: r,
            last: r,
            power_sum_mw: 0,
            count: 0,
            emitted: None,
        });
        w.first = w.first.min(r);
        w.last = w.last.max(r);
        w.power_sum_mw += r.power_mw;
        w.count += 1;
        let next = self.windows.range(window + 1..).next().map(|(k, _)| *k);
        [Some(window), next]
    }

    /// The current value of a window, if the connector has readings in it.
    pub fn value(&self, connector: u32, window: u64) -> Option<ConnectorWindow> {
        let w = self.windows.get(&window)?;
        let baseline = self
            .windows
            .range(..window)
            .next_back()
            .map(|(_, prev)| prev.last)
            .or(self.carry)
            .unwrap_or(w.first);
        Some(ConnectorWindow {
            connector,
            // A register that went backwards (a meter reset) delivers nothing.
            energy_wh: w.last.energy_wh.saturating_sub(baseline.energy_wh),
            mean_power_mw: (w.power_sum_mw as f64 / w.count as f64).round() as i64,
            last_status: w.last.status,
        })
    }

    /// Records `value` as what was emitted for `window`; returns what was
    /// emitted before.
    fn swap_emitted(
        &mut self,
        window: u64,
        value: Option<ConnectorWindow>,
    ) -> Option<ConnectorWindow> {
        match self.windows.get_mut(&window) {
            Some(w) => std::mem::replace(&mut w.emitted, value),
            None => None,
        }
    }

    /// Drops windows that retire before `time`, keeping the newest one's
    /// last reading as the carry. Returns true when nothing is left.
    pub fn retire_before(&mut self, time: u64, spec: &TimeSpec) -> bool {
        while let Some((&start, _)) = self.windows.first_key_value() {
            if spec.retire_at(start) >= time {
                break;
            }
            if let Some((_, w)) = self.windows.pop_first() {
                self.carry = Some(w.last);
            }
        }
        self.windows.is_empty()
    }
}

type ConnKey = (u32, u32);
type Update = (((u32, u64), ConnectorWindow), u64, isize);

fn charger_hash(charger: u32) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = FxHasher::default();
    charger.hash(&mut h);
    h.finish()
}

/// Builds the operator: readings in, per-connector window values out, as a
/// collection keyed by `(charger, window)`.
pub fn connector_windows<'scope>(
    readings: VecCollection<'scope, u64, ChargerReading, isize>,
    spec: TimeSpec,
) -> VecCollection<'scope, u64, ((u32, u64), ConnectorWindow), isize> {
    readings
        .inner
        .unary_frontier::<timely::container::CapacityContainerBuilder<Vec<Update>>, _, _, _>(
            Exchange::new(|(r, _, _): &(ChargerReading, u64, isize)| charger_hash(r.charger)),
            "ConnectorWindows",
            move |_cap, _info| {
                let mut state: FxHashMap<ConnKey, ConnectorState> = FxHashMap::default();
                // Readings not yet applied, by time, with a capability at the
                // least such time.
                let mut stash: BTreeMap<u64, Vec<ChargerReading>> = BTreeMap::new();
                let mut cap: Option<Capability<u64>> = None;
                // Connector windows by retirement time, for cleanup.
                let mut retiring: BTreeMap<u64, BTreeSet<ConnKey>> = BTreeMap::new();
                move |(input, frontier), output| {
                    input.for_each(|incoming, data| {
                        if let Some(c) = incoming.retain_least(0) {
                            if cap.as_ref().is_none_or(|held| c.time() < held.time()) {
                                cap = Some(c);
                            }
                        }
                        for (r, t, diff) in data.drain(..) {
                            // Readings are only ever inserted.
                            debug_assert_eq!(diff, 1);
                            stash.entry(t).or_default().push(r);
                        }
                    });
                    let done = |t: u64| !frontier.less_equal(&t);
                    while let Some((&time, _)) = stash.first_key_value() {
                        if !done(time) {
                            break;
                        }
                        let Some((_, mut readings)) = stash.pop_first() else {
                            break;
                        };
                        let Some(held) = cap.as_ref() else { break };
                        readings.sort();
                        let mut touched: BTreeSet<(ConnKey, u64)> = BTreeSet::new();
                        for r in readings {
                            let key = (r.charger, r.connector);
                            let st = state.entry(key).or_default();
                            if r.carry {
                                st.carry = st.carry.max(Some(r.reading));
                                continue;
                            }
                            if !st.windows.contains_key(&r.window) {
                                retiring
                                    .entry(spec.retire_at(r.window))
                                    .or_default()
                                    .insert(key);
                            }
                            for w in st.add(r.window, r.reading).into_iter().flatten() {
                                touched.insert((key, w));
                            }
                        }
                        let now = held.delayed(&time);
                        let mut session = output.session(&now);
                        for ((charger, connector), window) in touched {
                            let Some(st) = state.get_mut(&(charger, connector)) else {
                                continue;
                            };
                            let new = st.value(connector, window);
                            let old = st.swap_emitted(window, new);
                            if old == new {
                                continue;
                            }
                            // Differential updates carry their own time: the
                            // mirrored update travels now, stamped with the
                            // window's retirement time.
                            let retire = spec.retire_at(window);
                            if let Some(old) = old {
                                session.give((((charger, window), old), time, -1));
                                session.give((((charger, window), old), retire, 1));
                            }
                            if let Some(new) = new {
                                session.give((((charger, window), new), time, 1));
                                session.give((((charger, window), new), retire, -1));
                            }
                        }
                    }
                    // Forget windows that retired before the frontier.
                    let horizon = frontier.frontier().first().copied().unwrap_or(u64::MAX);
                    while let Some((&at, _)) = retiring.first_key_value() {
                        if at >= horizon {
                            break;
                        }
                        if let Some((_, keys)) = retiring.pop_first() {
                            for key in keys {
                                if let Some(st) = state.get_mut(&key) {
                                    // The connector itself stays: its carry is
                                    // one reading, bounded by the charger list.
                                    st.retire_before(horizon, &spec);
                                }
                            }
                        }
                    }
                    match stash.first_key_value() {
                        Some((&t, _)) => {
                            if let Some(c) = cap.as_mut() {
                                c.downgrade(&t);
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
mod tests {
    use super::*;

    fn reading(ts_ms: u64, energy_wh: u64) -> Reading {
        Reading {
            ts_ms,
            energy_wh,
            status: ConnectorStatus::Occupied,
            power_mw: 1_000_000,
        }
    }

    #[test]
    fn energy_counts_from_the_last_reading_before_the_window_even_after_it_retires() {
        let spec = TimeSpec {
            size_ms: 60_000,
            allowed_lateness_ms: 0,
            retention_ms: 60_000,
            max_future_ms: crate::time::DEFAULT_MAX_FUTURE_MS,
            leap_quorum: crate::time::DEFAULT_LEAP_QUORUM,
        };
        let mut st = ConnectorState::default();
        st.add(0, reading(10_000, 100));
        st.add(0, reading(50_000, 130));
        assert_eq!(
            st.value(1, 0).map(|v| v.energy_wh),
            Some(30),
            "first ever reading counts from itself"
        );
        st.add(600_000, reading(610_000, 200));
        assert_eq!(st.value(1, 600_000).map(|v| v.energy_wh), Some(70));
        // Window 0 retires at 120 000; the carry keeps the baseline.
        assert!(!st.retire_before(200_000, &spec));
        assert!(!st.windows.contains_key(&0));
        assert_eq!(st.value(1, 600_000).map(|v| v.energy_wh), Some(70));
    }

    #[test]
    fn a_late_reading_changes_its_window_and_the_next() {
        let mut st = ConnectorState::default();
        st.add(60_000, reading(70_000, 200));
        st.add(60_000, reading(110_000, 260));
        assert_eq!(st.value(1, 60_000).map(|v| v.energy_wh), Some(60));
        let touched = st.add(0, reading(50_000, 150));
        assert_eq!(touched, [Some(0), Some(60_000)]);
        assert_eq!(st.value(1, 60_000).map(|v| v.energy_wh), Some(110));
        assert_eq!(st.value(1, 0).map(|v| v.energy_wh), Some(0));
    }
}
