//! erofs on-disk structures, as erofs-utils' `include/erofs_fs.h` and the
//! kernel's `fs/erofs/erofs_fs.h` define them (facts only). Each is a
//! `#[repr(C)]` struct of little-endian fields with no padding; its size is
//! asserted against the header's at compile time. The builder fills these
//! and writes their bytes; it never writes a field by offset.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

pub const MAGIC: u32 = 0xE0F5_E1E2;
/// The superblock starts this far into block 0.
pub const SB_OFFSET: usize = 1024;
pub const FEATURE_COMPAT_SB_CHKSUM: u32 = 1;
pub const FEATURE_INCOMPAT_ZERO_PADDING: u32 = 1;
/// Also `BIG_PCLUSTER`: one bit for both.
pub const FEATURE_INCOMPAT_COMPR_CFGS: u32 = 2;
pub const FEATURE_INCOMPAT_CHUNKED_FILE: u32 = 4;
pub const FEATURE_INCOMPAT_DEVICE_TABLE: u32 = 8;
/// A chunk-based file's `i_u`: 8-byte chunk indexes (with a device id)
/// rather than a 4-byte block map; the low 5 bits are the chunk bits.
pub const CHUNK_FORMAT_INDEXES: u32 = 0x20;

/// `i_format` data layouts (bits 1..3).
pub const FLAT_PLAIN: u16 = 0;
pub const COMPRESSED_FULL: u16 = 1;
pub const FLAT_INLINE: u16 = 2;
pub const CHUNK_BASED: u16 = 4;

/// `erofs_super_block`, the 128 bytes of it that images without extra
/// superblock slots have (`sb_extslots` = 0).
#[derive(IntoBytes, FromBytes, Immutable, KnownLayout, Default, Clone)]
#[repr(C)]
pub struct SuperBlock {
    pub magic: U32,
    pub checksum: U32,
    pub feature_compat: U32,
    pub blkszbits: u8,
    pub sb_extslots: u8,
    pub root_nid: U16,
    pub inos: U64,
    /// `epoch` in erofs-utils 1.9: the mtime of compact inodes.
    pub build_time: U64,
    pub fixed_nsec: U32,
    pub blocks: U32,
    pub meta_blkaddr: U32,
    pub xattr_blkaddr: U32,
    pub uuid: [u8; 16],
    pub volume_name: [u8; 16],
    pub feature_incompat: U32,
    /// `available_compr_algs` with `COMPR_CFGS`, else `lz4_max_distance`.
    pub u1: U16,
    pub extra_devices: U16,
    pub devt_slotoff: U16,
    pub dirblkbits: u8,
    pub xattr_prefix_count: u8,
    pub xattr_prefix_start: U32,
    pub packed_nid: U64,
    pub xattr_filter_reserved: u8,
    pub ishare_xattr_prefix_id: u8,
    pub reserved: [u8; 2],
    pub build_time_add: U32,
    pub rootnid_8b: U64,
    pub reserved2: U64,
}

/// `z_erofs_lz4_cfgs`, after its 2-byte length, right after the superblock.
#[derive(IntoBytes, Immutable, KnownLayout, Default)]
#[repr(C)]
pub struct Lz4Cfgs {
    pub max_distance: U16,
    pub max_pclusterblks: U16,
    pub reserved: [u8; 10],
}

/// `erofs_inode_compact`.
#[derive(IntoBytes, Immutable, KnownLayout, Default)]
#[repr(C)]
pub struct InodeCompact {
    pub format: U16,
    pub xattr_icount: U16,
    pub mode: U16,
    pub nlink: U16,
    pub size: U32,
    pub reserved: U32,
    /// Raw block address, compressed block count, chunk info or rdev.
    pub u: U32,
    pub ino: U32,
    pub uid: U16,
    pub gid: U16,
    pub reserved2: U32,
}

/// `erofs_inode_extended`.
#[derive(IntoBytes, Immutable, KnownLayout, Default)]
#[repr(C)]
pub struct InodeExtended {
    pub format: U16,
    pub xattr_icount: U16,
    pub mode: U16,
    pub reserved: U16,
    pub size: U64,
    pub u: U32,
    pub ino: U32,
    pub uid: U32,
    pub gid: U32,
    pub mtime: U64,
    pub mtime_nsec: U32,
    pub nlink: U32,
    pub reserved2: [u8; 16],
}

/// `erofs_dirent`; the names follow the block's dirents.
#[derive(IntoBytes, Immutable, KnownLayout, Default)]
#[repr(C)]
pub struct Dirent {
    pub nid: U64,
    pub nameoff: U16,
    pub file_type: u8,
    pub reserved: u8,
}

/// `erofs_inode_chunk_index`: one chunk of a chunk-based file, on a device.
#[derive(IntoBytes, Immutable, KnownLayout, Default)]
#[repr(C)]
pub struct ChunkIndex {
    pub startblk_hi: U16,
    pub device_id: U16,
    pub startblk_lo: U32,
}

/// `erofs_deviceslot`: one extra device in the device table.
#[derive(IntoBytes, FromBytes, Immutable, KnownLayout, Clone)]
#[repr(C)]
pub struct DeviceSlot {
    pub tag: [u8; 64],
    pub blocks_lo: U32,
    pub uniaddr_lo: U32,
    pub blocks_hi: U16,
    pub uniaddr_hi: U16,
    pub reserved: [u8; 52],
}

/// `erofs_xattr_ibody_header`; shared xattr ids follow it.
#[derive(IntoBytes, Immutable, KnownLayout, Default)]
#[repr(C)]
pub struct XattrIbodyHeader {
    pub name_filter: U32,
    pub shared_count: u8,
    pub reserved2: [u8; 7],
}

/// `erofs_xattr_entry`; the name suffix and the value follow it.
#[derive(IntoBytes, Immutable, KnownLayout, Default)]
#[repr(C)]
pub struct XattrEntry {
    pub name_len: u8,
    pub name_index: u8,
    pub value_size: U16,
}

/// `z_erofs_map_header`; 8 bytes of legacy padding follow it.
#[derive(IntoBytes, Immutable, KnownLayout, Default)]
#[repr(C)]
pub struct ZMapHeader {
    pub fragmentoff: U32,
    pub advise: U16,
    pub algorithmtype: u8,
    pub clusterbits: u8,
}

/// `z_erofs_lcluster_index` (full indexes).
#[derive(IntoBytes, Immutable, KnownLayout, Default)]
#[repr(C)]
pub struct LclusterIndex {
    pub advise: U16,
    pub clusterofs: U16,
    /// The block address (head, plain) or two 16-bit deltas (non-head).
    pub u: U32,
}

const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(size_of::<SuperBlock>() == 128);
    assert!(offset_of!(SuperBlock, feature_incompat) == 80);
    assert!(offset_of!(SuperBlock, extra_devices) == 86);
    assert!(offset_of!(SuperBlock, packed_nid) == 96);
    assert!(offset_of!(SuperBlock, build_time_add) == 108);
    assert!(size_of::<Lz4Cfgs>() == 14);
    assert!(size_of::<InodeCompact>() == 32);
    assert!(size_of::<InodeExtended>() == 64);
    assert!(offset_of!(InodeExtended, mtime) == 32);
    assert!(size_of::<Dirent>() == 12);
    assert!(size_of::<ChunkIndex>() == 8);
    assert!(size_of::<DeviceSlot>() == 128);
    assert!(size_of::<XattrIbodyHeader>() == 12);
    assert!(size_of::<XattrEntry>() == 4);
    assert!(size_of::<ZMapHeader>() == 8);
    assert!(size_of::<LclusterIndex>() == 8);
};
