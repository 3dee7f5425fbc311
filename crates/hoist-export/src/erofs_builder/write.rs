//! Writing the laid-out image: directory blocks, the metadata area (every
//! inode with its xattrs and inline data), then the superblock.

use std::io;
use std::os::unix::fs::FileExt;

use hoist_unpack::{EntryType, MergedTree};
use zerocopy::IntoBytes;

use super::format::{
    DeviceSlot, Dirent, InodeCompact, InodeExtended, Lz4Cfgs, SuperBlock, CHUNK_BASED,
    COMPRESSED_FULL, FEATURE_COMPAT_SB_CHKSUM, FEATURE_INCOMPAT_CHUNKED_FILE,
    FEATURE_INCOMPAT_COMPR_CFGS, FEATURE_INCOMPAT_DEVICE_TABLE, FEATURE_INCOMPAT_ZERO_PADDING,
    FLAT_PLAIN, MAGIC, SB_OFFSET,
};
use super::layout::{file_type, InlineSrc, Plan, Rec};
use super::{data, werr, Content, ErofsBuilder, DIRENT};
use crate::blocks::BLOCK;
use crate::error::ExportError;
use crate::tree::type_bits;

/// crc32c as the kernel computes the superblock checksum: seed !0, no
/// final inversion. Hand-written: 12 lines, run once per image.
pub(crate) fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ if crc & 1 != 0 { 0x82F6_3B78 } else { 0 };
        }
    }
    crc
}

/// Directory content: blocks of dirents (sorted names, `.` and `..`
/// among them), each block's names after its dirents. Returns the blocks,
/// the last one cut to what it uses.
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
        // Exactly `used`: a directory's last block is kept as its inline
        // tail until the inodes are written (a full block each took 49 MB
        // on rig/big's 15,000 directories).
        let mut b = Vec::with_capacity(used);
        let mut nameoff = DIRENT * (j - i);
        for (name, nid, ft) in &entries[i..j] {
            let d = Dirent {
                nid: (*nid).into(),
                nameoff: (nameoff as u16).into(),
                file_type: *ft,
                reserved: 0,
            };
            b.extend_from_slice(d.as_bytes());
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

/// Where the devices' blocks start in the unified address space that a
/// compressed file's lcluster indexes use (they name no device): past any
/// block a META image could have of its own.
pub(super) const UNI_BASE: u64 = 1 << 30;

/// Blocks the device table takes (it starts at block 1).
pub(super) fn device_table_blocks(devices: usize) -> u64 {
    (devices as u64 * size_of::<DeviceSlot>() as u64).div_ceil(BLOCK)
}

impl ErofsBuilder {
    /// Device `dev`'s (1-based) first block in the unified address space.
    pub(super) fn uniaddr(&self, dev: u16) -> u64 {
        UNI_BASE
            + self.devices[..usize::from(dev) - 1]
                .iter()
                .map(|d| u64::from(d.blocks))
                .sum::<u64>()
    }

    /// The device table at block 1, one slot per layer file.
    fn write_device_table(&self) -> Result<(), ExportError> {
        let mut b = Vec::with_capacity(self.devices.len() * size_of::<DeviceSlot>());
        for (i, d) in self.devices.iter().enumerate() {
            let uni = self.uniaddr(i as u16 + 1);
            let slot = DeviceSlot {
                tag: d.tag,
                blocks_lo: d.blocks.into(),
                uniaddr_lo: (uni as u32).into(),
                blocks_hi: 0.into(),
                uniaddr_hi: 0.into(),
                reserved: [0; 52],
            };
            b.extend_from_slice(slot.as_bytes());
        }
        b.resize(b.len().div_ceil(BLOCK as usize) * BLOCK as usize, 0);
        self.area.file.write_all_at(&b, BLOCK).map_err(werr)
    }
}

/// What the superblock records that the layout decided.
pub(super) struct Totals {
    pub(super) blocks: u64,
    pub(super) meta_blkaddr: u64,
    pub(super) xattr_blkaddr: u64,
    pub(super) uuid: [u8; 16],
}

impl ErofsBuilder {
    /// Write the directory blocks `dir_contents` made: a directory's last
    /// block goes inline where the plan said it fits.
    pub(super) fn write_dirs(
        &mut self,
        plan: &mut Plan<'_>,
        dirs: Vec<DirContent>,
    ) -> Result<(), ExportError> {
        for d in dirs {
            let r = &mut plan.recs[d.rec];
            if !d.blocks.is_empty() {
                r.blkaddr = self.area.put(&d.blocks).map_err(werr)?.start as u32;
            }
            match d.tail {
                Some(t) => r.inline = InlineSrc::Bytes(t),
                None => r.layout = FLAT_PLAIN,
            }
        }
        Ok(())
    }

    /// The metadata area from `meta_blkaddr`: each inode at its nid, its
    /// xattrs and inline data after it. The area is written in two halves
    /// at once: it is most of a finish's time (106 MB of inodes and inline
    /// files on rig/big), the stages that inflated are done by now, and
    /// the halves meet at a record's start, so neither writes over the
    /// other.
    pub(super) fn write_inodes(
        &mut self,
        tree: &MergedTree<Content>,
        plan: &Plan<'_>,
        meta_blkaddr: u64,
    ) -> Result<(), ExportError> {
        let recs = &plan.recs;
        let w = MetaWriter {
            tree,
            recs,
            file: &self.area.file,
            spool: &self.spool,
            base: meta_blkaddr * BLOCK,
        };
        let mid = recs.len() / 2;
        let cut = recs.get(mid).map(|r| r.nid * 32);
        let (a, b) = std::thread::scope(|s| {
            let w = &w;
            let second = s.spawn(move || match cut {
                Some(cut) => w.write(mid..recs.len(), cut, None),
                None => Ok(()),
            });
            (w.write(0..mid, 0, cut), second.join())
        });
        a.map_err(werr)?;
        b.map_err(|_| werr(io::Error::other("the inode writer panicked")))?
            .map_err(werr)
    }

    /// Block 0 with the superblock (and the lz4 configuration after it),
    /// checksummed; the image cut to its length and synced.
    pub(super) fn write_superblock(
        &mut self,
        plan: &Plan<'_>,
        t: &Totals,
    ) -> Result<(), ExportError> {
        let recs = &plan.recs;
        let lz4 = recs.iter().any(|r| r.layout == COMPRESSED_FULL);
        let chunked = recs.iter().any(|r| r.layout == CHUNK_BASED);
        let mut incompat = 0;
        if lz4 {
            incompat |= FEATURE_INCOMPAT_ZERO_PADDING | FEATURE_INCOMPAT_COMPR_CFGS;
        }
        if chunked {
            incompat |= FEATURE_INCOMPAT_CHUNKED_FILE;
        }
        if !self.devices.is_empty() {
            incompat |= FEATURE_INCOMPAT_DEVICE_TABLE;
            self.write_device_table()?;
        }
        let sb = SuperBlock {
            magic: MAGIC.into(),
            feature_compat: FEATURE_COMPAT_SB_CHKSUM.into(),
            blkszbits: 12,
            root_nid: (recs[0].nid as u16).into(),
            inos: (recs.len() as u64).into(),
            build_time: (plan.build_time.max(0) as u64).into(),
            blocks: (t.blocks as u32).into(),
            meta_blkaddr: (t.meta_blkaddr as u32).into(),
            xattr_blkaddr: (t.xattr_blkaddr as u32).into(),
            uuid: t.uuid,
            feature_incompat: incompat.into(),
            // available_compr_algs: lz4.
            u1: u16::from(lz4).into(),
            extra_devices: (self.devices.len() as u16).into(),
            devt_slotoff: if self.devices.is_empty() {
                0.into()
            } else {
                ((BLOCK as usize / size_of::<DeviceSlot>()) as u16).into()
            },
            ..Default::default()
        };
        let mut block = vec![0u8; BLOCK as usize];
        let mut at = SB_OFFSET;
        let mut put = |bytes: &[u8]| {
            block[at..at + bytes.len()].copy_from_slice(bytes);
            at += bytes.len();
        };
        put(sb.as_bytes());
        if lz4 {
            // The lz4 configuration record, after its length.
            let cfg = Lz4Cfgs {
                max_distance: u16::MAX.into(),
                max_pclusterblks: data::LZ4_MAX_PCLUSTER_BLOCKS.into(),
                reserved: [0; 10],
            };
            put(&(size_of::<Lz4Cfgs>() as u16).to_le_bytes());
            put(cfg.as_bytes());
        }
        let crc = crc32c(&block[SB_OFFSET..]);
        block[SB_OFFSET + 4..SB_OFFSET + 8].copy_from_slice(&crc.to_le_bytes());
        let f = &self.area.file;
        f.write_all_at(&block, 0).map_err(werr)?;
        f.set_len(t.blocks * BLOCK).map_err(werr)?;
        f.sync_all().map_err(werr)?;
        Ok(())
    }
}

/// A directory's blocks, laid end to end, and its inline tail.
pub(super) struct DirContent {
    rec: usize,
    blocks: Vec<u8>,
    tail: Option<Vec<u8>>,
}

/// Directory blocks, now that every nid is known: made in memory (a few
/// MiB on rig/big) while the compaction's copies run.
pub(super) fn dir_contents(tree: &MergedTree<Content>, plan: &Plan<'_>) -> Vec<DirContent> {
    let mut nid_of = vec![0u64; tree.id_bound()];
    for r in &plan.recs {
        nid_of[r.id as usize] = r.nid;
    }
    let mut out = Vec::new();
    for (i, r) in plan.recs.iter().enumerate() {
        let Some(names) = plan.dir_names[r.id as usize].as_ref() else {
            continue;
        };
        let entries: Vec<(&[u8], u64, u8)> = names
            .iter()
            .map(|&(k, c)| (k, nid_of[c as usize], file_type(tree.node(c).meta.kind)))
            .collect();
        let mut blocks = dir_blocks(&entries);
        let tail = if plan.dir_tail_inline[r.id as usize] {
            blocks.pop()
        } else {
            None
        };
        let mut all = Vec::with_capacity(blocks.len() * BLOCK as usize);
        for b in &blocks {
            all.extend_from_slice(b);
            all.resize(all.len().div_ceil(BLOCK as usize) * BLOCK as usize, 0);
        }
        out.push(DirContent {
            rec: i,
            blocks: all,
            tail,
        });
    }
    out
}

/// Writes records of the metadata area, which starts at byte `base` of
/// `file`; inline tails are read from `spool`.
struct MetaWriter<'a> {
    tree: &'a MergedTree<Content>,
    recs: &'a [Rec],
    file: &'a std::fs::File,
    spool: &'a std::fs::File,
    base: u64,
}

impl MetaWriter<'_> {
    /// The records `which`, written from byte `start` of the area in 1 MiB
    /// writes: each inode at its nid, its xattrs and inline data after it,
    /// zeros between and up to `end` (the next half's start), or else to the
    /// end of the last block.
    fn write(&self, which: std::ops::Range<usize>, start: u64, end: Option<u64>) -> io::Result<()> {
        const FLUSH: usize = 1 << 20;
        let (tree, recs, file, spool, base) =
            (self.tree, self.recs, self.file, self.spool, self.base);
        let mut out: Vec<u8> = Vec::with_capacity(FLUSH + BLOCK as usize);
        let mut written = start;
        let mut window = Window::default();
        for i in which {
            let r = &recs[i];
            let pos = written + out.len() as u64;
            out.resize(out.len() + (r.nid * 32 - pos) as usize, 0);
            // The inode number is the record's place in the whole plan.
            inode(tree, r, i as u32 + 1, &mut out);
            out.extend_from_slice(&r.xattrs);
            match &r.inline {
                InlineSrc::None => {}
                InlineSrc::Bytes(x) => out.extend_from_slice(x),
                InlineSrc::Spool(off, len) => {
                    out.extend_from_slice(window.get(spool, *off, *len as usize)?);
                }
            }
            if out.len() >= FLUSH {
                file.write_all_at(&out, base + written)?;
                written += out.len() as u64;
                out.clear();
            }
        }
        let pos = written + out.len() as u64;
        let end = end.unwrap_or(pos.div_ceil(BLOCK) * BLOCK);
        out.resize(out.len() + (end - pos) as usize, 0);
        file.write_all_at(&out, base + written)
    }
}

/// One inode's fixed part: compact when its values fit, else extended.
fn inode(tree: &MergedTree<Content>, r: &Rec, ino: u32, b: &mut Vec<u8>) {
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
        (_, CHUNK_BASED) => r.chunk_format.unwrap_or(u32::from(data::CHUNK_BITS)),
        (_, COMPRESSED_FULL) => (r.blocks + r.dev_blocks) as u32,
        _ => r.blkaddr,
    };
    if r.extended {
        let i = InodeExtended {
            format: ((r.layout << 1) | 1).into(),
            xattr_icount: icount.into(),
            mode: mode.into(),
            size: r.size.into(),
            u: iu.into(),
            ino: ino.into(),
            uid: (m.uid as u32).into(),
            gid: (m.gid as u32).into(),
            mtime: (m.mtime.max(0) as u64).into(),
            nlink: r.nlink.into(),
            ..Default::default()
        };
        b.extend_from_slice(i.as_bytes());
    } else {
        let i = InodeCompact {
            format: (r.layout << 1).into(),
            xattr_icount: icount.into(),
            mode: mode.into(),
            nlink: (r.nlink as u16).into(),
            size: (r.size as u32).into(),
            u: iu.into(),
            ino: ino.into(),
            uid: (m.uid as u16).into(),
            gid: (m.gid as u16).into(),
            ..Default::default()
        };
        b.extend_from_slice(i.as_bytes());
    }
}

/// Reads of the tail spool, through a few windows of it: inodes come in
/// path order, tails were spooled layer by layer, so the reads follow a
/// few sequential streams at once (one window alone missed about 2,000
/// times on rig/big, reading 64 KiB each time).
#[derive(Default)]
pub(crate) struct Window {
    slots: Vec<(u64, Vec<u8>)>,
    /// The slot a miss replaces next (round robin).
    next: usize,
}

impl Window {
    const SIZE: usize = 64 << 10;
    const SLOTS: usize = 4;

    pub(crate) fn get(&mut self, spool: &std::fs::File, off: u64, len: usize) -> io::Result<&[u8]> {
        let hit = self.slots.iter().position(|(start, data)| {
            off >= *start && off + len as u64 <= *start + data.len() as u64
        });
        let i = match hit {
            Some(i) => i,
            None => {
                let i = if self.slots.len() < Self::SLOTS {
                    self.slots.push((0, Vec::new()));
                    self.slots.len() - 1
                } else {
                    self.next = (self.next + 1) % Self::SLOTS;
                    self.next
                };
                let (start, data) = &mut self.slots[i];
                let want = len.max(Self::SIZE);
                data.resize(want, 0);
                let mut got = 0;
                while got < want {
                    let n = spool.read_at(&mut data[got..], off + got as u64)?;
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
                data.truncate(got);
                *start = off;
                i
            }
        };
        let (start, data) = &self.slots[i];
        let at = (off - start) as usize;
        Ok(&data[at..at + len])
    }
}
