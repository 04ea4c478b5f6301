//! Counters, gauges and histograms (a leaf every room may record into), with the `metrics` facade and its Prometheus exporter (rendered at `/metrics`,
//! no listener of its own). Every metric is named here, so the list below is the whole catalogue.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Latency buckets, in seconds.
const BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Installs the recorder (once per process; later calls reuse it).
pub fn install() {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new().set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS);
        let Ok(builder) = builder else { return None };
        match builder.install_recorder() {
            Ok(handle) => {
                describe();
                Some(handle)
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics are not recorded");
                None
            }
        }
    });
}

/// The metrics in Prometheus' text format.
pub fn render() -> String {
    install();
    match HANDLE.get().and_then(Option::as_ref) {
        Some(h) => {
            h.run_upkeep();
            h.render()
        }
        None => String::new(),
    }
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!("segment_delta_requests_total", "HTTP requests answered, by endpoint and status");
    describe_counter!("segment_delta_events_received_total", "events received, by source");
    describe_counter!(
        "segment_delta_events_accepted_total",
        "events acknowledged after their rows were committed, by source"
    );
    describe_counter!("segment_delta_requests_refused_total", "requests refused, by reason");
    describe_counter!("segment_delta_rows_written_total", "rows committed, by schema and table");
    describe_counter!(
        "segment_delta_discards_total",
        "values or events set aside in discards, by schema, table and kind of reason"
    );
    describe_counter!(
        "segment_delta_commit_conflicts_total",
        "commits retried after another writer won, by schema and table"
    );
    describe_counter!("segment_delta_write_failures_total", "table writes that failed, by schema and table");
    describe_histogram!(
        "segment_delta_commit_seconds",
        Unit::Seconds,
        "time to write one table's micro-batch, data files and commit"
    );
    describe_histogram!(
        "segment_delta_ack_seconds",
        Unit::Seconds,
        "time from a request's arrival to its answer, for accepted requests"
    );
    describe_gauge!("segment_delta_buffered_bytes", Unit::Bytes, "bytes accepted and not yet written");
    describe_counter!(
        "segment_delta_catalog_statements_total",
        "SQL statements run on the warehouse, by kind and outcome"
    );
    describe_counter!("segment_delta_maintained_tables_total", "tables maintained, by outcome");
}

pub fn request(endpoint: &'static str, status: u16) {
    counter!("segment_delta_requests_total", "endpoint" => endpoint, "status" => status.to_string()).increment(1);
}

pub fn refused(reason: &'static str) {
    counter!("segment_delta_requests_refused_total", "reason" => reason).increment(1);
}

pub fn received(source: &'static str, events: usize) {
    counter!("segment_delta_events_received_total", "source" => source).increment(events as u64);
}

pub fn accepted(source: &'static str, events: usize, took: Duration) {
    counter!("segment_delta_events_accepted_total", "source" => source).increment(events as u64);
    histogram!("segment_delta_ack_seconds", "source" => source).record(took.as_secs_f64());
}

pub fn committed(schema: &str, table: &str, rows: usize, conflicts: u32, took: Duration) {
    let labels = [("schema", schema.to_string()), ("table", table.to_string())];
    counter!("segment_delta_rows_written_total", &labels).increment(rows as u64);
    if conflicts > 0 {
        counter!("segment_delta_commit_conflicts_total", &labels).increment(u64::from(conflicts));
    }
    histogram!("segment_delta_commit_seconds").record(took.as_secs_f64());
}

pub fn write_failed(schema: &str, table: &str) {
    counter!("segment_delta_write_failures_total", "schema" => schema.to_string(), "table" => table.to_string())
        .increment(1);
}

pub fn discarded(schema: &str, table: &str, reason: &str) {
    counter!("segment_delta_discards_total", "schema" => schema.to_string(), "table" => table.to_string(),
        "kind" => reason_kind(reason))
    .increment(1);
}

pub fn buffered(bytes: usize) {
    gauge!("segment_delta_buffered_bytes").set(bytes as f64);
}

pub fn statement(sql: &str, ok: bool) {
    let kind = sql.split_whitespace().take(2).collect::<Vec<_>>().join(" ").to_ascii_uppercase();
    let kind = match kind.as_str() {
        "CREATE SCHEMA" | "CREATE TABLE" | "ALTER TABLE" => kind,
        k if k.starts_with("OPTIMIZE") => "OPTIMIZE".into(),
        _ => "OTHER".into(),
    };
    counter!("segment_delta_catalog_statements_total", "kind" => kind, "outcome" => if ok { "ok" } else { "failed" })
        .increment(1);
}

pub fn maintained(ok: bool) {
    counter!("segment_delta_maintained_tables_total", "outcome" => if ok { "ok" } else { "failed" }).increment(1);
}

/// A short, bounded name for a discard's reason (the reasons themselves name columns and values).
pub fn reason_kind(reason: &str) -> &'static str {
    const KINDS: &[(&str, &str)] = &[
        ("SEGMENT_DELTA_MAX_TABLES", "table_limit"),
        ("SEGMENT_DELTA_MAX_COLUMNS", "column_limit"),
        ("appears twice", "repeated_key"),
        ("longer than 255", "long_name"),
        ("NOT NULL", "not_null"),
        ("reserved column", "reserved_column"),
        ("both become column", "name_collision"),
        ("stored as NULL", "type_mismatch"),
        ("nested more than", "too_deep"),
        ("not valid JSON", "invalid_json"),
        ("write key", "write_key"),
    ];
    KINDS.iter().find(|(needle, _)| reason.contains(needle)).map_or("other", |(_, kind)| kind)
}
