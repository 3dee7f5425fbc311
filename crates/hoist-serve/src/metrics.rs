//! Prometheus metrics (OpenMetrics text), the Go original's four under the
//! `hoist_` prefix plus the bytes of the disks and of the cache.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: String,
}

pub fn label(s: &str) -> StatusLabel {
    StatusLabel { status: s.into() }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

pub struct Metrics {
    pub registry: Registry,
    /// Pulls that got no answer from a registry, by why (timeout,
    /// connect, tls, reset, other).
    pub registry_unreachable: Family<KindLabel, Counter>,
    pub build_duration: Family<StatusLabel, Histogram>,
    pub pulls: Family<StatusLabel, Counter>,
    pub queue_length: Gauge,
    pub images: Family<StatusLabel, Gauge>,
    pub images_bytes: Gauge,
    pub cache_bytes: Gauge,
    /// Blob bytes received by `/v2` uploads.
    pub upload_bytes: Counter,
    /// Manifests pushed to `/v2`.
    pub pushed_manifests: Counter,
    /// Upload sessions open.
    pub upload_sessions: Gauge,
    /// Layer files under `layers/` (with shared layers), and their bytes.
    pub layer_files: Gauge,
    pub layer_files_bytes: Gauge,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("hoist");
        let build_duration = Family::<StatusLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.25, 2.0, 14))
        });
        let pulls = Family::<StatusLabel, Counter>::default();
        let queue_length = Gauge::default();
        let images = Family::<StatusLabel, Gauge>::default();
        let images_bytes = Gauge::default();
        let cache_bytes = Gauge::default();
        let registry_unreachable = Family::<KindLabel, Counter>::default();
        registry.register(
            "registry_unreachable",
            "Pulls that got no answer from a registry, by why",
            registry_unreachable.clone(),
        );
        registry.register_with_unit(
            "images_build_duration",
            "Time a build took, by final status",
            Unit::Seconds,
            build_duration.clone(),
        );
        registry.register(
            "images_pulls",
            "Pulls into the cache, by status",
            pulls.clone(),
        );
        registry.register(
            "images_build_queue_length",
            "Images waiting for a build",
            queue_length.clone(),
        );
        registry.register("images_total", "Images by status", images.clone());
        registry.register_with_unit(
            "images",
            "Bytes of the ready disk images",
            Unit::Bytes,
            images_bytes.clone(),
        );
        registry.register_with_unit(
            "cache",
            "Bytes of the blobs in the cache",
            Unit::Bytes,
            cache_bytes.clone(),
        );
        let upload_bytes = Counter::default();
        let pushed_manifests = Counter::default();
        let upload_sessions = Gauge::default();
        registry.register_with_unit(
            "registry_upload",
            "Blob bytes received by /v2 uploads",
            Unit::Bytes,
            upload_bytes.clone(),
        );
        registry.register(
            "registry_pushed_manifests",
            "Manifests pushed to /v2",
            pushed_manifests.clone(),
        );
        registry.register(
            "registry_upload_sessions",
            "Upload sessions open",
            upload_sessions.clone(),
        );
        let layer_files = Gauge::default();
        let layer_files_bytes = Gauge::default();
        registry.register(
            "layer_files",
            "Layer files of shared-layer disks",
            layer_files.clone(),
        );
        registry.register_with_unit(
            "layer_files",
            "Bytes of the layer files of shared-layer disks",
            Unit::Bytes,
            layer_files_bytes.clone(),
        );
        Metrics {
            layer_files,
            layer_files_bytes,
            upload_bytes,
            pushed_manifests,
            upload_sessions,
            registry,
            registry_unreachable,
            build_duration,
            pulls,
            queue_length,
            images,
            images_bytes,
            cache_bytes,
        }
    }

    pub fn encode(&self) -> String {
        let mut s = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }
}
