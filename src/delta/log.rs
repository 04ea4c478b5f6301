//! The append path's own view of a table: protocol, metadata and schema from the log, without the list of data
//! files. An append reads no data file and conflicts with nothing but a change of schema or of the streams it
//! records, so its cost does not grow with the table.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use deltalake::kernel::transaction::TransactionError;
use deltalake::kernel::{Action, Add, CommitInfo, IsolationLevel, Metadata, Snapshot, Transaction};
use deltalake::logstore::{CommitOrBytes, LogStoreRef};
use deltalake::{BlindDeltaTable, DeltaTableError};

/// An open table as the writer sees it.
pub(crate) struct Open {
    /// Source of the data-file writer: the table's object store and its write settings.
    pub blind: BlindDeltaTable,
    /// Protocol, metadata and schema as of `snapshot.version()`.
    pub snapshot: Arc<Snapshot>,
    /// The newest version this writer knows of; its own commits that change no metadata advance this alone.
    pub version: u64,
}

impl Open {
    /// Loads the table's protocol and metadata, or `None` when no table exists there yet.
    pub async fn load(log_store: &LogStoreRef) -> Result<Option<Open>, DeltaTableError> {
        match BlindDeltaTable::try_new_with_log_store(log_store.clone()).await {
            Ok(blind) => {
                let snapshot = Arc::new(blind.snapshot().clone());
                Ok(Some(Open { version: snapshot.version(), blind, snapshot }))
            }
            Err(e) if is_missing_table(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads the log up to `version` (the latest when `None`), keeping what was already read.
    pub async fn update(&mut self, log_store: &LogStoreRef, version: Option<u64>) -> Result<(), DeltaTableError> {
        let snapshot = self.snapshot.clone().update(log_store.engine(None), version).await?;
        self.version = self.version.max(snapshot.version());
        self.snapshot = snapshot;
        Ok(())
    }
}

/// Whether opening a table failed because no table exists at its location.
pub(crate) fn is_missing_table(e: &DeltaTableError) -> bool {
    matches!(e, DeltaTableError::NotATable(_)) || e.to_string().contains("No files in log segment")
}

/// Whether an error comes from a listing of the log taken while another writer committed: local directories
/// list without order, so a listing can miss a commit and see a gap. Listing again is the remedy.
pub(crate) fn listing_raced(message: &str) -> bool {
    message.contains("contiguous commit files")
}

/// The actions of commit `version`, one JSON object each; `None` when the commit file is gone (log cleanup).
pub(crate) async fn commit_actions(
    log_store: &LogStoreRef,
    version: u64,
) -> Result<Option<Vec<serde_json::Value>>, DeltaTableError> {
    let Some(bytes) = log_store.read_commit_entry(version).await? else { return Ok(None) };
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .map(|line| {
            serde_json::from_slice(line).map_err(|e| DeltaTableError::Generic(format!("commit {version}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// The version a stream's `txn` action records in the table as of `version`.
pub(crate) async fn txn_version(
    log_store: &LogStoreRef,
    version: u64,
    app_id: &str,
) -> Result<Option<i64>, DeltaTableError> {
    let app_id = app_id.to_string();
    with_kernel_snapshot(log_store, version, move |snapshot, engine| Ok(snapshot.get_app_id_version(&app_id, engine)?))
        .await
}

/// Writes a checkpoint of `version`, read from the log alone.
pub(crate) async fn checkpoint(log_store: &LogStoreRef, version: u64) -> Result<(), DeltaTableError> {
    with_kernel_snapshot(log_store, version, |snapshot, engine| Ok(snapshot.checkpoint(engine, None).map(|_| ())?))
        .await
}

/// Runs `f` on the Delta kernel's snapshot of `version` (protocol, metadata and log segment, no file list), on a
/// blocking thread: the kernel reads the log synchronously.
async fn with_kernel_snapshot<T: Send + 'static>(
    log_store: &LogStoreRef,
    version: u64,
    f: impl FnOnce(&delta_kernel::snapshot::SnapshotRef, &dyn delta_kernel::Engine) -> Result<T, DeltaTableError>
    + Send
    + 'static,
) -> Result<T, DeltaTableError> {
    let engine = log_store.engine(None);
    let root = table_root(log_store);
    tokio::task::spawn_blocking(move || {
        let snapshot = delta_kernel::Snapshot::builder_for(root).at_version(version).build(engine.as_ref())?;
        f(&snapshot, engine.as_ref())
    })
    .await
    .map_err(|e| DeltaTableError::Generic(e.to_string()))?
}

fn table_root(log_store: &LogStoreRef) -> url::Url {
    let mut root = log_store.root_url().clone();
    if !root.path().ends_with('/') {
        root.set_path(&format!("{}/", root.path()));
    }
    root
}

/// The commit file of an append: commit info, the `txn` actions, the widened metadata if any, the data files.
pub(crate) fn append_commit(
    read_version: u64,
    txns: &[Transaction],
    metadata: Option<&Metadata>,
    adds: &[Add],
) -> Result<Bytes, DeltaTableError> {
    let info = commit_info("WRITE", [("mode", "Append".into())], read_version, metadata.is_none());
    let actions = txns
        .iter()
        .cloned()
        .map(Action::Txn)
        .chain(metadata.cloned().map(Action::Metadata))
        .chain(adds.iter().cloned().map(Action::Add));
    commit_bytes(info, actions)
}

/// The commit information this loader records with each commit.
pub(crate) fn commit_info<const N: usize>(
    operation: &str,
    parameters: [(&str, serde_json::Value); N],
    read_version: u64,
    blind_append: bool,
) -> CommitInfo {
    CommitInfo {
        timestamp: Some(chrono::Utc::now().timestamp_millis()),
        operation: Some(operation.into()),
        operation_parameters: Some(parameters.into_iter().map(|(k, v)| (k.to_string(), v)).collect()),
        read_version: Some(read_version),
        isolation_level: Some(IsolationLevel::Serializable),
        is_blind_append: Some(blind_append),
        engine_info: Some(concat!("segment-delta/", env!("CARGO_PKG_VERSION")).into()),
        ..Default::default()
    }
}

/// A commit file: the commit information first, then the actions, one JSON object per line.
pub(crate) fn commit_bytes(info: CommitInfo, actions: impl Iterator<Item = Action>) -> Result<Bytes, DeltaTableError> {
    let actions = std::iter::once(Action::CommitInfo(info)).chain(actions);
    let mut out = Vec::new();
    for action in actions {
        serde_json::to_writer(&mut out, &action).map_err(|e| DeltaTableError::Generic(e.to_string()))?;
        out.push(b'\n');
    }
    Ok(Bytes::from(out))
}

/// Writes `bytes` as commit `version`; fails with `VersionAlreadyExists` when another writer took it. Both stores
/// this loader supports (local files, Azure Blob Storage) have an atomic put-if-absent, which takes the bytes.
pub(crate) async fn write_commit(log_store: &LogStoreRef, version: u64, bytes: Bytes) -> Result<(), TransactionError> {
    log_store.write_commit_entry(version, CommitOrBytes::LogBytes(bytes), uuid::Uuid::new_v4()).await
}

/// What the commits after `from` (exclusive) up to `to` (inclusive) changed that matters to an append.
#[derive(Debug, Default)]
pub(crate) struct Winners {
    /// A new schema, protocol or table properties.
    pub metadata: bool,
    /// One of the given `txn` app ids was recorded.
    pub same_stream: bool,
    /// Paths of the files the commits removed.
    pub removed: HashSet<String>,
}

pub(crate) async fn winners(
    log_store: &LogStoreRef,
    from: u64,
    to: u64,
    app_ids: &HashSet<&str>,
) -> Result<Winners, DeltaTableError> {
    let mut w = Winners::default();
    for version in from + 1..=to {
        for action in commit_actions(log_store, version).await?.unwrap_or_default() {
            if action.get("metaData").is_some() || action.get("protocol").is_some() {
                w.metadata = true;
            }
            if let Some(path) = action.get("remove").and_then(|r| r.get("path")).and_then(|p| p.as_str()) {
                w.removed.insert(path.to_string());
            }
            if let Some(app) = action.get("txn").and_then(|t| t.get("appId")).and_then(|a| a.as_str())
                && app_ids.contains(app)
            {
                w.same_stream = true;
            }
        }
    }
    Ok(w)
}
