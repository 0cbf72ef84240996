//! A live site of two processes (issue 16): `edgeflow edge --process I`
//! with a `[cluster]`, devices sending to both. The files sink of process
//! 0 equals one process with one worker replaying the recording, byte for
//! byte; so it does after one process is killed mid-send and the site is
//! restarted as documented (the survivor exits 3, both restart, the
//! senders resend what was not acknowledged). A process whose devices are
//! quiet holds no window back: it follows the site's clock. A process
//! stopped alone leaves after `[cluster] stop_wait`, losing nothing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::{data, free_port, root, Proc};

const TOKEN: &str = "site-fleet-secret";
const T: Duration = Duration::from_secs(90);

/// A site of two processes in one directory: process `i` has its topology
/// `p{i}.toml`, its log `log{i}`, its files sink `out{i}`.
struct Site {
    dir: tempfile::TempDir,
    ca: PathBuf,
    ingest: [std::net::SocketAddr; 2],
}

impl Site {
    fn new() -> Site {
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = edgeflow::node::make_certs(dir.path(), &["localhost".into()]).expect("certs");
        let ingest = [0, 1].map(|_| {
            format!("127.0.0.1:{}", free_port())
                .parse()
                .expect("address")
        });
        // Timely's own connections: TCP.
        let timely = [0, 1].map(|_| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").to_string()
        });
        let hash = {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(TOKEN.as_bytes()))
        };
        let k = root("topologies/karhula");
        for (i, listen) in ingest.iter().enumerate() {
            let text = format!(
                "[node]\nid = \"site\"\n[reference]\nroads = \"{roads}\"\nchargers = \"{chargers}\"\nzones = \"{zones}\"\n\
                 [windows]\nsize = \"60s\"\nallowed_lateness = \"5s\"\nretention = \"15m\"\n\
                 [zones]\nh3_resolution = 8\nlow_soc_pct = 20\n\
                 [ingest]\nlisten = \"{listen}\"\ncert = \"server.pem\"\nkey = \"server.key\"\n\
                 [log]\ndir = \"log{i}\"\nsegment_bytes = 131072\n\
                 [[fleet]]\nname = \"cars\"\ntoken_sha256 = \"{hash}\"\n\
                 [[sink]]\ntype = \"files\"\ndir = \"out{i}\"\n\
                 [cluster]\nprocesses = [\"{t0}\", \"{t1}\"]\nstop_wait = \"2s\"\n",
                roads = k.join("roads.geojson").display(),
                chargers = k.join("chargers.geojson").display(),
                zones = k.join("zones.geojson").display(),
                t0 = timely[0],
                t1 = timely[1],
            );
            std::fs::write(dir.path().join(format!("p{i}.toml")), text).expect("topology");
        }
        Site {
            dir,
            ca: certs.ca,
            ingest,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Starts both processes, 2 workers each; returns once both listen
    /// (each listens once the whole site is connected).
    fn start(&self) -> [Proc; 2] {
        let mut procs = [0, 1].map(|i| {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_edgeflow"));
            cmd.args(["edge", "--workers", "2", "--no-watch", "--topology"])
                .arg(self.path(&format!("p{i}.toml")))
                .env("EDGEFLOW_PROCESS", format!("edgeflow-edge-{i}"));
            Proc::spawn(&format!("edge, process {i}"), cmd)
        });
        for p in &mut procs {
            p.wait_until(T, "listening", |_, err| err.contains("listening on"));
        }
        procs
    }

    /// `edgeflow send` of `file` to process `i`, paced so that a kill lands
    /// mid-send.
    fn send(&self, i: usize, file: &Path) -> Proc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_edgeflow"));
        cmd.args([
            "send",
            "--to",
            &self.ingest[i].to_string(),
            "--token",
            TOKEN,
        ])
        .args([
            "--server-name",
            "localhost",
            "--sender",
            &format!("cars-{i}"),
        ])
        .arg("--ca")
        .arg(&self.ca)
        .args(["--batch-lines", "20", "--window", "2", "--speed", "300"])
        .arg(file);
        Proc::spawn(&format!("send to process {i}"), cmd)
    }

    fn log_bytes(&self) -> u64 {
        (0..2)
            .filter_map(|i| std::fs::read_dir(self.path(&format!("log{i}"))).ok())
            .flatten()
            .filter_map(Result::ok)
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum()
    }
}

/// The recording split by device (a vehicle's or charger's reports all in
/// one part), as devices would spread over a site's servers.
fn split_by_device(dir: &Path) -> [PathBuf; 2] {
    let text = std::fs::read_to_string(data("sumo-public/telemetry.jsonl")).expect("recording");
    let mut parts = [String::new(), String::new()];
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("json");
        let device = (v.get("vehicle_id").or_else(|| v.get("charger_id")))
            .and_then(|d| d.as_str())
            .unwrap_or_default();
        let h = device
            .bytes()
            .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
        parts[(h % 2) as usize].push_str(&format!("{line}\n"));
    }
    let paths = [dir.join("part-0.jsonl"), dir.join("part-1.jsonl")];
    for (p, text) in paths.iter().zip(&parts) {
        std::fs::write(p, text).expect("part");
    }
    paths
}

/// The files of one process with one worker replaying the whole recording.
fn one_process(site: &Site) -> PathBuf {
    let out = site.path("single");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_edgeflow"));
    cmd.args(["replay", "--workers", "1", "--topology"])
        .arg(site.path("p0.toml"))
        .arg(data("sumo-public/telemetry.jsonl"))
        .arg("--out")
        .arg(&out);
    let (status, _, stderr) = Proc::spawn("replay, one process", cmd).finish(T);
    assert!(status.success(), "{stderr}");
    out
}

fn assert_same_files(got: &Path, want: &Path, what: &str) {
    for file in ["congestion.csv", "charging.csv", "zones.csv"] {
        let w = std::fs::read(want.join(file)).expect(file);
        let g = std::fs::read(got.join(file)).unwrap_or_default();
        assert!(w.len() > 100, "{file}");
        assert!(
            g == w,
            "{file}: {what} differs from one process with one worker ({} against {} bytes)",
            g.len(),
            w.len()
        );
    }
}

fn stop(procs: [Proc; 2]) {
    for p in &procs {
        p.terminate();
    }
    for mut p in procs {
        let (status, _, stderr) = p.finish(T);
        assert!(status.success(), "{stderr}");
    }
}

#[test]
fn a_site_of_two_processes_counts_as_one_process_even_after_losing_one() {
    let _deadline = crate::support::deadline();
    let site = Site::new();
    let single = one_process(&site);
    let parts = split_by_device(site.dir.path());

    let [p0, mut p1] = site.start();
    let mut senders = [0, 1].map(|i| site.send(i, &parts[i]));
    // Kill process 1 once part of the telemetry is durable.
    let deadline = std::time::Instant::now() + T;
    while site.log_bytes() < 300_000 {
        assert!(std::time::Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    p1.kill();
    let mut p0 = p0;
    let (status, _, stderr) = p0.finish(T);
    assert_eq!(status.code(), Some(3), "the survivor stops: {stderr}");
    assert!(stderr.contains("restart every process"), "{stderr}");
    let logged = site.log_bytes();
    assert!(
        logged < 1_800_000,
        "killed mid-send ({logged} bytes logged)"
    );

    // The documented procedure: restart every process of the site.
    let procs = site.start();
    for (i, s) in senders.iter_mut().enumerate() {
        let (status, _, stderr) = s.finish(T);
        assert!(status.success(), "sender {i}: {stderr}");
        let want = if i == 0 {
            "5793 records accepted"
        } else {
            "5693 records accepted"
        };
        // All acknowledged, or durable with the answer lost in the kill
        // (the resend is then a duplicate): the files say the rest.
        assert!(
            stderr.contains(want) || stderr.contains("durable but their answer was lost"),
            "sender {i}: {stderr}"
        );
        assert!(
            !stderr.contains(" 0 reconnects"),
            "sender {i} reconnected: {stderr}"
        );
    }
    stop(procs);
    assert_same_files(
        &site.path("out0"),
        &single,
        "2 processes x 2 workers, one lost and the site restarted",
    );
    assert!(
        !site.path("out1").exists(),
        "only process 0 writes the files sink"
    );
}

#[test]
fn a_quiet_process_follows_the_site_clock_and_holds_no_window_back() {
    let _deadline = crate::support::deadline();
    let site = Site::new();
    let procs = site.start();
    // Every device sends to process 0; process 1 hears from none.
    let mut sender = site.send(0, &data("sumo-public/telemetry.jsonl"));
    let (status, _, stderr) = sender.finish(T);
    assert!(status.success(), "{stderr}");
    // Windows become final while both run: process 1's clock ticks let
    // the site's frontier pass.
    let rows = || {
        std::fs::read_to_string(site.path("out0/congestion.csv"))
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + T;
    while rows() < 700 {
        assert!(
            std::time::Instant::now() < deadline,
            "windows stay open: {} congestion rows written while running",
            rows()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let ticks = std::fs::read_dir(site.path("log1"))
        .expect("log1")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum::<u64>();
    assert!(ticks > 0, "process 1 logged clock ticks");
    stop(procs);
    let single = one_process(&site);
    assert_same_files(&site.path("out0"), &single, "a site with a quiet process");
}

/// SIGTERM to one process while the other runs on: it waits `stop_wait`
/// (2 s here) for the rest of the site, then leaves with exit 0 and says
/// why; the other loses its peer (exit 3); restarted together, the site's
/// files equal one process's.
#[test]
fn a_process_stopped_alone_leaves_after_its_stop_wait_and_the_site_restarts() {
    let _deadline = crate::support::deadline();
    let site = Site::new();
    let parts = split_by_device(site.dir.path());
    let [mut p0, mut p1] = site.start();
    for (i, part) in parts.iter().enumerate() {
        let (status, _, stderr) = site.send(i, part).finish(T);
        assert!(status.success(), "sender {i}: {stderr}");
    }
    p1.terminate();
    let asked = std::time::Instant::now();
    let (status, _, stderr) = p1.finish(T);
    let took = asked.elapsed();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("process 1 of the site stopped alone")
            && stderr.contains("restart every process of the site"),
        "{stderr}"
    );
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(30),
        "left after its stop_wait: {took:?}"
    );
    let (status, _, stderr) = p0.finish(T);
    assert_eq!(status.code(), Some(3), "the other stops: {stderr}");

    let procs = site.start();
    stop(procs);
    let single = one_process(&site);
    assert_same_files(
        &site.path("out0"),
        &single,
        "a site restarted after one process was stopped alone",
    );
}
