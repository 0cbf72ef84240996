//! docs/PROTOCOL.md is enough to write a client in another language: an
//! independent client (Python, aioquic: tests/interop/client.py) sends the
//! recording over the ingest protocol and follows congestion over the
//! subscription protocol; its state equals the files sink.
//!
//! Needs Python with `aioquic`: `EDGEFLOW_PYTHON` (default `python3`).
//! The README's test command, `scripts/test`, installs it and sets
//! `EDGEFLOW_REQUIRE_INTEROP=1`, which turns a missing one into a failure;
//! under a plain `cargo test` without it the test prints that it is skipped.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::ingest::TOKEN;
use crate::subscribe::{assert_json_rows, csv_rows, node, CITY};
use crate::support::{data, root, skip};

fn python() -> String {
    std::env::var("EDGEFLOW_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn python_with_aioquic() -> bool {
    Command::new(python())
        .args(["-c", "import aioquic"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn an_independent_aioquic_client_speaks_both_protocols() {
    if !python_with_aioquic() {
        assert!(
            std::env::var_os("EDGEFLOW_REQUIRE_INTEROP").is_none(),
            "{} with aioquic is required here (scripts/test installs it)",
            python()
        );
        skip(
            "interop",
            &format!("{} has no aioquic (scripts/test installs it)", python()),
        );
        return;
    }
    let mut node = node("[privacy]\nmin_vehicles = 1\n");
    let script = root("tests/interop/client.py");
    let (host, port) = ("127.0.0.1".to_owned(), node.addr().port().to_string());
    let ca = node.ca.display().to_string();
    let ready = node.dir.path().join("subscribed");
    let subscriber = Command::new(python())
        .arg(&script)
        .args(["subscribe", &host, &port, &ca, CITY, "congestion", "final"])
        .arg(&ready)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready.exists() {
        assert!(
            Instant::now() < deadline,
            "the Python subscriber got no snapshot"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let sent = Command::new(python())
        .arg(&script)
        .args(["ingest", &host, &port, &ca, TOKEN, "py-sender"])
        .arg(data("sumo-public/telemetry.jsonl"))
        .arg("500")
        .output()
        .expect("python3 runs");
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&sent.stdout).expect("the client's JSON report");
    assert_eq!(report["accepted"], 11_486, "{report}");
    assert_eq!(report["rejected"], 0);
    node.stop();

    let out = subscriber.wait_with_output().expect("subscriber ends");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = csv_rows(&node.sink("congestion.csv"));
    let mut got = std::collections::BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("json line");
        if v.get("progress").is_some() {
            continue;
        }
        let key = (
            v["key"].as_str().expect("key").to_owned(),
            v["window_start_ms"].as_u64().expect("window"),
        );
        got.insert(key, v["value"].clone());
    }
    assert_json_rows(&got, &want, "the Python subscriber against the sink");
}
