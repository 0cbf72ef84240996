//! `edgeflow bench`: the replay path end to end on deterministic synthetic
//! telemetry, against a plain single-threaded loop over the same bytes.
//!
//! The generator writes JSON Lines to a temporary file first (not timed), so
//! both contenders read the same bytes from the page cache and neither pays
//! for generation. The synthetic city: `vehicles` vehicles each report every
//! 2 s from their own phase, drive along a segment for 5 to 30 reports, then
//! turn onto another; 20 % are EVs; 5 % of reports arrive up to 3 s late;
//! one charger per 100 segments, 2 connectors each, reporting every 10 s.
//!
//! The baseline is written the way anyone would write it: serde_json into
//! plain owned structs, a `HashMap` from (segment, window) to count, speed
//! sum and a `HashSet` of vehicle ids. No dataflow, no validation, no
//! charging, no lateness: it is the floor, not a competitor.
//!
//! Each measured run is a fresh process (`edgeflow bench-one`), so
//! `peak_rss_bytes` is the kernel's peak-RSS mark of that run alone, not
//! memory another contender left in the allocator.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use serde::Deserialize;

use crate::reference::{Charger, Reference, Road};
use crate::runtime::{Input, RunOptions};
use crate::time::TimeSpec;

use super::measure::{median, peak_rss, SplitMix};

/// Options of `edgeflow bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Records to generate.
    #[arg(long, default_value_t = 10_000_000)]
    pub records: u64,
    /// Road segments.
    #[arg(long, default_value_t = 20_000)]
    pub segments: u32,
    /// Vehicles reporting at once.
    #[arg(long, default_value_t = 5_000)]
    pub vehicles: u32,
    /// Worker counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub workers: Vec<usize>,
    /// Measured runs of each contender; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Directory for the generated input (default: the system temp dir).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Also measure each worker count as an edge that pushes to central
    /// (vehicle ids hashed under a city key, the partials for central
    /// kept beside the aggregates), alternating with the plain dataflow.
    #[arg(long)]
    pub push: bool,
}

const FREE_FLOW: [f64; 4] = [8.33, 13.89, 16.67, 22.22];
const BASE_TS: u64 = 1_767_258_000_000;

/// The synthetic reference data: `s-000000`.. and `c-0000`...
pub fn synthetic_reference(segments: u32) -> Reference {
    let roads = (0..segments)
        .map(|i| Road {
            id: format!("s-{i:06}"),
            free_flow_mps: FREE_FLOW[i as usize % FREE_FLOW.len()],
            lanes: 1 + i % 3,
            name: None,
            length_m: None,
            line: vec![
                [24.9, 60.1 + i as f64 * 1e-5],
                [24.901, 60.1 + i as f64 * 1e-5],
            ],
        })
        .collect();
    let chargers = (0..(segments / 100).max(1))
        .map(|i| Charger {
            id: format!("c-{i:04}"),
            connectors: 2,
            max_kw: 50.0,
            name: None,
            position: [24.9, 60.1],
            ..Default::default()
        })
        .collect();
    Reference::new(roads, chargers)
}

/// Writes `args.records` synthetic JSON lines to `path`.
pub fn generate(args: &BenchArgs, path: &Path) -> std::io::Result<()> {
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut rng = SplitMix(0x00ED_6EF1_0000_0001);
    let vehicles = args.vehicles.max(1) as usize;
    let segments = args.segments.max(1) as u64;
    let chargers = (args.segments / 100).max(1);
    // Per vehicle: segment, reports left on it, phase (ms), EV flag, soc.
    let mut state: Vec<(u64, u32, u64, bool, f64)> = (0..vehicles)
        .map(|_| {
            (
                rng.below(segments),
                5 + rng.below(26) as u32,
                rng.below(2000),
                rng.below(5) == 0,
                20.0 + rng.unit() * 70.0,
            )
        })
        .collect();
    let mut energy: Vec<u64> = (0..chargers * 2)
        .map(|_| 1_000_000 + rng.below(1_000_000))
        .collect();
    let mut written = 0u64;
    let mut delayed: Vec<(u64, String)> = Vec::new();
    let mut line = String::with_capacity(256);
    let mut round = 0u64;
    while written < args.records {
        let round_ts = BASE_TS + round * 2000;
        for (v, st) in state.iter_mut().enumerate() {
            if written >= args.records {
                break;
            }
            if st.1 == 0 {
                st.0 = (st.0 + 1 + rng.below(7)) % segments;
                st.1 = 5 + rng.below(26) as u32;
            }
            st.1 -= 1;
            let ts = round_ts + st.2;
            let free = FREE_FLOW[st.0 as usize % FREE_FLOW.len()];
            let speed = free * (0.2 + rng.unit() * 0.9);
            line.clear();
            use std::fmt::Write as _;
            let _ = write!(
                line,
                r#"{{"type":"vehicle","vehicle_id":"v-{v:06}","ts_ms":{ts},"lat":{:.6},"lon":{:.6},"speed_mps":{speed:.3},"heading_deg":{:.1},"segment_id":"s-{:06}""#,
                60.1 + rng.unit() * 0.1,
                24.9 + rng.unit() * 0.1,
                rng.unit() * 360.0,
                st.0
            );
            if st.3 {
                st.4 = (st.4 - 0.01).max(5.0);
                let _ = write!(line, r#","ev":{{"soc_pct":{:.2},"charging":false}}"#, st.4);
            }
            line.push_str("}\n");
            if rng.below(20) == 0 {
                // Arrives 0.5-3 s late: after the reports of the next round.
                delayed.push((round + 2, line.clone()));
            } else {
                out.write_all(line.as_bytes())?;
            }
            written += 1;
        }
        if round.is_multiple_of(5) {
            for c in 0..chargers {
                for k in 0..2u32 {
                    if written >= args.records {
                        break;
                    }
                    let e = &mut energy[(c * 2 + k) as usize];
                    let busy = rng.below(3) != 0;
                    let power = if busy { 20.0 + rng.unit() * 30.0 } else { 0.0 };
                    *e += (power * 10.0 / 3.6) as u64;
                    let status = if busy { "Occupied" } else { "Available" };
                    let _ = writeln!(
                        out,
                        r#"{{"type":"charger","charger_id":"c-{c:04}","connector":{},"ts_ms":{round_ts},"status":"{status}","power_kw":{power:.3},"energy_wh":{e}}}"#,
                        k + 1
                    );
                    written += 1;
                }
            }
        }
        round += 1;
        let (due, later): (Vec<_>, Vec<_>) = delayed.drain(..).partition(|(r, _)| *r <= round);
        delayed = later;
        for (_, l) in due {
            out.write_all(l.as_bytes())?;
        }
    }
    for (_, l) in delayed {
        out.write_all(l.as_bytes())?;
    }
    out.flush()
}

/// A record as the baseline reads it: plain owned fields.
#[derive(Deserialize)]
struct PlainRecord {
    #[serde(rename = "type")]
    kind: String,
    vehicle_id: Option<String>,
    ts_ms: u64,
    speed_mps: Option<f64>,
    segment_id: Option<String>,
}

/// The plain loop: returns (records, congestion rows).
pub fn baseline(path: &Path) -> anyhow::Result<(u64, usize)> {
    let mut reader = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(path)?);
    let mut agg: HashMap<(String, u64), (u64, f64, HashSet<String>)> = HashMap::new();
    let mut buf = Vec::with_capacity(512);
    let mut records = 0u64;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            break;
        }
        records += 1;
        let Ok(r) = serde_json::from_slice::<PlainRecord>(&buf) else {
            continue;
        };
        if r.kind != "vehicle" {
            continue;
        }
        let (Some(seg), Some(v), Some(speed)) = (r.segment_id, r.vehicle_id, r.speed_mps) else {
            continue;
        };
        let window = r.ts_ms - r.ts_ms % 60_000;
        let e = agg.entry((seg, window)).or_default();
        e.0 += 1;
        e.1 += speed;
        e.2.insert(v);
    }
    Ok((records, std::hint::black_box(agg).len()))
}

/// One measured run, in a process of its own (see [`run_one`]).
#[derive(Debug, Clone, clap::Args)]
pub struct RunOneArgs {
    /// `baseline` or `dataflow`.
    #[arg(long)]
    pub mode: String,
    /// The generated input.
    #[arg(long)]
    pub input: PathBuf,
    /// Road segments of the synthetic reference.
    #[arg(long)]
    pub segments: u32,
    /// Workers (dataflow mode).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Run as this process of a cluster, with `--peers` (dataflow mode).
    #[arg(long, requires = "peers")]
    pub process: Option<usize>,
    /// Every cluster process's HOST:PORT, in process order.
    #[arg(long, value_delimiter = ',', requires = "process")]
    pub peers: Vec<String>,
    /// Keep the final table and report its SHA-256 (of the congestion and
    /// charging CSVs) as `digest`.
    #[arg(long)]
    pub digest: bool,
}

/// Measures one contender once in this process, which the parent started
/// fresh, so the kernel's peak-RSS mark is this run's alone. Returns
/// `{"records", "seconds", "peak_rss_bytes"}`; a dataflow run also
/// `dataflow_seconds` (after a cluster's setup), `exchanged_bytes` (sent
/// to the cluster's other processes) and, with `--digest`, `digest`.
pub fn run_one(args: &RunOneArgs) -> anyhow::Result<serde_json::Value> {
    let t = Instant::now();
    let mut extra = serde_json::Map::new();
    let records = match args.mode.as_str() {
        "baseline" => baseline(&args.input)?.0,
        mode @ ("dataflow" | "push") => {
            let push = mode == "push";
            let mut reference = synthetic_reference(args.segments);
            if push {
                reference.vehicle_key = Some(crate::privacy::VehicleKey::new([0x5a; 32]));
            }
            let reference = Arc::new(reference);
            let spec = TimeSpec {
                size_ms: 60_000,
                allowed_lateness_ms: 5_000,
                retention_ms: 15 * 60_000,
                max_future_ms: crate::time::DEFAULT_MAX_FUTURE_MS,
                leap_quorum: crate::time::DEFAULT_LEAP_QUORUM,
            };
            let mut partials = 0usize;
            let cluster = (args.process)
                .map(|process| crate::runtime::Cluster::new(process, args.peers.clone()));
            let mut table = crate::output::FinalTable::default();
            let summary = crate::runtime::run_with(
                Input::open(&args.input)?.0,
                reference.clone(),
                spec,
                RunOptions {
                    speed: None,
                    partials: push,
                    cluster,
                    ..RunOptions::new(args.workers)
                },
                |batch| {
                    if args.digest {
                        table.apply(batch)
                    }
                },
                |batch| partials += batch.len(),
                |_| {},
            )?;
            std::hint::black_box(partials);
            extra.insert(
                "dataflow_seconds".into(),
                summary.elapsed.as_secs_f64().into(),
            );
            extra.insert("exchanged_bytes".into(), summary.exchanged.into());
            if args.digest {
                use sha2::{Digest, Sha256};
                let mut h = Sha256::new();
                for kind in [
                    crate::aggregate::Kind::Congestion,
                    crate::aggregate::Kind::Charging,
                ] {
                    h.update(table.csv(kind, &reference, spec.size_ms));
                }
                extra.insert("digest".into(), hex::encode(h.finalize()).into());
            }
            summary.ingest.records
        }
        other => anyhow::bail!("unknown mode {other:?}: expected baseline, dataflow or push"),
    };
    let seconds = t.elapsed().as_secs_f64();
    let mut out = serde_json::json!({ "records": records, "seconds": seconds, "peak_rss_bytes": peak_rss(std::process::id()) });
    if let Some(o) = out.as_object_mut() {
        o.extend(extra);
    }
    Ok(out)
}

fn spawn_one(
    mode: &str,
    input: &Path,
    segments: u32,
    workers: usize,
) -> anyhow::Result<(f64, u64)> {
    let exe = std::env::current_exe().context("cannot find the edgeflow executable")?;
    let out = std::process::Command::new(exe)
        .args([
            "bench-one",
            "--mode",
            mode,
            "--segments",
            &segments.to_string(),
            "--workers",
            &workers.to_string(),
            "--input",
        ])
        .arg(input)
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("cannot run the measured process")?;
    anyhow::ensure!(
        out.status.success(),
        "measured process failed: {}",
        out.status
    );
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("measured process printed no JSON")?;
    let records = v["records"].as_f64().unwrap_or(0.0);
    let seconds = v["seconds"].as_f64().unwrap_or(f64::INFINITY);
    Ok((records / seconds, v["peak_rss_bytes"].as_u64().unwrap_or(0)))
}

/// Runs the benchmark; returns the JSON report. Every measured run is a
/// fresh process; contenders alternate within each round, so machine noise
/// hits them alike.
pub fn run(args: &BenchArgs) -> anyhow::Result<serde_json::Value> {
    let dir = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let path = dir.join(format!("edgeflow-bench-{}.jsonl", std::process::id()));
    struct Cleanup(PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _cleanup = Cleanup(path.clone());
    let t = Instant::now();
    generate(args, &path).with_context(|| format!("cannot write {}", path.display()))?;
    let input_bytes = std::fs::metadata(&path)?.len();
    eprintln!(
        "generated {} records ({input_bytes} bytes) in {:.1} s",
        args.records,
        t.elapsed().as_secs_f64()
    );

    let mut baseline_rates = Vec::new();
    let mut baseline_peak = 0;
    let mut results: Vec<(usize, Vec<f64>, u64)> =
        args.workers.iter().map(|&w| (w, Vec::new(), 0)).collect();
    let mut push_rates: Vec<Vec<f64>> = vec![Vec::new(); args.workers.len()];
    for run in 0..args.runs.max(1) {
        let (rate, peak) = spawn_one("baseline", &path, args.segments, 1)?;
        eprintln!(
            "run {run}: baseline {rate:.0} records/s, peak RSS {} MiB",
            peak >> 20
        );
        baseline_rates.push(rate);
        baseline_peak = baseline_peak.max(peak);
        for (workers, rates, peak_max) in results.iter_mut() {
            let (rate, peak) = spawn_one("dataflow", &path, args.segments, *workers)?;
            eprintln!(
                "run {run}: {workers} worker(s) {rate:.0} records/s, peak RSS {} MiB",
                peak >> 20
            );
            rates.push(rate);
            *peak_max = (*peak_max).max(peak);
        }
        if args.push {
            for (i, &workers) in args.workers.iter().enumerate() {
                let (rate, _) = spawn_one("push", &path, args.segments, workers)?;
                eprintln!("run {run}: {workers} worker(s) pushing {rate:.0} records/s");
                push_rates[i].push(rate);
            }
        }
    }
    let baseline_rate = median(baseline_rates.iter().copied());
    let ratio = |a: f64, b: f64| (a / b * 1000.0).round() / 1000.0;
    let per_workers: Vec<serde_json::Value> = results
        .iter_mut()
        .zip(&push_rates)
        .map(|((w, rates, peak), pushing)| {
            let runs = rates.clone();
            let m = median(rates.iter().copied());
            let mut v = serde_json::json!({
                "workers": w,
                "records_per_s": m.round(),
                "runs_records_per_s": runs.iter().map(|r| r.round()).collect::<Vec<_>>(),
                "peak_rss_bytes": peak,
                "vs_baseline": ratio(m, baseline_rate),
            });
            if args.push {
                // Ratios per round, then their median: each round's two
                // contenders ran side by side.
                let p = median(pushing.iter().copied());
                v["push_records_per_s"] = p.round().into();
                v["push_vs_dataflow"] =
                    ratio(median(pushing.iter().zip(&runs).map(|(p, d)| p / d)), 1.0).into();
            }
            v
        })
        .collect();
    let first = per_workers.first().cloned().unwrap_or_default();
    Ok(serde_json::json!({
        "records": args.records,
        "segments": args.segments,
        "vehicles": args.vehicles,
        "input_bytes": input_bytes,
        "runs": args.runs,
        "workers": first["workers"],
        "records_per_s": first["records_per_s"],
        "peak_rss_bytes": first["peak_rss_bytes"],
        "baseline_records_per_s": baseline_rate.round(),
        "baseline_peak_rss_bytes": baseline_peak,
        "runs_baseline_records_per_s": baseline_rates.iter().map(|r| r.round()).collect::<Vec<_>>(),
        "by_workers": per_workers,
    }))
}
