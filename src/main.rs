use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use segment_delta::app::AppState;
use segment_delta::config::{Config, check_schema_name};
use segment_delta::databricks::Databricks;
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
    },
    /// Load Segment events from JSONL or JSON files (optionally gzipped) through the same pipeline.
    Ingest {
        /// Schema to load into; defaults to the one schema of SEGMENT_DELTA_SOURCES, or `segment` locally.
        #[arg(long)]
        schema: Option<String>,
        /// Append again what an earlier run of the same files already loaded.
        #[arg(long)]
        force: bool,
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
        (true, false) => builder.json().flatten_event(true).with_writer(std::io::stderr).init(),
        (false, false) => builder.with_writer(std::io::stderr).init(),
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

async fn setup(config: Config, apply: bool) -> anyhow::Result<()> {
    let Some(db) = &config.databricks else {
        anyhow::bail!(
            "DATABRICKS_HOST is not set: without it the Delta log is the only catalog and there is nothing to set up"
        );
    };
    let catalog = Databricks::new(db)?;
    let lake = match &config.lake {
        segment_delta::config::Lake::Remote(uri) => uri.clone(),
        segment_delta::config::Lake::Local(p) => p.display().to_string(),
    };
    let checks = segment_delta::databricks::setup::run(&catalog, &lake, &config.sources.schemas(), apply).await;
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

async fn ingest(config: Config, schema: Option<String>, force: bool, files: Vec<PathBuf>) -> anyhow::Result<()> {
    let schema = match schema {
        Some(s) => {
            check_schema_name("--schema", &s)?;
            s
        }
        None => match config.sources.schemas().as_slice() {
            [one] => one.to_string(),
            _ => anyhow::bail!("several sources are configured: choose one with --schema"),
        },
    };
    let state = AppState::build(config)?;
    let batcher = state.batcher.clone();
    let result = segment_delta::sources::ingest::run(&state.config, &batcher, &schema, &files, force).await;
    batcher.shutdown().await;
    let summary = result?;
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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = Config::from_env()?;
    init_logging(config.log_json, std::env::var_os("FUNCTIONS_CUSTOMHANDLER_PORT").is_some());
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve => serve(config).await,
            Command::Setup { apply } => setup(config, apply).await,
            Command::Ingest { schema, force, files } => ingest(config, schema, force, files).await,
            Command::Maintain { tables } => maintain(config, tables).await,
            Command::Forget { schema, user_ids, file } => forget(config, schema, user_ids, file).await,
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
}
