//! The HTTP server: the Tracking API on its own paths (as the Functions host proxies them), the host's
//! ping on `/`, and the invocation shape on `/<FunctionName>`.

pub mod api;
pub mod functions;

use bytes::Buf;
use futures::StreamExt;
use warp::Filter;
use warp::http::{HeaderMap, Method, Response, StatusCode};

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
    reply(res.status, res.body.to_string(), &res.headers)
}

/// Reads the body up to `limit` bytes; past it the rest is not read.
async fn read_body(
    mut stream: impl futures::Stream<Item = Result<impl Buf, warp::Error>> + Unpin,
    limit: usize,
    setting: &str,
) -> Result<Vec<u8>, ApiResponse> {
    let mut body = Vec::new();
    while let Some(chunk) = stream.next().await {
        let mut chunk = chunk.map_err(|e| ApiResponse::error(400, format!("could not read the request body: {e}")))?;
        while chunk.has_remaining() {
            let part = chunk.chunk();
            if body.len() + part.len() > limit {
                let message = format!("request body is larger than {limit} bytes ({setting})");
                let mut res = ApiResponse::error(413, message);
                // The rest of the body is never read, so the connection cannot carry another request.
                res.headers.push(("connection", "close".into()));
                return Err(res);
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
    stream: impl futures::Stream<Item = Result<impl Buf, warp::Error>> + Unpin,
) -> Response<String> {
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
    let body = match read_body(stream, limit, setting).await {
        Ok(b) => b,
        Err(res) => return to_reply(res),
    };
    if invocation {
        let (status, answer) = if function.eq_ignore_ascii_case(functions::HTTP_FUNCTION) {
            functions::http_invocation(state, &body).await
        } else if function.eq_ignore_ascii_case(functions::MAINTAIN_FUNCTION) {
            functions::maintain_invocation(state).await
        } else {
            crate::sources::eventhub::invocation(state, &body).await
        };
        return reply(status, answer.to_string(), &[]);
    }
    let lookup = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let res = api::handle(state, ApiRequest { method: method.as_str(), path, header: &lookup, body }).await;
    if res.status >= 500 {
        tracing::warn!(path, status = res.status, error = %res.body["error"], "request failed");
    }
    to_reply(res)
}
