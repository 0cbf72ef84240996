//! The hub between the dataflow and the subscribers.
//!
//! The dataflow thread publishes every batch of emissions; the hub keeps the
//! current value of every row in retention (with its revision: a counter
//! over all changes of this node run, the *epoch*), and puts each change
//! into the queue of every subscriber allowed to see it. Publishing never
//! waits on a subscriber: a queue holds at most one pending change per row
//! (a newer value replaces the queued one, and the subscriber is told it
//! lagged); a queue holding more than `max_pending` rows, or not emptied for
//! `max_lag`, is closed with [`SubError::TooSlow`]. So memory per subscriber is bounded by its limit,
//! and ingest and other subscribers never wait for a slow one.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};

use super::proto::{Progress, Row, SubError, SubFrame};
use super::queue::Queue;
pub use super::queue::{Drained, Interest, Subscriber};
use crate::aggregate::{fields, AggKey, AggValue, Field, Kind};
use crate::dataflow::emit::{Emission, Status};
use crate::reference::Reference;
use crate::time::TimeSpec;

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Hub settings.
#[derive(Clone, Copy, Debug)]
pub struct HubSettings {
    /// Rows over fewer distinct vehicles are withheld (`privacy.min_vehicles`).
    pub min_vehicles: u64,
    /// Pending rows per subscriber before it is disconnected.
    pub max_pending: usize,
    /// Longest a subscriber's queue may stay non-empty (it reads nothing
    /// for that long) before it is disconnected.
    pub max_lag: std::time::Duration,
}

#[derive(Clone, Debug)]
struct HubRow {
    /// What operators may see of the row (after privacy); `None`: retracted
    /// or withheld (kept until the window retires, for resumes).
    value: Option<AggValue>,
    is_final: bool,
    status: Status,
    revision: u64,
}

struct HubState {
    /// The settings in force (a reload changes them).
    settings: HubSettings,
    revision: u64,
    watermark: u64,
    rows: BTreeMap<AggKey, HubRow>,
    subscribers: Vec<Arc<Subscriber>>,
    closed: bool,
}

/// The hub (see the module doc).
pub struct Hub {
    reference: Arc<Reference>,
    spec: TimeSpec,
    /// This node run: revisions of another epoch mean nothing here.
    pub epoch: u64,
    state: Mutex<HubState>,
    /// The watermark of the node's input (newest trusted event time minus
    /// the allowed lateness), set by the node. PROGRESS never says more: at
    /// a graceful stop the dataflow closes every window and its last
    /// emissions carry retirement times, which would make subscribers
    /// forget windows the sinks keep.
    input_watermark: Arc<std::sync::atomic::AtomicU64>,
    /// What the hub counted (published by the node's metrics).
    pub counts: HubCounts,
}

/// What the hub counts, per publish (never per row).
#[derive(Debug, Default)]
pub struct HubCounts {
    /// Rows that replaced one still waiting in a subscriber's queue (the
    /// subscriber is told it LAGGED).
    pub coalesced: std::sync::atomic::AtomicU64,
    /// Subscribers cut off as too slow (`max_pending` or `max_lag`).
    pub too_slow: std::sync::atomic::AtomicU64,
    /// Rows waiting in all subscribers' queues, after the last publish.
    pub waiting: std::sync::atomic::AtomicU64,
    /// The most rows waiting for one subscriber, after the last publish.
    pub waiting_max: std::sync::atomic::AtomicU64,
}

impl HubCounts {
    /// Publishes the counts (inside a node registry's scope).
    pub fn publish_metrics(&self, subscribers: usize) {
        use crate::metrics as M;
        use std::sync::atomic::Ordering::Relaxed;
        metrics::gauge!(M::SUBSCRIBERS).set(subscribers as f64);
        metrics::counter!(M::SUBSCRIBER_LAGGED_ROWS).absolute(self.coalesced.load(Relaxed));
        metrics::counter!(M::SUBSCRIBERS_TOO_SLOW).absolute(self.too_slow.load(Relaxed));
        metrics::gauge!(M::SUBSCRIBER_QUEUE_ROWS).set(self.waiting.load(Relaxed) as f64);
        metrics::gauge!(M::SUBSCRIBER_QUEUE_MAX_ROWS).set(self.waiting_max.load(Relaxed) as f64);
    }
}

/// Why a subscription cannot start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub SubError, pub String);

impl Hub {
    /// A hub for one node run.
    pub fn new(
        reference: Arc<Reference>,
        spec: TimeSpec,
        settings: HubSettings,
        epoch: u64,
    ) -> Self {
        Hub {
            reference,
            spec,
            epoch,
            state: Mutex::new(HubState {
                settings,
                revision: 0,
                watermark: 0,
                rows: BTreeMap::new(),
                subscribers: Vec::new(),
                closed: false,
            }),
            input_watermark: Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX)),
            counts: HubCounts::default(),
        }
    }

    /// Where the node publishes its input watermark (see the field).
    pub fn input_watermark(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.input_watermark.clone()
    }

    /// A key's id (a segment's, a charger's, a zone's).
    fn id(&self, key: &AggKey) -> String {
        let r = &self.reference;
        match key.kind {
            Kind::Congestion => r.roads.get(key.key as usize).map(|r| r.id.clone()),
            Kind::Charging => r.chargers.get(key.key as usize).map(|c| c.id.clone()),
            Kind::Zone => r.registry.id(key.key).map(|(id, _)| id),
        }
        .unwrap_or_default()
    }

    /// The row as sent: fields by CSV header name ([`fields`]).
    /// The reference data's name of a key (a street, a charger).
    fn name(&self, key: &AggKey) -> Option<String> {
        let r = &self.reference;
        match key.kind {
            Kind::Congestion => r.roads.get(key.key as usize)?.name.clone(),
            Kind::Charging => r.chargers.get(key.key as usize)?.name.clone(),
            Kind::Zone => None,
        }
    }

    pub(crate) fn row(
        &self,
        key: &AggKey,
        value: Option<&AggValue>,
        status: Status,
        revision: u64,
    ) -> Row {
        let row = value.and_then(|v| fields(&self.reference, self.spec.size_ms, key, v));
        // The key and window are the row's own fields; the rest its value.
        let id = row
            .as_ref()
            .and_then(|f| f.first())
            .map(|(_, id)| id.text().to_owned())
            .unwrap_or_else(|| self.id(key));
        let fields = row.map(|fields| {
            fields
                .into_iter()
                .skip(1)
                .filter(|(name, _)| !name.starts_with("window_"))
                .map(|(name, field)| {
                    let v = match &field {
                        Field::Number(n) => n
                            .parse::<serde_json::Number>()
                            .map_or_else(|_| serde_json::Value::String(n.clone()), Into::into),
                        Field::Text(t) => serde_json::Value::String(t.clone()),
                        Field::Empty => serde_json::Value::String(String::new()),
                    };
                    (name.to_owned(), v)
                })
                .collect()
        });
        Row {
            op: if value.is_some() { "upsert" } else { "retract" }.into(),
            key: id,
            window_start_ms: key.window,
            status: value.map(|_| {
                match status {
                    Status::Provisional => "provisional",
                    Status::Final => "final",
                    Status::Correction => "correction",
                    Status::Retraction => "retract",
                }
                .into()
            }),
            revision,
            name: value.and_then(|_| self.name(key)),
            value: fields,
        }
    }

    /// A progress marker of this node run.
    fn progress(&self, revision: u64, watermark_ms: u64, snapshot: bool) -> Progress {
        Progress {
            epoch: self.epoch,
            revision,
            watermark_ms,
            snapshot,
            published_unix_us: now_us(),
            window_ms: self.spec.size_ms,
            retention_ms: self.spec.retention_ms,
        }
    }

    /// The encoded ROW frame of a change.
    fn frame(
        &self,
        key: &AggKey,
        value: Option<&AggValue>,
        status: Status,
        revision: u64,
    ) -> Bytes {
        let mut b = BytesMut::new();
        SubFrame::Row(self.row(key, value, status, revision)).encode(&mut b);
        b.freeze()
    }

    /// Applies a batch of emissions and queues the changes.
    pub fn publish(&self, emissions: &[Emission]) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        self.apply(&mut st, emissions);
    }

    /// [`Hub::publish`] under the state's lock.
    fn apply(&self, st: &mut HubState, emissions: &[Emission]) {
        let settings = st.settings;
        let bound = self
            .input_watermark
            .load(std::sync::atomic::Ordering::Acquire);
        let mut coalesced = 0u64;
        for e in emissions {
            let watermark = e.watermark.min(bound);
            if watermark != u64::MAX {
                st.watermark = st.watermark.max(watermark);
            }
            let old = st.rows.get(&e.key).cloned();
            let retract = e.status == Status::Retraction;
            let value = if retract {
                None
            } else {
                crate::aggregate::project(&e.value, settings.min_vehicles)
            };
            let is_final = e.status != Status::Provisional;
            if let Some(old) = &old {
                if old.value == value && (value.is_none() || old.is_final == is_final) {
                    // Nothing an operator sees changed (e.g. a zone row's
                    // vehicles still under the threshold): no revision, no
                    // frame, so not even the timing of the change shows.
                    continue;
                }
            } else if value.is_none() {
                continue; // withheld from the start: nothing to retract
            }
            st.revision += 1;
            let revision = st.revision;
            let new = HubRow {
                value,
                is_final,
                status: e.status,
                revision,
            };
            // Encoded once, on first need, for every subscriber.
            let (mut upsert, mut retraction): (Option<Bytes>, Option<Bytes>) = (None, None);
            for sub in &st.subscribers {
                if !sub.interest.wants(&e.key) {
                    continue;
                }
                let shown =
                    |r: &HubRow| r.value.is_some() && (r.is_final || sub.interest.provisional);
                let was = old.as_ref().is_some_and(shown);
                let row = if shown(&new) {
                    upsert
                        .get_or_insert_with(|| {
                            self.frame(&e.key, new.value.as_ref(), e.status, revision)
                        })
                        .clone()
                } else if was {
                    retraction
                        .get_or_insert_with(|| self.frame(&e.key, None, e.status, revision))
                        .clone()
                } else {
                    continue;
                };
                coalesced += u64::from(sub.push(e.key, row, settings.max_pending));
            }
            st.rows.insert(e.key, new);
        }
        // Forget retired windows (subscribers drop them by the watermark).
        let watermark = st.watermark;
        let spec = self.spec;
        st.rows.retain(|k, _| spec.retire_at(k.window) > watermark);
        let progress = self.progress(st.revision, st.watermark, false);
        let (mut waiting, mut waiting_max) = (0u64, 0u64);
        for sub in &st.subscribers {
            sub.progress(progress);
            sub.check_lag(settings.max_lag);
            sub.notify.notify_one();
            let n = sub.waiting() as u64;
            waiting += n;
            waiting_max = waiting_max.max(n);
        }
        let mut too_slow = 0u64;
        st.subscribers.retain(|s| {
            let open = s.queue.lock().is_ok_and(|q| q.closed.is_none());
            too_slow += u64::from(!open && s.too_slow());
            open
        });
        use std::sync::atomic::Ordering::Relaxed;
        let c = &self.counts;
        c.coalesced.fetch_add(coalesced, Relaxed);
        c.too_slow.fetch_add(too_slow, Relaxed);
        c.waiting.store(waiting, Relaxed);
        c.waiting_max.store(waiting_max, Relaxed);
    }

    /// Registers a subscriber: queues the snapshot (every visible row, or
    /// with `resume` the changes after that revision of this epoch), then
    /// the snapshot marker; changes follow as they are published.
    pub fn subscribe(
        &self,
        interest: Interest,
        resume: Option<super::proto::ResumePoint>,
        snapshot_if_unavailable: bool,
    ) -> Result<Arc<Subscriber>, Refused> {
        let Ok(mut st) = self.state.lock() else {
            return Err(Refused(SubError::ShuttingDown, "the hub failed".into()));
        };
        if st.closed {
            return Err(Refused(
                SubError::ShuttingDown,
                "the node is stopping".into(),
            ));
        }
        let since = match resume {
            Some(r) if r.epoch == self.epoch && r.revision <= st.revision => Some(r.revision),
            Some(_) if snapshot_if_unavailable => None,
            Some(r) => {
                return Err(Refused(
                    SubError::ResumeUnavailable,
                    format!(
                        "resume point (epoch {}, revision {}) is not in this node's history (epoch {}, revisions up to {}); ask for a fresh snapshot",
                        r.epoch, r.revision, self.epoch, st.revision
                    ),
                ))
            }
            None => None,
        };
        let sub = Arc::new(Subscriber {
            interest,
            queue: Mutex::new(Queue {
                snapshot_pending: true,
                ..Queue::default()
            }),
            notify: tokio::sync::Notify::new(),
        });
        // Under the lock, only what the snapshot holds is taken; its frames
        // are encoded after, so publishing waits for no snapshot. Changes
        // published meanwhile are queued already and are newer.
        let rows: Vec<(AggKey, HubRow)> = st
            .rows
            .iter()
            .filter(|(key, r)| sub.interest.wants(key) && since.is_none_or(|s| r.revision > s))
            .map(|(key, r)| (*key, r.clone()))
            .collect();
        let marker = self.progress(st.revision, st.watermark, true);
        st.subscribers.push(sub.clone());
        drop(st);
        let mut frames = Vec::with_capacity(rows.len());
        for (key, r) in rows {
            let shown = r.value.is_some() && (r.is_final || sub.interest.provisional);
            if shown {
                frames.push((
                    key,
                    self.frame(&key, r.value.as_ref(), r.status, r.revision),
                ));
            } else if since.is_some() && r.value.is_none() {
                // Resuming: retracted or withheld since, may have been shown.
                frames.push((key, self.frame(&key, None, r.status, r.revision)));
            }
        }
        if let Ok(mut q) = sub.queue.lock() {
            for (key, frame) in frames {
                if q.pending.contains_key(&key) {
                    continue; // changed since: the queued frame is newer
                }
                q.pending.insert(key, frame);
                q.order.push_back(key);
                q.snapshot_rows += 1;
            }
            q.progress = Some(match q.progress {
                Some(p) => Progress {
                    snapshot: true,
                    ..p
                },
                None => marker,
            });
            q.snapshot_pending = false;
        }
        sub.notify.notify_one();
        Ok(sub)
    }

    /// New settings (a reload): rows published from now on are held to
    /// them; rows already published stay as they were shown.
    ///
    /// A raised `min_vehicles` applies at once to every row held: rows now
    /// under it are retracted from subscribers (projecting a shown value
    /// again under a higher threshold is exact). A lowered one applies to
    /// rows published from then on (a withheld value is not kept).
    pub fn set_settings(&self, settings: HubSettings) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        let raised = settings.min_vehicles > st.settings.min_vehicles;
        st.settings = settings;
        if raised {
            let watermark = st.watermark;
            let again: Vec<Emission> = (st.rows.iter())
                .filter_map(|(key, row)| {
                    Some(Emission {
                        status: row.status,
                        key: *key,
                        value: row.value.clone()?,
                        watermark,
                    })
                })
                .collect();
            self.apply(&mut st, &again);
        }
    }

    /// Ends every subscription after what is queued (the node stops).
    pub fn close(&self) {
        if let Ok(mut st) = self.state.lock() {
            st.closed = true;
            for sub in st.subscribers.drain(..) {
                sub.close(SubError::ShuttingDown, "the node is stopping".into());
            }
        }
    }

    /// Rows held (the windows still in retention).
    pub fn rows(&self) -> usize {
        self.state.lock().map_or(0, |s| s.rows.len())
    }

    /// Subscribers connected.
    pub fn subscribers(&self) -> usize {
        self.state.lock().map_or(0, |s| s.subscribers.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::{Congestion, ZoneAgg};
    use crate::subscribe::proto::Lagged;

    fn hub(max_pending: usize, max_lag: std::time::Duration) -> Hub {
        let road = crate::reference::Road {
            id: "s1".into(),
            free_flow_mps: 10.0,
            lanes: 1,
            name: None,
            length_m: None,
            line: vec![[26.9, 60.5], [26.91, 60.5]],
        };
        let spec = TimeSpec {
            size_ms: 60_000,
            allowed_lateness_ms: 0,
            retention_ms: 60_000,
            max_future_ms: crate::time::DEFAULT_MAX_FUTURE_MS,
            leap_quorum: crate::time::DEFAULT_LEAP_QUORUM,
        };
        Hub::new(
            Arc::new(Reference::new(vec![road], Vec::new())),
            spec,
            HubSettings {
                min_vehicles: 2,
                max_pending,
                max_lag,
            },
            1,
        )
    }

    fn emission(window: u64, vehicles: u64, status: Status) -> Emission {
        Emission {
            status,
            key: AggKey {
                kind: Kind::Congestion,
                key: 0,
                window,
            },
            value: AggValue::Congestion(Congestion {
                samples: vehicles,
                vehicles,
                speed_sum: 5_000_000 * vehicles as i64,
            }),
            watermark: window,
        }
    }

    fn frames(d: &Drained) -> Vec<SubFrame> {
        let mut b = d.bytes.clone();
        std::iter::from_fn(|| SubFrame::decode(&mut b, 1 << 20).ok().flatten()).collect()
    }

    fn interest(provisional: bool) -> Interest {
        Interest {
            kind: Kind::Congestion,
            keys: None,
            provisional,
        }
    }

    #[test]
    fn a_row_updated_twice_before_it_is_read_is_sent_once_with_a_lag_notice() {
        let h = hub(100, std::time::Duration::from_secs(60));
        let sub = h
            .subscribe(interest(true), None, false)
            .expect("subscribes");
        let snapshot = frames(&sub.drain());
        assert!(matches!(
            snapshot[..],
            [SubFrame::Progress(Progress { snapshot: true, .. })]
        ));
        h.publish(&[emission(0, 2, Status::Provisional)]);
        h.publish(&[emission(0, 3, Status::Provisional)]);
        use std::sync::atomic::Ordering::Relaxed;
        assert_eq!(h.counts.coalesced.load(Relaxed), 1);
        assert_eq!(h.counts.waiting.load(Relaxed), 1, "one row waits");
        let f = frames(&sub.drain());
        assert!(
            matches!(f[0], SubFrame::Lagged(Lagged { coalesced: 1 })),
            "{f:?}"
        );
        match &f[1] {
            SubFrame::Row(r) => {
                assert_eq!(r.revision, 2, "the latest value wins");
                assert_eq!(
                    r.value.as_ref().map(|v| v["vehicles"].clone()),
                    Some(3.into())
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(f[2], SubFrame::Progress(_)) && f.len() == 3);
    }

    fn zone(vehicles: u32, energy_wh: u64) -> Emission {
        Emission {
            status: Status::Provisional,
            key: AggKey {
                kind: Kind::Zone,
                key: 0,
                window: 0,
            },
            value: AggValue::Zone(Box::new(ZoneAgg {
                samples: 4 * u64::from(vehicles),
                vehicles,
                segments: u32::from(vehicles > 0),
                chargers: 1,
                energy_wh,
                connectors: 2,
                ..ZoneAgg::default()
            })),
            watermark: 0,
        }
    }

    fn rows(d: &Drained) -> Vec<Row> {
        frames(d)
            .into_iter()
            .filter_map(|f| match f {
                SubFrame::Row(r) => Some(r),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_zone_under_the_threshold_looks_like_a_zone_without_vehicles() {
        let h = hub(100, std::time::Duration::from_secs(60));
        h.reference
            .registry
            .intern("z1", crate::geo::zones::ZoneKind::Named);
        let mut zones = interest(true);
        zones.kind = Kind::Zone;
        let sub = h.subscribe(zones, None, false).expect("subscribes");
        sub.drain();
        let field = |r: &Row, name: &str| r.value.as_ref().map(|v| v[name].clone());
        h.publish(&[zone(0, 5)]);
        let r = rows(&sub.drain());
        assert_eq!(r.len(), 1);
        assert_eq!(field(&r[0], "energy_wh"), Some(5.into()));
        // One vehicle (k = 2): nothing an operator sees changes, nothing is sent.
        h.publish(&[zone(1, 5)]);
        assert!(rows(&sub.drain()).is_empty());
        // The charger figures still flow, without the vehicle.
        h.publish(&[zone(1, 7)]);
        let r = rows(&sub.drain());
        assert_eq!(field(&r[0], "energy_wh"), Some(7.into()));
        assert_eq!(field(&r[0], "samples"), Some(0.into()));
        h.publish(&[zone(2, 7)]);
        let r = rows(&sub.drain());
        assert_eq!(field(&r[0], "vehicles"), Some(2.into()));
        assert_eq!(field(&r[0], "samples"), Some(8.into()));
    }

    #[test]
    fn a_resumed_subscriber_loses_a_row_withheld_since() {
        let h = hub(100, std::time::Duration::from_secs(60));
        let sub = h
            .subscribe(interest(true), None, false)
            .expect("subscribes");
        h.publish(&[emission(0, 2, Status::Provisional)]);
        let seen = frames(&sub.drain());
        let Some(SubFrame::Progress(at)) = seen.last() else {
            panic!("{seen:?}")
        };
        assert_eq!(rows(&sub.drain()).len(), 0);
        // Gone; meanwhile the row falls under the threshold.
        h.publish(&[emission(0, 1, Status::Correction)]);
        let resume = super::super::proto::ResumePoint {
            epoch: at.epoch,
            revision: at.revision,
        };
        let back = h
            .subscribe(interest(true), Some(resume), false)
            .expect("resumes");
        let r = rows(&back.drain());
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].op, "retract");
    }

    #[test]
    fn a_snapshot_does_not_count_against_the_queue_limit() {
        let h = hub(1, std::time::Duration::from_secs(60));
        h.publish(&[
            emission(0, 2, Status::Final),
            emission(60_000, 2, Status::Final),
        ]);
        let sub = h
            .subscribe(interest(true), None, false)
            .expect("subscribes");
        // One change before the snapshot is read: within the limit.
        h.publish(&[emission(60_000, 3, Status::Correction)]);
        assert!(!sub.too_slow());
        assert_eq!(rows(&sub.drain()).len(), 2);
    }

    #[test]
    fn privacy_mode_and_the_limits() {
        let h = hub(1, std::time::Duration::from_secs(60));
        let finals = h
            .subscribe(interest(false), None, false)
            .expect("subscribes");
        finals.drain();
        // One vehicle: withheld. Provisional: not for a final-mode subscriber.
        h.publish(&[
            emission(0, 1, Status::Final),
            emission(60_000, 2, Status::Provisional),
        ]);
        assert!(!frames(&finals.drain())
            .iter()
            .any(|f| matches!(f, SubFrame::Row(_))));
        // Two rows queued for a limit of one: cut off.
        h.publish(&[
            emission(0, 2, Status::Correction),
            emission(60_000, 2, Status::Final),
        ]);
        assert!(finals.too_slow());
        let f = frames(&finals.drain());
        assert!(matches!(f.last(), Some(SubFrame::Error(e)) if e.code == SubError::TooSlow as u16));
        assert!(
            !f.iter().any(|f| matches!(f, SubFrame::Progress(_))),
            "no progress marker vouches for the dropped rows: {f:?}"
        );
        // A queue not emptied for longer than max_lag: cut off too.
        let h = hub(100, std::time::Duration::ZERO);
        let idle = h
            .subscribe(interest(true), None, false)
            .expect("subscribes");
        std::thread::sleep(std::time::Duration::from_millis(2));
        h.publish(&[emission(0, 2, Status::Provisional)]);
        assert!(idle.too_slow());
        // Counted once, as the hub lets the subscriber go.
        h.publish(&[emission(0, 3, Status::Provisional)]);
        assert_eq!(
            h.counts.too_slow.load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        assert_eq!(h.subscribers(), 0);
    }

    #[test]
    fn rows_are_forgotten_once_their_window_retires() {
        let hub = hub(1_000, std::time::Duration::from_secs(30));
        // A hundred minutes of one segment's windows, each final at its end.
        for minute in 0..100u64 {
            let start = minute * 60_000;
            let mut e = emission(start, 3, Status::Final);
            e.watermark = start + 60_000;
            hub.publish(&[e]);
            // Held: windows whose retirement (end + 60 s) is still ahead.
            assert!(hub.rows() <= 2, "minute {minute}: {} rows", hub.rows());
        }
        assert_eq!(hub.rows(), 1);
    }
}
