//! `hoist unpack` against `umoci unpack` on real images whose layers GNU tar
//! made from real directory trees: whiteouts, an opaque directory,
//! hardlinks, symlinks, setuid, non-root owners, a FIFO, xattrs, a
//! read-only directory; OCI gzip, Docker and zstd variants.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::image::{sha256, Blob, Image};
use crate::harness::treesum::{diff, treesum};
use crate::harness::{registries, unique_repo, Hoist};
use hoist_spec::media;

fn is_root() -> bool {
    // SAFETY: no arguments, always succeeds.
    unsafe { libc::geteuid() == 0 }
}

fn write(p: &Path, data: &[u8], mode: u32) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn chown(p: &Path, uid: u32, gid: u32) {
    if is_root() {
        std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The two layer trees, made on disk with ordinary tools, then tarred by
/// GNU tar (pax format, numeric owners, xattrs).
fn layer_tars(work: &Path) -> Vec<Vec<u8>> {
    let l1 = work.join("l1");
    write(&l1.join("etc/motd"), b"motd\n", 0o644);
    write(&l1.join("etc/issue"), b"issue\n", 0o644);
    write(&l1.join("usr/share/doc/pkg/README"), b"old doc\n", 0o644);
    write(&l1.join("usr/share/doc/other"), b"old\n", 0o644);
    write(&l1.join("usr/share/man/man1/x.1"), b"man\n", 0o644);
    write(
        &l1.join("replace/me/deep"),
        b"a dir that becomes a file\n",
        0o644,
    );
    write(&l1.join("opt/ro/inside"), b"in a read-only dir\n", 0o444);
    std::fs::set_permissions(l1.join("opt/ro"), std::fs::Permissions::from_mode(0o555)).unwrap();
    std::os::unix::fs::symlink("/run", l1.join("opt/var-run")).unwrap();

    let l2 = work.join("l2");
    write(&l2.join("etc/.wh.motd"), b"", 0o644);
    write(&l2.join("usr/share/.wh.man"), b"", 0o644);
    write(&l2.join("usr/share/doc/.wh..wh..opq"), b"", 0o644);
    write(&l2.join("usr/share/doc/NEW"), b"new doc\n", 0o644);
    write(&l2.join("replace/me"), b"now a file\n", 0o640);
    write(&l2.join("opt/rig/hard/a"), b"hardlink group\n", 0o644);
    std::fs::hard_link(l2.join("opt/rig/hard/a"), l2.join("opt/rig/hard/b")).unwrap();
    std::fs::create_dir_all(l2.join("usr/local/share")).unwrap();
    std::fs::hard_link(
        l2.join("opt/rig/hard/a"),
        l2.join("usr/local/share/elsewhere"),
    )
    .unwrap();
    std::os::unix::fs::symlink("/etc/issue", l2.join("opt/rig/abs")).unwrap();
    std::os::unix::fs::symlink("../hard/a", l2.join("opt/rig/rel")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/x", l2.join("opt/rig/dangling")).unwrap();
    std::os::unix::fs::symlink("../../../../../../etc/passwd", l2.join("opt/rig/escape")).unwrap();
    write(&l2.join("opt/rig/setuid"), b"#!/bin/true\n", 0o644);
    chown(&l2.join("opt/rig/setuid"), 1000, 1000);
    std::fs::set_permissions(
        l2.join("opt/rig/setuid"),
        std::fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    write(&l2.join("opt/rig/setgid"), b"sg\n", 0o2755);
    write(&l2.join("opt/rig/none"), b"no perms\n", 0o000);
    write(&l2.join("opt/rig/nobody"), b"nobody\n", 0o644);
    chown(&l2.join("opt/rig/nobody"), 65534, 65534);
    std::fs::create_dir_all(l2.join("opt/rig/sticky")).unwrap();
    std::fs::set_permissions(
        l2.join("opt/rig/sticky"),
        std::fs::Permissions::from_mode(0o1777),
    )
    .unwrap();
    std::fs::create_dir_all(l2.join("home/app")).unwrap();
    chown(&l2.join("home/app"), 1000, 1000);
    std::os::unix::fs::symlink("app", l2.join("home/link-owned")).unwrap();
    chown(&l2.join("home/link-owned"), 1000, 1000);
    run(Command::new("mkfifo").arg(l2.join("opt/rig/fifo")));
    write(&l2.join("opt/rig/xattr"), b"x\n", 0o644);
    run(Command::new("setfattr")
        .args(["-n", "user.hoist.test", "-v", "hello"])
        .arg(l2.join("opt/rig/xattr")));
    if is_root() {
        // cap_net_bind_service=ep as setcap writes it (VFS_CAP_REVISION_2)
        write(&l2.join("opt/rig/cap"), b"cap\n", 0o755);
        run(Command::new("setfattr")
            .args([
                "-n",
                "security.capability",
                "-v",
                "0x0100000200040000000000000000000000000000",
            ])
            .arg(l2.join("opt/rig/cap")));
    }
    write(
        &l2.join("opt/rig/ro/later"),
        b"written into l1's 0555 dir? no: a new dir\n",
        0o644,
    );
    write(
        &l2.join("opt/ro/added-later"),
        b"into a 0555 dir of a lower layer\n",
        0o644,
    );
    std::fs::set_permissions(l2.join("opt/ro"), std::fs::Permissions::from_mode(0o555)).unwrap();
    write(
        &l2.join("opt/var-run/through-symlink"),
        b"via var-run\n",
        0o644,
    );
    std::fs::remove_file(l2.join("opt/var-run/through-symlink")).unwrap();
    std::fs::remove_dir(l2.join("opt/var-run")).unwrap();

    [l1, l2]
        .iter()
        .map(|d| {
            let out = Command::new("tar")
                .args([
                    "--format=pax",
                    "--numeric-owner",
                    "--xattrs",
                    "--xattrs-include=*",
                    "--sort=name",
                    "-cf",
                    "-",
                    "-C",
                ])
                .arg(d)
                .arg(".")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "tar: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            out.stdout
        })
        .collect()
}

enum Variant {
    OciGzip,
    DockerGzip,
    OciZstd,
}

fn image_from(tars: &[Vec<u8>], v: Variant) -> Image {
    let (lmt, docker) = match v {
        Variant::OciGzip => (media::OCI_LAYER_GZIP, false),
        Variant::DockerGzip => (media::DOCKER_LAYER_GZIP, true),
        Variant::OciZstd => (media::OCI_LAYER_ZSTD, false),
    };
    let layers: Vec<Blob> = tars
        .iter()
        .map(|t| Blob {
            media_type: lmt.into(),
            bytes: if lmt == media::OCI_LAYER_ZSTD {
                zstd::encode_all(&t[..], 3).unwrap()
            } else {
                // Two gzip members: decoders that stop after the first fail.
                let half = t.len() / 2;
                let mut b = crate::harness::image::gzip(&t[..half]);
                b.extend(crate::harness::image::gzip(&t[half..]));
                b
            },
        })
        .collect();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/bin/sh"], "Env": ["A=1"], "User": "1000:1000", "WorkingDir": "/home/app"},
        "rootfs": {"type": "layers", "diff_ids": tars.iter().map(|t| sha256(t)).collect::<Vec<_>>()}
    });
    crate::harness::image::assemble(layers, &config, docker)
}

fn umoci_tree(h: &Hoist, digest: &str) -> Vec<String> {
    let bundle = h.home.path().join("umoci-bundle");
    let mut c = Command::new("umoci");
    c.arg("unpack");
    if !is_root() {
        c.arg("--rootless");
    }
    c.arg("--image")
        .arg(format!("{}:{}", h.layout().display(), &digest[7..]))
        .arg(&bundle);
    run(&mut c);
    treesum(&bundle.join("rootfs"), is_root())
}

fn pushed(tars: &[Vec<u8>], v: Variant, tag: &str) -> (String, Image) {
    let reg = &registries().plain;
    let repo = unique_repo("unpack");
    let img = image_from(tars, v);
    reg.push_image(&repo, tag, &img);
    (format!("{}/{repo}:{tag}", reg.host), img)
}

#[test]
fn unpack_equals_umoci_entry_by_entry_for_oci_docker_and_zstd_layers() {
    let work = tempfile::tempdir().unwrap();
    let tars = layer_tars(work.path());
    let h = Hoist::new();
    let (r, img) = pushed(&tars, Variant::OciGzip, "oci");
    let out = h.ok(&["pull", &r]);
    assert_eq!(out.trim(), img.manifest.digest());
    let reference = umoci_tree(&h, &img.manifest.digest());
    assert!(reference.len() > 30, "{reference:?}");
    for (variant, tag) in [
        (Variant::OciGzip, "oci"),
        (Variant::DockerGzip, "docker"),
        (Variant::OciZstd, "zstd"),
    ] {
        let (r, _) = pushed(&tars, variant, tag);
        let dir = h.home.path().join(format!("rootfs-{tag}"));
        h.ok(&["unpack", &r, dir.to_str().unwrap()]);
        let ours = treesum(&dir, is_root());
        assert!(
            ours == reference,
            "{tag}: hoist and umoci differ:\n{}",
            diff(&reference, &ours)
        );
    }
    // Spot checks that the comparison covers what it claims to.
    let dir = h.home.path().join("rootfs-oci");
    assert!(!dir.join("etc/motd").exists() && dir.join("etc/issue").exists());
    assert!(!dir.join("usr/share/man").exists());
    let doc: Vec<_> = std::fs::read_dir(dir.join("usr/share/doc"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(doc, vec!["NEW"]);
    assert!(dir.join("replace/me").is_file());
    assert!(reference
        .iter()
        .any(|l| l.starts_with("/opt/rig/setuid\tf\t4755")));
    assert!(reference.iter().any(|l| l.starts_with("/opt/rig/fifo\tp")));
    assert!(reference
        .iter()
        .any(|l| l.contains("user.hoist.test=68656c6c6f")));
    if is_root() {
        assert!(
            reference
                .iter()
                .any(|l| l.starts_with("/opt/rig/cap\t")
                    && l.contains("security.capability=01000002")),
            "the capability is missing from umoci's tree"
        );
    }
    assert!(reference
        .iter()
        .any(|l| l.starts_with("/usr/local/share/elsewhere\tf") && l.contains("/opt/rig/hard/a")));
}

#[test]
fn unpack_prints_metadata_writes_metadata_out_and_records_true_ownership() {
    let work = tempfile::tempdir().unwrap();
    let tars = layer_tars(work.path());
    let (r, img) = pushed(&tars, Variant::OciGzip, "meta");
    let h = Hoist::new();
    let dir = h.home.path().join("rootfs");
    let mo = h.home.path().join("meta.json");
    let out = h.ok(&[
        "--json",
        "unpack",
        &r,
        dir.to_str().unwrap(),
        "--metadata-out",
        mo.to_str().unwrap(),
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["digest"], img.manifest.digest());
    assert_eq!(v["metadata"]["user"], "1000:1000");
    assert_eq!(v["metadata"]["entrypoint"][0], "/bin/sh");
    assert_eq!(v["diff_ids"].as_array().unwrap().len(), 2);
    let file: serde_json::Value = serde_json::from_slice(&std::fs::read(&mo).unwrap()).unwrap();
    assert_eq!(file, v);
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        !names
            .iter()
            .any(|n| n.contains("hoist") || n.ends_with(".json")),
        "something was added to the rootfs: {names:?}"
    );
    let tree = std::fs::read_to_string(v["tree_metadata"].as_str().unwrap()).unwrap();
    assert!(
        tree.lines()
            .any(|l| l.starts_with("/opt/rig/nobody f 0644 65534 65534")),
        "{tree}"
    );
    assert!(
        tree.lines()
            .any(|l| l.starts_with("/opt/rig/setuid f 4755 1000 1000") || !is_root()),
        "{tree}"
    );
    // A non-empty target is refused before anything happens.
    let e = h.fails(&["unpack", &r, dir.to_str().unwrap()], 2);
    assert!(e.contains("not empty"), "{e}");
}

fn bad_image(
    config_edit: impl Fn(&mut serde_json::Value),
    layer_tar: Vec<u8>,
) -> (String, PathBuf, Hoist) {
    let reg = &registries().plain;
    let repo = unique_repo("bad");
    let layer = Blob {
        media_type: media::OCI_LAYER_GZIP.into(),
        bytes: crate::harness::image::gzip(&layer_tar),
    };
    let mut cfg = serde_json::json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [sha256(&layer_tar)]}});
    config_edit(&mut cfg);
    let img = crate::harness::image::assemble(vec![layer], &cfg, false);
    reg.push_image(&repo, "v1", &img);
    let h = Hoist::new();
    let dir = h.home.path().join("rootfs");
    (format!("{}/{repo}:v1", reg.host), dir, h)
}

fn no_leftovers(dir: &Path) {
    assert!(
        !dir.exists(),
        "a half-made rootfs was left at {}",
        dir.display()
    );
    let parent = dir.parent().unwrap();
    let stray: Vec<_> = std::fs::read_dir(parent)
        .unwrap()
        .filter_map(|e| {
            let n = e.unwrap().file_name().into_string().unwrap();
            n.contains(".hoist-").then_some(n)
        })
        .collect();
    assert!(stray.is_empty(), "temp trees left: {stray:?}");
}

#[test]
fn diff_id_mismatch_fails_with_exit_6_and_leaves_no_rootfs() {
    let tar = crate::harness::image::tar_of(&[("a", b"a"), ("b", b"b")]);
    let (r, dir, h) = bad_image(
        |c| c["rootfs"]["diff_ids"][0] = sha256(b"something else").into(),
        tar,
    );
    let e = h.fails(&["unpack", &r, dir.to_str().unwrap()], 6);
    assert!(e.contains("diff_id"), "{e}");
    no_leftovers(&dir);
}

#[test]
fn invalid_configs_are_named_before_any_file_is_written() {
    let tar = crate::harness::image::tar_of(&[("a", b"a")]);
    let (r, dir, h) = bad_image(
        |c| c["rootfs"]["diff_ids"] = serde_json::json!([]),
        tar.clone(),
    );
    let e = h.fails(&["unpack", &r, dir.to_str().unwrap()], 1);
    assert!(e.contains("0 diff_ids") && e.contains("1 layers"), "{e}");
    no_leftovers(&dir);
    assert_eq!(
        h.assert_blobs_verified(),
        1,
        "only the config was fetched, no layer"
    );
    let (r, dir, h) = bad_image(|c| c["rootfs"]["type"] = "snapshot".into(), tar);
    let e = h.fails(&["unpack", &r, dir.to_str().unwrap()], 1);
    assert!(e.contains("rootfs.type"), "{e}");
    no_leftovers(&dir);
}

#[test]
fn malformed_tar_fails_cleanly() {
    let mut tar = crate::harness::image::tar_of(&[("a", &[7u8; 5000][..]), ("b", b"b")]);
    tar.truncate(3000);
    tar.extend_from_slice(&[0x55; 1024]);
    let (r, dir, h) = bad_image(|_| {}, tar);
    let out = h.run(&["unpack", &r, dir.to_str().unwrap()]);
    assert!(!out.status.success());
    no_leftovers(&dir);
}

#[test]
fn rootless_unpack_maps_owners_to_the_caller_and_records_the_truth() {
    if !is_root() {
        crate::harness::skip(
            "this test drops root privileges with setpriv, so it must start as root",
        );
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let tars = layer_tars(work.path());
    let (r, _) = pushed(&tars, Variant::OciGzip, "rootless");
    let base = tempfile::Builder::new()
        .prefix("hoist-rootless")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let dir = base.path().join("rootfs");
    let cache = base.path().join("cache");
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(crate::harness::hoist_for_anyone(base.path()))
        .args(["--json", "--cache-dir"])
        .arg(&cache)
        .args(["unpack", &r])
        .arg(&dir)
        .env("HOME", base.path())
        .env("NO_PROXY", "127.0.0.1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ownership"], "caller");
    let ours = treesum(&dir, true);
    assert!(
        ours.iter().all(|l| l.split('\t').nth(3) == Some("65534")),
        "everything belongs to the caller"
    );
    let tree = std::fs::read_to_string(v["tree_metadata"].as_str().unwrap()).unwrap();
    assert!(
        tree.lines()
            .any(|l| l.starts_with("/opt/rig/setuid f 4755 1000 1000")),
        "{tree}"
    );
    assert!(
        tree.lines()
            .any(|l| l.starts_with("/home/app d 0755 1000 1000")),
        "{tree}"
    );
    assert!(
        tree.lines()
            .any(|l| l.starts_with("/opt/rig/fifo p 0644 0 0")),
        "{tree}"
    );
    // Modes are kept rootless too (read-only dirs included) and the tree
    // is removable by its owner.
    assert!(ours.iter().any(|l| l.starts_with("/opt/ro\td\t0555")));
    let rm = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            "rm",
            "-rf",
        ])
        .arg(&cache)
        .output()
        .unwrap();
    assert!(rm.status.success());
    let _ = std::io::stdout().flush();
}

#[test]
fn a_blob_corrupted_in_the_cache_fails_the_unpack_and_fsck_names_it() {
    let tar = crate::harness::image::tar_of(&[("a", &[3u8; 20000][..]), ("b", b"b")]);
    let (r, dir, h) = bad_image(|_| {}, tar);
    h.ok(&["pull", &r]);
    let layout = h.layout();
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let m: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            layout
                .join("blobs/sha256")
                .join(&index["manifests"][0]["digest"].as_str().unwrap()[7..]),
        )
        .unwrap(),
    )
    .unwrap();
    let blob = layout
        .join("blobs/sha256")
        .join(&m["layers"][0]["digest"].as_str().unwrap()[7..]);
    let mut b = std::fs::read(&blob).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x40;
    std::fs::write(&blob, b).unwrap();
    for extra in [&[][..], &["--verify-blobs"][..]] {
        let mut args = vec!["unpack", &r, dir.to_str().unwrap()];
        args.extend_from_slice(extra);
        let out = h.run(&args);
        assert!(
            !out.status.success(),
            "a corrupted blob was unpacked ({extra:?})"
        );
        no_leftovers(&dir);
    }
    let out = h.run(&["fsck"]);
    assert_eq!(out.status.code(), Some(6));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("corrupt:"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// The diff_id verification record: written when a layer is first
/// applied, used by later unpacks (which then check the blob's digest
/// instead of hashing the tar), checked by fsck, and never a way for a
/// damaged blob to pass.
#[test]
fn a_recorded_layer_whose_blob_was_damaged_cannot_pass_unpack_or_fsck() {
    let reg = &registries().plain;
    let repo = unique_repo("verified");
    let img = crate::harness::sample_image(1801, 512);
    reg.push_image(&repo, "v1", &img);
    let r = format!("{}/{repo}:v1", reg.host);
    let h = Hoist::new();
    let w = tempfile::tempdir().unwrap();
    h.ok(&["unpack", &r, w.path().join("a").to_str().unwrap()]);
    let records = h.layout().join(".hoist/verified");
    let n = std::fs::read_dir(&records).map_or(0, |d| d.count());
    assert_eq!(n, img.layers.len(), "one record per layer once applied");
    let first =
        std::fs::read_to_string(records.join(format!("sha256-{}", &img.layers[0].digest()[7..])))
            .unwrap();
    let diff0 = format!("sha256:{}", {
        let mut d = flate2::read::GzDecoder::new(&img.layers[0].bytes[..]);
        let mut t = Vec::new();
        std::io::Read::read_to_end(&mut d, &mut t).unwrap();
        sha256(&t)[7..].to_string()
    });
    assert_eq!(first.trim(), diff0);
    // A second unpack trusts the records and gives the same tree.
    h.ok(&["unpack", &r, w.path().join("b").to_str().unwrap()]);
    assert_eq!(
        treesum(&w.path().join("a"), true),
        treesum(&w.path().join("b"), true)
    );
    let out = h.ok(&["fsck"]);
    assert!(out.contains("3 checked (layers inflated again)"), "{out}");
    assert!(out.contains("consistent"), "{out}");
    // Damage the biggest layer in place, its size unchanged.
    let victim = h
        .layout()
        .join("blobs/sha256")
        .join(&img.layers[1].digest()[7..]);
    let mut bytes = std::fs::read(&victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&victim, &bytes).unwrap();
    let e = h.fails(&["unpack", &r, w.path().join("c").to_str().unwrap()], 6);
    assert!(e.contains("mismatch") || e.contains("digest"), "{e}");
    assert!(!w.path().join("c").exists(), "nothing half-made");
    let out = h.run(&["fsck"]);
    assert_eq!(out.status.code(), Some(6));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("bad record:"), "{text}");
    // A forged record (a diff_id the blob does not inflate to) is found.
    let h2 = Hoist::new();
    h2.ok(&["unpack", &r, w.path().join("d").to_str().unwrap()]);
    let rec = h2
        .layout()
        .join(".hoist/verified")
        .join(format!("sha256-{}", &img.layers[2].digest()[7..]));
    std::fs::write(&rec, format!("sha256:{}\n", "0".repeat(64))).unwrap();
    let out = h2.run(&["fsck"]);
    assert_eq!(
        out.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // ... and does not fool an unpack: it does not match the config's
    // diff_id, so the layer is hashed again and the record rewritten.
    h2.ok(&["unpack", &r, w.path().join("e").to_str().unwrap()]);
    assert!(std::fs::read_to_string(&rec).unwrap().trim() != format!("sha256:{}", "0".repeat(64)));
    h2.ok(&["fsck"]);
}

/// Files are created with their own mode when that comes out exactly, and
/// chmodded otherwise. What could get that wrong: a umask that strips bits
/// of the mode, special bits, an xattr that needs write permission to set
/// on a read-only file, and a default ACL above the target (it decides new
/// files' modes instead of the umask).
#[test]
fn file_modes_come_out_exact_under_any_umask_and_under_a_default_acl() {
    use std::os::unix::process::CommandExt;
    let modes: [u32; 11] = [
        0o644, 0o600, 0o000, 0o444, 0o640, 0o755, 0o777, 0o4755, 0o2750, 0o1777, 0o400,
    ];
    let mut b = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    b.append_data(&mut dir, "m/", &[][..]).unwrap();
    for (i, m) in modes.iter().enumerate() {
        let mut h = tar::Header::new_ustar();
        h.set_mode(*m);
        h.set_size(3);
        h.set_mtime(1_600_000_000);
        b.append_data(&mut h, format!("m/f{i}-{m:o}"), &b"abc"[..])
            .unwrap();
    }
    // A read-only file with an xattr: set before its mode, or not at all.
    b.append_pax_extensions([("SCHILY.xattr.user.note", &b"kept"[..])])
        .unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_mode(0o444);
    h.set_size(3);
    b.append_data(&mut h, "m/ro-xattr", &b"abc"[..]).unwrap();
    let tars = vec![b.into_inner().unwrap()];
    let (r, _) = pushed(&tars, Variant::OciGzip, "modes");
    let h = Hoist::new();
    h.ok(&["pull", &r]);

    // A parent whose default ACL gives new files' group and others nothing.
    let acl_parent = tempfile::tempdir().unwrap();
    let mut acl = vec![2u8, 0, 0, 0];
    for (tag, perm) in [(0x01u16, 7u16), (0x04, 0), (0x20, 0)] {
        acl.extend(tag.to_le_bytes());
        acl.extend(perm.to_le_bytes());
        acl.extend(u32::MAX.to_le_bytes());
    }
    let p = std::ffi::CString::new(acl_parent.path().as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid C strings and buffer, lengths as given.
    let rc = unsafe {
        libc::setxattr(
            p.as_ptr(),
            c"system.posix_acl_default".as_ptr(),
            acl.as_ptr().cast(),
            acl.len(),
            0,
        )
    };
    assert_eq!(
        rc,
        0,
        "setting a default ACL: {}",
        std::io::Error::last_os_error()
    );

    let plain_parent = tempfile::Builder::new()
        .prefix("hoist-modes")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(plain_parent.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    // As root, also unprivileged: there an xattr on a read-only file can
    // only be set while the file is still writable.
    let rootless = if is_root() { Some(65534) } else { None };
    for (parent, umask, uid) in [
        (plain_parent.path(), 0o022, None),
        (plain_parent.path(), 0o077, None),
        (plain_parent.path(), 0o000, None),
        (plain_parent.path(), 0o777, None),
        (acl_parent.path(), 0o022, None),
        (plain_parent.path(), 0o022, rootless),
        (plain_parent.path(), 0o027, rootless),
    ] {
        let out_dir = parent.join(format!("rootfs-{umask:o}-{uid:?}"));
        let mut c = match uid {
            None => h.cmd(),
            Some(uid) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={uid}"))
                    .args(["--clear-groups", "--"])
                    .arg(crate::harness::hoist_for_anyone(plain_parent.path()))
                    .arg("--cache-dir")
                    .arg(plain_parent.path().join(format!("cache-{umask:o}")))
                    .env("HOME", plain_parent.path())
                    .env("NO_PROXY", "127.0.0.1");
                c
            }
        };
        c.args(["unpack", &r]).arg(&out_dir);
        // SAFETY: umask is async-signal-safe.
        unsafe {
            c.pre_exec(move || {
                libc::umask(umask);
                Ok(())
            });
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "umask {umask:o}, uid {uid:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for (i, m) in modes.iter().enumerate() {
            let f = out_dir.join(format!("m/f{i}-{m:o}"));
            let got = std::fs::metadata(&f).unwrap().permissions().mode() & 0o7777;
            assert_eq!(
                got,
                *m,
                "{} under umask {umask:o} in {}",
                f.display(),
                parent.display()
            );
            assert_eq!(std::fs::read(&f).unwrap(), b"abc");
        }
        let ro = out_dir.join("m/ro-xattr");
        assert_eq!(
            std::fs::metadata(&ro).unwrap().permissions().mode() & 0o7777,
            0o444
        );
        let mut v = [0u8; 16];
        let rp = std::ffi::CString::new(ro.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: valid C strings and buffer.
        let n = unsafe {
            libc::getxattr(
                rp.as_ptr(),
                c"user.note".as_ptr(),
                v.as_mut_ptr().cast(),
                v.len(),
            )
        };
        assert_eq!(n, 4, "user.note under umask {umask:o}, uid {uid:?}");
        assert_eq!(&v[..4], b"kept");
    }
}
