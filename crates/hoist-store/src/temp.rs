//! The one temp-file scheme of the cache, and of everything hoist builds
//! beside a target: a temp file (or directory) is named `….hoist-<rand>…`,
//! and its writer holds an exclusive `flock` on it for as long as it lives.
//! Whoever finds one can tell a live writer from a dead one by trying the
//! lock: a PID check cannot, because a service in a container is PID 1
//! after every restart, and its own leftovers would look alive forever.
//!
//! A new temp file exists for a moment before its writer has locked it. So
//! that no scanner takes that moment for a dead writer, creators hold a
//! shared `flock` on the parent directory while they create and lock, and
//! scanners ([`scan`], [`stale_beside`]) hold it exclusively while they
//! judge. No timing is involved.
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

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// A `flock` on a directory: shared while creating in it, exclusive while
/// scanning it. Released on drop.
struct DirGuard(File);

impl DirGuard {
    fn take(dir: &Path, exclusive: bool) -> io::Result<DirGuard> {
        let f = File::open(dir)?;
        if exclusive {
            f.lock()?;
        } else {
            f.lock_shared()?;
        }
        Ok(DirGuard(f))
    }
}

impl Drop for DirGuard {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

impl TempFile {
    /// Create `path` (which must not exist) and lock it.
    pub fn create(path: PathBuf) -> io::Result<TempFile> {
        let _creating = DirGuard::take(parent_of(&path), false)?;
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
        let _creating = DirGuard::take(parent_of(path), false)?;
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

/// The entries of `dir` whose writers are gone (stale) and those still
/// held (live), judged while no one can be half-way through creating one.
pub fn scan(dir: &Path) -> io::Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let _scanning = DirGuard::take(dir, true)?;
    let (mut stale, mut live) = (Vec::new(), Vec::new());
    for e in std::fs::read_dir(dir)?.flatten() {
        let p = e.path();
        if owner_is_gone(&p) {
            stale.push(p);
        } else {
            live.push(p);
        }
    }
    Ok((stale, live))
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
    let Ok(_scanning) = DirGuard::take(&parent, true) else {
        return Vec::new();
    };
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

    /// A scanner must never take a temp file that is being created for a
    /// dead writer's (it used to: between `create_new` and `flock`, GC could
    /// lock and delete a fresh file, and the writer's rename then failed).
    #[test]
    fn a_scan_racing_creators_never_removes_a_live_temp_file() {
        let d = tempfile::tempdir().unwrap();
        let tmp = d.path().join("tmp");
        let out = d.path().join("out");
        std::fs::create_dir(&tmp).unwrap();
        std::fs::create_dir(&out).unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for p in scan(&tmp).unwrap().0 {
                        let _ = std::fs::remove_file(p);
                    }
                }
            });
            let writers: Vec<_> = (0..3)
                .map(|w| {
                    let (tmp, out) = (&tmp, &out);
                    s.spawn(move || {
                        for i in 0..3000 {
                            let t = TempFile::create(tmp.join(format!("{w}-{i}.partial"))).unwrap();
                            t.persist(&out.join(format!("{w}-{i}")))
                                .unwrap_or_else(|e| panic!("writer {w}, file {i}: {e}"));
                        }
                    })
                })
                .collect();
            let all_ok = writers.into_iter().all(|w| w.join().is_ok());
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            assert!(all_ok, "a writer's temp file was taken from under it");
        });
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 9000);
    }

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
