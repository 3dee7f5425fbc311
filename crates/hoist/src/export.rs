//! `Client::export`: write a disk image to a temp file beside the output,
//! then rename it into place. ext4 straight from the layer streams; erofs
//! and cpio from a temporary unpack.

use std::path::{Path, PathBuf};

use hoist_export::{ErofsOptions, Ext4Builder, Ext4Options, Format, Run, Tree};
use hoist_spec::{Digest, ImageMetadata, Platform};
use hoist_unpack::{MergedTree, Ownership, TreeMeta};
use serde::Serialize;

use hoist_store::temp::{DirLock, TempFile};
use hoist_unpack::Guard;

use crate::client::Client;
use crate::error::Error;
use crate::op::Op;
use crate::progress::Event;
use crate::source::ImageSource;
use crate::unpack::{Step, UnpackOptions};

#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub format: Format,
    /// Fixed image size (ext4 only).
    pub size: Option<u64>,
    /// How the intermediate rootfs of erofs and cpio exports is unpacked;
    /// the image gets the true owners either way.
    pub ownership: Option<Ownership>,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            format: Format::Ext4,
            size: None,
            ownership: None,
        }
    }
}

/// What either export path made, before the rename.
struct Made {
    digest: Digest,
    platform: Platform,
    content_bytes: u64,
    metadata: ImageMetadata,
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
}

/// UUID and directory hash seed from the digest: same image, same bytes.
fn ids_of(d: &Digest) -> ([u8; 16], [u8; 16]) {
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

/// The erofs UUID as mkfs.erofs takes it.
fn uuid_of(d: &Digest) -> String {
    let h = d.hex();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

impl Client {
    /// Pull (through the cache) as needed, then write a disk image of the
    /// image's root filesystem to `out` (atomically) with the image's true
    /// ownership. ext4 is written straight from the layer streams; erofs
    /// and cpio from a temporary unpack.
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
        let made = match opts.format {
            Format::Ext4 => self.export_ext4(src, &tmp, opts, op)?,
            Format::Cpio { gzip } => self.export_cpio(src, out, &tmp, gzip, op)?,
            Format::Erofs => self.export_from_tree(src, out, &tmp, opts, op)?,
        };
        temp.persist(out).map_err(|e| self.io_err(out, e))?;
        let size = std::fs::metadata(out)
            .map_err(|e| self.io_err(out, e))?
            .len();
        Ok(Exported {
            source: src.to_string(),
            digest: made.digest,
            platform: made.platform,
            format: match opts.format {
                Format::Ext4 => "ext4",
                Format::Erofs => "erofs",
                Format::Cpio { gzip: false } => "cpio",
                Format::Cpio { gzip: true } => "cpio+gzip",
            },
            path: out.to_path_buf(),
            size,
            content_bytes: made.content_bytes,
            metadata: made.metadata,
        })
    }

    fn export_ext4(
        &self,
        src: &ImageSource,
        tmp: &Path,
        opts: &ExportOptions,
        op: &Op,
    ) -> Result<Made, Error> {
        let what = src.to_string();
        let exp = |e| Error::Export {
            image: what.clone(),
            source: e,
        };
        let mut builder: Option<Ext4Builder> = None;
        let mut tree: MergedTree<Run> = MergedTree::new();
        tree.set_guard(Guard::new(
            Some(op.cancel.clone()),
            Some(op.limits.max_entries),
        ));
        let streamed = self.pull_and_stream(
            src,
            false,
            &mut |step| match step {
                Step::Start => {
                    let b = Ext4Builder::create(
                        tmp,
                        Ext4Options {
                            size: opts.size,
                            cancel: Some(op.cancel.clone()),
                            ..Ext4Options::default()
                        },
                    )
                    .map_err(exp)?;
                    builder = Some(b);
                    Ok(0)
                }
                Step::Layer(stream) => {
                    let b = builder.as_mut().expect("started");
                    let stats =
                        tree.apply_layer(&mut &mut *stream, b)
                            .map_err(|source| Error::Unpack {
                                image: what.clone(),
                                source,
                            })?;
                    Ok(stats.entries)
                }
            },
            op,
        );
        let (pulled, config, _entries) = match streamed {
            Ok(v) => v,
            // Past a fixed --size: say so, not "reading the layer".
            Err(e) => match builder.as_ref().and_then(Ext4Builder::overflow) {
                Some((size, needed)) => {
                    return Err(exp(hoist_export::ExportError::TooSmall { size, needed }))
                }
                None => return Err(e),
            },
        };
        tree.finish().map_err(|source| Error::Unpack {
            image: what.clone(),
            source,
        })?;
        let mut builder = builder.expect("started");
        op.emit(Event::Exporting { format: "ext4" });
        let (uuid, hash_seed) = ids_of(&pulled.digest);
        builder.set_identity(
            uuid,
            hash_seed,
            tree.nodes().map(|n| n.meta.mtime).max().unwrap_or(0),
        );
        let stats = builder.finish(&tree).map_err(exp)?;
        Ok(Made {
            digest: pulled.digest,
            platform: pulled.platform,
            content_bytes: stats.data_bytes,
            metadata: config.metadata,
        })
    }

    /// cpio straight from the layer streams: contents spooled beside `out`
    /// as they stream past, the archive written from the merged tree.
    fn export_cpio(
        &self,
        src: &ImageSource,
        out: &Path,
        tmp: &Path,
        gzip: bool,
        op: &Op,
    ) -> Result<Made, Error> {
        let what = src.to_string();
        let exp = |e| Error::Export {
            image: what.clone(),
            source: e,
        };
        let dir = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut builder: Option<hoist_export::CpioBuilder> = None;
        let mut tree: MergedTree<Run> = MergedTree::new();
        tree.set_guard(Guard::new(
            Some(op.cancel.clone()),
            Some(op.limits.max_entries),
        ));
        let (pulled, config, _) = self.pull_and_stream(
            src,
            false,
            &mut |step| match step {
                Step::Start => {
                    let b = hoist_export::CpioBuilder::new(&dir, Some(op.cancel.clone()))
                        .map_err(exp)?;
                    builder = Some(b);
                    Ok(0)
                }
                Step::Layer(stream) => {
                    let b = builder.as_mut().expect("started");
                    let stats =
                        tree.apply_layer(&mut &mut *stream, b)
                            .map_err(|source| Error::Unpack {
                                image: what.clone(),
                                source,
                            })?;
                    Ok(stats.entries)
                }
            },
            op,
        )?;
        tree.finish().map_err(|source| Error::Unpack {
            image: what.clone(),
            source,
        })?;
        op.emit(Event::Exporting { format: "cpio" });
        let f = std::fs::File::create(tmp).map_err(|e| self.io_err(tmp, e))?;
        let w = std::io::BufWriter::with_capacity(1 << 20, f);
        let builder = builder.expect("started");
        if gzip {
            let mut gz = flate2::write::GzEncoder::new(w, flate2::Compression::default());
            builder.finish(&tree, &mut gz).map_err(exp)?;
            gz.finish()
                .map_err(|e| exp(hoist_export::ExportError::Write(e)))?;
        } else {
            builder.finish(&tree, w).map_err(exp)?;
        }
        let content_bytes = tree
            .nodes()
            .map(|n| match n.body {
                hoist_unpack::Body::File { size, .. } => size,
                _ => 0,
            })
            .sum();
        Ok(Made {
            digest: pulled.digest,
            platform: pulled.platform,
            content_bytes,
            metadata: config.metadata,
        })
    }

    /// erofs: unpack into a temp tree beside `out`, build from it and the
    /// recorded metadata, remove the tree.
    fn export_from_tree(
        &self,
        src: &ImageSource,
        out: &Path,
        tmp: &Path,
        opts: &ExportOptions,
        op: &Op,
    ) -> Result<Made, Error> {
        let rootfs = crate::stale::temp_beside(out, "rootfs")
            .ok_or_else(|| self.io_err(out, std::io::ErrorKind::InvalidInput.into()))?;
        let u = self.unpack_inner_for_export(
            src,
            &rootfs,
            &UnpackOptions {
                ownership: opts.ownership,
                verify_blobs: false,
            },
            op,
        )?;
        // The unpack's lock went with its temp name; take one on the tree.
        let _lock = DirLock::open(&rootfs).map_err(|e| self.io_err(&rootfs, e))?;
        op.emit(Event::Exporting { format: "erofs" });
        let result = (|| -> Result<u64, Error> {
            let f = std::fs::File::open(&u.tree_metadata)
                .map_err(|e| self.io_err(&u.tree_metadata, e))?;
            let meta = TreeMeta::read_from(std::io::BufReader::new(f))
                .map_err(|e| self.io_err(&u.tree_metadata, e))?;
            let tree = Tree {
                rootfs: &rootfs,
                meta: &meta,
            };
            let exp = |e| Error::Export {
                image: u.source.clone(),
                source: e,
            };
            match opts.format {
                Format::Erofs => {
                    hoist_export::write_erofs(
                        &tree,
                        tmp,
                        &ErofsOptions {
                            uuid: uuid_of(&u.digest),
                        },
                    )
                    .map_err(exp)?;
                }
                Format::Ext4 | Format::Cpio { .. } => {
                    unreachable!("ext4 and cpio are written from the layers")
                }
            }
            let content_bytes = tree
                .nodes()
                .map_err(exp)?
                .iter()
                .filter(|n| n.meta.kind == hoist_unpack::EntryType::File && n.last_link)
                .map(|n| n.size)
                .sum();
            Ok(content_bytes)
        })();
        if let Err(e) = hoist_unpack::remove_tree(&rootfs) {
            tracing::warn!("could not remove {}: {e}", rootfs.display());
        }
        Ok(Made {
            digest: u.digest,
            platform: u.platform,
            content_bytes: result?,
            metadata: u.metadata,
        })
    }

    fn io_err(&self, p: &Path, e: std::io::Error) -> Error {
        Error::Target {
            path: p.display().to_string(),
            reason: e.to_string(),
        }
    }
}
