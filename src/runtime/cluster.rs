//! One site across several processes: timely's cluster communication,
//! and what the processes tell each other as they run.
//!
//! Each process reads its own input (its devices' batches, its own log)
//! into the one dataflow, which exchanges records by key between processes
//! as it does between threads. The emissions all go to worker 0, on
//! process 0. Three things are site-wide rather than per process, and the
//! processes exchange them over timely's own connections, in a small
//! dataflow beside the aggregates' ([`SiteLink`], built by [`site_flow`]):
//!
//! - **The frozen horizon**, agreed once at start: the largest checkpoint
//!   horizon of any process. Every process freezes the windows retiring at
//!   or before it (their rows live in process 0's sinks only), so no
//!   process recomputes a window another has deleted records of.
//! - **The clock**: the newest trusted event time any process reached. A
//!   process whose devices are quiet would hold the site's frontier (and so
//!   every window's finality) back; its node writes clock ticks
//!   ([`crate::log::Encoding::Clock`]) into its own log to follow the site,
//!   so a replay of its log reproduces exactly what it did live.
//! - **How far process 0's outputs are durable**: the others' log retention
//!   waits for it, as process 0's waits for its own sinks.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use timely::dataflow::operators::vec::{Broadcast, Input as _};
use timely::dataflow::operators::Inspect;
use timely::worker::Worker;

/// One process of a timely cluster: the dataflow runs across every
/// process's workers (`workers` each) and exchanges records by key between
/// them over TCP. Each process reads its own input; the emissions all go
/// to worker 0, so process 0's caller gets every one of them and the
/// others get none. Every process must be started (timely waits for them
/// all before the dataflow runs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    /// This process's index in `addresses`.
    pub process: usize,
    /// Every process's `host:port` (timely's own connections), in
    /// process order.
    pub addresses: Vec<String>,
    /// How long a stopping process waits for the rest of the site to stop
    /// too (`[cluster] stop_wait`): the dataflow ends only once every
    /// process's input has ended, so a process stopped alone leaves after
    /// this wait, its log durable, and the site restarts (docs/SCALING.md).
    pub stop_wait: std::time::Duration,
}

impl Cluster {
    /// Default [`Cluster::stop_wait`]: long enough for processes stopped
    /// together by hand or by an orchestrator (`kubectl delete pod -l`).
    pub const DEFAULT_STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

    /// Process `process` of the site at `addresses`, with the default
    /// settings.
    pub fn new(process: usize, addresses: Vec<String>) -> Cluster {
        Cluster {
            process,
            addresses,
            stop_wait: Cluster::DEFAULT_STOP_WAIT,
        }
    }

    /// Why the cluster cannot run, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        let n = self.addresses.len();
        if n < 2 {
            return Err(format!("a cluster has at least 2 processes, {n} given"));
        }
        if self.process >= n {
            return Err(format!(
                "process {} of {n}: the index is 0 to {}",
                self.process,
                n - 1
            ));
        }
        for a in &self.addresses {
            if a.rsplit_once(':')
                .is_none_or(|(_, p)| p.parse::<u16>().is_err())
            {
                return Err(format!("{a:?}: each process's address is HOST:PORT"));
            }
        }
        Ok(())
    }

    /// A process index as an operator gives it: `N`, or a name ending in
    /// `-N` (a StatefulSet pod's name, whose ordinal is its index).
    pub fn index_from(s: &str) -> Result<usize, String> {
        let digits = s.rsplit_once('-').map_or(s, |(_, n)| n);
        digits.parse().map_err(|_| {
            format!("{s:?} is not a process index: give a number from 0, or a name ending in -N (a StatefulSet pod's name)")
        })
    }

    /// Whether this process gets the emissions (it runs worker 0).
    pub fn emits(&self) -> bool {
        self.process == 0
    }
}

/// What the processes of a cluster tell each other (module doc); one per
/// process, shared by its workers and its node. Without a cluster, the
/// frozen horizon is the run's own and nothing else is used.
#[derive(Debug, Default)]
pub struct SiteLink {
    /// The newest trusted event time (ms) any process's clock reached; 0
    /// until one did.
    pub clock: AtomicU64,
    /// How far process 0's outputs (files sinks, central push, city sinks)
    /// are durable, as process 0 last told: a watermark.
    pub durable: Arc<AtomicU64>,
    /// On process 0: the frontiers whose minimum it tells the others.
    pub gates: Vec<Arc<AtomicU64>>,
    /// This process's log clock: the newest trusted event time of its
    /// entries (published by its commit thread), which clock ticks raise
    /// toward `clock`.
    pub logged: AtomicU64,
    /// The site's frozen horizon, once agreed.
    frozen: OnceLock<u64>,
    /// Checkpoint horizons heard at start, by process.
    horizons: Mutex<BTreeMap<u64, u64>>,
}

/// A message between the processes of a site: `(kind, process, value)`.
type News = (u8, u64, u64);
const HORIZON: u8 = 0;
const CLOCK: u8 = 1;
const DURABLE: u8 = 2;

impl SiteLink {
    /// A link whose process tells the others the minimum of `gates`.
    pub fn with_gates(gates: Vec<Arc<AtomicU64>>) -> Self {
        SiteLink {
            gates,
            ..SiteLink::default()
        }
    }

    /// The site's frozen horizon, once agreed (a lone process's is its
    /// checkpoint's).
    pub fn frozen(&self) -> Option<u64> {
        self.frozen.get().copied()
    }

    /// Sets the frozen horizon (a lone process: its own checkpoint's).
    pub(crate) fn agree(&self, horizon: u64) -> u64 {
        *self.frozen.get_or_init(|| horizon)
    }

    /// Takes in one message.
    fn hear(&self, &(kind, process, value): &News, processes: usize) {
        match kind {
            HORIZON => {
                let Ok(mut h) = self.horizons.lock() else {
                    return;
                };
                h.insert(process, value);
                if h.len() == processes {
                    let max = h.values().copied().max().unwrap_or(0);
                    self.agree(max);
                }
            }
            CLOCK => {
                self.clock.fetch_max(value, Ordering::AcqRel);
            }
            DURABLE if process == 0 => {
                self.durable.fetch_max(value, Ordering::AcqRel);
            }
            _ => {}
        }
    }
}

/// One worker's end of the site's exchange: what it last told.
pub(crate) struct SiteFlow {
    input: timely::dataflow::InputHandleVec<u64, News>,
    process: u64,
    /// Whether this worker speaks for its process (its first worker).
    speaks: bool,
    told_clock: u64,
    told_durable: u64,
}

/// Builds the site's exchange on this worker (every worker of every
/// process, after the aggregates' dataflow), and tells the others this
/// process's checkpoint `horizon` (from its first worker).
pub(crate) fn site_flow(
    worker: &mut Worker,
    link: &Arc<SiteLink>,
    cluster: &Cluster,
    workers: usize,
    horizon: u64,
) -> SiteFlow {
    let processes = cluster.addresses.len();
    let heard = link.clone();
    let mut input = worker.dataflow::<u64, _, _>(move |scope| {
        let (input, news) = scope.new_input::<News>();
        news.broadcast().inspect(move |n| heard.hear(n, processes));
        input
    });
    let speaks = worker.index() == cluster.process * workers;
    let process = cluster.process as u64;
    if speaks {
        input.send((HORIZON, process, horizon));
        input.flush();
    }
    SiteFlow {
        input,
        process,
        speaks,
        told_clock: 0,
        told_durable: 0,
    }
}

impl SiteFlow {
    /// Tells the others what changed: this process's clock (`clock`, its
    /// newest trusted event time) and, on process 0, how far its outputs
    /// are durable.
    pub(crate) fn tell(&mut self, link: &SiteLink, clock: impl FnOnce() -> Option<u64>) {
        if !self.speaks {
            return;
        }
        let mut told = false;
        if let Some(c) = clock().filter(|&c| c > self.told_clock) {
            self.input.send((CLOCK, self.process, c));
            self.told_clock = c;
            told = true;
        }
        if self.process == 0 && !link.gates.is_empty() {
            let d = (link.gates.iter())
                .map(|g| g.load(Ordering::Acquire))
                .min()
                .unwrap_or(0);
            if d > self.told_durable {
                self.input.send((DURABLE, 0, d));
                self.told_durable = d;
                told = true;
            }
        }
        if told {
            self.input.flush();
        }
    }
}

/// Timely's communication set up to count the bytes this process sends
/// to the others (messages with their headers) into `sent`: what the
/// exchange between processes costs.
pub(crate) fn counting_hooks(sent: Arc<AtomicU64>) -> timely::communication::Hooks {
    use timely::communication::logging::{CommunicationEvent, CommunicationEventBuilder};
    use timely::logging_core::Logger;
    let log_fn = move |setup: timely::communication::logging::CommunicationSetup| {
        let sent = sent.clone();
        setup.sender.then(|| {
            Logger::<CommunicationEventBuilder>::new(
                std::time::Instant::now(),
                std::time::Duration::ZERO,
                move |_, events: &mut Option<Vec<_>>| {
                    let bytes: usize = (events.iter().flatten())
                        .filter_map(|(_, e)| match e {
                            CommunicationEvent::Message(m) if m.is_send => {
                                Some(m.header.required_bytes())
                            }
                            _ => None,
                        })
                        .sum();
                    sent.fetch_add(bytes as u64, Ordering::Relaxed);
                },
            )
        })
    };
    timely::communication::Hooks {
        log_fn: Arc::new(log_fn),
        ..Default::default()
    }
}
