//! What both QUIC protocols stand on, below ingest and subscriptions: no
//! protocol here, so either may use it without depending on the other (the
//! node dispatches connections to them by ALPN).
//!
//! - [`envelope`]: the frame envelope (`u8 type, u32 length, payload`),
//!   split, written and read in one place.
//! - [`tls`]: TLS 1.3 server and client configurations, mTLS.
//! - [`token`]: bearer tokens against SHA-256 hashes, in constant time.
//! - [`admission`]: connection slots before and after authentication.
//! - [`budget`]: the node-wide budget of buffered frame bytes, and reading
//!   a frame within it.

pub mod admission;
pub mod budget;
pub mod connect;
pub mod envelope;
pub mod tls;
pub mod token;
