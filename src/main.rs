//! The `edgeflow` command line: a thin shell over the library. It maps
//! errors to exit codes and messages a person can act on.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

use edgeflow::output::FinalTable;
use edgeflow::replay::{Input, ReplayOptions, RunSummary};
use edgeflow::topology::Topology;

/// edgeflow: edge stream processing of city mobility and energy telemetry.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a topology file and its reference data; print every problem.
    Validate {
        /// The topology file (TOML).
        topology: PathBuf,
    },
    /// Replay recorded telemetry (JSON Lines, optionally .gz, or an edge
    /// node's log directory) through the dataflow and write congestion.csv
    /// and charging.csv.
    Replay {
        /// The topology file (TOML).
        #[arg(long)]
        topology: PathBuf,
        /// Worker threads (default: the topology's `dataflow.workers`).
        #[arg(long)]
        workers: Option<usize>,
        /// Pace records at this multiple of event time (default: as fast
        /// as possible).
        #[arg(long)]
        speed: Option<f64>,
        /// The recorded telemetry.
        input: PathBuf,
        /// Directory for the CSV files (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// A damaged log: skip its damaged entries (and say how many) instead
        /// of failing.
        #[arg(long)]
        accept_damage: bool,
    },
    /// Run an edge node: QUIC ingest, durable log, live dataflow, sinks.
    /// Stops gracefully on SIGINT/SIGTERM.
    Edge {
        /// The topology file (TOML) with [ingest], [log], [[fleet]].
        #[arg(long)]
        topology: PathBuf,
        /// Worker threads (default: the topology's `dataflow.workers`).
        #[arg(long)]
        workers: Option<usize>,
    },
    /// Stream a recorded JSON Lines file to an edge node, resending what was
    /// not acknowledged after a reconnect.
    Send {
        /// The node, HOST:PORT.
        #[arg(long)]
        to: String,
        /// Bearer token of the fleet.
        #[arg(long)]
        token: String,
        /// CA certificate (PEM) to trust (from `edgeflow certs`).
        #[arg(long)]
        ca: PathBuf,
        /// Sender id; batch numbers are per sender. Default: the file name.
        #[arg(long)]
        sender: Option<String>,
        /// TLS server name (default: the host of --to).
        #[arg(long)]
        server_name: Option<String>,
        /// Wire encoding.
        #[arg(long, value_enum, default_value_t = Format::Jsonl)]
        format: Format,
        /// Lines per batch.
        #[arg(long, default_value_t = 1000)]
        batch_lines: usize,
        /// Batches in flight.
        #[arg(long, default_value_t = 8)]
        window: usize,
        /// Pace batches at this multiple of event time (default: as fast as
        /// the node acknowledges).
        #[arg(long)]
        speed: Option<f64>,
        /// Client certificate (PEM), for nodes that require mTLS.
        #[arg(long, requires = "key")]
        cert: Option<PathBuf>,
        /// Client key (PEM), with --cert.
        #[arg(long, requires = "cert")]
        key: Option<PathBuf>,
        /// The recording.
        file: PathBuf,
    },
    /// Start an edge node on loopback with the bundled Karhula topology,
    /// send it the recorded telemetry over QUIC and show the aggregates live.
    Demo(edgeflow::demo::DemoArgs),
    /// Make a development CA (its key kept, 0600), a server certificate
    /// and a client certificate (PEM) for local nodes; or, with --client,
    /// issue another client certificate from the CA in --out.
    Certs {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Names the server certificate is valid for.
        #[arg(long, value_delimiter = ',', default_value = "localhost,127.0.0.1")]
        names: Vec<String>,
        /// Issue a client certificate named NAME (client-NAME.pem and .key)
        /// from the CA already in --out.
        #[arg(long, value_name = "NAME")]
        client: Option<String>,
        /// Replace existing files (a new CA breaks every client that
        /// trusts the old one).
        #[arg(long)]
        force: bool,
    },
    /// Measure the replay path on synthetic telemetry against a plain
    /// single-threaded loop; prints one JSON object.
    Bench(edgeflow::bench::BenchArgs),
    /// Measure an edge node (own process, durable log) under synthetic QUIC
    /// load; prints one JSON object.
    BenchIngest(edgeflow::bench_ingest::IngestBenchArgs),
    /// Measure map matching on a topology's road network (one core),
    /// against the same rule without the spatial index; prints one JSON
    /// object.
    BenchMatch(edgeflow::bench_match::MatchBenchArgs),
    /// Measure ingest with subscribers (none, many, many plus a slow one),
    /// each phase on a fresh node process; prints one JSON object.
    BenchSubscribe(edgeflow::bench_subscribe::SubscribeBenchArgs),
    /// Follow live aggregates of a node as a mobility operator: the current
    /// rows, then every change (docs/PROTOCOL.md, "Subscriptions").
    Subscribe {
        /// The node, HOST:PORT.
        #[arg(long)]
        to: String,
        /// Operator token.
        #[arg(long)]
        token: String,
        /// CA certificate of the node (PEM).
        #[arg(long)]
        ca: PathBuf,
        /// Name in the node's certificate (default: the host of --to).
        #[arg(long)]
        server_name: Option<String>,
        /// congestion, charging or zone.
        #[arg(long)]
        kind: String,
        /// Only these ids, comma-separated.
        #[arg(long)]
        ids: Option<String>,
        /// Only keys within min_lon,min_lat,max_lon,max_lat.
        #[arg(long)]
        bbox: Option<String>,
        /// Every update as windows fill (default: final values only).
        #[arg(long)]
        provisional: bool,
        /// table (a live view on a terminal) or jsonl (a frame per line).
        #[arg(long, value_enum, default_value_t = SubFormat::Table)]
        format: SubFormat,
    },
    /// Send live synthetic traffic to a node over real QUIC connections, one
    /// per vehicle fleet gateway, stamped with the wall clock.
    Simulate {
        /// The node, HOST:PORT.
        #[arg(long)]
        to: String,
        /// Bearer token.
        #[arg(long)]
        token: String,
        /// CA certificate (PEM) to trust.
        #[arg(long)]
        ca: PathBuf,
        /// Topology whose road segments and chargers the traffic uses.
        #[arg(long, default_value = "topologies/karhula.toml")]
        topology: PathBuf,
        /// Simulated vehicles (each reports every 2 s).
        #[arg(long, default_value_t = 100)]
        vehicles: usize,
        /// Connections (one per fleet gateway); vehicles are spread over them.
        #[arg(long, default_value_t = 4)]
        connections: usize,
        /// How long, seconds.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// One measured run of `bench`, in a fresh process (used by `bench`).
    #[command(hide = true)]
    BenchOne(edgeflow::bench::RunOneArgs),
}

/// Wire encoding of `send`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Format {
    /// JSON Lines.
    Jsonl,
    /// CBOR.
    Binary,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("edgeflow: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Output of `subscribe`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum SubFormat {
    /// A live view, redrawn at every progress marker.
    Table,
    /// Every frame as a JSON object on its own line.
    Jsonl,
}

/// The live view of a subscription: the newest window's rows.
fn subscription_table(state: &edgeflow::subscribe::client::State, kind: &str) -> String {
    let newest = state.rows.keys().map(|(_, w)| *w).max();
    let mut out = String::from("\x1b[2J\x1b[H");
    let p = state.progress;
    out.push_str(&format!(
        "edgeflow subscribe {kind}: {} rows, watermark {} ms, revision {}{}\n\n",
        state.rows.len(),
        p.map_or(0, |p| p.watermark_ms),
        p.map_or(0, |p| p.revision),
        if state.coalesced > 0 {
            format!(" (lagged: {} updates coalesced)", state.coalesced)
        } else {
            String::new()
        }
    ));
    for ((key, window), row) in &state.rows {
        if Some(*window) != newest {
            continue;
        }
        let fields: Vec<String> = row
            .value
            .iter()
            .flatten()
            .filter(|(name, _)| !name.ends_with("_id") && !name.starts_with("window"))
            .map(|(name, v)| format!("{name}={v}"))
            .collect();
        out.push_str(&format!(
            "{key:<22} {:<11} {}\n",
            row.status.as_deref().unwrap_or(""),
            fields.join(" ")
        ));
    }
    out
}

/// `HOST:PORT` to an address, and the host as the default TLS server name.
fn resolve(to: &str) -> anyhow::Result<(std::net::SocketAddr, String)> {
    use std::net::ToSocketAddrs;
    let addr = to
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {to}"))?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{to} resolves to no address"))?;
    let host = to
        .rsplit_once(':')
        .map_or(to, |(h, _)| h)
        .trim_matches(['[', ']'])
        .to_owned();
    Ok((addr, host))
}

fn load_topology(path: &std::path::Path) -> anyhow::Result<Topology> {
    Topology::load(path).map_err(|problems| {
        for p in &problems {
            eprintln!("{p}");
        }
        anyhow::anyhow!(
            "{} has {} problem(s); `edgeflow validate` lists them",
            path.display(),
            problems.len()
        )
    })
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Validate { topology } => match Topology::load(&topology) {
            Ok(t) => {
                println!(
                    "{}: valid: node {}, {} road segments, {} chargers, {} s windows, {} worker(s)",
                    topology.display(),
                    t.node_id,
                    t.reference.roads.len(),
                    t.reference.chargers.len(),
                    t.time.size_ms / 1000,
                    t.workers
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(problems) => {
                for p in &problems {
                    println!("{p}");
                }
                println!("{}: {} problem(s)", topology.display(), problems.len());
                Ok(ExitCode::from(1))
            }
        },
        Command::Replay {
            topology,
            workers,
            speed,
            input,
            out,
            accept_damage,
        } => {
            let topo = load_topology(&topology)?;
            if input.is_dir() {
                // The window settings must be the checkpoint's.
                let settings =
                    edgeflow::checkpoint::Settings::of(&topo.time, &topo.reference_sha256);
                if let Some(cp) = edgeflow::checkpoint::Checkpoint::load(&input)? {
                    if let Some(notice) = cp.check_settings(&input, &settings)? {
                        eprintln!("edgeflow: {notice}");
                    }
                }
            }
            if let Some(s) = speed {
                if !(s.is_finite() && s >= 0.001) {
                    bail!("--speed must be a number >= 0.001 (times event time), got {s}");
                }
            }
            let workers = workers.unwrap_or(topo.workers);
            if workers == 0 || workers > edgeflow::topology::MAX_WORKERS {
                bail!(
                    "--workers must be between 1 and {}",
                    edgeflow::topology::MAX_WORKERS
                );
            }
            let (reader, total) = Input::open(&input)?;
            let bar = std::io::stderr().is_terminal().then(|| {
                let bar = indicatif::ProgressBar::new(total);
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                bar
            });
            let reference = Arc::new(topo.reference.clone());
            let mut table = FinalTable::default();
            let summary = edgeflow::replay::run(
                reader,
                reference.clone(),
                topo.time,
                ReplayOptions {
                    speed,
                    accept_damage,
                    ..ReplayOptions::new(workers)
                },
                |batch| table.apply(batch),
                |bytes| {
                    if let Some(b) = &bar {
                        b.set_position(bytes.min(total));
                    }
                },
            )?;
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            table
                .write_csv(&out, &reference, topo.time.size_ms)
                .with_context(|| format!("cannot write CSV files into {}", out.display()))?;
            edgeflow::metrics::publish(&summary);
            print_summary(&summary, workers, &out);
            for note in &summary.log_notes {
                eprintln!("edgeflow: warning: {note}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(args) => {
            let report = edgeflow::bench::run(&args)?;
            println!("{report}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Edge { topology, workers } => {
            let topo = load_topology(&topology)?;
            let workers = workers.unwrap_or(topo.workers);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let node = edgeflow::node::start(topo, workers)?;
            eprintln!("edgeflow edge: listening on {} (QUIC, ALPN edgeflow-ingest/1); Ctrl-C or SIGTERM stops", node.addr);
            runtime.block_on(async {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                anyhow::Ok(())
            })?;
            eprintln!(
                "edgeflow edge: stopping: draining connections, flushing the dataflow and sinks"
            );
            let report = node.shutdown()?;
            edgeflow::node::print_report(&report);
            Ok(ExitCode::SUCCESS)
        }
        Command::Send {
            to,
            token,
            ca,
            sender,
            server_name,
            format,
            batch_lines,
            window,
            speed,
            cert,
            key,
            file,
        } => {
            if speed.is_some_and(|s| !(s.is_finite() && s >= 0.001)) {
                bail!("--speed must be a number >= 0.001 (times event time)");
            }
            let (addr, host) = resolve(&to)?;
            let sender = sender.unwrap_or_else(|| {
                let stem = file
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("sender");
                stem.chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || "._:#-".contains(c) {
                            c
                        } else {
                            '-'
                        }
                    })
                    .take(64)
                    .collect()
            });
            let encoding = match format {
                Format::Jsonl => edgeflow::log::Encoding::JsonLines,
                Format::Binary => edgeflow::log::Encoding::Cbor,
            };
            let opts = edgeflow::client::SendOptions {
                to: addr,
                server_name: server_name.unwrap_or(host),
                ca,
                token,
                sender,
                encoding,
                batch_lines,
                window,
                max_reconnects: 30,
                pace: speed,
                identity: cert.zip(key),
            };
            let mut report = edgeflow::client::SendReport::default();
            let batches = edgeflow::client::batches(&file, encoding, batch_lines, &mut report)?;
            let bar = std::io::stderr()
                .is_terminal()
                .then(|| indicatif::ProgressBar::new(batches.len() as u64));
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            let sent = runtime.block_on(edgeflow::client::send(&opts, batches, |done, _| {
                if let Some(b) = &bar {
                    b.set_position(done);
                }
            }))?;
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            for (batch, index, message) in &sent.rejections {
                eprintln!("batch {batch} record {index}: {message}");
            }
            eprintln!(
                "sent {} batches: {} records accepted, {} rejected, {} not convertible, {} reconnects{}",
                sent.batches, sent.accepted, sent.rejected, report.unconvertible, sent.reconnects,
                [
                    (sent.already_durable, "the node had from an earlier run"),
                    (sent.durable_unanswered, "were durable but their answer was lost"),
                ]
                .iter()
                .filter(|(n, _)| *n > 0)
                .map(|(n, what)| format!("; {n} batches {what} (their records are not counted above)"))
                .collect::<String>()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(args) => {
            edgeflow::demo::run(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Certs {
            out,
            names,
            client: Some(name),
            force,
        } => {
            let _ = names;
            let (cert, key) = edgeflow::node::issue_client_cert(&out, &name, force)?;
            println!("client certificate: {}", cert.display());
            println!("client key: {}", key.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Certs {
            out,
            names,
            client: None,
            force,
        } => {
            let paths = edgeflow::node::make_certs_in(&out, &names, force)?;
            println!("CA (give to clients): {}", paths.ca.display());
            println!(
                "CA key (keep it safe; issues client certificates): {}",
                paths.ca_key.display()
            );
            println!("server certificate: {}", paths.cert.display());
            println!("server key: {}", paths.key.display());
            println!(
                "client certificate: {} (key {})",
                paths.client_cert.display(),
                paths.client_key.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::BenchSubscribe(args) => {
            println!("{}", edgeflow::bench_subscribe::run(&args)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::BenchMatch(args) => {
            println!("{}", edgeflow::bench_match::run(&args)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::BenchIngest(args) => {
            println!("{}", edgeflow::bench_ingest::run(&args)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Subscribe {
            to,
            token,
            ca,
            server_name,
            kind,
            ids,
            bbox,
            provisional,
            format,
        } => {
            use edgeflow::subscribe::client::{
                filter, json_line, subscribe, State, SubscribeOptions,
            };
            use std::io::Write;
            let (addr, host) = resolve(&to)?;
            let mut request = SubscribeOptions::request(&token, &kind);
            request.filter = filter(ids.as_deref(), bbox.as_deref())?;
            if provisional {
                request.mode = "provisional".into();
            }
            let opts = SubscribeOptions {
                to: addr,
                server_name: server_name.unwrap_or(host),
                ca,
                request,
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?;
            // The table shows the newest windows: retired rows can go.
            let mut state = State {
                forget_retired: true,
                ..State::default()
            };
            let mut out = std::io::stdout().lock();
            let error = runtime.block_on(subscribe(&opts, |frame| {
                state.apply(frame);
                let text = match format {
                    SubFormat::Jsonl => Some(json_line(frame) + "\n"),
                    SubFormat::Table => {
                        matches!(frame, edgeflow::subscribe::proto::SubFrame::Progress(_))
                            .then(|| subscription_table(&state, &kind))
                    }
                };
                // A closed stdout (a pipe that went away) ends the subscription.
                text.is_none_or(|t| {
                    out.write_all(t.as_bytes())
                        .and_then(|()| out.flush())
                        .is_ok()
                })
            }))?;
            match error {
                Some(e) => {
                    eprintln!("edgeflow: subscription ended: {e}");
                    Ok(ExitCode::FAILURE)
                }
                None => Ok(ExitCode::SUCCESS),
            }
        }
        Command::Simulate {
            to,
            token,
            ca,
            topology,
            vehicles,
            connections,
            seconds,
        } => {
            let topo = load_topology(&topology)?;
            let (addr, host) = resolve(&to)?;
            let connections = connections.clamp(1, vehicles.max(1));
            // Each connection batches its vehicles' reports of one 2 s round.
            let per_connection = vehicles.div_ceil(connections).max(1);
            let load = edgeflow::loadgen::Load {
                target: edgeflow::client::SendOptions {
                    to: addr,
                    server_name: host,
                    ca,
                    token,
                    sender: "sim".into(),
                    encoding: edgeflow::log::Encoding::Cbor,
                    batch_lines: per_connection,
                    window: 4,
                    max_reconnects: 0,
                    pace: None,
                    identity: None,
                },
                connections,
                batch_records: per_connection,
                batches: None,
                duration: std::time::Duration::from_secs(seconds),
                interval: Some(std::time::Duration::from_secs(2)),
                window: 4,
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            let mut report =
                runtime.block_on(edgeflow::loadgen::run(&load, Arc::new(topo.reference)))?;
            let (p50, p99) = (report.latency_ms(0.5), report.latency_ms(0.99));
            eprintln!(
                "simulated {vehicles} vehicles over {connections} connections for {seconds} s: {} records accepted, {} rejected, ack latency p50 {:.1} ms p99 {:.1} ms, {} connections failed",
                report.accepted,
                report.rejected,
                p50,
                p99,
                report.failed_connections
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::BenchOne(args) => {
            println!("{}", edgeflow::bench::run_one(&args)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_summary(s: &RunSummary, workers: usize, out: &std::path::Path) {
    let i = &s.ingest;
    for (line, message) in &i.errors {
        eprintln!("line {line}: {message}");
    }
    if i.rejected_total() > i.errors.len() as u64 {
        eprintln!(
            "... and {} more rejected records",
            i.rejected_total() - i.errors.len() as u64
        );
    }
    let reasons: Vec<String> = edgeflow::model::RejectReason::ALL
        .iter()
        .filter(|r| i.rejected[r.index()] > 0)
        .map(|r| format!("{} {}", r.as_str(), i.rejected[r.index()]))
        .collect();
    eprintln!(
        "replayed {} records with {workers} worker(s) in {:.2} s ({:.0} records/s)",
        i.records,
        s.elapsed.as_secs_f64(),
        s.records_per_s()
    );
    eprintln!(
        "  accepted {} vehicle + {} charger; rejected {}{}",
        i.vehicle,
        i.charger,
        i.rejected_total(),
        if reasons.is_empty() {
            String::new()
        } else {
            format!(" ({})", reasons.join(", "))
        }
    );
    eprintln!(
        "  late {} (window still open), late-corrected {}, dropped past retention {}",
        i.late, i.corrections, i.expired
    );
    if i.energy_resets + i.energy_capped > 0 {
        eprintln!(
            "  charger windows: {} energy registers went backwards (counted from their lowest reading), {} capped as beyond rated power",
            i.energy_resets, i.energy_capped
        );
    }
    let unmatched: Vec<String> = edgeflow::geo::Unmatched::ALL
        .iter()
        .filter(|u| i.unmatched[u.index()] > 0)
        .map(|u| format!("{} {}", u.name(), i.unmatched[u.index()]))
        .collect();
    eprintln!(
        "  map-matched {} vehicle reports; unmatched {}{}",
        i.map_matched,
        i.unmatched_total(),
        if unmatched.is_empty() {
            String::new()
        } else {
            format!(" ({})", unmatched.join(", "))
        }
    );
    eprintln!(
        "  windows emitted {} final, {} corrections; wrote the CSV files to {}",
        s.emitted.finals,
        s.emitted.corrections,
        out.display()
    );
}
