//! Mergeable partial aggregates: what one edge knows of a (kind, key,
//! window), in a form central can merge with what other edges know of it
//! into exactly what one node seeing every record would compute.
//!
//! - Sums merge by adding: samples, the speed sum (fixed point, so the
//!   merged mean is the one-node mean to the last digit), energy, power
//!   (each connector's mean, summed), occupied and faulted connectors.
//! - Distinct vehicles do not add up (a vehicle crossing from one edge's
//!   area into another's in a window counts once). Each edge sends its
//!   exact count and a [`sketch::Sketch`] of the keyed vehicle hashes
//!   ([`crate::privacy`]); the merged count is the edge's exact count where
//!   one edge saw the key, else the union sketch's count: exact up to
//!   [`sketch::SPARSE_MAX`] vehicles, within 2 % beyond.
//! - Charging sums are exact when each connector reports to one edge (a
//!   charger's backend holds one connection). A connector reported by two
//!   edges in one window is counted ([`ChargingMerge::split_connectors`]):
//!   its energy needs the reading before the window, which only the other
//!   edge has.
//! - Low-SoC EVs travel per H3 cell (at `[zones] position_resolution`) as
//!   a count and a sketch, so central can place them in its own zones.
//!
//! Pure values; no I/O. The push protocol carries them.

pub mod sketch;
pub mod wire;

use serde::{Deserialize, Serialize};

use crate::aggregate::{Charging, Congestion};
use sketch::Sketch;

/// One edge's congestion of a (segment, window).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CongestionPartial {
    /// Vehicle reports.
    pub samples: u64,
    /// Sum of speeds, µm/s.
    pub speed_sum: i64,
    /// Distinct vehicles, exact.
    pub vehicles: u64,
    /// The vehicles' keyed hashes.
    pub sketch: Sketch,
}

/// One edge's charging of a (charger, window).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ChargingPartial {
    /// The aggregate over the connectors this edge heard from.
    pub charging: Charging,
    /// Those connectors, sorted.
    pub connectors: Vec<u32>,
}

/// One edge's low-SoC EVs (not charging) in an H3 cell and window.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LowSocPartial {
    /// Distinct EVs, exact.
    pub evs: u64,
    /// Their keyed hashes.
    pub sketch: Sketch,
}

/// A distinct count over several edges' partials: the one edge's exact
/// count, or the union's.
fn distinct<'a>(parts: impl Iterator<Item = (u64, &'a Sketch)>) -> u64 {
    let mut union: Option<Sketch> = None;
    let mut exact = 0;
    let mut n = 0;
    for (count, sketch) in parts {
        n += 1;
        exact = count;
        union = Some(match union {
            None => sketch.clone(),
            Some(u) => u.merge(sketch),
        });
    }
    match (n, union) {
        (1, _) => exact,
        (_, Some(u)) => u.estimate(),
        (_, None) => 0,
    }
}

/// The congestion of a (segment, window) from every edge's partial.
pub fn merge_congestion<'a>(parts: impl IntoIterator<Item = &'a CongestionPartial>) -> Congestion {
    let parts: Vec<&CongestionPartial> = parts.into_iter().collect();
    Congestion {
        samples: parts.iter().map(|p| p.samples).sum(),
        speed_sum: parts.iter().map(|p| p.speed_sum).sum(),
        vehicles: distinct(parts.iter().map(|p| (p.vehicles, &p.sketch))),
    }
}

/// The low-SoC EVs of a set of (cell, edge) partials: a zone's, for
/// example. Exact where one partial is all there is.
pub fn merge_low_soc<'a>(parts: impl IntoIterator<Item = &'a LowSocPartial>) -> u64 {
    distinct(parts.into_iter().map(|p| (p.evs, &p.sketch)))
}

/// Merged charging, and how many connectors more than one edge reported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChargingMerge {
    /// The merged aggregate.
    pub charging: Charging,
    /// Connectors reported by more than one edge (their figures are the
    /// sum of what each edge computed, not exact).
    pub split_connectors: u32,
}

/// The charging of a (charger, window) from every edge's partial.
pub fn merge_charging<'a>(parts: impl IntoIterator<Item = &'a ChargingPartial>) -> ChargingMerge {
    let mut merged = ChargingMerge::default();
    let mut seen: Vec<u32> = Vec::new();
    for p in parts {
        let c = &mut merged.charging;
        c.energy_wh += p.charging.energy_wh;
        c.mean_power_mw += p.charging.mean_power_mw;
        c.occupied += p.charging.occupied;
        c.faulted += p.charging.faulted;
        for connector in &p.connectors {
            match seen.binary_search(connector) {
                Ok(_) => merged.split_connectors += 1,
                Err(at) => seen.insert(at, *connector),
            }
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn congestion(samples: u64, speed_sum: i64, vehicles: &[u64]) -> CongestionPartial {
        CongestionPartial {
            samples,
            speed_sum,
            vehicles: vehicles.len() as u64,
            sketch: Sketch::of(vehicles.iter().copied()),
        }
    }

    #[test]
    fn congestion_sums_exactly_and_counts_a_crossing_vehicle_once() {
        let west = congestion(4, 40_000_000, &[1, 2]);
        let east = congestion(2, 30_000_000, &[2, 3]);
        let merged = merge_congestion([&west, &east]);
        assert_eq!(
            merged,
            Congestion {
                samples: 6,
                speed_sum: 70_000_000,
                vehicles: 3
            }
        );
        // One edge: its exact count, even if its sketch is dense.
        let busy = CongestionPartial {
            vehicles: 5_000,
            sketch: Sketch::of(0..5_000u64),
            ..congestion(5_000, 0, &[])
        };
        assert_eq!(merge_congestion([&busy]).vehicles, 5_000);
        assert_eq!(merge_congestion([]), Congestion::default());
    }

    #[test]
    fn charging_sums_and_counts_split_connectors() {
        let part = |energy_wh, connectors: Vec<u32>| ChargingPartial {
            charging: Charging {
                energy_wh,
                mean_power_mw: 1_000,
                occupied: 1,
                faulted: 0,
            },
            connectors,
        };
        let merged = merge_charging([&part(10, vec![1]), &part(5, vec![2, 3])]);
        assert_eq!(merged.charging.energy_wh, 15);
        assert_eq!(merged.charging.mean_power_mw, 2_000);
        assert_eq!(merged.charging.occupied, 2);
        assert_eq!(merged.split_connectors, 0);
        let split = merge_charging([&part(10, vec![1, 2]), &part(5, vec![2])]);
        assert_eq!(split.split_connectors, 1);
    }

    #[test]
    fn low_soc_unions_cells_and_edges() {
        let a = LowSocPartial {
            evs: 2,
            sketch: Sketch::of([10, 11]),
        };
        let b = LowSocPartial {
            evs: 2,
            sketch: Sketch::of([11, 12]),
        };
        assert_eq!(merge_low_soc([&a, &b]), 3);
        assert_eq!(merge_low_soc([&a]), 2);
    }
}
