//! `edgeflow bench-ingest`: an edge node in its own process (the real
//! binary, durable log on disk) under synthetic QUIC load from this process.
//! Prints one JSON object: records acknowledged per second, acknowledgement
//! latency quantiles, and the node's peak RSS.
//!
//! Modes by options: throughput (`--connections 10 --batch-records 1000`,
//! as fast as acknowledged), latency (`--connections 1000 --batch-records 1
//! --interval-ms 1000`), idle (`--idle 10000`: authenticated connections
//! that send nothing).
//!
//! With `--central`, the throughput mode runs `--runs` times each without
//! and with a central sink (a central process of its own on loopback, the
//! edge keeping partials and pushing them), interleaved, and reports both
//! medians and their ratio: what pushing to central costs the edge.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sha2::{Digest, Sha256};

use super::loadgen::Load;
use super::measure::{cpu_seconds, median, peak_rss, Scratch};
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
    /// Compare the edge without and with a central sink (throughput mode).
    #[arg(long)]
    pub central: bool,
    /// Measured runs of each contender with `--central` or `--metrics`
    /// (medians reported).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Compare the edge without and with its observability listener on,
    /// scraped every second (throughput mode).
    #[arg(long)]
    pub metrics: bool,
}

/// The token benchmark edges push to central with.
const PUSH_TOKEN: &str = "edgeflow-bench-push-token";

/// The city's vehicle hash key of benchmark edges and central.
const HASH_KEY: &str = "7e57000000000000000000000000000000000000000000000000000000000002";

/// A benchmark's node process: stopped with SIGTERM (and reaped) when
/// dropped, on every path, so a failed benchmark leaves no node behind.
pub struct NodeProcess(pub(crate) Child);

impl NodeProcess {
    /// Its process id.
    pub fn id(&self) -> u32 {
        self.0.id()
    }
}

impl NodeProcess {
    /// Asks it to stop (SIGTERM), without waiting.
    pub(crate) fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.terminate();
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
    let ingest = "max_connections = 20000\nmax_records_per_s = 10000000\n\
                  max_unauthenticated = 20000\nmax_unauthenticated_per_source = 20000\n";
    let rest = format!(
        "[dataflow]\nworkers = 1\n[[fleet]]\nname = \"bench\"\ntoken_sha256 = \"{}\"\n{extra}",
        hex::encode(Sha256::digest(TOKEN.as_bytes())),
    );
    spawn_bench(dir, topology, "edge", ingest, &rest)
}

/// Starts `edgeflow <role>` for a benchmark in `dir`: certificates, log,
/// the road network next to `topology`, loopback on a port of its own;
/// `ingest` lines go in its `[ingest]` table, `rest` after the others.
fn spawn_bench(
    dir: &Path,
    topology: &Path,
    role: &str,
    ingest: &str,
    rest: &str,
) -> anyhow::Result<(NodeProcess, std::net::SocketAddr, std::path::PathBuf)> {
    let (path, ca) = bench_topology(dir, topology, role, ingest, rest)?;
    let (child, addr) = spawn_role_process(&std::env::current_exe()?, role, &path)?;
    Ok((NodeProcess(child), addr, ca))
}

/// Writes the topology [`spawn_bench`] starts a node with, in `dir`;
/// returns its path and the CA of its certificates.
pub(crate) fn bench_topology(
    dir: &Path,
    topology: &Path,
    role: &str,
    ingest: &str,
    rest: &str,
) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
    let certs = crate::node::make_certs(&dir.join("certs"), &["localhost".into()])?;
    let base = std::fs::canonicalize(topology.parent().unwrap_or(Path::new(".")))?;
    let text = format!(
        "[node]\nid = \"bench-{role}\"\n[reference]\nroads = \"{}\"\nchargers = \"{}\"\n[windows]\n\
         [ingest]\nlisten = \"127.0.0.1:0\"\ncert = \"{}\"\nkey = \"{}\"\n{ingest}\
         [log]\ndir = \"{}\"\n{rest}",
        base.join("karhula/roads.geojson").display(),
        base.join("karhula/chargers.geojson").display(),
        certs.cert.display(),
        certs.key.display(),
        dir.join("log").display(),
    );
    let path = dir.join(format!("{role}.toml"));
    std::fs::write(&path, text)?;
    Ok((path, certs.ca))
}

/// Starts `exe edge --topology topology` and returns it with the address it
/// listens on, read from its own "listening on" line (so a topology may
/// listen on port 0: nothing races for the port). Its stderr keeps being
/// drained so the node never blocks on it.
pub fn spawn_edge_process(
    exe: &Path,
    topology: &Path,
) -> anyhow::Result<(Child, std::net::SocketAddr)> {
    spawn_role_process(exe, "edge", topology)
}

/// Starts `exe <role> --topology topology` (`edge` or `central`), as
/// [`spawn_edge_process`] does.
pub fn spawn_role_process(
    exe: &Path,
    role: &str,
    topology: &Path,
) -> anyhow::Result<(Child, std::net::SocketAddr)> {
    let mut command = Command::new(exe);
    command.args([role, "--topology"]).arg(topology);
    let (mut child, listening) = spawn_listening(command)?;
    let addr = listening_addr(&mut child, &listening);
    addr.map(|a| (child, a))
}

/// Where a node started by [`spawn_listening`] says it listens.
pub(crate) type Listening = std::sync::mpsc::Receiver<Option<std::net::SocketAddr>>;

/// Spawns a node with its stderr read for its "listening on ADDR" line,
/// which arrives on the returned receiver.
pub(crate) fn spawn_listening(mut command: Command) -> anyhow::Result<(Child, Listening)> {
    use std::io::BufRead;
    let mut child = command.stderr(Stdio::piped()).spawn()?;
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
    Ok((child, rx))
}

/// The address a node started by [`spawn_listening`] listens on, within
/// 60 s; the node is killed if it does not say.
pub(crate) fn listening_addr(
    child: &mut Child,
    listening: &Listening,
) -> anyhow::Result<std::net::SocketAddr> {
    match listening.recv_timeout(Duration::from_secs(60)) {
        Ok(Some(addr)) => Ok(addr),
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

/// Starts a central process in `dir` that takes pushes from the benchmark
/// edge (`bench-edge`), with a files sink in `dir/out` and `extra` appended
/// to its topology; returns it and its address and CA. Its operators see
/// every row (`min_vehicles = 1`).
pub fn spawn_central(
    dir: &Path,
    topology: &Path,
    extra: &str,
) -> anyhow::Result<(NodeProcess, std::net::SocketAddr, std::path::PathBuf)> {
    let rest = format!(
        "[privacy]\nvehicle_hash_key = \"{HASH_KEY}\"\nmin_vehicles = 1\n\
         [[sink]]\ntype = \"files\"\ndir = \"{}\"\n\
         [[edge]]\nname = \"bench-edge\"\ntoken_sha256 = \"{}\"\n{extra}",
        dir.join("out").display(),
        hex::encode(Sha256::digest(PUSH_TOKEN.as_bytes())),
    );
    spawn_bench(dir, topology, "central", "", &rest)
}

/// The topology lines that make the benchmark edge push to central.
pub fn central_sink(central: std::net::SocketAddr, ca: &Path) -> String {
    format!(
        "[privacy]\nvehicle_hash_key = \"{HASH_KEY}\"\n\
         [[sink]]\ntype = \"central\"\nto = \"{central}\"\nca = \"{}\"\ntoken = \"{PUSH_TOKEN}\"\nserver_name = \"localhost\"\n",
        ca.display()
    )
}

/// One throughput (or latency) run against an edge started in `dir` with
/// `extra` topology lines.
fn load_once(
    args: &IngestBenchArgs,
    dir: &Path,
    extra: &str,
    reference: Arc<crate::reference::Reference>,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<serde_json::Value> {
    let (node, addr, ca) = spawn_node(dir, &args.topology, extra)?;
    let load = Load {
        target: SendOptions {
            sender: "bench".into(),
            batch_lines: args.batch_records,
            window: args.window,
            ..SendOptions::new(addr, "localhost", ca, TOKEN)
        },
        connections: args.connections,
        batch_records: args.batch_records,
        batches: Some(args.batches),
        duration: Duration::from_secs(args.seconds),
        interval: args.interval_ms.map(Duration::from_millis),
        window: args.window,
    };
    let mut report = runtime.block_on(super::loadgen::run(&load, reference))?;
    let result = serde_json::json!({
        "mode": if args.interval_ms.is_some() { "latency" } else { "throughput" },
        "connections": args.connections,
        "batch_records": args.batch_records,
        "records_acked": report.accepted,
        "failed_connections": report.failed_connections,
        "failures": report.failures,
        "seconds": report.elapsed.as_secs_f64(),
        "records_per_s": (report.accepted as f64 / report.elapsed.as_secs_f64()).round(),
        "ack_latency_ms": { "p50": report.latency_ms(0.5), "p99": report.latency_ms(0.99), "max": report.latency_ms(1.0) },
        "node_peak_rss_bytes": peak_rss(node.id()),
        "node_cpu_seconds": cpu_seconds(node.id()),
    });
    drop(node);
    Ok(result)
}

/// The reference data of `args.topology`, and the load's runtime.
fn setup(
    args: &IngestBenchArgs,
) -> anyhow::Result<(Arc<crate::reference::Reference>, tokio::runtime::Runtime)> {
    let topo =
        crate::topology::Topology::load(&args.topology).map_err(|p| anyhow::anyhow!("{p:?}"))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    Ok((Arc::new(topo.reference), runtime))
}

/// Records acknowledged per second, and per CPU second of the edge.
pub type Rates = (f64, f64);

/// The [`Rates`] of one run's report.
fn rates(v: &serde_json::Value) -> Rates {
    let records = v["records_acked"].as_f64().unwrap_or(0.0);
    let cpu = v["node_cpu_seconds"].as_f64().unwrap_or(0.0);
    (
        v["records_per_s"].as_f64().unwrap_or(0.0),
        records / cpu.max(1e-9),
    )
}

/// A contender of [`compare`]: for run `n` in a directory of its own, the
/// topology lines to add to the edge, and a check to run once the edge
/// has stopped.
pub type Contender<'a> = dyn FnMut(usize, &Path) -> anyhow::Result<(String, Box<dyn FnOnce() -> anyhow::Result<()>>)>
    + 'a;

/// The edge plain and as `contender` makes it, interleaved, `runs` times
/// each: (records per second, per edge CPU second) of every run.
pub fn compare(
    args: &IngestBenchArgs,
    dir: &Path,
    runs: usize,
    contender: &mut Contender<'_>,
) -> anyhow::Result<(Vec<Rates>, Vec<Rates>)> {
    let (reference, runtime) = setup(args)?;
    let (mut plain, mut with) = (Vec::new(), Vec::new());
    for run in 0..runs.max(1) {
        let plain_dir = dir.join(format!("plain-{run}"));
        plain.push(rates(&load_once(
            args,
            &plain_dir,
            "",
            reference.clone(),
            &runtime,
        )?));
        let (extra, check) = contender(run, &dir.join(format!("other-{run}")))?;
        let with_dir = dir.join(format!("with-{run}"));
        with.push(rates(&load_once(
            args,
            &with_dir,
            &extra,
            reference.clone(),
            &runtime,
        )?));
        check()?;
    }
    Ok((plain, with))
}

/// `--central`: the edge without and with a central sink, interleaved.
fn central_comparison(args: &IngestBenchArgs, dir: &Path) -> anyhow::Result<serde_json::Value> {
    // Per edge CPU second too: central shares this machine's cores, which
    // a real central does not.
    let pushed = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let (plain, pushing) = compare(args, dir, args.runs, &mut |_, central_dir| {
        let (central, to, ca) = spawn_central(central_dir, &args.topology, "")?;
        let central_dir = central_dir.to_owned();
        let pushed = pushed.clone();
        let check = move || {
            // The edge drained its pushes as it stopped; central's files
            // then say how far it got (proof that the edge did push).
            drop(central);
            let edges = std::fs::read_to_string(central_dir.join("out/edges.csv"))
                .context("central wrote no edges.csv: did the edge push?")?;
            let mark = edges
                .lines()
                .find_map(|l| l.strip_prefix("bench-edge,"))
                .and_then(|rest| rest.split(',').next()?.parse::<u64>().ok())
                .unwrap_or(0);
            anyhow::ensure!(
                mark > 0,
                "central has no pushed watermark from the edge:\n{edges}"
            );
            pushed.borrow_mut().push(mark);
            Ok(())
        };
        Ok((
            central_sink(to, &ca),
            Box::new(check) as Box<dyn FnOnce() -> anyhow::Result<()>>,
        ))
    })?;
    let (p, c) = (
        median(plain.iter().map(|r| r.0)),
        median(pushing.iter().map(|r| r.0)),
    );
    let (pc, cc) = (
        median(plain.iter().map(|r| r.1)),
        median(pushing.iter().map(|r| r.1)),
    );
    let ratio = |a: f64, b: f64| (a / b.max(1e-9) * 1000.0).round() / 1000.0;
    Ok(serde_json::json!({
        "mode": "central",
        "connections": args.connections,
        "batch_records": args.batch_records,
        "without_central_records_per_s": p.round(),
        "with_central_records_per_s": c.round(),
        "ratio": ratio(c, p),
        "without_central_records_per_edge_cpu_s": pc.round(),
        "with_central_records_per_edge_cpu_s": cc.round(),
        "cpu_ratio": ratio(cc, pc),
        "runs_without": plain.iter().map(|r| r.0.round()).collect::<Vec<_>>(),
        "runs_with": pushing.iter().map(|r| r.0.round()).collect::<Vec<_>>(),
        "central_pushed_watermarks_ms": *pushed.borrow(),
    }))
}

/// `--metrics`: the edge without and with `[observability]`, scraped
/// every second, interleaved.
fn metrics_comparison(args: &IngestBenchArgs, dir: &Path) -> anyhow::Result<serde_json::Value> {
    let scrapes = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let (plain, scraped) = compare(args, dir, args.runs, &mut |_, _| {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let scraper = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut ok, mut bytes) = (0u64, 0usize);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Ok((200, body)) =
                        crate::observe::http::get(port, "/metrics", Duration::from_secs(5))
                    {
                        ok += 1;
                        bytes = body.len();
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
                (ok, bytes)
            })
        };
        let scrapes = scrapes.clone();
        let check = move || {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let (ok, bytes) = scraper
                .join()
                .map_err(|_| anyhow::anyhow!("the scraper panicked"))?;
            anyhow::ensure!(ok > 0, "no scrape of {port} succeeded");
            scrapes.borrow_mut().push((ok, bytes));
            Ok(())
        };
        Ok((
            format!("\n[observability]\nlisten = \"{port}\"\n"),
            Box::new(check) as Box<dyn FnOnce() -> anyhow::Result<()>>,
        ))
    })?;
    let (p, m) = (
        median(plain.iter().map(|r| r.0)),
        median(scraped.iter().map(|r| r.0)),
    );
    let ratio = |a: f64, b: f64| (a / b.max(1e-9) * 1000.0).round() / 1000.0;
    Ok(serde_json::json!({
        "mode": "metrics",
        "connections": args.connections,
        "batch_records": args.batch_records,
        "without_metrics_records_per_s": p.round(),
        "with_metrics_records_per_s": m.round(),
        "ratio": ratio(m, p),
        "cpu_ratio": ratio(median(scraped.iter().map(|r| r.1)), median(plain.iter().map(|r| r.1))),
        "runs_without": plain.iter().map(|r| r.0.round()).collect::<Vec<_>>(),
        "runs_with": scraped.iter().map(|r| r.0.round()).collect::<Vec<_>>(),
        "scrapes_and_exposition_bytes": *scrapes.borrow(),
    }))
}

/// Runs the benchmark; returns the JSON report.
pub fn run(args: &IngestBenchArgs) -> anyhow::Result<serde_json::Value> {
    let scratch = Scratch::new("bench-ingest")?;
    let dir = scratch.path();
    let (reference, runtime) = setup(args)?;
    if let Some(n) = args.idle {
        let (node, addr, ca) = spawn_node(dir, &args.topology, "")?;
        let target = SendOptions {
            sender: "bench".into(),
            ..SendOptions::new(addr, "localhost", ca, TOKEN)
        };
        let held = runtime.block_on(super::loadgen::idle(&target, n, Duration::from_secs(3)))?;
        Ok(
            serde_json::json!({ "mode": "idle", "idle_connections": held, "node_peak_rss_bytes": peak_rss(node.id()) }),
        )
    } else if args.central {
        central_comparison(args, dir)
    } else if args.metrics {
        metrics_comparison(args, dir)
    } else {
        load_once(args, dir, "", reference, &runtime)
    }
}
