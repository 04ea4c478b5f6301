//! The columns of one append: the table's own columns of the types this loader writes, then the batch's new
//! columns in order of first appearance up to the column cap; and the new columns as Delta fields, annotated for
//! column mapping when the table uses it.

use std::collections::{HashMap, HashSet};

use deltalake::kernel::{DataType, MetadataValue, PrimitiveType, StructField, StructType};

use super::arrow::{Columns, Unplaced};
use super::protocol::ColumnMapping;
use crate::layout::value::{ColumnType, Scalar};
use crate::layout::{TableKind, UUID_TS};

/// The Delta type of a warehouse type.
pub fn kernel_type(t: ColumnType) -> DataType {
    DataType::Primitive(match t {
        ColumnType::Timestamp => PrimitiveType::Timestamp,
        ColumnType::BigInt => PrimitiveType::Long,
        ColumnType::Double => PrimitiveType::Double,
        ColumnType::Boolean => PrimitiveType::Boolean,
        ColumnType::String => PrimitiveType::String,
    })
}

/// The warehouse type of a table column, when it is one this loader writes.
pub fn column_type(t: &DataType) -> Option<ColumnType> {
    match t {
        DataType::Primitive(PrimitiveType::Timestamp) => Some(ColumnType::Timestamp),
        DataType::Primitive(PrimitiveType::Long) => Some(ColumnType::BigInt),
        DataType::Primitive(PrimitiveType::Double) => Some(ColumnType::Double),
        DataType::Primitive(PrimitiveType::Boolean) => Some(ColumnType::Boolean),
        DataType::Primitive(PrimitiveType::String) => Some(ColumnType::String),
        _ => None,
    }
}

#[derive(Debug, Default)]
pub struct Plan {
    /// The columns rows are built with, in order.
    pub columns: Vec<(String, ColumnType)>,
    /// The columns the table does not have yet.
    pub new_columns: Vec<String>,
    /// Names rows use that cannot be written, with the reason (a column of a type this loader does not write, or
    /// one that differs from a table column only in case).
    pub unwritable: HashMap<String, String>,
    /// Some rows have columns past the column cap.
    pub over_cap: bool,
    /// Columns declared NOT NULL.
    pub required: Vec<String>,
    table: String,
    max_columns: usize,
    /// Every name looked at: the columns, the unwritable names, the names past the cap.
    seen: HashSet<String>,
    /// The table's own columns by their lower-case names.
    lower: HashMap<String, String>,
    /// How many columns the table has (those this loader writes or not), before the new ones.
    known: usize,
}

impl Plan {
    /// The columns of `existing` (or, for a new table, the fixed columns of `kind`), before any row's: the rows'
    /// new columns are added by [`Plan::admit`] as they are first seen.
    pub fn start(table: &str, existing: Option<&StructType>, kind: TableKind, max_columns: usize) -> Plan {
        let mut plan = Plan { table: table.to_string(), max_columns, ..Plan::default() };
        match existing {
            Some(schema) => {
                for f in schema.fields() {
                    if !f.is_nullable() {
                        plan.required.push(f.name().clone());
                    }
                    match column_type(f.data_type()) {
                        Some(t) => plan.columns.push((f.name().clone(), t)),
                        None => {
                            let reason = format!(
                                "column {} of {table} has type {} which this loader does not write",
                                f.name(),
                                f.data_type()
                            );
                            plan.unwritable.insert(f.name().clone(), reason);
                        }
                    }
                }
            }
            None => plan.columns.extend(kind.fixed_columns().into_iter().map(|(n, t)| (n.to_string(), t))),
        }
        // Every row gets the time it was written, whether or not the table had the column.
        if existing.is_some()
            && !plan.columns.iter().any(|(n, _)| n == UUID_TS)
            && !plan.unwritable.contains_key(UUID_TS)
        {
            plan.new_columns.push(UUID_TS.to_string());
            plan.columns.push((UUID_TS.to_string(), ColumnType::Timestamp));
        }
        plan.known = plan.columns.len() + plan.unwritable.len() - plan.new_columns.len();
        plan.seen = plan.columns.iter().map(|(n, _)| n.clone()).chain(plan.unwritable.keys().cloned()).collect();
        plan.lower = plan.seen.iter().map(|n| (n.to_ascii_lowercase(), n.clone())).collect();
        plan
    }

    /// A name seen for the first time, with its first value: it becomes the last column, of that value's type,
    /// unless it is a column already, cannot be written or has no room under the column cap. Whether it became one.
    pub fn admit(&mut self, name: &str, value: &Scalar) -> bool {
        if !self.seen.insert(name.to_string()) {
            return false;
        }
        if let Some(existing) = self.lower.get(&name.to_ascii_lowercase()) {
            let reason = format!("{name} differs from column {existing} of {} only in case", self.table);
            self.unwritable.insert(name.to_string(), reason);
            return false;
        }
        if self.known + self.new_columns.len() >= self.max_columns {
            self.over_cap = true;
            return false;
        }
        self.new_columns.push(name.to_string());
        self.columns.push((name.to_string(), value.natural_type()));
        true
    }

    /// Why a row's column has no place in the batch.
    pub fn unplaced(&self, name: &str) -> Option<Unplaced> {
        if let Some(reason) = self.unwritable.get(name) {
            return Some(Unplaced::Column(reason.clone()));
        }
        self.over_cap.then(|| {
            Unplaced::PastCap(format!(
                "table {} has reached its limit of {} columns (SEGMENT_DELTA_MAX_COLUMNS)",
                self.table, self.max_columns
            ))
        })
    }

    /// The new columns as Delta fields (nullable, as every added column must be). Under column mapping each gets
    /// the next column id after `max_column_id` and a fresh physical name, as Databricks gives them.
    pub fn new_fields(&self, mapping: ColumnMapping, max_column_id: i64) -> Vec<StructField> {
        let types: HashMap<&str, ColumnType> = self.columns.iter().map(|(n, t)| (n.as_str(), *t)).collect();
        let fields = self.new_columns.iter().map(|n| StructField::new(n.clone(), kernel_type(types[n.as_str()]), true));
        annotated(fields, mapping, max_column_id)
    }
}

/// A plan's columns take the rows' new names as they come.
impl Columns for Plan {
    fn columns(&self) -> &[(String, ColumnType)] {
        &self.columns
    }

    fn admit(&mut self, name: &str, value: &Scalar) -> bool {
        Plan::admit(self, name, value)
    }

    fn unplaced(&self, name: &str) -> Option<Unplaced> {
        Plan::unplaced(self, name)
    }
}

/// A plan's columns as they are, taking no new name.
pub struct Planned<'p>(pub &'p Plan);

impl Columns for Planned<'_> {
    fn columns(&self) -> &[(String, ColumnType)] {
        &self.0.columns
    }

    fn admit(&mut self, _: &str, _: &Scalar) -> bool {
        false
    }

    fn unplaced(&self, name: &str) -> Option<Unplaced> {
        self.0.unplaced(name)
    }
}

/// New columns as a table with this column mapping needs them: under column mapping each gets the next column id
/// after `max_column_id` and a fresh physical name, as Databricks gives them.
pub fn annotated(
    fields: impl IntoIterator<Item = StructField>,
    mapping: ColumnMapping,
    max_column_id: i64,
) -> Vec<StructField> {
    fields
        .into_iter()
        .enumerate()
        .map(|(i, field)| match mapping {
            ColumnMapping::None => field,
            ColumnMapping::Name | ColumnMapping::Id => field.with_metadata([
                ("delta.columnMapping.id", MetadataValue::Number(max_column_id + 1 + i as i64)),
                ("delta.columnMapping.physicalName", MetadataValue::String(format!("col-{}", uuid::Uuid::new_v4()))),
            ]),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::name::Name;
    use crate::layout::rows::Row;

    fn row(cols: &[(&str, Scalar)]) -> Row {
        Row::new("r".into(), cols.iter().map(|(n, v)| ((*n).into(), v.clone())).collect())
    }

    /// The plan of an append of `rows` to an event table, as building its batch makes it, and the batch, which has
    /// its columns.
    fn planned(
        table: &str,
        existing: Option<&StructType>,
        rows: &[Row],
        max_columns: usize,
    ) -> (Plan, deltalake::arrow::record_batch::RecordBatch) {
        let mut plan = Plan::start(table, existing, TableKind::Event, max_columns);
        let (batch, _) = crate::delta::arrow::build(table, &mut plan, rows.iter(), 0).unwrap();
        let names: Vec<&str> = batch.schema_ref().fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, plan.columns.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>());
        (plan, batch)
    }

    #[test]
    fn new_columns_in_order_of_first_appearance_whichever_place_they_have() {
        // Rows share their names' allocations, as mapped rows do.
        let [id, a, b, c, d]: [Name; 5] = ["id", "a", "b", "c", "d"].map(Into::into);
        let row = |cols: &[(&Name, Scalar)]| {
            Row::new("r".into(), cols.iter().map(|(n, v)| ((*n).clone(), v.clone())).collect())
        };
        let rows = [
            row(&[(&id, Scalar::Str("1".into())), (&a, Scalar::Int(1)), (&b, Scalar::Bool(true))]),
            row(&[(&id, Scalar::Str("2".into())), (&a, Scalar::Int(2)), (&c, Scalar::Float(0.5))]),
            row(&[(&c, Scalar::Float(1.5)), (&id, Scalar::Str("3".into())), (&d, Scalar::Int(3))]),
            row(&[(&c, Scalar::Float(2.5)), (&id, Scalar::Str("4".into())), (&b, Scalar::Bool(false))]),
        ];
        let (plan, batch) = planned("t", None, &rows, 1000);
        let fixed = TableKind::Event.fixed_columns().len();
        assert_eq!(
            plan.columns[fixed..].iter().map(|(n, t)| (n.as_str(), *t)).collect::<Vec<_>>(),
            [
                ("a", ColumnType::BigInt),
                ("b", ColumnType::Boolean),
                ("c", ColumnType::Double),
                ("d", ColumnType::BigInt)
            ]
        );
        assert_eq!(plan.new_columns, ["a", "b", "c", "d"]);
        // A column planned at a later row holds nulls for the rows before it.
        let values = |name: &str| {
            let column = batch.column_by_name(name).unwrap();
            deltalake::arrow::util::display::ArrayFormatter::try_new(column.as_ref(), &Default::default())
                .map(|f| (0..batch.num_rows()).map(|i| f.value(i).to_string()).collect::<Vec<_>>())
                .unwrap()
        };
        assert_eq!(values("b"), ["true", "", "", "false"]);
        assert_eq!(values("c"), ["", "0.5", "1.5", "2.5"]);
        assert_eq!(values("d"), ["", "", "3", ""]);
    }

    #[test]
    fn existing_columns_then_new_ones_up_to_the_cap() {
        let schema = StructType::try_new([
            StructField::new("id", kernel_type(ColumnType::String), false),
            StructField::new(
                "amount",
                DataType::Primitive(PrimitiveType::Decimal(deltalake::kernel::DecimalType::try_new(10, 2).unwrap())),
                true,
            ),
            StructField::new("UserName", kernel_type(ColumnType::String), true),
        ])
        .unwrap();
        let r = row(&[
            ("id", Scalar::Str("a".into())),
            ("plan", Scalar::Int(1)),
            ("username", Scalar::Str("x".into())),
            ("seats", Scalar::Int(2)),
        ]);
        let (plan, _) = planned("t", Some(&schema), &[r], 5);
        assert_eq!(
            plan.columns.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["id", "UserName", "uuid_ts", "plan"]
        );
        assert_eq!(plan.new_columns, ["uuid_ts", "plan"]);
        assert_eq!(plan.required, ["id"]);
        assert!(plan.unwritable["amount"].contains("does not write"));
        assert!(plan.unwritable["username"].contains("only in case"));
        assert!(plan.over_cap, "seats is past the cap of 5 columns");
        let fields = plan.new_fields(ColumnMapping::Name, 7);
        let id = serde_json::to_value(fields[1].metadata().get("delta.columnMapping.id").unwrap()).unwrap();
        assert_eq!(id, 9);
        assert!(plan.new_fields(ColumnMapping::None, 7)[0].metadata().is_empty());
    }
}
