//! What a connection's batches are checked by. The ingest protocol's
//! framing (HELLO, WELCOME, one BATCH per stream, ACK after the log's
//! fsync, resends recognised by batch number) carries two protocols, told
//! apart by ALPN: devices' telemetry (`edgeflow-ingest/1`, [`Telemetry`])
//! and edges' partials pushed to a central node (`edgeflow-push/1`, the
//! intake in `crate::push::intake`). An [`Intake`] is what differs: who
//! may say HELLO, and what a batch must hold.

use std::sync::Arc;

use arc_swap::ArcSwap;

use super::frame::ErrorCode;
use super::validate::{validate, Validated};
use crate::log::Encoding;
use crate::reference::Reference;

/// A protocol's rules behind the shared framing.
pub trait Intake: Send + Sync + 'static {
    /// Whether `token` lets `sender` in; why not otherwise.
    fn admit(&self, token: &str, sender: &str) -> Result<(), String>;
    /// Checks a batch (blocking: run off the async threads): what is kept
    /// and what is rejected, or why the whole batch is refused. Records
    /// stamped after `latest_ms` are in the future.
    fn check(
        &self,
        encoding: Encoding,
        records: &[u8],
        latest_ms: u64,
    ) -> Result<Validated, (ErrorCode, String)>;
    /// Whether unsequenced single-record datagrams are taken.
    fn datagrams(&self) -> bool;
    /// Takes the tokens of a reloaded topology (connections admitted
    /// before stay; the next HELLO meets the new tokens).
    fn reload(&self, topology: &crate::topology::Topology);
}

/// Devices' telemetry: a fleet's token, records checked one by one
/// against the model and the reference data ([`validate`]).
pub struct Telemetry {
    /// Reference data, to reject unknown chargers before acknowledging.
    pub reference: Arc<Reference>,
    /// SHA-256 of every fleet's token.
    pub token_hashes: ArcSwap<Vec<[u8; 32]>>,
}

impl Telemetry {
    /// The fleets' tokens of `topology`.
    pub fn token_hashes(topology: &crate::topology::Topology) -> Vec<[u8; 32]> {
        topology.fleets.iter().map(|f| f.token_sha256).collect()
    }
}

impl Intake for Telemetry {
    fn admit(&self, token: &str, _sender: &str) -> Result<(), String> {
        crate::wire::token::find(self.token_hashes.load().iter().copied(), token)
            .map(|_| ())
            .ok_or_else(|| "unknown token".to_owned())
    }

    fn check(
        &self,
        encoding: Encoding,
        records: &[u8],
        latest_ms: u64,
    ) -> Result<Validated, (ErrorCode, String)> {
        if encoding == Encoding::Partials {
            return Err((
                ErrorCode::BadFrame,
                "encoding 2 (partials) belongs to edgeflow-push/1, not to telemetry ingest".into(),
            ));
        }
        Ok(validate(encoding, records, &self.reference, latest_ms))
    }

    fn datagrams(&self) -> bool {
        true
    }

    fn reload(&self, topology: &crate::topology::Topology) {
        self.token_hashes
            .store(Arc::new(Telemetry::token_hashes(topology)));
    }
}
