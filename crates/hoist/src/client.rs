//! The facade: resolve a source to one platform's manifest, inspect it, and
//! pull it into the cache.

use std::collections::HashSet;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use hoist_registry::{BlobSink, RawManifest, RegistryClient, RegistryOptions};
use hoist_spec::manifest::{self, available_platforms, entry_platform, index_candidates};
use hoist_spec::media::{self, ManifestKind};
use hoist_spec::{
    metadata, Descriptor, Digest, ImageConfig, ImageManifest, Layer, Manifest, Platform, SpecError,
};
use hoist_store::{BlobWriter, CachedImage, FsckReport, Lease, NewImage, Store, FORMAT_DIR};
use serde::Serialize;

use crate::error::Error;
use crate::op::Op;
use crate::progress::Event;
use crate::source::{Fetcher, ImageSource, OciSource, Offline, Remote};

const MAX_INDEX_DEPTH: usize = 4;

/// What a pull reports as it goes: `unpack` applies layer *i* while later
/// ones are still downloading.
pub(crate) trait PullEvents: Sync {
    /// The manifest and config, before any layer is fetched; an error
    /// stops the pull.
    fn resolved(&self, _m: &ImageManifest, _cfg: &ImageConfig) -> Result<(), Error> {
        Ok(())
    }
    /// This layer blob is in the cache, verified.
    fn layer_ready(&self, _d: &Digest) {}
    /// This layer blob is not needed: not fetched if missing.
    fn skips(&self, _d: &Digest) -> bool {
        false
    }
}

/// Everything a [`Client`] is configured with. `Default` gives the CLI's
/// defaults: the user's cache directory, `linux/<host arch>`, four
/// downloads at once. Per-call settings (cancellation, progress, platform,
/// credentials, limits) travel in an [`Op`].
#[derive(Clone)]
pub struct ClientOptions {
    /// The cache's base directory; the layout lives in a versioned
    /// subdirectory of it.
    pub cache_dir: PathBuf,
    /// The platform of calls whose `Op` names none.
    pub platform: Platform,
    pub registry: RegistryOptions,
    /// Blobs downloaded at once, across every operation of this client.
    pub concurrency: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            cache_dir: default_cache_dir(),
            platform: Platform::host(),
            registry: RegistryOptions::default(),
            concurrency: 4,
        }
    }
}

/// `$HOIST_CACHE_DIR`, else `$XDG_CACHE_HOME/hoist`, else `~/.cache/hoist`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("HOIST_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("hoist");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| ".".into());
    home.join(".cache").join("hoist")
}

/// What `inspect` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    pub source: String,
    /// The platform manifest's digest: the cache key.
    pub digest: Digest,
    pub media_type: String,
    pub platform: Platform,
    pub config: Descriptor,
    pub layers: Vec<Layer>,
    pub layer_count: usize,
    pub layers_size: u64,
    pub diff_ids: Vec<Digest>,
    pub metadata: hoist_spec::ImageMetadata,
}

impl Inspection {
    fn of(source: String, digest: Digest, m: &ImageManifest, cfg: ImageConfig) -> Inspection {
        Inspection {
            source,
            digest,
            media_type: m.media_type.clone(),
            platform: cfg.platform,
            config: m.config.clone(),
            layer_count: m.layers.len(),
            layers_size: m.layers_size(),
            layers: m.layers.clone(),
            diff_ids: cfg.diff_ids,
            metadata: cfg.metadata,
        }
    }
}

/// What `pull` did.
#[derive(Debug, Clone, Serialize)]
pub struct Pulled {
    pub source: String,
    pub digest: Digest,
    pub platform: Platform,
    /// True when the image was already complete in the cache.
    pub cached: bool,
    pub blobs_fetched: usize,
    pub bytes_fetched: u64,
    /// Bytes each registry host served (mirrors and the registry), by host.
    pub bytes_by_host: std::collections::BTreeMap<String, u64>,
    pub layout: PathBuf,
}

/// A cached image with its total size.
#[derive(Debug, Clone, Serialize)]
pub struct ImageSummary {
    #[serde(flatten)]
    pub image: CachedImage,
    /// Manifest, config and layers.
    pub size: u64,
}

/// One platform's manifest, resolved from a source.
struct Resolved {
    raw: RawManifest,
    manifest: ImageManifest,
    /// Indexes walked to get here, stored so a later pull by the index's
    /// digest needs no request.
    indexes: Vec<RawManifest>,
}

/// A counting semaphore whose waits give up when the op is cancelled.
struct Permits {
    free: Mutex<usize>,
    cv: Condvar,
}

struct Permit<'a>(&'a Permits);

impl Permits {
    fn acquire(&self, op: &Op) -> Result<Permit<'_>, Error> {
        let mut free = self.free.lock().expect("lock");
        loop {
            op.cancel.check().map_err(|_| Error::Cancelled)?;
            if *free > 0 {
                *free -= 1;
                return Ok(Permit(self));
            }
            free = self
                .cv
                .wait_timeout(free, Duration::from_millis(50))
                .expect("lock")
                .0;
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().expect("lock") += 1;
        self.0.cv.notify_one();
    }
}

/// Single flight by digest: one download of a blob at a time in this
/// process; whoever waited finds it in the cache.
#[derive(Default)]
struct Flights {
    busy: Mutex<HashSet<Digest>>,
    cv: Condvar,
}

struct Flight<'a> {
    flights: &'a Flights,
    digest: Digest,
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        self.flights.busy.lock().expect("lock").remove(&self.digest);
        self.flights.cv.notify_all();
    }
}

struct Inner {
    opts: ClientOptions,
    store: Store,
    registry: RegistryClient,
    downloads: Permits,
    flights: Flights,
}

/// The facade. Cheap to clone: clones share one cache, one registry client
/// (connections, tokens), one limit on concurrent downloads and single
/// flight of blobs, so N operations at once never open more than
/// `concurrency` downloads nor fetch a shared layer twice.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    pub fn new(opts: ClientOptions) -> Result<Client, Error> {
        let store = Store::open(opts.cache_dir.join(FORMAT_DIR))?;
        let registry = RegistryClient::new(opts.registry.clone())?;
        let n = opts.concurrency.clamp(1, 64);
        Ok(Client {
            inner: Arc::new(Inner {
                opts,
                store,
                registry,
                downloads: Permits {
                    free: Mutex::new(n),
                    cv: Condvar::new(),
                },
                flights: Flights::default(),
            }),
        })
    }

    fn opts(&self) -> &ClientOptions {
        &self.inner.opts
    }

    /// The OCI image layout that holds the cache.
    pub fn layout_path(&self) -> &std::path::Path {
        self.inner.store.root()
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Manifests, indexes and configs above this are refused unread.
    pub fn max_manifest_size(&self) -> u64 {
        self.opts().registry.max_manifest_size
    }

    /// The platform of calls whose `Op` names none.
    pub fn default_platform(&self) -> &Platform {
        &self.opts().platform
    }

    /// Remove the temp files a killed process left in the cache (its
    /// `*.partial` blobs and dead leases); a live writer's are never
    /// touched. `hoist serve` runs this at start.
    pub fn sweep_temps(&self) -> Result<Vec<PathBuf>, Error> {
        Ok(self.store().sweep_temps()?)
    }

    /// The inspection of an image whose manifest and config the cache
    /// holds, without any request; `None` when either is missing.
    pub fn inspect_cached(&self, digest: &Digest) -> Result<Option<Inspection>, Error> {
        let limit = self.opts().registry.max_manifest_size;
        let Ok(bytes) = self.store().read_blob(digest, limit) else {
            return Ok(None);
        };
        let what = digest.to_string();
        let Manifest::Image(m) = manifest::parse_manifest(&bytes, None, &what)? else {
            return Ok(None);
        };
        if !self.store().has_blob(&m.config.digest, m.config.size) {
            return Ok(None);
        }
        let cfg_bytes = self
            .store()
            .read_blob(&m.config.digest, limit)
            .map_err(|source| Error::Blob {
                image: what.clone(),
                source,
            })?;
        let cfg = metadata::parse_config(&cfg_bytes, &what)?;
        Ok(Some(Inspection::of(what, digest.clone(), &m, cfg)))
    }

    fn platform<'a>(&'a self, op: &'a Op) -> &'a Platform {
        op.platform.as_ref().unwrap_or(&self.opts().platform)
    }

    fn fetcher(&self, src: &ImageSource, op: &Op) -> Result<Box<dyn Fetcher + '_>, Error> {
        let max = self.opts().registry.max_manifest_size;
        // Local sources are recorded under their absolute path.
        let name = || {
            let s = src.to_string();
            let (kind, rest) = s.split_once(':').expect("a transport prefix");
            let path = match src {
                ImageSource::Layout { path, .. }
                | ImageSource::OciArchive { path, .. }
                | ImageSource::DockerArchive { path, .. } => path,
                ImageSource::Registry(_) => unreachable!(),
            };
            let abs = std::path::absolute(path).unwrap_or_else(|_| path.clone());
            let tail = &rest[path.as_os_str().len()..];
            format!("{kind}:{}{tail}", abs.display())
        };
        Ok(match src {
            ImageSource::Registry(r) if op.offline => Box::new(Offline {
                reference: r.clone(),
            }),
            ImageSource::Registry(r) => Box::new(Remote {
                client: &self.inner.registry,
                reference: r.clone(),
                call: op.call(),
            }),
            ImageSource::Layout { path, tag } => Box::new(OciSource {
                files: hoist_store::Layout::new(path),
                tag: tag.clone(),
                max_manifest_size: max,
                cache_name: name(),
            }),
            ImageSource::OciArchive { path, tag } => {
                crate::archive::oci_archive(path, tag.clone(), max, name())?
            }
            ImageSource::DockerArchive { path, reference } => {
                crate::archive::docker_archive(path, reference.clone(), max, name())?
            }
        })
    }

    /// A manifest by digest from the cache if present, else from the source.
    fn manifest_cached(&self, f: &dyn Fetcher, d: &Descriptor) -> Result<RawManifest, Error> {
        if self.store().has_blob(&d.digest, d.size) {
            if let Ok(bytes) = self
                .store()
                .read_blob(&d.digest, self.opts().registry.max_manifest_size)
            {
                return Ok(RawManifest {
                    bytes,
                    content_type: Some(d.media_type.clone()),
                    digest: d.digest.clone(),
                });
            }
        }
        f.manifest(d)
    }

    fn root_manifest(&self, f: &dyn Fetcher) -> Result<RawManifest, Error> {
        if let Some(d) = f.pinned() {
            let path = self.store().blob_path(&d);
            if let Ok(meta) = std::fs::metadata(&path) {
                if meta.len() <= self.opts().registry.max_manifest_size {
                    if let Ok(bytes) = self
                        .store()
                        .read_blob(&d, self.opts().registry.max_manifest_size)
                    {
                        return Ok(RawManifest {
                            bytes,
                            content_type: None,
                            digest: d,
                        });
                    }
                }
            }
        }
        f.root()
    }

    fn resolve(&self, f: &dyn Fetcher, what: &str, op: &Op) -> Result<Resolved, Error> {
        op.emit(Event::Resolving { source: what });
        let root = self.root_manifest(f)?;
        let mut indexes = Vec::new();
        match self.walk(f, root, what, 0, &mut indexes, op)? {
            Some((raw, manifest)) => Ok(Resolved {
                raw,
                manifest,
                indexes,
            }),
            None => {
                let available = indexes
                    .first()
                    .and_then(|r| {
                        manifest::parse_manifest(&r.bytes, r.content_type.as_deref(), what).ok()
                    })
                    .and_then(|m| match m {
                        Manifest::Index(i) => Some(available_platforms(&i)),
                        _ => None,
                    })
                    .unwrap_or_else(|| "none".into());
                Err(SpecError::PlatformNotFound {
                    what: what.into(),
                    wanted: self.platform(op).to_string(),
                    available,
                }
                .into())
            }
        }
    }

    fn walk(
        &self,
        f: &dyn Fetcher,
        raw: RawManifest,
        what: &str,
        depth: usize,
        indexes: &mut Vec<RawManifest>,
        op: &Op,
    ) -> Result<Option<(RawManifest, ImageManifest)>, Error> {
        if depth > MAX_INDEX_DEPTH {
            return Err(SpecError::IndexTooDeep {
                what: what.into(),
                limit: MAX_INDEX_DEPTH,
            }
            .into());
        }
        let index = match manifest::parse_manifest(&raw.bytes, raw.content_type.as_deref(), what)? {
            Manifest::Image(m) => return Ok(Some((raw, m))),
            Manifest::Index(i) => i,
        };
        indexes.push(raw);
        for cand in index_candidates(&index, self.platform(op)) {
            let child = self.manifest_cached(f, cand)?;
            if media::manifest_kind(&cand.media_type) == Some(ManifestKind::Index) {
                if let Some(found) = self.walk(f, child, what, depth + 1, indexes, op)? {
                    return Ok(Some(found));
                }
                continue;
            }
            tracing::debug!(
                "{what}: {} chosen for {}",
                cand.digest,
                entry_platform(cand)
            );
            let m = match manifest::parse_manifest(&child.bytes, Some(&cand.media_type), what)? {
                Manifest::Image(m) => m,
                Manifest::Index(_) => {
                    return Err(SpecError::UnsupportedMediaType {
                        what: format!("{what} entry {}", cand.digest),
                        media_type: "an index where the parent said manifest".into(),
                    }
                    .into())
                }
            };
            return Ok(Some((child, m)));
        }
        Ok(None)
    }

    /// The config blob, from the cache if present, else the source (and then
    /// cached, verified).
    fn config(
        &self,
        f: &dyn Fetcher,
        m: &ImageManifest,
        what: &str,
        op: &Op,
    ) -> Result<ImageConfig, Error> {
        let d = &m.config;
        let limit = self.opts().registry.max_manifest_size;
        if d.size > limit {
            return Err(Error::Layout {
                layout: what.into(),
                reason: format!("config is {} bytes, above the limit of {limit}", d.size),
            });
        }
        if !self.store().has_blob(&d.digest, d.size) {
            self.fetch_blob(f, d, what, op)?;
        }
        let bytes = self
            .store()
            .read_blob(&d.digest, limit)
            .map_err(|source| Error::Blob {
                image: what.into(),
                source,
            })?;
        Ok(metadata::parse_config(&bytes, what)?)
    }

    /// A plain manifest must be for the requested platform: a silently wrong
    /// VM image is worse than an error.
    fn check_platform(
        &self,
        r: &Resolved,
        cfg: &ImageConfig,
        what: &str,
        op: &Op,
    ) -> Result<(), Error> {
        if r.indexes.is_empty() && !self.platform(op).matches(&cfg.platform) {
            return Err(SpecError::PlatformMismatch {
                what: what.into(),
                wanted: self.platform(op).to_string(),
                actual: cfg.platform.to_string(),
            }
            .into());
        }
        Ok(())
    }

    /// Resolve and read the metadata: the manifest and config only, never a
    /// layer blob.
    pub fn inspect(&self, src: &ImageSource, op: &Op) -> Result<Inspection, Error> {
        op.finished(self.inspect_inner(src, op))
    }

    fn inspect_inner(&self, src: &ImageSource, op: &Op) -> Result<Inspection, Error> {
        let what = src.to_string();
        let f = self.fetcher(src, op)?;
        let r = self.resolve(f.as_ref(), &what, op)?;
        // Regression: a GC between the config's download and its read took
        // the blob (no image reaches it yet): the lease keeps it meanwhile.
        let mut lease = self.store().lease()?;
        lease.add(&[r.raw.digest.clone(), r.manifest.config.digest.clone()])?;
        let cfg = self.config(f.as_ref(), &r.manifest, &what, op)?;
        drop(lease);
        self.check_platform(&r, &cfg, &what, op)?;
        Ok(Inspection::of(what, r.raw.digest.clone(), &r.manifest, cfg))
    }

    /// Wait for any other download of `d` in this process; `None` if it
    /// left the blob in the cache.
    fn flight(&self, d: &Descriptor, op: &Op) -> Result<Option<Flight<'_>>, Error> {
        let fl = &self.inner.flights;
        let mut busy = fl.busy.lock().expect("lock");
        loop {
            op.cancel.check().map_err(|_| Error::Cancelled)?;
            if !busy.contains(&d.digest) {
                break;
            }
            busy = fl
                .cv
                .wait_timeout(busy, Duration::from_millis(50))
                .expect("lock")
                .0;
        }
        if self.store().has_blob(&d.digest, d.size) {
            return Ok(None);
        }
        busy.insert(d.digest.clone());
        Ok(Some(Flight {
            flights: fl,
            digest: d.digest.clone(),
        }))
    }

    /// Download one blob into the cache, verified: once per process however
    /// many operations want it, under the client's download limit.
    fn fetch_blob(
        &self,
        f: &dyn Fetcher,
        d: &Descriptor,
        what: &str,
        op: &Op,
    ) -> Result<(), Error> {
        let Some(_flight) = self.flight(d, op)? else {
            op.emit(Event::BlobCached {
                digest: &d.digest,
                size: d.size,
            });
            return Ok(());
        };
        let _permit = self.inner.downloads.acquire(op)?;
        let writer = self.store().blob_writer(&d.digest, d.size)?;
        let mut sink = ProgressSink { writer, op };
        op.emit(Event::BlobStart {
            digest: &d.digest,
            size: d.size,
        });
        f.blob(d, &mut sink)?;
        sink.writer.commit().map_err(|source| Error::Blob {
            image: what.into(),
            source,
        })?;
        op.emit(Event::BlobDone { digest: &d.digest });
        Ok(())
    }

    /// Fill the cache with one platform's image. Blobs already present are
    /// not fetched; an image already complete costs no request beyond
    /// resolving a tag (and none for a digest reference).
    pub fn pull(&self, src: &ImageSource, op: &Op) -> Result<Pulled, Error> {
        struct Quiet;
        impl PullEvents for Quiet {}
        op.finished(self.pull_checked(src, &Quiet, op).map(|p| p.0))
    }

    /// Pull, telling `events` the manifest and config before any layer is
    /// fetched (it may refuse them), and each layer as it is in the cache.
    /// The returned lease holds the image's blobs against GC for as long as
    /// the caller keeps it (an unpack keeps it until the layers are
    /// applied: `rm` then `gc` meanwhile cannot take a blob from under it).
    pub(crate) fn pull_checked(
        &self,
        src: &ImageSource,
        events: &dyn PullEvents,
        op: &Op,
    ) -> Result<(Pulled, ImageManifest, ImageConfig, Lease), Error> {
        let what = src.to_string();
        let f = self.fetcher(src, op)?;
        let r = self.resolve(f.as_ref(), &what, op)?;
        let digest = r.raw.digest.clone();
        let m = &r.manifest;
        if m.layers.len() > op.limits.max_layers {
            return Err(Error::Limit {
                image: what,
                what: "layers",
                limit: op.limits.max_layers as u64,
                actual: m.layers.len() as u64,
            });
        }
        op.emit(Event::Resolved {
            digest: &digest,
            layers: m.layers.len(),
            bytes: m.layers_size(),
        });
        // Held against GC from before the cache is checked until the image
        // is recorded: nothing this pull counts on can vanish meanwhile.
        let mut lease = self.store().lease()?;
        self.lease_image(&mut lease, &r)?;
        let archive = matches!(
            src,
            ImageSource::OciArchive { .. } | ImageSource::DockerArchive { .. }
        );
        let mut image_digests = vec![digest.clone(), m.config.digest.clone()];
        image_digests.extend(r.indexes.iter().map(|i| i.digest.clone()));
        image_digests.extend(m.layers.iter().map(|l| l.descriptor.digest.clone()));
        let filled = self.fill(f.as_ref(), r, lease, what, events, op);
        if filled.is_err() && archive {
            // A malformed archive leaves nothing behind: what it wrote
            // before the failure goes, unless another image or a running
            // pull keeps it.
            if let Err(e) = self.store().discard(&image_digests) {
                tracing::warn!("cleaning up after a failed import: {e}");
            }
        }
        filled
    }

    /// The rest of a pull, under its lease: fetch what the cache lacks and
    /// record the image.
    fn fill(
        &self,
        f: &dyn Fetcher,
        r: Resolved,
        lease: Lease,
        what: String,
        events: &dyn PullEvents,
        op: &Op,
    ) -> Result<(Pulled, ImageManifest, ImageConfig, Lease), Error> {
        let digest = r.raw.digest.clone();
        let m = &r.manifest;
        let complete = self.store().has_image(&digest)?
            && self.store().has_blob(&m.config.digest, m.config.size)
            && m.layers.iter().all(|l| {
                self.store()
                    .has_blob(&l.descriptor.digest, l.descriptor.size)
            });
        let cfg = self.config(f, m, &what, op)?;
        self.check_platform(&r, &cfg, &what, op)?;
        events.resolved(m, &cfg)?;
        let mut fetched = 0;
        let mut bytes = 0;
        // A layer skipped and missing leaves the image incomplete in the
        // cache: then it is not recorded there.
        let mut partial = false;
        if complete {
            for l in &m.layers {
                events.layer_ready(&l.descriptor.digest);
            }
        } else {
            let mut todo: Vec<&Descriptor> = Vec::new();
            for l in &m.layers {
                let d = &l.descriptor;
                if self.store().has_blob(&d.digest, d.size) {
                    op.emit(Event::BlobCached {
                        digest: &d.digest,
                        size: d.size,
                    });
                    events.layer_ready(&d.digest);
                } else if events.skips(&d.digest) {
                    partial = true;
                } else if !todo.iter().any(|t| t.digest == d.digest) {
                    todo.push(d);
                }
            }
            fetched = todo.len();
            bytes = todo.iter().map(|d| d.size).sum();
            self.fetch_all(f, &todo, &what, events, op)?;
            if !partial {
                for idx in &r.indexes {
                    self.store().write_blob(&idx.digest, &idx.bytes)?;
                }
                self.store().write_blob(&digest, &r.raw.bytes)?;
            }
        }
        if !partial {
            self.store().add_image(&NewImage {
                digest: digest.clone(),
                size: r.raw.bytes.len() as u64,
                media_type: m.media_type.clone(),
                platform: cfg.platform.clone(),
                name: f.cache_name(),
            })?;
        }
        op.emit(Event::Pulled { digest: &digest });
        let pulled = Pulled {
            source: what,
            digest,
            platform: cfg.platform.clone(),
            cached: complete,
            blobs_fetched: fetched,
            bytes_fetched: bytes,
            bytes_by_host: op.bytes_by_host(),
            layout: self.store().root().to_path_buf(),
        };
        Ok((pulled, r.manifest, cfg, lease))
    }

    /// Name in `lease` every blob the resolved image is made of.
    fn lease_image(&self, lease: &mut Lease, r: &Resolved) -> Result<(), Error> {
        let m = &r.manifest;
        let mut ds: Vec<Digest> = vec![r.raw.digest.clone(), m.config.digest.clone()];
        ds.extend(r.indexes.iter().map(|i| i.digest.clone()));
        ds.extend(m.layers.iter().map(|l| l.descriptor.digest.clone()));
        lease.add(&ds)?;
        Ok(())
    }

    /// Download blobs, as many at once as the client's shared limit lets;
    /// the first error cancels the others.
    fn fetch_all(
        &self,
        f: &dyn Fetcher,
        todo: &[&Descriptor],
        what: &str,
        events: &dyn PullEvents,
        op: &Op,
    ) -> Result<(), Error> {
        let next = Mutex::new(todo.iter());
        let failed: Mutex<Option<Error>> = Mutex::new(None);
        let op = &op.child();
        let workers = self.opts().concurrency.clamp(1, 16).min(todo.len().max(1));
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| loop {
                    if failed.lock().expect("lock").is_some() {
                        return;
                    }
                    let Some(d) = next.lock().expect("lock").next() else {
                        return;
                    };
                    if let Err(e) = self.fetch_blob(f, d, what, op) {
                        failed.lock().expect("lock").get_or_insert(e);
                        op.cancel.cancel();
                        return;
                    }
                    events.layer_ready(&d.digest);
                });
            }
        });
        match failed.into_inner().expect("lock") {
            // The first failure, not the cancellations it caused.
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The images in the cache, with their total sizes.
    pub fn images(&self) -> Result<Vec<ImageSummary>, Error> {
        let limit = self.opts().registry.max_manifest_size;
        self.store()
            .images()?
            .into_iter()
            .map(|image| {
                let mut size = image.manifest_size;
                if let Ok(bytes) = self.store().read_blob(&image.digest, limit) {
                    if let Ok(Manifest::Image(m)) =
                        manifest::parse_manifest(&bytes, Some(&image.media_type), "cached image")
                    {
                        size += m.config.size + m.layers_size();
                    }
                }
                Ok(ImageSummary { image, size })
            })
            .collect()
    }

    /// Remove images' names from the cache (`hoist rm`): a tag removes
    /// that name, and the image with its last name; a digest reference
    /// (`repo@sha256:…`) removes the image. Blobs stay until `gc`. Names
    /// that match nothing are an error, after the others are removed.
    pub fn remove(&self, srcs: &[ImageSource]) -> Result<Vec<hoist_store::Removed>, Error> {
        let mut out = Vec::new();
        let mut missing = Vec::new();
        for src in srcs {
            let (name, digest) = match src {
                ImageSource::Registry(r) => (
                    r.tag().map(|t| format!("{}:{t}", r.name())),
                    r.digest().cloned(),
                ),
                _ => (self.fetcher(src, &Op::new())?.cache_name(), None),
            };
            let got = self.store().remove(name.as_deref(), digest.as_ref())?;
            if got.is_empty() {
                missing.push(src.to_string());
            }
            out.extend(got);
        }
        if !missing.is_empty() {
            return Err(Error::NotInCache { names: missing });
        }
        Ok(out)
    }

    /// Delete blobs that no cache entry and no running pull reaches, and
    /// stale temp files (`hoist gc`).
    pub fn gc(&self, dry_run: bool) -> Result<hoist_store::GcReport, Error> {
        Ok(self.store().gc(dry_run)?)
    }

    /// Verify the whole cache; with `repair`, remove what is bad. Every
    /// diff_id record is checked too: its blob inflated again and hashed.
    pub fn fsck(&self, repair: bool) -> Result<FsckReport, Error> {
        let mut r = self.store().fsck(repair)?;
        for (blob, diff, path) in self.store().diff_id_records() {
            r.records_checked += 1;
            let good = diff.is_some_and(|diff| {
                !r.corrupt_blobs.contains(&self.store().blob_path(&blob))
                    && crate::pipeline::inflates_to(&self.store().blob_path(&blob), &diff)
            });
            if !good {
                if repair {
                    let _ = std::fs::remove_file(&path);
                }
                r.bad_records.push(path);
            }
        }
        Ok(r)
    }
}

/// The store's writer as the registry's sink, reporting progress and
/// stopping a cancelled download at the next chunk.
struct ProgressSink<'a> {
    writer: BlobWriter,
    op: &'a Op,
}

impl Write for ProgressSink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.op.cancel.check().map_err(io::Error::other)?;
        let n = self.writer.write(buf)?;
        self.op.emit(Event::BlobProgress {
            digest: self.writer.digest(),
            bytes: self.writer.written(),
        });
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }
}

impl BlobSink for ProgressSink<'_> {
    fn written(&self) -> u64 {
        self.writer.written()
    }
    fn check(&self) -> Result<(), Digest> {
        self.writer.check()
    }
    fn reset(&mut self) -> io::Result<()> {
        self.writer.reset()?;
        self.op.emit(Event::BlobProgress {
            digest: self.writer.digest(),
            bytes: 0,
        });
        Ok(())
    }
}
