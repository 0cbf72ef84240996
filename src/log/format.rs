//! The bytes of a segment: entries, their checksum, and the search for
//! proof that damaged bytes were durable (the module doc of [`super`]).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use bytes::Bytes;

use super::{
    io_err, Encoding, Entry, LogError, FIXED_PAYLOAD, FIXED_PAYLOAD_V1, MAGIC, MAGIC_V1,
    MAX_ENTRY_BYTES, MAX_SENDER_LEN,
};

/// A segment's format version, from its magic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Version {
    V1,
    V2,
}

impl Version {
    pub(super) fn of(magic: &[u8]) -> Option<Version> {
        if magic == MAGIC {
            Some(Version::V2)
        } else if magic == MAGIC_V1 {
            Some(Version::V1)
        } else {
            None
        }
    }

    pub(super) fn fixed(self) -> usize {
        match self {
            Version::V1 => FIXED_PAYLOAD_V1,
            Version::V2 => FIXED_PAYLOAD,
        }
    }
}

impl Entry {
    pub(super) fn encode(&self, durable: u64, out: &mut Vec<u8>) {
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
    pub(super) fn decode(payload: &[u8], version: Version) -> Result<(Entry, u64), String> {
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
            2 => Encoding::Partials,
            3 => Encoding::Clock,
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
pub(super) enum Read1 {
    Entry(Entry, u64),
    End,
    Damaged(String),
}

pub(super) fn read_entry<R: Read>(r: &mut R, version: Version) -> io::Result<Read1> {
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

/// Searches a segment after damage at `at` for the first valid entry
/// numbered after `last_seq` that `wanted(seq, durable, offset)` accepts
/// (`durable` is 0 in version 1). Returns its offset, the entry and its
/// size on disk. Cheap filters (a plausible length and number) come before
/// the checksum, so the scan costs about one pass over the rest.
pub(super) fn find_entry(
    path: &Path,
    at: u64,
    last_seq: Option<u64>,
    version: Version,
    wanted: impl Fn(u64, u64, u64) -> bool,
) -> Result<Option<(u64, Entry, u64)>, LogError> {
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
    let fixed = version.fixed();
    // Entries numbered after the damage; at most one per `fixed + 8` bytes.
    let first = last_seq.map_or(0, |s| s + 1);
    let most = first + (rest.len() / (fixed + 8)) as u64 + 1;
    for o in 1..rest.len().saturating_sub(8 + fixed) {
        let len = u32_at(&rest, o) as usize;
        if !(fixed..=MAX_ENTRY_BYTES).contains(&len) || o + 8 + len > rest.len() {
            continue;
        }
        let payload = &rest[o + 8..o + 8 + len];
        let seq = u64_at(payload, 0);
        let durable = match version {
            Version::V1 => 0,
            Version::V2 => u64_at(payload, 16),
        };
        let offset = at + o as u64;
        if seq < first || seq > most || !wanted(seq, durable, offset) {
            continue;
        }
        if crc32fast::hash(payload) == u32_at(&rest, o + 4) {
            if let Ok((entry, _)) = Entry::decode(payload, version) {
                return Ok(Some((offset, entry, 8 + len as u64)));
            }
        }
    }
    Ok(None)
}

/// Searches a version 2 segment after damage at `at` for proof that the
/// damaged bytes were durable: a valid entry, numbered after `last_seq`,
/// whose `durable` field lies beyond `at`. Returns its offset.
pub(super) fn durable_after(
    path: &Path,
    at: u64,
    last_seq: Option<u64>,
) -> Result<Option<u64>, LogError> {
    let proof = find_entry(path, at, last_seq, Version::V2, |_, durable, offset| {
        durable > at && durable <= offset
    })?;
    Ok(proof.map(|(offset, _, _)| offset))
}
