//! GC and metrics: what the service removes and what it reports.

use std::path::PathBuf;

use serde::Serialize;

use crate::db::Status;
use crate::disks::dir_bytes;
use crate::error::ServiceError;
use crate::metrics::label;
use crate::service::Service;

#[derive(Debug, Serialize)]
pub struct GcResult {
    pub cache: hoist::GcReport,
    pub disk_files: Vec<PathBuf>,
    pub disk_bytes: u64,
}

impl Service {
    /// Update the gauges that are read from the state, then encode.
    pub fn metrics_text(&self) -> String {
        {
            let book = self.book();
            if let Ok(counts) = book.db().count_by_status() {
                for s in Status::ALL {
                    let n = counts.iter().find(|(x, _)| *x == s).map_or(0, |(_, n)| *n);
                    self.metrics
                        .images
                        .get_or_create(&label(s.as_str()))
                        .set(n as i64);
                }
            }
            if let Ok(b) = book.db().ready_bytes() {
                self.metrics.images_bytes.set(b as i64);
            }
        }
        self.metrics
            .cache_bytes
            .set(dir_bytes(&self.client.layout_path().join("blobs")) as i64);
        self.metrics.encode()
    }

    /// GC: the cache's (unreachable blobs, stale temps, dead leases), then
    /// the disks' (files under `images/` that no record names, temps whose
    /// writer is gone, dangling tag links). Never a running build's, and
    /// never a disk of a record: the state was checked at start, and an
    /// empty state beside disks was rebuilt from them.
    pub fn gc(&self, dry_run: bool) -> Result<GcResult, ServiceError> {
        let cache = self
            .client
            .gc(dry_run)
            .map_err(|e| ServiceError::from(&e))?;
        let swept = self.book().sweep_disks(dry_run)?;
        Ok(GcResult {
            cache,
            disk_files: swept.files,
            disk_bytes: swept.bytes,
        })
    }
}
