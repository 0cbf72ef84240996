//! Event time: tumbling windows, the watermark, and what happens to a record
//! given the watermark at its arrival (DESIGN.md "Event time, windows, late
//! data").
//!
//! * Windows are `[start, start + size)`, aligned to the Unix epoch.
//! * The watermark is the largest event time seen minus `allowed_lateness`.
//!   A window is *final* once the watermark reaches its end.
//! * A window is *retired* once the watermark reaches `end + retention`: its
//!   state is dropped and records for it are counted and dropped.
//!
//! Everything here is pure arithmetic on milliseconds.

use std::time::Duration;

/// Window and lateness settings, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeSpec {
    /// Window length.
    pub size_ms: u64,
    /// How far behind the largest event time a record may be and still count
    /// as on time.
    pub allowed_lateness_ms: u64,
    /// How long after its end a window accepts corrections.
    pub retention_ms: u64,
}

/// What happens to a record, given the watermark when it arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// At or after the watermark.
    OnTime,
    /// Behind the watermark, but its window is not final yet.
    Late,
    /// Its window is already final: the record corrects it.
    Correction,
    /// Its window is retired: counted and dropped.
    Expired,
}

impl TimeSpec {
    /// Builds a spec from durations.
    pub fn new(size: Duration, allowed_lateness: Duration, retention: Duration) -> Self {
        TimeSpec {
            size_ms: size.as_millis() as u64,
            allowed_lateness_ms: allowed_lateness.as_millis() as u64,
            retention_ms: retention.as_millis() as u64,
        }
    }

    /// Start of the window containing `ts_ms`.
    #[inline]
    pub fn window_start(&self, ts_ms: u64) -> u64 {
        ts_ms - ts_ms % self.size_ms
    }

    /// End (exclusive) of the window starting at `start`.
    #[inline]
    pub fn window_end(&self, start: u64) -> u64 {
        start + self.size_ms
    }

    /// Watermark after seeing events up to `max_ts` (`None`: nothing seen).
    #[inline]
    pub fn watermark(&self, max_ts: Option<u64>) -> u64 {
        max_ts.map_or(0, |m| m.saturating_sub(self.allowed_lateness_ms))
    }

    /// The watermark at which the window starting at `start` retires.
    #[inline]
    pub fn retire_at(&self, start: u64) -> u64 {
        self.window_end(start) + self.retention_ms
    }

    /// The fate of a record with event time `ts_ms` arriving at `watermark`.
    #[inline]
    pub fn classify(&self, ts_ms: u64, watermark: u64) -> Fate {
        let start = self.window_start(ts_ms);
        if self.retire_at(start) <= watermark {
            Fate::Expired
        } else if self.window_end(start) <= watermark {
            Fate::Correction
        } else if ts_ms < watermark {
            Fate::Late
        } else {
            Fate::OnTime
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_align_to_the_epoch_and_fates_follow_the_watermark() {
        let t = TimeSpec {
            size_ms: 60_000,
            allowed_lateness_ms: 5_000,
            retention_ms: 120_000,
        };
        assert_eq!(t.window_start(1_767_258_059_999), 1_767_258_000_000);
        assert_eq!(t.window_start(1_767_258_060_000), 1_767_258_060_000);
        assert_eq!(t.watermark(None), 0);
        assert_eq!(t.watermark(Some(65_000)), 60_000);
        assert_eq!(t.classify(61_000, 60_000), Fate::OnTime);
        assert_eq!(t.classify(59_000, 58_000), Fate::OnTime);
        assert_eq!(t.classify(59_000, 59_500), Fate::Late);
        assert_eq!(t.classify(59_000, 60_000), Fate::Correction);
        assert_eq!(t.classify(59_000, 179_999), Fate::Correction);
        assert_eq!(t.classify(59_000, 180_000), Fate::Expired);
    }
}
