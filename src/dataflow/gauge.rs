//! How many updates the dataflow holds, from differential's own log.
//!
//! Every arrangement (the traces behind `reduce`, `join` and `arrange`)
//! reports to the `differential/arrange` log: a batch added (`Batch`), two
//! batches merged into one (`Merge` with `complete`), a batch dropped with
//! its trace (`Drop`); batchers report records waiting to be sealed
//! (`Batcher`). Summed over every worker these give the updates the
//! dataflow holds right now, which retention must keep bounded: each window
//! retires, its updates are retracted and consolidate away.
//!
//! The counts are those of the log's last flush (timely flushes loggers as
//! workers step), so they may lag the dataflow by a step.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use differential_dataflow::logging::{DifferentialEvent, DifferentialEventBuilder};
use timely::worker::Worker;

/// Updates held in arrangements and batchers, all workers.
#[derive(Debug, Default)]
pub struct StateGauge {
    arranged: AtomicI64,
    batching: AtomicI64,
    peak: AtomicI64,
}

/// A reading of a [`StateGauge`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateReading {
    /// Updates held in arrangements now.
    pub arranged: u64,
    /// Updates waiting in batchers now.
    pub batching: u64,
    /// The most updates held (arranged plus batching) at any flush so far.
    pub peak: u64,
}

impl StateGauge {
    /// Counts this worker's arrangements from now on: call before building
    /// the dataflow (operators look their logger up when built).
    pub fn attach(self: &Arc<Self>, worker: &mut Worker) {
        let gauge = self.clone();
        if let Some(mut registry) = worker.log_register() {
            registry.insert::<DifferentialEventBuilder, _>(
                "differential/arrange",
                move |_time, events| {
                    if let Some(events) = events {
                        gauge.record(events.iter().map(|(_, e)| e));
                    }
                },
            );
        }
    }

    fn record<'a>(&self, events: impl Iterator<Item = &'a DifferentialEvent>) {
        let (mut arranged, mut batching) = (0i64, 0i64);
        for event in events {
            match event {
                DifferentialEvent::Batch(b) => arranged += b.length as i64,
                DifferentialEvent::Merge(m) => {
                    if let Some(done) = m.complete {
                        arranged += done as i64 - m.length1 as i64 - m.length2 as i64;
                    }
                }
                DifferentialEvent::Drop(d) => arranged -= d.length as i64,
                DifferentialEvent::Batcher(b) => batching += b.records_diff as i64,
                _ => {}
            }
        }
        let a = self.arranged.fetch_add(arranged, Ordering::Relaxed) + arranged;
        let b = self.batching.fetch_add(batching, Ordering::Relaxed) + batching;
        self.peak.fetch_max(a + b, Ordering::Relaxed);
    }

    /// The counts now.
    pub fn read(&self) -> StateReading {
        let get = |a: &AtomicI64| a.load(Ordering::Relaxed).max(0) as u64;
        StateReading {
            arranged: get(&self.arranged),
            batching: get(&self.batching),
            peak: get(&self.peak),
        }
    }
}
