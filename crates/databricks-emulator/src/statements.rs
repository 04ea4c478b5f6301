//! The SQL Statement Execution API: submit, poll, cancel, and the life of a statement.
//!
//! A statement is PENDING until its warehouse is RUNNING, then RUNNING (for `slow_statements_ms` when that fault
//! is set), then SUCCEEDED or FAILED; CANCELED if cancelled before it takes effect; a SUCCEEDED statement reads
//! as CLOSED once its result is older than `--result-ttl-secs`.
//!
//! Whether a statement starts a STOPPED warehouse is not documented, so the emulator takes the strict reading: it
//! does not. The statement stays PENDING until someone starts the warehouse (`POST .../warehouses/{id}/start`),
//! so only a client that starts the warehouse and polls, as the docs advise, gets its DDL run.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use crate::errors::{ApiError, Resp, SqlError};
use crate::exec::{self, Context, Param, ResultSet};
use crate::state::{Emulator, Inner};
use crate::warehouses::WhState;

const MAX_STATEMENT_BYTES: usize = 16 * 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StState {
    Pending,
    Running,
    Succeeded,
    Failed,
    Canceled,
    Closed,
}

impl StState {
    pub fn as_str(self) -> &'static str {
        match self {
            StState::Pending => "PENDING",
            StState::Running => "RUNNING",
            StState::Succeeded => "SUCCEEDED",
            StState::Failed => "FAILED",
            StState::Canceled => "CANCELED",
            StState::Closed => "CLOSED",
        }
    }

    fn is_terminal(self) -> bool {
        !matches!(self, StState::Pending | StState::Running)
    }
}

pub struct Statement {
    pub id: String,
    pub sql: String,
    pub warehouse_id: String,
    pub catalog: Option<String>,
    pub schema: Option<String>,
    pub params: HashMap<String, Param>,
    pub row_limit: Option<u64>,
    pub state: StState,
    /// Set once the statement has begun to take effect; from then on a cancel no longer stops it.
    pub executing: bool,
    pub error: Option<SqlError>,
    pub result: Option<ResultSet>,
    pub finished_at: Option<Instant>,
    pub received_at: String,
}

impl Statement {
    fn visible_state(&self, result_ttl: Duration) -> StState {
        match (self.state, self.finished_at) {
            (StState::Succeeded, Some(t)) if t.elapsed() > result_ttl => StState::Closed,
            (s, _) => s,
        }
    }
}

/// The request body, validated.
struct Submit {
    sql: String,
    warehouse_id: String,
    catalog: Option<String>,
    schema: Option<String>,
    wait: Duration,
    cancel_on_timeout: bool,
    params: HashMap<String, Param>,
    row_limit: Option<u64>,
}

fn opt_str(body: &Map<String, Value>, key: &str) -> Result<Option<String>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::malformed(format!("Expected a string for '{key}'"))),
    }
}

/// `0s` (asynchronous) or `5s`..`50s`.
fn wait_timeout(text: &str) -> Result<Duration, ApiError> {
    let secs = text.strip_suffix('s').filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()));
    match secs.and_then(|d| d.parse::<u64>().ok()) {
        Some(0) => Ok(Duration::ZERO),
        Some(n @ 5..=50) => Ok(Duration::from_secs(n)),
        _ => Err(ApiError::invalid(format!(
            "wait_timeout must be 0s (asynchronous) or between 5s and 50s, got '{text}'"
        ))),
    }
}

fn validate(body: &Value) -> Result<Submit, ApiError> {
    let body = body.as_object().ok_or_else(|| ApiError::malformed("Request body must be a JSON object"))?;
    let sql = opt_str(body, "statement")?.unwrap_or_default();
    if sql.trim().is_empty() {
        return Err(ApiError::invalid("statement is required"));
    }
    if sql.len() > MAX_STATEMENT_BYTES {
        return Err(ApiError::invalid("statement is larger than 16 MiB"));
    }
    let warehouse_id = opt_str(body, "warehouse_id")?.filter(|w| !w.is_empty());
    let warehouse_id = warehouse_id.ok_or_else(|| ApiError::invalid("warehouse_id is required"))?;
    let wait = wait_timeout(&opt_str(body, "wait_timeout")?.unwrap_or_else(|| "10s".into()))?;
    let cancel_on_timeout = match opt_str(body, "on_wait_timeout")?.as_deref() {
        None | Some("CONTINUE") => false,
        Some("CANCEL") => true,
        Some(other) => {
            return Err(ApiError::invalid(format!("on_wait_timeout must be CONTINUE or CANCEL, got '{other}'")));
        }
    };
    let disposition = opt_str(body, "disposition")?.unwrap_or_else(|| "INLINE".into());
    let format = opt_str(body, "format")?.unwrap_or_else(|| "JSON_ARRAY".into());
    if !["INLINE", "EXTERNAL_LINKS"].contains(&disposition.as_str()) {
        return Err(ApiError::invalid(format!("disposition must be INLINE or EXTERNAL_LINKS, got '{disposition}'")));
    }
    if !["JSON_ARRAY", "ARROW_STREAM", "CSV"].contains(&format.as_str()) {
        return Err(ApiError::invalid(format!("format must be JSON_ARRAY, ARROW_STREAM or CSV, got '{format}'")));
    }
    if disposition == "INLINE" && format != "JSON_ARRAY" {
        return Err(ApiError::invalid(format!(
            "The INLINE disposition supports only the JSON_ARRAY format, not {format}"
        )));
    }
    if disposition != "INLINE" {
        return Err(ApiError::invalid("The Databricks emulator supports only the INLINE disposition"));
    }
    let row_limit = match body.get("row_limit") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| ApiError::invalid("row_limit must be a non-negative integer"))?),
    };
    if let Some(v) = body.get("byte_limit").filter(|v| !v.is_null()) {
        v.as_u64().ok_or_else(|| ApiError::invalid("byte_limit must be a non-negative integer"))?;
    }
    let mut params = HashMap::new();
    match body.get("parameters") {
        None | Some(Value::Null) => {}
        Some(Value::Array(list)) => {
            for p in list {
                let p = p.as_object().ok_or_else(|| ApiError::malformed("Each parameter must be an object"))?;
                let name = opt_str(p, "name")?.filter(|n| !n.is_empty());
                let name = name.ok_or_else(|| ApiError::invalid("Each parameter needs a name"))?;
                let value = opt_str(p, "value")?;
                let sql_type = opt_str(p, "type")?.unwrap_or_else(|| "STRING".into());
                if params.insert(name.clone(), Param { value, sql_type }).is_some() {
                    return Err(ApiError::invalid(format!("Parameter '{name}' is given more than once")));
                }
            }
        }
        Some(_) => return Err(ApiError::malformed("parameters must be an array")),
    }
    let catalog = opt_str(body, "catalog")?;
    let schema = opt_str(body, "schema")?;
    Ok(Submit { sql, warehouse_id, catalog, schema, wait, cancel_on_timeout, params, row_limit })
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found("RESOURCE_DOES_NOT_EXIST", format!("Statement {id} does not exist."))
}

fn is_terminal(inner: &Inner, id: &str) -> bool {
    inner.statements.get(id).is_none_or(|s| s.state.is_terminal())
}

/// `POST /api/2.0/sql/statements`.
pub async fn submit(emu: &Arc<Emulator>, body: &Value) -> Result<Resp, ApiError> {
    let req = validate(body)?;
    let id = uuid::Uuid::new_v4().to_string();
    {
        let mut inner = emu.lock();
        let exists = inner.warehouses.iter().any(|w| w.id == req.warehouse_id && w.state != WhState::Deleted);
        if !exists {
            return Err(ApiError::not_found(
                "RESOURCE_DOES_NOT_EXIST",
                format!("Warehouse {} does not exist.", req.warehouse_id),
            ));
        }
        inner.statements.insert(
            id.clone(),
            Statement {
                id: id.clone(),
                sql: req.sql,
                warehouse_id: req.warehouse_id,
                catalog: req.catalog,
                schema: req.schema,
                params: req.params,
                row_limit: req.row_limit,
                state: StState::Pending,
                executing: false,
                error: None,
                result: None,
                finished_at: None,
                received_at: chrono::Utc::now().to_rfc3339(),
            },
        );
        inner.order.push(id.clone());
    }
    emu.notify();
    tokio::spawn(run(emu.clone(), id.clone()));
    if !req.wait.is_zero() {
        let deadline = tokio::time::Instant::now() + req.wait;
        let done = emu.wait_until(deadline, |inner| is_terminal(inner, &id)).await;
        if !done && req.cancel_on_timeout {
            cancel_now(emu, &id);
        }
    }
    get(emu, &id)
}

/// `GET /api/2.0/sql/statements/{id}`.
pub fn get(emu: &Emulator, id: &str) -> Result<Resp, ApiError> {
    let inner = emu.lock();
    let s = inner.statements.get(id).ok_or_else(|| not_found(id))?;
    Ok(Resp::ok(to_json(s, emu.settings.result_ttl)))
}

/// `POST /api/2.0/sql/statements/{id}/cancel`: best effort, like the real one; always `{}`.
pub fn cancel(emu: &Emulator, id: &str) -> Result<Resp, ApiError> {
    if !emu.lock().statements.contains_key(id) {
        return Err(not_found(id));
    }
    cancel_now(emu, id);
    Ok(Resp::ok(json!({})))
}

fn cancel_now(emu: &Emulator, id: &str) {
    let mut inner = emu.lock();
    if let Some(s) = inner.statements.get_mut(id)
        && !s.state.is_terminal()
        && !s.executing
    {
        s.state = StState::Canceled;
        s.finished_at = Some(Instant::now());
        drop(inner);
        emu.notify();
    }
}

fn canceled(inner: &Inner, id: &str) -> bool {
    inner.statements.get(id).is_none_or(|s| s.state == StState::Canceled)
}

async fn run(emu: Arc<Emulator>, id: String) {
    let Some(warehouse) = emu.lock().statements.get(&id).map(|s| s.warehouse_id.clone()) else {
        return;
    };
    let running = |inner: &Inner| inner.warehouses.iter().any(|w| w.id == warehouse && w.state == WhState::Running);
    // Waits as long as it takes, in bounded steps so no timer is set years ahead.
    while !emu
        .wait_until(tokio::time::Instant::now() + Duration::from_secs(3600), |i| canceled(i, &id) || running(i))
        .await
    {}
    let slow = {
        let mut inner = emu.lock();
        let slow = inner.slow_statements;
        match inner.statements.get_mut(&id) {
            Some(s) if s.state == StState::Pending => s.state = StState::Running,
            _ => return,
        }
        slow
    };
    emu.notify();
    if !slow.is_zero() && emu.wait_until(tokio::time::Instant::now() + slow, |inner| canceled(inner, &id)).await {
        return;
    }
    let (sql, ctx) = {
        let mut inner = emu.lock();
        let Some(s) = inner.statements.get_mut(&id).filter(|s| s.state == StState::Running) else {
            return;
        };
        s.executing = true;
        let default_catalog = emu.settings.catalogs.first().cloned().unwrap_or_else(|| "main".into());
        let ctx = Context {
            catalog: s.catalog.clone().unwrap_or(default_catalog),
            schema: s.schema.clone().unwrap_or_else(|| "default".into()),
            params: s.params.clone(),
        };
        (s.sql.clone(), ctx)
    };
    let outcome = match crate::sql::parse(&sql) {
        Ok(stmt) => exec::execute(&emu, stmt, &ctx).await,
        Err(e) => Err(e),
    };
    {
        let mut inner = emu.lock();
        if let Some(s) = inner.statements.get_mut(&id) {
            match outcome {
                Ok(result) => {
                    s.state = StState::Succeeded;
                    s.result = Some(result);
                }
                Err(e) => {
                    tracing::info!(statement = %id, class = %e.class, "statement failed");
                    s.state = StState::Failed;
                    s.error = Some(e);
                }
            }
            s.executing = false;
            s.finished_at = Some(Instant::now());
        }
    }
    emu.notify();
}

fn to_json(s: &Statement, result_ttl: Duration) -> Value {
    let state = s.visible_state(result_ttl);
    let mut status = json!({"state": state.as_str()});
    if let (StState::Failed, Some(e)) = (state, &s.error) {
        status["error"] = json!({"error_code": e.error_code, "message": e.message});
        status["sql_state"] = json!(e.sql_state);
    }
    let mut body = json!({"statement_id": s.id, "status": status});
    if let (StState::Succeeded, Some(r)) = (state, &s.result) {
        let limit = s.row_limit.map_or(r.rows.len(), |l| (l as usize).min(r.rows.len()));
        let rows = &r.rows[..limit];
        let columns: Vec<Value> = r
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| json!({"name": c.name, "position": i, "type_name": c.type_name, "type_text": c.type_text}))
            .collect();
        body["manifest"] = json!({
            "format": "JSON_ARRAY",
            "schema": {"column_count": columns.len(), "columns": columns},
            "total_chunk_count": 1,
            "chunks": [{"chunk_index": 0, "row_offset": 0, "row_count": rows.len()}],
            "total_row_count": rows.len(),
            "truncated": limit < r.rows.len(),
        });
        let mut result = json!({"chunk_index": 0, "row_offset": 0, "row_count": rows.len()});
        // Like the real API, an empty result carries no `data_array`.
        if !rows.is_empty() {
            result["data_array"] = json!(rows);
        }
        body["result"] = result;
    }
    body
}

/// One line of `GET /_emulator/statements`.
pub fn log_json(s: &Statement, result_ttl: Duration) -> Value {
    let state = s.visible_state(result_ttl);
    json!({
        "statement_id": s.id,
        "statement": s.sql,
        "warehouse_id": s.warehouse_id,
        "catalog": s.catalog,
        "schema": s.schema,
        "state": state.as_str(),
        "error_class": s.error.as_ref().map(|e| e.class.clone()),
        "error_code": s.error.as_ref().map(|e| e.error_code),
        "message": s.error.as_ref().map(|e| e.message.clone()),
        "received_at": s.received_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_timeouts() {
        assert_eq!(wait_timeout("0s").unwrap(), Duration::ZERO);
        assert_eq!(wait_timeout("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(wait_timeout("50s").unwrap(), Duration::from_secs(50));
        for bad in ["4s", "51s", "10", "s", "-5s", "5 s", "1m"] {
            assert!(wait_timeout(bad).is_err(), "{bad}");
        }
    }
}
