//! A real `hoist serve` process on a free loopback port, driven over HTTP
//! with reqwest: no in-process shortcut.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::Hoist;

pub struct Server {
    child: Option<Child>,
    pub url: String,
    token: Option<String>,
    http: reqwest::blocking::Client,
    pub log: Arc<Mutex<String>>,
}

/// A name as a path segment: hypeman's clients URL-encode it whole.
pub fn enc(name: &str) -> String {
    let mut s = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

impl Server {
    /// Start `hoist serve` on `data` and wait for it to listen.
    pub fn start(h: &Hoist, data: &Path, token: Option<&str>, extra: &[&str]) -> Server {
        Self::start_with(h, data, token, extra, |_| {})
    }

    /// The same, with the command adjusted first (limits, environment).
    pub fn start_with(
        h: &Hoist,
        data: &Path,
        token: Option<&str>,
        extra: &[&str],
        adjust: impl FnOnce(&mut std::process::Command),
    ) -> Server {
        let mut c = h.cmd();
        c.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .args(extra)
            .env_remove("HOIST_TOKEN")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(t) = token {
            c.env("HOIST_TOKEN", t);
        }
        adjust(&mut c);
        let mut child = c.spawn().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let err = child.stderr.take().unwrap();
        let l2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if let Some(u) = line.split("listening on ").nth(1) {
                    let _ = tx.send(u.trim().to_string());
                }
                l2.lock().unwrap().push_str(&line);
                l2.lock().unwrap().push('\n');
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(u) => u,
            Err(_) => {
                let _ = child.kill();
                panic!("hoist serve did not start:\n{}", log.lock().unwrap());
            }
        };
        Server {
            child: Some(child),
            url,
            token: token.map(str::to_string),
            http: reqwest::blocking::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
            log,
        }
    }

    fn req(&self, m: reqwest::Method, path: &str) -> reqwest::blocking::RequestBuilder {
        let r = self.http.request(m, format!("{}{path}", self.url));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    fn answer(r: reqwest::blocking::Response) -> (u16, Value) {
        let status = r.status().as_u16();
        let text = r.text().unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        Self::answer(self.req(reqwest::Method::GET, path).send().unwrap())
    }

    pub fn text(&self, path: &str) -> String {
        self.req(reqwest::Method::GET, path)
            .send()
            .unwrap()
            .text()
            .unwrap()
    }

    pub fn post(&self, path: &str, body: Value) -> (u16, Value) {
        Self::answer(
            self.req(reqwest::Method::POST, path)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .unwrap(),
        )
    }

    pub fn create(&self, name: &str) -> (u16, Value) {
        self.post("/images", serde_json::json!({ "name": name }))
    }

    pub fn image(&self, name: &str) -> (u16, Value) {
        self.get(&format!("/images/{}", enc(name)))
    }

    pub fn delete(&self, name: &str) -> (u16, Value) {
        Self::answer(
            self.req(reqwest::Method::DELETE, &format!("/images/{}", enc(name)))
                .send()
                .unwrap(),
        )
    }

    /// Poll until every name is `ready` (panics on `failed` or timeout).
    pub fn wait_ready(&self, names: &[&str], timeout: Duration) -> Vec<Value> {
        let end = Instant::now() + timeout;
        loop {
            let recs: Vec<Value> = names.iter().map(|n| self.image(n).1).collect();
            if recs.iter().all(|r| r["status"] == "ready") {
                return recs;
            }
            for r in &recs {
                assert_ne!(r["status"], "failed", "a build failed: {r}");
            }
            assert!(
                Instant::now() < end,
                "not ready in {timeout:?}: {recs:?}\n{}",
                self.log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A sample's value from /metrics (`name{labels}` as printed).
    pub fn metric(&self, series: &str) -> Option<f64> {
        self.text("/metrics")
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
    }

    /// A raw request: method, path, body; the status and the answer's
    /// content type and text.
    pub fn raw(&self, m: &str, path: &str, body: &str) -> (u16, String, String) {
        let r = self
            .req(m.parse().unwrap(), path)
            .body(body.to_string())
            .send()
            .unwrap();
        let status = r.status().as_u16();
        let ct = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        (status, ct, r.text().unwrap_or_default())
    }

    /// SIGKILL, and reap.
    pub fn kill9(mut self) {
        let mut c = self.child.take().unwrap();
        let _ = c.kill();
        let _ = c.wait();
    }

    /// SIGTERM; how long it took to exit, and its exit status.
    pub fn terminate(mut self) -> (Duration, std::process::ExitStatus) {
        let mut c = self.child.take().unwrap();
        let t = Instant::now();
        // SAFETY: kill(2) on our own child, which we have not reaped.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return (t.elapsed(), s);
            }
            if t.elapsed() > Duration::from_secs(30) {
                let _ = c.kill();
                panic!("hoist serve ignored SIGTERM for 30 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `e2fsck -fn` accepts the image.
pub fn e2fsck_ok(p: &Path) -> bool {
    std::process::Command::new("e2fsck")
        .arg("-fn")
        .arg(p)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// hoist temp files left anywhere under `dir`.
pub fn temp_files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(p.clone());
            }
            if e.file_name().to_string_lossy().contains(".hoist-") {
                out.push(p);
            }
        }
    }
    out
}
