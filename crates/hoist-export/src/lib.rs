//! Image layers → VM disk images with the image's true ownership.
//!
//! ext4 and cpio are written natively, straight from the merged layer
//! streams ([`Ext4Builder`], [`CpioBuilder`]: content sinks of the merge
//! over one [`BlockArea`]). erofs is still made from an unpacked rootfs
//! plus the recorded tree metadata (owners, modes and device numbers), so
//! it too says what the tar headers said even when hoist unpacked without
//! root.

mod blocks;
mod cpio;
mod erofs;
mod erofs_builder;
mod error;
mod ext4;
mod tree;

pub use blocks::{BlockArea, BLOCK};
pub use cpio::{CpioBuilder, CpioStats};
pub use erofs::ErofsOptions;
pub use erofs_builder::{Content as ErofsContent, ErofsBuilder, ErofsStats};
pub use error::ExportError;
pub use ext4::{Ext4Builder, Ext4Options, Ext4Stats, Run};
pub use tree::Tree;

use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Ext4,
    Erofs,
    Cpio { gzip: bool },
}

pub fn write_erofs(tree: &Tree<'_>, out: &Path, opts: &ErofsOptions) -> Result<u64, ExportError> {
    erofs::write(tree, out, opts)
}
