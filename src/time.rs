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
//! # One outlier never moves the watermark ([`EventClock`])
//! "The largest event time seen" is taken with a guard, so that one record
//! stamped in the future (a device whose clock runs an hour ahead, a year
//! typed wrong) cannot make every later record late. Records are judged in
//! chunks (a log entry, or a slice of a recording), each against the clock
//! as it stood before the chunk:
//!
//! 1. A record at most `max_future` ahead of the clock's newest trusted
//!    event time `T` moves `T` as before (the first chunk's base is its
//!    oldest record).
//! 2. A record further ahead is a *leap*: it is aggregated as on time (it
//!    is not lost), but it moves nothing on its own. The clock remembers
//!    each leaping device's newest time.
//! 3. A leap is believed once `leap_quorum` distinct devices have leaps
//!    within `max_future` of each other (a recording that resumes after a
//!    night, a node that was idle): `T` jumps to the newest time of the
//!    largest such group, and leaps now within reach fold in.
//!
//! A device with a wrong clock is one device, so it never makes a quorum;
//! a city resuming after a gap makes one within its first few reports. The
//! rule depends on the records and their order only, so live ingest, the
//! replay of its log and the replay of a recording agree. Live ingest also
//! refuses records more than `max_future` ahead of the node's wall clock
//! before acknowledging them (reason `future`).
//!
//! Everything here is pure arithmetic on milliseconds.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Default of `[windows] max_future`: how far ahead of the clock (and, live,
/// of the node's wall clock) an event time may be. Five minutes: well above
/// GNSS and NTP error, well below a window's retention.
pub const DEFAULT_MAX_FUTURE_MS: u64 = 5 * 60_000;
/// Default of `[windows] leap_quorum`: distinct devices that must agree
/// before the clock jumps further than `max_future` at once.
pub const DEFAULT_LEAP_QUORUM: u32 = 3;
/// Most leaping devices the clock remembers (16 bytes each); past this the
/// furthest leap is forgotten first (it stays aggregated).
pub const MAX_LEAPS: usize = 4096;

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
    /// How far ahead of the clock one record may move it ([`EventClock`]).
    pub max_future_ms: u64,
    /// Distinct devices that must agree before the clock leaps further.
    pub leap_quorum: u32,
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
            max_future_ms: DEFAULT_MAX_FUTURE_MS,
            leap_quorum: DEFAULT_LEAP_QUORUM,
        }
    }

    /// The same spec with another leap guard.
    pub fn with_future(mut self, max_future: Duration, leap_quorum: u32) -> Self {
        self.max_future_ms = max_future.as_millis() as u64;
        self.leap_quorum = leap_quorum.max(1);
        self
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

/// What the clock needs of one chunk: computed by the worker that decodes
/// it, before the clock before the chunk is known ([`ChunkTimes::new`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChunkTimes {
    /// Oldest event time in the chunk.
    pub min: Option<u64>,
    /// Newest event time in the chunk (trusted or not).
    pub max: Option<u64>,
    /// Newest event time among records surely within reach of the clock.
    pub near_max: Option<u64>,
    /// `(device, ts)` of every other record, in chunk order.
    pub far: Vec<(u64, u64)>,
}

impl ChunkTimes {
    /// A clock tick: `event_ms`, trusted as it is (another process of the
    /// site reached it, its own outliers already set aside).
    pub fn tick(event_ms: u64) -> Self {
        ChunkTimes {
            min: Some(event_ms),
            max: Some(event_ms),
            near_max: Some(event_ms),
            far: Vec::new(),
        }
    }

    /// Summarises a chunk's `(device, ts)` records. `floor` is a clock
    /// state known to precede the chunk's (records within reach of it are
    /// within reach of the real one: the clock never goes back); `None`
    /// keeps every record's detail.
    pub fn new(
        records: impl IntoIterator<Item = (u64, u64)>,
        floor: Option<u64>,
        spec: &TimeSpec,
    ) -> Self {
        let reach = floor.map(|f| f.saturating_add(spec.max_future_ms));
        let mut t = ChunkTimes::default();
        for (device, ts) in records {
            t.min = Some(t.min.map_or(ts, |m| m.min(ts)));
            t.max = t.max.max(Some(ts));
            if reach.is_some_and(|r| ts <= r) {
                t.near_max = t.near_max.max(Some(ts));
            } else {
                t.far.push((device, ts));
            }
        }
        t
    }
}

/// The watermark clock: the newest trusted event time, and the devices
/// leaping ahead of it (module doc, "One outlier never moves the
/// watermark"). Saved in checkpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventClock {
    /// Newest trusted event time, ms (`None`: nothing seen).
    pub max: Option<u64>,
    /// Leaping devices: device hash → its newest leap, ms.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub leaps: BTreeMap<u64, u64>,
}

impl EventClock {
    /// A clock at `max` with no leaps.
    pub fn at(max: Option<u64>) -> Self {
        EventClock {
            max,
            leaps: BTreeMap::new(),
        }
    }

    /// The watermark.
    pub fn watermark(&self, spec: &TimeSpec) -> u64 {
        spec.watermark(self.max)
    }

    /// Takes in one chunk: every record judged against the clock as it
    /// stood before the chunk.
    pub fn fold(&mut self, chunk: &ChunkTimes, spec: &TimeSpec) {
        let Some(min) = chunk.min else { return };
        let base = *self.max.get_or_insert(min);
        let reach = base.saturating_add(spec.max_future_ms);
        let mut max = base.max(chunk.near_max.unwrap_or(base));
        let mut leapt = false;
        for &(device, ts) in &chunk.far {
            if ts <= reach {
                max = max.max(ts);
            } else {
                let t = self.leaps.entry(device).or_insert(ts);
                *t = (*t).max(ts);
                leapt = true;
            }
        }
        self.max = Some(max);
        if leapt {
            self.believe(spec);
        } else if !self.leaps.is_empty() {
            self.fold_in_reach(spec);
        }
    }

    /// Jumps to the newest time of the latest group of `leap_quorum`
    /// devices within `max_future` of each other, if there is one; folds in
    /// leaps within reach; forgets the furthest beyond [`MAX_LEAPS`].
    fn believe(&mut self, spec: &TimeSpec) {
        let quorum = spec.leap_quorum.max(1) as usize;
        let mut times: Vec<u64> = self.leaps.values().copied().collect();
        times.sort_unstable();
        if times.len() >= quorum {
            // Latest `hi` with `quorum` leaps in [hi - max_future, hi].
            let jump = (quorum - 1..times.len())
                .rev()
                .find(|&i| times[i] - times[i + 1 - quorum] <= spec.max_future_ms)
                .map(|i| times[i]);
            if let Some(hi) = jump {
                self.max = self.max.max(Some(hi));
            }
        }
        self.fold_in_reach(spec);
        while self.leaps.len() > MAX_LEAPS {
            let furthest = self.leaps.iter().max_by_key(|(d, t)| (**t, **d));
            let Some((&device, _)) = furthest else { break };
            self.leaps.remove(&device);
        }
    }

    /// Folds leaps now within `max_future` of the clock into it.
    fn fold_in_reach(&mut self, spec: &TimeSpec) {
        let Some(mut max) = self.max else { return };
        loop {
            let reach = max.saturating_add(spec.max_future_ms);
            let before = self.leaps.len();
            self.leaps.retain(|_, t| {
                if *t <= reach {
                    max = max.max(*t);
                    false
                } else {
                    true
                }
            });
            if self.leaps.len() == before {
                break;
            }
        }
        self.max = Some(max);
    }
}

/// A time a person reads: the local date and time with its UTC offset
/// (RFC 3339, to the second); the milliseconds when out of range.
pub fn local(ms: u64) -> String {
    local_format(ms, "%Y-%m-%dT%H:%M:%S%:z")
}

/// `strftime`-formatted local time of `ms` (e.g. `"%H:%M"` for a
/// window's bounds); the milliseconds when out of range.
pub fn local_format(ms: u64, format: &str) -> String {
    use chrono::TimeZone;
    match i64::try_from(ms)
        .ok()
        .and_then(|ms| chrono::Local.timestamp_millis_opt(ms).single())
    {
        Some(t) => t.format(format).to_string(),
        None => format!("{ms} ms"),
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
            max_future_ms: DEFAULT_MAX_FUTURE_MS,
            leap_quorum: DEFAULT_LEAP_QUORUM,
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

    fn fold(clock: &mut EventClock, spec: &TimeSpec, records: &[(u64, u64)]) {
        let floor = clock.max;
        clock.fold(&ChunkTimes::new(records.iter().copied(), floor, spec), spec);
    }

    #[test]
    fn one_record_from_the_future_does_not_move_the_watermark() {
        let spec = TimeSpec::new(
            Duration::from_secs(60),
            Duration::from_secs(5),
            Duration::from_secs(900),
        );
        let now = 1_767_258_000_000;
        let mut clock = EventClock::default();
        // The first chunk's base is its oldest record, not its newest.
        fold(
            &mut clock,
            &spec,
            &[(1, now), (2, 4_000_000_000_000), (3, now + 1_000)],
        );
        assert_eq!(clock.max, Some(now + 1_000));
        assert_eq!(clock.leaps.len(), 1, "2096 is a leap");
        // A device an hour ahead, alone, for a long time: still a leap.
        for i in 0..100 {
            fold(
                &mut clock,
                &spec,
                &[(4, now + 3_600_000 + i), (1, now + 2_000 + i)],
            );
        }
        assert_eq!(clock.max, Some(now + 2_099));
        // Two more devices agree with it within max_future: believed.
        fold(
            &mut clock,
            &spec,
            &[(5, now + 3_600_010), (6, now + 3_600_200)],
        );
        assert_eq!(clock.max, Some(now + 3_600_200));
        assert_eq!(clock.leaps.keys().copied().collect::<Vec<_>>(), vec![2]);
        // Steps within max_future move it as before.
        fold(&mut clock, &spec, &[(1, now + 3_600_200 + 299_000)]);
        assert_eq!(clock.max, Some(now + 3_899_200));
    }

    #[test]
    fn the_judgement_of_a_chunk_does_not_depend_on_its_floor_or_order() {
        let spec = TimeSpec::new(
            Duration::from_secs(60),
            Duration::from_secs(5),
            Duration::from_secs(900),
        )
        .with_future(Duration::from_secs(10), 2);
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for _ in 0..200 {
            let chunks: Vec<Vec<(u64, u64)>> = (0..6)
                .map(|c| {
                    (0..5)
                        .map(|_| (next() % 4, 1_000_000 + c * 4_000 + next() % 40_000))
                        .collect()
                })
                .collect();
            let mut exact = EventClock::default();
            let mut floored = EventClock::default();
            for chunk in &chunks {
                exact.fold(&ChunkTimes::new(chunk.iter().copied(), None, &spec), &spec);
                let floor = floored.max.map(|m| m - next() % 5_000);
                let mut shuffled = chunk.clone();
                shuffled.reverse();
                floored.fold(&ChunkTimes::new(shuffled, floor, &spec), &spec);
                assert_eq!(exact, floored);
            }
        }
    }
}
