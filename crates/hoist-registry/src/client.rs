//! The distribution API client. A request walks its registry's endpoints
//! (`send_any`: mirrors first, the registry last) under one retry budget;
//! `send` owns one endpoint's scheme choice, auth, retries and error
//! typing. Manifest and blob fetches (`fetch.rs`) are built on them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hoist_spec::{Cancel, Digest, Reference};
use reqwest::blocking::{Client, Response};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};

use crate::auth::{parse_challenge, Challenge, Token, TokenReply};
use crate::creds::{CredentialSources, Credentials};
use crate::endpoint::{Direct, Endpoint, Need, Resolver, Scheme, Tls};
use crate::error::{self, ErrorContext, RegistryError};
use crate::retry::RetryPolicy;

pub const DEFAULT_MAX_MANIFEST_SIZE: u64 = 4 << 20;
const MAX_ERROR_BODY: u64 = 64 << 10;
const MAX_TOKEN_BODY: u64 = 1 << 20;
const MAX_PEM: u64 = 1 << 20;

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
    /// Where each registry's requests go ([`Direct`]: to the registry;
    /// a `hosts.toml` resolver: mirrors first).
    pub resolver: Arc<dyn Resolver>,
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
            resolver: Arc::new(Direct),
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
    /// Whether what was written hashes to the digest asked for (`Err`:
    /// what it hashes to). Checked before a mirror's blob is accepted, so
    /// that a mirror sending wrong bytes is skipped, not trusted.
    fn check(&self) -> Result<(), Digest> {
        Ok(())
    }
}

/// What one call carries besides its arguments: a cancellation token
/// (checked in retry sleeps and the blob read loop), credentials that win
/// over every configured source for this call only (sent to the registry,
/// never to a mirror), and the tally of bytes each host served.
#[derive(Clone, Default)]
pub struct Call {
    pub cancel: Cancel,
    pub credentials: Option<Credentials>,
    pub served: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl Call {
    /// Bytes of manifests and blobs received from each host so far.
    pub fn served(&self) -> BTreeMap<String, u64> {
        self.served.lock().expect("lock").clone()
    }

    pub(crate) fn count(&self, host: &str, n: u64) {
        *self
            .served
            .lock()
            .expect("lock")
            .entry(host.to_string())
            .or_default() += n;
    }

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

/// What is learned per endpoint host (scheme, auth mode, tokens by scope
/// and identity), per registry (its endpoints) and per TLS setting.
#[derive(Default)]
struct State {
    plain_http: HashSet<String>,
    auth: HashMap<String, HostAuth>,
    tokens: HashMap<(String, String, String), Token>,
    creds: HashMap<String, Option<Credentials>>,
    /// Each registry's endpoints and when they were resolved.
    endpoints: HashMap<String, (Instant, Arc<Vec<Endpoint>>)>,
    tls_clients: HashMap<Tls, Client>,
}

/// One request's retry budget: every attempt of every loop the request
/// goes through (endpoints, `send`, a manifest's body, a blob's resumes)
/// counts against the same `--retries` and `--retry-max-time`.
pub(crate) struct RetryBudget {
    attempts: u32,
    started: Instant,
}

impl RetryBudget {
    pub(crate) fn new() -> RetryBudget {
        RetryBudget {
            attempts: 0,
            started: Instant::now(),
        }
    }
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

pub(crate) fn ctx_of(r: &Reference, target: &str) -> ErrorContext {
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

pub(crate) fn retry_after(resp: &Response) -> Option<Duration> {
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

    /// The HTTP client for `host` without endpoint TLS settings.
    fn client_for(&self, host: &str) -> &Client {
        if self.is_insecure(host) {
            &self.unverified
        } else {
            &self.verified
        }
    }

    /// The HTTP client for an endpoint: its own TLS settings (built once
    /// per setting), else the client's.
    fn client_of(&self, ep: &Endpoint) -> Result<Client, RegistryError> {
        let Some(tls) = &ep.tls else {
            return Ok(self.client_for(&ep.host).clone());
        };
        if let Some(c) = self.state.lock().expect("lock").tls_clients.get(tls) {
            return Ok(c.clone());
        }
        let read = |p: &std::path::Path| -> Result<Vec<u8>, RegistryError> {
            let mut v = Vec::new();
            std::fs::File::open(p)
                .and_then(|f| f.take(MAX_PEM).read_to_end(&mut v))
                .map_err(|e| RegistryError::Tls(format!("{}: {e}", p.display())))?;
            Ok(v)
        };
        let mut b = Client::builder()
            .user_agent(self.opts.user_agent.clone())
            .timeout(self.opts.stall_timeout)
            .connect_timeout(Duration::from_secs(15));
        if self.opts.refuse_link_local {
            b = b
                .dns_resolver(crate::guard::resolver())
                .redirect(crate::guard::redirect_policy());
        }
        for pem in self.opts.ca_certs_pem.iter().cloned().chain(
            tls.ca
                .iter()
                .map(|p| read(p))
                .collect::<Result<Vec<_>, _>>()?,
        ) {
            for c in reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| RegistryError::Tls(format!("bad CA certificate: {e}")))?
            {
                b = b.add_root_certificate(c);
            }
        }
        if let Some((cert, key)) = tls.client.first() {
            let mut pem = read(cert)?;
            if let Some(k) = key {
                pem.push(b'\n');
                pem.extend(read(k)?);
            }
            let id = reqwest::Identity::from_pem(&pem)
                .map_err(|e| RegistryError::Tls(format!("{}: {e}", cert.display())))?;
            b = b.identity(id);
        }
        if tls.skip_verify {
            b = b.danger_accept_invalid_certs(true);
        }
        let c = b.build().map_err(|e| RegistryError::Tls(describe(&e)))?;
        self.state
            .lock()
            .expect("lock")
            .tls_clients
            .insert(tls.clone(), c.clone());
        Ok(c)
    }

    /// The endpoints of `r`'s registry, resolved once per client.
    /// The endpoints of `r`'s registry, resolved again after a few seconds:
    /// a long-running process (`hoist serve`) follows edits to `hosts.toml`
    /// without a restart, as containerd does.
    pub(crate) fn endpoints(&self, r: &Reference) -> Result<Arc<Vec<Endpoint>>, RegistryError> {
        const FRESH: Duration = Duration::from_secs(5);
        if let Some((at, e)) = self.state.lock().expect("lock").endpoints.get(r.registry()) {
            if at.elapsed() < FRESH {
                return Ok(e.clone());
            }
        }
        let e = Arc::new(self.opts.resolver.endpoints(r.registry(), r.api_host())?);
        self.state
            .lock()
            .expect("lock")
            .endpoints
            .insert(r.registry().to_string(), (Instant::now(), e.clone()));
        Ok(e)
    }

    /// The credentials to send to `ep`: a mirror's own, looked up under its
    /// host; the registry's from the call, `--creds`, or the sources.
    fn credentials(
        &self,
        ep: &Endpoint,
        r: &Reference,
        call: &Call,
    ) -> Result<Option<Credentials>, RegistryError> {
        let key = if ep.is_mirror() {
            ep.host.as_str()
        } else {
            if let Some(c) = &call.credentials {
                return Ok(Some(c.clone()));
            }
            if let Some(c) = &self.opts.credentials {
                return Ok(Some(c.clone()));
            }
            r.registry()
        };
        self.source_credentials(key)
    }

    fn source_credentials(&self, registry: &str) -> Result<Option<Credentials>, RegistryError> {
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

    /// Count an attempt against the request's budget.
    pub(crate) fn attempt(&self, b: &mut RetryBudget) {
        b.attempts += 1;
    }

    pub(crate) fn can_retry(&self, b: &RetryBudget) -> bool {
        b.attempts < self.opts.retry.max_attempts
            && b.started.elapsed() < self.opts.retry.max_elapsed
    }

    /// The back-off before another attempt; a cancelled call stops here.
    pub(crate) fn pause(
        &self,
        call: &Call,
        ctx: &ErrorContext,
        b: &RetryBudget,
        why: &str,
    ) -> Result<(), RegistryError> {
        let d = self.opts.retry.backoff(b.attempts);
        tracing::debug!("retrying in {d:?} after {why}");
        call.cancel
            .sleep(d)
            .map_err(|_| RegistryError::Cancelled { ctx: ctx.clone() })
    }

    /// The Authorization header for this host and scope, fetching a token
    /// when the host uses bearer auth and none is fresh.
    fn auth_header(
        &self,
        ep: &Endpoint,
        r: &Reference,
        scope: &str,
        ctx: &ErrorContext,
        call: &Call,
        budget: &mut RetryBudget,
    ) -> Result<Option<String>, RegistryError> {
        let host = ep.host.as_str();
        let mode = self.state.lock().expect("lock").auth.get(host).cloned();
        match mode {
            None => Ok(None),
            Some(HostAuth::Basic) => Ok(self.credentials(ep, r, call)?.map(|c| c.basic_header())),
            Some(HostAuth::Bearer { realm, service }) => {
                let who = if ep.is_mirror() {
                    String::new()
                } else {
                    call.identity()
                };
                let key = (host.to_string(), scope.to_string(), who);
                if let Some(t) = self.state.lock().expect("lock").tokens.get(&key) {
                    if t.is_fresh() {
                        return Ok(Some(format!("Bearer {}", t.value)));
                    }
                }
                let t = self.fetch_token(
                    ep,
                    r,
                    (&realm, service.as_deref()),
                    scope,
                    ctx,
                    call,
                    budget,
                )?;
                let h = format!("Bearer {}", t.value);
                self.state.lock().expect("lock").tokens.insert(key, t);
                Ok(Some(h))
            }
        }
    }

    #[allow(clippy::too_many_arguments)] // one request's whole context
    fn fetch_token(
        &self,
        ep: &Endpoint,
        r: &Reference,
        (realm, service): (&str, Option<&str>),
        scope: &str,
        ctx: &ErrorContext,
        call: &Call,
        budget: &mut RetryBudget,
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
        // A registry chooses the realm: it is guarded like the registry.
        if self.opts.refuse_link_local {
            if let Some(ip) = crate::guard::refused_in_url(url.as_str()) {
                return Err(RegistryError::AddressRefused {
                    ctx: ctx.clone(),
                    address: ip.to_string(),
                });
            }
        }
        let realm_host = url.host_str().unwrap_or("").to_string();
        let realm_host = match url.port() {
            Some(p) => format!("{realm_host}:{p}"),
            None => realm_host,
        };
        let creds = self.credentials(ep, r, call)?;
        loop {
            self.attempt(budget);
            let mut req = self.client_for(&realm_host).get(url.clone());
            if let Some(c) = &creds {
                req = req.header(AUTHORIZATION, c.basic_header());
            }
            let resp = match req.send() {
                Ok(resp) => resp,
                Err(e) if self.can_retry(budget) => {
                    self.pause(call, ctx, budget, &describe(&e))?;
                    continue;
                }
                Err(e) => {
                    return Err(RegistryError::Transport {
                        ctx: ctx.clone(),
                        message: format!("token request: {}", describe(&e)),
                        source: Some(e),
                    })
                }
            };
            let status = resp.status().as_u16();
            if matches!(status, 408 | 500 | 502 | 503 | 504) && self.can_retry(budget) {
                self.pause(call, ctx, budget, &format!("token endpoint HTTP {status}"))?;
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
        ep: &Endpoint,
        r: &Reference,
        resp: &Response,
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
                if self.credentials(ep, r, call)?.is_none() {
                    return Ok(false);
                }
                HostAuth::Basic
            }
            Some(Challenge::Bearer { realm, service, .. }) => HostAuth::Bearer { realm, service },
            None => return Ok(false),
        };
        let mut st = self.state.lock().expect("lock");
        st.auth.insert(ep.host.clone(), mode);
        st.tokens.retain(|(h, _, _), _| *h != ep.host);
        Ok(true)
    }

    /// GET `path` of `r`'s repository from the first endpoint that has
    /// the capability `need` and answers, starting at `eligible[*from]`.
    /// A mirror gets one attempt (and its auth round trip); whatever it
    /// fails with, the next host is tried, and the registry itself last,
    /// with the rest of the budget. `*from` is left at the host that
    /// answered, so that a caller can move past it; the flag says whether
    /// another host follows it.
    #[allow(clippy::too_many_arguments)] // one request's whole context
    pub(crate) fn send_any(
        &self,
        r: &Reference,
        ctx: &ErrorContext,
        path: &str,
        headers: &HeaderMap,
        call: &Call,
        budget: &mut RetryBudget,
        need: Need,
        from: &mut usize,
    ) -> Result<(Response, Endpoint, bool), RegistryError> {
        let all = self.endpoints(r)?;
        let eligible: Vec<&Endpoint> = all.iter().filter(|e| e.capabilities.allows(need)).collect();
        if eligible.is_empty() {
            return Err(RegistryError::Protocol {
                ctx: ctx.clone(),
                message: format!(
                    "no configured host of {} may {}",
                    r.registry(),
                    match need {
                        Need::Resolve => "resolve tags",
                        Need::Pull => "pull",
                    }
                ),
            });
        }
        loop {
            let i = (*from).min(eligible.len() - 1);
            let ep = eligible[i];
            let last = i + 1 == eligible.len();
            match self.send(ep, r, ctx, path, headers, call, budget, last) {
                Ok(resp) => {
                    *from = i;
                    return Ok((resp, ep.clone(), !last));
                }
                Err(e) if !last && !matches!(e, RegistryError::Cancelled { .. }) => {
                    tracing::info!("{}: {e}; trying {} next", ep.host, eligible[i + 1].host);
                    *from = i + 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// GET `path` of `r`'s repository from one endpoint, with auth, scheme
    /// fallback and (when `retry`) retries from the budget; returns a 2xx
    /// response or a typed error.
    #[allow(clippy::too_many_arguments)] // one request's whole context
    fn send(
        &self,
        ep: &Endpoint,
        r: &Reference,
        ctx: &ErrorContext,
        path: &str,
        headers: &HeaderMap,
        call: &Call,
        budget: &mut RetryBudget,
        retry: bool,
    ) -> Result<Response, RegistryError> {
        let host = ep.host.as_str();
        let client = self.client_of(ep)?;
        let can_retry = |b: &RetryBudget| retry && self.can_retry(b);
        let scope = format!("repository:{}:pull", r.repository());
        let mut reauthed = false;
        // Set while trying plain HTTP after HTTPS failed: if HTTP fails too,
        // the HTTPS error is the one worth showing (say, an unknown CA).
        let mut https_error: Option<String> = None;
        loop {
            self.attempt(budget);
            if call.cancel.is_cancelled() {
                return Err(RegistryError::Cancelled { ctx: ctx.clone() });
            }
            let plain = match ep.scheme {
                Scheme::Http => true,
                Scheme::Https => false,
                Scheme::Auto => self.state.lock().expect("lock").plain_http.contains(host),
            };
            let url = ep.url(if plain { "http" } else { "https" }, r.repository(), path);
            // Judged on the URL that is sent, parsed as the connection will
            // parse it: no spelling of a host can slip past.
            if self.opts.refuse_link_local {
                if let Some(ip) = crate::guard::refused_in_url(&url) {
                    return Err(RegistryError::AddressRefused {
                        ctx: ctx.clone(),
                        address: ip.to_string(),
                    });
                }
            }
            let mut req = client.get(&url).headers(headers.clone());
            for (k, v) in &ep.headers {
                if let (Ok(k), Ok(v)) = (HeaderName::try_from(k), HeaderValue::try_from(v)) {
                    req = req.header(k, v);
                }
            }
            if let Some(h) = self.auth_header(ep, r, &scope, ctx, call, budget)? {
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
                        if can_retry(budget) {
                            self.pause(call, ctx, budget, &first)?;
                            continue;
                        }
                        return Err(RegistryError::Transport {
                            ctx: ctx.clone(),
                            message: format!("{first} (plain HTTP failed too: {})", describe(&e)),
                            source: Some(e),
                        });
                    }
                    if ep.scheme == Scheme::Auto
                        && !plain
                        && e.is_connect()
                        && (self.is_insecure(host) || is_loopback(host))
                    {
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
                        budget.attempts -= 1;
                        continue;
                    }
                    if can_retry(budget) {
                        self.pause(call, ctx, budget, &describe(&e))?;
                        continue;
                    }
                    return Err(RegistryError::Transport {
                        ctx: ctx.clone(),
                        message: describe(&e),
                        source: Some(e),
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
                        source: None,
                    });
                }
            }
            match status {
                200..=299 => return Ok(resp),
                401 if !reauthed => {
                    reauthed = true;
                    if self.learn_auth(ep, r, &resp, call)? {
                        budget.attempts -= 1;
                        continue;
                    }
                }
                429 => {
                    let ra = retry_after(&resp);
                    if let Some(cap) = self.opts.rate_limit_wait {
                        let wait = ra.unwrap_or(Duration::from_secs(1));
                        if wait <= cap && can_retry(budget) {
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
                408 | 500 | 502 | 503 | 504 if can_retry(budget) => {
                    self.pause(call, ctx, budget, &format!("HTTP {status}"))?;
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
