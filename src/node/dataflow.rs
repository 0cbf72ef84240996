//! The node's dataflow thread: the live input (the log's batches, zone
//! changes) through [`crate::runtime::run`], every batch of emissions to the
//! files sinks and the subscription hub. At start the files sinks keep the
//! rows of frozen windows (before the checkpoint); the kept log rebuilds
//! the rest.

use std::sync::atomic::AtomicU64;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use super::sinks::FilesSinks;
use super::EdgeError;
use crate::checkpoint::Resume;
use crate::input::Chunk;
use crate::output::FinalTable;
use crate::push::client::Feed as PushFeed;
use crate::reference::Reference;
use crate::runtime::{Input, RunError, RunOptions, RunSummary, ZoneChange};
use crate::subscribe::hub::Hub;
use crate::topology::{Sink, Topology};
use tokio::sync::mpsc::UnboundedSender;

/// What the dataflow thread is fed and feeds.
pub struct Feed {
    /// The node's topology.
    pub topology: Topology,
    /// Its reference data.
    pub reference: Arc<Reference>,
    /// Worker threads.
    pub workers: usize,
    /// Where the log starts.
    pub resume: Resume,
    /// The subscription hub, when operators may subscribe.
    pub hub: Option<Arc<Hub>>,
    /// The log's batches, in order.
    pub live: mpsc::Receiver<Chunk>,
    /// Zone membership changes.
    pub zones: Option<mpsc::Receiver<ZoneChange>>,
    /// Where the files sinks publish how far they are durable.
    pub sinks_durable: Arc<AtomicU64>,
    /// The window the log replay reaches: no sink write before it.
    pub recovered_to: Arc<AtomicU64>,
    /// A central sink's push task: it takes the partials (computed only
    /// then) and the watermark.
    pub push: Option<UnboundedSender<PushFeed>>,
    /// The city sinks' feeds.
    pub city: crate::sink::Feeds,
    /// Rows emitted, by status.
    pub emitted: Arc<Emitted>,
    /// The dataflow's counts as it goes.
    pub live_stats: Arc<crate::pipeline::LiveStats>,
    /// This node as one process of a site.
    pub cluster: Option<crate::runtime::Cluster>,
    /// What the processes of the site tell each other (the frozen horizon
    /// too, which the files sinks keep the rows of).
    pub site: Arc<crate::runtime::SiteLink>,
    /// Set when the dataflow thread ends, however it ends.
    pub ended: Arc<std::sync::atomic::AtomicBool>,
}

/// Sets a flag when dropped (a thread's end, even by a panic).
struct SetOnDrop(Arc<std::sync::atomic::AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }
}

/// Rows the dataflow emitted, by status (counted per batch).
#[derive(Debug, Default)]
pub struct Emitted {
    by_status: [AtomicU64; 4],
}

impl Emitted {
    /// Counts a batch of emissions.
    pub fn count<K, V>(&self, batch: &[crate::dataflow::emit::Emission<K, V>]) {
        let mut n = [0u64; 4];
        for e in batch {
            n[Self::slot(e.status)] += 1;
        }
        for (a, n) in self.by_status.iter().zip(n) {
            if n > 0 {
                a.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    fn slot(s: crate::dataflow::emit::Status) -> usize {
        use crate::dataflow::emit::Status;
        match s {
            Status::Provisional => 0,
            Status::Final => 1,
            Status::Correction => 2,
            Status::Retraction => 3,
        }
    }

    /// Publishes the counts (inside a node registry's scope).
    pub fn publish_metrics(&self) {
        for (status, a) in ["provisional", "final", "correction", "retraction"]
            .into_iter()
            .zip(&self.by_status)
        {
            metrics::counter!(crate::metrics::ROWS_EMITTED, "status" => status)
                .absolute(a.load(std::sync::atomic::Ordering::Relaxed));
        }
    }
}

/// Starts the dataflow thread; it ends when the live input ends, with the
/// run's summary (an error if the sinks' last write failed).
pub fn start(feed: Feed) -> Result<JoinHandle<Result<RunSummary, RunError>>, EdgeError> {
    let Feed {
        topology,
        reference,
        workers,
        resume,
        hub: hub_df,
        live: live_rx,
        zones: zone_rx,
        sinks_durable,
        recovered_to,
        push,
        city,
        emitted,
        live_stats,
        cluster,
        site,
        ended,
    } = feed;
    // Every row now; the rows of frozen windows are kept once the frozen
    // horizon is known (a cluster's processes agree on it as they start):
    // the kept log rebuilds the rest.
    let mut loaded = FinalTable::default();
    for sink in &topology.sinks {
        let Sink::Files { dir } = sink else { continue };
        let warnings = loaded
            .load_csv(dir, &reference, |_| true)
            .map_err(|e| EdgeError::Runtime(format!("files sink {}: {e}", dir.display())))?;
        for w in warnings {
            tracing::warn!("files sink: {w}");
        }
    }
    std::thread::Builder::new()
        .name("edgeflow-dataflow".into())
        .spawn(move || {
            let _ended = SetOnDrop(ended);
            let spec = topology.time;
            let loaded = std::cell::RefCell::new(Some(loaded));
            let sink: std::cell::RefCell<Option<FilesSinks>> = Default::default();
            // The sinks, once the frozen horizon is known.
            let sinks = || {
                let mut s = sink.borrow_mut();
                if s.is_none() {
                    if let (Some(horizon), Some(mut table)) =
                        (site.frozen(), loaded.borrow_mut().take())
                    {
                        table.keep_only(|k| spec.retire_at(k.window) <= horizon);
                        *s = Some(FilesSinks::new(
                            table,
                            &topology,
                            &recovered_to,
                            &sinks_durable,
                        ));
                    }
                }
                std::cell::RefMut::filter_map(s, Option::as_mut).ok()
            };
            let summary = crate::runtime::run_with(
                Input::Live(crate::runtime::Live {
                    chunks: live_rx,
                    resume,
                    zones: zone_rx,
                }),
                reference,
                topology.time,
                RunOptions {
                    // Provisional values only when someone can see them
                    // (operators, or central through the push).
                    provisional: hub_df.is_some() || push.is_some(),
                    partials: push.is_some(),
                    live: Some(live_stats),
                    cluster,
                    site: Some(site.clone()),
                    ..RunOptions::new(workers)
                },
                |batch| {
                    emitted.count(batch);
                    if let Some(mut s) = sinks() {
                        s.apply(batch);
                    }
                    if let Some(hub) = &hub_df {
                        hub.publish(batch);
                    }
                    city.send(batch);
                },
                |partials| {
                    if let Some(push) = &push {
                        let _ = push.send(partials.to_vec());
                    }
                },
                // Called when no emission came for a while: write what
                // is still unwritten.
                |_| {
                    if let Some(mut s) = sinks() {
                        s.write_if_due();
                    }
                },
            );
            drop(sinks());
            let written = sink.into_inner().is_none_or(|s| s.finish());
            summary.and_then(|s| {
                written.then_some(s).ok_or_else(|| {
                    RunError::Dataflow("the files sink's last write failed (see above)".into())
                })
            })
        })
        .map_err(|e| EdgeError::Runtime(e.to_string()))
}
