//! The pipeline that moves an image's layers from the registry or the
//! cache into a consumer: the pull runs on its own thread and reports each
//! layer as it is verified into the cache; each layer is read from the
//! cache, decompressed and hashed on threads of its own, held to the
//! image's limits, and handed, in order, to the consumer.
//!
//! The consumer is made by `start` once the config is validated, and only
//! then: a stage that has not started cannot be used, because it does not
//! exist yet.

use std::cell::Cell;
use std::collections::HashSet;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use hoist_spec::{Cancel, Digest, ImageConfig, ImageManifest};
use hoist_unpack::{Gate, LayerStream, StreamOptions, UnpackError};

use crate::client::{Client, PullEvents, Pulled};
use crate::error::Error;
use crate::op::{Limits, Op};
use crate::progress::Event;
use crate::source::ImageSource;

/// What the layers are applied to; made by `start` once the config has
/// been validated.
pub(crate) trait Apply {
    /// Apply layer `index` (its diff_id given) from its uncompressed tar
    /// stream; returns its entries.
    fn layer(
        &mut self,
        index: usize,
        diff_id: &Digest,
        stream: &mut dyn Read,
    ) -> Result<u64, Error>;
    /// Layer `index` was skipped: the pull's `skip` said its result is
    /// already at hand, so it was neither downloaded nor inflated.
    fn skipped(&mut self, _index: usize, _diff_id: &Digest) -> Result<(), Error> {
        Ok(())
    }
    /// Layer `index`'s stream matched its digests: what was made of it
    /// may now be trusted.
    fn verified(&mut self, _index: usize) -> Result<(), Error> {
        Ok(())
    }
}

/// Which layers (by diff_id) need not be pulled nor streamed.
pub(crate) type Skip<'a> = &'a (dyn Fn(&Digest) -> bool + Sync);

/// A pipeline that ran to its end.
pub(crate) struct Streamed<A> {
    pub pulled: Pulled,
    pub config: ImageConfig,
    pub entries: u64,
    pub applier: A,
}

/// A pipeline that failed, with the consumer if it had started (a writer
/// may know more about the failure than the layer stream does).
pub(crate) struct Failed<A> {
    pub error: Error,
    pub applier: Option<A>,
}

#[derive(Default)]
struct PipeState {
    plan: Option<(ImageManifest, ImageConfig)>,
    ready: HashSet<Digest>,
    /// Layer blobs the apply side does not need.
    skipped: HashSet<Digest>,
    done: bool,
}

/// The pull's progress as the unpack sees it.
struct Pipeline<'a> {
    what: String,
    skip: Skip<'a>,
    state: Mutex<PipeState>,
    cv: Condvar,
}

impl PullEvents for Pipeline<'_> {
    /// Validation before any file is written (the Go original's
    /// `validateConfigFileForUnpack`); an error stops the pull.
    fn resolved(&self, m: &ImageManifest, cfg: &ImageConfig) -> Result<(), Error> {
        cfg.validate_for_unpack(m.layers.len(), &self.what)?;
        let skipped = m
            .layers
            .iter()
            .zip(&cfg.diff_ids)
            .filter(|(_, d)| (self.skip)(d))
            .map(|(l, _)| l.descriptor.digest.clone())
            .collect();
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        st.plan = Some((m.clone(), cfg.clone()));
        st.skipped = skipped;
        drop(st);
        self.cv.notify_all();
        Ok(())
    }
    fn skips(&self, d: &Digest) -> bool {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .skipped
            .contains(d)
    }
    fn layer_ready(&self, d: &Digest) {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .ready
            .insert(d.clone());
        self.cv.notify_all();
    }
}

impl Pipeline<'_> {
    fn is_ready(&self, d: &Digest) -> bool {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .ready
            .contains(d)
    }

    fn finish(&self) {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .done = true;
        self.cv.notify_all();
    }

    /// Wait until `f` gives a value, or the pull has ended without one.
    fn wait<T>(&self, f: impl Fn(&PipeState) -> Option<T>) -> Option<T> {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(v) = f(&st) {
                return Some(v);
            }
            if st.done {
                return None;
            }
            st = self.cv.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// The compressed blob as the decompressor reads it: stops when the op is
/// cancelled, and counts the bytes read for the apply side's progress.
struct BlobReader {
    file: std::fs::File,
    cancel: Cancel,
    read: Arc<AtomicU64>,
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.cancel.check().map_err(std::io::Error::other)?;
        let n = self.file.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Progress of the layer being applied: its blob bytes read so far (the
/// inflate stage runs a little ahead of the apply).
struct Applying<'a> {
    op: &'a Op,
    index: usize,
    count: usize,
    size: u64,
    read: Arc<AtomicU64>,
    reported: u64,
}

impl Applying<'_> {
    fn tick(&mut self, last: bool) {
        let read = self.read.load(Ordering::Relaxed);
        if read - self.reported.min(read) >= 1 << 20 || (last && read != self.reported) {
            self.reported = read;
            self.op.emit(Event::Applying {
                index: self.index,
                count: self.count,
                bytes: read,
                size: self.size,
            });
        }
    }
}

/// The uncompressed stream, held to the image's byte budget and to the
/// bomb ratio. A violation is kept in `exceeded` (the tar reader would
/// flatten a typed error into text) and reported by `stream_layers`.
struct LimitedStream<'a> {
    inner: &'a mut LayerStream,
    progress: Applying<'a>,
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
        self.progress.tick(n == 0);
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

/// A layer's stream, started.
struct Opened {
    index: usize,
    stream: LayerStream,
    read: Arc<AtomicU64>,
    /// The store vouched for the diff_id: only the blob digest is checked.
    trusted: bool,
}

/// What the benchmarks switch off (or on) to measure what each part buys
/// (`HOIST_BENCH_ABLATE=split,records,spill`): the stage split (and the
/// inflating ahead), the diff_id verification records, and (`spill`) the
/// bound on the spool: with it, the inflater runs ahead to disk without
/// limit, as it did before. Never set in normal use.
struct Ablation {
    split: bool,
    records: bool,
    spill: bool,
}

fn ablation() -> &'static Ablation {
    static A: std::sync::OnceLock<Ablation> = std::sync::OnceLock::new();
    A.get_or_init(|| {
        let v = std::env::var("HOIST_BENCH_ABLATE").unwrap_or_default();
        let off = |k: &str| v.split(',').any(|x| x.trim() == k);
        Ablation {
            split: !off("split"),
            records: !off("records"),
            spill: off("spill"),
        }
    })
}

/// Bytes of inflated tar a stream holds in memory; past them its inflater
/// waits (the spool's disk is not used: see `hoist_unpack`'s spool).
const SPOOL_MEM: usize = 8 << 20;

impl Client {
    /// Start a layer's stages: read, inflate, hash. With a record that this
    /// blob inflates to `diff_id`, the blob's own digest is checked instead
    /// of the diff_id; without one, the diff_id is hashed (and the blob's
    /// digest too when `verify_blobs` asks).
    fn open_layer(
        &self,
        index: usize,
        layer: &hoist_spec::Layer,
        diff_id: &Digest,
        verify_blobs: bool,
        after: Option<Gate>,
        op: &Op,
    ) -> Result<Opened, Error> {
        let d = &layer.descriptor;
        let trusted = ablation().records
            && self.store().verified_diff_id(&d.digest).as_ref() == Some(diff_id);
        let read = Arc::new(AtomicU64::new(0));
        let blob = BlobReader {
            file: self.store().open_blob(&d.digest, d.size)?,
            cancel: op.cancel.clone(),
            read: read.clone(),
        };
        let stream = LayerStream::new(
            blob,
            StreamOptions {
                compression: layer.compression,
                blob_algo: (trusted || verify_blobs).then(|| d.digest.algorithm()),
                diff_algo: (!trusted).then(|| diff_id.algorithm()),
                spool_dir: self.store().root().join(".hoist").join("tmp"),
                spool_mem: SPOOL_MEM,
                spool_disk: if ablation().spill { u64::MAX } else { 0 },
                after,
                split: ablation().split,
            },
        );
        Ok(Opened {
            index,
            stream,
            read,
            trusted,
        })
    }

    /// What a cached blob hashes to, when that is not its name (checked only
    /// after a layer failed to read).
    fn blob_damage(&self, d: &hoist_spec::Descriptor) -> Option<Digest> {
        let got = hoist_store::hash_file(&self.store().blob_path(&d.digest), d.digest.algorithm())
            .ok()?;
        (got != d.digest).then_some(got)
    }

    /// Feed each layer, decompressed, to `apply` in order, as the pull
    /// makes them available; each stream's digests are checked after
    /// `apply` has read it. Returns the entries applied, or `Ok(None)` if
    /// the pull ended first (its error is the one to report).
    fn stream_layers<A: Apply>(
        &self,
        pipe: &Pipeline<'_>,
        verify_blobs: bool,
        what: &str,
        start: impl FnOnce() -> Result<A, Error>,
        applier: &mut Option<A>,
        op: &Op,
    ) -> Result<Option<u64>, Error> {
        let Some((manifest, config)) = pipe.wait(|st| st.plan.clone()) else {
            return Ok(None);
        };
        let diff_ids: &[Digest] = &config.diff_ids;
        let apply = applier.insert(start()?);
        let unpack_err = |source| Error::Unpack {
            image: what.to_string(),
            source,
        };
        let mut entries = 0;
        let total = Cell::new(0u64);
        let exceeded = Cell::new(None);
        let count = manifest.layers.len();
        // The next layer's stream, made early when its blob is already
        // here, so it inflates while this one is applied.
        let mut ahead: Option<Opened> = None;
        for (index, (layer, diff_id)) in manifest.layers.iter().zip(diff_ids).enumerate() {
            let d = &layer.descriptor;
            if pipe.skips(&d.digest) {
                apply.skipped(index, diff_id)?;
                op.emit(Event::LayerApplied {
                    index,
                    count,
                    entries: 0,
                });
                continue;
            }
            if pipe
                .wait(|st| st.ready.contains(&d.digest).then_some(()))
                .is_none()
            {
                return Ok(None);
            }
            let opened = match ahead.take() {
                Some(o) if o.index == index => o,
                _ => self.open_layer(index, layer, diff_id, verify_blobs, None, op)?,
            };
            if let Some((next, next_diff)) =
                manifest.layers.get(index + 1).zip(diff_ids.get(index + 1))
            {
                if ablation().split
                    && pipe.is_ready(&next.descriptor.digest)
                    && !pipe.skips(&next.descriptor.digest)
                {
                    let gate = opened.stream.inflated();
                    ahead = Some(self.open_layer(
                        index + 1,
                        next,
                        next_diff,
                        verify_blobs,
                        Some(gate),
                        op,
                    )?);
                }
            }
            let Opened {
                mut stream,
                read,
                trusted,
                ..
            } = opened;
            let mut budget = LimitedStream {
                inner: &mut stream,
                progress: Applying {
                    op,
                    index,
                    count,
                    size: d.size,
                    read,
                    reported: 0,
                },
                total: &total,
                layer: 0,
                compressed: d.size,
                limits: op.limits,
                what,
                exceeded: &exceeded,
            };
            let applied = apply.layer(index, diff_id, &mut budget);
            if let Some((kind, limit, actual)) = exceeded.get() {
                return Err(Error::Limit {
                    image: what.to_string(),
                    what: kind,
                    limit,
                    actual,
                });
            }
            // A layer that does not read whole (a bad gzip checksum, a tar
            // cut short) may be a damaged cache file: say so when it is.
            let damaged = |e: Error| match self.blob_damage(d) {
                Some(actual) => unpack_err(UnpackError::BlobMismatch {
                    layer: d.digest.to_string(),
                    expected: d.digest.to_string(),
                    actual: actual.to_string(),
                }),
                None => e,
            };
            let n = applied.map_err(damaged)?;
            entries += n;
            op.emit(Event::LayerApplied {
                index,
                count,
                entries: n,
            });
            let got = stream
                .finish()
                .map_err(|e| damaged(unpack_err(UnpackError::Read(e))))?;
            if let Some(actual) = got.compressed.filter(|c| c != &d.digest) {
                return Err(unpack_err(UnpackError::BlobMismatch {
                    layer: d.digest.to_string(),
                    expected: d.digest.to_string(),
                    actual: actual.to_string(),
                }));
            }
            match got.uncompressed {
                Some(actual) if &actual != diff_id => {
                    return Err(unpack_err(UnpackError::DiffIdMismatch {
                        layer: d.digest.to_string(),
                        expected: diff_id.to_string(),
                        actual: actual.to_string(),
                    }));
                }
                // Verified once: later unpacks check the blob's digest (a
                // third of the bytes) instead of hashing the tar again.
                Some(_) if !trusted && ablation().records => {
                    if let Err(e) = self.store().record_diff_id(&d.digest, diff_id) {
                        tracing::debug!("recording {}'s diff_id: {e}", d.digest);
                    }
                }
                _ => {}
            }
            apply.verified(index)?;
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
    pub(crate) fn pull_and_stream<A: Apply>(
        &self,
        src: &ImageSource,
        verify_blobs: bool,
        start: impl FnOnce() -> Result<A, Error>,
        op: &Op,
    ) -> Result<Streamed<A>, Failed<A>> {
        self.pull_and_stream_skipping(src, verify_blobs, &|_| false, start, op)
    }

    /// `pull_and_stream`, where the layers `skip` names are neither
    /// downloaded (unless cached) nor streamed: the applier is told.
    pub(crate) fn pull_and_stream_skipping<A: Apply>(
        &self,
        src: &ImageSource,
        verify_blobs: bool,
        skip: Skip<'_>,
        start: impl FnOnce() -> Result<A, Error>,
        op: &Op,
    ) -> Result<Streamed<A>, Failed<A>> {
        let what = src.to_string();
        let pipe = Pipeline {
            skip,
            what: what.clone(),
            state: Mutex::new(PipeState::default()),
            cv: Condvar::new(),
        };
        let pull_op = op.child();
        let mut applier: Option<A> = None;
        let (pulled, applied) = std::thread::scope(|s| {
            let puller = s.spawn(|| {
                let r = self.pull_checked(src, &pipe, &pull_op);
                pipe.finish();
                r
            });
            let applied = self.stream_layers(&pipe, verify_blobs, &what, start, &mut applier, op);
            if applied.is_err() {
                pull_op.cancel.cancel();
            }
            (
                puller.join().unwrap_or_else(|_| {
                    Err(Error::Target {
                        path: what.clone(),
                        reason: "the pull thread panicked".into(),
                    })
                }),
                applied,
            )
        });
        let fail = |error: Error, applier: Option<A>| Failed { error, applier };
        let pulled = match (pulled, applied) {
            // The apply side's error is the cause when it failed first: the
            // pull's is then only "cancelled".
            (Err(_), Err(e)) if !matches!(e, Error::Cancelled) && pull_op.cancel.is_cancelled() => {
                return Err(fail(e, applier))
            }
            (Err(e), _) => return Err(fail(e, applier)),
            (Ok(p), Err(e)) => {
                drop(p);
                return Err(fail(e, applier));
            }
            (Ok(p), Ok(None)) => {
                drop(p);
                return Err(fail(
                    Error::Target {
                        path: what,
                        reason: "the pull ended before every layer was in the cache".into(),
                    },
                    applier,
                ));
            }
            (Ok(p), Ok(Some(entries))) => (p, entries),
        };
        // The lease was held until every layer was applied; it goes now.
        let ((pulled, _manifest, config, _lease), entries) = pulled;
        match applier {
            Some(applier) => Ok(Streamed {
                pulled,
                config,
                entries,
                applier,
            }),
            None => Err(fail(
                Error::Target {
                    path: what,
                    reason: "no layer was applied".into(),
                },
                None,
            )),
        }
    }
}

/// Whether the blob at `path` (tar, gzip or zstd, told by its first bytes)
/// inflates to a tar stream whose digest is `diff_id`: how `fsck` checks a
/// verification record.
pub(crate) fn inflates_to(path: &std::path::Path, diff_id: &Digest) -> bool {
    use hoist_spec::media::Compression;
    let mut head = [0u8; 4];
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    let n = f.read(&mut head).unwrap_or(0);
    let compression = match &head[..n] {
        [0x1f, 0x8b, ..] => Compression::Gzip,
        [0x28, 0xb5, 0x2f, 0xfd] => Compression::Zstd,
        _ => Compression::None,
    };
    let Ok(f) = std::fs::File::open(path) else {
        return false;
    };
    let stream = LayerStream::new(
        f,
        StreamOptions {
            compression,
            blob_algo: None,
            diff_algo: Some(diff_id.algorithm()),
            spool_dir: std::env::temp_dir(),
            spool_mem: SPOOL_MEM,
            spool_disk: 0,
            after: None,
            split: true,
        },
    );
    stream
        .finish()
        .is_ok_and(|d| d.uncompressed.as_ref() == Some(diff_id))
}
