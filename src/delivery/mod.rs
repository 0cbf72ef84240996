//! What every outward delivery stands on (the push to central, the city
//! sinks): a keyed outbox that coalesces values, tracks batches in flight
//! and says how far delivery is complete ([`outbox`]), the retry schedule
//! ([`backoff`]), the gate a delivery puts on log retention ([`gate`]),
//! and the durable record of what a target acknowledged ([`ledger`]).
//! Sans-IO where it can be: each sink brings its own transport and
//! encoding.

pub mod backoff;
pub mod gate;
pub mod ledger;
pub mod outbox;
