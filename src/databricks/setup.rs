//! `segment-delta setup`: checks everything the catalog side needs and prints a checklist with the fix for each
//! failure. It changes nothing unless asked (`--apply`: create the warehouse and the schemas).
//!
//! The grants checked are those of the identity the function runs as (the principal): given with `--principal`,
//! else the service principal the settings authenticate as, else whoever the credentials belong to. They are read
//! as Unity Catalog resolves them: privileges granted on the securable or inherited from its parents (the
//! effective permissions), those granted to the account groups the principal is in, and ownership (an owner, or
//! a member of an owning group, holds every privilege). Workspace entitlements and the warehouse's permissions
//! count what the principal's groups have too.

use std::collections::BTreeMap;

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::Method;
use serde_json::Value;

use crate::config::databricks::{AZURE_CLI_ACCOUNT, Auth};
use crate::databricks::client::{ApiError, Client};
use crate::databricks::{Databricks, warehouse};

/// One line of the checklist.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub ok: bool,
    /// Not a failure, but not verified either: what could not be read, and who could read it.
    pub warn: bool,
    pub what: String,
    pub fix: Option<String>,
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mark = match (self.ok, self.warn) {
            (false, _) => "FAIL",
            (true, true) => "warn",
            (true, false) => "pass",
        };
        write!(f, "[{mark}] {}", self.what)?;
        if let Some(fix) = &self.fix {
            write!(f, "\n       {}: {fix}", if self.warn { "to verify" } else { "fix" })?;
        }
        Ok(())
    }
}

fn pass(what: impl Into<String>) -> Check {
    Check { ok: true, warn: false, what: what.into(), fix: None }
}

fn fail(what: impl Into<String>, fix: impl Into<String>) -> Check {
    Check { ok: false, warn: false, what: what.into(), fix: Some(fix.into()) }
}

/// Could not be verified with the credentials at hand: not counted as a failure.
fn warn(what: impl Into<String>, how: impl Into<String>) -> Check {
    Check { ok: true, warn: true, what: what.into(), fix: Some(how.into()) }
}

/// Whether the service refused to show something to these credentials.
fn refused(e: &ApiError) -> bool {
    e.status() == Some(403)
}

/// Whose grants the checklist checks.
#[derive(Debug, Clone, PartialEq)]
pub enum Subject {
    /// Named with `--principal`: an application id, or a user name.
    Given(String),
    /// The client id the settings authenticate with, and the setting it comes from.
    Configured { id: String, setting: &'static str },
    /// Whoever the credentials belong to, as the workspace answers (SCIM `Me`).
    Caller,
}

impl Subject {
    /// The identity the settings authenticate as, when they name it: the OAuth client id, or the Entra
    /// application (client) id, which is the service principal's application id. A personal access token and a
    /// system-assigned managed identity name nobody: the workspace is asked.
    pub fn of_settings(auth: &Auth) -> Subject {
        match auth {
            Auth::OAuthM2m { client_id, .. } => {
                Subject::Configured { id: client_id.clone(), setting: "DATABRICKS_CLIENT_ID" }
            }
            Auth::AzureClientSecret { client_id, .. }
            | Auth::AzureWorkloadIdentity { client_id, .. }
            | Auth::AzureMsi { client_id: Some(client_id), .. } => {
                Subject::Configured { id: client_id.clone(), setting: "AZURE_CLIENT_ID" }
            }
            Auth::Pat(_) | Auth::AzureCli { .. } | Auth::AzureMsi { client_id: None, .. } => Subject::Caller,
        }
    }
}

/// The privileges the loader uses on the catalog: it creates schemas and external tables, adds columns, and
/// reads and writes rows (`DELETE` for `forget`, `OPTIMIZE`). Checked whole when the schemas are not known.
const CATALOG_PRIVILEGES: [&str; 6] =
    ["USE_CATALOG", "USE_SCHEMA", "CREATE_SCHEMA", "CREATE_TABLE", "MODIFY", "SELECT"];
/// What the loader uses on a schema that exists (granted on it, or inherited from the catalog).
const SCHEMA_PRIVILEGES: [&str; 4] = ["USE_SCHEMA", "CREATE_TABLE", "MODIFY", "SELECT"];
/// On the external location holding the lake: tables are created on it and its files read and written.
const LOCATION_PRIVILEGES: [&str; 3] = ["CREATE_EXTERNAL_TABLE", "READ_FILES", "WRITE_FILES"];
/// Warehouse permission levels that let a principal run statements.
const USE_LEVELS: [&str; 3] = ["CAN_USE", "CAN_MANAGE", "IS_OWNER"];

/// Checks the catalog side for the principal named with `--principal`, else for whoever the credentials belong
/// to. [`run_for`] takes the principal from the settings as well.
pub async fn run(
    catalog: &Databricks,
    lake_uri: &str,
    schemas: &[&str],
    apply: bool,
    principal: Option<&str>,
) -> Vec<Check> {
    let subject = principal.map_or(Subject::Caller, |p| Subject::Given(p.to_string()));
    run_for(catalog, lake_uri, schemas, apply, subject).await
}

pub async fn run_for(
    catalog: &Databricks,
    lake_uri: &str,
    schemas: &[&str],
    apply: bool,
    subject: Subject,
) -> Vec<Check> {
    let client = catalog.client();
    let name = &catalog.catalog;
    let mut out = Vec::new();
    let via_cli = client.personal_owner() == Some(AZURE_CLI_ACCOUNT);
    // Reachability and credentials: any authenticated call answers both.
    let (caller, me) = match client.call(Method::GET, "/api/2.0/preview/scim/v2/Me", None).await {
        Ok(v) => {
            let me = v["applicationId"].as_str().or(v["userName"].as_str()).unwrap_or_default().to_string();
            if me.is_empty() {
                out.push(fail(
                    format!(
                        "{} answered, but did not say whom the credentials ({}) belong to",
                        client.host,
                        client.auth_kind()
                    ),
                    "check DATABRICKS_HOST: it must be the workspace URL (https://adb-<id>.<n>.azuredatabricks.net)",
                ));
                return out;
            }
            out.push(pass(format!("{} reached; credentials ({}) accepted as {me}", client.host, client.auth_kind())));
            (me, v)
        }
        Err(e) if e.status() == Some(401) || e.status() == Some(403) => {
            let fix = if via_cli {
                "the Azure CLI's account is not a user of this workspace, or its token is for another tenant: run \
                 `az login --tenant <the workspace's tenant>` (or set AZURE_TENANT_ID)"
            } else {
                "add the identity to the workspace as a service principal with `Databricks SQL access`, or fix \
                 DATABRICKS_TOKEN / DATABRICKS_CLIENT_ID / DATABRICKS_CLIENT_SECRET"
            };
            out.push(fail(format!("credentials ({}) refused: {e}", client.auth_kind()), fix));
            return out;
        }
        Err(ApiError::Auth(e)) => {
            let fix = if via_cli {
                "run `az login` (with `--tenant` or AZURE_TENANT_ID for the workspace's tenant), or choose another \
                 credential with DATABRICKS_AUTH_TYPE"
            } else {
                "check the credential settings (DATABRICKS_AUTH_TYPE and the variables it needs)"
            };
            out.push(fail(format!("no Databricks token: {e}"), fix));
            return out;
        }
        Err(e) => {
            out.push(fail(format!("{} not reachable: {e}", client.host), "check DATABRICKS_HOST (the workspace URL)"));
            return out;
        }
    };
    let (principal, why) = match subject {
        Subject::Given(p) => (p, "given with --principal".to_string()),
        Subject::Configured { id, setting } => {
            let answered = if caller.eq_ignore_ascii_case(&id) {
                String::new()
            } else {
                format!("; the workspace answers as {caller}")
            };
            (id, format!("the service principal these settings authenticate as ({setting}){answered}"))
        }
        Subject::Caller if client.personal_owner().is_some() => (
            caller.clone(),
            format!(
                "{}; if the function runs as another identity (its managed identity or service principal), run \
                 `segment-delta setup --principal <its application id>`",
                client.personal_owner().unwrap_or_default()
            ),
        ),
        Subject::Caller => {
            (caller.clone(), format!("the identity these settings authenticate as ({})", client.auth_kind()))
        }
    };
    out.push(pass(format!("checking the grants of {principal}: {why}")));

    let ident = if principal.eq_ignore_ascii_case(&caller) {
        // The caller may always read itself, groups and entitlements included.
        let kind = if me["applicationId"].is_string() || uuid::Uuid::parse_str(&caller).is_ok() {
            Kind::ServicePrincipal
        } else {
            Kind::User
        };
        identity_of(client, &principal, kind, &me).await
    } else {
        match identity(client, &principal).await {
            Ok(i) => i,
            Err(e) => {
                out.push(warn(
                    format!(
                        "cannot look {principal} up in the workspace ({e}): its entitlements and groups are not checked"
                    ),
                    "run setup with a workspace admin's credentials, or check them in Settings → Identity and access",
                ));
                Identity::withheld(&principal, None)
            }
        }
    };
    out.extend(entitlement_checks(&ident));

    let owner = match client.call(Method::GET, &format!("/api/2.1/unity-catalog/catalogs/{name}"), None).await {
        Ok(c) => {
            out.push(pass(format!("catalog {name} exists")));
            Some(c["owner"].as_str().unwrap_or_default().to_string())
        }
        Err(e) => {
            out.push(fail(
                format!("catalog {name}: {e}"),
                format!("CREATE CATALOG `{name}`; or set DATABRICKS_CATALOG"),
            ));
            None
        }
    };
    // The schemas that exist, with their owners: on those the loader needs its table privileges (granted there
    // or inherited from the catalog); for the others, CREATE SCHEMA on the catalog (it then owns them).
    let mut existing: Vec<(String, String)> = Vec::new();
    for schema in schemas {
        let full = format!("{name}.{schema}");
        let path = format!("/api/2.1/unity-catalog/schemas/{}", encode_name(&full));
        if let Ok(v) = client.call(Method::GET, &path, None).await {
            existing.push((full, v["owner"].as_str().unwrap_or_default().to_string()));
        }
    }
    if let Some(owner) = owner {
        let securable = Securable { kind: "catalog", keyword: "CATALOG", name };
        let needed: Vec<&str> = if schemas.is_empty() {
            CATALOG_PRIVILEGES.to_vec()
        } else if existing.len() < schemas.len() {
            vec!["USE_CATALOG", "CREATE_SCHEMA"]
        } else {
            vec!["USE_CATALOG"]
        };
        out.push(privilege_check(client, &ident, &securable, &owner, &needed).await);
    }
    for (full, owner) in &existing {
        let securable = Securable { kind: "schema", keyword: "SCHEMA", name: full };
        out.push(privilege_check(client, &ident, &securable, owner, &SCHEMA_PRIVILEGES).await);
    }

    match client.call(Method::GET, "/api/2.1/unity-catalog/external-locations", None).await {
        Ok(list) => {
            // The most specific location whose URL holds the lake.
            let location = list["external_locations"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|l| l["url"].as_str().is_some_and(|u| covers(u, lake_uri)))
                .max_by_key(|l| l["url"].as_str().map_or(0, str::len));
            match location {
                Some(l) => {
                    let lname = l["name"].as_str().unwrap_or_default().to_string();
                    out.push(pass(format!("the lake {lake_uri} is inside external location {lname}")));
                    let path = format!("/api/2.1/unity-catalog/external-locations/{}", encode_name(&lname));
                    let owner = match client.call(Method::GET, &path, None).await {
                        Ok(full) => full["owner"].as_str().unwrap_or_default().to_string(),
                        Err(_) => l["owner"].as_str().unwrap_or_default().to_string(),
                    };
                    let securable = Securable { kind: "external_location", keyword: "EXTERNAL LOCATION", name: &lname };
                    out.push(privilege_check(client, &ident, &securable, &owner, &LOCATION_PRIVILEGES).await);
                }
                None => out.push(fail(
                    format!("no external location covers the lake {lake_uri}"),
                    "create a storage credential from the access connector and an external location whose URL is the lake container (see docs/deploy.md)",
                )),
            }
        }
        Err(e) => {
            out.push(fail(format!("cannot list external locations: {e}"), "grant the identity BROWSE on the metastore"))
        }
    }

    match warehouse::resolve(client, catalog.configured_warehouse(), apply).await {
        Ok((id, created)) => {
            out.push(pass(format!("SQL warehouse {id} {}", if created { "created" } else { "found" })));
            out.push(warehouse_check(client, &ident, &id).await);
        }
        Err(e) => out.push(fail(
            format!("SQL warehouse: {e}"),
            "set DATABRICKS_WAREHOUSE_ID, or run `segment-delta setup --apply` to create a 2X-Small serverless warehouse named segment-delta",
        )),
    }
    // The schemas' existence was read above.
    for schema in schemas {
        let full = format!("{name}.{schema}");
        if existing.iter().any(|(f, _)| *f == full) {
            out.push(pass(format!("schema {full} exists")));
        } else if apply {
            match catalog.run(&super::sql::create_schema(name, schema)).await {
                Ok(_) => out.push(pass(format!("schema {full} created"))),
                Err(e) => {
                    out.push(fail(format!("schema {full} could not be created: {e}"), "check the catalog grants above"))
                }
            }
        } else {
            out.push(fail(
                format!("schema {full} does not exist yet"),
                "it is created with the first table; or run `segment-delta setup --apply`",
            ));
        }
    }
    out
}

/// Whether an external location's URL holds the lake: the same URL, or a parent directory of it.
fn covers(location: &str, lake: &str) -> bool {
    let location = location.trim_end_matches('/');
    lake.strip_prefix(location).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

fn encode(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

/// A securable's name as one path segment: everything but letters, digits and `.`, `-`, `_` percent-encoded.
fn encode_name(s: &str) -> String {
    const KEEP: &percent_encoding::AsciiSet = &NON_ALPHANUMERIC.remove(b'.').remove(b'-').remove(b'_');
    utf8_percent_encode(s, KEEP).to_string()
}

/// Upper case with `_` for spaces, as the APIs name privileges.
fn privilege_name(s: &str) -> String {
    s.trim().to_ascii_uppercase().replace(' ', "_")
}

/// As GRANT statements name privileges.
fn sql_name(s: &str) -> String {
    s.replace('_', " ")
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    ServicePrincipal,
    User,
}

#[derive(Debug, Clone)]
struct Group {
    id: String,
    name: String,
    /// An account group (a Unity Catalog principal); `None` when the group could not be read.
    account: Option<bool>,
    entitlements: Vec<String>,
}

/// The principal as the workspace knows it: what it is, its own entitlements and every group it is in (groups
/// of groups included).
#[derive(Debug, Clone)]
struct Identity {
    name: String,
    /// `None`: neither a service principal nor a user of this workspace (or it could not be looked up).
    kind: Option<(Kind, String)>,
    entitlements: Vec<String>,
    groups: Vec<Group>,
    /// Whether its entitlements and groups could be read: a workspace shows them to admins (and to the
    /// principal itself) only.
    details: bool,
}

impl Identity {
    fn unknown(name: &str) -> Identity {
        Identity { name: name.to_string(), kind: None, entitlements: Vec::new(), groups: Vec::new(), details: true }
    }

    /// Known to exist (`kind`) or not even that, but with its entitlements and groups hidden from the caller.
    fn withheld(name: &str, kind: Option<(Kind, String)>) -> Identity {
        Identity { name: name.to_string(), kind, entitlements: Vec::new(), groups: Vec::new(), details: false }
    }

    fn is_group(&self, name: &str) -> Option<&Group> {
        self.groups.iter().find(|g| g.name == name)
    }

    fn is_self(&self, name: &str) -> bool {
        name.eq_ignore_ascii_case(&self.name)
    }

    /// The JSON key naming this principal in a workspace access control list.
    fn acl_key(&self) -> &'static str {
        match self.kind {
            Some((Kind::User, _)) => "user_name",
            Some((Kind::ServicePrincipal, _)) => "service_principal_name",
            None if uuid::Uuid::parse_str(&self.name).is_ok() => "service_principal_name",
            None => "user_name",
        }
    }
}

fn values(v: &Value, key: &str) -> Vec<String> {
    v[key].as_array().into_iter().flatten().filter_map(|e| e["value"].as_str().map(str::to_string)).collect()
}

/// Looks the principal up with SCIM: a service principal by application id, else a user by user name; then
/// every group it is in, following groups of groups.
async fn identity(client: &Client, name: &str) -> Result<Identity, ApiError> {
    let quoted = format!("\"{}\"", name.replace('\\', "\\\\").replace('"', "\\\""));
    let mut found = None;
    for (resource, attribute, kind) in
        [("ServicePrincipals", "applicationId", Kind::ServicePrincipal), ("Users", "userName", Kind::User)]
    {
        let filter = encode(&format!("{attribute} eq {quoted}"));
        let list =
            client.call(Method::GET, &format!("/api/2.0/preview/scim/v2/{resource}?filter={filter}"), None).await?;
        if let Some(r) = list["Resources"].as_array().and_then(|r| r.first()) {
            found = Some((kind, r.clone()));
            break;
        }
    }
    let Some((kind, resource)) = found else {
        return Ok(Identity::unknown(name));
    };
    // To a caller who is not an admin, the lists show only the id and display name.
    if !resource["applicationId"].is_string() && !resource["userName"].is_string() {
        let id = resource["id"].as_str().unwrap_or_default().to_string();
        return Ok(Identity::withheld(name, Some((kind, id))));
    }
    Ok(identity_of(client, name, kind, &resource).await)
}

/// The identity a SCIM resource (a list entry, or `Me`) describes, with every group it is in.
async fn identity_of(client: &Client, name: &str, kind: Kind, resource: &Value) -> Identity {
    let mut ident = Identity {
        name: name.to_string(),
        kind: Some((kind, resource["id"].as_str().unwrap_or_default().to_string())),
        entitlements: values(resource, "entitlements"),
        groups: Vec::new(),
        details: true,
    };
    let refs = |v: &Value| -> Vec<(String, String)> {
        v["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|g| Some((g["value"].as_str()?.to_string(), g["display"].as_str().unwrap_or("").to_string())))
            .collect()
    };
    let mut queue = refs(resource);
    while let Some((id, display)) = queue.pop() {
        if ident.groups.iter().any(|g| g.id == id) {
            continue;
        }
        match client.call(Method::GET, &format!("/api/2.0/preview/scim/v2/Groups/{}", encode(&id)), None).await {
            Ok(g) => {
                queue.extend(refs(&g));
                ident.groups.push(Group {
                    id,
                    name: g["displayName"].as_str().unwrap_or(&display).to_string(),
                    account: Some(g["meta"]["resourceType"].as_str() != Some("WorkspaceGroup")),
                    entitlements: values(&g, "entitlements"),
                });
            }
            Err(_) => ident.groups.push(Group { id, name: display, account: None, entitlements: Vec::new() }),
        }
    }
    ident
}

/// Where an entitlement comes from: the principal itself, or the first group that has it.
fn entitlement_source(ident: &Identity, entitlement: &str) -> Option<String> {
    if ident.entitlements.iter().any(|e| e == entitlement) {
        return Some("directly".into());
    }
    ident
        .groups
        .iter()
        .find(|g| g.entitlements.iter().any(|e| e == entitlement))
        .map(|g| format!("through group {}", g.name))
}

/// `databricks-sql-access` is needed (statements run on a SQL warehouse); `allow-cluster-create` is reported.
fn entitlement_checks(ident: &Identity) -> Vec<Check> {
    let p = &ident.name;
    if !ident.details {
        if ident.kind.is_some() {
            return vec![warn(
                format!("{p} is in the workspace, but its entitlements and groups are shown to admins only"),
                format!(
                    "run setup with a workspace admin's credentials, or check that {p} has Databricks SQL access in Settings → Identity and access"
                ),
            )];
        }
        return Vec::new();
    }
    let Some((kind, id)) = &ident.kind else {
        return vec![fail(
            format!("{p} is neither a service principal (by application id) nor a user of this workspace"),
            format!(
                "add it to the workspace: Settings → Identity and access → Service principals → Add (application id {p}); a managed identity's application id is its client id"
            ),
        )];
    };
    let what = if *kind == Kind::ServicePrincipal { "service principal" } else { "user" };
    let mut out = Vec::new();
    match entitlement_source(ident, "databricks-sql-access") {
        Some(from) => out.push(pass(format!("{what} {p} has the databricks-sql-access entitlement {from}"))),
        None => {
            let groups: Vec<&str> = ident.groups.iter().map(|g| g.name.as_str()).collect();
            let none =
                if groups.is_empty() { String::new() } else { format!(" (nor do its groups {})", groups.join(", ")) };
            let command = if *kind == Kind::ServicePrincipal { "service-principals" } else { "users" };
            let screen = if *kind == Kind::ServicePrincipal { "Service principals" } else { "Users" };
            out.push(fail(
                format!("{what} {p} lacks the databricks-sql-access entitlement{none}: it cannot use a SQL warehouse"),
                format!(
                    "databricks {command} patch {id} --json '{{\"schemas\":[\"urn:ietf:params:scim:api:messages:2.0:PatchOp\"],\"Operations\":[{{\"op\":\"add\",\"path\":\"entitlements\",\"value\":[{{\"value\":\"databricks-sql-access\"}}]}}]}}'; or Settings → Identity and access → {screen} → {p} → Databricks SQL access"
                ),
            ));
        }
    }
    out.push(pass(match entitlement_source(ident, "allow-cluster-create") {
        Some(from) => format!("{p} may create clusters (allow-cluster-create {from}); segment-delta does not need it"),
        None => format!("{p} may not create clusters (no allow-cluster-create); segment-delta does not need it"),
    }));
    out
}

/// A Unity Catalog securable: its type as the API's path names it, as GRANT names it, and its full name.
struct Securable<'a> {
    kind: &'a str,
    keyword: &'a str,
    name: &'a str,
}

impl Securable<'_> {
    fn describe(&self) -> String {
        format!("{} {}", self.kind.replace('_', " "), self.name)
    }
}

/// The privileges the principal holds on a securable and where each comes from, from the effective permissions
/// of the principal and of each account group it is in (the API lists a group's grants under the group).
async fn privilege_check(
    client: &Client,
    ident: &Identity,
    securable: &Securable<'_>,
    owner: &str,
    needed: &[&str],
) -> Check {
    let p = &ident.name;
    let what = securable.describe();
    // An owner (or a member of an owning group) holds every privilege; an empty owner is nobody.
    if !owner.is_empty() {
        if ident.is_self(owner) {
            return pass(format!("{p} owns {what}: every privilege"));
        }
        if let Some(g) = ident.is_group(owner) {
            return pass(format!("{p} is in group {}, which owns {what}: every privilege", g.name));
        }
    }
    let mut principals = vec![p.clone()];
    principals.extend(ident.groups.iter().filter(|g| g.account != Some(false)).map(|g| g.name.clone()));
    // privilege → where it comes from (the first source found).
    let mut held: BTreeMap<String, String> = BTreeMap::new();
    for (i, q) in principals.iter().enumerate() {
        let path = format!(
            "/api/2.1/unity-catalog/effective-permissions/{}/{}?principal={}",
            securable.kind,
            encode_name(securable.name),
            encode(q)
        );
        let answer = match client.call(Method::GET, &path, None).await {
            Ok(a) => a,
            // A group Unity Catalog does not know (or does not let us read) conveys nothing we can see.
            Err(_) if i > 0 => continue,
            Err(e) => {
                let problem = format!("cannot read the effective permissions of {p} on {what}: {e}");
                let readers =
                    format!("run setup as the owner of {what}, a metastore admin, or a principal with MANAGE on it");
                return match &e {
                    ApiError::Http { error_code, .. } if error_code == "PRINCIPAL_DOES_NOT_EXIST" => fail(
                        problem,
                        format!(
                            "Unity Catalog does not know {p}: add the service principal to the Databricks account and the workspace"
                        ),
                    ),
                    // Refused to the credentials at hand, not shown to lack anything.
                    _ if refused(&e) => warn(problem, readers),
                    _ => fail(problem, readers),
                };
            }
        };
        for a in answer["privilege_assignments"].as_array().into_iter().flatten() {
            let holder = a["principal"].as_str().unwrap_or_default();
            // Its own grants, or a group's it is in (should the service list those under the group).
            let source = if ident.is_self(holder) {
                "granted directly".to_string()
            } else if ident.is_group(holder).is_some() {
                format!("through group {holder}")
            } else {
                continue;
            };
            for privilege in a["privileges"].as_array().into_iter().flatten() {
                let (name, from) = match privilege {
                    Value::String(s) => (privilege_name(s), None),
                    v => (
                        privilege_name(v["privilege"].as_str().unwrap_or_default()),
                        v["inherited_from_name"].as_str().map(|n| {
                            let t = v["inherited_from_type"].as_str().unwrap_or("securable").to_ascii_lowercase();
                            format!("{} {n}", t.replace('_', " "))
                        }),
                    ),
                };
                let source = match (from, source.as_str()) {
                    (Some(f), "granted directly") => format!("inherited from {f}"),
                    (Some(f), s) => format!("{s} (inherited from {f})"),
                    (None, s) => s.to_string(),
                };
                held.entry(name).or_insert(source);
            }
        }
    }
    let all = held.get("ALL_PRIVILEGES").cloned();
    let missing: Vec<&str> = needed.iter().copied().filter(|n| all.is_none() && !held.contains_key(*n)).collect();
    // The relevant privileges held, grouped by where they come from.
    let mut by_source: Vec<(String, Vec<String>)> = Vec::new();
    for privilege in std::iter::once(&"ALL_PRIVILEGES").chain(needed) {
        let Some(source) = held.get(*privilege) else { continue };
        match by_source.iter_mut().find(|(s, _)| s == source) {
            Some((_, list)) => list.push(sql_name(privilege)),
            None => by_source.push((source.clone(), vec![sql_name(privilege)])),
        }
    }
    let summary =
        by_source.iter().map(|(source, list)| format!("{} {source}", list.join(", "))).collect::<Vec<_>>().join("; ");
    if missing.is_empty() {
        let list = needed.iter().map(|n| sql_name(n)).collect::<Vec<_>>().join(", ");
        return pass(format!("{p} has {list} on {what}: {summary}"));
    }
    let lacks = missing.iter().map(|n| sql_name(n)).collect::<Vec<_>>().join(", ");
    let has = if summary.is_empty() { String::new() } else { format!(" (it has {summary})") };
    if !ident.details {
        return warn(
            format!(
                "{p} holds no {lacks} on {what} of its own{has}; its groups could not be read, so it may hold them through one"
            ),
            format!(
                "run setup with a workspace admin's credentials; else GRANT {lacks} ON {} `{}` TO `{p}`",
                securable.keyword, securable.name
            ),
        );
    }
    fail(
        format!("{p} lacks {lacks} on {what}{has}"),
        format!("GRANT {lacks} ON {} `{}` TO `{p}`", securable.keyword, securable.name),
    )
}

/// Whether the principal may run statements on the warehouse: `CAN_USE` or more, its own or a group's.
async fn warehouse_check(client: &Client, ident: &Identity, id: &str) -> Check {
    let p = &ident.name;
    let acl = match client.call(Method::GET, &format!("/api/2.0/permissions/warehouses/{}", encode(id)), None).await {
        Ok(a) => a,
        Err(e) if refused(&e) => {
            return warn(
                format!("cannot read the permissions of SQL warehouse {id}: {e}"),
                format!("run setup as a workspace admin or with CAN MANAGE on the warehouse; {p} needs CAN USE"),
            );
        }
        Err(e) => {
            return fail(
                format!("cannot read the permissions of SQL warehouse {id}: {e}"),
                "run setup as a workspace admin or with CAN MANAGE on the warehouse",
            );
        }
    };
    let mut best: Option<(usize, String, String)> = None; // (rank, level, source)
    let rank =
        |level: &str| ["CAN_VIEW", "CAN_MONITOR", "CAN_USE", "CAN_MANAGE", "IS_OWNER"].iter().position(|l| *l == level);
    for entry in acl["access_control_list"].as_array().into_iter().flatten() {
        let own = ["user_name", "service_principal_name"]
            .iter()
            .any(|k| entry[*k].as_str().is_some_and(|n| ident.is_self(n)));
        let group = entry["group_name"].as_str().filter(|g| ident.is_group(g).is_some());
        let source = match (own, group) {
            (true, _) => "directly".to_string(),
            (false, Some(g)) => format!("through group {g}"),
            _ => continue,
        };
        for permission in entry["all_permissions"].as_array().into_iter().flatten() {
            let level = permission["permission_level"].as_str().unwrap_or_default();
            let Some(r) = rank(level) else { continue };
            let inherited: Vec<&str> = permission["inherited_from_object"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let source = if inherited.is_empty() {
                source.clone()
            } else {
                format!("{source} (inherited from {})", inherited.join(", "))
            };
            if best.as_ref().is_none_or(|(b, _, _)| r > *b) {
                best = Some((r, level.to_string(), source));
            }
        }
    }
    match best {
        Some((_, level, source)) if USE_LEVELS.contains(&level.as_str()) => {
            pass(format!("{p} may use SQL warehouse {id}: {level} {source}"))
        }
        other => {
            let only = other.map_or(String::new(), |(_, level, source)| format!(" (only {level} {source})"));
            let body = format!(
                "{{\"access_control_list\":[{{\"{}\":\"{p}\",\"permission_level\":\"CAN_USE\"}}]}}",
                ident.acl_key()
            );
            fail(
                format!("{p} may not use SQL warehouse {id}: no CAN_USE{only}"),
                format!(
                    "databricks warehouses update-permissions {id} --json '{body}'; or SQL Warehouses → the warehouse → Permissions → add {p} with Can use"
                ),
            )
        }
    }
}
