//! `edgeflow bench-match`: map-matching throughput on a topology's road
//! network, one core.
//!
//! Reports are generated on the network itself: a random point of a random
//! segment, moved up to `noise_m` metres in each axis (GNSS error), with the
//! segment's direction of travel ± 10° as heading. Each run matches all of
//! them with [`Matcher::locate`] on one thread; the baseline is the same rule
//! without the R-tree ([`Matcher::locate_exhaustive`]) on a sample, measured
//! in the same run. The share of reports placed on the segment they were
//! generated on is reported too (points near junctions and crossings make
//! it less than 1).

use std::time::Instant;

use serde_json::json;

use super::measure::{median, SplitMix};
use crate::geo::Matcher;
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
    }))
}
