//! Zones: named polygons (a GeoJSON file, `[reference] zones`) and H3
//! cells (`[zones] h3_resolution`, the `h3o` crate) that segment and charger
//! aggregates roll up into.
//!
//! # Membership
//! - A road segment belongs to every named zone containing its *midpoint*
//!   (the point halfway along its polyline), and to the H3 cell containing
//!   that midpoint. Taking one point keeps a segment crossing a boundary in
//!   one zone of a partition, never double-counted.
//! - A charger belongs to every named zone containing its position, and to
//!   its H3 cell.
//! - Point in polygon is the even-odd rule on `[lon, lat]` (holes are
//!   inner rings; a point exactly on an edge may fall either side).
//!
//! Membership is data in the dataflow (a differential collection), not
//! code: replacing the zone file on a running node changes the roll-ups of
//! every window still in retention ([`crate::node`] watches the file).
//!
//! # Zone numbers
//! Aggregate keys are `u32`. A [`ZoneRegistry`] numbers zone ids in the
//! order it first sees them (named zones sorted by id, then H3 cells sorted)
//! and never forgets one, so numbers stay valid across reloads; CSV output
//! sorts zones by id, not by number. It also keeps the named zones in
//! force and a generation that counts their changes, so that what draws
//! them (the live map) follows a reload.

use std::sync::{Arc, RwLock};

use rustc_hash::FxHashMap;

mod file;
pub use file::{load, MAX_ZONE_FILE_BYTES};

/// Default state-of-charge threshold of the demand signal, percent.
pub const DEFAULT_LOW_SOC_PCT: f64 = 20.0;
/// Default H3 resolution at which EV positions are placed in zones (11:
/// cells of about 2,150 m², edges of about 29 m).
pub const DEFAULT_POSITION_RESOLUTION: u8 = 11;
/// Default limit on the cells covering all named zones at the position
/// resolution (about 32 bytes each in the dataflow).
pub const DEFAULT_MAX_POSITION_CELLS: usize = 1_000_000;

/// Zone settings (`[zones]` in the topology).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ZoneSettings {
    /// A zone file is configured (roll-ups are built even while it holds
    /// no zone, so that zones added to it later roll up).
    pub zone_file: bool,
    /// H3 resolution of cell roll-ups (0-15); `None`: no cell roll-ups.
    pub h3_resolution: Option<u8>,
    /// An EV below this state of charge that is not charging counts toward
    /// its zone's demand signal.
    pub low_soc_pct: f64,
    /// H3 resolution at which such an EV's position is placed in zones: a
    /// named zone covers the cells whose centre it contains; an H3 zone
    /// its descendants. At least `h3_resolution`.
    pub position_resolution: u8,
    /// Most cells the named zones may cover at `position_resolution`.
    pub max_position_cells: usize,
}

impl Default for ZoneSettings {
    fn default() -> Self {
        ZoneSettings {
            zone_file: false,
            h3_resolution: None,
            low_soc_pct: DEFAULT_LOW_SOC_PCT,
            position_resolution: DEFAULT_POSITION_RESOLUTION,
            max_position_cells: DEFAULT_MAX_POSITION_CELLS,
        }
    }
}

/// What kind of zone an id names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ZoneKind {
    /// A polygon from the zone file.
    Named,
    /// An H3 cell (id = the cell index in hex).
    H3,
}

impl ZoneKind {
    /// Name in CSV output.
    pub fn as_str(self) -> &'static str {
        match self {
            ZoneKind::Named => "zone",
            ZoneKind::H3 => "h3",
        }
    }
}

/// A named zone: one or more polygons, each an outer ring and holes, as
/// `[lon, lat]` rings.
#[derive(Clone, Debug, PartialEq)]
pub struct Zone {
    /// Unique id.
    pub id: String,
    /// Display name.
    pub name: Option<String>,
    /// Polygons: rings, the first outer, the rest holes.
    pub polygons: Vec<Vec<Vec<[f64; 2]>>>,
}

impl Zone {
    /// Whether `p` (`[lon, lat]`) is inside (even-odd over all rings).
    pub fn contains(&self, p: [f64; 2]) -> bool {
        self.polygons
            .iter()
            .any(|rings| rings.iter().filter(|ring| ring_contains(ring, p)).count() % 2 == 1)
    }

    /// The centre of its outer rings (`[lon, lat]`): the centroid of their
    /// areas in lon/lat degrees (holes ignored; each ring weighs its area,
    /// whichever way it winds), or the mean of the vertices when the rings
    /// enclose no area.
    pub fn centre(&self) -> Option<[f64; 2]> {
        let (mut area, mut cx, mut cy, mut n, mut sx, mut sy) = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
        for ring in self.polygons.iter().filter_map(|rings| rings.first()) {
            // Closed rings: the last position repeats the first.
            let (mut a, mut x, mut y) = (0.0, 0.0, 0.0);
            for w in ring.windows(2) {
                let (p, q) = (w[0], w[1]);
                let cross = p[0] * q[1] - q[0] * p[1];
                a += cross;
                x += (p[0] + q[0]) * cross;
                y += (p[1] + q[1]) * cross;
                n += 1.0;
                sx += p[0];
                sy += p[1];
            }
            if a != 0.0 {
                // The ring's centroid is (x, y) / 3a; weigh it by |a|.
                let weight = a.abs();
                cx += x / (3.0 * a) * weight;
                cy += y / (3.0 * a) * weight;
                area += weight;
            }
        }
        if area > 1e-18 {
            Some([cx / area, cy / area])
        } else {
            (n > 0.0).then(|| [sx / n, sy / n])
        }
    }
}

fn ring_contains(ring: &[[f64; 2]], p: [f64; 2]) -> bool {
    let mut inside = false;
    let n = ring.len();
    for i in 0..n {
        let (a, b) = (ring[i], ring[(i + 1) % n]);
        if (a[1] > p[1]) != (b[1] > p[1]) {
            let x = a[0] + (p[1] - a[1]) / (b[1] - a[1]) * (b[0] - a[0]);
            if p[0] < x {
                inside = !inside;
            }
        }
    }
    inside
}

/// Numbers zone ids, append-only (see the module doc).
#[derive(Debug, Default)]
pub struct ZoneRegistry {
    inner: RwLock<RegistryInner>,
}

#[derive(Debug, Default)]
struct RegistryInner {
    ids: Vec<(String, ZoneKind)>,
    index: FxHashMap<(String, ZoneKind), u32>,
    /// Centres of the named zones in force, by number.
    centres: FxHashMap<u32, [f64; 2]>,
    /// The named zones in force (sorted by id); `None` until membership
    /// is first computed.
    in_force: Option<Arc<Vec<Zone>>>,
    /// How many times the named zones in force changed.
    generation: u64,
}

impl ZoneRegistry {
    /// The number of `id`, assigning the next one if it is new.
    pub fn intern(&self, id: &str, kind: ZoneKind) -> u32 {
        let key = (id.to_owned(), kind);
        if let Some(n) = self.get(id, kind) {
            return n;
        }
        let Ok(mut inner) = self.inner.write() else {
            return u32::MAX;
        };
        if let Some(&n) = inner.index.get(&key) {
            return n;
        }
        let n = inner.ids.len() as u32;
        inner.ids.push(key.clone());
        inner.index.insert(key, n);
        n
    }

    /// The number of `id`, if it has one.
    pub fn get(&self, id: &str, kind: ZoneKind) -> Option<u32> {
        let inner = self.inner.read().ok()?;
        inner.index.get(&(id.to_owned(), kind)).copied()
    }

    /// The id and kind of zone `n`.
    pub fn id(&self, n: u32) -> Option<(String, ZoneKind)> {
        let inner = self.inner.read().ok()?;
        inner.ids.get(n as usize).cloned()
    }

    /// The centre of zone `n` (`[lon, lat]`): a named zone's
    /// [`Zone::centre`] while it is in force (the last zones membership
    /// was computed for), an H3 cell's centre.
    pub fn centre(&self, n: u32) -> Option<[f64; 2]> {
        let inner = self.inner.read().ok()?;
        match inner.ids.get(n as usize)? {
            (id, ZoneKind::H3) => {
                let cell: h3o::CellIndex = id.parse().ok()?;
                let ll = h3o::LatLng::from(cell);
                Some([ll.lng(), ll.lat()])
            }
            (_, ZoneKind::Named) => inner.centres.get(&n).copied(),
        }
    }

    /// Every H3 cell numbered so far: (number, hex id), by number.
    pub fn cells(&self) -> Vec<(u32, String)> {
        let Ok(inner) = self.inner.read() else {
            return Vec::new();
        };
        (inner.ids.iter().enumerate())
            .filter(|(_, (_, kind))| *kind == ZoneKind::H3)
            .map(|(n, (id, _))| (n as u32, id.clone()))
            .collect()
    }

    /// The named zones in force (sorted by id) and their generation:
    /// `None` before membership was first computed (the reference's own
    /// zones are in force then); the generation counts changes since the
    /// first computation, which is of the reference's zones.
    pub fn in_force(&self) -> (u64, Option<Arc<Vec<Zone>>>) {
        match self.inner.read() {
            Ok(inner) => (inner.generation, inner.in_force.clone()),
            Err(_) => (0, None),
        }
    }

    /// Records the named zones in force and their centres; the generation
    /// moves when they differ from the ones in force before.
    fn set_in_force(&self, named: &[(u32, &Zone)]) {
        if let Ok(mut inner) = self.inner.write() {
            inner.centres = named
                .iter()
                .filter_map(|(n, z)| Some((*n, z.centre()?)))
                .collect();
            let zones: Vec<Zone> = named.iter().map(|(_, z)| (*z).clone()).collect();
            match &inner.in_force {
                Some(old) if **old == zones => {}
                Some(_) => {
                    inner.generation += 1;
                    inner.in_force = Some(Arc::new(zones));
                }
                None => inner.in_force = Some(Arc::new(zones)),
            }
        }
    }
}

/// Which zones each segment and charger belongs to, as `(member, zone)`
/// pairs sorted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    /// `(segment index, zone number)`.
    pub segments: Vec<(u32, u32)>,
    /// `(charger index, zone number)`.
    pub chargers: Vec<(u32, u32)>,
    /// `(H3 cell, zone number)`: the cells at `position_resolution` whose
    /// centre a named zone contains, and each H3 zone's own cell.
    pub cells: Vec<(u64, u32)>,
}

impl Membership {
    /// The pairs to retract and to add to go from `self` to `next`.
    pub fn diff(&self, next: &Membership) -> (Membership, Membership) {
        fn minus<T: Ord + Copy>(a: &[T], b: &[T]) -> Vec<T> {
            a.iter()
                .filter(|x| b.binary_search(x).is_err())
                .copied()
                .collect()
        }
        (
            Membership {
                segments: minus(&self.segments, &next.segments),
                chargers: minus(&self.chargers, &next.chargers),
                cells: minus(&self.cells, &next.cells),
            },
            Membership {
                segments: minus(&next.segments, &self.segments),
                chargers: minus(&next.chargers, &self.chargers),
                cells: minus(&next.cells, &self.cells),
            },
        )
    }
}

/// The point halfway along a polyline.
pub fn midpoint(line: &[[f64; 2]]) -> Option<[f64; 2]> {
    let (first, rest) = line.split_first()?;
    if rest.is_empty() {
        return Some(*first);
    }
    let lat = first[1].to_radians().cos();
    let len = |a: [f64; 2], b: [f64; 2]| ((b[0] - a[0]) * lat).hypot(b[1] - a[1]);
    let total: f64 = line.windows(2).map(|w| len(w[0], w[1])).sum();
    let mut left = total / 2.0;
    for w in line.windows(2) {
        let l = len(w[0], w[1]);
        if l >= left && l > 0.0 {
            let t = left / l;
            return Some([
                w[0][0] + (w[1][0] - w[0][0]) * t,
                w[0][1] + (w[1][1] - w[0][1]) * t,
            ]);
        }
        left -= l;
    }
    line.last().copied()
}

/// The H3 cell of `[lon, lat]` at `resolution`, as its hex id.
pub fn h3_cell(p: [f64; 2], resolution: u8) -> Option<String> {
    let res = h3o::Resolution::try_from(resolution).ok()?;
    let ll = h3o::LatLng::new(p[1], p[0]).ok()?;
    Some(ll.to_cell(res).to_string())
}

/// The boundary of the H3 cell with hex id `id`, as a closed-by-the-reader
/// ring of `[lon, lat]` vertices; `None` for an id that is no cell.
pub fn h3_boundary(id: &str) -> Option<Vec<[f64; 2]>> {
    let cell: h3o::CellIndex = id.parse().ok()?;
    Some(
        cell.boundary()
            .iter()
            .map(|ll| [ll.lng(), ll.lat()])
            .collect(),
    )
}

/// The H3 cell (as its 64-bit index) of `[lon, lat]` at `resolution`.
pub fn position_cell(p: [f64; 2], resolution: u8) -> Option<u64> {
    let res = h3o::Resolution::try_from(resolution).ok()?;
    let ll = h3o::LatLng::new(p[1], p[0]).ok()?;
    Some(u64::from(ll.to_cell(res)))
}

/// The ancestor of `cell` at `resolution` (the cell itself at its own).
pub fn ancestor(cell: u64, resolution: u8) -> Option<u64> {
    let cell = h3o::CellIndex::try_from(cell).ok()?;
    let res = h3o::Resolution::try_from(resolution).ok()?;
    cell.parent(res).map(u64::from)
}

/// The cells at `resolution` whose centre lies in `zone`, sorted; `Err`
/// with the count reached once it passes `limit`. A walk that starts from
/// the cells along the zone's rings (sampled at half a cell edge, with
/// their neighbours: this catches parts thinner than a cell) and spreads
/// only from cells whose centre is inside, so its cost follows the cover,
/// not the zone's bounding box.
pub fn cover(zone: &Zone, resolution: u8, limit: usize) -> Result<Vec<u64>, usize> {
    let Ok(res) = h3o::Resolution::try_from(resolution) else {
        return Ok(Vec::new());
    };
    // Half an edge, in degrees of latitude.
    let step_deg = res.edge_length_km() / 111.0 / 2.0;
    let mut seen = std::collections::HashSet::new();
    let mut queue = Vec::new();
    let mut visit = |cell: h3o::CellIndex, queue: &mut Vec<h3o::CellIndex>| {
        for c in cell.grid_disk::<Vec<_>>(1) {
            if seen.insert(c) {
                queue.push(c);
            }
        }
    };
    for ring in zone.polygons.iter().flatten() {
        for w in ring.windows(2) {
            let (a, b) = (w[0], w[1]);
            let cos = a[1].to_radians().cos().max(0.01);
            let len = ((b[0] - a[0]) * cos).hypot(b[1] - a[1]);
            let n = (len / step_deg).ceil().clamp(1.0, 1e7) as usize;
            for k in 0..=n {
                let t = k as f64 / n as f64;
                let p = [a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t];
                if let Ok(ll) = h3o::LatLng::new(p[1], p[0]) {
                    visit(ll.to_cell(res), &mut queue);
                }
            }
        }
    }
    let mut out = Vec::new();
    while let Some(cell) = queue.pop() {
        let ll = h3o::LatLng::from(cell);
        if zone.contains([ll.lng(), ll.lat()]) {
            out.push(u64::from(cell));
            if out.len() > limit {
                return Err(out.len());
            }
            visit(cell, &mut queue);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Problems of `zones` with `settings`: zones covering more cells than
/// `max_position_cells` in all at `position_resolution`.
pub fn check_cover(zones: &[Zone], settings: &ZoneSettings) -> Vec<String> {
    let mut left = settings.max_position_cells;
    for z in zones {
        match cover(z, settings.position_resolution, left) {
            Ok(cells) => left -= cells.len(),
            Err(_) => {
                return vec![format!(
                    "the zones cover more than zones.max_position_cells ({}) cells at zones.position_resolution {} (from zone {:?} on): use a coarser resolution or raise the limit",
                    settings.max_position_cells, settings.position_resolution, z.id
                )]
            }
        }
    }
    Vec::new()
}

/// Computes membership of segments (by their lines' midpoints) and chargers
/// (by their positions), numbered by their index, in `zones` and (with a
/// resolution) H3 cells, numbering zones in `registry`.
pub fn membership(
    lines: &[&[[f64; 2]]],
    positions: &[[f64; 2]],
    zones: &[Zone],
    settings: &ZoneSettings,
    registry: &ZoneRegistry,
) -> Membership {
    let mut sorted: Vec<&Zone> = zones.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let named: Vec<(u32, &Zone)> = sorted
        .iter()
        .map(|z| (registry.intern(&z.id, ZoneKind::Named), *z))
        .collect();
    registry.set_in_force(&named);
    let points = |p: [f64; 2]| -> Vec<(ZoneKind, String)> {
        let mut out: Vec<(ZoneKind, String)> = named
            .iter()
            .filter(|(_, z)| z.contains(p))
            .map(|(_, z)| (ZoneKind::Named, z.id.clone()))
            .collect();
        if let Some(cell) = settings.h3_resolution.and_then(|r| h3_cell(p, r)) {
            out.push((ZoneKind::H3, cell));
        }
        out
    };
    let seg_points: Vec<(u32, Vec<(ZoneKind, String)>)> = lines
        .iter()
        .enumerate()
        .filter_map(|(i, line)| Some((i as u32, points(midpoint(line)?))))
        .collect();
    let charger_points: Vec<(u32, Vec<(ZoneKind, String)>)> = positions
        .iter()
        .enumerate()
        .map(|(i, p)| (i as u32, points(*p)))
        .collect();
    // H3 cells are numbered after the named zones, in id order.
    let mut cells: Vec<&String> = seg_points
        .iter()
        .chain(&charger_points)
        .flat_map(|(_, z)| {
            z.iter()
                .filter(|(k, _)| *k == ZoneKind::H3)
                .map(|(_, id)| id)
        })
        .collect();
    cells.sort();
    for cell in cells {
        registry.intern(cell, ZoneKind::H3);
    }
    let number = |kind: ZoneKind, id: &str| registry.intern(id, kind);
    let pairs = |items: &[(u32, Vec<(ZoneKind, String)>)]| {
        let mut out: Vec<(u32, u32)> = items
            .iter()
            .flat_map(|(m, zs)| zs.iter().map(move |(k, id)| (*m, number(*k, id))))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    };
    // Positions: the cells covering each named zone, and each H3 zone's
    // cell (positions reach it through their ancestor at its resolution).
    let mut position_cells: Vec<(u64, u32)> = named
        .iter()
        .flat_map(|(n, z)| {
            cover(z, settings.position_resolution, settings.max_position_cells)
                .unwrap_or_default()
                .into_iter()
                .map(move |c| (c, *n))
        })
        .collect();
    for (_, zs) in seg_points.iter().chain(&charger_points) {
        for (kind, id) in zs {
            if let (ZoneKind::H3, Ok(cell)) = (kind, id.parse::<h3o::CellIndex>()) {
                position_cells.push((u64::from(cell), number(ZoneKind::H3, id)));
            }
        }
    }
    position_cells.sort_unstable();
    position_cells.dedup();
    Membership {
        segments: pairs(&seg_points),
        chargers: pairs(&charger_points),
        cells: position_cells,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn square(id: &str, x0: f64, y0: f64, size: f64) -> Zone {
        Zone {
            id: id.into(),
            name: None,
            polygons: vec![vec![vec![
                [x0, y0],
                [x0 + size, y0],
                [x0 + size, y0 + size],
                [x0, y0 + size],
                [x0, y0],
            ]]],
        }
    }

    #[test]
    fn points_in_polygons_with_holes() {
        let mut z = square("a", 0.0, 0.0, 10.0);
        z.polygons[0].push(square("hole", 4.0, 4.0, 2.0).polygons[0][0].clone());
        assert!(z.contains([1.0, 1.0]));
        assert!(!z.contains([5.0, 5.0]), "in the hole");
        assert!(!z.contains([11.0, 1.0]));
    }

    #[test]
    fn a_zones_centre_is_its_centroid_and_only_zones_in_force_have_one() {
        let z = square("a", 0.0, 0.0, 10.0);
        let c = z.centre().expect("centre");
        assert!(
            (c[0] - 5.0).abs() < 1e-9 && (c[1] - 5.0).abs() < 1e-9,
            "{c:?}"
        );
        // Two outer rings winding opposite ways: weighed by area, 4 to 1.
        let mut two = square("two", 0.0, 0.0, 2.0);
        let mut clockwise = square("cw", 10.0, 0.0, 1.0).polygons.remove(0);
        clockwise[0].reverse();
        two.polygons.push(clockwise);
        let c = two.centre().expect("centre");
        let want = [(4.0 * 1.0 + 10.5) / 5.0, (4.0 * 1.0 + 0.5) / 5.0];
        assert!(
            (c[0] - want[0]).abs() < 1e-9 && (c[1] - want[1]).abs() < 1e-9,
            "{c:?}"
        );
        let registry = ZoneRegistry::default();
        let b = square("b", 20.0, 20.0, 2.0);
        // Zones of degrees: no position cells (over the limit at once).
        let settings = ZoneSettings {
            max_position_cells: 10,
            ..ZoneSettings::default()
        };
        let m = |zones: &[Zone]| membership(&[], &[], zones, &settings, &registry);
        let ids = || {
            let (generation, zones) = registry.in_force();
            let ids = zones.map(|zs| zs.iter().map(|z| z.id.clone()).collect::<Vec<_>>());
            (generation, ids)
        };
        assert_eq!(ids(), (0, None), "nothing in force before membership");
        m(&[b.clone(), z.clone()]);
        assert_eq!(ids(), (0, Some(vec!["a".into(), "b".into()])), "by id");
        let nb = registry.get("b", ZoneKind::Named).expect("b");
        assert_eq!(registry.centre(nb), Some([21.0, 21.0]));
        m(&[z.clone(), b.clone()]);
        assert_eq!(ids().0, 0, "the same zones again are no change");
        m(&[z]);
        assert_eq!(registry.centre(nb), None, "b was removed");
        assert_eq!(ids(), (1, Some(vec!["a".into()])));
    }

    #[test]
    fn a_zones_cover_is_every_cell_whose_centre_it_holds() {
        let mut z = square("k", 26.93, 60.52, 0.02);
        z.polygons[0].push(square("hole", 26.94, 60.525, 0.004).polygons[0][0].clone());
        let cells = cover(&z, 10, 100_000).expect("within the limit");
        assert!(cells.len() > 50, "{}", cells.len());
        let centre = |c: u64| {
            let ll = h3o::LatLng::from(h3o::CellIndex::try_from(c).expect("cell"));
            [ll.lng(), ll.lat()]
        };
        assert!(cells.iter().all(|c| z.contains(centre(*c))));
        // Every position in the zone whose cell's centre is in it is covered.
        for i in 0..=40 {
            for j in 0..=40 {
                let p = [
                    26.93 + 0.02 * f64::from(i) / 40.0,
                    60.52 + 0.02 * f64::from(j) / 40.0,
                ];
                let c = position_cell(p, 10).expect("cell");
                assert_eq!(
                    cells.binary_search(&c).is_ok(),
                    z.contains(centre(c)),
                    "{p:?}"
                );
            }
        }
        assert!(cover(&z, 10, 10).is_err(), "over the limit");
        // A diagonal corridor about 20 m wide: thinner than a cell.
        let (a, b, w) = ([26.93, 60.52], [26.96, 60.535], 0.0002);
        let thin = Zone {
            id: "thin".into(),
            name: None,
            polygons: vec![vec![vec![
                [a[0], a[1]],
                [b[0], b[1]],
                [b[0], b[1] + w],
                [a[0], a[1] + w],
                [a[0], a[1]],
            ]]],
        };
        let cells = cover(&thin, 11, 100_000).expect("within the limit");
        assert!(!cells.is_empty());
        for i in 0..=600 {
            for j in 0..=4 {
                let t = f64::from(i) / 600.0;
                let p = [
                    a[0] + (b[0] - a[0]) * t,
                    a[1] + (b[1] - a[1]) * t + w * f64::from(j) / 4.0,
                ];
                let c = position_cell(p, 11).expect("cell");
                if thin.contains(centre(c)) {
                    assert!(cells.binary_search(&c).is_ok(), "{p:?}");
                }
            }
        }
        let settings = ZoneSettings {
            position_resolution: 10,
            max_position_cells: 10,
            ..ZoneSettings::default()
        };
        assert_eq!(check_cover(&[z], &settings).len(), 1);
    }

    #[test]
    fn registry_numbers_are_stable_and_membership_diffs() {
        let reg = ZoneRegistry::default();
        assert_eq!(reg.intern("b", ZoneKind::Named), 0);
        assert_eq!(reg.intern("a", ZoneKind::Named), 1);
        assert_eq!(reg.intern("b", ZoneKind::Named), 0);
        assert_eq!(reg.id(1), Some(("a".into(), ZoneKind::Named)));
        let old = Membership {
            segments: vec![(1, 0), (2, 0)],
            chargers: vec![(0, 0)],
            cells: vec![(7, 0), (9, 1)],
        };
        let new = Membership {
            segments: vec![(2, 0), (3, 1)],
            chargers: vec![(0, 0)],
            cells: vec![(8, 0), (9, 1)],
        };
        let (gone, added) = old.diff(&new);
        assert_eq!(gone.segments, vec![(1, 0)]);
        assert_eq!(added.segments, vec![(3, 1)]);
        assert!(gone.chargers.is_empty() && added.chargers.is_empty());
        assert_eq!((gone.cells, added.cells), (vec![(7, 0)], vec![(8, 0)]));
    }

    #[test]
    fn midpoint_is_halfway_along_the_line() {
        let m = midpoint(&[[0.0, 0.0], [0.0, 1.0], [0.0, 3.0]]).expect("a point");
        assert!((m[1] - 1.5).abs() < 1e-9);
        assert!(h3_cell([26.94, 60.53], 8).is_some_and(|c| c.len() == 15));
    }
}
