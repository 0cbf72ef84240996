//! The log's recovery tests, named after the failure each covers.

use super::*;
use std::fs::OpenOptions;
use std::io::Write;

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

#[test]
fn with_skip_damage_is_skipped_counted_and_the_numbering_stays_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut w, _) = LogWriter::open(dir.path(), 300).expect("open");
    append_n(&mut w, 4);
    for n in 4..20 {
        w.append("fleet-a", n, Encoding::JsonLines, Bytes::from("{}\n"))
            .expect("append");
        w.sync().expect("sync");
    }
    drop(w);
    let segs = segments(dir.path()).expect("list");
    assert!(segs.len() > 2, "small segments");
    // Damage in an older segment and in the newest one.
    for (_, path) in [&segs[0], segs.last().expect("newest")] {
        let offsets = entry_offsets(path);
        let mut bytes = std::fs::read(path).expect("read");
        bytes[offsets[0] as usize + 12] ^= 0x01;
        std::fs::write(path, bytes).expect("write");
    }
    assert!(matches!(
        LogWriter::open(dir.path(), 300),
        Err(LogError::Corrupt { .. })
    ));
    let (mut w, rec) =
        LogWriter::open_on(dir.path(), 300, disk::Disk::real(), OnCorruption::Skip).expect("skips");
    assert_eq!(rec.skipped.len(), 2, "{:?}", rec.skipped);
    assert_eq!(rec.skipped.iter().map(|s| s.entries).sum::<u64>(), 2);
    assert_eq!((rec.entries, w.next_seq()), (18, 20));
    append_n(&mut w, 1);
    drop(w);
    let all: Vec<Entry> = LogReader::open_with(dir.path(), OnCorruption::Skip)
        .expect("open")
        .collect::<Result<_, _>>()
        .expect("readable, skipping");
    assert_eq!(all.len(), 21, "every number, the lost ones empty");
    assert!(all.iter().enumerate().all(|(i, e)| e.seq == i as u64));
    assert_eq!(all.iter().filter(|e| e.is_placeholder()).count(), 2);
}
