//! Extended attributes in ext4's on-disk form: inside the inode when they
//! fit (the 96 bytes after the fixed fields of a 256-byte inode), else in
//! one attribute block. POSIX ACLs arrive in the kernel's xattr form
//! (version 2) and are stored in ext4's shorter disk form (version 1).

use crate::error::ExportError;
use zerocopy::IntoBytes;

use super::format::{XattrBlockHeader, XattrEntry};

pub const MAGIC: u32 = 0xEA02_0000;
/// Space after `i_extra_isize` in a 256-byte inode: 256 - 128 - 32.
pub const IN_INODE: usize = 96;
const BLOCK: usize = 4096;

/// One attribute as ext4 stores it: a name index for the namespace prefix,
/// the rest of the name, the value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Attr {
    index: u8,
    name: Vec<u8>,
    value: Vec<u8>,
}

/// Where a node's attributes go.
pub enum Placement {
    None,
    /// The bytes for the inode's in-inode area (`IN_INODE` long).
    Inode(Vec<u8>),
    /// A whole attribute block.
    Block(Vec<u8>),
}

fn prefix(name: &str) -> Option<(u8, &str)> {
    Some(match name {
        "system.posix_acl_access" => (2, ""),
        "system.posix_acl_default" => (3, ""),
        "system.richacl" => (8, ""),
        _ => {
            for (p, i) in [
                ("user.", 1),
                ("trusted.", 4),
                ("security.", 6),
                ("system.", 7),
            ] {
                if let Some(rest) = name.strip_prefix(p) {
                    return Some((i, rest));
                }
            }
            return None;
        }
    })
}

/// The kernel's POSIX ACL xattr (version 2, 8-byte entries) as ext4
/// stores it (version 1; the id only for named users and groups).
fn acl_to_disk(v: &[u8]) -> Option<Vec<u8>> {
    if v.len() < 4
        || !(v.len() - 4).is_multiple_of(8)
        || u32::from_le_bytes(v[..4].try_into().ok()?) != 2
    {
        return None;
    }
    let mut out = 1u32.to_le_bytes().to_vec();
    for e in v[4..].chunks(8) {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        out.extend_from_slice(&e[..4]);
        // ACL_USER and ACL_GROUP carry an id.
        if tag == 0x02 || tag == 0x08 {
            out.extend_from_slice(&e[4..8]);
        }
    }
    Some(out)
}

/// The attributes ext4 can hold, in the order the kernel keeps them in a
/// block (index, name length, name). Others are skipped with a log line,
/// as the unpacker skips what the filesystem refuses.
pub fn prepare(xattrs: &[(String, Vec<u8>)], path: &str) -> Vec<Attr> {
    let mut out = Vec::new();
    for (k, v) in xattrs {
        let Some((index, rest)) = prefix(k) else {
            tracing::debug!("{path}: xattr {k} has no ext4 namespace; skipped");
            continue;
        };
        let value = if index == 2 || index == 3 {
            match acl_to_disk(v) {
                Some(d) => d,
                None => {
                    tracing::debug!("{path}: xattr {k} is not a POSIX ACL; skipped");
                    continue;
                }
            }
        } else {
            v.clone()
        };
        out.push(Attr {
            index,
            name: rest.as_bytes().to_vec(),
            value,
        });
    }
    out.sort_by(|a, b| (a.index, a.name.len(), &a.name).cmp(&(b.index, b.name.len(), &b.name)));
    out.dedup_by(|a, b| a.index == b.index && a.name == b.name);
    out
}

fn round4(n: usize) -> usize {
    n.div_ceil(4) * 4
}

/// e2fsprogs' `ext2fs_ext_attr_hash_entry`, which e2fsck checks.
fn entry_hash(a: &Attr) -> u32 {
    let mut h: u32 = 0;
    for &c in &a.name {
        h = (h << 5) ^ (h >> 27) ^ u32::from(c);
    }
    let mut padded = a.value.clone();
    padded.resize(round4(a.value.len()), 0);
    for w in padded.chunks(4) {
        h = (h << 16) ^ (h >> 16) ^ u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
    }
    h
}

fn put_entry(buf: &mut [u8], at: usize, a: &Attr, value_offs: usize) {
    let e = XattrEntry {
        name_len: a.name.len() as u8,
        name_index: a.index,
        value_offs: (value_offs as u16).into(),
        value_inum: 0.into(),
        value_size: (a.value.len() as u32).into(),
        hash: entry_hash(a).into(),
    };
    buf[at..at + 16].copy_from_slice(e.as_bytes());
    buf[at + 16..at + 16 + a.name.len()].copy_from_slice(&a.name);
}

fn entries_len(attrs: &[Attr]) -> usize {
    attrs
        .iter()
        .map(|a| 16 + round4(a.name.len()))
        .sum::<usize>()
        + 4
}

pub fn place(attrs: &[Attr], path: &str) -> Result<Placement, ExportError> {
    if attrs.is_empty() {
        return Ok(Placement::None);
    }
    let values: usize = attrs.iter().map(|a| round4(a.value.len())).sum();
    if attrs.iter().any(|a| a.name.len() > 255) {
        return Err(ExportError::Unsupported(format!(
            "{path}: an xattr name is longer than ext4 allows"
        )));
    }
    if 4 + entries_len(attrs) + values <= IN_INODE {
        // Magic, entries, terminator, then values; offsets count from the
        // first entry.
        let mut buf = vec![0u8; IN_INODE];
        buf[..4].copy_from_slice(&MAGIC.to_le_bytes());
        let mut at = 4;
        let mut v = entries_len(attrs);
        for a in attrs {
            put_entry(&mut buf, at, a, v);
            buf[4 + v..4 + v + a.value.len()].copy_from_slice(&a.value);
            at += 16 + round4(a.name.len());
            v += round4(a.value.len());
        }
        return Ok(Placement::Inode(buf));
    }
    if 32 + entries_len(attrs) + values > BLOCK {
        return Err(ExportError::Unsupported(format!(
            "{path}: its xattrs take more than one 4 KiB block"
        )));
    }
    // Header, entries from offset 32, values packed down from the end.
    let mut buf = vec![0u8; BLOCK];
    let mut at = 32;
    let mut end = BLOCK;
    let mut block_hash: u32 = 0;
    for a in attrs {
        end -= round4(a.value.len());
        put_entry(&mut buf, at, a, end);
        buf[end..end + a.value.len()].copy_from_slice(&a.value);
        block_hash = (block_hash << 16) ^ (block_hash >> 16) ^ entry_hash(a);
        at += 16 + round4(a.name.len());
    }
    let h = XattrBlockHeader {
        magic: MAGIC.into(),
        refcount: 1.into(),
        blocks: 1.into(),
        hash: block_hash.into(),
        ..Default::default()
    };
    buf[..32].copy_from_slice(h.as_bytes());
    Ok(Placement::Block(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_attributes_fit_in_the_inode_and_big_ones_take_a_block() {
        let cap = vec![1u8; 20];
        let a = prepare(&[("security.capability".into(), cap)], "/x");
        assert!(matches!(place(&a, "/x").unwrap(), Placement::Inode(_)));
        let big = prepare(&[("user.big".into(), vec![7u8; 200])], "/x");
        assert!(matches!(place(&big, "/x").unwrap(), Placement::Block(_)));
        let huge = prepare(&[("user.huge".into(), vec![7u8; 5000])], "/x");
        assert!(place(&huge, "/x").is_err());
        assert!(prepare(&[("weird.ns".into(), vec![1])], "/x").is_empty());
    }

    #[test]
    fn acls_are_stored_in_the_short_disk_form() {
        let v = crate::ext4::tests::acl();
        let d = acl_to_disk(&v).unwrap();
        assert_eq!(d.len(), 4 + 4 + 8 + 4 + 4 + 4);
        assert_eq!(&d[..4], &1u32.to_le_bytes());
        assert_eq!(&d[8..16], &[2, 0, 4, 0, 0xe8, 3, 0, 0]);
    }
}
