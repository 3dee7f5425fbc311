//! `--compress lz4` and holes: every kind of chunk (compressed, plain,
//! zero, a short last one), files that do and do not shrink, read back
//! by `fsck.erofs --extract` (its own lz4 decoder) and, as root, by the
//! kernel.

use std::path::Path;
use std::process::Command;

use super::tests::{build_with, check_mounted, fsck, random_images_pass_fsck_and_match_the_kernel};
use super::ErofsOptions;
use crate::ext4::tests::{assert_sample_tree, sample, tool, Layer, Stacks};

fn text(n: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(n + 64);
    let mut i = 0u64;
    while v.len() < n {
        v.extend_from_slice(format!("line {i}: the quick brown fox jumps over it\n").as_bytes());
        i += 1;
    }
    v.truncate(n);
    v
}

fn random(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..n).map(|_| rng.u8(..)).collect()
}

/// (path, content) of every file of the test layer.
fn files() -> Vec<(&'static str, Vec<u8>)> {
    const K: usize = 1024;
    const C: usize = super::data::CHUNK as usize;
    let cat = |parts: &[Vec<u8>]| parts.concat();
    vec![
        // Smaller than a block: never compressed.
        ("tiny", text(3000)),
        // One chunk or less that shrinks.
        ("small", text(10 * K)),
        ("exact", text(C)),
        // Many chunks, the last one short.
        ("text", text(K * K + 123)),
        // Nothing shrinks: one plain run.
        ("random", random(300 * K, 1)),
        // Compressed, plain, zero and a short compressed last chunk.
        (
            "mixed",
            cat(&[text(C), random(C, 2), vec![0; C], text(5000)]),
        ),
        // A few zero chunks in a big file: compressed like the rest.
        (
            "fewzeros",
            cat(&[text(K * K), vec![0; 5 * C], text(100 * K)]),
        ),
        // Mostly zeros: chunk-based, with holes.
        (
            "sparse",
            cat(&[text(C), vec![0; 3 * K * K], random(100 * K, 3), text(777)]),
        ),
    ]
}

fn layer() -> Vec<u8> {
    let mut l = Layer::new().dir("d", 0o755, (0, 0));
    for (p, data) in files() {
        l = l.file(&format!("d/{p}"), 0o644, (0, 0), &data);
    }
    l.done()
}

/// Every file reads back as written; `holes`: the file with holes too.
fn check_files(root: &Path, holes: bool) {
    for (p, data) in files() {
        if p == "sparse" && !holes {
            continue;
        }
        let got = std::fs::read(root.join("d").join(p)).unwrap();
        assert!(
            got == data,
            "{p}: {} bytes read back, {} written",
            got.len(),
            data.len()
        );
    }
}

#[test]
fn lz4_images_hold_every_kind_of_chunk_and_read_back_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("z.erofs");
    let lz4 = ErofsOptions {
        lz4: true,
        ..Default::default()
    };
    let st = build_with(&img, &[layer()], lz4).unwrap();
    // small, exact, text, mixed, fewzeros; not tiny or random; sparse is
    // chunk-based.
    assert_eq!((st.compressed_files, st.sparse_files), (5, 1), "{st:?}");
    let plain = tmp.path().join("plain.erofs");
    let ps = build_with(&plain, &[layer()], ErofsOptions::default()).unwrap();
    assert_eq!((ps.compressed_files, ps.sparse_files), (0, 1), "{ps:?}");
    assert!(
        st.blocks * 2 < ps.blocks,
        "lz4 {} blocks, plain {}",
        st.blocks,
        ps.blocks
    );
    // Deterministic.
    let again = tmp.path().join("again.erofs");
    build_with(&again, &[layer()], lz4).unwrap();
    assert_eq!(std::fs::read(&img).unwrap(), std::fs::read(&again).unwrap());

    if !fsck(&img) {
        return;
    }
    for (name, im) in [("z", &img), ("plain", &plain)] {
        let out = tmp.path().join(format!("x-{name}"));
        let done = tool(
            Command::new("fsck.erofs")
                .arg(format!("--extract={}", out.display()))
                .arg(im),
        )
        .unwrap();
        assert!(!done.to_lowercase().contains("error"), "{done}");
        // erofs-utils 1.5 extracts a chunk-based file's mapped chunks one
        // after the other, dropping its holes (the kernel reads it right:
        // checked below).
        check_files(&out, false);
    }
    for im in [&img, &plain] {
        check_mounted(im, tmp.path(), |mnt| check_files(mnt, true));
    }
}

#[test]
fn lz4_sample_image_reads_back_through_the_kernel() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("s.erofs");
    let st = build_with(
        &img,
        &sample(),
        ErofsOptions {
            lz4: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(st.compressed_files > 0, "{st:?}");
    if !fsck(&img) {
        return;
    }
    check_mounted(&img, tmp.path(), assert_sample_tree);
}

#[test]
fn random_layer_stacks_give_lz4_images_fsck_erofs_accepts() {
    let tmp = tempfile::tempdir().unwrap();
    let stacks = Stacks {
        seed: 0x17a4,
        names: &["a", "b", "a/x", "a/y", "b/x", "s", "s/x"],
        sizes: &[0, 4095, 4097, 9000, 65_536, 65_537, 140_000],
        owners: &[(0, 0), (70_000, 5)],
    };
    random_images_pass_fsck_and_match_the_kernel(&stacks, tmp.path(), |img, layers| {
        build_with(
            img,
            layers,
            ErofsOptions {
                lz4: true,
                ..Default::default()
            },
        )
        .map(drop)
    });
}
