//! The erofs writer's images, read back by erofs-utils (`fsck.erofs`,
//! `dump.erofs`) and, as root, by the kernel through a loop mount.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::Command;

use hoist_unpack::MergedTree;

use super::{ErofsBuilder, ErofsOptions, ErofsStats};
use crate::ext4::tests::{
    assert_sample_tree, each_random_image, sample, skip, tool, Layer, Stacks,
};

#[test]
fn crc32c_is_castagnoli_without_the_final_inversion() {
    // The standard check value of CRC-32C("123456789") is 0xE3069283; the
    // kernel's form is its inversion.
    assert_eq!(!super::write::crc32c(b"123456789"), 0xE306_9283);
}

const UUID: [u8; 16] = *b"0123456789abcdef";

pub(super) fn build(out: &Path, layers: &[Vec<u8>]) -> Result<ErofsStats, String> {
    build_with(out, layers, ErofsOptions::default())
}

pub(super) fn build_with(
    out: &Path,
    layers: &[Vec<u8>],
    opts: ErofsOptions,
) -> Result<ErofsStats, String> {
    let mut b = ErofsBuilder::create(out, opts, None).map_err(|e| e.to_string())?;
    let mut t = MergedTree::new();
    for l in layers {
        t.apply_layer(&mut &l[..], &mut b)
            .map_err(|e| e.to_string())?;
    }
    t.finish().map_err(|e| e.to_string())?;
    b.finish(&t, UUID).map_err(|e| e.to_string())
}

/// Mount `img` read-only on `mnt` with the kernel's erofs.
pub(super) fn mount(img: &Path, mnt: &Path) -> bool {
    crate::ext4::tests::mount("erofs", img, mnt)
}

/// [`crate::ext4::tests::check_mounted`] for an erofs image: false when
/// mounting cannot run here.
pub(super) fn check_mounted(
    img: &Path,
    tmp: &Path,
    check: impl FnOnce(&Path) + std::panic::UnwindSafe,
) -> bool {
    crate::ext4::tests::check_mounted("erofs", img, tmp, check).is_some()
}

/// The image's tree, as `fsck.erofs --extract` writes it into `dir/x`
/// after checking it (`None`: erofs-utils missing, and not CI).
fn extracted(img: &Path, dir: &Path) -> Option<std::path::PathBuf> {
    if !fsck(img) {
        return None;
    }
    let out = dir.join("x");
    tool(
        Command::new("fsck.erofs")
            .arg(format!("--extract={}", out.display()))
            .arg(img),
    )
    .unwrap();
    Some(out)
}

/// `dump.erofs --path=P` of the image.
fn dump(img: &Path, p: &str) -> String {
    tool(
        Command::new("dump.erofs")
            .arg(format!("--path={p}"))
            .arg(img),
    )
    .unwrap()
}

/// `fsck.erofs --extract` (which decodes every file's data, compressed
/// or not) accepts the image (false: not installed, and not CI).
pub(super) fn fsck(img: &Path) -> bool {
    let Some(out) = tool(Command::new("fsck.erofs").arg("--extract").arg(img)) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "fsck.erofs is missing (Debian package erofs-utils)"
        );
        eprintln!("SKIPPED: fsck.erofs is not installed");
        return false;
    };
    assert!(!out.to_lowercase().contains("error"), "{out}");
    true
}

#[test]
fn an_image_fsck_erofs_accepts_with_true_owners_modes_devices_and_xattrs() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("s.erofs");
    let st = build(&img, &sample()).unwrap();
    assert!(st.inodes > 600);
    if !fsck(&img) {
        return;
    }
    let show = |p: &str| dump(&img, p);
    let shadow = show("/etc/shadow");
    assert!(
        shadow.contains("Uid: 0") || shadow.contains("uid: 0"),
        "{shadow}"
    );
    let tagged = show("/usr/bin/tagged");
    assert!(tagged.to_lowercase().contains("xattr"), "{tagged}");
    // Same layers, same bytes.
    let again = tmp.path().join("again.erofs");
    build(&again, &sample()).unwrap();
    assert_eq!(std::fs::read(&img).unwrap(), std::fs::read(&again).unwrap());
}

#[test]
fn the_kernel_mounts_it_and_reads_what_the_layers_said() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("m.erofs");
    build(&img, &sample()).unwrap();
    let check = |mnt: &Path| {
        assert_sample_tree(mnt);
        let a = std::fs::symlink_metadata(mnt.join("usr/bin/big")).unwrap();
        let b = std::fs::symlink_metadata(mnt.join("usr/bin/big-again")).unwrap();
        assert_eq!(a.ino(), b.ino(), "hardlinks share an inode");
        let s = std::fs::symlink_metadata(mnt.join("etc/shadow")).unwrap();
        assert_eq!((s.uid(), s.gid(), s.mode() & 0o7777), (0, 42, 0o640));
        assert_eq!(
            std::fs::read(mnt.join("etc/shadow")).unwrap(),
            b"root:*:19000:0:99999:7:::\n"
        );
        let h = std::fs::symlink_metadata(mnt.join("home/app")).unwrap();
        assert_eq!((h.uid(), h.gid(), h.mode() & 0o7777), (1000, 1000, 0o700));
        let su = std::fs::symlink_metadata(mnt.join("usr/bin/su")).unwrap();
        assert_eq!(su.mode() & 0o7777, 0o4755);
        assert_eq!(
            std::fs::symlink_metadata(mnt.join("tmp")).unwrap().mode() & 0o7777,
            0o1777
        );
        let null = std::fs::symlink_metadata(mnt.join("dev/null")).unwrap();
        assert_eq!(null.rdev(), rustix::fs::makedev(1, 3));
        let bd = std::fs::symlink_metadata(mnt.join("dev/big")).unwrap();
        assert_eq!(bd.rdev(), rustix::fs::makedev(259, 300));
        assert!(std::fs::symlink_metadata(mnt.join("run/fifo"))
            .unwrap()
            .file_type()
            .is_fifo());
        assert_eq!(
            std::fs::read_link(mnt.join("bin"))
                .unwrap()
                .to_str()
                .unwrap(),
            "usr/bin"
        );
        assert_eq!(
            std::fs::read_link(mnt.join("long"))
                .unwrap()
                .to_str()
                .unwrap(),
            "x/".repeat(100)
        );
        assert!(!mnt.join("etc/gone").exists(), "whited out");
        let many = std::fs::read_dir(mnt.join("usr/share/many"))
            .unwrap()
            .count();
        assert_eq!(many, 600);
        // Lookups in a directory of several blocks (binary search).
        assert!(mnt
            .join("usr/share/many/file-with-a-long-name-0599")
            .exists());
        assert!(mnt
            .join("usr/share/many/file-with-a-long-name-0000")
            .exists());
        assert!(!mnt
            .join("usr/share/many/file-with-a-long-name-0600")
            .exists());
        let mut v = vec![0u8; 400];
        let n = rustix::fs::lgetxattr(mnt.join("usr/bin/tagged"), "user.big", &mut v).unwrap();
        assert_eq!(&v[..n], &[b'v'; 300][..]);
        let n =
            rustix::fs::lgetxattr(mnt.join("usr/bin/ping"), "security.capability", &mut v).unwrap();
        assert_eq!(n, 20);
    };
    if !check_mounted(&img, tmp.path(), check) {
        return;
    }
    // The superblock checksum is the kernel's: one flipped bit, no mount.
    let mnt = tmp.path().join("mnt");
    let mut bytes = std::fs::read(&img).unwrap();
    bytes[1024 + 40] ^= 1;
    let bad = tmp.path().join("bad.erofs");
    std::fs::write(&bad, &bytes).unwrap();
    let mounted = mount(&bad, &mnt);
    if mounted {
        let _ = Command::new("umount").arg(&mnt).status();
    }
    assert!(!mounted, "the kernel mounted an image with a bad checksum");
}

#[test]
fn random_layer_stacks_give_images_fsck_erofs_accepts() {
    let tmp = tempfile::tempdir().unwrap();
    let stacks = Stacks {
        seed: 0xe70f5,
        names: &["a", "b", "a/x", "a/y", "b/x", "s", "s/x", "d/e/f"],
        sizes: &[0, 1, 3000, 3600, 4095, 4096, 4097, 70_000],
        owners: &[(0, 0), (1000, 1000), (70_000, 70_000)],
    };
    random_images_pass_fsck_and_match_the_kernel(&stacks, tmp.path(), |img, layers| {
        build(img, layers).map(drop)
    });
}

/// [`each_random_image`] for erofs: every image passes `fsck.erofs`, and
/// as root every 25th is also mounted by the kernel and compared with the
/// unpacker's tree of the same layers.
pub(super) fn random_images_pass_fsck_and_match_the_kernel(
    stacks: &Stacks<'_>,
    tmp: &Path,
    build: impl Fn(&Path, &[Vec<u8>]) -> Result<(), String>,
) {
    let root = rustix::process::geteuid().is_root();
    let mut mounted = 0;
    let checked = each_random_image(stacks, "erofs", tmp, build, |case, img, layers| {
        if !fsck(img) {
            return false;
        }
        if case % 25 == 0 && root {
            mounted += usize::from(same_as_unpacked(img, layers, tmp));
        }
        true
    });
    if checked.is_some() && root {
        assert!(mounted > 10, "only {mounted} images mounted and compared");
    }
}

/// One line per path: type, permission bits, owner, size, content hash or
/// link target, and the link count of files.
pub(crate) fn listing(root: &Path) -> Vec<String> {
    listing_of(root, false)
}

/// [`listing`], leaving out names that readdir gives and lookup does not
/// find (with `vanished`: overlayfs lists the whiteouts of a directory
/// that only one lower layer has, and hides them from lookup).
pub(crate) fn listing_of(root: &Path, vanished: bool) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>, vanished: bool) {
        let mut names: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
        names.sort_by_key(|e| e.file_name());
        for e in names {
            let p = e.path();
            let m = match std::fs::symlink_metadata(&p) {
                Err(e) if vanished && e.kind() == std::io::ErrorKind::NotFound => continue,
                m => m.unwrap(),
            };
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let t = m.file_type();
            let what = if t.is_symlink() {
                format!("-> {}", std::fs::read_link(&p).unwrap().display())
            } else if t.is_file() {
                let data = std::fs::read(&p).unwrap();
                let sum: u64 = data.iter().fold(0xcbf29ce484222325, |h, &b| {
                    (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
                });
                format!("{} {:x} links {}", data.len(), sum, m.nlink())
            } else {
                String::new()
            };
            out.push(format!(
                "{rel} {:o} {}:{} {what}",
                m.mode() & 0o177777,
                m.uid(),
                m.gid()
            ));
            if t.is_dir() {
                walk(root, &p, out, vanished);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out, vanished);
    out
}

/// Mount `img` and compare it with the unpacker's tree of `layers`.
pub(super) fn same_as_unpacked(img: &Path, layers: &[Vec<u8>], tmp: &Path) -> bool {
    let Some(b) = crate::ext4::tests::check_mounted("erofs", img, tmp, listing) else {
        return false;
    };
    let a = unpacked_listing(layers, &tmp.join("unpacked"));
    assert_eq!(a, b, "the kernel's erofs tree differs from the unpacker's");
    true
}

/// The [`listing`] of the unpacker's tree of `layers` (made in `dir`,
/// removed after).
pub(crate) fn unpacked_listing(layers: &[Vec<u8>], dir: &Path) -> Vec<String> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir(dir).unwrap();
    let mut u = hoist_unpack::Unpacker::new(
        dir,
        hoist_unpack::LayerOptions {
            ownership: hoist_unpack::Ownership::Preserve,
            ..Default::default()
        },
    )
    .unwrap();
    for l in layers {
        u.apply_layer(&mut &l[..]).unwrap();
    }
    u.finish().unwrap();
    let out = listing(dir);
    std::fs::remove_dir_all(dir).unwrap();
    out
}

/// fsck.erofs is a real check here: it walks every inode, so a damaged
/// one fails it. (erofs-utils 1.5 does not check the superblock checksum;
/// the kernel does, and refuses a damaged one: the mount test shows it.)
#[test]
fn fsck_erofs_notices_a_damaged_inode() {
    if tool(Command::new("fsck.erofs").arg("--help")).is_none() {
        skip("fsck.erofs is not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("d.erofs");
    build(&img, &sample()).unwrap();
    let mut bytes = std::fs::read(&img).unwrap();
    let meta = u32::from_le_bytes(bytes[1024 + 40..1024 + 44].try_into().unwrap()) as usize;
    // The root inode's data layout becomes 7, which does not exist.
    bytes[meta * 4096] |= 0b1110;
    std::fs::write(&img, &bytes).unwrap();
    let out = Command::new("fsck.erofs").arg(&img).output().unwrap();
    assert!(!out.status.success(), "fsck.erofs accepted a damaged inode");
}

/// The fixtures in one image: a file of mode 0000, a 0555 directory
/// that a later layer writes into, device nodes with old mtimes, a
/// directory of 5,000 entries, a uid above 65535, and a sparse file above
/// 4 GiB (which needs an extended inode).
#[test]
fn hard_cases_mode_0000_0555_dirs_old_devices_5000_entries_big_uids_and_a_4_gib_file() {
    let raw = |kind: tar::EntryType, path: &str, mode: u32, uid: u64, mtime: u64, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_path(path).unwrap();
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(uid);
        h.set_mtime(mtime);
        h.set_size(data.len() as u64);
        if kind == tar::EntryType::Char {
            h.set_device_major(4).unwrap();
            h.set_device_minor(64).unwrap();
        }
        h.set_cksum();
        (h, data.to_vec())
    };
    let tar_of = |entries: Vec<(tar::Header, Vec<u8>)>| {
        let mut b = tar::Builder::new(Vec::new());
        for (h, d) in entries {
            b.append(&h, &d[..]).unwrap();
        }
        b.into_inner().unwrap()
    };
    use tar::EntryType as T;
    let l1 = tar_of(vec![
        raw(T::Regular, "locked", 0o000, 0, 1_600_000_000, b"secret\n"),
        raw(T::Directory, "ro", 0o555, 0, 1_600_000_000, b""),
        raw(T::Char, "dev/ttyS0", 0o620, 0, 1, b""),
    ]);
    let mut l2 = vec![
        raw(T::Regular, "ro/added", 0o644, 0, 1_600_000_001, b"later\n"),
        raw(
            T::Regular,
            "owned",
            0o644,
            70_000,
            1_600_000_001,
            b"big uid\n",
        ),
    ];
    for i in 0..5000 {
        l2.push(raw(
            T::Regular,
            &format!("many/f{i:05}"),
            0o644,
            0,
            1_600_000_001,
            b"",
        ));
    }
    let l2 = tar_of(l2);
    // GNU tar stores the 4 GiB file sparse: the layer stays small.
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let len: u64 = (4 << 30) + 4096;
    let f = std::fs::File::create(src.join("huge")).unwrap();
    f.set_len(len).unwrap();
    std::os::unix::fs::FileExt::write_at(&f, b"head", 0).unwrap();
    std::os::unix::fs::FileExt::write_at(&f, b"tail", len - 4).unwrap();
    drop(f);
    let out = Command::new("tar")
        .args(["--format=gnu", "--sparse", "-cf", "-", "-C"])
        .arg(&src)
        .arg("huge")
        .output()
        .expect("GNU tar");
    assert!(out.status.success());
    std::fs::remove_file(src.join("huge")).unwrap();
    let img = tmp.path().join("hard.erofs");
    let st = build(&img, &[l1, l2, out.stdout]).unwrap();
    // The file keeps its holes inside erofs (chunk-based, unmapped
    // chunks): the image is small, not merely sparse on the host.
    assert_eq!(st.sparse_files, 1);
    let len_of = std::fs::metadata(&img).unwrap().len();
    assert!(len_of < 16 << 20, "a {len_of}-byte image");
    if !fsck(&img) {
        return;
    }
    let show = |p: &str| dump(&img, p);
    assert!(
        show("/locked").contains("Access: 0000"),
        "{}",
        show("/locked")
    );
    assert!(show("/owned").contains("70000"), "{}", show("/owned"));
    assert!(
        show("/huge").contains(&len.to_string()),
        "{}",
        show("/huge")
    );
    check_mounted(&img, tmp.path(), |mnt| {
        let m = std::fs::symlink_metadata(mnt.join("locked")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0);
        assert_eq!(std::fs::read(mnt.join("locked")).unwrap(), b"secret\n");
        assert_eq!(
            std::fs::symlink_metadata(mnt.join("ro")).unwrap().mode() & 0o7777,
            0o555
        );
        assert_eq!(std::fs::read(mnt.join("ro/added")).unwrap(), b"later\n");
        let tty = std::fs::symlink_metadata(mnt.join("dev/ttyS0")).unwrap();
        assert_eq!((tty.mtime(), tty.rdev()), (1, rustix::fs::makedev(4, 64)));
        let o = std::fs::symlink_metadata(mnt.join("owned")).unwrap();
        assert_eq!((o.uid(), o.gid()), (70_000, 70_000));
        assert_eq!(std::fs::read_dir(mnt.join("many")).unwrap().count(), 5000);
        for i in [0, 1, 2499, 4998, 4999] {
            assert!(mnt.join(format!("many/f{i:05}")).exists(), "f{i:05}");
        }
        assert!(!mnt.join("many/f05000").exists());
        let h = std::fs::File::open(mnt.join("huge")).unwrap();
        assert_eq!(h.metadata().unwrap().len(), len);
        let mut b = [0u8; 4];
        std::os::unix::fs::FileExt::read_exact_at(&h, &mut b, 0).unwrap();
        assert_eq!(&b, b"head");
        std::os::unix::fs::FileExt::read_exact_at(&h, &mut b, len - 4).unwrap();
        assert_eq!(&b, b"tail");
        std::os::unix::fs::FileExt::read_exact_at(&h, &mut b, 3 << 30).unwrap();
        assert_eq!(&b, &[0; 4]);
    });
}

/// A last layer that deletes a big file leaves no hole: the files after it
/// move into its blocks and the image ends where its live data ends.
#[test]
fn space_freed_by_deleted_files_is_given_back() {
    let big = vec![7u8; 400 << 10];
    let after: Vec<u8> = (0..40_000u32).map(|i| (i % 253) as u8).collect();
    let l1 = Layer::new()
        .file("big", 0o644, (0, 0), &big)
        .file("after", 0o644, (0, 0), &after)
        .done();
    let l2 = Layer::new().file(".wh.big", 0o644, (0, 0), b"").done();
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("c.erofs");
    build(&img, &[l1, l2]).unwrap();
    let len = std::fs::metadata(&img).unwrap().len();
    assert!(
        len <= 16 * 4096,
        "{len} bytes: the deleted file's space stayed"
    );
    let Some(out) = extracted(&img, tmp.path()) else {
        return;
    };
    assert_eq!(std::fs::read(out.join("after")).unwrap(), after);
    assert!(!out.join("big").exists());
}

/// The metadata area is written in two halves by two threads, and the
/// compaction's copies run beside the directories being made: an image of
/// thousands of inline files (the halves meet among them), whose second
/// layer deletes every other file (so many files move), reads back whole.
#[test]
fn metadata_written_in_two_halves_and_files_moved_read_back_whole() {
    let content = |i: u32| -> Vec<u8> {
        let len = match i % 4 {
            0 => 100 + (i % 300) as usize,   // inline, whole
            1 => 4096 + (i % 900) as usize,  // a block and an inline tail
            2 => 9000 + (i % 5000) as usize, // blocks and a tail
            _ => 3 * 4096,                   // whole blocks
        };
        (0..len)
            .map(|j| ((i as usize * 31 + j * 7) % 251) as u8)
            .collect()
    };
    let n = 3000u32;
    let mut l1 = Layer::new();
    for i in 0..n {
        l1 = l1.file(&format!("d{}/f{i}", i % 37), 0o644, (0, 0), &content(i));
    }
    let mut l2 = Layer::new();
    for i in (0..n).step_by(2) {
        l2 = l2.file(&format!("d{}/.wh.f{i}", i % 37), 0o644, (0, 0), b"");
    }
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("m.erofs");
    build(&img, &[l1.done(), l2.done()]).unwrap();
    let Some(out) = extracted(&img, tmp.path()) else {
        return;
    };
    for i in 0..n {
        let p = out.join(format!("d{}/f{i}", i % 37));
        if i % 2 == 0 {
            assert!(!p.exists(), "{} was deleted", p.display());
        } else {
            assert_eq!(std::fs::read(&p).unwrap(), content(i), "{}", p.display());
        }
    }
}
