//! After the last layer: number the inodes, write directory, symlink,
//! extent-leaf and xattr blocks, size the filesystem, then write the inode
//! tables, bitmaps, group descriptors and superblock.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;

use hoist_unpack::{Body, EntryType, MergedTree, Node, NodeId, ROOT};

use super::disk::{
    self, GroupDesc, Inode, Run, Super, BLOCK, BLOCKS_PER_GROUP, EXTENTS_FL, FIRST_INO,
    INODES_PER_BLOCK, INODE_SIZE, ROOT_INO,
};
use super::xattr::{self, Placement};
use super::{werr, Ext4Builder, Ext4Stats};
use crate::error::ExportError;
use crate::tree::Walk;

const S_IFIFO: u16 = 0o010000;
const S_IFCHR: u16 = 0o020000;
const S_IFDIR: u16 = 0o040000;
const S_IFBLK: u16 = 0o060000;
const S_IFREG: u16 = 0o100000;
const S_IFLNK: u16 = 0o120000;
/// ext4's limit on a file's links; directories above it count 1
/// (`dir_nlink`).
const MAX_LINKS: u32 = 65000;

struct Numbering {
    ino_of: HashMap<NodeId, u32>,
    /// Node of each inode from `FIRST_INO` on (`None`: our lost+found).
    nodes: Vec<Option<NodeId>>,
    /// Parent directory inode of each directory.
    parent: HashMap<NodeId, u32>,
    /// We add /lost+found (the image has none).
    our_lost_found: bool,
}

/// The root is 2 and /lost+found 11 (the image's, or ours if the name is
/// free), the rest from 12, parents before children, hardlinks sharing.
fn number(tree: &MergedTree<Run>) -> Numbering {
    let lf = tree
        .children(ROOT)
        .and_then(|c| c.get(&b"lost+found"[..]).copied());
    let mut n = Numbering {
        ino_of: HashMap::new(),
        nodes: vec![None],
        parent: HashMap::new(),
        our_lost_found: lf.is_none(),
    };
    n.ino_of.insert(ROOT, ROOT_INO);
    n.parent.insert(ROOT, ROOT_INO);
    if let Some(id) = lf.filter(|&id| matches!(tree.node(id).body, Body::Dir(_))) {
        n.ino_of.insert(id, FIRST_INO);
        n.nodes[0] = Some(id);
    }
    let walk = Walk::new(tree);
    for &id in &walk.order[1..] {
        if !n.ino_of.contains_key(&id) {
            n.ino_of.insert(id, FIRST_INO + n.nodes.len() as u32);
            n.nodes.push(Some(id));
        }
    }
    for &id in &walk.order[1..] {
        if let Body::Dir(_) = tree.node(id).body {
            n.parent.insert(id, n.ino_of[&walk.parent[id as usize]]);
        }
    }
    n
}

fn too_big(what: String) -> ExportError {
    ExportError::Unsupported(what)
}

fn shown(n: &Numbering, id: NodeId) -> String {
    format!("inode {}", n.ino_of.get(&id).copied().unwrap_or(0))
}

impl Ext4Builder {
    /// Lay out everything but the file data and write it. `tree` must be
    /// the merged tree whose contents went through this builder, finished.
    /// On error (or if the builder is dropped unfinished) the output file
    /// is removed.
    pub fn finish(mut self, tree: &MergedTree<Run>) -> Result<Ext4Stats, ExportError> {
        let r = self.finish_inner(tree);
        self.done = r.is_ok();
        r
    }

    /// Extents for `run` (writing leaf blocks if it needs more than four):
    /// `i_block` and the leaf count.
    fn extent_tree(&mut self, run: Run) -> Result<([u8; 60], u64), ExportError> {
        let ext = disk::extents(run);
        let leaves = disk::leaf_blocks(ext.len());
        if leaves == 0 {
            return Ok((disk::inline_tree(&ext), 0));
        }
        if leaves > 4 {
            return Err(too_big(format!(
                "a file of {} bytes needs a deeper extent tree than hoist writes",
                run.len * BLOCK
            )));
        }
        let at: Vec<u64> = (0..leaves).map(|_| self.area.alloc(1)).collect();
        let (ib, blocks) = disk::indexed_tree(&ext, &at);
        for (b, &a) in blocks.iter().zip(&at) {
            self.area.seek(a).map_err(werr)?;
            self.area.buf.extend_from_slice(b);
        }
        Ok((ib, leaves as u64))
    }

    fn inode_for(
        &mut self,
        n: &Numbering,
        id: NodeId,
        node: &Node<Run>,
        dir_runs: &HashMap<NodeId, (Run, u32)>,
    ) -> Result<[u8; INODE_SIZE], ExportError> {
        let m = &node.meta;
        let ids = |v: u64| {
            u32::try_from(v).map_err(|_| too_big(format!("{}: id {v} out of range", shown(n, id))))
        };
        let mut ino = Inode {
            mode: (m.mode & 0o7777) as u16,
            uid: ids(m.uid)?,
            gid: ids(m.gid)?,
            size: 0,
            time: m.mtime,
            links: 0,
            blocks: 0,
            flags: 0,
            block: [0; 60],
            xattr_block: 0,
            xattrs: None,
        };
        if node.links > MAX_LINKS {
            return Err(too_big(format!(
                "{} has {} links, more than ext4 allows",
                shown(n, id),
                node.links
            )));
        }
        ino.links = node.links as u16;
        match &node.body {
            Body::Dir(_) => {
                let (run, subdirs) = dir_runs[&id];
                ino.mode |= S_IFDIR;
                let links = 2 + subdirs;
                ino.links = if links > MAX_LINKS { 1 } else { links as u16 };
                ino.size = run.len * BLOCK;
                let (ib, leaves) = self.extent_tree(run)?;
                ino.block = ib;
                ino.flags = EXTENTS_FL;
                ino.blocks = run.len + leaves;
            }
            Body::File { size, content } => {
                ino.mode |= S_IFREG;
                ino.size = *size;
                ino.flags = EXTENTS_FL;
                let run = content.unwrap_or(Run { start: 0, len: 0 });
                let (ib, leaves) = self.extent_tree(run)?;
                ino.block = ib;
                ino.blocks = run.len + leaves;
            }
            Body::Symlink(target) => {
                ino.mode |= S_IFLNK;
                ino.size = target.len() as u64;
                if target.len() < 60 {
                    ino.block[..target.len()].copy_from_slice(target);
                } else if target.len() < BLOCK as usize {
                    let run = self.area.put(target).map_err(werr)?;
                    let (ib, _) = self.extent_tree(run)?;
                    ino.block = ib;
                    ino.flags = EXTENTS_FL;
                    ino.blocks = 1;
                } else {
                    return Err(too_big(format!(
                        "{}: a symlink target of {} bytes",
                        shown(n, id),
                        target.len()
                    )));
                }
            }
            Body::Special => {
                ino.mode |= match m.kind {
                    EntryType::Char => S_IFCHR,
                    EntryType::Block => S_IFBLK,
                    _ => S_IFIFO,
                };
                if matches!(m.kind, EntryType::Char | EntryType::Block) {
                    ino.block = disk::device_block(m.major, m.minor);
                }
            }
        }
        let attrs = xattr::prepare(&node.xattrs, &shown(n, id));
        match xattr::place(&attrs, &shown(n, id))? {
            Placement::None => {}
            Placement::Inode(area) => ino.xattrs = Some(area),
            Placement::Block(b) => {
                ino.xattr_block = self.area.put(&b).map_err(werr)?.start;
                ino.blocks += 1;
            }
        }
        Ok(disk::inode(&ino))
    }

    fn finish_inner(&mut self, tree: &MergedTree<Run>) -> Result<Ext4Stats, ExportError> {
        let n = number(tree);
        let last_ino = FIRST_INO - 1 + n.nodes.len() as u32;

        // Directory blocks, root first.
        let mut dir_runs: HashMap<NodeId, (Run, u32)> = HashMap::new();
        let dirs = std::iter::once(ROOT).chain(n.nodes.iter().flatten().copied());
        for id in dirs.collect::<Vec<_>>() {
            let Some(children) = tree.children(id) else {
                continue;
            };
            let mut entries: Vec<(u32, &[u8], u8)> =
                vec![(n.ino_of[&id], b".", 2), (n.parent[&id], b"..", 2)];
            let mut subdirs = 0;
            if id == ROOT && n.our_lost_found {
                entries.push((FIRST_INO, b"lost+found", 2));
                subdirs += 1;
            }
            for (name, &c) in children {
                if name.len() > 255 {
                    return Err(too_big(format!(
                        "{:?}: a name longer than 255 bytes",
                        String::from_utf8_lossy(name)
                    )));
                }
                let cn = tree.node(c);
                let ft = match (&cn.body, cn.meta.kind) {
                    (Body::Dir(_), _) => {
                        subdirs += 1;
                        2
                    }
                    (Body::File { .. }, _) => 1,
                    (Body::Symlink(_), _) => 7,
                    (_, EntryType::Char) => 3,
                    (_, EntryType::Block) => 4,
                    _ => 5,
                };
                entries.push((n.ino_of[&c], &name[..], ft));
            }
            let run = self.area.put(&disk::dir_blocks(&entries)).map_err(werr)?;
            dir_runs.insert(id, (run, subdirs));
        }

        // Inodes 1..=last_ino; the reserved ones stay zero.
        let mut table = vec![0u8; last_ino as usize * INODE_SIZE];
        let mut slot = |ino: u32, b: &[u8; INODE_SIZE]| {
            let at = (ino as usize - 1) * INODE_SIZE;
            table[at..at + INODE_SIZE].copy_from_slice(b);
        };
        let mut used_dirs_by_ino: Vec<u32> = vec![ROOT_INO];
        let root = self.inode_for(&n, ROOT, tree.node(ROOT), &dir_runs)?;
        slot(ROOT_INO, &root);
        if n.our_lost_found {
            let run = self
                .area
                .put(&disk::dir_blocks(&[
                    (FIRST_INO, b".", 2),
                    (ROOT_INO, b"..", 2),
                ]))
                .map_err(werr)?;
            let b = disk::inode(&Inode {
                mode: S_IFDIR | 0o700,
                uid: 0,
                gid: 0,
                size: BLOCK,
                time: self.opts.timestamp,
                links: 2,
                blocks: 1,
                flags: EXTENTS_FL,
                block: disk::inline_tree(&disk::extents(run)),
                xattr_block: 0,
                xattrs: None,
            });
            slot(FIRST_INO, &b);
            used_dirs_by_ino.push(FIRST_INO);
        }
        let mut data_bytes = 0;
        for (i, id) in n.nodes.iter().enumerate() {
            let Some(id) = *id else { continue };
            let node = tree.node(id);
            let ino = FIRST_INO + i as u32;
            match node.body {
                Body::Dir(_) => used_dirs_by_ino.push(ino),
                Body::File { size, .. } => data_bytes += size,
                _ => {}
            }
            let b = self.inode_for(&n, id, node, &dir_runs)?;
            slot(ino, &b);
        }
        self.area.flush().map_err(werr)?;
        let layout = self.size(last_ino)?;
        let (free_blocks, free_inodes) =
            self.write_metadata(&layout, &table, last_ino, &n, &used_dirs_by_ino)?;
        Ok(Ext4Stats {
            size: layout.total * BLOCK,
            inodes: u64::from(layout.ipg) * layout.groups,
            free_blocks,
            free_inodes,
            data_bytes,
        })
    }
}

pub(super) struct Layout {
    pub total: u64,
    pub groups: u64,
    pub ipg: u32,
    /// First block of the bitmaps and inode tables.
    pub meta_start: u64,
}

impl Ext4Builder {
    /// Groups, inodes per group and total size, for `last_ino` inodes and
    /// the blocks written so far.
    fn size(&self, last_ino: u32) -> Result<Layout, ExportError> {
        let used = u64::from(last_ino);
        let data_end = self.area.next;
        let ipg_for = |g: u64, want: u64| {
            let per = want.div_ceil(g).div_ceil(INODES_PER_BLOCK) * INODES_PER_BLOCK;
            per.max(INODES_PER_BLOCK)
        };
        let (total, groups, ipg) = match self.opts.size {
            Some(bytes) => {
                let total = bytes / BLOCK;
                let groups = total.div_ceil(BLOCKS_PER_GROUP).max(1);
                // mke2fs's default of one inode per 16 KiB, at least what
                // the tree needs.
                let want = (bytes / 16384).max(used + used / 20 + 64);
                let ipg = ipg_for(groups, want).min(BLOCKS_PER_GROUP);
                let needed_meta = groups * (2 + ipg / INODES_PER_BLOCK);
                if ipg * groups < used || data_end + needed_meta > total {
                    let needed = (data_end + needed_meta) * BLOCK;
                    return Err(ExportError::TooSmall {
                        size: bytes,
                        needed: needed.max(bytes + BLOCK),
                    });
                }
                (total, groups, ipg)
            }
            None => {
                let want = used + used / 20 + 64;
                let mut groups = 1;
                loop {
                    let ipg = ipg_for(groups, want);
                    if ipg > BLOCKS_PER_GROUP {
                        groups += 1;
                        continue;
                    }
                    let meta_end = data_end + groups * (2 + ipg / INODES_PER_BLOCK);
                    let mut total = meta_end + (meta_end / 100).max(64);
                    if total.div_ceil(BLOCKS_PER_GROUP) > groups {
                        groups += 1;
                        continue;
                    }
                    // Never leave a last group of only a few blocks.
                    total = total.max((groups - 1) * BLOCKS_PER_GROUP + 256);
                    break (total, groups, ipg);
                }
            }
        };
        let gdt_needed = (groups * 32).div_ceil(BLOCK);
        if gdt_needed > self.gdt_blocks {
            return Err(too_big(format!(
                "an ext4 image of {} bytes is larger than hoist lays out without a fixed --size",
                total * BLOCK
            )));
        }
        Ok(Layout {
            total,
            groups,
            ipg: ipg as u32,
            meta_start: data_end,
        })
    }

    fn write_metadata(
        &mut self,
        l: &Layout,
        table: &[u8],
        last_ino: u32,
        n: &Numbering,
        dirs: &[u32],
    ) -> Result<(u64, u64), ExportError> {
        let groups = l.groups as usize;
        let itb = u64::from(l.ipg) / INODES_PER_BLOCK;
        let block_bitmap_at = |g: u64| l.meta_start + g;
        let inode_bitmap_at = |g: u64| l.meta_start + l.groups + g;
        let table_at = |g: u64| l.meta_start + 2 * l.groups + g * itb;
        let meta_end = table_at(l.groups);

        // Blocks in use: superblock and descriptors, data written since
        // (less the holes), bitmaps and tables.
        let bytes_per_group = (BLOCKS_PER_GROUP / 8) as usize;
        let mut bits = vec![0u8; groups * bytes_per_group];
        let mut mark = |from: u64, to: u64, on: bool| {
            for b in from..to {
                let (i, m) = ((b / 8) as usize, 1u8 << (b % 8));
                if on {
                    bits[i] |= m;
                } else {
                    bits[i] &= !m;
                }
            }
        };
        mark(0, 1 + (l.groups * 32).div_ceil(BLOCK), true);
        mark(1 + self.gdt_blocks, l.meta_start, true);
        for &(len, start) in &self.area.holes {
            mark(start, start + len, false);
        }
        mark(l.meta_start, meta_end, true);
        // Bits past the end of the filesystem are set, as e2fsck expects.
        mark(l.total, l.groups * BLOCKS_PER_GROUP, true);

        let mut ibits = vec![0u8; groups * bytes_per_group];
        let mut used_inodes = vec![0u32; groups];
        let lf_free = !n.our_lost_found && n.nodes[0].is_none();
        for ino in 1..=last_ino {
            if ino == FIRST_INO && lf_free {
                continue;
            }
            let i = u64::from(ino - 1);
            let g = (i / u64::from(l.ipg)) as usize;
            let k = g * bytes_per_group * 8 + (i % u64::from(l.ipg)) as usize;
            ibits[k / 8] |= 1 << (k % 8);
            used_inodes[g] += 1;
        }
        for g in 0..groups {
            for k in l.ipg as usize..bytes_per_group * 8 {
                let k = g * bytes_per_group * 8 + k;
                ibits[k / 8] |= 1 << (k % 8);
            }
        }
        let mut used_dirs = vec![0u16; groups];
        for &d in dirs {
            used_dirs[((d - 1) / l.ipg) as usize] += 1;
        }

        let mut gdt = vec![0u8; (groups * 32).div_ceil(BLOCK as usize) * BLOCK as usize];
        let mut free_blocks = 0u64;
        for g in 0..groups {
            let bm = &bits[g * bytes_per_group..(g + 1) * bytes_per_group];
            let used: u32 = bm.iter().map(|b| b.count_ones()).sum();
            let free = BLOCKS_PER_GROUP as u32 - used;
            free_blocks += u64::from(free);
            disk::group_desc(
                &GroupDesc {
                    block_bitmap: block_bitmap_at(g as u64) as u32,
                    inode_bitmap: inode_bitmap_at(g as u64) as u32,
                    inode_table: table_at(g as u64) as u32,
                    free_blocks: free as u16,
                    free_inodes: (l.ipg - used_inodes[g]) as u16,
                    used_dirs: used_dirs[g],
                },
                &mut gdt[g * 32..(g + 1) * 32],
            );
        }
        let w = |at: u64, data: &[u8]| self.area.file.write_all_at(data, at).map_err(werr);
        w(block_bitmap_at(0) * BLOCK, &bits)?;
        w(inode_bitmap_at(0) * BLOCK, &ibits)?;
        // Inode tables are contiguous, group after group: the used inodes
        // are one slice at the start (the rest reads as zeros).
        w(table_at(0) * BLOCK, table)?;
        w(BLOCK, &gdt)?;
        let total_inodes = u64::from(l.ipg) * l.groups;
        let used_total: u64 = used_inodes.iter().map(|&u| u64::from(u)).sum();
        let time = self.opts.timestamp.clamp(0, i64::from(u32::MAX)) as u32;
        let sb = disk::superblock(&Super {
            inodes_count: total_inodes as u32,
            blocks_count: l.total,
            free_blocks,
            free_inodes: (total_inodes - used_total) as u32,
            inodes_per_group: l.ipg,
            time,
            uuid: self.opts.uuid,
            hash_seed: self.opts.hash_seed,
            log_groups_per_flex: 4,
        });
        w(1024, &sb)?;
        self.area.file.set_len(l.total * BLOCK).map_err(werr)?;
        self.area.file.sync_all().map_err(werr)?;
        Ok((free_blocks, total_inodes - used_total))
    }
}
