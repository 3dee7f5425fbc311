//! hoist's image cache: a valid OCI image layout (`skopeo` and `umoci` read
//! it) whose blobs are content-addressed and verified before they are named.
//!
//! Crash safety comes from three rules: a blob reaches its final name only
//! by `rename` after its size and digest were checked and its bytes were
//! fsynced; `index.json` is replaced atomically under an exclusive lock; and
//! every temp file is flocked by its writer (see [`temp`]). A process killed
//! at any moment leaves at most a `*.partial` temp file, which `fsck` and
//! `gc` remove once its lock is free.
//!
//! The store owns everything under its root: blobs, `index.json`, the tree
//! metadata of unpacked images (`.hoist/trees/`), leases (`.hoist/leases/`)
//! and temp files (`.hoist/tmp/`).

mod blob;
mod error;
mod fsck;
mod gc;
mod index;
mod layout;
pub mod temp;

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use hoist_spec::{Digest, Hasher, Platform};

pub use blob::{BlobWriter, UploadWriter};
pub use error::StoreError;
pub use fsck::FsckReport;
pub use gc::{GcReport, Lease, Removed};
pub use index::{NewImage, NAMES, REF_NAME};
pub use layout::{parse_entries, verify, Layout, LayoutEntry};

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
    layout: Layout,
}

impl Store {
    /// Open (creating if needed) the layout at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store, StoreError> {
        let root = root.into();
        for dir in [
            root.join("blobs").join("sha256"),
            root.join("blobs").join("sha512"),
            root.join(".hoist").join("tmp"),
            root.join(".hoist").join("trees"),
            root.join(".hoist").join("leases"),
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
        Ok(Store {
            layout: Layout::new(&root),
            root,
        })
    }

    /// The store's root read as an OCI layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.layout.blob_path(d)
    }

    /// Present with the expected size. The digest was checked when it was
    /// written; `fsck` re-checks it.
    pub fn has_blob(&self, d: &Digest, size: u64) -> bool {
        self.layout.has_blob(d, size)
    }

    /// A new temp path in the store: `.hoist/tmp/<what>.<rand>.partial`.
    pub(crate) fn tmp_path(&self, what: &str) -> PathBuf {
        tmp_in(&self.root, what)
    }

    /// A writer for a blob of known digest and size.
    pub fn blob_writer(&self, expected: &Digest, size: u64) -> Result<BlobWriter, StoreError> {
        BlobWriter::create(
            self.tmp_path(expected.hex()),
            self.blob_path(expected),
            expected.clone(),
            size,
        )
    }

    /// A writer for a pushed blob whose digest is given only at the end.
    pub fn upload_writer(&self) -> Result<UploadWriter, StoreError> {
        UploadWriter::create(self.tmp_path("upload"), self.root.join("blobs"))
    }

    /// Record a pushed manifest or index under `name` (`repo:tag` or
    /// `repo@digest`) in index.json, so GC keeps it and all it reaches;
    /// a name already pointing elsewhere moves. Not an image entry: `images`,
    /// `rm` and `fsck`'s image check leave it alone.
    pub fn pin_pushed(
        &self,
        name: &str,
        digest: &Digest,
        media_type: &str,
        size: u64,
    ) -> Result<(), StoreError> {
        index::update(&self.root, |idx| {
            index::pin(idx, name, digest, media_type, size)
        })
    }

    /// Take `name` off the pushed manifest it names (a tag moved away, or
    /// deleted); the entry goes with its last name.
    pub fn unpin_pushed(&self, name: &str) -> Result<(), StoreError> {
        index::update(&self.root, |idx| index::unpin(idx, name))
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
        self.layout.read_blob(d, limit)
    }

    /// Open a blob for streaming, checking its size against the descriptor.
    /// Callers that need the digest checked hash while they read.
    pub fn open_blob(&self, d: &Digest, size: u64) -> Result<File, StoreError> {
        self.layout.open_blob(d, size)
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

    /// Where the record of a layer blob's verified diff_id is kept:
    /// `.hoist/verified/<algorithm>-<blob hex>`, holding the diff_id.
    fn verified_path(&self, blob: &Digest) -> PathBuf {
        self.root.join(".hoist").join("verified").join(format!(
            "{}-{}",
            blob.algorithm().as_str(),
            blob.hex()
        ))
    }

    /// The diff_id this layer blob was once verified to inflate to, if
    /// recorded. Trusting it is sound only while the blob's own digest is
    /// checked as it is read: a damaged blob fails that check.
    pub fn verified_diff_id(&self, blob: &Digest) -> Option<Digest> {
        let text = std::fs::read_to_string(self.verified_path(blob)).ok()?;
        text.trim().parse().ok()
    }

    /// Record that `blob` inflates to `diff_id` (both were just checked).
    pub fn record_diff_id(&self, blob: &Digest, diff_id: &Digest) -> Result<(), StoreError> {
        let p = self.verified_path(blob);
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).map_err(StoreError::io(dir))?;
        }
        write_atomically(&self.root, &p, format!("{diff_id}\n").as_bytes())
    }

    /// Every recorded (blob, diff_id) pair: what `fsck` checks.
    pub fn diff_id_records(&self) -> Vec<(Digest, Option<Digest>, PathBuf)> {
        let dir = self.root.join(".hoist").join("verified");
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let Some((algo, hex)) = name.split_once('-') else {
                continue;
            };
            let Ok(blob) = format!("{algo}:{hex}").parse::<Digest>() else {
                continue;
            };
            let diff = std::fs::read_to_string(e.path())
                .ok()
                .and_then(|t| t.trim().parse().ok());
            out.push((blob, diff, e.path()));
        }
        out
    }

    /// Where the tree metadata of an unpacked image is kept:
    /// `.hoist/trees/<digest hex>.v2.txt`.
    pub fn tree_meta_path(&self, d: &Digest) -> PathBuf {
        self.root
            .join(".hoist")
            .join("trees")
            .join(format!("{}.v2.txt", d.hex()))
    }

    /// Write an image's tree metadata atomically: `write` fills a locked temp
    /// file, which is then fsynced and renamed into place. Two writers of
    /// one image never share a temp file.
    pub fn write_tree_meta(
        &self,
        d: &Digest,
        write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    ) -> Result<PathBuf, StoreError> {
        let dest = self.tree_meta_path(d);
        let tmp = self.tmp_path(&format!("tree-{}", d.hex()));
        let mut t = temp::TempFile::create(tmp.clone()).map_err(StoreError::io(&tmp))?;
        {
            let mut w = std::io::BufWriter::new(t.file());
            write(&mut w).map_err(StoreError::io(&tmp))?;
            w.flush().map_err(StoreError::io(&tmp))?;
        }
        t.persist(&dest).map_err(StoreError::io(&dest))?;
        Ok(dest)
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

fn tmp_in(root: &Path, what: &str) -> PathBuf {
    root.join(".hoist")
        .join("tmp")
        .join(format!("{what}.{}.partial", temp::rand_tag()))
}

/// Write `bytes` to a locked temp file, fsync, rename onto `dest`, fsync
/// the directory.
pub(crate) fn write_atomically(root: &Path, dest: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let what = dest
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "file".into());
    let tmp = tmp_in(root, &what);
    let mut t = temp::TempFile::create(tmp.clone()).map_err(StoreError::io(&tmp))?;
    t.file().write_all(bytes).map_err(StoreError::io(&tmp))?;
    t.persist(dest).map_err(StoreError::io(dest))
}

#[cfg(test)]
mod tests;
