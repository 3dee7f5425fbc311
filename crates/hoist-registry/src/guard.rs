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

/// The host part of `HOST[:PORT]` as an IP, if it is a literal.
pub fn literal_ip(host: &str) -> Option<IpAddr> {
    let h = host
        .rsplit_once(':')
        .filter(|(h, p)| p.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':'))
        .map_or(host, |(h, _)| h);
    h.trim_start_matches('[').trim_end_matches(']').parse().ok()
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
        let bad = attempt
            .url()
            .host()
            .and_then(|h| match h {
                url::Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
                url::Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
                url::Host::Domain(_) => None,
            })
            .filter(|ip| is_refused_ip(*ip));
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
        assert_eq!(
            literal_ip("169.254.169.254:80"),
            Some("169.254.169.254".parse().unwrap())
        );
        assert_eq!(
            literal_ip("[fe80::1]:5000"),
            Some("fe80::1".parse().unwrap())
        );
        assert_eq!(literal_ip("fe80::1"), Some("fe80::1".parse().unwrap()));
        assert_eq!(literal_ip("registry.local:5000"), None);
    }
}
