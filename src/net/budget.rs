//! The node-wide budget of bytes buffered for frames still arriving or
//! waiting for the log (`[ingest] max_buffered_bytes`), and reading a
//! frame within it: bytes are taken from the budget before they are read,
//! so the node never holds more than the budget, whatever the frames
//! announce; when it is used up, reads wait and QUIC flow control stops
//! the senders.

use std::sync::Arc;

use bytes::BytesMut;
use thiserror::Error;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes read (and taken from the budget) at a time.
pub const READ_CHUNK: usize = 64 << 10;

/// Why a frame could not be read.
#[derive(Debug, Error)]
pub enum ReadError {
    /// The announced length is above the limit.
    #[error("frame of {len} bytes is larger than the limit of {max}")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The stream ended or failed before the frame was complete.
    #[error("frame cut short: {0}")]
    CutShort(String),
}

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
    ) -> Result<(BytesMut, Held), ReadError> {
        let mut head = [0u8; 5];
        recv.read_exact(&mut head)
            .await
            .map_err(|e| ReadError::CutShort(format!("frame header: {e}")))?;
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if len > max {
            return Err(ReadError::TooLarge { len, max });
        }
        let mut held = Held(None);
        let mut buf = BytesMut::with_capacity(5 + len.min(READ_CHUNK));
        buf.extend_from_slice(&head);
        while buf.len() < 5 + len {
            let n = (5 + len - buf.len()).min(READ_CHUNK);
            self.take(n, &mut held).await;
            let at = buf.len();
            buf.resize(at + n, 0);
            recv.read_exact(&mut buf[at..])
                .await
                .map_err(|e| ReadError::CutShort(e.to_string()))?;
        }
        Ok((buf, held))
    }
}
