//! Metric names, defined once (the modules that count publish under these
//! names). Counters are accumulated locally and published once per run,
//! batch or request, never per record; labels are bounded (reject reasons,
//! aggregate kinds, sink names from the topology).

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

/// City sink rows, per sink; label `outcome`: `sent` (resends included),
/// `acknowledged`, `retried`, `dead_lettered`, `superseded` (an older
/// window of an entity not sent), `already_delivered` (found in the
/// ledger after a restart, not resent), `dropped` (given up unsent: more
/// than `max_backlog` waited).
pub const SINK_ROWS: &str = "edgeflow_sink_rows_total";
/// Requests a city sink's target acknowledged (in whole or in part).
pub const SINK_REQUESTS: &str = "edgeflow_sink_requests_total";
/// Windows given up to log retention unacknowledged (`max_hold`).
pub const SINK_GIVEN_UP: &str = "edgeflow_sink_windows_given_up_total";
/// Rows waiting or in flight, per sink (gauge).
pub const SINK_BACKLOG: &str = "edgeflow_sink_backlog_rows";
/// How far the oldest undelivered row is behind the node's watermark,
/// ms, per sink (gauge).
pub const SINK_OLDEST_AGE: &str = "edgeflow_sink_oldest_undelivered_ms";
/// 1 while a sink's last request reached its target, else 0 (gauge).
pub const SINK_CONNECTED: &str = "edgeflow_sink_connected";
