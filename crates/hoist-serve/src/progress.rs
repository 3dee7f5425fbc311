//! Build progress as the record's `progress` shows it, fed by the
//! facade's events (one sink for every build; the op id is the digest).

use std::collections::HashMap;
use std::sync::Mutex;

use hoist::{Digest, Event, OpId, Progress};
use serde::Serialize;

#[derive(Debug, Clone, Default, Serialize)]
pub struct BuildProgress {
    /// `resolving`, `pulling`, `applying`, `exporting`.
    pub stage: &'static str,
    /// Layer bytes held (downloaded or already cached) and in all.
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub layers_applied: usize,
    pub layers_total: usize,
    #[serde(skip)]
    blobs: HashMap<Digest, u64>,
}

#[derive(Default)]
pub struct Tracker {
    builds: Mutex<HashMap<String, BuildProgress>>,
}

impl Tracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, BuildProgress>> {
        self.builds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
    pub fn get(&self, digest: &Digest) -> Option<BuildProgress> {
        self.lock().get(&digest.to_string()).cloned()
    }
    pub fn clear(&self, digest: &Digest) {
        self.lock().remove(&digest.to_string());
    }
}

impl Progress for Tracker {
    fn event(&self, op: &OpId, e: &Event<'_>) {
        let mut all = self.lock();
        let p = all.entry(op.as_str().to_string()).or_default();
        let mut blob = |d: &Digest, n: u64| {
            p.blobs.insert(d.clone(), n);
            p.bytes_done = p.blobs.values().sum();
        };
        match *e {
            Event::Resolving { .. } if p.stage.is_empty() => p.stage = "resolving",
            Event::Resolved { layers, bytes, .. } => {
                p.stage = "pulling";
                p.bytes_total = bytes;
                p.layers_total = layers;
            }
            Event::BlobProgress { digest, bytes } => blob(digest, bytes),
            Event::BlobCached { digest, size } => blob(digest, size),
            Event::Applying { .. } => p.stage = "applying",
            Event::LayerApplied { index, count, .. } => {
                p.stage = "applying";
                p.layers_applied = index + 1;
                p.layers_total = count;
            }
            Event::Exporting { .. } => p.stage = "exporting",
            _ => {}
        }
    }
}
