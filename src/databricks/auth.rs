//! Databricks credentials: a personal access token, OAuth machine-to-machine, or a Microsoft Entra token for a
//! managed identity, workload identity, service principal or the Azure CLI's account. Tokens are cached and renewed before they expire.

use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::Mutex;

use crate::config::Secret;
use crate::config::databricks::Auth;

/// The AzureDatabricks first-party application: the resource Entra tokens are issued for.
pub const AZURE_DATABRICKS_RESOURCE: &str = "2ff814a6-3304-4ab8-85cb-cd0e6f879c1d";

#[derive(Debug, thiserror::Error)]
#[error("could not obtain a Databricks token ({kind}): {message}")]
pub struct AuthError {
    pub kind: &'static str,
    pub message: String,
}

/// What `az account get-access-token --output json` prints (`expires_on`, seconds since the epoch, since Azure CLI
/// 2.54).
#[derive(Deserialize)]
struct CliAnswer {
    #[serde(rename = "accessToken")]
    access_token: String,
    #[serde(default)]
    expires_on: Option<serde_json::Value>,
}

/// A token for the AzureDatabricks resource from the Azure CLI's signed-in account.
async fn azure_cli_token(
    program: &str,
    tenant_id: Option<&str>,
    kind: &'static str,
) -> Result<(Secret, Duration), AuthError> {
    let err = |message: String| AuthError { kind, message };
    let scope = format!("{AZURE_DATABRICKS_RESOURCE}/.default");
    // On Windows the CLI is `az.cmd`, which only a shell finds.
    let mut command = if cfg!(windows) && program == "az" {
        let mut c = tokio::process::Command::new("cmd");
        c.args(["/C", program]);
        c
    } else {
        tokio::process::Command::new(program)
    };
    command.args(["account", "get-access-token", "--output", "json", "--scope", &scope]);
    if let Some(tenant) = tenant_id {
        command.args(["--tenant", tenant]);
    }
    command.stdin(std::process::Stdio::null()).kill_on_drop(true);
    let output = match tokio::time::timeout(Duration::from_secs(30), command.output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(err(format!("{program} not found: install the Azure CLI and run `az login`")));
        }
        Ok(Err(e)) => return Err(err(format!("{program}: {e}"))),
        Err(_) => return Err(err(format!("{program} account get-access-token did not answer within 30 s"))),
    };
    if !output.status.success() {
        // The CLI explains itself on stderr ("Please run 'az login' to setup account.").
        let stderr = String::from_utf8_lossy(&output.stderr);
        let snippet: String = stderr.trim().chars().take(300).collect();
        return Err(err(format!("{program} account get-access-token failed ({}): {snippet}", output.status)));
    }
    let answer: CliAnswer = serde_json::from_slice(&output.stdout)
        .map_err(|e| err(format!("unreadable answer of {program} account get-access-token: {e}")))?;
    let Some(at) = number(&answer.expires_on) else {
        return Err(err(format!("{program} printed no expires_on: use Azure CLI 2.54 or newer")));
    };
    let lifetime = Duration::from_secs((at - chrono::Utc::now().timestamp()).max(1) as u64);
    Ok((Secret::new(answer.access_token), lifetime))
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
    #[serde(default)]
    expires_on: Option<serde_json::Value>,
}

fn number(v: &Option<serde_json::Value>) -> Option<i64> {
    match v.as_ref()? {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// A token with its renewal deadline.
struct Cached {
    token: Secret,
    renew_at: Instant,
}

/// Hands out a valid token, fetching a new one when the cached one is near its end or was refused.
pub struct TokenSource {
    auth: Auth,
    host: String,
    http: reqwest::Client,
    cached: Mutex<Option<Cached>>,
}

impl TokenSource {
    pub fn new(auth: Auth, host: String, http: reqwest::Client) -> Self {
        TokenSource { auth, host, http, cached: Mutex::new(None) }
    }

    pub fn kind(&self) -> &'static str {
        self.auth.kind()
    }

    pub fn personal_owner(&self) -> Option<&'static str> {
        self.auth.personal_owner()
    }

    pub async fn token(&self) -> Result<Secret, AuthError> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref()
            && Instant::now() < c.renew_at
        {
            return Ok(c.token.clone());
        }
        let (token, lifetime) = self.fetch().await?;
        // Renew when three quarters of the lifetime is gone (and at most five minutes before the end).
        let early = (lifetime / 4).min(Duration::from_secs(300));
        *cached = Some(Cached { token: token.clone(), renew_at: Instant::now() + lifetime.saturating_sub(early) });
        Ok(token)
    }

    /// Forgets the cached token after the service refused it.
    pub async fn invalidate(&self) {
        *self.cached.lock().await = None;
    }

    async fn fetch(&self) -> Result<(Secret, Duration), AuthError> {
        let err = |message: String| AuthError { kind: self.auth.kind(), message };
        let scope = format!("{AZURE_DATABRICKS_RESOURCE}/.default");
        let request = match &self.auth {
            Auth::Pat(t) => return Ok((t.clone(), Duration::from_secs(365 * 24 * 3600))),
            Auth::OAuthM2m { client_id, client_secret } => self
                .http
                .post(format!("{}/oidc/v1/token", self.host))
                .basic_auth(client_id, Some(client_secret.expose()))
                .form(&[("grant_type", "client_credentials"), ("scope", "all-apis")]),
            Auth::AzureClientSecret { tenant_id, client_id, client_secret, authority } => {
                self.http.post(format!("{authority}/{tenant_id}/oauth2/v2.0/token")).form(&[
                    ("grant_type", "client_credentials"),
                    ("client_id", client_id.as_str()),
                    ("client_secret", client_secret.expose()),
                    ("scope", scope.as_str()),
                ])
            }
            Auth::AzureWorkloadIdentity { tenant_id, client_id, token_file, authority } => {
                let assertion = std::fs::read_to_string(token_file).map_err(|e| err(format!("{token_file}: {e}")))?;
                self.http.post(format!("{authority}/{tenant_id}/oauth2/v2.0/token")).form(&[
                    ("grant_type", "client_credentials"),
                    ("client_id", client_id.as_str()),
                    ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
                    ("client_assertion", assertion.trim()),
                    ("scope", scope.as_str()),
                ])
            }
            Auth::AzureCli { program, tenant_id } => {
                return azure_cli_token(program, tenant_id.as_deref(), self.auth.kind()).await;
            }
            Auth::AzureMsi { endpoint, header, client_id } => {
                let mut query = vec![("resource", AZURE_DATABRICKS_RESOURCE.to_string())];
                if let Some(id) = client_id {
                    query.push(("client_id", id.clone()));
                }
                match (endpoint, header) {
                    (Some(endpoint), Some(header)) => {
                        query.push(("api-version", "2019-08-01".into()));
                        self.http.get(endpoint).query(&query).header("X-IDENTITY-HEADER", header.expose())
                    }
                    _ => {
                        query.push(("api-version", "2018-02-01".into()));
                        self.http
                            .get("http://169.254.169.254/metadata/identity/oauth2/token")
                            .query(&query)
                            .header("Metadata", "true")
                    }
                }
            }
        };
        let res = request.send().await.map_err(|e| err(e.to_string()))?;
        let status = res.status();
        let body = res.text().await.map_err(|e| err(e.to_string()))?;
        if !status.is_success() {
            // Token endpoints echo no secrets; keep the answer short in case they echo much else.
            let snippet: String = body.chars().take(300).collect();
            return Err(err(format!("HTTP {status}: {snippet}")));
        }
        let answer: TokenAnswer =
            serde_json::from_str(&body).map_err(|e| err(format!("unreadable token answer: {e}")))?;
        let lifetime = match (number(&answer.expires_in), number(&answer.expires_on)) {
            (Some(secs), _) => Duration::from_secs(secs.max(1) as u64),
            (None, Some(at)) => Duration::from_secs((at - chrono::Utc::now().timestamp()).max(1) as u64),
            (None, None) => Duration::from_secs(3000),
        };
        Ok((Secret::new(answer.access_token), lifetime))
    }
}
