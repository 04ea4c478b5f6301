//! Compaction: the files smaller than the target are bin-packed, in log order, into files near it, and committed
//! as `OPTIMIZE` with `dataChange=false`, so that readers and streaming consumers see no change. Files are read and
//! written the way the table lays them out (physical names and field ids under column mapping).

use std::collections::HashSet;
use std::time::Duration;

use deltalake::DeltaTable;
use deltalake::arrow::compute::concat_batches;
use deltalake::kernel::Action;
use futures::TryStreamExt;
use serde_json::json;

use super::MaintainError;
use crate::delta::commit::{self, Commit, CommitError, Verdict};
use crate::delta::files;
use crate::delta::protocol::Operation;
use crate::delta::table::TableState;

/// What a compaction did.
#[derive(Debug, PartialEq, Eq)]
pub enum Compaction {
    /// Commits made (0 when nothing was worth compacting).
    Committed(u32),
    /// Left alone, with the reason.
    Skipped(String),
}

/// How long a compaction keeps committing on top of appends before it yields to the next run.
const YIELD_AFTER: Duration = Duration::from_secs(60);

/// Bin-packs the files of `dt` (as loaded) smaller than `target`. Appends that commit meanwhile do not conflict:
/// the compaction is committed again on top of them. It yields when a commit it lost to removed a file it read,
/// changed the protocol or metadata, or when it has lost for a minute; the files it wrote are then left to vacuum.
pub async fn compact(dt: &DeltaTable, target: u64) -> Result<Compaction, MaintainError> {
    let log_store = dt.log_store();
    let Some(state) = TableState::load(&log_store, dt.version()).await? else {
        return Ok(Compaction::Committed(0));
    };
    let rules = match state.rules(Operation::Compact) {
        Ok(rules) => rules,
        Err(refusal) => return Ok(Compaction::Skipped(refusal.to_string())),
    };
    let files: Vec<_> = dt.get_active_add_actions_by_predicate(None).try_collect().await?;
    if files.iter().any(|f| f.deletion_vector_descriptor().is_some()) {
        return Ok(Compaction::Skipped("the table has deletion vectors; left to Databricks OPTIMIZE".into()));
    }
    if !state.metadata().partition_columns().is_empty() {
        return Ok(Compaction::Skipped("the table is partitioned; left to Databricks OPTIMIZE".into()));
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
        return Ok(Compaction::Committed(0));
    }
    let schema = state.schema();
    let layout = state.layout(&rules, &schema);
    let arrow = files::arrow_schema(&schema)?;
    let store = log_store.object_store(None);
    let mut state = Some(state);
    // One commit per group of bins of about 1 GiB read, so a large backlog makes progress in steps.
    let group_bytes = target.max(1 << 30);
    let mut commits = 0;
    let mut group: Vec<Action> = Vec::new();
    let mut group_read = 0u64;
    for (n, bin) in bins.iter().enumerate() {
        let mut batches = Vec::new();
        for &i in bin {
            let f = &files[i];
            batches.extend(files::read(store.as_ref(), &f.object_store_path(), &layout, &arrow, None).await?);
            group.push(Action::Remove(f.remove_action(false)));
            group_read += f.size().max(0) as u64;
        }
        let batch = concat_batches(&arrow, &batches)?;
        group.extend(files::write(store.as_ref(), &layout, &batch, false).await?.into_iter().map(Action::Add));
        if group_read >= group_bytes || n + 1 == bins.len() {
            let mut c = Commit::new(Operation::Compact, "OPTIMIZE");
            c.parameters = vec![("predicate", json!("[]")), ("targetSize", json!(target.to_string()))];
            c.actions = std::mem::take(&mut group);
            let read: HashSet<String> = c
                .actions
                .iter()
                .filter_map(|a| if let Action::Remove(r) = a { Some(r.path.clone()) } else { None })
                .collect();
            let judge = move |w: &crate::delta::log::Winners| {
                if w.removed.iter().any(|p| read.contains(p)) {
                    Verdict::Replan("a file it read was removed")
                } else {
                    Verdict::Rebase
                }
            };
            let mut retries = 0;
            match commit::commit_once(&log_store, &mut state, &c, &judge, YIELD_AFTER, &mut retries).await {
                Ok(_) => commits += 1,
                Err(CommitError::Replan(why)) => {
                    tracing::warn!(table = %dt.table_url(), why, "compaction yielded to a concurrent change");
                    return Ok(Compaction::Committed(commits));
                }
                Err(CommitError::Contended) => {
                    tracing::warn!(table = %dt.table_url(), "compaction kept losing to appends; the next run goes on");
                    return Ok(Compaction::Committed(commits));
                }
                Err(e) => return Err(e.into()),
            }
            group_read = 0;
        }
    }
    Ok(Compaction::Committed(commits))
}
