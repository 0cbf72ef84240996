//! `edgeflow demo`: an edge node on loopback with the bundled Karhula
//! topology, fed the recorded telemetry over real QUIC at a multiple of
//! event time, with the aggregates shown live in the terminal.
//!
//! Everything it writes (development certificates, the log, the CSV files)
//! goes under one directory, `out/demo` by default; the log is started fresh.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use crate::ingest::client::{SendOptions, SendReport};
use crate::topology::{CentralSink, Fleet, Ingest, IngestLimits, Log, Sink, Topology};

const TOKEN: &str = "edgeflow-demo-token";

/// Options of `edgeflow demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Topology with the reference data.
    #[arg(long, default_value = "topologies/karhula.toml")]
    pub topology: PathBuf,
    /// Recorded telemetry to send.
    #[arg(long, default_value = "tests/data/sumo-public/telemetry.jsonl")]
    pub input: PathBuf,
    /// Event-time seconds per wall-clock second.
    #[arg(long, default_value_t = 60.0)]
    pub speed: f64,
    /// Where certificates, the log and the CSV files go.
    #[arg(long, default_value = "out/demo")]
    pub out: PathBuf,
    /// A small city instead: two edge nodes (west and east of the town)
    /// pushing to a central node, whose city-wide aggregates are shown.
    #[arg(long)]
    pub city: bool,
}

/// A CSV sink file: rows as fields by header name.
struct Csv {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Csv {
    fn read(path: &Path) -> Csv {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let mut lines = text.lines();
        let header: Vec<String> = lines
            .next()
            .unwrap_or_default()
            .split(',')
            .map(str::to_owned)
            .collect();
        // Only the first field (the id) may hold commas: split from the right.
        let rows = lines
            .map(|l| {
                let mut f: Vec<String> = l.rsplitn(header.len(), ',').map(str::to_owned).collect();
                f.reverse();
                f
            })
            .filter(|f| f.len() == header.len())
            .collect();
        Csv { header, rows }
    }

    /// Field `name` of `row` ("" when there is no such column).
    fn get<'a>(&self, row: &'a [String], name: &str) -> &'a str {
        self.header
            .iter()
            .position(|h| h == name)
            .and_then(|i| row.get(i))
            .map_or("", String::as_str)
    }

    /// Rows of the window starting at `window`.
    fn in_window(&self, window: u64) -> impl Iterator<Item = &Vec<String>> {
        self.rows
            .iter()
            .filter(move |r| self.get(r, "window_start_ms").parse() == Ok(window))
    }
}

/// The view: the slowest segments, every charger and every named zone, in
/// the newest final window.
fn render(dir: &Path, sent: &str) -> String {
    let congestion = Csv::read(&dir.join("congestion.csv"));
    let charging = Csv::read(&dir.join("charging.csv"));
    let zones = Csv::read(&dir.join("zones.csv"));
    let newest = congestion
        .rows
        .iter()
        .filter_map(|r| congestion.get(r, "window_start_ms").parse::<u64>().ok())
        .max();
    let mut out = String::new();
    let Some(window) = newest else {
        return format!("waiting for the first window to close... ({sent})\n");
    };
    let mut rows: Vec<&Vec<String>> = congestion.in_window(window).collect();
    let ratio = |r: &Vec<String>| {
        congestion
            .get(r, "speed_ratio")
            .parse::<f64>()
            .unwrap_or(1.0)
    };
    rows.sort_by(|a, b| ratio(a).total_cmp(&ratio(b)));
    let minute = (window / 60_000) % (24 * 60);
    out.push_str(&format!(
        "edgeflow demo: Karhula, window {:02}:{:02} UTC ({} segments reporting)   {sent}\n\n",
        minute / 60,
        minute % 60,
        rows.len()
    ));
    table(
        &mut out,
        &congestion,
        &rows[..rows.len().min(10)],
        &[
            ("segment", "segment_id", -16),
            ("samples", "samples", 7),
            ("vehicles", "vehicles", 8),
            ("mean m/s", "mean_speed_mps", 9),
            ("ratio", "speed_ratio", 6),
            ("level", "level", -6),
        ],
    );
    out.push('\n');
    let chargers: Vec<&Vec<String>> = charging.in_window(window).collect();
    table(
        &mut out,
        &charging,
        &chargers,
        &[
            ("charger", "charger_id", -22),
            ("energy Wh", "energy_wh", 9),
            ("power kW", "mean_power_kw", 9),
            ("occupied", "occupied/connectors", 9),
            ("faulted", "faulted", 7),
        ],
    );
    let named: Vec<&Vec<String>> = zones
        .in_window(window)
        .filter(|r| zones.get(r, "zone_type") == "zone")
        .collect();
    if !named.is_empty() {
        out.push('\n');
        table(
            &mut out,
            &zones,
            &named,
            &[
                ("zone", "zone_id", -16),
                ("samples", "samples", 7),
                ("vehicles", "vehicles", 8),
                ("ratio", "mean_speed_ratio", 6),
                ("jammed", "jammed_segments", 7),
                ("energy Wh", "energy_wh", 9),
                ("low-SoC EVs", "low_soc_evs", 12),
            ],
        );
    }
    out
}

/// Appends a table: one heading line, then `rows`, each column
/// `(heading, field, width)`, left-aligned when the width is negative.
/// A field `a/b` shows two fields with a slash between them.
fn table(out: &mut String, csv: &Csv, rows: &[&Vec<String>], columns: &[(&str, &str, i32)]) {
    let line = |out: &mut String, cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(columns)
            .map(|(text, (_, _, width))| {
                let w = width.unsigned_abs() as usize;
                if *width < 0 {
                    format!("{text:<w$}")
                } else {
                    format!("{text:>w$}")
                }
            })
            .collect();
        out.push_str(padded.join(" ").trim_end());
        out.push('\n');
    };
    line(out, columns.iter().map(|(h, _, _)| h.to_string()).collect());
    for r in rows {
        let cell = |field: &str| match field.split_once('/') {
            Some((a, b)) => format!("{}/{}", csv.get(r, a), csv.get(r, b)),
            None => csv.get(r, field).to_owned(),
        };
        line(out, columns.iter().map(|(_, f, _)| cell(f)).collect());
    }
}

/// Where a demo's telemetry goes: each edge node with the recording it is
/// sent, and the central node in a city.
struct Nodes {
    edges: Vec<(crate::node::EdgeHandle, PathBuf)>,
    central: Option<crate::node::EdgeHandle>,
}

/// The demo topology's node settings for a node named `name`: a loopback
/// port, the demo certificates, a fresh log under `dir/log`, the demo
/// fleet, files written to `dir`.
fn node_topology(
    base: &Topology,
    name: &str,
    dir: &Path,
    certs: &crate::node::CertPaths,
) -> anyhow::Result<Topology> {
    let mut topology = base.clone();
    topology.node_id = name.into();
    let log_dir = dir.join("log");
    if log_dir.exists() {
        std::fs::remove_dir_all(&log_dir)
            .with_context(|| format!("cannot clear {}", log_dir.display()))?;
    }
    // A fresh run: the files sink would keep rows of an earlier one.
    for name in crate::output::FILES
        .map(|(_, n)| n)
        .into_iter()
        .chain(["edges.csv", "missing.csv"])
    {
        let _ = std::fs::remove_file(dir.join(name));
    }
    topology.ingest = Some(Ingest {
        limits: IngestLimits {
            max_connections: 100,
            ..IngestLimits::default()
        },
        ..Ingest::new(
            "127.0.0.1:0".parse()?,
            certs.cert.clone(),
            certs.key.clone(),
        )
    });
    topology.log = Some(Log {
        on_corruption: crate::log::OnCorruption::Stop,
        dir: log_dir,
        segment_bytes: crate::log::DEFAULT_SEGMENT_BYTES,
    });
    topology.fleets = vec![Fleet {
        name: "demo".into(),
        token_sha256: crate::wire::token::digest(TOKEN),
    }];
    topology.sinks = vec![Sink::Files {
        dir: dir.to_owned(),
    }];
    Ok(topology)
}

/// One edge node fed the whole recording; its files in `out`.
fn start_edge(
    args: &DemoArgs,
    base: &Topology,
    certs: &crate::node::CertPaths,
) -> anyhow::Result<Nodes> {
    let topology = node_topology(base, &base.node_id, &args.out, certs)?;
    let node = crate::node::start(topology, base.workers)?;
    eprintln!(
        "edge node on {} (QUIC); sending {} at {}x event time",
        node.addr,
        args.input.display(),
        args.speed
    );
    Ok(Nodes {
        edges: vec![(node, args.input.clone())],
        central: None,
    })
}

/// A small city on loopback: a central node (its files in `out`) and a
/// west and an east edge pushing to it, the recording split between them
/// at the median report's longitude.
fn start_city(
    args: &DemoArgs,
    base: &Topology,
    certs: &crate::node::CertPaths,
) -> anyhow::Result<Nodes> {
    let mut base = base.clone();
    // The city's vehicle hash key, for this run only (a real city keeps
    // one from `openssl rand -hex 32`).
    let mut secret = [0u8; 32];
    let mut rng = super::measure::SplitMix(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
    );
    for chunk in secret.chunks_mut(8) {
        chunk.copy_from_slice(&rng.next_u64().to_be_bytes());
    }
    base.reference.vehicle_key = Some(crate::privacy::VehicleKey::new(secret));
    let names = ["west", "east"];
    let push_token = |edge: &str| format!("edgeflow-demo-push-{edge}");
    let mut central = node_topology(&base, "central", &args.out, certs)?;
    central.edges = names
        .iter()
        .map(|n| Fleet {
            name: (*n).into(),
            token_sha256: crate::wire::token::digest(&push_token(n)),
        })
        .collect();
    let central = crate::node::start_central(central, base.workers)?;
    let files = split(&args.input, &base.reference, &args.out)?;
    let mut edges = Vec::new();
    for (name, file) in names.into_iter().zip(files) {
        let mut topology = node_topology(&base, name, &args.out.join(name), certs)?;
        topology.sinks.push(Sink::Central(CentralSink {
            to: central.addr,
            server_name: "localhost".into(),
            ca: certs.ca.clone(),
            token: push_token(name),
            identity: None,
            max_hold: crate::topology::DEFAULT_MAX_HOLD,
        }));
        let node = crate::node::start(topology, 1)?;
        eprintln!("edge {name} on {} (QUIC), pushing to central", node.addr);
        edges.push((node, file));
    }
    eprintln!(
        "central on {} (QUIC, edgeflow-push/1); sending {} split west/east at {}x event time",
        central.addr,
        args.input.display(),
        args.speed
    );
    Ok(Nodes {
        edges,
        central: Some(central),
    })
}

/// The recording split at the median report's longitude (a charger's by
/// its site): `dir/west.jsonl` and `dir/east.jsonl`.
fn split(
    input: &Path,
    reference: &crate::reference::Reference,
    dir: &Path,
) -> anyhow::Result<[PathBuf; 2]> {
    let text =
        std::fs::read_to_string(input).with_context(|| format!("reading {}", input.display()))?;
    let lon = |line: &str| -> Option<f64> {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        match v["charger_id"].as_str() {
            Some(id) => Some(
                reference
                    .chargers
                    .get(reference.charger(id)? as usize)?
                    .position[0],
            ),
            None => v["lon"].as_f64(),
        }
    };
    let mut lons: Vec<f64> = text.lines().filter_map(lon).collect();
    lons.sort_by(f64::total_cmp);
    let meridian = lons.get(lons.len() / 2).copied().unwrap_or(0.0);
    let (mut west, mut east) = (String::new(), String::new());
    for line in text.lines() {
        let side = if lon(line).is_some_and(|l| l < meridian) {
            &mut west
        } else {
            &mut east
        };
        side.push_str(line);
        side.push('\n');
    }
    let paths = [dir.join("west.jsonl"), dir.join("east.jsonl")];
    std::fs::write(&paths[0], west)?;
    std::fs::write(&paths[1], east)?;
    Ok(paths)
}

/// Runs the demo.
pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    let base = Topology::load(&args.topology)
        .map_err(|p| anyhow::anyhow!("{} has problems: {p:?}", args.topology.display()))?;
    std::fs::create_dir_all(&args.out)?;
    let certs = crate::node::make_certs(&args.out.join("certs"), &["localhost".into()])?;
    let nodes = if args.city {
        start_city(args, &base, &certs)?
    } else {
        start_edge(args, &base, &certs)?
    };
    let mut total = 0;
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut senders = Vec::new();
    for (i, (node, file)) in nodes.edges.iter().enumerate() {
        let opts = SendOptions {
            sender: format!("demo-recorder-{i}"),
            batch_lines: 100,
            window: 4,
            max_reconnects: 3,
            pace: Some(args.speed),
            ..SendOptions::new(node.addr, "localhost", certs.ca.clone(), TOKEN)
        };
        let mut unused = SendReport::default();
        let batches =
            crate::ingest::client::batches(file, opts.encoding, opts.batch_lines, &mut unused)?;
        total += batches.len() as u64;
        let progress = progress.clone();
        senders.push(std::thread::spawn(move || -> anyhow::Result<SendReport> {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?;
            let mut last = 0;
            rt.block_on(crate::ingest::client::send(&opts, batches, |done, _| {
                progress.fetch_add(done - last, std::sync::atomic::Ordering::Relaxed);
                last = done;
            }))
        }));
    }
    let terminal = std::io::stdout().is_terminal();
    let mut last = String::new();
    while senders.iter().any(|s| !s.is_finished()) {
        std::thread::sleep(Duration::from_millis(500));
        let sent = format!(
            "{}/{total} batches acknowledged",
            progress.load(std::sync::atomic::Ordering::Relaxed)
        );
        let view = render(&args.out, &sent);
        if view != last {
            if terminal {
                print!("\x1b[2J\x1b[H{view}");
            } else {
                println!("{}", view.lines().next().unwrap_or_default());
            }
            last = view;
        }
    }
    let mut acknowledged = 0;
    for s in senders {
        acknowledged += s
            .join()
            .map_err(|_| anyhow::anyhow!("a sender panicked"))??
            .batches;
    }
    let mut reports = Vec::new();
    for (node, _) in nodes.edges {
        reports.push(node.shutdown()?);
    }
    if let Some(central) = nodes.central {
        reports.push(central.shutdown()?);
    }
    let view = render(
        &args.out,
        &format!("{acknowledged}/{total} batches acknowledged"),
    );
    if terminal {
        print!("\x1b[2J\x1b[H");
    }
    println!("{view}");
    for report in &reports {
        crate::node::print_report(report);
    }
    println!(
        "aggregates: {0}/congestion.csv, charging.csv and zones.csv; the log (the recording): {0}/log",
        args.out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::{CHARGING_HEADER, CONGESTION_HEADER, ZONES_HEADER};

    /// A CSV file of one row whose fields are their column names, except
    /// the window and the zone type.
    fn write(dir: &Path, name: &str, header: &str) {
        let row: Vec<&str> = header
            .split(',')
            .map(|h| match h {
                "window_start_ms" => "60000",
                "zone_type" => "zone",
                h => h,
            })
            .collect();
        std::fs::write(dir.join(name), format!("{header}\n{}\n", row.join(","))).expect("write");
    }

    #[test]
    fn the_view_shows_each_column_under_its_heading() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "congestion.csv", CONGESTION_HEADER);
        write(dir.path(), "charging.csv", CHARGING_HEADER);
        write(dir.path(), "zones.csv", ZONES_HEADER);
        let view = render(dir.path(), "");
        for (heading, columns) in [
            (
                "segment ",
                &[
                    "segment_id",
                    "samples",
                    "vehicles",
                    "mean_speed_mps",
                    "speed_ratio",
                    "level",
                ][..],
            ),
            (
                "charger ",
                &[
                    "charger_id",
                    "energy_wh",
                    "mean_power_kw",
                    "occupied/connectors",
                    "faulted",
                ][..],
            ),
            (
                "zone ",
                &[
                    "zone_id",
                    "samples",
                    "vehicles",
                    "mean_speed_ratio",
                    "jammed_segments",
                    "energy_wh",
                    "low_soc_evs",
                ][..],
            ),
        ] {
            let at = view
                .find(&format!("\n{heading}"))
                .or_else(|| view.find(heading))
                .expect(heading);
            let row = view[at..]
                .lines()
                .filter(|l| !l.trim().is_empty())
                .nth(1)
                .expect("a row");
            let fields: Vec<&str> = row.split_whitespace().collect();
            assert_eq!(fields, columns, "{view}");
        }
    }
}
