//! Topology files (TOML): what one node is, where its reference data lives,
//! its event-time windows and its dataflow.
//!
//! ```toml
//! [node]
//! id = "karhula-edge-1"
//! [reference]
//! roads = "karhula/roads.geojson"        # relative to the topology file
//! chargers = "karhula/chargers.geojson"
//! [windows]
//! size = "60s"
//! allowed_lateness = "5s"
//! retention = "15m"
//! [dataflow]
//! workers = 2
//! [matching]                 # map matching of reports without segment_id
//! radius_m = 25
//! heading_tolerance_deg = 45
//! end_slack_m = 0
//! [zones]                    # roll-ups; named zones: [reference] zones = "x.geojson"
//! h3_resolution = 8
//! low_soc_pct = 20
//! position_resolution = 11   # where EVs' positions land in zones
//! max_position_cells = 1000000
//! ```
//!
//! Unknown keys are errors (collected with `serde_ignored`, all of them, each
//! with its line; a sink's keys by `deny_unknown_fields`): a typo must not silently
//! fall back to a default. [`Topology::load`] reports every problem at once,
//! in the topology and in its reference files, each with its place.
//!
//! Four files: [`file`](mod@file) (the serde sections as written, with defaults),
//! [`check`] and [`sinks`] (validation: every problem at once, paths resolved, hashes
//! and kinds decoded, durations parsed) and this one, the validated types
//! the rest of the node uses. Nothing past validation sees a serde section.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::aggregate::Kind;
use crate::reference::Reference;
use crate::time::TimeSpec;

pub mod check;
pub mod file;
mod serving;
pub mod sinks;

pub use file::TopologyFile;

/// Largest accepted topology file, bytes.
pub const MAX_TOPOLOGY_BYTES: u64 = 1 << 20;
/// Most worker threads a topology may ask for.
pub const MAX_WORKERS: usize = 256;
/// Largest `[ingest] max_frame_bytes`: a BATCH frame (8-byte batch number,
/// 1-byte encoding, records) whose records fit one log entry with the
/// longest sender id.
pub const MAX_FRAME_BYTES: usize =
    crate::log::MAX_ENTRY_BYTES + 9 - crate::log::ENTRY_OVERHEAD + 8 - crate::log::MAX_SENDER_LEN;
/// Default of `privacy.min_vehicles`.
pub const DEFAULT_MIN_VEHICLES: u64 = 3;
/// Default of `subscriptions.max_pending`: with one queued change per row
/// (about 100 bytes each), at most ~100 MB for a subscriber that reads
/// nothing; the whole retained congestion of a 20,000-segment city fits.
pub const DEFAULT_MAX_PENDING: usize = 1_000_000;
/// Default of `subscriptions.max_lag`.
pub const DEFAULT_MAX_LAG: Duration = Duration::from_secs(30);

/// A fleet allowed to send telemetry.
#[derive(Clone, Debug)]
pub struct Fleet {
    /// Name.
    pub name: String,
    /// SHA-256 of its token.
    pub token_sha256: [u8; 32],
}

/// A mobility operator and its scopes, as the subscription server checks
/// them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operator {
    /// Name (for logs).
    pub name: String,
    /// SHA-256 of its token.
    pub token_sha256: [u8; 32],
    /// Kinds it may see.
    pub kinds: Vec<Kind>,
    /// Segments it may see, by id; `None`: all.
    pub segments: Option<Vec<String>>,
    /// Chargers, by id.
    pub chargers: Option<Vec<String>>,
    /// Zones, by id.
    pub zones: Option<Vec<String>>,
}

/// A loaded, validated topology with its reference data.
#[derive(Debug, Clone)]
pub struct Topology {
    /// Node id.
    pub node_id: String,
    /// The topology file.
    pub path: PathBuf,
    /// Windows and lateness.
    pub time: TimeSpec,
    /// Worker threads.
    pub workers: usize,
    /// Roads and chargers.
    pub reference: Reference,
    /// SHA-256 (hex) of the roads file followed by the chargers file,
    /// recorded in checkpoints.
    pub reference_sha256: String,
    /// QUIC ingest, with paths resolved.
    pub ingest: Option<Ingest>,
    /// Log directory and segment size, with the path resolved.
    pub log: Option<Log>,
    /// Fleets, with their token hashes decoded.
    pub fleets: Vec<Fleet>,
    /// Sinks, with paths resolved.
    pub sinks: Vec<Sink>,
    /// The named zone file, resolved (its zones are in `reference`).
    pub zone_file: Option<PathBuf>,
    /// Operators, with their token hashes and kinds decoded.
    pub operators: Vec<Operator>,
    /// `privacy.min_vehicles`.
    pub privacy_min_vehicles: u64,
    /// `subscriptions.max_pending`.
    pub sub_max_pending: usize,
    /// `subscriptions.max_lag`.
    pub sub_max_lag: Duration,
    /// Edges that may push (the `central` role).
    pub edges: Vec<Fleet>,
    /// `[observability] listen`: where `/metrics`, `/health` and `/ready`
    /// are served.
    pub observability: Option<std::net::SocketAddr>,
    /// `[central] straggler_timeout`.
    pub straggler_timeout: Duration,
    /// `[cluster]`: this node as one process of a site. The file gives the
    /// addresses; the process index comes from the command line
    /// (`--process`, `EDGEFLOW_PROCESS`), 0 until it is set.
    pub cluster: Option<crate::runtime::Cluster>,
    /// `[web]`: the live map's listener.
    pub web: Option<Web>,
}

/// `[web]`: the live map's HTTP listener (`src/web/`).
#[derive(Debug, Clone, PartialEq)]
pub struct Web {
    /// Address.
    pub listen: SocketAddr,
    /// HTTPS with the node's `[ingest]` certificate and key.
    pub tls: bool,
    /// Connections served at once.
    pub max_connections: usize,
    /// Largest request head or body, bytes.
    pub max_request_bytes: usize,
    /// How long a sign-in lasts.
    pub session_ttl: Duration,
    /// A basemap tile URL template, if any.
    pub basemap: Option<String>,
    /// Shortest time between two updates of a page's feed (per kind).
    pub feed_interval: Duration,
}

impl Web {
    /// Default `max_connections`.
    pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
    /// Default `max_request_bytes`.
    pub const DEFAULT_MAX_REQUEST_BYTES: usize = 16 * 1024;
    /// Default `feed_interval`: four updates a second at most, well within
    /// the second a change may take to reach a page.
    pub const DEFAULT_FEED_INTERVAL: Duration = Duration::from_millis(250);
    /// Default `session_ttl`.
    pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

    /// The settings with their defaults, listening on `listen`.
    pub fn new(listen: SocketAddr) -> Web {
        Web {
            listen,
            tls: false,
            max_connections: Web::DEFAULT_MAX_CONNECTIONS,
            max_request_bytes: Web::DEFAULT_MAX_REQUEST_BYTES,
            session_ttl: Web::DEFAULT_SESSION_TTL,
            basemap: None,
            feed_interval: Web::DEFAULT_FEED_INTERVAL,
        }
    }
}

/// Default `[central] straggler_timeout`.
pub const DEFAULT_STRAGGLER_TIMEOUT: Duration = Duration::from_secs(300);
/// Default `max_backlog` of a city sink (rows waiting at most).
pub const DEFAULT_SINK_MAX_BACKLOG: usize = 1_000_000;
/// Default `max_hold` of a central sink.
pub const DEFAULT_MAX_HOLD: Duration = Duration::from_secs(3600);

/// `[ingest]` validated: the QUIC endpoint, paths resolved, durations
/// parsed.
#[derive(Debug, Clone)]
pub struct Ingest {
    /// Listen address.
    pub listen: SocketAddr,
    /// Server certificate chain (PEM).
    pub cert: PathBuf,
    /// Server private key (PEM).
    pub key: PathBuf,
    /// mTLS: the CA every client certificate must be signed by.
    pub client_ca: Option<PathBuf>,
    /// Sizes and counts.
    pub limits: IngestLimits,
    /// Close a connection silent this long.
    pub idle_timeout: Duration,
    /// Close a connection that sends no HELLO this long.
    pub hello_timeout: Duration,
    /// Shutdown grace for batches under way.
    pub drain_timeout: Duration,
    /// Deadline of one batch's arrival.
    pub batch_timeout: Duration,
}

impl Ingest {
    /// An endpoint on `listen` with the default limits and timeouts.
    pub fn new(listen: SocketAddr, cert: PathBuf, key: PathBuf) -> Self {
        Ingest {
            listen,
            cert,
            key,
            client_ca: None,
            limits: IngestLimits::default(),
            idle_timeout: Ingest::DEFAULT_IDLE,
            hello_timeout: Ingest::DEFAULT_HELLO,
            drain_timeout: Ingest::DEFAULT_DRAIN,
            batch_timeout: Ingest::DEFAULT_BATCH,
        }
    }
    /// Default `idle_timeout`.
    pub const DEFAULT_IDLE: Duration = Duration::from_secs(30);
    /// Default `hello_timeout`.
    pub const DEFAULT_HELLO: Duration = Duration::from_secs(5);
    /// Default `drain_timeout`.
    pub const DEFAULT_DRAIN: Duration = Duration::from_secs(10);
    /// Default `batch_timeout`.
    pub const DEFAULT_BATCH: Duration = Duration::from_secs(60);
}

/// The sizes and counts of `[ingest]` (each key is documented on
/// [`file::IngestSection`]; the defaults are here).
#[derive(Debug, Clone, Copy)]
pub struct IngestLimits {
    /// Largest frame, bytes.
    pub max_frame_bytes: usize,
    /// Concurrent authenticated connections.
    pub max_connections: usize,
    /// Concurrent batch streams per connection.
    pub max_streams: u32,
    /// Records per second one connection may send.
    pub max_records_per_s: u64,
    /// Per-connection QUIC receive window, bytes.
    pub receive_window: u64,
    /// Bytes buffered for frames still arriving, all connections together.
    pub max_buffered_bytes: usize,
    /// Connections not yet authenticated, node-wide.
    pub max_unauthenticated: usize,
    /// Connections not yet authenticated from one IP address.
    pub max_unauthenticated_per_source: usize,
}

impl Default for IngestLimits {
    fn default() -> Self {
        IngestLimits {
            max_frame_bytes: 4 << 20,
            max_connections: 20_000,
            max_streams: 32,
            max_records_per_s: 200_000,
            receive_window: 8 << 20,
            max_buffered_bytes: 256 << 20,
            max_unauthenticated: 1024,
            max_unauthenticated_per_source: 32,
        }
    }
}

/// `[log]` validated.
#[derive(Debug, Clone)]
pub struct Log {
    /// Directory, resolved.
    pub dir: PathBuf,
    /// Segment size before rolling (at least 4 KiB).
    pub segment_bytes: u64,
    /// What damage that is not a torn tail does.
    pub on_corruption: crate::log::OnCorruption,
}

/// A `[[sink]]` validated.
#[derive(Debug, Clone)]
pub enum Sink {
    /// The final tables as CSV files in a directory (resolved).
    Files {
        /// Directory.
        dir: PathBuf,
    },
    /// Partials pushed to a central node.
    Central(CentralSink),
    /// Entities upserted to an NGSI-LD broker.
    Ngsi(NgsiSink),
    /// Rows published to an MQTT broker.
    Mqtt(MqttSink),
    /// Rows upserted into PostgreSQL/PostGIS.
    Postgres(PostgresSink),
}

impl Sink {
    /// The sink's name, for what it says and counts.
    pub fn name(&self) -> &str {
        match self {
            Sink::Files { .. } => "files",
            Sink::Central(_) => "central",
            Sink::Ngsi(n) => &n.name,
            Sink::Mqtt(m) => &m.name,
            Sink::Postgres(p) => &p.name,
        }
    }
}

/// Default entities per NGSI-LD request.
pub const DEFAULT_NGSI_MAX_ENTITIES: usize = 1000;
/// Default bytes per NGSI-LD request body.
pub const DEFAULT_NGSI_MAX_BYTES: usize = 1 << 20;
/// Default NGSI-LD requests in flight.
pub const DEFAULT_NGSI_IN_FLIGHT: usize = 4;
/// Default time an NGSI-LD request may take.
pub const DEFAULT_NGSI_TIMEOUT: Duration = Duration::from_secs(10);
/// Default @context of NGSI-LD entities: the Smart Data Models'
/// Transportation domain (edgeflow's own terms then expand in the broker's
/// default vocabulary; docs/ngsi-ld/context.jsonld adds them properly).
pub const DEFAULT_NGSI_CONTEXT: &str =
    "https://raw.githubusercontent.com/smart-data-models/dataModel.Transportation/master/context.jsonld";

/// Default MQTT messages per batch.
pub const DEFAULT_MQTT_MAX_MESSAGES: usize = 1000;
/// Default MQTT batches in flight.
pub const DEFAULT_MQTT_IN_FLIGHT: usize = 4;
/// Default time an MQTT batch may wait for its acknowledgements.
pub const DEFAULT_MQTT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default message expiry of retained MQTT finals.
pub const DEFAULT_MQTT_RETAIN_EXPIRY: Duration = Duration::from_secs(3600);
/// Default PostgreSQL rows per batch.
pub const DEFAULT_PG_MAX_ROWS: usize = 5000;
/// Default PostgreSQL batches in flight.
pub const DEFAULT_PG_IN_FLIGHT: usize = 2;
/// Default time a PostgreSQL batch may take.
pub const DEFAULT_PG_TIMEOUT: Duration = Duration::from_secs(30);

/// A `[[sink]] type = "mqtt"` validated.
#[derive(Debug, Clone)]
pub struct MqttSink {
    /// Its name.
    pub name: String,
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// TLS (`mqtts://`).
    pub tls: bool,
    /// Client id; default `edgeflow-<node>-<name>`.
    pub client_id: Option<String>,
    /// Topic prefix.
    pub topic_prefix: String,
    /// Kinds published.
    pub kinds: Vec<crate::aggregate::Kind>,
    /// Provisional values published too (not retained).
    pub provisional: bool,
    /// Message expiry of retained finals.
    pub retain_expiry: Duration,
    /// User name and password.
    pub credentials: Option<(String, String)>,
    /// Extra CA to trust, resolved.
    pub ca: Option<PathBuf>,
    /// Messages per batch at most.
    pub max_messages: usize,
    /// Batches in flight at most.
    pub max_in_flight: usize,
    /// Longest a batch may wait for its acknowledgements.
    pub timeout: Duration,
    /// Longest the log keeps windows the broker has not acknowledged.
    pub max_hold: Duration,
    /// Rows waiting at most; past it the oldest are given up.
    pub max_backlog: usize,
}

/// A `[[sink]] type = "postgres"` validated.
#[derive(Debug, Clone)]
pub struct PostgresSink {
    /// Its name.
    pub name: String,
    /// Connection URL (without the password).
    pub url: String,
    /// The password.
    pub password: Option<String>,
    /// Extra CA to trust for TLS, resolved.
    pub ca: Option<PathBuf>,
    /// The tables' schema.
    pub schema: String,
    /// Kinds written.
    pub kinds: Vec<crate::aggregate::Kind>,
    /// Rows per batch at most.
    pub max_rows: usize,
    /// Batches in flight at most.
    pub max_in_flight: usize,
    /// Longest a batch may take.
    pub timeout: Duration,
    /// Longest the log keeps windows the database has not acknowledged.
    pub max_hold: Duration,
    /// Rows waiting at most; past it the oldest are given up.
    pub max_backlog: usize,
}

/// A `[[sink]] type = "ngsi-ld"` validated.
#[derive(Debug, Clone)]
pub struct NgsiSink {
    /// Its name.
    pub name: String,
    /// The broker's base URL, without a trailing slash.
    pub url: String,
    /// The @context URL (the `Link` header).
    pub context: String,
    /// `NGSILD-Tenant`.
    pub tenant: Option<String>,
    /// Bearer token.
    pub token: Option<String>,
    /// Extra CA to trust, resolved.
    pub ca: Option<PathBuf>,
    /// Kinds upserted (congestion, charging).
    pub kinds: Vec<crate::aggregate::Kind>,
    /// Entities per request at most.
    pub max_entities: usize,
    /// Bytes per request body at most.
    pub max_bytes: usize,
    /// Requests in flight at most.
    pub max_in_flight: usize,
    /// Longest a request may take.
    pub timeout: Duration,
    /// Longest the log keeps windows the broker has not acknowledged.
    pub max_hold: Duration,
    /// Rows waiting at most; past it the oldest are given up.
    pub max_backlog: usize,
    /// Where its ledger lives (resolved), if set; else in the log
    /// directory.
    pub state_dir: Option<PathBuf>,
}

/// A `[[sink]] type = "central"` validated: where central is, how to
/// reach it, how long to hold what it has not acknowledged.
#[derive(Debug, Clone)]
pub struct CentralSink {
    /// Central's address.
    pub to: SocketAddr,
    /// TLS server name.
    pub server_name: String,
    /// CA certificate (PEM), resolved.
    pub ca: PathBuf,
    /// The push token.
    pub token: String,
    /// Client certificate and key, resolved.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// Longest the log keeps windows central has not acknowledged.
    pub max_hold: Duration,
}
