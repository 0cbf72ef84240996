//! The command line: one module per subcommand, each an argument struct
//! and a `run` that returns the exit code. The subcommands that talk to a
//! node (`send`, `subscribe`, `simulate`) share one argument group,
//! [`Target`]. Everything else lives in the library; this is the shell
//! that maps what a person types to it.

/// `println!` for command output: a reader that went away (`| head`)
/// ends the process quietly instead of a panic.
macro_rules! say {
    ($($t:tt)*) => {
        $crate::cli::say(format_args!($($t)*))
    };
}

mod certs;
mod edge;
mod probe;
mod replay;
mod send;
mod simulate;
mod subscribe;
mod token;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

use edgeflow::tools;
use edgeflow::topology::Topology;

/// The version and the git revision built from.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("EDGEFLOW_GIT_REVISION"),
    ")"
);

/// edgeflow: edge stream processing of city mobility and energy telemetry.
#[derive(Parser)]
#[command(version = VERSION, about, after_help = AFTER_HELP)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How log lines are written to stderr: `text` (for a person) or
    /// `json` (one object per line, for a log shipper). Which lines: the
    /// `RUST_LOG` filter (`info` unless set; e.g. `edgeflow=debug`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "EDGEFLOW_LOG_FORMAT")]
    log_format: LogFormat,
}

/// `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// `2026-12-03T17:58:00.123Z  INFO edgeflow::node: listening ...`
    Text,
    /// `{"timestamp":"...","level":"INFO","fields":{"message":"..."},"target":"..."}`
    Json,
}

/// Installs the log subscriber: lines on stderr, filtered by `RUST_LOG`.
fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second subscriber (never here: once per process) would be refused.
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

#[derive(Subcommand)]
enum Command {
    /// Check a topology file and its reference data; print every problem.
    #[command(after_help = "Example:\n  edgeflow validate topologies/karhula.toml")]
    Validate(validate::Args),
    /// Run an edge node
    ///
    /// QUIC ingest, durable log, live dataflow, sinks (the topology has
    /// [ingest], [log], [[fleet]]). Stops gracefully on SIGINT/SIGTERM;
    /// reloads the topology on SIGHUP or when its file changes.
    #[command(after_help = "Example:\n  edgeflow edge --topology /etc/edgeflow/topology.toml")]
    Edge(edge::Args),
    /// Run a central node
    ///
    /// Edges push their partials over QUIC (edgeflow-push/1), merged
    /// city-wide into the same files sink and subscriptions as an edge's.
    #[command(after_help = "Example:\n  edgeflow central --topology /etc/edgeflow/central.toml")]
    Central(edge::Args),
    /// Make development certificates
    ///
    /// A CA (its key kept, 0600), a server certificate and a client
    /// certificate (PEM) for local nodes; or, with --client, another client
    /// certificate from the CA in --out.
    #[command(
        after_help = "Examples:\n  edgeflow certs --out certs --names localhost,127.0.0.1,edge1.example.org\n  edgeflow certs --out certs --client bus-depot-3"
    )]
    Certs(certs::Args),
    /// Make a token for a fleet, an operator or an edge
    ///
    /// Prints it (or writes it to --out) and the `token_sha256` line for
    /// the node's topology.
    #[command(
        after_help = "Example:\n  edgeflow token --out buses.token   # prints the topology's token_sha256 line"
    )]
    Token(token::Args),
    /// Send a recording to an edge node
    ///
    /// Streams a JSON Lines file, resending what was not acknowledged after
    /// a reconnect.
    #[command(
        after_help = "Example:\n  edgeflow send --to localhost:4433 --ca certs/ca.pem --token-file buses.token telemetry.jsonl"
    )]
    Send(send::Args),
    /// Send live synthetic traffic to a node
    ///
    /// Real QUIC connections, one per vehicle fleet gateway, records
    /// stamped with the wall clock.
    #[command(
        after_help = "Example:\n  edgeflow simulate --to localhost:4433 --ca certs/ca.pem --token-file buses.token --vehicles 500 --seconds 120"
    )]
    Simulate(simulate::Args),
    /// Follow a node's live aggregates as an operator
    ///
    /// The current rows, then every change (docs/PROTOCOL.md,
    /// "Subscriptions"): a live table on a terminal, or JSON Lines.
    #[command(
        after_help = "Examples:\n  edgeflow subscribe --to localhost:4433 --ca certs/ca.pem --token-file city.token --kind congestion\n  edgeflow subscribe --to localhost:4433 --ca certs/ca.pem --token-file city.token --kind zone --format jsonl > zones.jsonl"
    )]
    Subscribe(subscribe::Args),
    /// Replay a recording or a node's log through the dataflow
    ///
    /// JSON Lines (optionally .gz) or an edge node's log directory; writes
    /// the final tables (congestion.csv, charging.csv, zones.csv).
    #[command(
        after_help = "Examples:\n  edgeflow replay --topology topologies/karhula.toml recording.jsonl.gz --out results\n  # one dataflow over two processes, each reading its own devices' records:\n  edgeflow replay --topology T part-1.jsonl --out r --process 1 --peers 10.0.0.1:7000,10.0.0.2:7000 &\n  edgeflow replay --topology T part-0.jsonl --out r --process 0 --peers 10.0.0.1:7000,10.0.0.2:7000"
    )]
    Replay(replay::Args),
    /// Check a node's /health or /ready
    ///
    /// One HTTP GET (a container health check without curl): exit 0 on
    /// 200, else 1.
    #[command(after_help = "Example:\n  edgeflow probe http://127.0.0.1:9464/ready")]
    Probe(probe::Args),
    /// Watch a node at work on the bundled Karhula topology
    ///
    /// Starts an edge node on loopback, sends it the recorded telemetry
    /// over QUIC and shows the aggregates live.
    #[command(after_help = "Example:\n  edgeflow demo")]
    Demo(tools::demo::DemoArgs),
    /// Print a shell completion script
    ///
    /// For bash, zsh, fish, elvish or powershell, to stdout.
    #[command(
        after_help = "Examples:\n  edgeflow completions bash > /etc/bash_completion.d/edgeflow\n  edgeflow completions zsh > \"${fpath[1]}/_edgeflow\""
    )]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Measure the replay path on synthetic telemetry against a plain
    /// single-threaded loop; prints one JSON object.
    #[command(hide = true)]
    Bench(tools::bench::BenchArgs),
    /// Measure an edge node (own process, durable log) under synthetic QUIC
    /// load; prints one JSON object.
    #[command(hide = true)]
    BenchIngest(tools::bench_ingest::IngestBenchArgs),
    /// Measure map matching on a topology's road network (one core),
    /// against the same rule without the spatial index; prints one JSON
    /// object.
    #[command(hide = true)]
    BenchMatch(tools::bench_match::MatchBenchArgs),
    /// Measure the replay path on a noisy recording with the point matcher
    /// and with the HMM; prints one JSON object.
    #[command(hide = true)]
    BenchMatching(tools::bench_matching::MatchingBenchArgs),
    /// Measure ingest with subscribers (none, many, many plus a slow one),
    /// each phase on a fresh node process; prints one JSON object.
    #[command(hide = true)]
    BenchSubscribe(tools::bench_subscribe::SubscribeBenchArgs),
    /// Measure the live map: a browser's frame times with ~20,000 segments
    /// updating every second, and the node's ingest with pages' feeds
    /// open; prints one JSON object.
    #[command(hide = true)]
    BenchWeb(tools::bench_web::WebBenchArgs),
    /// Measure central's merge of edges' partials (the dataflow alone, in
    /// one process); prints one JSON object.
    #[command(hide = true)]
    BenchCentral(tools::bench_central::CentralBenchArgs),
    /// Measure edges pushing to a central node over QUIC (durable acks):
    /// updates applied per second, live and after an outage.
    #[command(hide = true)]
    BenchPush(tools::bench_push::PushBenchArgs),
    /// Measure the postgres sink: aggregate rows upserted into a
    /// PostgreSQL database per second (inserts and updates).
    #[command(hide = true)]
    BenchPostgres(tools::bench_postgres::PostgresBenchArgs),
    /// Measure the city sinks: NGSI-LD entities/s to the test broker, MQTT
    /// messages/s to a local Mosquitto, an edge's ingest with and without
    /// them.
    #[command(hide = true)]
    BenchSinks(tools::bench_sinks::SinksBenchArgs),
    /// Measure one site as several processes (timely's cluster mode)
    /// against one process: replay of a synthetic city (byte-identical,
    /// exchange bytes) and live ingest; prints one JSON object.
    #[command(hide = true)]
    BenchCluster(tools::bench_cluster::ClusterBenchArgs),
    /// One measured run of `bench`, in a fresh process (used by `bench`).
    #[command(hide = true)]
    BenchOne(tools::bench::RunOneArgs),
}

/// Listed under the commands in `edgeflow --help` (the benchmarks are
/// hidden from the operational list; a test holds this list to them).
pub const AFTER_HELP: &str = "\
Benchmarks (each prints one JSON object; `edgeflow help NAME` for its options):
  bench            the replay path against a plain single-threaded loop
  bench-ingest     an edge node under synthetic QUIC load (durable acks)
  bench-match      map matching on a road network, one core
  bench-matching   replay of a noisy recording, point matcher against HMM
  bench-subscribe  ingest with subscribers (none, many, a slow one)
  bench-central    central's merge of edges' partials
  bench-push       edges pushing to central over QUIC, live and after an outage
  bench-postgres   the postgres sink's upserts
  bench-sinks      the city sinks (NGSI-LD, MQTT) and ingest beside them
  bench-cluster    a site of several processes against one process

Exit codes:
  0  done
  1  done, and the answer is no: a topology with problems (validate), a probe
     not answered 200, a subscription the node ended, connections that failed
     (simulate)
  2  could not do it: bad arguments, unreadable files, a node that cannot be
     reached or refused TLS, a node that failed to start
  3  a process of a cluster (edge --process, replay --process) lost another
     process of its site: restart every process of the site

Environment: EDGEFLOW_TOKEN (a client's token), EDGEFLOW_LOG_FORMAT (text or
json), RUST_LOG (which log lines, e.g. edgeflow=debug).";

/// Runs one command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    init_logging(cli.log_format);
    match cli.command {
        Command::Validate(args) => validate::run(args),
        Command::Probe(args) => probe::run(args),
        Command::Token(args) => token::run(args),
        Command::Replay(args) => replay::run(args),
        Command::Edge(args) => edge::run(args, edgeflow::node::Role::Edge),
        Command::Central(args) => edge::run(args, edgeflow::node::Role::Central),
        Command::Send(args) => send::run(args),
        Command::Demo(args) => tools::demo::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Certs(args) => certs::run(args),
        Command::Subscribe(args) => subscribe::run(args),
        Command::Simulate(args) => simulate::run(args),
        Command::Bench(args) => print_json(tools::bench::run(&args)),
        Command::BenchIngest(args) => print_json(tools::bench_ingest::run(&args)),
        Command::BenchCluster(args) => print_json(tools::bench_cluster::run(&args)),
        Command::BenchMatch(args) => print_json(tools::bench_match::run(&args)),
        Command::BenchMatching(args) => print_json(tools::bench_matching::run(&args)),
        Command::BenchSubscribe(args) => print_json(tools::bench_subscribe::run(&args)),
        Command::BenchWeb(args) => print_json(tools::bench_web::run(&args)),
        Command::BenchCentral(args) => print_json(tools::bench_central::run(&args)),
        Command::BenchPush(args) => print_json(tools::bench_push::run(&args)),
        Command::BenchPostgres(args) => print_json(tools::bench_postgres::run(&args)),
        Command::BenchSinks(args) => print_json(tools::bench_sinks::run(&args)),
        Command::BenchOne(args) => print_json(tools::bench::run_one(&args)),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "edgeflow", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A benchmark's report, one JSON object on stdout.
fn print_json(report: anyhow::Result<serde_json::Value>) -> anyhow::Result<ExitCode> {
    say!("{}", report?);
    Ok(ExitCode::SUCCESS)
}

/// The topology a dataflow runs with, and its worker count.
#[derive(clap::Args)]
pub struct Dataflow {
    /// The topology file (TOML).
    #[arg(long)]
    topology: PathBuf,
    /// Worker threads (default: the topology's `dataflow.workers`).
    #[arg(long)]
    workers: Option<usize>,
}

impl Dataflow {
    /// The topology (or its problems on stderr) and the worker count,
    /// checked against [`edgeflow::topology::MAX_WORKERS`].
    fn load(&self) -> anyhow::Result<(Topology, usize)> {
        let topology = load_topology(&self.topology)?;
        let workers = self.workers.unwrap_or(topology.workers);
        if workers == 0 || workers > edgeflow::topology::MAX_WORKERS {
            bail!(
                "--workers must be between 1 and {}",
                edgeflow::topology::MAX_WORKERS
            );
        }
        Ok((topology, workers))
    }
}

/// The node a client command talks to, and how it proves who it is.
#[derive(clap::Args)]
pub struct Target {
    /// The node, HOST:PORT.
    #[arg(long)]
    to: String,
    /// Bearer token: a fleet's (send, simulate) or an operator's
    /// (subscribe). On the command line it shows in `ps`: prefer
    /// --token-file or the EDGEFLOW_TOKEN variable.
    #[arg(long, env = "EDGEFLOW_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file holding the token (its first line; `edgeflow token --out`
    /// writes one).
    #[arg(long, conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// CA certificate (PEM) to trust (from `edgeflow certs`).
    #[arg(long)]
    ca: PathBuf,
    /// TLS server name (default: the host of --to).
    #[arg(long)]
    server_name: Option<String>,
    /// Client certificate (PEM), for nodes that require mTLS
    /// (`[ingest] client_ca`).
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// Client key (PEM), with --cert.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
}

impl Target {
    /// The client certificate and key, when given.
    fn identity(&self) -> Option<(PathBuf, PathBuf)> {
        self.cert.clone().zip(self.key.clone())
    }

    /// The token: from --token-file, or --token / EDGEFLOW_TOKEN.
    fn token(&self) -> anyhow::Result<String> {
        match (&self.token_file, &self.token) {
            (Some(path), _) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read the token file {}", path.display()))?;
                let token = text.lines().next().unwrap_or("").trim().to_owned();
                if token.is_empty() {
                    bail!("the token file {} is empty", path.display());
                }
                Ok(token)
            }
            (None, Some(token)) if !token.is_empty() => Ok(token.clone()),
            _ => bail!(
                "no token: give it with --token-file FILE or the EDGEFLOW_TOKEN variable (or --token, which shows in ps)"
            ),
        }
    }

    /// The node's address and the TLS server name: `--server-name`, or
    /// the host of `--to`.
    fn resolve(&self) -> anyhow::Result<(SocketAddr, String)> {
        use std::net::ToSocketAddrs;
        let to = &self.to;
        let port = to.rsplit_once(':').map(|(_, p)| p);
        if port.is_none_or(|p| p.parse::<u16>().is_err()) {
            bail!("--to {to}: give the node as HOST:PORT, the port of its [ingest] listen (e.g. localhost:4433, [::1]:4433)");
        }
        let addr = to
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve {to}"))?
            .next()
            .ok_or_else(|| anyhow::anyhow!("{to} resolves to no address"))?;
        let host = to
            .rsplit_once(':')
            .map_or(to.as_str(), |(h, _)| h)
            .trim_matches(['[', ']']);
        Ok((
            addr,
            self.server_name.clone().unwrap_or_else(|| host.to_owned()),
        ))
    }
}

/// A topology, or every problem it has on stderr and an error naming the
/// command that lists them.
fn load_topology(path: &Path) -> anyhow::Result<Topology> {
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

/// `--speed`: a pace of at least 0.001 times event time.
fn check_speed(speed: Option<f64>) -> anyhow::Result<()> {
    match speed {
        Some(s) if !(s.is_finite() && s >= 0.001) => {
            bail!("--speed must be a number >= 0.001 (times event time), got {s}")
        }
        _ => Ok(()),
    }
}

/// A spinner with `message` and the time elapsed on stderr, when it is a
/// terminal.
fn progress_spinner(message: String) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new_spinner().with_message(message);
        if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
            bar.set_style(style);
        }
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        bar
    })
}

/// A progress bar on stderr when it is a terminal.
fn progress_bar(total: u64) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    std::io::stderr()
        .is_terminal()
        .then(|| indicatif::ProgressBar::new(total))
}

/// Writes a line to stdout; exits 0 when stdout is closed (a pipe's
/// reader went away: the output is not wanted).
pub fn say(args: std::fmt::Arguments) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let written = (out.write_fmt(args))
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    if let Err(e) = written {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("edgeflow: cannot write to stdout: {e}");
    }
}
