//! What the Delta writer asks of a catalog: to know a table, and to add columns to it. Unity Catalog through
//! Databricks SQL implements it (`crate::databricks`); without one, the Delta log is the only catalog.

use futures::future::BoxFuture;

use crate::layout::value::ColumnType;

/// A catalog call that failed.
#[derive(Debug, thiserror::Error)]
#[error("Unity Catalog: {source}")]
pub struct CatalogError {
    /// Whether the same write can succeed later.
    pub retryable: bool,
    /// The SQL error class of a failed statement (`FIELDS_ALREADY_EXISTS`, ...), when it named one.
    pub sql_class: Option<String>,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl CatalogError {
    pub fn new(retryable: bool, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> CatalogError {
        CatalogError { retryable, sql_class: None, source: source.into() }
    }
}

pub type CatalogResult<T> = Result<T, CatalogError>;

pub trait Catalog: Send + Sync {
    /// Makes sure the catalog knows the table at `location` (registering it when it does not); after the first
    /// look at a table this makes no call.
    fn register<'a>(&'a self, schema: &'a str, table: &'a str, location: &'a str) -> BoxFuture<'a, CatalogResult<()>>;

    /// Adds the columns the catalog does not list yet; the catalog changes the table's Delta log itself, so the
    /// writer reads the table again afterwards. Returns how many it added.
    fn add_columns<'a>(
        &'a self,
        schema: &'a str,
        table: &'a str,
        location: &'a str,
        columns: &'a [(String, ColumnType)],
    ) -> BoxFuture<'a, CatalogResult<usize>>;

    /// Compacts a table with the catalog's own engine (`OPTIMIZE`).
    fn optimize<'a>(&'a self, schema: &'a str, table: &'a str, location: &'a str) -> BoxFuture<'a, CatalogResult<()>>;

    /// Whether the catalog can be reached now (a credential, the compute it runs statements on), without
    /// changing anything; says what it found.
    fn ready(&self) -> BoxFuture<'_, CatalogResult<String>> {
        Box::pin(async { Ok("no check".to_string()) })
    }
}
