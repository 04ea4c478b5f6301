//! Where tables live: `<lake>/<schema>/<table>`, and which tables a lake holds.

use std::collections::HashMap;

use deltalake::{DeltaTableBuilder, DeltaTableError, Path};

use crate::config::Lake;

/// Where the loader keeps its own state in the lake (the maintenance cursor): a directory no table is in.
pub const STATE_DIR: &str = "_segment_delta";

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
            let store = root_store(root, storage_options)?;
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

/// The names of the directories under `<lake>/<schema>`: the tables a schema has, as one listing finds them
/// (without opening each). A schema with no directory yet has none.
pub async fn table_names(
    lake: &Lake,
    storage_options: &HashMap<String, String>,
    schema: &str,
) -> Result<Vec<String>, DeltaTableError> {
    match lake {
        Lake::Local(root) => match std::fs::read_dir(root.join(schema)) {
            Ok(entries) => Ok(entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(DeltaTableError::Generic(format!("listing {}: {e}", root.join(schema).display()))),
        },
        Lake::Remote(root) => {
            let store = root_store(root, storage_options)?;
            let listed = store.list_with_delimiter(Some(&Path::from(schema))).await?;
            Ok(listed.common_prefixes.iter().filter_map(|p| p.filename().map(str::to_string)).collect())
        }
    }
}

/// The object store at the lake's root (a remote lake), with exactly the settings' credential.
pub fn root_store(
    root: &str,
    storage_options: &HashMap<String, String>,
) -> Result<deltalake::logstore::ObjectStoreRef, DeltaTableError> {
    let url = url::Url::parse(root).map_err(|e| DeltaTableError::InvalidTableLocation(e.to_string()))?;
    let builder = DeltaTableBuilder::from_url(url.clone())?.with_storage_options(storage_options.clone());
    let builder = match crate::config::storage::azure_backend(&url, storage_options)? {
        Some(store) => builder.with_storage_backend(store, url),
        None => builder,
    };
    Ok(builder.build_storage()?.object_store(None))
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
