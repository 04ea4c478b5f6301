//! The application, wired from its settings in one place: the lake writer (with Unity Catalog when configured)
//! and the batcher in front of it. `main`, the in-process tests and the benchmarks all build it here.

use std::sync::Arc;

use crate::batch::Batcher;
use crate::catalog::{Catalog, CatalogError};
use crate::config::Config;
use crate::databricks::Databricks;
use crate::delta::Lakehouse;

/// What every request handler needs.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub batcher: Batcher,
    /// Unity Catalog, when the settings keep it in step.
    pub catalog: Option<Arc<dyn Catalog>>,
    /// Kibibytes of request bodies that may be being read at once.
    pub reading: Arc<tokio::sync::Semaphore>,
    /// Set once the server is stopping: bodies still arriving are not waited for.
    pub stopping: Arc<tokio::sync::watch::Sender<bool>>,
}

impl AppState {
    /// Builds the writer and the batcher from the settings; must run inside a Tokio runtime.
    pub fn build(config: Config) -> Result<AppState, CatalogError> {
        let catalog = catalog(&config)?;
        let lake = Arc::new(lakehouse(&config, catalog.clone()));
        let batcher = Batcher::start(lake, config.flush, config.dedup_capacity);
        let reading = Arc::new(tokio::sync::Semaphore::new(config.connections.max_reading_bytes.div_ceil(1024)));
        let stopping = Arc::new(tokio::sync::watch::Sender::new(false));
        Ok(AppState { config: Arc::new(config), batcher, catalog, reading, stopping })
    }
}

impl AppState {
    /// Starts stopping: requests still sending their bodies get 503, and what was accepted is written at once.
    pub fn stop(&self) {
        self.stopping.send_replace(true);
        self.batcher.drain();
    }
}

/// The Delta writer for these settings, keeping `catalog` in step when there is one.
pub fn lakehouse(config: &Config, catalog: Option<Arc<dyn Catalog>>) -> Lakehouse {
    let lake = Lakehouse::new(config.lake.clone(), config.storage.options.clone(), config.max_columns)
        .with_retry_budget(config.write_retry)
        .with_table_limits(config.tables);
    match catalog {
        Some(catalog) => lake.with_catalog(catalog),
        None => lake,
    }
}

/// The catalog the settings name, if any.
pub fn catalog(config: &Config) -> Result<Option<Arc<dyn Catalog>>, CatalogError> {
    let Some(db) = &config.databricks else { return Ok(None) };
    let databricks = Databricks::new(db)?;
    tracing::info!(host = %db.host, catalog = %db.catalog, auth = db.auth.kind(), "Unity Catalog kept in step through Databricks SQL");
    Ok(Some(Arc::new(databricks)))
}
