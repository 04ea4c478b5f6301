//! Unity Catalog: the catalog → schema → table model, and the REST endpoints the project reads.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Value, json};

use crate::delta::{self, SchemaJson};
use crate::errors::{ApiError, Resp};
use crate::state::{Emulator, UcColumns, now_ms};

const METASTORE_ID: &str = "5e1d0a7e-0000-4000-8000-00000000e001";
/// The owner of whatever `--owner` does not name, and the creator of the seeded warehouses.
pub const OWNER: &str = "emulator@example.com";
const SECURABLE_TYPES: [&str; 10] = [
    "metastore",
    "catalog",
    "schema",
    "table",
    "function",
    "volume",
    "external_location",
    "storage_credential",
    "share",
    "connection",
];

#[derive(Clone, Debug)]
pub struct Entity {
    pub created_at: i64,
    pub id: String,
}

impl Entity {
    fn new() -> Self {
        Entity { created_at: now_ms(), id: uuid::Uuid::new_v4().to_string() }
    }
}

#[derive(Clone, Debug)]
pub struct Table {
    pub location: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub id: String,
    /// The schema as of the last DDL run through SQL (what a metastore records).
    pub schema: SchemaJson,
}

/// Names are stored lower-cased, as Unity Catalog does; look-ups are case-insensitive.
#[derive(Default)]
pub struct Catalog {
    pub catalogs: BTreeMap<String, Entity>,
    pub schemas: BTreeMap<(String, String), Entity>,
    pub tables: BTreeMap<(String, String, String), Table>,
}

impl Catalog {
    /// Every catalog starts with the `default` and `information_schema` schemas, as in a workspace.
    pub fn new(catalogs: &[String], schemas: &[(String, String)]) -> Self {
        let mut c = Catalog::default();
        for name in catalogs {
            let name = name.to_lowercase();
            c.catalogs.insert(name.clone(), Entity::new());
            for s in ["default", "information_schema"] {
                c.schemas.insert((name.clone(), s.into()), Entity::new());
            }
        }
        for (cat, sch) in schemas {
            c.schemas.insert((cat.to_lowercase(), sch.to_lowercase()), Entity::new());
        }
        c
    }
}

fn split_name(full: &str, parts: usize, what: &str) -> Result<Vec<String>, ApiError> {
    let names: Vec<String> = full.split('.').map(str::to_lowercase).collect();
    if names.len() != parts || names.iter().any(String::is_empty) {
        return Err(ApiError::invalid(format!("Invalid {what} name '{full}': expected {parts} dot-separated parts")));
    }
    Ok(names)
}

fn catalog_missing(name: &str) -> ApiError {
    ApiError::not_found("CATALOG_DOES_NOT_EXIST", format!("Catalog '{name}' does not exist."))
}

fn schema_missing(cat: &str, sch: &str) -> ApiError {
    ApiError::not_found("SCHEMA_DOES_NOT_EXIST", format!("Schema '{cat}.{sch}' does not exist."))
}

fn catalog_json(name: &str, e: &Entity, owner: &str) -> Value {
    json!({"name": name, "full_name": name, "owner": owner, "catalog_type": "MANAGED_CATALOG",
           "metastore_id": METASTORE_ID, "id": e.id, "created_at": e.created_at, "created_by": OWNER,
           "updated_at": e.created_at, "isolation_mode": "OPEN", "properties": {}})
}

fn schema_json(cat: &str, sch: &str, e: &Entity, owner: &str) -> Value {
    json!({"name": sch, "catalog_name": cat, "full_name": format!("{cat}.{sch}"), "owner": owner,
           "metastore_id": METASTORE_ID, "schema_id": e.id, "created_at": e.created_at, "created_by": OWNER,
           "updated_at": e.created_at, "catalog_type": "MANAGED_CATALOG", "properties": {}})
}

pub fn get_catalog(emu: &Emulator, name: &str) -> Result<Resp, ApiError> {
    let name = name.to_lowercase();
    let inner = emu.lock();
    let e = inner.uc.catalogs.get(&name).ok_or_else(|| catalog_missing(&name))?;
    Ok(Resp::ok(catalog_json(&name, e, &emu.settings.owner("catalog", &name))))
}

pub fn get_schema(emu: &Emulator, full: &str) -> Result<Resp, ApiError> {
    let n = split_name(full, 2, "schema")?;
    let inner = emu.lock();
    if !inner.uc.catalogs.contains_key(&n[0]) {
        return Err(catalog_missing(&n[0]));
    }
    let e = inner.uc.schemas.get(&(n[0].clone(), n[1].clone())).ok_or_else(|| schema_missing(&n[0], &n[1]))?;
    Ok(Resp::ok(schema_json(&n[0], &n[1], e, &emu.settings.owner("schema", &full.to_lowercase()))))
}

/// A name Unity Catalog accepts for a catalog, schema or table.
pub fn valid_uc_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 255 && !name.chars().any(|c| c == '.' || c == ' ' || c == '/' || c.is_control())
}

pub fn create_schema(emu: &Emulator, body: &Value) -> Result<Resp, ApiError> {
    let body = body.as_object().ok_or_else(|| ApiError::malformed("Request body must be a JSON object"))?;
    let field = |k: &str| match body.get(k) {
        None | Some(Value::Null) => Err(ApiError::invalid(format!("'{k}' is required"))),
        Some(Value::String(s)) => Ok(s.to_lowercase()),
        Some(_) => Err(ApiError::malformed(format!("Expected a string for '{k}'"))),
    };
    let (name, cat) = (field("name")?, field("catalog_name")?);
    if !valid_uc_name(&name) {
        return Err(ApiError::invalid(format!("Invalid schema name '{name}'")));
    }
    let mut inner = emu.lock();
    if !inner.uc.catalogs.contains_key(&cat) {
        return Err(catalog_missing(&cat));
    }
    let key = (cat.clone(), name.clone());
    if inner.uc.schemas.contains_key(&key) {
        return Err(ApiError::new(409, "SCHEMA_ALREADY_EXISTS", format!("Schema '{cat}.{name}' already exists.")));
    }
    let e = Entity::new();
    let body = schema_json(&cat, &name, &e, OWNER);
    inner.uc.schemas.insert(key, e);
    Ok(Resp::ok(body))
}

/// `GET .../tables/{catalog.schema.table}`. `columns` follow `--uc-columns`: the Delta log as it is now, or the
/// schema recorded by the last DDL.
pub async fn get_table(emu: &Emulator, full: &str) -> Result<Resp, ApiError> {
    let n = split_name(full, 3, "table")?;
    let table = {
        let inner = emu.lock();
        if !inner.uc.catalogs.contains_key(&n[0]) {
            return Err(catalog_missing(&n[0]));
        }
        if !inner.uc.schemas.contains_key(&(n[0].clone(), n[1].clone())) {
            return Err(schema_missing(&n[0], &n[1]));
        }
        inner.uc.tables.get(&(n[0].clone(), n[1].clone(), n[2].clone())).cloned().ok_or_else(|| {
            ApiError::not_found("TABLE_DOES_NOT_EXIST", format!("Table '{}.{}.{}' does not exist.", n[0], n[1], n[2]))
        })?
    };
    let schema = match emu.settings.uc_columns {
        UcColumns::Live => delta::read_schema(&table.location).await.unwrap_or(table.schema),
        UcColumns::Catalog => table.schema,
    };
    Ok(Resp::ok(json!({
        "name": n[2], "catalog_name": n[0], "schema_name": n[1], "full_name": n.join("."),
        "table_type": "EXTERNAL", "data_source_format": "DELTA", "storage_location": table.location,
        "columns": delta::uc_columns(&schema), "owner": OWNER, "metastore_id": METASTORE_ID, "table_id": table.id,
        "created_at": table.created_at, "created_by": OWNER, "updated_at": table.updated_at, "updated_by": OWNER,
        "properties": {},
    })))
}

fn location_json(emu: &Emulator, name: &str, url: &str) -> Value {
    json!({"name": name, "url": url, "credential_name": "emulator-credential", "read_only": false,
           "owner": emu.settings.owner("external_location", name), "metastore_id": METASTORE_ID, "created_by": OWNER, "isolation_mode": "ISOLATION_MODE_OPEN"})
}

pub fn list_external_locations(emu: &Emulator) -> Result<Resp, ApiError> {
    let all: Vec<Value> = emu.settings.external_locations.iter().map(|(n, u)| location_json(emu, n, u)).collect();
    Ok(Resp::ok(json!({"external_locations": all})))
}

pub fn get_external_location(emu: &Emulator, name: &str) -> Result<Resp, ApiError> {
    let (n, u) =
        emu.settings.external_locations.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).ok_or_else(|| {
            ApiError::not_found(
                "EXTERNAL_LOCATION_DOES_NOT_EXIST",
                format!("External Location '{name}' does not exist."),
            )
        })?;
    Ok(Resp::ok(location_json(emu, n, u)))
}

/// Checks the securable type and that the securable exists; returns the type lower-cased and the name.
fn securable(emu: &Emulator, kind: &str, full: &str) -> Result<(String, String), ApiError> {
    let kind = kind.to_lowercase();
    if !SECURABLE_TYPES.contains(&kind.as_str()) {
        return Err(ApiError::invalid(format!("Invalid securable type '{kind}'")));
    }
    let name = full.to_lowercase();
    let inner = emu.lock();
    let exists = match kind.as_str() {
        "catalog" => inner.uc.catalogs.contains_key(&name),
        "schema" => {
            split_name(&name, 2, "schema").is_ok_and(|n| inner.uc.schemas.contains_key(&(n[0].clone(), n[1].clone())))
        }
        "table" => split_name(&name, 3, "table")
            .is_ok_and(|n| inner.uc.tables.contains_key(&(n[0].clone(), n[1].clone(), n[2].clone()))),
        "external_location" => emu.settings.external_locations.iter().any(|(n, _)| n.eq_ignore_ascii_case(&name)),
        _ => true,
    };
    if !exists {
        return Err(ApiError::not_found("RESOURCE_DOES_NOT_EXIST", format!("{kind} '{full}' does not exist.")));
    }
    Ok((kind, name))
}

/// The `principal` query parameter, which must name a Unity Catalog principal: a user, a service principal
/// (application id) or an account group. Workspace-local groups are not principals of the metastore.
fn principal_filter<'a>(emu: &Emulator, query: &'a HashMap<String, String>) -> Result<Option<&'a str>, ApiError> {
    match query.get("principal").map(String::as_str) {
        None => Ok(None),
        Some(p) if emu.settings.directory.uc_principal(p) => Ok(Some(p)),
        Some(p) => {
            Err(ApiError::not_found("PRINCIPAL_DOES_NOT_EXIST", format!("Could not find principal with name {p}.")))
        }
    }
}

/// `max_results` and `page_token`: the emulator's answers fit one page, so it never issues a token.
fn paging(query: &HashMap<String, String>) -> Result<(), ApiError> {
    if let Some(m) = query.get("max_results") {
        let n: i64 = m.parse().map_err(|_| ApiError::invalid(format!("max_results '{m}' is not an integer")))?;
        if n < 0 || (1..150).contains(&n) {
            return Err(ApiError::invalid(format!("max_results must be 0 or at least 150 (got {n})")));
        }
    }
    if let Some(t) = query.get("page_token").filter(|t| !t.is_empty()) {
        return Err(ApiError::invalid(format!("Invalid page_token '{t}'")));
    }
    Ok(())
}

/// Leaves an empty `privilege_assignments` out, as the service does with empty lists.
fn assignments_body(list: Vec<Value>) -> Value {
    if list.is_empty() { json!({}) } else { json!({"privilege_assignments": list}) }
}

/// `GET .../permissions/{securable_type}/{full_name}[?principal=...]`: the `--grant` assignments made on the
/// securable itself.
pub fn get_permissions(
    emu: &Emulator,
    kind: &str,
    full: &str,
    query: &HashMap<String, String>,
) -> Result<Resp, ApiError> {
    assignments(emu, kind, full, query, false)
}

/// The securable and the parents it inherits privileges from, nearest first: a table inherits from its schema
/// and catalog, a schema from its catalog. Nothing inherits from the metastore.
fn lineage(kind: &str, name: &str) -> Vec<(String, String)> {
    let parts: Vec<&str> = name.split('.').collect();
    let mut out = vec![(kind.to_string(), name.to_string())];
    if matches!(kind, "schema" | "table" | "volume" | "function") && parts.len() >= 2 {
        if parts.len() == 3 {
            out.push(("schema".into(), format!("{}.{}", parts[0], parts[1])));
        }
        out.push(("catalog".into(), parts[0].to_string()));
    }
    out
}

/// `GET .../effective-permissions/{securable_type}/{full_name}[?principal=...]`: the privileges granted on the
/// securable and those it inherits from its parents (with `inherited_from_type` and `inherited_from_name`), per
/// principal as granted. Group membership and ownership are not expanded: a member's privileges through a
/// group are listed under the group, and an owner's are not privileges at all.
pub fn get_effective_permissions(
    emu: &Emulator,
    kind: &str,
    full: &str,
    query: &HashMap<String, String>,
) -> Result<Resp, ApiError> {
    assignments(emu, kind, full, query, true)
}

/// The `--grant` assignments on a securable, per principal: as privilege names, or (`effective`) as privilege
/// objects, with those inherited from its parents.
fn assignments(
    emu: &Emulator,
    kind: &str,
    full: &str,
    query: &HashMap<String, String>,
    effective: bool,
) -> Result<Resp, ApiError> {
    let (kind, name) = securable(emu, kind, full)?;
    let principal = principal_filter(emu, query)?;
    paging(query)?;
    let lineage = if effective { lineage(&kind, &name) } else { vec![(kind, name)] };
    let mut assignments: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for (depth, (t, n)) in lineage.iter().enumerate() {
        for g in &emu.settings.grants {
            if g.securable_type != *t || !g.full_name.eq_ignore_ascii_case(n) {
                continue;
            }
            if principal.is_some_and(|p| !p.eq_ignore_ascii_case(&g.principal)) {
                continue;
            }
            let list = assignments.entry(g.principal.clone()).or_default();
            for p in &g.privileges {
                let entry = match (effective, depth) {
                    (false, _) => json!(p),
                    (true, 0) => json!({"privilege": p}),
                    (true, _) => {
                        json!({"privilege": p, "inherited_from_type": t.to_uppercase(), "inherited_from_name": n})
                    }
                };
                if !list.contains(&entry) {
                    list.push(entry);
                }
            }
        }
    }
    let list: Vec<Value> = assignments
        .into_iter()
        .map(|(principal, privileges)| json!({"principal": principal, "privileges": privileges}))
        .collect();
    Ok(Resp::ok(assignments_body(list)))
}
