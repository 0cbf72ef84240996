//! The push to central (issue 12, being built): an edge sends central the
//! partials of its aggregates ([`crate::partial`]) as they change, over the
//! ingest protocol's framing with BATCH encoding 2, and central merges the
//! partials of every edge ([`crate::dataflow::central`]).
//!
//! - [`outbox`]: what an edge still has to push, coalesced per key, cut
//!   into batches; the watermark a batch may claim and the frontier
//!   central has acknowledged.

//! - [`inbox`]: central's side of a batch: its updates keyed by central's
//!   reference data, or why not.

/// ALPN of the push protocol.
pub const ALPN: &[u8] = b"edgeflow-push/1";

pub mod client;
pub mod completeness;
pub mod inbox;
pub mod intake;
pub mod outbox;
