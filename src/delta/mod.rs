//! Delta tables: one cached handle per table, created on first sight, widened when new columns arrive, and
//! appended to with one commit per micro-batch.

pub mod arrow;
pub mod storage;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use deltalake::kernel::transaction::{CommitBuilder, CommitConflictError, CommitProperties, TransactionError};
use deltalake::kernel::{Action, MetadataExt, StructField, StructType, Transaction};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::table::config::TablePropertiesExt;
use deltalake::writer::{DeltaWriter, RecordBatchWriter, WriteMode};
use deltalake::{DeltaTable, DeltaTableError, TableProperty};
use url::Url;

use crate::config::Lake;
use crate::databricks::{Catalog, CatalogError};
use crate::retry::Backoff;
use crate::schema::rows::{Row, TableKind};
use crate::schema::value::ColumnType;
use crate::segment::time::Micros;

/// A write that did not commit. `retryable` says whether sending the same rows again can succeed.
#[derive(Debug, thiserror::Error)]
#[error("table {table}: {message}")]
pub struct WriteError {
    pub table: String,
    pub message: String,
    pub retryable: bool,
}

impl WriteError {
    fn delta(table: &str, e: DeltaTableError) -> WriteError {
        let retryable = !matches!(
            e,
            DeltaTableError::InvalidTableLocation(_)
                | DeltaTableError::Generic(_)
                | DeltaTableError::SchemaMismatch { .. }
        );
        WriteError { table: table.to_string(), message: e.to_string(), retryable }
    }
}

/// Rows bound for one table of one schema.
pub struct TableWrite<'a> {
    pub schema: &'a str,
    pub table: &'a str,
    pub kind: TableKind,
    pub rows: Vec<Row>,
}

/// Quick rebases delta-rs does inside one attempt before it reports a conflict to the backoff loop.
const INTERNAL_REBASES: usize = 3;

/// How long a writer's `txn` entries are kept in a table's state.
const TXN_RETENTION: &str = "interval 7 days";

/// What one append committed.
#[derive(Debug, Default)]
pub struct Written {
    pub version: i64,
    pub rows: usize,
    /// Rows already committed by an earlier delivery (same stream offset) or an earlier attempt.
    pub skipped: usize,
    pub conflict_retries: u32,
    pub new_columns: Vec<String>,
    /// Values that could not be stored as sent (cast failures, columns past the cap).
    pub discards: Vec<crate::schema::rows::Discard>,
}

/// A table handle kept across writes, with the stream versions its `txn` actions record as of that handle.
/// The versions stay valid across this writer's own commits (a commit that raced another with the same app id
/// fails as a conflict) and are dropped on every reload.
struct Cached {
    dt: DeltaTable,
    txns: HashMap<Arc<str>, i64>,
}

type Slot = Arc<tokio::sync::Mutex<Option<Cached>>>;

pub struct Lakehouse {
    lake: Lake,
    storage_options: HashMap<String, String>,
    max_columns: usize,
    tables: Mutex<HashMap<String, Slot>>,
    backoff: Backoff,
    /// This process's own `txn` app id, and the version its next commit carries.
    writer_id: String,
    commit_seq: AtomicU64,
    catalog: Option<Arc<Catalog>>,
}

/// The URL delta-rs opens for a table location (local paths become absolute `file://` URLs).
pub fn table_url(uri: &str) -> Result<Url, String> {
    if uri.contains("://") {
        return Url::parse(uri).map_err(|e| format!("{uri}: {e}"));
    }
    let path = Path::new(uri);
    std::fs::create_dir_all(path).map_err(|e| format!("cannot create {uri}: {e}"))?;
    let abs = std::fs::canonicalize(path).map_err(|e| format!("{uri}: {e}"))?;
    Url::from_directory_path(&abs).map_err(|()| format!("{} is not an absolute path", abs.display()))
}

impl Lakehouse {
    pub fn new(lake: Lake, storage_options: HashMap<String, String>, max_columns: usize) -> Lakehouse {
        Lakehouse {
            lake,
            storage_options,
            max_columns,
            tables: Mutex::new(HashMap::new()),
            backoff: Backoff { total: std::time::Duration::from_secs(30), ..Backoff::default() },
            writer_id: format!("segment-delta/writer/{}", uuid::Uuid::new_v4()),
            commit_seq: AtomicU64::new(1),
            catalog: None,
        }
    }

    /// Keeps Unity Catalog in step: tables are registered after their first commit and widened through SQL.
    pub fn with_catalog(mut self, catalog: Arc<Catalog>) -> Lakehouse {
        self.catalog = Some(catalog);
        self
    }

    pub fn lake(&self) -> &Lake {
        &self.lake
    }

    fn slot(&self, uri: &str) -> Slot {
        let mut tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        tables.entry(uri.to_string()).or_default().clone()
    }

    /// Opens a table, or returns an unloaded handle when none exists there yet.
    async fn open(&self, uri: &str, table: &str) -> Result<DeltaTable, WriteError> {
        let url = table_url(uri).map_err(|message| WriteError { table: table.into(), message, retryable: false })?;
        DeltaTable::try_from_url_with_storage_options(url, self.storage_options.clone())
            .await
            .map_err(|e| WriteError::delta(table, e))
    }

    /// Appends rows to `<lake>/<schema>/<table>` in one commit, creating the table or adding columns as needed.
    /// Commit conflicts are retried with backoff; every commit carries this writer's own `txn` so that a retry after
    /// an ambiguous failure never commits the same rows twice.
    pub async fn append(&self, w: TableWrite<'_>, uuid_ts: Micros) -> Result<Written, WriteError> {
        let uri = self.lake.table_uri(w.schema, w.table);
        let slot = self.slot(&uri);
        let mut guard = slot.lock().await;
        let mut cached = match guard.take() {
            Some(c) => c,
            None => Cached { dt: self.open(&uri, w.table).await?, txns: HashMap::new() },
        };
        let seq = self.commit_seq.fetch_add(1, Ordering::SeqCst) as i64;
        let name = w.schema_and_table();
        let started = Instant::now();
        let mut retries = 0u32;
        let mut maybe_landed = false;
        let result = loop {
            let (kind, e) = match self.try_append(&mut cached, &w, uuid_ts, seq, maybe_landed, &mut retries).await {
                Ok(mut written) => {
                    written.conflict_retries = retries;
                    break Ok(written);
                }
                Err(Attempt::Fatal(e)) => break Err(e),
                Err(Attempt::Transient(e)) => {
                    // The commit may have landed before the error: the next attempt checks first.
                    maybe_landed = true;
                    ("storage error", e)
                }
                Err(Attempt::Conflict(e)) => ("commit conflict", e),
            };
            let Some(pause) = self.backoff.delay(retries, started) else {
                break Err(WriteError { retryable: true, ..e });
            };
            retries += 1;
            tracing::debug!(table = %name, attempt = retries, pause_ms = pause.as_millis() as u64, error = %e, "{kind}; retrying");
            tokio::time::sleep(pause).await;
            cached.txns.clear();
            if let Err(e) = self.refresh(&mut cached.dt, &uri, w.table).await {
                break Err(e);
            }
        };
        if let Ok(written) = &result {
            *guard = Some(cached);
            tracing::info!(table = %name, rows = written.rows, version = written.version, new_columns = written.new_columns.len(),
                conflicts = retries, skipped = written.skipped, "committed");
        }
        // On failure the handle is dropped: the next write reloads the table from storage.
        result
    }

    async fn refresh(&self, dt: &mut DeltaTable, uri: &str, table: &str) -> Result<(), WriteError> {
        if dt.version().is_some() && dt.update_incremental(None).await.is_ok() {
            return Ok(());
        }
        *dt = self.open(uri, table).await?;
        Ok(())
    }

    /// The version a stream's `txn` action records in this table, if any.
    async fn txn_version(dt: &DeltaTable, app_id: &str) -> Result<Option<i64>, DeltaTableError> {
        match dt.snapshot() {
            Ok(s) => s.transaction_version(dt.log_store().as_ref(), app_id).await,
            Err(_) => Ok(None),
        }
    }

    /// One attempt: plan the columns against the table as last loaded, build the batch, write and commit.
    async fn try_append(
        &self,
        cached: &mut Cached,
        w: &TableWrite<'_>,
        uuid_ts: Micros,
        seq: i64,
        maybe_landed: bool,
        retries: &mut u32,
    ) -> Result<Written, Attempt> {
        let table = w.table;
        let fatal = |e: DeltaTableError| Attempt::classify(table, e);
        let Cached { dt, txns } = cached;
        // A previous attempt that failed ambiguously may have committed after all.
        if maybe_landed
            && let Some(done) = Self::txn_version(dt, &self.writer_id).await.map_err(fatal)?
            && done >= seq
        {
            return Ok(Written {
                version: dt.version().unwrap_or(0) as i64,
                skipped: w.rows.len(),
                ..Default::default()
            });
        }
        // Rows of a stream at or below the version committed for it are redeliveries.
        for app in w.rows.iter().filter_map(|r| r.offset.as_ref()).map(|o| o.app_id.clone()) {
            if let std::collections::hash_map::Entry::Vacant(slot) = txns.entry(app) {
                let v = Self::txn_version(dt, slot.key()).await.map_err(fatal)?.unwrap_or(i64::MIN);
                slot.insert(v);
            }
        }
        let committed = &*txns;
        let (fresh, redelivered): (Vec<&Row>, Vec<&Row>) =
            w.rows.iter().partition(|r| r.offset.as_ref().is_none_or(|o| o.seq > committed[&o.app_id]));
        let skipped = redelivered.len();
        let exists = dt.version().is_some();
        let location = self.lake.table_uri(w.schema, table);
        let mut plan = if exists {
            check_features(dt, table).map_err(Attempt::Fatal)?;
            let schema = dt.snapshot().map_err(fatal)?.snapshot().arrow_schema();
            self.plan(table, Some(&schema), w.kind, &fresh)
        } else {
            self.plan(table, None, w.kind, &fresh)
        };
        if let (Some(catalog), true) = (&self.catalog, exists) {
            let catalog_err = |e: CatalogError| {
                let err = WriteError { table: table.into(), message: e.message, retryable: e.retryable };
                if e.retryable { Attempt::Transient(err) } else { Attempt::Fatal(err) }
            };
            if plan.new_columns.is_empty() {
                // The first look at a table this process has not written yet; no call after that.
                catalog.register(w.schema, table, &location).await.map_err(catalog_err)?;
            } else {
                // New columns go through the warehouse, which changes the Delta log as Databricks does;
                // then the table is read again and the rows are appended to it as it now is.
                let new: Vec<(String, ColumnType)> =
                    plan.columns.iter().filter(|(n, _)| plan.new_columns.contains(n)).cloned().collect();
                catalog.add_columns(w.schema, table, &location, &new).await.map_err(catalog_err)?;
                dt.update_incremental(None).await.map_err(fatal)?;
                txns.clear();
                check_features(dt, table).map_err(Attempt::Fatal)?;
                let schema = dt.snapshot().map_err(fatal)?.snapshot().arrow_schema();
                plan = self.plan(table, Some(&schema), w.kind, &fresh);
            }
        }
        let build = |rows: &[&Row]| {
            arrow::build(table, &plan.columns, rows.iter().copied(), uuid_ts, |name| {
                plan.unplaced(table, name, self.max_columns)
            })
            .map_err(|e| Attempt::Fatal(WriteError { table: table.into(), message: e.to_string(), retryable: false }))
        };
        // A redelivered row is not written again, but what it could not store is reported again: the discards
        // table keeps its own stream offsets and skips what it already holds.
        let mut discards = if redelivered.is_empty() { Vec::new() } else { build(&redelivered)?.1 };
        if fresh.is_empty() {
            return Ok(Written { version: dt.version().unwrap_or(0) as i64, skipped, discards, ..Default::default() });
        }
        let mut actions = vec![Transaction::new_with_last_update(
            self.writer_id.as_str(),
            seq,
            Some(chrono::Utc::now().timestamp_millis()),
        )];
        let mut highest: HashMap<Arc<str>, i64> = HashMap::new();
        for o in fresh.iter().filter_map(|r| r.offset.as_ref()) {
            let h = highest.entry(o.app_id.clone()).or_insert(o.seq);
            *h = (*h).max(o.seq);
        }
        actions.extend(highest.iter().map(|(app, v)| {
            Transaction::new_with_last_update(app.as_ref(), *v, Some(chrono::Utc::now().timestamp_millis()))
        }));
        let props = CommitProperties::default()
            .with_application_transactions(actions)
            .with_max_retries(INTERNAL_REBASES)
            .with_create_checkpoint(false)
            .with_cleanup_expired_logs(Some(false));

        let (batch, fresh_discards) = build(&fresh)?;
        discards.extend(fresh_discards);
        let rows = batch.num_rows();
        let version = if exists {
            let mut writer = RecordBatchWriter::for_table(dt).map_err(fatal)?;
            let mode = if plan.new_columns.is_empty() { WriteMode::Default } else { WriteMode::MergeSchema };
            writer.write_with_mode(batch, mode).await.map_err(fatal)?;
            let adds = writer.flush().await.map_err(fatal)?;
            self.commit_files(dt, &plan.columns, adds, props, retries).await?
        } else {
            let version = self.create_with(dt, &plan.columns, batch, props).await.map_err(fatal)?;
            if let Some(catalog) = &self.catalog
                && let Err(e) = catalog.register(w.schema, table, &location).await
            {
                // The rows are committed; the next write to this table tries the registration again.
                tracing::warn!(table, error = %e, "table written but not yet registered in Unity Catalog");
            }
            version
        };
        txns.extend(highest);
        self.maybe_checkpoint(dt, version).await;
        Ok(Written {
            version: version as i64,
            rows,
            new_columns: plan.new_columns,
            discards,
            conflict_retries: 0,
            skipped,
        })
    }

    /// Commits written data files, adding the columns the table lacks. When another writer commits first, the
    /// same files are committed again after a pause, as long as the table's columns still fit them; a change that
    /// does not fit (or a racing commit of the same stream) goes back to the caller to rebuild.
    async fn commit_files(
        &self,
        dt: &mut DeltaTable,
        columns: &[(String, ColumnType)],
        adds: Vec<deltalake::kernel::Add>,
        props: CommitProperties,
        retries: &mut u32,
    ) -> Result<u64, Attempt> {
        let table = dt.table_url().to_string();
        let started = Instant::now();
        loop {
            let snapshot = dt.snapshot().map_err(|e| Attempt::classify(&table, e))?;
            let mut actions: Vec<Action> = adds.iter().cloned().map(Action::Add).collect();
            if let Some(metadata) = widened_metadata(snapshot, columns).map_err(|e| Attempt::classify(&table, e))? {
                actions.push(Action::Metadata(metadata));
            }
            let op = DeltaOperation::Write { mode: SaveMode::Append, partition_by: None, predicate: None };
            let result = CommitBuilder::from(props.clone())
                .with_actions(actions)
                .build(Some(snapshot), dt.log_store(), op)
                .await;
            let e = match result {
                Ok(finalized) => {
                    let version = finalized.version();
                    dt.state = Some(finalized.snapshot());
                    return Ok(version);
                }
                Err(e) => e,
            };
            let reusable = matches!(
                &e,
                DeltaTableError::Transaction {
                    source: TransactionError::MaxCommitAttempts(_)
                        | TransactionError::VersionAlreadyExists(_)
                        | TransactionError::CommitConflict(CommitConflictError::MetadataChanged)
                }
            );
            let Some(pause) = reusable.then(|| self.backoff.delay(*retries, started)).flatten() else {
                return Err(Attempt::classify(&table, e));
            };
            *retries += 1;
            tokio::time::sleep(pause).await;
            dt.update_incremental(None).await.map_err(|e| Attempt::classify(&table, e))?;
            let current = dt.snapshot().map_err(|e| Attempt::classify(&table, e))?.snapshot().arrow_schema();
            let fits = columns.iter().all(|(name, t)| {
                current.field_with_name(name).map_or(true, |f| arrow::column_type(f.data_type()) == Some(*t))
            });
            if !fits {
                return Err(Attempt::Conflict(WriteError {
                    table,
                    message: "another writer gave a column a different type; rebuilding".into(),
                    retryable: true,
                }));
            }
        }
    }

    /// Checkpoints every `delta.checkpointInterval` versions, so a cold start replays at most that many commits.
    async fn maybe_checkpoint(&self, dt: &DeltaTable, version: u64) {
        let interval = dt.snapshot().map(|s| s.table_config().checkpoint_interval().get()).unwrap_or(100);
        if version == 0 || !version.is_multiple_of(interval) {
            return;
        }
        match deltalake::checkpoints::create_checkpoint(dt, None).await {
            Ok(()) => tracing::debug!(version, "checkpoint written"),
            Err(e) => tracing::warn!(version, error = %e, "checkpoint failed; the next one will cover it"),
        }
    }

    /// Which columns the batch has: the table's (or a new table's fixed ones), then new columns in order of first
    /// appearance, up to the column cap.
    fn plan(
        &self,
        table: &str,
        existing: Option<&deltalake::arrow::datatypes::Schema>,
        kind: TableKind,
        rows: &[&Row],
    ) -> Plan {
        let mut plan = Plan::default();
        match existing {
            Some(schema) => {
                for f in schema.fields() {
                    match arrow::column_type(f.data_type()) {
                        Some(t) => plan.columns.push((f.name().clone(), t)),
                        None => {
                            let reason = format!(
                                "column {} of {table} has type {} which this loader does not write",
                                f.name(),
                                f.data_type()
                            );
                            plan.foreign.insert(f.name().clone(), reason);
                        }
                    }
                }
            }
            None => plan.columns.extend(kind.fixed_columns().into_iter().map(|(n, t)| (n.to_string(), t))),
        }
        let known = plan.columns.len() + plan.foreign.len();
        let mut seen: HashSet<String> =
            plan.columns.iter().map(|(n, _)| n.clone()).chain(plan.foreign.keys().cloned()).collect();
        for row in rows {
            for (name, value) in &row.cols {
                if seen.contains(name.as_ref()) {
                    continue;
                }
                seen.insert(name.to_string());
                if known + plan.new_columns.len() >= self.max_columns {
                    plan.over_cap = true;
                    continue;
                }
                plan.new_columns.push(name.to_string());
                plan.columns.push((name.to_string(), value.natural_type()));
            }
        }
        plan
    }

    /// Writes the first data file and creates the table with it in version 0.
    async fn create_with(
        &self,
        dt: &mut DeltaTable,
        columns: &[(String, ColumnType)],
        batch: deltalake::arrow::record_batch::RecordBatch,
        props: CommitProperties,
    ) -> Result<u64, DeltaTableError> {
        let uri = dt.table_url().to_string();
        let mut writer =
            RecordBatchWriter::try_new(&uri, arrow::arrow_schema(columns), None, Some(self.storage_options.clone()))?;
        writer.write(batch).await?;
        let adds = writer.flush().await?;
        let fields: Vec<deltalake::kernel::StructField> = columns
            .iter()
            .map(|(n, t)| deltalake::kernel::StructField::new(n.clone(), kernel_type(*t), true))
            .collect();
        let created = dt
            .create()
            .with_columns(fields)
            .with_configuration_property(TableProperty::SetTransactionRetentionDuration, Some(TXN_RETENTION))
            // Version 0 is written once: when another writer created the table first, delta-rs would otherwise
            // retry this create as version 1, replacing the table's metadata. The caller reloads and appends.
            .with_commit_properties(props.with_max_retries(0))
            .with_actions(adds.into_iter().map(deltalake::kernel::Action::Add))
            .await?;
        let version = created.version().unwrap_or(0);
        *dt = created;
        Ok(version)
    }
}

/// The column plan of one attempt.
#[derive(Default)]
struct Plan {
    columns: Vec<(String, ColumnType)>,
    new_columns: Vec<String>,
    /// Existing columns of types this loader does not write, with the reason.
    foreign: HashMap<String, String>,
    over_cap: bool,
}

impl Plan {
    /// Why a row's column has no place in the batch.
    fn unplaced(&self, table: &str, name: &str, max: usize) -> Option<String> {
        self.foreign.get(name).cloned().or_else(|| {
            self.over_cap
                .then(|| format!("table {table} has reached its limit of {max} columns (SEGMENT_DELTA_MAX_COLUMNS)"))
        })
    }
}

/// How one attempt failed: a conflict (nothing committed) and a storage error (the commit may have landed) are
/// retried after a pause; anything else is returned.
enum Attempt {
    Conflict(WriteError),
    Transient(WriteError),
    Fatal(WriteError),
}

impl Attempt {
    fn classify(table: &str, e: DeltaTableError) -> Attempt {
        let conflict = matches!(
            &e,
            DeltaTableError::Transaction {
                source: TransactionError::CommitConflict(_)
                    | TransactionError::MaxCommitAttempts(_)
                    | TransactionError::VersionAlreadyExists(_)
            } | DeltaTableError::VersionAlreadyExists(_)
        ) || e.to_string().contains("already exists at that location");
        let transient = matches!(
            &e,
            DeltaTableError::ObjectStore { .. }
                | DeltaTableError::Io { .. }
                | DeltaTableError::Transaction { source: TransactionError::ObjectStore { .. } }
        );
        let err = WriteError::delta(table, e);
        if conflict {
            Attempt::Conflict(err)
        } else if transient {
            Attempt::Transient(err)
        } else {
            Attempt::Fatal(err)
        }
    }
}

/// Delta features this writer cannot honour: a table Databricks upgraded to one of them is reported, not written.
const UNSUPPORTED_FEATURES: &[&str] = &[
    "typeWidening",
    "typeWidening-preview",
    "rowTracking",
    "domainMetadata",
    "inCommitTimestamp",
    "clustering",
    "variantType",
    "variantType-preview",
    "icebergCompatV1",
    "icebergCompatV2",
    "collations-preview",
];

fn check_features(dt: &DeltaTable, table: &str) -> Result<(), WriteError> {
    let Ok(snapshot) = dt.snapshot() else { return Ok(()) };
    let p = snapshot.protocol();
    let mut found: Vec<String> = p
        .writer_features()
        .into_iter()
        .flatten()
        .map(|f| f.as_ref().to_string())
        .chain(p.reader_features().into_iter().flatten().map(|f| f.to_string()))
        .filter(|f| UNSUPPORTED_FEATURES.contains(&f.as_str()))
        .collect();
    found.sort();
    found.dedup();
    if found.is_empty() && p.min_writer_version() <= 7 {
        return Ok(());
    }
    Err(WriteError {
        table: table.into(),
        message: format!(
            "the table uses Delta features this writer cannot write ({}; writer version {}); nothing was written. \
             Disable them on the table (or let Databricks write to it) and retry",
            if found.is_empty() { "none named".to_string() } else { found.join(", ") },
            p.min_writer_version()
        ),
        retryable: false,
    })
}

/// The table's metadata with the columns it lacks appended, or `None` when it has them all.
fn widened_metadata(
    snapshot: &deltalake::table::state::DeltaTableState,
    columns: &[(String, ColumnType)],
) -> Result<Option<deltalake::kernel::Metadata>, DeltaTableError> {
    let schema = snapshot.schema();
    let mut fields: Vec<StructField> = schema.fields().cloned().collect();
    let before = fields.len();
    for (name, t) in columns {
        if schema.field(name).is_none() {
            fields.push(StructField::new(name.clone(), kernel_type(*t), true));
        }
    }
    if fields.len() == before {
        return Ok(None);
    }
    let widened = StructType::try_new(fields)?;
    Ok(Some(snapshot.metadata().clone().with_schema(&widened)?))
}

fn kernel_type(t: ColumnType) -> deltalake::kernel::DataType {
    use deltalake::kernel::{DataType, PrimitiveType};
    DataType::Primitive(match t {
        ColumnType::Timestamp => PrimitiveType::Timestamp,
        ColumnType::BigInt => PrimitiveType::Long,
        ColumnType::Double => PrimitiveType::Double,
        ColumnType::Boolean => PrimitiveType::Boolean,
        ColumnType::String => PrimitiveType::String,
    })
}

impl TableWrite<'_> {
    fn schema_and_table(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }
}
