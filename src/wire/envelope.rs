//! The frame envelope both protocols share (docs/PROTOCOL.md "Frames"):
//! `u8 type, u32 length (big-endian), payload`. Sans-IO splitting and
//! writing, plus reading one frame from a QUIC stream; what a payload means
//! is the protocol's business (`ingest::frame`, `subscribe::proto`).

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;

/// Bytes of the header: type and length.
pub const HEADER_BYTES: usize = 5;

/// Why a frame cannot be taken.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    /// The announced length is above the limit (nothing was buffered).
    #[error("frame of {len} bytes is larger than the limit of {max}")]
    TooLarge {
        /// Announced payload length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The payload does not parse (the protocol says why).
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The stream ended or failed before the frame was complete.
    #[error("frame cut short: {0}")]
    CutShort(String),
}

/// An error with its sources, `outer: inner: ...` (a stream's "connection
/// lost" alone does not say that the peer refused a certificate).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The payload length a header announces.
pub fn length(head: &[u8; HEADER_BYTES]) -> usize {
    u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize
}

/// Takes one whole frame off the front of `buf`: its type and payload.
/// `Ok(None)`: more bytes are needed (nothing consumed). A length above
/// `max_len` is an error before any payload is buffered.
pub fn split(buf: &mut BytesMut, max_len: usize) -> Result<Option<(u8, Bytes)>, FrameError> {
    let Some(head) = buf.first_chunk::<HEADER_BYTES>() else {
        return Ok(None);
    };
    let (kind, len) = (head[0], length(head));
    if len > max_len {
        return Err(FrameError::TooLarge { len, max: max_len });
    }
    if buf.len() < HEADER_BYTES + len {
        return Ok(None);
    }
    let mut frame = buf.split_to(HEADER_BYTES + len);
    Ok(Some((kind, frame.split_off(HEADER_BYTES).freeze())))
}

/// Appends a frame of type `kind` whose payload `body` writes.
pub fn put(out: &mut BytesMut, kind: u8, body: impl FnOnce(&mut BytesMut)) {
    let start = out.len();
    out.put_u8(kind);
    out.put_u32(0);
    body(out);
    let len = (out.len() - start - HEADER_BYTES) as u32;
    out[start + 1..start + HEADER_BYTES].copy_from_slice(&len.to_be_bytes());
}

/// Reads one frame of at most `max_len` payload bytes from `recv` (a
/// client reading an answer; the node reads within its budget,
/// [`crate::wire::budget::Budget::read_frame`]).
pub async fn read(recv: &mut quinn::RecvStream, max_len: usize) -> Result<(u8, Bytes), FrameError> {
    let mut head = [0u8; HEADER_BYTES];
    recv.read_exact(&mut head)
        .await
        .map_err(|e| FrameError::CutShort(format!("frame header: {}", chain(&e))))?;
    let len = length(&head);
    if len > max_len {
        return Err(FrameError::TooLarge { len, max: max_len });
    }
    let mut payload = vec![0u8; len];
    recv.read_exact(&mut payload)
        .await
        .map_err(|e| FrameError::CutShort(chain(&e)))?;
    Ok((head[0], payload.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_waits_for_whole_frames_and_refuses_long_ones_early() {
        let mut out = BytesMut::new();
        put(&mut out, 0x03, |b| b.put_slice(b"abc"));
        put(&mut out, 0x7F, |_| {});
        assert_eq!(&out[..8], &[0x03, 0, 0, 0, 3, b'a', b'b', b'c']);
        let mut partial = BytesMut::from(&out[..6]);
        assert_eq!(split(&mut partial, 16), Ok(None));
        assert_eq!(partial.len(), 6, "nothing consumed");
        assert_eq!(
            split(&mut out, 16),
            Ok(Some((0x03, Bytes::from_static(b"abc"))))
        );
        assert_eq!(split(&mut out, 16), Ok(Some((0x7F, Bytes::new()))));
        assert_eq!(split(&mut out, 16), Ok(None));
        let mut huge = BytesMut::from(&[0x03, 0, 1, 0, 0][..]);
        assert_eq!(
            split(&mut huge, 16),
            Err(FrameError::TooLarge {
                len: 65_536,
                max: 16
            })
        );
    }
}
