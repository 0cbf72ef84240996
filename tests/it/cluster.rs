//! Cluster mode (issue 16): one dataflow across processes on timely's own
//! cluster communication. Devices split between two `replay` processes
//! (each reading only its devices' records, as devices would connect to
//! either server of a site) give the files of one process reading them
//! all, byte for byte, for 1 and 2 workers per process.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::{data, root, Proc};

/// `&str`s and paths as one argument list.
macro_rules! args {
    ($($a:expr),* $(,)?) => { &[$(std::ffi::OsStr::new(&$a)),*] };
}

/// Two TCP ports free now, for timely's connections.
fn two_ports() -> [String; 2] {
    let a = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let b = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    [a, b].map(|l| l.local_addr().expect("addr").to_string())
}

fn replay(args: &[&std::ffi::OsStr]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_edgeflow"));
    cmd.arg("replay").args(args);
    cmd
}

/// The recording's lines split by device (a vehicle or a charger), every
/// device's reports in one part, in their order.
fn split_by_device(dir: &Path) -> [std::path::PathBuf; 2] {
    let text = std::fs::read_to_string(data("sumo-public/telemetry.jsonl")).expect("recording");
    let mut parts = [String::new(), String::new()];
    for line in text.lines() {
        let device = serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| {
                (v.get("vehicle_id").or_else(|| v.get("charger_id")))
                    .and_then(|d| d.as_str())
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        let h = device
            .bytes()
            .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
        let part = &mut parts[(h % 2) as usize];
        part.push_str(line);
        part.push('\n');
    }
    assert!(
        parts.iter().all(|p| p.lines().count() > 4_000),
        "both parts have devices"
    );
    let paths = [dir.join("part-0.jsonl"), dir.join("part-1.jsonl")];
    for (p, text) in paths.iter().zip(&parts) {
        std::fs::write(p, text).expect("part");
    }
    paths
}

#[test]
fn devices_split_over_two_processes_give_the_bytes_of_one_process() {
    const T: Duration = Duration::from_secs(120);
    let _deadline = crate::support::deadline();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let topology = root("topologies/karhula.toml");
    let single = dir.join("single");
    let mut one = Proc::spawn(
        "replay, one process",
        replay(args![
            "--topology",
            topology,
            data("sumo-public/telemetry.jsonl"),
            "--out",
            single
        ]),
    );
    let (status, _, stderr) = one.finish(T);
    assert!(status.success(), "{stderr}");
    let parts = split_by_device(dir);
    for workers in ["1", "2"] {
        let peers = two_ports().join(",");
        let out = |i: usize| dir.join(format!("cluster-{workers}-{i}"));
        let process = |i: usize| {
            let cmd = replay(args![
                "--topology",
                topology,
                parts[i],
                "--out",
                out(i),
                "--workers",
                workers,
                "--process",
                i.to_string(),
                "--peers",
                peers
            ]);
            Proc::spawn(
                &format!("replay, process {i} of 2, {workers} worker(s)"),
                cmd,
            )
        };
        let mut second = process(1);
        let mut first = process(0);
        let (status, _, stderr) = first.finish(T);
        assert!(status.success(), "{stderr}");
        let (status, _, told) = second.finish(T);
        assert!(status.success(), "{told}");
        assert!(told.contains("process 0 writes the aggregates"), "{told}");
        assert!(!out(1).exists(), "only process 0 writes files");
        for file in ["congestion.csv", "charging.csv", "zones.csv"] {
            let want = std::fs::read(single.join(file)).expect(file);
            let got = std::fs::read(out(0).join(file)).expect(file);
            assert!(want.len() > 100, "{file}");
            assert!(
                got == want,
                "{file}: 2 processes x {workers} worker(s) differ from one process"
            );
        }
    }
}

#[test]
fn a_cluster_with_a_bad_process_index_or_address_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let topology = root("topologies/karhula.toml");
    for (process, peers, why) in [
        ("2", "127.0.0.1:1,127.0.0.1:2", "the index is 0 to 1"),
        ("0", "127.0.0.1:1", "at least 2 processes"),
        ("0", "127.0.0.1:1,localhost", "HOST:PORT"),
    ] {
        let cmd = replay(args![
            "--topology",
            topology,
            data("sumo-public/telemetry.jsonl"),
            "--out",
            tmp.path(),
            "--process",
            process,
            "--peers",
            peers
        ]);
        let (status, _, stderr) = Proc::spawn("replay", cmd).finish(Duration::from_secs(60));
        assert_eq!(status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(why), "{why} in {stderr}");
    }
}
