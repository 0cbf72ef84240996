//! The zone file: a GeoJSON FeatureCollection of `Polygon` or
//! `MultiPolygon` features, loaded with every problem reported at its
//! place (rings closed, within WGS84 bounds, not crossing themselves).

use std::path::Path;

use rustc_hash::FxHashMap;
use serde_json::Value;

use super::Zone;
use crate::problem::Problem;

/// Largest accepted zone file, bytes.
pub const MAX_ZONE_FILE_BYTES: u64 = 64 << 20;

/// Loads a zone file: a GeoJSON FeatureCollection of `Polygon` or
/// `MultiPolygon` features with a unique string `properties.id` (and an
/// optional `properties.name`). Every problem is reported, with its place.
pub fn load(path: &Path) -> Result<Vec<Zone>, Vec<Problem>> {
    let problem = |place: String, message: String| Problem {
        file: path.to_owned(),
        place,
        message,
    };
    let text = match std::fs::metadata(path) {
        Ok(m) if m.len() > MAX_ZONE_FILE_BYTES => {
            return Err(vec![problem(
                String::new(),
                format!(
                    "file is {} bytes, more than the limit of {MAX_ZONE_FILE_BYTES}",
                    m.len()
                ),
            )])
        }
        _ => std::fs::read(path)
            .map_err(|e| vec![problem(String::new(), format!("cannot read: {e}"))])?,
    };
    let doc: Value = serde_json::from_slice(&text)
        .map_err(|e| vec![problem(String::new(), format!("not valid JSON: {e}"))])?;
    if doc.get("type").and_then(Value::as_str) != Some("FeatureCollection") {
        return Err(vec![problem(
            "type".into(),
            "expected \"FeatureCollection\"".into(),
        )]);
    }
    let Some(features) = doc.get("features").and_then(Value::as_array) else {
        return Err(vec![problem(
            "features".into(),
            "expected an array of features".into(),
        )]);
    };
    let mut problems = Vec::new();
    let mut zones = Vec::new();
    let mut seen: FxHashMap<String, usize> = FxHashMap::default();
    for (i, f) in features.iter().enumerate() {
        let at = |field: &str| format!("features[{i}].{field}");
        let id = match f.pointer("/properties/id") {
            Some(Value::String(s))
                if !s.is_empty() && s.chars().count() <= 128 && !s.contains(['\n', '\r', ',']) =>
            {
                if let Some(first) = seen.insert(s.clone(), i) {
                    problems.push(problem(
                        at("properties.id"),
                        format!("duplicate id {s:?} (first at features[{first}])"),
                    ));
                }
                Some(s.clone())
            }
            Some(Value::String(s)) => {
                problems.push(problem(
                    at("properties.id"),
                    format!("{s:?} must be 1-128 characters without commas or line breaks"),
                ));
                None
            }
            Some(_) => {
                problems.push(problem(at("properties.id"), "expected a string".into()));
                None
            }
            None => {
                problems.push(problem(
                    at("properties.id"),
                    "required property is missing".into(),
                ));
                None
            }
        };
        let name = f
            .pointer("/properties/name")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let kind = f.pointer("/geometry/type").and_then(Value::as_str);
        let coords = f.pointer("/geometry/coordinates");
        let polygons = match (kind, coords) {
            (Some("Polygon"), Some(c)) => polygon(c).map(|p| vec![p]),
            (Some("MultiPolygon"), Some(Value::Array(ps))) => {
                ps.iter().map(polygon).collect::<Result<Vec<_>, _>>()
            }
            (Some("MultiPolygon"), _) => Err("expected an array of polygons".to_owned()),
            (other, _) => {
                problems.push(problem(
                    at("geometry.type"),
                    format!("expected \"Polygon\" or \"MultiPolygon\", found {other:?}"),
                ));
                continue;
            }
        };
        match (id, polygons) {
            (Some(id), Ok(polygons)) => zones.push(Zone { id, name, polygons }),
            (_, Err(e)) => problems.push(problem(at("geometry.coordinates"), e)),
            (None, Ok(_)) => {}
        }
    }
    if problems.is_empty() {
        Ok(zones)
    } else {
        Err(problems)
    }
}

/// A polygon's rings: each at least 4 positions within WGS84 bounds,
/// closed (last = first).
fn polygon(v: &Value) -> Result<Vec<Vec<[f64; 2]>>, String> {
    let rings = v.as_array().ok_or("expected an array of rings")?;
    if rings.is_empty() {
        return Err("a polygon needs an outer ring".into());
    }
    rings
        .iter()
        .enumerate()
        .map(|(r, ring)| {
            let pts = ring
                .as_array()
                .ok_or(format!("ring {r}: expected an array of positions"))?
                .iter()
                .map(|p| {
                    let a = p.as_array()?;
                    let (lon, lat) = (a.first()?.as_f64()?, a.get(1)?.as_f64()?);
                    ((-180.0..=180.0).contains(&lon) && (-90.0..=90.0).contains(&lat))
                        .then_some([lon, lat])
                })
                .collect::<Option<Vec<[f64; 2]>>>()
                .ok_or(format!(
                    "ring {r}: positions must be [lon, lat] within WGS84 bounds"
                ))?;
            if pts.len() < 4 {
                return Err(format!(
                    "ring {r}: {} positions, a ring needs at least 4",
                    pts.len()
                ));
            }
            if pts.first() != pts.last() {
                return Err(format!(
                    "ring {r}: not closed (the last position must equal the first)"
                ));
            }
            if let Some((i, j)) = self_crossing(&pts) {
                return Err(format!(
                    "ring {r}: edges {i} and {j} cross or touch: a ring must not intersect itself (membership would be ambiguous)"
                ));
            }
            Ok(pts)
        })
        .collect()
}

/// Two edges of a closed ring that cross or touch, other than neighbours
/// at their shared vertex: edges are indexed from the ring's first
/// position. Candidates come from an R-tree of edge envelopes, so a ring
/// of many thousand vertices is checked in about `n log n`.
fn self_crossing(ring: &[[f64; 2]]) -> Option<(usize, usize)> {
    use rstar::primitives::{GeomWithData, Rectangle};
    let n = ring.len() - 1; // edges; the last position closes the ring
    let edges: Vec<GeomWithData<Rectangle<[f64; 2]>, usize>> = (0..n)
        .map(|i| GeomWithData::new(Rectangle::from_corners(ring[i], ring[i + 1]), i))
        .collect();
    let tree = rstar::RTree::bulk_load(edges);
    for i in 0..n {
        let envelope = rstar::AABB::from_corners(ring[i], ring[i + 1]);
        for other in tree.locate_in_envelope_intersecting(envelope) {
            let j = other.data;
            let neighbours = j == i
                || j == i + 1
                || i == j + 1
                || (i == 0 && j == n - 1)
                || (j == 0 && i == n - 1);
            if j > i && !neighbours && segments_meet(ring[i], ring[i + 1], ring[j], ring[j + 1]) {
                return Some((i, j));
            }
        }
    }
    None
}

/// Whether segments `ab` and `cd` share a point.
fn segments_meet(a: [f64; 2], b: [f64; 2], c: [f64; 2], d: [f64; 2]) -> bool {
    let orient = |p: [f64; 2], q: [f64; 2], r: [f64; 2]| {
        let v = (q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0]);
        if v > 0.0 {
            1
        } else if v < 0.0 {
            -1
        } else {
            0
        }
    };
    let on = |p: [f64; 2], q: [f64; 2], r: [f64; 2]| {
        r[0] >= p[0].min(q[0])
            && r[0] <= p[0].max(q[0])
            && r[1] >= p[1].min(q[1])
            && r[1] <= p[1].max(q[1])
    };
    let (o1, o2, o3, o4) = (
        orient(a, b, c),
        orient(a, b, d),
        orient(c, d, a),
        orient(c, d, b),
    );
    (o1 != o2 && o3 != o4)
        || (o1 == 0 && on(a, b, c))
        || (o2 == 0 && on(a, b, d))
        || (o3 == 0 && on(c, d, a))
        || (o4 == 0 && on(c, d, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_that_crosses_itself_is_found_and_a_simple_one_is_not() {
        let square = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0, 0.0]];
        assert_eq!(self_crossing(&square), None);
        let bowtie = [[0.0, 0.0], [1.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]];
        assert_eq!(self_crossing(&bowtie), Some((0, 2)));
        // A vertex touching another edge.
        let pinched = [
            [0.0, 0.0],
            [2.0, 0.0],
            [2.0, 2.0],
            [1.0, 0.0],
            [0.0, 2.0],
            [0.0, 0.0],
        ];
        assert!(self_crossing(&pinched).is_some());
    }
}
