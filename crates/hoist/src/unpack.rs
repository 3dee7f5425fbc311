//! `Client::unpack`: pull through the cache, validate, then apply the layers
//! into a sibling temp directory that is renamed into place only on success.

use std::io::Read;
use std::path::{Path, PathBuf};

use hoist_spec::{Digest, ImageMetadata, Platform};
use hoist_store::temp::DirLock;
use hoist_unpack::{Guard, LayerOptions, Ownership, Unpacker};
use serde::Serialize;

use crate::client::Client;
use crate::error::Error;
use crate::op::Op;
use crate::pipeline::{Apply, Streamed};
use crate::source::ImageSource;

/// How to unpack. `Default` preserves owners as root and maps them to the
/// caller otherwise.
#[derive(Debug, Clone, Default)]
pub struct UnpackOptions {
    /// `None`: `Preserve` as root, `Caller` otherwise.
    pub ownership: Option<Ownership>,
    /// Re-hash each layer blob read from the cache (blobs were verified
    /// when they entered it; sizes are always checked).
    pub verify_blobs: bool,
}

/// What `unpack` produced: the rootfs and the image's run metadata.
#[derive(Debug, Clone, Serialize)]
pub struct Unpacked {
    pub source: String,
    pub digest: Digest,
    pub platform: Platform,
    pub rootfs: PathBuf,
    pub ownership: &'static str,
    /// The true owner, mode and device numbers of every path, as the tar
    /// headers give them (see `hoist_unpack::TreeMeta`).
    pub tree_metadata: PathBuf,
    pub diff_ids: Vec<Digest>,
    pub entries: u64,
    pub metadata: ImageMetadata,
}

fn target_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Target {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// The unpack's consumer: the tree being written, and its lock.
struct TreeApply {
    lock: DirLock,
    unpacker: Unpacker,
    what: String,
}

impl Apply for TreeApply {
    fn layer(
        &mut self,
        _index: usize,
        _diff_id: &Digest,
        stream: &mut dyn Read,
    ) -> Result<u64, Error> {
        Ok(self
            .unpacker
            .apply_layer(&mut &mut *stream)
            .map_err(|source| Error::Unpack {
                image: self.what.clone(),
                source,
            })?
            .entries)
    }
}

/// `dir` must not exist, or be an empty directory.
fn check_target(dir: &Path) -> Result<bool, Error> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(target_err(dir, e.to_string())),
        Ok(m) if !m.is_dir() => Err(target_err(dir, "exists and is not a directory")),
        Ok(_) => {
            let mut it = std::fs::read_dir(dir).map_err(|e| target_err(dir, e.to_string()))?;
            if it.next().is_some() {
                return Err(target_err(dir, "directory is not empty"));
            }
            Ok(true)
        }
    }
}

impl Client {
    /// Pull (through the cache) and write the image's root filesystem to
    /// `dir`. Nothing is added inside `dir`; after a failure `dir` is as it
    /// was (absent, or empty).
    pub fn unpack(
        &self,
        src: &ImageSource,
        dir: &Path,
        opts: &UnpackOptions,
        op: &Op,
    ) -> Result<Unpacked, Error> {
        op.finished(self.unpack_inner(src, dir, opts, op))
    }

    fn unpack_inner(
        &self,
        src: &ImageSource,
        dir: &Path,
        opts: &UnpackOptions,
        op: &Op,
    ) -> Result<Unpacked, Error> {
        let what = src.to_string();
        let existed = check_target(dir)?;
        crate::stale::remove_stale_siblings(dir);
        let ownership = opts
            .ownership
            .unwrap_or_else(Ownership::default_for_process);
        let tmp = crate::stale::temp_beside(dir, "tree")
            .ok_or_else(|| target_err(dir, "names no directory"))?;
        // The pull runs on its own thread and reports each layer as it is
        // verified; layers are applied in order as soon as they are there.
        let streamed = self.pull_and_stream(
            src,
            opts.verify_blobs,
            || {
                let lock = DirLock::create(&tmp).map_err(|e| target_err(&tmp, e.to_string()))?;
                let unpacker = Unpacker::new(
                    &tmp,
                    LayerOptions {
                        ownership,
                        guard: Guard::new(Some(op.cancel.clone()), Some(op.limits.max_entries)),
                    },
                )
                .map_err(|source| Error::Unpack {
                    image: what.clone(),
                    source,
                })?;
                Ok(TreeApply {
                    lock,
                    unpacker,
                    what: what.clone(),
                })
            },
            op,
        );
        let cleanup = || {
            if tmp.exists() {
                if let Err(rm) = hoist_unpack::remove_tree(&tmp) {
                    tracing::warn!("could not remove {}: {rm}", tmp.display());
                }
            }
        };
        let Streamed {
            pulled,
            config,
            entries,
            applier,
        } = match streamed {
            Ok(v) => v,
            Err(f) => {
                drop(f.applier);
                cleanup();
                return Err(f.error);
            }
        };
        let TreeApply { lock, unpacker, .. } = applier;
        let tree = match unpacker.finish() {
            Ok(t) => t,
            Err(source) => {
                cleanup();
                return Err(Error::Unpack {
                    image: what,
                    source,
                });
            }
        };
        let tree_metadata = self
            .store()
            .write_tree_meta(&pulled.digest, |w| tree.write_to(w))?;
        if existed {
            std::fs::remove_dir(dir).map_err(|e| target_err(dir, e.to_string()))?;
        }
        if let Err(e) = std::fs::rename(&tmp, dir) {
            let _ = hoist_unpack::remove_tree(&tmp);
            return Err(target_err(dir, e.to_string()));
        }
        drop(lock);
        Ok(Unpacked {
            source: what,
            digest: pulled.digest,
            platform: pulled.platform,
            rootfs: dir.to_path_buf(),
            ownership: match ownership {
                Ownership::Preserve => "preserve",
                Ownership::Caller => "caller",
            },
            tree_metadata,
            diff_ids: config.diff_ids,
            entries,
            metadata: config.metadata,
        })
    }

    /// The recorded tree metadata of an unpacked image, kept in the cache
    /// beside its blobs: `.hoist/trees/<digest hex>.v2.txt`.
    pub fn tree_metadata_path(&self, digest: &Digest) -> PathBuf {
        self.store().tree_meta_path(digest)
    }
}
