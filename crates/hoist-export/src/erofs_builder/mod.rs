//! A native erofs writer fed straight from the layer streams, like the ext4
//! one: [`ErofsBuilder`] is the merge's content sink. The on-disk format
//! follows the kernel's erofs documentation and erofs-utils' `erofs_fs.h`
//! (facts only): 4 KiB blocks, superblock at byte 1024 with its crc32c,
//! compact (32-byte) or extended (64-byte) inodes as each inode's values
//! need, inline xattrs, and file, symlink and directory tails inline after
//! their inode (`FLAT_INLINE`) where they fit, else in a block of their own
//! (`FLAT_PLAIN`). Sparse files are written chunk-based with their holes
//! unmapped, and `--compress lz4` compresses file data in 128 KiB big
//! pclusters (both in [`data`]).
//!
//! Layout: block 0 holds the superblock; file data follows in arrival
//! order (a [`BlockArea`]: replaced files give their blocks back), then
//! directory blocks, then the metadata area (`meta_blkaddr`): every inode
//! with its xattrs and inline tail, the root first (its nid must fit in 16
//! bits). Small files and tails are spooled to an unnamed temp file while
//! the layers stream, and copied into the metadata area at the end.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use hoist_unpack::{Body, ContentSink, EntryType, MergedTree, NodeId, ROOT};

use crate::blocks::{BlockArea, Run, BLOCK};
use crate::error::ExportError;
use crate::tree::type_bits;

const MAGIC: u32 = 0xE0F5_E1E2;
const SB_OFFSET: usize = 1024;
const FEATURE_COMPAT_SB_CHKSUM: u32 = 1;
const FEATURE_INCOMPAT_ZERO_PADDING: u32 = 1;
/// Also `BIG_PCLUSTER`: one bit for both.
const FEATURE_INCOMPAT_COMPR_CFGS: u32 = 2;
const FEATURE_INCOMPAT_CHUNKED_FILE: u32 = 4;
const FLAT_PLAIN: u16 = 0;
const COMPRESSED_FULL: u16 = 1;
const FLAT_INLINE: u16 = 2;
const CHUNK_BASED: u16 = 4;
/// A tail up to this long goes inline; the rest of its block is left for
/// the inode and its xattrs (larger xattrs move the tail to a block).
const INLINE_MAX: u64 = BLOCK - 64 - 512;
const DIRENT: usize = 12;

/// Where a file's content went: whole blocks in the data area, and a tail
/// either in the last of those blocks or in the spool (inline later).
#[derive(Debug, Clone, Copy)]
pub struct Content {
    run: Run,
    /// (offset in the spool, length) of an inline tail.
    tail: Option<(u64, u32)>,
    /// The file's chunk map in the builder, when not one plain run.
    map: Option<u32>,
}

/// How an erofs image is written.
#[derive(Debug, Clone, Copy, Default)]
pub struct ErofsOptions {
    /// Compress file data with lz4 (Linux 5.13+ reads it: big pclusters).
    pub lz4: bool,
}

pub struct ErofsBuilder {
    area: BlockArea,
    spool: File,
    spool_len: u64,
    maps: Vec<data::FileMap>,
    opts: ErofsOptions,
    path: PathBuf,
    done: bool,
    /// lz4 chunks are compressed on this thread (with `--compress lz4`).
    lz4: Option<data::Lz4Worker>,
}

impl Drop for ErofsBuilder {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ErofsStats {
    pub inodes: u64,
    pub blocks: u64,
    pub compact_inodes: u64,
    /// Files written lz4-compressed, and chunk-based with holes.
    pub compressed_files: u64,
    pub sparse_files: u64,
}

fn werr(e: io::Error) -> ExportError {
    ExportError::Write(e)
}

/// crc32c as the kernel computes the superblock checksum: seed !0, no
/// final inversion. Hand-written: 12 lines, run once per image.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ if crc & 1 != 0 { 0x82F6_3B78 } else { 0 };
        }
    }
    crc
}

fn file_type(k: EntryType) -> u8 {
    match k {
        EntryType::File => 1,
        EntryType::Dir => 2,
        EntryType::Char => 3,
        EntryType::Block => 4,
        EntryType::Fifo => 5,
        EntryType::Symlink => 7,
    }
}

/// One inode as it will be written.
struct Rec {
    id: NodeId,
    extended: bool,
    layout: u16,
    size: u64,
    nlink: u32,
    xattrs: Vec<u8>,
    /// Bytes written inline after the inode and xattrs.
    inline: InlineSrc,
    /// The first data block (`FLAT_PLAIN` and full blocks of `FLAT_INLINE`).
    blkaddr: u32,
    /// Data blocks of a file in the area (0 for the rest).
    blocks: u64,
    /// A chunk-based or compressed file's map.
    map: Option<u32>,
    nid: u64,
}

enum InlineSrc {
    None,
    Spool(u64, u32),
    Bytes(Vec<u8>),
}

impl InlineSrc {
    fn len(&self) -> usize {
        match self {
            InlineSrc::None => 0,
            InlineSrc::Spool(_, n) => *n as usize,
            InlineSrc::Bytes(b) => b.len(),
        }
    }
}

impl Rec {
    fn meta_len(&self) -> usize {
        (if self.extended { 64 } else { 32 }) + self.xattrs.len() + self.inline.len()
    }
}

/// Directory content: blocks of dirents (sorted names, `.` and `..`
/// among them), each block's names after its dirents. Returns the blocks,
/// the last one cut to what it uses.
/// A directory's entries, `.` and `..` included, sorted by name.
type DirNames<'a> = Vec<(&'a [u8], NodeId)>;

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

fn dir_blocks<N: AsRef<[u8]>>(entries: &[(N, u64, u8)]) -> Vec<Vec<u8>> {
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < entries.len() {
        let mut j = i;
        let mut used = 0;
        while j < entries.len() && used + DIRENT + entries[j].0.as_ref().len() <= BLOCK as usize {
            used += DIRENT + entries[j].0.as_ref().len();
            j += 1;
        }
        let mut b = Vec::with_capacity(BLOCK as usize);
        let mut nameoff = DIRENT * (j - i);
        for (name, nid, ft) in &entries[i..j] {
            b.extend_from_slice(&nid.to_le_bytes());
            b.extend_from_slice(&(nameoff as u16).to_le_bytes());
            b.push(*ft);
            b.push(0);
            nameoff += name.as_ref().len();
        }
        for (name, _, _) in &entries[i..j] {
            b.extend_from_slice(name.as_ref());
        }
        blocks.push(b);
        i = j;
    }
    blocks
}

impl ErofsBuilder {
    /// Start an image at `out` (created, or truncated); the tail spool is
    /// an unnamed temp file beside it.
    pub fn create(
        out: &Path,
        opts: ErofsOptions,
        cancel: Option<hoist_spec::Cancel>,
    ) -> Result<ErofsBuilder, ExportError> {
        // Read back too: files move within the image (compaction, tails
        // that do not fit beside their inode).
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(out)
            .map_err(|e| ExportError::io("create", out, e))?;
        let dir = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let spool = tempfile::tempfile_in(&dir)
            .map_err(|e| ExportError::io("create a spool in", &dir, e))?;
        Ok(ErofsBuilder {
            area: BlockArea::new(file, 1, cancel),
            spool,
            spool_len: 0,
            maps: Vec::new(),
            lz4: opts.lz4.then(data::Lz4Worker::new),
            opts,
            path: out.to_path_buf(),
            done: false,
        })
    }

    /// Lay out the inodes, directories and superblock of the finished
    /// merged tree and write them; fsync. `uuid` and `build_time` make the
    /// image reproducible.
    pub fn finish(
        mut self,
        tree: &MergedTree<Content>,
        uuid: [u8; 16],
    ) -> Result<ErofsStats, ExportError> {
        let r = self.finish_inner(tree, uuid);
        self.done = r.is_ok();
        r
    }

    fn finish_inner(
        &mut self,
        tree: &MergedTree<Content>,
        uuid: [u8; 16],
    ) -> Result<ErofsStats, ExportError> {
        // Every inode once, the root first, then depth-first by name.
        let mut order: Vec<NodeId> = vec![ROOT];
        // Tables indexed by node id (dense): no hashing per node.
        let bound = tree.id_bound();
        let mut seen = vec![false; bound];
        seen[ROOT as usize] = true;
        let mut parent: Vec<NodeId> = vec![ROOT; bound];
        // Each inode's parent and name, for messages: a path is made only
        // when an error needs one.
        let mut up: Vec<Option<(NodeId, &[u8])>> = vec![None; bound];
        let mut stack = vec![ROOT];
        while let Some(dir) = stack.pop() {
            let children = tree.children(dir).expect("a directory");
            for (name, &id) in children {
                if !seen[id as usize] {
                    seen[id as usize] = true;
                    order.push(id);
                    up[id as usize] = Some((dir, &name[..]));
                }
                if matches!(tree.node(id).body, Body::Dir(_)) {
                    parent[id as usize] = dir;
                }
            }
            for (_, &id) in children.iter().rev() {
                if matches!(tree.node(id).body, Body::Dir(_)) {
                    stack.push(id);
                }
            }
        }
        // The most common mtime: inodes with it can be compact.
        let mut freq: BTreeMap<i64, u64> = BTreeMap::new();
        for &id in &order {
            *freq.entry(tree.node(id).meta.mtime).or_default() += 1;
        }
        let build_time = freq
            .iter()
            .max_by_key(|(t, n)| (**n, std::cmp::Reverse(**t)))
            .map_or(0, |(t, _)| *t);

        // Directory sizes depend on names only; their nids come later.
        let shared = xattr::plan(order.iter().map(|&id| &tree.node(id).xattrs[..]));
        let mut dir_names: Vec<Option<DirNames<'_>>> = vec![None; bound];
        let mut recs: Vec<Rec> = Vec::with_capacity(order.len());
        for &id in &order {
            let n = tree.node(id);
            let m = &n.meta;
            let shown = || {
                let mut parts: Vec<&[u8]> = Vec::new();
                let mut at = id;
                while let Some((p, name)) = up[at as usize] {
                    parts.push(name);
                    at = p;
                }
                let mut s = String::new();
                for p in parts.iter().rev() {
                    s.push('/');
                    s.push_str(&String::from_utf8_lossy(p));
                }
                if s.is_empty() {
                    s.push('/');
                }
                s
            };
            let xattrs = xattr::body(&shown, &n.xattrs, &shared)?;
            let mut blocks = 0;
            let mut map = None;
            let (size, layout, inline, blkaddr, nlink) = match &n.body {
                Body::File { size, content } => {
                    let c = content.unwrap_or(Content {
                        run: Run { start: 0, len: 0 },
                        tail: None,
                        map: None,
                    });
                    map = c.map;
                    let (layout, inline) = match (c.tail, c.map) {
                        (_, Some(m)) if self.maps[m as usize].lz4 => {
                            (COMPRESSED_FULL, InlineSrc::None)
                        }
                        (_, Some(_)) => (CHUNK_BASED, InlineSrc::None),
                        (Some((off, len)), None) => (FLAT_INLINE, InlineSrc::Spool(off, len)),
                        (None, None) => (FLAT_PLAIN, InlineSrc::None),
                    };
                    blocks = c.run.len;
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
                    let mut names: Vec<(&[u8], NodeId)> =
                        vec![(&b"."[..], id), (&b".."[..], parent[id as usize])];
                    names.extend(children.iter().map(|(k, &v)| (&k[..], v)));
                    names.sort_unstable();
                    let subdirs = children
                        .values()
                        .filter(|&&c| matches!(tree.node(c).body, Body::Dir(_)))
                        .count() as u32;
                    let size = dir_size(names.iter().map(|(k, _)| k));
                    dir_names[id as usize] = Some(names);
                    // The layout is settled below, once the blocks exist.
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
            });
        }
        // Inline tails that do not fit beside their inode go to a block
        // (a file's tail after its full blocks would break contiguity, so
        // the whole file moves).
        for r in recs.iter_mut() {
            let inode_len = if r.extended { 64 } else { 32 };
            if r.layout == FLAT_INLINE
                && r.inline.len() > 0
                && inode_len + r.xattrs.len() + r.inline.len() > BLOCK as usize
            {
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
        }
        self.compact(&mut recs)?;
        // Chunk maps and lcluster indexes, now that files stay put.
        for r in recs.iter_mut() {
            if let Some(m) = r.map {
                let head = (if r.extended { 64 } else { 32 }) + r.xattrs.len();
                let idx = self.maps[m as usize].index(head, u64::from(r.blkaddr), r.size);
                r.inline = InlineSrc::Bytes(idx);
            }
        }
        // Nids: the metadata area in order, no record across a block.
        let mut off: u64 = 0;
        let mut dir_tail_inline = vec![false; bound];
        for r in recs.iter_mut() {
            let len = if dir_names[r.id as usize].is_some() {
                // A directory's inline tail is its last block's used part,
                // if it fits beside the inode; else that block is data too.
                let tail = (r.size % BLOCK) as usize;
                let head = (if r.extended { 64 } else { 32 }) + r.xattrs.len();
                let fits = tail > 0 && head + tail <= BLOCK as usize;
                dir_tail_inline[r.id as usize] = fits;
                head + if fits { tail } else { 0 }
            } else {
                r.meta_len()
            } as u64;
            if off % BLOCK + len > BLOCK {
                off = off.div_ceil(BLOCK) * BLOCK;
            }
            r.nid = off / 32;
            off += len.div_ceil(32) * 32;
        }
        let mut nid_of = vec![0u64; bound];
        for r in &recs {
            nid_of[r.id as usize] = r.nid;
        }
        // Directory blocks, now that every nid is known.
        for r in recs.iter_mut() {
            let Some(names) = dir_names[r.id as usize].as_ref() else {
                continue;
            };
            let entries: Vec<(&[u8], u64, u8)> = names
                .iter()
                .map(|&(k, c)| (k, nid_of[c as usize], file_type(tree.node(c).meta.kind)))
                .collect();
            let mut blocks = dir_blocks(&entries);
            let tail = if dir_tail_inline[r.id as usize] {
                blocks.pop()
            } else {
                None
            };
            if !blocks.is_empty() {
                let mut all = Vec::with_capacity(blocks.len() * BLOCK as usize);
                for b in &blocks {
                    all.extend_from_slice(b);
                    all.resize(all.len().div_ceil(BLOCK as usize) * BLOCK as usize, 0);
                }
                r.blkaddr = self.area.put(&all).map_err(werr)?.start as u32;
            }
            match tail {
                Some(t) => r.inline = InlineSrc::Bytes(t),
                None => r.layout = FLAT_PLAIN,
            }
        }
        let xattr_blkaddr = if shared.area.is_empty() {
            0
        } else {
            self.area.put(&shared.area).map_err(werr)?.start
        };
        self.area.flush().map_err(werr)?;
        let meta_blkaddr = self.area.next;
        self.write_meta(tree, &recs, meta_blkaddr)?;
        let meta_blocks = off.div_ceil(BLOCK);
        let total = meta_blkaddr + meta_blocks.max(1);

        let mut sb = [0u8; BLOCK as usize];
        let s = &mut sb[SB_OFFSET..];
        s[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        s[8..12].copy_from_slice(&FEATURE_COMPAT_SB_CHKSUM.to_le_bytes());
        s[12] = 12; // 4 KiB blocks
        s[14..16].copy_from_slice(&(recs[0].nid as u16).to_le_bytes());
        s[16..24].copy_from_slice(&(recs.len() as u64).to_le_bytes());
        s[24..32].copy_from_slice(&(build_time.max(0) as u64).to_le_bytes());
        s[36..40].copy_from_slice(&(total as u32).to_le_bytes());
        s[40..44].copy_from_slice(&(meta_blkaddr as u32).to_le_bytes());
        s[44..48].copy_from_slice(&(xattr_blkaddr as u32).to_le_bytes());
        s[48..64].copy_from_slice(&uuid);
        let lz4 = recs.iter().any(|r| r.layout == COMPRESSED_FULL);
        let chunked = recs.iter().any(|r| r.layout == CHUNK_BASED);
        let mut incompat = 0;
        if lz4 {
            incompat |= FEATURE_INCOMPAT_ZERO_PADDING | FEATURE_INCOMPAT_COMPR_CFGS;
            // available_compr_algs: lz4; its config record follows the
            // 128-byte superblock: size, max distance, max pcluster blocks.
            s[84..86].copy_from_slice(&1u16.to_le_bytes());
            s[128..130].copy_from_slice(&14u16.to_le_bytes());
            s[130..132].copy_from_slice(&u16::MAX.to_le_bytes());
            s[132..134].copy_from_slice(&data::LZ4_MAX_PCLUSTER_BLOCKS.to_le_bytes());
        }
        if chunked {
            incompat |= FEATURE_INCOMPAT_CHUNKED_FILE;
        }
        s[80..84].copy_from_slice(&incompat.to_le_bytes());
        let crc = crc32c(&sb[SB_OFFSET..]);
        sb[SB_OFFSET + 4..SB_OFFSET + 8].copy_from_slice(&crc.to_le_bytes());
        let f = &self.area.file;
        f.write_all_at(&sb, 0).map_err(werr)?;
        f.set_len(total * BLOCK).map_err(werr)?;
        f.sync_all().map_err(werr)?;
        Ok(ErofsStats {
            inodes: recs.len() as u64,
            blocks: total,
            compact_inodes: recs.iter().filter(|r| !r.extended).count() as u64,
            compressed_files: recs.iter().filter(|r| r.layout == COMPRESSED_FULL).count() as u64,
            sparse_files: recs.iter().filter(|r| r.layout == CHUNK_BASED).count() as u64,
        })
    }

    /// Files that later layers deleted left holes in the data area: move the
    /// files nearest its end into them (best fit, only ever to an earlier
    /// block), then end the area where its live data ends. Files of more
    /// than 64 MiB stay where they are (they may be sparse, and copying
    /// would fill their holes).
    fn compact(&mut self, recs: &mut [Rec]) -> Result<(), ExportError> {
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
            self.area.copy_run(start, hs, len).map_err(werr)?;
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
            .unwrap_or(1)
            .max(1);
        let holes: Vec<(u64, u64)> = self.area.holes.iter().copied().collect();
        self.area.holes.clear();
        for (l, s) in holes {
            if s < end {
                self.area.holes.insert(((s + l).min(end) - s, s));
            }
        }
        self.area.next = end;
        Ok(())
    }

    fn write_meta(
        &mut self,
        tree: &MergedTree<Content>,
        recs: &[Rec],
        meta_blkaddr: u64,
    ) -> Result<(), ExportError> {
        let mut f = self.area.file.try_clone().map_err(werr)?;
        f.seek(SeekFrom::Start(meta_blkaddr * BLOCK))
            .map_err(werr)?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        let mut window = Window::default();
        let mut pos: u64 = 0;
        for (i, r) in recs.iter().enumerate() {
            let at = r.nid * 32;
            if at > pos {
                w.write_all(&vec![0u8; (at - pos) as usize]).map_err(werr)?;
                pos = at;
            }
            let m = &tree.node(r.id).meta;
            let mode = (type_bits(m.kind) | m.mode) as u16;
            let icount: u16 = if r.xattrs.is_empty() {
                0
            } else {
                1 + ((r.xattrs.len() - 12) / 4) as u16
            };
            let iu: u32 = match (m.kind, r.layout) {
                (EntryType::Char | EntryType::Block, _) => {
                    (m.minor & 0xff) | (m.major << 8) | ((m.minor & !0xff) << 12)
                }
                (_, CHUNK_BASED) => u32::from(data::CHUNK_BITS),
                (_, COMPRESSED_FULL) => r.blocks as u32,
                _ => r.blkaddr,
            };
            let ino = i as u32 + 1;
            let mut b = Vec::with_capacity(64);
            if r.extended {
                b.extend_from_slice(&((r.layout << 1) | 1).to_le_bytes());
                b.extend_from_slice(&icount.to_le_bytes());
                b.extend_from_slice(&mode.to_le_bytes());
                b.extend_from_slice(&0u16.to_le_bytes());
                b.extend_from_slice(&r.size.to_le_bytes());
                b.extend_from_slice(&iu.to_le_bytes());
                b.extend_from_slice(&ino.to_le_bytes());
                b.extend_from_slice(&(m.uid as u32).to_le_bytes());
                b.extend_from_slice(&(m.gid as u32).to_le_bytes());
                b.extend_from_slice(&(m.mtime.max(0) as u64).to_le_bytes());
                b.extend_from_slice(&0u32.to_le_bytes());
                b.extend_from_slice(&r.nlink.to_le_bytes());
                b.extend_from_slice(&[0u8; 16]);
            } else {
                b.extend_from_slice(&(r.layout << 1).to_le_bytes());
                b.extend_from_slice(&icount.to_le_bytes());
                b.extend_from_slice(&mode.to_le_bytes());
                b.extend_from_slice(&(r.nlink as u16).to_le_bytes());
                b.extend_from_slice(&(r.size as u32).to_le_bytes());
                b.extend_from_slice(&0u32.to_le_bytes());
                b.extend_from_slice(&iu.to_le_bytes());
                b.extend_from_slice(&ino.to_le_bytes());
                b.extend_from_slice(&(m.uid as u16).to_le_bytes());
                b.extend_from_slice(&(m.gid as u16).to_le_bytes());
                b.extend_from_slice(&0u32.to_le_bytes());
            }
            b.extend_from_slice(&r.xattrs);
            match &r.inline {
                InlineSrc::None => {}
                InlineSrc::Bytes(x) => b.extend_from_slice(x),
                InlineSrc::Spool(off, len) => {
                    b.extend_from_slice(
                        window.get(&self.spool, *off, *len as usize).map_err(werr)?,
                    );
                }
            }
            w.write_all(&b).map_err(werr)?;
            pos += b.len() as u64;
        }
        let end = pos.div_ceil(BLOCK) * BLOCK;
        w.write_all(&vec![0u8; (end - pos) as usize])
            .map_err(werr)?;
        w.flush().map_err(werr)?;
        Ok(())
    }
}

/// A read-ahead window over the tail spool: tails are spooled in the order
/// the layers stream them and read back in inode order, which is mostly
/// the same, so one read of a window serves many tails (a read per tail
/// cost 40,000 system calls on rig/big).
#[derive(Default)]
struct Window {
    start: u64,
    data: Vec<u8>,
}

impl Window {
    const SIZE: usize = 64 << 10;

    fn get(&mut self, spool: &std::fs::File, off: u64, len: usize) -> io::Result<&[u8]> {
        let inside = off >= self.start && off + len as u64 <= self.start + self.data.len() as u64;
        if !inside {
            let want = len.max(Self::SIZE);
            self.data.resize(want, 0);
            let mut got = 0;
            while got < want {
                let n = spool.read_at(&mut self.data[got..], off + got as u64)?;
                if n == 0 {
                    break;
                }
                got += n;
            }
            if got < len {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "tail spool is short",
                ));
            }
            self.data.truncate(got);
            self.start = off;
        }
        let at = (off - self.start) as usize;
        Ok(&self.data[at..at + len])
    }
}

impl ContentSink for ErofsBuilder {
    type Handle = Content;

    fn store(&mut self, size: u64, r: &mut dyn Read) -> io::Result<Content> {
        if self.opts.lz4 && size > BLOCK && size <= data::CHUNK {
            let mut all = vec![0u8; size as usize];
            r.read_exact(&mut all)?;
            if let Some(c) = self.store_small_lz4(&all)? {
                return Ok(c);
            }
            return self.store_flat(size, &mut &all[..]);
        }
        if size >= data::HOLE_MIN || (self.opts.lz4 && size > data::CHUNK) {
            return Ok(
                match data::store(&mut self.area, size, r, self.opts.lz4, self.lz4.as_ref())? {
                    data::Stored::Flat(run) => Content {
                        run,
                        tail: None,
                        map: None,
                    },
                    data::Stored::Mapped(run, m) => {
                        self.maps.push(m);
                        Content {
                            run,
                            tail: None,
                            map: Some(self.maps.len() as u32 - 1),
                        }
                    }
                },
            );
        }
        self.store_flat(size, r)
    }

    fn release(&mut self, h: Content) {
        self.area.release(h.run);
    }
}

impl ErofsBuilder {
    /// A file of one chunk or less, compressed if that saves a block over
    /// the plain layout with its tail inline.
    fn store_small_lz4(&mut self, all: &[u8]) -> io::Result<Option<Content>> {
        let size = all.len() as u64;
        let c = lz4_flex::block::compress(all);
        let blocks = (c.len() as u64).div_ceil(BLOCK);
        let tail = size % BLOCK;
        let plain = size / BLOCK + u64::from(tail > INLINE_MAX);
        if blocks >= plain {
            return Ok(None);
        }
        let start = self.area.alloc(blocks);
        self.area
            .put_at(start, (blocks * BLOCK) as usize - c.len(), &c)?;
        self.maps.push(data::FileMap {
            pieces: vec![data::Piece::Lz4 {
                at: 0,
                blocks: blocks as u32,
            }],
            lz4: true,
        });
        Ok(Some(Content {
            run: Run { start, len: blocks },
            tail: None,
            map: Some(self.maps.len() as u32 - 1),
        }))
    }

    /// A plain run, its tail spooled for inlining when short enough.
    fn store_flat(&mut self, size: u64, r: &mut dyn Read) -> io::Result<Content> {
        let tail_len = size % BLOCK;
        let inline = tail_len > 0 && tail_len <= INLINE_MAX;
        let blocks = size / BLOCK + u64::from(tail_len > 0 && !inline);
        let in_area = if inline { size - tail_len } else { size };
        let run = if blocks > 0 {
            let fresh = self.area.next;
            let start = self.area.alloc(blocks);
            self.area.write_stream(start, fresh, in_area, r)?;
            Run { start, len: blocks }
        } else {
            Run { start: 0, len: 0 }
        };
        let tail = if inline {
            let mut t = vec![0u8; tail_len as usize];
            r.read_exact(&mut t)?;
            let off = self.spool_len;
            self.spool.write_all_at(&t, off)?;
            self.spool_len += tail_len;
            Some((off, tail_len as u32))
        } else {
            None
        };
        Ok(Content {
            run,
            tail,
            map: None,
        })
    }
}

mod data;
#[cfg(test)]
mod lz4_tests;
#[cfg(test)]
mod tests;
mod xattr;
#[cfg(test)]
mod xattr_tests;
