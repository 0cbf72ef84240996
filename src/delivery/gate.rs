//! The gate a delivery puts on the node's log: the delivered frontier,
//! held at most `max_hold` behind the node's watermark.
//!
//! A node keeps the log segments of every window past the frontiers of
//! its deliveries, so a restart can recompute what a target has not
//! acknowledged. A target away for long would keep the whole log; past
//! `max_hold` the oldest windows are given up to log retention (counted,
//! said once per outage by the caller): they stay in memory and are still
//! delivered if the target returns before the node restarts.

use std::sync::atomic::{AtomicU64, Ordering};

/// Publishes `delivered` (the outbox's frontier) in `frontier`, but no
/// further behind `watermark` than `max_hold_ms`. Returns how many windows
/// (of `window_ms`) were given up by this call; their count is added to
/// `given_up`.
pub fn publish(
    frontier: &AtomicU64,
    given_up: &AtomicU64,
    delivered: u64,
    watermark: u64,
    max_hold_ms: u64,
    window_ms: u64,
) -> u64 {
    let limit = watermark.saturating_sub(max_hold_ms);
    let published = delivered.max(limit);
    let before = frontier.fetch_max(published, Ordering::AcqRel);
    if limit <= delivered || published <= before {
        return 0;
    }
    let windows = (published - before.max(delivered)) / window_ms.max(1);
    given_up.fetch_add(windows, Ordering::Relaxed);
    windows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frontier_follows_delivery_until_max_hold_then_the_watermark() {
        let (frontier, given_up) = (AtomicU64::new(0), AtomicU64::new(0));
        assert_eq!(publish(&frontier, &given_up, 100, 150, 1000, 10), 0);
        assert_eq!(frontier.load(Ordering::Relaxed), 100);
        // Stuck at 100 while the watermark runs to 1,300: 200 ms past hold.
        assert_eq!(publish(&frontier, &given_up, 100, 1300, 1000, 10), 20);
        assert_eq!(frontier.load(Ordering::Relaxed), 300);
        assert_eq!(publish(&frontier, &given_up, 100, 1300, 1000, 10), 0);
        assert_eq!(given_up.load(Ordering::Relaxed), 20);
    }
}
