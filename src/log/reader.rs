//! Reading a log directory from its oldest segment on: the one place that
//! tells entries, a torn tail and damage apart (the writer's recovery reads
//! through it too).

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::format::{durable_after, find_entry, read_entry, Read1, Version};
use super::{io_err, segments, Entry, LogError, HEADER};

/// What to do with damage that is not a torn tail (`[log] on_corruption`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnCorruption {
    /// Stop: the node does not start, naming the file and offset.
    #[default]
    Stop,
    /// Skip the damaged bytes to the next valid entry, count what was lost
    /// and go on; the entries lost are replayed as empty ones, so that
    /// numbering (and everything that follows it) stays whole.
    Skip,
}

/// Damage skipped under [`OnCorruption::Skip`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// The segment.
    pub path: PathBuf,
    /// Where the damage starts.
    pub offset: u64,
    /// Bytes skipped.
    pub bytes: u64,
    /// Entries lost.
    pub entries: u64,
    /// What was wrong.
    pub reason: String,
}

struct Segment {
    path: PathBuf,
    reader: BufReader<File>,
    offset: u64,
    version: Version,
    size: u64,
    last: bool,
}

/// Reads every entry of a log directory in order.
pub struct LogReader {
    segments: std::vec::IntoIter<(u64, PathBuf)>,
    current: Option<Segment>,
    next_seq: Option<u64>,
    policy: OnCorruption,
    /// Entries lost to skipped damage, still to be yielded as empty ones.
    placeholders: std::ops::Range<u64>,
    /// The entry found after skipped damage, yielded after them.
    pending: Option<Entry>,
    torn: Option<(PathBuf, u64)>,
    skipped: Vec<Skipped>,
}

impl Entry {
    /// An empty entry standing for one lost to damage.
    fn placeholder(seq: u64) -> Entry {
        Entry {
            seq,
            sender: String::new(),
            sender_seq: 0,
            encoding: super::Encoding::JsonLines,
            records: bytes::Bytes::new(),
        }
    }

    /// Whether it stands for an entry lost to damage.
    pub fn is_placeholder(&self) -> bool {
        self.sender.is_empty() && self.records.is_empty()
    }
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

impl LogReader {
    /// Opens a log directory for reading. Damage anywhere is reported by the
    /// iterator as [`LogError::Corrupt`], except a torn tail of the newest
    /// segment, which ends the log ([`LogReader::torn_tail`] says where).
    pub fn open(dir: &Path) -> Result<LogReader, LogError> {
        Self::open_with(dir, OnCorruption::Stop)
    }

    /// [`LogReader::open`], with damage handled by `policy`.
    pub fn open_with(dir: &Path, policy: OnCorruption) -> Result<LogReader, LogError> {
        let segments = segments(dir)?;
        Ok(LogReader {
            next_seq: segments.first().map(|s| s.0),
            segments: segments.into_iter(),
            current: None,
            policy,
            placeholders: 0..0,
            pending: None,
            torn: None,
            skipped: Vec::new(),
        })
    }

    /// Where the log ended in a torn tail (the newest segment and the
    /// offset of its first incomplete entry), once the iterator has ended
    /// there.
    pub fn torn_tail(&self) -> Option<&(PathBuf, u64)> {
        self.torn.as_ref()
    }

    /// Damage skipped so far (with [`OnCorruption::Skip`]).
    pub fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }

    /// The number the next entry should have.
    pub fn next_seq(&self) -> Option<u64> {
        self.next_seq
    }

    /// Opens the next segment; `Ok(false)` at the end of the log.
    fn open_segment(&mut self) -> Result<bool, LogError> {
        let Some((first, path)) = self.segments.next() else {
            return Ok(false);
        };
        let last = self.segments.len() == 0;
        let file = File::open(&path).map_err(io_err(&path))?;
        let size = file.metadata().map_err(io_err(&path))?.len();
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut magic = [0u8; HEADER];
        let version = match reader.read_exact(&mut magic) {
            Ok(()) => Version::of(&magic),
            Err(_) => None,
        };
        let Some(version) = version else {
            // A crash while the newest segment was created leaves it short
            // or all zeros: a torn tail at its start. Otherwise the header
            // (synced before any entry) is damaged.
            if last && (size <= HEADER as u64 || all_zeros(&path)?) {
                self.torn = Some((path, 0));
                return Ok(false);
            }
            let reason = "bad segment header (magic)".to_owned();
            if self.policy == OnCorruption::Skip {
                self.skipped.push(Skipped {
                    path,
                    offset: 0,
                    bytes: size,
                    entries: 0,
                    reason,
                });
                return Ok(true);
            }
            return Err(LogError::Corrupt {
                path,
                offset: 0,
                reason,
            });
        };
        // Numbering continues across segments: a segment whose name says
        // otherwise lost entries (or is not this log's).
        if self.next_seq.is_some_and(|n| n != first) && self.policy == OnCorruption::Stop {
            return Err(LogError::Corrupt {
                path,
                offset: 0,
                reason: format!(
                    "the segment starts at entry {first} where {} was expected",
                    self.next_seq.unwrap_or(0)
                ),
            });
        }
        self.current = Some(Segment {
            path,
            reader,
            offset: HEADER as u64,
            version,
            size,
            last,
        });
        Ok(true)
    }

    /// Damage at the current position: a torn tail (the iterator ends), a
    /// skip (reading goes on after it), or an error.
    fn damaged(&mut self, reason: String) -> Result<(), LogError> {
        let Some(seg) = self.current.as_mut() else {
            return Ok(());
        };
        let at = seg.offset;
        let last_seq = self.next_seq.and_then(|n| n.checked_sub(1));
        if seg.last {
            let proof = match seg.version {
                Version::V2 => durable_after(&seg.path, at, last_seq)?,
                Version::V1 => None,
            };
            let Some(proof) = proof else {
                self.torn = Some((seg.path.clone(), at));
                self.current = None;
                return Ok(());
            };
            if self.policy == OnCorruption::Stop {
                return Err(LogError::Corrupt {
                    path: seg.path.clone(),
                    offset: at,
                    reason: format!(
                        "{reason}, and the entry at byte {proof} was written after these bytes were durable: acknowledged data is damaged (restore the segment from a copy, move the log aside, or set [log] on_corruption = \"skip\")"
                    ),
                });
            }
        } else if self.policy == OnCorruption::Stop {
            return Err(LogError::Corrupt {
                path: seg.path.clone(),
                offset: at,
                reason,
            });
        }
        // Skip to the next valid entry of the segment, or its end.
        let expected = self.next_seq.unwrap_or(0);
        match find_entry(&seg.path, at, last_seq, seg.version, |_, _, _| true)? {
            Some((offset, entry, len)) => {
                self.skipped.push(Skipped {
                    path: seg.path.clone(),
                    offset: at,
                    bytes: offset - at,
                    entries: entry.seq - expected,
                    reason,
                });
                seg.reader
                    .seek(SeekFrom::Start(offset + len))
                    .map_err(io_err(&seg.path))?;
                seg.offset = offset + len;
                self.placeholders = expected..entry.seq;
                self.pending = Some(entry);
            }
            None => {
                self.skipped.push(Skipped {
                    path: seg.path.clone(),
                    offset: at,
                    bytes: seg.size.saturating_sub(at),
                    entries: 0,
                    reason,
                });
                self.current = None;
            }
        }
        Ok(())
    }

    fn step(&mut self) -> Result<Option<Entry>, LogError> {
        loop {
            if let Some(seq) = self.placeholders.next() {
                self.next_seq = Some(seq + 1);
                return Ok(Some(Entry::placeholder(seq)));
            }
            if let Some(e) = self.pending.take() {
                self.next_seq = Some(e.seq + 1);
                return Ok(Some(e));
            }
            if self.torn.is_some() {
                return Ok(None);
            }
            let Some(seg) = self.current.as_mut() else {
                if !self.open_segment()? {
                    return Ok(None);
                }
                continue;
            };
            match read_entry(&mut seg.reader, seg.version).map_err(io_err(&seg.path))? {
                Read1::End => self.current = None,
                Read1::Damaged(reason) => self.damaged(reason)?,
                Read1::Entry(e, n) => {
                    let expected = self.next_seq.unwrap_or(e.seq);
                    if e.seq == expected {
                        seg.offset += n;
                        self.next_seq = Some(e.seq + 1);
                        return Ok(Some(e));
                    }
                    if self.policy == OnCorruption::Skip && e.seq > expected {
                        // Entries missing before it (a skipped segment end).
                        self.skipped.push(Skipped {
                            path: seg.path.clone(),
                            offset: seg.offset,
                            bytes: 0,
                            entries: e.seq - expected,
                            reason: format!("entries {expected}..{} missing", e.seq),
                        });
                        seg.offset += n;
                        self.placeholders = expected..e.seq;
                        self.pending = Some(e);
                        continue;
                    }
                    let reason = format!("entry {} where {expected} was expected", e.seq);
                    self.damaged(reason)?;
                }
            }
        }
    }
}

impl Iterator for LogReader {
    type Item = Result<Entry, LogError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.step() {
            Ok(e) => e.map(Ok),
            Err(e) => {
                // An error ends the log.
                self.current = None;
                self.segments = Vec::new().into_iter();
                self.placeholders = 0..0;
                self.pending = None;
                Some(Err(e))
            }
        }
    }
}
