//! The HTTP server: the Tracking API on its own paths (as the Functions host proxies them), the host's
//! ping on `/`, and the invocation shape on `/<FunctionName>`.

pub mod api;
pub mod functions;
pub mod server;

use bytes::Buf;
use futures::StreamExt;
use warp::Filter;
use warp::http::{HeaderMap, Method, Response, StatusCode};

use serde_json::json;

use crate::app::AppState;
use api::{ApiRequest, ApiResponse};

fn reply(status: u16, body: String, headers: &[(&'static str, String)]) -> Response<String> {
    let mut r = Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json");
    for (k, v) in headers {
        r = r.header(*k, v);
    }
    r.body(body).unwrap_or_else(|_| Response::new(String::new()))
}

fn to_reply(res: ApiResponse) -> Response<String> {
    reply(res.status, res.body_text(), &res.headers)
}

/// An answer given before the request's body was read: the connection cannot carry another request.
fn closing(mut res: ApiResponse) -> ApiResponse {
    res.headers.push(("connection", "close".into()));
    res
}

/// The most of a refused body read and dropped before the answer (see [`drain`]).
const DRAIN_BYTES: usize = 8 << 20;

/// Reads and drops the rest of a body that is refused (a wrong key, an unknown path, too large), up to
/// [`DRAIN_BYTES`] and until `deadline`, before the answer is sent. A client is often still sending when the
/// answer is ready; closing the connection with its bytes unread makes the system reset it, and the client then
/// sees a reset connection instead of the answer that names what was wrong. A body announced as larger than the
/// bound is not read at all (its client is answered at once and may see the reset).
async fn drain(
    stream: &mut (impl futures::Stream<Item = Result<impl Buf, warp::Error>> + Unpin),
    read: usize,
    declared: Option<usize>,
    deadline: tokio::time::Instant,
) {
    if declared.is_some_and(|d| d > DRAIN_BYTES) {
        return;
    }
    let mut left = DRAIN_BYTES.saturating_sub(read);
    while let Ok(Some(Ok(chunk))) = tokio::time::timeout_at(deadline, stream.next()).await {
        match left.checked_sub(chunk.remaining()) {
            Some(rest) => left = rest,
            None => return,
        }
    }
}

/// Reads the body up to `limit` bytes, within the body deadline and the server's budget of bytes being read; past
/// the limit the rest is dropped as it is read ([`drain`], which holds none of the budget), past the deadline it is
/// not read. A body whose length is `declared` is read into one allocation of that size, made when its first bytes
/// arrive (pages are touched only as bytes do); past the API's request limit (a host's invocation) it grows as it
/// is read.
async fn read_body(
    state: &AppState,
    mut stream: impl futures::Stream<Item = Result<impl Buf, warp::Error>> + Unpin,
    limit: usize,
    setting: &str,
    declared: Option<usize>,
) -> Result<Vec<u8>, ApiResponse> {
    let timeout = state.config.connections.body_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    let late = || {
        closing(ApiResponse::error(
            408,
            format!(
                "the request body did not arrive within {} ms (SEGMENT_DELTA_BODY_TIMEOUT_MS)",
                timeout.as_millis()
            ),
        ))
    };
    // The whole budget, for a body larger than it (an invocation from the host): it is read alone.
    let most = state.config.connections.max_reading_bytes.div_ceil(1024) as u32;
    let mut held: Option<tokio::sync::OwnedSemaphorePermit> = None;
    let mut body = Vec::new();
    let mut stopping = state.stopping.subscribe();
    let stopped = || closing(ApiResponse::error(503, "the server is shutting down; retry shortly"));
    loop {
        let next = tokio::select! {
            next = tokio::time::timeout_at(deadline, stream.next()) => match next {
                Ok(next) => next,
                Err(_) => return Err(late()),
            },
            _ = stopping.wait_for(|s| *s) => return Err(stopped()),
        };
        let Some(chunk) = next else { break };
        let mut chunk = chunk.map_err(|e| ApiResponse::error(400, format!("could not read the request body: {e}")))?;
        // Kibibytes this body needs held, counted as it grows.
        let want = ((body.len() + chunk.remaining()).div_ceil(1024) as u32).min(most);
        let have = held.as_ref().map_or(0, |p| p.num_permits() as u32);
        if want > have {
            let more = state.reading.clone().acquire_many_owned(want - have);
            match tokio::time::timeout_at(deadline, more).await {
                Ok(Ok(p)) => match &mut held {
                    Some(h) => h.merge(p),
                    None => held = Some(p),
                },
                Ok(Err(_)) => return Err(stopped()),
                Err(_) => return Err(late()),
            }
        }
        if body.capacity() == 0 {
            body.reserve(declared.unwrap_or(0).min(limit).min(state.config.limits.max_request_bytes));
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            if body.len() + part.len() > limit {
                let message = format!("request body is larger than {limit} bytes ({setting})");
                let read = body.len() + chunk.remaining();
                // What was read, and its share of the budget, are given back before the rest is dropped.
                drop((std::mem::take(&mut body), held.take()));
                drain(&mut stream, read, declared, deadline).await;
                return Err(closing(ApiResponse::error(413, message)));
            }
            body.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(body)
}

/// Every route of the handler.
pub fn routes(state: AppState) -> impl Filter<Extract = (Response<String>,), Error = warp::Rejection> + Clone {
    warp::any()
        .and(warp::method())
        .and(warp::path::full())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .and_then(
            move |method: Method, path: warp::path::FullPath, headers: HeaderMap, stream| {
                let state = state.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(
                        serve_one(&state, method, path.as_str(), headers, stream).await,
                    )
                }
            },
        )
}

async fn serve_one(
    state: &AppState,
    method: Method,
    path: &str,
    headers: HeaderMap,
    mut stream: impl futures::Stream<Item = Result<impl Buf, warp::Error>> + Unpin,
) -> Response<String> {
    // The operator's endpoints: liveness, readiness (503 when a component is not ready), metrics.
    if method == Method::GET || method == Method::HEAD {
        match path {
            "/health" => return reply(200, json!({"status": "ok"}).to_string(), &[]),
            "/ready" => {
                let (ok, answer) = crate::ops::readiness(&state.config, state.catalog.as_deref()).await;
                return reply(if ok { 200 } else { 503 }, answer.to_string(), &[]);
            }
            "/metrics" => {
                let mut r = reply(200, crate::metrics::render(), &[]);
                r.headers_mut().insert(
                    "content-type",
                    warp::http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                return r;
            }
            _ => {}
        }
    }
    let function = path.trim_matches('/');
    let invocation = method == Method::POST
        && [functions::HTTP_FUNCTION, crate::sources::eventhub::EVENTHUB_FUNCTION, functions::MAINTAIN_FUNCTION]
            .iter()
            .any(|f| function.eq_ignore_ascii_case(f));
    // The host's invocations carry whole Event Hub batches; they are bounded by the buffer, not the API limit.
    // Compressed API bodies are bounded again after decompression.
    let (limit, setting) = if invocation {
        (state.config.flush.max_buffered_bytes, "SEGMENT_DELTA_MAX_BUFFERED_BYTES")
    } else {
        (state.config.limits.max_request_bytes, "SEGMENT_DELTA_MAX_REQUEST_BYTES")
    };
    let lookup = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let declared = lookup("content-length").and_then(|n| n.trim().parse().ok());
    // The path, the method and a write key in the Authorization header are checked before the body is read.
    if !invocation && let api::Route::Answer(res) = api::route(state, method.as_str(), path, &lookup) {
        // The server has already refused a Content-Length that is not a number, so `declared` is every length sent.
        let has_body = headers.contains_key("transfer-encoding") || declared.is_some_and(|n| n != 0);
        answered(path, &res);
        // A client that asked to be told before it sends its body (`Expect: 100-continue`) has sent none.
        let waiting = lookup("expect").is_some_and(|e| e.trim().eq_ignore_ascii_case("100-continue"));
        if has_body && !waiting {
            let deadline = tokio::time::Instant::now() + state.config.connections.body_timeout;
            drain(&mut stream, 0, declared, deadline).await;
        }
        return to_reply(if has_body { closing(res) } else { res });
    }
    let body = match read_body(state, stream, limit, setting, declared).await {
        Ok(b) => b,
        Err(res) => {
            answered(path, &res);
            return to_reply(res);
        }
    };
    if invocation {
        let (status, answer) = if function.eq_ignore_ascii_case(functions::HTTP_FUNCTION) {
            functions::http_invocation(state, body).await
        } else if function.eq_ignore_ascii_case(functions::MAINTAIN_FUNCTION) {
            functions::maintain_invocation(state).await
        } else {
            crate::sources::eventhub::invocation(state, body).await
        };
        return reply(status, answer.to_string(), &[]);
    }
    let res = api::handle(state, ApiRequest { method: method.as_str(), path, header: &lookup, body }).await;
    if res.status >= 500 {
        tracing::warn!(
            path,
            status = res.status,
            error = res.body["error"].as_str().unwrap_or_default(),
            "request failed"
        );
    }
    answered(path, &res);
    to_reply(res)
}

/// Counts an answer of the Tracking API by endpoint and status, and a refusal by its reason.
fn answered(path: &str, res: &ApiResponse) {
    use crate::metrics;
    let endpoint = match path.trim_end_matches('/').strip_prefix("/v1/") {
        Some("batch" | "import" | "b") => "batch",
        Some("track" | "identify" | "page" | "screen" | "group" | "alias" | "t" | "i" | "p" | "s" | "g" | "a") => {
            "event"
        }
        Some("webhook") => "webhook",
        Some(p) if p.starts_with("projects/") => "settings",
        _ => "other",
    };
    metrics::request(endpoint, res.status);
    let reason = match res.status {
        0..400 => return,
        400 => "invalid",
        401 => "write_key",
        403 => "origin",
        404 | 405 => "not_found",
        408 => "timeout",
        413 => "too_large",
        503 => "unavailable",
        500.. => "write_failed",
        _ => "other",
    };
    metrics::refused(reason);
}
