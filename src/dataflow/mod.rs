//! The timely/differential dataflow that maintains the aggregates.
//!
//! ```text
//! congestion input  ((segment, window), vehicle) : SpeedSum   (pre-aggregated per batch)
//!   + fixes input (reports to match by HMM) -> exchange by vehicle -> Match (same updates)
//!     -> reduce per (segment, window)            -> Congestion {samples, vehicles, speed_sum}
//! charging input    ChargerReading : +1
//!     -> connector_windows (per connector, exchanged by charger)
//!     -> reduce per (charger, window)            -> Charging {energy, power, occupied, faulted}
//! zones (when the topology has any), per (zone, window), from the above:
//!   congestion per segment   ⋈ segment→zone membership ┐
//!   vehicles per segment     ⋈ segment→zone membership │
//!   low-SoC EVs per H3 cell  ⋈ cell→zone membership    ├ concat -> reduce -> ZoneAgg
//!   charging per charger     ⋈ charger→zone membership ┘
//! all -> exchange to worker 0 -> Emitter -> Emission channel
//! ```
//!
//! With a central to push to, [`partials`] keeps what central needs beside
//! the aggregates; [`central`] is central's own dataflow, which merges the
//! partials of every edge and rolls them into the same zones
//! ([`zone_rows`], [`cell_parts`] serve both).
//!
//! Zone membership is an input collection like the telemetry: a changed
//! zone file retracts old pairs and adds new ones, and every zone window
//! still in retention follows.
//!
//! Timestamps are watermarks (ms): an update at time `t` was accepted when
//! the watermark was at least `t`. So when the frontier passes `t`, every
//! record that arrived before the watermark reached `t` is in, which is
//! exactly "a window is final when the watermark passes its end". Windows
//! are in the keys (a collection accumulates across times; windows in the
//! timestamps would merge). Every input update is mirrored by its negation at
//! the window's retirement time, so state is bounded by retention: the
//! arrangements forget a window once it retires.

pub mod central;
pub mod connectors;
pub mod emit;
pub mod gauge;
pub mod matching;
pub mod partials;

use std::cell::Cell;
use std::rc::Rc;
use std::sync::mpsc::Sender;

use differential_dataflow::input::{Input, InputSession};
use differential_dataflow::{AsCollection, VecCollection};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::core::Filter;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::Probe;
use timely::worker::Worker;

use std::sync::Arc;

use crate::aggregate::{
    AggKey, AggValue, Charging, Congestion, ConnectorWindow, Kind, SpeedSum, ZoneAgg, ZonePart,
};
use crate::geo::zones::Membership;
use crate::reference::Reference;
use crate::time::TimeSpec;
use connectors::{connector_windows, ChargerLimits, ChargerReading};
use emit::{Emission, Emitter, RowKey};
use partials::PartialEmission;

/// A congestion input update: `((segment, window_start), vehicle_hash)`.
pub type CongestionKey = ((u32, u64), u64);

/// Zone membership, an input like the telemetry: a changed zone file
/// retracts old pairs and adds new ones.
pub struct ZoneInputs {
    /// Zone membership of segments: `(segment, zone)`.
    pub segment_zones: InputSession<u64, (u32, u32), isize>,
    /// Zone membership of chargers: `(charger, zone)`.
    pub charger_zones: InputSession<u64, (u32, u32), isize>,
    /// Zone membership of H3 cells (positions): `(cell, zone)`.
    pub cell_zones: InputSession<u64, (u64, u32), isize>,
}

impl ZoneInputs {
    fn advance_to(&mut self, time: u64) {
        if *self.segment_zones.time() < time {
            self.segment_zones.advance_to(time);
        }
        if *self.charger_zones.time() < time {
            self.charger_zones.advance_to(time);
        }
        if *self.cell_zones.time() < time {
            self.cell_zones.advance_to(time);
        }
        self.segment_zones.flush();
        self.charger_zones.flush();
        self.cell_zones.flush();
    }

    /// Applies a change of zone membership at the inputs' current time.
    pub fn update(&mut self, gone: &Membership, added: &Membership) {
        for (pairs, diff) in [(gone, -1), (added, 1)] {
            for &p in &pairs.segments {
                self.segment_zones.update(p, diff);
            }
            for &p in &pairs.chargers {
                self.charger_zones.update(p, diff);
            }
            for &p in &pairs.cells {
                self.cell_zones.update(p, diff);
            }
        }
    }
}

/// The membership collections, as the zone roll-up takes them.
pub struct ZoneCollections<'scope> {
    segment_zones: VecCollection<'scope, u64, (u32, u32), isize>,
    charger_zones: VecCollection<'scope, u64, (u32, u32), isize>,
    cell_zones: VecCollection<'scope, u64, (u64, u32), isize>,
}

/// New membership inputs in `scope`.
pub fn zone_inputs<'scope>(
    scope: timely::dataflow::Scope<'scope, u64>,
) -> (ZoneInputs, ZoneCollections<'scope>) {
    let (segment_zones_input, segment_zones) = scope.new_collection::<(u32, u32), isize>();
    let (charger_zones_input, charger_zones) = scope.new_collection::<(u32, u32), isize>();
    let (cell_zones_input, cell_zones) = scope.new_collection::<(u64, u32), isize>();
    (
        ZoneInputs {
            segment_zones: segment_zones_input,
            charger_zones: charger_zones_input,
            cell_zones: cell_zones_input,
        },
        ZoneCollections {
            segment_zones,
            charger_zones,
            cell_zones,
        },
    )
}

/// The dataflow's inputs on one worker.
pub struct Inputs {
    /// Vehicle reports, pre-aggregated per `(segment, window, vehicle)`.
    pub congestion: InputSession<u64, CongestionKey, SpeedSum>,
    /// Charger readings.
    pub charging: InputSession<u64, ChargerReading, isize>,
    /// Reports of low-SoC EVs not charging, by the H3 cell of their
    /// position: `((cell, window), vehicle)`.
    pub low_soc: InputSession<u64, ((u64, u64), u64), isize>,
    /// Zone membership.
    pub zones: ZoneInputs,
    /// Reports to match by HMM ([`matching`]), when the topology says so.
    pub fixes: Option<timely::dataflow::InputHandleVec<u64, matching::FixRecord>>,
}

impl Inputs {
    /// Advances every input to `time` and flushes them.
    pub fn advance_to(&mut self, time: u64) {
        if *self.congestion.time() < time {
            self.congestion.advance_to(time);
        }
        if *self.charging.time() < time {
            self.charging.advance_to(time);
        }
        if *self.low_soc.time() < time {
            self.low_soc.advance_to(time);
        }
        self.congestion.flush();
        self.charging.flush();
        self.low_soc.flush();
        self.zones.advance_to(time);
        if let Some(fixes) = &mut self.fixes {
            if *fixes.time() < time {
                fixes.advance_to(time);
            }
        }
    }

    /// Sends reports to match at `time` (at least the inputs' time).
    pub fn send_fixes(&mut self, time: u64, fixes: &mut Vec<matching::FixRecord>) {
        match &mut self.fixes {
            Some(input) if !fixes.is_empty() => {
                if *input.time() < time {
                    input.advance_to(time);
                }
                input.send_batch(fixes);
                fixes.clear();
            }
            _ => fixes.clear(),
        }
    }

    /// Applies a change of zone membership at the inputs' current time.
    pub fn update_zones(&mut self, gone: &Membership, added: &Membership) {
        self.zones.update(gone, added);
    }

    /// The time the inputs are at.
    pub fn time(&self) -> u64 {
        *self.congestion.time()
    }
}

/// Tells when the dataflow has emitted everything.
pub struct Completion {
    probe: ProbeHandle<u64>,
    emitted_all: Vec<Rc<Cell<bool>>>,
}

impl Completion {
    /// True once the inputs are closed and every emitter has seen the
    /// empty frontier (so its last emissions are sent).
    pub fn done(&self) -> bool {
        self.probe.done() && self.emitted_all.iter().all(|e| e.get())
    }

    /// The frontier of the output, for progress: `None` when complete.
    pub fn frontier(&self) -> Option<u64> {
        self.probe.with_frontier(|f| f.first().copied())
    }
}

/// What the zone roll-up needs from the reference data.
#[derive(Clone, Debug)]
pub struct ZoneFlow {
    /// Free-flow speed per segment, m/s.
    pub free_flow: Arc<[f64]>,
    /// Connectors per charger.
    pub connectors: Arc<[u32]>,
    /// Resolution of H3 roll-ups, if any.
    pub h3_resolution: Option<u8>,
}

impl ZoneFlow {
    /// The roll-up's needs, if `reference` has zones.
    pub fn of(reference: &Reference) -> Option<Self> {
        reference.rollups().then(|| ZoneFlow {
            free_flow: reference.roads.iter().map(|r| r.free_flow_mps).collect(),
            connectors: reference.chargers.iter().map(|c| c.connectors).collect(),
            h3_resolution: reference.zone_settings.h3_resolution,
        })
    }
}

/// Where the dataflow's output goes. Only worker 0 holds senders; every
/// worker must agree on `partials`.
pub struct Outputs {
    /// Aggregate emissions.
    pub emissions: Option<Sender<Vec<Emission>>>,
    /// Whether to keep the partials central needs ([`partials`]).
    pub partials: bool,
    /// Where they go.
    pub partial_emissions: Option<Sender<Vec<PartialEmission>>>,
}

/// Sends `rows` through an emitter of their own to `tx` (from worker 0),
/// tracked by `probe`; the flag turns true once the emitter has seen the
/// empty frontier.
fn emit_to<'scope, K, V>(
    rows: differential_dataflow::VecCollection<'scope, u64, (K, V), isize>,
    spec: TimeSpec,
    provisional: bool,
    tx: Option<Sender<Vec<Emission<K, V>>>>,
    probe: &ProbeHandle<u64>,
) -> Rc<Cell<bool>>
where
    K: RowKey + timely::ExchangeData,
    V: Clone + PartialEq + timely::ExchangeData,
{
    let mut emitter = Emitter::<K, V>::new(spec, provisional);
    let mut batch = Vec::new();
    let emitted_all = Rc::new(Cell::new(false));
    let finished = emitted_all.clone();
    rows.inner
        // Retirement retractions need not travel: the emitter forgets a
        // row itself when its window retires (nothing else happens to a
        // row at or after that time).
        .filter(move |((key, _), time, _): &((K, V), u64, isize)| {
            *time < spec.retire_at(key.window())
        })
        .probe_with(probe)
        .sink(Exchange::new(|_| 0), "Emit", move |(input, frontier)| {
            input.for_each(|_cap, data| {
                for ((key, value), time, diff) in data.drain(..) {
                    emitter.push(time, key, value, diff);
                }
            });
            let at = frontier.frontier().first().copied();
            emitter.advance(at, &mut batch);
            finished.set(at.is_none());
            if !batch.is_empty() {
                if let Some(tx) = &tx {
                    // A closed receiver means nobody listens any more:
                    // the run is being torn down, dropping is right.
                    let _ = tx.send(std::mem::take(&mut batch));
                }
                batch.clear();
            }
        });
    emitted_all
}

/// Where a low-SoC EV's cell counts: in the named zones holding the cell
/// (the membership lists it) and in the H3 zone that is its ancestor at
/// the roll-up resolution `h3`.
pub fn cell_parts<'scope, V: timely::ExchangeData + Clone + Ord + std::fmt::Debug>(
    by_cell: VecCollection<'scope, u64, ((u64, u64), V), isize>,
    cell_zones: VecCollection<'scope, u64, (u64, u32), isize>,
    h3: Option<u8>,
) -> VecCollection<'scope, u64, ((u32, u64), V), isize> {
    by_cell
        .flat_map(move |((cell, window), v)| {
            let up = h3.and_then(|r| crate::geo::zones::ancestor(cell, r));
            std::iter::once(cell)
                .chain(up.filter(|a| *a != cell))
                .map(move |c| (c, (window, v.clone())))
                .collect::<Vec<_>>()
        })
        .join_map(cell_zones, |_, (window, v), zone| {
            ((*zone, *window), v.clone())
        })
}

/// The zone roll-up: segments' congestion and chargers' charging placed in
/// their zones, with `extra` parts (distinct vehicles and low-SoC EVs, as
/// the edge and central each count them), reduced per (zone, window).
pub fn zone_rows<'scope>(
    z: &ZoneFlow,
    memberships: &ZoneCollections<'scope>,
    congestion: VecCollection<'scope, u64, ((u32, u64), Congestion), isize>,
    charging: VecCollection<'scope, u64, ((u32, u64), Charging), isize>,
    extra: VecCollection<'scope, u64, ((u32, u64), ZonePart), isize>,
) -> VecCollection<'scope, u64, (AggKey, AggValue), isize> {
    let free_flow = z.free_flow.clone();
    let segment_parts = congestion
        .map(|((segment, window), c)| (segment, (window, c)))
        .join_map(
            memberships.segment_zones.clone(),
            move |segment, (window, c), zone| {
                let ff = free_flow.get(*segment as usize).copied().unwrap_or(1.0);
                ((*zone, *window), ZonePart::segment(*segment, c, ff))
            },
        );
    let connectors = z.connectors.clone();
    let charger_parts = charging
        .map(|((charger, window), c)| (charger, (window, c)))
        .join_map(
            memberships.charger_zones.clone(),
            move |charger, (window, value), zone| {
                let connectors = connectors.get(*charger as usize).copied().unwrap_or(0);
                (
                    (*zone, *window),
                    ZonePart::Charger {
                        charger: *charger,
                        value: *value,
                        connectors,
                    },
                )
            },
        );
    segment_parts
        .concat(charger_parts)
        .concat(extra)
        .reduce_named(
            "Zones",
            |_key, parts: &[(&ZonePart, isize)], out: &mut Vec<(ZoneAgg, isize)>| {
                out.push((ZoneAgg::from_parts(parts.iter().map(|(p, _)| *p)), 1));
            },
        )
        .map(|((zone, window), z)| {
            (
                AggKey {
                    kind: Kind::Zone,
                    key: zone,
                    window,
                },
                AggValue::Zone(Box::new(z)),
            )
        })
}

/// Congestion rows of the output.
fn congestion_rows<'scope>(
    congestion: VecCollection<'scope, u64, ((u32, u64), Congestion), isize>,
) -> VecCollection<'scope, u64, (AggKey, AggValue), isize> {
    congestion.map(|((segment, window), c)| {
        (
            AggKey {
                kind: Kind::Congestion,
                key: segment,
                window,
            },
            AggValue::Congestion(c),
        )
    })
}

/// Charging rows of the output.
fn charging_rows<'scope>(
    charging: VecCollection<'scope, u64, ((u32, u64), Charging), isize>,
) -> VecCollection<'scope, u64, (AggKey, AggValue), isize> {
    charging.map(|((charger, window), c)| {
        (
            AggKey {
                kind: Kind::Charging,
                key: charger,
                window,
            },
            AggValue::Charging(c),
        )
    })
}

/// Builds the dataflow on this worker. Emissions go to `outputs` from
/// worker 0 (the other workers pass no senders, nothing reaches them).
/// With `zones`, the zone roll-up is built too; with `matching`, the HMM
/// matching of reports without `segment_id`.
pub fn build(
    worker: &mut Worker,
    spec: TimeSpec,
    provisional: bool,
    zones: Option<ZoneFlow>,
    outputs: Outputs,
    limits: Arc<ChargerLimits>,
    matching: Option<matching::Matching>,
) -> (Inputs, Completion) {
    worker.dataflow::<u64, _, _>(move |scope| {
        let (congestion_input, reports) = scope.new_collection::<CongestionKey, SpeedSum>();
        let (fixes_input, reports) = match matching {
            Some(m) => {
                use timely::dataflow::operators::vec::Input as _;
                let (input, fixes) = scope.new_input::<matching::FixRecord>();
                let matched =
                    matching::match_fixes(fixes, m.reference, m.hmm, spec, provisional, m.counts);
                (Some(input), reports.concat(matched))
            }
            None => (None, reports),
        };
        let (charging_input, readings) = scope.new_collection::<ChargerReading, isize>();
        let (low_soc_input, low_soc) = scope.new_collection::<((u64, u64), u64), isize>();
        let (zone_inputs, memberships) = zone_inputs(scope);

        // Per (segment, window, vehicle) with its report count as the diff:
        // the zone roll-up counts distinct vehicles from it.
        let vehicles = zones.is_some().then(|| {
            reports
                .inner
                .clone()
                .map(|(((segment, window), vehicle), t, s)| {
                    ((segment, (window, vehicle)), t, s.count as isize)
                })
                .as_collection()
        });
        let connector_windows = connector_windows(readings, spec, limits);
        // A node that pushes reduces congestion once, with the sketch, and
        // projects the aggregate from it.
        let (congestion, partial_rows) = if outputs.partials {
            let with_sketch = partials::congestion(reports);
            let congestion = with_sketch.clone().map(|(key, p)| {
                (
                    key,
                    Congestion {
                        samples: p.samples,
                        vehicles: p.vehicles,
                        speed_sum: p.speed_sum,
                    },
                )
            });
            let rows = partials::rows(with_sketch, &connector_windows, &low_soc);
            (congestion, Some(rows))
        } else {
            let congestion = reports.reduce_named(
                "Congestion",
                |_key, vehicles: &[(&u64, SpeedSum)], out: &mut Vec<(Congestion, isize)>| {
                    let mut c = Congestion::default();
                    for (_, s) in vehicles {
                        c.samples += s.count as u64;
                        c.speed_sum += s.sum;
                        c.vehicles += 1;
                    }
                    out.push((c, 1));
                },
            );
            (congestion, None)
        };
        let charging = connector_windows.reduce_named(
            "Charging",
            |_key, connectors: &[(&ConnectorWindow, isize)], out: &mut Vec<(Charging, isize)>| {
                out.push((
                    Charging::from_connectors(connectors.iter().map(|(c, _)| *c)),
                    1,
                ));
            },
        );
        let mut rows = congestion_rows(congestion.clone()).concat(charging_rows(charging.clone()));
        // `vehicles` exists exactly when `zones` does.
        if let (Some(z), Some(vehicles)) = (zones, vehicles) {
            let vehicle_parts = vehicles.join_map(
                memberships.segment_zones.clone(),
                |_, (window, vehicle), zone| {
                    ((*zone, *window), ZonePart::Vehicle { vehicle: *vehicle })
                },
            );
            let demand_parts = cell_parts(low_soc, memberships.cell_zones.clone(), z.h3_resolution)
                .map(|(zone_window, vehicle)| (zone_window, ZonePart::LowSoc { vehicle }));
            rows = rows.concat(zone_rows(
                &z,
                &memberships,
                congestion,
                charging,
                vehicle_parts.concat(demand_parts),
            ));
        }
        let probe = ProbeHandle::new();
        let mut emitted_all = vec![emit_to(rows, spec, provisional, outputs.emissions, &probe)];
        if let Some(partial_rows) = partial_rows {
            emitted_all.push(emit_to(
                partial_rows,
                spec,
                provisional,
                outputs.partial_emissions,
                &probe,
            ));
        }
        (
            Inputs {
                congestion: congestion_input,
                charging: charging_input,
                low_soc: low_soc_input,
                zones: zone_inputs,
                fixes: fixes_input,
            },
            Completion { probe, emitted_all },
        )
    })
}
