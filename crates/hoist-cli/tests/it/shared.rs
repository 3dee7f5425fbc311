//! `hoist export --format erofs --shared-layers DIR`: one erofs file per
//! layer shared between images, and a META image per image. As root, META
//! is mounted by the kernel with its layer files as extra devices (and the
//! layer files stacked with overlayfs) and compared with `hoist unpack`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hoist_spec::media;

use crate::harness::faults::FaultRegistry;
use crate::harness::image::{sha256, Blob};
use crate::harness::registry::registries;
use crate::harness::treesum::{diff, treesum};
use crate::harness::{sample_image, shared_base_pair, skip, unique_repo, Hoist};

use crate::export::{is_root, sh};

/// GNU tar of a tree as pax with xattrs and numeric owners, sorted.
pub(crate) fn tar_of_tree(t: &Path) -> Vec<u8> {
    let out = Command::new("tar")
        .args([
            "--format=pax",
            "--xattrs",
            "--xattrs-include=*",
            "--numeric-owner",
            "--sort=name",
            "-cf",
            "-",
            "-C",
        ])
        .arg(t)
        .arg(".")
        .output()
        .unwrap();
    assert!(out.status.success());
    out.stdout
}

/// Three layers made by GNU tar from trees built as root: owners, modes
/// with setuid and sticky bits, devices, a FIFO, hardlinks, symlinks,
/// xattrs, a sparse file, files around the inline limit and larger; then
/// a layer that deletes a file, replaces one and changes a directory's
/// owner; then one that makes a directory opaque.
fn rich_image(work: &Path) -> (String, Vec<String>) {
    let mut tars = Vec::new();
    for (i, script) in [
        "mkdir -p etc home/app bin dev usr/bin tmp opt/keep opt/old
         printf 'root:*:19000:0:99999:7:::\n' > etc/shadow; chown 0:42 etc/shadow; chmod 0640 etc/shadow
         echo hello > home/app/greeting; chown -R 1000:1000 home/app
         printf '#!/bin/sh\n' > usr/bin/su-like; chmod 4755 usr/bin/su-like
         mknod dev/null c 1 3; chmod 0666 dev/null; mknod dev/sda b 8 0; chown 0:6 dev/sda
         mkfifo tmp/fifo; chmod 1777 tmp
         echo linked > etc/a; ln etc/a etc/b; ln -s /etc/a etc/abs-link
         head -c 3000 /dev/urandom > opt/keep/small; head -c 9000 /dev/urandom > opt/keep/mid
         head -c 700000 /dev/urandom > opt/keep/big; chown 70000:70000 opt/keep/big
         truncate -s 3M opt/keep/sparse; printf tail >> opt/keep/sparse
         echo old > opt/old/file; echo gone > etc/gone
         echo ping > usr/bin/ping-like; chmod 0755 usr/bin/ping-like
         setfattr -n security.capability -v 0x0100000200200000000000000000000000000000 usr/bin/ping-like
         setfattr -n user.comment -v hoist usr/bin/ping-like
         touch -d 2001-02-03 etc/shadow
         if [ -x /bin/busybox ]; then cp /bin/busybox bin/busybox; fi
         printf '#!/bin/busybox sh\\n/bin/busybox echo HOIST-BOOT-OK uid=$(/bin/busybox id -u) shadow=$(/bin/busybox stat -c %%u:%%g:%%a /etc/shadow) null=$(/bin/busybox stat -c %%F:%%t,%%T /dev/null) new=$(/bin/busybox cat /opt/old/new)$(/bin/busybox ls /opt/old)\\n/bin/busybox poweroff -f\\n' > init.sh
         chmod 0755 init.sh",
        "mkdir -p etc home/app
         touch etc/.wh.gone; echo replaced > etc/a; chown 0:0 etc/a
         chown 2000:2000 home/app; echo more > home/app/more",
        "mkdir -p opt/old; touch opt/old/.wh..wh..opq; echo new > opt/old/new",
    ]
    .into_iter()
    .enumerate()
    {
        let t = work.join(format!("tree{i}"));
        std::fs::create_dir_all(&t).unwrap();
        sh(script, &t);
        tars.push(tar_of_tree(&t));
    }
    let layers = tars
        .iter()
        .map(|t| Blob {
            media_type: media::OCI_LAYER_GZIP.into(),
            bytes: crate::harness::image::gzip(t),
        })
        .collect();
    let diff_ids: Vec<String> = tars.iter().map(|t| sha256(t)).collect();
    let cfg = serde_json::json!({"architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": &diff_ids}});
    let img = crate::harness::image::assemble(layers, &cfg, false);
    let reg = &registries().plain;
    let repo = unique_repo("shared");
    reg.push_image(&repo, "v1", &img);
    (format!("{}/{repo}:v1", reg.host), diff_ids)
}

/// `export R --format erofs --shared-layers DIR -o OUT`.
fn shared_args<'a>(r: &'a str, dir: &'a Path, out: &'a Path) -> Vec<&'a str> {
    vec![
        "export",
        r,
        "--format",
        "erofs",
        "--shared-layers",
        dir.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]
}

/// `hoist --json export R --format erofs --shared-layers DIR -o OUT`.
fn export_shared(h: &Hoist, r: &str, dir: &Path, out: &Path, lz4: bool) -> serde_json::Value {
    let mut args = vec!["--json"];
    args.extend(shared_args(r, dir, out));
    if lz4 {
        args.extend(["--compress", "lz4"]);
    }
    serde_json::from_str(&h.ok(&args)).unwrap()
}

fn device_paths(v: &serde_json::Value) -> Vec<PathBuf> {
    v["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| PathBuf::from(d["path"].as_str().unwrap()))
        .collect()
}

/// Every entry's mtime but the root's (the unpacker's root is the
/// directory it made).
fn mtimes(root: &Path) -> Vec<String> {
    fn walk(dir: &Path, rel: &str, out: &mut Vec<String>) {
        let mut es: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
        es.sort_by_key(|e| e.file_name());
        for e in es {
            let r = format!("{rel}/{}", e.file_name().to_string_lossy());
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            out.push(format!("{r} {}", m.mtime()));
            if m.is_dir() {
                walk(&e.path(), &r, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, "", &mut out);
    out
}

/// treesum lines without their hardlink group.
fn no_links(sum: &[String]) -> Vec<String> {
    sum.iter()
        .map(|l| {
            let mut f: Vec<&str> = l.split('\t').collect();
            if f.len() > 7 {
                f[7] = "-";
            }
            f.join("\t")
        })
        .collect()
}

struct Mounted {
    mounts: Vec<PathBuf>,
    loops: Vec<String>,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        for m in self.mounts.iter().rev() {
            let _ = Command::new("umount").arg(m).status();
        }
        for l in &self.loops {
            let _ = Command::new("losetup").arg("-d").arg(l).status();
        }
    }
}

fn mount(args: &[&str], src: &Path, at: &Path, m: &mut Mounted) {
    std::fs::create_dir_all(at).unwrap();
    let o = Command::new("mount")
        .args(args)
        .arg(src)
        .arg(at)
        .output()
        .unwrap();
    assert!(o.status.success(), "mount {args:?} {src:?}: {o:?}");
    m.mounts.push(at.to_path_buf());
}

/// META on read-only loop devices of its layer files, as a guest mounts
/// its disks.
fn mount_meta(meta: &Path, files: &[PathBuf], at: &Path) -> Mounted {
    let mut m = Mounted {
        mounts: Vec::new(),
        loops: Vec::new(),
    };
    for f in files {
        let o = Command::new("losetup")
            .args(["-f", "--show", "-r"])
            .arg(f)
            .output()
            .unwrap();
        assert!(o.status.success(), "losetup: {o:?}");
        m.loops
            .push(String::from_utf8(o.stdout).unwrap().trim().to_string());
    }
    let opts: String = m.loops.iter().map(|l| format!(",device={l}")).collect();
    mount(
        &["-t", "erofs", "-o", &format!("ro{opts}")],
        meta,
        at,
        &mut m,
    );
    m
}

/// The layer files alone, stacked with overlayfs as containerd's erofs
/// snapshotter stacks them.
fn mount_stack(files: &[PathBuf], work: &Path, at: &Path) -> Mounted {
    let mut m = Mounted {
        mounts: Vec::new(),
        loops: Vec::new(),
    };
    let mut lowers = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let l = work.join(format!("lower{i}"));
        mount(&["-t", "erofs", "-o", "loop,ro"], f, &l, &mut m);
        lowers.push(l.display().to_string());
    }
    lowers.reverse();
    let opts = format!("ro,lowerdir={}", lowers.join(":"));
    mount(
        &["-t", "overlay", "-o", &opts],
        Path::new("overlay"),
        at,
        &mut m,
    );
    m
}

fn fsck_with_devices(meta: &Path, files: &[PathBuf]) {
    let mut c = Command::new("fsck.erofs");
    for f in files {
        c.arg(format!("--device={}", f.display()));
        let o = Command::new("fsck.erofs").arg(f).output().unwrap();
        assert!(o.status.success(), "fsck.erofs {f:?}: {o:?}");
    }
    let o = c.arg(meta).output().unwrap();
    assert!(o.status.success(), "fsck.erofs META: {o:?}");
}

/// The whole promise, through the kernel: META with its layer files as
/// devices gives `hoist unpack`'s tree (entries, owners, modes, contents,
/// devices, xattrs, hardlinks, mtimes), and so do the layer files alone
/// under overlayfs; plain and lz4. The device list names every layer,
/// lowest first, by diff_id.
#[test]
fn meta_on_its_layer_devices_and_the_stacked_layer_files_give_the_unpacked_tree() {
    if !is_root() {
        skip("mounting needs root");
        return;
    }
    let h = Hoist::new();
    let work = h.home.path();
    let (r, diff_ids) = rich_image(work);
    let want = work.join("unpacked");
    h.ok(&["-q", "unpack", &r, want.to_str().unwrap()]);
    let want_sum = treesum(&want, true);
    let want_mtimes = mtimes(&want);
    for lz4 in [false, true] {
        let dir = work.join("layers");
        let meta = work.join(format!("app-{lz4}.meta.erofs"));
        let v = export_shared(&h, &r, &dir, &meta, lz4);
        let files = device_paths(&v);
        assert_eq!(files.len(), 3, "{v}");
        for (i, d) in v["devices"].as_array().unwrap().iter().enumerate() {
            assert_eq!(d["diff_id"], diff_ids[i].as_str(), "device {i}");
            assert_eq!(
                d["bytes"].as_u64().unwrap(),
                std::fs::metadata(&files[i]).unwrap().len()
            );
        }
        fsck_with_devices(&meta, &files);
        let standalone = std::fs::metadata(&meta).unwrap().len();
        assert!(standalone < 256 << 10, "META is {standalone} bytes");

        let at = work.join("meta-mnt");
        let m = mount_meta(&meta, &files, &at);
        let got = treesum(&at, true);
        assert!(
            got == want_sum,
            "META (lz4 {lz4}):\n{}",
            diff(&want_sum, &got)
        );
        assert_eq!(mtimes(&at), want_mtimes, "META mtimes (lz4 {lz4})");
        drop(m);

        // overlayfs gives a lower file the link count it has in its own
        // layer (etc/b keeps the etc/a a later layer replaced): compared
        // without hardlink groups.
        let at = work.join("stack-mnt");
        let m = mount_stack(&files, work, &at);
        let (got, want) = (no_links(&treesum(&at, true)), no_links(&want_sum));
        assert!(got == want, "overlay (lz4 {lz4}):\n{}", diff(&want, &got));
        assert_eq!(mtimes(&at), want_mtimes, "overlay mtimes (lz4 {lz4})");
        drop(m);
    }
}

/// Needs a real registry's access log: the second image, on a cache that
/// has nothing, downloads only its own layer and the base's file is
/// reused, byte for byte.
#[test]
fn a_second_image_on_a_shared_base_downloads_and_builds_only_its_own_layer() {
    let reg = &registries().plain;
    let repo = unique_repo("shared-base");
    let (a, b) = shared_base_pair(71, 2 << 10);
    reg.push_image(&repo, "a", &a);
    reg.push_image(&repo, "b", &b);
    let h = Hoist::new();
    let dir = h.home.path().join("layers");
    let va = export_shared(
        &h,
        &format!("{}/{repo}:a", reg.host),
        &dir,
        &h.home.path().join("a.meta"),
        false,
    );
    let base = device_paths(&va)[0].clone();
    let base_bytes = std::fs::read(&base).unwrap();
    reg.settle();
    let before = reg.requests(&repo, "blobs").len();
    // Another cache, empty: only the layer file can spare the download.
    let h2 = Hoist::new();
    let vb = export_shared(
        &h2,
        &format!("{}/{repo}:b", reg.host),
        &dir,
        &h2.home.path().join("b.meta"),
        false,
    );
    reg.settle();
    let after = reg.requests(&repo, "blobs");
    let shared = a.layers[0].digest();
    assert!(
        !after[before..].iter().any(|l| l.contains(&shared)),
        "the base layer was downloaded again: {:?}",
        &after[before..]
    );
    assert_eq!(after.len(), before + 2, "config + b's own layer");
    assert_eq!(vb["devices"][0]["path"], va["devices"][0]["path"]);
    assert_eq!(vb["devices"][0]["reused"], true);
    assert_eq!(vb["devices"][1]["reused"], false);
    assert_eq!(std::fs::read(&base).unwrap(), base_bytes, "rewritten");
    let erofs = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".erofs"))
        .count();
    assert_eq!(erofs, 3, "base, a's layer, b's layer");

    // gc keeps what b's META names and removes a's own layer.
    let out = h2.ok(&[
        "--json",
        "gc",
        "--shared-layers",
        dir.to_str().unwrap(),
        "--keep",
        h2.home.path().join("b.meta").to_str().unwrap(),
    ]);
    let g: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (g["kept"].as_u64(), g["removed"].as_u64()),
        (Some(2), Some(1))
    );
    assert!(base.exists() && !device_paths(&va)[1].exists());
    // A file that is not a META is refused, not taken as "keep nothing".
    let err = h2.fails(
        &[
            "gc",
            "--shared-layers",
            dir.to_str().unwrap(),
            "--keep",
            base.to_str().unwrap(),
        ],
        1,
    );
    assert!(err.contains("no device table"), "{err}");
}

/// Exports of one image started together, each with its own cache, build
/// each layer file once (one of them says it built it, the others reused
/// it), and make the same META.
#[test]
fn concurrent_exports_of_one_image_build_each_layer_file_once() {
    let reg = &registries().plain;
    let repo = unique_repo("shared-race");
    reg.push_image(&repo, "v1", &sample_image(72, 4 << 10));
    let r = format!("{}/{repo}:v1", reg.host);
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("layers");
    let runs: Vec<(Hoist, PathBuf)> = (0..4)
        .map(|i| (Hoist::new(), work.path().join(format!("m{i}.meta"))))
        .collect();
    let children: Vec<_> = runs
        .iter()
        .map(|(h, out)| {
            h.cmd()
                .arg("--json")
                .args(shared_args(&r, &dir, out))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<serde_json::Value> = children
        .into_iter()
        .map(|c| {
            let o = c.wait_with_output().unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            serde_json::from_slice(&o.stdout).unwrap()
        })
        .collect();
    for layer in 0..3 {
        let built = outs
            .iter()
            .filter(|v| v["devices"][layer]["reused"] == false)
            .count();
        assert_eq!(built, 1, "layer {layer} built {built} times");
    }
    let first = std::fs::read(&runs[0].1).unwrap();
    for (_, m) in &runs[1..] {
        assert!(std::fs::read(m).unwrap() == first, "METAs differ");
    }
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(names.is_empty(), "{names:?}");
}

/// kill -9 at any moment of a shared export leaves no layer file without
/// its record and no file that does not check; the next export completes
/// and reuses what was finished; gc removes the killed builds' temps.
#[test]
fn a_killed_shared_export_leaves_no_half_written_layer_file() {
    let f = FaultRegistry::start();
    f.add_image("v1", &sample_image(73, 2 << 10));
    f.set(|p| p.chunk_delay = Duration::from_millis(3));
    let r = format!("{}/crash/shared:v1", f.host());
    let h = Hoist::new();
    let dir = h.home.path().join("layers");
    let meta = h.home.path().join("app.meta");
    let mut args = vec!["-q"];
    args.extend(shared_args(&r, &dir, &meta));
    for ms in [0u64, 40, 120, 250, 500, 800, 1200] {
        let mut child = h.cmd().args(&args).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(ms));
        let _ = child.kill();
        let _ = child.wait();
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            // Renamed in only once whole and synced (its record after it).
            if n.starts_with("sha256-") && n.ends_with(".erofs") {
                // fsck.erofs is installed by scripts/test.sh: missing, this fails.
                let o = Command::new("fsck.erofs")
                    .arg(e.path())
                    .output()
                    .expect("fsck.erofs (erofs-utils)");
                assert!(o.status.success(), "{n} after a kill at {ms} ms: {o:?}");
            }
        }
    }
    f.set(|p| p.chunk_delay = Duration::ZERO);
    let v = export_shared(&h, &r, &dir, &meta, false);
    assert_eq!(device_paths(&v).len(), 3);
    h.ok(&[
        "gc",
        "--shared-layers",
        dir.to_str().unwrap(),
        "--keep",
        meta.to_str().unwrap(),
    ]);
    let left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("sha256-") && n != ".locks")
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // Still whole after gc: a second export reuses all three.
    let v2 = export_shared(&h, &r, &dir, &meta, false);
    assert!(v2["devices"]
        .as_array()
        .unwrap()
        .iter()
        .all(|d| d["reused"] == true));
}

/// META on the first virtio disk and its layer files on the next ones,
/// read-only, mounted by Debian's kernel as the lower layer of an overlay:
/// the image's own init runs and sees the merged tree (the opaque
/// directory holds only the top layer's file). Plain and lz4.
#[test]
fn meta_and_its_layer_disks_boot_under_qemu_as_the_lower_layer_of_an_overlay() {
    let h = Hoist::new();
    let work = h.home.path();
    let Some((kernel, initrd)) = crate::export::boot_initrd(work) else {
        return;
    };
    let (r, _) = rich_image(work);
    for lz4 in [false, true] {
        let dir = work.join("layers");
        let meta = work.join(format!("boot-{lz4}.meta.erofs"));
        let v = export_shared(&h, &r, &dir, &meta, lz4);
        let files = device_paths(&v);
        let mut drives = Vec::new();
        for d in std::iter::once(&meta).chain(&files) {
            drives.push("-drive".to_string());
            drives.push(format!(
                "file={},format=raw,if=virtio,readonly=on",
                d.display()
            ));
        }
        let console = crate::export::qemu_console(
            &kernel,
            &initrd,
            &drives,
            &format!(
                "console=ttyS0 rdinit=/init panic=-1 quiet hoistfs=erofs hoistdevs={}",
                files.len()
            ),
        );
        crate::export::assert_booted(&console, &format!("META (lz4 {lz4})"));
        assert!(
            console.contains("new=new\nnew") || console.contains("new=newnew"),
            "the opaque directory: {console}"
        );
    }
}

/// The layer files and META are the same bytes whether hoist ran as root
/// or as an unprivileged user (owners, devices and xattrs come from the
/// tar headers either way).
#[test]
fn layer_files_and_meta_are_the_same_bytes_as_root_and_unprivileged() {
    if !is_root() {
        skip("running as another user needs root");
        return;
    }
    let base = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let (r, _) = rich_image(base.path());
    let run = |who: &str, unprivileged: bool| {
        let dir = base.path().join(format!("layers-{who}"));
        let meta = base.path().join(format!("{who}.meta"));
        let mut c = if unprivileged {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
                .arg(crate::harness::hoist_for_anyone(base.path()));
            c
        } else {
            Command::new(env!("CARGO_BIN_EXE_hoist"))
        };
        let o = c
            .arg("--cache-dir")
            .arg(base.path().join(format!("cache-{who}")))
            .arg("--json")
            .args(shared_args(&r, &dir, &meta))
            .env("HOME", base.path())
            .env("NO_PROXY", "127.0.0.1")
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{who}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let mut bytes = vec![std::fs::read(&meta).unwrap()];
        for p in device_paths(&v) {
            bytes.push(std::fs::read(p).unwrap());
        }
        bytes
    };
    let root = run("root", false);
    let user = run("user", true);
    assert_eq!(root.len(), 4);
    for (i, (a, b)) in root.iter().zip(&user).enumerate() {
        assert!(a == b, "file {i} differs between root and unprivileged");
    }
}

/// The entry limit holds for shared exports: an image over it fails with
/// the limit's exit code and leaves no META and no temp behind (layer
/// files under the limit each may stay: whole, with their records).
#[test]
fn a_shared_export_over_the_entry_limit_fails_and_leaves_nothing() {
    let reg = &registries().plain;
    let repo = unique_repo("shared-limit");
    reg.push_image(&repo, "v1", &sample_image(74, 16));
    let h = Hoist::new();
    let dir = h.home.path().join("layers");
    let out = h.home.path().join("m.meta");
    let r = format!("{}/{repo}:v1", reg.host);
    let mut args = vec!["--max-entries", "2"];
    args.extend(shared_args(&r, &dir, &out));
    let err = h.fails(&args, 7);
    assert!(err.contains("entries"), "{err}");
    assert!(!out.exists());
    let left: Vec<String> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != ".locks")
                .collect()
        })
        .unwrap_or_default();
    for n in &left {
        assert!(n.starts_with("sha256-"), "{left:?}");
        if n.ends_with(".erofs") {
            assert!(left.contains(&format!("{n}.rec")), "{left:?}");
        }
    }
}
