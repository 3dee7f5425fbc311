//! `docker-archive:` and `oci-archive:` sources, from archives made by
//! real tools (skopeo, buildah) and by a fixture in Docker's legacy form;
//! malformed archives get a clear error and leave nothing in the cache.

use std::path::Path;
use std::process::Command;

use crate::harness::image::{gzip, sha256, tar_of};
use crate::harness::treesum::{diff, treesum};
use crate::harness::{registries, sample_image, unique_repo, Hoist};

fn run(cmd: &mut Command) {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn is_root() -> bool {
    // SAFETY: no arguments, always succeeds.
    unsafe { libc::geteuid() == 0 }
}

/// Unpack `src` into a fresh dir and return its tree listing.
fn tree_of(h: &Hoist, src: &str, dir: &Path) -> Vec<String> {
    h.ok(&["unpack", src, dir.to_str().unwrap()]);
    treesum(dir, false)
}

#[test]
fn archives_written_by_skopeo_and_buildah_pull_unpack_and_export_like_the_registry_image() {
    let reg = &registries().plain;
    let repo = unique_repo("archive");
    let img = sample_image(950, 128);
    reg.push_image(&repo, "v1", &img);
    let r = format!("{}/{repo}:v1", reg.host);
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let docker = w.join("d.tar");
    let oci = w.join("o.tar");
    run(Command::new("skopeo")
        .args(["copy", "--quiet", "--src-tls-verify=false"])
        .arg(format!("docker://{r}"))
        .arg(format!("docker-archive:{}:{repo}:v1", docker.display())));
    run(Command::new("skopeo")
        .args(["copy", "--quiet", "--src-tls-verify=false"])
        .arg(format!("docker://{r}"))
        .arg(format!("oci-archive:{}:v1", oci.display())));

    // Docker 25+'s `docker save`: an OCI layout (index.json naming the
    // image in containerd's annotation) plus the legacy manifest.json.
    let d25 = w.join("d25");
    run(Command::new("skopeo")
        .args(["copy", "--quiet", "--src-tls-verify=false"])
        .arg(format!("docker://{r}"))
        .arg(format!("oci:{}:v1", d25.display())));
    let mut idx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d25.join("index.json")).unwrap()).unwrap();
    idx["manifests"][0]["annotations"]["io.containerd.image.name"] =
        format!("docker.io/{repo}:v1").into();
    std::fs::write(d25.join("index.json"), serde_json::to_vec(&idx).unwrap()).unwrap();
    let legacy = serde_json::json!([{
        "Config": format!("blobs/sha256/{}", img.config.digest().trim_start_matches("sha256:")),
        "RepoTags": [format!("{repo}:v1")],
        "Layers": img.layers.iter().map(|l| format!("blobs/sha256/{}", l.digest().trim_start_matches("sha256:"))).collect::<Vec<_>>(),
    }]);
    std::fs::write(
        d25.join("manifest.json"),
        serde_json::to_vec(&legacy).unwrap(),
    )
    .unwrap();
    let docker25 = w.join("d25.tar");
    run(Command::new("tar")
        .arg("-cf")
        .arg(&docker25)
        .arg("-C")
        .arg(&d25)
        .arg("."));

    let h = Hoist::new();
    let want = tree_of(&h, &r, &w.join("from-registry"));
    let inspect = |h: &Hoist, src: &str| -> serde_json::Value {
        serde_json::from_str(&h.ok(&["--json", "inspect", src])).unwrap()
    };
    let want_ids = inspect(&h, &r)["diff_ids"].clone();
    assert_eq!(want_ids.as_array().unwrap().len(), 3);
    let mut sources = vec![
        format!("docker-archive:{}", docker.display()),
        format!("docker-archive:{}:{repo}:v1", docker.display()),
        format!("oci-archive:{}:v1", oci.display()),
        format!("docker-archive:{}:{repo}:v1", docker25.display()),
    ];
    if is_root() {
        // buildah pushes its own copy of the image to a docker archive.
        let b = w.join("b.tar");
        let store = |c: &mut Command| {
            c.arg("--storage-driver=vfs")
                .arg("--root")
                .arg(w.join("buildah-root"))
                .arg("--runroot")
                .arg(w.join("buildah-run"));
        };
        let mut pull = Command::new("buildah");
        store(&mut pull);
        pull.args(["pull", "--quiet", "--tls-verify=false"])
            .arg(format!("docker://{r}"));
        run(&mut pull);
        let mut push = Command::new("buildah");
        store(&mut push);
        push.args(["push", "--quiet"])
            .arg(&r)
            .arg(format!("docker-archive:{}:{repo}:v1", b.display()));
        run(&mut push);
        sources.push(format!("docker-archive:{}", b.display()));
    } else {
        crate::harness::skip("buildah needs root here");
    }
    for (i, src) in sources.iter().enumerate() {
        let h = Hoist::new();
        // The same layers, whatever the archive stores them as.
        assert_eq!(inspect(&h, src)["diff_ids"], want_ids, "{src}");
        h.ok(&["pull", src]);
        h.assert_blobs_verified();
        let got = tree_of(&h, src, &w.join(format!("u{i}")));
        assert_eq!(got, want, "{src}:\n{}", diff(&want, &got));
        let disk = w.join(format!("e{i}.ext4"));
        h.ok(&["export", src, "-o", disk.to_str().unwrap()]);
        let fsck = Command::new("e2fsck")
            .arg("-fn")
            .arg(&disk)
            .output()
            .unwrap();
        assert!(fsck.status.success(), "{src}: e2fsck failed");
        let images = h.ok(&["images"]);
        assert!(images.contains("-archive:"), "{images}");
    }
}

/// `docker save` in the legacy form (Docker 24 and before): real
/// `<id>/layer.tar` members (one plain, one gzip) whose names state no
/// digest, a config named by nothing, `manifest.json` and `repositories`.
fn legacy_archive(dir: &Path, break_diff_id: bool) -> std::path::PathBuf {
    let l1 = tar_of(&[("etc/hello", b"hello from legacy\n")]);
    let l2 = tar_of(&[("usr/bin/tool", b"#!/bin/sh\necho tool\n")]);
    let mut diff_ids = vec![sha256(&l1), sha256(&l2)];
    if break_diff_id {
        diff_ids[1] = sha256(b"something else");
    }
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/usr/bin/tool"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let manifest = serde_json::json!([{
        "Config": "config.json",
        "RepoTags": ["legacy/app:v1"],
        "Layers": ["aaa/layer.tar", "bbb/layer.tar"],
    }]);
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("manifest.json", serde_json::to_vec(&manifest).unwrap()),
        ("config.json", serde_json::to_vec(&config).unwrap()),
        ("aaa/layer.tar", l1),
        ("bbb/layer.tar", gzip(&l2)),
        ("repositories", br#"{"legacy/app":{"v1":"bbb"}}"#.to_vec()),
    ];
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (*n, &b[..])).collect();
    let p = dir.join(if break_diff_id {
        "bad.tar"
    } else {
        "legacy.tar"
    });
    std::fs::write(&p, tar_of(&refs)).unwrap();
    p
}

#[test]
fn a_legacy_docker_save_archive_is_checked_against_its_config_and_unpacks() {
    let w = tempfile::tempdir().unwrap();
    let a = legacy_archive(w.path(), false);
    let h = Hoist::new();
    let src = format!("docker-archive:{}:legacy/app:v1", a.display());
    let v: serde_json::Value = serde_json::from_str(&h.ok(&["--json", "pull", &src])).unwrap();
    assert!(v["digest"].as_str().unwrap().starts_with("sha256:"), "{v}");
    let out = w.path().join("root");
    h.ok(&["unpack", &src, out.to_str().unwrap()]);
    assert_eq!(
        std::fs::read(out.join("etc/hello")).unwrap(),
        b"hello from legacy\n"
    );
    assert_eq!(
        std::fs::read(out.join("usr/bin/tool")).unwrap(),
        b"#!/bin/sh\necho tool\n"
    );
    // A name the archive does not hold: the error lists what it does.
    let e = h.fails(
        &["pull", &format!("docker-archive:{}:other:v9", a.display())],
        3,
    );
    assert!(e.contains("legacy/app:v1"), "{e}");
}

/// The cache after a refused archive: no image, no blob, no temp file,
/// fsck clean.
fn nothing_cached(h: &Hoist) {
    let images = h.ok(&["images"]);
    assert_eq!(images.lines().count(), 1, "{images}");
    h.ok(&["fsck"]);
    let left = crate::harness::hoist_leftovers(h.home.path());
    assert!(left.is_empty(), "left {left:?}");
    assert_eq!(h.assert_blobs_verified(), 0, "blobs were left in the cache");
}

#[test]
fn malformed_archives_get_a_clear_error_and_leave_nothing_in_the_cache() {
    let w = tempfile::tempdir().unwrap();
    // A diff_id that does not match the layer.
    let bad = legacy_archive(w.path(), true);
    let h = Hoist::new();
    let e = h.fails(&["pull", &format!("docker-archive:{}", bad.display())], 6);
    assert!(
        e.contains("digest mismatch") || e.contains("integrity"),
        "{e}"
    );
    nothing_cached(&h);
    assert_eq!(h.assert_blobs_verified(), 0);

    // A missing layer.
    let m = serde_json::json!([{"Config": "c.json", "RepoTags": ["x:1"], "Layers": ["gone/layer.tar"]}]);
    let cfg = br#"{"rootfs":{"type":"layers","diff_ids":["sha256:0000000000000000000000000000000000000000000000000000000000000000"]}}"#;
    let missing = w.path().join("missing.tar");
    std::fs::write(
        &missing,
        tar_of(&[
            ("manifest.json", &serde_json::to_vec(&m).unwrap()[..]),
            ("c.json", &cfg[..]),
        ]),
    )
    .unwrap();
    let e = h.fails(
        &["pull", &format!("docker-archive:{}", missing.display())],
        1,
    );
    assert!(e.contains("gone/layer.tar") && e.contains("missing"), "{e}");
    nothing_cached(&h);

    // A member whose name climbs out of the archive.
    let mut b = tar::Builder::new(Vec::new());
    let mut hd = tar::Header::new_gnu();
    let evil = b"evil";
    hd.set_size(evil.len() as u64);
    hd.set_mode(0o644);
    hd.set_entry_type(tar::EntryType::Regular);
    // tar::Builder refuses `..`; write the name into the header directly.
    hd.as_old_mut().name[..12].copy_from_slice(b"../escape.sh");
    hd.set_cksum();
    b.append(&hd, &evil[..]).unwrap();
    let escape = w.path().join("escape.tar");
    std::fs::write(&escape, b.into_inner().unwrap()).unwrap();
    for kind in ["docker-archive", "oci-archive"] {
        let e = h.fails(&["pull", &format!("{kind}:{}", escape.display())], 1);
        assert!(e.contains("outside the archive"), "{e}");
    }
    nothing_cached(&h);

    // An OCI archive whose layer blob is not what its name says.
    let reg = &registries().plain;
    let repo = unique_repo("badarchive");
    let img = sample_image(951, 64);
    reg.push_image(&repo, "v1", &img);
    let good = w.path().join("good");
    run(Command::new("skopeo")
        .args(["copy", "--quiet", "--src-tls-verify=false"])
        .arg(format!("docker://{}/{repo}:v1", reg.host))
        .arg(format!("oci:{}:v1", good.display())));
    let layer = img.layers[0].digest();
    let blob = good
        .join("blobs/sha256")
        .join(layer.trim_start_matches("sha256:"));
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let corrupt = w.path().join("corrupt.tar");
    run(Command::new("tar")
        .arg("-cf")
        .arg(&corrupt)
        .arg("-C")
        .arg(&good)
        .arg("."));
    let e = h.fails(
        &["pull", &format!("oci-archive:{}:v1", corrupt.display())],
        6,
    );
    assert!(e.contains(&layer), "{e}");
    // The manifest, the config and the good layers written before the bad
    // one are gone too.
    nothing_cached(&h);

    // An OCI archive without one of its layers.
    std::fs::remove_file(&blob).unwrap();
    let holed = w.path().join("holed.tar");
    run(Command::new("tar")
        .arg("-cf")
        .arg(&holed)
        .arg("-C")
        .arg(&good)
        .arg("."));
    let e = h.fails(&["pull", &format!("oci-archive:{}:v1", holed.display())], 1);
    assert!(e.contains("missing"), "{e}");
    nothing_cached(&h);
}
