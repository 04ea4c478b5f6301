//! The Functions host's invocation shape (`POST /<FunctionName>` with `Data`/`Metadata`), used when HTTP
//! requests are not proxied, and by non-HTTP triggers.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::intake::invocation_answer;
use crate::sources::http::api::{self, ApiRequest, ApiResponse};

/// The HTTP-triggered function's name (its folder under `function/`).
pub const HTTP_FUNCTION: &str = "segment";

/// `Data.req` as the host sends it for an HTTP trigger.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HttpData {
    #[serde(default)]
    url: String,
    #[serde(default)]
    method: String,
    #[serde(default)]
    headers: HashMap<String, Value>,
    #[serde(default)]
    params: HashMap<String, Value>,
    #[serde(default)]
    body: Option<Value>,
}

fn header_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Array(items) => items.first().and_then(|i| i.as_str()).map(str::to_string),
        _ => None,
    }
}

/// The request path: from `Params.path` (route `v1/{*path}`), else from the URL.
fn request_path(d: &HttpData) -> String {
    if let Some(p) = d.params.get("path").and_then(Value::as_str) {
        return format!("/v1/{}", p.trim_start_matches('/'));
    }
    let after_scheme = d.url.split_once("://").map_or(d.url.as_str(), |(_, rest)| rest);
    let path = after_scheme.find('/').map_or("/", |i| &after_scheme[i..]);
    path.split(['?', '#']).next().unwrap_or("/").to_string()
}

/// Handles `POST /segment` with `Data.req`, answering with `Outputs.res`.
pub async fn http_invocation(state: &AppState, payload: Vec<u8>) -> (u16, Value) {
    // The invocation is read and freed before the request is handled, which waits for the commit.
    let HttpRequest { method, path, headers, body } = match http_request(payload) {
        Ok(r) => r,
        Err(error) => return (400, json!({"success": false, "error": error})),
    };
    let lookup = |name: &str| headers.get(name).cloned();
    let res = api::handle(state, ApiRequest { method: &method, path: &path, header: &lookup, body }).await;
    (200, invocation_answer(json!({"res": http_output(&res)}), vec![format!("{method} {path} -> {}", res.status)]))
}

/// The request an HTTP invocation carries.
struct HttpRequest {
    method: String,
    path: String,
    /// By lower-case name.
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

fn http_request(payload: Vec<u8>) -> Result<HttpRequest, String> {
    let mut invocation: Value =
        serde_json::from_slice(&payload).map_err(|e| format!("invocation is not valid JSON: {e}"))?;
    drop(payload);
    let req = invocation.pointer_mut("/Data/req").ok_or("invocation has no Data.req")?.take();
    drop(invocation);
    // The host may double-encode values it cannot turn into objects.
    let req = match req {
        Value::String(s) => serde_json::from_str(&s).unwrap_or(Value::Null),
        other => other,
    };
    let mut data: HttpData = serde_json::from_value(req).map_err(|e| format!("Data.req: {e}"))?;
    let headers = data.headers.iter().filter_map(|(k, v)| Some((k.to_ascii_lowercase(), header_text(v)?))).collect();
    let body = match data.body.take() {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => s.into_bytes(),
        Some(other) => other.to_string().into_bytes(),
    };
    let path = request_path(&data);
    let method = if data.method.is_empty() { "POST".to_string() } else { data.method.to_ascii_uppercase() };
    Ok(HttpRequest { method, path, headers, body })
}

fn http_output(res: &ApiResponse) -> Value {
    let mut headers = serde_json::Map::new();
    headers.insert("Content-Type".into(), "application/json".into());
    for (k, v) in &res.headers {
        headers.insert((*k).into(), v.clone().into());
    }
    json!({"statusCode": res.status, "body": res.body_text(), "headers": headers})
}

/// The timer-triggered function's name (its folder under `function/`).
pub const MAINTAIN_FUNCTION: &str = "maintain";

/// One maintenance run at a time in a process; the timer is a singleton across instances.
static RUNNING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The timer's invocation: maintains every table and answers with one log line per table. Any failed table fails
/// the invocation, so that it shows as failed in the host's monitoring; the other tables are maintained still.
pub async fn maintain_invocation(state: &AppState) -> (u16, serde_json::Value) {
    let answer = invocation_answer;
    let Ok(_guard) = RUNNING.try_lock() else {
        return (200, answer(serde_json::json!({}), vec!["maintenance is already running in this instance".into()]));
    };
    match crate::maintain::run(&state.config, state.catalog.as_deref(), &[]).await {
        Ok(reports) => {
            let failed = reports.iter().filter(|r| r.error.is_some()).count();
            let logs: Vec<String> = reports.iter().map(|r| r.to_string()).collect();
            (if failed == 0 { 200 } else { 500 }, answer(serde_json::json!({}), logs))
        }
        Err(e) => (500, answer(serde_json::json!({}), vec![format!("maintenance failed: {e}")])),
    }
}
