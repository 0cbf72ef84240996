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
            say!(
                "{}: valid: node {}, {} road segments, {} chargers, {} s windows, {} worker(s)",
                topology.display(),
                t.node_id,
                t.reference.roads.len(),
                t.reference.chargers.len(),
                t.time.size_ms / 1000,
                t.workers
            );
            if let Some(hmm) = &t.reference.hmm {
                say!(
                    "  matching: hmm (sigma {} m, lag {} ms): road graph of {} nodes and {} edges, route table {} pairs, {:.1} MB; candidate index {:.1} MB",
                    hmm.settings().sigma_m,
                    hmm.settings().lag_ms,
                    hmm.network().nodes(),
                    hmm.network().edges(),
                    hmm.table().pairs(),
                    hmm.table_bytes() as f64 / 1e6,
                    hmm.index_bytes() as f64 / 1e6
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(problems) => {
            for p in &problems {
                say!("{p}");
            }
            say!("{}: {} problem(s)", topology.display(), problems.len());
            Ok(ExitCode::from(1))
        }
    }
}
