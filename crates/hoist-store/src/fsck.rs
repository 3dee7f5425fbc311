//! Consistency check of the cache: every blob's digest equals its name,
//! every recorded image has all its blobs, and no temp file of a dead
//! process lingers.

use std::path::PathBuf;

use hoist_spec::{manifest, Algorithm, Digest, Manifest};
use serde::Serialize;

use crate::error::StoreError;
use crate::{hash_file, index, Store};

#[derive(Debug, Default, Serialize)]
pub struct FsckReport {
    pub layout: PathBuf,
    pub blobs_checked: usize,
    pub images_checked: usize,
    /// Blob files whose content does not match their name.
    pub corrupt_blobs: Vec<PathBuf>,
    /// Files under blobs/ that are not named by a digest.
    pub stray_files: Vec<PathBuf>,
    /// `image digest: missing blob` lines.
    pub incomplete_images: Vec<String>,
    /// Temp files left by processes that no longer run.
    pub stale_temp_files: Vec<PathBuf>,
    /// diff_id records checked (each layer inflated again and hashed).
    pub records_checked: usize,
    /// Records whose blob is gone or damaged, or does not inflate to the
    /// diff_id they state.
    pub bad_records: Vec<PathBuf>,
    pub repaired: bool,
}

impl FsckReport {
    /// Nothing found: no corrupt blob, stray file or incomplete image, and
    /// no temp file of a dead writer (a killed pull's; `--repair`, `gc` or
    /// the next `hoist serve` start removes those). A live writer's temp
    /// files are not counted.
    pub fn is_clean(&self) -> bool {
        self.corrupt_blobs.is_empty()
            && self.stray_files.is_empty()
            && self.incomplete_images.is_empty()
            && self.stale_temp_files.is_empty()
            && self.bad_records.is_empty()
    }
}

const MANIFEST_LIMIT: u64 = 16 << 20;

pub(crate) fn run(store: &Store, repair: bool) -> Result<FsckReport, StoreError> {
    let root = store.root();
    let mut r = FsckReport {
        layout: root.to_path_buf(),
        repaired: repair,
        ..Default::default()
    };
    for (algo, dir) in [(Algorithm::Sha256, "sha256"), (Algorithm::Sha512, "sha512")] {
        let dir = root.join("blobs").join(dir);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(StoreError::io(&dir)(e)),
        };
        for entry in entries {
            let path = entry.map_err(StoreError::io(&dir))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let Ok(want) = format!("{}:{name}", algo.as_str()).parse::<Digest>() else {
                r.stray_files.push(path);
                continue;
            };
            r.blobs_checked += 1;
            let ok = hash_file(&path, algo).is_ok_and(|got| got == want);
            if !ok {
                r.corrupt_blobs.push(path);
            }
        }
    }
    for dir in ["tmp", "leases"] {
        let dir = root.join(".hoist").join(dir);
        if let Ok((stale, _)) = crate::temp::scan(&dir) {
            r.stale_temp_files.extend(stale);
        }
    }
    let images = store.images()?;
    let mut bad_images = Vec::new();
    for img in &images {
        r.images_checked += 1;
        let before = r.incomplete_images.len();
        check_image(
            store,
            &img.digest,
            img.manifest_size,
            &r.corrupt_blobs,
            &mut r.incomplete_images,
        );
        if r.incomplete_images.len() > before {
            bad_images.push(img.digest.to_string());
        }
    }
    if repair {
        for p in r.corrupt_blobs.iter().chain(&r.stale_temp_files) {
            let _ = std::fs::remove_file(p);
        }
        if !bad_images.is_empty() {
            index::update(root, |idx| {
                idx.manifests
                    .retain(|e| !(e.is_hoist_entry() && bad_images.contains(&e.digest)))
            })?;
        }
    }
    Ok(r)
}

/// Blob contents were hashed in the first pass; `corrupt` is its verdict.
fn check_image(
    store: &Store,
    digest: &Digest,
    size: u64,
    corrupt: &[PathBuf],
    problems: &mut Vec<String>,
) {
    let need = |d: &Digest, size: u64, what: &str, problems: &mut Vec<String>| -> bool {
        let ok = store.has_blob(d, size) && !corrupt.contains(&store.blob_path(d));
        if !ok {
            problems.push(format!("{digest}: {what} {d} missing or corrupt"));
        }
        ok
    };
    if !need(digest, size, "manifest", problems) {
        return;
    }
    let m = match store
        .read_blob(digest, MANIFEST_LIMIT)
        .map_err(|e| e.to_string())
        .and_then(|b| manifest::parse_manifest(&b, None, "cached image").map_err(|e| e.to_string()))
    {
        Ok(Manifest::Image(m)) => m,
        Ok(Manifest::Index(_)) => {
            problems.push(format!("{digest}: recorded as an image but is an index"));
            return;
        }
        Err(e) => {
            problems.push(format!("{digest}: manifest unreadable: {e}"));
            return;
        }
    };
    need(&m.config.digest, m.config.size, "config", problems);
    for l in &m.layers {
        need(&l.descriptor.digest, l.descriptor.size, "layer", problems);
    }
}
