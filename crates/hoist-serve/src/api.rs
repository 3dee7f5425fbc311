//! The routes: hypeman's image API (`/images`), plus `/healthz`,
//! `/metrics`, `/openapi.json` and `/gc`. This module only translates
//! HTTP: it parses what a request says, calls the service on a blocking
//! thread, and answers. Every non-2xx answer is `{"code","message"}`,
//! including axum's own rejections (bad percent-encoding, duplicate query
//! parameters, a body over the limit, a method or route that does not
//! exist).

use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hoist::Reference;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::db::Status;
use crate::error::ServiceError;
use crate::service::Service;

/// The OpenAPI document of these routes, checked in; a test proves the
/// served routes and the document agree.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// A create body is one short name; anything larger is refused unread.
const MAX_BODY: usize = 64 << 10;

type S = State<Arc<Service>>;
type Answer = Result<Response, ServiceError>;

fn parse_name(name: &str) -> Result<Reference, ServiceError> {
    name.parse::<Reference>()
        .map_err(|e| ServiceError::InvalidName(e.to_string()))
}

fn name_of(p: Result<Path<String>, PathRejection>) -> Result<Reference, ServiceError> {
    match p {
        Ok(Path(name)) => parse_name(&name),
        Err(e) => Err(ServiceError::InvalidName(format!(
            "the name in the path: {}",
            e.body_text()
        ))),
    }
}

fn query_of<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ServiceError> {
    q.map(|Query(t)| t)
        .map_err(|e| ServiceError::InvalidRequest(e.body_text()))
}

/// Run blocking service work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ServiceError> + Send + 'static,
) -> Result<T, ServiceError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ServiceError::internal)?
}

/// The body, up to `MAX_BODY`. Past it, a little more is read and dropped
/// before the 413, so that a client still sending sees the answer rather
/// than a reset connection.
async fn read_limited(body: axum::body::Body) -> Result<Vec<u8>, ServiceError> {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut out = Vec::new();
    let mut over = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ServiceError::InvalidRequest(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if over > 0 || out.len() + data.len() > MAX_BODY {
            over += data.len();
            if over > 16 * MAX_BODY {
                break;
            }
            continue;
        }
        out.extend_from_slice(&data);
    }
    if over > 0 {
        return Err(ServiceError::BodyTooLarge(format!(
            "the body is over {MAX_BODY} bytes"
        )));
    }
    Ok(out)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: String,
}

/// The body is read as JSON whatever its content type says: `curl -d`
/// sends a form type, and the request is unambiguous.
async fn create(State(svc): S, body: axum::body::Body) -> Answer {
    let body = read_limited(body).await?;
    let body: CreateBody = serde_json::from_slice(&body).map_err(|e| {
        ServiceError::InvalidRequest(format!("the body must be {{\"name\": REF}}: {e}"))
    })?;
    let r = parse_name(&body.name)?;
    svc.check_allowed(&r)?;
    let permit = svc
        .resolves
        .acquire()
        .await
        .map_err(ServiceError::internal)?;
    let (s2, r2) = (svc.clone(), r.clone());
    let inspected = blocking(move || s2.resolve(&r2)).await?;
    drop(permit);
    let rec = blocking(move || svc.create(&r, &inspected)).await?;
    Ok((StatusCode::ACCEPTED, Json(rec)).into_response())
}

#[derive(Deserialize)]
struct ListQuery {
    status: Option<String>,
}

async fn list(State(svc): S, q: Result<Query<ListQuery>, QueryRejection>) -> Answer {
    let q = query_of(q)?;
    let status = match q.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(Status::parse(s).ok_or_else(|| {
            ServiceError::InvalidStatus(format!(
                "{s}: not one of pending, pulling, converting, ready, failed"
            ))
        })?),
    };
    let recs = blocking(move || svc.list(status)).await?;
    Ok(Json(recs).into_response())
}

async fn get_one(State(svc): S, p: Result<Path<String>, PathRejection>) -> Answer {
    let r = name_of(p)?;
    let rec = blocking(move || svc.get(&r)).await?;
    Ok(Json(rec).into_response())
}

async fn delete_one(State(svc): S, p: Result<Path<String>, PathRejection>) -> Answer {
    let r = name_of(p)?;
    blocking(move || svc.delete(&r)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
struct GcQuery {
    #[serde(default)]
    dry_run: bool,
}

async fn gc(State(svc): S, q: Result<Query<GcQuery>, QueryRejection>) -> Answer {
    let q = query_of(q)?;
    let r = blocking(move || svc.gc(q.dry_run)).await?;
    Ok(Json(r).into_response())
}

async fn metrics(State(svc): S) -> Answer {
    let text = blocking(move || Ok(svc.metrics_text())).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn healthz() -> Response {
    Json(serde_json::json!({"status": "ok"})).into_response()
}

async fn no_route(req: Request) -> ServiceError {
    ServiceError::NotFound(format!("no route {}", req.uri().path()))
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
                return ServiceError::Unauthorized.into_response();
            }
        }
    }
    next.run(req).await
}

/// The safety net under every route: an error answer that axum made
/// itself (a 405, a 413 from the body limit, a rejection not handled
/// above) becomes the documented JSON error, keeping its status and
/// headers (`Allow` on a 405).
async fn json_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let e = match status.as_u16() {
        404 => ServiceError::NotFound(text),
        405 => ServiceError::MethodNotAllowed(format!(
            "method not allowed here{}",
            parts
                .headers
                .get(header::ALLOW)
                .and_then(|v| v.to_str().ok())
                .map(|a| format!(" (allowed: {a})"))
                .unwrap_or_default()
        )),
        413 => ServiceError::BodyTooLarge(format!("the body is over {MAX_BODY} bytes")),
        s if s < 500 => ServiceError::InvalidRequest(text),
        _ => ServiceError::Internal(text),
    };
    let mut out = e.into_response();
    *out.status_mut() = status;
    for (k, v) in parts.headers.iter() {
        if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
            out.headers_mut().insert(k.clone(), v.clone());
        }
    }
    out
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
        .fallback(no_route)
        // The create body is read (and bounded) by `read_limited`.
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(svc.clone(), auth))
        .layer(axum::middleware::from_fn(json_errors))
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
