//! The service: its options and shared state, and the operations the
//! routes call (create, get, list, delete). The queue, disks, GC and
//! records live in their own modules.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hoist::{Client, Format, ImageSource, Inspection, Limits, Op, Reference};

use crate::disks::format_name;
use crate::error::{api_error, ApiError};
use crate::glob::glob_match;
use crate::metrics::Metrics;
use crate::progress::Tracker;
use crate::queue::Queue;
use crate::record::Record;
use crate::state::{Db, ImageRow, Status};
use crate::time::now_rfc3339;

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

pub struct Service {
    pub opts: ServeOptions,
    pub(crate) client: Client,
    pub(crate) db: Mutex<Db>,
    pub(crate) queue: Mutex<Queue>,
    pub(crate) wake: tokio::sync::Notify,
    pub(crate) tracker: Arc<Tracker>,
    pub metrics: Metrics,
    pub(crate) shutting_down: AtomicBool,
    /// Resolutions (`POST /images`) at once: a storm of POSTs waits here
    /// instead of filling the blocking pool with registry round trips.
    pub resolves: tokio::sync::Semaphore,
    /// When the service started, for the shutdown log.
    started: Instant,
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

    pub(crate) fn db(&self) -> std::sync::MutexGuard<'_, Db> {
        self.db.lock().unwrap_or_else(|e| e.into_inner())
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
    pub(crate) fn count_unreachable(&self, e: &hoist::Error) {
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
