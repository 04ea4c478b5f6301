//! The table layout, in one place: which tables a schema has, their fixed columns, the `discards` table, the
//! column every row gets when it is written (`uuid_ts`), the `users` and `accounts` upserts, and where a table lives
//! (`<lake>/<schema>/<table>`).

pub mod name;
pub mod paths;
pub mod rows;
pub mod value;

use value::ColumnType;

/// The table that keeps every value or event that could not be stored as sent.
pub const DISCARDS: &str = "discards";

/// The column stamped with the time a row was written; it is never taken from an event.
pub const UUID_TS: &str = "uuid_ts";

/// Unity Catalog's limit on a column or table name.
pub const MAX_NAME_LEN: usize = 255;

/// Table names the loader owns; an event named like one of them gets a leading underscore.
pub const RESERVED_TABLES: &[&str] =
    &["tracks", "identifies", "users", "pages", "screens", "groups", "aliases", "accounts", DISCARDS];

/// Which fixed columns a table has beyond the dynamic ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TableKind {
    Tracks,
    /// One table per track event name.
    Event,
    Identifies,
    Pages,
    Screens,
    Groups,
    Aliases,
    Discards,
}

const COMMON: &[(&str, ColumnType)] = &[
    ("id", ColumnType::String),
    ("anonymous_id", ColumnType::String),
    ("user_id", ColumnType::String),
    ("received_at", ColumnType::Timestamp),
    ("sent_at", ColumnType::Timestamp),
    ("timestamp", ColumnType::Timestamp),
    ("original_timestamp", ColumnType::Timestamp),
    (UUID_TS, ColumnType::Timestamp),
];

const DISCARDS_COLUMNS: &[(&str, ColumnType)] = &[
    ("row_id", ColumnType::String),
    ("table_name", ColumnType::String),
    ("column_name", ColumnType::String),
    ("column_value", ColumnType::String),
    ("reason", ColumnType::String),
    ("received_at", ColumnType::Timestamp),
    (UUID_TS, ColumnType::Timestamp),
];

impl TableKind {
    /// The columns every table of this kind has, in order, before any dynamic column.
    pub fn fixed_columns(self) -> Vec<(&'static str, ColumnType)> {
        let extra: &[&str] = match self {
            TableKind::Discards => return DISCARDS_COLUMNS.to_vec(),
            TableKind::Tracks | TableKind::Event => &["event", "event_text"],
            TableKind::Pages | TableKind::Screens => &["name", "category"],
            TableKind::Groups => &["group_id"],
            TableKind::Aliases => &["previous_id"],
            TableKind::Identifies => &[],
        };
        let mut cols = COMMON.to_vec();
        cols.extend(extra.iter().map(|c| (*c, ColumnType::String)));
        cols
    }

    /// The names of [`TableKind::fixed_columns`], without building the list.
    pub fn fixed_names(self) -> impl Iterator<Item = &'static str> {
        let (base, extra): (&'static [(&'static str, ColumnType)], &'static [&'static str]) = match self {
            TableKind::Discards => (DISCARDS_COLUMNS, &[]),
            TableKind::Tracks | TableKind::Event => (COMMON, &["event", "event_text"]),
            TableKind::Pages | TableKind::Screens => (COMMON, &["name", "category"]),
            TableKind::Groups => (COMMON, &["group_id"]),
            TableKind::Aliases => (COMMON, &["previous_id"]),
            TableKind::Identifies => (COMMON, &[]),
        };
        base.iter().map(|(n, _)| *n).chain(extra.iter().copied())
    }
}

/// One upsert of `maintain`: rows of `source` keyed by `key` become one row per key in `target`, each trait
/// column holding the key's latest value.
#[derive(Debug, Clone, Copy)]
pub struct Upsert {
    pub source: &'static str,
    pub source_kind: TableKind,
    pub key: &'static str,
    pub target: &'static str,
}

/// `users` from `identifies`, `accounts` from `groups`, as Segment's warehouses have them.
pub const UPSERTS: &[Upsert] = &[
    Upsert { source: "identifies", source_kind: TableKind::Identifies, key: "user_id", target: "users" },
    Upsert { source: "groups", source_kind: TableKind::Groups, key: "group_id", target: "accounts" },
];

impl Upsert {
    /// Whether a source column is a trait: neither a fixed column of the source nor context.
    pub fn is_trait(&self, column: &str) -> bool {
        !self.source_kind.fixed_names().any(|n| n == column) && !column.starts_with("context_")
    }
}
