//! Log retention: the checkpoint that lets old log segments go.
//!
//! The log is the recording the node rebuilds its state from, so deleting a
//! segment must change nothing downstream. A segment can go once every
//! window its records touch has *retired* (DESIGN.md: a retired window never
//! changes again) and its final rows are durable in the sinks. What the
//! deleted entries still contributed to the rest of the state is saved
//! first, in `checkpoint.json` in the log directory:
//!
//! | field        | meaning |
//! |--------------|---------|
//! | `first_seq`  | the first entry kept: replay starts here |
//! | `clock`      | the watermark clock after the entries before `first_seq` (its newest trusted event time and leaping devices, [`crate::time::EventClock`]): it resumes from it, so every kept record is judged as it was live |
//! | `horizon`    | a watermark: windows retiring at or before it are *frozen*, their rows live in the sinks only, and replay ignores their records |
//! | `carries`    | per charger connector, its last counted register reading in a frozen window: the energy baseline of the next window (TELEMETRY.md §3) |
//! | `senders`    | next batch number per sender, so resends of batches in deleted segments are still recognised |
//! | `settings`   | the settings the rest was computed with: window size, allowed lateness, retention, max_future, leap_quorum, and the SHA-256 of the roads and chargers files |
//!
//! Settings: `horizon` and `carries` mean something only under the window
//! settings they were computed with (a longer retention would unfreeze
//! windows whose records are gone). A node or replay whose window settings
//! differ from the checkpoint's refuses to start, naming each difference
//! ([`Checkpoint::check_settings`]). Changed reference data is allowed and
//! said: windows still in the log are recomputed with it, frozen windows
//! keep their rows. Version 1 checkpoints (no settings, a bare
//! `prefix_max_ts`) are read as they are; the next checkpoint records the
//! settings.
//!
//! Order of operations, so that a crash at any point is safe: the sinks are
//! written durably up to a watermark `>= horizon`; then the checkpoint is
//! written (temporary file, fsync, rename, directory fsync); then the
//! segments before `first_seq` are deleted. A node that finds segments
//! before `first_seq` on start deletes them then.
//!
//! Which segments may go (see [`Tracker::proposal`]): with `M` the largest
//! event time before segment start `J`, every record before `J` lies in a
//! window starting at or before `window_start(M)`, so once the watermark
//! `H` reaches `retire_at(window_start(M))`, all of them are in frozen
//! windows, and no kept record can change a window they touch.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::dataflow::connectors::ChargerReading;
use crate::reference::Reference;
use crate::resolve::Item;
use crate::resolve::Reading;
use crate::time::{ChunkTimes, EventClock, Fate, TimeSpec};

/// File name of the checkpoint inside the log directory.
pub const FILE: &str = "checkpoint.json";

/// Errors reading or writing a checkpoint.
#[derive(Debug, Error)]
pub enum CheckpointError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The checkpoint file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not a valid checkpoint.
    #[error("{path}: not a valid checkpoint: {reason}")]
    Invalid {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Entries between the checkpoint's first one and the oldest segment
    /// are gone.
    #[error("log {}: entries {from}..{to} are missing ({why})", dir.display())]
    Missing {
        /// The log directory.
        dir: PathBuf,
        /// The first missing entry.
        from: u64,
        /// The first entry present.
        to: u64,
        /// How they went missing.
        why: &'static str,
    },
    /// The checkpoint keeps entries the log does not reach.
    #[error("log {}: the checkpoint keeps entries from {first_seq} on, but the log ends before entry {end}: {FILE} does not belong to this log", dir.display())]
    Foreign {
        /// The log directory.
        dir: PathBuf,
        /// The checkpoint's first entry.
        first_seq: u64,
        /// The number after the log's last entry.
        end: u64,
    },
    /// The checkpoint was computed with other window settings.
    #[error("{path}: the log was checkpointed with other window settings ({differences}); its frozen windows would be rewritten. Start with the settings it was written with, or start afresh with a new [log] dir and sink dir (the old ones stay readable)")]
    Settings {
        /// The checkpoint file.
        path: PathBuf,
        /// Each setting that differs, `name: checkpoint → topology`.
        differences: String,
    },
}

/// Checks that a log's oldest segment starts at or before `first_seq`,
/// where its checkpoint (if any) says the kept entries begin: else entries
/// were deleted that nothing covers. A node checks this at start, replay
/// before reading.
pub fn check_oldest(
    dir: &Path,
    first_seq: u64,
    has_checkpoint: bool,
    oldest: Option<u64>,
) -> Result<(), CheckpointError> {
    match oldest {
        Some(oldest) if oldest > first_seq => Err(CheckpointError::Missing {
            dir: dir.to_owned(),
            from: first_seq,
            to: oldest,
            why: if has_checkpoint {
                "the oldest segment starts after the checkpoint's first entry"
            } else {
                "deleted without a checkpoint that covers them"
            },
        }),
        _ => Ok(()),
    }
}

/// Checks that the log reaches the checkpoint's first entry (`end` is the
/// number after its last entry): else the checkpoint is another log's.
pub fn check_end(dir: &Path, first_seq: u64, end: u64) -> Result<(), CheckpointError> {
    if first_seq > end {
        return Err(CheckpointError::Foreign {
            dir: dir.to_owned(),
            first_seq,
            end,
        });
    }
    Ok(())
}

/// The settings a checkpoint was computed with.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// `windows.size`, ms.
    pub window_ms: u64,
    /// `windows.allowed_lateness`, ms.
    pub allowed_lateness_ms: u64,
    /// `windows.retention`, ms.
    pub retention_ms: u64,
    /// `windows.max_future`, ms.
    pub max_future_ms: u64,
    /// `windows.leap_quorum`.
    pub leap_quorum: u32,
    /// SHA-256 (hex) of the roads file followed by the chargers file.
    pub reference_sha256: String,
}

impl Settings {
    /// The settings of a time spec and reference digest.
    pub fn of(spec: &TimeSpec, reference_sha256: &str) -> Self {
        Settings {
            window_ms: spec.size_ms,
            allowed_lateness_ms: spec.allowed_lateness_ms,
            retention_ms: spec.retention_ms,
            max_future_ms: spec.max_future_ms,
            leap_quorum: spec.leap_quorum,
            reference_sha256: reference_sha256.to_owned(),
        }
    }
}

/// One connector's energy baseline, by charger id (not index, so it
/// survives a change of the charger list's order).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Carry {
    /// Charger id.
    pub charger_id: String,
    /// Connector number.
    pub connector: u32,
    /// The reading.
    pub reading: Reading,
}

/// What the deleted part of the log leaves behind (see the module doc).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Format version (2; 1 is read).
    pub version: u32,
    /// First entry kept.
    pub first_seq: u64,
    /// Version 1 only: the clock's newest event time (read into `clock`).
    #[serde(default, skip_serializing)]
    pub prefix_max_ts: Option<u64>,
    /// The watermark clock before `first_seq`.
    #[serde(default)]
    pub clock: EventClock,
    /// Windows with `retire_at <= horizon` are frozen, ms.
    pub horizon: u64,
    /// Energy baselines.
    pub carries: Vec<Carry>,
    /// Next batch number per sender.
    pub senders: BTreeMap<String, u64>,
    /// The settings it was computed with (`None` in version 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<Settings>,
}

impl Checkpoint {
    /// Path of the checkpoint of the log in `dir`.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(FILE)
    }

    /// Loads the checkpoint of the log in `dir`; `None` when there is none
    /// (nothing was ever deleted).
    pub fn load(dir: &Path) -> Result<Option<Checkpoint>, CheckpointError> {
        let path = Self::path(dir);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(CheckpointError::Io { path, source }),
        };
        let mut cp: Checkpoint =
            serde_json::from_slice(&bytes).map_err(|e| CheckpointError::Invalid {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        match cp.version {
            1 => cp.clock = EventClock::at(cp.prefix_max_ts.take()),
            2 => {}
            v => {
                return Err(CheckpointError::Invalid {
                    path,
                    reason: format!("version {v} (this build reads versions 1 and 2)"),
                })
            }
        }
        if let Some(reason) = cp.out_of_range() {
            return Err(CheckpointError::Invalid { path, reason });
        }
        Ok(Some(cp))
    }

    /// The first field out of the range a node can have written, if any
    /// (times within the model's event times, batch numbers below the
    /// largest), so that arithmetic on them cannot overflow.
    fn out_of_range(&self) -> Option<String> {
        use crate::model::MAX_TS_MS;
        // Watermarks and retirement times reach past the last event time by
        // at most a retention; a century is beyond any.
        let max_time = MAX_TS_MS + 100 * 365 * 86_400_000;
        if self.clock.max.is_some_and(|t| t > MAX_TS_MS) {
            return Some(format!("the clock is after {MAX_TS_MS}"));
        }
        if self.clock.leaps.values().any(|&t| t > MAX_TS_MS) {
            return Some(format!("a leap of the clock is after {MAX_TS_MS}"));
        }
        if self.horizon > max_time {
            return Some(format!("horizon {} is out of range", self.horizon));
        }
        if let Some(c) = self.carries.iter().find(|c| c.reading.ts_ms > MAX_TS_MS) {
            return Some(format!(
                "the carry of {} connector {} is after {MAX_TS_MS}",
                c.charger_id, c.connector
            ));
        }
        if let Some((s, n)) = self.senders.iter().find(|(_, n)| **n >= u64::MAX / 2) {
            return Some(format!("sender {s:?}: batch number {n} is out of range"));
        }
        None
    }

    /// Whether the window settings `current` match those this checkpoint
    /// was computed with (module doc, "Settings"). A changed reference
    /// digest is returned as a notice, not an error.
    pub fn check_settings(
        &self,
        dir: &Path,
        current: &Settings,
    ) -> Result<Option<String>, CheckpointError> {
        let Some(was) = &self.settings else {
            return Ok(Some(format!(
                "{}: a version 1 checkpoint records no settings; the next one will",
                Self::path(dir).display()
            )));
        };
        let mut differences = Vec::new();
        let ms = |v: u64| humantime::format_duration(std::time::Duration::from_millis(v));
        for (name, a, b) in [
            ("windows.size", was.window_ms, current.window_ms),
            (
                "windows.allowed_lateness",
                was.allowed_lateness_ms,
                current.allowed_lateness_ms,
            ),
            ("windows.retention", was.retention_ms, current.retention_ms),
            (
                "windows.max_future",
                was.max_future_ms,
                current.max_future_ms,
            ),
        ] {
            if a != b {
                differences.push(format!("{name}: {} → {}", ms(a), ms(b)));
            }
        }
        if was.leap_quorum != current.leap_quorum {
            differences.push(format!(
                "windows.leap_quorum: {} → {}",
                was.leap_quorum, current.leap_quorum
            ));
        }
        if !differences.is_empty() {
            return Err(CheckpointError::Settings {
                path: Self::path(dir),
                differences: differences.join(", "),
            });
        }
        Ok((was.reference_sha256 != current.reference_sha256).then(|| {
            format!(
                "{}: the roads or chargers changed since the checkpoint: windows still in the log are recomputed with the new ones, frozen windows keep their rows",
                Self::path(dir).display()
            )
        }))
    }

    /// Writes it durably (temporary file, fsync, rename, directory fsync).
    pub fn store(&self, dir: &Path) -> Result<(), CheckpointError> {
        self.store_on(&crate::log::disk::Disk::real(), dir)
    }

    /// [`Checkpoint::store`] through `disk` (the log's).
    pub fn store_on(
        &self,
        disk: &crate::log::disk::Disk,
        dir: &Path,
    ) -> Result<(), CheckpointError> {
        let path = Self::path(dir);
        let mut json = serde_json::to_vec_pretty(self).map_err(|e| CheckpointError::Invalid {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        json.push(b'\n');
        disk.write_file(&path, &json)
            .map_err(|source| CheckpointError::Io { path, source })
    }

    /// Where a dataflow resumes from this checkpoint. Carries of chargers no
    /// longer in `reference` are dropped (their rows cannot be written).
    pub fn resume(&self, reference: &Reference) -> Resume {
        let carries = self
            .carries
            .iter()
            .filter_map(|c| {
                Some(ChargerReading {
                    charger: reference.charger(&c.charger_id)?,
                    connector: c.connector,
                    window: 0,
                    reading: c.reading,
                    carry: true,
                })
            })
            .collect();
        Resume {
            first_seq: self.first_seq,
            clock: self.clock.clone(),
            horizon: self.horizon,
            carries,
        }
    }
}

/// Where a dataflow starts: the beginning of the log, or a checkpoint.
#[derive(Clone, Debug, Default)]
pub struct Resume {
    /// Sequence number of the first chunk.
    pub first_seq: u64,
    /// The watermark clock before it.
    pub clock: EventClock,
    /// Records of windows retiring at or before this are ignored.
    pub horizon: u64,
    /// Energy baselines, fed to the dataflow before any record.
    pub carries: Vec<ChargerReading>,
}

/// Follows the log as it is written and knows, at any point, which
/// checkpoint would let the oldest segments go. Fed every entry in log
/// order with its resolved records; it mirrors the watermark clock of the
/// dataflow ([`crate::input::ChunkClock`]: one chunk per entry), so it
/// counts exactly the readings the dataflow counts.
#[derive(Debug)]
pub struct Tracker {
    spec: TimeSpec,
    /// The watermark clock after every entry seen.
    clock: EventClock,
    /// Start of each segment still on disk → the clock before it.
    starts: BTreeMap<u64, EventClock>,
    /// Last counted reading per connector, per window not yet frozen by a
    /// checkpoint.
    open: BTreeMap<u64, FxHashMap<(u32, u32), Reading>>,
    /// Last counted reading per connector among frozen windows.
    carries: FxHashMap<(u32, u32), Reading>,
    /// The checkpoint in force: segments before it are gone.
    first_seq: u64,
    /// Windows retiring at or before this are frozen (the checkpoint's
    /// horizon, or a cluster's agreed one): no checkpoint goes below it.
    frozen: u64,
}

impl Tracker {
    /// A tracker for a log starting at `resume`.
    pub fn new(spec: TimeSpec, resume: &Resume) -> Self {
        let carries = resume
            .carries
            .iter()
            .map(|c| ((c.charger, c.connector), c.reading))
            .collect();
        Tracker {
            spec,
            clock: resume.clock.clone(),
            starts: BTreeMap::new(),
            open: BTreeMap::new(),
            carries,
            first_seq: resume.first_seq,
            frozen: resume.horizon,
        }
    }

    /// Windows retiring at or before `horizon` are frozen: a cluster's
    /// agreed horizon, the largest checkpoint horizon of its processes
    /// ([`crate::runtime::SiteLink`]), which may lie past this log's own.
    pub fn freeze(&mut self, horizon: u64) {
        self.frozen = self.frozen.max(horizon);
    }

    /// Windows retiring at or before this are frozen.
    pub fn frozen(&self) -> u64 {
        self.frozen
    }

    /// A segment starts with entry `seq` (call before [`Tracker::observe`]
    /// of that entry).
    pub fn segment_started(&mut self, seq: u64) {
        self.starts.insert(seq, self.clock.clone());
    }

    /// The current watermark.
    pub fn watermark(&self) -> u64 {
        self.clock.watermark(&self.spec)
    }

    /// The window settings it follows.
    pub fn spec(&self) -> &TimeSpec {
        &self.spec
    }

    /// The watermark clock after every entry seen.
    pub fn clock(&self) -> &EventClock {
        &self.clock
    }

    /// Takes in one entry's records, in log order.
    pub fn observe(&mut self, items: &[Item]) {
        let times = ChunkTimes::new(
            items.iter().map(|i| (i.device(), i.ts())),
            self.clock.max,
            &self.spec,
        );
        self.observe_with(items, &times);
    }

    /// [`Tracker::observe`] with the entry's [`ChunkTimes`] already made
    /// (by the commit thread, which judged the entry with them).
    pub fn observe_with(&mut self, items: &[Item], times: &ChunkTimes) {
        let watermark = self.watermark();
        for item in items {
            if let Item::Reading {
                charger,
                connector,
                reading,
            } = item
            {
                if self.spec.classify(reading.ts_ms, watermark) == Fate::Expired {
                    continue;
                }
                let window = self.spec.window_start(reading.ts_ms);
                let last = self
                    .open
                    .entry(window)
                    .or_default()
                    .entry((*charger, *connector))
                    .or_insert(*reading);
                *last = (*last).max(*reading);
            }
        }
        self.clock.fold(times, &self.spec);
    }

    /// The checkpoint that would delete the most segments now, if it would
    /// delete any, with a horizon at most `limit` (how far the sinks are
    /// durable): the newest segment start `J` (up to the newest segment)
    /// whose records before it all lie in windows retired by the horizon.
    /// `senders` is the sender table as of now. Leaps are aggregated as on
    /// time, so a segment whose clock holds leaps goes only once they
    /// have retired too.
    pub fn proposal(
        &self,
        reference: &Reference,
        senders: &FxHashMap<String, u64>,
        limit: u64,
        settings: &Settings,
    ) -> Option<Checkpoint> {
        // Never below a horizon in force: windows frozen stay frozen.
        let horizon = self.watermark().min(limit).max(self.frozen);
        let retired = |t: &u64| self.spec.retire_at(self.spec.window_start(*t)) <= horizon;
        let (&first_seq, clock) = self
            .starts
            .range(self.first_seq + 1..)
            .rev()
            .find(|(_, c)| c.max.is_none_or(|m| retired(&m)) && c.leaps.values().all(retired))?;
        // Readings of windows retired by the horizon, newest last.
        let mut lasts = self.carries.clone();
        for (_, window) in self
            .open
            .iter()
            .take_while(|(&w, _)| self.spec.retire_at(w) <= horizon)
        {
            for (&conn, &r) in window {
                let carry = lasts.entry(conn).or_insert(r);
                *carry = (*carry).max(r);
            }
        }
        let mut carries: Vec<Carry> = lasts
            .iter()
            .filter_map(|(&(charger, connector), &reading)| {
                Some(Carry {
                    charger_id: reference.chargers.get(charger as usize)?.id.clone(),
                    connector,
                    reading,
                })
            })
            .collect();
        carries.sort_by(|a, b| (&a.charger_id, a.connector).cmp(&(&b.charger_id, b.connector)));
        Some(Checkpoint {
            version: 2,
            first_seq,
            prefix_max_ts: None,
            clock: clock.clone(),
            horizon,
            carries,
            senders: senders.iter().map(|(s, n)| (s.clone(), *n)).collect(),
            settings: Some(settings.clone()),
        })
    }

    /// The checkpoint `cp` is in force: fold the windows it froze into the
    /// carries, forget older segment starts.
    pub fn checkpointed(&mut self, cp: &Checkpoint) {
        while let Some((&window, _)) = self.open.first_key_value() {
            if self.spec.retire_at(window) > cp.horizon {
                break;
            }
            let Some((_, last)) = self.open.pop_first() else {
                break;
            };
            for (conn, r) in last {
                let carry = self.carries.entry(conn).or_insert(r);
                *carry = (*carry).max(r);
            }
        }
        self.first_seq = cp.first_seq;
        self.starts = self.starts.split_off(&cp.first_seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ConnectorStatus;

    fn spec() -> TimeSpec {
        TimeSpec {
            size_ms: 10_000,
            allowed_lateness_ms: 1_000,
            retention_ms: 20_000,
            max_future_ms: crate::time::DEFAULT_MAX_FUTURE_MS,
            leap_quorum: crate::time::DEFAULT_LEAP_QUORUM,
        }
    }

    fn reading(ts_ms: u64, energy_wh: u64) -> Item {
        Item::Reading {
            charger: 0,
            connector: 1,
            reading: Reading {
                ts_ms,
                energy_wh,
                status: ConnectorStatus::Occupied,
                power_mw: 0,
            },
        }
    }

    #[test]
    fn a_checkpoint_out_of_range_is_refused_with_its_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = Checkpoint {
            version: 2,
            first_seq: 3,
            clock: EventClock::at(Some(1_767_258_000_000)),
            horizon: 1_767_258_060_000,
            ..Checkpoint::default()
        };
        good.store(dir.path()).expect("store");
        assert_eq!(
            Checkpoint::load(dir.path()).expect("valid"),
            Some(good.clone())
        );
        let mut bad = good.clone();
        bad.senders.insert("fleet".into(), u64::MAX);
        let mut late = good.clone();
        late.clock.max = Some(u64::MAX);
        for (cp, field) in [(bad, "batch number"), (late, "the clock")] {
            cp.store(dir.path()).expect("store");
            match Checkpoint::load(dir.path()) {
                Err(CheckpointError::Invalid { reason, .. }) => {
                    assert!(reason.contains(field), "{reason}")
                }
                other => panic!("expected an error, got {other:?}"),
            }
        }
        std::fs::write(Checkpoint::path(dir.path()), b"{\"version\": 1,").expect("write");
        assert!(matches!(
            Checkpoint::load(dir.path()),
            Err(CheckpointError::Invalid { .. })
        ));
    }

    #[test]
    fn segments_go_once_every_window_before_them_retired() {
        let reference = Reference::default();
        let mut t = Tracker::new(spec(), &Resume::default());
        t.segment_started(0);
        t.observe(&[reading(1_000, 10), reading(9_000, 12)]);
        t.segment_started(1);
        t.observe(&[reading(15_000, 20)]);
        // Window [0, 10 s) retires at watermark 30 s: not yet.
        t.observe(&[reading(30_000, 30)]);
        assert!(t
            .proposal(
                &reference,
                &FxHashMap::default(),
                u64::MAX,
                &Settings::default()
            )
            .is_none());
        t.segment_started(3);
        t.observe(&[reading(31_000, 31)]);
        let cp = t
            .proposal(
                &reference,
                &FxHashMap::default(),
                u64::MAX,
                &Settings::default(),
            )
            .expect("segment 0 may go");
        assert_eq!(
            (cp.first_seq, cp.clock.max, cp.horizon),
            (1, Some(9_000), 30_000)
        );
        t.checkpointed(&cp);
        // Segment 1 (entries 1 and 2) reaches 30 s, whose window retires
        // at 60 s.
        t.observe(&[reading(59_000, 41)]);
        assert!(t
            .proposal(
                &reference,
                &FxHashMap::default(),
                u64::MAX,
                &Settings::default()
            )
            .is_none());
        t.observe(&[reading(61_000, 42)]);
        let cp = t
            .proposal(
                &reference,
                &FxHashMap::default(),
                u64::MAX,
                &Settings::default(),
            )
            .expect("segment 1 may go");
        assert_eq!((cp.first_seq, cp.clock.max), (3, Some(30_000)));
        let carry = cp.carries.first().map(|c| c.reading.energy_wh);
        assert_eq!(carry, None, "charger 0 is not in an empty reference");
    }

    #[test]
    fn carries_hold_the_last_counted_reading_of_retired_windows() {
        let mut t = Tracker::new(spec(), &Resume::default());
        t.segment_started(0);
        t.observe(&[reading(5_000, 10), reading(2_000, 99)]);
        t.segment_started(1);
        t.observe(&[reading(35_000, 20)]);
        // Expired at arrival (its window retired at 30 s): not counted.
        t.observe(&[reading(8_000, 500)]);
        t.observe(&[reading(36_000, 21)]);
        let reference = Reference::default();
        // The sinks are durable up to 25 s only: nothing retired by then.
        assert!(t
            .proposal(
                &reference,
                &FxHashMap::default(),
                25_000,
                &Settings::default()
            )
            .is_none());
        let cp = t
            .proposal(
                &reference,
                &FxHashMap::default(),
                30_000,
                &Settings::default(),
            )
            .expect("window 0 retired by 30 s");
        assert_eq!((cp.first_seq, cp.horizon), (1, 30_000));
        t.checkpointed(&cp);
        let carry = t.carries.get(&(0, 1)).copied().map(|r| r.energy_wh);
        assert_eq!(carry, Some(10), "last by time, expired ignored");
    }
}
