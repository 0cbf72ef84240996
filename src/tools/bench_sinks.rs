//! `edgeflow bench-sinks`: what the city sinks deliver, and what they cost
//! an edge (issue 13).
//!
//! - **NGSI-LD**: the real sink (driver and transport) upserts the final
//!   windows of a synthetic city (`--segments` segments, `--windows`
//!   windows, each window handed over as the dataflow would) to the test
//!   broker of [`super::ngsi_broker`] on loopback (no schema validation: the
//!   broker's own cost stays small); entities acknowledged per second.
//! - **MQTT**: the same rows (every window: MQTT keeps history per window)
//!   published to a Mosquitto the benchmark starts on loopback; messages
//!   acknowledged (PUBACK) per second. Skipped without `mosquitto`.
//! - **Edge cost** (`--runs`): an edge process ingesting over QUIC as
//!   `bench-ingest` does, without and with an NGSI-LD and an MQTT sink,
//!   interleaved; records per second and per edge CPU second, medians and
//!   ratios. With `--pg-url`, a postgres sink joins them (all three sinks).
//!
//! PostgreSQL has a benchmark of its own (`bench-postgres`), as it needs a
//! database.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::measure::{median, Scratch};
use super::ngsi_broker::{Broker, BrokerSettings};
use crate::aggregate::{AggKey, AggValue, Congestion, Kind};
use crate::dataflow::emit::{Emission, Status};
use crate::sink::driver::{Driver, Target};
use crate::sink::{Feed, SinkContext, SinkStatus};

/// Options of `edgeflow bench-sinks`.
#[derive(Debug, Clone, clap::Args)]
pub struct SinksBenchArgs {
    /// Road segments of the synthetic city.
    #[arg(long, default_value_t = 20_000)]
    pub segments: u32,
    /// Windows delivered.
    #[arg(long, default_value_t = 5)]
    pub windows: u64,
    /// Measured runs of each part (medians reported).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Skip the edge cost comparison.
    #[arg(long)]
    pub no_edge: bool,
    /// Topology with the reference data (edge cost).
    #[arg(long, default_value = "topologies/karhula.toml")]
    pub topology: PathBuf,
    /// Batches per connection of the edge cost load.
    #[arg(long, default_value_t = 100)]
    pub batches: u64,
    /// A PostgreSQL database (`postgres://user@host:port/db`, PostGIS
    /// installed or installable): the edge cost then runs with a postgres
    /// sink too, in a schema of its own that is dropped afterwards.
    #[arg(long)]
    pub pg_url: Option<String>,
}

const WINDOW_MS: u64 = 60_000;
const T0: u64 = 1_767_258_000_000;

fn context(reference: Arc<crate::reference::Reference>, dir: &Path) -> SinkContext {
    SinkContext {
        node: "bench-edge".into(),
        reference,
        window_ms: WINDOW_MS,
        hold_until: Arc::new(AtomicU64::new(0)),
        input_watermark: Arc::new(AtomicU64::new(u64::MAX)),
        min_vehicles: std::sync::Arc::new(std::sync::atomic::AtomicU64::new(1)),
        log_dir: dir.to_owned(),
    }
}

/// Window `w`'s final rows: every segment, a value of its own.
fn window_feed(segments: u32, w: u64) -> Feed {
    let window = T0 + w * WINDOW_MS;
    let watermark = window + WINDOW_MS;
    let rows = (0..segments)
        .map(|s| Emission {
            status: Status::Final,
            key: AggKey {
                kind: Kind::Congestion,
                key: s,
                window,
            },
            value: AggValue::Congestion(Congestion {
                samples: 10 + u64::from(s % 7),
                vehicles: 3 + u64::from(s % 5),
                speed_sum: 10 * 8_000_000 + i64::from(s),
            }),
            watermark,
        })
        .collect();
    Feed { rows, watermark }
}

/// Runs `target`'s driver on `runtime`, feeding `windows` windows one after
/// the other (each once the previous is acknowledged, when `paced`);
/// returns rows acknowledged per second.
fn drive<T: Target>(
    runtime: &tokio::runtime::Runtime,
    target: T,
    ctx: SinkContext,
    args: &SinksBenchArgs,
    paced: bool,
) -> anyhow::Result<f64> {
    let status = Arc::new(SinkStatus::default());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let task = runtime.spawn(Driver::new(target, ctx, status.clone()).run(rx));
    let total = u64::from(args.segments) * args.windows;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(300);
    let wait_for = |n: u64| -> anyhow::Result<()> {
        while status.acknowledged.load(Ordering::Relaxed) < n {
            anyhow::ensure!(
                Instant::now() < deadline,
                "only {} of {n} rows acknowledged in 300 s (dead-lettered {})",
                status.acknowledged.load(Ordering::Relaxed),
                status.dead_lettered.load(Ordering::Relaxed)
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    };
    for w in 0..args.windows {
        let _ = tx.send(window_feed(args.segments, w));
        if paced {
            wait_for(u64::from(args.segments) * (w + 1))?;
        }
    }
    wait_for(total)?;
    let rate = total as f64 / start.elapsed().as_secs_f64();
    drop(tx);
    runtime.block_on(async { tokio::time::timeout(Duration::from_secs(15), task).await })??;
    Ok(rate)
}

fn ngsi_once(
    runtime: &tokio::runtime::Runtime,
    args: &SinksBenchArgs,
    dir: &Path,
    reference: Arc<crate::reference::Reference>,
) -> anyhow::Result<f64> {
    let broker = Broker::start("127.0.0.1:0".parse()?, BrokerSettings::default())?;
    let cfg = crate::topology::NgsiSink {
        name: "bench".into(),
        url: broker.url(),
        context: crate::topology::DEFAULT_NGSI_CONTEXT.into(),
        tenant: None,
        token: None,
        ca: None,
        kinds: vec![Kind::Congestion],
        max_entities: crate::topology::DEFAULT_NGSI_MAX_ENTITIES,
        max_bytes: crate::topology::DEFAULT_NGSI_MAX_BYTES,
        max_in_flight: crate::topology::DEFAULT_NGSI_IN_FLIGHT,
        timeout: Duration::from_secs(30),
        max_hold: Duration::from_secs(3600),
        max_backlog: crate::topology::DEFAULT_SINK_MAX_BACKLOG,
        state_dir: Some(dir.to_owned()),
    };
    let ctx = context(reference, dir);
    let target = crate::sink::ngsi_sink::Ngsi::new(cfg, ctx.clone())?;
    let rate = drive(runtime, target, ctx, args, true)?;
    let stats = broker.stats();
    anyhow::ensure!(
        stats.applied == u64::from(args.segments) * args.windows,
        "the broker applied {} entities",
        stats.applied
    );
    Ok(rate)
}

/// A Mosquitto on a free loopback port, persisting nothing; stopped when
/// dropped.
struct Mosquitto(std::process::Child, u16);

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn mosquitto(dir: &Path) -> anyhow::Result<Option<Mosquitto>> {
    let Some(bin) = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
    else {
        return Ok(None);
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let conf = dir.join("mosquitto.conf");
    let root = std::env::var("USER").is_ok_and(|u| u == "root")
        || std::fs::metadata("/proc/self").is_ok_and(|m| {
            use std::os::unix::fs::MetadataExt;
            m.uid() == 0
        });
    let user = if root { "user root\n" } else { "" };
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\nmax_inflight_messages 1000\n{user}"),
    )?;
    let child = std::process::Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(10),
            "mosquitto did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Some(Mosquitto(child, port)))
}

fn mqtt_sink(port: u16) -> crate::topology::MqttSink {
    crate::topology::MqttSink {
        name: "bench".into(),
        host: "127.0.0.1".into(),
        port,
        tls: false,
        client_id: None,
        topic_prefix: "edgeflow".into(),
        kinds: Kind::ALL.to_vec(),
        provisional: false,
        retain_expiry: Duration::from_secs(60),
        credentials: None,
        ca: None,
        max_messages: crate::topology::DEFAULT_MQTT_MAX_MESSAGES,
        max_in_flight: crate::topology::DEFAULT_MQTT_IN_FLIGHT,
        timeout: Duration::from_secs(30),
        max_hold: Duration::from_secs(3600),
        max_backlog: crate::topology::DEFAULT_SINK_MAX_BACKLOG,
    }
}

/// The edge with and without the sinks, interleaved: records per second
/// and per edge CPU second.
fn edge_cost(
    args: &SinksBenchArgs,
    dir: &Path,
    mqtt_port: Option<u16>,
) -> anyhow::Result<serde_json::Value> {
    let broker = Broker::start("127.0.0.1:0".parse()?, BrokerSettings::default())?;
    let mut sinks = format!("[[sink]]\ntype = \"ngsi-ld\"\nurl = \"{}\"\n", broker.url());
    let mut names = vec!["ngsi-ld"];
    if let Some(port) = mqtt_port {
        sinks += &format!("[[sink]]\ntype = \"mqtt\"\nbroker = \"mqtt://127.0.0.1:{port}\"\n");
        names.push("mqtt");
    }
    let schema = format!("bench_sinks_{}", std::process::id());
    if let Some(url) = &args.pg_url {
        sinks +=
            &format!("[[sink]]\ntype = \"postgres\"\nurl = \"{url}\"\nschema = \"{schema}\"\n");
        names.push("postgres");
    }
    let ingest = super::bench_ingest::IngestBenchArgs {
        connections: 10,
        batch_records: 1000,
        batches: args.batches,
        interval_ms: None,
        seconds: 120,
        window: 8,
        idle: None,
        topology: args.topology.clone(),
        central: false,
        metrics: false,
        runs: 1,
    };
    let (plain, with) = super::bench_ingest::compare(&ingest, dir, args.runs, &mut |_, _| {
        Ok((
            sinks.clone(),
            Box::new(|| Ok(())) as Box<dyn FnOnce() -> anyhow::Result<()>>,
        ))
    })?;
    let rate =
        |v: &[(f64, f64)], i: usize| median(v.iter().map(|r| if i == 0 { r.0 } else { r.1 }));
    let ratio = |a: f64, b: f64| (a / b.max(1e-9) * 1000.0).round() / 1000.0;
    let delivered = broker.stats().applied;
    anyhow::ensure!(
        delivered > 0,
        "the NGSI-LD sink delivered nothing during the edge runs"
    );
    let pg_rows = match &args.pg_url {
        Some(url) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let rows = runtime.block_on(super::bench_postgres::drop_schema(url, &schema))?;
            anyhow::ensure!(
                rows > 0,
                "the postgres sink delivered nothing during the edge runs"
            );
            Some(rows)
        }
        None => None,
    };
    Ok(serde_json::json!({
        "sinks": names.join(", "),
        "without_sinks_records_per_s": rate(&plain, 0).round(),
        "with_sinks_records_per_s": rate(&with, 0).round(),
        "ratio": ratio(rate(&with, 0), rate(&plain, 0)),
        "without_sinks_records_per_edge_cpu_s": rate(&plain, 1).round(),
        "with_sinks_records_per_edge_cpu_s": rate(&with, 1).round(),
        "cpu_ratio": ratio(rate(&with, 1), rate(&plain, 1)),
        "runs_without": plain.iter().map(|r| r.0.round()).collect::<Vec<_>>(),
        "runs_with": with.iter().map(|r| r.0.round()).collect::<Vec<_>>(),
        "ngsi_entities_applied": delivered,
        "postgres_congestion_rows": pg_rows,
    }))
}

/// Runs the benchmark; returns the JSON report.
pub fn run(args: &SinksBenchArgs) -> anyhow::Result<serde_json::Value> {
    let scratch = Scratch::new("bench-sinks")?;
    let dir = scratch.path();
    let reference = Arc::new(super::bench::synthetic_reference(args.segments));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut ngsi = Vec::new();
    for run in 0..args.runs.max(1) {
        let d = dir.join(format!("ngsi-{run}"));
        std::fs::create_dir_all(&d)?;
        ngsi.push(ngsi_once(&runtime, args, &d, reference.clone())?);
    }
    let broker = mosquitto(dir)?;
    let mut mqtt = Vec::new();
    if let Some(m) = &broker {
        for _ in 0..args.runs.max(1) {
            let ctx = context(reference.clone(), dir);
            let target = crate::sink::mqtt::Mqtt::new(mqtt_sink(m.1), ctx.clone())?;
            mqtt.push(drive(&runtime, target, ctx, args, false)?);
        }
    }
    let edge = if args.no_edge {
        serde_json::Value::Null
    } else {
        edge_cost(args, &dir.join("edge"), broker.as_ref().map(|m| m.1))?
    };
    Ok(serde_json::json!({
        "segments": args.segments,
        "windows": args.windows,
        "ngsi_entities_per_s": median(ngsi.iter().copied()).round(),
        "ngsi_runs": ngsi.iter().map(|r| r.round()).collect::<Vec<_>>(),
        "mqtt_messages_per_s": (!mqtt.is_empty()).then(|| median(mqtt.iter().copied()).round()),
        "mqtt_runs": mqtt.iter().map(|r| r.round()).collect::<Vec<_>>(),
        "edge": edge,
    }))
}
