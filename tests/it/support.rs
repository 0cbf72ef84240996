//! Shared helpers: run a replay in-process, read CSV, compare numbers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgeflow::aggregate::Kind;
use edgeflow::output::FinalTable;
use edgeflow::reference::Reference;
use edgeflow::runtime::{Input, RunOptions, RunSummary};
use edgeflow::time::TimeSpec;

/// The directory of test fixtures.
pub fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(rel)
}

/// The repository root.
pub fn root(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// A watchdog for a test that can hang (a node, a network peer, a child
/// process): libtest has no timeouts, so if the guard is still alive after
/// the limit, the test binary says which test ran over and exits with a
/// failure. The limit is `EDGEFLOW_TEST_DEADLINE_S` (default 300 s: about
/// ten times the slowest test on a loaded 2-core machine).
pub struct Deadline(Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>);

pub fn deadline() -> Deadline {
    let limit = std::env::var("EDGEFLOW_TEST_DEADLINE_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(300), Duration::from_secs);
    let test = std::thread::current().name().unwrap_or("a test").to_owned();
    let done = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
    let watched = done.clone();
    std::thread::spawn(move || {
        let (lock, cvar) = &*watched;
        let Ok(guard) = lock.lock() else { return };
        let Ok((guard, _)) = cvar.wait_timeout_while(guard, limit, |done| !*done) else {
            return;
        };
        if !*guard {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "DEADLINE: {test} still running after {limit:?} (EDGEFLOW_TEST_DEADLINE_S); failing the run"
            );
            std::process::exit(101);
        }
    });
    Deadline(done)
}

impl Drop for Deadline {
    fn drop(&mut self) {
        let (lock, cvar) = &*self.0;
        if let Ok(mut done) = lock.lock() {
            *done = true;
        }
        cvar.notify_all();
    }
}

/// Asserts two tables have the same keys; names up to five missing and
/// five extra ones.
pub fn assert_same_keys<K: Ord + std::fmt::Debug, A, B>(
    got: &BTreeMap<K, A>,
    want: &BTreeMap<K, B>,
    what: &str,
) {
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
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: missing {missing:?}, extra {extra:?} ({} rows against {})",
        got.len(),
        want.len()
    );
}

/// Says on the terminal that `test` did not run and why. Written to the
/// process's stderr directly: libtest captures `eprintln!` of passing tests,
/// and a skip must be seen.
pub fn skip(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

/// Replays `input` and returns the CSV texts and the summary.
pub fn replay(
    input: Vec<u8>,
    reference: &Arc<Reference>,
    spec: TimeSpec,
    options: RunOptions,
) -> (String, String, RunSummary) {
    let mut table = FinalTable::default();
    let summary = edgeflow::runtime::run(
        Input::JsonLines(Box::new(std::io::Cursor::new(input))),
        reference.clone(),
        spec,
        options,
        |batch| table.apply(batch),
        |_| {},
    )
    .expect("replay runs");
    (
        table.csv(Kind::Congestion, reference, spec.size_ms),
        table.csv(Kind::Charging, reference, spec.size_ms),
        summary,
    )
}

/// CSV rows by (key, window start).
pub type Rows = BTreeMap<(String, u64), Vec<String>>;

/// CSV rows keyed by (key, window_start), with the header.
pub fn rows(csv: &str) -> (Vec<String>, Rows) {
    let mut lines = csv.lines();
    let header = lines
        .next()
        .unwrap_or_default()
        .split(',')
        .map(str::to_owned)
        .collect();
    let mut out = BTreeMap::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let f: Vec<String> = line.split(',').map(str::to_owned).collect();
        let window = f[1].parse().expect("window start");
        assert!(
            out.insert((f[0].clone(), window), f).is_none(),
            "duplicate row {line}"
        );
    }
    (header, out)
}

/// Whether two printed numbers agree: integers (and every other field)
/// exactly; rounded decimals up to one unit in the last printed digit of
/// `expected` (TELEMETRY.md §4 grants that to rounding only).
pub fn close(actual: &str, expected: &str) -> bool {
    if actual == expected {
        return true;
    }
    let Some((_, digits)) = expected.split_once('.') else {
        return false; // an integer or a word: exact
    };
    let (Ok(a), Ok(e)) = (actual.parse::<f64>(), expected.parse::<f64>()) else {
        return false;
    };
    (a - e).abs() <= 10f64.powi(-(digits.len() as i32)) * 1.000_001
}

/// The (segment id, window start) pairs that map matching changes in the
/// sumo-public recording. Its reports without `segment_id` are in junctions
/// or charging (its README), and its expected files count them nowhere;
/// the matcher agrees for all but a few reports that lie within centimetres
/// of a segment's end (positions have 6 decimals, ~0.1 m). Rows of these
/// pairs are not compared with the expected files; all others are, exactly.
pub fn map_matched_pairs() -> &'static BTreeSet<(String, u64)> {
    static PAIRS: OnceLock<BTreeSet<(String, u64)>> = OnceLock::new();
    PAIRS.get_or_init(|| {
        let topo = edgeflow::topology::Topology::load(&root("topologies/karhula.toml"))
            .expect("valid topology");
        let text = std::fs::read_to_string(data("sumo-public/telemetry.jsonl")).expect("fixture");
        let mut pairs = BTreeSet::new();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("json");
            if v["type"] != "vehicle" || v.get("segment_id").is_some() {
                continue;
            }
            if v["ev"]["charging"].as_bool() == Some(true) {
                continue;
            }
            let (lon, lat) = (
                v["lon"].as_f64().expect("lon"),
                v["lat"].as_f64().expect("lat"),
            );
            if let Ok(i) = topo
                .reference
                .matcher
                .locate(lon, lat, v["heading_deg"].as_f64())
            {
                let ts = v["ts_ms"].as_u64().expect("ts");
                pairs.insert((
                    topo.reference.roads[i as usize].id.clone(),
                    ts - ts % 60_000,
                ));
            }
        }
        assert!(
            pairs.len() <= 3,
            "map matching placed junction reports: {pairs:?}"
        );
        pairs
    })
}

/// Asserts two CSV texts hold the same rows, integers exact, rounded
/// decimals within one unit in the last digit. Returns the number of rows
/// of `actual`. Congestion rows of
/// [`map_matched_pairs`] are skipped.
pub fn assert_same_rows(actual: &str, expected: &str, what: &str) -> usize {
    let (ha, mut a) = rows(actual);
    // The rows the output holds.
    let n = a.len();
    let (he, mut e) = rows(expected);
    if what == "congestion" {
        for k in map_matched_pairs() {
            a.remove(k);
            e.remove(k);
        }
    }
    assert_eq!(ha, he, "{what}: header");
    let missing: Vec<_> = e.keys().filter(|k| !a.contains_key(*k)).take(5).collect();
    let extra: Vec<_> = a.keys().filter(|k| !e.contains_key(*k)).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: missing rows {missing:?}, extra rows {extra:?}"
    );
    for (k, ev) in &e {
        let av = &a[k];
        assert_eq!(
            av.len(),
            ev.len(),
            "{what}: row {k:?} has {} fields, expected {}",
            av.len(),
            ev.len()
        );
        for (i, (x, y)) in av.iter().zip(ev).enumerate() {
            assert!(
                close(x, y),
                "{what}: row {k:?} field {}: got {x}, expected {y}",
                he[i]
            );
        }
    }
    n
}

/// Asserts both CSV texts match the sumo-public expected files.
pub fn assert_expected(congestion: &str, charging: &str) {
    let expected =
        std::fs::read_to_string(data("sumo-public/expected-congestion.csv")).expect("fixture");
    // The expected table's 1,275 rows, and one (segment, window) that only
    // the node's map matching fills (see `map_matched_pairs`).
    assert_eq!(assert_same_rows(congestion, &expected, "congestion"), 1_276);
    let expected =
        std::fs::read_to_string(data("sumo-public/expected-charging.csv")).expect("fixture");
    assert_eq!(assert_same_rows(charging, &expected, "charging"), 40);
}

/// A child process of the binary whose stdout and stderr are collected as
/// they come, killed when dropped (a failing test leaves nothing behind).
pub struct Proc {
    what: String,
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Proc {
    pub fn spawn(what: &str, mut cmd: Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
        let (stdout, stderr) = (Arc::default(), Arc::default());
        let collect = |from: Box<dyn std::io::Read + Send>, into: &Arc<Mutex<String>>| {
            let into = Arc::clone(into);
            std::thread::spawn(move || {
                use std::io::Read;
                let mut from = from;
                let mut buf = [0u8; 8192];
                while let Ok(n) = from.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    into.lock()
                        .expect("output lock")
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            })
        };
        let readers = vec![
            collect(Box::new(child.stdout.take().expect("stdout")), &stdout),
            collect(Box::new(child.stderr.take().expect("stderr")), &stderr),
        ];
        Proc {
            what: what.to_owned(),
            child,
            stdout,
            stderr,
            readers,
        }
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().expect("output lock").clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("output lock").clone()
    }

    /// Polls until `ready(stdout, stderr)` holds; fails (and kills the
    /// process) if it exits first or `within` passes.
    pub fn wait_until(
        &mut self,
        within: Duration,
        event: &str,
        ready: impl Fn(&str, &str) -> bool,
    ) {
        let deadline = Instant::now() + within;
        loop {
            if ready(&self.stdout(), &self.stderr()) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                self.join_readers();
                assert!(
                    ready(&self.stdout(), &self.stderr()),
                    "{}: exited ({status}) before {event}\nstdout:\n{}\nstderr:\n{}",
                    self.what,
                    self.stdout(),
                    self.stderr()
                );
                return;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "{}: no {event} within {within:?}\nstdout:\n{}\nstderr:\n{}",
                    self.what,
                    self.stdout(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the process to exit; kills it and fails after `within`.
    /// Returns its status, stdout and stderr.
    pub fn finish(&mut self, within: Duration) -> (ExitStatus, String, String) {
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                self.join_readers();
                panic!(
                    "{}: still running after {within:?} (killed)\nstdout:\n{}\nstderr:\n{}",
                    self.what,
                    self.stdout(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        self.join_readers();
        (status, self.stdout(), self.stderr())
    }

    fn join_readers(&mut self) {
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "{}: SIGTERM not delivered", self.what);
    }

    /// Sends SIGINT (Ctrl-C).
    pub fn interrupt(&self) {
        let status = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "{}: SIGINT not delivered", self.what);
    }

    /// Sends SIGKILL and reaps the process: a crash, nothing flushed.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.join_readers();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The number right before `what` in `text` ("... 11486 records accepted").
pub fn number_before(text: &str, what: &str) -> u64 {
    let at = text
        .find(what)
        .unwrap_or_else(|| panic!("no {what:?} in: {text}"));
    text[..at]
        .split_whitespace()
        .last()
        .and_then(|n| n.trim_start_matches('(').parse().ok())
        .unwrap_or_else(|| panic!("no number before {what:?} in: {text}"))
}

/// The fleet token of the Karhula test topologies.
pub const FLEET_TOKEN: &str = "karhula-fleet-secret";

/// Sends `file` to a node as sender `sender` of the fleet of
/// [`FLEET_TOKEN`] (CBOR, 200-line batches, 4 in flight, reconnecting),
/// paced at `pace` times event time if given; asserts nothing was
/// rejected and returns the records accepted.
pub fn send_as(
    addr: std::net::SocketAddr,
    ca: &Path,
    file: &Path,
    sender: &str,
    pace: Option<f64>,
) -> u64 {
    let opts = edgeflow::ingest::client::SendOptions {
        sender: sender.into(),
        encoding: edgeflow::log::Encoding::Cbor,
        batch_lines: 200,
        window: 4,
        max_reconnects: 1_000,
        pace,
        ..edgeflow::ingest::client::SendOptions::new(addr, "localhost", ca.to_owned(), FLEET_TOKEN)
    };
    let report = crate::ingest::send_file(&opts, file);
    assert_eq!(report.rejected, 0, "{:?}", report.rejections);
    report.accepted
}

/// [`send_as`] sender `cars-1`.
pub fn send(addr: std::net::SocketAddr, ca: &Path, file: &Path, pace: Option<f64>) -> u64 {
    send_as(addr, ca, file, "cars-1", pace)
}

/// A loopback UDP port free a moment ago (nodes restarted on it keep it).
pub fn free_port() -> u16 {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket.local_addr().expect("addr").port()
}

/// The final table a replay of `input` (a recording or a log) computes
/// with `topo`'s reference data and windows, one worker.
pub fn replay_table(topo: &edgeflow::topology::Topology, input: &Path) -> FinalTable {
    let reference = Arc::new(topo.reference.clone());
    let mut table = FinalTable::default();
    let (replay_input, _) = Input::open(input).expect("input");
    edgeflow::runtime::run(
        replay_input,
        reference,
        topo.time,
        RunOptions::new(1),
        |b| table.apply(b),
        |_| {},
    )
    .expect("replay");
    table
}
