//! The build workers: each takes the oldest buildable image from the book,
//! builds it on a blocking thread through the facade (one shared `Client`:
//! one download limit, single flight of blobs), and reports the outcome.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hoist::{ErrorKind, Event, ExportOptions, ImageSource, Op, OpId, Progress, Reference};

use crate::book::{Job, Outcome};
use crate::error::ServiceError;
use crate::metrics::label;
use crate::service::Service;

impl Service {
    /// The worker loop; `max_concurrent_builds` of these run.
    pub async fn worker(self: Arc<Self>) {
        loop {
            let svc = self.clone();
            let job = tokio::task::spawn_blocking(move || svc.book().take()).await;
            let job = match job {
                Ok(Ok(Some(job))) => job,
                Ok(Ok(None)) => {
                    if self.book().is_shutting_down() {
                        return;
                    }
                    // Woken by new work; the timeout only guards against a
                    // lost wake-up.
                    let _ =
                        tokio::time::timeout(Duration::from_secs(1), self.wake.notified()).await;
                    continue;
                }
                Ok(Err(e)) => {
                    tracing::error!("taking a build: {}", e.message());
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                Err(e) => {
                    tracing::error!("taking a build: {e}");
                    continue;
                }
            };
            let svc = self.clone();
            let started = Instant::now();
            let digest = job.digest.clone();
            let done = tokio::task::spawn_blocking(move || svc.run(job)).await;
            let status = done.unwrap_or_else(|e| {
                tracing::error!("build of {digest} panicked: {e}");
                "failed"
            });
            self.metrics
                .build_duration
                .get_or_create(&label(status))
                .observe(started.elapsed().as_secs_f64());
        }
    }

    /// One build from start to its recorded end; returns the metric label.
    fn run(self: &Arc<Self>, job: Job) -> &'static str {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.build(&job)))
            .unwrap_or_else(|_| {
                Outcome::Failed(ServiceError::Internal("the build panicked".into()))
            });
        let status = match &outcome {
            Outcome::Ready { .. } => "ready",
            Outcome::Failed(e) => {
                tracing::warn!("build of {} failed: {}", job.digest, e.message());
                "failed"
            }
            Outcome::Cancelled => "cancelled",
        };
        // Bound first: the lock must be let go before a cleanup takes it.
        let finished = self.book().finish(&job, outcome);
        match finished {
            Ok(None) => {}
            Ok(Some(cleanup)) => {
                self.clean(cleanup);
                return "cancelled";
            }
            Err(e) => {
                tracing::error!("recording the build of {}: {}", job.digest, e.message());
                self.book().release(&job.digest);
            }
        }
        self.wake.notify_one();
        status
    }

    /// One facade call: export resolves the image once, pulls what the
    /// cache lacks while it applies the layers, and writes the disk. The
    /// record moves to `converting` when the facade says every blob is in
    /// the cache. A pushed image (its host is this server) is built from
    /// the cache alone: no registry is contacted.
    fn build(self: &Arc<Self>, job: &Job) -> Outcome {
        let r: Reference = match format!("{}@{}", job.repo, job.digest).parse() {
            Ok(r) => r,
            Err(e) => return Outcome::Failed(ServiceError::internal(e)),
        };
        let local = self.is_own_registry(r.registry());
        let src = ImageSource::Registry(r);
        let events = Arc::new(BuildEvents {
            svc: self.clone(),
            job: job.clone(),
            pulled: AtomicBool::new(false),
        });
        let mut op = Op::new()
            .with_id(OpId::new(job.digest.to_string()))
            .with_cancel(job.cancel.clone())
            .with_progress(events.clone() as Arc<dyn Progress>)
            .with_limits(self.opts.limits)
            .with_platform(job.platform.clone());
        if local {
            op = op.offline();
        }
        let out = self.disks.abs(&job.disk_path);
        if let Some(dir) = out.parent() {
            if let Err(e) = std::fs::create_dir_all(dir) {
                return Outcome::Failed(ServiceError::LocalIo(format!("{}: {e}", dir.display())));
            }
        }
        let opts = ExportOptions {
            format: self.opts.format,
            shared_layers: self.disks.shared_layers().then(|| self.disks.layers_dir()),
            ..ExportOptions::default()
        };
        let done = self.client.export(&src, &out, &opts, &op);
        let pulled = events.pulled.load(Ordering::SeqCst);
        if !pulled {
            self.metrics
                .pulls
                .get_or_create(&label(if done.is_ok() { "ok" } else { "failed" }))
                .inc();
        }
        match done {
            Ok(e) => Outcome::Ready { size: e.size },
            Err(e) if job.cancel.is_cancelled() || matches!(e.kind(), ErrorKind::Cancelled) => {
                Outcome::Cancelled
            }
            Err(e) => {
                self.count_unreachable(&e);
                Outcome::Failed(ServiceError::from(&e))
            }
        }
    }
}

/// A build's events: into the record's progress, and `Pulled` moves the
/// record to `converting` (or cancels a build whose record is gone).
struct BuildEvents {
    svc: Arc<Service>,
    job: Job,
    pulled: AtomicBool,
}

impl Progress for BuildEvents {
    fn event(&self, op: &OpId, e: &Event<'_>) {
        self.svc.tracker.event(op, e);
        if let Event::Pulled { .. } = e {
            if self.pulled.swap(true, Ordering::SeqCst) {
                return;
            }
            self.svc.metrics.pulls.get_or_create(&label("ok")).inc();
            let advanced = self.svc.book().advance(&self.job);
            if !matches!(advanced, Ok(true)) {
                self.job.cancel.cancel();
            }
        }
    }
}
