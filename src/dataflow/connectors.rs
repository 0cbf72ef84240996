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
//!
//! # Registers that go backwards or jump (documented in TELEMETRY.md §3)
//! - A window whose last reading is below its baseline had its register
//!   reset (a meter replaced, a rollover): it counts from its lowest
//!   reading, as a connector's first reading ever counts from itself.
//! - A connector cannot deliver more than its rated power over the time the
//!   count spans: energy above `max_kw × (last reading's time − the time
//!   the count starts at) × 1.1` (10 % for meter and clock error) is
//!   capped at that bound.
//!
//! Each is counted once per connector window, when the window retires
//! ([`EnergyAnomalies`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use differential_dataflow::{AsCollection, VecCollection};
use rustc_hash::{FxHashMap, FxHasher};
use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;

use crate::aggregate::ConnectorWindow;
pub use crate::resolve::Reading;
use crate::time::TimeSpec;

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

/// Connector windows whose energy was judged a register reset or capped
/// as implausible, counted once each when the window retires.
#[derive(Debug, Default)]
pub struct EnergyAnomalies {
    /// Windows whose register went backwards.
    pub resets: std::sync::atomic::AtomicU64,
    /// Windows whose energy was above what the connector can deliver.
    pub capped: std::sync::atomic::AtomicU64,
}

/// What the energy rule found about a window (module doc).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Judged {
    /// The energy counted, Wh.
    pub energy_wh: u64,
    /// The register went backwards.
    pub reset: bool,
    /// The energy was capped.
    pub capped: bool,
}

/// The energy of a window from `baseline` to `last`, with `low` its lowest
/// reading as `(energy_wh, ts_ms)`, for a connector rated `max_w` watts.
pub fn judge_energy(baseline: Reading, last: Reading, low: (u64, u64), max_w: u64) -> Judged {
    let reset = last.energy_wh < baseline.energy_wh;
    let (delivered, since) = if reset {
        (last.energy_wh - low.0, low.1)
    } else {
        (last.energy_wh - baseline.energy_wh, baseline.ts_ms)
    };
    // Wh = W × ms / 3.6e6, with 10 % margin: integers, so every
    // implementation rounds alike.
    let elapsed = u128::from(last.ts_ms.saturating_sub(since));
    let bound = u128::from(max_w) * elapsed * 11 / 36_000_000;
    let bound = u64::try_from(bound).unwrap_or(u64::MAX);
    Judged {
        energy_wh: delivered.min(bound),
        reset,
        capped: delivered > bound,
    }
}

#[derive(Clone, Debug)]
struct WindowSummary {
    first: Reading,
    last: Reading,
    /// Lowest reading, `(energy_wh, ts_ms)`.
    low: (u64, u64),
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
            low: (r.energy_wh, r.ts_ms),
            power_sum_mw: 0,
            count: 0,
            emitted: None,
        });
        w.first = w.first.min(r);
        w.last = w.last.max(r);
        w.low = w.low.min((r.energy_wh, r.ts_ms));
        w.power_sum_mw += r.power_mw;
        w.count += 1;
        let next = self.windows.range(window + 1..).next().map(|(k, _)| *k);
        [Some(window), next]
    }

    /// The energy rule's verdict on a window (module doc), for a connector
    /// rated `max_w` watts.
    fn judge(&self, window: u64, max_w: u64) -> Option<Judged> {
        let w = self.windows.get(&window)?;
        let baseline = self
            .windows
            .range(..window)
            .next_back()
            .map(|(_, prev)| prev.last)
            .or(self.carry)
            .unwrap_or(w.first);
        Some(judge_energy(baseline, w.last, w.low, max_w))
    }

    /// The current value of a window, if the connector has readings in it,
    /// for a connector rated `max_w` watts.
    pub fn value(&self, connector: u32, window: u64, max_w: u64) -> Option<ConnectorWindow> {
        let w = self.windows.get(&window)?;
        Some(ConnectorWindow {
            connector,
            energy_wh: self.judge(window, max_w)?.energy_wh,
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
    /// last reading as the carry and counting their anomalies. Returns true
    /// when nothing is left.
    pub fn retire_before(
        &mut self,
        time: u64,
        spec: &TimeSpec,
        max_w: u64,
        anomalies: &EnergyAnomalies,
    ) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        while let Some((&start, _)) = self.windows.first_key_value() {
            if spec.retire_at(start) >= time {
                break;
            }
            if let Some(j) = self.judge(start, max_w) {
                anomalies.resets.fetch_add(u64::from(j.reset), Relaxed);
                anomalies.capped.fetch_add(u64::from(j.capped), Relaxed);
            }
            if let Some((_, w)) = self.windows.pop_first() {
                self.carry = Some(w.last);
            }
        }
        self.windows.is_empty()
    }
}

/// Each charger's rated power per connector, and where anomalies are
/// counted.
#[derive(Debug, Default)]
pub struct ChargerLimits {
    /// Rated power per connector, W, by charger index.
    pub max_w: Vec<u64>,
    /// Counts of the energy rule.
    pub anomalies: EnergyAnomalies,
}

impl ChargerLimits {
    /// The limits of the chargers of `reference`.
    pub fn of(reference: &crate::reference::Reference) -> Self {
        ChargerLimits {
            max_w: reference
                .chargers
                .iter()
                .map(|c| (c.max_kw * 1000.0).round() as u64)
                .collect(),
            anomalies: EnergyAnomalies::default(),
        }
    }

    fn max_w(&self, charger: u32) -> u64 {
        self.max_w
            .get(charger as usize)
            .copied()
            .unwrap_or(u64::MAX)
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
    limits: Arc<ChargerLimits>,
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
                            let new = st.value(connector, window, limits.max_w(charger));
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
                                    let max_w = limits.max_w(key.0);
                                    st.retire_before(horizon, &spec, max_w, &limits.anomalies);
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
    use crate::model::ConnectorStatus;

    /// A 50 kW connector.
    const W: u64 = 50_000;

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
            st.value(1, 0, W).map(|v| v.energy_wh),
            Some(30),
            "first ever reading counts from itself"
        );
        st.add(600_000, reading(610_000, 200));
        assert_eq!(st.value(1, 600_000, W).map(|v| v.energy_wh), Some(70));
        // Window 0 retires at 120 000; the carry keeps the baseline.
        assert!(!st.retire_before(200_000, &spec, W, &EnergyAnomalies::default()));
        assert!(!st.windows.contains_key(&0));
        assert_eq!(st.value(1, 600_000, W).map(|v| v.energy_wh), Some(70));
    }

    #[test]
    fn a_late_reading_changes_its_window_and_the_next() {
        let mut st = ConnectorState::default();
        st.add(60_000, reading(70_000, 200));
        st.add(60_000, reading(110_000, 260));
        assert_eq!(st.value(1, 60_000, W).map(|v| v.energy_wh), Some(60));
        let touched = st.add(0, reading(50_000, 150));
        assert_eq!(touched, [Some(0), Some(60_000)]);
        assert_eq!(st.value(1, 60_000, W).map(|v| v.energy_wh), Some(110));
        assert_eq!(st.value(1, 0, W).map(|v| v.energy_wh), Some(0));
    }

    #[test]
    fn a_register_that_goes_backwards_counts_from_its_lowest_reading_and_a_jump_is_capped() {
        let spec = TimeSpec::new(
            std::time::Duration::from_secs(60),
            std::time::Duration::ZERO,
            std::time::Duration::from_secs(60),
        );
        let mut st = ConnectorState::default();
        st.add(0, reading(10_000, 1_000));
        // A new meter: 5, then 40.
        st.add(60_000, reading(70_000, 5));
        st.add(60_000, reading(100_000, 40));
        assert_eq!(st.value(1, 60_000, W).map(|v| v.energy_wh), Some(35));
        // 1.79 GWh in a minute at 50 kW: capped at 50 kW x 60 s x 1.1.
        st.add(120_000, reading(160_000, 1_790_000_000));
        assert_eq!(
            st.value(1, 120_000, W).map(|v| v.energy_wh),
            Some(50_000 * 60_000 * 11 / 36_000_000)
        );
        let counts = EnergyAnomalies::default();
        st.retire_before(u64::MAX, &spec, W, &counts);
        use std::sync::atomic::Ordering::Relaxed;
        assert_eq!(
            (counts.resets.load(Relaxed), counts.capped.load(Relaxed)),
            (1, 1)
        );
    }
}
