//! A strict local stand-in for the Databricks APIs segment-delta calls: SQL warehouses, the SQL Statement
//! Execution API (DDL applied to real Delta logs), a slice of Unity Catalog, and the token endpoints of the three
//! ways to authenticate. Tests start it with `--port 0` and read the `listening on http://127.0.0.1:<port>` line.

mod auth;
mod control;
mod delta;
mod errors;
mod exec;
mod http;
mod sql;
mod state;
mod statements;
mod unity;
mod warehouses;

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;

use crate::state::{EntraClient, Grant, Settings, UcColumns};
use crate::warehouses::{WarehouseSeed, WhState};

#[derive(Parser, Debug)]
#[command(name = "databricks-emulator", about = "A strict local Databricks API emulator for tests")]
struct Args {
    /// Port on 127.0.0.1; 0 picks a free one.
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// The personal access token that `/api/` accepts.
    #[arg(long)]
    token: String,
    /// OAuth M2M client id accepted by `POST /oidc/v1/token`.
    #[arg(long, requires = "client_secret")]
    client_id: Option<String>,
    #[arg(long, requires = "client_id")]
    client_secret: Option<String>,
    /// Enables `GET /msi/token` and the `X-IDENTITY-HEADER` value it requires.
    #[arg(long)]
    identity_header: Option<String>,
    /// Enables `POST /<tenant>/oauth2/v2.0/token` for this tenant.
    #[arg(long, requires = "entra_client_id")]
    entra_tenant_id: Option<String>,
    #[arg(long, requires = "entra_tenant_id")]
    entra_client_id: Option<String>,
    #[arg(long, requires = "entra_tenant_id")]
    entra_client_secret: Option<String>,
    /// The client assertion a workload identity must present (the content of its federated token file).
    #[arg(long, requires = "entra_tenant_id")]
    entra_federated_token: Option<String>,
    /// Lifetime of every issued token.
    #[arg(long, default_value_t = 3600)]
    token_ttl_secs: u64,
    /// The caller's name as `GET /api/2.0/preview/scim/v2/Me` reports it.
    #[arg(long, default_value = "segment-delta")]
    principal: String,
    /// How long a warehouse stays STARTING.
    #[arg(long, default_value_t = 300)]
    warehouse_start_ms: u64,
    /// After this long a SUCCEEDED statement reads as CLOSED.
    #[arg(long, default_value_t = 3600)]
    result_ttl_secs: u64,
    /// A catalog that exists (repeatable; default `main`). The first is the default for unqualified names.
    #[arg(long = "catalog")]
    catalogs: Vec<String>,
    /// A schema that exists from the start, as `catalog.schema` (repeatable).
    #[arg(long = "schema", value_parser = parse_schema)]
    schemas: Vec<(String, String)>,
    /// A warehouse as `id:name:state`, state RUNNING, STOPPED or STARTING (repeatable).
    #[arg(long = "warehouse", value_parser = parse_warehouse)]
    warehouses: Vec<WarehouseSeed>,
    /// An external location as `name=url` (repeatable).
    #[arg(long = "external-location", value_parser = parse_location)]
    external_locations: Vec<(String, String)>,
    /// A grant as `principal=P:securable=TYPE/FULL_NAME:privileges=A,B` (repeatable).
    #[arg(long = "grant", value_parser = parse_grant)]
    grants: Vec<Grant>,
    /// Where Unity Catalog's table `columns` come from.
    #[arg(long, value_enum, default_value = "live")]
    uc_columns: UcColumns,
}

fn parse_schema(s: &str) -> Result<(String, String), String> {
    match s.split_once('.') {
        Some((c, sch)) if !c.is_empty() && !sch.is_empty() && !sch.contains('.') => Ok((c.into(), sch.into())),
        _ => Err(format!("'{s}': expected catalog.schema")),
    }
}

fn parse_warehouse(s: &str) -> Result<WarehouseSeed, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let [id, name, state] = parts.as_slice() else {
        return Err(format!("'{s}': expected id:name:state"));
    };
    let state = WhState::parse(&state.to_uppercase())
        .filter(|st| matches!(st, WhState::Running | WhState::Stopped | WhState::Starting))
        .ok_or_else(|| format!("'{s}': state must be RUNNING, STOPPED or STARTING"))?;
    if id.is_empty() || name.is_empty() {
        return Err(format!("'{s}': id and name must not be empty"));
    }
    Ok(WarehouseSeed { id: id.to_string(), name: name.to_string(), state })
}

fn parse_location(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((n, u)) if !n.is_empty() && !u.is_empty() => Ok((n.into(), u.into())),
        _ => Err(format!("'{s}': expected name=url")),
    }
}

fn parse_grant(s: &str) -> Result<Grant, String> {
    let mut principal = None;
    let mut securable = None;
    let mut privileges = None;
    for part in s.split(':') {
        match part.split_once('=') {
            Some(("principal", v)) if !v.is_empty() => principal = Some(v.to_string()),
            Some(("securable", v)) => securable = v.split_once('/').map(|(t, n)| (t.to_lowercase(), n.to_lowercase())),
            Some(("privileges", v)) => {
                privileges = Some(v.split(',').filter(|p| !p.is_empty()).map(|p| p.trim().to_uppercase()).collect())
            }
            _ => return Err(format!("'{s}': unexpected '{part}'")),
        }
    }
    match (principal, securable, privileges) {
        (Some(principal), Some((securable_type, full_name)), Some(privileges)) => {
            Ok(Grant { principal, securable_type, full_name, privileges })
        }
        _ => Err(format!("'{s}': expected principal=P:securable=TYPE/FULL_NAME:privileges=A,B")),
    }
}

fn settings(args: Args) -> Result<Settings, String> {
    let catalogs = if args.catalogs.is_empty() { vec!["main".to_string()] } else { args.catalogs };
    if let Some((c, _)) = args.schemas.iter().find(|(c, _)| !catalogs.iter().any(|k| k.eq_ignore_ascii_case(c))) {
        return Err(format!("--schema names catalog '{c}', which no --catalog creates"));
    }
    let entra = match (args.entra_tenant_id, args.entra_client_id) {
        (Some(tenant_id), Some(client_id)) => {
            if args.entra_client_secret.is_none() && args.entra_federated_token.is_none() {
                return Err("--entra-tenant-id needs --entra-client-secret or --entra-federated-token".into());
            }
            Some(EntraClient {
                tenant_id,
                client_id,
                client_secret: args.entra_client_secret,
                federated_token: args.entra_federated_token,
            })
        }
        _ => None,
    };
    Ok(Settings {
        token: args.token,
        client: args.client_id.zip(args.client_secret),
        identity_header: args.identity_header,
        entra,
        token_ttl: Duration::from_secs(args.token_ttl_secs),
        warehouse_start: Duration::from_millis(args.warehouse_start_ms),
        result_ttl: Duration::from_secs(args.result_ttl_secs),
        catalogs,
        schemas: args.schemas,
        warehouses: args.warehouses,
        external_locations: args.external_locations,
        grants: args.grants,
        uc_columns: args.uc_columns,
        principal: args.principal,
    })
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn,buoyant_kernel=off".into()),
        )
        .init();
    let args = Args::parse();
    let port = args.port;
    let settings = match settings(args) {
        Ok(s) => s,
        Err(message) => {
            eprintln!("databricks-emulator: {message}");
            std::process::exit(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("databricks-emulator: cannot listen on 127.0.0.1:{port}: {e}");
            std::process::exit(1);
        }
    };
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("databricks-emulator: {e}");
            std::process::exit(1);
        }
    };
    let base_url = format!("http://{addr}");
    let emu = Arc::new(state::Emulator::new(settings, base_url.clone()));
    // Warehouses seeded as STARTING become RUNNING after the start delay, like any other start.
    let starting: Vec<String> =
        emu.lock().warehouses.iter().filter(|w| w.state == WhState::Starting).map(|w| w.id.clone()).collect();
    for id in starting {
        warehouses::set_state(&emu, &id, WhState::Starting);
    }
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "listening on {base_url}");
    let _ = stdout.flush();
    warp::serve(http::routes(emu)).incoming(listener).run().await;
}
