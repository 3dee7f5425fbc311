//! An erofs image checked field by field against the tar headers it was
//! made from. `dump.erofs --path` (erofs-utils 1.5) says the type, the
//! permission bits, owner, size, mtime and link count; it does not print
//! setuid/setgid/sticky, device numbers, symlink targets or xattrs, so
//! those are read from the kernel's mount of the same image.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::Command;

/// What a single-layer tar says of one path.
#[derive(Debug, Clone)]
pub struct Want {
    kind: tar::EntryType,
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    mtime: u64,
    dev: (u32, u32),
    link: Option<Vec<u8>>,
    xattrs: BTreeMap<String, Vec<u8>>,
    nlink: u64,
}

/// Every path of a one-layer tar (no whiteouts), hardlinks resolved to
/// their target's header with its link count.
pub fn headers(gz_layer: &[u8]) -> BTreeMap<String, Want> {
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(gz_layer)
        .read_to_end(&mut tar)
        .unwrap();
    let mut a = tar::Archive::new(&tar[..]);
    let mut out: BTreeMap<String, Want> = BTreeMap::new();
    let mut hard: Vec<(String, String)> = Vec::new();
    let norm = |p: &[u8]| {
        let s = String::from_utf8_lossy(p).to_string();
        format!("/{}", s.trim_start_matches("./").trim_end_matches('/'))
    };
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let path = norm(&e.path_bytes());
        if path == "/" || path == "/." {
            continue;
        }
        let h = e.header().clone();
        let kind = h.entry_type();
        if kind == tar::EntryType::Link {
            hard.push((path, norm(&e.link_name_bytes().unwrap())));
            continue;
        }
        let mut xattrs = BTreeMap::new();
        if let Some(px) = e.pax_extensions().unwrap() {
            for x in px {
                let x = x.unwrap();
                if let Some(k) = x.key().unwrap().strip_prefix("SCHILY.xattr.") {
                    xattrs.insert(k.to_string(), x.value_bytes().to_vec());
                }
            }
        }
        let link = e.link_name_bytes().map(|l| l.to_vec());
        out.insert(
            path,
            Want {
                kind,
                mode: h.mode().unwrap() & 0o7777,
                uid: h.uid().unwrap(),
                gid: h.gid().unwrap(),
                size: match kind {
                    tar::EntryType::Symlink => link.as_ref().unwrap().len() as u64,
                    _ => h.size().unwrap(),
                },
                mtime: h.mtime().unwrap(),
                dev: (
                    h.device_major().unwrap().unwrap_or(0),
                    h.device_minor().unwrap().unwrap_or(0),
                ),
                link,
                xattrs,
                nlink: 1,
            },
        );
    }
    for (name, target) in hard {
        let t = out.get_mut(&target).expect("hardlink target");
        t.nlink += 1;
        let w = t.clone();
        out.insert(name, w);
    }
    // A directory's links: itself, its entry, and each subdirectory's "..".
    let mut subdirs: HashMap<String, u64> = HashMap::new();
    for (p, w) in &out {
        if w.kind == tar::EntryType::Directory {
            let parent = &p[..p.rfind('/').unwrap()];
            *subdirs.entry(parent.to_string()).or_default() += 1;
        }
    }
    for (p, w) in out.iter_mut() {
        if w.kind == tar::EntryType::Directory {
            w.nlink = 2 + subdirs.get(p).copied().unwrap_or(0);
        }
    }
    out
}

/// `YYYY-MM-DD HH:MM:SS` of a Unix time, UTC, as dump.erofs prints it.
fn utc(t: u64) -> String {
    hoist_serve::rfc3339(t as i64)
        .replace('T', " ")
        .trim_end_matches('Z')
        .to_string()
}

/// `dump.erofs --path` agrees with the headers on every field it prints.
pub fn dump_matches(img: &Path, want: &BTreeMap<String, Want>) {
    for (p, w) in want {
        let o = Command::new("dump.erofs")
            .arg(format!("--path={p}"))
            .arg(img)
            .env("TZ", "UTC")
            .output()
            .unwrap();
        let d = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "dump.erofs {p}: {d}");
        let kind = match w.kind {
            tar::EntryType::Regular => "regular file",
            tar::EntryType::Directory => "directory",
            tar::EntryType::Symlink => "symlink file",
            tar::EntryType::Char => "char dev",
            tar::EntryType::Block => "block dev",
            tar::EntryType::Fifo => "FIFO file",
            k => panic!("{p}: unexpected {k:?}"),
        };
        let field = |name: &str| {
            d.split(name)
                .nth(1)
                .unwrap_or_else(|| panic!("{p}: no {name:?} in {d}"))
                .split_whitespace()
                .next()
                .unwrap()
                .to_string()
        };
        assert!(d.contains(kind), "{p}: not a {kind}: {d}");
        let access = field("Access: ");
        assert_eq!(
            access.split('/').next().unwrap(),
            format!("{:04o}", w.mode & 0o777),
            "{p}: {d}"
        );
        assert_eq!(field("Uid: "), w.uid.to_string(), "{p} uid: {d}");
        assert_eq!(field("Gid: "), w.gid.to_string(), "{p} gid: {d}");
        assert_eq!(field("Links: "), w.nlink.to_string(), "{p} links: {d}");
        if w.kind != tar::EntryType::Directory {
            assert_eq!(field("Size: "), w.size.to_string(), "{p} size: {d}");
        }
        assert!(
            d.contains(&format!("Timestamp: {}", utc(w.mtime))),
            "{p}: mtime {} ({}): {d}",
            w.mtime,
            utc(w.mtime)
        );
    }
}

/// The kernel's view of the mounted image agrees with the headers on the
/// fields `dump.erofs` does not print (and on the rest again).
pub fn mount_matches(mnt: &Path, want: &BTreeMap<String, Want>) {
    for (p, w) in want {
        let f = mnt.join(&p[1..]);
        let m = std::fs::symlink_metadata(&f).unwrap_or_else(|e| panic!("{p}: {e}"));
        assert_eq!(m.mode() & 0o7777, w.mode, "{p}: mode bits");
        assert_eq!(
            (u64::from(m.uid()), u64::from(m.gid())),
            (w.uid, w.gid),
            "{p}"
        );
        assert_eq!(m.mtime() as u64, w.mtime, "{p}: mtime");
        assert_eq!(m.nlink(), w.nlink, "{p}: links");
        let t = m.file_type();
        if t.is_char_device() || t.is_block_device() {
            let rdev = m.rdev();
            let (maj, min) = (libc::major(rdev), libc::minor(rdev));
            assert_eq!((maj, min), w.dev, "{p}: device numbers");
        }
        if t.is_symlink() {
            let target = std::fs::read_link(&f).unwrap();
            assert_eq!(
                target.as_os_str().as_encoded_bytes(),
                &w.link.clone().unwrap()[..],
                "{p}: symlink target"
            );
        }
        let mut got = BTreeMap::new();
        let mut names = vec![0u8; 65_536];
        let n = llistxattr(&f, &mut names);
        for name in names[..n].split(|&b| b == 0).filter(|s| !s.is_empty()) {
            let name = String::from_utf8(name.to_vec()).unwrap();
            let mut v = vec![0u8; 65_536];
            let c = std::ffi::CString::new(f.as_os_str().as_encoded_bytes()).unwrap();
            let cn = std::ffi::CString::new(name.clone()).unwrap();
            // SAFETY: valid C strings and a buffer of the length given.
            let len =
                unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
            assert!(len >= 0, "{p}: lgetxattr {name}");
            v.truncate(len as usize);
            got.insert(name, v);
        }
        assert_eq!(got, w.xattrs, "{p}: xattrs");
    }
}

fn llistxattr(p: &Path, buf: &mut [u8]) -> usize {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid C string and a buffer of the length given.
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(n >= 0, "{p:?}: llistxattr");
    n as usize
}

#[test]
fn utc_dates_are_civil_dates() {
    assert_eq!(utc(0), "1970-01-01 00:00:00");
    assert_eq!(utc(951_782_400), "2000-02-29 00:00:00");
    assert_eq!(utc(1_700_000_000), "2023-11-14 22:13:20");
}
