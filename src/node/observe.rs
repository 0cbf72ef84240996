//! What a node's `/metrics` scrape reads: collectors over the counters
//! its parts keep (ingest, log, dataflow, hub, sinks, the process).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::dataflow;
use crate::ingest::server::IngestCounters;
use crate::observe::Registry;
use crate::sink::SinkStatus;
use crate::subscribe::hub::Hub;
use crate::wire::budget::Budget;

/// What the node's collectors read.
pub(super) struct Collectors<'a> {
    pub(super) registry: &'a Arc<Registry>,
    pub(super) counters: &'a Arc<IngestCounters>,
    pub(super) budget: &'a Budget,
    pub(super) sinks: &'a [(String, Arc<SinkStatus>)],
    pub(super) watermark: &'a Arc<AtomicU64>,
    pub(super) log_dir: &'a std::path::Path,
    pub(super) emitted: &'a Arc<dataflow::Emitted>,
    pub(super) live_stats: &'a Arc<crate::pipeline::LiveStats>,
    pub(super) hub: &'a Option<Arc<Hub>>,
    pub(super) recovered_entries: u64,
}

/// Registers what a scrape publishes: the parts' own counters, read as
/// they stand (nothing is counted per record for it).
pub(super) fn collectors(c: &Collectors) {
    use crate::metrics as M;
    let r = c.registry;
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let recovered = c.recovered_entries as f64;
    r.collect(Box::new(move || {
        metrics::gauge!(M::UP_SINCE).set(started);
        metrics::gauge!(M::RECOVERED_ENTRIES).set(recovered);
        crate::observe::process::collect();
    }));
    let (counters, budget) = (c.counters.clone(), c.budget.clone());
    r.collect(Box::new(move || {
        counters.publish_metrics();
        metrics::gauge!(M::BUFFERED_BYTES).set(budget.buffered() as f64);
    }));
    let sinks = c.sinks.to_vec();
    r.collect(Box::new(move || {
        for (_, s) in &sinks {
            s.publish_metrics();
        }
    }));
    let (watermark, dir) = (c.watermark.clone(), c.log_dir.to_owned());
    r.collect(Box::new(move || {
        let wm = watermark.load(Ordering::Acquire);
        metrics::gauge!(M::WATERMARK).set(wm as f64);
        if wm > 0 {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            metrics::gauge!(M::WATERMARK_LAG).set(now.saturating_sub(wm) as f64 / 1000.0);
        }
        if let Ok(segments) = crate::log::segments(&dir) {
            let bytes: u64 = (segments.iter())
                .filter_map(|(_, p)| std::fs::metadata(p).ok())
                .map(|m| m.len())
                .sum();
            metrics::gauge!(M::LOG_SEGMENTS).set(segments.len() as f64);
            metrics::gauge!(M::LOG_BYTES).set(bytes as f64);
        }
    }));
    let (emitted, hub, live) = (c.emitted.clone(), c.hub.clone(), c.live_stats.clone());
    r.collect(Box::new(move || {
        emitted.publish_metrics();
        live.publish_metrics();
        if let Some(hub) = &hub {
            hub.counts.publish_metrics(hub.subscribers());
        }
    }));
}
