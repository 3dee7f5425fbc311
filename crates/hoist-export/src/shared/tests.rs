//! Layer files and META images, read back by erofs-utils and, as root, by
//! the kernel: META with its layer files as extra devices, and the layer
//! files alone stacked with overlayfs, each against the unpacker's tree.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use hoist_spec::Digest;
use hoist_unpack::Guard;

use super::{build_meta, meta_devices, LayerDir, LayerFile};
use crate::erofs_builder::tests::{listing, listing_of, unpacked_listing};
use crate::ext4::tests::{random_stack, skip, tool, Layer};

fn guard() -> Guard {
    Guard::new(None, None)
}

/// Each layer's file, found in `dir` or built there.
fn layer_files(dir: &LayerDir, layers: &[Vec<u8>], lz4: bool) -> Result<Vec<LayerFile>, String> {
    layers
        .iter()
        .map(|l| {
            let d = Digest::sha256_of(l);
            if let Some(f) = dir.find(&d, lz4) {
                return Ok(f);
            }
            let lock = dir.lock(&d, lz4).map_err(|e| e.to_string())?;
            if let Some(f) = dir.find(&d, lz4) {
                return Ok(f);
            }
            dir.build(&d, lz4, &mut &l[..], lock, guard(), None)
                .and_then(|p| p.commit())
                .map_err(|e| e.to_string())
        })
        .collect()
}

fn meta(
    out: &Path,
    dir: &LayerDir,
    layers: &[Vec<u8>],
    lz4: bool,
) -> Result<Vec<LayerFile>, String> {
    let files = layer_files(dir, layers, lz4)?;
    build_meta(out, &files, lz4, [7; 16], guard(), None).map_err(|e| e.to_string())?;
    Ok(files)
}

fn fsck(img: &Path, devices: &[PathBuf]) -> Option<()> {
    let mut c = Command::new("fsck.erofs");
    for d in devices {
        c.arg(format!("--device={}", d.display()));
    }
    tool(c.arg(img)).map(drop)
}

/// Read-only loop devices over `files`, detached when dropped.
struct Loops(Vec<String>);

impl Loops {
    fn attach(files: &[PathBuf]) -> Loops {
        let mut l = Loops(Vec::new());
        for f in files {
            let out = Command::new("losetup")
                .args(["-f", "--show", "-r"])
                .arg(f)
                .output()
                .unwrap();
            assert!(out.status.success(), "losetup: {out:?}");
            l.0.push(String::from_utf8(out.stdout).unwrap().trim().to_string());
        }
        l
    }
}

impl Drop for Loops {
    fn drop(&mut self) {
        for d in &self.0 {
            let _ = Command::new("losetup").arg("-d").arg(d).status();
        }
    }
}

/// Mounts undone in reverse order when dropped.
#[derive(Default)]
struct Mounts(Vec<PathBuf>);

impl Mounts {
    fn mount(&mut self, args: &[&str], src: &Path, at: &Path) {
        std::fs::create_dir_all(at).unwrap();
        let st = Command::new("mount").args(args).arg(src).arg(at).status();
        assert!(st.is_ok_and(|s| s.success()), "mount {args:?} {src:?}");
        self.0.push(at.to_path_buf());
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        for m in self.0.iter().rev() {
            let _ = Command::new("umount").arg(m).status();
        }
    }
}

/// The kernel's tree of META on loop devices of its layer files.
fn meta_tree(img: &Path, files: &[PathBuf], tmp: &Path) -> Vec<String> {
    let loops = Loops::attach(files);
    let opts: String = loops.0.iter().map(|d| format!(",device={d}")).collect();
    let mut m = Mounts::default();
    let mnt = tmp.join("meta-mnt");
    m.mount(&["-t", "erofs", "-o", &format!("ro{opts}")], img, &mnt);
    listing(&mnt)
}

/// The kernel's tree of the layer files alone, stacked with overlayfs.
fn overlay_tree(files: &[PathBuf], tmp: &Path) -> Vec<String> {
    let mut m = Mounts::default();
    let mut lowers = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let at = tmp.join(format!("l{i}"));
        m.mount(&["-t", "erofs", "-o", "loop,ro"], f, &at);
        lowers.push(at.display().to_string());
    }
    lowers.reverse();
    // overlayfs mounts two lower layers at least, read-only: an empty one
    // at the bottom changes nothing.
    let empty = tmp.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    lowers.push(empty.display().to_string());
    let ov = tmp.join("ov");
    let opts = format!("ro,lowerdir={}", lowers.join(":"));
    m.mount(&["-t", "overlay", "-o", &opts], Path::new("overlay"), &ov);
    // A whiteout of a name no lower layer has, in a directory only its
    // layer has, is listed by overlayfs's readdir and not found by its
    // lookup (Docker never writes one: it deletes something below).
    listing_of(&ov, true)
}

/// Whether a layer names every directory it puts entries in (overlayfs
/// takes a directory's owner and mode from the topmost layer that has
/// it; a layer that made a parent implicitly has it as root's 0755).
fn names_its_dirs(layer: &[u8]) -> bool {
    let mut a = tar::Archive::new(layer);
    let mut named = BTreeSet::new();
    let mut parents = BTreeSet::new();
    for e in a.entries().unwrap() {
        let e = e.unwrap();
        let p = e
            .path()
            .unwrap()
            .to_string_lossy()
            .trim_end_matches('/')
            .to_string();
        let mut q = p.as_str();
        while let Some((parent, _)) = q.rsplit_once('/') {
            parents.insert(parent.to_string());
            q = parent;
        }
        named.insert(p);
    }
    parents.is_subset(&named)
}

/// Random layer stacks (replacements, whiteouts, opaque directories,
/// hardlinks, files around the inline limit) go through layer files and a
/// META: fsck.erofs accepts every file and META with its devices; as root,
/// every 10th META is mounted with its devices and every 10th stack of
/// layer files under overlayfs, each compared with the unpacker's tree.
fn random_stacks(lz4: bool, seed: u64) {
    if tool(Command::new("fsck.erofs").arg("--help")).is_none() {
        skip("fsck.erofs is not installed");
        return;
    }
    let root = rustix::process::geteuid().is_root();
    if !root {
        skip("mounting needs root");
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = LayerDir::open(&tmp.path().join("layers")).unwrap();
    let mut rng = fastrand::Rng::with_seed(seed);
    let (mut checked, mut refused, mut mounted, mut stacked) = (0, 0, 0, 0);
    for case in 0..900 {
        // Mostly as Docker and BuildKit write layers (every parent named
        // first), some as anything may (most of those cannot stand alone).
        let layers = if case % 4 != 3 {
            docker_style_stack(&mut rng)
        } else {
            random_stack(
                &mut rng,
                &["a", "b", "a/x", "a/y", "b/x", "s", "s/x", "d/e/f"],
                &[0, 1, 3000, 3600, 4095, 4096, 4097, 70_000, 200_000],
                &[(0, 0), (1000, 1000), (70_000, 70_000)],
            )
        };
        let img = tmp.path().join(format!("r{case}.meta"));
        let files = match meta(&img, &dir, &layers, lz4) {
            Ok(f) => f,
            Err(e) => {
                assert!(
                    e.contains("invalid layer archive")
                        || e.contains("this layer cannot be shared"),
                    "case {case}: {e}"
                );
                assert!(!img.exists(), "case {case}: an unfinished META is removed");
                refused += 1;
                continue;
            }
        };
        let paths: Vec<PathBuf> = files.iter().map(|f| f.path.clone()).collect();
        for p in &paths {
            fsck(p, &[]).expect("fsck.erofs");
        }
        fsck(&img, &paths).expect("fsck.erofs");
        let tags = meta_devices(&img).unwrap();
        let want: Vec<String> = files.iter().map(|f| f.diff_id.to_string()).collect();
        assert_eq!(
            tags, want,
            "case {case}: the device table names the layers in order"
        );
        checked += 1;
        if root && case % 8 == 0 {
            let u = unpacked_listing(&layers, &tmp.path().join("unpacked"));
            assert_eq!(meta_tree(&img, &paths, tmp.path()), u, "case {case}: META");
            mounted += 1;
            if layers.iter().all(|l| names_its_dirs(l)) {
                assert_eq!(overlay_tree(&paths, tmp.path()), u, "case {case}: overlay");
                stacked += 1;
            }
        }
        std::fs::remove_file(&img).unwrap();
    }
    eprintln!("{checked} checked, {refused} refused, {mounted} mounted, {stacked} stacked");
    assert!(checked > 200, "only {checked} stacks checked");
    if root {
        assert!(
            mounted > 20 && stacked > 20,
            "{mounted} mounted, {stacked} stacked"
        );
    }
}

/// One to four layers of up to ten changes each over colliding names,
/// each change after directory entries for its parents (owners and modes
/// vary, so a directory's metadata changes between layers): files around
/// the inline limit and past a chunk, directories, symlinks (also over
/// directories), hardlinks, devices, FIFOs, xattrs, whiteouts and opaque
/// markers.
fn docker_style_stack(rng: &mut fastrand::Rng) -> Vec<Vec<u8>> {
    use tar::EntryType as T;
    const NAMES: &[&str] = &["a", "b", "a/x", "a/y", "b/x", "s", "s/x", "d/e/f", "d/e"];
    const SIZES: &[usize] = &[0, 1, 3000, 3600, 4095, 4096, 4097, 70_000, 200_000];
    const OWNERS: &[(u64, u64)] = &[(0, 0), (1000, 1000), (70_000, 70_000)];
    let mut layers = Vec::new();
    for _ in 0..rng.usize(1..5) {
        let mut l = Layer::new();
        let mut named: BTreeSet<String> = BTreeSet::new();
        for _ in 0..rng.usize(1..10) {
            let name = NAMES[rng.usize(..NAMES.len())];
            let other = NAMES[rng.usize(..NAMES.len())];
            let owner = OWNERS[rng.usize(..OWNERS.len())];
            let mut parents: Vec<&str> = Vec::new();
            let mut q = name;
            while let Some((p, _)) = q.rsplit_once('/') {
                parents.push(p);
                q = p;
            }
            for p in parents.into_iter().rev() {
                if named.insert(p.to_string()) {
                    let mode = [0o755, 0o700, 0o1777][rng.usize(..3)];
                    l = l.dir(p, mode, OWNERS[rng.usize(..OWNERS.len())]);
                }
            }
            if !named.insert(name.to_string()) {
                continue;
            }
            let (parent, leaf) = name.rsplit_once('/').unwrap_or(("", name));
            let wh = |w: &str| {
                if parent.is_empty() {
                    format!(".wh.{w}")
                } else {
                    format!("{parent}/.wh.{w}")
                }
            };
            let data = vec![rng.u8(..); SIZES[rng.usize(..SIZES.len())]];
            l = match rng.u8(..10) {
                0..=2 => l.file(name, 0o644, owner, &data),
                3 => l.dir(name, 0o750, owner),
                4 => l.entry(T::Symlink, name, 0o777, owner, b"", Some(other), &[]),
                5 => l.entry(T::Link, name, 0o644, owner, b"", Some(other), &[]),
                6 => l.entry(
                    [T::Char, T::Block, T::Fifo][rng.usize(..3)],
                    name,
                    0o600,
                    owner,
                    b"",
                    None,
                    &[("user.k", b"v"), ("security.capability", &[1, 0, 0, 2])],
                ),
                7 => l.file(&wh(leaf), 0o644, (0, 0), b""),
                _ => l.dir(name, 0o755, owner).file(
                    &format!("{name}/.wh..wh..opq"),
                    0o644,
                    (0, 0),
                    b"",
                ),
            };
        }
        layers.push(l.done());
    }
    layers
}

#[test]
fn random_stacks_through_meta_and_stacked_layer_files_give_the_unpackers_tree() {
    random_stacks(false, 0x5ea7ed);
}

#[test]
fn random_stacks_through_lz4_meta_and_stacked_layer_files_give_the_unpackers_tree() {
    random_stacks(true, 0x1a4);
}

fn two_layers() -> Vec<Vec<u8>> {
    let big = vec![7u8; 300_000];
    vec![
        Layer::new()
            .dir("etc", 0o755, (0, 0))
            .file("etc/small", 0o644, (0, 0), b"small\n")
            .file("big", 0o600, (1000, 1000), &big)
            .done(),
        Layer::new().file(".wh.big", 0o644, (0, 0), b"").done(),
    ]
}

/// A layer's file depends on the layer alone: built in two directories
/// (as if for two images) the bytes are the same.
#[test]
fn a_layer_file_is_the_same_bytes_whichever_image_it_was_made_for() {
    let tmp = tempfile::tempdir().unwrap();
    let layers = two_layers();
    let a = LayerDir::open(&tmp.path().join("a")).unwrap();
    let b = LayerDir::open(&tmp.path().join("b")).unwrap();
    let fa = meta(&tmp.path().join("a.meta"), &a, &layers, false).unwrap();
    let fb = meta(&tmp.path().join("b.meta"), &b, &layers[..1], false).unwrap();
    assert_eq!(
        std::fs::read(&fa[0].path).unwrap(),
        std::fs::read(&fb[0].path).unwrap()
    );
    assert!(fa.iter().all(|f| !f.reused));
    // Found again, not built again.
    let again = layer_files(&a, &layers, false).unwrap();
    assert!(again.iter().all(|f| f.reused));
}

/// A damaged or foreign file in the directory is never used: a flipped
/// superblock byte, a record cut short, a record of another layer, a
/// file without its record.
#[test]
fn a_damaged_or_foreign_layer_file_is_not_used() {
    let tmp = tempfile::tempdir().unwrap();
    let layers = two_layers();
    let dir = LayerDir::open(&tmp.path().join("l")).unwrap();
    let files = layer_files(&dir, &layers, false).unwrap();
    let (d0, d1) = (&files[0].diff_id, &files[1].diff_id);
    let rec = |f: &LayerFile| PathBuf::from(format!("{}.rec", f.path.display()));
    let fresh = |what: &str| {
        assert!(dir.find(d0, false).is_none(), "{what}: used");
        layer_files(&dir, &layers, false).unwrap();
        assert!(dir.find(d0, false).is_some(), "{what}: not rebuilt");
    };

    let mut b = std::fs::read(&files[0].path).unwrap();
    b[1024 + 40] ^= 1;
    std::fs::write(&files[0].path, &b).unwrap();
    fresh("a flipped superblock byte");

    let r = std::fs::read(rec(&files[0])).unwrap();
    std::fs::write(rec(&files[0]), &r[..r.len() / 2]).unwrap();
    fresh("a record cut short");

    let mut r = std::fs::read(rec(&files[0])).unwrap();
    let at = r.len() / 2;
    r[at] ^= 0x40;
    std::fs::write(rec(&files[0]), &r).unwrap();
    fresh("a record with a flipped byte");

    std::fs::copy(rec(&files[1]), rec(&files[0])).unwrap();
    fresh("another layer's record");

    std::fs::remove_file(rec(&files[0])).unwrap();
    fresh("no record");

    std::fs::write(&files[0].path, b"").unwrap();
    fresh("an empty file");
    assert!(dir.find(d1, false).is_some());
}

/// gc keeps what the kept METAs name, removes the rest and leftovers of
/// killed builds, and leaves a name being built alone.
#[test]
fn gc_keeps_the_layer_files_a_kept_meta_names() {
    let tmp = tempfile::tempdir().unwrap();
    let layers = two_layers();
    let dir = LayerDir::open(&tmp.path().join("l")).unwrap();
    let m1 = tmp.path().join("one.meta");
    let files = meta(&m1, &dir, &layers[..1], false).unwrap();
    let other = meta(&tmp.path().join("two.meta"), &dir, &layers, false).unwrap();
    let left = dir.root().join(".sha256-0.v1.erofs.1.0.tmp");
    std::fs::write(&left, b"x").unwrap();
    let keep: BTreeSet<String> = meta_devices(&m1).unwrap().into_iter().collect();
    let dry = dir.gc(&keep, true).unwrap();
    assert_eq!((dry.kept, dry.removed), (1, 1));
    assert!(other[1].path.exists());
    let r = dir.gc(&keep, false).unwrap();
    assert_eq!((r.kept, r.removed), (1, 1));
    assert!(files[0].path.exists() && !other[1].path.exists() && !left.exists());
    assert!(dir.find(&files[0].diff_id, false).is_some());
    assert!(
        meta_devices(&files[0].path).is_err(),
        "a layer file is not a META"
    );
}

/// A record that verifies (its seal is right) but places a small file's
/// bytes past the end of its layer file is refused when a META reads it,
/// not trusted and not a panic.
#[test]
fn a_sealed_record_that_points_outside_its_file_is_refused() {
    use super::record::Record;
    use crate::erofs_builder::Placement;
    let tmp = tempfile::tempdir().unwrap();
    let layers = two_layers();
    let dir = LayerDir::open(&tmp.path().join("l")).unwrap();
    let files = layer_files(&dir, &layers, false).unwrap();
    let rec = PathBuf::from(format!("{}.rec", files[0].path.display()));
    let mut r = Record::decode(&std::fs::read(&rec).unwrap(), true).unwrap();
    let len = r.file_len;
    let mut moved = 0;
    for e in &mut r.entries {
        if let hoist_unpack::Listed::Entry {
            body: hoist_unpack::ListedBody::File { content, size },
            ..
        } = e
        {
            if let (Placement::InlineAt(at), 1..) = (content, *size) {
                *at = len - 1;
                moved += 1;
            }
        }
    }
    assert!(moved > 0, "the sample has a small file");
    let mut out = Vec::new();
    r.write_to(&mut out).unwrap();
    std::fs::write(&rec, out).unwrap();
    let found = dir
        .find(&files[0].diff_id, false)
        .expect("its seal and head verify");
    let err = build_meta(
        &tmp.path().join("m"),
        &[found],
        false,
        [0; 16],
        guard(),
        None,
    )
    .expect_err("refused");
    assert!(err.to_string().contains("outside"), "{err}");
    assert!(!tmp.path().join("m").exists());
}

/// Threads of one process that need the same layer build its file once
/// (the per-name lock is `flock` on a file each opens: it holds between
/// threads as between processes); the rest find it.
#[test]
fn threads_that_need_one_layer_build_its_file_once() {
    let tmp = tempfile::tempdir().unwrap();
    let layers = two_layers();
    let dir = LayerDir::open(&tmp.path().join("l")).unwrap();
    let built: Vec<bool> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..6)
            .map(|_| s.spawn(|| layer_files(&dir, &layers[..1], false).unwrap()[0].reused))
            .collect();
        hs.into_iter().map(|h| !h.join().unwrap()).collect()
    });
    assert_eq!(built.iter().filter(|b| **b).count(), 1, "{built:?}");
}
