//! A native ext4 writer fed straight from the layer streams, in the manner
//! of hcsshim's `tar2ext4`: file contents go into the image as the merged
//! layers stream past ([`Ext4Builder`] is the merge's content sink), and
//! once the last layer is in, the directories, inode tables, bitmaps and
//! superblock are laid out after the data. No intermediate rootfs, no
//! `mkfs`/`debugfs` processes, and the owners, modes, device nodes and
//! xattrs come from the tar headers whoever runs it.
//!
//! Chosen over `mkfs.ext4 -d` plus a `debugfs` fix-up pass after measuring
//! both on a 68,000-file image: that path spent its time unpacking a tree,
//! re-reading it, and rewriting inodes (see the README's benchmark).
//!
//! Layout: block 0 holds the superblock, the group descriptor table
//! follows (room reserved for 256 GiB), then file data in arrival order,
//! then directory, symlink, extent-leaf and xattr blocks, then every
//! group's bitmaps and inode table together (`flex_bg` allows them
//! anywhere), then a small free margin. No journal, no backup superblocks
//! (`sparse_super2` with none), no resize inode, linear directories.
//! Files replaced by later layers give their blocks back for reuse.

mod disk;
mod format;
mod layout;
mod xattr;

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use hoist_unpack::ContentSink;

use crate::blocks::BlockArea;
use crate::error::ExportError;
pub use disk::Run;
use disk::{BLOCK, BLOCKS_PER_GROUP};

/// Room for group descriptors of up to 2048 groups (256 GiB), unless a
/// fixed size says how many there will be.
const DEFAULT_GDT_BLOCKS: u64 = 16;

#[derive(Debug, Clone, Default)]
pub struct Ext4Options {
    /// Fixed size in bytes; `None` sizes the filesystem to its contents
    /// plus a small margin.
    pub size: Option<u64>,
    /// Filesystem UUID; derive it from the image digest for reproducible
    /// images.
    pub uuid: [u8; 16],
    /// Directory hash seed, likewise.
    pub hash_seed: [u8; 16],
    /// The superblock's times (inodes carry the tar headers' mtimes).
    pub timestamp: i64,
    /// Checked at every flush of the write buffer: a cancelled export
    /// stops within one buffer (8 MiB) of writing.
    pub cancel: Option<hoist_spec::Cancel>,
}

#[derive(Debug, Clone)]
pub struct Ext4Stats {
    pub size: u64,
    pub inodes: u64,
    pub free_blocks: u64,
    pub free_inodes: u64,
    /// Bytes of regular-file content (each hardlinked file once).
    pub data_bytes: u64,
}

/// File contents as they arrive: contiguous runs, appended (or put in a
/// hole a replaced file left), written through a large buffer.
pub struct Ext4Builder {
    area: BlockArea,
    path: PathBuf,
    opts: Ext4Options,
    gdt_blocks: u64,
    /// Set when the contents outgrew a fixed `--size`: the bytes needed
    /// so far.
    overflow: Option<u64>,
    /// Set by a successful `finish`; until then dropping the builder
    /// removes the partial image.
    done: bool,
}

impl Drop for Ext4Builder {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn werr(e: io::Error) -> ExportError {
    ExportError::Write(e)
}

impl Ext4Builder {
    /// Start an image at `out` (created, or truncated).
    pub fn create(out: &Path, opts: Ext4Options) -> Result<Ext4Builder, ExportError> {
        let file = File::create(out).map_err(|e| ExportError::io("create", out, e))?;
        let gdt_blocks = match opts.size {
            Some(s) => (s / BLOCK)
                .div_ceil(BLOCKS_PER_GROUP)
                .div_ceil(BLOCK / 32)
                .max(1),
            None => DEFAULT_GDT_BLOCKS,
        };
        let next = 1 + gdt_blocks;
        Ok(Ext4Builder {
            area: BlockArea::new(file, next, opts.cancel.clone()),
            path: out.to_path_buf(),
            opts,
            gdt_blocks,
            overflow: None,
            done: false,
        })
    }

    /// UUID, hash seed and superblock time, when they are only known
    /// after the layers (the tree's newest mtime, say).
    pub fn set_identity(&mut self, uuid: [u8; 16], hash_seed: [u8; 16], timestamp: i64) {
        self.opts.uuid = uuid;
        self.opts.hash_seed = hash_seed;
        self.opts.timestamp = timestamp;
    }

    /// With a fixed `--size`: the contents have outgrown it, and need at
    /// least this many bytes. The merge stops at the first file past the
    /// end instead of writing the rest of the layers.
    pub fn overflow(&self) -> Option<(u64, u64)> {
        Some((self.opts.size?, self.overflow?))
    }
}

impl ContentSink for Ext4Builder {
    type Handle = Run;

    fn store(&mut self, size: u64, r: &mut dyn Read) -> io::Result<Run> {
        let len = size.div_ceil(BLOCK);
        if len == 0 {
            return Ok(Run { start: 0, len: 0 });
        }
        let fresh = self.area.next;
        let start = self.area.alloc(len);
        if let Some(limit) = self.opts.size {
            if self.area.next * BLOCK > limit {
                self.overflow = Some(self.area.next * BLOCK);
                return Err(io::Error::other(format!(
                    "the contents need more than the requested {limit} bytes"
                )));
            }
        }
        self.area.write_stream(start, fresh, size, r)?;
        Ok(Run { start, len })
    }

    fn release(&mut self, h: Run) {
        self.area.release(h);
    }
}

#[cfg(test)]
pub(crate) mod tests;
