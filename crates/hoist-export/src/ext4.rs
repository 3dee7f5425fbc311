//! ext4 without a journal, 4 KiB blocks, sized from the tree: Debian's
//! `mkfs.ext4 -d` lays out the contents, then one `debugfs -w` pass writes
//! what the disk must say and the rootfs could not (owners after a rootless
//! unpack, device nodes, fixed times). Chosen over a native writer (hcsshim's
//! tar2ext4 style) for now: e2fsprogs' layout is what `e2fsck` and the
//! kernel know best, and the pass costs one process.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use hoist_unpack::EntryType;

use crate::error::{run, ExportError};
use crate::tree::{type_bits, Tree};

const BLOCK: u64 = 4096;
const INODE_SIZE: u64 = 256;

#[derive(Debug, Clone)]
pub struct Ext4Options {
    /// Fixed size in bytes; `None` sizes the filesystem from the tree.
    pub size: Option<u64>,
    /// Filesystem UUID and directory hash seed (derive them from the image
    /// digest for reproducible images).
    pub uuid: String,
    /// Every timestamp hoist controls (superblock, ctime/atime of inodes).
    pub timestamp: i64,
}

#[derive(Debug, Clone)]
pub struct Ext4Stats {
    pub size: u64,
    pub inodes: u64,
    pub data_bytes: u64,
    pub fixups: u64,
}

fn blocks(n: u64) -> u64 {
    n.div_ceil(BLOCK)
}

/// Blocks the tree's contents take, and its inode count.
fn estimate(tree: &Tree<'_>) -> Result<(u64, u64, u64), ExportError> {
    let mut data_blocks = 0u64;
    let mut data_bytes = 0u64;
    let mut inodes = 0u64;
    let mut dir_entries: std::collections::HashMap<&[u8], u64> = std::collections::HashMap::new();
    for n in tree.nodes()? {
        let parent = match n.rel.iter().rposition(|&b| b == b'/') {
            Some(i) => &n.rel[..i],
            None => &[][..],
        };
        if !n.rel.is_empty() {
            // dirent: 8 bytes + name, 4-aligned
            let name_len = n.rel.len() - parent.len();
            *dir_entries.entry(parent).or_default() += (8 + name_len as u64).div_ceil(4) * 4;
        }
        if !n.last_link && n.nlink > 1 {
            continue; // a further name of a counted inode
        }
        inodes += 1;
        match n.meta.kind {
            EntryType::File => {
                let b = blocks(n.size);
                // An extent maps up to 32768 blocks; past 4 extents in the
                // inode a tree block is needed.
                data_blocks += b + if b > 4 * 32768 {
                    b / (340 * 32768) + 1
                } else {
                    0
                };
                data_bytes += n.size;
            }
            EntryType::Symlink if n.size >= 60 => data_blocks += 1,
            _ => {}
        }
    }
    for bytes in dir_entries.values() {
        // htree directories leave room in each block; count generously.
        data_blocks += (bytes + bytes / 4 + 24).div_ceil(BLOCK).max(1);
    }
    Ok((data_blocks, inodes, data_bytes))
}

/// Total blocks for `data_blocks` and `inodes`: inode tables, bitmaps,
/// group descriptors and the superblock copies, plus a small margin.
fn size_for(data_blocks: u64, inodes: u64) -> u64 {
    let inode_blocks = (inodes * INODE_SIZE).div_ceil(BLOCK);
    let mut total = data_blocks + inode_blocks;
    let groups = total.div_ceil(32768) + 1;
    // block + inode bitmap per group, descriptors, backup superblocks
    total += groups * 2 + groups.div_ceil(64) * 2 + 2 * (groups.ilog2() as u64 + 2);
    // resize inode reservation and slack: 1% and 64 blocks
    total + total / 100 + 64
}

fn quote(rel: &[u8]) -> Result<String, ExportError> {
    let s = std::str::from_utf8(rel).map_err(|_| {
        ExportError::Unsupported(format!(
            "ext4 export: path {:?} is not UTF-8",
            String::from_utf8_lossy(rel)
        ))
    })?;
    if s.contains(['"', '\n', '\\']) {
        return Err(ExportError::Unsupported(format!(
            "ext4 export: path {s:?} holds a quote, backslash or newline"
        )));
    }
    Ok(format!("\"/{s}\""))
}

pub fn write(tree: &Tree<'_>, out: &Path, opts: &Ext4Options) -> Result<Ext4Stats, ExportError> {
    let (data_blocks, inodes, data_bytes) = estimate(tree)?;
    let inode_count = inodes + 16 + inodes / 50;
    let needed = size_for(data_blocks, inode_count) * BLOCK;
    let size = match opts.size {
        Some(s) if s < needed => return Err(ExportError::TooSmall { size: s, needed }),
        Some(s) => s,
        None => needed,
    };
    let mut size = size;
    for attempt in 0..2 {
        match mkfs(tree, out, opts, inode_count, size) {
            Ok(()) => break,
            // Our estimate fell short (it never should by much): once more
            // with a tenth more room, unless the user fixed the size.
            Err(ExportError::TooSmall { .. }) if attempt == 0 && opts.size.is_none() => {
                tracing::warn!(
                    "ext4 size estimate of {size} bytes was short; retrying with 10% more"
                );
                size += size / 10;
            }
            Err(ExportError::TooSmall { size, .. }) => {
                return Err(ExportError::TooSmall {
                    size,
                    needed: needed + needed / 10,
                })
            }
            Err(e) => return Err(e),
        }
    }
    let fixups = fix_metadata(tree, out, opts)?;
    Ok(Ext4Stats {
        size,
        inodes: inode_count,
        data_bytes,
        fixups,
    })
}

fn mkfs(
    tree: &Tree<'_>,
    out: &Path,
    opts: &Ext4Options,
    inode_count: u64,
    size: u64,
) -> Result<(), ExportError> {
    let _ = std::fs::remove_file(out);
    let mut cmd = Command::new("mkfs.ext4");
    cmd.env("E2FSPROGS_FAKE_TIME", opts.timestamp.to_string())
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-b",
            "4096",
            "-I",
            "256",
            "-m",
            "0",
            "-O",
            "^has_journal,^resize_inode",
            "-L",
            "rootfs",
        ])
        .arg("-N")
        .arg(inode_count.to_string())
        .arg("-U")
        .arg(&opts.uuid)
        .arg("-E")
        .arg(format!(
            "hash_seed={},root_owner=0:0,lazy_itable_init=0,nodiscard",
            opts.uuid
        ))
        .arg("-d")
        .arg(tree.rootfs)
        .arg(out)
        .arg(format!("{}k", size / 1024));
    match run("mkfs.ext4", "e2fsprogs", &mut cmd) {
        Ok(_) => Ok(()),
        Err(ExportError::Tool { stderr, .. })
            if stderr.contains("Could not allocate")
                || stderr.contains("No space")
                || stderr.contains("inodes") =>
        {
            let _ = std::fs::remove_file(out);
            Err(ExportError::TooSmall { size, needed: size })
        }
        Err(e) => {
            let _ = std::fs::remove_file(out);
            Err(e)
        }
    }
}

/// The debugfs pass: owners, modes and device nodes from the recorded
/// metadata wherever the rootfs differs, and fixed times everywhere.
fn fix_metadata(tree: &Tree<'_>, out: &Path, opts: &Ext4Options) -> Result<u64, ExportError> {
    let mut script = Vec::new();
    let mut n_fix = 0u64;
    let t = opts.timestamp;
    for n in tree.nodes()? {
        let m = n.meta;
        let p = quote(n.rel)?;
        let disk = std::fs::symlink_metadata(tree.path(n.rel))
            .map_err(|e| ExportError::io("stat", &tree.path(n.rel), e))?;
        let want_mode = type_bits(m.kind) | m.mode;
        let is_dev = matches!(m.kind, EntryType::Char | EntryType::Block);
        if is_dev && (disk.mode() & 0o170000) != type_bits(m.kind) {
            // A rootless placeholder: make the real node.
            let kind = if m.kind == EntryType::Char { 'c' } else { 'b' };
            // debugfs' mknod names an entry of the current directory.
            let (dir, name) = match n.rel.iter().rposition(|&b| b == b'/') {
                Some(i) => (&n.rel[..i], &n.rel[i + 1..]),
                None => (&[][..], n.rel),
            };
            let dir = if dir.is_empty() {
                "\"/\"".to_string()
            } else {
                quote(dir)?
            };
            let name = quote(name)?;
            let name = format!("\"{}", &name[2..]);
            writeln!(script, "rm {p}").ok();
            writeln!(script, "cd {dir}").ok();
            writeln!(script, "mknod {name} {kind} {} {}", m.major, m.minor).ok();
            writeln!(script, "cd /").ok();
            n_fix += 1;
        }
        if disk.uid() as u64 != m.uid || is_dev {
            writeln!(script, "sif {p} uid {}", m.uid).ok();
            n_fix += 1;
        }
        if disk.gid() as u64 != m.gid || is_dev {
            writeln!(script, "sif {p} gid {}", m.gid).ok();
        }
        if disk.mode() != want_mode || is_dev {
            writeln!(script, "sif {p} mode 0{:o}", want_mode).ok();
        }
        // mkfs.ext4 -d copies the source's ctime (the unpack's wall clock)
        // and atime (which reading the file for mkfs may just have moved,
        // under relatime): pin both, and crtime.
        for field in ["ctime", "atime", "crtime"] {
            writeln!(script, "sif {p} {field} {t}").ok();
        }
        if disk.mtime() != m.mtime {
            writeln!(script, "sif {p} mtime {}", m.mtime).ok();
        }
    }
    let sfile = out.with_extension("debugfs");
    std::fs::write(&sfile, &script).map_err(|e| ExportError::io("write", &sfile, e))?;
    let r = run(
        "debugfs",
        "e2fsprogs",
        Command::new("debugfs")
            .env("E2FSPROGS_FAKE_TIME", t.to_string())
            .arg("-w")
            .arg("-f")
            .arg(&sfile)
            .arg(out),
    );
    let _ = std::fs::remove_file(&sfile);
    let o = r?;
    // debugfs reports per-command failures on stderr and exits 0.
    let err = String::from_utf8_lossy(&o.stderr);
    let bad: Vec<&str> = err
        .lines()
        .filter(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
        .take(5)
        .collect();
    if !bad.is_empty() {
        return Err(ExportError::Tool {
            tool: "debugfs",
            status: "reported errors".into(),
            stderr: bad.join("\n"),
        });
    }
    Ok(n_fix)
}
