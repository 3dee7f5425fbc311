//! A layer file's record: what a META image needs of the layer file, kept
//! beside it so that building a META reads no layer file's data blocks
//! and no erofs parser is needed: the layer's listing (entries, whiteouts,
//! opaque markers, hardlinks), where each file's data is in the layer file
//! (its blocks, or for a small file the offset of its bytes inline in the
//! metadata area), and what ties the record
//! to its layer file (the diff_id, the file's length and its superblock
//! checksum). The whole is sealed with its sha256.
//!
//! Hand-written, not serde: a private, versioned format of a few types
//! from `hoist-unpack` that carry no serde derives, decoded with a bound
//! on every length (a damaged record is refused, never trusted).

use hoist_unpack::{EntryMeta, EntryType, Listed, ListedBody};
use sha2::{Digest as _, Sha256};

use crate::erofs_builder::data::{FileMap, Piece};
use crate::erofs_builder::Placement;

const MAGIC: &[u8; 8] = b"HOISTLR\x01";

/// A layer file's record.
pub(crate) struct Record {
    /// `sha256:<hex>`.
    pub(crate) diff_id: String,
    pub(crate) lz4: bool,
    /// The layer file's length and its superblock's checksum.
    pub(crate) file_len: u64,
    pub(crate) sb_checksum: u32,
    /// Entries of the listing (`entries` may be left unread).
    pub(crate) count: u64,
    pub(crate) entries: Vec<Listed<Placement>>,
}

/// Encodes into a buffer that goes to `out` a MiB at a time, hashed on
/// the way (a record can hold tens of MiB of small files).
struct Enc<'w> {
    buf: Vec<u8>,
    out: &'w mut dyn std::io::Write,
    hash: Sha256,
}

impl Enc<'_> {
    fn spill(&mut self) -> std::io::Result<()> {
        self.hash.update(&self.buf);
        self.out.write_all(&self.buf)?;
        self.buf.clear();
        Ok(())
    }
    fn spill_if_full(&mut self) -> std::io::Result<()> {
        if self.buf.len() >= 1 << 20 {
            self.spill()?;
        }
        Ok(())
    }
    fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.buf.extend_from_slice(b);
    }
    fn meta(&mut self, m: &EntryMeta) {
        self.u8(kind_code(m.kind));
        self.u32(m.mode);
        self.u64(m.uid);
        self.u64(m.gid);
        self.u32(m.major);
        self.u32(m.minor);
        self.u64(m.mtime as u64);
    }
    fn placement(&mut self, p: &Placement) {
        match p {
            Placement::Inline(b) => {
                self.u8(0);
                self.bytes(b);
            }
            Placement::InlineAt(at) => {
                self.u8(2);
                self.u64(*at);
            }
            Placement::Blocks {
                blkaddr,
                blocks,
                map,
            } => {
                self.u8(1);
                self.u32(*blkaddr);
                self.u32(*blocks);
                match map {
                    None => self.u8(0),
                    Some(m) => {
                        self.u8(1 + u8::from(m.lz4));
                        self.u64(m.pieces.len() as u64);
                        for p in &m.pieces {
                            match *p {
                                Piece::Hole => self.u8(0),
                                Piece::Plain(at) => {
                                    self.u8(1);
                                    self.u32(at);
                                }
                                Piece::Lz4 { at, blocks } => {
                                    self.u8(2);
                                    self.u32(at);
                                    self.u32(blocks);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn kind_code(k: EntryType) -> u8 {
    match k {
        EntryType::File => 0,
        EntryType::Dir => 1,
        EntryType::Symlink => 2,
        EntryType::Char => 3,
        EntryType::Block => 4,
        EntryType::Fifo => 5,
    }
}

/// Why a record was refused.
#[derive(Debug)]
pub(crate) struct Bad(pub(crate) &'static str);

struct Dec<'a>(&'a [u8]);

impl<'a> Dec<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Bad> {
        if n > self.0.len() {
            return Err(Bad("cut short"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, Bad> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, Bad> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, Bad> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    /// A length, bounded by what is left (every item takes a byte at least).
    fn len(&mut self) -> Result<usize, Bad> {
        let n = self.u64()?;
        if n > self.0.len() as u64 {
            return Err(Bad("a length past its end"));
        }
        Ok(n as usize)
    }
    fn bytes(&mut self) -> Result<Vec<u8>, Bad> {
        let n = self.len()?;
        Ok(self.take(n)?.to_vec())
    }
    fn meta(&mut self) -> Result<EntryMeta, Bad> {
        let kind = match self.u8()? {
            0 => EntryType::File,
            1 => EntryType::Dir,
            2 => EntryType::Symlink,
            3 => EntryType::Char,
            4 => EntryType::Block,
            5 => EntryType::Fifo,
            _ => return Err(Bad("an unknown entry type")),
        };
        Ok(EntryMeta {
            kind,
            mode: self.u32()?,
            uid: self.u64()?,
            gid: self.u64()?,
            major: self.u32()?,
            minor: self.u32()?,
            mtime: self.u64()? as i64,
        })
    }
    fn placement(&mut self) -> Result<Placement, Bad> {
        Ok(match self.u8()? {
            0 => Placement::Inline(self.bytes()?),
            1 => {
                let blkaddr = self.u32()?;
                let blocks = self.u32()?;
                let map = match self.u8()? {
                    0 => None,
                    t @ (1 | 2) => {
                        let n = self.len()?;
                        let mut pieces = Vec::with_capacity(n);
                        for _ in 0..n {
                            pieces.push(match self.u8()? {
                                0 => Piece::Hole,
                                1 => Piece::Plain(self.u32()?),
                                2 => Piece::Lz4 {
                                    at: self.u32()?,
                                    blocks: self.u32()?,
                                },
                                _ => return Err(Bad("an unknown piece")),
                            });
                        }
                        Some(FileMap {
                            pieces,
                            lz4: t == 2,
                        })
                    }
                    _ => return Err(Bad("an unknown map")),
                };
                Placement::Blocks {
                    blkaddr,
                    blocks,
                    map,
                }
            }
            2 => Placement::InlineAt(self.u64()?),
            _ => return Err(Bad("an unknown placement")),
        })
    }
}

impl Record {
    /// Write the record to `out`, its seal last.
    pub(crate) fn write_to(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        let mut e = Enc {
            buf: MAGIC.to_vec(),
            out,
            hash: Sha256::new(),
        };
        e.bytes(self.diff_id.as_bytes());
        e.u8(u8::from(self.lz4));
        e.u64(self.file_len);
        e.u32(self.sb_checksum);
        e.u64(self.entries.len() as u64);
        for l in &self.entries {
            e.spill_if_full()?;
            match l {
                Listed::Entry {
                    rel,
                    meta,
                    xattrs,
                    body,
                } => {
                    e.u8(0);
                    e.bytes(rel);
                    e.meta(meta);
                    e.u64(xattrs.len() as u64);
                    for (k, v) in xattrs {
                        e.bytes(k.as_bytes());
                        e.bytes(v);
                    }
                    match body {
                        ListedBody::Dir => e.u8(0),
                        ListedBody::Special => e.u8(1),
                        ListedBody::Symlink(t) => {
                            e.u8(2);
                            e.bytes(t);
                        }
                        ListedBody::File { size, content } => {
                            e.u8(3);
                            e.u64(*size);
                            e.placement(content);
                        }
                    }
                }
                Listed::Hardlink { rel, target } => {
                    e.u8(1);
                    e.bytes(rel);
                    e.bytes(target);
                }
                Listed::Whiteout(rel) => {
                    e.u8(2);
                    e.bytes(rel);
                }
                Listed::Opaque(rel) => {
                    e.u8(3);
                    e.bytes(rel);
                }
            }
        }
        e.spill()?;
        let sum = e.hash.finalize();
        e.out.write_all(&sum)
    }

    /// The record, or only its head (`entries` left empty) without
    /// `entries`; either way its seal is checked first.
    pub(crate) fn decode(all: &[u8], entries: bool) -> Result<Record, Bad> {
        if all.len() < MAGIC.len() + 32 || &all[..MAGIC.len()] != MAGIC {
            return Err(Bad("not a hoist layer record of this version"));
        }
        let (body, sum) = all.split_at(all.len() - 32);
        if Sha256::digest(body).as_slice() != sum {
            return Err(Bad("its checksum does not match"));
        }
        let mut d = Dec(&body[MAGIC.len()..]);
        let diff_id =
            String::from_utf8(d.bytes()?).map_err(|_| Bad("a diff_id that is not text"))?;
        let lz4 = d.u8()? != 0;
        let file_len = d.u64()?;
        let sb_checksum = d.u32()?;
        let n = d.len()?;
        if !entries {
            return Ok(Record {
                diff_id,
                lz4,
                file_len,
                sb_checksum,
                count: n as u64,
                entries: Vec::new(),
            });
        }
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            entries.push(match d.u8()? {
                0 => {
                    let rel = d.bytes()?;
                    let meta = d.meta()?;
                    let nx = d.len()?;
                    let mut xattrs = Vec::with_capacity(nx);
                    for _ in 0..nx {
                        let k = String::from_utf8(d.bytes()?)
                            .map_err(|_| Bad("an xattr name that is not text"))?;
                        xattrs.push((k, d.bytes()?));
                    }
                    let body = match d.u8()? {
                        0 => ListedBody::Dir,
                        1 => ListedBody::Special,
                        2 => ListedBody::Symlink(d.bytes()?),
                        3 => ListedBody::File {
                            size: d.u64()?,
                            content: d.placement()?,
                        },
                        _ => return Err(Bad("an unknown body")),
                    };
                    Listed::Entry {
                        rel,
                        meta,
                        xattrs,
                        body,
                    }
                }
                1 => Listed::Hardlink {
                    rel: d.bytes()?,
                    target: d.bytes()?,
                },
                2 => Listed::Whiteout(d.bytes()?),
                3 => Listed::Opaque(d.bytes()?),
                _ => return Err(Bad("an unknown entry")),
            });
        }
        if !d.0.is_empty() {
            return Err(Bad("bytes after its end"));
        }
        Ok(Record {
            diff_id,
            lz4,
            file_len,
            sb_checksum,
            count: n as u64,
            entries,
        })
    }
}
