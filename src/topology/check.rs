//! Validation: a [`TopologyFile`] to a [`Topology`], or every problem at
//! once, each with its file and place (a key, or a line). Paths are
//! resolved against the topology file's directory, token hashes and kinds
//! decoded, durations parsed, and the reference data loaded and checked.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::aggregate::Kind;
use crate::geo::hmm::HmmSettings;
use crate::geo::zones::ZoneSettings;
use crate::geo::MatchSettings;
use crate::privacy::VehicleKey;
use crate::reference::{Problem, Reference};
use crate::time::TimeSpec;

use super::file::{
    FleetSection, IngestSection, LogSection, MatchingSection, OperatorSection, TopologyFile,
    WindowsSection, ZonesSection,
};
use super::{
    Fleet, Ingest, IngestLimits, Log, Operator, Sink, Topology, DEFAULT_MAX_LAG,
    DEFAULT_MAX_PENDING, DEFAULT_MIN_VEHICLES, MAX_FRAME_BYTES, MAX_TOPOLOGY_BYTES, MAX_WORKERS,
};

/// Collects the problems of one topology file, each with its place.
pub(super) struct Checker<'a> {
    /// The topology file.
    pub(super) path: &'a Path,
    /// Its directory: relative paths start there.
    pub(super) base: &'a Path,
    pub(super) problems: Vec<Problem>,
}

impl Checker<'_> {
    pub(super) fn push(&mut self, place: &str, message: &str) {
        self.problems.push(Problem {
            file: self.path.to_owned(),
            place: place.into(),
            message: message.into(),
        });
    }

    /// A duration (`60s`, `15m`); a problem if it is not one.
    fn duration(&mut self, text: &str, place: &str) -> Option<Duration> {
        match humantime::parse_duration(text) {
            Ok(d) => Some(d),
            Err(e) => {
                self.push(
                    place,
                    &format!("{text:?} is not a duration like \"60s\" or \"15m\": {e}"),
                );
                None
            }
        }
    }

    /// A duration key that may be left out: `default` then.
    pub(super) fn duration_or(
        &mut self,
        text: Option<&str>,
        default: Duration,
        place: &str,
    ) -> Option<Duration> {
        match text {
            None => Some(default),
            Some(text) => self.duration(text, place),
        }
    }

    /// A token's SHA-256 as 64 lower-case hex characters, decoded.
    fn token_hash(&mut self, hex_text: &str, place: &str) -> Option<[u8; 32]> {
        let lower = hex_text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        let mut hash = [0u8; 32];
        let decoded = lower && hex::decode_to_slice(hex_text, &mut hash).is_ok();
        if !decoded {
            self.push(
                place,
                "must be 64 lower-case hex characters (sha256sum of the token)",
            );
        }
        decoded.then_some(hash)
    }

    /// `[windows]`: sizes, lateness, retention, the leap guard.
    fn windows(&mut self, w: &WindowsSection) -> Option<TimeSpec> {
        let size = self.duration(&w.size, "windows.size");
        let lateness = self.duration(&w.allowed_lateness, "windows.allowed_lateness");
        let retention = self.duration(&w.retention, "windows.retention");
        if let Some(size) = size {
            let ms = size.as_millis() as u64;
            if ms == 0 || !ms.is_multiple_of(1000) || 86_400_000 % ms != 0 {
                self.push(
                    "windows.size",
                    "must be a whole number of seconds that divides a day (e.g. 10s, 1m, 5m, 1h)",
                );
            }
        }
        let max_future = self.duration(&w.max_future, "windows.max_future");
        if max_future.is_some_and(|f| f.is_zero()) {
            self.push(
                "windows.max_future",
                "must be more than 0 (a clock a little ahead is normal)",
            );
        }
        if w.leap_quorum == 0 {
            self.push("windows.leap_quorum", "must be at least 1");
        }
        if let (Some(l), Some(r)) = (lateness, retention) {
            if r < l {
                self.push("windows.retention", "must be at least allowed_lateness, or late records could never correct a window");
            }
        }
        Some(TimeSpec::new(size?, lateness?, retention?).with_future(max_future?, w.leap_quorum))
    }

    /// `[privacy] vehicle_hash_key`: 32 bytes in hex.
    fn vehicle_key(&mut self, hex_text: &str) -> Option<VehicleKey> {
        let mut secret = [0u8; 32];
        match hex::decode_to_slice(hex_text.trim(), &mut secret) {
            Ok(()) if secret != [0; 32] => Some(VehicleKey::new(secret)),
            _ => {
                self.push(
                    "privacy.vehicle_hash_key",
                    "must be 64 hex characters of random bytes (e.g. `openssl rand -hex 32`), not all zero",
                );
                None
            }
        }
    }

    /// `[[fleet]]` (`section` "fleet") or `[[edge]]` ("edge"): names and
    /// token hashes decoded. An edge's name is its HELLO sender id, so it
    /// must be a valid id, and unique.
    fn fleets(&mut self, section: &str, fleets: &[FleetSection]) -> Vec<Fleet> {
        let mut out: Vec<Fleet> = Vec::new();
        for (n, fleet) in fleets.iter().enumerate() {
            if section == "edge" {
                if let Err(e) = crate::model::check_id(&fleet.name, "name") {
                    self.push(&format!("edge[{n}].name"), &e.detail);
                }
                if out.iter().any(|f| f.name == fleet.name) {
                    self.push(&format!("edge[{n}].name"), "names an edge listed before");
                }
            }
            if let Some(token_sha256) =
                self.token_hash(&fleet.token_sha256, &format!("{section}[{n}].token_sha256"))
            {
                out.push(Fleet {
                    name: fleet.name.clone(),
                    token_sha256,
                });
            }
        }
        out
    }

    /// A central sink needs the city's vehicle hash key (sketches of raw
    /// ids must never leave the node), and one is enough.
    fn central_needs(&mut self, sinks: &[Sink], reference: Option<&Reference>) {
        let central = sinks
            .iter()
            .filter(|s| matches!(s, Sink::Central(_)))
            .count();
        if central > 1 {
            self.push("sink", "at most one sink of type \"central\"");
        }
        if central > 0 && reference.is_some_and(|r| r.vehicle_key.is_none()) {
            self.push(
                "privacy.vehicle_hash_key",
                "a central sink needs the city's vehicle hash key: distinct-vehicle sketches leave the node only keyed",
            );
        }
    }

    /// `[[operator]]`, token hashes and kinds decoded (no `kinds`: all).
    fn operators(&mut self, operators: &[OperatorSection]) -> Vec<Operator> {
        let mut out = Vec::new();
        for (n, op) in operators.iter().enumerate() {
            let token_sha256 =
                self.token_hash(&op.token_sha256, &format!("operator[{n}].token_sha256"));
            let mut kinds = Vec::new();
            for (i, k) in op.kinds.iter().flatten().enumerate() {
                match k.parse::<Kind>() {
                    Ok(kind) => kinds.push(kind),
                    Err(why) => self.push(&format!("operator[{n}].kinds[{i}]"), &why),
                }
            }
            if let Some(token_sha256) = token_sha256 {
                out.push(Operator {
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
        out
    }

    /// `[matching]` with its defaults, in range.
    fn matching(&mut self, m: &MatchingSection) -> MatchSettings {
        let defaults = MatchSettings::default();
        let matching = MatchSettings {
            radius_m: m.radius_m.unwrap_or(defaults.radius_m),
            heading_tolerance_deg: m
                .heading_tolerance_deg
                .unwrap_or(defaults.heading_tolerance_deg),
            end_slack_m: m.end_slack_m.unwrap_or(defaults.end_slack_m),
        };
        if !(matching.radius_m > 0.0 && matching.radius_m <= 1000.0) {
            self.push("matching.radius_m", "must be in (0, 1000] metres");
        }
        if !(0.0..=180.0).contains(&matching.heading_tolerance_deg) {
            self.push(
                "matching.heading_tolerance_deg",
                "must be in [0, 180] degrees",
            );
        }
        if !(0.0..=100.0).contains(&matching.end_slack_m) {
            self.push("matching.end_slack_m", "must be in [0, 100] metres");
        }
        matching
    }

    /// `[matching] method` and `[matching.hmm]`: the HMM's settings when
    /// the method is `"hmm"`, in range (its lag within the allowed
    /// lateness of `time`).
    fn hmm(&mut self, m: &MatchingSection, time: Option<&TimeSpec>) -> Option<HmmSettings> {
        match m.method.as_deref() {
            None | Some("nearest") => return None,
            Some("hmm") => {}
            Some(other) => {
                self.push(
                    "matching.method",
                    &format!("{other:?} is not a method: \"nearest\" or \"hmm\""),
                );
                return None;
            }
        }
        let h = &m.hmm;
        let d = h
            .sigma_m
            .filter(|s| s.is_finite() && *s > 0.0)
            .map_or_else(HmmSettings::default, HmmSettings::for_sigma);
        let ms = |c: &mut Self, text: Option<&str>, default: u64, place: &str| {
            c.duration_or(text, Duration::from_millis(default), place)
                .map(|d| d.as_millis() as u64)
        };
        let lag_ms = ms(self, h.lag.as_deref(), d.lag_ms, "matching.hmm.lag");
        let max_gap_ms = ms(
            self,
            h.max_gap.as_deref(),
            d.max_gap_ms,
            "matching.hmm.max_gap",
        );
        let settings = HmmSettings {
            sigma_m: h.sigma_m.unwrap_or(d.sigma_m),
            heading_sigma_deg: h.heading_sigma_deg.unwrap_or(d.heading_sigma_deg),
            beta_m: h.beta_m.unwrap_or(d.beta_m),
            radius_m: h.radius_m.unwrap_or(d.radius_m),
            max_candidates: h.candidates.unwrap_or(d.max_candidates),
            emission_margin: h.emission_margin.unwrap_or(d.emission_margin),
            backward_tolerance_m: h.backward_tolerance_m.unwrap_or(d.backward_tolerance_m),
            lag_ms: lag_ms.unwrap_or(d.lag_ms),
            max_gap_ms: max_gap_ms.unwrap_or(d.max_gap_ms),
            max_speed_mps: h.max_speed_mps.unwrap_or(d.max_speed_mps),
            table_bound_m: h.table_bound_m.unwrap_or(d.table_bound_m),
            max_table_bytes: h.max_table_bytes.unwrap_or(d.max_table_bytes),
            end_slack_m: m.end_slack_m.unwrap_or(d.end_slack_m),
            ..d
        };
        if let (Some(lag), Some(t)) = (lag_ms, time) {
            if lag > t.allowed_lateness_ms {
                self.push(
                    "matching.hmm.lag",
                    "must be at most [windows] allowed_lateness: every report of a window is decided before the window is final",
                );
            }
        }
        if let (Some(gap), Some(lag)) = (max_gap_ms, lag_ms) {
            if gap < lag {
                self.push("matching.hmm.max_gap", "must be at least the lag");
            }
        }
        if !(settings.radius_m > 0.0 && settings.radius_m <= 1000.0) {
            self.push("matching.hmm.radius_m", "must be in (0, 1000] metres");
        }
        if !(settings.table_bound_m > 0.0 && settings.table_bound_m <= 100_000.0) {
            self.push(
                "matching.hmm.table_bound_m",
                "must be in (0, 100000] metres",
            );
        }
        Some(settings)
    }

    /// `[zones]` with its defaults, checked against the named zones.
    fn zones(
        &mut self,
        z: &ZonesSection,
        zones: &[crate::geo::zones::Zone],
        zone_file: bool,
    ) -> ZoneSettings {
        use crate::geo::zones::{
            DEFAULT_LOW_SOC_PCT, DEFAULT_MAX_POSITION_CELLS, DEFAULT_POSITION_RESOLUTION,
        };
        let settings = ZoneSettings {
            zone_file,
            h3_resolution: z.h3_resolution,
            low_soc_pct: z.low_soc_pct.unwrap_or(DEFAULT_LOW_SOC_PCT),
            position_resolution: z.position_resolution.unwrap_or(DEFAULT_POSITION_RESOLUTION),
            max_position_cells: z.max_position_cells.unwrap_or(DEFAULT_MAX_POSITION_CELLS),
        };
        if settings.h3_resolution.is_some_and(|r| r > 15) {
            self.push("zones.h3_resolution", "must be in [0, 15]");
        }
        // (An out-of-range h3_resolution is reported above, once.)
        let min_position = settings.h3_resolution.filter(|r| *r <= 15).unwrap_or(0);
        if !(min_position..=15).contains(&settings.position_resolution) {
            self.push(
                "zones.position_resolution",
                &format!("must be in [{min_position}, 15] (at least zones.h3_resolution)"),
            );
        } else {
            for message in crate::geo::zones::check_cover(zones, &settings) {
                self.push("zones.max_position_cells", &message);
            }
        }
        if !(0.0..=100.0).contains(&settings.low_soc_pct) {
            self.push("zones.low_soc_pct", "must be in [0, 100] percent");
        }
        settings
    }

    /// `[reference]`: roads and chargers (matched with `[matching]`), the
    /// named zones and `[zones]`; with the SHA-256 of roads and chargers
    /// and the zone file, resolved.
    fn reference(
        &mut self,
        file: &TopologyFile,
        time: Option<&TimeSpec>,
    ) -> (Option<Reference>, String, Option<PathBuf>) {
        let matching = self.matching(&file.matching);
        let hmm = self.hmm(&file.matching, time);
        let (roads, chargers) = (
            self.base.join(&file.reference.roads),
            self.base.join(&file.reference.chargers),
        );
        let reference = match Reference::load(&roads, &chargers, matching) {
            Ok(mut r) => {
                // The graph and route table are built only for a file
                // otherwise valid.
                if let (Some(settings), true) = (hmm, self.problems.is_empty()) {
                    if let Err(e) = r.set_hmm(settings) {
                        self.push("matching.hmm", &e.to_string());
                    }
                }
                Some(r)
            }
            Err(mut p) => {
                self.problems.append(&mut p);
                None
            }
        };
        let sha256 = digest(&[roads, chargers]);
        let zone_file = file.reference.zones.as_ref().map(|z| self.base.join(z));
        let zones = match zone_file.as_deref().map(crate::geo::zones::load) {
            None => Vec::new(),
            Some(Ok(z)) => z,
            Some(Err(mut p)) => {
                self.problems.append(&mut p);
                Vec::new()
            }
        };
        let settings = self.zones(&file.zones, &zones, zone_file.is_some());
        let vehicle_key = file
            .privacy
            .vehicle_hash_key
            .as_deref()
            .and_then(|hex_text| self.vehicle_key(hex_text));
        let reference = reference.map(|mut r| {
            r.zones = zones;
            r.zone_settings = settings;
            r.vehicle_key = vehicle_key;
            r
        });
        (reference, sha256, zone_file)
    }

    /// `[subscriptions]` and `[privacy]`: (min_vehicles, max_pending, max_lag).
    fn subscriptions(&mut self, file: &TopologyFile) -> (u64, usize, Duration) {
        let min_vehicles = file.privacy.min_vehicles.unwrap_or(DEFAULT_MIN_VEHICLES);
        let max_pending = file
            .subscriptions
            .max_pending
            .unwrap_or(DEFAULT_MAX_PENDING);
        if max_pending == 0 {
            self.push("subscriptions.max_pending", "must be at least 1");
        }
        let max_lag = self
            .duration_or(
                file.subscriptions.max_lag.as_deref(),
                DEFAULT_MAX_LAG,
                "subscriptions.max_lag",
            )
            .unwrap_or(DEFAULT_MAX_LAG);
        (min_vehicles, max_pending, max_lag)
    }

    /// `[log]`, its directory resolved.
    fn log(&self, l: &LogSection) -> Log {
        Log {
            on_corruption: l.on_corruption,
            dir: self.base.join(&l.dir),
            segment_bytes: l.segment_bytes.max(4096),
        }
    }

    /// `[ingest]`: the section with paths resolved and durations parsed
    /// when it is valid.
    fn ingest(&mut self, i: &IngestSection) -> Option<Ingest> {
        let base = self.base;
        let listen = i.listen.parse::<std::net::SocketAddr>().map_err(|e| {
            self.push(
                "ingest.listen",
                &format!("{:?} is not an address like 0.0.0.0:4433: {e}", i.listen),
            )
        });
        let idle = self.duration_or(
            i.idle_timeout.as_deref(),
            Ingest::DEFAULT_IDLE,
            "ingest.idle_timeout",
        );
        let hello = self.duration_or(
            i.hello_timeout.as_deref(),
            Ingest::DEFAULT_HELLO,
            "ingest.hello_timeout",
        );
        let drain = self.duration_or(
            i.drain_timeout.as_deref(),
            Ingest::DEFAULT_DRAIN,
            "ingest.drain_timeout",
        );
        let batch_timeout = self.duration_or(
            i.batch_timeout.as_deref(),
            Ingest::DEFAULT_BATCH,
            "ingest.batch_timeout",
        );
        for (place, d) in [
            ("ingest.idle_timeout", idle),
            ("ingest.hello_timeout", hello),
            ("ingest.drain_timeout", drain),
            ("ingest.batch_timeout", batch_timeout),
        ] {
            if d.is_some_and(|d| d < Duration::from_millis(100)) {
                self.push(
                    place,
                    "must be at least 100ms (a zero timeout would close every connection)",
                );
            }
        }
        if i.receive_window < i.max_frame_bytes as u64 + 64 {
            self.push(
                "ingest.receive_window",
                &format!(
                    "must be at least max_frame_bytes + 64 ({}): a batch must fit in flight",
                    i.max_frame_bytes + 64
                ),
            );
        }
        if i.max_buffered_bytes < i.max_frame_bytes {
            self.push(
                "ingest.max_buffered_bytes",
                &format!(
                    "must be at least max_frame_bytes ({}): one batch must fit",
                    i.max_frame_bytes
                ),
            );
        }
        if i.max_unauthenticated == 0 || i.max_unauthenticated_per_source == 0 {
            self.push(
                "ingest",
                "max_unauthenticated and max_unauthenticated_per_source must be at least 1",
            );
        }
        let client_ca = i.client_ca.as_ref().map(|p| ("ingest.client_ca", p));
        for (what, p) in [("ingest.cert", &i.cert), ("ingest.key", &i.key)]
            .into_iter()
            .chain(client_ca)
        {
            if !base.join(p).is_file() {
                self.push(
                    what,
                    &format!("{} is not a readable file", base.join(p).display()),
                );
            }
        }
        if i.max_frame_bytes < 1024 || i.max_frame_bytes > MAX_FRAME_BYTES {
            self.push(
                "ingest.max_frame_bytes",
                &format!(
                "must be between 1024 and {MAX_FRAME_BYTES} (the largest batch a log entry holds)"
            ),
            );
        }
        if i.max_connections == 0 || i.max_streams == 0 || i.max_records_per_s == 0 {
            self.push(
                "ingest",
                "max_connections, max_streams and max_records_per_s must be at least 1",
            );
        }
        Some(Ingest {
            listen: listen.ok()?,
            cert: base.join(&i.cert),
            key: base.join(&i.key),
            client_ca: i.client_ca.as_ref().map(|p| base.join(p)),
            limits: IngestLimits {
                max_frame_bytes: i.max_frame_bytes,
                max_connections: i.max_connections,
                max_streams: i.max_streams,
                max_records_per_s: i.max_records_per_s,
                receive_window: i.receive_window,
                max_buffered_bytes: i.max_buffered_bytes,
                max_unauthenticated: i.max_unauthenticated,
                max_unauthenticated_per_source: i.max_unauthenticated_per_source,
            },
            idle_timeout: idle?,
            hello_timeout: hello?,
            drain_timeout: drain?,
            batch_timeout: batch_timeout?,
        })
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
        let mut c = Checker {
            path,
            base: path.parent().unwrap_or(Path::new(".")),
            problems: Vec::new(),
        };
        if let Err(e) = crate::model::check_id(&file.node.id, "node.id") {
            c.push("node.id", &e.detail);
        }
        let time = c.windows(&file.windows);
        if file.dataflow.workers == 0 || file.dataflow.workers > MAX_WORKERS {
            c.push(
                "dataflow.workers",
                &format!("must be between 1 and {MAX_WORKERS}"),
            );
        }
        let ingest = file.ingest.as_ref().and_then(|i| c.ingest(i));
        let fleets = c.fleets("fleet", &file.fleet);
        let edges = c.fleets("edge", &file.edge);
        let straggler_timeout = c.duration_or(
            file.central.straggler_timeout.as_deref(),
            super::DEFAULT_STRAGGLER_TIMEOUT,
            "central.straggler_timeout",
        );
        let operators = c.operators(&file.operator);
        let (privacy_min_vehicles, sub_max_pending, sub_max_lag) = c.subscriptions(&file);
        let log = file.log.as_ref().map(|l| c.log(l));
        let sinks = c.sinks(&file.sink);
        let (reference, reference_sha256, zone_file) = c.reference(&file, time.as_ref());
        c.central_needs(&sinks, reference.as_ref());
        let observability = c.observability(&file.observability);
        let cluster = file.cluster.as_ref().and_then(|s| c.cluster(s));
        let web = file
            .web
            .as_ref()
            .and_then(|w| c.web(w, file.ingest.is_some()));
        match (c.problems.is_empty(), time, reference, straggler_timeout) {
            (true, Some(time), Some(reference), Some(straggler_timeout)) => Ok(Topology {
                node_id: file.node.id,
                path: path.to_owned(),
                time,
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
                edges,
                straggler_timeout,
                observability,
                cluster,
                web,
            }),
            _ => Err(c.problems),
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
