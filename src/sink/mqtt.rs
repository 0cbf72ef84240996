//! `[[sink]] type = "mqtt"` (being built).

use std::future::Future;

use super::driver::{Add, Outcome, Row, Settings, Target};
use super::SinkContext;
use crate::aggregate::AggKey;
use crate::topology::MqttSink;

/// The mqtt transport of a sink.
pub struct Mqtt {
    cfg: MqttSink,
}

impl Mqtt {
    /// The transport of sink `cfg`.
    pub fn new(cfg: MqttSink, _ctx: SinkContext) -> anyhow::Result<Self> {
        anyhow::bail!("sink {}: the mqtt sink is not built yet", cfg.name)
    }
}

impl Target for Mqtt {
    type Request = ();

    fn what(&self) -> String {
        format!("mqtt sink {}", self.cfg.name)
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
