//! `edgeflow bench-postgres`: aggregate rows upserted into PostgreSQL
//! through the postgres sink's own code (the [`crate::sink::driver`] over
//! [`crate::sink::postgres::Postgres`]), rows per second.
//!
//! Each run works in a new schema (migrations and the reference tables are
//! written first, not timed), then hands the driver `--rows` final rows at
//! once: window after window of every segment of a synthetic network
//! ([`super::bench::synthetic_reference`]) and its chargers. Three
//! figures, from the first row handed over to the last acknowledged (each
//! batch committed):
//!
//! - **insert**: rows new to the tables (every final row, live);
//! - **update**: the same rows again with a later ordering and other
//!   values (every row a correction: the worst case);
//! - **replay**: the same rows once more with the same ordering (what a
//!   restarted node sends again: every row left as it is).
//!
//! The median of `--runs` runs is reported. The server's password, when it
//! asks for one, comes from `PGPASSWORD`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;

use super::measure::median;
use crate::aggregate::{AggKey, AggValue, Charging, Congestion, Kind};
use crate::dataflow::emit::{Emission, Status};
use crate::sink::driver::Driver;
use crate::sink::postgres::Postgres;
use crate::sink::{Feed, SinkContext, SinkStatus};
use crate::topology::PostgresSink;

/// Options of `edgeflow bench-postgres`.
#[derive(Debug, Clone, clap::Args)]
pub struct PostgresBenchArgs {
    /// The database: `postgres://user@host:port/db` (a user that may
    /// create schemas; PostGIS installed or installable).
    #[arg(long)]
    pub url: String,
    /// Rows upserted per run and phase.
    #[arg(long, default_value_t = 200_000)]
    pub rows: u64,
    /// Segments of the synthetic network (one charger per 100).
    #[arg(long, default_value_t = 20_000)]
    pub segments: u32,
    /// Measured runs (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// The sink's `max_rows` (rows per batch).
    #[arg(long, default_value_t = crate::topology::DEFAULT_PG_MAX_ROWS)]
    pub max_rows: usize,
    /// The sink's `max_in_flight` (batches in flight, one connection each).
    #[arg(long, default_value_t = crate::topology::DEFAULT_PG_IN_FLIGHT)]
    pub max_in_flight: usize,
    /// Keep each run's schema (`bench_<pid>_<run>`); by default dropped.
    #[arg(long)]
    pub keep: bool,
}

/// Rows handed to the driver per feed message.
const FEED_ROWS: usize = 10_000;
/// Longest the bench waits for the rows of one phase.
const PHASE_LIMIT: Duration = Duration::from_secs(600);
const BASE_TS: u64 = 1_767_258_000_000;
const WINDOW_MS: u64 = 60_000;

/// `n` final rows, window after window over every segment and charger;
/// `pass` changes the values and the ordering.
fn rows(segments: u32, chargers: u32, n: u64, pass: u64) -> Vec<Feed> {
    let per_window = u64::from(segments + chargers);
    let mut feeds = Vec::new();
    let mut feed = Feed::default();
    for i in 0..n {
        let (w, k) = (i / per_window, (i % per_window) as u32);
        let window = BASE_TS + w * WINDOW_MS;
        let (kind, key, value) = if k < segments {
            let c = Congestion {
                samples: 10 + pass + u64::from(k % 7),
                vehicles: 3 + u64::from(k % 5),
                speed_sum: 80_000_000 + i64::from(k % 1000) * 1_000 + pass as i64,
            };
            (Kind::Congestion, k, AggValue::Congestion(c))
        } else {
            let c = Charging {
                energy_wh: 1_000 + pass + u64::from(k),
                mean_power_mw: 22_000_000 + pass as i64,
                occupied: k % 3,
                faulted: 0,
            };
            (Kind::Charging, k - segments, AggValue::Charging(c))
        };
        let watermark = window + WINDOW_MS + pass;
        feed.rows.push(Emission {
            status: Status::Final,
            key: AggKey { kind, key, window },
            value,
            watermark,
        });
        feed.watermark = feed.watermark.max(watermark);
        if feed.rows.len() == FEED_ROWS {
            feeds.push(std::mem::take(&mut feed));
        }
    }
    if !feed.rows.is_empty() {
        feeds.push(feed);
    }
    feeds
}

/// Waits until `status` counts `n` rows acknowledged; an error when they
/// are not within `limit` (the sink said why on stderr).
async fn acknowledged(status: &SinkStatus, n: u64, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while status.acknowledged.load(Ordering::Relaxed) < n {
        let dead = status.dead_lettered.load(Ordering::Relaxed);
        if dead > 0 {
            anyhow::bail!("the database refused {dead} rows (see above)");
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "{} of {n} rows acknowledged after {limit:?} (the sink said why above)",
                status.acknowledged.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

/// The phases measured, in order.
const PHASES: [&str; 3] = ["insert", "update", "replay"];

/// One run in schema `schema`: the rate of each of [`PHASES`], rows/s.
async fn run_one(
    args: &PostgresBenchArgs,
    ctx: &SinkContext,
    schema: &str,
) -> anyhow::Result<Vec<f64>> {
    let cfg = PostgresSink {
        name: "bench".into(),
        url: args.url.clone(),
        password: std::env::var("PGPASSWORD").ok(),
        ca: None,
        schema: schema.to_owned(),
        kinds: Kind::ALL.to_vec(),
        max_rows: args.max_rows,
        max_in_flight: args.max_in_flight,
        timeout: crate::topology::DEFAULT_PG_TIMEOUT,
        max_hold: crate::topology::DEFAULT_MAX_HOLD,
        max_backlog: crate::topology::DEFAULT_SINK_MAX_BACKLOG,
    };
    let target = Postgres::new(cfg, ctx.clone())?;
    let status = Arc::new(SinkStatus::default());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(Driver::new(target, ctx.clone(), status.clone()).run(rx));
    let segments = ctx.reference.roads.len() as u32;
    let chargers = ctx.reference.chargers.len() as u32;
    // Migrations and the reference tables, with a row of its own.
    let mut warm = rows(segments, chargers, 1, 0);
    for f in &mut warm {
        for e in &mut f.rows {
            e.key.window -= WINDOW_MS;
        }
    }
    let mut sent = 0;
    let mut rates = Vec::new();
    let phase = |pass| rows(segments, chargers, args.rows, pass);
    for (pass, feeds) in [(0, warm), (1, phase(1)), (2, phase(2)), (3, phase(2))] {
        let n: u64 = feeds.iter().map(|f| f.rows.len() as u64).sum();
        let start = Instant::now();
        for f in feeds {
            tx.send(f).context("the sink stopped")?;
        }
        sent += n;
        let limit = if pass == 0 {
            Duration::from_secs(120)
        } else {
            PHASE_LIMIT
        };
        acknowledged(&status, sent, limit).await?;
        if pass > 0 {
            rates.push(n as f64 / start.elapsed().as_secs_f64());
        }
    }
    drop(tx);
    let _ = driver.await;
    Ok(rates)
}

/// Drops `schema` (a bench run's).
/// Drops `schema`; returns how many congestion rows it held first.
pub(crate) async fn drop_schema(url: &str, schema: &str) -> anyhow::Result<i64> {
    let mut config: tokio_postgres::Config = url.parse()?;
    if let Ok(p) = std::env::var("PGPASSWORD") {
        config.password(p);
    }
    let (client, conn) = config.connect(tokio_postgres::NoTls).await?;
    let task = tokio::spawn(conn);
    let rows = match client
        .query_one(
            &format!("SELECT count(*) FROM \"{schema}\".congestion"),
            &[],
        )
        .await
    {
        Ok(row) => row.try_get::<_, i64>(0)?,
        Err(_) => 0,
    };
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .await?;
    drop(client);
    let _ = task.await;
    Ok(rows)
}

/// Runs the benchmark; the report as JSON.
pub fn run(args: &PostgresBenchArgs) -> anyhow::Result<serde_json::Value> {
    if args.runs == 0 || args.rows == 0 || args.segments == 0 {
        anyhow::bail!("--runs, --rows and --segments must be at least 1");
    }
    if args.max_rows == 0 || args.max_in_flight == 0 {
        anyhow::bail!("--max-rows and --max-in-flight must be at least 1");
    }
    let reference = Arc::new(super::bench::synthetic_reference(args.segments));
    let ctx = SinkContext {
        node: "bench".into(),
        reference,
        window_ms: WINDOW_MS,
        hold_until: Arc::new(AtomicU64::new(0)),
        input_watermark: Arc::new(AtomicU64::new(u64::MAX)),
        min_vehicles: std::sync::Arc::new(std::sync::atomic::AtomicU64::new(1)),
        log_dir: std::env::temp_dir(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); PHASES.len()];
    for r in 0..args.runs {
        let schema = format!("bench_{}_{r}", std::process::id());
        let result = rt.block_on(run_one(args, &ctx, &schema));
        if !args.keep {
            if let Err(e) = rt.block_on(drop_schema(&args.url, &schema)) {
                eprintln!("bench-postgres: schema {schema} not dropped: {e:#}");
            }
        }
        let said: Vec<String> = (PHASES.iter().zip(result?))
            .zip(&mut rates)
            .map(|((phase, rate), all)| {
                all.push(rate);
                format!("{phase} {rate:.0} rows/s")
            })
            .collect();
        eprintln!("bench-postgres: run {r}: {}", said.join(", "));
    }
    let mut report = json!({
        "rows": args.rows,
        "segments": args.segments,
        "chargers": ctx.reference.chargers.len(),
        "runs": args.runs,
        "max_rows": args.max_rows,
        "max_in_flight": args.max_in_flight,
    });
    for (phase, all) in PHASES.iter().zip(&rates) {
        report[format!("{phase}_rows_per_s")] = json!(median(all.iter().copied()).round());
        report[format!("{phase}_runs")] = json!(all.iter().map(|x| x.round()).collect::<Vec<_>>());
    }
    Ok(report)
}
