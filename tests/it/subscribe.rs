//! Live subscriptions over QUIC: a subscriber's state (snapshot, then
//! changes) equals the files sink; scopes, privacy and bad requests get
//! their documented errors; a subscriber that stops reading is cut off
//! without holding anyone else up.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use bytes::BytesMut;
use edgeflow::log::Encoding;
use edgeflow::subscribe::client::{subscribe, State, SubscribeOptions};
use edgeflow::subscribe::proto::{Filter, ResumePoint, SubError, SubFrame, Subscribe, ALPN};
use sha2::{Digest, Sha256};

use crate::ingest::{runtime, send_file, send_recording, start_with, topology_text, Node};
use crate::support::{data, root};

pub(crate) const CITY: &str = "city-traffic-department";
pub(crate) const CPO: &str = "charge-point-operator";
pub(crate) const CPO_CHARGER: &str = "cs-hiidenkirnuntie-1";

pub(crate) fn node(extra: &str) -> Node {
    node_with("", extra)
}

/// A node as [`node`], with `ingest` added to its `[ingest]` section.
pub(crate) fn node_with(ingest: &str, extra: &str) -> Node {
    let zones = std::fs::read_to_string(root("topologies/karhula/zones.geojson")).expect("zones");
    let hash = |t: &str| hex::encode(Sha256::digest(t.as_bytes()));
    let extra = format!(
        "[[operator]]\nname = \"city\"\ntoken_sha256 = \"{}\"\n\
         [[operator]]\nname = \"cpo\"\ntoken_sha256 = \"{}\"\nkinds = [\"charging\"]\nchargers = [\"{CPO_CHARGER}\"]\n\
         [zones]\nh3_resolution = 8\n{extra}",
        hash(CITY),
        hash(CPO)
    );
    start_with(move |dir: &Path| {
        std::fs::write(dir.join("zones.geojson"), &zones).expect("zones");
        topology_text(dir, ingest).replace("[windows]\n", "zones = \"zones.geojson\"\n[windows]\n")
            + &extra
    })
}

pub(crate) fn options(node: &Node, request: Subscribe) -> SubscribeOptions {
    SubscribeOptions {
        identity: None,
        to: node.addr(),
        server_name: "localhost".into(),
        ca: node.ca.clone(),
        request,
    }
}

/// Subscribes on a thread of its own; reports the snapshot marker on
/// `ready`; returns the state and the error text at the end of the stream.
pub(crate) fn follow(
    opts: SubscribeOptions,
    ready: mpsc::Sender<()>,
) -> std::thread::JoinHandle<(State, Option<String>)> {
    std::thread::spawn(move || {
        let mut state = State::default();
        let mut told = false;
        let error = runtime()
            .block_on(subscribe(&opts, |f| {
                state.apply(f);
                if state.snapshot_done && !told {
                    told = true;
                    let _ = ready.send(());
                }
                true
            }))
            .expect("subscription runs");
        if !told {
            let _ = ready.send(());
        }
        (state, error)
    })
}

/// Waits for `n` subscribers started by [`follow`] to report their
/// snapshot marker (30 s at most: a loaded machine, an empty node).
pub(crate) fn await_snapshots(ready: &mpsc::Receiver<()>, n: usize) {
    for i in 0..n {
        if ready.recv_timeout(Duration::from_secs(30)).is_err() {
            panic!("{} of {n} subscribers got no snapshot marker", n - i);
        }
    }
}

/// The files sink's file of an aggregate kind.
pub(crate) fn sink_file(kind: &str) -> &'static str {
    match kind {
        "congestion" => "congestion.csv",
        "charging" => "charging.csv",
        _ => "zones.csv",
    }
}

/// CSV rows by (id, window start) → fields by header name.
pub(crate) fn csv_rows(csv: &str) -> BTreeMap<(String, u64), BTreeMap<String, String>> {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().expect("header").split(',').collect();
    let window = header
        .iter()
        .position(|h| *h == "window_start_ms")
        .expect("window");
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            let row = header
                .iter()
                .zip(&f)
                .map(|(h, v)| (h.to_string(), v.to_string()))
                .collect();
            ((f[0].to_owned(), f[window].parse().expect("window")), row)
        })
        .collect()
}

/// Asserts the subscriber holds exactly `want`, field by field.
pub(crate) fn assert_state(
    state: &State,
    want: &BTreeMap<(String, u64), BTreeMap<String, String>>,
    what: &str,
) {
    let got = state
        .rows
        .iter()
        .map(|(key, row)| {
            let value = row.value.clone().expect("an upsert has a value");
            (key.clone(), serde_json::Value::Object(value))
        })
        .collect();
    assert_json_rows(&got, want, what);
}

/// Asserts that rows as a subscriber received them (JSON values by (key,
/// window)) are exactly the CSV rows `want`, field by field: numbers equal
/// to 1e-9 (the CSV prints them rounded as TELEMETRY.md §4 says, the JSON
/// carries the same figures), the rest as text.
pub(crate) fn assert_json_rows(
    got: &BTreeMap<(String, u64), serde_json::Value>,
    want: &BTreeMap<(String, u64), BTreeMap<String, String>>,
    what: &str,
) {
    crate::support::assert_same_keys(got, want, what);
    for (key, fields) in want {
        let value = &got[key];
        for (name, text) in fields {
            if name.ends_with("_id") || name.starts_with("window_") {
                continue; // the row's key and window
            }
            let v = value
                .get(name)
                .unwrap_or_else(|| panic!("{what}: {key:?} has no {name}: {value}"));
            let same = match (v.as_f64(), text.parse::<f64>()) {
                (Some(a), Ok(b)) => (a - b).abs() <= 1e-9 * b.abs().max(1.0),
                _ => v.as_str() == Some(text.as_str()),
            };
            assert!(same, "{what}: {key:?} {name}: got {v}, sink {text}");
        }
    }
}

#[test]
fn subscribers_rebuild_the_sink_in_final_and_provisional_modes() {
    let mut node = node("[privacy]\nmin_vehicles = 1\n");
    let (ready_tx, ready) = mpsc::channel();
    let mut subs = Vec::new();
    for (kind, mode) in [
        ("congestion", "final"),
        ("congestion", "provisional"),
        ("charging", "final"),
        ("zone", "provisional"),
    ] {
        let mut req = SubscribeOptions::request(CITY, kind);
        req.mode = mode.into();
        subs.push((kind, mode, follow(options(&node, req), ready_tx.clone())));
    }
    await_snapshots(&ready, subs.len());
    send_recording(&node);
    node.stop();
    // The newest event time of the recording, minus the allowed lateness:
    // the watermark of the stop, which the last PROGRESS may not exceed.
    let text = std::fs::read_to_string(data("sumo-public/telemetry.jsonl")).expect("fixture");
    let newest = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["ts_ms"].as_u64())
        .max()
        .expect("records");
    for (kind, mode, sub) in subs {
        let (state, error) = sub.join().expect("subscriber thread");
        assert_eq!(error, None, "{kind} {mode}");
        let last = state.progress.as_ref().map(|p| p.watermark_ms);
        assert_eq!(
            last,
            Some(newest - 5_000),
            "{kind} {mode}: the last PROGRESS"
        );
        let file = sink_file(kind);
        let want = csv_rows(&node.sink(file));
        assert!(want.len() > 30, "{kind}: {} rows", want.len());
        assert_state(&state, &want, &format!("{kind} {mode}"));
        if mode == "provisional" {
            assert!(state
                .rows
                .values()
                .all(|r| r.status.as_deref() != Some("provisional")));
        }
    }
}

#[test]
fn the_default_privacy_threshold_withholds_rows_over_few_vehicles() {
    let mut node = node("");
    let (ready_tx, ready) = mpsc::channel();
    let subs: Vec<_> = [("congestion", "congestion.csv"), ("zone", "zones.csv")]
        .into_iter()
        .map(|(kind, file)| {
            let req = SubscribeOptions::request(CITY, kind);
            (kind, file, follow(options(&node, req), ready_tx.clone()))
        })
        .collect();
    await_snapshots(&ready, subs.len());
    send_file(
        &node.options(Encoding::JsonLines),
        &data("sumo-public/telemetry.jsonl"),
    );
    node.stop();
    for (kind, file, sub) in subs {
        let (state, error) = sub.join().expect("subscriber thread");
        assert_eq!(error, None);
        let all = csv_rows(&node.sink(file));
        let few = |r: &BTreeMap<String, String>| r["vehicles"].parse::<u64>().expect("n") < 3;
        // A zone shows its road traffic over 3 vehicles or more, its low-SoC
        // EVs when there are 3 or more, its chargers always; a part under
        // the threshold looks like none, and a row with nothing left goes.
        let want: BTreeMap<_, _> = all
            .iter()
            .filter_map(|(k, r)| match (few(r), kind) {
                (false, "congestion") => Some((k.clone(), r.clone())),
                (true, "congestion") => None,
                _ => {
                    let mut r = r.clone();
                    if few(&r) {
                        for f in ["samples", "vehicles", "segments", "jammed_segments"] {
                            r.insert(f.into(), "0".into());
                        }
                        r.insert("mean_speed_ratio".into(), String::new());
                    }
                    if r["low_soc_evs"].parse::<u64>().expect("n") < 3 {
                        r.insert("low_soc_evs".into(), "0".into());
                    }
                    let shown = |f: &str| r[f] != "0";
                    (shown("vehicles") || shown("chargers") || shown("low_soc_evs"))
                        .then(|| (k.clone(), r))
                }
            })
            .collect();
        assert!(
            all.values().any(few) && !want.is_empty(),
            "{kind}: some rows have fewer than 3 vehicles"
        );
        if kind == "zone" {
            assert!(
                all.values()
                    .any(|r| few(r) && r["vehicles"] != "0" && r["chargers"] != "0"),
                "a zone with chargers and too few vehicles"
            );
        }
        assert_state(&state, &want, &format!("{kind} with k = 3"));
    }
}

/// Subscribes with `req` and returns the first frame (the error, for a
/// refused request).
pub(crate) fn first_frame(node: &Node, req: Subscribe) -> SubFrame {
    let mut first = None;
    runtime()
        .block_on(subscribe(&options(node, req), |f| {
            first = Some(f.clone());
            false
        }))
        .expect("connects");
    first.expect("a frame")
}

pub(crate) fn code(frame: &SubFrame) -> Option<u16> {
    match frame {
        SubFrame::Error(e) => Some(e.code),
        _ => None,
    }
}

#[test]
fn scopes_tokens_and_bad_requests_get_their_errors() {
    let mut node = node("");
    send_file(
        &node.options(Encoding::JsonLines),
        &data("sumo-public/telemetry.jsonl"),
    );
    let req = |token: &str, kind: &str| SubscribeOptions::request(token, kind);
    let err = |r: Subscribe| code(&first_frame(&node, r));
    assert_eq!(
        err(req("wrong", "congestion")),
        Some(SubError::Unauthorized as u16)
    );
    assert_eq!(
        err(req(CPO, "congestion")),
        Some(SubError::Forbidden as u16)
    );
    assert_eq!(err(req(CITY, "parking")), Some(SubError::UnknownKey as u16));
    let mut r = req(CPO, "charging");
    r.filter = Some(Filter {
        ids: Some(vec!["cs-other".into()]),
        bbox: None,
    });
    assert_eq!(err(r), Some(SubError::UnknownKey as u16));
    let other = node_charger_other_than(CPO_CHARGER);
    let mut r = req(CPO, "charging");
    r.filter = Some(Filter {
        ids: Some(vec![other]),
        bbox: None,
    });
    assert_eq!(err(r), Some(SubError::Forbidden as u16));
    let mut r = req(CITY, "congestion");
    r.mode = "sometimes".into();
    assert_eq!(err(r), Some(SubError::BadRequest as u16));
    let mut r = req(CITY, "congestion");
    r.resume = Some(ResumePoint {
        epoch: 1,
        revision: 5,
    });
    assert_eq!(err(r.clone()), Some(SubError::ResumeUnavailable as u16));
    r.snapshot_if_unavailable = true;
    assert_eq!(err(r), None, "a fresh snapshot instead");

    // Malformed SUBSCRIBE, raw.
    let frame = runtime().block_on(async {
        let mut endpoint =
            quinn::Endpoint::client((std::net::Ipv4Addr::LOCALHOST, 0).into()).expect("endpoint");
        endpoint.set_default_client_config(
            edgeflow::wire::tls::client_config(&node.ca, None, ALPN).expect("config"),
        );
        let conn = endpoint
            .connect(node.addr(), "localhost")
            .expect("connect")
            .await
            .expect("handshake");
        let (mut send, mut recv) = conn.open_bi().await.expect("stream");
        send.write_all(&[0x11, 0, 0, 0, 9]).await.expect("write");
        send.write_all(b"{\"kind\":3").await.expect("write");
        let bytes = recv.read_to_end(1 << 20).await.expect("read");
        let mut buf = BytesMut::from(&bytes[..]);
        SubFrame::decode(&mut buf, 1 << 20)
            .expect("frame")
            .expect("complete")
    });
    assert_eq!(code(&frame), Some(SubError::BadRequest as u16), "{frame:?}");

    // The charge point operator sees its charger only, and may resume.
    let (ready_tx, ready) = mpsc::channel();
    let sub = follow(options(&node, req(CPO, "charging")), ready_tx);
    await_snapshots(&ready, 1);
    node.stop();
    let (state, error) = sub.join().expect("thread");
    assert_eq!(error, None);
    assert!(!state.rows.is_empty());
    assert!(
        state.rows.keys().all(|(id, _)| id == CPO_CHARGER),
        "scoped to one charger"
    );
}

fn node_charger_other_than(id: &str) -> String {
    let topo = edgeflow::topology::Topology::load(&root("topologies/karhula.toml")).expect("valid");
    topo.reference
        .chargers
        .iter()
        .map(|c| c.id.clone())
        .find(|c| c != id)
        .expect("two chargers")
}

/// A provisional congestion subscriber with a tiny receive window that
/// never reads.
async fn stalled_subscriber(node: &Node) -> (quinn::Connection, quinn::RecvStream) {
    let mut endpoint =
        quinn::Endpoint::client((std::net::Ipv4Addr::LOCALHOST, 0).into()).expect("endpoint");
    let mut config = edgeflow::wire::tls::client_config(&node.ca, None, ALPN).expect("config");
    let mut transport = quinn::TransportConfig::default();
    transport.stream_receive_window(2048u32.into());
    transport.receive_window(4096u32.into());
    config.transport_config(std::sync::Arc::new(transport));
    endpoint.set_default_client_config(config);
    let conn = endpoint
        .connect(node.addr(), "localhost")
        .expect("connect")
        .await
        .expect("handshake");
    let (mut send, recv) = conn.open_bi().await.expect("stream");
    let mut buf = BytesMut::new();
    let mut req = SubscribeOptions::request(CITY, "congestion");
    req.mode = "provisional".into();
    SubFrame::Subscribe(req).encode(&mut buf);
    send.write_all(&buf).await.expect("write");
    (conn, recv)
}

/// Reads what a stalled subscriber's stream still holds: it must end in a
/// reset with code 6 (`too_slow`), within 15 s.
async fn assert_reset_too_slow(mut stalled: quinn::RecvStream) {
    let mut sink = vec![0u8; 1 << 16];
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(15), stalled.read(&mut sink)).await {
            Ok(Ok(Some(_))) => continue,
            Ok(other) => break other,
            Err(_) => panic!("the stalled stream neither ended nor was reset"),
        }
    };
    match end {
        Err(quinn::ReadError::Reset(code)) => {
            assert_eq!(code.into_inner(), SubError::TooSlow as u64)
        }
        other => panic!("expected a reset stream, got {other:?}"),
    }
}

#[test]
fn a_subscriber_that_stops_reading_is_cut_off_and_nobody_else_waits() {
    // The limit is above what a healthy subscriber ever has queued (about
    // two windows of rows at the end of the run) and below the run's 1,275
    // rows.
    a_stalled_subscriber_is_cut_off("max_pending = 600");
}

#[test]
fn a_subscriber_that_reads_nothing_for_max_lag_is_too_slow() {
    // max_pending stays at its default (far above this run's rows): only
    // the time limit can cut the stalled subscriber off.
    a_stalled_subscriber_is_cut_off("max_lag = \"1s\"");
}

/// With `limit` in `[subscriptions]`, a subscriber that never reads is cut
/// off with `too_slow` while a healthy one gets every row and ingest is not
/// held up.
fn a_stalled_subscriber_is_cut_off(limit: &str) {
    let mut node = node(&format!(
        "[privacy]\nmin_vehicles = 1\n[subscriptions]\n{limit}\n"
    ));
    let rt = runtime();
    let (conn, stalled) = rt.block_on(stalled_subscriber(&node));
    let (ready_tx, ready) = mpsc::channel();
    let healthy = follow(
        options(&node, SubscribeOptions::request(CITY, "congestion")),
        ready_tx,
    );
    await_snapshots(&ready, 1);
    // Paced (ten minutes of event time in three seconds), so windows close
    // one after another as they would live.
    let mut opts = node.options(Encoding::JsonLines);
    opts.pace = Some(200.0);
    opts.batch_lines = 100;
    let report = send_file(&opts, &data("sumo-public/telemetry.jsonl"));
    assert_eq!(report.accepted, 11_486, "ingest is not held up");
    node.stop();
    let (state, error) = healthy.join().expect("thread");
    assert_eq!(error, None);
    assert_state(
        &state,
        &csv_rows(&node.sink("congestion.csv")),
        "the healthy subscriber",
    );
    // The stalled one finds its stream reset with the documented code.
    rt.block_on(assert_reset_too_slow(stalled));
    drop(conn);
}

#[test]
fn a_resumed_subscriber_gets_only_what_changed_and_ends_equal_to_the_sink() {
    let mut node = node("[privacy]\nmin_vehicles = 1\n");
    let path = data("sumo-public/telemetry.jsonl");
    let text = std::fs::read_to_string(&path).expect("fixture");
    let cut = text
        .match_indices('\n')
        .nth(5_999)
        .map(|(i, _)| i + 1)
        .expect("long");
    let first = node.dir.path().join("first.jsonl");
    std::fs::write(&first, &text[..cut]).expect("write");

    // A subscriber follows the first half, then goes away.
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let held = std::sync::Arc::new(AtomicUsize::new(0));
    let (ready_tx, ready) = mpsc::channel();
    let early = {
        let (opts, stop, held) = (
            options(&node, SubscribeOptions::request(CITY, "congestion")),
            stop.clone(),
            held.clone(),
        );
        std::thread::spawn(move || {
            let mut state = State::default();
            let mut told = false;
            runtime()
                .block_on(subscribe(&opts, |f| {
                    state.apply(f);
                    held.store(state.rows.len(), SeqCst);
                    if state.snapshot_done && !told {
                        told = true;
                        let _ = ready_tx.send(());
                    }
                    // It leaves at a progress marker: everything it holds
                    // is then covered by its resume point.
                    !(stop.load(SeqCst) && matches!(f, SubFrame::Progress(_)))
                }))
                .expect("runs");
            state
        })
    };
    await_snapshots(&ready, 1);
    let opts = node.options(Encoding::JsonLines);
    send_file(&opts, &first);
    // It leaves once it holds the first half's windows (or after 20 s).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while held.load(SeqCst) <= 100 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, SeqCst);
    send_file(&opts, &path);
    let mut state = early.join().expect("thread");
    let resume = state.resume_point().expect("a progress marker");
    let known = state.rows.len();
    assert!(known > 100, "the first half's windows: {known}");

    // It comes back with its resume point: only the changes since.
    let mut req = SubscribeOptions::request(CITY, "congestion");
    req.resume = Some(resume);
    let (ready_tx, ready) = mpsc::channel();
    let mut rows = 0;
    let later = {
        let opts = options(&node, req);
        std::thread::spawn(move || {
            let mut frames = Vec::new();
            let error = runtime()
                .block_on(subscribe(&opts, |f| {
                    if matches!(f, SubFrame::Progress(p) if p.snapshot) {
                        let _ = ready_tx.send(());
                    }
                    frames.push(f.clone());
                    true
                }))
                .expect("runs");
            (frames, error)
        })
    };
    await_snapshots(&ready, 1);
    // A resume point beyond the newest revision is not in the history.
    let mut beyond = SubscribeOptions::request(CITY, "congestion");
    beyond.resume = Some(ResumePoint {
        revision: resume.revision + 1_000_000,
        ..resume
    });
    assert_eq!(
        code(&first_frame(&node, beyond)),
        Some(SubError::ResumeUnavailable as u16)
    );
    node.stop();
    let (frames, error) = later.join().expect("thread");
    assert_eq!(error, None);
    for f in &frames {
        rows += matches!(f, SubFrame::Row(_)) as usize;
        state.apply(f);
    }
    let want = csv_rows(&node.sink("congestion.csv"));
    assert!(
        rows < want.len(),
        "not a full snapshot: {rows} rows of {}",
        want.len()
    );
    assert_state(&state, &want, "resumed");
}

#[test]
fn a_subscription_connection_without_a_subscription_is_closed() {
    let mut node = node("");
    runtime().block_on(async {
        let conn = crate::ingest::raw_connect(&node, ALPN)
            .await
            .expect("handshake");
        // No stream: closed after the request deadline (500 ms here).
        let closed = tokio::time::timeout(Duration::from_secs(10), conn.closed())
            .await
            .expect("closed in time");
        assert!(closed.to_string().contains("no subscription"), "{closed}");
    });
    node.stop();
}

#[test]
fn a_subscription_outlives_a_quiet_spell_longer_than_the_idle_timeout() {
    let mut node = node("[privacy]\nmin_vehicles = 1\n");
    let (ready_tx, ready) = mpsc::channel();
    let sub = follow(
        options(&node, SubscribeOptions::request(CITY, "congestion")),
        ready_tx,
    );
    await_snapshots(&ready, 1);
    // Nothing changes for longer than the client's 5 s idle timeout.
    std::thread::sleep(Duration::from_secs(7));
    send_file(
        &node.options(Encoding::JsonLines),
        &data("sumo-public/telemetry.jsonl"),
    );
    node.stop();
    let (state, error) = sub.join().expect("subscriber thread");
    assert_eq!(error, None, "the subscription survived the quiet spell");
    assert_state(
        &state,
        &csv_rows(&node.sink("congestion.csv")),
        "after a quiet spell",
    );
}

/// Halfway along a LineString by great-circle length (haversine): the
/// node measures in a local flat projection; both agree far below the
/// margin the filter test keeps from the box's edges.
fn halfway(line: &[[f64; 2]]) -> [f64; 2] {
    let metres = |a: [f64; 2], b: [f64; 2]| {
        let (p1, p2) = (a[1].to_radians(), b[1].to_radians());
        let h = ((p2 - p1) / 2.0).sin().powi(2)
            + p1.cos() * p2.cos() * ((b[0] - a[0]).to_radians() / 2.0).sin().powi(2);
        2.0 * 6_371_008.8 * h.sqrt().asin()
    };
    let total: f64 = line.windows(2).map(|w| metres(w[0], w[1])).sum();
    let mut left = total / 2.0;
    for w in line.windows(2) {
        let l = metres(w[0], w[1]);
        if l >= left && l > 0.0 {
            let t = left / l;
            return [
                w[0][0] + (w[1][0] - w[0][0]) * t,
                w[0][1] + (w[1][1] - w[0][1]) * t,
            ];
        }
        left -= l;
    }
    line[line.len() - 1]
}

/// The ids of a GeoJSON file's features with their points: a LineString's
/// halfway point, a Point itself.
fn feature_points(file: &str) -> BTreeMap<String, [f64; 2]> {
    let text = std::fs::read_to_string(root(file)).expect("reference data");
    let doc: serde_json::Value = serde_json::from_str(&text).expect("GeoJSON");
    let point = |v: &serde_json::Value| [v[0].as_f64().expect("lon"), v[1].as_f64().expect("lat")];
    doc["features"]
        .as_array()
        .expect("features")
        .iter()
        .map(|f| {
            let coords = &f["geometry"]["coordinates"];
            let at = match f["geometry"]["type"].as_str() {
                Some("Point") => point(coords),
                _ => halfway(
                    &coords
                        .as_array()
                        .expect("line")
                        .iter()
                        .map(point)
                        .collect::<Vec<_>>(),
                ),
            };
            (f["properties"]["id"].as_str().expect("id").to_owned(), at)
        })
        .collect()
}

/// Keys of `points` inside `bbox`, inclusive; fails if one lies within
/// 1e-6 degrees (about 0.1 m) of an edge, where the two midpoint methods
/// could disagree.
fn inside(
    points: &BTreeMap<String, [f64; 2]>,
    bbox: [f64; 4],
) -> std::collections::BTreeSet<String> {
    let near = |v: f64, edge: f64| (v - edge).abs() < 1e-6;
    points
        .iter()
        .filter(|(id, p)| {
            assert!(
                !(near(p[0], bbox[0])
                    || near(p[0], bbox[2])
                    || near(p[1], bbox[1])
                    || near(p[1], bbox[3])),
                "{id} lies on the box's edge"
            );
            (bbox[0]..=bbox[2]).contains(&p[0]) && (bbox[1]..=bbox[3]).contains(&p[1])
        })
        .map(|(id, _)| id.clone())
        .collect()
}

#[test]
fn filters_and_allow_lists_select_exactly_their_keys() {
    // The three segments with the most windows, and a fourth.
    let expected =
        std::fs::read_to_string(data("sumo-public/expected-congestion.csv")).expect("fixture");
    let mut windows: BTreeMap<String, usize> = BTreeMap::new();
    for line in expected.lines().skip(1) {
        *windows
            .entry(line.split(',').next().expect("id").to_owned())
            .or_default() += 1;
    }
    let mut busiest: Vec<(usize, String)> = windows.into_iter().map(|(id, n)| (n, id)).collect();
    busiest.sort_by(|a, b| b.cmp(a));
    let [s1, s2, s3, other] = [0, 1, 2, 3].map(|i| busiest[i].1.clone());
    const CORRIDOR: &str = "corridor-operator";
    let mut node = node(&format!(
        "[privacy]\nmin_vehicles = 1\n\
         [[operator]]\nname = \"corridor\"\ntoken_sha256 = \"{}\"\nkinds = [\"congestion\", \"zone\"]\n\
         segments = [\"{s1}\", \"{s2}\", \"{s3}\"]\nzones = [\"karhula-centre\"]\n",
        hex::encode(Sha256::digest(CORRIDOR.as_bytes()))
    ));
    let roads = feature_points("topologies/karhula/roads.geojson");
    let chargers = feature_points("topologies/karhula/chargers.geojson");
    // A box around the busiest segment (odd offsets keep its edges off
    // every midpoint), and one holding two of the four chargers.
    let [x, y] = roads[&s1];
    let road_box = [x - 0.00613, y - 0.00371, x + 0.00587, y + 0.00429];
    let charger_box = [26.94, 60.52, 26.97, 60.535];
    let ids = |v: &[&String]| {
        v.iter()
            .map(|s| s.to_string())
            .collect::<std::collections::BTreeSet<_>>()
    };
    let request = |token: &str, kind: &str, filter: Option<Filter>| {
        let mut req = SubscribeOptions::request(token, kind);
        req.filter = filter;
        req
    };
    let by_ids = |v: &[&String]| {
        Some(Filter {
            ids: Some(v.iter().map(|s| s.to_string()).collect()),
            bbox: None,
        })
    };
    let by_box = |b: [f64; 4]| {
        Some(Filter {
            ids: None,
            bbox: Some(b),
        })
    };
    let in_road_box = inside(&roads, road_box);
    let corridor = ids(&[&s1, &s2, &s3]);
    let cases = vec![
        (
            "ids",
            request(CITY, "congestion", by_ids(&[&s1, &other])),
            ids(&[&s1, &other]),
        ),
        (
            "bbox",
            request(CITY, "congestion", by_box(road_box)),
            in_road_box.clone(),
        ),
        (
            "charger bbox",
            request(CITY, "charging", by_box(charger_box)),
            inside(&chargers, charger_box),
        ),
        (
            "allow-list",
            request(CORRIDOR, "congestion", None),
            corridor.clone(),
        ),
        (
            "allow-list and bbox",
            request(CORRIDOR, "congestion", by_box(road_box)),
            corridor.intersection(&in_road_box).cloned().collect(),
        ),
        (
            "zone allow-list",
            request(CORRIDOR, "zone", None),
            ["karhula-centre".to_owned()].into(),
        ),
    ];
    // (103 of the 517 segments, one of the corridor's three.)
    // The cases mean something: each selects some keys and not all.
    assert!(!in_road_box.is_empty() && in_road_box.len() < roads.len());
    let both = corridor.intersection(&in_road_box).count();
    assert!(both > 0 && both < corridor.len(), "{both}");
    assert!(in_road_box
        .iter()
        .any(|id| expected.contains(&format!("\n{id},"))));
    // Refused beyond the allow-lists.
    assert_eq!(
        code(&first_frame(
            &node,
            request(CORRIDOR, "congestion", by_ids(&[&other]))
        )),
        Some(SubError::Forbidden as u16)
    );
    assert_eq!(
        code(&first_frame(&node, request(CORRIDOR, "charging", None))),
        Some(SubError::Forbidden as u16)
    );
    let nw = "karhula-nw".to_owned();
    assert_eq!(
        code(&first_frame(
            &node,
            request(CORRIDOR, "zone", by_ids(&[&nw]))
        )),
        Some(SubError::Forbidden as u16)
    );

    let (ready_tx, ready) = mpsc::channel();
    let subs: Vec<_> = cases
        .into_iter()
        .map(|(what, req, keys)| {
            let file = sink_file(&req.kind);
            (
                what,
                file,
                keys,
                follow(options(&node, req), ready_tx.clone()),
            )
        })
        .collect();
    await_snapshots(&ready, subs.len());
    send_recording(&node);
    node.stop();
    for (what, file, keys, sub) in subs {
        let (state, error) = sub.join().expect("subscriber thread");
        assert_eq!(error, None, "{what}");
        let want: BTreeMap<_, _> = csv_rows(&node.sink(file))
            .into_iter()
            .filter(|((id, _), _)| keys.contains(id))
            .collect();
        assert!(!want.is_empty(), "{what}: the sink has rows of these keys");
        assert_state(&state, &want, what);
    }
}
