//! `edgeflow validate`: every problem of a topology and its reference data.

use std::path::PathBuf;
use std::process::ExitCode;

use edgeflow::topology::Topology;

/// Arguments of `validate`.
#[derive(clap::Args)]
pub struct Args {
    /// The topology file (TOML).
    topology: PathBuf,
}

/// Prints a one-line summary of a valid topology (exit 0) or every
/// problem (exit 1).
pub fn run(Args { topology }: Args) -> anyhow::Result<ExitCode> {
    match Topology::load(&topology) {
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
    }
}
