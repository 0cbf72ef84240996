//! The durable log: accepted ingest batches, segmented, checksummed,
//! append-only. A batch is acknowledged to its sender only once its entry is
//! on disk (group commit: one fsync for every batch waiting). The log is
//! also the recording: replaying it reproduces the node's aggregates.
//!
//! # On-disk format (version 2)
//! A log is a directory of segment files named `{first_seq:020}.seg`, where
//! `first_seq` is the sequence number of the segment's first entry, and a
//! `LOCK` file. A segment is the 8-byte magic `EFLOG\0\0\x02` followed by
//! entries:
//!
//! ```text
//! u32 LE   payload length N (1 ..= MAX_ENTRY_BYTES)
//! u32 LE   CRC-32 (IEEE) of the payload
//! N bytes  payload:
//!            u64 LE  seq          entry sequence number
//!            u64 LE  sender_seq   the sender's batch number (deduplication)
//!            u64 LE  durable      bytes of this segment fsynced when the
//!                                 entry was written
//!            u8      L            sender id length (0 ..= 64)
//!            L bytes sender id    UTF-8
//!            u8      encoding     0 = JSON Lines, 1 = CBOR sequence
//!            rest    records      the accepted records, in that encoding
//! ```
//!
//! Version 1 segments (magic ending in `\x01`, payload without `durable`)
//! are read as they are; a node appends only to version 2 segments (it
//! starts a new one after a version 1 segment).
//!
//! # Invariants
//! - Sequence numbers start at 0 and are contiguous across segments.
//! - Retention deletes whole segments from the oldest on, and only after
//!   `checkpoint.json` in the same directory says the log starts at or
//!   after them ([`crate::checkpoint`]); so the log starts at the oldest
//!   segment's `first_seq`, and any segments before the checkpoint's
//!   `first_seq` are leftovers of a crash that can be deleted.
//! - Entries are only appended; a segment is never written again once a
//!   newer one exists, and a new segment starts only after the previous one
//!   is fsynced.
//! - An entry is acknowledged only after an fsync that covers it.
//! - One writer: [`LogWriter::open`] takes an exclusive lock on `LOCK` for
//!   the writer's life, so a second node on the same directory is refused
//!   ([`LogError::Locked`]).
//! - After a failed write or fsync, [`LogWriter::rollback`] cuts the
//!   segment back to its last fsynced length (nothing after it was
//!   acknowledged) and the writer carries on from there.
//!
//! # Recovery: a torn tail, or damage
//! A crash can only tear what was written after the last fsync, at the end
//! of the newest segment. On open, the newest segment is scanned; at the
//! first entry that is incomplete, too long, fails its checksum or breaks
//! the sequence, the rest of the file is searched for a valid entry whose
//! `durable` field lies beyond that point. Such an entry proves the
//! damaged bytes had been fsynced (and acknowledged) before it was
//! written: that is corruption, and opening fails with
//! [`LogError::Corrupt`] naming the file and offset. Without one, the
//! damage is a torn tail: the file is cut there (those entries were never
//! acknowledged). Damage in an older segment is always corruption. A
//! newest segment shorter than its header, or all zeros (a crash while it
//! was created), gets its header again; a bad header before data is
//! corruption (the header is fsynced before any entry is written).
//!
//! With `[log] on_corruption = "skip"` ([`OnCorruption::Skip`]), damage is
//! skipped instead: reading resumes at the next valid entry of the segment
//! (or the next segment), the entries lost are counted ([`Skipped`]) and
//! read as empty ones, so numbering, the watermark clock and retention stay
//! whole; a newest segment with a damaged header is moved aside
//! (`.damaged`). A torn tail is cut either way.
//!
//! Every write, fsync, rename and removal goes through a [`disk::Disk`]:
//! the operating system's, or a simulated one that can lose power and
//! then discards exactly what no fsync covered (the power-loss test).
//!
//! What recovery cannot tell: damage in the entries of the very last group
//! commit before a crash (nothing written after them carries proof that
//! they were durable) is taken for a torn tail; a version 1 segment has no
//! `durable` fields, so any damage at its end is too.

pub mod disk;
mod format;
mod reader;
#[cfg(test)]
mod tests;
mod writer;

use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use thiserror::Error;

pub use reader::{LogReader, OnCorruption, Skipped};
pub use writer::{LogWriter, Recovery};

/// Segment file magic (version 2), with the format version in the last
/// byte.
pub const MAGIC: &[u8; 8] = b"EFLOG\0\0\x02";
/// The magic of version 1 segments (read only).
pub const MAGIC_V1: &[u8; 8] = b"EFLOG\0\0\x01";
/// Largest entry payload, bytes: bounds what recovery and readers allocate.
pub const MAX_ENTRY_BYTES: usize = 16 << 20;
/// Longest sender id, bytes.
pub const MAX_SENDER_LEN: usize = 64;
/// Default segment size before rolling to a new file (64 MiB).
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;
/// Name of the lock file in a log directory.
pub const LOCK_FILE: &str = "LOCK";
/// Bytes an entry takes besides its sender id and records (header and
/// fixed payload fields): a batch of `n` record bytes needs
/// `n + ENTRY_OVERHEAD + sender id length <= MAX_ENTRY_BYTES + 8`.
pub const ENTRY_OVERHEAD: usize = 8 + FIXED_PAYLOAD;

const HEADER: usize = 8;
const FIXED_PAYLOAD: usize = 8 + 8 + 8 + 1 + 1;
const FIXED_PAYLOAD_V1: usize = 8 + 8 + 1 + 1;

/// Errors of the log.
#[derive(Debug, Error)]
pub enum LogError {
    /// A filesystem operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Damaged bytes that had been acknowledged: not a torn tail.
    #[error("{path}: corrupt at byte {offset}: {reason}")]
    Corrupt {
        /// The segment.
        path: PathBuf,
        /// Where.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// An entry to append breaks a limit.
    #[error("entry rejected: {0}")]
    Invalid(String),
    /// Another process writes this log.
    #[error("{path} is locked by another process: another node uses this log directory (one log, one node)")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
}

impl LogError {
    /// Whether the error is about the disk (full, failing), so that the
    /// same append may succeed later.
    pub fn is_io(&self) -> bool {
        matches!(self, LogError::Io { .. })
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.to_owned(),
        source,
    }
}

/// How an entry's records are encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// JSON Lines.
    JsonLines = 0,
    /// A CBOR sequence.
    Cbor = 1,
    /// A push batch of an edge's partials ([`crate::partial::wire`]):
    /// the entries of a central node's log, never telemetry.
    Partials = 2,
    /// A clock tick of a cluster process ([`crate::runtime::Cluster`]):
    /// 8 bytes, big-endian, the newest trusted event time (ms) another
    /// process of the site reached, which this process's clock takes in
    /// ([`crate::time::ChunkTimes::tick`]). Written by the node, never
    /// sent over the network.
    Clock = 3,
}

impl Encoding {
    /// A clock tick's entry bytes.
    pub fn tick_bytes(event_ms: u64) -> Bytes {
        Bytes::copy_from_slice(&event_ms.to_be_bytes())
    }

    /// The event time of a clock tick's entry bytes (`None`: malformed).
    pub fn tick_time(records: &[u8]) -> Option<u64> {
        Some(u64::from_be_bytes(records.try_into().ok()?))
    }
}

/// One log entry: an accepted ingest batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Position in the log.
    pub seq: u64,
    /// Who sent the batch.
    pub sender: String,
    /// The sender's batch number.
    pub sender_seq: u64,
    /// Encoding of `records`.
    pub encoding: Encoding,
    /// The records.
    pub records: Bytes,
}

fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}.seg")
}

/// The segments of a log directory, oldest first.
pub fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, LogError> {
    let mut out = Vec::new();
    for item in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let item = item.map_err(io_err(dir))?;
        let name = item.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".seg")) else {
            continue;
        };
        if let Ok(first) = stem.parse::<u64>() {
            out.push((first, item.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Deletes every segment of the log in `dir` whose entries all precede
/// `seq`: those followed by a segment starting at or before `seq`.
pub fn delete_before(disk: &disk::Disk, dir: &Path, seq: u64) -> Result<usize, LogError> {
    let segs = segments(dir)?;
    let mut deleted = 0;
    for pair in segs.windows(2) {
        let ((_, path), (next_first, _)) = (&pair[0], &pair[1]);
        if *next_first > seq {
            break;
        }
        disk.remove(path).map_err(io_err(path))?;
        deleted += 1;
    }
    if deleted > 0 {
        disk.sync_dir(dir).map_err(io_err(dir))?;
    }
    Ok(deleted)
}
