//! Live ingest over QUIC (docs/PROTOCOL.md).
//!
//! - [`frame`]: the protocol's frames, pure encode/decode.

pub mod frame;
