//! `hoist rm` and `hoist gc`, and the hard limits on untrusted images.

use std::io::{Read, Write};

use sha2::{Digest as _, Sha256};

use crate::harness::image::{self, Blob};
use crate::harness::{hoist_leftovers, registries, unique_repo, Hoist};

#[test]
fn rm_untags_then_removes_and_gc_frees_only_unreachable_blobs() {
    let reg = &registries().plain;
    let repo = unique_repo("rm-gc");
    let (a, b) = crate::harness::shared_base_pair(700, 64);
    let base = image::noise(700, 64 << 10);
    reg.push_image(&repo, "a", &a);
    reg.push_image(&repo, "a2", &a);
    reg.push_image(&repo, "b", &b);
    let h = Hoist::new();
    let name = |t: &str| format!("{}/{repo}:{t}", reg.host);
    for t in ["a", "a2", "b"] {
        h.ok(&["-q", "pull", &name(t)]);
    }
    let out = h.ok(&["rm", &name("a")]);
    assert!(out.starts_with("Untagged:"), "{out}");
    let dry = h.ok(&["gc", "--dry-run"]);
    assert!(dry.contains("Would delete 0 blobs"), "{dry}");
    let out = h.ok(&["rm", &name("a2")]);
    assert!(out.starts_with("Removed:"), "{out}");
    let stderr = h.fails(&["rm", &name("a")], 3);
    assert!(stderr.contains("not in the cache"), "{stderr}");

    let before = h.assert_blobs_verified();
    let dry = h.ok(&["--json", "gc", "--dry-run"]);
    let v: serde_json::Value = serde_json::from_str(&dry).unwrap();
    // a's manifest, config and own layer; the shared base stays.
    assert_eq!(v["blobs"].as_array().unwrap().len(), 3, "{v}");
    assert_eq!(
        h.assert_blobs_verified(),
        before,
        "a dry run deletes nothing"
    );
    let mut want: Vec<String> = vec![a.manifest.digest(), a.config.digest(), a.layers[1].digest()];
    want.sort();
    let mut got: Vec<String> = v["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect();
    got.sort();
    assert_eq!(got, want);
    let expected_bytes: u64 =
        (a.manifest.bytes.len() + a.config.bytes.len() + a.layers[1].bytes.len()) as u64;
    assert_eq!(v["blob_bytes"].as_u64(), Some(expected_bytes));
    h.ok(&["gc"]);
    assert_eq!(h.assert_blobs_verified(), before - 3);
    let out = h.ok(&["fsck"]);
    assert!(out.contains("consistent"), "{out}");
    // b still unpacks from the cache alone.
    let dir = h.home.path().join("b-root");
    h.ok(&["-q", "unpack", &name("b"), dir.to_str().unwrap()]);
    assert_eq!(std::fs::read(dir.join("base")).unwrap(), base);
}

/// A gzip layer holding one file of `n` zero bytes, made as a stream (the
/// tar never sits in memory): (blob, diff_id).
fn zero_bomb(n: u64) -> (Blob, String) {
    struct Tee<W: Write> {
        inner: W,
        h: Sha256,
    }
    impl<W: Write> Write for Tee<W> {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let n = self.inner.write(b)?;
            self.h.update(&b[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.inner.flush()
        }
    }
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let mut tee = Tee {
        inner: gz,
        h: Sha256::new(),
    };
    {
        let mut t = tar::Builder::new(&mut tee);
        let mut hd = tar::Header::new_gnu();
        hd.set_size(n);
        hd.set_mode(0o644);
        hd.set_cksum();
        t.append_data(&mut hd, "zeros.bin", std::io::repeat(0).take(n))
            .unwrap();
        t.finish().unwrap();
    }
    let diff_id = format!("sha256:{}", hex::encode(tee.h.finalize()));
    let bytes = tee.inner.finish().unwrap();
    (
        Blob {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            bytes,
        },
        diff_id,
    )
}

fn bomb_image(n: u64) -> image::Image {
    let (layer, diff_id) = zero_bomb(n);
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [diff_id]}
    });
    image::assemble(vec![layer], &config, false)
}

#[test]
fn a_gzip_bomb_stops_at_max_image_bytes_and_leaves_nothing() {
    let reg = &registries().plain;
    let repo = unique_repo("bomb");
    let img = bomb_image(256 << 20);
    assert!(img.layers[0].bytes.len() < 1 << 20, "a small layer");
    reg.push_image(&repo, "v1", &img);
    let r = format!("{}/{repo}:v1", reg.host);
    let h = Hoist::new();
    let dir = h.home.path().join("root");
    let err = h.fails(
        &[
            "-q",
            "--max-image-bytes",
            "32M",
            "unpack",
            &r,
            dir.to_str().unwrap(),
        ],
        7,
    );
    assert!(
        err.contains("uncompressed bytes is more than the limit"),
        "{err}"
    );
    assert!(!dir.exists());
    let out = h.home.path().join("disk.ext4");
    let err = h.fails(
        &[
            "-q",
            "--max-image-bytes",
            "32M",
            "export",
            &r,
            "-o",
            out.to_str().unwrap(),
        ],
        7,
    );
    assert!(err.contains("limit"), "{err}");
    assert!(!out.exists());
    assert!(hoist_leftovers(h.home.path()).is_empty());
    // Layers and entries have limits of their own.
    let err = h.fails(&["-q", "--max-layers", "0", "pull", &r], 7);
    assert!(err.contains("layers"), "{err}");
}

/// Past 1 GiB inflated, a layer more than 200 times its compressed size is
/// a bomb, whatever --max-image-bytes allows (ext4 keeps zeros as holes,
/// so this writes next to nothing while it reads).
#[test]
fn a_decompression_bomb_past_one_gib_is_refused_by_its_ratio() {
    let reg = &registries().plain;
    let repo = unique_repo("ratio-bomb");
    let img = bomb_image(1280 << 20);
    reg.push_image(&repo, "v1", &img);
    let r = format!("{}/{repo}:v1", reg.host);
    let h = Hoist::new();
    let out = h.home.path().join("disk.ext4");
    let err = h.fails(&["-q", "export", &r, "-o", out.to_str().unwrap()], 7);
    assert!(err.contains("decompression bomb"), "{err}");
    assert!(!out.exists());
    assert!(hoist_leftovers(h.home.path()).is_empty());
}
