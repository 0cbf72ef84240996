//! Telemetry records exactly as `TELEMETRY.md` §1 defines them, and their
//! validation.
//!
//! A [`Record`] is what a vehicle or charger sends. It borrows its strings
//! from the input when it can (`Cow`), so decoding a JSON line allocates
//! nothing in the common case. Every record that leaves this module has
//! passed [`RawRecord::validate`]: all required fields present, every number
//! finite and within the documented range, ids well-formed.
//!
//! The ranges below are sanity limits on top of the contract: a value outside
//! them is a broken device or a hostile client, never a real measurement.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Longest accepted id (vehicle, charger, segment), in bytes.
pub const MAX_ID_LEN: usize = 64;
/// Earliest accepted event time: 2000-01-01T00:00:00Z. Earlier stamps are
/// GNSS receivers without a fix, never real data.
pub const MIN_TS_MS: u64 = 946_684_800_000;
/// Latest accepted event time: 2100-01-01T00:00:00Z.
pub const MAX_TS_MS: u64 = 4_102_444_800_000;
/// Fastest plausible ground speed, m/s (324 km/h): above any road
/// vehicle on a public road, with room for GNSS speed error. A report
/// above it is a broken receiver or a wrong unit (km/h sent as m/s), and
/// would drag a segment's mean speed: rejected as `out_of_range`.
pub const MAX_SPEED_MPS: f64 = 90.0;
/// Highest accepted connector power, kW (10 MW: above megawatt charging).
pub const MAX_POWER_KW: f64 = 10_000.0;
/// Largest accepted energy register, Wh (2^53: exact in every JSON parser).
pub const MAX_ENERGY_WH: u64 = 1 << 53;
/// Largest accepted connector number.
pub const MAX_CONNECTOR: u32 = 1024;

/// One telemetry record.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Record<'a> {
    /// A vehicle report.
    Vehicle(VehicleReport<'a>),
    /// A charger (connector) report.
    Charger(ChargerReport<'a>),
}

impl Record<'_> {
    /// Event time, Unix epoch milliseconds.
    pub fn ts_ms(&self) -> u64 {
        match self {
            Record::Vehicle(v) => v.ts_ms,
            Record::Charger(c) => c.ts_ms,
        }
    }

    /// A copy that owns its strings.
    pub fn into_owned(self) -> Record<'static> {
        match self {
            Record::Vehicle(v) => Record::Vehicle(VehicleReport {
                vehicle_id: Cow::Owned(v.vehicle_id.into_owned()),
                segment_id: v.segment_id.map(|s| Cow::Owned(s.into_owned())),
                ts_ms: v.ts_ms,
                lat: v.lat,
                lon: v.lon,
                speed_mps: v.speed_mps,
                heading_deg: v.heading_deg,
                ev: v.ev,
            }),
            Record::Charger(c) => Record::Charger(ChargerReport {
                charger_id: Cow::Owned(c.charger_id.into_owned()),
                vehicle_id: c.vehicle_id.map(|s| Cow::Owned(s.into_owned())),
                connector: c.connector,
                ts_ms: c.ts_ms,
                status: c.status,
                power_kw: c.power_kw,
                energy_wh: c.energy_wh,
            }),
        }
    }
}

/// A vehicle report (TELEMETRY.md §1).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VehicleReport<'a> {
    /// Pseudonymous vehicle id.
    pub vehicle_id: Cow<'a, str>,
    /// Event time (GNSS fix time), Unix epoch milliseconds.
    pub ts_ms: u64,
    /// WGS84 latitude, degrees.
    pub lat: f64,
    /// WGS84 longitude, degrees.
    pub lon: f64,
    /// Ground speed, m/s.
    pub speed_mps: f64,
    /// Heading, degrees clockwise from north.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heading_deg: Option<f64>,
    /// Road segment when the vehicle map-matched on board.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segment_id: Option<Cow<'a, str>>,
    /// Battery state, electric vehicles only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ev: Option<EvState>,
}

/// Battery state of an electric vehicle.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct EvState {
    /// State of charge, percent.
    pub soc_pct: f64,
    /// Whether the vehicle is charging, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub charging: Option<bool>,
}

/// A charger connector report (TELEMETRY.md §1, OCPP 2.0.1 vocabulary).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChargerReport<'a> {
    /// Charging station id.
    pub charger_id: Cow<'a, str>,
    /// Connector (EVSE) number, 1-based.
    pub connector: u32,
    /// Event time, Unix epoch milliseconds.
    pub ts_ms: u64,
    /// OCPP connector status.
    pub status: ConnectorStatus,
    /// Instantaneous active power, kW.
    pub power_kw: f64,
    /// Cumulative energy register, Wh.
    pub energy_wh: u64,
    /// Vehicle being charged, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vehicle_id: Option<Cow<'a, str>>,
}

/// OCPP 2.0.1 connector status.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub enum ConnectorStatus {
    /// Free to use.
    #[default]
    Available,
    /// A vehicle is plugged in.
    Occupied,
    /// Reserved for a user.
    Reserved,
    /// Not available (maintenance, disabled).
    Unavailable,
    /// Broken.
    Faulted,
}

impl ConnectorStatus {
    /// Every status, in declaration order.
    pub const ALL: [ConnectorStatus; 5] = [
        ConnectorStatus::Available,
        ConnectorStatus::Occupied,
        ConnectorStatus::Reserved,
        ConnectorStatus::Unavailable,
        ConnectorStatus::Faulted,
    ];

    /// The OCPP name.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectorStatus::Available => "Available",
            ConnectorStatus::Occupied => "Occupied",
            ConnectorStatus::Reserved => "Reserved",
            ConnectorStatus::Unavailable => "Unavailable",
            ConnectorStatus::Faulted => "Faulted",
        }
    }

    /// Parses an OCPP name (case-sensitive, as OCPP is).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// Why a record was rejected: the label of the `rejected` counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    /// Not parseable at all (not JSON / not CBOR, truncated, trailing bytes).
    Syntax,
    /// Bytes that are not UTF-8.
    InvalidUtf8,
    /// A line longer than the configured maximum.
    TooLong,
    /// A required field is absent.
    MissingField,
    /// A field has the wrong JSON/CBOR type.
    WrongType,
    /// A number outside its range, or not an integer where one is required.
    OutOfRange,
    /// An id that is empty, too long or has characters outside the allowed set.
    InvalidId,
    /// `type` is neither `vehicle` nor `charger`.
    UnknownType,
    /// A charger status that OCPP 2.0.1 does not define.
    UnknownStatus,
    /// A charger id that is not in the topology's charger list.
    UnknownCharger,
    /// A connector number above the charger's connector count.
    UnknownConnector,
    /// An event time further ahead of the node's wall clock than
    /// `[windows] max_future` (live ingest only).
    Future,
    /// Its window had retired when the batch reached the log: it could
    /// change nothing (DESIGN.md: older than retention, counted and
    /// dropped). Never acknowledged as accepted.
    Expired,
}

impl RejectReason {
    /// Every reason, for reporting.
    pub const ALL: [RejectReason; 13] = [
        RejectReason::Syntax,
        RejectReason::InvalidUtf8,
        RejectReason::TooLong,
        RejectReason::MissingField,
        RejectReason::WrongType,
        RejectReason::OutOfRange,
        RejectReason::InvalidId,
        RejectReason::UnknownType,
        RejectReason::UnknownStatus,
        RejectReason::UnknownCharger,
        RejectReason::UnknownConnector,
        RejectReason::Future,
        RejectReason::Expired,
    ];

    /// Stable snake_case label (metrics, summaries).
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Syntax => "syntax",
            RejectReason::InvalidUtf8 => "invalid_utf8",
            RejectReason::TooLong => "too_long",
            RejectReason::MissingField => "missing_field",
            RejectReason::WrongType => "wrong_type",
            RejectReason::OutOfRange => "out_of_range",
            RejectReason::InvalidId => "invalid_id",
            RejectReason::UnknownType => "unknown_type",
            RejectReason::UnknownStatus => "unknown_status",
            RejectReason::UnknownCharger => "unknown_charger",
            RejectReason::UnknownConnector => "unknown_connector",
            RejectReason::Future => "future",
            RejectReason::Expired => "expired",
        }
    }

    /// Position in [`RejectReason::ALL`], for counter arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// A record that failed decoding or validation: which field, and why.
#[derive(Clone, Debug, PartialEq, Error)]
#[error("{}{detail}", field.as_deref().map(|f| format!("field `{f}`: ")).unwrap_or_default())]
pub struct RecordError {
    /// The reason class (the counter label).
    pub reason: RejectReason,
    /// Path of the offending field (`ev.soc_pct`), when one is to blame.
    pub field: Option<String>,
    /// What is wrong, for a person.
    pub detail: String,
}

impl RecordError {
    /// A new error about `field`.
    pub fn field(reason: RejectReason, field: &str, detail: impl Into<String>) -> Self {
        RecordError {
            reason,
            field: Some(field.to_owned()),
            detail: detail.into(),
        }
    }

    /// A new error about the record as a whole.
    pub fn record(reason: RejectReason, detail: impl Into<String>) -> Self {
        RecordError {
            reason,
            field: None,
            detail: detail.into(),
        }
    }
}

/// The wire shape shared by the JSON and CBOR codecs: every field optional,
/// so that validation, not the deserializer, says what is missing. Unknown
/// fields are ignored: TELEMETRY.md lets producers add fields.
#[derive(Deserialize, Default, Debug)]
pub struct RawRecord<'a> {
    /// `vehicle` or `charger`.
    #[serde(rename = "type", borrow, default, deserialize_with = "cow_opt")]
    pub kind: Option<Cow<'a, str>>,
    /// Vehicle id (vehicle reports; optional on charger reports).
    #[serde(borrow, default, deserialize_with = "cow_opt")]
    pub vehicle_id: Option<Cow<'a, str>>,
    /// Event time.
    #[serde(default, deserialize_with = "int_opt")]
    pub ts_ms: Option<Num>,
    /// Latitude.
    #[serde(default, deserialize_with = "num_opt")]
    pub lat: Option<f64>,
    /// Longitude.
    #[serde(default, deserialize_with = "num_opt")]
    pub lon: Option<f64>,
    /// Speed.
    #[serde(default, deserialize_with = "num_opt")]
    pub speed_mps: Option<f64>,
    /// Heading.
    #[serde(default, deserialize_with = "num_opt")]
    pub heading_deg: Option<f64>,
    /// Segment id.
    #[serde(borrow, default, deserialize_with = "cow_opt")]
    pub segment_id: Option<Cow<'a, str>>,
    /// EV state.
    pub ev: Option<RawEv>,
    /// Charger id.
    #[serde(borrow, default, deserialize_with = "cow_opt")]
    pub charger_id: Option<Cow<'a, str>>,
    /// Connector number.
    #[serde(default, deserialize_with = "int_opt")]
    pub connector: Option<Num>,
    /// Connector status.
    #[serde(borrow, default, deserialize_with = "cow_opt")]
    pub status: Option<Cow<'a, str>>,
    /// Power.
    #[serde(default, deserialize_with = "num_opt")]
    pub power_kw: Option<f64>,
    /// Energy register.
    #[serde(default, deserialize_with = "int_opt")]
    pub energy_wh: Option<Num>,
}

/// Deserializes an optional string, borrowing it from the input when it has
/// no escapes (serde's own `Option<Cow<str>>` always copies).
fn cow_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Option<Cow<'de, str>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a string")
        }
        fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok(Some(Cow::Borrowed(v)))
        }
        fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(v.to_owned())))
        }
        fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(v)))
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_str(self)
        }
    }
    d.deserialize_option(V)
}

/// Deserializes an optional number given as an integer or a float (CBOR
/// keeps the two apart; a client may send either).
fn num_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    Ok(int_opt(d)?.map(Num::as_f64))
}

/// A number of an integer field as the record wrote it: an integer exactly
/// (JSON without fraction or exponent, a CBOR integer), anything else as
/// the nearest double.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Num {
    /// Written as an integer.
    Int(i128),
    /// Written with a fraction or exponent (or a CBOR float).
    Float(f64),
}

impl Num {
    /// The nearest double.
    pub fn as_f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }
    }
}

/// Deserializes an optional number of an integer field without rounding
/// it through a double.
fn int_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Num>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Option<Num>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a number")
        }
        fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(Num::Int(v.into())))
        }
        fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(Num::Int(v.into())))
        }
        fn visit_u128<E>(self, v: u128) -> Result<Self::Value, E> {
            Ok(Some(Num::Int(i128::try_from(v).unwrap_or(i128::MAX))))
        }
        fn visit_i128<E>(self, v: i128) -> Result<Self::Value, E> {
            Ok(Some(Num::Int(v)))
        }
        fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
            Ok(Some(Num::Float(v)))
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
    }
    d.deserialize_option(V)
}

/// Wire shape of the `ev` object.
#[derive(Deserialize, Default, Debug)]
pub struct RawEv {
    /// State of charge.
    #[serde(default, deserialize_with = "num_opt")]
    pub soc_pct: Option<f64>,
    /// Charging flag.
    pub charging: Option<bool>,
}

fn require<T>(v: Option<T>, field: &str) -> Result<T, RecordError> {
    v.ok_or_else(|| {
        RecordError::field(
            RejectReason::MissingField,
            field,
            "required field is missing",
        )
    })
}

fn ranged(v: f64, field: &str, lo: f64, hi: f64) -> Result<f64, RecordError> {
    if v.is_finite() && v >= lo && v <= hi {
        Ok(v)
    } else {
        Err(RecordError::field(
            RejectReason::OutOfRange,
            field,
            format!("{v} is outside [{lo}, {hi}]"),
        ))
    }
}

/// Largest integer a double holds exactly, and so the largest that may be
/// written with a fraction part of zero (`12.0`).
const EXACT_IN_F64: f64 = (1u64 << 53) as f64;

fn integer(v: Num, field: &str, lo: u64, hi: u64) -> Result<u64, RecordError> {
    let exact = match v {
        Num::Int(i) => u64::try_from(i).ok(),
        // `12.0` is the integer 12; a fraction finer than a double can hold
        // at that magnitude (below about 0.0002 for today's ts_ms) cannot
        // be seen once parsed, so such a number reads as the integer.
        Num::Float(f) if f.is_finite() && f.fract() == 0.0 && f.abs() <= EXACT_IN_F64 => {
            (f >= 0.0).then_some(f as u64)
        }
        Num::Float(_) => None,
    };
    match exact {
        Some(n) if (lo..=hi).contains(&n) => Ok(n),
        _ => Err(RecordError::field(
            RejectReason::OutOfRange,
            field,
            match v {
                Num::Int(i) => format!("{i} is not an integer in [{lo}, {hi}]"),
                Num::Float(f) => format!("{f} is not an integer in [{lo}, {hi}]"),
            },
        )),
    }
}

/// Checks an id: 1 to [`MAX_ID_LEN`] bytes of `[A-Za-z0-9._:#-]`.
pub fn check_id(id: &str, field: &str) -> Result<(), RecordError> {
    let ok_char =
        |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'#' | b'-');
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(RecordError::field(
            RejectReason::InvalidId,
            field,
            format!("must be 1 to {MAX_ID_LEN} bytes, got {}", id.len()),
        ));
    }
    if let Some(bad) = id.bytes().find(|&b| !ok_char(b)) {
        return Err(RecordError::field(
            RejectReason::InvalidId,
            field,
            format!(
                "character {:?} is not allowed (only A-Z a-z 0-9 . _ : # -)",
                bad as char
            ),
        ));
    }
    Ok(())
}

impl<'a> RawRecord<'a> {
    /// Validates the wire shape into a [`Record`].
    pub fn validate(self) -> Result<Record<'a>, RecordError> {
        let kind = require(self.kind.as_deref(), "type")?;
        match kind {
            "vehicle" => self.validate_vehicle().map(Record::Vehicle),
            "charger" => self.validate_charger().map(Record::Charger),
            other => Err(RecordError::field(
                RejectReason::UnknownType,
                "type",
                format!("{other:?} is neither \"vehicle\" nor \"charger\""),
            )),
        }
    }

    fn validate_vehicle(self) -> Result<VehicleReport<'a>, RecordError> {
        let vehicle_id = require(self.vehicle_id, "vehicle_id")?;
        check_id(&vehicle_id, "vehicle_id")?;
        let ts_ms = integer(require(self.ts_ms, "ts_ms")?, "ts_ms", MIN_TS_MS, MAX_TS_MS)?;
        let lat = ranged(require(self.lat, "lat")?, "lat", -90.0, 90.0)?;
        let lon = ranged(require(self.lon, "lon")?, "lon", -180.0, 180.0)?;
        let speed_mps = ranged(
            require(self.speed_mps, "speed_mps")?,
            "speed_mps",
            0.0,
            MAX_SPEED_MPS,
        )?;
        let heading_deg = match self.heading_deg {
            Some(h) => Some(ranged(h, "heading_deg", 0.0, 360.0)?),
            None => None,
        };
        if let Some(seg) = &self.segment_id {
            check_id(seg, "segment_id")?;
        }
        let ev = match self.ev {
            Some(ev) => Some(EvState {
                soc_pct: ranged(require(ev.soc_pct, "ev.soc_pct")?, "ev.soc_pct", 0.0, 100.0)?,
                charging: ev.charging,
            }),
            None => None,
        };
        Ok(VehicleReport {
            vehicle_id,
            ts_ms,
            lat,
            lon,
            speed_mps,
            heading_deg,
            segment_id: self.segment_id,
            ev,
        })
    }

    fn validate_charger(self) -> Result<ChargerReport<'a>, RecordError> {
        let charger_id = require(self.charger_id, "charger_id")?;
        check_id(&charger_id, "charger_id")?;
        let connector = integer(
            require(self.connector, "connector")?,
            "connector",
            1,
            MAX_CONNECTOR as u64,
        )? as u32;
        let ts_ms = integer(require(self.ts_ms, "ts_ms")?, "ts_ms", MIN_TS_MS, MAX_TS_MS)?;
        let status_text = require(self.status.as_deref(), "status")?;
        let status = ConnectorStatus::parse(status_text).ok_or_else(|| {
            RecordError::field(
                RejectReason::UnknownStatus,
                "status",
                format!(
                    "{status_text:?} is not an OCPP 2.0.1 connector status (Available, Occupied, Reserved, Unavailable, Faulted)"
                ),
            )
        })?;
        let power_kw = ranged(
            require(self.power_kw, "power_kw")?,
            "power_kw",
            0.0,
            MAX_POWER_KW,
        )?;
        let energy_wh = integer(
            require(self.energy_wh, "energy_wh")?,
            "energy_wh",
            0,
            MAX_ENERGY_WH,
        )?;
        if let Some(v) = &self.vehicle_id {
            check_id(v, "vehicle_id")?;
        }
        Ok(ChargerReport {
            charger_id,
            connector,
            ts_ms,
            status,
            power_kw,
            energy_wh,
            vehicle_id: self.vehicle_id,
        })
    }
}
