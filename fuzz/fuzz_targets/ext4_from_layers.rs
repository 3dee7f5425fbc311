//! Arbitrary bytes as one or two layer tars, merged in memory and written
//! as an ext4 image by the native writer: errors are fine, panics are not.
//! (The unit tests check with e2fsck that what it writes is sound.)
//!
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run ext4_from_layers -- -max_total_time=300`
#![no_main]

use hoist_export::{Ext4Builder, Ext4Options, Run};
use hoist_unpack::MergedTree;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (a, b) = match data.windows(4).position(|w| w == b"LAYR") {
        Some(i) => (&data[..i], &data[i + 4..]),
        None => (data, &[][..]),
    };
    let out = std::env::temp_dir().join(format!("hoist-fuzz-ext4-{}", std::process::id()));
    let Ok(mut builder) = Ext4Builder::create(&out, Ext4Options::default()) else {
        return;
    };
    let mut tree: MergedTree<Run> = MergedTree::new();
    let ok = tree.apply_layer(&mut &a[..], &mut builder).is_ok()
        && tree.apply_layer(&mut &b[..], &mut builder).is_ok()
        && tree.finish().is_ok();
    if ok {
        let _ = builder.finish(&tree);
    }
    let _ = std::fs::remove_file(&out);
});
