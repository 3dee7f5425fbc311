//! The token issuer for the token-auth registry: checks basic credentials
//! and signs JWTs (ES256, with the signing certificate in `x5c`) that the
//! real registry verifies against its `rootcertbundle`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use base64::Engine;

use super::http::{respond, Request};
use super::registry::{PASS, USER};

pub const SERVICE: &str = "hoist-test-registry";
pub const ISSUER: &str = "hoist-test-issuer";

pub struct TokenIssuer {
    pub port: u16,
    pub cert_path: PathBuf,
    key_pem: String,
    cert_der_b64: String,
    pub issued: Arc<AtomicUsize>,
}

impl TokenIssuer {
    pub fn start(root: &Path) -> TokenIssuer {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "hoist token signer");
        let cert = params.self_signed(&key).unwrap();
        let cert_path = root.join("token.crt");
        std::fs::write(&cert_path, cert.pem()).unwrap();
        let key_pem = key.serialize_pem();
        let cert_der_b64 = base64::engine::general_purpose::STANDARD.encode(cert.der());
        let issued = Arc::new(AtomicUsize::new(0));
        let signer = TokenIssuer {
            port: 0,
            cert_path: cert_path.clone(),
            key_pem: key_pem.clone(),
            cert_der_b64: cert_der_b64.clone(),
            issued: issued.clone(),
        };
        let signer = Arc::new(signer);
        let s2 = signer.clone();
        let port = super::http::serve(Arc::new(move |req: &Request, stream| {
            s2.handle(req, stream)
        }));
        TokenIssuer {
            port,
            cert_path,
            key_pem,
            cert_der_b64,
            issued,
        }
    }

    fn handle(&self, req: &Request, stream: &mut std::net::TcpStream) {
        let want = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASS}"))
        );
        if req.header("authorization") != Some(want.as_str()) {
            respond(stream, 401, &[], br#"{"details":"bad credentials"}"#);
            return;
        }
        let scope = req
            .query
            .split('&')
            .find_map(|kv| kv.strip_prefix("scope="))
            .map(|s| {
                s.replace("%3A", ":")
                    .replace("%2F", "/")
                    .replace("%2C", ",")
            })
            .unwrap_or_default();
        let mut parts = scope.splitn(3, ':');
        let (_, repo, actions) = (
            parts.next(),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        let actions: Vec<&str> = actions.split(',').filter(|a| *a == "pull").collect();
        self.issued.fetch_add(1, Ordering::SeqCst);
        let token = self.mint(repo, &actions);
        let body = serde_json::json!({"token": token, "expires_in": 300});
        respond(
            stream,
            200,
            &[("Content-Type", "application/json".into())],
            body.to_string().as_bytes(),
        );
    }

    pub fn mint(&self, repo: &str, actions: &[&str]) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims = serde_json::json!({
            "iss": ISSUER, "sub": USER, "aud": SERVICE,
            "exp": now + 300, "nbf": now - 10, "iat": now,
            "jti": format!("{now}-{}", self.issued.load(Ordering::SeqCst)),
            "access": [{"type": "repository", "name": repo, "actions": actions}],
        });
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.x5c = Some(vec![self.cert_der_b64.clone()]);
        let key = jsonwebtoken::EncodingKey::from_ec_pem(self.key_pem.as_bytes()).unwrap();
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    }
}
