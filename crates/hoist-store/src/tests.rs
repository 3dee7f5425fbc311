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
    // Nobody holds its lock: a dead writer's. A live writer's is kept.
    let stale = s.root().join(".hoist/tmp/abc.0.1.partial");
    std::fs::write(&stale, b"x").unwrap();
    let live = s.blob_writer(&Digest::sha256_of(b"live"), 4).unwrap();
    let r = s.fsck(false).unwrap();
    assert!(!r.is_clean());
    assert_eq!(r.corrupt_blobs, vec![s.blob_path(&d)]);
    assert_eq!(r.stale_temp_files, vec![stale.clone()]);
    let r = s.fsck(true).unwrap();
    assert!(r.repaired);
    assert!(s.fsck(false).unwrap().is_clean());
    assert!(!stale.exists());
    assert_eq!(
        std::fs::read_dir(s.root().join(".hoist/tmp"))
            .unwrap()
            .count(),
        1,
        "the live writer's temp file stays"
    );
    drop(live);
}

/// An image of one layer written into the store: (manifest, config, layer).
fn put_image(s: &Store, tag: Option<&str>, seed: &str) -> (Digest, Digest, Digest) {
    let layer = format!("layer {seed}").into_bytes();
    let config = format!(r#"{{"seed":"{seed}"}}"#).into_bytes();
    let (ld, cd) = (Digest::sha256_of(&layer), Digest::sha256_of(&config));
    s.write_blob(&ld, &layer).unwrap();
    s.write_blob(&cd, &config).unwrap();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cd}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{ld}","size":{}}}]}}"#,
        config.len(),
        layer.len()
    );
    let md = Digest::sha256_of(manifest.as_bytes());
    s.write_blob(&md, manifest.as_bytes()).unwrap();
    s.add_image(&NewImage {
        digest: md.clone(),
        size: manifest.len() as u64,
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        platform: Platform::new("linux", "amd64", None),
        name: tag.map(str::to_string),
    })
    .unwrap();
    (md, cd, ld)
}

#[test]
fn gc_keeps_what_images_and_live_leases_reach_and_nothing_else() {
    let (_d, s) = store();
    let (m1, c1, l1) = put_image(&s, Some("r/a:1"), "one");
    let orphan = Digest::sha256_of(b"orphan");
    s.write_blob(&orphan, b"orphan").unwrap();
    let leased = Digest::sha256_of(b"leased");
    s.write_blob(&leased, b"leased").unwrap();
    let mut lease = s.lease().unwrap();
    lease.add(std::slice::from_ref(&leased)).unwrap();

    let dry = s.gc(true).unwrap();
    assert_eq!(dry.blobs, vec![orphan.clone()]);
    assert!(s.has_blob(&orphan, 6), "a dry run deletes nothing");
    let r = s.gc(false).unwrap();
    assert_eq!(r.blobs, vec![orphan.clone()]);
    assert_eq!(r.blob_bytes, 6);
    assert_eq!(r.live_leases, 1);
    for d in [&m1, &c1, &l1, &leased] {
        assert!(s.blob_path(d).exists(), "{d} must survive");
    }
    drop(lease); // a dead lease protects nothing
    let r = s.gc(false).unwrap();
    assert_eq!(r.blobs, vec![leased]);
    assert!(s.fsck(false).unwrap().is_clean());
}

#[test]
fn rm_removes_a_name_and_the_image_with_its_last_name() {
    let (_d, s) = store();
    let (m, _, l) = put_image(&s, Some("r/a:1"), "x");
    put_image(&s, Some("r/a:2"), "x"); // same content: a second name
    assert_eq!(s.images().unwrap()[0].names, vec!["r/a:1", "r/a:2"]);
    let r = s.remove(Some("r/a:1"), None).unwrap();
    assert!(!r[0].image_removed);
    assert!(s.remove(Some("r/a:nope"), None).unwrap().is_empty());
    let r = s.remove(Some("r/a:2"), None).unwrap();
    assert!(r[0].image_removed);
    assert!(s.images().unwrap().is_empty());
    let g = s.gc(false).unwrap();
    assert_eq!(g.blobs.len(), 3);
    assert!(!s.blob_path(&l).exists() && !s.blob_path(&m).exists());
    // By digest, whatever names it has.
    let (m2, _, _) = put_image(&s, Some("r/b:1"), "y");
    assert!(s.remove(None, Some(&m2)).unwrap()[0].image_removed);
    assert!(s.images().unwrap().is_empty());
}
