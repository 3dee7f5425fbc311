//! Manifests and tags under `/v2`: PUT of a pushed manifest or index
//! (checked, stored as sent, tagged durably, its build queued), and
//! HEAD/GET of any manifest in the cache by tag or digest: a pushed tag,
//! or a pulled image under its repository path (`?ns=` names the registry
//! it came from, as mirror clients send it; without it, Docker Hub).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hoist::{Digest, Reference};
use http_body_util::BodyExt;

use super::{param, parse_digest, V2Error};
use crate::service::Service;

type Answer = Result<Response, V2Error>;

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, V2Error> + Send + 'static,
) -> Result<T, V2Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(V2Error::internal)?
}

/// The media type a stored manifest declares (or its shape implies).
fn media_type_of(bytes: &[u8]) -> String {
    hoist::referenced(bytes, None, "manifest")
        .map(|r| r.media_type)
        .unwrap_or_else(|_| "application/json".into())
}

/// The name a pulled image is recorded under in the cache, for a request's
/// repository path and the registry it names (`?ns=`).
fn cache_name(repo: &str, tag: &str, ns: Option<&str>) -> Option<String> {
    let full = match ns {
        Some(ns) => format!("{ns}/{repo}:{tag}"),
        None => format!("{repo}:{tag}"),
    };
    let r: Reference = full.parse().ok()?;
    Some(format!("{}:{}", r.name(), r.tag()?))
}

/// The digest a tag names here: a pushed tag (when the request names no
/// other registry), else a pulled image's name in the cache.
fn lookup_tag(
    svc: &Service,
    repo: &str,
    tag: &str,
    ns: Option<&str>,
) -> Result<Option<Digest>, V2Error> {
    let ours = ns.is_none_or(|n| svc.is_own_registry(n));
    if ours {
        if let Some((d, _)) = svc.book().db().pushed_tag(repo, tag)? {
            return Ok(Some(d));
        }
    }
    let ns = ns.filter(|n| !svc.is_own_registry(n));
    // Every name this host knows: the service's records (they name the
    // platform manifest it built), then the cache's own names, those of
    // this platform first.
    let mut named: Vec<(String, Digest)> = svc.book().db().all_names()?;
    let mut images = svc.client.store().images().map_err(V2Error::internal)?;
    let platform = svc.client.default_platform();
    images.sort_by_key(|i| !i.platform.as_ref().is_some_and(|p| platform.matches(p)));
    for i in images {
        named.extend(i.names.iter().map(|n| (n.clone(), i.digest.clone())));
    }
    if let Some(name) = cache_name(repo, tag, ns) {
        if let Some((_, d)) = named.iter().find(|(n, _)| *n == name) {
            return Ok(Some(d.clone()));
        }
    }
    if ns.is_some() {
        return Ok(None);
    }
    // No `?ns=` (a plain registry client such as skopeo or docker) and not
    // from Docker Hub: the repository path is served when exactly one
    // registry's image here has it.
    let suffix = format!("/{repo}:{tag}");
    let hits: Vec<(&str, &Digest)> = named
        .iter()
        .filter_map(|(n, d)| Some((n.strip_suffix(&suffix)?, d)))
        .filter(|(h, _)| !h.is_empty() && !h.contains('/'))
        .collect();
    let hosts: std::collections::BTreeSet<&str> = hits.iter().map(|(h, _)| *h).collect();
    Ok((hosts.len() == 1).then(|| hits[0].1.clone()))
}

pub(super) async fn get(
    svc: &Arc<Service>,
    repo: &str,
    reference: &str,
    q: &[(String, String)],
    head: bool,
) -> Answer {
    let ns = param(q, "ns").map(str::to_string);
    let (svc2, repo2, r2) = (svc.clone(), repo.to_string(), reference.to_string());
    let (digest, bytes) = blocking(move || {
        let digest = if r2.contains(':') {
            parse_digest(&r2)?
        } else {
            lookup_tag(&svc2, &repo2, &r2, ns.as_deref())?
                .ok_or_else(|| V2Error::manifest_unknown(format!("{repo2}:{r2}")))?
        };
        let limit = svc2.client.max_manifest_size();
        let bytes = svc2
            .client
            .store()
            .read_blob(&digest, limit)
            .map_err(|_| V2Error::manifest_unknown(&digest))?;
        Ok((digest, bytes))
    })
    .await?;
    let mt = media_type_of(&bytes);
    let len = bytes.len();
    let mut r = (
        StatusCode::OK,
        if head {
            Body::empty()
        } else {
            Body::from(bytes)
        },
    )
        .into_response();
    let h = r.headers_mut();
    for (k, v) in [
        ("Content-Type", mt),
        ("Docker-Content-Digest", digest.to_string()),
        ("Content-Length", len.to_string()),
    ] {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    }
    Ok(r)
}

/// `PUT /v2/<name>/manifests/<tag or digest>`.
pub(super) async fn put(svc: &Arc<Service>, repo: &str, reference: &str, req: Request) -> Answer {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let limit = svc.client.max_manifest_size();
    let mut body = req.into_body();
    let mut bytes = Vec::new();
    while let Some(f) = body.frame().await {
        let f = f.map_err(|e| V2Error::new(400, "MANIFEST_INVALID", e.to_string()))?;
        if let Ok(d) = f.into_data() {
            if (bytes.len() + d.len()) as u64 > limit {
                return Err(V2Error::new(
                    413,
                    "SIZE_INVALID",
                    format!(
                        "the manifest is over the limit of {limit} bytes (--max-manifest-size)"
                    ),
                ));
            }
            bytes.extend_from_slice(&d);
        }
    }
    let by_digest = reference.contains(':');
    let digest = if by_digest {
        let want = parse_digest(reference)?;
        let got = Digest::of(want.algorithm(), &bytes);
        if got != want {
            return Err(V2Error::digest_invalid(format!(
                "the manifest hashes to {got}, not {want}"
            )));
        }
        // The cache names manifests by sha256.
        Digest::sha256_of(&bytes)
    } else {
        if !valid_tag(reference) {
            return Err(V2Error::new(
                400,
                "TAG_INVALID",
                format!("{reference:?} is not a tag"),
            ));
        }
        Digest::sha256_of(&bytes)
    };
    let refs = hoist::referenced(&bytes, content_type.as_deref(), repo)
        .map_err(|e| V2Error::new(400, "MANIFEST_INVALID", e.to_string()))?;
    let (svc2, repo2, tag) = (
        svc.clone(),
        repo.to_string(),
        (!by_digest).then(|| reference.to_string()),
    );
    let d2 = digest.clone();
    blocking(move || {
        let store = svc2.client.store();
        for d in &refs.descriptors {
            if !store.has_blob(&d.digest, d.size) {
                return Err(V2Error::new(
                    400,
                    "MANIFEST_BLOB_UNKNOWN",
                    format!(
                        "{} names {} {}, which was not pushed",
                        repo2,
                        if refs.is_index { "manifest" } else { "blob" },
                        d.digest
                    ),
                )
                .detail(serde_json::json!({ "digest": d.digest.to_string() })));
            }
        }
        store.write_blob(&d2, &bytes).map_err(V2Error::internal)?;
        let pin = match &tag {
            Some(t) => format!("{repo2}:{t}"),
            None => format!("{repo2}@{d2}"),
        };
        store
            .pin_pushed(&pin, &d2, &refs.media_type, bytes.len() as u64)
            .map_err(V2Error::internal)?;
        if let Some(t) = &tag {
            svc2.book()
                .db()
                .set_pushed_tag(&repo2, t, &d2, &refs.media_type)?;
        }
        svc2.metrics.pushed_manifests.inc();
        svc2.import_pushed(&repo2, tag.as_deref(), &d2, refs.is_index);
        Ok(())
    })
    .await?;
    let mut r = StatusCode::CREATED.into_response();
    for (k, v) in [
        ("Location", format!("/v2/{repo}/manifests/{digest}")),
        ("Docker-Content-Digest", digest.to_string()),
        ("Content-Length", "0".into()),
    ] {
        if let Ok(v) = HeaderValue::from_str(&v) {
            r.headers_mut().insert(k, v);
        }
    }
    Ok(r)
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`, the spec's tag grammar.
fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        && !t.starts_with(['.', '-'])
}

/// `GET /v2/<name>/tags/list[?n=&last=]`.
pub(super) async fn tags(svc: &Arc<Service>, repo: &str, q: &[(String, String)]) -> Answer {
    let ns = param(q, "ns").map(str::to_string);
    let n: Option<usize> = param(q, "n").and_then(|n| n.parse().ok());
    let last = param(q, "last").map(str::to_string);
    let (svc2, repo2) = (svc.clone(), repo.to_string());
    let mut tags = blocking(move || {
        let mut tags = Vec::new();
        if ns.as_deref().is_none_or(|n| svc2.is_own_registry(n)) {
            tags.extend(svc2.book().db().pushed_tags(&repo2)?);
        }
        let prefix = cache_name(
            &repo2,
            "x",
            ns.as_deref().filter(|n| !svc2.is_own_registry(n)),
        )
        .map(|n| n[..n.len() - 1].to_string());
        if let Some(prefix) = prefix {
            let mut names: Vec<String> = svc2
                .book()
                .db()
                .all_names()?
                .into_iter()
                .map(|(n, _)| n)
                .collect();
            for i in svc2.client.store().images().map_err(V2Error::internal)? {
                names.extend(i.names);
            }
            tags.extend(
                names
                    .iter()
                    .filter_map(|n| n.strip_prefix(&prefix))
                    .filter(|t| !t.contains(['/', '@']))
                    .map(String::from),
            );
        }
        Ok(tags)
    })
    .await?;
    tags.sort();
    tags.dedup();
    if tags.is_empty() {
        return Err(V2Error::name_unknown(repo));
    }
    if let Some(l) = last {
        tags.retain(|t| *t > l);
    }
    if let Some(n) = n {
        tags.truncate(n);
    }
    Ok(axum::Json(serde_json::json!({ "name": repo, "tags": tags })).into_response())
}
