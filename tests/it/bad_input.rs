//! Every kind of malformed line is rejected with its reason, its line and
//! the field to blame; the good lines around it are processed exactly as if
//! the bad ones were not there.

use std::sync::Arc;

use edgeflow::model::RejectReason;
use edgeflow::replay::ReplayOptions;
use edgeflow::topology::Topology;

use crate::support::{data, replay, root};

const V: &str =
    r#""type":"vehicle","vehicle_id":"v-9","ts_ms":1767258001000,"lat":60.53,"lon":26.95"#;

fn bad_lines() -> Vec<(Vec<u8>, RejectReason, Option<&'static str>)> {
    let mut long_line = b"{\"type\":\"vehicle\",\"pad\":\"".to_vec();
    long_line.extend(std::iter::repeat_n(b'x', 70_000));
    long_line.extend_from_slice(b"\"}");
    vec![
        (b"this is not json".to_vec(), RejectReason::Syntax, None),
        (b"{\"type\":\"vehicle\",".to_vec(), RejectReason::Syntax, None),
        (b"[\"vehicle\",\"v-1\"]".to_vec(), RejectReason::WrongType, None),
        (b"42".to_vec(), RejectReason::WrongType, None),
        (format!(r#"{{{V},"speed_mps":"fast"}}"#).into_bytes(), RejectReason::WrongType, Some("speed_mps")),
        (format!(r#"{{{V}}}"#).into_bytes(), RejectReason::MissingField, Some("speed_mps")),
        (format!(r#"{{{V},"speed_mps":-2}}"#).into_bytes(), RejectReason::OutOfRange, Some("speed_mps")),
        // 540 km/h: above the plausibility bound.
        (format!(r#"{{{V},"speed_mps":150}}"#).into_bytes(), RejectReason::OutOfRange, Some("speed_mps")),
        (format!(r#"{{{V},"speed_mps":3,"heading_deg":400}}"#).into_bytes(), RejectReason::OutOfRange, Some("heading_deg")),
        (format!(r#"{{{V},"speed_mps":NaN}}"#).into_bytes(), RejectReason::Syntax, None),
        (format!(r#"{{{V},"speed_mps":1e999}}"#).into_bytes(), RejectReason::Syntax, None),
        (format!(r#"{{{V},"speed_mps":1e300}}"#).into_bytes(), RejectReason::OutOfRange, Some("speed_mps")),
        (br#"{"type":"vehicle","vehicle_id":"v-9","ts_ms":99999999999999999999,"lat":1,"lon":1,"speed_mps":1}"#.to_vec(), RejectReason::OutOfRange, Some("ts_ms")),
        (format!(r#"{{"type":"vehicle","vehicle_id":"{}","ts_ms":1767258001000,"lat":1,"lon":1,"speed_mps":1}}"#, "v".repeat(65)).into_bytes(), RejectReason::InvalidId, Some("vehicle_id")),
        (br#"{"type":"vehicle","vehicle_id":"v 9","ts_ms":1767258001000,"lat":1,"lon":1,"speed_mps":1}"#.to_vec(), RejectReason::InvalidId, Some("vehicle_id")),
        (b"{\"type\":\"vehicle\",\"vehicle_id\":\"v-\xc3\x28\",\"ts_ms\":1767258001000}".to_vec(), RejectReason::InvalidUtf8, None),
        (br#"{"type":"tram"}"#.to_vec(), RejectReason::UnknownType, Some("type")),
        (b"{}".to_vec(), RejectReason::MissingField, Some("type")),
        (br#"{"type":"charger","charger_id":"cs-niittykatu-1","connector":1,"ts_ms":1767258001000,"status":"SuspendedEV","power_kw":1,"energy_wh":5}"#.to_vec(), RejectReason::UnknownStatus, Some("status")),
        (br#"{"type":"charger","charger_id":"cs-nowhere","connector":1,"ts_ms":1767258001000,"status":"Occupied","power_kw":1,"energy_wh":5}"#.to_vec(), RejectReason::UnknownCharger, Some("charger_id")),
        (br#"{"type":"charger","charger_id":"cs-niittykatu-1","connector":5,"ts_ms":1767258001000,"status":"Occupied","power_kw":1,"energy_wh":5}"#.to_vec(), RejectReason::UnknownConnector, Some("connector")),
        (br#"{"type":"charger","charger_id":"cs-niittykatu-1","connector":1,"ts_ms":1767258001000,"status":"Occupied","power_kw":1,"energy_wh":-5}"#.to_vec(), RejectReason::OutOfRange, Some("energy_wh")),
        (long_line, RejectReason::TooLong, None),
    ]
}

#[test]
fn each_malformed_line_is_rejected_with_line_field_and_reason_and_the_rest_is_processed() {
    let topo = Topology::load(&root("topologies/karhula.toml")).expect("valid");
    let reference = Arc::new(topo.reference.clone());
    let good = std::fs::read_to_string(data("sumo-public/telemetry.jsonl")).expect("fixture");
    let good: Vec<&str> = good.lines().take(3000).collect();
    let bad = bad_lines();

    // Interleave: a bad line after every 100 good ones.
    let mut mixed = Vec::new();
    let mut bad_at = Vec::new();
    let mut line = 0u64;
    let mut bad_iter = bad.iter();
    for (i, g) in good.iter().enumerate() {
        mixed.extend_from_slice(g.as_bytes());
        mixed.push(b'\n');
        line += 1;
        if i % 100 == 99 {
            if let Some((b, reason, field)) = bad_iter.next() {
                mixed.extend_from_slice(b);
                mixed.push(b'\n');
                line += 1;
                bad_at.push((line, *reason, *field));
            }
        }
    }
    assert_eq!(bad_at.len(), bad.len(), "all bad lines placed");
    let clean: Vec<u8> = good
        .iter()
        .flat_map(|g| g.bytes().chain(std::iter::once(b'\n')))
        .collect();

    for workers in [1, 3] {
        let options = ReplayOptions {
            chunk_lines: 64,
            ..ReplayOptions::new(workers)
        };
        let (c_mixed, h_mixed, s) = replay(mixed.clone(), &reference, topo.time, options);
        let (c_clean, h_clean, _) = replay(clean.clone(), &reference, topo.time, options);
        assert!(c_mixed == c_clean, "bad lines changed congestion");
        assert!(h_mixed == h_clean, "bad lines changed charging");
        assert_eq!(s.ingest.records, (good.len() + bad.len()) as u64);
        assert_eq!(s.ingest.rejected_total(), bad.len() as u64);
        for reason in RejectReason::ALL {
            let want = bad_at.iter().filter(|b| b.1 == reason).count() as u64;
            assert_eq!(
                s.ingest.rejected[reason.index()],
                want,
                "count of {}",
                reason.as_str()
            );
        }
        // The first errors are reported with their line; each names its field.
        assert_eq!(
            s.ingest.errors.len(),
            edgeflow::pipeline::MAX_REPORTED_ERRORS
        );
        for (line, message) in &s.ingest.errors {
            let (_, reason, field) = bad_at
                .iter()
                .find(|b| b.0 == *line)
                .unwrap_or_else(|| panic!("error on good line {line}: {message}"));
            if let Some(f) = field {
                assert!(
                    message.contains(&format!("field `{f}`")),
                    "line {line} ({}): {message}",
                    reason.as_str()
                );
            }
        }
    }
}

#[test]
fn arbitrary_bytes_never_panic_the_decoders() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases: 2000,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &[3; 32]),
    );
    let seed = br#"{"type":"charger","charger_id":"c","connector":1,"ts_ms":1767258001000,"status":"Occupied","power_kw":1.5,"energy_wh":5,"ev":{"soc_pct":3}}"#;
    runner
        .run(
            &(
                proptest::collection::vec(any::<u8>(), 0..200),
                0usize..seed.len(),
                any::<u8>(),
            ),
            |(bytes, at, b)| {
                let _ = edgeflow::codec::decode_json(&bytes);
                let _ = edgeflow::codec::decode_cbor(&bytes);
                let _ = edgeflow::codec::cbor_sequence(&bytes).count();
                let mut mutated = seed.to_vec();
                mutated[at] = b;
                let _ = edgeflow::codec::decode_json(&mutated);
                Ok(())
            },
        )
        .expect("no panic");
}
