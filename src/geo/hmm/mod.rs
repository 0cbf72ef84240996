//! Trajectory-aware map matching: a hidden Markov model over candidate
//! road positions (Newson and Krumm, 2009), decoded per vehicle with a
//! fixed lag (issue 14).
//!
//! # The model
//! - **Graph** ([`graph`]): each segment is a directed edge in the order of
//!   its LineString. Segment ends closer than
//!   [`HmmSettings::node_snap_m`] are one node. Networks such as SUMO's cut
//!   edges where a junction begins, so the end of one segment and the start
//!   of the next are a few metres apart: an end is linked to every start
//!   within [`HmmSettings::junction_link_m`] by a junction edge as long as
//!   the straight line between them. There are no turn restrictions in the
//!   reference format (TELEMETRY.md §2), so every such turn is allowed.
//! - **Table** ([`ubodt`]): route distances between every pair of nodes no
//!   farther apart than [`HmmSettings::table_bound_m`] on the graph, by one
//!   bounded Dijkstra per node at construction (FMM's upper-bounded
//!   origin-destination table); its memory is capped by
//!   [`HmmSettings::max_table_bytes`] and reported by
//!   [`Hmm::table_bytes`].
//! - **Candidates**: for each fix, the nearest position on each segment
//!   within [`HmmSettings::radius_m`] (found in the grid index both
//!   matchers share, `geo/pieces.rs`), at most
//!   [`HmmSettings::max_candidates`] of them, nearest first (ties: lowest
//!   segment index), without those whose emission is more than
//!   [`HmmSettings::emission_margin`] below the best one's (the other
//!   carriageway: the transitions per fix grow with the square of the
//!   candidates). A candidate lies *beyond an end* when the fix projects
//!   before the segment's first point or after its last by more than
//!   [`HmmSettings::end_slack_m`]: the same notion as
//!   [`crate::geo::Matcher::locate`]'s, and a fix decided there is
//!   [`Reason::Junction`], as today. Where the fix lies along the road is
//!   smoothed along the decoded path first (`smooth.rs`: a fix's own
//!   projection is off along the road by the whole GNSS error, so near a
//!   segment's end the point rule flips on noise; with
//!   [`HmmSettings::accel_mps2`] = 0 the fix's own projection decides).
//! - **Emission**: `-d² / 2σ²` for perpendicular distance `d` and
//!   `σ = sigma_m`, plus for a fix with a heading a von Mises term
//!   `(cos Δ - 1) / σh²` with `Δ` the difference between the heading and
//!   the segment's direction there (`σh = heading_sigma_deg`; bounded, so
//!   a fix on a bend is not thrown out).
//! - **Transition** from candidate `a` to `b`: `-|route - straight| / β`,
//!   with `straight` the distance between the two fixes (on the local
//!   plane; at city scale the great-circle distance to well under 1 %) and
//!   `route` the distance on the directed graph: the rest of `a`'s segment,
//!   the table distance from its end node to `b`'s start node, and `b`'s
//!   offset. On one segment, moving forward costs the offset difference;
//!   moving back by at most [`HmmSettings::backward_tolerance_m`] is GNSS
//!   noise around a slow or stopped vehicle and counts as route 0 (as
//!   Barefoot and Meili tolerate it); farther back, the route must leave the
//!   segment and come round again. A transition is *implausible* when the
//!   table has no route or the route is longer than `max_speed_mps × dt +
//!   2 × radius_m` (the two candidates' along-road noise).
//! - **Decision**: the Viterbi path's candidate for the fix, and where it
//!   lies along the road, smoothed (above): on that segment, on the path's
//!   segment just before or after it, or in the junction between.
//! - **Breaks**: a fix with no plausible transition from the previous one,
//!   or more than [`HmmSettings::max_gap_ms`] after it, starts a new
//!   trajectory. A trajectory of one fix that a distance break started and
//!   the next fix with candidates broke again is an isolated bad fix:
//!   [`Reason::Outlier`], unmatched. A fix with no candidate at all is
//!   [`Reason::OffRoad`] and leaves the trajectory as it was.
//!
//! # Decisions, and why they are deterministic
//! A vehicle's fixes are taken in the order of [`Fix::order_key`] (event
//! time, then the position's and heading's bits: ties never depend on
//! arrival). The decision for fix `i` at time `t_i` is the Viterbi
//! backtrack from the best state (ties: the lowest candidate) at the last
//! fix of `i`'s trajectory whose time is `<= t_i + lag_ms`, computed over
//! that trajectory's fixes up to there, with the position along the road
//! smoothed over that path and the fixes of the trajectory decided within
//! [`HmmSettings::smooth_back_ms`] before it. It is therefore a pure function of
//! the fixes up to `t_i + lag_ms` (and, for an [`Reason::Outlier`], of the
//! next fix with candidates). [`match_all`] computes it from scratch;
//! [`Track`] incrementally, with state bounded by the lag; a property test
//! holds them equal.

pub mod graph;
mod smooth;
pub mod synthetic;
mod track;
pub mod ubodt;
mod viterbi;

#[cfg(test)]
mod tests;

pub use graph::Network;
pub use track::Track;
pub use ubodt::Table;

use crate::geo::Unmatched;

/// The most candidates a fix may have ([`HmmSettings::max_candidates`] is
/// capped at it): the per-fix state is a fixed array, so no fix allocates.
pub const MAX_CANDIDATES: usize = 16;

/// HMM map-matching settings; every limit with its default and cost.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HmmSettings {
    /// GNSS position noise σ, metres (emission). Default 10 m: a typical
    /// street (5 m in open sky, 20 m between tall buildings).
    pub sigma_m: f64,
    /// Heading noise σ, degrees (emission's heading term); `0` ignores
    /// headings. Default 15°: fixes' headings are about N(0, 10°), and a
    /// segment's direction on a bend differs from the vehicle's by a few
    /// degrees more (on the synthetic grid at σ = 20 m, 12-15° beat 20°
    /// and 35° clearly).
    pub heading_sigma_deg: f64,
    /// Transition scale β, metres: how much the route may differ from the
    /// straight line between fixes. Default 10 m (reports every 2 s; on
    /// the synthetic grid 10-20 m beat 2-5 m at σ = 20 m and tie at 10 m).
    pub beta_m: f64,
    /// Candidate search radius, metres. Default 4 σ (40 m at the default
    /// σ; [`HmmSettings::for_sigma`]): the distance of a 2-D Gaussian
    /// error is Rayleigh, beyond 2 σ for 13.5 % of fixes, beyond 4 σ for
    /// 0.03 %. On Karhula at σ = 10 m, 50 m matched no better and was
    /// about 15 % slower; 30 m lost 0.5 points.
    pub radius_m: f64,
    /// Candidates kept per fix, nearest first; at most
    /// [`MAX_CANDIDATES`]. Default 8 (with `end_slack_m` 2 m, against 6:
    /// synthetic grid right segment 96.5 -> 96.9 % at σ = 10 m, 86.3 ->
    /// 90.2 % at σ = 20 m; Karhula σ = 10 m pairs 95.8 -> 96.1 %; about
    /// 5-10 % slower). Cost: transitions per fix grow with its square.
    pub max_candidates: usize,
    /// Candidates whose emission log-likelihood is more than this below
    /// the fix's best candidate's are dropped. Default 20: a candidate
    /// heading the other way (the other carriageway) scores `-2 / σh²`
    /// (-29 at 15°) and is dropped, a road at right angles (-15) or
    /// 4 σ farther than the best (-8) is kept. Cost: transitions per fix
    /// grow with the square of the candidates kept.
    pub emission_margin: f64,
    /// Trajectory smoothing of the position along the road (the junction
    /// notion, see `smooth.rs`): acceleration noise, m/s²; `0` decides
    /// by the fix's own projection, as the point matcher. Default 1.5.
    pub accel_mps2: f64,
    /// How far back the smoothing looks, milliseconds (the decided fixes
    /// kept per vehicle). Default 6 s.
    pub smooth_back_ms: u64,
    /// Fixed lag, milliseconds: a fix is decided once the vehicle has a
    /// fix later than this after it. Default 4 s (within Karhula's 5 s
    /// allowed lateness). State per vehicle: the fixes within the lag, about
    /// 300 bytes each.
    pub lag_ms: u64,
    /// Longest time between two fixes of one trajectory, milliseconds;
    /// longer starts a new one. Default 30 s.
    pub max_gap_ms: u64,
    /// Fastest plausible speed, m/s (breaks). Default 70 m/s (250 km/h).
    pub max_speed_mps: f64,
    /// Backward movement on one segment taken as noise, metres. Default
    /// 2.5 σ (25 m at the default σ; [`HmmSettings::for_sigma`]): the
    /// along-road noise of two fixes is √2 σ (Karhula σ = 20 m, radius
    /// 80 m, 8 candidates: pairs within tolerance 93.3 % at 15 m, 95.1 %
    /// at 30 m, 96.1 % at 50 m; σ = 10 m: 25 m ties 15 m).
    pub backward_tolerance_m: f64,
    /// How far beyond a segment's end a fix may project and still be on
    /// it, metres (as [`crate::geo::MatchSettings::end_slack_m`]), after
    /// the smoothing. Default 2 m: a fix wrongly decided in a junction
    /// drops a sample from the segment, and the vehicles near a segment's
    /// end are the slow ones queueing there, so dropping them biases the
    /// segment's mean speed up; 2 m keeps more of them at every σ (on
    /// Karhula, pairs within tolerance: clean 99.06 -> 99.69 %, σ = 10 m
    /// 95.60 -> 95.76 %, σ = 20 m 90.89 -> 91.68 %; 4-7 m helped σ = 5-10 m
    /// a little more but cost clean data 0.5-0.6 points).
    pub end_slack_m: f64,
    /// Segment ends this close are one graph node, metres. Default 1 m.
    pub node_snap_m: f64,
    /// A segment's end links to the starts within this distance (a
    /// junction), metres. Default 25 m: SUMO's junctions on Karhula are
    /// mostly under 15 m across, a city junction with 15 m between
    /// carriageways under 25 m.
    pub junction_link_m: f64,
    /// Route distances longer than this are not in the table (and such
    /// transitions are breaks), metres. Default 1000 m: 33 s at 30 m/s,
    /// more than `max_gap_ms` allows at city speeds; Karhula's table is
    /// 1.5 MB (4.3 MB at 2000 m, no more accurate, slower lookups).
    pub table_bound_m: f64,
    /// Largest table, bytes (8 per node pair); a network whose table would
    /// be larger is refused with [`HmmError::TableTooLarge`]. Default
    /// 256 MiB.
    pub max_table_bytes: usize,
}

impl Default for HmmSettings {
    fn default() -> Self {
        HmmSettings::for_sigma(10.0)
    }
}

impl HmmSettings {
    /// The defaults for GNSS noise `sigma_m`: the settings that scale
    /// with it (`radius_m` 4 σ, `backward_tolerance_m` 2.5 σ) follow it.
    pub fn for_sigma(sigma_m: f64) -> Self {
        HmmSettings {
            sigma_m,
            heading_sigma_deg: 15.0,
            beta_m: 10.0,
            radius_m: 4.0 * sigma_m,
            max_candidates: 8,
            emission_margin: 20.0,
            accel_mps2: 1.5,
            smooth_back_ms: 6_000,
            lag_ms: 4_000,
            max_gap_ms: 30_000,
            max_speed_mps: 70.0,
            backward_tolerance_m: 2.5 * sigma_m,
            end_slack_m: 2.0,
            node_snap_m: 1.0,
            junction_link_m: 25.0,
            table_bound_m: 1_000.0,
            max_table_bytes: 256 << 20,
        }
    }
}

/// What can go wrong building or feeding the matcher.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum HmmError {
    /// A setting is out of its range.
    #[error("HMM setting {name}: {why}")]
    Setting {
        /// The setting.
        name: &'static str,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The route table would exceed `max_table_bytes`.
    #[error("route table needs more than {limit} bytes (at least {bytes}); lower table_bound_m or raise max_table_bytes")]
    TableTooLarge {
        /// Bytes it reached before stopping.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// A fix came before the previous one in [`Fix::order_key`] order.
    #[error("fix at {ts_ms} ms is before the previous fix of the track")]
    OutOfOrder {
        /// The fix's event time.
        ts_ms: u64,
    },
}

/// One GNSS fix of a vehicle.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Fix {
    /// Event time, Unix epoch milliseconds.
    pub ts_ms: u64,
    /// Longitude, degrees.
    pub lon: f64,
    /// Latitude, degrees.
    pub lat: f64,
    /// Heading, degrees clockwise from north, when known.
    pub heading_deg: Option<f64>,
}

impl Fix {
    /// The order fixes are matched in: event time, then the bits of
    /// latitude, longitude and heading (so that fixes at one time are
    /// ordered by their content, never by arrival).
    pub fn order_key(&self) -> (u64, u64, u64, u64) {
        (
            self.ts_ms,
            self.lat.to_bits(),
            self.lon.to_bits(),
            self.heading_deg.map_or(u64::MAX, f64::to_bits),
        )
    }
}

/// Why a fix is on no segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// No segment within the radius.
    OffRoad,
    /// Decided beyond an end of its segment: in a junction.
    Junction,
    /// An isolated fix no route joins to its neighbours.
    Outlier,
}

impl Reason {
    /// The point matcher's reason it counts as ([`Reason::Outlier`] is
    /// off the road the vehicle is on).
    pub fn unmatched(self) -> Unmatched {
        match self {
            Reason::OffRoad | Reason::Outlier => Unmatched::OffRoad,
            Reason::Junction => Unmatched::Junction,
        }
    }
}

/// The decision for one fix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Position of the fix among those pushed to its track (0-based).
    pub index: u64,
    /// The fix's event time.
    pub ts_ms: u64,
    /// Its segment index, or why none.
    pub result: Result<u32, Reason>,
}

/// The matcher: the network, its route table and the settings, built
/// once and shared (read-only) by every vehicle's [`Track`].
#[derive(Clone, Debug)]
pub struct Hmm {
    net: Network,
    table: Table,
    settings: HmmSettings,
    /// Derived constants of the settings.
    k: viterbi::Coefficients,
}

impl Hmm {
    /// Builds the graph and the route table for the road network's lines
    /// (`[lon, lat]`; segment `i` is `lines[i]`).
    pub fn new<L: AsRef<[[f64; 2]]>>(lines: &[L], settings: HmmSettings) -> Result<Self, HmmError> {
        validate(&settings)?;
        let net = Network::new(lines, &settings);
        let table = Table::build(&net, settings.table_bound_m, settings.max_table_bytes)?;
        Ok(Hmm {
            net,
            table,
            settings,
            k: viterbi::Coefficients::new(&settings),
        })
    }

    /// The settings in force.
    pub fn settings(&self) -> &HmmSettings {
        &self.settings
    }

    /// The road graph.
    pub fn network(&self) -> &Network {
        &self.net
    }

    /// The route table.
    pub fn table(&self) -> &Table {
        &self.table
    }

    /// Memory the route table holds, bytes.
    pub fn table_bytes(&self) -> usize {
        self.table.bytes()
    }

    /// Memory the spatial index of the candidates holds, bytes.
    pub fn index_bytes(&self) -> usize {
        self.net.pieces.bytes()
    }

    /// The GNSS noise σ a set of fixes shows, metres: from the median
    /// distance of each fix to its nearest candidate road (a fix's offset
    /// across its road is N(0, σ), whose absolute value has the median
    /// 0.6745 σ; the offset along the road is invisible, fixes without a
    /// candidate are left out). `None` without any candidate. Biased low
    /// where a fix lies nearer another road than its own (dense networks
    /// at large σ): a floor for `sigma_m`, not a ceiling.
    pub fn estimate_sigma<'f>(&self, fixes: impl IntoIterator<Item = &'f Fix>) -> Option<f64> {
        let mut d: Vec<f64> = fixes
            .into_iter()
            .filter_map(|f| {
                let layer = viterbi::Layer::of(self, f);
                (layer.n > 0).then_some(layer.c[0].dist)
            })
            .collect();
        if d.is_empty() {
            return None;
        }
        let mid = d.len() / 2;
        let (_, median, _) = d.select_nth_unstable_by(mid, f64::total_cmp);
        Some(*median / 0.6745)
    }

    /// The same matcher with another lag (the graph and table are shared
    /// work: cloning them is cheaper than building them again).
    pub fn with_lag(&self, lag_ms: u64) -> Self {
        let mut h = self.clone();
        h.settings.lag_ms = lag_ms;
        h
    }
}

fn validate(s: &HmmSettings) -> Result<(), HmmError> {
    let positive = |name, v: f64| {
        if v.is_finite() && v > 0.0 {
            Ok(())
        } else {
            Err(HmmError::Setting {
                name,
                why: "must be a positive number",
            })
        }
    };
    positive("sigma_m", s.sigma_m)?;
    positive("beta_m", s.beta_m)?;
    positive("radius_m", s.radius_m)?;
    positive("max_speed_mps", s.max_speed_mps)?;
    positive("table_bound_m", s.table_bound_m)?;
    positive("emission_margin", s.emission_margin)?;
    let non_negative = |name, v: f64| {
        if v.is_finite() && v >= 0.0 {
            Ok(())
        } else {
            Err(HmmError::Setting {
                name,
                why: "must be a number >= 0",
            })
        }
    };
    non_negative("heading_sigma_deg", s.heading_sigma_deg)?;
    non_negative("accel_mps2", s.accel_mps2)?;
    non_negative("backward_tolerance_m", s.backward_tolerance_m)?;
    non_negative("end_slack_m", s.end_slack_m)?;
    non_negative("node_snap_m", s.node_snap_m)?;
    non_negative("junction_link_m", s.junction_link_m)?;
    if s.max_candidates == 0 || s.max_candidates > MAX_CANDIDATES {
        return Err(HmmError::Setting {
            name: "max_candidates",
            why: "must be 1 to 16",
        });
    }
    Ok(())
}

/// The decisions for one vehicle's fixes, from scratch: the reference
/// [`Track`] is held to. `fixes` must be in [`Fix::order_key`] order
/// (else [`HmmError::OutOfOrder`]); the decisions come in the same order.
pub fn match_all(hmm: &Hmm, fixes: &[Fix]) -> Result<Vec<Decision>, HmmError> {
    for w in fixes.windows(2) {
        if w[1].order_key() < w[0].order_key() {
            return Err(HmmError::OutOfOrder { ts_ms: w[1].ts_ms });
        }
    }
    Ok(viterbi::batch(hmm, fixes))
}

/// Sorts a vehicle's fixes into [`Fix::order_key`] order.
pub fn sort_fixes(fixes: &mut [Fix]) {
    fixes.sort_by_key(Fix::order_key);
}
