//! File data that is not one plain run: sparse files (chunk-based, holes
//! as `EROFS_NULL_ADDR`) and lz4-compressed files (legacy full lcluster
//! indexes over big pclusters).
//!
//! Why fixed-input big pclusters and not mkfs.erofs's fixed-output 4 KiB
//! ones: the latter need "compress as much as fits in one block"
//! (`LZ4_compress_destSize`), which `lz4_flex` does not offer. A 128 KiB
//! chunk compressed whole into as many blocks as it needs is what the big
//! pcluster feature (Linux 5.13+) is for. Measured on rig/big: 64 KiB
//! chunks gave an image 6 % larger than `mkfs.erofs -zlz4`'s (half a block
//! of padding per pcluster), 128 KiB 4 %, 256 KiB 3 % (for twice the read
//! amplification).
//!
//! Every file is read in 128 KiB chunks. A chunk that lz4 shrinks by at
//! least a block becomes a compressed pcluster (its data at the end of its
//! blocks, zeros before: the `ZERO_PADDING` feature), any other chunk
//! stays plain. An all-zero chunk of a file of 1 MiB or more is a hole
//! candidate: with 8 or more of them (1 MiB) the file is written
//! chunk-based with those chunks unmapped (Linux 5.15+), with fewer they
//! are written like any other chunk, so that ordinary files keep the
//! layouts every kernel reads.

use std::io::{self, Read};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use zerocopy::IntoBytes;

use super::format::{LclusterIndex, ZMapHeader};
use crate::blocks::{BlockArea, Run, BLOCK};

pub(super) const CHUNK: u64 = 128 << 10;
const CHUNK_BLOCKS: u64 = CHUNK / BLOCK;
/// `chunksize = blocksize << CHUNK_BITS`.
pub(super) const CHUNK_BITS: u16 = 5;
/// Files from this size on are looked at for holes.
pub(super) const HOLE_MIN: u64 = 1 << 20;
/// All-zero chunks a file needs to be written with holes.
const HOLES_MIN: usize = 8;
const NULL_ADDR: u32 = u32::MAX;
/// The first non-head lcluster of a big pcluster holds its block count.
const D0_CBLKCNT: u16 = 1 << 11;
const ADVISE_BIG_PCLUSTER_1: u16 = 2;
pub(super) const LZ4_MAX_PCLUSTER_BLOCKS: u16 = CHUNK_BLOCKS as u16;

/// One 128 KiB chunk of a file: its block relative to the file's run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Piece {
    Hole,
    Plain(u32),
    Lz4 { at: u32, blocks: u32 },
}

/// How a file's chunks are laid out, when not as one plain run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileMap {
    pub(crate) pieces: Vec<Piece>,
    /// Compressed (lz4 pieces, no holes) rather than chunk-based.
    pub(crate) lz4: bool,
}

fn chunk_len(size: u64, i: usize) -> usize {
    (size - i as u64 * CHUNK).min(CHUNK) as usize
}

/// What `store` made of a file.
pub(super) enum Stored {
    /// One plain run holding the whole file, in order.
    Flat(Run),
    Mapped(Run, FileMap),
}

/// Stream `size` bytes (at least one chunk's worth, or a whole small file
/// under lz4) into `area` as pieces; compressed by `lz4` when given.
pub(super) fn store(
    area: &mut BlockArea,
    size: u64,
    r: &mut dyn Read,
    lz4: Option<&Lz4Worker>,
) -> io::Result<Stored> {
    let n = size.div_ceil(BLOCK);
    let start = area.alloc(n);
    let run = Run { start, len: n };
    let chunks = size.div_ceil(CHUNK) as usize;
    let mut pieces = Vec::with_capacity(chunks);
    // Pieces are packed in order; holes take no room (yet).
    let mut used: u64 = 0;
    let mut zeros = 0;
    match lz4 {
        // lz4: the worker compresses chunk i while the next is read; the
        // results come back in order and are placed in order.
        Some(w) => {
            let mut waiting = 0usize;
            let mut place = |pieces: &mut Vec<Piece>, used: &mut u64| -> io::Result<()> {
                let (data, c, keep) = w.recv()?;
                pieces.push(place_chunk(
                    area,
                    start,
                    used,
                    &data,
                    keep.then_some(&c[..]),
                )?);
                w.recycle(data);
                w.recycle_out(c);
                Ok(())
            };
            let mut pending: std::collections::VecDeque<bool> = Default::default();
            for i in 0..chunks {
                let len = chunk_len(size, i);
                let mut b = w.buffer(len);
                r.read_exact(&mut b)?;
                if size >= HOLE_MIN && b.iter().all(|&x| x == 0) {
                    zeros += 1;
                    pending.push_back(false);
                    w.recycle(b);
                } else {
                    w.send(b)?;
                    waiting += 1;
                    pending.push_back(true);
                }
                while waiting > Lz4Worker::DEPTH {
                    match pending.pop_front() {
                        Some(true) => {
                            place(&mut pieces, &mut used)?;
                            waiting -= 1;
                        }
                        Some(false) => pieces.push(Piece::Hole),
                        None => break,
                    }
                }
            }
            for compressed in pending {
                if compressed {
                    place(&mut pieces, &mut used)?;
                } else {
                    pieces.push(Piece::Hole);
                }
            }
        }
        // Uncompressed: each chunk is read straight into its place.
        None => {
            for i in 0..chunks {
                let len = chunk_len(size, i);
                if area.read_at(start + used, len, r, size >= HOLE_MIN)? {
                    zeros += 1;
                    pieces.push(Piece::Hole);
                    continue;
                }
                pieces.push(Piece::Plain(used as u32));
                used += (len as u64).div_ceil(BLOCK);
            }
        }
    }
    let lz4 = lz4.is_some();
    let blocks_of = |i: usize| (chunk_len(size, i) as u64).div_ceil(BLOCK);
    if zeros >= HOLES_MIN {
        // Chunk-based: every other chunk uncompressed, packed.
        if lz4 {
            let mut to = Vec::with_capacity(chunks);
            let mut at = 0;
            for (i, p) in pieces.iter().enumerate() {
                to.push(at);
                if *p != Piece::Hole {
                    at += blocks_of(i);
                }
            }
            relocate(area, run, size, &mut pieces, &to)?;
            used = at;
        }
        area.release(Run {
            start: start + used,
            len: n - used,
        });
        let run = Run { start, len: used };
        return Ok(Stored::Mapped(run, FileMap { pieces, lz4: false }));
    }
    if zeros > 0 && !lz4 {
        // Too few zeros for holes: every chunk at its natural place, zeros
        // written (the blocks may hold what a chunk left there).
        let to: Vec<u64> = (0..chunks).map(|i| i as u64 * CHUNK_BLOCKS).collect();
        relocate(area, run, size, &mut pieces, &to)?;
        let zero = vec![0u8; CHUNK as usize];
        for i in 0..chunks {
            if pieces[i] == Piece::Hole {
                area.put_at(start + to[i], 0, &zero[..chunk_len(size, i)])?;
                pieces[i] = Piece::Plain(to[i] as u32);
            }
        }
        used = n;
    }
    if pieces.contains(&Piece::Hole) {
        // lz4, a few zero chunks: after the rest, like the rest.
        let zero = vec![0u8; CHUNK as usize];
        let mut out = vec![0u8; lz4_flex::block::get_maximum_output_size(CHUNK as usize)];
        for i in 0..chunks {
            if pieces[i] == Piece::Hole {
                let data = &zero[..chunk_len(size, i)];
                pieces[i] = put_chunk(area, start, &mut used, data, &mut out)?;
            }
        }
    }
    area.release(Run {
        start: start + used,
        len: n - used,
    });
    let run = Run { start, len: used };
    let natural = |(i, p): (usize, &Piece)| *p == Piece::Plain((i as u64 * CHUNK_BLOCKS) as u32);
    if pieces.iter().enumerate().all(natural) {
        // Plain chunks in order: one run.
        return Ok(Stored::Flat(run));
    }
    Ok(Stored::Mapped(run, FileMap { pieces, lz4: true }))
}

/// Compresses 128 KiB chunks on a thread of its own, in order, so that
/// lz4 runs beside the merge instead of inside it. `lz4_flex` is used with
/// its optimised (unsafe) paths: the same bytes as the safe ones, faster.
pub(super) struct Lz4Worker {
    tx: Option<SyncSender<(Vec<u8>, Vec<u8>)>>,
    rx: Receiver<(Vec<u8>, Vec<u8>, bool)>,
    /// Buffers for chunks and for their compressed form, used again (fresh
    /// 128 KiB allocations cost page faults and zeroing every time).
    spare: std::cell::RefCell<Vec<Vec<u8>>>,
    spare_out: std::cell::RefCell<Vec<Vec<u8>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Lz4Worker {
    /// Chunks handed over and not yet placed, at most.
    pub(super) const DEPTH: usize = 4;

    pub(super) fn new() -> Lz4Worker {
        let (tx, jobs) = sync_channel::<(Vec<u8>, Vec<u8>)>(Self::DEPTH + 1);
        let (done, rx) = sync_channel(Self::DEPTH + 1);
        let thread = std::thread::spawn(move || {
            for (data, mut out) in jobs {
                out.resize(lz4_flex::block::get_maximum_output_size(data.len()), 0);
                let keep = match lz4_flex::block::compress_into(&data, &mut out) {
                    Ok(c) => {
                        out.truncate(c);
                        // Worth it only when it saves a block.
                        (c as u64).div_ceil(BLOCK) < (data.len() as u64).div_ceil(BLOCK)
                    }
                    Err(_) => false,
                };
                if done.send((data, out, keep)).is_err() {
                    return;
                }
            }
        });
        Lz4Worker {
            tx: Some(tx),
            rx,
            spare: Default::default(),
            spare_out: Default::default(),
            thread: Some(thread),
        }
    }

    fn buffer(&self, len: usize) -> Vec<u8> {
        let mut b = self.spare.borrow_mut().pop().unwrap_or_default();
        b.resize(len, 0);
        b
    }

    fn recycle(&self, b: Vec<u8>) {
        let mut s = self.spare.borrow_mut();
        if s.len() < 2 * Self::DEPTH {
            s.push(b);
        }
    }

    fn send(&self, data: Vec<u8>) -> io::Result<()> {
        let out = self.spare_out.borrow_mut().pop().unwrap_or_default();
        self.tx
            .as_ref()
            .and_then(|t| t.send((data, out)).ok())
            .ok_or_else(|| io::Error::other("the lz4 worker stopped"))
    }

    /// The next chunk and its compressed form (`None`: store it plain).
    fn recv(&self) -> io::Result<(Vec<u8>, Vec<u8>, bool)> {
        self.rx
            .recv()
            .map_err(|_| io::Error::other("the lz4 worker stopped"))
    }

    fn recycle_out(&self, b: Vec<u8>) {
        let mut s = self.spare_out.borrow_mut();
        if s.len() < 2 * Self::DEPTH {
            s.push(b);
        }
    }
}

impl Drop for Lz4Worker {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One chunk at `start + used`, compressed or not as decided already.
fn place_chunk(
    area: &mut BlockArea,
    start: u64,
    used: &mut u64,
    data: &[u8],
    compressed: Option<&[u8]>,
) -> io::Result<Piece> {
    let at = *used as u32;
    if let Some(c) = compressed {
        let blocks = (c.len() as u64).div_ceil(BLOCK);
        let pad = (blocks * BLOCK) as usize - c.len();
        area.put_at(start + *used, pad, c)?;
        *used += blocks;
        return Ok(Piece::Lz4 {
            at,
            blocks: blocks as u32,
        });
    }
    area.put_at(start + *used, 0, data)?;
    *used += (data.len() as u64).div_ceil(BLOCK);
    Ok(Piece::Plain(at))
}

/// One chunk at `start + used`, lz4-compressed when that saves a block.
fn put_chunk(
    area: &mut BlockArea,
    start: u64,
    used: &mut u64,
    data: &[u8],
    out: &mut [u8],
) -> io::Result<Piece> {
    let plain = (data.len() as u64).div_ceil(BLOCK);
    let at = *used as u32;
    let c = lz4_flex::block::compress_into(data, out).map_err(io::Error::other)?;
    let blocks = (c as u64).div_ceil(BLOCK);
    if blocks < plain {
        let pad = (blocks * BLOCK) as usize - c;
        area.put_at(start + *used, pad, &out[..c])?;
        *used += blocks;
        return Ok(Piece::Lz4 {
            at,
            blocks: blocks as u32,
        });
    }
    area.put_at(start + *used, 0, data)?;
    *used += plain;
    Ok(Piece::Plain(at))
}

/// Move every piece that is not a hole to block `to[i]` of the run,
/// uncompressed. Last chunk first: a piece's packed place is never after
/// its new one, and the pieces not yet moved lie below every block
/// written.
fn relocate(
    area: &mut BlockArea,
    run: Run,
    size: u64,
    pieces: &mut [Piece],
    to: &[u64],
) -> io::Result<()> {
    let mut raw = Vec::new();
    let mut chunk = vec![0u8; CHUNK as usize];
    for (i, p) in pieces.iter_mut().enumerate().rev() {
        let len = chunk_len(size, i);
        match *p {
            Piece::Hole => continue,
            Piece::Plain(from) => {
                if u64::from(from) == to[i] {
                    continue;
                }
                raw.clear();
                area.read_run(run.start + u64::from(from), len as u64, &mut raw)?;
                chunk[..len].copy_from_slice(&raw);
            }
            Piece::Lz4 { at: from, blocks } => {
                raw.clear();
                area.read_run(
                    run.start + u64::from(from),
                    u64::from(blocks) * BLOCK,
                    &mut raw,
                )?;
                let skip = raw.iter().position(|&b| b != 0).unwrap_or(raw.len());
                let got = lz4_flex::block::decompress_into(&raw[skip..], &mut chunk[..len])
                    .map_err(io::Error::other)?;
                if got != len {
                    return Err(io::Error::other("lz4 chunk read back short"));
                }
            }
        }
        area.put_at(run.start + to[i], 0, &chunk[..len])?;
        *p = Piece::Plain(to[i] as u32);
    }
    Ok(())
}

impl FileMap {
    /// The bytes after an inode whose inode and xattrs take `head` bytes:
    /// alignment, then the block map (chunk-based) or the map header, its
    /// legacy padding and one lcluster index per 4 KiB (lz4). `base` is the
    /// file's first block.
    pub(super) fn index(&self, head: usize, base: u64, size: u64) -> Vec<u8> {
        let mut b = Vec::new();
        if !self.lz4 {
            b.resize(head.next_multiple_of(4) - head, 0);
            for p in &self.pieces {
                let a = match p {
                    Piece::Hole => NULL_ADDR,
                    Piece::Plain(at) => (base + u64::from(*at)) as u32,
                    Piece::Lz4 { .. } => unreachable!("chunk-based maps are uncompressed"),
                };
                b.extend_from_slice(&a.to_le_bytes());
            }
            return b;
        }
        b.resize(head.next_multiple_of(8) - head, 0);
        // Algorithm lz4 (0 for head 1), lcluster bits - 12 = 0; then 8
        // bytes of legacy padding.
        let h = ZMapHeader {
            advise: ADVISE_BIG_PCLUSTER_1.into(),
            ..Default::default()
        };
        b.extend_from_slice(h.as_bytes());
        b.extend_from_slice(&[0u8; 8]);
        let lcluster = |b: &mut Vec<u8>, kind: u16, u: u32| {
            let i = LclusterIndex {
                advise: kind.into(),
                clusterofs: 0.into(),
                u: u.into(),
            };
            b.extend_from_slice(i.as_bytes());
        };
        for (i, p) in self.pieces.iter().enumerate() {
            let nlc = (chunk_len(size, i) as u64).div_ceil(BLOCK) as u16;
            match *p {
                Piece::Plain(at) => {
                    for k in 0..u64::from(nlc) {
                        let a = (base + u64::from(at) + k) as u32;
                        lcluster(&mut b, 0, a);
                    }
                }
                Piece::Lz4 { at, blocks } => {
                    let a = (base + u64::from(at)) as u32;
                    lcluster(&mut b, 1, a);
                    for k in 1..nlc {
                        let d0 = if k == 1 {
                            D0_CBLKCNT | blocks as u16
                        } else {
                            k
                        };
                        // delta[0] then delta[1], little-endian halves.
                        let w = u32::from(d0) | (u32::from(nlc - k) << 16);
                        lcluster(&mut b, 2, w);
                    }
                }
                Piece::Hole => unreachable!("compressed maps have no holes"),
            }
        }
        b
    }
}
