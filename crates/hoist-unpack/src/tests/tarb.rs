//! A tar writer for tests that need raw control of names (`..`, absolute
//! paths, whiteouts) that `tar::Builder` refuses to write.

pub struct Tar {
    b: tar::Builder<Vec<u8>>,
}

pub struct E<'a> {
    pub name: &'a [u8],
    pub kind: tar::EntryType,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub link: &'a [u8],
    pub data: &'a [u8],
    pub dev: (u32, u32),
    pub mtime: u64,
    pub pax: Vec<(&'a str, &'a [u8])>,
}

pub fn file<'a>(name: &'a str, data: &'a [u8]) -> E<'a> {
    E {
        name: name.as_bytes(),
        kind: tar::EntryType::Regular,
        mode: 0o644,
        uid: 0,
        gid: 0,
        link: b"",
        data,
        dev: (0, 0),
        mtime: 1_600_000_000,
        pax: vec![],
    }
}
pub fn dir(name: &str) -> E<'_> {
    E {
        kind: tar::EntryType::Directory,
        mode: 0o755,
        ..file(name, b"")
    }
}
pub fn symlink<'a>(name: &'a str, target: &'a str) -> E<'a> {
    E {
        kind: tar::EntryType::Symlink,
        mode: 0o777,
        link: target.as_bytes(),
        ..file(name, b"")
    }
}
pub fn hardlink<'a>(name: &'a str, target: &'a str) -> E<'a> {
    E {
        kind: tar::EntryType::Link,
        link: target.as_bytes(),
        ..file(name, b"")
    }
}
pub fn whiteout(name: &str) -> E<'_> {
    file(name, b"")
}

impl Tar {
    pub fn new() -> Tar {
        Tar {
            b: tar::Builder::new(Vec::new()),
        }
    }

    pub fn add(mut self, e: E<'_>) -> Tar {
        let mut pax: Vec<(&str, &[u8])> = e.pax.clone();
        if e.name.len() > 99 {
            pax.push(("path", e.name));
        }
        if e.link.len() > 99 {
            pax.push(("linkpath", e.link));
        }
        if !pax.is_empty() {
            self.b
                .append_pax_extensions(pax.iter().map(|(k, v)| (*k, *v)))
                .unwrap();
        }
        let mut h = tar::Header::new_ustar();
        {
            let u = h.as_ustar_mut().unwrap();
            let n = e.name.len().min(99);
            u.name[..n].copy_from_slice(&e.name[..n]);
            let l = e.link.len().min(99);
            u.linkname[..l].copy_from_slice(&e.link[..l]);
        }
        h.set_entry_type(e.kind);
        h.set_mode(e.mode);
        h.set_uid(e.uid);
        h.set_gid(e.gid);
        h.set_mtime(e.mtime);
        h.set_size(e.data.len() as u64);
        if matches!(e.kind, tar::EntryType::Char | tar::EntryType::Block) {
            h.set_device_major(e.dev.0).unwrap();
            h.set_device_minor(e.dev.1).unwrap();
        }
        h.set_cksum();
        self.b.append(&h, e.data).unwrap();
        self
    }

    /// A GNU long-name entry, written the way GNU tar does.
    pub fn add_gnu_long(mut self, name: &str, data: &[u8]) -> Tar {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        h.set_entry_type(tar::EntryType::Regular);
        self.b.append_data(&mut h, name, data).unwrap();
        self
    }

    pub fn finish(self) -> Vec<u8> {
        self.b.into_inner().unwrap()
    }
}
