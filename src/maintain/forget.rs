//! Forgetting users (privacy deletes): every row whose `user_id` (the `id` of `users`) is one of theirs is removed
//! from every table of the schema, and then the `discards` rows of those rows' ids. Only the files whose statistics
//! may hold one of the ids are read; those holding one are rewritten without it and committed as a Delta `DELETE`
//! (`dataChange=true`) within the rules of each table's protocol. Running it again finds nothing more to remove,
//! so a delete interrupted by a crash is finished by retrying it.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use deltalake::DeltaTableError;
use deltalake::arrow::array::{AsArray, BooleanArray};
use deltalake::arrow::compute::{concat_batches, filter_record_batch};
use deltalake::kernel::Action;
use futures::{StreamExt, TryStreamExt};
use serde_json::{Value, json};

use super::{MaintainError, load};
use crate::config::Config;
use crate::delta::commit::{self, Commit, CommitError, Verdict};
use crate::delta::files;
use crate::delta::protocol::Operation;
use crate::delta::table::TableState;
use crate::layout::{DISCARDS, paths};

/// How long one table's delete keeps committing on top of other writers' commits.
const RACE_BUDGET: Duration = Duration::from_secs(60);

/// What forgetting did, per table of the schema.
#[derive(Debug, Default)]
pub struct Forgotten {
    /// Rows removed, per table (tables with none are listed with 0).
    pub removed: BTreeMap<String, usize>,
    /// Tables that could not be changed, with the reason; their rows of these users are still there.
    pub failed: BTreeMap<String, String>,
}

impl Forgotten {
    pub fn total(&self) -> usize {
        self.removed.values().sum()
    }
}

/// Removes every row of `users` from every table of `schema`.
pub async fn forget(config: &Config, schema: &str, users: &[String]) -> Result<Forgotten, DeltaTableError> {
    let users: HashSet<String> = users.iter().map(|u| u.trim().to_string()).filter(|u| !u.is_empty()).collect();
    let mut out = Forgotten::default();
    if users.is_empty() {
        return Ok(out);
    }
    let tables = paths::discover(&config.lake, &config.storage.options, &[format!("{schema}.*")]).await?;
    let users = &users;
    let targets: Vec<(String, String)> = tables.iter().filter(|(_, t)| t != DISCARDS).cloned().collect();
    let results: Vec<_> = futures::stream::iter(targets)
        .map(|(s, t)| async move {
            // `users` is keyed by the user id; every other table has it as `user_id`.
            let column = if t == "users" { "id" } else { "user_id" };
            let uri = paths::table_uri(&config.lake, &s, &t);
            let result = remove_rows(config, &uri, column, users, true).await;
            (t, result)
        })
        .buffer_unordered(config.maintenance.concurrency)
        .collect()
        .await;
    let mut row_ids = HashSet::new();
    for (table, result) in results {
        match result {
            Ok((n, ids)) => {
                out.removed.insert(table, n);
                row_ids.extend(ids);
            }
            Err(e) => {
                out.failed.insert(table, e.to_string());
            }
        }
    }
    // What those rows could not store; the discards of the delete events themselves carry no user id.
    if tables.iter().any(|(_, t)| t == DISCARDS) && !row_ids.is_empty() {
        let uri = paths::table_uri(&config.lake, schema, DISCARDS);
        match remove_rows(config, &uri, "row_id", &row_ids, false).await {
            Ok((n, _)) => {
                out.removed.insert(DISCARDS.to_string(), n);
            }
            Err(e) => {
                out.failed.insert(DISCARDS.to_string(), e.to_string());
            }
        }
    }
    for (table, n) in &out.removed {
        if *n > 0 {
            tracing::info!(schema, table = %table, rows = n, "rows of forgotten users removed");
        }
    }
    for (table, e) in &out.failed {
        tracing::error!(schema, table = %table, error = %e, "could not remove the rows of forgotten users");
    }
    Ok(out)
}

/// Removes the rows whose `column` is one of `values` from the table at `uri`; returns how many, and their `id`s
/// when asked.
async fn remove_rows(
    config: &Config,
    uri: &str,
    column: &str,
    values: &HashSet<String>,
    want_ids: bool,
) -> Result<(usize, Vec<String>), MaintainError> {
    for _ in 0..5 {
        let dt = load(config, uri).await?;
        let log_store = dt.log_store();
        let Some(state) = TableState::load(&log_store, dt.version()).await? else { return Ok((0, Vec::new())) };
        let rules = state.rules(Operation::Delete)?;
        let schema = state.schema();
        if schema.field(column).is_none() {
            return Ok((0, Vec::new()));
        }
        let layout = state.layout(&rules, &schema);
        let arrow = files::arrow_schema(&schema)?;
        let physical = layout.physical(column).to_string();
        let store = log_store.object_store(None);
        let files: Vec<_> = dt.get_active_add_actions_by_predicate(None).try_collect().await?;
        let mut actions = Vec::new();
        let (mut removed, mut ids) = (0usize, Vec::new());
        for f in files.iter().filter(|f| may_hold(f.stats().as_deref(), &physical, values)) {
            if f.deletion_vector_descriptor().is_some() {
                return Err(MaintainError::Invalid(format!(
                    "{} has deletion vectors, which this writer does not rewrite: remove the rows in Databricks (DELETE FROM … WHERE {column} IN (…))",
                    uri.trim_end_matches('/').rsplit('/').next().unwrap_or(uri)
                )));
            }
            let partition_values = f.partition_values_map();
            let mut batches = Vec::new();
            for b in files::read(store.as_ref(), &f.object_store_path(), &layout, &arrow, None).await? {
                batches.push(files::fill_partitions(&layout, b, &partition_values)?);
            }
            let batch = concat_batches(&arrow, &batches)?;
            let keys = batch.column_by_name(column).map(|c| c.as_string_opt::<i32>().cloned());
            let Some(Some(keys)) = keys else { continue };
            let hit: BooleanArray = keys.iter().map(|k| Some(k.is_some_and(|k| values.contains(k)))).collect();
            let n = hit.true_count();
            if n == 0 {
                continue;
            }
            removed += n;
            if want_ids {
                let gone = filter_record_batch(&batch, &hit)?;
                if let Some(id) = gone.column_by_name("id").and_then(|c| c.as_string_opt::<i32>()) {
                    ids.extend(id.iter().flatten().map(str::to_string));
                }
            }
            let keep = deltalake::arrow::compute::not(&hit)?;
            let kept = filter_record_batch(&batch, &keep)?;
            actions.push(Action::Remove(f.remove_action(true)));
            if kept.num_rows() > 0 {
                actions.extend(files::write(store.as_ref(), &layout, &kept, true).await?.into_iter().map(Action::Add));
            }
        }
        if actions.is_empty() {
            return Ok((0, Vec::new()));
        }
        let mut c = Commit::new(Operation::Delete, "DELETE");
        // As Databricks records a DELETE: the condition in SQL (the list shortened past 100 values).
        let mut listed: Vec<String> = values.iter().take(100).map(|v| format!("'{}'", v.replace('\'', "''"))).collect();
        if values.len() > 100 {
            listed.push(format!("… {} more", values.len() - 100));
        }
        c.parameters = vec![("predicate", json!(format!("[\"{column} IN ({})\"]", listed.join(", "))))];
        c.actions = actions;
        let read: HashSet<String> = c
            .actions
            .iter()
            .filter_map(|a| if let Action::Remove(r) = a { Some(r.path.clone()) } else { None })
            .collect();
        let read = Arc::new(read);
        let judge = move |w: &crate::delta::log::Winners| {
            if w.removed.iter().any(|p| read.contains(p)) {
                Verdict::Replan("a file it rewrote was removed by another writer")
            } else {
                Verdict::Rebase
            }
        };
        let mut state = Some(state);
        let mut retries = 0;
        match commit::commit_once(&log_store, &mut state, &c, &judge, RACE_BUDGET, &mut retries).await {
            Ok(_) => return Ok((removed, ids)),
            // Read the table again and start over; the files written for this attempt are left to vacuum.
            Err(CommitError::Replan(_) | CommitError::Contended) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(MaintainError::Invalid("other writers kept changing the files this delete rewrites; run it again".into()))
}

/// Whether a file's statistics allow one of `values` in `column` (physical name): without statistics for it, yes.
/// A maximum at least 32 characters long may be a truncated prefix, so it bounds nothing.
fn may_hold(stats: Option<&str>, column: &str, values: &HashSet<String>) -> bool {
    let Some(stats) = stats.and_then(|s| serde_json::from_str::<Value>(s).ok()) else { return true };
    if stats.pointer(&format!("/nullCount/{column}")).and_then(Value::as_i64).is_some()
        && stats.get("numRecords").and_then(Value::as_i64)
            == stats.pointer(&format!("/nullCount/{column}")).and_then(Value::as_i64)
    {
        return false; // every value of the column is null
    }
    let min = stats.pointer(&format!("/minValues/{column}")).and_then(Value::as_str);
    let max = stats.pointer(&format!("/maxValues/{column}")).and_then(Value::as_str).filter(|m| m.chars().count() < 32);
    values.iter().any(|v| min.is_none_or(|m| v.as_str() >= m) && max.is_none_or(|m| v.as_str() <= m))
}

#[cfg(test)]
mod tests {
    use super::may_hold;
    use std::collections::HashSet;

    #[test]
    fn statistics_rule_out_files_that_cannot_hold_the_ids() {
        let ids: HashSet<String> = ["u5".to_string()].into();
        let stats = |min: &str, max: &str| {
            format!(
                r#"{{"numRecords":3,"minValues":{{"user_id":"{min}"}},"maxValues":{{"user_id":"{max}"}},"nullCount":{{"user_id":0}}}}"#
            )
        };
        assert!(may_hold(Some(&stats("u1", "u9")), "user_id", &ids));
        assert!(!may_hold(Some(&stats("u6", "u9")), "user_id", &ids));
        assert!(!may_hold(Some(&stats("u1", "u4")), "user_id", &ids));
        assert!(may_hold(None, "user_id", &ids), "no statistics: the file is read");
        assert!(may_hold(Some(r#"{"numRecords":3}"#), "user_id", &ids));
        let c: HashSet<String> = ["c".to_string()].into();
        assert!(!may_hold(Some(&stats("a", "b")), "user_id", &c));
        assert!(may_hold(Some(&stats("a", &"b".repeat(32))), "user_id", &c), "a long maximum may be truncated");
        let all_null = r#"{"numRecords":3,"nullCount":{"user_id":3}}"#;
        assert!(!may_hold(Some(all_null), "user_id", &ids));
    }
}
