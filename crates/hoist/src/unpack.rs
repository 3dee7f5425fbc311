//! `Client::unpack`: pull through the cache, validate, then apply the layers
//! into a sibling temp directory that is renamed into place only on success.

use std::cell::Cell;
use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};

use hoist_spec::{Cancel, Digest, ImageConfig, ImageManifest, ImageMetadata, Platform};
use hoist_store::temp::DirLock;
use hoist_unpack::{Guard, LayerOptions, LayerStream, Ownership, UnpackError, Unpacker};
use serde::Serialize;

use crate::client::{Client, PullEvents, Pulled};
use crate::error::Error;
use crate::op::{Limits, Op};
use crate::progress::Event;
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

#[derive(Default)]
struct PipeState {
    plan: Option<(ImageManifest, ImageConfig)>,
    ready: HashSet<Digest>,
    done: bool,
}

/// The pull's progress as the unpack sees it.
struct Pipeline {
    what: String,
    state: Mutex<PipeState>,
    cv: Condvar,
}

impl PullEvents for Pipeline {
    /// Validation before any file is written (the Go original's
    /// `validateConfigFileForUnpack`); an error stops the pull.
    fn resolved(&self, m: &ImageManifest, cfg: &ImageConfig) -> Result<(), Error> {
        cfg.validate_for_unpack(m.layers.len(), &self.what)?;
        self.state.lock().expect("lock").plan = Some((m.clone(), cfg.clone()));
        self.cv.notify_all();
        Ok(())
    }
    fn layer_ready(&self, d: &Digest) {
        self.state.lock().expect("lock").ready.insert(d.clone());
        self.cv.notify_all();
    }
}

impl Pipeline {
    fn finish(&self) {
        self.state.lock().expect("lock").done = true;
        self.cv.notify_all();
    }

    /// Wait until `f` gives a value, or the pull has ended without one.
    fn wait<T>(&self, f: impl Fn(&PipeState) -> Option<T>) -> Option<T> {
        let mut st = self.state.lock().expect("lock");
        loop {
            if let Some(v) = f(&st) {
                return Some(v);
            }
            if st.done {
                return None;
            }
            st = self.cv.wait(st).expect("lock");
        }
    }
}

/// What `pull_and_stream` hands its consumer: `Start` once the config has
/// been validated, then each layer's uncompressed tar stream in order.
pub(crate) enum Step<'s> {
    Start,
    Layer(&'s mut dyn Read),
}

/// The compressed blob as the decompressor reads it: stops when the op is
/// cancelled, and reports how far the layer has been applied.
struct BlobReader {
    file: std::fs::File,
    cancel: Cancel,
    op: Op,
    index: usize,
    count: usize,
    size: u64,
    read: u64,
    reported: u64,
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.cancel.check().map_err(std::io::Error::other)?;
        let n = self.file.read(buf)?;
        self.read += n as u64;
        if self.read - self.reported >= 1 << 20 || (n == 0 && self.read != self.reported) {
            self.reported = self.read;
            self.op.emit(Event::Applying {
                index: self.index,
                count: self.count,
                bytes: self.read,
                size: self.size,
            });
        }
        Ok(n)
    }
}

/// The uncompressed stream, held to the image's byte budget and to the
/// bomb ratio. A violation is kept in `exceeded` (the tar reader would
/// flatten a typed error into text) and reported by `stream_layers`.
struct LimitedStream<'a> {
    inner: &'a mut LayerStream,
    total: &'a Cell<u64>,
    layer: u64,
    compressed: u64,
    limits: Limits,
    what: &'a str,
    exceeded: &'a Cell<Option<(&'static str, u64, u64)>>,
}

impl Read for LimitedStream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.layer += n as u64;
        self.total.set(self.total.get() + n as u64);
        let l = &self.limits;
        let over = if self.total.get() > l.max_image_bytes {
            Some(("uncompressed bytes", l.max_image_bytes, self.total.get()))
        } else if self.layer > 1 << 30 && self.layer / self.compressed.max(1) > l.max_ratio {
            Some((
                "times its compressed size (a decompression bomb?)",
                l.max_ratio,
                self.layer / self.compressed.max(1),
            ))
        } else {
            None
        };
        if let Some(v) = over {
            self.exceeded.set(Some(v));
            return Err(std::io::Error::other(format!(
                "{}: over the limit of {}",
                self.what, v.1
            )));
        }
        Ok(n)
    }
}

/// Where the verified layer streams go; returns the entries applied.
pub(crate) type Consumer<'a> = dyn FnMut(Step<'_>) -> Result<u64, Error> + 'a;

impl Client {
    /// Feed each layer, decompressed, to `apply` in order, as the pull
    /// makes them available; each stream's digests are checked after
    /// `apply` has read it. Returns the entries applied, or `Ok(None)` if
    /// the pull ended first (its error is the one to report).
    fn stream_layers(
        &self,
        pipe: &Pipeline,
        verify_blobs: bool,
        what: &str,
        apply: &mut Consumer<'_>,
        op: &Op,
    ) -> Result<Option<u64>, Error> {
        let Some((manifest, config)) = pipe.wait(|st| st.plan.clone()) else {
            return Ok(None);
        };
        let diff_ids: &[Digest] = &config.diff_ids;
        apply(Step::Start)?;
        let unpack_err = |source| Error::Unpack {
            image: what.to_string(),
            source,
        };
        let mut entries = 0;
        let total = Cell::new(0u64);
        let exceeded = Cell::new(None);
        let count = manifest.layers.len();
        for (index, (layer, diff_id)) in manifest.layers.iter().zip(diff_ids).enumerate() {
            let d = &layer.descriptor;
            if pipe
                .wait(|st| st.ready.contains(&d.digest).then_some(()))
                .is_none()
            {
                return Ok(None);
            }
            let blob = BlobReader {
                file: self.store().open_blob(&d.digest, d.size)?,
                cancel: op.cancel.clone(),
                op: op.clone(),
                index,
                count,
                size: d.size,
                read: 0,
                reported: 0,
            };
            let mut stream = LayerStream::new(
                blob,
                layer.compression,
                verify_blobs.then(|| d.digest.algorithm()),
                diff_id.algorithm(),
            );
            let mut budget = LimitedStream {
                inner: &mut stream,
                total: &total,
                layer: 0,
                compressed: d.size,
                limits: op.limits,
                what,
                exceeded: &exceeded,
            };
            let applied = apply(Step::Layer(&mut budget));
            if let Some((kind, limit, actual)) = exceeded.get() {
                return Err(Error::Limit {
                    image: what.to_string(),
                    what: kind,
                    limit,
                    actual,
                });
            }
            let n = applied?;
            entries += n;
            op.emit(Event::LayerApplied {
                index,
                count,
                entries: n,
            });
            let got = stream
                .finish()
                .map_err(|e| unpack_err(UnpackError::Read(e)))?;
            if let Some(actual) = got.compressed.filter(|c| c != &d.digest) {
                return Err(unpack_err(UnpackError::BlobMismatch {
                    layer: d.digest.to_string(),
                    expected: d.digest.to_string(),
                    actual: actual.to_string(),
                }));
            }
            if &got.uncompressed != diff_id {
                return Err(unpack_err(UnpackError::DiffIdMismatch {
                    layer: d.digest.to_string(),
                    expected: diff_id.to_string(),
                    actual: got.uncompressed.to_string(),
                }));
            }
        }
        Ok(Some(entries))
    }

    /// Pull `src` on its own thread while `stream_layers` feeds the layers
    /// to `apply` as they are verified into the cache. `start` runs once
    /// the config has been validated, before the first layer.
    ///
    /// A failure on either side stops the other: the apply side cancels the
    /// pull's child token (no more layers are downloaded), and a failed
    /// pull wakes the apply side, which then reports the pull's error.
    pub(crate) fn pull_and_stream(
        &self,
        src: &ImageSource,
        verify_blobs: bool,
        apply: &mut Consumer<'_>,
        op: &Op,
    ) -> Result<(Pulled, ImageConfig, u64), Error> {
        let what = src.to_string();
        let pipe = Pipeline {
            what: what.clone(),
            state: Mutex::new(PipeState::default()),
            cv: Condvar::new(),
        };
        let pull_op = op.child();
        let (pulled, applied) = std::thread::scope(|s| {
            let puller = s.spawn(|| {
                let r = self.pull_checked(src, &pipe, &pull_op);
                pipe.finish();
                r
            });
            let applied = self.stream_layers(&pipe, verify_blobs, &what, apply, op);
            if applied.is_err() {
                pull_op.cancel.cancel();
            }
            (puller.join().expect("the pull thread panicked"), applied)
        });
        // The apply side's error is the cause when it failed first: the
        // pull's is then only "cancelled".
        if let (Err(_), Err(e)) = (&pulled, &applied) {
            if !matches!(e, Error::Cancelled) && pull_op.cancel.is_cancelled() {
                return Err(applied.expect_err("checked"));
            }
        }
        // The lease was held until every layer was applied; it goes now.
        let (pulled, _manifest, config, _lease) = pulled?;
        match applied? {
            Some(entries) => Ok((pulled, config, entries)),
            None => Err(Error::Target {
                path: what,
                reason: "the pull ended before every layer was in the cache".into(),
            }),
        }
    }

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
        let mut lock: Option<DirLock> = None;
        // The pull runs on its own thread and reports each layer as it is
        // verified; layers are applied in order as soon as they are there.
        let mut unpacker: Option<Unpacker> = None;
        let streamed = self.pull_and_stream(
            src,
            opts.verify_blobs,
            &mut |step| {
                let unpack_err = |source| Error::Unpack {
                    image: what.clone(),
                    source,
                };
                match step {
                    Step::Start => {
                        lock = Some(
                            DirLock::create(&tmp).map_err(|e| target_err(&tmp, e.to_string()))?,
                        );
                        let u = Unpacker::new(
                            &tmp,
                            LayerOptions {
                                ownership,
                                guard: Guard::new(
                                    Some(op.cancel.clone()),
                                    Some(op.limits.max_entries),
                                ),
                            },
                        )
                        .map_err(unpack_err)?;
                        unpacker = Some(u);
                        Ok(0)
                    }
                    Step::Layer(stream) => {
                        let u = unpacker.as_mut().expect("started");
                        Ok(u.apply_layer(&mut &mut *stream)
                            .map_err(unpack_err)?
                            .entries)
                    }
                }
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
        let (pulled, config, entries) = match streamed {
            Ok(v) => v,
            Err(e) => {
                cleanup();
                return Err(e);
            }
        };
        let finished = unpacker.expect("started").finish();
        let tree = match finished {
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
