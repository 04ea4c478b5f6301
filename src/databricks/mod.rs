//! Unity Catalog through Databricks SQL: the loader registers the tables it creates and adds the columns it
//! needs by running DDL on a small SQL warehouse. An append that adds nothing makes no call at all.

pub mod auth;
pub mod client;
pub mod setup;
pub mod sql;
pub mod statements;
pub mod warehouse;

use std::collections::HashSet;
use std::time::Duration;

use reqwest::Method;
use tokio::sync::{Mutex, OnceCell};

use crate::config::databricks::DatabricksConfig;
use futures::future::BoxFuture;

use crate::catalog::{Catalog, CatalogError, CatalogResult};
use crate::layout::value::ColumnType;
use auth::TokenSource;
use client::{ApiError, Client};
use statements::StatementError;

impl From<StatementError> for CatalogError {
    fn from(e: StatementError) -> Self {
        CatalogError { retryable: e.retryable(), sql_class: e.class().map(str::to_string), source: Box::new(e) }
    }
}

impl From<ApiError> for CatalogError {
    fn from(e: ApiError) -> Self {
        CatalogError::new(e.retryable(), e)
    }
}

impl From<warehouse::WarehouseError> for CatalogError {
    fn from(e: warehouse::WarehouseError) -> Self {
        let retryable = !matches!(&e, warehouse::WarehouseError::Api(a) if !a.retryable());
        CatalogError::new(retryable, e)
    }
}

/// Unity Catalog through a Databricks workspace: the REST API for what it knows, a SQL warehouse for DDL.
pub struct Databricks {
    client: Client,
    pub catalog: String,
    warehouse_id: Option<String>,
    warehouse: OnceCell<String>,
    timeout: Duration,
    schemas: Mutex<HashSet<String>>,
    registered: Mutex<HashSet<(String, String)>>,
}

impl Databricks {
    pub fn new(cfg: &DatabricksConfig) -> Result<Databricks, CatalogError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| CatalogError::new(false, e))?;
        let tokens = TokenSource::new(cfg.auth.clone(), cfg.host.clone(), http.clone());
        Ok(Databricks {
            client: Client::new(cfg.host.clone(), tokens, http, cfg.retry_budget),
            catalog: cfg.catalog.clone(),
            warehouse_id: cfg.warehouse_id.clone(),
            warehouse: OnceCell::new(),
            timeout: cfg.statement_timeout,
            schemas: Mutex::new(HashSet::new()),
            registered: Mutex::new(HashSet::new()),
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn configured_warehouse(&self) -> Option<&str> {
        self.warehouse_id.as_deref()
    }

    /// The warehouse id, found or created (and started) on first use.
    pub async fn warehouse(&self) -> Result<String, CatalogError> {
        self.warehouse
            .get_or_try_init(|| async {
                let (id, created) = warehouse::resolve(&self.client, self.warehouse_id.as_deref(), true).await?;
                if created {
                    tracing::info!(warehouse = %id, "created SQL warehouse {}", warehouse::WAREHOUSE_NAME);
                }
                warehouse::ensure_running(&self.client, &id, self.timeout).await?;
                Ok::<_, CatalogError>(id)
            })
            .await
            .cloned()
    }

    pub async fn run(&self, statement: &str) -> Result<serde_json::Value, CatalogError> {
        let warehouse = self.warehouse().await?;
        tracing::info!(statement, "running on the SQL warehouse");
        let result = statements::execute(&self.client, &warehouse, &self.catalog, statement, self.timeout).await;
        crate::metrics::statement(statement, result.is_ok());
        Ok(result?)
    }

    /// The columns Unity Catalog lists for a table (lower-case), or `None` when it does not know the table.
    pub async fn table_columns(&self, schema: &str, table: &str) -> Result<Option<HashSet<String>>, CatalogError> {
        let full = format!("{}.{schema}.{table}", self.catalog);
        match self.client.call(Method::GET, &format!("/api/2.1/unity-catalog/tables/{full}"), None).await {
            Ok(t) => Ok(Some(
                t["columns"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c["name"].as_str())
                    .map(str::to_ascii_lowercase)
                    .collect(),
            )),
            Err(ApiError::Http { status: 404, .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Makes sure Unity Catalog knows the table at `location`; after the first look this makes no call.
    pub async fn register(&self, schema: &str, table: &str, location: &str) -> Result<(), CatalogError> {
        let key = (schema.to_string(), table.to_string());
        if self.registered.lock().await.contains(&key) {
            return Ok(());
        }
        if self.table_columns(schema, table).await?.is_none() {
            if !self.schemas.lock().await.contains(schema) {
                self.run(&sql::create_schema(&self.catalog, schema)).await?;
                self.schemas.lock().await.insert(schema.to_string());
            }
            self.run(&sql::create_table(&self.catalog, schema, table, location)).await?;
        }
        self.registered.lock().await.insert(key);
        Ok(())
    }

    /// Adds the columns Unity Catalog does not list yet. A column another writer added meanwhile is success.
    pub async fn add_columns(
        &self,
        schema: &str,
        table: &str,
        location: &str,
        columns: &[(String, ColumnType)],
    ) -> Result<usize, CatalogError> {
        self.register(schema, table, location).await?;
        let known = self.table_columns(schema, table).await?.unwrap_or_default();
        let missing: Vec<(String, ColumnType)> =
            columns.iter().filter(|(n, _)| !known.contains(&n.to_ascii_lowercase())).cloned().collect();
        if missing.is_empty() {
            return Ok(0);
        }
        match self.run(&sql::add_columns(&self.catalog, schema, table, &missing)).await {
            Ok(_) => Ok(missing.len()),
            Err(e) if e.sql_class.as_deref() == Some("FIELDS_ALREADY_EXISTS") => {
                // Another instance added some of them first; add whatever is still missing, once.
                let known = self.table_columns(schema, table).await?.unwrap_or_default();
                let still: Vec<(String, ColumnType)> =
                    missing.into_iter().filter(|(n, _)| !known.contains(&n.to_ascii_lowercase())).collect();
                if !still.is_empty() {
                    self.run(&sql::add_columns(&self.catalog, schema, table, &still)).await?;
                }
                Ok(still.len())
            }
            Err(e) => Err(e),
        }
    }

    /// Compacts a table on the warehouse (`OPTIMIZE`), registering it first if need be.
    pub async fn optimize(&self, schema: &str, table: &str, location: &str) -> Result<(), CatalogError> {
        self.register(schema, table, location).await?;
        self.run(&sql::optimize(&self.catalog, schema, table)).await?;
        Ok(())
    }
}

impl Catalog for Databricks {
    fn register<'a>(&'a self, schema: &'a str, table: &'a str, location: &'a str) -> BoxFuture<'a, CatalogResult<()>> {
        Box::pin(Databricks::register(self, schema, table, location))
    }

    fn add_columns<'a>(
        &'a self,
        schema: &'a str,
        table: &'a str,
        location: &'a str,
        columns: &'a [(String, ColumnType)],
    ) -> BoxFuture<'a, CatalogResult<usize>> {
        Box::pin(Databricks::add_columns(self, schema, table, location, columns))
    }

    fn optimize<'a>(&'a self, schema: &'a str, table: &'a str, location: &'a str) -> BoxFuture<'a, CatalogResult<()>> {
        Box::pin(Databricks::optimize(self, schema, table, location))
    }

    fn ready(&self) -> BoxFuture<'_, CatalogResult<String>> {
        Box::pin(async move {
            // A token, and the warehouse as the workspace reports it (not started: a stopped warehouse starts on
            // the first statement).
            let (id, _) = warehouse::resolve(&self.client, self.warehouse_id.as_deref(), false).await?;
            let w = self.client.call(reqwest::Method::GET, &format!("/api/2.0/sql/warehouses/{id}"), None).await?;
            Ok(format!("warehouse {id} is {}", w["state"].as_str().unwrap_or("in an unknown state")))
        })
    }
}
