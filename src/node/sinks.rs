//! The files sinks of a node (TELEMETRY.md §4): the final table, kept
//! from the emissions and rewritten, fsynced, at most once per
//! [`SINK_INTERVAL`]; held back while the log is replayed at start, so the
//! files on disk keep the rows being recomputed until they are.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use std::sync::Arc;

use super::central::EdgeMarks;
use crate::output::{write_durably, FinalTable};
use crate::topology::{Sink, Topology};

/// Least time between two rewrites of a files sink.
pub const SINK_INTERVAL: Duration = Duration::from_secs(1);

/// The files sinks of a node: the final table, rewritten at most once per
/// [`SINK_INTERVAL`] while it has unwritten changes.
pub struct FilesSinks<'a> {
    table: FinalTable,
    sinks: Vec<Sink>,
    topology: &'a Topology,
    written: Instant,
    dirty: bool,
    /// Largest emission watermark applied.
    seen: u64,
    /// Published after each durable write: how far the sinks are durable.
    durable: &'a AtomicU64,
    /// No write before emissions reach this watermark: while the log is
    /// replayed at start, the files on disk (which hold the windows being
    /// recomputed) stay as they are.
    hold_until: &'a AtomicU64,
    /// A central node's edges: `edges.csv` and `missing.csv` beside the
    /// tables.
    edges: Option<Arc<EdgeMarks>>,
}

impl<'a> FilesSinks<'a> {
    /// The sinks of `topology`, starting from `table` (the rows kept from
    /// before a restart); no write before emissions reach `hold_until`;
    /// each durable write publishes its watermark in `durable`.
    pub fn new(
        table: FinalTable,
        topology: &'a Topology,
        hold_until: &'a AtomicU64,
        durable: &'a AtomicU64,
    ) -> Self {
        FilesSinks {
            table,
            sinks: topology.sinks.clone(),
            topology,
            written: Instant::now(),
            dirty: false,
            seen: 0,
            hold_until,
            durable,
            edges: None,
        }
    }

    /// The same sinks, writing a central node's `edges.csv` (each edge's
    /// pushed watermark, whether it straggles) and `missing.csv` (windows
    /// final without an edge) beside the tables.
    pub fn with_edges(mut self, edges: Arc<EdgeMarks>) -> Self {
        self.edges = Some(edges);
        self
    }

    /// Applies a batch of emissions; writes if a write is due.
    pub fn apply(&mut self, batch: &[crate::dataflow::emit::Emission]) {
        self.table.apply(batch);
        self.seen = batch.iter().map(|e| e.watermark).fold(self.seen, u64::max);
        self.dirty = true;
        self.write_if_due();
    }

    /// Writes the sinks if they changed and the last write is
    /// [`SINK_INTERVAL`] old (and the log replay is past `hold_until`).
    pub fn write_if_due(&mut self) {
        if self.seen < self.hold_until.load(Ordering::Acquire) {
            return;
        }
        if self.dirty && self.written.elapsed() >= SINK_INTERVAL {
            // A failed write stays dirty: it is tried again a second later.
            if write_sinks(
                &self.sinks,
                &self.table,
                self.topology,
                self.edges.as_deref(),
            ) {
                self.durable.fetch_max(self.seen, Ordering::AcqRel);
                self.dirty = false;
            }
            self.written = Instant::now();
        }
    }

    /// The last write, at shutdown: whether the sinks hold everything.
    pub fn finish(self) -> bool {
        !(self.dirty || self.table.is_empty())
            || write_sinks(
                &self.sinks,
                &self.table,
                self.topology,
                self.edges.as_deref(),
            )
    }
}

/// Writes every sink (with central's edge files, given `edges`); false if
/// one failed.
fn write_sinks(
    sinks: &[Sink],
    table: &FinalTable,
    topology: &Topology,
    edges: Option<&EdgeMarks>,
) -> bool {
    let mut ok = true;
    for sink in sinks {
        match sink {
            Sink::Files { dir } => {
                let written = table
                    .write_csv(dir, &topology.reference, topology.time.size_ms)
                    .and_then(|()| match edges {
                        Some(e) => write_durably(&dir.join("edges.csv"), e.edges_csv().as_bytes())
                            .and_then(|()| {
                                write_durably(&dir.join("missing.csv"), e.missing_csv().as_bytes())
                            }),
                        None => Ok(()),
                    });
                if let Err(e) = written {
                    tracing::warn!("files sink {}: {e}", dir.display());
                    ok = false;
                }
            }
            // Pushed as partials, not rows (`crate::push`); the city sinks
            // deliver on their own (`crate::sink`).
            Sink::Central(_) | Sink::Ngsi(_) | Sink::Mqtt(_) | Sink::Postgres(_) => {}
        }
    }
    ok
}
