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
    /// Topology whose road segments and chargers the traffic uses.
    #[arg(long, default_value = "topologies/karhula.toml")]
    topology: PathBuf,
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

/// Runs the traffic for the given time and prints what the node accepted.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let topo = super::load_topology(&args.topology)?;
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
    let mut report = runtime.block_on(loadgen::run(&load, Arc::new(topo.reference)))?;
    let (p50, p99) = (report.latency_ms(0.5), report.latency_ms(0.99));
    eprintln!(
        "simulated {vehicles} vehicles over {connections} connections for {} s: {} records accepted, {} rejected, ack latency p50 {p50:.1} ms p99 {p99:.1} ms, {} connections failed",
        args.seconds, report.accepted, report.rejected, report.failed_connections
    );
    Ok(ExitCode::SUCCESS)
}
