//! edgeflow: an edge stream processor for city mobility and energy telemetry.
//!
//! Vehicles and chargers report telemetry (TELEMETRY.md §1); timely and
//! differential dataflow keep windowed aggregates up to date incrementally:
//! congestion per road segment and charging demand per charger (§3).
//! Recorded telemetry replays through the same dataflow as live ingest, and
//! the final aggregates depend only on the records, never on the number of
//! workers, batching or arrival interleaving.
//!
//! # Layout
//! The pure core takes bytes and times as arguments; only `replay` (and the
//! later servers) touch threads, files and clocks.
//!
//! - [`model`]: telemetry records and their validation.
//! - [`codec`]: JSON Lines and CBOR decoding/encoding of records.
//! - [`time`]: windows, watermark, and the fate of a late record.
//! - [`reference`](mod@reference): road network and charger list from GeoJSON.
//! - [`geo`]: map matching (R-tree over the road network), zones and H3 cells.
//! - [`topology`]: the TOML topology file and its validation.
//! - [`aggregate`]: aggregate values, fixed-point sums, CSV rows.
//! - [`net`]: what the QUIC servers share: connection slots, the frame
//!   byte budget.
//! - [`ingest`]: the QUIC ingest protocol and server.
//! - [`input`]: cutting input into chunks; the per-chunk watermark clock.
//! - [`log`]: the durable, segmented, checksummed log of accepted batches
//!   (format, writer and recovery, reader, and the [`log::disk::Disk`] it
//!   writes through, which tests can cut the power of).
//! - [`checkpoint`]: log retention: what deleted segments leave behind.
//! - [`pipeline`]: per worker: decode, classify, pre-aggregate, feed.
//! - [`dataflow`]: the timely/differential dataflow and its emitter.
//! - [`demo`]: an edge node on loopback fed over QUIC, shown live.
//! - [`edge`]: the edge node: ingest, log, live dataflow, sinks.
//! - [`client`]: `send`: streaming a recording to a node, with resends.
//! - [`output`]: final tables and durable CSV files.
//! - [`replay`]: running recorded telemetry through the dataflow.
//! - [`bench`](mod@bench): the synthetic benchmark and its plain-loop baseline.
//! - [`bench_ingest`]: an edge node under synthetic QUIC load.
//! - [`bench_match`]: map-matching throughput on a road network.
//! - [`bench_subscribe`]: ingest and subscriber latency with many subscribers.
//! - [`loadgen`]: synthetic live traffic over QUIC (`simulate`, `bench-ingest`).
//! - [`metrics`]: metric names, defined once.
//! - [`subscribe`]: live subscriptions of mobility operators (hub, protocol, server, client).
//!
//! # Seams for later roles
//! Live QUIC ingest feeds [`pipeline::Stage`] the way [`replay`] does, with
//! the durable log's batches as chunks; subscriptions and pushes consume
//! [`dataflow::emit::Emission`]s (they carry provisional values too); map
//! [`geo::Matcher`] matches reports without a segment id in [`pipeline::resolve`].

pub mod aggregate;
pub mod bench;
pub mod bench_ingest;
pub mod bench_match;
pub mod bench_subscribe;
pub mod checkpoint;
pub mod client;
pub mod codec;
pub mod dataflow;
pub mod demo;

pub mod geo;
pub mod ingest;
pub mod input;
pub mod loadgen;
pub mod log;
pub mod metrics;
pub mod model;
pub mod node;
pub mod output;
pub mod pipeline;
pub mod problem;
pub mod reference;
pub mod replay;
pub mod resolve;
pub mod subscribe;
pub mod time;
pub mod topology;
pub mod wire;
