//! Where a registry's requests go: an ordered list of endpoints, each with
//! its capabilities, scheme, TLS settings, headers and API path. Without
//! configuration a registry is one endpoint, its own host; containerd's
//! `hosts.toml` puts mirrors in front of it.

use std::fmt;
use std::path::PathBuf;

use crate::error::RegistryError;

/// What a host may be asked (containerd's `capabilities`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Manifests and blobs by digest.
    pub pull: bool,
    /// Manifests by tag.
    pub resolve: bool,
}

impl Capabilities {
    pub const ALL: Capabilities = Capabilities {
        pull: true,
        resolve: true,
    };
}

/// What one request needs of a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// A tag: only a host trusted to resolve may answer.
    Resolve,
    /// Content by digest: any host that can pull may serve it, as the
    /// bytes are verified against the digest.
    Pull,
}

impl Capabilities {
    pub fn allows(self, need: Need) -> bool {
        match need {
            Need::Resolve => self.resolve,
            Need::Pull => self.pull,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Https,
    Http,
    /// HTTPS, falling back to plain HTTP for loopback and `--insecure-registry`
    /// hosts (Docker's rule for a registry named without a scheme).
    Auto,
}

/// TLS settings of one endpoint (from `hosts.toml`); an endpoint without
/// them uses the client's (`--ca-cert`, `--insecure-registry`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Tls {
    /// Extra trusted roots (PEM files).
    pub ca: Vec<PathBuf>,
    /// Client certificates: (certificate, key); the key may be in the
    /// certificate's file.
    pub client: Vec<(PathBuf, Option<PathBuf>)>,
    pub skip_verify: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `HOST[:PORT]`: the key of its credentials, auth mode and tokens.
    pub host: String,
    pub scheme: Scheme,
    /// The API root, `/v2` unless the host overrides its path.
    pub api_root: String,
    pub capabilities: Capabilities,
    pub tls: Option<Tls>,
    pub headers: Vec<(String, String)>,
    /// For a mirror, the registry it mirrors: requests carry `?ns=` with
    /// it, as containerd's do. `None` for the registry itself.
    pub mirror_of: Option<String>,
}

impl Endpoint {
    /// The registry itself at `api_host` (where its API lives).
    pub fn upstream(api_host: &str) -> Endpoint {
        Endpoint {
            host: api_host.to_string(),
            scheme: Scheme::Auto,
            api_root: "/v2".into(),
            capabilities: Capabilities::ALL,
            tls: None,
            headers: Vec::new(),
            mirror_of: None,
        }
    }

    pub fn is_mirror(&self) -> bool {
        self.mirror_of.is_some()
    }

    /// The URL of `path` (`manifests/…`, `blobs/…`) in `repo`.
    pub(crate) fn url(&self, scheme: &str, repo: &str, path: &str) -> String {
        let mut u = format!("{scheme}://{}{}/{repo}/{path}", self.host, self.api_root);
        if let Some(ns) = &self.mirror_of {
            u.push_str("?ns=");
            u.push_str(ns);
        }
        u
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.host)
    }
}

/// Gives, for a registry, the endpoints to try, in order; the registry
/// itself (or `hosts.toml`'s `server`) comes last.
pub trait Resolver: Send + Sync + fmt::Debug {
    /// `registry` as references name it (`docker.io`), `api_host` where
    /// its API lives (`registry-1.docker.io`).
    fn endpoints(&self, registry: &str, api_host: &str) -> Result<Vec<Endpoint>, RegistryError>;
}

/// No configuration: each registry is its own single endpoint.
#[derive(Debug, Default)]
pub struct Direct;

impl Resolver for Direct {
    fn endpoints(&self, _registry: &str, api_host: &str) -> Result<Vec<Endpoint>, RegistryError> {
        Ok(vec![Endpoint::upstream(api_host)])
    }
}
