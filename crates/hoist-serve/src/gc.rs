//! GC and metrics: what the service removes and what it reports.

use std::path::PathBuf;

use serde::Serialize;

use crate::disks::{dir_bytes, sweep};
use crate::error::{api_error, ApiError};
use crate::metrics::label;
use crate::service::Service;
use crate::state::Status;

#[derive(Debug, Serialize)]
pub struct GcResult {
    pub cache: hoist::GcReport,
    pub disk_files: Vec<PathBuf>,
    pub disk_bytes: u64,
}

impl Service {
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
}
