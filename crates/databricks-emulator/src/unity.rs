//! Unity Catalog: the catalog → schema → table model, and the REST endpoints the project reads.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::delta::{self, SchemaJson};
use crate::errors::{ApiError, Resp};
use crate::state::{Emulator, UcColumns, now_ms};

const METASTORE_ID: &str = "5e1d0a7e-0000-4000-8000-00000000e001";
const OWNER: &str = "emulator@example.com";
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

fn catalog_json(name: &str, e: &Entity) -> Value {
    json!({"name": name, "full_name": name, "owner": OWNER, "catalog_type": "MANAGED_CATALOG",
           "metastore_id": METASTORE_ID, "id": e.id, "created_at": e.created_at, "created_by": OWNER,
           "updated_at": e.created_at, "isolation_mode": "OPEN", "properties": {}})
}

fn schema_json(cat: &str, sch: &str, e: &Entity) -> Value {
    json!({"name": sch, "catalog_name": cat, "full_name": format!("{cat}.{sch}"), "owner": OWNER,
           "metastore_id": METASTORE_ID, "schema_id": e.id, "created_at": e.created_at, "created_by": OWNER,
           "updated_at": e.created_at, "catalog_type": "MANAGED_CATALOG", "properties": {}})
}

pub fn get_catalog(emu: &Emulator, name: &str) -> Result<Resp, ApiError> {
    let name = name.to_lowercase();
    let inner = emu.lock();
    let e = inner.uc.catalogs.get(&name).ok_or_else(|| catalog_missing(&name))?;
    Ok(Resp::ok(catalog_json(&name, e)))
}

pub fn get_schema(emu: &Emulator, full: &str) -> Result<Resp, ApiError> {
    let n = split_name(full, 2, "schema")?;
    let inner = emu.lock();
    if !inner.uc.catalogs.contains_key(&n[0]) {
        return Err(catalog_missing(&n[0]));
    }
    let e = inner.uc.schemas.get(&(n[0].clone(), n[1].clone())).ok_or_else(|| schema_missing(&n[0], &n[1]))?;
    Ok(Resp::ok(schema_json(&n[0], &n[1], e)))
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
    let body = schema_json(&cat, &name, &e);
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

fn location_json(name: &str, url: &str) -> Value {
    json!({"name": name, "url": url, "credential_name": "emulator-credential", "read_only": false,
           "owner": OWNER, "metastore_id": METASTORE_ID, "created_by": OWNER, "isolation_mode": "ISOLATION_MODE_OPEN"})
}

pub fn list_external_locations(emu: &Emulator) -> Result<Resp, ApiError> {
    let all: Vec<Value> = emu.settings.external_locations.iter().map(|(n, u)| location_json(n, u)).collect();
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
    Ok(Resp::ok(location_json(n, u)))
}

/// `GET .../permissions/{securable_type}/{full_name}[?principal=...]`: the `--grant` assignments on a securable.
pub fn get_permissions(emu: &Emulator, kind: &str, full: &str, principal: Option<&str>) -> Result<Resp, ApiError> {
    let kind = kind.to_lowercase();
    if !SECURABLE_TYPES.contains(&kind.as_str()) {
        return Err(ApiError::invalid(format!("Invalid securable type '{kind}'")));
    }
    let name = full.to_lowercase();
    {
        let inner = emu.lock();
        let exists = match kind.as_str() {
            "catalog" => inner.uc.catalogs.contains_key(&name),
            "schema" => split_name(&name, 2, "schema")
                .is_ok_and(|n| inner.uc.schemas.contains_key(&(n[0].clone(), n[1].clone()))),
            "table" => split_name(&name, 3, "table")
                .is_ok_and(|n| inner.uc.tables.contains_key(&(n[0].clone(), n[1].clone(), n[2].clone()))),
            "external_location" => emu.settings.external_locations.iter().any(|(n, _)| n.eq_ignore_ascii_case(&name)),
            _ => true,
        };
        if !exists {
            return Err(ApiError::not_found("RESOURCE_DOES_NOT_EXIST", format!("{kind} '{full}' does not exist.")));
        }
    }
    let mut assignments: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for g in &emu.settings.grants {
        let matches = g.securable_type == kind && g.full_name.eq_ignore_ascii_case(&name);
        if matches && principal.is_none_or(|p| p == g.principal) {
            let privileges = assignments.entry(g.principal.clone()).or_default();
            for p in &g.privileges {
                if !privileges.contains(p) {
                    privileges.push(p.clone());
                }
            }
        }
    }
    let list: Vec<Value> = assignments
        .into_iter()
        .map(|(principal, privileges)| json!({"principal": principal, "privileges": privileges}))
        .collect();
    Ok(Resp::ok(json!({"privilege_assignments": list})))
}
