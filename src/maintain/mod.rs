//! Table maintenance, the one place that rewrites files: the `users` and `accounts` upserts, compaction of small
//! files, checkpoints and log cleanup, and vacuum. Run by the timer function (a singleton) and by
//! `segment-delta maintain`.

pub mod compact;
pub mod cursor;
pub mod forget;
pub mod upsert;

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use deltalake::operations::vacuum::VacuumMode;
use deltalake::{DeltaTable, DeltaTableError, Path};
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;

use crate::catalog::{Catalog, CatalogError};
use crate::config::Config;
use crate::config::maintenance::{MIN_VACUUM_RETENTION, MaintenanceSettings as Settings};
use crate::delta::commit::CommitError;
use crate::delta::errors::{ErrorClass, classify};
use crate::delta::protocol::{Operation, Refusal};
use crate::delta::table::{self, TableState};
use crate::layout::{UPSERTS, paths};

/// Why maintenance of a table failed.
#[derive(Debug, thiserror::Error)]
pub enum MaintainError {
    #[error(transparent)]
    Delta(#[from] DeltaTableError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Commit(#[from] CommitError),
    #[error(transparent)]
    Arrow(#[from] deltalake::arrow::error::ArrowError),
    #[error("{0}")]
    Invalid(String),
}

/// One table's maintenance.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub schema: String,
    pub table: String,
    pub files_before: usize,
    pub files_after: usize,
    pub bytes_before: i64,
    pub bytes_after: i64,
    /// Commits this run made to the table (upsert, compaction, vacuum).
    pub commits: u32,
    pub version: u64,
    pub checkpoint: bool,
    pub logs_removed: usize,
    pub vacuumed: usize,
    /// Rows the upsert wrote (users, accounts), and how many source versions it read.
    pub upserted: Option<usize>,
    /// Compacted by `OPTIMIZE` on the Databricks warehouse rather than in process.
    pub optimized_by_databricks: bool,
    /// Steps left out, with the reason (a feature of the table this writer does not rewrite, ...).
    pub skipped: Vec<String>,
    pub seconds: f64,
    pub error: Option<String>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}: files {} -> {}, bytes {} -> {}, commits {}, version {}, vacuumed {}, logs removed {}{}{}{}, {:.2} s",
            self.schema,
            self.table,
            self.files_before,
            self.files_after,
            self.bytes_before,
            self.bytes_after,
            self.commits,
            self.version,
            self.vacuumed,
            self.logs_removed,
            self.upserted.map(|n| format!(", rows upserted {n}")).unwrap_or_default(),
            if self.optimized_by_databricks { ", compacted by Databricks OPTIMIZE" } else { "" },
            self.skipped.iter().map(|s| format!(", {s}")).collect::<String>(),
            self.seconds
        )?;
        if let Some(e) = &self.error {
            write!(f, ", FAILED: {e}")?;
        }
        Ok(())
    }
}

/// Maintains the lake's tables (all of them, or those named) and reports on each.
pub async fn run(
    config: &Config,
    catalog: Option<&dyn Catalog>,
    only: &[String],
) -> Result<Vec<Report>, DeltaTableError> {
    let mut tables = paths::discover(&config.lake, &config.storage.options, only).await?;
    let mut reports = Vec::new();
    // The upserts first, so that compaction then covers what they wrote.
    let mut schemas: Vec<String> = tables.iter().map(|(s, _)| s.clone()).collect();
    schemas.dedup();
    let mut upserted: HashMap<(String, String), (usize, u32)> = HashMap::new();
    for schema in &schemas {
        for spec in UPSERTS {
            let has_source = tables.iter().any(|(s, t)| s == schema && t == spec.source);
            let wanted = only.is_empty() || tables.iter().any(|(s, t)| s == schema && t == spec.target);
            if !has_source || !wanted {
                continue;
            }
            let started = Instant::now();
            match upsert::run(config, catalog, schema, spec).await {
                Ok(outcome) => {
                    tracing::info!(
                        schema,
                        table = spec.target,
                        rows = outcome.rows,
                        commits = outcome.commits,
                        source_version = outcome.source_version,
                        seconds = started.elapsed().as_secs_f64(),
                        "upserted"
                    );
                    upserted.insert((schema.clone(), spec.target.to_string()), (outcome.rows, outcome.commits));
                    if !tables.iter().any(|(s, t)| s == schema && t == spec.target) && outcome.commits > 0 {
                        tables.push((schema.clone(), spec.target.to_string()));
                    }
                }
                Err(e) => {
                    tracing::warn!(schema, table = spec.target, error = %e, "upsert failed");
                    reports.push(Report {
                        schema: schema.clone(),
                        table: spec.target.to_string(),
                        error: Some(format!("upsert from {}: {e}", spec.source)),
                        ..Default::default()
                    });
                }
            }
        }
    }
    // Then every table, a few at a time, until the run's time budget is spent; the next run resumes from the first
    // table this one did not start (the timer fires again long before a lake of thousands of tables is done).
    let settings = &config.maintenance;
    let cursor = if only.is_empty() {
        cursor::load(config).await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read the maintenance cursor; starting from the first table");
            None
        })
    } else {
        None
    };
    let order = cursor::rotate(tables, cursor.as_deref());
    let total = order.len();
    let run_started = Instant::now();
    let upserted = &upserted;
    let maintained = futures::stream::iter(order.iter().cloned().enumerate())
        .map(|(i, (schema, table))| async move {
            // The first few always start, so that every run makes progress.
            if i >= settings.concurrency && run_started.elapsed() > settings.budget {
                return None;
            }
            let up = upserted.get(&(schema.clone(), table.clone())).copied();
            Some(maintain_one(config, catalog, schema, table, up, i, total).await)
        })
        .buffered(settings.concurrency);
    let results: Vec<Option<Report>> = maintained.collect().await;
    let first_left = results.iter().position(Option::is_none);
    reports.extend(results.into_iter().flatten());
    if only.is_empty() {
        let next = first_left.map(|i| format!("{}.{}", order[i].0, order[i].1));
        if let Some(n) = &next {
            tracing::warn!(left = total - first_left.unwrap_or(total), resume_at = %n, budget_secs = settings.budget.as_secs(),
                "maintenance time budget spent (SEGMENT_DELTA_MAINTENANCE_BUDGET_SECS); the next run resumes here");
        }
        if (next.is_some() || cursor.is_some())
            && let Err(e) = cursor::save(config, next.as_deref()).await
        {
            tracing::warn!(error = %e, "cannot record where maintenance stopped");
        }
    }
    Ok(reports)
}

/// Maintains one table, with up to three attempts when listing its log raced a commit, and logs the outcome.
async fn maintain_one(
    config: &Config,
    catalog: Option<&dyn Catalog>,
    schema: String,
    table: String,
    upserted: Option<(usize, u32)>,
    index: usize,
    total: usize,
) -> Report {
    let started = Instant::now();
    let mut report = Report { schema: schema.clone(), table: table.clone(), ..Default::default() };
    if let Some((rows, commits)) = upserted {
        report.upserted = Some(rows);
        report.commits += commits;
    }
    let uri = paths::table_uri(&config.lake, &schema, &table);
    for attempt in 1..=3 {
        let mut r = report.clone();
        match maintain_table(config, &config.maintenance, catalog, &uri, &mut r).await {
            // A listing of the log taken while a writer committed can miss a commit; list again.
            Err(MaintainError::Delta(e)) if attempt < 3 && classify(&e) == ErrorClass::Conflict => continue,
            Err(e) => {
                report.error = Some(e.to_string());
                break;
            }
            Ok(()) => {
                report = r;
                break;
            }
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    let progress = format!("{}/{total}", index + 1);
    crate::metrics::maintained(report.error.is_none());
    match &report.error {
        None => tracing::info!(table = %format!("{schema}.{table}"), progress, files_before = report.files_before,
            files_after = report.files_after, bytes_before = report.bytes_before, bytes_after = report.bytes_after,
            commits = report.commits, vacuumed = report.vacuumed, seconds = report.seconds,
            skipped = %report.skipped.join("; "), "maintained"),
        Some(e) => tracing::warn!(table = %format!("{schema}.{table}"), progress, error = %e, "maintenance failed"),
    }
    report
}

/// The table at `uri` with its list of files, read again when the listing of its log raced a commit.
pub(crate) async fn load(config: &Config, uri: &str) -> Result<DeltaTable, DeltaTableError> {
    let url = table::table_url(uri).map_err(DeltaTableError::InvalidTableLocation)?;
    let mut attempt = 0;
    loop {
        let builder = crate::delta::storage::builder(url.clone(), &config.storage.options)?;
        match builder.load().await {
            Err(e) if crate::delta::errors::raced(&e, &mut attempt).await => {}
            other => return other,
        }
    }
}

async fn maintain_table(
    config: &Config,
    settings: &Settings,
    catalog: Option<&dyn Catalog>,
    uri: &str,
    report: &mut Report,
) -> Result<(), MaintainError> {
    let mut dt = match load(config, uri).await {
        Ok(dt) => dt,
        Err(e) => {
            let log_store = table::log_store(uri, &config.storage.options)?;
            return Err(match table::explain(&log_store, e, Operation::Compact).await {
                crate::delta::errors::Failure::Refused(r) => MaintainError::Refused(r),
                crate::delta::errors::Failure::Delta(e) => MaintainError::Delta(e),
                other => MaintainError::Invalid(other.to_string()),
            });
        }
    };
    let (files, bytes) = file_stats(&dt).await?;
    (report.files_before, report.bytes_before) = (files, bytes);
    match (catalog, settings.databricks_optimize_bytes) {
        (Some(catalog), Some(at_least)) if bytes as u64 >= at_least && files > 1 => {
            let before = dt.version();
            catalog.optimize(&report.schema, &report.table, uri).await?;
            update(&mut dt).await?;
            report.commits += u32::from(dt.version() != before);
            report.optimized_by_databricks = true;
        }
        _ => match compact::compact(&dt, settings.target_file_size).await? {
            compact::Compaction::Committed(n) => report.commits += n,
            compact::Compaction::Skipped(why) => report.skipped.push(format!("compaction skipped: {why}")),
        },
    }
    update(&mut dt).await?;
    let log_store = dt.log_store();
    let Some(state) = TableState::load(&log_store, None).await? else {
        return Err(MaintainError::Invalid(format!("{uri}: the table is gone")));
    };
    // A checkpoint of the newest version, then the log entries past the table's log retention.
    let version = state.version;
    let checkpoint = Path::from(format!("_delta_log/{version:020}.checkpoint.parquet"));
    match state.rules(Operation::Checkpoint) {
        Err(refusal) => report.skipped.push(format!("checkpoint skipped: {refusal}")),
        Ok(_) if version > 0 && log_store.object_store(None).head(&checkpoint).await.is_err() => {
            crate::delta::log::checkpoint(&log_store, version).await?;
            report.checkpoint = true;
        }
        Ok(_) => {}
    }
    match state.rules(Operation::LogCleanup) {
        Err(refusal) => report.skipped.push(format!("log cleanup skipped: {refusal}")),
        Ok(_) => {
            let mut attempt = 0;
            report.logs_removed = loop {
                match deltalake::checkpoints::cleanup_metadata(&dt, None).await {
                    Err(e) if crate::delta::errors::raced(&e, &mut attempt).await => {}
                    other => break other?,
                }
            };
        }
    }
    match state.rules(Operation::Vacuum) {
        Err(refusal) => report.skipped.push(format!("vacuum skipped: {refusal}")),
        Ok(_) => report.vacuumed = vacuum(&dt, &state, settings.vacuum_retention).await?,
    }
    update(&mut dt).await?;
    report.version = dt.version().unwrap_or(0);
    let (files, bytes) = file_stats(&dt).await?;
    (report.files_after, report.bytes_after) = (files, bytes);
    Ok(())
}

/// Reads the newest commits of `dt`, again when the listing of its log raced a commit.
async fn update(dt: &mut DeltaTable) -> Result<(), DeltaTableError> {
    let mut attempt = 0;
    loop {
        match dt.update_incremental(None).await {
            Err(e) if crate::delta::errors::raced(&e, &mut attempt).await => {}
            other => return other,
        }
    }
}

/// Deletes the files the table no longer references that were removed (or written) longer ago than the larger of
/// `retention` (this loader's setting, never under a day) and the table's own `delta.deletedFileRetentionDuration`
/// (which Databricks users raise to keep time travel longer). Vacuum commits nothing.
async fn vacuum(dt: &DeltaTable, state: &TableState, retention: Duration) -> Result<usize, MaintainError> {
    let own = state
        .metadata()
        .configuration()
        .get("delta.deletedFileRetentionDuration")
        .map(|v| {
            parse_interval(v).ok_or_else(|| MaintainError::Invalid(format!("delta.deletedFileRetentionDuration {v:?}")))
        })
        .transpose()?
        .unwrap_or_default();
    let retention = retention.max(MIN_VACUUM_RETENTION).max(own);
    let (_, plan) = dt
        .clone()
        .vacuum()
        .with_retention_period(chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::days(7)))
        // Both retentions were applied above; the library's own check knows only the table's.
        .with_enforce_retention_duration(false)
        .with_mode(VacuumMode::Full)
        .with_dry_run(true)
        .await?;
    let store = dt.log_store().object_store(None);
    let mut deleted = 0;
    for file in &plan.files_deleted {
        let path = Path::parse(file).map_err(|e| MaintainError::Invalid(format!("{file}: {e}")))?;
        match store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => deleted += 1,
            Err(e) => return Err(DeltaTableError::from(e).into()),
        }
    }
    Ok(deleted)
}

/// A Delta interval (`interval 30 days`, `interval 2 weeks`, `interval 12 hours`).
fn parse_interval(s: &str) -> Option<Duration> {
    let mut words = s.split_whitespace();
    if !words.next()?.eq_ignore_ascii_case("interval") {
        return None;
    }
    let n: u64 = words.next()?.parse().ok()?;
    let unit = words.next()?.to_ascii_lowercase();
    let secs = match unit.trim_end_matches('s') {
        "second" => 1,
        "minute" => 60,
        "hour" => 3600,
        "day" => 86_400,
        "week" => 604_800,
        _ => return None,
    };
    Some(Duration::from_secs(n * secs))
}

async fn file_stats(dt: &DeltaTable) -> Result<(usize, i64), DeltaTableError> {
    let files: Vec<_> = dt.get_active_add_actions_by_predicate(None).try_collect().await?;
    Ok((files.len(), files.iter().map(|f| f.size()).sum()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_intervals() {
        assert_eq!(parse_interval("interval 30 days"), Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_interval("INTERVAL 1 week"), Some(Duration::from_secs(604_800)));
        assert_eq!(parse_interval("interval 12 hours"), Some(Duration::from_secs(43_200)));
        assert_eq!(parse_interval("30 days"), None);
    }
}
