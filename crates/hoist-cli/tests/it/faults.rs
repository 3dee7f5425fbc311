//! Faults a real registry will not produce, from the in-process server:
//! the client must retry, resume, type its errors, and keep bad bytes out
//! of the cache.

use std::time::{Duration, Instant};

use crate::harness::faults::FaultRegistry;
use crate::harness::image::{self, Blob};
use crate::harness::{sample_image, Hoist};

fn server(seed: u64) -> (FaultRegistry, image::Image, String) {
    let f = FaultRegistry::start();
    let img = sample_image(seed, 512);
    f.add_image("v1", &img);
    let r = format!("{}/fault/img:v1", f.host());
    (f, img, r)
}

#[test]
fn bursts_of_503_are_retried() {
    let (f, img, r) = server(40);
    f.set(|p| {
        p.manifest_503 = 2;
        p.blob_503 = 3;
    });
    let h = Hoist::new();
    assert_eq!(h.ok(&["pull", &r]).trim(), img.manifest.digest());
    assert_eq!(
        f.requests("manifests").len(),
        3,
        "two 503s, then the manifest"
    );
    h.assert_blobs_verified();
}

#[test]
fn retries_are_bounded() {
    let (f, _, r) = server(41);
    f.set(|p| p.manifest_503 = 100);
    let h = Hoist::new();
    let e = h.fails(&["--retries", "3", "pull", &r], 1);
    assert!(e.contains("503") && e.contains("fault/img"), "{e}");
    assert_eq!(f.requests("manifests").len(), 3);
}

#[test]
fn connection_reset_mid_blob_resumes_with_range() {
    let (f, img, r) = server(42);
    f.set(|p| p.reset_after = Some((2, 200_000)));
    let h = Hoist::new();
    assert_eq!(
        h.ok(&["--concurrency", "1", "pull", &r]).trim(),
        img.manifest.digest()
    );
    let ranged: Vec<String> = f
        .requests("blobs")
        .into_iter()
        .filter(|l| l.contains("range=bytes="))
        .collect();
    assert!(
        !ranged.is_empty(),
        "no Range request: {:?}",
        f.requests("blobs")
    );
    assert!(
        ranged.iter().all(|l| !l.contains("range=bytes=0-")),
        "{ranged:?}"
    );
    h.assert_blobs_verified();
}

#[test]
fn truncated_body_resumes_and_a_server_ignoring_range_restarts() {
    let (f, img, r) = server(43);
    f.set(|p| p.truncate_after = Some((1, 100_000)));
    let h = Hoist::new();
    assert_eq!(
        h.ok(&["--concurrency", "1", "pull", &r]).trim(),
        img.manifest.digest()
    );
    assert!(f
        .requests("blobs")
        .iter()
        .any(|l| l.contains("range=bytes=")));
    h.assert_blobs_verified();

    let (f, img, r) = server(44);
    f.set(|p| {
        p.truncate_after = Some((1, 100_000));
        p.no_range = true;
    });
    let h = Hoist::new();
    assert_eq!(h.ok(&["pull", &r]).trim(), img.manifest.digest());
    h.assert_blobs_verified();
}

#[test]
fn wrong_bytes_for_a_digest_exit_6_and_never_enter_the_cache() {
    let (f, img, r) = server(45);
    f.set(|p| p.wrong_bytes = true);
    let h = Hoist::new();
    let e = h.fails(&["pull", &r], 6);
    assert!(e.contains("digest mismatch"), "{e}");
    let blobs = h.layout().join("blobs/sha256");
    for l in img.layers.iter().chain([&img.config]) {
        assert!(
            !blobs.join(&l.digest()[7..]).exists(),
            "bad blob {} in the cache",
            l.digest()
        );
    }
    assert_eq!(
        std::fs::read_dir(h.layout().join(".hoist/tmp"))
            .unwrap()
            .count(),
        0,
        "temp files left"
    );
    assert!(h.ok(&["fsck"]).contains("consistent"));
}

#[test]
fn more_bytes_than_declared_are_cut_off() {
    let (f, _, r) = server(46);
    f.set(|p| p.too_long = true);
    let h = Hoist::new();
    let e = h.fails(&["pull", &r], 6);
    assert!(e.contains("size mismatch"), "{e}");
    assert_eq!(h.assert_blobs_verified(), 0);
}

#[test]
fn manifest_digest_mismatch_on_digest_reference() {
    let (f, img, _) = server(47);
    // Serve another document under this digest.
    let other = Blob {
        media_type: img.manifest.media_type.clone(),
        bytes: sample_image(48, 1).manifest.bytes,
    };
    f.add_manifest(&img.manifest.digest(), &other);
    let h = Hoist::new();
    let e = h.fails(
        &[
            "pull",
            &format!("{}/fault/img@{}", f.host(), img.manifest.digest()),
        ],
        6,
    );
    assert!(e.contains("digest mismatch"), "{e}");
}

#[test]
fn oversized_manifest_is_refused_before_buffering() {
    let (f, _, r) = server(49);
    f.set(|p| p.huge_manifest = Some(64 << 20));
    let h = Hoist::new();
    let e = h.fails(&["inspect", &r], 1);
    assert!(e.contains("above the limit of 4194304"), "{e}");
    let e = h.fails(
        &[
            "--max-manifest-size",
            "100",
            "inspect",
            &format!("{}/fault/img:v1", f.host()),
        ],
        1,
    );
    assert!(e.contains("limit"), "{e}");
}

#[test]
fn rate_limit_fails_fast_with_retry_after_or_waits_when_asked() {
    let (f, img, r) = server(50);
    f.set(|p| {
        p.rate_limit = 1;
        p.retry_after_secs = 2;
    });
    let h = Hoist::new();
    let t = Instant::now();
    let e = h.fails(&["pull", &r], 5);
    assert!(
        e.contains("rate limited") && e.contains("Retry-After: 2s"),
        "{e}"
    );
    assert!(t.elapsed() < Duration::from_secs(2), "429 must fail fast");
    f.set(|p| p.rate_limit = 1);
    let t = Instant::now();
    assert_eq!(
        h.ok(&["--retry-rate-limit", "pull", &r]).trim(),
        img.manifest.digest()
    );
    assert!(t.elapsed() >= Duration::from_secs(2), "waited Retry-After");
    f.set(|p| {
        p.rate_limit = 1;
        p.retry_after_secs = 600;
    });
    let e = Hoist::new().fails(&["--retry-rate-limit=5", "pull", &r], 5);
    assert!(e.contains("Retry-After: 600s"), "{e}");
}

#[test]
fn slow_bodies_succeed_and_a_stalled_request_is_retried() {
    let (f, img, r) = server(51);
    f.set(|p| p.chunk_delay = Duration::from_millis(20));
    let h = Hoist::new();
    assert_eq!(h.ok(&["pull", &r]).trim(), img.manifest.digest());

    let (f, img, r) = server(52);
    f.set(|p| p.stall = Some((1, Duration::from_secs(5))));
    let h = Hoist::new();
    let t = Instant::now();
    assert_eq!(
        h.ok(&["--timeout", "1", "--concurrency", "1", "pull", &r])
            .trim(),
        img.manifest.digest()
    );
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "the stall was waited out, not timed out"
    );
}

#[test]
fn schema1_and_foreign_layers_get_named_errors() {
    let f = FaultRegistry::start();
    let s1 = Blob {
        media_type: "application/vnd.docker.distribution.manifest.v1+prettyjws".into(),
        bytes: br#"{"schemaVersion":1,"name":"fault/img","tag":"old","architecture":"amd64","fsLayers":[],"history":[]}"#.to_vec(),
    };
    f.add_manifest("old", &s1);
    let img = sample_image(53, 1);
    let mut m: serde_json::Value = serde_json::from_slice(&img.manifest.bytes).unwrap();
    m["mediaType"] = hoist_spec::media::DOCKER_MANIFEST.into();
    m["config"]["mediaType"] = hoist_spec::media::DOCKER_CONFIG.into();
    m["layers"][0]["mediaType"] = hoist_spec::media::DOCKER_FOREIGN_GZIP.into();
    m["layers"][0]["urls"] = serde_json::json!(["https://example.invalid/layer"]);
    f.add_manifest(
        "foreign",
        &Blob {
            media_type: hoist_spec::media::DOCKER_MANIFEST.into(),
            bytes: serde_json::to_vec(&m).unwrap(),
        },
    );
    let h = Hoist::new();
    let e = h.fails(&["pull", &format!("{}/fault/img:old", f.host())], 1);
    assert!(e.contains("schema 1"), "{e}");
    let e = h.fails(&["pull", &format!("{}/fault/img:foreign", f.host())], 1);
    assert!(e.contains("foreign or non-distributable layer"), "{e}");
    assert!(
        f.requests("blobs").is_empty(),
        "nothing fetched for an unusable image"
    );
}
