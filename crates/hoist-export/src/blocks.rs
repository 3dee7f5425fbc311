//! The writer seam's shared part: a file of 4 KiB blocks that contents are
//! written into as the merged layers stream past. Runs are appended, or put
//! in the best-fitting hole a released (whited-out or replaced) file left;
//! writes go through an 8 MiB write-behind buffer; zeros in never-written
//! blocks stay holes in the file. The ext4 writer lays its image out in
//! one; the cpio writer spools contents in one.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

use hoist_spec::Cancel;

pub const BLOCK: u64 = 4096;
const FLUSH_AT: usize = 8 << 20;
const CHUNK: usize = 1 << 20;

/// A contiguous run of blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub start: u64,
    pub len: u64,
}

pub struct BlockArea {
    pub(crate) file: File,
    /// The next never-used block.
    pub(crate) next: u64,
    /// Holes left by released runs: (len, start).
    pub(crate) holes: BTreeSet<(u64, u64)>,
    pub(crate) buf: Vec<u8>,
    pub(crate) buf_start: u64,
    cancel: Option<Cancel>,
    scratch: Vec<u8>,
}

impl BlockArea {
    /// Blocks from `first` on are the area's; `cancel` is checked at every
    /// flush, so a cancelled writer stops within one buffer.
    pub fn new(file: File, first: u64, cancel: Option<Cancel>) -> BlockArea {
        BlockArea {
            file,
            next: first,
            holes: BTreeSet::new(),
            buf: Vec::with_capacity(FLUSH_AT + CHUNK),
            buf_start: first,
            scratch: Vec::new(),
            cancel,
        }
    }

    /// `n` blocks: the smallest hole that fits, else new ones at the end.
    pub fn alloc(&mut self, n: u64) -> u64 {
        if let Some(&(len, start)) = self.holes.range((n, 0)..).next() {
            self.holes.remove(&(len, start));
            if len > n {
                self.holes.insert((len - n, start + n));
            }
            return start;
        }
        let s = self.next;
        self.next += n;
        s
    }

    pub fn release(&mut self, r: Run) {
        if r.len > 0 {
            self.holes.insert((r.len, r.start));
        }
    }

    pub fn flush(&mut self) -> io::Result<()> {
        if let Some(c) = &self.cancel {
            c.check().map_err(io::Error::other)?;
        }
        if !self.buf.is_empty() {
            self.file
                .write_all_at(&self.buf, self.buf_start * BLOCK)
                .map_err(hoist_unpack::write_failed)?;
            self.buf_start += (self.buf.len() as u64) / BLOCK;
            self.buf.clear();
        }
        Ok(())
    }

    /// Position the write buffer at block `start`.
    pub fn seek(&mut self, start: u64) -> io::Result<()> {
        if start != self.buf_start + (self.buf.len() as u64) / BLOCK {
            self.flush()?;
            self.buf_start = start;
        }
        Ok(())
    }

    /// Pad the buffer to a whole block.
    pub fn pad(&mut self) {
        let n = self.buf.len().div_ceil(BLOCK as usize) * BLOCK as usize;
        self.buf.resize(n, 0);
    }

    /// Write whole blocks (padded) somewhere new.
    pub fn put(&mut self, data: &[u8]) -> io::Result<Run> {
        let len = (data.len() as u64).div_ceil(BLOCK);
        let start = self.alloc(len);
        self.seek(start)?;
        self.buf.extend_from_slice(data);
        self.pad();
        if self.buf.len() >= FLUSH_AT {
            self.flush()?;
        }
        Ok(Run { start, len })
    }

    /// Write `data` at block `at` after `pad` zeros, padded to a whole
    /// block.
    pub fn put_at(&mut self, at: u64, pad: usize, data: &[u8]) -> io::Result<()> {
        self.seek(at)?;
        self.buf.resize(self.buf.len() + pad, 0);
        self.buf.extend_from_slice(data);
        self.pad();
        if self.buf.len() >= FLUSH_AT {
            self.flush()?;
        }
        Ok(())
    }

    /// Read `len` bytes of `r` straight into the write buffer at block
    /// `at` (padded to a whole block), or, when they are all zeros and
    /// `zeros_out`, leave nothing there and return `true`. One copy fewer
    /// than reading into a buffer of one's own and `put_at`.
    pub fn read_at(
        &mut self,
        at: u64,
        len: usize,
        r: &mut dyn Read,
        zeros_out: bool,
    ) -> io::Result<bool> {
        self.seek(at)?;
        if self.buf.len() >= FLUSH_AT {
            self.flush()?;
        }
        let pos = self.buf.len();
        self.buf.resize(pos + len, 0);
        r.read_exact(&mut self.buf[pos..])?;
        if zeros_out && self.buf[pos..].iter().all(|&b| b == 0) {
            self.buf.truncate(pos);
            return Ok(true);
        }
        self.pad();
        Ok(false)
    }

    /// Copy exactly `size` bytes of `r` into the run at `start`, allocated
    /// when the area ended at `fresh` (blocks from there on were never
    /// written, so runs of zeros in them are left as holes).
    pub fn write_stream(
        &mut self,
        start: u64,
        fresh: u64,
        size: u64,
        r: &mut dyn Read,
    ) -> io::Result<()> {
        self.seek(start)?;
        let mut left = size;
        let mut at_block = start;
        while left > 0 {
            // Whole chunks keep the buffer block-aligned at every flush.
            if self.buf.len() >= FLUSH_AT {
                self.flush()?;
            }
            let want = left.min(CHUNK as u64) as usize;
            let at = self.buf.len();
            self.buf.resize(at + want, 0);
            r.read_exact(&mut self.buf[at..])?;
            left -= want as u64;
            let blocks = (want as u64).div_ceil(BLOCK);
            if at_block >= fresh && self.buf[at..].iter().all(|&b| b == 0) {
                self.buf.truncate(at);
                self.flush()?;
                self.buf_start = at_block + blocks;
            }
            at_block += blocks;
        }
        self.pad();
        Ok(())
    }

    /// A file's content as a new run (`len` 0 for an empty file).
    pub fn store(&mut self, size: u64, r: &mut dyn Read) -> io::Result<Run> {
        let len = size.div_ceil(BLOCK);
        if len == 0 {
            return Ok(Run { start: 0, len: 0 });
        }
        let fresh = self.next;
        let start = self.alloc(len);
        self.write_stream(start, fresh, size, r)?;
        Ok(Run { start, len })
    }

    /// Read `size` bytes of the run at `start` back (the write buffer is
    /// flushed first).
    pub fn read_run(&mut self, start: u64, size: u64, out: &mut dyn io::Write) -> io::Result<()> {
        self.flush()?;
        // The scratch buffer is kept: a finish pass reads many runs back.
        let mut buf = std::mem::take(&mut self.scratch);
        buf.resize(CHUNK, 0);
        let mut off = start * BLOCK;
        let mut left = size;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            self.file.read_exact_at(&mut buf[..n], off)?;
            out.write_all(&buf[..n])?;
            off += n as u64;
            left -= n as u64;
        }
        self.scratch = buf;
        Ok(())
    }
}

/// Copy `blocks` blocks from block `from` to block `to` of `file`, inside
/// the kernel (`copy_file_range`; a filesystem with reflinks may not even
/// copy), with a read and write as the fallback. The runs must not overlap,
/// and a [`BlockArea`] on `file` must have been flushed.
pub fn copy_within(file: &File, from: u64, to: u64, blocks: u64) -> io::Result<()> {
    let (mut src, mut dst) = (from * BLOCK, to * BLOCK);
    let mut left = blocks * BLOCK;
    while left > 0 {
        match rustix::fs::copy_file_range(file, Some(&mut src), file, Some(&mut dst), left as usize)
        {
            Ok(0) => break,
            Ok(n) => left -= n as u64,
            Err(_) => break,
        }
    }
    let mut buf = vec![0u8; left.min(CHUNK as u64) as usize];
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        file.read_exact_at(&mut buf[..n], src)?;
        file.write_all_at(&buf[..n], dst)?;
        (src, dst, left) = (src + n as u64, dst + n as u64, left - n as u64);
    }
    Ok(())
}
