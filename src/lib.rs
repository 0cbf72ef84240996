//! edgeflow: an edge stream processor for city mobility and energy telemetry.
//!
//! Vehicles and chargers report telemetry (TELEMETRY.md §1); timely and
//! differential dataflow keep windowed aggregates up to date incrementally:
//! congestion per road segment and charging demand per charger (§3).
//! Recorded telemetry replays through the same dataflow as live ingest, and
//! the final aggregates depend only on the records, never on the number of
//! workers, batching or arrival interleaving.
//!
//! # Layers
//! Each layer uses only itself and the layers above it in this list (a
//! test, `tests/it/layering.rs`, reads the imports from the source and
//! fails on a module that reaches up, or on an import circle):
//!
//! 1. **Values and formats**, pure: [`model`] (telemetry records and their
//!    validation), [`codec`] (JSON Lines, CBOR), [`time`] (windows, the
//!    watermark clock, the fate of a late record), [`problem`] (what
//!    validation reports), [`geo`] (map matching, zones, H3 cells),
//!    [`reference`](mod@reference) (road network, chargers, zones from
//!    GeoJSON), [`metrics`] (metric names, defined once), [`aggregate`] (aggregate values in fixed point, CSV rows),
//!    [`partial`] (what an edge pushes to central: partial aggregates
//!    that merge exactly, distinct-vehicle sketches), [`privacy`] (keyed
//!    vehicle hashes).
//! 2. **The log**: [`log`], segmented, checksummed, fsynced, and the disk
//!    it writes through.
//! 3. **Records to aggregates**: [`resolve`] (a valid record checked
//!    against the reference data, reduced to an item), [`input`] (chunks
//!    and their watermark clock), [`pipeline`] (per worker: classify,
//!    pre-aggregate, feed), [`dataflow`] (the timely/differential dataflow
//!    and its emitter; HMM map matching per vehicle; the partials an edge
//!    keeps for central, and central's merge of them), [`output`] (final tables, durable CSV).
//! 4. **Runs**: [`checkpoint`] (what deleted segments leave behind, the
//!    checks a log passes at start) and [`runtime`] (the runtime that runs a
//!    file, a log or a node's live input through the dataflow; with
//!    [`runtime::Cluster`], as one process of a site across servers,
//!    timely's cluster mode, docs/SCALING.md).
//! 5. **Configuration**: [`topology`], the TOML topology file and its
//!    validation.
//! 6. **Protocols**: [`delivery`], what every outward delivery stands on
//!    (a keyed outbox with its delivered frontier, backoff with jitter);
//!    [`wire`], what both QUIC protocols stand on (the
//!    frame envelope, TLS, tokens, admission, the frame byte budget), and
//!    on it the two protocols, which never import each other: [`ingest`]
//!    (devices send batches; validation, the commit loop) and [`subscribe`]
//!    (mobility operators follow aggregates: hub, protocol, server, client);
//!    [`push`] (`edgeflow-push/1`, an edge's partials to central: the
//!    edge's pushing task with its outbox, central's intake of push
//!    batches, and the completeness rule that makes central's windows
//!    final). [`ingest`]'s framing and commit loop serve push too: central
//!    takes push batches through an [`ingest::intake::Intake`] of its own.
//!    [`sink`]: the city sinks, a node's rows delivered to a city's
//!    systems (NGSI-LD entities of the Smart Data Models to a context
//!    broker), on [`delivery`] like the push. [`observe`]: the node's own
//!    metrics (a Prometheus exporter), health and readiness over HTTP.
//!    [`web`]: the live map, a page served over HTTP(S) whose feed is a
//!    subscription of the hub per kind (what the operator may see).
//! 7. **The node**: [`node`] composes them in a role: an edge recovers its
//!    log, builds the dataflow with its sinks, hub and (with a central
//!    sink) pusher, and serves ingest and subscriptions on one listener
//!    (dispatched by ALPN); central ([`node::central`]) does the same with
//!    push batches in place of telemetry and central's merge as its
//!    dataflow. An edge may be one process of a site ([`node::site`]:
//!    waiting for the site's other processes, following its clock).
//! 8. **Tools**: [`tools`] (benchmarks, the demo, the load generator and
//!    the measurement helpers they share).
//!    The binary, `src/main.rs` with one module per subcommand under
//!    `src/cli/`, is the command line over all of it.
//!
//! Each protocol carries its own client beside its server:
//! [`ingest::client`] (`edgeflow send`) and [`subscribe::client`]
//! (`edgeflow subscribe`).
//!
//! A record's way: a QUIC stream ([`node::listener`]) -> [`ingest::server`]
//! (HELLO, BATCH frames of [`ingest::frame`], [`ingest::validate`] with
//! [`resolve`]) -> [`ingest::commit`] (the log, fsync, ACK) -> the node's
//! dataflow thread ([`node::dataflow`], [`runtime::run`] with
//! [`pipeline::Stage`] and [`dataflow`]) -> emissions -> files sinks
//! ([`node::sinks`]) and the hub ([`subscribe::hub`]) -> a subscriber's
//! stream ([`subscribe::server`]); with a central sink, also the edge's
//! partials -> [`push::client`] -> central's [`ingest::server`] ->
//! [`node::central`] -> central's own sinks and hub; with a city sink, the
//! final rows -> [`sink::Feeds`] -> [`sink::ngsi_sink`] -> a broker.

pub mod aggregate;
pub mod checkpoint;
pub mod codec;
pub mod dataflow;
pub mod delivery;

pub mod geo;
pub mod ingest;
pub mod input;
pub mod log;
pub mod metrics;
pub mod model;
pub mod node;
pub mod observe;
pub mod output;
pub mod partial;
pub mod pipeline;
pub mod privacy;
pub mod problem;
pub mod push;
pub mod reference;
pub mod resolve;
pub mod runtime;
pub mod sink;
pub mod subscribe;
pub mod time;
pub mod tools;
pub mod topology;
pub mod web;
pub mod wire;
