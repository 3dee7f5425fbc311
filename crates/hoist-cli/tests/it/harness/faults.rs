//! An in-process registry for faults a real server cannot be made to
//! produce: 503 bursts, resets and truncation mid-blob, wrong bytes, more
//! bytes than declared, oversized manifests, 429s, slow bodies. It serves
//! fixed content and logs every request so tests can assert the client's
//! behaviour (retries, Range resumes).

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::http::{respond, respond_error, serve, Request};
use super::image::{Blob, Image};

#[derive(Default, Clone)]
pub struct Plan {
    /// Answer the next N manifest requests with 503.
    pub manifest_503: usize,
    /// Answer the next N blob requests with 503.
    pub blob_503: usize,
    /// For the next N full-blob requests: send the headers and this many
    /// bytes, then reset the connection.
    pub reset_after: Option<(usize, usize)>,
    /// Like `reset_after`, but close cleanly (a truncated body).
    pub truncate_after: Option<(usize, usize)>,
    /// Serve blobs with one byte flipped.
    pub wrong_bytes: bool,
    /// Serve blobs with extra bytes appended (no Content-Length).
    pub too_long: bool,
    /// Ignore Range headers (always 200, full body).
    pub no_range: bool,
    /// Answer the next N requests of any kind with 429.
    pub rate_limit: usize,
    pub retry_after_secs: u64,
    /// Declare manifests this large (Content-Length) and stream junk.
    pub huge_manifest: Option<u64>,
    /// Pause this long between 64 KiB chunks of a blob body.
    pub chunk_delay: Duration,
    /// Hang this long before answering the next N blob requests.
    pub stall: Option<(usize, Duration)>,
    /// Answer requests without an Authorization header with a Basic
    /// challenge (401).
    pub require_basic: bool,
    /// After serving this many blob requests, answer every blob request
    /// with 403 DENIED and this message (sent JSON-escaped, so it may hold
    /// newlines and escapes).
    pub blob_denied: Option<(usize, String)>,
}

pub struct FaultRegistry {
    pub port: u16,
    pub plan: Arc<Mutex<Plan>>,
    pub log: Arc<Mutex<Vec<String>>>,
    content: Arc<Mutex<Content>>,
}

#[derive(Default)]
struct Content {
    manifests: HashMap<String, (String, Vec<u8>)>,
    blobs: HashMap<String, Vec<u8>>,
}

impl FaultRegistry {
    pub fn start() -> FaultRegistry {
        let plan = Arc::new(Mutex::new(Plan::default()));
        let log = Arc::new(Mutex::new(Vec::new()));
        let content = Arc::new(Mutex::new(Content::default()));
        let (p, l, c) = (plan.clone(), log.clone(), content.clone());
        let port = serve(Arc::new(move |req: &Request, s: &mut TcpStream| {
            handle(req, s, &p, &l, &c)
        }));
        FaultRegistry {
            port,
            plan,
            log,
            content,
        }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn add_manifest(&self, reference: &str, m: &Blob) {
        let mut c = self.content.lock().unwrap();
        c.manifests
            .insert(reference.into(), (m.media_type.clone(), m.bytes.clone()));
        c.manifests
            .insert(m.digest(), (m.media_type.clone(), m.bytes.clone()));
    }

    pub fn add_blob(&self, b: &Blob) {
        self.content
            .lock()
            .unwrap()
            .blobs
            .insert(b.digest(), b.bytes.clone());
    }

    pub fn add_image(&self, tag: &str, img: &Image) {
        self.add_blob(&img.config);
        for l in &img.layers {
            self.add_blob(l);
        }
        self.add_manifest(tag, &img.manifest);
    }

    pub fn set(&self, f: impl FnOnce(&mut Plan)) {
        f(&mut self.plan.lock().unwrap());
    }

    pub fn requests(&self, kind: &str) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(&format!("/{kind}/")))
            .cloned()
            .collect()
    }
}

fn take(n: &mut usize) -> bool {
    if *n > 0 {
        *n -= 1;
        true
    } else {
        false
    }
}

/// Close with RST instead of FIN: SO_LINGER with a zero timeout.
fn reset(s: &mut TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket fd and a correctly sized linger struct.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    let _ = s.shutdown(std::net::Shutdown::Read);
}

fn handle(
    req: &Request,
    s: &mut TcpStream,
    plan: &Mutex<Plan>,
    log: &Mutex<Vec<String>>,
    content: &Mutex<Content>,
) {
    log.lock().unwrap().push(format!(
        "{} {} range={} x-fleet={} auth={}",
        req.method,
        req.path,
        req.header("range").unwrap_or("-"),
        req.header("x-fleet").unwrap_or("-"),
        req.header("authorization").map_or("-", |_| "yes")
    ));
    let mut p = plan.lock().unwrap();
    if req.path == "/v2/" {
        return respond(s, 200, &[], b"{}");
    }
    if p.require_basic && req.header("authorization").is_none() {
        let challenge = ("WWW-Authenticate", "Basic realm=\"fault\"".to_string());
        return respond_error(s, 401, "UNAUTHORIZED", &[challenge]);
    }
    if take(&mut p.rate_limit) {
        let ra = p.retry_after_secs.to_string();
        return respond_error(s, 429, "TOOMANYREQUESTS", &[("Retry-After", ra)]);
    }
    let route = req.path.strip_prefix("/v2/").and_then(|r| {
        if let Some((_, m)) = r.split_once("/manifests/") {
            Some(("m", m))
        } else {
            r.split_once("/blobs/").map(|(_, b)| ("b", b))
        }
    });
    let Some((kind, reference)) = route else {
        return respond_error(s, 404, "NAME_UNKNOWN", &[]);
    };
    if kind == "m" {
        if take(&mut p.manifest_503) {
            return respond_error(s, 503, "UNAVAILABLE", &[]);
        }
        if let Some(size) = p.huge_manifest {
            let head = format!("HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: {size}\r\n\r\n");
            let _ = s.write_all(head.as_bytes());
            let chunk = vec![b' '; 64 << 10];
            let mut sent = 0;
            while sent < size {
                if s.write_all(&chunk).is_err() {
                    return;
                }
                sent += chunk.len() as u64;
            }
            return;
        }
        let m = content.lock().unwrap().manifests.get(reference).cloned();
        return match m {
            Some((ct, body)) => respond(s, 200, &[("Content-Type", ct)], &body),
            None => respond_error(s, 404, "MANIFEST_UNKNOWN", &[]),
        };
    }
    if let Some((0, msg)) = &p.blob_denied {
        let body = serde_json::json!({"errors": [{"code": "DENIED", "message": msg}]}).to_string();
        let h = [("Content-Type", "application/json".to_string())];
        return respond(s, 403, &h, body.as_bytes());
    }
    if let Some((n, _)) = p.blob_denied.as_mut() {
        *n = n.saturating_sub(1);
    }
    if take(&mut p.blob_503) {
        return respond_error(s, 503, "UNAVAILABLE", &[]);
    }
    if let Some((n, d)) = p.stall.as_mut() {
        if take(n) {
            let d = *d;
            drop(p);
            std::thread::sleep(d);
            p = plan.lock().unwrap();
        }
    }
    let Some(mut body) = content.lock().unwrap().blobs.get(reference).cloned() else {
        return respond_error(s, 404, "BLOB_UNKNOWN", &[]);
    };
    if p.wrong_bytes {
        let last = body.len() - 1;
        body[last] ^= 0xff;
    }
    let total = body.len();
    let start = match (p.no_range, req.header("range")) {
        (false, Some(r)) => r
            .strip_prefix("bytes=")
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(0),
        _ => 0,
    };
    let mut cut = None;
    let mut hard = false;
    // Only bodies longer than the cut are cut: a fault on the config would
    // not exercise resumption.
    if start == 0 {
        if let Some((n, k)) = p.reset_after.as_mut().filter(|(_, k)| total > *k) {
            if take(n) {
                cut = Some(*k);
                hard = true;
            }
        }
        if cut.is_none() {
            if let Some((n, k)) = p.truncate_after.as_mut().filter(|(_, k)| total > *k) {
                if take(n) {
                    cut = Some(*k);
                }
            }
        }
    }
    let delay = p.chunk_delay;
    let too_long = p.too_long;
    drop(p);
    let status = if start > 0 {
        "206 Partial Content"
    } else {
        "200 OK"
    };
    let mut head = format!("HTTP/1.1 {status}\r\nContent-Type: application/octet-stream\r\n");
    if too_long {
        head.push_str("Connection: close\r\n");
    } else {
        head.push_str(&format!("Content-Length: {}\r\n", total - start));
    }
    if start > 0 {
        head.push_str(&format!(
            "Content-Range: bytes {start}-{}/{total}\r\n",
            total - 1
        ));
    }
    head.push_str("\r\n");
    if s.write_all(head.as_bytes()).is_err() {
        return;
    }
    let end = cut.map_or(total, |c| (start + c).min(total));
    for chunk in body[start..end].chunks(64 << 10) {
        if s.write_all(chunk).is_err() {
            return;
        }
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
    }
    if cut.is_some() {
        let _ = s.flush();
        if hard {
            reset(s);
        } else {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        return;
    }
    if too_long {
        let _ = s.write_all(&vec![0u8; 100_000]);
        let _ = s.shutdown(std::net::Shutdown::Both);
    }
}
