//! What killed runs leave beside their target: an unpack's temp tree
//! (`.DIR.hoist-PID-RAND`), an export's temp image or tree
//! (`.FILE.hoist-tmp-PID-RAND`, `.FILE.hoist-rootfs-PID-RAND`). The next
//! run on the same target removes those whose process is gone.

use std::path::{Path, PathBuf};

/// The pid in a sibling's name, and whether it is a tree.
fn parse(rest: &str) -> Option<(u32, bool)> {
    let mut parts = rest.split('-');
    let first = parts.next()?;
    if let Ok(pid) = first.parse::<u32>() {
        return Some((pid, true)); // an unpack's temp tree
    }
    let pid = parts.next()?.parse::<u32>().ok()?;
    match first {
        "tmp" => Some((pid, false)),
        "rootfs" => Some((pid, true)),
        _ => None,
    }
}

fn parent_of(target: &Path) -> PathBuf {
    match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Where a run builds what it renames onto `target` at the end:
/// `.NAME.hoist-[KIND-]PID-RAND` beside it (`parse` reads these names
/// back). `None` if `target` names no file.
pub(crate) fn temp_beside(target: &Path, kind: Option<&str>) -> Option<PathBuf> {
    let name = target.file_name()?.to_string_lossy().to_string();
    let kind = kind.map(|k| format!("{k}-")).unwrap_or_default();
    Some(parent_of(target).join(format!(
        ".{name}.hoist-{kind}{}-{:x}",
        std::process::id(),
        fastrand::u32(..)
    )))
}

pub(crate) fn remove_stale_siblings(target: &Path) {
    let parent = parent_of(target);
    let Some(name) = target.file_name().map(|n| n.to_string_lossy().to_string()) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(&parent) else {
        return;
    };
    let prefix = format!(".{name}.hoist-");
    // An erofs/cpio export's unpack, killed: the unpack's temp tree of the
    // export's temp tree (same process).
    let nested = format!("..{name}.hoist-");
    for e in entries.flatten() {
        let file = e.file_name().to_string_lossy().to_string();
        let rest = file
            .strip_prefix(&prefix)
            .or_else(|| file.strip_prefix(&nested));
        let Some((pid, tree)) = rest.and_then(parse) else {
            continue;
        };
        if Path::new("/proc").join(pid.to_string()).exists() {
            continue; // a running hoist's
        }
        let path = e.path();
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

#[cfg(test)]
mod tests {
    #[test]
    fn sibling_names() {
        assert_eq!(super::parse("123-abc"), Some((123, true)));
        assert_eq!(super::parse("tmp-77-1f"), Some((77, false)));
        assert_eq!(super::parse("rootfs-9-0"), Some((9, true)));
        assert_eq!(super::parse("other-9-0"), None);
        assert_eq!(super::parse("tmp-x-0"), None);
        assert_eq!(super::parse("rootfs-9-0.hoist-9-1"), Some((9, true)));
        // What temp_beside makes, parse reads back.
        let me = std::process::id();
        for (kind, tree) in [(None, true), (Some("tmp"), false), (Some("rootfs"), true)] {
            let p = super::temp_beside(std::path::Path::new("/x/out"), kind).unwrap();
            let n = p.file_name().unwrap().to_str().unwrap();
            assert_eq!(
                super::parse(n.strip_prefix(".out.hoist-").unwrap()),
                Some((me, tree))
            );
        }
    }
}
