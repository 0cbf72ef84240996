//! The edge node over real QUIC on loopback: what `send` delivers ends up in
//! the files sink exactly as `replay` computes it; resends are recognised;
//! bad clients get their documented error and cost the others nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use edgeflow::ingest::client::{SendOptions, SendReport};
use edgeflow::ingest::frame::{ErrorCode, Frame};
use edgeflow::log::Encoding;
use edgeflow::node::{make_certs, EdgeHandle};
use edgeflow::topology::Topology;
use sha2::{Digest, Sha256};

use crate::support::{assert_expected, assert_same_rows, data, root};

pub(crate) const TOKEN: &str = "karhula-fleet-secret";

pub(crate) struct Node {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) ca: PathBuf,
    pub(crate) handle: Option<EdgeHandle>,
    /// A test with a node fails instead of hanging.
    _deadline: crate::support::Deadline,
}

/// A node's topology in `dir`; `extra` goes into its `[ingest]` section
/// (a `hello_timeout` there replaces the default of 500 ms).
pub(crate) fn topology_text(dir: &Path, extra: &str) -> String {
    let hash = hex::encode(Sha256::digest(TOKEN.as_bytes()));
    let hello = if extra.contains("hello_timeout") {
        ""
    } else {
        "hello_timeout = \"500ms\"\n"
    };
    format!(
        "[node]\nid = \"test-edge\"\n[reference]\nroads = \"{roads}\"\nchargers = \"{chargers}\"\n[windows]\n\
         [ingest]\nlisten = \"127.0.0.1:0\"\ncert = \"server.pem\"\nkey = \"server.key\"\n{hello}{extra}\n\
         [log]\ndir = \"log\"\nsegment_bytes = 262144\n[[fleet]]\nname = \"test\"\ntoken_sha256 = \"{hash}\"\n\
         [[sink]]\ntype = \"files\"\ndir = \"{out}\"\n",
        roads = root("topologies/karhula/roads.geojson").display(),
        chargers = root("topologies/karhula/chargers.geojson").display(),
        out = dir.join("out").display(),
    )
}

pub(crate) fn start(extra: &str) -> Node {
    start_with(|dir| topology_text(dir, extra))
}

pub(crate) fn start_with(topology: impl Fn(&Path) -> String) -> Node {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = make_certs(dir.path(), &["localhost".into(), "127.0.0.1".into()]).expect("certs");
    std::fs::write(dir.path().join("edge.toml"), topology(dir.path())).expect("write topology");
    let handle = restart_in(dir.path());
    Node::new(dir, certs.ca, handle)
}

pub(crate) fn restart_in(dir: &Path) -> EdgeHandle {
    let topo = Topology::load(&dir.join("edge.toml")).unwrap_or_else(|p| panic!("{p:?}"));
    edgeflow::node::start(topo, 2).expect("node starts")
}

impl Node {
    /// A node started in `dir`, with its CA for clients.
    pub(crate) fn new(dir: tempfile::TempDir, ca: PathBuf, handle: EdgeHandle) -> Node {
        Node {
            _deadline: crate::support::deadline(),
            dir,
            ca,
            handle: Some(handle),
        }
    }
    pub(crate) fn addr(&self) -> std::net::SocketAddr {
        self.handle.as_ref().expect("running").addr
    }
    pub(crate) fn options(&self, encoding: Encoding) -> SendOptions {
        SendOptions {
            sender: "recorder-1".into(),
            encoding,
            batch_lines: 500,
            window: 4,
            max_reconnects: 3,
            ..SendOptions::new(self.addr(), "localhost", self.ca.clone(), TOKEN)
        }
    }
    pub(crate) fn stop(&mut self) -> edgeflow::node::EdgeReport {
        self.handle
            .take()
            .expect("running")
            .shutdown()
            .expect("clean stop")
    }
    pub(crate) fn sink(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join("out").join(name)).expect("sink file")
    }
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Sends the whole recording in CBOR batches of 200 records; all of it
/// must be accepted.
pub(crate) fn send_recording(node: &Node) {
    let mut opts = node.options(Encoding::Cbor);
    opts.batch_lines = 200;
    let report = send_file(&opts, &data("sumo-public/telemetry.jsonl"));
    assert_eq!((report.accepted, report.rejected), (11_486, 0));
}

pub(crate) fn send_file(opts: &SendOptions, path: &Path) -> SendReport {
    let mut report = SendReport::default();
    let batches =
        edgeflow::ingest::client::batches(path, opts.encoding, opts.batch_lines, &mut report)
            .expect("batches");
    runtime()
        .block_on(edgeflow::ingest::client::send(opts, batches, |_, _| {}))
        .expect("send")
}

fn replay_log(dir: &Path) -> (String, String) {
    let topo = Topology::load(&dir.join("edge.toml")).expect("valid");
    let reference = &topo.reference;
    let table = crate::support::replay_table(&topo, &dir.join("log"));
    (
        table.csv(
            edgeflow::aggregate::Kind::Congestion,
            reference,
            topo.time.size_ms,
        ),
        table.csv(
            edgeflow::aggregate::Kind::Charging,
            reference,
            topo.time.size_ms,
        ),
    )
}

#[test]
fn sent_recording_yields_the_replay_aggregates_in_json_lines_and_cbor() {
    for encoding in [Encoding::JsonLines, Encoding::Cbor] {
        let mut node = start("");
        let report = send_file(
            &node.options(encoding),
            &data("sumo-public/telemetry.jsonl"),
        );
        assert_eq!(
            (report.accepted, report.rejected),
            (11_486, 0),
            "{encoding:?}"
        );
        let stopped = node.stop();
        assert_eq!(stopped.summary.ingest.records, 11_486);
        let congestion = node.sink("congestion.csv");
        let charging = node.sink("charging.csv");
        assert_expected(&congestion, &charging);
        // The log is the recording: replaying it gives the sink's bytes.
        let (c, h) = replay_log(node.dir.path());
        assert!(
            c == congestion && h == charging,
            "replay of the log differs from the sink"
        );
    }
}

#[test]
fn a_restarted_node_keeps_its_state_and_recognises_resends() {
    let mut node = start("");
    let path = data("sumo-public/telemetry.jsonl");
    let mut first_half = std::fs::read_to_string(&path).expect("fixture");
    let cut = first_half
        .match_indices('\n')
        .nth(5_999)
        .map(|(i, _)| i + 1)
        .expect("long enough");
    first_half.truncate(cut);
    let half = node.dir.path().join("half.jsonl");
    std::fs::write(&half, &first_half).expect("write");
    let r = send_file(&node.options(Encoding::JsonLines), &half);
    assert_eq!(r.accepted, 6_000);
    node.stop();

    // Same sender, whole file: the first 12 batches are already durable.
    node.handle = Some(restart_in(node.dir.path()));
    let r = send_file(&node.options(Encoding::JsonLines), &path);
    assert_eq!(
        (r.accepted, r.rejected),
        (11_486 - 6_000, 0),
        "only the new batches are counted"
    );
    assert_eq!(
        (r.already_durable, r.durable_unanswered),
        (12, 0),
        "the node said which batches it had"
    );
    let stopped = node.stop();
    assert_eq!(stopped.recovered_entries, 12);
    let expected =
        std::fs::read_to_string(data("sumo-public/expected-congestion.csv")).expect("fixture");
    assert_same_rows(&node.sink("congestion.csv"), &expected, "congestion");
}

#[test]
fn retention_deletes_old_segments_and_a_restart_changes_nothing() {
    // Small segments, one minute of retention: over the ten minutes of the
    // recording most segments hold only retired windows.
    let mut node = start_with(|dir| {
        topology_text(dir, "")
            .replace("[windows]\n", "[windows]\nretention = \"60s\"\n")
            .replace("segment_bytes = 262144", "segment_bytes = 4096")
    });
    let path = data("sumo-public/telemetry.jsonl");
    let mut opts = node.options(Encoding::JsonLines);
    opts.batch_lines = 100;
    // Paced over about four seconds, so the sink is written (once a
    // second) while batches still arrive.
    opts.pace = Some(150.0);
    let r = send_file(&opts, &path);
    assert_eq!(r.accepted, 11_486);
    node.stop();
    let log = node.dir.path().join("log");
    let checkpoint = edgeflow::checkpoint::Checkpoint::load(&log)
        .expect("readable")
        .expect("a checkpoint was written");
    let oldest = edgeflow::log::segments(&log).expect("segments")[0].0;
    assert_eq!(oldest, checkpoint.first_seq, "segments before it are gone");
    assert!(
        oldest > 40,
        "most of 115 entries deleted, oldest is {oldest}"
    );
    // The sender table as of the checkpoint: the batches durable by then.
    let known = checkpoint.senders.get("recorder-1").copied();
    assert!(known.is_some_and(|n| n > oldest && n <= 115), "{known:?}");

    // The same records as one replay with the same chunking: the sink
    // holds every window, those of deleted segments included.
    let topo = Topology::load(&node.dir.path().join("edge.toml")).expect("valid");
    let reference = Arc::new(topo.reference.clone());
    let mut options = edgeflow::runtime::RunOptions::new(1);
    options.chunk_lines = 100;
    let text = std::fs::read(&path).expect("fixture");
    let (congestion, charging, _) = crate::support::replay(text, &reference, topo.time, options);
    assert_eq!(node.sink("congestion.csv"), congestion);
    assert_eq!(node.sink("charging.csv"), charging);
    // What is left of the log replays to the newest windows' exact rows.
    let (c, h) = replay_log(node.dir.path());
    for (left, sink) in [(c, &congestion), (h, &charging)] {
        let rows: Vec<&str> = left.lines().skip(1).collect();
        assert!(!rows.is_empty(), "windows after the checkpoint remain");
        for row in rows {
            assert!(sink.lines().any(|l| l == row), "{row} not in the sink");
        }
    }

    // A restart rebuilds from the checkpoint: the sink is unchanged, and a
    // resend of the whole file is recognised batch by batch.
    node.handle = Some(restart_in(node.dir.path()));
    let stopped = node.stop();
    assert!(stopped.recovered_entries < 115 - 40);
    assert_eq!(node.sink("congestion.csv"), congestion);
    assert_eq!(node.sink("charging.csv"), charging);
    node.handle = Some(restart_in(node.dir.path()));
    opts.to = node.addr();
    let r = send_file(&opts, &path);
    assert_eq!(r.accepted, 0, "the node knows every batch is durable");
    assert_eq!((r.already_durable, r.durable_unanswered), (115, 0));
    node.stop();
    assert_eq!(node.sink("congestion.csv"), congestion);
    assert_eq!(node.sink("charging.csv"), charging);

    // A checkpoint that does not belong to the log is refused, clearly.
    let saved = std::fs::read(log.join(edgeflow::checkpoint::FILE)).expect("checkpoint");
    let mut foreign = checkpoint.clone();
    foreign.first_seq = 1_000_000;
    foreign.store(&log).expect("store");
    let topo = Topology::load(&node.dir.path().join("edge.toml")).expect("valid");
    match edgeflow::node::start(topo, 1) {
        Err(e) => assert!(e.to_string().contains("does not belong"), "{e}"),
        Ok(_) => panic!("a node started on a foreign checkpoint"),
    }
    let replay_err = |dir: &Path| {
        let (input, _) = edgeflow::runtime::Input::open(dir).expect("log");
        edgeflow::runtime::run(
            input,
            reference.clone(),
            topo_time(node.dir.path()),
            edgeflow::runtime::RunOptions::new(1),
            |_| {},
            |_| {},
        )
        .expect_err("refused")
        .to_string()
    };
    let err = replay_err(&log);
    assert!(err.contains("does not belong"), "{err}");
    // Without its checkpoint the log misses its first entries: replay says so.
    std::fs::remove_file(log.join(edgeflow::checkpoint::FILE)).expect("remove");
    let err = replay_err(&log);
    assert!(err.contains("missing"), "{err}");
    std::fs::write(log.join(edgeflow::checkpoint::FILE), saved).expect("restore");
    // A directory that is no log.
    let err = edgeflow::runtime::Input::open(node.dir.path().join("out").as_path())
        .err()
        .expect("not a log")
        .to_string();
    assert!(err.contains("no log segments"), "{err}");
}

fn topo_time(dir: &Path) -> edgeflow::time::TimeSpec {
    Topology::load(&dir.join("edge.toml")).expect("valid").time
}

#[test]
fn a_changed_zone_file_changes_the_rollups_of_a_running_node() {
    let zones_v1 =
        std::fs::read_to_string(root("topologies/karhula/zones.geojson")).expect("zones");
    let mut node = start_with(|dir| {
        std::fs::write(dir.join("zones.geojson"), &zones_v1).expect("write zones");
        topology_text(dir, "").replace("[windows]\n", "zones = \"zones.geojson\"\n[windows]\n")
    });
    let path = data("sumo-public/telemetry.jsonl");
    let text = std::fs::read_to_string(&path).expect("fixture");
    let cut = text
        .match_indices('\n')
        .nth(5_999)
        .map(|(i, _)| i + 1)
        .expect("long");
    let (first, second) = (
        node.dir.path().join("first.jsonl"),
        node.dir.path().join("all.jsonl"),
    );
    std::fs::write(&first, &text[..cut]).expect("write");
    std::fs::write(&second, &text).expect("write");
    let opts = node.options(Encoding::JsonLines);
    assert_eq!(send_file(&opts, &first).accepted, 6_000);
    // The sink shows the first zones' final rows.
    let zones_csv = node.dir.path().join("out/zones.csv");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&zones_csv).is_ok_and(|t| t.contains("\nkarhula-centre,")) {
        if std::time::Instant::now() >= deadline {
            // Say what the node did before failing (a stall seen twice under
            // heavy load, not reproduced since).
            diagnose(&mut node);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no zone rows in the sink: {:?}",
            std::fs::read_to_string(&zones_csv).map(|t| t
                .lines()
                .take(3)
                .collect::<Vec<_>>()
                .join(" | "))
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Replace the file: the centre goes, a new eastern half comes, the
    // north-west quadrant grows over the whole north.
    let doc = zones_v2(&zones_v1);
    // Replaced as an operator should (written beside, then renamed over):
    // the watcher never reads half a file.
    let zones = node.dir.path().join("zones.geojson");
    let staged = node.dir.path().join("zones.geojson.new");
    std::fs::write(&staged, doc).expect("write");
    std::fs::rename(&staged, &zones).expect("rename");
    let reloads = node.handle.as_ref().expect("running").zone_reloads.clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while reloads.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the node did not reload its zone file"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The rest of the recording (the node skips the batches it has).
    send_file(&opts, &second);
    let stopped = node.stop();
    assert!(
        stopped.summary.emitted.retractions > 0,
        "the centre's rows were retracted"
    );

    // The same records replayed with the new zones from the start, in the
    // node's chunks (one per 500-line batch).
    let got = node.sink("zones.csv");
    assert!(!got.contains("karhula-centre") && got.contains("\nkarhula-east-half,"));
    assert_eq!(got, replay_zones(node.dir.path(), &path));

    // The first zones again while the node is down: nothing is frozen yet
    // (no checkpoint), so a restart recomputes every row from the log, and
    // the rows of the zone that went are not kept from the old sink.
    let log = node.dir.path().join("log");
    assert_eq!(
        edgeflow::checkpoint::Checkpoint::load(&log).expect("ok"),
        None
    );
    std::fs::write(node.dir.path().join("zones.geojson"), &zones_v1).expect("write");
    node.handle = Some(restart_in(node.dir.path()));
    node.stop();
    let got = node.sink("zones.csv");
    assert!(got.contains("\nkarhula-centre,") && !got.contains("karhula-east-half"));
    assert_eq!(got, replay_zones(node.dir.path(), &path));
}

/// Karhula's zone file changed: the centre gone, a new eastern half
/// (`karhula-east-half`), the north-west quadrant grown over the whole
/// north.
pub(crate) fn zones_v2(zones_v1: &str) -> String {
    let mut doc: serde_json::Value = serde_json::from_str(zones_v1).expect("json");
    let features = doc["features"].as_array_mut().expect("features");
    features.retain(|f| f["properties"]["id"] != "karhula-centre");
    for f in features.iter_mut() {
        if f["properties"]["id"] == "karhula-nw" {
            f["geometry"]["coordinates"] = serde_json::json!([[
                [26.925, 60.53],
                [26.975, 60.53],
                [26.975, 60.545],
                [26.925, 60.545],
                [26.925, 60.53]
            ]]);
        }
    }
    features.push(serde_json::json!({"type": "Feature", "properties": {"id": "karhula-east-half"},
        "geometry": {"type": "Polygon", "coordinates": [[
            [26.95, 60.515], [26.975, 60.515], [26.975, 60.545], [26.95, 60.545], [26.95, 60.515]]]}}));
    doc.to_string()
}

/// Prints what a node that seems stuck has done: its counters, whether it
/// stops within 30 s and what its dataflow counted, the sink's files.
fn diagnose(node: &mut Node) {
    use std::sync::atomic::Ordering::Relaxed;
    let Some(h) = node.handle.take() else { return };
    let c = &h.counters;
    eprintln!(
        "diagnosis: {} batches acknowledged, {} records accepted, {} rejected, {} log failures",
        c.batches.load(Relaxed),
        c.accepted.load(Relaxed),
        c.rejected.load(Relaxed),
        c.log_failures.load(Relaxed)
    );
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let stopped = h.shutdown();
        let _ = tx.send(stopped.map(|r| (r.summary.ingest, r.summary.emitted)));
    });
    eprintln!(
        "diagnosis: stop: {:?}",
        rx.recv_timeout(Duration::from_secs(30))
    );
    let files: Vec<_> = std::fs::read_dir(node.dir.path().join("out"))
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    eprintln!("diagnosis: sink files {files:?}");
}

/// zones.csv of a replay of `input` with the node's topology in `dir`, in
/// chunks of 500 lines (the test's batches).
fn replay_zones(dir: &Path, input: &Path) -> String {
    let topo = Topology::load(&dir.join("edge.toml")).expect("valid");
    let reference = Arc::new(topo.reference.clone());
    let mut table = edgeflow::output::FinalTable::default();
    let mut options = edgeflow::runtime::RunOptions::new(2);
    options.chunk_lines = 500;
    edgeflow::runtime::run(
        edgeflow::runtime::Input::open(input).expect("fixture").0,
        reference.clone(),
        topo.time,
        options,
        |b| table.apply(b),
        |_| {},
    )
    .expect("replay");
    table.csv(
        edgeflow::aggregate::Kind::Zone,
        &reference,
        topo.time.size_ms,
    )
}

/// A raw client for protocol tests.
pub(crate) async fn raw_connect(node: &Node, alpn: &[u8]) -> Result<quinn::Connection, String> {
    raw_connect_from(node, alpn, "127.0.0.1:0").await
}

/// A raw client bound to `bind` (another loopback address is another
/// source).
pub(crate) async fn raw_connect_from(
    node: &Node,
    alpn: &[u8],
    bind: &str,
) -> Result<quinn::Connection, String> {
    let config =
        edgeflow::wire::tls::client_config(&node.ca, None, alpn).map_err(|e| e.to_string())?;
    let mut endpoint = quinn::Endpoint::client(bind.parse().expect("addr")).expect("endpoint");
    endpoint.set_default_client_config(config);
    endpoint
        .connect(node.addr(), "localhost")
        .expect("connect")
        .await
        .map_err(|e| e.to_string())
}

/// A raw ingest session: connected, HELLO sent as `sender`, WELCOME read.
/// The control streams are returned: the session lasts while they do.
pub(crate) async fn session(
    node: &Node,
    sender: &str,
) -> (quinn::Connection, (quinn::SendStream, quinn::RecvStream)) {
    let conn = raw_connect(node, edgeflow::ingest::frame::ALPN)
        .await
        .expect("handshake");
    let (mut control, mut welcome) = conn.open_bi().await.expect("control");
    control
        .write_all(
            &Frame::Hello {
                token: TOKEN.into(),
                sender: sender.into(),
            }
            .to_bytes(),
        )
        .await
        .expect("hello");
    let mut head = [0u8; 13];
    welcome.read_exact(&mut head).await.expect("welcome");
    (conn, (control, welcome))
}

pub(crate) async fn exchange(conn: &quinn::Connection, frame: Bytes) -> Frame {
    let (mut send, mut recv) = conn.open_bi().await.expect("stream");
    send.write_all(&frame).await.expect("write");
    let _ = send.finish();
    let bytes = recv.read_to_end(1 << 20).await.expect("answer");
    Frame::decode(&mut BytesMut::from(&bytes[..]), 1 << 20)
        .expect("a frame")
        .expect("complete")
}

fn error_code(frame: &Frame) -> Option<u16> {
    match frame {
        Frame::Error { code, .. } => Some(*code),
        _ => None,
    }
}

#[test]
fn bad_clients_get_their_documented_errors_and_good_ones_are_served() {
    let mut node = start("max_frame_bytes = 65536");
    let rt = runtime();
    rt.block_on(async {
        // Unknown ALPN: refused in the handshake.
        let refused = raw_connect(&node, b"h3").await.expect_err("refused");
        // TLS alert 120 (no_application_protocol), nothing else.
        assert!(refused.contains("error 120"), "{refused}");

        // Wrong token.
        let conn = raw_connect(&node, edgeflow::ingest::frame::ALPN).await.expect("handshake");
        let answer = exchange(&conn, Frame::Hello { token: "guess".into(), sender: "x".into() }.to_bytes()).await;
        assert_eq!(error_code(&answer), Some(ErrorCode::Unauthorized as u16));

        // Connects and says nothing: closed after hello_timeout.
        let silent = raw_connect(&node, edgeflow::ingest::frame::ALPN).await.expect("handshake");
        let closed = tokio::time::timeout(Duration::from_secs(5), silent.closed()).await.expect("closed in time");
        assert!(closed.to_string().contains("HELLO"), "{closed}");

        // A good session with bad batches.
        let conn = raw_connect(&node, edgeflow::ingest::frame::ALPN).await.expect("handshake");
        let (mut control, mut welcome) = conn.open_bi().await.expect("control");
        control.write_all(&Frame::Hello { token: TOKEN.into(), sender: "probe".into() }.to_bytes()).await.expect("hello");
        let mut head = [0u8; 13];
        welcome.read_exact(&mut head).await.expect("welcome");
        assert_eq!(Frame::decode(&mut BytesMut::from(&head[..]), 64).expect("ok"), Some(Frame::Welcome { next_sender_seq: 0 }));

        // Oversized frame: error, stream over, connection fine.
        let mut huge = BytesMut::from(&[edgeflow::ingest::frame::kind::BATCH][..]);
        huge.extend_from_slice(&(1u32 << 20).to_be_bytes());
        huge.extend_from_slice(&[0u8; 64]);
        assert_eq!(error_code(&exchange(&conn, huge.freeze()).await), Some(ErrorCode::FrameTooLarge as u16));

        // Truncated frame.
        let truncated = Bytes::from_static(&[edgeflow::ingest::frame::kind::BATCH, 0, 0, 0, 100, 1, 2]);
        assert_eq!(error_code(&exchange(&conn, truncated).await), Some(ErrorCode::BadFrame as u16));

        // Mixed batch: bad records rejected individually, the rest accepted.
        let good = std::fs::read_to_string(data("sumo-public/telemetry.jsonl")).expect("fixture");
        let mut records: Vec<String> = good.lines().take(3).map(str::to_owned).collect();
        records.insert(1, "{\"type\":\"vehicle\"".into());
        records.push(r#"{"type":"charger","charger_id":"cs-x","connector":1,"ts_ms":1767258000000,"status":"Occupied","power_kw":1,"energy_wh":1}"#.into());
        let body = records.join("\n") + "\n";
        let batch = Frame::Batch { sender_seq: 0, encoding: Encoding::JsonLines, records: body.into() }.to_bytes();
        match exchange(&conn, batch.clone()).await {
            Frame::Ack { sender_seq: 0, accepted: 3, rejections } => {
                let idx: Vec<u32> = rejections.iter().map(|r| r.0).collect();
                assert_eq!(idx, vec![1, 4], "{rejections:?}");
                assert!(rejections[1].2.contains("charger_id"), "{rejections:?}");
            }
            other => panic!("expected an ACK, got {other:?}"),
        }
        // The same batch again: recognised, nothing counted twice.
        assert!(matches!(exchange(&conn, batch).await, Frame::Ack { accepted: 0, .. }));
        // A gap.
        let gap = Frame::Batch { sender_seq: 5, encoding: Encoding::JsonLines, records: Bytes::new() }.to_bytes();
        assert_eq!(error_code(&exchange(&conn, gap).await), Some(ErrorCode::SequenceGap as u16));
    });
    // A batch over the frame limit is a clear, final error for its sender.
    let too_big = node.options(Encoding::JsonLines);
    let mut unused = SendReport::default();
    let batches = edgeflow::ingest::client::batches(
        &data("sumo-public/telemetry.jsonl"),
        too_big.encoding,
        1000,
        &mut unused,
    )
    .expect("batches");
    let err = runtime()
        .block_on(edgeflow::ingest::client::send(&too_big, batches, |_, _| {}))
        .expect_err("too large");
    assert!(err.to_string().contains("--batch-lines"), "{err}");
    // Everyone else is still served.
    let mut opts = node.options(Encoding::Cbor);
    opts.batch_lines = 200;
    opts.sender = "recorder-2".into();
    let r = send_file(&opts, &data("sumo-public/telemetry.jsonl"));
    assert_eq!(r.accepted, 11_486);
    let stopped = node.stop();
    assert_eq!(stopped.summary.ingest.records, 11_486 + 3);
}

/// Starts `edgeflow edge` in `dir`; returns it with its address.
pub(crate) fn spawn_edge(dir: &Path) -> (std::process::Child, std::net::SocketAddr) {
    let exe = Path::new(env!("CARGO_BIN_EXE_edgeflow"));
    edgeflow::tools::bench_ingest::spawn_edge_process(exe, &dir.join("edge.toml"))
        .expect("node listens")
}

fn log_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir.join("log"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn sigkill_mid_send_then_restart_loses_nothing_and_counts_nothing_twice() {
    let _deadline = crate::support::deadline();
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = make_certs(dir.path(), &["localhost".into(), "127.0.0.1".into()]).expect("certs");
    let text = topology_text(dir.path(), "");
    std::fs::write(dir.path().join("edge.toml"), &text).expect("topology");
    let (mut node, addr) = spawn_edge(dir.path());
    // The restart listens where the sender reconnects: the same port.
    let text = text.replace("127.0.0.1:0", &addr.to_string());
    std::fs::write(dir.path().join("edge.toml"), text).expect("topology");
    let sender = std::process::Command::new(env!("CARGO_BIN_EXE_edgeflow"))
        .args([
            "send",
            "--to",
            &addr.to_string(),
            "--token",
            TOKEN,
            "--server-name",
            "localhost",
        ])
        .arg("--ca")
        .arg(&certs.ca)
        // Paced (600 s of telemetry in about 3 s) so the kill lands mid-send
        // however fast this machine's fsync is.
        .args(["--batch-lines", "20", "--window", "2", "--speed", "200"])
        .arg(data("sumo-public/telemetry.jsonl"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("send starts");
    // Kill the node once part of the file is durable.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while log_bytes(dir.path()) < 400_000 {
        assert!(
            std::time::Instant::now() < deadline,
            "the send made no progress"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    node.kill().expect("SIGKILL");
    node.wait().expect("reaped");
    let killed_at = log_bytes(dir.path());
    assert!(
        killed_at < 1_900_000,
        "killed before the end ({killed_at} bytes logged)"
    );

    let (mut node, _) = spawn_edge(dir.path());
    let out = sender.wait_with_output().expect("send finishes");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("reconnects") && !stderr.contains(" 0 reconnects"),
        "the sender had to reconnect: {stderr}"
    );
    std::process::Command::new("kill")
        .args(["-TERM", &node.id().to_string()])
        .status()
        .expect("SIGTERM");
    let status = node.wait().expect("stops");
    assert!(status.success(), "graceful stop exits 0: {status}");

    let congestion = std::fs::read_to_string(dir.path().join("out/congestion.csv")).expect("sink");
    let charging = std::fs::read_to_string(dir.path().join("out/charging.csv")).expect("sink");
    assert_expected(&congestion, &charging);
    // And the log holds every record exactly once.
    let (c, _) = replay_log(dir.path());
    assert!(c == congestion);
}

#[test]
fn datagrams_malformed_cbor_and_the_stream_limit() {
    let mut node = start("max_streams = 2");
    let rt = runtime();
    rt.block_on(async {
        let conn = raw_connect(&node, edgeflow::ingest::frame::ALPN).await.expect("handshake");
        let (mut control, mut welcome) = conn.open_bi().await.expect("control");
        control.write_all(&Frame::Hello { token: TOKEN.into(), sender: "probe".into() }.to_bytes()).await.expect("hello");
        let mut head = [0u8; 13];
        welcome.read_exact(&mut head).await.expect("welcome");

        // A CBOR batch: a valid record, a map that is not a record, then
        // bytes that are not CBOR at all.
        let good = r#"{"type":"vehicle","vehicle_id":"v-1","ts_ms":1767258001000,"lat":60.53,"lon":26.95,"speed_mps":7.5,"segment_id":"-172093298"}"#;
        let mut cbor = edgeflow::codec::encode_cbor(&edgeflow::codec::decode_json(good.as_bytes()).expect("valid"));
        cbor.extend_from_slice(&[0xa1, 0x61, b'x', 0x01]);
        cbor.extend_from_slice(&[0x1c, 0xff, 0xff]);
        let batch = Frame::Batch { sender_seq: 0, encoding: Encoding::Cbor, records: cbor.into() }.to_bytes();
        match exchange(&conn, batch).await {
            Frame::Ack { accepted: 1, rejections, .. } => assert_eq!(rejections.len(), 2, "{rejections:?}"),
            other => panic!("expected an ACK, got {other:?}"),
        }

        // Datagrams: one record each, best effort. Valid JSON and valid
        // CBOR are taken; a broken record, bytes that are no CBOR and two
        // records in one datagram are counted as rejected and dropped.
        let cbor_record = |id: &str| {
            let json = good.replace("v-1", id);
            edgeflow::codec::encode_cbor(&edgeflow::codec::decode_json(json.as_bytes()).expect("valid"))
        };
        conn.send_datagram(Bytes::from(good.replace("v-1", "v-2"))).expect("datagram");
        conn.send_datagram(Bytes::from(cbor_record("v-3"))).expect("datagram");
        conn.send_datagram(Bytes::from_static(b"{\"type\":\"vehicle\"")).expect("datagram");
        conn.send_datagram(Bytes::from_static(&[0x1c, 0xff, 0xff])).expect("datagram");
        let two = [cbor_record("v-4"), cbor_record("v-5")].concat();
        conn.send_datagram(Bytes::from(two)).expect("datagram");
        // Datagrams carry no answer: wait for the counters (2 taken; 2
        // rejected in the batch above plus 3 here).
        let counters = node.handle.as_ref().expect("running").counters.clone();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        let seen = || {
            use std::sync::atomic::Ordering::Relaxed;
            (counters.datagrams.load(Relaxed), counters.rejected.load(Relaxed))
        };
        while seen() != (2, 5) {
            assert!(tokio::time::Instant::now() < deadline, "datagrams counted {:?}", seen());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // The stream limit: 2 streams allowed, the control stream is one;
        // with a batch stream held open, another cannot be opened until one
        // finishes (QUIC flow control: no error, nobody else affected).
        let (mut a, _a_recv) = conn.open_bi().await.expect("first batch stream");
        a.write_all(&[edgeflow::ingest::frame::kind::BATCH]).await.expect("start a frame");
        let blocked = tokio::time::timeout(Duration::from_millis(500), conn.open_bi()).await;
        assert!(blocked.is_err(), "a stream opened beyond max_streams = 2");
        drop(a);
    });
    let stopped = node.stop();
    assert_eq!(
        stopped
            .counters
            .datagrams
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    assert_eq!(
        stopped.summary.ingest.records, 3,
        "one batch record and two datagrams"
    );
}

#[test]
fn mtls_node_refuses_clients_without_a_certificate_from_its_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = make_certs(dir.path(), &["localhost".into()]).expect("certs");
    let text = topology_text(dir.path(), "client_ca = \"ca.pem\"");
    std::fs::write(dir.path().join("edge.toml"), text).expect("topology");
    let handle = restart_in(dir.path());
    let mut node = Node::new(dir, certs.ca.clone(), handle);
    let file = data("sumo-public/telemetry.jsonl");

    let mut anonymous = node.options(Encoding::Cbor);
    anonymous.max_reconnects = 0;
    let mut unused = SendReport::default();
    let batches = edgeflow::ingest::client::batches(&file, anonymous.encoding, 500, &mut unused)
        .expect("batches");
    let err = runtime()
        .block_on(edgeflow::ingest::client::send(
            &anonymous,
            batches,
            |_, _| {},
        ))
        .expect_err("no client certificate");
    assert!(
        format!("{err:#}").to_lowercase().contains("certificate"),
        "{err:#}"
    );

    let mut with_cert = node.options(Encoding::Cbor);
    with_cert.identity = Some((certs.client_cert.clone(), certs.client_key.clone()));
    assert_eq!(send_file(&with_cert, &file).accepted, 11_486);
    node.stop();
}

#[test]
fn simulated_devices_are_served_and_counted() {
    let mut node = start("");
    let topo = Topology::load(&root("topologies/karhula.toml")).expect("valid");
    let mut target = node.options(Encoding::Cbor);
    target.sender = "sim".into();
    let load = edgeflow::tools::loadgen::Load {
        target,
        connections: 5,
        batch_records: 20,
        batches: Some(4),
        duration: Duration::from_secs(30),
        interval: Some(Duration::from_millis(100)),
        window: 2,
    };
    let mut report = runtime()
        .block_on(edgeflow::tools::loadgen::run(
            &load,
            Arc::new(topo.reference),
        ))
        .expect("load runs");
    assert_eq!(report.failed_connections, 0);
    assert_eq!(report.accepted + report.rejected, 5 * 4 * 20);
    assert_eq!(
        report.rejected, 0,
        "synthetic records are valid for the topology"
    );
    assert_eq!(
        report.latencies_us.len(),
        5 * 3,
        "first batch per connection is warm-up"
    );
    // Every acknowledgement took some time, and none more than the test.
    let (p50, p99) = (report.latency_ms(0.5), report.latency_ms(0.99));
    assert!(p50 > 0.0 && p50 <= p99 && p99 < 30_000.0, "{p50} {p99}");
    let stopped = node.stop();
    assert_eq!(stopped.summary.ingest.records, 400);
}

#[test]
fn a_connection_over_its_record_rate_is_told_so_and_others_are_unaffected() {
    let mut node = start("max_records_per_s = 1000");
    let rt = runtime();
    rt.block_on(async {
        let text = std::fs::read_to_string(data("sumo-public/telemetry.jsonl")).expect("fixture");
        let lines: Vec<&str> = text.lines().collect();
        let batch = |seq: u64, part: &[&str]| {
            let body = part.join("\n") + "\n";
            Frame::Batch {
                sender_seq: seq,
                encoding: Encoding::JsonLines,
                records: body.into(),
            }
            .to_bytes()
        };
        // 1,000 records empty the one-second bucket; 900 more need 0.9 s of
        // refill. Should the machine take that long between the two (an
        // fsync under heavy load), accepting them is right: then try again
        // on a fresh connection.
        let mut attempts = 0;
        let (conn, _control) = loop {
            attempts += 1;
            let (conn, control) = session(&node, &format!("burst-{attempts}")).await;
            let start = std::time::Instant::now();
            assert!(matches!(
                exchange(&conn, batch(0, &lines[..1000])).await,
                Frame::Ack { accepted: 1000, .. }
            ));
            match exchange(&conn, batch(1, &lines[1000..1900])).await {
                answer if error_code(&answer) == Some(ErrorCode::RateLimited as u16) => {
                    break (conn, control)
                }
                answer => {
                    let elapsed = start.elapsed();
                    assert!(
                        elapsed >= Duration::from_millis(900) && attempts < 5,
                        "1,900 records within {elapsed:?} on one connection: {answer:?}"
                    );
                }
            }
        };
        // A batch larger than the whole budget says why waiting will not help.
        match exchange(&conn, batch(1, &lines[..1500])).await {
            Frame::Error { code, message } => {
                assert_eq!(code, ErrorCode::BatchOverRate as u16);
                assert!(message.contains("smaller batches"), "{message}")
            }
            other => panic!("expected an error, got {other:?}"),
        }
    });
    // Another connection has its own budget.
    let mut opts = node.options(Encoding::Cbor);
    opts.batch_lines = 100;
    opts.window = 1;
    opts.pace = Some(2000.0);
    let mut unused = SendReport::default();
    let lines: Vec<u8> = std::fs::read_to_string(data("sumo-public/telemetry.jsonl"))
        .expect("fixture")
        .lines()
        .take(500)
        .flat_map(|l| l.bytes().chain(Some(b'\n')))
        .collect();
    let path = node.dir.path().join("small.jsonl");
    std::fs::write(&path, lines).expect("write");
    let batches =
        edgeflow::ingest::client::batches(&path, opts.encoding, opts.batch_lines, &mut unused)
            .expect("batches");
    let r = runtime()
        .block_on(edgeflow::ingest::client::send(&opts, batches, |_, _| {}))
        .expect("served");
    assert_eq!(r.accepted, 500);
    node.stop();
}

#[test]
fn a_batch_refused_early_does_not_strand_an_earlier_one_and_a_stalled_one_does_not_hold_up_stop() {
    let mut node = start("drain_timeout = \"1s\"");
    let rt = runtime();
    let text = std::fs::read_to_string(data("sumo-public/telemetry.jsonl")).expect("fixture");
    let body: String = text.lines().take(10).flat_map(|l| [l, "\n"]).collect();
    let batch = Frame::Batch {
        sender_seq: 0,
        encoding: Encoding::JsonLines,
        records: body.into(),
    }
    .to_bytes();
    let conn = rt.block_on(async {
        let (conn, _control) = session(&node, "staller").await;
        // Batch 0 arrives slowly; the batch after it is refused at once.
        let (mut slow, mut slow_answer) = conn.open_bi().await.expect("stream");
        slow.write_all(&batch[..20]).await.expect("write");
        let not_a_batch = Frame::Welcome { next_sender_seq: 1 }.to_bytes();
        assert_eq!(
            error_code(&exchange(&conn, not_a_batch).await),
            Some(ErrorCode::BadFrame as u16)
        );
        slow.write_all(&batch[20..]).await.expect("write");
        let _ = slow.finish();
        let answer =
            tokio::time::timeout(Duration::from_secs(10), slow_answer.read_to_end(1 << 20))
                .await
                .expect("batch 0 is answered")
                .expect("answer");
        assert!(matches!(
            Frame::decode(&mut BytesMut::from(&answer[..]), 1 << 20),
            Ok(Some(Frame::Ack {
                sender_seq: 0,
                accepted: 10,
                ..
            }))
        ));
        // Batch 1 starts and never finishes.
        let (mut stalled, _answer) = conn.open_bi().await.expect("stream");
        stalled.write_all(&batch[..20]).await.expect("write");
        (conn, stalled, _answer)
    });
    // The node stops after drain_timeout, not when the client pleases.
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = node.handle.take().expect("running");
    std::thread::spawn(move || {
        let _ = tx.send(handle.shutdown().map(|r| r.summary.ingest.records));
    });
    let stopped = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the node stops despite a stalled batch");
    assert_eq!(stopped.expect("clean stop"), 10);
    drop(conn);
}
