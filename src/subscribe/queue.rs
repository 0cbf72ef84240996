//! One subscriber's queue: what it asked for ([`Interest`]) and the changes
//! waiting for it, at most one per row (a newer value replaces the queued
//! one and counts as a lag), closed with [`SubError::TooSlow`] past
//! `max_pending` rows or `max_lag` without reading. The hub fills it; the
//! subscriber's writer drains it.

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::{Bytes, BytesMut};
use rustc_hash::{FxHashMap, FxHashSet};

use super::proto::{Lagged, Progress, SubError, SubFrame};
use crate::aggregate::{AggKey, Kind};

/// What a subscription asked for, checked against the operator's scopes.
#[derive(Clone, Debug, PartialEq)]
pub struct Interest {
    /// The aggregate kind.
    pub kind: Kind,
    /// Keys (segment, charger or zone numbers); `None`: all.
    pub keys: Option<FxHashSet<u32>>,
    /// Provisional values too.
    pub provisional: bool,
}

impl Interest {
    pub(super) fn wants(&self, key: &AggKey) -> bool {
        key.kind == self.kind && self.keys.as_ref().is_none_or(|k| k.contains(&key.key))
    }
}

#[derive(Debug, Default)]
pub(super) struct Queue {
    pub(super) order: VecDeque<AggKey>,
    /// The encoded ROW frame to send per row; one allocation shared by every
    /// subscriber the change goes to.
    pub(super) pending: FxHashMap<AggKey, Bytes>,
    /// When the queue last went from empty to non-empty.
    pub(super) waiting_since: Option<std::time::Instant>,
    pub(super) progress: Option<Progress>,
    pub(super) coalesced: u64,
    pub(super) closed: Option<(SubError, String)>,
    /// The snapshot is still being queued: nothing is drained before it.
    pub(super) snapshot_pending: bool,
    /// Snapshot rows not yet drained: they do not count against
    /// `max_pending` (which bounds how far a subscriber falls behind).
    pub(super) snapshot_rows: usize,
}

/// One subscriber's queue.
#[derive(Debug)]
pub struct Subscriber {
    pub(super) interest: Interest,
    pub(super) queue: Mutex<Queue>,
    /// Woken when the queue has something.
    pub notify: tokio::sync::Notify,
}

/// What a subscriber's writer takes from its queue at once.
#[derive(Debug, Default)]
pub struct Drained {
    /// Encoded frames to send, in order.
    pub bytes: BytesMut,
    /// The subscription is over (error or node stopping) after these.
    pub end: bool,
}

impl Subscriber {
    /// Queues a row; true when it replaced one still waiting (the
    /// subscriber will be told it lagged).
    pub(super) fn push(&self, key: AggKey, row: Bytes, max_pending: usize) -> bool {
        let Ok(mut q) = self.queue.lock() else {
            return false;
        };
        if q.closed.is_some() {
            return false;
        }
        if q.pending.is_empty() {
            q.waiting_since = Some(std::time::Instant::now());
        }
        let replaced = match q.pending.insert(key, row) {
            Some(_) => {
                q.coalesced += 1;
                true
            }
            None => {
                q.order.push_back(key);
                false
            }
        };
        if q.pending.len() > max_pending.saturating_add(q.snapshot_rows) {
            // No progress marker either: it would vouch for dropped rows.
            q.order.clear();
            q.pending.clear();
            q.progress = None;
            q.closed = Some((
                SubError::TooSlow,
                format!("more than {max_pending} rows waited for this subscriber"),
            ));
            drop(q);
            self.notify.notify_one();
        }
        replaced
    }

    /// Rows waiting to be written.
    pub fn waiting(&self) -> usize {
        self.queue.lock().map_or(0, |q| q.pending.len())
    }

    pub(super) fn progress(&self, p: Progress) {
        if let Ok(mut q) = self.queue.lock() {
            if q.closed.is_some() {
                return;
            }
            // The snapshot marker is not replaced by a later plain one.
            let snapshot = q.progress.is_some_and(|old| old.snapshot);
            q.progress = Some(Progress {
                snapshot: snapshot || p.snapshot,
                ..p
            });
        }
    }

    pub(super) fn check_lag(&self, max_lag: std::time::Duration) {
        let Ok(mut q) = self.queue.lock() else { return };
        if q.closed.is_none() && q.waiting_since.is_some_and(|t| t.elapsed() > max_lag) {
            q.order.clear();
            q.pending.clear();
            q.progress = None;
            q.closed = Some((
                SubError::TooSlow,
                format!("read nothing for more than {} s", max_lag.as_secs_f64()),
            ));
        }
    }

    /// Whether the queue was closed because the client reads too slowly.
    pub fn too_slow(&self) -> bool {
        self.queue
            .lock()
            .map_or(true, |q| matches!(q.closed, Some((SubError::TooSlow, _))))
    }

    /// Ends the subscription (the writer calls it when the client is gone).
    pub fn close(&self, code: SubError, message: String) {
        if let Ok(mut q) = self.queue.lock() {
            q.closed.get_or_insert((code, message));
        }
        self.notify.notify_one();
    }

    /// What this subscriber asked for.
    pub fn interest(&self) -> &Interest {
        &self.interest
    }

    /// The kind it follows.
    pub fn kind(&self) -> Kind {
        self.interest.kind
    }

    /// Takes everything queued: a lag notice if rows were coalesced, the
    /// rows, then the latest progress marker; or the closing error.
    pub fn drain(&self) -> Drained {
        let Ok(mut q) = self.queue.lock() else {
            return Drained {
                bytes: BytesMut::new(),
                end: true,
            };
        };
        if q.snapshot_pending && q.closed.is_none() {
            return Drained::default();
        }
        q.snapshot_rows = 0;
        let mut bytes =
            BytesMut::with_capacity(q.pending.values().map(|b| b.len()).sum::<usize>() + 256);
        if q.coalesced > 0 {
            SubFrame::Lagged(Lagged {
                coalesced: q.coalesced,
            })
            .encode(&mut bytes);
            q.coalesced = 0;
        }
        while let Some(key) = q.order.pop_front() {
            if let Some(frame) = q.pending.remove(&key) {
                bytes.extend_from_slice(&frame);
            }
        }
        q.waiting_since = None;
        if let Some(p) = q.progress.take() {
            SubFrame::Progress(p).encode(&mut bytes);
        }
        // Stays set: the hub drops closed subscribers when it next publishes.
        let end = match q.closed.clone() {
            Some((SubError::ShuttingDown, _)) => true,
            Some((code, message)) => {
                SubFrame::error(code, message).encode(&mut bytes);
                true
            }
            None => false,
        };
        Drained { bytes, end }
    }
}
