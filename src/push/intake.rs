//! Central's intake of `edgeflow-push/1` (docs/PROTOCOL.md, "Push"): the
//! ingest protocol's framing with edges instead of fleets. An edge says
//! HELLO with its name (its `node.id`) and its own push token, checked
//! against the `[[edge]]` of that name; every BATCH is encoding 2, read
//! against central's reference data and settings ([`super::inbox`]) before
//! it is acknowledged. A batch whose header disagrees with central's
//! settings is refused whole; an update central cannot apply is rejected
//! alone, with a reason code of its own, and the rest of the batch goes on.
//! The batch is logged as it came: central's dataflow reads it from the
//! log, so a restarted central rebuilds the same state.

use std::sync::Arc;

use crate::ingest::frame::ErrorCode;
use crate::ingest::intake::Intake;
use crate::ingest::validate::Validated;
use crate::log::Encoding;
use crate::reference::Reference;
use crate::topology::Fleet;

use super::inbox::{self, Refused};

/// Rejection reason codes of push updates (docs/PROTOCOL.md, "Push"),
/// beside the telemetry ones.
pub mod reason {
    /// The update does not decode (cut short, unknown kind, a sketch of
    /// another version, impossible figures).
    pub const MALFORMED: u8 = 20;
    /// Its segment is not in central's road network.
    pub const UNKNOWN_SEGMENT: u8 = 21;
    /// Its charger is not in central's charger list.
    pub const UNKNOWN_CHARGER: u8 = 22;
}

/// The reason code of a refused update.
pub fn reason_code(refused: &Refused) -> u8 {
    match refused {
        Refused::Malformed(_) => reason::MALFORMED,
        Refused::UnknownSegment(_) => reason::UNKNOWN_SEGMENT,
        Refused::UnknownCharger(_) => reason::UNKNOWN_CHARGER,
    }
}

/// Edges' pushes, checked against central's reference and settings.
pub struct Partials {
    /// Central's reference data.
    pub reference: Arc<Reference>,
    /// The edges that may push, with their token hashes (swapped by a
    /// reload).
    pub edges: arc_swap::ArcSwap<Vec<Fleet>>,
    /// Central's window length, ms.
    pub window_ms: u64,
}

impl Intake for Partials {
    fn admit(&self, token: &str, sender: &str) -> Result<(), String> {
        let edges = self.edges.load();
        let edge = edges
            .iter()
            .find(|e| e.name == sender)
            .ok_or_else(|| format!("no [[edge]] is named {sender:?}"))?;
        crate::wire::token::find([edge.token_sha256], token)
            .map(|_| ())
            .ok_or_else(|| format!("wrong token for edge {sender:?}"))
    }

    fn check(
        &self,
        encoding: Encoding,
        records: &[u8],
        _latest_ms: u64,
    ) -> Result<Validated, (ErrorCode, String)> {
        if encoding != Encoding::Partials {
            return Err((
                ErrorCode::BadFrame,
                "edgeflow-push/1 batches are encoding 2 (partials)".into(),
            ));
        }
        let resolution = self.reference.zone_settings.position_resolution;
        let (_, read) = inbox::read(records, &self.reference, self.window_ms, resolution)
            .map_err(|e| (ErrorCode::Mismatch, e.to_string()))?;
        let mut v = Validated {
            kept: records.to_vec(),
            ..Validated::default()
        };
        for r in read {
            match r {
                Ok(_) => v.accepted += 1,
                Err((i, why)) => {
                    v.rejections
                        .push((i as u32, reason_code(&why), why.to_string()));
                }
            }
        }
        Ok(v)
    }

    fn datagrams(&self) -> bool {
        false
    }

    fn reload(&self, topology: &crate::topology::Topology) {
        self.edges.store(Arc::new(topology.edges.clone()));
    }
}
