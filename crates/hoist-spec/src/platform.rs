//! Platforms in OCI names (`linux/amd64`, `linux/arm64/v8`) and the rule for
//! picking one out of an index.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::SpecError;

#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// Go's GOARCH names are what OCI uses; accept the common kernel names too.
fn normalize_arch(arch: &str) -> (String, Option<String>) {
    match arch {
        "x86_64" | "x86-64" => ("amd64".into(), None),
        "aarch64" => ("arm64".into(), None),
        "armhf" => ("arm".into(), Some("v7".into())),
        "armel" => ("arm".into(), Some("v6".into())),
        "i386" | "i686" => ("386".into(), None),
        other => (other.to_string(), None),
    }
}

impl Platform {
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
        let (architecture, implied) = normalize_arch(architecture);
        Platform {
            os: os.to_string(),
            architecture,
            variant: variant.map(str::to_string).or(implied),
        }
    }

    /// `linux/<host arch>`: the platform a VM on this host runs.
    pub fn host() -> Platform {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            "loongarch64" => "loong64",
            other => other,
        };
        Platform::new("linux", arch, None)
    }

    /// The platform assumed for an index entry that names none.
    pub fn default_for_unlabelled() -> Platform {
        Platform::new("linux", "amd64", None)
    }

    fn variant_norm(&self) -> Option<&str> {
        match (self.architecture.as_str(), self.variant.as_deref()) {
            // arm64 images are v8 unless they say otherwise (containerd's rule).
            ("arm64", None) => Some("v8"),
            (_, v) => v,
        }
    }

    /// Whether `candidate` satisfies this requested platform. Without a
    /// requested variant any variant matches: go-containerregistry's rule,
    /// which keeps chosen digests identical to the Go original.
    pub fn matches(&self, candidate: &Platform) -> bool {
        if self.os != candidate.os || self.architecture != candidate.architecture {
            return false;
        }
        match self.variant {
            None => true,
            Some(_) => self.variant_norm() == candidate.variant_norm(),
        }
    }

    pub fn from_oci(p: &oci_spec::image::Platform) -> Platform {
        let v = p.variant().as_deref().filter(|v| !v.is_empty());
        Platform::new(&p.os().to_string(), &p.architecture().to_string(), v)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Platform({self})")
    }
}

impl FromStr for Platform {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        let bad = |r: &str| SpecError::InvalidPlatform {
            input: s.to_string(),
            reason: r.to_string(),
        };
        let parts: Vec<&str> = s.split('/').collect();
        if !(2..=3).contains(&parts.len()) {
            return Err(bad("wrong number of '/'-separated parts"));
        }
        for part in &parts {
            if part.is_empty()
                || !part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
            {
                return Err(bad(&format!("bad component {part:?}")));
            }
        }
        let os = parts[0].to_ascii_lowercase();
        let arch = parts[1].to_ascii_lowercase();
        Ok(Platform::new(&os, &arch, parts.get(2).copied()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        s.parse().unwrap()
    }

    #[test]
    fn parse_and_match() {
        assert_eq!(p("linux/amd64").to_string(), "linux/amd64");
        assert_eq!(p("linux/x86_64").to_string(), "linux/amd64");
        assert_eq!(p("linux/arm64/v8").to_string(), "linux/arm64/v8");
        assert!(p("linux/arm64").matches(&p("linux/arm64/v8")));
        assert!(p("linux/arm64/v8").matches(&p("linux/arm64")));
        assert!(!p("linux/arm/v7").matches(&p("linux/arm/v6")));
        assert!(p("linux/arm").matches(&p("linux/arm/v6")));
        assert!(!p("linux/amd64").matches(&p("windows/amd64")));
        for bad in ["linux", "linux/", "/amd64", "a/b/c/d", "linux/am d64"] {
            assert!(bad.parse::<Platform>().is_err(), "{bad}");
        }
    }
}
