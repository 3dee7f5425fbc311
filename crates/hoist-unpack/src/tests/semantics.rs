use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

use super::tarb::{dir, file, hardlink, symlink, whiteout, Tar, E};
use super::{apply, is_root, own};
use crate::{EntryType, Ownership};

fn read(p: &std::path::Path) -> String {
    std::fs::read_to_string(p).unwrap()
}

#[test]
fn whiteouts_remove_lower_files_and_trees_and_keep_siblings() {
    let t = tempfile::tempdir().unwrap();
    let l1 = Tar::new()
        .add(dir("etc"))
        .add(file("etc/motd", b"m"))
        .add(file("etc/issue", b"i"))
        .add(dir("usr/share/man"))
        .add(file("usr/share/man/a", b"a"))
        .add(dir("usr/share/mandb"))
        .finish();
    let l2 = Tar::new()
        .add(whiteout("etc/.wh.motd"))
        .add(whiteout("usr/share/.wh.man"))
        .add(whiteout("etc/.wh.never-existed"))
        .finish();
    let (root, res) = apply(t.path(), &[l1, l2], own());
    let tree = res.unwrap();
    assert!(!root.join("etc/motd").exists());
    assert!(!root.join("usr/share/man").exists());
    assert!(root.join("etc/issue").exists() && root.join("usr/share/mandb").is_dir());
    assert!(
        !tree.entries.contains_key(&b"usr/share/man/a"[..]),
        "metadata forgot the removed tree"
    );
    assert!(std::fs::read_dir(root.join("etc")).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with(".wh.")));
}

#[test]
fn opaque_dir_hides_lower_children_whatever_the_entry_order() {
    for marker_first in [true, false] {
        let t = tempfile::tempdir().unwrap();
        let l1 = Tar::new()
            .add(dir("doc"))
            .add(file("doc/old", b"o"))
            .add(dir("doc/sub"))
            .add(file("doc/sub/x", b"x"))
            .add(file("docs-sibling", b"s"))
            .finish();
        let mut l2 = Tar::new().add(dir("doc"));
        if marker_first {
            l2 = l2
                .add(whiteout("doc/.wh..wh..opq"))
                .add(file("doc/new", b"n"));
        } else {
            l2 = l2
                .add(file("doc/new", b"n"))
                .add(whiteout("doc/.wh..wh..opq"));
        }
        let (root, res) = apply(t.path(), &[l1, l2.finish()], own());
        res.unwrap();
        let mut names: Vec<String> = std::fs::read_dir(root.join("doc"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, vec!["new"], "marker first: {marker_first}");
        assert!(root.join("docs-sibling").exists());
    }
}

#[test]
fn whiteout_does_not_remove_what_the_same_layer_adds() {
    let t = tempfile::tempdir().unwrap();
    let l1 = Tar::new().add(file("a", b"lower")).finish();
    let l2 = Tar::new()
        .add(file("b", b"same layer"))
        .add(whiteout(".wh.b"))
        .add(whiteout(".wh.a"))
        .finish();
    let (root, res) = apply(t.path(), &[l1, l2], own());
    res.unwrap();
    assert!(!root.join("a").exists());
    assert_eq!(read(&root.join("b")), "same layer");
}

#[test]
fn invalid_whiteouts_make_the_archive_invalid() {
    for bad in [".wh.", "d/.wh..", "d/.wh..."] {
        let t = tempfile::tempdir().unwrap();
        let l = Tar::new().add(dir("d")).add(whiteout(bad)).finish();
        let (_, res) = apply(t.path(), &[l], own());
        assert!(
            matches!(res, Err(crate::UnpackError::InvalidArchive(_))),
            "{bad}"
        );
    }
}

#[test]
fn directory_replaces_file_and_file_replaces_directory_with_its_subtree() {
    let t = tempfile::tempdir().unwrap();
    let l1 = Tar::new()
        .add(file("x", b"file"))
        .add(dir("y"))
        .add(dir("y/deep"))
        .add(file("y/deep/f", b"f"))
        .finish();
    let l2 = Tar::new()
        .add(dir("x"))
        .add(file("x/inside", b"i"))
        .add(file("y", b"now a file"))
        .finish();
    let (root, res) = apply(t.path(), &[l1, l2], own());
    let tree = res.unwrap();
    assert!(root.join("x").is_dir());
    assert_eq!(read(&root.join("y")), "now a file");
    assert!(!tree.entries.contains_key(&b"y/deep/f"[..]));
    assert_eq!(tree.entries[&b"y"[..]].kind, EntryType::File);
}

#[test]
fn hardlinks_within_a_layer_to_lower_layers_and_onto_existing_paths() {
    let t = tempfile::tempdir().unwrap();
    let l1 = Tar::new()
        .add(file("lower", b"L"))
        .add(file("victim", b"old"))
        .finish();
    let l2 = Tar::new()
        .add(file("a", b"A"))
        .add(hardlink("b", "a"))
        .add(hardlink("dir/c", "./a"))
        .add(hardlink("to-lower", "/lower"))
        .add(hardlink("victim", "lower"))
        .finish();
    let (root, res) = apply(t.path(), &[l1, l2], own());
    res.unwrap();
    let ino = |p: &str| std::fs::metadata(root.join(p)).unwrap().ino();
    assert_eq!(ino("a"), ino("b"));
    assert_eq!(ino("a"), ino("dir/c"));
    assert_eq!(ino("lower"), ino("to-lower"));
    assert_eq!(ino("lower"), ino("victim"));
    assert_eq!(read(&root.join("victim")), "L");
    assert_eq!(std::fs::metadata(root.join("a")).unwrap().nlink(), 3);
}

#[test]
fn hardlink_to_a_missing_target_is_an_error() {
    let t = tempfile::tempdir().unwrap();
    let (_, res) = apply(
        t.path(),
        &[Tar::new().add(hardlink("b", "nope")).finish()],
        own(),
    );
    assert!(res.is_err());
}

#[test]
fn symlink_targets_are_kept_verbatim() {
    let t = tempfile::tempdir().unwrap();
    let l = Tar::new()
        .add(symlink("abs", "/etc/os-release"))
        .add(symlink("rel", "../../x/y"))
        .add(symlink("dangling", "/nonexistent/target"))
        .add(symlink("escape", "../../../../../../../etc/passwd"))
        .finish();
    let (root, res) = apply(t.path(), &[l], own());
    res.unwrap();
    for (n, target) in [
        ("abs", "/etc/os-release"),
        ("rel", "../../x/y"),
        ("dangling", "/nonexistent/target"),
        ("escape", "../../../../../../../etc/passwd"),
    ] {
        assert_eq!(
            std::fs::read_link(root.join(n)).unwrap().to_str().unwrap(),
            target
        );
    }
}

#[test]
fn every_mode_bit_survives_including_setuid_after_chown() {
    let t = tempfile::tempdir().unwrap();
    let l = Tar::new()
        .add(E {
            mode: 0o4755,
            uid: 1000,
            gid: 1000,
            ..file("setuid", b"x")
        })
        .add(E {
            mode: 0o2755,
            gid: 50,
            ..file("setgid", b"x")
        })
        .add(E {
            mode: 0o1777,
            ..dir("sticky")
        })
        .add(E {
            mode: 0o000,
            ..file("none", b"x")
        })
        .add(E {
            mode: 0o555,
            ..dir("ro")
        })
        .add(file("ro/inside", b"written into a 0555 dir"))
        .finish();
    let (root, res) = apply(t.path(), &[l], own());
    let tree = res.unwrap();
    let mode = |p: &str| {
        std::fs::symlink_metadata(root.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("setuid"), 0o4755);
    assert_eq!(mode("setgid"), 0o2755);
    assert_eq!(mode("sticky"), 0o1777);
    assert_eq!(mode("none"), 0o000);
    assert_eq!(mode("ro"), 0o555);
    assert_eq!(tree.entries[&b"setuid"[..]].uid, 1000);
    if is_root() {
        let m = std::fs::metadata(root.join("setuid")).unwrap();
        assert_eq!((m.uid(), m.gid()), (1000, 1000));
    }
}

#[test]
fn a_readonly_directory_from_a_lower_layer_takes_new_files() {
    let t = tempfile::tempdir().unwrap();
    let l1 = Tar::new()
        .add(E {
            mode: 0o555,
            ..dir("ro")
        })
        .finish();
    let l2 = Tar::new().add(file("ro/later", b"x")).finish();
    for o in [Ownership::Caller, own()] {
        let d = t.path().join(format!("{o:?}"));
        let (root, res) = apply(&d, &[l1.clone(), l2.clone()], o);
        res.unwrap();
        assert!(root.join("ro/later").exists());
        crate::remove_tree(&root).unwrap();
        assert!(!root.exists());
    }
}

#[test]
fn mtimes_on_files_and_on_directories_after_their_contents() {
    let t = tempfile::tempdir().unwrap();
    let l1 = Tar::new()
        .add(E {
            mtime: 946_684_800,
            ..dir("d")
        })
        .add(E {
            mtime: 1_000_000_000,
            ..file("d/f", b"x")
        })
        .finish();
    let l2 = Tar::new()
        .add(file("d/g", b"later layer writes into d"))
        .finish();
    let (root, res) = apply(t.path(), &[l1, l2], own());
    res.unwrap();
    assert_eq!(
        std::fs::metadata(root.join("d/f")).unwrap().mtime(),
        1_000_000_000
    );
    assert_eq!(
        std::fs::metadata(root.join("d")).unwrap().mtime(),
        946_684_800
    );
}

#[test]
fn user_xattrs_are_set_and_empty_ones_skipped() {
    let t = tempfile::tempdir().unwrap();
    let l = Tar::new()
        .add(E {
            pax: vec![
                ("SCHILY.xattr.user.comment", b"hello"),
                ("SCHILY.xattr.user.empty", b""),
            ],
            ..file("x", b"x")
        })
        .add(E {
            pax: vec![("SCHILY.xattr.user.dir", b"d")],
            ..dir("d")
        })
        .finish();
    let (root, res) = apply(t.path(), &[l], own());
    res.unwrap();
    let get = |p: &str, n: &str| {
        let mut buf = [0u8; 64];
        rustix::fs::getxattr(root.join(p), n, &mut buf)
            .ok()
            .map(|len| buf[..len].to_vec())
    };
    assert_eq!(get("x", "user.comment").as_deref(), Some(&b"hello"[..]));
    assert_eq!(get("x", "user.empty"), None);
    assert_eq!(get("d", "user.dir").as_deref(), Some(&b"d"[..]));
}

/// Rootless, `security.capability` cannot be set, but the tree metadata
/// keeps it (and every other xattr) for the disk exporters.
#[test]
fn xattrs_are_recorded_even_when_they_cannot_be_set() {
    let t = tempfile::tempdir().unwrap();
    let cap: &[u8] = &[1, 0, 0, 2, 0, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let l = Tar::new()
        .add(E {
            pax: vec![
                ("SCHILY.xattr.security.capability", cap),
                ("SCHILY.xattr.user.comment", b"hi"),
            ],
            ..file("ping", b"x")
        })
        .add(hardlink("ping2", "ping"))
        .add(E {
            pax: vec![("SCHILY.xattr.user.gone", b"1")],
            ..file("old", b"x")
        })
        .finish();
    let l2 = Tar::new().add(file("old", b"new, no xattrs")).finish();
    let (_root, res) = apply(t.path(), &[l, l2], Ownership::Caller);
    let meta = res.unwrap();
    let want = vec![
        ("security.capability".to_string(), cap.to_vec()),
        ("user.comment".to_string(), b"hi".to_vec()),
    ];
    assert_eq!(meta.xattrs.get(&b"ping"[..]), Some(&want));
    assert_eq!(meta.xattrs.get(&b"ping2"[..]), Some(&want));
    assert_eq!(meta.xattrs.get(&b"old"[..]), None);
    let mut out = Vec::new();
    meta.write_to(&mut out).unwrap();
    assert_eq!(crate::TreeMeta::read_from(&out[..]).unwrap(), meta);
}

#[test]
fn fifos_and_devices_with_true_numbers_recorded() {
    let t = tempfile::tempdir().unwrap();
    let l = Tar::new()
        .add(E {
            kind: tar::EntryType::Fifo,
            mode: 0o644,
            ..file("fifo", b"")
        })
        .add(E {
            kind: tar::EntryType::Char,
            mode: 0o666,
            dev: (1, 3),
            ..file("null", b"")
        })
        .add(E {
            kind: tar::EntryType::Block,
            mode: 0o660,
            gid: 6,
            dev: (8, 0),
            ..file("sda", b"")
        })
        .finish();
    for o in [Ownership::Caller, own()] {
        let d = t.path().join(format!("{o:?}"));
        let (root, res) = apply(&d, std::slice::from_ref(&l), o);
        let tree = res.unwrap();
        assert!(std::fs::symlink_metadata(root.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo());
        let null = &tree.entries[&b"null"[..]];
        assert_eq!(
            (null.kind, null.major, null.minor, null.mode),
            (EntryType::Char, 1, 3, 0o666)
        );
        let sda = &tree.entries[&b"sda"[..]];
        assert_eq!(
            (sda.kind, sda.major, sda.minor, sda.gid),
            (EntryType::Block, 8, 0, 6)
        );
        let m = std::fs::symlink_metadata(root.join("null")).unwrap();
        if is_root() {
            // mknod works as root (outside a user namespace), else a placeholder.
            assert!(m.file_type().is_char_device() || m.file_type().is_file());
        } else {
            assert!(
                m.file_type().is_file() && m.len() == 0,
                "placeholder for the device"
            );
        }
    }
}

#[test]
fn pax_and_gnu_long_names_and_links() {
    let t = tempfile::tempdir().unwrap();
    let long_dir = "d".repeat(120);
    let long = format!("{long_dir}/{}", "n".repeat(150));
    let gnu = format!("{}/{}", "g".repeat(110), "h".repeat(120));
    let l = Tar::new()
        .add(file(&long, b"pax"))
        .add(symlink("lnk", &long))
        .add_gnu_long(&gnu, b"gnu")
        .finish();
    let (root, res) = apply(t.path(), &[l], own());
    res.unwrap();
    assert_eq!(read(&root.join(&long)), "pax");
    assert_eq!(read(&root.join(&gnu)), "gnu");
    assert_eq!(
        std::fs::read_link(root.join("lnk"))
            .unwrap()
            .to_str()
            .unwrap(),
        long
    );
}

#[test]
fn pax_ids_above_the_ustar_range() {
    let t = tempfile::tempdir().unwrap();
    let l = Tar::new()
        .add(E {
            pax: vec![
                ("uid", b"3000000"),
                ("gid", b"3000001"),
                ("mtime", b"1234567890.5"),
            ],
            ..file("big-ids", b"x")
        })
        .finish();
    let (root, res) = apply(t.path(), &[l], own());
    let tree = res.unwrap();
    let m = &tree.entries[&b"big-ids"[..]];
    assert_eq!(
        (m.uid, m.gid, m.mtime),
        (3_000_000, 3_000_001, 1_234_567_890)
    );
    if is_root() {
        assert_eq!(
            std::fs::metadata(root.join("big-ids")).unwrap().uid(),
            3_000_000
        );
    }
}

#[test]
fn the_root_entry_sets_the_root_mode() {
    let t = tempfile::tempdir().unwrap();
    let l = Tar::new()
        .add(E {
            mode: 0o700,
            ..dir("./")
        })
        .add(file("f", b"x"))
        .finish();
    let (root, res) = apply(t.path(), &[l], own());
    res.unwrap();
    assert_eq!(
        std::fs::metadata(&root).unwrap().permissions().mode() & 0o7777,
        0o700
    );
}

#[test]
fn writing_through_a_dangling_in_root_symlink_creates_its_target_inside() {
    let t = tempfile::tempdir().unwrap();
    let l1 = Tar::new()
        .add(dir("var"))
        .add(symlink("var/run", "/run"))
        .finish();
    let l2 = Tar::new().add(file("var/run/app.pid", b"1")).finish();
    let (root, res) = apply(t.path(), &[l1, l2], own());
    res.unwrap();
    assert_eq!(read(&root.join("run/app.pid")), "1");
    assert!(std::fs::symlink_metadata(root.join("var/run"))
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn gnu_sparse_files_made_by_gnu_tar() {
    let t = tempfile::tempdir().unwrap();
    let (tar, want) = super::gnu_sparse_tar(t.path());
    let (root, res) = apply(&t.path().join("u"), &[tar], own());
    res.unwrap();
    assert_eq!(std::fs::read(root.join("sparse")).unwrap(), want);
}
