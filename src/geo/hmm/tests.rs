//! Tests of the HMM matcher.
//!
//! Strategy: the route table against a brute-force Dijkstra over the
//! segments' own end points (no node clustering, no table); the
//! incremental [`Track`] against [`match_all`] (the from-scratch decoder)
//! on seeded random drives with noise, off-road fixes, teleports, gaps,
//! equal times, every lag, and clones taken mid-way; a teleport breaks the
//! trajectory instead of dragging it; accuracy on the dense synthetic grid
//! stays above what was measured, with a margin.

use proptest::prelude::*;

use super::synthetic::{results, score, Grid, GridSettings, Sample};
use super::*;

/// Metres around (26.94, 60.53) to `[lon, lat]`.
fn at(x: f64, y: f64) -> [f64; 2] {
    let ky = 6_371_008.8 * std::f64::consts::PI / 180.0;
    let kx = ky * 60.53f64.to_radians().cos();
    [26.94 + x / kx, 60.53 + y / ky]
}

struct Rng(u64);
impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Brute force: Dijkstra over the 2n end points, O(V²), with segment
/// edges, zero-cost edges between points within `snap` and junction
/// edges from an end to a start within `link`.
fn brute(lines: &[Vec<[f64; 2]>], snap: f64, link: f64, from: usize) -> Vec<f64> {
    let n = lines.len();
    let len = |l: &Vec<[f64; 2]>| {
        l.windows(2)
            .map(|w| ((w[1][0] - w[0][0]).powi(2) + (w[1][1] - w[0][1]).powi(2)).sqrt())
            .sum::<f64>()
    };
    // Point 2i is segment i's start, 2i + 1 its end.
    let pt = |p: usize| {
        let l = &lines[p / 2];
        if p.is_multiple_of(2) {
            l[0]
        } else {
            l[l.len() - 1]
        }
    };
    let d = |a: [f64; 2], b: [f64; 2]| ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt();
    let mut best = vec![f64::INFINITY; 2 * n];
    let mut done = vec![false; 2 * n];
    best[from] = 0.0;
    while let Some(u) = (0..2 * n)
        .filter(|&i| !done[i] && best[i].is_finite())
        .min_by(|&a, &b| best[a].total_cmp(&best[b]))
    {
        done[u] = true;
        for v in 0..2 * n {
            let mut w = f64::INFINITY;
            if d(pt(u), pt(v)) <= snap {
                w = 0.0;
            }
            if u % 2 == 0 && v == u + 1 {
                w = w.min(len(&lines[u / 2]));
            }
            if u % 2 == 1 && v % 2 == 0 && d(pt(u), pt(v)) <= link {
                w = w.min(d(pt(u), pt(v)));
            }
            if best[u] + w < best[v] {
                best[v] = best[u] + w;
            }
        }
    }
    best
}

#[test]
fn table_distances_equal_brute_force_dijkstra() {
    let mut rng = Rng(7);
    for round in 0..20 {
        // Junction points on a coarse lattice so ends coincide or nearly.
        let mut junctions = Vec::new();
        for _ in 0..8 {
            junctions.push([
                (rng.unit() * 6.0).floor() * 60.0,
                (rng.unit() * 6.0).floor() * 60.0,
            ]);
        }
        let mut plane_lines = Vec::new();
        for _ in 0..14 {
            let a = junctions[(rng.unit() * 8.0) as usize];
            let b = junctions[(rng.unit() * 8.0) as usize];
            let jitter = |rng: &mut Rng, p: [f64; 2]| {
                let k = rng.unit();
                // Mostly exact, sometimes within snap, sometimes a junction gap.
                let off = if k < 0.5 {
                    0.0
                } else if k < 0.7 {
                    0.3
                } else {
                    8.0
                };
                [p[0] + off * rng.unit(), p[1] + off * rng.unit()]
            };
            let mid = [(a[0] + b[0]) / 2.0 + 20.0 * rng.unit(), (a[1] + b[1]) / 2.0];
            plane_lines.push(vec![jitter(&mut rng, a), mid, jitter(&mut rng, b)]);
        }
        let settings = HmmSettings {
            table_bound_m: 400.0,
            ..HmmSettings::default()
        };
        let lines: Vec<Vec<[f64; 2]>> = plane_lines
            .iter()
            .map(|l| l.iter().map(|p| at(p[0], p[1])).collect())
            .collect();
        let hmm = Hmm::new(&lines, settings).expect("builds");
        // Brute force in the network's own plane (the same projection).
        let net = hmm.network();
        let projected: Vec<Vec<[f64; 2]>> = lines
            .iter()
            .map(|l| l.iter().map(|p| net.project(p[0], p[1])).collect())
            .collect();
        for a in 0..lines.len() {
            let dist = brute(
                &projected,
                settings.node_snap_m,
                settings.junction_link_m,
                2 * a + 1,
            );
            for b in 0..lines.len() {
                let (_, end) = net.segment_nodes(a as u32).expect("a");
                let (start, _) = net.segment_nodes(b as u32).expect("b");
                let want = dist[2 * b];
                let got = hmm.table().get(end, start);
                if (want - settings.table_bound_m).abs() < 1e-3 {
                    continue;
                }
                match got {
                    Some(g) => assert!(
                        (g - want).abs() < 1e-3,
                        "round {round}: {a} -> {b}: table {g}, brute {want}"
                    ),
                    None => assert!(
                        want > settings.table_bound_m,
                        "round {round}: {a} -> {b}: missing, brute {want}"
                    ),
                }
            }
        }
    }
}

fn grid_hmm(settings: HmmSettings) -> (Grid, Hmm) {
    let grid = Grid::new(
        &GridSettings {
            columns: 6,
            rows: 6,
            ..GridSettings::default()
        },
        3,
    );
    let hmm = Hmm::new(&grid.lines, settings).expect("grid builds");
    (grid, hmm)
}

fn fixes(samples: &[Sample]) -> Vec<Fix> {
    samples.iter().map(|s| s.fix).collect()
}

fn run_track(hmm: &Hmm, fixes: &[Fix]) -> Vec<Decision> {
    let mut track = Track::new();
    let mut out = Vec::new();
    for f in fixes {
        track.push(hmm, f, &mut out).expect("in order");
    }
    track.finish(hmm, &mut out);
    out
}

#[test]
fn a_teleport_breaks_the_trajectory_instead_of_dragging_it() {
    let (grid, hmm) = grid_hmm(HmmSettings::default());
    let drives = grid.drive(20, 40, 2000, 0.0, 11);
    let mut checked = 0;
    for samples in &drives {
        let mut f = fixes(samples);
        let k = 20;
        // One bad fix 500 m away (north-east), then the vehicle goes on.
        let ky = 6_371_008.8 * std::f64::consts::PI / 180.0;
        let kx = ky * f[k].lat.to_radians().cos();
        f[k].lon += 400.0 / kx;
        f[k].lat += 300.0 / ky;
        let d = match_all(&hmm, &f).expect("ordered");
        assert_eq!(d, run_track(&hmm, &f));
        let clean = match_all(&hmm, &fixes(samples)).expect("ordered");
        assert!(
            matches!(d[k].result, Err(Reason::Outlier) | Err(Reason::OffRoad)),
            "the bad fix is unmatched: {:?}",
            d[k]
        );
        // Its neighbours decide as without it, but for the lag's view:
        // the fixes before it lose the look-ahead the bad fix replaced.
        for i in (0..k - 3).chain(k + 3..f.len()) {
            assert_eq!(d[i].result, clean[i].result, "fix {i}");
        }
        checked += 1;
    }
    assert_eq!(checked, 20);
}

#[test]
fn a_vehicle_that_really_jumps_starts_a_new_trajectory() {
    let (grid, hmm) = grid_hmm(HmmSettings::default());
    let drives = grid.drive(2, 30, 2000, 0.0, 5);
    // Vehicle 0's first half, then vehicle 1's second half with the times
    // going on: a jump across town.
    let mut f = fixes(&drives[0][..15]);
    let shift = f[14].ts_ms + 2000 - drives[1][15].fix.ts_ms;
    f.extend(drives[1][15..].iter().map(|s| Fix {
        ts_ms: s.fix.ts_ms + shift,
        ..s.fix
    }));
    let d = match_all(&hmm, &f).expect("ordered");
    let truth: Vec<Option<u32>> = drives[0][..15]
        .iter()
        .chain(&drives[1][15..])
        .map(|s| s.truth)
        .collect();
    for (i, (d, t)) in d.iter().zip(&truth).enumerate() {
        if let Some(t) = t {
            assert_eq!(d.result, Ok(*t), "fix {i}");
        }
    }
}

#[test]
fn route_distances_on_one_road() {
    // Two segments in a row (a junction gap of 10 m), and the way back.
    let lines = vec![
        vec![at(0.0, 0.0), at(100.0, 0.0)],
        vec![at(110.0, 0.0), at(200.0, 0.0)],
        vec![at(200.0, 3.0), at(110.0, 3.0)],
    ];
    let hmm = Hmm::new(&lines, HmmSettings::default()).expect("builds");
    let (_, end0) = hmm.network().segment_nodes(0).expect("0");
    let (start1, end1) = hmm.network().segment_nodes(1).expect("1");
    let (start2, _) = hmm.network().segment_nodes(2).expect("2");
    assert!((hmm.table().get(end0, start1).expect("on") - 10.0).abs() < 1e-3);
    assert!((hmm.table().get(end1, start2).expect("u-turn") - 3.0).abs() < 1e-3);
    assert_eq!(hmm.table().get(start2, end0), None, "no way back west");
    // A drive east along it, clean: every fix on its segment, the junction
    // gap unmatched.
    let f: Vec<Fix> = (0..20)
        .map(|i| {
            let p = at(5.0 + 10.0 * f64::from(i), 0.5);
            Fix {
                ts_ms: 1000 * u64::from(i as u32),
                lon: p[0],
                lat: p[1],
                heading_deg: Some(90.0),
            }
        })
        .collect();
    let d = match_all(&hmm, &f).expect("ordered");
    for (i, d) in d.iter().enumerate() {
        let x = 5.0 + 10.0 * i as f64;
        let want = if x < 100.0 {
            Ok(0)
        } else if x < 110.0 {
            Err(Reason::Junction)
        } else {
            Ok(1)
        };
        assert_eq!(d.result, want, "fix at x = {x}");
    }
}

#[test]
fn out_of_order_fixes_are_refused() {
    let (grid, hmm) = grid_hmm(HmmSettings::default());
    let f = fixes(&grid.drive(1, 3, 2000, 0.0, 1)[0]);
    let mut track = Track::new();
    let mut out = Vec::new();
    track.push(&hmm, &f[1], &mut out).expect("first");
    assert_eq!(
        track.push(&hmm, &f[0], &mut out),
        Err(HmmError::OutOfOrder { ts_ms: f[0].ts_ms })
    );
    assert!(match_all(&hmm, &[f[1], f[0]]).is_err());
}

/// Segment share on the 8 × 8 grid at `sigma` (30 vehicles, 60 fixes).
fn grid_accuracy(sigma: f64) -> (f64, f64) {
    let grid = Grid::new(&GridSettings::default(), 21);
    let hmm = Hmm::new(
        &grid.lines,
        HmmSettings {
            sigma_m: sigma.max(1.0),
            ..HmmSettings::default()
        },
    )
    .expect("builds");
    let drives = grid.drive(30, 60, 2000, sigma, 99);
    let decided: Vec<_> = drives
        .iter()
        .map(|s| results(&match_all(&hmm, &fixes(s)).expect("ordered")))
        .collect();
    let s = score(&drives, &decided, 60_000);
    let junction = s.junction_unmatched as f64 / s.in_junction.max(1) as f64;
    (s.segment_share(), junction)
}

#[test]
fn accuracy_on_the_dense_grid() {
    let (at10, _) = grid_accuracy(10.0);
    assert!(at10 >= 0.92, "sigma 10 m: {at10}");
}

#[test]
fn the_noise_a_fleet_shows_is_estimated_from_its_fixes() {
    let grid = Grid::new(&GridSettings::default(), 21);
    let hmm = Hmm::new(&grid.lines, HmmSettings::for_sigma(20.0)).expect("builds");
    // Where carriageways run 15 m apart the estimate is low (a fix is
    // often nearer the other one), but it tracks the noise.
    let mut last = 0.0;
    for sigma in [0.0, 2.0, 5.0, 10.0] {
        let drives = grid.drive(20, 60, 2000, sigma, 7);
        let all: Vec<Fix> = drives.iter().flat_map(|s| fixes(s)).collect();
        let est = hmm.estimate_sigma(&all).expect("fixes near roads");
        assert!(est <= sigma * 1.1 + 0.5, "sigma {sigma}: estimated {est}");
        assert!(est >= sigma * 0.6, "sigma {sigma}: estimated {est}");
        assert!(est > last || sigma == 0.0, "grows with the noise");
        last = est;
    }
    assert_eq!(hmm.estimate_sigma(&[]), None);
}

fn arb_case() -> impl Strategy<Value = (u64, f64, u64, Vec<(u8, u8)>, u64)> {
    (
        0u64..1000,
        0.0f64..25.0,
        prop_oneof![Just(0u64), 0u64..12_000, Just(60_000)],
        proptest::collection::vec((0u8..40, 0u8..5), 0..6),
        prop_oneof![Just(1u64), Just(2000), Just(4000)],
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Track fed in order, with clones taken and continued at random
    /// points, decides exactly what match_all decides, for every lag.
    #[test]
    fn track_equals_match_all((seed, sigma, lag, edits, coarse) in arb_case()) {
        let (grid, hmm) = grid_hmm(HmmSettings { lag_ms: lag, ..HmmSettings::default() });
        let samples = &grid.drive(1, 40, 2000, sigma, seed)[0];
        let mut f = fixes(samples);
        for (i, kind) in edits {
            let i = usize::from(i) % f.len();
            let ky = 6_371_008.8 * std::f64::consts::PI / 180.0;
            match kind {
                0 => f[i].lat += 500.0 / ky,            // teleport
                1 => f[i].lat += 5000.0 / ky,           // off the map
                2 => for g in &mut f[i..] { g.ts_ms += 45_000 }, // a gap
                3 => f[i].heading_deg = None,
                _ => { let g = f[i]; f.insert(i, g); }  // a duplicate
            }
        }
        // Coarse times make ties, broken by the order key.
        for g in &mut f { g.ts_ms -= g.ts_ms % coarse; }
        sort_fixes(&mut f);
        let want = match_all(&hmm, &f).expect("sorted");
        let mut rng = Rng(seed);
        let mut track = Track::new();
        let mut got = Vec::new();
        for g in &f {
            if rng.unit() < 0.3 {
                track = track.clone();
            }
            track.push(&hmm, g, &mut got).expect("sorted");
            prop_assert!(track.undecided() <= f.len());
        }
        track.finish(&hmm, &mut got);
        prop_assert_eq!(got, want);
    }
}
