//! ext4 on-disk structures, as the kernel's `fs/ext4/ext4.h` and
//! e2fsprogs' `ext2_fs.h` lay them out: superblock, 32-byte group
//! descriptors (no `64bit`), 256-byte inodes, extent trees, linear
//! directory blocks. Only what hoist writes; no checksums (no
//! `metadata_csum`).

pub use crate::blocks::BLOCK;
pub const BLOCKS_PER_GROUP: u64 = 32768;
pub const INODE_SIZE: usize = 256;
pub const INODES_PER_BLOCK: u64 = BLOCK / INODE_SIZE as u64;
pub const FIRST_INO: u32 = 11;
pub const ROOT_INO: u32 = 2;
/// Longest run one extent maps (initialised extents).
pub const MAX_EXTENT: u64 = 32768;
/// Extents in a leaf block: (4096 - 12-byte header) / 12.
pub const LEAF_EXTENTS: usize = 340;

const EXTENT_MAGIC: u16 = 0xF30A;
pub const EXTENTS_FL: u32 = 0x80000;

// Feature bits.
const COMPAT_EXT_ATTR: u32 = 0x0008;
const COMPAT_DIR_INDEX: u32 = 0x0020;
const COMPAT_SPARSE_SUPER2: u32 = 0x0200;
const INCOMPAT_FILETYPE: u32 = 0x0002;
const INCOMPAT_EXTENTS: u32 = 0x0040;
const INCOMPAT_FLEX_BG: u32 = 0x0200;
const RO_COMPAT_SPARSE_SUPER: u32 = 0x0001;
const RO_COMPAT_LARGE_FILE: u32 = 0x0002;
const RO_COMPAT_HUGE_FILE: u32 = 0x0008;
const RO_COMPAT_DIR_NLINK: u32 = 0x0020;
const RO_COMPAT_EXTRA_ISIZE: u32 = 0x0040;

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// What the superblock records.
pub struct Super {
    pub inodes_count: u32,
    pub blocks_count: u64,
    pub free_blocks: u64,
    pub free_inodes: u32,
    pub inodes_per_group: u32,
    pub time: u32,
    pub uuid: [u8; 16],
    pub hash_seed: [u8; 16],
    pub log_groups_per_flex: u8,
}

/// The 1024-byte superblock (at byte 1024 of the image).
pub fn superblock(s: &Super) -> Vec<u8> {
    let mut b = vec![0u8; 1024];
    put32(&mut b, 0, s.inodes_count);
    put32(&mut b, 4, s.blocks_count as u32);
    put32(&mut b, 12, s.free_blocks as u32);
    put32(&mut b, 16, s.free_inodes);
    put32(&mut b, 20, 0); // s_first_data_block: 0 with 4 KiB blocks
    put32(&mut b, 24, 2); // log2(4096) - 10
    put32(&mut b, 28, 2);
    put32(&mut b, 32, BLOCKS_PER_GROUP as u32);
    put32(&mut b, 36, BLOCKS_PER_GROUP as u32);
    put32(&mut b, 40, s.inodes_per_group);
    put32(&mut b, 44, 0); // s_mtime: never mounted
    put32(&mut b, 48, s.time); // s_wtime
    put16(&mut b, 52, 0);
    put16(&mut b, 54, 0xFFFF); // s_max_mnt_count -1: no forced checks
    put16(&mut b, 56, 0xEF53);
    put16(&mut b, 58, 1); // clean
    put16(&mut b, 60, 1); // errors: continue
    put32(&mut b, 64, s.time); // s_lastcheck
    put32(&mut b, 76, 1); // dynamic revision
    put32(&mut b, 84, FIRST_INO);
    put16(&mut b, 88, INODE_SIZE as u16);
    put32(
        &mut b,
        92,
        COMPAT_EXT_ATTR | COMPAT_DIR_INDEX | COMPAT_SPARSE_SUPER2,
    );
    put32(
        &mut b,
        96,
        INCOMPAT_FILETYPE | INCOMPAT_EXTENTS | INCOMPAT_FLEX_BG,
    );
    put32(
        &mut b,
        100,
        RO_COMPAT_SPARSE_SUPER
            | RO_COMPAT_LARGE_FILE
            | RO_COMPAT_HUGE_FILE
            | RO_COMPAT_DIR_NLINK
            | RO_COMPAT_EXTRA_ISIZE,
    );
    b[104..120].copy_from_slice(&s.uuid);
    for (i, w) in s.hash_seed.chunks(4).enumerate() {
        b[236 + 4 * i..240 + 4 * i].copy_from_slice(w);
    }
    b[252] = 1; // s_def_hash_version: half_md4, as mke2fs
    put32(&mut b, 264, s.time); // s_mkfs_time
    put16(&mut b, 348, 32); // s_min_extra_isize
    put16(&mut b, 350, 32); // s_want_extra_isize
    put32(&mut b, 352, 0x2); // s_flags: unsigned directory hash
    b[372] = s.log_groups_per_flex;
    // s_backup_bgs (0x24C) stay 0: with sparse_super2, no backup copies.
    b
}

pub struct GroupDesc {
    pub block_bitmap: u32,
    pub inode_bitmap: u32,
    pub inode_table: u32,
    pub free_blocks: u16,
    pub free_inodes: u16,
    pub used_dirs: u16,
}

pub fn group_desc(g: &GroupDesc, out: &mut [u8]) {
    put32(out, 0, g.block_bitmap);
    put32(out, 4, g.inode_bitmap);
    put32(out, 8, g.inode_table);
    put16(out, 12, g.free_blocks);
    put16(out, 14, g.free_inodes);
    put16(out, 16, g.used_dirs);
}

pub use crate::blocks::Run;

/// The extents mapping `run` from logical block 0: (logical, len, physical).
pub fn extents(run: Run) -> Vec<(u32, u16, u64)> {
    let mut out = Vec::new();
    let mut done = 0;
    while done < run.len {
        let n = (run.len - done).min(MAX_EXTENT);
        // Up to 32768 is an initialised extent; more would mean unwritten.
        out.push((done as u32, n as u16, run.start + done));
        done += n;
    }
    out
}

fn extent_header(b: &mut [u8], entries: usize, max: usize, depth: u16) {
    put16(b, 0, EXTENT_MAGIC);
    put16(b, 2, entries as u16);
    put16(b, 4, max as u16);
    put16(b, 6, depth);
}

fn put_extent(b: &mut [u8], at: usize, (lblk, len, pblk): (u32, u16, u64)) {
    put32(b, at, lblk);
    put16(b, at + 4, len);
    put16(b, at + 6, (pblk >> 32) as u16);
    put32(b, at + 8, pblk as u32);
}

/// `i_block` for up to four extents: a depth-0 tree in the inode.
pub fn inline_tree(ext: &[(u32, u16, u64)]) -> [u8; 60] {
    let mut b = [0u8; 60];
    extent_header(&mut b, ext.len(), 4, 0);
    for (i, e) in ext.iter().enumerate() {
        put_extent(&mut b, 12 + 12 * i, *e);
    }
    b
}

/// A depth-1 tree: `i_block` indexes leaf blocks of up to 340 extents.
/// Returns `i_block` and the leaf blocks to write at `leaves`.
pub fn indexed_tree(ext: &[(u32, u16, u64)], leaves: &[u64]) -> ([u8; 60], Vec<Vec<u8>>) {
    let mut ib = [0u8; 60];
    let chunks: Vec<&[(u32, u16, u64)]> = ext.chunks(LEAF_EXTENTS).collect();
    extent_header(&mut ib, chunks.len(), 4, 1);
    let mut blocks = Vec::new();
    for (i, (chunk, &leaf)) in chunks.iter().zip(leaves).enumerate() {
        let at = 12 + 12 * i;
        put32(&mut ib, at, chunk[0].0);
        put32(&mut ib, at + 4, leaf as u32);
        put16(&mut ib, at + 8, (leaf >> 32) as u16);
        let mut b = vec![0u8; BLOCK as usize];
        extent_header(&mut b, chunk.len(), LEAF_EXTENTS, 0);
        for (j, e) in chunk.iter().enumerate() {
            put_extent(&mut b, 12 + 12 * j, *e);
        }
        blocks.push(b);
    }
    (ib, blocks)
}

/// Leaf blocks an extent list needs beyond the inode (0 if it fits).
pub fn leaf_blocks(n_extents: usize) -> usize {
    if n_extents <= 4 {
        0
    } else {
        n_extents.div_ceil(LEAF_EXTENTS)
    }
}

pub struct Inode {
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub time: i64,
    pub links: u16,
    /// Blocks the inode owns (data, extent leaves, xattr block), 4 KiB each.
    pub blocks: u64,
    pub flags: u32,
    pub block: [u8; 60],
    pub xattr_block: u64,
    /// The in-inode xattr area (96 bytes), if any.
    pub xattrs: Option<Vec<u8>>,
}

/// Seconds since the epoch as ext4's 32-bit field plus the epoch bits of
/// the `_extra` field (nanoseconds stay 0).
fn time_fields(t: i64) -> (u32, u32) {
    let lo = t as i32;
    let epoch = ((t - i64::from(lo)) >> 32) & 3;
    (lo as u32, epoch as u32)
}

pub fn inode(n: &Inode) -> [u8; INODE_SIZE] {
    let mut b = [0u8; INODE_SIZE];
    put16(&mut b, 0, n.mode);
    put16(&mut b, 2, n.uid as u16);
    put32(&mut b, 4, n.size as u32);
    let (t, extra) = time_fields(n.time);
    for at in [8, 12, 16] {
        put32(&mut b, at, t); // atime, ctime, mtime
    }
    put16(&mut b, 24, n.gid as u16);
    put16(&mut b, 26, n.links);
    let sectors = n.blocks * (BLOCK / 512);
    put32(&mut b, 28, sectors as u32);
    put32(&mut b, 32, n.flags);
    b[40..100].copy_from_slice(&n.block);
    put32(&mut b, 104, n.xattr_block as u32);
    put32(&mut b, 108, (n.size >> 32) as u32);
    put16(&mut b, 116, (sectors >> 32) as u16);
    put16(&mut b, 118, (n.xattr_block >> 32) as u16);
    put16(&mut b, 120, (n.uid >> 16) as u16);
    put16(&mut b, 122, (n.gid >> 16) as u16);
    put16(&mut b, 128, 32); // i_extra_isize
    for at in [132, 136, 140, 148] {
        put32(&mut b, at, extra); // ctime, mtime, atime, crtime extra
    }
    put32(&mut b, 144, t); // crtime
    if let Some(x) = &n.xattrs {
        b[160..256].copy_from_slice(x);
    }
    b
}

/// `i_block` of a device inode: the old 16-bit encoding when it fits,
/// else the new one in the second word, as the kernel writes them.
pub fn device_block(major: u32, minor: u32) -> [u8; 60] {
    let mut b = [0u8; 60];
    if major < 256 && minor < 256 {
        put32(&mut b, 0, (major << 8) | minor);
    } else {
        put32(
            &mut b,
            4,
            (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12),
        );
    }
    b
}

/// Directory entries packed into 4 KiB blocks (linear directory; the last
/// entry of each block stretches to its end).
pub fn dir_blocks(entries: &[(u32, &[u8], u8)]) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::new();
    let mut block_start = 0;
    let mut last: Option<usize> = None;
    for &(ino, name, ftype) in entries {
        let rec = (8 + name.len()).div_ceil(4) * 4;
        let used = out.len() - block_start;
        if used + rec > BLOCK as usize {
            if let Some(l) = last {
                let len = (block_start + BLOCK as usize - l) as u16;
                put16(&mut out, l + 4, len);
            }
            out.resize(block_start + BLOCK as usize, 0);
            block_start = out.len();
        }
        let at = out.len();
        out.resize(at + rec, 0);
        put32(&mut out, at, ino);
        put16(&mut out, at + 4, rec as u16);
        out[at + 6] = name.len() as u8;
        out[at + 7] = ftype;
        out[at + 8..at + 8 + name.len()].copy_from_slice(name);
        last = Some(at);
    }
    if let Some(l) = last {
        let len = (block_start + BLOCK as usize - l) as u16;
        put16(&mut out, l + 4, len);
    }
    out.resize(block_start + BLOCK as usize, 0);
    out
}
