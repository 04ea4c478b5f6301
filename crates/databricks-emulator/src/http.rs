//! One warp filter takes every request; `dispatch` routes it by method and path so that unknown endpoints, faults,
//! authentication and errors are handled in one place, each with Databricks' error body.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;
use warp::Filter;
use warp::Reply;
use warp::http::{HeaderMap, HeaderValue, Method, StatusCode};

use crate::errors::{ApiError, Resp};
use crate::state::Emulator;
use crate::{auth, control, scim, statements, unity, warehouses};

struct Req {
    method: String,
    path: String,
    query: HashMap<String, String>,
    headers: HeaderMap,
    body: Bytes,
}

pub fn routes(
    emu: Arc<Emulator>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    let query = warp::query::raw().or(warp::any().map(String::new)).unify();
    warp::method().and(warp::path::full()).and(query).and(warp::header::headers_cloned()).and(warp::body::bytes()).then(
        move |method: Method, path: warp::path::FullPath, query: String, headers: HeaderMap, body: Bytes| {
            let emu = emu.clone();
            async move {
                let query = url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
                let req =
                    Req { method: method.as_str().to_string(), path: path.as_str().to_string(), query, headers, body };
                tracing::debug!(method = %req.method, path = %req.path, "request");
                into_reply(dispatch(&emu, req).await)
            }
        },
    )
}

fn into_reply(resp: Resp) -> warp::reply::Response {
    let mut reply = warp::reply::json(&resp.body).into_response();
    *reply.status_mut() = StatusCode::from_u16(resp.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in resp.headers {
        if let Ok(v) = HeaderValue::from_str(&value) {
            reply.headers_mut().insert(name, v);
        }
    }
    reply
}

/// Decodes `%XX` escapes of one path segment.
fn percent_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn json_body(req: &Req) -> Result<Value, ApiError> {
    if req.body.is_empty() {
        return Err(ApiError::malformed("The request body is empty; a JSON object is required"));
    }
    serde_json::from_slice(&req.body)
        .map_err(|e| ApiError::malformed(format!("Invalid JSON given in the body of the request: {e}")))
}

async fn dispatch(emu: &Arc<Emulator>, req: Req) -> Resp {
    if let Some(rest) = req.path.strip_prefix("/_emulator/") {
        return control::handle(emu, &req.method, rest, &req.body);
    }
    if let Some(error) = control::take_fault(emu, &req.method, &req.path) {
        return error.into_resp();
    }
    let decoded: Vec<String> = req.path.trim_matches('/').split('/').map(percent_decode).collect();
    let segs: Vec<&str> = decoded.iter().map(String::as_str).collect();
    let m = req.method.as_str();
    match (m, segs.as_slice()) {
        ("POST", ["oidc", "v1", "token"]) => return auth::oidc_token(emu, &req.headers, &req.body),
        ("GET", ["msi", "token"]) => return auth::msi_token(emu, &req.headers, &req.query),
        ("POST", [tenant, "oauth2", "v2.0", "token"]) => {
            return auth::entra_token(emu, tenant, &req.headers, &req.body);
        }
        (_, ["api", ..]) => {}
        _ => return ApiError::no_endpoint(m, &req.path).into_resp(),
    }
    let caller = match auth::check_bearer(emu, &req.headers) {
        Ok(c) => c,
        Err(e) => return e.into_resp(),
    };
    api(emu, m, &segs[1..], &req, &caller).await.unwrap_or_else(ApiError::into_resp)
}

async fn api(emu: &Arc<Emulator>, m: &str, segs: &[&str], req: &Req, caller: &str) -> Result<Resp, ApiError> {
    let directory = &emu.settings.directory;
    match (m, segs) {
        ("GET", ["2.0", "sql", "warehouses"]) => warehouses::list(emu),
        ("POST", ["2.0", "sql", "warehouses"]) => warehouses::create(emu, &json_body(req)?, caller),
        ("GET", ["2.0", "sql", "warehouses", id]) => warehouses::get(emu, id),
        ("POST", ["2.0", "sql", "warehouses", id, "start"]) => warehouses::start(emu, id),
        ("POST", ["2.0", "sql", "warehouses", id, "stop"]) => warehouses::stop(emu, id),
        ("POST", ["2.0", "sql", "statements"]) => statements::submit(emu, &json_body(req)?).await,
        ("GET", ["2.0", "sql", "statements", id]) => statements::get(emu, id),
        ("POST", ["2.0", "sql", "statements", id, "cancel"]) => statements::cancel(emu, id),
        ("GET", ["2.0", "preview", "scim", "v2", "Me"]) => Ok(Resp::ok(directory.me(caller))),
        ("GET", ["2.0", "preview", "scim", "v2", "ServicePrincipals"]) => {
            Ok(scim::list_service_principals(directory, &req.query, directory.is_admin(caller)))
        }
        ("GET", ["2.0", "preview", "scim", "v2", "ServicePrincipals", id]) => {
            Ok(scim::get_service_principal(directory, id, &req.query))
        }
        ("GET", ["2.0", "preview", "scim", "v2", "Users"]) => {
            Ok(scim::list_users(directory, &req.query, directory.is_admin(caller)))
        }
        ("GET", ["2.0", "preview", "scim", "v2", "Users", id]) => Ok(scim::get_user(directory, id, &req.query)),
        ("GET", ["2.0", "preview", "scim", "v2", "Groups"]) => Ok(scim::list_groups(directory, &req.query)),
        ("GET", ["2.0", "preview", "scim", "v2", "Groups", id]) => Ok(scim::get_group(directory, id, &req.query)),
        ("GET", ["2.0", "permissions", "warehouses", id] | ["2.0", "permissions", "sql", "warehouses", id]) => {
            warehouses::get_permissions(emu, id, caller)
        }
        ("PATCH", ["2.0", "permissions", "warehouses", id] | ["2.0", "permissions", "sql", "warehouses", id]) => {
            warehouses::update_permissions(emu, id, &json_body(req)?)
        }
        ("GET", ["2.1", "unity-catalog", "catalogs", name]) => unity::get_catalog(emu, name),
        ("GET", ["2.1", "unity-catalog", "schemas", name]) => unity::get_schema(emu, name),
        ("POST", ["2.1", "unity-catalog", "schemas"]) => unity::create_schema(emu, &json_body(req)?),
        ("GET", ["2.1", "unity-catalog", "tables", name]) => unity::get_table(emu, name).await,
        ("GET", ["2.1", "unity-catalog", "external-locations"]) => unity::list_external_locations(emu),
        ("GET", ["2.1", "unity-catalog", "external-locations", name]) => unity::get_external_location(emu, name),
        ("GET", ["2.1", "unity-catalog", "permissions", kind, name]) => {
            unity::get_permissions(emu, kind, name, &req.query)
        }
        ("GET", ["2.1", "unity-catalog", "effective-permissions", kind, name]) => {
            unity::get_effective_permissions(emu, kind, name, &req.query)
        }
        _ => Err(ApiError::no_endpoint(m, &req.path)),
    }
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn decodes_escapes_only() {
        assert_eq!(percent_decode("main.web.a%20b"), "main.web.a b");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
