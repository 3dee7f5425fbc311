//! The records' state machine and the build queue, in one place:
//!
//! ```text
//! (new) ──create──▶ pending ──take──▶ pulling ──advance──▶ converting ──finish──▶ ready | failed
//!                     ▲  ▲                 │ cancel (delete, shutdown)                 │
//!                     │  └─ requeue: failed and POSTed again, ready with its disk gone ┘
//!                     └──── recover: pulling/converting after a restart
//! ```
//!
//! Every transition is a method here, run under the service's one lock
//! over the database and the queue, so a reader never sees a record and
//! a queue that disagree: a `pending` record is always in `waiting`, so it
//! always has a position. A digest is `busy` while a build or a cleanup of
//! its files runs; a waiting digest that is busy stays in line until the
//! busy one is released, so two builds, or a build and the deletion of its
//! files, never overlap. Each build carries the record's generation (its
//! `seq`): a build that was cancelled and superseded by a new record of the
//! same digest writes nothing into the new one.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use hoist::{Cancel, Digest, ImageMetadata, Platform, Reference};

use crate::db::{disk_rel_path, Db, ImageRow, Status};
use crate::disks::{Disks, Swept};
use crate::error::ServiceError;
use crate::metrics::Metrics;
use crate::progress::Tracker;
use crate::record::Record;
use crate::time::now_rfc3339;

enum Busy {
    Build { cancel: Cancel },
    Cleanup,
}

/// A build a worker took: everything it needs without the lock.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    pub digest: Digest,
    pub seq: i64,
    pub repo: String,
    pub platform: Platform,
    pub disk_path: String,
    pub cancel: Cancel,
}

/// How a build ended.
pub(crate) enum Outcome {
    Ready {
        size: u64,
    },
    Failed(ServiceError),
    /// Stopped by a cancel: a delete, or shutdown.
    Cancelled,
}

/// Files to remove outside the lock; the digest stays busy until
/// [`Book::release`].
#[must_use]
pub(crate) struct Cleanup {
    pub row: ImageRow,
}

/// A resolved image, as `POST /images` (or a push) hands it over.
pub(crate) struct NewImage {
    pub digest: Digest,
    pub repo: String,
    pub metadata: ImageMetadata,
    pub platform: Platform,
}

pub(crate) struct Book {
    db: Db,
    waiting: VecDeque<Digest>,
    busy: HashMap<Digest, Busy>,
    disks: Disks,
    format: &'static str,
    tracker: Arc<Tracker>,
    metrics: Arc<Metrics>,
    shutting_down: bool,
}

type R<T> = Result<T, ServiceError>;

impl Book {
    pub fn new(
        db: Db,
        disks: Disks,
        format: &'static str,
        tracker: Arc<Tracker>,
        metrics: Arc<Metrics>,
    ) -> Book {
        Book {
            db,
            waiting: VecDeque::new(),
            busy: HashMap::new(),
            disks,
            format,
            tracker,
            metrics,
            shutting_down: false,
        }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    fn gauge(&self) {
        self.metrics.queue_length.set(self.waiting.len() as i64);
    }

    fn enqueue(&mut self, d: &Digest) {
        if !self.waiting.contains(d) {
            self.waiting.push_back(d.clone());
        }
        self.gauge();
    }

    fn requeue(&mut self, d: &Digest) -> R<()> {
        self.db.requeue(d)?;
        self.enqueue(d);
        Ok(())
    }

    pub fn view(&self, name: String, row: &ImageRow) -> Record {
        let queue_position = if row.status == Status::Pending {
            self.waiting
                .iter()
                .position(|d| *d == row.digest)
                .map(|i| i + 1)
        } else {
            None
        };
        let progress = row
            .status
            .unfinished()
            .then(|| self.tracker.get(&row.digest))
            .flatten();
        Record::new(name, row, queue_position, progress, &self.disks)
    }

    /// A ready record whose disk is missing or truncated leaves `ready`
    /// and is built again (from the cache, where its blobs are).
    fn check_disk(&mut self, row: ImageRow) -> R<ImageRow> {
        if row.status != Status::Ready || self.disks.present(&row) {
            return Ok(row);
        }
        tracing::warn!(
            "{}: its disk {} is missing or truncated; building it again",
            row.digest,
            row.disk_path
        );
        self.requeue(&row.digest)?;
        Ok(self.db.image(&row.digest)?.unwrap_or(row))
    }

    /// `POST /images` after resolution: idempotent by digest. A failed
    /// image is queued again; a ready one gets its tag links.
    pub fn create(&mut self, name: &Reference, img: NewImage) -> R<Record> {
        let name_s = name.to_string();
        let row = match self.db.image(&img.digest)? {
            Some(row) => {
                self.db.set_name(&name_s, &row.digest)?;
                match row.status {
                    Status::Failed => self.requeue(&row.digest)?,
                    Status::Pending => self.enqueue(&row.digest),
                    _ => {}
                }
                let row = self.db.image(&row.digest)?.unwrap_or(row);
                let row = self.check_disk(row)?;
                if row.status == Status::Ready {
                    self.disks.link_tags(&row, std::slice::from_ref(&name_s));
                }
                row
            }
            None => {
                let row = ImageRow {
                    disk_path: disk_rel_path(&img.repo, &img.digest, self.format),
                    digest: img.digest,
                    repo: img.repo,
                    status: Status::Pending,
                    error: None,
                    error_code: None,
                    size_bytes: None,
                    metadata: img.metadata,
                    platform: img.platform,
                    format: self.format.to_string(),
                    created_at: now_rfc3339(),
                    seq: 0,
                };
                let seq = self.db.insert(&row, &name_s)?;
                self.enqueue(&row.digest);
                ImageRow { seq, ..row }
            }
        };
        Ok(self.view(name_s, &row))
    }

    /// A pushed manifest that cannot be built (an artifact, another
    /// platform): a `failed` record under its name, keyed by its digest, so
    /// the pusher can see why. An existing record of the digest only gets
    /// the name.
    pub fn create_failed(
        &mut self,
        name: &Reference,
        digest: &Digest,
        platform: &Platform,
        error: &ServiceError,
    ) -> R<()> {
        let name_s = name.to_string();
        if self.db.image(digest)?.is_some() {
            self.db.set_name(&name_s, digest)?;
            return Ok(());
        }
        let row = ImageRow {
            disk_path: disk_rel_path(&name.name(), digest, self.format),
            digest: digest.clone(),
            repo: name.name(),
            status: Status::Failed,
            error: Some(error.message()),
            error_code: Some(error.code().to_string()),
            size_bytes: None,
            metadata: ImageMetadata::default(),
            platform: platform.clone(),
            format: self.format.to_string(),
            created_at: now_rfc3339(),
            seq: 0,
        };
        self.db.insert(&row, &name_s)?;
        Ok(())
    }

    /// The record a name (tag or digest reference) points at.
    fn find(&self, r: &Reference) -> R<ImageRow> {
        let name = r.to_string();
        let digest = match self.db.digest_of(&name)? {
            Some(d) => d,
            None => match r.digest() {
                Some(d) => d.clone(),
                None => return Err(ServiceError::NotFound(format!("no image {name}"))),
            },
        };
        self.db
            .image(&digest)?
            .filter(|row| r.digest().is_none() || row.repo == r.name())
            .ok_or_else(|| ServiceError::NotFound(format!("no image {name}")))
    }

    pub fn get(&mut self, r: &Reference) -> R<Record> {
        let row = self.find(r)?;
        let row = self.check_disk(row)?;
        Ok(self.view(r.to_string(), &row))
    }

    pub fn list(&mut self, status: Option<Status>) -> R<Vec<Record>> {
        let mut names: HashMap<Digest, Vec<String>> = HashMap::new();
        for (n, d) in self.db.all_names()? {
            names.entry(d).or_default().push(n);
        }
        let mut out = Vec::new();
        for row in self.db.all()? {
            let row = self.check_disk(row)?;
            if status.is_some_and(|s| s != row.status) {
                continue;
            }
            match names.get(&row.digest) {
                Some(ns) => out.extend(ns.iter().map(|n| self.view(n.clone(), &row))),
                None => {
                    let n = format!("{}@{}", row.repo, row.digest);
                    out.push(self.view(n, &row));
                }
            }
        }
        Ok(out)
    }

    /// `DELETE /images/{name}`. A tag: removes it (and its link), and the
    /// image with its last name. A digest: removes the image unless a tag
    /// points at it. Removing an image cancels its build; its files go
    /// through the returned cleanup, or through the build's own end.
    pub fn delete(&mut self, r: &Reference) -> R<Option<Cleanup>> {
        let name = r.to_string();
        let row = self.find(r)?;
        if r.digest().is_some() {
            let tags: Vec<String> = self
                .db
                .names_of(&row.digest)?
                .into_iter()
                .filter(|n| !n.contains('@'))
                .collect();
            if !tags.is_empty() {
                return Err(ServiceError::InUse(format!(
                    "{name} is tagged as {}",
                    tags.join(", ")
                )));
            }
        } else {
            self.db.remove_name(&name)?;
            self.disks.remove_tag_link(r);
            if !self.db.names_of(&row.digest)?.is_empty() {
                return Ok(None);
            }
        }
        self.db.remove_image(&row.digest)?;
        self.waiting.retain(|d| *d != row.digest);
        self.gauge();
        self.tracker.clear(&row.digest);
        match self.busy.get(&row.digest) {
            Some(Busy::Build { cancel, .. }) => {
                cancel.cancel();
                Ok(None)
            }
            Some(Busy::Cleanup) => Ok(None),
            None => {
                self.busy.insert(row.digest.clone(), Busy::Cleanup);
                Ok(Some(Cleanup { row }))
            }
        }
    }

    /// The oldest waiting image whose digest is not busy, now `pulling`.
    pub fn take(&mut self) -> R<Option<Job>> {
        if self.shutting_down {
            return Ok(None);
        }
        while let Some(i) = self.waiting.iter().position(|d| !self.busy.contains_key(d)) {
            let Some(d) = self.waiting.remove(i) else {
                break;
            };
            self.gauge();
            let Some(row) = self.db.image(&d)? else {
                continue;
            };
            if row.status != Status::Pending {
                continue;
            }
            if !self.db.set_status(&d, row.seq, Status::Pulling)? {
                continue;
            }
            let cancel = Cancel::new();
            self.busy.insert(
                d.clone(),
                Busy::Build {
                    cancel: cancel.clone(),
                },
            );
            return Ok(Some(Job {
                digest: d,
                seq: row.seq,
                repo: row.repo,
                platform: row.platform,
                disk_path: row.disk_path,
                cancel,
            }));
        }
        Ok(None)
    }

    /// `pulling` → `converting`; false when the build is no longer wanted.
    pub fn advance(&mut self, job: &Job) -> R<bool> {
        if job.cancel.is_cancelled() {
            return Ok(false);
        }
        Ok(self
            .db
            .set_status(&job.digest, job.seq, Status::Converting)?)
    }

    /// The build's end. Its files are to be removed when its record is
    /// gone or superseded; the digest stays busy until [`Book::release`].
    pub fn finish(&mut self, job: &Job, outcome: Outcome) -> R<Option<Cleanup>> {
        let current = self.db.image(&job.digest)?.filter(|row| row.seq == job.seq);
        let Some(row) = current else {
            // Deleted (and maybe created again) while it ran.
            let row = ImageRow {
                digest: job.digest.clone(),
                repo: job.repo.clone(),
                status: Status::Failed,
                error: None,
                error_code: None,
                size_bytes: None,
                metadata: ImageMetadata::default(),
                platform: job.platform.clone(),
                format: self.format.into(),
                disk_path: job.disk_path.clone(),
                created_at: String::new(),
                seq: job.seq,
            };
            return Ok(Some(Cleanup { row }));
        };
        match outcome {
            Outcome::Ready { size } => {
                self.db.set_ready(&job.digest, job.seq, size)?;
                let names = self.db.names_of(&job.digest)?;
                self.disks.link_tags(&row, &names);
            }
            Outcome::Failed(e) => {
                let msg = hoist::escape_controls(&e.to_string()).into_owned();
                self.db.set_failed(&job.digest, job.seq, e.code(), &msg)?;
            }
            // Shutdown: left pulling or converting for recovery.
            Outcome::Cancelled if self.shutting_down => {}
            // Cancelled with the record still its own: nothing asked for
            // that, so build it again rather than leave it hanging.
            Outcome::Cancelled => self.requeue(&job.digest)?,
        }
        self.release(&job.digest);
        Ok(None)
    }

    /// The digest's build or cleanup is over.
    pub fn release(&mut self, d: &Digest) {
        self.busy.remove(d);
        self.tracker.clear(d);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down
    }

    pub fn idle(&self) -> bool {
        self.busy.is_empty()
    }

    /// Stop taking builds and cancel the running ones (their records stay
    /// `pulling`/`converting`, for recovery).
    pub fn shut_down(&mut self) {
        self.shutting_down = true;
        for b in self.busy.values() {
            if let Busy::Build { cancel, .. } = b {
                cancel.cancel();
            }
        }
    }

    /// At start: unfinished images back in line, oldest first, and ready
    /// ones whose disk is gone built again.
    pub fn recover(&mut self) -> R<()> {
        for row in self.db.all()? {
            match row.status {
                Status::Pending | Status::Pulling | Status::Converting => {
                    tracing::info!(
                        "recovery: re-queueing {} ({})",
                        row.digest,
                        row.status.as_str()
                    );
                    self.db.set_status(&row.digest, row.seq, Status::Pending)?;
                    self.enqueue(&row.digest);
                }
                Status::Ready => {
                    self.check_disk(row)?;
                }
                Status::Failed => {}
            }
        }
        Ok(())
    }

    /// Whether any build (or cleanup of a build's files) is running.
    pub fn building(&self) -> bool {
        !self.busy.is_empty()
    }

    /// GC of the disks, under the lock: nothing can be named between the
    /// moment the kept set is read and the sweep.
    pub fn sweep_disks(&self, dry_run: bool) -> R<Swept> {
        let keep: HashSet<String> = self.db.all()?.into_iter().map(|r| r.disk_path).collect();
        let busy: HashSet<String> = self.busy.keys().map(|d| d.hex().to_string()).collect();
        Ok(self.disks.sweep(&keep, &busy, dry_run))
    }

    /// Records for disks found on the filesystem when the database is
    /// empty (lost, truncated, new beside old disks): nothing is deleted
    /// because the state was lost. `inspect` reads the image's metadata
    /// from the cache where it is there.
    pub fn rebuild_from_disks(
        &mut self,
        inspect: impl Fn(&Digest) -> Option<(ImageMetadata, Platform)>,
        default_platform: &Platform,
    ) -> R<usize> {
        let found = self.disks.scan();
        let mut n = 0;
        for f in found {
            if self.db.image(&f.digest)?.is_some() {
                continue;
            }
            let (metadata, platform) = inspect(&f.digest)
                .unwrap_or_else(|| (ImageMetadata::default(), default_platform.clone()));
            let row = ImageRow {
                disk_path: disk_rel_path(&f.repo, &f.digest, &f.format),
                digest: f.digest.clone(),
                repo: f.repo.clone(),
                status: Status::Ready,
                error: None,
                error_code: None,
                size_bytes: Some(f.size),
                metadata,
                platform,
                format: f.format.clone(),
                created_at: now_rfc3339(),
                seq: 0,
            };
            let first = f
                .tags
                .first()
                .cloned()
                .unwrap_or_else(|| format!("{}@{}", f.repo, f.digest));
            self.db.insert(&row, &first)?;
            for t in f.tags.iter().skip(1) {
                self.db.set_name(t, &f.digest)?;
            }
            tracing::warn!(
                "state rebuilt: {} ({}) from {}",
                first,
                f.digest,
                row.disk_path
            );
            n += 1;
        }
        Ok(n)
    }
}
