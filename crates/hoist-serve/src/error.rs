//! The service's one error type, and how each facade error maps to an
//! HTTP status and a machine-readable code.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use hoist::ErrorKind;

/// An error the API reports: a status, a machine-readable code, a message.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
    pub fn internal(e: impl std::fmt::Display) -> ApiError {
        ApiError::new(500, "internal", e.to_string())
    }
}

/// The facade's error as the API reports it.
pub fn api_error(e: &hoist::Error) -> ApiError {
    let msg = e.to_string();
    match e.kind() {
        ErrorKind::Usage => ApiError::new(400, "invalid_name", msg),
        ErrorKind::NotFound => ApiError::new(404, "not_found", msg),
        ErrorKind::Auth => ApiError::new(403, "registry_denied", msg),
        ErrorKind::RateLimited => ApiError {
            retry_after: retry_after_of(e).or(Some(60)),
            ..ApiError::new(429, "rate_limited", msg)
        },
        ErrorKind::Unavailable => ApiError::new(502, "registry_unavailable", msg),
        ErrorKind::NotAllowed => ApiError::new(403, "registry_not_allowed", msg),
        ErrorKind::TooLarge => ApiError::new(422, "too_large", msg),
        ErrorKind::Integrity => ApiError::new(502, "integrity", msg),
        ErrorKind::Cancelled => ApiError::new(409, "cancelled", msg),
        ErrorKind::Other => ApiError::new(500, "build_failed", msg),
    }
}

fn retry_after_of(e: &hoist::Error) -> Option<u64> {
    match e {
        hoist::Error::Registry(hoist::RegistryError::RateLimited {
            retry_after: Some(d),
            ..
        }) => Some(d.as_secs().max(1)),
        _ => None,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = (
            status,
            Json(serde_json::json!({"code": self.code, "message": self.message})),
        )
            .into_response();
        if let Some(s) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        r
    }
}
