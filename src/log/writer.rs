//! Appending to the log, rolling segments, and recovery on open.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use rustc_hash::FxHashMap;

use super::disk::Disk;
use super::format::Version;
use super::reader::{LogReader, OnCorruption, Skipped};
use super::{
    delete_before, io_err, segment_name, segments, Encoding, Entry, LogError, FIXED_PAYLOAD,
    HEADER, LOCK_FILE, MAGIC, MAX_ENTRY_BYTES, MAX_SENDER_LEN,
};

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
    /// Damage skipped (`[log] on_corruption = "skip"`).
    pub skipped: Vec<Skipped>,
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
    /// What it writes through.
    disk: Disk,
    /// Held for the writer's life: one writer per directory.
    _lock: File,
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
fn create_segment(disk: &Disk, dir: &Path, first_seq: u64) -> Result<(File, PathBuf), LogError> {
    let path = dir.join(segment_name(first_seq));
    let created = (|| {
        let mut file = disk.create_new(&path).map_err(io_err(&path))?;
        let written = disk
            .write(&mut file, &path, MAGIC)
            .and_then(|()| disk.sync(&file, &path))
            .map_err(io_err(&path));
        if let Err(e) = written {
            // Nothing was ever in it: let the next attempt create it anew.
            let _ = disk.remove(&path);
            return Err(e);
        }
        Ok(file)
    })()?;
    disk.sync_dir(dir).map_err(io_err(dir))?;
    Ok((created, path))
}

impl LogWriter {
    /// Opens (creating if needed) the log in `dir`, recovering a torn tail
    /// and refusing damage (module doc, "Recovery"). Reads every entry
    /// once to rebuild the sender table. Fails with [`LogError::Locked`]
    /// while another writer has the directory.
    pub fn open(dir: &Path, segment_bytes: u64) -> Result<(LogWriter, Recovery), LogError> {
        Self::open_on(dir, segment_bytes, Disk::real(), OnCorruption::Stop)
    }

    /// [`LogWriter::open`] on the given [`Disk`] (a simulated one in
    /// power-loss tests), damage handled by `policy`.
    pub fn open_on(
        dir: &Path,
        segment_bytes: u64,
        disk: Disk,
        policy: OnCorruption,
    ) -> Result<(LogWriter, Recovery), LogError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let lock = lock(dir)?;
        let segs = segments(dir)?;
        let mut recovery = Recovery {
            first_seq: segs.first().map_or(0, |s| s.0),
            ..Recovery::default()
        };
        // One pass through the reader: entries, senders, and where the log
        // ends (a torn tail, or damage it refuses or skips).
        let mut reader = LogReader::open_with(dir, policy)?;
        for entry in reader.by_ref() {
            let e = entry?;
            if !e.is_placeholder() {
                recovery.senders.insert(e.sender, e.sender_seq);
                recovery.entries += 1;
            }
        }
        let mut next_seq = reader.next_seq().unwrap_or(recovery.first_seq);
        recovery.skipped = reader.skipped().to_vec();
        if let Some((path, at)) = reader.torn_tail().cloned() {
            let mut f = disk.open_rw(&path).map_err(io_err(&path))?;
            let size = f.metadata().map_err(io_err(&path))?.len();
            recovery.truncated_bytes = size - at;
            disk.set_len(&f, &path, at).map_err(io_err(&path))?;
            if at == 0 {
                // A crash while it was created: give it its header again.
                f.seek(SeekFrom::Start(0)).map_err(io_err(&path))?;
                disk.write(&mut f, &path, MAGIC).map_err(io_err(&path))?;
            }
            disk.sync(&f, &path).map_err(io_err(&path))?;
            recovery.truncated_at = Some((path, at));
        }
        // Appends go to a version 2 segment only.
        let last_version = match segs.last() {
            Some((_, path)) => {
                let mut magic = [0u8; HEADER];
                File::open(path)
                    .and_then(|mut f| f.read_exact(&mut magic))
                    .map_err(io_err(path))?;
                Version::of(&magic)
            }
            None => Some(Version::V2),
        };
        if let (None, Some((first, path))) = (last_version, segs.last()) {
            // A newest segment skipped whole (bad header): moved aside, so a
            // new one can take its number.
            let aside = path.with_extension("damaged");
            std::fs::rename(path, &aside).map_err(io_err(path))?;
            disk.sync_dir(dir).map_err(io_err(dir))?;
            next_seq = next_seq.max(*first);
        }
        let (file, path, first_seq) = match segs.last() {
            Some((first_seq, path)) if last_version == Some(Version::V2) => {
                let file = disk.open_append(path).map_err(io_err(path))?;
                (file, path.clone(), *first_seq)
            }
            Some((first_seq, path)) if last_version.is_some() && *first_seq == next_seq => {
                // An empty version 1 segment: give it a version 2 header.
                let mut file = disk.open_append(path).map_err(io_err(path))?;
                disk.set_len(&file, path, 0).map_err(io_err(path))?;
                disk.write(&mut file, path, MAGIC).map_err(io_err(path))?;
                disk.sync(&file, path).map_err(io_err(path))?;
                (file, path.clone(), *first_seq)
            }
            _ => {
                let (file, path) = create_segment(&disk, dir, next_seq)?;
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
            disk,
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
        delete_before(&self.disk, &self.dir, seq.min(self.first_seq))
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
            let (file, path) = create_segment(&self.disk, &self.dir, self.next_seq)?;
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
        self.disk
            .write(&mut self.file, &self.path, &self.buf)
            .map_err(io_err(&self.path))?;
        self.len += self.buf.len() as u64;
        self.next_seq += 1;
        Ok(entry.seq)
    }

    /// Makes every appended entry durable (one `fdatasync`).
    pub fn sync(&mut self) -> Result<(), LogError> {
        self.disk
            .sync(&self.file, &self.path)
            .map_err(io_err(&self.path))?;
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
        let file = self.disk.open_append(&path).map_err(io_err(&path))?;
        self.disk
            .set_len(&file, &path, self.durable_len)
            .map_err(io_err(&path))?;
        self.disk.sync(&file, &path).map_err(io_err(&path))?;
        self.file = file;
        self.len = self.durable_len;
        self.next_seq = self.durable_seq;
        Ok(())
    }
}
