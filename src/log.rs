//! The durable log: accepted ingest batches, segmented, checksummed,
//! append-only. A batch is acknowledged to its sender only once its entry is
//! on disk (group commit: one fsync for every batch waiting). The log is
//! also the recording: replaying it reproduces the node's aggregates.
//!
//! # On-disk format (version 1)
//! A log is a directory of segment files named `{first_seq:020}.seg`, where
//! `first_seq` is the sequence number of the segment's first entry. A
//! segment is the 8-byte magic `EFLOG\0\0\x01` followed by entries:
//!
//! ```text
//! u32 LE   payload length N (1 ..= MAX_ENTRY_BYTES)
//! u32 LE   CRC-32 (IEEE) of the payload
//! N bytes  payload:
//!            u64 LE  seq          entry sequence number
//!            u64 LE  sender_seq   the sender's batch number (deduplication)
//!            u8      L            sender id length (0 ..= 64)
//!            L bytes sender id    UTF-8
//!            u8      encoding     0 = JSON Lines, 1 = CBOR sequence
//!            rest    records      the accepted records, in that encoding
//! ```
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
//!
//! # Recovery
//! Only the newest segment can end in a torn write (a crash mid-append). On
//! open, it is scanned; at the first entry that is incomplete, too long,
//! fails its checksum or breaks the sequence, the file is truncated there:
//! those entries were never acknowledged. The same damage in an older
//! segment is not a torn tail but corruption, and opening fails with
//! [`LogError::Corrupt`] naming the file and offset. A newest segment
//! shorter than its header, or all zeros (a crash while it was created),
//! gets its header again; a bad header before data is corruption (the
//! header is fsynced before any entry is written).

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use rustc_hash::FxHashMap;
use thiserror::Error;

/// Segment file magic, with the format version in the last byte.
pub const MAGIC: &[u8; 8] = b"EFLOG\0\0\x01";
/// Largest entry payload, bytes: bounds what recovery and readers allocate.
pub const MAX_ENTRY_BYTES: usize = 16 << 20;
/// Longest sender id, bytes.
pub const MAX_SENDER_LEN: usize = 64;
/// Default segment size before rolling to a new file (64 MiB).
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;

const HEADER: usize = 8;
const FIXED_PAYLOAD: usize = 8 + 8 + 1 + 1;

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
    /// An older segment is damaged: not a torn tail.
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

impl Entry {
    fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.sender_seq.to_le_bytes());
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

    /// Decodes a checksummed payload.
    fn decode(payload: &[u8]) -> Result<Entry, String> {
        if payload.len() < FIXED_PAYLOAD {
            return Err("payload shorter than its fixed fields".into());
        }
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&payload[i..i + 8]);
            u64::from_le_bytes(b)
        };
        let seq = u64_at(0);
        let sender_seq = u64_at(8);
        let l = payload[16] as usize;
        if l > MAX_SENDER_LEN || payload.len() < FIXED_PAYLOAD + l {
            return Err(format!("sender id length {l} does not fit"));
        }
        let sender = std::str::from_utf8(&payload[17..17 + l])
            .map_err(|_| "sender id is not UTF-8".to_owned())?;
        let encoding = match payload[17 + l] {
            0 => Encoding::JsonLines,
            1 => Encoding::Cbor,
            e => return Err(format!("unknown encoding {e}")),
        };
        Ok(Entry {
            seq,
            sender: sender.to_owned(),
            sender_seq,
            encoding,
            records: Bytes::copy_from_slice(&payload[18 + l..]),
        })
    }
}

/// What reading one entry from a segment gave.
enum Read1 {
    Entry(Entry, u64),
    End,
    Damaged(String),
}

fn read_entry<R: Read>(r: &mut R) -> io::Result<Read1> {
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
    Ok(match Entry::decode(&payload) {
        Ok(e) => Read1::Entry(e, 8 + len as u64),
        Err(reason) => Read1::Damaged(reason),
    })
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
    buf: Vec<u8>,
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

impl LogWriter {
    /// Opens (creating if needed) the log in `dir`, recovering a torn tail.
    /// Reads every entry once to rebuild the sender table.
    pub fn open(dir: &Path, segment_bytes: u64) -> Result<(LogWriter, Recovery), LogError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let segs = segments(dir)?;
        let mut recovery = Recovery::default();
        // Older segments may have been deleted (retention): the log starts
        // at its oldest segment; the checkpoint says where it must start.
        let mut next_seq = segs.first().map_or(0, |(first, _)| *first);
        recovery.first_seq = next_seq;
        for (i, (first, path)) in segs.iter().enumerate() {
            let last = i + 1 == segs.len();
            if *first != next_seq {
                return Err(LogError::Corrupt {
                    path: path.clone(),
                    offset: 0,
                    reason: format!("segment starts at entry {first}, expected {next_seq}"),
                });
            }
            let mut f = OpenOptions::new()
                .read(true)
                .write(last)
                .open(path)
                .map_err(io_err(path))?;
            let size = f.metadata().map_err(io_err(path))?.len();
            let mut r = BufReader::new(&mut f);
            let mut magic = [0u8; 8];
            let mut offset = HEADER as u64;
            let damage = match r.read_exact(&mut magic) {
                Ok(()) if &magic == MAGIC => None,
                Ok(()) => Some((0, "not an edgeflow log segment (bad magic)".to_owned())),
                Err(_) => Some((0, "shorter than the segment header".to_owned())),
            };
            let damage = match damage {
                Some(d) => Some(d),
                None => loop {
                    match read_entry(&mut r).map_err(io_err(path))? {
                        Read1::End => break None,
                        Read1::Damaged(reason) => break Some((offset, reason)),
                        Read1::Entry(e, n) if e.seq == next_seq => {
                            recovery.entries += 1;
                            recovery.senders.insert(e.sender, e.sender_seq);
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
                },
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
                recovery.truncated_bytes = size - at;
                if at == 0 {
                    f.set_len(0).map_err(io_err(path))?;
                    f.seek(SeekFrom::Start(0)).map_err(io_err(path))?;
                    f.write_all(MAGIC).map_err(io_err(path))?;
                } else {
                    f.set_len(at).map_err(io_err(path))?;
                }
                f.sync_all().map_err(io_err(path))?;
            }
        }
        let writer = match segs.last() {
            Some((first_seq, path)) => {
                let mut file = OpenOptions::new()
                    .append(true)
                    .open(path)
                    .map_err(io_err(path))?;
                let len = file.seek(SeekFrom::End(0)).map_err(io_err(path))?;
                LogWriter {
                    dir: dir.to_owned(),
                    segment_bytes,
                    file,
                    path: path.clone(),
                    len,
                    next_seq,
                    first_seq: *first_seq,
                    buf: Vec::new(),
                }
            }
            None => Self::create_segment(dir, segment_bytes, next_seq)?,
        };
        Ok((writer, recovery))
    }

    fn create_segment(
        dir: &Path,
        segment_bytes: u64,
        first_seq: u64,
    ) -> Result<LogWriter, LogError> {
        let path = dir.join(segment_name(first_seq));
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        file.write_all(MAGIC).map_err(io_err(&path))?;
        file.sync_all().map_err(io_err(&path))?;
        sync_dir(dir)?;
        Ok(LogWriter {
            dir: dir.to_owned(),
            segment_bytes,
            file,
            path,
            len: HEADER as u64,
            next_seq: first_seq,
            first_seq,
            buf: Vec::new(),
        })
    }

    /// Sequence number the next entry gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
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
    /// Returns its sequence number.
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
                "batch larger than {MAX_ENTRY_BYTES} bytes"
            )));
        }
        if self.len >= self.segment_bytes {
            self.sync()?;
            let next = Self::create_segment(&self.dir, self.segment_bytes, self.next_seq)?;
            *self = next;
        }
        let entry = Entry {
            seq: self.next_seq,
            sender: sender.to_owned(),
            sender_seq,
            encoding,
            records,
        };
        self.buf.clear();
        entry.encode(&mut self.buf);
        self.file.write_all(&self.buf).map_err(io_err(&self.path))?;
        self.len += self.buf.len() as u64;
        self.next_seq += 1;
        Ok(entry.seq)
    }

    /// Makes every appended entry durable (one `fdatasync`).
    pub fn sync(&mut self) -> Result<(), LogError> {
        self.file.sync_data().map_err(io_err(&self.path))
    }
}

/// Reads every entry of a log directory in order.
pub struct LogReader {
    segments: std::vec::IntoIter<(u64, PathBuf)>,
    current: Option<(PathBuf, BufReader<File>, u64)>,
    next_seq: Option<u64>,
}

impl LogReader {
    /// Opens a log directory for reading. Damage anywhere is reported by the
    /// iterator as [`LogError::Corrupt`], except a torn tail of the newest
    /// segment, which ends the log.
    pub fn open(dir: &Path) -> Result<LogReader, LogError> {
        Ok(LogReader {
            segments: segments(dir)?.into_iter(),
            current: None,
            next_seq: None,
        })
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
                if r.read_exact(&mut magic).is_err() || &magic != MAGIC {
                    return Some(Err(LogError::Corrupt {
                        path,
                        offset: 0,
                        reason: "bad segment header".into(),
                    }));
                }
                self.current = Some((path, r, HEADER as u64));
            }
            let last = self.segments.len() == 0;
            let (path, r, offset) = self.current.as_mut()?;
            match read_entry(r) {
                Err(e) => {
                    return Some(Err(LogError::Io {
                        path: path.clone(),
                        source: e,
                    }))
                }
                Ok(Read1::End) => self.current = None,
                Ok(Read1::Damaged(_)) if last => return None,
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
}
