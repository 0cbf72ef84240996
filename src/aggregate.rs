//! Aggregate values (TELEMETRY.md §3) and the rows they become (§4).
//!
//! Everything the dataflow sums is an integer: speeds in micrometres per
//! second, power in milliwatts. Integer sums are exact and associative, so
//! the result cannot depend on how records were split among workers or
//! batches; floating point appears only when a row is printed.

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
    /// Roll-ups per zone (named polygon or H3 cell).
    Zone,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 3] = [Kind::Congestion, Kind::Charging, Kind::Zone];

    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Congestion => "congestion",
            Kind::Charging => "charging",
            Kind::Zone => "zone",
        }
    }
}

impl std::str::FromStr for Kind {
    type Err = String;

    /// From its lower-case name; the error says which names there are.
    fn from_str(name: &str) -> Result<Kind, String> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == name)
            .ok_or_else(|| format!("{name:?}: expected congestion, charging or zone"))
    }
}

/// Identity of one aggregate row: kind, key (segment or charger index in the
/// reference data) and window start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AggKey {
    /// Which aggregate.
    pub kind: Kind,
    /// Index of the segment or charger in [`Reference`], or the zone number
    /// ([`crate::geo::zones::ZoneRegistry`]).
    pub key: u32,
    /// Window start, ms.
    pub window: u64,
}

/// The value of one aggregate row.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AggValue {
    /// Congestion.
    Congestion(Congestion),
    /// Charging.
    Charging(Charging),
    /// A zone roll-up.
    Zone(Box<ZoneAgg>),
}

/// One segment's, charger's or low-SoC EV's contribution to a zone window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ZonePart {
    /// A segment's congestion.
    Segment {
        /// Segment index.
        segment: u32,
        /// Its reports.
        samples: u64,
        /// `samples × speed ratio`, millionths: Σ speed / free flow.
        ratio_sum_ppm: i64,
        /// Its level is `jam`.
        jammed: bool,
    },
    /// A charger's window.
    Charger {
        /// Charger index.
        charger: u32,
        /// Its value.
        value: Charging,
        /// Its connector count.
        connectors: u32,
    },
    /// A vehicle reporting on a segment of the zone (one part per vehicle
    /// and segment; `reduce` sees each vehicle once, so they count distinct
    /// vehicles).
    Vehicle {
        /// Vehicle id hash.
        vehicle: u64,
    },
    /// An EV below the SoC threshold, not charging, on a segment of the zone.
    LowSoc {
        /// Vehicle id hash.
        vehicle: u64,
    },
    /// Distinct vehicles on the zone's segments, counted as a whole
    /// (central: the union of its segments' sketches).
    Vehicles {
        /// How many.
        count: u32,
    },
    /// Low-SoC EVs in the zone, counted as a whole (central: the union of
    /// its cells' sketches).
    LowSocEvs {
        /// How many.
        count: u32,
    },
}

impl ZonePart {
    /// A segment's part, given its free-flow speed.
    pub fn segment(segment: u32, c: &Congestion, free_flow_mps: f64) -> Self {
        let ratio_sum_ppm = (c.speed_sum as f64 / free_flow_mps).round() as i64;
        let ratio = c.mean_speed_mps() / free_flow_mps;
        ZonePart::Segment {
            segment,
            samples: c.samples,
            ratio_sum_ppm,
            jammed: level(ratio) == "jam",
        }
    }
}

/// A zone in one window: congestion, charging and the demand signal
/// (TELEMETRY.md §4 in docs/).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct ZoneAgg {
    /// Vehicle reports on the zone's segments.
    pub samples: u64,
    /// Distinct vehicles reporting on the zone's segments (what
    /// `privacy.min_vehicles` is checked against).
    pub vehicles: u32,
    /// Segments with reports.
    pub segments: u32,
    /// Σ over segments of `samples × speed ratio`, millionths.
    pub ratio_sum_ppm: i64,
    /// Segments at level `jam`.
    pub jammed: u32,
    /// Chargers reporting.
    pub chargers: u32,
    /// Energy delivered, Wh.
    pub energy_wh: u64,
    /// Σ of the chargers' mean power, mW.
    pub power_mw: i64,
    /// Occupied connectors.
    pub occupied: u32,
    /// Connectors of the reporting chargers.
    pub connectors: u32,
    /// Faulted or unavailable connectors.
    pub faulted: u32,
    /// Distinct EVs below the SoC threshold, not charging.
    pub low_soc_evs: u32,
}

impl ZoneAgg {
    /// Rolls parts up (each part once; parts come distinct from `reduce`).
    pub fn from_parts<'a>(parts: impl IntoIterator<Item = &'a ZonePart>) -> Self {
        let mut z = ZoneAgg::default();
        for p in parts {
            match *p {
                ZonePart::Segment {
                    samples,
                    ratio_sum_ppm,
                    jammed,
                    ..
                } => {
                    z.samples += samples;
                    z.segments += 1;
                    z.ratio_sum_ppm += ratio_sum_ppm;
                    z.jammed += u32::from(jammed);
                }
                ZonePart::Charger {
                    value, connectors, ..
                } => {
                    z.chargers += 1;
                    z.energy_wh += value.energy_wh;
                    z.power_mw += value.mean_power_mw;
                    z.occupied += value.occupied;
                    z.faulted += value.faulted;
                    z.connectors += connectors;
                }
                ZonePart::Vehicle { .. } => z.vehicles += 1,
                ZonePart::LowSoc { .. } => z.low_soc_evs += 1,
                ZonePart::Vehicles { count } => z.vehicles += count,
                ZonePart::LowSocEvs { count } => z.low_soc_evs += count,
            }
        }
        z
    }

    /// Sample-weighted mean speed ratio, when there are samples.
    pub fn mean_speed_ratio(&self) -> Option<f64> {
        (self.samples > 0).then(|| self.ratio_sum_ppm as f64 / 1e6 / self.samples as f64)
    }
}

/// CSV header of congestion rows.
pub const CONGESTION_HEADER: &str =
    "segment_id,window_start_ms,window_end_ms,samples,vehicles,mean_speed_mps,free_flow_mps,speed_ratio,level";
/// CSV header of charging rows.
pub const CHARGING_HEADER: &str =
    "charger_id,window_start_ms,window_end_ms,energy_wh,mean_power_kw,occupied,connectors,utilization,faulted";

/// CSV header of zone rows.
pub const ZONES_HEADER: &str = "zone_id,zone_type,window_start_ms,window_end_ms,samples,vehicles,segments,mean_speed_ratio,jammed_segments,chargers,energy_wh,power_kw,occupied,connectors,faulted,low_soc_evs";

/// One field of an aggregate row, as TELEMETRY.md §4 prints it.
#[derive(Clone, Debug, PartialEq)]
pub enum Field {
    /// Text (ids, `level`, `zone_type`).
    Text(String),
    /// A number, printed (integers in full, decimals rounded as §4 says);
    /// subscriptions send the same figure as a JSON number.
    Number(String),
    /// Nothing (a zone's `mean_speed_ratio` without samples).
    Empty,
}

impl Field {
    /// As printed in a CSV row.
    pub fn text(&self) -> &str {
        match self {
            Field::Text(t) | Field::Number(t) => t,
            Field::Empty => "",
        }
    }
}

/// The fields of the row of `key`/`value` (TELEMETRY.md §3-4), named by
/// the CSV header of its kind, in its order: the one field list both the
/// CSV writer and the subscription rows use. `None` when the key is not in
/// the reference data.
pub fn fields(
    reference: &Reference,
    window_ms: u64,
    key: &AggKey,
    value: &AggValue,
) -> Option<Vec<(&'static str, Field)>> {
    let end = key.window + window_ms;
    let int = |n: &dyn std::fmt::Display| Field::Number(n.to_string());
    let dec = |x: f64, places: usize| Field::Number(format!("{x:.places$}"));
    let window = [
        ("window_start_ms", int(&key.window)),
        ("window_end_ms", int(&end)),
    ];
    Some(match value {
        AggValue::Congestion(c) => {
            let road = reference.roads.get(key.key as usize)?;
            let mean = c.mean_speed_mps();
            let ratio = mean / road.free_flow_mps;
            let mut f = vec![("segment_id", Field::Text(road.id.clone()))];
            f.extend(window);
            f.extend([
                ("samples", int(&c.samples)),
                ("vehicles", int(&c.vehicles)),
                ("mean_speed_mps", dec(mean, 4)),
                (
                    "free_flow_mps",
                    Field::Number(road.free_flow_mps.to_string()),
                ),
                ("speed_ratio", dec(ratio, 4)),
                ("level", Field::Text(level(ratio).to_string())),
            ]);
            f
        }
        AggValue::Charging(c) => {
            let charger = reference.chargers.get(key.key as usize)?;
            let mut f = vec![("charger_id", Field::Text(charger.id.clone()))];
            f.extend(window);
            f.extend([
                ("energy_wh", int(&c.energy_wh)),
                (
                    "mean_power_kw",
                    dec(c.mean_power_mw as f64 / POWER_SCALE, 3),
                ),
                ("occupied", int(&c.occupied)),
                ("connectors", int(&u64::from(charger.connectors))),
                (
                    "utilization",
                    dec(c.occupied as f64 / charger.connectors as f64, 4),
                ),
                ("faulted", int(&c.faulted)),
            ]);
            f
        }
        AggValue::Zone(z) => {
            let (id, kind) = reference.registry.id(key.key)?;
            let mut f = vec![
                ("zone_id", Field::Text(id)),
                ("zone_type", Field::Text(kind.as_str().to_owned())),
            ];
            f.extend(window);
            f.extend([
                ("samples", int(&z.samples)),
                ("vehicles", int(&z.vehicles)),
                ("segments", int(&z.segments)),
                (
                    "mean_speed_ratio",
                    z.mean_speed_ratio().map_or(Field::Empty, |r| dec(r, 4)),
                ),
                ("jammed_segments", int(&z.jammed)),
                ("chargers", int(&z.chargers)),
                ("energy_wh", int(&z.energy_wh)),
                ("power_kw", dec(z.power_mw as f64 / POWER_SCALE, 3)),
                ("occupied", int(&z.occupied)),
                ("connectors", int(&z.connectors)),
                ("faulted", int(&z.faulted)),
                ("low_soc_evs", int(&z.low_soc_evs)),
            ]);
            f
        }
    })
}

/// Appends the CSV row of `key`/`value` (TELEMETRY.md §4) to `out`, without
/// a newline. Returns false when the key is not in the reference data.
pub fn write_csv_row(
    out: &mut String,
    reference: &Reference,
    window_ms: u64,
    key: &AggKey,
    value: &AggValue,
) -> bool {
    let Some(fields) = fields(reference, window_ms, key, value) else {
        return false;
    };
    for (i, (_, field)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(field.text());
    }
    true
}

/// What may leave a node of a row's value (`privacy.min_vehicles` = `k`):
/// rows over fewer than `k` distinct vehicles are withheld. A zone row
/// shows its road traffic only over enough distinct vehicles, and its
/// low-SoC EVs only when there are enough of them; a part under the
/// threshold is shown as if there were none (so a reader cannot tell
/// "none" from "a few"), and a row left with nothing to show is withheld.
pub fn project(value: &AggValue, k: u64) -> Option<AggValue> {
    match value {
        AggValue::Congestion(c) => (c.vehicles >= k).then(|| value.clone()),
        AggValue::Charging(_) => Some(value.clone()),
        AggValue::Zone(z) => {
            let mut shown = ZoneAgg {
                low_soc_evs: 0,
                ..**z
            };
            if u64::from(z.vehicles) < k {
                shown = ZoneAgg {
                    chargers: z.chargers,
                    energy_wh: z.energy_wh,
                    power_mw: z.power_mw,
                    occupied: z.occupied,
                    connectors: z.connectors,
                    faulted: z.faulted,
                    ..ZoneAgg::default()
                };
            }
            if u64::from(z.low_soc_evs) >= k {
                shown.low_soc_evs = z.low_soc_evs;
            }
            (shown.vehicles > 0 || shown.chargers > 0 || shown.low_soc_evs > 0)
                .then(|| AggValue::Zone(Box::new(shown)))
        }
    }
}
