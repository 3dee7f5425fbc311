//! Containment: layers built from the known classes of attack (containerd's
//! "breakout" tests, umoci's CVE-2021-29136), single and across layers. The
//! outcome may be an error or a tree, but nothing outside the root changes.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::tarb::{dir, file, hardlink, symlink, whiteout, Tar, E};
use super::{apply, own};
use crate::Ownership;

/// A sandbox: `outside/` holds sentinels; the root is a sibling.
struct Sandbox {
    _t: tempfile::TempDir,
    dir: PathBuf,
    outside: PathBuf,
}

fn snapshot(p: &Path, out: &mut BTreeMap<PathBuf, (u32, u32, u64, Vec<u8>)>) {
    for e in std::fs::read_dir(p).unwrap() {
        let e = e.unwrap().path();
        let m = std::fs::symlink_metadata(&e).unwrap();
        let content = if m.is_file() {
            std::fs::read(&e).unwrap_or_default()
        } else {
            Vec::new()
        };
        out.insert(
            e.clone(),
            (m.permissions().mode(), m.uid(), m.nlink(), content),
        );
        if m.is_dir() {
            snapshot(&e, out);
        }
    }
}

impl Sandbox {
    fn new() -> Sandbox {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().to_path_buf();
        let outside = dir.join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("sentinel"), b"original").unwrap();
        std::fs::create_dir(outside.join("subdir")).unwrap();
        std::fs::write(outside.join("subdir/inner"), b"inner").unwrap();
        Sandbox {
            _t: t,
            dir,
            outside,
        }
    }
    fn outside_state(&self) -> BTreeMap<PathBuf, (u32, u32, u64, Vec<u8>)> {
        let mut m = BTreeMap::new();
        snapshot(&self.outside, &mut m);
        let top: Vec<_> = std::fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        m.insert(PathBuf::from("<top>"), (top.len() as u32, 0, 0, Vec::new()));
        m
    }
    fn abs(&self, rel: &str) -> String {
        self.outside.join(rel).to_str().unwrap().to_string()
    }
}

/// Apply, then require that `outside/` and the sandbox top are unchanged.
fn contained(name: &str, layers: impl Fn(&Sandbox) -> Vec<Vec<u8>>) {
    for o in [Ownership::Caller, own()] {
        let sb = Sandbox::new();
        std::fs::create_dir(sb.dir.join("u")).unwrap();
        let before = sb.outside_state();
        let ls = layers(&sb);
        let (_root, res) = apply(&sb.dir.join("u"), &ls, o);
        let after = sb.outside_state();
        assert_eq!(
            before, after,
            "{name} ({o:?}) changed something outside the root; unpack said {res:?}"
        );
    }
}

#[test]
fn absolute_symlink_escape_then_write_through() {
    contained("abs symlink", |sb| {
        vec![Tar::new()
            .add(symlink("evil", &sb.abs("")))
            .add(file("evil/sentinel", b"pwned"))
            .add(file("evil/new-file", b"pwned"))
            .add(symlink("root", "/"))
            .add(file(&format!("root{}", sb.abs("sentinel")), b"pwned"))
            .finish()]
    });
}

#[test]
fn relative_symlink_escape_and_chains_through_dotdot() {
    contained("relative symlinks", |_| {
        vec![Tar::new()
            .add(symlink("up", "../../../../../../../../.."))
            .add(file("up/tmp/hoist-escape", b"pwned"))
            .add(dir("a"))
            .add(symlink("a/b", "../c/../../.."))
            .add(symlink("c", "a/b/.."))
            .add(file("a/b/x", b"pwned"))
            .add(file("c/../../outside/sentinel", b"pwned"))
            .add(file("../outside/sentinel", b"pwned"))
            .add(file("../../outside/new", b"pwned"))
            .finish()]
    });
}

#[test]
fn hardlinks_to_absolute_and_dotdot_paths_and_to_symlinks_pointing_out() {
    contained("hardlinks", |sb| {
        vec![
            Tar::new().add(hardlink("h1", &sb.abs("sentinel"))).finish(),
            Tar::new()
                .add(hardlink("h2", "../outside/sentinel"))
                .finish(),
            Tar::new()
                .add(symlink("s", &sb.abs("sentinel")))
                .add(hardlink("h3", "s"))
                .add(file("h3", b"pwned"))
                .add(symlink("sd", &sb.abs("")))
                .add(hardlink("h4", "sd/sentinel"))
                .finish(),
        ]
    });
}

#[test]
fn entries_named_dot_dotdot_or_empty() {
    contained("dot names", |_| {
        vec![
            Tar::new().add(file("..", b"pwned")).finish(),
            Tar::new().add(file(".", b"pwned")).finish(),
            Tar::new().add(file("", b"pwned")).finish(),
            Tar::new().add(symlink("..", "/")).finish(),
            Tar::new()
                .add(dir("../.."))
                .add(file("../../x", b"pwned"))
                .finish(),
        ]
    });
}

#[test]
fn whiteouts_of_dotdot_and_through_symlinked_parents() {
    contained("whiteouts", |sb| {
        vec![
            Tar::new()
                .add(whiteout("../.wh.outside"))
                .add(whiteout(".wh.."))
                .finish(),
            Tar::new().add(symlink("p", &sb.abs(""))).finish(),
            Tar::new()
                .add(whiteout("p/.wh.sentinel"))
                .add(whiteout("p/.wh.subdir"))
                .finish(),
            Tar::new().add(symlink("q", "../outside")).finish(),
            Tar::new()
                .add(whiteout("q/.wh..wh..opq"))
                .add(whiteout("q/.wh.sentinel"))
                .finish(),
        ]
    });
}

#[test]
fn directory_replaced_by_symlink_to_root_in_a_later_layer_then_written_through() {
    contained("dir then symlink", |sb| {
        vec![
            Tar::new().add(dir("d")).add(file("d/f", b"ok")).finish(),
            Tar::new().add(symlink("d", "/")).finish(),
            Tar::new()
                .add(file(&format!("d{}", sb.abs("sentinel")), b"pwned"))
                .add(dir("d/x"))
                .add(symlink("e", &sb.abs("subdir")))
                .finish(),
            Tar::new()
                .add(file("e/inner", b"pwned"))
                .add(E {
                    mode: 0o777,
                    ..dir("e")
                })
                .finish(),
        ]
    });
}

#[test]
fn chmod_chown_and_truncation_through_symlinks() {
    contained("through symlinks", |sb| {
        vec![
            Tar::new()
                .add(symlink("t", &sb.abs("sentinel")))
                .add(symlink("tdir", &sb.abs("subdir")))
                .finish(),
            Tar::new()
                .add(file("t", b""))
                .add(E {
                    mode: 0o777,
                    uid: 1234,
                    ..dir("tdir")
                })
                .add(E {
                    mode: 0o4777,
                    uid: 1234,
                    ..file("tdir/inner", b"")
                })
                .finish(),
            Tar::new()
                .add(symlink("u", &sb.abs("sentinel")))
                .add(hardlink("v", "u"))
                .add(E {
                    mode: 0o777,
                    ..file("v", b"x")
                })
                .finish(),
        ]
    });
}

/// Deterministic mutation fuzzing of the attack layers: random byte
/// flips and splices, checked for containment. (`fuzz/` has the
/// coverage-guided version of this.)
#[test]
fn mutated_attack_archives_stay_contained() {
    let sb = Sandbox::new();
    let seeds: Vec<Vec<u8>> = vec![
        Tar::new()
            .add(symlink("evil", &sb.abs("")))
            .add(file("evil/sentinel", b"pwned"))
            .finish(),
        Tar::new()
            .add(symlink("s", &sb.abs("sentinel")))
            .add(hardlink("h", "s"))
            .add(file("h", b"x"))
            .finish(),
        Tar::new()
            .add(symlink("p", "../outside"))
            .add(whiteout("p/.wh.sentinel"))
            .add(dir("p/sub"))
            .finish(),
    ];
    std::fs::create_dir(sb.dir.join("work")).unwrap();
    let before = sb.outside_state();
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    for i in 0..600 {
        let mut layers = Vec::new();
        for _ in 0..rng.usize(1..3) {
            let mut b = seeds[rng.usize(..seeds.len())].clone();
            for _ in 0..rng.usize(1..6) {
                let at = rng.usize(..b.len());
                match rng.u8(..3) {
                    0 => b[at] = rng.u8(..),
                    1 => b[at] = b"./.wh/\0"[rng.usize(..7)],
                    _ => {
                        let other = &seeds[rng.usize(..seeds.len())];
                        let from = rng.usize(..other.len());
                        let n = rng.usize(..64).min(other.len() - from).min(b.len() - at);
                        b[at..at + n].copy_from_slice(&other[from..from + n]);
                    }
                }
            }
            layers.push(b);
        }
        let d = sb.dir.join("work").join(format!("m{i}"));
        let (root, _) = apply(
            &d,
            &layers,
            if i % 2 == 0 { Ownership::Caller } else { own() },
        );
        let _ = crate::remove_tree(&root);
        let _ = std::fs::remove_dir_all(&d);
    }
    assert_eq!(before, sb.outside_state());
}

#[test]
fn an_entry_budget_stops_a_layer_of_many_entries_at_the_limit() {
    let names: Vec<String> = (0..50).map(|i| format!("f{i}")).collect();
    let mut tar = super::tarb::Tar::new();
    for n in &names {
        tar = tar.add(super::tarb::file(n, b"x"));
    }
    let layer = tar.finish();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let mut u = crate::Unpacker::new(
        &root,
        crate::LayerOptions {
            guard: crate::Guard::new(None, Some(10)),
            ..Default::default()
        },
    )
    .unwrap();
    let e = u.apply_layer(&mut &layer[..]).unwrap_err();
    assert!(
        matches!(e, crate::UnpackError::TooManyEntries { limit: 10 }),
        "{e}"
    );
    assert_eq!(
        std::fs::read_dir(&root).unwrap().count(),
        10,
        "no entry past the limit"
    );

    let cancel = hoist_spec::Cancel::new();
    cancel.cancel();
    let mut t: crate::MergedTree<()> = crate::MergedTree::new();
    t.set_guard(crate::Guard::new(Some(cancel), None));
    struct Sink;
    impl crate::ContentSink for Sink {
        type Handle = ();
        fn store(&mut self, _: u64, r: &mut dyn std::io::Read) -> std::io::Result<()> {
            std::io::copy(r, &mut std::io::sink()).map(|_| ())
        }
        fn release(&mut self, _: ()) {}
    }
    let e = t.apply_layer(&mut &layer[..], &mut Sink).unwrap_err();
    assert!(matches!(e, crate::UnpackError::Cancelled), "{e}");
}
