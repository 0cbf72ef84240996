//! The `edgeflow` command line: a thin shell over the library. It maps
//! errors to exit codes and messages a person can act on.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

use edgeflow::output::FinalTable;
use edgeflow::replay::{Input, ReplayOptions, RunSummary};
use edgeflow::topology::Topology;

/// edgeflow: edge stream processing of city mobility and energy telemetry.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a topology file and its reference data; print every problem.
    Validate {
        /// The topology file (TOML).
        topology: PathBuf,
    },
    /// Replay recorded telemetry (JSON Lines, optionally .gz, or an edge
    /// node's log directory) through the dataflow and write congestion.csv
    /// and charging.csv.
    Replay {
        /// The topology file (TOML).
        #[arg(long)]
        topology: PathBuf,
        /// Worker threads (default: the topology's `dataflow.workers`).
        #[arg(long)]
        workers: Option<usize>,
        /// Pace records at this multiple of event time (default: as fast
        /// as possible).
        #[arg(long)]
        speed: Option<f64>,
        /// The recorded telemetry.
        input: PathBuf,
        /// Directory for the CSV files (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
    /// Measure the replay path on synthetic telemetry against a plain
    /// single-threaded loop; prints one JSON object.
    Bench(edgeflow::bench::BenchArgs),
    /// One measured run of `bench`, in a fresh process (used by `bench`).
    #[command(hide = true)]
    BenchOne(edgeflow::bench::RunOneArgs),
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("edgeflow: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn load_topology(path: &std::path::Path) -> anyhow::Result<Topology> {
    Topology::load(path).map_err(|problems| {
        for p in &problems {
            eprintln!("{p}");
        }
        anyhow::anyhow!(
            "{} has {} problem(s); `edgeflow validate` lists them",
            path.display(),
            problems.len()
        )
    })
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Validate { topology } => match Topology::load(&topology) {
            Ok(t) => {
                println!(
                    "{}: valid: node {}, {} road segments, {} chargers, {} s windows, {} worker(s)",
                    topology.display(),
                    t.node_id,
                    t.reference.roads.len(),
                    t.reference.chargers.len(),
                    t.time.size_ms / 1000,
                    t.workers
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(problems) => {
                for p in &problems {
                    println!("{p}");
                }
                println!("{}: {} problem(s)", topology.display(), problems.len());
                Ok(ExitCode::from(1))
            }
        },
        Command::Replay {
            topology,
            workers,
            speed,
            input,
            out,
        } => {
            let topo = load_topology(&topology)?;
            if let Some(s) = speed {
                if !(s.is_finite() && s >= 0.001) {
                    bail!("--speed must be a number >= 0.001 (times event time), got {s}");
                }
            }
            let workers = workers.unwrap_or(topo.workers);
            if workers == 0 || workers > edgeflow::topology::MAX_WORKERS {
                bail!(
                    "--workers must be between 1 and {}",
                    edgeflow::topology::MAX_WORKERS
                );
            }
            let (reader, total) = Input::open(&input)?;
            let bar = std::io::stderr().is_terminal().then(|| {
                let bar = indicatif::ProgressBar::new(total);
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                bar
            });
            let reference = Arc::new(topo.reference.clone());
            let mut table = FinalTable::default();
            let summary = edgeflow::replay::run(
                reader,
                reference.clone(),
                topo.time,
                ReplayOptions {
                    speed,
                    ..ReplayOptions::new(workers)
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
            table
                .write_csv(&out, &reference, topo.time.size_ms)
                .with_context(|| format!("cannot write CSV files into {}", out.display()))?;
            edgeflow::metrics::publish(&summary);
            print_summary(&summary, workers, &out);
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(args) => {
            let report = edgeflow::bench::run(&args)?;
            println!("{report}");
            Ok(ExitCode::SUCCESS)
        }
        Command::BenchOne(args) => {
            println!("{}", edgeflow::bench::run_one(&args)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_summary(s: &RunSummary, workers: usize, out: &std::path::Path) {
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
    let reasons: Vec<String> = edgeflow::model::RejectReason::ALL
        .iter()
        .filter(|r| i.rejected[r.index()] > 0)
        .map(|r| format!("{} {}", r.as_str(), i.rejected[r.index()]))
        .collect();
    eprintln!(
        "replayed {} records with {workers} worker(s) in {:.2} s ({:.0} records/s)",
        i.records,
        s.elapsed.as_secs_f64(),
        s.records_per_s()
    );
    eprintln!(
        "  accepted {} vehicle + {} charger; rejected {}{}",
        i.vehicle,
        i.charger,
        i.rejected_total(),
        if reasons.is_empty() {
            String::new()
        } else {
            format!(" ({})", reasons.join(", "))
        }
    );
    eprintln!(
        "  late {} (window still open), late-corrected {}, dropped past retention {}",
        i.late, i.corrections, i.expired
    );
    eprintln!(
        "  unmatched vehicle reports {} (no segment_id {}, unknown segment {})",
        i.unmatched_no_segment + i.unmatched_unknown_segment,
        i.unmatched_no_segment,
        i.unmatched_unknown_segment
    );
    eprintln!(
        "  windows emitted {} final, {} corrections; wrote {}/congestion.csv and {}/charging.csv",
        s.emitted.finals,
        s.emitted.corrections,
        out.display(),
        out.display()
    );
}
