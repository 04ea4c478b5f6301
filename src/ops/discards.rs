//! `segment-delta discards`: what the `discards` table of a schema holds, grouped by table, column and reason, with
//! a count and one example row id each; and the one-line summary a micro-batch logs of the discards it wrote.

use std::collections::{BTreeMap, HashMap};

use deltalake::DeltaTableError;
use deltalake::arrow::array::{Array, AsArray};
use deltalake::arrow::datatypes::TimestampMicrosecondType;
use futures::TryStreamExt;
use serde_json::Value;

use crate::config::Config;
use crate::delta::files;
use crate::delta::table::TableState;
use crate::layout::rows::Discard;
use crate::layout::value::Micros;
use crate::layout::{DISCARDS, paths};

/// One group of discards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub table: String,
    pub column: String,
    pub reason: String,
    pub count: u64,
    pub example: String,
}

/// The discards of `schema` received since `since` (all when `None`), of table `only` when given, most frequent
/// first.
pub async fn report(
    config: &Config,
    schema: &str,
    since: Option<Micros>,
    only: Option<&str>,
) -> Result<Vec<Group>, DeltaTableError> {
    let uri = paths::table_uri(&config.lake, schema, DISCARDS);
    let dt = match crate::maintain::load(config, &uri).await {
        Ok(dt) => dt,
        Err(DeltaTableError::NotATable(_)) => return Ok(Vec::new()),
        Err(e) if crate::delta::errors::classify(&e) == crate::delta::errors::ErrorClass::MissingTable => {
            return Ok(Vec::new());
        }
        Err(e) => return Err(e),
    };
    let log_store = dt.log_store();
    let Some(state) = TableState::load(&log_store, dt.version()).await? else { return Ok(Vec::new()) };
    let schema_ = state.schema();
    let layout = state.reading_layout(&schema_).map_err(|r| DeltaTableError::Generic(r.to_string()))?;
    let arrow = files::arrow_schema(&schema_)?;
    let store = log_store.object_store(None);
    let received = layout.physical("received_at").to_string();
    let files: Vec<_> = dt.get_active_add_actions_by_predicate(None).try_collect().await?;
    let mut groups: HashMap<(String, String, String), (u64, String)> = HashMap::new();
    let wanted = ["row_id", "table_name", "column_name", "reason", "received_at"];
    for f in files {
        // Files whose newest row is older than `since` are not read.
        if let (Some(since), Some(stats)) = (since, f.stats())
            && let Some(max) = serde_json::from_str::<Value>(&stats)
                .ok()
                .and_then(|s| s.pointer(&format!("/maxValues/{received}")).and_then(Value::as_str).map(str::to_string))
            && crate::layout::value::parse_timestamp(&max).is_some_and(|m| m < since)
        {
            continue;
        }
        for batch in files::read(store.as_ref(), &f.object_store_path(), &layout, &arrow, Some(&wanted)).await? {
            let text = |name: &str| batch.column_by_name(name).and_then(|c| c.as_string_opt::<i32>().cloned());
            let (Some(ids), Some(tables), Some(columns), Some(reasons)) =
                (text("row_id"), text("table_name"), text("column_name"), text("reason"))
            else {
                continue;
            };
            let times = batch
                .column_by_name("received_at")
                .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>().cloned());
            for i in 0..batch.num_rows() {
                if let (Some(since), Some(t)) = (since, &times)
                    && (t.is_null(i) || t.value(i) < since)
                {
                    continue;
                }
                let table = at(&tables, i);
                if only.is_some_and(|o| o != table) {
                    continue;
                }
                let key = (table.to_string(), at(&columns, i).to_string(), at(&reasons, i).to_string());
                let entry = groups.entry(key).or_insert_with(|| (0, ids.value(i).to_string()));
                entry.0 += 1;
            }
        }
    }
    let mut out: Vec<Group> = groups
        .into_iter()
        .map(|((table, column, reason), (count, example))| Group { table, column, reason, count, example })
        .collect();
    out.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| (&a.table, &a.column).cmp(&(&b.table, &b.column))));
    Ok(out)
}

/// A string column's value, or "" for a null.
fn at(a: &deltalake::arrow::array::StringArray, i: usize) -> &str {
    if a.is_valid(i) { a.value(i) } else { "" }
}

/// The log summary of the discards one micro-batch wrote: counts by table, column and kind of reason (no values),
/// the most frequent first, at most `limit` groups.
pub fn summary<'a>(discards: impl Iterator<Item = &'a Discard>, limit: usize) -> String {
    let mut counts: BTreeMap<(&'a str, &'a str, &'static str), u64> = BTreeMap::new();
    for d in discards {
        *counts.entry((&d.table_name, &d.column_name, crate::metrics::reason_kind(&d.reason))).or_default() += 1;
    }
    let mut sorted: Vec<_> = counts.into_iter().collect();
    sorted.sort_by_key(|g| std::cmp::Reverse(g.1));
    let more = sorted.len().saturating_sub(limit);
    let mut parts: Vec<String> = sorted
        .into_iter()
        .take(limit)
        .map(|((t, c, k), n)| if c.is_empty() { format!("{t} ({k}) x{n}") } else { format!("{t}.{c} ({k}) x{n}") })
        .collect();
    if more > 0 {
        parts.push(format!("and {more} more groups"));
    }
    parts.join("; ")
}
