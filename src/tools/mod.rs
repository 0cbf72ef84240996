//! Tools around the node, none of which the node needs: the benchmarks
//! (`edgeflow bench`, `bench-ingest`, `bench-match`, `bench-subscribe`),
//! the demo and the synthetic load generator (`edgeflow simulate`). They
//! drive the node from outside, as an operator's tools would: through its
//! public API, its process and its protocols.
//!
//! - [`measure`]: peak memory, medians, the seeded generator.
//! - [`bench`](mod@bench): the replay path against a plain loop.
//! - [`bench_central`]: central's merge of edges' partials, per core.
//! - [`bench_ingest`]: a node process under QUIC load, durable acks.
//! - [`bench_match`]: map matching with and without the spatial index,
//!   point by point and by HMM, accuracy and speed.
//! - [`bench_matching`]: the replay path with each matcher.
//! - [`bench_postgres`]: the postgres sink's upserts into a database.
//! - [`bench_push`]: edges pushing to a central node, live and after an
//!   outage.
//! - [`bench_subscribe`]: ingest with subscribers, fast and slow.
//! - [`bench_web`]: the live map: a browser's frames, the node's cost of pages.
//! - [`browser`]: headless Chromium over WebDriver.
//! - [`loadgen`]: live synthetic traffic over real QUIC connections.
//! - [`demo`]: the README's first command.

pub mod bench;
pub mod bench_central;
pub mod bench_cluster;
pub mod bench_ingest;
pub mod bench_match;
pub mod bench_matching;
pub mod bench_postgres;
pub mod bench_push;
pub mod bench_sinks;
pub mod bench_subscribe;
pub mod bench_web;
pub mod browser;
pub mod bundled;
pub mod demo;
pub mod loadgen;
pub mod measure;
pub mod ngsi_broker;
