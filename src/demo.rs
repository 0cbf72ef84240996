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
use sha2::{Digest, Sha256};

use crate::client::{SendOptions, SendReport};
use crate::log::Encoding;
use crate::topology::{FleetSection, Ingest, IngestSection, LogSection, SinkSection, Topology};

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
}

fn read_rows(path: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(str::to_owned).collect())
        .collect()
}

/// The view: the slowest segments and every charger, in the newest final
/// window.
fn render(dir: &Path, sent: &str) -> String {
    let congestion = read_rows(&dir.join("congestion.csv"));
    let charging = read_rows(&dir.join("charging.csv"));
    let newest = congestion
        .iter()
        .filter_map(|r| r.get(1)?.parse::<u64>().ok())
        .max();
    let mut out = String::new();
    let Some(window) = newest else {
        return format!("waiting for the first window to close... ({sent})\n");
    };
    let mut rows: Vec<&Vec<String>> = congestion
        .iter()
        .filter(|r| r.get(1).and_then(|w| w.parse().ok()) == Some(window))
        .collect();
    rows.sort_by(|a, b| {
        let ratio = |r: &Vec<String>| r.get(7).and_then(|v| v.parse::<f64>().ok()).unwrap_or(1.0);
        ratio(a).total_cmp(&ratio(b))
    });
    let minute = (window / 60_000) % (24 * 60);
    out.push_str(&format!(
        "edgeflow demo: Karhula, window {:02}:{:02} UTC ({} segments reporting)   {sent}\n\n",
        minute / 60,
        minute % 60,
        rows.len()
    ));
    out.push_str(&format!(
        "{:<16} {:>7} {:>8} {:>9} {:>6}  {}\n",
        "segment", "samples", "vehicles", "mean m/s", "ratio", "level"
    ));
    for r in rows.iter().take(10) {
        if let [seg, _, _, samples, vehicles, mean, _, ratio, level] = r.as_slice() {
            out.push_str(&format!(
                "{seg:<16} {samples:>7} {vehicles:>8} {mean:>9} {ratio:>6}  {level}\n"
            ));
        }
    }
    out.push_str(&format!(
        "\n{:<22} {:>9} {:>9} {:>9} {:>7}\n",
        "charger", "energy Wh", "power kW", "occupied", "faulted"
    ));
    for r in charging
        .iter()
        .filter(|r| r.get(1).and_then(|w| w.parse().ok()) == Some(window))
    {
        if let [id, _, _, energy, power, occupied, connectors, _, faulted] = r.as_slice() {
            out.push_str(&format!(
                "{id:<22} {energy:>9} {power:>9} {:>9} {faulted:>7}\n",
                format!("{occupied}/{connectors}")
            ));
        }
    }
    let zones = read_rows(&dir.join("zones.csv"));
    let named: Vec<&Vec<String>> = zones
        .iter()
        .filter(|r| r.get(1).is_some_and(|k| k == "zone"))
        .filter(|r| r.get(2).and_then(|w| w.parse().ok()) == Some(window))
        .collect();
    if !named.is_empty() {
        out.push_str(&format!(
            "\n{:<16} {:>7} {:>6} {:>7} {:>9} {:>12}\n",
            "zone", "samples", "ratio", "jammed", "energy Wh", "low-SoC EVs"
        ));
        for r in named {
            if let [id, _, _, _, samples, _, ratio, jammed, _, energy, .., low_soc] = r.as_slice() {
                out.push_str(&format!(
                    "{id:<16} {samples:>7} {ratio:>6} {jammed:>7} {energy:>9} {low_soc:>12}\n"
                ));
            }
        }
    }
    out
}

/// Runs the demo.
pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    let mut topology = Topology::load(&args.topology)
        .map_err(|p| anyhow::anyhow!("{} has problems: {p:?}", args.topology.display()))?;
    std::fs::create_dir_all(&args.out)?;
    let log_dir = args.out.join("log");
    if log_dir.exists() {
        std::fs::remove_dir_all(&log_dir)
            .with_context(|| format!("cannot clear {}", log_dir.display()))?;
    }
    // A fresh run: the files sink would keep rows of an earlier one.
    for (_, name) in crate::output::FILES {
        let _ = std::fs::remove_file(args.out.join(name));
    }
    let certs = crate::edge::make_certs(&args.out.join("certs"), &["localhost".into()])?;
    let section = IngestSection {
        listen: "127.0.0.1:0".into(),
        cert: certs.cert.clone(),
        key: certs.key.clone(),
        max_frame_bytes: 4 << 20,
        max_connections: 100,
        max_streams: 32,
        idle_timeout: "30s".into(),
        hello_timeout: "5s".into(),
        drain_timeout: "10s".into(),
        max_records_per_s: 200_000,
        receive_window: 8 << 20,
        client_ca: None,
    };
    topology.ingest = Some(Ingest {
        listen: "127.0.0.1:0".parse()?,
        section,
        idle_timeout: Duration::from_secs(30),
        hello_timeout: Duration::from_secs(5),
        drain_timeout: Duration::from_secs(10),
    });
    topology.log = Some(LogSection {
        dir: log_dir,
        segment_bytes: crate::log::DEFAULT_SEGMENT_BYTES,
    });
    topology.fleets = vec![FleetSection {
        name: "demo".into(),
        token_sha256: hex::encode(Sha256::digest(TOKEN.as_bytes())),
    }];
    topology.sinks = vec![SinkSection::Files {
        dir: args.out.clone(),
    }];
    let workers = topology.workers;
    let node = crate::edge::start(topology, workers)?;
    eprintln!(
        "edge node on {} (QUIC); sending {} at {}x event time",
        node.addr,
        args.input.display(),
        args.speed
    );

    let opts = SendOptions {
        to: node.addr,
        server_name: "localhost".into(),
        ca: certs.ca,
        token: TOKEN.into(),
        sender: "demo-recorder".into(),
        encoding: Encoding::Cbor,
        batch_lines: 100,
        window: 4,
        max_reconnects: 3,
        pace: Some(args.speed),
        identity: None,
    };
    let mut unused = SendReport::default();
    let batches =
        crate::client::batches(&args.input, opts.encoding, opts.batch_lines, &mut unused)?;
    let total = batches.len() as u64;
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sender = {
        let progress = progress.clone();
        std::thread::spawn(move || -> anyhow::Result<SendReport> {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?;
            rt.block_on(crate::client::send(&opts, batches, |done, _| {
                progress.store(done, std::sync::atomic::Ordering::Relaxed)
            }))
        })
    };
    let terminal = std::io::stdout().is_terminal();
    let mut last = String::new();
    while !sender.is_finished() {
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
    let report = sender
        .join()
        .map_err(|_| anyhow::anyhow!("the sender panicked"))??;
    let stopped = node.shutdown()?;
    let view = render(
        &args.out,
        &format!("{}/{total} batches acknowledged", report.batches),
    );
    if terminal {
        print!("\x1b[2J\x1b[H");
    }
    println!("{view}");
    crate::edge::print_report(&stopped);
    println!(
        "aggregates: {0}/congestion.csv, charging.csv and zones.csv; the log (the recording): {0}/log",
        args.out.display()
    );
    Ok(())
}
