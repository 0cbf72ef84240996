//! The node-wide budget of bytes buffered for frames still arriving or
//! waiting for the log (`[ingest] max_buffered_bytes`), and reading a
//! frame within it: bytes are taken from the budget before they are read,
//! so the node never holds more than the budget, whatever the frames
//! announce; when it is used up, reads wait and QUIC flow control stops
//! the senders.

use std::sync::Arc;

use bytes::BytesMut;

use super::envelope::{self, FrameError, HEADER_BYTES};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes read (and taken from the budget) at a time.
pub const READ_CHUNK: usize = 64 << 10;

/// Bytes buffered for frames, all connections together.
#[derive(Debug, Clone)]
pub struct Budget(Arc<Semaphore>);

/// Bytes taken from the budget, given back when dropped.
#[derive(Debug)]
pub struct Held(Option<OwnedSemaphorePermit>);

impl Budget {
    /// A budget of `bytes`.
    pub fn new(bytes: usize) -> Self {
        Budget(Arc::new(Semaphore::new(bytes.min(Semaphore::MAX_PERMITS))))
    }

    /// Bytes free now.
    pub fn available(&self) -> usize {
        self.0.available_permits()
    }

    async fn take(&self, n: usize, held: &mut Held) {
        // n <= READ_CHUNK fits a u32; the semaphore is never closed.
        if let Ok(p) = self.0.clone().acquire_many_owned(n as u32).await {
            match &mut held.0 {
                Some(h) => h.merge(p),
                None => held.0 = Some(p),
            }
        }
    }

    /// Reads one frame (type byte, u32 big-endian length, payload) of at
    /// most `max` payload bytes, taking its bytes from the budget as they
    /// are read. Returns the whole frame and the bytes held for it.
    pub async fn read_frame(
        &self,
        recv: &mut quinn::RecvStream,
        max: usize,
    ) -> Result<(BytesMut, Held), FrameError> {
        let mut head = [0u8; HEADER_BYTES];
        recv.read_exact(&mut head)
            .await
            .map_err(|e| FrameError::CutShort(format!("frame header: {}", envelope::chain(&e))))?;
        let len = envelope::length(&head);
        if len > max {
            return Err(FrameError::TooLarge { len, max });
        }
        let mut held = Held(None);
        let mut buf = BytesMut::with_capacity(HEADER_BYTES + len.min(READ_CHUNK));
        buf.extend_from_slice(&head);
        while buf.len() < HEADER_BYTES + len {
            let n = (HEADER_BYTES + len - buf.len()).min(READ_CHUNK);
            self.take(n, &mut held).await;
            let at = buf.len();
            buf.resize(at + n, 0);
            recv.read_exact(&mut buf[at..])
                .await
                .map_err(|e| FrameError::CutShort(envelope::chain(&e)))?;
        }
        Ok((buf, held))
    }
}
