//! What every outward delivery stands on (the push to central today; the
//! city sinks of issue 13 next): a keyed outbox that coalesces values,
//! tracks batches in flight and says how far delivery is complete
//! ([`outbox`]), and the retry schedule ([`backoff`]). Sans-IO where it
//! can be: each sink brings its own transport and encoding.

pub mod backoff;
pub mod outbox;
