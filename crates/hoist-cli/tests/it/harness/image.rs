//! Fixture images built in the test: real gzip'd tar layers, configs and
//! manifests, in OCI or Docker media types.

use std::io::Write;

use hoist_spec::media;
use sha2::{Digest as _, Sha256};

pub fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

#[derive(Clone)]
pub struct Blob {
    pub media_type: String,
    pub bytes: Vec<u8>,
}

impl Blob {
    pub fn digest(&self) -> String {
        sha256(&self.bytes)
    }
    pub fn descriptor(&self) -> serde_json::Value {
        serde_json::json!({"mediaType": self.media_type, "digest": self.digest(), "size": self.bytes.len()})
    }
}

#[derive(Clone)]
pub struct Image {
    pub config: Blob,
    pub layers: Vec<Blob>,
    pub manifest: Blob,
}

/// A tar archive of `(path, contents)` regular files.
pub fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, *data).unwrap();
    }
    b.into_inner().unwrap()
}

pub fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

/// Deterministic incompressible bytes.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut ctr = 0u64;
    while out.len() < len {
        out.extend_from_slice(&Sha256::digest(format!("{seed}/{ctr}").as_bytes()));
        ctr += 1;
    }
    out.truncate(len);
    out
}

pub struct Builder {
    pub docker: bool,
    pub os: String,
    pub arch: String,
    pub variant: Option<String>,
    pub layers: Vec<Vec<u8>>,
    pub config_media_type: Option<String>,
    pub entrypoint: Vec<String>,
}

impl Builder {
    pub fn new() -> Builder {
        Builder {
            docker: false,
            os: "linux".into(),
            arch: "amd64".into(),
            variant: None,
            layers: Vec::new(),
            config_media_type: None,
            entrypoint: vec!["/bin/app".into()],
        }
    }
    pub fn docker(mut self) -> Self {
        self.docker = true;
        self
    }
    pub fn platform(mut self, os: &str, arch: &str, variant: Option<&str>) -> Self {
        self.os = os.into();
        self.arch = arch.into();
        self.variant = variant.map(Into::into);
        self
    }
    /// A layer from files (tar, gzip'd).
    pub fn layer(mut self, files: &[(&str, &[u8])]) -> Self {
        self.layers.push(tar_of(files));
        self
    }
    pub fn config_media_type(mut self, mt: &str) -> Self {
        self.config_media_type = Some(mt.into());
        self
    }
    pub fn build(self) -> Image {
        let (lmt, cmt, mmt) = if self.docker {
            (
                media::DOCKER_LAYER_GZIP,
                media::DOCKER_CONFIG,
                media::DOCKER_MANIFEST,
            )
        } else {
            (
                media::OCI_LAYER_GZIP,
                media::OCI_CONFIG,
                media::OCI_MANIFEST,
            )
        };
        let diff_ids: Vec<String> = self.layers.iter().map(|t| sha256(t)).collect();
        let layers: Vec<Blob> = self
            .layers
            .iter()
            .map(|t| Blob {
                media_type: lmt.into(),
                bytes: gzip(t),
            })
            .collect();
        let mut platform = serde_json::json!({"os": self.os, "architecture": self.arch});
        if let Some(v) = &self.variant {
            platform["variant"] = v.clone().into();
        }
        let mut config = serde_json::json!({
            "created": "2026-01-01T00:00:00Z",
            "config": {
                "Entrypoint": self.entrypoint,
                "Cmd": ["--serve"],
                "Env": ["PATH=/usr/bin:/bin", "GREETING=a=b"],
                "WorkingDir": "/srv",
                "User": "1000:1000",
                "ExposedPorts": {"8080/tcp": {}},
                "Labels": {"org.example.test": "yes"},
                "StopSignal": "SIGTERM"
            },
            "rootfs": {"type": "layers", "diff_ids": diff_ids}
        });
        for (k, v) in platform.as_object().unwrap() {
            config[k] = v.clone();
        }
        let config = Blob {
            media_type: self.config_media_type.unwrap_or_else(|| cmt.into()),
            bytes: serde_json::to_vec(&config).unwrap(),
        };
        with_manifest(layers, config, mmt)
    }
}

/// An image from its layer blobs and config JSON, in OCI media types or
/// Docker's.
pub fn assemble(layers: Vec<Blob>, config: &serde_json::Value, docker: bool) -> Image {
    let (cmt, mmt) = if docker {
        (media::DOCKER_CONFIG, media::DOCKER_MANIFEST)
    } else {
        (media::OCI_CONFIG, media::OCI_MANIFEST)
    };
    let config = Blob {
        media_type: cmt.into(),
        bytes: serde_json::to_vec(config).unwrap(),
    };
    with_manifest(layers, config, mmt)
}

/// The manifest (of media type `mmt`) over a config blob and layers.
fn with_manifest(layers: Vec<Blob>, config: Blob, mmt: &str) -> Image {
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": mmt,
        "config": config.descriptor(),
        "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
    });
    Image {
        manifest: Blob {
            media_type: mmt.into(),
            bytes: serde_json::to_vec_pretty(&manifest).unwrap(),
        },
        config,
        layers,
    }
}

/// An index over `(image, platform JSON or None)` entries.
pub fn index(entries: &[(&Blob, Option<serde_json::Value>)], docker: bool) -> Blob {
    let mt = if docker {
        media::DOCKER_LIST
    } else {
        media::OCI_INDEX
    };
    let manifests: Vec<serde_json::Value> = entries
        .iter()
        .map(|(b, p)| {
            let mut d = b.descriptor();
            if let Some(p) = p {
                d["platform"] = p.clone();
            }
            d
        })
        .collect();
    Blob {
        media_type: mt.into(),
        bytes: serde_json::to_vec_pretty(
            &serde_json::json!({"schemaVersion": 2, "mediaType": mt, "manifests": manifests}),
        )
        .unwrap(),
    }
}
