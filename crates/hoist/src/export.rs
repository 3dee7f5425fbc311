//! `Client::export`: unpack through the cache into a temp tree, write the
//! disk image to a temp file beside the output, rename it into place.

use std::path::{Path, PathBuf};

use hoist_export::{ErofsOptions, Ext4Options, Format, Tree};
use hoist_spec::{Digest, ImageMetadata, Platform};
use hoist_unpack::{Ownership, TreeMeta};
use serde::Serialize;

use crate::client::Client;
use crate::error::Error;
use crate::source::ImageSource;
use crate::unpack::UnpackOptions;

#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub format: Format,
    /// Fixed image size (ext4 only).
    pub size: Option<u64>,
    /// How the intermediate rootfs is unpacked; the image gets the true
    /// owners either way.
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

/// A UUID from the first 128 bits of the digest: same image, same UUID.
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

fn sibling(out: &Path, what: &str) -> PathBuf {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    parent.join(format!(
        ".{name}.hoist-{what}-{}-{:x}",
        std::process::id(),
        fastrand::u32(..)
    ))
}

impl Client {
    /// Pull and unpack as needed, then write a disk image of the rootfs to
    /// `out` (atomically) with the image's true ownership.
    pub fn export(
        &self,
        src: &ImageSource,
        out: &Path,
        opts: &ExportOptions,
    ) -> Result<Exported, Error> {
        let rootfs = sibling(out, "rootfs");
        let u = self.unpack(
            src,
            &rootfs,
            &UnpackOptions {
                ownership: opts.ownership,
                verify_blobs: false,
            },
        )?;
        let tmp = sibling(out, "tmp");
        let result = (|| -> Result<u64, Error> {
            let f = std::fs::File::open(&u.tree_metadata)
                .map_err(|e| self.io_err(&u.tree_metadata, e))?;
            let meta = TreeMeta::read_from(std::io::BufReader::new(f))
                .map_err(|e| self.io_err(&u.tree_metadata, e))?;
            let tree = Tree {
                rootfs: &rootfs,
                meta: &meta,
            };
            let timestamp = meta.entries.values().map(|m| m.mtime).max().unwrap_or(0);
            let exp = |e| Error::Export {
                image: u.source.clone(),
                source: e,
            };
            match opts.format {
                Format::Cpio { gzip } => {
                    hoist_export::write_cpio(&tree, &tmp, gzip).map_err(exp)?;
                }
                Format::Ext4 => {
                    hoist_export::write_ext4(
                        &tree,
                        &tmp,
                        &Ext4Options {
                            size: opts.size,
                            uuid: uuid_of(&u.digest),
                            timestamp,
                        },
                    )
                    .map_err(exp)?;
                }
                Format::Erofs => {
                    hoist_export::write_erofs(
                        &tree,
                        &tmp,
                        &ErofsOptions {
                            uuid: uuid_of(&u.digest),
                        },
                    )
                    .map_err(exp)?;
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
        let content_bytes = match result {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        std::fs::rename(&tmp, out).map_err(|e| self.io_err(out, e))?;
        let size = std::fs::metadata(out)
            .map_err(|e| self.io_err(out, e))?
            .len();
        Ok(Exported {
            source: u.source,
            digest: u.digest,
            platform: u.platform,
            format: match opts.format {
                Format::Ext4 => "ext4",
                Format::Erofs => "erofs",
                Format::Cpio { gzip: false } => "cpio",
                Format::Cpio { gzip: true } => "cpio+gzip",
            },
            path: out.to_path_buf(),
            size,
            content_bytes,
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
