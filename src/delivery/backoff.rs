//! Retry with exponential backoff and jitter.

use std::time::Duration;

/// Exponential backoff from `first` to `max`, doubling per failure; each
/// wait has up to half of itself added at random, so many clients that
/// failed together do not retry together.
#[derive(Clone, Debug)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// A schedule starting at `first`, never waiting over `max` (plus jitter).
    pub fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            max,
            next: first,
        }
    }

    /// The wait before the next attempt; doubles the one after.
    pub fn next_wait(&mut self) -> Duration {
        let wait = jitter(self.next);
        self.next = (self.next * 2).min(self.max);
        wait
    }

    /// An attempt succeeded: start again from the first wait.
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

/// `base` plus up to half of it, at random (the clock's nanoseconds are
/// random enough to spread retries; no generator state to carry).
pub fn jitter(base: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    base + base.mul_f64(f64::from(nanos % 1000) / 2000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap_with_at_most_half_added() {
        let (first, max) = (Duration::from_millis(100), Duration::from_millis(700));
        let mut b = Backoff::new(first, max);
        for base in [100, 200, 400, 700, 700] {
            let wait = b.next_wait();
            let base = Duration::from_millis(base);
            assert!(
                wait >= base && wait <= base + base / 2,
                "{wait:?} for {base:?}"
            );
        }
        b.reset();
        assert!(b.next_wait() <= first + first / 2);
    }
}
