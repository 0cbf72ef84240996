//! Live subscriptions: mobility operators follow aggregates as they change
//! (docs/PROTOCOL.md, "Subscriptions").
//!
//! ```text
//! dataflow emissions ─> Hub (current rows, revisions) ─> per-subscriber queue
//!                                                         (coalescing, bounded)
//!                                                           └─> writer task ─> QUIC stream
//! ```
//!
//! - [`proto`]: the frames (JSON payloads in the shared envelope,
//!   [`crate::wire::envelope`]).
//! - [`hub`]: rows, revisions, snapshots, resumes, privacy.
//! - [`queue`]: one subscriber's interest and its bounded, coalescing queue.
//! - [`server`]: authentication, scopes and the per-stream writer.
//! - [`client`]: `edgeflow subscribe`, and the state a client rebuilds.

pub mod client;
pub mod hub;
pub mod proto;
pub mod queue;
pub mod server;
