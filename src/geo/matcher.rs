//! Map matching: a vehicle report's position (and heading) to a road
//! segment.
//!
//! # The rule
//! Positions are projected onto a local plane in metres ([`Plane`]). Every
//! straight piece of every segment's polyline is in a grid index (`pieces.rs`).
//! For a report at `p` with heading `h`:
//!
//! 1. **Candidates** are the pieces within `radius_m` of `p` (default 25 m).
//! 2. When the report has a heading, a candidate whose direction of travel
//!    differs from it by more than `heading_tolerance_deg` is the other
//!    carriageway (or a crossing road) and is dropped.
//! 3. The nearest remaining candidate decides. Equal distances (to the
//!    millimetre) prefer a candidate the report is not beyond the end of
//!    (see 4), then the lowest segment id (the two directions of a two-way
//!    road without a heading), so the result never depends on index order.
//! 4. If the report lies *beyond an end* of that segment (before its first
//!    point or after its last, by more than `end_slack_m`), the vehicle is
//!    in a junction between segments (networks such as SUMO's cut edges
//!    where a junction begins): [`Unmatched::Junction`]. Otherwise it is on
//!    that segment.
//! 5. No candidate at all: [`Unmatched::WrongHeading`] if step 2 dropped
//!    some, else [`Unmatched::OffRoad`].
//!
//! An EV reporting `ev.charging = true` sits in a charging bay, not on the
//! road: it is [`Unmatched::Charging`] before any geometry is looked at
//! (see [`crate::resolve::resolve`]).

use super::pieces::{Piece, Pieces};

/// Map-matching settings (`[matching]` in the topology).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MatchSettings {
    /// Largest distance from a segment, metres.
    pub radius_m: f64,
    /// Largest difference between heading and direction of travel, degrees.
    pub heading_tolerance_deg: f64,
    /// How far beyond a segment's end a report may lie and still be on it.
    pub end_slack_m: f64,
}

impl Default for MatchSettings {
    fn default() -> Self {
        MatchSettings {
            radius_m: 25.0,
            heading_tolerance_deg: 45.0,
            end_slack_m: 0.0,
        }
    }
}

/// Why a vehicle report counts toward no segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Unmatched {
    /// A `segment_id` that is not in the road network.
    UnknownSegment,
    /// No segment within the matching radius.
    OffRoad,
    /// Between segments: beyond an end of the nearest segment.
    Junction,
    /// Near segments, but none in the direction the vehicle heads.
    WrongHeading,
    /// An EV charging in a bay.
    Charging,
}

impl Unmatched {
    /// Every reason, in counter order.
    pub const ALL: [Unmatched; 5] = [
        Unmatched::UnknownSegment,
        Unmatched::OffRoad,
        Unmatched::Junction,
        Unmatched::WrongHeading,
        Unmatched::Charging,
    ];

    /// Position in [`Unmatched::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Name used in summaries and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Unmatched::UnknownSegment => "unknown_segment",
            Unmatched::OffRoad => "off_road",
            Unmatched::Junction => "junction",
            Unmatched::WrongHeading => "wrong_heading",
            Unmatched::Charging => "charging",
        }
    }
}

/// A local equirectangular projection to metres around an origin: exact
/// enough at city scale (east-west distances 30 km north or south of the
/// origin are off by about `tan(latitude) × 30 / 6371`, 0.8 % at 60°N:
/// 0.2 m at the 25 m matching radius).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Plane {
    lat0: f64,
    lon0: f64,
    kx: f64,
    ky: f64,
}

/// Mean Earth radius, metres.
const EARTH_RADIUS_M: f64 = 6_371_008.8;

impl Plane {
    /// A plane around `[lon, lat]`.
    pub fn around(lon: f64, lat: f64) -> Self {
        let ky = EARTH_RADIUS_M * std::f64::consts::PI / 180.0;
        Plane {
            lat0: lat,
            lon0: lon,
            kx: ky * lat.to_radians().cos(),
            ky,
        }
    }

    /// A plane around the mean of the lines' points (the origin when
    /// there are none).
    pub fn of_lines<L: AsRef<[[f64; 2]]>>(lines: &[L]) -> Self {
        let (mut sx, mut sy, mut n) = (0.0, 0.0, 0.0);
        for p in lines.iter().flat_map(|l| l.as_ref()) {
            sx += p[0];
            sy += p[1];
            n += 1.0;
        }
        if n > 0.0 {
            Plane::around(sx / n, sy / n)
        } else {
            Plane::default()
        }
    }

    /// `(x east, y north)` in metres.
    #[inline]
    pub fn project(&self, lon: f64, lat: f64) -> [f64; 2] {
        [(lon - self.lon0) * self.kx, (lat - self.lat0) * self.ky]
    }

    /// Plane metres back to `[lon, lat]`.
    pub fn unproject(&self, p: [f64; 2]) -> [f64; 2] {
        [self.lon0 + p[0] / self.kx, self.lat0 + p[1] / self.ky]
    }
}

/// The spatial index over a road network.
#[derive(Clone, Debug, Default)]
pub struct Matcher {
    pieces: Pieces,
    settings: MatchSettings,
}

impl Matcher {
    /// Indexes the road network's lines (segment `i` is `lines[i]`).
    pub fn new<L: AsRef<[[f64; 2]]>>(lines: &[L], settings: MatchSettings) -> Self {
        Matcher {
            pieces: Pieces::new(lines, settings.radius_m),
            settings,
        }
    }

    /// Number of straight pieces indexed.
    pub fn pieces(&self) -> usize {
        self.pieces.len()
    }

    /// The settings in force.
    pub fn settings(&self) -> MatchSettings {
        self.settings
    }

    /// Matches a position (and heading, degrees clockwise from north) to a
    /// segment index, by the rule in the module doc.
    pub fn locate(&self, lon: f64, lat: f64, heading_deg: Option<f64>) -> Result<u32, Unmatched> {
        let mut search = Search::new(self, lon, lat, heading_deg);
        for piece in self.pieces.near(search.p) {
            search.consider(piece);
        }
        search.result()
    }

    /// The same rule over every piece, without the index: the baseline of
    /// `edgeflow bench-match` and the reference the tests hold
    /// [`Matcher::locate`] to.
    pub fn locate_exhaustive(
        &self,
        lon: f64,
        lat: f64,
        heading_deg: Option<f64>,
    ) -> Result<u32, Unmatched> {
        let mut search = Search::new(self, lon, lat, heading_deg);
        for piece in self.pieces.all() {
            search.consider(piece);
        }
        search.result()
    }
}

/// One report's search: the nearest acceptable candidate so far.
struct Search {
    p: [f64; 2],
    /// Heading as a unit vector (x east, y north).
    heading: Option<[f64; 2]>,
    /// The radius, squared.
    radius2: f64,
    min_cos: f64,
    slack: f64,
    /// The nearest candidate by (distance in whole millimetres, beyond its
    /// segment's end, segment index): a total order, so neither index order
    /// nor float noise picks the winner.
    best: Option<(u64, bool, u32)>,
    wrong_way: bool,
}

impl Search {
    fn new(m: &Matcher, lon: f64, lat: f64, heading_deg: Option<f64>) -> Self {
        Search {
            p: m.pieces.plane.project(lon, lat),
            heading: heading_deg.map(|h| {
                let h = h.to_radians();
                [h.sin(), h.cos()]
            }),
            radius2: m.settings.radius_m * m.settings.radius_m,
            min_cos: m.settings.heading_tolerance_deg.to_radians().cos(),
            slack: m.settings.end_slack_m,
            best: None,
            wrong_way: false,
        }
    }

    #[inline]
    fn consider(&mut self, piece: &Piece) {
        let (along, d2) = piece.project2(self.p);
        if d2 > self.radius2 {
            return;
        }
        let d = d2.sqrt();
        if self
            .heading
            .is_some_and(|h| h[0] * piece.dir[0] + h[1] * piece.dir[1] < self.min_cos)
        {
            self.wrong_way = true;
            return;
        }
        let beyond =
            (piece.first && along < -self.slack) || (piece.last && along > piece.len + self.slack);
        let key = ((d * 1000.0).round() as u64, beyond, piece.segment);
        if self.best.is_none_or(|b| key < b) {
            self.best = Some(key);
        }
    }

    fn result(&self) -> Result<u32, Unmatched> {
        match self.best {
            Some((_, false, segment)) => Ok(segment),
            Some((_, true, _)) => Err(Unmatched::Junction),
            None if self.wrong_way => Err(Unmatched::WrongHeading),
            None => Err(Unmatched::OffRoad),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Metres to degrees near (26.94, 60.53).
    fn at(x: f64, y: f64) -> [f64; 2] {
        let plane = Plane::around(26.94, 60.53);
        [26.94 + x / plane.kx, 60.53 + y / plane.ky]
    }

    /// A segment's line (its id only names it in the test).
    fn road(_id: &str, pts: &[(f64, f64)]) -> Vec<[f64; 2]> {
        pts.iter().map(|&(x, y)| at(x, y)).collect()
    }

    fn matcher() -> Matcher {
        // An east-west two-way road (two segments, same line), then a
        // junction at x = 100..110 and a road going on east; a road far north.
        Matcher::new(
            &[
                road("a-east", &[(0.0, 0.0), (50.0, 0.0), (100.0, 0.0)]),
                road("b-west", &[(100.0, 0.0), (0.0, 0.0)]),
                road("c-east", &[(110.0, 0.0), (200.0, 0.0)]),
                road("d-north", &[(0.0, 500.0), (0.0, 600.0)]),
            ],
            MatchSettings::default(),
        )
    }

    fn locate(m: &Matcher, x: f64, y: f64, h: Option<f64>) -> Result<u32, Unmatched> {
        let p = at(x, y);
        m.locate(p[0], p[1], h)
    }

    #[test]
    fn heading_picks_the_carriageway() {
        let m = matcher();
        assert_eq!(locate(&m, 40.0, 3.0, Some(90.0)), Ok(0));
        assert_eq!(locate(&m, 40.0, 3.0, Some(270.0)), Ok(1));
        assert_eq!(
            locate(&m, 40.0, 3.0, Some(100.0)),
            Ok(0),
            "within tolerance"
        );
        assert_eq!(locate(&m, 40.0, 3.0, None), Ok(0), "tie: lowest id");
        assert_eq!(
            locate(&m, 40.0, 3.0, Some(0.0)),
            Err(Unmatched::WrongHeading)
        );
    }

    #[test]
    fn junctions_and_far_reports_are_unmatched() {
        let m = matcher();
        assert_eq!(locate(&m, 105.0, 0.0, Some(90.0)), Err(Unmatched::Junction));
        assert_eq!(locate(&m, 100.5, 0.0, Some(90.0)), Err(Unmatched::Junction));
        let lenient = Matcher::new(
            &[road("a-east", &[(0.0, 0.0), (100.0, 0.0)])],
            MatchSettings {
                end_slack_m: 1.0,
                ..MatchSettings::default()
            },
        );
        assert_eq!(
            locate(&lenient, 100.5, 0.0, Some(90.0)),
            Ok(0),
            "within the end slack"
        );
        assert_eq!(locate(&m, 111.0, 0.5, Some(90.0)), Ok(2));
        assert_eq!(locate(&m, 50.0, 30.0, Some(90.0)), Err(Unmatched::OffRoad));
        assert_eq!(locate(&m, 1000.0, 1000.0, None), Err(Unmatched::OffRoad));
        assert_eq!(locate(&m, 2.0, 550.0, Some(0.0)), Ok(3));
    }

    #[test]
    fn repeated_end_points_do_not_hide_a_segments_ends() {
        let m = Matcher::new(
            &[road(
                "a-east",
                &[
                    (0.0, 0.0),
                    (0.0, 0.0),
                    (50.0, 0.0),
                    (100.0, 0.0),
                    (100.0, 0.0),
                ],
            )],
            MatchSettings::default(),
        );
        assert_eq!(locate(&m, 110.0, 0.0, Some(90.0)), Err(Unmatched::Junction));
        assert_eq!(locate(&m, -10.0, 0.0, Some(90.0)), Err(Unmatched::Junction));
        assert_eq!(locate(&m, 75.0, 1.0, Some(90.0)), Ok(0));
    }
}
