//! `edgeflow demo`: the product's shop window. An edge node on loopback
//! with the bundled Karhula topology, fed the recorded telemetry over
//! real QUIC at a multiple of event time; its live map served on
//! `--map`, its aggregates followed in the terminal through subscriptions
//! as an operator would follow them ([`follow`], [`view`]).
//!
//! Everything it writes (development certificates, the log, the CSV files)
//! goes under one directory, `out/demo` by default; the log is started fresh.
//! Once the recording is sent the node keeps serving (the map stays up)
//! until Ctrl-C on a terminal, or for `--linger`.

pub mod follow;
pub mod view;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::aggregate::Kind;
use crate::ingest::client::{SendOptions, SendReport};
use crate::topology::{
    CentralSink, Fleet, Ingest, IngestLimits, Log, Operator, Sink, Topology, Web,
};

use follow::Follow;
use view::{Ranking, Screen};

/// The demo fleet's token (the recording's sender).
const TOKEN: &str = "edgeflow-demo-token";

/// How long the demo waits for its subscriptions' last rows once the
/// nodes have stopped.
const FINAL_ROWS_WAIT: Duration = Duration::from_secs(30);

/// Options of `edgeflow demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Topology with the reference data.
    #[arg(long, default_value = "topologies/karhula.toml")]
    pub topology: PathBuf,
    /// Recorded telemetry to send.
    #[arg(long, default_value = "tests/data/sumo-public/telemetry.jsonl")]
    pub input: PathBuf,
    /// Event-time seconds per wall-clock second (the bundled 10 minutes
    /// take a minute at 10).
    #[arg(long, default_value_t = 10.0)]
    pub speed: f64,
    /// Where certificates, the log and the CSV files go.
    #[arg(long, default_value = "out/demo")]
    pub out: PathBuf,
    /// A small city instead: two edge nodes (west and east of the town)
    /// pushing to a central node, whose city-wide aggregates are shown.
    #[arg(long)]
    pub city: bool,
    /// The live map's address (another free port when this one is taken).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub map: SocketAddr,
    /// How long the node keeps serving once the recording is sent
    /// (e.g. 5m). Default: until Ctrl-C on a terminal, not at all otherwise.
    #[arg(long)]
    pub linger: Option<humantime::Duration>,
    /// The slowest-segments table ranks segments at least this long, metres.
    #[arg(long, default_value_t = 20.0)]
    pub min_length: f64,
    /// ... with at least this many samples in the window.
    #[arg(long, default_value_t = 5)]
    pub min_samples: u64,
}

/// Where a demo's telemetry goes: each edge node with the recording it is
/// sent, and the central node in a city.
struct Nodes {
    edges: Vec<(crate::node::EdgeHandle, PathBuf)>,
    central: Option<crate::node::EdgeHandle>,
}

impl Nodes {
    /// The node operators follow (and whose map is served): central in a
    /// city, else the edge.
    fn followed(&self) -> Option<&crate::node::EdgeHandle> {
        self.central.as_ref().or(self.edges.first().map(|(n, _)| n))
    }

    /// The header's line about the nodes.
    fn describe(&self) -> String {
        match &self.central {
            Some(c) => format!(
                "central {} (QUIC), edges {}",
                c.addr,
                (self.edges.iter().map(|(e, _)| e.addr.to_string()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => format!(
                "node {} (QUIC)",
                self.edges
                    .first()
                    .map_or_else(String::new, |(e, _)| e.addr.to_string())
            ),
        }
    }
}

/// The demo operator: every kind, no allow lists, signed in with `token`;
/// it follows the node and opens the map.
struct Viewer {
    token: String,
    map: SocketAddr,
}

impl Viewer {
    /// A fresh random token for this run and the map's address: `wanted`,
    /// or a free port when that one is taken.
    fn new(wanted: SocketAddr) -> anyhow::Result<Viewer> {
        let mut bytes = [0u8; 16];
        crate::wire::tls::random(&mut bytes)?;
        let token = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let map = match std::net::TcpListener::bind(wanted) {
            Ok(_) => wanted,
            Err(e) if wanted.port() != 0 => {
                eprintln!("edgeflow demo: the map cannot listen on {wanted} ({e}): it takes another free port");
                SocketAddr::new(wanted.ip(), 0)
            }
            Err(e) => return Err(e).with_context(|| format!("the map cannot listen on {wanted}")),
        };
        Ok(Viewer { token, map })
    }

    fn operator(&self) -> Operator {
        Operator {
            name: "demo".into(),
            token_sha256: crate::wire::token::digest(&self.token),
            kinds: Kind::ALL.to_vec(),
            segments: None,
            chargers: None,
            zones: None,
        }
    }

    /// The map's address with the sign-in token (the page reads it and
    /// forgets it).
    fn url(&self, bound: SocketAddr) -> String {
        format!("http://{bound}/#token={}", self.token)
    }
}

/// The demo topology's node settings for a node named `name`: a loopback
/// port, the demo certificates, a fresh log under `dir/log`, the demo
/// fleet, files written to `dir`; the map and the operator when `viewer`.
fn node_topology(
    base: &Topology,
    name: &str,
    dir: &Path,
    certs: &crate::node::CertPaths,
    viewer: Option<&Viewer>,
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
    topology.operators = viewer.map(Viewer::operator).into_iter().collect();
    topology.web = viewer.map(|v| Web::new(v.map));
    Ok(topology)
}

/// One edge node fed the whole recording, serving the map; its files in
/// `out`.
fn start_edge(
    args: &DemoArgs,
    base: &Topology,
    certs: &crate::node::CertPaths,
    viewer: &Viewer,
) -> anyhow::Result<Nodes> {
    let topology = node_topology(base, &base.node_id, &args.out, certs, Some(viewer))?;
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

/// A small city on loopback: a central node (its files in `out`, serving
/// the map) and a west and an east edge pushing to it, the recording split
/// between them at the median report's longitude.
fn start_city(
    args: &DemoArgs,
    base: &Topology,
    certs: &crate::node::CertPaths,
    viewer: &Viewer,
) -> anyhow::Result<Nodes> {
    let mut base = base.clone();
    // The city's vehicle hash key, for this run only (a real city keeps
    // one from `openssl rand -hex 32`).
    let mut secret = [0u8; 32];
    crate::wire::tls::random(&mut secret)?;
    base.reference.vehicle_key = Some(crate::privacy::VehicleKey::new(secret));
    let names = ["west", "east"];
    let push_token = |edge: &str| format!("edgeflow-demo-push-{edge}");
    let mut central = node_topology(&base, "central", &args.out, certs, Some(viewer))?;
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
        let mut topology = node_topology(&base, name, &args.out.join(name), certs, None)?;
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

/// The senders of the recording, one thread per edge, and their progress.
struct Senders {
    threads: Vec<std::thread::JoinHandle<anyhow::Result<SendReport>>>,
    acknowledged: std::sync::Arc<std::sync::atomic::AtomicU64>,
    total: u64,
}

impl Senders {
    /// Sends each edge its recording, paced at `speed`.
    fn start(nodes: &Nodes, ca: &Path, speed: f64) -> anyhow::Result<Senders> {
        let acknowledged = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut total = 0;
        let mut threads = Vec::new();
        for (i, (node, file)) in nodes.edges.iter().enumerate() {
            let opts = SendOptions {
                sender: format!("demo-recorder-{i}"),
                batch_lines: 100,
                window: 4,
                max_reconnects: 3,
                pace: Some(speed),
                ..SendOptions::new(node.addr, "localhost", ca.to_owned(), TOKEN)
            };
            let mut unused = SendReport::default();
            let batches =
                crate::ingest::client::batches(file, opts.encoding, opts.batch_lines, &mut unused)?;
            total += batches.len() as u64;
            let progress = acknowledged.clone();
            threads.push(std::thread::spawn(move || -> anyhow::Result<SendReport> {
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
        Ok(Senders {
            threads,
            acknowledged,
            total,
        })
    }

    fn done(&self) -> bool {
        self.threads.iter().all(|t| t.is_finished())
    }

    fn progress(&self) -> String {
        format!(
            "{}/{} batches acknowledged",
            self.acknowledged.load(std::sync::atomic::Ordering::Relaxed),
            self.total
        )
    }

    /// Every sender's end: a failed one fails the demo.
    fn join(self) -> anyhow::Result<()> {
        for t in self.threads {
            t.join()
                .map_err(|_| anyhow::anyhow!("a sender panicked"))??;
        }
        Ok(())
    }
}

/// The terminal's (columns, rows), when stdout is one.
fn terminal_size(terminal: bool) -> Option<(usize, usize)> {
    let (rows, cols) = console::Term::stdout().size_checked()?;
    terminal.then_some((usize::from(cols), usize::from(rows)))
}

/// Runs the demo.
pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    let base = Topology::load(&args.topology)
        .map_err(|p| anyhow::anyhow!("{} has problems: {p:?}", args.topology.display()))?;
    std::fs::create_dir_all(&args.out)?;
    let certs = crate::node::make_certs(&args.out.join("certs"), &["localhost".into()])?;
    let viewer = Viewer::new(args.map)?;
    let nodes = if args.city {
        start_city(args, &base, &certs, &viewer)?
    } else {
        start_edge(args, &base, &certs, &viewer)?
    };
    let followed = nodes
        .followed()
        .ok_or_else(|| anyhow::anyhow!("the demo started no node"))?;
    let map = followed
        .web_addr
        .map(|a| viewer.url(a))
        .ok_or_else(|| anyhow::anyhow!("the demo's node serves no map"))?;
    let follow = Follow::start(followed.addr, certs.ca.clone(), &viewer.token)?;
    let where_ = nodes.describe();
    println!("map: {map}");
    println!("{where_}; open the map in a browser, Ctrl-C stops");
    let senders = Senders::start(&nodes, &certs.ca, args.speed)?;

    let terminal = std::io::stdout().is_terminal();
    let linger = args
        .linger
        .map(Duration::from)
        .or((!terminal).then_some(Duration::ZERO));
    let ranking = Ranking {
        min_length_m: args.min_length,
        min_samples: args.min_samples,
    };
    let mut sent_at: Option<Instant> = None;
    let mut last = String::new();
    while !follow.interrupted() {
        if senders.done() {
            let since = *sent_at.get_or_insert_with(Instant::now);
            if linger.is_some_and(|l| since.elapsed() >= l) {
                break;
            }
        }
        let status = match (sent_at, linger) {
            (None, _) => format!("{where_}  {} at {}x", senders.progress(), args.speed),
            (Some(_), None) => format!("{where_}  all sent; Ctrl-C stops"),
            (Some(t), Some(l)) => format!(
                "{where_}  all sent; stops in {} s",
                l.saturating_sub(t.elapsed()).as_secs()
            ),
        };
        let size = terminal_size(terminal);
        let held = follow.held();
        let view = view::render(&Screen {
            held: &held,
            reference: &base.reference,
            ranking,
            map: &map,
            status: &status,
            size,
        });
        if view != last {
            if terminal {
                print!("\x1b[2J\x1b[H{view}");
            } else {
                println!("{}", view.lines().next().unwrap_or_default());
            }
            last = view;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let interrupted = follow.interrupted();
    let progress = senders.progress();
    if !interrupted {
        senders.join()?;
    }
    let mut reports = Vec::new();
    for (node, _) in nodes.edges {
        reports.push(node.shutdown()?);
    }
    if let Some(central) = nodes.central {
        reports.push(central.shutdown()?);
    }
    let held = follow.finish(FINAL_ROWS_WAIT);
    let status = format!(
        "{where_}  {progress}{}; stopped",
        if interrupted { " (interrupted)" } else { "" }
    );
    let view = view::render(&Screen {
        held: &held,
        reference: &base.reference,
        ranking,
        map: &map,
        status: &status,
        size: terminal_size(terminal),
    });
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
