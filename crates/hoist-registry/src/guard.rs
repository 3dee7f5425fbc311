//! Refusing link-local and cloud-metadata addresses. A service that pulls
//! whatever name a caller POSTs would otherwise let the caller make it fetch
//! from `169.254.169.254` (SSRF). The refusal happens at every place an
//! address appears: an IP literal in the name, what a name resolves to (a
//! resolver that drops such addresses), and a redirect's target.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;

/// 169.254.0.0/16, fe80::/10, and the metadata endpoints that sit outside
/// those ranges (AWS's IPv6 one, Alibaba's).
pub fn is_refused_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_link_local() || v4.octets() == [100, 100, 100, 200] || v4.is_unspecified()
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_refused_ip(IpAddr::V4(v4));
            }
            (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6
                    == "fd00:ec2::254"
                        .parse::<std::net::Ipv6Addr>()
                        .expect("literal")
                || v6.is_unspecified()
        }
    }
}

/// A registry host that hoist will not contact.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefusedHost {
    #[error("registry {host}: refused: it names {address}, a link-local, metadata or unspecified address")]
    Address { host: String, address: IpAddr },
    #[error("registry {host}: refused: not a host a URL can name")]
    Unparsable { host: String },
}

/// The address a `HOST[:PORT]` names, read by the URL parser that every
/// request's URL goes through (WHATWG host parsing: `2852039166`,
/// `0xa9fea9fe`, `0251.0376.0251.0376`, `169.254.43518` and `0` are all
/// IPv4 addresses to it). `None` for a domain name, which the resolver
/// judges after lookup. The guard and the connection cannot disagree on
/// what a host means, since they parse it the same way.
pub fn host_ip(host: &str) -> Result<Option<IpAddr>, RefusedHost> {
    let url = url::Url::parse(&format!("http://{host}/")).map_err(|_| RefusedHost::Unparsable {
        host: host.to_string(),
    })?;
    Ok(url_ip(&url))
}

fn url_ip(url: &url::Url) -> Option<IpAddr> {
    match url.host()? {
        url::Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
        url::Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
        url::Host::Domain(_) => None,
    }
}

/// Refuse a registry host that names a refused address in any spelling.
pub fn check_registry_host(host: &str) -> Result<(), RefusedHost> {
    match host_ip(host)? {
        Some(ip) if is_refused_ip(ip) => Err(RefusedHost::Address {
            host: host.to_string(),
            address: ip,
        }),
        _ => Ok(()),
    }
}

/// The refused address a request URL names, if any: checked on the URL
/// the request is built from, just before it is sent.
pub(crate) fn refused_in_url(url: &str) -> Option<IpAddr> {
    let u = url::Url::parse(url).ok()?;
    url_ip(&u).filter(|ip| is_refused_ip(*ip))
}

/// The error a refused resolution or redirect carries; `send` finds it in
/// reqwest's error chain and reports `AddressRefused`.
#[derive(Debug)]
pub(crate) struct Refused(pub String);
impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} is a refused address", self.0)
    }
}
impl std::error::Error for Refused {}

pub(crate) fn find_refused(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if let Some(r) = c.downcast_ref::<Refused>() {
            return Some(r.0.clone());
        }
        cur = c.source();
    }
    None
}

/// Resolves with the system resolver, then drops refused addresses; a name
/// that resolves only to such addresses fails with `Refused`. The lookup is
/// synchronous on reqwest's runtime thread: registry names are few and
/// cached by the system, and this keeps the crate free of a tokio
/// dependency of its own.
pub(crate) struct Resolver;

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let all: Vec<SocketAddr> = (host.as_str(), 0)
                .to_socket_addrs()
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?
                .collect();
            let ok: Vec<SocketAddr> = all
                .iter()
                .copied()
                .filter(|a| !is_refused_ip(a.ip()))
                .collect();
            if ok.is_empty() && !all.is_empty() {
                let bad = format!("{host} ({})", all[0].ip());
                return Err(Box::new(Refused(bad)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(ok.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

pub(crate) fn resolver() -> Arc<Resolver> {
    Arc::new(Resolver)
}

/// Follows up to 10 redirects (reqwest's default), none to a refused
/// literal address (names go through the resolver).
pub(crate) fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        if attempt.previous().len() >= 10 {
            return attempt.error("too many redirects");
        }
        let bad = url_ip(attempt.url()).filter(|ip| is_refused_ip(*ip));
        match bad {
            Some(ip) => attempt.error(Refused(ip.to_string())),
            None => attempt.follow(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_ranges() {
        for a in [
            "169.254.169.254",
            "169.254.0.1",
            "fe80::1",
            "febf::1",
            "fd00:ec2::254",
            "::ffff:169.254.169.254",
            "100.100.100.200",
        ] {
            assert!(is_refused_ip(a.parse().unwrap()), "{a}");
        }
        for a in ["127.0.0.1", "10.0.0.1", "::1", "fec0::1", "8.8.8.8"] {
            assert!(!is_refused_ip(a.parse().unwrap()), "{a}");
        }
    }

    /// Regression: the guard parsed hosts strictly while the URL library
    /// (WHATWG) read numeric spellings as addresses, so these reached
    /// 169.254.169.254 and 0.0.0.0.
    #[test]
    fn numeric_and_odd_spellings_of_a_refused_address_are_refused() {
        for h in [
            "2852039166:80",
            "0xa9fea9fe:80",
            "0251.0376.0251.0376",
            "169.254.43518",
            "0:5010",
            "0.0.0.0:5010",
            "0x0",
            "[::]:5000",
            "[::ffff:169.254.169.254]",
            "169.254.169.254",
            "[fe80::1]:5000",
        ] {
            assert!(
                matches!(check_registry_host(h), Err(RefusedHost::Address { .. })),
                "{h}: {:?}",
                host_ip(h)
            );
        }
        for h in [
            "127.0.0.1:5000",
            "registry.local:5000",
            "2130706433:5000",
            "[::1]",
        ] {
            assert_eq!(check_registry_host(h), Ok(()), "{h}");
        }
        assert_eq!(
            host_ip("2130706433:5000").unwrap(),
            Some("127.0.0.1".parse().unwrap())
        );
    }
}
