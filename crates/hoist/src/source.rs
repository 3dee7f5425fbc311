//! Where images come from. Registries and local OCI layouts sit behind one
//! small trait, as go-containerregistry's `remote` and `layout` do, so the
//! resolution and pull logic is written once.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use hoist_registry::{BlobSink, Call, RawManifest, RegistryClient};
use hoist_spec::{Descriptor, Digest, Reference, SpecError};

use crate::error::Error;

/// An image to read: a registry reference, or `oci:PATH[:TAG]` (skopeo's
/// syntax; the first ':' after the path ends it).
#[derive(Clone, PartialEq, Eq)]
pub enum ImageSource {
    Registry(Reference),
    Layout { path: PathBuf, tag: Option<String> },
}

impl FromStr for ImageSource {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
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

pub(crate) struct Layout {
    pub path: PathBuf,
    pub tag: Option<String>,
    pub max_manifest_size: u64,
}

#[derive(serde::Deserialize)]
struct LayoutIndex {
    #[serde(default)]
    manifests: Vec<LayoutEntry>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct LayoutEntry {
    media_type: String,
    digest: Digest,
    size: u64,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, String>,
}

impl Layout {
    fn err(&self, reason: impl Into<String>) -> Error {
        Error::Layout {
            layout: self.path.display().to_string(),
            reason: reason.into(),
        }
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        self.path
            .join("blobs")
            .join(d.algorithm().as_str())
            .join(d.hex())
    }

    fn open(&self, d: &Digest, size: u64) -> Result<std::fs::File, Error> {
        let p = self.blob_path(d);
        let f = std::fs::File::open(&p).map_err(|e| self.err(format!("blob {d}: {e}")))?;
        let len = f.metadata().map_err(|e| self.err(e.to_string()))?.len();
        if len != size {
            return Err(Error::Blob {
                image: self.path.display().to_string(),
                source: hoist_store::StoreError::SizeMismatch {
                    digest: d.clone(),
                    expected: size,
                    actual: len,
                },
            });
        }
        Ok(f)
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
        let mut bytes = Vec::with_capacity(size as usize);
        self.open(d, size)?
            .read_to_end(&mut bytes)
            .map_err(|e| self.err(e.to_string()))?;
        let actual = Digest::of(d.algorithm(), &bytes);
        if &actual != d {
            return Err(Error::Blob {
                image: self.path.display().to_string(),
                source: hoist_store::StoreError::DigestMismatch {
                    expected: d.clone(),
                    actual,
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

fn read_layout_index(path: &Path) -> Result<Vec<LayoutEntry>, String> {
    let bytes = std::fs::read(path.join("index.json"))
        .map_err(|e| format!("not an OCI image layout (index.json: {e})"))?;
    let idx: LayoutIndex =
        serde_json::from_slice(&bytes).map_err(|e| format!("index.json is malformed: {e}"))?;
    Ok(idx.manifests)
}

impl Fetcher for Layout {
    fn pinned(&self) -> Option<Digest> {
        None
    }
    fn root(&self) -> Result<RawManifest, Error> {
        let entries = read_layout_index(&self.path).map_err(|r| self.err(r))?;
        let tag_of = |e: &LayoutEntry| {
            e.annotations
                .get("org.opencontainers.image.ref.name")
                .cloned()
        };
        let entry = match &self.tag {
            Some(t) => entries.iter().find(|e| tag_of(e).as_deref() == Some(t)),
            None if entries.len() == 1 => entries.first(),
            None => {
                return Err(self.err(format!(
                    "holds {} images; name one with oci:PATH:TAG",
                    entries.len()
                )))
            }
        };
        let Some(entry) = entry else {
            let available: Vec<String> = entries.iter().filter_map(tag_of).collect();
            return Err(Error::LayoutTagNotFound {
                layout: self.path.display().to_string(),
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
        let mut f = self.open(&d.digest, d.size)?;
        std::io::copy(&mut (&mut f).take(d.size), sink)
            .map_err(|e| self.err(format!("copying blob {}: {e}", d.digest)))?;
        Ok(())
    }
    fn cache_name(&self) -> Option<String> {
        let abs = std::path::absolute(&self.path).unwrap_or_else(|_| self.path.clone());
        Some(match &self.tag {
            Some(t) => format!("oci:{}:{t}", abs.display()),
            None => format!("oci:{}", abs.display()),
        })
    }
}
