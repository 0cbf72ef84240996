//! The delivery loop every city sink shares; a [`Target`] brings the
//! transport and the encoding.
//!
//! The driver takes the dataflow's rows ([`Feed`]), passes them through the
//! privacy projection, and keeps the latest per key in an outbox
//! ([`crate::delivery::outbox`]) while the target is slow or away. It cuts
//! requests (a full one at once, a partial one after [`LINGER`]), keeps up
//! to `max_in_flight` of them in flight, and reads their [`Outcome`]:
//!
//! - [`Outcome::Done`]: every row acknowledged;
//! - [`Outcome::Partly`]: rows the target failed transiently wait again,
//!   rows it refused for good are dead-lettered (counted, said);
//! - [`Outcome::Retry`]: everything waits again; the driver backs off
//!   (200 ms doubling to 10 s with jitter, or longer when the target asks);
//! - [`Outcome::TooLarge`]: everything waits again, and requests are cut
//!   at half the size until one succeeds; a row too large alone is
//!   dead-lettered;
//! - [`Outcome::Refused`]: the request's rows are dead-lettered.
//!
//! A failed request puts back its own rows only: other requests in flight
//! keep theirs. With [`Settings::latest_only`] the outbox is keyed by
//! entity (a segment, a charger) and a row of an older window than the
//! entity's latest is never sent (counted in [`SinkStatus::superseded`]);
//! [`Settings::exclusive`] keeps an entity out of a request while another
//! holds it, so the target sees an entity's rows in order. A target
//! keeping history has a ledger ([`Settings::ledger`]): an acknowledged
//! request is recorded before it counts as delivered, and after a restart
//! the rows the ledger holds are not sent again.
//!
//! The delivered frontier ([`SinkStatus::delivered`]) gates the node's log
//! retention (up to `max_hold`, [`crate::delivery::gate`]).

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rustc_hash::FxHashMap;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{Feed, SinkContext, SinkStatus, DRAIN, FIRST_BACKOFF, LINGER, MAX_BACKOFF};
use crate::aggregate::{AggKey, AggValue, Kind};
use crate::dataflow::emit::Status;
use crate::delivery::backoff::Backoff;
use crate::delivery::ledger::{Ledger, Mark};
use crate::delivery::outbox::{Outbox, Pick};

/// A row waiting to leave.
#[derive(Clone, Debug)]
pub struct Row {
    /// Which row (with its window).
    pub key: AggKey,
    /// Its value, as privacy lets it leave.
    pub value: AggValue,
    /// Final or a correction (or provisional, for a target that takes
    /// them).
    pub status: Status,
    /// The emission watermark: an ordering receivers may drop stale
    /// values by.
    pub watermark: u64,
    /// xxh3 of its CSV row (TELEMETRY.md §4), when the sink keeps a
    /// ledger (else 0).
    pub digest: u64,
}

/// How a request ended.
#[derive(Debug)]
pub enum Outcome {
    /// Every row acknowledged.
    Done,
    /// Part acknowledged: rows (by their place in the request) to retry,
    /// and rows refused for good with why.
    Partly {
        /// Failed transiently.
        retry: Vec<usize>,
        /// Refused for good.
        refused: Vec<(usize, String)>,
    },
    /// Nothing happened: everything waits again, after a backoff of at
    /// least `after`.
    Retry {
        /// What happened.
        why: String,
        /// Least wait the target asked for.
        after: Duration,
    },
    /// Too large: everything waits again, in smaller requests.
    TooLarge,
    /// The target refused the request for good.
    Refused(String),
}

/// What [`Target::add`] did with a row.
#[derive(Debug)]
pub enum Add {
    /// In the request.
    Taken,
    /// The request is full; the row waits.
    Full,
    /// The row can never be sent (too large alone): dead-lettered.
    Never(String),
}

/// How a driver delivers to its target.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Rows per request at most.
    pub max_rows: usize,
    /// Requests in flight at most.
    pub max_in_flight: usize,
    /// Longest the log keeps windows the target has not acknowledged.
    pub max_hold: Duration,
    /// Rows waiting at most: past it the oldest are given up (counted in
    /// [`SinkStatus::dropped`], said once per outage).
    pub max_backlog: usize,
    /// One entity per key, older windows dropped (see the module doc).
    pub latest_only: bool,
    /// An entity in one request at a time.
    pub exclusive: bool,
    /// Keep a ledger (where), for a target that keeps history.
    pub ledger: Option<PathBuf>,
    /// Provisional rows are delivered too.
    pub provisional: bool,
    /// Retractions are delivered (the target deletes or marks the row);
    /// otherwise they are not sent.
    pub retractions: bool,
}

/// A sink's transport and encoding.
pub trait Target: Send + 'static {
    /// A request being built.
    type Request: Send + 'static;
    /// The sink's kind and name, for what it says ("ngsi-ld sink city").
    fn what(&self) -> String;
    /// The sink's settings.
    fn settings(&self) -> Settings;
    /// The ledger's id of an entity (its entity id, topic, ...).
    fn ledger_id(&self, key: &AggKey) -> Option<String>;
    /// A new, empty request.
    fn request(&mut self) -> Self::Request;
    /// Adds a row to `request` (holding `rows` already).
    fn add(&mut self, request: &mut Self::Request, rows: usize, row: &Row) -> Add;
    /// Sends a request; the future resolves to its outcome.
    fn send(&mut self, request: Self::Request) -> impl Future<Output = Outcome> + Send + 'static;
}

/// The outbox's key: an entity (window 0) when latest only, else the row.
fn outbox_key(settings: &Settings, key: &AggKey) -> AggKey {
    if settings.latest_only {
        AggKey { window: 0, ..*key }
    } else {
        *key
    }
}

/// A row of a request in flight: its outbox key, and what the ledger
/// records once it is acknowledged.
type Carried = (AggKey, Option<(String, Mark)>);

struct State {
    outbox: Outbox<AggKey, Row>,
    ledger: Option<Ledger>,
    /// Latest window per entity offered (or acknowledged before a
    /// restart), when latest only.
    latest: FxHashMap<(Kind, u32), u64>,
    /// Per request in flight: its rows' outbox keys and ledger marks.
    carried: FxHashMap<u64, Vec<Carried>>,
    /// Marks of rows acknowledged, not yet in the ledger.
    unrecorded: Vec<(String, Mark)>,
    watermark: u64,
    released: bool,
    next_seq: u64,
    /// Rows per request now (halved by a 413).
    cap: usize,
    last_cut: Instant,
    retry_at: Instant,
    backoff: Backoff,
    outage_said: bool,
    given_up_said: bool,
    dropped_said: bool,
}

/// Drives a target: see the module documentation.
pub struct Driver<T: Target> {
    target: T,
    settings: Settings,
    ctx: SinkContext,
    status: Arc<SinkStatus>,
}

impl<T: Target> Driver<T> {
    /// A driver of `target`.
    pub fn new(target: T, ctx: SinkContext, status: Arc<SinkStatus>) -> Self {
        let settings = target.settings();
        Driver {
            target,
            settings,
            ctx,
            status,
        }
    }

    fn say(&self, what: &str) {
        tracing::warn!("{}: {what}", self.target.what());
    }

    /// Runs until the feed ends (the dataflow stopped), then delivers what
    /// is left for at most [`DRAIN`].
    pub async fn run(mut self, mut feed: UnboundedReceiver<Feed>) {
        let ledger = self
            .settings
            .ledger
            .as_ref()
            .and_then(|path| match Ledger::open(path) {
                Ok((l, warnings)) => {
                    for w in warnings {
                        self.say(&w);
                    }
                    Some(l)
                }
                Err(e) => {
                    self.say(&format!(
                        "{e}; delivering without it (a restart may resend what the target has)"
                    ));
                    None
                }
            });
        let mut outbox = if self.settings.exclusive {
            Outbox::exclusive()
        } else {
            Outbox::new()
        };
        outbox.hold();
        let mut s = State {
            outbox,
            ledger,
            latest: FxHashMap::default(),
            carried: FxHashMap::default(),
            unrecorded: Vec::new(),
            watermark: 0,
            released: false,
            next_seq: 0,
            cap: self.settings.max_rows,
            last_cut: Instant::now(),
            retry_at: Instant::now(),
            backoff: Backoff::new(FIRST_BACKOFF, MAX_BACKOFF),
            outage_said: false,
            given_up_said: false,
            dropped_said: false,
        };
        let mut in_flight: JoinSet<(u64, Outcome)> = JoinSet::new();
        let mut drain_until: Option<Instant> = None;
        loop {
            while in_flight.len() < self.settings.max_in_flight && self.due(&s) {
                let Some((seq, request)) = self.cut(&mut s) else {
                    break;
                };
                let sent = self.target.send(request);
                in_flight.spawn(async move { (seq, sent.await) });
            }
            self.publish(&mut s);
            let (waiting, flying) = s.outbox.backlog();
            if drain_until.is_some() && waiting + flying == 0 {
                break;
            }
            if drain_until.is_some_and(|d| Instant::now() >= d) {
                self.say(&format!("stopping with {} rows undelivered; the log keeps their windows, so the next start delivers them", waiting + flying));
                break;
            }
            let wake = (waiting > 0).then(|| s.retry_at.max(s.last_cut + LINGER));
            tokio::select! {
                msg = feed.recv(), if drain_until.is_none() => match msg {
                    Some(m) => self.take(m, &mut s),
                    None => {
                        drain_until = Some(Instant::now() + DRAIN);
                        if !s.released {
                            self.release(&mut s);
                        }
                    }
                },
                done = in_flight.join_next(), if !in_flight.is_empty() => {
                    if let Some(Ok((seq, outcome))) = done {
                        self.answered(seq, outcome, &mut s);
                    }
                    // Every other answer already in: one ledger write for all.
                    while let Some(Ok((seq, outcome))) = in_flight.try_join_next() {
                        self.answered(seq, outcome, &mut s);
                    }
                    self.record(&mut s);
                }
                _ = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => {}
                _ = tokio::time::sleep_until(drain_until.unwrap_or_else(Instant::now)), if drain_until.is_some() => {}
            }
        }
    }

    /// Takes a batch of the dataflow's rows.
    fn take(&self, feed: Feed, s: &mut State) {
        let k = self
            .ctx
            .min_vehicles
            .load(std::sync::atomic::Ordering::Relaxed);
        for e in feed.rows {
            let retraction = e.status == Status::Retraction;
            if (e.status == Status::Provisional && !self.settings.provisional)
                || (retraction && !self.settings.retractions)
            {
                continue;
            }
            let Some(value) = crate::aggregate::project(&e.value, k) else {
                continue;
            };
            if self.settings.latest_only {
                let entity = (e.key.kind, e.key.key);
                let latest = match s.latest.get(&entity) {
                    Some(w) => Some(*w),
                    None => (s.ledger.as_ref())
                        .zip(self.target.ledger_id(&e.key))
                        .and_then(|(l, id)| l.get(&id))
                        .map(|m| m.window),
                };
                if latest.is_some_and(|w| w > e.key.window) {
                    self.status.superseded.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                s.latest.insert(entity, e.key.window);
            }
            // Only a ledger reads it (a sixth of a sink's CPU otherwise). A
            // retraction is not the row it retracts (the ledger tells them
            // apart).
            let digest = match &s.ledger {
                Some(_) => digest(&self.ctx, &e.key, &value) ^ u64::from(retraction).wrapping_neg(),
                None => 0,
            };
            let row = Row {
                key: e.key,
                value,
                status: e.status,
                watermark: e.watermark,
                digest,
            };
            s.outbox
                .offer(outbox_key(&self.settings, &e.key), row, e.watermark);
        }
        let watermark = feed
            .watermark
            .min(self.ctx.input_watermark.load(Ordering::Acquire));
        s.outbox.advance(watermark);
        s.watermark = s.watermark.max(watermark);
        let dropped = s.outbox.drop_oldest(self.settings.max_backlog);
        if dropped > 0 {
            self.status
                .dropped
                .fetch_add(dropped as u64, Ordering::Relaxed);
            if !std::mem::replace(&mut s.dropped_said, true) {
                self.say(&format!(
                    "more than max_backlog ({}) rows wait: the oldest are given up (counted in dropped)",
                    self.settings.max_backlog
                ));
            }
        }
        if !s.released && s.watermark >= self.ctx.hold_until.load(Ordering::Acquire) {
            self.release(s);
        }
    }

    /// The log replay is done: what the ledger says the target has stays
    /// here; the rest may leave.
    fn release(&self, s: &mut State) {
        if let Some(ledger) = &s.ledger {
            let mut known = 0u64;
            s.outbox.retain_waiting(|_, row| {
                let mark = Mark {
                    window: row.key.window,
                    digest: row.digest,
                };
                let has = (self.target.ledger_id(&row.key))
                    .is_some_and(|id| ledger.get(&id) == Some(mark));
                known += u64::from(has);
                !has
            });
            self.status
                .already_delivered
                .fetch_add(known, Ordering::Relaxed);
        }
        s.outbox.release();
        s.released = true;
    }

    /// Whether a request is due: the replay is done, no backoff runs, and
    /// a full request waits or rows have waited [`LINGER`].
    fn due(&self, s: &State) -> bool {
        let (waiting, _) = s.outbox.backlog();
        s.released
            && waiting > 0
            && Instant::now() >= s.retry_at
            && (waiting >= s.cap || s.last_cut.elapsed() >= LINGER)
    }

    /// Cuts the next request.
    fn cut(&mut self, s: &mut State) -> Option<(u64, T::Request)> {
        let seq = s.next_seq;
        let mut request = self.target.request();
        let mut carried = Vec::new();
        let mut never = Vec::new();
        let cap = s.cap;
        let with_ledger = s.ledger.is_some();
        let target = &mut self.target;
        s.outbox.take_with(seq, |k, row| {
            if carried.len() >= cap {
                return Pick::Stop;
            }
            match target.add(&mut request, carried.len(), row) {
                Add::Taken => {
                    let mark = with_ledger
                        .then(|| target.ledger_id(&row.key))
                        .flatten()
                        .map(|id| {
                            (
                                id,
                                Mark {
                                    window: row.key.window,
                                    digest: row.digest,
                                },
                            )
                        });
                    carried.push((*k, mark));
                    Pick::Take
                }
                Add::Full if carried.is_empty() => {
                    never.push("it does not fit an empty request".to_owned());
                    Pick::Drop
                }
                Add::Full => Pick::Stop,
                Add::Never(why) => {
                    never.push(why);
                    Pick::Drop
                }
            }
        })?;
        for why in never {
            self.status.dead_lettered.fetch_add(1, Ordering::Relaxed);
            self.say(&format!("a row was dead-lettered: {why}"));
        }
        s.next_seq += 1;
        s.last_cut = Instant::now();
        if carried.is_empty() {
            s.outbox.acked(seq);
            return None;
        }
        self.status
            .sent
            .fetch_add(carried.len() as u64, Ordering::Relaxed);
        s.carried.insert(seq, carried);
        Some((seq, request))
    }

    /// Request `seq` ended with `outcome`.
    fn answered(&self, seq: u64, outcome: Outcome, s: &mut State) {
        let carried = s.carried.remove(&seq).unwrap_or_default();
        let n = carried.len() as u64;
        // Which of the request's rows failed, by place.
        let mut failed = vec![false; carried.len()];
        match &outcome {
            Outcome::Done => {}
            Outcome::Partly { retry, refused } => {
                for i in retry.iter().chain(refused.iter().map(|(i, _)| i)) {
                    if let Some(f) = failed.get_mut(*i) {
                        *f = true;
                    }
                }
            }
            _ => failed.fill(true),
        }
        let acknowledged = (carried.iter().zip(&failed))
            .filter(|(_, f)| !**f)
            .map(|(c, _)| c);
        s.unrecorded.extend(
            (acknowledged.clone()).filter_map(|(_, m)| m.as_ref().map(|(id, m)| (id.clone(), *m))),
        );
        let count = acknowledged.count() as u64;
        if count > 0 {
            self.status.batches.fetch_add(1, Ordering::Relaxed);
            self.status.acknowledged.fetch_add(count, Ordering::Relaxed);
        }
        match outcome {
            Outcome::Done => {
                s.outbox.acked(seq);
                self.reached(s);
            }
            Outcome::Partly { retry, refused } => {
                let again: rustc_hash::FxHashSet<AggKey> = retry
                    .iter()
                    .filter_map(|i| carried.get(*i))
                    .map(|c| c.0)
                    .collect();
                s.outbox.partly_lost(seq, |k| again.contains(k));
                self.status
                    .retried
                    .fetch_add(again.len() as u64, Ordering::Relaxed);
                if let Some((_, why)) = refused.first() {
                    self.status
                        .dead_lettered
                        .fetch_add(refused.len() as u64, Ordering::Relaxed);
                    self.say(&format!(
                        "the target refused {} rows for good (dead-lettered), the first: {why}",
                        refused.len()
                    ));
                }
                self.reached(s);
            }
            Outcome::Retry { why, after } => {
                s.outbox.partly_lost(seq, |_| true);
                self.status.retried.fetch_add(n, Ordering::Relaxed);
                self.status.connected.store(false, Ordering::Relaxed);
                if !std::mem::replace(&mut s.outage_said, true) {
                    self.say(&format!("{why}; holding rows and retrying with backoff"));
                }
                s.retry_at = Instant::now() + s.backoff.next_wait().max(after);
            }
            Outcome::TooLarge if carried.len() == 1 => {
                // Alone and still too large: it can never be sent.
                s.outbox.acked(seq);
                self.status.dead_lettered.fetch_add(1, Ordering::Relaxed);
                self.say("a row alone is too large for the target (413): dead-lettered");
            }
            Outcome::TooLarge => {
                s.outbox.partly_lost(seq, |_| true);
                self.status.retried.fetch_add(n, Ordering::Relaxed);
                s.cap = (carried.len() / 2).max(1);
            }
            Outcome::Refused(why) => {
                s.outbox.acked(seq);
                self.status.dead_lettered.fetch_add(n, Ordering::Relaxed);
                self.say(&format!("{why}; the request's {n} rows are dead-lettered"));
                self.reached(s);
            }
        }
    }

    /// Writes the marks of what was acknowledged to the ledger (one write,
    /// one fsync), before [`publish`](Self::publish) says it is delivered.
    fn record(&self, s: &mut State) {
        let marks = std::mem::take(&mut s.unrecorded);
        if let Some(ledger) = &mut s.ledger {
            if let Err(e) = ledger.record(marks.iter().map(|(id, m)| (id.as_str(), *m))) {
                self.say(&format!("{e}: a restart may resend what the target has"));
            }
        }
    }

    /// A request reached the target.
    fn reached(&self, s: &mut State) {
        s.backoff.reset();
        s.cap = (s.cap * 2).min(self.settings.max_rows);
        self.status.connected.store(true, Ordering::Relaxed);
        if std::mem::replace(&mut s.outage_said, false) {
            tracing::info!("{}: the target answers again", self.target.what());
        }
        s.dropped_said = false;
    }

    /// Publishes the delivered frontier and the backlog.
    fn publish(&self, s: &mut State) {
        let delivered = s.outbox.delivered();
        let given_up = crate::delivery::gate::publish(
            &self.status.delivered,
            &self.status.given_up,
            delivered,
            s.watermark,
            self.settings.max_hold.as_millis() as u64,
            self.ctx.window_ms,
        );
        if given_up > 0 && !std::mem::replace(&mut s.given_up_said, true) {
            self.say(&format!("the target has not acknowledged windows older than max_hold ({:?}): their log segments are no longer kept for it (counted in given_up)", self.settings.max_hold));
        }
        let (waiting, flying) = s.outbox.backlog();
        self.status
            .backlog
            .store((waiting + flying) as u64, Ordering::Relaxed);
        self.status
            .oldest_age_ms
            .store(s.watermark.saturating_sub(delivered), Ordering::Relaxed);
        self.status.publish_metrics();
    }
}

/// The digest of a row: xxh3 of its CSV row (TELEMETRY.md §4), stable
/// across versions as the format is.
fn digest(ctx: &SinkContext, key: &AggKey, value: &AggValue) -> u64 {
    let mut row = String::new();
    crate::aggregate::write_csv_row(&mut row, &ctx.reference, ctx.window_ms, key, value);
    xxhash_rust::xxh3::xxh3_64(row.as_bytes())
}
