//! What an operator asks of a running loader: is it alive, is it ready (the lake writable, the catalog reachable),
//! what does it count (`metrics`), and what did it set aside (`discards`).

pub mod discards;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use deltalake::Path;
use object_store::ObjectStoreExt;
use serde_json::{Value, json};

use crate::catalog::Catalog;
use crate::config::{Config, Lake};
use crate::layout::paths::{self, STATE_DIR};

/// Writes a small object at `<lake>/_segment_delta/` and deletes it again: the lake is reachable, the credential in
/// effect obtains a token, and it may write. Returns what it did.
pub async fn probe_lake(config: &Config) -> Result<String, String> {
    let name = format!("probe-{}", uuid::Uuid::new_v4());
    let started = Instant::now();
    match &config.lake {
        Lake::Local(root) => {
            let dir = root.join(STATE_DIR);
            let file = dir.join(&name);
            std::fs::create_dir_all(&dir)
                .and_then(|()| std::fs::write(&file, b"probe"))
                .and_then(|()| std::fs::remove_file(&file))
                .map_err(|e| format!("cannot write in {}: {e}", dir.display()))?;
        }
        Lake::Remote(root) => {
            let store = paths::root_store(root, &config.storage.options).map_err(|e| e.to_string())?;
            let path = Path::from(format!("{STATE_DIR}/{name}"));
            store.put(&path, b"probe".to_vec().into()).await.map_err(|e| format!("cannot write to {root}: {e}"))?;
            store.delete(&path).await.map_err(|e| format!("cannot delete from {root}: {e}"))?;
        }
    }
    Ok(format!(
        "wrote and deleted a probe object with the {} credential in {} ms",
        config.storage.credential,
        started.elapsed().as_millis()
    ))
}

/// How long a readiness answer is reused: a probe writes to the lake, and `/ready` may be asked often.
const READY_TTL: Duration = Duration::from_secs(5);

static LAST_READY: Mutex<Option<(Instant, bool, Value)>> = Mutex::new(None);

/// Readiness of each component, and whether all are ready.
pub async fn readiness(config: &Config, catalog: Option<&dyn Catalog>) -> (bool, Value) {
    if let Some((at, ok, v)) = LAST_READY.lock().unwrap_or_else(|p| p.into_inner()).as_ref()
        && at.elapsed() < READY_TTL
    {
        return (*ok, v.clone());
    }
    let lake = probe_lake(config).await;
    let mut components = serde_json::Map::new();
    components.insert("lake".into(), component(&lake));
    let mut ok = lake.is_ok();
    if let Some(catalog) = catalog {
        let uc = tokio::time::timeout(Duration::from_secs(10), catalog.ready())
            .await
            .unwrap_or_else(|_| Err(crate::catalog::CatalogError::new(true, "no answer within 10 s")))
            .map_err(|e| e.to_string());
        ok &= uc.is_ok();
        components.insert("unity_catalog".into(), component(&uc));
    }
    let value = json!({"ready": ok, "components": components});
    *LAST_READY.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), ok, value.clone()));
    (ok, value)
}

fn component(r: &Result<String, String>) -> Value {
    match r {
        Ok(detail) => json!({"ok": true, "detail": detail}),
        Err(error) => json!({"ok": false, "error": error}),
    }
}
