//! Blobs under `/v2`: every upload form the spec allows (POST then PATCH,
//! streamed or in `Content-Range` chunks, then PUT with or without a final
//! chunk; a monolithic POST `?digest=`; a cross-repository mount), upload
//! status and cancel, and HEAD/GET of any blob in the cache (with `Range`).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hoist::Digest;

use super::uploads::{stream_into, Shared};
use super::{param, parse_digest, query, V2Error};
use crate::service::Service;

type Answer = Result<Response, V2Error>;

fn with_headers(status: StatusCode, headers: &[(&str, String)]) -> Response {
    let mut r = status.into_response();
    for (k, v) in headers {
        if let (Ok(k), Ok(v)) = (
            header::HeaderName::try_from(*k),
            HeaderValue::try_from(v.as_str()),
        ) {
            r.headers_mut().insert(k, v);
        }
    }
    r
}

/// `Range` as the spec writes an upload's progress: `0-<last byte>`.
fn range_of(written: u64) -> String {
    format!("0-{}", written.saturating_sub(1))
}

fn session_answer(status: StatusCode, repo: &str, id: &str, written: u64) -> Response {
    with_headers(
        status,
        &[
            ("Location", format!("/v2/{repo}/blobs/uploads/{id}")),
            ("Range", range_of(written)),
            ("Docker-Upload-UUID", id.to_string()),
            ("Content-Length", "0".into()),
        ],
    )
}

fn created(repo: &str, d: &Digest) -> Response {
    with_headers(
        StatusCode::CREATED,
        &[
            ("Location", format!("/v2/{repo}/blobs/{d}")),
            ("Docker-Content-Digest", d.to_string()),
            ("Content-Length", "0".into()),
        ],
    )
}

fn blob_size(svc: &Service, d: &Digest) -> Option<u64> {
    std::fs::metadata(svc.client.store().blob_path(d))
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len())
}

async fn session(svc: &Service, repo: &str, id: &str) -> Result<Shared, V2Error> {
    let s = svc
        .registry
        .uploads
        .get(id)
        .ok_or_else(V2Error::upload_unknown)?;
    if s.lock().await.repo != repo {
        return Err(V2Error::upload_unknown());
    }
    Ok(s)
}

/// Stream the body into the session; on any error the session ends and
/// its temp file goes with it.
async fn take_body(svc: &Service, id: &str, s: &Shared, body: Body) -> Result<u64, V2Error> {
    let mut g = s.lock().await;
    let r = stream_into(
        &mut g,
        body,
        svc.registry.uploads.max_bytes,
        &svc.metrics.upload_bytes,
    )
    .await;
    if r.is_err() {
        g.writer = None;
        drop(g);
        svc.registry.uploads.end(id);
    }
    r
}

/// Verify the session's bytes against `d` and move them into the cache;
/// the session ends either way. Nothing is kept on a mismatch.
async fn commit(svc: &Arc<Service>, id: &str, s: &Shared, d: &Digest) -> Result<(), V2Error> {
    let writer = s.lock().await.writer.take();
    svc.registry.uploads.end(id);
    let Some(w) = writer else {
        return Err(V2Error::upload_unknown());
    };
    let (svc2, d2) = (svc.clone(), d.clone());
    let done = tokio::task::spawn_blocking(move || {
        let r = w.commit(&d2);
        if r.is_ok() {
            svc2.registry.hold(svc2.client.store(), &d2);
        }
        r
    })
    .await
    .map_err(V2Error::internal)?;
    done.map_err(|e| match e {
        hoist::StoreError::DigestMismatch { expected, actual } => V2Error::digest_invalid(format!(
            "the uploaded content hashes to {actual}, not {expected}"
        ))
        .detail(
            serde_json::json!({ "expected": expected.to_string(), "actual": actual.to_string() }),
        ),
        e => V2Error::internal(e),
    })
}

/// `POST /v2/<name>/blobs/uploads/`: a session, a monolithic upload
/// (`?digest=` with the body), or a mount (`?mount=&from=`).
pub(super) async fn start(svc: &Arc<Service>, repo: &str, req: Request) -> Answer {
    let q = query(&req);
    if let Some(m) = param(&q, "mount") {
        let d = parse_digest(m)?;
        if blob_size(svc, &d).is_some() {
            return Ok(created(repo, &d));
        }
    }
    let monolithic = param(&q, "digest").map(parse_digest).transpose()?;
    let (id, s) = svc.registry.uploads.start(svc.client.store(), repo)?;
    match monolithic {
        Some(d) => {
            take_body(svc, &id, &s, req.into_body()).await?;
            commit(svc, &id, &s, &d).await?;
            Ok(created(repo, &d))
        }
        None => Ok(session_answer(StatusCode::ACCEPTED, repo, &id, 0)),
    }
}

/// `PATCH`: a chunk, or the whole blob streamed. With `Content-Range`, the
/// chunk must start where the upload stands (else 416).
pub(super) async fn patch(svc: &Arc<Service>, repo: &str, id: &str, req: Request) -> Answer {
    let s = session(svc, repo, id).await?;
    if let Some(cr) = req
        .headers()
        .get(header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
    {
        let start = cr
            .trim()
            .trim_start_matches("bytes ")
            .trim_start_matches("bytes=")
            .split('-')
            .next()
            .and_then(|n| n.trim().parse::<u64>().ok());
        let written = s.lock().await.writer.as_ref().map_or(0, |w| w.written());
        if start != Some(written) {
            return Err(V2Error::new(
                416,
                "BLOB_UPLOAD_INVALID",
                format!("the chunk starts at {cr:?}, but the upload stands at byte {written}"),
            )
            .header(header::RANGE, range_of(written))
            .header(header::LOCATION, format!("/v2/{repo}/blobs/uploads/{id}")));
        }
    }
    take_body(svc, id, &s, req.into_body()).await?;
    let written = s.lock().await.writer.as_ref().map_or(0, |w| w.written());
    Ok(session_answer(StatusCode::ACCEPTED, repo, id, written))
}

/// `PUT ?digest=`: the last chunk (if any), then the check and the commit.
pub(super) async fn finish(svc: &Arc<Service>, repo: &str, id: &str, req: Request) -> Answer {
    let s = session(svc, repo, id).await?;
    let q = query(&req);
    let Some(d) = param(&q, "digest") else {
        return Err(V2Error::digest_invalid("PUT needs ?digest="));
    };
    let d = match parse_digest(d) {
        Ok(d) => d,
        Err(e) => {
            svc.registry.uploads.end(id);
            return Err(e);
        }
    };
    take_body(svc, id, &s, req.into_body()).await?;
    commit(svc, id, &s, &d).await?;
    Ok(created(repo, &d))
}

pub(super) async fn status(svc: &Arc<Service>, repo: &str, id: &str) -> Answer {
    let s = session(svc, repo, id).await?;
    let written = s.lock().await.writer.as_ref().map_or(0, |w| w.written());
    Ok(session_answer(StatusCode::NO_CONTENT, repo, id, written))
}

pub(super) fn cancel(svc: &Arc<Service>, _repo: &str, id: &str) -> Answer {
    if svc.registry.uploads.get(id).is_none() {
        return Err(V2Error::upload_unknown());
    }
    svc.registry.uploads.end(id);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `HEAD`/`GET` of a blob, under any repository name: everything in the
/// cache was verified when it entered.
pub(super) async fn get(svc: &Arc<Service>, d: &str, range: Option<String>, head: bool) -> Answer {
    let d = parse_digest(d)?;
    let Some(size) = blob_size(svc, &d) else {
        return Err(V2Error::blob_unknown(&d));
    };
    let range = range
        .as_deref()
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.split_once('-'))
        .map(|(a, b)| {
            let start: u64 = a.parse().unwrap_or(0);
            let end: u64 = b.parse().unwrap_or(size.saturating_sub(1));
            (start, end.min(size.saturating_sub(1)))
        });
    let (status, start, len) = match range {
        Some((s, e)) if s <= e && s < size => (StatusCode::PARTIAL_CONTENT, s, e - s + 1),
        Some(_) => {
            return Err(V2Error::new(416, "BLOB_UNKNOWN", "range not satisfiable")
                .header(header::CONTENT_RANGE, format!("bytes */{size}")))
        }
        None => (StatusCode::OK, 0, size),
    };
    let body = if head {
        Body::empty()
    } else {
        super::file_body(svc.client.store().blob_path(&d), start, len).await?
    };
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    let put = |h: &mut axum::http::HeaderMap, k: &'static str, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    };
    put(h, "Content-Length", len.to_string());
    put(h, "Content-Type", "application/octet-stream".into());
    put(h, "Docker-Content-Digest", d.to_string());
    put(h, "Accept-Ranges", "bytes".into());
    if status == StatusCode::PARTIAL_CONTENT {
        put(
            h,
            "Content-Range",
            format!("bytes {start}-{}/{size}", start + len - 1),
        );
    }
    Ok(r)
}
