//! Arbitrary bytes as one or two layer tars, applied under a root: whatever
//! happens, nothing outside the root changes.
//!
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run apply_layer -- -max_total_time=300`
//! (cargo-fuzz wants nightly; RUSTC_BOOTSTRAP lets the stable toolchain do).
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use hoist_unpack::{Ownership, LayerOptions, Unpacker};
use libfuzzer_sys::fuzz_target;

struct Sandbox {
    dir: PathBuf,
    before: Vec<(PathBuf, Vec<u8>, u32)>,
}

fn listing(p: &Path, out: &mut Vec<(PathBuf, Vec<u8>, u32)>) {
    use std::os::unix::fs::PermissionsExt;
    let mut entries: Vec<_> = std::fs::read_dir(p).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for e in entries {
        let m = std::fs::symlink_metadata(&e).unwrap();
        let data = if m.is_file() { std::fs::read(&e).unwrap() } else { Vec::new() };
        out.push((e.clone(), data, m.permissions().mode()));
        if m.is_dir() {
            listing(&e, out);
        }
    }
}

fn sandbox() -> &'static Sandbox {
    static S: OnceLock<Sandbox> = OnceLock::new();
    S.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("hoist-fuzz-{}", std::process::id()));
        let outside = dir.join("outside");
        std::fs::create_dir_all(outside.join("sub")).unwrap();
        std::fs::write(outside.join("sentinel"), b"original").unwrap();
        std::fs::write(outside.join("sub/inner"), b"inner").unwrap();
        std::fs::create_dir_all(dir.join("work")).unwrap();
        let mut before = Vec::new();
        listing(&outside, &mut before);
        Sandbox { dir, before }
    })
}

fuzz_target!(|data: &[u8]| {
    let sb = sandbox();
    let root = sb.dir.join("work/root");
    let _ = hoist_unpack::remove_tree(&root);
    std::fs::create_dir_all(&root).unwrap();
    // Split the input into two layers at a marker, so cross-layer
    // sequences (a symlink in one, a write through it in the next) happen.
    let (a, b) = match data.windows(4).position(|w| w == b"LAYR") {
        Some(i) => (&data[..i], &data[i + 4..]),
        None => (data, &[][..]),
    };
    let ownership = if data.first().is_some_and(|x| x & 1 == 1) { Ownership::Caller } else { Ownership::default_for_process() };
    if let Ok(mut u) = Unpacker::new(&root, LayerOptions { ownership, ..LayerOptions::default() }) {
        if u.apply_layer(&mut &a[..]).is_ok() {
            let _ = u.apply_layer(&mut &b[..]);
        }
        let _ = u.finish();
    }
    let mut after = Vec::new();
    listing(&sb.dir.join("outside"), &mut after);
    assert_eq!(sb.before, after, "something outside the root changed");
    let top: Vec<_> = std::fs::read_dir(&sb.dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(top.len(), 2, "something was created beside the root: {top:?}");
    let _ = hoist_unpack::remove_tree(&root);
});
