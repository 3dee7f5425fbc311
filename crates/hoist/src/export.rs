//! `Client::export`: write a disk image to a temp file beside the output,
//! then rename it into place. Every format is written straight from the
//! layer streams: the merge feeds file contents to the format's writer (a
//! `ContentSink`) as they stream past, and the writer lays out the rest
//! from the merged tree. No temporary tree, no external process.

use std::path::{Path, PathBuf};

use hoist_export::{CpioBuilder, ErofsBuilder, ErofsOptions, Ext4Builder, Ext4Options, Format};
use hoist_spec::{Digest, ImageConfig, ImageMetadata, Platform};
use hoist_store::temp::TempFile;
use hoist_unpack::{Body, ContentSink, Guard, MergedTree};
use serde::Serialize;

use crate::client::Client;
use crate::client::Pulled;
use crate::error::Error;
use crate::op::Op;
use crate::pipeline::{Apply, Streamed};
use crate::progress::Event;
use crate::shared::LayerDevice;
use crate::source::ImageSource;

#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub format: Format,
    /// Fixed image size (ext4 only).
    pub size: Option<u64>,
    /// erofs only: write a META image whose file data stay in one erofs
    /// file per layer in this directory, shared between images.
    pub shared_layers: Option<PathBuf>,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            format: Format::Ext4,
            size: None,
            shared_layers: None,
        }
    }
}

/// What either export path made, before the rename.
struct Made {
    digest: Digest,
    platform: Platform,
    content_bytes: u64,
    metadata: ImageMetadata,
    devices: Vec<LayerDevice>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Exported {
    pub source: String,
    pub digest: Digest,
    pub platform: Platform,
    pub format: &'static str,
    pub path: PathBuf,
    /// Size of the image file in bytes.
    pub size: u64,
    /// Bytes of regular-file content in the tree.
    pub content_bytes: u64,
    pub metadata: ImageMetadata,
    /// With `shared_layers`: the META image's devices, lowest layer first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<LayerDevice>,
}

/// The export's consumer: the merged tree, and the writer its file
/// contents stream to.
struct MergeApply<S: ContentSink> {
    tree: MergedTree<S::Handle>,
    sink: S,
    what: String,
}

impl<S: ContentSink> Apply for MergeApply<S> {
    fn layer(
        &mut self,
        _index: usize,
        _diff_id: &Digest,
        stream: &mut dyn std::io::Read,
    ) -> Result<u64, Error> {
        let stats = self
            .tree
            .apply_layer(&mut &mut *stream, &mut self.sink)
            .map_err(|source| Error::Unpack {
                image: self.what.clone(),
                source,
            })?;
        Ok(stats.entries)
    }
}

/// UUID and directory hash seed from the digest: same image, same bytes.
pub(crate) fn ids_of(d: &Digest) -> ([u8; 16], [u8; 16]) {
    let h = d.hex().as_bytes();
    let byte = |i: usize| {
        let s = std::str::from_utf8(&h[2 * i..2 * i + 2]).unwrap_or("00");
        u8::from_str_radix(s, 16).unwrap_or(0)
    };
    (
        std::array::from_fn(byte),
        std::array::from_fn(|i| byte(16 + i)),
    )
}

/// A pulled image's layers merged: the pull, the config, the tree, and the
/// writer its contents went to.
type Merged<S> = (
    Pulled,
    ImageConfig,
    MergedTree<<S as ContentSink>::Handle>,
    S,
);

fn export_err(src: &ImageSource) -> impl Fn(hoist_export::ExportError) -> Error + Copy + '_ {
    move |e| Error::Export {
        image: src.to_string(),
        source: e,
    }
}

fn made(pulled: Pulled, config: ImageConfig, content_bytes: u64) -> Made {
    Made {
        digest: pulled.digest,
        platform: pulled.platform,
        content_bytes,
        metadata: config.metadata,
        devices: Vec::new(),
    }
}

/// Bytes of regular-file content, each hardlinked file once.
fn file_bytes<H>(tree: &MergedTree<H>) -> u64 {
    tree.nodes()
        .map(|n| match n.body {
            Body::File { size, .. } => size,
            _ => 0,
        })
        .sum()
}

/// A failure to write the image, said as a write of `out` (not "reading
/// the layer", where the merge met it; not the temp file's name).
fn as_write_error(out: &Path, e: Error) -> Error {
    let path = out.display().to_string();
    match e {
        Error::Unpack {
            source: hoist_unpack::UnpackError::Write(source),
            ..
        }
        | Error::Export {
            source: hoist_export::ExportError::Write(source),
            ..
        } => Error::Write { path, source },
        Error::Export {
            source: hoist_export::ExportError::Io { source, .. },
            ..
        } if source.kind() == std::io::ErrorKind::StorageFull => Error::Write { path, source },
        e => e,
    }
}

impl Client {
    /// Pull (through the cache) as needed, then write a disk image of the
    /// image's root filesystem to `out` (atomically) with the image's true
    /// ownership, straight from the layer streams.
    pub fn export(
        &self,
        src: &ImageSource,
        out: &Path,
        opts: &ExportOptions,
        op: &Op,
    ) -> Result<Exported, Error> {
        op.finished(self.export_inner(src, out, opts, op))
    }

    fn export_inner(
        &self,
        src: &ImageSource,
        out: &Path,
        opts: &ExportOptions,
        op: &Op,
    ) -> Result<Exported, Error> {
        crate::stale::remove_stale_siblings(out);
        let tmp = crate::stale::temp_beside(out, "tmp")
            .ok_or_else(|| self.io_err(out, std::io::ErrorKind::InvalidInput.into()))?;
        // Locked for as long as this export runs; removed on any error.
        let temp = TempFile::create(tmp.clone()).map_err(|e| self.io_err(&tmp, e))?;
        if opts.shared_layers.is_some() && !matches!(opts.format, Format::Erofs { .. }) {
            return Err(Error::Target {
                path: out.display().to_string(),
                reason: "shared layers are erofs only (--format erofs)".into(),
            });
        }
        let made = match opts.format {
            Format::Ext4 => self.export_ext4(src, &tmp, opts, op),
            Format::Cpio { gzip } => self.export_cpio(src, out, &tmp, gzip, op),
            Format::Erofs { lz4 } => match &opts.shared_layers {
                Some(dir) => self
                    .export_erofs_shared(src, &tmp, lz4, dir, op)
                    .map(|m| Made {
                        digest: m.pulled.digest,
                        platform: m.pulled.platform,
                        content_bytes: m.content_bytes,
                        metadata: m.config.metadata,
                        devices: m.devices,
                    }),
                None => self.export_erofs(src, &tmp, lz4, op),
            },
        }
        .map_err(|e| as_write_error(out, e))?;
        temp.persist(out).map_err(|source| Error::Write {
            path: out.display().to_string(),
            source,
        })?;
        let size = std::fs::metadata(out)
            .map_err(|e| self.io_err(out, e))?
            .len();
        Ok(Exported {
            source: src.to_string(),
            digest: made.digest,
            platform: made.platform,
            format: match opts.format {
                Format::Ext4 => "ext4",
                Format::Erofs { lz4: false } => "erofs",
                Format::Erofs { lz4: true } => "erofs+lz4",
                Format::Cpio { gzip: false } => "cpio",
                Format::Cpio { gzip: true } => "cpio+gzip",
            },
            path: out.to_path_buf(),
            size,
            content_bytes: made.content_bytes,
            metadata: made.metadata,
            devices: made.devices,
        })
    }

    /// Pull `src` and merge its layers into a tree whose file contents go
    /// to the sink `make` returns (called once the config is validated).
    /// `explain` may replace an error with what the sink knows of it.
    fn merge_into<S: ContentSink>(
        &self,
        src: &ImageSource,
        op: &Op,
        make: impl FnOnce() -> Result<S, Error>,
        explain: impl FnOnce(Option<&S>, Error) -> Error,
    ) -> Result<Merged<S>, Error> {
        let what = src.to_string();
        let streamed = self.pull_and_stream(
            src,
            false,
            || {
                let mut tree: MergedTree<S::Handle> = MergedTree::new();
                tree.set_guard(Guard::new(
                    Some(op.cancel.clone()),
                    Some(op.limits.max_entries),
                ));
                Ok(MergeApply {
                    tree,
                    sink: make()?,
                    what: what.clone(),
                })
            },
            op,
        );
        let Streamed {
            pulled,
            config,
            applier,
            ..
        } = match streamed {
            Ok(v) => v,
            Err(f) => return Err(explain(f.applier.as_ref().map(|a| &a.sink), f.error)),
        };
        let MergeApply { mut tree, sink, .. } = applier;
        tree.finish().map_err(|source| Error::Unpack {
            image: what,
            source,
        })?;
        Ok((pulled, config, tree, sink))
    }

    fn export_ext4(
        &self,
        src: &ImageSource,
        tmp: &Path,
        opts: &ExportOptions,
        op: &Op,
    ) -> Result<Made, Error> {
        let exp = export_err(src);
        let (pulled, config, tree, mut builder) = self.merge_into(
            src,
            op,
            || {
                Ext4Builder::create(
                    tmp,
                    Ext4Options {
                        size: opts.size,
                        cancel: Some(op.cancel.clone()),
                        ..Ext4Options::default()
                    },
                )
                .map_err(exp)
            },
            // Past a fixed --size: say so, not "reading the layer".
            |b, e| match b.and_then(Ext4Builder::overflow) {
                Some((size, needed)) => exp(hoist_export::ExportError::TooSmall { size, needed }),
                None => e,
            },
        )?;
        op.emit(Event::Exporting { format: "ext4" });
        let (uuid, hash_seed) = ids_of(&pulled.digest);
        builder.set_identity(
            uuid,
            hash_seed,
            tree.nodes().map(|n| n.meta.mtime).max().unwrap_or(0),
        );
        let stats = builder.finish(&tree).map_err(exp)?;
        Ok(made(pulled, config, stats.data_bytes))
    }

    fn export_erofs(
        &self,
        src: &ImageSource,
        tmp: &Path,
        lz4: bool,
        op: &Op,
    ) -> Result<Made, Error> {
        let exp = export_err(src);
        let (pulled, config, tree, builder) = self.merge_into(
            src,
            op,
            || {
                ErofsBuilder::create(
                    tmp,
                    ErofsOptions {
                        lz4,
                        ..Default::default()
                    },
                    Some(op.cancel.clone()),
                )
                .map_err(exp)
            },
            |_, e| e,
        )?;
        op.emit(Event::Exporting { format: "erofs" });
        builder
            .finish(&tree, ids_of(&pulled.digest).0)
            .map_err(exp)?;
        let bytes = file_bytes(&tree);
        Ok(made(pulled, config, bytes))
    }

    /// cpio: contents spooled beside `out` as they stream past, the archive
    /// written from the merged tree.
    fn export_cpio(
        &self,
        src: &ImageSource,
        out: &Path,
        tmp: &Path,
        gzip: bool,
        op: &Op,
    ) -> Result<Made, Error> {
        let exp = export_err(src);
        let dir = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let (pulled, config, tree, builder) = self.merge_into(
            src,
            op,
            || CpioBuilder::new(&dir, Some(op.cancel.clone())).map_err(exp),
            |_, e| e,
        )?;
        op.emit(Event::Exporting { format: "cpio" });
        let f = std::fs::File::create(tmp).map_err(|e| self.io_err(tmp, e))?;
        let w = std::io::BufWriter::with_capacity(1 << 20, f);
        if gzip {
            let mut gz = flate2::write::GzEncoder::new(w, flate2::Compression::default());
            builder.finish(&tree, &mut gz).map_err(exp)?;
            gz.finish()
                .map_err(|e| exp(hoist_export::ExportError::Write(e)))?;
        } else {
            builder.finish(&tree, w).map_err(exp)?;
        }
        let bytes = file_bytes(&tree);
        Ok(made(pulled, config, bytes))
    }

    fn io_err(&self, p: &Path, e: std::io::Error) -> Error {
        Error::Target {
            path: p.display().to_string(),
            reason: e.to_string(),
        }
    }
}
