//! All integration tests in one binary (one link, fast CI).
//!
//! Strategy:
//! - `golden`: the recorded sumo-public telemetry reproduces its expected
//!   aggregates, which were computed independently from the same records;
//!   output is byte-identical for 1, 2 and 4 workers; gzip input works.
//! - `oracle`: seeded random telemetry with out-of-order, late and expired
//!   records; the incremental dataflow's final output equals a batch
//!   recomputation written here from TELEMETRY.md, for 1 to 4 workers.
//! - `bad_input`: every kind of malformed line is rejected with its reason
//!   and line, and costs nothing else.
//! - `bounded`: the dataflow's state is bounded by retention, measured by
//!   differential's own count of the updates its arrangements hold.
//! - `topology`: validation reports every problem at once, with its place.
//! - `cli`: the binary's commands, exit codes and messages.
//! - `demo`: the shop window: what `edgeflow demo` shows is what its node
//!   wrote, as its operator may see it; the map it prints signs in.
//! - `ingest`, `subscribe`: nodes on loopback QUIC, their logs, restarts,
//!   retention, zone reloads, subscribers, and every bad client.
//! - `geo`: map matching and zone roll-ups against batch recomputations.
//! - `faults`: one test per defect of the fault and attack probe (issue
//!   10): records from the future, damaged logs, a shared log directory,
//!   a full disk, changed settings, hostile clients.
//! - `layering`: no import circle between the crate's modules; the
//!   protocols never import each other.
//! - `limits`: the connection-level promises of PROTOCOL.md: connection
//!   limits over both protocols, bad HELLOs, idle timeouts, several
//!   subscriptions per connection, mTLS for subscribers, shutting down,
//!   SIGINT.
//! - `interop`: an independent Python/aioquic client written from
//!   docs/PROTOCOL.md.

mod bad_input;
mod bounded;
mod browser;
mod central;
mod cli;
mod cluster;
mod demo;
mod deploy;
mod faults;
mod geo;
mod golden;
mod hmm;
mod ingest;
mod interop;
mod layering;
mod limits;
mod mqtt;
mod ngsi;
mod observe;
mod oracle;
mod postgres;
mod push;
mod reload;
mod site;
mod subscribe;
mod support;
mod topology;
mod web;
