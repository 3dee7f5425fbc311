//! hoist's image cache: a valid OCI image layout (`skopeo` and `umoci` read
//! it) whose blobs are content-addressed and verified before they are named.
//!
//! Crash safety comes from two rules: a blob reaches its final name only by
//! `rename` after its size and digest were checked, and `index.json` is
//! replaced atomically under an exclusive lock. A process killed at any
//! moment leaves at most a `*.partial` temp file, which `fsck` removes.

mod blob;
mod error;
mod fsck;
mod index;

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use hoist_spec::{Digest, Hasher, Platform};

pub use blob::BlobWriter;
pub use error::StoreError;
pub use fsck::FsckReport;
pub use index::{NewImage, NAMES, REF_NAME};

/// The on-disk format version; a new layout goes into a new directory.
pub const FORMAT_DIR: &str = "oci-v1";
const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// An image recorded in the cache.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CachedImage {
    pub digest: Digest,
    pub media_type: String,
    /// Size of the manifest blob itself.
    pub manifest_size: u64,
    pub platform: Option<Platform>,
    pub names: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Open (creating if needed) the layout at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store, StoreError> {
        let root = root.into();
        for dir in [
            root.join("blobs").join("sha256"),
            root.join("blobs").join("sha512"),
            root.join(".hoist").join("tmp"),
        ] {
            std::fs::create_dir_all(&dir).map_err(StoreError::io(&dir))?;
        }
        let layout = root.join("oci-layout");
        if !layout.exists() {
            write_atomically(&root, &layout, OCI_LAYOUT)?;
        }
        let index = root.join("index.json");
        if !index.exists() {
            index::update(&root, |_| ())?;
        }
        Ok(Store { root })
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

    /// Present with the expected size. The digest was checked when it was
    /// written; `fsck` re-checks it.
    pub fn has_blob(&self, d: &Digest, size: u64) -> bool {
        std::fs::metadata(self.blob_path(d)).is_ok_and(|m| m.is_file() && m.len() == size)
    }

    fn tmp_path(&self, d: &Digest) -> PathBuf {
        self.root.join(".hoist").join("tmp").join(format!(
            "{}.{}.{:x}.partial",
            d.hex(),
            std::process::id(),
            fastrand::u64(..)
        ))
    }

    /// A writer for a blob of known digest and size.
    pub fn blob_writer(&self, expected: &Digest, size: u64) -> Result<BlobWriter, StoreError> {
        BlobWriter::create(
            self.tmp_path(expected),
            self.blob_path(expected),
            expected.clone(),
            size,
        )
    }

    /// Write a small blob held in memory (manifests, configs), verified.
    pub fn write_blob(&self, expected: &Digest, bytes: &[u8]) -> Result<(), StoreError> {
        if self.has_blob(expected, bytes.len() as u64) {
            return Ok(());
        }
        let mut w = self.blob_writer(expected, bytes.len() as u64)?;
        let tmp = self.root.join(".hoist").join("tmp");
        w.write_all(bytes).map_err(StoreError::io(tmp))?;
        w.commit()
    }

    /// Read a whole blob of at most `limit` bytes and check its digest.
    pub fn read_blob(&self, d: &Digest, limit: u64) -> Result<Vec<u8>, StoreError> {
        let path = self.blob_path(d);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::MissingBlob { digest: d.clone() })
            }
            Err(e) => return Err(StoreError::io(&path)(e)),
        };
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
        let actual = Digest::of(d.algorithm(), &bytes);
        if &actual != d {
            return Err(StoreError::DigestMismatch {
                expected: d.clone(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// Open a blob for streaming, checking its size against the descriptor.
    /// Callers that need the digest checked hash while they read.
    pub fn open_blob(&self, d: &Digest, size: u64) -> Result<File, StoreError> {
        let path = self.blob_path(d);
        let file = File::open(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => StoreError::MissingBlob { digest: d.clone() },
            _ => StoreError::io(&path)(e),
        })?;
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

    /// Record a pulled image in index.json (under the lock).
    pub fn add_image(&self, new: &NewImage) -> Result<(), StoreError> {
        index::update(&self.root, |idx| index::add(idx, new))
    }

    /// Every image hoist recorded, in index order.
    pub fn images(&self) -> Result<Vec<CachedImage>, StoreError> {
        let idx = index::read(&self.root.join("index.json"))?;
        Ok(idx
            .manifests
            .iter()
            .filter(|e| e.is_hoist_entry())
            .filter_map(|e| {
                Some(CachedImage {
                    digest: e.digest.parse().ok()?,
                    media_type: e.media_type.clone(),
                    manifest_size: e.size,
                    platform: e.platform.clone(),
                    names: e.names(),
                })
            })
            .collect())
    }

    /// Whether index.json records this manifest digest.
    pub fn has_image(&self, d: &Digest) -> Result<bool, StoreError> {
        Ok(self.images()?.iter().any(|i| &i.digest == d))
    }

    /// The digest a normalised name points at for a platform.
    pub fn lookup_name(
        &self,
        name: &str,
        platform: &Platform,
    ) -> Result<Option<Digest>, StoreError> {
        Ok(self
            .images()?
            .into_iter()
            .find(|i| {
                i.platform.as_ref().is_some_and(|p| platform.matches(p))
                    && i.names.iter().any(|n| n == name)
            })
            .map(|i| i.digest))
    }

    /// Check every blob and every entry; with `repair`, delete what is bad.
    pub fn fsck(&self, repair: bool) -> Result<FsckReport, StoreError> {
        fsck::run(self, repair)
    }
}

/// sha256 of a file's contents, streamed.
pub fn hash_file(path: &Path, algorithm: hoist_spec::Algorithm) -> std::io::Result<Digest> {
    let mut f = File::open(path)?;
    let mut h = Hasher::new(algorithm);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(h.finish());
        }
        h.update(&buf[..n]);
    }
}

fn write_atomically(root: &Path, dest: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = root.join(".hoist").join("tmp").join(format!(
        "file.{}.{:x}.partial",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::write(&tmp, bytes).map_err(StoreError::io(&tmp))?;
    std::fs::rename(&tmp, dest).map_err(StoreError::io(dest))
}

#[cfg(test)]
mod tests;
