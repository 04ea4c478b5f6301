//! The Delta side of external tables: reading a location's schema and adding columns to its log the way
//! Databricks does (one metadata commit of nullable columns), plus Unity Catalog's view of each column.

use std::collections::HashMap;

use deltalake::DeltaTable;
use serde_json::{Value, json};
use url::Url;

use crate::errors::SqlError;
use crate::sql::NewColumn;

/// A Delta schema as its JSON (`{"type": "struct", "fields": [...]}`), the form the Delta log stores.
pub type SchemaJson = Value;

/// Storage options from the same environment the main binary reads: on Azurite when
/// `SEGMENT_DELTA_STORAGE_EMULATOR=true` (object_store takes `AZURITE_BLOB_STORAGE_URL` from the environment);
/// otherwise the Azure store's own `AZURE_*` variables apply.
fn storage_options() -> HashMap<String, String> {
    let mut options = HashMap::new();
    let emulator = std::env::var("SEGMENT_DELTA_STORAGE_EMULATOR").unwrap_or_default();
    if matches!(emulator.trim(), "true" | "1") {
        options.insert("use_emulator".to_string(), "true".to_string());
        options.insert("allow_http".to_string(), "true".to_string());
    }
    options
}

/// A table location: an absolute local path, `file://`, or an Azure URI (`abfss://`, `abfs://`, `az://`, ...).
pub fn location_url(location: &str) -> Result<Url, String> {
    if location.starts_with('/') {
        return Url::from_directory_path(location).map_err(|()| format!("'{location}' is not an absolute path"));
    }
    let url = Url::parse(location).map_err(|e| format!("'{location}' is not a valid URI: {e}"))?;
    match url.scheme() {
        "file" | "az" | "azure" | "abfs" | "abfss" | "adl" => Ok(url),
        other => Err(format!("'{location}': the scheme {other} is not supported")),
    }
}

/// The normalised form used to compare locations: no trailing slash.
pub fn normalise(location: &str) -> String {
    location.trim_end_matches('/').to_string()
}

async fn open(location: &str) -> Result<DeltaTable, SqlError> {
    let url =
        location_url(location).map_err(|m| SqlError::new("INVALID_PARAMETER_VALUE", "BAD_REQUEST", "22023", m))?;
    DeltaTable::try_from_url_with_storage_options(url, storage_options())
        .await
        .map_err(|e| SqlError::internal(format!("Reading the Delta log at '{location}' failed: {e}.")))
}

/// `OPTIMIZE`: bin-packs the table's small files into files of up to 1 GiB (Databricks' default target),
/// committed with `dataChange=false`. Returns the number of files removed and added.
pub async fn optimize(location: &str) -> Result<(usize, usize), SqlError> {
    let mut table = open(location).await?;
    if table.version().is_none() {
        return Err(no_log(location));
    }
    let paths = |t: &DeltaTable| -> std::collections::HashSet<String> {
        t.snapshot().map(|s| s.log_data().iter().map(|f| f.path().to_string()).collect()).unwrap_or_default()
    };
    let before = paths(&table);
    segment_delta::maintain::compact::compact(&table, 1 << 30)
        .await
        .map_err(|e| SqlError::internal(format!("OPTIMIZE of '{location}' failed: {e}.")))?;
    table.update_incremental(None).await.map_err(|e| SqlError::internal(e.to_string()))?;
    let after = paths(&table);
    Ok((before.difference(&after).count(), after.difference(&before).count()))
}

fn no_log(location: &str) -> SqlError {
    SqlError::new(
        "DELTA_CREATE_EXTERNAL_TABLE_WITHOUT_TXN_LOG",
        "BAD_REQUEST",
        "42K03",
        format!(
            "You are trying to create an external table from `{location}` using Delta, but there is no transaction \
             log present at `{}/_delta_log`.",
            normalise(location)
        ),
    )
}

fn schema_of(table: &DeltaTable) -> Result<SchemaJson, SqlError> {
    let snapshot = table.snapshot().map_err(|e| SqlError::internal(format!("No snapshot: {e}.")))?;
    serde_json::to_value(snapshot.schema().as_ref()).map_err(|e| SqlError::internal(e.to_string()))
}

/// The current schema of the Delta table at `location`, or `DELTA_CREATE_EXTERNAL_TABLE_WITHOUT_TXN_LOG`.
pub async fn read_schema(location: &str) -> Result<SchemaJson, SqlError> {
    let table = open(location).await?;
    if table.version().is_none() {
        return Err(no_log(location));
    }
    schema_of(&table)
}

/// The fields of a schema JSON.
pub fn fields(schema: &SchemaJson) -> Vec<Value> {
    schema.get("fields").and_then(Value::as_array).cloned().unwrap_or_default()
}

/// Delta refuses these characters in column names unless the table uses column mapping.
const INVALID_NAME_CHARS: &[char] = &[' ', ',', ';', '{', '}', '(', ')', '\n', '\t', '='];

/// `ALTER TABLE ... ADD COLUMNS`: checks the new names against the current log, then commits them as nullable
/// columns at the end of the schema. Returns the new schema.
pub async fn add_columns(location: &str, columns: &[NewColumn]) -> Result<SchemaJson, SqlError> {
    let table = open(location).await?;
    if table.version().is_none() {
        return Err(SqlError::internal(format!("The Delta log at '{location}' has disappeared.")));
    }
    let schema = schema_of(&table)?;
    let existing: Vec<String> =
        fields(&schema).iter().filter_map(|f| f.get("name")?.as_str().map(str::to_string)).collect();
    let mut seen: Vec<String> = Vec::new();
    for c in columns {
        let lower = c.name.to_lowercase();
        if seen.contains(&lower) {
            return Err(SqlError::new(
                "COLUMN_ALREADY_EXISTS",
                "ALREADY_EXISTS",
                "42711",
                format!("The column `{}` already exists. Choose another name or rename the existing column.", c.name),
            ));
        }
        seen.push(lower);
        if existing.iter().any(|e| e.eq_ignore_ascii_case(&c.name)) {
            let all = fields(&schema);
            let struct_text = all.iter().map(|f| format!("{}: {}", field_name(f), type_text(&f["type"])));
            return Err(SqlError::new(
                "FIELDS_ALREADY_EXISTS",
                "ALREADY_EXISTS",
                "42710",
                format!(
                    "Cannot add column, because `{}` already exists in \"STRUCT<{}>\".",
                    c.name,
                    struct_text.collect::<Vec<_>>().join(", ")
                ),
            ));
        }
    }
    let snapshot = table.snapshot().map_err(|e| SqlError::internal(e.to_string()))?;
    let mapping = snapshot.table_config().column_mapping_mode.map(|m| format!("{m:?}").to_lowercase());
    let mapped = matches!(mapping.as_deref(), Some("name" | "id"));
    if !mapped && let Some(bad) = columns.iter().find(|c| c.name.contains(INVALID_NAME_CHARS)) {
        return Err(SqlError::new(
            "DELTA_INVALID_CHARACTERS_IN_COLUMN_NAMES",
            "BAD_REQUEST",
            "42K05",
            format!(
                "Found invalid character(s) among ' ,;{{}}()\\n\\t=' in the column names of your schema: `{}`. \
                     Please use column mapping to use these characters.",
                bad.name
            ),
        ));
    }
    let mut fields_json = fields(&schema);
    let mut max_id = snapshot
        .metadata()
        .configuration()
        .get("delta.columnMapping.maxColumnId")
        .and_then(|v| v.parse::<i64>().ok())
        .unwrap_or(0);
    max_id = fields_json
        .iter()
        .filter_map(|f| f.pointer("/metadata/delta.columnMapping.id")?.as_i64())
        .fold(max_id, i64::max);
    for c in columns {
        let mut metadata = serde_json::Map::new();
        if let Some(comment) = &c.comment {
            metadata.insert("comment".into(), json!(comment));
        }
        if mapped {
            // Column mapping: the next id and a fresh physical name, as Databricks assigns them.
            max_id += 1;
            metadata.insert("delta.columnMapping.id".into(), json!(max_id));
            metadata.insert("delta.columnMapping.physicalName".into(), json!(format!("col-{}", uuid::Uuid::new_v4())));
        }
        fields_json.push(json!({"name": c.name, "type": c.delta_type, "nullable": true, "metadata": metadata}));
    }
    let mut metadata = serde_json::to_value(snapshot.metadata()).map_err(|e| SqlError::internal(e.to_string()))?;
    metadata["schemaString"] = json!(json!({"type": "struct", "fields": fields_json}).to_string());
    if mapped {
        metadata["configuration"]["delta.columnMapping.maxColumnId"] = json!(max_id.to_string());
    }
    let ict = snapshot.metadata().configuration().get("delta.enableInCommitTimestamps").is_some_and(|v| v == "true");
    let version = table.version().unwrap_or(0) as u64;
    let now = chrono::Utc::now().timestamp_millis();
    let mut info = json!({"timestamp": now, "operation": "ADD COLUMNS", "operationParameters": {"columns": columns.len().to_string()},
        "readVersion": version, "isolationLevel": "Serializable", "isBlindAppend": true, "engineInfo": "Databricks-Runtime/emulated"});
    if ict {
        let previous = last_in_commit_timestamp(&table, version).await?;
        info["inCommitTimestamp"] = json!(now.max(previous.map_or(i64::MIN, |p| p + 1)));
    }
    let body = format!("{}\n{}\n", json!({"commitInfo": info}), json!({"metaData": metadata}));
    table
        .log_store()
        .write_commit_entry(
            version + 1,
            deltalake::logstore::CommitOrBytes::LogBytes(body.into()),
            uuid::Uuid::new_v4(),
        )
        .await
        .map_err(|e| {
            SqlError::new(
                "DELTA_CONCURRENT_TRANSACTION",
                "ABORTED",
                "2D521",
                format!("Committing the new columns to '{location}' failed: {e}. Retry the statement."),
            )
        })?;
    let table = open(location).await?;
    schema_of(&table)
}

/// The `inCommitTimestamp` of commit `version`.
async fn last_in_commit_timestamp(table: &DeltaTable, version: u64) -> Result<Option<i64>, SqlError> {
    let bytes = table.log_store().read_commit_entry(version).await.map_err(|e| SqlError::internal(e.to_string()))?;
    Ok(bytes.and_then(|b| {
        b.split(|c| *c == b'\n')
            .filter_map(|l| serde_json::from_slice::<Value>(l).ok())
            .find_map(|a| a.pointer("/commitInfo/inCommitTimestamp").and_then(Value::as_i64))
    }))
}

fn field_name(field: &Value) -> &str {
    field.get("name").and_then(Value::as_str).unwrap_or_default()
}

/// Unity Catalog's `type_name` for a Delta type.
pub fn type_name(t: &Value) -> String {
    match t {
        Value::String(s) => match s.as_str() {
            "string" => "STRING".into(),
            "long" => "LONG".into(),
            "integer" => "INT".into(),
            "short" => "SHORT".into(),
            "byte" => "BYTE".into(),
            "double" => "DOUBLE".into(),
            "float" => "FLOAT".into(),
            "boolean" => "BOOLEAN".into(),
            "timestamp" => "TIMESTAMP".into(),
            "timestamp_ntz" => "TIMESTAMP_NTZ".into(),
            "date" => "DATE".into(),
            "binary" => "BINARY".into(),
            "variant" => "VARIANT".into(),
            d if d.starts_with("decimal") => "DECIMAL".into(),
            other => other.to_uppercase(),
        },
        Value::Object(o) => o.get("type").and_then(Value::as_str).unwrap_or("STRUCT").to_uppercase(),
        _ => "NULL".into(),
    }
}

/// Unity Catalog's `type_text` (Databricks SQL spelling) for a Delta type.
pub fn type_text(t: &Value) -> String {
    match t {
        Value::String(s) => match s.as_str() {
            "long" => "bigint".into(),
            "integer" => "int".into(),
            "short" => "smallint".into(),
            "byte" => "tinyint".into(),
            other => other.to_string(),
        },
        Value::Object(o) => match o.get("type").and_then(Value::as_str) {
            Some("array") => format!("array<{}>", type_text(&o["elementType"])),
            Some("map") => format!("map<{},{}>", type_text(&o["keyType"]), type_text(&o["valueType"])),
            Some("struct") => {
                let inner: Vec<String> = o["fields"]
                    .as_array()
                    .map(|fs| fs.iter().map(|f| format!("{}:{}", field_name(f), type_text(&f["type"]))).collect())
                    .unwrap_or_default();
                format!("struct<{}>", inner.join(","))
            }
            _ => "void".into(),
        },
        _ => "void".into(),
    }
}

/// The `columns` of a Unity Catalog table body.
pub fn uc_columns(schema: &SchemaJson) -> Vec<Value> {
    fields(schema)
        .iter()
        .enumerate()
        .map(|(position, f)| {
            let mut column = json!({
                "name": field_name(f),
                "type_name": type_name(&f["type"]),
                "type_text": type_text(&f["type"]),
                "type_json": f.to_string(),
                "position": position,
                "nullable": f.get("nullable").and_then(Value::as_bool).unwrap_or(true),
            });
            if let Some(s) = f["type"].as_str().and_then(|s| s.strip_prefix("decimal(")) {
                let mut nums = s.trim_end_matches(')').split(',').map(|n| n.trim().parse::<i64>().unwrap_or(0));
                column["type_precision"] = json!(nums.next().unwrap_or(10));
                column["type_scale"] = json!(nums.next().unwrap_or(0));
            }
            if let Some(comment) = f.pointer("/metadata/comment").and_then(Value::as_str) {
                column["comment"] = json!(comment);
            }
            column
        })
        .collect()
}
