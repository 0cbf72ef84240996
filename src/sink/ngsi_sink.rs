//! `[[sink]] type = "ngsi-ld"`: upserts entities to an NGSI-LD context
//! broker (`POST /ngsi-ld/v1/entityOperations/upsert?options=update`,
//! `Content-Type: application/json`, the @context in a `Link` header,
//! `NGSILD-Tenant` when set).
//!
//! One entity per segment and per charger ([`super::ngsi`]); the outbox
//! is keyed by entity, so a request never holds one id twice, an entity
//! waits while a request holding it is in flight (several requests may be
//! in flight, `max_in_flight`), and a row of an older window than the
//! entity's latest is never sent (counted in
//! [`SinkStatus::superseded`]): the broker's entity only moves forward.
//! Requests hold at most `max_entities` entities and `max_bytes` bytes.
//!
//! The broker's answers:
//! - 201, 204: every entity acknowledged.
//! - 207: the ids in `success` are acknowledged; of those in `errors`, an
//!   error with status 5xx or 429 (or none) is retried, any other is
//!   dead-lettered (counted, the broker's answer said in the log).
//! - 413: the entities wait again and requests are cut at half the size
//!   until one succeeds; an entity too big alone is dead-lettered.
//! - 408, 429, 5xx, a timeout or a lost connection: the entities wait
//!   again; the sink backs off (200 ms doubling to 10 s, with jitter, or
//!   longer when a `Retry-After` says so).
//! - 401, 403, 404: the same (a configuration to fix: said once per outage).
//! - 400 and other 4xx: the request's entities are dead-lettered.
//!
//! An acknowledged request is recorded in the sink's ledger before it
//! counts as delivered: brokers keep every write as history, so a
//! restarted node never resends what a broker acknowledged.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rustc_hash::FxHashMap;
use serde::Deserialize;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{Feed, SinkContext, SinkStatus, DRAIN, FIRST_BACKOFF, LINGER, MAX_BACKOFF};
use crate::aggregate::{AggKey, AggValue, Kind};
use crate::delivery::backoff::Backoff;
use crate::delivery::ledger::{Ledger, Mark};
use crate::delivery::outbox::{Outbox, Pick};
use crate::topology::NgsiSink;

/// The upsert path under the broker's base URL.
pub const UPSERT_PATH: &str = "/ngsi-ld/v1/entityOperations/upsert?options=update";

/// An entity: kind and index in the reference data.
type EntityKey = (Kind, u32);

/// A row waiting for its entity.
#[derive(Clone, Debug)]
struct Row {
    window: u64,
    value: AggValue,
    digest: u64,
}

/// What a request carried: per entity, its id and what to mark.
type Carried = Vec<(EntityKey, String, Mark)>;

/// How a request ended.
enum Outcome {
    /// Every entity acknowledged.
    Done,
    /// Part acknowledged: ids to retry, ids refused for good.
    Partly {
        retry: Vec<String>,
        refused: Vec<(String, String)>,
    },
    /// Nothing happened: everything waits again, after a backoff of at
    /// least this long.
    Retry { why: String, after: Duration },
    /// Too large: everything waits again, in smaller requests.
    TooLarge,
    /// The broker refused the request for good.
    Refused(String),
}

/// A 207 body (NGSI-LD BatchOperationResult).
#[derive(Deserialize)]
struct BatchResult {
    #[serde(default)]
    errors: Vec<BatchError>,
}

#[derive(Deserialize)]
struct BatchError {
    #[serde(rename = "entityId")]
    entity_id: String,
    #[serde(default)]
    error: serde_json::Value,
}

/// The task of one NGSI-LD sink.
pub struct NgsiTask {
    cfg: NgsiSink,
    ctx: SinkContext,
    status: Arc<SinkStatus>,
}

/// The task's state.
struct State {
    outbox: Outbox<EntityKey, Row>,
    ledger: Option<Ledger>,
    /// Latest window per entity offered (or acknowledged before a restart).
    latest: FxHashMap<EntityKey, u64>,
    carried: FxHashMap<u64, Carried>,
    watermark: u64,
    released: bool,
    next_seq: u64,
    /// Entities per request now (halved by a 413).
    cap: usize,
    last_cut: Instant,
    retry_at: Instant,
    backoff: Backoff,
    outage_said: bool,
    given_up_said: bool,
}

impl NgsiTask {
    /// The task of sink `cfg`.
    pub fn new(cfg: NgsiSink, ctx: SinkContext, status: Arc<SinkStatus>) -> Self {
        NgsiTask { cfg, ctx, status }
    }

    fn say(&self, what: &str) {
        eprintln!("edgeflow: ngsi-ld sink {}: {what}", self.cfg.name);
    }

    fn client(&self) -> anyhow::Result<reqwest::Client> {
        let mut b = reqwest::Client::builder()
            .timeout(self.cfg.timeout)
            .connect_timeout(self.cfg.timeout.min(Duration::from_secs(5)))
            .pool_max_idle_per_host(self.cfg.max_in_flight);
        if let Some(ca) = &self.cfg.ca {
            let pem = std::fs::read(ca)?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)? {
                b = b.add_root_certificate(cert);
            }
        }
        Ok(b.build()?)
    }

    /// Runs until the feed ends (the dataflow stopped), then delivers what
    /// is left for at most [`DRAIN`].
    pub async fn run(self, mut feed: UnboundedReceiver<Feed>) {
        let client = match self.client() {
            Ok(c) => c,
            Err(e) => {
                self.say(&format!("{e:#}; nothing is delivered"));
                while feed.recv().await.is_some() {}
                return;
            }
        };
        let dir = (self.cfg.state_dir.clone())
            .unwrap_or_else(|| self.ctx.log_dir.join(format!("sink-{}", self.cfg.name)));
        let ledger = match Ledger::open(&dir.join("ledger")) {
            Ok((l, warnings)) => {
                for w in warnings {
                    self.say(&w);
                }
                Some(l)
            }
            Err(e) => {
                self.say(&format!(
                    "{e}; delivering without it (a restart may resend what the broker has)"
                ));
                None
            }
        };
        let mut outbox = Outbox::exclusive();
        outbox.hold();
        let mut s = State {
            outbox,
            ledger,
            latest: FxHashMap::default(),
            carried: FxHashMap::default(),
            watermark: 0,
            released: false,
            next_seq: 0,
            cap: self.cfg.max_entities,
            last_cut: Instant::now(),
            retry_at: Instant::now(),
            backoff: Backoff::new(FIRST_BACKOFF, MAX_BACKOFF),
            outage_said: false,
            given_up_said: false,
        };
        let mut in_flight: JoinSet<(u64, Outcome)> = JoinSet::new();
        let mut drain_until: Option<Instant> = None;
        loop {
            while in_flight.len() < self.cfg.max_in_flight && self.due(&s) {
                let Some((seq, body)) = self.cut(&mut s) else {
                    break;
                };
                let request = self.request(&client, body);
                in_flight.spawn(async move { (seq, request.await) });
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
            let wake = if waiting == 0 {
                None
            } else {
                Some(s.retry_at.max(s.last_cut + LINGER))
            };
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
                }
                _ = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => {}
                _ = tokio::time::sleep_until(drain_until.unwrap_or_else(Instant::now)), if drain_until.is_some() => {}
            }
        }
    }

    /// Takes a batch of the dataflow's rows.
    fn take(&self, feed: Feed, s: &mut State) {
        for e in feed.rows {
            let Some(value) = crate::privacy::project(&e.value, self.ctx.min_vehicles) else {
                continue;
            };
            let key = (e.key.kind, e.key.key);
            let latest = match s.latest.get(&key) {
                Some(w) => Some(*w),
                None => (s.ledger.as_ref())
                    .zip(super::ngsi::entity_id(
                        &self.ctx.reference,
                        &self.ctx.node,
                        &e.key,
                    ))
                    .and_then(|(l, id)| l.get(&id))
                    .map(|m| m.window),
            };
            if latest.is_some_and(|w| w > e.key.window) {
                self.status.superseded.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            s.latest.insert(key, e.key.window);
            let digest = digest(&self.ctx, &e.key, &value);
            let row = Row {
                window: e.key.window,
                value,
                digest,
            };
            s.outbox.offer(key, row, e.watermark);
        }
        let watermark = feed
            .watermark
            .min(self.ctx.input_watermark.load(Ordering::Acquire));
        s.outbox.advance(watermark);
        s.watermark = s.watermark.max(watermark);
        if !s.released && s.watermark >= self.ctx.hold_until.load(Ordering::Acquire) {
            self.release(s);
        }
    }

    /// The log replay is done: what the ledger says the broker has stays
    /// here; the rest may leave.
    fn release(&self, s: &mut State) {
        if let Some(ledger) = &s.ledger {
            let (reference, node) = (&self.ctx.reference, &self.ctx.node);
            let mut known = 0u64;
            s.outbox.retain_waiting(|k, row| {
                let key = AggKey {
                    kind: k.0,
                    key: k.1,
                    window: row.window,
                };
                let mark = Mark {
                    window: row.window,
                    digest: row.digest,
                };
                let has = super::ngsi::entity_id(reference, node, &key)
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

    /// Cuts the next request: its number and body.
    fn cut(&self, s: &mut State) -> Option<(u64, Vec<u8>)> {
        let seq = s.next_seq;
        let mut body = Vec::with_capacity(64 * 1024);
        body.push(b'[');
        let mut carried: Carried = Vec::new();
        let (cap, max_bytes) = (s.cap, self.cfg.max_bytes);
        let (reference, node, window_ms) =
            (&self.ctx.reference, &self.ctx.node, self.ctx.window_ms);
        let mut too_big = Vec::new();
        s.outbox.take_with(seq, |k, row| {
            if carried.len() >= cap {
                return Pick::Stop;
            }
            let key = AggKey {
                kind: k.0,
                key: k.1,
                window: row.window,
            };
            let entity = super::ngsi::entity(reference, node, window_ms, &key, &row.value);
            let (Some(entity), Some(id)) = (entity, super::ngsi::entity_id(reference, node, &key))
            else {
                return Pick::Drop;
            };
            let Ok(bytes) = serde_json::to_vec(&entity) else {
                return Pick::Drop;
            };
            if body.len() + bytes.len() + 2 > max_bytes {
                if carried.is_empty() {
                    too_big.push(id);
                    return Pick::Drop;
                }
                return Pick::Stop;
            }
            if !carried.is_empty() {
                body.push(b',');
            }
            body.extend_from_slice(&bytes);
            carried.push((
                *k,
                id,
                Mark {
                    window: row.window,
                    digest: row.digest,
                },
            ));
            Pick::Take
        })?;
        for id in too_big {
            self.status.dead_lettered.fetch_add(1, Ordering::Relaxed);
            self.say(&format!(
                "entity {id} alone is larger than max_bytes ({max_bytes}): dead-lettered"
            ));
        }
        s.next_seq += 1;
        s.last_cut = Instant::now();
        if carried.is_empty() {
            s.outbox.acked(seq);
            return None;
        }
        body.push(b']');
        self.status
            .sent
            .fetch_add(carried.len() as u64, Ordering::Relaxed);
        s.carried.insert(seq, carried);
        Some((seq, body))
    }

    /// One upsert request, to its outcome.
    fn request(
        &self,
        client: &reqwest::Client,
        body: Vec<u8>,
    ) -> impl std::future::Future<Output = Outcome> + Send + 'static {
        let mut req = client
            .post(format!("{}{UPSERT_PATH}", self.cfg.url))
            .header("Content-Type", "application/json")
            .header(
                "Link",
                format!(
                    "<{}>; rel=\"http://www.w3.org/ns/json-ld#context\"; type=\"application/ld+json\"",
                    self.cfg.context
                ),
            )
            .body(body);
        if let Some(t) = &self.cfg.tenant {
            req = req.header("NGSILD-Tenant", t);
        }
        if let Some(t) = &self.cfg.token {
            req = req.bearer_auth(t);
        }
        async move {
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    return Outcome::Retry {
                        why: format!("{e}"),
                        after: Duration::ZERO,
                    }
                }
            };
            let code = resp.status().as_u16();
            let after = (resp.headers().get("Retry-After"))
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map_or(Duration::ZERO, Duration::from_secs);
            let text = resp.text().await.unwrap_or_default();
            let said: String = text.chars().take(300).collect();
            match code {
                201 | 204 | 200 => Outcome::Done,
                207 => match serde_json::from_str::<BatchResult>(&text) {
                    Ok(r) => {
                        let (mut retry, mut refused) = (Vec::new(), Vec::new());
                        for e in r.errors {
                            let status = e.error.get("status").and_then(|s| s.as_u64());
                            if status.is_none_or(|s| s >= 500 || s == 429 || s == 408) {
                                retry.push(e.entity_id);
                            } else {
                                refused.push((e.entity_id, e.error.to_string()));
                            }
                        }
                        Outcome::Partly { retry, refused }
                    }
                    Err(e) => Outcome::Retry {
                        why: format!("a 207 whose body is not a batch result ({e}): {said}"),
                        after,
                    },
                },
                413 => Outcome::TooLarge,
                401 | 403 | 404 | 408 | 429 | 500..=599 => Outcome::Retry {
                    why: format!("the broker answered {code}: {said}"),
                    after,
                },
                _ => Outcome::Refused(format!("the broker answered {code}: {said}")),
            }
        }
    }

    /// Request `seq` ended with `outcome`.
    fn answered(&self, seq: u64, outcome: Outcome, s: &mut State) {
        let carried = s.carried.remove(&seq).unwrap_or_default();
        let n = carried.len() as u64;
        let acknowledged: Vec<&(EntityKey, String, Mark)> = match &outcome {
            Outcome::Done => carried.iter().collect(),
            Outcome::Partly { retry, refused } => carried
                .iter()
                .filter(|(_, id, _)| !retry.contains(id) && !refused.iter().any(|(r, _)| r == id))
                .collect(),
            _ => Vec::new(),
        };
        if !acknowledged.is_empty() {
            if let Some(ledger) = &mut s.ledger {
                let marks = acknowledged.iter().map(|(_, id, m)| (id.as_str(), *m));
                if let Err(e) = ledger.record(marks) {
                    self.say(&format!("{e}: a restart may resend what the broker has"));
                }
            }
            self.status.batches.fetch_add(1, Ordering::Relaxed);
            self.status
                .acknowledged
                .fetch_add(acknowledged.len() as u64, Ordering::Relaxed);
        }
        match outcome {
            Outcome::Done => {
                s.outbox.acked(seq);
                self.reached(s);
            }
            Outcome::Partly { retry, refused } => {
                let again: Vec<EntityKey> = (carried.iter())
                    .filter(|(_, id, _)| retry.contains(id))
                    .map(|(k, _, _)| *k)
                    .collect();
                s.outbox.partly_lost(seq, |k| again.contains(k));
                self.status
                    .retried
                    .fetch_add(again.len() as u64, Ordering::Relaxed);
                if let Some((id, why)) = refused.first() {
                    self.status
                        .dead_lettered
                        .fetch_add(refused.len() as u64, Ordering::Relaxed);
                    self.say(&format!(
                        "the broker refused {} entities for good (dead-lettered), the first {id}: {why}",
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
            Outcome::TooLarge => {
                s.outbox.partly_lost(seq, |_| true);
                self.status.retried.fetch_add(n, Ordering::Relaxed);
                s.cap = (carried.len() / 2).max(1);
                if carried.len() == 1 {
                    // Alone and still too large: it can never be sent.
                    if let Some((_, id, _)) = carried.first() {
                        self.say(&format!(
                            "entity {id} alone is too large for the broker (413): dead-lettered"
                        ));
                    }
                    s.outbox
                        .retain_waiting(|k, _| Some(k) != carried.first().map(|c| &c.0));
                    self.status.dead_lettered.fetch_add(1, Ordering::Relaxed);
                }
            }
            Outcome::Refused(why) => {
                s.outbox.acked(seq);
                self.status.dead_lettered.fetch_add(n, Ordering::Relaxed);
                self.say(&format!(
                    "{why}; the request's {n} entities are dead-lettered"
                ));
                self.reached(s);
            }
        }
    }

    /// A request reached the broker.
    fn reached(&self, s: &mut State) {
        s.backoff.reset();
        s.cap = (s.cap * 2).min(self.cfg.max_entities);
        self.status.connected.store(true, Ordering::Relaxed);
        if std::mem::replace(&mut s.outage_said, false) {
            self.say("the broker answers again");
        }
    }

    /// Publishes the delivered frontier and the backlog.
    fn publish(&self, s: &mut State) {
        let delivered = s.outbox.delivered();
        let given_up = crate::delivery::gate::publish(
            &self.status.delivered,
            &self.status.given_up,
            delivered,
            s.watermark,
            self.cfg.max_hold.as_millis() as u64,
            self.ctx.window_ms,
        );
        if given_up > 0 && !std::mem::replace(&mut s.given_up_said, true) {
            self.say(&format!("the broker has not acknowledged windows older than max_hold ({:?}): their log segments are no longer kept for it (counted in given_up)", self.cfg.max_hold));
        }
        let (waiting, flying) = s.outbox.backlog();
        self.status
            .backlog
            .store((waiting + flying) as u64, Ordering::Relaxed);
        self.status
            .oldest_age_ms
            .store(s.watermark.saturating_sub(delivered), Ordering::Relaxed);
    }
}

/// The digest of a row: xxh3 of its CSV row (TELEMETRY.md §4), stable
/// across versions as the format is.
fn digest(ctx: &SinkContext, key: &AggKey, value: &AggValue) -> u64 {
    let mut row = String::new();
    crate::aggregate::write_csv_row(&mut row, &ctx.reference, ctx.window_ms, key, value);
    xxhash_rust::xxh3::xxh3_64(row.as_bytes())
}
