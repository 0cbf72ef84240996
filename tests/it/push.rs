//! A city of two edges and a central node over real QUIC on loopback
//! (issue 12): the Karhula recording split between a west and an east edge
//! by a meridian, each report sent to the edge it is in, so vehicles hand
//! over mid-trip and mid-window. The edges push their partials
//! (`edgeflow-push/1`); central's files sink equals what one node replaying
//! the whole recording writes.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use edgeflow::ingest::client::SendOptions;
use edgeflow::log::Encoding;
use edgeflow::node::{make_certs, EdgeHandle, Role};
use edgeflow::topology::Topology;
use sha2::{Digest, Sha256};

use crate::ingest::send_file;
use crate::support::{
    data, free_port, number_before, replay_table, root, send_as, Proc, FLEET_TOKEN,
};

/// The city's vehicle hash key (64 hex).
const CITY_KEY: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";

fn token_of(edge: &str) -> String {
    format!("push-token-of-{edge}")
}

fn sha(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// What every node of the city shares: Karhula's reference data, windows,
/// zones and the vehicle hash key.
fn common(id: &str, port: u16) -> String {
    format!(
        "[node]\nid = \"{id}\"\n[reference]\nroads = \"{roads}\"\nchargers = \"{chargers}\"\nzones = \"{zones}\"\n\
         [windows]\nsize = \"60s\"\nallowed_lateness = \"5s\"\nretention = \"15m\"\n\
         [zones]\nh3_resolution = 8\nlow_soc_pct = 20\n[privacy]\nvehicle_hash_key = \"{CITY_KEY}\"\nmin_vehicles = 1\n\
         [ingest]\nlisten = \"127.0.0.1:{port}\"\ncert = \"server.pem\"\nkey = \"server.key\"\n\
         [log]\ndir = \"{id}-log\"\nsegment_bytes = 262144\n\
         [[sink]]\ntype = \"files\"\ndir = \"{id}-out\"\n",
        roads = root("topologies/karhula/roads.geojson").display(),
        chargers = root("topologies/karhula/chargers.geojson").display(),
        zones = root("topologies/karhula/zones.geojson").display(),
    )
}

/// The city operator's token at central.
const OPERATOR_TOKEN: &str = "city-operator-secret";

fn central_text(edges: &[&str], straggler_timeout: &str, port: u16) -> String {
    let mut t = common("central", port);
    t += &format!("[central]\nstraggler_timeout = \"{straggler_timeout}\"\n");
    t += &format!(
        "[[operator]]\nname = \"city\"\ntoken_sha256 = \"{}\"\n",
        sha(OPERATOR_TOKEN)
    );
    for e in edges {
        t += &format!(
            "[[edge]]\nname = \"{e}\"\ntoken_sha256 = \"{}\"\n",
            sha(&token_of(e))
        );
    }
    t
}

fn edge_text(id: &str, central: std::net::SocketAddr, port: u16) -> String {
    format!(
        "{}[[fleet]]\nname = \"cars\"\ntoken_sha256 = \"{}\"\n\
         [[sink]]\ntype = \"central\"\nto = \"{central}\"\nca = \"ca.pem\"\ntoken = \"{}\"\nserver_name = \"localhost\"\n",
        common(id, port),
        sha(FLEET_TOKEN),
        token_of(id),
    )
}

fn start(dir: &Path, name: &str, text: &str, role: Role) -> EdgeHandle {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("write topology");
    let topo = Topology::load(&path).unwrap_or_else(|p| panic!("{name}: {p:?}"));
    edgeflow::node::start_as(role, topo, 2, edgeflow::log::disk::Disk::real()).expect("starts")
}

/// The recording split at the median report's longitude: (west, east)
/// as JSON Lines files in `dir`.
fn split_recording(dir: &Path, topo: &Topology) -> (PathBuf, PathBuf) {
    let text = std::fs::read_to_string(data("sumo-public/telemetry.jsonl")).expect("fixture");
    let reference = &topo.reference;
    let lon = |line: &str| {
        let v: serde_json::Value = serde_json::from_str(line).expect("json");
        match v["type"].as_str() {
            Some("charger") => {
                let id = v["charger_id"].as_str().expect("charger id");
                reference.chargers[reference.charger(id).expect("known") as usize].position[0]
            }
            _ => v["lon"].as_f64().expect("lon"),
        }
    };
    let mut lons: Vec<f64> = text.lines().map(lon).collect();
    lons.sort_by(f64::total_cmp);
    let meridian = lons[lons.len() / 2];
    let (west, east): (Vec<&str>, Vec<&str>) = text.lines().partition(|l| lon(l) < meridian);
    let write = |name: &str, lines: &[&str]| {
        let path = dir.join(name);
        std::fs::write(&path, lines.join("\n") + "\n").expect("write");
        path
    };
    (write("west.jsonl", &west), write("east.jsonl", &east))
}

/// The files one node replaying the whole recording writes, with the
/// city's topology.
fn one_node(dir: &Path, topo: &Topology) -> PathBuf {
    let table = replay_table(topo, &data("sumo-public/telemetry.jsonl"));
    let out = dir.join("one-node");
    table
        .write_csv(&out, &topo.reference, topo.time.size_ms)
        .expect("write");
    out
}

/// A city being set up in a temporary directory: certificates, the
/// recording split west and east, and central running.
struct City {
    _deadline: crate::support::Deadline,
    tmp: tempfile::TempDir,
    ca: PathBuf,
    topo: Topology,
    west_file: PathBuf,
    east_file: PathBuf,
    central: EdgeHandle,
}

/// Central of a west and an east edge, stragglers left out after
/// `straggler_timeout`.
fn city(straggler_timeout: &str) -> City {
    city_with(straggler_timeout, "")
}

/// [`city`], with `extra` (TOML) in central's topology.
fn city_with(straggler_timeout: &str, extra: &str) -> City {
    let _deadline = crate::support::deadline();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let certs = make_certs(dir, &["localhost".into(), "127.0.0.1".into()]).expect("certs");
    let text = central_text(&["west", "east"], straggler_timeout, 0) + extra;
    let central = start(dir, "central", &text, Role::Central);
    let topo = Topology::load(&dir.join("central.toml")).expect("valid");
    let (west_file, east_file) = split_recording(dir, &topo);
    City {
        _deadline,
        tmp,
        ca: certs.ca,
        topo,
        west_file,
        east_file,
        central,
    }
}

#[test]
fn two_edges_pushing_to_central_write_what_one_node_writes() {
    // Both edges push throughout: neither is ever left behind by an hour.
    // Central feeds a city's NGSI-LD broker too (issue 13).
    let broker = edgeflow::tools::ngsi_broker::Broker::start(
        "127.0.0.1:0".parse().expect("addr"),
        Default::default(),
    )
    .expect("broker");
    let sink = format!("[[sink]]\ntype = \"ngsi-ld\"\nurl = \"{}\"\n", broker.url());
    let c = city_with("1h", &sink);
    let dir = c.tmp.path();
    let west = start(
        dir,
        "west",
        &edge_text("west", c.central.addr, 0),
        Role::Edge,
    );
    let east = start(
        dir,
        "east",
        &edge_text("east", c.central.addr, 0),
        Role::Edge,
    );
    let sent = std::thread::scope(|s| {
        let w = s.spawn(|| send_as(west.addr, &c.ca, &c.west_file, "cars-west", None));
        let e = s.spawn(|| send_as(east.addr, &c.ca, &c.east_file, "cars-east", None));
        w.join().expect("west") + e.join().expect("east")
    });
    assert_eq!(sent, 11_486);
    for edge in [west, east] {
        let report = edge.shutdown().expect("edge stops");
        let push = report.push.expect("a central sink");
        assert!(push.batches.load(Ordering::Relaxed) > 0);
        assert_eq!(push.refused.load(Ordering::Relaxed), 0);
    }
    // Central's /metrics: its merge and its own dataflow's rows.
    let scrape = c.central.registry.render();
    let sample = |name: &str| sample_of(&scrape, name);
    assert!(
        sample("edgeflow_central_updates_total{outcome=\"applied\"}") > 0.0,
        "{scrape}"
    );
    for edge in ["west", "east"] {
        let mark = sample(&format!(
            "edgeflow_central_edge_watermark_ms{{edge=\"{edge}\"}}"
        ));
        assert!(mark > 1.767e12, "{edge}'s pushed watermark: {scrape}");
    }
    let registry = c.central.registry.clone();
    let report = c.central.shutdown().expect("central stops");
    // Central's own dataflow's rows. Counted after its stop: central's
    // time is its edges' watermark, so what a step applies is emitted
    // once the watermark moves on, and here both edges' last pushes may
    // come in one step.
    let scrape = registry.render();
    assert!(
        sample_of(&scrape, "edgeflow_rows_emitted_total") > 0.0,
        "{scrape}"
    );
    let edges = report.edges.expect("central's edges");
    assert!(edges.applied.load(Ordering::Relaxed) > 0);
    assert_eq!(edges.skipped.load(Ordering::Relaxed), 0);

    assert_eq!(edges.expired.load(Ordering::Relaxed), 0);
    assert_equals_one_node(dir, &c.topo);
    // Central's NGSI-LD entities are the city's latest final windows.
    let want = crate::ngsi::expected_entities(&c.topo, &data("sumo-public/telemetry.jsonl"));
    crate::ngsi::assert_same_entities(&broker.entities(), &want);
    assert_eq!(broker.stats().duplicates, 0);
    assert!(broker.stats().violations.is_empty());
    let out = dir.join("central-out");
    let read = |f: &str| std::fs::read_to_string(out.join(f)).expect(f);
    assert_eq!(
        read("missing.csv"),
        "window_start_ms,edge\n",
        "no window final without an edge"
    );
    let edges_csv = read("edges.csv");
    let lines: Vec<&str> = edges_csv.lines().collect();
    assert_eq!(lines[0], "edge,pushed_watermark_ms,straggling");
    assert!(
        lines[1].starts_with("west,1767258") && lines[1].ends_with(",false"),
        "{lines:?}"
    );
    assert!(
        lines[2].starts_with("east,1767258") && lines[2].ends_with(",false"),
        "{lines:?}"
    );
}

/// Central's files equal one node's, byte for byte.
fn assert_equals_one_node(dir: &Path, topo: &Topology) {
    let expected = one_node(dir, topo);
    for file in ["congestion.csv", "charging.csv", "zones.csv"] {
        let want = std::fs::read_to_string(expected.join(file)).expect("expected");
        let got = std::fs::read_to_string(dir.join("central-out").join(file)).expect("central");
        assert!(want.lines().count() > 40, "{file}");
        assert_same_lines(&got, &want, file);
    }
}

/// Waits up to 20 s for `what` to hold of c.central's files sink.
fn wait_for_sink(dir: &Path, file: &str, what: impl Fn(&str) -> bool) -> String {
    let path = dir.join("central-out").join(file);
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if what(&text) {
            return text;
        }
        assert!(
            std::time::Instant::now() < until,
            "{file} never got there: {text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn a_silent_edge_is_named_and_its_data_arrives_later_as_corrections() {
    let c = city("2m");
    let dir = c.tmp.path();

    // East is silent: west's ten minutes go final without it, once west is
    // two minutes past the first watermark c.central heard.
    let west = start(
        dir,
        "west",
        &edge_text("west", c.central.addr, 0),
        Role::Edge,
    );
    // Paced at 60x, so west's watermark moves on while it pushes.
    send_as(west.addr, &c.ca, &c.west_file, "cars-west", Some(60.0));
    let missing = wait_for_sink(dir, "missing.csv", |t| t.lines().count() >= 4);
    assert!(
        missing.lines().skip(1).all(|l| l.ends_with(",east")),
        "{missing}"
    );
    let finals_without_east = wait_for_sink(dir, "congestion.csv", |t| t.lines().count() > 100);
    west.shutdown().expect("west stops");

    // East comes back: what it pushes corrects windows already final.
    let east = start(
        dir,
        "east",
        &edge_text("east", c.central.addr, 0),
        Role::Edge,
    );
    send_as(east.addr, &c.ca, &c.east_file, "cars-east", None);
    east.shutdown().expect("east stops");
    let report = c.central.shutdown().expect("central stops");
    assert!(
        report.summary.emitted.corrections > 0,
        "{:?}",
        report.summary.emitted
    );
    let edges = report.edges.expect("central's edges");
    assert_eq!(edges.expired.load(Ordering::Relaxed), 0);
    assert_ne!(
        std::fs::read_to_string(dir.join("central-out/congestion.csv")).expect("sink"),
        finals_without_east
    );
    assert_equals_one_node(dir, &c.topo);
    // The windows final without east stay named.
    let after = std::fs::read_to_string(dir.join("central-out/missing.csv")).expect("sink");
    assert!(after.lines().count() >= missing.lines().count(), "{after}");
}

/// Asserts two files hold the same lines, naming the first that differ.
fn assert_same_lines(got: &str, want: &str, what: &str) {
    let (g, w): (Vec<&str>, Vec<&str>) = (got.lines().collect(), want.lines().collect());
    let first = g.iter().zip(&w).position(|(a, b)| a != b);
    assert!(
        first.is_none() && g.len() == w.len(),
        "{what}: {} lines, one node {}; first difference at line {:?}: {:?} vs {:?}",
        g.len(),
        w.len(),
        first.map(|i| i + 1),
        first.map(|i| g[i]),
        first.map(|i| w[i]),
    );
}

/// `edgeflow ROLE --topology DIR/NAME.toml` as a child process, listening.
fn spawn(dir: &Path, role: &str, name: &str) -> Proc {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_edgeflow"));
    cmd.arg(role)
        .arg("--topology")
        .arg(dir.join(format!("{name}.toml")))
        .args(["--workers", "1"]);
    let mut p = Proc::spawn(name, cmd);
    p.wait_until(Duration::from_secs(30), "listening", |_, err| {
        err.contains("listening on")
    });
    p
}

/// Stops a node process with SIGTERM; returns its stderr (its report).
fn stop(mut p: Proc) -> String {
    p.terminate();
    let (status, _, stderr) = p.finish(Duration::from_secs(60));
    assert!(status.success(), "{status}: {stderr}");
    stderr
}

#[test]
fn kills_restarts_and_an_outage_change_no_final_value() {
    let _deadline = crate::support::deadline();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let certs = make_certs(dir, &["localhost".into(), "127.0.0.1".into()]).expect("certs");
    let (pc, pw, pe) = (free_port(), free_port(), free_port());
    let central_addr: std::net::SocketAddr = format!("127.0.0.1:{pc}").parse().expect("addr");
    let topologies = [
        ("central", central_text(&["west", "east"], "1h", pc)),
        ("west", edge_text("west", central_addr, pw)),
        ("east", edge_text("east", central_addr, pe)),
    ];
    for (name, text) in &topologies {
        std::fs::write(dir.join(format!("{name}.toml")), text).expect("write");
    }
    let topo = Topology::load(&dir.join("central.toml")).expect("valid");
    let (west_file, east_file) = split_recording(dir, &topo);
    let mut central = spawn(dir, "central", "central");
    let watcher = Watcher::start(central_addr, certs.ca.clone());
    let mut west = spawn(dir, "edge", "west");
    let east = spawn(dir, "edge", "east");

    // Devices send paced at 30x (about 20 s), resending through restarts.
    let send = |port: u16, file: PathBuf, sender: &'static str| {
        let ca = certs.ca.clone();
        std::thread::spawn(move || {
            let opts = SendOptions {
                sender: sender.into(),
                encoding: Encoding::Cbor,
                batch_lines: 100,
                window: 4,
                max_reconnects: 1_000,
                pace: Some(30.0),
                ..SendOptions::new(
                    format!("127.0.0.1:{port}").parse().expect("addr"),
                    "localhost",
                    ca,
                    FLEET_TOKEN,
                )
            };
            send_file(&opts, &file)
        })
    };
    let senders = [
        send(pw, west_file, "cars-west"),
        send(pe, east_file, "cars-east"),
    ];
    let pause = |s: u64| std::thread::sleep(Duration::from_secs(s));
    // Central crashes, and stays away for a stretch: the edges hold.
    pause(3);
    central.kill();
    pause(3);
    central = spawn(dir, "central", "central");
    // The west edge crashes and comes back at once.
    pause(2);
    west.kill();
    west = spawn(dir, "edge", "west");
    // Central crashes again.
    pause(3);
    central.kill();
    central = spawn(dir, "central", "central");
    for s in senders {
        let report = s.join().expect("sender");
        assert_eq!(report.rejected, 0, "{:?}", report.rejections);
    }
    for edge in [west, east] {
        let report = stop(edge);
        assert!(report.contains("central sink:"), "{report}");
    }
    // Central applies the edges' last pushes after acknowledging them:
    // the watcher follows until what it sees stops changing.
    watcher.settle(Duration::from_millis(1_500), Duration::from_secs(60));
    watcher.stop.store(true, Ordering::Relaxed);
    let report = stop(central);
    let watched = watcher.thread.join().expect("watcher");
    // Through every kill, central's live feed never took a value back.
    assert!(watched.connections >= 3, "{watched:?}");
    assert!(
        watched.backwards.is_empty(),
        "went backwards: {:?}",
        watched.backwards
    );
    let edges = report
        .lines()
        .find(|l| l.contains(" edges: "))
        .unwrap_or_else(|| panic!("no edges line in {report}"));
    // Edges resent what central may have lacked: recognised, applied once.
    assert!(number_before(edges, "updates applied") > 0, "{report}");
    assert!(number_before(edges, "unchanged") > 0, "{report}");
    assert_eq!(number_before(edges, "log entries skipped"), 0, "{report}");
    assert_equals_one_node(dir, &topo);
    // ... and it saw every row the files hold.
    let rows = std::fs::read_to_string(dir.join("central-out/congestion.csv")).expect("central");
    assert_eq!(watched.keys, rows.lines().count() as u64 - 1, "{watched:?}");
}

/// What a central subscriber saw through kills.
#[derive(Debug, Default)]
struct Watched {
    /// Subscriptions that delivered frames (one per central run).
    connections: u64,
    /// Rows seen.
    rows: u64,
    /// Distinct (segment, window) seen.
    keys: u64,
    /// (segment, window, samples before, samples after) where a key's
    /// samples went down.
    backwards: Vec<(String, u64, u64, u64)>,
}

/// An operator following central's provisional congestion feed, through
/// central's kills (it subscribes again, from a snapshot, each time),
/// checking that no (segment, window) ever shows fewer samples than it
/// showed before: the edges' partials only grow, so neither a lost batch,
/// a resend nor central's replay of its log may take a value back.
/// Set `stop`, then stop central (which ends the feed), then join.
struct Watcher {
    stop: Arc<std::sync::atomic::AtomicBool>,
    /// Rows seen so far, live.
    rows: Arc<std::sync::atomic::AtomicU64>,
    thread: std::thread::JoinHandle<Watched>,
}

impl Watcher {
    fn start(to: std::net::SocketAddr, ca: PathBuf) -> Watcher {
        use edgeflow::subscribe::client::{subscribe, SubscribeOptions};
        use edgeflow::subscribe::proto::SubFrame;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let rows = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let rows_seen = rows.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let mut seen = std::collections::HashMap::<(String, u64), u64>::new();
            let mut watched = Watched::default();
            while !flag.load(Ordering::Relaxed) {
                let mut request = SubscribeOptions::request(OPERATOR_TOKEN, "congestion");
                request.mode = "provisional".into();
                let opts = SubscribeOptions {
                    identity: None,
                    to,
                    server_name: "localhost".into(),
                    ca: ca.clone(),
                    request,
                };
                let mut frames = 0;
                let _ = runtime.block_on(subscribe(&opts, |frame| {
                    frames += 1;
                    if let SubFrame::Row(row) = frame {
                        watched.rows += 1;
                        rows_seen.fetch_add(1, Ordering::Relaxed);
                        let samples = row
                            .value
                            .as_ref()
                            .and_then(|v| v.get("samples")?.as_u64())
                            .unwrap_or(0);
                        let before = seen
                            .entry((row.key.clone(), row.window_start_ms))
                            .or_default();
                        if samples < *before || row.op == "retract" {
                            watched.backwards.push((
                                row.key.clone(),
                                row.window_start_ms,
                                *before,
                                samples,
                            ));
                        }
                        *before = (*before).max(samples);
                    }
                    !flag.load(Ordering::Relaxed)
                }));
                if frames > 0 {
                    watched.connections += 1;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            watched.keys = seen.len() as u64;
            watched
        });
        Watcher { stop, rows, thread }
    }

    /// Returns once no row came for `quiet` (at most `limit`).
    fn settle(&self, quiet: Duration, limit: Duration) {
        let deadline = std::time::Instant::now() + limit;
        let mut last = (self.rows.load(Ordering::Relaxed), std::time::Instant::now());
        while last.1.elapsed() < quiet && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            let now = self.rows.load(Ordering::Relaxed);
            if now != last.0 {
                last = (now, std::time::Instant::now());
            }
        }
    }
}

/// Central's answer to one push batch from a connected edge.
fn push_batch(
    rt: &tokio::runtime::Runtime,
    conn: &quinn::Connection,
    seq: u64,
    encoding: Encoding,
    records: Vec<u8>,
) -> anyhow::Result<edgeflow::ingest::frame::Frame> {
    rt.block_on(async {
        let stream = conn.open_bi().await?;
        let (_, frame) =
            edgeflow::ingest::client::send_batch(stream, seq, encoding, records.into()).await?;
        Ok(frame)
    })
}

/// A push batch of raw updates (each `u32 length + body`, as
/// `wire::encode` writes them) under a header.
fn raw_batch(header: &edgeflow::partial::wire::Header, updates: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    edgeflow::partial::wire::encode(header, &[], &mut out);
    let count = edgeflow::partial::wire::HEADER_BYTES - 4;
    out[count..].copy_from_slice(&(updates.len() as u32).to_be_bytes());
    for u in updates {
        out.extend_from_slice(u);
    }
    out
}

/// One congestion update of `samples` reports on `segment`, encoded.
fn congestion_update(segment: &str, window: u64, samples: u64) -> Vec<u8> {
    use edgeflow::partial::wire::{encode, Header, Part, Update, HEADER_BYTES};
    let header = Header {
        window_ms: 60_000,
        position_resolution: None,
        watermark_ms: 0,
    };
    let update = Update {
        window_start_ms: window,
        part: Part::Congestion {
            segment: segment.into(),
            partial: edgeflow::partial::CongestionPartial {
                samples,
                speed_sum: 10_000_000 * samples as i64,
                vehicles: 1,
                sketch: edgeflow::partial::sketch::Sketch::of([samples]),
            },
        },
    };
    let mut out = Vec::new();
    encode(&header, &[update], &mut out);
    out.split_off(HEADER_BYTES)
}

#[test]
fn bad_pushes_are_refused_clearly_and_cost_the_other_edges_nothing() {
    use edgeflow::ingest::frame::{ErrorCode, Frame};
    use edgeflow::partial::wire::Header;
    let _deadline = crate::support::deadline();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let certs = make_certs(dir, &["localhost".into(), "127.0.0.1".into()]).expect("certs");
    let text = central_text(&["west", "east"], "1h", 0)
        .replace("[ingest]\n", "[ingest]\nmax_frame_bytes = 65536\n");
    let central = start(dir, "central", &text, Role::Central);
    let topo = Topology::load(&dir.join("central.toml")).expect("valid");
    let roads: Vec<String> = topo.reference.roads.iter().map(|r| r.id.clone()).collect();
    let rt = crate::ingest::runtime();
    let _guard = rt.enter();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("ep");
    endpoint.set_default_client_config(
        edgeflow::wire::tls::client_config(&certs.ca, None, edgeflow::push::ALPN).expect("tls"),
    );
    let hello = |sender: &str, token: &str| {
        let opts = SendOptions {
            sender: sender.into(),
            ..SendOptions::new(central.addr, "localhost", certs.ca.clone(), token)
        };
        rt.block_on(edgeflow::ingest::client::connect(&endpoint, &opts))
    };
    // Who may push: an edge of that name with its own token.
    let wrong = hello("west", &token_of("east")).expect_err("east's token is not west's");
    assert!(
        format!("{wrong:#}").contains("wrong token for edge \"west\""),
        "{wrong:#}"
    );
    let unknown = hello("north", &token_of("north")).expect_err("no such edge");
    assert!(
        format!("{unknown:#}").contains("no [[edge]] is named \"north\""),
        "{unknown:#}"
    );

    let (west, _control, next) = hello("west", &token_of("west")).expect("west");
    assert_eq!(next, 0);
    let window = 1_767_258_000_000;
    let header = Header {
        window_ms: 60_000,
        position_resolution: Some(topo.reference.zone_settings.position_resolution),
        watermark_ms: window + 30_000,
    };
    // One good update among bad ones: an unknown kind, an unknown segment,
    // a sketch of another version. The good one is applied, each bad one
    // rejected with its reason.
    let mut unknown_kind = congestion_update(&roads[0], window, 1);
    unknown_kind[4] = 9;
    let mut other_sketch = congestion_update(&roads[1], window, 3);
    let sketch_at = 4 + 1 + 8 + 1 + roads[1].len() + 24;
    other_sketch[sketch_at] = 2;
    let batch = raw_batch(
        &header,
        &[
            congestion_update(&roads[0], window, 5),
            unknown_kind,
            congestion_update("no-such-road", window, 2),
            other_sketch,
        ],
    );
    match push_batch(&rt, &west, 0, Encoding::Partials, batch).expect("answer") {
        Frame::Ack {
            accepted,
            rejections,
            ..
        } => {
            assert_eq!(accepted, 1);
            let reasons: Vec<(u32, u8)> = rejections.iter().map(|r| (r.0, r.1)).collect();
            assert_eq!(reasons, [(1, 20), (2, 21), (3, 20)], "{rejections:?}");
            assert!(
                rejections[0].2.contains("unknown update kind 9"),
                "{rejections:?}"
            );
            assert!(rejections[1].2.contains("no-such-road"), "{rejections:?}");
            assert!(rejections[2].2.contains("version 2"), "{rejections:?}");
        }
        other => panic!("{other:?}"),
    }
    // A batch whose settings disagree with central's is refused whole.
    let mut thirty = Vec::new();
    let other_windows = Header {
        window_ms: 30_000,
        ..header
    };
    edgeflow::partial::wire::encode(&other_windows, &[], &mut thirty);
    match push_batch(&rt, &west, 1, Encoding::Partials, thirty).expect("answer") {
        Frame::Error { code, message } => {
            assert_eq!(code, ErrorCode::Mismatch as u16);
            assert!(
                message.contains("30000 ms, central's 60000 ms"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    // Telemetry is no push.
    match push_batch(&rt, &west, 1, Encoding::Cbor, vec![0xa0]).expect("answer") {
        Frame::Error { code, message } => {
            assert_eq!(code, ErrorCode::BadFrame as u16);
            assert!(message.contains("encoding 2"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // A frame over central's max_frame_bytes never arrives.
    let huge: Vec<Vec<u8>> = (0..2_000)
        .map(|i| congestion_update(&roads[i % roads.len()], window, 1))
        .collect();
    let too_large = push_batch(&rt, &west, 1, Encoding::Partials, raw_batch(&header, &huge));
    assert!(too_large.is_err(), "{too_large:?}");
    // Another edge pushes meanwhile, untouched by all of it.
    let (east, _control, _) = hello("east", &token_of("east")).expect("east");
    let batch = raw_batch(&header, &[congestion_update(&roads[2], window, 4)]);
    let answer = push_batch(&rt, &east, 0, Encoding::Partials, batch).expect("answer");
    assert!(
        matches!(answer, Frame::Ack { accepted: 1, .. }),
        "{answer:?}"
    );
    drop((west, east));
    let report = central.shutdown().expect("central stops");
    let edges = report.edges.expect("edges");
    assert_eq!(edges.applied.load(Ordering::Relaxed), 2);
    assert!(report.counters.unauthorized.load(Ordering::Relaxed) >= 2);
    assert!(report.counters.protocol_errors.load(Ordering::Relaxed) >= 2);
    // Only the good updates reached the files: roads 0 and 2, their samples.
    let congestion = std::fs::read_to_string(dir.join("central-out/congestion.csv")).expect("sink");
    let rows: Vec<&str> = congestion.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{congestion}");
    for (road, samples) in [(&roads[0], 5), (&roads[2], 4)] {
        let prefix = format!("{road},{window},{},{samples},", window + 60_000);
        assert!(
            rows.iter().any(|r| r.starts_with(&prefix)),
            "{prefix} in {congestion}"
        );
    }
}

/// The sum of a scrape's samples whose line starts with `name`.
fn sample_of(scrape: &str, name: &str) -> f64 {
    (scrape.lines())
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
