//! The in-memory merge must build the same tree as the unpacker does on
//! disk: random layer stacks over a small set of names (so entries collide:
//! replacements, whiteouts, opaque dirs, symlinked parents, hardlinks
//! across layers), applied both ways and compared entry by entry.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::tarb::{dir, file, hardlink, symlink, whiteout, Tar, E};
use super::{apply, is_root, own};
use crate::{Body, ContentSink, MergedTree, NodeId, ROOT};

/// Keeps contents in memory and counts what is live.
#[derive(Default)]
struct Mem {
    live: usize,
}

impl ContentSink for Mem {
    type Handle = Vec<u8>;
    fn store(&mut self, _size: u64, r: &mut dyn Read) -> std::io::Result<Vec<u8>> {
        let mut v = Vec::new();
        r.read_to_end(&mut v)?;
        self.live += 1;
        Ok(v)
    }
    fn release(&mut self, _h: Vec<u8>) {
        self.live -= 1;
    }
}

/// path → (type and payload, mode, uid, gid, hardlink group id)
type Listing = BTreeMap<String, (String, u32, u64, u64, String)>;

fn disk_listing(root: &Path) -> Listing {
    let mut out = Listing::new();
    let mut inodes: BTreeMap<u64, String> = BTreeMap::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((p, rel)) = stack.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap();
        let ft = m.file_type();
        let what = if ft.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                let e = e.unwrap();
                let name = e.file_name().to_string_lossy().to_string();
                stack.push((e.path(), format!("{rel}/{name}")));
            }
            "dir".to_string()
        } else if ft.is_symlink() {
            format!("link {}", std::fs::read_link(&p).unwrap().display())
        } else {
            format!(
                "file {:?}",
                String::from_utf8_lossy(&std::fs::read(&p).unwrap())
            )
        };
        let group = if ft.is_dir() {
            String::new()
        } else {
            inodes.entry(m.ino()).or_insert_with(|| rel.clone()).clone()
        };
        out.insert(
            rel,
            (
                what,
                m.mode() & 0o7777,
                m.uid() as u64,
                m.gid() as u64,
                group,
            ),
        );
    }
    out
}

fn merged_listing(t: &MergedTree<Vec<u8>>) -> Listing {
    let mut out = Listing::new();
    let mut first: BTreeMap<NodeId, String> = BTreeMap::new();
    let mut stack = vec![(ROOT, String::new())];
    let mut order = Vec::new();
    while let Some((id, rel)) = stack.pop() {
        order.push((id, rel.clone()));
        if let Some(c) = t.children(id) {
            for (name, child) in c {
                stack.push((*child, format!("{rel}/{}", String::from_utf8_lossy(name))));
            }
        }
    }
    // Hardlink groups are named by their first path in the disk walk's
    // order, which is a different walk: name them by the smallest path.
    for (id, rel) in &order {
        let e = first.entry(*id).or_insert_with(|| rel.clone());
        if rel < e {
            *e = rel.clone();
        }
    }
    for (id, rel) in order {
        let n = t.node(id);
        let what = match &n.body {
            Body::Dir(_) => "dir".to_string(),
            Body::Symlink(target) => format!("link {}", String::from_utf8_lossy(target)),
            Body::File { content, .. } => format!(
                "file {:?}",
                String::from_utf8_lossy(content.as_deref().unwrap_or_default())
            ),
            Body::Special => "special".to_string(),
        };
        let group = if matches!(n.body, Body::Dir(_)) {
            String::new()
        } else {
            first[&id].clone()
        };
        out.insert(rel, (what, n.meta.mode, n.meta.uid, n.meta.gid, group));
    }
    out
}

fn normalise_groups(l: &mut Listing) {
    let mut smallest: BTreeMap<String, String> = BTreeMap::new();
    for (p, v) in l.iter() {
        if !v.4.is_empty() {
            let e = smallest.entry(v.4.clone()).or_insert_with(|| p.clone());
            if p < e {
                *e = p.clone();
            }
        }
    }
    for v in l.values_mut() {
        if !v.4.is_empty() {
            v.4 = smallest[&v.4].clone();
        }
    }
}

const NAMES: &[&str] = &["a", "b", "a/x", "a/y", "b/x", "s", "s/x", "a/s", "b/z/w"];

fn random_layer(rng: &mut fastrand::Rng) -> Vec<u8> {
    let mut t = Tar::new();
    let owners = [(0, 0), (1000, 1000), (0, 42)];
    let modes = [0o644, 0o600, 0o755, 0o4755, 0o1777];
    let datas: [&[u8]; 3] = [b"one", b"two", b""];
    for _ in 0..rng.usize(1..8) {
        let name = NAMES[rng.usize(..NAMES.len())];
        let other = NAMES[rng.usize(..NAMES.len())];
        let wh = {
            let (p, n) = name.rsplit_once('/').map_or(("", name), |(p, n)| (p, n));
            if p.is_empty() {
                format!(".wh.{n}")
            } else {
                format!("{p}/.wh.{n}")
            }
        };
        let opq = format!("{name}/.wh..wh..opq");
        let abs = format!("/{other}");
        let mut e: E<'_> = match rng.u8(..8) {
            0 | 1 => file(name, datas[rng.usize(..3)]),
            2 | 3 => dir(name),
            4 => symlink(name, if rng.bool() { other } else { &abs }),
            5 => hardlink(name, other),
            6 => whiteout(&wh),
            _ => whiteout(&opq),
        };
        // The borrowed strings live until `add` below.
        let (u, g) = owners[rng.usize(..owners.len())];
        e.uid = u;
        e.gid = g;
        if !matches!(e.kind, tar::EntryType::Symlink) {
            e.mode = modes[rng.usize(..modes.len())];
        }
        t = t.add(e);
    }
    t.finish()
}

fn describe(layers: &[Vec<u8>]) -> String {
    let mut out = String::new();
    for (i, l) in layers.iter().enumerate() {
        out.push_str(&format!("layer {i}:\n"));
        for e in tar::Archive::new(&l[..]).entries().unwrap() {
            let e = e.unwrap();
            let h = e.header();
            out.push_str(&format!(
                "  {:?} {} {:o} {}:{} -> {}\n",
                h.entry_type(),
                String::from_utf8_lossy(&e.path_bytes()),
                h.mode().unwrap(),
                h.uid().unwrap(),
                h.gid().unwrap(),
                String::from_utf8_lossy(&e.link_name_bytes().unwrap_or_default())
            ));
        }
    }
    out
}

#[test]
fn merge_builds_the_same_tree_as_the_unpacker() {
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = fastrand::Rng::with_seed(0x3e26f);
    let mut compared = 0;
    for i in 0..1500 {
        let layers: Vec<Vec<u8>> = (0..rng.usize(1..4))
            .map(|_| random_layer(&mut rng))
            .collect();
        let d = tmp.path().join(format!("c{i}"));
        let (root, disk) = apply(&d, &layers, own());
        let mut sink = Mem::default();
        let mut t = MergedTree::new();
        let merged: Result<(), crate::UnpackError> = layers
            .iter()
            .try_for_each(|l| t.apply_layer(&mut &l[..], &mut sink).map(|_| ()))
            .and_then(|()| t.finish());
        match (&disk, &merged) {
            (Ok(_), Ok(())) => {
                let mut a = disk_listing(&root);
                let mut b = merged_listing(&t);
                if !is_root() {
                    for v in a.values_mut().chain(b.values_mut()) {
                        (v.2, v.3) = (0, 0);
                    }
                }
                normalise_groups(&mut a);
                normalise_groups(&mut b);
                assert_eq!(a, b, "case {i}: layers differ:\n{}", describe(&layers));
                let files: std::collections::HashSet<NodeId> = {
                    let mut s = std::collections::HashSet::new();
                    let mut st = vec![ROOT];
                    while let Some(id) = st.pop() {
                        match &t.node(id).body {
                            Body::Dir(c) => st.extend(c.values().copied()),
                            Body::File { .. } => {
                                s.insert(id);
                            }
                            _ => {}
                        }
                    }
                    s
                };
                assert_eq!(sink.live, files.len(), "case {i}: released contents");
                compared += 1;
            }
            (Err(_), Err(_)) => {}
            (a, b) => panic!(
                "case {i}: unpack {:?} but merge {:?}\n{}",
                a.as_ref().map(|_| ()),
                b,
                describe(&layers)
            ),
        }
        let _ = crate::remove_tree(&root);
    }
    assert!(compared > 350, "only {compared} cases compared");
}

#[test]
fn gnu_sparse_files_merge_to_their_expanded_contents() {
    let t = tempfile::tempdir().unwrap();
    let (tar, want) = super::gnu_sparse_tar(t.path());
    let mut tree = MergedTree::new();
    tree.apply_layer(&mut &tar[..], &mut Mem::default())
        .unwrap();
    let id = tree.children(ROOT).unwrap()[&b"sparse"[..]];
    let Body::File { size, content } = &tree.node(id).body else {
        panic!("not a file")
    };
    assert_eq!(*size, 4 << 20);
    assert_eq!(content.as_deref().unwrap(), want);
}

/// Contents a listing refers to, stored elsewhere: nothing to count.
struct Refs;

impl ContentSink for Refs {
    type Handle = Vec<u8>;
    fn store(&mut self, _size: u64, r: &mut dyn Read) -> std::io::Result<Vec<u8>> {
        let mut v = Vec::new();
        r.read_to_end(&mut v)?;
        Ok(v)
    }
    fn release(&mut self, _h: Vec<u8>) {}
}

/// Layer-shared disks rebuild an image from each layer's tree alone: the
/// layer applied with its whiteouts kept, listed back, and the listings
/// applied in order must give the tree the tar streams give. Stacks whose
/// layer cannot stand alone (a hardlink to a lower layer's file) are
/// refused when the layer's tree is made, never merged differently.
#[test]
fn listings_of_one_layer_trees_merge_to_the_same_tree_as_the_tars() {
    let mut rng = fastrand::Rng::with_seed(0x5a4ed);
    let (mut compared, mut refused, mut lenient) = (0, 0, 0);
    for i in 0..8000 {
        let layers: Vec<Vec<u8>> = (0..rng.usize(1..4))
            .map(|_| random_layer(&mut rng))
            .collect();
        let mut sink = Mem::default();
        let mut want = MergedTree::new();
        let from_tars: Result<(), crate::UnpackError> = layers
            .iter()
            .try_for_each(|l| want.apply_layer(&mut &l[..], &mut sink).map(|_| ()))
            .and_then(|()| want.finish());
        let mut lsink = Mem::default();
        let alone: Result<Vec<MergedTree<Vec<u8>>>, _> = layers
            .iter()
            .map(|l| {
                let mut t = MergedTree::new_layer();
                t.apply_layer(&mut &l[..], &mut lsink)?;
                t.finish()?;
                Ok::<_, crate::UnpackError>(t)
            })
            .collect();
        let Ok(alone) = alone else {
            refused += 1;
            continue;
        };
        let mut got = MergedTree::new();
        let mut gsink = Refs;
        let from_listings: Result<(), crate::UnpackError> = alone
            .iter()
            .try_for_each(|t| got.apply_listing(t.listing(), &mut gsink).map(|_| ()))
            .and_then(|()| got.finish());
        match (&from_tars, &from_listings) {
            (Ok(()), Ok(())) => {
                let (mut a, mut b) = (merged_listing(&want), merged_listing(&got));
                normalise_groups(&mut a);
                normalise_groups(&mut b);
                assert_eq!(a, b, "case {i}:\n{}", describe(&layers));
                compared += 1;
            }
            (Err(_), Err(_)) => {}
            (Ok(()), Err(crate::UnpackError::NotStandalone(_))) => refused += 1,
            // A refusal that came from the order of a layer's entries (a
            // symlink loop met before the entry that replaced the link):
            // the layer's tree alone has no order left to refuse.
            (Err(_), Ok(())) => lenient += 1,
            (a, b) => panic!(
                "case {i}: tars {a:?} but listings {b:?}\n{}",
                describe(&layers)
            ),
        }
    }
    assert!(
        compared > 1000 && lenient < 30,
        "{compared} compared, {refused} refused, {lenient} accepted that the tars refuse"
    );
    eprintln!("{compared} compared, {refused} refused, {lenient} accepted that the tars refuse");
}

/// A layer as Docker writes one (parents first, real paths, the opaque
/// marker after its directory's entry), over a base with a usrmerge-style
/// symlink: its tree alone keeps the whiteout as a 0/0 character device and
/// the opaque directory as `trusted.overlay.opaque=y`, is not refused, and
/// its listing over the base gives the tar's tree.
#[test]
fn a_docker_style_layer_stands_alone_with_overlayfs_whiteouts() {
    let base = Tar::new()
        .add(dir("usr"))
        .add(dir("usr/lib"))
        .add(file("usr/lib/a", b"a"))
        .add(symlink("lib", "usr/lib"))
        .add(dir("etc"))
        .add(file("etc/motd", b"hi"))
        .add(dir("doc"))
        .add(file("doc/old", b"old"))
        .finish();
    let top = Tar::new()
        .add(whiteout("etc/.wh.motd"))
        .add(dir("doc"))
        .add(whiteout("doc/.wh..wh..opq"))
        .add(file("doc/new", b"new"))
        .add(file("usr/lib/b", b"b"))
        .add(hardlink("usr/lib/c", "usr/lib/b"))
        .finish();
    let mut alone = MergedTree::new_layer();
    let mut sink = Refs;
    alone.apply_layer(&mut &top[..], &mut sink).unwrap();
    alone.finish().unwrap();
    let root = alone.children(ROOT).unwrap();
    let etc = alone.children(root[&b"etc"[..]]).unwrap();
    let motd = alone.node(etc[&b"motd"[..]]);
    assert_eq!(
        (motd.meta.kind, motd.meta.major, motd.meta.minor),
        (crate::EntryType::Char, 0, 0)
    );
    let doc = alone.node(root[&b"doc"[..]]);
    assert!(doc
        .xattrs
        .iter()
        .any(|(k, v)| k == crate::OVERLAY_OPAQUE && v == b"y"));
    // etc and usr/lib were made as parents: the listing leaves them out.
    let implicit = alone.implicit_dirs();
    assert!(implicit.contains(&b"etc".to_vec()) && implicit.contains(&b"usr/lib".to_vec()));

    let mut want = MergedTree::new();
    let mut s1 = Refs;
    for l in [&base, &top] {
        want.apply_layer(&mut &l[..], &mut s1).unwrap();
    }
    want.finish().unwrap();
    let mut got = MergedTree::new();
    let mut s2 = Refs;
    got.apply_layer(&mut &base[..], &mut s2).unwrap();
    got.apply_listing(alone.listing(), &mut s2).unwrap();
    got.finish().unwrap();
    let (mut a, mut b) = (merged_listing(&want), merged_listing(&got));
    normalise_groups(&mut a);
    normalise_groups(&mut b);
    assert_eq!(a, b);
    assert!(!b.contains_key("/etc/motd") && !b.contains_key("/doc/old"));
    assert!(b.contains_key("/usr/lib/a") && b.contains_key("/usr/lib/c"));
}
