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
//! A target that applies batches in any order (several requests in flight
//! to an HTTP broker) must not see a key twice at once: an [`exclusive`]
//! outbox keeps a key waiting while a batch holding it is in flight, so a
//! key's values reach the target in the order they were offered.
//!
//! [`exclusive`]: Outbox::exclusive
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
    /// Keys in flight, when exclusive.
    flying: Option<BTreeSet<K>>,
    watermark: u64,
    holding: bool,
}

/// What [`Outbox::take_with`] does with the next value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pick {
    /// Into the batch.
    Take,
    /// The batch is full: the value keeps waiting.
    Stop,
    /// Given up (it can never be sent): out of the outbox, not in the batch.
    Drop,
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
            flying: None,
            watermark: 0,
            holding: false,
        }
    }

    /// An outbox that never has one key in two batches in flight (see the
    /// module documentation).
    pub fn exclusive() -> Self {
        Outbox {
            flying: Some(BTreeSet::new()),
            ..Self::new()
        }
    }

    /// The value waiting for `key`, if one is.
    pub fn waiting(&self, key: &K) -> Option<&V> {
        self.waiting.get(key).map(|w| &w.value)
    }

    /// Drops every waiting value `keep` refuses (a sink that finds, after
    /// its log replay, values the target already has).
    pub fn retain_waiting(&mut self, mut keep: impl FnMut(&K, &V) -> bool) {
        let by_age = &mut self.by_age;
        self.waiting.retain(|k, w| {
            let kept = keep(k, &w.value);
            if !kept {
                by_age.remove(&(w.emitted_at, *k));
            }
            kept
        });
    }

    /// Drops the oldest waiting values (by emission watermark) until at
    /// most `keep` wait; returns how many went (a delivery whose target is
    /// away for long bounds its memory so).
    pub fn drop_oldest(&mut self, keep: usize) -> usize {
        let mut dropped = 0;
        while self.waiting.len() > keep {
            let Some((_, k)) = self.by_age.pop_first() else {
                break;
            };
            self.waiting.remove(&k);
            dropped += 1;
        }
        dropped
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
        let max = max.max(1);
        let mut n = 0;
        self.take_with(seq, |_, _| {
            n += 1;
            if n <= max {
                Pick::Take
            } else {
                Pick::Stop
            }
        })
    }

    /// Takes batch `seq`, oldest first, asking `pick` about each value in
    /// turn until it says [`Pick::Stop`] or nothing waits; `None` while
    /// holding. An exclusive outbox skips keys in flight.
    pub fn take_with(
        &mut self,
        seq: u64,
        mut pick: impl FnMut(&K, &V) -> Pick,
    ) -> Option<Taken<K, V>> {
        if self.holding {
            return None;
        }
        let mut values = Vec::new();
        let mut sent = Vec::new();
        let mut skipped = Vec::new();
        while let Some((at, key)) = self.by_age.pop_first() {
            if self.flying.as_ref().is_some_and(|f| f.contains(&key)) {
                skipped.push((at, key));
                continue;
            }
            let Some(w) = self.waiting.get(&key) else {
                continue;
            };
            match pick(&key, &w.value) {
                Pick::Stop => {
                    skipped.push((at, key));
                    break;
                }
                Pick::Drop => {
                    self.waiting.remove(&key);
                }
                Pick::Take => {
                    let Some(w) = self.waiting.remove(&key) else {
                        continue;
                    };
                    values.push((key, w.value.clone()));
                    sent.push((key, w));
                }
            }
        }
        self.by_age.extend(skipped);
        let watermark = self
            .oldest_waiting()
            .map_or(self.watermark, |w| w.min(self.watermark));
        if let Some(f) = &mut self.flying {
            f.extend(sent.iter().map(|(k, _)| *k));
        }
        self.in_flight.insert(seq, sent);
        Some(Taken { values, watermark })
    }

    fn land(&mut self, sent: &[(K, Waiting<V>)]) {
        if let Some(f) = &mut self.flying {
            for (k, _) in sent {
                f.remove(k);
            }
        }
    }

    /// Batch `seq` was acknowledged.
    pub fn acked(&mut self, seq: u64) {
        if let Some(sent) = self.in_flight.remove(&seq) {
            self.land(&sent);
        }
    }

    /// Batch `seq` was answered, but only in part: its values `retry`
    /// picks wait again (unless a newer value of their key already does),
    /// the rest are done with. Unlike [`lost`](Self::lost), later batches
    /// in flight are left alone (a target with independent requests).
    pub fn partly_lost(&mut self, seq: u64, mut retry: impl FnMut(&K) -> bool) {
        let Some(sent) = self.in_flight.remove(&seq) else {
            return;
        };
        self.land(&sent);
        for (key, w) in sent {
            if retry(&key) && !self.waiting.contains_key(&key) {
                self.by_age.insert((w.emitted_at, key));
                self.waiting.insert(key, w);
            }
        }
    }

    /// Every batch below `next` was acknowledged (a receiver says so
    /// after a reconnect).
    pub fn acked_below(&mut self, next: u64) {
        let rest = self.in_flight.split_off(&next);
        for sent in std::mem::replace(&mut self.in_flight, rest).into_values() {
            self.land(&sent);
        }
    }

    /// Batch `seq` and every later one in flight were lost: their values
    /// wait again, unless a newer value of the same key already does.
    pub fn lost(&mut self, seq: u64) {
        // Newest batch first: of a key lost in several, its newest value
        // goes back, and the older ones find it waiting.
        for (_, sent) in self.in_flight.split_off(&seq).into_iter().rev() {
            self.land(&sent);
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
    fn an_exclusive_outbox_keeps_a_key_in_flight_out_of_the_next_batch() {
        let mut o = Outbox::exclusive();
        o.offer(1u32, "w1", 1);
        o.offer(2, "x", 2);
        assert_eq!(o.take(0, 1).expect("batch").values, vec![(1, "w1")]);
        o.offer(1, "w2", 3);
        // Key 1 is in flight: its newer value waits for that batch's fate.
        assert_eq!(o.take(1, 10).expect("batch").values, vec![(2, "x")]);
        o.acked(0);
        assert_eq!(o.take(2, 10).expect("batch").values, vec![(1, "w2")]);
    }

    #[test]
    fn a_batch_answered_in_part_retries_only_what_was_picked() {
        let mut o = Outbox::new();
        for k in 1u32..=3 {
            o.offer(k, k * 10, u64::from(k));
        }
        o.advance(50);
        o.take(0, 10);
        o.partly_lost(0, |k| *k == 2);
        assert_eq!(o.backlog(), (1, 0));
        assert_eq!(o.delivered(), 2, "the retried value bounds the frontier");
        assert_eq!(o.take(1, 10).expect("batch").values, vec![(2, 20)]);
    }

    #[test]
    fn one_failed_request_of_several_in_flight_puts_back_only_its_own() {
        let mut o = Outbox::exclusive();
        o.offer(1u32, "a", 1);
        o.take(0, 1);
        o.offer(2, "b", 2);
        o.take(1, 1);
        o.partly_lost(0, |_| true);
        // The oldest go first when the outbox is bounded; in flight stays.
        let mut b: Outbox<u32, &str> = Outbox::new();
        for (k, at) in [(1, 30), (2, 10), (3, 20)] {
            b.offer(k, "v", at);
        }
        b.take(0, 1);
        assert_eq!(b.drop_oldest(1), 1);
        assert_eq!((b.waiting(&3), b.waiting(&1)), (None, Some(&"v")));
        assert_eq!(o.backlog(), (1, 1), "batch 1 is still in flight");
        o.acked(1);
        assert_eq!(o.take(2, 10).expect("batch").values, vec![(1, "a")]);
    }

    #[test]
    fn take_with_stops_and_drops_as_told() {
        let mut o = Outbox::new();
        for k in 1u32..=4 {
            o.offer(k, k, u64::from(k));
        }
        let t = o
            .take_with(0, |k, _| match k {
                2 => Pick::Drop,
                4 => Pick::Stop,
                _ => Pick::Take,
            })
            .expect("batch");
        assert_eq!(t.values, vec![(1, 1), (3, 3)]);
        assert_eq!(o.backlog(), (1, 2), "4 waits, 2 is gone");
        o.retain_waiting(|_, _| false);
        assert_eq!(o.backlog(), (0, 2));
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
