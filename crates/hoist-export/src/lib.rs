//! Image layers → VM disk images with the image's true ownership.
//!
//! ext4 is written natively, straight from the merged layer streams
//! ([`Ext4Builder`]). erofs and cpio are made from an unpacked rootfs plus
//! the recorded tree metadata (owners, modes and device numbers), so they
//! too say what the tar headers said even when hoist unpacked without
//! root.

mod blocks;
mod cpio;
mod erofs;
mod error;
mod ext4;
mod tree;

pub use blocks::{BlockArea, BLOCK};
pub use cpio::CpioStats;
pub use erofs::ErofsOptions;
pub use error::ExportError;
pub use ext4::{Ext4Builder, Ext4Options, Ext4Stats, Run};
pub use tree::Tree;

use std::io::BufWriter;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Ext4,
    Erofs,
    Cpio { gzip: bool },
}

/// Write a newc cpio (optionally gzip'd) of the tree to `out`.
pub fn write_cpio(tree: &Tree<'_>, out: &Path, gzip: bool) -> Result<CpioStats, ExportError> {
    let f = std::fs::File::create(out).map_err(|e| ExportError::io("create", out, e))?;
    let w = BufWriter::with_capacity(1 << 20, f);
    if gzip {
        let mut gz = flate2::write::GzEncoder::new(w, flate2::Compression::default());
        let s = cpio::write(tree, &mut gz)?;
        gz.finish().map_err(ExportError::Write)?;
        Ok(s)
    } else {
        cpio::write(tree, w)
    }
}

pub fn write_erofs(tree: &Tree<'_>, out: &Path, opts: &ErofsOptions) -> Result<u64, ExportError> {
    erofs::write(tree, out, opts)
}
