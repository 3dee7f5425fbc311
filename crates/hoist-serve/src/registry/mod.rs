//! The registry API under `/v2` (the OCI distribution spec): the door a
//! build machine pushes through (`docker push`, `skopeo copy`, `buildah
//! push`, crane), and through which every image in the cache, pushed or
//! pulled, is served, so a fleet's hosts can be each other's mirrors.
//!
//! Pushed bytes go to the cache's temp files, hashed as they stream, and
//! join the cache only when their digest checks. A manifest PUT stores the
//! exact bytes, records the tag in the state database and in the cache's
//! index (so GC keeps what it reaches), and queues the build of an image
//! exactly as `POST /images` does.

mod blobs;
mod error;
mod manifests;
pub(crate) mod uploads;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use base64::Engine;
use hoist::Digest;
use subtle::ConstantTimeEq;

pub(crate) use error::{V2Error, API_VERSION};

use crate::service::Service;

/// How long a finished upload that no manifest names yet is kept from GC.
const UPLOAD_GRACE: Duration = Duration::from_secs(3600);

/// The lease that holds recent uploads, and what it holds since when.
type Held = (Option<hoist::Lease>, VecDeque<(Instant, Digest)>);

/// The registry side of the service.
pub(crate) struct Registry {
    pub uploads: uploads::Uploads,
    /// Blobs uploaded recently, held against GC until a manifest names them
    /// (or an hour passes).
    recent: Mutex<Held>,
}

impl Registry {
    pub fn new(uploads: uploads::Uploads) -> Registry {
        Registry {
            uploads,
            recent: Mutex::new((None, VecDeque::new())),
        }
    }

    /// Hold a just-uploaded blob against GC for a while.
    pub fn hold(&self, store: &hoist::Store, d: &Digest) {
        let mut g = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        let (lease, held) = &mut *g;
        while held
            .front()
            .is_some_and(|(t, _)| t.elapsed() > UPLOAD_GRACE)
        {
            held.pop_front();
        }
        held.push_back((Instant::now(), d.clone()));
        if lease.is_none() {
            *lease = store.lease().ok();
        }
        if let Some(l) = lease {
            let ds: Vec<Digest> = held.iter().map(|(_, d)| d.clone()).collect();
            if let Err(e) = l.set(&ds) {
                tracing::warn!("holding uploaded blobs against GC: {e}");
            }
        }
    }
}

/// What a `/v2/...` path asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Base,
    Tags(String),
    Manifest(String, String),
    Blob(String, String),
    UploadStart(String),
    Upload(String, String),
}

/// Repository names as the distribution spec writes them: lowercase
/// components of letters and digits with single separators.
fn valid_repo(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name.split('/').all(|c| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && c.as_bytes()[0].is_ascii_alphanumeric()
                && c.as_bytes()[c.len() - 1].is_ascii_alphanumeric()
        })
}

fn parse_route(path: &str) -> Option<Route> {
    let rest = path.strip_prefix("/v2")?;
    if rest.is_empty() || rest == "/" {
        return Some(Route::Base);
    }
    let rest = rest.strip_prefix('/')?;
    let repo_ok = |r: &str| valid_repo(r).then(|| r.to_string());
    if let Some(repo) = rest.strip_suffix("/tags/list") {
        return Some(Route::Tags(repo_ok(repo)?));
    }
    if let Some(repo) = rest
        .strip_suffix("/blobs/uploads/")
        .or(rest.strip_suffix("/blobs/uploads"))
    {
        return Some(Route::UploadStart(repo_ok(repo)?));
    }
    if let Some((repo, id)) = rest.rsplit_once("/blobs/uploads/") {
        return Some(Route::Upload(repo_ok(repo)?, id.to_string()));
    }
    if let Some((repo, d)) = rest.rsplit_once("/blobs/") {
        return Some(Route::Blob(repo_ok(repo)?, d.to_string()));
    }
    if let Some((repo, r)) = rest.rsplit_once("/manifests/") {
        return Some(Route::Manifest(repo_ok(repo)?, r.to_string()));
    }
    None
}

/// The query parameters of a request, as pairs.
fn query(req: &Request) -> Vec<(String, String)> {
    url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn param<'a>(q: &'a [(String, String)], k: &str) -> Option<&'a str> {
    q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
}

/// A digest as the spec allows it: sha256 or sha512 are verified; any
/// other algorithm is refused clearly.
fn parse_digest(s: &str) -> Result<Digest, V2Error> {
    s.parse::<Digest>().map_err(|e| match s.split_once(':') {
        Some((algo, _)) if !["sha256", "sha512"].contains(&algo) => {
            V2Error::unsupported(format!("digest algorithm {algo:?} is not supported"))
                .detail(serde_json::json!({ "digest": s }))
        }
        _ => V2Error::digest_invalid(format!("{s:?} is not a digest: {e}")),
    })
}

pub(crate) fn base_headers(h: &mut HeaderMap) {
    h.insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
}

async fn dispatch(State(svc): State<Arc<Service>>, req: Request) -> Response {
    let route = parse_route(req.uri().path());
    let method = req.method().clone();
    let answer = match route {
        None => Err(V2Error::new(404, "NAME_INVALID", "not a registry path")),
        Some(Route::Base) if method == Method::GET || method == Method::HEAD => {
            let mut r = axum::Json(serde_json::json!({})).into_response();
            base_headers(r.headers_mut());
            Ok(r)
        }
        Some(Route::Tags(repo)) if method == Method::GET => {
            let q = query(&req);
            manifests::tags(&svc, &repo, &q).await
        }
        Some(Route::Manifest(repo, r)) => match method {
            Method::GET | Method::HEAD => {
                let q = query(&req);
                manifests::get(&svc, &repo, &r, &q, method == Method::HEAD).await
            }
            Method::PUT => manifests::put(&svc, &repo, &r, req).await,
            _ => Err(not_allowed("GET, HEAD, PUT")),
        },
        Some(Route::Blob(_repo, d)) => match method {
            Method::GET | Method::HEAD => {
                let range = req
                    .headers()
                    .get(header::RANGE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                blobs::get(&svc, &d, range, method == Method::HEAD).await
            }
            _ => Err(not_allowed("GET, HEAD")),
        },
        Some(Route::UploadStart(repo)) if method == Method::POST => {
            blobs::start(&svc, &repo, req).await
        }
        Some(Route::Upload(repo, id)) => match method {
            Method::PATCH => blobs::patch(&svc, &repo, &id, req).await,
            Method::PUT => blobs::finish(&svc, &repo, &id, req).await,
            Method::GET => blobs::status(&svc, &repo, &id).await,
            Method::DELETE => blobs::cancel(&svc, &repo, &id),
            _ => Err(not_allowed("GET, PATCH, PUT, DELETE")),
        },
        Some(_) => Err(not_allowed("see the distribution spec")),
    };
    let mut r = answer.unwrap_or_else(IntoResponse::into_response);
    base_headers(r.headers_mut());
    r
}

fn not_allowed(allow: &str) -> V2Error {
    V2Error::new(405, "UNSUPPORTED", "the method is not allowed here").header(header::ALLOW, allow)
}

/// `/v2` takes the image API's token as `Bearer TOKEN`, or as the password
/// of Basic auth with any user name (`docker login`, `--creds user:TOKEN`).
/// Without a valid one: 401 with a Basic challenge, which docker, skopeo,
/// buildah and crane all follow.
async fn auth(State(svc): State<Arc<Service>>, req: Request, next: Next) -> Response {
    if let Some(token) = &svc.opts.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(presented_secret);
        let ok: bool = given
            .as_deref()
            .is_some_and(|g| g.as_bytes().ct_eq(token.as_bytes()).into());
        if !ok {
            return V2Error::new(401, "UNAUTHORIZED", "authentication required")
                .header(header::WWW_AUTHENTICATE, "Basic realm=\"hoist\"")
                .into_response();
        }
    }
    next.run(req).await
}

/// The secret an Authorization header presents: a bearer token, or the
/// password of Basic credentials.
fn presented_secret(v: &str) -> Option<String> {
    if let Some(t) = v.strip_prefix("Bearer ") {
        return Some(t.trim().to_string());
    }
    let b = v.strip_prefix("Basic ")?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    Some(text.split_once(':')?.1.to_string())
}

pub(crate) fn router(svc: Arc<Service>) -> Router {
    Router::new()
        .route("/v2", any(dispatch))
        .route("/v2/", any(dispatch))
        .route("/v2/{*rest}", any(dispatch))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(svc.clone(), auth))
        .with_state(svc)
}

/// A body to stream a cache file from `start` for `len` bytes.
pub(crate) async fn file_body(
    path: std::path::PathBuf,
    start: u64,
    len: u64,
) -> Result<Body, V2Error> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut f = tokio::fs::File::open(&path)
        .await
        .map_err(V2Error::internal)?;
    f.seek(std::io::SeekFrom::Start(start))
        .await
        .map_err(V2Error::internal)?;
    let stream = tokio_util::io::ReaderStream::with_capacity(f.take(len), 256 << 10);
    Ok(Body::from_stream(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_of_the_distribution_spec() {
        assert_eq!(parse_route("/v2/"), Some(Route::Base));
        assert_eq!(
            parse_route("/v2/team/app/manifests/v1"),
            Some(Route::Manifest("team/app".into(), "v1".into()))
        );
        assert_eq!(
            parse_route("/v2/a/blobs/uploads/"),
            Some(Route::UploadStart("a".into()))
        );
        assert_eq!(
            parse_route("/v2/a/b/blobs/uploads/123"),
            Some(Route::Upload("a/b".into(), "123".into()))
        );
        assert_eq!(
            parse_route("/v2/a/blobs/sha256:00"),
            Some(Route::Blob("a".into(), "sha256:00".into()))
        );
        assert_eq!(
            parse_route("/v2/a/tags/list"),
            Some(Route::Tags("a".into()))
        );
        assert_eq!(parse_route("/v2/../etc/manifests/x"), None);
        assert_eq!(parse_route("/v2/UPPER/manifests/x"), None);
        assert_eq!(
            presented_secret("Basic Y2k6czNjcmV0").as_deref(),
            Some("s3cret")
        );
        assert_eq!(presented_secret("Bearer s3cret").as_deref(), Some("s3cret"));
    }
}
