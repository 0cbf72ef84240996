//! The NGSI-LD sink against the strict test broker (issue 13): every
//! entity valid for the official Smart Data Models schemas
//! (tests/data/smart-data-models), the broker's rules kept, faults
//! survived, and after a run (with SIGKILLs of the node) the broker's
//! current entities equal what a replay of the same recording computes.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use edgeflow::aggregate::{AggKey, AggValue, Kind};
use edgeflow::node::make_certs;
use edgeflow::sink::ngsi::{entity, entity_id, key_values};
use edgeflow::tools::ngsi_broker::{Broker, BrokerSettings, Fault, Validate};
use edgeflow::topology::Topology;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::support::{data, free_port, replay_table, root, send, Proc, FLEET_TOKEN};

/// One validator per entity type, from the Smart Data Models' schemas,
/// their `$ref`s resolved in tests/data.
fn sdm_validator() -> Box<Validate> {
    let dir = data("smart-data-models");
    let read = |rel: &str| -> Value {
        let text = std::fs::read_to_string(dir.join(rel)).expect("schema");
        serde_json::from_str(&text).expect("schema JSON")
    };
    let registry = jsonschema::Registry::new()
        .add(
            "https://smart-data-models.github.io/data-models/common-schema.json",
            read("common-schema.json"),
        )
        .expect("common schema")
        .prepare()
        .expect("registry");
    let build = |rel: &str| {
        jsonschema::options()
            .with_registry(&registry)
            .should_validate_formats(true)
            .build(&read(rel))
            .expect("validator")
    };
    let traffic = build("TrafficFlowObserved/schema.json");
    let station = build("EVChargingStation/schema.json");
    Box::new(move |e: &Value| {
        let v = match e["type"].as_str() {
            Some("TrafficFlowObserved") => &traffic,
            Some("EVChargingStation") => &station,
            other => return Err(format!("no schema for type {other:?}")),
        };
        let errors: Vec<String> = v
            .iter_errors(e)
            .map(|err| format!("{err} at {}", err.instance_path()))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    })
}

#[test]
fn the_schemas_accept_their_own_examples_and_refuse_a_broken_entity() {
    let validate = sdm_validator();
    for model in ["TrafficFlowObserved", "EVChargingStation"] {
        let path = data(&format!("smart-data-models/{model}/examples/example.json"));
        let example: Value =
            serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("json");
        validate(&example).unwrap_or_else(|e| panic!("{model} example: {e}"));
        let mut broken = example.clone();
        broken["type"] = Value::String("Nonsense".into());
        assert!(validate(&broken).is_err());
    }
    let path = data("smart-data-models/EVChargingStation/examples/example.json");
    let mut station: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("json");
    station["status"] = Value::String("charging".into());
    let err = validate(&station).expect_err("not an SDM status");
    assert!(err.contains("status"), "{err}");
}

/// A node topology: Karhula, an NGSI-LD sink to `broker`, `sink_extra`
/// lines in the sink's table.
fn topology_text(port: u16, broker: &str, sink_extra: &str) -> String {
    node_text(
        port,
        &format!(
            "[[sink]]\ntype = \"ngsi-ld\"\nurl = \"{broker}\"\ntenant = \"karhula\"\n{sink_extra}"
        ),
    )
}

/// A node topology: Karhula, ingest on loopback `port`, a files sink in
/// `out`, then `sinks` (TOML).
pub(crate) fn node_text(port: u16, sinks: &str) -> String {
    format!(
        "[node]\nid = \"karhula-edge\"\n[reference]\nroads = \"{roads}\"\nchargers = \"{chargers}\"\n\
         [windows]\nsize = \"60s\"\nallowed_lateness = \"5s\"\nretention = \"15m\"\n\
         [privacy]\nmin_vehicles = 1\n\
         [ingest]\nlisten = \"127.0.0.1:{port}\"\ncert = \"server.pem\"\nkey = \"server.key\"\n\
         [log]\ndir = \"log\"\nsegment_bytes = 262144\n\
         [[fleet]]\nname = \"cars\"\ntoken_sha256 = \"{token}\"\n\
         [[sink]]\ntype = \"files\"\ndir = \"out\"\n{sinks}",
        roads = root("topologies/karhula/roads.geojson").display(),
        chargers = root("topologies/karhula/chargers.geojson").display(),
        token = hex::encode(Sha256::digest(FLEET_TOKEN.as_bytes())),
    )
}

/// The entities a broker should hold after `input` went through: each
/// segment's and charger's latest final window, from a replay.
pub(crate) fn expected_entities(topo: &Topology, input: &Path) -> BTreeMap<String, Value> {
    let reference = Arc::new(topo.reference.clone());
    let table = replay_table(topo, input);
    let mut latest: BTreeMap<(Kind, u32), (AggKey, AggValue)> = BTreeMap::new();
    let rows = [Kind::Congestion, Kind::Charging].map(|k| table.rows(k));
    for (key, value) in rows.into_iter().flatten() {
        let slot = latest
            .entry((key.kind, key.key))
            .or_insert((*key, value.clone()));
        if key.window >= slot.0.window {
            *slot = (*key, value.clone());
        }
    }
    let mut out = BTreeMap::new();
    for (key, value) in latest.values() {
        if key.kind == Kind::Zone {
            continue;
        }
        let id = entity_id(&reference, &topo.node_id, key).expect("id");
        let e = entity(&reference, &topo.node_id, topo.time.size_ms, key, value).expect("entity");
        out.insert(id, e);
    }
    out
}

/// The broker's entities equal `want`; the first differences said.
pub(crate) fn assert_same_entities(got: &BTreeMap<String, Value>, want: &BTreeMap<String, Value>) {
    let missing: Vec<_> = want
        .keys()
        .filter(|k| !got.contains_key(*k))
        .take(5)
        .collect();
    let extra: Vec<_> = got
        .keys()
        .filter(|k| !want.contains_key(*k))
        .take(5)
        .collect();
    let differ: Vec<_> = (want.iter())
        .filter(|(k, v)| got.get(*k).is_some_and(|g| g != *v))
        .take(2)
        .map(|(k, v)| format!("{k}:\n  got  {}\n  want {v}", got[k]))
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty() && differ.is_empty(),
        "{} entities, {} wanted; missing {missing:?}, extra {extra:?}, differing:\n{}",
        got.len(),
        want.len(),
        differ.join("\n")
    );
}

fn strict_broker() -> Broker {
    let settings = BrokerSettings {
        max_entities: 100,
        max_bytes: 256 * 1024,
        validate: Some(sdm_validator()),
    };
    Broker::start("127.0.0.1:0".parse().expect("addr"), settings).expect("broker")
}

#[test]
fn the_karhula_recording_through_faults_ends_as_the_replay_computes() {
    let _deadline = crate::support::deadline();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let certs = make_certs(dir, &["localhost".into()]).expect("certs");
    let broker = strict_broker();
    // Every fault once, early: the first requests meet them.
    broker.inject([
        Fault::Unavailable(1),
        Fault::ServerError,
        Fault::Reset,
        Fault::Delay(Duration::from_millis(3500)),
        Fault::TooLarge,
        Fault::Partial {
            transient: 3,
            permanent: 0,
        },
    ]);
    let text = topology_text(
        free_port(),
        &broker.url(),
        "max_entities = 150\nmax_in_flight = 3\ntimeout = \"3s\"\n",
    );
    std::fs::write(dir.join("edge.toml"), text).expect("write");
    let topo = Topology::load(&dir.join("edge.toml")).expect("valid");
    let input = data("sumo-public/telemetry.jsonl");
    let want = expected_entities(&topo, &input);
    let node = edgeflow::node::start(topo, 1).expect("start");
    send(node.addr, &certs.ca, &input, None);
    let status = node.sinks[0].1.clone();
    node.shutdown().expect("stop");
    let stats = broker.stats();
    assert!(stats.violations.is_empty(), "{:?}", stats.violations);
    assert!(
        stats.invalid.is_empty(),
        "{:?}",
        &stats.invalid[..stats.invalid.len().min(3)]
    );
    assert_eq!(stats.faults, 6, "every fault met");
    assert_same_entities(&broker.entities(), &want);
    assert_eq!(stats.duplicates, 0, "no kill, so no write twice");
    let s = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    assert!(s(&status.retried) > 0);
    assert_eq!(s(&status.dead_lettered), 0);
    assert_eq!(s(&status.backlog), 0);
    assert_eq!(s(&status.acknowledged), stats.applied);
    // Every final window of every entity reached the history, in order.
    let id = want.keys().next().expect("an entity");
    let windows: Vec<String> = (broker.history(id).iter())
        .map(|e| key_values(e)["dateObservedFrom"].to_string())
        .collect();
    let mut sorted = windows.clone();
    sorted.sort();
    assert_eq!(windows, sorted, "an entity never goes back in time");
}

#[test]
fn an_entity_refused_for_good_is_dead_lettered_and_the_rest_delivered() {
    let _deadline = crate::support::deadline();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let certs = make_certs(dir, &["localhost".into()]).expect("certs");
    let broker = strict_broker();
    broker.inject([Fault::Partial {
        transient: 1,
        permanent: 2,
    }]);
    let text = topology_text(free_port(), &broker.url(), "max_entities = 50\n");
    std::fs::write(dir.join("edge.toml"), text).expect("write");
    let topo = Topology::load(&dir.join("edge.toml")).expect("valid");
    // The first ten minutes of the recording.
    let all = std::fs::read_to_string(data("sumo-public/telemetry.jsonl")).expect("read");
    let first = all.lines().next().expect("a line");
    let t0 = serde_json::from_str::<Value>(first).expect("json")["ts_ms"]
        .as_u64()
        .expect("ts");
    let part: String = all
        .lines()
        .filter(|l| {
            serde_json::from_str::<Value>(l).is_ok_and(|v| v["ts_ms"].as_u64() < Some(t0 + 600_000))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let input = dir.join("part.jsonl");
    std::fs::write(&input, part).expect("write");
    let want = expected_entities(&topo, &input);
    let node = edgeflow::node::start(topo, 1).expect("start");
    send(node.addr, &certs.ca, &input, None);
    let status = node.sinks[0].1.clone();
    node.shutdown().expect("stop");
    assert_eq!(status.dead_lettered.load(Ordering::Relaxed), 2);
    let got = broker.entities();
    // Two entities' first windows were refused: unless a later window of
    // theirs came, they are missing; every other entity is as replayed.
    let differ = want.iter().filter(|(k, v)| got.get(*k) != Some(*v)).count();
    assert!(differ <= 2, "{differ} entities differ");
    assert!(got.len() + 2 >= want.len());
    assert_eq!(broker.stats().duplicates, 0);
}

/// `edgeflow edge` as a child process, listening.
pub(crate) fn spawn(dir: &Path) -> Proc {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_edgeflow"));
    cmd.arg("edge")
        .arg("--topology")
        .arg(dir.join("edge.toml"))
        .args(["--workers", "1"]);
    let mut p = Proc::spawn("edge", cmd);
    p.wait_until(Duration::from_secs(30), "listening", |_, err| {
        err.contains("listening on")
    });
    p
}

#[test]
fn sigkills_of_the_node_lose_nothing_and_duplicate_only_what_was_in_flight() {
    let _deadline = crate::support::deadline();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let certs = make_certs(dir, &["localhost".into(), "127.0.0.1".into()]).expect("certs");
    let broker = strict_broker();
    let port = free_port();
    // Small requests, two in flight: at most 2 x 40 entities in flight.
    let text = topology_text(
        port,
        &broker.url(),
        "max_entities = 40\nmax_in_flight = 2\n",
    );
    std::fs::write(dir.join("edge.toml"), text).expect("write");
    let topo = Topology::load(&dir.join("edge.toml")).expect("valid");
    let input = data("sumo-public/telemetry.jsonl");
    let want = expected_entities(&topo, &input);
    let mut node = spawn(dir);
    let sender = {
        let (ca, input) = (certs.ca.clone(), input.clone());
        let addr = format!("127.0.0.1:{port}").parse().expect("addr");
        std::thread::spawn(move || send(addr, &ca, &input, Some(40.0)))
    };
    let mut kills = 0;
    for wait in [4, 5] {
        std::thread::sleep(Duration::from_secs(wait));
        // Faults meanwhile, so some requests are retried at the kill.
        broker.inject([Fault::ServerError, Fault::Reset]);
        node.kill();
        kills += 1;
        node = spawn(dir);
    }
    sender.join().expect("sender");
    node.terminate();
    let (status, _, stderr) = node.finish(Duration::from_secs(60));
    assert!(status.success(), "{status}: {stderr}");
    let stats = broker.stats();
    assert!(stats.violations.is_empty(), "{:?}", stats.violations);
    assert!(
        stats.invalid.is_empty(),
        "{:?}",
        &stats.invalid[..stats.invalid.len().min(3)]
    );
    assert_same_entities(&broker.entities(), &want);
    eprintln!(
        "ngsi kill test: {} requests, {} applied, {} duplicates, {} faults; node: {}",
        stats.requests,
        stats.applied,
        stats.duplicates,
        stats.faults,
        stderr
            .lines()
            .filter(|l| l.contains("sink ngsi-ld"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    assert!(
        stats.duplicates <= kills * 2 * 40,
        "{} duplicate history entries after {kills} kills: more than was in flight",
        stats.duplicates
    );
    assert!(stderr.contains("sink ngsi-ld:"), "{stderr}");
}

#[test]
fn an_unreachable_broker_blocks_nothing_and_its_backlog_stays_bounded() {
    let _deadline = crate::support::deadline();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let certs = make_certs(dir, &["localhost".into()]).expect("certs");
    // A loopback TCP port nobody listens on: every request is refused.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let text = topology_text(
        free_port(),
        &format!("http://127.0.0.1:{closed}"),
        "max_entities = 50\nmax_backlog = 200\n",
    );
    std::fs::write(dir.join("edge.toml"), text).expect("write");
    let topo = Topology::load(&dir.join("edge.toml")).expect("valid");
    let input = data("sumo-public/telemetry.jsonl");
    let want = replay_table(&topo, &input);
    let node = edgeflow::node::start(topo.clone(), 1).expect("start");
    let accepted = send(node.addr, &certs.ca, &input, None);
    assert!(accepted > 10_000, "{accepted}");
    let status = node.sinks[0].1.clone();
    node.shutdown().expect("stop");
    let n = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    // The other sink has every row: nothing waited for the broker.
    let got = std::fs::read_to_string(dir.join("out/congestion.csv")).expect("files");
    assert_eq!(
        got,
        want.csv(Kind::Congestion, &topo.reference, topo.time.size_ms)
    );
    // The broker's backlog stayed within max_backlog (and what was in
    // flight); the oldest were given up and counted.
    assert_eq!(n(&status.acknowledged), 0);
    assert!(n(&status.dropped) > 0, "{status:?}");
    assert!(n(&status.backlog) <= 200 + 4 * 50, "{status:?}");
}
