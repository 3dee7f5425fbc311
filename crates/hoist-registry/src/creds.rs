//! Where credentials come from, in order: explicit (`--creds`), the docker
//! `config.json` (`credHelpers`, `auths`, `credsStore`), then the containers
//! `auth.json`.
//!
//! Written here rather than with the `docker_credential` crate because that
//! crate runs helpers without a time limit, does not read containers'
//! `auth.json`, and does not alias Docker Hub's historical keys.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;

use crate::error::RegistryError;

/// A username and secret. Neither `Debug` nor `Display` shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({}, <redacted>)", self.username)
    }
}

impl Credentials {
    /// `USER[:PASS]` as in `--creds`.
    pub fn parse(s: &str) -> Credentials {
        let (u, p) = s.split_once(':').unwrap_or((s, ""));
        Credentials {
            username: u.to_string(),
            password: p.to_string(),
        }
    }
    pub(crate) fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ConfigFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default)]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default)]
    creds_store: Option<String>,
}

#[derive(serde::Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

const DOCKER_HUB_KEYS: [&str; 4] = [
    "https://index.docker.io/v1/",
    "index.docker.io",
    "docker.io",
    "registry-1.docker.io",
];

/// `https://host:5000/v1/` → `host:5000`.
fn key_host(key: &str) -> &str {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    k.split('/').next().unwrap_or(k)
}

fn is_hub(registry: &str) -> bool {
    DOCKER_HUB_KEYS.iter().any(|k| key_host(k) == registry)
}

fn key_matches(key: &str, registry: &str) -> bool {
    let h = key_host(key);
    h == registry || (is_hub(registry) && is_hub(h))
}

/// Where to look, overridable for tests and unusual setups.
#[derive(Debug, Clone)]
pub struct CredentialSources {
    pub docker_config: Option<PathBuf>,
    pub auth_files: Vec<PathBuf>,
    pub helper_timeout: Duration,
}

impl CredentialSources {
    /// The standard locations, from the environment.
    pub fn from_env() -> CredentialSources {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let docker_config = std::env::var_os("DOCKER_CONFIG")
            .map(|d| PathBuf::from(d).join("config.json"))
            .or_else(|| home.as_ref().map(|h| h.join(".docker/config.json")));
        let mut auth_files = Vec::new();
        if let Some(f) = std::env::var_os("REGISTRY_AUTH_FILE") {
            auth_files.push(PathBuf::from(f));
        }
        if let Some(r) = std::env::var_os("XDG_RUNTIME_DIR") {
            auth_files.push(PathBuf::from(r).join("containers/auth.json"));
        }
        if let Some(h) = &home {
            auth_files.push(h.join(".config/containers/auth.json"));
        }
        CredentialSources {
            docker_config,
            auth_files,
            helper_timeout: Duration::from_secs(10),
        }
    }

    /// Credentials for `registry` (as users name it: `docker.io`,
    /// `host:port`), or `None` for anonymous access.
    pub fn lookup(&self, registry: &str) -> Result<Option<Credentials>, RegistryError> {
        if let Some(path) = &self.docker_config {
            if let Some(cfg) = read_config(path) {
                if let Some((_, helper)) = cfg
                    .cred_helpers
                    .iter()
                    .find(|(k, _)| key_matches(k, registry))
                {
                    return self.run_helper(helper, registry);
                }
                if let Some(c) = from_auths(&cfg.auths, registry) {
                    return Ok(Some(c));
                }
                if let Some(store) = &cfg.creds_store {
                    if let Some(c) = self.run_helper(store, registry)? {
                        return Ok(Some(c));
                    }
                }
            }
        }
        for path in &self.auth_files {
            if let Some(cfg) = read_config(path) {
                if let Some(c) = from_auths(&cfg.auths, registry) {
                    return Ok(Some(c));
                }
            }
        }
        Ok(None)
    }

    /// `docker-credential-NAME get`, with the server on stdin and a time limit.
    fn run_helper(&self, name: &str, registry: &str) -> Result<Option<Credentials>, RegistryError> {
        let err = |message: String| RegistryError::Credentials {
            registry: registry.to_string(),
            message,
        };
        let server = if is_hub(registry) {
            DOCKER_HUB_KEYS[0]
        } else {
            registry
        };
        let prog = format!("docker-credential-{name}");
        let mut child = Command::new(&prog)
            .arg("get")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| err(format!("cannot run {prog}: {e}")))?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(server.as_bytes());
        }
        let mut stdout = child.stdout.take().expect("piped");
        let reader = std::thread::spawn(move || {
            let mut out = Vec::new();
            let _ = stdout.by_ref().take(1 << 20).read_to_end(&mut out);
            out
        });
        let deadline = Instant::now() + self.helper_timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(err(format!(
                        "{prog} did not answer within {}s",
                        self.helper_timeout.as_secs()
                    )));
                }
                Err(e) => return Err(err(format!("{prog}: {e}"))),
            }
        };
        let out = reader.join().unwrap_or_default();
        if !status.success() {
            // The helper protocol's way of saying "nothing stored here".
            if String::from_utf8_lossy(&out).contains("credentials not found") {
                return Ok(None);
            }
            return Err(err(format!("{prog} failed ({status})")));
        }
        #[derive(serde::Deserialize)]
        struct Reply {
            #[serde(rename = "Username", default)]
            username: String,
            #[serde(rename = "Secret", default)]
            secret: String,
        }
        let r: Reply = serde_json::from_slice(&out).map_err(|e| {
            err(format!(
                "{prog} printed something that is not its JSON reply: {e}"
            ))
        })?;
        if r.username == "<token>" {
            return Err(err(format!(
                "{prog} returned an identity token, which hoist does not support yet"
            )));
        }
        Ok(Some(Credentials {
            username: r.username,
            password: r.secret,
        }))
    }
}

fn read_config(path: &PathBuf) -> Option<ConfigFile> {
    let bytes = std::fs::read(path).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(
                "ignoring unreadable credentials file {}: {e}",
                path.display()
            );
            None
        }
    }
}

fn from_auths(auths: &BTreeMap<String, AuthEntry>, registry: &str) -> Option<Credentials> {
    // An exact key beats an alias (e.g. docker.io vs the v1 URL).
    let entry = auths.get(registry).or_else(|| {
        auths
            .iter()
            .find(|(k, _)| key_matches(k, registry))
            .map(|(_, v)| v)
    })?;
    if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .ok()?;
        let s = String::from_utf8(raw).ok()?;
        return Some(Credentials::parse(&s));
    }
    match (&entry.username, &entry.password) {
        (Some(u), Some(p)) if !u.is_empty() => Some(Credentials {
            username: u.clone(),
            password: p.clone(),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(dir: &std::path::Path, cfg: &str) -> CredentialSources {
        std::fs::write(dir.join("config.json"), cfg).unwrap();
        CredentialSources {
            docker_config: Some(dir.join("config.json")),
            auth_files: vec![dir.join("auth.json")],
            helper_timeout: Duration::from_secs(2),
        }
    }

    #[test]
    fn hub_v1_key_and_auth_json_fallback() {
        let dir = std::env::temp_dir().join(format!("hoist-creds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode("hubuser:hubpass");
        let s = sources(
            &dir,
            &format!(r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{b64}"}}}}}}"#),
        );
        let c = s.lookup("docker.io").unwrap().unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("hubuser", "hubpass")
        );
        assert!(s.lookup("quay.io").unwrap().is_none());
        let b64 = base64::engine::general_purpose::STANDARD.encode("q:secret");
        std::fs::write(
            dir.join("auth.json"),
            format!(r#"{{"auths":{{"quay.io":{{"auth":"{b64}"}}}}}}"#),
        )
        .unwrap();
        assert_eq!(s.lookup("quay.io").unwrap().unwrap().username, "q");
        assert!(!format!("{:?}", s.lookup("quay.io").unwrap()).contains("secret"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
