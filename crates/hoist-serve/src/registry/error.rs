//! Errors under `/v2`, in the distribution spec's form:
//! `{"errors":[{"code","message","detail"}]}`, with the API version header.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

pub(crate) const API_VERSION: &str = "Docker-Distribution-API-Version";

#[derive(Debug)]
pub(crate) struct V2Error {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    pub detail: Option<serde_json::Value>,
    /// Extra headers (a 416's `Range`, a 401's challenge).
    pub headers: Vec<(header::HeaderName, String)>,
}

impl V2Error {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> V2Error {
        V2Error {
            status,
            code,
            message: message.into(),
            detail: None,
            headers: Vec::new(),
        }
    }

    pub fn detail(mut self, d: serde_json::Value) -> V2Error {
        self.detail = Some(d);
        self
    }

    pub fn header(mut self, k: header::HeaderName, v: impl Into<String>) -> V2Error {
        self.headers.push((k, v.into()));
        self
    }

    pub fn name_unknown(name: &str) -> V2Error {
        V2Error::new(
            404,
            "NAME_UNKNOWN",
            format!("repository {name} is not known"),
        )
    }
    pub fn blob_unknown(d: impl std::fmt::Display) -> V2Error {
        V2Error::new(404, "BLOB_UNKNOWN", format!("blob {d} is not known"))
    }
    pub fn manifest_unknown(r: impl std::fmt::Display) -> V2Error {
        V2Error::new(
            404,
            "MANIFEST_UNKNOWN",
            format!("manifest {r} is not known"),
        )
    }
    pub fn upload_unknown() -> V2Error {
        V2Error::new(404, "BLOB_UPLOAD_UNKNOWN", "no such upload session")
    }
    pub fn digest_invalid(message: impl Into<String>) -> V2Error {
        V2Error::new(400, "DIGEST_INVALID", message)
    }
    pub fn unsupported(message: impl Into<String>) -> V2Error {
        V2Error::new(415, "UNSUPPORTED", message)
    }
    pub fn internal(e: impl std::fmt::Display) -> V2Error {
        V2Error::new(500, "UNKNOWN", e.to_string())
    }
}

impl From<crate::error::ServiceError> for V2Error {
    fn from(e: crate::error::ServiceError) -> V2Error {
        let code = match e.status() {
            401 => "UNAUTHORIZED",
            403 => "DENIED",
            404 => "NAME_UNKNOWN",
            429 => "TOOMANYREQUESTS",
            _ => "UNKNOWN",
        };
        V2Error::new(e.status(), code, e.message())
    }
}

impl From<crate::db::DbError> for V2Error {
    fn from(e: crate::db::DbError) -> V2Error {
        V2Error::internal(e)
    }
}

impl IntoResponse for V2Error {
    fn into_response(self) -> Response {
        let mut entry = serde_json::json!({
            "code": self.code,
            "message": hoist::escape_controls(&self.message),
        });
        if let Some(d) = self.detail {
            entry["detail"] = d;
        }
        let body = serde_json::json!({ "errors": [entry] }).to_string();
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = (status, body).into_response();
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
        for (k, v) in self.headers {
            if let Ok(v) = HeaderValue::from_str(&v) {
                h.insert(k, v);
            }
        }
        r
    }
}
