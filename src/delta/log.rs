//! Reading and writing the Delta log directly: one commit's actions, what the commits a writer lost to did, the
//! version a stream's `txn` records, checkpoints, and the put-if-absent of a commit file.

use std::collections::HashSet;

use bytes::Bytes;
use deltalake::DeltaTableError;
use deltalake::kernel::transaction::TransactionError;
use deltalake::logstore::{CommitOrBytes, LogStoreRef};
use serde_json::Value;

/// The actions of commit `version`, one JSON object each; `None` when the commit file is gone (log cleanup).
pub async fn commit_actions(log_store: &LogStoreRef, version: u64) -> Result<Option<Vec<Value>>, DeltaTableError> {
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

/// The `commitInfo.inCommitTimestamp` of commit `version`, if it has one.
pub async fn in_commit_timestamp(log_store: &LogStoreRef, version: u64) -> Result<Option<i64>, DeltaTableError> {
    let actions = commit_actions(log_store, version).await?.unwrap_or_default();
    Ok(actions.iter().find_map(|a| a.pointer("/commitInfo/inCommitTimestamp").and_then(Value::as_i64)))
}

/// The `commitInfo.txnId` of a commit: the token this writer puts in its own commits to recognise them.
fn token_of(action: &Value) -> Option<&str> {
    action.pointer("/commitInfo/txnId").and_then(Value::as_str)
}

/// What the commits from `first` on did, up to the newest, found by reading them until one is missing: a writer
/// that lost version `first` learns what it lost to, and the newest version, without listing the log.
pub async fn winners_from(log_store: &LogStoreRef, first: u64, token: &str) -> Result<(Winners, u64), DeltaTableError> {
    match read_forward(log_store, first, token).await? {
        Some(found) => Ok(found),
        None => {
            // The commit that took the version is not there: it was cleaned up, or the store does not show it yet.
            let latest = latest_version(log_store, first).await?;
            let w = winners(log_store, first, latest, token).await?;
            Ok((w, latest))
        }
    }
}

/// Commits read at once by [`read_forward`] at first; the window doubles while every commit of it exists.
const FIRST_WINDOW: u64 = 4;
const MAX_WINDOW: u64 = 32;

/// What the commits from `first` on did and the newest version, or `None` when there is no commit `first`. The
/// commits are read a window at a time, all of a window at once: where many writers commit, a writer behind by
/// several versions catches up in one round trip to the store rather than one per version.
pub async fn read_forward(
    log_store: &LogStoreRef,
    first: u64,
    token: &str,
) -> Result<Option<(Winners, u64)>, DeltaTableError> {
    let mut w = Winners::default();
    let (mut next, mut window) = (first, FIRST_WINDOW);
    loop {
        let reads = (next..next + window).map(|v| commit_actions(log_store, v));
        for actions in futures::future::try_join_all(reads).await? {
            let Some(actions) = actions else {
                return Ok((next > first).then(|| (w, next - 1)));
            };
            w.record(next, actions, token);
            next += 1;
        }
        window = (window * 2).min(MAX_WINDOW);
    }
}

/// What the commits `first..=last` did, as far as a writer that lost the race to them needs to know.
#[derive(Debug, Default)]
pub struct Winners {
    /// A commit file of the range is gone (log cleanup ran): nothing is known of what it did.
    pub gone: bool,
    /// One of them changed the protocol.
    pub protocol: bool,
    /// One of them replaced the metadata (schema, configuration, partitioning, table id).
    pub metadata: bool,
    /// The version of the commit that carries this writer's own token: its commit landed though its answer was
    /// lost.
    pub own: Option<u64>,
    /// `txn` app ids they recorded.
    pub app_ids: HashSet<String>,
    /// Paths of the files they removed.
    pub removed: HashSet<String>,
    /// The newest `inCommitTimestamp` among them.
    pub last_in_commit_timestamp: Option<i64>,
    /// The newest row id high-water mark they recorded (`delta.rowTracking` domain).
    pub row_id_high_water_mark: Option<i64>,
}

pub async fn winners(log_store: &LogStoreRef, first: u64, last: u64, token: &str) -> Result<Winners, DeltaTableError> {
    let mut w = Winners::default();
    for version in first..=last {
        match commit_actions(log_store, version).await? {
            Some(actions) => w.record(version, actions, token),
            None => w.gone = true,
        }
    }
    Ok(w)
}

impl Winners {
    fn record(&mut self, version: u64, actions: Vec<Value>, token: &str) {
        for action in actions {
            if token_of(&action) == Some(token) {
                self.own.get_or_insert(version);
            }
            if let Some(t) = action.pointer("/commitInfo/inCommitTimestamp").and_then(Value::as_i64) {
                self.last_in_commit_timestamp = Some(t);
            }
            self.protocol |= action.get("protocol").is_some();
            self.metadata |= action.get("metaData").is_some();
            if let Some(path) = action.pointer("/remove/path").and_then(Value::as_str) {
                // As `remove` actions hold it once read: the URI decoded.
                let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
                self.removed.insert(decoded.into_owned());
            }
            if let Some(app) = action.pointer("/txn/appId").and_then(Value::as_str) {
                self.app_ids.insert(app.to_string());
            }
            if action.pointer("/domainMetadata/domain").and_then(Value::as_str) == Some(ROW_TRACKING_DOMAIN) {
                let configuration = action.pointer("/domainMetadata/configuration").and_then(Value::as_str);
                self.row_id_high_water_mark = configuration.and_then(row_id_high_water_mark);
            }
        }
    }
}

/// The domain that holds a table's row id high-water mark.
pub const ROW_TRACKING_DOMAIN: &str = "delta.rowTracking";

/// `{"rowIdHighWaterMark": N}` → N.
pub fn row_id_high_water_mark(configuration: &str) -> Option<i64> {
    serde_json::from_str::<Value>(configuration).ok()?.get("rowIdHighWaterMark")?.as_i64()
}

/// The version of the first commit in `from..=to` that carries `token`, if any.
pub async fn find_token(
    log_store: &LogStoreRef,
    from: u64,
    to: u64,
    token: &str,
) -> Result<Option<u64>, DeltaTableError> {
    for version in from..=to {
        let actions = commit_actions(log_store, version).await?.unwrap_or_default();
        if actions.iter().any(|a| token_of(a) == Some(token)) {
            return Ok(Some(version));
        }
    }
    Ok(None)
}

/// The newest version of the table (at least `from`), listed again when the listing raced a commit.
pub async fn latest_version(log_store: &LogStoreRef, from: u64) -> Result<u64, DeltaTableError> {
    let mut attempt = 0;
    loop {
        match log_store.get_latest_version(from).await {
            Err(e) if super::errors::raced(&e, &mut attempt).await => {}
            other => return other,
        }
    }
}

/// The newest `protocol` action of the table as JSON, from the newest commits (the last thousand at most).
pub async fn newest_protocol(log_store: &LogStoreRef) -> Result<Option<Value>, DeltaTableError> {
    let latest = latest_version(log_store, 0).await?;
    for version in (latest.saturating_sub(1000)..=latest).rev() {
        let actions = commit_actions(log_store, version).await?.unwrap_or_default();
        if let Some(p) = actions.iter().find_map(|a| a.get("protocol")) {
            return Ok(Some(p.clone()));
        }
    }
    Ok(None)
}

/// The version a stream's `txn` action records in the table as of `version`.
pub async fn txn_version(log_store: &LogStoreRef, version: u64, app_id: &str) -> Result<Option<i64>, DeltaTableError> {
    let app_id = app_id.to_string();
    with_kernel_snapshot(log_store, version, move |snapshot, engine| Ok(snapshot.get_app_id_version(&app_id, engine)?))
        .await
}

/// The row id high-water mark of the table at `version` (-1 when no row id was given out yet).
pub async fn row_id_high_water_mark_at(log_store: &LogStoreRef, version: u64) -> Result<i64, DeltaTableError> {
    use delta_kernel::row_tracking::RowTrackingDomainMetadata;
    with_kernel_snapshot(log_store, version, |snapshot, engine| {
        Ok(RowTrackingDomainMetadata::get_high_water_mark(snapshot, engine)?.unwrap_or(-1))
    })
    .await
}

/// Writes a checkpoint of `version`, read from the log alone.
pub async fn checkpoint(log_store: &LogStoreRef, version: u64) -> Result<(), DeltaTableError> {
    with_kernel_snapshot(log_store, version, |snapshot, engine| Ok(snapshot.checkpoint(engine, None).map(|_| ())?))
        .await
}

/// Runs `f` on the Delta kernel's snapshot of `version` (protocol, metadata and log segment, no file list), on a
/// blocking thread: the kernel reads the log synchronously. A listing of the log that raced a commit is taken again.
async fn with_kernel_snapshot<T: Send + 'static>(
    log_store: &LogStoreRef,
    version: u64,
    f: impl Fn(&delta_kernel::snapshot::SnapshotRef, &dyn delta_kernel::Engine) -> Result<T, DeltaTableError>
    + Send
    + Sync
    + 'static,
) -> Result<T, DeltaTableError> {
    let f = std::sync::Arc::new(f);
    let mut attempt = 0;
    loop {
        let (engine, root, f) = (log_store.engine(None), table_root(log_store), f.clone());
        let result = tokio::task::spawn_blocking(move || {
            let snapshot = delta_kernel::Snapshot::builder_for(root).at_version(version).build(engine.as_ref())?;
            f(&snapshot, engine.as_ref())
        })
        .await
        .map_err(|e| DeltaTableError::Generic(e.to_string()))?;
        match result {
            Err(e) if super::errors::raced(&e, &mut attempt).await => {}
            other => return other,
        }
    }
}

fn table_root(log_store: &LogStoreRef) -> url::Url {
    let mut root = log_store.root_url().clone();
    if !root.path().ends_with('/') {
        root.set_path(&format!("{}/", root.path()));
    }
    root
}

/// Writes `bytes` as commit `version`; fails with `VersionAlreadyExists` when another writer took it. Both stores
/// this loader supports (local files, Azure Blob Storage) have an atomic put-if-absent, which takes the bytes.
pub async fn write_commit(log_store: &LogStoreRef, version: u64, bytes: Bytes) -> Result<(), TransactionError> {
    log_store.write_commit_entry(version, CommitOrBytes::LogBytes(bytes), uuid::Uuid::new_v4()).await
}
