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

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use hoist_unpack::{ContentSink, MergedTree};

use crate::blocks::{copy_within, BlockArea, Run, BLOCK};
use crate::error::ExportError;
use crate::tree::Walk;
/// A tail up to this long goes inline; the rest of its block is left for
/// the inode and its xattrs (larger xattrs move the tail to a block).
const INLINE_MAX: u64 = BLOCK - 64 - 512;
const DIRENT: usize = size_of::<format::Dirent>();

/// Where a file's content went: whole blocks in the data area, and a tail
/// either in the last of those blocks or in the spool (inline later).
#[derive(Debug, Clone, Copy)]
pub struct Content {
    run: Run,
    /// (offset in the spool, length) of an inline tail.
    tail: Option<(u64, u32)>,
    /// The file's chunk map in the builder, when not one plain run.
    map: Option<u32>,
    /// Which `store` made it: a layer file's placements are by this.
    seq: u32,
    /// The device holding `run` (a layer file of a META image), 0 for
    /// this image's own blocks.
    dev: u16,
}

impl Content {
    fn new(run: Run, tail: Option<(u64, u32)>, map: Option<u32>) -> Content {
        Content {
            run,
            tail,
            map,
            seq: 0,
            dev: 0,
        }
    }
}

/// How an erofs image is written.
#[derive(Debug, Clone, Copy, Default)]
pub struct ErofsOptions {
    /// Compress file data with lz4 (Linux 5.13+ reads it: big pclusters).
    pub lz4: bool,
    /// A layer file of a layer-shared disk: only whole small files go
    /// inline, every other file is whole blocks of its own, so that a
    /// META image can point its chunk indexes at them.
    pub layer: bool,
}

pub struct ErofsBuilder {
    area: BlockArea,
    spool: File,
    spool_len: u64,
    /// Spooled tails not yet written (they end at `spool_len`): one write
    /// per MiB, not per small file.
    spool_buf: Vec<u8>,
    maps: Vec<data::FileMap>,
    opts: ErofsOptions,
    path: PathBuf,
    done: bool,
    /// lz4 chunks are compressed on this thread (with `--compress lz4`).
    lz4: Option<data::Lz4Worker>,
    next_seq: u32,
    /// The data area's first block (after the device table, if any).
    first_block: u64,
    /// A META image's extra devices (the layer files), in device order.
    devices: Vec<Device>,
}

/// Where a layer file put a file's data, as a META image points at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Placement {
    /// A small file's bytes, to go inline after its inode.
    Inline(Vec<u8>),
    /// A small file inline in a layer file: its bytes' offset there (as
    /// many as the file's size), read when a META adopts it.
    InlineAt(u64),
    /// Whole blocks from `blkaddr`; `map` when chunked or compressed.
    Blocks {
        blkaddr: u32,
        blocks: u32,
        map: Option<data::FileMap>,
    },
}

/// One extra device of a META image: a layer file.
#[derive(Debug, Clone)]
pub struct Device {
    /// The device table's tag: the layer's diff_id as 64 hex characters.
    pub tag: [u8; 64],
    pub blocks: u32,
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
            spool_buf: Vec::new(),
            maps: Vec::new(),
            lz4: opts.lz4.then(data::Lz4Worker::new),
            opts,
            path: out.to_path_buf(),
            done: false,
            next_seq: 0,
            first_block: 1,
            devices: Vec::new(),
        })
    }

    /// Start a META image: a device table naming `devices` at block 1,
    /// the image's own blocks after it. Its files' data are adopted
    /// ([`ErofsBuilder::adopt`]) from the devices, or inlined.
    pub fn create_meta(
        out: &Path,
        opts: ErofsOptions,
        cancel: Option<hoist_spec::Cancel>,
        devices: Vec<Device>,
    ) -> Result<ErofsBuilder, ExportError> {
        if devices.len() > usize::from(u16::MAX) - 1 {
            return Err(ExportError::Unsupported(format!(
                "{} layers: an erofs device table holds at most 65534",
                devices.len()
            )));
        }
        let total: u64 = devices.iter().map(|d| u64::from(d.blocks)).sum();
        if write::UNI_BASE + total > u64::from(u32::MAX) {
            return Err(ExportError::Unsupported(
                "the layer files are larger than erofs can address together (12 TiB)".into(),
            ));
        }
        let mut b = Self::create(out, opts, cancel)?;
        let first = 1 + write::device_table_blocks(devices.len());
        b.area.next = first;
        b.area.buf_start = first;
        b.first_block = first;
        b.devices = devices;
        Ok(b)
    }

    /// A file whose data is already on device `dev` (1-based) as a layer
    /// file placed it: a META image's chunk indexes point there, and a
    /// small file's bytes go inline.
    pub(crate) fn adopt(&mut self, size: u64, p: Placement, dev: u16) -> io::Result<Content> {
        let mut c = match p {
            Placement::Inline(bytes) => {
                if bytes.len() as u64 != size || size > INLINE_MAX {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a layer record's inline file has the wrong size",
                    ));
                }
                self.store_flat(size, &mut &bytes[..])?
            }
            Placement::InlineAt(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "an inline file's bytes must be read from its layer file first",
                ))
            }
            Placement::Blocks {
                blkaddr,
                blocks,
                map,
            } => {
                let map = map.map(|m| {
                    self.maps.push(m);
                    self.maps.len() as u32 - 1
                });
                let mut c = Content::new(
                    Run {
                        start: u64::from(blkaddr),
                        len: u64::from(blocks),
                    },
                    None,
                    map,
                );
                c.dev = dev;
                c
            }
        };
        c.seq = self.next_seq;
        self.next_seq += 1;
        Ok(c)
    }

    /// Lay out the inodes, directories and superblock of the finished
    /// merged tree and write them; fsync. `uuid` and `build_time` make the
    /// image reproducible.
    pub fn finish(
        mut self,
        tree: &MergedTree<Content>,
        uuid: [u8; 16],
    ) -> Result<ErofsStats, ExportError> {
        let r = self.finish_inner(tree, uuid, None);
        self.done = r.is_ok();
        r
    }

    /// Finish a layer file (`ErofsOptions::layer`): also where each stored
    /// content ended up, by the order `store` made them.
    pub(crate) fn finish_layer(
        mut self,
        tree: &MergedTree<Content>,
        uuid: [u8; 16],
    ) -> Result<(ErofsStats, Vec<Option<Placement>>), ExportError> {
        let mut out = vec![None; self.next_seq as usize];
        let r = self.finish_inner(tree, uuid, Some(&mut out));
        self.done = r.is_ok();
        Ok((r?, out))
    }

    /// The seq of `c`, for reading a layer file's placements.
    pub(crate) fn seq(c: &Content) -> usize {
        c.seq as usize
    }

    fn finish_inner(
        &mut self,
        tree: &MergedTree<Content>,
        uuid: [u8; 16],
        placements: Option<&mut Vec<Option<Placement>>>,
    ) -> Result<ErofsStats, ExportError> {
        self.flush_spool().map_err(werr)?;
        self.spool_buf = Vec::new();
        // Lay out: a record per inode, file data settled, nids.
        let walk = Walk::new(tree);
        let shared = xattr::plan(walk.order.iter().map(|&id| &tree.node(id).xattrs[..]));
        let mut plan = layout::plan(tree, &walk, &shared, &self.maps)?;
        self.move_oversized_tails(&mut plan.recs)?;
        let moves = self.compact(&mut plan.recs);
        self.area.flush().map_err(werr)?;
        // The copies run in the kernel while this thread indexes, numbers
        // and makes the directories; nothing is written until they end.
        let (meta_len, dirs, copied) = std::thread::scope(|s| {
            let file = &self.area.file;
            let copier = s.spawn(move || {
                moves
                    .iter()
                    .try_for_each(|m| copy_within(file, m.from, m.to, m.blocks))
            });
            self.index_maps(&mut plan.recs);
            let meta_len = plan.assign_nids();
            let dirs = write::dir_contents(tree, &plan);
            (meta_len, dirs, copier.join())
        });
        copied
            .map_err(|_| werr(io::Error::other("the compaction thread panicked")))?
            .map_err(werr)?;
        // Write the directories and the shared xattrs (the data area ends
        // there), the inodes, the superblock.
        self.write_dirs(&mut plan, dirs)?;
        let xattr_blkaddr = if shared.area.is_empty() {
            0
        } else {
            self.area.put(&shared.area).map_err(werr)?.start
        };
        self.area.flush().map_err(werr)?;
        let meta_blkaddr = self.area.next;
        self.write_inodes(tree, &plan, meta_blkaddr)?;
        let totals = write::Totals {
            blocks: meta_blkaddr + meta_len.div_ceil(BLOCK).max(1),
            meta_blkaddr,
            xattr_blkaddr,
            uuid,
        };
        self.write_superblock(&plan, &totals)?;
        if let Some(out) = placements {
            self.placements(tree, &plan, meta_blkaddr, out)?;
        }
        let recs = &plan.recs;
        let count = |layout| recs.iter().filter(|r| r.layout == layout).count() as u64;
        Ok(ErofsStats {
            inodes: recs.len() as u64,
            blocks: totals.blocks,
            compact_inodes: recs.iter().filter(|r| !r.extended).count() as u64,
            compressed_files: count(format::COMPRESSED_FULL),
            sparse_files: count(format::CHUNK_BASED),
        })
    }
}

impl ContentSink for ErofsBuilder {
    type Handle = Content;

    fn store(&mut self, size: u64, r: &mut dyn Read) -> io::Result<Content> {
        let mut c = self.store_any(size, r)?;
        c.seq = self.next_seq;
        self.next_seq += 1;
        Ok(c)
    }

    fn release(&mut self, h: Content) {
        // A device's blocks are not this image's to reuse.
        if h.dev == 0 {
            self.area.release(h.run);
        }
    }
}

impl ErofsBuilder {
    fn store_any(&mut self, size: u64, r: &mut dyn Read) -> io::Result<Content> {
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
                match data::store(&mut self.area, size, r, self.lz4.as_ref())? {
                    data::Stored::Flat(run) => Content::new(run, None, None),
                    data::Stored::Mapped(run, m) => {
                        self.maps.push(m);
                        Content::new(run, None, Some(self.maps.len() as u32 - 1))
                    }
                },
            );
        }
        self.store_flat(size, r)
    }

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
        Ok(Some(Content::new(
            Run { start, len: blocks },
            None,
            Some(self.maps.len() as u32 - 1),
        )))
    }

    fn flush_spool(&mut self) -> io::Result<()> {
        let start = self.spool_len - self.spool_buf.len() as u64;
        self.spool.write_all_at(&self.spool_buf, start)?;
        self.spool_buf.clear();
        Ok(())
    }

    /// A plain run, its tail spooled for inlining when short enough.
    fn store_flat(&mut self, size: u64, r: &mut dyn Read) -> io::Result<Content> {
        let tail_len = size % BLOCK;
        // A layer file keeps a file's blocks whole and contiguous (a META
        // image's chunk index cannot point at a tail beside an inode).
        let whole = self.opts.layer && size > INLINE_MAX;
        let inline = tail_len > 0 && tail_len <= INLINE_MAX && !whole;
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
            let off = self.spool_len;
            let at = self.spool_buf.len();
            self.spool_buf.resize(at + tail_len as usize, 0);
            r.read_exact(&mut self.spool_buf[at..])?;
            self.spool_len += tail_len;
            if self.spool_buf.len() >= 1 << 20 {
                self.flush_spool()?;
            }
            Some((off, tail_len as u32))
        } else {
            None
        };
        Ok(Content::new(run, tail, None))
    }
}

pub(crate) mod data;
pub(crate) mod format;
mod layout;
#[cfg(test)]
mod lz4_tests;
#[cfg(test)]
pub(crate) mod tests;
mod write;
pub(crate) use write::{crc32c, Window};
mod xattr;
#[cfg(test)]
mod xattr_tests;
