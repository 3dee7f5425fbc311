//! The tree to export: the rootfs on disk for contents, the recorded
//! metadata for what the disk must say (owners, modes, device numbers),
//! whatever the unpack could apply.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hoist_unpack::{EntryMeta, EntryType, TreeMeta};

use crate::error::ExportError;

pub struct Tree<'a> {
    pub rootfs: &'a Path,
    pub meta: &'a TreeMeta,
}

/// One path, with its hardlink identity on disk.
pub struct Node<'a> {
    pub rel: &'a [u8],
    pub meta: &'a EntryMeta,
    /// Index of its inode among the tree's (hardlinks share one).
    pub inode: u32,
    pub nlink: u32,
    /// True on the last name of a hardlink group (and on unlinked files).
    pub last_link: bool,
    pub size: u64,
    pub symlink_target: Option<Vec<u8>>,
}

impl<'a> Tree<'a> {
    pub fn path(&self, rel: &[u8]) -> PathBuf {
        if rel.is_empty() {
            self.rootfs.to_path_buf()
        } else {
            self.rootfs.join(OsStr::from_bytes(rel))
        }
    }

    /// Every path in order (parents before children), with inode numbers
    /// shared by hardlinks as the rootfs has them.
    pub fn nodes(&self) -> Result<Vec<Node<'a>>, ExportError> {
        let mut by_ino: HashMap<(u64, u64), (u32, u32, usize)> = HashMap::new();
        let mut nodes = Vec::with_capacity(self.meta.entries.len());
        let mut next = 1u32;
        for (rel, meta) in &self.meta.entries {
            let p = self.path(rel);
            let st = std::fs::symlink_metadata(&p).map_err(|e| ExportError::io("stat", &p, e))?;
            let mut inode = next;
            let mut nlink = 1;
            let mut size = 0;
            let mut symlink_target = None;
            match meta.kind {
                EntryType::File => {
                    size = st.len();
                    if st.nlink() > 1 {
                        let e = by_ino.entry((st.dev(), st.ino())).or_insert((next, 0, 0));
                        e.1 += 1;
                        e.2 = nodes.len();
                        inode = e.0;
                        nlink = st.nlink() as u32;
                    }
                }
                EntryType::Symlink => {
                    let t =
                        std::fs::read_link(&p).map_err(|e| ExportError::io("readlink", &p, e))?;
                    size = t.as_os_str().len() as u64;
                    symlink_target = Some(t.as_os_str().as_bytes().to_vec());
                }
                _ => {}
            }
            if inode == next {
                next += 1;
            }
            nodes.push(Node {
                rel,
                meta,
                inode,
                nlink,
                last_link: true,
                size,
                symlink_target,
            });
        }
        // Only the last name of each group carries the data (as the
        // kernel's gen_init_cpio writes it); group sizes are what the tree
        // holds, not the on-disk link count.
        let mut last: HashMap<u32, usize> = HashMap::new();
        let mut count: HashMap<u32, u32> = HashMap::new();
        for (i, n) in nodes.iter().enumerate() {
            if n.nlink > 1 {
                last.insert(n.inode, i);
                *count.entry(n.inode).or_default() += 1;
            }
        }
        for (i, n) in nodes.iter_mut().enumerate() {
            if n.nlink > 1 {
                n.nlink = count[&n.inode];
                n.last_link = last[&n.inode] == i;
            }
        }
        Ok(nodes)
    }

    /// A regular file's contents. The caller may own a file it cannot read
    /// (mode 0000 after a rootless unpack): it is opened up for the read
    /// and its mode put back.
    pub fn open(&self, rel: &[u8]) -> Result<Box<dyn Read>, ExportError> {
        let p = self.path(rel);
        match std::fs::File::open(&p) {
            Ok(f) => Ok(Box::new(f)),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                let mode = std::fs::symlink_metadata(&p)
                    .map_err(|e| ExportError::io("stat", &p, e))?
                    .permissions()
                    .mode();
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode | 0o400))
                    .map_err(|e| ExportError::io("chmod", &p, e))?;
                let f = std::fs::File::open(&p).map_err(|e| ExportError::io("open", &p, e));
                let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode));
                Ok(Box::new(f?))
            }
            Err(e) => Err(ExportError::io("open", &p, e)),
        }
    }
}

/// Type bits for a mode word.
pub fn type_bits(k: EntryType) -> u32 {
    match k {
        EntryType::File => 0o100000,
        EntryType::Dir => 0o040000,
        EntryType::Symlink => 0o120000,
        EntryType::Char => 0o020000,
        EntryType::Block => 0o060000,
        EntryType::Fifo => 0o010000,
    }
}
