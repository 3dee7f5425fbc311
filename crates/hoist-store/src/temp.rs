//! The one temp-file scheme of the cache, and of everything hoist builds
//! beside a target: a temp file (or directory) is named `….hoist-<rand>…`,
//! and its writer holds an exclusive `flock` on it for as long as it lives.
//! Whoever finds one can tell a live writer from a dead one by trying the
//! lock: a PID check cannot, because a service in a container is PID 1
//! after every restart, and its own leftovers would look alive forever.
//!
//! Durability: a file is fsynced before its rename, and its directory
//! after, so a rename that survived a power loss names complete bytes.

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::path::{Path, PathBuf};

/// A temp file whose writer is alive while this value is.
#[derive(Debug)]
pub struct TempFile {
    file: File,
    path: PathBuf,
    done: bool,
}

/// Where temp names get their randomness: never reused by another writer.
pub(crate) fn rand_tag() -> String {
    format!("{:016x}", fastrand::u64(..))
}

impl TempFile {
    /// Create `path` (which must not exist) and lock it.
    pub fn create(path: PathBuf) -> io::Result<TempFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        file.try_lock().map_err(|e| match e {
            TryLockError::Error(e) => e,
            TryLockError::WouldBlock => io::Error::other("new temp file is locked"),
        })?;
        Ok(TempFile {
            file,
            path,
            done: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }

    /// fsync, rename onto `dest`, fsync `dest`'s directory.
    pub fn persist(mut self, dest: &Path) -> io::Result<()> {
        self.file.sync_all()?;
        std::fs::rename(&self.path, dest)?;
        self.done = true;
        sync_parent(dest)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A temp directory's lock: an open descriptor of the directory itself,
/// flocked. The tree inside is the caller's.
#[derive(Debug)]
pub struct DirLock {
    _dir: File,
}

impl DirLock {
    /// Create the directory `path` and lock it.
    pub fn create(path: &Path) -> io::Result<DirLock> {
        std::fs::create_dir(path)?;
        Self::open(path).inspect_err(|_| {
            let _ = std::fs::remove_dir(path);
        })
    }

    /// Lock an existing directory (a temp tree renamed from another).
    pub fn open(path: &Path) -> io::Result<DirLock> {
        let dir = File::open(path)?;
        if let Err(e) = dir.try_lock() {
            return Err(match e {
                TryLockError::Error(e) => e,
                TryLockError::WouldBlock => io::Error::other("new temp dir is locked"),
            });
        }
        Ok(DirLock { _dir: dir })
    }
}

/// Whether the writer of a temp file or directory is gone: its lock can be
/// taken. (Taking it is harmless: the caller removes the path next.)
pub fn owner_is_gone(path: &Path) -> bool {
    match File::open(path) {
        Ok(f) => match f.try_lock() {
            Ok(()) => true,
            Err(TryLockError::WouldBlock) => false,
            Err(TryLockError::Error(_)) => false,
        },
        Err(_) => false,
    }
}

/// fsync the directory holding `path`, so a rename into it is durable.
pub fn sync_parent(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

/// `dir/.NAME.hoist-KIND-RAND`: where a run builds what it renames onto
/// `target` at the end. `None` if `target` names no file.
pub fn temp_name_beside(target: &Path, kind: &str) -> Option<PathBuf> {
    let name = target.file_name()?.to_string_lossy().to_string();
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Some(parent.join(format!(".{name}.hoist-{kind}-{}", rand_tag())))
}

/// The temp files and trees beside `target` whose writers are gone.
pub fn stale_beside(target: &Path) -> Vec<PathBuf> {
    let Some(name) = target.file_name().map(|n| n.to_string_lossy().to_string()) else {
        return Vec::new();
    };
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let prefix = format!(".{name}.hoist-");
    // A temp beside a temp (an export's unpack): `..NAME.hoist-…`.
    let nested = format!("..{name}.hoist-");
    let Ok(entries) = std::fs::read_dir(&parent) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().to_string();
            n.starts_with(&prefix) || n.starts_with(&nested)
        })
        .map(|e| e.path())
        .filter(|p| owner_is_gone(p))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_writer_is_told_from_a_dead_one() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("out.ext4");
        let p = temp_name_beside(&target, "tmp").unwrap();
        let t = TempFile::create(p.clone()).unwrap();
        assert!(!owner_is_gone(&p), "held by us");
        assert!(stale_beside(&target).is_empty());
        std::mem::forget(t); // a killed writer: the file stays, its fd would close
                             // The forgotten File still holds the lock in this process; a real
                             // kill closes it. Reopen-and-lock from a new description proves the
                             // check uses the lock, not the name.
        let q = temp_name_beside(&target, "tree").unwrap();
        let lock = DirLock::create(&q).unwrap();
        assert!(!owner_is_gone(&q));
        drop(lock);
        assert!(owner_is_gone(&q));
        assert_eq!(stale_beside(&target), vec![q]);
    }
}
