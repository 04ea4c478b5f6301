//! Who may call the APIs: the personal access token, and tokens issued by the emulator's three token endpoints
//! (Databricks OAuth M2M, an App Service-style managed identity endpoint, an Entra ID-style client credentials
//! endpoint). Issued tokens expire after `--token-ttl-secs`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::json;
use warp::http::HeaderMap;

use crate::errors::{ApiError, Resp, oauth_error};
use crate::state::Emulator;

/// The AzureDatabricks application: the resource (or `<resource>/.default` scope) Entra tokens are issued for.
pub const AZURE_DATABRICKS: &str = "2ff814a6-3304-4ab8-85cb-cd0e6f879c1d";

/// Issues a token that identifies `identity` (the application id of the service principal it was issued to).
fn issue(emu: &Emulator, kind: &str, identity: &str) -> (String, Duration) {
    let token = format!("emu-{kind}-{}", uuid::Uuid::new_v4().simple());
    let ttl = emu.settings.token_ttl;
    let mut inner = emu.lock();
    let now = Instant::now();
    inner.tokens.retain(|_, (expiry, _)| *expiry > now);
    inner.tokens.insert(token.clone(), (now + ttl, identity.to_string()));
    (token, ttl)
}

/// Every `/api/` request: `Authorization: Bearer <PAT or issued, unexpired token>`. Returns whom the token
/// identifies: `--principal` for the PAT, the service principal a token was issued to otherwise.
pub fn check_bearer(emu: &Emulator, headers: &HeaderMap) -> Result<String, ApiError> {
    let not_sent = || ApiError::unauthenticated("Credential was not sent or was of an unsupported type for this API.");
    let value = headers.get(warp::http::header::AUTHORIZATION).ok_or_else(not_sent)?;
    let value = value.to_str().map_err(|_| not_sent())?;
    let (scheme, token) = value.split_once(' ').ok_or_else(not_sent)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(not_sent());
    }
    let token = token.trim();
    if token == emu.settings.token {
        return Ok(emu.settings.principal.clone());
    }
    match emu.lock().tokens.get(token) {
        Some((expiry, identity)) if *expiry > Instant::now() => Ok(identity.clone()),
        Some(_) => Err(ApiError::unauthenticated("Token expired.")),
        None => Err(ApiError::unauthenticated("Invalid access token.")),
    }
}

/// A form-encoded body, after checking the content type every OAuth endpoint requires.
fn form(headers: &HeaderMap, body: &[u8]) -> Result<HashMap<String, String>, Resp> {
    let content_type = headers.get(warp::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !content_type.to_ascii_lowercase().starts_with("application/x-www-form-urlencoded") {
        return Err(oauth_error(400, "invalid_request", "Content-Type must be application/x-www-form-urlencoded"));
    }
    Ok(url::form_urlencoded::parse(body).into_owned().collect())
}

fn decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes()).next().map(|(_, v)| v.into_owned()).unwrap_or_default()
}

/// `POST /oidc/v1/token`: HTTP Basic `client_id:client_secret`, `grant_type=client_credentials&scope=all-apis`.
pub fn oidc_token(emu: &Emulator, headers: &HeaderMap, body: &[u8]) -> Resp {
    let form = match form(headers, body) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let basic = headers
        .get(warp::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic ").or_else(|| v.strip_prefix("basic ")))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b.trim()).ok())
        .and_then(|b| String::from_utf8(b).ok());
    let Some((id, secret)) = basic.as_deref().and_then(|b| b.split_once(':')) else {
        return oauth_error(401, "invalid_client", "Client authentication failed: HTTP Basic credentials are required");
    };
    // RFC 6749 §2.3.1 form-encodes both parts before Basic; clients that do not are accepted too.
    let known = emu.settings.client.as_ref().is_some_and(|(cid, csecret)| {
        (id == cid || decode(id) == *cid) && (secret == csecret || decode(secret) == *csecret)
    });
    if !known {
        return oauth_error(401, "invalid_client", "Client authentication failed");
    }
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return oauth_error(400, "unsupported_grant_type", "grant_type must be client_credentials");
    }
    let scopes: Vec<&str> = form.get("scope").map(|s| s.split(' ').collect()).unwrap_or_default();
    if !scopes.contains(&"all-apis") {
        return oauth_error(400, "invalid_scope", "scope must include all-apis");
    }
    let client_id = emu.settings.client.as_ref().map(|(cid, _)| cid.clone()).unwrap_or_default();
    let (token, ttl) = issue(emu, "oauth", &client_id);
    Resp::ok(json!({"access_token": token, "token_type": "Bearer", "expires_in": ttl.as_secs(), "scope": "all-apis"}))
}

/// `GET /msi/token?resource=...&api-version=2019-08-01` with `X-IDENTITY-HEADER`: the managed identity endpoint
/// an App Service / Functions host exposes as `IDENTITY_ENDPOINT`.
pub fn msi_token(emu: &Emulator, headers: &HeaderMap, query: &HashMap<String, String>) -> Resp {
    let Some(expected) = &emu.settings.identity_header else {
        return ApiError::no_endpoint("GET", "/msi/token").into_resp();
    };
    let sent = headers.get("x-identity-header").and_then(|v| v.to_str().ok());
    if sent != Some(expected.as_str()) {
        return oauth_error(400, "invalid_request", "The X-IDENTITY-HEADER header is missing or wrong");
    }
    if query.get("api-version").map(String::as_str) != Some("2019-08-01") {
        return oauth_error(400, "invalid_request", "api-version must be 2019-08-01");
    }
    let resource = query.get("resource").map(String::as_str).unwrap_or("");
    if resource.trim_end_matches('/') != AZURE_DATABRICKS {
        return oauth_error(
            400,
            "invalid_resource",
            format!("This emulator issues tokens only for {AZURE_DATABRICKS}"),
        );
    }
    let client_id = query.get("client_id").cloned().unwrap_or_else(|| "00000000-0000-0000-0000-00000000a11d".into());
    let (token, ttl) = issue(emu, "msi", &client_id);
    let expires_on = chrono::Utc::now().timestamp() + ttl.as_secs() as i64;
    Resp::ok(json!({
        "access_token": token, "expires_on": expires_on.to_string(), "resource": AZURE_DATABRICKS,
        "token_type": "Bearer", "client_id": client_id,
    }))
}

/// `POST /{tenant}/oauth2/v2.0/token`: Entra ID client credentials, with a client secret or a federated
/// (workload identity) assertion; scope `2ff814a6-.../.default`.
pub fn entra_token(emu: &Emulator, tenant: &str, headers: &HeaderMap, body: &[u8]) -> Resp {
    let Some(app) = &emu.settings.entra else {
        return ApiError::no_endpoint("POST", &format!("/{tenant}/oauth2/v2.0/token")).into_resp();
    };
    if tenant != app.tenant_id {
        return oauth_error(400, "invalid_request", format!("AADSTS90002: Tenant '{tenant}' not found."));
    }
    let form = match form(headers, body) {
        Ok(f) => f,
        Err(r) => return r,
    };
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return oauth_error(400, "unsupported_grant_type", "grant_type must be client_credentials");
    }
    if form.get("client_id") != Some(&app.client_id) {
        return oauth_error(400, "unauthorized_client", "AADSTS700016: Application not found in the directory.");
    }
    let by_secret = app.client_secret.is_some() && form.get("client_secret") == app.client_secret.as_ref();
    let by_assertion = app.federated_token.is_some()
        && form.get("client_assertion_type").map(String::as_str)
            == Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        && form.get("client_assertion") == app.federated_token.as_ref();
    if !by_secret && !by_assertion {
        return oauth_error(401, "invalid_client", "AADSTS7000215: Invalid client secret or assertion provided.");
    }
    if form.get("scope").map(String::as_str) != Some(&format!("{AZURE_DATABRICKS}/.default")) {
        return oauth_error(
            400,
            "invalid_scope",
            format!("AADSTS70011: The scope must be {AZURE_DATABRICKS}/.default"),
        );
    }
    let (token, ttl) = issue(emu, "entra", &app.client_id);
    Resp::ok(json!({"token_type": "Bearer", "expires_in": ttl.as_secs(), "ext_expires_in": ttl.as_secs(),
                    "access_token": token}))
}
