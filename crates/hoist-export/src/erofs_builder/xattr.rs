//! xattrs: inline after each inode, and shared. A name-value pair that
//! more than one inode carries (an ACL, a capability, a label) is stored
//! once in the shared xattr area (`xattr_blkaddr`) and each inode names
//! it by a 4-byte id, as mkfs.erofs does.

use std::collections::HashMap;

use zerocopy::IntoBytes;

use super::format::{XattrEntry, XattrIbodyHeader};
use crate::blocks::BLOCK;
use crate::error::ExportError;

/// `h_shared_count` is a byte and the kernel takes at most this many.
const MAX_SHARED_PER_INODE: usize = 128;
/// The most xattr bytes an inode can carry: `i_xattr_icount` is 16 bits.
const MAX_BODY: usize = 12 + 4 * (u16::MAX as usize - 1);

/// The xattr prefixes erofs indexes; a name with another prefix cannot be
/// stored without the long-prefix feature (which erofs-utils 1.5 and
/// kernels before 6.4 do not read).
fn index(name: &str) -> Option<(u8, &str)> {
    for (p, i) in [("user.", 1), ("trusted.", 4), ("security.", 6)] {
        if let Some(rest) = name.strip_prefix(p) {
            return Some((i, rest));
        }
    }
    match name {
        "system.posix_acl_access" => Some((2, "")),
        "system.posix_acl_default" => Some((3, "")),
        _ => None,
    }
}

/// One `erofs_xattr_entry`, 4-byte aligned; `None` if erofs cannot hold it.
fn entry(name: &str, value: &[u8]) -> Option<Vec<u8>> {
    let (idx, suffix) = index(name)?;
    if suffix.len() > 255 || value.len() > usize::from(u16::MAX) {
        return None;
    }
    let mut b = Vec::with_capacity(4 + suffix.len() + value.len() + 3);
    let e = XattrEntry {
        name_len: suffix.len() as u8,
        name_index: idx,
        value_size: (value.len() as u16).into(),
    };
    b.extend_from_slice(e.as_bytes());
    b.extend_from_slice(suffix.as_bytes());
    b.extend_from_slice(value);
    b.resize(b.len().next_multiple_of(4), 0);
    Some(b)
}

type Pair = (String, Vec<u8>);

/// The shared xattr area and the id of each pair in it.
#[derive(Default)]
pub(super) struct Shared {
    ids: HashMap<Pair, u32>,
    /// The area's bytes, whole blocks.
    pub(super) area: Vec<u8>,
}

/// Share every storable pair that two or more inodes carry (in the order
/// first met: the image stays deterministic). No entry crosses a block.
pub(super) fn plan<'a>(inodes: impl Iterator<Item = &'a [Pair]>) -> Shared {
    let mut count: HashMap<&'a Pair, u32> = HashMap::new();
    let mut order: Vec<&'a Pair> = Vec::new();
    for list in inodes {
        for p in list {
            let c = count.entry(p).or_default();
            if *c == 0 {
                order.push(p);
            }
            *c += 1;
        }
    }
    let mut s = Shared::default();
    for p in order {
        if count[p] < 2 {
            continue;
        }
        let Some(e) = entry(&p.0, &p.1) else { continue };
        if e.len() > BLOCK as usize {
            continue;
        }
        let off = s.area.len();
        if off % BLOCK as usize + e.len() > BLOCK as usize {
            s.area.resize(off.next_multiple_of(BLOCK as usize), 0);
        }
        s.ids.insert(p.clone(), (s.area.len() / 4) as u32);
        s.area.extend_from_slice(&e);
    }
    s.area
        .resize(s.area.len().next_multiple_of(BLOCK as usize), 0);
    s
}

/// An inode's xattr body: the 12-byte header with its count of shared
/// ids, the ids, then the inline entries. Empty when there are none.
/// `rel` names the inode in errors; it is made only when one is.
pub(super) fn body(
    rel: &dyn Fn() -> String,
    xattrs: &[Pair],
    shared: &Shared,
) -> Result<Vec<u8>, ExportError> {
    if xattrs.is_empty() {
        return Ok(Vec::new());
    }
    let mut ids = Vec::new();
    let mut inline = Vec::new();
    for p in xattrs {
        match shared.ids.get(p) {
            Some(&id) if ids.len() < MAX_SHARED_PER_INODE => ids.push(id),
            _ => {
                let Some(e) = entry(&p.0, &p.1) else {
                    return Err(ExportError::Unsupported(format!(
                        "{}: xattr {:?} has a prefix erofs cannot store, or is too large",
                        rel(),
                        p.0
                    )));
                };
                inline.extend_from_slice(&e);
            }
        }
    }
    let h = XattrIbodyHeader {
        shared_count: ids.len() as u8,
        ..Default::default()
    };
    let mut b = h.as_bytes().to_vec();
    for id in ids {
        b.extend_from_slice(&id.to_le_bytes());
    }
    b.extend_from_slice(&inline);
    if b.len() > MAX_BODY {
        return Err(ExportError::Unsupported(format!(
            "{}: {} bytes of xattrs, more than an erofs inode holds ({MAX_BODY})",
            rel(),
            b.len()
        )));
    }
    Ok(b)
}
