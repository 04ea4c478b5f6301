//! Where the last maintenance run stopped: `<lake>/_segment_delta/maintenance-cursor` holds the `schema.table` the
//! next run starts from, so that a lake with more tables than one run's time budget covers is maintained in turns.

use deltalake::{DeltaTableError, Path};
use object_store::ObjectStoreExt;

use crate::config::Config;
use crate::config::Lake;
use crate::layout::paths::{self, STATE_DIR};

const NAME: &str = "maintenance-cursor";

/// The table the next run starts from, if the last run stopped before the end.
pub async fn load(config: &Config) -> Result<Option<String>, DeltaTableError> {
    let text = match &config.lake {
        Lake::Local(root) => match std::fs::read_to_string(root.join(STATE_DIR).join(NAME)) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(DeltaTableError::Generic(format!("reading the maintenance cursor: {e}"))),
        },
        Lake::Remote(root) => {
            let store = paths::root_store(root, &config.storage.options)?;
            match store.get(&Path::from(format!("{STATE_DIR}/{NAME}"))).await {
                Ok(r) => String::from_utf8_lossy(&r.bytes().await?).into_owned(),
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
    };
    Ok(Some(text.trim().to_string()).filter(|t| !t.is_empty()))
}

/// Records where the next run starts (`None`: from the beginning).
pub async fn save(config: &Config, next: Option<&str>) -> Result<(), DeltaTableError> {
    let text = next.unwrap_or_default().to_string();
    match &config.lake {
        Lake::Local(root) => {
            let dir = root.join(STATE_DIR);
            std::fs::create_dir_all(&dir)
                .and_then(|()| std::fs::write(dir.join(NAME), text))
                .map_err(|e| DeltaTableError::Generic(format!("writing the maintenance cursor: {e}")))
        }
        Lake::Remote(root) => {
            let store = paths::root_store(root, &config.storage.options)?;
            store.put(&Path::from(format!("{STATE_DIR}/{NAME}")), text.into()).await?;
            Ok(())
        }
    }
}

/// The tables in the order this run takes them: from the cursor (the first table at or after it) to the end,
/// then from the beginning.
pub fn rotate(mut tables: Vec<(String, String)>, cursor: Option<&str>) -> Vec<(String, String)> {
    tables.sort();
    if let Some(c) = cursor
        && let Some((s, t)) = c.split_once('.')
    {
        let at = tables.partition_point(|(ts, tt)| (ts.as_str(), tt.as_str()) < (s, t));
        tables.rotate_left(at);
    }
    tables
}

#[cfg(test)]
mod tests {
    use super::rotate;

    #[test]
    fn a_run_starts_at_the_cursor_and_wraps_around() {
        let t = |s: &str, n: &str| (s.to_string(), n.to_string());
        let tables = vec![t("web", "b"), t("ios", "z"), t("web", "a"), t("web", "c")];
        let names = |v: Vec<(String, String)>| v.into_iter().map(|(s, n)| format!("{s}.{n}")).collect::<Vec<_>>();
        assert_eq!(names(rotate(tables.clone(), None)), ["ios.z", "web.a", "web.b", "web.c"]);
        assert_eq!(names(rotate(tables.clone(), Some("web.b"))), ["web.b", "web.c", "ios.z", "web.a"]);
        // The table the cursor names is gone: the next one after it.
        assert_eq!(names(rotate(tables.clone(), Some("web.bb"))), ["web.c", "ios.z", "web.a", "web.b"]);
        assert_eq!(names(rotate(tables, Some("zzz.a"))), ["ios.z", "web.a", "web.b", "web.c"]);
    }
}
