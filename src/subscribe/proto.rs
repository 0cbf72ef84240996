//! Frames of the subscription protocol (docs/PROTOCOL.md, "Subscriptions"):
//! the ingest protocol's envelope (`u8 type`, `u32` big-endian payload
//! length, payload) with a JSON object as every payload, so a client in any
//! language needs a QUIC library and a JSON parser, nothing else.

use bytes::{BufMut, BytesMut};
use serde::{Deserialize, Serialize};

use crate::wire::envelope;
pub use crate::wire::envelope::FrameError;

/// ALPN of the subscription protocol.
pub const ALPN: &[u8] = b"edgeflow-subscribe/1";

/// Frame type bytes.
pub mod kind {
    /// SUBSCRIBE (client): token, kind, filter, mode, resume point.
    pub const SUBSCRIBE: u8 = 0x11;
    /// ROW (server): an upsert or a retraction.
    pub const ROW: u8 = 0x12;
    /// PROGRESS (server): the watermark and revision reached.
    pub const PROGRESS: u8 = 0x13;
    /// LAGGED (server): updates were coalesced because the client is slow.
    pub const LAGGED: u8 = 0x14;
    /// ERROR (server): code and message; the stream ends.
    pub const ERROR: u8 = 0x7F;
}

/// Error codes of the subscription protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[repr(u16)]
pub enum SubError {
    /// Unknown operator token.
    Unauthorized = 1,
    /// Not valid JSON, or a field of the wrong type or value.
    BadRequest = 2,
    /// A kind or key beyond the operator's scopes.
    Forbidden = 3,
    /// A kind or key id that does not exist.
    UnknownKey = 4,
    /// The resume point is not in this node's retained history.
    ResumeUnavailable = 5,
    /// The client read too slowly: its queue passed the hard limit.
    TooSlow = 6,
    /// The node serves `max_connections` sessions; retry later (the code of
    /// the connection close, as in the ingest protocol).
    Overloaded = 8,
    /// The node is stopping.
    ShuttingDown = 9,
}

/// A key filter: ids, or a bounding box `[min_lon, min_lat, max_lon,
/// max_lat]` (a segment by its midpoint, a charger by its position, a zone
/// by its centre).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// Keys by id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ids: Option<Vec<String>>,
    /// Keys within a bounding box.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bbox: Option<[f64; 4]>,
}

/// Where a subscriber resumes: the epoch and revision of the last change it
/// applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResumePoint {
    /// The node run the revision belongs to.
    pub epoch: u64,
    /// The last revision applied.
    pub revision: u64,
}

/// The client's request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subscribe {
    /// Operator bearer token.
    pub token: String,
    /// `congestion`, `charging` or `zone`.
    pub kind: String,
    /// Optional key filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<Filter>,
    /// `provisional` (every update as windows fill) or `final` (default:
    /// final and corrected values only).
    #[serde(default = "final_mode")]
    pub mode: String,
    /// Optional resume point.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<ResumePoint>,
    /// When the resume point is unavailable: a fresh snapshot instead of an
    /// error.
    #[serde(default)]
    pub snapshot_if_unavailable: bool,
}

fn final_mode() -> String {
    "final".into()
}

/// One row change sent to a subscriber.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// `upsert` or `retract`.
    pub op: String,
    /// Key id (segment, charger or zone id).
    pub key: String,
    /// Window start, ms.
    pub window_start_ms: u64,
    /// `provisional`, `final` or `correction` (upserts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// The change's revision.
    pub revision: u64,
    /// The row's fields as in the CSV files (upserts), by header name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<serde_json::Map<String, serde_json::Value>>,
    /// What a person calls the key, from the reference data (upserts of
    /// a street with a name, a charger with one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A progress marker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Node run.
    pub epoch: u64,
    /// Every change up to this revision has been sent.
    pub revision: u64,
    /// The dataflow's watermark, ms: windows ending at or before it are
    /// final; windows retiring at or before it are forgotten.
    pub watermark_ms: u64,
    /// True once: the snapshot is complete.
    pub snapshot: bool,
    /// The node's clock (µs since the Unix epoch) when the newest change
    /// left the dataflow: subscribers on the same clock measure latency.
    #[serde(default)]
    pub published_unix_us: u64,
    /// Window size, ms: a row's window ends `window_ms` after its start.
    #[serde(default)]
    pub window_ms: u64,
    /// Retention, ms: a row retires (is forgotten without a retraction)
    /// once `window_start_ms + window_ms + retention_ms <= watermark_ms`.
    #[serde(default)]
    pub retention_ms: u64,
}

impl Progress {
    /// Whether the row of the window starting at `window_start_ms` has
    /// retired at this marker (never, when the node did not say).
    pub fn retired(&self, window_start_ms: u64) -> bool {
        self.window_ms > 0
            && window_start_ms
                .saturating_add(self.window_ms)
                .saturating_add(self.retention_ms)
                <= self.watermark_ms
    }
}

/// A lag notice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lagged {
    /// Updates replaced by a newer value of the same row before they were
    /// sent, since the last notice.
    pub coalesced: u64,
}

/// An error.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// [`SubError`] code.
    pub code: u16,
    /// For a person.
    pub message: String,
}

/// Any frame of the protocol.
#[derive(Clone, Debug, PartialEq)]
pub enum SubFrame {
    /// Client request.
    Subscribe(Subscribe),
    /// Row change.
    Row(Row),
    /// Progress marker.
    Progress(Progress),
    /// Lag notice.
    Lagged(Lagged),
    /// Error.
    Error(ErrorBody),
}

impl SubFrame {
    /// An error frame.
    pub fn error(code: SubError, message: impl Into<String>) -> Self {
        SubFrame::Error(ErrorBody {
            code: code as u16,
            message: message.into(),
        })
    }

    /// Appends the frame's bytes to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        let (t, json) = match self {
            SubFrame::Subscribe(s) => (kind::SUBSCRIBE, serde_json::to_vec(s)),
            SubFrame::Row(r) => (kind::ROW, serde_json::to_vec(r)),
            SubFrame::Progress(p) => (kind::PROGRESS, serde_json::to_vec(p)),
            SubFrame::Lagged(l) => (kind::LAGGED, serde_json::to_vec(l)),
            SubFrame::Error(e) => (kind::ERROR, serde_json::to_vec(e)),
        };
        // Serializing these plain structs cannot fail.
        let json = json.unwrap_or_default();
        envelope::put(out, t, |out| out.put_slice(&json));
    }

    /// Decodes one frame from the front of `buf`, consuming it; `Ok(None)`:
    /// more bytes are needed.
    pub fn decode(buf: &mut BytesMut, max_len: usize) -> Result<Option<SubFrame>, FrameError> {
        match envelope::split(buf, max_len)? {
            Some((t, payload)) => Self::parse(t, &payload).map(Some),
            None => Ok(None),
        }
    }

    /// A frame from its type and JSON payload.
    pub fn parse(t: u8, payload: &[u8]) -> Result<SubFrame, FrameError> {
        let bad = |e: serde_json::Error| FrameError::Malformed(e.to_string());
        Ok(match t {
            kind::SUBSCRIBE => SubFrame::Subscribe(serde_json::from_slice(payload).map_err(bad)?),
            kind::ROW => SubFrame::Row(serde_json::from_slice(payload).map_err(bad)?),
            kind::PROGRESS => SubFrame::Progress(serde_json::from_slice(payload).map_err(bad)?),
            kind::LAGGED => SubFrame::Lagged(serde_json::from_slice(payload).map_err(bad)?),
            kind::ERROR => SubFrame::Error(serde_json::from_slice(payload).map_err(bad)?),
            other => {
                return Err(FrameError::Malformed(format!(
                    "unknown frame type {other:#04x}"
                )))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_garbage_is_an_error() {
        let frames = [
            SubFrame::Subscribe(Subscribe {
                token: "t".into(),
                kind: "congestion".into(),
                filter: Some(Filter {
                    ids: Some(vec!["a".into()]),
                    bbox: None,
                }),
                mode: "final".into(),
                resume: Some(ResumePoint {
                    epoch: 1,
                    revision: 2,
                }),
                snapshot_if_unavailable: true,
            }),
            SubFrame::Progress(Progress {
                epoch: 1,
                revision: 9,
                watermark_ms: 60_000,
                snapshot: true,
                published_unix_us: 7,
                window_ms: 60_000,
                retention_ms: 900_000,
            }),
            SubFrame::Lagged(Lagged { coalesced: 3 }),
            SubFrame::error(SubError::Forbidden, "no"),
        ];
        let mut buf = BytesMut::new();
        for f in &frames {
            f.encode(&mut buf);
        }
        for f in &frames {
            assert_eq!(
                SubFrame::decode(&mut buf, 1 << 20).expect("valid").as_ref(),
                Some(f)
            );
        }
        let mut garbage = BytesMut::from(&[kind::SUBSCRIBE, 0, 0, 0, 3, b'{', b'x', b'}'][..]);
        assert!(SubFrame::decode(&mut garbage, 1 << 20).is_err());
        let mut huge = BytesMut::from(&[kind::SUBSCRIBE, 0xff, 0, 0, 0][..]);
        assert!(matches!(
            SubFrame::decode(&mut huge, 1 << 20),
            Err(FrameError::TooLarge { .. })
        ));
    }
}
