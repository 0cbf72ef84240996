//! `edgeflow bench-subscribe`: subscriptions under ingest load.
//!
//! Each phase starts a fresh node (its own process, durable log) and feeds
//! it synthetic telemetry at a fixed rate over QUIC (wall-clock stamped, so
//! provisional windows update every second):
//!
//! 1. no subscribers: the ingest baseline;
//! 2. `subscribers` operators on the full congestion feed, provisional;
//! 3. the same plus one subscriber reading at about 1 % of the others' rate.
//!
//! The three phases run `--rounds` times in turn; the report gives every
//! phase, the medians over rounds, and the ratios of those medians.
//!
//! Reported per phase: records/s acknowledged, and for subscribers the p50
//! and p99 of the time from the hub publishing a batch of changes (the
//! `published_unix_us` of each progress marker, taken when the dataflow
//! emits) to its arrival, on the same clock; the node's peak RSS.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use sha2::{Digest, Sha256};

use super::bench_ingest::{spawn_node, TOKEN};
use super::loadgen::Load;
use super::measure::{median, peak_rss};
use crate::subscribe::client::{subscribe_raw, SubscribeOptions};
use crate::subscribe::hub::now_us;
use crate::subscribe::proto::{kind, Progress, SubFrame, ALPN};

const OPERATOR: &str = "edgeflow-bench-operator";

/// Options of `edgeflow bench-subscribe`.
#[derive(Debug, Clone, clap::Args)]
pub struct SubscribeBenchArgs {
    /// Subscribers on the full congestion feed.
    #[arg(long, default_value_t = 100)]
    pub subscribers: usize,
    /// Ingest rate to offer, records/s.
    #[arg(long, default_value_t = 200_000)]
    pub rate: u64,
    /// Seconds of load per phase.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Ingest connections.
    #[arg(long, default_value_t = 10)]
    pub connections: usize,
    /// Records per batch.
    #[arg(long, default_value_t = 1000)]
    pub batch_records: usize,
    /// Topology with the reference data.
    #[arg(long, default_value = "topologies/karhula.toml")]
    pub topology: std::path::PathBuf,
    /// Rounds of the three phases (medians over rounds are reported).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
}

#[derive(Default)]
struct Latencies {
    us: Mutex<Vec<u64>>,
    rows: AtomicU64,
}

impl Latencies {
    fn quantile_ms(&self, q: f64) -> f64 {
        let Ok(mut v) = self.us.lock() else {
            return 0.0;
        };
        if v.is_empty() {
            return 0.0;
        }
        v.sort_unstable();
        v[((v.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0
    }
}

/// A subscriber that reads about 1 KiB per 100 ms (a client far behind).
async fn slow_reader(opts: SubscribeOptions, stop: Arc<AtomicBool>, read: Arc<AtomicU64>) {
    let Ok(mut endpoint) = quinn::Endpoint::client((std::net::Ipv4Addr::LOCALHOST, 0).into())
    else {
        return;
    };
    let Ok(config) = crate::wire::tls::client_config(&opts.ca, None, ALPN) else {
        return;
    };
    endpoint.set_default_client_config(config);
    let Ok(connecting) = endpoint.connect(opts.to, &opts.server_name) else {
        return;
    };
    let Ok(conn) = connecting.await else { return };
    let Ok((mut send, mut recv)) = conn.open_bi().await else {
        return;
    };
    let mut buf = BytesMut::new();
    SubFrame::Subscribe(opts.request.clone()).encode(&mut buf);
    if send.write_all(&buf).await.is_err() {
        return;
    }
    let mut chunk = vec![0u8; 1024];
    while !stop.load(Ordering::Relaxed) {
        match recv.read(&mut chunk).await {
            Ok(Some(n)) => {
                read.fetch_add(n as u64, Ordering::Relaxed);
            }
            _ => break,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One phase on a fresh node.
fn phase(
    args: &SubscribeBenchArgs,
    subscribers: usize,
    slow: bool,
) -> anyhow::Result<serde_json::Value> {
    let dir = std::env::temp_dir().join(format!(
        "edgeflow-bench-subscribe-{}-{subscribers}-{slow}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir)?;
    let extra = format!(
        "[[operator]]\nname = \"bench\"\ntoken_sha256 = \"{}\"\n[privacy]\nmin_vehicles = 1\n",
        hex::encode(Sha256::digest(OPERATOR.as_bytes()))
    );
    let result = (|| {
        let (node, addr, ca) = spawn_node(&dir, &args.topology, &extra)?;
        let topo = crate::topology::Topology::load(&args.topology)
            .map_err(|p| anyhow::anyhow!("{p:?}"))?;
        let reference = Arc::new(topo.reference);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let stop = Arc::new(AtomicBool::new(false));
        let latencies = Arc::new(Latencies::default());
        let mut request = SubscribeOptions::request(OPERATOR, "congestion");
        request.mode = "provisional".into();
        let opts = SubscribeOptions {
            identity: None,
            to: addr,
            server_name: "localhost".into(),
            ca: ca.clone(),
            request,
        };
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let mut tasks = Vec::new();
        for _ in 0..subscribers {
            let (opts, stop, lat, ready) = (
                opts.clone(),
                stop.clone(),
                latencies.clone(),
                ready_tx.clone(),
            );
            tasks.push(runtime.spawn(async move {
                let mut told = false;
                let _ = subscribe_raw(&opts, |t, payload| {
                    // Only progress markers are decoded: the measure is
                    // delivery, not a client's JSON parsing.
                    if t == kind::ROW {
                        lat.rows.fetch_add(1, Ordering::Relaxed);
                    } else if t == kind::PROGRESS {
                        if let Ok(p) = serde_json::from_slice::<Progress>(payload) {
                            if p.snapshot && !told {
                                told = true;
                                let _ = ready.send(());
                            } else if p.published_unix_us > 0 {
                                if let Ok(mut v) = lat.us.lock() {
                                    v.push(now_us().saturating_sub(p.published_unix_us));
                                }
                            }
                        }
                    }
                    !stop.load(Ordering::Relaxed)
                })
                .await;
            }));
        }
        for _ in 0..subscribers {
            ready_rx
                .recv_timeout(Duration::from_secs(30))
                .map_err(|_| anyhow::anyhow!("a subscriber got no snapshot"))?;
        }
        let slow_read = Arc::new(AtomicU64::new(0));
        if slow {
            runtime.spawn(slow_reader(opts.clone(), stop.clone(), slow_read.clone()));
        }
        let load = Load::paced(
            addr,
            ca,
            TOKEN,
            args.connections,
            args.batch_records,
            args.rate,
            Duration::from_secs(args.seconds),
        );
        // Latencies count from the load's start only.
        if let Ok(mut v) = latencies.us.lock() {
            v.clear();
        }
        let report = runtime.block_on(super::loadgen::run(&load, reference))?;
        stop.store(true, Ordering::Relaxed);
        let rss = peak_rss(node.id());
        drop(node);
        runtime.shutdown_timeout(Duration::from_secs(5));
        Ok(serde_json::json!({
            "subscribers": subscribers,
            "slow_subscriber": slow,
            "records_per_s": (report.accepted as f64 / report.elapsed.as_secs_f64()).round(),
            "rows_received": latencies.rows.load(Ordering::Relaxed),
            "latency_ms": {"p50": latencies.quantile_ms(0.5), "p99": latencies.quantile_ms(0.99)},
            "slow_subscriber_bytes_read": slow_read.load(Ordering::Relaxed),
            "node_peak_rss_bytes": rss,
        }))
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Runs the three phases `rounds` times, alternating them so that the
/// machine's drift falls on all three alike; returns the JSON report with
/// every phase and the medians over rounds.
pub fn run(args: &SubscribeBenchArgs) -> anyhow::Result<serde_json::Value> {
    let mut phases: [Vec<serde_json::Value>; 3] = Default::default();
    for _ in 0..args.rounds.max(1) {
        phases[0].push(phase(args, 0, false)?);
        phases[1].push(phase(args, args.subscribers, false)?);
        phases[2].push(phase(args, args.subscribers, true)?);
    }
    let median = |runs: &[serde_json::Value], f: &dyn Fn(&serde_json::Value) -> f64| {
        median(runs.iter().map(f))
    };
    let rate = |v: &serde_json::Value| v["records_per_s"].as_f64().unwrap_or(0.0);
    let p99 = |v: &serde_json::Value| v["latency_ms"]["p99"].as_f64().unwrap_or(0.0);
    let rss = |v: &serde_json::Value| v["node_peak_rss_bytes"].as_f64().unwrap_or(0.0);
    let per_round = |a: usize, b: usize, f: &dyn Fn(&serde_json::Value) -> f64| {
        phases[a]
            .iter()
            .zip(&phases[b])
            .map(|(x, y)| f(x) / f(y).max(1e-9))
            .collect::<Vec<_>>()
    };
    let rates: Vec<f64> = phases.iter().map(|p| median(p, &rate)).collect();
    let p99s: Vec<f64> = phases.iter().map(|p| median(p, &p99)).collect();
    Ok(serde_json::json!({
        "offered_records_per_s": args.rate,
        "rounds": args.rounds.max(1),
        "phases": phases,
        "median_records_per_s": {"none": rates[0], "subscribers": rates[1], "with_slow": rates[2]},
        "median_p99_ms": {"subscribers": p99s[1], "with_slow": p99s[2]},
        "median_node_peak_rss_bytes": {
            "none": median(&phases[0], &rss),
            "subscribers": median(&phases[1], &rss),
            "with_slow": median(&phases[2], &rss),
        },
        "ingest_with_subscribers_vs_without": rates[1] / rates[0].max(1.0),
        "ingest_with_subscribers_vs_without_per_round": per_round(1, 0, &rate),
        "p99_with_slow_vs_without": p99s[2] / p99s[1].max(1e-9),
        "p99_with_slow_vs_without_per_round": per_round(2, 1, &p99),
    }))
}
