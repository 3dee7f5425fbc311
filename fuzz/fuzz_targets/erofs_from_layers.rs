//! Arbitrary bytes as one or two layer tars, merged in memory and written
//! as an erofs image by the native writer: errors are fine, panics are not,
//! and every image it finishes must pass `fsck.erofs --extract` (when
//! installed), which decodes every file. Inputs whose length is odd are
//! written with `--compress lz4`.
//!
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run erofs_from_layers -- -max_total_time=300`
#![no_main]

use hoist_export::{ErofsBuilder, ErofsContent, ErofsOptions};
use hoist_unpack::MergedTree;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (a, b) = match data.windows(4).position(|w| w == b"LAYR") {
        Some(i) => (&data[..i], &data[i + 4..]),
        None => (data, &[][..]),
    };
    let out = std::env::temp_dir().join(format!("hoist-fuzz-erofs-{}", std::process::id()));
    let Ok(mut builder) = ErofsBuilder::create(
        &out,
        ErofsOptions {
            lz4: data.len() % 2 == 1,
        },
        None,
    ) else {
        return;
    };
    let mut tree: MergedTree<ErofsContent> = MergedTree::new();
    let ok = tree.apply_layer(&mut &a[..], &mut builder).is_ok()
        && tree.apply_layer(&mut &b[..], &mut builder).is_ok()
        && tree.finish().is_ok();
    if ok && builder.finish(&tree, [7; 16]).is_ok() {
        if let Ok(o) = std::process::Command::new("fsck.erofs")
            .arg("--extract")
            .arg(&out)
            .output() {
            assert!(
                o.status.success(),
                "fsck.erofs refused an image: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }
    let _ = std::fs::remove_file(&out);
});
