//! What an edge still has to push to central, sans-IO.
//!
//! The edge's dataflow hands over partials as they change ([`offer`]).
//! The outbox keeps the latest value per (kind, key, window) until it
//! is sent, so a key that changes ten times while central is slow or away
//! travels once. It cuts batches of wire updates ([`next_batch`]) and keeps
//! them until central acknowledges them. A batch that is lost goes back
//! into the outbox, unless a newer value of the same key is already
//! waiting ([`lost`]).
//!
//! Two watermarks:
//! - The **header watermark** of a batch is the edge's claim "every partial
//!   of a window ending at or before this is in this batch or an earlier
//!   one". Central finalizes windows by it, so it never passes a partial
//!   still waiting here: it is the edge's watermark, capped at the
//!   emission watermark of the oldest partial still waiting.
//! - The **delivered frontier** ([`delivered`]) is the watermark up to
//!   which everything the dataflow emitted is acknowledged by central:
//!   the oldest emission watermark still waiting or in flight, or the
//!   edge's watermark when nothing is. The node keeps the log segments
//!   of windows past it.
//!
//! While the node replays its log at start, the outbox holds everything
//! ([`hold`]): replay passes through intermediate values of windows that
//! central already has complete, and sending them would move central's
//! keys backwards. Coalesced, they are complete again by the end of the
//! replay ([`release`]).
//!
//! [`offer`]: Outbox::offer
//! [`next_batch`]: Outbox::next_batch
//! [`lost`]: Outbox::lost
//! [`delivered`]: Outbox::delivered
//! [`hold`]: Outbox::hold
//! [`release`]: Outbox::release

use crate::dataflow::emit::Status;
use crate::dataflow::partials::{PartialEmission, PartialKey, PartialKind, PartialValue};
use crate::delivery::outbox::Outbox as Keyed;
use crate::partial::wire::{self, Header, Part, Update};
use crate::reference::Reference;

/// A batch cut from the outbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cut {
    /// Its records (BATCH encoding 2, [`crate::partial::wire`]).
    pub records: Vec<u8>,
    /// Updates in it.
    pub updates: usize,
    /// Its header watermark.
    pub watermark: u64,
}

/// What an edge still has to push; see the module documentation. The
/// keyed core is [`crate::delivery::outbox`]; this adds the wire.
#[derive(Debug)]
pub struct Outbox {
    window_ms: u64,
    position_resolution: Option<u8>,
    keyed: Keyed<PartialKey, PartialValue>,
}

impl Outbox {
    /// An empty outbox for an edge with these settings.
    pub fn new(window_ms: u64, position_resolution: Option<u8>) -> Self {
        Outbox {
            window_ms,
            position_resolution,
            keyed: Keyed::new(),
        }
    }

    /// Holds every batch back (the node is replaying its log).
    pub fn hold(&mut self) {
        self.keyed.hold();
    }

    /// Lets batches leave again.
    pub fn release(&mut self) {
        self.keyed.release();
    }

    /// Takes the dataflow's partials. Provisional, final and corrected
    /// values all replace what waits for their key. The edge's watermark
    /// moves by [`advance`](Self::advance) alone: an emission's watermark is
    /// the dataflow's time, which at the end of input runs ahead of what
    /// the edge has seen.
    pub fn offer(&mut self, emissions: &[PartialEmission]) {
        for e in emissions {
            // Partials depend on no reference change: the dataflow never
            // retracts one. If it ever did, central keeps the last value.
            if e.status != Status::Retraction {
                self.keyed.offer(e.key, e.value.clone(), e.watermark);
            }
        }
    }

    /// The edge's watermark moved without a partial changing. The end of
    /// the edge's input (`u64::MAX`) claims nothing about later windows.
    pub fn advance(&mut self, watermark: u64) {
        self.keyed.advance(watermark);
    }

    /// Partials waiting, and in flight.
    pub fn backlog(&self) -> (usize, usize) {
        self.keyed.backlog()
    }

    /// See the module documentation.
    pub fn delivered(&self) -> u64 {
        self.keyed.delivered()
    }

    /// Cuts batch `seq` of at most `max_updates` updates, oldest first;
    /// `None` while holding. With nothing waiting it is a header alone,
    /// which carries the edge's watermark (send one when it moved).
    pub fn next_batch(
        &mut self,
        seq: u64,
        reference: &Reference,
        max_updates: usize,
    ) -> Option<Cut> {
        let taken = self.keyed.take(seq, max_updates)?;
        let updates: Vec<Update> = taken
            .values
            .iter()
            .filter_map(|(key, value)| to_update(key, value, reference))
            .collect();
        let header = Header {
            window_ms: self.window_ms,
            position_resolution: self.position_resolution,
            watermark_ms: taken.watermark,
        };
        let mut records = Vec::new();
        wire::encode(&header, &updates, &mut records);
        Some(Cut {
            records,
            updates: updates.len(),
            watermark: taken.watermark,
        })
    }

    /// Central acknowledged batch `seq` (it is in central's log).
    pub fn acked(&mut self, seq: u64) {
        self.keyed.acked(seq);
    }

    /// Central has every batch below `next` (its WELCOME after a
    /// reconnect): they count as acknowledged.
    pub fn acked_below(&mut self, next: u64) {
        self.keyed.acked_below(next);
    }

    /// Batch `seq` and every later one in flight were lost: their partials
    /// wait again, unless a newer value of the same key already does.
    pub fn lost(&mut self, seq: u64) {
        self.keyed.lost(seq);
    }
}

/// A partial as a wire update, its key by id; `None` for an index the
/// reference data does not have (cannot happen: the dataflow's indexes
/// come from the same reference).
fn to_update(key: &PartialKey, value: &PartialValue, reference: &Reference) -> Option<Update> {
    let part = match (key.kind, value) {
        (PartialKind::Congestion, PartialValue::Congestion(p)) => Part::Congestion {
            segment: reference.roads.get(key.key as usize)?.id.clone(),
            partial: p.clone(),
        },
        (PartialKind::Charging, PartialValue::Charging(p)) => Part::Charging {
            charger: reference.chargers.get(key.key as usize)?.id.clone(),
            partial: p.clone(),
        },
        (PartialKind::LowSoc, PartialValue::LowSoc(p)) => Part::LowSoc {
            cell: key.key,
            partial: p.clone(),
        },
        _ => return None,
    };
    Some(Update {
        window_start_ms: key.window,
        part,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partial::sketch::Sketch;
    use crate::partial::CongestionPartial;
    use crate::reference::Road;

    const W: u64 = 60_000;

    fn reference() -> Reference {
        let road = |id: &str| Road {
            id: id.into(),
            free_flow_mps: 10.0,
            lanes: 1,
            name: None,
            length_m: None,
            line: vec![[24.9, 60.1], [24.901, 60.1]],
        };
        Reference::new(vec![road("s-0"), road("s-1")], Vec::new())
    }

    fn emission(segment: u64, window: u64, samples: u64, watermark: u64) -> PartialEmission {
        PartialEmission {
            status: Status::Provisional,
            key: PartialKey {
                kind: PartialKind::Congestion,
                key: segment,
                window,
            },
            value: PartialValue::Congestion(CongestionPartial {
                samples,
                speed_sum: 0,
                vehicles: 1,
                sketch: Sketch::of([samples]),
            }),
            watermark,
        }
    }

    fn samples(cut: &Cut) -> Vec<(String, u64)> {
        let (_, updates) = wire::decode(&cut.records).expect("header");
        updates
            .into_iter()
            .map(|u| match u.expect("update").part {
                Part::Congestion { segment, partial } => (segment, partial.samples),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_key_that_changes_while_waiting_travels_once_with_its_last_value() {
        let r = reference();
        let mut o = Outbox::new(W, None);
        o.offer(&[
            emission(0, 0, 1, 10),
            emission(0, 0, 2, 20),
            emission(1, 0, 7, 25),
        ]);
        o.offer(&[emission(0, 0, 3, 30)]);
        o.advance(30);
        let cut = o.next_batch(0, &r, 10).expect("not holding");
        assert_eq!(samples(&cut), vec![("s-1".into(), 7), ("s-0".into(), 3)]);
        assert_eq!(cut.watermark, 30);
        assert_eq!(o.backlog(), (0, 2));
        assert_eq!(o.delivered(), 25);
        o.acked(0);
        assert_eq!(o.delivered(), 30);
    }

    #[test]
    fn the_header_watermark_never_passes_a_partial_still_waiting() {
        let r = reference();
        let mut o = Outbox::new(W, None);
        o.offer(&[emission(0, 0, 1, 61_000), emission(1, 0, 1, 62_000)]);
        o.advance(200_000);
        let first = o.next_batch(0, &r, 1).expect("cut");
        assert_eq!(first.updates, 1);
        assert_eq!(first.watermark, 62_000, "s-1's final value still waits");
        let second = o.next_batch(1, &r, 1).expect("cut");
        assert_eq!(second.watermark, 200_000);
        // Nothing waiting: a header alone carries the watermark.
        o.advance(260_000);
        let third = o.next_batch(2, &r, 1).expect("cut");
        assert_eq!((third.updates, third.watermark), (0, 260_000));
    }

    #[test]
    fn lost_batches_wait_again_unless_a_newer_value_does() {
        let r = reference();
        let mut o = Outbox::new(W, None);
        o.offer(&[emission(0, 0, 1, 10), emission(1, 0, 1, 11)]);
        o.next_batch(5, &r, 1).expect("cut");
        o.next_batch(6, &r, 1).expect("cut");
        o.offer(&[emission(0, 0, 9, 12)]);
        o.advance(12);
        o.lost(5);
        let again = o.next_batch(7, &r, 10).expect("cut");
        assert_eq!(samples(&again), vec![("s-1".into(), 1), ("s-0".into(), 9)]);
        // A reconnect's WELCOME says central has everything below 8.
        o.acked_below(8);
        assert_eq!(o.backlog(), (0, 0));
        assert_eq!(o.delivered(), 12);
    }

    #[test]
    fn a_key_lost_in_several_batches_waits_with_its_newest_value() {
        let r = reference();
        let mut o = Outbox::new(W, None);
        o.offer(&[emission(0, 0, 4, 10)]);
        o.next_batch(10, &r, 10).expect("cut");
        o.offer(&[emission(0, 0, 7, 20)]);
        o.next_batch(11, &r, 10).expect("cut");
        o.offer(&[emission(0, 0, 8, 30)]);
        o.next_batch(12, &r, 10).expect("cut");
        // The connection dies: batch 11's answer fails first, then a
        // reconnect's WELCOME says central lacks everything from 10.
        o.lost(11);
        o.lost(10);
        let again = o.next_batch(13, &r, 10).expect("cut");
        assert_eq!(samples(&again), vec![("s-0".into(), 8)]);
    }

    #[test]
    fn the_end_of_input_claims_no_later_window() {
        let mut o = Outbox::new(W, None);
        o.advance(120_000);
        o.advance(u64::MAX);
        let cut = o.next_batch(0, &reference(), 10).expect("cut");
        assert_eq!(cut.watermark, 120_000);
    }

    #[test]
    fn nothing_leaves_while_the_log_replays() {
        let r = reference();
        let mut o = Outbox::new(W, None);
        o.hold();
        o.offer(&[emission(0, 0, 1, 10), emission(0, 0, 5, 20)]);
        o.advance(20);
        assert_eq!(o.next_batch(0, &r, 10), None);
        assert_eq!(o.delivered(), 20);
        o.release();
        let cut = o.next_batch(0, &r, 10).expect("released");
        assert_eq!(samples(&cut), vec![("s-0".into(), 5)]);
    }
}
