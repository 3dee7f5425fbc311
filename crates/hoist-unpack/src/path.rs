//! Tar paths made relative to the root, lexically: `..` stops at the root,
//! as if the archive were rooted there (umoci's `CleanPath` inside the
//! root). Everything afterwards is also resolved in the root by the kernel,
//! so this is for naming, not for safety.

use crate::error::UnpackError;

pub const WHITEOUT: &[u8] = b".wh.";
/// Linux's limits: a path (without its NUL) and one name.
pub const PATH_MAX: usize = 4095;
pub const NAME_MAX: usize = 255;

/// The first bytes of a path, for messages about paths too long to show.
fn head(p: &[u8]) -> String {
    let s = String::from_utf8_lossy(&p[..p.len().min(64)]);
    if p.len() > 64 {
        format!("/{s}…")
    } else {
        format!("/{s}")
    }
}

/// The one path policy of the unpacker, the merge and so every writer: a
/// cleaned path of at most PATH_MAX bytes, made of names of at most
/// NAME_MAX bytes.
pub fn check(rel: &[u8]) -> Result<(), UnpackError> {
    if rel.len() > PATH_MAX {
        return Err(UnpackError::PathTooLong {
            path: head(rel),
            len: rel.len(),
        });
    }
    if let Some(c) = rel.split(|&b| b == b'/').find(|c| c.len() > NAME_MAX) {
        return Err(UnpackError::NameTooLong {
            path: head(rel),
            len: c.len(),
        });
    }
    Ok(())
}

/// A symlink's target is stored verbatim, but Linux holds at most PATH_MAX
/// bytes of it.
pub fn check_target(rel: &[u8], target: &[u8]) -> Result<(), UnpackError> {
    if target.len() > PATH_MAX {
        return Err(UnpackError::PathTooLong {
            path: format!("{} -> {}", head(rel), head(target)),
            len: target.len(),
        });
    }
    Ok(())
}
pub const OPAQUE: &[u8] = b".wh..wh..opq";

/// A cleaned path relative to the root: components joined by `/`, no `.`,
/// `..` or empty components; empty means the root itself.
pub fn clean(raw: &[u8]) -> Vec<u8> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join(&b'/')
}

/// `(parent, name)` of a non-root cleaned path.
pub fn split(rel: &[u8]) -> (&[u8], &[u8]) {
    match rel.iter().rposition(|&b| b == b'/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => (&[], rel),
    }
}

pub fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    if parent.is_empty() {
        name.to_vec()
    } else {
        let mut v = Vec::with_capacity(parent.len() + 1 + name.len());
        v.extend_from_slice(parent);
        v.push(b'/');
        v.extend_from_slice(name);
        v
    }
}

/// Remove `rel` and every path below it from a map keyed by cleaned paths.
pub(crate) fn remove_under<V>(map: &mut std::collections::BTreeMap<Vec<u8>, V>, rel: &[u8]) {
    map.remove(rel);
    let mut lo = rel.to_vec();
    lo.push(b'/');
    let mut hi = rel.to_vec();
    hi.push(b'/' + 1);
    let doomed: Vec<Vec<u8>> = map.range(lo..hi).map(|(k, _)| k.clone()).collect();
    for k in doomed {
        map.remove(&k);
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Kind {
    Normal(Vec<u8>),
    /// `.wh.NAME`: remove NAME (a cleaned path) from lower layers.
    Whiteout(Vec<u8>),
    /// `.wh..wh..opq`: hide the lower children of this directory.
    Opaque(Vec<u8>),
}

pub fn classify(raw: &[u8]) -> Result<Kind, UnpackError> {
    // Checked before cleaning too: `a/../` repeated can make a huge raw
    // path clean to a short one, and cleaning is linear anyway.
    let rel = clean(raw);
    check(&rel)?;
    let (parent, name) = split(&rel);
    if name == OPAQUE {
        return Ok(Kind::Opaque(parent.to_vec()));
    }
    if let Some(target) = name.strip_prefix(WHITEOUT) {
        if matches!(target, b"" | b"." | b"..") {
            return Err(UnpackError::InvalidArchive(format!(
                "whiteout entry {:?} names no file",
                String::from_utf8_lossy(raw)
            )));
        }
        return Ok(Kind::Whiteout(join(parent, target)));
    }
    Ok(Kind::Normal(rel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleaning_stays_under_the_root() {
        assert_eq!(clean(b"./a/b/"), b"a/b");
        assert_eq!(clean(b"/a//./b"), b"a/b");
        assert_eq!(clean(b"../../etc/passwd"), b"etc/passwd");
        assert_eq!(clean(b"a/../../b"), b"b");
        assert_eq!(clean(b".."), b"");
        assert_eq!(clean(b""), b"");
        assert_eq!(split(b"a/b/c"), (&b"a/b"[..], &b"c"[..]));
        assert_eq!(split(b"c"), (&b""[..], &b"c"[..]));
    }

    #[test]
    fn whiteouts() {
        assert_eq!(
            classify(b"a/.wh.b").unwrap(),
            Kind::Whiteout(b"a/b".to_vec())
        );
        assert_eq!(
            classify(b"./a/.wh..wh..opq").unwrap(),
            Kind::Opaque(b"a".to_vec())
        );
        assert_eq!(classify(b".wh..wh..opq").unwrap(), Kind::Opaque(vec![]));
        for bad in [&b"a/.wh."[..], b"a/.wh..", b"a/.wh...", b".wh."] {
            assert!(classify(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(
            classify(b"a/.whx").unwrap(),
            Kind::Normal(b"a/.whx".to_vec())
        );
    }

    #[test]
    fn one_path_policy_path_max_and_name_max() {
        let ok = vec![b'a'; PATH_MAX];
        assert!(
            classify(&ok).is_err(),
            "one 4095-byte name is over NAME_MAX"
        );
        let deep: Vec<u8> = b"a/"
            .repeat(PATH_MAX / 2)
            .into_iter()
            .take(PATH_MAX)
            .collect();
        assert!(classify(&deep).is_ok());
        let deeper = b"a/".repeat(PATH_MAX / 2 + 2); // cleans to 4,097 bytes
        assert!(matches!(
            classify(&deeper),
            Err(UnpackError::PathTooLong { .. })
        ));
        assert!(matches!(
            classify(&[b'n'; NAME_MAX + 1]),
            Err(UnpackError::NameTooLong { len: 256, .. })
        ));
        assert!(classify(&[b'n'; NAME_MAX]).is_ok());
        // Cleaning first: a long raw path that cleans short is fine.
        let mut raw = b"x/../".repeat(10_000);
        raw.extend_from_slice(b"etc/ok");
        assert_eq!(classify(&raw).unwrap(), Kind::Normal(b"etc/ok".to_vec()));
    }
}
