//! The image record as the API shows it, made from a stored row, the
//! queue and the progress tracker.

use serde::Serialize;

use crate::progress::BuildProgress;
use crate::service::Service;
use crate::state::{ImageRow, Status};

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

impl Service {
    pub(crate) fn record(&self, name: String, r: &ImageRow) -> Record {
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
}
