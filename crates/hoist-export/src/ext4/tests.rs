//! The writer's images, read back by e2fsprogs (`e2fsck -fn`, `debugfs`)
//! and, as root, by the kernel through a loop mount.

use std::path::Path;
use std::process::Command;

use hoist_unpack::MergedTree;

use super::{Ext4Builder, Ext4Options, Ext4Stats};

pub(crate) struct Layer {
    b: tar::Builder<Vec<u8>>,
}

impl Layer {
    pub(crate) fn new() -> Layer {
        Layer {
            b: tar::Builder::new(Vec::new()),
        }
    }
    #[allow(clippy::too_many_arguments)] // a tar header's worth, in tests only
    pub(crate) fn entry(
        mut self,
        kind: tar::EntryType,
        path: &str,
        mode: u32,
        owner: (u64, u64),
        data: &[u8],
        link: Option<&str>,
        xattrs: &[(&str, &[u8])],
    ) -> Layer {
        if !xattrs.is_empty() {
            let keys: Vec<(String, &[u8])> = xattrs
                .iter()
                .map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v))
                .collect();
            self.b
                .append_pax_extensions(keys.iter().map(|(k, v)| (k.as_str(), *v)))
                .unwrap();
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(owner.0);
        h.set_gid(owner.1);
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        if kind == tar::EntryType::Char {
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
        }
        if kind == tar::EntryType::Block {
            h.set_device_major(259).unwrap();
            h.set_device_minor(300).unwrap();
        }
        if let Some(l) = link {
            self.b.append_link(&mut h, path, l).unwrap();
        } else {
            self.b.append_data(&mut h, path, data).unwrap();
        }
        self
    }
    pub(crate) fn file(self, path: &str, mode: u32, owner: (u64, u64), data: &[u8]) -> Layer {
        self.entry(tar::EntryType::Regular, path, mode, owner, data, None, &[])
    }
    pub(crate) fn dir(self, path: &str, mode: u32, owner: (u64, u64)) -> Layer {
        self.entry(tar::EntryType::Directory, path, mode, owner, b"", None, &[])
    }
    pub(crate) fn done(self) -> Vec<u8> {
        self.b.into_inner().unwrap()
    }
}

fn build(out: &Path, layers: &[Vec<u8>], opts: Ext4Options) -> Result<Ext4Stats, String> {
    let mut b = Ext4Builder::create(out, opts).map_err(|e| e.to_string())?;
    let mut t = MergedTree::new();
    for l in layers {
        if let Err(e) = t.apply_layer(&mut &l[..], &mut b) {
            // As the facade reports it.
            return Err(match b.overflow() {
                Some((size, needed)) => crate::ExportError::TooSmall { size, needed }.to_string(),
                None => e.to_string(),
            });
        }
    }
    t.finish().map_err(|e| e.to_string())?;
    b.finish(&t).map_err(|e| e.to_string())
}

pub(crate) fn tool(cmd: &mut Command) -> Option<String> {
    match cmd.output() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("{e}"),
        Ok(o) => {
            let mut s = String::from_utf8_lossy(&o.stdout).to_string();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            assert!(o.status.success(), "{cmd:?} failed: {s}");
            Some(s)
        }
    }
}

/// A check that cannot run here says SKIPPED, and fails under CI, where
/// everything it needs is installed and it runs as root: a mount test that
/// passes without mounting proves nothing.
pub(crate) fn skip(why: &str) {
    assert!(std::env::var_os("CI").is_none(), "under CI: {why}");
    eprintln!("SKIPPED: {why}");
}

/// Mount `img` (a `fstype` image) read-only on `mnt` through a loop device.
pub(crate) fn mount(fstype: &str, img: &Path, mnt: &Path) -> bool {
    Command::new("mount")
        .args(["-t", fstype, "-o", "loop,ro"])
        .arg(img)
        .arg(mnt)
        .status()
        .is_ok_and(|s| s.success())
}

/// As root, mount `img` on `tmp/mnt` and run `check` on the mounted tree,
/// unmounting whatever happens. None when mounting cannot run here (it
/// says SKIPPED, and fails under CI).
pub(crate) fn check_mounted<R>(
    fstype: &str,
    img: &Path,
    tmp: &Path,
    check: impl FnOnce(&Path) -> R + std::panic::UnwindSafe,
) -> Option<R> {
    if !rustix::process::geteuid().is_root() {
        skip("mounting needs root");
        return None;
    }
    let mnt = tmp.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    if !mount(fstype, img, &mnt) {
        skip(&format!(
            "the {fstype} loop mount failed (no loop devices, or no {fstype} in the kernel?)"
        ));
        return None;
    }
    let m = mnt.clone();
    let r = std::panic::catch_unwind(move || check(&m));
    let _ = Command::new("umount").arg(&mnt).status();
    match r {
        Ok(v) => Some(v),
        Err(e) => std::panic::resume_unwind(e),
    }
}

fn fsck(img: &Path) -> bool {
    let Some(out) = tool(Command::new("e2fsck").arg("-fn").arg(img)) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "e2fsck is missing (Debian package e2fsprogs)"
        );
        eprintln!("SKIPPED: e2fsck is not installed");
        return false;
    };
    assert!(!out.contains("Fix?"), "{out}");
    true
}

fn stat(img: &Path, path: &str) -> String {
    tool(
        Command::new("debugfs")
            .arg("-R")
            .arg(format!("stat {path}"))
            .arg(img),
    )
    .unwrap()
}

pub(crate) fn sample() -> Vec<Vec<u8>> {
    use tar::EntryType as T;
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let many: Vec<String> = (0..600)
        .map(|i| format!("usr/share/many/file-with-a-long-name-{i:04}"))
        .collect();
    let mut l1 = Layer::new()
        .dir("etc", 0o755, (0, 0))
        .file("etc/shadow", 0o640, (0, 42), b"root:*:19000:0:99999:7:::\n")
        .file("etc/gone", 0o644, (0, 0), &big)
        .dir("home/app", 0o700, (1000, 1000))
        .file("usr/bin/su", 0o4755, (0, 0), b"\x7fELF")
        .dir("tmp", 0o1777, (0, 0))
        .entry(T::Char, "dev/null", 0o666, (0, 0), b"", None, &[])
        .entry(T::Block, "dev/big", 0o660, (0, 6), b"", None, &[])
        .entry(T::Fifo, "run/fifo", 0o600, (0, 0), b"", None, &[])
        .entry(T::Symlink, "bin", 0o777, (0, 0), b"", Some("usr/bin"), &[])
        .entry(
            T::Symlink,
            "long",
            0o777,
            (0, 0),
            b"",
            Some(&"x/".repeat(100)),
            &[],
        )
        .file("usr/bin/big", 0o755, (0, 0), &big)
        .entry(
            T::Link,
            "usr/bin/big-again",
            0o755,
            (0, 0),
            b"",
            Some("usr/bin/big"),
            &[],
        )
        .entry(
            T::Regular,
            "usr/bin/ping",
            0o755,
            (0, 0),
            b"ping",
            None,
            &[(
                "security.capability",
                &[1, 0, 0, 2, 0, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            )],
        )
        .entry(
            T::Regular,
            "usr/bin/tagged",
            0o755,
            (0, 0),
            b"t",
            None,
            &[("user.big", &[b'v'; 300]), ("user.small", b"1")],
        )
        .entry(
            T::Regular,
            "etc/acl",
            0o640,
            (0, 0),
            b"a",
            None,
            &[("system.posix_acl_access", &acl())],
        );
    for m in &many {
        l1 = l1.file(m, 0o644, (0, 0), m.as_bytes());
    }
    let l2 = Layer::new().file("etc/.wh.gone", 0o644, (0, 0), b"").file(
        "usr/bin/new",
        0o755,
        (0, 0),
        &big[..5000],
    );
    vec![l1.done(), l2.done()]
}

/// user::rw- user:1000:r-- group::r-- mask::r-- other::--- in the kernel's
/// xattr form, as GNU tar stores it.
pub(crate) fn acl() -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (1u16, 6u16, u32::MAX),
        (2, 4, 1000),
        (4, 4, u32::MAX),
        (0x10, 4, u32::MAX),
        (0x20, 0, u32::MAX),
    ] {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

fn opts() -> Ext4Options {
    Ext4Options {
        size: None,
        uuid: *b"0123456789abcdef",
        hash_seed: *b"fedcba9876543210",
        timestamp: 1_700_000_000,
        cancel: None,
    }
}

#[test]
fn an_image_e2fsck_accepts_with_true_owners_modes_devices_and_links() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("a.ext4");
    let s = build(&img, &sample(), opts()).unwrap();
    assert_eq!(s.size, std::fs::metadata(&img).unwrap().len());
    if !fsck(&img) {
        return;
    }
    let st = stat(&img, "/etc/shadow");
    assert!(
        st.contains("Mode:  0640") && st.contains("User:     0   Group:    42"),
        "{st}"
    );
    let st = stat(&img, "/home/app");
    assert!(
        st.contains("Type: directory")
            && st.contains("Mode:  0700")
            && st.contains("User:  1000   Group:  1000"),
        "{st}"
    );
    assert!(stat(&img, "/usr/bin/su").contains("Mode:  04755"));
    assert!(stat(&img, "/tmp").contains("Mode:  01777"));
    let st = stat(&img, "/dev/null");
    assert!(
        st.contains("Type: character special") && st.contains("Device major/minor number: 01:03"),
        "{st}"
    );
    let st = stat(&img, "/dev/big");
    assert!(
        st.contains("Type: block special") && st.contains("major/minor number: 259:300"),
        "{st}"
    );
    assert!(stat(&img, "/run/fifo").contains("Type: FIFO"));
    let st = stat(&img, "/bin");
    assert!(
        st.contains("Type: symlink") && st.contains("Fast link dest: \"usr/bin\""),
        "{st}"
    );
    let a = stat(&img, "/usr/bin/big");
    assert!(a.contains("Links: 2") && a.contains("Size: 300000"), "{a}");
    let b = stat(&img, "/usr/bin/big-again");
    let inode = |s: &str| s.split_whitespace().nth(1).unwrap().to_string();
    assert_eq!(inode(&a), inode(&b));
    assert!(stat(&img, "/usr/bin/ping").contains("security.capability"));
    let st = stat(&img, "/usr/bin/tagged");
    assert!(st.contains("user.big") && st.contains("user.small"), "{st}");
    let gone = tool(
        Command::new("debugfs")
            .arg("-R")
            .arg("stat /etc/gone")
            .arg(&img),
    )
    .unwrap();
    assert!(gone.contains("File not found"), "{gone}");
    let content = tool(
        Command::new("debugfs")
            .arg("-R")
            .arg("cat /usr/bin/new")
            .arg(&img),
    )
    .unwrap();
    assert!(content.len() >= 5000);
    let lf = stat(&img, "/lost+found");
    assert!(lf.contains("Type: directory"), "{lf}");
}

#[test]
fn the_same_layers_give_the_same_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    build(&a, &sample(), opts()).unwrap();
    build(&b, &sample(), opts()).unwrap();
    assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap());
}

#[test]
fn a_fixed_size_is_kept_and_a_tree_that_does_not_fit_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("fixed");
    let s = build(
        &img,
        &sample(),
        Ext4Options {
            size: Some(300 << 20),
            ..opts()
        },
    )
    .unwrap();
    assert_eq!(s.size, 300 << 20);
    assert!(s.inodes >= (300 << 20) / 16384);
    fsck(&img);
    let small = tmp.path().join("small");
    let e = build(
        &small,
        &sample(),
        Ext4Options {
            size: Some(1 << 20),
            ..opts()
        },
    )
    .unwrap_err();
    assert!(e.contains("more than the requested size"), "{e}");
    assert!(!small.exists());
}

/// The kernel reads it as the tar said: contents, owners, modes, links,
/// xattrs. Root only (loop devices); says so when skipped.
#[test]
fn the_kernel_mounts_it_and_reads_what_the_layers_said() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("m.ext4");
    build(&img, &sample(), opts()).unwrap();
    check_mounted("ext4", &img, tmp.path(), assert_sample_tree);
}

/// What the kernel must read from an image of [`sample`] mounted on `mnt`,
/// whatever the file system: contents, owners, modes, a long symlink, a
/// 600-entry directory, xattrs (an ACL in the kernel's form), a hardlink,
/// a whiteout.
pub(crate) fn assert_sample_tree(mnt: &Path) {
    use std::os::unix::fs::MetadataExt;
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(std::fs::read(mnt.join("usr/bin/big")).unwrap(), big);
    assert_eq!(
        std::fs::read(mnt.join("usr/bin/new")).unwrap(),
        &big[..5000]
    );
    let m = std::fs::metadata(mnt.join("etc/shadow")).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (0, 42, 0o640));
    assert_eq!(
        std::fs::read_link(mnt.join("long"))
            .unwrap()
            .to_str()
            .unwrap(),
        "x/".repeat(100)
    );
    let n = std::fs::read_dir(mnt.join("usr/share/many"))
        .unwrap()
        .count();
    assert_eq!(n, 600);
    let f = mnt.join("usr/share/many/file-with-a-long-name-0599");
    assert!(std::fs::read_to_string(f).unwrap().ends_with("0599"));
    let v =
        rustix::fs::getxattr(mnt.join("usr/bin/tagged"), "user.big", &mut [0u8; 512][..]).unwrap();
    assert_eq!(v, 300);
    // The kernel turns ext4's short ACL form back into this one.
    let mut buf = [0u8; 128];
    let n =
        rustix::fs::getxattr(mnt.join("etc/acl"), "system.posix_acl_access", &mut buf[..]).unwrap();
    assert_eq!(&buf[..n], &acl()[..]);
    assert_eq!(
        std::fs::metadata(mnt.join("usr/bin/big-again"))
            .unwrap()
            .nlink(),
        2
    );
    assert!(!mnt.join("etc/gone").exists());
}

/// The random layer stacks a writer's test runs through: their names,
/// file sizes and owners, and the seed that makes the run repeatable.
pub(crate) struct Stacks<'a> {
    pub seed: u64,
    pub names: &'a [&'a str],
    pub sizes: &'a [usize],
    pub owners: &'a [(u64, u64)],
}

/// Build 1,000 random stacks into `tmp/r<case>.<ext>` with `build`, hand
/// each image to `check`, then delete it. A build may fail only on the
/// archive (a hardlink to nothing, a path through a file), never in the
/// writer, and leaves no image behind. `check` returns false when its tool
/// cannot run here (it has said SKIPPED), which ends the run: None.
/// Otherwise, how many images were checked (at least 200).
pub(crate) fn each_random_image(
    s: &Stacks<'_>,
    ext: &str,
    tmp: &Path,
    build: impl Fn(&Path, &[Vec<u8>]) -> Result<(), String>,
    mut check: impl FnMut(usize, &Path, &[Vec<u8>]) -> bool,
) -> Option<usize> {
    let mut rng = fastrand::Rng::with_seed(s.seed);
    let mut checked = 0;
    for case in 0..1000 {
        let layers = random_stack(&mut rng, s.names, s.sizes, s.owners);
        let img = tmp.join(format!("r{case}.{ext}"));
        if let Err(e) = build(&img, &layers) {
            assert!(e.contains("invalid layer archive"), "case {case}: {e}");
            assert!(!img.exists(), "an unfinished image is removed");
            continue;
        }
        if !check(case, &img, &layers) {
            return None;
        }
        checked += 1;
        std::fs::remove_file(&img).unwrap();
    }
    assert!(checked > 200, "only {checked} images checked");
    Some(checked)
}

/// One to three random layers over colliding `names`: files of `sizes`,
/// directories, symlinks, hardlinks, whiteouts and opaque markers, owned
/// by one of `owners`.
pub(crate) fn random_stack(
    rng: &mut fastrand::Rng,
    names: &[&str],
    sizes: &[usize],
    owners: &[(u64, u64)],
) -> Vec<Vec<u8>> {
    use tar::EntryType as T;
    let mut layers = Vec::new();
    for _ in 0..rng.usize(1..4) {
        let mut l = Layer::new();
        for _ in 0..rng.usize(1..10) {
            let name = names[rng.usize(..names.len())];
            let other = names[rng.usize(..names.len())];
            let owner = owners[rng.usize(..owners.len())];
            let (parent, leaf) = name.rsplit_once('/').unwrap_or(("", name));
            let wh = if parent.is_empty() {
                format!(".wh.{leaf}")
            } else {
                format!("{parent}/.wh.{leaf}")
            };
            let data = vec![rng.u8(..); sizes[rng.usize(..sizes.len())]];
            l = match rng.u8(..8) {
                0..=2 => l.file(name, 0o644, owner, &data),
                3 => l.dir(name, 0o755, owner),
                4 => l.entry(
                    T::Symlink,
                    name,
                    0o777,
                    owner,
                    b"",
                    Some(&other.repeat(rng.usize(1..30))),
                    &[],
                ),
                5 => l.entry(T::Link, name, 0o644, owner, b"", Some(other), &[]),
                6 => l.file(&wh, 0o644, (0, 0), b""),
                _ => l.file(&format!("{name}/.wh..wh..opq"), 0o644, (0, 0), b""),
            };
        }
        layers.push(l.done());
    }
    layers
}

/// Random layer stacks over a few colliding names (replacements, whiteouts,
/// opaque dirs, hardlinks, files of 0 to 70 KiB so that released blocks
/// get reused): every image must pass `e2fsck -fn`.
#[test]
fn random_layer_stacks_give_images_e2fsck_accepts() {
    let tmp = tempfile::tempdir().unwrap();
    let stacks = Stacks {
        seed: 0xe47,
        names: &["a", "b", "a/x", "a/y", "b/x", "s", "s/x", "d/e/f"],
        sizes: &[0, 1, 4095, 4096, 4097, 70_000],
        owners: &[(0, 0), (1000, 1000)],
    };
    // Invalid stacks (a hardlink to nothing) are refused, as the unpacker
    // refuses them; the rest must make sound images.
    each_random_image(
        &stacks,
        "ext4",
        tmp.path(),
        |img, layers| build(img, layers, opts()).map(drop),
        |_, img, _| fsck(img),
    );
}

/// A file longer than four extents (4 × 128 MiB) needs extent leaf blocks.
/// GNU tar stores it sparse, so the layer stays small.
#[test]
fn a_file_beyond_four_extents_gets_leaf_blocks() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let len: u64 = 600 << 20;
    let f = std::fs::File::create(src.join("huge")).unwrap();
    f.set_len(len).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_at(b"head", 0).unwrap();
    f.write_at(b"tail", len - 4).unwrap();
    drop(f);
    let out = Command::new("tar")
        .args(["--format=gnu", "--sparse", "-cf", "-", "-C"])
        .arg(&src)
        .arg("huge")
        .output()
        .expect("GNU tar");
    assert!(out.status.success());
    let img = tmp.path().join("huge.ext4");
    build(&img, &[out.stdout], opts()).unwrap();
    std::fs::remove_file(src.join("huge")).unwrap();
    // The zeros were never written: the image file is sparse too.
    use std::os::unix::fs::MetadataExt;
    let on_disk = std::fs::metadata(&img).unwrap().blocks() * 512;
    assert!(on_disk < 16 << 20, "{on_disk} bytes on disk");
    if !fsck(&img) {
        return;
    }
    let st = stat(&img, "/huge");
    assert!(st.contains(&format!("Size: {len}")), "{st}");
    // debugfs lists the extent tree: one index level, leaves below.
    let ex = tool(Command::new("debugfs").arg("-R").arg("ex /huge").arg(&img)).unwrap();
    assert!(ex.contains(" 0/ 1 ") && ex.contains(" 1/ 1 "), "{ex}");
    let dump = tmp.path().join("dumped");
    tool(
        Command::new("debugfs")
            .arg("-R")
            .arg(format!("dump /huge {}", dump.display()))
            .arg(&img),
    )
    .unwrap();
    let d = std::fs::File::open(&dump).unwrap();
    let mut tail = [0u8; 4];
    d.read_exact_at(&mut tail, len - 4).unwrap();
    assert_eq!(&tail, b"tail");
    assert_eq!(d.metadata().unwrap().len(), len);
}
