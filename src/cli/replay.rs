//! `edgeflow replay`: a recording or a node's log through the dataflow,
//! into the final CSV tables.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;

use edgeflow::checkpoint::{Checkpoint, Settings};
use edgeflow::output::FinalTable;
use edgeflow::runtime::{Input, RunOptions, RunSummary};

/// Arguments of `replay`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    dataflow: super::Dataflow,
    /// Pace records at this multiple of event time (default: as fast
    /// as possible).
    #[arg(long)]
    speed: Option<f64>,
    /// The recorded telemetry.
    input: PathBuf,
    /// Directory for the CSV files (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// A damaged log: skip its damaged entries (and say how many) instead
    /// of failing.
    #[arg(long)]
    accept_damage: bool,
    /// Run as this process of a cluster (0 writes the CSV files), with
    /// --peers.
    #[arg(long, requires = "peers")]
    process: Option<usize>,
    /// Every cluster process's HOST:PORT for timely's own connections, in
    /// process order (start them all: each waits for the others).
    #[arg(long, value_delimiter = ',', requires = "process")]
    peers: Vec<String>,
}

/// Replays the input, writes the CSV files and prints a summary.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (topo, workers) = args.dataflow.load()?;
    if args.input.is_dir() {
        // The window settings must be the checkpoint's.
        let settings = Settings::of(&topo.time, &topo.reference_sha256);
        if let Some(cp) = Checkpoint::load(&args.input)? {
            if let Some(notice) = cp.check_settings(&args.input, &settings)? {
                eprintln!("edgeflow: {notice}");
            }
        }
    }
    super::check_speed(args.speed)?;
    let cluster =
        (args.process).map(|process| edgeflow::runtime::Cluster::new(process, args.peers.clone()));
    if let Some(c) = &cluster {
        c.check()
            .map_err(|e| anyhow::anyhow!("--process/--peers: {e}"))?;
    }
    let (reader, total) = Input::open(&args.input)?;
    let bar = super::progress_bar(total);
    if let Some(bar) = &bar {
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
    }
    let reference = Arc::new(topo.reference.clone());
    let mut table = FinalTable::default();
    let summary = edgeflow::runtime::run(
        reader,
        reference.clone(),
        topo.time,
        RunOptions {
            speed: args.speed,
            accept_damage: args.accept_damage,
            cluster: cluster.clone(),
            ..RunOptions::new(workers)
        },
        |batch| table.apply(batch),
        |bytes| {
            if let Some(b) = &bar {
                b.set_position(bytes.min(total));
            }
        },
    )?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if let Some(c) = &cluster {
        eprintln!(
            "process {} of {}: read {} records in {:.2} s (after {:.2} s of setup); sent {} bytes to the other processes ({:.1} per record read)",
            c.process,
            c.addresses.len(),
            summary.ingest.records,
            summary.elapsed.as_secs_f64(),
            summary.setup.as_secs_f64(),
            summary.exchanged,
            summary.exchanged as f64 / summary.ingest.records.max(1) as f64,
        );
        if !c.emits() {
            eprintln!("process {}: process 0 writes the aggregates", c.process);
            return Ok(ExitCode::SUCCESS);
        }
    }
    table
        .write_csv(&args.out, &reference, topo.time.size_ms)
        .with_context(|| format!("cannot write CSV files into {}", args.out.display()))?;
    summary.publish_metrics();
    print_summary(&summary, workers, &args.out);
    for note in &summary.log_notes {
        eprintln!("edgeflow: warning: {note}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `label n (a x, b y)`, the parenthesis only for nonzero counts.
fn with_breakdown(total: u64, parts: impl Iterator<Item = (&'static str, u64)>) -> String {
    let parts: Vec<String> = parts
        .filter(|(_, n)| *n > 0)
        .map(|(name, n)| format!("{name} {n}"))
        .collect();
    if parts.is_empty() {
        total.to_string()
    } else {
        format!("{total} ({})", parts.join(", "))
    }
}

fn print_summary(s: &RunSummary, workers: usize, out: &Path) {
    let i = &s.ingest;
    for (line, message) in &i.errors {
        eprintln!("line {line}: {message}");
    }
    if i.rejected_total() > i.errors.len() as u64 {
        eprintln!(
            "... and {} more rejected records",
            i.rejected_total() - i.errors.len() as u64
        );
    }
    eprintln!(
        "replayed {} records with {workers} worker(s) in {:.2} s ({:.0} records/s){}",
        i.records,
        s.elapsed.as_secs_f64(),
        s.records_per_s(),
        if s.setup.as_millis() >= 100 {
            format!(
                ", after {:.2} s of setup (the cluster's connections)",
                s.setup.as_secs_f64()
            )
        } else {
            String::new()
        }
    );
    let rejected = edgeflow::model::RejectReason::ALL
        .iter()
        .map(|r| (r.as_str(), i.rejected[r.index()]));
    eprintln!(
        "  accepted {} vehicle + {} charger; rejected {}",
        i.vehicle,
        i.charger,
        with_breakdown(i.rejected_total(), rejected)
    );
    eprintln!(
        "  late {} (window still open), late-corrected {}, dropped past retention {}",
        i.late, i.corrections, i.expired
    );
    if i.energy_resets + i.energy_capped > 0 {
        eprintln!(
            "  charger windows: {} energy registers went backwards (counted from their lowest reading), {} capped as beyond rated power",
            i.energy_resets, i.energy_capped
        );
    }
    let unmatched = edgeflow::geo::Unmatched::ALL
        .iter()
        .map(|u| (u.name(), i.unmatched[u.index()]));
    eprintln!(
        "  map-matched {} vehicle reports; unmatched {}",
        i.map_matched,
        with_breakdown(i.unmatched_total(), unmatched)
    );
    if i.rematched > 0 || i.matched_alone > 0 {
        eprintln!(
            "  HMM: {} decisions changed by later reports, {} reports too late for their trajectory (matched alone)",
            i.rematched, i.matched_alone
        );
    }
    eprintln!(
        "  windows emitted {} final, {} corrections; wrote the CSV files to {}",
        s.emitted.finals,
        s.emitted.corrections,
        out.display()
    );
}
