//! Live ingest over QUIC (docs/PROTOCOL.md).
//!
//! - [`frame`]: the protocol's frames, pure encode/decode.
//! - [`commit`]: group commit to the log, deduplication, hand-over to the
//!   dataflow.
//! - [`validate`]: a batch's records judged one by one; the ACK.
//! - [`server`]: the QUIC server.
//! - [`client`]: the sender (`edgeflow send`, the load generator): batches
//!   a recording, resends what was not acknowledged after a reconnect.

pub mod client;
pub mod commit;
pub mod frame;
pub mod intake;
pub mod server;
pub mod validate;
