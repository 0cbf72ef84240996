//! `edgeflow bench-ingest`: an edge node in its own process (the real
//! binary, durable log on disk) under synthetic QUIC load from this process.
//! Prints one JSON object: records acknowledged per second, acknowledgement
//! latency quantiles, and the node's peak RSS.
//!
//! Modes by options: throughput (`--connections 10 --batch-records 1000`,
//! as fast as acknowledged), latency (`--connections 1000 --batch-records 1
//! --interval-ms 1000`), idle (`--idle 10000`: authenticated connections
//! that send nothing).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sha2::{Digest, Sha256};

use super::loadgen::Load;
use super::measure::peak_rss;
use crate::ingest::client::SendOptions;

/// The fleet token of benchmark nodes.
pub const TOKEN: &str = "edgeflow-bench-token";

/// Options of `edgeflow bench-ingest`.
#[derive(Debug, Clone, clap::Args)]
pub struct IngestBenchArgs {
    /// Concurrent connections sending batches.
    #[arg(long, default_value_t = 10)]
    pub connections: usize,
    /// Records per batch.
    #[arg(long, default_value_t = 1000)]
    pub batch_records: usize,
    /// Batches per connection.
    #[arg(long, default_value_t = 200)]
    pub batches: u64,
    /// One batch per connection every this many ms (default: as fast as
    /// acknowledged).
    #[arg(long)]
    pub interval_ms: Option<u64>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 120)]
    pub seconds: u64,
    /// Batches in flight per connection.
    #[arg(long, default_value_t = 8)]
    pub window: usize,
    /// Instead of load: hold this many idle authenticated connections.
    #[arg(long)]
    pub idle: Option<usize>,
    /// Topology with the reference data.
    #[arg(long, default_value = "topologies/karhula.toml")]
    pub topology: std::path::PathBuf,
}

/// A benchmark's node process: stopped with SIGTERM (and reaped) when
/// dropped, on every path, so a failed benchmark leaves no node behind.
pub struct NodeProcess(Child);

impl NodeProcess {
    /// Its process id.
    pub fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// Starts a node for benchmarks in `dir` (certificates, log) on the road
/// network next to `topology`; `extra` is appended to its topology. All its
/// load comes from one address (loopback), so the per-source limit on
/// unauthenticated connections is lifted to the connection limit.
pub fn spawn_node(
    dir: &Path,
    topology: &Path,
    extra: &str,
) -> anyhow::Result<(NodeProcess, std::net::SocketAddr, std::path::PathBuf)> {
    let certs = crate::node::make_certs(&dir.join("certs"), &["localhost".into()])?;
    let base = std::fs::canonicalize(topology.parent().unwrap_or(Path::new(".")))?;
    let text = format!(
        "[node]\nid = \"bench-edge\"\n[reference]\nroads = \"{}\"\nchargers = \"{}\"\n[windows]\n[dataflow]\nworkers = 1\n\
         [ingest]\nlisten = \"127.0.0.1:0\"\ncert = \"{}\"\nkey = \"{}\"\nmax_connections = 20000\nmax_records_per_s = 10000000\n\
         max_unauthenticated = 20000\nmax_unauthenticated_per_source = 20000\n\
         [log]\ndir = \"{}\"\n[[fleet]]\nname = \"bench\"\ntoken_sha256 = \"{}\"\n",
        base.join("karhula/roads.geojson").display(),
        base.join("karhula/chargers.geojson").display(),
        certs.cert.display(),
        certs.key.display(),
        dir.join("log").display(),
        hex::encode(Sha256::digest(TOKEN.as_bytes())),
    );
    let path = dir.join("edge.toml");
    std::fs::write(&path, text + extra)?;
    let (child, addr) = spawn_edge_process(&std::env::current_exe()?, &path)?;
    Ok((NodeProcess(child), addr, certs.ca))
}

/// Starts `exe edge --topology topology` and returns it with the address it
/// listens on, read from its own "listening on" line (so a topology may
/// listen on port 0: nothing races for the port). Its stderr keeps being
/// drained so the node never blocks on it.
pub fn spawn_edge_process(
    exe: &Path,
    topology: &Path,
) -> anyhow::Result<(Child, std::net::SocketAddr)> {
    use std::io::BufRead;
    let mut child = Command::new(exe)
        .args(["edge", "--topology"])
        .arg(topology)
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().context("node stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(rest) = line.split("listening on ").nth(1) {
                let addr = rest.split_whitespace().next().and_then(|a| a.parse().ok());
                let _ = tx.send(addr);
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(Some(addr)) => Ok((child, addr)),
        Ok(None) => {
            let _ = child.kill();
            anyhow::bail!("the node's \"listening on\" line has no address")
        }
        Err(_) => {
            let _ = child.kill();
            anyhow::bail!("the node did not start within 60 s")
        }
    }
}

/// Runs the benchmark; returns the JSON report.
pub fn run(args: &IngestBenchArgs) -> anyhow::Result<serde_json::Value> {
    let dir = std::env::temp_dir().join(format!("edgeflow-bench-ingest-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(dir.clone());
    let topo =
        crate::topology::Topology::load(&args.topology).map_err(|p| anyhow::anyhow!("{p:?}"))?;
    let reference = Arc::new(topo.reference);
    let (node, addr, ca) = spawn_node(&dir, &args.topology, "")?;
    let target = SendOptions {
        sender: "bench".into(),
        batch_lines: args.batch_records,
        window: args.window,
        ..SendOptions::new(addr, "localhost", ca, TOKEN)
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let result = if let Some(n) = args.idle {
        let held = runtime.block_on(super::loadgen::idle(&target, n, Duration::from_secs(3)))?;
        serde_json::json!({ "mode": "idle", "idle_connections": held, "node_peak_rss_bytes": peak_rss(node.id()) })
    } else {
        let load = Load {
            target,
            connections: args.connections,
            batch_records: args.batch_records,
            batches: Some(args.batches),
            duration: Duration::from_secs(args.seconds),
            interval: args.interval_ms.map(Duration::from_millis),
            window: args.window,
        };
        let mut report = runtime.block_on(super::loadgen::run(&load, reference))?;
        serde_json::json!({
            "mode": if args.interval_ms.is_some() { "latency" } else { "throughput" },
            "connections": args.connections,
            "batch_records": args.batch_records,
            "records_acked": report.accepted,
            "failed_connections": report.failed_connections,
            "seconds": report.elapsed.as_secs_f64(),
            "records_per_s": (report.accepted as f64 / report.elapsed.as_secs_f64()).round(),
            "ack_latency_ms": { "p50": report.latency_ms(0.5), "p99": report.latency_ms(0.99), "max": report.latency_ms(1.0) },
            "node_peak_rss_bytes": peak_rss(node.id()),
        })
    };
    drop(node);
    Ok(result)
}
