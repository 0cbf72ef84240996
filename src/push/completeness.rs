//! When a window is complete at central, sans-IO: central's watermark from
//! its edges' pushed watermarks, with stragglers left out.
//!
//! Central's watermark is the oldest pushed watermark of the edges that
//! are **live**, and never goes back. An edge becomes a **straggler** when
//! every other live edge has pushed a watermark more than
//! `straggler_timeout` past its own (past central's first watermark, for
//! an edge that has not pushed yet): it no longer holds windows back, and
//! each window that goes final meanwhile is recorded as final without it
//! ([`Completeness::missing`]). A straggler is live again once its pushed
//! watermark reaches central's; what it pushes for windows already final
//! arrives as corrections, as a late record does on an edge.
//!
//! The timeout is measured in event time (the edges' watermarks), not on
//! central's clock, so every decision is a function of the order in which
//! batches reached central's log: a restarted central, replaying its log,
//! makes the same decisions and writes the same files. Live, event time
//! follows the wall clock, so the timeout reads as wall time too; in a
//! replay at 60x it scales with the replay.

use std::collections::BTreeSet;

/// Central's completeness state; see the module documentation.
#[derive(Clone, Debug)]
pub struct Completeness {
    window_ms: u64,
    timeout_ms: u64,
    marks: Vec<u64>,
    straggling: Vec<bool>,
    /// Central's first nonzero watermark input: where an edge that never
    /// pushed is measured from.
    first: Option<u64>,
    watermark: u64,
    /// (window start, edge) of windows that went final without the edge.
    missing: BTreeSet<(u64, usize)>,
}

impl Completeness {
    /// `edges` edges, none heard from; windows of `window_ms`.
    pub fn new(edges: usize, window_ms: u64, timeout_ms: u64) -> Self {
        Completeness {
            window_ms: window_ms.max(1),
            timeout_ms,
            marks: vec![0; edges],
            straggling: vec![false; edges],
            first: None,
            watermark: 0,
            missing: BTreeSet::new(),
        }
    }

    /// Edge `edge` pushed `mark`; returns central's watermark after it.
    pub fn pushed(&mut self, edge: usize, mark: u64) -> u64 {
        let Some(m) = self.marks.get_mut(edge) else {
            return self.watermark;
        };
        *m = (*m).max(mark);
        if mark > 0 && self.first.is_none() {
            self.first = Some(mark);
        }
        self.recompute()
    }

    fn recompute(&mut self) -> u64 {
        let first = self.first.unwrap_or(0);
        // Rejoin: a straggler that caught up holds windows again.
        for (e, s) in self.straggling.iter_mut().enumerate() {
            if *s && self.marks[e] >= self.watermark {
                *s = false;
            }
        }
        // Leave out the furthest behind while the others have all gone
        // `timeout` past it.
        loop {
            let live: Vec<usize> = (0..self.marks.len())
                .filter(|&e| !self.straggling[e])
                .collect();
            let Some(&behind) = live.iter().min_by_key(|&&e| (self.marks[e], e)) else {
                break;
            };
            let others = live
                .iter()
                .filter(|&&e| e != behind)
                .map(|&e| self.marks[e])
                .min();
            let base = self.marks[behind].max(first);
            match others {
                Some(o) if o > base.saturating_add(self.timeout_ms) => {
                    self.straggling[behind] = true;
                }
                _ => break,
            }
        }
        let live_min = (0..self.marks.len())
            .filter(|&e| !self.straggling[e])
            .map(|e| self.marks[e])
            .min();
        if let Some(new) = live_min.filter(|&w| w > self.watermark) {
            self.finalized(self.watermark, new);
            self.watermark = new;
        }
        self.watermark
    }

    /// The watermark moved from `old` to `new`: windows ending in
    /// (old, new] are final, without today's stragglers.
    fn finalized(&mut self, old: u64, new: u64) {
        let absent: Vec<usize> = (0..self.straggling.len())
            .filter(|&e| self.straggling[e])
            .collect();
        if absent.is_empty() {
            return;
        }
        let size = self.window_ms;
        // Windows ending after `old` (and none before central's first
        // watermark: nothing was final then).
        let from = old.max(self.first.unwrap_or(0));
        let mut start = (from / size) * size;
        while start + size <= new {
            if start + size > old {
                for &e in &absent {
                    self.missing.insert((start, e));
                }
            }
            start += size;
        }
    }

    /// Central's watermark.
    pub fn watermark(&self) -> u64 {
        self.watermark
    }

    /// Each edge's pushed watermark.
    pub fn marks(&self) -> &[u64] {
        &self.marks
    }

    /// Whether each edge is a straggler now.
    pub fn straggling(&self) -> &[bool] {
        &self.straggling
    }

    /// (window start, edge) of every window that went final without that
    /// edge.
    pub fn missing(&self) -> &BTreeSet<(u64, usize)> {
        &self.missing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: u64 = 60_000;
    const T: u64 = 300_000;

    #[test]
    fn the_oldest_edge_holds_central_back() {
        let mut c = Completeness::new(2, W, T);
        assert_eq!(c.pushed(0, 10 * W), 0, "edge 1 has not pushed");
        assert_eq!(c.pushed(1, 8 * W), 8 * W);
        assert_eq!(c.pushed(1, 12 * W), 10 * W);
        assert!(c.missing().is_empty());
    }

    #[test]
    fn an_edge_that_never_pushed_is_left_out_after_the_timeout() {
        let mut c = Completeness::new(2, W, T);
        assert_eq!(c.pushed(0, 100 * W), 0);
        assert_eq!(c.pushed(0, 100 * W + T), 0, "not more than the timeout yet");
        assert_eq!(c.pushed(0, 106 * W), 106 * W);
        assert_eq!(c.straggling(), [false, true]);
        // Windows 100..105 went final without edge 1.
        let missing: Vec<_> = c.missing().iter().copied().collect();
        assert_eq!(missing, (100..106).map(|w| (w * W, 1)).collect::<Vec<_>>());
    }

    #[test]
    fn a_silent_edge_is_left_out_and_rejoins_once_caught_up() {
        let mut c = Completeness::new(3, W, T);
        for e in 0..3 {
            c.pushed(e, 10 * W);
        }
        assert_eq!(c.watermark(), 10 * W);
        // Edge 2 falls silent; the others go on.
        c.pushed(0, 20 * W);
        assert_eq!(c.pushed(1, 20 * W), 20 * W);
        assert_eq!(c.straggling(), [false, false, true]);
        assert!(c.missing().contains(&(10 * W, 2)));
        assert!(c.missing().contains(&(19 * W, 2)));
        assert!(!c.missing().contains(&(9 * W, 2)));
        // It comes back behind: still out, central never goes back.
        assert_eq!(c.pushed(2, 15 * W), 20 * W);
        assert_eq!(c.straggling(), [false, false, true]);
        // Caught up: it holds windows again.
        assert_eq!(c.pushed(2, 21 * W), 20 * W);
        assert_eq!(c.straggling(), [false, false, false]);
        assert_eq!(c.pushed(0, 24 * W), 20 * W);
        assert_eq!(c.pushed(1, 24 * W), 21 * W, "edge 2 holds it back");
        // Left behind by more than the timeout again: out again.
        assert_eq!(c.pushed(0, 30 * W), 21 * W);
        assert_eq!(c.pushed(1, 30 * W), 30 * W);
        assert_eq!(c.straggling(), [false, false, true]);
    }

    #[test]
    fn one_edge_never_straggles() {
        let mut c = Completeness::new(1, W, T);
        assert_eq!(c.pushed(0, 50 * W), 50 * W);
        assert_eq!(c.straggling(), [false]);
    }
}
