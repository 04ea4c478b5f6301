//! Delta tables: one cached handle per table, created on first sight, widened when new columns arrive, and
//! appended to with one commit per micro-batch, within what each table's protocol allows.
//!
//! The toolkit, shared by appends and maintenance: `table` (a table as a writer holds it), `protocol` (which
//! tables may be written and how), `plan` (the columns of an append), `files` (data files as the protocol lays
//! them out), `commit` (the one commit-with-rebase path), `log` (reading the log directly), `errors`.

pub mod arrow;
pub mod cache;
pub mod commit;
pub mod errors;
pub mod files;
pub mod log;
pub mod plan;
pub mod protocol;
pub mod registry;
pub mod storage;
pub mod table;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deltalake::arrow::array::{Array, BooleanArray};
use deltalake::arrow::compute::filter_record_batch;
use deltalake::arrow::error::ArrowError;
use deltalake::arrow::record_batch::RecordBatch;
use deltalake::kernel::{Action, Metadata, Protocol, StructField, StructType, Transaction};
use deltalake::logstore::LogStoreRef;
use deltalake::{DeltaTableError, ObjectStore};
use serde_json::json;

use self::cache::Handles;
use self::commit::{Commit, CommitError, Verdict};
use self::errors::{ErrorClass, Failure, classify};
use self::files::FileLayout;
use self::plan::{Plan, Planned};
use self::protocol::{ColumnMapping, Operation};
use self::registry::{Admission, Registry};
use self::table::TableState;
use crate::catalog::{Catalog, CatalogError};
use crate::config::{Lake, TableLimits};
use crate::layout::rows::{self, Discard, Row};
use crate::layout::value::Micros;
use crate::layout::{TableKind, paths};
use crate::retry::Backoff;

pub use self::errors::WriteError;
pub use self::table::table_url;

/// Rows bound for one table of one schema.
pub struct TableWrite<'a> {
    pub schema: &'a str,
    pub table: &'a str,
    pub kind: TableKind,
    pub rows: Vec<Row>,
}

/// How long a stream's `txn` entries are kept in the state of the tables this loader creates.
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
    /// Values that could not be stored as sent (cast failures, columns past the cap, NULLs for NOT NULL columns).
    pub discards: Vec<Discard>,
}

/// A table handle kept across writes, with the stream versions its `txn` actions record as of that handle. The
/// versions stay valid across this writer's own commits and are dropped whenever the table is read again.
struct Cached {
    log_store: LogStoreRef,
    /// `None` while no table exists at the location.
    state: Option<TableState>,
    streams: HashMap<Arc<str>, i64>,
}

type Slot = Arc<tokio::sync::Mutex<Option<Cached>>>;

/// About how many bytes a cached handle holds: its snapshot grows with the table's columns.
fn handle_bytes(cached: &Cached) -> usize {
    const BASE: usize = 16 << 10;
    const PER_COLUMN: usize = 2 << 10;
    BASE + PER_COLUMN * cached.state.as_ref().map_or(0, |s| s.snapshot.schema().fields().len())
}

pub struct Lakehouse {
    lake: Lake,
    storage_options: HashMap<String, String>,
    max_columns: usize,
    tables: Mutex<Handles<tokio::sync::Mutex<Option<Cached>>>>,
    registry: Registry,
    backoff: Backoff,
    catalog: Option<Arc<dyn Catalog>>,
    /// Checkpoints being written in the background, and the tables they are for (one at a time per table).
    background: Mutex<tokio::task::JoinSet<()>>,
    checkpointing: Arc<Mutex<HashSet<String>>>,
}

/// How one attempt failed.
enum Attempt {
    /// Plan again from the table as it now is (already read again), at once.
    Replan(String),
    /// Storage failed; the commit may have landed. Pause, then check for it before trying again.
    Transient(WriteError),
    Fatal(WriteError),
}

impl Lakehouse {
    pub fn new(lake: Lake, storage_options: HashMap<String, String>, max_columns: usize) -> Lakehouse {
        Lakehouse {
            lake,
            storage_options,
            max_columns,
            tables: Mutex::new(Handles::new(TableLimits::default().cache_tables, TableLimits::default().cache_bytes)),
            registry: Registry::new(TableLimits::default().max_tables),
            backoff: Backoff { total: Duration::from_secs(30), ..Backoff::default() },
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

    /// Bounds the tables per schema and the handles kept between writes.
    pub fn with_table_limits(mut self, limits: TableLimits) -> Lakehouse {
        self.tables = Mutex::new(Handles::new(limits.cache_tables, limits.cache_bytes));
        self.registry = Registry::new(limits.max_tables);
        self
    }

    /// Whether a table exists, may be created, or would be past its schema's limit of event tables; with
    /// `reserve`, a new table within the limit counts as the schema's from now on.
    pub async fn admit(&self, schema: &str, table: &str, kind: TableKind, reserve: bool) -> Admission {
        self.registry.admit(&self.lake, &self.storage_options, schema, table, kind, reserve).await
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
        self.tables.lock().unwrap_or_else(|p| p.into_inner()).get(uri)
    }

    /// Opens a table's log: its protocol and metadata, or nothing when no table exists there yet.
    async fn open(&self, uri: &str) -> Result<Cached, WriteError> {
        let table = paths_table_name(uri);
        let log_store = table::log_store(uri, &self.storage_options).map_err(|e| WriteError::new(table, e))?;
        let state = match TableState::load(&log_store, None).await {
            Ok(state) => state,
            Err(e) => return Err(WriteError::new(table, table::explain(&log_store, e, Operation::Append).await)),
        };
        Ok(Cached { log_store, state, streams: HashMap::new() })
    }

    /// Appends rows to `<lake>/<schema>/<table>` in one commit, creating the table or adding columns as needed.
    /// Lost races are rebased or re-planned, storage errors retried with backoff; every commit carries a token of
    /// its own, so that a commit whose answer was lost is recognised instead of written twice.
    pub async fn append(&self, w: TableWrite<'_>, uuid_ts: Micros) -> Result<Written, WriteError> {
        let uri = paths::table_uri(&self.lake, w.schema, w.table);
        let name = format!("{}.{}", w.schema, w.table);
        let slot = self.slot(&uri);
        let mut guard = slot.lock().await;
        let mut cached = match guard.take() {
            Some(c) => c,
            None => self.open(&uri).await?,
        };
        let token: Arc<str> = uuid::Uuid::new_v4().to_string().into();
        // Where this write's commits can appear: after the version its first attempt read.
        let first = cached.state.as_ref().map_or(0, |s| s.version + 1);
        let started = Instant::now();
        let (mut retries, mut failures) = (0u32, 0u32);
        let mut maybe_landed = false;
        let result = loop {
            if maybe_landed {
                match self.find_own(&mut cached, &uri, first, &token).await {
                    Ok(Some(version)) => {
                        break Ok(Written { version: version as i64, skipped: w.rows.len(), ..Default::default() });
                    }
                    Ok(None) => {}
                    Err(e) => break Err(e),
                }
            }
            match self.try_append(&mut cached, &w, uuid_ts, &token, &mut retries).await {
                Ok(mut written) => {
                    written.conflict_retries = retries;
                    break Ok(written);
                }
                Err(Attempt::Fatal(e)) => break Err(e),
                Err(Attempt::Replan(why)) => {
                    cached.streams.clear();
                    tracing::debug!(table = %name, why, "planning the write again");
                    if started.elapsed() > self.backoff.total {
                        break Err(WriteError::new(w.table, Failure::Unavailable(why)));
                    }
                }
                Err(Attempt::Transient(e)) => {
                    maybe_landed = true;
                    let Some(pause) = self.backoff.delay(failures, started) else { break Err(e) };
                    failures += 1;
                    retries += 1;
                    tracing::debug!(table = %name, attempt = failures, pause_ms = pause.as_millis() as u64, error = %e, "storage error; retrying");
                    tokio::time::sleep(pause).await;
                    if let Err(e) = self.reopen(&mut cached, &uri).await {
                        break Err(e);
                    }
                }
            }
        };
        if let Ok(written) = &result {
            let bytes = handle_bytes(&cached);
            *guard = Some(cached);
            drop(guard);
            drop(slot);
            self.tables.lock().unwrap_or_else(|p| p.into_inner()).sized(&uri, bytes);
            let took = started.elapsed();
            tracing::info!(table = %name, rows = written.rows, version = written.version, new_columns = written.new_columns.len(),
                conflicts = retries, skipped = written.skipped, discards = written.discards.len(), ms = took.as_millis() as u64, "committed");
            crate::metrics::committed(w.schema, w.table, written.rows, retries, took);
        }
        // On failure the handle is dropped: the next write reads the table from storage again.
        if result.is_err() {
            crate::metrics::write_failed(w.schema, w.table);
        }
        rows::free(w.rows);
        result
    }

    /// Reads the table again after a failed attempt.
    async fn reopen(&self, cached: &mut Cached, uri: &str) -> Result<(), WriteError> {
        cached.streams.clear();
        let table = paths_table_name(uri);
        if let Some(state) = &mut cached.state {
            match state.update(&cached.log_store, None).await {
                Ok(()) => return Ok(()),
                Err(e) if classify(&e) == ErrorClass::Conflict => {}
                Err(e) => return Err(WriteError::new(table, e)),
            }
        }
        *cached = self.open(uri).await?;
        Ok(())
    }

    /// After a storage error: the version of this write's own commit, if an earlier attempt landed after all.
    async fn find_own(
        &self,
        cached: &mut Cached,
        uri: &str,
        first: u64,
        token: &str,
    ) -> Result<Option<u64>, WriteError> {
        let table = paths_table_name(uri);
        let latest = match &cached.state {
            Some(s) => s.version,
            None => match log::latest_version(&cached.log_store, 0).await {
                Ok(v) => v,
                Err(e) if classify(&e) == ErrorClass::MissingTable => return Ok(None),
                Err(e) => return Err(WriteError::new(table, e)),
            },
        };
        if latest < first {
            return Ok(None);
        }
        log::find_token(&cached.log_store, first, latest, token).await.map_err(|e| WriteError::new(table, e))
    }

    /// The version a stream's `txn` action records in this table, if any.
    async fn stream_version(cached: &Cached, app_id: &str) -> Result<Option<i64>, DeltaTableError> {
        match &cached.state {
            Some(state) => log::txn_version(&cached.log_store, state.version, app_id).await,
            None => Ok(None),
        }
    }

    /// One attempt: check the protocol, plan the columns against the table as last read, build the batch, write
    /// the data files and commit them.
    async fn try_append(
        &self,
        cached: &mut Cached,
        w: &TableWrite<'_>,
        uuid_ts: Micros,
        token: &Arc<str>,
        retries: &mut u32,
    ) -> Result<Written, Attempt> {
        let table = w.table;
        let delta = |e: DeltaTableError| match classify(&e) {
            ErrorClass::Transient | ErrorClass::Conflict => Attempt::Transient(WriteError::new(table, e)),
            _ => Attempt::Fatal(WriteError::new(table, e)),
        };
        // Rows of a stream at or below the version committed for it are redeliveries.
        for app in w.rows.iter().filter_map(|r| r.offset.as_ref()).map(|o| o.app_id.clone()) {
            if !cached.streams.contains_key(&app) {
                let v = Self::stream_version(cached, &app).await.map_err(delta)?.unwrap_or(i64::MIN);
                cached.streams.insert(app, v);
            }
        }
        let committed = &cached.streams;
        let (fresh, redelivered): (Vec<&Row>, Vec<&Row>) =
            w.rows.iter().partition(|r| r.offset.as_ref().is_none_or(|o| o.seq > committed[&o.app_id]));
        let skipped = redelivered.len();
        let location = paths::table_uri(&self.lake, w.schema, table);
        let refused = |e: protocol::Refusal| Attempt::Fatal(WriteError::new(table, e));
        if let Some(state) = &cached.state {
            state.rules(Operation::Append).map_err(refused)?;
        }
        let invalid = |e: ArrowError| Attempt::Fatal(WriteError::new(table, Failure::Invalid(e.to_string())));
        // The batch is built as the columns are planned, in one pass over the rows: the table's columns, then the
        // rows' new ones as they come.
        let build_fresh = |plan: &mut Plan| {
            if fresh.is_empty() {
                return Ok(None);
            }
            arrow::build(table, plan, fresh.iter().copied(), uuid_ts).map(Some).map_err(invalid)
        };
        let mut plan = self.plan(table, cached.state.as_ref(), w.kind);
        let mut built = build_fresh(&mut plan)?;
        // Columns the catalog added for this write (the append itself then adds none).
        let mut added_by_catalog: Vec<String> = Vec::new();
        if let (Some(catalog), Some(state)) = (&self.catalog, &mut cached.state) {
            let catalog_err = |e: CatalogError| {
                let retryable = e.retryable;
                let err = WriteError::new(table, e);
                if retryable { Attempt::Transient(err) } else { Attempt::Fatal(err) }
            };
            if plan.new_columns.is_empty() {
                // The first look at a table this process has not written yet; no call after that.
                catalog.register(w.schema, table, &location).await.map_err(catalog_err)?;
            } else {
                // New columns go through the warehouse, which changes the Delta log as Databricks does; then the
                // table is read again and the rows are appended to it as it now is.
                let new: Vec<(String, _)> =
                    plan.columns.iter().filter(|(n, _)| plan.new_columns.contains(n)).cloned().collect();
                catalog.add_columns(w.schema, table, &location, &new).await.map_err(catalog_err)?;
                state.update(&cached.log_store, None).await.map_err(delta)?;
                cached.streams.clear();
                state.rules(Operation::Append).map_err(refused)?;
                // Planned and built again against the table as it now is.
                plan = self.plan(table, Some(state), w.kind);
                built = build_fresh(&mut plan)?;
                added_by_catalog = new.into_iter().map(|(n, _)| n).collect();
            }
        }
        // A redelivered row is not written again, but what it could not store is reported again: the discards
        // table keeps its own stream offsets and skips what it already holds.
        let mut discards = if redelivered.is_empty() {
            Vec::new()
        } else {
            arrow::build(table, &mut Planned(&plan), redelivered.iter().copied(), uuid_ts).map_err(invalid)?.1
        };
        let current = cached.state.as_ref().map_or(0, |s| s.version as i64);
        let Some((batch, cast_discards)) = built else {
            return Ok(Written { version: current, skipped, discards, ..Default::default() });
        };
        discards.extend(cast_discards);
        // A row without a value for a NOT NULL column is not written: it goes whole to `discards`.
        let (batch, kept) = required_values(table, &plan, batch, &fresh, &mut discards);
        let rows = batch.num_rows();
        if rows == 0 {
            return Ok(Written { version: current, skipped, discards, ..Default::default() });
        }

        let now = Some(chrono::Utc::now().timestamp_millis());
        let mut highest: HashMap<Arc<str>, i64> = HashMap::new();
        for o in kept.iter().filter_map(|r| r.offset.as_ref()) {
            let h = highest.entry(o.app_id.clone()).or_insert(o.seq);
            *h = (*h).max(o.seq);
        }
        let txns: Vec<Action> = highest
            .iter()
            .map(|(app, v)| Action::Txn(Transaction::new_with_last_update(app.as_ref(), *v, now)))
            .collect();
        let store = cached.log_store.object_store(None);
        let mut commit = match &cached.state {
            Some(state) => {
                let rules = state.rules(Operation::Append).map_err(refused)?;
                let new_fields = plan.new_fields(rules.column_mapping, commit::max_column_id(state));
                let schema = widened_schema(&state.schema(), &new_fields).map_err(delta)?;
                let layout = state.layout(&rules, &schema);
                let adds = files::write(store.as_ref(), &layout, &batch, true).await.map_err(delta)?;
                let mut commit = Commit::new(Operation::Append, "WRITE");
                commit.parameters.push(("mode", json!("Append")));
                commit.new_columns = new_fields;
                commit.actions = adds.into_iter().map(Action::Add).collect();
                commit
            }
            None => self.create(store.as_ref(), &plan, &batch).await.map_err(delta)?,
        };
        // The data files are written: the batch's memory is not held while the commit waits on storage (a retry
        // commits the same files, or plans again and builds a new batch from the rows).
        drop(batch);
        commit.token = token.clone();
        commit.actions.extend(txns);
        let streams: HashSet<String> = highest.keys().map(|a| a.to_string()).collect();
        let judge = move |winners: &log::Winners| {
            if winners.app_ids.iter().any(|a| streams.contains(a)) {
                Verdict::Replan("another writer committed rows of the same stream")
            } else {
                Verdict::Rebase
            }
        };
        let created = cached.state.is_none();
        let version =
            match commit::commit(&cached.log_store, &mut cached.state, &commit, &judge, self.backoff.total, retries)
                .await
            {
                Ok(v) => v,
                Err(CommitError::Replan(why)) => return Err(Attempt::Replan(why)),
                Err(CommitError::Storage(e)) => return Err(Attempt::Transient(WriteError::new(table, e))),
                Err(CommitError::Contended) => {
                    let e = Failure::Unavailable("lost the commit race for longer than the retry budget".into());
                    return Err(Attempt::Fatal(WriteError::new(table, e)));
                }
                Err(CommitError::Refused(r)) => return Err(refused(r)),
                Err(CommitError::Delta(e)) => return Err(delta(e)),
            };
        if created
            && let Some(catalog) = &self.catalog
            && let Err(e) = catalog.register(w.schema, table, &location).await
        {
            // The rows are committed; the next write to this table tries the registration again.
            tracing::warn!(table, error = %e, "table written but not yet registered in Unity Catalog");
        }
        cached.streams.extend(highest);
        if let Some(state) = &cached.state {
            self.maybe_checkpoint(&cached.log_store, state, version);
        }
        let mut new_columns = plan.new_columns;
        new_columns.extend(added_by_catalog);
        Ok(Written { version: version as i64, rows, new_columns, discards, conflict_retries: 0, skipped })
    }

    /// The columns of an append before its rows are looked at: the table's, or a new table's fixed ones.
    fn plan(&self, table: &str, state: Option<&TableState>, kind: TableKind) -> Plan {
        let schema = state.map(|s| s.schema());
        Plan::start(table, schema.as_deref(), kind, self.max_columns)
    }

    /// The first commit of a new table, with the columns of the plan and `txn` retention for its streams.
    async fn create(
        &self,
        store: &dyn ObjectStore,
        plan: &Plan,
        batch: &RecordBatch,
    ) -> Result<Commit, DeltaTableError> {
        let fields = plan.columns.iter().map(|(n, t)| StructField::new(n.clone(), plan::kernel_type(*t), true));
        let configuration =
            HashMap::from([("delta.setTransactionRetentionDuration".to_string(), TXN_RETENTION.to_string())]);
        new_table(store, StructType::try_new(fields)?, batch, configuration).await
    }

    /// Checkpoints every `delta.checkpointInterval` versions, so a cold start replays at most that many commits.
    /// The checkpoint is written in the background from the log, one at a time per table; one that fails or is
    /// skipped because another is still being written is covered by the next.
    fn maybe_checkpoint(&self, log_store: &LogStoreRef, state: &TableState, version: u64) {
        use deltalake::table::config::TablePropertiesExt;
        let interval = state.snapshot.table_properties().checkpoint_interval().get();
        if version == 0 || !version.is_multiple_of(interval) || state.rules(Operation::Checkpoint).is_err() {
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
}

/// The first commit of a new table: its data files, its protocol (reader 1, writer 2: nothing this writer does not
/// implement) and its metadata. Version 0 is written once, with a put-if-absent like every commit: a writer that
/// finds it taken appends to the table another writer created.
pub async fn new_table(
    store: &dyn ObjectStore,
    schema: StructType,
    batch: &RecordBatch,
    configuration: HashMap<String, String>,
) -> Result<Commit, DeltaTableError> {
    let layout = FileLayout::new(&schema, &[], &configuration, ColumnMapping::None);
    let adds = files::write(store, &layout, batch, true).await?;
    let generic = |e: serde_json::Error| DeltaTableError::Generic(e.to_string());
    let metadata: Metadata = serde_json::from_value(json!({
        "id": uuid::Uuid::new_v4().to_string(),
        "format": {"provider": "parquet", "options": {}},
        "schemaString": serde_json::to_string(&schema).map_err(generic)?,
        "partitionColumns": [],
        "configuration": configuration,
        "createdTime": chrono::Utc::now().timestamp_millis(),
    }))
    .map_err(generic)?;
    let protocol: Protocol =
        serde_json::from_value(json!({"minReaderVersion": 1, "minWriterVersion": 2})).map_err(generic)?;
    let mut commit = Commit::new(Operation::Append, "CREATE TABLE");
    commit.parameters.push(("mode", json!("ErrorIfExists")));
    commit.create = Some((protocol, metadata));
    commit.actions = adds.into_iter().map(Action::Add).collect();
    Ok(commit)
}

/// The table's name in messages, from its URI.
fn paths_table_name(uri: &str) -> &str {
    uri.trim_end_matches('/').rsplit(['/', '\\']).next().unwrap_or(uri)
}

/// The table's schema with `new` appended.
fn widened_schema(schema: &StructType, new: &[StructField]) -> Result<StructType, DeltaTableError> {
    Ok(StructType::try_new(schema.fields().cloned().chain(new.iter().cloned()))?)
}

/// Drops the rows that have no value for a NOT NULL column; each goes whole to `discards`, naming the column.
/// Returns the rows kept.
fn required_values<'r>(
    table: &str,
    plan: &Plan,
    batch: RecordBatch,
    rows: &[&'r Row],
    discards: &mut Vec<Discard>,
) -> (RecordBatch, Vec<&'r Row>) {
    if plan.required.is_empty() {
        return (batch, rows.to_vec());
    }
    let columns: Vec<(&String, Option<&Arc<dyn Array>>)> =
        plan.required.iter().map(|c| (c, batch.column_by_name(c))).collect();
    let mut keep = Vec::with_capacity(rows.len());
    let mut kept = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        let missing = columns.iter().find(|(_, c)| c.is_none_or(|c| c.is_null(i))).map(|(name, _)| *name);
        match missing {
            None => {
                keep.push(true);
                kept.push(*row);
            }
            Some(column) => {
                keep.push(false);
                let reason = format!(
                    "column {column} of {table} is NOT NULL and the row has no value for it; the row is not written"
                );
                discards.push(Discard::whole_row(row, table, column, reason));
            }
        }
    }
    if kept.len() == rows.len() {
        return (batch, kept);
    }
    let mask = BooleanArray::from(keep);
    let filtered = filter_record_batch(&batch, &mask).unwrap_or_else(|_| batch.slice(0, 0));
    (filtered, kept)
}
