//! Delta tables: one cached handle per table, created on first sight, widened when new columns arrive, and
//! appended to with one commit per micro-batch.

pub mod arrow;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use deltalake::writer::{DeltaWriter, RecordBatchWriter, WriteMode};
use deltalake::{DeltaTable, DeltaTableError};
use url::Url;

use crate::config::Lake;
use crate::schema::rows::{Row, TableKind};
use crate::schema::value::ColumnType;
use crate::segment::time::Micros;

/// A write that did not commit. `retryable` says whether sending the same rows again can succeed.
#[derive(Debug, thiserror::Error)]
#[error("table {table}: {message}")]
pub struct WriteError {
    pub table: String,
    pub message: String,
    pub retryable: bool,
}

impl WriteError {
    fn delta(table: &str, e: DeltaTableError) -> WriteError {
        let retryable = !matches!(
            e,
            DeltaTableError::InvalidTableLocation(_)
                | DeltaTableError::Generic(_)
                | DeltaTableError::SchemaMismatch { .. }
        );
        WriteError {
            table: table.to_string(),
            message: e.to_string(),
            retryable,
        }
    }
}

/// Rows bound for one table of one schema.
pub struct TableWrite<'a> {
    pub schema: &'a str,
    pub table: &'a str,
    pub kind: TableKind,
    pub rows: Vec<Row>,
}

/// What one append committed.
#[derive(Debug, Default)]
pub struct Written {
    pub version: i64,
    pub rows: usize,
    pub new_columns: Vec<String>,
    /// Values that could not be stored as sent (cast failures, columns past the cap).
    pub discards: Vec<crate::schema::rows::Discard>,
}

type Slot = Arc<tokio::sync::Mutex<Option<DeltaTable>>>;

pub struct Lakehouse {
    lake: Lake,
    storage_options: HashMap<String, String>,
    max_columns: usize,
    tables: Mutex<HashMap<String, Slot>>,
}

/// The URL delta-rs opens for a table location (local paths become absolute `file://` URLs).
pub fn table_url(uri: &str) -> Result<Url, String> {
    if uri.contains("://") {
        return Url::parse(uri).map_err(|e| format!("{uri}: {e}"));
    }
    let path = Path::new(uri);
    std::fs::create_dir_all(path).map_err(|e| format!("cannot create {uri}: {e}"))?;
    let abs = std::fs::canonicalize(path).map_err(|e| format!("{uri}: {e}"))?;
    Url::from_directory_path(&abs)
        .map_err(|()| format!("{} is not an absolute path", abs.display()))
}

impl Lakehouse {
    pub fn new(
        lake: Lake,
        storage_options: HashMap<String, String>,
        max_columns: usize,
    ) -> Lakehouse {
        Lakehouse {
            lake,
            storage_options,
            max_columns,
            tables: Mutex::new(HashMap::new()),
        }
    }

    pub fn lake(&self) -> &Lake {
        &self.lake
    }

    fn slot(&self, uri: &str) -> Slot {
        let mut tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        tables.entry(uri.to_string()).or_default().clone()
    }

    /// Opens a table, or returns an unloaded handle when none exists there yet.
    async fn open(&self, uri: &str, table: &str) -> Result<DeltaTable, WriteError> {
        let url = table_url(uri).map_err(|message| WriteError {
            table: table.into(),
            message,
            retryable: false,
        })?;
        DeltaTable::try_from_url_with_storage_options(url, self.storage_options.clone())
            .await
            .map_err(|e| WriteError::delta(table, e))
    }

    /// Appends rows to `<lake>/<schema>/<table>` in one commit, creating the table or adding columns as needed.
    pub async fn append(&self, w: TableWrite<'_>, uuid_ts: Micros) -> Result<Written, WriteError> {
        let uri = self.lake.table_uri(w.schema, w.table);
        let slot = self.slot(&uri);
        let mut guard = slot.lock().await;
        let mut dt = match guard.take() {
            Some(dt) => dt,
            None => self.open(&uri, w.table).await?,
        };
        let result = self.append_to(&mut dt, &w, uuid_ts).await;
        if result.is_ok() {
            *guard = Some(dt);
        }
        // On failure the handle is dropped: the next write reloads the table from storage.
        result
    }

    async fn append_to(
        &self,
        dt: &mut DeltaTable,
        w: &TableWrite<'_>,
        uuid_ts: Micros,
    ) -> Result<Written, WriteError> {
        let table = w.table;
        let exists = dt.version().is_some();
        let mut columns: Vec<(String, ColumnType)> = Vec::new();
        let mut foreign: HashMap<String, String> = HashMap::new();
        if exists {
            let schema = dt
                .snapshot()
                .map_err(|e| WriteError::delta(table, e))?
                .snapshot()
                .arrow_schema();
            for f in schema.fields() {
                match arrow::column_type(f.data_type()) {
                    Some(t) => columns.push((f.name().clone(), t)),
                    None => {
                        foreign.insert(
                            f.name().clone(),
                            format!(
                                "column {} has type {} which this loader does not write",
                                f.name(),
                                f.data_type()
                            ),
                        );
                    }
                }
            }
        } else {
            columns.extend(
                w.kind
                    .fixed_columns()
                    .into_iter()
                    .map(|(n, t)| (n.to_string(), t)),
            );
        }
        let known = columns.len() + foreign.len();
        let mut seen: std::collections::HashSet<String> = columns
            .iter()
            .map(|(n, _)| n.clone())
            .chain(foreign.keys().cloned())
            .collect();
        let mut new_columns = Vec::new();
        let mut over_cap = false;
        for row in &w.rows {
            for (name, value) in &row.cols {
                if seen.contains(name.as_ref()) {
                    continue;
                }
                seen.insert(name.to_string());
                if known + new_columns.len() >= self.max_columns {
                    over_cap = true;
                    continue;
                }
                new_columns.push(name.to_string());
                columns.push((name.to_string(), value.natural_type()));
            }
        }
        let max = self.max_columns;
        let (batch, discards) = arrow::build(table, &columns, &w.rows, uuid_ts, |name| {
            foreign.get(name).cloned().or_else(|| {
                over_cap.then(|| format!("table {table} has reached its limit of {max} columns (SEGMENT_DELTA_MAX_COLUMNS)"))
            })
        })
        .map_err(|e| WriteError { table: table.into(), message: e.to_string(), retryable: false })?;
        let rows = batch.num_rows();

        let version = if exists {
            let mut writer =
                RecordBatchWriter::for_table(dt).map_err(|e| WriteError::delta(table, e))?;
            let mode = if new_columns.is_empty() {
                WriteMode::Default
            } else {
                WriteMode::MergeSchema
            };
            writer
                .write_with_mode(batch, mode)
                .await
                .map_err(|e| WriteError::delta(table, e))?;
            writer
                .flush_and_commit(dt)
                .await
                .map_err(|e| WriteError::delta(table, e))?
        } else {
            self.create_with(dt, &w.schema_and_table(), &columns, batch)
                .await?
        };
        tracing::info!(table = %w.schema_and_table(), rows, version, new_columns = new_columns.len(), "committed");
        Ok(Written {
            version: version as i64,
            rows,
            new_columns,
            discards,
        })
    }

    /// Writes the first data file and creates the table with it in version 0.
    async fn create_with(
        &self,
        dt: &mut DeltaTable,
        name: &str,
        columns: &[(String, ColumnType)],
        batch: deltalake::arrow::record_batch::RecordBatch,
    ) -> Result<u64, WriteError> {
        let err = |e| WriteError::delta(name, e);
        let uri = dt.table_url().to_string();
        let schema = arrow::arrow_schema(columns);
        let mut writer =
            RecordBatchWriter::try_new(&uri, schema, None, Some(self.storage_options.clone()))
                .map_err(err)?;
        writer.write(batch).await.map_err(err)?;
        let adds = writer.flush().await.map_err(err)?;
        let fields: Vec<deltalake::kernel::StructField> = columns
            .iter()
            .map(|(n, t)| deltalake::kernel::StructField::new(n.clone(), kernel_type(*t), true))
            .collect();
        let created = dt
            .create()
            .with_columns(fields)
            .with_actions(adds.into_iter().map(deltalake::kernel::Action::Add))
            .await
            .map_err(err)?;
        let version = created.version().unwrap_or(0);
        *dt = created;
        Ok(version as u64)
    }
}

fn kernel_type(t: ColumnType) -> deltalake::kernel::DataType {
    use deltalake::kernel::{DataType, PrimitiveType};
    DataType::Primitive(match t {
        ColumnType::Timestamp => PrimitiveType::Timestamp,
        ColumnType::BigInt => PrimitiveType::Long,
        ColumnType::Double => PrimitiveType::Double,
        ColumnType::Boolean => PrimitiveType::Boolean,
        ColumnType::String => PrimitiveType::String,
    })
}

impl TableWrite<'_> {
    fn schema_and_table(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }
}
