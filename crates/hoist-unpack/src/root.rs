//! Every filesystem change goes through here, relative to one directory fd.
//! Parents are opened with `openat2(RESOLVE_IN_ROOT)`, so `..` and symlinks
//! (absolute ones included) resolve inside the root; the final component is
//! then handled with `*at` calls that never follow it (`O_NOFOLLOW`,
//! `O_EXCL`, `AT_SYMLINK_NOFOLLOW`, `unlinkat`, `linkat` without FOLLOW).
//! No path is ever canonicalised in user space.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{self, AtFlags, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use crate::error::{errno, UnpackError};
use crate::path;

/// Bounded: an fd per directory recently written into.
const CACHE_MAX: usize = 512;

pub struct Root {
    fd: OwnedFd,
    cache: HashMap<Vec<u8>, OwnedFd>,
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::CLOEXEC);

fn resolve() -> ResolveFlags {
    ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS
}

impl Root {
    pub fn open(path: &Path) -> Result<Root, UnpackError> {
        let fd = fs::open(path, DIR_FLAGS | OFlags::NOFOLLOW, Mode::empty()).map_err(|e| {
            UnpackError::Io {
                op: "open root",
                path: path.display().to_string(),
                source: e.into(),
            }
        })?;
        // Probe once: without openat2 nothing can be done safely.
        match fs::openat2(&fd, ".", DIR_FLAGS, Mode::empty(), resolve()) {
            Ok(_) => {}
            Err(Errno::NOSYS) => return Err(UnpackError::NoOpenat2),
            Err(e) => return Err(errno("open root", b"")(e)),
        }
        Ok(Root {
            fd,
            cache: HashMap::new(),
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Forget cached directory fds: after a removal or replacement a cached
    /// fd could name a directory no longer in the tree.
    pub fn invalidate(&mut self) {
        self.cache.clear();
    }

    /// Open an existing directory (resolved in the root), no creation.
    pub fn open_dir(&self, rel: &[u8]) -> Result<OwnedFd, Errno> {
        if rel.is_empty() {
            return fs::openat(&self.fd, ".", DIR_FLAGS, Mode::empty());
        }
        fs::openat2(&self.fd, rel, DIR_FLAGS, Mode::empty(), resolve())
    }

    /// The directory `rel`, created (0755) with any missing parents.
    /// Returns whether anything was created, and the created paths.
    pub fn dir(
        &mut self,
        rel: &[u8],
        created: &mut Vec<Vec<u8>>,
    ) -> Result<BorrowedFd<'_>, UnpackError> {
        if !self.cache.contains_key(rel) {
            let fd = match self.open_dir(rel) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => self.make_dirs(rel, created)?,
                Err(e) => return Err(errno("open directory", rel)(e)),
            };
            if self.cache.len() >= CACHE_MAX {
                self.cache.clear();
            }
            self.cache.insert(rel.to_vec(), fd);
        }
        Ok(self.cache[rel].as_fd())
    }

    fn make_dirs(&self, rel: &[u8], created: &mut Vec<Vec<u8>>) -> Result<OwnedFd, UnpackError> {
        self.make_dirs_at(rel, created, 0)
    }

    /// Create `rel` one component at a time. A dangling symlink in the way
    /// (`var/run -> /run` before `/run` exists) gets its target created,
    /// resolved inside the root like everything else, as umoci does.
    fn make_dirs_at(
        &self,
        rel: &[u8],
        created: &mut Vec<Vec<u8>>,
        hops: u32,
    ) -> Result<OwnedFd, UnpackError> {
        if hops > 40 {
            return Err(errno("create directory", rel)(Errno::LOOP));
        }
        let mut cur =
            fs::openat(&self.fd, ".", DIR_FLAGS, Mode::empty()).map_err(errno("open root", b""))?;
        let mut prefix: Vec<u8> = Vec::new();
        for comp in rel.split(|&b| b == b'/') {
            let next = path::join(&prefix, comp);
            let fd = match fs::openat2(&self.fd, &next[..], DIR_FLAGS, Mode::empty(), resolve()) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => match fs::mkdirat(&cur, comp, Mode::from_raw_mode(0o755)) {
                    Ok(()) => {
                        created.push(next.clone());
                        fs::openat(&cur, comp, DIR_FLAGS | OFlags::NOFOLLOW, Mode::empty())
                            .map_err(errno("open directory", &next))?
                    }
                    Err(Errno::EXIST) => {
                        let target = fs::readlinkat(&cur, comp, Vec::new())
                            .map_err(errno("create directory", &next))?;
                        let target = target.as_bytes();
                        let resolved = if target.starts_with(b"/") {
                            path::clean(target)
                        } else {
                            path::clean(&path::join(&prefix, target))
                        };
                        self.make_dirs_at(&resolved, created, hops + 1)?
                    }
                    Err(e) => return Err(errno("create directory", &next)(e)),
                },
                Err(e) => return Err(errno("open directory", &next)(e)),
            };
            cur = fd;
            prefix = next;
        }
        Ok(cur)
    }
}

/// What is at `name` in `dir`, without following it.
pub fn lstat(dir: BorrowedFd<'_>, name: &[u8]) -> Result<Option<fs::FileType>, Errno> {
    match fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(fs::FileType::from_raw_mode(st.st_mode))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Remove `name` from `dir`, recursively if it is a directory, never
/// following a symlink. Directories that deny the owner write or search
/// (a 0555 or 0000 dir, rootless) are opened up first.
pub fn remove_all(dir: BorrowedFd<'_>, name: &[u8]) -> Result<(), Errno> {
    match fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) => return Ok(()),
        Err(Errno::NOENT) => return Ok(()),
        Err(Errno::ISDIR) | Err(Errno::PERM) => {}
        Err(e) => return Err(e),
    }
    let sub = match fs::openat(dir, name, DIR_FLAGS | OFlags::NOFOLLOW, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ACCESS) => {
            fs::chmodat(dir, name, Mode::from_raw_mode(0o700), AtFlags::empty())?;
            fs::openat(dir, name, DIR_FLAGS | OFlags::NOFOLLOW, Mode::empty())?
        }
        Err(e) => return Err(e),
    };
    let _ = fs::fchmod(&sub, Mode::from_raw_mode(0o700));
    let names: Vec<Vec<u8>> = {
        let mut d = fs::Dir::read_from(&sub)?;
        let mut v = Vec::new();
        while let Some(ent) = d.read() {
            let ent = ent?;
            let n = ent.file_name().to_bytes();
            if n != b"." && n != b".." {
                v.push(n.to_vec());
            }
        }
        v
    };
    for n in names {
        remove_all(sub.as_fd(), &n)?;
    }
    fs::unlinkat(dir, name, AtFlags::REMOVEDIR)
}

/// Remove a whole tree given by path (used to clean up a failed unpack).
pub fn remove_tree(path: &Path) -> std::io::Result<()> {
    let parent = path.parent().unwrap_or(Path::new("/"));
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("no file name"))?;
    let pfd = fs::open(parent, DIR_FLAGS, Mode::empty())?;
    remove_all(pfd.as_fd(), name.as_encoded_bytes()).map_err(Into::into)
}
