use std::fmt;
use std::time::Duration;

use hoist_spec::Digest;
use thiserror::Error;

/// Which image an error is about: every registry error names all three.
/// Boxed so that errors stay small on the happy path's `Result`s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorContext(Box<ContextInner>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct ContextInner {
    registry: String,
    repository: String,
    reference: String,
}

impl ErrorContext {
    pub fn new(registry: &str, repository: &str, reference: &str) -> ErrorContext {
        ErrorContext(Box::new(ContextInner {
            registry: registry.into(),
            repository: repository.into(),
            reference: reference.into(),
        }))
    }
    pub fn registry(&self) -> &str {
        &self.0.registry
    }
    pub fn repository(&self) -> &str {
        &self.0.repository
    }
    /// The tag or digest that was asked for.
    pub fn reference(&self) -> &str {
        &self.0.reference
    }
}

impl fmt::Display for ErrorContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.0;
        let sep = if c.reference.contains(':') { '@' } else { ':' };
        write!(f, "{}/{}{}{}", c.registry, c.repository, sep, c.reference)
    }
}

/// A registry's `{"errors":[{"code":…,"message":…}]}` body, first entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryMessage {
    pub code: String,
    pub message: String,
}

impl fmt::Display for RegistryMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code.is_empty(), self.message.is_empty()) {
            (true, true) => Ok(()),
            (false, true) => write!(f, " ({})", self.code),
            (true, false) => write!(f, " ({})", self.message),
            (false, false) => write!(f, " ({}: {})", self.code, self.message),
        }
    }
}

#[derive(Debug, Error)]
pub enum RegistryError {
    #[error("not found: {ctx}{msg}")]
    NotFound {
        ctx: ErrorContext,
        msg: RegistryMessage,
    },
    #[error("unauthorized: {ctx}{msg}; check the credentials (--creds, docker login)")]
    Unauthorized {
        ctx: ErrorContext,
        msg: RegistryMessage,
    },
    #[error("access denied: {ctx}{msg}")]
    Denied {
        ctx: ErrorContext,
        msg: RegistryMessage,
    },
    #[error("rate limited by {}: {ctx}{}{}", ctx.registry(), retry_after_text(.retry_after), if *.waited { "" } else { " (use --retry-rate-limit to wait)" })]
    RateLimited {
        ctx: ErrorContext,
        retry_after: Option<Duration>,
        waited: bool,
    },
    #[error("integrity: {ctx}: {what} digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        ctx: ErrorContext,
        what: String,
        expected: Digest,
        actual: Digest,
    },
    #[error(
        "integrity: {ctx}: blob {digest} size mismatch: expected {expected} bytes, got {actual}"
    )]
    SizeMismatch {
        ctx: ErrorContext,
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("{ctx}: {what} is {} bytes, above the limit of {limit} bytes", size.map(|s| s.to_string()).unwrap_or_else(|| "more than".into()))]
    TooLarge {
        ctx: ErrorContext,
        what: String,
        size: Option<u64>,
        limit: u64,
    },
    #[error("{ctx}: registry answered HTTP {status}{msg}")]
    Status {
        ctx: ErrorContext,
        status: u16,
        msg: RegistryMessage,
    },
    /// The request did not get an answer; `source` says why (a timeout, a
    /// reset, a TLS failure: see [`RegistryError::transport_kind`]).
    #[error("{ctx}: {message}")]
    Transport {
        ctx: ErrorContext,
        message: String,
        #[source]
        source: Option<reqwest::Error>,
    },
    #[error("{ctx}: {message}")]
    Protocol { ctx: ErrorContext, message: String },
    #[error("credentials for {registry}: {message}")]
    Credentials { registry: String, message: String },
    #[error("{ctx}: writing the blob failed: {source}")]
    Sink {
        ctx: ErrorContext,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("{path}: {message}")]
    HostsConfig { path: String, message: String },
    #[error("{ctx}: cancelled")]
    Cancelled { ctx: ErrorContext },
    /// A link-local or cloud-metadata address, named, resolved or reached
    /// by a redirect, while such addresses are refused.
    #[error("{ctx}: {address} is a link-local or metadata address, which this client refuses")]
    AddressRefused { ctx: ErrorContext, address: String },
}

fn retry_after_text(d: &Option<Duration>) -> String {
    match d {
        Some(d) => format!(" (Retry-After: {}s)", d.as_secs()),
        None => String::new(),
    }
}

/// Why a request got no answer, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    Timeout,
    Connect,
    Tls,
    Reset,
    Other,
}

impl TransportKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TransportKind::Timeout => "timeout",
            TransportKind::Connect => "connect",
            TransportKind::Tls => "tls",
            TransportKind::Reset => "reset",
            TransportKind::Other => "other",
        }
    }

    pub(crate) fn of(e: &reqwest::Error) -> TransportKind {
        let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(s) = src {
            if let Some(io) = s.downcast_ref::<std::io::Error>() {
                match io.kind() {
                    std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof => return TransportKind::Reset,
                    std::io::ErrorKind::TimedOut => return TransportKind::Timeout,
                    _ => {}
                }
            }
            if s.downcast_ref::<rustls::Error>().is_some() {
                return TransportKind::Tls;
            }
            src = s.source();
        }
        if e.is_timeout() {
            TransportKind::Timeout
        } else if e.is_connect() {
            TransportKind::Connect
        } else {
            TransportKind::Other
        }
    }
}

pub use hoist_spec::ErrorKind;

impl RegistryError {
    /// For a transport error, why there was no answer.
    pub fn transport_kind(&self) -> Option<TransportKind> {
        match self {
            RegistryError::Transport { source, .. } => Some(
                source
                    .as_ref()
                    .map_or(TransportKind::Other, TransportKind::of),
            ),
            _ => None,
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            RegistryError::NotFound { .. } => ErrorKind::NotFound,
            RegistryError::Unauthorized { .. }
            | RegistryError::Denied { .. }
            | RegistryError::Credentials { .. } => ErrorKind::Auth,
            RegistryError::RateLimited { .. } => ErrorKind::RateLimited,
            RegistryError::DigestMismatch { .. } | RegistryError::SizeMismatch { .. } => {
                ErrorKind::Integrity
            }
            RegistryError::Transport { .. } => ErrorKind::Unavailable,
            RegistryError::Status { status, .. } if *status >= 500 => ErrorKind::Unavailable,
            RegistryError::Cancelled { .. } => ErrorKind::Cancelled,
            RegistryError::AddressRefused { .. } => ErrorKind::NotAllowed,
            _ => ErrorKind::Other,
        }
    }
}

#[derive(serde::Deserialize)]
struct Body {
    #[serde(default)]
    errors: Vec<Entry>,
}
#[derive(serde::Deserialize)]
struct Entry {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

/// Parse the registry's JSON error body (distribution spec); an unparsable
/// body yields an empty message, never a guess from its text.
pub(crate) fn parse_body(bytes: &[u8]) -> RegistryMessage {
    serde_json::from_slice::<Body>(bytes)
        .ok()
        .and_then(|b| b.errors.into_iter().next())
        .map(|e| RegistryMessage {
            code: e.code,
            message: e.message,
        })
        .unwrap_or_default()
}

/// Map a status and parsed body to a typed error, by code first, then status.
pub(crate) fn from_status(
    ctx: ErrorContext,
    status: u16,
    msg: RegistryMessage,
    retry_after: Option<Duration>,
) -> RegistryError {
    #[derive(PartialEq)]
    enum K {
        NotFound,
        Unauthorized,
        Denied,
        RateLimited,
        Other,
    }
    let by_code = match msg.code.as_str() {
        "NAME_UNKNOWN" | "MANIFEST_UNKNOWN" | "BLOB_UNKNOWN" => K::NotFound,
        "UNAUTHORIZED" => K::Unauthorized,
        "DENIED" => K::Denied,
        "TOOMANYREQUESTS" => K::RateLimited,
        _ => K::Other,
    };
    let kind = if by_code != K::Other {
        by_code
    } else {
        match status {
            404 => K::NotFound,
            401 => K::Unauthorized,
            403 => K::Denied,
            429 => K::RateLimited,
            _ => K::Other,
        }
    };
    match kind {
        K::NotFound => RegistryError::NotFound { ctx, msg },
        K::Unauthorized => RegistryError::Unauthorized { ctx, msg },
        K::Denied => RegistryError::Denied { ctx, msg },
        K::RateLimited => RegistryError::RateLimited {
            ctx,
            retry_after,
            waited: false,
        },
        K::Other => RegistryError::Status { ctx, status, msg },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> ErrorContext {
        ErrorContext::new("r", "a/b", "t")
    }

    #[test]
    fn codes_win_over_status() {
        let m = parse_body(br#"{"errors":[{"code":"DENIED","message":"no"}]}"#);
        assert_eq!(m.code, "DENIED");
        assert!(matches!(
            from_status(ctx(), 401, m, None),
            RegistryError::Denied { .. }
        ));
        let e = from_status(ctx(), 404, parse_body(b"<html>"), None);
        assert!(matches!(e, RegistryError::NotFound { .. }));
        assert_eq!(e.to_string(), "not found: r/a/b:t");
        let e = from_status(ctx(), 429, Default::default(), Some(Duration::from_secs(7)));
        assert!(e.to_string().contains("Retry-After: 7s"), "{e}");
        assert_eq!(e.kind(), ErrorKind::RateLimited);
    }
}
