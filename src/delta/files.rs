//! Data files: a batch of rows written as Parquet the way the table's protocol asks — physical column names and
//! Parquet field ids under column mapping, one file per partition with its values in the log, statistics keyed by
//! physical name — and files read back.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use deltalake::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray, UInt32Array, new_null_array,
};
use deltalake::arrow::compute::{self, take};
use deltalake::arrow::datatypes::{DataType, Field, Schema};
use deltalake::kernel::{Add, StructType};
use deltalake::parquet::arrow::ArrowWriter;
use deltalake::parquet::arrow::ProjectionMask;
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use deltalake::parquet::basic::Compression;
use deltalake::parquet::file::metadata::ParquetMetaData;
use deltalake::parquet::file::properties::{
    DEFAULT_DATA_PAGE_ROW_COUNT_LIMIT, DEFAULT_PAGE_SIZE, EnabledStatistics, WriterProperties, WriterPropertiesBuilder,
};
use deltalake::parquet::file::statistics::Statistics;
use deltalake::parquet::schema::types::ColumnPath;
use deltalake::{DeltaTableError, ObjectStore, Path};
use object_store::{ObjectStoreExt, PutPayload};
use serde_json::{Map, Value, json};

use super::protocol::ColumnMapping;
use crate::layout::UUID_TS;
use crate::layout::value::format_micros;

/// One column of the table as data files hold it.
#[derive(Debug, Clone)]
pub struct PhysicalColumn {
    pub physical: String,
    /// The Parquet field id (column mapping, both modes).
    pub field_id: Option<i64>,
    /// Statistics are collected for this column (`delta.dataSkippingNumIndexedCols` / `...StatsColumns`).
    pub stats: bool,
}

/// How the table's data files are laid out: physical names, partition columns, which columns get statistics.
#[derive(Debug, Clone)]
pub struct FileLayout {
    /// Logical name → physical column, for every top-level column of the table.
    pub columns: HashMap<String, PhysicalColumn>,
    /// Logical names of the partition columns, in the table's order.
    pub partition_columns: Vec<String>,
    pub column_mapping: ColumnMapping,
}

const DEFAULT_INDEXED_COLUMNS: i64 = 32;

impl FileLayout {
    /// The layout of a table with this schema, partitioning and configuration.
    pub fn new(
        schema: &StructType,
        partition_columns: &[String],
        configuration: &HashMap<String, String>,
        column_mapping: ColumnMapping,
    ) -> FileLayout {
        let stats_columns: Option<Vec<String>> = configuration
            .get("delta.dataSkippingStatsColumns")
            .map(|s| s.split(',').map(|c| c.trim().trim_matches('`').to_string()).filter(|c| !c.is_empty()).collect());
        let indexed = configuration
            .get("delta.dataSkippingNumIndexedCols")
            .and_then(|n| n.trim().parse::<i64>().ok())
            .unwrap_or(DEFAULT_INDEXED_COLUMNS);
        let mut columns = HashMap::new();
        let mut data_position = 0i64;
        for field in schema.fields() {
            let metadata = field.metadata();
            let text = |k: &str| metadata.get(k).map(|v| serde_json::to_value(v).unwrap_or(Value::Null));
            let physical = match column_mapping {
                ColumnMapping::None => field.name().clone(),
                _ => text("delta.columnMapping.physicalName")
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_else(|| field.name().clone()),
            };
            let field_id = match column_mapping {
                ColumnMapping::None => None,
                _ => text("delta.columnMapping.id").and_then(|v| v.as_i64()),
            };
            let partition = partition_columns.iter().any(|p| p == field.name());
            let stats = !partition
                && match &stats_columns {
                    Some(named) => named.iter().any(|c| c.eq_ignore_ascii_case(field.name())),
                    None => indexed < 0 || data_position < indexed,
                };
            if !partition {
                data_position += 1;
            }
            columns.insert(field.name().clone(), PhysicalColumn { physical, field_id, stats });
        }
        FileLayout { columns, partition_columns: partition_columns.to_vec(), column_mapping }
    }

    /// The name a column has in data files, statistics and partition values.
    pub fn physical<'a>(&'a self, logical: &'a str) -> &'a str {
        self.columns.get(logical).map_or(logical, |c| c.physical.as_str())
    }
}

/// Writes `batch` (logical column names) as data files: one per partition, with the table's physical names,
/// field ids and statistics. Returns their `add` actions (`dataChange` as given).
pub async fn write(
    store: &dyn ObjectStore,
    layout: &FileLayout,
    batch: &RecordBatch,
    data_change: bool,
) -> Result<Vec<Add>, DeltaTableError> {
    let mut adds = Vec::new();
    for (values, rows) in partitions(layout, batch)? {
        let part = match rows {
            Some(rows) => {
                let indices = UInt32Array::from(rows);
                let columns = batch.columns().iter().map(|c| take(c, &indices, None)).collect::<Result<Vec<_>, _>>()?;
                RecordBatch::try_new(batch.schema(), columns)?
            }
            None => batch.clone(),
        };
        adds.push(write_one(store, layout, &part, values, data_change).await?);
    }
    Ok(adds)
}

/// Partition values by physical column name, in the table's order of partition columns.
type PartitionValues = Vec<(String, Option<String>)>;

/// The rows of one partition (`None`: all of them).
type Partition = (PartitionValues, Option<Vec<u32>>);

/// The rows of each partition (all rows, `None`, for an unpartitioned table), keyed by the serialised values.
fn partitions(layout: &FileLayout, batch: &RecordBatch) -> Result<Vec<Partition>, DeltaTableError> {
    if layout.partition_columns.is_empty() {
        return Ok(vec![(Vec::new(), None)]);
    }
    let mut groups: BTreeMap<Vec<Option<String>>, Vec<u32>> = BTreeMap::new();
    let columns: Vec<Option<&ArrayRef>> =
        layout.partition_columns.iter().map(|name| batch.column_by_name(name)).collect();
    for row in 0..batch.num_rows() {
        let key = columns.iter().map(|c| c.and_then(|c| partition_value(c, row))).collect::<Vec<_>>();
        groups.entry(key).or_default().push(row as u32);
    }
    Ok(groups
        .into_iter()
        .map(|(key, rows)| {
            let values = layout.partition_columns.iter().map(|c| layout.physical(c).to_string()).zip(key).collect();
            (values, Some(rows))
        })
        .collect())
}

/// A partition value as the Delta protocol serialises it; an empty string is a null.
fn partition_value(array: &ArrayRef, row: usize) -> Option<String> {
    if array.is_null(row) {
        return None;
    }
    let any = array.as_any();
    let text = if let Some(a) = any.downcast_ref::<StringArray>() {
        a.value(row).to_string()
    } else if let Some(a) = any.downcast_ref::<Int64Array>() {
        a.value(row).to_string()
    } else if let Some(a) = any.downcast_ref::<Float64Array>() {
        java_double(a.value(row))
    } else if let Some(a) = any.downcast_ref::<BooleanArray>() {
        a.value(row).to_string()
    } else if let Some(a) = any.downcast_ref::<TimestampMicrosecondArray>() {
        iso_micros(a.value(row))
    } else {
        return None;
    };
    (!text.is_empty()).then_some(text)
}

/// A double as Java's `Double.toString` writes it (the form Spark reads partition values in).
fn java_double(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    let abs = v.abs();
    if abs == 0.0 || (1e-3..1e7).contains(&abs) {
        let s = format!("{v:?}");
        if s.contains('.') || s.contains('e') { s } else { format!("{s}.0") }
    } else {
        let s = format!("{v:e}");
        let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let mantissa = if mantissa.contains('.') { mantissa.to_string() } else { format!("{mantissa}.0") };
        format!("{mantissa}E{exp}")
    }
}

/// `2026-11-02T08:00:00.123456Z`: a timestamp partition value, in UTC, to the microsecond.
fn iso_micros(t: i64) -> String {
    use chrono::{SecondsFormat, TimeZone, Utc};
    Utc.timestamp_micros(t).single().map_or_else(|| t.to_string(), |d| d.to_rfc3339_opts(SecondsFormat::Micros, true))
}

/// Hive-style directory of a partition (`<physical name>=<value>`), with every byte outside `[A-Za-z0-9_.-]`
/// escaped as `%XX` as Hive escapes path names; a null value is Hive's default partition.
fn partition_dir(values: &PartitionValues) -> String {
    let mut dir = String::new();
    for (name, value) in values {
        let escaped = match value {
            None => "__HIVE_DEFAULT_PARTITION__".to_string(),
            Some(v) => v
                .bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
                    other => format!("%{other:02X}"),
                })
                .collect(),
        };
        dir.push_str(&format!("{name}={escaped}/"));
    }
    dir
}

async fn write_one(
    store: &dyn ObjectStore,
    layout: &FileLayout,
    batch: &RecordBatch,
    partition_values: PartitionValues,
    data_change: bool,
) -> Result<Add, DeltaTableError> {
    // Partition columns live in the log, not in the files.
    let keep: Vec<usize> = (0..batch.num_columns())
        .filter(|&i| !layout.partition_columns.iter().any(|p| p == batch.schema().field(i).name()))
        .collect();
    let schema = batch.schema();
    let fields: Vec<Field> = keep
        .iter()
        .map(|&i| {
            let f = schema.field(i);
            let mut field = Field::new(layout.physical(f.name()), f.data_type().clone(), f.is_nullable());
            if let Some(id) = layout.columns.get(f.name()).and_then(|c| c.field_id) {
                field = field.with_metadata(HashMap::from([("PARQUET:field_id".to_string(), id.to_string())]));
            }
            field
        })
        .collect();
    let physical = Arc::new(Schema::new(fields));
    let data = RecordBatch::try_new(physical.clone(), keep.iter().map(|&i| batch.column(i).clone()).collect())?;
    let columns =
        keep.iter().enumerate().map(|(j, &i)| (schema.field(i), batch.column(i), physical.field(j).name().as_str()));
    let props = writer_properties(columns)
        .set_created_by(concat!("segment-delta ", env!("CARGO_PKG_VERSION")).to_string())
        .build();
    let mut buffer = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut buffer, physical, Some(props))?;
    writer.write(&data)?;
    let written = writer.close()?;
    let stats = statistics(layout, batch, &keep, &written);
    let size = buffer.len() as i64;
    let name = format!("part-00000-{}-c000.snappy.parquet", uuid::Uuid::new_v4());
    let relative = format!("{}{name}", partition_dir(&partition_values));
    // The key is the path as written (its `%XX` escapes are part of the directory name), not a re-encoding of it.
    let key = Path::parse(relative.as_str()).map_err(|e| DeltaTableError::Generic(format!("{relative}: {e}")))?;
    store.put(&key, PutPayload::from(buffer)).await?;
    Ok(Add {
        // The path as stored; the action's serialisation makes it the URI the protocol asks for.
        path: relative,
        partition_values: partition_values.into_iter().collect(),
        size,
        modification_time: chrono::Utc::now().timestamp_millis(),
        data_change,
        stats: Some(stats.to_string()),
        ..Default::default()
    })
}

/// How a data file is encoded: Snappy; a dictionary for every column but the nearly distinct ones; statistics of
/// every column chunk, and a page index (each page's statistics) for the columns whose values may take more than
/// one page. `columns` gives each column's field in the table and its values, which decide, with its name in the
/// file.
pub fn writer_properties<'f>(
    columns: impl IntoIterator<Item = (&'f Field, &'f ArrayRef, &'f str)>,
) -> WriterPropertiesBuilder {
    let mut props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_statistics_enabled(EnabledStatistics::Chunk);
    for (field, values, name) in columns {
        if !dictionary_encoded(field, values) {
            props = props.set_column_dictionary_enabled(ColumnPath::from(name), false);
        }
        if !one_page(values) {
            props = props.set_column_statistics_enabled(ColumnPath::from(name), EnabledStatistics::Page);
        }
    }
    props
}

/// Whether a column's values fit in one Parquet data page however they are encoded: fewer rows than the writer
/// puts in a page, and at most half a page of bytes written plainly (a dictionary's indices take fewer). A page
/// index of such a column would repeat its chunk's statistics, and cost time and bytes in every small file.
fn one_page(values: &ArrayRef) -> bool {
    if values.len() >= DEFAULT_DATA_PAGE_ROW_COUNT_LIMIT {
        return false;
    }
    let plain = match values.as_string_opt::<i32>() {
        // The text, and its length before each value.
        Some(text) => {
            let offsets = text.value_offsets();
            (offsets[offsets.len() - 1] - offsets[0]) as usize + 4 * (text.len() - text.null_count())
        }
        // A bit a value.
        None if *values.data_type() == DataType::Boolean => values.len().div_ceil(8),
        // BIGINT, DOUBLE and TIMESTAMP: 8 bytes a value. Any other type (text of a wider kind, read from a file
        // another writer made) is not counted, and keeps its page index.
        None => match values.data_type().primitive_width() {
            Some(width) => width * values.len(),
            None => return false,
        },
    };
    plain <= DEFAULT_PAGE_SIZE / 2
}

/// Whether a column's values are written with a dictionary, as Parquet writers do by default. Not when they are
/// nearly all distinct, for a dictionary of them costs time to build and makes the file larger: the row id, event
/// times other than `uuid_ts` (one value a file), and text whose first values are nearly all different (device
/// ids, addresses, order numbers). Spark's Parquet writer likewise falls back to plain values when its first page
/// shows that a dictionary does not pay.
fn dictionary_encoded(field: &Field, values: &ArrayRef) -> bool {
    if field.name() == "id" || (matches!(field.data_type(), DataType::Timestamp(..)) && field.name() != UUID_TS) {
        return false;
    }
    values.as_string_opt::<i32>().is_none_or(|text| !nearly_distinct(text))
}

/// How many of a text column's first values are looked at to tell whether they are nearly all distinct. A column
/// with fewer keeps its dictionary: it is small either way.
const DISTINCT_SAMPLE: usize = 32;

/// Whether more than nine in ten of the first [`DISTINCT_SAMPLE`] values of `text` differ from one another.
fn nearly_distinct(text: &StringArray) -> bool {
    if text.len() - text.null_count() < DISTINCT_SAMPLE {
        return false;
    }
    // The first values are found through the null bitmap, a word at a time: most columns of a wide table are
    // mostly empty.
    let mut distinct: HashSet<&str, foldhash::fast::RandomState> =
        HashSet::with_capacity_and_hasher(DISTINCT_SAMPLE, Default::default());
    match text.nulls() {
        Some(nulls) => distinct.extend(nulls.valid_indices().take(DISTINCT_SAMPLE).map(|i| text.value(i))),
        None => distinct.extend((0..DISTINCT_SAMPLE).map(|i| text.value(i))),
    }
    distinct.len() * 10 > DISTINCT_SAMPLE * 9
}

/// Longest string kept in statistics; longer minima are cut (still a lower bound), longer maxima left out.
const STATS_STRING_PREFIX: usize = 32;

/// `numRecords`, and `minValues` / `maxValues` / `nullCount` of the columns that get statistics, keyed by
/// physical name. Timestamps are kept to the millisecond: minima rounded down, maxima up. The bounds of text are
/// the ones the Parquet writer found (`written`, whose columns are `columns` in order), rather than found again.
fn statistics(layout: &FileLayout, batch: &RecordBatch, columns: &[usize], written: &ParquetMetaData) -> Value {
    let (mut min, mut max, mut nulls) = (Map::new(), Map::new(), Map::new());
    let schema = batch.schema();
    for (leaf, &i) in columns.iter().enumerate() {
        let name = schema.field(i).name();
        if !layout.columns.get(name.as_str()).is_some_and(|c| c.stats) {
            continue;
        }
        let physical = layout.physical(name).to_string();
        let array = batch.column(i);
        nulls.insert(physical.clone(), json!(array.null_count()));
        let (lo, hi) = match array.as_any().downcast_ref::<StringArray>() {
            Some(_) => text_bounds(written, leaf),
            None => bounds(array),
        };
        if let Some(lo) = lo {
            min.insert(physical.clone(), lo);
        }
        if let Some(hi) = hi {
            max.insert(physical, hi);
        }
    }
    json!({"numRecords": batch.num_rows(), "minValues": min, "maxValues": max, "nullCount": nulls})
}

fn bounds(array: &ArrayRef) -> (Option<Value>, Option<Value>) {
    let any = array.as_any();
    if let Some(a) = any.downcast_ref::<Int64Array>() {
        return (compute::min(a).map(|v| json!(v)), compute::max(a).map(|v| json!(v)));
    }
    if let Some(a) = any.downcast_ref::<Float64Array>() {
        let finite = |v: Option<f64>| v.filter(|v| v.is_finite()).map(|v| json!(v));
        return (finite(compute::min(a)), finite(compute::max(a)));
    }
    if let Some(a) = any.downcast_ref::<TimestampMicrosecondArray>() {
        let ms = 1_000;
        let lo = compute::min(a).map(|v| json!(format_micros(v.div_euclid(ms) * ms)));
        let hi = compute::max(a).map(|v| json!(format_micros((v + ms - 1).div_euclid(ms) * ms)));
        return (lo, hi);
    }
    (None, None)
}

/// The bounds of a text column from the Parquet writer's statistics of each row group: the minimum cut to its
/// first characters (still a lower bound), and the maximum only when the writer kept it whole and it is short.
/// A row group without statistics leaves the column without bounds.
fn text_bounds<'a>(written: &'a ParquetMetaData, leaf: usize) -> (Option<Value>, Option<Value>) {
    let (mut lo, mut hi): (Option<&'a [u8]>, Option<&'a [u8]>) = (None, None);
    let mut hi_exact = true;
    for group in written.row_groups() {
        let Some(Statistics::ByteArray(s)) = group.column(leaf).statistics() else {
            return (None, None);
        };
        if let Some(v) = s.min_opt().map(|v| v.data()) {
            lo = Some(lo.map_or(v, |lo| lo.min(v)));
        }
        if let Some(v) = s.max_opt().map(|v| v.data()) {
            hi = Some(hi.map_or(v, |hi| hi.max(v)));
            hi_exact &= s.max_is_exact();
        }
    }
    let text = |v: Option<&'a [u8]>| v.and_then(|v| std::str::from_utf8(v).ok());
    let lo = text(lo).map(|s| json!(s.chars().take(STATS_STRING_PREFIX).collect::<String>()));
    let hi = text(hi).filter(|s| hi_exact && s.chars().count() <= STATS_STRING_PREFIX).map(|s| json!(s));
    (lo, hi)
}

/// The table's logical schema as Arrow.
pub fn arrow_schema(schema: &StructType) -> Result<Arc<Schema>, DeltaTableError> {
    use delta_kernel::engine::arrow_conversion::TryIntoArrow as _;
    let arrow: Schema = schema.try_into_arrow().map_err(|e| DeltaTableError::Generic(format!("schema: {e}")))?;
    Ok(Arc::new(arrow))
}

/// The rows of one data file with the table's logical names and types (`schema`): columns are found by physical
/// name (or Parquet field id, in id mode), columns the file predates are null, narrower types are cast. With
/// `only`, just those columns are read (the rest are null).
pub async fn read(
    store: &dyn ObjectStore,
    path: &Path,
    layout: &FileLayout,
    schema: &Arc<Schema>,
    only: Option<&[&str]>,
) -> Result<Vec<RecordBatch>, DeltaTableError> {
    let bytes = store.get(path).await?.bytes().await?;
    let err = |e: deltalake::parquet::errors::ParquetError| DeltaTableError::Generic(format!("{path}: {e}"));
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(err)?.with_batch_size(8192);
    // Where each logical column is in the file.
    let file_schema = builder.schema().clone();
    let field_id = |f: &Field| f.metadata().get("PARQUET:field_id").and_then(|v| v.parse::<i64>().ok());
    let mut found: Vec<Option<usize>> = Vec::with_capacity(schema.fields().len());
    for f in schema.fields() {
        let wanted = only.is_none_or(|o| o.contains(&f.name().as_str()));
        let column = layout.columns.get(f.name());
        let at = wanted
            .then(|| match (layout.column_mapping, column) {
                (ColumnMapping::Id, Some(c)) if c.field_id.is_some() => {
                    file_schema.fields().iter().position(|ff| field_id(ff) == c.field_id)
                }
                _ => file_schema.fields().iter().position(|ff| ff.name() == layout.physical(f.name())),
            })
            .flatten();
        found.push(at);
    }
    let projection: Vec<usize> = found.iter().flatten().copied().collect();
    let mask = ProjectionMask::roots(builder.parquet_schema(), projection.clone());
    let reader = builder.with_projection(mask).build().map_err(err)?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| DeltaTableError::Generic(format!("{path}: {e}")))?;
        let rows = batch.num_rows();
        let columns = schema
            .fields()
            .iter()
            .zip(&found)
            .map(|(f, at)| match at.and_then(|i| projection.iter().position(|p| *p == i)) {
                Some(i) if batch.column(i).data_type() == f.data_type() => Ok(batch.column(i).clone()),
                Some(i) => compute::cast(batch.column(i), f.data_type())
                    .map_err(|e| DeltaTableError::Generic(format!("{path}: column {}: {e}", f.name()))),
                None => Ok(new_null_array(f.data_type(), rows)),
            })
            .collect::<Result<Vec<ArrayRef>, _>>()?;
        out.push(RecordBatch::try_new(schema.clone(), columns)?);
    }
    Ok(out)
}

/// Puts a file's partition values (from its `add` action, by physical name, as the log serialises them) into the
/// partition columns of the rows read from it, which the file itself does not hold.
pub fn fill_partitions(
    layout: &FileLayout,
    batch: RecordBatch,
    values: &HashMap<String, Option<String>>,
) -> Result<RecordBatch, DeltaTableError> {
    if layout.partition_columns.is_empty() {
        return Ok(batch);
    }
    let schema = batch.schema();
    let rows = batch.num_rows();
    let mut columns = batch.columns().to_vec();
    for p in &layout.partition_columns {
        let Some((i, field)) = schema.column_with_name(p) else { continue };
        let value = values.get(layout.physical(p)).cloned().flatten().filter(|v| !v.is_empty());
        let text: ArrayRef = Arc::new(StringArray::from(vec![value.as_deref(); rows]));
        columns[i] = compute::cast(&text, field.data_type())
            .map_err(|e| DeltaTableError::Generic(format!("partition value of {p}: {e}")))?;
    }
    Ok(RecordBatch::try_new(schema, columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_values_are_serialised_as_the_protocol_says() {
        assert_eq!(java_double(1.0), "1.0");
        assert_eq!(java_double(-2.5), "-2.5");
        assert_eq!(java_double(1e20), "1.0E20");
        assert_eq!(java_double(1.5e-7), "1.5E-7");
        assert_eq!(iso_micros(1_793_534_400_123_456), "2026-11-01T12:00:00.123456Z");
        let v: PartitionValues = vec![("col-1".into(), Some("a b/c".into())), ("day".into(), None)];
        assert_eq!(partition_dir(&v), "col-1=a%20b%2Fc/day=__HIVE_DEFAULT_PARTITION__/");
        // An add action's path is the stored path, which its serialisation encodes as a URI.
        let add = Add { path: "col-1=a%20b/part.parquet".into(), ..Default::default() };
        let json = serde_json::to_value(&add).unwrap();
        assert_eq!(json["path"], "col-1=a%2520b/part.parquet");
    }

    #[test]
    fn statistics_bound_every_value() {
        let batch = RecordBatch::try_from_iter([
            ("n", Arc::new(Int64Array::from(vec![Some(3), None, Some(-1)])) as ArrayRef),
            ("s", Arc::new(StringArray::from(vec![Some("b"), Some(&*"z".repeat(40)), Some("a")])) as ArrayRef),
            (
                "t",
                Arc::new(TimestampMicrosecondArray::from(vec![1_000_500, 2_000_001, 1_500_000]).with_timezone("UTC"))
                    as ArrayRef,
            ),
        ])
        .unwrap();
        let mut columns = HashMap::new();
        for (n, p) in [("n", "col-n"), ("s", "col-s"), ("t", "col-t")] {
            columns.insert(n.to_string(), PhysicalColumn { physical: p.into(), field_id: Some(1), stats: true });
        }
        let layout = FileLayout { columns, partition_columns: vec![], column_mapping: ColumnMapping::Name };
        let s = statistics(&layout, &batch, &[0, 1, 2], &written(&batch));
        assert_eq!(s["numRecords"], 3);
        assert_eq!((s["minValues"]["col-n"].clone(), s["maxValues"]["col-n"].clone()), (json!(-1), json!(3)));
        assert_eq!(s["nullCount"]["col-n"], 1);
        assert_eq!(s["minValues"]["col-s"], "a");
        assert!(s["maxValues"].get("col-s").is_none(), "a maximum longer than the prefix is left out");
        assert_eq!(s["minValues"]["col-t"], "1970-01-01T00:00:01Z");
        assert_eq!(s["maxValues"]["col-t"], "1970-01-01T00:00:02.001Z");
    }

    /// The metadata of `batch` written as Parquet in row groups of `rows`.
    fn written_in(batch: &RecordBatch, rows: usize) -> ParquetMetaData {
        let props = WriterProperties::builder().set_max_row_group_row_count(Some(rows)).build();
        let mut writer = ArrowWriter::try_new(Vec::new(), batch.schema(), Some(props)).unwrap();
        writer.write(batch).unwrap();
        writer.close().unwrap()
    }

    fn written(batch: &RecordBatch) -> ParquetMetaData {
        written_in(batch, 1 << 20)
    }

    /// `batch` written as one data file, its columns named `col-0`, `col-1`… in the file: the file's `add` action
    /// and its bytes.
    async fn written_file(batch: &RecordBatch) -> (Add, bytes::Bytes) {
        let mut columns = HashMap::new();
        for (i, field) in batch.schema().fields().iter().enumerate() {
            let physical = format!("col-{i}");
            let column = PhysicalColumn { physical, field_id: Some(i as i64 + 1), stats: true };
            columns.insert(field.name().clone(), column);
        }
        let layout = FileLayout { columns, partition_columns: vec![], column_mapping: ColumnMapping::Name };
        let store = object_store::memory::InMemory::new();
        let add = write_one(&store, &layout, batch, vec![], true).await.unwrap();
        let bytes = store.get(&Path::from(add.path.as_str())).await.unwrap().bytes().await.unwrap();
        (add, bytes)
    }

    #[tokio::test]
    async fn distinct_columns_are_written_without_a_dictionary() {
        let ts = |v: Vec<i64>| Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC")) as ArrayRef;
        let text = |v: Vec<String>| Arc::new(StringArray::from(v)) as ArrayRef;
        let rows = 40;
        // Text with 29 different values among its first 32 is nearly distinct; with 28, or with 31 in a column of
        // 31 values (too few to tell), it is not.
        let repeating = |distinct: usize| text((0..rows).map(|i| format!("v{}", i.min(distinct - 1))).collect());
        let mut short: Vec<Option<String>> = (0..31).map(|i| Some(format!("s{i}"))).collect();
        short.resize(rows, None);
        // 36 different values among nulls: nearly distinct.
        let gappy: Vec<Option<String>> = (0..rows).map(|i| (i % 10 != 0).then(|| format!("g{i}"))).collect();
        let batch = RecordBatch::try_from_iter([
            ("id", text((0..rows).map(|i| format!("m{i}")).collect())),
            ("event", text((0..rows).map(|i| ["a", "b"][i % 2].to_string()).collect())),
            ("timestamp", ts((0..rows as i64).map(|i| i * 1_000_000).collect())),
            ("uuid_ts", ts(vec![9_000_000; rows])),
            ("context_ip", text((0..rows).map(|i| format!("10.0.0.{i}")).collect())),
            ("a29", repeating(29)),
            ("a28", repeating(28)),
            ("short", Arc::new(StringArray::from(short)) as ArrayRef),
            ("gappy", Arc::new(StringArray::from(gappy)) as ArrayRef),
        ])
        .unwrap();
        let (_, bytes) = written_file(&batch).await;
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap();
        let chunks = reader.metadata().row_group(0).columns().to_vec();
        let dictionary: Vec<(String, bool)> =
            chunks.iter().map(|c| (c.column_path().string(), c.dictionary_page_offset().is_some())).collect();
        let want: Vec<(String, bool)> = [false, true, false, true, false, false, true, true, false]
            .into_iter()
            .enumerate()
            .map(|(i, d)| (format!("col-{i}"), d))
            .collect();
        assert_eq!(dictionary, want);
        // Read back, the values are those written.
        let read = reader.build().unwrap().next().unwrap().unwrap();
        assert_eq!(read, RecordBatch::try_new(read.schema(), batch.columns().to_vec()).unwrap());
    }

    #[tokio::test]
    async fn a_page_index_is_written_for_the_columns_of_more_than_one_page() {
        use deltalake::arrow::array::LargeStringArray;
        use deltalake::parquet::arrow::arrow_reader::ArrowReaderOptions;
        use deltalake::parquet::file::metadata::PageIndexPolicy;
        use deltalake::parquet::file::page_index::column_index::ColumnIndexMetaData;
        let rows = 3000;
        let batch = RecordBatch::try_from_iter([
            ("n", Arc::new(Int64Array::from((0..rows as i64).collect::<Vec<_>>())) as ArrayRef),
            ("b", Arc::new(BooleanArray::from((0..rows).map(|i| i % 3 == 0).collect::<Vec<_>>())) as ArrayRef),
            (
                "large",
                Arc::new(LargeStringArray::from((0..rows).map(|i| format!("w{}", i % 5)).collect::<Vec<_>>()))
                    as ArrayRef,
            ),
            (
                "s",
                Arc::new(StringArray::from((0..rows).map(|i| format!("v{}", i % 7)).collect::<Vec<_>>())) as ArrayRef,
            ),
            // 3,000 different values of 600 bytes: 1.8 MB, more than a page.
            (
                "long",
                Arc::new(StringArray::from((0..rows).map(|i| format!("{i:0600}")).collect::<Vec<_>>())) as ArrayRef,
            ),
        ])
        .unwrap();
        let (add, bytes) = written_file(&batch).await;
        let options = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Required);
        let reader = ParquetRecordBatchReaderBuilder::try_new_with_options(bytes, options).unwrap();
        let meta = reader.metadata();
        let pages: Vec<usize> = meta.offset_index().unwrap()[0].iter().map(|o| o.page_locations().len()).collect();
        assert_eq!(pages[..4], [1, 1, 1, 1]);
        assert!(pages[4] > 1, "{pages:?}");
        let indexed: Vec<bool> =
            meta.column_index().unwrap()[0].iter().map(|c| !matches!(c, ColumnIndexMetaData::NONE)).collect();
        // Text of a kind this writer does not make keeps its page index, one page or not.
        assert_eq!(indexed, [false, false, true, false, true]);
        // Every column chunk has its statistics, and the table's statistics are those of the values.
        assert!(
            meta.row_group(0).columns().iter().all(|c| c.statistics().is_some_and(|s| s.min_bytes_opt().is_some()))
        );
        let stats: Value = serde_json::from_str(add.stats.as_deref().unwrap()).unwrap();
        assert_eq!((stats["minValues"]["col-0"].clone(), stats["maxValues"]["col-0"].clone()), (json!(0), json!(2999)));
        assert_eq!(
            (stats["minValues"]["col-3"].clone(), stats["maxValues"]["col-3"].clone()),
            (json!("v0"), json!("v6"))
        );
        // Read back, the values are those written.
        let read: Vec<RecordBatch> = reader.build().unwrap().map(Result::unwrap).collect();
        let all = compute::concat_batches(&read[0].schema(), &read).unwrap();
        assert_eq!(all, RecordBatch::try_new(all.schema(), batch.columns().to_vec()).unwrap());
    }

    #[test]
    fn text_bounds_are_those_of_every_value() {
        let values = vec![None, Some("m"), Some("zz"), Some("é"), Some(""), Some("b"), None, Some("zy")];
        let batch =
            RecordBatch::try_from_iter([("s", Arc::new(StringArray::from(values.clone())) as ArrayRef)]).unwrap();
        // The bounds agree with a plain comparison of every value, over one row group or several.
        let present: Vec<&str> = values.iter().flatten().copied().collect();
        let (lo, hi) = (present.iter().min().unwrap(), present.iter().max().unwrap());
        assert_eq!((*lo, *hi), ("", "é"));
        for rows in [1 << 20, 3, 1] {
            let (min, max) = text_bounds(&written_in(&batch, rows), 0);
            assert_eq!((min, max), (Some(json!(lo)), Some(json!(hi))), "row groups of {rows}");
        }
        // A long minimum is cut to its first characters; a long or cut maximum is left out.
        let long_min = format!("{}b", "é".repeat(40));
        let batch = RecordBatch::try_from_iter([(
            "s",
            Arc::new(StringArray::from(vec![long_min.as_str(), &*"ü".repeat(100)])) as ArrayRef,
        )])
        .unwrap();
        let (min, max) = text_bounds(&written(&batch), 0);
        let cut: String = long_min.chars().take(STATS_STRING_PREFIX).collect();
        assert_eq!((min, max), (Some(json!(cut)), None));
        // Nothing but nulls: no bounds.
        let batch = RecordBatch::try_from_iter([("s", Arc::new(StringArray::from(vec![None::<&str>; 3])) as ArrayRef)])
            .unwrap();
        assert_eq!(text_bounds(&written(&batch), 0), (None, None));
    }
}
