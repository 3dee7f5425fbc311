//! The distribution API client: its options, what it learns per host, and
//! the one HTTP-client builder. Requests are sent by `send.rs` (endpoint
//! walk and one endpoint's send), authenticated by `tokens.rs`, retried
//! under `retry.rs`'s budget; manifest and blob fetches (`fetch.rs`) are
//! built on them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hoist_spec::{Cancel, Digest, Reference};
use reqwest::blocking::{Client, Response};

use crate::auth::Token;
use crate::creds::{CredentialSources, Credentials};
use crate::endpoint::{Direct, Endpoint, Resolver, Tls};
use crate::error::{ErrorContext, RegistryError};
use crate::retry::RetryPolicy;

pub const DEFAULT_MAX_MANIFEST_SIZE: u64 = 4 << 20;
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
        self.served
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn count(&self, host: &str, n: u64) {
        *self
            .served
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(host.to_string())
            .or_default() += n;
    }

    /// Who the tokens fetched for this call belong to: they are cached per
    /// identity, so one caller's token never serves another's call.
    pub(crate) fn identity(&self) -> String {
        self.credentials
            .as_ref()
            .map(|c| c.username.clone())
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone)]
pub(crate) enum HostAuth {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

/// What is learned per endpoint host (scheme, auth mode, tokens by scope
/// and identity), per registry (its endpoints) and per TLS setting.
#[derive(Default)]
pub(crate) struct State {
    pub(crate) plain_http: HashSet<String>,
    pub(crate) auth: HashMap<String, HostAuth>,
    pub(crate) tokens: HashMap<(String, String, String), Token>,
    pub(crate) creds: HashMap<String, Option<Credentials>>,
    /// Each registry's endpoints and when they were resolved.
    endpoints: HashMap<String, (Instant, Arc<Vec<Endpoint>>)>,
    tls_clients: HashMap<Tls, Client>,
}

pub struct RegistryClient {
    opts: RegistryOptions,
    verified: Client,
    unverified: Client,
    state: Mutex<State>,
}

pub(crate) fn is_loopback(host: &str) -> bool {
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
pub(crate) fn describe(e: &reqwest::Error) -> String {
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

/// The one place an HTTP client is built: the user agent, the stall and
/// connect timeouts, the link-local guard (resolver and redirect policy),
/// the extra roots, and an endpoint's own CA, client pair and verification.
fn http_client(
    opts: &RegistryOptions,
    tls: Option<&Tls>,
    skip_verify: bool,
) -> Result<Client, RegistryError> {
    let read = |p: &std::path::Path| -> Result<Vec<u8>, RegistryError> {
        let mut v = Vec::new();
        std::fs::File::open(p)
            .and_then(|f| f.take(MAX_PEM).read_to_end(&mut v))
            .map_err(|e| RegistryError::Tls(format!("{}: {e}", p.display())))?;
        Ok(v)
    };
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
    let mut pems: Vec<Vec<u8>> = opts.ca_certs_pem.clone();
    for p in tls.map(|t| t.ca.as_slice()).unwrap_or_default() {
        pems.push(read(p)?);
    }
    for pem in &pems {
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
    if let Some((cert, key)) = tls.and_then(|t| t.client.first()) {
        let mut pem = read(cert)?;
        if let Some(k) = key {
            pem.push(b'\n');
            pem.extend(read(k)?);
        }
        let id = reqwest::Identity::from_pem(&pem)
            .map_err(|e| RegistryError::Tls(format!("{}: {e}", cert.display())))?;
        b = b.identity(id);
    }
    if skip_verify {
        b = b.danger_accept_invalid_certs(true);
    }
    b.build().map_err(|e| RegistryError::Tls(describe(&e)))
}

impl RegistryClient {
    pub fn new(opts: RegistryOptions) -> Result<RegistryClient, RegistryError> {
        Ok(RegistryClient {
            verified: http_client(&opts, None, false)?,
            unverified: http_client(&opts, None, true)?,
            opts,
            state: Mutex::new(State::default()),
        })
    }

    pub fn options(&self) -> &RegistryOptions {
        &self.opts
    }

    pub(crate) fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn is_insecure(&self, host: &str) -> bool {
        self.opts.insecure_registries.iter().any(|h| h == host)
    }

    /// The HTTP client for `host` without endpoint TLS settings.
    pub(crate) fn client_for(&self, host: &str) -> &Client {
        if self.is_insecure(host) {
            &self.unverified
        } else {
            &self.verified
        }
    }

    /// The HTTP client for an endpoint: its own TLS settings (built once
    /// per setting), else the client's.
    pub(crate) fn client_of(&self, ep: &Endpoint) -> Result<Client, RegistryError> {
        let Some(tls) = &ep.tls else {
            return Ok(self.client_for(&ep.host).clone());
        };
        if let Some(c) = self.state().tls_clients.get(tls) {
            return Ok(c.clone());
        }
        let c = http_client(&self.opts, Some(tls), tls.skip_verify)?;
        self.state().tls_clients.insert(tls.clone(), c.clone());
        Ok(c)
    }

    /// The endpoints of `r`'s registry, resolved again after a few seconds:
    /// a long-running process (`hoist serve`) follows edits to `hosts.toml`
    /// without a restart, as containerd does.
    pub(crate) fn endpoints(&self, r: &Reference) -> Result<Arc<Vec<Endpoint>>, RegistryError> {
        const FRESH: Duration = Duration::from_secs(5);
        if let Some((at, e)) = self.state().endpoints.get(r.registry()) {
            if at.elapsed() < FRESH {
                return Ok(e.clone());
            }
        }
        let e = Arc::new(self.opts.resolver.endpoints(r.registry(), r.api_host())?);
        self.state()
            .endpoints
            .insert(r.registry().to_string(), (Instant::now(), e.clone()));
        Ok(e)
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
