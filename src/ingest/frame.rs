//! Frames of the ingest protocol (docs/PROTOCOL.md): pure encoding and
//! decoding, no sockets. The decoder tells "need more bytes" from "invalid",
//! and never allocates more than the frame-size limit allows.

use crate::wire::envelope;
use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::log::Encoding;
use crate::model::RejectReason;

/// ALPN of the ingest protocol.
pub const ALPN: &[u8] = b"edgeflow-ingest/1";

/// Frame type bytes.
pub mod kind {
    /// HELLO: token and sender id.
    pub const HELLO: u8 = 0x01;
    /// WELCOME: the sender's next batch number.
    pub const WELCOME: u8 = 0x02;
    /// BATCH: a numbered batch of records.
    pub const BATCH: u8 = 0x03;
    /// ACK: what was accepted, what was rejected.
    pub const ACK: u8 = 0x04;
    /// ERROR: code and message.
    pub const ERROR: u8 = 0x7F;
}

/// Protocol error codes (docs/PROTOCOL.md "Error codes").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    /// Unknown token.
    Unauthorized = 1,
    /// HELLO malformed or not first.
    BadHello = 2,
    /// No HELLO in time.
    HelloTimeout = 3,
    /// Frame longer than the node's limit.
    FrameTooLarge = 4,
    /// Unknown type, truncated or malformed frame.
    BadFrame = 5,
    /// Batch number above the next expected.
    SequenceGap = 6,
    /// Over the per-connection record rate.
    RateLimited = 7,
    /// The node cannot take more now.
    Overloaded = 8,
    /// The node is stopping.
    ShuttingDown = 9,
    /// A batch with more records than the per-connection rate allows in a
    /// second: it can never pass.
    BatchOverRate = 10,
    /// The node cannot write its log now (disk full or failing): nothing of
    /// the batch was kept; retry later.
    LogUnavailable = 11,
    /// A batch that did not arrive within `batch_timeout`: it was dropped
    /// unacknowledged; send it again.
    BatchTimeout = 12,
    /// A push batch whose settings (window length, H3 resolution, version)
    /// disagree with the central node's: it can never be applied.
    Mismatch = 13,
}

impl ErrorCode {
    /// From the wire.
    pub fn from_u16(v: u16) -> Option<Self> {
        use ErrorCode::*;
        [
            Unauthorized,
            BadHello,
            HelloTimeout,
            FrameTooLarge,
            BadFrame,
            SequenceGap,
            RateLimited,
            Overloaded,
            ShuttingDown,
            BatchOverRate,
            LogUnavailable,
            BatchTimeout,
            Mismatch,
        ]
        .into_iter()
        .find(|c| *c as u16 == v)
    }
}

/// Wire code of a rejection reason (docs/PROTOCOL.md "Rejection reasons"):
/// fixed here, never by declaration order.
pub fn reason_code(r: RejectReason) -> u8 {
    match r {
        RejectReason::Syntax => 1,
        RejectReason::InvalidUtf8 => 2,
        RejectReason::TooLong => 3,
        RejectReason::MissingField => 4,
        RejectReason::WrongType => 5,
        RejectReason::OutOfRange => 6,
        RejectReason::InvalidId => 7,
        RejectReason::UnknownType => 8,
        RejectReason::UnknownStatus => 9,
        RejectReason::UnknownCharger => 10,
        RejectReason::UnknownConnector => 11,
        RejectReason::Future => 12,
        RejectReason::Expired => 13,
    }
}

/// One frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// Client's first frame.
    Hello {
        /// Bearer token.
        token: String,
        /// Sender id.
        sender: String,
    },
    /// Server's answer to HELLO.
    Welcome {
        /// First batch number not yet accepted from this sender.
        next_sender_seq: u64,
    },
    /// A batch of records.
    Batch {
        /// The sender's batch number.
        sender_seq: u64,
        /// Encoding of `records`.
        encoding: Encoding,
        /// The records.
        records: Bytes,
    },
    /// The node's answer to a batch.
    Ack {
        /// The batch.
        sender_seq: u64,
        /// Records accepted (durable).
        accepted: u32,
        /// Rejected records: index, reason code, message.
        rejections: Vec<(u32, u8, String)>,
    },
    /// An error.
    Error {
        /// The code.
        code: u16,
        /// For a person.
        message: String,
    },
}

pub use crate::wire::envelope::FrameError;

fn put_str8(out: &mut BytesMut, s: &str) {
    out.put_u8(s.len().min(255) as u8);
    out.put_slice(&s.as_bytes()[..s.len().min(255)]);
}

impl Frame {
    /// Appends the frame's bytes to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        let t = match self {
            Frame::Hello { .. } => kind::HELLO,
            Frame::Welcome { .. } => kind::WELCOME,
            Frame::Batch { .. } => kind::BATCH,
            Frame::Ack { .. } => kind::ACK,
            Frame::Error { .. } => kind::ERROR,
        };
        envelope::put(out, t, |out| match self {
            Frame::Hello { token, sender } => {
                put_str8(out, token);
                put_str8(out, sender);
            }
            Frame::Welcome { next_sender_seq } => {
                out.put_u64(*next_sender_seq);
            }
            Frame::Batch {
                sender_seq,
                encoding,
                records,
            } => {
                out.put_u64(*sender_seq);
                out.put_u8(*encoding as u8);
                out.put_slice(records);
            }
            Frame::Ack {
                sender_seq,
                accepted,
                rejections,
            } => {
                out.put_u64(*sender_seq);
                out.put_u32(*accepted);
                out.put_u32(rejections.len() as u32);
                for (i, code, msg) in rejections {
                    out.put_u32(*i);
                    out.put_u8(*code);
                    let m = &msg.as_bytes()[..msg.len().min(u16::MAX as usize)];
                    out.put_u16(m.len() as u16);
                    out.put_slice(m);
                }
            }
            Frame::Error { code, message } => {
                out.put_u16(*code);
                let m = &message.as_bytes()[..message.len().min(u16::MAX as usize)];
                out.put_u16(m.len() as u16);
                out.put_slice(m);
            }
        });
    }

    /// The frame as bytes.
    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::new();
        self.encode(&mut b);
        b.freeze()
    }

    /// Decodes one frame from the front of `buf`, consuming it. `Ok(None)`:
    /// more bytes are needed (nothing consumed). A length above `max_len` is
    /// an error before any payload is buffered.
    pub fn decode(buf: &mut BytesMut, max_len: usize) -> Result<Option<Frame>, FrameError> {
        match envelope::split(buf, max_len)? {
            Some((t, payload)) => Self::parse(t, payload).map(Some),
            None => Ok(None),
        }
    }

    /// A frame from its type and payload (as [`envelope::split`] gives
    /// them).
    pub fn parse(t: u8, mut p: Bytes) -> Result<Frame, FrameError> {
        let short = || FrameError::Malformed("payload cut short".into());
        let str8 = |p: &mut Bytes| -> Result<String, FrameError> {
            if p.remaining() < 1 {
                return Err(short());
            }
            let n = p.get_u8() as usize;
            if p.remaining() < n {
                return Err(short());
            }
            String::from_utf8(p.split_to(n).to_vec())
                .map_err(|_| FrameError::Malformed("string is not UTF-8".into()))
        };
        let frame = match t {
            kind::HELLO => {
                let token = str8(&mut p)?;
                let sender = str8(&mut p)?;
                Frame::Hello { token, sender }
            }
            kind::WELCOME => {
                if p.remaining() < 8 {
                    return Err(short());
                }
                Frame::Welcome {
                    next_sender_seq: p.get_u64(),
                }
            }
            kind::BATCH => {
                if p.remaining() < 9 {
                    return Err(short());
                }
                let sender_seq = p.get_u64();
                let encoding = match p.get_u8() {
                    0 => Encoding::JsonLines,
                    1 => Encoding::Cbor,
                    2 => Encoding::Partials,
                    e => return Err(FrameError::Malformed(format!("unknown encoding {e}"))),
                };
                Frame::Batch {
                    sender_seq,
                    encoding,
                    records: p.split_off(0),
                }
            }
            kind::ACK => {
                if p.remaining() < 16 {
                    return Err(short());
                }
                let sender_seq = p.get_u64();
                let accepted = p.get_u32();
                let n = p.get_u32() as usize;
                // Each rejection takes at least 7 bytes: no allocation beyond the frame.
                if n > p.remaining() / 7 {
                    return Err(short());
                }
                let mut rejections = Vec::with_capacity(n);
                for _ in 0..n {
                    if p.remaining() < 7 {
                        return Err(short());
                    }
                    let i = p.get_u32();
                    let code = p.get_u8();
                    let m = p.get_u16() as usize;
                    if p.remaining() < m {
                        return Err(short());
                    }
                    let msg = String::from_utf8_lossy(&p.split_to(m)).into_owned();
                    rejections.push((i, code, msg));
                }
                Frame::Ack {
                    sender_seq,
                    accepted,
                    rejections,
                }
            }
            kind::ERROR => {
                if p.remaining() < 4 {
                    return Err(short());
                }
                let code = p.get_u16();
                let m = p.get_u16() as usize;
                if p.remaining() < m {
                    return Err(short());
                }
                Frame::Error {
                    code,
                    message: String::from_utf8_lossy(&p.split_to(m)).into_owned(),
                }
            }
            other => {
                return Err(FrameError::Malformed(format!(
                    "unknown frame type 0x{other:02x}"
                )))
            }
        };
        if p.has_remaining() && t != kind::BATCH {
            return Err(FrameError::Malformed("trailing bytes in frame".into()));
        }
        Ok(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_byte_by_byte() {
        let frames = vec![
            Frame::Hello {
                token: "t0k3n".into(),
                sender: "fleet-7".into(),
            },
            Frame::Welcome {
                next_sender_seq: 42,
            },
            Frame::Batch {
                sender_seq: 7,
                encoding: Encoding::Cbor,
                records: Bytes::from_static(b"\xa0"),
            },
            Frame::Ack {
                sender_seq: 7,
                accepted: 3,
                rejections: vec![(1, 6, "field `speed_mps`: -1".into())],
            },
            Frame::Error {
                code: ErrorCode::Unauthorized as u16,
                message: "unknown token".into(),
            },
        ];
        let mut wire = BytesMut::new();
        for f in &frames {
            f.encode(&mut wire);
        }
        // Feed one byte at a time: the decoder waits, never misreads.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in wire {
            buf.put_u8(b);
            while let Some(f) = Frame::decode(&mut buf, 1 << 20).expect("valid") {
                got.push(f);
            }
        }
        assert_eq!(got, frames);
    }

    #[test]
    fn oversized_and_malformed_frames_are_errors() {
        let mut b = BytesMut::from(&[kind::BATCH, 0, 0x10, 0, 0][..]);
        assert!(matches!(
            Frame::decode(&mut b, 1024),
            Err(FrameError::TooLarge {
                len: 0x100000,
                max: 1024
            })
        ));
        let mut b = BytesMut::from(&[0x55, 0, 0, 0, 0][..]);
        assert!(matches!(
            Frame::decode(&mut b, 1024),
            Err(FrameError::Malformed(_))
        ));
        let mut b = BytesMut::from(
            &[
                kind::ACK,
                0,
                0,
                0,
                16,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                1,
                0,
                0,
                0,
                0,
                0xff,
                0xff,
                0xff,
                0xff,
            ][..],
        );
        assert!(matches!(
            Frame::decode(&mut b, 1024),
            Err(FrameError::Malformed(_))
        ));
    }
}
