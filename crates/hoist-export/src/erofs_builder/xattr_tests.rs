//! xattrs as the kernel reads them back: pairs many inodes share (stored
//! once, in the shared area), pairs one inode has (inline), and an inline
//! set far past one block.

use std::path::Path;

use super::tests::{build, check_mounted, fsck};
use crate::ext4::tests::Layer;

const CAP: &[u8] = &[1, 0, 0, 2, 0, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

fn layer() -> Vec<u8> {
    let big: Vec<u8> = (0..60_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let mid = vec![b'm'; 3000];
    let mut l = Layer::new().dir("bin", 0o755, (0, 0));
    for i in 0..100 {
        l = l.entry(
            tar::EntryType::Regular,
            &format!("bin/tool{i:03}"),
            0o755,
            (0, 0),
            b"#!/bin/sh\n",
            None,
            &[
                ("security.capability", CAP),
                ("user.origin", b"rig"),
                ("user.serial", format!("{i}").as_bytes()),
            ],
        );
    }
    l.entry(
        tar::EntryType::Regular,
        "fat",
        0o644,
        (0, 0),
        &vec![7u8; 5000],
        None,
        &[
            ("user.big", &big),
            ("user.mid", &mid),
            ("user.origin", b"rig"),
        ],
    )
    .entry(
        tar::EntryType::Directory,
        "fatdir",
        0o755,
        (0, 0),
        b"",
        None,
        &[("user.mid", &mid), ("trusted.overlay.opaque", b"y")],
    )
    .file("fatdir/inside", 0o644, (0, 0), b"x")
    .done()
}

fn get(p: &Path, name: &str) -> Vec<u8> {
    let mut buf = vec![0u8; 65_536];
    let n = rustix::fs::lgetxattr(p, name, &mut buf[..])
        .unwrap_or_else(|e| panic!("{p:?} {name}: {e}"));
    buf.truncate(n);
    buf
}

#[test]
fn shared_and_large_inline_xattrs_read_back_through_the_kernel() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("x.erofs");
    build(&img, &[layer()]).unwrap();
    let sb = std::fs::read(&img).unwrap();
    let xattr_blkaddr = u32::from_le_bytes(sb[1024 + 44..1024 + 48].try_into().unwrap());
    assert_ne!(xattr_blkaddr, 0, "the shared pairs have an area");
    // 100 capabilities and origins stored once each: the image is small.
    assert!(sb.len() < 48 * 4096, "{} bytes", sb.len());
    if !fsck(&img) {
        return;
    }
    check_mounted(&img, tmp.path(), |mnt| {
        for i in [0, 57, 99] {
            let p = mnt.join(format!("bin/tool{i:03}"));
            assert_eq!(get(&p, "security.capability"), CAP);
            assert_eq!(get(&p, "user.origin"), b"rig");
            assert_eq!(get(&p, "user.serial"), format!("{i}").as_bytes());
        }
        let big: Vec<u8> = (0..60_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let fat = mnt.join("fat");
        assert_eq!(get(&fat, "user.big"), big);
        assert_eq!(get(&fat, "user.mid"), vec![b'm'; 3000]);
        assert_eq!(get(&fat, "user.origin"), b"rig");
        assert_eq!(std::fs::read(&fat).unwrap(), vec![7u8; 5000]);
        let dir = mnt.join("fatdir");
        assert_eq!(get(&dir, "user.mid"), vec![b'm'; 3000]);
        assert_eq!(get(&dir, "trusted.overlay.opaque"), b"y");
        assert_eq!(std::fs::read(dir.join("inside")).unwrap(), b"x");
    });
}
