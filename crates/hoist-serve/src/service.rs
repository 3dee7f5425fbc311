//! The service: its shared parts, start-up, and the operations the routes
//! call. Each operation takes the one lock over the state machine
//! ([`Book`]) and is called from a blocking thread (`spawn_blocking`),
//! never from an async one: SQLite and the filesystem block.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use hoist::{Client, Digest, ImageSource, Inspection, Op, Platform, Reference};

use crate::book::{Book, Cleanup, NewImage};
use crate::db::{Db, Status};
use crate::disks::{format_name, Disks};
use crate::error::ServiceError;
use crate::glob::glob_match;
use crate::metrics::{KindLabel, Metrics};
use crate::options::ServeOptions;
use crate::progress::Tracker;
use crate::record::Record;
use crate::registry::uploads::Uploads;
use crate::registry::Registry;
use crate::ServeError;

type R<T> = Result<T, ServiceError>;

pub struct Service {
    pub opts: ServeOptions,
    pub(crate) client: Client,
    book: Mutex<Book>,
    pub(crate) disks: Disks,
    /// Workers wait here for work.
    pub(crate) wake: tokio::sync::Notify,
    pub(crate) tracker: Arc<Tracker>,
    /// The `/v2` door: upload sessions, and uploads held against GC.
    pub(crate) registry: Registry,
    pub metrics: Arc<Metrics>,
    /// Resolutions (`POST /images`) at once: a storm of POSTs waits here
    /// instead of filling the blocking pool with registry round trips.
    pub resolves: tokio::sync::Semaphore,
    /// When the service started, for the shutdown log.
    started: Instant,
}

impl Service {
    /// Check the state, sweep what a killed process left, rebuild records
    /// of disks that a lost database forgot, and queue unfinished work.
    pub fn open(client: Client, opts: ServeOptions) -> Result<Arc<Service>, ServeError> {
        let setup = |e: &dyn std::fmt::Display| ServeError::Setup(e.to_string());
        let mut disks = Disks::new(&opts.data_dir)
            .map_err(|e| setup(&format!("{}: {e}", opts.data_dir.display())))?;
        if opts.shared_layers {
            let hoist::Format::Erofs { lz4 } = opts.format else {
                return Err(setup(&"shared layers are erofs only (--format erofs)"));
            };
            disks = disks.with_shared_layers(lz4);
        }
        std::fs::create_dir_all(disks.images_dir())
            .map_err(|e| setup(&format!("{}: {e}", disks.data_dir().display())))?;
        let db_path = disks.data_dir().join("state.db");
        let db = Db::open(&db_path).map_err(|e| ServeError::Database {
            path: db_path.clone(),
            reason: e.to_string(),
        })?;
        let tracker = Arc::new(Tracker::default());
        let metrics = Arc::new(Metrics::new());
        let format = format_name(opts.format);
        let book = Book::new(db, disks.clone(), format, tracker.clone(), metrics.clone());
        let uploads = Uploads::new(
            opts.max_upload_sessions.max(1),
            opts.upload_timeout,
            opts.max_upload_bytes,
        );
        let svc = Arc::new(Service {
            registry: Registry::new(uploads),
            client,
            book: Mutex::new(book),
            disks,
            wake: tokio::sync::Notify::new(),
            tracker,
            metrics,
            resolves: tokio::sync::Semaphore::new(16),
            started: Instant::now(),
            opts,
        });
        svc.sweep_temps();
        svc.rebuild_if_lost(&db_path)?;
        svc.book()
            .recover()
            .map_err(|e| setup(&format!("recovery: {e}")))?;
        Ok(svc)
    }

    /// Temp files whose writers are gone: blobs a killed pull was writing
    /// (`*.partial`), disks and trees a killed build was writing. Judged
    /// by their locks, so nothing a live process writes is touched.
    fn sweep_temps(&self) {
        match self.client.sweep_temps() {
            Ok(v) if !v.is_empty() => tracing::info!("removed {} stale cache temp files", v.len()),
            Ok(_) => {}
            Err(e) => tracing::warn!("sweeping the cache's temp files: {e}"),
        }
        if self.disks.shared_layers() {
            match hoist::LayerDir::open(&self.disks.layers_dir()) {
                Ok(d) => {
                    let n = d.sweep_temps();
                    if n > 0 {
                        tracing::info!("removed {n} temp files of killed layer file builds");
                    }
                }
                Err(e) => tracing::warn!("{}: {e}", self.disks.layers_dir().display()),
            }
        }
        let stale = self.disks.stale_temps();
        for p in &stale {
            let _ = std::fs::remove_file(p);
        }
        if !stale.is_empty() {
            tracing::info!("removed {} stale disk temp files", stale.len());
        }
    }

    /// An empty database beside disks is a lost one (deleted, truncated,
    /// replaced): its records are made again from the disks, so GC never
    /// takes them for orphans.
    fn rebuild_if_lost(&self, db_path: &std::path::Path) -> Result<(), ServeError> {
        let mut book = self.book();
        if !book.db().is_empty().unwrap_or(false) {
            return Ok(());
        }
        let platform: Platform = self.client.default_platform().clone();
        let n = book
            .rebuild_from_disks(
                |d| {
                    let i = self.client.inspect_cached(d).ok().flatten()?;
                    Some((i.metadata, i.platform))
                },
                &platform,
            )
            .map_err(|e| ServeError::Database {
                path: db_path.to_path_buf(),
                reason: format!("rebuilding records from the disks: {e}"),
            })?;
        if n > 0 {
            tracing::warn!(
                "{} held no image but {} disks were found under {}: their records were rebuilt",
                db_path.display(),
                n,
                self.disks.images_dir().display()
            );
        }
        Ok(())
    }

    /// Whether `host` names this server itself (`--registry-name`, else its
    /// listen address): images there were pushed, and live in the cache.
    pub(crate) fn is_own_registry(&self, host: &str) -> bool {
        self.opts.registry_name.as_deref() == Some(host)
    }

    pub(crate) fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// The registry a name points at must be allowed: never a link-local,
    /// metadata or unspecified address however its host is spelled (the
    /// URL parser the connection uses decides), and within
    /// `--allowed-registries` when set.
    pub fn check_allowed(&self, r: &Reference) -> R<()> {
        let host = r.registry();
        if self.is_own_registry(host) {
            return Ok(()); // served from what was pushed: nothing is contacted
        }
        if let Err(e) = hoist::check_registry_host(host) {
            return Err(ServiceError::RegistryNotAllowed(e.to_string()));
        }
        let pats = &self.opts.allowed_registries;
        if !pats.is_empty() && !pats.iter().any(|p| glob_match(p, host)) {
            return Err(ServiceError::RegistryNotAllowed(format!(
                "{host} is not in --allowed-registries"
            )));
        }
        Ok(())
    }

    /// Resolve a name (blocking: a registry round trip) to its platform
    /// manifest and config. Only the manifest and config are fetched.
    pub fn resolve(&self, r: &Reference) -> R<Inspection> {
        if self.is_own_registry(r.registry()) {
            return self.resolve_pushed(r);
        }
        let op = Op::new().with_limits(self.opts.limits);
        self.client
            .inspect(&ImageSource::Registry(r.clone()), &op)
            .map_err(|e| {
                self.count_unreachable(&e);
                ServiceError::from(&e)
            })
    }

    /// A name under this server's own registry name: what was pushed, from
    /// the cache alone (404 when nothing was; no request is made).
    fn resolve_pushed(&self, r: &Reference) -> R<Inspection> {
        let digest = match (r.digest(), r.tag()) {
            (Some(d), _) => d.clone(),
            (None, Some(t)) => self
                .book()
                .db()
                .pushed_tag(r.repository(), t)?
                .map(|(d, _)| d)
                .ok_or_else(|| ServiceError::NotFound(format!("nothing was pushed as {r}")))?,
            (None, None) => return Err(ServiceError::InvalidName(format!("{r}: no tag"))),
        };
        let pinned: Reference = format!("{}@{digest}", r.name())
            .parse()
            .map_err(|e: hoist::SpecError| ServiceError::InvalidName(e.to_string()))?;
        let op = Op::new().with_limits(self.opts.limits).offline();
        self.client
            .inspect(&ImageSource::Registry(pinned), &op)
            .map_err(|e| ServiceError::from(&e))
    }

    /// After a manifest PUT: the image's record, built like any other. A
    /// push by digest of a manifest for another platform (a child of a
    /// multi-platform push) is stored without a record; what cannot be
    /// built gets a `failed` record saying why.
    pub(crate) fn import_pushed(
        &self,
        repo: &str,
        tag: Option<&str>,
        digest: &Digest,
        index: bool,
    ) {
        let host = self.opts.registry_name.clone().unwrap_or_default();
        let name = match tag {
            Some(t) => format!("{host}/{repo}:{t}"),
            None => format!("{host}/{repo}@{digest}"),
        };
        let Ok(r) = name.parse::<Reference>() else {
            tracing::warn!("pushed {name}: not a name this service can record");
            return;
        };
        match self.resolve(&r) {
            Ok(i) => {
                if let Err(e) = self.create(&r, &i) {
                    tracing::warn!("pushed {r}: {}", e.message());
                }
            }
            Err(ServiceError::NotAnImage(_)) if tag.is_none() && !index => {
                tracing::debug!("pushed {r}: another platform's manifest, stored only");
            }
            Err(e) => {
                tracing::info!("pushed {r}: not built: {}", e.message());
                let platform = self.client.default_platform().clone();
                if let Err(e) = self.book().create_failed(&r, digest, &platform, &e) {
                    tracing::warn!("pushed {r}: {}", e.message());
                }
            }
        }
    }

    /// Count a registry that gave no answer, by why.
    pub(crate) fn count_unreachable(&self, e: &hoist::Error) {
        if let Some(k) = e.transport_kind() {
            self.metrics
                .registry_unreachable
                .get_or_create(&KindLabel {
                    kind: k.as_str().into(),
                })
                .inc();
        }
    }

    /// `POST /images`, after resolution: idempotent by digest.
    pub fn create(&self, r: &Reference, i: &Inspection) -> R<Record> {
        let rec = self.book().create(
            r,
            NewImage {
                digest: i.digest.clone(),
                repo: r.name(),
                metadata: i.metadata.clone(),
                platform: i.platform.clone(),
            },
        )?;
        self.wake.notify_one();
        Ok(rec)
    }

    /// `GET /images/{name}`: by tag or by digest reference, any status.
    pub fn get(&self, r: &Reference) -> R<Record> {
        let rec = self.book().get(r)?;
        if rec.status == Status::Pending {
            self.wake.notify_one();
        }
        Ok(rec)
    }

    pub fn list(&self, status: Option<Status>) -> R<Vec<Record>> {
        let recs = self.book().list(status)?;
        self.wake.notify_one();
        Ok(recs)
    }

    /// `DELETE /images/{name}`.
    pub fn delete(&self, r: &Reference) -> R<()> {
        let cleanup = self.book().delete(r)?;
        if let Some(c) = cleanup {
            self.clean(c);
        }
        Ok(())
    }

    /// Remove a deleted (or superseded) image's files and, when no record
    /// of its digest remains, its cache entry (its blobs go at the next
    /// GC unless another image shares them); then free the digest.
    pub(crate) fn clean(&self, c: Cleanup) {
        self.disks.remove_image_files(&c.row);
        let d: &Digest = &c.row.digest;
        let gone = self.book().db().image(d).ok().flatten().is_none();
        if gone {
            if let Ok(r) = format!("{}@{d}", c.row.repo).parse::<Reference>() {
                let _ = self.client.remove(&[ImageSource::Registry(r)]);
            }
        }
        self.book().release(d);
        self.wake.notify_one();
    }

    /// Stop taking builds, cancel the running ones (their records stay
    /// `pulling`/`converting` for recovery) and wait for them a little.
    pub async fn shutdown(&self) {
        self.book().shut_down();
        self.wake.notify_waiters();
        for _ in 0..100 {
            if self.book().idle() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}
