//! The distribution API client: one `send` loop owns scheme choice, auth,
//! retries and error typing; manifest and blob fetches are built on it.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hoist_spec::{media, Cancel, Digest, Reference};
use reqwest::blocking::{Client, Response};
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, RANGE};

use crate::auth::{parse_challenge, Challenge, Token, TokenReply};
use crate::creds::{CredentialSources, Credentials};
use crate::error::{self, ErrorContext, RegistryError};
use crate::retry::RetryPolicy;

pub const DEFAULT_MAX_MANIFEST_SIZE: u64 = 4 << 20;
const MAX_ERROR_BODY: u64 = 64 << 10;
const MAX_TOKEN_BODY: u64 = 1 << 20;

#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// `HOST[:PORT]`s reached over plain HTTP or TLS without verification.
    pub insecure_registries: Vec<String>,
    /// Extra trusted roots, PEM.
    pub ca_certs_pem: Vec<Vec<u8>>,
    /// Explicit credentials (`--creds`); they win over every file.
    pub credentials: Option<Credentials>,
    pub credential_sources: CredentialSources,
    pub retry: RetryPolicy,
    /// Wait out a 429 for at most this long (its `Retry-After`); `None`
    /// fails fast, as the Go original does.
    pub rate_limit_wait: Option<Duration>,
    /// Manifests, indexes and configs above this are refused unread.
    pub max_manifest_size: u64,
    /// A read that stalls this long fails (and is retried).
    pub stall_timeout: Duration,
    pub user_agent: String,
    /// Refuse link-local and cloud-metadata addresses wherever they appear
    /// (the name, its resolution, a redirect). The service sets this.
    pub refuse_link_local: bool,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            insecure_registries: Vec::new(),
            ca_certs_pem: Vec::new(),
            credentials: None,
            credential_sources: CredentialSources::from_env(),
            retry: RetryPolicy::default(),
            rate_limit_wait: None,
            max_manifest_size: DEFAULT_MAX_MANIFEST_SIZE,
            stall_timeout: Duration::from_secs(30),
            user_agent: concat!("hoist/", env!("CARGO_PKG_VERSION")).to_string(),
            refuse_link_local: false,
        }
    }
}

/// A manifest exactly as the registry sent it, digest verified.
#[derive(Debug, Clone)]
pub struct RawManifest {
    pub bytes: Vec<u8>,
    pub content_type: Option<String>,
    pub digest: Digest,
}

/// Where a blob download goes. `reset` starts over when a server ignores a
/// `Range` request.
pub trait BlobSink: Write {
    fn written(&self) -> u64;
    fn reset(&mut self) -> io::Result<()>;
}

/// What one call carries besides its arguments: a cancellation token
/// (checked in retry sleeps and the blob read loop) and credentials that
/// win over every configured source for this call only.
#[derive(Clone, Default)]
pub struct Call {
    pub cancel: Cancel,
    pub credentials: Option<Credentials>,
}

impl Call {
    /// Who the tokens fetched for this call belong to: they are cached per
    /// identity, so one caller's token never serves another's call.
    fn identity(&self) -> String {
        self.credentials
            .as_ref()
            .map(|c| c.username.clone())
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone)]
enum HostAuth {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

#[derive(Default)]
struct State {
    plain_http: HashSet<String>,
    auth: HashMap<String, HostAuth>,
    tokens: HashMap<(String, String, String), Token>,
    creds: HashMap<String, Option<Credentials>>,
}

pub struct RegistryClient {
    opts: RegistryOptions,
    verified: Client,
    unverified: Client,
    state: Mutex<State>,
}

fn is_loopback(host: &str) -> bool {
    let h = host
        .rsplit_once(':')
        .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host, |(h, _)| h);
    let h = h.trim_start_matches('[').trim_end_matches(']');
    h == "localhost"
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn ctx_of(r: &Reference, target: &str) -> ErrorContext {
    ErrorContext::new(r.registry(), r.repository(), target)
}

/// The message of a transport error with its causes; it holds URLs (never
/// credentials: those travel only in headers).
fn describe(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

fn retry_after(resp: &Response) -> Option<Duration> {
    let v = resp.headers().get("retry-after")?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

impl RegistryClient {
    pub fn new(opts: RegistryOptions) -> Result<RegistryClient, RegistryError> {
        let build = |verify: bool| -> Result<Client, RegistryError> {
            let mut b = Client::builder()
                .user_agent(opts.user_agent.clone())
                .timeout(opts.stall_timeout)
                .connect_timeout(Duration::from_secs(15))
                .pool_max_idle_per_host(16);
            if opts.refuse_link_local {
                b = b
                    .dns_resolver(crate::guard::resolver())
                    .redirect(crate::guard::redirect_policy());
            }
            for pem in &opts.ca_certs_pem {
                let certs = reqwest::Certificate::from_pem_bundle(pem)
                    .map_err(|e| RegistryError::Tls(format!("bad CA certificate: {e}")))?;
                if certs.is_empty() {
                    return Err(RegistryError::Tls(
                        "CA certificate file holds no PEM certificate".into(),
                    ));
                }
                for c in certs {
                    b = b.add_root_certificate(c);
                }
            }
            if !verify {
                b = b.danger_accept_invalid_certs(true);
            }
            b.build().map_err(|e| RegistryError::Tls(describe(&e)))
        };
        Ok(RegistryClient {
            verified: build(true)?,
            unverified: build(false)?,
            opts,
            state: Mutex::new(State::default()),
        })
    }

    pub fn options(&self) -> &RegistryOptions {
        &self.opts
    }

    fn is_insecure(&self, host: &str) -> bool {
        self.opts.insecure_registries.iter().any(|h| h == host)
    }

    fn client_for(&self, host: &str) -> &Client {
        if self.is_insecure(host) {
            &self.unverified
        } else {
            &self.verified
        }
    }

    fn credentials(
        &self,
        registry: &str,
        call: &Call,
    ) -> Result<Option<Credentials>, RegistryError> {
        if let Some(c) = &call.credentials {
            return Ok(Some(c.clone()));
        }
        if let Some(c) = &self.opts.credentials {
            return Ok(Some(c.clone()));
        }
        if let Some(c) = self.state.lock().expect("lock").creds.get(registry) {
            return Ok(c.clone());
        }
        let c = self.opts.credential_sources.lookup(registry)?;
        self.state
            .lock()
            .expect("lock")
            .creds
            .insert(registry.to_string(), c.clone());
        Ok(c)
    }

    fn can_retry(&self, attempt: u32, started: Instant) -> bool {
        attempt < self.opts.retry.max_attempts && started.elapsed() < self.opts.retry.max_elapsed
    }

    /// The back-off before another attempt; a cancelled call stops here.
    fn pause(
        &self,
        call: &Call,
        ctx: &ErrorContext,
        attempt: u32,
        why: &str,
    ) -> Result<(), RegistryError> {
        let d = self.opts.retry.backoff(attempt);
        tracing::debug!("retrying in {d:?} after {why}");
        call.cancel
            .sleep(d)
            .map_err(|_| RegistryError::Cancelled { ctx: ctx.clone() })
    }

    /// The Authorization header for this host and scope, fetching a token
    /// when the host uses bearer auth and none is fresh.
    fn auth_header(
        &self,
        r: &Reference,
        scope: &str,
        ctx: &ErrorContext,
        call: &Call,
        started: Instant,
    ) -> Result<Option<String>, RegistryError> {
        let host = r.api_host();
        let mode = self.state.lock().expect("lock").auth.get(host).cloned();
        match mode {
            None => Ok(None),
            Some(HostAuth::Basic) => Ok(self
                .credentials(r.registry(), call)?
                .map(|c| c.basic_header())),
            Some(HostAuth::Bearer { realm, service }) => {
                let key = (host.to_string(), scope.to_string(), call.identity());
                if let Some(t) = self.state.lock().expect("lock").tokens.get(&key) {
                    if t.is_fresh() {
                        return Ok(Some(format!("Bearer {}", t.value)));
                    }
                }
                let t =
                    self.fetch_token(r, (&realm, service.as_deref()), scope, ctx, call, started)?;
                let h = format!("Bearer {}", t.value);
                self.state.lock().expect("lock").tokens.insert(key, t);
                Ok(Some(h))
            }
        }
    }

    fn fetch_token(
        &self,
        r: &Reference,
        (realm, service): (&str, Option<&str>),
        scope: &str,
        ctx: &ErrorContext,
        call: &Call,
        started: Instant,
    ) -> Result<Token, RegistryError> {
        let mut url = url::Url::parse(realm).map_err(|e| RegistryError::Protocol {
            ctx: ctx.clone(),
            message: format!("bad token realm {realm:?}: {e}"),
        })?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            q.append_pair("scope", scope);
        }
        let realm_host = url.host_str().unwrap_or("").to_string();
        let realm_host = match url.port() {
            Some(p) => format!("{realm_host}:{p}"),
            None => realm_host,
        };
        let creds = self.credentials(r.registry(), call)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut req = self.client_for(&realm_host).get(url.clone());
            if let Some(c) = &creds {
                req = req.header(AUTHORIZATION, c.basic_header());
            }
            let resp = match req.send() {
                Ok(resp) => resp,
                Err(e) if self.can_retry(attempt, started) => {
                    self.pause(call, ctx, attempt, &describe(&e))?;
                    continue;
                }
                Err(e) => {
                    return Err(RegistryError::Transport {
                        ctx: ctx.clone(),
                        message: format!("token request: {}", describe(&e)),
                    })
                }
            };
            let status = resp.status().as_u16();
            if matches!(status, 408 | 500 | 502 | 503 | 504) && self.can_retry(attempt, started) {
                self.pause(call, ctx, attempt, &format!("token endpoint HTTP {status}"))?;
                continue;
            }
            let ra = retry_after(&resp);
            let mut body = Vec::new();
            let _ = resp.take(MAX_TOKEN_BODY).read_to_end(&mut body);
            if !(200..300).contains(&status) {
                let msg = error::parse_body(&body);
                return Err(error::from_status(ctx.clone(), status, msg, ra));
            }
            let reply: TokenReply =
                serde_json::from_slice(&body).map_err(|e| RegistryError::Protocol {
                    ctx: ctx.clone(),
                    message: format!("token endpoint sent an unreadable reply: {e}"),
                })?;
            return reply.into_token().ok_or_else(|| RegistryError::Protocol {
                ctx: ctx.clone(),
                message: "token endpoint sent no token".into(),
            });
        }
    }

    /// Learn how a host wants to be authenticated from its 401.
    fn learn_auth(
        &self,
        r: &Reference,
        resp: &Response,
        ctx: &ErrorContext,
        call: &Call,
    ) -> Result<bool, RegistryError> {
        let challenge = resp
            .headers()
            .get_all("www-authenticate")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(parse_challenge);
        let mode = match challenge {
            Some(Challenge::Basic) => {
                if self.credentials(r.registry(), call)?.is_none() {
                    return Ok(false);
                }
                HostAuth::Basic
            }
            Some(Challenge::Bearer { realm, service, .. }) => HostAuth::Bearer { realm, service },
            None => return Ok(false),
        };
        let mut st = self.state.lock().expect("lock");
        st.auth.insert(r.api_host().to_string(), mode);
        st.tokens.retain(|(h, _, _), _| h != r.api_host());
        drop(st);
        let _ = ctx;
        Ok(true)
    }

    /// GET `/v2/<repo>/<path>` with auth, scheme fallback and retries;
    /// returns a 2xx response or a typed error.
    fn send(
        &self,
        r: &Reference,
        ctx: &ErrorContext,
        path: &str,
        headers: &HeaderMap,
        call: &Call,
        started: Instant,
    ) -> Result<Response, RegistryError> {
        let host = r.api_host();
        if self.opts.refuse_link_local {
            if let Some(ip) =
                crate::guard::literal_ip(host).filter(|ip| crate::guard::is_refused_ip(*ip))
            {
                return Err(RegistryError::AddressRefused {
                    ctx: ctx.clone(),
                    address: ip.to_string(),
                });
            }
        }
        let scope = format!("repository:{}:pull", r.repository());
        let mut attempt = 0u32;
        let mut reauthed = false;
        // Set while trying plain HTTP after HTTPS failed: if HTTP fails too,
        // the HTTPS error is the one worth showing (say, an unknown CA).
        let mut https_error: Option<String> = None;
        loop {
            attempt += 1;
            if call.cancel.is_cancelled() {
                return Err(RegistryError::Cancelled { ctx: ctx.clone() });
            }
            let plain = self.state.lock().expect("lock").plain_http.contains(host);
            let scheme = if plain { "http" } else { "https" };
            let url = format!("{scheme}://{host}/v2/{}/{path}", r.repository());
            let mut req = self.client_for(host).get(&url).headers(headers.clone());
            if let Some(h) = self.auth_header(r, &scope, ctx, call, started)? {
                let mut v = HeaderValue::from_str(&h).map_err(|_| RegistryError::Protocol {
                    ctx: ctx.clone(),
                    message: "credentials hold characters not allowed in a header".into(),
                })?;
                v.set_sensitive(true);
                req = req.header(AUTHORIZATION, v);
            }
            tracing::debug!("GET {url}");
            let resp = match req.send() {
                Ok(resp) => resp,
                Err(e) => {
                    if let Some(address) = crate::guard::find_refused(&e) {
                        return Err(RegistryError::AddressRefused {
                            ctx: ctx.clone(),
                            address,
                        });
                    }
                    if let Some(first) = https_error.take() {
                        self.state.lock().expect("lock").plain_http.remove(host);
                        if self.can_retry(attempt, started) {
                            self.pause(call, ctx, attempt, &first)?;
                            continue;
                        }
                        return Err(RegistryError::Transport {
                            ctx: ctx.clone(),
                            message: format!("{first} (plain HTTP failed too: {})", describe(&e)),
                        });
                    }
                    if !plain && e.is_connect() && (self.is_insecure(host) || is_loopback(host)) {
                        tracing::debug!(
                            "https to {host} failed ({}); trying plain http",
                            describe(&e)
                        );
                        https_error = Some(describe(&e));
                        self.state
                            .lock()
                            .expect("lock")
                            .plain_http
                            .insert(host.to_string());
                        attempt -= 1;
                        continue;
                    }
                    if self.can_retry(attempt, started) {
                        self.pause(call, ctx, attempt, &describe(&e))?;
                        continue;
                    }
                    return Err(RegistryError::Transport {
                        ctx: ctx.clone(),
                        message: describe(&e),
                    });
                }
            };
            let status = resp.status().as_u16();
            if let Some(first) = https_error.take() {
                // An HTTPS server answers a plain request with 400.
                if status == 400 {
                    self.state.lock().expect("lock").plain_http.remove(host);
                    return Err(RegistryError::Transport {
                        ctx: ctx.clone(),
                        message: first,
                    });
                }
            }
            match status {
                200..=299 => return Ok(resp),
                401 if !reauthed => {
                    reauthed = true;
                    if self.learn_auth(r, &resp, ctx, call)? {
                        attempt -= 1;
                        continue;
                    }
                }
                429 => {
                    let ra = retry_after(&resp);
                    if let Some(cap) = self.opts.rate_limit_wait {
                        let wait = ra.unwrap_or(Duration::from_secs(1));
                        if wait <= cap && self.can_retry(attempt, started) {
                            tracing::info!(
                                "rate limited by {host}; waiting {wait:?} (Retry-After)"
                            );
                            call.cancel
                                .sleep(wait)
                                .map_err(|_| RegistryError::Cancelled { ctx: ctx.clone() })?;
                            continue;
                        }
                        return Err(RegistryError::RateLimited {
                            ctx: ctx.clone(),
                            retry_after: ra,
                            waited: true,
                        });
                    }
                }
                408 | 500 | 502 | 503 | 504 if self.can_retry(attempt, started) => {
                    self.pause(call, ctx, attempt, &format!("HTTP {status}"))?;
                    continue;
                }
                _ => {}
            }
            let ra = retry_after(&resp);
            let mut body = Vec::new();
            let _ = resp.take(MAX_ERROR_BODY).read_to_end(&mut body);
            return Err(error::from_status(
                ctx.clone(),
                status,
                error::parse_body(&body),
                ra,
            ));
        }
    }

    /// Fetch a manifest or index by tag or digest, verified, never buffering
    /// more than the size limit.
    pub fn get_manifest(
        &self,
        r: &Reference,
        target: &str,
        call: &Call,
    ) -> Result<RawManifest, RegistryError> {
        let ctx = ctx_of(r, target);
        let limit = self.opts.max_manifest_size;
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static(media::MANIFEST_ACCEPT));
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let resp = self.send(
                r,
                &ctx,
                &format!("manifests/{target}"),
                &headers,
                call,
                started,
            )?;
            if let Some(len) = resp.content_length().filter(|&l| l > limit) {
                return Err(RegistryError::TooLarge {
                    ctx,
                    what: "manifest".into(),
                    size: Some(len),
                    limit,
                });
            }
            let content_type = resp
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let header_digest = resp
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<Digest>().ok());
            let mut bytes = Vec::new();
            if let Err(e) = resp.take(limit + 1).read_to_end(&mut bytes) {
                if self.can_retry(attempt, started) {
                    self.pause(call, &ctx, attempt, &e.to_string())?;
                    continue;
                }
                return Err(RegistryError::Transport {
                    ctx,
                    message: format!("reading the manifest: {e}"),
                });
            }
            if bytes.len() as u64 > limit {
                return Err(RegistryError::TooLarge {
                    ctx,
                    what: "manifest".into(),
                    size: None,
                    limit,
                });
            }
            let expected = match target.parse::<Digest>() {
                Ok(d) => Some(d),
                Err(_) => header_digest,
            };
            let digest = match expected {
                Some(exp) => {
                    let actual = Digest::of(exp.algorithm(), &bytes);
                    if actual != exp {
                        return Err(RegistryError::DigestMismatch {
                            ctx,
                            what: "manifest".into(),
                            expected: exp,
                            actual,
                        });
                    }
                    if exp.algorithm() == hoist_spec::Algorithm::Sha256 {
                        exp
                    } else {
                        Digest::sha256_of(&bytes)
                    }
                }
                None => Digest::sha256_of(&bytes),
            };
            return Ok(RawManifest {
                bytes,
                content_type,
                digest,
            });
        }
    }

    /// Stream a blob into `sink`, resuming with `Range` after a broken
    /// transfer. The caller verifies the digest when it commits the sink.
    pub fn fetch_blob(
        &self,
        r: &Reference,
        digest: &Digest,
        size: u64,
        sink: &mut dyn BlobSink,
        call: &Call,
    ) -> Result<(), RegistryError> {
        let ctx = ctx_of(r, &digest.to_string());
        let path = format!("blobs/{digest}");
        let started = Instant::now();
        let mut attempt = 0;
        let mut buf = vec![0u8; 256 << 10];
        loop {
            attempt += 1;
            let offset = sink.written();
            let mut headers = HeaderMap::new();
            if offset > 0 {
                headers.insert(
                    RANGE,
                    HeaderValue::from_str(&format!("bytes={offset}-")).expect("ascii"),
                );
            }
            let mut resp = self.send(r, &ctx, &path, &headers, call, started)?;
            if offset > 0 {
                let resumed = resp.status().as_u16() == 206
                    && resp
                        .headers()
                        .get("content-range")
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|v| v.starts_with(&format!("bytes {offset}-")));
                if !resumed {
                    tracing::debug!("{digest}: server ignored Range; starting over");
                    sink.reset().map_err(|source| RegistryError::Sink {
                        ctx: ctx.clone(),
                        source,
                    })?;
                    if resp.status().as_u16() != 200 {
                        continue;
                    }
                }
            }
            let base = sink.written();
            if let Some(len) = resp.content_length() {
                if base + len > size {
                    return Err(RegistryError::SizeMismatch {
                        ctx,
                        digest: digest.clone(),
                        expected: size,
                        actual: base + len,
                    });
                }
            }
            let mut broken = None;
            loop {
                if call.cancel.is_cancelled() {
                    return Err(RegistryError::Cancelled { ctx });
                }
                let remaining = size - sink.written();
                // One byte past the declared size is enough to know a server
                // is sending too much; nothing more is read.
                let want = (remaining.min(buf.len() as u64 - 1) + 1) as usize;
                match resp.read(&mut buf[..want]) {
                    Ok(0) => break,
                    Ok(n) if n as u64 > remaining => {
                        return Err(RegistryError::SizeMismatch {
                            ctx,
                            digest: digest.clone(),
                            expected: size,
                            actual: sink.written() + n as u64,
                        })
                    }
                    Ok(n) => {
                        sink.write_all(&buf[..n])
                            .map_err(|source| RegistryError::Sink {
                                ctx: ctx.clone(),
                                source,
                            })?;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        broken = Some(e.to_string());
                        break;
                    }
                }
            }
            if sink.written() == size && broken.is_none() {
                return Ok(());
            }
            let why = broken.unwrap_or_else(|| {
                format!("connection closed after {} of {size} bytes", sink.written())
            });
            if self.can_retry(attempt, started) {
                self.pause(call, &ctx, attempt, &why)?;
                continue;
            }
            if sink.written() < size {
                return Err(RegistryError::Transport {
                    ctx,
                    message: format!("blob download failed: {why}"),
                });
            }
            return Err(RegistryError::SizeMismatch {
                ctx,
                digest: digest.clone(),
                expected: size,
                actual: sink.written(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_hosts() {
        for h in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "[::1]:5000",
            "127.1.2.3",
        ] {
            assert!(super::is_loopback(h), "{h}");
        }
        for h in ["example.com", "10.0.0.1:5000", "docker.io"] {
            assert!(!super::is_loopback(h), "{h}");
        }
    }
}
