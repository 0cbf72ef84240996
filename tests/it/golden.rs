//! Golden replay of the recorded SUMO telemetry (10 simulated minutes of
//! Karhula, Finland, with out-of-order arrivals): every expected key and
//! window present, none extra, numbers equal to one unit in the last digit,
//! and the same bytes for 1, 2 and 4 workers.

use edgeflow::geo::Unmatched;
use std::sync::Arc;

use edgeflow::runtime::RunOptions;
use edgeflow::topology::Topology;

use crate::support::{assert_expected, assert_same_rows, data, replay, root, rows};

#[test]
fn sumo_public_reproduces_expected_aggregates_for_any_worker_count() {
    let topo = Topology::load(&root("topologies/karhula.toml")).expect("bundled topology is valid");
    let reference = Arc::new(topo.reference.clone());
    let input = std::fs::read(data("sumo-public/telemetry.jsonl")).expect("fixture");
    let expected_congestion =
        std::fs::read_to_string(data("sumo-public/expected-congestion.csv")).expect("fixture");
    let expected_charging =
        std::fs::read_to_string(data("sumo-public/expected-charging.csv")).expect("fixture");

    let mut first: Option<(String, String)> = None;
    for workers in [1, 2, 4] {
        let (congestion, charging, summary) = replay(
            input.clone(),
            &reference,
            topo.time,
            RunOptions::new(workers),
        );
        assert_eq!(summary.ingest.records, 11_486);
        assert_eq!(summary.ingest.rejected_total(), 0);
        // Without segment_id a vehicle is in a junction or charging in a
        // bay (sumo-public README): map matching must place none of them.
        let u = &summary.ingest.unmatched;
        assert!(
            summary.ingest.map_matched <= 3,
            "{}",
            summary.ingest.map_matched
        );
        assert_eq!(
            summary.ingest.unmatched_total() + summary.ingest.map_matched,
            2_420
        );
        assert_eq!(u[Unmatched::Charging.index()], 1_337);
        assert!(u[Unmatched::Junction.index()] >= 1_070, "{u:?}");
        assert_eq!(summary.ingest.expired, 0);
        let n = assert_same_rows(&congestion, &expected_congestion, "congestion");
        assert_eq!(
            n, 1_276,
            "the 1,275 expected rows and one only map matching fills"
        );
        let n = assert_same_rows(&charging, &expected_charging, "charging");
        assert_eq!(n, 40);
        match &first {
            None => first = Some((congestion, charging)),
            Some((c, h)) => {
                assert!(
                    c == &congestion,
                    "congestion.csv differs between 1 and {workers} workers"
                );
                assert!(
                    h == &charging,
                    "charging.csv differs between 1 and {workers} workers"
                );
            }
        }
    }
    // TELEMETRY.md §4: sorted by key then window start.
    let (congestion, _) = first.expect("ran");
    let (_, by_key) = rows(&congestion);
    let in_file: Vec<(String, u64)> = congestion
        .lines()
        .skip(1)
        .map(|l| {
            let mut f = l.split(',');
            (
                f.next().unwrap_or_default().to_owned(),
                f.next().and_then(|w| w.parse().ok()).unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(in_file, by_key.keys().cloned().collect::<Vec<_>>());
}

#[test]
fn small_lateness_turns_out_of_order_records_into_corrections_with_the_same_final_values() {
    // With 0 s allowed lateness the ~5 % delayed reports arrive after their
    // window may be final; they must correct it, not vanish.
    let topo = Topology::load(&root("topologies/karhula.toml")).expect("bundled topology is valid");
    let reference = Arc::new(topo.reference.clone());
    let input = std::fs::read(data("sumo-public/telemetry.jsonl")).expect("fixture");
    let mut spec = topo.time;
    spec.allowed_lateness_ms = 0;
    // Paced (at a million times real time) so every chunk is its own batch
    // and windows become final while the input is still arriving.
    let options = RunOptions {
        chunk_lines: 16,
        speed: Some(1e6),
        ..RunOptions::new(2)
    };
    let (congestion, charging, summary) = replay(input, &reference, spec, options);
    assert!(
        summary.ingest.late > 0,
        "some records arrive behind the watermark"
    );
    assert!(
        summary.ingest.corrections > 0,
        "some arrive after their window is final"
    );
    assert!(summary.emitted.corrections > 0, "and correct it");
    assert_expected(&congestion, &charging);
}

#[test]
fn a_log_directory_replays_to_the_same_aggregates() {
    use edgeflow::log::{Encoding, LogWriter};
    let topo = Topology::load(&root("topologies/karhula.toml")).expect("valid");
    let reference = Arc::new(topo.reference.clone());
    let text = std::fs::read_to_string(data("sumo-public/telemetry.jsonl")).expect("fixture");
    let dir = tempfile::tempdir().expect("tempdir");
    // Half the batches as JSON Lines, half as CBOR: one log, two encodings.
    let (mut log, _) = LogWriter::open(dir.path(), 256 << 10).expect("open log");
    let lines: Vec<&str> = text.lines().collect();
    for (i, batch) in lines.chunks(700).enumerate() {
        let (encoding, records) = if i % 2 == 0 {
            (
                Encoding::JsonLines,
                batch
                    .iter()
                    .flat_map(|l| l.bytes().chain(Some(b'\n')))
                    .collect::<Vec<u8>>(),
            )
        } else {
            let mut cbor = Vec::new();
            for l in batch {
                let r = edgeflow::codec::decode_json(l.as_bytes()).expect("valid fixture");
                cbor.extend(edgeflow::codec::encode_cbor(&r));
            }
            (Encoding::Cbor, cbor)
        };
        log.append("recorder", i as u64, encoding, records.into())
            .expect("append");
    }
    log.sync().expect("sync");
    drop(log);

    let mut table = edgeflow::output::FinalTable::default();
    let (input, _) = edgeflow::runtime::Input::open(dir.path()).expect("a log dir");
    let summary = edgeflow::runtime::run(
        input,
        reference.clone(),
        topo.time,
        RunOptions::new(2),
        |b| table.apply(b),
        |_| {},
    )
    .expect("replays");
    assert_eq!(summary.ingest.records, 11_486);
    let congestion = table.csv(
        edgeflow::aggregate::Kind::Congestion,
        &reference,
        topo.time.size_ms,
    );
    let charging = table.csv(
        edgeflow::aggregate::Kind::Charging,
        &reference,
        topo.time.size_ms,
    );
    assert_expected(&congestion, &charging);
}
