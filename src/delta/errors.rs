//! How a write fails, and the one place where the Delta library's errors are read.

use deltalake::DeltaTableError;
use deltalake::kernel::transaction::TransactionError;

use super::protocol::Refusal;
use crate::catalog::CatalogError;

/// A write to one table that did not commit.
#[derive(Debug, thiserror::Error)]
#[error("table {table}: {failure}")]
pub struct WriteError {
    pub table: String,
    #[source]
    pub failure: Box<Failure>,
}

#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The table's protocol asks for something this writer does not implement; nothing was written.
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// Storage failed, or kept losing the commit race, for longer than the retry budget.
    #[error("{0}")]
    Unavailable(String),
    /// The Delta library refused the rows as they are.
    #[error("{0}")]
    Delta(#[source] DeltaTableError),
    #[error("{0}")]
    Invalid(String),
}

impl WriteError {
    pub fn new(table: &str, failure: impl Into<Failure>) -> WriteError {
        WriteError { table: table.to_string(), failure: Box::new(failure.into()) }
    }

    /// Whether sending the same rows again can succeed.
    pub fn retryable(&self) -> bool {
        match self.failure.as_ref() {
            Failure::Catalog(e) => e.retryable,
            Failure::Unavailable(_) => true,
            Failure::Refused(_) | Failure::Delta(_) | Failure::Invalid(_) => false,
        }
    }
}

/// What an error from the Delta library means for the write that met it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Another writer took the version, or a listing of the log raced a commit: read the log again.
    Conflict,
    /// Storage failed; what was being written may or may not have landed.
    Transient,
    /// No table exists at the location.
    MissingTable,
    /// Retrying the same thing cannot help.
    Fatal,
}

/// Classifies an error of the Delta library. Most decisions are on variants; two kernel errors only say what
/// they are in their text, and are recognised here and nowhere else.
pub fn classify(e: &DeltaTableError) -> ErrorClass {
    let text = e.to_string();
    if matches!(e, DeltaTableError::NotATable(_)) || text.contains("No files in log segment") {
        return ErrorClass::MissingTable;
    }
    let conflict = matches!(
        e,
        DeltaTableError::Transaction {
            source: TransactionError::CommitConflict(_)
                | TransactionError::MaxCommitAttempts(_)
                | TransactionError::VersionAlreadyExists(_)
        } | DeltaTableError::VersionAlreadyExists(_)
    )
        // A listing of the log taken while another writer committed (local directories list without order).
        || text.contains("contiguous commit files");
    if conflict {
        return ErrorClass::Conflict;
    }
    let transient = matches!(
        e,
        DeltaTableError::ObjectStore { .. }
            | DeltaTableError::Io { .. }
            | DeltaTableError::Transaction { source: TransactionError::ObjectStore { .. } }
            | DeltaTableError::Parquet { source: deltalake::parquet::errors::ParquetError::External(_) }
    ) || from_storage(e);
    if transient { ErrorClass::Transient } else { ErrorClass::Fatal }
}

/// Whether an error (the kernel's, which wraps what the store said) comes from storage that failed: a store error
/// other than a missing or existing object, or an I/O or HTTP error, anywhere in its chain of sources.
fn from_storage(e: &DeltaTableError) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        if let Some(store) = err.downcast_ref::<object_store::Error>() {
            return !matches!(store, object_store::Error::NotFound { .. } | object_store::Error::AlreadyExists { .. });
        }
        if let Some(kernel) = err.downcast_ref::<delta_kernel::Error>() {
            match kernel {
                delta_kernel::Error::ObjectStore(store) => {
                    return !matches!(
                        store,
                        object_store::Error::NotFound { .. } | object_store::Error::AlreadyExists { .. }
                    );
                }
                delta_kernel::Error::IOError(_) | delta_kernel::Error::Reqwest(_) => return true,
                _ => {}
            }
        }
        if err.is::<std::io::Error>() || err.is::<reqwest::Error>() {
            return true;
        }
        current = err.source();
    }
    false
}

/// Whether a read of the log should simply be taken again: a listing taken while another writer committed (local
/// directories list without order, so a listing can miss the commit being made and see a gap). Pauses briefly.
pub async fn raced(e: &DeltaTableError, attempt: &mut u32) -> bool {
    *attempt += 1;
    if classify(e) != ErrorClass::Conflict || *attempt > 30 {
        return false;
    }
    let pause = (2 * u64::from(*attempt)).min(50) + fastrand::u64(0..10);
    tracing::debug!(attempt = *attempt, pause_ms = pause, "the listing of the log raced a commit; reading it again");
    tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
    true
}

impl From<DeltaTableError> for Failure {
    fn from(e: DeltaTableError) -> Failure {
        match classify(&e) {
            ErrorClass::Transient | ErrorClass::Conflict => Failure::Unavailable(e.to_string()),
            ErrorClass::MissingTable | ErrorClass::Fatal => Failure::Delta(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        let missing = DeltaTableError::NotATable("x".into());
        assert_eq!(classify(&missing), ErrorClass::MissingTable);
        let store = DeltaTableError::ObjectStore {
            source: object_store::Error::NotFound { path: "x".into(), source: "gone".into() },
        };
        assert_eq!(classify(&store), ErrorClass::Transient);
        let taken = DeltaTableError::Transaction { source: TransactionError::VersionAlreadyExists(3) };
        assert_eq!(classify(&taken), ErrorClass::Conflict);
        assert_eq!(classify(&DeltaTableError::Generic("schema".into())), ErrorClass::Fatal);
        assert!(WriteError::new("t", Failure::from(store)).retryable());
        assert!(!WriteError::new("t", Failure::Invalid("no".into())).retryable());
    }
}
