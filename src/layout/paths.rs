//! Where tables live: `<lake>/<schema>/<table>`, and which tables a lake holds.

use std::collections::HashMap;

use deltalake::{DeltaTableBuilder, DeltaTableError, Path};

use crate::config::Lake;

/// The URI of a table, as delta-rs opens it.
pub fn table_uri(lake: &Lake, schema: &str, table: &str) -> String {
    match lake {
        Lake::Local(root) => root.join(schema).join(table).to_string_lossy().into_owned(),
        Lake::Remote(root) => format!("{root}/{schema}/{table}"),
    }
}

/// The tables of the lake: every `<schema>/<table>` holding a `_delta_log`, optionally only those named
/// `schema.table` (or all of one schema with `schema.*`).
pub async fn discover(
    lake: &Lake,
    storage_options: &HashMap<String, String>,
    only: &[String],
) -> Result<Vec<(String, String)>, DeltaTableError> {
    let mut found = Vec::new();
    match lake {
        Lake::Local(root) => {
            let mut schemas: Vec<_> = std::fs::read_dir(root).into_iter().flatten().flatten().collect();
            schemas.sort_by_key(|e| e.file_name());
            for s in schemas {
                let mut tables: Vec<_> = std::fs::read_dir(s.path()).into_iter().flatten().flatten().collect();
                tables.sort_by_key(|e| e.file_name());
                for t in tables.into_iter().filter(|t| t.path().join("_delta_log").is_dir()) {
                    found.push((
                        s.file_name().to_string_lossy().into_owned(),
                        t.file_name().to_string_lossy().into_owned(),
                    ));
                }
            }
        }
        Lake::Remote(root) => {
            let url = url::Url::parse(root).map_err(|e| DeltaTableError::InvalidTableLocation(e.to_string()))?;
            let store = DeltaTableBuilder::from_url(url)?
                .with_storage_options(storage_options.clone())
                .build_storage()?
                .object_store(None);
            for schema in store.list_with_delimiter(None).await?.common_prefixes {
                for table in store.list_with_delimiter(Some(&schema)).await?.common_prefixes {
                    let log = table.clone().join("_delta_log");
                    if !store.list_with_delimiter(Some(&log)).await?.objects.is_empty() {
                        let name = |p: &Path| p.filename().unwrap_or_default().to_string();
                        found.push((name(&schema), name(&table)));
                    }
                }
            }
        }
    }
    found.retain(|(s, t)| {
        only.is_empty() || only.iter().any(|o| *o == format!("{s}.{t}") || *o == format!("{s}.*") || *o == *t)
    });
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_uris() {
        let remote = Lake::parse("abfss://lake@acct.dfs.core.windows.net/bronze/").unwrap();
        assert_eq!(table_uri(&remote, "web", "tracks"), "abfss://lake@acct.dfs.core.windows.net/bronze/web/tracks");
        let local = Lake::parse("/tmp/l").unwrap();
        assert_eq!(table_uri(&local, "web", "tracks"), "/tmp/l/web/tracks");
    }
}
