//! Aggregate values (TELEMETRY.md §3) and the rows they become (§4).
//!
//! Everything the dataflow sums is an integer: speeds in micrometres per
//! second, power in milliwatts. Integer sums are exact and associative, so
//! the result cannot depend on how records were split among workers or
//! batches; floating point appears only when a row is printed.

use std::fmt::Write as _;
use std::ops::AddAssign;

use differential_dataflow::difference::{Abelian, IsZero, Monoid, Semigroup};
use serde::{Deserialize, Serialize};

use crate::model::ConnectorStatus;
use crate::reference::Reference;

/// Fixed-point scale of speeds: micrometres per second.
pub const SPEED_SCALE: f64 = 1e6;
/// Fixed-point scale of power: milliwatts per kilowatt.
pub const POWER_SCALE: f64 = 1e6;

/// Converts m/s to the fixed-point speed unit.
#[inline]
pub fn speed_fixed(mps: f64) -> i64 {
    (mps * SPEED_SCALE).round() as i64
}

/// Converts kW to milliwatts.
#[inline]
pub fn power_fixed(kw: f64) -> i64 {
    (kw * POWER_SCALE).round() as i64
}

/// The difference type of the congestion input: how many reports and the sum
/// of their speeds. Updates for one `(segment, window, vehicle)` add up, so a
/// batch of reports enters differential as one update, and a retraction is
/// its negation.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct SpeedSum {
    /// Number of reports.
    pub count: i64,
    /// Sum of speeds, µm/s.
    pub sum: i64,
}

impl IsZero for SpeedSum {
    fn is_zero(&self) -> bool {
        self.count == 0 && self.sum == 0
    }
}
impl Semigroup for SpeedSum {
    fn plus_equals(&mut self, rhs: &Self) {
        self.count += rhs.count;
        self.sum += rhs.sum;
    }
}
impl AddAssign<&SpeedSum> for SpeedSum {
    fn add_assign(&mut self, rhs: &SpeedSum) {
        self.plus_equals(rhs)
    }
}
impl Monoid for SpeedSum {
    fn zero() -> Self {
        SpeedSum::default()
    }
}
impl Abelian for SpeedSum {
    fn negate(&mut self) {
        self.count = -self.count;
        self.sum = -self.sum;
    }
}

/// Congestion of one segment in one window.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Congestion {
    /// Vehicle reports.
    pub samples: u64,
    /// Distinct vehicles.
    pub vehicles: u64,
    /// Sum of speeds, µm/s.
    pub speed_sum: i64,
}

impl Congestion {
    /// Mean speed, m/s.
    pub fn mean_speed_mps(&self) -> f64 {
        if self.samples == 0 {
            0.0
        } else {
            self.speed_sum as f64 / self.samples as f64 / SPEED_SCALE
        }
    }
}

/// Congestion level from a speed ratio (TELEMETRY.md §3).
pub fn level(ratio: f64) -> &'static str {
    if ratio >= 0.75 {
        "free"
    } else if ratio >= 0.5 {
        "slow"
    } else if ratio >= 0.25 {
        "heavy"
    } else {
        "jam"
    }
}

/// What one connector contributed to its charger's window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ConnectorWindow {
    /// Connector number (first, so a charger's connectors sort by number).
    pub connector: u32,
    /// Energy delivered in the window, Wh.
    pub energy_wh: u64,
    /// Mean power over the window's readings, mW.
    pub mean_power_mw: i64,
    /// Status of the last reading in the window.
    pub last_status: ConnectorStatus,
}

/// Charging demand of one charger in one window.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Charging {
    /// Energy delivered, Wh, summed over connectors.
    pub energy_wh: u64,
    /// Sum over connectors of each connector's mean power, mW.
    pub mean_power_mw: i64,
    /// Connectors whose last status is `Occupied`.
    pub occupied: u32,
    /// Connectors whose last status is `Faulted` or `Unavailable`.
    pub faulted: u32,
}

impl Charging {
    /// Rolls a charger's connectors up into its window value.
    pub fn from_connectors<'a>(connectors: impl IntoIterator<Item = &'a ConnectorWindow>) -> Self {
        let mut c = Charging::default();
        for w in connectors {
            c.energy_wh += w.energy_wh;
            c.mean_power_mw += w.mean_power_mw;
            c.occupied += u32::from(w.last_status == ConnectorStatus::Occupied);
            c.faulted += u32::from(matches!(
                w.last_status,
                ConnectorStatus::Faulted | ConnectorStatus::Unavailable
            ));
        }
        c
    }
}

/// Which aggregate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    /// Congestion per road segment.
    Congestion,
    /// Charging demand per charger.
    Charging,
}

impl Kind {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Congestion => "congestion",
            Kind::Charging => "charging",
        }
    }
}

/// Identity of one aggregate row: kind, key (segment or charger index in the
/// reference data) and window start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AggKey {
    /// Which aggregate.
    pub kind: Kind,
    /// Index of the segment or charger in [`Reference`].
    pub key: u32,
    /// Window start, ms.
    pub window: u64,
}

/// The value of one aggregate row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AggValue {
    /// Congestion.
    Congestion(Congestion),
    /// Charging.
    Charging(Charging),
}

/// CSV header of congestion rows.
pub const CONGESTION_HEADER: &str =
    "segment_id,window_start_ms,window_end_ms,samples,vehicles,mean_speed_mps,free_flow_mps,speed_ratio,level";
/// CSV header of charging rows.
pub const CHARGING_HEADER: &str =
    "charger_id,window_start_ms,window_end_ms,energy_wh,mean_power_kw,occupied,connectors,utilization,faulted";

/// Appends the CSV row of `key`/`value` (TELEMETRY.md §4) to `out`, without
/// a newline. Returns false when the key is not in the reference data.
pub fn write_csv_row(
    out: &mut String,
    reference: &Reference,
    window_ms: u64,
    key: &AggKey,
    value: &AggValue,
) -> bool {
    let end = key.window + window_ms;
    match value {
        AggValue::Congestion(c) => {
            let Some(road) = reference.roads.get(key.key as usize) else {
                return false;
            };
            let mean = c.mean_speed_mps();
            let ratio = mean / road.free_flow_mps;
            let _ = write!(
                out,
                "{},{},{},{},{},{:.4},{},{:.4},{}",
                road.id,
                key.window,
                end,
                c.samples,
                c.vehicles,
                mean,
                road.free_flow_mps,
                ratio,
                level(ratio)
            );
        }
        AggValue::Charging(c) => {
            let Some(charger) = reference.chargers.get(key.key as usize) else {
                return false;
            };
            let _ = write!(
                out,
                "{},{},{},{},{:.3},{},{},{:.4},{}",
                charger.id,
                key.window,
                end,
                c.energy_wh,
                c.mean_power_mw as f64 / POWER_SCALE,
                c.occupied,
                charger.connectors,
                c.occupied as f64 / charger.connectors as f64,
                c.faulted
            );
        }
    }
    true
}
