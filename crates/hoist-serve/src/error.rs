//! The service's one error type. Its HTTP status and machine-readable code
//! are decided here, in one place; `/images`, `/gc` and `/metrics` answer
//! it as `{"code","message"}`. Messages are escaped on the way out: text
//! that came from a registry or a client carries no control character into
//! an answer or a record.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use hoist::ErrorKind;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    InvalidName(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    InvalidStatus(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    BodyTooLarge(String),
    #[error("a valid bearer token is required")]
    Unauthorized,
    #[error("{0}")]
    InUse(String),
    /// The registry refused our credentials (or their absence).
    #[error("{0}")]
    RegistryDenied(String),
    /// An address or registry this service refuses to contact.
    #[error("{0}")]
    RegistryNotAllowed(String),
    #[error("{message}")]
    RateLimited { message: String, retry_after: u64 },
    #[error("{0}")]
    RegistryUnavailable(String),
    /// The image is over a hard limit.
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Integrity(String),
    #[error("{0}")]
    Cancelled(String),
    /// Stored, but not a container image this service can build (an
    /// artifact, or an image for another platform).
    #[error("{0}")]
    NotAnImage(String),
    /// Writing a disk or the cache failed here (a full disk, say).
    #[error("{0}")]
    LocalIo(String),
    #[error("{0}")]
    BuildFailed(String),
    #[error("{0}")]
    Internal(String),
}

impl ServiceError {
    pub fn status(&self) -> u16 {
        use ServiceError::*;
        match self {
            InvalidName(_) | InvalidRequest(_) | InvalidStatus(_) => 400,
            Unauthorized => 401,
            RegistryDenied(_) | RegistryNotAllowed(_) => 403,
            NotFound(_) => 404,
            MethodNotAllowed(_) => 405,
            InUse(_) | Cancelled(_) => 409,
            BodyTooLarge(_) => 413,
            TooLarge(_) | NotAnImage(_) => 422,
            RateLimited { .. } => 429,
            LocalIo(_) | BuildFailed(_) | Internal(_) => 500,
            RegistryUnavailable(_) | Integrity(_) => 502,
        }
    }

    pub fn code(&self) -> &'static str {
        use ServiceError::*;
        match self {
            InvalidName(_) => "invalid_name",
            InvalidRequest(_) => "invalid_request",
            InvalidStatus(_) => "invalid_status",
            NotFound(_) => "not_found",
            MethodNotAllowed(_) => "method_not_allowed",
            BodyTooLarge(_) => "body_too_large",
            Unauthorized => "unauthorized",
            InUse(_) => "in_use",
            RegistryDenied(_) => "registry_denied",
            RegistryNotAllowed(_) => "registry_not_allowed",
            RateLimited { .. } => "rate_limited",
            RegistryUnavailable(_) => "registry_unavailable",
            TooLarge(_) => "too_large",
            NotAnImage(_) => "not_an_image",
            Integrity(_) => "integrity",
            Cancelled(_) => "cancelled",
            LocalIo(_) => "io",
            BuildFailed(_) => "build_failed",
            Internal(_) => "internal",
        }
    }

    pub fn internal(e: impl std::fmt::Display) -> ServiceError {
        ServiceError::Internal(e.to_string())
    }

    /// The message, safe for a log line, a record or an answer.
    pub fn message(&self) -> String {
        hoist::escape_controls(&self.to_string()).into_owned()
    }
}

impl From<crate::db::DbError> for ServiceError {
    fn from(e: crate::db::DbError) -> Self {
        ServiceError::Internal(e.to_string())
    }
}

impl From<&hoist::Error> for ServiceError {
    fn from(e: &hoist::Error) -> ServiceError {
        let msg = e.to_string();
        if let hoist::Error::Spec(
            hoist::SpecError::NotAContainerImage { .. } | hoist::SpecError::PlatformMismatch { .. },
        ) = e
        {
            return ServiceError::NotAnImage(msg);
        }
        match e.kind() {
            ErrorKind::Usage => ServiceError::InvalidName(msg),
            ErrorKind::NotFound => ServiceError::NotFound(msg),
            ErrorKind::Auth => ServiceError::RegistryDenied(msg),
            ErrorKind::RateLimited => ServiceError::RateLimited {
                message: msg,
                retry_after: retry_after_of(e).unwrap_or(60),
            },
            ErrorKind::Unavailable => ServiceError::RegistryUnavailable(msg),
            ErrorKind::NotAllowed => ServiceError::RegistryNotAllowed(msg),
            ErrorKind::TooLarge => ServiceError::TooLarge(msg),
            ErrorKind::Integrity => ServiceError::Integrity(msg),
            ErrorKind::Cancelled => ServiceError::Cancelled(msg),
            ErrorKind::Io => ServiceError::LocalIo(msg),
            ErrorKind::Other => ServiceError::BuildFailed(msg),
        }
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

impl IntoResponse for ServiceError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = (
            status,
            Json(serde_json::json!({"code": self.code(), "message": self.message()})),
        )
            .into_response();
        if let ServiceError::RateLimited { retry_after, .. } = self {
            if let Ok(v) = HeaderValue::from_str(&retry_after.to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}
