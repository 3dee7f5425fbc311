//! Disks and tags on the filesystem, under `DATA/images`: where an image's
//! disk lives, the tag symlinks beside it, whether a ready disk is really
//! there, removing an image's files, and the sweep GC runs.
//!
//! Every path the state names is relative to the data directory, and every
//! comparison here is made on those relative paths: a moved data directory,
//! or one reached through a symlink, is the same data directory.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use hoist::{Digest, Format, Reference};

use crate::db::ImageRow;

pub(crate) fn format_name(f: Format) -> &'static str {
    match f {
        Format::Ext4 => "ext4",
        Format::Erofs { .. } => "erofs",
        Format::Cpio { gzip: false } => "cpio",
        Format::Cpio { gzip: true } => "cpio.gz",
    }
}

/// A disk found on the filesystem, for records rebuilt from what is there.
#[derive(Debug)]
pub(crate) struct FoundDisk {
    pub repo: String,
    pub digest: Digest,
    pub format: String,
    pub size: u64,
    /// Tags whose link points at this disk's directory.
    pub tags: Vec<String>,
}

#[derive(Debug, Default)]
pub(crate) struct Swept {
    pub files: Vec<PathBuf>,
    pub bytes: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct Disks {
    data_dir: PathBuf,
    /// With shared layers: whether the layer files are lz4.
    layers: Option<bool>,
}

impl Disks {
    /// `data_dir` is made absolute (not canonical: a symlinked data
    /// directory stays as the user named it).
    pub fn new(data_dir: &Path) -> std::io::Result<Disks> {
        Ok(Disks {
            data_dir: std::path::absolute(data_dir)?,
            layers: None,
        })
    }

    /// Disks are META images over layer files in `layers/` (lz4 or not).
    pub fn with_shared_layers(mut self, lz4: bool) -> Disks {
        self.layers = Some(lz4);
        self
    }

    pub fn shared_layers(&self) -> bool {
        self.layers.is_some()
    }

    pub fn layers_dir(&self) -> PathBuf {
        self.data_dir.join("layers")
    }

    /// A META disk's devices, lowest layer first: the layer files its
    /// device table names. None without shared layers, or when the disk
    /// is not a readable META.
    pub fn devices(&self, row: &ImageRow) -> Option<Vec<PathBuf>> {
        let lz4 = self.layers?;
        // Names only: nothing is created on a GET.
        hoist::meta_devices(&self.abs(&row.disk_path))
            .ok()?
            .iter()
            .map(|t| {
                let d: Digest = t.parse().ok()?;
                Some(self.layers_dir().join(hoist::LayerDir::name(&d, lz4).ok()?))
            })
            .collect()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn images_dir(&self) -> PathBuf {
        self.data_dir.join("images")
    }

    pub fn abs(&self, rel: &str) -> PathBuf {
        self.data_dir.join(rel)
    }

    /// The ready disk is there, whole: a regular file of the recorded size.
    pub fn present(&self, row: &ImageRow) -> bool {
        let Some(size) = row.size_bytes else {
            return false;
        };
        let disk = std::fs::symlink_metadata(self.abs(&row.disk_path))
            .is_ok_and(|m| m.file_type().is_file() && m.len() == size);
        // A META needs its layer files, each with its record.
        disk && (self.layers.is_none()
            || self.devices(row).is_some_and(|ds| {
                ds.iter()
                    .all(|d| d.is_file() && PathBuf::from(format!("{}.rec", d.display())).is_file())
            }))
    }

    /// `images/<repo>/<tag>` → the digest's directory, made when the image
    /// is ready (the Go original's layout), replaced atomically. Targets are
    /// relative, so links survive a move of the data directory.
    pub fn link_tags(&self, row: &ImageRow, names: &[String]) {
        for n in names {
            let Ok(r) = n.parse::<Reference>() else {
                continue;
            };
            let Some(tag) = r.tag() else { continue };
            let repo = r.name();
            let dir = self.images_dir().join(&repo);
            if std::fs::create_dir_all(&dir).is_err() {
                continue;
            }
            let target = if repo == row.repo {
                PathBuf::from(row.digest.hex())
            } else {
                let up = "../".repeat(repo.split('/').count());
                PathBuf::from(format!("{up}{}/{}", row.repo, row.digest.hex()))
            };
            let tmp = dir.join(format!(".{tag}.hoist-link-{:016x}", fastrand::u64(..)));
            if std::os::unix::fs::symlink(&target, &tmp).is_ok()
                && std::fs::rename(&tmp, dir.join(tag)).is_err()
            {
                let _ = std::fs::remove_file(&tmp);
            }
        }
    }

    pub fn remove_tag_link(&self, r: &Reference) {
        if let Some(tag) = r.tag() {
            let link = self.images_dir().join(r.name()).join(tag);
            if std::fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink()) {
                let _ = std::fs::remove_file(&link);
            }
        }
    }

    /// The disk, the temps a dead build left beside it, and its directory.
    pub fn remove_image_files(&self, row: &ImageRow) {
        let disk = self.abs(&row.disk_path);
        let _ = std::fs::remove_file(&disk);
        for stale in hoist::stale_beside(&disk) {
            let _ = std::fs::remove_file(&stale);
        }
        if let Some(dir) = disk.parent() {
            let _ = std::fs::remove_dir(dir);
        }
    }

    /// Temp files under `images/` whose writers are gone (a killed build's).
    pub fn stale_temps(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        walk(&self.images_dir(), &mut |p, t| {
            if t.is_file() && is_temp(p) && hoist::temp_owner_is_gone(p) {
                out.push(p.to_path_buf());
            }
        });
        out
    }

    /// Remove what no record names: disks, dead temps, dangling tag links,
    /// empty directories. `keep` holds relative disk paths; directories of
    /// `busy` digests are not touched (a build or cleanup owns them).
    pub fn sweep(&self, keep: &HashSet<String>, busy: &HashSet<String>, dry_run: bool) -> Swept {
        let mut swept = Swept::default();
        let root = self.images_dir();
        let keep_dirs: HashSet<PathBuf> = keep
            .iter()
            .filter_map(|k| Path::new(k).parent().map(Path::to_path_buf))
            .collect();
        let mut dirs = Vec::new();
        walk(&root, &mut |p, t| {
            let Ok(rel) = p.strip_prefix(&self.data_dir) else {
                return;
            };
            if rel
                .components()
                .any(|c| busy.contains(&*c.as_os_str().to_string_lossy()))
            {
                return;
            }
            if t.is_dir() {
                dirs.push(p.to_path_buf());
            } else if t.is_symlink() {
                if std::fs::metadata(p).is_err() {
                    if !dry_run {
                        let _ = std::fs::remove_file(p);
                    }
                    swept.files.push(p.to_path_buf());
                }
            } else if !keep.contains(&*rel.to_string_lossy()) {
                if is_temp(p) && !hoist::temp_owner_is_gone(p) {
                    return; // a live build's
                }
                swept.bytes += std::fs::symlink_metadata(p).map(|m| m.len()).unwrap_or(0);
                if !dry_run {
                    let _ = std::fs::remove_file(p);
                }
                swept.files.push(p.to_path_buf());
            }
        });
        if !dry_run {
            // Deepest first; a directory a record names (its build may be
            // about to start) stays even when empty.
            dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
            for d in dirs {
                let named = d
                    .strip_prefix(&self.data_dir)
                    .is_ok_and(|rel| keep_dirs.iter().any(|k| k.starts_with(rel)));
                if !named {
                    let _ = std::fs::remove_dir(&d);
                }
            }
        }
        swept
    }

    /// Every complete disk under `images/` (`<repo>/<hex>/rootfs.<fmt>`),
    /// with the tags that link to it: what a lost database is rebuilt from.
    pub fn scan(&self) -> Vec<FoundDisk> {
        let root = self.images_dir();
        let mut found: Vec<FoundDisk> = Vec::new();
        let mut links: Vec<(String, PathBuf)> = Vec::new();
        walk(&root, &mut |p, t| {
            let Ok(rel) = p.strip_prefix(&root) else {
                return;
            };
            if t.is_symlink() {
                if let (Some(parent), Some(tag), Ok(target)) =
                    (rel.parent(), p.file_name(), std::fs::canonicalize(p))
                {
                    links.push((
                        format!("{}:{}", parent.display(), tag.to_string_lossy()),
                        target,
                    ));
                }
                return;
            }
            if !t.is_file() || is_temp(p) {
                return;
            }
            let name = p.file_name().map(|n| n.to_string_lossy().to_string());
            let Some(format) = name.as_deref().and_then(|n| n.strip_prefix("rootfs.")) else {
                return;
            };
            let hex_dir = rel.parent();
            let hex = hex_dir
                .and_then(Path::file_name)
                .map(|h| h.to_string_lossy());
            let repo = hex_dir.and_then(Path::parent);
            let (Some(hex), Some(repo)) = (hex, repo) else {
                return;
            };
            let Ok(digest) = format!("sha256:{hex}").parse::<Digest>() else {
                return;
            };
            if repo.as_os_str().is_empty() {
                return;
            }
            found.push(FoundDisk {
                repo: repo.display().to_string(),
                digest,
                format: format.to_string(),
                size: std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
                tags: Vec::new(),
            });
        });
        for f in &mut found {
            let dir = root.join(&f.repo).join(f.digest.hex());
            let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
            f.tags = links
                .iter()
                .filter(|(_, t)| *t == dir)
                .map(|(n, _)| n.clone())
                .collect();
        }
        found
    }
}

/// hoist's temp naming: `.NAME.hoist-KIND-RAND`.
fn is_temp(p: &Path) -> bool {
    p.file_name()
        .is_some_and(|n| n.to_string_lossy().contains(".hoist-"))
}

/// Depth-first over `dir`, never following symlinks; `f` sees every entry
/// with its own type (children before nothing: order is not promised).
fn walk(dir: &Path, f: &mut dyn FnMut(&Path, std::fs::FileType)) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(t) = e.file_type() else { continue };
        let p = e.path();
        f(&p, t);
        if t.is_dir() {
            walk(&p, f);
        }
    }
}

pub(crate) fn dir_bytes(p: &Path) -> u64 {
    let mut n = 0;
    walk(p, &mut |p, t| {
        if t.is_file() {
            n += std::fs::symlink_metadata(p).map(|m| m.len()).unwrap_or(0);
        }
    });
    n
}
