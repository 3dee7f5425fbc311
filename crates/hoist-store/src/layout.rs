//! A read-only OCI image layout: where blobs live, reading them verified,
//! and `index.json`'s entries. The store reads its own root through it,
//! and the `oci:` source any other layout.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use hoist_spec::{Digest, Platform};

use crate::error::StoreError;

#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

/// One `index.json` entry as a reader sees it.
#[derive(Debug, Clone)]
pub struct LayoutEntry {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    pub platform: Option<Platform>,
    pub annotations: BTreeMap<String, String>,
}

impl LayoutEntry {
    /// `org.opencontainers.image.ref.name`, the entry's tag in a layout.
    pub fn ref_name(&self) -> Option<&str> {
        self.annotations
            .get(crate::index::REF_NAME)
            .map(String::as_str)
    }
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>) -> Layout {
        Layout { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(d.algorithm().as_str())
            .join(d.hex())
    }

    /// Present with the expected size.
    pub fn has_blob(&self, d: &Digest, size: u64) -> bool {
        std::fs::metadata(self.blob_path(d)).is_ok_and(|m| m.is_file() && m.len() == size)
    }

    /// Read a whole blob of at most `limit` bytes and check its digest.
    pub fn read_blob(&self, d: &Digest, limit: u64) -> Result<Vec<u8>, StoreError> {
        let path = self.blob_path(d);
        let file = File::open(&path).map_err(|e| missing_or(d, &path, e))?;
        let len = file.metadata().map_err(StoreError::io(&path))?.len();
        if len > limit {
            return Err(StoreError::TooLarge {
                digest: d.clone(),
                size: len,
                limit,
            });
        }
        let mut bytes = Vec::with_capacity(len as usize);
        file.take(limit + 1)
            .read_to_end(&mut bytes)
            .map_err(StoreError::io(&path))?;
        verify(d, &bytes)?;
        Ok(bytes)
    }

    /// Open a blob for streaming, checking its size against the descriptor.
    /// Callers that need the digest checked hash while they read.
    pub fn open_blob(&self, d: &Digest, size: u64) -> Result<File, StoreError> {
        let path = self.blob_path(d);
        let file = File::open(&path).map_err(|e| missing_or(d, &path, e))?;
        let len = file.metadata().map_err(StoreError::io(&path))?.len();
        if len != size {
            return Err(StoreError::SizeMismatch {
                digest: d.clone(),
                expected: size,
                actual: len,
            });
        }
        Ok(file)
    }

    /// The entries of `index.json` (a layout without one is not a layout).
    pub fn entries(&self) -> Result<Vec<LayoutEntry>, StoreError> {
        let path = self.root.join("index.json");
        let bytes = std::fs::read(&path).map_err(|e| StoreError::CorruptLayout {
            path: self.root.clone(),
            reason: format!("not an OCI image layout (index.json: {e})"),
        })?;
        parse_entries(&bytes, &path)
    }
}

/// The entries of an `index.json` read from anywhere (a directory, a tar).
pub fn parse_entries(bytes: &[u8], path: &Path) -> Result<Vec<LayoutEntry>, StoreError> {
    let idx: crate::index::IndexFile =
        serde_json::from_slice(bytes).map_err(|e| StoreError::CorruptLayout {
            path: path.to_path_buf(),
            reason: format!("index.json is malformed: {e}"),
        })?;
    idx.manifests
        .into_iter()
        .map(|e| {
            Ok(LayoutEntry {
                digest: e.digest.parse().map_err(|err| StoreError::CorruptLayout {
                    path: path.to_path_buf(),
                    reason: format!("index.json: {err}"),
                })?,
                media_type: e.media_type,
                size: e.size,
                platform: e.platform,
                annotations: e.annotations,
            })
        })
        .collect()
}

fn missing_or(d: &Digest, path: &Path, e: std::io::Error) -> StoreError {
    if e.kind() == std::io::ErrorKind::NotFound {
        StoreError::MissingBlob { digest: d.clone() }
    } else {
        StoreError::io(path)(e)
    }
}

/// The bytes hash to `d`.
pub fn verify(d: &Digest, bytes: &[u8]) -> Result<(), StoreError> {
    let actual = Digest::of(d.algorithm(), bytes);
    if &actual != d {
        return Err(StoreError::DigestMismatch {
            expected: d.clone(),
            actual,
        });
    }
    Ok(())
}
