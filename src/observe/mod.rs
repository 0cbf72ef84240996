//! The node's own health and figures, for the operator's Prometheus and
//! orchestrator (issue 15): an HTTP listener (`[observability] listen`)
//! serving `/metrics` (Prometheus text format), `/health` (the process is
//! up) and `/ready` (the log is recovered, the dataflow runs and the
//! listener is bound).
//!
//! - [`Registry`]: one per node, a `metrics-exporter-prometheus` recorder
//!   that is not installed globally (several nodes may share a process, as
//!   in tests). Parts of the node that count on their own (atomics added
//!   to per batch) register a [`Collect`] that publishes them, through the
//!   `metrics` macros, when a scrape comes; hot paths that observe a
//!   distribution (the log's fsync) hold a `metrics` handle from
//!   [`Registry::scope`].
//! - [`Readiness`]: the three conditions of `/ready`.
//! - [`http`]: the listener.
//! - [`process`]: the process's memory and open files.
//! - [`notify`]: `sd_notify` readiness for systemd's `Type=notify`.
//!
//! The names, types and labels are the catalog of [`crate::metrics`].

pub mod http;
pub mod notify;
pub mod process;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusRecorder};

use crate::metrics::{Kind, ALL, LOG_FSYNC_SECONDS};

/// Buckets of the fsync histogram, seconds: 50 µs (a battery-backed
/// cache) to 2.5 s (a failing disk).
pub const FSYNC_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5,
];

/// Publishes a part's figures into the registry (called at each scrape,
/// inside [`Registry::scope`]).
pub type Collect = Box<dyn Fn() + Send + Sync>;

/// A node's metrics: its recorder and the collectors that feed it.
pub struct Registry {
    recorder: PrometheusRecorder,
    collectors: Mutex<Vec<Collect>>,
    /// What `/ready` answers.
    pub ready: Readiness,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new()
    }
}

impl Registry {
    /// A registry with every metric of the catalog described.
    pub fn new() -> Self {
        // The bucket list is fixed and not empty: setting it cannot fail
        // (if it did, the default summary would serve instead).
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(LOG_FSYNC_SECONDS.into()), FSYNC_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let registry = Registry {
            recorder: builder.build_recorder(),
            collectors: Mutex::new(Vec::new()),
            ready: Readiness::default(),
        };
        registry.scope(|| {
            for d in ALL {
                match d.kind {
                    Kind::Counter => metrics::describe_counter!(d.name, d.help),
                    Kind::Gauge => metrics::describe_gauge!(d.name, d.help),
                    Kind::Histogram => metrics::describe_histogram!(d.name, d.help),
                }
            }
        });
        registry
    }

    /// Runs `f` with this registry as the `metrics` recorder of the
    /// calling thread: the macros inside record here (handles they return
    /// stay bound to it).
    pub fn scope<R>(&self, f: impl FnOnce() -> R) -> R {
        metrics::with_local_recorder(&self.recorder, f)
    }

    /// Adds a collector, run at every scrape.
    pub fn collect(&self, c: Collect) {
        if let Ok(mut v) = self.collectors.lock() {
            v.push(c);
        }
    }

    /// The exposition: the collectors run, then the text format.
    pub fn render(&self) -> String {
        self.scope(|| {
            if let Ok(v) = self.collectors.lock() {
                for c in v.iter() {
                    c();
                }
            }
            metrics::gauge!(crate::metrics::READY).set(f64::from(u8::from(self.ready.is_ready())));
        });
        let handle = self.recorder.handle();
        handle.run_upkeep();
        handle.render()
    }
}

/// The conditions of `/ready`, set by the node as it starts.
#[derive(Debug, Default)]
pub struct Readiness {
    /// The log is open and replayed into the dataflow.
    pub recovered: AtomicBool,
    /// The dataflow thread runs.
    pub dataflow: AtomicBool,
    /// The QUIC listener is bound.
    pub listening: AtomicBool,
    /// The node is stopping (ready no more).
    pub stopping: AtomicBool,
}

impl Readiness {
    /// All three conditions hold and the node is not stopping.
    pub fn is_ready(&self) -> bool {
        self.missing().is_empty()
    }

    /// What is not ready yet, for `/ready`'s body.
    pub fn missing(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        for (flag, what) in [
            (&self.recovered, "log recovery"),
            (&self.dataflow, "dataflow"),
            (&self.listening, "listener"),
        ] {
            if !flag.load(Ordering::Acquire) {
                out.push(what);
            }
        }
        if self.stopping.load(Ordering::Acquire) {
            out.push("stopping");
        }
        out
    }
}

/// A registry shared by a node's parts.
pub type Shared = Arc<Registry>;

/// At most one log line per period for an event that may come in floods
/// (clients refused): the others are counted and the next line says how
/// many there were.
#[derive(Debug)]
pub struct Every {
    period: std::time::Duration,
    last: Mutex<Option<std::time::Instant>>,
    suppressed: std::sync::atomic::AtomicU64,
}

impl Every {
    /// At most one line per `period`.
    pub const fn new(period: std::time::Duration) -> Self {
        Every {
            period,
            last: Mutex::new(None),
            suppressed: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// `Some(n)` when a line may be written now (`n` lines were left out
    /// since the last one), else `None` (this one is counted).
    pub fn allow(&self) -> Option<u64> {
        let now = std::time::Instant::now();
        let Ok(mut last) = self.last.lock() else {
            return None;
        };
        if last.is_some_and(|t| now.duration_since(t) < self.period) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

/// How often a kind of refused client is logged at most.
pub const REFUSALS_LOGGED_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Logs a refused client (a bad token, over a limit, a failed handshake)
/// at most once per [`REFUSALS_LOGGED_EVERY`] per `limiter`.
pub fn refused(limiter: &Every, from: std::net::SocketAddr, why: &str) {
    if let Some(more) = limiter.allow() {
        if more > 0 {
            tracing::warn!(%from, "client refused: {why} ({more} more refused like it since the last line)");
        } else {
            tracing::warn!(%from, "client refused: {why}");
        }
    }
}

/// The fix for a failed bind, when there is a usual one.
pub fn bind_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            " (another process listens there, perhaps another node: stop it, or pick another port)"
        }
        std::io::ErrorKind::AddrNotAvailable => {
            " (no interface of this machine has that address: use one it has, or 0.0.0.0)"
        }
        std::io::ErrorKind::PermissionDenied => {
            " (ports below 1024 need privileges: pick a port above 1024)"
        }
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_events_makes_one_line_per_period_and_counts_the_rest() {
        let every = Every::new(std::time::Duration::from_millis(50));
        assert_eq!(every.allow(), Some(0));
        for _ in 0..99 {
            assert_eq!(every.allow(), None);
        }
        std::thread::sleep(std::time::Duration::from_millis(60));
        assert_eq!(every.allow(), Some(99));
        assert_eq!(every.allow(), None);
    }

    #[test]
    fn readiness_needs_all_three_and_no_stop() {
        let r = Readiness::default();
        assert_eq!(r.missing(), ["log recovery", "dataflow", "listener"]);
        for f in [&r.recovered, &r.dataflow, &r.listening] {
            f.store(true, Ordering::Release);
        }
        assert!(r.is_ready());
        r.stopping.store(true, Ordering::Release);
        assert_eq!(r.missing(), ["stopping"]);
    }
}
