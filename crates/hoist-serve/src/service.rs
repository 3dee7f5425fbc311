//! The build queue and its workers, recovery, delete and GC: everything
//! the routes call. Builds run on blocking threads through the facade, one
//! shared `Client` for all (one download limit, single flight of blobs),
//! each with its own `Op` (cancel token, progress keyed by digest).

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hoist::{
    Cancel, Client, Digest, ErrorKind, ExportOptions, Format, ImageSource, Inspection, Limits, Op,
    OpId, Progress, Reference,
};
use serde::Serialize;

use crate::metrics::{label, Metrics};
use crate::progress::{BuildProgress, Tracker};
use crate::state::{Db, ImageRow, Status};

/// What `hoist serve` is configured with.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: std::net::SocketAddr,
    pub data_dir: PathBuf,
    pub max_concurrent_builds: usize,
    pub format: Format,
    /// Bearer token every endpoint but `/healthz` requires.
    pub token: Option<String>,
    /// Host globs (`*.example.com`, `127.0.0.1:*`) a request may name;
    /// empty allows every registry.
    pub allowed_registries: Vec<String>,
    pub limits: Limits,
}

/// An error the API reports: a status, a machine-readable code, a message.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
    pub fn internal(e: impl std::fmt::Display) -> ApiError {
        ApiError::new(500, "internal", e.to_string())
    }
}

/// The facade's error as the API reports it.
pub fn api_error(e: &hoist::Error) -> ApiError {
    let msg = e.to_string();
    match e.kind() {
        ErrorKind::Usage => ApiError::new(400, "invalid_name", msg),
        ErrorKind::NotFound => ApiError::new(404, "not_found", msg),
        ErrorKind::Auth => ApiError::new(403, "registry_denied", msg),
        ErrorKind::RateLimited => ApiError {
            retry_after: retry_after_of(e).or(Some(60)),
            ..ApiError::new(429, "rate_limited", msg)
        },
        ErrorKind::Unavailable => ApiError::new(502, "registry_unavailable", msg),
        ErrorKind::NotAllowed => ApiError::new(403, "registry_not_allowed", msg),
        ErrorKind::TooLarge => ApiError::new(422, "too_large", msg),
        ErrorKind::Integrity => ApiError::new(502, "integrity", msg),
        ErrorKind::Cancelled => ApiError::new(409, "cancelled", msg),
        ErrorKind::Other => ApiError::new(500, "build_failed", msg),
    }
}

fn retry_after_of(e: &hoist::Error) -> Option<u64> {
    match e {
        hoist::Error::Registry(hoist::RegistryError::RateLimited {
            retry_after: Some(d),
            ..
        }) => Some(d.as_secs().max(1)),
        _ => None,
    }
}

/// The image record of the API: the Go original's fields plus `user`,
/// `platform`, `format`, `disk_path`, `error_code` and `progress`.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub name: String,
    pub digest: String,
    pub status: Status,
    pub queue_position: Option<usize>,
    pub error: Option<String>,
    pub error_code: Option<String>,
    pub size_bytes: Option<u64>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub env: std::collections::BTreeMap<String, String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub platform: String,
    pub format: String,
    pub disk_path: Option<String>,
    pub created_at: String,
    pub progress: Option<BuildProgress>,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<String>,
    running: HashMap<String, Cancel>,
}

pub struct Service {
    pub opts: ServeOptions,
    client: Client,
    db: Mutex<Db>,
    queue: Mutex<Queue>,
    wake: tokio::sync::Notify,
    tracker: Arc<Tracker>,
    pub metrics: Metrics,
    shutting_down: AtomicBool,
    /// Resolutions (`POST /images`) at once: a storm of POSTs waits here
    /// instead of filling the blocking pool with registry round trips.
    pub resolves: tokio::sync::Semaphore,
    /// When the service started, for the shutdown log.
    started: Instant,
}

fn format_name(f: Format) -> &'static str {
    match f {
        Format::Ext4 => "ext4",
        Format::Erofs { .. } => "erofs",
        Format::Cpio { gzip: false } => "cpio",
        Format::Cpio { gzip: true } => "cpio.gz",
    }
}

fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    rfc3339(secs)
}

/// A Unix time as RFC 3339 in UTC (`2023-11-14T22:13:20Z`), without a date
/// crate: days from the civil calendar (Howard Hinnant's algorithm).
pub fn rfc3339(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `*` matches any run of characters, `?` one; the whole host must match.
pub fn glob_match(pat: &str, s: &str) -> bool {
    let (p, s) = (pat.as_bytes(), s.as_bytes());
    let (mut pi, mut si, mut star, mut mark) = (0, 0, None, 0);
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi].eq_ignore_ascii_case(&s[si])) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

impl Service {
    pub fn open(client: Client, opts: ServeOptions) -> Result<Arc<Service>, String> {
        std::fs::create_dir_all(opts.data_dir.join("images"))
            .map_err(|e| format!("{}: {e}", opts.data_dir.display()))?;
        let db = Db::open(&opts.data_dir.join("state.db")).map_err(|e| e.to_string())?;
        let svc = Arc::new(Service {
            opts,
            client,
            db: Mutex::new(db),
            queue: Mutex::new(Queue::default()),
            wake: tokio::sync::Notify::new(),
            tracker: Arc::new(Tracker::default()),
            metrics: Metrics::new(),
            shutting_down: AtomicBool::new(false),
            resolves: tokio::sync::Semaphore::new(16),
            started: Instant::now(),
        });
        svc.recover().map_err(|e| e.message)?;
        Ok(svc)
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Db> {
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Re-queue every image a killed server left pending, pulling or
    /// converting, oldest first. Their temp files are removed by the
    /// rebuild of the same target (its stale siblings) and by GC.
    fn recover(&self) -> Result<(), ApiError> {
        let rows = self.db().unfinished().map_err(ApiError::internal)?;
        let mut q = self.queue.lock().expect("lock");
        for r in rows {
            tracing::info!("recovery: re-queueing {} ({})", r.digest, r.status.as_str());
            self.db()
                .set_status(&r.digest, Status::Pending)
                .map_err(ApiError::internal)?;
            q.waiting.push_back(r.digest);
        }
        self.metrics.queue_length.set(q.waiting.len() as i64);
        Ok(())
    }

    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    pub fn check_allowed(&self, r: &Reference) -> Result<(), ApiError> {
        let host = r.registry();
        if let Some(ip) = hoist::literal_ip(host).filter(|ip| hoist::is_refused_ip(*ip)) {
            return Err(ApiError::new(
                403,
                "registry_not_allowed",
                format!("{host}: {ip} is a link-local or metadata address"),
            ));
        }
        let pats = &self.opts.allowed_registries;
        if !pats.is_empty() && !pats.iter().any(|p| glob_match(p, host)) {
            return Err(ApiError::new(
                403,
                "registry_not_allowed",
                format!("{host} is not in --allowed-registries"),
            ));
        }
        Ok(())
    }

    fn disk_path(&self, repo: &str, digest: &str) -> PathBuf {
        let hex = digest.split_once(':').map_or(digest, |(_, h)| h);
        self.opts
            .data_dir
            .join("images")
            .join(repo)
            .join(hex)
            .join(format!("rootfs.{}", format_name(self.opts.format)))
    }

    fn record(&self, name: String, r: &ImageRow) -> Record {
        let md: serde_json::Value = serde_json::from_str(&r.metadata).unwrap_or_default();
        let strs = |k: &str| -> Option<Vec<String>> {
            let v: Vec<String> = md[k]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            (!v.is_empty()).then_some(v)
        };
        let opt = |k: &str| md[k].as_str().filter(|s| !s.is_empty()).map(String::from);
        let env = md["env"]
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let queue_position = if r.status == Status::Pending {
            let q = self.queue.lock().expect("lock");
            q.waiting.iter().position(|d| d == &r.digest).map(|i| i + 1)
        } else {
            None
        };
        Record {
            name,
            digest: r.digest.clone(),
            status: r.status,
            queue_position,
            error: r.error.clone(),
            error_code: r.error_code.clone(),
            size_bytes: r.size_bytes,
            entrypoint: strs("entrypoint"),
            cmd: strs("cmd"),
            env,
            working_dir: opt("working_dir"),
            user: opt("user"),
            platform: r.platform.clone(),
            format: r.format.clone(),
            disk_path: r.disk_path.clone(),
            created_at: r.created_at.clone(),
            progress: if r.status.unfinished() {
                self.tracker.get(&r.digest)
            } else {
                None
            },
        }
    }

    fn enqueue(&self, digest: &str) {
        let mut q = self.queue.lock().expect("lock");
        if !q.waiting.iter().any(|d| d == digest) && !q.running.contains_key(digest) {
            q.waiting.push_back(digest.to_string());
        }
        self.metrics.queue_length.set(q.waiting.len() as i64);
        drop(q);
        self.wake.notify_one();
    }

    /// Resolve a name (blocking: a registry round trip) to its platform
    /// manifest and config. Only the manifest and config are fetched.
    pub fn resolve(&self, r: &Reference) -> Result<Inspection, ApiError> {
        let op = Op::new().with_limits(self.opts.limits);
        self.client
            .inspect(&ImageSource::Registry(r.clone()), &op)
            .map_err(|e| {
                self.count_unreachable(&e);
                api_error(&e)
            })
    }

    /// Count a registry that gave no answer, by why.
    fn count_unreachable(&self, e: &hoist::Error) {
        if let Some(k) = e.transport_kind() {
            self.metrics
                .registry_unreachable
                .get_or_create(&crate::metrics::KindLabel {
                    kind: k.as_str().into(),
                })
                .inc();
        }
    }

    /// `POST /images`, after resolution: idempotent by digest.
    pub fn create(&self, r: &Reference, i: &Inspection) -> Result<Record, ApiError> {
        let name = r.to_string();
        let digest = i.digest.to_string();
        let mut db = self.db();
        let existing = db.image(&digest).map_err(ApiError::internal)?;
        let row = match existing {
            Some(row) => {
                db.set_name(&name, &digest).map_err(ApiError::internal)?;
                if row.status == Status::Ready {
                    drop(db);
                    self.link_tags(&row);
                    db = self.db();
                }
                if row.status == Status::Failed {
                    db.requeue(&digest).map_err(ApiError::internal)?;
                    drop(db);
                    self.enqueue(&digest);
                    db = self.db();
                }
                db.image(&digest)
                    .map_err(ApiError::internal)?
                    .expect("just read")
            }
            None => {
                let repo = r.name();
                let row = ImageRow {
                    digest: digest.clone(),
                    repo: repo.clone(),
                    status: Status::Pending,
                    error: None,
                    error_code: None,
                    size_bytes: None,
                    metadata: serde_json::to_string(&i.metadata).map_err(ApiError::internal)?,
                    platform: i.platform.to_string(),
                    format: format_name(self.opts.format).into(),
                    disk_path: Some(self.disk_path(&repo, &digest).display().to_string()),
                    created_at: now_rfc3339(),
                    seq: 0,
                };
                db.insert_pending(&row, &name).map_err(ApiError::internal)?;
                drop(db);
                self.enqueue(&digest);
                db = self.db();
                db.image(&digest)
                    .map_err(ApiError::internal)?
                    .expect("just written")
            }
        };
        drop(db);
        Ok(self.record(name, &row))
    }

    /// `GET /images/{name}`: by tag or by digest reference, any status.
    pub fn get(&self, r: &Reference) -> Result<Record, ApiError> {
        let name = r.to_string();
        let db = self.db();
        let digest = match db.digest_of(&name).map_err(ApiError::internal)? {
            Some(d) => d,
            None => match r.digest() {
                Some(d) => d.to_string(),
                None => return Err(ApiError::new(404, "not_found", format!("no image {name}"))),
            },
        };
        let row = db
            .image(&digest)
            .map_err(ApiError::internal)?
            .filter(|row| r.digest().is_none() || row.repo == r.name())
            .ok_or_else(|| ApiError::new(404, "not_found", format!("no image {name}")))?;
        drop(db);
        Ok(self.record(name, &row))
    }

    pub fn list(&self, status: Option<Status>) -> Result<Vec<Record>, ApiError> {
        let rows = self.db().list().map_err(ApiError::internal)?;
        Ok(rows
            .into_iter()
            .filter(|(_, r)| status.is_none_or(|s| s == r.status))
            .map(|(n, r)| {
                let name = n.unwrap_or_else(|| format!("{}@{}", r.repo, r.digest));
                self.record(name, &r)
            })
            .collect())
    }

    /// `DELETE /images/{name}`. A tag: removes it (and its symlink), and
    /// the image with its last name. A digest: removes the image unless a
    /// tag points at it (409). Removing an image cancels its build and
    /// deletes its files and its cache entry.
    pub fn delete(&self, r: &Reference) -> Result<(), ApiError> {
        let name = r.to_string();
        let db = self.db();
        let digest = if let Some(d) = r.digest() {
            let d = d.to_string();
            let row = db.image(&d).map_err(ApiError::internal)?;
            if row.as_ref().is_none_or(|row| row.repo != r.name()) {
                return Err(ApiError::new(404, "not_found", format!("no image {name}")));
            }
            let tags: Vec<String> = db
                .names_of(&d)
                .map_err(ApiError::internal)?
                .into_iter()
                .filter(|n| !n.contains('@'))
                .collect();
            if !tags.is_empty() {
                return Err(ApiError::new(
                    409,
                    "in_use",
                    format!("{name} is tagged as {}", tags.join(", ")),
                ));
            }
            d
        } else {
            let Some(d) = db.digest_of(&name).map_err(ApiError::internal)? else {
                return Err(ApiError::new(404, "not_found", format!("no image {name}")));
            };
            db.remove_name(&name).map_err(ApiError::internal)?;
            self.remove_tag_link(r);
            if !db.names_of(&d).map_err(ApiError::internal)?.is_empty() {
                return Ok(());
            }
            d
        };
        let row = db.image(&digest).map_err(ApiError::internal)?;
        db.remove_image(&digest).map_err(ApiError::internal)?;
        drop(db);
        let mut q = self.queue.lock().expect("lock");
        q.waiting.retain(|d| d != &digest);
        if let Some(c) = q.running.get(&digest) {
            c.cancel();
        }
        self.metrics.queue_length.set(q.waiting.len() as i64);
        let running = q.running.contains_key(&digest);
        drop(q);
        self.tracker.clear(&digest);
        // A running build removes its own files when it sees the record
        // gone; otherwise they go now.
        if !running {
            if let Some(row) = row {
                self.remove_files(&row);
            }
        }
        Ok(())
    }

    fn remove_tag_link(&self, r: &Reference) {
        if let Some(tag) = r.tag() {
            let link = self.opts.data_dir.join("images").join(r.name()).join(tag);
            if std::fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink()) {
                let _ = std::fs::remove_file(&link);
            }
        }
    }

    /// The disk, its directory, and the image's cache entry (its blobs go
    /// at the next GC unless another image shares them).
    fn remove_files(&self, row: &ImageRow) {
        if let Some(p) = &row.disk_path {
            let dir = Path::new(p).parent().map(Path::to_path_buf);
            let _ = std::fs::remove_file(p);
            if let Some(dir) = dir {
                for stale in hoist::stale_beside(Path::new(p)) {
                    let _ = std::fs::remove_file(&stale);
                }
                let _ = std::fs::remove_dir(&dir);
            }
        }
        if let Ok(d) = row.digest.parse::<Digest>() {
            if let Ok(r) = format!("{}@{d}", row.repo).parse::<Reference>() {
                let _ = self.client.remove(&[ImageSource::Registry(r)]);
            }
        }
    }

    /// The worker loop: take the oldest waiting digest, build it on a
    /// blocking thread, repeat. `max_concurrent_builds` of these run.
    pub async fn worker(self: Arc<Self>) {
        loop {
            if self.shutting_down.load(Ordering::SeqCst) {
                return;
            }
            let next = {
                let mut q = self.queue.lock().expect("lock");
                let d = q.waiting.pop_front();
                if let Some(d) = &d {
                    q.running.insert(d.clone(), Cancel::new());
                }
                self.metrics.queue_length.set(q.waiting.len() as i64);
                d.map(|d| {
                    let c = q.running[&d].clone();
                    (d, c)
                })
            };
            let Some((digest, cancel)) = next else {
                self.wake.notified().await;
                continue;
            };
            let svc = self.clone();
            let d2 = digest.clone();
            let started = Instant::now();
            let outcome = tokio::task::spawn_blocking(move || svc.build(&d2, cancel)).await;
            let status = match outcome {
                Ok(Ok(())) => "ready",
                Ok(Err(Some(e))) => {
                    tracing::warn!("build of {digest} failed: {}", e.message);
                    "failed"
                }
                Ok(Err(None)) => "cancelled",
                Err(e) => {
                    tracing::error!("build of {digest} panicked: {e}");
                    let _ = self
                        .db()
                        .set_failed(&digest, "internal", "the build panicked");
                    "failed"
                }
            };
            self.metrics
                .build_duration
                .get_or_create(&label(status))
                .observe(started.elapsed().as_secs_f64());
            self.queue.lock().expect("lock").running.remove(&digest);
            self.tracker.clear(&digest);
        }
    }

    /// One build: pull, then export; each state change committed first.
    /// `Err(None)`: cancelled (by a delete, or by shutdown, which leaves
    /// the record for recovery).
    fn build(&self, digest: &str, cancel: Cancel) -> Result<(), Option<ApiError>> {
        let Some(row) = self
            .db()
            .image(digest)
            .map_err(|e| Some(ApiError::internal(e)))?
        else {
            return Err(None);
        };
        let r: Reference = format!("{}@{digest}", row.repo)
            .parse()
            .map_err(|e: hoist::SpecError| Some(ApiError::internal(e)))?;
        let src = ImageSource::Registry(r);
        let mut op = Op::new()
            .with_id(OpId::new(digest))
            .with_cancel(cancel.clone())
            .with_progress(self.tracker.clone() as Arc<dyn Progress>)
            .with_limits(self.opts.limits);
        if let Ok(p) = row.platform.parse() {
            op = op.with_platform(p);
        }
        let fail = |e: hoist::Error| -> Option<ApiError> {
            if cancel.is_cancelled() || matches!(e.kind(), ErrorKind::Cancelled) {
                return None;
            }
            let a = api_error(&e);
            let _ = self.db().set_failed(digest, a.code, &a.message);
            Some(a)
        };
        self.set_status(digest, Status::Pulling)?;
        let pulled = self.client.pull(&src, &op);
        self.metrics
            .pulls
            .get_or_create(&label(if pulled.is_ok() { "ok" } else { "failed" }))
            .inc();
        if let Err(e) = &pulled {
            self.count_unreachable(e);
        }
        let r = pulled.map_err(fail).and_then(|_| {
            self.set_status(digest, Status::Converting)?;
            let out = self.disk_path(&row.repo, digest);
            std::fs::create_dir_all(out.parent().expect("has a parent"))
                .map_err(|e| Some(ApiError::internal(format!("{}: {e}", out.display()))))?;
            let e = self
                .client
                .export(
                    &src,
                    &out,
                    &ExportOptions {
                        format: self.opts.format,
                        ..ExportOptions::default()
                    },
                    &op,
                )
                .map_err(fail)?;
            Ok((out, e.size))
        });
        let gone = self.db().image(digest).ok().flatten().is_none();
        match r {
            Ok(_) | Err(None) if gone => {
                // Deleted while it was building: its files go now.
                self.remove_files(&row);
                Err(None)
            }
            Ok((out, size)) => {
                self.db()
                    .set_ready(digest, size, &out.display().to_string())
                    .map_err(|e| Some(ApiError::internal(e)))?;
                self.link_tags(&row);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn set_status(&self, digest: &str, s: Status) -> Result<(), Option<ApiError>> {
        self.db()
            .set_status(digest, s)
            .map_err(|e| Some(ApiError::internal(e)))
    }

    /// `images/<repo>/<tag>` → `<digest hex>`, made when the image is ready
    /// (the Go original's layout), replaced atomically.
    fn link_tags(&self, row: &ImageRow) {
        let hex = row.digest.split_once(':').map_or(&*row.digest, |(_, h)| h);
        let names = self.db().names_of(&row.digest).unwrap_or_default();
        for n in names {
            let Ok(r) = n.parse::<Reference>() else {
                continue;
            };
            let Some(tag) = r.tag() else { continue };
            let dir = self.opts.data_dir.join("images").join(r.name());
            let _ = std::fs::create_dir_all(&dir);
            let tmp = dir.join(format!(".{tag}.hoist-link-{:x}", std::process::id()));
            let _ = std::fs::remove_file(&tmp);
            let target = if r.name() == row.repo {
                PathBuf::from(hex)
            } else {
                self.opts.data_dir.join("images").join(&row.repo).join(hex)
            };
            if std::os::unix::fs::symlink(&target, &tmp).is_ok() {
                let _ = std::fs::rename(&tmp, dir.join(tag));
            }
        }
    }

    /// Update the gauges that are read from the state, then encode.
    pub fn metrics_text(&self) -> String {
        if let Ok(counts) = self.db().count_by_status() {
            for s in Status::ALL {
                let n = counts.iter().find(|(x, _)| *x == s).map_or(0, |(_, n)| *n);
                self.metrics
                    .images
                    .get_or_create(&label(s.as_str()))
                    .set(n as i64);
            }
        }
        if let Ok(b) = self.db().ready_bytes() {
            self.metrics.images_bytes.set(b as i64);
        }
        self.metrics
            .cache_bytes
            .set(dir_bytes(&self.client.layout_path().join("blobs")) as i64);
        self.metrics.encode()
    }

    /// GC: the cache's (unreachable blobs, stale temps, dead leases), then
    /// the disks' (files under `images/` that no record names, temps whose
    /// writer is gone, dangling tag links). Never a running build's.
    pub fn gc(&self, dry_run: bool) -> Result<GcResult, ApiError> {
        let cache = self.client.gc(dry_run).map_err(|e| api_error(&e))?;
        let keep: std::collections::HashSet<PathBuf> = self
            .db()
            .disk_paths()
            .map_err(ApiError::internal)?
            .into_iter()
            .map(PathBuf::from)
            .collect();
        let mut removed = Vec::new();
        let mut bytes = 0;
        sweep(
            &self.opts.data_dir.join("images"),
            &keep,
            dry_run,
            &mut removed,
            &mut bytes,
        );
        Ok(GcResult {
            cache,
            disk_files: removed,
            disk_bytes: bytes,
        })
    }

    /// Stop taking builds, cancel the running ones (their records stay
    /// `pulling`/`converting` for recovery) and wait for them a little.
    pub async fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        {
            let q = self.queue.lock().expect("lock");
            for c in q.running.values() {
                c.cancel();
            }
        }
        self.wake.notify_waiters();
        for _ in 0..100 {
            if self.queue.lock().expect("lock").running.is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

#[derive(Debug, Serialize)]
pub struct GcResult {
    pub cache: hoist::GcReport,
    pub disk_files: Vec<PathBuf>,
    pub disk_bytes: u64,
}

fn dir_bytes(p: &Path) -> u64 {
    let mut n = 0;
    let mut todo = vec![p.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => todo.push(e.path()),
                Ok(t) if t.is_file() => n += e.metadata().map(|m| m.len()).unwrap_or(0),
                _ => {}
            }
        }
    }
    n
}

fn sweep(
    dir: &Path,
    keep: &std::collections::HashSet<PathBuf>,
    dry_run: bool,
    removed: &mut Vec<PathBuf>,
    bytes: &mut u64,
) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        let Ok(t) = e.file_type() else { continue };
        if t.is_dir() {
            sweep(&p, keep, dry_run, removed, bytes);
            // A directory a record names (its build may be about to start)
            // stays even when empty.
            let named = keep.iter().any(|k| k.starts_with(&p));
            if !named && !dry_run {
                let _ = std::fs::remove_dir(&p);
            }
        } else if t.is_symlink() {
            if std::fs::metadata(&p).is_err() {
                if !dry_run {
                    let _ = std::fs::remove_file(&p);
                }
                removed.push(p);
            }
        } else if !keep.contains(&p) {
            let name = e.file_name().to_string_lossy().to_string();
            let temp = name.contains(".hoist-");
            if temp && !hoist::temp_owner_is_gone(&p) {
                continue; // a running build's
            }
            *bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
            if !dry_run {
                let _ = std::fs::remove_file(&p);
            }
            removed.push(p);
        }
    }
}
