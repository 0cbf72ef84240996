//! Metric names, defined once. Counters are accumulated locally and
//! published once per run or batch, never per record; labels are bounded
//! (reject reasons, aggregate kinds).

/// Records read, all outcomes.
pub const RECORDS_READ: &str = "edgeflow_records_read_total";
/// Records rejected; label `reason` (see `model::RejectReason`).
pub const RECORDS_REJECTED: &str = "edgeflow_records_rejected_total";
/// Records accepted after their window was final.
pub const RECORDS_CORRECTIONS: &str = "edgeflow_records_corrections_total";
/// Records dropped because their window had retired.
pub const RECORDS_EXPIRED: &str = "edgeflow_records_expired_total";
/// Vehicle reports matched to no segment; label `reason`.
pub const RECORDS_UNMATCHED: &str = "edgeflow_records_unmatched_total";
/// Vehicle reports without `segment_id` placed on a segment by the node.
pub const RECORDS_MAP_MATCHED: &str = "edgeflow_records_map_matched_total";
/// Aggregate rows emitted; labels `status`.
pub const ROWS_EMITTED: &str = "edgeflow_rows_emitted_total";

/// Publishes a run's counts to the installed `metrics` recorder (a no-op
/// when none is installed).
pub fn publish(summary: &crate::runtime::RunSummary) {
    let s = &summary.ingest;
    metrics::counter!(RECORDS_READ).increment(s.records);
    for reason in crate::model::RejectReason::ALL {
        let n = s.rejected[reason.index()];
        if n > 0 {
            metrics::counter!(RECORDS_REJECTED, "reason" => reason.as_str()).increment(n);
        }
    }
    metrics::counter!(RECORDS_CORRECTIONS).increment(s.corrections);
    metrics::counter!(RECORDS_EXPIRED).increment(s.expired);
    metrics::counter!(RECORDS_MAP_MATCHED).increment(s.map_matched);
    for why in crate::geo::Unmatched::ALL {
        let n = s.unmatched[why.index()];
        if n > 0 {
            metrics::counter!(RECORDS_UNMATCHED, "reason" => why.name()).increment(n);
        }
    }
    let e = &summary.emitted;
    metrics::counter!(ROWS_EMITTED, "status" => "final").increment(e.finals);
    metrics::counter!(ROWS_EMITTED, "status" => "correction").increment(e.corrections);
    metrics::counter!(ROWS_EMITTED, "status" => "provisional").increment(e.provisional);
}
