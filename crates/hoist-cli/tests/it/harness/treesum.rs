//! A canonical listing of a tree for comparing unpackers entry by entry:
//! path, type, mode, uid, gid, size, content hash or link target or device
//! numbers, hardlink group, xattrs.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use super::image::sha256;

fn xattrs(p: &Path) -> String {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut names = vec![0u8; 4096];
    // SAFETY: valid C string and buffer.
    let n = unsafe {
        libc::llistxattr(
            c.as_ptr(),
            names.as_mut_ptr() as *mut libc::c_char,
            names.len(),
        )
    };
    if n <= 0 {
        return "-".into();
    }
    let mut out = Vec::new();
    for name in names[..n as usize]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
    {
        let s = String::from_utf8_lossy(name).to_string();
        if s.starts_with("security.selinux") || s == "user.rootlesscontainers" {
            continue;
        }
        let cn = CString::new(name).unwrap();
        let mut val = vec![0u8; 65536];
        // SAFETY: valid C strings and buffer.
        let len = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                cn.as_ptr(),
                val.as_mut_ptr() as *mut libc::c_void,
                val.len(),
            )
        };
        if len >= 0 {
            out.push(format!("{s}={}", hex::encode(&val[..len as usize])));
        }
    }
    out.sort();
    if out.is_empty() {
        "-".into()
    } else {
        out.join(",")
    }
}

/// One line per path below `root` (the root itself is `/`), sorted.
pub fn treesum(root: &Path, owners: bool) -> Vec<String> {
    let mut paths = Vec::new();
    fn walk(dir: &Path, rel: &str, out: &mut Vec<(String, std::path::PathBuf)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().to_string();
            let r = format!("{rel}/{name}");
            out.push((r.clone(), e.path()));
            if e.file_type().unwrap().is_dir() {
                walk(&e.path(), &r, out);
            }
        }
    }
    paths.push(("/".to_string(), root.to_path_buf()));
    walk(root, "", &mut paths);
    paths.sort();
    let mut groups: BTreeMap<(u64, u64), String> = BTreeMap::new();
    for (r, p) in &paths {
        let m = std::fs::symlink_metadata(p).unwrap();
        if m.is_file() && m.nlink() > 1 {
            groups
                .entry((m.dev(), m.ino()))
                .or_insert_with(|| r.clone());
        }
    }
    paths
        .iter()
        .map(|(r, p)| {
            let m = std::fs::symlink_metadata(p).unwrap();
            let ft = m.file_type();
            let (t, size, content) = if ft.is_file() {
                ("f", m.len().to_string(), sha256(&std::fs::read(p).unwrap()))
            } else if ft.is_dir() {
                ("d", "-".into(), "-".into())
            } else if ft.is_symlink() {
                (
                    "l",
                    "-".into(),
                    format!("->{}", std::fs::read_link(p).unwrap().display()),
                )
            } else if ft.is_fifo() {
                ("p", "-".into(), "-".into())
            } else if ft.is_char_device() || ft.is_block_device() {
                let rd = m.rdev();
                (
                    if ft.is_char_device() { "c" } else { "b" },
                    "-".into(),
                    format!("{},{}", libc::major(rd), libc::minor(rd)),
                )
            } else {
                ("s", "-".into(), "-".into())
            };
            let hl = if ft.is_file() && m.nlink() > 1 {
                groups[&(m.dev(), m.ino())].clone()
            } else {
                "-".into()
            };
            let (u, g) = if owners {
                (m.uid().to_string(), m.gid().to_string())
            } else {
                ("-".into(), "-".into())
            };
            format!(
                "{r}\t{t}\t{:04o}\t{u}\t{g}\t{size}\t{content}\t{hl}\t{}",
                m.mode() & 0o7777,
                xattrs(p)
            )
        })
        .collect()
}

/// The differing lines of two treesums, for assertion messages.
pub fn diff(a: &[String], b: &[String]) -> String {
    let sa: std::collections::BTreeSet<_> = a.iter().collect();
    let sb: std::collections::BTreeSet<_> = b.iter().collect();
    let mut out = String::new();
    for l in sa.difference(&sb).take(20) {
        out.push_str(&format!("- {l}\n"));
    }
    for l in sb.difference(&sa).take(20) {
        out.push_str(&format!("+ {l}\n"));
    }
    out
}
