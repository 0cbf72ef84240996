//! `[[sink]] type = "postgres"` (being built).

use std::future::Future;

use super::driver::{Add, Outcome, Row, Settings, Target};
use super::SinkContext;
use crate::aggregate::AggKey;
use crate::topology::PostgresSink;

/// The postgres transport of a sink.
pub struct Postgres {
    cfg: PostgresSink,
}

impl Postgres {
    /// The transport of sink `cfg`.
    pub fn new(cfg: PostgresSink, _ctx: SinkContext) -> anyhow::Result<Self> {
        anyhow::bail!("sink {}: the postgres sink is not built yet", cfg.name)
    }
}

impl Target for Postgres {
    type Request = ();

    fn what(&self) -> String {
        format!("postgres sink {}", self.cfg.name)
    }

    fn settings(&self) -> Settings {
        Settings {
            max_rows: 1,
            max_in_flight: 1,
            max_hold: self.cfg.max_hold,
            latest_only: false,
            exclusive: false,
            ledger: None,
            provisional: false,
        }
    }

    fn ledger_id(&self, _key: &AggKey) -> Option<String> {
        None
    }

    fn request(&mut self) {}

    fn add(&mut self, _request: &mut (), _rows: usize, _row: &Row) -> Add {
        Add::Never("not built yet".into())
    }

    #[allow(clippy::manual_async_fn)] // a skeleton: the real send has work before its future
    fn send(&mut self, _request: ()) -> impl Future<Output = Outcome> + Send + 'static {
        async { Outcome::Refused("not built yet".into()) }
    }
}
