//! Applying layer tar streams in order under a root: exact OCI layer
//! semantics (whiteouts, opaque directories, replacement, hardlinks), with
//! ownership preserved or mapped to the caller, and the true metadata of
//! every path recorded.

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{self, AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;

use crate::error::{errno, io, show, UnpackError};
use crate::meta::{EntryMeta, EntryType, TreeMeta};
use crate::path::{self, Kind};
use crate::root::{self, Root};

/// Whose uid/gid files get on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// The tar headers' uid and gid (needs root).
    Preserve,
    /// Everything belongs to the caller (the container's root becomes the
    /// caller; no chown is attempted). The true owners are in [`TreeMeta`].
    Caller,
}

impl Ownership {
    /// `Preserve` as root, `Caller` otherwise.
    pub fn default_for_process() -> Ownership {
        if rustix::process::geteuid().is_root() {
            Ownership::Preserve
        } else {
            Ownership::Caller
        }
    }
}

#[derive(Debug, Clone)]
pub struct LayerOptions {
    pub ownership: Ownership,
    /// Cancellation and the entry budget, checked before every entry.
    pub guard: crate::Guard,
}

impl Default for LayerOptions {
    fn default() -> Self {
        LayerOptions {
            ownership: Ownership::default_for_process(),
            guard: crate::Guard::default(),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct LayerStats {
    pub entries: u64,
    pub whiteouts: u64,
    pub bytes: u64,
}

/// Directory metadata is applied after every layer is in: its mode could
/// otherwise deny writing its children (0555), and its mtime would be
/// changed by them.
struct PendingDir {
    meta: EntryMeta,
    xattrs: Vec<(String, Vec<u8>)>,
}

pub struct Unpacker {
    root: Root,
    opts: LayerOptions,
    dirs: BTreeMap<Vec<u8>, PendingDir>,
    tree: TreeMeta,
    /// Paths this layer created: whiteouts and opaque markers only hide
    /// what lower layers made.
    added: HashSet<Vec<u8>>,
    buf: Vec<u8>,
    /// Who new files belong to without a chown: this process. While
    /// layers are applied no directory has its setgid bit yet (directory
    /// modes come last), so a new file's group is ours too.
    me: (u64, u64),
    /// The umask when a file's mode, given at creation, is known to come
    /// out exactly (no default ACL on the root to inherit); `None`: every
    /// file is made 0600 and chmodded, as always.
    exact_umask: Option<u32>,
}

/// This process's umask, read without setting it (`umask(2)` can only be
/// read by changing it, which would race with other threads' creates).
fn current_umask() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let v = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(v.trim(), 8).ok()
}

pub(crate) struct Header {
    pub(crate) meta: EntryMeta,
    pub(crate) xattrs: Vec<(String, Vec<u8>)>,
}

pub(crate) fn read_header<R: Read>(
    e: &mut tar::Entry<'_, R>,
    kind: EntryType,
) -> Result<Header, UnpackError> {
    let shown = show(&e.path_bytes());
    let bad = |what: &str, err: std::io::Error| {
        UnpackError::InvalidArchive(format!("{shown}: bad {what}: {err}"))
    };
    let h = e.header();
    // An all-NUL or blank numeric field reads as 0, as Go's archive/tar
    // (and so umoci) reads it; anything else unparsable is an error.
    let blank = |f: &[u8]| f.iter().all(|&b| b == 0 || b == b' ');
    let old = h.as_old();
    let num = |what: &str, v: std::io::Result<u64>, raw: &[u8]| match v {
        Ok(v) => Ok(v),
        Err(_) if blank(raw) => Ok(0),
        Err(x) => Err(bad(what, x)),
    };
    let mut meta = EntryMeta {
        kind,
        mode: num("mode", h.mode().map(u64::from), &old.mode)? as u32 & 0o7777,
        uid: num("uid", h.uid(), &old.uid)?,
        gid: num("gid", h.gid(), &old.gid)?,
        major: 0,
        minor: 0,
        mtime: num("mtime", h.mtime(), &old.mtime)? as i64,
    };
    if matches!(kind, EntryType::Char | EntryType::Block) {
        meta.major = h.device_major().ok().flatten().unwrap_or(0);
        meta.minor = h.device_minor().ok().flatten().unwrap_or(0);
    }
    let mut xattrs = Vec::new();
    if let Some(pax) = e.pax_extensions().map_err(|x| bad("pax header", x))? {
        for ext in pax {
            let ext = ext.map_err(|x| bad("pax record", x))?;
            let Ok(key) = ext.key() else { continue };
            let val = ext.value_bytes();
            let num = || {
                std::str::from_utf8(val)
                    .ok()
                    .and_then(|s| s.split('.').next()?.parse::<i64>().ok())
            };
            match key {
                "uid" => meta.uid = num().unwrap_or(meta.uid as i64) as u64,
                "gid" => meta.gid = num().unwrap_or(meta.gid as i64) as u64,
                "mtime" => meta.mtime = num().unwrap_or(meta.mtime),
                k => {
                    // An empty value deletes the keyword in pax; umoci and
                    // containers/storage set nothing either.
                    if let Some(name) = k.strip_prefix("SCHILY.xattr.") {
                        if !val.is_empty() {
                            xattrs.push((name.to_string(), val.to_vec()));
                        }
                    }
                }
            }
        }
    }
    Ok(Header { meta, xattrs })
}

pub(crate) enum Entry {
    Kind(EntryType),
    Hardlink,
    /// A global header, or a type a rootfs has no use for.
    Skip,
}

/// What a tar entry makes; an entry naming the root must be a directory.
pub(crate) fn entry_kind<R: Read>(e: &tar::Entry<'_, R>, rel: &[u8]) -> Result<Entry, UnpackError> {
    use tar::EntryType as T;
    let kind = match e.header().entry_type() {
        T::Regular | T::Continuous | T::GNUSparse => EntryType::File,
        T::Directory => EntryType::Dir,
        T::Symlink => EntryType::Symlink,
        T::Link => return Ok(Entry::Hardlink),
        T::Char => EntryType::Char,
        T::Block => EntryType::Block,
        T::Fifo => EntryType::Fifo,
        T::XGlobalHeader => return Ok(Entry::Skip),
        other => {
            tracing::debug!("{}: skipping tar entry type {other:?}", show(rel));
            return Ok(Entry::Skip);
        }
    };
    if rel.is_empty() && kind != EntryType::Dir {
        return Err(UnpackError::InvalidArchive(format!(
            "a {kind:?} entry names the root directory"
        )));
    }
    Ok(Entry::Kind(kind))
}

fn ts(mtime: i64) -> Timestamps {
    let t = Timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

fn id(v: u64, rel: &[u8]) -> Result<u32, UnpackError> {
    u32::try_from(v)
        .map_err(|_| UnpackError::InvalidArchive(format!("{}: id {v} out of range", show(rel))))
}

/// chown of the entry itself (never a symlink's target).
fn chown_at(
    dir: BorrowedFd<'_>,
    name: &[u8],
    meta: &EntryMeta,
    rel: &[u8],
) -> Result<(), UnpackError> {
    let (u, g) = (id(meta.uid, rel)?, id(meta.gid, rel)?);
    fs::chownat(
        dir,
        name,
        Some(fs::Uid::from_raw(u)),
        Some(fs::Gid::from_raw(g)),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(errno("chown", rel))
}

fn set_xattrs(fd: BorrowedFd<'_>, rel: &[u8], xattrs: &[(String, Vec<u8>)]) {
    for (k, v) in xattrs {
        if let Err(e) = fs::fsetxattr(fd, k.as_str(), v, fs::XattrFlags::empty()) {
            tracing::debug!("{}: xattr {k} not set: {e}", show(rel));
        }
    }
}

impl Unpacker {
    /// Start unpacking into `root`, an existing (empty) directory.
    pub fn new(root: &Path, opts: LayerOptions) -> Result<Unpacker, UnpackError> {
        let r = Root::open(root)?;
        let mut tree = TreeMeta::default();
        tree.entries.insert(Vec::new(), EntryMeta::implicit_dir());
        fs::fchmod(r.fd(), Mode::from_raw_mode(0o755)).map_err(errno("chmod", b""))?;
        // A default ACL (inherited from where the root was made) decides
        // new files' modes instead of the umask.
        let acl = fs::fgetxattr(r.fd(), "system.posix_acl_default", &mut [0u8; 0]);
        let exact_umask = current_umask().filter(|_| matches!(acl, Err(Errno::NODATA)));
        Ok(Unpacker {
            exact_umask,
            root: r,
            opts,
            dirs: BTreeMap::new(),
            tree,
            added: HashSet::new(),
            buf: vec![0u8; 256 << 10],
            me: (
                rustix::process::geteuid().as_raw() as u64,
                rustix::process::getegid().as_raw() as u64,
            ),
        })
    }

    /// Apply one uncompressed layer tar stream. The stream is read up to the
    /// end-of-archive marker; the caller drains the rest before trusting a
    /// digest of it.
    pub fn apply_layer<R: Read>(&mut self, reader: &mut R) -> Result<LayerStats, UnpackError> {
        self.added.clear();
        let mut stats = LayerStats::default();
        let mut ar = tar::Archive::new(reader);
        for entry in ar.entries().map_err(UnpackError::Read)? {
            self.opts.guard.entry()?;
            let mut e = entry.map_err(|x| UnpackError::InvalidArchive(x.to_string()))?;
            stats.entries += 1;
            stats.bytes += e.size();
            match path::classify(&e.path_bytes())? {
                Kind::Opaque(dir) => {
                    stats.whiteouts += 1;
                    self.opaque(&dir)?;
                }
                Kind::Whiteout(target) => {
                    stats.whiteouts += 1;
                    self.whiteout(&target)?;
                }
                Kind::Normal(rel) => self.entry(&mut e, rel)?,
            }
        }
        Ok(stats)
    }

    fn parent<'a>(
        root: &'a mut Root,
        added: &mut HashSet<Vec<u8>>,
        tree: &mut TreeMeta,
        parent: &[u8],
    ) -> Result<BorrowedFd<'a>, UnpackError> {
        let mut created = Vec::new();
        let fd = root.dir(parent, &mut created)?;
        for c in created {
            tree.entries
                .entry(c.clone())
                .or_insert_with(EntryMeta::implicit_dir);
            added.insert(c);
        }
        Ok(fd)
    }

    /// Forget what was at `rel` (a removal or replacement).
    fn forget(&mut self, rel: &[u8]) {
        self.tree.remove_tree(rel);
        path::remove_under(&mut self.dirs, rel);
    }

    fn whiteout(&mut self, target: &[u8]) -> Result<(), UnpackError> {
        if self.added.contains(target) || target.is_empty() {
            return Ok(());
        }
        let (parent, name) = path::split(target);
        let pfd = match self.root.open_dir(parent) {
            Ok(fd) => fd,
            Err(Errno::NOENT) | Err(Errno::NOTDIR) => return Ok(()),
            Err(e) => return Err(errno("open directory", parent)(e)),
        };
        root::remove_all(pfd.as_fd(), name).map_err(errno("remove", target))?;
        self.root.invalidate();
        self.forget(target);
        Ok(())
    }

    fn opaque(&mut self, dir: &[u8]) -> Result<(), UnpackError> {
        let dfd = match self.root.open_dir(dir) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(()),
            Err(e) => return Err(errno("open directory", dir)(e)),
        };
        let mut names = Vec::new();
        let mut d = fs::Dir::read_from(&dfd).map_err(errno("read directory", dir))?;
        while let Some(ent) = d.read() {
            let ent = ent.map_err(errno("read directory", dir))?;
            let n = ent.file_name().to_bytes();
            if n != b"." && n != b".." {
                names.push(n.to_vec());
            }
        }
        for n in names {
            let full = path::join(dir, &n);
            if !self.added.contains(&full) {
                root::remove_all(dfd.as_fd(), &n).map_err(errno("remove", &full))?;
                self.forget(&full);
            }
        }
        self.root.invalidate();
        Ok(())
    }

    /// Make room for a new entry at `name`: remove whatever is there unless
    /// both are directories. Returns true if a directory stays.
    fn clear_for(&mut self, rel: &[u8], new_is_dir: bool) -> Result<bool, UnpackError> {
        let (parent, name) = path::split(rel);
        let pfd = Self::parent(&mut self.root, &mut self.added, &mut self.tree, parent)?;
        match root::lstat(pfd, name).map_err(errno("stat", rel))? {
            None => Ok(false),
            Some(FileType::Directory) if new_is_dir => Ok(true),
            Some(t) => {
                root::remove_all(pfd, name).map_err(errno("remove", rel))?;
                if t == FileType::Directory || t == FileType::Symlink {
                    self.root.invalidate();
                }
                self.forget(rel);
                Ok(false)
            }
        }
    }

    fn entry<R: Read>(
        &mut self,
        e: &mut tar::Entry<'_, R>,
        rel: Vec<u8>,
    ) -> Result<(), UnpackError> {
        let kind = match entry_kind(e, &rel)? {
            Entry::Hardlink => return self.hardlink(e, rel),
            Entry::Skip => return Ok(()),
            Entry::Kind(k) => k,
        };
        let h = read_header(e, kind)?;
        let xattrs = h.xattrs.clone();
        if rel.is_empty() {
            self.record_xattrs(&rel, xattrs);
            self.tree.entries.insert(Vec::new(), h.meta.clone());
            self.dirs.insert(
                Vec::new(),
                PendingDir {
                    meta: h.meta,
                    xattrs: h.xattrs,
                },
            );
            return Ok(());
        }
        let preserve = self.opts.ownership == Ownership::Preserve;
        let (parent, name) = path::split(&rel);
        match kind {
            EntryType::Dir => {
                // mkdir first: most directories are new, and an lstat
                // before each was 12,000 calls on rig/big that found
                // nothing. Only what is already there needs a look.
                let pfd = Self::parent(&mut self.root, &mut self.added, &mut self.tree, parent)?;
                match fs::mkdirat(pfd, name, Mode::from_raw_mode(0o755)) {
                    Ok(()) => {}
                    Err(Errno::EXIST) => {
                        if !self.clear_for(&rel, true)? {
                            let pfd = Self::parent(
                                &mut self.root,
                                &mut self.added,
                                &mut self.tree,
                                parent,
                            )?;
                            fs::mkdirat(pfd, name, Mode::from_raw_mode(0o755))
                                .map_err(errno("create directory", &rel))?;
                        }
                    }
                    Err(e) => return Err(errno("create directory", &rel)(e)),
                }
                self.dirs.insert(
                    rel.clone(),
                    PendingDir {
                        meta: h.meta.clone(),
                        xattrs: h.xattrs,
                    },
                );
            }
            EntryType::File => {
                let fd = self.create_file(&rel, self.created_mode(&h))?;
                let mut file = std::fs::File::from(fd);
                loop {
                    let n = e.read(&mut self.buf).map_err(UnpackError::Read)?;
                    if n == 0 {
                        break;
                    }
                    file.write_all(&self.buf[..n]).map_err(io("write", &rel))?;
                }
                self.finish_fd(file.as_fd(), &rel, &h, preserve)?;
            }
            EntryType::Symlink => {
                let target = e
                    .link_name_bytes()
                    .ok_or_else(|| {
                        UnpackError::InvalidArchive(format!(
                            "{}: symlink without target",
                            show(&rel)
                        ))
                    })?
                    .into_owned();
                path::check_target(&rel, &target)?;
                self.clear_for(&rel, false)?;
                let pfd = Self::parent(&mut self.root, &mut self.added, &mut self.tree, parent)?;
                fs::symlinkat(&target[..], pfd, name).map_err(errno("symlink", &rel))?;
                if preserve && (h.meta.uid, h.meta.gid) != self.me {
                    chown_at(pfd, name, &h.meta, &rel)?;
                }
                let _ = fs::utimensat(pfd, name, &ts(h.meta.mtime), AtFlags::SYMLINK_NOFOLLOW);
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                self.clear_for(&rel, false)?;
                let pfd = Self::parent(&mut self.root, &mut self.added, &mut self.tree, parent)?;
                let ft = match kind {
                    EntryType::Char => FileType::CharacterDevice,
                    EntryType::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                let dev = fs::makedev(h.meta.major, h.meta.minor);
                let made = fs::mknodat(pfd, name, ft, Mode::from_raw_mode(0o600), dev);
                match made {
                    Ok(()) => {
                        if preserve && (h.meta.uid, h.meta.gid) != self.me {
                            chown_at(pfd, name, &h.meta, &rel)?;
                        }
                        fs::chmodat(
                            pfd,
                            name,
                            Mode::from_raw_mode(h.meta.mode),
                            AtFlags::empty(),
                        )
                        .map_err(errno("chmod", &rel))?;
                        let _ =
                            fs::utimensat(pfd, name, &ts(h.meta.mtime), AtFlags::SYMLINK_NOFOLLOW);
                    }
                    Err(Errno::PERM) if kind != EntryType::Fifo => {
                        // Rootless: an empty file stands in for the device,
                        // as in the Go original; the tree metadata keeps the
                        // real type and numbers for the exporter.
                        tracing::debug!(
                            "{}: cannot create a device node here; writing a placeholder",
                            show(&rel)
                        );
                        let fd = self.create_file(&rel, self.created_mode(&h))?;
                        self.finish_fd(fd.as_fd(), &rel, &h, preserve)?;
                    }
                    Err(e) => return Err(errno("mknod", &rel)(e)),
                }
            }
        }
        self.tree.entries.insert(rel.clone(), h.meta);
        self.record_xattrs(&rel, xattrs);
        self.added.insert(rel);
        Ok(())
    }

    /// What the headers said, set or not (only root may set `security.*`).
    fn record_xattrs(&mut self, rel: &[u8], xattrs: Vec<(String, Vec<u8>)>) {
        if xattrs.is_empty() {
            self.tree.xattrs.remove(rel);
        } else {
            self.tree.xattrs.insert(rel.to_vec(), xattrs);
        }
    }

    /// The mode a new file is made with: its own when that comes out
    /// exactly and nothing must happen before it holds (no special bits,
    /// which a chown would clear, no xattrs, which need write permission
    /// to set), so that no chmod is needed (one syscall less per file:
    /// 68,000 on rig/big); else 0600, chmodded once the file is complete.
    fn created_mode(&self, h: &Header) -> u32 {
        if self.exact_mode(h) {
            h.meta.mode
        } else {
            0o600
        }
    }

    fn exact_mode(&self, h: &Header) -> bool {
        let mode = h.meta.mode;
        self.exact_umask
            .is_some_and(|u| mode & 0o7000 == 0 && mode & u == 0 && h.xattrs.is_empty())
    }

    fn create_file(&mut self, rel: &[u8], mode: u32) -> Result<OwnedFd, UnpackError> {
        let (parent, name) = path::split(rel);
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        for attempt in 0..2 {
            let pfd = Self::parent(&mut self.root, &mut self.added, &mut self.tree, parent)?;
            match fs::openat(pfd, name, flags, Mode::from_raw_mode(mode)) {
                Ok(fd) => return Ok(fd),
                Err(Errno::EXIST) if attempt == 0 => {
                    self.clear_for(rel, false)?;
                }
                Err(e) => return Err(errno("create", rel)(e)),
            }
        }
        unreachable!("the second attempt returns")
    }

    /// Owner, then xattrs, then mode (a chown clears setuid bits and file
    /// capabilities), then times.
    fn finish_fd(
        &self,
        fd: BorrowedFd<'_>,
        rel: &[u8],
        h: &Header,
        preserve: bool,
    ) -> Result<(), UnpackError> {
        // Files were just made by us. A directory may predate us (the
        // root), or have been given other owners already: two tar paths
        // can name one directory through symlinks.
        let made_now = h.meta.kind != EntryType::Dir;
        if preserve && (!made_now || (h.meta.uid, h.meta.gid) != self.me) {
            let (u, g) = (id(h.meta.uid, rel)?, id(h.meta.gid, rel)?);
            fs::fchown(fd, Some(fs::Uid::from_raw(u)), Some(fs::Gid::from_raw(g)))
                .map_err(errno("chown", rel))?;
        }
        set_xattrs(fd, rel, &h.xattrs);
        if !made_now || !self.exact_mode(h) {
            fs::fchmod(fd, Mode::from_raw_mode(h.meta.mode)).map_err(errno("chmod", rel))?;
        }
        fs::futimens(fd, &ts(h.meta.mtime)).map_err(errno("set times", rel))?;
        Ok(())
    }

    fn hardlink<R: Read>(
        &mut self,
        e: &mut tar::Entry<'_, R>,
        rel: Vec<u8>,
    ) -> Result<(), UnpackError> {
        let target_raw = e.link_name_bytes().ok_or_else(|| {
            UnpackError::InvalidArchive(format!("{}: hardlink without target", show(&rel)))
        })?;
        let target = path::clean(&target_raw);
        path::check(&target)?;
        if rel.is_empty() || target.is_empty() {
            return Err(UnpackError::InvalidArchive(format!(
                "{}: hardlink to or of the root",
                show(&rel)
            )));
        }
        if target == rel {
            return Ok(());
        }
        let (tparent, tname) = path::split(&target);
        let tfd = self
            .root
            .open_dir(tparent)
            .map_err(errno("open directory", tparent))?;
        let tmeta = match root::lstat(tfd.as_fd(), tname).map_err(errno("stat", &target))? {
            None => {
                return Err(UnpackError::InvalidArchive(format!(
                    "{}: hardlink to {}, which does not exist",
                    show(&rel),
                    show(&target)
                )))
            }
            Some(FileType::Directory) => {
                return Err(UnpackError::InvalidArchive(format!(
                    "{}: hardlink to a directory",
                    show(&rel)
                )))
            }
            Some(_) => self.tree.entries.get(&target).cloned(),
        };
        self.clear_for(&rel, false)?;
        let (parent, name) = path::split(&rel);
        let pfd = Self::parent(&mut self.root, &mut self.added, &mut self.tree, parent)?;
        // No AT_SYMLINK_FOLLOW: a link to a symlink links the symlink itself.
        fs::linkat(tfd.as_fd(), tname, pfd, name, AtFlags::empty())
            .map_err(errno("hardlink", &rel))?;
        if let Some(m) = tmeta {
            self.tree.entries.insert(rel.clone(), m);
        }
        let x = self.tree.xattrs.get(&target).cloned().unwrap_or_default();
        self.record_xattrs(&rel, x);
        self.added.insert(rel);
        Ok(())
    }

    /// Apply the deferred directory metadata (deepest first) and return the
    /// true metadata of the whole tree.
    pub fn finish(mut self) -> Result<TreeMeta, UnpackError> {
        let preserve = self.opts.ownership == Ownership::Preserve;
        let dirs = std::mem::take(&mut self.dirs);
        for (rel, d) in dirs.iter().rev() {
            let fd = if rel.is_empty() {
                match self.root.open_dir(b"") {
                    Ok(fd) => fd,
                    Err(e) => return Err(errno("open", rel)(e)),
                }
            } else {
                let (parent, name) = path::split(rel);
                let Ok(pfd) = self.root.open_dir(parent) else {
                    continue;
                };
                match fs::openat(
                    &pfd,
                    name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                ) {
                    Ok(fd) => fd,
                    // Replaced since (by a symlink or file): not ours to touch.
                    Err(Errno::NOENT) | Err(Errno::NOTDIR) | Err(Errno::LOOP) => continue,
                    Err(e) => return Err(errno("open directory", rel)(e)),
                }
            };
            let h = Header {
                meta: d.meta.clone(),
                xattrs: d.xattrs.clone(),
            };
            self.finish_fd(fd.as_fd(), rel, &h, preserve)?;
        }
        Ok(self.tree)
    }
}
