//! `users` (one row per `user_id`, from `identifies`) and `accounts` (one row per `group_id`, from `groups`).
//!
//! Each trait column holds the latest non-null value the source has for the key, ordered by `timestamp`, then
//! `received_at`, then position in the log; `received_at` is that of the latest source row. The source version
//! read through is recorded as a `txn` of the target in the same commit, so a run starts where the last one
//! stopped and a run with nothing new changes nothing.
//!
//! A run finds the keys that the source's new commits carry, recomputes those keys from every source row (so a
//! late identify with an old timestamp cannot overwrite a newer trait), and rewrites the target files that hold
//! them. When the commits since the last run are gone (log cleanup) or deleted rows, every key is recomputed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use deltalake::arrow::array::{Array, ArrayRef, BooleanArray, StringArray, TimestampMicrosecondArray, new_null_array};
use deltalake::arrow::compute::{cast, filter_record_batch, interleave};
use deltalake::arrow::datatypes::{DataType, Field, Schema};
use deltalake::arrow::record_batch::RecordBatch;
use deltalake::kernel::{Action, StructField, StructType, Transaction};
use deltalake::{DeltaTable, DeltaTableError, ObjectStore, Path};
use futures::TryStreamExt;
use serde_json::json;

use super::MaintainError;
use crate::catalog::Catalog;
use crate::config::Config;
use crate::delta::arrow::{arrow_type, column_type as arrow_column_type};
use crate::delta::commit::{self, Commit, Verdict};
use crate::delta::files::{self, FileLayout};
use crate::delta::log;
use crate::delta::plan;
use crate::delta::protocol::Operation;
use crate::delta::table::TableState;
use crate::layout::value::ColumnType;
use crate::layout::{UUID_TS, Upsert, paths};

/// A table's files as the upsert reads them: where they are, how they are laid out, the table's logical schema.
struct Files {
    store: Arc<dyn ObjectStore>,
    layout: FileLayout,
    schema: Arc<Schema>,
}

impl Files {
    async fn of(dt: &DeltaTable) -> Result<(Files, TableState), MaintainError> {
        let log_store = dt.log_store();
        let state = TableState::load(&log_store, dt.version())
            .await?
            .ok_or_else(|| MaintainError::Invalid(format!("{}: no table", dt.table_url())))?;
        let schema = state.schema();
        let layout = state.reading_layout(&schema)?;
        let files = Files { store: log_store.object_store(None), schema: files::arrow_schema(&schema)?, layout };
        Ok((files, state))
    }

    /// The rows of one file with exactly `want`'s columns (by name; absent ones null, types cast).
    async fn read(&self, path: &Path, want: &Arc<Schema>) -> Result<Vec<RecordBatch>, DeltaTableError> {
        let names: Vec<&str> = want.fields().iter().map(|f| f.name().as_str()).collect();
        let batches = files::read(self.store.as_ref(), path, &self.layout, &self.schema, Some(&names)).await?;
        batches.iter().map(|b| conform(b, want)).collect()
    }
}

#[derive(Debug, Default)]
pub struct Outcome {
    /// Target rows written (new or recomputed keys).
    pub rows: usize,
    pub commits: u32,
    pub source_version: u64,
}

fn app_id(spec: &Upsert) -> String {
    format!("segment-delta/upsert/{}", spec.source)
}

fn generic(e: impl std::fmt::Display) -> DeltaTableError {
    DeltaTableError::Generic(e.to_string())
}

pub async fn run(
    config: &Config,
    catalog: Option<&dyn Catalog>,
    schema: &str,
    spec: &Upsert,
) -> Result<Outcome, MaintainError> {
    let source = super::load(config, &paths::table_uri(&config.lake, schema, spec.source)).await?;
    let (source_files, source_state) = Files::of(&source).await?;
    let source_version = source_state.version;
    let mut outcome = Outcome { source_version, ..Default::default() };
    let target_uri = paths::table_uri(&config.lake, schema, spec.target);
    let target = match super::load(config, &target_uri).await {
        Ok(t) => Some(t),
        Err(e) if crate::delta::errors::classify(&e) == crate::delta::errors::ErrorClass::MissingTable => None,
        Err(e) => return Err(e.into()),
    };
    let app = app_id(spec);
    let done = match &target {
        Some(t) => t.snapshot()?.transaction_version(t.log_store().as_ref(), &app).await?,
        None => None,
    };
    if done == Some(source_version as i64) {
        return Ok(outcome);
    }
    if source_files.schema.field_with_name(spec.key).is_err() {
        return Ok(outcome); // No row of the source has the key yet.
    }
    let target = match target {
        Some(t) => {
            let (files, state) = Files::of(&t).await?;
            state.rules(Operation::Upsert)?;
            Some((t, files, state))
        }
        None => None,
    };
    let (changed, appended) = match (done, &target) {
        (Some(d), Some(_)) if d >= 0 => {
            changed_keys(&source, &source_files, d as u64, source_version, spec.key).await?
        }
        _ => (None, true),
    };
    let txn = Action::Txn(Transaction::new_with_last_update(app.as_str(), source_version as i64, Some(now_millis())));
    if let Some(keys) = &changed
        && keys.is_empty()
        && let Some((t, _, state)) = target
    {
        if !appended {
            // Nothing but compaction since the last run: nothing to do, nothing to record.
            return Ok(outcome);
        }
        // Only rows without the key arrived: record the progress alone.
        let mut c = Commit::new(Operation::Upsert, "MERGE");
        c.actions.push(txn);
        commit_target(&t, state, &c, spec).await?;
        outcome.commits = 1;
        return Ok(outcome);
    }
    let rows = recompute(&source, &source_files, spec, changed.as_ref()).await?;
    if rows.num_rows() == 0 && target.is_none() {
        return Ok(outcome);
    }
    outcome.rows = rows.num_rows();
    match target {
        None => {
            create(config, &target_uri, &rows, txn).await?;
            if let Some(catalog) = catalog {
                catalog.register(schema, spec.target, &target_uri).await?;
            }
        }
        Some((mut t, mut files, mut state)) => {
            // Columns the target lacks: through the warehouse when Unity Catalog is kept, else in the commit.
            let new: Vec<(String, ColumnType)> = rows
                .schema()
                .fields()
                .iter()
                .filter(|f| files.schema.field_with_name(f.name()).is_err())
                .filter_map(|f| arrow_column_type(f.data_type()).map(|c| (f.name().clone(), c)))
                .collect();
            let mut new_fields = Vec::new();
            if let Some(catalog) = catalog {
                catalog.register(schema, spec.target, &target_uri).await?;
                if !new.is_empty() {
                    catalog.add_columns(schema, spec.target, &target_uri, &new).await?;
                    t.update_incremental(None).await?;
                    (files, state) = Files::of(&t).await?;
                    state.rules(Operation::Upsert)?;
                }
            } else {
                let rules = state.rules(Operation::Upsert)?;
                new_fields = plan::annotated(
                    new.iter().map(|(n, c)| StructField::new(n.clone(), plan::kernel_type(*c), true)),
                    rules.column_mapping,
                    commit::max_column_id(&state),
                );
            }
            let rules = state.rules(Operation::Upsert)?;
            let widened = StructType::try_new(state.schema().fields().cloned().chain(new_fields.iter().cloned()))
                .map_err(DeltaTableError::from)?;
            let layout = state.layout(&rules, &widened);
            let mut c = Commit::new(Operation::Upsert, "MERGE");
            c.parameters = vec![("predicate", json!(format!("target.id = source.{}", spec.key)))];
            c.actions = rewrite(&t, &files, &layout, &widened, &rows, changed.as_ref()).await?;
            c.actions.push(txn);
            c.new_columns = new_fields;
            commit_target(&t, state, &c, spec).await?;
        }
    }
    outcome.commits = 1;
    Ok(outcome)
}

/// Commits an upsert on the target; a concurrent change to the same files or progress fails it (the next run
/// starts again from where the target's progress says).
async fn commit_target(target: &DeltaTable, state: TableState, c: &Commit, spec: &Upsert) -> Result<(), MaintainError> {
    let app = app_id(spec);
    let rewritten: HashSet<String> =
        c.actions.iter().filter_map(|a| if let Action::Remove(r) = a { Some(r.path.clone()) } else { None }).collect();
    let judge = move |w: &log::Winners| {
        if w.app_ids.contains(&app) {
            Verdict::Replan("another run upserted the same table")
        } else if w.removed.iter().any(|p| rewritten.contains(p)) {
            Verdict::Replan("a file it rewrote was removed")
        } else {
            Verdict::Rebase
        }
    };
    let mut retries = 0;
    let budget = std::time::Duration::from_secs(60);
    commit::commit_once(&target.log_store(), &mut Some(state), c, &judge, budget, &mut retries).await?;
    Ok(())
}

fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The keys of the rows the source's commits after `from` through `to` appended, or `None` when every key has
/// to be recomputed (a commit is gone from the log, a file is gone, or rows were deleted or updated); and
/// whether those commits appended any rows at all.
async fn changed_keys(
    source: &DeltaTable,
    files: &Files,
    from: u64,
    to: u64,
    key: &str,
) -> Result<(Option<HashSet<String>>, bool), DeltaTableError> {
    let log = source.log_store();
    let mut added = Vec::new();
    for version in from + 1..=to {
        let Some(actions) = log::commit_actions(&log, version).await? else { return Ok((None, true)) };
        for action in actions {
            let data_change = |a: &serde_json::Value| a.get("dataChange").and_then(|d| d.as_bool()).unwrap_or(true);
            if let Some(add) = action.get("add").filter(|a| data_change(a)) {
                let path = add.get("path").and_then(|p| p.as_str()).ok_or_else(|| generic("add without a path"))?;
                added.push(Path::from_url_path(path).map_err(generic)?);
            }
            if action.get("remove").is_some_and(data_change) {
                return Ok((None, true));
            }
        }
    }
    let appended = !added.is_empty();
    let want = Arc::new(Schema::new(vec![Field::new(key, DataType::Utf8, true)]));
    let mut keys = HashSet::new();
    for path in added {
        let batches = match files.read(&path, &want).await {
            Ok(b) => b,
            Err(DeltaTableError::ObjectStore { source: object_store::Error::NotFound { .. } }) => {
                return Ok((None, true));
            }
            Err(e) => return Err(e),
        };
        for batch in batches {
            if let Some(col) = batch.column_by_name(key).and_then(|c| c.as_any().downcast_ref::<StringArray>()) {
                keys.extend(col.iter().flatten().map(str::to_string));
            }
        }
    }
    Ok((Some(keys), appended))
}

/// The order of a source row: `timestamp`, then `received_at`, then its place in the log.
type Order = (i64, i64, usize, usize);

struct KeyState {
    latest: (Order, (usize, usize)),
    traits: Vec<Option<(Order, (usize, usize))>>,
}

/// One row per key (all keys, or those in `only`), from every row of the source.
async fn recompute(
    source: &DeltaTable,
    source_files: &Files,
    spec: &Upsert,
    only: Option<&HashSet<String>>,
) -> Result<RecordBatch, DeltaTableError> {
    let traits: Vec<Arc<Field>> = source_files
        .schema
        .fields()
        .iter()
        .filter(|f| spec.is_trait(f.name()) && arrow_column_type(f.data_type()).is_some())
        .cloned()
        .collect();
    let ts_type = arrow_type(ColumnType::Timestamp);
    let mut fields = vec![
        Arc::new(Field::new(spec.key, DataType::Utf8, true)),
        Arc::new(Field::new("timestamp", ts_type.clone(), true)),
        Arc::new(Field::new("received_at", ts_type.clone(), true)),
    ];
    fields.extend(traits.iter().cloned());
    let projected = Arc::new(Schema::new(fields));

    let files: Vec<_> = source.get_active_add_actions_by_predicate(None).try_collect().await?;
    let mut batches: Vec<RecordBatch> = Vec::new();
    let mut states: HashMap<String, KeyState> = HashMap::new();
    for f in &files {
        if f.deletion_vector_descriptor().is_some() {
            return Err(generic(format!(
                "{} has deleted rows (deletion vectors), which this upsert cannot read",
                f.path()
            )));
        }
        for batch in source_files.read(&f.object_store_path(), &projected).await? {
            let keys =
                batch.column(0).as_any().downcast_ref::<StringArray>().ok_or_else(|| generic("key is not text"))?;
            let keep: BooleanArray =
                keys.iter().map(|k| Some(k.is_some_and(|k| only.is_none_or(|o| o.contains(k))))).collect();
            let batch = filter_record_batch(&batch, &keep)?;
            if batch.num_rows() == 0 {
                continue;
            }
            let b = batches.len();
            let micros = |i: usize| -> Result<&TimestampMicrosecondArray, DeltaTableError> {
                batch
                    .column(i)
                    .as_any()
                    .downcast_ref::<TimestampMicrosecondArray>()
                    .ok_or_else(|| generic("bad timestamp"))
            };
            let (ts, recv) = (micros(1)?, micros(2)?);
            let keys =
                batch.column(0).as_any().downcast_ref::<StringArray>().ok_or_else(|| generic("key is not text"))?;
            for r in 0..batch.num_rows() {
                let order: Order = (
                    if ts.is_null(r) { i64::MIN } else { ts.value(r) },
                    if recv.is_null(r) { i64::MIN } else { recv.value(r) },
                    b,
                    r,
                );
                let state = states
                    .entry(keys.value(r).to_string())
                    .or_insert_with(|| KeyState { latest: (order, (b, r)), traits: vec![None; traits.len()] });
                if order >= state.latest.0 {
                    state.latest = (order, (b, r));
                }
                for (j, slot) in state.traits.iter_mut().enumerate() {
                    if !batch.column(3 + j).is_null(r) && slot.is_none_or(|(o, _)| order > o) {
                        *slot = Some((order, (b, r)));
                    }
                }
            }
            batches.push(batch);
        }
    }
    let mut keys: Vec<&String> = states.keys().collect();
    keys.sort();
    // Output: id, received_at, uuid_ts, then the traits in the source's order.
    let out_schema = Arc::new(Schema::new(
        [
            Field::new("id", DataType::Utf8, true),
            Field::new("received_at", ts_type.clone(), true),
            Field::new(UUID_TS, ts_type.clone(), true),
        ]
        .into_iter()
        .map(Arc::new)
        .chain(traits.iter().cloned())
        .collect::<Vec<_>>(),
    ));
    let n = keys.len();
    let nulls = batches.len();
    let pick = |col: usize, at: &dyn Fn(&KeyState) -> Option<(usize, usize)>| -> Result<ArrayRef, DeltaTableError> {
        let null = new_null_array(projected.field(col).data_type(), 1);
        let mut values: Vec<&dyn Array> = batches.iter().map(|b| b.column(col).as_ref()).collect();
        values.push(null.as_ref());
        let indices: Vec<(usize, usize)> = keys.iter().map(|k| at(&states[*k]).unwrap_or((nulls, 0))).collect();
        Ok(interleave(&values, &indices)?)
    };
    let uuid_ts = chrono::Utc::now().timestamp_micros();
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(keys.iter().map(|k| k.as_str()))),
        pick(2, &|s| Some(s.latest.1))?,
        Arc::new(TimestampMicrosecondArray::from(vec![uuid_ts; n]).with_timezone("UTC")),
    ];
    for j in 0..traits.len() {
        columns.push(pick(3 + j, &|s| s.traits[j].map(|(_, at)| at))?);
    }
    Ok(RecordBatch::try_new(out_schema, columns)?)
}

/// Creates the target with its first rows and the source version they cover. It gets no `txn` retention, so that
/// its progress never expires.
async fn create(config: &Config, uri: &str, rows: &RecordBatch, txn: Action) -> Result<(), MaintainError> {
    let log_store = crate::delta::table::log_store(uri, &config.storage.options)?;
    let fields: Vec<StructField> = rows
        .schema()
        .fields()
        .iter()
        .filter_map(|f| {
            arrow_column_type(f.data_type()).map(|c| StructField::new(f.name().clone(), plan::kernel_type(c), true))
        })
        .collect();
    let schema = StructType::try_new(fields).map_err(DeltaTableError::from)?;
    let store = log_store.object_store(None);
    let mut c = crate::delta::new_table(store.as_ref(), schema, rows, Default::default()).await?;
    c.operation = Operation::Upsert;
    c.actions.push(txn);
    let mut retries = 0;
    let judge = |_: &log::Winners| Verdict::Rebase;
    commit::commit_once(&log_store, &mut None, &c, &judge, std::time::Duration::from_secs(60), &mut retries).await?;
    Ok(())
}

/// The target files holding any of the recomputed keys are rewritten without them (all files when every key was
/// recomputed), and the recomputed rows are added. A file with deleted rows (a deletion vector) is refused: its
/// rows cannot be read as the table has them.
async fn rewrite(
    target: &DeltaTable,
    files: &Files,
    layout: &FileLayout,
    widened: &StructType,
    rows: &RecordBatch,
    changed: Option<&HashSet<String>>,
) -> Result<Vec<Action>, MaintainError> {
    let schema = files::arrow_schema(widened)?;
    let active: Vec<_> = target.get_active_add_actions_by_predicate(None).try_collect().await?;
    let ids = Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, true)]));
    let mut kept = Vec::new();
    let mut actions = Vec::new();
    for f in &active {
        let path = f.object_store_path();
        if let Some(keys) = changed {
            let hit = files.read(&path, &ids).await?.iter().any(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .is_some_and(|c| c.iter().flatten().any(|id| keys.contains(id)))
            });
            if !hit {
                continue;
            }
        }
        if f.deletion_vector_descriptor().is_some() {
            return Err(MaintainError::Invalid(format!(
                "{}: {} has rows deleted by a deletion vector, which this upsert does not rewrite; \
                 run OPTIMIZE (or REORG TABLE ... APPLY (PURGE)) on Databricks first",
                target.table_url(),
                f.path()
            )));
        }
        if let Some(keys) = changed {
            for batch in files.read(&path, &schema).await? {
                let ids = batch.column_by_name("id").and_then(|c| c.as_any().downcast_ref::<StringArray>().cloned());
                let Some(ids) = ids else { continue };
                let keep: BooleanArray = ids.iter().map(|id| Some(id.is_none_or(|id| !keys.contains(id)))).collect();
                let batch = filter_record_batch(&batch, &keep)?;
                if batch.num_rows() > 0 {
                    kept.push(batch);
                }
            }
        }
        actions.push(Action::Remove(f.remove_action(true)));
    }
    let rows = conform(rows, &schema)?;
    kept.push(rows);
    let all = deltalake::arrow::compute::concat_batches(&schema, &kept)?;
    if all.num_rows() > 0 {
        actions.extend(files::write(files.store.as_ref(), layout, &all, true).await?.into_iter().map(Action::Add));
    }
    Ok(actions)
}

/// A batch with exactly `schema`'s columns: by name, absent ones null, types cast.
fn conform(batch: &RecordBatch, schema: &Arc<Schema>) -> Result<RecordBatch, DeltaTableError> {
    let columns = schema
        .fields()
        .iter()
        .map(|f| match batch.column_by_name(f.name()) {
            Some(c) if c.data_type() == f.data_type() => Ok(c.clone()),
            Some(c) => Ok(cast(c, f.data_type())?),
            None => Ok(new_null_array(f.data_type(), batch.num_rows())),
        })
        .collect::<Result<Vec<ArrayRef>, DeltaTableError>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}
