//! Image archives: `oci-archive:FILE[:TAG]` (a tar of an OCI layout, as
//! skopeo and buildah write it) and `docker-archive:FILE[:REPO:TAG]`
//! (`docker save` output: the OCI form Docker 25+ writes, with an
//! `index.json`, or the legacy one, `manifest.json` with `Config`,
//! `RepoTags` and `Layers`).
//!
//! The tar is read once to find its members, which are then read in place
//! (no extraction). A member name that is absolute or climbs out with
//! `..` makes the whole archive malformed. Every digest the file states is
//! verified; the legacy form states none for its layers, so their
//! `diff_id`s are computed and checked against the config, and hoist
//! writes the manifest the cache records.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

use hoist_registry::{BlobSink, RawManifest};
use hoist_spec::{media, Descriptor, Digest, Hasher, Reference};
use hoist_store::{LayoutEntry, StoreError};

use crate::error::Error;
use crate::source::{layout_err, Fetcher, LayoutFiles, OciSource};

/// Members an archive may hold before it is refused as hostile.
const MAX_MEMBERS: usize = 100_000;
/// `manifest.json`, `index.json` and configs above this are refused.
const MAX_JSON: u64 = 4 << 20;

/// Where each regular member of a tar is: (offset of its data, size).
pub(crate) struct TarFiles {
    path: PathBuf,
    members: HashMap<String, (u64, u64)>,
}

fn malformed(path: &Path, reason: impl Into<String>) -> Error {
    Error::Layout {
        layout: path.display().to_string(),
        reason: reason.into(),
    }
}

/// A member name as a clean relative path, or `None` if it escapes.
fn clean(name: &str) -> Option<String> {
    let mut out = Vec::new();
    for c in Path::new(name).components() {
        match c {
            Component::Normal(s) => out.push(s.to_str()?.to_string()),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out.join("/"))
}

/// A link target as a clean path inside the archive (`..` may climb
/// within it, never out of it).
fn resolve(p: &str) -> Option<String> {
    let mut out: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            c => out.push(c),
        }
    }
    Some(out.join("/"))
}

impl TarFiles {
    pub(crate) fn open(path: &Path) -> Result<TarFiles, Error> {
        let f = File::open(path).map_err(|e| malformed(path, e.to_string()))?;
        let mut a = tar::Archive::new(f);
        let mut members = HashMap::new();
        // Docker's legacy form links `<id>/layer.tar` to the real file.
        let mut links: Vec<(String, String)> = Vec::new();
        let entries = a
            .entries_with_seek()
            .map_err(|e| malformed(path, format!("not a tar archive: {e}")))?;
        for e in entries {
            let e = e.map_err(|e| malformed(path, format!("not a readable tar archive: {e}")))?;
            let raw = String::from_utf8_lossy(&e.path_bytes()).to_string();
            let Some(name) = clean(&raw) else {
                return Err(malformed(
                    path,
                    format!("member {raw:?} points outside the archive"),
                ));
            };
            if e.header().entry_type().is_file() {
                members.insert(name, (e.raw_file_position(), e.size()));
            } else if e.header().entry_type().is_symlink() {
                let target = e.link_name_bytes().unwrap_or_default();
                let dir = name.rsplit_once('/').map_or("", |(d, _)| d);
                let joined = format!("{dir}/{}", String::from_utf8_lossy(&target));
                // Resolved against its own directory; outside is refused.
                let resolved = resolve(&joined).ok_or_else(|| {
                    malformed(path, format!("member {raw:?} links outside the archive"))
                })?;
                links.push((name, resolved));
            }
            if members.len() > MAX_MEMBERS {
                return Err(malformed(path, format!("more than {MAX_MEMBERS} members")));
            }
        }
        for (name, target) in links {
            if let Some(&m) = members.get(&target) {
                members.entry(name).or_insert(m);
            }
        }
        Ok(TarFiles {
            path: path.to_path_buf(),
            members,
        })
    }

    fn has(&self, name: &str) -> bool {
        self.members.contains_key(name)
    }

    /// A member's bytes, read in place.
    fn member(&self, name: &str) -> Result<(Box<dyn Read + '_>, u64), Error> {
        let &(off, len) = self
            .members
            .get(name)
            .ok_or_else(|| malformed(&self.path, format!("{name} is missing")))?;
        let mut f = File::open(&self.path).map_err(|e| malformed(&self.path, e.to_string()))?;
        f.seek(SeekFrom::Start(off))
            .map_err(|e| malformed(&self.path, e.to_string()))?;
        Ok((Box::new(f.take(len)), len))
    }

    fn small(&self, name: &str) -> Result<Vec<u8>, Error> {
        let (r, len) = self.member(name)?;
        if len > MAX_JSON {
            return Err(malformed(
                &self.path,
                format!("{name} is {len} bytes, above {MAX_JSON}"),
            ));
        }
        let mut v = Vec::with_capacity(len as usize);
        r.take(MAX_JSON)
            .read_to_end(&mut v)
            .map_err(|e| malformed(&self.path, format!("{name}: {e}")))?;
        Ok(v)
    }

    fn blob_name(d: &Digest) -> String {
        format!("blobs/{}/{}", d.algorithm().as_str(), d.hex())
    }
}

impl LayoutFiles for TarFiles {
    fn name(&self) -> String {
        self.path.display().to_string()
    }
    fn entries(&self) -> Result<Vec<LayoutEntry>, Error> {
        let bytes = self.small("index.json")?;
        hoist_store::parse_entries(&bytes, &self.path).map_err(|e| layout_err(self, e))
    }
    fn read(&self, d: &Digest, limit: u64) -> Result<Vec<u8>, Error> {
        let (r, len) = self.member(&Self::blob_name(d))?;
        if len > limit {
            return Err(layout_err(
                self,
                StoreError::TooLarge {
                    digest: d.clone(),
                    size: len,
                    limit,
                },
            ));
        }
        let mut v = Vec::with_capacity(len as usize);
        r.take(limit)
            .read_to_end(&mut v)
            .map_err(|e| malformed(&self.path, e.to_string()))?;
        hoist_store::verify(d, &v).map_err(|e| layout_err(self, e))?;
        Ok(v)
    }
    fn open(&self, d: &Digest, size: u64) -> Result<Box<dyn Read + '_>, Error> {
        let (r, len) = self.member(&Self::blob_name(d))?;
        if len != size {
            return Err(layout_err(
                self,
                StoreError::SizeMismatch {
                    digest: d.clone(),
                    expected: size,
                    actual: len,
                },
            ));
        }
        Ok(r)
    }
}

/// `oci-archive:FILE[:TAG]`.
pub(crate) fn oci_archive(
    path: &Path,
    tag: Option<String>,
    max_manifest_size: u64,
    cache_name: String,
) -> Result<Box<dyn Fetcher>, Error> {
    let files = TarFiles::open(path)?;
    if !files.has("index.json") {
        return Err(malformed(path, "not an OCI archive (no index.json)"));
    }
    Ok(Box::new(OciSource {
        files,
        tag,
        max_manifest_size,
        cache_name,
    }))
}

/// `docker-archive:FILE[:REPO:TAG]`: the OCI form when the archive has an
/// `index.json`, else the legacy `manifest.json`.
pub(crate) fn docker_archive(
    path: &Path,
    reference: Option<String>,
    max_manifest_size: u64,
    cache_name: String,
) -> Result<Box<dyn Fetcher>, Error> {
    let files = TarFiles::open(path)?;
    if files.has("index.json") {
        return Ok(Box::new(OciSource {
            files,
            tag: reference,
            max_manifest_size,
            cache_name,
        }));
    }
    Ok(Box::new(Legacy::load(files, reference, cache_name)?))
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct LegacyEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// The legacy form, made into an OCI image: the config and layers as they
/// are in the file, and a manifest hoist writes.
struct Legacy {
    files: TarFiles,
    manifest: RawManifest,
    /// Blob digest → member name.
    blobs: HashMap<Digest, String>,
    cache_name: String,
}

fn normalise(s: &str) -> Option<String> {
    s.parse::<Reference>().ok().map(|r| r.to_string())
}

/// The digest a member's name states, if it names one (skopeo writes
/// `<hex>.tar` and `<hex>.json`; Docker's OCI form `blobs/sha256/<hex>`).
fn stated_digest(name: &str) -> Option<Digest> {
    let base = name.rsplit('/').next()?;
    let hex = base
        .strip_suffix(".tar")
        .or_else(|| base.strip_suffix(".json"))
        .unwrap_or(base);
    let looks = hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit());
    if looks && (base != hex || name.starts_with("blobs/sha256/")) {
        format!("sha256:{hex}").parse().ok()
    } else {
        None
    }
}

impl Legacy {
    fn load(
        files: TarFiles,
        reference: Option<String>,
        cache_name: String,
    ) -> Result<Legacy, Error> {
        let path = files.path.clone();
        let bad = |r: String| malformed(&path, r);
        let list: Vec<LegacyEntry> = serde_json::from_slice(&files.small("manifest.json")?)
            .map_err(|e| bad(format!("manifest.json is malformed: {e}")))?;
        let entry = match &reference {
            Some(want) => {
                let want_n = normalise(want);
                list.iter().find(|e| {
                    e.repo_tags
                        .iter()
                        .flatten()
                        .any(|t| t == want || (want_n.is_some() && normalise(t) == want_n))
                })
            }
            None if list.len() == 1 => list.first(),
            None => {
                return Err(bad(format!(
                    "holds {} images; name one with :REPO:TAG",
                    list.len()
                )))
            }
        };
        let Some(entry) = entry else {
            let tags: Vec<&str> = list
                .iter()
                .flat_map(|e| e.repo_tags.iter().flatten().map(String::as_str))
                .collect();
            return Err(Error::LayoutTagNotFound {
                layout: path.display().to_string(),
                tag: reference.unwrap_or_default(),
                available: if tags.is_empty() {
                    "none".into()
                } else {
                    tags.join(", ")
                },
            });
        };
        let mut blobs = HashMap::new();
        // The config: its bytes are its digest; a name that states one
        // must agree.
        let cname = clean(&entry.config).ok_or_else(|| bad("config path escapes".into()))?;
        let config = files.small(&cname)?;
        let config_digest = Digest::sha256_of(&config);
        if let Some(stated) = stated_digest(&cname).filter(|s| *s != config_digest) {
            return Err(Error::Blob {
                image: path.display().to_string(),
                source: StoreError::DigestMismatch {
                    expected: stated,
                    actual: config_digest,
                },
            });
        }
        blobs.insert(config_digest.clone(), cname);
        // Only the layer list is needed here (the full config is checked
        // when the image is used), read through its type.
        #[derive(serde::Deserialize)]
        struct RootFs {
            diff_ids: Vec<Digest>,
        }
        #[derive(serde::Deserialize)]
        struct LayerList {
            rootfs: RootFs,
        }
        let diff_ids = serde_json::from_slice::<LayerList>(&config)
            .map_err(|e| bad(format!("the config is malformed: {e}")))?
            .rootfs
            .diff_ids;
        if diff_ids.len() != entry.layers.len() {
            return Err(bad(format!(
                "the config lists {} layers, manifest.json {}",
                diff_ids.len(),
                entry.layers.len()
            )));
        }
        let mut layers = Vec::new();
        for (name, diff_id) in entry.layers.iter().zip(&diff_ids) {
            let name = clean(name).ok_or_else(|| bad(format!("layer {name:?} escapes")))?;
            let (digest, size, gzip, uncompressed) = hash_layer(&files, &name)?;
            if let Some(stated) = stated_digest(&name).filter(|s| *s != digest) {
                return Err(Error::Blob {
                    image: path.display().to_string(),
                    source: StoreError::DigestMismatch {
                        expected: stated,
                        actual: digest,
                    },
                });
            }
            if uncompressed != *diff_id {
                return Err(Error::Blob {
                    image: path.display().to_string(),
                    source: StoreError::DigestMismatch {
                        expected: diff_id.clone(),
                        actual: uncompressed,
                    },
                });
            }
            layers.push(Descriptor {
                media_type: if gzip {
                    media::DOCKER_LAYER_GZIP
                } else {
                    media::DOCKER_LAYER_TAR
                }
                .into(),
                size,
                digest: digest.clone(),
                platform: None,
            });
            blobs.insert(digest, name);
        }
        let config_desc = Descriptor {
            media_type: media::DOCKER_CONFIG.into(),
            size: config.len() as u64,
            digest: config_digest.clone(),
            platform: None,
        };
        let bytes =
            hoist_spec::manifest::manifest_bytes(media::DOCKER_MANIFEST, &config_desc, &layers)?;
        Ok(Legacy {
            manifest: RawManifest {
                digest: Digest::sha256_of(&bytes),
                bytes,
                content_type: Some(media::DOCKER_MANIFEST.into()),
            },
            files,
            blobs,
            cache_name,
        })
    }
}

/// A legacy layer's digest and size as stored, whether it is gzip, and the
/// digest of its tar stream (its diff_id).
fn hash_layer(files: &TarFiles, name: &str) -> Result<(Digest, u64, bool, Digest), Error> {
    let io = |e: std::io::Error| malformed(&files.path, format!("{name}: {e}"));
    let (mut r, size) = files.member(name)?;
    let mut head = [0u8; 2];
    let n = r.read(&mut head).map_err(io)?;
    let gzip = n == 2 && head == [0x1f, 0x8b];
    let (r, _) = files.member(name)?;
    // One pass: hash the stored bytes, and the tar stream inside them.
    struct Tee<'a> {
        inner: Box<dyn Read + 'a>,
        h: Hasher,
    }
    impl Read for Tee<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.h.update(&buf[..n]);
            Ok(n)
        }
    }
    let mut tee = Tee {
        inner: r,
        h: Hasher::new(hoist_spec::Algorithm::Sha256),
    };
    let mut inner = Hasher::new(hoist_spec::Algorithm::Sha256);
    let mut buf = vec![0u8; 256 << 10];
    if gzip {
        let mut z = flate2::read::MultiGzDecoder::new(&mut tee);
        loop {
            let n = z.read(&mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            inner.update(&buf[..n]);
        }
        // Whatever follows the gzip stream is hashed too.
        std::io::copy(&mut tee, &mut std::io::sink()).map_err(io)?;
        Ok((tee.h.finish(), size, true, inner.finish()))
    } else {
        std::io::copy(&mut tee, &mut std::io::sink()).map_err(io)?;
        let d = tee.h.finish();
        Ok((d.clone(), size, false, d))
    }
}

impl Fetcher for Legacy {
    fn pinned(&self) -> Option<Digest> {
        None
    }
    fn root(&self) -> Result<RawManifest, Error> {
        Ok(self.manifest.clone())
    }
    fn manifest(&self, d: &Descriptor) -> Result<RawManifest, Error> {
        if d.digest == self.manifest.digest {
            return Ok(self.manifest.clone());
        }
        Err(malformed(
            &self.files.path,
            format!("no manifest {}", d.digest),
        ))
    }
    fn blob(&self, d: &Descriptor, sink: &mut dyn BlobSink) -> Result<(), Error> {
        let name = self
            .blobs
            .get(&d.digest)
            .ok_or_else(|| malformed(&self.files.path, format!("no blob {}", d.digest)))?;
        let (r, len) = self.files.member(name)?;
        if len != d.size {
            return Err(layout_err(
                &self.files,
                StoreError::SizeMismatch {
                    digest: d.digest.clone(),
                    expected: d.size,
                    actual: len,
                },
            ));
        }
        std::io::copy(&mut r.take(d.size), sink)
            .map_err(|e| malformed(&self.files.path, format!("copying {name}: {e}")))?;
        Ok(())
    }
    fn cache_name(&self) -> Option<String> {
        Some(self.cache_name.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names_are_cleaned_or_refused() {
        assert_eq!(
            clean("./blobs/sha256/ab").as_deref(),
            Some("blobs/sha256/ab")
        );
        assert_eq!(clean("manifest.json").as_deref(), Some("manifest.json"));
        assert_eq!(clean("../etc/passwd"), None);
        assert_eq!(clean("a/../../b"), None);
        assert_eq!(clean("/abs"), None);
    }

    #[test]
    fn link_targets_stay_inside() {
        assert_eq!(resolve("abc/../x.tar").as_deref(), Some("x.tar"));
        assert_eq!(resolve("/../x"), None);
        assert_eq!(resolve("a/../../x"), None);
    }

    #[test]
    fn stated_digests() {
        let hex = "a".repeat(64);
        assert!(stated_digest(&format!("{hex}.tar")).is_some());
        assert!(stated_digest(&format!("blobs/sha256/{hex}")).is_some());
        assert!(stated_digest(&format!("{hex}/layer.tar")).is_none());
        assert!(stated_digest("config.json").is_none());
    }
}
