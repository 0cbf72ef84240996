//! The partials an edge pushes to central ([`crate::partial`]), kept by the
//! same dataflow as the aggregates when the node has a central sink:
//!
//! ```text
//! congestion input ((segment, window), vehicle) : SpeedSum
//!     -> reduce per (segment, window)  -> CongestionPartial {samples, speed_sum, vehicles, sketch}
//! connector windows ((charger, window), ConnectorWindow)
//!     -> reduce per (charger, window)  -> ChargingPartial {charging, connectors}
//! low-SoC input ((cell, window), vehicle)
//!     -> reduce per (cell, window)     -> LowSocPartial {evs, sketch}
//! all -> exchange to worker 0 -> Emitter<PartialKey, PartialValue>
//! ```
//!
//! They go through an [`Emitter`](super::emit::Emitter) of their own, so
//! they are provisional, final and corrected exactly as the aggregates are.
//! The vehicle hashes in the sketches are the dataflow's own, keyed
//! ([`crate::privacy`]) when the node pushes.

use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};

use super::emit::{Emission, RowKey};
use super::CongestionKey;
use crate::aggregate::{Charging, ConnectorWindow, SpeedSum};
use crate::partial::sketch::Sketch;
use crate::partial::{ChargingPartial, CongestionPartial, LowSocPartial};

/// What a partial is of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PartialKind {
    /// A road segment (key: its index in the road network).
    Congestion,
    /// A charger (key: its index in the charger list).
    Charging,
    /// An H3 cell of EV positions (key: the cell index).
    LowSoc,
}

/// Which partial.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PartialKey {
    /// What of.
    pub kind: PartialKind,
    /// Segment or charger index, or H3 cell.
    pub key: u64,
    /// Window start, ms.
    pub window: u64,
}

impl RowKey for PartialKey {
    fn window(&self) -> u64 {
        self.window
    }
}

/// A partial row: its key and value, kind for kind.
fn row(
    kind: PartialKind,
    key: u64,
    window: u64,
    value: PartialValue,
) -> (PartialKey, PartialValue) {
    (PartialKey { kind, key, window }, value)
}

/// A partial's value.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PartialValue {
    /// Of a segment.
    Congestion(CongestionPartial),
    /// Of a charger.
    Charging(ChargingPartial),
    /// Of a cell.
    LowSoc(LowSocPartial),
}

/// A partial leaving the dataflow.
pub type PartialEmission = Emission<PartialKey, PartialValue>;

/// Congestion per (segment, window) with its sketch: the edge's one
/// congestion reduction when it pushes (the aggregate is a projection of
/// it, so the vehicles are gone through once).
pub fn congestion<'scope>(
    reports: VecCollection<'scope, u64, CongestionKey, SpeedSum>,
) -> VecCollection<'scope, u64, ((u32, u64), CongestionPartial), isize> {
    reports.reduce_named(
        "CongestionPartial",
        |_key, vehicles: &[(&u64, SpeedSum)], out: &mut Vec<(CongestionPartial, isize)>| {
            let mut p = CongestionPartial::default();
            for (_, s) in vehicles {
                p.samples += s.count as u64;
                p.speed_sum += s.sum;
                p.vehicles += 1;
            }
            // The values come sorted and distinct: the sketch needs no sort.
            p.sketch = Sketch::of_sorted(vehicles.iter().map(|(v, _)| **v));
            out.push((p, 1));
        },
    )
}

/// The partial rows (see the module doc), from [`congestion`] and the
/// dataflow's charger and low-SoC collections.
pub fn rows<'scope>(
    congestion: VecCollection<'scope, u64, ((u32, u64), CongestionPartial), isize>,
    connector_windows: &VecCollection<'scope, u64, ((u32, u64), ConnectorWindow), isize>,
    low_soc: &VecCollection<'scope, u64, ((u64, u64), u64), isize>,
) -> VecCollection<'scope, u64, (PartialKey, PartialValue), isize> {
    let congestion = congestion.map(|((segment, window), p)| {
        row(
            PartialKind::Congestion,
            u64::from(segment),
            window,
            PartialValue::Congestion(p),
        )
    });
    let charging = connector_windows
        .clone()
        .reduce_named(
            "ChargingPartial",
            |_key,
             connectors: &[(&ConnectorWindow, isize)],
             out: &mut Vec<(ChargingPartial, isize)>| {
                out.push((
                    ChargingPartial {
                        charging: Charging::from_connectors(connectors.iter().map(|(c, _)| *c)),
                        // Sorted: a connector window sorts by its number.
                        connectors: connectors.iter().map(|(c, _)| c.connector).collect(),
                    },
                    1,
                ));
            },
        )
        .map(|((charger, window), p)| {
            row(
                PartialKind::Charging,
                u64::from(charger),
                window,
                PartialValue::Charging(p),
            )
        });
    let low_soc = low_soc
        .clone()
        .reduce_named(
            "LowSocPartial",
            |_key, vehicles: &[(&u64, isize)], out: &mut Vec<(LowSocPartial, isize)>| {
                out.push((
                    LowSocPartial {
                        evs: vehicles.len() as u64,
                        sketch: Sketch::of_sorted(vehicles.iter().map(|(v, _)| **v)),
                    },
                    1,
                ));
            },
        )
        .map(|((cell, window), p)| row(PartialKind::LowSoc, cell, window, PartialValue::LowSoc(p)));
    congestion.concat(charging).concat(low_soc)
}
