//! A dense synthetic city centre for tests and `bench-match`: a grid of
//! two-way streets whose carriageways are separate segments
//! [`GridSettings::separation_m`] apart, short blocks, junction boxes
//! between segment ends (as SUMO cuts its edges), vehicles driven on it,
//! and Gaussian GNSS noise on their fixes. Seeded: the same settings and
//! seed give the same city and the same drives on every machine.
//!
//! Also the scores both use: the share of fixes on the true segment, and
//! the share of (segment, window) pairs whose mean speed stays within
//! max(0.5 m/s, 10 %) of the truth (the noisy recording's README).

use std::collections::BTreeMap;

use super::{Decision, Fix};

/// Mean Earth radius, metres (as [`crate::geo::matcher::Plane`]).
const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// The shape of the synthetic grid.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GridSettings {
    /// Junctions west to east.
    pub columns: usize,
    /// Junctions south to north.
    pub rows: usize,
    /// Shortest block, metres.
    pub block_min_m: f64,
    /// Longest block, metres.
    pub block_max_m: f64,
    /// Distance between a street's two carriageways, metres.
    pub separation_m: f64,
    /// Half the side of a junction box: segments stop this far from the
    /// junction's centre, metres.
    pub junction_half_m: f64,
    /// Origin `[lon, lat]` of the south-west junction.
    pub origin: [f64; 2],
}

impl Default for GridSettings {
    fn default() -> Self {
        GridSettings {
            columns: 8,
            rows: 8,
            block_min_m: 80.0,
            block_max_m: 120.0,
            separation_m: 15.0,
            junction_half_m: 9.0,
            origin: [24.94, 60.17],
        }
    }
}

/// A synthetic road network.
#[derive(Clone, Debug)]
pub struct Grid {
    /// Segment `i`'s line, `[lon, lat]`.
    pub lines: Vec<Vec<[f64; 2]>>,
    /// Segment `i`'s ends in metres (x east, y north of the origin).
    ends: Vec<([f64; 2], [f64; 2])>,
    /// Segments a vehicle may take after segment `i` (no U-turn unless
    /// there is nothing else).
    next: Vec<Vec<u32>>,
    origin: [f64; 2],
}

/// A generated fix with its truth.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// The vehicle.
    pub vehicle: u32,
    /// The noisy fix.
    pub fix: Fix,
    /// The vehicle's true speed, m/s.
    pub speed_mps: f64,
    /// The segment it was on (`None` in a junction box).
    pub truth: Option<u32>,
}

/// Deterministic generator (SplitMix64) with a Gaussian.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
    /// N(0, 1) by Box-Muller.
    fn gauss(&mut self) -> f64 {
        let u = self.unit().max(1e-300);
        let v = self.unit();
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

impl Grid {
    /// Builds the grid by `s`, block lengths drawn from `seed`.
    pub fn new(s: &GridSettings, seed: u64) -> Self {
        let mut rng = Rng(seed);
        let mut axis = |n: usize| {
            let mut v = vec![0.0];
            for _ in 1..n.max(1) {
                let last = *v.last().unwrap_or(&0.0);
                v.push(last + rng.range(s.block_min_m, s.block_max_m));
            }
            v
        };
        let xs = axis(s.columns);
        let ys = axis(s.rows);
        let (h, w) = (s.junction_half_m, s.separation_m / 2.0);
        let mut ends = Vec::new();
        for &y in &ys {
            for x in xs.windows(2) {
                ends.push(([x[0] + h, y - w], [x[1] - h, y - w])); // east
                ends.push(([x[1] - h, y + w], [x[0] + h, y + w])); // west
            }
        }
        for &x in &xs {
            for y in ys.windows(2) {
                ends.push(([x + w, y[0] + h], [x + w, y[1] - h])); // north
                ends.push(([x - w, y[1] - h], [x - w, y[0] + h])); // south
            }
        }
        let reach = 2.0 * h + s.separation_m;
        let dir = |e: &([f64; 2], [f64; 2])| {
            let d = [e.1[0] - e.0[0], e.1[1] - e.0[1]];
            let l = (d[0] * d[0] + d[1] * d[1]).sqrt().max(1e-9);
            [d[0] / l, d[1] / l]
        };
        let mut next = Vec::with_capacity(ends.len());
        for a in &ends {
            let da = dir(a);
            let near: Vec<u32> = (0..ends.len() as u32)
                .filter(|&b| {
                    let s = ends[b as usize].0;
                    ((s[0] - a.1[0]).powi(2) + (s[1] - a.1[1]).powi(2)).sqrt() <= reach
                })
                .collect();
            let turns: Vec<u32> = near
                .iter()
                .copied()
                .filter(|&b| {
                    let db = dir(&ends[b as usize]);
                    da[0] * db[0] + da[1] * db[1] > -0.9
                })
                .collect();
            next.push(if turns.is_empty() { near } else { turns });
        }
        let origin = s.origin;
        let mut grid = Grid {
            lines: Vec::new(),
            ends,
            next,
            origin,
        };
        grid.lines = grid
            .ends
            .iter()
            .map(|e| vec![grid.lonlat(e.0), grid.lonlat(e.1)])
            .collect();
        grid
    }

    /// Plane metres to `[lon, lat]`.
    fn lonlat(&self, p: [f64; 2]) -> [f64; 2] {
        let ky = EARTH_RADIUS_M * std::f64::consts::PI / 180.0;
        let kx = ky * self.origin[1].to_radians().cos();
        [self.origin[0] + p[0] / kx, self.origin[1] + p[1] / ky]
    }

    /// `vehicles` vehicles driven for `fixes` fixes each, one every
    /// `period_ms` from a random phase, speeds drawn per segment from 4 to
    /// 14 m/s, positions with N(0, `sigma_m`) noise per axis and headings
    /// with N(0, 10°): each vehicle's samples in time order.
    pub fn drive(
        &self,
        vehicles: u32,
        fixes: usize,
        period_ms: u64,
        sigma_m: f64,
        seed: u64,
    ) -> Vec<Vec<Sample>> {
        let mut rng = Rng(seed ^ 0x5EED);
        let mut out = Vec::with_capacity(vehicles as usize);
        if self.ends.is_empty() {
            return out;
        }
        let t0 = 1_767_258_000_000u64;
        for vehicle in 0..vehicles {
            let mut seg = rng.below(self.ends.len());
            // Along the current piece: a segment, or the junction link to
            // `link` (Some) after it.
            let mut link: Option<usize> = None;
            let mut at = rng.range(0.0, self.length(seg));
            let mut speed = rng.range(4.0, 14.0);
            let mut ts = t0 + rng.below(period_ms as usize) as u64;
            let mut samples = Vec::with_capacity(fixes);
            for _ in 0..fixes {
                let (a, b) = match link {
                    None => self.ends[seg],
                    Some(t) => (self.ends[seg].1, self.ends[t].0),
                };
                let len = dist(a, b).max(1e-9);
                let u = [(b[0] - a[0]) / len, (b[1] - a[1]) / len];
                let p = [a[0] + u[0] * at, a[1] + u[1] * at];
                let noisy = [p[0] + sigma_m * rng.gauss(), p[1] + sigma_m * rng.gauss()];
                let ll = self.lonlat(noisy);
                let heading =
                    (u[0].atan2(u[1]).to_degrees() + 10.0 * rng.gauss()).rem_euclid(360.0);
                samples.push(Sample {
                    vehicle,
                    fix: Fix {
                        ts_ms: ts,
                        lon: ll[0],
                        lat: ll[1],
                        heading_deg: Some(heading),
                    },
                    speed_mps: speed,
                    truth: link.is_none().then_some(seg as u32),
                });
                // Move on.
                ts += period_ms;
                at += speed * period_ms as f64 / 1000.0;
                loop {
                    let len = match link {
                        None => self.length(seg),
                        Some(t) => dist(self.ends[seg].1, self.ends[t].0),
                    };
                    if at < len {
                        break;
                    }
                    at -= len;
                    match link {
                        None => {
                            let options = &self.next[seg];
                            if options.is_empty() {
                                at = 0.0;
                                break;
                            }
                            link = Some(options[rng.below(options.len())] as usize);
                        }
                        Some(t) => {
                            seg = t;
                            link = None;
                            speed = rng.range(4.0, 14.0);
                        }
                    }
                }
            }
            out.push(samples);
        }
        out
    }

    fn length(&self, seg: usize) -> f64 {
        dist(self.ends[seg].0, self.ends[seg].1)
    }
}

fn dist(a: [f64; 2], b: [f64; 2]) -> f64 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt()
}

/// Mean speed and sample count per (segment, window start).
pub type Speeds = BTreeMap<(u32, u64), (u32, f64)>;

/// Mean speeds of `(segment, event time, speed)` items in windows of
/// `window_ms`.
pub fn mean_speeds(items: impl IntoIterator<Item = (u32, u64, f64)>, window_ms: u64) -> Speeds {
    let mut sums: BTreeMap<(u32, u64), (u32, f64)> = BTreeMap::new();
    for (seg, ts, v) in items {
        let w = ts - ts % window_ms.max(1);
        let e = sums.entry((seg, w)).or_insert((0, 0.0));
        e.0 += 1;
        e.1 += v;
    }
    for e in sums.values_mut() {
        e.1 /= f64::from(e.0);
    }
    sums
}

/// Of the expected pairs with at least `min_samples`, how many, and how
/// many `got` has within max(0.5 m/s, 10 %) of the expected mean speed.
pub fn pairs_within(expected: &Speeds, got: &Speeds, min_samples: u32) -> (usize, usize) {
    let (mut pairs, mut within) = (0, 0);
    for (key, &(n, v)) in expected {
        if n < min_samples {
            continue;
        }
        pairs += 1;
        if let Some(&(_, g)) = got.get(key) {
            if (g - v).abs() <= (0.1 * v).max(0.5) {
                within += 1;
            }
        }
    }
    (pairs, within)
}

/// Scores of decisions against samples' truth.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Score {
    /// Fixes truly on a segment.
    pub on_segment: usize,
    /// Of them, decided on that segment.
    pub right_segment: usize,
    /// Fixes truly in a junction box.
    pub in_junction: usize,
    /// Of them, decided on no segment.
    pub junction_unmatched: usize,
    /// (segment, window) pairs of the truth with >= 10 samples.
    pub pairs: usize,
    /// Of them, within max(0.5 m/s, 10 %) of the truth's mean speed.
    pub pairs_within: usize,
}

impl Score {
    /// `right_segment / on_segment`.
    pub fn segment_share(&self) -> f64 {
        self.right_segment as f64 / self.on_segment.max(1) as f64
    }
    /// `pairs_within / pairs`.
    pub fn pair_share(&self) -> f64 {
        self.pairs_within as f64 / self.pairs.max(1) as f64
    }
}

/// Scores `decided[v]` (one result per sample of vehicle `v`, in order)
/// against the samples, with windows of `window_ms`.
pub fn score(
    samples: &[Vec<Sample>],
    decided: &[Vec<Result<u32, super::Reason>>],
    window_ms: u64,
) -> Score {
    let mut s = Score::default();
    let (mut truth, mut got) = (Vec::new(), Vec::new());
    for (vs, ds) in samples.iter().zip(decided) {
        for (x, d) in vs.iter().zip(ds) {
            match x.truth {
                Some(t) => {
                    s.on_segment += 1;
                    s.right_segment += usize::from(*d == Ok(t));
                    truth.push((t, x.fix.ts_ms, x.speed_mps));
                }
                None => {
                    s.in_junction += 1;
                    s.junction_unmatched += usize::from(d.is_err());
                }
            }
            if let Ok(seg) = d {
                got.push((*seg, x.fix.ts_ms, x.speed_mps));
            }
        }
    }
    let (pairs, within) = pairs_within(
        &mean_speeds(truth, window_ms),
        &mean_speeds(got, window_ms),
        10,
    );
    s.pairs = pairs;
    s.pairs_within = within;
    s
}

/// The results of `decisions` in fix order (a helper for [`score`]).
pub fn results(decisions: &[Decision]) -> Vec<Result<u32, super::Reason>> {
    let mut d: Vec<&Decision> = decisions.iter().collect();
    d.sort_by_key(|d| d.index);
    d.iter().map(|d| d.result).collect()
}
