//! A keyed outbox, sans-IO: what a delivery still has to send.
//!
//! Values arrive by key as they change ([`offer`]). The outbox keeps the
//! latest value per key until it is sent, so a key that changes ten times
//! while the target is slow or away travels once. It hands out batches,
//! oldest first ([`take`]), and keeps them until they are acknowledged. A
//! batch that is lost goes back, unless a newer value of the same key is
//! already waiting ([`lost`]).
//!
//! Every value carries the watermark it was emitted at. The **delivered
//! frontier** ([`delivered`]) is the watermark up to which everything
//! offered is acknowledged: the oldest emission watermark still waiting or
//! in flight, or the outbox's watermark ([`advance`]) when nothing is. A
//! node keeps the log segments of windows past it, and a sink persists it
//! to resume from.
//!
//! While the node replays its log at start, the outbox can hold everything
//! back ([`hold`], [`release`]): replay passes through intermediate values
//! the target already has complete, and sending them would move its keys
//! backwards. Coalesced, they are complete again by the end of replay.
//!
//! [`offer`]: Outbox::offer
//! [`take`]: Outbox::take
//! [`lost`]: Outbox::lost
//! [`delivered`]: Outbox::delivered
//! [`advance`]: Outbox::advance
//! [`hold`]: Outbox::hold
//! [`release`]: Outbox::release

use std::collections::{BTreeMap, BTreeSet};

/// A value waiting to leave, with the watermark it was emitted at.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Waiting<V> {
    value: V,
    emitted_at: u64,
}

/// A batch taken from the outbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Taken<K, V> {
    /// Its values, oldest emission first.
    pub values: Vec<(K, V)>,
    /// What a receiver may take as complete after it: the outbox's
    /// watermark, capped at the oldest value still waiting.
    pub watermark: u64,
}

/// What a delivery still has to send; see the module documentation.
#[derive(Debug)]
pub struct Outbox<K, V> {
    waiting: BTreeMap<K, Waiting<V>>,
    /// Waiting keys by emission watermark (the oldest bounds both
    /// watermarks).
    by_age: BTreeSet<(u64, K)>,
    in_flight: BTreeMap<u64, Vec<(K, Waiting<V>)>>,
    watermark: u64,
    holding: bool,
}

impl<K: Ord + Copy, V: Clone> Default for Outbox<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Ord + Copy, V: Clone> Outbox<K, V> {
    /// An empty outbox.
    pub fn new() -> Self {
        Outbox {
            waiting: BTreeMap::new(),
            by_age: BTreeSet::new(),
            in_flight: BTreeMap::new(),
            watermark: 0,
            holding: false,
        }
    }

    /// Holds every batch back (the node is replaying its log).
    pub fn hold(&mut self) {
        self.holding = true;
    }

    /// Lets batches leave again.
    pub fn release(&mut self) {
        self.holding = false;
    }

    /// Takes `key`'s latest value, emitted at watermark `emitted_at`; it
    /// replaces what waits for the key. The outbox's own watermark moves
    /// by [`advance`](Self::advance) alone.
    pub fn offer(&mut self, key: K, value: V, emitted_at: u64) {
        if let Some(old) = self.waiting.insert(key, Waiting { value, emitted_at }) {
            self.by_age.remove(&(old.emitted_at, key));
        }
        self.by_age.insert((emitted_at, key));
    }

    /// The watermark moved. `u64::MAX` (the end of input: a node stopping,
    /// its open windows emitted as they are) claims nothing about later
    /// windows, since the node's next start carries on with them.
    pub fn advance(&mut self, watermark: u64) {
        if watermark != u64::MAX {
            self.watermark = self.watermark.max(watermark);
        }
    }

    /// Values waiting, and in flight.
    pub fn backlog(&self) -> (usize, usize) {
        (
            self.waiting.len(),
            self.in_flight.values().map(Vec::len).sum(),
        )
    }

    fn oldest_waiting(&self) -> Option<u64> {
        self.by_age.first().map(|(w, _)| *w)
    }

    /// See the module documentation.
    pub fn delivered(&self) -> u64 {
        let in_flight = self
            .in_flight
            .values()
            .flatten()
            .map(|(_, w)| w.emitted_at)
            .min();
        [self.oldest_waiting(), in_flight]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(self.watermark)
            .min(self.watermark)
    }

    /// Takes batch `seq`: at most `max` values, oldest first; `None` while
    /// holding. With nothing waiting it is empty, and carries the
    /// watermark alone.
    pub fn take(&mut self, seq: u64, max: usize) -> Option<Taken<K, V>> {
        if self.holding {
            return None;
        }
        let mut values = Vec::new();
        let mut sent = Vec::new();
        while sent.len() < max.max(1) {
            let Some((_, key)) = self.by_age.pop_first() else {
                break;
            };
            let Some(w) = self.waiting.remove(&key) else {
                continue;
            };
            values.push((key, w.value.clone()));
            sent.push((key, w));
        }
        let watermark = self
            .oldest_waiting()
            .map_or(self.watermark, |w| w.min(self.watermark));
        self.in_flight.insert(seq, sent);
        Some(Taken { values, watermark })
    }

    /// Batch `seq` was acknowledged.
    pub fn acked(&mut self, seq: u64) {
        self.in_flight.remove(&seq);
    }

    /// Every batch below `next` was acknowledged (a receiver says so
    /// after a reconnect).
    pub fn acked_below(&mut self, next: u64) {
        self.in_flight = self.in_flight.split_off(&next);
    }

    /// Batch `seq` and every later one in flight were lost: their values
    /// wait again, unless a newer value of the same key already does.
    pub fn lost(&mut self, seq: u64) {
        // Newest batch first: of a key lost in several, its newest value
        // goes back, and the older ones find it waiting.
        for (_, sent) in self.in_flight.split_off(&seq).into_iter().rev() {
            for (key, w) in sent {
                if !self.waiting.contains_key(&key) {
                    self.by_age.insert((w.emitted_at, key));
                    self.waiting.insert(key, w);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_offered_twice_leaves_once_with_its_last_value() {
        let mut o = Outbox::new();
        o.offer(1u32, "a", 10);
        o.offer(1, "b", 20);
        o.advance(30);
        let t = o.take(0, 10).expect("not holding");
        assert_eq!(t.values, vec![(1, "b")]);
        assert_eq!(o.delivered(), 20, "in flight bounds the frontier");
        o.acked(0);
        assert_eq!(o.delivered(), 30);
    }

    #[test]
    fn batches_go_oldest_first_and_the_watermark_waits_for_the_rest() {
        let mut o = Outbox::new();
        o.advance(100);
        for (k, at) in [(3u32, 30), (1, 10), (2, 20)] {
            o.offer(k, k, at);
        }
        let t = o.take(0, 2).expect("batch");
        assert_eq!(t.values, vec![(1, 1), (2, 2)]);
        assert_eq!(t.watermark, 30);
        let t = o.take(1, 2).expect("batch");
        assert_eq!((t.values, t.watermark), (vec![(3, 3)], 100));
    }

    #[test]
    fn a_key_lost_in_several_batches_waits_with_its_newest_value() {
        let mut o = Outbox::new();
        o.offer(7u32, "old", 1);
        o.take(0, 10);
        o.offer(7, "new", 2);
        o.take(1, 10);
        o.lost(0);
        assert_eq!(o.backlog(), (1, 0));
        assert_eq!(o.take(2, 10).expect("batch").values, vec![(7, "new")]);
    }

    #[test]
    fn nothing_leaves_while_holding() {
        let mut o = Outbox::new();
        o.offer(1u32, (), 5);
        o.hold();
        assert!(o.take(0, 10).is_none());
        o.release();
        assert_eq!(o.take(0, 10).expect("batch").values.len(), 1);
    }
}
