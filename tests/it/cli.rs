//! The `edgeflow` binary: exit codes, messages, and replay of gzip input.

use std::io::Write;
use std::process::Command;

use crate::support::{data, root};

fn edgeflow() -> Command {
    Command::new(env!("CARGO_BIN_EXE_edgeflow"))
}

#[test]
fn validate_exits_zero_only_when_valid() {
    let ok = edgeflow()
        .arg("validate")
        .arg(root("topologies/karhula.toml"))
        .output()
        .expect("runs");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("517 road segments"));

    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[node]\nid = \"x\"\n[reference]\nroads = \"no.geojson\"\nchargers = \"no.geojson\"\n[windows]\n").expect("write");
    let out = edgeflow().arg("validate").arg(&bad).output().expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("cannot read").count(), 2, "{text}");
}

#[test]
fn replay_of_gzip_input_writes_both_csv_files_and_a_summary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gz = dir.path().join("telemetry.jsonl.gz");
    let raw = std::fs::read(data("sumo-public/telemetry.jsonl")).expect("fixture");
    let mut enc = flate2::write::GzEncoder::new(
        std::fs::File::create(&gz).expect("create"),
        flate2::Compression::fast(),
    );
    enc.write_all(&raw).expect("compress");
    enc.finish().expect("finish");
    let out_dir = dir.path().join("out");
    let out = edgeflow()
        .args(["replay", "--topology"])
        .arg(root("topologies/karhula.toml"))
        .args(["--workers", "2"])
        .arg(&gz)
        .arg("--out")
        .arg(&out_dir)
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("replayed 11486 records"), "{stderr}");
    assert!(
        stderr.contains("unmatched 2417 (junction 1077, wrong_heading 3, charging 1337)"),
        "{stderr}"
    );
    let congestion = std::fs::read_to_string(out_dir.join("congestion.csv")).expect("written");
    let expected =
        std::fs::read_to_string(data("sumo-public/expected-congestion.csv")).expect("fixture");
    crate::support::assert_same_rows(&congestion, &expected, "congestion");
    assert!(out_dir.join("charging.csv").exists());
}

#[test]
fn replay_reports_a_missing_input_clearly() {
    let out = edgeflow()
        .args(["replay", "--topology"])
        .arg(root("topologies/karhula.toml"))
        .args(["/nonexistent/telemetry.jsonl", "--out", "/tmp/never"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot read /nonexistent/telemetry.jsonl"),
        "{stderr}"
    );
}
