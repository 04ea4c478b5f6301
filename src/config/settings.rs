//! Every setting the binary reads, with its default and meaning, and the commands that read it: the source of the
//! settings section of each command's `--help`, of the warning for a misspelt `SEGMENT_DELTA_*` variable, and
//! (checked by a test) of the README's settings table.

/// Commands, as bits: which of them read a setting.
pub const SERVE: u8 = 1;
pub const SETUP: u8 = 2;
pub const INGEST: u8 = 4;
pub const MAINTAIN: u8 = 8;
pub const FORGET: u8 = 16;
pub const CHECK: u8 = 32;
pub const DISCARDS: u8 = 64;
const ALL: u8 = 0x7f;
/// Commands that touch the lake.
const LAKE: u8 = SERVE | INGEST | MAINTAIN | FORGET | CHECK | DISCARDS | SETUP;
/// Commands that write rows.
const WRITE: u8 = SERVE | INGEST | CHECK;
/// Commands that talk to Databricks.
const UC: u8 = SERVE | SETUP | INGEST | MAINTAIN | CHECK;
/// Commands that run maintenance (the timer function runs under `serve`).
const MAINT: u8 = SERVE | MAINTAIN | CHECK;

pub struct Setting {
    pub name: &'static str,
    pub default: &'static str,
    pub help: &'static str,
    pub commands: u8,
}

const fn s(name: &'static str, default: &'static str, help: &'static str, commands: u8) -> Setting {
    Setting { name, default, help, commands }
}

pub const SETTINGS: &[Setting] = &[
    s("FUNCTIONS_CUSTOMHANDLER_PORT", "7071", "port on 127.0.0.1 (set by the Functions host)", SERVE | CHECK),
    s("SEGMENT_DELTA_LAKE", "./lake", "lake root: a local directory, file:///..., or abfss://...", LAKE),
    s(
        "SEGMENT_DELTA_SOURCES",
        "unset",
        "KEY1=schema_one,KEY2=schema_two: write keys and their schemas (required by serve with a remote lake)",
        SERVE | INGEST | CHECK | SETUP,
    ),
    s(
        "SEGMENT_DELTA_DEFAULT_SCHEMA",
        "segment",
        "schema of the local open mode (no SEGMENT_DELTA_SOURCES)",
        SERVE | INGEST | CHECK,
    ),
    s("SEGMENT_DELTA_MAX_EVENT_BYTES", "32KiB", "largest event", SERVE | CHECK),
    s("SEGMENT_DELTA_MAX_REQUEST_BYTES", "500KiB", "largest request body, after decompression", SERVE | CHECK),
    s("SEGMENT_DELTA_MAX_BATCH_EVENTS", "2500", "most events in one batch", SERVE | CHECK),
    s(
        "SEGMENT_DELTA_FLUSH_INTERVAL_MS",
        "20ms",
        "a micro-batch gathers requests this long after its first one (not once it is full)...",
        WRITE,
    ),
    s(
        "SEGMENT_DELTA_FLUSH_MIN_INTERVAL_MS",
        "200ms",
        "...and is written no sooner than this after the previous flush started (at most 1000/this commits per table per second under any load)",
        WRITE,
    ),
    s("SEGMENT_DELTA_FLUSH_MAX_EVENTS", "100000", "a micro-batch is full at this many events...", WRITE),
    s("SEGMENT_DELTA_FLUSH_MAX_BYTES", "64MiB", "...or this many request bytes", WRITE),
    s(
        "SEGMENT_DELTA_MAX_BUFFERED_BYTES",
        "256MiB",
        "bytes accepted and not yet written; past it requests get 503",
        WRITE,
    ),
    s(
        "SEGMENT_DELTA_FLUSH_NEW_TABLES",
        "50",
        "new tables one flush creates at most; the rest wait for the next flush",
        WRITE,
    ),
    s("SEGMENT_DELTA_FLUSH_BUDGET_MS", "5s", "a flush starts no table write after this long", WRITE),
    s("SEGMENT_DELTA_MAX_COLUMNS", "1000", "columns per table; further values go to discards", WRITE),
    s(
        "SEGMENT_DELTA_MAX_TABLES",
        "4000",
        "event tables per schema; past it rows go to discards (the event still lands in tracks)",
        WRITE,
    ),
    s("SEGMENT_DELTA_TABLE_CACHE", "1000", "table handles kept between writes", WRITE),
    s("SEGMENT_DELTA_TABLE_CACHE_BYTES", "128MiB", "about how many bytes of table handles are kept", WRITE),
    s(
        "SEGMENT_DELTA_CORS_ORIGINS",
        "*",
        "browser origins allowed to send events (comma list of scheme://host[:port], or *)",
        SERVE | CHECK,
    ),
    s(
        "SEGMENT_DELTA_PUBLIC_URL",
        "from the request",
        "the public URL the settings endpoint gives SDKs as their API host",
        SERVE | CHECK,
    ),
    s(
        "SEGMENT_DELTA_HEADER_TIMEOUT_MS",
        "10s",
        "a request's headers must arrive within this (idle connections close after it)",
        SERVE | CHECK,
    ),
    s("SEGMENT_DELTA_BODY_TIMEOUT_MS", "30s", "a request's body must arrive within this, else 408", SERVE | CHECK),
    s("SEGMENT_DELTA_MAX_CONNECTIONS", "1024", "connections open at once", SERVE | CHECK),
    s("SEGMENT_DELTA_MAX_READING_BYTES", "64MiB", "bytes of request bodies being read at once", SERVE | CHECK),
    s(
        "SEGMENT_DELTA_SHUTDOWN_TIMEOUT_MS",
        "20s",
        "on SIGTERM, how long open connections are waited for",
        SERVE | CHECK,
    ),
    s(
        "SEGMENT_DELTA_DEDUP_CAPACITY",
        "1000000",
        "committed rows remembered to acknowledge repeats without writing them",
        WRITE,
    ),
    s(
        "SEGMENT_DELTA_EVENTHUB_SCHEMA",
        "the single schema of SEGMENT_DELTA_SOURCES",
        "schema of Event Hub events without a write key",
        SERVE | CHECK,
    ),
    s(
        "SEGMENT_DELTA_STORAGE_CREDENTIAL",
        "chosen from the environment",
        "managed-identity, workload-identity, client-secret, azure-cli, account-key, sas or emulator",
        LAKE,
    ),
    s("SEGMENT_DELTA_STORAGE_EMULATOR", "false", "true: the lake is on Azurite (AZURITE_BLOB_STORAGE_URL)", LAKE),
    s(
        "SEGMENT_DELTA_STORAGE_ENDPOINT",
        "https://<account>.blob.core.windows.net",
        "the storage account's blob endpoint, for a private endpoint, a sovereign cloud or an emulator",
        LAKE,
    ),
    s("AZURE_STORAGE_ACCOUNT_NAME", "from the lake URI", "the storage account, for az://container/... lake URIs", LAKE),
    s(
        "AZURE_CLIENT_ID",
        "unset",
        "the user-assigned managed identity, workload identity or service principal",
        LAKE | UC,
    ),
    s("AZURE_TENANT_ID", "unset", "tenant of the service principal / workload identity", LAKE | UC),
    s("AZURE_CLIENT_SECRET", "unset", "service principal secret", LAKE | UC),
    s("AZURE_FEDERATED_TOKEN_FILE", "unset", "workload identity token file", LAKE | UC),
    s("AZURE_STORAGE_ACCOUNT_KEY", "unset", "used only with SEGMENT_DELTA_STORAGE_CREDENTIAL=account-key", LAKE),
    s("AZURE_STORAGE_SAS_TOKEN", "unset", "used only with SEGMENT_DELTA_STORAGE_CREDENTIAL=sas", LAKE),
    s("DATABRICKS_HOST", "unset", "workspace URL; set, Unity Catalog is kept in step", UC),
    s("DATABRICKS_CATALOG", "-", "catalog the tables are registered in (required with DATABRICKS_HOST)", UC),
    s("DATABRICKS_WAREHOUSE_ID", "unset", "SQL warehouse for DDL; unset: the one named segment-delta", UC),
    s(
        "DATABRICKS_AUTH_TYPE",
        "chosen from what is set",
        "pat, oauth-m2m, azure-msi, azure-client-secret, azure-workload-identity or azure-cli",
        UC,
    ),
    s("DATABRICKS_TOKEN", "unset", "personal access token", UC),
    s("DATABRICKS_CLIENT_ID", "unset", "OAuth machine-to-machine client id", UC),
    s("DATABRICKS_CLIENT_SECRET", "unset", "OAuth machine-to-machine secret", UC),
    s(
        "AZURE_AUTHORITY_HOST",
        "https://login.microsoftonline.com",
        "Entra authority for service principal / workload identity tokens",
        UC,
    ),
    s(
        "SEGMENT_DELTA_STATEMENT_TIMEOUT_SECS",
        "300s",
        "longest wait for one SQL statement, warehouse start included",
        UC,
    ),
    s("SEGMENT_DELTA_DATABRICKS_RETRY_SECS", "60s", "how long 429/503 answers and network errors are retried", UC),
    s("SEGMENT_DELTA_WRITE_RETRY_SECS", "30s", "how long a write retries lost commit races and storage errors", WRITE),
    s("SEGMENT_DELTA_TARGET_FILE_SIZE", "128MiB", "compaction packs smaller files into files near this size", MAINT),
    s(
        "SEGMENT_DELTA_DATABRICKS_OPTIMIZE_BYTES",
        "unset",
        "tables at least this large are compacted by OPTIMIZE on the warehouse",
        MAINT,
    ),
    s(
        "SEGMENT_DELTA_VACUUM_RETENTION_HOURS",
        "168h",
        "vacuum deletes files removed longer ago than this (at least 24h)",
        MAINT | FORGET,
    ),
    s("SEGMENT_DELTA_MAINTENANCE_CONCURRENCY", "4", "tables maintained at once", MAINT | FORGET),
    s(
        "SEGMENT_DELTA_MAINTENANCE_BUDGET_SECS",
        "600s",
        "a maintenance run starts no table after this; the next resumes there",
        MAINT,
    ),
    s(
        "SEGMENT_DELTA_MAINTENANCE_SCHEDULE",
        "0 */15 * * * *",
        "NCRONTAB of the maintenance timer (read by the Functions host)",
        0,
    ),
    s("SEGMENT_DELTA_LOG_FORMAT", "json under the Functions host, else text", "log line format", ALL),
    s(
        "_RJEM_MALLOC_CONF",
        "dirty_decay_ms:600,muzzy_decay_ms:0",
        "options of the allocator (jemalloc), read before anything else",
        ALL,
    ),
    s("RUST_LOG", "info", "log filter; the Delta libraries stay quiet unless named", ALL),
];

/// The settings section of a command's `--help`.
pub fn help_for(command: u8) -> String {
    let mut out =
        String::from("Settings (environment variables; durations take ms/s/m/h/d, sizes B/KB/MB/GB/KiB/MiB/GiB):\n");
    for s in SETTINGS.iter().filter(|s| s.commands & command != 0) {
        out.push_str(&format!("  {} [default: {}]\n      {}\n", s.name, s.default, s.help));
    }
    out
}

/// The `SEGMENT_DELTA_*` variables of `vars` that are no setting, each with the closest setting's name when one is
/// near enough to be a misspelling.
pub fn unknown<'a>(vars: impl Iterator<Item = &'a str>) -> Vec<(String, Option<&'static str>)> {
    vars.filter(|v| v.starts_with("SEGMENT_DELTA_") && !SETTINGS.iter().any(|s| s.name == *v))
        .map(|v| {
            // Compared without the common prefix, and near enough only within a third of the name's length.
            let short = &v["SEGMENT_DELTA_".len()..];
            let closest = SETTINGS
                .iter()
                .filter_map(|s| s.name.strip_prefix("SEGMENT_DELTA_").map(|n| (distance(short, n), s.name)))
                .min()
                .filter(|(d, _)| *d <= (short.chars().count() / 3).max(1))
                .map(|(_, n)| n);
            (v.to_string(), closest)
        })
        .collect()
}

/// Levenshtein distance.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misspellings_name_the_closest_setting() {
        let vars = [
            "SEGMENT_DELTA_FLUSH_INTERVAL",
            "SEGMENT_DELTA_LAKE",
            "SEGMENT_DELTA_MAX_COLUMS",
            "SEGMENT_DELTA_ZZZ",
            "PATH",
        ];
        let found = unknown(vars.into_iter());
        assert_eq!(
            found,
            vec![
                ("SEGMENT_DELTA_FLUSH_INTERVAL".to_string(), Some("SEGMENT_DELTA_FLUSH_INTERVAL_MS")),
                ("SEGMENT_DELTA_MAX_COLUMS".to_string(), Some("SEGMENT_DELTA_MAX_COLUMNS")),
                ("SEGMENT_DELTA_ZZZ".to_string(), None),
            ]
        );
    }

    #[test]
    fn the_readme_documents_every_setting_and_no_other() {
        let readme = include_str!("../../README.md");
        let table = readme.split("| variable | default | meaning |").nth(1).expect("settings table");
        let mut documented: Vec<&str> = Vec::new();
        for line in table.lines().skip(2).take_while(|l| l.starts_with('|')) {
            let first = line.split('|').nth(1).unwrap_or_default();
            documented.extend(first.split('`').skip(1).step_by(2));
        }
        let mut known: Vec<&str> = SETTINGS.iter().map(|s| s.name).collect();
        documented.sort();
        known.sort();
        assert_eq!(documented, known);
    }

    #[test]
    fn help_lists_what_a_command_reads() {
        let maintain = help_for(MAINTAIN);
        assert!(maintain.contains("SEGMENT_DELTA_VACUUM_RETENTION_HOURS [default: 168h]"));
        assert!(!maintain.contains("SEGMENT_DELTA_CORS_ORIGINS"));
        assert!(help_for(SERVE).contains("SEGMENT_DELTA_CORS_ORIGINS [default: *]"));
    }
}
