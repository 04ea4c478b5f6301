//! The one commit path. Every writer — append, table creation, compaction, the upserts, deletes — describes its
//! commit as a [`Commit`] and hands it to [`commit`], which writes it with a put-if-absent and, when another
//! writer took the version, reads what the winners did and decides: the commit is this writer's own (its answer
//! was lost), or it can be committed again on top of them, or it must be planned again from the table as it now
//! is. The caller supplies what only it knows (which of the winners' changes conflict with it) as a judge.
//!
//! The commit is rendered for the version it tries, so that what depends on the version or on the winners — the
//! in-commit timestamp, row ids, the widened schema — is always computed against the table it lands on.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use deltalake::DeltaTableError;
use deltalake::kernel::transaction::TransactionError;
use deltalake::kernel::{
    Action, CommitInfo, DomainMetadata, IsolationLevel, Metadata, MetadataExt, Protocol, StructField, StructType,
};
use deltalake::logstore::LogStoreRef;
use serde_json::Value;

use super::log::{self, Winners};
use super::protocol::{Operation, Refusal, Rules};
use super::table::TableState;

/// One commit, before it is given a version.
pub struct Commit {
    pub operation: Operation,
    /// The operation name and parameters recorded in `commitInfo` (`WRITE`, `OPTIMIZE`, `MERGE`, ...).
    pub name: &'static str,
    pub parameters: Vec<(&'static str, Value)>,
    /// Columns the commit appends to the schema, annotated for column mapping when the table uses it.
    pub new_columns: Vec<StructField>,
    /// The protocol and metadata of a table this commit creates (version 0).
    pub create: Option<(Protocol, Metadata)>,
    /// `add`, `remove` and `txn` actions.
    pub actions: Vec<Action>,
    /// Recorded as `commitInfo.txnId`: how this writer recognises its own commit when the answer to it was lost.
    pub token: Arc<str>,
}

/// How a commit attempt ended, when it did not commit.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// The table changed under the commit in a way it cannot be committed on top of: plan it again from the table
    /// as it now is (the state has been read again).
    #[error("{0}")]
    Replan(String),
    /// Storage failed while committing: the commit may have landed. Look for its token before trying again.
    #[error("storage failed while committing: {0}")]
    Storage(DeltaTableError),
    #[error("lost the commit race for longer than the retry budget")]
    Contended,
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Delta(#[from] DeltaTableError),
}

/// What the caller decides about the winners of a race it lost.
pub enum Verdict {
    Rebase,
    Replan(&'static str),
}

/// This process, as its commits name it (`commitInfo.writerId`): which process made a commit shows in the log.
static WRITER_ID: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| uuid::Uuid::new_v4().to_string());

impl Commit {
    pub fn new(operation: Operation, name: &'static str) -> Commit {
        Commit {
            operation,
            name,
            parameters: Vec::new(),
            new_columns: Vec::new(),
            create: None,
            actions: Vec::new(),
            token: uuid::Uuid::new_v4().to_string().into(),
        }
    }

    fn blind_append(&self) -> bool {
        self.actions.iter().all(|a| matches!(a, Action::Add(_) | Action::Txn(_)))
    }

    /// The commit file for `version` of a table in `state` (`None`: a table this commit creates).
    fn render(&self, state: Option<&TableState>, version: u64) -> Result<Bytes, CommitError> {
        let rules = match state {
            Some(s) => s.rules(self.operation)?,
            None => Rules::default(),
        };
        let now = chrono::Utc::now().timestamp_millis();
        let in_commit_timestamp = rules
            .in_commit_timestamps
            .then(|| now.max(state.and_then(|s| s.last_in_commit_timestamp).map_or(i64::MIN, |t| t + 1)));
        let mut info = CommitInfo {
            timestamp: Some(in_commit_timestamp.unwrap_or(now)),
            in_commit_timestamp,
            operation: Some(self.name.into()),
            operation_parameters: Some(self.parameters.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()),
            read_version: state.map(|s| s.version),
            isolation_level: Some(IsolationLevel::Serializable),
            is_blind_append: Some(self.blind_append()),
            engine_info: Some(concat!("segment-delta/", env!("CARGO_PKG_VERSION")).into()),
            ..Default::default()
        };
        info.info.insert("txnId".into(), Value::String(self.token.to_string()));
        info.info.insert("writerId".into(), Value::String(WRITER_ID.clone()));
        let mut actions = vec![Action::CommitInfo(info)];
        if let Some((protocol, metadata)) = &self.create {
            actions.push(Action::Protocol(protocol.clone()));
            actions.push(Action::Metadata(metadata.clone()));
        }
        if let Some(state) = state
            && let Some(metadata) = widened(state, &self.new_columns)?
        {
            actions.push(Action::Metadata(metadata));
        }
        let mut high_water_mark = state.and_then(|s| s.row_id_high_water_mark).filter(|_| rules.row_tracking);
        for action in &self.actions {
            let mut action = action.clone();
            if let (Action::Add(add), Some(mark)) = (&mut action, high_water_mark.as_mut()) {
                let records = add
                    .stats
                    .as_deref()
                    .and_then(|s| serde_json::from_str::<Value>(s).ok())
                    .and_then(|s| s.get("numRecords").and_then(Value::as_i64))
                    .ok_or_else(|| DeltaTableError::Generic(format!("{}: row tracking needs numRecords", add.path)))?;
                add.base_row_id = Some(*mark + 1);
                add.default_row_commit_version = Some(version as i64);
                *mark += records;
            }
            actions.push(action);
        }
        if let Some(mark) = high_water_mark
            && Some(mark) != state.and_then(|s| s.row_id_high_water_mark)
        {
            actions.push(Action::DomainMetadata(DomainMetadata {
                domain: log::ROW_TRACKING_DOMAIN.into(),
                configuration: serde_json::json!({ "rowIdHighWaterMark": mark }).to_string(),
                removed: false,
            }));
        }
        let mut out = Vec::new();
        for action in actions {
            serde_json::to_writer(&mut out, &action).map_err(|e| DeltaTableError::Generic(e.to_string()))?;
            out.push(b'\n');
        }
        Ok(Bytes::from(out))
    }

    fn changes_metadata(&self) -> bool {
        self.create.is_some() || !self.new_columns.is_empty()
    }
}

/// The table's metadata with the columns it lacks appended (`None` when it has them all). Under column mapping the
/// new columns carry their ids, and `delta.columnMapping.maxColumnId` follows the highest.
pub fn widened(state: &TableState, columns: &[StructField]) -> Result<Option<Metadata>, DeltaTableError> {
    let schema = state.schema();
    let present: HashSet<String> = schema.fields().map(|f| f.name().to_ascii_lowercase()).collect();
    let new: Vec<&StructField> = columns.iter().filter(|c| !present.contains(&c.name().to_ascii_lowercase())).collect();
    if new.is_empty() {
        return Ok(None);
    }
    let fields: Vec<StructField> = schema.fields().cloned().chain(new.iter().map(|f| (*f).clone())).collect();
    let mut metadata = state.metadata().clone().with_schema(&StructType::try_new(fields)?)?;
    let highest = new.iter().filter_map(|f| column_mapping_id(f)).max();
    if let Some(id) = highest {
        let current = max_column_id(state);
        metadata = metadata.add_config_key("delta.columnMapping.maxColumnId".into(), id.max(current).to_string())?;
    }
    Ok(Some(metadata))
}

fn column_mapping_id(field: &StructField) -> Option<i64> {
    serde_json::to_value(field.metadata().get("delta.columnMapping.id")?).ok()?.as_i64()
}

/// The highest column id the table has given out: `delta.columnMapping.maxColumnId`, or any higher id in its schema.
pub fn max_column_id(state: &TableState) -> i64 {
    let configured = state
        .metadata()
        .configuration()
        .get("delta.columnMapping.maxColumnId")
        .and_then(|v| v.trim().parse::<i64>().ok())
        .unwrap_or(0);
    state.schema().fields().filter_map(column_mapping_id).fold(configured, i64::max)
}

/// Whether metadata another writer committed leaves this commit valid: same table, partitioning and configuration
/// (but for the column id counter), every existing column unchanged, no column this commit adds, and no column of
/// this commit's data files renumbered.
fn still_fits(before: &Metadata, after: &TableState, commit: &Commit) -> bool {
    let after_meta = after.metadata();
    let ignore = "delta.columnMapping.maxColumnId";
    let config = |m: &Metadata| {
        let mut c: Vec<(String, String)> =
            m.configuration().iter().filter(|(k, _)| *k != ignore).map(|(k, v)| (k.clone(), v.clone())).collect();
        c.sort();
        c
    };
    if before.id() != after_meta.id()
        || before.partition_columns() != after_meta.partition_columns()
        || config(before) != config(after_meta)
    {
        return false;
    }
    let Ok(old) = before.parse_schema() else { return false };
    let new = after.schema();
    let unchanged = old.fields().all(|f| new.field(f.name()).is_some_and(|n| n == f));
    let mapped = after_meta.configuration().get("delta.columnMapping.mode").is_some_and(|m| m != "none");
    let ours: HashSet<String> = commit.new_columns.iter().map(|c| c.name().to_ascii_lowercase()).collect();
    let collides = new.fields().any(|f| old.field(f.name()).is_none() && ours.contains(&f.name().to_ascii_lowercase()));
    unchanged && !collides && (!mapped || commit.new_columns.is_empty())
}

/// Commits `commit` on top of the table as `state` holds it (`None`: creates the table), rebasing on the commits
/// it loses to while `judge` allows and the budget lasts. Returns the version the commit has in the log.
///
/// Where the table's last commits from this writer lost races, other writers are committing too, and the version
/// after the one this writer knows is most likely taken: the commits since are read first, so that the put goes
/// to a version that is free.
pub async fn commit(
    log_store: &LogStoreRef,
    state: &mut Option<TableState>,
    commit: &Commit,
    judge: &(dyn Fn(&Winners) -> Verdict + Sync),
    budget: Duration,
    retries: &mut u32,
) -> Result<u64, CommitError> {
    let started = Instant::now();
    let mut lost = 0u32;
    let mut caught_up = false;
    if let Some((next, put)) = state.as_ref().and_then(|s| Some((s.version + 1, s.contended?))) {
        // Shared with other writers: the ones this writer's last commit raced go first.
        tokio::time::sleep(put.mul_f64(fastrand::f64())).await;
        if let Some((w, latest)) = log::read_forward(log_store, next, &commit.token).await? {
            caught_up = true;
            if let Some(own) = rebase(log_store, state, commit, judge, w, latest).await? {
                return Ok(own);
            }
        }
    }
    loop {
        let version = state.as_ref().map_or(0, |s| s.version + 1);
        let bytes = commit.render(state.as_ref(), version)?;
        let written_timestamp = in_commit_timestamp_of(&bytes);
        let attempt = Instant::now();
        match log::write_commit(log_store, version, bytes).await {
            Ok(()) => {
                landed(log_store, state, commit, version, written_timestamp).await?;
                if let Some(s) = state.as_mut() {
                    s.contended = (lost > 0 || caught_up).then(|| attempt.elapsed());
                }
                return Ok(version);
            }
            Err(TransactionError::VersionAlreadyExists(_)) => {}
            Err(e) => return Err(CommitError::Storage(DeltaTableError::Transaction { source: e })),
        }
        let (w, latest) = log::winners_from(log_store, version, &commit.token).await?;
        if w.own.is_none() {
            *retries += 1;
            lost += 1;
        }
        if let Some(own) = rebase(log_store, state, commit, judge, w, latest).await? {
            return Ok(own);
        }
        if started.elapsed() > budget {
            return Err(CommitError::Contended);
        }
    }
}

/// Brings `state` past the commits `w` another writer made up to `latest`, or says why the commit must be planned
/// again. `Some(version)`: one of them is this commit, whose answer was lost.
async fn rebase(
    log_store: &LogStoreRef,
    state: &mut Option<TableState>,
    commit: &Commit,
    judge: &(dyn Fn(&Winners) -> Verdict + Sync),
    w: Winners,
    latest: u64,
) -> Result<Option<u64>, CommitError> {
    if let Some(own) = w.own {
        // The commit landed; the answer to it was lost.
        *state = TableState::load(log_store, Some(latest)).await?;
        return Ok(Some(own));
    }
    let Some(current) = state.as_mut() else {
        *state = TableState::load(log_store, None).await?;
        return Err(CommitError::Replan("another writer created the table first".into()));
    };
    if w.gone || w.protocol {
        *state = TableState::load(log_store, None).await?;
        let why = if w.gone { "commits it lost to were cleaned from the log" } else { "the protocol changed" };
        return Err(CommitError::Replan(why.into()));
    }
    if w.metadata {
        let before = current.metadata().clone();
        current.update(log_store, Some(latest)).await?;
        if !still_fits(&before, current, commit) {
            return Err(CommitError::Replan("another writer changed the table's metadata".into()));
        }
    } else {
        current.version = latest;
        if w.last_in_commit_timestamp.is_some() {
            current.last_in_commit_timestamp = w.last_in_commit_timestamp;
        }
        if w.row_id_high_water_mark.is_some() {
            current.row_id_high_water_mark = w.row_id_high_water_mark;
        }
    }
    if let Verdict::Replan(why) = judge(&w) {
        return Err(CommitError::Replan(why.into()));
    }
    Ok(None)
}

/// Commits like [`commit`] for a writer that does not try again: when storage failed mid-commit it finds out
/// whether the commit landed (committing the same files twice would double their rows).
pub async fn commit_once(
    log_store: &LogStoreRef,
    state: &mut Option<TableState>,
    c: &Commit,
    judge: &(dyn Fn(&Winners) -> Verdict + Sync),
    budget: Duration,
    retries: &mut u32,
) -> Result<u64, CommitError> {
    let first = state.as_ref().map_or(0, |s| s.version + 1);
    match commit(log_store, state, c, judge, budget, retries).await {
        Err(CommitError::Storage(e)) => {
            let Ok(latest) = log::latest_version(log_store, first.saturating_sub(1)).await else {
                return Err(CommitError::Storage(e));
            };
            match log::find_token(log_store, first, latest, &c.token).await {
                Ok(Some(version)) => {
                    *state = TableState::load(log_store, Some(latest)).await?;
                    Ok(version)
                }
                _ => Err(CommitError::Storage(e)),
            }
        }
        other => other,
    }
}

fn in_commit_timestamp_of(bytes: &Bytes) -> Option<i64> {
    let first = bytes.split(|b| *b == b'\n').next()?;
    serde_json::from_slice::<Value>(first).ok()?.pointer("/commitInfo/inCommitTimestamp")?.as_i64()
}

/// Brings the state to the version just committed: read again when the commit changed the metadata or created
/// the table, otherwise advanced in place.
async fn landed(
    log_store: &LogStoreRef,
    state: &mut Option<TableState>,
    commit: &Commit,
    version: u64,
    in_commit_timestamp: Option<i64>,
) -> Result<(), DeltaTableError> {
    match state.as_mut() {
        Some(s) if !commit.changes_metadata() => {
            s.version = version;
            if in_commit_timestamp.is_some() {
                s.last_in_commit_timestamp = in_commit_timestamp;
            }
            if let Some(mark) = s.row_id_high_water_mark.as_mut() {
                *mark += commit
                    .actions
                    .iter()
                    .filter_map(|a| match a {
                        Action::Add(add) => add.stats.as_deref(),
                        _ => None,
                    })
                    .filter_map(|s| serde_json::from_str::<Value>(s).ok()?.get("numRecords")?.as_i64())
                    .sum::<i64>();
            }
        }
        Some(s) => s.update(log_store, Some(version)).await?,
        None => *state = TableState::load(log_store, Some(version)).await?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::table;
    use deltalake::kernel::{Add, DataType, PrimitiveType};
    use serde_json::json;

    fn add(path: &str) -> Action {
        Action::Add(Add {
            path: path.into(),
            size: 1,
            data_change: true,
            stats: Some(json!({"numRecords": 1}).to_string()),
            ..Default::default()
        })
    }

    fn string(name: &str) -> StructField {
        StructField::new(name, DataType::Primitive(PrimitiveType::String), true)
    }

    /// A new table (version 0) with one column, as this writer creates it.
    async fn created(dir: &std::path::Path) -> (LogStoreRef, Option<TableState>) {
        let log_store = table::log_store(dir.to_str().unwrap(), &Default::default()).unwrap();
        let schema = StructType::try_new([string("id")]).unwrap();
        let metadata: Metadata =
            serde_json::from_value(json!({"id": "t", "format": {"provider": "parquet", "options": {}},
            "schemaString": serde_json::to_string(&schema).unwrap(), "partitionColumns": [], "configuration": {},
            "createdTime": 0}))
            .unwrap();
        let protocol: Protocol = serde_json::from_value(json!({"minReaderVersion": 1, "minWriterVersion": 2})).unwrap();
        let mut c = Commit::new(Operation::Append, "CREATE TABLE");
        c.create = Some((protocol, metadata));
        let mut state = None;
        let v = commit(&log_store, &mut state, &c, &|_| Verdict::Rebase, Duration::from_secs(5), &mut 0).await.unwrap();
        assert_eq!(v, 0);
        (log_store, state)
    }

    /// Another writer's commit, written straight into the log.
    async fn rival(log_store: &LogStoreRef, version: u64, actions: &[serde_json::Value]) {
        let mut lines = vec![json!({"commitInfo": {"operation": "WRITE", "timestamp": 1}}).to_string()];
        lines.extend(actions.iter().map(|a| a.to_string()));
        let bytes = Bytes::from(lines.join("\n") + "\n");
        log::write_commit(log_store, version, bytes).await.unwrap();
    }

    fn append(path: &str) -> Commit {
        let mut c = Commit::new(Operation::Append, "WRITE");
        c.actions = vec![add(path)];
        c
    }

    async fn versions(log_store: &LogStoreRef) -> u64 {
        log::latest_version(log_store, 0).await.unwrap()
    }

    #[tokio::test]
    async fn an_append_that_lost_to_appends_is_committed_on_top_of_them() {
        let dir = tempfile::tempdir().unwrap();
        let (log_store, mut state) = created(dir.path()).await;
        rival(&log_store, 1, &[json!({"add": {"path": "b", "size": 1, "partitionValues": {}, "modificationTime": 0, "dataChange": true}})]).await;
        let mut retries = 0;
        let v =
            commit(&log_store, &mut state, &append("a"), &|_| Verdict::Rebase, Duration::from_secs(5), &mut retries)
                .await
                .unwrap();
        assert_eq!((v, retries), (2, 1));
        assert_eq!(state.unwrap().version, 2);
    }

    #[tokio::test]
    async fn after_a_lost_race_the_next_commit_reads_ahead_and_does_not_lose_again() {
        let dir = tempfile::tempdir().unwrap();
        let (log_store, mut state) = created(dir.path()).await;
        let other = |path: &str| json!({"add": {"path": path, "size": 1, "partitionValues": {}, "modificationTime": 0, "dataChange": true}});
        let rebase = &|_: &Winners| Verdict::Rebase;
        let budget = Duration::from_secs(5);
        // Alone on the table: no lost race, so the next commit goes straight for the next version.
        let mut retries = 0;
        commit(&log_store, &mut state, &append("a"), rebase, budget, &mut retries).await.unwrap();
        assert_eq!((retries, state.as_ref().unwrap().contended), (0, None));
        // Another writer commits: this one loses a race and learns the table is shared.
        rival(&log_store, 2, &[other("b")]).await;
        commit(&log_store, &mut state, &append("c"), rebase, budget, &mut retries).await.unwrap();
        assert_eq!(retries, 1);
        assert!(state.as_ref().unwrap().contended.is_some());
        // More than a read window of commits from the other writer: the next commit reads them first, then takes
        // the version after them without losing a race.
        for version in 4..=13 {
            rival(&log_store, version, &[other(&format!("d{version}"))]).await;
        }
        let v = commit(&log_store, &mut state, &append("e"), rebase, budget, &mut retries).await.unwrap();
        assert_eq!((v, retries), (14, 1));
        // A read ahead that found the others kept it marked as shared; one that finds nobody clears it.
        assert!(state.as_ref().unwrap().contended.is_some());
        let v = commit(&log_store, &mut state, &append("f"), rebase, budget, &mut retries).await.unwrap();
        assert_eq!((v, retries, state.as_ref().unwrap().contended), (15, 1, None));
        let adds: Vec<String> = futures::future::join_all((0..=15).map(|v| log::commit_actions(&log_store, v)))
            .await
            .into_iter()
            .flat_map(|a| a.unwrap().unwrap())
            .filter_map(|a| a.pointer("/add/path").and_then(Value::as_str).map(String::from))
            .collect();
        let mut expected: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        expected.extend((4..=13).map(|v| format!("d{v}")));
        expected.extend(["e", "f"].map(String::from));
        assert_eq!(adds, expected, "every file once, in version order");
    }

    #[tokio::test]
    async fn a_commit_whose_answer_was_lost_is_recognised_not_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let (log_store, mut state) = created(dir.path()).await;
        let c = append("a");
        // The commit landed, but its writer never heard so: its state still says version 0.
        let before = state.clone();
        commit(&log_store, &mut state, &c, &|_| Verdict::Rebase, Duration::from_secs(5), &mut 0).await.unwrap();
        let mut stale = before;
        let v = commit(&log_store, &mut stale, &c, &|_| Verdict::Rebase, Duration::from_secs(5), &mut 0).await.unwrap();
        assert_eq!(v, 1, "the commit already in the log");
        assert_eq!(versions(&log_store).await, 1, "nothing written twice");
    }

    #[tokio::test]
    async fn metadata_that_still_fits_is_rebased_on_and_other_changes_replan() {
        let dir = tempfile::tempdir().unwrap();
        let (log_store, mut state) = created(dir.path()).await;
        let widened = |fields: serde_json::Value, config: serde_json::Value| {
            json!({"metaData": {"id": "t", "format": {"provider": "parquet", "options": {}},
                "schemaString": json!({"type": "struct", "fields": fields}).to_string(), "partitionColumns": [],
                "configuration": config, "createdTime": 0}})
        };
        let id = json!({"name": "id", "type": "string", "nullable": true, "metadata": {}});
        let other = json!({"name": "other", "type": "long", "nullable": true, "metadata": {}});
        // Another writer added a column: this append's files still fit the table.
        rival(&log_store, 1, &[widened(json!([id, other]), json!({}))]).await;
        let mut c = append("a");
        c.new_columns = vec![string("mine")];
        let v = commit(&log_store, &mut state, &c, &|_| Verdict::Rebase, Duration::from_secs(5), &mut 0).await.unwrap();
        assert_eq!(v, 2);
        let names: Vec<String> = state.as_ref().unwrap().schema().fields().map(|f| f.name().clone()).collect();
        assert_eq!(names, ["id", "other", "mine"], "the rival's column kept, this commit's added after it");
        // Another writer changed a setting: plan again.
        rival(
            &log_store,
            3,
            &[widened(
                json!([id, other, {"name": "mine", "type": "string", "nullable": true, "metadata": {}}]),
                json!({"delta.appendOnly": "true"}),
            )],
        )
        .await;
        let err = commit(&log_store, &mut state, &append("b"), &|_| Verdict::Rebase, Duration::from_secs(5), &mut 0)
            .await
            .unwrap_err();
        assert!(matches!(err, CommitError::Replan(_)), "{err}");
        assert_eq!(state.as_ref().unwrap().version, 3, "the state was read again");
    }

    #[tokio::test]
    async fn protocol_changes_and_the_judge_replan() {
        let dir = tempfile::tempdir().unwrap();
        let (log_store, mut state) = created(dir.path()).await;
        rival(&log_store, 1, &[json!({"txn": {"appId": "stream", "version": 4}})]).await;
        let judge =
            |w: &Winners| if w.app_ids.contains("stream") { Verdict::Replan("same stream") } else { Verdict::Rebase };
        let err =
            commit(&log_store, &mut state, &append("a"), &judge, Duration::from_secs(5), &mut 0).await.unwrap_err();
        assert!(matches!(&err, CommitError::Replan(w) if w == "same stream"), "{err}");
        rival(&log_store, 2, &[json!({"protocol": {"minReaderVersion": 1, "minWriterVersion": 3}})]).await;
        let err = commit(&log_store, &mut state, &append("a"), &|_| Verdict::Rebase, Duration::from_secs(5), &mut 0)
            .await
            .unwrap_err();
        assert!(matches!(&err, CommitError::Replan(w) if w.contains("protocol")), "{err}");
    }

    #[tokio::test]
    async fn in_commit_timestamps_grow_and_row_ids_follow_the_high_water_mark() {
        let dir = tempfile::tempdir().unwrap();
        let (log_store, mut state) = created(dir.path()).await;
        let far_future = 4_102_444_800_000i64; // 2100-01-01
        rival(&log_store, 1, &[
            json!({"protocol": {"minReaderVersion": 1, "minWriterVersion": 7, "writerFeatures": ["inCommitTimestamp", "rowTracking", "domainMetadata"]}}),
            json!({"metaData": {"id": "t", "format": {"provider": "parquet", "options": {}},
                "schemaString": json!({"type": "struct", "fields": [{"name": "id", "type": "string", "nullable": true, "metadata": {}}]}).to_string(),
                "partitionColumns": [], "configuration": {"delta.enableInCommitTimestamps": "true"}, "createdTime": 0}}),
            json!({"domainMetadata": {"domain": "delta.rowTracking", "configuration": "{\"rowIdHighWaterMark\":41}", "removed": false}}),
        ]).await;
        // The rival's commit carries a timestamp in the future; commits after it must still grow.
        let bytes = log_store.read_commit_entry(1).await.unwrap().unwrap();
        let patched = String::from_utf8(bytes.to_vec()).unwrap().replacen(
            "\"timestamp\":1",
            &format!("\"timestamp\":1,\"inCommitTimestamp\":{far_future}"),
            1,
        );
        std::fs::write(dir.path().join("_delta_log/00000000000000000001.json"), patched).unwrap();
        let mut stale = state.take();
        stale.as_mut().unwrap().update(&log_store, None).await.unwrap();
        let v = commit(&log_store, &mut stale, &append("a"), &|_| Verdict::Rebase, Duration::from_secs(5), &mut 0)
            .await
            .unwrap();
        let actions = log::commit_actions(&log_store, v).await.unwrap().unwrap();
        assert_eq!(
            actions[0]["commitInfo"]["inCommitTimestamp"],
            json!(far_future + 1),
            "commitInfo first, one ms later"
        );
        let add = actions.iter().find_map(|a| a.get("add")).unwrap();
        assert_eq!((add["baseRowId"].clone(), add["defaultRowCommitVersion"].clone()), (json!(42), json!(v)));
        let mark = actions.iter().find_map(|a| a.get("domainMetadata")).unwrap();
        assert_eq!(log::row_id_high_water_mark(mark["configuration"].as_str().unwrap()), Some(42));
        assert_eq!(stale.unwrap().row_id_high_water_mark, Some(42));
    }
}
