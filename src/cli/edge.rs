//! `edgeflow edge` and `edgeflow central`: run a node in its role until
//! SIGINT or SIGTERM, then drain; reload the topology on SIGHUP or when
//! its file changes ([`edgeflow::node::reload`]).

use std::process::ExitCode;

use edgeflow::node::Role;

/// Arguments of `edge` and `central`.
#[derive(clap::Args)]
pub struct Args {
    // The topology needs [ingest], [log] and [[fleet]] (an edge) or
    // [[edge]] (central) besides what a replay needs.
    #[command(flatten)]
    dataflow: super::Dataflow,
    /// Do not watch the topology file: reload on SIGHUP only.
    #[arg(long)]
    no_watch: bool,
    /// With a `[cluster]` in the topology: which of its processes this
    /// is, a number from 0, or a name ending in `-N` (a StatefulSet pod's
    /// hostname: `EDGEFLOW_PROCESS=$(hostname)`).
    #[arg(long, env = "EDGEFLOW_PROCESS", value_parser = process_index)]
    process: Option<usize>,
}

/// A process index: `N`, or a name ending in `-N`.
fn process_index(s: &str) -> Result<usize, String> {
    edgeflow::runtime::Cluster::index_from(s)
}

/// How often `edge` and `central` look at their topology file's time of
/// change; a change is applied once the time has held for one look (an
/// editor's write is complete).
pub const TOPOLOGY_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// Starts the node, waits for a stop signal, shuts down gracefully and
/// prints the node's report.
pub fn run(args: Args, role: Role) -> anyhow::Result<ExitCode> {
    let (mut topo, workers) = args.dataflow.load()?;
    match (&mut topo.cluster, args.process) {
        (Some(c), Some(p)) => {
            c.process = p;
            c.check()
                .map_err(|e| anyhow::anyhow!("--process / EDGEFLOW_PROCESS: {e}"))?;
        }
        (Some(c), None) => anyhow::bail!(
            "{} has a [cluster] of {} processes: say which one this is with --process N or EDGEFLOW_PROCESS",
            topo.path.display(),
            c.addresses.len()
        ),
        (None, Some(_)) => anyhow::bail!(
            "--process / EDGEFLOW_PROCESS given, but {} has no [cluster]",
            topo.path.display()
        ),
        (None, None) => {}
    }
    if role == Role::Central && topo.cluster.is_some() {
        anyhow::bail!("[cluster] is for an edge site; a central node runs as one process");
    }
    tracing::info!(
        "edgeflow {} (revision {}) starting as {}: node {}, topology {}, {} worker(s), {} s windows, {} road segments, {} chargers, {} sink(s), {} fleet(s), {} operator(s), matching {}",
        env!("CARGO_PKG_VERSION"),
        env!("EDGEFLOW_GIT_REVISION"),
        match (role, &topo.cluster) {
            (Role::Edge, None) => "edge".to_owned(),
            (Role::Edge, Some(c)) =>
                format!("edge, process {} of a site of {}", c.process, c.addresses.len()),
            (Role::Central, _) => "central".to_owned(),
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
    let node_cluster = topo.cluster.clone();
    let topo_web_tls = topo.web.as_ref().is_some_and(|w| w.tls);
    let node = edgeflow::node::start_as(role, topo, workers, disk)?;
    let (name, alpn) = match role {
        Role::Edge => ("edge", "edgeflow-ingest/1"),
        Role::Central => ("central", "edgeflow-push/1"),
    };
    tracing::info!(
        "edgeflow {name}: listening on {} (QUIC, ALPN {alpn} and edgeflow-subscribe/1); Ctrl-C or SIGTERM stops, SIGHUP reloads the topology",
        node.addr
    );
    if let Some(addr) = node.web_addr {
        let scheme = if topo_web_tls { "https" } else { "http" };
        tracing::info!(
            "edgeflow {name}: live map on {scheme}://{addr}/ (sign in with an operator token)"
        );
    }
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
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut hup = signal(SignalKind::hangup())?;
        let path = node.reloader.path().to_owned();
        let modified = || std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        let (mut seen, mut pending) = (modified(), None);
        let mut poll = tokio::time::interval(TOPOLOGY_POLL);
        let mut health = tokio::time::interval(std::time::Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = health.tick() => {
                    if node.dataflow_ended.load(std::sync::atomic::Ordering::Acquire) {
                        tracing::error!("{}", match &node_cluster {
                            Some(c) => format!("process {} of the site: the dataflow stopped (another process of the site was lost, or see above); stopping. Restart every process of the site: each replays its log (docs/SCALING.md, \"Restarting a site\")", c.process),
                            None => "the dataflow stopped (see above); stopping".to_owned(),
                        });
                        break;
                    }
                }
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading {}", path.display());
                    reload(&node);
                }
                _ = poll.tick(), if !args.no_watch => {
                    let now = modified();
                    if now == seen {
                        pending = None;
                    } else if pending == Some(now) {
                        seen = now;
                        tracing::info!("{} changed: reloading it", path.display());
                        reload(&node);
                    } else {
                        pending = Some(now);
                    }
                }
            }
        }
        anyhow::Ok(())
    })?;
    tracing::info!(
        "edgeflow {name}: stopping: draining connections, flushing the dataflow and sinks"
    );
    edgeflow::observe::notify::notify("STOPPING=1\nSTATUS=draining");
    let report = match node.shutdown() {
        Ok(report) => report,
        // Asked to stop, and stopped with nothing acknowledged lost: the
        // rest of the site follows (exit 3) and restarts.
        Err(e @ edgeflow::node::EdgeError::StoppedAlone { .. }) => {
            tracing::warn!("{e}");
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(e.into()),
    };
    edgeflow::node::print_report(&report);
    Ok(ExitCode::SUCCESS)
}

/// Reloads the node's topology (the outcome is logged and counted by the
/// node; an error changes nothing).
fn reload(node: &edgeflow::node::EdgeHandle) {
    edgeflow::observe::notify::notify("STATUS=reloading the topology");
    let status = match node.reload() {
        Ok(_) => "STATUS=listening; topology reloaded",
        Err(_) => "STATUS=listening; the last reload was refused (see the log)",
    };
    edgeflow::observe::notify::notify(status);
}
