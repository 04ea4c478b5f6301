//! The SQL Statement Execution API: submit, wait within the request, poll to a final state, cancel past the
//! deadline.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::databricks::client::{ApiError, Client};

#[derive(Debug, thiserror::Error)]
pub enum StatementError {
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The statement ran and failed: `class` is the SQL error class (`FIELDS_ALREADY_EXISTS`, ...).
    #[error("statement failed ({error_code}{}): {message}; statement: {statement}", class.as_deref().map(|c| format!(", {c}")).unwrap_or_default())]
    Failed { error_code: String, class: Option<String>, message: String, statement: String },
    #[error("statement did not finish within {seconds} s and was cancelled; statement: {statement}")]
    Timeout { seconds: u64, statement: String },
    #[error("statement ended {state}; statement: {statement}")]
    Ended { state: String, statement: String },
}

impl StatementError {
    pub fn class(&self) -> Option<&str> {
        match self {
            StatementError::Failed { class, .. } => class.as_deref(),
            _ => None,
        }
    }

    pub fn retryable(&self) -> bool {
        match self {
            StatementError::Api(e) => e.retryable(),
            StatementError::Timeout { .. } | StatementError::Ended { .. } => true,
            StatementError::Failed { error_code, .. } => {
                matches!(
                    error_code.as_str(),
                    "TEMPORARILY_UNAVAILABLE" | "RESOURCE_EXHAUSTED" | "DEADLINE_EXCEEDED" | "INTERNAL_ERROR"
                )
            }
        }
    }
}

/// `[FIELDS_ALREADY_EXISTS] ...` → `FIELDS_ALREADY_EXISTS`.
pub fn error_class(message: &str) -> Option<String> {
    let rest = message.trim_start().strip_prefix('[')?;
    let end = rest.find(']')?;
    let class = &rest[..end];
    (!class.is_empty() && class.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_' || b == b'.'))
        .then(|| class.to_string())
}

/// Runs one statement on a warehouse and waits for its end, at most `deadline`.
pub async fn execute(
    client: &Client,
    warehouse_id: &str,
    catalog: &str,
    statement: &str,
    deadline: Duration,
) -> Result<Value, StatementError> {
    let started = Instant::now();
    // Wait inside the request for at most the deadline (the API takes 0s or 5s..50s), then poll.
    let wait = match deadline.as_secs() {
        0..=4 => "0s".to_string(),
        s => format!("{}s", s.min(30)),
    };
    let body = json!({"warehouse_id": warehouse_id, "statement": statement, "catalog": catalog,
                      "wait_timeout": wait, "on_wait_timeout": "CONTINUE"});
    let mut answer = client.call(Method::POST, "/api/2.0/sql/statements", Some(&body)).await?;
    let id = answer["statement_id"].as_str().unwrap_or_default().to_string();
    let mut poll = Duration::from_millis(200);
    loop {
        let state = answer["status"]["state"].as_str().unwrap_or("").to_string();
        match state.as_str() {
            "SUCCEEDED" => return Ok(answer),
            "FAILED" => {
                let e = &answer["status"]["error"];
                let message = e["message"].as_str().unwrap_or("").to_string();
                return Err(StatementError::Failed {
                    error_code: e["error_code"].as_str().unwrap_or("").to_string(),
                    class: error_class(&message),
                    message,
                    statement: statement.to_string(),
                });
            }
            "PENDING" | "RUNNING" => {}
            _ => return Err(StatementError::Ended { state, statement: statement.to_string() }),
        }
        if started.elapsed() >= deadline {
            let _ = client.call(Method::POST, &format!("/api/2.0/sql/statements/{id}/cancel"), None).await;
            return Err(StatementError::Timeout { seconds: deadline.as_secs(), statement: statement.to_string() });
        }
        tokio::time::sleep(poll.min(deadline.saturating_sub(started.elapsed()))).await;
        poll = (poll * 2).min(Duration::from_secs(5));
        answer = client.call(Method::GET, &format!("/api/2.0/sql/statements/{id}"), None).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_error_class() {
        assert_eq!(error_class("[FIELDS_ALREADY_EXISTS] Cannot add column").as_deref(), Some("FIELDS_ALREADY_EXISTS"));
        assert_eq!(error_class("[TABLE_OR_VIEW_NOT_FOUND] The table").as_deref(), Some("TABLE_OR_VIEW_NOT_FOUND"));
        assert_eq!(error_class("no class here"), None);
        assert_eq!(error_class("[a b] x"), None);
    }
}
