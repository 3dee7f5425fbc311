//! Where images come from. Registries and local OCI layouts sit behind one
//! small trait, as go-containerregistry's `remote` and `layout` do, so the
//! resolution and pull logic is written once.

use std::fmt;
use std::io::Read;
use std::path::PathBuf;
use std::str::FromStr;

use hoist_registry::{BlobSink, Call, RawManifest, RegistryClient};
use hoist_spec::{Descriptor, Digest, Reference, SpecError};
use hoist_store::LayoutEntry;

use crate::error::Error;

/// An image to read: a registry reference, or skopeo's transports
/// `oci:PATH[:TAG]`, `oci-archive:FILE[:TAG]` and
/// `docker-archive:FILE[:REPO:TAG]` (the first ':' after the path ends it).
#[derive(Clone, PartialEq, Eq)]
pub enum ImageSource {
    Registry(Reference),
    Layout {
        path: PathBuf,
        tag: Option<String>,
    },
    OciArchive {
        path: PathBuf,
        tag: Option<String>,
    },
    DockerArchive {
        path: PathBuf,
        reference: Option<String>,
    },
}

/// `PATH[:REST]` after a transport prefix.
fn path_and_rest(s: &str, rest: &str, what: &str) -> Result<(PathBuf, Option<String>), SpecError> {
    let (path, tail) = match rest.split_once(':') {
        Some((p, t)) => (p, Some(t.to_string())),
        None => (rest, None),
    };
    if path.is_empty() {
        return Err(SpecError::InvalidReference {
            input: s.into(),
            reason: format!("{what} needs a path"),
        });
    }
    if tail.as_deref() == Some("") {
        return Err(SpecError::InvalidReference {
            input: s.into(),
            reason: "empty name after the path".into(),
        });
    }
    Ok((PathBuf::from(path), tail))
}

impl FromStr for ImageSource {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        if let Some(rest) = s.strip_prefix("oci-archive:") {
            let (path, tag) = path_and_rest(s, rest, "oci-archive:")?;
            return Ok(ImageSource::OciArchive { path, tag });
        }
        if let Some(rest) = s.strip_prefix("docker-archive:") {
            let (path, reference) = path_and_rest(s, rest, "docker-archive:")?;
            if let Some(r) = &reference {
                r.parse::<Reference>()?;
            }
            return Ok(ImageSource::DockerArchive { path, reference });
        }
        if let Some(rest) = s.strip_prefix("oci:") {
            let (path, tag) = match rest.split_once(':') {
                Some((p, t)) => (p, Some(t.to_string())),
                None => (rest, None),
            };
            if path.is_empty() {
                return Err(SpecError::InvalidReference {
                    input: s.into(),
                    reason: "oci: needs a layout path".into(),
                });
            }
            if tag.as_deref() == Some("") {
                return Err(SpecError::InvalidReference {
                    input: s.into(),
                    reason: "empty tag after the layout path".into(),
                });
            }
            return Ok(ImageSource::Layout {
                path: PathBuf::from(path),
                tag,
            });
        }
        Ok(ImageSource::Registry(s.parse()?))
    }
}

impl fmt::Display for ImageSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageSource::Registry(r) => write!(f, "{r}"),
            ImageSource::Layout { path, tag } => {
                write!(f, "oci:{}", path.display())?;
                if let Some(t) = tag {
                    write!(f, ":{t}")?;
                }
                Ok(())
            }
            ImageSource::OciArchive { path, tag: t }
            | ImageSource::DockerArchive { path, reference: t } => {
                let kind = if matches!(self, ImageSource::OciArchive { .. }) {
                    "oci-archive"
                } else {
                    "docker-archive"
                };
                write!(f, "{kind}:{}", path.display())?;
                if let Some(t) = t {
                    write!(f, ":{t}")?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Debug for ImageSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ImageSource({self})")
    }
}

/// The operations resolution and pull need from a source.
pub(crate) trait Fetcher: Sync {
    /// The digest the source is pinned to, if its reference names one.
    fn pinned(&self) -> Option<Digest>;
    /// The top-level manifest or index (by tag, or by the pinned digest).
    fn root(&self) -> Result<RawManifest, Error>;
    /// A manifest or index by descriptor, verified.
    fn manifest(&self, d: &Descriptor) -> Result<RawManifest, Error>;
    /// A blob streamed into `sink`; the caller verifies it on commit.
    fn blob(&self, d: &Descriptor, sink: &mut dyn BlobSink) -> Result<(), Error>;
    /// The name under which the cache records the image, if any.
    fn cache_name(&self) -> Option<String>;
}

/// A registry source under an offline op: the cache is all there is.
pub(crate) struct Offline {
    pub reference: Reference,
}

impl Offline {
    fn missing(&self, what: &str) -> Error {
        Error::NotInCache {
            names: vec![format!("{} ({what})", self.reference)],
        }
    }
}

impl Fetcher for Offline {
    fn pinned(&self) -> Option<Digest> {
        self.reference.digest().cloned()
    }
    fn root(&self) -> Result<RawManifest, Error> {
        Err(self.missing("its manifest"))
    }
    fn manifest(&self, d: &Descriptor) -> Result<RawManifest, Error> {
        Err(self.missing(&format!("manifest {}", d.digest)))
    }
    fn blob(&self, d: &Descriptor, _: &mut dyn BlobSink) -> Result<(), Error> {
        Err(self.missing(&format!("blob {}", d.digest)))
    }
    fn cache_name(&self) -> Option<String> {
        let r = &self.reference;
        r.tag().map(|t| format!("{}:{t}", r.name()))
    }
}

pub(crate) struct Remote<'a> {
    pub client: &'a RegistryClient,
    pub reference: Reference,
    pub call: Call,
}

impl Fetcher for Remote<'_> {
    fn pinned(&self) -> Option<Digest> {
        self.reference.digest().cloned()
    }
    fn root(&self) -> Result<RawManifest, Error> {
        Ok(self
            .client
            .get_manifest(&self.reference, &self.reference.target(), &self.call)?)
    }
    fn manifest(&self, d: &Descriptor) -> Result<RawManifest, Error> {
        Ok(self
            .client
            .get_manifest(&self.reference, &d.digest.to_string(), &self.call)?)
    }
    fn blob(&self, d: &Descriptor, sink: &mut dyn BlobSink) -> Result<(), Error> {
        Ok(self
            .client
            .fetch_blob(&self.reference, &d.digest, d.size, sink, &self.call)?)
    }
    fn cache_name(&self) -> Option<String> {
        self.reference
            .tag()
            .map(|t| format!("{}:{t}", self.reference.name()))
    }
}

/// Read access to an OCI image layout, wherever its files are: a
/// directory (`oci:`, read through the store's [`hoist_store::Layout`]) or
/// a tar of one (`oci-archive:`, and Docker 25+'s `docker save`).
pub(crate) trait LayoutFiles: Sync {
    /// What the errors name.
    fn name(&self) -> String;
    fn entries(&self) -> Result<Vec<LayoutEntry>, Error>;
    /// A whole blob of at most `limit` bytes, digest checked.
    fn read(&self, d: &Digest, limit: u64) -> Result<Vec<u8>, Error>;
    /// A blob to stream, its size checked (the cache checks the digest).
    fn open(&self, d: &Digest, size: u64) -> Result<Box<dyn Read + '_>, Error>;
}

impl LayoutFiles for hoist_store::Layout {
    fn name(&self) -> String {
        self.root().display().to_string()
    }
    fn entries(&self) -> Result<Vec<LayoutEntry>, Error> {
        hoist_store::Layout::entries(self).map_err(|e| layout_err(self, e))
    }
    fn read(&self, d: &Digest, limit: u64) -> Result<Vec<u8>, Error> {
        self.read_blob(d, limit).map_err(|e| layout_err(self, e))
    }
    fn open(&self, d: &Digest, size: u64) -> Result<Box<dyn Read + '_>, Error> {
        Ok(Box::new(
            self.open_blob(d, size).map_err(|e| layout_err(self, e))?,
        ))
    }
}

/// A store error while reading a source layout: integrity errors name the
/// image, the rest the layout.
pub(crate) fn layout_err(l: &dyn LayoutFiles, e: hoist_store::StoreError) -> Error {
    use hoist_store::StoreError as S;
    match e {
        S::DigestMismatch { .. } | S::SizeMismatch { .. } => Error::Blob {
            image: l.name(),
            source: e,
        },
        S::CorruptLayout { reason, .. } => Error::Layout {
            layout: l.name(),
            reason,
        },
        S::MissingBlob { digest } => Error::Layout {
            layout: l.name(),
            reason: format!("blob {digest} is missing"),
        },
        e => Error::Layout {
            layout: l.name(),
            reason: e.to_string(),
        },
    }
}

/// An OCI layout source: the image its `index.json` names by tag
/// (`org.opencontainers.image.ref.name`, or a full image name as
/// containerd and Docker write it), or its only image.
pub(crate) struct OciSource<F: LayoutFiles> {
    pub files: F,
    pub tag: Option<String>,
    pub max_manifest_size: u64,
    /// The cache name of the image (`oci:/abs/path:tag`).
    pub cache_name: String,
}

impl<F: LayoutFiles> OciSource<F> {
    fn err(&self, reason: impl Into<String>) -> Error {
        Error::Layout {
            layout: self.files.name(),
            reason: reason.into(),
        }
    }

    fn read_manifest(
        &self,
        d: &Digest,
        size: u64,
        media_type: Option<&str>,
    ) -> Result<RawManifest, Error> {
        if size > self.max_manifest_size {
            return Err(self.err(format!(
                "manifest {d} is {size} bytes, above the limit of {}",
                self.max_manifest_size
            )));
        }
        let bytes = self.files.read(d, self.max_manifest_size)?;
        if bytes.len() as u64 != size {
            return Err(Error::Blob {
                image: self.files.name(),
                source: hoist_store::StoreError::SizeMismatch {
                    digest: d.clone(),
                    expected: size,
                    actual: bytes.len() as u64,
                },
            });
        }
        Ok(RawManifest {
            bytes,
            content_type: media_type.map(str::to_string),
            digest: d.clone(),
        })
    }
}

/// Whether an index entry answers to `tag`: its ref name, or the full name
/// (`io.containerd.image.name`) or its tag.
fn entry_matches(e: &LayoutEntry, tag: &str) -> bool {
    if e.ref_name() == Some(tag) {
        return true;
    }
    let full = e.annotations.get("io.containerd.image.name");
    let norm = |s: &str| s.parse::<Reference>().ok().map(|r| r.to_string());
    match (full, norm(tag)) {
        (Some(f), Some(t)) => norm(f).as_deref() == Some(t.as_str()),
        _ => false,
    }
}

impl<F: LayoutFiles> Fetcher for OciSource<F> {
    fn pinned(&self) -> Option<Digest> {
        None
    }
    fn root(&self) -> Result<RawManifest, Error> {
        let entries = self.files.entries()?;
        let entry = match &self.tag {
            Some(t) => entries.iter().find(|e| entry_matches(e, t)),
            None if entries.len() == 1 => entries.first(),
            None => {
                return Err(self.err(format!(
                    "holds {} images; name one with :TAG",
                    entries.len()
                )))
            }
        };
        let Some(entry) = entry else {
            let available: Vec<&str> = entries.iter().filter_map(|e| e.ref_name()).collect();
            return Err(Error::LayoutTagNotFound {
                layout: self.files.name(),
                tag: self.tag.clone().unwrap_or_default(),
                available: if available.is_empty() {
                    "none".into()
                } else {
                    available.join(", ")
                },
            });
        };
        self.read_manifest(&entry.digest, entry.size, Some(&entry.media_type))
    }
    fn manifest(&self, d: &Descriptor) -> Result<RawManifest, Error> {
        self.read_manifest(&d.digest, d.size, Some(&d.media_type))
    }
    fn blob(&self, d: &Descriptor, sink: &mut dyn BlobSink) -> Result<(), Error> {
        let f = self.files.open(&d.digest, d.size)?;
        std::io::copy(&mut f.take(d.size), sink)
            .map_err(|e| self.err(format!("copying blob {}: {e}", d.digest)))?;
        Ok(())
    }
    fn cache_name(&self) -> Option<String> {
        Some(self.cache_name.clone())
    }
}
