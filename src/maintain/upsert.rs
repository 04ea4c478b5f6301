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
use deltalake::arrow::compute::{filter_record_batch, interleave};
use deltalake::arrow::datatypes::{DataType, Field, Schema};
use deltalake::arrow::record_batch::RecordBatch;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, StructField, Transaction};
use deltalake::protocol::{DeltaOperation, MergePredicate};
use deltalake::writer::{DeltaWriter, RecordBatchWriter, WriteMode};
use deltalake::{DeltaTable, DeltaTableError, ObjectStore, Path};
use futures::TryStreamExt;

use super::files;
use crate::catalog::Catalog;
use crate::config::Config;
use crate::delta::arrow::{arrow_type, column_type};
use crate::delta::{kernel_type, log, widened_metadata};
use crate::layout::value::ColumnType;
use crate::layout::{UUID_TS, Upsert, paths};

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
) -> Result<Outcome, DeltaTableError> {
    let source = super::load(config, &paths::table_uri(&config.lake, schema, spec.source)).await?;
    let source_version = source.version().unwrap_or(0) as u64;
    let mut outcome = Outcome { source_version, ..Default::default() };
    let target_uri = paths::table_uri(&config.lake, schema, spec.target);
    let mut target = match super::load(config, &target_uri).await {
        Ok(t) => Some(t),
        Err(e) if log::is_missing_table(&e) => None,
        Err(e) => return Err(e),
    };
    let app = app_id(spec);
    let done = match &target {
        Some(t) => t.snapshot()?.transaction_version(t.log_store().as_ref(), &app).await?,
        None => None,
    };
    if done == Some(source_version as i64) {
        return Ok(outcome);
    }
    let source_schema = source.snapshot()?.snapshot().arrow_schema();
    if source_schema.field_with_name(spec.key).is_err() {
        return Ok(outcome); // No row of the source has the key yet.
    }
    let (changed, appended) = match (done, &target) {
        (Some(d), Some(_)) if d >= 0 => changed_keys(&source, d as u64, source_version, spec.key).await?,
        _ => (None, true),
    };
    if let Some(keys) = &changed
        && keys.is_empty()
        && let Some(t) = &target
    {
        if !appended {
            // Nothing but compaction since the last run: nothing to do, nothing to record.
            return Ok(outcome);
        }
        // Only rows without the key arrived: record the progress alone.
        let txn = Transaction::new_with_last_update(app.as_str(), source_version as i64, Some(now_millis()));
        commit(t, Vec::new(), txn, spec).await?;
        outcome.commits = 1;
        return Ok(outcome);
    }
    let rows = recompute(&source, &source_schema, spec, changed.as_ref()).await?;
    if rows.num_rows() == 0 && target.is_none() {
        return Ok(outcome);
    }
    outcome.rows = rows.num_rows();
    let txn = Transaction::new_with_last_update(app.as_str(), source_version as i64, Some(now_millis()));
    match &mut target {
        None => {
            create(config, &target_uri, &rows, txn).await?;
            if let Some(catalog) = catalog {
                catalog.register(schema, spec.target, &target_uri).await.map_err(generic)?;
            }
        }
        Some(t) => {
            // Columns the target lacks: through the warehouse when Unity Catalog is kept, else in the commit.
            let current = t.snapshot()?.snapshot().arrow_schema();
            let new: Vec<(String, ColumnType)> = rows
                .schema()
                .fields()
                .iter()
                .filter(|f| current.field_with_name(f.name()).is_err())
                .filter_map(|f| column_type(f.data_type()).map(|c| (f.name().clone(), c)))
                .collect();
            let mut metadata = None;
            if let Some(catalog) = catalog {
                catalog.register(schema, spec.target, &target_uri).await.map_err(generic)?;
                if !new.is_empty() {
                    catalog.add_columns(schema, spec.target, &target_uri, &new).await.map_err(generic)?;
                    t.update_incremental(None).await?;
                }
            } else {
                let snapshot = t.snapshot()?;
                metadata = widened_metadata(&snapshot.schema(), snapshot.metadata(), &new)?;
            }
            let mut actions = rewrite(t, &rows, changed.as_ref()).await?;
            actions.extend(metadata.map(Action::Metadata));
            commit(t, actions, txn, spec).await?;
        }
    }
    outcome.commits = 1;
    Ok(outcome)
}

fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The keys of the rows the source's commits after `from` through `to` appended, or `None` when every key has
/// to be recomputed (a commit is gone from the log, a file is gone, or rows were deleted or updated); and
/// whether those commits appended any rows at all.
async fn changed_keys(
    source: &DeltaTable,
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
    let store = source.object_store();
    let mut keys = HashSet::new();
    for path in added {
        let batches = match files::read(&store, &path, Some(&[key])).await {
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
    source_schema: &Arc<Schema>,
    spec: &Upsert,
    only: Option<&HashSet<String>>,
) -> Result<RecordBatch, DeltaTableError> {
    let traits: Vec<Arc<Field>> = source_schema
        .fields()
        .iter()
        .filter(|f| spec.is_trait(f.name()) && column_type(f.data_type()).is_some())
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
    let names: Vec<&str> = projected.fields().iter().map(|f| f.name().as_str()).collect();

    let store: Arc<dyn ObjectStore> = source.object_store();
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
        for batch in files::read(&store, &f.object_store_path(), Some(&names)).await? {
            let batch = files::conform(&batch, &projected)?;
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

/// Creates the target with its first rows and the source version they cover.
async fn create(config: &Config, uri: &str, rows: &RecordBatch, txn: Transaction) -> Result<(), DeltaTableError> {
    let url = crate::delta::table_url(uri).map_err(DeltaTableError::InvalidTableLocation)?;
    let mut writer =
        RecordBatchWriter::try_new(url.as_str(), rows.schema(), None, Some(config.storage.options.clone()))?;
    writer.write(rows.clone()).await?;
    let adds = writer.flush().await?;
    let fields: Vec<StructField> = rows
        .schema()
        .fields()
        .iter()
        .filter_map(|f| column_type(f.data_type()).map(|c| StructField::new(f.name().clone(), kernel_type(c), true)))
        .collect();
    let log_store = deltalake::DeltaTableBuilder::from_url(url)?
        .with_storage_options(config.storage.options.clone())
        .build_storage()?;
    DeltaTable::new(log_store)
        .create()
        .with_columns(fields)
        .with_commit_properties(CommitProperties::default().with_application_transaction(txn).with_max_retries(0))
        .with_actions(adds.into_iter().map(Action::Add))
        .await?;
    Ok(())
}

/// The target files holding any of the recomputed keys are rewritten without them (all files when every key
/// was recomputed), and the recomputed rows are added.
async fn rewrite(
    target: &DeltaTable,
    rows: &RecordBatch,
    changed: Option<&HashSet<String>>,
) -> Result<Vec<Action>, DeltaTableError> {
    let schema = Arc::new(target_schema(target, rows)?);
    let store: Arc<dyn ObjectStore> = target.object_store();
    let files: Vec<_> = target.get_active_add_actions_by_predicate(None).try_collect().await?;
    let mut writer = RecordBatchWriter::for_table(target)?;
    let mut actions = Vec::new();
    for f in &files {
        let path = f.object_store_path();
        let keep_rows = match changed {
            None => None,
            Some(keys) => {
                let ids = files::read(&store, &path, Some(&["id"])).await?;
                let hit = ids.iter().any(|b| {
                    b.column_by_name("id")
                        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                        .is_some_and(|c| c.iter().flatten().any(|id| keys.contains(id)))
                });
                if !hit {
                    continue;
                }
                Some(keys)
            }
        };
        if let Some(keys) = keep_rows {
            for batch in files::read(&store, &path, None).await? {
                let batch = files::conform(&batch, &schema)?;
                let ids = batch.column_by_name("id").and_then(|c| c.as_any().downcast_ref::<StringArray>().cloned());
                let Some(ids) = ids else { continue };
                let keep: BooleanArray = ids.iter().map(|id| Some(id.is_none_or(|id| !keys.contains(id)))).collect();
                let kept = filter_record_batch(&batch, &keep)?;
                if kept.num_rows() > 0 {
                    writer.write_with_mode(kept, WriteMode::MergeSchema).await?;
                }
            }
        }
        actions.push(Action::Remove(f.remove_action(true)));
    }
    if rows.num_rows() > 0 {
        writer.write_with_mode(files::conform(rows, &schema)?, WriteMode::MergeSchema).await?;
    }
    actions.extend(writer.flush().await?.into_iter().map(Action::Add));
    Ok(actions)
}

/// The target's columns followed by the new ones of `rows`.
fn target_schema(target: &DeltaTable, rows: &RecordBatch) -> Result<Schema, DeltaTableError> {
    let current = target.snapshot()?.snapshot().arrow_schema();
    let mut fields: Vec<Arc<Field>> = current.fields().iter().cloned().collect();
    for f in rows.schema().fields() {
        if current.field_with_name(f.name()).is_err() {
            fields.push(f.clone());
        }
    }
    Ok(Schema::new(fields))
}

async fn commit(
    target: &DeltaTable,
    actions: Vec<Action>,
    txn: Transaction,
    spec: &Upsert,
) -> Result<(), DeltaTableError> {
    let op = DeltaOperation::Merge {
        predicate: Some(format!("target.id = source.{}", spec.key)),
        merge_predicate: Some(format!("target.id = source.{}", spec.key)),
        matched_predicates: vec![MergePredicate { action_type: "update".into(), predicate: None }],
        not_matched_predicates: vec![MergePredicate { action_type: "insert".into(), predicate: None }],
        not_matched_by_source_predicates: Vec::new(),
    };
    CommitBuilder::from(CommitProperties::default().with_application_transaction(txn))
        .with_actions(actions)
        .build(Some(target.snapshot()?), target.log_store(), op)
        .await?;
    Ok(())
}
