//! State is bounded by retention: a run many retentions long holds no more
//! in the dataflow's arrangements than a run a few retentions long (the
//! updates differential's own log says the traces hold, not wall-clock
//! RSS). Batches of 2,000 records (the node's are up to 131,072: the other
//! bound on what a worker holds) so that the runs span many batches.

use std::sync::Arc;
use std::time::Duration;

use edgeflow::runtime::{Input, RunOptions, RunSummary};
use edgeflow::time::TimeSpec;
use edgeflow::tools::bench::{generate, synthetic_reference, BenchArgs};

/// Replays `minutes` of synthetic traffic (100 vehicles every 2 s on 200
/// segments, 5 % of reports late) with one-minute windows and two minutes
/// of retention.
fn run(minutes: u64, workers: usize) -> RunSummary {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("traffic.jsonl");
    let vehicles = 100;
    let args = BenchArgs {
        records: minutes * 30 * vehicles,
        segments: 200,
        vehicles: vehicles as u32,
        workers: vec![workers],
        runs: 1,
        dir: None,
        push: false,
    };
    generate(&args, &path).expect("generated");
    let spec = TimeSpec::new(
        Duration::from_secs(60),
        Duration::from_secs(5),
        Duration::from_secs(120),
    );
    let reference = Arc::new(synthetic_reference(200));
    let (input, _) = Input::open(&path).expect("input");
    edgeflow::runtime::run(
        input,
        reference,
        spec,
        RunOptions {
            flush_records: 2_000,
            measure_state: true,
            ..RunOptions::new(workers)
        },
        |_| {},
        |_| {},
    )
    .expect("replay")
}

#[test]
fn arranged_state_stays_flat_after_the_first_retention() {
    for workers in [1, 2] {
        // Measured (1 worker): 2,709 updates held at most over 3 min, 4,496
        // over 6, 5,426 over 12, 5,636 over 24 and 48, 5,656 over 96: the
        // spine's levels fill within a few retentions, then stay.
        let short = run(12, workers);
        let long = run(72, workers);
        eprintln!(
            "{workers} worker(s): peak updates held over 12 min {:?}, over 72 min {:?}",
            short.state, long.state
        );
        assert!(long.ingest.records > 5 * short.ingest.records);
        assert!(short.state.peak > 0, "the gauge sees the arrangements");
        // Six times the input, about the same state: a leak would hold six
        // times as much. One worker is deterministic (within 10 %: the
        // spine's merges); with two, which worker takes which chunk, and so
        // the batches, vary from run to run, and the longer run has more
        // chances of an unlucky peak (measured up to 1.54 times, in CI on
        // 2026-12-03): 2.5, still far below the 6 times of a leak. The
        // one-worker check above is the tight one.
        let slack = if workers == 1 { 1.1 } else { 2.5 };
        assert!(
            long.state.peak as f64 <= short.state.peak as f64 * slack,
            "held {} updates over 72 min against {} over 12 min",
            long.state.peak,
            short.state.peak
        );
        // Nothing is left once the traces are dropped.
        assert_eq!((long.state.arranged, long.state.batching), (0, 0));
    }
}
