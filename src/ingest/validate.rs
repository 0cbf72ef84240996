//! A batch's records judged one by one, and the ACK that tells the sender
//! (docs/PROTOCOL.md "Records", "Session"). Pure: no sockets, the wall
//! clock passed in.

use crate::codec::{cbor_items, decode_json, CborItem};
use crate::log::Encoding;
use crate::model::RecordError;
use crate::reference::Reference;
use crate::resolve::{resolve, Item};

use super::frame::{reason_code, Frame};

/// A batch after validation.
#[derive(Debug, Default)]
pub struct Validated {
    /// The accepted records' bytes, in the batch's encoding, back to back.
    pub kept: Vec<u8>,
    /// End offset in `kept` of each accepted record.
    pub ends: Vec<u32>,
    /// The accepted records, resolved for the dataflow.
    pub items: Vec<Item>,
    /// Index in the batch of each accepted record.
    pub index: Vec<u32>,
    /// Rejections: index in the batch, reason code, message.
    pub rejections: Vec<(u32, u8, String)>,
    /// Units accepted: records (`items.len()`), or a push batch's updates
    /// (whose `items` are empty: central reads them from the log entry).
    pub accepted: usize,
}

/// Validates a batch record by record against the model and the reference
/// data. Records stamped after `latest_ts` (the node's wall clock plus
/// `[windows] max_future`) are rejected as `future`.
pub fn validate(
    encoding: Encoding,
    records: &[u8],
    reference: &Reference,
    latest_ts: u64,
) -> Validated {
    let mut v = Validated {
        kept: Vec::with_capacity(records.len()),
        ..Validated::default()
    };
    let judge = |i: u32,
                 r: Result<crate::model::Record<'_>, RecordError>,
                 bytes: &[u8],
                 newline: bool,
                 v: &mut Validated| {
        let item = r.and_then(|rec| resolve(&rec, reference)).and_then(|item| {
            if item.ts() > latest_ts {
                Err(RecordError::field(
                    crate::model::RejectReason::Future,
                    "ts_ms",
                    format!(
                        "{} is {} ms ahead of the node's clock, more than windows.max_future allows",
                        item.ts(),
                        item.ts() - latest_ts
                    ),
                ))
            } else {
                Ok(item)
            }
        });
        match item {
            Ok(item) => {
                v.kept.extend_from_slice(bytes);
                if newline {
                    v.kept.push(b'\n');
                }
                v.ends.push(v.kept.len() as u32);
                v.items.push(item);
                v.index.push(i);
            }
            Err(e) => v.rejections.push((i, reason_code(e.reason), e.to_string())),
        }
    };
    match encoding {
        Encoding::JsonLines => {
            let mut i = 0u32;
            for line in records.split(|&b| b == b'\n') {
                let l = line.strip_suffix(b"\r").unwrap_or(line);
                if l.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let r = if l.len() > crate::input::MAX_LINE_BYTES {
                    Err(RecordError::record(
                        crate::model::RejectReason::TooLong,
                        "line too long",
                    ))
                } else {
                    decode_json(l)
                };
                judge(i, r, l, true, &mut v);
                i += 1;
            }
        }
        Encoding::Cbor => {
            for (i, (range, item)) in cbor_items(records).enumerate() {
                let r = match item {
                    CborItem::Record(r) => Ok(r),
                    CborItem::Invalid(e) | CborItem::Fatal(e) => Err(e),
                };
                judge(i as u32, r, &records[range], false, &mut v);
            }
        }
        Encoding::Partials | Encoding::Clock => v.rejections.push((
            0,
            reason_code(crate::model::RejectReason::Syntax),
            "partials are not telemetry: they go to a central node over edgeflow-push/1".into(),
        )),
    }
    v.accepted = v.items.len();
    v
}

/// Most rejections listed in one ACK; the rest are counted (module doc of
/// docs/PROTOCOL.md: records − accepted − listed).
pub const MAX_ACK_REJECTIONS: usize = 1000;
/// Longest rejection message in an ACK, bytes.
pub const MAX_REJECTION_MESSAGE: usize = 200;

/// The ACK of a batch, its rejections capped so that the frame stays within
/// `max_frame_bytes` and [`MAX_ACK_REJECTIONS`]; the last one listed says
/// how many more there were.
pub fn ack(
    sender_seq: u64,
    accepted: u32,
    mut rejections: Vec<(u32, u8, String)>,
    max_frame_bytes: usize,
) -> Frame {
    let total = rejections.len();
    let mut size = 5 + 16;
    let mut listed = 0;
    for (_, _, m) in rejections.iter_mut() {
        if m.len() > MAX_REJECTION_MESSAGE {
            let mut cut = MAX_REJECTION_MESSAGE;
            while !m.is_char_boundary(cut) {
                cut -= 1;
            }
            m.truncate(cut);
        }
        // Room for this one and the note on the last.
        let cost = 7 + m.len();
        if listed == MAX_ACK_REJECTIONS || size + cost + 64 > max_frame_bytes {
            break;
        }
        size += cost;
        listed += 1;
    }
    rejections.truncate(listed);
    if listed < total {
        if let Some((_, _, m)) = rejections.last_mut() {
            m.push_str(&format!(
                " (and {} more rejections not listed)",
                total - listed
            ));
        }
    }
    Frame::Ack {
        sender_seq,
        accepted,
        rejections,
    }
}

/// Milliseconds since the Unix epoch, by the node's wall clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
