//! The MQTT sink against a real Mosquitto (issue 13), started by the test
//! on a loopback port of its own: a subscriber receives every final
//! aggregate of the Karhula recording, and the retained messages are each
//! key's latest final window, through a broker restart and SIGKILLs of the
//! node. Mosquitto comes from apt (`scripts/test` installs it); without it
//! the tests say SKIPPED, unless `EDGEFLOW_REQUIRE_MQTT` is set (CI).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgeflow::aggregate::{fields, Kind};
use edgeflow::node::make_certs;
use edgeflow::sink::mqtt::topic_level;
use edgeflow::topology::Topology;
use rumqttc::v5::mqttbytes::v5::{ConnectProperties, Packet};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde_json::Value;

use crate::ngsi::{node_text, spawn};
use crate::support::{data, free_port, replay_table, send, Proc};

/// Mosquitto's binary, or why the test cannot run.
fn mosquitto(test: &str) -> Option<PathBuf> {
    let found = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var_os("EDGEFLOW_REQUIRE_MQTT").is_none(),
            "EDGEFLOW_REQUIRE_MQTT is set but mosquitto is not installed"
        );
        crate::support::skip(
            test,
            "no mosquitto (apt install mosquitto; scripts/test does)",
        );
    }
    found
}

/// A Mosquitto on loopback `port`, persisting in `dir`.
fn start_broker(bin: &Path, dir: &Path, port: u16) -> Proc {
    let conf = dir.join("mosquitto.conf");
    let text = format!(
        "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\n\
         max_queued_messages 1000000\nmax_inflight_messages 100\n{}",
        dir.display(),
        // As root, Mosquitto would drop to its own user, which cannot
        // write a temporary directory of ours.
        if is_root() { "user root\n" } else { "" }
    );
    std::fs::write(&conf, text).expect("conf");
    let mut cmd = std::process::Command::new(bin);
    cmd.arg("-c").arg(&conf);
    let mut p = Proc::spawn("mosquitto", cmd);
    p.wait_until(Duration::from_secs(10), "mosquitto listening", |_, err| {
        err.contains("running") || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    p
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// What a subscriber received: per (topic, window start), the payload
/// with the largest ordering; and the retained messages it was sent.
#[derive(Default)]
struct Received {
    best: BTreeMap<(String, u64), Value>,
    messages: u64,
}

/// A subscriber to everything under `edgeflow/`, with a persistent session
/// (it reconnects through broker restarts and gets what it missed).
fn subscribe(
    port: u16,
    client_id: &str,
) -> (
    Arc<Mutex<Received>>,
    std::thread::JoinHandle<()>,
    Arc<std::sync::atomic::AtomicBool>,
) {
    let received = Arc::new(Mutex::new(Received::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (r, s) = (received.clone(), stop.clone());
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options.set_clean_start(false);
    let mut props = ConnectProperties::new();
    props.session_expiry_interval = Some(600);
    options.set_connect_properties(props);
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        rt.block_on(async move {
            let (client, mut eventloop) = AsyncClient::new(options, 1000);
            let _ = client.subscribe("edgeflow/#", QoS::AtLeastOnce).await;
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                let ev = tokio::time::timeout(Duration::from_millis(200), eventloop.poll()).await;
                match ev {
                    Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                        let topic = String::from_utf8_lossy(&p.topic).into_owned();
                        let Ok(v) = serde_json::from_slice::<Value>(&p.payload) else {
                            continue;
                        };
                        let window = v["window_start_ms"].as_u64().unwrap_or(0);
                        let mut r = r.lock().expect("lock");
                        r.messages += 1;
                        let slot = r.best.entry((topic, window)).or_insert(Value::Null);
                        if slot["ordering"].as_u64() <= v["ordering"].as_u64() {
                            *slot = v;
                        }
                    }
                    Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(200)).await,
                    _ => {}
                }
            }
        });
    });
    (received, thread, stop)
}

/// The retained messages under `edgeflow/`, by topic, read by a fresh
/// subscriber.
fn retained(port: u16) -> BTreeMap<String, Value> {
    let (received, thread, stop) = subscribe(port, "edgeflow-test-retained");
    let mut last = 0;
    // Until no more arrive for a second.
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let n = received.lock().expect("lock").messages;
        if n == last && n > 0 {
            break;
        }
        last = n;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    thread.join().expect("subscriber");
    let r = received.lock().expect("lock");
    let mut out: BTreeMap<String, Value> = BTreeMap::new();
    for ((topic, _), v) in &r.best {
        out.insert(topic.clone(), v.clone());
    }
    out
}

/// Per (topic, window): the fields of every final row of the replay, as
/// the sink's payload carries them.
fn expected(topo: &Topology, input: &Path) -> BTreeMap<(String, u64), BTreeMap<String, Value>> {
    let table = replay_table(topo, input);
    let mut out = BTreeMap::new();
    for kind in Kind::ALL {
        for (key, value) in table.rows(kind) {
            let f = fields(&topo.reference, topo.time.size_ms, key, value).expect("fields");
            let id = f[0].1.text().to_owned();
            let topic = format!(
                "edgeflow/{}/{}/{}",
                topo.node_id,
                kind.as_str(),
                topic_level(&id)
            );
            let row = f
                .iter()
                .map(|(n, v)| {
                    let j = match v {
                        edgeflow::aggregate::Field::Text(t) => Value::from(t.as_str()),
                        edgeflow::aggregate::Field::Number(n) => {
                            serde_json::from_str(n).expect("number")
                        }
                        edgeflow::aggregate::Field::Empty => Value::Null,
                    };
                    ((*n).to_owned(), j)
                })
                .collect();
            out.insert((topic, key.window), row);
        }
    }
    out
}

/// Every expected row was received with exactly its fields.
fn assert_received(
    got: &BTreeMap<(String, u64), Value>,
    want: &BTreeMap<(String, u64), BTreeMap<String, Value>>,
) {
    let mut missing = Vec::new();
    let mut differ = Vec::new();
    for (k, fields) in want {
        match got.get(k) {
            None => missing.push(k.clone()),
            Some(v) => {
                if fields.iter().any(|(n, f)| v[n] != *f) {
                    differ.push(format!("{k:?}: got {v}, want {fields:?}"));
                }
            }
        }
    }
    assert!(
        missing.is_empty() && differ.is_empty(),
        "{} of {} rows missing (first {:?}), {} differ (first {:?})",
        missing.len(),
        want.len(),
        missing.first(),
        differ.len(),
        differ.first()
    );
}

/// Retained messages are each topic's latest final window.
fn assert_retained(
    got: &BTreeMap<String, Value>,
    want: &BTreeMap<(String, u64), BTreeMap<String, Value>>,
) {
    let mut latest: BTreeMap<&str, (u64, &BTreeMap<String, Value>)> = BTreeMap::new();
    for ((topic, window), fields) in want {
        let slot = latest.entry(topic.as_str()).or_insert((*window, fields));
        if *window >= slot.0 {
            *slot = (*window, fields);
        }
    }
    assert_eq!(got.len(), latest.len(), "one retained message per key");
    for (topic, (window, fields)) in latest {
        let v = &got[topic];
        assert_eq!(v["window_start_ms"].as_u64(), Some(window), "{topic}");
        assert!(
            fields.iter().all(|(n, f)| v[n] == *f),
            "{topic}: {v} vs {fields:?}"
        );
        assert!(
            matches!(v["status"].as_str(), Some("final" | "correction")),
            "{v}"
        );
    }
}

fn sink_text(port: u16, extra: &str) -> String {
    format!("[[sink]]\ntype = \"mqtt\"\nbroker = \"mqtt://127.0.0.1:{port}\"\n{extra}")
}

#[test]
fn a_subscriber_receives_every_final_aggregate_and_retained_is_the_latest() {
    let _deadline = crate::support::deadline();
    let Some(bin) = mosquitto("mqtt::a_subscriber_receives_every_final_aggregate") else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let certs = make_certs(dir, &["localhost".into()]).expect("certs");
    let mport = free_port();
    let mut broker = start_broker(&bin, dir, mport);
    let (received, sub, stop) = subscribe(mport, "edgeflow-test-all");
    let text = node_text(free_port(), &sink_text(mport, "max_messages = 500\n"));
    std::fs::write(dir.join("edge.toml"), text).expect("write");
    let topo = Topology::load(&dir.join("edge.toml")).expect("valid");
    let input = data("sumo-public/telemetry.jsonl");
    let want = expected(&topo, &input);
    let node = edgeflow::node::start(topo, 1).expect("start");
    send(node.addr, &certs.ca, &input, None);
    let status = node.sinks[0].1.clone();
    node.shutdown().expect("stop");
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sub.join().expect("subscriber");
    assert_received(&received.lock().expect("lock").best, &want);
    assert_retained(&retained(mport), &want);
    let acked = status
        .acknowledged
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(acked >= want.len() as u64, "{acked} acknowledged");
    broker.terminate();
    broker.finish(Duration::from_secs(10));
}

#[test]
fn a_broker_restart_and_node_sigkills_lose_nothing() {
    let _deadline = crate::support::deadline();
    let Some(bin) = mosquitto("mqtt::a_broker_restart_and_node_sigkills_lose_nothing") else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let certs = make_certs(dir, &["localhost".into(), "127.0.0.1".into()]).expect("certs");
    let (mport, port) = (free_port(), free_port());
    let mut broker = start_broker(&bin, dir, mport);
    let (received, sub, stop) = subscribe(mport, "edgeflow-test-restarts");
    std::thread::sleep(Duration::from_millis(500));
    let text = node_text(
        port,
        &sink_text(mport, "max_messages = 200\ntimeout = \"2s\"\n"),
    );
    std::fs::write(dir.join("edge.toml"), text).expect("write");
    let topo = Topology::load(&dir.join("edge.toml")).expect("valid");
    let input = data("sumo-public/telemetry.jsonl");
    let want = expected(&topo, &input);
    let mut node = spawn(dir);
    let sender = {
        let (ca, input) = (certs.ca.clone(), input.clone());
        let addr = format!("127.0.0.1:{port}").parse().expect("addr");
        std::thread::spawn(move || send(addr, &ca, &input, Some(40.0)))
    };
    std::thread::sleep(Duration::from_secs(3));
    // The broker stops (saving its sessions) and comes back.
    broker.terminate();
    broker.finish(Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(2));
    broker = start_broker(&bin, dir, mport);
    std::thread::sleep(Duration::from_secs(2));
    node.kill();
    let first = node.stderr();
    assert!(
        first.contains("mqtt sink mqtt:") && first.contains("retrying with backoff"),
        "the node saw no broker outage: {first}"
    );
    node = spawn(dir);
    sender.join().expect("sender");
    node.terminate();
    let (status, _, stderr) = node.finish(Duration::from_secs(60));
    assert!(status.success(), "{status}: {stderr}");
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sub.join().expect("subscriber");
    assert_received(&received.lock().expect("lock").best, &want);
    assert_retained(&retained(mport), &want);
    eprintln!(
        "mqtt restart test: {} messages received for {} final rows; node: {}",
        received.lock().expect("lock").messages,
        want.len(),
        stderr
            .lines()
            .filter(|l| l.contains("mqtt"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    assert!(stderr.contains("sink mqtt:"), "{stderr}");
    broker.terminate();
    broker.finish(Duration::from_secs(10));
}
