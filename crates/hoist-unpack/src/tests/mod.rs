//! Layer semantics and containment, on real tar streams and real files.

mod attacks;
mod merge;
mod semantics;
pub mod tarb;

use std::path::{Path, PathBuf};

use crate::{Ownership, TreeMeta, UnpackOptions, Unpacker};

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Apply `layers` (uncompressed tars) under a fresh `root` in `dir`.
pub fn apply(
    dir: &Path,
    layers: &[Vec<u8>],
    ownership: Ownership,
) -> (PathBuf, Result<TreeMeta, crate::UnpackError>) {
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let res = (|| {
        let mut u = Unpacker::new(&root, UnpackOptions { ownership })?;
        for l in layers {
            u.apply_layer(&mut &l[..])?;
        }
        u.finish()
    })();
    (root, res)
}

pub fn own() -> Ownership {
    Ownership::default_for_process()
}
