//! Settings, read once from the environment and validated into one typed value. A leaf: the settings of every
//! subsystem are plain types here, which the subsystems receive; nothing here imports the pipeline.

pub mod databricks;
pub mod maintenance;
pub mod settings;
pub mod storage;
pub mod units;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use subtle::ConstantTimeEq;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{name}: {message}")]
    Invalid { name: &'static str, message: String },
}

fn invalid(name: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { name, message: message.into() }
}

/// A secret string: compared in constant time, never printed.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn matches(&self, candidate: &[u8]) -> bool {
        self.0.as_bytes().ct_eq(candidate).into()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Which write keys are accepted, and the schema each one writes to.
#[derive(Debug, Clone)]
pub enum Sources {
    /// Local trial mode: any key, or none, writes to one schema.
    Open {
        schema: String,
    },
    Keys(Vec<(Secret, String)>),
}

impl Sources {
    /// The schema for a write key. Every configured key is compared, in constant time, whatever matches.
    pub fn schema_for(&self, key: Option<&str>) -> Option<&str> {
        match self {
            Sources::Open { schema } => Some(schema),
            Sources::Keys(keys) => {
                let key = key?.as_bytes();
                let mut found = None;
                for (secret, schema) in keys {
                    if secret.matches(key) {
                        found = Some(schema.as_str());
                    }
                }
                found
            }
        }
    }

    pub fn schemas(&self) -> Vec<&str> {
        match self {
            Sources::Open { schema } => vec![schema],
            Sources::Keys(keys) => keys.iter().map(|(_, s)| s.as_str()).collect(),
        }
    }
}

/// Which browser origins may call the API (CORS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origins {
    Any,
    Only(Vec<String>),
}

impl Origins {
    pub fn allows(&self, origin: &str) -> bool {
        match self {
            Origins::Any => true,
            Origins::Only(list) => list.iter().any(|o| o.eq_ignore_ascii_case(origin)),
        }
    }

    fn parse(s: &str) -> Result<Origins, ConfigError> {
        let items: Vec<&str> = s.split(',').map(str::trim).filter(|o| !o.is_empty()).collect();
        if items.contains(&"*") {
            return Ok(Origins::Any);
        }
        for o in &items {
            let ok = url::Url::parse(o).is_ok_and(|u| {
                matches!(u.scheme(), "http" | "https") && u.host().is_some() && u.path() == "/" && !o.ends_with('/')
            });
            if !ok {
                return Err(invalid(
                    "SEGMENT_DELTA_CORS_ORIGINS",
                    format!("{o:?} is not an origin (scheme://host[:port], no path), nor *"),
                ));
            }
        }
        Ok(Origins::Only(items.into_iter().map(|o| o.trim_end_matches('/').to_string()).collect()))
    }
}

/// The Tracking API's size limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_event_bytes: usize,
    pub max_request_bytes: usize,
    pub max_batch_events: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_event_bytes: 32 * 1024, max_request_bytes: 500 * 1024, max_batch_events: 2_500 }
    }
}

/// When a micro-batch is written, and how much may wait.
#[derive(Debug, Clone, Copy)]
pub struct FlushPolicy {
    /// How long a micro-batch gathers requests after its first one.
    pub interval: Duration,
    /// The least time between the starts of two flushes: under any load each table gets at most one commit per
    /// this interval from this process (batches grow instead); only shutdown writes sooner.
    pub min_interval: Duration,
    pub max_events: usize,
    pub max_bytes: usize,
    /// Past this many bytes waiting or being written, new requests get 503.
    pub max_buffered_bytes: usize,
    /// Tables one flush creates at most; the rows of further new tables wait for the next flush, so that a
    /// request naming thousands of new events does not hold up the requests behind it.
    pub new_tables: usize,
    /// How long a flush keeps starting table writes; the tables it has not started by then wait for the next.
    pub budget: Duration,
}

impl Default for FlushPolicy {
    fn default() -> Self {
        FlushPolicy {
            interval: Duration::from_millis(20),
            min_interval: Duration::from_millis(200),
            max_events: 100_000,
            max_bytes: 64 * 1024 * 1024,
            max_buffered_bytes: 256 * 1024 * 1024,
            new_tables: 50,
            budget: Duration::from_secs(5),
        }
    }
}

/// What a connection may take of the server: time to send its headers and its body, a share of the bytes being
/// read at once, and how long shutdown waits for it.
#[derive(Debug, Clone, Copy)]
pub struct Connections {
    /// A request's headers must arrive within this long of the connection waiting for them (idle keep-alive
    /// connections are closed after it too).
    pub header_timeout: Duration,
    /// A request's body must arrive within this long of its headers.
    pub body_timeout: Duration,
    /// Connections open at once; further ones are closed at once.
    pub max_connections: usize,
    /// Bytes of request bodies being read at once, over all connections; readers past it wait their turn.
    pub max_reading_bytes: usize,
    /// On shutdown, how long connections still open are waited for before they are closed.
    pub shutdown_timeout: Duration,
}

impl Default for Connections {
    fn default() -> Self {
        Connections {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_connections: 1024,
            max_reading_bytes: 64 * 1024 * 1024,
            shutdown_timeout: Duration::from_secs(20),
        }
    }
}

/// How many tables a schema may have, and how many table handles are kept between writes.
#[derive(Debug, Clone, Copy)]
pub struct TableLimits {
    /// Tables of track events per schema (Segment's default limit of distinct events); past it, an event still
    /// lands in `tracks`, and its row for the event's own table goes to `discards`.
    pub max_tables: usize,
    /// Table handles kept between writes, at most this many…
    pub cache_tables: usize,
    /// …and about this many bytes; the least recently written are dropped first.
    pub cache_bytes: usize,
}

impl Default for TableLimits {
    fn default() -> Self {
        TableLimits { max_tables: 4_000, cache_tables: 1_000, cache_bytes: 128 * 1024 * 1024 }
    }
}

/// Where the tables live: `<lake>/<schema>/<table>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lake {
    Local(PathBuf),
    Remote(String),
}

impl Lake {
    pub fn parse(s: &str) -> Result<Lake, ConfigError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(invalid("SEGMENT_DELTA_LAKE", "is empty"));
        }
        if let Some(path) = s.strip_prefix("file://") {
            return Ok(Lake::Local(PathBuf::from(path)));
        }
        if s.contains("://") {
            return Ok(Lake::Remote(s.trim_end_matches('/').to_string()));
        }
        Ok(Lake::Local(PathBuf::from(s)))
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub port: u16,
    pub lake: Lake,
    /// How the lake is reached (storage options and the credential kind).
    pub storage: storage::Storage,
    /// The schema for Event Hub events that carry no known write key.
    pub eventhub_schema: Option<String>,
    /// Unity Catalog through Databricks SQL; `None` keeps the Delta log as the only catalog.
    pub databricks: Option<databricks::DatabricksConfig>,
    pub sources: Sources,
    pub limits: Limits,
    pub flush: FlushPolicy,
    /// Columns a table may reach; values for columns past it go to `discards`.
    pub max_columns: usize,
    pub tables: TableLimits,
    pub connections: Connections,
    /// Browser origins allowed to call the API.
    pub cors_origins: Origins,
    /// The handler's public address (`https://<app>.azurewebsites.net`), which the settings endpoint gives
    /// analytics.js as its API host; unset, it is taken from each request's `Host` / `X-Forwarded-*` headers.
    pub public_url: Option<url::Url>,
    /// How many committed `messageId`s are remembered to acknowledge repeats without writing them again.
    pub dedup_capacity: usize,
    /// JSON log lines (the default under the Functions host).
    pub log_json: bool,
    /// Compaction target and vacuum retention of `maintain`.
    pub maintenance: maintenance::MaintenanceSettings,
    /// How long a write retries commit conflicts and storage errors before the request fails.
    pub write_retry: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            port: 7071,
            lake: Lake::Local(PathBuf::from("./lake")),
            storage: Default::default(),
            eventhub_schema: None,
            databricks: None,
            sources: Sources::Open { schema: "segment".into() },
            limits: Limits::default(),
            flush: FlushPolicy::default(),
            max_columns: 1_000,
            tables: TableLimits::default(),
            connections: Connections::default(),
            cors_origins: Origins::Any,
            public_url: None,
            dedup_capacity: 1_000_000,
            log_json: false,
            maintenance: Default::default(),
            write_retry: Duration::from_secs(30),
        }
    }
}

/// A schema name from configuration must already be a normalised identifier: lower-case ASCII letters and digits
/// in words joined by single underscores, as Segment's snake_case leaves a name.
pub fn check_schema_name(name: &'static str, schema: &str) -> Result<(), ConfigError> {
    let normalised =
        schema.split('_').all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
    if !normalised {
        return Err(invalid(
            name,
            format!("{schema:?} is not a valid schema name (use lower-case letters, digits and _)"),
        ));
    }
    Ok(())
}

fn parse_sources(s: &str) -> Result<Sources, ConfigError> {
    const NAME: &str = "SEGMENT_DELTA_SOURCES";
    let mut keys = Vec::new();
    let mut seen = HashMap::new();
    for (n, entry) in s.split(',').map(str::trim).filter(|e| !e.is_empty()).enumerate() {
        let Some((key, schema)) = entry.split_once('=') else {
            return Err(invalid(NAME, format!("entry {} is not KEY=schema", n + 1)));
        };
        let (key, schema) = (key.trim(), schema.trim());
        if key.is_empty() {
            return Err(invalid(NAME, format!("entry {} has an empty write key", n + 1)));
        }
        check_schema_name(NAME, schema)?;
        if seen.insert(key.to_string(), ()).is_some() {
            return Err(invalid(NAME, format!("entry {} repeats a write key", n + 1)));
        }
        keys.push((Secret::new(key), schema.to_string()));
    }
    if keys.is_empty() {
        return Err(invalid(NAME, "names no write key"));
    }
    Ok(Sources::Keys(keys))
}

impl Config {
    /// Reads the settings from a variable lookup (the process environment in production).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let mut c = Config::default();
        fn num<T: std::str::FromStr>(
            get: &impl Fn(&str) -> Option<String>,
            name: &'static str,
            default: T,
        ) -> Result<T, ConfigError> {
            match get(name).filter(|v| !v.trim().is_empty()) {
                None => Ok(default),
                Some(v) => v.trim().parse().map_err(|_| invalid(name, format!("{v:?} is not a valid number"))),
            }
        }
        let positive = |name: &'static str, v: usize| {
            if v == 0 { Err(invalid(name, "must be greater than 0")) } else { Ok(v) }
        };
        // Sizes and durations, with units or as plain numbers of the unit the name says.
        let bytes = |name: &'static str, default: usize| -> Result<usize, ConfigError> {
            match get(name).filter(|v| !v.trim().is_empty()) {
                None => Ok(default),
                Some(v) => units::size(&v).map(|n| n as usize).ok_or_else(|| {
                    invalid(name, format!("{v:?} is not a size (bytes, or a number with B, KB, MB, GB, KiB, MiB, GiB)"))
                }),
            }
        };
        let time = |name: &'static str, default: Duration, unit: Duration| -> Result<Duration, ConfigError> {
            match get(name).filter(|v| !v.trim().is_empty()) {
                None => Ok(default),
                Some(v) => units::duration(&v, unit).ok_or_else(|| {
                    invalid(name, format!("{v:?} is not a duration (a number, or one with ms, s, m, h, d)"))
                }),
            }
        };
        const MS: Duration = Duration::from_millis(1);
        const SECS: Duration = Duration::from_secs(1);
        c.port = num(&get, "FUNCTIONS_CUSTOMHANDLER_PORT", c.port)?;
        if let Some(lake) = get("SEGMENT_DELTA_LAKE") {
            c.lake = Lake::parse(&lake)?;
        }
        c.sources = match get("SEGMENT_DELTA_SOURCES").filter(|s| !s.trim().is_empty()) {
            Some(s) => parse_sources(&s)?,
            // No key is accepted until some are configured (`serve` refuses to start so); the commands that do not
            // take events run without them.
            None if matches!(c.lake, Lake::Remote(_)) => Sources::Keys(Vec::new()),
            None => {
                let schema = get("SEGMENT_DELTA_DEFAULT_SCHEMA").unwrap_or_else(|| "segment".into());
                check_schema_name("SEGMENT_DELTA_DEFAULT_SCHEMA", &schema)?;
                Sources::Open { schema }
            }
        };
        c.storage = storage::from_lookup(&c.lake, &get)?;
        c.databricks = databricks::DatabricksConfig::from_lookup(&get)?;
        c.eventhub_schema = match get("SEGMENT_DELTA_EVENTHUB_SCHEMA").filter(|s| !s.trim().is_empty()) {
            Some(s) => {
                let s = s.trim().to_string();
                check_schema_name("SEGMENT_DELTA_EVENTHUB_SCHEMA", &s)?;
                Some(s)
            }
            None => match c.sources.schemas().as_slice() {
                [one] => Some(one.to_string()),
                _ => None,
            },
        };
        let l = &mut c.limits;
        l.max_event_bytes =
            positive("SEGMENT_DELTA_MAX_EVENT_BYTES", bytes("SEGMENT_DELTA_MAX_EVENT_BYTES", l.max_event_bytes)?)?;
        l.max_request_bytes = positive(
            "SEGMENT_DELTA_MAX_REQUEST_BYTES",
            bytes("SEGMENT_DELTA_MAX_REQUEST_BYTES", l.max_request_bytes)?,
        )?;
        l.max_batch_events = positive(
            "SEGMENT_DELTA_MAX_BATCH_EVENTS",
            num(&get, "SEGMENT_DELTA_MAX_BATCH_EVENTS", l.max_batch_events)?,
        )?;
        let f = &mut c.flush;
        // Every request waits up to these: past a minute, clients and front ends would time out first.
        let request_wait = |name: &'static str, default: Duration| {
            let d = time(name, default, MS)?;
            if d > Duration::from_secs(60) {
                Err(invalid(name, format!("{d:?} is longer than a minute; every request would wait that long")))
            } else {
                Ok(d)
            }
        };
        f.interval = request_wait("SEGMENT_DELTA_FLUSH_INTERVAL_MS", f.interval)?;
        f.min_interval = request_wait("SEGMENT_DELTA_FLUSH_MIN_INTERVAL_MS", f.min_interval)?;
        f.max_events =
            positive("SEGMENT_DELTA_FLUSH_MAX_EVENTS", num(&get, "SEGMENT_DELTA_FLUSH_MAX_EVENTS", f.max_events)?)?;
        f.max_bytes = positive("SEGMENT_DELTA_FLUSH_MAX_BYTES", bytes("SEGMENT_DELTA_FLUSH_MAX_BYTES", f.max_bytes)?)?;
        f.max_buffered_bytes = positive(
            "SEGMENT_DELTA_MAX_BUFFERED_BYTES",
            bytes("SEGMENT_DELTA_MAX_BUFFERED_BYTES", f.max_buffered_bytes)?,
        )?;
        if f.max_buffered_bytes < c.limits.max_request_bytes {
            return Err(invalid(
                "SEGMENT_DELTA_MAX_BUFFERED_BYTES",
                "must be at least SEGMENT_DELTA_MAX_REQUEST_BYTES",
            ));
        }
        f.new_tables =
            positive("SEGMENT_DELTA_FLUSH_NEW_TABLES", num(&get, "SEGMENT_DELTA_FLUSH_NEW_TABLES", f.new_tables)?)?;
        f.budget = time("SEGMENT_DELTA_FLUSH_BUDGET_MS", f.budget, MS)?;
        c.max_columns = positive("SEGMENT_DELTA_MAX_COLUMNS", num(&get, "SEGMENT_DELTA_MAX_COLUMNS", c.max_columns)?)?;
        let t = &mut c.tables;
        t.max_tables = positive("SEGMENT_DELTA_MAX_TABLES", num(&get, "SEGMENT_DELTA_MAX_TABLES", t.max_tables)?)?;
        t.cache_tables =
            positive("SEGMENT_DELTA_TABLE_CACHE", num(&get, "SEGMENT_DELTA_TABLE_CACHE", t.cache_tables)?)?;
        t.cache_bytes =
            positive("SEGMENT_DELTA_TABLE_CACHE_BYTES", bytes("SEGMENT_DELTA_TABLE_CACHE_BYTES", t.cache_bytes)?)?;
        let ms = |name: &'static str, d: Duration| -> Result<Duration, ConfigError> {
            let v = time(name, d, MS)?;
            if v.is_zero() { Err(invalid(name, "must be greater than 0")) } else { Ok(v) }
        };
        let n = &mut c.connections;
        n.header_timeout = ms("SEGMENT_DELTA_HEADER_TIMEOUT_MS", n.header_timeout)?;
        n.body_timeout = ms("SEGMENT_DELTA_BODY_TIMEOUT_MS", n.body_timeout)?;
        n.shutdown_timeout = ms("SEGMENT_DELTA_SHUTDOWN_TIMEOUT_MS", n.shutdown_timeout)?;
        n.max_connections =
            positive("SEGMENT_DELTA_MAX_CONNECTIONS", num(&get, "SEGMENT_DELTA_MAX_CONNECTIONS", n.max_connections)?)?;
        n.max_reading_bytes = positive(
            "SEGMENT_DELTA_MAX_READING_BYTES",
            bytes("SEGMENT_DELTA_MAX_READING_BYTES", n.max_reading_bytes)?,
        )?;
        if n.max_reading_bytes < c.limits.max_request_bytes {
            return Err(invalid("SEGMENT_DELTA_MAX_READING_BYTES", "must be at least SEGMENT_DELTA_MAX_REQUEST_BYTES"));
        }
        if let Some(o) = get("SEGMENT_DELTA_CORS_ORIGINS").filter(|v| !v.trim().is_empty()) {
            c.cors_origins = Origins::parse(&o)?;
        }
        if let Some(u) = get("SEGMENT_DELTA_PUBLIC_URL").filter(|v| !v.trim().is_empty()) {
            let parsed = url::Url::parse(u.trim())
                .ok()
                .filter(|p| matches!(p.scheme(), "http" | "https") && p.host().is_some())
                .ok_or_else(|| invalid("SEGMENT_DELTA_PUBLIC_URL", format!("{u:?} is not an http(s) URL")))?;
            c.public_url = Some(parsed);
        }
        c.dedup_capacity = num(&get, "SEGMENT_DELTA_DEDUP_CAPACITY", c.dedup_capacity)?;
        c.write_retry = time("SEGMENT_DELTA_WRITE_RETRY_SECS", c.write_retry, SECS)?;
        let m = &mut c.maintenance;
        m.target_file_size = positive(
            "SEGMENT_DELTA_TARGET_FILE_SIZE",
            bytes("SEGMENT_DELTA_TARGET_FILE_SIZE", m.target_file_size as usize)?,
        )? as u64;
        let retention = time("SEGMENT_DELTA_VACUUM_RETENTION_HOURS", m.vacuum_retention, Duration::from_secs(3600))?;
        if retention < maintenance::MIN_VACUUM_RETENTION {
            return Err(invalid(
                "SEGMENT_DELTA_VACUUM_RETENTION_HOURS",
                format!("{} hours is under the least retention of 24 hours", retention.as_secs_f64() / 3600.0),
            ));
        }
        m.vacuum_retention = retention;
        m.databricks_optimize_bytes =
            match get("SEGMENT_DELTA_DATABRICKS_OPTIMIZE_BYTES").filter(|v| !v.trim().is_empty()) {
                None => None,
                Some(_) => Some(bytes("SEGMENT_DELTA_DATABRICKS_OPTIMIZE_BYTES", 0)? as u64),
            };
        m.concurrency = positive(
            "SEGMENT_DELTA_MAINTENANCE_CONCURRENCY",
            num(&get, "SEGMENT_DELTA_MAINTENANCE_CONCURRENCY", m.concurrency)?,
        )?;
        m.budget = time("SEGMENT_DELTA_MAINTENANCE_BUDGET_SECS", m.budget, SECS)?;
        c.log_json = match get("SEGMENT_DELTA_LOG_FORMAT").as_deref().map(str::trim) {
            Some("json") => true,
            Some("text") => false,
            None | Some("") => get("FUNCTIONS_CUSTOMHANDLER_PORT").is_some(),
            Some(other) => {
                return Err(invalid("SEGMENT_DELTA_LOG_FORMAT", format!("{other:?}: expected json or text")));
            }
        };
        Ok(c)
    }

    /// What serving events needs beyond what every command does: write keys, with a remote lake.
    pub fn check_serving(&self) -> Result<(), ConfigError> {
        if matches!(&self.sources, Sources::Keys(keys) if keys.is_empty()) {
            return Err(invalid(
                "SEGMENT_DELTA_SOURCES",
                "must map write keys to schemas (KEY=schema,...) when the lake is not a local directory",
            ));
        }
        Ok(())
    }

    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(|k| std::env::var(k).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_run_locally_with_any_key() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.port, 7071);
        assert_eq!(c.lake, Lake::Local(PathBuf::from("./lake")));
        assert_eq!(c.sources.schema_for(Some("whatever")), Some("segment"));
        assert_eq!(c.sources.schema_for(None), Some("segment"));
        assert_eq!(c.limits.max_request_bytes, 512_000);
    }

    #[test]
    fn sources_map_keys_to_schemas() {
        let c = cfg(&[("SEGMENT_DELTA_SOURCES", "K1=web, K2=ios")]).unwrap();
        assert_eq!(c.sources.schema_for(Some("K1")), Some("web"));
        assert_eq!(c.sources.schema_for(Some("K2")), Some("ios"));
        assert_eq!(c.sources.schema_for(Some("K3")), None);
        assert_eq!(c.sources.schema_for(Some("K")), None);
        assert_eq!(c.sources.schema_for(None), None);
        assert!(!format!("{:?}", c.sources).contains("K1"), "keys never reach Debug output");
    }

    #[test]
    fn bad_settings_name_the_variable() {
        for (vars, needle) in [
            (
                vec![("SEGMENT_DELTA_SOURCES", "K1=Web-Site")],
                "SEGMENT_DELTA_SOURCES: \"Web-Site\" is not a valid schema",
            ),
            (vec![("SEGMENT_DELTA_SOURCES", "K1")], "SEGMENT_DELTA_SOURCES: entry 1 is not KEY=schema"),
            (vec![("SEGMENT_DELTA_SOURCES", "K1=a,K1=b")], "repeats a write key"),
            (vec![("SEGMENT_DELTA_FLUSH_INTERVAL_MS", "soon")], "SEGMENT_DELTA_FLUSH_INTERVAL_MS: \"soon\""),
            (
                vec![("SEGMENT_DELTA_FLUSH_MIN_INTERVAL_MS", "200s")],
                "SEGMENT_DELTA_FLUSH_MIN_INTERVAL_MS: 200s is longer than a minute",
            ),
            (vec![("SEGMENT_DELTA_MAX_COLUMNS", "0")], "SEGMENT_DELTA_MAX_COLUMNS: must be greater than 0"),
            (vec![("SEGMENT_DELTA_LOG_FORMAT", "xml")], "SEGMENT_DELTA_LOG_FORMAT"),
            (vec![("SEGMENT_DELTA_VACUUM_RETENTION_HOURS", "12")], "under the least retention of 24 hours"),
            (vec![("SEGMENT_DELTA_TARGET_FILE_SIZE", "0")], "SEGMENT_DELTA_TARGET_FILE_SIZE: must be greater than 0"),
            (
                vec![("SEGMENT_DELTA_CORS_ORIGINS", "https://a.example/x")],
                "SEGMENT_DELTA_CORS_ORIGINS: \"https://a.example/x\"",
            ),
            (vec![("SEGMENT_DELTA_PUBLIC_URL", "app.example")], "SEGMENT_DELTA_PUBLIC_URL"),
        ] {
            let e = cfg(&vars).unwrap_err().to_string();
            assert!(e.contains(needle), "{e} should contain {needle}");
        }
    }

    #[test]
    fn a_remote_lake_needs_write_keys_to_serve_only() {
        let c = cfg(&[("SEGMENT_DELTA_LAKE", "abfss://c@a.dfs.core.windows.net/x")]).unwrap();
        let e = c.check_serving().unwrap_err().to_string();
        assert!(e.contains("SEGMENT_DELTA_SOURCES: must map"), "{e}");
        assert_eq!(c.sources.schema_for(Some("any")), None);
        let c =
            cfg(&[("SEGMENT_DELTA_LAKE", "abfss://c@a.dfs.core.windows.net/x"), ("SEGMENT_DELTA_SOURCES", "K=web")]);
        assert!(c.unwrap().check_serving().is_ok());
    }

    #[test]
    fn units_in_settings() {
        let c = cfg(&[
            ("SEGMENT_DELTA_FLUSH_INTERVAL_MS", "250ms"),
            ("SEGMENT_DELTA_WRITE_RETRY_SECS", "2m"),
            ("SEGMENT_DELTA_MAX_REQUEST_BYTES", "1MiB"),
            ("SEGMENT_DELTA_MAX_BUFFERED_BYTES", "64MB"),
            ("SEGMENT_DELTA_VACUUM_RETENTION_HOURS", "2d"),
        ])
        .unwrap();
        assert_eq!(c.flush.interval, Duration::from_millis(250));
        assert_eq!(c.write_retry, Duration::from_secs(120));
        assert_eq!(c.limits.max_request_bytes, 1 << 20);
        assert_eq!(c.flush.max_buffered_bytes, 64_000_000);
        assert_eq!(c.maintenance.vacuum_retention, Duration::from_secs(48 * 3600));
        // A plain number is in the unit the name says.
        let c = cfg(&[("SEGMENT_DELTA_FLUSH_INTERVAL_MS", "5000"), ("SEGMENT_DELTA_VACUUM_RETENTION_HOURS", "30")]);
        let c = c.unwrap();
        assert_eq!(c.flush.interval, Duration::from_secs(5));
        assert_eq!(c.maintenance.vacuum_retention, Duration::from_secs(30 * 3600));
        let e = cfg(&[("SEGMENT_DELTA_MAX_EVENT_BYTES", "10XB")]).unwrap_err().to_string();
        assert!(e.contains("SEGMENT_DELTA_MAX_EVENT_BYTES") && e.contains("is not a size"), "{e}");
    }

    #[test]
    fn cors_origins() {
        assert_eq!(cfg(&[]).unwrap().cors_origins, Origins::Any);
        let c = cfg(&[("SEGMENT_DELTA_CORS_ORIGINS", "https://shop.example, http://localhost:3000")]).unwrap();
        assert!(c.cors_origins.allows("https://shop.example") && c.cors_origins.allows("http://localhost:3000"));
        assert!(!c.cors_origins.allows("https://evil.example"));
        assert_eq!(cfg(&[("SEGMENT_DELTA_CORS_ORIGINS", "https://a.example,*")]).unwrap().cors_origins, Origins::Any);
    }

    #[test]
    fn lake_uris() {
        assert_eq!(Lake::parse("file:///tmp/l").unwrap(), Lake::Local(PathBuf::from("/tmp/l")));
        let remote = Lake::parse("abfss://lake@acct.dfs.core.windows.net/bronze/").unwrap();
        assert_eq!(remote, Lake::Remote("abfss://lake@acct.dfs.core.windows.net/bronze".into()));
    }
}
