//! `edgeflow edge` and `edgeflow central`: run a node in its role until
//! SIGINT or SIGTERM, then drain.

use std::process::ExitCode;

use edgeflow::node::Role;

/// Arguments of `edge` and `central`.
#[derive(clap::Args)]
pub struct Args {
    // The topology needs [ingest], [log] and [[fleet]] (an edge) or
    // [[edge]] (central) besides what a replay needs.
    #[command(flatten)]
    dataflow: super::Dataflow,
}

/// Starts the node, waits for a stop signal, shuts down gracefully and
/// prints the node's report.
pub fn run(args: Args, role: Role) -> anyhow::Result<ExitCode> {
    let (topo, workers) = args.dataflow.load()?;
    tracing::info!(
        "edgeflow {} (revision {}) starting as {}: node {}, topology {}, {} worker(s), {} s windows, {} road segments, {} chargers, {} sink(s), {} fleet(s), {} operator(s), matching {}",
        env!("CARGO_PKG_VERSION"),
        env!("EDGEFLOW_GIT_REVISION"),
        match role {
            Role::Edge => "edge",
            Role::Central => "central",
        },
        topo.node_id,
        topo.path.display(),
        workers,
        topo.time.size_ms / 1000,
        topo.reference.roads.len(),
        topo.reference.chargers.len(),
        topo.sinks.len(),
        topo.fleets.len(),
        topo.operators.len(),
        if topo.reference.hmm.is_some() { "hmm" } else { "nearest" },
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let disk = edgeflow::log::disk::Disk::real();
    let node = edgeflow::node::start_as(role, topo, workers, disk)?;
    let (name, alpn) = match role {
        Role::Edge => ("edge", "edgeflow-ingest/1"),
        Role::Central => ("central", "edgeflow-push/1"),
    };
    tracing::info!(
        "edgeflow {name}: listening on {} (QUIC, ALPN {alpn} and edgeflow-subscribe/1); Ctrl-C or SIGTERM stops",
        node.addr
    );
    if let Some(addr) = node.observe_addr {
        tracing::info!(
            "edgeflow {name}: metrics on http://{addr}/metrics (also /health and /ready)"
        );
    }
    edgeflow::observe::notify::notify(&format!(
        "READY=1\nSTATUS=listening on {} (QUIC)",
        node.addr
    ));
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        anyhow::Ok(())
    })?;
    tracing::info!(
        "edgeflow {name}: stopping: draining connections, flushing the dataflow and sinks"
    );
    edgeflow::observe::notify::notify("STOPPING=1\nSTATUS=draining");
    let report = node.shutdown()?;
    edgeflow::node::print_report(&report);
    Ok(ExitCode::SUCCESS)
}
