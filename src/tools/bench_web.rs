//! `edgeflow bench-web`: the live map under load.
//!
//! A synthetic city of about 20,000 road segments (a street grid, both
//! carriageways) and a node process with `[web]`:
//!
//! 1. **The page**: headless Chromium opens the map; synthetic telemetry
//!    at `--rate` records/s over random segments updates nearly every
//!    segment every second. Reported from the page's own clock: the
//!    frame-to-frame interval while the map changes (p50, p95), the time
//!    to draw a frame and to apply an update, and the publish-to-page
//!    latency.
//! 2. **The node's cost**: acknowledged records/s under saturating load
//!    (as fast as acknowledged), without pages and with `--pages` pages'
//!    feeds open (HTTP clients reading the whole Server-Sent Events feed,
//!    as a page does, on a thread of their own beside the load
//!    generator's; a browser per page would measure the machine's
//!    browsers, not the node). Alternated `--rounds` times; medians, their
//!    ratio and the median of each round's ratio. Also the node's CPU time
//!    per acknowledged record in each run (from `/proc`), which shows the
//!    pages' cost on the node without the noise of a shared machine's
//!    clock.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::bench_ingest::{spawn_node, TOKEN};
use super::loadgen::Load;
use super::measure::{cpu_seconds, median, quantile};

const OPERATOR: &str = "edgeflow-bench-web-operator";

/// Options of `edgeflow bench-web`.
#[derive(Debug, Clone, clap::Args)]
pub struct WebBenchArgs {
    /// Junctions per side of the synthetic street grid (71: 19,880
    /// segments).
    #[arg(long, default_value_t = 71)]
    pub grid: usize,
    /// The page phase's offered rate, records/s (random segments).
    #[arg(long, default_value_t = 40_000)]
    pub rate: u64,
    /// Seconds of the page phase.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// Pages' feeds open in the throughput phase.
    #[arg(long, default_value_t = 10)]
    pub pages: usize,
    /// Batches per connection in each throughput run (300: runs of a few
    /// seconds, long enough that start-up and the first publish do not
    /// dominate).
    #[arg(long, default_value_t = 300)]
    pub batches: u64,
    /// Ingest connections.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// Records per batch.
    #[arg(long, default_value_t = 1000)]
    pub batch_records: usize,
    /// Rounds of the throughput phases (medians reported).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Skip the browser phase.
    #[arg(long)]
    pub no_browser: bool,
}

/// Writes the synthetic city's roads and chargers under `dir` in the
/// layout the benchmark nodes read (`<dir>/karhula/*.geojson`); returns
/// the path whose parent holds it, and the segment count.
fn city(dir: &Path, side: usize) -> anyhow::Result<(PathBuf, usize)> {
    use crate::geo::hmm::synthetic::{Grid, GridSettings};
    let grid = Grid::new(
        &GridSettings {
            columns: side,
            rows: side,
            ..GridSettings::default()
        },
        7,
    );
    let net = dir.join("karhula");
    std::fs::create_dir_all(&net)?;
    let roads: Vec<serde_json::Value> = (grid.lines.iter().enumerate())
        .map(|(i, line)| {
            serde_json::json!({"type": "Feature",
                "geometry": {"type": "LineString", "coordinates": line},
                "properties": {"id": format!("s{i}"), "free_flow_mps": 13.9, "lanes": 1,
                               "name": format!("Street {}", i / 2)}})
        })
        .collect();
    let chargers: Vec<serde_json::Value> = (grid.lines.iter().step_by(400).enumerate())
        .map(|(i, line)| {
            serde_json::json!({"type": "Feature",
                "geometry": {"type": "Point", "coordinates": line[0]},
                "properties": {"id": format!("c{i}"), "connectors": 4, "max_kw": 50.0}})
        })
        .collect();
    let fc = |features| serde_json::json!({"type": "FeatureCollection", "features": features});
    std::fs::write(net.join("roads.geojson"), fc(roads).to_string())?;
    std::fs::write(net.join("chargers.geojson"), fc(chargers).to_string())?;
    Ok((dir.join("city.toml"), grid.lines.len()))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A node of the synthetic city with the live map on `web`.
fn start(
    dir: &Path,
    topology: &Path,
    web: u16,
) -> anyhow::Result<(
    super::bench_ingest::NodeProcess,
    std::net::SocketAddr,
    PathBuf,
)> {
    let extra = format!(
        "[[operator]]\nname = \"bench\"\ntoken_sha256 = \"{}\"\n[privacy]\nmin_vehicles = 1\n\
         [web]\nlisten = \"127.0.0.1:{web}\"\n",
        hex::encode(Sha256::digest(OPERATOR.as_bytes()))
    );
    spawn_node(dir, topology, &extra)
}

/// Signs in on the map at `web`: the session cookie.
async fn login(client: &reqwest::Client, web: u16) -> anyhow::Result<String> {
    let r = client
        .post(format!("http://127.0.0.1:{web}/api/login"))
        .body(OPERATOR)
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "sign-in: {}", r.status());
    let cookie = (r.headers().get("set-cookie"))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .ok_or_else(|| anyhow::anyhow!("no session cookie"))?;
    Ok(cookie.to_owned())
}

/// Reads a page's whole feed until `stop`; counts its bytes.
async fn read_feed(
    client: reqwest::Client,
    web: u16,
    cookie: String,
    stop: Arc<AtomicBool>,
    bytes: Arc<AtomicU64>,
) {
    let Ok(mut r) = client
        .get(format!("http://127.0.0.1:{web}/api/feed"))
        .header("cookie", cookie)
        .send()
        .await
    else {
        return;
    };
    while !stop.load(Ordering::Relaxed) {
        match r.chunk().await {
            Ok(Some(c)) => {
                bytes.fetch_add(c.len() as u64, Ordering::Relaxed);
            }
            _ => break,
        }
    }
}

fn load(args: &WebBenchArgs, addr: std::net::SocketAddr, ca: PathBuf, paced: bool) -> Load {
    let load = Load::paced(
        addr,
        ca,
        TOKEN,
        args.connections,
        args.batch_records,
        args.rate,
        Duration::from_secs(args.seconds),
    );
    if paced {
        return load;
    }
    // Saturating: as fast as acknowledged, a fixed number of batches.
    Load {
        batches: Some(args.batches),
        duration: Duration::from_secs(600),
        interval: None,
        ..load
    }
}

/// Quantiles (p50, p95, max) of a page's list of milliseconds.
fn stats(v: &serde_json::Value) -> serde_json::Value {
    let mut xs: Vec<f64> = (v.as_array().into_iter().flatten())
        .filter_map(serde_json::Value::as_f64)
        .collect();
    xs.sort_by(f64::total_cmp);
    serde_json::json!({
        "n": xs.len(),
        "p50": (quantile(&xs, 0.5) * 10.0).round() / 10.0,
        "p95": (quantile(&xs, 0.95) * 10.0).round() / 10.0,
        "max": (xs.last().copied().unwrap_or(0.0) * 10.0).round() / 10.0,
    })
}

/// The page phase: Chromium on the map while every segment updates.
fn page_phase(
    args: &WebBenchArgs,
    dir: &Path,
    topology: &Path,
    reference: Arc<crate::reference::Reference>,
) -> anyhow::Result<serde_json::Value> {
    let web = free_port()?;
    let (node, addr, ca) = start(dir, topology, web)?;
    let browser = super::browser::Browser::start(1280, 800)?;
    browser.goto(&format!("http://127.0.0.1:{web}/#token={OPERATOR}"))?;
    browser.wait_for(
        "the map following the feed",
        "return document.getElementById('status').textContent === 'live';",
        Duration::from_secs(60),
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let report = runtime.block_on(super::loadgen::run(&load(args, addr, ca, true), reference))?;
    let page = browser.eval(
        "const m = window.edgeflow; return {intervals: m.frameIntervals, draw: m.frameTimes, apply: m.applyTimes, latency: m.latencies, updates: m.updates, lagged: m.lagged, segments: m.rowsOf('congestion').length};",
    )?;
    drop(browser);
    drop(node);
    Ok(serde_json::json!({
        "offered_records_per_s": args.rate,
        "records_per_s": (report.accepted as f64 / report.elapsed.as_secs_f64()).round(),
        "frame_interval_ms": stats(&page["intervals"]),
        "draw_ms": stats(&page["draw"]),
        "apply_update_ms": stats(&page["apply"]),
        "publish_to_page_ms": stats(&page["latency"]),
        "updates": page["updates"],
        "rows_coalesced": page["lagged"],
        "congestion_rows_held": page["segments"],
    }))
}

/// What one throughput run measured.
struct Run {
    /// Acknowledged records/s.
    records_per_s: f64,
    /// Bytes the pages' feeds carried, all pages together.
    feed_bytes: u64,
    /// The node's CPU time (user and system) per acknowledged record, µs.
    node_cpu_us_per_record: f64,
}

/// One throughput run: saturating load, with `pages` feeds open.
fn throughput(
    args: &WebBenchArgs,
    dir: &Path,
    topology: &Path,
    reference: Arc<crate::reference::Reference>,
    pages: usize,
) -> anyhow::Result<Run> {
    let web = free_port()?;
    let (node, addr, ca) = start(dir, topology, web)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    // The pages read on a thread of their own: on the load generator's
    // they would slow the load, not the node.
    let readers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let client = reqwest::Client::new();
    let stop = Arc::new(AtomicBool::new(false));
    let bytes = Arc::new(AtomicU64::new(0));
    for _ in 0..pages {
        let cookie = readers.block_on(login(&client, web))?;
        readers.spawn(read_feed(
            client.clone(),
            web,
            cookie,
            stop.clone(),
            bytes.clone(),
        ));
    }
    let cpu = cpu_seconds(node.id());
    let report = runtime.block_on(super::loadgen::run(&load(args, addr, ca, false), reference))?;
    let cpu = cpu_seconds(node.id()) - cpu;
    stop.store(true, Ordering::Relaxed);
    drop(node);
    readers.shutdown_timeout(Duration::from_secs(5));
    runtime.shutdown_timeout(Duration::from_secs(5));
    Ok(Run {
        records_per_s: report.accepted as f64 / report.elapsed.as_secs_f64(),
        feed_bytes: bytes.load(Ordering::Relaxed),
        node_cpu_us_per_record: cpu * 1e6 / report.accepted.max(1) as f64,
    })
}

/// `b / a` to three places; 0 when `a` is not positive.
fn ratio(b: f64, a: f64) -> f64 {
    if a > 0.0 {
        (b / a * 1000.0).round() / 1000.0
    } else {
        0.0
    }
}

/// Runs the benchmark; the JSON report.
pub fn run(args: &WebBenchArgs) -> anyhow::Result<serde_json::Value> {
    let scratch = super::measure::Scratch::new("edgeflow-bench-web")?;
    let dir = scratch.path();
    let (topology, segments) = city(dir, args.grid)?;
    let reference = crate::reference::Reference::load(
        &dir.join("karhula/roads.geojson"),
        &dir.join("karhula/chargers.geojson"),
        crate::geo::MatchSettings::default(),
    )
    .map_err(|p| anyhow::anyhow!("the synthetic city: {p:?}"))?;
    let reference = Arc::new(reference);
    let page = if args.no_browser {
        serde_json::Value::Null
    } else {
        let d = dir.join("page");
        std::fs::create_dir_all(&d)?;
        page_phase(args, &d, &topology, reference.clone())?
    };
    let (mut without, mut with): (Vec<Run>, Vec<Run>) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        for pages in [0, args.pages] {
            let d = dir.join(format!("run-{round}-{pages}"));
            std::fs::create_dir_all(&d)?;
            let run = throughput(args, &d, &topology, reference.clone(), pages)?;
            eprintln!(
                "round {}: {pages} pages: {:.0} records/s, node {:.2} µs CPU/record",
                round + 1,
                run.records_per_s,
                run.node_cpu_us_per_record
            );
            if pages == 0 { &mut without } else { &mut with }.push(run);
            let _ = std::fs::remove_dir_all(&d);
        }
    }
    let rates = |runs: &[Run]| runs.iter().map(|r| r.records_per_s).collect::<Vec<_>>();
    let cpus = |runs: &[Run]| {
        (runs.iter())
            .map(|r| (r.node_cpu_us_per_record * 100.0).round() / 100.0)
            .collect::<Vec<_>>()
    };
    let (a, b) = (median(rates(&without)), median(rates(&with)));
    let (ca, cb) = (median(cpus(&without)), median(cpus(&with)));
    let paired = median(
        (without.iter().zip(&with))
            .map(|(a, b)| b.records_per_s / a.records_per_s)
            .collect::<Vec<f64>>(),
    );
    let feed_bytes = median(with.iter().map(|r| r.feed_bytes as f64).collect::<Vec<_>>());
    Ok(serde_json::json!({
        "segments": segments,
        "page": page,
        "throughput": {
            "pages": args.pages,
            "records_per_s_without_pages": a.round(),
            "records_per_s_with_pages": b.round(),
            "ratio": ratio(b, a),
            "ratio_of_rounds_median": (paired * 1000.0).round() / 1000.0,
            "runs_without": rates(&without),
            "runs_with": rates(&with),
            "node_cpu_us_per_record_without_pages": ca,
            "node_cpu_us_per_record_with_pages": cb,
            "node_cpu_ratio": ratio(cb, ca),
            "node_cpu_runs_without": cpus(&without),
            "node_cpu_runs_with": cpus(&with),
            "feed_bytes_per_page_median": (feed_bytes / args.pages.max(1) as f64).round(),
        },
    }))
}
