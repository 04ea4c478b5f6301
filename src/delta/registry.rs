//! The tables each schema has, as far as this process knows: listed once per schema, then kept up to date with the
//! tables it creates. It holds each schema to its limit of event tables.

use std::collections::{HashMap, HashSet};

use crate::config::Lake;
use crate::layout::{RESERVED_TABLES, TableKind, paths};

/// Whether a table may be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The table exists (or this process already let it be created).
    Known,
    /// The table is new, and within the schema's limit.
    New,
    /// The table would be one event table too many: the schema already has this many.
    Full(usize),
}

struct Listed {
    names: HashSet<String>,
    /// How many of them are event tables.
    events: usize,
}

pub struct Registry {
    schemas: tokio::sync::Mutex<HashMap<String, Listed>>,
    max_tables: usize,
}

impl Registry {
    pub fn new(max_tables: usize) -> Registry {
        Registry { schemas: Default::default(), max_tables }
    }

    /// Whether `schema.table` exists, may be created, or is past the limit. With `reserve`, a new table within
    /// the limit counts from now on (whether or not its first write succeeds).
    pub async fn admit(
        &self,
        lake: &Lake,
        storage_options: &HashMap<String, String>,
        schema: &str,
        table: &str,
        kind: TableKind,
        reserve: bool,
    ) -> Admission {
        let mut schemas = self.schemas.lock().await;
        if !schemas.contains_key(schema) {
            match paths::table_names(lake, storage_options, schema).await {
                Ok(names) => {
                    let events = names.iter().filter(|n| !RESERVED_TABLES.contains(&n.as_str())).count();
                    schemas.insert(schema.to_string(), Listed { names: names.into_iter().collect(), events });
                }
                Err(e) => {
                    // Listed again next time; the write itself will say whether storage is reachable.
                    tracing::warn!(schema, error = %e, "cannot list the tables of the schema");
                    return Admission::New;
                }
            }
        }
        let Some(listed) = schemas.get_mut(schema) else { return Admission::New };
        if listed.names.contains(table) {
            return Admission::Known;
        }
        let event = kind == TableKind::Event;
        if event && listed.events >= self.max_tables {
            return Admission::Full(listed.events);
        }
        if reserve {
            listed.events += usize::from(event);
            listed.names.insert(table.to_string());
        }
        Admission::New
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn event_tables_past_the_limit_are_refused_and_existing_ones_count() {
        let dir = tempfile::tempdir().unwrap();
        for t in ["tracks", "identifies", "signed_up"] {
            std::fs::create_dir_all(dir.path().join("web").join(t).join("_delta_log")).unwrap();
        }
        let lake = Lake::Local(dir.path().to_path_buf());
        let r = Registry::new(2);
        let none = HashMap::new();
        let admit = |table: &'static str, kind| r.admit(&lake, &none, "web", table, kind, true);
        assert_eq!(admit("signed_up", TableKind::Event).await, Admission::Known);
        assert_eq!(admit("tracks", TableKind::Tracks).await, Admission::Known);
        // Asked without reserving, a new table stays new and does not count.
        let peek = r.admit(&lake, &none, "web", "order_completed", TableKind::Event, false).await;
        assert_eq!(peek, Admission::New);
        assert_eq!(admit("order_completed", TableKind::Event).await, Admission::New);
        assert_eq!(admit("order_completed", TableKind::Event).await, Admission::Known);
        assert_eq!(admit("cart_viewed", TableKind::Event).await, Admission::Full(2));
        // The fixed tables never count against the limit.
        assert_eq!(admit("pages", TableKind::Pages).await, Admission::New);
        // Another schema has its own count.
        assert_eq!(r.admit(&lake, &none, "ios", "cart_viewed", TableKind::Event, true).await, Admission::New);
    }
}
