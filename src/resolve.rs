//! Record resolution: a valid record ([`crate::model::Record`]) checked
//! against the reference data (known charger, connector in range) and
//! reduced to what the dataflow needs, an [`Item`]: the segment a vehicle
//! is on (named, or map-matched by [`crate::geo::matcher`]), its hashed id,
//! fixed-point figures. Live ingest resolves each record once, to accept or
//! reject it before acknowledging, and hands the items on with the batch;
//! replay resolves in the workers. Both use this one function.

use serde::{Deserialize, Serialize};

use crate::aggregate::{power_fixed, speed_fixed};
use crate::geo::Unmatched;
use crate::model::{ConnectorStatus, Record, RecordError, RejectReason};
use crate::reference::Reference;

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

/// How a vehicle report's segment was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Matched {
    /// The vehicle named it (`segment_id`).
    OnBoard,
    /// The node map-matched its position ([`crate::geo::matcher`]).
    ByNode,
    /// It has none.
    No(Unmatched),
}

/// A valid record reduced to what the dataflow needs, resolved against the
/// reference data. Live ingest resolves each record once, to accept or
/// reject it, and hands the items on with the batch, so the dataflow does
/// not decode it again.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Item {
    /// A vehicle report.
    Report {
        /// Segment index, when matched.
        segment: Option<u32>,
        /// Hash of the vehicle id: the one distinct counts use, keyed by
        /// day when the node pushes its sketches
        /// ([`Reference::vehicle_key`]).
        vehicle: u64,
        /// Hash of the vehicle id as a device of the event-time clock
        /// (unkeyed: the same every day).
        device: u64,
        /// Event time, ms.
        ts: u64,
        /// Speed, µm/s.
        speed: i64,
        /// How its segment was found, or why there is none.
        how: Matched,
        /// An EV below the zone demand threshold, not charging: the H3 cell
        /// of its position at `[zones] position_resolution`.
        low_soc: Option<u64>,
    },
    /// A vehicle report without `segment_id` that the node matches by HMM
    /// ([`crate::dataflow::matching`]): its segment depends on the
    /// vehicle's other reports, so it is decided in the dataflow.
    Fix {
        /// As [`Item::Report`].
        vehicle: u64,
        /// As [`Item::Report`].
        device: u64,
        /// Event time, ms.
        ts: u64,
        /// Speed, µm/s.
        speed: i64,
        /// As [`Item::Report`].
        low_soc: Option<u64>,
        /// Longitude, latitude, degrees.
        position: [f64; 2],
        /// Heading, degrees, when known.
        heading: Option<f64>,
    },
    /// A charger connector reading.
    Reading {
        /// Charger index.
        charger: u32,
        /// Connector number.
        connector: u32,
        /// The reading.
        reading: Reading,
    },
}

impl Item {
    /// Event time, ms.
    pub fn ts(&self) -> u64 {
        match self {
            Item::Report { ts, .. } | Item::Fix { ts, .. } => *ts,
            Item::Reading { reading, .. } => reading.ts_ms,
        }
    }

    /// The device that sent it, for the watermark's leap quorum
    /// ([`crate::time::EventClock`]): the vehicle's id hash, or the
    /// charger's index with the top bit set.
    pub fn device(&self) -> u64 {
        match self {
            Item::Report { device, .. } | Item::Fix { device, .. } => *device,
            Item::Reading { charger, .. } => u64::from(*charger) | 1 << 63,
        }
    }
}

/// Resolves a valid record against the reference data (known charger,
/// connector in range): what ingest rejects before acknowledging.
pub fn resolve(record: &Record<'_>, reference: &Reference) -> Result<Item, RecordError> {
    match record {
        Record::Vehicle(v) => {
            let charging = v.ev.is_some_and(|ev| ev.charging == Some(true));
            let zs = &reference.zone_settings;
            let low_soc = (reference.places_low_soc()
                && !charging
                && v.ev.is_some_and(|ev| ev.soc_pct < zs.low_soc_pct))
            .then(|| crate::geo::zones::position_cell([v.lon, v.lat], zs.position_resolution))
            .flatten();
            let device = xxhash_rust::xxh3::xxh3_64(v.vehicle_id.as_bytes());
            let vehicle = match &reference.vehicle_key {
                Some(key) => key.hash(&v.vehicle_id, v.ts_ms),
                None => device,
            };
            let (segment, how) = match v.segment_id.as_deref() {
                Some(id) => match reference.road(id) {
                    Some(i) => (Some(i), Matched::OnBoard),
                    None => (None, Matched::No(Unmatched::UnknownSegment)),
                },
                // Parked in a charging bay, not on the road.
                None if charging => (None, Matched::No(Unmatched::Charging)),
                None if reference.hmm.is_some() => {
                    return Ok(Item::Fix {
                        vehicle,
                        device,
                        ts: v.ts_ms,
                        speed: speed_fixed(v.speed_mps),
                        low_soc,
                        position: [v.lon, v.lat],
                        heading: v.heading_deg,
                    })
                }
                None => match reference.matcher.locate(v.lon, v.lat, v.heading_deg) {
                    Ok(i) => (Some(i), Matched::ByNode),
                    Err(why) => (None, Matched::No(why)),
                },
            };
            Ok(Item::Report {
                segment,
                vehicle,
                device,
                ts: v.ts_ms,
                speed: speed_fixed(v.speed_mps),
                how,
                low_soc,
            })
        }
        Record::Charger(c) => {
            let charger = reference.charger(&c.charger_id).ok_or_else(|| {
                RecordError::field(
                    RejectReason::UnknownCharger,
                    "charger_id",
                    format!("{:?} is not in the charger list", c.charger_id),
                )
            })?;
            let connectors = reference.chargers[charger as usize].connectors;
            if c.connector > connectors {
                return Err(RecordError::field(
                    RejectReason::UnknownConnector,
                    "connector",
                    format!(
                        "{} but charger {:?} has {connectors} connectors",
                        c.connector, c.charger_id
                    ),
                ));
            }
            Ok(Item::Reading {
                charger,
                connector: c.connector,
                reading: Reading {
                    ts_ms: c.ts_ms,
                    energy_wh: c.energy_wh,
                    status: c.status,
                    power_mw: power_fixed(c.power_kw),
                },
            })
        }
    }
}
