//! A table as a writer holds it between commits: its log store, and the protocol, metadata and schema of the
//! newest version it read (never the list of data files, so that holding a table costs the same at any size),
//! plus the little the next commit needs from the log: the last in-commit timestamp and the row id high-water
//! mark.

use std::collections::HashMap;
use std::sync::Arc;

use deltalake::DeltaTableError;
use deltalake::kernel::{Metadata, Protocol, Snapshot, StructType};
use deltalake::logstore::LogStoreRef;
use url::Url;

use super::errors::{ErrorClass, classify, raced};
use super::files::FileLayout;
use super::log;
use super::protocol::{self, Operation, Refusal, Rules};

/// The URL delta-rs opens for a table location (local paths become absolute `file://` URLs).
pub fn table_url(uri: &str) -> Result<Url, String> {
    if uri.contains("://") {
        return Url::parse(uri).map_err(|e| format!("{uri}: {e}"));
    }
    let path = std::path::Path::new(uri);
    std::fs::create_dir_all(path).map_err(|e| format!("cannot create {uri}: {e}"))?;
    let abs = std::fs::canonicalize(path).map_err(|e| format!("{uri}: {e}"))?;
    Url::from_directory_path(&abs).map_err(|()| format!("{} is not an absolute path", abs.display()))
}

/// The log store of the table at `uri`.
pub fn log_store(uri: &str, storage_options: &HashMap<String, String>) -> Result<LogStoreRef, DeltaTableError> {
    let url = table_url(uri).map_err(DeltaTableError::InvalidTableLocation)?;
    super::storage::log_store(url, storage_options)
}

/// What a failure to read a table's log means for `operation`: the refusal of a protocol this writer does not
/// implement (which the kernel may refuse to read at all, without saying so in those words), else the error.
pub async fn explain(log_store: &LogStoreRef, e: DeltaTableError, operation: Operation) -> super::errors::Failure {
    if classify(&e) == ErrorClass::Fatal
        && let Ok(Some(p)) = log::newest_protocol(log_store).await
        && let Some(refusal) = protocol::refusal_of_protocol_json(&p, operation)
    {
        return refusal.into();
    }
    e.into()
}

/// A version of a table as read from its log.
#[derive(Clone)]
pub struct TableState {
    pub snapshot: Arc<Snapshot>,
    /// The newest version this writer knows of; commits that change no metadata advance it alone.
    pub version: u64,
    /// The newest commit's `inCommitTimestamp`, when the table keeps them.
    pub last_in_commit_timestamp: Option<i64>,
    /// The `delta.rowTracking` high-water mark (-1 when no row id was assigned yet), when the table tracks rows.
    pub row_id_high_water_mark: Option<i64>,
    /// When this writer's last commit to the table lost a race, or found other writers' commits ahead of it (the
    /// table is shared): how long its put took.
    pub contended: Option<std::time::Duration>,
}

impl TableState {
    /// The table at `version` (the newest when `None`), or `None` when no table exists at the location.
    pub async fn load(log_store: &LogStoreRef, version: Option<u64>) -> Result<Option<TableState>, DeltaTableError> {
        let mut attempt = 0;
        loop {
            match Snapshot::try_new(log_store.as_ref(), version).await {
                Ok(snapshot) => return Ok(Some(TableState::read(log_store, Arc::new(snapshot)).await?)),
                Err(e) if classify(&e) == ErrorClass::MissingTable => return Ok(None),
                Err(e) if raced(&e, &mut attempt).await => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads the log from where this state stands up to `version` (the newest when `None`).
    pub async fn update(&mut self, log_store: &LogStoreRef, version: Option<u64>) -> Result<(), DeltaTableError> {
        let mut attempt = 0;
        let snapshot = loop {
            match self.snapshot.clone().update(log_store.engine(None), version).await {
                Ok(snapshot) => break snapshot,
                Err(e) if raced(&e, &mut attempt).await => {}
                Err(e) => return Err(e),
            }
        };
        let contended = self.contended;
        *self = TableState::read(log_store, snapshot).await?;
        self.contended = contended;
        Ok(())
    }

    async fn read(log_store: &LogStoreRef, snapshot: Arc<Snapshot>) -> Result<TableState, DeltaTableError> {
        let version = snapshot.version();
        let features = protocol::features(snapshot.protocol());
        let last_in_commit_timestamp = if features.contains("inCommitTimestamp") {
            log::in_commit_timestamp(log_store, version).await?
        } else {
            None
        };
        let row_id_high_water_mark = if features.contains("rowTracking") {
            Some(log::row_id_high_water_mark_at(log_store, version).await?)
        } else {
            None
        };
        Ok(TableState { version, snapshot, last_in_commit_timestamp, row_id_high_water_mark, contended: None })
    }

    pub fn protocol(&self) -> &Protocol {
        self.snapshot.protocol()
    }

    pub fn metadata(&self) -> &Metadata {
        self.snapshot.metadata()
    }

    pub fn schema(&self) -> Arc<StructType> {
        self.snapshot.schema()
    }

    /// Whether this writer may do `operation` to the table, and the rules it must follow when it does.
    pub fn rules(&self, operation: Operation) -> Result<Rules, Refusal> {
        protocol::check(self.protocol(), self.metadata(), &self.snapshot.schema(), operation)
    }

    /// How the table's data files are laid out, for reading them (no write rules apply).
    pub fn reading_layout(&self, schema: &StructType) -> Result<FileLayout, Refusal> {
        let mapping = protocol::column_mapping(self.protocol(), self.metadata())?;
        let metadata = self.metadata();
        Ok(FileLayout::new(schema, metadata.partition_columns(), metadata.configuration(), mapping))
    }

    /// How the table's data files are laid out, for a table with `schema` (the current one, or a widened one).
    pub fn layout(&self, rules: &Rules, schema: &StructType) -> FileLayout {
        let metadata = self.metadata();
        FileLayout::new(schema, metadata.partition_columns(), metadata.configuration(), rules.column_mapping)
    }
}
