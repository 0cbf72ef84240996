//! `edgeflow demo`, the shop window: it follows its node through
//! subscriptions and shows the newest final window as three tables, each
//! equal to what the node wrote to its files (within the privacy
//! threshold, the ranking rule and the number of rows shown); it prints
//! the map's address with a token that signs in; Ctrl-C stops it cleanly.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::{data, number_before, root, Proc};

/// The default `[privacy] min_vehicles`: the demo's operator sees rows
/// over at least this many vehicles.
const K: u64 = 3;
/// The demo's default ranking: at least 20 m long, 5 samples.
const MIN_LENGTH_M: f64 = 20.0;
const MIN_SAMPLES: u64 = 5;

fn demo(out: &Path, extra: &[&str]) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_edgeflow"));
    cmd.arg("demo")
        .arg("--topology")
        .arg(root("topologies/karhula.toml"))
        .arg("--input")
        .arg(data("sumo-public/telemetry.jsonl"))
        .arg("--out")
        .arg(out)
        .args(["--map", "127.0.0.1:0"])
        .args(extra);
    Proc::spawn("edgeflow demo", cmd)
}

/// A CSV file as its header and rows of fields.
struct Csv {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Csv {
    fn read(path: &Path) -> Csv {
        let text = std::fs::read_to_string(path).expect("a CSV file");
        let mut lines = text.lines();
        let header = lines
            .next()
            .expect("header")
            .split(',')
            .map(str::to_owned)
            .collect();
        let rows = lines
            .filter(|l| !l.is_empty())
            .map(|l| l.split(',').map(str::to_owned).collect())
            .collect();
        Csv { header, rows }
    }

    fn col(&self, name: &str) -> usize {
        self.header.iter().position(|h| h == name).expect(name)
    }

    /// Rows of window `window`, as maps from field name to text.
    fn window(&self, window: u64) -> Vec<std::collections::BTreeMap<String, String>> {
        let w = self.col("window_start_ms");
        (self.rows.iter())
            .filter(|r| r[w] == window.to_string())
            .map(|r| self.header.iter().cloned().zip(r.iter().cloned()).collect())
            .collect()
    }
}

fn num(text: &str) -> f64 {
    text.parse()
        .unwrap_or_else(|_| panic!("{text:?} is not a number"))
}

/// The `HH:MM` of `ms` in local time, as the demo prints it.
fn local_hm(ms: u64) -> String {
    edgeflow::time::local_format(ms, "%H:%M")
}

/// The demo's final view: its header lines and its three tables (each a
/// list of lines, the heading first).
fn final_view(stdout: &str) -> Vec<Vec<String>> {
    let at = stdout
        .rfind("edgeflow demo  window ")
        .unwrap_or_else(|| panic!("no view: {stdout}"));
    let end = stdout[at..]
        .find("aggregates: ")
        .map_or(stdout.len(), |e| at + e);
    stdout[at..end]
        .trim_end()
        .split("\n\n")
        .map(|b| b.lines().map(str::to_owned).collect())
        .collect()
}

/// `demo` sends the recording over QUIC at `--speed` times event time,
/// follows its node through subscriptions, and at the end shows the
/// newest window: the slowest ranked segments, every charger, every named
/// zone, each row what the node wrote to its files as the operator may
/// see it. It exits 0, its files are the recording's aggregates, and its
/// log replays to the same files.
#[test]
fn demo_shows_the_newest_window_as_its_operator_sees_it_and_leaves_a_replayable_log() {
    const T: Duration = Duration::from_secs(90);
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("demo");
    let input = data("sumo-public/telemetry.jsonl");
    // Ten minutes of event time at 600x: about a second of sending; stdout
    // is not a terminal, so the demo stops once everything is sent.
    let (status, stdout, stderr) = demo(&out, &["--speed", "600"]).finish(T);
    assert!(status.success(), "{stderr}\n{stdout}");
    let records = std::fs::read_to_string(&input)
        .expect("fixture")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count() as u64;
    assert_eq!(
        number_before(&stderr, "records accepted"),
        records,
        "{stderr}"
    );
    assert_eq!(number_before(&stderr, "rejected ("), 0, "{stderr}");

    // Its files: the recording's aggregates (docs/TELEMETRY.md §3-4).
    let read = |name: &str| std::fs::read_to_string(out.join(name)).expect(name);
    crate::support::assert_expected(&read("congestion.csv"), &read("charging.csv"));
    assert!(
        stdout.contains(&format!(
            "aggregates: {0}/congestion.csv, charging.csv and zones.csv; the log (the recording): {0}/log",
            out.display()
        )),
        "{stdout}"
    );

    assert_view_is_the_files(&out, &stdout, "node 127.0.0.1:", records.div_ceil(100));

    // The log is a recording: replayed, it gives the same files.
    let again = tmp.path().join("replayed");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_edgeflow"));
    cmd.arg("replay")
        .arg("--topology")
        .arg(root("topologies/karhula.toml"))
        .arg(out.join("log"))
        .arg("--out")
        .arg(&again);
    let (status, _, stderr) = Proc::spawn("edgeflow replay", cmd).finish(T);
    assert!(status.success(), "{stderr}");
    for name in ["congestion.csv", "charging.csv", "zones.csv"] {
        assert!(
            std::fs::read_to_string(again.join(name)).expect(name) == read(name),
            "{name}: the replayed log differs from the demo's"
        );
    }
}

/// `demo --city`: two edges push to a central node, which serves the map
/// and is followed; the view is central's files, which are the
/// recording's aggregates.
#[test]
fn the_city_demo_follows_central() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("demo");
    let (status, stdout, stderr) =
        demo(&out, &["--city", "--speed", "600"]).finish(Duration::from_secs(90));
    assert!(status.success(), "{stderr}\n{stdout}");
    let read = |name: &str| std::fs::read_to_string(out.join(name)).expect(name);
    crate::support::assert_expected(&read("congestion.csv"), &read("charging.csv"));
    // Each edge sends its half in batches of 100.
    let batches: u64 = ["west.jsonl", "east.jsonl"]
        .iter()
        .map(|f| {
            let lines = std::fs::read_to_string(out.join(f))
                .expect(f)
                .lines()
                .count();
            (lines as u64).div_ceil(100)
        })
        .sum();
    assert_view_is_the_files(&out, &stdout, "central 127.0.0.1:", batches);
}

/// The demo's final view (in `stdout`) against the files in `out`: the
/// header (the newest window in local time, the map with its token, the
/// followed node, whose line starts with `node_line`, and the `batches`
/// acknowledged), and each table's rows.
fn assert_view_is_the_files(out: &Path, stdout: &str, node_line: &str, batches: u64) {
    let congestion = Csv::read(&out.join("congestion.csv"));
    let w = congestion.col("window_start_ms");
    let newest: u64 = (congestion.rows.iter())
        .map(|r| num(&r[w]) as u64)
        .max()
        .expect("rows");
    let view = final_view(stdout);
    let header = &view[0];
    assert!(
        header[0].starts_with(&format!(
            "edgeflow demo  window {}-{} ",
            local_hm(newest),
            local_hm(newest + 60_000)
        )),
        "{header:?}"
    );
    let map = header[1]
        .strip_prefix("map  http://127.0.0.1:")
        .expect("the map's line");
    let (_, token) = map
        .split_once("/#token=")
        .expect("a token in the map's address");
    assert!(
        token.len() == 32 && token.bytes().all(|b| b.is_ascii_hexdigit()),
        "{token}"
    );
    assert!(header[2].starts_with(node_line), "{header:?}");
    assert!(
        header[2].ends_with(&format!(
            "  {batches}/{batches} batches acknowledged; stopped"
        )),
        "{header:?}"
    );

    // The slowest segments: among the rows the operator may see (at least
    // K vehicles), those at least 20 m long with 5 samples, slowest first
    // (ties by id), ten at most. Cells from the right: samples, vehicles,
    // km/h, ratio, level; before them the segment id, and the street.
    let topology = edgeflow::topology::Topology::load(&root("topologies/karhula.toml"))
        .expect("the Karhula topology");
    let reference = &topology.reference;
    let visible: Vec<_> = (congestion.window(newest).into_iter())
        .filter(|r| num(&r["vehicles"]) as u64 >= K)
        .collect();
    let mut ranked: Vec<_> = (visible.iter())
        .filter(|r| {
            let road =
                &reference.roads[reference.road(&r["segment_id"]).expect("a segment") as usize];
            road.length() >= MIN_LENGTH_M && num(&r["samples"]) as u64 >= MIN_SAMPLES
        })
        .collect();
    ranked.sort_by(|a, b| {
        num(&a["speed_ratio"])
            .total_cmp(&num(&b["speed_ratio"]))
            .then_with(|| a["segment_id"].cmp(&b["segment_id"]))
    });
    assert!(
        ranked.len() >= 3,
        "too few ranked segments to check: {}",
        ranked.len()
    );
    assert!(
        ranked.len() < visible.len(),
        "the rule must leave out some segment the privacy threshold lets through"
    );
    let segments = &view[1];
    assert_eq!(
        segments[0],
        format!(
            "slowest segments: {} of {} ranked (at least 20 m long, 5 samples)",
            ranked.len(),
            visible.len()
        )
    );
    let heading: Vec<&str> = segments[1].split_whitespace().collect();
    assert_eq!(
        heading,
        ["street", "segment", "samples", "vehicles", "km/h", "ratio", "level"]
    );
    let shown: Vec<Vec<String>> = (segments[2..].iter())
        .map(|line| {
            let cells: Vec<&str> = line.split_whitespace().collect();
            let n = cells.len();
            assert!(n >= 7, "{line:?}");
            let mut row = vec![cells[..n - 6].join(" ")];
            row.extend(cells[n - 6..].iter().map(|c| (*c).to_owned()));
            row
        })
        .collect();
    let want: Vec<Vec<String>> = (ranked.iter().take(10))
        .map(|r| {
            let road =
                &reference.roads[reference.road(&r["segment_id"]).expect("a segment") as usize];
            vec![
                road.name.clone().unwrap_or_else(|| "-".into()),
                r["segment_id"].clone(),
                r["samples"].clone(),
                r["vehicles"].clone(),
                format!("{:.0}", num(&r["mean_speed_mps"]) * 3.6),
                format!("{:.2}", num(&r["speed_ratio"])),
                r["level"].clone(),
            ]
        })
        .collect();
    assert_eq!(shown, want, "{segments:#?}");

    // Every charger of the window (no privacy threshold: no vehicles).
    let charging = Csv::read(&out.join("charging.csv"));
    let want: Vec<Vec<String>> = (charging.window(newest).iter())
        .map(|r| {
            vec![
                r["charger_id"].clone(),
                r["energy_wh"].clone(),
                format!("{:.1}", num(&r["mean_power_kw"])),
                format!("{}/{}", r["occupied"], r["connectors"]),
                r["faulted"].clone(),
            ]
        })
        .collect();
    let table: Vec<Vec<String>> = (view[2].iter())
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect();
    assert_eq!(table[0][0], "charger");
    assert_eq!(table[1..], want[..], "{:#?}", view[2]);

    // Every named zone of the window as the operator may see it: road
    // traffic over fewer than K vehicles shows as none, as do fewer than
    // K low-SoC EVs (a row left with nothing is withheld).
    let zones = Csv::read(&out.join("zones.csv"));
    let want: Vec<Vec<String>> = (zones.window(newest).iter())
        .filter(|r| r["zone_type"] == "zone")
        .filter_map(|r| {
            let traffic = num(&r["vehicles"]) as u64 >= K;
            let low_soc = if num(&r["low_soc_evs"]) as u64 >= K {
                r["low_soc_evs"].clone()
            } else {
                "0".into()
            };
            let road = |name: &str, none: &str| {
                if traffic {
                    r[name].clone()
                } else {
                    none.to_owned()
                }
            };
            let ratio = if traffic && !r["mean_speed_ratio"].is_empty() {
                format!("{:.2}", num(&r["mean_speed_ratio"]))
            } else {
                String::new()
            };
            (traffic || num(&r["chargers"]) > 0.0 || low_soc != "0").then(|| {
                [
                    r["zone_id"].clone(),
                    road("samples", "0"),
                    road("vehicles", "0"),
                    ratio,
                    road("jammed_segments", "0"),
                    r["energy_wh"].clone(),
                    low_soc,
                ]
                .into_iter()
                .filter(|c| !c.is_empty())
                .collect()
            })
        })
        .collect();
    assert!(!want.is_empty(), "named zones in the newest window");
    let table: Vec<Vec<String>> = (view[3].iter())
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect();
    assert_eq!(table[0][0], "zone");
    assert_eq!(table[1..], want[..], "{:#?}", view[3]);
}

/// While the demo runs (here lingering after the recording, as it does on
/// a terminal until Ctrl-C), the map it prints serves its page, and the
/// token in its address signs in and sees every kind; another token does
/// not. Ctrl-C then stops the demo: exit 0, the final view, the files.
#[test]
fn the_demo_prints_a_map_address_that_signs_in_and_stops_on_ctrl_c() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("demo");
    let mut demo = demo(&out, &["--speed", "300", "--linger", "10m"]);
    demo.wait_until(Duration::from_secs(60), "the map's address", |o, _| {
        o.contains("#token=")
    });
    let line = (demo.stdout().lines())
        .find(|l| l.starts_with("map: "))
        .map(str::to_owned)
        .expect("a map line");
    let (addr, token) = line["map: http://".len()..]
        .split_once("/#token=")
        .expect("address and token");
    let addr: std::net::SocketAddr = addr.parse().expect("an address");
    let (status, page) = crate::web::get(addr, "/");
    assert_eq!(status, 200, "{page}");
    let (status, _) = crate::web::post(addr, "/api/login", "not-the-token", None);
    assert_eq!(status, 401);
    let cookie = crate::web::login(addr, token.trim());
    let (status, config) = crate::web::get_signed(addr, "/api/config", &cookie);
    assert_eq!(status, 200, "{config}");
    let config: serde_json::Value = serde_json::from_str(crate::web::body(&config)).expect("JSON");
    let kinds = config.to_string();
    for kind in ["congestion", "charging", "zone"] {
        assert!(kinds.contains(kind), "{kind} in {config}");
    }
    // Everything sent (1.2 s at 300x) and the first windows shown; then
    // Ctrl-C.
    demo.wait_until(Duration::from_secs(60), "the first window", |o, _| {
        o.contains("edgeflow demo  window ")
    });
    std::thread::sleep(Duration::from_secs(3));
    demo.interrupt();
    let (status, stdout, stderr) = demo.finish(Duration::from_secs(60));
    assert!(status.success(), "{stderr}\n{stdout}");
    let view = final_view(&stdout);
    assert!(view[0][2].ends_with("; stopped"), "{:?}", view[0]);
    assert!(stdout.contains("aggregates: "), "{stdout}");
    assert!(
        std::fs::read_to_string(out.join("congestion.csv"))
            .expect("files")
            .lines()
            .count()
            > 1
    );
}
