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
//! What recovery cannot tell: damage in the entries of the very last group
//! commit before a crash (nothing written after them carries proof that
//! they were durable) is taken for a torn tail; a version 1 segment has no
//! `durable` fields, so any damage at its end is too.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use rustc_hash::FxHashMap;
use thiserror::Error;

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

/// A segment's format version, from its magic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

impl Version {
    fn of(magic: &[u8]) -> Option<Version> {
        if magic == MAGIC {
            Some(Version::V2)
        } else if magic == MAGIC_V1 {
            Some(Version::V1)
        } else {
            None
        }
    }

    fn fixed(self) -> usize {
        match self {
            Version::V1 => FIXED_PAYLOAD_V1,
            Version::V2 => FIXED_PAYLOAD,
        }
    }
}

impl Entry {
    fn encode(&self, durable: u64, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.sender_seq.to_le_bytes());
        out.extend_from_slice(&durable.to_le_bytes());
        out.push(self.sender.len() as u8);
        out.extend_from_slice(self.sender.as_bytes());
        out.push(self.encoding as u8);
        out.extend_from_slice(&self.records);
        let payload = &out[start + 8..];
        let len = payload.len() as u32;
        let crc = crc32fast::hash(payload);
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }

    /// Decodes a checksummed payload; returns the entry and its `durable`
    /// field (0 in version 1).
    fn decode(payload: &[u8], version: Version) -> Result<(Entry, u64), String> {
        let fixed = version.fixed();
        if payload.len() < fixed {
            return Err("payload shorter than its fixed fields".into());
        }
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&payload[i..i + 8]);
            u64::from_le_bytes(b)
        };
        let seq = u64_at(0);
        let sender_seq = u64_at(8);
        let (durable, at) = match version {
            Version::V1 => (0, 16),
            Version::V2 => (u64_at(16), 24),
        };
        let l = payload[at] as usize;
        if l > MAX_SENDER_LEN || payload.len() < fixed + l {
            return Err(format!("sender id length {l} does not fit"));
        }
        let sender = std::str::from_utf8(&payload[at + 1..at + 1 + l])
            .map_err(|_| "sender id is not UTF-8".to_owned())?;
        let encoding = match payload[at + 1 + l] {
            0 => Encoding::JsonLines,
            1 => Encoding::Cbor,
            e => return Err(format!("unknown encoding {e}")),
        };
        let entry = Entry {
            seq,
            sender: sender.to_owned(),
            sender_seq,
            encoding,
            records: Bytes::copy_from_slice(&payload[at + 2 + l..]),
        };
        Ok((entry, durable))
    }
}

/// What reading one entry from a segment gave.
enum Read1 {
    Entry(Entry, u64),
    End,
    Damaged(String),
}

fn read_entry<R: Read>(r: &mut R, version: Version) -> io::Result<Read1> {
    let mut head = [0u8; 8];
    let mut got = 0;
    while got < 8 {
        match r.read(&mut head[got..])? {
            0 if got == 0 => return Ok(Read1::End),
            0 => return Ok(Read1::Damaged("entry header cut short".into())),
            n => got += n,
        }
    }
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if len == 0 || len > MAX_ENTRY_BYTES {
        return Ok(Read1::Damaged(format!(
            "entry length {len} outside 1..={MAX_ENTRY_BYTES}"
        )));
    }
    let mut payload = vec![0u8; len];
    if let Err(e) = r.read_exact(&mut payload) {
        return if e.kind() == io::ErrorKind::UnexpectedEof {
            Ok(Read1::Damaged("entry payload cut short".into()))
        } else {
            Err(e)
        };
    }
    if crc32fast::hash(&payload) != crc {
        return Ok(Read1::Damaged("checksum mismatch".into()));
    }
    Ok(match Entry::decode(&payload, version) {
        Ok((e, _)) => Read1::Entry(e, 8 + len as u64),
        Err(reason) => Read1::Damaged(reason),
    })
}

/// Searches a version 2 segment after damage at `at` for proof that the
/// damaged bytes were durable: a valid entry, numbered after `last_seq`,
/// whose `durable` field lies beyond `at`. Returns its offset.
fn durable_after(path: &Path, at: u64, last_seq: Option<u64>) -> Result<Option<u64>, LogError> {
    let mut f = File::open(path).map_err(io_err(path))?;
    f.seek(SeekFrom::Start(at)).map_err(io_err(path))?;
    let mut rest = Vec::new();
    f.read_to_end(&mut rest).map_err(io_err(path))?;
    let u32_at = |b: &[u8], i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let u64_at = |b: &[u8], i: usize| {
        let mut x = [0u8; 8];
        x.copy_from_slice(&b[i..i + 8]);
        u64::from_le_bytes(x)
    };
    // Entries numbered after the damage; at most one per FIXED_PAYLOAD + 8 bytes.
    let first = last_seq.map_or(0, |s| s + 1);
    let most = first + (rest.len() / (FIXED_PAYLOAD + 8)) as u64 + 1;
    for o in 1..rest.len().saturating_sub(8 + FIXED_PAYLOAD) {
        let len = u32_at(&rest, o) as usize;
        if len < FIXED_PAYLOAD || len > MAX_ENTRY_BYTES || o + 8 + len > rest.len() {
            continue;
        }
        let payload = &rest[o + 8..o + 8 + len];
        let (seq, durable) = (u64_at(payload, 0), u64_at(payload, 16));
        let offset = at + o as u64;
        // Cheap filters first: a plausible number, durable past the damage.
        if seq < first || seq > most || durable <= at || durable > offset {
            continue;
        }
        if crc32fast::hash(payload) == u32_at(&rest, o + 4)
            && Entry::decode(payload, Version::V2).is_ok()
        {
            return Ok(Some(offset));
        }
    }
    Ok(None)
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
pub fn delete_before(dir: &Path, seq: u64) -> Result<usize, LogError> {
    let segs = segments(dir)?;
    let mut deleted = 0;
    for pair in segs.windows(2) {
        let ((_, path), (next_first, _)) = (&pair[0], &pair[1]);
        if *next_first > seq {
            break;
        }
        std::fs::remove_file(path).map_err(io_err(path))?;
        deleted += 1;
    }
    if deleted > 0 {
        sync_dir(dir)?;
    }
    Ok(deleted)
}

/// What opening a log found.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Sequence number of the oldest entry on disk (0 unless old segments
    /// were deleted).
    pub first_seq: u64,
    /// Entries in the log.
    pub entries: u64,
    /// Bytes cut from a torn tail (0 after a clean shutdown).
    pub truncated_bytes: u64,
    /// Where the torn tail was cut, when one was.
    pub truncated_at: Option<(PathBuf, u64)>,
    /// Last batch number per sender, for deduplicating resends.
    pub senders: FxHashMap<String, u64>,
}

/// Appends entries to the newest segment and rolls segments.
pub struct LogWriter {
    dir: PathBuf,
    segment_bytes: u64,
    file: File,
    path: PathBuf,
    len: u64,
    next_seq: u64,
    /// First sequence number of the current segment.
    first_seq: u64,
    /// Bytes of the current segment covered by an fsync.
    durable_len: u64,
    /// Entries before this are covered by an fsync.
    durable_seq: u64,
    buf: Vec<u8>,
    /// Held for the writer's life: one writer per directory.
    _lock: File,
}

/// Whether every byte of the file is zero.
fn all_zeros(path: &Path) -> Result<bool, LogError> {
    let mut f = File::open(path).map_err(io_err(path))?;
    let mut buf = [0u8; 64 << 10];
    loop {
        match f.read(&mut buf).map_err(io_err(path))? {
            0 => return Ok(true),
            n if buf[..n].iter().any(|&b| b != 0) => return Ok(false),
            _ => {}
        }
    }
}

fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Takes the directory's lock, or says who holds it.
fn lock(dir: &Path) -> Result<File, LogError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(LogError::Locked { path }),
        Err(std::fs::TryLockError::Error(source)) => Err(LogError::Io { path, source }),
    }
}

/// Creates a segment file with its header, fsynced with its directory.
fn create_segment(dir: &Path, first_seq: u64) -> Result<(File, PathBuf), LogError> {
    let path = dir.join(segment_name(first_seq));
    let created = (|| {
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let written = file
            .write_all(MAGIC)
            .and_then(|()| file.sync_all())
            .map_err(io_err(&path));
        if let Err(e) = written {
            // Nothing was ever in it: let the next attempt create it anew.
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok(file)
    })()?;
    sync_dir(dir)?;
    Ok((created, path))
}

impl LogWriter {
    /// Opens (creating if needed) the log in `dir`, recovering a torn tail
    /// and refusing damage (module doc, "Recovery"). Reads every entry
    /// once to rebuild the sender table. Fails with [`LogError::Locked`]
    /// while another writer has the directory.
    pub fn open(dir: &Path, segment_bytes: u64) -> Result<(LogWriter, Recovery), LogError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let lock = lock(dir)?;
        let segs = segments(dir)?;
        let mut recovery = Recovery {
            first_seq: segs.first().map_or(0, |s| s.0),
            ..Recovery::default()
        };
        let mut next_seq = recovery.first_seq;
        let mut last_version = Version::V2;
        for (i, (_, path)) in segs.iter().enumerate() {
            let last = i + 1 == segs.len();
            let mut f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(io_err(path))?;
            let size = f.metadata().map_err(io_err(path))?.len();
            let mut r = BufReader::with_capacity(1 << 20, &mut f);
            let mut magic = [0u8; HEADER];
            let version = match r.read_exact(&mut magic) {
                Ok(()) => Version::of(&magic),
                Err(_) => None,
            };
            let mut last_seq = next_seq.checked_sub(1);
            let damage = match version {
                None => Some((0, "bad segment header (magic)".to_owned())),
                Some(version) => {
                    last_version = version;
                    let mut offset = HEADER as u64;
                    loop {
                        match read_entry(&mut r, version).map_err(io_err(path))? {
                            Read1::End => break None,
                            Read1::Damaged(reason) => break Some((offset, reason)),
                            Read1::Entry(e, n) if e.seq == next_seq => {
                                recovery.senders.insert(e.sender, e.sender_seq);
                                recovery.entries += 1;
                                last_seq = Some(e.seq);
                                next_seq += 1;
                                offset += n;
                            }
                            Read1::Entry(e, _) => {
                                break Some((
                                    offset,
                                    format!("entry {} where {next_seq} was expected", e.seq),
                                ))
                            }
                        }
                    }
                }
            };
            drop(r);
            if let Some((at, reason)) = damage {
                if !last {
                    return Err(LogError::Corrupt {
                        path: path.clone(),
                        offset: at,
                        reason,
                    });
                }
                // A torn tail: cut it (with a missing header, rewrite it).
                // A bad header before data is not a torn write (the header
                // is synced before any entry is written): refuse, unless
                // the file is all zeros (a crash while it was created).
                if at == 0 && size > HEADER as u64 && !all_zeros(path)? {
                    return Err(LogError::Corrupt {
                        path: path.clone(),
                        offset: 0,
                        reason,
                    });
                }
                if at > 0 && version == Some(Version::V2) {
                    if let Some(proof) = durable_after(path, at, last_seq)? {
                        return Err(LogError::Corrupt {
                            path: path.clone(),
                            offset: at,
                            reason: format!(
                                "{reason}, and the entry at byte {proof} was written after these bytes were durable: acknowledged data is damaged (restore the segment from a copy, or move the log aside)"
                            ),
                        });
                    }
                }
                recovery.truncated_bytes = size - at;
                recovery.truncated_at = Some((path.clone(), at));
                if at == 0 {
                    f.set_len(0).map_err(io_err(path))?;
                    f.seek(SeekFrom::Start(0)).map_err(io_err(path))?;
                    f.write_all(MAGIC).map_err(io_err(path))?;
                    last_version = Version::V2;
                } else {
                    f.set_len(at).map_err(io_err(path))?;
                }
                f.sync_all().map_err(io_err(path))?;
            }
        }
        let (file, path, first_seq) = match segs.last() {
            // Appends go to a version 2 segment only.
            Some((first_seq, path)) if last_version == Version::V2 => {
                let file = OpenOptions::new()
                    .append(true)
                    .open(path)
                    .map_err(io_err(path))?;
                (file, path.clone(), *first_seq)
            }
            Some((first_seq, path)) if *first_seq == next_seq => {
                // An empty version 1 segment: give it a version 2 header.
                std::fs::write(path, MAGIC).map_err(io_err(path))?;
                let file = OpenOptions::new()
                    .append(true)
                    .open(path)
                    .map_err(io_err(path))?;
                file.sync_all().map_err(io_err(path))?;
                (file, path.clone(), *first_seq)
            }
            _ => {
                let (file, path) = create_segment(dir, next_seq)?;
                (file, path, next_seq)
            }
        };
        let mut file = file;
        let len = file.seek(SeekFrom::End(0)).map_err(io_err(&path))?;
        let writer = LogWriter {
            dir: dir.to_owned(),
            segment_bytes,
            file,
            path,
            len,
            next_seq,
            first_seq,
            durable_len: len,
            durable_seq: next_seq,
            buf: Vec::new(),
            _lock: lock,
        };
        Ok((writer, recovery))
    }

    /// Sequence number the next entry gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Entries before this are durable (covered by an fsync).
    pub fn durable_seq(&self) -> u64 {
        self.durable_seq
    }

    /// First sequence number of the segment being written.
    pub fn segment_first_seq(&self) -> u64 {
        self.first_seq
    }

    /// Deletes every segment whose entries all precede `seq` (never the
    /// segment being written), then syncs the directory. Returns how many
    /// segments went. Call only once a checkpoint at `seq` is durable.
    pub fn delete_before(&mut self, seq: u64) -> Result<usize, LogError> {
        delete_before(&self.dir, seq.min(self.first_seq))
    }

    /// Appends one batch (not yet durable: call [`LogWriter::sync`]).
    /// Returns its sequence number. After an error, call
    /// [`LogWriter::rollback`] before appending again.
    pub fn append(
        &mut self,
        sender: &str,
        sender_seq: u64,
        encoding: Encoding,
        records: Bytes,
    ) -> Result<u64, LogError> {
        if sender.len() > MAX_SENDER_LEN {
            return Err(LogError::Invalid(format!(
                "sender id longer than {MAX_SENDER_LEN} bytes"
            )));
        }
        if records.len() + FIXED_PAYLOAD + sender.len() > MAX_ENTRY_BYTES {
            return Err(LogError::Invalid(format!(
                "batch larger than {} bytes",
                MAX_ENTRY_BYTES - FIXED_PAYLOAD - sender.len()
            )));
        }
        if self.len >= self.segment_bytes {
            self.sync()?;
            let (file, path) = create_segment(&self.dir, self.next_seq)?;
            self.file = file;
            self.path = path;
            self.len = HEADER as u64;
            self.durable_len = self.len;
            self.first_seq = self.next_seq;
        }
        let entry = Entry {
            seq: self.next_seq,
            sender: sender.to_owned(),
            sender_seq,
            encoding,
            records,
        };
        self.buf.clear();
        entry.encode(self.durable_len, &mut self.buf);
        self.file.write_all(&self.buf).map_err(io_err(&self.path))?;
        self.len += self.buf.len() as u64;
        self.next_seq += 1;
        Ok(entry.seq)
    }

    /// Makes every appended entry durable (one `fdatasync`).
    pub fn sync(&mut self) -> Result<(), LogError> {
        self.file.sync_data().map_err(io_err(&self.path))?;
        self.durable_len = self.len;
        self.durable_seq = self.next_seq;
        Ok(())
    }

    /// After a failed append or sync: cuts the segment back to its last
    /// fsynced length and forgets the entries after it (none was
    /// acknowledged), reopening the file so that no failed write lingers
    /// in its pages. On success the writer can append again; on failure,
    /// call it again later.
    pub fn rollback(&mut self) -> Result<(), LogError> {
        let path = self.path.clone();
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        file.set_len(self.durable_len).map_err(io_err(&path))?;
        file.sync_all().map_err(io_err(&path))?;
        self.file = file;
        self.len = self.durable_len;
        self.next_seq = self.durable_seq;
        Ok(())
    }
}

/// Reads every entry of a log directory in order.
pub struct LogReader {
    segments: std::vec::IntoIter<(u64, PathBuf)>,
    current: Option<(PathBuf, BufReader<File>, u64, Version)>,
    next_seq: Option<u64>,
    torn: Option<(PathBuf, u64)>,
}

impl LogReader {
    /// Opens a log directory for reading. Damage anywhere is reported by the
    /// iterator as [`LogError::Corrupt`], except a torn tail of the newest
    /// segment, which ends the log ([`LogReader::torn_tail`] says where).
    pub fn open(dir: &Path) -> Result<LogReader, LogError> {
        Ok(LogReader {
            segments: segments(dir)?.into_iter(),
            current: None,
            next_seq: None,
            torn: None,
        })
    }

    /// Where the log ended in a torn tail (the newest segment and the
    /// offset of its first incomplete entry), once the iterator has ended
    /// there.
    pub fn torn_tail(&self) -> Option<&(PathBuf, u64)> {
        self.torn.as_ref()
    }
}

impl Iterator for LogReader {
    type Item = Result<Entry, LogError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.current.is_none() {
                let (_, path) = self.segments.next()?;
                let mut r = match File::open(&path) {
                    Ok(f) => BufReader::with_capacity(1 << 20, f),
                    Err(e) => return Some(Err(LogError::Io { path, source: e })),
                };
                let mut magic = [0u8; 8];
                let version = match r.read_exact(&mut magic) {
                    Ok(()) => Version::of(&magic),
                    Err(_) => None,
                };
                let Some(version) = version else {
                    return Some(Err(LogError::Corrupt {
                        path,
                        offset: 0,
                        reason: "bad segment header".into(),
                    }));
                };
                self.current = Some((path, r, HEADER as u64, version));
            }
            let last = self.segments.len() == 0;
            let (path, r, offset, version) = self.current.as_mut()?;
            match read_entry(r, *version) {
                Err(e) => {
                    return Some(Err(LogError::Io {
                        path: path.clone(),
                        source: e,
                    }))
                }
                Ok(Read1::End) => self.current = None,
                Ok(Read1::Damaged(reason)) if last => {
                    let proof = match *version {
                        Version::V2 => {
                            match durable_after(path, *offset, self.next_seq.map(|s| s - 1)) {
                                Ok(p) => p,
                                Err(e) => return Some(Err(e)),
                            }
                        }
                        Version::V1 => None,
                    };
                    let (path, at) = (path.clone(), *offset);
                    self.current = None;
                    return match proof {
                        Some(proof) => Some(Err(LogError::Corrupt {
                            path,
                            offset: at,
                            reason: format!("{reason}, and the entry at byte {proof} was written after these bytes were durable"),
                        })),
                        None => {
                            self.torn = Some((path, at));
                            None
                        }
                    };
                }
                Ok(Read1::Damaged(reason)) => {
                    return Some(Err(LogError::Corrupt {
                        path: path.clone(),
                        offset: *offset,
                        reason,
                    }));
                }
                Ok(Read1::Entry(e, n)) => {
                    if self.next_seq.is_some_and(|s| s != e.seq) {
                        let reason = format!("entry {} out of sequence", e.seq);
                        return Some(Err(LogError::Corrupt {
                            path: path.clone(),
                            offset: *offset,
                            reason,
                        }));
                    }
                    *offset += n;
                    self.next_seq = Some(e.seq + 1);
                    return Some(Ok(e));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append_n(w: &mut LogWriter, n: u64) {
        for i in 0..n {
            let records = Bytes::from(format!("{{\"n\":{i}}}\n"));
            w.append("fleet-a", i, Encoding::JsonLines, records)
                .expect("append");
        }
        w.sync().expect("sync");
    }

    fn read_all(dir: &Path) -> Vec<Entry> {
        LogReader::open(dir)
            .expect("open")
            .collect::<Result<_, _>>()
            .expect("clean log")
    }

    #[test]
    fn entries_round_trip_across_segments_and_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut w, rec) = LogWriter::open(dir.path(), 200).expect("open");
        assert_eq!(rec.entries, 0);
        append_n(&mut w, 20);
        drop(w);
        assert!(
            segments(dir.path()).expect("list").len() > 3,
            "small segments roll"
        );
        let (mut w, rec) = LogWriter::open(dir.path(), 200).expect("reopen");
        assert_eq!((rec.entries, rec.truncated_bytes), (20, 0));
        assert_eq!(rec.senders.get("fleet-a"), Some(&19));
        assert_eq!(w.next_seq(), 20);
        append_n(&mut w, 1);
        let all = read_all(dir.path());
        assert_eq!(all.len(), 21);
        assert!(all.iter().enumerate().all(|(i, e)| e.seq == i as u64));
        assert_eq!(all[3].records, Bytes::from("{\"n\":3}\n"));
    }

    #[test]
    fn deleting_old_segments_keeps_the_rest_readable_and_writable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut w, _) = LogWriter::open(dir.path(), 100).expect("open");
        append_n(&mut w, 12);
        let starts: Vec<u64> = segments(dir.path())
            .expect("list")
            .iter()
            .map(|s| s.0)
            .collect();
        let cut = starts[2];
        assert!(w.delete_before(cut + 1).expect("delete") >= 2);
        assert_eq!(
            segments(dir.path()).expect("list")[0].0,
            cut,
            "whole segments only"
        );
        drop(w);
        let (mut w, rec) = LogWriter::open(dir.path(), 100).expect("reopen");
        assert_eq!((rec.first_seq, w.next_seq()), (cut, 12));
        append_n(&mut w, 1);
        let all = read_all(dir.path());
        assert_eq!(all.first().map(|e| e.seq), Some(cut));
        assert_eq!(all.last().map(|e| e.seq), Some(12));
        // The segment being written is never deleted.
        let last = w.segment_first_seq();
        w.delete_before(u64::MAX).expect("delete");
        assert_eq!(segments(dir.path()).expect("list")[0].0, last);
    }

    #[test]
    fn torn_tail_is_truncated_on_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut w, _) = LogWriter::open(dir.path(), DEFAULT_SEGMENT_BYTES).expect("open");
        append_n(&mut w, 5);
        drop(w);
        let (_, path) = segments(dir.path())
            .expect("list")
            .pop()
            .expect("a segment");
        let full = std::fs::metadata(&path).expect("meta").len();
        // A crash mid-append: half of a sixth entry.
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(&[40, 0, 0, 0, 1, 2, 3, 4, b'x', b'y'])
            .expect("write");
        drop(f);
        assert_eq!(read_all(dir.path()).len(), 5, "readers stop at a torn tail");
        let (w, rec) = LogWriter::open(dir.path(), DEFAULT_SEGMENT_BYTES).expect("recover");
        assert_eq!((rec.entries, rec.truncated_bytes), (5, 10));
        assert_eq!(w.next_seq(), 5);
        assert_eq!(std::fs::metadata(&path).expect("meta").len(), full);
    }

    #[test]
    fn a_newest_segment_cut_inside_its_header_is_repaired_a_damaged_one_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut w, _) = LogWriter::open(dir.path(), 100).expect("open");
        append_n(&mut w, 10);
        drop(w);
        let (first, newest) = segments(dir.path()).expect("list").pop().expect("segment");
        // A crash while the newest segment was created: 3 bytes, or zeros.
        for damage in [&MAGIC[..3], &[0u8; 8][..], &[0u8; 20][..]] {
            std::fs::write(&newest, damage).expect("write");
            let (mut w, rec) = LogWriter::open(dir.path(), 100).expect("repaired");
            assert_eq!(
                (w.next_seq(), rec.truncated_bytes),
                (first, damage.len() as u64)
            );
            append_n(&mut w, 1);
            drop(w);
            let all = read_all(dir.path());
            assert_eq!(all.len(), first as usize + 1, "readable after the repair");
            std::fs::write(&newest, MAGIC).expect("reset");
        }
        // A bad header before entries is damage, not a torn write.
        let (mut w, _) = LogWriter::open(dir.path(), 1 << 20).expect("open");
        append_n(&mut w, 2);
        drop(w);
        let mut bytes = std::fs::read(&newest).expect("read");
        bytes[0] ^= 0x01;
        std::fs::write(&newest, bytes).expect("write");
        match LogWriter::open(dir.path(), 1 << 20) {
            Err(LogError::Corrupt { reason, .. }) => assert!(reason.contains("magic"), "{reason}"),
            other => panic!("expected corruption, got {:?}", other.map(|(_, r)| r)),
        }
    }

    #[test]
    fn flipped_bit_in_an_older_segment_is_corruption_not_a_torn_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut w, _) = LogWriter::open(dir.path(), 100).expect("open");
        append_n(&mut w, 10);
        drop(w);
        let (_, first) = segments(dir.path()).expect("list").remove(0);
        let mut bytes = std::fs::read(&first).expect("read");
        let at = bytes.len() - 3;
        bytes[at] ^= 0x40;
        std::fs::write(&first, bytes).expect("write");
        match LogWriter::open(dir.path(), 100) {
            Err(LogError::Corrupt { reason, .. }) => {
                assert!(reason.contains("checksum"), "{reason}")
            }
            other => panic!("expected corruption, got {:?}", other.map(|(_, r)| r)),
        }
        let results: Vec<_> = LogReader::open(dir.path()).expect("open").collect();
        assert!(results
            .iter()
            .any(|r| matches!(r, Err(LogError::Corrupt { .. }))));
    }

    #[test]
    fn limits_are_enforced_before_writing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut w, _) = LogWriter::open(dir.path(), DEFAULT_SEGMENT_BYTES).expect("open");
        let long = "s".repeat(MAX_SENDER_LEN + 1);
        assert!(matches!(
            w.append(&long, 0, Encoding::Cbor, Bytes::new()),
            Err(LogError::Invalid(_))
        ));
        let huge = Bytes::from(vec![b'x'; MAX_ENTRY_BYTES]);
        assert!(matches!(
            w.append("s", 0, Encoding::Cbor, huge),
            Err(LogError::Invalid(_))
        ));
        assert_eq!(w.next_seq(), 0);
    }

    /// Offsets of every entry of a segment.
    fn entry_offsets(path: &Path) -> Vec<u64> {
        let bytes = std::fs::read(path).expect("read");
        let mut at = HEADER;
        let mut out = Vec::new();
        while at + 8 <= bytes.len() {
            out.push(at as u64);
            let len = u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
            at += 8 + len as usize;
        }
        out
    }

    #[test]
    fn damage_inside_the_newest_segment_with_durable_entries_after_it_is_corruption() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut w, _) = LogWriter::open(dir.path(), DEFAULT_SEGMENT_BYTES).expect("open");
        // Four group commits of 5 entries each.
        for g in 0..4 {
            for i in 0..5 {
                let n = g * 5 + i;
                w.append(
                    "fleet-a",
                    n,
                    Encoding::JsonLines,
                    Bytes::from(format!("{{\"n\":{n}}}\n")),
                )
                .expect("append");
            }
            w.sync().expect("sync");
        }
        drop(w);
        let (_, path) = segments(dir.path()).expect("list").pop().expect("segment");
        let offsets = entry_offsets(&path);
        let size = std::fs::metadata(&path).expect("meta").len();
        // One flipped bit in entry 7 (second group): entries 10.. prove it durable.
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[offsets[7] as usize + 20] ^= 0x04;
        std::fs::write(&path, &bytes).expect("write");
        match LogWriter::open(dir.path(), DEFAULT_SEGMENT_BYTES) {
            Err(LogError::Corrupt { offset, reason, .. }) => {
                assert_eq!(offset, offsets[7]);
                assert!(reason.contains("durable"), "{reason}");
            }
            other => panic!("expected corruption, got {:?}", other.map(|(_, r)| r)),
        }
        assert_eq!(
            std::fs::metadata(&path).expect("meta").len(),
            size,
            "nothing cut"
        );
        let read: Vec<_> = LogReader::open(dir.path()).expect("open").collect();
        assert!(
            matches!(read.last(), Some(Err(LogError::Corrupt { .. }))),
            "readers report it too"
        );
        // Damage to the length field: found by the search for a later entry.
        bytes[offsets[7] as usize + 20] ^= 0x04;
        bytes[offsets[7] as usize + 2] ^= 0x10;
        std::fs::write(&path, &bytes).expect("write");
        assert!(matches!(
            LogWriter::open(dir.path(), DEFAULT_SEGMENT_BYTES),
            Err(LogError::Corrupt { .. })
        ));
    }

    #[test]
    fn damage_in_the_last_unsynced_group_is_a_torn_tail_even_with_whole_entries_after_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut w, _) = LogWriter::open(dir.path(), DEFAULT_SEGMENT_BYTES).expect("open");
        append_n(&mut w, 3);
        // A group written but never fsynced: after a power loss its pages
        // may come back in any state, a later one whole, an earlier one not.
        for n in 3..6 {
            w.append("fleet-a", n, Encoding::JsonLines, Bytes::from("{}\n"))
                .expect("append");
        }
        drop(w);
        let (_, path) = segments(dir.path()).expect("list").pop().expect("segment");
        let offsets = entry_offsets(&path);
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[offsets[4] as usize + 9] ^= 0xff;
        std::fs::write(&path, &bytes).expect("write");
        let (w, rec) = LogWriter::open(dir.path(), DEFAULT_SEGMENT_BYTES).expect("a torn tail");
        assert_eq!(
            (w.next_seq(), rec.truncated_at.map(|t| t.1)),
            (4, Some(offsets[4]))
        );
    }

    #[test]
    fn a_second_writer_on_the_same_directory_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut w, _) = LogWriter::open(dir.path(), DEFAULT_SEGMENT_BYTES).expect("open");
        match LogWriter::open(dir.path(), DEFAULT_SEGMENT_BYTES) {
            Err(LogError::Locked { path }) => assert!(path.ends_with(LOCK_FILE)),
            other => panic!("expected the lock, got {:?}", other.map(|(_, r)| r)),
        }
        append_n(&mut w, 2);
        drop(w);
        let (_, rec) = LogWriter::open(dir.path(), DEFAULT_SEGMENT_BYTES).expect("free again");
        assert_eq!(rec.entries, 2);
    }

    #[test]
    fn a_failed_write_rolls_back_to_the_last_fsync() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut w, _) = LogWriter::open(dir.path(), DEFAULT_SEGMENT_BYTES).expect("open");
        append_n(&mut w, 3);
        let (_, path) = segments(dir.path()).expect("list").pop().expect("segment");
        let durable = std::fs::metadata(&path).expect("meta").len();
        w.append("fleet-a", 3, Encoding::JsonLines, Bytes::from("{}\n"))
            .expect("append");
        // As if its fsync had failed: back to the last durable state.
        w.rollback().expect("rollback");
        assert_eq!(w.next_seq(), 3);
        assert_eq!(std::fs::metadata(&path).expect("meta").len(), durable);
        append_n(&mut w, 1);
        assert_eq!(read_all(dir.path()).len(), 4);
    }

    #[test]
    fn a_version_1_log_is_read_and_continued_in_a_version_2_segment() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Two version 1 entries, written by hand.
        let mut seg = MAGIC_V1.to_vec();
        for n in 0..2u64 {
            let mut payload = n.to_le_bytes().to_vec();
            payload.extend_from_slice(&n.to_le_bytes());
            payload.push(7);
            payload.extend_from_slice(b"fleet-a");
            payload.push(0);
            payload.extend_from_slice(b"{}\n");
            seg.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            seg.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
            seg.extend_from_slice(&payload);
        }
        std::fs::write(dir.path().join(segment_name(0)), &seg).expect("write");
        let (mut w, rec) = LogWriter::open(dir.path(), DEFAULT_SEGMENT_BYTES).expect("open");
        assert_eq!((rec.entries, rec.senders.get("fleet-a")), (2, Some(&1)));
        w.append("fleet-a", 2, Encoding::JsonLines, Bytes::from("{}\n"))
            .expect("append");
        w.sync().expect("sync");
        assert_eq!(w.segment_first_seq(), 2, "a new segment");
        let all = read_all(dir.path());
        assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(all[1].sender, "fleet-a");
    }
}
