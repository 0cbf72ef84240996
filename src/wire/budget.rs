//! The node-wide budget of bytes buffered for frames still arriving or
//! waiting for the log (`[ingest] max_buffered_bytes`), and reading a
//! frame within it: bytes are taken from the budget before they are read,
//! so the node never holds more than the budget, whatever the frames
//! announce; when it is used up, reads wait and QUIC flow control stops
//! the senders.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::BytesMut;

use super::envelope::{self, FrameError, HEADER_BYTES};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes read (and taken from the budget) at a time.
pub const READ_CHUNK: usize = 64 << 10;

/// Bytes buffered for frames, all connections together.
#[derive(Debug, Clone)]
pub struct Budget(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    permits: Arc<Semaphore>,
    /// The budget's size.
    capacity: AtomicUsize,
    /// Bytes still to take out of circulation after a shrink (they were
    /// held when it came; they go as they are given back).
    debt: AtomicUsize,
}

/// Bytes taken from the budget, given back when dropped.
#[derive(Debug)]
pub struct Held(Option<OwnedSemaphorePermit>);

impl Budget {
    /// A budget of `bytes`.
    pub fn new(bytes: usize) -> Self {
        let bytes = bytes.min(Semaphore::MAX_PERMITS);
        Budget(Arc::new(Inner {
            permits: Arc::new(Semaphore::new(bytes)),
            capacity: AtomicUsize::new(bytes),
            debt: AtomicUsize::new(0),
        }))
    }

    /// Bytes free now.
    pub fn available(&self) -> usize {
        self.0.permits.available_permits()
    }

    /// Bytes buffered now.
    pub fn buffered(&self) -> usize {
        let c = &self.0;
        (c.capacity.load(Ordering::Relaxed))
            .saturating_sub(c.debt.load(Ordering::Relaxed))
            .saturating_sub(self.available())
    }

    /// Changes the budget's size (a reload). Growing frees bytes at once;
    /// shrinking takes free bytes at once and the rest as frames held now
    /// give theirs back, so nothing held is cut short.
    pub fn resize(&self, bytes: usize) {
        let c = &self.0;
        let bytes = bytes.min(Semaphore::MAX_PERMITS);
        let old = c.capacity.swap(bytes, Ordering::AcqRel);
        if bytes > old {
            let mut grow = bytes - old;
            // Cancel debt first: those bytes never left circulation.
            let debt = c.debt.swap(0, Ordering::AcqRel);
            let cancelled = debt.min(grow);
            grow -= cancelled;
            c.debt.fetch_add(debt - cancelled, Ordering::AcqRel);
            c.permits.add_permits(grow);
        } else {
            c.debt.fetch_add(old - bytes, Ordering::AcqRel);
            self.pay_debt();
        }
    }

    /// Takes free bytes out of circulation up to the debt.
    fn pay_debt(&self) {
        let c = &self.0;
        let debt = c.debt.swap(0, Ordering::AcqRel);
        if debt > 0 {
            let paid = c.permits.forget_permits(debt);
            c.debt.fetch_add(debt - paid, Ordering::AcqRel);
        }
    }

    async fn take(&self, n: usize, held: &mut Held) {
        self.pay_debt();
        // n <= READ_CHUNK fits a u32; the semaphore lives as long as the
        // budget and is never closed.
        if let Ok(p) = self.0.permits.clone().acquire_many_owned(n as u32).await {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Holds `n` bytes of `b` the way a frame being read does.
    fn hold(b: &Budget, n: usize) -> Held {
        let mut held = Held(None);
        let p = b.0.permits.clone().try_acquire_many_owned(n as u32);
        held.0 = Some(p.expect("free bytes"));
        held
    }

    #[test]
    fn a_resize_grows_at_once_and_shrinks_as_held_bytes_come_back() {
        let b = Budget::new(100);
        let held = hold(&b, 60);
        assert_eq!((b.available(), b.buffered()), (40, 60));
        // Shrink to 50: the 40 free go now, 10 more when the 60 return.
        b.resize(50);
        assert_eq!(b.available(), 0);
        drop(held);
        b.pay_debt();
        assert_eq!((b.available(), b.buffered()), (50, 0));
        // Grow: at once.
        b.resize(80);
        assert_eq!(b.available(), 80);
        // Shrink then grow before the debt is paid: only the net moves.
        let held = hold(&b, 80);
        b.resize(30);
        b.resize(70);
        drop(held);
        b.pay_debt();
        assert_eq!((b.available(), b.buffered()), (70, 0));
    }
}
