//! Reloading a running node's topology (SIGHUP, or the file watch of
//! `edgeflow edge`): the file is read and checked as `edgeflow validate`
//! checks it, then what may change in place changes, all at once, with
//! no connection dropped:
//!
//! - fleets' and edges' tokens (the next HELLO meets them; connections
//!   admitted before stay);
//! - operators and their scopes (every subscription checks itself against
//!   them again and ends, with the reason, when it is no longer allowed
//!   what it has; new subscriptions meet them);
//! - `[privacy] min_vehicles` (a raised threshold applies at once to the
//!   rows the hub holds, a lowered one to rows published from then on; the
//!   city sinks hold the rows they deliver from then on to it);
//! - `[subscriptions]` limits;
//! - `[ingest]`: limits, timeouts, certificate, key and client CA (new
//!   connections get the new TLS and transport settings; the buffer budget
//!   grows at once and shrinks as held bytes are given back);
//! - the zone file's content (watched on its own, see [`super::zones`]).
//!
//! Anything else that differs (the listen address, the log, the window
//! size, the reference data's roads and chargers, the sinks, ...) is built
//! into the running dataflow or its files: the reload is refused, naming
//! each, and the configuration in force stays. So does an invalid file, or
//! a certificate that does not load. Every outcome is counted
//! (`edgeflow_reloads_total`) and logged.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use thiserror::Error;

use super::Role;
use crate::ingest::server::IngestContext;
use crate::problem::Problem;
use crate::subscribe::hub::{Hub, HubSettings};
use crate::subscribe::server::SubContext;
use crate::topology::Topology;

/// Why a reload changed nothing.
#[derive(Debug, Error)]
pub enum ReloadError {
    /// The file does not pass `edgeflow validate`.
    #[error("{} has {} problem(s); the configuration in force stays:\n  {}", .path.display(), .problems.len(), list(.problems))]
    Invalid {
        /// The topology file.
        path: PathBuf,
        /// What is wrong with it.
        problems: Vec<Problem>,
    },
    /// Settings that cannot change while the node runs differ.
    #[error("{} changes what a running node cannot change: {}; restart the node to change them (the configuration in force stays)", .path.display(), .fixed.join("; "))]
    Fixed {
        /// The topology file.
        path: PathBuf,
        /// Each setting that differs.
        fixed: Vec<String>,
    },
    /// The new certificate, key or client CA does not load.
    #[error("{}: the new [ingest] TLS settings do not load ({source}); the configuration in force stays", .path.display())]
    Tls {
        /// The topology file.
        path: PathBuf,
        /// What failed.
        source: crate::node::listener::ListenError,
    },
}

fn list(problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    lines.join("\n  ")
}

/// What a reload changed.
#[derive(Debug, Default)]
pub struct Reloaded {
    /// What changed, for the log (empty: the file says what is in force).
    pub changed: Vec<&'static str>,
}

/// Reloads by outcome, since the start.
#[derive(Debug, Default)]
pub struct ReloadCounts {
    /// Something changed.
    pub applied: AtomicU64,
    /// The file says what is in force.
    pub unchanged: AtomicU64,
    /// The file does not pass `validate`.
    pub invalid: AtomicU64,
    /// Refused: a setting that cannot change live differs, or TLS does
    /// not load.
    pub refused: AtomicU64,
}

impl ReloadCounts {
    /// Publishes the counts (at a scrape).
    pub fn publish_metrics(&self) {
        for (outcome, n) in [
            ("applied", &self.applied),
            ("unchanged", &self.unchanged),
            ("invalid", &self.invalid),
            ("refused", &self.refused),
        ] {
            metrics::counter!(crate::metrics::RELOADS, "outcome" => outcome)
                .absolute(n.load(Ordering::Relaxed));
        }
    }
}

/// The parts a reload changes in place.
pub(super) struct Parts {
    pub(super) role: Role,
    /// Weak: the context holds the log's committer, which must go when
    /// the connections have (the commit thread ends then).
    pub(super) ingest: Weak<IngestContext>,
    pub(super) subscriptions: Option<Arc<SubContext>>,
    pub(super) hub: Option<Arc<Hub>>,
    /// The city sinks' `min_vehicles`.
    pub(super) sink_privacy: Arc<AtomicU64>,
    /// Ticks at each applied reload (subscriptions check themselves).
    pub(super) reloads: tokio::sync::watch::Sender<u64>,
}

/// A running node's reloader ([`super::EdgeHandle::reload`]).
pub struct Reloader {
    path: PathBuf,
    parts: Parts,
    /// The QUIC endpoint, once bound.
    pub(super) endpoint: OnceLock<quinn::Endpoint>,
    /// The topology in force, as far as a reload compares it.
    current: Mutex<Snapshot>,
    /// Reloads by outcome.
    pub counts: Arc<ReloadCounts>,
}

impl Reloader {
    pub(super) fn new(topology: &Topology, parts: Parts) -> Self {
        Reloader {
            path: topology.path.clone(),
            parts,
            endpoint: OnceLock::new(),
            current: Mutex::new(Snapshot::of(topology)),
            counts: Arc::new(ReloadCounts::default()),
        }
    }

    /// The topology file the node was started from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the node's topology file again and applies it.
    pub fn reload(&self) -> Result<Reloaded, ReloadError> {
        match Topology::load(&self.path) {
            Ok(t) => self.apply(&t),
            Err(problems) => self.refuse(
                &self.counts.invalid,
                ReloadError::Invalid {
                    path: self.path.clone(),
                    problems,
                },
            ),
        }
    }

    /// Applies `topology` (already loaded and checked) in place, or
    /// changes nothing.
    pub fn apply(&self, topology: &Topology) -> Result<Reloaded, ReloadError> {
        let Ok(mut current) = self.current.lock() else {
            return Ok(Reloaded::default());
        };
        let next = Snapshot::of(topology);
        let fixed = current.fixed_changes(&next);
        if !fixed.is_empty() {
            let path = self.path.clone();
            return self.refuse(&self.counts.refused, ReloadError::Fixed { path, fixed });
        }
        // Everything that can fail, before anything changes.
        let changed = current.live_changes(&next);
        let tls = match (&next.ingest, &self.parts.role) {
            (Some(ingest), role) if changed.contains(&INGEST) => {
                let alpn = match role {
                    Role::Edge => crate::ingest::frame::ALPN,
                    Role::Central => crate::push::ALPN,
                };
                match crate::node::listener::server_config(ingest, alpn) {
                    Ok(c) => Some(c),
                    Err(source) => {
                        let path = self.path.clone();
                        let e = ReloadError::Tls { path, source };
                        return self.refuse(&self.counts.refused, e);
                    }
                }
            }
            _ => None,
        };
        if changed.is_empty() {
            self.counts.unchanged.fetch_add(1, Ordering::Relaxed);
            tracing::info!("reload of {}: nothing changed", self.path.display());
            return Ok(Reloaded::default());
        }
        let p = &self.parts;
        let Some(ctx) = p.ingest.upgrade() else {
            return Ok(Reloaded::default()); // the node is stopping
        };
        ctx.intake.reload(topology);
        if let Some(ingest) = &next.ingest {
            ctx.admission
                .set_limits(crate::ingest::server::admission_limits(ingest));
            ctx.budget.resize(ingest.limits.max_buffered_bytes);
            ctx.settings.store(Arc::new(ingest.clone()));
        }
        drop(ctx);
        if let (Some(config), Some(endpoint)) = (tls, self.endpoint.get()) {
            endpoint.set_server_config(Some(config));
        }
        if let Some(hub) = &p.hub {
            hub.set_settings(HubSettings {
                min_vehicles: topology.privacy_min_vehicles,
                max_pending: topology.sub_max_pending,
                max_lag: topology.sub_max_lag,
            });
        }
        p.sink_privacy
            .store(topology.privacy_min_vehicles, Ordering::Relaxed);
        if let Some(subs) = &p.subscriptions {
            subs.operators.store(Arc::new(topology.operators.clone()));
        }
        p.reloads.send_modify(|n| *n += 1);
        *current = next;
        self.counts.applied.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            "reloaded {}: {} changed in place",
            self.path.display(),
            changed.join(", ")
        );
        Ok(Reloaded { changed })
    }

    fn refuse(&self, count: &AtomicU64, e: ReloadError) -> Result<Reloaded, ReloadError> {
        count.fetch_add(1, Ordering::Relaxed);
        tracing::warn!("reload refused: {e}");
        Err(e)
    }
}

const TOKENS: &str = "tokens";
const OPERATORS: &str = "operators";
const PRIVACY: &str = "[privacy] min_vehicles";
const SUBSCRIPTIONS: &str = "[subscriptions] limits";
const INGEST: &str = "[ingest] limits, timeouts and TLS (the certificate files' content too)";

/// What a reload compares of a topology.
struct Snapshot {
    /// Settings that cannot change live, by name, as text.
    fixed: Vec<(&'static str, String)>,
    /// `[privacy] vehicle_hash_key` (compared, never shown).
    vehicle_key: Option<crate::privacy::VehicleKey>,
    tokens: Vec<(String, [u8; 32])>,
    operators: Vec<crate::topology::Operator>,
    privacy: u64,
    subscriptions: (usize, std::time::Duration),
    ingest: Option<crate::topology::Ingest>,
    /// The content of `[ingest]`'s certificate, key and client CA files
    /// (a renewed certificate at the same path is a change).
    tls_files: Vec<Option<Vec<u8>>>,
}

impl Snapshot {
    fn of(t: &Topology) -> Self {
        let r = &t.reference;
        let edges: Vec<&str> = t.edges.iter().map(|e| e.name.as_str()).collect();
        let fixed = vec![
            ("[node] id", t.node_id.clone()),
            (
                "[windows] (window size, lateness, retention)",
                format!("{:?}", t.time),
            ),
            ("[dataflow] workers", t.workers.to_string()),
            (
                "the roads and chargers (files' content)",
                t.reference_sha256.clone(),
            ),
            (
                "[matching]",
                format!(
                    "{:?} {:?}",
                    r.matcher.settings(),
                    r.hmm.as_ref().map(|h| h.settings())
                ),
            ),
            ("[zones] settings", format!("{:?}", r.zone_settings)),
            ("[zones] file", format!("{:?}", t.zone_file)),
            (
                "[ingest] listen",
                format!("{:?}", t.ingest.as_ref().map(|i| i.listen)),
            ),
            ("[log]", format!("{:?}", t.log)),
            ("[[sink]]", format!("{:?}", t.sinks)),
            ("[observability] listen", format!("{:?}", t.observability)),
            (
                "[central] straggler_timeout",
                format!("{:?}", t.straggler_timeout),
            ),
            ("[[edge]] names", edges.join(",")),
            (
                "[cluster] processes",
                format!("{:?}", t.cluster.as_ref().map(|c| &c.addresses)),
            ),
        ];
        let tokens = (t.fleets.iter().chain(&t.edges))
            .map(|f| (f.name.clone(), f.token_sha256))
            .collect();
        Snapshot {
            fixed,
            vehicle_key: r.vehicle_key.clone(),
            tokens,
            operators: t.operators.clone(),
            privacy: t.privacy_min_vehicles,
            subscriptions: (t.sub_max_pending, t.sub_max_lag),
            ingest: t.ingest.clone(),
            tls_files: (t.ingest.iter())
                .flat_map(|i| [Some(&i.cert), Some(&i.key), i.client_ca.as_ref()])
                .map(|p| p.and_then(|p| std::fs::read(p).ok()))
                .collect(),
        }
    }

    /// The settings that differ and cannot change live.
    fn fixed_changes(&self, next: &Snapshot) -> Vec<String> {
        let mut out: Vec<String> = (self.fixed.iter().zip(&next.fixed))
            .filter(|((_, a), (_, b))| a != b)
            .map(|((name, _), _)| (*name).to_owned())
            .collect();
        if self.vehicle_key != next.vehicle_key {
            out.push("[privacy] vehicle_hash_key".into());
        }
        out
    }

    /// The live settings that differ.
    fn live_changes(&self, next: &Snapshot) -> Vec<&'static str> {
        let ingest = |s: &Snapshot| format!("{:?}", s.ingest);
        [
            (TOKENS, self.tokens != next.tokens),
            (OPERATORS, self.operators != next.operators),
            (PRIVACY, self.privacy != next.privacy),
            (SUBSCRIPTIONS, self.subscriptions != next.subscriptions),
            (
                INGEST,
                ingest(self) != ingest(next) || self.tls_files != next.tls_files,
            ),
        ]
        .into_iter()
        .filter_map(|(name, differs)| differs.then_some(name))
        .collect()
    }
}
