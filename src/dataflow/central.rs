//! Central's dataflow: the partials every edge pushes
//! ([`crate::partial`]), merged per (key, window) into the aggregates one
//! node seeing every record would compute, and rolled up into central's
//! own zones.
//!
//! ```text
//! congestion ((segment, window), (edge, CongestionPartial)) -> reduce -> (Congestion, union sketch)
//! charging   ((charger, window), (edge, ChargingPartial))   -> reduce -> Charging
//! low-SoC    ((cell, window), (edge, LowSocPartial))        -> reduce -> union sketch
//! zones (when central has any), per (zone, window):
//!   congestion and charging placed as on an edge (zone_rows);
//!   distinct vehicles: the union of the zone's segment sketches;
//!   low-SoC EVs: the union of its cells' sketches
//! all -> exchange to worker 0 -> Emitter -> Emission channel
//! ```
//!
//! Every update an edge sends replaces what it sent before for the same
//! (kind, key, window): [`Upserts`] keeps the latest partial of each, and
//! turns an upsert into `-old +new`. Timestamps are central's watermark,
//! the oldest of its edges' watermarks: a window is final once every edge
//! has passed its end, and a partial arriving after that is a correction,
//! exactly as a late record is on an edge.

use std::collections::BTreeMap;
use std::sync::mpsc::Sender;

use differential_dataflow::input::{Input, InputSession};
use differential_dataflow::VecCollection;
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::worker::Worker;

use super::emit::Emission;
use super::partials::{PartialKey, PartialKind, PartialValue};
use super::{
    cell_parts, charging_rows, congestion_rows, emit_to, zone_inputs, zone_rows, Completion,
    ZoneFlow, ZoneInputs,
};
use crate::aggregate::{Charging, Congestion, ZonePart};
use crate::partial::sketch::Sketch;
use crate::partial::{
    merge_charging, merge_congestion, ChargingPartial, CongestionPartial, LowSocPartial,
};
use crate::time::TimeSpec;

/// An input of edges' partials: `((key, window), (edge, partial))`.
pub type PartialInput<K, P> = InputSession<u64, ((K, u64), (u32, P)), isize>;

/// Central's inputs on one worker.
pub struct CentralInputs {
    /// Segments' partials.
    pub congestion: PartialInput<u32, CongestionPartial>,
    /// Chargers' partials.
    pub charging: PartialInput<u32, ChargingPartial>,
    /// Low-SoC cells' partials.
    pub low_soc: PartialInput<u64, LowSocPartial>,
    /// Central's zone membership.
    pub zones: ZoneInputs,
}

impl CentralInputs {
    /// Advances every input to `time` (central's watermark) and flushes.
    pub fn advance_to(&mut self, time: u64) {
        if *self.congestion.time() < time {
            self.congestion.advance_to(time);
            self.charging.advance_to(time);
            self.low_soc.advance_to(time);
        }
        self.congestion.flush();
        self.charging.flush();
        self.low_soc.flush();
        self.zones.advance_to(time);
    }

    /// The time the inputs are at.
    pub fn time(&self) -> u64 {
        *self.congestion.time()
    }

    fn update(&mut self, edge: u32, key: &PartialKey, value: &PartialValue, diff: isize) {
        let window = key.window;
        match value {
            PartialValue::Congestion(p) => {
                self.congestion
                    .update(((key.key as u32, window), (edge, p.clone())), diff);
            }
            PartialValue::Charging(p) => {
                self.charging
                    .update(((key.key as u32, window), (edge, p.clone())), diff);
            }
            PartialValue::LowSoc(p) => {
                self.low_soc
                    .update(((key.key, window), (edge, p.clone())), diff);
            }
        }
    }
}

/// The latest partial of every (edge, key, window) in retention, so that
/// each upsert replaces what it supersedes.
#[derive(Debug, Default)]
pub struct Upserts {
    latest: BTreeMap<(u64, u32, PartialKey), PartialValue>,
}

impl Upserts {
    /// Applies `edge`'s partial at the inputs' current time. Returns false
    /// when it is what the edge sent last (a resend: nothing changes).
    pub fn apply(
        &mut self,
        inputs: &mut CentralInputs,
        edge: u32,
        key: PartialKey,
        value: PartialValue,
    ) -> bool {
        // Kind agrees with value: the decoder builds both together.
        debug_assert!(matches!(
            (key.kind, &value),
            (PartialKind::Congestion, PartialValue::Congestion(_))
                | (PartialKind::Charging, PartialValue::Charging(_))
                | (PartialKind::LowSoc, PartialValue::LowSoc(_))
        ));
        let slot = (key.window, edge, key);
        match self.latest.get(&slot) {
            Some(old) if *old == value => return false,
            Some(old) => inputs.update(edge, &key, old, -1),
            None => {}
        }
        inputs.update(edge, &key, &value, 1);
        self.latest.insert(slot, value);
        true
    }

    /// Moves central's watermark to `watermark`: advances the inputs, then
    /// retracts and forgets every partial of windows that retire by then
    /// (the emitter forgets their rows itself; retractions at or after a
    /// window's retirement never reach it).
    pub fn advance(&mut self, inputs: &mut CentralInputs, spec: &TimeSpec, watermark: u64) {
        if watermark <= inputs.time() {
            return;
        }
        inputs.advance_to(watermark);
        while let Some(entry) = self.latest.first_entry() {
            let (window, edge, key) = *entry.key();
            if spec.retire_at(window) > watermark {
                break;
            }
            let value = entry.remove();
            inputs.update(edge, &key, &value, -1);
        }
    }

    /// Partials held.
    pub fn len(&self) -> usize {
        self.latest.len()
    }

    /// Whether none are held.
    pub fn is_empty(&self) -> bool {
        self.latest.is_empty()
    }
}

/// The union of a set of sketches.
fn union<'a>(sketches: impl Iterator<Item = &'a Sketch>) -> Sketch {
    sketches.fold(Sketch::default(), |u, s| u.merge(s))
}

/// A count for a zone row (which holds `u32`s).
fn count(sketch: &Sketch) -> u32 {
    u32::try_from(sketch.estimate()).unwrap_or(u32::MAX)
}

/// Builds central's dataflow on this worker; emissions go to `emissions`
/// from worker 0. With `zones`, central's zone roll-up is built too.
pub fn build(
    worker: &mut Worker,
    spec: TimeSpec,
    provisional: bool,
    zones: Option<ZoneFlow>,
    emissions: Option<Sender<Vec<Emission>>>,
) -> (CentralInputs, Completion) {
    worker.dataflow::<u64, _, _>(move |scope| {
        let (congestion_input, congestion_parts) =
            scope.new_collection::<((u32, u64), (u32, CongestionPartial)), isize>();
        let (charging_input, charging_parts) =
            scope.new_collection::<((u32, u64), (u32, ChargingPartial)), isize>();
        let (low_soc_input, low_soc_parts) =
            scope.new_collection::<((u64, u64), (u32, LowSocPartial)), isize>();
        let (zone_inputs, memberships) = zone_inputs(scope);

        let merged = congestion_parts.reduce_named(
            "MergeCongestion",
            |_key,
             parts: &[(&(u32, CongestionPartial), isize)],
             out: &mut Vec<((Congestion, Sketch), isize)>| {
                let congestion = merge_congestion(parts.iter().map(|(p, _)| &p.1));
                let sketch = union(parts.iter().map(|(p, _)| &p.1.sketch));
                out.push(((congestion, sketch), 1));
            },
        );
        let congestion: VecCollection<'_, u64, ((u32, u64), Congestion), isize> =
            merged.clone().map(|(key, (c, _))| (key, c));
        let charging: VecCollection<'_, u64, ((u32, u64), Charging), isize> = charging_parts
            .reduce_named(
                "MergeCharging",
                |_key,
                 parts: &[(&(u32, ChargingPartial), isize)],
                 out: &mut Vec<(Charging, isize)>| {
                    out.push((merge_charging(parts.iter().map(|(p, _)| &p.1)).charging, 1));
                },
            );
        let mut rows = congestion_rows(congestion.clone()).concat(charging_rows(charging.clone()));
        if let Some(z) = zones {
            let segment_sketches = merged
                .map(|((segment, window), (_, sketch))| (segment, (window, sketch)))
                .join_map(
                    memberships.segment_zones.clone(),
                    |_, (window, sketch), zone| ((*zone, *window), sketch.clone()),
                );
            let vehicle_parts = segment_sketches.reduce_named(
                "ZoneVehicles",
                |_key, sketches: &[(&Sketch, isize)], out: &mut Vec<(ZonePart, isize)>| {
                    let u = union(sketches.iter().map(|(s, _)| *s));
                    out.push((ZonePart::Vehicles { count: count(&u) }, 1));
                },
            );
            let cell_sketches = low_soc_parts.reduce_named(
                "MergeLowSoc",
                |_key, parts: &[(&(u32, LowSocPartial), isize)], out: &mut Vec<(Sketch, isize)>| {
                    out.push((union(parts.iter().map(|(p, _)| &p.1.sketch)), 1));
                },
            );
            let demand_parts = cell_parts(
                cell_sketches,
                memberships.cell_zones.clone(),
                z.h3_resolution,
            )
            .reduce_named(
                "ZoneLowSoc",
                |_key, sketches: &[(&Sketch, isize)], out: &mut Vec<(ZonePart, isize)>| {
                    let u = union(sketches.iter().map(|(s, _)| *s));
                    out.push((ZonePart::LowSocEvs { count: count(&u) }, 1));
                },
            );
            rows = rows.concat(zone_rows(
                &z,
                &memberships,
                congestion,
                charging,
                vehicle_parts.concat(demand_parts),
            ));
        }
        let probe = ProbeHandle::new();
        let emitted_all = vec![emit_to(rows, spec, provisional, emissions, &probe)];
        (
            CentralInputs {
                congestion: congestion_input,
                charging: charging_input,
                low_soc: low_soc_input,
                zones: zone_inputs,
            },
            Completion { probe, emitted_all },
        )
    })
}
