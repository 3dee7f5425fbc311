//! ext4 on-disk structures, as the kernel's `fs/ext4/ext4.h`,
//! `fs/ext4/ext4_extents.h`, `fs/ext4/xattr.h` and e2fsprogs' `ext2_fs.h`
//! define them (facts only). `#[repr(C)]` structs of little-endian fields
//! with no padding, sizes and key offsets asserted at compile time; the
//! writer fills these and never writes a field by offset.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromZeros, Immutable, IntoBytes, KnownLayout};

/// `ext4_super_block` (1024 bytes at byte 1024 of the image); the fields
/// after `s_kbytes_written` are ones hoist leaves zero.
#[derive(IntoBytes, FromZeros, Immutable, KnownLayout)]
#[repr(C)]
pub struct SuperBlock {
    pub inodes_count: U32,
    pub blocks_count_lo: U32,
    pub r_blocks_count_lo: U32,
    pub free_blocks_count_lo: U32,
    pub free_inodes_count: U32,
    pub first_data_block: U32,
    pub log_block_size: U32,
    pub log_cluster_size: U32,
    pub blocks_per_group: U32,
    pub clusters_per_group: U32,
    pub inodes_per_group: U32,
    pub mtime: U32,
    pub wtime: U32,
    pub mnt_count: U16,
    pub max_mnt_count: U16,
    pub magic: U16,
    pub state: U16,
    pub errors: U16,
    pub minor_rev_level: U16,
    pub lastcheck: U32,
    pub checkinterval: U32,
    pub creator_os: U32,
    pub rev_level: U32,
    pub def_resuid: U16,
    pub def_resgid: U16,
    pub first_ino: U32,
    pub inode_size: U16,
    pub block_group_nr: U16,
    pub feature_compat: U32,
    pub feature_incompat: U32,
    pub feature_ro_compat: U32,
    pub uuid: [u8; 16],
    pub volume_name: [u8; 16],
    pub last_mounted: [u8; 64],
    pub algorithm_usage_bitmap: U32,
    pub prealloc_blocks: u8,
    pub prealloc_dir_blocks: u8,
    pub reserved_gdt_blocks: U16,
    pub journal_uuid: [u8; 16],
    pub journal_inum: U32,
    pub journal_dev: U32,
    pub last_orphan: U32,
    /// Four 32-bit words, kept as the bytes they are made from.
    pub hash_seed: [u8; 16],
    pub def_hash_version: u8,
    pub jnl_backup_type: u8,
    pub desc_size: U16,
    pub default_mount_opts: U32,
    pub first_meta_bg: U32,
    pub mkfs_time: U32,
    pub jnl_blocks: [U32; 17],
    pub blocks_count_hi: U32,
    pub r_blocks_count_hi: U32,
    pub free_blocks_count_hi: U32,
    pub min_extra_isize: U16,
    pub want_extra_isize: U16,
    pub flags: U32,
    pub raid_stride: U16,
    pub mmp_update_interval: U16,
    pub mmp_block: U64,
    pub raid_stripe_width: U32,
    pub log_groups_per_flex: u8,
    pub checksum_type: u8,
    pub encryption_level: u8,
    pub reserved_pad: u8,
    pub kbytes_written: U64,
    pub rest: [u8; 640],
}

/// `ext4_group_desc` without `64bit`: 32 bytes.
#[derive(IntoBytes, Immutable, KnownLayout, Default)]
#[repr(C)]
pub struct GroupDesc {
    pub block_bitmap_lo: U32,
    pub inode_bitmap_lo: U32,
    pub inode_table_lo: U32,
    pub free_blocks_count_lo: U16,
    pub free_inodes_count_lo: U16,
    pub used_dirs_count_lo: U16,
    pub flags: U16,
    pub exclude_bitmap_lo: U32,
    pub block_bitmap_csum_lo: U16,
    pub inode_bitmap_csum_lo: U16,
    pub itable_unused_lo: U16,
    pub checksum: U16,
}

/// `ext4_inode` with its extra fields and the in-inode xattr space, as
/// one 256-byte inode-table slot.
#[derive(IntoBytes, FromZeros, Immutable, KnownLayout)]
#[repr(C)]
pub struct Inode {
    pub mode: U16,
    pub uid: U16,
    pub size_lo: U32,
    pub atime: U32,
    pub ctime: U32,
    pub mtime: U32,
    pub dtime: U32,
    pub gid: U16,
    pub links_count: U16,
    pub blocks_lo: U32,
    pub flags: U32,
    pub osd1: U32,
    /// The extent tree root, a symlink target or a device number.
    pub block: [u8; 60],
    pub generation: U32,
    pub file_acl_lo: U32,
    pub size_high: U32,
    pub obso_faddr: U32,
    pub blocks_high: U16,
    pub file_acl_high: U16,
    pub uid_high: U16,
    pub gid_high: U16,
    pub checksum_lo: U16,
    pub reserved: U16,
    pub extra_isize: U16,
    pub checksum_hi: U16,
    pub ctime_extra: U32,
    pub mtime_extra: U32,
    pub atime_extra: U32,
    pub crtime: U32,
    pub crtime_extra: U32,
    pub version_hi: U32,
    pub projid: U32,
    /// In-inode xattrs (`ext4_xattr_ibody_header` and entries).
    pub xattrs: [u8; 96],
}

/// `ext4_extent_header`.
#[derive(IntoBytes, Immutable, KnownLayout, Default)]
#[repr(C)]
pub struct ExtentHeader {
    pub magic: U16,
    pub entries: U16,
    pub max: U16,
    pub depth: U16,
    pub generation: U32,
}

/// `ext4_extent`: a leaf's run of blocks.
#[derive(IntoBytes, Immutable, KnownLayout, Default)]
#[repr(C)]
pub struct Extent {
    pub block: U32,
    pub len: U16,
    pub start_hi: U16,
    pub start_lo: U32,
}

/// `ext4_extent_idx`: an index entry naming a leaf block.
#[derive(IntoBytes, Immutable, KnownLayout, Default)]
#[repr(C)]
pub struct ExtentIdx {
    pub block: U32,
    pub leaf_lo: U32,
    pub leaf_hi: U16,
    pub unused: U16,
}

/// `ext4_dir_entry_2`; the name follows.
#[derive(IntoBytes, Immutable, KnownLayout, Default)]
#[repr(C)]
pub struct DirEntry {
    pub inode: U32,
    pub rec_len: U16,
    pub name_len: u8,
    pub file_type: u8,
}

/// `ext4_xattr_header`, at the start of an xattr block.
#[derive(IntoBytes, Immutable, KnownLayout, Default)]
#[repr(C)]
pub struct XattrBlockHeader {
    pub magic: U32,
    pub refcount: U32,
    pub blocks: U32,
    pub hash: U32,
    pub checksum: U32,
    pub reserved: [U32; 3],
}

/// `ext4_xattr_entry`; the name follows, padded to 4 bytes.
#[derive(IntoBytes, Immutable, KnownLayout, Default)]
#[repr(C)]
pub struct XattrEntry {
    pub name_len: u8,
    pub name_index: u8,
    pub value_offs: U16,
    pub value_inum: U32,
    pub value_size: U32,
    pub hash: U32,
}

const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(size_of::<SuperBlock>() == 1024);
    assert!(offset_of!(SuperBlock, magic) == 56);
    assert!(offset_of!(SuperBlock, first_ino) == 84);
    assert!(offset_of!(SuperBlock, uuid) == 104);
    assert!(offset_of!(SuperBlock, hash_seed) == 236);
    assert!(offset_of!(SuperBlock, mkfs_time) == 264);
    assert!(offset_of!(SuperBlock, min_extra_isize) == 348);
    assert!(offset_of!(SuperBlock, log_groups_per_flex) == 372);
    assert!(size_of::<GroupDesc>() == 32);
    assert!(size_of::<Inode>() == 256);
    assert!(offset_of!(Inode, block) == 40);
    assert!(offset_of!(Inode, blocks_high) == 116);
    assert!(offset_of!(Inode, extra_isize) == 128);
    assert!(offset_of!(Inode, crtime) == 144);
    assert!(offset_of!(Inode, xattrs) == 160);
    assert!(size_of::<ExtentHeader>() == 12);
    assert!(size_of::<Extent>() == 12);
    assert!(size_of::<ExtentIdx>() == 12);
    assert!(size_of::<DirEntry>() == 8);
    assert!(size_of::<XattrBlockHeader>() == 32);
    assert!(size_of::<XattrEntry>() == 16);
};
