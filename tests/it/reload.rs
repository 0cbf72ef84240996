//! Reloading a running node's topology (issue 15): tokens, operators and
//! privacy change in place while a sender and subscribers stay connected;
//! a subscription no longer allowed what it has ends with the reason; an
//! invalid file, or one changing what cannot change live, changes nothing
//! and is counted.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Duration;

use edgeflow::log::Encoding;
use edgeflow::node::reload::ReloadError;
use edgeflow::subscribe::client::SubscribeOptions;
use edgeflow::subscribe::proto::SubError;
use sha2::{Digest, Sha256};

use crate::ingest::{runtime, send_file, TOKEN};
use crate::subscribe::{await_snapshots, code, first_frame, follow, node, options, CITY, CPO};
use crate::support::data;

const NEW_FLEET: &str = "the-fleet's-new-secret";
const NEW_OPERATOR: &str = "a-new-operator's-token";

fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn edit(dir: &Path, f: impl FnOnce(String) -> String) {
    let path = dir.join("edge.toml");
    let text = std::fs::read_to_string(&path).expect("topology");
    let edited = f(text.clone());
    assert_ne!(edited, text, "the edit changes the topology");
    std::fs::write(&path, edited).expect("topology written");
}

#[test]
fn a_reload_changes_tokens_and_operators_in_place_and_drops_no_connection() {
    let mut node = node("[privacy]\nmin_vehicles = 1\n");
    let (ready_tx, ready) = mpsc::channel();
    // The city stays an operator; the charge point operator goes.
    let city = follow(
        options(&node, SubscribeOptions::request(CITY, "congestion")),
        ready_tx.clone(),
    );
    let cpo_req = SubscribeOptions::request(CPO, "charging");
    let cpo = follow(options(&node, cpo_req), ready_tx);
    await_snapshots(&ready, 2);
    // A paced send (600 s of telemetry in about 4 s) on one connection,
    // under way across the reload.
    let mut opts = node.options(Encoding::Cbor);
    opts.batch_lines = 200;
    opts.pace = Some(150.0);
    let sender = std::thread::spawn(move || send_file(&opts, &data("sumo-public/telemetry.jsonl")));
    std::thread::sleep(Duration::from_millis(1500));
    let cpo_hash = hash(CPO);
    edit(node.dir.path(), |t| {
        t.replace(&hash(TOKEN), &hash(NEW_FLEET))
            .replace(&cpo_hash, &hash(NEW_OPERATOR))
    });
    let handle = node.handle.as_ref().expect("running");
    let reloaded = handle.reload().expect("the reload applies");
    assert_eq!(reloaded.changed, ["tokens", "operators"]);
    assert!(!sender.is_finished(), "the send is still under way");

    // The connection under way carried on to the end.
    let report = sender.join().expect("sender thread");
    assert_eq!((report.accepted, report.rejected), (11_486, 0));
    assert_eq!(report.reconnects, 0, "the reload dropped no connection");
    // The operator gone was told, at once, why its subscription ended.
    let (_, error) = cpo.join().expect("cpo subscriber");
    let error = error.expect("the cpo subscription ended with an error");
    assert!(
        error.contains("unknown operator token") && error.contains("reload"),
        "{error}"
    );
    // New connections meet the new tokens.
    let old = first_frame(&node, SubscribeOptions::request(CPO, "charging"));
    assert_eq!(code(&old), Some(SubError::Unauthorized as u16), "{old:?}");
    let new = first_frame(&node, SubscribeOptions::request(NEW_OPERATOR, "charging"));
    assert_eq!(code(&new), None, "the new operator subscribes: {new:?}");
    let mut opts = node.options(Encoding::JsonLines);
    opts.max_reconnects = 0;
    let refused = runtime().block_on(edgeflow::ingest::client::send(
        &opts,
        edgeflow::ingest::client::batches(
            &data("sumo-public/telemetry.jsonl"),
            Encoding::JsonLines,
            100,
            &mut Default::default(),
        )
        .expect("batches"),
        |_, _| {},
    ));
    let why = format!("{:?}", refused.expect_err("the old fleet token is refused"));
    assert!(why.contains("token"), "{why}");
    opts.token = NEW_FLEET.into();
    opts.sender = "recorder-2".into();
    let fresh = std::fs::read_to_string(data("sumo-public/telemetry.jsonl")).expect("recording");
    let few: String = fresh.lines().take(50).map(|l| format!("{l}\n")).collect();
    let file = node.dir.path().join("few.jsonl");
    std::fs::write(&file, few).expect("few");
    let report = send_file(&opts, &file);
    assert_eq!(report.accepted, 50, "the new fleet token sends");

    let counts = &handle.reloader.counts;
    assert_eq!(counts.applied.load(Ordering::Relaxed), 1);
    node.stop();
    // The city's subscription went on to the end, equal to the sink.
    let (state, error) = city.join().expect("city subscriber");
    assert_eq!(error, None);
    let want = crate::subscribe::csv_rows(&node.sink("congestion.csv"));
    crate::subscribe::assert_state(&state, &want, "the city across the reload");
}

#[test]
fn an_invalid_file_or_a_fixed_setting_changes_nothing_and_is_counted() {
    let mut node = node("");
    let dir = node.dir.path().to_owned();
    let original = std::fs::read_to_string(dir.join("edge.toml")).expect("topology");
    let handle = node.handle.as_ref().expect("running");
    let counts = handle.reloader.counts.clone();

    // The same file: nothing to do.
    let same = handle.reload().expect("an unchanged file reloads");
    assert!(same.changed.is_empty());
    assert_eq!(counts.unchanged.load(Ordering::Relaxed), 1);

    // A file with problems (and a new operator token in it): refused,
    // every problem named.
    edit(&dir, |t| {
        t.replace(&hash(CITY), &hash(NEW_OPERATOR))
            .replace("[windows]\n", "[windows]\nsize = \"banana\"\n")
    });
    let e = handle.reload().expect_err("an invalid file is refused");
    assert!(matches!(e, ReloadError::Invalid { .. }), "{e}");
    assert!(e.to_string().contains("windows.size"), "{e}");
    assert_eq!(counts.invalid.load(Ordering::Relaxed), 1);

    // What a running node cannot change: each named, nothing applied.
    std::fs::write(dir.join("edge.toml"), &original).expect("restore");
    edit(&dir, |t| {
        t.replace(&hash(CITY), &hash(NEW_OPERATOR))
            .replace("127.0.0.1:0", "127.0.0.1:1")
            .replace("[windows]\n", "[windows]\nsize = \"5m\"\n")
            .replace("segment_bytes = 262144", "segment_bytes = 524288")
    });
    let e = handle.reload().expect_err("a fixed change is refused");
    let text = e.to_string();
    for named in ["[ingest] listen", "[windows]", "[log]", "restart"] {
        assert!(text.contains(named), "{named} in {text}");
    }
    assert!(!text.contains("operators"), "{text}");
    assert_eq!(counts.refused.load(Ordering::Relaxed), 1);
    assert_eq!(counts.applied.load(Ordering::Relaxed), 0);

    // The configuration in force stayed: the old token subscribes, the
    // new one does not.
    let old = first_frame(&node, SubscribeOptions::request(CITY, "congestion"));
    assert_eq!(code(&old), None, "{old:?}");
    let new = first_frame(&node, SubscribeOptions::request(NEW_OPERATOR, "congestion"));
    assert_eq!(code(&new), Some(SubError::Unauthorized as u16), "{new:?}");
    // The outcomes are in the node's metrics.
    let scrape = handle.registry.render();
    for outcome in ["unchanged", "invalid", "refused"] {
        let line = format!("edgeflow_reloads_total{{outcome=\"{outcome}\"}} 1");
        assert!(scrape.contains(&line), "{line} in\n{scrape}");
    }
    node.stop();
}

#[test]
fn a_raised_privacy_threshold_withdraws_rows_from_subscribers_at_once() {
    let mut node = node("[privacy]\nmin_vehicles = 1\n");
    crate::ingest::send_recording(&node);
    // Rows over few vehicles are shown under k = 1.
    let (ready_tx, ready) = mpsc::channel();
    let before = follow(
        options(&node, SubscribeOptions::request(CITY, "congestion")),
        ready_tx.clone(),
    );
    await_snapshots(&ready, 1);
    edit(node.dir.path(), |t| {
        t.replace("min_vehicles = 1", "min_vehicles = 1000")
    });
    let handle = node.handle.as_ref().expect("running");
    let reloaded = handle.reload().expect("the reload applies");
    assert_eq!(reloaded.changed, ["[privacy] min_vehicles"]);
    // A new subscriber sees nothing: no segment has 1000 vehicles.
    let after = follow(
        options(&node, SubscribeOptions::request(CITY, "congestion")),
        ready_tx,
    );
    await_snapshots(&ready, 1);
    node.stop();
    let (state, error) = after.join().expect("subscriber");
    assert_eq!(error, None);
    assert!(state.rows.is_empty(), "{} rows shown", state.rows.len());
    // The subscriber from before saw its rows retracted.
    let (state, error) = before.join().expect("subscriber");
    assert_eq!(error, None);
    assert!(state.rows.is_empty(), "{} rows left", state.rows.len());
    let sink = crate::subscribe::csv_rows(&node.sink("congestion.csv"));
    assert!(
        sink.len() > 30,
        "the files sink keeps every row: {}",
        sink.len()
    );
}
