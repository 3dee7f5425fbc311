//! The build queue and its workers: FIFO by digest, each build on a
//! blocking thread through the facade, one shared `Client` for all (one
//! download limit, single flight of blobs), each with its own `Op` (cancel
//! token, progress keyed by digest).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use hoist::{Cancel, ErrorKind, ExportOptions, ImageSource, Op, OpId, Progress, Reference};

use crate::error::{api_error, ApiError};
use crate::metrics::label;
use crate::service::Service;
use crate::state::Status;

#[derive(Default)]
pub(crate) struct Queue {
    pub(crate) waiting: VecDeque<String>,
    pub(crate) running: HashMap<String, Cancel>,
}

impl Service {
    /// Re-queue every image a killed server left pending, pulling or
    /// converting, oldest first. Their temp files are removed by the
    /// rebuild of the same target (its stale siblings) and by GC.
    pub(crate) fn recover(&self) -> Result<(), ApiError> {
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

    pub(crate) fn enqueue(&self, digest: &str) {
        let mut q = self.queue.lock().expect("lock");
        if !q.waiting.iter().any(|d| d == digest) && !q.running.contains_key(digest) {
            q.waiting.push_back(digest.to_string());
        }
        self.metrics.queue_length.set(q.waiting.len() as i64);
        drop(q);
        self.wake.notify_one();
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
    pub(crate) fn build(&self, digest: &str, cancel: Cancel) -> Result<(), Option<ApiError>> {
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

    pub(crate) fn set_status(&self, digest: &str, s: Status) -> Result<(), Option<ApiError>> {
        self.db()
            .set_status(digest, s)
            .map_err(|e| Some(ApiError::internal(e)))
    }
}
