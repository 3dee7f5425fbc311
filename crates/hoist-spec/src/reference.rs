//! Image references with Docker's normalisation rules, as docker, crane and
//! skopeo users type them: `alpine`, `user/app:1`, `host:5000/a/b@sha256:…`.

use std::fmt;
use std::str::FromStr;

use crate::digest::Digest;
use crate::error::SpecError;

pub const DOCKER_HUB: &str = "docker.io";
/// Where Docker Hub's registry API is actually served.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";
const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

/// A parsed, normalised image reference. When both a tag and a digest are
/// given, the digest is what gets fetched; the tag is kept for display.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// The registry as users name it (`docker.io`, `127.0.0.1:5000`).
    pub fn registry(&self) -> &str {
        &self.registry
    }
    /// The host (and port) to talk to: Docker Hub is served elsewhere.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }
    pub fn repository(&self) -> &str {
        &self.repository
    }
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }
    /// What to ask the registry for: the digest if any, else the tag.
    pub fn target(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        }
    }
    /// `registry/repository`, the name without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
    /// The same reference pinned to a digest (the tag is dropped).
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: None,
            digest: Some(digest),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reference({self})")
    }
}

impl FromStr for Reference {
    type Err = SpecError;
    fn from_str(input: &str) -> Result<Self, SpecError> {
        let bad = |reason: &str| SpecError::InvalidReference {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        if input.is_empty() {
            return Err(bad("empty reference"));
        }
        if let Some(c) = input.chars().find(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad(&format!("contains the character {c:?}")));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((rest, d)) => (
                rest,
                Some(
                    d.parse::<Digest>()
                        .map_err(|e| bad(&format!("bad digest: {e}")))?,
                ),
            ),
            None => (input, None),
        };
        // A tag follows the last ':' only if no '/' comes after it; otherwise
        // that ':' separates a registry host from its port.
        let (name, tag) = match rest.rfind(':') {
            Some(i) if !rest[i + 1..].contains('/') => (&rest[..i], Some(&rest[i + 1..])),
            _ => (rest, None),
        };
        if let Some(t) = tag {
            validate_tag(t).map_err(|r| bad(&r))?;
        }
        if name.is_empty() {
            return Err(bad("empty repository name"));
        }
        let (registry, repository) = split_registry(name);
        validate_registry(registry).map_err(|r| bad(&r))?;
        let mut repository = repository.to_string();
        if repository.is_empty() {
            return Err(bad("empty repository name"));
        }
        if repository.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(bad(&format!(
                "repository name {repository:?} must be lowercase"
            )));
        }
        for component in repository.split('/') {
            validate_component(component).map_err(|r| bad(&r))?;
        }
        let registry = if registry == "index.docker.io" {
            DOCKER_HUB.to_string()
        } else {
            registry.to_string()
        };
        if registry == DOCKER_HUB && !repository.contains('/') {
            repository = format!("library/{repository}");
        }
        if registry.len() + 1 + repository.len() > MAX_NAME_LEN {
            return Err(bad(&format!(
                "name is longer than {MAX_NAME_LEN} characters"
            )));
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, Some(_)) => None,
            (None, None) => Some("latest".to_string()),
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }
}

/// The first path component is a registry if it looks like a host: it has a
/// '.' or a ':' or is `localhost` (Docker's rule).
fn split_registry(name: &str) -> (&str, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first, rest)
        }
        _ => (DOCKER_HUB, name),
    }
}

fn validate_registry(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("empty registry host".into());
    }
    if host.bytes().any(|b| b.is_ascii_uppercase()) && host.starts_with('[') {
        return Err(format!("registry {host:?} is not a valid host"));
    }
    let (h, port) = if let Some(stripped) = host.strip_prefix('[') {
        let (v6, after) = stripped
            .split_once(']')
            .ok_or_else(|| format!("registry {host:?}: unclosed '['"))?;
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("registry {host:?}: bad IPv6 address"));
        }
        match after {
            "" => return Ok(()),
            p => (
                "",
                Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| format!("registry {host:?}: junk after ']'"))?,
                ),
            ),
        }
    } else {
        match host.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host, None),
        }
    };
    if let Some(p) = port {
        if p.is_empty() || p.parse::<u16>().is_err() {
            return Err(format!("registry {host:?}: port must be a number"));
        }
    }
    if !h.is_empty() || port.is_none() {
        let ok_label = |l: &str| {
            !l.is_empty()
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if !h.split('.').all(ok_label) {
            return Err(format!("registry {host:?} is not a valid host"));
        }
    }
    Ok(())
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn validate_component(c: &str) -> Result<(), String> {
    let err = || format!("invalid repository path component {c:?}");
    if c.is_empty() {
        return Err("empty repository path component".into());
    }
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return Err(err());
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return Err(err());
        }
    }
    Ok(())
}

/// `[\w][\w.-]{0,127}`
fn validate_tag(t: &str) -> Result<(), String> {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    if t.is_empty() {
        return Err("empty tag".into());
    }
    if t.len() > MAX_TAG_LEN {
        return Err(format!("tag is longer than {MAX_TAG_LEN} characters"));
    }
    let b = t.as_bytes();
    if !word(b[0]) || !b.iter().all(|&x| word(x) || x == b'.' || x == b'-') {
        return Err(format!(
            "invalid tag {t:?} (letters, digits, '_', '.', '-'; not starting with '.' or '-')"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Reference {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn docker_normalisation() {
        assert_eq!(p("alpine").to_string(), "docker.io/library/alpine:latest");
        assert_eq!(p("alpine").api_host(), "registry-1.docker.io");
        assert_eq!(p("user/app").to_string(), "docker.io/user/app:latest");
        assert_eq!(
            p("index.docker.io/library/busybox:1").to_string(),
            "docker.io/library/busybox:1"
        );
        let r = p("host:5000/a/b:tag");
        assert_eq!(
            (r.registry(), r.repository(), r.tag()),
            ("host:5000", "a/b", Some("tag"))
        );
        let r = p("localhost/app");
        assert_eq!((r.registry(), r.repository()), ("localhost", "app"));
        let r = p("localhost:5000/app");
        assert_eq!(r.api_host(), "localhost:5000");
        let r = p("quay.io/x/y");
        assert_eq!(r.registry(), "quay.io");
        let r = p("[::1]:5000/x");
        assert_eq!(r.registry(), "[::1]:5000");
    }

    #[test]
    fn digest_wins_over_tag() {
        let r = p(&format!("name@{D}"));
        assert_eq!(r.tag(), None);
        assert_eq!(r.target(), D);
        assert_eq!(r.to_string(), format!("docker.io/library/name@{D}"));
        let r = p(&format!("name:tag@{D}"));
        assert_eq!(r.tag(), Some("tag"));
        assert_eq!(r.target(), D);
    }

    #[test]
    fn invalid_references_are_rejected() {
        for bad in [
            "",
            "Alpine",
            "user/App",
            "invalid::",
            "a b",
            "alpine ",
            "alpine@sha256:xyz",
            "alpine@",
            "alpine:",
            ":tag",
            "a//b",
            "a/-b",
            "host:port/x",
            "a:.tag",
            "/alpine",
            "alpine/",
            "a..b",
        ] {
            let e = bad.parse::<Reference>();
            assert!(e.is_err(), "{bad:?} was accepted as {:?}", e.unwrap());
        }
        let e = "Alpine".parse::<Reference>().unwrap_err().to_string();
        assert!(e.contains("lowercase"), "{e}");
    }
}
