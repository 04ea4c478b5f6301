//! Reading a table's data files back: whole Parquet files, conformed to the table's current schema.

use std::sync::Arc;

use deltalake::arrow::array::{ArrayRef, new_null_array};
use deltalake::arrow::compute::cast;
use deltalake::arrow::datatypes::Schema;
use deltalake::arrow::record_batch::RecordBatch;
use deltalake::parquet::arrow::ProjectionMask;
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use deltalake::{DeltaTableError, ObjectStore, Path};
use object_store::ObjectStoreExt;

/// The rows of one data file, as batches of the file's own columns (all of them, or those named in `only`).
pub async fn read(
    store: &Arc<dyn ObjectStore>,
    path: &Path,
    only: Option<&[&str]>,
) -> Result<Vec<RecordBatch>, DeltaTableError> {
    let bytes = store.get(path).await?.bytes().await?;
    let err = |e: deltalake::parquet::errors::ParquetError| DeltaTableError::Generic(format!("{path}: {e}"));
    let mut builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(err)?.with_batch_size(8192);
    if let Some(names) = only {
        let wanted: Vec<usize> = builder
            .schema()
            .fields()
            .iter()
            .enumerate()
            .filter(|(_, f)| names.contains(&f.name().as_str()))
            .map(|(i, _)| i)
            .collect();
        let mask = ProjectionMask::roots(builder.parquet_schema(), wanted);
        builder = builder.with_projection(mask);
    }
    let reader = builder.build().map_err(err)?;
    reader.collect::<Result<Vec<_>, _>>().map_err(|e| DeltaTableError::Generic(format!("{path}: {e}")))
}

/// A batch with exactly `schema`'s columns in its order: columns the file predates are null, types are cast.
pub fn conform(batch: &RecordBatch, schema: &Arc<Schema>) -> Result<RecordBatch, DeltaTableError> {
    let rows = batch.num_rows();
    let columns = schema
        .fields()
        .iter()
        .map(|f| match batch.column_by_name(f.name()) {
            Some(c) if c.data_type() == f.data_type() => Ok(c.clone()),
            Some(c) => {
                cast(c, f.data_type()).map_err(|e| DeltaTableError::Generic(format!("column {}: {e}", f.name())))
            }
            None => Ok(new_null_array(f.data_type(), rows)),
        })
        .collect::<Result<Vec<ArrayRef>, _>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}
