//! `hoist export` to ext4, erofs and cpio, checked with tools that read the
//! images without mounting them; as root and as an unprivileged user, the
//! images must say the same owners, modes and device numbers.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::image::{sha256, Blob, Image};
use crate::harness::{registries, unique_repo, Hoist};
use hoist_spec::media;

pub(crate) fn is_root() -> bool {
    // SAFETY: no arguments, always succeeds.
    unsafe { libc::geteuid() == 0 }
}

pub(crate) fn sh(script: &str, dir: &Path) {
    let out = Command::new("sh")
        .arg("-ec")
        .arg(script)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A one-layer image made by GNU tar from a tree built as root: /etc/shadow
/// 0640 root:42, /home/app owned 1000, setuid, /dev/null and a block
/// device, a FIFO, a hardlink, symlinks; busybox (when installed) and an
/// init script as the entrypoint.
fn image(work: &Path) -> (String, Image) {
    let t = work.join("tree");
    std::fs::create_dir_all(&t).unwrap();
    sh(
        "mkdir -p etc home/app bin dev usr/bin tmp
         printf 'root:*:19000:0:99999:7:::\n' > etc/shadow; chown 0:42 etc/shadow; chmod 0640 etc/shadow
         echo hello > home/app/greeting; chown -R 1000:1000 home/app
         printf '#!/bin/sh\n' > usr/bin/su-like; chmod 4755 usr/bin/su-like
         mknod dev/null c 1 3; chmod 0666 dev/null; mknod dev/sda b 8 0; chown 0:6 dev/sda; chmod 0660 dev/sda
         mkfifo tmp/fifo; chmod 1777 tmp
         echo linked > etc/a; ln etc/a etc/b; ln -s /etc/a etc/abs-link
         echo ping > usr/bin/ping-like; chmod 0755 usr/bin/ping-like
         setfattr -n security.capability -v 0x0100000200200000000000000000000000000000 usr/bin/ping-like
         setfattr -n user.comment -v hoist usr/bin/ping-like
         if [ -x /bin/busybox ]; then cp /bin/busybox bin/busybox; fi
         printf '#!/bin/busybox sh\n/bin/busybox echo HOIST-BOOT-OK uid=$(/bin/busybox id -u) shadow=$(/bin/busybox stat -c %%u:%%g:%%a /etc/shadow) null=$(/bin/busybox stat -c %%F:%%t,%%T /dev/null)\n/bin/busybox poweroff -f\n' > init.sh
         chmod 0755 init.sh",
        &t,
    );
    let tar = crate::shared::tar_of_tree(&t);
    let layer = Blob {
        media_type: media::OCI_LAYER_GZIP.into(),
        bytes: crate::harness::image::gzip(&tar),
    };
    let cfg = serde_json::json!({"architecture": "amd64", "os": "linux", "config": {"Entrypoint": ["/init.sh"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256(&tar)]}});
    let img = crate::harness::image::assemble(vec![layer], &cfg, false);
    let reg = &registries().plain;
    let repo = unique_repo("export");
    reg.push_image(&repo, "v1", &img);
    (format!("{}/{repo}:v1", reg.host), img)
}

/// Run `hoist export` as root, or as uid 65534 with `unprivileged`.
fn export(r: &str, base: &Path, format: &str, name: &str, unprivileged: bool) -> PathBuf {
    let out = base.join(name);
    let mut c = if unprivileged {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(crate::harness::hoist_for_anyone(base));
        c
    } else {
        Command::new(env!("CARGO_BIN_EXE_hoist"))
    };
    let cache = base.join(if unprivileged {
        "cache-user"
    } else {
        "cache-root"
    });
    let o = c
        .arg("--cache-dir")
        .arg(&cache)
        .args(["--json", "export", r, "-o"])
        .arg(&out)
        .args(match format {
            "erofs-lz4" => vec!["--format", "erofs", "--compress", "lz4"],
            f => vec!["--format", f],
        })
        .env("HOME", base)
        .env("NO_PROXY", "127.0.0.1")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "export {format} (unprivileged: {unprivileged}): {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["path"], out.to_str().unwrap());
    assert_eq!(v["metadata"]["entrypoint"][0], "/init.sh");
    out
}

fn base_dir() -> tempfile::TempDir {
    let base = tempfile::Builder::new()
        .prefix("hoist-export")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    base
}

fn cpio_listing(f: &Path) -> String {
    let o = Command::new("cpio")
        .args(["-itv", "--numeric-uid-gid", "--quiet"])
        .stdin(std::fs::File::open(f).unwrap())
        .output()
        .expect("cpio");
    assert!(
        o.status.success(),
        "cpio: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn debugfs_stat(img: &Path, path: &str) -> String {
    let o = Command::new("debugfs")
        .arg("-R")
        .arg(format!("stat {path}"))
        .arg(img)
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&o.stdout).to_string();
    // Type, mode, owner and device lines; not the times or block lists.
    s.lines()
        .filter(|l| {
            l.starts_with("Inode:")
                || l.starts_with("User:")
                || l.contains("Device major/minor")
                || l.contains(" = ")
        })
        .map(|l| l.split("   Flags").next().unwrap().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn exports_say_the_true_ownership_as_root_and_unprivileged() {
    if !is_root() {
        crate::harness::skip("building the device-node fixture and dropping privileges need root");
        return;
    }
    let base = base_dir();
    let (r, img) = image(base.path());

    // cpio
    let root_cpio = export(&r, base.path(), "cpio", "root.cpio", false);
    let user_cpio = export(&r, base.path(), "cpio", "user.cpio", true);
    let listing = cpio_listing(&root_cpio);
    assert_eq!(
        listing,
        cpio_listing(&user_cpio),
        "root and unprivileged cpio listings differ"
    );
    let line = |p: &str| {
        listing
            .lines()
            .find(|l| l.ends_with(&format!(" {p}")))
            .unwrap_or_else(|| panic!("{p} missing:\n{listing}"))
            .to_string()
    };
    assert!(
        line("etc/shadow").starts_with("-rw-r-----   1 0        42"),
        "{}",
        line("etc/shadow")
    );
    assert!(
        line("home/app/greeting").contains(" 1000     1000 "),
        "{}",
        line("home/app/greeting")
    );
    assert!(
        line("usr/bin/su-like").starts_with("-rwsr-xr-x"),
        "{}",
        line("usr/bin/su-like")
    );
    assert!(
        line("dev/null").starts_with("crw-rw-rw-") && line("dev/null").contains("1,   3"),
        "{}",
        line("dev/null")
    );
    assert!(
        line("dev/sda").starts_with("brw-rw----") && line("dev/sda").contains(" 0        6 "),
        "{}",
        line("dev/sda")
    );
    assert!(line("tmp/fifo").starts_with("p"), "{}", line("tmp/fifo"));
    assert!(line("tmp").starts_with("drwxrwxrwt"));
    assert!(line("etc/abs-link -> /etc/a").starts_with("l"));
    assert!(
        line("etc/a").starts_with("-rw-r--r--   2 "),
        "hardlink kept: {}",
        line("etc/a")
    );

    // ext4
    let root_ext4 = export(&r, base.path(), "ext4", "root.ext4", false);
    let user_ext4 = export(&r, base.path(), "ext4", "user.ext4", true);
    for img in [&root_ext4, &user_ext4] {
        let o = Command::new("e2fsck").arg("-fn").arg(img).output().unwrap();
        assert!(
            o.status.success(),
            "e2fsck: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    for p in [
        "/etc/shadow",
        "/home/app",
        "/home/app/greeting",
        "/usr/bin/su-like",
        "/dev/null",
        "/dev/sda",
        "/tmp/fifo",
        "/etc/a",
        "/etc/b",
        "/etc/abs-link",
        "/usr/bin/ping-like",
    ] {
        let a = debugfs_stat(&root_ext4, p);
        assert!(!a.is_empty(), "{p} missing in ext4");
        assert_eq!(
            a,
            debugfs_stat(&user_ext4, p),
            "{p}: root and unprivileged ext4 differ"
        );
    }
    let shadow = debugfs_stat(&root_ext4, "/etc/shadow");
    assert!(
        shadow.contains("Mode:  0640") && shadow.contains("User:     0   Group:    42"),
        "{shadow}"
    );
    // xattrs come from the tar headers, so a rootless export keeps the
    // file capability that its unpack could not set.
    let ping = debugfs_stat(&user_ext4, "/usr/bin/ping-like");
    assert!(
        ping.contains("security.capability (20)") && ping.contains("user.comment (5) = \"hoist\""),
        "{ping}"
    );
    let null = debugfs_stat(&root_ext4, "/dev/null");
    assert!(
        null.contains("character special") && null.contains("Device major/minor number: 01:03"),
        "{null}"
    );
    assert_eq!(
        debugfs_stat(&root_ext4, "/etc/a")
            .split('\n')
            .next()
            .unwrap()
            .split_whitespace()
            .nth(1),
        debugfs_stat(&root_ext4, "/etc/b")
            .split('\n')
            .next()
            .unwrap()
            .split_whitespace()
            .nth(1),
        "hardlinks share an inode"
    );

    // erofs
    let root_erofs = export(&r, base.path(), "erofs", "root.erofs", false);
    let user_erofs = export(&r, base.path(), "erofs", "user.erofs", true);
    for img in [&root_erofs, &user_erofs] {
        let o = Command::new("fsck.erofs").arg(img).output().unwrap();
        assert!(
            o.status.success(),
            "fsck.erofs: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let dump = |img: &Path, p: &str| {
        let o = Command::new("dump.erofs")
            .arg(format!("--path={p}"))
            .arg(img)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| {
                l.starts_with("Uid")
                    || l.contains("Xattr size")
                    || l.contains("file")
                    || l.contains("device")
                    || l.contains("fifo")
                    || l.contains("directory")
            })
            .map(|l| l.split("  On-disk").next().unwrap().to_string())
            .collect::<Vec<_>>()
            .join("\n")
    };
    for p in [
        "/etc/shadow",
        "/home/app/greeting",
        "/usr/bin/su-like",
        "/dev/null",
        "/dev/sda",
        "/tmp/fifo",
        "/usr/bin/ping-like",
    ] {
        let a = dump(&root_erofs, p);
        assert!(a.contains("Uid"), "{p}: {a}");
        assert_eq!(
            a,
            dump(&user_erofs, p),
            "{p}: root and unprivileged erofs differ"
        );
    }
    // Both carry the capability and the comment (Xattr size 0 = none).
    let ping = dump(&user_erofs, "/usr/bin/ping-like");
    assert!(
        ping.contains("Xattr size: ") && !ping.contains("Xattr size: 0"),
        "{ping}"
    );
    assert!(
        dump(&root_erofs, "/etc/shadow").contains("Uid: 0   Gid: 42  Access: 0640"),
        "{}",
        dump(&root_erofs, "/etc/shadow")
    );

    // Field by field against the tar headers, uncompressed and lz4, made
    // as root and unprivileged.
    let want = crate::erofs_fields::headers(&img.layers[0].bytes);
    assert!(want.len() > 15, "{want:?}");
    let root_lz4 = export(&r, base.path(), "erofs-lz4", "root-lz4.erofs", false);
    let user_lz4 = export(&r, base.path(), "erofs-lz4", "user-lz4.erofs", true);
    let mnt = base.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    for img in [&root_erofs, &user_erofs, &root_lz4, &user_lz4] {
        crate::erofs_fields::dump_matches(img, &want);
        let o = Command::new("mount")
            .args(["-t", "erofs", "-o", "loop,ro"])
            .arg(img)
            .arg(&mnt)
            .output()
            .unwrap();
        if !o.status.success() {
            let why = format!(
                "mount {}: {}",
                img.display(),
                String::from_utf8_lossy(&o.stderr)
            );
            crate::harness::skip(&why);
            continue;
        }
        let r = std::panic::catch_unwind(|| crate::erofs_fields::mount_matches(&mnt, &want));
        let _ = Command::new("umount").arg(&mnt).status();
        r.unwrap();
    }
}

#[test]
fn ext4_is_deterministic_and_a_too_small_size_is_a_clear_error() {
    let base = base_dir();
    let (r, _) = image(base.path());
    let h = Hoist::new();
    let a = h.home.path().join("a.ext4");
    let b = h.home.path().join("b.ext4");
    h.ok(&["export", &r, "-o", a.to_str().unwrap()]);
    // A second apart, so any wall-clock time that leaks into the image
    // (ctime, atime under relatime, crtime) shows.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    h.ok(&["export", &r, "-o", b.to_str().unwrap()]);
    assert_eq!(
        sha256(&std::fs::read(&a).unwrap()),
        sha256(&std::fs::read(&b).unwrap()),
        "same image, different ext4 bytes"
    );
    let e = h.fails(
        &[
            "export",
            &r,
            "-o",
            h.home.path().join("c.ext4").to_str().unwrap(),
            "--size",
            "64K",
        ],
        2,
    );
    assert!(e.contains("more than the requested size"), "{e}");
    // Regression: the cause used to be printed twice (once in the error's
    // own message, once more from its source chain).
    assert_eq!(e.matches("more than the requested size").count(), 1, "{e}");
    assert!(
        !h.home.path().join("c.ext4").exists(),
        "a failed export left its output"
    );
    let left = crate::harness::hoist_leftovers(h.home.path());
    assert!(left.is_empty(), "a failed export left {left:?}");
    let gz = h.home.path().join("x.cpio.gz");
    h.ok(&[
        "export",
        &r,
        "--format",
        "cpio",
        "--gzip",
        "-o",
        gz.to_str().unwrap(),
    ]);
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!("gzip -dc {} | cpio -it --quiet", gz.display()))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stdout)
        .lines()
        .any(|l| l == "etc/shadow"));
}

/// The newest `vmlinuz-*` in `dir`.
fn newest_vmlinuz(dir: &Path) -> Option<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("vmlinuz-")
        })
        .collect();
    v.sort();
    v.pop()
}

/// Where scripts/test.sh puts the kernel and modules of Debian's
/// linux-image package.
fn test_kernel_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-kernel")
}

/// `kernel` if it, QEMU, busybox-static and root are all there; else
/// `None` after saying SKIPPED (`why`), which fails under CI: CI installs
/// all of it, so a skip there would hide a broken setup.
fn ready_to_boot(kernel: Option<PathBuf>, why: &str) -> Option<PathBuf> {
    let qemu = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok();
    let busybox = Path::new("/bin/busybox").exists();
    if kernel.is_some() && qemu && busybox && is_root() {
        return kernel;
    }
    let why = format!(
        "{why}; have kernel={kernel:?} qemu={qemu} busybox={busybox} root={}",
        is_root()
    );
    crate::harness::skip(&why);
    None
}

/// Boot `kernel` with `initrd` under QEMU (512 MiB, no reboot, five
/// minutes at most) and return what the serial console said. Every boot
/// passes `no_timer_check`: under TCG on a loaded machine the guest's
/// timer check can fail ("IO-APIC + timer doesn't work") and panic it.
pub(crate) fn qemu_console(kernel: &Path, initrd: &Path, extra: &[String], append: &str) -> String {
    let append = format!("{append} no_timer_check");
    let out = Command::new("timeout")
        .args([
            "300",
            "qemu-system-x86_64",
            "-m",
            "512",
            "-nographic",
            "-no-reboot",
            "-kernel",
        ])
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(extra)
        .args(["-append", &append])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The image's own `/init.sh` ran and saw what the tar headers say.
pub(crate) fn assert_booted(console: &str, what: &str) {
    let line = console
        .lines()
        .find(|l| l.contains("HOIST-BOOT-OK"))
        .unwrap_or_else(|| panic!("{what}: no boot marker on the console:\n{console}"));
    assert!(line.contains("uid=0"), "{what}: {line}");
    assert!(line.contains("shadow=0:42:640"), "{what}: {line}");
    assert!(
        line.contains("null=character special file:1,3"),
        "{what}: {line}"
    );
}

/// Boot the cpio export under QEMU with Debian's kernel, the image's
/// entrypoint as init, and read its serial console.
#[test]
fn cpio_export_boots_under_qemu_with_the_entrypoint_as_init() {
    // $HOIST_TEST_KERNEL, else the kernel scripts/test.sh extracts from
    // Debian's linux-image package, else the host's /boot.
    let kernel = std::env::var_os("HOIST_TEST_KERNEL")
        .map(PathBuf::from)
        .or_else(|| newest_vmlinuz(&test_kernel_dir().join("boot")))
        .or_else(|| newest_vmlinuz(Path::new("/boot")));
    let Some(kernel) = ready_to_boot(
        kernel,
        "boot smoke test needs a kernel (linux-image-amd64, fetched by scripts/test.sh), qemu-system-x86_64, busybox-static and root",
    ) else {
        return;
    };
    let base = base_dir();
    let (r, _) = image(base.path());
    let img = export(&r, base.path(), "cpio", "boot.cpio", true);
    let console = qemu_console(
        &kernel,
        &img,
        &[],
        "console=ttyS0 rdinit=/init.sh panic=-1 quiet",
    );
    assert_booted(&console, "cpio");
}

/// The modules a virtio disk with ext4 or erofs under an overlay needs, in
/// load order (from their `depends=`; Debian's package has no modules.dep).
const BOOT_MODULES: &[&str] = &[
    "virtio_ring",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio",
    "virtio_pci",
    "virtio_blk",
    "crc32c_generic",
    "jbd2",
    "mbcache",
    "crc16",
    "ext4",
    "libcrc32c",
    "erofs",
    "overlay",
];

/// The ext4 and erofs disks boot as the Go original's guest uses them: the
/// read-only lower layer of an overlay, on virtio-blk. A small initramfs
/// (busybox and Debian's modules) mounts the disk and switches to the
/// image's own `/init.sh`, whose output is read on the serial console.
#[test]
fn ext4_and_erofs_disks_boot_under_qemu_as_the_lower_layer_of_an_overlay() {
    let base = base_dir();
    let Some((kernel, initrd)) = boot_initrd(base.path()) else {
        return;
    };
    let (r, _) = image(base.path());
    // The lz4 image too: the guest kernel (Debian's 6.1) decompresses it.
    for fmt in ["ext4", "erofs", "erofs-lz4"] {
        let disk = export(&r, base.path(), fmt, &format!("boot.{fmt}"), true);
        let fs = fmt.trim_end_matches("-lz4");
        let drive = format!("file={},format=raw,if=virtio,readonly=on", disk.display());
        let console = qemu_console(
            &kernel,
            &initrd,
            &["-drive".to_string(), drive],
            &format!("console=ttyS0 rdinit=/init panic=-1 quiet hoistfs={fs}"),
        );
        assert_booted(&console, fmt);
    }
}

/// Debian's kernel and a small initramfs (busybox and the kernel's own
/// modules) whose `/init` mounts `/dev/vda` (`hoistfs=` on the command
/// line gives its type; `hoistdevs=N` adds `/dev/vdb`… as N erofs extra
/// devices) as the read-only lower layer of an overlay and switches to
/// the image's own `/init.sh`. None after saying SKIPPED when something
/// is missing.
pub(crate) fn boot_initrd(base: &Path) -> Option<(PathBuf, PathBuf)> {
    // Only the kernel the modules came from will load them.
    let kdir = test_kernel_dir();
    let modules = std::fs::read_dir(kdir.join("lib/modules"))
        .ok()
        .and_then(|mut d| d.next())
        .and_then(|e| e.ok())
        .map(|e| e.path());
    let kernel = newest_vmlinuz(&kdir.join("boot")).filter(|_| modules.is_some());
    let kernel = ready_to_boot(
        kernel,
        "the disk boot test needs the kernel and modules scripts/test.sh extracts, qemu-system-x86_64, busybox-static and root",
    )?;
    let modules = modules.unwrap();
    let rd = base.join("initrd");
    std::fs::create_dir_all(rd.join("bin")).unwrap();
    std::fs::create_dir_all(rd.join("mods")).unwrap();
    std::fs::copy("/bin/busybox", rd.join("bin/busybox")).unwrap();
    for m in BOOT_MODULES {
        let found = walk_find(&modules, &format!("{m}.ko")).unwrap_or_else(|| panic!("{m}.ko"));
        std::fs::copy(found, rd.join("mods").join(format!("{m}.ko"))).unwrap();
    }
    let insmods: String = BOOT_MODULES
        .iter()
        .map(|m| format!("insmod /mods/{m}.ko\n"))
        .collect();
    let init = format!(
        "#!/bin/busybox sh\n/bin/busybox --install -s /bin\nexport PATH=/bin\n\
         mkdir -p /proc /sys /dev /lower /rw /merged\n\
         mount -t proc proc /proc; mount -t devtmpfs dev /dev\n{insmods}\
         FS=$(sed -n 's/.*hoistfs=\\([a-z0-9]*\\).*/\\1/p' /proc/cmdline)\n\
         N=$(sed -n 's/.*hoistdevs=\\([0-9]*\\).*/\\1/p' /proc/cmdline)\n\
         OPTS=ro; i=0\n\
         for l in b c d e f g h i j k l m n o p; do [ $i -lt ${{N:-0}} ] || break; OPTS=$OPTS,device=/dev/vd$l; i=$((i+1)); done\n\
         mount -t $FS -o $OPTS /dev/vda /lower || echo HOIST-BOOT-FAIL mount\n\
         mount -t tmpfs rw /rw; mkdir /rw/u /rw/w\n\
         mount -t overlay ov -o lowerdir=/lower,upperdir=/rw/u,workdir=/rw/w /merged || echo HOIST-BOOT-FAIL overlay\n\
         umount /proc\n\
         exec switch_root /merged /init.sh\n"
    );
    std::fs::write(rd.join("init"), init).unwrap();
    sh(
        "chmod 0755 init bin/busybox && find . | cpio -o -H newc --quiet > ../initrd.cpio",
        &rd,
    );
    Some((kernel, base.join("initrd.cpio")))
}

fn walk_find(dir: &Path, name: &str) -> Option<PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.is_dir() {
            if let Some(f) = walk_find(&p, name) {
                return Some(f);
            }
        } else if e.file_name().to_string_lossy() == name {
            return Some(p);
        }
    }
    None
}

/// Regression: a full disk during export read "reading the layer: No space
/// left on device" (it was the write that failed) and exited 1.
#[test]
fn an_export_onto_a_full_disk_says_it_was_writing_exits_8_and_leaves_nothing() {
    let ok = Command::new("unshare")
        .args(["--mount", "--map-root-user", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        crate::harness::skip(
            "cannot make a mount namespace here (unshare --mount --map-root-user)",
        );
        return;
    }
    let reg = &registries().plain;
    let repo = unique_repo("enospc");
    reg.push_image(&repo, "v1", &crate::harness::sample_image(1601, 1024));
    let r = format!("{}/{repo}:v1", reg.host);
    let h = Hoist::new();
    h.ok(&["pull", &r]);
    let full = h.home.path().join("full");
    std::fs::create_dir(&full).unwrap();
    for (format, name) in [
        ("ext4", "app.ext4"),
        ("erofs", "app.erofs"),
        ("cpio", "app.cpio"),
    ] {
        let script = format!(
            "mount -t tmpfs -o size=512k none {full} || exit 99; \
             {hoist} --cache-dir {cache} export {r} --format {format} -o {full}/{name}; \
             echo \"exit=$?\"; ls -A {full}",
            full = full.display(),
            hoist = env!("CARGO_BIN_EXE_hoist"),
            cache = h.cache.display(),
        );
        let out = Command::new("unshare")
            .args(["--mount", "--map-root-user", "sh", "-c", &script])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            stdout.trim(),
            "exit=8",
            "{format}: the exit code, and nothing left in the directory\n{stderr}"
        );
        assert!(
            stderr.contains(&format!(
                "writing {}/{name}: No space left on device",
                full.display()
            )),
            "{format}: {stderr}"
        );
        assert!(!stderr.contains("reading"), "{format}: {stderr}");
    }
}
