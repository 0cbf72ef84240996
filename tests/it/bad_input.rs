//! Every kind of malformed line is rejected with its reason, its line and
//! the field to blame; the good lines around it are processed exactly as if
//! the bad ones were not there.

use std::sync::Arc;

use edgeflow::model::RejectReason;
use edgeflow::runtime::RunOptions;
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
        let options = RunOptions {
            chunk_lines: 64,
            ..RunOptions::new(workers)
        };
        let (c_mixed, h_mixed, s) = replay(mixed.clone(), &reference, topo.time, options.clone());
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

// ---------------------------------------------------------------------------
// docs/TELEMETRY.md §6 (and the ranges of §1 it builds on) at the
// boundaries: a record exactly at a limit is accepted, one just past it is
// rejected with the documented reason and field. The limits are written
// here from the document, not taken from the code's constants.
// ---------------------------------------------------------------------------

/// What the document says of a record.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Want {
    Accept,
    Reject(RejectReason, Option<&'static str>),
}

struct Case {
    what: String,
    line: Vec<u8>,
    want: Want,
    /// Also sent as CBOR (§5: validated the same way).
    cbor: bool,
}

/// The charger used for charger cases, and its connector count read
/// straight from the GeoJSON (§2), not through the node's reference.
const CHARGER: &str = "cs-niittykatu-1";

fn connectors_of(charger: &str) -> u64 {
    let text =
        std::fs::read_to_string(root("topologies/karhula/chargers.geojson")).expect("fixture");
    let doc: serde_json::Value = serde_json::from_str(&text).expect("geojson");
    doc["features"]
        .as_array()
        .expect("features")
        .iter()
        .find(|f| f["properties"]["id"] == charger)
        .and_then(|f| f["properties"]["connectors"].as_u64())
        .expect("the charger's connectors")
}

/// A JSON object from `(key, raw JSON value)` pairs: `base` with `over`
/// replacing fields of the same key (or added); a raw value of `None`
/// removes the field.
fn object(base: &[(&str, &str)], over: &[(&str, Option<&str>)]) -> String {
    let mut fields: Vec<(String, Option<String>)> = base
        .iter()
        .map(|(k, v)| (k.to_string(), Some(v.to_string())))
        .collect();
    for (k, v) in over {
        match fields.iter_mut().find(|(key, _)| key == k) {
            Some(f) => f.1 = v.map(str::to_owned),
            None => fields.push((k.to_string(), v.map(str::to_owned))),
        }
    }
    let body: Vec<String> = fields
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| format!("\"{k}\":{v}")))
        .collect();
    format!("{{{}}}", body.join(","))
}

const VEHICLE: &[(&str, &str)] = &[
    ("type", "\"vehicle\""),
    ("vehicle_id", "\"v-1\""),
    ("ts_ms", "1767258001000"),
    ("lat", "60.53"),
    ("lon", "26.95"),
    ("speed_mps", "3"),
];

const CHARGER_REPORT: &[(&str, &str)] = &[
    ("type", "\"charger\""),
    ("charger_id", "\"cs-niittykatu-1\""),
    ("connector", "1"),
    ("ts_ms", "1767258001000"),
    ("status", "\"Occupied\""),
    ("power_kw", "7.5"),
    ("energy_wh", "1000"),
];

fn boundary_cases() -> Vec<Case> {
    use RejectReason::*;
    use Want::Accept;
    let reject = |r: RejectReason, f: &'static str| Want::Reject(r, Some(f));
    let mut cases = Vec::new();
    let mut add = |what: String, line: String, want: Want| {
        cases.push(Case {
            what,
            line: line.into_bytes(),
            want,
            cbor: true,
        })
    };
    let quoted = |s: &str| format!("\"{s}\"");
    // One field of a vehicle report / charger report set to a raw value.
    let mut vehicle = |field: &str, raw: &str, want: Want| {
        let line = if let Some(soc) = field.strip_prefix("ev.") {
            object(VEHICLE, &[("ev", Some(&format!("{{\"{soc}\":{raw}}}")))])
        } else {
            object(VEHICLE, &[(field, Some(raw))])
        };
        add(format!("vehicle {field} = {raw}"), line, want);
    };

    // Ids (§1, §6): 1-64 bytes of [A-Za-z0-9._:#-].
    let id64 = "v".repeat(64);
    let id65 = "v".repeat(65);
    vehicle("vehicle_id", &quoted(&id64), Accept);
    vehicle(
        "vehicle_id",
        &quoted(&id65),
        reject(InvalidId, "vehicle_id"),
    );
    vehicle("vehicle_id", &quoted("v"), Accept);
    vehicle("vehicle_id", &quoted(""), reject(InvalidId, "vehicle_id"));
    vehicle("vehicle_id", &quoted("AZaz09._:#-"), Accept);
    for bad in [" ", "/", "+", "@", ",", "é", "\\\"", "\\u0000"] {
        vehicle(
            "vehicle_id",
            &quoted(&format!("v{bad}1")),
            reject(InvalidId, "vehicle_id"),
        );
    }
    // A segment id of 64 bytes is well-formed (it names no segment: the
    // report is accepted and counted as unknown_segment, §2).
    vehicle("segment_id", &quoted(&"s".repeat(64)), Accept);
    vehicle(
        "segment_id",
        &quoted(&"s".repeat(65)),
        reject(InvalidId, "segment_id"),
    );
    vehicle(
        "segment_id",
        &quoted("s 1"),
        reject(InvalidId, "segment_id"),
    );

    // ts_ms: from 2000-01-01 to 2100-01-01 (Unix ms), an integer.
    let y2000: u64 = 946_684_800_000; // 10957 days after the epoch
    let y2100: u64 = 4_102_444_800_000; // 47482 days after the epoch
    assert_eq!(y2000, 10_957 * 86_400_000);
    assert_eq!(y2100, 47_482 * 86_400_000);
    vehicle("ts_ms", &y2000.to_string(), Accept);
    vehicle(
        "ts_ms",
        &(y2000 - 1).to_string(),
        reject(OutOfRange, "ts_ms"),
    );
    vehicle("ts_ms", &y2100.to_string(), Accept);
    vehicle(
        "ts_ms",
        &(y2100 + 1).to_string(),
        reject(OutOfRange, "ts_ms"),
    );
    vehicle("ts_ms", "1767258001000.5", reject(OutOfRange, "ts_ms"));
    vehicle("ts_ms", "1767258001000.0", Accept); // an integer, written as a float
    vehicle("ts_ms", "\"1767258001000\"", reject(WrongType, "ts_ms"));

    // speed_mps: 0 to 90.
    vehicle("speed_mps", "0", Accept);
    vehicle("speed_mps", "-0.0001", reject(OutOfRange, "speed_mps"));
    vehicle("speed_mps", "90", Accept);
    vehicle("speed_mps", "90.0001", reject(OutOfRange, "speed_mps"));
    // heading_deg: 0 to 360.
    vehicle("heading_deg", "0", Accept);
    vehicle("heading_deg", "-0.0001", reject(OutOfRange, "heading_deg"));
    vehicle("heading_deg", "360", Accept);
    vehicle("heading_deg", "360.0001", reject(OutOfRange, "heading_deg"));
    // lat, lon: WGS84 degrees.
    for (field, limit) in [("lat", 90), ("lon", 180)] {
        for sign in ["", "-"] {
            vehicle(field, &format!("{sign}{limit}"), Accept);
            vehicle(
                field,
                &format!("{sign}{limit}.0001"),
                reject(OutOfRange, field),
            );
        }
    }
    // ev.soc_pct: 0 to 100.
    vehicle("ev.soc_pct", "0", Accept);
    vehicle("ev.soc_pct", "-0.0001", reject(OutOfRange, "ev.soc_pct"));
    vehicle("ev.soc_pct", "100", Accept);
    vehicle("ev.soc_pct", "100.0001", reject(OutOfRange, "ev.soc_pct"));

    let mut charger = |field: &str, raw: &str, want: Want| {
        add(
            format!("charger {field} = {raw}"),
            object(CHARGER_REPORT, &[(field, Some(raw))]),
            want,
        );
    };
    // power_kw: 0 to 10,000.
    charger("power_kw", "0", Accept);
    charger("power_kw", "-0.001", reject(OutOfRange, "power_kw"));
    charger("power_kw", "10000", Accept);
    charger("power_kw", "10000.001", reject(OutOfRange, "power_kw"));
    // energy_wh: an integer, 0 to 2^53.
    let two_53: u64 = 1 << 53;
    charger("energy_wh", "0", Accept);
    charger("energy_wh", "-1", reject(OutOfRange, "energy_wh"));
    charger("energy_wh", &two_53.to_string(), Accept);
    charger(
        "energy_wh",
        &(two_53 + 2).to_string(),
        reject(OutOfRange, "energy_wh"),
    );
    charger("energy_wh", "1000.5", reject(OutOfRange, "energy_wh"));
    // connector: 1-based, at most the charger's connector count.
    let n = connectors_of(CHARGER);
    charger("connector", "1", Accept);
    charger("connector", &n.to_string(), Accept);
    charger(
        "connector",
        &(n + 1).to_string(),
        reject(UnknownConnector, "connector"),
    );
    charger("connector", "0", reject(OutOfRange, "connector"));
    charger("connector", "1.5", reject(OutOfRange, "connector"));
    // Ids of charger reports: a 64-byte charger id is well-formed (and not
    // in the charger list), a 65-byte one is not; the optional vehicle id
    // has the same limit.
    charger(
        "charger_id",
        &quoted(&"c".repeat(64)),
        reject(UnknownCharger, "charger_id"),
    );
    charger(
        "charger_id",
        &quoted(&"c".repeat(65)),
        reject(InvalidId, "charger_id"),
    );
    charger("vehicle_id", &quoted(&id64), Accept);
    charger(
        "vehicle_id",
        &quoted(&id65),
        reject(InvalidId, "vehicle_id"),
    );

    // Unknown fields are ignored.
    add(
        "unknown fields".into(),
        object(
            VEHICLE,
            &[("firmware", Some("{\"v\":[1,2]}")), ("x", Some("null"))],
        ),
        Accept,
    );
    // JSON Lines lines up to 64 KiB (65,536 bytes, without the line end).
    for (len, want) in [
        (64 << 10, Accept),
        ((64 << 10) + 1, Want::Reject(TooLong, None)),
    ] {
        let pad = len - object(VEHICLE, &[("pad", Some("\"\""))]).len();
        let line = object(VEHICLE, &[("pad", Some(&quoted(&"x".repeat(pad))))]);
        assert_eq!(line.len(), len);
        cases.push(Case {
            what: format!("a line of {len} bytes"),
            line: line.into_bytes(),
            want,
            cbor: false,
        });
    }
    cases
}

/// The document's limits the conversion to f64 loses: integers just past
/// a limit that round onto it. Kept apart (see the report in the test).
fn precision_cases() -> Vec<Case> {
    let two_53: u64 = 1 << 53;
    vec![
        Case {
            what: format!("charger energy_wh = 2^53 + 1 = {}", two_53 + 1),
            line: object(
                CHARGER_REPORT,
                &[("energy_wh", Some(&(two_53 + 1).to_string()))],
            )
            .into_bytes(),
            want: Want::Reject(RejectReason::OutOfRange, Some("energy_wh")),
            cbor: true,
        },
        Case {
            what: "vehicle ts_ms = 1767258001000.5 (not an integer)".into(),
            line: object(VEHICLE, &[("ts_ms", Some("1767258001000.5"))]).into_bytes(),
            want: Want::Reject(RejectReason::OutOfRange, Some("ts_ms")),
            cbor: false,
        },
    ]
}

/// The verdict of the node's live validation (the ACK's view: index,
/// reason code, message) for each record of one batch.
fn live_verdicts(
    encoding: edgeflow::log::Encoding,
    batch: &[u8],
    reference: &edgeflow::reference::Reference,
    latest_ts: u64,
    n: usize,
) -> Vec<Result<(), (u8, String)>> {
    let v = edgeflow::ingest::validate::validate(encoding, batch, reference, latest_ts);
    let mut out = vec![Ok(()); n];
    for (i, code, message) in v.rejections {
        out[i as usize] = Err((code, message));
    }
    assert_eq!(v.index.len() + out.iter().filter(|r| r.is_err()).count(), n);
    out
}

fn check_verdict(case: &Case, got: &Result<(), (u8, String)>, path: &str) -> Option<String> {
    use edgeflow::ingest::frame::reason_code;
    let ok = match (&case.want, got) {
        (Want::Accept, Ok(())) => true,
        (Want::Reject(reason, field), Err((code, message))) => {
            *code == reason_code(*reason)
                && field.is_none_or(|f| message.contains(&format!("field `{f}`")))
        }
        _ => false,
    };
    (!ok).then(|| format!("{path}: {}: want {:?}, got {got:?}", case.what, case.want))
}

/// JSON batch and CBOR sequence of `cases` (the CBOR one only of cases that
/// have a CBOR form), and the cases in the CBOR sequence.
fn batches(cases: &[Case]) -> (Vec<u8>, Vec<u8>, Vec<&Case>) {
    let mut json = Vec::new();
    let mut cbor = Vec::new();
    let mut in_cbor = Vec::new();
    for c in cases {
        json.extend_from_slice(&c.line);
        json.push(b'\n');
        if c.cbor {
            // The same map, as a CBOR item: integers stay integers, floats
            // floats (serde_json keeps them apart).
            let value: serde_json::Value =
                serde_json::from_slice(&c.line).unwrap_or_else(|e| panic!("{}: {e}", c.what));
            cbor.extend(minicbor_serde::to_vec(&value).expect("cbor"));
            in_cbor.push(c);
        }
    }
    (json, cbor, in_cbor)
}

#[test]
fn each_validation_limit_accepts_its_boundary_and_rejects_just_past_it_live_in_json_and_cbor() {
    use edgeflow::log::Encoding;
    let topo = Topology::load(&root("topologies/karhula.toml")).expect("valid");
    let cases = boundary_cases();
    let (json, cbor, in_cbor) = batches(&cases);
    let mut wrong = Vec::new();
    for (case, got) in cases.iter().zip(live_verdicts(
        Encoding::JsonLines,
        &json,
        &topo.reference,
        u64::MAX,
        cases.len(),
    )) {
        wrong.extend(check_verdict(case, &got, "live JSON"));
    }
    for (case, got) in in_cbor.iter().zip(live_verdicts(
        Encoding::Cbor,
        &cbor,
        &topo.reference,
        u64::MAX,
        in_cbor.len(),
    )) {
        wrong.extend(check_verdict(case, &got, "live CBOR"));
    }
    assert!(
        wrong.is_empty(),
        "{} wrong verdicts:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    let accepted = cases.iter().filter(|c| c.want == Want::Accept).count();
    assert!(
        accepted > 20 && cases.len() - accepted > 30,
        "both sides of every limit"
    );

    // Live ingest: `ts_ms` at most max_future ahead of the node's clock.
    // The node passes its clock plus max_future as the latest time; at it
    // a record is accepted, a millisecond past it refused as `future`.
    let latest: u64 = 1_767_258_001_000 + 5 * 60_000;
    let future = [
        (latest, Want::Accept),
        (
            latest + 1,
            Want::Reject(RejectReason::Future, Some("ts_ms")),
        ),
    ];
    let lines: Vec<Case> = future
        .iter()
        .map(|(ts, want)| Case {
            what: format!("ts_ms {ts} with the latest allowed {latest}"),
            line: object(VEHICLE, &[("ts_ms", Some(&ts.to_string()))]).into_bytes(),
            want: *want,
            cbor: true,
        })
        .collect();
    let (json, cbor, _) = batches(&lines);
    for (encoding, batch) in [(Encoding::JsonLines, json), (Encoding::Cbor, cbor)] {
        for (case, got) in
            lines
                .iter()
                .zip(live_verdicts(encoding, &batch, &topo.reference, latest, 2))
        {
            assert_eq!(check_verdict(case, &got, &format!("{encoding:?}")), None);
        }
    }
}

#[test]
fn each_validation_limit_holds_in_replay_with_its_line_and_reason() {
    let topo = Topology::load(&root("topologies/karhula.toml")).expect("valid");
    let reference = Arc::new(topo.reference.clone());
    let cases = boundary_cases();
    // Replays report the first MAX_REPORTED_ERRORS errors with their line:
    // replay the cases in groups with at most that many rejections each.
    let mut groups: Vec<Vec<&Case>> = vec![Vec::new()];
    for c in &cases {
        let rejections = |g: &Vec<&Case>| g.iter().filter(|c| c.want != Want::Accept).count();
        let last = groups.last_mut().expect("a group");
        if c.want != Want::Accept && rejections(last) == edgeflow::pipeline::MAX_REPORTED_ERRORS {
            groups.push(Vec::new());
        }
        groups.last_mut().expect("a group").push(c);
    }
    let mut wrong = Vec::new();
    for group in &groups {
        let mut input = Vec::new();
        for c in group {
            input.extend_from_slice(&c.line);
            input.push(b'\n');
        }
        let (_, _, s) = replay(input, &reference, topo.time, RunOptions::new(1));
        assert_eq!(s.ingest.records, group.len() as u64);
        for reason in RejectReason::ALL {
            let want = group
                .iter()
                .filter(|c| matches!(c.want, Want::Reject(r, _) if r == reason))
                .count() as u64;
            let got = s.ingest.rejected[reason.index()];
            if got != want {
                wrong.push(format!("{}: {got} rejected, want {want}", reason.as_str()));
            }
        }
        // Lines are numbered from 1.
        for (i, c) in group.iter().enumerate() {
            let line = i as u64 + 1;
            let error = s.ingest.errors.iter().find(|(l, _)| *l == line);
            let ok = match (c.want, error) {
                (Want::Accept, None) => true,
                (Want::Reject(_, field), Some((_, message))) => {
                    field.is_none_or(|f| message.contains(&format!("field `{f}`")))
                }
                _ => false,
            };
            if !ok {
                wrong.push(format!(
                    "line {line}, {}: want {:?}, got {error:?}",
                    c.what, c.want
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

/// The line limit counts the line without its end, `\n` or `\r\n`, live
/// and in replay alike (replay once counted the `\r`: a line accepted live
/// was `too_long` when its recording was replayed).
#[test]
fn a_crlf_line_end_is_not_part_of_the_line_length_in_replay_or_live() {
    let topo = Topology::load(&root("topologies/karhula.toml")).expect("valid");
    let reference = Arc::new(topo.reference.clone());
    let pad = (64 << 10) - object(VEHICLE, &[("pad", Some("\"\""))]).len();
    let line = object(
        VEHICLE,
        &[("pad", Some(&format!("\"{}\"", "x".repeat(pad))))],
    );
    assert_eq!(line.len(), 64 << 10);
    let input = format!("{line}\r\n").into_bytes();
    let live = edgeflow::ingest::validate::validate(
        edgeflow::log::Encoding::JsonLines,
        &input,
        &reference,
        u64::MAX,
    );
    assert!(live.rejections.is_empty(), "live: {:?}", live.rejections);
    let (_, _, s) = replay(input, &reference, topo.time, RunOptions::new(1));
    assert_eq!(
        s.ingest.rejected_total(),
        0,
        "replay: {:?}",
        s.ingest.errors
    );
}

/// Integer fields are read as integers, not through a double: an integer
/// just past a limit (`"energy_wh":9007199254740993`, 2^53 + 1, in JSON or
/// as a CBOR integer) is rejected, not rounded onto the limit (it was, once:
/// `model::num_opt`); a fraction a double holds (`.5`) is rejected too.
#[test]
fn integers_past_a_limit_are_not_rounded_onto_it() {
    use edgeflow::log::Encoding;
    let topo = Topology::load(&root("topologies/karhula.toml")).expect("valid");
    let cases = precision_cases();
    let (json, cbor, in_cbor) = batches(&cases);
    let mut wrong: Vec<String> = Vec::new();
    let got = live_verdicts(
        Encoding::JsonLines,
        &json,
        &topo.reference,
        u64::MAX,
        cases.len(),
    );
    for (c, g) in cases.iter().zip(&got) {
        wrong.extend(check_verdict(c, g, "live JSON"));
    }
    let got = live_verdicts(
        Encoding::Cbor,
        &cbor,
        &topo.reference,
        u64::MAX,
        in_cbor.len(),
    );
    for (c, g) in in_cbor.iter().zip(&got) {
        wrong.extend(check_verdict(c, g, "live CBOR"));
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
