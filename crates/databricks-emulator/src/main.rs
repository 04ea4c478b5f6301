//! A strict local stand-in for the Databricks APIs segment-delta calls: SQL warehouses, the SQL Statement
//! Execution API (DDL applied to real Delta logs), a slice of Unity Catalog, and the token endpoints of the three
//! ways to authenticate. Tests start it with `--port 0` and read the `listening on http://127.0.0.1:<port>` line.

mod auth;
mod control;
mod delta;
mod errors;
mod exec;
mod http;
mod scim;
mod sql;
mod state;
mod statements;
mod unity;
mod warehouses;

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;

use crate::scim::{Declared, DeclaredGroup, Directory, Kind};
use crate::state::{EntraClient, Grant, Settings, UcColumns};
use crate::warehouses::{AclEntry, WarehouseSeed, WhState};

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
    /// Whom the personal access token belongs to (`GET /api/2.0/preview/scim/v2/Me`): a declared service
    /// principal's application id or user's name, else a user of that name. It is in the `admins` group.
    #[arg(long, default_value = "segment-delta")]
    principal: String,
    /// A service principal as `application_id=ID[:display_name=NAME][:entitlements=A,B]` (repeatable).
    #[arg(long = "service-principal", value_parser = parse_service_principal)]
    service_principals: Vec<(String, Option<String>, Vec<String>)>,
    /// A user as `user_name=NAME[:entitlements=A,B]` (repeatable).
    #[arg(long = "user", value_parser = parse_user)]
    users: Vec<(String, Vec<String>)>,
    /// A group as `display_name=NAME[:members=A,B][:entitlements=A,B][:workspace_local=true]` (repeatable).
    /// Members are application ids, user names or group names. `users` and `admins` exist already; naming them
    /// sets their entitlements (and adds members to `admins`).
    #[arg(long = "group", value_parser = parse_group)]
    groups: Vec<DeclaredGroup>,
    /// The owner of a catalog, schema or external location as `securable=TYPE/FULL_NAME:principal=P`
    /// (repeatable); the default owner is emulator@example.com.
    #[arg(long = "owner", value_parser = parse_owner)]
    owners: Vec<(String, String, String)>,
    /// A permission on a `--warehouse` as
    /// `warehouse=ID:(user_name|service_principal_name|group_name)=P:level=CAN_USE` (repeatable).
    #[arg(long = "warehouse-permission", value_parser = parse_warehouse_permission)]
    warehouse_permissions: Vec<(String, String, String, String)>,
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

/// `key=value` pairs separated by `:`, each key one of `allowed` and at most once.
fn pairs<'a>(s: &'a str, allowed: &[&str]) -> Result<std::collections::HashMap<&'a str, &'a str>, String> {
    let mut out = std::collections::HashMap::new();
    for part in s.split(':') {
        match part.split_once('=') {
            Some((k, v)) if allowed.contains(&k) && !v.is_empty() && !out.contains_key(k) => {
                out.insert(k, v);
            }
            _ => return Err(format!("'{s}': unexpected '{part}'; the keys are {}", allowed.join(", "))),
        }
    }
    Ok(out)
}

fn list(v: Option<&&str>) -> Vec<String> {
    v.map(|v| v.split(',').map(str::trim).filter(|x| !x.is_empty()).map(str::to_string).collect()).unwrap_or_default()
}

fn entitlement_list(v: Option<&&str>) -> Result<Vec<String>, String> {
    let all = list(v);
    match all.iter().find(|e| !scim::ENTITLEMENTS.contains(&e.as_str())) {
        Some(e) => Err(format!("unknown entitlement '{e}'; expected {}", scim::ENTITLEMENTS.join(", "))),
        None => Ok(all),
    }
}

fn parse_service_principal(s: &str) -> Result<(String, Option<String>, Vec<String>), String> {
    let p = pairs(s, &["application_id", "display_name", "entitlements"])?;
    let app = p.get("application_id").ok_or_else(|| format!("'{s}': application_id is required"))?;
    Ok((app.to_string(), p.get("display_name").map(|n| n.to_string()), entitlement_list(p.get("entitlements"))?))
}

fn parse_user(s: &str) -> Result<(String, Vec<String>), String> {
    let p = pairs(s, &["user_name", "entitlements"])?;
    let name = p.get("user_name").ok_or_else(|| format!("'{s}': user_name is required"))?;
    Ok((name.to_string(), entitlement_list(p.get("entitlements"))?))
}

fn parse_group(s: &str) -> Result<DeclaredGroup, String> {
    let p = pairs(s, &["display_name", "members", "entitlements", "workspace_local"])?;
    let name = p.get("display_name").ok_or_else(|| format!("'{s}': display_name is required"))?;
    let entitlements = match p.get("entitlements") {
        None => None,
        Some(e) if *e == "none" => Some(Vec::new()),
        e => Some(entitlement_list(e)?),
    };
    let local = match p.get("workspace_local").copied() {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => return Err(format!("'{s}': workspace_local is true or false, not '{other}'")),
    };
    let builtin = *name == "users" || *name == "admins";
    if builtin && p.contains_key("workspace_local") {
        return Err(format!("'{s}': `{name}` is a workspace-local group already"));
    }
    Ok(DeclaredGroup {
        display_name: name.to_string(),
        members: list(p.get("members")),
        entitlements,
        workspace_local: local,
    })
}

fn parse_owner(s: &str) -> Result<(String, String, String), String> {
    let p = pairs(s, &["securable", "principal"])?;
    let (t, n) = p
        .get("securable")
        .and_then(|v| v.split_once('/'))
        .ok_or_else(|| format!("'{s}': expected securable=TYPE/FULL_NAME:principal=P"))?;
    let t = t.to_lowercase();
    if !["catalog", "schema", "external_location"].contains(&t.as_str()) {
        return Err(format!("'{s}': owners can be set on a catalog, schema or external_location"));
    }
    let principal = p.get("principal").ok_or_else(|| format!("'{s}': principal is required"))?;
    Ok((t, n.to_lowercase(), principal.to_string()))
}

fn parse_warehouse_permission(s: &str) -> Result<(String, String, String, String), String> {
    let keys = ["warehouse", "user_name", "service_principal_name", "group_name", "level"];
    let p = pairs(s, &keys)?;
    let warehouse = p.get("warehouse").ok_or_else(|| format!("'{s}': warehouse is required"))?;
    let named: Vec<&str> = keys[1..4].iter().copied().filter(|k| p.contains_key(k)).collect();
    let [key] = named.as_slice() else {
        return Err(format!("'{s}': exactly one of user_name, service_principal_name, group_name"));
    };
    let level = p.get("level").copied().unwrap_or("");
    if !warehouses::LEVELS.contains(&level) {
        return Err(format!("'{s}': level must be one of {}", warehouses::LEVELS.join(", ")));
    }
    Ok((warehouse.to_string(), key.to_string(), p[key].to_string(), level.to_string()))
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
    let declared = Declared { service_principals: args.service_principals, users: args.users, groups: args.groups };
    let mut implicit_sps: Vec<&str> = Vec::new();
    if let (Some(id), Some(_)) = (&args.client_id, &args.client_secret) {
        implicit_sps.push(id);
    }
    if let Some(e) = &entra {
        implicit_sps.push(&e.client_id);
    }
    let directory = Directory::build(&declared, &args.principal, &[unity::OWNER], &implicit_sps)?;
    let unknown = |p: &str, flag: &str| {
        format!(
            "{flag}: Could not find principal with name {p} (declare it with --service-principal, --user or \
             --group; workspace-local groups are not Unity Catalog principals)"
        )
    };
    if let Some(g) = args.grants.iter().find(|g| !directory.uc_principal(&g.principal)) {
        return Err(unknown(&g.principal, "--grant"));
    }
    for (t, n, p) in &args.owners {
        let exists = match t.as_str() {
            "catalog" => catalogs.iter().any(|c| c.eq_ignore_ascii_case(n)),
            "schema" => n.split_once('.').is_some_and(|(c, s)| {
                args.schemas.iter().any(|(a, b)| a.eq_ignore_ascii_case(c) && b.eq_ignore_ascii_case(s))
                    || (catalogs.iter().any(|k| k.eq_ignore_ascii_case(c))
                        && (s == "default" || s == "information_schema"))
            }),
            _ => args.external_locations.iter().any(|(name, _)| name.eq_ignore_ascii_case(n)),
        };
        if !exists {
            return Err(format!("--owner: there is no {t} '{n}'"));
        }
        if !directory.uc_principal(p) {
            return Err(unknown(p, "--owner"));
        }
    }
    let mut warehouse_acl = Vec::new();
    for (w, key, p, level) in args.warehouse_permissions {
        if !args.warehouses.iter().any(|s| s.id == w) {
            return Err(format!("--warehouse-permission: no --warehouse has the id '{w}'"));
        }
        let kind = match key.as_str() {
            "user_name" => Kind::User,
            "service_principal_name" => Kind::ServicePrincipal,
            _ => Kind::Group,
        };
        let known = match kind {
            Kind::User => directory.user(&p).is_some(),
            Kind::ServicePrincipal => directory.sp(&p).is_some(),
            Kind::Group => directory.group(&p).is_some(),
        };
        if !known {
            return Err(format!("--warehouse-permission: {key} '{p}' is not declared"));
        }
        warehouse_acl.push((w, AclEntry { kind, principal: p, level }));
    }
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
        directory,
        owners: args.owners,
        warehouse_acl,
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
