//! What `maintain` does: compaction target, vacuum retention, and OPTIMIZE on the warehouse for large tables.

use std::time::Duration;

/// What maintenance does, from configuration.
#[derive(Debug, Clone)]
pub struct MaintenanceSettings {
    /// Compaction packs files smaller than this into files near this size.
    pub target_file_size: u64,
    /// Vacuum deletes files removed from the table longer ago than this (at least a day).
    pub vacuum_retention: Duration,
    /// With Unity Catalog kept, tables of at least this many bytes are compacted by `OPTIMIZE` on the warehouse.
    pub databricks_optimize_bytes: Option<u64>,
    /// Tables maintained at once.
    pub concurrency: usize,
    /// How long one run keeps starting tables; the next run resumes where it stopped.
    pub budget: Duration,
}

impl Default for MaintenanceSettings {
    fn default() -> Self {
        MaintenanceSettings {
            target_file_size: 128 * 1024 * 1024,
            vacuum_retention: Duration::from_secs(7 * 24 * 3600),
            databricks_optimize_bytes: None,
            concurrency: 4,
            budget: Duration::from_secs(600),
        }
    }
}

/// The least vacuum retention: a reader that started before a compaction can still finish reading the files it
/// planned, and Databricks' time travel keeps at least a day.
pub const MIN_VACUUM_RETENTION: Duration = Duration::from_secs(24 * 3600);
