//! `edgeflow bench-central`: how fast central's dataflow merges partials
//! ([`crate::dataflow::central`]), in one process, without the network or
//! central's log: the merge's own capacity per core, the figure a city's
//! central is sized by.
//!
//! Synthetic edges each push the congestion partials of their share of the
//! segments, `rounds` times per window (provisional values replacing each
//! other, as an edge's coalesced pushes do), each with a sparse sketch of
//! `vehicles` hashes; central's watermark moves after every round. Each
//! worker feeds the segments it owns. Every upsert is `-old +new`, and
//! every change is emitted (provisional on), as a live central does.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::measure::median;
use crate::dataflow::central::{self, Upserts};
use crate::dataflow::partials::{PartialKey, PartialKind, PartialValue};
use crate::partial::sketch::Sketch;
use crate::partial::CongestionPartial;
use crate::time::TimeSpec;

/// Options of `edgeflow bench-central`.
#[derive(Debug, Clone, clap::Args)]
pub struct CentralBenchArgs {
    /// Edges pushing.
    #[arg(long, default_value_t = 10)]
    pub edges: u32,
    /// Road segments, shared out among the edges.
    #[arg(long, default_value_t = 20_000)]
    pub segments: u64,
    /// Windows (60 s each).
    #[arg(long, default_value_t = 10)]
    pub windows: u64,
    /// Pushes per segment and window.
    #[arg(long, default_value_t = 4)]
    pub rounds: u64,
    /// Distinct vehicles in each partial's sketch.
    #[arg(long, default_value_t = 5)]
    pub vehicles: u64,
    /// Worker threads.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub workers: Vec<usize>,
    /// Measured runs per worker count (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
}

/// One run: upserts applied and the seconds they took, emissions out.
fn run_once(args: &CentralBenchArgs, workers: usize) -> anyhow::Result<(u64, f64, u64)> {
    let spec = TimeSpec::new(
        Duration::from_secs(60),
        Duration::from_secs(5),
        Duration::from_secs(900),
    );
    let emitted = Arc::new(AtomicU64::new(0));
    let counted = emitted.clone();
    let (tx, rx) = std::sync::mpsc::channel::<Vec<crate::dataflow::emit::Emission>>();
    let counter = std::thread::spawn(move || {
        for batch in rx {
            counted.fetch_add(batch.len() as u64, Ordering::Relaxed);
        }
    });
    let tx = Arc::new(std::sync::Mutex::new(Some(tx)));
    let args = args.clone();
    let start = Instant::now();
    let config = if workers == 1 {
        timely::Config::thread()
    } else {
        timely::Config::process(workers)
    };
    let applied = timely::execute(config, move |worker| {
        let sender = if worker.index() == 0 {
            tx.lock().ok().and_then(|mut t| t.take())
        } else {
            None
        };
        let (mut inputs, completion) = central::build(worker, spec, true, None, sender);
        let (me, peers) = (worker.index() as u64, worker.peers() as u64);
        let mut upserts = Upserts::default();
        let mut n = 0u64;
        let base = 1_767_225_600_000u64;
        for w in 0..args.windows {
            let window = base + w * 60_000;
            for round in 0..args.rounds {
                for s in (me..args.segments).step_by(peers as usize) {
                    let edge = (s % u64::from(args.edges.max(1))) as u32;
                    let hashes =
                        (0..args.vehicles).map(|i| s.wrapping_mul(1_000_003) ^ (i << 20) ^ round);
                    let partial = CongestionPartial {
                        samples: args.vehicles + round,
                        speed_sum: 10_000_000 * (args.vehicles + round) as i64,
                        vehicles: args.vehicles,
                        sketch: Sketch::of(hashes),
                    };
                    let key = PartialKey {
                        kind: PartialKind::Congestion,
                        key: s,
                        window,
                    };
                    upserts.apply(&mut inputs, edge, key, PartialValue::Congestion(partial));
                    n += 1;
                    if n.is_multiple_of(10_000) {
                        worker.step();
                    }
                }
                upserts.advance(
                    &mut inputs,
                    &spec,
                    window + (round + 1) * 60_000 / args.rounds.max(1),
                );
                worker.step();
            }
        }
        drop(inputs);
        while !completion.done() {
            worker.step();
        }
        n
    })
    .map_err(|e| anyhow::anyhow!("dataflow failed: {e}"))?;
    let applied: u64 = applied.join().into_iter().map(|r| r.unwrap_or(0)).sum();
    let seconds = start.elapsed().as_secs_f64();
    counter
        .join()
        .map_err(|_| anyhow::anyhow!("the counting thread panicked"))?;
    Ok((applied, seconds, emitted.load(Ordering::Relaxed)))
}

/// Runs the benchmark; returns its JSON report.
pub fn run(args: &CentralBenchArgs) -> anyhow::Result<serde_json::Value> {
    let mut by_workers = Vec::new();
    for &workers in &args.workers {
        let mut rates = Vec::new();
        let mut last = (0, 0);
        for _ in 0..args.runs.max(1) {
            let (applied, seconds, emitted) = run_once(args, workers.max(1))?;
            rates.push(applied as f64 / seconds.max(1e-9));
            last = (applied, emitted);
        }
        by_workers.push(json!({
            "workers": workers,
            "upserts_per_s": median(rates.iter().copied()).round(),
            "runs_upserts_per_s": rates.iter().map(|r| r.round()).collect::<Vec<_>>(),
            "upserts": last.0,
            "emissions": last.1,
        }));
    }
    Ok(json!({
        "edges": args.edges,
        "segments": args.segments,
        "windows": args.windows,
        "rounds": args.rounds,
        "vehicles_per_partial": args.vehicles,
        "by_workers": by_workers,
    }))
}
