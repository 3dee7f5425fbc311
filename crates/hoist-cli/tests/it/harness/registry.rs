//! Real `docker-registry` (distribution) processes on loopback, started once
//! per test run: plain HTTP, TLS with basic auth, and token auth whose realm
//! is the in-process issuer in `token.rs`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::image::{Blob, Image};
use super::token::TokenIssuer;

pub const BIN: &str = "/usr/bin/docker-registry";
pub const USER: &str = "hoist";
pub const PASS: &str = "s3cret-Pa55";

pub struct Registry {
    pub host: String,
    pub dir: PathBuf,
    pub scheme: &'static str,
    /// Extra headers needed to push (basic or bearer auth).
    pub auth: Auth,
}

#[derive(Clone)]
pub enum Auth {
    None,
    Basic,
    Token(&'static TokenIssuer),
}

pub struct Registries {
    pub plain: Registry,
    pub tls: Registry,
    pub token: Registry,
    pub ca_pem: PathBuf,
    pub issuer: &'static TokenIssuer,
}

static REGISTRIES: OnceLock<Registries> = OnceLock::new();

pub fn registries() -> &'static Registries {
    REGISTRIES.get_or_init(start_all)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_all() -> Registries {
    assert!(
        Path::new(BIN).exists(),
        "{BIN} is missing: install Debian's docker-registry (bash .ci/run does)"
    );
    let root = std::env::temp_dir().join(format!("hoist-it-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();

    // TLS: a CA and a server certificate for 127.0.0.1, made now.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "hoist test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let srv_key = rcgen::KeyPair::generate().unwrap();
    let mut srv_params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    srv_params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let srv = srv_params.signed_by(&srv_key, &ca, &ca_key).unwrap();
    let ca_pem = root.join("ca.crt");
    std::fs::write(&ca_pem, ca.pem()).unwrap();
    std::fs::write(root.join("server.crt"), srv.pem()).unwrap();
    std::fs::write(root.join("server.key"), srv_key.serialize_pem()).unwrap();
    let hash = bcrypt::hash(PASS, 5).unwrap();
    std::fs::write(root.join("htpasswd"), format!("{USER}:{hash}\n")).unwrap();

    let issuer: &'static TokenIssuer = Box::leak(Box::new(TokenIssuer::start(&root)));

    let plain = start(&root, "plain", "", Auth::None);
    let tls_extra = format!(
        "  tls:\n    certificate: {r}/server.crt\n    key: {r}/server.key\nauth:\n  htpasswd:\n    realm: hoist-test\n    path: {r}/htpasswd\n",
        r = root.display()
    );
    let tls = start(&root, "tls", &tls_extra, Auth::Basic);
    let token_extra = format!(
        "auth:\n  token:\n    realm: http://127.0.0.1:{}/token\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
        issuer.port,
        super::token::SERVICE,
        super::token::ISSUER,
        issuer.cert_path.display()
    );
    let token = start(&root, "token", &token_extra, Auth::Token(issuer));
    Registries {
        plain,
        tls,
        token,
        ca_pem,
        issuer,
    }
}

fn start(root: &Path, name: &str, extra: &str, auth: Auth) -> Registry {
    let dir = root.join(name);
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let port = free_port();
    let config = format!(
        "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: hoist-test-secret\n{extra}",
        dir.join("data").display()
    );
    std::fs::write(dir.join("config.yml"), config).unwrap();
    let log = std::fs::File::create(dir.join("registry.log")).unwrap();
    // The shell outlives nothing: it stops the registry once this test
    // process is gone (or `Registry::stop` asks), and removes the test
    // data. It is left to run (and be reaped by init) on purpose.
    #[allow(clippy::zombie_processes)]
    Command::new("sh")
        .arg("-c")
        .arg(
            r#"exec 0</dev/null; "$1" serve "$2" & r=$!
               while kill -0 "$3" 2>/dev/null && [ ! -e "$5" ]; do sleep 0.2; done
               kill "$r"; wait "$r"; [ -e "$5" ] || rm -rf "$4""#,
        )
        .arg("sh")
        .arg(BIN)
        .arg(dir.join("config.yml"))
        .arg(std::process::id().to_string())
        .arg(root)
        .arg(dir.join("stop"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let scheme = if extra.contains("tls:") {
        "https"
    } else {
        "http"
    };
    let reg = Registry {
        host: format!("127.0.0.1:{port}"),
        dir,
        scheme,
        auth,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(&reg.host).is_err() {
        assert!(
            Instant::now() < deadline,
            "registry {name} did not start; see {}",
            reg.dir.join("registry.log").display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    reg
}

/// One more plain registry of a test's own: `extra` is appended to its
/// configuration (`proxy:\n  remoteurl: …` makes a pull-through cache).
pub fn start_extra(name: &str, extra: &str) -> Registry {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let root = std::env::temp_dir().join(format!("hoist-it-{}-{name}-{n}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    start(&root, name, extra, Auth::None)
}

impl Registry {
    /// Stop the registry and wait until its port is closed.
    pub fn stop(&self) {
        std::fs::write(self.dir.join("stop"), b"").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&self.host).is_ok() {
            assert!(
                Instant::now() < deadline,
                "registry {} did not stop",
                self.host
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every request for `/v2/<repo>/<kind>/` in the access log, whoever
    /// made it (a pull-through cache, say): (request line, status, bytes).
    pub fn all_requests(&self, repo: &str, kind: &str) -> Vec<(String, u16, u64)> {
        let log = std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default();
        let needle = format!("/v2/{repo}/{kind}/");
        log.lines()
            .filter(|l| l.contains(&needle) && l.contains("] \"GET "))
            .filter_map(|l| {
                // Combined log format: … "GET /v2/… HTTP/1.1" 200 1234 "" "agent"
                let mut parts = l.split('"');
                let line = parts.nth(1)?.to_string();
                let mut f = parts.next()?.split_whitespace();
                let status = f.next()?.parse().ok()?;
                let bytes = f.next().and_then(|b| b.parse().ok()).unwrap_or(0);
                Some((line, status, bytes))
            })
            .collect()
    }

    fn http(&self) -> reqwest::blocking::Client {
        let ca = std::fs::read(registries_ca()).unwrap();
        reqwest::blocking::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .no_proxy()
            .build()
            .unwrap()
    }

    fn authorize(
        &self,
        rb: reqwest::blocking::RequestBuilder,
        repo: &str,
    ) -> reqwest::blocking::RequestBuilder {
        match &self.auth {
            Auth::None => rb,
            Auth::Basic => rb.basic_auth(USER, Some(PASS)),
            Auth::Token(i) => rb.bearer_auth(i.mint(repo, &["pull", "push"])),
        }
    }

    pub fn push_blob(&self, repo: &str, blob: &Blob) {
        let c = self.http();
        let base = format!("{}://{}/v2/{repo}", self.scheme, self.host);
        let head = self
            .authorize(c.head(format!("{base}/blobs/{}", blob.digest())), repo)
            .send()
            .unwrap();
        if head.status().is_success() {
            return;
        }
        let r = self
            .authorize(c.post(format!("{base}/blobs/uploads/")), repo)
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 202, "start upload: {:?}", r.text());
        let loc = r.headers()["location"].to_str().unwrap().to_string();
        let loc = if loc.starts_with("http") {
            loc
        } else {
            format!("{}://{}{loc}", self.scheme, self.host)
        };
        let sep = if loc.contains('?') { '&' } else { '?' };
        let r = self
            .authorize(
                c.put(format!("{loc}{sep}digest={}", blob.digest()))
                    .header("Content-Type", "application/octet-stream")
                    .body(blob.bytes.clone()),
                repo,
            )
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 201, "finish upload: {:?}", r.text());
    }

    pub fn push_manifest(&self, repo: &str, reference: &str, m: &Blob) {
        let c = self.http();
        let url = format!(
            "{}://{}/v2/{repo}/manifests/{reference}",
            self.scheme, self.host
        );
        let r = self
            .authorize(
                c.put(url)
                    .header("Content-Type", m.media_type.clone())
                    .body(m.bytes.clone()),
                repo,
            )
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 201, "push manifest: {:?}", r.text());
    }

    /// Push an image's blobs and manifest, tagging it.
    pub fn push_image(&self, repo: &str, tag: &str, img: &Image) {
        self.push_blob(repo, &img.config);
        for l in &img.layers {
            self.push_blob(repo, l);
        }
        self.push_manifest(repo, tag, &img.manifest);
    }

    /// Requests hoist (by its user agent) made for `/v2/<repo>/<kind>/`,
    /// kind being `manifests` or `blobs`, from the registry's access log.
    pub fn requests(&self, repo: &str, kind: &str) -> Vec<String> {
        let log = std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default();
        let needle = format!("/v2/{repo}/{kind}/");
        log.lines()
            .filter(|l| l.contains(&needle) && l.contains("\"hoist/"))
            .map(str::to_string)
            .collect()
    }

    /// Wait until the access log has settled (it is written asynchronously).
    pub fn settle(&self) {
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn registries_ca() -> PathBuf {
    registries().ca_pem.clone()
}
