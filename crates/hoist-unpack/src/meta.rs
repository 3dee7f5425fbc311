//! The true metadata of every path in the merged tree, as the layers' tar
//! headers say it, whatever the unpack could apply on disk. Rootless, this
//! is the only record of owners and device numbers; the disk exporter
//! writes it into images.

use std::collections::BTreeMap;
use std::io::{self, BufRead, Write};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryType {
    File,
    Dir,
    Symlink,
    Char,
    Block,
    Fifo,
}

impl EntryType {
    fn code(self) -> char {
        match self {
            EntryType::File => 'f',
            EntryType::Dir => 'd',
            EntryType::Symlink => 'l',
            EntryType::Char => 'c',
            EntryType::Block => 'b',
            EntryType::Fifo => 'p',
        }
    }
    fn from_code(c: &str) -> Option<EntryType> {
        Some(match c {
            "f" => EntryType::File,
            "d" => EntryType::Dir,
            "l" => EntryType::Symlink,
            "c" => EntryType::Char,
            "b" => EntryType::Block,
            "p" => EntryType::Fifo,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryMeta {
    pub kind: EntryType,
    /// Permission bits including setuid, setgid and sticky.
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub major: u32,
    pub minor: u32,
    pub mtime: i64,
}

impl EntryMeta {
    /// A directory the unpack had to create (a parent no entry named):
    /// root-owned 0755, as umoci makes them.
    pub fn implicit_dir() -> EntryMeta {
        EntryMeta {
            kind: EntryType::Dir,
            mode: 0o755,
            uid: 0,
            gid: 0,
            major: 0,
            minor: 0,
            mtime: 0,
        }
    }
}

/// Path (relative, `/`-joined, empty = root) → true metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TreeMeta {
    pub entries: BTreeMap<Vec<u8>, EntryMeta>,
    /// The xattrs the tar headers gave each path (whether or not the
    /// unpack could set them: `security.*` and `trusted.*` need root).
    pub xattrs: BTreeMap<Vec<u8>, Vec<(String, Vec<u8>)>>,
}

fn escape(p: &[u8]) -> String {
    let mut s = String::with_capacity(p.len() + 1);
    s.push('/');
    for &b in p {
        if b.is_ascii_graphic() && b != b'\\' {
            s.push(b as char);
        } else {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    s
}

fn unescape(s: &str) -> Option<Vec<u8>> {
    let s = s.strip_prefix('/')?;
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            let h = std::str::from_utf8(b.get(i + 2..i + 4)?).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

impl TreeMeta {
    /// Drop `rel` and everything below it.
    pub fn remove_tree(&mut self, rel: &[u8]) {
        crate::path::remove_under(&mut self.entries, rel);
        crate::path::remove_under(&mut self.xattrs, rel);
    }

    /// One line per path, sorted: `PATH TYPE MODE UID GID MAJOR MINOR MTIME`
    /// (mode in octal, path escaped as `\xNN` outside printable ASCII),
    /// then one `+ PATH NAME HEXVALUE` line per xattr.
    pub fn write_to(&self, mut w: impl Write) -> io::Result<()> {
        writeln!(
            w,
            "# hoist tree metadata v2: path type mode uid gid major minor mtime; + path xattr-name hex-value"
        )?;
        for (p, m) in &self.entries {
            writeln!(
                w,
                "{} {} {:04o} {} {} {} {} {}",
                escape(p),
                m.kind.code(),
                m.mode,
                m.uid,
                m.gid,
                m.major,
                m.minor,
                m.mtime
            )?;
        }
        for (p, xs) in &self.xattrs {
            for (k, v) in xs {
                let hex: String = v.iter().map(|b| format!("{b:02x}")).collect();
                writeln!(w, "+ {} {} {hex}", escape(p), escape(k.as_bytes()))?;
            }
        }
        Ok(())
    }

    pub fn read_from(r: impl BufRead) -> io::Result<TreeMeta> {
        let bad = |l: &str| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad tree metadata line: {l}"),
            )
        };
        let mut t = TreeMeta::default();
        for line in r.lines() {
            let line = line?;
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let f: Vec<&str> = line.split(' ').collect();
            if f.len() == 4 && f[0] == "+" {
                let p = unescape(f[1]).ok_or_else(|| bad(&line))?;
                let k = unescape(f[2])
                    .and_then(|k| String::from_utf8(k).ok())
                    .ok_or_else(|| bad(&line))?;
                let v = (0..f[3].len() / 2)
                    .map(|i| u8::from_str_radix(f[3].get(2 * i..2 * i + 2)?, 16).ok())
                    .collect::<Option<Vec<u8>>>()
                    .filter(|_| f[3].len().is_multiple_of(2))
                    .ok_or_else(|| bad(&line))?;
                t.xattrs.entry(p).or_default().push((k, v));
                continue;
            }
            if f.len() != 8 {
                return Err(bad(&line));
            }
            let p = unescape(f[0]).ok_or_else(|| bad(&line))?;
            let n = |i: usize| f[i].parse::<u64>().map_err(|_| bad(&line));
            t.entries.insert(
                p,
                EntryMeta {
                    kind: EntryType::from_code(f[1]).ok_or_else(|| bad(&line))?,
                    mode: u32::from_str_radix(f[2], 8).map_err(|_| bad(&line))?,
                    uid: n(3)?,
                    gid: n(4)?,
                    major: n(5)? as u32,
                    minor: n(6)? as u32,
                    mtime: f[7].parse().map_err(|_| bad(&line))?,
                },
            );
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_odd_names() {
        let mut t = TreeMeta::default();
        let m = EntryMeta {
            kind: EntryType::Char,
            mode: 0o4755,
            uid: 1000,
            gid: 65534,
            major: 1,
            minor: 3,
            mtime: 946684800,
        };
        t.entries.insert(b"dev/n ull\\\xff".to_vec(), m.clone());
        t.xattrs.insert(
            b"dev/n ull\\\xff".to_vec(),
            vec![
                ("security.capability".into(), vec![1, 0, 0xff]),
                ("user.a b".into(), vec![]),
            ],
        );
        t.entries.insert(
            Vec::new(),
            EntryMeta {
                kind: EntryType::Dir,
                ..m.clone()
            },
        );
        let mut out = Vec::new();
        t.write_to(&mut out).unwrap();
        assert_eq!(TreeMeta::read_from(&out[..]).unwrap(), t);
        t.entries.insert(b"a".to_vec(), m.clone());
        t.entries.insert(b"a/b".to_vec(), m.clone());
        t.entries.insert(b"a-c".to_vec(), m.clone());
        t.remove_tree(b"a");
        assert!(t.entries.contains_key(&b"a-c"[..]) && !t.entries.contains_key(&b"a/b"[..]));
    }
}
