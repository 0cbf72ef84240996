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
//! Later roles (ingest, sinks, operators) add their own sections here.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::aggregate::Kind;
use crate::geo::zones::ZoneSettings;
use crate::geo::MatchSettings;
use crate::reference::{Problem, Reference};
use crate::time::TimeSpec;

mod ingest;
pub use ingest::{Ingest, IngestSection, MAX_FRAME_BYTES};

/// Largest accepted topology file, bytes.
pub const MAX_TOPOLOGY_BYTES: u64 = 1 << 20;
/// Most worker threads a topology may ask for.
pub const MAX_WORKERS: usize = 256;

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
}

/// `[subscriptions]`.
#[derive(Debug, Deserialize, Default)]
pub struct SubscriptionsSection {
    /// Rows waiting for one subscriber (one per row: newer values replace
    /// queued ones) before it is disconnected as too slow. Default
    /// 1,000,000 ([`DEFAULT_MAX_PENDING`]).
    pub max_pending: Option<usize>,
    /// Longest a subscriber may read nothing while changes wait for it
    /// before it is disconnected. Default 30s.
    pub max_lag: Option<String>,
}

/// Default of `privacy.min_vehicles`.
pub const DEFAULT_MIN_VEHICLES: u64 = 3;
/// Default of `subscriptions.max_pending`: with one queued change per row
/// (about 100 bytes each), at most ~100 MB for a subscriber that reads
/// nothing; the whole retained congestion of a 20,000-segment city fits.
pub const DEFAULT_MAX_PENDING: usize = 1_000_000;

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
    /// raise it for noisy positions.
    pub end_slack_m: Option<f64>,
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
#[derive(Clone, Debug)]
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

/// A SHA-256 written as 64 lower-case hex characters.
fn token_hash(hex_text: &str) -> Option<[u8; 32]> {
    let lower = hex_text
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let mut hash = [0u8; 32];
    (lower && hex::decode_to_slice(hex_text, &mut hash).is_ok()).then_some(hash)
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
    pub log: Option<LogSection>,
    /// Fleets, with their token hashes decoded.
    pub fleets: Vec<Fleet>,
    /// Sinks, with paths resolved.
    pub sinks: Vec<SinkSection>,
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
}

fn duration(text: &str, place: &str, file: &Path, problems: &mut Vec<Problem>) -> Option<Duration> {
    match humantime::parse_duration(text) {
        Ok(d) => Some(d),
        Err(e) => {
            problems.push(Problem {
                file: file.to_owned(),
                place: place.into(),
                message: format!("{text:?} is not a duration like \"60s\" or \"15m\": {e}"),
            });
            None
        }
    }
}

impl Topology {
    /// Reads and checks a topology file and its reference data, reporting
    /// every problem at once.
    pub fn load(path: &Path) -> Result<Topology, Vec<Problem>> {
        let problem = |place: &str, message: String| Problem {
            file: path.to_owned(),
            place: place.into(),
            message,
        };
        let text = match std::fs::metadata(path) {
            Ok(m) if m.len() > MAX_TOPOLOGY_BYTES => {
                return Err(vec![problem(
                    "",
                    format!("file is larger than {MAX_TOPOLOGY_BYTES} bytes"),
                )])
            }
            Ok(_) => std::fs::read_to_string(path)
                .map_err(|e| vec![problem("", format!("cannot read: {e}"))])?,
            Err(e) => return Err(vec![problem("", format!("cannot read: {e}"))]),
        };
        let mut unknown = Vec::new();
        let de = toml::Deserializer::new(&text);
        let parsed: Result<TopologyFile, _> =
            serde_ignored::deserialize(de, |key| unknown.push(key.to_string()));
        let file: TopologyFile = parsed.map_err(|e| {
            let place = e
                .span()
                .map(|s| {
                    let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
                    format!("line {line}")
                })
                .unwrap_or_default();
            vec![problem(&place, e.message().to_owned())]
        })?;
        let unknown: Vec<Problem> = unknown
            .iter()
            .map(|key| {
                let place = match key_line(&text, key) {
                    Some(line) => format!("line {line}: {key}"),
                    None => key.clone(),
                };
                problem(
                    &place,
                    format!("unknown key `{key}` (a typo? the README lists every key)"),
                )
            })
            .collect();
        match Self::from_file(path, file) {
            Ok(t) if unknown.is_empty() => Ok(t),
            Ok(_) => Err(unknown),
            Err(mut problems) => {
                let mut all = unknown;
                all.append(&mut problems);
                Err(all)
            }
        }
    }

    /// Checks a parsed file; loads its reference data.
    pub fn from_file(path: &Path, file: TopologyFile) -> Result<Topology, Vec<Problem>> {
        let mut problems = Vec::new();
        let push = |problems: &mut Vec<Problem>, place: &str, message: &str| {
            problems.push(Problem {
                file: path.to_owned(),
                place: place.into(),
                message: message.into(),
            })
        };
        if let Err(e) = crate::model::check_id(&file.node.id, "node.id") {
            push(&mut problems, "node.id", &e.detail);
        }
        let size = duration(&file.windows.size, "windows.size", path, &mut problems);
        let lateness = duration(
            &file.windows.allowed_lateness,
            "windows.allowed_lateness",
            path,
            &mut problems,
        );
        let retention = duration(
            &file.windows.retention,
            "windows.retention",
            path,
            &mut problems,
        );
        if let Some(size) = size {
            let ms = size.as_millis() as u64;
            if ms == 0 || !ms.is_multiple_of(1000) || 86_400_000 % ms != 0 {
                push(
                    &mut problems,
                    "windows.size",
                    "must be a whole number of seconds that divides a day (e.g. 10s, 1m, 5m, 1h)",
                );
            }
        }
        let max_future = duration(
            &file.windows.max_future,
            "windows.max_future",
            path,
            &mut problems,
        );
        if max_future.is_some_and(|f| f.is_zero()) {
            push(
                &mut problems,
                "windows.max_future",
                "must be more than 0 (a clock a little ahead is normal)",
            );
        }
        if file.windows.leap_quorum == 0 {
            push(&mut problems, "windows.leap_quorum", "must be at least 1");
        }
        if let (Some(l), Some(r)) = (lateness, retention) {
            if r < l {
                push(&mut problems, "windows.retention", "must be at least allowed_lateness, or late records could never correct a window");
            }
        }
        if file.dataflow.workers == 0 || file.dataflow.workers > MAX_WORKERS {
            push(
                &mut problems,
                "dataflow.workers",
                &format!("must be between 1 and {MAX_WORKERS}"),
            );
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let ingest = file
            .ingest
            .as_ref()
            .and_then(|i| ingest::check(i, base, path, &mut problems));
        let mut fleets = Vec::new();
        for (n, fleet) in file.fleet.iter().enumerate() {
            match token_hash(&fleet.token_sha256) {
                Some(token_sha256) => fleets.push(Fleet {
                    name: fleet.name.clone(),
                    token_sha256,
                }),
                None => push(
                    &mut problems,
                    &format!("fleet[{n}].token_sha256"),
                    "must be 64 lower-case hex characters (sha256sum of the token)",
                ),
            }
        }
        let mut operators = Vec::new();
        for (n, op) in file.operator.iter().enumerate() {
            let token_sha256 = token_hash(&op.token_sha256);
            if token_sha256.is_none() {
                push(
                    &mut problems,
                    &format!("operator[{n}].token_sha256"),
                    "must be 64 lower-case hex characters (sha256sum of the token)",
                );
            }
            let mut kinds = Vec::new();
            for (i, k) in op.kinds.iter().flatten().enumerate() {
                match k.parse::<Kind>() {
                    Ok(kind) => kinds.push(kind),
                    Err(why) => push(&mut problems, &format!("operator[{n}].kinds[{i}]"), &why),
                }
            }
            if let Some(token_sha256) = token_sha256 {
                operators.push(Operator {
                    name: op.name.clone(),
                    token_sha256,
                    kinds: if op.kinds.is_some() {
                        kinds
                    } else {
                        Kind::ALL.to_vec()
                    },
                    segments: op.segments.clone(),
                    chargers: op.chargers.clone(),
                    zones: op.zones.clone(),
                });
            }
        }
        let privacy_min_vehicles = file.privacy.min_vehicles.unwrap_or(DEFAULT_MIN_VEHICLES);
        let sub_max_pending = file
            .subscriptions
            .max_pending
            .unwrap_or(DEFAULT_MAX_PENDING);
        if sub_max_pending == 0 {
            push(
                &mut problems,
                "subscriptions.max_pending",
                "must be at least 1",
            );
        }
        let sub_max_lag = match &file.subscriptions.max_lag {
            None => Some(Duration::from_secs(30)),
            Some(text) => duration(text, "subscriptions.max_lag", path, &mut problems),
        }
        .unwrap_or(Duration::from_secs(30));
        let log = file.log.as_ref().map(|l| LogSection {
            on_corruption: l.on_corruption,
            dir: base.join(&l.dir),
            segment_bytes: l.segment_bytes.max(4096),
        });
        let sinks: Vec<SinkSection> = file
            .sink
            .iter()
            .map(|s| match s {
                SinkSection::Files { dir } => SinkSection::Files {
                    dir: base.join(dir),
                },
            })
            .collect();
        let defaults = MatchSettings::default();
        let m = &file.matching;
        let matching = MatchSettings {
            radius_m: m.radius_m.unwrap_or(defaults.radius_m),
            heading_tolerance_deg: m
                .heading_tolerance_deg
                .unwrap_or(defaults.heading_tolerance_deg),
            end_slack_m: m.end_slack_m.unwrap_or(defaults.end_slack_m),
        };
        let reference = Reference::load(
            &base.join(&file.reference.roads),
            &base.join(&file.reference.chargers),
            matching,
        );
        let reference_sha256 = digest(&[
            base.join(&file.reference.roads),
            base.join(&file.reference.chargers),
        ]);
        let mut reference = match reference {
            Ok(r) => Some(r),
            Err(mut p) => {
                problems.append(&mut p);
                None
            }
        };
        let zone_file = file.reference.zones.as_ref().map(|z| base.join(z));
        let zones = match zone_file.as_deref().map(crate::geo::zones::load) {
            None => Vec::new(),
            Some(Ok(z)) => z,
            Some(Err(mut p)) => {
                problems.append(&mut p);
                Vec::new()
            }
        };
        if !(matching.radius_m > 0.0 && matching.radius_m <= 1000.0) {
            push(
                &mut problems,
                "matching.radius_m",
                "must be in (0, 1000] metres",
            );
        }
        if !(0.0..=180.0).contains(&matching.heading_tolerance_deg) {
            push(
                &mut problems,
                "matching.heading_tolerance_deg",
                "must be in [0, 180] degrees",
            );
        }
        if !(0.0..=100.0).contains(&matching.end_slack_m) {
            push(
                &mut problems,
                "matching.end_slack_m",
                "must be in [0, 100] metres",
            );
        }
        let zone_settings = ZoneSettings {
            zone_file: file.reference.zones.is_some(),
            h3_resolution: file.zones.h3_resolution,
            low_soc_pct: file
                .zones
                .low_soc_pct
                .unwrap_or(crate::geo::zones::DEFAULT_LOW_SOC_PCT),
            position_resolution: file
                .zones
                .position_resolution
                .unwrap_or(crate::geo::zones::DEFAULT_POSITION_RESOLUTION),
            max_position_cells: file
                .zones
                .max_position_cells
                .unwrap_or(crate::geo::zones::DEFAULT_MAX_POSITION_CELLS),
        };
        if zone_settings.h3_resolution.is_some_and(|r| r > 15) {
            push(&mut problems, "zones.h3_resolution", "must be in [0, 15]");
        }
        // (An out-of-range h3_resolution is reported above, once.)
        let min_position = zone_settings
            .h3_resolution
            .filter(|r| *r <= 15)
            .unwrap_or(0);
        if !(min_position..=15).contains(&zone_settings.position_resolution) {
            push(
                &mut problems,
                "zones.position_resolution",
                &format!("must be in [{min_position}, 15] (at least zones.h3_resolution)"),
            );
        } else {
            for message in crate::geo::zones::check_cover(&zones, &zone_settings) {
                push(&mut problems, "zones.max_position_cells", &message);
            }
        }
        if !(0.0..=100.0).contains(&zone_settings.low_soc_pct) {
            push(
                &mut problems,
                "zones.low_soc_pct",
                "must be in [0, 100] percent",
            );
        }
        if let Some(r) = reference.as_mut() {
            r.zones = zones;
            r.zone_settings = zone_settings;
        }
        match (
            problems.is_empty(),
            size,
            lateness,
            retention,
            max_future,
            reference,
        ) {
            (
                true,
                Some(size),
                Some(lateness),
                Some(retention),
                Some(max_future),
                Some(reference),
            ) => Ok(Topology {
                node_id: file.node.id,
                path: path.to_owned(),
                time: TimeSpec::new(size, lateness, retention)
                    .with_future(max_future, file.windows.leap_quorum),
                reference_sha256,
                workers: file.dataflow.workers,
                reference,
                ingest,
                log,
                fleets,
                sinks,
                zone_file,
                operators,
                privacy_min_vehicles,
                sub_max_pending,
                sub_max_lag,
            }),
            _ => Err(problems),
        }
    }
}

/// SHA-256 (hex) of the files' contents one after the other, read in
/// pieces; an unreadable file adds nothing (loading it reports why).
fn digest(paths: &[PathBuf]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in paths {
        if let Ok(mut f) = std::fs::File::open(p) {
            let _ = std::io::copy(&mut f, &mut h);
        }
    }
    hex::encode(h.finalize())
}

/// The line of `key` (a dotted path such as `ingest.max_frame_byte` or
/// `fleet.0.nmae`) in a topology's text: the first line assigning its last
/// part after the header of its table.
fn key_line(text: &str, key: &str) -> Option<usize> {
    let parts: Vec<&str> = key.split('.').collect();
    let (name, tables) = parts.split_last()?;
    let table: Vec<&str> = tables
        .iter()
        .copied()
        .filter(|p| p.parse::<usize>().is_err())
        .collect();
    let header = table.join(".");
    let mut in_table = header.is_empty();
    for (n, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.starts_with('[') {
            let h = l.trim_matches(|c| c == '[' || c == ']').trim();
            in_table = h == header;
            continue;
        }
        let assigns = l
            .split_once('=')
            .is_some_and(|(k, _)| k.trim().trim_matches('"') == *name);
        if in_table && assigns {
            return Some(n + 1);
        }
    }
    None
}
