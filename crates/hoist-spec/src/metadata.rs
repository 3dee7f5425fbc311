//! The image's run metadata, read from its config.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::SpecError;
use crate::platform::Platform;

/// A parsed image config (OCI or Docker container config).
#[derive(Debug, Clone)]
pub struct ImageConfig {
    pub platform: Platform,
    pub rootfs_type: String,
    /// The uncompressed digest of each layer, in order.
    pub diff_ids: Vec<Digest>,
    pub metadata: ImageMetadata,
}

/// What a VM needs to run the image: the Go original's `containerMetadata`
/// plus user, ports, labels and stop signal. Read back through serde (the
/// service stores it as JSON); a field missing from older JSON is empty.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct ImageMetadata {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=VALUE` entries split at the first `=`.
    pub env: BTreeMap<String, String>,
    pub working_dir: String,
    pub user: String,
    pub exposed_ports: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub stop_signal: String,
}

pub fn parse_config(bytes: &[u8], what: &str) -> Result<ImageConfig, SpecError> {
    let c: oci_spec::image::ImageConfiguration =
        serde_json::from_slice(bytes).map_err(|source| SpecError::MalformedJson {
            what: format!("config of {what}"),
            source,
        })?;
    let variant = c.variant().as_deref().filter(|v| !v.is_empty());
    let platform = Platform::new(&c.os().to_string(), &c.architecture().to_string(), variant);
    let mut md = ImageMetadata::default();
    if let Some(cfg) = c.config() {
        md.entrypoint = cfg.entrypoint().clone().unwrap_or_default();
        md.cmd = cfg.cmd().clone().unwrap_or_default();
        for kv in cfg.env().iter().flatten() {
            let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
            md.env.insert(k.to_string(), v.to_string());
        }
        md.working_dir = cfg.working_dir().clone().unwrap_or_default();
        md.user = cfg.user().clone().unwrap_or_default();
        md.exposed_ports = cfg.exposed_ports().clone().unwrap_or_default();
        md.exposed_ports.sort();
        md.labels = cfg
            .labels()
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        md.stop_signal = cfg.stop_signal().clone().unwrap_or_default();
    }
    let diff_ids = c
        .rootfs()
        .diff_ids()
        .iter()
        .map(|d| {
            d.parse::<Digest>().map_err(|_| SpecError::InvalidConfig {
                what: what.to_string(),
                reason: format!("diff_id {d:?} is not a digest"),
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(ImageConfig {
        platform,
        rootfs_type: c.rootfs().typ().clone(),
        diff_ids,
        metadata: md,
    })
}

impl ImageConfig {
    /// The Go original's `validateConfigFileForUnpack`, as typed checks.
    pub fn validate_for_unpack(&self, layer_count: usize, what: &str) -> Result<(), SpecError> {
        let bad = |reason: String| SpecError::InvalidConfig {
            what: what.to_string(),
            reason,
        };
        if self.rootfs_type != "layers" {
            return Err(bad(format!(
                "rootfs.type is {:?}, expected \"layers\"",
                self.rootfs_type
            )));
        }
        if self.diff_ids.len() != layer_count {
            return Err(bad(format!(
                "config has {} diff_ids but the manifest has {} layers",
                self.diff_ids.len(),
                layer_count
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_metadata() {
        let cfg = br#"{"architecture":"amd64","os":"linux","container_config":{"Hostname":"x"},
          "config":{"Env":["PATH=/bin","EMPTY=","EQ=a=b"],"Entrypoint":["/init"],"Cmd":["-v"],
          "WorkingDir":"/app","User":"app","ExposedPorts":{"80/tcp":{},"443/tcp":{}},
          "Labels":{"a":"b"},"StopSignal":"SIGINT"},
          "rootfs":{"type":"layers","diff_ids":[]}}"#;
        let c = parse_config(cfg, "x").unwrap();
        assert_eq!(c.platform.to_string(), "linux/amd64");
        let m = &c.metadata;
        assert_eq!(m.env["EQ"], "a=b");
        assert_eq!(m.env["EMPTY"], "");
        assert_eq!(m.exposed_ports, vec!["443/tcp", "80/tcp"]);
        assert_eq!(m.stop_signal, "SIGINT");
        assert!(c.validate_for_unpack(0, "x").is_ok());
        let e = c.validate_for_unpack(1, "x").unwrap_err().to_string();
        assert!(e.contains("0 diff_ids"), "{e}");
    }
}
