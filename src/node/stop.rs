//! Stopping a node: its parts wound down in order, and the report it
//! prints.

use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{EdgeError, EdgeReport, SUBSCRIBER_DRAIN};
use crate::runtime::RunSummary;
use crate::subscribe::hub::Hub;

/// What is left to stop once ingest has stopped serving.
pub(super) struct WindDown {
    pub(super) runtime: tokio::runtime::Runtime,
    pub(super) served: Option<(quinn::Endpoint, tokio::task::JoinSet<()>)>,
    pub(super) push: Option<tokio::task::JoinHandle<()>>,
    pub(super) sinks: Vec<tokio::task::JoinHandle<()>>,
    pub(super) zone_watch: Option<mpsc::Sender<()>>,
    pub(super) commit_thread: JoinHandle<()>,
    pub(super) dataflow: JoinHandle<Result<RunSummary, crate::runtime::RunError>>,
    pub(super) hub: Option<Arc<Hub>>,
    pub(super) stopping_tx: watch::Sender<bool>,
    /// The live map's server, which ends once its pages' feeds have.
    pub(super) web: Option<tokio::task::JoinHandle<()>>,
    /// A process of a site: its index and `[cluster] stop_wait`.
    pub(super) site: Option<(usize, Duration)>,
}

/// Stops the rest of a node, in order: every ingest connection is done, so
/// closing the log hand-over ends the dataflow once it has taken in
/// everything acknowledged; subscriptions go on until its last emissions,
/// then are drained and the endpoint closed (on failure too, before the
/// error is returned). A process of a site waits for the dataflow at most
/// its `stop_wait`: the dataflow ends only once every process's input has,
/// so a process stopped alone leaves its dataflow running and stops with
/// [`EdgeError::StoppedAlone`] (the process's exit ends it).
pub(super) fn wind_down(w: WindDown) -> Result<RunSummary, EdgeError> {
    let WindDown {
        runtime,
        served,
        push,
        sinks,
        zone_watch,
        commit_thread,
        dataflow,
        hub,
        stopping_tx,
        web,
        site,
    } = w;
    drop(zone_watch);
    commit_thread
        .join()
        .map_err(|_| EdgeError::Runtime("the commit thread panicked".into()))?;
    if let Some((process, wait)) = site {
        let started = Instant::now();
        if !dataflow.is_finished() {
            tracing::info!(
                "process {process} of the site: its log is closed; waiting up to {} s ([cluster] stop_wait) for the other processes to stop, which ends the site's dataflow",
                wait.as_secs()
            );
        }
        while !dataflow.is_finished() && started.elapsed() < wait {
            std::thread::sleep(Duration::from_millis(20));
        }
        if !dataflow.is_finished() {
            if let Some(hub) = &hub {
                hub.close();
            }
            let _ = stopping_tx.send(true);
            close(&runtime, served);
            return Err(EdgeError::StoppedAlone {
                process,
                waited: wait,
            });
        }
    }
    let summary = dataflow
        .join()
        .map_err(|_| EdgeError::Runtime("the dataflow thread panicked".into()))
        .and_then(|r| r.map_err(|e| EdgeError::Runtime(e.to_string())));
    if let Some(push) = push {
        // The dataflow's end closed the push feed: the last partials
        // leave, within the push's own drain time.
        let limit = crate::push::client::DRAIN + Duration::from_secs(1);
        let _ = runtime.block_on(async { tokio::time::timeout(limit, push).await });
    }
    // The city sinks' feeds closed with the dataflow: their last rows
    // leave, all at once, within their own drain time.
    let limit = crate::sink::DRAIN + Duration::from_secs(1);
    let _ = runtime.block_on(async {
        let all = async {
            for sink in sinks {
                let _ = sink.await;
            }
        };
        tokio::time::timeout(limit, all).await
    });
    if let Some(hub) = &hub {
        hub.close();
    }
    let _ = stopping_tx.send(true);
    if let Some(web) = web {
        let limit = crate::web::DRAIN + Duration::from_secs(1);
        let _ = runtime.block_on(async { tokio::time::timeout(limit, web).await });
    }
    close(&runtime, served);
    drop(runtime);
    summary
}

/// Drains the subscriptions (at most [`SUBSCRIBER_DRAIN`]) and closes the
/// endpoint.
fn close(
    runtime: &tokio::runtime::Runtime,
    served: Option<(quinn::Endpoint, tokio::task::JoinSet<()>)>,
) {
    if let Some((endpoint, mut subs)) = served {
        runtime.block_on(async {
            let drained = async { while subs.join_next().await.is_some() {} };
            let _ = tokio::time::timeout(SUBSCRIBER_DRAIN, drained).await;
            endpoint.close(
                quinn::VarInt::from_u32(crate::ingest::frame::ErrorCode::ShuttingDown as u32),
                b"shutting down",
            );
            endpoint.wait_idle().await;
        });
    }
}

/// Prints a node's report to stderr.
pub fn print_report(r: &EdgeReport) {
    let c = &r.counters;
    let (role, unit) = match r.edges {
        None => ("edge", "records"),
        Some(_) => ("central", "updates"),
    };
    tracing::info!(
        "{role} stopped: {} connections, {} batches acknowledged ({} resends recognised), {} {unit} accepted, {} rejected ({} too late), {} datagrams, {} failed log writes",
        c.connections.load(Ordering::Relaxed),
        c.batches.load(Ordering::Relaxed),
        c.duplicates.load(Ordering::Relaxed),
        c.accepted.load(Ordering::Relaxed),
        c.rejected.load(Ordering::Relaxed),
        c.expired.load(Ordering::Relaxed),
        c.datagrams.load(Ordering::Relaxed),
        c.log_failures.load(Ordering::Relaxed),
    );
    tracing::info!(
        "  log: {} entries recovered at start ({} torn bytes cut); dataflow: {} records, {} windows final, {} corrections",
        r.recovered_entries, r.truncated_bytes, r.summary.ingest.records, r.summary.emitted.finals, r.summary.emitted.corrections
    );
    if let Some(p) = &r.push {
        tracing::info!(
            "  central sink: {} batches acknowledged ({} updates, {} refused), {} reconnects, {} windows given up unacknowledged",
            p.batches.load(Ordering::Relaxed),
            p.updates.load(Ordering::Relaxed),
            p.refused.load(Ordering::Relaxed),
            p.reconnects.load(Ordering::Relaxed),
            p.given_up.load(Ordering::Relaxed),
        );
    }
    for (name, s) in &r.sinks {
        tracing::info!(
            "  sink {name}: {} rows acknowledged in {} requests, {} retried, {} dead-lettered, {} superseded, {} already delivered before a restart, {} windows given up, {} rows dropped (max_backlog)",
            s.acknowledged.load(Ordering::Relaxed),
            s.batches.load(Ordering::Relaxed),
            s.retried.load(Ordering::Relaxed),
            s.dead_lettered.load(Ordering::Relaxed),
            s.superseded.load(Ordering::Relaxed),
            s.already_delivered.load(Ordering::Relaxed),
            s.given_up.load(Ordering::Relaxed),
            s.dropped.load(Ordering::Relaxed),
        );
    }
    if let Some(e) = &r.edges {
        tracing::info!(
            "  edges: {} updates applied, {} unchanged (resent, or a final value equal to the provisional one), {} expired, {} log entries skipped; pushed watermarks: {}",
            e.applied.load(Ordering::Relaxed),
            e.unchanged.load(Ordering::Relaxed),
            e.expired.load(Ordering::Relaxed),
            e.skipped.load(Ordering::Relaxed),
            e.edges_csv().lines().skip(1).collect::<Vec<_>>().join("; ")
        );
    }
}
