//! What the QUIC servers share, below both ingest and subscriptions:
//! connection slots and the budget of buffered frame bytes. No protocol
//! here, so either server may use it without depending on the other.
//!
//! - [`admission`]: connection slots before and after authentication.
//! - [`budget`]: the node-wide budget of buffered frame bytes, and reading
//!   a frame within it.

pub mod admission;
pub mod budget;
