//! Laying the image out, before anything but file data is written: one
//! record per inode, tails that do not fit beside their inode moved to
//! blocks, the data area compacted, block maps made, nids assigned.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::FileExt;

use hoist_unpack::{Body, EntryType, MergedTree, NodeId};

use super::format::{
    ChunkIndex, CHUNK_BASED, CHUNK_FORMAT_INDEXES, COMPRESSED_FULL, FLAT_INLINE, FLAT_PLAIN,
};
use super::{data, werr, xattr, Content, ErofsBuilder, Placement, DIRENT};
use crate::blocks::{Run, BLOCK};
use crate::error::ExportError;
use crate::tree::Walk;
use zerocopy::IntoBytes;

/// One inode as it will be written.
pub(super) struct Rec {
    pub(super) id: NodeId,
    pub(super) extended: bool,
    pub(super) layout: u16,
    pub(super) size: u64,
    pub(super) nlink: u32,
    pub(super) xattrs: Vec<u8>,
    /// Bytes written inline after the inode and xattrs.
    pub(super) inline: InlineSrc,
    /// The first data block (`FLAT_PLAIN` and full blocks of `FLAT_INLINE`).
    pub(super) blkaddr: u32,
    /// Data blocks of a file in the area (0 for the rest).
    pub(super) blocks: u64,
    /// A chunk-based or compressed file's map.
    pub(super) map: Option<u32>,
    pub(super) nid: u64,
    /// A META image's file on a layer file: the device (1-based), and the
    /// blocks its data takes there (`blocks` is 0: none are this image's).
    pub(super) dev: u16,
    pub(super) dev_blocks: u64,
    /// A chunk-based file's chunk format, when not the builder's own.
    pub(super) chunk_format: Option<u32>,
}

pub(super) enum InlineSrc {
    None,
    Spool(u64, u32),
    Bytes(Vec<u8>),
}

impl InlineSrc {
    pub(super) fn len(&self) -> usize {
        match self {
            InlineSrc::None => 0,
            InlineSrc::Spool(_, n) => *n as usize,
            InlineSrc::Bytes(b) => b.len(),
        }
    }
}

impl Rec {
    pub(super) fn head_len(&self) -> usize {
        (if self.extended { 64 } else { 32 }) + self.xattrs.len()
    }

    fn meta_len(&self) -> usize {
        self.head_len() + self.inline.len()
    }
}

/// A file's blocks moving to an earlier hole ([`ErofsBuilder::compact`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct Move {
    pub(super) from: u64,
    pub(super) to: u64,
    pub(super) blocks: u64,
}

/// A directory's entries, `.` and `..` among them, sorted by name.
pub(super) type DirNames<'a> = Vec<(&'a [u8], NodeId)>;

/// The image as laid out: its inodes in nid order (the root first).
pub(super) struct Plan<'t> {
    pub(super) recs: Vec<Rec>,
    /// Each directory's names, by node id.
    pub(super) dir_names: Vec<Option<DirNames<'t>>>,
    /// Whether a directory's last block goes inline, by node id.
    pub(super) dir_tail_inline: Vec<bool>,
    /// The mtime of compact inodes.
    pub(super) build_time: i64,
}

pub(super) fn file_type(k: EntryType) -> u8 {
    match k {
        EntryType::File => 1,
        EntryType::Dir => 2,
        EntryType::Char => 3,
        EntryType::Block => 4,
        EntryType::Fifo => 5,
        EntryType::Symlink => 7,
    }
}

/// How many bytes a directory's entries take, packed as `dir_blocks` packs
/// them (whole blocks, then the last block's used part).
fn dir_size<N: AsRef<[u8]>>(names: impl Iterator<Item = N>) -> u64 {
    let (mut full, mut used) = (0u64, 0usize);
    for n in names {
        let len = DIRENT + n.as_ref().len();
        if used + len > BLOCK as usize {
            full += 1;
            used = 0;
        }
        used += len;
    }
    full * BLOCK + used as u64
}

/// The most common mtime: inodes with it can be compact.
fn common_mtime(tree: &MergedTree<Content>, order: &[NodeId]) -> i64 {
    let mut freq: BTreeMap<i64, u64> = BTreeMap::new();
    for &id in order {
        *freq.entry(tree.node(id).meta.mtime).or_default() += 1;
    }
    freq.iter()
        .max_by_key(|(t, n)| (**n, std::cmp::Reverse(**t)))
        .map_or(0, |(t, _)| *t)
}

/// A record for every inode, in walk order; directory sizes depend on
/// names only, their nids come later.
pub(super) fn plan<'t>(
    tree: &'t MergedTree<Content>,
    walk: &Walk<'t>,
    shared: &xattr::Shared,
    maps: &[data::FileMap],
) -> Result<Plan<'t>, ExportError> {
    let build_time = common_mtime(tree, &walk.order);
    let bound = tree.id_bound();
    let mut dir_names: Vec<Option<DirNames<'t>>> = vec![None; bound];
    let mut recs: Vec<Rec> = Vec::with_capacity(walk.order.len());
    for &id in &walk.order {
        let n = tree.node(id);
        let m = &n.meta;
        let xattrs = xattr::body(&|| walk.path(id), &n.xattrs, shared)?;
        let mut blocks = 0;
        let mut map = None;
        let (mut dev, mut dev_blocks) = (0, 0);
        let (size, layout, inline, blkaddr, nlink) = match &n.body {
            Body::File { size, content } => {
                let c = content.unwrap_or(Content::new(Run { start: 0, len: 0 }, None, None));
                map = c.map;
                let (layout, inline) = match (c.tail, c.map) {
                    _ if c.dev != 0 => {
                        dev = c.dev;
                        dev_blocks = c.run.len;
                        let lz4 = c.map.is_some_and(|m| maps[m as usize].lz4);
                        (
                            if lz4 { COMPRESSED_FULL } else { CHUNK_BASED },
                            InlineSrc::None,
                        )
                    }
                    (_, Some(m)) if maps[m as usize].lz4 => (COMPRESSED_FULL, InlineSrc::None),
                    (_, Some(_)) => (CHUNK_BASED, InlineSrc::None),
                    (Some((off, len)), None) => (FLAT_INLINE, InlineSrc::Spool(off, len)),
                    (None, None) => (FLAT_PLAIN, InlineSrc::None),
                };
                blocks = if c.dev == 0 { c.run.len } else { 0 };
                (*size, layout, inline, c.run.start as u32, n.links)
            }
            Body::Symlink(t) => (
                t.len() as u64,
                FLAT_INLINE,
                InlineSrc::Bytes(t.clone()),
                0,
                n.links,
            ),
            Body::Dir(children) => {
                let mut names: DirNames<'t> =
                    vec![(&b"."[..], id), (&b".."[..], walk.parent[id as usize])];
                names.extend(children.iter().map(|(k, &v)| (&k[..], v)));
                names.sort_unstable();
                let subdirs = children
                    .values()
                    .filter(|&&c| matches!(tree.node(c).body, Body::Dir(_)))
                    .count() as u32;
                let size = dir_size(names.iter().map(|(k, _)| k));
                dir_names[id as usize] = Some(names);
                // The layout is settled when the blocks are written.
                (size, FLAT_INLINE, InlineSrc::None, 0, 2 + subdirs)
            }
            Body::Special => (0, FLAT_PLAIN, InlineSrc::None, 0, n.links),
        };
        let extended = m.uid > 0xffff
            || m.gid > 0xffff
            || size > u64::from(u32::MAX)
            || nlink > 0xffff
            || m.mtime != build_time;
        recs.push(Rec {
            id,
            extended,
            layout,
            size,
            nlink,
            xattrs,
            inline,
            blkaddr,
            blocks,
            map,
            nid: 0,
            dev,
            dev_blocks,
            chunk_format: None,
        });
    }
    Ok(Plan {
        recs,
        dir_names,
        dir_tail_inline: vec![false; bound],
        build_time,
    })
}

impl Plan<'_> {
    /// Nids: the metadata area in order, no record across a block. Returns
    /// the metadata area's length in bytes.
    pub(super) fn assign_nids(&mut self) -> u64 {
        let mut off: u64 = 0;
        for r in self.recs.iter_mut() {
            let len = if self.dir_names[r.id as usize].is_some() {
                // A directory's inline tail is its last block's used part,
                // if it fits beside the inode; else that block is data too.
                let tail = (r.size % BLOCK) as usize;
                let fits = tail > 0 && r.head_len() + tail <= BLOCK as usize;
                self.dir_tail_inline[r.id as usize] = fits;
                r.head_len() + if fits { tail } else { 0 }
            } else {
                r.meta_len()
            } as u64;
            if off % BLOCK + len > BLOCK {
                off = off.div_ceil(BLOCK) * BLOCK;
            }
            r.nid = off / 32;
            off += len.div_ceil(32) * 32;
        }
        off
    }
}

impl ErofsBuilder {
    /// Inline tails that do not fit beside their inode go to a block (a
    /// file's tail after its full blocks would break contiguity, so the
    /// whole file moves).
    pub(super) fn move_oversized_tails(&mut self, recs: &mut [Rec]) -> Result<(), ExportError> {
        for r in recs.iter_mut() {
            if r.layout != FLAT_INLINE || r.inline.len() == 0 || r.meta_len() <= BLOCK as usize {
                continue;
            }
            let mut data = Vec::with_capacity(r.size as usize);
            match &r.inline {
                InlineSrc::Bytes(b) => data.extend_from_slice(b),
                InlineSrc::Spool(off, len) => {
                    let full = r.size - u64::from(*len);
                    self.area
                        .read_run(u64::from(r.blkaddr), full, &mut data)
                        .map_err(werr)?;
                    let mut t = vec![0u8; *len as usize];
                    self.spool.read_exact_at(&mut t, *off).map_err(werr)?;
                    data.extend_from_slice(&t);
                }
                InlineSrc::None => {}
            }
            let run = self.area.put(&data).map_err(werr)?;
            self.area.release(Run {
                start: u64::from(r.blkaddr),
                len: r.blocks,
            });
            r.blkaddr = run.start as u32;
            r.blocks = run.len;
            r.layout = FLAT_PLAIN;
            r.inline = InlineSrc::None;
        }
        Ok(())
    }

    /// Chunk maps and lcluster indexes, once files stay put.
    pub(super) fn index_maps(&self, recs: &mut [Rec]) {
        for r in recs.iter_mut() {
            if r.dev != 0 {
                self.index_device_file(r);
                continue;
            }
            if let Some(m) = r.map {
                let idx = self.maps[m as usize].index(r.head_len(), u64::from(r.blkaddr), r.size);
                r.inline = InlineSrc::Bytes(idx);
            }
        }
    }

    /// Files that later layers deleted left holes in the data area: move the
    /// files nearest its end into them (best fit, only ever to an earlier
    /// block), then end the area where its live data ends. Files of more
    /// than 64 MiB stay where they are (they may be sparse, and copying
    /// would fill their holes). Returns the copies to make, which the
    /// records already assume: each goes into a hole, so no copy's source
    /// is another's target and they may run in any order, but until they
    /// are done nothing may be written to the image.
    pub(super) fn compact(&mut self, recs: &mut [Rec]) -> Vec<Move> {
        const MAX_MOVE: u64 = (64 << 20) / BLOCK;
        let mut order: Vec<usize> = (0..recs.len()).filter(|&i| recs[i].blocks > 0).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(recs[i].blkaddr));
        // Files are taken from the end backwards, and a file only moves to
        // an earlier block: a hole at or past a file's start can serve no
        // file after it. Such holes (and the runs moved files leave) are
        // set aside as the scan passes them, so the best-fit search only
        // ever looks at holes that may still serve (it was quadratic).
        let mut by_start: BTreeSet<(u64, u64)> =
            self.area.holes.iter().map(|&(l, s)| (s, l)).collect();
        let mut passed: Vec<(u64, u64)> = Vec::new();
        let mut moves = Vec::new();
        for i in order {
            let (start, len) = (u64::from(recs[i].blkaddr), recs[i].blocks);
            while let Some(&(hs, hl)) = by_start.last() {
                if hs < start {
                    break;
                }
                by_start.pop_last();
                self.area.holes.remove(&(hl, hs));
                passed.push((hl, hs));
            }
            if len > MAX_MOVE {
                continue;
            }
            let Some(&(hl, hs)) = self
                .area
                .holes
                .range((len, 0)..)
                .find(|&&(_, hs)| hs + len <= start)
            else {
                continue;
            };
            self.area.holes.remove(&(hl, hs));
            by_start.remove(&(hs, hl));
            if hl > len {
                self.area.holes.insert((hl - len, hs + len));
                by_start.insert((hs + len, hl - len));
            }
            moves.push(Move {
                from: start,
                to: hs,
                blocks: len,
            });
            recs[i].blkaddr = hs as u32;
            passed.push((len, start));
        }
        self.area
            .holes
            .extend(passed.into_iter().filter(|&(l, _)| l > 0));
        let end = recs
            .iter()
            .filter(|r| r.blocks > 0)
            .map(|r| u64::from(r.blkaddr) + r.blocks)
            .max()
            .unwrap_or(self.first_block)
            .max(self.first_block);
        let holes: Vec<(u64, u64)> = self.area.holes.iter().copied().collect();
        self.area.holes.clear();
        for (l, s) in holes {
            if s < end {
                self.area.holes.insert(((s + l).min(end) - s, s));
            }
        }
        self.area.next = end;
        moves
    }
}

impl ErofsBuilder {
    /// A META image's file on a layer file: 8-byte chunk indexes that name
    /// the device (one chunk for a plain run, one per 128 KiB for a
    /// sparse one); a compressed file's lcluster indexes in the unified
    /// address space the device table's `uniaddr` maps onto the devices
    /// (they have no device field).
    fn index_device_file(&self, r: &mut Rec) {
        let head = r.head_len();
        let map = r.map.map(|m| &self.maps[m as usize]);
        if let Some(m) = map.filter(|m| m.lz4) {
            let base = self.uniaddr(r.dev) + u64::from(r.blkaddr);
            r.inline = InlineSrc::Bytes(m.index(head, base, r.size));
            return;
        }
        let mut b = vec![0u8; head.next_multiple_of(8) - head];
        let mut put = |blk: Option<u64>| {
            let (lo, dev) = match blk {
                Some(a) => (a as u32, r.dev),
                None => (u32::MAX, 0),
            };
            let i = ChunkIndex {
                startblk_hi: 0.into(),
                device_id: dev.into(),
                startblk_lo: lo.into(),
            };
            b.extend_from_slice(i.as_bytes());
        };
        let base = u64::from(r.blkaddr);
        let bits = match map {
            Some(m) => {
                for p in &m.pieces {
                    put(match p {
                        data::Piece::Plain(at) => Some(base + u64::from(*at)),
                        _ => None,
                    });
                }
                u32::from(data::CHUNK_BITS)
            }
            None => {
                // One chunk as large as the file's run.
                put(Some(base));
                r.dev_blocks.max(1).next_power_of_two().trailing_zeros()
            }
        };
        r.chunk_format = Some(CHUNK_FORMAT_INDEXES | bits);
        r.inline = InlineSrc::Bytes(b);
    }

    /// Where a layer file's content ended up, once the layout is final.
    pub(super) fn placements(
        &self,
        tree: &MergedTree<Content>,
        plan: &Plan<'_>,
        meta_blkaddr: u64,
        out: &mut [Option<Placement>],
    ) -> Result<(), ExportError> {
        for r in &plan.recs {
            let Body::File {
                content: Some(c), ..
            } = &tree.node(r.id).body
            else {
                continue;
            };
            let p = match (&r.inline, r.layout) {
                // Where write_inodes put it: after the inode and xattrs.
                (InlineSrc::Spool(..), FLAT_INLINE) if r.blocks == 0 => {
                    Placement::InlineAt(meta_blkaddr * BLOCK + r.nid * 32 + r.head_len() as u64)
                }
                (InlineSrc::None, _) if r.size == 0 => Placement::Inline(Vec::new()),
                (_, FLAT_PLAIN | CHUNK_BASED | COMPRESSED_FULL) => Placement::Blocks {
                    blkaddr: r.blkaddr,
                    blocks: r.blocks as u32,
                    map: r.map.map(|m| self.maps[m as usize].clone()),
                },
                _ => {
                    return Err(ExportError::Unsupported(format!(
                        "{}: a layer file's data is neither inline nor whole blocks",
                        Walk::new(tree).path(r.id)
                    )))
                }
            };
            if let Some(slot) = out.get_mut(c.seq as usize) {
                *slot = Some(p);
            }
        }
        Ok(())
    }
}
