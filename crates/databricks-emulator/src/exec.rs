//! Running a parsed statement against the catalog and the Delta logs, with Databricks' error classes.

use std::collections::HashMap;

use crate::delta;
use crate::errors::{SqlError, quoted};
use crate::sql::{LiteralValue, Stmt};
use crate::state::{Emulator, now_ms};
use crate::unity::{Entity, Table, valid_uc_name};

#[derive(Clone, Debug, PartialEq)]
pub struct Column {
    pub name: String,
    pub type_name: String,
    pub type_text: String,
}

impl Column {
    fn new(name: &str, type_name: &str) -> Self {
        Column { name: name.into(), type_name: type_name.into(), type_text: type_name.to_lowercase() }
    }
}

/// Rows as the JSON_ARRAY format carries them: every value a string, or null.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResultSet {
    pub columns: Vec<Column>,
    pub rows: Vec<Vec<Option<String>>>,
}

/// A named parameter of the request: its value (null for NULL) and SQL type.
#[derive(Clone, Debug)]
pub struct Param {
    pub value: Option<String>,
    pub sql_type: String,
}

/// What unqualified names resolve against: the request's `catalog` and `schema`.
pub struct Context {
    pub catalog: String,
    pub schema: String,
    pub params: HashMap<String, Param>,
}

type R<T> = Result<T, SqlError>;

fn no_catalog(cat: &str) -> SqlError {
    SqlError::new(
        "NO_SUCH_CATALOG_EXCEPTION",
        "NOT_FOUND",
        "42704",
        format!(
            "Catalog '{cat}' was not found. Please verify the catalog name and then retry the query or command again."
        ),
    )
}

fn no_schema(cat: &str, sch: &str) -> SqlError {
    SqlError::new(
        "SCHEMA_NOT_FOUND",
        "NOT_FOUND",
        "42704",
        format!(
            "The schema {} cannot be found. Verify the spelling and correctness of the schema and catalog.",
            quoted(&[cat.into(), sch.into()])
        ),
    )
}

fn no_table(name: &[String]) -> SqlError {
    SqlError::new(
        "TABLE_OR_VIEW_NOT_FOUND",
        "NOT_FOUND",
        "42P01",
        format!(
            "The table or view {} cannot be found. Verify the spelling and correctness of the schema and catalog.",
            quoted(name)
        ),
    )
}

fn too_many_parts(name: &[String]) -> SqlError {
    SqlError::new(
        "REQUIRES_SINGLE_PART_NAMESPACE",
        "BAD_REQUEST",
        "42K05",
        format!("{} has too many name parts.", quoted(name)),
    )
}

fn lower(parts: &[String]) -> Vec<String> {
    parts.iter().map(|p| p.to_lowercase()).collect()
}

fn resolve_schema(name: &[String], ctx: &Context) -> R<(String, String)> {
    match lower(name).as_slice() {
        [s] => Ok((ctx.catalog.to_lowercase(), s.clone())),
        [c, s] => Ok((c.clone(), s.clone())),
        _ => Err(too_many_parts(name)),
    }
}

fn resolve_table(name: &[String], ctx: &Context) -> R<(String, String, String)> {
    match lower(name).as_slice() {
        [t] => Ok((ctx.catalog.to_lowercase(), ctx.schema.to_lowercase(), t.clone())),
        [s, t] => Ok((ctx.catalog.to_lowercase(), s.clone(), t.clone())),
        [c, s, t] => Ok((c.clone(), s.clone(), t.clone())),
        _ => Err(too_many_parts(name)),
    }
}

/// Runs one statement. Statements are serialised, as their effects go through one metastore.
pub async fn execute(emu: &Emulator, stmt: Stmt, ctx: &Context) -> R<ResultSet> {
    let _serial = emu.ddl.lock().await;
    match stmt {
        Stmt::CreateSchema { name, if_not_exists } => create_schema(emu, &name, if_not_exists, ctx),
        Stmt::CreateTable { name, if_not_exists, location } => {
            create_table(emu, &name, if_not_exists, &location, ctx).await
        }
        Stmt::AddColumns { table, columns } => {
            let key = existing_table(emu, &table, ctx)?;
            let location = table_location(emu, &key)?;
            let schema = delta::add_columns(&location, &columns).await?;
            if let Some(t) = emu.lock().uc.tables.get_mut(&key) {
                t.schema = schema;
                t.updated_at = now_ms();
            }
            Ok(ResultSet::default())
        }
        Stmt::Describe { table } => {
            let key = existing_table(emu, &table, ctx)?;
            let schema = delta::read_schema(&table_location(emu, &key)?).await?;
            let rows = delta::uc_columns(&schema)
                .iter()
                .map(|c| {
                    let text = |k: &str| c.get(k).and_then(|v| v.as_str()).map(str::to_string);
                    vec![text("name"), text("type_text"), text("comment")]
                })
                .collect();
            let columns = ["col_name", "data_type", "comment"].iter().map(|n| Column::new(n, "STRING")).collect();
            Ok(ResultSet { columns, rows })
        }
        Stmt::ShowTables { schema } => {
            let (cat, sch) = match schema {
                Some(name) => resolve_schema(&name, ctx)?,
                None => (ctx.catalog.to_lowercase(), ctx.schema.to_lowercase()),
            };
            let inner = emu.lock();
            check_schema(&inner.uc, &cat, &sch)?;
            let rows = inner
                .uc
                .tables
                .keys()
                .filter(|(c, s, _)| *c == cat && *s == sch)
                .map(|(_, s, t)| vec![Some(s.clone()), Some(t.clone()), Some("false".into())])
                .collect();
            let columns = vec![
                Column::new("database", "STRING"),
                Column::new("tableName", "STRING"),
                Column::new("isTemporary", "BOOLEAN"),
            ];
            Ok(ResultSet { columns, rows })
        }
        Stmt::Select { items } => select(items, ctx),
        Stmt::Optimize { table } => {
            let key = existing_table(emu, &table, ctx)?;
            let location = table_location(emu, &key)?;
            let (files_removed, files_added) = delta::optimize(&location).await?;
            // Databricks answers with the table's path and the metrics of the compaction.
            let metrics = serde_json::json!({"numFilesRemoved": files_removed, "numFilesAdded": files_added});
            let columns = vec![Column::new("path", "STRING"), Column::new("metrics", "STRING")];
            Ok(ResultSet { columns, rows: vec![vec![Some(location), Some(metrics.to_string())]] })
        }
    }
}

fn check_schema(uc: &crate::unity::Catalog, cat: &str, sch: &str) -> R<()> {
    if !uc.catalogs.contains_key(cat) {
        return Err(no_catalog(cat));
    }
    if !uc.schemas.contains_key(&(cat.to_string(), sch.to_string())) {
        return Err(no_schema(cat, sch));
    }
    Ok(())
}

/// A table that DDL refers to. Like Spark, a missing catalog or schema reads as a missing table here.
fn existing_table(emu: &Emulator, name: &[String], ctx: &Context) -> R<(String, String, String)> {
    let key = resolve_table(name, ctx)?;
    if !emu.lock().uc.tables.contains_key(&key) {
        return Err(no_table(&[key.0, key.1, key.2]));
    }
    Ok(key)
}

fn table_location(emu: &Emulator, key: &(String, String, String)) -> R<String> {
    let inner = emu.lock();
    let table = inner.uc.tables.get(key).ok_or_else(|| no_table(&[key.0.clone(), key.1.clone(), key.2.clone()]))?;
    Ok(table.location.clone())
}

fn create_schema(emu: &Emulator, name: &[String], if_not_exists: bool, ctx: &Context) -> R<ResultSet> {
    let (cat, sch) = resolve_schema(name, ctx)?;
    let mut inner = emu.lock();
    if !inner.uc.catalogs.contains_key(&cat) {
        return Err(no_catalog(&cat));
    }
    if !valid_uc_name(&sch) {
        return Err(SqlError::new(
            "INVALID_SCHEMA_OR_RELATION_NAME",
            "BAD_REQUEST",
            "42602",
            format!(
                "{} is not a valid name for tables/schemas. Valid names only contain alphabet characters, numbers and _.",
                quoted(&[sch])
            ),
        ));
    }
    let key = (cat.clone(), sch.clone());
    if inner.uc.schemas.contains_key(&key) {
        if if_not_exists {
            return Ok(ResultSet::default());
        }
        return Err(SqlError::new(
            "SCHEMA_ALREADY_EXISTS",
            "ALREADY_EXISTS",
            "42P06",
            format!("Cannot create schema {} because it already exists.", quoted(&[cat, sch])),
        ));
    }
    inner.uc.schemas.insert(key, Entity { created_at: now_ms(), id: uuid::Uuid::new_v4().to_string() });
    Ok(ResultSet::default())
}

/// True when one location is the other or lies inside it.
fn overlaps(a: &str, b: &str) -> bool {
    let (a, b) = (delta::normalise(a), delta::normalise(b));
    a == b || a.starts_with(&format!("{b}/")) || b.starts_with(&format!("{a}/"))
}

async fn create_table(
    emu: &Emulator,
    name: &[String],
    if_not_exists: bool,
    location: &str,
    ctx: &Context,
) -> R<ResultSet> {
    let (cat, sch, tbl) = resolve_table(name, ctx)?;
    let key = (cat.clone(), sch.clone(), tbl.clone());
    {
        let inner = emu.lock();
        check_schema(&inner.uc, &cat, &sch)?;
        if inner.uc.tables.contains_key(&key) {
            if if_not_exists {
                return Ok(ResultSet::default());
            }
            return Err(SqlError::new(
                "TABLE_OR_VIEW_ALREADY_EXISTS",
                "ALREADY_EXISTS",
                "42P07",
                format!("Cannot create table or view {} because it already exists.", quoted(&[cat, sch, tbl])),
            ));
        }
        if !valid_uc_name(&tbl) {
            return Err(SqlError::new(
                "INVALID_SCHEMA_OR_RELATION_NAME",
                "BAD_REQUEST",
                "42602",
                format!("{} is not a valid name for tables/schemas.", quoted(&[tbl])),
            ));
        }
        if let Some(((c, s, t), _)) = inner.uc.tables.iter().find(|(_, t)| overlaps(&t.location, location)) {
            return Err(SqlError::new(
                "LOCATION_OVERLAP",
                "BAD_REQUEST",
                "22023",
                format!(
                    "Input path url '{location}' overlaps with other external tables. Conflicting tables: {c}.{s}.{t}."
                ),
            ));
        }
    }
    delta::location_url(location).map_err(|m| SqlError::new("INVALID_PARAMETER_VALUE", "BAD_REQUEST", "22023", m))?;
    let schema = delta::read_schema(location).await?;
    let now = now_ms();
    let table = Table {
        location: delta::normalise(location),
        created_at: now,
        updated_at: now,
        id: uuid::Uuid::new_v4().to_string(),
        schema,
    };
    emu.lock().uc.tables.insert(key, table);
    Ok(ResultSet::default())
}

/// Spark's type for a numeric literal: INT, BIGINT, DOUBLE (with an exponent) or DECIMAL(p,s).
fn number_column(name: &str, n: &str) -> Column {
    if n.parse::<i32>().is_ok() {
        return Column::new(name, "INT");
    }
    if n.parse::<i64>().is_ok() {
        return Column::new(name, "BIGINT");
    }
    if n.contains(['e', 'E']) {
        return Column::new(name, "DOUBLE");
    }
    let (int, frac) = n.split_once('.').unwrap_or((n, ""));
    let digits = |s: &str| s.chars().filter(char::is_ascii_digit).count();
    let scale = digits(frac);
    let precision = (digits(int.trim_start_matches('0')) + scale).max(scale).max(1);
    Column { name: name.into(), type_name: "DECIMAL".into(), type_text: format!("decimal({precision},{scale})") }
}

fn select(items: Vec<crate::sql::Literal>, ctx: &Context) -> R<ResultSet> {
    let mut columns = Vec::new();
    let mut row = Vec::new();
    for item in items {
        let (column, value) = match item.value {
            LiteralValue::Number(n) => (number_column(&item.name, &n), Some(n)),
            LiteralValue::Str(s) => (Column::new(&item.name, "STRING"), Some(s)),
            LiteralValue::Bool(b) => (Column::new(&item.name, "BOOLEAN"), Some(b.to_string())),
            LiteralValue::Null => (Column::new(&item.name, "VOID"), None),
            LiteralValue::Param(p) => {
                let param = ctx.params.get(&p).ok_or_else(|| {
                    SqlError::new(
                        "UNBOUND_SQL_PARAMETER",
                        "BAD_REQUEST",
                        "42P02",
                        format!("Found the unbound parameter: {p}. Please, fix `args` and provide a mapping of the parameter."),
                    )
                })?;
                (Column::new(&item.name, &param.sql_type.to_uppercase()), param.value.clone())
            }
        };
        columns.push(column);
        row.push(value);
    }
    Ok(ResultSet { columns, rows: vec![row] })
}
