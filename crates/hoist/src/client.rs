//! The facade: resolve a source to one platform's manifest, inspect it, and
//! pull it into the cache.

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use hoist_registry::{BlobSink, RawManifest, RegistryClient, RegistryOptions};
use hoist_spec::manifest::{self, available_platforms, entry_platform, index_candidates};
use hoist_spec::media::{self, ManifestKind};
use hoist_spec::{
    metadata, Descriptor, Digest, ImageConfig, ImageManifest, Layer, Manifest, Platform, SpecError,
};
use hoist_store::{BlobWriter, CachedImage, FsckReport, NewImage, Store, FORMAT_DIR};
use serde::Serialize;

use crate::error::Error;
use crate::progress::{NoProgress, Progress};
use crate::source::{Fetcher, ImageSource, Layout, Remote};

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
}

/// Everything a [`Client`] is configured with. `Default` gives the CLI's
/// defaults: the user's cache directory, `linux/<host arch>`, four
/// downloads at once.
#[derive(Clone)]
pub struct ClientOptions {
    /// The cache's base directory; the layout lives in a versioned
    /// subdirectory of it.
    pub cache_dir: PathBuf,
    pub platform: Platform,
    pub registry: RegistryOptions,
    /// Blobs downloaded at once.
    pub concurrency: usize,
    pub progress: Arc<dyn Progress>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            cache_dir: default_cache_dir(),
            platform: Platform::host(),
            registry: RegistryOptions::default(),
            concurrency: 4,
            progress: Arc::new(NoProgress),
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
    pub diff_ids: Vec<String>,
    pub metadata: hoist_spec::ImageMetadata,
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

pub struct Client {
    opts: ClientOptions,
    store: Store,
    registry: RegistryClient,
}

impl Client {
    pub fn new(opts: ClientOptions) -> Result<Client, Error> {
        let store = Store::open(opts.cache_dir.join(FORMAT_DIR))?;
        let registry = RegistryClient::new(opts.registry.clone())?;
        Ok(Client {
            opts,
            store,
            registry,
        })
    }

    /// The OCI image layout that holds the cache.
    pub fn layout_path(&self) -> &std::path::Path {
        self.store.root()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn fetcher(&self, src: &ImageSource) -> Box<dyn Fetcher + '_> {
        match src {
            ImageSource::Registry(r) => Box::new(Remote {
                client: &self.registry,
                reference: r.clone(),
            }),
            ImageSource::Layout { path, tag } => Box::new(Layout {
                path: path.clone(),
                tag: tag.clone(),
                max_manifest_size: self.opts.registry.max_manifest_size,
            }),
        }
    }

    /// A manifest by digest from the cache if present, else from the source.
    fn manifest_cached(&self, f: &dyn Fetcher, d: &Descriptor) -> Result<RawManifest, Error> {
        if self.store.has_blob(&d.digest, d.size) {
            if let Ok(bytes) = self
                .store
                .read_blob(&d.digest, self.opts.registry.max_manifest_size)
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
            let path = self.store.blob_path(&d);
            if let Ok(meta) = std::fs::metadata(&path) {
                if meta.len() <= self.opts.registry.max_manifest_size {
                    if let Ok(bytes) = self
                        .store
                        .read_blob(&d, self.opts.registry.max_manifest_size)
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

    fn resolve(&self, f: &dyn Fetcher, what: &str) -> Result<Resolved, Error> {
        let root = self.root_manifest(f)?;
        let mut indexes = Vec::new();
        match self.walk(f, root, what, 0, &mut indexes)? {
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
                    wanted: self.opts.platform.to_string(),
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
        for cand in index_candidates(&index, &self.opts.platform) {
            let child = self.manifest_cached(f, cand)?;
            if media::manifest_kind(&cand.media_type) == Some(ManifestKind::Index) {
                if let Some(found) = self.walk(f, child, what, depth + 1, indexes)? {
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
    fn config(&self, f: &dyn Fetcher, m: &ImageManifest, what: &str) -> Result<ImageConfig, Error> {
        let d = &m.config;
        let limit = self.opts.registry.max_manifest_size;
        if d.size > limit {
            return Err(Error::Layout {
                layout: what.into(),
                reason: format!("config is {} bytes, above the limit of {limit}", d.size),
            });
        }
        if !self.store.has_blob(&d.digest, d.size) {
            self.fetch_blob(f, d, what)?;
        }
        let bytes = self
            .store
            .read_blob(&d.digest, limit)
            .map_err(|source| Error::Blob {
                image: what.into(),
                source,
            })?;
        Ok(metadata::parse_config(&bytes, what)?)
    }

    /// A plain manifest must be for the requested platform: a silently wrong
    /// VM image is worse than an error.
    fn check_platform(&self, r: &Resolved, cfg: &ImageConfig, what: &str) -> Result<(), Error> {
        if r.indexes.is_empty() && !self.opts.platform.matches(&cfg.platform) {
            return Err(SpecError::PlatformMismatch {
                what: what.into(),
                wanted: self.opts.platform.to_string(),
                actual: cfg.platform.to_string(),
            }
            .into());
        }
        Ok(())
    }

    /// Resolve and read the metadata: the manifest and config only, never a
    /// layer blob.
    pub fn inspect(&self, src: &ImageSource) -> Result<Inspection, Error> {
        let what = src.to_string();
        let f = self.fetcher(src);
        let r = self.resolve(f.as_ref(), &what)?;
        let cfg = self.config(f.as_ref(), &r.manifest, &what)?;
        self.check_platform(&r, &cfg, &what)?;
        let m = &r.manifest;
        Ok(Inspection {
            source: what,
            digest: r.raw.digest.clone(),
            media_type: m.media_type.clone(),
            platform: cfg.platform.clone(),
            config: m.config.clone(),
            layer_count: m.layers.len(),
            layers_size: m.layers_size(),
            layers: m.layers.clone(),
            diff_ids: cfg.diff_ids,
            metadata: cfg.metadata,
        })
    }

    fn fetch_blob(&self, f: &dyn Fetcher, d: &Descriptor, what: &str) -> Result<(), Error> {
        let writer = self.store.blob_writer(&d.digest, d.size)?;
        let mut sink = ProgressSink {
            writer,
            progress: self.opts.progress.as_ref(),
        };
        self.opts.progress.start(&d.digest, d.size);
        f.blob(d, &mut sink)?;
        sink.writer.commit().map_err(|source| Error::Blob {
            image: what.into(),
            source,
        })?;
        self.opts.progress.finish(&d.digest);
        Ok(())
    }

    /// Fill the cache with one platform's image. Blobs already present are
    /// not fetched; an image already complete costs no request beyond
    /// resolving a tag (and none for a digest reference).
    pub fn pull(&self, src: &ImageSource) -> Result<Pulled, Error> {
        struct Quiet;
        impl PullEvents for Quiet {}
        Ok(self.pull_checked(src, &Quiet)?.0)
    }

    /// Pull, telling `events` the manifest and config before any layer is
    /// fetched (it may refuse them), and each layer as it is in the cache.
    pub(crate) fn pull_checked(
        &self,
        src: &ImageSource,
        events: &dyn PullEvents,
    ) -> Result<(Pulled, ImageManifest, ImageConfig), Error> {
        let what = src.to_string();
        let f = self.fetcher(src);
        let r = self.resolve(f.as_ref(), &what)?;
        let digest = r.raw.digest.clone();
        let m = &r.manifest;
        let complete = self.store.has_image(&digest)?
            && self.store.has_blob(&m.config.digest, m.config.size)
            && m.layers
                .iter()
                .all(|l| self.store.has_blob(&l.descriptor.digest, l.descriptor.size));
        let cfg = self.config(f.as_ref(), m, &what)?;
        self.check_platform(&r, &cfg, &what)?;
        events.resolved(m, &cfg)?;
        let mut fetched = 0;
        let mut bytes = 0;
        if complete {
            for l in &m.layers {
                events.layer_ready(&l.descriptor.digest);
            }
        } else {
            let mut todo: Vec<&Descriptor> = Vec::new();
            for l in &m.layers {
                let d = &l.descriptor;
                if self.store.has_blob(&d.digest, d.size) {
                    self.opts.progress.skipped(&d.digest, d.size);
                    events.layer_ready(&d.digest);
                } else if !todo.iter().any(|t| t.digest == d.digest) {
                    todo.push(d);
                }
            }
            fetched = todo.len();
            bytes = todo.iter().map(|d| d.size).sum();
            self.fetch_all(f.as_ref(), &todo, &what, events)?;
            for idx in &r.indexes {
                self.store.write_blob(&idx.digest, &idx.bytes)?;
            }
            self.store.write_blob(&digest, &r.raw.bytes)?;
        }
        self.store.add_image(&NewImage {
            digest: digest.clone(),
            size: r.raw.bytes.len() as u64,
            media_type: m.media_type.clone(),
            platform: cfg.platform.clone(),
            name: f.cache_name(),
        })?;
        let pulled = Pulled {
            source: what,
            digest,
            platform: cfg.platform.clone(),
            cached: complete,
            blobs_fetched: fetched,
            bytes_fetched: bytes,
            layout: self.store.root().to_path_buf(),
        };
        Ok((pulled, r.manifest, cfg))
    }

    /// Download blobs with a bounded number at once; the first error stops
    /// the others from starting new work.
    fn fetch_all(
        &self,
        f: &dyn Fetcher,
        todo: &[&Descriptor],
        what: &str,
        events: &dyn PullEvents,
    ) -> Result<(), Error> {
        let next = Mutex::new(todo.iter());
        let failed: Mutex<Option<Error>> = Mutex::new(None);
        let workers = self.opts.concurrency.clamp(1, 16).min(todo.len().max(1));
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| loop {
                    if failed.lock().expect("lock").is_some() {
                        return;
                    }
                    let Some(d) = next.lock().expect("lock").next() else {
                        return;
                    };
                    if let Err(e) = self.fetch_blob(f, d, what) {
                        failed.lock().expect("lock").get_or_insert(e);
                        return;
                    }
                    events.layer_ready(&d.digest);
                });
            }
        });
        match failed.into_inner().expect("lock") {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The images in the cache, with their total sizes.
    pub fn images(&self) -> Result<Vec<ImageSummary>, Error> {
        let limit = self.opts.registry.max_manifest_size;
        self.store
            .images()?
            .into_iter()
            .map(|image| {
                let mut size = image.manifest_size;
                if let Ok(bytes) = self.store.read_blob(&image.digest, limit) {
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

    /// Verify the whole cache; with `repair`, remove what is bad.
    pub fn fsck(&self, repair: bool) -> Result<FsckReport, Error> {
        Ok(self.store.fsck(repair)?)
    }
}

/// The store's writer as the registry's sink, reporting progress.
struct ProgressSink<'a> {
    writer: BlobWriter,
    progress: &'a dyn Progress,
}

impl Write for ProgressSink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.writer.write(buf)?;
        self.progress
            .position(self.writer.digest(), self.writer.written());
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
    fn reset(&mut self) -> io::Result<()> {
        self.writer.reset()?;
        self.progress.position(self.writer.digest(), 0);
        Ok(())
    }
}
