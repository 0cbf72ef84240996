//! `edgeflow simulate`: live synthetic traffic to a node.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use edgeflow::ingest::client::SendOptions;
use edgeflow::tools::loadgen::{self, Load};

/// Arguments of `simulate`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: super::Target,
    /// Topology whose road segments and chargers the traffic uses
    /// (default: the Karhula network of the bundled topology, built in).
    #[arg(long)]
    topology: Option<PathBuf>,
    /// Simulated vehicles (each reports every 2 s).
    #[arg(long, default_value_t = 100)]
    vehicles: usize,
    /// Connections (one per fleet gateway); vehicles are spread over them.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// How long, seconds.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
}

/// Runs the traffic for the given time and prints what the node
/// acknowledged: exit 0 when every connection ran to the end, 1 when some
/// failed, an error (2) when none got through.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let reference = match &args.topology {
        Some(path) => super::load_topology(path)?.reference,
        None => edgeflow::tools::bundled::reference()?,
    };
    let (addr, server_name) = args.target.resolve()?;
    let token = args.target.token()?;
    let vehicles = args.vehicles;
    let connections = args.connections.clamp(1, vehicles.max(1));
    // Each connection batches its vehicles' reports of one 2 s round.
    let per_connection = vehicles.div_ceil(connections).max(1);
    let load = Load {
        target: SendOptions {
            sender: "sim".into(),
            batch_lines: per_connection,
            window: 4,
            identity: args.target.identity(),
            ..SendOptions::new(addr, server_name, args.target.ca.clone(), token)
        },
        connections,
        batch_records: per_connection,
        batches: None,
        duration: Duration::from_secs(args.seconds),
        interval: Some(Duration::from_secs(2)),
        window: 4,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let bar = super::progress_spinner(format!(
        "simulating {vehicles} vehicles over {connections} connections for {} s",
        args.seconds
    ));
    let report = runtime.block_on(loadgen::run(&load, Arc::new(reference)));
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let report = &mut report?;
    let failures: Vec<String> = (report.failures.iter())
        .map(|(why, n)| format!("{n} connection(s): {why}"))
        .collect();
    if report.failed_connections as usize >= connections && report.accepted + report.rejected == 0 {
        anyhow::bail!("no connection got through: {}", failures.join("; "));
    }
    let (p50, p99) = (report.latency_ms(0.5), report.latency_ms(0.99));
    eprintln!(
        "simulated {vehicles} vehicles over {connections} connections for {} s: the node acknowledged {} records accepted and {} rejected; ack latency p50 {p50:.1} ms, p99 {p99:.1} ms",
        args.seconds, report.accepted, report.rejected
    );
    if failures.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "edgeflow: {} of {connections} connections failed: {}",
            report.failed_connections,
            failures.join("; ")
        );
        Ok(ExitCode::FAILURE)
    }
}
