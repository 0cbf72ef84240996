//! Input chunks: JSON Lines cut into numbered chunks of whole lines, and the
//! watermark of each chunk.
//!
//! A chunk is the unit of ingest: up to [`CHUNK_LINES`] lines, read by one
//! thread, decoded by one worker. Its watermark is computed from the chunks
//! *before* it in arrival order ([`ChunkClock`]), never from which worker
//! decodes it, so whether a record is on time, late or expired, and so every
//! final aggregate, is the same for any number of workers.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::sync::{Condvar, Mutex};

use bytes::Bytes;

use crate::codec::{cbor_sequence, decode_json, CborItem};
use crate::log::Encoding;
use crate::model::{Record, RecordError, RejectReason};
use crate::resolve::Item;
use crate::time::{ChunkTimes, EventClock, TimeSpec};
use std::sync::Arc;

/// Lines per chunk. Fixed, because the watermark advances per chunk and
/// results must not depend on a tuning knob.
pub const CHUNK_LINES: usize = 1024;
/// Longest accepted line, bytes (a telemetry record is ~200 bytes). Longer
/// lines are rejected as `too_long` without being buffered.
pub const MAX_LINE_BYTES: usize = 64 << 10;

/// Whole lines from the input.
#[derive(Debug)]
pub struct Chunk {
    /// Position in arrival order, from 0.
    pub seq: u64,
    /// Line number (1-based) of the first line.
    pub first_line: u64,
    /// The lines, each ending in `\n`. A line that was too long is present
    /// as an empty line and listed in `too_long`. Shared and immutable, so
    /// a network frame (`Bytes` from QUIC) can become a chunk without a copy.
    pub data: Bytes,
    /// Line numbers of lines longer than [`MAX_LINE_BYTES`].
    pub too_long: Vec<u64>,
    /// How `data` is encoded.
    pub encoding: Encoding,
    /// The records already resolved (live ingest), in order; when present
    /// the dataflow uses them instead of decoding `data`.
    pub resolved: Option<Arc<[Item]>>,
    /// Who sent it (a log entry's sender): a central node merges partials
    /// per edge. Empty for files.
    pub sender: Arc<str>,
}

impl Chunk {
    /// A chunk of one log entry or network batch (records numbered from 1).
    pub fn from_batch(seq: u64, encoding: Encoding, data: Bytes) -> Self {
        Chunk {
            seq,
            first_line: 1,
            data,
            too_long: Vec::new(),
            encoding,
            resolved: None,
            sender: Arc::from(""),
        }
    }

    /// The same chunk, sent by `sender`.
    pub fn with_sender(mut self, sender: &str) -> Self {
        self.sender = Arc::from(sender);
        self
    }

    /// The same chunk with its records already resolved.
    pub fn with_resolved(mut self, resolved: Arc<[Item]>) -> Self {
        self.resolved = Some(resolved);
        self
    }

    /// A clock tick's event time ([`Encoding::Clock`]); `None` for
    /// records.
    pub fn tick(&self) -> Option<u64> {
        (self.encoding == Encoding::Clock)
            .then(|| Encoding::tick_time(&self.data))
            .flatten()
    }

    /// The chunk's [`ChunkTimes`]: its records' (`items`, resolved from
    /// it), or a clock tick's. `floor` as for [`ChunkTimes::new`].
    pub fn times(&self, items: &[Item], floor: Option<u64>, spec: &TimeSpec) -> ChunkTimes {
        match self.tick() {
            Some(t) => ChunkTimes::tick(t),
            None => ChunkTimes::new(items.iter().map(|i| (i.device(), i.ts())), floor, spec),
        }
    }

    /// Decodes every record (blank JSON lines are skipped), calling `f` with
    /// its line (or item) number and the record or why it is invalid.
    pub fn for_each_record(&self, mut f: impl FnMut(u64, Result<Record<'_>, RecordError>)) {
        match self.encoding {
            Encoding::JsonLines => {
                let mut too_long = self.too_long.iter().peekable();
                for (line, bytes) in self.lines() {
                    if too_long.peek() == Some(&&line) {
                        too_long.next();
                        let detail = format!("line is longer than {MAX_LINE_BYTES} bytes");
                        f(
                            line,
                            Err(RecordError::record(RejectReason::TooLong, detail)),
                        );
                    } else if !bytes.iter().all(u8::is_ascii_whitespace) {
                        f(line, decode_json(bytes));
                    }
                }
            }
            Encoding::Cbor => {
                for (i, item) in cbor_sequence(&self.data).enumerate() {
                    let n = self.first_line + i as u64;
                    match item {
                        CborItem::Record(r) => f(n, Ok(r)),
                        CborItem::Invalid(e) | CborItem::Fatal(e) => f(n, Err(e)),
                    }
                }
            }
            // Partials are no telemetry: nothing to decode here (a central
            // node reads them with `crate::push::inbox`).
            Encoding::Partials | Encoding::Clock => {}
        }
    }

    /// Every valid record resolved against `reference`, in order (invalid
    /// ones skipped): the items the dataflow takes from this chunk.
    pub fn resolve_all(&self, reference: &crate::reference::Reference) -> Vec<Item> {
        if let Some(items) = &self.resolved {
            return items.to_vec();
        }
        let mut items = Vec::new();
        self.for_each_record(|_, record| {
            if let Ok(item) = record.and_then(|r| crate::resolve::resolve(&r, reference)) {
                items.push(item);
            }
        });
        items
    }

    /// Iterates `(line number, bytes)` without the newline (and without a
    /// trailing `\r`).
    pub fn lines(&self) -> impl Iterator<Item = (u64, &[u8])> {
        let mut n = self.first_line;
        self.data.split_inclusive(|&b| b == b'\n').map(move |l| {
            let l = l.strip_suffix(b"\n").unwrap_or(l);
            let l = l.strip_suffix(b"\r").unwrap_or(l);
            n += 1;
            (n - 1, l)
        })
    }
}

/// Cuts a byte stream into [`Chunk`]s.
pub struct Chunker<R> {
    inner: R,
    buf: Vec<u8>,
    start: usize,
    eof: bool,
    seq: u64,
    line: u64,
    /// Inside a line that is already too long: skip to its end.
    skipping: bool,
    chunk_lines: usize,
}

impl<R: Read> Chunker<R> {
    /// Wraps a reader, with [`CHUNK_LINES`] lines per chunk.
    pub fn new(inner: R) -> Self {
        Self::with_chunk_lines(inner, CHUNK_LINES)
    }

    /// Wraps a reader, with `chunk_lines` lines per chunk.
    pub fn with_chunk_lines(inner: R, chunk_lines: usize) -> Self {
        Chunker {
            inner,
            buf: Vec::with_capacity(1 << 20),
            start: 0,
            eof: false,
            seq: 0,
            line: 1,
            skipping: false,
            chunk_lines: chunk_lines.max(1),
        }
    }

    fn fill(&mut self) -> io::Result<()> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let len = self.buf.len();
        self.buf.resize(len + (256 << 10), 0);
        let n = loop {
            match self.inner.read(&mut self.buf[len..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.buf.truncate(len);
                    return Err(e);
                }
            }
        };
        self.buf.truncate(len + n);
        self.eof = n == 0;
        Ok(())
    }

    /// The next chunk, or `None` at the end of the input.
    pub fn next_chunk(&mut self) -> io::Result<Option<Chunk>> {
        let mut data = Vec::with_capacity(self.chunk_lines * 256);
        let mut too_long = Vec::new();
        let mut lines = 0;
        while lines < self.chunk_lines {
            let pending = &self.buf[self.start..];
            match memchr::memchr(b'\n', pending) {
                Some(i) => {
                    // The line's length without its end (`\n` or `\r\n`),
                    // as live ingest counts it.
                    let len = if pending[..i].ends_with(b"\r") {
                        i - 1
                    } else {
                        i
                    };
                    if self.skipping || len > MAX_LINE_BYTES {
                        too_long.push(self.line);
                        data.push(b'\n');
                        self.skipping = false;
                    } else {
                        data.extend_from_slice(&pending[..=i]);
                    }
                    self.start += i + 1;
                    self.line += 1;
                    lines += 1;
                }
                // Longer than a line plus its `\r`: too long, whatever ends it.
                None if pending.len() > MAX_LINE_BYTES + 1 => {
                    // Drop what we have of the long line; remember to skip its rest.
                    self.skipping = true;
                    self.start = self.buf.len();
                }
                None if self.eof => {
                    if !pending.is_empty() || self.skipping {
                        // A last line without a newline.
                        let len = pending.len() - pending.ends_with(b"\r") as usize;
                        if self.skipping || len > MAX_LINE_BYTES {
                            too_long.push(self.line);
                            data.push(b'\n');
                            self.skipping = false;
                        } else {
                            data.extend_from_slice(pending);
                            data.push(b'\n');
                        }
                        self.start = self.buf.len();
                        self.line += 1;
                        lines += 1;
                    }
                    break;
                }
                None => self.fill()?,
            }
        }
        if lines == 0 {
            return Ok(None);
        }
        let chunk = Chunk {
            seq: self.seq,
            first_line: self.line - lines as u64,
            data: data.into(),
            too_long,
            encoding: Encoding::JsonLines,
            resolved: None,
            sender: Arc::from(""),
        };
        self.seq += 1;
        Ok(Some(chunk))
    }
}

/// The watermark of each chunk: the [`EventClock`] as it stood after all
/// chunks before it (the caller subtracts the allowed lateness). Workers
/// decode chunks in parallel; each publishes its chunk's [`ChunkTimes`],
/// and waits for the prefix before it to classify its records. Chunks are
/// folded into the clock strictly in order, whoever publishes last.
#[derive(Debug)]
pub struct ChunkClock {
    spec: TimeSpec,
    state: Mutex<ClockState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct ClockState {
    /// Published chunks not yet folded in.
    published: BTreeMap<u64, ChunkTimes>,
    /// Every chunk below this is folded in.
    next: u64,
    /// The clock after chunks `< next`.
    clock: EventClock,
    /// Newest trusted event time before each chunk, waiting to be picked up.
    ready: BTreeMap<u64, Option<u64>>,
    /// Largest event time of the first chunk with a record, for pacing.
    first_max: Option<u64>,
}

impl ChunkClock {
    /// A clock at chunk 0.
    pub fn new(spec: TimeSpec) -> Self {
        Self::starting_at(0, EventClock::default(), spec)
    }

    /// A clock whose first chunk is `seq`, with `clock` the clock before it
    /// (a log resumed from a checkpoint).
    pub fn starting_at(seq: u64, clock: EventClock, spec: TimeSpec) -> Self {
        let mut st = ClockState {
            next: seq,
            ..ClockState::default()
        };
        st.ready.insert(seq, clock.max);
        st.clock = clock;
        ChunkClock {
            spec,
            state: Mutex::new(st),
            changed: Condvar::new(),
        }
    }

    /// A clock state that precedes every chunk not yet published (for
    /// [`ChunkTimes::new`]).
    pub fn floor(&self) -> Option<u64> {
        self.state.lock().ok().and_then(|st| st.clock.max)
    }

    /// Publishes the times of chunk `seq`.
    pub fn publish(&self, seq: u64, times: ChunkTimes) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        st.published.insert(seq, times);
        while let Some(t) = {
            let next = st.next;
            st.published.remove(&next)
        } {
            if st.first_max.is_none() {
                st.first_max = t.max;
            }
            st.clock.fold(&t, &self.spec);
            st.next += 1;
            let (next, max) = (st.next, st.clock.max);
            st.ready.insert(next, max);
        }
        self.changed.notify_all();
    }

    /// Blocks until every chunk before `seq` is published; returns the
    /// clock's newest trusted event time before it, and chunk 0's largest
    /// event time. Each `seq` may be asked once.
    pub fn prefix_before(&self, seq: u64) -> (Option<u64>, Option<u64>) {
        let Ok(mut st) = self.state.lock() else {
            return (None, None);
        };
        loop {
            if let Some(p) = st.ready.remove(&seq) {
                return (p, st.first_max);
            }
            st = match self.changed.wait(st) {
                Ok(g) => g,
                Err(_) => return (None, None),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_keep_line_numbers_and_reject_long_lines_without_buffering_them() {
        let mut text = b"a\r\nb\n".to_vec();
        text.extend(std::iter::repeat_n(b'x', MAX_LINE_BYTES + 10));
        text.extend_from_slice(b"\nc");
        let mut c = Chunker::new(&text[..]);
        let chunk = c.next_chunk().expect("read").expect("chunk");
        let lines: Vec<_> = chunk.lines().collect();
        assert_eq!(
            lines,
            vec![
                (1, &b"a"[..]),
                (2, &b"b"[..]),
                (3, &b""[..]),
                (4, &b"c"[..])
            ]
        );
        assert_eq!(chunk.too_long, vec![3]);
        assert!(c.next_chunk().expect("read").is_none());
    }

    #[test]
    fn the_line_limit_counts_neither_lf_nor_crlf_nor_where_the_reads_split() {
        let x = |n: usize| vec![b'x'; n];
        // At the limit with each end, at the end of input without one, and
        // one byte over with each.
        let mut text = Vec::new();
        for (body, end) in [
            (x(MAX_LINE_BYTES), &b"\n"[..]),
            (x(MAX_LINE_BYTES), b"\r\n"),
            (x(MAX_LINE_BYTES + 1), b"\n"),
            (x(MAX_LINE_BYTES + 1), b"\r\n"),
        ] {
            text.extend_from_slice(&body);
            text.extend_from_slice(end);
        }
        let last = [x(MAX_LINE_BYTES), b"\r".to_vec()].concat();
        for (tail, too_long) in [(last, vec![3, 4]), (x(MAX_LINE_BYTES + 1), vec![3, 4, 5])] {
            let input = [text.clone(), tail].concat();
            // Small reads too: the line's end may arrive after its body.
            struct Trickle<'a>(&'a [u8]);
            impl std::io::Read for Trickle<'_> {
                fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                    let n = buf.len().min(self.0.len()).min(4093);
                    buf[..n].copy_from_slice(&self.0[..n]);
                    self.0 = &self.0[n..];
                    Ok(n)
                }
            }
            for chunk in [
                Chunker::new(&input[..]).next_chunk(),
                Chunker::new(Trickle(&input)).next_chunk(),
            ] {
                let chunk = chunk.expect("read").expect("chunk");
                assert_eq!(chunk.lines().count(), 5);
                assert_eq!(chunk.too_long, too_long);
            }
        }
    }

    #[test]
    fn clock_gives_each_chunk_the_prefix_before_it() {
        let spec = TimeSpec::new(
            std::time::Duration::from_secs(60),
            std::time::Duration::from_secs(5),
            std::time::Duration::from_secs(900),
        );
        let clock = ChunkClock::new(spec);
        let times = |ts: &[u64]| ChunkTimes::new(ts.iter().map(|&t| (t, t)), None, &spec);
        clock.publish(1, times(&[50]));
        clock.publish(0, times(&[70]));
        clock.publish(2, times(&[]));
        assert_eq!(clock.prefix_before(0), (None, Some(70)));
        assert_eq!(clock.prefix_before(1), (Some(70), Some(70)));
        assert_eq!(clock.prefix_before(2), (Some(70), Some(70)));
        assert_eq!(clock.prefix_before(3), (Some(70), Some(70)));
    }
}
