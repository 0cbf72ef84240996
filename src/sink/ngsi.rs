//! Aggregate rows as NGSI-LD entities of the Smart Data Models (normalized
//! form, for `entityOperations/upsert`), pure.
//!
//! - A segment's congestion window is a **`TrafficFlowObserved`**,
//!   `urn:ngsi-ld:TrafficFlowObserved:<node>:<segment_id>`: `intensity`
//!   (distinct vehicles), `averageVehicleSpeed` (km/h, unit code KMH),
//!   `congested` (level heavy or jam, TELEMETRY.md §3), `dateObserved`
//!   (the window as an ISO 8601 interval) with `dateObservedFrom` and
//!   `dateObservedTo`, `location` (the segment's LineString),
//!   `refRoadSegment` (`urn:ngsi-ld:RoadSegment:<segment_id>`), `name`
//!   (the street), and edgeflow's terms `vehicleReports`, `speedRatio`,
//!   `congestionLevel`.
//! - A charger's window is an **`EVChargingStation`**,
//!   `urn:ngsi-ld:EVChargingStation:<node>:<charger_id>`: `capacity`
//!   (connectors), `availableCapacity` (connectors neither occupied nor
//!   faulted at the window's end), `status` ([`station_status`]),
//!   `socketType` and `allowedVehicleType` (reference data, else
//!   [`default_sockets`] and `["car"]`), `location`, `name`, and edgeflow's
//!   terms `energyDelivered` (Wh, WHR), `meanPower` (kW, KWT),
//!   `occupiedConnectors`, `faultedConnectors`, `dateObserved`.
//!
//! Every property carries `observedAt` = the window's end; edgeflow's
//! terms are defined in docs/ngsi-ld/context.jsonld. Ids are URNs: a
//! character of a reference id outside the URN's unreserved set is
//! percent-encoded (a SUMO id `-1234#2` becomes `-1234%232`).

use serde_json::{json, Map, Value};

use crate::aggregate::{level, AggKey, AggValue, Charging, Congestion, POWER_SCALE};
use crate::reference::{Charger, Reference, Road};

/// Percent-encodes what a URN's namespace-specific string may not hold
/// as is (RFC 8141: unreserved characters, sub-delims, ':' and '@' pass).
pub fn urn_part(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        let plain = b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b);
        if plain {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An instant as ISO 8601 UTC with milliseconds.
pub fn iso(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

/// The entity id of a row's key: segment or charger.
pub fn entity_id(reference: &Reference, node: &str, key: &AggKey) -> Option<String> {
    match key.kind {
        crate::aggregate::Kind::Congestion => {
            let road = reference.roads.get(key.key as usize)?;
            Some(format!(
                "urn:ngsi-ld:TrafficFlowObserved:{}:{}",
                urn_part(node),
                urn_part(&road.id)
            ))
        }
        crate::aggregate::Kind::Charging => {
            let charger = reference.chargers.get(key.key as usize)?;
            Some(format!(
                "urn:ngsi-ld:EVChargingStation:{}:{}",
                urn_part(node),
                urn_part(&charger.id)
            ))
        }
        crate::aggregate::Kind::Zone => None,
    }
}

/// The SDM status of a charging station from its connectors' last OCPP
/// states in the window: every connector Faulted or Unavailable:
/// `outOfService`; some: `withIncidence`; otherwise by occupancy: none
/// `empty`, at most a quarter `almostEmpty`, all `full`, at least three
/// quarters `almostFull`, else `working`. (Available and Reserved count as
/// free, Occupied as occupied: OCPP's Preparing, Charging, SuspendedEV,
/// SuspendedEVSE and Finishing arrive as Occupied, TELEMETRY.md §1.)
pub fn station_status(c: &Charging, connectors: u32) -> &'static str {
    let n = connectors.max(1);
    if c.faulted >= n {
        "outOfService"
    } else if c.faulted > 0 {
        "withIncidence"
    } else if c.occupied == 0 {
        "empty"
    } else if c.occupied >= n {
        "full"
    } else if 4 * c.occupied <= n {
        "almostEmpty"
    } else if 4 * c.occupied >= 3 * n {
        "almostFull"
    } else {
        "working"
    }
}

/// Socket types of a charger the reference data says nothing about: a
/// DC fast charger (over 22 kW per connector) has CCS, an AC one Type 2.
pub fn default_sockets(max_kw: f64) -> Vec<&'static str> {
    if max_kw > 22.0 {
        vec!["CCS/SAE"]
    } else {
        vec!["Type2"]
    }
}

/// Rounds to `places` decimals.
fn round(x: f64, places: i32) -> f64 {
    let p = 10f64.powi(places);
    (x * p).round() / p
}

/// Writes one normalized entity as JSON, straight into a request body
/// (no value tree: an upsert of a city's segments every window is the
/// hot path), every property observed at the window's end.
struct Entity<'a> {
    out: &'a mut Vec<u8>,
    observed: String,
}

impl<'a> Entity<'a> {
    fn new(out: &'a mut Vec<u8>, id: &str, kind: &str, observed: String) -> Self {
        out.extend_from_slice(b"{\"id\":");
        string(out, id);
        out.extend_from_slice(b",\"type\":");
        string(out, kind);
        Entity { out, observed }
    }

    /// `"name":{"type":"Property","value":<value>[,"unitCode":..],"observedAt":..}`.
    fn property(
        &mut self,
        name: &str,
        value: impl serde::Serialize,
        unit: Option<&str>,
    ) -> &mut Self {
        self.out.push(b',');
        string(self.out, name);
        self.out
            .extend_from_slice(b":{\"type\":\"Property\",\"value\":");
        let _ = serde_json::to_writer(&mut *self.out, &value);
        if let Some(unit) = unit {
            self.out.extend_from_slice(b",\"unitCode\":");
            string(self.out, unit);
        }
        self.out.extend_from_slice(b",\"observedAt\":");
        string(self.out, &self.observed);
        self.out.push(b'}');
        self
    }

    fn date(&mut self, name: &str, ms: u64) -> &mut Self {
        let v = json!({"@type": "DateTime", "@value": iso(ms)});
        self.property(name, v, None)
    }

    fn geo(&mut self, geometry: Value) -> &mut Self {
        self.out
            .extend_from_slice(b",\"location\":{\"type\":\"GeoProperty\",\"value\":");
        let _ = serde_json::to_writer(&mut *self.out, &geometry);
        self.out.push(b'}');
        self
    }

    fn relationship(&mut self, name: &str, object: &str) -> &mut Self {
        self.out.push(b',');
        string(self.out, name);
        self.out
            .extend_from_slice(b":{\"type\":\"Relationship\",\"object\":");
        string(self.out, object);
        self.out.push(b'}');
        self
    }

    fn window(&mut self, start: u64, end: u64) -> &mut Self {
        let interval = format!("{}/{}", iso(start), iso(end));
        self.property("dateObserved", interval, None)
            .date("dateObservedFrom", start)
            .date("dateObservedTo", end)
    }

    fn done(&mut self) {
        self.out.push(b'}');
    }
}

/// A JSON string, escaped.
fn string(out: &mut Vec<u8>, s: &str) {
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Writes the entity of one aggregate row into `out` as JSON; false (and
/// nothing written) for zones and for a key not in the reference data.
pub fn write_entity(
    out: &mut Vec<u8>,
    reference: &Reference,
    node: &str,
    window_ms: u64,
    key: &AggKey,
    value: &AggValue,
) -> bool {
    let Some(id) = entity_id(reference, node, key) else {
        return false;
    };
    let end = key.window + window_ms;
    match value {
        AggValue::Congestion(c) => match reference.roads.get(key.key as usize) {
            Some(road) => traffic_flow(out, &id, road, c, key.window, end),
            None => return false,
        },
        AggValue::Charging(c) => match reference.chargers.get(key.key as usize) {
            Some(charger) => charging_station(out, &id, charger, c, key.window, end),
            None => return false,
        },
        AggValue::Zone(_) => return false,
    }
    true
}

/// The entity of one aggregate row (`None` for zones, and for a key not
/// in the reference data): what [`write_entity`] writes, as a value.
pub fn entity(
    reference: &Reference,
    node: &str,
    window_ms: u64,
    key: &AggKey,
    value: &AggValue,
) -> Option<Value> {
    let mut out = Vec::new();
    write_entity(&mut out, reference, node, window_ms, key, value)
        .then(|| serde_json::from_slice(&out).ok())
        .flatten()
}

fn traffic_flow(out: &mut Vec<u8>, id: &str, road: &Road, c: &Congestion, start: u64, end: u64) {
    let mean = c.mean_speed_mps();
    let ratio = mean / road.free_flow_mps;
    let level = level(ratio);
    let mut e = Entity::new(out, id, "TrafficFlowObserved", iso(end));
    e.window(start, end)
        .property("intensity", c.vehicles, None)
        .property("averageVehicleSpeed", round(mean * 3.6, 4), Some("KMH"))
        .property("congested", matches!(level, "heavy" | "jam"), None)
        .property("congestionLevel", level, None)
        .property("speedRatio", round(ratio, 4), None)
        .property("vehicleReports", c.samples, None)
        .geo(json!({"type": "LineString", "coordinates": road.line}))
        .relationship(
            "refRoadSegment",
            &format!("urn:ngsi-ld:RoadSegment:{}", urn_part(&road.id)),
        );
    if let Some(name) = &road.name {
        e.property("name", name, None);
    }
    e.done();
}

fn charging_station(out: &mut Vec<u8>, id: &str, ch: &Charger, c: &Charging, start: u64, end: u64) {
    let available = ch.connectors.saturating_sub(c.occupied + c.faulted);
    let sockets: Vec<&str> = if ch.socket_types.is_empty() {
        default_sockets(ch.max_kw)
    } else {
        ch.socket_types.iter().map(String::as_str).collect()
    };
    let vehicles: Vec<&str> = if ch.vehicle_types.is_empty() {
        vec!["car"]
    } else {
        ch.vehicle_types.iter().map(String::as_str).collect()
    };
    let mut e = Entity::new(out, id, "EVChargingStation", iso(end));
    e.window(start, end)
        .property("capacity", ch.connectors, None)
        .property("availableCapacity", available, None)
        .property("status", station_status(c, ch.connectors), None)
        .property("socketType", sockets, None)
        .property("allowedVehicleType", vehicles, None)
        .property("energyDelivered", c.energy_wh, Some("WHR"))
        .property(
            "meanPower",
            round(c.mean_power_mw as f64 / POWER_SCALE, 3),
            Some("KWT"),
        )
        .property("occupiedConnectors", c.occupied, None)
        .property("faultedConnectors", c.faulted, None)
        .geo(json!({"type": "Point", "coordinates": ch.position}));
    if let Some(name) = &ch.name {
        e.property("name", name, None);
    }
    e.done();
}

/// A normalized entity reduced to key-values (each attribute to its
/// value, a relationship to its object, a typed literal to its value):
/// the form the Smart Data Models' JSON schemas describe.
pub fn key_values(entity: &Value) -> Value {
    let Some(attrs) = entity.as_object() else {
        return entity.clone();
    };
    let mut out = Map::new();
    for (name, attr) in attrs {
        let v = match attr {
            Value::Object(o) if o.contains_key("object") => o["object"].clone(),
            Value::Object(o) if o.contains_key("value") => match &o["value"] {
                Value::Object(lit) if lit.contains_key("@value") => lit["@value"].clone(),
                v => v.clone(),
            },
            other => other.clone(),
        };
        out.insert(name.clone(), v);
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::Kind;

    #[test]
    fn ids_are_urns_with_reserved_characters_encoded() {
        assert_eq!(urn_part("-172092288#2"), "-172092288%232");
        assert_eq!(urn_part("a b/ä"), "a%20b%2F%C3%A4");
        assert_eq!(iso(61_000), "1970-01-01T00:01:01.000Z");
    }

    #[test]
    fn station_status_follows_occupancy_and_faults() {
        let c = |occupied, faulted| Charging {
            occupied,
            faulted,
            ..Charging::default()
        };
        let cases = [
            (c(0, 4), "outOfService"),
            (c(0, 1), "withIncidence"),
            (c(0, 0), "empty"),
            (c(1, 0), "almostEmpty"),
            (c(2, 0), "working"),
            (c(3, 0), "almostFull"),
            (c(4, 0), "full"),
        ];
        for (value, status) in cases {
            assert_eq!(station_status(&value, 4), status, "{value:?}");
        }
    }

    #[test]
    fn a_congestion_row_is_a_traffic_flow_observed() {
        let road = Road {
            id: "r#1".into(),
            free_flow_mps: 10.0,
            lanes: 1,
            name: Some("Main".into()),
            length_m: None,
            line: vec![[26.9, 60.5], [26.91, 60.51]],
        };
        let c = Congestion {
            samples: 4,
            vehicles: 2,
            speed_sum: 4 * 4_000_000,
        };
        let mut out = Vec::new();
        traffic_flow(&mut out, "id", &road, &c, 60_000, 120_000);
        let v: Value = serde_json::from_slice(&out).expect("JSON");
        let kv = key_values(&v);
        assert_eq!(kv["averageVehicleSpeed"], json!(14.4));
        assert_eq!(kv["congested"], json!(true), "ratio 0.4 is heavy");
        assert_eq!(kv["intensity"], json!(2));
        assert_eq!(kv["dateObservedFrom"], json!("1970-01-01T00:01:00.000Z"));
        assert_eq!(kv["refRoadSegment"], json!("urn:ngsi-ld:RoadSegment:r%231"));
        assert_eq!(
            v["intensity"]["observedAt"],
            json!("1970-01-01T00:02:00.000Z")
        );
        let key = AggKey {
            kind: Kind::Zone,
            key: 0,
            window: 0,
        };
        assert!(entity_id(&Reference::default(), "n", &key).is_none());
    }
}
