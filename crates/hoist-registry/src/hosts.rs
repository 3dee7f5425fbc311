//! containerd's registry host configuration (`docs/hosts.md`): for a
//! registry `HOST[:PORT]`, `DIR/HOST[:PORT]/hosts.toml` (or containerd's
//! `HOST_PORT_` spelling), else `DIR/_default/hosts.toml`, lists mirrors
//! (`[host."URL"]`, tried in the file's order) and the upstream (`server`,
//! tried last). A registry with no file is its own single endpoint.

use std::path::{Path, PathBuf};

use toml::Value;

use crate::endpoint::{Capabilities, Endpoint, Resolver, Scheme, Tls};
use crate::error::RegistryError;

/// More than this is not a hosts.toml.
const MAX_FILE: u64 = 1 << 20;

#[derive(Debug, Clone)]
pub struct HostsDir {
    pub dir: PathBuf,
}

impl HostsDir {
    pub fn new(dir: impl Into<PathBuf>) -> HostsDir {
        HostsDir { dir: dir.into() }
    }

    /// The directory that configures `registry`, if any: the first of
    /// `HOST[:PORT]`, `HOST_PORT_` and `_default` that exists, as
    /// containerd picks it (a directory without hosts.toml still counts).
    fn dir_for(&self, registry: &str) -> Option<PathBuf> {
        let mut names = vec![registry.to_string()];
        if let Some((h, p)) = registry.rsplit_once(':') {
            names.push(format!("{h}_{p}_"));
        }
        names.push("_default".into());
        names
            .into_iter()
            .map(|n| self.dir.join(n))
            .find(|p| p.is_dir())
    }
}

/// A host directory without hosts.toml is Docker's `certs.d` layout, which
/// containerd also honours: `*.crt` are trusted roots, `NAME.cert` with
/// `NAME.key` a client certificate, all for the registry itself.
fn docker_certs(dir: &Path) -> Result<Tls, RegistryError> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| bad(dir, e.to_string()))?
        .flatten()
        .map(|e| e.path())
        .collect();
    names.sort();
    let mut tls = Tls::default();
    for p in &names {
        match p.extension().and_then(|e| e.to_str()) {
            Some("crt") => tls.ca.push(p.clone()),
            Some("cert") => {
                let key = p.with_extension("key");
                if !key.is_file() {
                    return Err(bad(p, format!("no {} beside it", key.display())));
                }
                tls.client.push((p.clone(), Some(key)));
            }
            _ => {}
        }
    }
    Ok(tls)
}

fn bad(path: &Path, message: impl Into<String>) -> RegistryError {
    RegistryError::HostsConfig {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// A string or a list of strings.
fn strings(v: &Value, what: &str, file: &Path) -> Result<Vec<String>, RegistryError> {
    match v {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(a) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| bad(file, format!("{what}: expected strings")))
            })
            .collect(),
        _ => Err(bad(file, format!("{what}: expected a string or a list"))),
    }
}

/// `capabilities`, `ca`, `client`, `skip_verify`, `header`, `override_path`
/// of one host table (or of the file's top level, for `server`).
fn endpoint(
    url: &str,
    t: &toml::Table,
    file: &Path,
    mirror_of: Option<&str>,
) -> Result<Endpoint, RegistryError> {
    let base = file.parent().unwrap_or(Path::new("."));
    let rel = |p: &str| {
        let p = PathBuf::from(p);
        if p.is_absolute() {
            p
        } else {
            base.join(p)
        }
    };
    let with_scheme = if url.contains("://") {
        url.to_string()
    } else {
        format!("https://{url}")
    };
    let u = url::Url::parse(&with_scheme).map_err(|e| bad(file, format!("{url:?}: {e}")))?;
    let scheme = match u.scheme() {
        "https" => Scheme::Https,
        "http" => Scheme::Http,
        s => {
            return Err(bad(
                file,
                format!("{url:?}: scheme {s} is not http or https"),
            ))
        }
    };
    let host = match (u.host_str(), u.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        (None, _) => return Err(bad(file, format!("{url:?} names no host"))),
    };
    let override_path = t
        .get("override_path")
        .map(|v| {
            v.as_bool()
                .ok_or_else(|| bad(file, "override_path: expected true or false"))
        })
        .transpose()?
        .unwrap_or(false);
    let path = u.path().trim_end_matches('/');
    let api_root = if override_path || path.ends_with("/v2") {
        path.to_string()
    } else {
        format!("{path}/v2")
    };
    let capabilities = match t.get("capabilities") {
        None => Capabilities::ALL,
        Some(v) => {
            let mut c = Capabilities {
                pull: false,
                resolve: false,
            };
            for s in strings(v, "capabilities", file)? {
                match s.as_str() {
                    "pull" => c.pull = true,
                    "resolve" => c.resolve = true,
                    "push" => {}
                    other => return Err(bad(file, format!("unknown capability {other:?}"))),
                }
            }
            c
        }
    };
    let mut tls = Tls::default();
    if let Some(v) = t.get("ca") {
        tls.ca = strings(v, "ca", file)?.iter().map(|s| rel(s)).collect();
    }
    if let Some(v) = t.get("client") {
        // "cert.pem", ["cert", "key"], or [["cert", "key"], ...].
        let pairs: Vec<Vec<String>> = match v {
            Value::String(s) => vec![vec![s.clone()]],
            Value::Array(a) if a.iter().all(Value::is_str) => vec![strings(v, "client", file)?],
            Value::Array(a) => a
                .iter()
                .map(|x| strings(x, "client", file))
                .collect::<Result<_, _>>()?,
            _ => return Err(bad(file, "client: expected a path or [cert, key] pairs")),
        };
        for p in pairs {
            match &p[..] {
                [c] => tls.client.push((rel(c), None)),
                [c, k] => tls.client.push((rel(c), Some(rel(k)))),
                _ => return Err(bad(file, "client: a pair is [cert, key]")),
            }
        }
    }
    if let Some(v) = t.get("skip_verify") {
        tls.skip_verify = v
            .as_bool()
            .ok_or_else(|| bad(file, "skip_verify: expected true or false"))?;
    }
    let mut headers = Vec::new();
    if let Some(v) = t.get("header") {
        let Some(h) = v.as_table() else {
            return Err(bad(file, "header: expected a table"));
        };
        for (k, v) in h {
            for s in strings(v, "header", file)? {
                headers.push((k.clone(), s));
            }
        }
    }
    Ok(Endpoint {
        host,
        scheme,
        api_root,
        capabilities,
        tls: (tls != Tls::default()).then_some(tls),
        headers,
        mirror_of: mirror_of.map(str::to_string),
    })
}

impl Resolver for HostsDir {
    fn endpoints(&self, registry: &str, api_host: &str) -> Result<Vec<Endpoint>, RegistryError> {
        let Some(dir) = self.dir_for(registry) else {
            return Ok(vec![Endpoint::upstream(api_host)]);
        };
        let file = dir.join("hosts.toml");
        if !file.is_file() {
            let tls = docker_certs(&dir)?;
            let mut up = Endpoint::upstream(api_host);
            up.tls = (tls != Tls::default()).then_some(tls);
            return Ok(vec![up]);
        }
        let len = std::fs::metadata(&file)
            .map_err(|e| bad(&file, e.to_string()))?
            .len();
        if len > MAX_FILE {
            return Err(bad(&file, format!("{len} bytes, more than {MAX_FILE}")));
        }
        let text = std::fs::read_to_string(&file).map_err(|e| bad(&file, e.to_string()))?;
        let doc: toml::Table = text.parse().map_err(|e| bad(&file, format!("{e}")))?;
        let mut out = Vec::new();
        if let Some(hosts) = doc.get("host") {
            let Some(hosts) = hosts.as_table() else {
                return Err(bad(&file, "host: expected [host.\"URL\"] tables"));
            };
            for (url, t) in hosts {
                let Some(t) = t.as_table() else {
                    return Err(bad(&file, format!("host {url:?}: expected a table")));
                };
                out.push(endpoint(url, t, &file, Some(registry))?);
            }
        }
        let upstream = match doc.get("server") {
            Some(s) => {
                let s = s
                    .as_str()
                    .ok_or_else(|| bad(&file, "server: expected a URL"))?;
                endpoint(s, &doc, &file, None)?
            }
            None => Endpoint::upstream(api_host),
        };
        // A mirror that is the upstream itself is the upstream.
        out.retain(|e| e.host != upstream.host);
        out.push(upstream);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(name: &str, text: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join(name)).unwrap();
        std::fs::write(d.path().join(name).join("hosts.toml"), text).unwrap();
        d
    }

    #[test]
    fn mirrors_in_file_order_then_the_server() {
        let d = dir_with(
            "docker.io",
            r#"
server = "https://registry-1.docker.io"
[host."http://m2:5000"]
  capabilities = ["pull"]
[host."https://m1.example/cache"]
  capabilities = ["pull", "resolve"]
  ca = "ca.pem"
  skip_verify = true
  [host."https://m1.example/cache".header]
    x-token = "abc"
[host."https://raw.example/api"]
  override_path = true
"#,
        );
        let e = HostsDir::new(d.path())
            .endpoints("docker.io", "registry-1.docker.io")
            .unwrap();
        let hosts: Vec<&str> = e.iter().map(|e| e.host.as_str()).collect();
        assert_eq!(
            hosts,
            [
                "m2:5000",
                "m1.example",
                "raw.example",
                "registry-1.docker.io"
            ]
        );
        assert_eq!(e[0].scheme, Scheme::Http);
        assert!(e[0].capabilities.pull && !e[0].capabilities.resolve);
        assert_eq!(e[1].api_root, "/cache/v2");
        assert_eq!(e[2].api_root, "/api");
        assert_eq!(e[3].api_root, "/v2");
        let tls = e[1].tls.as_ref().unwrap();
        assert!(tls.skip_verify);
        assert_eq!(tls.ca, [d.path().join("docker.io").join("ca.pem")]);
        assert_eq!(e[1].headers, [("x-token".to_string(), "abc".to_string())]);
        assert_eq!(e[0].mirror_of.as_deref(), Some("docker.io"));
        assert!(e[3].mirror_of.is_none());
        assert_eq!(
            e[0].url("http", "library/debian", "manifests/sha256:00"),
            "http://m2:5000/v2/library/debian/manifests/sha256:00?ns=docker.io"
        );
    }

    #[test]
    fn port_spelling_default_and_no_file() {
        let d = dir_with("127.0.0.1_5000_", "[host.\"http://127.0.0.1:6000\"]\n");
        let e = HostsDir::new(d.path())
            .endpoints("127.0.0.1:5000", "127.0.0.1:5000")
            .unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[1], Endpoint::upstream("127.0.0.1:5000"));
        // No file, no _default: as without configuration.
        let e = HostsDir::new(d.path())
            .endpoints("quay.io", "quay.io")
            .unwrap();
        assert_eq!(e, [Endpoint::upstream("quay.io")]);
        std::fs::create_dir(d.path().join("_default")).unwrap();
        std::fs::write(
            d.path().join("_default/hosts.toml"),
            "[host.\"https://any-mirror\"]\ncapabilities = [\"pull\"]\n",
        )
        .unwrap();
        let e = HostsDir::new(d.path())
            .endpoints("quay.io", "quay.io")
            .unwrap();
        assert_eq!(e[0].host, "any-mirror");
        assert_eq!(e[0].mirror_of.as_deref(), Some("quay.io"));
    }

    #[test]
    fn a_directory_without_hosts_toml_is_dockers_certs_d() {
        let d = tempfile::tempdir().unwrap();
        let h = d.path().join("reg.example:5000");
        std::fs::create_dir(&h).unwrap();
        for f in ["ca.crt", "b.crt", "client.cert", "client.key", "notes.txt"] {
            std::fs::write(h.join(f), "").unwrap();
        }
        // _default has a mirror, but the host's own directory wins.
        std::fs::create_dir(d.path().join("_default")).unwrap();
        std::fs::write(
            d.path().join("_default/hosts.toml"),
            "[host.\"https://any-mirror\"]\n",
        )
        .unwrap();
        let e = HostsDir::new(d.path())
            .endpoints("reg.example:5000", "reg.example:5000")
            .unwrap();
        assert_eq!(e.len(), 1);
        assert!(!e[0].is_mirror());
        let tls = e[0].tls.clone().unwrap();
        assert_eq!(tls.ca, [h.join("b.crt"), h.join("ca.crt")]);
        assert_eq!(
            tls.client,
            [(h.join("client.cert"), Some(h.join("client.key")))]
        );
        // A certificate without its key is named.
        std::fs::remove_file(h.join("client.key")).unwrap();
        let err = HostsDir::new(d.path())
            .endpoints("reg.example:5000", "reg.example:5000")
            .unwrap_err();
        assert!(err.to_string().contains("client.key"), "{err}");
    }

    #[test]
    fn a_malformed_file_is_a_clear_error() {
        for text in [
            "server = 3",
            "[host.\"ftp://x\"]",
            "[host.\"https://x\"]\ncapabilities = [\"fly\"]",
            "not toml [",
        ] {
            let d = dir_with("r.example", text);
            let e = HostsDir::new(d.path())
                .endpoints("r.example", "r.example")
                .unwrap_err();
            assert!(e.to_string().contains("hosts.toml"), "{text}: {e}");
        }
    }
}
