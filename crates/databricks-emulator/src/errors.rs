//! The two error shapes the emulator answers with: HTTP errors of the REST APIs, and SQL errors that a FAILED
//! statement carries in `status.error`.

use serde_json::{Value, json};

/// An HTTP answer: status, JSON body and extra headers.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub body: Value,
    pub headers: Vec<(&'static str, String)>,
}

impl Resp {
    pub fn ok(body: Value) -> Self {
        Resp { status: 200, body, headers: Vec::new() }
    }

    pub fn with_status(status: u16, body: Value) -> Self {
        Resp { status, body, headers: Vec::new() }
    }
}

/// A REST error: `{"error_code", "message", "details"}` with its HTTP status.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), retry_after_secs: None }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(400, "INVALID_PARAMETER_VALUE", message)
    }

    pub fn malformed(message: impl Into<String>) -> Self {
        Self::new(400, "MALFORMED_REQUEST", message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(404, code, message)
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(401, "UNAUTHENTICATED", message)
    }

    pub fn no_endpoint(method: &str, path: &str) -> Self {
        Self::new(404, "ENDPOINT_NOT_FOUND", format!("No API found for '{method} {path}'"))
    }

    /// The error an injected fault answers with. Only 429 and 503 carry `Retry-After`, as the real service does.
    pub fn fault(status: u16, retry_after_secs: u64) -> Self {
        let (code, message) = match status {
            429 => ("REQUEST_LIMIT_EXCEEDED", "Too many requests. Please wait and retry."),
            503 => ("TEMPORARILY_UNAVAILABLE", "The service is temporarily unavailable. Please retry."),
            504 => ("DEADLINE_EXCEEDED", "The request did not complete in time."),
            _ => ("INTERNAL_ERROR", "Internal error."),
        };
        let retry = matches!(status, 429 | 503).then_some(retry_after_secs);
        ApiError { status, code, message: message.into(), retry_after_secs: retry }
    }

    pub fn into_resp(self) -> Resp {
        let details = match self.retry_after_secs {
            Some(s) => json!([{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retry_delay": format!("{s}s")}]),
            None => json!([]),
        };
        let body = json!({"error_code": self.code, "message": self.message, "details": details});
        let mut resp = Resp::with_status(self.status, body);
        if let Some(s) = self.retry_after_secs {
            resp.headers.push(("retry-after", s.to_string()));
        }
        resp
    }
}

/// An OAuth 2.0 token endpoint error (RFC 6749 §5.2): a different body shape from the REST APIs.
pub fn oauth_error(status: u16, error: &str, description: impl Into<String>) -> Resp {
    Resp::with_status(status, json!({"error": error, "error_description": description.into()}))
}

/// A SQL error of a FAILED statement. `message` starts with the error class in brackets, as Databricks' do.
#[derive(Debug, Clone, PartialEq)]
pub struct SqlError {
    pub class: String,
    pub error_code: &'static str,
    pub sql_state: &'static str,
    pub message: String,
}

impl SqlError {
    pub fn new(class: &str, error_code: &'static str, sql_state: &'static str, text: impl AsRef<str>) -> Self {
        let message = format!("[{class}] {} SQLSTATE: {sql_state}", text.as_ref());
        SqlError { class: class.into(), error_code, sql_state, message }
    }

    pub fn syntax(near: &str, line: u64, column: u64) -> Self {
        let near = if near == "EOF" { "end of input".to_string() } else { format!("'{near}'") };
        let mut e = Self::new("PARSE_SYNTAX_ERROR", "BAD_REQUEST", "42601", format!("Syntax error at or near {near}."));
        // Databricks appends the position after the SQLSTATE, with a 0-based column.
        e.message.push_str(&format!(" (line {line}, pos {})", column.saturating_sub(1)));
        e
    }

    pub fn unsupported(what: impl AsRef<str>) -> Self {
        Self::new(
            "UNSUPPORTED_BY_EMULATOR",
            "BAD_REQUEST",
            "0A000",
            format!("{} is valid Databricks SQL but not implemented by the Databricks emulator.", what.as_ref()),
        )
    }

    pub fn internal(text: impl AsRef<str>) -> Self {
        Self::new("INTERNAL_ERROR", "INTERNAL_ERROR", "XX000", text)
    }
}

/// Quotes a name part for an error message the way Databricks prints it.
pub fn quoted(parts: &[String]) -> String {
    parts.iter().map(|p| format!("`{}`", p.replace('`', "``"))).collect::<Vec<_>>().join(".")
}
