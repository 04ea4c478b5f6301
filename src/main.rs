/// jemalloc, for more events per CPU second and less peak memory than glibc's allocator (README, "Where the
/// handler's CPU goes").
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main`: freed pages go back to the system within 600 ms rather than 10 s, which
/// keeps peak memory down under load; sooner costs page faults, which under load are several percent of the CPU.
/// `_RJEM_MALLOC_CONF` in the environment overrides.
// SAFETY: jemalloc reads this symbol as a `const char *` to a NUL-terminated string; a reference to a byte array
// is that pointer, and the bytes end in NUL.
#[cfg(not(target_env = "msvc"))]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: &[u8; 36] = b"dirty_decay_ms:600,muzzy_decay_ms:0\0";

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use segment_delta::app::AppState;
use segment_delta::config::settings;
use segment_delta::config::{Config, check_schema_name};
use segment_delta::databricks::Databricks;
use segment_delta::databricks::setup::{Check, Subject};
use segment_delta::sources::http;

#[derive(Parser)]
#[command(
    name = "segment-delta",
    version,
    about = "Segment events into Delta tables, as an Azure Functions custom handler"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the Segment Tracking API on 127.0.0.1:$FUNCTIONS_CUSTOMHANDLER_PORT (7071 when unset).
    Serve,
    /// Check (and with --apply, prepare) what Unity Catalog needs: credentials, catalog, grants, external
    /// location, warehouse, schemas. Prints a checklist; exits non-zero when something fails.
    Setup {
        /// Create the warehouse and the schemas when they are missing.
        #[arg(long)]
        apply: bool,
        /// The principal whose grants are checked: the application id of the service principal (or the user
        /// name) the function will run as. Default: the one the settings authenticate as (AZURE_CLIENT_ID for the
        /// Entra kinds, DATABRICKS_CLIENT_ID for OAuth M2M), else whoever DATABRICKS_TOKEN belongs to.
        #[arg(long)]
        principal: Option<String>,
    },
    /// Load Segment events from JSONL or JSON files (optionally gzipped) through the same pipeline.
    Ingest {
        /// Schema to load into; defaults to the one schema of SEGMENT_DELTA_SOURCES, or `segment` locally.
        #[arg(long)]
        schema: Option<String>,
        /// Append again what an earlier run of the same files already loaded.
        #[arg(long)]
        force: bool,
        /// Read and map everything, write nothing: print the tables, the columns they would gain, and the discards
        /// by reason.
        #[arg(long)]
        dry_run: bool,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Remove every row of the given users from every table of a schema (privacy deletes), then their discards.
    /// Prints the rows removed per table; safe to run again (a second run removes nothing more).
    Forget {
        /// The schema whose tables are cleaned.
        #[arg(long)]
        schema: String,
        /// A user id to forget. Repeatable.
        #[arg(long = "user-id")]
        user_ids: Vec<String>,
        /// A file of user ids, one per line.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Maintain the tables (what the timer function does): upsert `users` and `accounts`, compact small files,
    /// checkpoint, clean up the log and vacuum. Prints a line per table; exits non-zero when one failed.
    Maintain {
        /// Only these tables: `schema.table`, `schema.*` or a table name in every schema. Repeatable.
        #[arg(long = "table")]
        tables: Vec<String>,
    },
    /// Check the settings and what they point at (like `vector validate`): the settings parse, the storage
    /// credential in effect, a probe object written to and deleted from the lake, and the Unity Catalog checklist
    /// when DATABRICKS_HOST is set. Exits non-zero when something fails.
    Check,
    /// Print what the `discards` table of a schema holds, grouped by table, column and reason, with a count and
    /// one example row id each, most frequent first.
    Discards {
        /// The schema; defaults to the one schema of SEGMENT_DELTA_SOURCES, or `segment` locally.
        #[arg(long)]
        schema: Option<String>,
        /// Only discards received within this long (`1h`, `30m`, `7d`).
        #[arg(long)]
        since: Option<String>,
        /// Only discards of this table.
        #[arg(long)]
        table: Option<String>,
    },
}

/// Each command's `--help` ends with the settings it reads.
fn cli() -> Cli {
    let mut command = Cli::command();
    for (name, bits) in [
        ("serve", settings::SERVE),
        ("setup", settings::SETUP),
        ("ingest", settings::INGEST),
        ("maintain", settings::MAINTAIN),
        ("forget", settings::FORGET),
        ("check", settings::CHECK),
        ("discards", settings::DISCARDS),
    ] {
        command = command.mut_subcommand(name, |c| c.after_help(settings::help_for(bits)));
    }
    let matches = command.get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// Warns of `SEGMENT_DELTA_*` variables that are no setting (a misspelt name is otherwise silently ignored).
fn warn_unknown_settings() {
    let vars: Vec<String> = std::env::vars_os().filter_map(|(k, _)| k.into_string().ok()).collect();
    for (name, closest) in settings::unknown(vars.iter().map(String::as_str)) {
        match closest {
            Some(c) => tracing::warn!(variable = %name, "{name} is not a setting and is ignored; did you mean {c}?"),
            None => tracing::warn!(variable = %name, "{name} is not a setting and is ignored"),
        }
    }
}

/// The schema a command works on: the one given, else the one of SEGMENT_DELTA_SOURCES.
fn one_schema(config: &Config, given: Option<String>) -> anyhow::Result<String> {
    match given {
        Some(s) => {
            check_schema_name("--schema", &s)?;
            Ok(s)
        }
        None => match config.sources.schemas().as_slice() {
            [one] => Ok(one.to_string()),
            [] => anyhow::bail!("no schema is configured: choose one with --schema"),
            _ => anyhow::bail!("several sources are configured: choose one with --schema"),
        },
    }
}

/// Log levels of the libraries this binary uses, unless `RUST_LOG` names them itself: the Delta kernel logs a line
/// per file and table at info level, and deltalake warns of things this writer handles.
const DEPENDENCY_LEVELS: &[(&str, &str)] =
    &[("deltalake", "warn"), ("deltalake_core", "warn"), ("buoyant_kernel", "off"), ("delta_kernel", "off")];

/// The log filter: `RUST_LOG` (else `info`), with the dependencies' levels above for the targets it does not name.
fn log_filter(rust_log: Option<&str>) -> String {
    let user = rust_log.map(str::trim).filter(|s| !s.is_empty()).unwrap_or("info");
    let named: Vec<&str> = user.split(',').filter_map(|d| d.split_once('=').map(|(t, _)| t.trim())).collect();
    let mut directives: Vec<String> = DEPENDENCY_LEVELS
        .iter()
        .filter(|(target, _)| !named.iter().any(|n| n == target || n.starts_with(&format!("{target}::"))))
        .map(|(target, level)| format!("{target}={level}"))
        .collect();
    directives.insert(0, user.to_string());
    directives.join(",")
}

/// Logs go to stderr; under the Functions host, information goes to stdout and only warnings and errors to stderr,
/// because the host logs every stderr line of a custom handler as an error (and a line with "warn" in it as a
/// warning) and every stdout line as information.
fn init_logging(json: bool, under_host: bool) {
    use std::io::IsTerminal;
    use tracing_subscriber::fmt::writer::MakeWriterExt;
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = tracing_subscriber::EnvFilter::try_new(log_filter(rust_log.as_deref())).unwrap_or_else(|e| {
        eprintln!("RUST_LOG: {e}; using info");
        tracing_subscriber::EnvFilter::new(log_filter(None))
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(std::io::stderr().is_terminal());
    match (json, under_host) {
        (true, true) => {
            let writer = std::io::stderr.with_max_level(tracing::Level::WARN).or_else(std::io::stdout);
            builder.json().flatten_event(true).with_writer(writer).init()
        }
        (false, true) => {
            let writer = std::io::stderr.with_max_level(tracing::Level::WARN).or_else(std::io::stdout);
            builder.with_writer(writer).init()
        }
        (true, false) => builder.json().flatten_event(true).with_writer(AboveProgress).init(),
        (false, false) => builder.with_writer(AboveProgress).init(),
    }
}

/// Writes each log line to stderr above the progress bar of a running `ingest`, so that neither tears the other.
struct AboveProgress;

struct Line(Vec<u8>);

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for AboveProgress {
    type Writer = Line;
    fn make_writer(&'a self) -> Line {
        Line(Vec::with_capacity(256))
    }
}

impl std::io::Write for Line {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        use std::io::Write;
        let line = std::mem::take(&mut self.0);
        segment_delta::sources::ingest::above_progress(|| {
            let _ = std::io::stderr().write_all(&line);
        });
    }
}

async fn shutdown_signal(state: AppState) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return ctrl_c.await.unwrap_or(()),
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await.unwrap_or(());
    tracing::info!("shutting down: finishing accepted requests");
    // Write what is waiting now rather than at the end of the flush interval.
    state.stop();
}

/// The catalog for `setup` and `check`: like the function's, but giving up on an unreachable workspace after a
/// few seconds instead of retrying for the write budget.
fn interactive_catalog(db: &segment_delta::config::databricks::DatabricksConfig) -> anyhow::Result<Databricks> {
    let mut db = db.clone();
    db.retry_budget = db.retry_budget.min(std::time::Duration::from_secs(10));
    Ok(Databricks::new(&db)?)
}

/// The catalog side's checklist (`setup`, and `check` without `--apply`) for the grants of `subject`.
async fn catalog_checks(
    config: &Config,
    db: &segment_delta::config::databricks::DatabricksConfig,
    apply: bool,
    subject: Subject,
) -> anyhow::Result<Vec<Check>> {
    let catalog = interactive_catalog(db)?;
    let lake = match &config.lake {
        segment_delta::config::Lake::Remote(uri) => uri.clone(),
        segment_delta::config::Lake::Local(p) => p.display().to_string(),
    };
    Ok(segment_delta::databricks::setup::run_for(&catalog, &lake, &config.sources.schemas(), apply, subject).await)
}

async fn setup(config: Config, apply: bool, principal: Option<String>) -> anyhow::Result<()> {
    let Some(db) = &config.databricks else {
        anyhow::bail!(
            "DATABRICKS_HOST is not set: without it the Delta log is the only catalog and there is nothing to set up"
        );
    };
    let subject = principal.map_or_else(|| Subject::of_settings(&db.auth), Subject::Given);
    let checks = catalog_checks(&config, db, apply, subject).await?;
    for c in &checks {
        println!("{c}");
    }
    let failed = checks.iter().filter(|c| !c.ok).count();
    println!("{} passed, {failed} failed", checks.len() - failed);
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}

async fn serve(config: Config) -> anyhow::Result<()> {
    config.check_serving()?;
    segment_delta::metrics::install();
    let state = AppState::build(config)?;
    let (config, batcher) = (state.config.clone(), state.batcher.clone());
    let addr = SocketAddr::from(([127, 0, 0, 1], config.port));
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    tracing::info!(%addr, lake = ?config.lake, credential = %config.storage.credential, schemas = ?config.sources.schemas(), "serving the Segment Tracking API");
    http::server::run(listener, state.clone(), shutdown_signal(state)).await;
    batcher.shutdown().await;
    tracing::info!("stopped; everything accepted was written");
    Ok(())
}

async fn ingest(
    config: Config,
    schema: Option<String>,
    force: bool,
    dry_run: bool,
    files: Vec<PathBuf>,
) -> anyhow::Result<()> {
    let schema = one_schema(&config, schema)?;
    let state = AppState::build(config)?;
    let batcher = state.batcher.clone();
    let result = segment_delta::sources::ingest::run(&state.config, &batcher, &schema, &files, force, dry_run).await;
    batcher.shutdown().await;
    let summary = result?;
    if let Some(p) = &summary.preview {
        println!("dry run: nothing was written");
        println!("events   {}", summary.events);
        for (table, (rows, _)) in &p.tables {
            let change = match p.new_columns.get(table) {
                Some((true, cols)) => format!(", new table with {} columns", cols.len()),
                Some((false, cols)) => format!(", {} new columns: {}", cols.len(), cols.join(", ")),
                None => String::new(),
            };
            println!("rows     {schema}.{table}: {rows}{change}");
        }
        for ((table, kind), n) in &p.discards {
            println!("discards {}: {n} ({kind})", if table.is_empty() { "(no table)" } else { table });
        }
        if p.forget > 0 {
            println!("deletes  {} users would be forgotten", p.forget);
        }
        return Ok(());
    }
    println!("events   {}", summary.events);
    for (table, rows) in &summary.totals.rows {
        println!("rows     {table}: {rows}");
    }
    println!("discards {}", summary.totals.discards);
    println!("duplicates skipped {}", summary.totals.skipped);
    println!("commits  {}", summary.totals.commits);
    for (table, n) in summary.forgotten.removed.iter().filter(|(_, n)| **n > 0) {
        println!("deleted  {table}: {n} rows of forgotten users");
    }
    println!("seconds  {:.2} ({:.0} events/s)", summary.seconds, summary.events as f64 / summary.seconds.max(1e-9));
    Ok(())
}

async fn maintain(config: Config, tables: Vec<String>) -> anyhow::Result<()> {
    let catalog = segment_delta::app::catalog(&config)?;
    let reports = segment_delta::maintain::run(&config, catalog.as_deref(), &tables).await?;
    if reports.is_empty() {
        println!("no tables found in {:?}", config.lake);
    }
    for r in &reports {
        println!("{r}");
    }
    let failed = reports.iter().filter(|r| r.error.is_some()).count();
    if failed > 0 {
        anyhow::bail!("{failed} of {} tables failed", reports.len());
    }
    Ok(())
}

async fn forget(config: Config, schema: String, mut users: Vec<String>, file: Option<PathBuf>) -> anyhow::Result<()> {
    check_schema_name("--schema", &schema)?;
    if let Some(f) = file {
        let text = std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
        users.extend(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string));
    }
    users.sort();
    users.dedup();
    if users.is_empty() {
        anyhow::bail!("no user to forget: give --user-id or --file");
    }
    let done = segment_delta::maintain::forget::forget(&config, &schema, &users).await?;
    for (table, n) in &done.removed {
        println!("{schema}.{table}: {n} rows removed");
    }
    for (table, e) in &done.failed {
        println!("{schema}.{table}: FAILED: {e}");
    }
    println!("{} users, {} rows removed", users.len(), done.total());
    if !done.failed.is_empty() {
        anyhow::bail!("{} tables still hold rows of these users", done.failed.len());
    }
    Ok(())
}

async fn check(config: Config) -> anyhow::Result<()> {
    let mut failed = 0;
    let mut line = |ok: bool, what: String| {
        println!("[{}] {what}", if ok { "pass" } else { "FAIL" });
        failed += usize::from(!ok);
    };
    line(true, "settings parse".into());
    line(true, format!("lake: {:?}, storage credential in effect: {}", config.lake, config.storage.credential));
    match config.check_serving() {
        Ok(()) => line(true, format!("schemas: {}", config.sources.schemas().join(", "))),
        Err(e) => line(false, e.to_string()),
    }
    match segment_delta::ops::probe_lake(&config).await {
        Ok(detail) => line(true, format!("lake writable: {detail}")),
        Err(e) => line(false, format!("lake not writable: {e}")),
    }
    if config.databricks.is_none() {
        line(true, "Unity Catalog: not configured (DATABRICKS_HOST unset); the Delta log is the only catalog".into());
    }
    if let Some(db) = &config.databricks {
        for c in catalog_checks(&config, db, false, Subject::of_settings(&db.auth)).await? {
            println!("{c}");
            failed += usize::from(!c.ok);
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} checks failed");
    }
    println!("all checks passed");
    Ok(())
}

async fn discards(
    config: Config,
    schema: Option<String>,
    since: Option<String>,
    table: Option<String>,
) -> anyhow::Result<()> {
    let schema = one_schema(&config, schema)?;
    let since = match since {
        None => None,
        Some(s) => {
            let d = segment_delta::config::units::duration(&s, std::time::Duration::from_secs(1))
                .with_context(|| format!("--since {s:?} is not a duration (e.g. 30m, 1h, 7d)"))?;
            Some(segment_delta::layout::value::now_micros() - d.as_micros() as i64)
        }
    };
    let groups = segment_delta::ops::discards::report(&config, &schema, since, table.as_deref()).await?;
    if groups.is_empty() {
        println!("no discards in {schema}");
        return Ok(());
    }
    println!("{:>8}  {:<40}  {:<30}  reason (example row id)", "count", "table", "column");
    let total: u64 = groups.iter().map(|g| g.count).sum();
    for g in &groups {
        println!("{:>8}  {:<40}  {:<30}  {} ({})", g.count, g.table, g.column, g.reason, g.example);
    }
    println!("{total} discards in {} groups", groups.len());
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = cli();
    let config = Config::from_env()?;
    init_logging(config.log_json, std::env::var_os("FUNCTIONS_CUSTOMHANDLER_PORT").is_some());
    warn_unknown_settings();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve => serve(config).await,
            Command::Setup { apply, principal } => setup(config, apply, principal).await,
            Command::Ingest { schema, force, dry_run, files } => ingest(config, schema, force, dry_run, files).await,
            Command::Maintain { tables } => maintain(config, tables).await,
            Command::Forget { schema, user_ids, file } => forget(config, schema, user_ids, file).await,
            Command::Check => check(config).await,
            Command::Discards { schema, since, table } => discards(config, schema, since, table).await,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::log_filter;

    #[test]
    fn rust_log_keeps_the_dependency_levels_it_does_not_name() {
        assert_eq!(log_filter(None), "info,deltalake=warn,deltalake_core=warn,buoyant_kernel=off,delta_kernel=off");
        assert_eq!(
            log_filter(Some("debug,buoyant_kernel=info")),
            "debug,buoyant_kernel=info,deltalake=warn,deltalake_core=warn,delta_kernel=off"
        );
        assert!(tracing_subscriber::EnvFilter::try_new(log_filter(Some("segment_delta=debug"))).is_ok());
    }

    #[cfg(not(target_env = "msvc"))]
    #[test]
    fn the_allocator_options_built_in_are_the_ones_help_shows() {
        let shown = segment_delta::config::settings::SETTINGS.iter().find(|s| s.name == "_RJEM_MALLOC_CONF");
        let built_in = std::str::from_utf8(super::MALLOC_CONF).unwrap().trim_end_matches('\0');
        assert_eq!(shown.map(|s| s.default), Some(built_in));
    }
}
