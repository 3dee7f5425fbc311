//! Layer semantics and containment, on real tar streams and real files.

mod attacks;
mod merge;
mod semantics;
pub mod tarb;

use std::path::{Path, PathBuf};

use crate::{LayerOptions, Ownership, TreeMeta, Unpacker};

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
        let mut u = Unpacker::new(
            &root,
            LayerOptions {
                ownership,
                ..LayerOptions::default()
            },
        )?;
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

/// A 4 MiB file with data at 2 MiB and at its end, archived by GNU tar in
/// its sparse format; returns (the tar, the file's bytes).
pub fn gnu_sparse_tar(dir: &Path) -> (Vec<u8>, Vec<u8>) {
    use std::os::unix::fs::FileExt;
    let src = dir.join("sparse-src");
    std::fs::create_dir_all(&src).unwrap();
    let f = std::fs::File::create(src.join("sparse")).unwrap();
    f.set_len(4 << 20).unwrap();
    f.write_at(b"middle", 2 << 20).unwrap();
    f.write_at(b"end", (4 << 20) - 3).unwrap();
    drop(f);
    let out = std::process::Command::new("tar")
        .args(["--format=gnu", "--sparse", "-cf", "-", "-C"])
        .arg(&src)
        .arg("sparse")
        .output()
        .expect("GNU tar");
    assert!(out.status.success());
    assert!(out.stdout.len() < 1 << 20, "tar did not store it sparse");
    (out.stdout, std::fs::read(src.join("sparse")).unwrap())
}
