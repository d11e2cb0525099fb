//! The sidecar's HTTP errors: `{"error":{"code","message"}}` with a stable code and the right status.

use std::time::Duration;

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

/// An error answered to the app. `code` is stable and documented in docs/sidecar.md.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// For 429s: when to try again.
    pub retry_after: Option<Duration>,
    /// Bedrock's own error code and message, when Bedrock refused the call: the Bedrock-native
    /// routes answer with them unchanged.
    pub bedrock: Option<(String, String)>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
            bedrock: None,
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
    pub fn not_allowed(what: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "endpoint_not_allowed",
            format!(
                "{what} is not among the endpoints this pod may use (annotation ai.kernelpanic09.io/endpoints)"
            ),
        )
    }
    pub fn rate_limited(
        code: &'static str,
        message: impl Into<String>,
        retry_after: Duration,
    ) -> Self {
        ApiError {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, code, message)
        }
    }
    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": { "code": self.code, "message": self.message, "type": self.code } });
        let mut response = (self.status, Json(body)).into_response();
        if let Some(after) = self.retry_after {
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        response
    }
}
