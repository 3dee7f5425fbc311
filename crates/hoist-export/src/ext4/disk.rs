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

use zerocopy::{FromZeros, IntoBytes};

use super::format;

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
    let mut b = format::SuperBlock::new_zeroed();
    b.inodes_count = s.inodes_count.into();
    b.blocks_count_lo = (s.blocks_count as u32).into();
    b.free_blocks_count_lo = (s.free_blocks as u32).into();
    b.free_inodes_count = s.free_inodes.into();
    // s_first_data_block stays 0 with 4 KiB blocks.
    b.log_block_size = 2.into(); // log2(4096) - 10
    b.log_cluster_size = 2.into();
    b.blocks_per_group = (BLOCKS_PER_GROUP as u32).into();
    b.clusters_per_group = (BLOCKS_PER_GROUP as u32).into();
    b.inodes_per_group = s.inodes_per_group.into();
    // s_mtime stays 0: never mounted.
    b.wtime = s.time.into();
    b.max_mnt_count = 0xFFFF.into(); // -1: no forced checks
    b.magic = 0xEF53.into();
    b.state = 1.into(); // clean
    b.errors = 1.into(); // continue
    b.lastcheck = s.time.into();
    b.rev_level = 1.into(); // dynamic revision
    b.first_ino = FIRST_INO.into();
    b.inode_size = (INODE_SIZE as u16).into();
    b.feature_compat = (COMPAT_EXT_ATTR | COMPAT_DIR_INDEX | COMPAT_SPARSE_SUPER2).into();
    b.feature_incompat = (INCOMPAT_FILETYPE | INCOMPAT_EXTENTS | INCOMPAT_FLEX_BG).into();
    b.feature_ro_compat = (RO_COMPAT_SPARSE_SUPER
        | RO_COMPAT_LARGE_FILE
        | RO_COMPAT_HUGE_FILE
        | RO_COMPAT_DIR_NLINK
        | RO_COMPAT_EXTRA_ISIZE)
        .into();
    b.uuid = s.uuid;
    b.hash_seed = s.hash_seed;
    b.def_hash_version = 1; // half_md4, as mke2fs
    b.mkfs_time = s.time.into();
    b.min_extra_isize = 32.into();
    b.want_extra_isize = 32.into();
    b.flags = 0x2.into(); // unsigned directory hash
    b.log_groups_per_flex = s.log_groups_per_flex;
    // s_backup_bgs stay 0: with sparse_super2, no backup copies.
    b.as_bytes().to_vec()
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
    let d = format::GroupDesc {
        block_bitmap_lo: g.block_bitmap.into(),
        inode_bitmap_lo: g.inode_bitmap.into(),
        inode_table_lo: g.inode_table.into(),
        free_blocks_count_lo: g.free_blocks.into(),
        free_inodes_count_lo: g.free_inodes.into(),
        used_dirs_count_lo: g.used_dirs.into(),
        ..Default::default()
    };
    out[..size_of::<format::GroupDesc>()].copy_from_slice(d.as_bytes());
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

fn extent_header(entries: usize, max: usize, depth: u16) -> format::ExtentHeader {
    format::ExtentHeader {
        magic: EXTENT_MAGIC.into(),
        entries: (entries as u16).into(),
        max: (max as u16).into(),
        depth: depth.into(),
        generation: 0.into(),
    }
}

fn extent((lblk, len, pblk): (u32, u16, u64)) -> format::Extent {
    format::Extent {
        block: lblk.into(),
        len: len.into(),
        start_hi: ((pblk >> 32) as u16).into(),
        start_lo: (pblk as u32).into(),
    }
}

/// `i_block` for up to four extents: a depth-0 tree in the inode.
pub fn inline_tree(ext: &[(u32, u16, u64)]) -> [u8; 60] {
    let mut b = Vec::with_capacity(60);
    b.extend_from_slice(extent_header(ext.len(), 4, 0).as_bytes());
    for e in ext {
        b.extend_from_slice(extent(*e).as_bytes());
    }
    let mut out = [0u8; 60];
    out[..b.len()].copy_from_slice(&b);
    out
}

/// A depth-1 tree: `i_block` indexes leaf blocks of up to 340 extents.
/// Returns `i_block` and the leaf blocks to write at `leaves`.
pub fn indexed_tree(ext: &[(u32, u16, u64)], leaves: &[u64]) -> ([u8; 60], Vec<Vec<u8>>) {
    let chunks: Vec<&[(u32, u16, u64)]> = ext.chunks(LEAF_EXTENTS).collect();
    let mut ib = Vec::with_capacity(60);
    ib.extend_from_slice(extent_header(chunks.len(), 4, 1).as_bytes());
    let mut blocks = Vec::new();
    for (chunk, &leaf) in chunks.iter().zip(leaves) {
        let idx = format::ExtentIdx {
            block: chunk[0].0.into(),
            leaf_lo: (leaf as u32).into(),
            leaf_hi: ((leaf >> 32) as u16).into(),
            unused: 0.into(),
        };
        ib.extend_from_slice(idx.as_bytes());
        let mut b = Vec::with_capacity(BLOCK as usize);
        b.extend_from_slice(extent_header(chunk.len(), LEAF_EXTENTS, 0).as_bytes());
        for e in *chunk {
            b.extend_from_slice(extent(*e).as_bytes());
        }
        b.resize(BLOCK as usize, 0);
        blocks.push(b);
    }
    let mut out = [0u8; 60];
    out[..ib.len()].copy_from_slice(&ib);
    (out, blocks)
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
    let mut b = format::Inode::new_zeroed();
    let (t, extra) = time_fields(n.time);
    let sectors = n.blocks * (BLOCK / 512);
    b.mode = n.mode.into();
    b.uid = (n.uid as u16).into();
    b.uid_high = ((n.uid >> 16) as u16).into();
    b.gid = (n.gid as u16).into();
    b.gid_high = ((n.gid >> 16) as u16).into();
    b.size_lo = (n.size as u32).into();
    b.size_high = ((n.size >> 32) as u32).into();
    for f in [&mut b.atime, &mut b.ctime, &mut b.mtime, &mut b.crtime] {
        *f = t.into();
    }
    for f in [
        &mut b.ctime_extra,
        &mut b.mtime_extra,
        &mut b.atime_extra,
        &mut b.crtime_extra,
    ] {
        *f = extra.into();
    }
    b.links_count = n.links.into();
    b.blocks_lo = (sectors as u32).into();
    b.blocks_high = ((sectors >> 32) as u16).into();
    b.flags = n.flags.into();
    b.block = n.block;
    b.file_acl_lo = (n.xattr_block as u32).into();
    b.file_acl_high = ((n.xattr_block >> 32) as u16).into();
    b.extra_isize = 32.into();
    if let Some(x) = &n.xattrs {
        b.xattrs.copy_from_slice(x);
    }
    let mut out = [0u8; INODE_SIZE];
    out.copy_from_slice(b.as_bytes());
    out
}

/// `i_block` of a device inode: the old 16-bit encoding when it fits,
/// else the new one in the second word, as the kernel writes them.
pub fn device_block(major: u32, minor: u32) -> [u8; 60] {
    let mut b = [0u8; 60];
    if major < 256 && minor < 256 {
        b[..4].copy_from_slice(&((major << 8) | minor).to_le_bytes());
    } else {
        let new = (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12);
        b[4..8].copy_from_slice(&new.to_le_bytes());
    }
    b
}

/// Directory entries packed into 4 KiB blocks (linear directory; the last
/// entry of each block stretches to its end).
pub fn dir_blocks(entries: &[(u32, &[u8], u8)]) -> Vec<u8> {
    const HEAD: usize = size_of::<format::DirEntry>();
    // The last entry of a block is stretched to its end once the block is
    // full: its header is written then.
    fn stretch(out: &mut [u8], last: Option<(usize, u32, u8, u8)>, block_end: usize) {
        if let Some((at, ino, name_len, ftype)) = last {
            let e = format::DirEntry {
                inode: ino.into(),
                rec_len: ((block_end - at) as u16).into(),
                name_len,
                file_type: ftype,
            };
            out[at..at + HEAD].copy_from_slice(e.as_bytes());
        }
    }
    let mut out: Vec<u8> = Vec::new();
    let mut block_start = 0;
    let mut last = None;
    for &(ino, name, ftype) in entries {
        let rec = (HEAD + name.len()).div_ceil(4) * 4;
        let used = out.len() - block_start;
        if used + rec > BLOCK as usize {
            stretch(&mut out, last, block_start + BLOCK as usize);
            out.resize(block_start + BLOCK as usize, 0);
            block_start = out.len();
        }
        let at = out.len();
        let e = format::DirEntry {
            inode: ino.into(),
            rec_len: (rec as u16).into(),
            name_len: name.len() as u8,
            file_type: ftype,
        };
        out.extend_from_slice(e.as_bytes());
        out.extend_from_slice(name);
        out.resize(at + rec, 0);
        last = Some((at, ino, name.len() as u8, ftype));
    }
    stretch(&mut out, last, block_start + BLOCK as usize);
    out.resize(block_start + BLOCK as usize, 0);
    out
}
