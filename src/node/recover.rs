//! A node's start from its log: open it (the lock first, so nothing is read
//! or repaired while another node runs; a torn tail cut, damage stopped or
//! skipped as `[log] on_corruption` says), check it against its checkpoint
//! ([`crate::checkpoint::check_oldest`], [`crate::checkpoint::check_end`],
//! the same checks replay makes), then feed every kept entry to the fresh
//! dataflow, so a restarted node carries on with the state it had.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use super::EdgeError;
use crate::checkpoint::{Checkpoint, Resume, Settings, Tracker};
use crate::input::Chunk;
use crate::log::disk::Disk;
use crate::log::{LogReader, LogWriter, Recovery};
use crate::reference::Reference;
use crate::topology::{Log, Topology};

/// A log opened and checked, ready to be replayed and appended to.
pub struct Recovered {
    /// Appends new batches.
    pub writer: LogWriter,
    /// What opening it found.
    pub recovery: Recovery,
    /// Its checkpoint, if segments were deleted.
    pub checkpoint: Option<Checkpoint>,
    /// Where the dataflow starts.
    pub resume: Resume,
    /// The settings checkpoints record (checked against the checkpoint's).
    pub settings: Settings,
}

/// Opens the log of `topology` on `disk` and checks it; says on stderr what
/// it repaired or skipped.
pub fn open(topology: &Topology, log: &Log, disk: Disk) -> Result<Recovered, EdgeError> {
    let (mut writer, recovery) =
        LogWriter::open_on(&log.dir, log.segment_bytes, disk, log.on_corruption)?;
    for s in &recovery.skipped {
        tracing::warn!(
            "log: skipped damage at byte {} of {}: {} bytes, {} entries lost ({}), as [log] on_corruption = \"skip\" allows",
            s.offset,
            s.path.display(),
            s.bytes,
            s.entries,
            s.reason
        );
    }
    let checkpoint = Checkpoint::load(&log.dir)?;
    let settings = Settings::of(&topology.time, &topology.reference_sha256);
    if let Some(cp) = &checkpoint {
        if let Some(notice) = cp.check_settings(&log.dir, &settings)? {
            tracing::warn!("{notice}");
        }
    }
    if let Some((path, at)) = &recovery.truncated_at {
        tracing::warn!(
            "log: cut a torn tail of {} bytes at byte {at} of {} (written after the last fsync: never acknowledged)",
            recovery.truncated_bytes,
            path.display()
        );
    }
    let first_seq = checkpoint.as_ref().map_or(0, |cp| cp.first_seq);
    let oldest = Some(recovery.first_seq);
    crate::checkpoint::check_oldest(&log.dir, first_seq, checkpoint.is_some(), oldest)?;
    crate::checkpoint::check_end(&log.dir, first_seq, writer.next_seq())?;
    // Left over from a crash between writing the checkpoint and deleting.
    writer.delete_before(first_seq)?;
    let reference = &topology.reference;
    let resume = checkpoint
        .as_ref()
        .map(|cp| cp.resume(reference))
        .unwrap_or_default();
    Ok(Recovered {
        writer,
        recovery,
        checkpoint,
        resume,
        settings,
    })
}

/// Where the replay of the log leaves the node.
pub struct Replayed {
    /// Each sender's next batch number.
    pub next: FxHashMap<String, u64>,
    /// The window the replay reaches: the files sinks hold their writes
    /// until emissions get there.
    pub window: u64,
}

/// Feeds every entry the checkpoint keeps to the dataflow through `live`,
/// following it with `tracker` (and publishing its watermark in
/// `watermark`).
pub fn replay(
    topology: &Topology,
    log: &Log,
    recovered: &Recovered,
    reference: &Reference,
    tracker: &mut Tracker,
    live: &SyncSender<Chunk>,
    watermark: &Arc<AtomicU64>,
) -> Result<Replayed, EdgeError> {
    let first_seq = recovered.resume.first_seq;
    let starts: BTreeSet<u64> = crate::log::segments(&log.dir)?
        .into_iter()
        .map(|(first, _)| first)
        .collect();
    watermark.store(tracker.watermark(), Ordering::Release);
    let mut last_watermark = 0;
    for entry in LogReader::open_with(&log.dir, log.on_corruption)? {
        let entry = entry?;
        if entry.seq < first_seq {
            continue;
        }
        let chunk =
            Chunk::from_batch(entry.seq, entry.encoding, entry.records).with_sender(&entry.sender);
        if starts.contains(&entry.seq) {
            tracker.segment_started(entry.seq);
        }
        last_watermark = tracker.watermark();
        let items = chunk.resolve_all(reference);
        let times = chunk.times(&items, tracker.clock().max, tracker.spec());
        tracker.observe_with(&items, &times);
        watermark.store(tracker.watermark(), Ordering::Release);
        if live.send(chunk).is_err() {
            return Err(EdgeError::Runtime(
                "the dataflow stopped during recovery".into(),
            ));
        }
    }
    let mut next: FxHashMap<String, u64> = recovered
        .recovery
        .senders
        .iter()
        .map(|(s, last)| (s.clone(), last + 1))
        .collect();
    for (sender, n) in recovered.checkpoint.iter().flat_map(|cp| &cp.senders) {
        let e = next.entry(sender.clone()).or_insert(*n);
        *e = (*e).max(*n);
    }
    Ok(Replayed {
        next,
        window: topology.time.window_start(last_watermark),
    })
}
