//! Table maintenance, the one place that rewrites files: the `users` and `accounts` upserts, compaction of small
//! files, checkpoints and log cleanup, and vacuum. Run by the timer function (a singleton) and by
//! `segment-delta maintain`.

mod files;
pub mod upsert;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deltalake::kernel::Action;
use deltalake::kernel::transaction::TransactionError;
use deltalake::operations::vacuum::VacuumMode;
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError, ObjectStore, Path};
use futures::TryStreamExt;
use object_store::ObjectStoreExt;

use crate::catalog::Catalog;
use crate::config::Config;
use crate::config::maintenance::{MIN_VACUUM_RETENTION, MaintenanceSettings as Settings};
use crate::delta::log;
use crate::layout::{UPSERTS, paths};

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
    pub seconds: f64,
    pub error: Option<String>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}: files {} -> {}, bytes {} -> {}, commits {}, version {}, vacuumed {}, logs removed {}{}{}, {:.2} s",
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
    let settings = &config.maintenance;
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
    for (schema, table) in tables {
        let started = Instant::now();
        let mut report = Report { schema: schema.clone(), table: table.clone(), ..Default::default() };
        if let Some((rows, commits)) = upserted.get(&(schema.clone(), table.clone())) {
            report.upserted = Some(*rows);
            report.commits += commits;
        }
        let uri = paths::table_uri(&config.lake, &schema, &table);
        for attempt in 1..=3 {
            let mut r = report.clone();
            match maintain_table(config, settings, catalog, &uri, &mut r).await {
                // A listing of the log taken while a writer committed can miss a commit; list again.
                Err(e) if attempt < 3 && log::listing_raced(&e.to_string()) => continue,
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
        match &report.error {
            None => tracing::info!(table = %format!("{schema}.{table}"), files_before = report.files_before,
                files_after = report.files_after, bytes_before = report.bytes_before, bytes_after = report.bytes_after,
                commits = report.commits, vacuumed = report.vacuumed, seconds = report.seconds, "maintained"),
            Some(e) => tracing::warn!(table = %format!("{schema}.{table}"), error = %e, "maintenance failed"),
        }
        reports.push(report);
    }
    Ok(reports)
}

pub(crate) async fn load(config: &Config, uri: &str) -> Result<DeltaTable, DeltaTableError> {
    let url = crate::delta::table_url(uri).map_err(DeltaTableError::InvalidTableLocation)?;
    DeltaTableBuilder::from_url(url)?.with_storage_options(config.storage.options.clone()).load().await
}

async fn maintain_table(
    config: &Config,
    settings: &Settings,
    catalog: Option<&dyn Catalog>,
    uri: &str,
    report: &mut Report,
) -> Result<(), DeltaTableError> {
    let mut dt = load(config, uri).await?;
    let (files, bytes) = file_stats(&dt).await?;
    (report.files_before, report.bytes_before) = (files, bytes);
    match (catalog, settings.databricks_optimize_bytes) {
        (Some(catalog), Some(at_least)) if bytes as u64 >= at_least && files > 1 => {
            let before = dt.version();
            catalog
                .optimize(&report.schema, &report.table, uri)
                .await
                .map_err(|e| DeltaTableError::Generic(format!("OPTIMIZE on the warehouse: {e}")))?;
            dt.update_incremental(None).await?;
            report.commits += u32::from(dt.version() != before);
            report.optimized_by_databricks = true;
        }
        _ => report.commits += compact(&mut dt, settings.target_file_size).await?,
    }
    dt.update_incremental(None).await?;
    // A checkpoint of the newest version, then the log entries past the table's log retention.
    let version = dt.version().unwrap_or(0);
    let checkpoint = Path::from(format!("_delta_log/{version:020}.checkpoint.parquet"));
    if version > 0 && dt.log_store().object_store(None).head(&checkpoint).await.is_err() {
        deltalake::checkpoints::create_checkpoint(&dt, None).await?;
        report.checkpoint = true;
    }
    report.logs_removed = deltalake::checkpoints::cleanup_metadata(&dt, None).await?;
    let retention = settings.vacuum_retention.max(MIN_VACUUM_RETENTION);
    let (vacuumed, metrics) = dt
        .vacuum()
        .with_retention_period(chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::days(7)))
        // The retention is this loader's own setting (never under a day), not the table's default of 7 days.
        .with_enforce_retention_duration(false)
        .with_mode(VacuumMode::Full)
        .await?;
    report.vacuumed = metrics.files_deleted.len();
    if report.vacuumed > 0 {
        report.commits += 2; // VACUUM START and VACUUM END
    }
    let dt = vacuumed;
    report.version = dt.version().unwrap_or(0);
    let (files, bytes) = file_stats(&dt).await?;
    (report.files_after, report.bytes_after) = (files, bytes);
    Ok(())
}

async fn file_stats(dt: &DeltaTable) -> Result<(usize, i64), DeltaTableError> {
    let files: Vec<_> = dt.get_active_add_actions_by_predicate(None).try_collect().await?;
    Ok((files.len(), files.iter().map(|f| f.size()).sum()))
}

/// Bin-packs the files smaller than the target into files near it, committed with `dataChange=false` so that
/// readers and appends see no change. Appends that commit meanwhile do not conflict (they remove nothing); a
/// conflicting commit (a delete of a file being compacted) fails this compaction, which the next run retries.
/// Returns the number of commits made.
pub async fn compact(dt: &mut DeltaTable, target: u64) -> Result<u32, DeltaTableError> {
    let files: Vec<_> = dt.get_active_add_actions_by_predicate(None).try_collect().await?;
    if files.iter().any(|f| f.deletion_vector_descriptor().is_some()) {
        tracing::warn!(table = %dt.table_url(), "table has deletion vectors: compaction left to Databricks OPTIMIZE");
        return Ok(0);
    }
    let partitioned = !dt.snapshot()?.metadata().partition_columns().is_empty();
    if partitioned {
        tracing::warn!(table = %dt.table_url(), "partitioned table: compaction left to Databricks OPTIMIZE");
        return Ok(0);
    }
    // Greedy bins in log order (roughly time order), each up to the target size; a bin of one file is left alone.
    let mut bins: Vec<Vec<usize>> = Vec::new();
    let mut current: (Vec<usize>, u64) = (Vec::new(), 0);
    for (i, f) in files.iter().enumerate() {
        let size = f.size().max(0) as u64;
        if size >= target {
            continue;
        }
        if current.1 + size > target && !current.0.is_empty() {
            bins.push(std::mem::take(&mut current.0));
            current.1 = 0;
        }
        current.0.push(i);
        current.1 += size;
    }
    bins.push(current.0);
    bins.retain(|b| b.len() > 1);
    if bins.is_empty() {
        return Ok(0);
    }
    // One commit per group of bins of about 1 GiB read, so a large backlog makes progress in steps.
    let group_bytes = target.max(1 << 30);
    let store: Arc<dyn ObjectStore> = dt.object_store();
    let schema = dt.snapshot()?.snapshot().arrow_schema();
    let mut commits = 0;
    let mut group: Vec<Action> = Vec::new();
    let mut group_read = 0u64;
    for (n, bin) in bins.iter().enumerate() {
        let mut writer = RecordBatchWriter::for_table(dt)?.with_target_file_size(target);
        for &i in bin {
            let f = &files[i];
            for batch in files::read(&store, &f.object_store_path(), None).await? {
                writer.write(files::conform(&batch, &schema)?).await?;
            }
            group.push(Action::Remove(f.remove_action(false)));
            group_read += f.size().max(0) as u64;
        }
        for mut add in writer.flush().await? {
            add.data_change = false;
            group.push(Action::Add(add));
        }
        if group_read >= group_bytes || n + 1 == bins.len() {
            if !commit_compaction(dt, std::mem::take(&mut group), target).await? {
                // Another commit removed a file this compaction read, or changed the schema or protocol: the
                // files it wrote are left to vacuum and the next run compacts again.
                tracing::warn!(table = %dt.table_url(), "compaction yielded to a concurrent change");
                return Ok(commits);
            }
            commits += 1;
            group_read = 0;
            dt.update_incremental(None).await?;
        }
    }
    Ok(commits)
}

/// Commits a compaction's removes and adds (all `dataChange=false`). Appends that commit first do not conflict:
/// it is committed again on top of them at once. It yields (returns `false`) when a commit it lost to removed a
/// file it read, or changed the schema or protocol, or when it has lost for a minute.
async fn commit_compaction(dt: &DeltaTable, actions: Vec<Action>, target: u64) -> Result<bool, DeltaTableError> {
    let log_store = dt.log_store();
    let read: HashSet<String> =
        actions.iter().filter_map(|a| if let Action::Remove(r) = a { Some(r.path.clone()) } else { None }).collect();
    let read_version = dt.version().unwrap_or(0);
    let mut version = read_version;
    let started = Instant::now();
    loop {
        let parameters = [("predicate", "[]".into()), ("targetSize", target.to_string().into())];
        let info = log::commit_info("OPTIMIZE", parameters, read_version, false);
        let bytes = log::commit_bytes(info, actions.iter().cloned())?;
        match log::write_commit(&log_store, version + 1, bytes).await {
            Ok(()) => return Ok(true),
            Err(TransactionError::VersionAlreadyExists(_)) => {}
            Err(e) => return Err(DeltaTableError::Transaction { source: e }),
        }
        let latest = log_store.get_latest_version(version + 1).await?;
        let winners = log::winners(&log_store, version, latest, &HashSet::new()).await?;
        if winners.metadata || winners.removed.iter().any(|p| read.contains(p)) || started.elapsed() > YIELD_AFTER {
            return Ok(false);
        }
        version = latest;
    }
}

const YIELD_AFTER: Duration = Duration::from_secs(60);
