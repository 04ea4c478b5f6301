//! `/_emulator/*`: what tests use to look inside and to inject faults. No authentication.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::errors::{ApiError, Resp};
use crate::state::Emulator;
use crate::statements;
use crate::warehouses::{self, WhState};

/// The next `remaining` requests whose path starts with `path_prefix` (and whose method is `method`, when given)
/// fail with `status`.
#[derive(Clone, Debug)]
pub struct Fault {
    pub status: u16,
    pub remaining: u64,
    pub path_prefix: String,
    pub method: Option<String>,
    pub retry_after_secs: u64,
}

/// Consumes one matching fault, if any, and returns the error to answer with.
pub fn take_fault(emu: &Emulator, method: &str, path: &str) -> Option<ApiError> {
    let mut inner = emu.lock();
    let i = inner.faults.iter().position(|f| {
        f.remaining > 0 && path.starts_with(&f.path_prefix) && f.method.as_deref().is_none_or(|m| m == method)
    })?;
    let fault = &mut inner.faults[i];
    fault.remaining -= 1;
    let error = ApiError::fault(fault.status, fault.retry_after_secs);
    if fault.remaining == 0 {
        inner.faults.remove(i);
    }
    Some(error)
}

pub fn handle(emu: &Arc<Emulator>, method: &str, rest: &str, body: &[u8]) -> Resp {
    let outcome = match (method, rest.trim_end_matches('/')) {
        ("GET", "statements") => Ok(list_statements(emu)),
        ("GET", "faults") => Ok(faults_json(emu)),
        ("POST", "faults") => serde_json::from_slice::<Value>(body)
            .map_err(|e| ApiError::malformed(format!("Invalid JSON: {e}")))
            .and_then(|v| set_faults(emu, &v)),
        ("POST", "reset") => {
            emu.reset();
            Ok(Resp::ok(json!({})))
        }
        // Ends an outage without forgetting what the workspace holds.
        ("DELETE", "faults") => {
            let mut inner = emu.lock();
            inner.faults.clear();
            inner.slow_statements = std::time::Duration::ZERO;
            Ok(Resp::ok(json!({})))
        }
        _ => Err(ApiError::no_endpoint(method, &format!("/_emulator/{rest}"))),
    };
    outcome.unwrap_or_else(ApiError::into_resp)
}

fn list_statements(emu: &Emulator) -> Resp {
    let inner = emu.lock();
    let all: Vec<Value> = inner
        .order
        .iter()
        .filter_map(|id| inner.statements.get(id))
        .map(|s| statements::log_json(s, emu.settings.result_ttl))
        .collect();
    Resp::ok(json!({"statements": all}))
}

fn faults_json(emu: &Emulator) -> Resp {
    let inner = emu.lock();
    let faults: Vec<Value> = inner
        .faults
        .iter()
        .map(|f| {
            json!({"status": f.status, "count": f.remaining, "path_prefix": f.path_prefix, "method": f.method,
                   "retry_after_secs": f.retry_after_secs})
        })
        .collect();
    Resp::ok(json!({"faults": faults, "slow_statements_ms": inner.slow_statements.as_millis() as u64}))
}

fn u64_field(body: &serde_json::Map<String, Value>, key: &str, default: u64) -> Result<u64, ApiError> {
    match body.get(key) {
        None => Ok(default),
        Some(v) => v.as_u64().ok_or_else(|| ApiError::invalid(format!("'{key}' must be a non-negative integer"))),
    }
}

/// `POST /_emulator/faults`. Any combination of: `{"status", "count", "path_prefix", "method",
/// "retry_after_secs"}` (a failure rule), `{"slow_statements_ms"}`, `{"warehouse_state": {"id", "state"}}`.
fn set_faults(emu: &Arc<Emulator>, body: &Value) -> Result<Resp, ApiError> {
    let body = body.as_object().ok_or_else(|| ApiError::malformed("Body must be a JSON object"))?;
    const KEYS: [&str; 7] =
        ["status", "count", "path_prefix", "method", "retry_after_secs", "slow_statements_ms", "warehouse_state"];
    if let Some(k) = body.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(ApiError::invalid(format!("Unknown key '{k}'; expected one of {}", KEYS.join(", "))));
    }
    let fault = match body.get("status") {
        None => None,
        Some(s) => {
            let status = s.as_u64().filter(|s| [429, 500, 503, 504].contains(s));
            let status = status.ok_or_else(|| ApiError::invalid("'status' must be 429, 500, 503 or 504"))? as u16;
            let count = u64_field(body, "count", 1)?;
            let path_prefix = match body.get("path_prefix") {
                None => "/api/".to_string(),
                Some(Value::String(p)) if p.starts_with('/') => p.clone(),
                Some(_) => return Err(ApiError::invalid("'path_prefix' must be a string starting with '/'")),
            };
            let method = match body.get("method") {
                None => None,
                Some(Value::String(m)) => Some(m.to_uppercase()),
                Some(_) => return Err(ApiError::invalid("'method' must be a string")),
            };
            let retry_after_secs = u64_field(body, "retry_after_secs", 1)?;
            Some(Fault { status, remaining: count, path_prefix, method, retry_after_secs })
        }
    };
    let warehouse = match body.get("warehouse_state") {
        None => None,
        Some(w) => {
            let id = w
                .get("id")
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::invalid("warehouse_state.id is required"))?;
            let state = w.get("state").and_then(Value::as_str).and_then(WhState::parse);
            let state = state.ok_or_else(|| {
                ApiError::invalid(
                    "warehouse_state.state must be STARTING, RUNNING, STOPPING, STOPPED, DELETING or DELETED",
                )
            })?;
            Some((id.to_string(), state))
        }
    };
    let slow = body.get("slow_statements_ms").map(|_| u64_field(body, "slow_statements_ms", 0)).transpose()?;
    if let Some((id, _)) = &warehouse
        && !emu.lock().warehouses.iter().any(|w| &w.id == id)
    {
        return Err(ApiError::not_found("RESOURCE_DOES_NOT_EXIST", format!("Warehouse {id} does not exist.")));
    }
    {
        let mut inner = emu.lock();
        if let Some(f) = fault.filter(|f| f.remaining > 0) {
            inner.faults.push(f);
        }
        if let Some(ms) = slow {
            inner.slow_statements = Duration::from_millis(ms);
        }
    }
    if let Some((id, state)) = warehouse {
        warehouses::set_state(emu, &id, state);
    }
    Ok(faults_json(emu))
}
