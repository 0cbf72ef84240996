//! A node as one process of a site ([`crate::runtime::Cluster`]): waiting
//! for the others at start, and following the site's clock.
//!
//! A process whose devices are quiet would hold the whole site's frontier
//! back (every window's finality waits for every process's input). So its
//! node follows the site: when the newest trusted event time any process
//! reached ([`SiteLink::clock`]) runs ahead of its own log's clock by
//! [`TICK_LAG`], it writes a clock tick into its log
//! ([`crate::log::Encoding::Clock`]), which its dataflow input then takes
//! in like a batch. Being in the log, the tick replays exactly: a restarted
//! site computes what it computed live.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::ingest::commit::WeakCommitter;
use crate::runtime::SiteLink;

/// How often a process compares its log's clock with the site's.
pub const TICK_EVERY: Duration = Duration::from_millis(200);
/// How far (event time) a process's log clock may trail the site's before
/// it writes a clock tick: one second, the finest time step of the
/// dataflow, so windows close within about a second of the site's clock.
pub const TICK_LAG: Duration = Duration::from_secs(1);
/// How often a process waiting for the rest of its site at start says so.
pub const WAIT_NOTICE: Duration = Duration::from_secs(10);

/// Follows the site's clock until `stop` turns true (or the log closes):
/// writes a clock tick whenever this process's log trails the site's.
pub async fn follow(site: Arc<SiteLink>, log: WeakCommitter, mut stop: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(TICK_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let lag = TICK_LAG.as_millis() as u64;
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        let (clock, logged) = (
            site.clock.load(Ordering::Acquire),
            site.logged.load(Ordering::Acquire),
        );
        if clock <= logged.saturating_add(lag) {
            continue;
        }
        let Some(answer) = log.tick(clock) else {
            return;
        };
        // Refused (the log cannot be written now): the next look tries
        // again.
        let _ = answer.await;
    }
}

/// Waits until the site's processes have agreed on the frozen horizon
/// (each process's dataflow starts once all are connected), saying every
/// [`WAIT_NOTICE`] that it waits; `None` if the dataflow stopped first.
pub fn agreed(site: &SiteLink, running: impl Fn() -> bool, processes: usize) -> Option<u64> {
    let started = Instant::now();
    let mut said = Instant::now();
    loop {
        if let Some(h) = site.frozen() {
            return Some(h);
        }
        if !running() {
            return None;
        }
        if said.elapsed() >= WAIT_NOTICE {
            said = Instant::now();
            tracing::warn!(
                "waiting {:.0} s for the other processes of the site ({processes} in [cluster] processes): each process starts its dataflow once every one is up",
                started.elapsed().as_secs_f64()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
