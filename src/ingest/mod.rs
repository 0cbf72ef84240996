//! Live ingest over QUIC (docs/PROTOCOL.md).
//!
//! - [`frame`]: the protocol's frames, pure encode/decode.
//! - [`admission`]: connection slots before and after authentication.
//! - [`budget`]: the node-wide budget of buffered frame bytes.
//! - [`commit`]: group commit to the log, deduplication, hand-over to the
//!   dataflow.
//! - [`server`]: the QUIC server.

pub mod admission;
pub mod budget;
pub mod commit;
pub mod frame;
pub mod server;
