//! erofs through Debian's erofs-utils (`mkfs.erofs`, lz4). erofs-utils 1.5
//! has no tar mode and no per-file owner option, so when the rootfs cannot
//! hold the true owners (a rootless unpack), `mkfs.erofs` runs under
//! `fakeroot` after a fakeroot `chown`/`mknod`/`setfattr` pass built from
//! the recorded metadata: it then reads exactly what the image says.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use hoist_unpack::EntryType;

use crate::error::{run, ExportError};
use crate::tree::{type_bits, Tree};

#[derive(Debug, Clone)]
pub struct ErofsOptions {
    pub uuid: String,
}

/// Whether this mkfs.erofs offers lz4.
fn has_lz4() -> bool {
    Command::new("mkfs.erofs")
        .arg("--help")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout).contains("lz4")
                || String::from_utf8_lossy(&o.stderr).contains("lz4")
        })
        .unwrap_or(false)
}

pub fn write(tree: &Tree<'_>, out: &Path, opts: &ErofsOptions) -> Result<u64, ExportError> {
    // As root the unpack preserved owners and made real device nodes, and
    // fakeroot run by root misreports groups: fix the temp tree for real
    // where it differs, and build directly.
    let root = hoist_unpack::Ownership::default_for_process() == hoist_unpack::Ownership::Preserve;
    // What the rootfs gets wrong, grouped for batched commands.
    let mut owners: BTreeMap<(u64, u64), Vec<u8>> = BTreeMap::new();
    let mut modes: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
    let mut devices = Vec::new();
    for n in tree.nodes()? {
        let m = n.meta;
        let path = tree.path(n.rel);
        let disk =
            std::fs::symlink_metadata(&path).map_err(|e| ExportError::io("stat", &path, e))?;
        let is_dev = matches!(m.kind, EntryType::Char | EntryType::Block);
        let placeholder = is_dev && (disk.mode() & 0o170000) != type_bits(m.kind);
        if placeholder {
            devices.push((path.clone(), m.kind, m.major, m.minor, m.mode));
        }
        // Under fakeroot a node it made needs its owner and mode recorded.
        let is_dev = is_dev && !root;
        if disk.uid() as u64 != m.uid || disk.gid() as u64 != m.gid || is_dev {
            let list = owners.entry((m.uid, m.gid)).or_default();
            list.extend_from_slice(path.as_os_str().as_bytes());
            list.push(0);
        }
        if m.kind != EntryType::Symlink && (disk.mode() & 0o7777 != m.mode || is_dev) {
            let list = modes.entry(m.mode).or_default();
            list.extend_from_slice(path.as_os_str().as_bytes());
            list.push(0);
        }
    }
    // Rootless, xattrs only root may set (`security.capability`) are not on
    // the rootfs: set every recorded one under fakeroot, which keeps them
    // for mkfs.erofs.
    let xattr_dump = if root {
        String::new()
    } else {
        restore_format(tree)
    };
    let mut mkfs = vec![
        "mkfs.erofs".to_string(),
        "--quiet".into(),
        "--preserve-mtime".into(),
    ];
    if has_lz4() {
        mkfs.push("-zlz4".into());
    }
    mkfs.extend(["-U".into(), opts.uuid.clone()]);
    let _ = std::fs::remove_file(out);
    if root && !(owners.is_empty() && devices.is_empty() && modes.is_empty()) {
        return Err(ExportError::Unsupported(
            "erofs export as root needs a rootfs unpacked with --ownership preserve".into(),
        ));
    }
    if owners.is_empty() && devices.is_empty() && modes.is_empty() && xattr_dump.is_empty() {
        let mut c = Command::new(&mkfs[0]);
        c.args(&mkfs[1..]).arg(out).arg(tree.rootfs);
        run("mkfs.erofs", "erofs-utils", &mut c)?;
        return Ok(0);
    }
    // fakeroot: record chown/mknod in its database, then mkfs.erofs sees them.
    let work = tempdir_near(out)?;
    let mut script = String::from("set -e\n");
    for (i, (path, kind, major, minor, _)) in devices.iter().enumerate() {
        let list = work.join(format!("dev{i}"));
        std::fs::write(&list, path.as_os_str().as_bytes())
            .map_err(|e| ExportError::io("write", &list, e))?;
        let k = if *kind == EntryType::Char { "c" } else { "b" };
        script.push_str(&format!(
            "p=$(cat '{}'); rm -f \"$p\"; mknod \"$p\" {k} {major} {minor}\n",
            list.display()
        ));
    }
    for (i, ((uid, gid), list)) in owners.iter().enumerate() {
        let f = work.join(format!("own{i}"));
        std::fs::write(&f, list).map_err(|e| ExportError::io("write", &f, e))?;
        script.push_str(&format!(
            "xargs -0 -a '{}' chown -h {uid}:{gid}\n",
            f.display()
        ));
    }
    for (i, (mode, list)) in modes.iter().enumerate() {
        let f = work.join(format!("mode{i}"));
        std::fs::write(&f, list).map_err(|e| ExportError::io("write", &f, e))?;
        script.push_str(&format!("xargs -0 -a '{}' chmod {:o}\n", f.display(), mode));
    }
    if !xattr_dump.is_empty() {
        let f = work.join("xattrs");
        std::fs::write(&f, &xattr_dump).map_err(|e| ExportError::io("write", &f, e))?;
        script.push_str(&format!("setfattr --restore='{}'\n", f.display()));
    }
    script.push_str("exec \"$@\"\n");
    let sh = work.join("pass.sh");
    std::fs::File::create(&sh)
        .and_then(|mut f| f.write_all(script.as_bytes()))
        .map_err(|e| ExportError::io("write", &sh, e))?;
    let mut c = Command::new("fakeroot");
    c.arg("--")
        .arg("sh")
        .arg(&sh)
        .args(&mkfs)
        .arg(out)
        .arg(tree.rootfs);
    let r = run("fakeroot", "fakeroot", &mut c);
    let _ = std::fs::remove_dir_all(&work);
    // fakeroot left the rootfs itself untouched except for device
    // placeholders it re-created: it is a temp tree, deleted by the caller.
    r?;
    Ok(owners
        .values()
        .map(|l| l.iter().filter(|&&b| b == 0).count() as u64)
        .sum())
}

/// Every recorded xattr in `getfattr --dump` form, for `setfattr
/// --restore`: paths with octal escapes, values in hex.
fn restore_format(tree: &Tree<'_>) -> String {
    let mut out = String::new();
    for (rel, xs) in &tree.meta.xattrs {
        let path = tree.path(rel);
        out.push_str("# file: ");
        for &b in path.as_os_str().as_bytes() {
            if b.is_ascii_alphanumeric() || b"/._-+".contains(&b) {
                out.push(b as char);
            } else {
                out.push_str(&format!("\\{b:03o}"));
            }
        }
        out.push('\n');
        for (k, v) in xs {
            let hex: String = v.iter().map(|b| format!("{b:02x}")).collect();
            out.push_str(&format!("{k}=0x{hex}\n"));
        }
        out.push('\n');
    }
    out
}

fn tempdir_near(out: &Path) -> Result<std::path::PathBuf, ExportError> {
    let dir = out.parent().unwrap_or(Path::new(".")).join(format!(
        ".hoist-erofs-{}-{:x}",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::create_dir(&dir).map_err(|e| ExportError::io("create", &dir, e))?;
    Ok(dir)
}
