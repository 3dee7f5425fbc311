//! Disks and tags on the filesystem: where an image's disk lives, the tag
//! symlinks beside it, removing an image's files, and the sweep that GC
//! runs over `images/`.

use std::path::{Path, PathBuf};

use hoist::{Digest, Format, ImageSource, Reference};

use crate::service::Service;
use crate::state::ImageRow;

pub(crate) fn format_name(f: Format) -> &'static str {
    match f {
        Format::Ext4 => "ext4",
        Format::Erofs { .. } => "erofs",
        Format::Cpio { gzip: false } => "cpio",
        Format::Cpio { gzip: true } => "cpio.gz",
    }
}

impl Service {
    pub(crate) fn disk_path(&self, repo: &str, digest: &str) -> PathBuf {
        let hex = digest.split_once(':').map_or(digest, |(_, h)| h);
        self.opts
            .data_dir
            .join("images")
            .join(repo)
            .join(hex)
            .join(format!("rootfs.{}", format_name(self.opts.format)))
    }

    pub(crate) fn remove_tag_link(&self, r: &Reference) {
        if let Some(tag) = r.tag() {
            let link = self.opts.data_dir.join("images").join(r.name()).join(tag);
            if std::fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink()) {
                let _ = std::fs::remove_file(&link);
            }
        }
    }

    /// The disk, its directory, and the image's cache entry (its blobs go
    /// at the next GC unless another image shares them).
    pub(crate) fn remove_files(&self, row: &ImageRow) {
        if let Some(p) = &row.disk_path {
            let dir = Path::new(p).parent().map(Path::to_path_buf);
            let _ = std::fs::remove_file(p);
            if let Some(dir) = dir {
                for stale in hoist::stale_beside(Path::new(p)) {
                    let _ = std::fs::remove_file(&stale);
                }
                let _ = std::fs::remove_dir(&dir);
            }
        }
        if let Ok(d) = row.digest.parse::<Digest>() {
            if let Ok(r) = format!("{}@{d}", row.repo).parse::<Reference>() {
                let _ = self.client.remove(&[ImageSource::Registry(r)]);
            }
        }
    }

    /// `images/<repo>/<tag>` → `<digest hex>`, made when the image is ready
    /// (the Go original's layout), replaced atomically.
    pub(crate) fn link_tags(&self, row: &ImageRow) {
        let hex = row.digest.split_once(':').map_or(&*row.digest, |(_, h)| h);
        let names = self.db().names_of(&row.digest).unwrap_or_default();
        for n in names {
            let Ok(r) = n.parse::<Reference>() else {
                continue;
            };
            let Some(tag) = r.tag() else { continue };
            let dir = self.opts.data_dir.join("images").join(r.name());
            let _ = std::fs::create_dir_all(&dir);
            let tmp = dir.join(format!(".{tag}.hoist-link-{:x}", std::process::id()));
            let _ = std::fs::remove_file(&tmp);
            let target = if r.name() == row.repo {
                PathBuf::from(hex)
            } else {
                self.opts.data_dir.join("images").join(&row.repo).join(hex)
            };
            if std::os::unix::fs::symlink(&target, &tmp).is_ok() {
                let _ = std::fs::rename(&tmp, dir.join(tag));
            }
        }
    }
}

pub(crate) fn dir_bytes(p: &Path) -> u64 {
    let mut n = 0;
    let mut todo = vec![p.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => todo.push(e.path()),
                Ok(t) if t.is_file() => n += e.metadata().map(|m| m.len()).unwrap_or(0),
                _ => {}
            }
        }
    }
    n
}

pub(crate) fn sweep(
    dir: &Path,
    keep: &std::collections::HashSet<PathBuf>,
    dry_run: bool,
    removed: &mut Vec<PathBuf>,
    bytes: &mut u64,
) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        let Ok(t) = e.file_type() else { continue };
        if t.is_dir() {
            sweep(&p, keep, dry_run, removed, bytes);
            // A directory a record names (its build may be about to start)
            // stays even when empty.
            let named = keep.iter().any(|k| k.starts_with(&p));
            if !named && !dry_run {
                let _ = std::fs::remove_dir(&p);
            }
        } else if t.is_symlink() {
            if std::fs::metadata(&p).is_err() {
                if !dry_run {
                    let _ = std::fs::remove_file(&p);
                }
                removed.push(p);
            }
        } else if !keep.contains(&p) {
            let name = e.file_name().to_string_lossy().to_string();
            let temp = name.contains(".hoist-");
            if temp && !hoist::temp_owner_is_gone(&p) {
                continue; // a running build's
            }
            *bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
            if !dry_run {
                let _ = std::fs::remove_file(&p);
            }
            removed.push(p);
        }
    }
}
