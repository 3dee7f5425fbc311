//! The routes: hypeman's image API (`/images`), plus `/healthz`,
//! `/metrics`, `/openapi.json` and `/gc`. Errors are `{"code","message"}`.

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hoist::Reference;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::service::Service;
use crate::state::Status;

/// The OpenAPI document of these routes, checked in; a test proves the
/// served routes and the document agree.
pub const OPENAPI: &str = include_str!("../openapi.json");

type S = State<Arc<Service>>;

fn parse_name(name: &str) -> Result<Reference, ApiError> {
    name.parse::<Reference>()
        .map_err(|e| ApiError::new(400, "invalid_name", e.to_string()))
}

#[derive(Deserialize)]
struct CreateBody {
    name: String,
}

/// The body is read as JSON whatever its content type says: `curl -d`
/// sends a form type, and the request is unambiguous.
async fn create(State(svc): S, body: axum::body::Bytes) -> Result<Response, ApiError> {
    let body: CreateBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            400,
            "invalid_request",
            format!("the body must be {{\"name\": REF}}: {e}"),
        )
    })?;
    let r = parse_name(&body.name)?;
    svc.check_allowed(&r)?;
    let s2 = svc.clone();
    let r2 = r.clone();
    let permit = svc.resolves.acquire().await.map_err(ApiError::internal)?;
    let inspected = tokio::task::spawn_blocking(move || s2.resolve(&r2))
        .await
        .map_err(ApiError::internal)??;
    drop(permit);
    let s3 = svc.clone();
    let rec = tokio::task::spawn_blocking(move || s3.create(&r, &inspected))
        .await
        .map_err(ApiError::internal)??;
    Ok((StatusCode::ACCEPTED, Json(rec)).into_response())
}

#[derive(Deserialize)]
struct ListQuery {
    status: Option<String>,
}

async fn list(State(svc): S, Query(q): Query<ListQuery>) -> Result<Response, ApiError> {
    let status = match q.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(Status::parse(s).ok_or_else(|| {
            ApiError::new(
                400,
                "invalid_status",
                format!("{s}: not one of pending, pulling, converting, ready, failed"),
            )
        })?),
    };
    Ok(Json(svc.list(status)?).into_response())
}

async fn get_one(State(svc): S, Path(name): Path<String>) -> Result<Response, ApiError> {
    let r = parse_name(&name)?;
    Ok(Json(svc.get(&r)?).into_response())
}

async fn delete_one(State(svc): S, Path(name): Path<String>) -> Result<Response, ApiError> {
    let r = parse_name(&name)?;
    let s2 = svc.clone();
    tokio::task::spawn_blocking(move || s2.delete(&r))
        .await
        .map_err(ApiError::internal)??;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
struct GcQuery {
    #[serde(default)]
    dry_run: bool,
}

async fn gc(State(svc): S, Query(q): Query<GcQuery>) -> Result<Response, ApiError> {
    let r = tokio::task::spawn_blocking(move || svc.gc(q.dry_run))
        .await
        .map_err(ApiError::internal)??;
    Ok(Json(r).into_response())
}

async fn metrics(State(svc): S) -> Response {
    let text = tokio::task::spawn_blocking(move || svc.metrics_text())
        .await
        .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn healthz() -> Response {
    Json(serde_json::json!({"status": "ok"})).into_response()
}

/// Every route but `/healthz` needs `Authorization: Bearer <token>` when
/// a token is set, compared in constant time.
async fn auth(State(svc): S, req: Request, next: Next) -> Response {
    if let Some(token) = &svc.opts.token {
        if req.uri().path() != "/healthz" {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            let ok: bool = given.as_bytes().ct_eq(token.as_bytes()).into();
            if !ok {
                let mut r = ApiError::new(401, "unauthorized", "a valid bearer token is required")
                    .into_response();
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return r;
            }
        }
    }
    next.run(req).await
}

/// The routes, as the OpenAPI document lists them (method, path).
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/images"),
    ("post", "/images"),
    ("get", "/images/{name}"),
    ("delete", "/images/{name}"),
    ("get", "/healthz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
    ("post", "/gc"),
];

pub fn router(svc: Arc<Service>) -> Router {
    Router::new()
        .route("/images", get(list).post(create))
        // `{name}` is URL-encoded (docker.io%2Flibrary%2Falpine%3Alatest);
        // a client that sends the slashes raw is served too.
        .route("/images/{*name}", get(get_one).delete(delete_one))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route("/gc", post(gc))
        .layer(axum::middleware::from_fn_with_state(svc.clone(), auth))
        .with_state(svc)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_openapi_document_lists_exactly_the_served_routes() {
        let doc: serde_json::Value = serde_json::from_str(super::OPENAPI).unwrap();
        let mut documented: Vec<(String, String)> = Vec::new();
        for (path, ops) in doc["paths"].as_object().unwrap() {
            for m in ops.as_object().unwrap().keys() {
                if ["get", "post", "delete", "put", "patch"].contains(&m.as_str()) {
                    documented.push((m.clone(), path.clone()));
                }
            }
        }
        documented.sort();
        let mut served: Vec<(String, String)> = super::ROUTES
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        served.sort();
        assert_eq!(documented, served);
    }
}
