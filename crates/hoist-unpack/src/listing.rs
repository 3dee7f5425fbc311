//! Layers as listings, and trees of one layer alone.
//!
//! A layer-shared disk keeps one erofs file per layer: the tree of that
//! layer alone, its whiteouts kept as overlayfs reads them (a 0/0
//! character device for a deleted name, `trusted.overlay.opaque=y` on an
//! opaque directory). A later export rebuilds an image's merged tree from
//! those files without their tars: each is read back as a stream of
//! [`Listed`] entries and applied with the same rules as a tar stream.

use std::collections::{BTreeMap, BTreeSet};

use crate::merge::{Body, ContentSink, MergedTree, Node};
use crate::meta::{EntryMeta, EntryType};
use crate::{path, LayerStats, UnpackError};

/// The xattr overlayfs reads as "this directory hides the lower ones".
pub const OVERLAY_OPAQUE: &str = "trusted.overlay.opaque";

/// What a one-layer tree keeps beyond the merged tree's rules.
#[derive(Default)]
pub(crate) struct Raw {
    opaque: BTreeSet<Vec<u8>>,
    /// Whiteouts are made nodes only at the end: until then they must
    /// not be found (a hardlink to a whited-out name has no target).
    whiteouts: BTreeSet<Vec<u8>>,
    /// Directories made as parents that no entry named.
    implicit: BTreeSet<Vec<u8>>,
    root_named: bool,
}

impl Raw {
    pub(crate) fn made_implicit(&mut self, rel: &[u8]) {
        self.implicit.insert(rel.to_vec());
    }

    /// A directory entry after entries under it had made the directory:
    /// over a lower symlink the tar put those through the link, then
    /// replaced the link, an order a tree of the layer does not keep.
    pub(crate) fn named_late(&self, rel: &[u8]) -> Result<(), UnpackError> {
        if self.implicit.contains(rel) {
            return Err(UnpackError::NotStandalone(format!(
                "/{}: a directory entry after entries under it",
                String::from_utf8_lossy(rel)
            )));
        }
        Ok(())
    }

    pub(crate) fn replaced_by_dir(&mut self, rel: &[u8]) {
        self.opaque.insert(rel.to_vec());
    }

    /// The tar paths that directory entries named (and gave metadata).
    pub(crate) fn explicit<'a>(&mut self, named: impl Iterator<Item = &'a Vec<u8>>) {
        for rel in named {
            if rel.is_empty() {
                self.root_named = true;
            }
            self.implicit.remove(rel);
        }
    }
}

/// A layer entry's body, its content already stored.
pub enum ListedBody<H> {
    Dir,
    File {
        size: u64,
        content: H,
    },
    Symlink(Vec<u8>),
    /// Char, block or FIFO: all in the metadata.
    Special,
}

/// One entry of a layer given as a listing rather than a tar stream.
pub enum Listed<H> {
    Entry {
        rel: Vec<u8>,
        meta: EntryMeta,
        xattrs: Vec<(String, Vec<u8>)>,
        body: ListedBody<H>,
    },
    Hardlink {
        rel: Vec<u8>,
        target: Vec<u8>,
    },
    Whiteout(Vec<u8>),
    Opaque(Vec<u8>),
}

impl<H> MergedTree<H> {
    /// A tree for one layer alone: whiteouts and opaque markers are kept
    /// as overlayfs reads them, not applied.
    pub fn new_layer() -> Self {
        let mut t = Self::new();
        t.raw = Some(Raw::default());
        t
    }

    /// The directories of a one-layer tree that no entry named, made as
    /// parents (`b""` for the root). A listing leaves them out, so that
    /// applying it finds whatever lower layers have there, as the tar
    /// would. Empty for a merged tree.
    pub fn implicit_dirs(&self) -> Vec<Vec<u8>> {
        let Some(raw) = &self.raw else {
            return Vec::new();
        };
        let mut out: Vec<Vec<u8>> = raw.implicit.iter().cloned().collect();
        if !raw.root_named {
            out.insert(0, Vec::new());
        }
        out
    }

    pub(crate) fn keep_whiteout(&mut self, target: &[u8]) -> Result<(), UnpackError> {
        let Some(raw) = &self.raw else {
            return Ok(());
        };
        if raw.implicit.contains(target) || self.through_symlink(path::split(target).0) {
            // Over a lower directory the tar deletes it with what this
            // layer put in it; over nothing it deletes nothing. One file
            // cannot say both.
            return Err(UnpackError::NotStandalone(format!(
                "/{}: a whiteout of a directory the layer made as a parent, or through one of \
                 its symbolic links",
                String::from_utf8_lossy(target)
            )));
        }
        let keep = !target.is_empty() && !self.added.contains(target);
        if let Some(raw) = &mut self.raw {
            if keep {
                raw.whiteouts.insert(target.to_vec());
            }
        }
        Ok(())
    }

    /// The kept whiteouts as 0/0 character devices, where no entry of the
    /// layer took the name. Call before anything else makes directories.
    pub(crate) fn make_whiteouts(&mut self) -> Result<(), UnpackError> {
        let Some(raw) = &mut self.raw else {
            return Ok(());
        };
        let names = std::mem::take(&mut raw.whiteouts);
        // Deleted, then made again by an entry of this layer: a directory
        // made so is new, nothing of the lower ones shows through, and its
        // metadata is its own even when no entry named it.
        let mut remade = Vec::new();
        for target in &names {
            let (parent, name) = path::split(target);
            if let Ok(Some(p)) = self.lookup_dir(parent) {
                if let Some(c) = self.child(p, name) {
                    if matches!(self.node(c).body, Body::Dir(_)) {
                        remade.push(target.clone());
                    }
                }
            }
        }
        if let Some(raw) = &mut self.raw {
            for t in remade {
                raw.implicit.remove(&t);
                raw.opaque.insert(t);
            }
        }
        for target in names {
            let (parent, name) = path::split(&target);
            // A parent this layer later replaced with a symlink hides what
            // lay below anyway; the whiteout must not follow the link.
            if self.through_symlink(parent) {
                continue;
            }
            let p = self.dir(parent)?;
            if self.child(p, name).is_some() {
                continue;
            }
            let id = self.push(Node {
                meta: EntryMeta {
                    kind: EntryType::Char,
                    mode: 0,
                    uid: 0,
                    gid: 0,
                    major: 0,
                    minor: 0,
                    mtime: 0,
                },
                xattrs: Vec::new(),
                body: Body::Special,
                links: 1,
            });
            self.link(p, name.to_vec(), id);
        }
        Ok(())
    }

    pub(crate) fn keep_opaque(&mut self, dir: &[u8]) -> Result<(), UnpackError> {
        let cannot = |why: String| {
            Err(UnpackError::NotStandalone(format!(
                "/{}: an opaque marker {why}",
                String::from_utf8_lossy(dir)
            )))
        };
        let Some(raw) = &self.raw else { return Ok(()) };
        // The tar keeps what this layer made by the marker's own path.
        if self.through_symlink(dir) {
            return cannot("through a symbolic link of the same layer".into());
        }
        // Docker, BuildKit and containerd write a directory's entry before
        // its marker; a marker for a directory the layer does not hold
        // clears a lower one if there is one, which one file cannot say.
        let d = match self.lookup_dir(dir) {
            Ok(Some(d)) => d,
            _ => return cannot("for a directory the layer does not hold".into()),
        };
        // Entries made under a parent this layer made implicitly: over a
        // lower directory there, the tar deletes them too.
        let names = self.children(d).into_iter().flatten().map(|(k, _)| k);
        if let Some(name) = names
            .map(|k| path::join(dir, k))
            .find(|p| raw.implicit.contains(p))
        {
            return cannot(format!(
                "after entries under /{}, a directory this layer made as a parent",
                String::from_utf8_lossy(&name)
            ));
        }
        if let Some(raw) = &mut self.raw {
            raw.opaque.insert(dir.to_vec());
        }
        Ok(())
    }

    /// A layer alone refuses an entry placed through one of its own
    /// symlinks: the tar keeps such entries by the path it gave, which a
    /// tree of the layer cannot hold. Docker, BuildKit and containerd
    /// write a layer from a walk of real paths, so never do this.
    pub(crate) fn alone_through(&self, parent: &[u8], rel: &[u8]) -> Result<(), UnpackError> {
        if self.raw.is_some() && self.through_symlink(parent) {
            return Err(UnpackError::NotStandalone(format!(
                "/{}: an entry through a symbolic link of the same layer",
                String::from_utf8_lossy(rel)
            )));
        }
        Ok(())
    }

    /// A layer alone refuses replacing a directory it made as a parent:
    /// over a lower symlink, the tar put the entries under it through the
    /// link, where they outlive the replacement.
    pub(crate) fn alone_replacing(&self, id: crate::NodeId, rel: &[u8]) -> Result<(), UnpackError> {
        let Some(raw) = &self.raw else { return Ok(()) };
        let made = raw.implicit.contains(rel);
        if made && matches!(self.node(id).body, Body::Dir(_)) {
            return Err(UnpackError::NotStandalone(format!(
                "/{}: replaces a directory the same layer made as a parent",
                String::from_utf8_lossy(rel)
            )));
        }
        Ok(())
    }

    /// Whether naming `rel` in this tree goes through a symlink.
    fn through_symlink(&self, rel: &[u8]) -> bool {
        let mut cur = crate::ROOT;
        for comp in rel.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            let Some(c) = self.child(cur, comp) else {
                return false;
            };
            if let Body::Symlink(_) = self.node(c).body {
                return true;
            }
            cur = c;
        }
        false
    }

    /// A directory entry's metadata is applied after the last layer, to
    /// whatever its tar path names then: through a symlink, a later layer
    /// can change that. A layer alone cannot say it; refuse it.
    pub(crate) fn check_deferred<'a>(
        &self,
        named: impl Iterator<Item = &'a Vec<u8>>,
    ) -> Result<(), UnpackError> {
        if self.raw.is_none() {
            return Ok(());
        }
        for rel in named {
            if self.through_symlink(rel) {
                return Err(UnpackError::NotStandalone(format!(
                    "/{}: a directory entry through a symbolic link of the same layer",
                    String::from_utf8_lossy(rel)
                )));
            }
        }
        Ok(())
    }

    /// After the directories took their entries' xattrs: mark the opaque.
    pub(crate) fn mark_opaque(&mut self) -> Result<(), UnpackError> {
        let Some(raw) = &self.raw else {
            return Ok(());
        };
        let dirs: Vec<Vec<u8>> = raw.opaque.iter().cloned().collect();
        for rel in dirs {
            let Ok(Some(id)) = self.lookup_dir(&rel) else {
                continue;
            };
            let x = &mut self.node_mut(id).xattrs;
            if !x.iter().any(|(k, _)| k == OVERLAY_OPAQUE) {
                x.push((OVERLAY_OPAQUE.to_string(), b"y".to_vec()));
            }
        }
        Ok(())
    }

    /// Apply one layer given as a listing, with the rules `apply_layer`
    /// applies to a tar stream. File contents come stored already.
    /// A listing's path must be what the tar path policy would have made
    /// of it: cleaned, within the limits.
    fn listed_path(rel: &[u8]) -> Result<(), UnpackError> {
        if path::clean(rel) != rel {
            return Err(UnpackError::InvalidArchive(format!(
                "{}: not a clean path in a layer listing",
                String::from_utf8_lossy(rel)
            )));
        }
        path::check(rel)
    }

    /// Applying a listing: an entry placed through a symlink of a lower
    /// layer lands where the tar's order of entries decided, which the
    /// listing no longer has. Docker, BuildKit and containerd write layers
    /// from walks of real paths, which never do this.
    fn listed_through(&self, parent: &[u8], rel: &[u8]) -> Result<(), UnpackError> {
        if self.through_symlink(parent) {
            return Err(UnpackError::NotStandalone(format!(
                "/{}: placed through a symbolic link of a lower layer",
                String::from_utf8_lossy(rel)
            )));
        }
        Ok(())
    }

    pub fn apply_listing<S: ContentSink<Handle = H>>(
        &mut self,
        listing: impl IntoIterator<Item = Listed<H>>,
        sink: &mut S,
    ) -> Result<LayerStats, UnpackError> {
        self.added.clear();
        let mut stats = LayerStats::default();
        for item in listing {
            self.guard.entry()?;
            stats.entries += 1;
            match item {
                Listed::Whiteout(target) => {
                    Self::listed_path(&target)?;
                    self.listed_through(path::split(&target).0, &target)?;
                    stats.whiteouts += 1;
                    self.whiteout(&target, sink)?;
                }
                Listed::Opaque(dir) => {
                    Self::listed_path(&dir)?;
                    self.listed_through(&dir, &dir)?;
                    stats.whiteouts += 1;
                    self.opaque(&dir, sink)?;
                }
                Listed::Hardlink { rel, target } => {
                    Self::listed_path(&rel)?;
                    Self::listed_path(&target)?;
                    self.listed_through(path::split(&rel).0, &rel)?;
                    self.listed_through(path::split(&target).0, &target)?;
                    self.link_to(rel, target, sink)?;
                }
                Listed::Entry {
                    rel,
                    meta,
                    xattrs,
                    body,
                } => {
                    Self::listed_path(&rel)?;
                    self.listed_through(path::split(&rel).0, &rel)?;
                    if let ListedBody::File { size, .. } = body {
                        stats.bytes += size;
                    }
                    let kind = meta.kind;
                    self.place(rel, kind, meta, xattrs, sink, |_, _| {
                        Ok(match body {
                            ListedBody::Dir => Body::Dir(BTreeMap::new()),
                            ListedBody::File { size, content } => Body::File {
                                size,
                                content: Some(content),
                            },
                            ListedBody::Symlink(t) => Body::Symlink(t),
                            ListedBody::Special => Body::Special,
                        })
                    })?;
                }
            }
        }
        Ok(stats)
    }
}

/// How a one-layer tree's directories are listed.
struct Order<'a> {
    implicit: &'a BTreeSet<Vec<u8>>,
}

/// Whether a node of a one-layer tree is a kept whiteout.
pub fn is_whiteout(m: &EntryMeta) -> bool {
    m.kind == EntryType::Char && m.major == 0 && m.minor == 0
}

impl<H: Clone> MergedTree<H> {
    /// A one-layer tree as the listing that applies it: parents before
    /// children in name order, implicit directories left out, an opaque
    /// directory's marker right after it, kept whiteouts as whiteouts, and
    /// every name of a hardlinked node after the first as a hardlink.
    pub fn listing(&self) -> Vec<Listed<H>> {
        let implicit: BTreeSet<Vec<u8>> = self.implicit_dirs().into_iter().collect();
        let order = Order {
            implicit: &implicit,
        };
        let mut out = Vec::new();
        let mut first: std::collections::HashMap<crate::NodeId, Vec<u8>> = Default::default();
        self.list_dir(crate::ROOT, Vec::new(), &order, &mut first, &mut out);
        out
    }

    fn list_dir(
        &self,
        id: crate::NodeId,
        rel: Vec<u8>,
        order: &Order<'_>,
        first: &mut std::collections::HashMap<crate::NodeId, Vec<u8>>,
        out: &mut Vec<Listed<H>>,
    ) {
        let n = self.node(id);
        let opaque = n.xattrs.iter().any(|(k, _)| k == OVERLAY_OPAQUE);
        let entry = (!order.implicit.contains(&rel)).then(|| Listed::Entry {
            rel: rel.clone(),
            meta: n.meta.clone(),
            xattrs: n
                .xattrs
                .iter()
                .filter(|(k, _)| k != OVERLAY_OPAQUE)
                .cloned()
                .collect(),
            body: ListedBody::Dir,
        });
        out.extend(entry);
        if opaque {
            out.push(Listed::Opaque(rel.clone()));
        }
        let Body::Dir(children) = &n.body else { return };
        for (name, &c) in children {
            let p = path::join(&rel, name);
            let cn = self.node(c);
            if let Body::Dir(_) = cn.body {
                self.list_dir(c, p, order, first, out);
                continue;
            }
            if let Some(t) = first.get(&c) {
                out.push(Listed::Hardlink {
                    rel: p,
                    target: t.clone(),
                });
                continue;
            }
            first.insert(c, p.clone());
            let body = match &cn.body {
                Body::File { size, content } => match content {
                    Some(h) => ListedBody::File {
                        size: *size,
                        content: h.clone(),
                    },
                    None => continue,
                },
                Body::Symlink(t) => ListedBody::Symlink(t.clone()),
                Body::Special if is_whiteout(&cn.meta) => {
                    out.push(Listed::Whiteout(p));
                    continue;
                }
                Body::Special | Body::Dir(_) => ListedBody::Special,
            };
            out.push(Listed::Entry {
                rel: p,
                meta: cn.meta.clone(),
                xattrs: cn.xattrs.clone(),
                body,
            });
        }
    }
}
