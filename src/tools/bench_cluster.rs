//! `edgeflow bench-cluster`: one site as several processes (timely's
//! cluster mode) against one process with the same cores.
//!
//! - **Replay, the synthetic city** of `edgeflow bench` (its generator),
//!   split by device into one file per process, as devices spread over a
//!   site's servers. Contenders, each a fresh `bench-one` process (or one
//!   per cluster process), alternating within each round: 1 process x 1
//!   worker (the reference the others must equal, byte for byte, through
//!   the SHA-256 of their CSV tables), 1 process x 2 workers (the baseline
//!   of the ratio), and N processes x 1 worker for each N of
//!   `--processes`. A cluster's time is process 0's dataflow time (it ends
//!   when the last emission is in), after the connection setup, which is
//!   reported apart. Exchange bytes: what every process sent to the others
//!   over timely's connections, per record.
//! - **Live ingest with durable acknowledgements**: one node with 2
//!   workers against a site of 2 processes x 1 worker on loopback, each
//!   process with its own log and listener, the same load generator split
//!   over both (half the connections each). Records acknowledged per
//!   second of the whole load.

use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sha2::{Digest, Sha256};

use super::bench_ingest::{bench_topology, listening_addr, spawn_listening, NodeProcess, TOKEN};
use super::loadgen::Load;
use super::measure::{median, Scratch};
use crate::ingest::client::SendOptions;

/// Options of `edgeflow bench-cluster`.
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterBenchArgs {
    /// Records of the synthetic city (replay).
    #[arg(long, default_value_t = 2_000_000)]
    pub records: u64,
    /// Road segments of the synthetic city.
    #[arg(long, default_value_t = 20_000)]
    pub segments: u32,
    /// Vehicles of the synthetic city.
    #[arg(long, default_value_t = 5_000)]
    pub vehicles: u32,
    /// Process counts to measure (1 worker each), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "2,4")]
    pub processes: Vec<usize>,
    /// Rounds; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Live ingest: connections of the load (split over the processes).
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// Live ingest: batches per connection.
    #[arg(long, default_value_t = 150)]
    pub batches: u64,
    /// Live ingest: records per batch.
    #[arg(long, default_value_t = 1000)]
    pub batch_records: usize,
    /// The topology whose road network the live nodes load.
    #[arg(long, default_value = "topologies/karhula.toml")]
    pub topology: PathBuf,
    /// Skip the live ingest part.
    #[arg(long)]
    pub no_live: bool,
    /// Skip the replay part.
    #[arg(long)]
    pub no_replay: bool,
}

/// Runs the benchmark; returns the JSON report.
pub fn run(args: &ClusterBenchArgs) -> anyhow::Result<serde_json::Value> {
    let scratch = Scratch::new("bench-cluster")?;
    let mut report = serde_json::Map::new();
    if !args.no_replay {
        report.insert("replay".into(), replay(args, scratch.path())?);
    }
    if !args.no_live {
        report.insert("live".into(), live(args, scratch.path())?);
    }
    Ok(report.into())
}

/// `ports` free loopback TCP addresses, for timely's connections.
fn timely_addresses(n: usize) -> anyhow::Result<Vec<String>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.to_string()))
        .collect()
}

/// Splits a JSON Lines recording by device (`vehicle_id` or
/// `charger_id`) into `n` files; returns their paths.
fn split(input: &Path, n: usize, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let paths: Vec<PathBuf> = (0..n)
        .map(|i| dir.join(format!("part-{n}-{i}.jsonl")))
        .collect();
    let mut outs = paths
        .iter()
        .map(|p| Ok(BufWriter::with_capacity(1 << 20, std::fs::File::create(p)?)))
        .collect::<std::io::Result<Vec<_>>>()?;
    let device = |line: &str| {
        ["\"vehicle_id\":\"", "\"charger_id\":\""]
            .iter()
            .find_map(|k| line.split_once(k))
            .and_then(|(_, rest)| rest.split_once('"'))
            .map_or("", |(id, _)| id)
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)))
    };
    let reader = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(input)?);
    for line in reader.lines() {
        let line = line?;
        let out = &mut outs[(device(&line) % n as u64) as usize];
        out.write_all(line.as_bytes())?;
        out.write_all(b"\n")?;
    }
    for mut o in outs {
        o.flush()?;
    }
    Ok(paths)
}

/// What one contender's run measured.
struct Measured {
    records: f64,
    seconds: f64,
    setup: f64,
    exchanged: f64,
    digest: String,
}

/// `bench-one` on `inputs` (one process, or one per cluster process).
fn bench_one(
    args: &ClusterBenchArgs,
    inputs: &[PathBuf],
    workers: usize,
) -> anyhow::Result<Measured> {
    let exe = std::env::current_exe().context("cannot find the edgeflow executable")?;
    let peers = if inputs.len() > 1 {
        timely_addresses(inputs.len())?.join(",")
    } else {
        String::new()
    };
    let children = inputs
        .iter()
        .enumerate()
        .map(|(i, input)| {
            let mut cmd = Command::new(&exe);
            cmd.args(["bench-one", "--mode", "dataflow", "--digest"])
                .args(["--segments", &args.segments.to_string()])
                .args(["--workers", &workers.to_string(), "--input"])
                .arg(input)
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit());
            if inputs.len() > 1 {
                cmd.args(["--process", &i.to_string(), "--peers", &peers]);
            }
            cmd.spawn().context("cannot start a measured process")
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut outs = Vec::new();
    for child in children {
        let out = child.wait_with_output()?;
        anyhow::ensure!(
            out.status.success(),
            "a measured process failed: {}",
            out.status
        );
        // Its last line: timely prints its connection progress on stdout.
        let stdout = String::from_utf8_lossy(&out.stdout);
        let last = stdout
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .unwrap_or("");
        let v: serde_json::Value =
            serde_json::from_str(last).context("a measured process printed no JSON")?;
        outs.push(v);
    }
    let f = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(0.0);
    let first = &outs[0];
    Ok(Measured {
        records: outs.iter().map(|v| f(v, "records")).sum(),
        seconds: f(first, "dataflow_seconds"),
        setup: f(first, "seconds") - f(first, "dataflow_seconds"),
        exchanged: outs.iter().map(|v| f(v, "exchanged_bytes")).sum(),
        digest: first["digest"].as_str().unwrap_or_default().to_owned(),
    })
}

fn replay(args: &ClusterBenchArgs, dir: &Path) -> anyhow::Result<serde_json::Value> {
    let whole = dir.join("city.jsonl");
    super::bench::generate(
        &super::bench::BenchArgs {
            records: args.records,
            segments: args.segments,
            vehicles: args.vehicles,
            workers: vec![1],
            runs: 1,
            dir: None,
            push: false,
        },
        &whole,
    )?;
    let mut contenders: Vec<(String, Vec<PathBuf>, usize)> = vec![
        ("1x1".into(), vec![whole.clone()], 1),
        ("1x2".into(), vec![whole.clone()], 2),
    ];
    for &n in &args.processes {
        anyhow::ensure!(n >= 2, "--processes: a cluster has at least 2 processes");
        contenders.push((format!("{n}x1"), split(&whole, n, dir)?, 1));
    }
    let mut runs: Vec<Vec<Measured>> = contenders.iter().map(|_| Vec::new()).collect();
    for _ in 0..args.runs.max(1) {
        for ((_, inputs, workers), runs) in contenders.iter().zip(&mut runs) {
            runs.push(bench_one(args, inputs, *workers)?);
        }
    }
    let reference = runs[0][0].digest.clone();
    let mut out = serde_json::Map::new();
    let baseline = median(runs[1].iter().map(|m| m.records / m.seconds));
    for ((name, inputs, workers), runs) in contenders.iter().zip(&runs) {
        let rate = median(runs.iter().map(|m| m.records / m.seconds));
        let identical = runs
            .iter()
            .all(|m| m.digest == reference && !m.digest.is_empty());
        anyhow::ensure!(
            identical,
            "{name}: the final tables differ from 1 process x 1 worker"
        );
        let records = runs[0].records.max(1.0);
        out.insert(
            name.clone(),
            serde_json::json!({
                "processes": inputs.len(),
                "workers_per_process": workers,
                "records_per_s": rate.round(),
                "ratio_to_1x2": (rate / baseline.max(1e-9) * 1000.0).round() / 1000.0,
                "setup_s": (median(runs.iter().map(|m| m.setup)) * 100.0).round() / 100.0,
                "exchanged_bytes_per_record": (median(runs.iter().map(|m| m.exchanged)) / records * 10.0).round() / 10.0,
                "runs_records_per_s": runs.iter().map(|m| (m.records / m.seconds).round()).collect::<Vec<_>>(),
                "identical_to_1x1": identical,
            }),
        );
    }
    out.insert("records".into(), args.records.into());
    out.insert("segments".into(), args.segments.into());
    out.insert("vehicles".into(), args.vehicles.into());
    out.insert("digest".into(), reference.into());
    Ok(out.into())
}

/// Starts the processes of a site (`[cluster]` with `texts.len()`
/// processes, each `texts[i]` its topology): all at once, since each
/// listens once all are connected; returns them with their addresses.
fn start_site(
    exe: &Path,
    dir: &Path,
    topology: &Path,
    n: usize,
) -> anyhow::Result<(Site, Vec<Target>)> {
    let peers = timely_addresses(n)?;
    let list = peers
        .iter()
        .map(|p| format!("\"{p}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let (mut site, mut listening) = (Site(Vec::new()), Vec::new());
    for i in 0..n {
        let rest = format!(
            "[dataflow]\nworkers = 1\n[[fleet]]\nname = \"bench\"\ntoken_sha256 = \"{}\"\n[cluster]\nprocesses = [{list}]\n",
            hex::encode(Sha256::digest(TOKEN.as_bytes())),
        );
        let ingest = "max_connections = 20000\nmax_records_per_s = 10000000\n";
        let (path, ca) =
            bench_topology(&dir.join(format!("p{i}")), topology, "edge", ingest, &rest)?;
        let mut command = Command::new(exe);
        command
            .args(["edge", "--no-watch", "--topology"])
            .arg(&path)
            .env("EDGEFLOW_PROCESS", i.to_string())
            .stdout(Stdio::null());
        let (child, l) = spawn_listening(command)?;
        site.0.push(NodeProcess(child));
        listening.push((l, ca));
    }
    let mut addrs = Vec::new();
    for (node, (l, ca)) in site.0.iter_mut().zip(listening) {
        let addr =
            listening_addr(&mut node.0, &l).context("a process of the site did not listen")?;
        addrs.push((addr, ca));
    }
    Ok((site, addrs))
}

/// The processes of a site, stopped together when dropped: all are asked
/// first, then waited for, since each process's dataflow ends only once
/// the others' inputs have ended too.
struct Site(Vec<NodeProcess>);

impl Drop for Site {
    fn drop(&mut self) {
        for p in &self.0 {
            p.terminate();
        }
    }
}

/// A process's ingest address and the CA of its certificate.
type Target = (std::net::SocketAddr, PathBuf);

/// Acknowledged records per second of `connections` split over `addrs`
/// (each with the CA of its certificate).
fn load(
    args: &ClusterBenchArgs,
    addrs: &[Target],
    reference: &Arc<crate::reference::Reference>,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<f64> {
    let per = (args.connections / addrs.len()).max(1);
    let loads: Vec<Load> = addrs
        .iter()
        .enumerate()
        .map(|(i, (addr, ca))| Load {
            target: SendOptions {
                sender: format!("bench-{i}"),
                batch_lines: args.batch_records,
                window: 8,
                ..SendOptions::new(*addr, "localhost", ca.clone(), TOKEN)
            },
            connections: per,
            batch_records: args.batch_records,
            batches: Some(args.batches),
            duration: Duration::from_secs(300),
            interval: None,
            window: 8,
        })
        .collect();
    let reports = runtime.block_on(async {
        let tasks: Vec<_> = (loads.into_iter())
            .map(|l| {
                let reference = reference.clone();
                tokio::spawn(async move { super::loadgen::run(&l, reference).await })
            })
            .collect();
        let mut reports = Vec::new();
        for t in tasks {
            reports.push(
                t.await
                    .map_err(|e| anyhow::anyhow!("load task: {e}"))
                    .and_then(|r| r),
            );
        }
        reports
    });
    let (mut accepted, mut seconds) = (0u64, 0f64);
    for r in reports {
        let r = r?;
        anyhow::ensure!(
            r.failed_connections == 0,
            "connections failed: {:?}",
            r.failures
        );
        accepted += r.accepted;
        seconds = seconds.max(r.elapsed.as_secs_f64());
    }
    Ok(accepted as f64 / seconds.max(1e-9))
}

fn live(args: &ClusterBenchArgs, dir: &Path) -> anyhow::Result<serde_json::Value> {
    let exe = std::env::current_exe()?;
    let topo = crate::topology::Topology::load(&args.topology)
        .map_err(|p| anyhow::anyhow!("{}: {p:?}", args.topology.display()))?;
    let reference = Arc::new(topo.reference);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let (mut single, mut site) = (Vec::new(), Vec::new());
    for run in 0..args.runs.max(1) {
        let one = dir.join(format!("live-single-{run}"));
        let rest = format!(
            "[dataflow]\nworkers = 2\n[[fleet]]\nname = \"bench\"\ntoken_sha256 = \"{}\"\n",
            hex::encode(Sha256::digest(TOKEN.as_bytes())),
        );
        let ingest = "max_connections = 20000\nmax_records_per_s = 10000000\n";
        let (path, ca) = bench_topology(&one, &args.topology, "edge", ingest, &rest)?;
        let (child, addr) = super::bench_ingest::spawn_edge_process(&exe, &path)?;
        let node = NodeProcess(child);
        single.push(load(args, &[(addr, ca)], &reference, &runtime)?);
        drop(node);
        let (nodes, addrs) = start_site(
            &exe,
            &dir.join(format!("live-site-{run}")),
            &args.topology,
            2,
        )?;
        site.push(load(args, &addrs, &reference, &runtime)?);
        drop(nodes);
    }
    let (s, c) = (median(single.iter().copied()), median(site.iter().copied()));
    Ok(serde_json::json!({
        "connections": args.connections,
        "batch_records": args.batch_records,
        "batches_per_connection": args.batches,
        "one_process_2_workers_records_per_s": s.round(),
        "two_processes_1_worker_records_per_s": c.round(),
        "ratio": (c / s.max(1e-9) * 1000.0).round() / 1000.0,
        "runs_one_process": single.iter().map(|r| r.round()).collect::<Vec<_>>(),
        "runs_two_processes": site.iter().map(|r| r.round()).collect::<Vec<_>>(),
    }))
}
