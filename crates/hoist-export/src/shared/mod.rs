//! Layer-shared erofs disks: one erofs file per layer in a directory
//! shared by every image that has the layer, and a small META image per
//! image that stitches them together with erofs' device table (Linux
//! 5.16+ mounts it with `-o device=` per layer file).
//!
//! A layer file is the layer's tree alone ([`MergedTree::new_layer`]):
//! whiteouts as 0/0 character devices and opaque directories marked
//! `trusted.overlay.opaque=y`, as overlayfs reads them, so the files also
//! stack with overlayfs on kernels without multi-device erofs. Its name
//! depends only on the diff_id and whether data is lz4, and it is written
//! once: to a temp file under a per-name lock, then renamed. Beside it, a
//! [`record`] holds its listing and where each file's data went; a META is
//! built from the records alone, after checking each against its file.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use hoist_spec::{Cancel, Digest};
use hoist_unpack::{Guard, Listed, ListedBody, MergedTree};

use crate::erofs_builder::format::{
    DeviceSlot, SuperBlock, FEATURE_INCOMPAT_DEVICE_TABLE, MAGIC, SB_OFFSET,
};
use crate::erofs_builder::{
    crc32c, Device, ErofsBuilder, ErofsOptions, ErofsStats, Placement, Window,
};
use crate::error::ExportError;
use crate::BLOCK;
use zerocopy::FromBytes;

mod record;

use record::Record;

/// Bumped when a layer file's or record's format changes: old files are
/// then simply not found (and removed by `gc`).
const FORMAT: &str = "v1";
/// A record larger than this is not read (a layer of millions of entries
/// with inline files stays well under it).
const RECORD_MAX: u64 = 1 << 32;

/// The directory of layer files.
#[derive(Debug, Clone)]
pub struct LayerDir {
    root: PathBuf,
}

/// A verified layer file: one device of a META image.
#[derive(Clone)]
pub struct LayerFile {
    pub path: PathBuf,
    pub diff_id: Digest,
    /// The file's length.
    pub bytes: u64,
    /// Whether it was found in the directory (else this export built it).
    pub reused: bool,
    lz4: bool,
    /// Entries of its listing.
    entries: u64,
}

/// What [`LayerDir::gc`] did.
#[derive(Debug, Default, Clone)]
pub struct LayerGc {
    pub kept: u64,
    pub removed: u64,
    pub bytes_removed: u64,
}

/// Held while a layer file is looked for and, if missing, built.
pub struct LayerLock {
    _file: File,
}

fn hex_of(diff_id: &Digest) -> Result<&str, ExportError> {
    if diff_id.algorithm() != hoist_spec::Algorithm::Sha256 {
        return Err(ExportError::Unsupported(format!(
            "{diff_id}: layer files are named by sha256 diff_ids (an erofs device tag holds 64 hex characters)"
        )));
    }
    Ok(diff_id.hex())
}

/// The uuid of a layer file: from its diff_id, so it is the same bytes
/// whichever image it was made for.
fn uuid_of(hex: &str) -> [u8; 16] {
    std::array::from_fn(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap_or(0))
}

impl LayerDir {
    pub fn open(root: &Path) -> Result<LayerDir, ExportError> {
        std::fs::create_dir_all(root.join(".locks"))
            .map_err(|e| ExportError::io("create", root, e))?;
        Ok(LayerDir {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A layer file's name: the diff_id, the format version and whether
    /// its data is lz4.
    pub fn name(diff_id: &Digest, lz4: bool) -> Result<String, ExportError> {
        let hex = hex_of(diff_id)?;
        let z = if lz4 { ".lz4" } else { "" };
        Ok(format!("sha256-{hex}.{FORMAT}{z}.erofs"))
    }

    fn paths(&self, diff_id: &Digest, lz4: bool) -> Result<(PathBuf, PathBuf), ExportError> {
        let name = Self::name(diff_id, lz4)?;
        Ok((self.root.join(&name), self.root.join(format!("{name}.rec"))))
    }

    /// Lock a layer's name (across threads and processes: `flock` on a
    /// file of its own), waiting for whoever is building it.
    pub fn lock(&self, diff_id: &Digest, lz4: bool) -> Result<LayerLock, ExportError> {
        let p = self
            .root
            .join(".locks")
            .join(format!("{}.lock", Self::name(diff_id, lz4)?));
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(|e| ExportError::io("open", &p, e))?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| ExportError::io("lock", &p, e.into()))?;
        Ok(LayerLock { _file: f })
    }

    /// The layer file of `diff_id`, if it is here and verifies: its record
    /// reads whole and names this diff_id, and the file has the length and
    /// superblock checksum the record gives. Anything else is not used
    /// (a later build replaces it).
    pub fn find(&self, diff_id: &Digest, lz4: bool) -> Option<LayerFile> {
        let (file, rec) = self.paths(diff_id, lz4).ok()?;
        match verify(&file, &rec, diff_id, lz4, false) {
            Ok(r) => Some(LayerFile {
                bytes: r.file_len,
                path: file,
                diff_id: diff_id.clone(),
                reused: true,
                lz4,
                entries: r.count,
            }),
            Err(why) => {
                if file.exists() || rec.exists() {
                    tracing::warn!("{}: not used: {why}", file.display());
                }
                None
            }
        }
    }

    /// Build the layer file of `diff_id` from its uncompressed tar stream,
    /// under the name's lock (taken after [`LayerDir::find`] found none),
    /// into temp files. Nothing is in the directory until
    /// [`Pending::commit`], called once the stream's digest is checked.
    pub fn build(
        &self,
        diff_id: &Digest,
        lz4: bool,
        stream: &mut dyn Read,
        lock: LayerLock,
        guard: Guard,
        cancel: Option<Cancel>,
    ) -> Result<Pending, ExportError> {
        let (file, rec) = self.paths(diff_id, lz4)?;
        let tmp = temp_name(&file);
        let mut tree = MergedTree::new_layer();
        tree.set_guard(guard);
        let mut b = ErofsBuilder::create(&tmp, ErofsOptions { lz4, layer: true }, cancel)?;
        tree.apply_layer(&mut &mut *stream, &mut b)?;
        tree.finish()?;
        let uuid = uuid_of(hex_of(diff_id)?);
        let (_, mut placements) = b.finish_layer(&tree, uuid)?;
        let tmp = Removing(tmp);
        let entries = tree
            .listing()
            .into_iter()
            .map(|l| relist(l, |c| placements[ErofsBuilder::seq(&c)].take()))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ExportError::Unsupported("a layer file lost a file's data".into()))?;
        let file_len = std::fs::metadata(&tmp.0)
            .map_err(|e| ExportError::io("stat", &tmp.0, e))?
            .len();
        let record = Record {
            diff_id: diff_id.to_string(),
            lz4,
            file_len,
            sb_checksum: sb_checksum(&tmp.0)?,
            count: entries.len() as u64,
            entries,
        };
        let rec_tmp = Removing(temp_name(&rec));
        let f = File::create(&rec_tmp.0).map_err(|e| ExportError::io("create", &rec_tmp.0, e))?;
        let mut w = io::BufWriter::new(f);
        record
            .write_to(&mut w)
            .and_then(|_| w.into_inner().map_err(|e| e.into_error()))
            .and_then(|f| f.sync_all())
            .map_err(ExportError::Write)?;
        Ok(Pending {
            tmp,
            rec_tmp,
            file: file.clone(),
            rec,
            root: self.root.clone(),
            made: LayerFile {
                path: file,
                diff_id: diff_id.clone(),
                bytes: file_len,
                reused: false,
                lz4,
                entries: record.count,
            },
            _lock: lock,
        })
    }

    /// Remove the layer files (and leftovers of killed builds) whose
    /// diff_id is not in `keep`; a name being built is left alone.
    pub fn gc(&self, keep: &BTreeSet<String>, dry_run: bool) -> Result<LayerGc, ExportError> {
        let mut out = LayerGc::default();
        let rd =
            std::fs::read_dir(&self.root).map_err(|e| ExportError::io("read", &self.root, e))?;
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix("sha256-") else {
                let tmp = name.starts_with('.') && name.ends_with(".tmp");
                if tmp && !dry_run && !self.busy(&name) {
                    let _ = std::fs::remove_file(e.path());
                }
                continue;
            };
            let hex: String = rest.chars().take(64).collect();
            let ours = rest[hex.len()..].starts_with(&format!(".{FORMAT}."));
            if ours && keep.contains(&format!("sha256:{hex}")) {
                if name.ends_with(".erofs") {
                    out.kept += 1;
                }
                continue;
            }
            if self.busy(&name) {
                continue;
            }
            let bytes = e.metadata().map(|m| m.len()).unwrap_or(0);
            if (dry_run || std::fs::remove_file(e.path()).is_ok()) && name.ends_with(".erofs") {
                out.removed += 1;
                out.bytes_removed += bytes;
            }
        }
        Ok(out)
    }

    /// Remove what killed builds left (temp files whose name no build
    /// holds the lock of); returns how many.
    pub fn sweep_temps(&self) -> usize {
        let Ok(rd) = std::fs::read_dir(&self.root) else {
            return 0;
        };
        let mut n = 0;
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.')
                && name.ends_with(".tmp")
                && !self.busy(&name)
                && std::fs::remove_file(e.path()).is_ok()
            {
                n += 1;
            }
        }
        n
    }

    /// Every layer file here: (path, bytes).
    pub fn files(&self) -> Vec<(PathBuf, u64)> {
        let Ok(rd) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        rd.flatten()
            .filter(|e| {
                let n = e.file_name();
                let n = n.to_string_lossy();
                n.starts_with("sha256-") && n.ends_with(".erofs")
            })
            .map(|e| (e.path(), e.metadata().map(|m| m.len()).unwrap_or(0)))
            .collect()
    }

    /// Whether a build holds the lock of the layer file `name` relates to.
    fn busy(&self, name: &str) -> bool {
        let base = name.trim_start_matches('.');
        let Some(end) = base.find(".erofs") else {
            return false;
        };
        let lock = self
            .root
            .join(".locks")
            .join(format!("{}.lock", &base[..end + 6]));
        let Ok(f) = File::open(&lock) else {
            return false;
        };
        rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err()
    }
}

/// A layer file built and synced into temp files, its lock held: renamed
/// into place by `commit`, removed if dropped.
pub struct Pending {
    tmp: Removing,
    rec_tmp: Removing,
    file: PathBuf,
    rec: PathBuf,
    root: PathBuf,
    made: LayerFile,
    _lock: LayerLock,
}

impl Pending {
    /// Rename the file, then its record (a crash between leaves a file
    /// that does not verify, and is built again).
    pub fn commit(self) -> Result<LayerFile, ExportError> {
        std::fs::rename(&self.tmp.0, &self.file)
            .map_err(|e| ExportError::io("rename", &self.tmp.0, e))?;
        std::fs::rename(&self.rec_tmp.0, &self.rec)
            .map_err(|e| ExportError::io("rename", &self.rec_tmp.0, e))?;
        if let Ok(d) = File::open(&self.root) {
            let _ = d.sync_all();
        }
        Ok(self.made.clone())
    }

    pub fn entries(&self) -> u64 {
        self.made.entries()
    }
}

impl LayerFile {
    /// Entries of the layer's listing.
    pub fn entries(&self) -> u64 {
        self.entries
    }
}

/// Deletes a temp file when dropped (a no-op once it was renamed).
struct Removing(PathBuf);

impl Drop for Removing {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn temp_name(p: &Path) -> PathBuf {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    p.with_file_name(format!(
        ".{name}.{}.{:08x}.tmp",
        std::process::id(),
        fastrand::u32(..)
    ))
}

/// A listing entry with its content handle mapped.
fn relist<A, B>(l: Listed<A>, f: impl FnOnce(A) -> Option<B>) -> Option<Listed<B>> {
    Some(match l {
        Listed::Entry {
            rel,
            meta,
            xattrs,
            body,
        } => Listed::Entry {
            rel,
            meta,
            xattrs,
            body: match body {
                ListedBody::Dir => ListedBody::Dir,
                ListedBody::Special => ListedBody::Special,
                ListedBody::Symlink(t) => ListedBody::Symlink(t),
                ListedBody::File { size, content } => ListedBody::File {
                    size,
                    content: f(content)?,
                },
            },
        },
        Listed::Hardlink { rel, target } => Listed::Hardlink { rel, target },
        Listed::Whiteout(r) => Listed::Whiteout(r),
        Listed::Opaque(r) => Listed::Opaque(r),
    })
}

/// The superblock of an erofs image, read through its typed struct: its
/// magic and its crc32c (over the rest of block 0, the checksum field
/// zeroed, as the kernel checks it) are checked.
fn checked_superblock(path: &Path) -> io::Result<SuperBlock> {
    let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_string());
    let f = File::open(path)?;
    let mut b = vec![0u8; BLOCK as usize];
    f.read_exact_at(&mut b, 0)?;
    let (sb, _) = SuperBlock::read_from_prefix(&b[SB_OFFSET..])
        .map_err(|_| bad("a block too short for a superblock"))?;
    if sb.magic.get() != MAGIC {
        return Err(bad("not an erofs image"));
    }
    let at = SB_OFFSET + std::mem::offset_of!(SuperBlock, checksum);
    b[at..at + 4].fill(0);
    if crc32c(&b[SB_OFFSET..]) != sb.checksum.get() {
        return Err(bad("bad superblock checksum"));
    }
    Ok(sb)
}

/// The superblock checksum an image carries, checked against its block.
fn sb_checksum(path: &Path) -> Result<u32, ExportError> {
    checked_superblock(path)
        .map(|sb| sb.checksum.get())
        .map_err(|e| ExportError::io("read", path, e))
}

/// A layer file and its record, checked against each other; the record's
/// listing is read only with `entries`.
fn verify(
    file: &Path,
    rec: &Path,
    diff_id: &Digest,
    lz4: bool,
    entries: bool,
) -> Result<Record, String> {
    let len = std::fs::metadata(rec)
        .map_err(|e| format!("its record: {e}"))?
        .len();
    if len > RECORD_MAX {
        return Err("its record is too large".into());
    }
    let bytes = std::fs::read(rec).map_err(|e| format!("its record: {e}"))?;
    let r = Record::decode(&bytes, entries).map_err(|b| format!("its record: {}", b.0))?;
    if r.diff_id != diff_id.to_string() || r.lz4 != lz4 {
        return Err(format!("its record is for {} (lz4: {})", r.diff_id, r.lz4));
    }
    let flen = std::fs::metadata(file).map_err(|e| e.to_string())?.len();
    if flen != r.file_len {
        return Err(format!("{flen} bytes, its record says {}", r.file_len));
    }
    match checked_superblock(file) {
        Ok(sb) if sb.checksum.get() == r.sb_checksum => Ok(r),
        Ok(_) => Err("its superblock is not the one its record was made with".into()),
        Err(e) => Err(format!("its superblock: {e}")),
    }
}

/// Write a META image at `out`: the merged tree of `layers` (lowest
/// first), every file's data pointing into the layer file that holds it,
/// small files inline. Reads only the records, one at a time.
pub fn build_meta(
    out: &Path,
    layers: &[LayerFile],
    lz4: bool,
    uuid: [u8; 16],
    guard: Guard,
    cancel: Option<Cancel>,
) -> Result<(ErofsStats, u64), ExportError> {
    let devices = layers
        .iter()
        .map(|l| {
            let mut tag = [0u8; 64];
            tag.copy_from_slice(hex_of(&l.diff_id)?.as_bytes());
            Ok(Device {
                tag,
                blocks: (l.bytes / BLOCK) as u32,
            })
        })
        .collect::<Result<Vec<_>, ExportError>>()?;
    let mut b =
        ErofsBuilder::create_meta(out, ErofsOptions { lz4, layer: false }, cancel, devices)?;
    let mut tree = MergedTree::new();
    tree.set_guard(guard);
    for (i, l) in layers.iter().enumerate() {
        let dev = (i + 1) as u16;
        // Read again, one layer at a time, and checked again against its
        // file: what was found may have been replaced since.
        let rec = PathBuf::from(format!("{}.rec", l.path.display()));
        let r = verify(&l.path, &rec, &l.diff_id, l.lz4, true).map_err(|why| {
            ExportError::io(
                "read",
                &l.path,
                io::Error::new(io::ErrorKind::InvalidData, why),
            )
        })?;
        let file = File::open(&l.path).map_err(|e| ExportError::io("open", &l.path, e))?;
        let mut inline = Inline {
            file,
            len: r.file_len,
            window: Window::default(),
        };
        let mut listing = Vec::with_capacity(r.entries.len());
        for e in r.entries {
            listing.push(
                adopt(&mut b, e, dev, &mut inline)
                    .map_err(|e| ExportError::io("read", &l.path, e))?,
            );
        }
        tree.apply_listing(listing, &mut b)?;
    }
    tree.finish()?;
    let bytes = tree
        .nodes()
        .map(|n| match n.body {
            hoist_unpack::Body::File { size, .. } => size,
            _ => 0,
        })
        .sum();
    Ok((b.finish(&tree, uuid)?, bytes))
}

/// A layer file's metadata area, where its small files' bytes are.
struct Inline {
    file: File,
    len: u64,
    window: Window,
}

fn adopt(
    b: &mut ErofsBuilder,
    e: Listed<Placement>,
    dev: u16,
    inline: &mut Inline,
) -> io::Result<Listed<crate::ErofsContent>> {
    if let Listed::Entry {
        body: ListedBody::File { size, content },
        rel,
        meta,
        xattrs,
    } = e
    {
        let content = match content {
            Placement::InlineAt(at) => {
                if at.checked_add(size).is_none_or(|end| end > inline.len) || size > BLOCK {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "its record places a small file outside it",
                    ));
                }
                Placement::Inline(inline.window.get(&inline.file, at, size as usize)?.to_vec())
            }
            p => p,
        };
        return Ok(Listed::Entry {
            rel,
            meta,
            xattrs,
            body: ListedBody::File {
                size,
                content: b.adopt(size, content, dev)?,
            },
        });
    }
    Ok(relist(e, |_| None).expect("only file entries have content"))
}

/// The diff_ids a META image's device table names (`sha256:<hex>`), in
/// device order: what `gc` keeps for it.
pub fn meta_devices(meta: &Path) -> Result<Vec<String>, ExportError> {
    let bad = |why: &str| {
        ExportError::io(
            "read",
            meta,
            io::Error::new(io::ErrorKind::InvalidData, why.to_string()),
        )
    };
    let sb = checked_superblock(meta).map_err(|e| ExportError::io("read", meta, e))?;
    let n = usize::from(sb.extra_devices.get());
    if sb.feature_incompat.get() & FEATURE_INCOMPAT_DEVICE_TABLE == 0 || n == 0 {
        return Err(bad("not a META image: it has no device table"));
    }
    let slot = size_of::<DeviceSlot>();
    let f = File::open(meta).map_err(|e| ExportError::io("open", meta, e))?;
    let mut t = vec![0u8; n * slot];
    f.read_exact_at(&mut t, u64::from(sb.devt_slotoff.get()) * slot as u64)
        .map_err(|e| ExportError::io("read", meta, e))?;
    t.chunks(slot)
        .map(|s| {
            let d = DeviceSlot::read_from_bytes(s).map_err(|_| bad("a short device slot"))?;
            let tag =
                std::str::from_utf8(&d.tag).map_err(|_| bad("a device tag that is not text"))?;
            if !tag.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(bad("a device tag that is not a diff_id"));
            }
            Ok(format!("sha256:{tag}"))
        })
        .collect()
}

#[cfg(test)]
mod tests;
