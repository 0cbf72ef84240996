//! `edgeflow bench-matching`: the whole replay path (decode, resolve,
//! match, aggregate, emit) on a noisy recording, with the point matcher
//! and with the HMM (issue 14), interleaved runs, medians and the ratio.
//!
//! The recording (by default the Karhula recording at σ = 10 m, 27,232
//! records) is replicated `--copies` times as parallel fleets on the same
//! roads at the same times (vehicle ids suffixed `-ck`; charger reports
//! once), merged in event-time order and written to a scratch file first
//! (not timed), so both contenders read the same bytes from the page
//! cache. Each run is a fresh dataflow in this process.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;

use super::measure::{median, Scratch};
use crate::geo::hmm::HmmSettings;
use crate::runtime::{Input, RunOptions};

/// Options of `edgeflow bench-matching`.
#[derive(Debug, Clone, clap::Args)]
pub struct MatchingBenchArgs {
    /// Topology with the reference data and windows.
    #[arg(long, default_value = "topologies/karhula.toml")]
    pub topology: PathBuf,
    /// The recording (JSON Lines, gzip allowed), reports without
    /// `segment_id`.
    #[arg(
        long,
        default_value = "tests/data/sumo-full/telemetry-gnss-10m.jsonl.gz"
    )]
    pub recording: PathBuf,
    /// Copies of the recording's fleet, driving side by side.
    #[arg(long, default_value_t = 20)]
    pub copies: u32,
    /// Dataflow workers.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Measured runs of each contender (medians reported).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Only write the replicated recording here (for the ingest comparison
    /// of `scripts/bench-matching-ingest`) and stop.
    #[arg(long)]
    pub write: Option<PathBuf>,
}

/// Writes the replicated recording to `out`; returns its record count.
fn replicate(
    recording: &std::path::Path,
    copies: u32,
    out: &std::path::Path,
) -> anyhow::Result<u64> {
    let file = std::fs::File::open(recording)
        .with_context(|| format!("cannot open {}", recording.display()))?;
    let reader: Box<dyn std::io::Read> = if recording.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut lines: Vec<(u64, u32, String)> = Vec::new();
    for line in BufReader::new(reader).lines() {
        let line = line?;
        let v: serde_json::Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(_) => continue,
        };
        let ts = v["ts_ms"].as_u64().unwrap_or(0);
        match v["vehicle_id"].as_str() {
            Some(id) if v["type"] == "vehicle" => {
                let quoted = format!("\"vehicle_id\":\"{id}\"");
                for k in 0..copies.max(1) {
                    let renamed = format!("\"vehicle_id\":\"{id}-c{k}\"");
                    lines.push((ts, k, line.replacen(&quoted, &renamed, 1)));
                }
            }
            _ => lines.push((ts, 0, line)),
        }
    }
    lines.sort_by_key(|l| (l.0, l.1));
    let mut w = std::io::BufWriter::new(std::fs::File::create(out)?);
    for (_, _, l) in &lines {
        writeln!(w, "{l}")?;
    }
    w.flush()?;
    Ok(lines.len() as u64)
}

/// Runs the benchmark; one JSON object.
pub fn run(args: &MatchingBenchArgs) -> anyhow::Result<serde_json::Value> {
    if let Some(out) = &args.write {
        let records = replicate(&args.recording, args.copies, out)?;
        return Ok(serde_json::json!({ "written": out.display().to_string(), "records": records }));
    }
    let topo =
        crate::topology::Topology::load(&args.topology).map_err(|p| anyhow::anyhow!("{p:?}"))?;
    let scratch = Scratch::new("bench-matching")?;
    let path = scratch.path().join("recording.jsonl");
    let records = replicate(&args.recording, args.copies, &path)?;
    let nearest = Arc::new({
        let mut r = topo.reference.clone();
        r.hmm = None;
        r
    });
    let hmm = Arc::new({
        let mut r = topo.reference.clone();
        match &topo.reference.hmm {
            Some(_) => {}
            None => r.set_hmm(HmmSettings::default())?,
        }
        r
    });
    let mut rates = [Vec::new(), Vec::new()];
    let mut matched = [0u64; 2];
    for _ in 0..args.runs.max(1) {
        for (i, reference) in [&nearest, &hmm].into_iter().enumerate() {
            let (input, _) = Input::open(&path)?;
            let summary = crate::runtime::run(
                input,
                reference.clone(),
                topo.time,
                RunOptions::new(args.workers),
                |_| {},
                |_| {},
            )?;
            anyhow::ensure!(
                summary.ingest.rejected_total() == 0,
                "the recording has rejected records: {:?}",
                summary.ingest.errors.first()
            );
            rates[i].push(summary.ingest.records as f64 / summary.elapsed.as_secs_f64());
            matched[i] = summary.ingest.map_matched;
        }
    }
    let [near, with_hmm] = rates;
    let ratios: Vec<f64> = near.iter().zip(&with_hmm).map(|(a, b)| b / a).collect();
    Ok(serde_json::json!({
        "recording": args.recording.display().to_string(),
        "copies": args.copies,
        "records": records,
        "workers": args.workers,
        "runs": args.runs,
        "nearest": {
            "records_per_s_median": median(near.iter().copied()).round(),
            "records_per_s": near,
            "map_matched": matched[0],
        },
        "hmm": {
            "records_per_s_median": median(with_hmm.iter().copied()).round(),
            "records_per_s": with_hmm,
            "map_matched": matched[1],
        },
        "hmm_over_nearest_median": median(ratios.iter().copied()),
    }))
}
