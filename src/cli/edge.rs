//! `edgeflow edge`: run an edge node until SIGINT or SIGTERM, then drain.

use std::process::ExitCode;

/// Arguments of `edge`.
#[derive(clap::Args)]
pub struct Args {
    // The topology needs [ingest], [log] and [[fleet]] besides what a
    // replay needs.
    #[command(flatten)]
    dataflow: super::Dataflow,
}

/// Starts the node, waits for a stop signal, shuts down gracefully and
/// prints the node's report.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (topo, workers) = args.dataflow.load()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let node = edgeflow::node::start(topo, workers)?;
    eprintln!(
        "edgeflow edge: listening on {} (QUIC, ALPN edgeflow-ingest/1); Ctrl-C or SIGTERM stops",
        node.addr
    );
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        anyhow::Ok(())
    })?;
    eprintln!("edgeflow edge: stopping: draining connections, flushing the dataflow and sinks");
    let report = node.shutdown()?;
    edgeflow::node::print_report(&report);
    Ok(ExitCode::SUCCESS)
}
