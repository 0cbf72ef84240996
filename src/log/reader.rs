//! Reading a log directory from its oldest segment on.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use super::format::{durable_after, read_entry, Read1, Version};
use super::{segments, Entry, LogError, HEADER};

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
