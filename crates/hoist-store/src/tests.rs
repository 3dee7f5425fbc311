use std::io::Write;

use hoist_spec::{Digest, Platform};

use super::*;

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path().join(FORMAT_DIR)).unwrap();
    (dir, s)
}

#[test]
fn blob_commit_verifies_digest_and_size() {
    let (_d, s) = store();
    let good = Digest::sha256_of(b"hello");
    let mut w = s.blob_writer(&good, 5).unwrap();
    w.write_all(b"hellO").unwrap();
    assert!(matches!(w.commit(), Err(StoreError::DigestMismatch { .. })));
    assert!(!s.has_blob(&good, 5), "a bad blob must not get its name");

    let mut w = s.blob_writer(&good, 5).unwrap();
    w.write_all(b"hell").unwrap();
    assert!(matches!(w.commit(), Err(StoreError::SizeMismatch { .. })));

    let mut w = s.blob_writer(&good, 5).unwrap();
    assert!(
        w.write_all(b"hello!").is_err(),
        "more than declared is refused"
    );
    drop(w);

    let mut w = s.blob_writer(&good, 5).unwrap();
    w.write_all(b"xx").unwrap();
    w.reset().unwrap();
    w.write_all(b"hello").unwrap();
    w.commit().unwrap();
    assert!(s.has_blob(&good, 5));
    assert_eq!(s.read_blob(&good, 100).unwrap(), b"hello");
    assert!(matches!(
        s.read_blob(&good, 4),
        Err(StoreError::TooLarge { .. })
    ));
    let leftovers = std::fs::read_dir(s.root().join(".hoist/tmp"))
        .unwrap()
        .count();
    assert_eq!(leftovers, 0, "failed writers clean their temp files");
}

#[test]
fn names_move_between_images_of_one_platform() {
    let (_d, s) = store();
    let amd: Platform = "linux/amd64".parse().unwrap();
    let arm: Platform = "linux/arm64".parse().unwrap();
    let img = |d: &Digest, p: &Platform| NewImage {
        digest: d.clone(),
        size: 1,
        media_type: hoist_spec::media::OCI_MANIFEST.into(),
        platform: p.clone(),
        name: Some("docker.io/library/a:latest".into()),
    };
    let d1 = Digest::sha256_of(b"1");
    let d2 = Digest::sha256_of(b"2");
    let d3 = Digest::sha256_of(b"3");
    s.add_image(&img(&d1, &amd)).unwrap();
    s.add_image(&img(&d3, &arm)).unwrap();
    s.add_image(&img(&d2, &amd)).unwrap();
    s.add_image(&img(&d2, &amd)).unwrap();
    let name = "docker.io/library/a:latest";
    assert_eq!(s.lookup_name(name, &amd).unwrap(), Some(d2.clone()));
    assert_eq!(s.lookup_name(name, &arm).unwrap(), Some(d3));
    let images = s.images().unwrap();
    assert_eq!(
        images.len(),
        3,
        "one entry per digest, kept after the name moves"
    );
    assert!(images
        .iter()
        .find(|i| i.digest == d1)
        .unwrap()
        .names
        .is_empty());
    let raw = std::fs::read_to_string(s.root().join("index.json")).unwrap();
    assert!(
        raw.contains(&format!("\"{REF_NAME}\": \"{}\"", d2.hex())),
        "{raw}"
    );
}

#[test]
fn fsck_finds_corruption_and_stale_temps() {
    let (_d, s) = store();
    let d = Digest::sha256_of(b"data");
    s.write_blob(&d, b"data").unwrap();
    assert!(s.fsck(false).unwrap().is_clean());
    std::fs::write(s.blob_path(&d), b"dat4").unwrap();
    // pid 0 never names a live process in /proc
    let stale = s.root().join(".hoist/tmp/abc.0.1.partial");
    std::fs::write(&stale, b"x").unwrap();
    let r = s.fsck(false).unwrap();
    assert!(!r.is_clean());
    assert_eq!(r.corrupt_blobs, vec![s.blob_path(&d)]);
    assert_eq!(r.stale_temp_files, vec![stale.clone()]);
    let r = s.fsck(true).unwrap();
    assert!(r.repaired);
    assert!(s.fsck(false).unwrap().is_clean());
    assert!(!stale.exists());
}
