//! A city of two edges and a central node over real QUIC on loopback
//! (issue 12): the Karhula recording split between a west and an east edge
//! by a meridian, each report sent to the edge it is in, so vehicles hand
//! over mid-trip and mid-window. The edges push their partials
//! (`edgeflow-push/1`); central's files sink equals what one node replaying
//! the whole recording writes.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use edgeflow::ingest::client::SendOptions;
use edgeflow::log::Encoding;
use edgeflow::node::{make_certs, EdgeHandle, Role};
use edgeflow::output::FinalTable;
use edgeflow::topology::Topology;
use sha2::{Digest, Sha256};

use crate::ingest::send_file;
use crate::support::{data, root};

const FLEET_TOKEN: &str = "karhula-fleet-secret";
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
fn common(id: &str) -> String {
    format!(
        "[node]\nid = \"{id}\"\n[reference]\nroads = \"{roads}\"\nchargers = \"{chargers}\"\nzones = \"{zones}\"\n\
         [windows]\nsize = \"60s\"\nallowed_lateness = \"5s\"\nretention = \"15m\"\n\
         [zones]\nh3_resolution = 8\nlow_soc_pct = 20\n[privacy]\nvehicle_hash_key = \"{CITY_KEY}\"\n\
         [ingest]\nlisten = \"127.0.0.1:0\"\ncert = \"server.pem\"\nkey = \"server.key\"\n\
         [log]\ndir = \"{id}-log\"\nsegment_bytes = 262144\n\
         [[sink]]\ntype = \"files\"\ndir = \"{id}-out\"\n",
        roads = root("topologies/karhula/roads.geojson").display(),
        chargers = root("topologies/karhula/chargers.geojson").display(),
        zones = root("topologies/karhula/zones.geojson").display(),
    )
}

fn central_text(edges: &[&str]) -> String {
    let mut t = common("central");
    for e in edges {
        t += &format!(
            "[[edge]]\nname = \"{e}\"\ntoken_sha256 = \"{}\"\n",
            sha(&token_of(e))
        );
    }
    t
}

fn edge_text(id: &str, central: std::net::SocketAddr) -> String {
    format!(
        "{}[[fleet]]\nname = \"cars\"\ntoken_sha256 = \"{}\"\n\
         [[sink]]\ntype = \"central\"\nto = \"{central}\"\nca = \"ca.pem\"\ntoken = \"{}\"\nserver_name = \"localhost\"\n",
        common(id),
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
    let reference = Arc::new(topo.reference.clone());
    let mut table = FinalTable::default();
    let (input, _) =
        edgeflow::runtime::Input::open(&data("sumo-public/telemetry.jsonl")).expect("input");
    edgeflow::runtime::run(
        input,
        reference.clone(),
        topo.time,
        edgeflow::runtime::RunOptions::new(1),
        |b| table.apply(b),
        |_| {},
    )
    .expect("replay");
    let out = dir.join("one-node");
    table
        .write_csv(&out, &reference, topo.time.size_ms)
        .expect("write");
    out
}

fn send_to(node: &EdgeHandle, ca: &Path, file: &Path, sender: &str) -> u64 {
    let opts = SendOptions {
        sender: sender.into(),
        encoding: Encoding::Cbor,
        batch_lines: 200,
        window: 4,
        max_reconnects: 3,
        ..SendOptions::new(node.addr, "localhost", ca.to_owned(), FLEET_TOKEN)
    };
    let report = send_file(&opts, file);
    assert_eq!(report.rejected, 0, "{:?}", report.rejections);
    report.accepted
}

#[test]
fn two_edges_pushing_to_central_write_what_one_node_writes() {
    let _deadline = crate::support::deadline();
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let certs = make_certs(dir, &["localhost".into(), "127.0.0.1".into()]).expect("certs");
    let central = start(dir, "central", &central_text(&["west", "east"]), Role::Central);
    let west = start(dir, "west", &edge_text("west", central.addr), Role::Edge);
    let east = start(dir, "east", &edge_text("east", central.addr), Role::Edge);
    let topo = Topology::load(&dir.join("central.toml")).expect("valid");
    let (west_file, east_file) = split_recording(dir, &topo);

    let sent = std::thread::scope(|s| {
        let w = s.spawn(|| send_to(&west, &certs.ca, &west_file, "cars-west"));
        let e = s.spawn(|| send_to(&east, &certs.ca, &east_file, "cars-east"));
        w.join().expect("west") + e.join().expect("east")
    });
    assert_eq!(sent, 11_486);
    for edge in [west, east] {
        let report = edge.shutdown().expect("edge stops");
        let push = report.push.expect("a central sink");
        assert!(push.batches.load(Ordering::Relaxed) > 0);
        assert_eq!(push.refused.load(Ordering::Relaxed), 0);
    }
    let report = central.shutdown().expect("central stops");
    let edges = report.edges.expect("central's edges");
    assert!(edges.applied.load(Ordering::Relaxed) > 0);
    assert_eq!(edges.skipped.load(Ordering::Relaxed), 0);

    let expected = one_node(dir, &topo);
    for file in ["congestion.csv", "charging.csv", "zones.csv"] {
        let want = std::fs::read_to_string(expected.join(file)).expect("expected");
        let got = std::fs::read_to_string(dir.join("central-out").join(file)).expect("central");
        assert!(want.lines().count() > 40, "{file}");
        assert_same_lines(&got, &want, file);
    }
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
