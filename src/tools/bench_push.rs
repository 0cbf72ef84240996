//! `edgeflow bench-push`: a central node (real QUIC, durable log) fed by
//! edges' push tasks ([`crate::push::client::Pusher`], the edge's own code),
//! all in this process. Two figures:
//!
//! - **live**: central up, every edge handed its updates at once: updates
//!   acknowledged and applied by central's dataflow per second, start to
//!   last applied.
//! - **outage**: central down while the edges are handed the same load (a
//!   backlog, as after an outage), then started: seconds from its start
//!   until the backlog is applied (the edges' reconnect backoff included).
//!
//! - **end to end**: an edge and central as processes of their own, the edge
//!   ingesting wall-clock telemetry (`--background` records/s) and a probe
//!   sending one report every 200 ms to a segment nothing else touches; an
//!   operator subscribed to central's provisional congestion feed for that
//!   segment. Latency of a probe: from the moment it is sent to the edge to
//!   the moment central's feed shows a sample count that includes it.
//!
//! Every edge reports every segment of the Karhula network in every
//! window (as edges whose vehicles cross between them do), so central
//! merges `edges` partials per (segment, window); windows advance as the
//! load goes, so central finalizes and retires them as it would live.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::measure::{median, quantile, Scratch};
use crate::dataflow::emit::Status;
use crate::dataflow::partials::{PartialEmission, PartialKey, PartialKind, PartialValue};
use crate::node::central::EdgeMarks;
use crate::partial::sketch::Sketch;
use crate::partial::CongestionPartial;
use crate::push::client::{PushStatus, Pusher};
use crate::topology::{CentralSink, Topology};

/// Options of `edgeflow bench-push`.
#[derive(Debug, Clone, clap::Args)]
pub struct PushBenchArgs {
    /// Edges pushing.
    #[arg(long, default_value_t = 10)]
    pub edges: usize,
    /// Updates in all (spread over the edges, every segment per window).
    #[arg(long, default_value_t = 600_000)]
    pub updates: u64,
    /// Central's dataflow workers.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Measured runs of each phase (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Topology with the reference data.
    #[arg(long, default_value = "topologies/karhula.toml")]
    pub topology: std::path::PathBuf,
    /// End to end: seconds of probing per run.
    #[arg(long, default_value_t = 20)]
    pub latency_seconds: u64,
    /// End to end: the edge's background load, records/s.
    #[arg(long, default_value_t = 20_000)]
    pub background: u64,
}

/// The central operator's token of the end-to-end phase.
const OPERATOR: &str = "bench-push-operator";

const KEY: &str = "7e57000000000000000000000000000000000000000000000000000000000001";

fn token(edge: usize) -> String {
    format!("bench-push-token-{edge}")
}

/// Central's topology in `dir`, listening on `port`.
fn central_text(args: &PushBenchArgs, dir: &Path, port: u16) -> anyhow::Result<String> {
    let base = std::fs::canonicalize(args.topology.parent().unwrap_or(Path::new(".")))?;
    let mut text = format!(
        "[node]\nid = \"bench-central\"\n[reference]\nroads = \"{}\"\nchargers = \"{}\"\n[windows]\n\
         [central]\nstraggler_timeout = \"1d\"\n[privacy]\nvehicle_hash_key = \"{KEY}\"\n\
         [ingest]\nlisten = \"127.0.0.1:{port}\"\ncert = \"certs/server.pem\"\nkey = \"certs/server.key\"\n\
         [log]\ndir = \"{}\"\n[[sink]]\ntype = \"files\"\ndir = \"out\"\n",
        base.join("karhula/roads.geojson").display(),
        base.join("karhula/chargers.geojson").display(),
        dir.join("log").display(),
    );
    for e in 0..args.edges {
        text += &format!(
            "[[edge]]\nname = \"edge-{e}\"\ntoken_sha256 = \"{}\"\n",
            hex::encode(crate::wire::token::digest(&token(e)))
        );
    }
    Ok(text)
}

/// Edge `edge`'s share of the load: every segment in every window, in
/// window order, final, with its watermark at the window's end.
fn load(args: &PushBenchArgs, segments: u64, edge: usize) -> Vec<PartialEmission> {
    let per_window = segments * args.edges as u64;
    let windows = args.updates.div_ceil(per_window.max(1));
    let base = 1_767_225_600_000u64;
    let mut out = Vec::new();
    for w in 0..windows {
        let window = base + w * 60_000;
        for s in 0..segments {
            let hashes = (0..3u64).map(|i| (s << 20) ^ (w << 40) ^ ((edge as u64) << 8) ^ i);
            out.push(PartialEmission {
                status: Status::Final,
                key: PartialKey {
                    kind: PartialKind::Congestion,
                    key: s,
                    window,
                },
                value: PartialValue::Congestion(CongestionPartial {
                    samples: 3,
                    speed_sum: 30_000_000,
                    vehicles: 3,
                    sketch: Sketch::of(hashes),
                }),
                watermark: window + 60_000,
            });
        }
    }
    out
}

/// Starts the edges' push tasks toward `to`, each handed its whole load.
fn start_edges(
    args: &PushBenchArgs,
    topo: &Topology,
    to: std::net::SocketAddr,
    ca: &Path,
    runtime: &tokio::runtime::Runtime,
) -> (u64, Vec<tokio::task::JoinHandle<()>>, Vec<Arc<PushStatus>>) {
    let reference = Arc::new(topo.reference.clone());
    let segments = reference.roads.len() as u64;
    let (mut total, mut tasks, mut statuses) = (0, Vec::new(), Vec::new());
    for e in 0..args.edges {
        let status = Arc::new(PushStatus::default());
        let pusher = Pusher {
            sink: CentralSink {
                to,
                server_name: "localhost".into(),
                ca: ca.to_owned(),
                token: token(e),
                identity: None,
                // The load spans hours of event time; hold it all.
                max_hold: Duration::from_secs(7 * 86_400),
            },
            sender: format!("edge-{e}"),
            reference: reference.clone(),
            window_ms: topo.time.size_ms,
            hold_until: Arc::new(AtomicU64::new(0)),
            input_watermark: Arc::new(AtomicU64::new(u64::MAX - 1)),
            status: status.clone(),
        };
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let emissions = load(args, segments, e);
        total += emissions.len() as u64;
        for chunk in emissions.chunks(1000) {
            let _ = tx.send(chunk.to_vec());
        }
        drop(tx);
        tasks.push(runtime.spawn(pusher.run(rx)));
        statuses.push(status);
    }
    (total, tasks, statuses)
}

/// Waits until central has taken `total` updates (applied, unchanged or
/// dropped: none should be, the bench's edges all keep pace);
/// the time it took from `since`.
fn applied(edges: &EdgeMarks, total: u64, since: Instant) -> anyhow::Result<f64> {
    let until = since + Duration::from_secs(600);
    loop {
        let taken = [
            &edges.applied,
            &edges.unchanged,
            &edges.expired,
            &edges.skipped,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum::<u64>();
        if taken >= total {
            return Ok(since.elapsed().as_secs_f64());
        }
        anyhow::ensure!(
            Instant::now() < until,
            "central took {taken} of {total} updates in 10 minutes"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One run of a phase: (updates, seconds).
fn run_once(args: &PushBenchArgs, outage: bool) -> anyhow::Result<(u64, f64)> {
    let dir = Scratch::new("bench-push")?;
    let certs = crate::node::make_certs(&dir.path().join("certs"), &["localhost".into()])?;
    let port = std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let path = dir.path().join("central.toml");
    std::fs::write(&path, central_text(args, dir.path(), port)?)?;
    let topo = Topology::load(&path).map_err(|p| anyhow::anyhow!("{p:?}"))?;
    let to = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let start = |topo: Topology| crate::node::start_central(topo, args.workers.max(1));
    let (central, total, tasks, since) = if outage {
        // The edges hold their backlog while central is away.
        let (total, tasks, statuses) = start_edges(args, &topo, to, &certs.ca, &runtime);
        std::thread::sleep(Duration::from_secs(2));
        anyhow::ensure!(statuses
            .iter()
            .all(|s| s.batches.load(Ordering::Relaxed) == 0));
        let since = Instant::now();
        (start(topo)?, total, tasks, since)
    } else {
        let central = start(topo.clone())?;
        let since = Instant::now();
        let (total, tasks, _) = start_edges(args, &topo, to, &certs.ca, &runtime);
        (central, total, tasks, since)
    };
    let edges = central
        .edges
        .clone()
        .ok_or_else(|| anyhow::anyhow!("not central"))?;
    let seconds = applied(&edges, total, since)?;
    let dropped = edges.expired.load(Ordering::Relaxed) + edges.skipped.load(Ordering::Relaxed);
    anyhow::ensure!(
        dropped == 0,
        "central dropped {dropped} of {total} updates as expired or skipped"
    );
    runtime.block_on(async {
        for t in tasks {
            let _ = t.await;
        }
    });
    central.shutdown()?;
    Ok((total, seconds))
}

/// Probes sent in `window` so far: (window start, count in it, when sent).
type Probe = (u64, u64, Instant);

/// One end-to-end run: each probe's latency, ms, and probes never seen.
fn end_to_end_once(args: &PushBenchArgs) -> anyhow::Result<(Vec<f64>, usize)> {
    use super::bench_ingest::{central_sink, spawn_central, spawn_node, TOKEN};
    use crate::ingest::client::{connect, send_batch, SendOptions};
    use crate::model::{Record, VehicleReport};
    use crate::subscribe::client::{subscribe, SubscribeOptions};
    use crate::subscribe::proto::{Filter, SubFrame};

    let dir = Scratch::new("bench-push")?;
    let operator = format!(
        "[[operator]]\nname = \"bench\"\ntoken_sha256 = \"{}\"\n",
        hex::encode(crate::wire::token::digest(OPERATOR))
    );
    let (central, central_addr, central_ca) =
        spawn_central(&dir.path().join("central"), &args.topology, &operator)?;
    let (edge, edge_addr, edge_ca) = spawn_node(
        &dir.path().join("edge"),
        &args.topology,
        &central_sink(central_addr, &central_ca),
    )?;
    let topo = Topology::load(&args.topology).map_err(|p| anyhow::anyhow!("{p:?}"))?;
    // The probe's segment is the last; the background load has the others.
    let mut background = topo.reference.clone();
    let probe = background
        .roads
        .pop()
        .ok_or_else(|| anyhow::anyhow!("no roads"))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let seen: Arc<std::sync::Mutex<Vec<(u64, u64, Instant)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let mut request = SubscribeOptions::request(OPERATOR, "congestion");
        request.mode = "provisional".into();
        request.filter = Some(Filter {
            ids: Some(vec![probe.id.to_string()]),
            bbox: None,
        });
        let opts = SubscribeOptions {
            identity: None,
            to: central_addr,
            server_name: "localhost".into(),
            ca: central_ca.clone(),
            request,
        };
        let (seen, stop) = (seen.clone(), stop.clone());
        runtime.spawn(async move {
            subscribe(&opts, |frame| {
                if let SubFrame::Row(row) = frame {
                    let samples = row.value.as_ref().and_then(|v| v.get("samples")?.as_u64());
                    if let Some(samples) = samples {
                        if let Ok(mut seen) = seen.lock() {
                            seen.push((row.window_start_ms, samples, Instant::now()));
                        }
                    }
                }
                !stop.load(Ordering::Relaxed)
            })
            .await
        })
    };
    let target = SendOptions {
        sender: "bench".into(),
        ..SendOptions::new(edge_addr, "localhost", edge_ca.clone(), TOKEN)
    };
    let load = super::loadgen::Load {
        target: target.clone(),
        connections: 10,
        // 10 connections x 10 batches/s.
        batch_records: (args.background / 100).max(1) as usize,
        batches: None,
        duration: Duration::from_secs(args.latency_seconds + 2),
        interval: Some(Duration::from_millis(100)),
        window: 4,
    };
    let loader =
        runtime.spawn(async move { super::loadgen::run(&load, Arc::new(background)).await });
    let probes: Vec<Probe> = runtime.block_on(async {
        let mut endpoint = quinn::Endpoint::client("0.0.0.0:0".parse()?)?;
        endpoint.set_default_client_config(crate::wire::tls::client_config(
            &edge_ca,
            None,
            crate::ingest::frame::ALPN,
        )?);
        let probe_target = SendOptions {
            sender: "bench-probe".into(),
            ..target.clone()
        };
        let (conn, _control, mut seq) = connect(&endpoint, &probe_target).await?;
        let mut probes = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let until = Instant::now() + Duration::from_secs(args.latency_seconds);
        let window_ms = topo.time.size_ms.max(1);
        while Instant::now() < until {
            tick.tick().await;
            let ts = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_millis() as u64;
            let record = Record::Vehicle(VehicleReport {
                vehicle_id: format!("probe-{seq}").into(),
                ts_ms: ts,
                lat: probe.line[0][1],
                lon: probe.line[0][0],
                speed_mps: probe.free_flow_mps,
                heading_deg: None,
                segment_id: Some(probe.id.as_str().into()),
                ev: None,
            });
            let window = ts / window_ms * window_ms;
            let n = match probes.last() {
                Some(&(w, n, _)) if w == window => n + 1,
                _ => 1,
            };
            let sent = Instant::now();
            let records = bytes::Bytes::from(crate::codec::encode_cbor(&record));
            send_batch(
                conn.open_bi().await?,
                seq,
                crate::log::Encoding::Cbor,
                records,
            )
            .await?;
            probes.push((window, n, sent));
            seq += 1;
        }
        anyhow::Ok(probes)
    })?;
    // Late arrivals get a few seconds.
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let _ = runtime.block_on(loader);
    drop(edge);
    drop(central);
    let _ = runtime.block_on(watcher);
    let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
    let mut latencies = Vec::new();
    let mut missed = 0;
    for (window, n, sent) in probes {
        let arrival = seen
            .iter()
            .filter(|(w, samples, at)| *w == window && *samples >= n && *at >= sent)
            .map(|(_, _, at)| *at)
            .min();
        match arrival {
            Some(at) => latencies.push((at - sent).as_secs_f64() * 1000.0),
            None => missed += 1,
        }
    }
    Ok((latencies, missed))
}

/// Runs the benchmark; returns its JSON report.
pub fn run(args: &PushBenchArgs) -> anyhow::Result<serde_json::Value> {
    let mut phases = serde_json::Map::new();
    for (name, outage) in [("live", false), ("outage", true)] {
        let mut rates = Vec::new();
        let mut seconds = Vec::new();
        let mut updates = 0;
        for _ in 0..args.runs.max(1) {
            let (n, s) = run_once(args, outage)?;
            updates = n;
            rates.push(n as f64 / s.max(1e-9));
            seconds.push(s);
        }
        phases.insert(
            name.into(),
            json!({
                "updates": updates,
                "updates_per_s": median(rates.iter().copied()).round(),
                "seconds": (median(seconds.iter().copied()) * 100.0).round() / 100.0,
                "runs_updates_per_s": rates.iter().map(|r| r.round()).collect::<Vec<_>>(),
            }),
        );
    }
    let (mut p50, mut p99, mut max, mut missed) = (Vec::new(), Vec::new(), Vec::new(), 0);
    for _ in 0..args.runs.max(1) {
        let (mut latencies, lost) = end_to_end_once(args)?;
        latencies.sort_by(f64::total_cmp);
        anyhow::ensure!(!latencies.is_empty(), "no probe reached central's feed");
        p50.push(quantile(&latencies, 0.5));
        p99.push(quantile(&latencies, 0.99));
        max.push(quantile(&latencies, 1.0));
        missed += lost;
    }
    let ms = |v: &[f64]| (median(v.iter().copied()) * 10.0).round() / 10.0;
    phases.insert(
        "end_to_end".into(),
        json!({
            "background_records_per_s": args.background,
            "probes_per_run": args.latency_seconds * 5,
            "latency_ms": { "p50": ms(&p50), "p99": ms(&p99), "max": ms(&max) },
            "runs_p99_ms": p99.iter().map(|v| v.round()).collect::<Vec<_>>(),
            "probes_never_seen": missed,
        }),
    );
    Ok(json!({
        "edges": args.edges,
        "central_workers": args.workers,
        "phases": phases,
    }))
}
