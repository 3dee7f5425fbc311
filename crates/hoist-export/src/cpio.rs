//! newc cpio, written by hoist: what the kernel unpacks as an initramfs.
//! Owners, modes and device numbers come from the tar headers, so an
//! export by any user gives a root-owned `/etc/shadow` and a real
//! `/dev/null`.
//!
//! [`CpioBuilder`] is the merge's content sink: file contents are spooled
//! into one unnamed temp file (a [`BlockArea`], so a file a later layer
//! replaces gives its blocks back) as the layers stream past, and once the
//! last layer is in, the archive is written in path order from the merged
//! tree, each hardlinked file's data once, on its last name. Files deleted
//! by later layers are never emitted.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::path::Path;

use hoist_unpack::{Body, ContentSink, EntryType, MergedTree, NodeId, ROOT};

use crate::blocks::{BlockArea, Run};
use crate::error::ExportError;
use crate::tree::{type_bits, Walk};

#[derive(Debug, Clone, Default)]
pub struct CpioStats {
    pub entries: u64,
    pub bytes: u64,
}

struct Out<W: Write> {
    w: W,
    pos: u64,
}

impl<W: Write> Out<W> {
    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.w.write_all(b)?;
        self.pos += b.len() as u64;
        Ok(())
    }
    fn pad4(&mut self) -> io::Result<()> {
        let n = (4 - (self.pos % 4) as usize) % 4;
        self.put(&[0u8; 3][..n])
    }
}

#[allow(clippy::too_many_arguments)]
fn header<W: Write>(
    o: &mut Out<W>,
    ino: u32,
    mode: u32,
    uid: u64,
    gid: u64,
    nlink: u32,
    mtime: i64,
    size: u64,
    rdev: (u32, u32),
    name: &[u8],
) -> io::Result<()> {
    let f = |v: u64| format!("{:08x}", v as u32);
    let mut h = String::with_capacity(110);
    h.push_str("070701");
    for v in [
        ino as u64,
        mode as u64,
        uid,
        gid,
        nlink as u64,
        mtime.max(0) as u64,
        size,
        0,
        0,
        rdev.0 as u64,
        rdev.1 as u64,
        name.len() as u64 + 1,
        0,
    ] {
        h.push_str(&f(v));
    }
    o.put(h.as_bytes())?;
    o.put(name)?;
    o.put(&[0])?;
    o.pad4()
}

/// The contents spool of a cpio export.
pub struct CpioBuilder {
    spool: BlockArea,
}

impl CpioBuilder {
    /// Spool into an unnamed temp file in `dir` (beside the output, so it
    /// is on the same file system and gone however the process ends).
    pub fn new(dir: &Path, cancel: Option<hoist_spec::Cancel>) -> Result<CpioBuilder, ExportError> {
        let f =
            tempfile::tempfile_in(dir).map_err(|e| ExportError::io("create a spool in", dir, e))?;
        Ok(CpioBuilder {
            spool: BlockArea::new(f, 0, cancel),
        })
    }

    /// Write the archive of the finished merged tree to `w`.
    pub fn finish<W: Write>(
        mut self,
        tree: &MergedTree<Run>,
        w: W,
    ) -> Result<CpioStats, ExportError> {
        // Every name, in path order (the order a tree listing gives).
        let mut names: Vec<(Vec<u8>, NodeId)> = vec![(Vec::new(), ROOT)];
        names.extend(Walk::new(tree).paths());
        names.sort();
        let mut ino: HashMap<NodeId, (u32, u32)> = HashMap::new(); // (ino, names left)
        for (_, id) in &names {
            let next = ino.len() as u32 + 1;
            ino.entry(*id).or_insert((next, 0)).1 += 1;
        }
        let mut o = Out { w, pos: 0 };
        let mut stats = CpioStats::default();
        let werr = |e: io::Error| ExportError::Write(e);
        for (rel, id) in &names {
            let n = tree.node(*id);
            let m = &n.meta;
            let shown = || String::from_utf8_lossy(rel).to_string();
            if m.uid > u64::from(u32::MAX) || m.gid > u64::from(u32::MAX) {
                return Err(ExportError::Unsupported(format!(
                    "/{}: owner above 2^32 in cpio",
                    shown()
                )));
            }
            let entry = ino.get_mut(id).expect("numbered");
            entry.1 -= 1;
            let last_link = entry.1 == 0;
            let links = tree.node(*id).links;
            let (size, data): (u64, Option<&[u8]>) = match &n.body {
                Body::File { size, .. } if last_link => (*size, None),
                Body::Symlink(t) => (t.len() as u64, Some(&t[..])),
                _ => (0, None),
            };
            check_size(rel, size)?;
            let rdev = if matches!(m.kind, EntryType::Char | EntryType::Block) {
                (m.major, m.minor)
            } else {
                (0, 0)
            };
            let name: &[u8] = if rel.is_empty() { b"." } else { rel };
            header(
                &mut o,
                entry.0,
                type_bits(m.kind) | m.mode,
                m.uid,
                m.gid,
                if m.kind == EntryType::Dir { 2 } else { links },
                m.mtime,
                size,
                rdev,
                name,
            )
            .map_err(werr)?;
            match (&n.body, data) {
                (_, Some(d)) => o.put(d).map_err(werr)?,
                (
                    Body::File {
                        content: Some(run), ..
                    },
                    None,
                ) if size > 0 => {
                    let mut w = CountingWrite { o: &mut o };
                    self.spool.read_run(run.start, size, &mut w).map_err(werr)?;
                }
                _ => {}
            }
            o.pad4().map_err(werr)?;
            stats.entries += 1;
            stats.bytes += size;
        }
        header(&mut o, 0, 0, 0, 0, 1, 0, 0, (0, 0), b"TRAILER!!!").map_err(werr)?;
        let n = ((512 - (o.pos % 512)) % 512) as usize;
        o.put(&vec![0u8; n]).map_err(werr)?;
        o.w.flush().map_err(werr)?;
        Ok(stats)
    }
}

impl ContentSink for CpioBuilder {
    type Handle = Run;
    fn store(&mut self, size: u64, r: &mut dyn Read) -> io::Result<Run> {
        self.spool.store(size, r)
    }
    fn release(&mut self, h: Run) {
        self.spool.release(h);
    }
}

/// newc's size field is 32 bits: a larger file would be written with a
/// truncated size, a corrupt archive. Refuse it instead.
fn check_size(rel: &[u8], size: u64) -> Result<(), ExportError> {
    if size > u64::from(u32::MAX) {
        return Err(ExportError::Unsupported(format!(
            "/{}: a file of {size} bytes; a newc cpio archive holds files of at most {} bytes",
            String::from_utf8_lossy(rel),
            u32::MAX
        )));
    }
    Ok(())
}

/// `Out` as a plain writer, keeping its position for the padding.
struct CountingWrite<'a, W: Write> {
    o: &'a mut Out<W>,
}

impl<W: Write> Write for CountingWrite<'_, W> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.o.put(b)?;
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.o.w.flush()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_file_of_4_gib_or_more_is_an_error_not_a_truncated_size() {
        assert!(super::check_size(b"ok", u64::from(u32::MAX)).is_ok());
        let e = super::check_size(b"big", 4 << 30).unwrap_err();
        assert!(
            e.to_string().contains("/big: a file of 4294967296 bytes"),
            "{e}"
        );
        assert!(e.to_string().contains("at most 4294967295 bytes"), "{e}");
    }
}
