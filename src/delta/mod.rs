//! Delta tables: one cached handle per table, created on first sight, widened when new columns arrive, and
//! appended to with one commit per micro-batch.

pub mod arrow;
pub(crate) mod log;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deltalake::kernel::transaction::{CommitProperties, TransactionError};
use deltalake::kernel::{MetadataExt, Snapshot, StructField, StructType, Transaction};
use deltalake::logstore::LogStoreRef;
use deltalake::table::config::TablePropertiesExt;
use deltalake::writer::{DeltaWriter, RecordBatchWriter, WriteMode};
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError, TableProperty};
use url::Url;

use self::log::Open;

use crate::catalog::{Catalog, CatalogError};
use crate::config::Lake;
use crate::layout::rows::Row;
use crate::layout::value::{ColumnType, Micros};
use crate::layout::{TableKind, paths};
use crate::retry::Backoff;

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

/// Commits retried at once after losing a version race, before the pauses begin.
const QUICK_REBASES: u32 = 3;

/// Pauses between commits that lost a version race. Rebasing costs a listing and a read of the winners, so the
/// pauses stay short: long ones would let fresher writers win every race while one writer sleeps.
const RACE_BACKOFF: Backoff =
    Backoff { base: Duration::from_millis(5), max_delay: Duration::from_millis(200), total: Duration::ZERO };

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
    pub discards: Vec<crate::layout::rows::Discard>,
}

/// A table handle kept across writes, with the stream versions its `txn` actions record as of that handle.
/// The versions stay valid across this writer's own commits (a commit that raced another with the same app id
/// is rebuilt) and are dropped on every reload.
struct Cached {
    log_store: LogStoreRef,
    /// `None` while no table exists at the location.
    open: Option<Open>,
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
    catalog: Option<Arc<dyn Catalog>>,
    /// Checkpoints being written in the background, and the tables they are for (one at a time per table).
    background: Mutex<tokio::task::JoinSet<()>>,
    checkpointing: Arc<Mutex<HashSet<String>>>,
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
            background: Mutex::new(tokio::task::JoinSet::new()),
            checkpointing: Default::default(),
        }
    }

    /// How long a write keeps retrying commit conflicts and storage errors before it fails (30 s by default).
    pub fn with_retry_budget(mut self, total: Duration) -> Lakehouse {
        self.backoff.total = total;
        self
    }

    /// Keeps Unity Catalog in step: tables are registered after their first commit and widened through SQL.
    pub fn with_catalog(mut self, catalog: Arc<dyn Catalog>) -> Lakehouse {
        self.catalog = Some(catalog);
        self
    }

    /// Waits for the checkpoints being written in the background; called before the process exits.
    pub async fn finish(&self) {
        let mut tasks = std::mem::take(&mut *self.background.lock().unwrap_or_else(|p| p.into_inner()));
        while tasks.join_next().await.is_some() {}
    }

    pub fn lake(&self) -> &Lake {
        &self.lake
    }

    fn slot(&self, uri: &str) -> Slot {
        let mut tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        tables.entry(uri.to_string()).or_default().clone()
    }

    /// Opens a table's log: its protocol and metadata, or nothing when no table exists there yet.
    async fn open(&self, uri: &str, table: &str) -> Result<Cached, WriteError> {
        let url = table_url(uri).map_err(|message| WriteError { table: table.into(), message, retryable: false })?;
        let log_store = DeltaTableBuilder::from_url(url)
            .and_then(|b| b.with_storage_options(self.storage_options.clone()).build_storage())
            .map_err(|e| WriteError::delta(table, e))?;
        let open = Open::load(&log_store).await.map_err(|e| WriteError::delta(table, e))?;
        Ok(Cached { log_store, open, txns: HashMap::new() })
    }

    /// Appends rows to `<lake>/<schema>/<table>` in one commit, creating the table or adding columns as needed.
    /// Commit conflicts are retried with backoff; every commit carries this writer's own `txn` so that a retry after
    /// an ambiguous failure never commits the same rows twice.
    pub async fn append(&self, w: TableWrite<'_>, uuid_ts: Micros) -> Result<Written, WriteError> {
        let uri = paths::table_uri(&self.lake, w.schema, w.table);
        let slot = self.slot(&uri);
        let mut guard = slot.lock().await;
        let mut cached = match guard.take() {
            Some(c) => c,
            None => self.open(&uri, w.table).await?,
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
            if let Err(e) = self.refresh(&mut cached, &uri, w.table).await
                && !log::listing_raced(&e.message)
            {
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

    /// Reads the log again after a failed attempt; the stream versions are read again when next needed.
    async fn refresh(&self, cached: &mut Cached, uri: &str, table: &str) -> Result<(), WriteError> {
        cached.txns.clear();
        if let Some(open) = &mut cached.open
            && open.update(&cached.log_store, None).await.is_ok()
        {
            return Ok(());
        }
        *cached = self.open(uri, table).await?;
        Ok(())
    }

    /// The version a stream's `txn` action records in this table, if any.
    async fn txn_version(cached: &Cached, app_id: &str) -> Result<Option<i64>, DeltaTableError> {
        match &cached.open {
            Some(open) => log::txn_version(&cached.log_store, open.version, app_id).await,
            None => Ok(None),
        }
    }

    /// One attempt: plan the columns against the table as last read, build the batch, write and commit.
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
        // A previous attempt that failed ambiguously may have committed after all.
        if maybe_landed
            && let Some(done) = Self::txn_version(cached, &self.writer_id).await.map_err(fatal)?
            && done >= seq
        {
            let version = cached.open.as_ref().map_or(0, |o| o.version as i64);
            return Ok(Written { version, skipped: w.rows.len(), ..Default::default() });
        }
        // Rows of a stream at or below the version committed for it are redeliveries.
        for app in w.rows.iter().filter_map(|r| r.offset.as_ref()).map(|o| o.app_id.clone()) {
            if !cached.txns.contains_key(&app) {
                let v = Self::txn_version(cached, &app).await.map_err(fatal)?.unwrap_or(i64::MIN);
                cached.txns.insert(app, v);
            }
        }
        let committed = &cached.txns;
        let (fresh, redelivered): (Vec<&Row>, Vec<&Row>) =
            w.rows.iter().partition(|r| r.offset.as_ref().is_none_or(|o| o.seq > committed[&o.app_id]));
        let skipped = redelivered.len();
        let location = paths::table_uri(&self.lake, w.schema, table);
        let mut plan = match &cached.open {
            Some(open) => {
                check_features(&open.snapshot, table).map_err(Attempt::Fatal)?;
                self.plan(table, Some(&open.snapshot.arrow_schema()), w.kind, &fresh)
            }
            None => self.plan(table, None, w.kind, &fresh),
        };
        if let (Some(catalog), Some(open)) = (&self.catalog, &mut cached.open) {
            let catalog_err = |e: CatalogError| {
                let err = WriteError { table: table.into(), message: e.to_string(), retryable: e.retryable };
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
                open.update(&cached.log_store, None).await.map_err(fatal)?;
                cached.txns.clear();
                check_features(&open.snapshot, table).map_err(Attempt::Fatal)?;
                plan = self.plan(table, Some(&open.snapshot.arrow_schema()), w.kind, &fresh);
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
        let current = cached.open.as_ref().map_or(0, |o| o.version as i64);
        if fresh.is_empty() {
            return Ok(Written { version: current, skipped, discards, ..Default::default() });
        }
        let now = Some(chrono::Utc::now().timestamp_millis());
        let mut txns = vec![Transaction::new_with_last_update(self.writer_id.as_str(), seq, now)];
        let mut highest: HashMap<Arc<str>, i64> = HashMap::new();
        for o in fresh.iter().filter_map(|r| r.offset.as_ref()) {
            let h = highest.entry(o.app_id.clone()).or_insert(o.seq);
            *h = (*h).max(o.seq);
        }
        txns.extend(highest.iter().map(|(app, v)| Transaction::new_with_last_update(app.as_ref(), *v, now)));

        let (batch, fresh_discards) = build(&fresh)?;
        discards.extend(fresh_discards);
        let rows = batch.num_rows();
        let version = match &mut cached.open {
            Some(open) => {
                let mut writer = RecordBatchWriter::for_blind_appends(&open.blind).map_err(fatal)?;
                // The writer starts from the schema the table had when opened; columns added since are merged in.
                writer.write_with_mode(batch, WriteMode::MergeSchema).await.map_err(fatal)?;
                let adds = writer.flush().await.map_err(fatal)?;
                self.commit_files(&cached.log_store, open, table, &plan.columns, &adds, &txns, retries).await?
            }
            None => {
                let props = CommitProperties::default()
                    .with_application_transactions(txns)
                    .with_create_checkpoint(false)
                    .with_cleanup_expired_logs(Some(false));
                let version = self.create_with(&cached.log_store, &plan.columns, batch, props).await.map_err(fatal)?;
                cached.open = Open::load(&cached.log_store).await.map_err(fatal)?;
                if let Some(catalog) = &self.catalog
                    && let Err(e) = catalog.register(w.schema, table, &location).await
                {
                    // The rows are committed; the next write to this table tries the registration again.
                    tracing::warn!(table, error = %e, "table written but not yet registered in Unity Catalog");
                }
                version
            }
        };
        cached.txns.extend(highest);
        if let Some(open) = &cached.open {
            self.maybe_checkpoint(&cached.log_store, &open.snapshot, version);
        }
        Ok(Written {
            version: version as i64,
            rows,
            new_columns: plan.new_columns,
            discards,
            conflict_retries: 0,
            skipped,
        })
    }

    /// Commits written data files, adding the columns the table lacks. When another writer took the version, the
    /// commits it lost to are read: the same files are committed again on top of them as long as the table's
    /// columns still fit them and no commit recorded one of the same streams; otherwise the caller rebuilds.
    /// After a few immediate rebases the retries pause with jittered backoff.
    #[allow(clippy::too_many_arguments)]
    async fn commit_files(
        &self,
        log_store: &LogStoreRef,
        open: &mut Open,
        table: &str,
        columns: &[(String, ColumnType)],
        adds: &[deltalake::kernel::Add],
        txns: &[Transaction],
        retries: &mut u32,
    ) -> Result<u64, Attempt> {
        let classify = |e: DeltaTableError| Attempt::classify(table, e);
        let app_ids: HashSet<&str> = txns.iter().map(|t| t.app_id.as_str()).collect();
        let started = Instant::now();
        let mut lost = 0u32;
        loop {
            let snapshot = &open.snapshot;
            let metadata = widened_metadata(&snapshot.schema(), snapshot.metadata(), columns).map_err(classify)?;
            let bytes = log::append_commit(open.version, txns, metadata.as_ref(), adds).map_err(classify)?;
            let version = open.version + 1;
            match log::write_commit(log_store, version, bytes).await {
                Ok(()) => {
                    open.version = version;
                    if metadata.is_some() {
                        // Read back the schema this commit set; failing that, the next write reads the log again.
                        if let Err(e) = open.update(log_store, Some(version)).await {
                            tracing::warn!(table, error = %e, "committed; reading the new schema back failed");
                        }
                    }
                    return Ok(version);
                }
                Err(TransactionError::VersionAlreadyExists(_)) => {}
                Err(e) => return Err(classify(DeltaTableError::Transaction { source: e })),
            }
            let latest = log_store.get_latest_version(version).await.map_err(classify)?;
            let winners = log::winners(log_store, open.version, latest, &app_ids).await.map_err(classify)?;
            if winners.metadata {
                open.update(log_store, Some(latest)).await.map_err(classify)?;
                check_features(&open.snapshot, table).map_err(Attempt::Fatal)?;
            }
            open.version = open.version.max(latest);
            *retries += 1;
            lost += 1;
            let conflict = |message: &str| {
                Err(Attempt::Conflict(WriteError { table: table.into(), message: message.into(), retryable: true }))
            };
            if winners.same_stream {
                return conflict("another writer committed rows of the same stream; rebuilding");
            }
            let current = open.snapshot.arrow_schema();
            let fits = columns.iter().all(|(name, t)| {
                current.field_with_name(name).map_or(true, |f| arrow::column_type(f.data_type()) == Some(*t))
            });
            if !fits {
                return conflict("another writer gave a column a different type; rebuilding");
            }
            if lost > QUICK_REBASES {
                let race = Backoff { total: self.backoff.total, ..RACE_BACKOFF };
                let Some(pause) = race.delay(lost - QUICK_REBASES, started) else {
                    return conflict("lost the commit race for longer than the retry budget");
                };
                tokio::time::sleep(pause).await;
            }
        }
    }

    /// Checkpoints every `delta.checkpointInterval` versions, so a cold start replays at most that many commits.
    /// The checkpoint is written in the background from the log, one at a time per table; one that fails or is
    /// skipped because another is still being written is covered by the next.
    fn maybe_checkpoint(&self, log_store: &LogStoreRef, snapshot: &Snapshot, version: u64) {
        let interval = snapshot.table_properties().checkpoint_interval().get();
        if version == 0 || !version.is_multiple_of(interval) {
            return;
        }
        let table = log_store.root_url().to_string();
        if !self.checkpointing.lock().unwrap_or_else(|p| p.into_inner()).insert(table.clone()) {
            tracing::debug!(version, "a checkpoint of this table is still being written; skipped");
            return;
        }
        let (log_store, checkpointing) = (log_store.clone(), self.checkpointing.clone());
        let mut background = self.background.lock().unwrap_or_else(|p| p.into_inner());
        while background.try_join_next().is_some() {}
        background.spawn(async move {
            match log::checkpoint(&log_store, version).await {
                Ok(()) => tracing::debug!(version, "checkpoint written"),
                Err(e) => tracing::warn!(version, error = %e, "checkpoint failed; the next one will cover it"),
            }
            checkpointing.lock().unwrap_or_else(|p| p.into_inner()).remove(&table);
        });
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
        log_store: &LogStoreRef,
        columns: &[(String, ColumnType)],
        batch: deltalake::arrow::record_batch::RecordBatch,
        props: CommitProperties,
    ) -> Result<u64, DeltaTableError> {
        let dt = DeltaTable::new(log_store.clone());
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
        Ok(created.version().unwrap_or(0))
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
        ) || e.to_string().contains("already exists at that location")
            // A listing of the log taken while another writer committed (local directories list without order).
            || log::listing_raced(&e.to_string());
        let transient = matches!(
            &e,
            DeltaTableError::ObjectStore { .. }
                | DeltaTableError::Io { .. }
                | DeltaTableError::Transaction { source: TransactionError::ObjectStore { .. } }
                // A data file whose upload failed (the Parquet writer reports the store's error as its own).
                | DeltaTableError::Parquet { source: deltalake::parquet::errors::ParquetError::External(_) }
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

fn check_features(snapshot: &Snapshot, table: &str) -> Result<(), WriteError> {
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
pub(crate) fn widened_metadata(
    schema: &StructType,
    metadata: &deltalake::kernel::Metadata,
    columns: &[(String, ColumnType)],
) -> Result<Option<deltalake::kernel::Metadata>, DeltaTableError> {
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
    Ok(Some(metadata.clone().with_schema(&widened)?))
}

/// The Delta type of a warehouse type.
pub(crate) fn kernel_type(t: ColumnType) -> deltalake::kernel::DataType {
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
