//! Image layers → VM disk images with the image's true ownership.
//!
//! Every format is written natively, straight from the merged layer
//! streams: [`Ext4Builder`], [`ErofsBuilder`] and [`CpioBuilder`] are
//! content sinks of the merge (`hoist_unpack::MergedTree`) over one
//! [`BlockArea`], and lay out the rest from the merged tree. Owners, modes,
//! device numbers and xattrs come from the tar headers, whoever runs it;
//! no temporary tree, no external process.

mod blocks;
mod cpio;
mod erofs_builder;
mod error;
mod ext4;
mod shared;
mod tree;

pub use blocks::{BlockArea, BLOCK};
pub use cpio::{CpioBuilder, CpioStats};
pub use erofs_builder::{Content as ErofsContent, ErofsBuilder, ErofsOptions, ErofsStats};
pub use error::ExportError;
pub use ext4::{Ext4Builder, Ext4Options, Ext4Stats, Run};
pub use shared::{build_meta, meta_devices, LayerDir, LayerFile, LayerGc, LayerLock, Pending};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Ext4,
    /// `lz4`: compressed file data (Linux 5.13+).
    Erofs {
        lz4: bool,
    },
    Cpio {
        gzip: bool,
    },
}
