//! The topology file as written: one serde type per TOML section, with
//! the defaults of the keys a file may leave out. Nothing here is checked
//! beyond its TOML type; [`super::check`] turns a [`TopologyFile`] into the
//! validated [`super::Topology`]. The keys and their meaning are listed in
//! the README ("Topology").

use std::path::PathBuf;

use serde::Deserialize;

use super::IngestLimits;

/// The file as written.
#[derive(Debug, Deserialize)]
pub struct TopologyFile {
    /// This node.
    pub node: NodeSection,
    /// Reference data files.
    pub reference: ReferenceSection,
    /// Event-time windows.
    pub windows: WindowsSection,
    /// Dataflow workers.
    #[serde(default)]
    pub dataflow: DataflowSection,
    /// QUIC ingest (the `edge` role).
    pub ingest: Option<IngestSection>,
    /// The durable log (the `edge` role).
    pub log: Option<LogSection>,
    /// Fleets allowed to send telemetry.
    #[serde(default)]
    pub fleet: Vec<FleetSection>,
    /// Where final aggregates go.
    #[serde(default)]
    pub sink: Vec<SinkSection>,
    /// Map matching of reports without `segment_id`.
    #[serde(default)]
    pub matching: MatchingSection,
    /// Zone roll-ups.
    #[serde(default)]
    pub zones: ZonesSection,
    /// Mobility operators allowed to subscribe.
    #[serde(default)]
    pub operator: Vec<OperatorSection>,
    /// What operators may never see.
    #[serde(default)]
    pub privacy: PrivacySection,
    /// Subscription limits.
    #[serde(default)]
    pub subscriptions: SubscriptionsSection,
    /// `[[edge]]`: edges that may push to this node (the `central` role):
    /// `name` is the edge's `node.id` (its HELLO sender), `token_sha256`
    /// its push token's SHA-256.
    #[serde(default)]
    pub edge: Vec<FleetSection>,
    /// The `central` role's settings.
    #[serde(default)]
    pub central: CentralSection,
    /// The node's own metrics, health and readiness over HTTP.
    #[serde(default)]
    pub observability: ObservabilitySection,
    /// One site as several processes (timely's cluster mode).
    pub cluster: Option<ClusterSection>,
    /// The live map's HTTP listener.
    pub web: Option<WebSection>,
}

/// `[web]`: the live map, a web page served by the node (`src/web/`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebSection {
    /// Address of the HTTP listener (`"0.0.0.0:8080"`).
    pub listen: String,
    /// HTTPS with the node's `[ingest]` certificate and key (default
    /// false: plain HTTP, for loopback or behind a TLS proxy).
    pub tls: Option<bool>,
    /// Connections served at once (default 256; a page holds one for its
    /// live feed).
    pub max_connections: Option<usize>,
    /// Largest request head or body, bytes (default 16384).
    pub max_request_bytes: Option<usize>,
    /// How long a page's sign-in lasts (default `12h`).
    pub session_ttl: Option<String>,
    /// Shortest time between two updates of a page's feed (default
    /// `250ms`; rows changing faster are coalesced, latest value kept).
    pub feed_interval: Option<String>,
    /// An optional basemap: a tile URL template (`https://.../{z}/{x}/{y}.png`)
    /// the browser fetches itself; default none (the node serves
    /// everything, no request leaves for elsewhere).
    pub basemap: Option<String>,
}

/// `[cluster]`: one edge site as several processes, each with its own
/// ingest listener and log, running one dataflow.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// Every process's address for timely's own connections
    /// (`"host:port"`), in process order; a process's index (`--process`,
    /// `EDGEFLOW_PROCESS`) says which one it is.
    pub processes: Vec<String>,
    /// How long a stopping process waits for the rest of the site to stop
    /// (default `30s`): a process stopped alone leaves after it.
    pub stop_wait: Option<String>,
}

/// `[observability]`.
#[derive(Debug, Deserialize, Default)]
pub struct ObservabilitySection {
    /// Address of the HTTP listener serving `/metrics`, `/health` and
    /// `/ready` (`"127.0.0.1:9464"`). Default: none.
    pub listen: Option<String>,
}

/// `[central]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CentralSection {
    /// How long central waits for a silent edge before it finalizes
    /// windows without it (naming it). Default 5m.
    pub straggler_timeout: Option<String>,
}

/// `[[operator]]`: a mobility operator, its token and its scopes.
#[derive(Debug, Deserialize, Clone)]
pub struct OperatorSection {
    /// Operator name.
    pub name: String,
    /// SHA-256 of the bearer token, lower-case hex.
    pub token_sha256: String,
    /// Aggregate kinds it may see (`congestion`, `charging`, `zone`).
    /// Default: all.
    pub kinds: Option<Vec<String>>,
    /// Segment ids it may see. Default: all.
    pub segments: Option<Vec<String>>,
    /// Charger ids it may see. Default: all.
    pub chargers: Option<Vec<String>>,
    /// Zone ids (named zones or H3 cells) it may see. Default: all.
    pub zones: Option<Vec<String>>,
}

/// `[privacy]`.
#[derive(Debug, Deserialize, Default)]
pub struct PrivacySection {
    /// Rows over fewer distinct vehicles are withheld from operators (a
    /// zone row part by part: docs/PROTOCOL.md). Default 3.
    pub min_vehicles: Option<u64>,
    /// The city's secret for vehicle hashes, 64 hex characters (32 random
    /// bytes, e.g. `openssl rand -hex 32`), the same on every edge of a
    /// city: vehicle ids are hashed under it, by UTC day, before a
    /// distinct-vehicle sketch leaves the node for central. Keep it like a
    /// token: whoever has it can test a guessed vehicle id.
    pub vehicle_hash_key: Option<String>,
}

/// `[subscriptions]`.
#[derive(Debug, Deserialize, Default)]
pub struct SubscriptionsSection {
    /// Rows waiting for one subscriber (one per row: newer values replace
    /// queued ones) before it is disconnected as too slow. Default
    /// 1,000,000 ([`super::DEFAULT_MAX_PENDING`]).
    pub max_pending: Option<usize>,
    /// Longest a subscriber may read nothing while changes wait for it
    /// before it is disconnected. Default 30s.
    pub max_lag: Option<String>,
}

/// `[matching]`: map matching (see [`crate::geo::matcher`] for the rule).
#[derive(Debug, Deserialize, Default)]
pub struct MatchingSection {
    /// Largest distance from a segment, metres. Default 25.
    pub radius_m: Option<f64>,
    /// Largest difference between heading and direction of travel,
    /// degrees. Default 45.
    pub heading_tolerance_deg: Option<f64>,
    /// How far beyond a segment's end a report may lie and still be on it,
    /// metres. Default 0 (positions past the end are in the junction);
    /// raise it for noisy positions. Both methods.
    pub end_slack_m: Option<f64>,
    /// `"nearest"` (each report alone, by the keys above) or `"hmm"` (each
    /// vehicle's reports as a trajectory, `[matching.hmm]`). Default
    /// `"nearest"`.
    pub method: Option<String>,
    /// The HMM's parameters (`method = "hmm"`).
    #[serde(default)]
    pub hmm: HmmSection,
}

/// `[matching.hmm]`: the HMM's parameters, each defaulting to
/// [`crate::geo::hmm::HmmSettings::default`] (the README lists them).
#[derive(Debug, Deserialize, Default)]
pub struct HmmSection {
    /// GNSS position noise σ, metres.
    pub sigma_m: Option<f64>,
    /// Heading noise σ, degrees (0 ignores headings).
    pub heading_sigma_deg: Option<f64>,
    /// Transition scale β, metres.
    pub beta_m: Option<f64>,
    /// Candidate search radius, metres (default 4 σ).
    pub radius_m: Option<f64>,
    /// Candidates per report.
    pub candidates: Option<usize>,
    /// Candidates less likely than the best by more than this
    /// (log-likelihood) are dropped.
    pub emission_margin: Option<f64>,
    /// Backward movement on one segment taken as noise, metres (default
    /// 2.5 σ).
    pub backward_tolerance_m: Option<f64>,
    /// Fixed lag (`"4s"`): at most `[windows] allowed_lateness`.
    pub lag: Option<String>,
    /// Longest time between two reports of one trajectory (`"30s"`).
    pub max_gap: Option<String>,
    /// Fastest plausible speed, m/s.
    pub max_speed_mps: Option<f64>,
    /// Route distances kept in the table, metres.
    pub table_bound_m: Option<f64>,
    /// Largest route table, bytes.
    pub max_table_bytes: Option<usize>,
}

/// `[zones]`: zone roll-ups (named zones come from `[reference] zones`).
#[derive(Debug, Deserialize, Default)]
pub struct ZonesSection {
    /// Roll up into H3 cells of this resolution (0-15) too. Default: none.
    pub h3_resolution: Option<u8>,
    /// State of charge below which an EV that is not charging counts toward
    /// its zone's demand signal, percent. Default 20.
    pub low_soc_pct: Option<f64>,
    /// H3 resolution at which such EVs' positions are placed in zones
    /// (`h3_resolution`-15). Default 11 (cells about 25 m across).
    pub position_resolution: Option<u8>,
    /// Most cells all named zones may cover at `position_resolution`
    /// (about 32 bytes each). Default 1,000,000.
    pub max_position_cells: Option<usize>,
}

/// `[log]`: where accepted batches are made durable.
#[derive(Debug, Deserialize, Clone)]
pub struct LogSection {
    /// Directory (relative to the topology file).
    pub dir: PathBuf,
    /// Segment size before rolling. Default 64 MiB.
    #[serde(default = "default_segment")]
    pub segment_bytes: u64,
    /// Damage in the log that is not a torn tail: `"stop"` (default: the
    /// node does not start, naming the file and offset) or `"skip"` (the
    /// damaged entries are skipped, counted and reported at start).
    #[serde(default)]
    pub on_corruption: crate::log::OnCorruption,
}

fn default_segment() -> u64 {
    crate::log::DEFAULT_SEGMENT_BYTES
}

/// `[[fleet]]`: a sender of telemetry and its token's SHA-256 (hex).
#[derive(Debug, Deserialize, Clone)]
pub struct FleetSection {
    /// Fleet name.
    pub name: String,
    /// SHA-256 of the bearer token, lower-case hex (64 characters).
    pub token_sha256: String,
}

/// `[[sink]]`: where final aggregates go.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, tag = "type", rename_all = "lowercase")]
pub enum SinkSection {
    /// `congestion.csv` and `charging.csv` in a directory, as `replay`
    /// writes them, rewritten as windows become final.
    Files {
        /// Directory (relative to the topology file).
        dir: PathBuf,
    },
    /// Push partials to a central node (`edgeflow-push/1`).
    Central(CentralSinkSection),
    /// Upsert entities to an NGSI-LD context broker (Smart Data Models).
    #[serde(rename = "ngsi-ld")]
    Ngsi(NgsiSinkSection),
    /// Publish rows to an MQTT broker.
    Mqtt(MqttSinkSection),
    /// Upsert rows into PostgreSQL/PostGIS tables.
    Postgres(PostgresSinkSection),
}

/// `[[sink]] type = "mqtt"`.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct MqttSinkSection {
    /// The sink's name. Default "mqtt".
    pub name: Option<String>,
    /// The broker: `mqtt://host:1883` or `mqtts://host:8883`.
    pub broker: String,
    /// MQTT client id. Default `edgeflow-<node>-<name>`.
    pub client_id: Option<String>,
    /// Topics are `<topic_prefix>/<node>/<kind>/<key>`. Default "edgeflow".
    pub topic_prefix: Option<String>,
    /// What to publish: "congestion", "charging", "zone". Default all.
    pub kinds: Option<Vec<String>>,
    /// Publish provisional values too (not retained). Default false.
    pub provisional: Option<bool>,
    /// Message expiry of the retained final values. Default 1h.
    pub retain_expiry: Option<String>,
    /// User name.
    pub username: Option<String>,
    /// Password (or `password_file`).
    pub password: Option<String>,
    /// A file holding the password.
    pub password_file: Option<PathBuf>,
    /// A CA certificate (PEM) for `mqtts://`. Default: the web's roots.
    pub ca: Option<PathBuf>,
    /// Messages per batch at most. Default 1000.
    pub max_messages: Option<usize>,
    /// Batches in flight at most. Default 4.
    pub max_in_flight: Option<usize>,
    /// Longest a batch may wait for its acknowledgements. Default 10s.
    pub timeout: Option<String>,
    /// Longest the log keeps windows the broker has not acknowledged.
    /// Default 1h.
    pub max_hold: Option<String>,
    /// Rows waiting at most (memory while the target is away): past it
    /// the oldest are given up, counted and said. Default 1,000,000.
    pub max_backlog: Option<usize>,
}

/// `[[sink]] type = "postgres"`.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct PostgresSinkSection {
    /// The sink's name. Default "postgres".
    pub name: Option<String>,
    /// Connection URL: `postgres://user@host:5432/db` (no password in it:
    /// use `password` or `password_file`).
    pub url: String,
    /// Password (or `password_file`).
    pub password: Option<String>,
    /// A file holding the password.
    pub password_file: Option<PathBuf>,
    /// A CA certificate (PEM) to trust, beside the web's roots, when the
    /// URL says `sslmode=require`.
    pub ca: Option<PathBuf>,
    /// The schema the tables live in. Default "edgeflow".
    pub schema: Option<String>,
    /// What to write: "congestion", "charging", "zone". Default all.
    pub kinds: Option<Vec<String>>,
    /// Rows per batch at most. Default 5000.
    pub max_rows: Option<usize>,
    /// Batches in flight at most (one connection each). Default 2.
    pub max_in_flight: Option<usize>,
    /// Longest a batch may take. Default 30s.
    pub timeout: Option<String>,
    /// Longest the log keeps windows the database has not acknowledged.
    /// Default 1h.
    pub max_hold: Option<String>,
    /// Rows waiting at most (memory while the target is away): past it
    /// the oldest are given up, counted and said. Default 1,000,000.
    pub max_backlog: Option<usize>,
}

/// `[[sink]] type = "ngsi-ld"`.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct NgsiSinkSection {
    /// The sink's name (log lines, metrics, its state directory). Default
    /// "ngsi-ld".
    pub name: Option<String>,
    /// The broker's base URL (`http://host:1026`); the upsert path is
    /// appended.
    pub url: String,
    /// The @context URL sent in the `Link` header.
    pub context: Option<String>,
    /// `NGSILD-Tenant`.
    pub tenant: Option<String>,
    /// A bearer token (or `token_file`), when the broker wants one.
    pub token: Option<String>,
    /// A file holding the bearer token.
    pub token_file: Option<PathBuf>,
    /// A CA certificate (PEM) to trust for an https broker, beside the
    /// web's roots.
    pub ca: Option<PathBuf>,
    /// What to upsert: "congestion", "charging". Default both.
    pub kinds: Option<Vec<String>>,
    /// Entities per request at most. Default 1000.
    pub max_entities: Option<usize>,
    /// Bytes per request body at most. Default 1 MiB.
    pub max_bytes: Option<usize>,
    /// Requests in flight at most. Default 4.
    pub max_in_flight: Option<usize>,
    /// Longest a request may take. Default 10s.
    pub timeout: Option<String>,
    /// Longest the log keeps windows the broker has not acknowledged.
    /// Default 1h.
    pub max_hold: Option<String>,
    /// Rows waiting at most (memory while the target is away): past it
    /// the oldest are given up, counted and said. Default 1,000,000.
    pub max_backlog: Option<usize>,
    /// Where the sink keeps its ledger. Default: `sink-<name>` in the log
    /// directory.
    pub state_dir: Option<PathBuf>,
}

/// `[[sink]] type = "central"`.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct CentralSinkSection {
    /// Central's address, host:port.
    pub to: String,
    /// CA certificate (PEM) central's certificate is signed by.
    pub ca: PathBuf,
    /// The push token (or `token_file`).
    pub token: Option<String>,
    /// A file holding the push token.
    pub token_file: Option<PathBuf>,
    /// TLS server name. Default: the host of `to`.
    pub server_name: Option<String>,
    /// Client certificate (PEM), for a central that requires mTLS.
    pub cert: Option<PathBuf>,
    /// Its key.
    pub key: Option<PathBuf>,
    /// Longest the log keeps windows central has not acknowledged. Default 1h.
    pub max_hold: Option<String>,
}

/// `[node]`.
#[derive(Debug, Deserialize)]
pub struct NodeSection {
    /// Node id, unique in the city (used as `edge` in pushed aggregates).
    pub id: String,
}

/// `[reference]`: paths relative to the topology file.
#[derive(Debug, Deserialize)]
pub struct ReferenceSection {
    /// Road network GeoJSON.
    pub roads: PathBuf,
    /// Charger list GeoJSON.
    pub chargers: PathBuf,
    /// Named zones GeoJSON (polygons), optional.
    pub zones: Option<PathBuf>,
}

/// `[windows]`: durations as `60s`, `5m`, `1h` (humantime syntax).
#[derive(Debug, Deserialize)]
pub struct WindowsSection {
    /// Tumbling window length. Must divide a day, so windows align on every
    /// day boundary. Default 60s.
    #[serde(default = "default_size")]
    pub size: String,
    /// How far behind the newest event time a record is still on time.
    /// Default 5s.
    #[serde(default = "default_lateness")]
    pub allowed_lateness: String,
    /// How long after its end a window still accepts corrections; bounds the
    /// state: memory grows with retention, never with history. Default 15m.
    #[serde(default = "default_retention")]
    pub retention: String,
    /// How far ahead one record may move the watermark, and, live, how far
    /// ahead of the node's wall clock an event time may be (further:
    /// rejected as `future`). Default 5m. See [`crate::time`], "One outlier
    /// never moves the watermark".
    #[serde(default = "default_max_future")]
    pub max_future: String,
    /// Distinct devices that must agree before the watermark jumps further
    /// than `max_future` at once (a recording resuming after a gap).
    /// Default 3.
    #[serde(default = "default_leap_quorum")]
    pub leap_quorum: u32,
}

fn default_max_future() -> String {
    "5m".into()
}
fn default_leap_quorum() -> u32 {
    crate::time::DEFAULT_LEAP_QUORUM
}

fn default_size() -> String {
    "60s".into()
}
fn default_lateness() -> String {
    "5s".into()
}
fn default_retention() -> String {
    "15m".into()
}

/// `[dataflow]`.
#[derive(Debug, Deserialize)]
pub struct DataflowSection {
    /// Timely worker threads. Default 1. Each worker holds its share of the
    /// keys, so memory does not grow with workers beyond thread stacks.
    #[serde(default = "default_workers")]
    pub workers: usize,
}

impl Default for DataflowSection {
    fn default() -> Self {
        DataflowSection {
            workers: default_workers(),
        }
    }
}

fn default_workers() -> usize {
    1
}

/// `[ingest]`: the QUIC endpoint and its limits. Paths are relative to the
/// topology file.
#[derive(Debug, Deserialize, Clone)]
pub struct IngestSection {
    /// UDP address to listen on, e.g. `0.0.0.0:4433`.
    pub listen: String,
    /// Server certificate chain (PEM).
    pub cert: PathBuf,
    /// Server private key (PEM).
    pub key: PathBuf,
    /// Largest frame, bytes. Default 4 MiB. A connection buffers at most one
    /// frame per stream, so the worst case per connection is
    /// `max_frame_bytes * max_streams`.
    #[serde(default = "default_max_frame")]
    pub max_frame_bytes: usize,
    /// Concurrent connections. Default 20,000 (a 5G cell site's devices);
    /// about 10 KiB each when idle.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Concurrent batch streams per connection. Default 32.
    #[serde(default = "default_max_streams")]
    pub max_streams: u32,
    /// Close a connection silent this long. Default 30s.
    pub idle_timeout: Option<String>,
    /// Close a connection that sends no HELLO this long. Default 5s.
    pub hello_timeout: Option<String>,
    /// At shutdown, how long batches already under way may take to arrive
    /// and commit. Default 10s. A batch still unread then is dropped
    /// unacknowledged; its sender resends it to the next run.
    pub drain_timeout: Option<String>,
    /// Records per second one connection may send, averaged over a second.
    /// Default 200,000.
    #[serde(default = "default_rate")]
    pub max_records_per_s: u64,
    /// Per-connection QUIC receive window, bytes: how much a sender may have
    /// in flight before flow control stops it. Default 8 MiB.
    #[serde(default = "default_window")]
    pub receive_window: u64,
    /// Optional mTLS: when set, every client must also present a
    /// certificate signed by this CA (PEM); the token is still required.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// Longest a batch may take to arrive, from its first byte to its last
    /// (a 4 MiB batch at 1 Mbit/s takes about 34 s). Default 60s. A batch
    /// not complete by then is answered `batch_timeout` and its buffer
    /// freed: a client cannot hold memory by never finishing a batch.
    pub batch_timeout: Option<String>,
    /// Bytes the node buffers for batches and subscription requests still
    /// arriving or waiting for the log, all connections together. Default
    /// 256 MiB. When it is used up, reads wait (QUIC flow control then
    /// stops the senders). Worst-case memory of ingest buffers is this plus
    /// what QUIC holds unread: `receive_window` per connection, for
    /// `max_connections + max_unauthenticated` connections.
    #[serde(default = "default_max_buffered")]
    pub max_buffered_bytes: usize,
    /// Connections not yet authenticated (handshake, HELLO or the first
    /// SUBSCRIBE under way), node-wide. Default 1,024. They do not take
    /// `max_connections` slots, so idle strangers cannot keep fleets out;
    /// past half of this, new clients must first prove their address
    /// (a QUIC Retry).
    #[serde(default = "default_max_unauthenticated")]
    pub max_unauthenticated: usize,
    /// Connections not yet authenticated from one IP address. Default 32.
    #[serde(default = "default_max_unauthenticated_per_source")]
    pub max_unauthenticated_per_source: usize,
}

fn default_max_frame() -> usize {
    IngestLimits::default().max_frame_bytes
}
fn default_max_connections() -> usize {
    IngestLimits::default().max_connections
}
fn default_max_streams() -> u32 {
    IngestLimits::default().max_streams
}
fn default_rate() -> u64 {
    IngestLimits::default().max_records_per_s
}
fn default_window() -> u64 {
    IngestLimits::default().receive_window
}
fn default_max_buffered() -> usize {
    IngestLimits::default().max_buffered_bytes
}
fn default_max_unauthenticated() -> usize {
    IngestLimits::default().max_unauthenticated
}
fn default_max_unauthenticated_per_source() -> usize {
    IngestLimits::default().max_unauthenticated_per_source
}
