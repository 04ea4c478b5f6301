//! The Tracking API, independent of transport: a request in, a JSON answer out. The warp server and the
//! Functions invocation shape both call [`handle`].

use serde_json::{Value, json};

use crate::app::AppState;
use crate::batch::{Submission, SubmitError};
use crate::intake::body::{self, BodyError};
use crate::intake::map_body;
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
    /// The body as sent: JSON, or nothing (a 204).
    pub fn body_text(&self) -> String {
        if self.body.is_null() { String::new() } else { self.body.to_string() }
    }

    pub fn ok() -> Self {
        ApiResponse { status: 200, body: json!({"success": true}), headers: Vec::new() }
    }

    pub fn error(status: u16, message: impl Into<String>) -> Self {
        ApiResponse { status, body: json!({"success": false, "error": message.into()}), headers: Vec::new() }
    }
}

/// The Tracking API's endpoints under `/v1/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// One event of this type: `/v1/track` and the rest, and analytics.js' one-letter paths (`/v1/t`, ...).
    Event(&'static str),
    /// `{"batch": [...]}`: `/v1/batch`, `/v1/import`, and `/v1/b` (analytics.js' batching, the mobile SDKs).
    Batch,
    /// What Segment's Webhooks destinations forward: one event, an array of events, or a batch.
    Webhook,
}

impl Endpoint {
    fn from_path(endpoint: &str) -> Option<Endpoint> {
        Some(match endpoint {
            "track" | "t" => Endpoint::Event("track"),
            "identify" | "i" => Endpoint::Event("identify"),
            "page" | "p" => Endpoint::Event("page"),
            "screen" | "s" => Endpoint::Event("screen"),
            "group" | "g" => Endpoint::Event("group"),
            "alias" | "a" => Endpoint::Event("alias"),
            "batch" | "import" | "b" => Endpoint::Batch,
            "webhook" => Endpoint::Webhook,
            _ => return None,
        })
    }

    fn methods(self) -> &'static [&'static str] {
        match self {
            Endpoint::Webhook => &["POST", "PUT", "PATCH"],
            _ => &["POST"],
        }
    }
}

/// What a request's line and headers decide, before its body is read.
pub enum Route {
    /// Answered without the body: the ping, a preflight, the settings, an unknown path or method, a wrong key in
    /// the Authorization header.
    Answer(ApiResponse),
    /// Events, with the write key of the Authorization header when there is one (already known to be valid).
    Events { endpoint: Endpoint, header_key: Option<String> },
}

type Header<'a> = &'a (dyn Fn(&str) -> Option<String> + Sync);

/// Routes a request and adds the CORS headers its origin is due.
pub fn route(state: &AppState, method: &str, path: &str, header: Header<'_>) -> Route {
    match gate(state, method, path, header) {
        Route::Answer(res) => Route::Answer(cors(state, header, res)),
        events => events,
    }
}

/// A browser request from an origin that is not allowed is refused outright, preflight or not: a `text/plain`
/// POST needs no preflight, and its browser would only hide the answer after the events were written.
fn gate(state: &AppState, method: &str, path: &str, header: Header<'_>) -> Route {
    if let Some(origin) = header("origin")
        && path.starts_with("/v1/")
        && !state.config.cors_origins.allows(&origin)
    {
        return Route::Answer(ApiResponse::error(
            403,
            format!("origin {origin} is not allowed to send events (SEGMENT_DELTA_CORS_ORIGINS)"),
        ));
    }
    route_inner(state, method, path, header)
}

fn route_inner(state: &AppState, method: &str, path: &str, header: Header<'_>) -> Route {
    let path = path.trim_end_matches('/');
    if path.is_empty() {
        return Route::Answer(match method {
            "GET" | "HEAD" => {
                ApiResponse { status: 200, body: json!({"name": "segment-delta", "status": "ok"}), headers: vec![] }
            }
            _ => ApiResponse::error(405, "only GET is served on /"),
        });
    }
    let Some(rest) = path.strip_prefix("/v1/") else {
        return Route::Answer(ApiResponse::error(404, format!("no such endpoint: {path}")));
    };
    if let Some(key) = rest.strip_prefix("projects/").and_then(|r| r.strip_suffix("/settings")) {
        return Route::Answer(match method {
            "GET" | "HEAD" => settings(state, key, header),
            "OPTIONS" => preflight(header),
            _ => ApiResponse::error(405, format!("{path} accepts GET only")),
        });
    }
    let Some(endpoint) = Endpoint::from_path(rest) else {
        return Route::Answer(ApiResponse::error(404, format!("no such endpoint: {path}")));
    };
    if method == "OPTIONS" {
        return Route::Answer(preflight(header));
    }
    if !endpoint.methods().contains(&method) {
        return Route::Answer(ApiResponse::error(
            405,
            format!("{path} accepts {} only", endpoint.methods().join(", ")),
        ));
    }
    // A key in the Authorization header is checked here; a key in the body (or a signature of it) once the body
    // is read.
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
    Route::Events { endpoint, header_key }
}

/// How long a browser may reuse a preflight's answer.
const PREFLIGHT_MAX_AGE: &str = "86400";

/// The request headers a browser may send: those the SDKs use (analytics.js adds `X-Retry-Count` to retries).
const ALLOWED_HEADERS: &str = "Content-Type, Authorization, Content-Encoding, X-Signature, X-Retry-Count";

fn preflight(header: Header<'_>) -> ApiResponse {
    // The headers the browser asks for, when they are plain header names: write keys are public, so no header is
    // worth refusing; else the list the SDKs use.
    let asked = header("access-control-request-headers")
        .filter(|h| !h.trim().is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_, ".contains(&b)));
    ApiResponse {
        status: 204,
        body: Value::Null,
        headers: vec![
            ("access-control-allow-methods", "GET, POST, PUT, PATCH, OPTIONS".into()),
            ("access-control-allow-headers", asked.unwrap_or_else(|| ALLOWED_HEADERS.into())),
            ("access-control-max-age", PREFLIGHT_MAX_AGE.into()),
        ],
    }
}

/// Lets an allowed origin read the answer; an origin that is not allowed gets no CORS header, so its browser
/// refuses the answer (and a preflight from it fails).
fn cors(state: &AppState, header: Header<'_>, mut res: ApiResponse) -> ApiResponse {
    res.headers.push(("vary", "Origin".into()));
    let Some(origin) = header("origin") else { return res };
    if state.config.cors_origins.allows(&origin) {
        res.headers.push(("access-control-allow-origin", origin));
    } else {
        res.headers.retain(|(k, _)| !k.starts_with("access-control-"));
    }
    res
}

/// The settings analytics.js loads when it starts (`cdnURL` pointing here): this handler as its API host, every
/// event enabled, no device-mode integrations to fetch.
fn settings(state: &AppState, key: &str, header: Header<'_>) -> ApiResponse {
    if matches!(state.config.sources, crate::config::Sources::Keys(_))
        && state.config.sources.schema_for(Some(key)).is_none()
    {
        return ApiResponse::error(404, "unknown write key");
    }
    let (protocol, host) = match &state.config.public_url {
        Some(u) => {
            let host = match u.port() {
                Some(p) => format!("{}:{p}", u.host_str().unwrap_or_default()),
                None => u.host_str().unwrap_or_default().to_string(),
            };
            let prefix = u.path().trim_end_matches('/');
            (u.scheme().to_string(), format!("{host}{prefix}"))
        }
        None => {
            let forwarded = |name: &str| header(name).and_then(|v| v.split(',').next().map(|s| s.trim().to_string()));
            let host = forwarded("x-forwarded-host").or_else(|| header("host")).unwrap_or_else(|| "localhost".into());
            let protocol = forwarded("x-forwarded-proto").unwrap_or_else(|| "http".into());
            (protocol, host)
        }
    };
    let body = json!({
        "integrations": {
            "Segment.io": {
                "apiKey": key,
                "apiHost": format!("{host}/v1"),
                "protocol": protocol,
                "unbundledIntegrations": [],
                "addBundledMetadata": false,
                "maybeBundledConfigIds": {},
                "versionSettings": {"version": "4.4.7", "componentTypes": ["browser"]},
            }
        },
        "plan": {
            "track": {"__default": {"enabled": true, "integrations": {}}},
            "identify": {"__default": {"enabled": true}},
            "group": {"__default": {"enabled": true}},
        },
        "edgeFunction": {},
        "analyticsNextEnabled": true,
        "middlewareSettings": {},
        "enabledMiddleware": {},
        "metrics": {"sampleRate": 0},
        "legacyVideoPluginsEnabled": false,
        "remotePlugins": [],
    });
    ApiResponse { status: 200, body, headers: vec![("cache-control", "public, max-age=300".into())] }
}

pub async fn handle(state: &AppState, req: ApiRequest<'_>) -> ApiResponse {
    let header = req.header;
    let res = match accept(state, req) {
        Ok(accepted) => commit(state, accepted).await,
        Err(res) => res,
    };
    cors(state, header, res)
}

/// A request's events, mapped, and what answering it needs once they are committed. It holds none of the
/// request's bytes: those are freed before the wait for the commit, which at saturation is most of a request's life.
struct Accepted {
    submission: Submission,
    forget: Vec<String>,
    source: &'static str,
}

/// Checks, reads and maps a request; an answer when it goes no further.
fn accept(state: &AppState, req: ApiRequest<'_>) -> Result<Accepted, ApiResponse> {
    let (endpoint, header_key) = match gate(state, req.method, req.path, req.header) {
        Route::Answer(res) => return Err(res),
        Route::Events { endpoint, header_key } => (endpoint, header_key),
    };
    let limits = &state.config.limits;
    let raw_len = req.body.len();
    if raw_len > limits.max_request_bytes {
        return Err(body_error(BodyError::TooLarge { limit: limits.max_request_bytes }));
    }
    let data = body::decode((req.header)("content-encoding").as_deref(), &req.body, limits.max_request_bytes)
        .map_err(body_error)?;
    let parsed = match endpoint {
        Endpoint::Event(_) => body::split(&data, false, limits),
        Endpoint::Batch => body::split(&data, true, limits),
        Endpoint::Webhook => body::split_webhook(&data, limits),
    }
    .map_err(body_error)?;
    // Segment signs what it forwards with the shared secret, which is the source's write key.
    let signed = match (endpoint, (req.header)("x-signature")) {
        (Endpoint::Webhook, Some(signature)) => match signed_by(state, &req.body, &data, &signature) {
            Some(key) => Some(key),
            None => {
                return Err(ApiResponse::error(401, "X-Signature is not the HMAC-SHA1 of the body with a write key"));
            }
        },
        _ => None,
    };
    let key = signed.or(header_key).or(parsed.write_key.clone());
    let Some(schema) = state.config.sources.schema_for(key.as_deref()) else {
        let message = if key.is_some() {
            "unknown write key"
        } else {
            "missing write key: send it as the Basic user name or as writeKey"
        };
        return Err(ApiResponse::error(401, message));
    };

    let received_at = now_micros();
    // Forwarded events were received by Segment first: its receivedAt is kept.
    let keep_received_at = endpoint == Endpoint::Webhook;
    let arrival = Arrival { received_at, context: parsed.context.as_ref(), keep_received_at, sent_at: parsed.sent_at };
    let implied_type = match endpoint {
        Endpoint::Event(t) => Some(t),
        _ => None,
    };
    let (events, built) = map_body(&parsed, &arrival, implied_type);
    let forget = crate::sources::users_to_forget(&events);
    let source = if endpoint == Endpoint::Webhook { "webhook" } else { "http" };
    let submission = Submission { schema: schema.to_string(), events, bytes: data.len().max(built) };
    Ok(Accepted { submission, forget, source })
}

/// Waits for the commit of an accepted request's rows, then forgets the users it asked to forget.
async fn commit(state: &AppState, accepted: Accepted) -> ApiResponse {
    let Accepted { submission, forget, source } = accepted;
    let (n, schema) = (submission.events.len(), submission.schema.clone());
    crate::metrics::received(source, n);
    let started = std::time::Instant::now();
    if let Err(e) = state.batcher.submit(submission).await {
        return submit_error(&e);
    }
    crate::metrics::accepted(source, n, started.elapsed());
    match crate::sources::apply_deletes(&state.config, &schema, &forget).await {
        Ok(done) if !forget.is_empty() => {
            let mut res = ApiResponse::ok();
            res.body["deleted"] =
                json!(done.removed.iter().filter(|(_, n)| **n > 0).collect::<std::collections::BTreeMap<_, _>>());
            res
        }
        Ok(_) => ApiResponse::ok(),
        Err(e) => ApiResponse::error(500, e),
    }
}

/// The write key whose HMAC-SHA1 of the body is `signature` (hex), compared in constant time with every key.
/// Segment's Webhooks (Actions) destination signs a batch (a JSON array) by its first event alone, so for an array
/// the first element's bytes are tried as well.
fn signed_by(state: &AppState, raw: &[u8], body: &[u8], signature: &str) -> Option<String> {
    let first = body
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .filter(|&i| body[i] == b'[')
        .and_then(|i| crate::segment::scan::array_items(body, i..body.len()).ok())
        .and_then(|items| items.into_iter().next())
        .map(|r| &body[r]);
    signed_by_key(state, raw, signature).or_else(|| first.and_then(|f| signed_by_key(state, f, signature)))
}

fn signed_by_key(state: &AppState, body: &[u8], signature: &str) -> Option<String> {
    use hmac::{Hmac, Mac};
    use subtle::ConstantTimeEq;
    let given = decode_hex(signature.trim())?;
    let mut found = None;
    let keys: Vec<String> = match &state.config.sources {
        crate::config::Sources::Keys(keys) => keys.iter().map(|(k, _)| k.expose().to_string()).collect(),
        // Locally, without keys, nothing can be verified: the signature is accepted as it is.
        crate::config::Sources::Open { .. } => return Some(String::new()),
    };
    for key in keys {
        let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(key.as_bytes()) else { continue };
        mac.update(body);
        let expected = mac.finalize().into_bytes();
        if bool::from(expected.as_slice().ct_eq(&given)) {
            found = Some(key);
        }
    }
    found
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
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
