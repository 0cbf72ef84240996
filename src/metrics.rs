//! Metric names, defined once, with their type, labels and meaning: the
//! catalog [`ALL`] is what `docs/METRICS.md` is generated from (a test
//! holds the file to it) and what the exporter describes.
//!
//! Counting never happens per record: the modules that count keep atomics
//! (or `metrics` handles) added to per batch, per request or per fsync,
//! and the node's exporter reads them when it is scraped
//! ([`crate::observe`]). Labels are bounded: reject and unmatched reasons,
//! row statuses, connection outcomes, sink names from the topology.

/// What kind of metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (resets at a restart).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations in buckets.
    Histogram,
}

impl Kind {
    /// Prometheus' name of the type.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric of the catalog.
#[derive(Clone, Copy, Debug)]
pub struct Def {
    /// The exposed name.
    pub name: &'static str,
    /// Its type.
    pub kind: Kind,
    /// Its labels (each with a bounded set of values).
    pub labels: &'static [&'static str],
    /// What it means.
    pub help: &'static str,
}

macro_rules! catalog {
    ($($(#[$doc:meta])* $id:ident = $name:literal, $kind:ident, [$($label:literal),*], $help:literal;)*) => {
        $(
            #[doc = $help]
            pub const $id: &str = $name;
        )*
        /// Every metric the node exposes, in documentation order.
        pub const ALL: &[Def] = &[$(Def {
            name: $name,
            kind: Kind::$kind,
            labels: &[$($label),*],
            help: $help,
        }),*];
    };
}

catalog! {
    // Ingest (QUIC): records and batches.
    INGEST_RECEIVED = "edgeflow_ingest_records_received_total", Counter, [],
        "Records in batches and datagrams the node took in (accepted + rejected).";
    INGEST_ACCEPTED = "edgeflow_ingest_records_accepted_total", Counter, [],
        "Records accepted: in the log, acknowledged (datagram records included).";
    INGEST_REJECTED = "edgeflow_ingest_records_rejected_total", Counter, ["reason"],
        "Records rejected, by reason (TELEMETRY.md reject reasons; `expired`: too late for retention; `no_datagrams`: datagrams refused by the intake).";
    INGEST_BYTES = "edgeflow_ingest_bytes_total", Counter, [],
        "Bytes of records in acknowledged batches and datagrams, as sent.";
    INGEST_BATCHES = "edgeflow_ingest_batches_total", Counter, [],
        "Batches acknowledged.";
    INGEST_RESENDS = "edgeflow_ingest_resends_total", Counter, [],
        "Batches recognised as resends of acknowledged ones (acknowledged again, not logged).";
    INGEST_DATAGRAMS = "edgeflow_ingest_datagrams_total", Counter, [],
        "Datagram records accepted.";
    INGEST_PROTOCOL_ERRORS = "edgeflow_ingest_protocol_errors_total", Counter, [],
        "Protocol errors answered (bad frames, sequence gaps, limits).";
    CONNECTIONS = "edgeflow_connections_total", Counter, ["outcome"],
        "QUIC connections by outcome: `accepted`, `refused` (over max_connections), `unauthorized` (bad or missing token), `handshake_failed` (TLS or QUIC handshake).";
    CONNECTIONS_OPEN = "edgeflow_connections_open", Gauge, [],
        "QUIC connections open now.";
    BUFFERED_BYTES = "edgeflow_ingest_buffered_bytes", Gauge, [],
        "Bytes of frames buffered (arriving or waiting for the log), against `[ingest] max_buffered_bytes`.";
    // The log.
    LOG_APPENDS = "edgeflow_log_appends_total", Counter, [],
        "Batches appended to the log.";
    LOG_APPENDED_BYTES = "edgeflow_log_appended_bytes_total", Counter, [],
        "Bytes appended to the log.";
    LOG_FSYNC_SECONDS = "edgeflow_log_fsync_seconds", Histogram, [],
        "Time of one group commit's fsync, seconds.";
    LOG_FAILURES = "edgeflow_log_failures_total", Counter, [],
        "Log writes or fsyncs that failed (batches answered log_unavailable meanwhile).";
    LOG_BYTES = "edgeflow_log_bytes", Gauge, [],
        "Bytes of the log on disk (its segments).";
    LOG_SEGMENTS = "edgeflow_log_segments", Gauge, [],
        "Segments of the log on disk.";
    LOG_CHECKPOINTS = "edgeflow_log_checkpoints_total", Counter, [],
        "Checkpoints written.";
    LOG_SEGMENTS_DELETED = "edgeflow_log_segments_deleted_total", Counter, [],
        "Log segments deleted behind a checkpoint.";
    RECOVERED_ENTRIES = "edgeflow_log_recovered_entries", Gauge, [],
        "Log entries found at the start (replayed from the checkpoint on).";
    // Time.
    WATERMARK = "edgeflow_watermark_ms", Gauge, [],
        "The node's input watermark, Unix epoch milliseconds of event time.";
    WATERMARK_LAG = "edgeflow_watermark_lag_seconds", Gauge, [],
        "How far the watermark is behind the wall clock, seconds (a replayed or stalled input shows here).";
    // The dataflow's output.
    ROWS_EMITTED = "edgeflow_rows_emitted_total", Counter, ["status"],
        "Aggregate rows the node's dataflow emitted, by status: `final`, `provisional`, `correction` (a final window changed by a late record), `retraction` (a zone's row gone with the zone).";
    // Subscriptions.
    SUBSCRIBERS = "edgeflow_subscribers", Gauge, [],
        "Subscribers connected now.";
    SUBSCRIBER_QUEUE_ROWS = "edgeflow_subscriber_queue_rows", Gauge, [],
        "Rows waiting in all subscribers' queues (after the last publish).";
    SUBSCRIBER_QUEUE_MAX_ROWS = "edgeflow_subscriber_queue_max_rows", Gauge, [],
        "The most rows waiting for one subscriber (after the last publish), against `[subscriptions] max_pending`.";
    SUBSCRIBER_LAGGED_ROWS = "edgeflow_subscriber_lagged_rows_total", Counter, [],
        "Rows that replaced a row still waiting in a subscriber's queue (the subscriber is sent LAGGED).";
    SUBSCRIBERS_TOO_SLOW = "edgeflow_subscribers_too_slow_total", Counter, [],
        "Subscribers cut off as too slow (max_pending rows waiting, or nothing read for max_lag).";
    // City sinks.
    SINK_ROWS = "edgeflow_sink_rows_total", Counter, ["sink", "outcome"],
        "City sink rows, per sink, by outcome: `sent` (resends included), `acknowledged`, `retried`, `dead_lettered`, `superseded` (an older window of an entity not sent), `already_delivered` (in the ledger after a restart, not resent), `dropped` (more than max_backlog waited).";
    SINK_REQUESTS = "edgeflow_sink_requests_total", Counter, ["sink"],
        "Requests a city sink's target acknowledged (in whole or in part).";
    SINK_GIVEN_UP = "edgeflow_sink_windows_given_up_total", Counter, ["sink"],
        "Windows given up to log retention unacknowledged (max_hold).";
    SINK_BACKLOG = "edgeflow_sink_backlog_rows", Gauge, ["sink"],
        "Rows waiting or in flight, per sink.";
    SINK_OLDEST_AGE = "edgeflow_sink_oldest_undelivered_ms", Gauge, ["sink"],
        "How far the oldest undelivered row is behind the node's watermark, milliseconds of event time, per sink.";
    SINK_CONNECTED = "edgeflow_sink_connected", Gauge, ["sink"],
        "1 while a sink's last request reached its target, else 0.";
    // The process.
    PROCESS_RSS = "edgeflow_process_resident_memory_bytes", Gauge, [],
        "Resident memory of the process, bytes (Linux: /proc/self/status VmRSS).";
    PROCESS_OPEN_FDS = "edgeflow_process_open_fds", Gauge, [],
        "Open file descriptors of the process (Linux: /proc/self/fd).";
    PROCESS_MAX_FDS = "edgeflow_process_max_fds", Gauge, [],
        "The process's limit of open file descriptors (soft limit).";
    UP_SINCE = "edgeflow_start_time_seconds", Gauge, [],
        "When the node started, Unix epoch seconds.";
    RELOADS = "edgeflow_reloads_total", Counter, ["outcome"],
        "Topology reloads (SIGHUP or the file watch) by outcome: applied, unchanged, invalid (the file fails validation), refused (a setting that cannot change live differs, or the new TLS files do not load).";
    READY = "edgeflow_ready", Gauge, [],
        "1 once the log is recovered, the dataflow runs and the listener is bound (what /ready answers 200 to), else 0.";
    // The dataflow's own counts (live in a node; `edgeflow replay`
    // publishes them at the end of a run when a recorder is installed).
    // Central's merge of its edges' pushes.
    CENTRAL_UPDATES = "edgeflow_central_updates_total", Counter, ["outcome"],
        "Central: edges' updates by outcome: `applied` (changed a partial), `unchanged` (a resend, or a final equal to the provisional value), `expired` (a window already retired at central).";
    CENTRAL_SKIPPED = "edgeflow_central_log_entries_skipped_total", Counter, [],
        "Central: log entries from no configured edge, or that no longer read under central's settings.";
    CENTRAL_EDGE_WATERMARK = "edgeflow_central_edge_watermark_ms", Gauge, ["edge"],
        "Central: each configured edge's latest pushed watermark, Unix epoch milliseconds of event time.";
    CENTRAL_EDGE_STRAGGLING = "edgeflow_central_edge_straggling", Gauge, ["edge"],
        "Central: 1 while the edge is a straggler (windows go final without it), else 0.";
    RECORDS_READ = "edgeflow_records_read_total", Counter, [],
        "Records the dataflow read, all outcomes (a node: what the log handed it, its replay at a start included).";
    RECORDS_REJECTED = "edgeflow_records_rejected_total", Counter, ["reason"],
        "Records the dataflow rejected, by reason (a node rejects at ingest: see edgeflow_ingest_records_rejected_total).";
    RECORDS_LATE = "edgeflow_records_late_total", Counter, [],
        "Records accepted behind the watermark while their window was still open.";
    RECORDS_CORRECTIONS = "edgeflow_records_corrections_total", Counter, [],
        "Late records accepted after their window was final (each corrects the rows it touches).";
    RECORDS_EXPIRED = "edgeflow_records_expired_total", Counter, [],
        "Late records dropped because their window had retired.";
    RECORDS_UNMATCHED = "edgeflow_records_unmatched_total", Counter, ["reason"],
        "Vehicle reports matched to no segment, by reason (`off_road`, `junction`, `wrong_heading`, `charging`, `unknown_segment`).";
    RECORDS_MAP_MATCHED = "edgeflow_records_map_matched_total", Counter, [],
        "Vehicle reports without segment_id the node placed on a segment.";
}

/// The catalog as the Markdown table of `docs/METRICS.md`.
pub fn markdown_table() -> String {
    let mut out = String::from("| name | type | labels | meaning |\n|---|---|---|---|\n");
    for d in ALL {
        let labels = if d.labels.is_empty() {
            "-".to_owned()
        } else {
            d.labels
                .iter()
                .map(|l| format!("`{l}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            d.name,
            d.kind.as_str(),
            labels,
            d.help.replace('|', "\\|")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_follow_prometheus_conventions() {
        let mut seen = std::collections::HashSet::new();
        for d in ALL {
            assert!(seen.insert(d.name), "{} twice", d.name);
            assert!(d.name.starts_with("edgeflow_"), "{}", d.name);
            assert!(
                d.name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{}",
                d.name
            );
            assert_eq!(
                d.kind == Kind::Counter,
                d.name.ends_with("_total"),
                "{}",
                d.name
            );
        }
    }
}
