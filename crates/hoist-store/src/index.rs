//! `index.json`: one entry per cached image, changed only under an exclusive
//! lock and replaced atomically, so concurrent pulls never lose an entry.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::path::Path;

use hoist_spec::{media, Digest, Platform};
use serde::{Deserialize, Serialize};

use crate::error::StoreError;

pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Comma-separated normalised names (`docker.io/library/alpine:latest`) that
/// point at this image for its platform.
pub const NAMES: &str = "dev.hoist.image.names";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct IndexFile {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default)]
    pub manifests: Vec<IndexEntry>,
    /// Whatever else another tool wrote is kept.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Default for IndexFile {
    fn default() -> Self {
        IndexFile {
            schema_version: 2,
            media_type: Some(media::OCI_INDEX.to_string()),
            manifests: Vec::new(),
            extra: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct IndexEntry {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl IndexEntry {
    pub fn names(&self) -> Vec<String> {
        self.annotations
            .get(NAMES)
            .map(|s| {
                s.split(',')
                    .filter(|n| !n.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }
    pub(crate) fn set_names(&mut self, names: &[String]) {
        if names.is_empty() {
            self.annotations.remove(NAMES);
        } else {
            self.annotations.insert(NAMES.into(), names.join(","));
        }
    }
    pub fn is_hoist_entry(&self) -> bool {
        self.digest
            .parse::<Digest>()
            .is_ok_and(|d| self.annotations.get(REF_NAME).map(String::as_str) == Some(d.hex()))
    }
}

pub(crate) fn read(path: &Path) -> Result<IndexFile, StoreError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::CorruptLayout {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(IndexFile::default()),
        Err(e) => Err(StoreError::io(path)(e)),
    }
}

/// What the pull of one image adds.
#[derive(Debug, Clone)]
pub struct NewImage {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
    pub platform: Platform,
    /// The normalised name it was pulled as, if any (digest pulls have none).
    pub name: Option<String>,
}

/// Apply `new` to `idx`: one entry per digest keyed by its hex, and a name
/// moves away from any other image of the same platform.
pub(crate) fn add(idx: &mut IndexFile, new: &NewImage) {
    if let Some(name) = &new.name {
        for e in idx.manifests.iter_mut() {
            if e.digest != new.digest.to_string() && e.platform.as_ref() == Some(&new.platform) {
                let names: Vec<String> = e.names().into_iter().filter(|n| n != name).collect();
                e.set_names(&names);
            }
        }
    }
    let pos = idx
        .manifests
        .iter()
        .position(|e| e.digest == new.digest.to_string() && e.is_hoist_entry());
    let entry = match pos {
        Some(i) => &mut idx.manifests[i],
        None => {
            let mut annotations = BTreeMap::new();
            annotations.insert(REF_NAME.to_string(), new.digest.hex().to_string());
            idx.manifests.push(IndexEntry {
                media_type: media::to_oci(&new.media_type).to_string(),
                digest: new.digest.to_string(),
                size: new.size,
                platform: Some(new.platform.clone()),
                annotations,
                extra: BTreeMap::new(),
            });
            idx.manifests.last_mut().expect("just pushed")
        }
    };
    if let Some(name) = &new.name {
        let mut names = entry.names();
        if !names.contains(name) {
            names.push(name.clone());
            names.sort();
        }
        entry.set_names(&names);
    }
}

/// Names (`repo:tag`, comma-separated) of a manifest pushed to the service.
pub const PUSHED: &str = "dev.hoist.pushed.names";

fn pushed_names(e: &IndexEntry) -> Vec<String> {
    e.annotations
        .get(PUSHED)
        .map(|s| {
            s.split(',')
                .filter(|n| !n.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn unpin(idx: &mut IndexFile, name: &str) {
    for e in idx.manifests.iter_mut() {
        let names = pushed_names(e);
        if names.iter().any(|n| n == name) {
            let rest: Vec<String> = names.into_iter().filter(|n| n != name).collect();
            e.annotations.insert(PUSHED.into(), rest.join(","));
        }
    }
    idx.manifests.retain(|e| {
        !e.annotations.contains_key(PUSHED) || !pushed_names(e).is_empty() || e.is_hoist_entry()
    });
    for e in idx.manifests.iter_mut() {
        if e.annotations.get(PUSHED).is_some_and(|v| v.is_empty()) {
            e.annotations.remove(PUSHED);
        }
    }
}

pub(crate) fn pin(idx: &mut IndexFile, name: &str, d: &Digest, media_type: &str, size: u64) {
    unpin(idx, name);
    let ds = d.to_string();
    let pos = idx
        .manifests
        .iter()
        .position(|e| e.digest == ds && !e.is_hoist_entry());
    let e = match pos {
        Some(i) => &mut idx.manifests[i],
        None => {
            idx.manifests.push(IndexEntry {
                media_type: media_type.to_string(),
                digest: ds,
                size,
                platform: None,
                annotations: BTreeMap::new(),
                extra: BTreeMap::new(),
            });
            idx.manifests.last_mut().expect("just pushed")
        }
    };
    let mut names = pushed_names(e);
    names.push(name.to_string());
    names.sort();
    names.dedup();
    e.annotations.insert(PUSHED.into(), names.join(","));
}

/// The store's exclusive lock, held while the value lives. Every change of
/// index.json, every lease change and GC run under it.
pub(crate) struct Locked {
    _file: File,
}

pub(crate) fn lock(root: &Path) -> Result<Locked, StoreError> {
    let lock_path = root.join(".hoist").join("lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(StoreError::io(&lock_path))?;
    file.lock().map_err(StoreError::io(&lock_path))?;
    Ok(Locked { _file: file })
}

/// Run `f` on index.json under the store's exclusive lock, then replace the
/// file atomically (write a temp file, fsync, rename over, fsync the dir).
pub(crate) fn update<T>(root: &Path, f: impl FnOnce(&mut IndexFile) -> T) -> Result<T, StoreError> {
    let _lock = lock(root)?;
    update_locked(root, f)
}

/// `update` for a caller that already holds the lock.
pub(crate) fn update_locked<T>(
    root: &Path,
    f: impl FnOnce(&mut IndexFile) -> T,
) -> Result<T, StoreError> {
    let path = root.join("index.json");
    let mut idx = read(&path)?;
    let out = f(&mut idx);
    let bytes = serde_json::to_vec_pretty(&idx).expect("index serialises");
    crate::write_atomically(root, &path, &bytes)?;
    Ok(out)
}
