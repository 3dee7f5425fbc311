//! What killed runs leave beside their target: an unpack's temp tree, an
//! export's temp image or tree (`.NAME.hoist-KIND-RAND`, see
//! `hoist_store::temp`). The next run on the same target removes those whose
//! writer's lock is free.

use std::path::{Path, PathBuf};

pub(crate) fn temp_beside(target: &Path, kind: &str) -> Option<PathBuf> {
    hoist_store::temp::temp_name_beside(target, kind)
}

pub(crate) fn remove_stale_siblings(target: &Path) {
    for path in hoist_store::temp::stale_beside(target) {
        let tree = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
        let r = if tree {
            hoist_unpack::remove_tree(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match r {
            Ok(()) => tracing::info!("removed {} (left by a killed hoist)", path.display()),
            Err(err) => tracing::warn!("could not remove {}: {err}", path.display()),
        }
    }
}
