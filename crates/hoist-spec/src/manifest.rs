//! Manifests and indexes, parsed from the exact bytes a registry sent.
//! Parsing checks what hoist relies on later (a container image, known layer
//! types, verifiable digests), so the rest of the code never re-validates.

use serde::Serialize;

use crate::digest::Digest;
use crate::error::SpecError;
use crate::media::{self, Compression, ManifestKind};
use crate::platform::Platform;

/// A content descriptor with a verifiable digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

impl Descriptor {
    fn from_oci(d: &oci_spec::image::Descriptor, what: &str) -> Result<Descriptor, SpecError> {
        let digest = Digest::try_from(d.digest()).map_err(|e| SpecError::InvalidConfig {
            what: what.to_string(),
            reason: format!("descriptor digest: {e}"),
        })?;
        Ok(Descriptor {
            media_type: d.media_type().to_string(),
            digest,
            size: d.size(),
            platform: d.platform().as_ref().map(Platform::from_oci),
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Layer {
    #[serde(flatten)]
    pub descriptor: Descriptor,
    pub compression: Compression,
}

/// A single-platform image manifest, known to describe a container image.
#[derive(Debug, Clone)]
pub struct ImageManifest {
    /// As sent (may be a Docker media type).
    pub media_type: String,
    pub config: Descriptor,
    pub layers: Vec<Layer>,
}

impl ImageManifest {
    pub fn layers_size(&self) -> u64 {
        self.layers.iter().map(|l| l.descriptor.size).sum()
    }
}

fn to_oci(d: &Descriptor) -> Result<oci_spec::image::Descriptor, SpecError> {
    let digest: oci_spec::image::Digest =
        d.digest
            .to_string()
            .parse()
            .map_err(|e| SpecError::InvalidConfig {
                what: d.digest.to_string(),
                reason: format!("{e}"),
            })?;
    Ok(oci_spec::image::Descriptor::new(
        oci_spec::image::MediaType::from(d.media_type.as_str()),
        d.size,
        digest,
    ))
}

/// What a pushed manifest or index refers to, whatever it describes (an
/// image, or an artifact): the blobs and manifests that must exist before
/// it may.
#[derive(Debug, Clone)]
pub struct Referenced {
    pub media_type: String,
    pub is_index: bool,
    /// Config and layers of a manifest, or the manifests of an index.
    pub descriptors: Vec<Descriptor>,
}

/// Parse a pushed document for its references, without requiring it to be
/// a container image.
pub fn referenced(
    bytes: &[u8],
    content_type: Option<&str>,
    what: &str,
) -> Result<Referenced, SpecError> {
    let malformed = |source| SpecError::MalformedJson {
        what: what.to_string(),
        source,
    };
    let sniff: Sniff = serde_json::from_slice(bytes).map_err(malformed)?;
    if sniff.schema_version == Some(1) {
        return Err(SpecError::Schema1 { what: what.into() });
    }
    let declared = sniff
        .media_type
        .clone()
        .or_else(|| content_type.map(|c| c.split(';').next().unwrap_or(c).trim().to_string()));
    let is_index = match declared.as_deref().and_then(media::manifest_kind) {
        Some(ManifestKind::Index) => true,
        Some(ManifestKind::Image) => false,
        Some(ManifestKind::Schema1) => return Err(SpecError::Schema1 { what: what.into() }),
        None if sniff.manifests.is_some() => true,
        None if sniff.config.is_some() => false,
        None => {
            return Err(SpecError::UnsupportedMediaType {
                what: what.into(),
                media_type: declared.unwrap_or_else(|| "(none)".into()),
            })
        }
    };
    let media_type = declared.unwrap_or_else(|| {
        if is_index {
            media::OCI_INDEX.into()
        } else {
            media::OCI_MANIFEST.into()
        }
    });
    let descriptors = if is_index {
        let idx: oci_spec::image::ImageIndex = serde_json::from_slice(bytes).map_err(malformed)?;
        idx.manifests()
            .iter()
            .map(|d| Descriptor::from_oci(d, what))
            .collect::<Result<_, _>>()?
    } else {
        let m: oci_spec::image::ImageManifest = serde_json::from_slice(bytes).map_err(malformed)?;
        std::iter::once(m.config())
            .chain(m.layers().iter())
            .map(|d| Descriptor::from_oci(d, what))
            .collect::<Result<_, _>>()?
    };
    Ok(Referenced {
        media_type,
        is_index,
        descriptors,
    })
}

/// A manifest's bytes, written through the spec's types (never by hand):
/// `media_type` for the manifest itself, then its config and layers.
pub fn manifest_bytes(
    media_type: &str,
    config: &Descriptor,
    layers: &[Descriptor],
) -> Result<Vec<u8>, SpecError> {
    let m = oci_spec::image::ImageManifestBuilder::default()
        .schema_version(oci_spec::image::SCHEMA_VERSION)
        .media_type(oci_spec::image::MediaType::from(media_type))
        .config(to_oci(config)?)
        .layers(layers.iter().map(to_oci).collect::<Result<Vec<_>, _>>()?)
        .build()
        .map_err(|e| SpecError::InvalidConfig {
            what: "manifest".into(),
            reason: e.to_string(),
        })?;
    serde_json::to_vec(&m).map_err(|source| SpecError::MalformedJson {
        what: "manifest".into(),
        source,
    })
}

#[derive(Debug, Clone)]
pub struct ImageIndex {
    pub media_type: String,
    pub manifests: Vec<Descriptor>,
}

#[derive(Debug, Clone)]
pub enum Manifest {
    Image(ImageManifest),
    Index(ImageIndex),
}

impl Manifest {
    pub fn media_type(&self) -> &str {
        match self {
            Manifest::Image(m) => &m.media_type,
            Manifest::Index(i) => &i.media_type,
        }
    }
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Sniff {
    schema_version: Option<u32>,
    media_type: Option<String>,
    manifests: Option<serde_json::Value>,
    config: Option<serde_json::Value>,
}

/// Parse a manifest or index. `content_type` is the registry's header, used
/// when the document itself carries no `mediaType`. `what` names the image
/// in errors.
pub fn parse_manifest(
    bytes: &[u8],
    content_type: Option<&str>,
    what: &str,
) -> Result<Manifest, SpecError> {
    let malformed = |source| SpecError::MalformedJson {
        what: what.to_string(),
        source,
    };
    let sniff: Sniff = serde_json::from_slice(bytes).map_err(malformed)?;
    let declared = sniff
        .media_type
        .clone()
        .or_else(|| content_type.map(|c| c.split(';').next().unwrap_or(c).trim().to_string()));
    if sniff.schema_version == Some(1) {
        return Err(SpecError::Schema1 { what: what.into() });
    }
    let kind = match declared.as_deref().and_then(media::manifest_kind) {
        Some(k) => k,
        // A JSON body without a usable type: sniff its shape, as registries
        // commonly answer `application/json` for OCI documents.
        None if sniff.manifests.is_some() => ManifestKind::Index,
        None if sniff.config.is_some() => ManifestKind::Image,
        None => {
            return Err(SpecError::UnsupportedMediaType {
                what: what.into(),
                media_type: declared.unwrap_or_else(|| "(none)".into()),
            })
        }
    };
    let media_type = declared.unwrap_or_else(|| match kind {
        ManifestKind::Index => media::OCI_INDEX.into(),
        _ => media::OCI_MANIFEST.into(),
    });
    match kind {
        ManifestKind::Schema1 => Err(SpecError::Schema1 { what: what.into() }),
        ManifestKind::Index => {
            let idx: oci_spec::image::ImageIndex =
                serde_json::from_slice(bytes).map_err(malformed)?;
            let manifests = idx
                .manifests()
                .iter()
                .map(|d| Descriptor::from_oci(d, what))
                .collect::<Result<_, _>>()?;
            Ok(Manifest::Index(ImageIndex {
                media_type,
                manifests,
            }))
        }
        ManifestKind::Image => {
            let m: oci_spec::image::ImageManifest =
                serde_json::from_slice(bytes).map_err(malformed)?;
            let config = Descriptor::from_oci(m.config(), what)?;
            if !media::is_image_config(&config.media_type) {
                return Err(SpecError::NotAContainerImage {
                    what: what.into(),
                    config_media_type: config.media_type,
                });
            }
            let mut layers = Vec::with_capacity(m.layers().len());
            for l in m.layers() {
                let descriptor = Descriptor::from_oci(l, what)?;
                let lt = media::layer_type(&descriptor.media_type).ok_or_else(|| {
                    SpecError::UnsupportedMediaType {
                        what: format!("{what} layer {}", descriptor.digest),
                        media_type: descriptor.media_type.clone(),
                    }
                })?;
                if lt.foreign || l.urls().as_ref().is_some_and(|u| !u.is_empty()) {
                    return Err(SpecError::ForeignLayer {
                        what: what.into(),
                        digest: descriptor.digest.to_string(),
                        media_type: descriptor.media_type,
                    });
                }
                layers.push(Layer {
                    descriptor,
                    compression: lt.compression,
                });
            }
            Ok(Manifest::Image(ImageManifest {
                media_type,
                config,
                layers,
            }))
        }
    }
}

/// The platform an index entry stands for; an entry with none is linux/amd64.
pub fn entry_platform(d: &Descriptor) -> Platform {
    d.platform
        .clone()
        .unwrap_or_else(Platform::default_for_unlabelled)
}

/// Entries of `index` to try for `want`, in index order: image manifests whose
/// platform matches, and nested indexes (to be walked in turn). The first
/// image manifest found this way is the answer.
pub fn index_candidates<'a>(index: &'a ImageIndex, want: &Platform) -> Vec<&'a Descriptor> {
    index
        .manifests
        .iter()
        .filter(|d| match media::manifest_kind(&d.media_type) {
            Some(ManifestKind::Index) => d.platform.as_ref().is_none_or(|p| want.matches(p)),
            Some(ManifestKind::Image) => want.matches(&entry_platform(d)),
            _ => false,
        })
        .collect()
}

/// "linux/amd64, linux/arm64/v8" for error messages.
pub fn available_platforms(index: &ImageIndex) -> String {
    let v: Vec<String> = index
        .manifests
        .iter()
        .filter(|d| media::manifest_kind(&d.media_type) == Some(ManifestKind::Image))
        .map(|d| entry_platform(d).to_string())
        .collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn image(config_mt: &str, layer_mt: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",
            "config":{{"mediaType":"{config_mt}","digest":"{D1}","size":2}},
            "layers":[{{"mediaType":"{layer_mt}","digest":"{D2}","size":3}}]}}"#
        )
    }

    #[test]
    fn docker_manifest_parses() {
        let m = parse_manifest(
            image(media::DOCKER_CONFIG, media::DOCKER_LAYER_GZIP).as_bytes(),
            None,
            "x",
        )
        .unwrap();
        let Manifest::Image(m) = m else { panic!() };
        assert_eq!(m.layers[0].compression, Compression::Gzip);
        assert_eq!(m.layers_size(), 3);
    }

    #[test]
    fn buildkit_cache_is_not_an_image() {
        let e = parse_manifest(
            image(
                "application/vnd.buildkit.cacheconfig.v0",
                media::OCI_LAYER_GZIP,
            )
            .as_bytes(),
            None,
            "x",
        )
        .unwrap_err();
        assert!(matches!(e, SpecError::NotAContainerImage { .. }), "{e}");
    }

    #[test]
    fn foreign_layer_is_named() {
        let e = parse_manifest(
            image(media::DOCKER_CONFIG, media::DOCKER_FOREIGN_GZIP).as_bytes(),
            None,
            "x",
        )
        .unwrap_err();
        assert!(matches!(e, SpecError::ForeignLayer { .. }), "{e}");
    }

    #[test]
    fn schema1_is_named() {
        let e = parse_manifest(
            br#"{"schemaVersion":1,"name":"x","tag":"y","fsLayers":[]}"#,
            None,
            "x",
        )
        .unwrap_err();
        assert!(matches!(e, SpecError::Schema1 { .. }), "{e}");
    }

    #[test]
    fn first_match_wins_and_unlabelled_is_amd64() {
        let idx = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[
              {{"mediaType":"{m}","digest":"{D1}","size":1,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}},
              {{"mediaType":"{m}","digest":"{D2}","size":1}}]}}"#,
            media::OCI_INDEX,
            m = media::OCI_MANIFEST
        );
        let Manifest::Index(i) = parse_manifest(idx.as_bytes(), None, "x").unwrap() else {
            panic!()
        };
        let c = index_candidates(&i, &"linux/amd64".parse().unwrap());
        assert_eq!(c[0].digest.to_string(), D2);
        let c = index_candidates(&i, &"linux/arm64".parse().unwrap());
        assert_eq!(c[0].digest.to_string(), D1);
        assert!(index_candidates(&i, &"linux/s390x".parse().unwrap()).is_empty());
        assert_eq!(available_platforms(&i), "linux/arm64/v8, linux/amd64");
    }
}
