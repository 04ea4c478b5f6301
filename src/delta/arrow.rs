//! Rows → one Arrow record batch in the table's column order, casting each value to its column's type.

use std::collections::HashMap;
use std::sync::Arc;

use deltalake::arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use deltalake::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use deltalake::arrow::error::ArrowError;
use deltalake::arrow::record_batch::RecordBatch;

use crate::layout::UUID_TS;
use crate::layout::rows::{ByPlace, Discard, Row, prefetched};
use crate::layout::value::{CastError, ColumnType, Micros, Scalar};

/// The Arrow type of a warehouse type; TIMESTAMP is UTC microseconds, which Delta calls `timestamp`.
pub fn arrow_type(t: ColumnType) -> DataType {
    match t {
        ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        ColumnType::BigInt => DataType::Int64,
        ColumnType::Double => DataType::Float64,
        ColumnType::Boolean => DataType::Boolean,
        ColumnType::String => DataType::Utf8,
    }
}

/// The warehouse type of an existing column, when it is one this loader writes.
pub fn column_type(t: &DataType) -> Option<ColumnType> {
    Some(match t {
        DataType::Timestamp(_, Some(_)) => ColumnType::Timestamp,
        DataType::Int64 => ColumnType::BigInt,
        DataType::Float64 => ColumnType::Double,
        DataType::Boolean => ColumnType::Boolean,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => ColumnType::String,
        _ => return None,
    })
}

pub fn arrow_schema(columns: &[(String, ColumnType)]) -> Arc<Schema> {
    Arc::new(Schema::new(columns.iter().map(|(n, t)| Field::new(n, arrow_type(*t), true)).collect::<Vec<_>>()))
}

enum Builder {
    Ts(TimestampMicrosecondBuilder),
    Int(Int64Builder),
    Dbl(Float64Builder),
    Bool(BooleanBuilder),
    Str(StringBuilder),
}

impl Builder {
    fn new(t: ColumnType, n: usize) -> Builder {
        match t {
            ColumnType::Timestamp => Builder::Ts(TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC")),
            ColumnType::BigInt => Builder::Int(Int64Builder::with_capacity(n)),
            ColumnType::Double => Builder::Dbl(Float64Builder::with_capacity(n)),
            ColumnType::Boolean => Builder::Bool(BooleanBuilder::with_capacity(n)),
            ColumnType::String => Builder::Str(StringBuilder::with_capacity(n, n * 16)),
        }
    }

    /// Appends `n` nulls. Zero is a no-op: Arrow's builders would start keeping a validity bitmap on the first
    /// call, whatever its count, and a column every row fills needs none while it is built. Called for every value
    /// of a batch, nearly always with zero, so that test is made where it is called.
    #[inline]
    fn nulls(&mut self, n: usize) {
        if n != 0 {
            self.append_nulls(n);
        }
    }

    fn append_nulls(&mut self, n: usize) {
        match self {
            Builder::Ts(b) => b.append_nulls(n),
            Builder::Int(b) => b.append_nulls(n),
            Builder::Dbl(b) => b.append_nulls(n),
            Builder::Bool(b) => b.append_nulls(n),
            Builder::Str(b) => b.append_nulls(n),
        }
    }

    /// Appends the value cast to the column's type, or a null and the reason it could not be.
    fn push(&mut self, v: &Scalar) -> Result<(), CastError> {
        let r = match self {
            Builder::Ts(b) => v.as_timestamp().map(|x| b.append_value(x)),
            Builder::Int(b) => v.as_bigint().map(|x| b.append_value(x)),
            Builder::Dbl(b) => v.as_double().map(|x| b.append_value(x)),
            Builder::Bool(b) => v.as_bool().map(|x| b.append_value(x)),
            Builder::Str(b) => {
                match v.held_text() {
                    Some(s) => b.append_value(s),
                    None => b.append_value(v.to_text()),
                }
                Ok(())
            }
        };
        if r.is_err() {
            self.nulls(1);
        }
        r
    }

    fn finish(self) -> ArrayRef {
        match self {
            Builder::Ts(mut b) => Arc::new(b.finish()),
            Builder::Int(mut b) => Arc::new(b.finish()),
            Builder::Dbl(mut b) => Arc::new(b.finish()),
            Builder::Bool(mut b) => Arc::new(b.finish()),
            Builder::Str(mut b) => Arc::new(b.finish()),
        }
    }
}

/// Why a row's value has no column in the batch.
pub enum Unplaced {
    /// The column cannot be written (its type, its name), with the reason.
    Column(String),
    /// The table has no room for another column: the row's values of such columns are kept together, in one
    /// discard, with this reason.
    PastCap(String),
}

/// The columns a batch is built with, and what becomes of a name they lack.
pub trait Columns {
    fn columns(&self) -> &[(String, ColumnType)];
    /// A name the columns lack, seen for the first time, with its first value: whether it has just become the last
    /// column.
    fn admit(&mut self, name: &str, value: &Scalar) -> bool;
    /// Why a name the columns lack has no place (`None`: it is not in the table).
    fn unplaced(&self, name: &str) -> Option<Unplaced>;
}

/// Builds the batch for `columns`, in one pass over the rows: a name the columns lack is offered to them when a row
/// first has it, and has no place if they do not take it (its value is reported as outside the table). Values
/// that cannot be cast become nulls and discards.
pub fn build<'r>(
    table: &str,
    columns: &mut impl Columns,
    rows: impl ExactSizeIterator<Item = &'r Row>,
    uuid_ts: Micros,
) -> Result<(RecordBatch, Vec<Discard>), ArrowError> {
    // Column names are the senders' keys: found by a hash seeded per process.
    let mut index: HashMap<String, usize, foldhash::fast::RandomState> =
        columns.columns().iter().enumerate().map(|(i, (n, _))| (n.clone(), i)).collect();
    let n = rows.len();
    let mut builders: Vec<Builder> = columns.columns().iter().map(|(_, t)| Builder::new(*t, n)).collect();
    // How many rows each builder holds a value or a null for.
    let mut filled: Vec<usize> = vec![0; builders.len()];
    let uuid_col = index.get(UUID_TS).copied();
    let has_received = index.contains_key("received_at");
    let mut discards = Vec::new();
    // The column (or `NONE`) of each name. Only names of rows borrowed for this whole call are looked up, so an
    // address is one name throughout.
    const NONE: usize = usize::MAX;
    let mut by_place: ByPlace<usize> = ByPlace::default();
    // The rows were built by earlier requests and lie apart in memory: the next one is fetched while this one is
    // copied.
    for (i, row) in prefetched(rows).enumerate() {
        // The row's `received_at`, found only for a row that has a discard.
        let mut received_at: Option<Micros> = None;
        let mut discard = |column: &str, value: String, reason: String| {
            let received_at = *received_at.get_or_insert_with(|| {
                has_received
                    .then(|| row.columns().find(|(n, _)| n.as_ref() == "received_at"))
                    .flatten()
                    .and_then(|(_, v)| v.as_timestamp().ok())
                    .unwrap_or(uuid_ts)
            });
            discards.push(Discard {
                row_id: row.id.to_string(),
                table_name: table.to_string(),
                column_name: column.to_string(),
                column_value: value,
                reason,
                received_at,
                offset: row.offset.clone(),
            })
        };
        let mut past_cap: Option<(serde_json::Map<String, serde_json::Value>, String)> = None;
        let mut base = 0;
        for part in row.parts() {
            for (k, (name, value)) in part.iter().enumerate() {
                let c = by_place.get(base + k, name, || match index.get(name.as_ref()) {
                    Some(&c) => c,
                    None if columns.admit(name, value) => {
                        let (column, t) = columns.columns().last().expect("the column just admitted");
                        index.insert(column.clone(), builders.len());
                        builders.push(Builder::new(*t, n));
                        filled.push(0);
                        builders.len() - 1
                    }
                    None => NONE,
                });
                if c == NONE {
                    match columns.unplaced(name) {
                        Some(Unplaced::PastCap(reason)) => {
                            let (values, _) = past_cap.get_or_insert_with(|| (Default::default(), reason));
                            values.insert(name.to_string(), serde_json::Value::String(value.to_text()));
                        }
                        Some(Unplaced::Column(reason)) => discard(name, value.to_text(), reason),
                        None => discard(name, value.to_text(), format!("column {name} is not in table {table}")),
                    }
                    continue;
                }
                if Some(c) == uuid_col {
                    continue;
                }
                if filled[c] > i {
                    discard(name, value.to_text(), format!("column {name} appears twice in one row"));
                    continue;
                }
                let b = &mut builders[c];
                b.nulls(i - filled[c]);
                filled[c] = i + 1;
                if let Err(e) = b.push(value) {
                    discard(name, value.to_text(), format!("{e}; stored as NULL in column {name}"));
                }
            }
            base += part.len();
        }
        if let Some((values, reason)) = past_cap {
            let reason =
                format!("{reason}; the values of {} columns it has no room for are kept here, as JSON", values.len());
            discard("", serde_json::Value::Object(values).to_string(), reason);
        }
    }
    if let Some(c) = uuid_col
        && let Builder::Ts(b) = &mut builders[c]
    {
        for _ in 0..n {
            b.append_value(uuid_ts);
        }
        filled[c] = n;
    }
    let arrays: Vec<ArrayRef> = builders
        .into_iter()
        .zip(filled)
        .map(|(mut b, filled)| {
            b.nulls(n - filled);
            b.finish()
        })
        .collect();
    Ok((RecordBatch::try_new(arrow_schema(columns.columns()), arrays)?, discards))
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::arrow::array::{Array, AsArray};
    use deltalake::arrow::datatypes::{Float64Type, Int64Type, TimestampMicrosecondType};

    fn row(id: &str, cols: Vec<(&str, Scalar)>) -> Row {
        Row::new(id.into(), cols.into_iter().map(|(n, v)| (n.into(), v)).collect())
    }

    /// Columns that take no new name: any other is not in the table.
    struct Given(Vec<(String, ColumnType)>);

    impl Columns for Given {
        fn columns(&self) -> &[(String, ColumnType)] {
            &self.0
        }

        fn admit(&mut self, _: &str, _: &Scalar) -> bool {
            false
        }

        fn unplaced(&self, _: &str) -> Option<Unplaced> {
            None
        }
    }

    #[test]
    fn casts_or_discards_each_value() {
        let columns: Vec<(String, ColumnType)> = [
            ("id", ColumnType::String),
            ("n", ColumnType::BigInt),
            ("x", ColumnType::Double),
            ("s", ColumnType::String),
            ("uuid_ts", ColumnType::Timestamp),
        ]
        .iter()
        .map(|(n, t)| (n.to_string(), *t))
        .collect();
        let rows = [
            row(
                "a",
                vec![
                    ("id", Scalar::Str("a".into())),
                    ("n", Scalar::Int(1)),
                    ("x", Scalar::Int(2)),
                    ("s", Scalar::Bool(true)),
                ],
            ),
            row("b", vec![("n", Scalar::Str("two".into())), ("s", Scalar::Float(1.5)), ("extra", Scalar::Int(9))]),
            row("c", vec![]),
            row("d", vec![("n", Scalar::Int(5)), ("x", Scalar::Str("y".into())), ("n", Scalar::Int(6))]),
        ];
        let (batch, discards) = build("t", &mut Given(columns), rows.iter(), 77).unwrap();
        assert_eq!(batch.num_rows(), 4);
        let n = batch.column(1).as_primitive::<Int64Type>();
        assert_eq!((n.value(0), n.is_null(1), n.is_null(2), n.value(3)), (1, true, true, 5));
        assert!(batch.column(2).is_null(3));
        assert_eq!(batch.column(2).as_primitive::<Float64Type>().value(0), 2.0);
        let s = batch.column(3).as_string::<i32>();
        assert_eq!((s.value(0), s.value(1)), ("true", "1.5"));
        let u = batch.column(4).as_primitive::<TimestampMicrosecondType>();
        assert!((0..4).all(|i| u.value(i) == 77));
        let got: Vec<_> =
            discards.iter().map(|d| (d.row_id.as_str(), d.column_name.as_str(), d.column_value.as_str())).collect();
        assert_eq!(got, vec![("b", "n", "two"), ("b", "extra", "9"), ("d", "x", "y"), ("d", "n", "6")]);
        assert!(discards[0].reason.contains("STRING value cannot be stored in a BIGINT column"));
        assert!(discards[3].reason.contains("appears twice in one row"));
    }

    #[test]
    fn discards_keep_their_rows_received_at() {
        let columns: Vec<(String, ColumnType)> =
            [("id", ColumnType::String), ("received_at", ColumnType::Timestamp), ("n", ColumnType::BigInt)]
                .iter()
                .map(|(n, t)| (n.to_string(), *t))
                .collect();
        let at = |micros: i64| Scalar::from(micros);
        let rows = [
            row("a", vec![("id", Scalar::Str("a".into())), ("received_at", at(5)), ("n", Scalar::Str("x".into()))]),
            row("b", vec![("id", Scalar::Str("b".into())), ("n", Scalar::Int(2)), ("received_at", at(6))]),
            row("c", vec![("id", Scalar::Str("c".into())), ("n", Scalar::Float(0.5))]),
        ];
        let (batch, discards) = build("t", &mut Given(columns), rows.iter(), 77).unwrap();
        let got: Vec<_> = discards.iter().map(|d| (d.row_id.as_str(), d.received_at)).collect();
        assert_eq!(got, vec![("a", 5), ("c", 77)]);
        let nulls: Vec<usize> = batch.columns().iter().map(|c| c.null_count()).collect();
        assert_eq!(nulls, [0, 1, 2]);
    }
}
