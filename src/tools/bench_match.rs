//! `edgeflow bench-match`: map matching on a topology's road network, one
//! core: today's point matcher and the HMM ([`crate::geo::hmm`]), their
//! speed and their accuracy.
//!
//! **Point matcher speed.** Reports are generated on the network itself: a
//! random point of a random segment, moved up to `noise_m` metres in each
//! axis (GNSS error), with the segment's direction of travel ± 10° as
//! heading. Each run matches all of them with [`Matcher::locate`] on one
//! thread; the baseline is the same rule without the R-tree
//! ([`Matcher::locate_exhaustive`]) on a sample, measured in the same run.
//! The share of reports placed on the segment they were generated on is
//! reported too (points near junctions and crossings make it less than 1).
//!
//! **Accuracy on recordings** (`--recording`, any number, JSON Lines,
//! gzipped or not, with `--expected`, the expected congestion table): each
//! recording's vehicle reports are grouped by vehicle and sorted by
//! [`Fix::order_key`]; both methods match them from position and heading
//! alone (a `segment_id` in the file is ignored; an EV charging in a bay
//! counts toward no segment, as in [`crate::resolve::resolve`]); mean speeds
//! per (segment, window of the topology) are computed here, without the
//! dataflow, and scored as the noisy recording's README says: the share of
//! expected (segment, window) pairs with >= 10 samples whose mean speed is
//! within max(0.5 m/s, 10 %). Each method's speed on the recording
//! (reports/s, one core, median of `runs`) is measured on the same reports.
//!
//! **Accuracy on a dense synthetic centre** (`--synthetic-vehicles` > 0):
//! [`crate::geo::hmm::synthetic`]'s grid at σ = 10 and 20 m (the HMM's
//! `sigma_m` set to it, its radius to at least 4 σ), scored as the
//! share of fixes on a segment decided on their true segment, and as pairs
//! within tolerance.

use std::time::Instant;

use serde_json::json;

use super::measure::{median, SplitMix};
use crate::geo::hmm::synthetic::{self, Grid, GridSettings};
use crate::geo::hmm::{self, Fix, Hmm, HmmSettings, Track};
use crate::geo::{MatchSettings, Matcher};
use crate::reference::Reference;

/// Options of `edgeflow bench-match`.
#[derive(Debug, Clone, clap::Args)]
pub struct MatchBenchArgs {
    /// Topology whose road network is matched against.
    #[arg(long, default_value = "topologies/karhula.toml")]
    pub topology: std::path::PathBuf,
    /// Reports per run.
    #[arg(long, default_value_t = 2_000_000)]
    pub reports: usize,
    /// Measured runs (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Position noise, metres (uniform in ± this, per axis).
    #[arg(long, default_value_t = 3.0)]
    pub noise_m: f64,
    /// Reports the exhaustive baseline matches per run.
    #[arg(long, default_value_t = 20_000)]
    pub baseline_reports: usize,
    /// A recording (JSON Lines, `.gz` or plain) whose accuracy and speed
    /// both methods are measured on; repeatable.
    #[arg(long = "recording")]
    pub recordings: Vec<std::path::PathBuf>,
    /// The expected congestion table the recordings are scored against
    /// (CSV of TELEMETRY.md §4); required with --recording.
    #[arg(long)]
    pub expected: Option<std::path::PathBuf>,
    /// Vehicles driven on the dense synthetic grid (0: skip it).
    #[arg(long, default_value_t = 300)]
    pub synthetic_vehicles: u32,
    /// Fixes per synthetic vehicle (one every 2 s).
    #[arg(long, default_value_t = 300)]
    pub synthetic_fixes: usize,
    /// HMM: GNSS noise sigma, metres.
    #[arg(long)]
    pub sigma_m: Option<f64>,
    /// HMM: transition scale beta, metres.
    #[arg(long)]
    pub beta_m: Option<f64>,
    /// HMM: candidate radius, metres.
    #[arg(long)]
    pub radius_m: Option<f64>,
    /// HMM: candidates per fix.
    #[arg(long)]
    pub candidates: Option<usize>,
    /// HMM: fixed lag, milliseconds.
    #[arg(long)]
    pub lag_ms: Option<u64>,
    /// HMM: heading noise sigma, degrees (0: headings ignored).
    #[arg(long)]
    pub heading_sigma_deg: Option<f64>,
    /// HMM: backward movement on a segment taken as noise, metres.
    #[arg(long)]
    pub backward_tolerance_m: Option<f64>,
    /// HMM: candidates less likely than the best by more than this
    /// (log-likelihood) are dropped.
    #[arg(long)]
    pub emission_margin: Option<f64>,
    /// HMM: junction link length, metres.
    #[arg(long)]
    pub junction_link_m: Option<f64>,
    /// HMM: route table bound, metres.
    #[arg(long)]
    pub table_bound_m: Option<f64>,
    /// HMM: smoothing acceleration noise, m/s² (0: no smoothing).
    #[arg(long)]
    pub accel_mps2: Option<f64>,
    /// HMM: how far beyond a segment's end a fix may lie and be on it, metres.
    #[arg(long)]
    pub end_slack_m: Option<f64>,
}

impl MatchBenchArgs {
    /// The HMM settings: the defaults, with the flags given.
    pub fn hmm_settings(&self) -> HmmSettings {
        let d = self
            .sigma_m
            .map_or_else(HmmSettings::default, HmmSettings::for_sigma);
        HmmSettings {
            sigma_m: self.sigma_m.unwrap_or(d.sigma_m),
            beta_m: self.beta_m.unwrap_or(d.beta_m),
            radius_m: self.radius_m.unwrap_or(d.radius_m),
            max_candidates: self.candidates.unwrap_or(d.max_candidates),
            lag_ms: self.lag_ms.unwrap_or(d.lag_ms),
            heading_sigma_deg: self.heading_sigma_deg.unwrap_or(d.heading_sigma_deg),
            backward_tolerance_m: self.backward_tolerance_m.unwrap_or(d.backward_tolerance_m),
            junction_link_m: self.junction_link_m.unwrap_or(d.junction_link_m),
            emission_margin: self.emission_margin.unwrap_or(d.emission_margin),
            table_bound_m: self.table_bound_m.unwrap_or(d.table_bound_m),
            accel_mps2: self.accel_mps2.unwrap_or(d.accel_mps2),
            end_slack_m: self.end_slack_m.unwrap_or(d.end_slack_m),
            ..d
        }
    }
}

/// A generated report: position, heading, and the segment it came from.
#[derive(Clone, Copy, Debug)]
pub struct Probe {
    /// Longitude.
    pub lon: f64,
    /// Latitude.
    pub lat: f64,
    /// Heading, degrees.
    pub heading: f64,
    /// Generating segment.
    pub segment: u32,
}

/// `n` reports on the road network of `reference`, reproducibly from `seed`.
pub fn probes(reference: &Reference, n: usize, noise_m: f64, seed: u64) -> Vec<Probe> {
    let mut rng = SplitMix(seed);
    let roads: Vec<(u32, &crate::reference::Road)> = reference
        .roads
        .iter()
        .enumerate()
        .filter(|(_, r)| r.line.len() >= 2)
        .map(|(i, r)| (i as u32, r))
        .collect();
    let mut out = Vec::with_capacity(n);
    if roads.is_empty() {
        return out;
    }
    while out.len() < n {
        let (segment, road) = roads[rng.below(roads.len() as u64) as usize];
        let k = rng.below(road.line.len() as u64 - 1) as usize;
        let (a, b) = (road.line[k], road.line[k + 1]);
        let t = rng.unit();
        let lat = a[1] + (b[1] - a[1]) * t;
        let m_per_deg_lat = 111_195.0;
        let m_per_deg_lon = m_per_deg_lat * lat.to_radians().cos();
        let dx = (b[0] - a[0]) * m_per_deg_lon;
        let dy = (b[1] - a[1]) * m_per_deg_lat;
        if dx == 0.0 && dy == 0.0 {
            continue;
        }
        let bearing = dx.atan2(dy).to_degrees();
        let jitter = |rng: &mut SplitMix| (rng.unit() * 2.0 - 1.0) * noise_m;
        out.push(Probe {
            lon: a[0] + (b[0] - a[0]) * t + jitter(&mut rng) / m_per_deg_lon,
            lat: lat + jitter(&mut rng) / m_per_deg_lat,
            heading: (bearing + (rng.unit() * 20.0 - 10.0)).rem_euclid(360.0),
            segment,
        });
    }
    out
}

/// Runs the benchmark; returns its JSON report.
pub fn run(args: &MatchBenchArgs) -> anyhow::Result<serde_json::Value> {
    let topology = crate::topology::Topology::load(&args.topology).map_err(|problems| {
        anyhow::anyhow!(
            "{}",
            problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        )
    })?;
    let matcher: &Matcher = &topology.reference.matcher;
    let probes = probes(&topology.reference, args.reports, args.noise_m, 42);
    let sample = &probes[..args.baseline_reports.min(probes.len())];
    let (mut indexed, mut exhaustive) = (Vec::new(), Vec::new());
    let mut right = 0;
    for run in 0..args.runs.max(1) {
        let start = Instant::now();
        let mut hits = 0usize;
        for p in &probes {
            if let Ok(s) = matcher.locate(p.lon, p.lat, Some(p.heading)) {
                hits += (s == p.segment) as usize;
            }
        }
        indexed.push(probes.len() as f64 / start.elapsed().as_secs_f64());
        if run == 0 {
            right = hits;
        }
        let start = Instant::now();
        let mut found = 0usize;
        for p in sample {
            found += matcher
                .locate_exhaustive(p.lon, p.lat, Some(p.heading))
                .is_ok() as usize;
        }
        std::hint::black_box(found);
        exhaustive.push(sample.len() as f64 / start.elapsed().as_secs_f64());
    }
    let pieces = topology
        .reference
        .roads
        .iter()
        .map(|r| r.line.len().saturating_sub(1))
        .sum::<usize>();
    let (indexed_median, exhaustive_median) = (median(indexed.clone()), median(exhaustive));
    let settings = args.hmm_settings();
    let lines = topology.reference.road_lines();
    let start = Instant::now();
    let hmm = Hmm::new(&lines, settings)?;
    let build_s = start.elapsed().as_secs_f64();
    let mut recordings = Vec::new();
    if !args.recordings.is_empty() {
        let expected_path = args.expected.as_ref().ok_or_else(|| {
            anyhow::anyhow!("--recording needs --expected (the expected congestion CSV)")
        })?;
        let expected = read_expected(expected_path, &topology.reference)?;
        for path in &args.recordings {
            let vehicles = read_recording(path)?;
            recordings.push(score_recording(
                path,
                &vehicles,
                &expected,
                matcher,
                &hmm,
                topology.time.size_ms,
                args.runs.max(1),
            ));
        }
    }
    let synthetic = if args.synthetic_vehicles > 0 {
        [10.0, 20.0]
            .iter()
            .map(|&sigma| score_synthetic(args, &settings, sigma))
            .collect::<anyhow::Result<Vec<_>>>()?
    } else {
        Vec::new()
    };
    Ok(json!({
        "segments": topology.reference.roads.len(),
        "pieces": pieces,
        "reports": probes.len(),
        "noise_m": args.noise_m,
        "runs": indexed.len(),
        "reports_per_s": indexed,
        "reports_per_s_median": indexed_median.round(),
        "exhaustive_baseline_per_s_median": exhaustive_median.round(),
        "speedup_vs_exhaustive": indexed_median / exhaustive_median.max(1e-9),
        "matched_to_generating_segment": right as f64 / probes.len().max(1) as f64,
        "hmm": {
            "settings": settings_json(&settings),
            "nodes": hmm.network().nodes(),
            "edges": hmm.network().edges(),
            "table_pairs": hmm.table().pairs(),
            "table_bytes": hmm.table_bytes(),
            "index_bytes": hmm.index_bytes(),
            "build_s": build_s,
        },
        "recordings": recordings,
        "synthetic": synthetic,
    }))
}

fn settings_json(s: &HmmSettings) -> serde_json::Value {
    json!({
        "sigma_m": s.sigma_m,
        "heading_sigma_deg": s.heading_sigma_deg,
        "accel_mps2": s.accel_mps2,
        "smooth_back_ms": s.smooth_back_ms,
        "beta_m": s.beta_m,
        "radius_m": s.radius_m,
        "max_candidates": s.max_candidates,
        "lag_ms": s.lag_ms,
        "max_gap_ms": s.max_gap_ms,
        "max_speed_mps": s.max_speed_mps,
        "backward_tolerance_m": s.backward_tolerance_m,
        "emission_margin": s.emission_margin,
        "end_slack_m": s.end_slack_m,
        "node_snap_m": s.node_snap_m,
        "junction_link_m": s.junction_link_m,
        "table_bound_m": s.table_bound_m,
    })
}

/// A vehicle report of a recording: the fix, its speed, and whether the
/// EV is charging in a bay.
#[derive(Clone, Copy, Debug)]
pub struct Report {
    /// Position, heading, time.
    pub fix: Fix,
    /// `speed_mps`.
    pub speed_mps: f64,
    /// `ev.charging`: in a bay, on no segment.
    pub charging: bool,
}

#[derive(serde::Deserialize)]
struct Line {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    vehicle_id: Option<String>,
    ts_ms: u64,
    #[serde(default)]
    lat: f64,
    #[serde(default)]
    lon: f64,
    #[serde(default)]
    speed_mps: f64,
    #[serde(default)]
    heading_deg: Option<f64>,
    #[serde(default)]
    ev: Option<Ev>,
}

#[derive(serde::Deserialize)]
struct Ev {
    #[serde(default)]
    charging: Option<bool>,
}

/// The vehicle reports of a recording (JSON Lines, gzipped when the name
/// ends in `.gz`), grouped by vehicle id, each vehicle's in
/// [`Fix::order_key`] order.
pub fn read_recording(path: &std::path::Path) -> anyhow::Result<Vec<Vec<Report>>> {
    use std::io::{BufRead, BufReader, Read};
    let file = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let reader: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut by_vehicle: std::collections::BTreeMap<String, Vec<Report>> = Default::default();
    for (i, line) in BufReader::new(reader).lines().enumerate() {
        let line = line.map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let l: Line = serde_json::from_str(&line)
            .map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), i + 1))?;
        let Some(id) = l.vehicle_id.filter(|_| l.kind == "vehicle") else {
            continue;
        };
        by_vehicle.entry(id).or_default().push(Report {
            fix: Fix {
                ts_ms: l.ts_ms,
                lon: l.lon,
                lat: l.lat,
                heading_deg: l.heading_deg,
            },
            speed_mps: l.speed_mps,
            charging: l.ev.and_then(|e| e.charging) == Some(true),
        });
    }
    Ok(by_vehicle
        .into_values()
        .map(|mut v| {
            v.sort_by_key(|r| r.fix.order_key());
            v
        })
        .collect())
}

/// The expected congestion table (CSV of TELEMETRY.md §4): (segment
/// index, window start) -> (samples, mean speed).
pub fn read_expected(
    path: &std::path::Path,
    reference: &Reference,
) -> anyhow::Result<synthetic::Speeds> {
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut out = synthetic::Speeds::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let bad = || anyhow::anyhow!("{}:{}: not a congestion row", path.display(), i + 1);
        if f.len() < 6 {
            return Err(bad());
        }
        let segment = reference.road(f[0]).ok_or_else(|| {
            anyhow::anyhow!("{}:{}: unknown segment {}", path.display(), i + 1, f[0])
        })?;
        let window: u64 = f[1].parse().map_err(|_| bad())?;
        let samples: u32 = f[3].parse().map_err(|_| bad())?;
        let speed: f64 = f[5].parse().map_err(|_| bad())?;
        out.insert((segment, window), (samples, speed));
    }
    Ok(out)
}

/// A matched report: (segment, event time, speed).
pub type Item = (u32, u64, f64);

/// The point matcher over every report (charging EVs left out): the
/// matched ones into `items`.
pub fn match_nearest(vehicles: &[Vec<Report>], matcher: &Matcher, items: &mut Vec<Item>) {
    items.clear();
    for r in vehicles.iter().flatten() {
        if r.charging {
            continue;
        }
        if let Ok(seg) = matcher.locate(r.fix.lon, r.fix.lat, r.fix.heading_deg) {
            items.push((seg, r.fix.ts_ms, r.speed_mps));
        }
    }
}

/// The HMM over every vehicle, a [`Track`] each (charging EVs left
/// out): the matched reports into `items`; returns the unmatched counts
/// (off road, junction, outlier).
pub fn match_hmm(vehicles: &[Vec<Report>], hmm: &Hmm, items: &mut Vec<Item>) -> [usize; 3] {
    items.clear();
    let mut unmatched = [0usize; 3];
    let mut decisions = Vec::new();
    for v in vehicles {
        let mut track = Track::new();
        decisions.clear();
        for r in v.iter().filter(|r| !r.charging) {
            // In order by construction: a refusal cannot happen.
            let _ = track.push(hmm, &r.fix, &mut decisions);
        }
        track.finish(hmm, &mut decisions);
        for (d, r) in decisions.iter().zip(v.iter().filter(|r| !r.charging)) {
            match d.result {
                Ok(seg) => items.push((seg, r.fix.ts_ms, r.speed_mps)),
                Err(hmm::Reason::OffRoad) => unmatched[0] += 1,
                Err(hmm::Reason::Junction) => unmatched[1] += 1,
                Err(hmm::Reason::Outlier) => unmatched[2] += 1,
            }
        }
    }
    unmatched
}

/// The expected pairs with >= 10 samples, and the share of them the
/// matched `items` put within max(0.5 m/s, 10 %).
pub fn pair_share(expected: &synthetic::Speeds, items: &[Item], window_ms: u64) -> (usize, f64) {
    let got = synthetic::mean_speeds(items.iter().copied(), window_ms);
    let (pairs, within) = synthetic::pairs_within(expected, &got, 10);
    (pairs, within as f64 / pairs.max(1) as f64)
}

/// Both methods' accuracy and speed on one recording.
fn score_recording(
    path: &std::path::Path,
    vehicles: &[Vec<Report>],
    expected: &synthetic::Speeds,
    matcher: &Matcher,
    hmm: &Hmm,
    window_ms: u64,
    runs: usize,
) -> serde_json::Value {
    let reports: usize = vehicles.iter().map(Vec::len).sum();
    // Enough repetitions per run for a measurable time.
    let repeat = (200_000 / reports.max(1)).max(1);
    let rate = |f: &mut dyn FnMut()| {
        let start = Instant::now();
        for _ in 0..repeat {
            f();
        }
        (reports * repeat) as f64 / start.elapsed().as_secs_f64()
    };
    let (mut nearest_items, mut hmm_items) = (Vec::new(), Vec::new());
    let mut unmatched = [0usize; 3];
    let (mut nearest_rates, mut hmm_rates) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        nearest_rates.push(rate(&mut || {
            match_nearest(vehicles, matcher, &mut nearest_items)
        }));
        hmm_rates.push(rate(&mut || {
            unmatched = match_hmm(vehicles, hmm, &mut hmm_items)
        }));
    }
    let (pairs, nearest_share) = pair_share(expected, &nearest_items, window_ms);
    let (_, hmm_share) = pair_share(expected, &hmm_items, window_ms);
    json!({
        "recording": path.display().to_string(),
        "vehicles": vehicles.len(),
        "reports": reports,
        "pairs": pairs,
        "sigma_estimate_m": hmm.estimate_sigma(vehicles.iter().flatten().filter(|r| !r.charging).map(|r| &r.fix)),
        "nearest": {
            "pairs_within": nearest_share,
            "matched": nearest_items.len(),
            "reports_per_s_median": median(nearest_rates).round(),
        },
        "hmm": {
            "pairs_within": hmm_share,
            "matched": hmm_items.len(),
            "off_road": unmatched[0],
            "junction": unmatched[1],
            "outlier": unmatched[2],
            "reports_per_s_median": median(hmm_rates).round(),
        },
    })
}

/// Both methods on the dense synthetic grid at `sigma`.
fn score_synthetic(
    args: &MatchBenchArgs,
    settings: &HmmSettings,
    sigma: f64,
) -> anyhow::Result<serde_json::Value> {
    let grid = Grid::new(
        &GridSettings {
            columns: 12,
            rows: 12,
            ..GridSettings::default()
        },
        1,
    );
    // The grid's σ is known: sigma_m and the settings scaling with it
    // ([`HmmSettings::for_sigma`]) follow it.
    let scaled = HmmSettings::for_sigma(sigma);
    let settings = HmmSettings {
        sigma_m: sigma,
        radius_m: settings.radius_m.max(scaled.radius_m),
        backward_tolerance_m: settings
            .backward_tolerance_m
            .max(scaled.backward_tolerance_m),
        ..*settings
    };
    let hmm = Hmm::new(&grid.lines, settings)?;
    let nearest = Matcher::new(&grid.lines, MatchSettings::default());
    let drives = grid.drive(
        args.synthetic_vehicles,
        args.synthetic_fixes,
        2000,
        sigma,
        2,
    );
    let hmm_results: Vec<Vec<_>> = drives
        .iter()
        .map(|v| {
            let mut track = Track::new();
            let mut out = Vec::with_capacity(v.len());
            for s in v {
                let _ = track.push(&hmm, &s.fix, &mut out);
            }
            track.finish(&hmm, &mut out);
            synthetic::results(&out)
        })
        .collect();
    let nearest_results: Vec<Vec<_>> = drives
        .iter()
        .map(|v| {
            v.iter()
                .map(|s| {
                    nearest
                        .locate(s.fix.lon, s.fix.lat, s.fix.heading_deg)
                        .map_err(|_| hmm::Reason::OffRoad)
                })
                .collect()
        })
        .collect();
    let h = synthetic::score(&drives, &hmm_results, 60_000);
    let n = synthetic::score(&drives, &nearest_results, 60_000);
    let j = |s: &synthetic::Score| s.junction_unmatched as f64 / s.in_junction.max(1) as f64;
    Ok(json!({
        "sigma_m": sigma,
        "hmm_settings": settings_json(&settings),
        "segments": grid.lines.len(),
        "fixes": drives.iter().map(Vec::len).sum::<usize>(),
        "pairs": h.pairs,
        "nearest": {"right_segment": n.segment_share(), "pairs_within": n.pair_share(), "junction_unmatched": j(&n)},
        "hmm": {"right_segment": h.segment_share(), "pairs_within": h.pair_share(), "junction_unmatched": j(&h)},
    }))
}
