//! Reference data (TELEMETRY.md §2): the road network and the charger list,
//! read from GeoJSON (RFC 7946, WGS84).
//!
//! Loading checks every feature and reports every problem at once, each with
//! its place (`roads.geojson: features[12].properties.free_flow_mps: ...`),
//! so a city's GIS team fixes a file in one pass.
//!
//! Segments and chargers are stored sorted by id, and the dataflow refers to
//! them by their index in that order: sorting by index is sorting by id, which
//! is the order of the CSV outputs (TELEMETRY.md §4).

use std::sync::Arc;

use crate::geo::zones::{Membership, Zone, ZoneRegistry, ZoneSettings};
use crate::geo::{MatchSettings, Matcher};

use std::path::Path;

use rustc_hash::FxHashMap;
use serde_json::Value;

use crate::model::check_id;

/// Largest accepted reference file, bytes (a whole region's roads fit well
/// within it; a bigger file is a mistake, not a network).
pub const MAX_REFERENCE_BYTES: u64 = 512 << 20;

pub use crate::problem::Problem;

/// The roads' lines, in order (segment `i` is `roads[i]`).
fn lines(roads: &[Road]) -> Vec<&[[f64; 2]]> {
    roads.iter().map(|r| r.line.as_slice()).collect()
}

/// A road segment.
#[derive(Clone, Debug, PartialEq)]
pub struct Road {
    /// Unique id.
    pub id: String,
    /// Free-flow speed, m/s.
    pub free_flow_mps: f64,
    /// Lane count.
    pub lanes: u32,
    /// Street name.
    pub name: Option<String>,
    /// Length, metres, when given.
    pub length_m: Option<f64>,
    /// Geometry as `[lon, lat]` positions.
    pub line: Vec<[f64; 2]>,
}

impl Road {
    /// Length, metres: `length_m` when given, else along its line (on a
    /// plane around its first point).
    pub fn length(&self) -> f64 {
        self.length_m.unwrap_or_else(|| {
            let Some(&[lon, lat]) = self.line.first() else {
                return 0.0;
            };
            let plane = crate::geo::matcher::Plane::around(lon, lat);
            let points: Vec<[f64; 2]> = self
                .line
                .iter()
                .map(|p| plane.project(p[0], p[1]))
                .collect();
            points
                .windows(2)
                .map(|w| (w[1][0] - w[0][0]).hypot(w[1][1] - w[0][1]))
                .sum()
        })
    }
}

/// Socket types a charger may list (`socket_types`): the Smart Data
/// Models' EVChargingStation enumeration.
pub const SOCKET_TYPES: [&str; 13] = [
    "Caravan_Mains_Socket",
    "CHAdeMO",
    "CCS/SAE",
    "Dual_CHAdeMO",
    "Dual_J-1772",
    "Dual_Mennekes",
    "J-1772",
    "Mennekes",
    "Other",
    "Tesla",
    "Type2",
    "Type3",
    "Wall_Euro",
];
/// Vehicle types a charger may list (`vehicle_types`), as the Smart Data
/// Models enumerate them.
pub const VEHICLE_TYPES: [&str; 7] = [
    "bicycle",
    "bus",
    "car",
    "caravan",
    "motorcycle",
    "motorscooter",
    "truck",
];

/// A charging station.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Charger {
    /// Unique id.
    pub id: String,
    /// How many vehicles can charge at once.
    pub connectors: u32,
    /// Rated power per connector, kW.
    pub max_kw: f64,
    /// Display name.
    pub name: Option<String>,
    /// Position `[lon, lat]`.
    pub position: [f64; 2],
    /// Socket types (`socket_types`, of [`SOCKET_TYPES`]); empty when not
    /// given.
    pub socket_types: Vec<String>,
    /// Vehicle types it charges (`vehicle_types`, of [`VEHICLE_TYPES`]);
    /// empty when not given.
    pub vehicle_types: Vec<String>,
}

/// The reference data of one node.
#[derive(Clone, Debug, Default)]
pub struct Reference {
    /// Road segments, sorted by id.
    pub roads: Vec<Road>,
    /// Chargers, sorted by id.
    pub chargers: Vec<Charger>,
    road_index: FxHashMap<String, u32>,
    charger_index: FxHashMap<String, u32>,
    /// The spatial index over `roads`, for map matching.
    pub matcher: Matcher,
    /// Named zones (`[reference] zones`), as loaded at start.
    pub zones: Vec<Zone>,
    /// Zone settings (`[zones]`).
    pub zone_settings: ZoneSettings,
    /// Zone numbers, shared by every clone (see [`ZoneRegistry`]).
    pub registry: Arc<ZoneRegistry>,
    /// `[privacy] vehicle_hash_key`, set when the node pushes to central:
    /// vehicle ids hash under it, by day, so that the sketches of distinct
    /// vehicles may leave the node ([`crate::privacy`]).
    pub vehicle_key: Option<crate::privacy::VehicleKey>,
    /// Trajectory (HMM) matching of reports without `segment_id`, when
    /// `[matching] method = "hmm"` ([`crate::geo::hmm`]); without it, each
    /// report is matched alone by `matcher`.
    pub hmm: Option<Arc<crate::geo::hmm::Hmm>>,
}

impl Reference {
    /// Builds the indexes; `roads` and `chargers` may come in any order.
    pub fn new(roads: Vec<Road>, chargers: Vec<Charger>) -> Self {
        Self::with_matching(roads, chargers, MatchSettings::default())
    }

    /// [`Reference::new`] with map matching by `settings` (the index is
    /// built once).
    pub fn with_matching(
        mut roads: Vec<Road>,
        mut chargers: Vec<Charger>,
        settings: MatchSettings,
    ) -> Self {
        roads.sort_by(|a, b| a.id.cmp(&b.id));
        chargers.sort_by(|a, b| a.id.cmp(&b.id));
        let road_index = roads
            .iter()
            .enumerate()
            .map(|(i, r)| (r.id.clone(), i as u32))
            .collect();
        let charger_index = chargers
            .iter()
            .enumerate()
            .map(|(i, c)| (c.id.clone(), i as u32))
            .collect();
        let matcher = Matcher::new(&lines(&roads), settings);
        Reference {
            roads,
            chargers,
            road_index,
            charger_index,
            matcher,
            zones: Vec::new(),
            zone_settings: ZoneSettings::default(),
            registry: Arc::default(),
            vehicle_key: None,
            hmm: None,
        }
    }

    /// Whether aggregates roll up into zones (a zone file, even an empty
    /// one, or H3 cells).
    pub fn rollups(&self) -> bool {
        self.zone_settings.zone_file
            || !self.zones.is_empty()
            || self.zone_settings.h3_resolution.is_some()
    }

    /// Whether low-SoC EVs are placed in H3 cells: for the zone roll-ups,
    /// or for central's (a node that pushes has the vehicle key).
    pub fn places_low_soc(&self) -> bool {
        self.rollups() || self.vehicle_key.is_some()
    }

    /// Zone membership of the segments and chargers for `zones` (numbering
    /// new zones in the registry).
    pub fn membership(&self, zones: &[Zone]) -> Membership {
        let lines = lines(&self.roads);
        let positions: Vec<[f64; 2]> = self.chargers.iter().map(|c| c.position).collect();
        crate::geo::zones::membership(
            &lines,
            &positions,
            zones,
            &self.zone_settings,
            &self.registry,
        )
    }

    /// Rebuilds the map-matching index with `settings`.
    pub fn set_matching(&mut self, settings: MatchSettings) {
        self.matcher = Matcher::new(&lines(&self.roads), settings);
    }

    /// Matches reports without `segment_id` by HMM with `settings` (the
    /// graph and route table are built now).
    pub fn set_hmm(
        &mut self,
        settings: crate::geo::hmm::HmmSettings,
    ) -> Result<(), crate::geo::hmm::HmmError> {
        let hmm = crate::geo::hmm::Hmm::new(&lines(&self.roads), settings)?;
        self.hmm = Some(Arc::new(hmm));
        Ok(())
    }

    /// Every segment's line (`[lon, lat]` points), in index order: what
    /// the matchers are built from.
    pub fn road_lines(&self) -> Vec<&[[f64; 2]]> {
        lines(&self.roads)
    }

    /// Index of a segment id.
    #[inline]
    pub fn road(&self, id: &str) -> Option<u32> {
        self.road_index.get(id).copied()
    }

    /// Index of a charger id.
    #[inline]
    pub fn charger(&self, id: &str) -> Option<u32> {
        self.charger_index.get(id).copied()
    }

    /// Loads both files, reporting every problem in either; map matching
    /// by `matching`.
    pub fn load(
        roads: &Path,
        chargers: &Path,
        matching: MatchSettings,
    ) -> Result<Self, Vec<Problem>> {
        let mut problems = Vec::new();
        let before = problems.len();
        let roads_path = roads;
        let roads = load_features(roads_path, &mut problems, parse_road);
        if roads.is_empty() && problems.len() == before {
            problems.push(Problem {
                file: roads_path.to_owned(),
                place: "features".into(),
                message: "the road network has no segments: nothing could be matched or aggregated"
                    .into(),
            });
        }
        let chargers = load_features(chargers, &mut problems, parse_charger);
        if problems.is_empty() {
            Ok(Reference::with_matching(roads, chargers, matching))
        } else {
            Err(problems)
        }
    }
}

/// Collects problems for one feature.
struct Ctx<'p> {
    file: &'p Path,
    prefix: String,
    problems: &'p mut Vec<Problem>,
}

impl Ctx<'_> {
    fn push(&mut self, field: &str, message: impl Into<String>) {
        let place = if field.is_empty() {
            self.prefix.clone()
        } else {
            format!("{}.{field}", self.prefix)
        };
        self.problems.push(Problem {
            file: self.file.to_owned(),
            place,
            message: message.into(),
        });
    }

    fn number(
        &mut self,
        props: &Value,
        field: &str,
        required: bool,
        check: impl Fn(f64) -> bool,
        rule: &str,
    ) -> Option<f64> {
        match props.get(field) {
            None | Some(Value::Null) if !required => None,
            None | Some(Value::Null) => {
                self.push(
                    &format!("properties.{field}"),
                    "required property is missing",
                );
                None
            }
            Some(Value::Number(n)) => match n.as_f64() {
                Some(v) if check(v) => Some(v),
                _ => {
                    self.push(
                        &format!("properties.{field}"),
                        format!("{n} must be {rule}"),
                    );
                    None
                }
            },
            Some(other) => {
                self.push(
                    &format!("properties.{field}"),
                    format!("expected a number, found {}", kind(other)),
                );
                None
            }
        }
    }

    fn text(&mut self, props: &Value, field: &str, required: bool) -> Option<String> {
        match props.get(field) {
            None | Some(Value::Null) if !required => None,
            None | Some(Value::Null) => {
                self.push(
                    &format!("properties.{field}"),
                    "required property is missing",
                );
                None
            }
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                self.push(
                    &format!("properties.{field}"),
                    format!("expected a string, found {}", kind(other)),
                );
                None
            }
        }
    }
}

impl Ctx<'_> {
    /// An optional list of distinct names, each one of `allowed`.
    fn one_of_each(&mut self, props: &Value, field: &str, allowed: &[&str]) -> Option<Vec<String>> {
        let Some(v) = props.get(field).filter(|v| !v.is_null()) else {
            return Some(Vec::new());
        };
        let names: Option<Vec<String>> = v.as_array().and_then(|items| {
            items
                .iter()
                .map(|i| i.as_str().map(str::to_owned))
                .collect()
        });
        let place = format!("properties.{field}");
        let Some(names) = names.filter(|n| !n.is_empty()) else {
            self.push(
                &place,
                format!("expected a non-empty list of strings, found {}", kind(v)),
            );
            return None;
        };
        for (i, n) in names.iter().enumerate() {
            if !allowed.contains(&n.as_str()) {
                self.push(
                    &place,
                    format!("{n:?} is not one of {}", allowed.join(", ")),
                );
                return None;
            }
            if names[..i].contains(n) {
                self.push(&place, format!("{n:?} is listed twice"));
                return None;
            }
        }
        Some(names)
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn position(v: &Value) -> Option<[f64; 2]> {
    let a = v.as_array()?;
    if a.len() < 2 {
        return None;
    }
    let (lon, lat) = (a[0].as_f64()?, a[1].as_f64()?);
    ((-180.0..=180.0).contains(&lon) && (-90.0..=90.0).contains(&lat)).then_some([lon, lat])
}

fn load_features<T>(
    path: &Path,
    problems: &mut Vec<Problem>,
    parse: fn(&mut Ctx<'_>, &Value) -> Option<T>,
) -> Vec<T> {
    let mut out = Vec::new();
    let problem = |message: String| Problem {
        file: path.to_owned(),
        place: String::new(),
        message,
    };
    let text = match std::fs::metadata(path) {
        Ok(m) if m.len() > MAX_REFERENCE_BYTES => {
            problems.push(problem(format!(
                "file is {} bytes, more than the limit of {MAX_REFERENCE_BYTES}",
                m.len()
            )));
            return out;
        }
        Ok(_) => match std::fs::read(path) {
            Ok(t) => t,
            Err(e) => {
                problems.push(problem(format!("cannot read: {e}")));
                return out;
            }
        },
        Err(e) => {
            problems.push(problem(format!("cannot read: {e}")));
            return out;
        }
    };
    // The features stay raw slices of the text, each parsed on its own:
    // memory is the file plus one feature, not a tree of the whole file.
    #[derive(serde::Deserialize)]
    struct Collection<'a> {
        #[serde(rename = "type")]
        kind: Option<Value>,
        #[serde(borrow)]
        features: Option<Vec<&'a serde_json::value::RawValue>>,
    }
    let doc: Collection<'_> = match serde_json::from_slice(&text) {
        Ok(v) => v,
        Err(e) => {
            problems.push(problem(format!(
                "not valid JSON (a FeatureCollection): {e}"
            )));
            return out;
        }
    };
    if doc.kind.as_ref().and_then(Value::as_str) != Some("FeatureCollection") {
        problems.push(Problem {
            file: path.to_owned(),
            place: "type".into(),
            message: "expected \"FeatureCollection\"".into(),
        });
        return out;
    }
    let Some(features) = doc.features else {
        problems.push(Problem {
            file: path.to_owned(),
            place: "features".into(),
            message: "expected an array of features".into(),
        });
        return out;
    };
    let mut seen: FxHashMap<String, usize> = FxHashMap::default();
    for (i, raw) in features.iter().enumerate() {
        let feature: Value = match serde_json::from_str(raw.get()) {
            Ok(f) => f,
            Err(e) => {
                problems.push(Problem {
                    file: path.to_owned(),
                    place: format!("features[{i}]"),
                    message: format!("not valid JSON: {e}"),
                });
                continue;
            }
        };
        let feature = &feature;
        let mut ctx = Ctx {
            file: path,
            prefix: format!("features[{i}]"),
            problems,
        };
        if let Some(id) = feature.pointer("/properties/id").and_then(Value::as_str) {
            if let Some(first) = seen.insert(id.to_owned(), i) {
                ctx.push(
                    "properties.id",
                    format!("duplicate id {id:?} (first at features[{first}])"),
                );
            }
        }
        if let Some(item) = parse(&mut ctx, feature) {
            out.push(item);
        }
    }
    out
}

fn properties<'v>(ctx: &mut Ctx<'_>, feature: &'v Value) -> Option<&'v Value> {
    match feature.get("properties") {
        Some(p @ Value::Object(_)) => Some(p),
        _ => {
            ctx.push("properties", "expected an object");
            None
        }
    }
}

fn feature_id(ctx: &mut Ctx<'_>, props: &Value) -> Option<String> {
    let id = ctx.text(props, "id", true)?;
    match check_id(&id, "id") {
        Ok(()) => Some(id),
        Err(e) => {
            ctx.push("properties.id", e.detail);
            None
        }
    }
}

/// The geometry's coordinates, parsed by `parse`, when its type is `kind`;
/// otherwise a problem (`rule` says what the coordinates must be).
fn geometry<T>(
    ctx: &mut Ctx<'_>,
    feature: &Value,
    kind: &str,
    rule: &str,
    parse: impl Fn(&Value) -> Option<T>,
) -> Option<T> {
    let geometry = feature.get("geometry");
    match geometry.and_then(|g| g.get("type")).and_then(Value::as_str) {
        Some(k) if k == kind => {
            let parsed = geometry.and_then(|g| g.get("coordinates")).and_then(parse);
            if parsed.is_none() {
                ctx.push("geometry.coordinates", format!("expected {rule}"));
            }
            parsed
        }
        other => {
            ctx.push(
                "geometry.type",
                format!("expected {kind:?}, found {other:?}"),
            );
            None
        }
    }
}

fn parse_road(ctx: &mut Ctx<'_>, feature: &Value) -> Option<Road> {
    let line = geometry(
        ctx,
        feature,
        "LineString",
        "at least 2 [lon, lat] positions within WGS84 bounds",
        |c| {
            c.as_array()?
                .iter()
                .map(position)
                .collect::<Option<Vec<_>>>()
                .filter(|pts| pts.len() >= 2)
        },
    );
    if line
        .as_ref()
        .is_some_and(|pts| pts.windows(2).all(|p| p[0] == p[1]))
    {
        ctx.push(
            "geometry.coordinates",
            "the segment has zero length: all its positions are the same",
        );
    }
    let props = properties(ctx, feature)?;
    let id = feature_id(ctx, props);
    let free_flow = ctx.number(
        props,
        "free_flow_mps",
        true,
        |v| v > 0.0 && v <= 150.0,
        "in (0, 150] m/s",
    );
    let lanes = ctx.number(
        props,
        "lanes",
        true,
        |v| v.fract() == 0.0 && (1.0..=64.0).contains(&v),
        "an integer in [1, 64]",
    );
    let name = ctx.text(props, "name", false);
    let length_m = ctx.number(props, "length_m", false, |v| v > 0.0, "> 0 metres");
    Some(Road {
        id: id?,
        free_flow_mps: free_flow?,
        lanes: lanes? as u32,
        name,
        length_m,
        line: line?,
    })
}

fn parse_charger(ctx: &mut Ctx<'_>, feature: &Value) -> Option<Charger> {
    let pos = geometry(
        ctx,
        feature,
        "Point",
        "a [lon, lat] position within WGS84 bounds",
        position,
    );
    let props = properties(ctx, feature)?;
    let id = feature_id(ctx, props);
    let connectors = ctx.number(
        props,
        "connectors",
        true,
        |v| v.fract() == 0.0 && v >= 1.0 && v <= crate::model::MAX_CONNECTOR as f64,
        "an integer in [1, 1024]",
    );
    let max_kw = ctx.number(
        props,
        "max_kw",
        true,
        |v| v > 0.0 && v <= crate::model::MAX_POWER_KW,
        "in (0, 10000] kW",
    );
    let name = ctx.text(props, "name", false);
    let socket_types = ctx.one_of_each(props, "socket_types", &SOCKET_TYPES);
    let vehicle_types = ctx.one_of_each(props, "vehicle_types", &VEHICLE_TYPES);
    Some(Charger {
        id: id?,
        connectors: connectors? as u32,
        max_kw: max_kw?,
        name,
        position: pos?,
        socket_types: socket_types?,
        vehicle_types: vehicle_types?,
    })
}
