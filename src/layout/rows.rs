//! A table row as the pipeline carries it: column name and value pairs, and the discards of what could not be
//! stored as sent.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use super::TableKind;
use super::name::Name;
use super::value::{Micros, Scalar, Text};

/// Where a row came from in an ordered stream (an Event Hub partition): written with the commit as a Delta
/// `txn` action so that a redelivered event is recognised and skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offset {
    pub app_id: Arc<str>,
    pub seq: i64,
}

/// Columns that two rows of one event share: a track event's `tracks` row and its own table's row have the same
/// fixed columns and context, held once.
pub type Shared = Arc<[(Name, Scalar)]>;

/// One row of a table: column name and non-null value pairs. `uuid_ts` is added when the row is written.
#[derive(Debug, Clone)]
pub struct Row {
    pub id: Text,
    /// The columns this row shares with another row of its event; they come first.
    pub shared: Option<Shared>,
    /// The row's own columns.
    pub cols: Vec<(Name, Scalar)>,
    pub offset: Option<Offset>,
}

impl Row {
    /// A row of its own columns only.
    pub fn new(id: Text, cols: Vec<(Name, Scalar)>) -> Row {
        Row { id, shared: None, cols, offset: None }
    }

    /// Every column of the row and its value, the shared ones first.
    pub fn columns(&self) -> impl Iterator<Item = &(Name, Scalar)> {
        self.shared.as_deref().unwrap_or_default().iter().chain(&self.cols)
    }

    /// The row's columns as its two runs, the shared ones first: a hot loop walks them one after the other, which
    /// costs less per column than the chained [`Row::columns`].
    pub fn parts(&self) -> [&[(Name, Scalar)]; 2] {
        [self.shared.as_deref().unwrap_or_default(), &self.cols]
    }

    /// Asks the processor to bring the row's columns into cache, for a loop over many rows to call on the next row
    /// while it works on this one: the rows of a micro-batch were built by many requests and lie apart in memory,
    /// so each row's first use of each of its cache lines would otherwise wait for memory.
    #[inline]
    pub fn prefetch(&self) {
        #[cfg(target_arch = "x86_64")]
        for part in self.parts() {
            let start = part.as_ptr().cast::<i8>();
            for at in (0..std::mem::size_of_val(part)).step_by(64) {
                // SAFETY: a prefetch is a hint that reads nothing and cannot fault, whatever the address; SSE, which
                // it needs, is part of every x86_64 processor.
                unsafe {
                    std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(start.wrapping_add(at))
                };
            }
        }
    }
}

/// Rows in order, each one's columns asked for (see [`Row::prefetch`]) as the one before it is handed out, so that
/// they arrive while that one is worked on.
pub fn prefetched<T: Borrow<Row>>(rows: impl IntoIterator<Item = T>) -> impl Iterator<Item = T> {
    let mut rows = rows.into_iter().peekable();
    std::iter::from_fn(move || {
        let row = rows.next()?;
        if let Some(next) = rows.peek() {
            next.borrow().prefetch();
        }
        Some(row)
    })
}

/// Frees rows in order, fetching each while the one before it is freed: freeing a row reads each of its values, and
/// the rows of a written batch have long left the cache.
pub fn free(rows: Vec<Row>) {
    prefetched(rows).for_each(drop);
}

/// Rows are equal when their ids, columns in order and offsets are, whichever of their columns are shared.
impl PartialEq for Row {
    fn eq(&self, other: &Row) -> bool {
        self.id == other.id && self.offset == other.offset && self.columns().eq(other.columns())
    }
}

/// A value, or a whole event, that could not be stored as sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Discard {
    pub row_id: String,
    pub table_name: String,
    pub column_name: String,
    pub column_value: String,
    pub reason: String,
    pub received_at: Micros,
    /// The stream offset of the event it came from, if any.
    pub offset: Option<Offset>,
}

impl Discard {
    /// A whole row set aside: its values as one JSON object of text, under `column` (or none), with the reason.
    pub fn whole_row(row: &Row, table: &str, column: &str, reason: String) -> Discard {
        let whole: serde_json::Map<String, serde_json::Value> =
            row.columns().map(|(n, v)| (n.to_string(), serde_json::Value::String(v.to_text()))).collect();
        let received_at = row
            .columns()
            .find(|(n, _)| n.as_ref() == "received_at")
            .and_then(|(_, v)| v.as_timestamp().ok())
            .unwrap_or_default();
        Discard {
            row_id: row.id.to_string(),
            table_name: table.to_string(),
            column_name: column.to_string(),
            column_value: serde_json::Value::Object(whole).to_string(),
            reason,
            received_at,
            offset: row.offset.clone(),
        }
    }

    pub fn into_row(self) -> Row {
        let text = |s: String| Scalar::Str(s.into());
        Row {
            id: self.row_id.clone().into(),
            shared: None,
            cols: vec![
                ("row_id".into(), text(self.row_id)),
                ("table_name".into(), text(self.table_name)),
                ("column_name".into(), text(self.column_name)),
                ("column_value".into(), text(self.column_value)),
                ("reason".into(), text(self.reason)),
                ("received_at".into(), Scalar::from(self.received_at)),
            ],
            offset: self.offset,
        }
    }
}

/// Rows bound for one table.
#[derive(Debug, Clone, PartialEq)]
pub struct TableRow {
    pub table: String,
    pub kind: TableKind,
    pub row: Row,
}

/// Everything one event produced.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Mapped {
    pub rows: Vec<TableRow>,
    pub discards: Vec<Discard>,
    /// A `delete` event: the user whose rows are to be removed from every table of the schema.
    pub forget: Option<String>,
}

impl Mapped {
    /// About how many bytes the rows and discards of this event hold in memory: what a request costs the buffer,
    /// which its body size alone can understate (a batch context merged into every event, many small values).
    pub fn size_estimate(&self) -> usize {
        const PER_VALUE: usize = std::mem::size_of::<(Name, Scalar)>();
        const PER_ROW: usize = 96;
        let value = |v: &Scalar| PER_VALUE + v.heap_bytes();
        let values = |cols: &[(Name, Scalar)]| cols.iter().map(|(n, v)| n.len() + value(v)).sum::<usize>();
        // Columns shared by rows are counted once.
        let mut counted: Option<&Shared> = None;
        let mut rows = 0;
        for r in &self.rows {
            rows += PER_ROW + values(&r.row.cols);
            if let Some(shared) = &r.row.shared
                && !counted.is_some_and(|c| Arc::ptr_eq(c, shared))
            {
                rows += values(shared);
                counted = Some(shared);
            }
        }
        let discards: usize = self
            .discards
            .iter()
            .map(|d| {
                PER_ROW
                    + d.row_id.len()
                    + d.table_name.len()
                    + d.column_name.len()
                    + d.column_value.len()
                    + d.reason.len()
            })
            .sum();
        rows + discards
    }

    /// Marks every row and discard with the stream offset of the event they came from.
    pub fn with_offset(mut self, offset: Option<Offset>) -> Mapped {
        if offset.is_some() {
            for r in &mut self.rows {
                r.row.offset.clone_from(&offset);
            }
            for d in &mut self.discards {
                d.offset.clone_from(&offset);
            }
        }
        self
    }
}

/// A hasher for keys that are addresses of live allocations: they cannot be chosen by a sender, so a multiply
/// and fold is enough.
#[derive(Default, Clone, Copy)]
pub struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        let x = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = x ^ (x >> 32);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A map keyed by the address of a shared name.
pub type ByAddr<V> = HashMap<usize, V, BuildHasherDefault<AddrHasher>>;

/// The address of a name, as a [`ByAddr`] key.
pub fn addr(name: &Name) -> usize {
    name.addr()
}

/// What the column names of a run of rows stand for, found cheaply: rows of events of one kind list their columns
/// in the same order, so the name at the same place of the row before is tried first, then the name's address.
/// Only names of rows borrowed for as long as it is used may be looked up, so that an address is one name
/// throughout.
pub struct ByPlace<V> {
    /// The address at each place of the row before, and what it stands for.
    places: Vec<(usize, V)>,
    by_addr: ByAddr<V>,
}

impl<V> Default for ByPlace<V> {
    fn default() -> Self {
        ByPlace { places: Vec::new(), by_addr: ByAddr::default() }
    }
}

impl<V: Copy> ByPlace<V> {
    /// What the name at `place` of a row (whose places are looked up in order) stands for, from `first` when its
    /// allocation is seen for the first time.
    #[inline]
    pub fn get(&mut self, place: usize, name: &Name, first: impl FnOnce() -> V) -> V {
        let a = addr(name);
        if let Some(&(known, v)) = self.places.get(place)
            && known == a
        {
            return v;
        }
        let v = *self.by_addr.entry(a).or_insert_with(first);
        match self.places.get_mut(place) {
            Some(slot) => *slot = (a, v),
            None => self.places.push((a, v)),
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefetched_hands_out_every_row_once_in_order() {
        for n in 0..5 {
            let rows: Vec<Row> = (0..n)
                .map(|i| Row::new(format!("r{i}").into(), vec![("s".into(), Scalar::Str("x".repeat(40).into()))]))
                .collect();
            let ids: Vec<&str> = prefetched(&rows).map(|r| r.id.as_str()).collect();
            let expected: Vec<String> = (0..n).map(|i| format!("r{i}")).collect();
            assert_eq!(ids, expected, "{n} rows");
        }
    }

    #[test]
    fn free_releases_every_row_and_what_rows_share() {
        let shared: Shared = vec![("id".into(), Scalar::Str("e1".into()))].into();
        let rows: Vec<Row> = (0..1000)
            .map(|i| Row {
                id: format!("r{i}").into(),
                shared: (i % 2 == 0).then(|| shared.clone()),
                cols: vec![("n".into(), Scalar::Int(i)), ("s".into(), Scalar::Str(format!("value {i}").into()))],
                offset: None,
            })
            .collect();
        assert_eq!(Arc::strong_count(&shared), 501);
        free(rows);
        assert_eq!(Arc::strong_count(&shared), 1, "no row holds the shared columns");
    }
}
