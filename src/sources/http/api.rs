//! The Tracking API, independent of transport: a request in, a JSON answer out. The warp server and the
//! Functions invocation shape both call [`handle`].

use serde_json::{Value, json};

use crate::app::AppState;
use crate::batch::{Submission, SubmitError};
use crate::intake::body::{self, BodyError};
use crate::intake::map_raw;
use crate::layout::rows::Mapped;
use crate::layout::value::now_micros;
use crate::segment::event::Arrival;

/// A request as either transport delivers it.
pub struct ApiRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// Header lookup by lower-case name.
    pub header: &'a (dyn Fn(&str) -> Option<String> + Sync),
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ApiResponse {
    pub status: u16,
    pub body: Value,
    pub headers: Vec<(&'static str, String)>,
}

impl ApiResponse {
    pub fn ok() -> Self {
        ApiResponse { status: 200, body: json!({"success": true}), headers: Vec::new() }
    }

    pub fn error(status: u16, message: impl Into<String>) -> Self {
        ApiResponse { status, body: json!({"success": false, "error": message.into()}), headers: Vec::new() }
    }
}

const EVENT_PATHS: &[&str] = &["track", "identify", "page", "screen", "group", "alias"];

/// What a request's line and headers decide, before its body is read.
pub enum Route {
    /// Answered without the body: the ping, an unknown path or method, a wrong key in the Authorization header.
    Answer(ApiResponse),
    /// Events for the Tracking API: a batch or one event of the type the path names, with the write key of the
    /// Authorization header when there is one (already known to be valid).
    Events { batch: bool, endpoint: String, header_key: Option<String> },
}

pub fn route(state: &AppState, method: &str, path: &str, header: &(dyn Fn(&str) -> Option<String> + Sync)) -> Route {
    let path = path.trim_end_matches('/');
    if path.is_empty() {
        return Route::Answer(match method {
            "GET" | "HEAD" => {
                ApiResponse { status: 200, body: json!({"name": "segment-delta", "status": "ok"}), headers: vec![] }
            }
            _ => ApiResponse::error(405, "only GET is served on /"),
        });
    }
    let Some(endpoint) = path.strip_prefix("/v1/") else {
        return Route::Answer(ApiResponse::error(404, format!("no such endpoint: {path}")));
    };
    let batch = matches!(endpoint, "batch" | "import");
    if !batch && !EVENT_PATHS.contains(&endpoint) {
        return Route::Answer(ApiResponse::error(404, format!("no such endpoint: {path}")));
    }
    if method != "POST" {
        return Route::Answer(ApiResponse::error(405, format!("{path} accepts POST only")));
    }
    // A key in the Authorization header is checked here; a key in the body once the body is read.
    let header_key = match header("authorization") {
        Some(h) => match body::basic_user(&h) {
            Some(k) => Some(k),
            None => {
                return Route::Answer(ApiResponse::error(
                    401,
                    "Authorization must be Basic with the write key as user name",
                ));
            }
        },
        None => None,
    };
    if let Some(k) = &header_key
        && state.config.sources.schema_for(Some(k)).is_none()
    {
        return Route::Answer(ApiResponse::error(401, "unknown write key"));
    }
    Route::Events { batch, endpoint: endpoint.to_string(), header_key }
}

pub async fn handle(state: &AppState, req: ApiRequest<'_>) -> ApiResponse {
    let (batch, endpoint, header_key) = match route(state, req.method, req.path, req.header) {
        Route::Answer(res) => return res,
        Route::Events { batch, endpoint, header_key } => (batch, endpoint, header_key),
    };
    let limits = &state.config.limits;
    let raw_len = req.body.len();
    if raw_len > limits.max_request_bytes {
        return body_error(BodyError::TooLarge { limit: limits.max_request_bytes });
    }
    let data = match body::decode((req.header)("content-encoding").as_deref(), req.body, limits.max_request_bytes) {
        Ok(d) => d,
        Err(e) => return body_error(e),
    };
    let parsed = match body::split(&data, batch, limits) {
        Ok(p) => p,
        Err(e) => return body_error(e),
    };
    let key = header_key.or(parsed.write_key.clone());
    let Some(schema) = state.config.sources.schema_for(key.as_deref()) else {
        let message = if key.is_some() {
            "unknown write key"
        } else {
            "missing write key: send it as the Basic user name or as writeKey"
        };
        return ApiResponse::error(401, message);
    };

    let received_at = now_micros();
    let arrival =
        Arrival { received_at, context: parsed.context.as_ref(), keep_received_at: false, sent_at: parsed.sent_at };
    let implied_type = (!batch).then_some(endpoint.as_str());
    let events: Vec<Mapped> = parsed.events.iter().map(|raw| map_raw(raw, &arrival, implied_type)).collect();
    let submission = Submission { schema: schema.to_string(), events, bytes: data.len() };
    match state.batcher.submit(submission).await {
        Ok(()) => ApiResponse::ok(),
        Err(e) => submit_error(&e),
    }
}

fn body_error(e: BodyError) -> ApiResponse {
    ApiResponse::error(e.status(), e.to_string())
}

pub fn submit_error(e: &SubmitError) -> ApiResponse {
    match e {
        SubmitError::Overloaded { .. } | SubmitError::ShuttingDown => {
            let mut r = ApiResponse::error(503, e.to_string());
            r.headers.push(("retry-after", "1".into()));
            r
        }
        SubmitError::Write(w) => {
            let mut r = ApiResponse::error(
                if w.retryable() { 503 } else { 500 },
                format!("write failed, nothing was acknowledged: {w}"),
            );
            if w.retryable() {
                r.headers.push(("retry-after", "1".into()));
            }
            r
        }
    }
}
