//! The same layer semantics as [`crate::Unpacker`], applied to a tree in
//! memory instead of a directory: what a disk-image writer needs to lay out
//! the final filesystem straight from the layer streams, with the true
//! owners from the tar headers and no intermediate rootfs.
//!
//! File contents go to a [`ContentSink`] as they stream past (the ext4
//! writer puts them straight into the image); a file that a later layer
//! removes or replaces is handed back with [`ContentSink::release`].
//!
//! Paths resolve as the kernel resolves them for the unpacker
//! (`RESOLVE_IN_ROOT`): symlinks in parent components are followed, `..`
//! and absolute targets stay inside the root, the last component is never
//! followed, and a dangling in-root symlink on the way gets its target
//! created. Nothing here touches the filesystem, so containment is by
//! construction; the resolution rules matter for fidelity.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::io::{self, Read};

use crate::error::{show, UnpackError};
use crate::layer::{entry_kind, read_header, Entry};
use crate::meta::{EntryMeta, EntryType};
use crate::path::{self, Kind};

/// Where file contents go. `store` must consume exactly `size` bytes.
pub trait ContentSink {
    type Handle;
    fn store(&mut self, size: u64, r: &mut dyn Read) -> io::Result<Self::Handle>;
    /// The file is gone from the tree (whited out or replaced).
    fn release(&mut self, h: Self::Handle);
}

/// A sink's own write failed (its output, not the layer): sinks return
/// write errors wrapped in this ([`write_failed`]), so that the merge says
/// "writing", not "reading the layer", when the disk is full.
#[derive(Debug)]
pub struct WriteFailed(pub io::Error);

impl std::fmt::Display for WriteFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for WriteFailed {}

/// Mark `e` as a failure to write the sink's output.
pub fn write_failed(e: io::Error) -> io::Error {
    if e.get_ref().is_some_and(|x| x.is::<WriteFailed>()) {
        return e;
    }
    io::Error::new(e.kind(), WriteFailed(e))
}

/// A sink's error: a write failure if the sink marked it so, else reading.
fn sink_error(e: io::Error) -> UnpackError {
    if !e.get_ref().is_some_and(|x| x.is::<WriteFailed>()) {
        return UnpackError::Read(e);
    }
    match e.into_inner().map(|b| b.downcast::<WriteFailed>()) {
        Some(Ok(w)) => UnpackError::Write(w.0),
        Some(Err(other)) => UnpackError::Read(io::Error::other(other)),
        None => UnpackError::Read(io::Error::other("unknown sink error")),
    }
}

pub type NodeId = u32;
/// Extended attributes as the tar headers give them: (name, value).
pub type Xattrs = Vec<(String, Vec<u8>)>;
pub const ROOT: NodeId = 0;
/// Linux's limit on symlinks followed in one lookup.
const MAX_SYMLINKS: usize = 40;

#[derive(Debug)]
pub enum Body<H> {
    Dir(BTreeMap<Vec<u8>, NodeId>),
    File {
        size: u64,
        content: Option<H>,
    },
    Symlink(Vec<u8>),
    /// Char, block or FIFO: all in `meta`.
    Special,
}

#[derive(Debug)]
pub struct Node<H> {
    pub meta: EntryMeta,
    pub xattrs: Xattrs,
    pub body: Body<H>,
    /// Directory entries naming this node (hardlinks).
    pub links: u32,
}

pub struct MergedTree<H> {
    nodes: Vec<Option<Node<H>>>,
    /// Tar paths this layer made: whiteouts and opaque markers only hide
    /// what lower layers made. By path, as the unpacker keeps them.
    pub(crate) added: HashSet<Vec<u8>>,
    /// Directory metadata by tar path, applied by [`MergedTree::finish`]
    /// to whatever directory the path names then: what the unpacker does
    /// (it must defer it, or a 0555 directory would refuse its children),
    /// kept here so both give the same tree even through symlinks that
    /// later layers retarget.
    pending: BTreeMap<Vec<u8>, (EntryMeta, Xattrs)>,
    pub(crate) guard: crate::Guard,
    /// A tree of one layer alone, its whiteouts kept (see `listing.rs`).
    pub(crate) raw: Option<crate::listing::Raw>,
}

fn invalid(msg: String) -> UnpackError {
    UnpackError::InvalidArchive(msg)
}

impl<H> Default for MergedTree<H> {
    fn default() -> Self {
        Self::new()
    }
}

impl<H> MergedTree<H> {
    pub fn new() -> Self {
        MergedTree {
            nodes: vec![Some(Node {
                meta: EntryMeta::implicit_dir(),
                xattrs: Vec::new(),
                body: Body::Dir(BTreeMap::new()),
                links: 1,
            })],
            added: HashSet::new(),
            pending: BTreeMap::new(),
            guard: crate::Guard::default(),
            raw: None,
        }
    }

    /// Cancellation and the entry budget, checked before every entry.
    pub fn set_guard(&mut self, guard: crate::Guard) {
        self.guard = guard;
    }

    pub fn node(&self, id: NodeId) -> &Node<H> {
        self.nodes[id as usize].as_ref().expect("live node")
    }

    pub(crate) fn node_mut(&mut self, id: NodeId) -> &mut Node<H> {
        self.nodes[id as usize].as_mut().expect("live node")
    }

    /// One past the largest node id: the length of a table indexed by id.
    pub fn id_bound(&self) -> usize {
        self.nodes.len()
    }

    /// Every node still in the tree.
    pub fn nodes(&self) -> impl Iterator<Item = &Node<H>> {
        self.nodes.iter().flatten()
    }

    pub fn children(&self, id: NodeId) -> Option<&BTreeMap<Vec<u8>, NodeId>> {
        match &self.node(id).body {
            Body::Dir(c) => Some(c),
            _ => None,
        }
    }

    pub(crate) fn child(&self, dir: NodeId, name: &[u8]) -> Option<NodeId> {
        self.children(dir)?.get(name).copied()
    }

    pub(crate) fn push(&mut self, n: Node<H>) -> NodeId {
        self.nodes.push(Some(n));
        (self.nodes.len() - 1) as NodeId
    }

    /// Apply one uncompressed layer tar stream, read up to its end-of-archive
    /// marker (the caller drains the rest before trusting its digest).
    pub fn apply_layer<R: Read, S: ContentSink<Handle = H>>(
        &mut self,
        reader: &mut R,
        sink: &mut S,
    ) -> Result<crate::LayerStats, UnpackError> {
        self.added.clear();
        let mut stats = crate::LayerStats::default();
        let mut ar = tar::Archive::new(reader);
        for entry in ar.entries().map_err(UnpackError::Read)? {
            self.guard.entry()?;
            let mut e = entry.map_err(|x| invalid(x.to_string()))?;
            stats.entries += 1;
            stats.bytes += e.size();
            match path::classify(&e.path_bytes())? {
                Kind::Opaque(dir) => {
                    stats.whiteouts += 1;
                    self.opaque(&dir, sink)?;
                }
                Kind::Whiteout(target) => {
                    stats.whiteouts += 1;
                    self.whiteout(&target, sink)?;
                }
                Kind::Normal(rel) => self.entry(&mut e, rel, sink)?,
            }
        }
        Ok(stats)
    }

    /// The directory at `rel`, following symlinks inside the root (the
    /// unpacker's `openat2(RESOLVE_IN_ROOT)`). `Ok(None)`: something on
    /// the way is missing.
    pub(crate) fn lookup_dir(&self, rel: &[u8]) -> Result<Option<NodeId>, UnpackError> {
        let mut todo: VecDeque<Vec<u8>> = split_components(rel).collect();
        let mut stack: Vec<NodeId> = vec![ROOT];
        let mut followed = 0;
        while let Some(c) = todo.pop_front() {
            let cur = *stack.last().expect("root stays");
            match &c[..] {
                b"." => continue,
                b".." => {
                    if stack.len() > 1 {
                        stack.pop();
                    }
                    continue;
                }
                _ => {}
            }
            let Some(id) = self.child(cur, &c) else {
                return Ok(None);
            };
            match &self.node(id).body {
                Body::Dir(_) => stack.push(id),
                Body::Symlink(t) => {
                    followed += 1;
                    if followed > MAX_SYMLINKS {
                        return Err(invalid(format!(
                            "{}: too many levels of symbolic links",
                            show(rel)
                        )));
                    }
                    if t.first() == Some(&b'/') {
                        stack.truncate(1);
                    }
                    for part in split_components(t).rev() {
                        todo.push_front(part);
                    }
                }
                _ => return Err(not_a_directory(rel)),
            }
        }
        Ok(stack.last().copied())
    }

    /// The directory at `rel`, made (with its missing parents) if need be.
    pub(crate) fn dir(&mut self, rel: &[u8]) -> Result<NodeId, UnpackError> {
        match self.lookup_dir(rel)? {
            Some(id) => Ok(id),
            None => self.make_dirs(rel, 0),
        }
    }

    /// `mkdir -p` one component at a time, as the unpacker's root does: a
    /// dangling symlink in the way gets its target made, resolved inside
    /// the root.
    fn make_dirs(&mut self, rel: &[u8], hops: usize) -> Result<NodeId, UnpackError> {
        if hops > MAX_SYMLINKS {
            return Err(invalid(format!(
                "{}: too many levels of symbolic links",
                show(rel)
            )));
        }
        // One step per component from where the last one ended: walking
        // from the root for every prefix made deep paths quadratic. Only
        // a symlink on the way is resolved from the root, as the kernel
        // does, and there are at most MAX_SYMLINKS of those per lookup.
        let mut cur = ROOT;
        let mut prefix: Vec<u8> = Vec::with_capacity(rel.len());
        for comp in rel.split(|&b| b == b'/') {
            let before = prefix.len();
            if before > 0 {
                prefix.push(b'/');
            }
            prefix.extend_from_slice(comp);
            let parent = &prefix[..before];
            cur = match self.child(cur, comp) {
                Some(id) if matches!(self.node(id).body, Body::Dir(_)) => id,
                None => {
                    let id = self.push(Node {
                        meta: EntryMeta::implicit_dir(),
                        xattrs: Vec::new(),
                        body: Body::Dir(BTreeMap::new()),
                        links: 1,
                    });
                    self.link(cur, comp.to_vec(), id);
                    self.added.insert(prefix.clone());
                    if let Some(raw) = &mut self.raw {
                        raw.made_implicit(&prefix);
                    }
                    id
                }
                Some(id) => {
                    let Body::Symlink(target) = &self.node(id).body else {
                        return Err(not_a_directory(&prefix));
                    };
                    let resolved = if target.first() == Some(&b'/') {
                        path::clean(target)
                    } else {
                        path::clean(&path::join(parent, target))
                    };
                    match self.lookup_dir(&prefix)? {
                        Some(d) => d,
                        None => self.make_dirs(&resolved, hops + 1)?,
                    }
                }
            };
        }
        Ok(cur)
    }

    /// Drop pending directory metadata at and under a removed tar path.
    fn forget(&mut self, rel: &[u8]) {
        path::remove_under(&mut self.pending, rel);
    }

    /// Apply the deferred directory metadata. Call once, after the last
    /// layer.
    pub fn finish(&mut self) -> Result<(), UnpackError> {
        self.make_whiteouts()?;
        self.check_deferred(self.pending.keys())?;
        if let Some(raw) = &mut self.raw {
            raw.explicit(self.pending.keys());
        }
        let pending = std::mem::take(&mut self.pending);
        // Deepest first, as the unpacker must (a directory's mode could
        // deny its children); two tar paths naming one directory through
        // symlinks resolve the same way there.
        for (rel, (meta, xattrs)) in pending.into_iter().rev() {
            let id = if rel.is_empty() {
                ROOT
            } else {
                let (parent, name) = path::split(&rel);
                // Whatever no longer resolves is not ours to touch.
                let Ok(Some(p)) = self.lookup_dir(parent) else {
                    continue;
                };
                match self.child(p, name) {
                    Some(id) if matches!(self.node(id).body, Body::Dir(_)) => id,
                    _ => continue,
                }
            };
            let n = self.node_mut(id);
            n.meta = meta;
            n.xattrs = xattrs;
        }
        self.mark_opaque()
    }

    pub(crate) fn link(&mut self, dir: NodeId, name: Vec<u8>, id: NodeId) {
        if let Body::Dir(c) = &mut self.node_mut(dir).body {
            c.insert(name, id);
        }
    }

    /// Drop the entry `name` of `dir`, and the node (recursively) with its
    /// last link.
    fn unlink<S: ContentSink<Handle = H>>(&mut self, dir: NodeId, name: &[u8], sink: &mut S) {
        let Body::Dir(c) = &mut self.node_mut(dir).body else {
            return;
        };
        let Some(id) = c.remove(name) else { return };
        self.drop_link(id, sink);
    }

    fn drop_link<S: ContentSink<Handle = H>>(&mut self, id: NodeId, sink: &mut S) {
        let n = self.node_mut(id);
        n.links -= 1;
        if n.links > 0 {
            return;
        }
        let n = self.nodes[id as usize].take().expect("live node");
        match n.body {
            Body::Dir(c) => {
                for (_, child) in c {
                    self.drop_link(child, sink);
                }
            }
            Body::File {
                content: Some(h), ..
            } => sink.release(h),
            _ => {}
        }
    }

    pub(crate) fn whiteout<S: ContentSink<Handle = H>>(
        &mut self,
        target: &[u8],
        sink: &mut S,
    ) -> Result<(), UnpackError> {
        if self.raw.is_some() {
            return self.keep_whiteout(target);
        }
        if target.is_empty() || self.added.contains(target) {
            return Ok(());
        }
        let (parent, name) = path::split(target);
        let p = match self.lookup_dir(parent) {
            Ok(Some(p)) => p,
            // Nothing there to hide (the unpacker's ENOENT/ENOTDIR).
            Ok(None) | Err(UnpackError::NotADirectory(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        self.unlink(p, name, sink);
        self.forget(target);
        Ok(())
    }

    pub(crate) fn opaque<S: ContentSink<Handle = H>>(
        &mut self,
        dir: &[u8],
        sink: &mut S,
    ) -> Result<(), UnpackError> {
        if self.raw.is_some() {
            return self.keep_opaque(dir);
        }
        let Some(d) = self.lookup_dir(dir)? else {
            return Ok(());
        };
        let names: Vec<Vec<u8>> = self
            .children(d)
            .into_iter()
            .flatten()
            .map(|(k, _)| k.clone())
            .collect();
        for n in names {
            let full = path::join(dir, &n);
            if !self.added.contains(&full) {
                self.unlink(d, &n, sink);
                self.forget(&full);
            }
        }
        Ok(())
    }

    fn entry<R: Read, S: ContentSink<Handle = H>>(
        &mut self,
        e: &mut tar::Entry<'_, R>,
        rel: Vec<u8>,
        sink: &mut S,
    ) -> Result<(), UnpackError> {
        let kind = match entry_kind(e, &rel)? {
            Entry::Hardlink => return self.hardlink(e, rel, sink),
            Entry::Skip => return Ok(()),
            Entry::Kind(k) => k,
        };
        let h = read_header(e, kind)?;
        self.place(rel, kind, h.meta, h.xattrs, sink, |rel, sink| {
            Ok(match kind {
                EntryType::Dir => Body::Dir(BTreeMap::new()),
                EntryType::File => {
                    // A GNU sparse entry stores less than it expands to;
                    // the reader gives the expanded bytes.
                    let size = match e.header().as_gnu() {
                        Some(g) if e.header().entry_type() == tar::EntryType::GNUSparse => g
                            .real_size()
                            .map_err(|x| invalid(format!("{}: bad sparse size: {x}", show(rel))))?,
                        _ => e.size(),
                    };
                    let mut counted = Exact {
                        inner: &mut *e,
                        left: size,
                    };
                    let content = sink.store(size, &mut counted).map_err(sink_error)?;
                    Body::File {
                        size,
                        content: Some(content),
                    }
                }
                EntryType::Symlink => {
                    let target = e
                        .link_name_bytes()
                        .filter(|t| !t.is_empty())
                        .ok_or_else(|| invalid(format!("{}: symlink without target", show(rel))))?
                        .into_owned();
                    path::check_target(rel, &target)?;
                    Body::Symlink(target)
                }
                EntryType::Char | EntryType::Block | EntryType::Fifo => Body::Special,
            })
        })
    }

    /// Put an entry of this layer at `rel`, replacing what is there (a
    /// directory over a directory only takes its metadata, deferred).
    /// `body` makes the new node's body once the place is known.
    pub(crate) fn place<S: ContentSink<Handle = H>>(
        &mut self,
        rel: Vec<u8>,
        kind: EntryType,
        meta: EntryMeta,
        xattrs: Xattrs,
        sink: &mut S,
        body: impl FnOnce(&[u8], &mut S) -> Result<Body<H>, UnpackError>,
    ) -> Result<(), UnpackError> {
        if rel.is_empty() {
            self.pending.insert(rel, (meta, xattrs));
            return Ok(());
        }
        let (parent, name) = path::split(&rel);
        self.alone_through(parent, &rel)?;
        let p = self.dir(parent)?;
        let existing = self.child(p, name);
        if kind == EntryType::Dir {
            if let Some(id) = existing {
                if matches!(self.node(id).body, Body::Dir(_)) {
                    if let Some(raw) = &self.raw {
                        raw.named_late(&rel)?;
                    }
                    self.added.insert(rel.clone());
                    self.pending.insert(rel, (meta, xattrs));
                    return Ok(());
                }
            }
        }
        if let Some(id) = existing {
            self.alone_replacing(id, &rel)?;
            if let (Some(raw), EntryType::Dir) = (&mut self.raw, kind) {
                // What this directory replaced had replaced whatever lay
                // below: nothing of that shows through.
                raw.replaced_by_dir(&rel);
            }
            self.unlink(p, name, sink);
            self.forget(&rel);
        }
        let (meta, xattrs) = if kind == EntryType::Dir {
            self.pending.insert(rel.clone(), (meta, xattrs));
            (EntryMeta::implicit_dir(), Vec::new())
        } else {
            (meta, xattrs)
        };
        let body = body(&rel, sink)?;
        let id = self.push(Node {
            meta,
            xattrs,
            body,
            links: 1,
        });
        self.link(p, name.to_vec(), id);
        self.added.insert(rel);
        Ok(())
    }

    fn hardlink<R: Read, S: ContentSink<Handle = H>>(
        &mut self,
        e: &mut tar::Entry<'_, R>,
        rel: Vec<u8>,
        sink: &mut S,
    ) -> Result<(), UnpackError> {
        let raw = e
            .link_name_bytes()
            .ok_or_else(|| invalid(format!("{}: hardlink without target", show(&rel))))?;
        let target = path::clean(&raw);
        self.link_to(rel, target, sink)
    }

    /// A hardlink of this layer at `rel` to the node at `target`.
    pub(crate) fn link_to<S: ContentSink<Handle = H>>(
        &mut self,
        rel: Vec<u8>,
        target: Vec<u8>,
        sink: &mut S,
    ) -> Result<(), UnpackError> {
        path::check(&target)?;
        if rel.is_empty() || target.is_empty() {
            return Err(invalid(format!(
                "{}: hardlink to or of the root",
                show(&rel)
            )));
        }
        if target == rel {
            return Ok(());
        }
        let missing = || {
            invalid(format!(
                "{}: hardlink to {}, which does not exist",
                show(&rel),
                show(&target)
            ))
        };
        let (tparent, tname) = path::split(&target);
        let tdir = self.lookup_dir(tparent)?.ok_or_else(missing)?;
        let tid = self.child(tdir, tname).ok_or_else(missing)?;
        if matches!(self.node(tid).body, Body::Dir(_)) {
            return Err(invalid(format!("{}: hardlink to a directory", show(&rel))));
        }
        let (parent, name) = path::split(&rel);
        self.alone_through(parent, &rel)?;
        let p = self.dir(parent)?;
        if let Some(id) = self.child(p, name) {
            self.alone_replacing(id, &rel)?;
        }
        // Held while the old entry goes, in case that entry is the target.
        self.node_mut(tid).links += 1;
        if self.child(p, name).is_some() {
            self.unlink(p, name, sink);
            self.forget(&rel);
        }
        // Replacing `rel` removed the target itself (it lived under `rel`):
        // the link(2) the unpacker makes would fail the same way.
        let still_there =
            self.nodes[tdir as usize].is_some() && self.child(tdir, tname) == Some(tid);
        if !still_there {
            self.drop_link(tid, sink);
            return Err(missing());
        }
        self.link(p, name.to_vec(), tid);
        self.added.insert(rel);
        Ok(())
    }
}

fn not_a_directory(rel: &[u8]) -> UnpackError {
    UnpackError::NotADirectory(show(rel))
}

fn split_components(p: &[u8]) -> impl DoubleEndedIterator<Item = Vec<u8>> + '_ {
    p.split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .map(<[u8]>::to_vec)
}

/// A file's content as exactly `left` bytes: a short archive is an error
/// here rather than a short file in the image.
struct Exact<'a, R> {
    inner: &'a mut R,
    left: u64,
}

impl<R: Read> Read for Exact<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = out.len().min(self.left as usize);
        let n = self.inner.read(&mut out[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the archive ends inside a file",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}
