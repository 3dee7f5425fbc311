//! The image record as the API shows it, made from a stored row, its place
//! in the queue and its build's progress.

use hoist::Digest;
use serde::Serialize;

use crate::db::{ImageRow, Status};
use crate::disks::Disks;
use crate::progress::BuildProgress;

/// The image record of the API: the Go original's fields plus `user`,
/// `platform`, `format`, `disk_path`, `error_code` and `progress`.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub name: String,
    pub digest: Digest,
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
    /// Absolute: the data directory as the server was started on it, joined
    /// with the stored relative path.
    pub disk_path: Option<String>,
    /// With shared layers, once ready: the layer files the META disk
    /// names as its devices, lowest layer first (the VMM attaches them
    /// after the disk, in this order).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub devices: Option<Vec<String>>,
    pub created_at: String,
    pub progress: Option<BuildProgress>,
}

fn some_vec(v: &[String]) -> Option<Vec<String>> {
    (!v.is_empty()).then(|| v.to_vec())
}

fn some_str(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

impl Record {
    pub(crate) fn new(
        name: String,
        r: &ImageRow,
        queue_position: Option<usize>,
        progress: Option<BuildProgress>,
        disks: &Disks,
    ) -> Record {
        let md = &r.metadata;
        Record {
            name,
            digest: r.digest.clone(),
            status: r.status,
            queue_position,
            error: r.error.clone(),
            error_code: r.error_code.clone(),
            size_bytes: r.size_bytes,
            entrypoint: some_vec(&md.entrypoint),
            cmd: some_vec(&md.cmd),
            env: md.env.clone(),
            working_dir: some_str(&md.working_dir),
            user: some_str(&md.user),
            platform: r.platform.to_string(),
            format: r.format.clone(),
            disk_path: Some(disks.abs(&r.disk_path).display().to_string()),
            devices: (r.status == Status::Ready)
                .then(|| disks.devices(r))
                .flatten()
                .map(|v| v.iter().map(|p| p.display().to_string()).collect()),
            created_at: r.created_at.clone(),
            progress,
        }
    }
}
