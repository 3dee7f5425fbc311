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
    /// With shared layers: layer files no record's META names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer_files: Option<LayerGcResult>,
}

#[derive(Debug, Serialize)]
pub struct LayerGcResult {
    pub kept: u64,
    pub removed: u64,
    pub bytes_removed: u64,
    /// Skipped while a build runs: it may be about to use any of them.
    pub skipped: bool,
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
        if self.disks.shared_layers() {
            let files = hoist::LayerDir::open(&self.disks.layers_dir())
                .map(|d| d.files())
                .unwrap_or_default();
            self.metrics.layer_files.set(files.len() as i64);
            self.metrics
                .layer_files_bytes
                .set(files.iter().map(|(_, b)| *b as i64).sum());
        }
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
        let layer_files = self
            .disks
            .shared_layers()
            .then(|| self.gc_layers(dry_run))
            .transpose()?;
        Ok(GcResult {
            cache,
            disk_files: swept.files,
            disk_bytes: swept.bytes,
            layer_files,
        })
    }

    /// Layer files no record's META names. Under the book's lock, and not
    /// while any build runs: a build may have found a file it is about to
    /// name.
    fn gc_layers(&self, dry_run: bool) -> Result<LayerGcResult, ServiceError> {
        let book = self.book();
        if book.building() {
            return Ok(LayerGcResult {
                kept: 0,
                removed: 0,
                bytes_removed: 0,
                skipped: true,
            });
        }
        let dir = hoist::LayerDir::open(&self.disks.layers_dir())
            .map_err(|e| ServiceError::LocalIo(e.to_string()))?;
        let mut keep = std::collections::BTreeSet::new();
        for row in book.db().all()? {
            keep.extend(hoist::meta_devices(&self.disks.abs(&row.disk_path)).unwrap_or_default());
        }
        let r = dir
            .gc(&keep, dry_run)
            .map_err(|e| ServiceError::LocalIo(e.to_string()))?;
        Ok(LayerGcResult {
            kept: r.kept,
            removed: r.removed,
            bytes_removed: r.bytes_removed,
            skipped: false,
        })
    }
}
