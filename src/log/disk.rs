//! The filesystem under the log: every write, fsync, rename and removal of
//! the log directory goes through a [`Disk`], so that a test can lose power.
//!
//! [`Disk::real`] passes every call to the operating system.
//! [`Disk::simulated`] does too, and also keeps, per file, what an fsync
//! has made durable: the file's length at its last `fsync`, and whether its
//! directory entry (creation, rename, removal) was made durable by an fsync
//! of the directory. [`Disk::crash`] is the power cut: from then on every
//! call fails (EIO), as on a dead machine. [`Disk::lose_unsynced`], run once
//! the node has stopped, then does to the files what the cut would have
//! done: files whose directory entry was never synced vanish, renames and
//! removals not synced are undone, and every file is cut back to what was
//! fsynced plus a random part of what was not, in which a random span may
//! be zeros (pages written back out of order).
//!
//! One simplification: a truncation is taken as durable at once (the log
//! always fsyncs right after one).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The filesystem the log writes through (module doc).
#[derive(Clone, Debug, Default)]
pub struct Disk {
    sim: Option<Arc<Mutex<Sim>>>,
}

#[derive(Debug, Default)]
struct Sim {
    crashed: bool,
    files: HashMap<PathBuf, SimFile>,
    /// Removals whose directory was not synced: the file, moved aside.
    removed: Vec<(PathBuf, PathBuf, SimFile)>,
    /// Renames whose directory was not synced.
    renamed: Vec<Renamed>,
    aside: u64,
}

/// A rename not yet made durable: from, to, and the file `to` replaced,
/// moved aside.
type Renamed = (PathBuf, PathBuf, Option<(PathBuf, SimFile)>);

#[derive(Clone, Copy, Debug)]
struct SimFile {
    /// Bytes written.
    len: u64,
    /// Bytes covered by an fsync.
    durable: u64,
    /// Whether its directory entry is durable.
    linked: bool,
}

/// What a simulated power cut did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Lost {
    /// Files whose creation was never made durable, gone.
    pub files_gone: usize,
    /// Bytes written but never fsynced, gone.
    pub bytes_gone: u64,
    /// Unsynced bytes that survived, some perhaps as zeros.
    pub bytes_kept: u64,
    /// Renames and removals undone.
    pub entries_undone: usize,
}

fn dead() -> io::Error {
    io::Error::other("simulated power loss: the disk is gone")
}

impl Disk {
    /// The operating system's filesystem.
    pub fn real() -> Self {
        Disk { sim: None }
    }

    /// The real filesystem, with a record of what is durable (module doc).
    pub fn simulated() -> Self {
        Disk {
            sim: Some(Arc::new(Mutex::new(Sim::default()))),
        }
    }

    /// Runs `f` on the simulation's state, failing once it has crashed.
    fn sim<T>(&self, f: impl FnOnce(&mut Sim) -> T) -> io::Result<Option<T>> {
        let Some(sim) = &self.sim else {
            return Ok(None);
        };
        let mut s = sim.lock().map_err(|_| dead())?;
        if s.crashed {
            return Err(dead());
        }
        Ok(Some(f(&mut s)))
    }

    /// Fails once the simulated disk has crashed.
    fn alive(&self) -> io::Result<()> {
        self.sim(|_| ()).map(|_| ())
    }

    /// Records a file opened that the simulation has not seen: it was
    /// there, durable, before.
    fn known(&self, path: &Path, file: &File) -> io::Result<()> {
        let len = file.metadata()?.len();
        self.sim(|s| {
            s.files.entry(path.to_owned()).or_insert(SimFile {
                len,
                durable: len,
                linked: true,
            });
        })
        .map(|_| ())
    }

    /// Creates a new file for appending (its directory entry is durable
    /// only after [`Disk::sync_dir`]).
    pub fn create_new(&self, path: &Path) -> io::Result<File> {
        self.alive()?;
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(path)?;
        self.sim(|s| {
            s.files.insert(
                path.to_owned(),
                SimFile {
                    len: 0,
                    durable: 0,
                    linked: false,
                },
            );
        })?;
        Ok(file)
    }

    /// Opens an existing file for appending.
    pub fn open_append(&self, path: &Path) -> io::Result<File> {
        self.alive()?;
        let file = OpenOptions::new().append(true).open(path)?;
        self.known(path, &file)?;
        Ok(file)
    }

    /// Opens an existing file for reading and writing.
    pub fn open_rw(&self, path: &Path) -> io::Result<File> {
        self.alive()?;
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        self.known(path, &file)?;
        Ok(file)
    }

    /// Writes all of `bytes` at the file's position (not yet durable).
    pub fn write(&self, file: &mut File, path: &Path, bytes: &[u8]) -> io::Result<()> {
        self.alive()?;
        file.write_all(bytes)?;
        let end = file.stream_position()?;
        self.sim(|s| {
            if let Some(f) = s.files.get_mut(path) {
                f.len = f.len.max(end);
            }
        })
        .map(|_| ())
    }

    /// Makes the file's data durable (`fdatasync`).
    pub fn sync(&self, file: &File, path: &Path) -> io::Result<()> {
        self.alive()?;
        file.sync_data()?;
        self.sim(|s| {
            if let Some(f) = s.files.get_mut(path) {
                f.durable = f.len;
            }
        })
        .map(|_| ())
    }

    /// Cuts or extends the file to `len` (durable at once in the
    /// simulation: module doc).
    pub fn set_len(&self, file: &File, path: &Path, len: u64) -> io::Result<()> {
        self.alive()?;
        file.set_len(len)?;
        self.sim(|s| {
            if let Some(f) = s.files.get_mut(path) {
                f.len = len;
                f.durable = f.durable.min(len);
            }
        })
        .map(|_| ())
    }

    /// A name beside `path` to move a file aside to.
    fn aside(s: &mut Sim, path: &Path) -> PathBuf {
        s.aside += 1;
        path.with_extension(format!("lost-on-sync.{}", s.aside))
    }

    /// Removes a file (durable after [`Disk::sync_dir`]).
    pub fn remove(&self, path: &Path) -> io::Result<()> {
        self.alive()?;
        let Some(sim) = &self.sim else {
            return std::fs::remove_file(path);
        };
        let mut s = sim.lock().map_err(|_| dead())?;
        let file = match s.files.remove(path) {
            Some(f) => f,
            None => {
                let len = std::fs::metadata(path)?.len();
                SimFile {
                    len,
                    durable: len,
                    linked: true,
                }
            }
        };
        let aside = Self::aside(&mut s, path);
        std::fs::rename(path, &aside)?;
        s.removed.push((path.to_owned(), aside, file));
        Ok(())
    }

    /// Renames `from` over `to` (durable after [`Disk::sync_dir`]).
    pub fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.alive()?;
        let Some(sim) = &self.sim else {
            return std::fs::rename(from, to);
        };
        let mut s = sim.lock().map_err(|_| dead())?;
        let replaced = if to.exists() {
            let old = s.files.remove(to).unwrap_or(SimFile {
                len: std::fs::metadata(to)?.len(),
                durable: std::fs::metadata(to)?.len(),
                linked: true,
            });
            let aside = Self::aside(&mut s, to);
            std::fs::rename(to, &aside)?;
            Some((aside, old))
        } else {
            None
        };
        std::fs::rename(from, to)?;
        if let Some(f) = s.files.remove(from) {
            s.files.insert(to.to_owned(), f);
        }
        s.renamed.push((from.to_owned(), to.to_owned(), replaced));
        Ok(())
    }

    /// Makes the directory's entries durable: creations, renames and
    /// removals in it.
    pub fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.alive()?;
        File::open(dir)?.sync_all()?;
        let Some(sim) = &self.sim else { return Ok(()) };
        let mut s = sim.lock().map_err(|_| dead())?;
        let in_dir = |p: &Path| p.parent() == Some(dir);
        for (path, f) in s.files.iter_mut() {
            if in_dir(path) {
                f.linked = true;
            }
        }
        let (done, kept): (Vec<_>, Vec<_>) = s.removed.drain(..).partition(|r| in_dir(&r.0));
        s.removed = kept;
        for (_, aside, _) in done {
            std::fs::remove_file(aside)?;
        }
        let (done, kept): (Vec<_>, Vec<_>) = s.renamed.drain(..).partition(|r| in_dir(&r.1));
        s.renamed = kept;
        for (_, _, replaced) in done {
            if let Some((aside, _)) = replaced {
                std::fs::remove_file(aside)?;
            }
        }
        Ok(())
    }

    /// Writes a whole file durably: a temporary file, fsync, rename over
    /// `path`, fsync of the directory.
    pub fn write_file(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let tmp = path.with_extension("tmp");
        if tmp.exists() {
            self.remove(&tmp)?;
        }
        let mut f = self.create_new(&tmp)?;
        self.write(&mut f, &tmp, bytes)?;
        self.sync(&f, &tmp)?;
        drop(f);
        self.rename(&tmp, path)?;
        match path.parent().filter(|d| !d.as_os_str().is_empty()) {
            Some(dir) => self.sync_dir(dir),
            None => Ok(()),
        }
    }

    /// The power cut: every later call fails. No-op on the real disk.
    pub fn crash(&self) {
        if let Some(sim) = &self.sim {
            if let Ok(mut s) = sim.lock() {
                s.crashed = true;
            }
        }
    }

    /// After [`Disk::crash`], with the writer gone: does to the files what
    /// the cut would have done (module doc). `random` gives random numbers.
    pub fn lose_unsynced(&self, mut random: impl FnMut() -> u64) -> io::Result<Lost> {
        let mut lost = Lost::default();
        let Some(sim) = &self.sim else {
            return Ok(lost);
        };
        let mut s = sim.lock().map_err(|_| dead())?;
        // Undo what the directory never made durable, newest first.
        while let Some((from, to, replaced)) = s.renamed.pop() {
            std::fs::rename(&to, &from)?;
            if let Some(f) = s.files.remove(&to) {
                s.files.insert(from, f);
            }
            if let Some((aside, old)) = replaced {
                std::fs::rename(aside, &to)?;
                s.files.insert(to, old);
            }
            lost.entries_undone += 1;
        }
        while let Some((path, aside, file)) = s.removed.pop() {
            std::fs::rename(aside, &path)?;
            s.files.insert(path, file);
            lost.entries_undone += 1;
        }
        for (path, f) in s.files.drain() {
            if !f.linked {
                match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
                lost.files_gone += 1;
                lost.bytes_gone += f.len;
                continue;
            }
            let unsynced = f.len.saturating_sub(f.durable);
            let kept = if unsynced == 0 {
                0
            } else {
                random() % (unsynced + 1)
            };
            lost.bytes_gone += unsynced - kept;
            lost.bytes_kept += kept;
            let file = OpenOptions::new().write(true).open(&path)?;
            file.set_len(f.durable + kept)?;
            if kept > 0 && random().is_multiple_of(2) {
                // A page of the kept part never reached the disk.
                let span = (random() % kept.min(4096)) + 1;
                let at = f.durable + random() % (kept - span + 1);
                let mut file = file;
                file.seek(SeekFrom::Start(at))?;
                file.write_all(&vec![0u8; span as usize])?;
            }
        }
        Ok(lost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_power_cut_loses_what_no_fsync_covered_and_nothing_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let disk = Disk::simulated();
        // Durable: written, synced, its directory synced.
        let a = d.join("a");
        let mut f = disk.create_new(&a).expect("create");
        disk.write(&mut f, &a, b"durable").expect("write");
        disk.sync(&f, &a).expect("sync");
        disk.sync_dir(d).expect("sync dir");
        disk.write(&mut f, &a, b" and not").expect("write");
        // Created and synced, but its directory entry never was.
        let b = d.join("b");
        let mut g = disk.create_new(&b).expect("create");
        disk.write(&mut g, &b, b"orphan").expect("write");
        disk.sync(&g, &b).expect("sync");
        // A durable file removed, and one renamed over, without a
        // directory sync: both come back.
        std::fs::write(d.join("c"), b"old c").expect("write");
        std::fs::write(d.join("e"), b"old e").expect("write");
        disk.remove(&d.join("c")).expect("remove");
        std::fs::write(d.join("e.tmp"), b"new e").expect("write");
        disk.rename(&d.join("e.tmp"), &d.join("e")).expect("rename");
        disk.crash();
        assert!(disk.write(&mut f, &a, b"x").is_err(), "a dead disk");
        let mut zero = || 0;
        let lost = disk.lose_unsynced(&mut zero).expect("applied");
        assert_eq!(std::fs::read(&a).expect("a"), b"durable");
        assert!(!b.exists());
        assert_eq!(std::fs::read(d.join("c")).expect("c"), b"old c");
        assert_eq!(std::fs::read(d.join("e")).expect("e"), b"old e");
        assert_eq!((lost.files_gone, lost.entries_undone), (1, 2));
    }
}
