//! Calls to the workspace REST API: the bearer token on every request, one renewal on 401, and 429/503 retried
//! with `Retry-After` or jittered backoff within a time budget.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::databricks::auth::{AuthError, TokenSource};
use crate::retry::Backoff;

/// A failed call. `error_code` is Databricks' (`RESOURCE_DOES_NOT_EXIST`, `PERMISSION_DENIED`, ...).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("{method} {path}: HTTP {status} {error_code}: {message}")]
    Http { method: String, path: String, status: u16, error_code: String, message: String },
    #[error("{method} {path}: {message}")]
    Transport { method: String, path: String, message: String },
}

impl ApiError {
    /// Whether sending the same request later can succeed.
    pub fn retryable(&self) -> bool {
        match self {
            ApiError::Auth(_) | ApiError::Transport { .. } => true,
            ApiError::Http { status, .. } => matches!(status, 429 | 500 | 502 | 503 | 504),
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Http { status, .. } => Some(*status),
            _ => None,
        }
    }
}

pub struct Client {
    pub host: String,
    http: reqwest::Client,
    tokens: TokenSource,
    backoff: Backoff,
}

impl Client {
    pub fn new(host: String, tokens: TokenSource, http: reqwest::Client, budget: Duration) -> Client {
        Client { host, http, tokens, backoff: Backoff { total: budget, ..Backoff::default() } }
    }

    pub fn auth_kind(&self) -> &'static str {
        self.tokens.kind()
    }

    /// See [`Auth::personal_owner`].
    pub fn personal_owner(&self) -> Option<&'static str> {
        self.tokens.personal_owner()
    }

    /// Sends a request and returns its JSON answer.
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value, ApiError> {
        let started = Instant::now();
        let mut attempt = 0;
        let mut renewed = false;
        loop {
            let token = self.tokens.token().await?;
            let mut req = self.http.request(method.clone(), format!("{}{path}", self.host)).bearer_auth(token.expose());
            if let Some(b) = body {
                req = req.json(b);
            }
            let transport = |e: reqwest::Error| ApiError::Transport {
                method: method.to_string(),
                path: path.to_string(),
                message: e.without_url().to_string(),
            };
            let res = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    let err = transport(e);
                    match self.backoff.delay(attempt, started) {
                        Some(pause) => {
                            attempt += 1;
                            tokio::time::sleep(pause).await;
                            continue;
                        }
                        None => return Err(err),
                    }
                }
            };
            let status = res.status();
            let retry_after = res
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let text = res.text().await.map_err(transport)?;
            if status.is_success() {
                return Ok(if text.trim().is_empty() {
                    Value::Null
                } else {
                    serde_json::from_str(&text).unwrap_or(Value::Null)
                });
            }
            let parsed: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let err = ApiError::Http {
                method: method.to_string(),
                path: path.to_string(),
                status: status.as_u16(),
                error_code: parsed["error_code"].as_str().unwrap_or("").to_string(),
                message: parsed["message"].as_str().map_or_else(|| text.chars().take(300).collect(), str::to_string),
            };
            if status == StatusCode::UNAUTHORIZED && !renewed {
                renewed = true;
                self.tokens.invalidate().await;
                continue;
            }
            if matches!(status, StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE)
                && let Some(jitter) = self.backoff.delay(attempt, started)
            {
                let pause = retry_after.map_or(jitter, |ra| ra + jitter / 4);
                if started.elapsed() + pause <= self.backoff.total {
                    attempt += 1;
                    tracing::debug!(
                        path,
                        status = status.as_u16(),
                        pause_ms = pause.as_millis() as u64,
                        "Databricks asked to slow down"
                    );
                    tokio::time::sleep(pause).await;
                    continue;
                }
            }
            return Err(err);
        }
    }
}
