//! A sink's ledger: durable, per entity, the last window its target
//! acknowledged and a digest of the value it acknowledged.
//!
//! A target that keeps every write as history (an NGSI-LD broker) must not
//! be sent an acknowledged value again, not even after the node restarts
//! and its log replay recomputes the windows the target already has. The
//! sink records each acknowledged batch here (appended, fsynced) before it
//! counts the batch as delivered; after the replay it drops every value
//! whose entity, window and digest the ledger holds. A kill between the
//! target's answer and the fsync resends that batch alone: the only
//! duplicates are batches in flight at the kill.
//!
//! The file is text, one mark per line: `<window> <digest, 16 hex> <id as a
//! JSON string>`. A torn last line (no newline) is a mark never recorded;
//! a damaged line elsewhere is skipped and said. When the file holds more
//! than [`COMPACT_FACTOR`] times the live marks (and at least
//! [`COMPACT_MIN`] lines), it is rewritten with the live marks alone,
//! durably (temporary file, fsync, rename, fsync of the directory).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use rustc_hash::FxHashMap;
use thiserror::Error;

/// The ledger is rewritten when it holds this many times its live marks.
pub const COMPACT_FACTOR: usize = 4;
/// ... and at least this many lines.
pub const COMPACT_MIN: usize = 4096;

/// What the target acknowledged of one entity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mark {
    /// Window start, ms.
    pub window: u64,
    /// A digest of the value acknowledged (its row, TELEMETRY.md §4).
    pub digest: u64,
}

/// Why a ledger cannot be read or written.
#[derive(Debug, Error)]
pub enum LedgerError {
    /// Reading, writing or syncing the file failed.
    #[error("sink ledger {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// See the module documentation.
#[derive(Debug)]
pub struct Ledger {
    path: PathBuf,
    file: File,
    marks: FxHashMap<String, Mark>,
    lines: usize,
}

impl Ledger {
    /// Opens (or creates) the ledger at `path`, with its directory; also
    /// returns what was wrong with lines it skipped.
    pub fn open(path: &Path) -> Result<(Ledger, Vec<String>), LedgerError> {
        let io = |source| LedgerError::Io {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let text = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io(e)),
        };
        let mut marks = FxHashMap::default();
        let mut warnings = Vec::new();
        let mut lines = 0;
        // Whole lines only: a torn tail was never recorded.
        let whole = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        for (n, line) in text[..whole].split(|b| *b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            match parse_line(line) {
                Some((id, mark)) => {
                    marks.insert(id, mark);
                    lines += 1;
                }
                None => warnings.push(format!(
                    "{} line {}: not a mark, skipped",
                    path.display(),
                    n + 1
                )),
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        if whole < text.len() {
            // Cut the torn tail, so the next mark starts a line.
            file.set_len(whole as u64).map_err(io)?;
        }
        Ok((
            Ledger {
                path: path.to_owned(),
                file,
                marks,
                lines,
            },
            warnings,
        ))
    }

    /// What the target acknowledged of entity `id`.
    pub fn get(&self, id: &str) -> Option<Mark> {
        self.marks.get(id).copied()
    }

    /// Entities marked.
    pub fn len(&self) -> usize {
        self.marks.len()
    }

    /// Whether no entity is marked.
    pub fn is_empty(&self) -> bool {
        self.marks.is_empty()
    }

    /// Records an acknowledged batch, durably (one write and one fsync).
    /// A mark of an older window than the entity's is kept out.
    pub fn record<'a>(
        &mut self,
        marks: impl IntoIterator<Item = (&'a str, Mark)>,
    ) -> Result<(), LedgerError> {
        let mut out = String::new();
        for (id, mark) in marks {
            if self.marks.get(id).is_some_and(|m| m.window > mark.window) {
                continue;
            }
            push_line(&mut out, id, mark);
            self.marks.insert(id.to_owned(), mark);
            self.lines += 1;
        }
        if out.is_empty() {
            return Ok(());
        }
        let io = |source| LedgerError::Io {
            path: self.path.clone(),
            source,
        };
        self.file.write_all(out.as_bytes()).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        if self.lines >= COMPACT_MIN && self.lines > COMPACT_FACTOR * self.marks.len() {
            self.compact()?;
        }
        Ok(())
    }

    /// Rewrites the file with the live marks alone.
    fn compact(&mut self) -> Result<(), LedgerError> {
        let io = |source| LedgerError::Io {
            path: self.path.clone(),
            source,
        };
        let mut sorted: Vec<_> = self.marks.iter().collect();
        sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let mut out = String::new();
        for (id, mark) in sorted {
            push_line(&mut out, id, *mark);
        }
        crate::output::write_durably(&self.path, out.as_bytes()).map_err(io)?;
        self.file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(io)?;
        self.lines = self.marks.len();
        Ok(())
    }
}

fn push_line(out: &mut String, id: &str, mark: Mark) {
    use std::fmt::Write as _;
    let id = serde_json::to_string(id).unwrap_or_else(|_| "\"\"".into());
    let _ = writeln!(out, "{} {:016x} {id}", mark.window, mark.digest);
}

fn parse_line(line: &[u8]) -> Option<(String, Mark)> {
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.splitn(3, ' ');
    let window = parts.next()?.parse().ok()?;
    let digest = u64::from_str_radix(parts.next()?, 16).ok()?;
    let id: String = serde_json::from_str(parts.next()?).ok()?;
    Some((id, Mark { window, digest }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(window: u64, digest: u64) -> Mark {
        Mark { window, digest }
    }

    #[test]
    fn marks_survive_a_reopen_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sink").join("ledger");
        let (mut l, w) = Ledger::open(&path).expect("open");
        assert!(w.is_empty() && l.is_empty());
        l.record([("a b", mark(60, 1)), ("c\"d", mark(0, 2))])
            .expect("record");
        l.record([("a b", mark(120, 3)), ("c\"d", mark(-1i64 as u64 / 2, 4))])
            .expect("record");
        drop(l);
        // A kill in the middle of a write.
        let mut f = OpenOptions::new().append(true).open(&path).expect("file");
        f.write_all(b"180 0000").expect("torn");
        let (mut l, w) = Ledger::open(&path).expect("reopen");
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(l.get("a b"), Some(mark(120, 3)));
        assert_eq!(l.get("c\"d").map(|m| m.digest), Some(4));
        l.record([("e", mark(5, 5))]).expect("record after the cut");
        let (l, w) = Ledger::open(&path).expect("reopen");
        assert!(w.is_empty(), "{w:?}");
        assert_eq!((l.len(), l.get("e")), (3, Some(mark(5, 5))));
    }

    #[test]
    fn an_older_window_never_replaces_a_newer_mark_and_bad_lines_are_said() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ledger");
        std::fs::write(&path, "60 0000000000000001 \"x\"\nnonsense\n").expect("write");
        let (mut l, w) = Ledger::open(&path).expect("open");
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("line 2"), "{w:?}");
        l.record([("x", mark(0, 9))]).expect("record");
        assert_eq!(l.get("x"), Some(mark(60, 1)));
    }

    #[test]
    fn the_file_is_compacted_to_its_live_marks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ledger");
        let (mut l, _) = Ledger::open(&path).expect("open");
        // Several marks of one entity per batch: fewer fsyncs.
        for chunk in 0..(COMPACT_MIN as u64 / 100 + 1) {
            let marks: Vec<_> = (0..100)
                .map(|i| ("only", mark(chunk * 100 + i, i)))
                .collect();
            l.record(marks).expect("record");
        }
        let lines = std::fs::read_to_string(&path)
            .expect("read")
            .lines()
            .count();
        assert!(lines < 20, "{lines} lines for one live mark");
        let (l, _) = Ledger::open(&path).expect("reopen");
        assert_eq!(
            l.get("only").map(|m| m.window),
            Some((COMPACT_MIN as u64 / 100) * 100 + 99)
        );
    }
}
