//! newc cpio, written by hoist: what the kernel unpacks as an initramfs.
//! Owners, modes and device numbers come from the recorded metadata, so a
//! rootless unpack still gives a root-owned `/etc/shadow` and a real
//! `/dev/null`.

use std::io::{self, Write};

use hoist_unpack::EntryType;

use crate::error::ExportError;
use crate::tree::{type_bits, Tree};

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

/// Write the tree as a newc archive (paths relative, `.` for the root).
pub fn write<W: Write>(tree: &Tree<'_>, w: W) -> Result<CpioStats, ExportError> {
    let mut o = Out { w, pos: 0 };
    let mut stats = CpioStats::default();
    let werr = |e: io::Error| ExportError::Write(e);
    for n in tree.nodes()? {
        let m = n.meta;
        if m.uid > u32::MAX as u64 || m.gid > u32::MAX as u64 {
            return Err(ExportError::Unsupported(format!(
                "{}: owner above 2^32 in cpio",
                String::from_utf8_lossy(n.rel)
            )));
        }
        let name: &[u8] = if n.rel.is_empty() { b"." } else { n.rel };
        let mode = type_bits(m.kind) | m.mode;
        let rdev = if matches!(m.kind, EntryType::Char | EntryType::Block) {
            (m.major, m.minor)
        } else {
            (0, 0)
        };
        let size = match m.kind {
            EntryType::File if n.last_link => n.size,
            EntryType::Symlink => n.size,
            _ => 0,
        };
        // newc's size field is 32 bits: a larger file would be written
        // with a truncated size, a corrupt archive. Refuse it instead.
        if size > u64::from(u32::MAX) {
            return Err(ExportError::Unsupported(format!(
                "/{}: a file of {size} bytes; a newc cpio archive holds files of at most {} bytes",
                String::from_utf8_lossy(n.rel),
                u32::MAX
            )));
        }
        header(
            &mut o,
            n.inode,
            mode,
            m.uid,
            m.gid,
            if m.kind == EntryType::Dir { 2 } else { n.nlink },
            m.mtime,
            size,
            rdev,
            name,
        )
        .map_err(werr)?;
        match m.kind {
            EntryType::File if size > 0 => {
                let mut r = tree.open(n.rel)?;
                let copied = io::copy(&mut r.by_ref_take(size), &mut o.w).map_err(werr)?;
                if copied != size {
                    return Err(ExportError::Changed(String::from_utf8_lossy(n.rel).into()));
                }
                o.pos += copied;
                o.pad4().map_err(werr)?;
            }
            EntryType::Symlink => {
                o.put(n.symlink_target.as_deref().unwrap_or_default())
                    .map_err(werr)?;
                o.pad4().map_err(werr)?;
            }
            _ => {}
        }
        stats.entries += 1;
        stats.bytes += size;
    }
    header(&mut o, 0, 0, 0, 0, 1, 0, 0, (0, 0), b"TRAILER!!!").map_err(werr)?;
    // Pad to 512 bytes like GNU cpio; harmless for the kernel.
    let n = ((512 - (o.pos % 512)) % 512) as usize;
    o.put(&vec![0u8; n]).map_err(werr)?;
    o.w.flush().map_err(werr)?;
    Ok(stats)
}

trait TakeExt: io::Read + Sized {
    fn by_ref_take(&mut self, n: u64) -> io::Take<&mut Self> {
        io::Read::take(self, n)
    }
}
impl<R: io::Read> TakeExt for R {}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use hoist_unpack::{EntryMeta, EntryType, TreeMeta};

    #[test]
    fn a_file_of_4_gib_or_more_is_an_error_not_a_truncated_size() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir(&root).unwrap();
        // Sparse: costs no disk.
        let f = std::fs::File::create(root.join("big")).unwrap();
        f.set_len(4 << 30).unwrap();
        let mut entries = BTreeMap::new();
        entries.insert(Vec::new(), EntryMeta::implicit_dir());
        let mut m = EntryMeta::implicit_dir();
        m.kind = EntryType::File;
        m.mode = 0o644;
        entries.insert(b"big".to_vec(), m);
        let meta = TreeMeta {
            entries,
            xattrs: BTreeMap::new(),
        };
        let tree = crate::Tree {
            rootfs: &root,
            meta: &meta,
        };
        let e = super::write(&tree, std::io::sink()).unwrap_err();
        assert!(e.to_string().contains("at most 4294967295 bytes"), "{e}");
    }
}
