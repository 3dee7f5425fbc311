//! Pulling from a real registry into the cache.

use crate::harness::image::{self, Builder};
use crate::harness::{registries, sample_image, unique_repo, Hoist};

#[test]
fn inspect_fetches_manifest_and_config_but_no_layer() {
    let reg = &registries().plain;
    let repo = unique_repo("inspect");
    let img = sample_image(1, 64);
    reg.push_image(&repo, "v1", &img);
    let h = Hoist::new();
    let r = format!("{}/{repo}:v1", reg.host);
    let out = h.ok(&["inspect", &r]);
    assert!(
        out.contains(&format!("Digest:       {}", img.manifest.digest())),
        "{out}"
    );
    assert!(out.contains("Layers:       3"), "{out}");
    assert!(out.contains("GREETING=a=b"), "{out}");
    let json: serde_json::Value = serde_json::from_str(&h.ok(&["--json", "inspect", &r])).unwrap();
    assert_eq!(json["digest"], img.manifest.digest());
    assert_eq!(json["layer_count"], 3);
    assert_eq!(json["metadata"]["env"]["GREETING"], "a=b");
    assert_eq!(json["metadata"]["entrypoint"][0], "/bin/app");
    assert_eq!(json["metadata"]["working_dir"], "/srv");
    assert_eq!(json["metadata"]["user"], "1000:1000");
    assert_eq!(json["metadata"]["exposed_ports"][0], "8080/tcp");
    assert_eq!(json["metadata"]["labels"]["org.example.test"], "yes");
    assert_eq!(json["metadata"]["stop_signal"], "SIGTERM");
    assert_eq!(json["platform"]["architecture"], "amd64");
    reg.settle();
    assert!(
        reg.requests(&repo, "blobs")
            .iter()
            .all(|l| l.contains(&img.config.digest())),
        "inspect fetched a layer: {:?}",
        reg.requests(&repo, "blobs")
    );
    for l in &img.layers {
        assert!(!h
            .layout()
            .join("blobs/sha256")
            .join(&l.digest()[7..])
            .exists());
    }
}

#[test]
fn pull_fills_a_verified_oci_layout_and_repull_is_one_manifest_request() {
    let reg = &registries().plain;
    let repo = unique_repo("pull");
    let img = sample_image(2, 256);
    reg.push_image(&repo, "v1", &img);
    let h = Hoist::new();
    let r = format!("{}/{repo}:v1", reg.host);
    let out = h.ok(&["pull", &r]);
    assert_eq!(out.trim(), img.manifest.digest());
    // manifest + config + 3 layers
    assert_eq!(h.assert_blobs_verified(), 5);
    // The raw manifest bytes are stored exactly as received.
    let stored = std::fs::read(
        h.layout()
            .join("blobs/sha256")
            .join(&img.manifest.digest()[7..]),
    )
    .unwrap();
    assert_eq!(stored, img.manifest.bytes);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(h.layout().join("index.json")).unwrap()).unwrap();
    let e = &index["manifests"][0];
    assert_eq!(
        e["annotations"]["org.opencontainers.image.ref.name"],
        &img.manifest.digest()[7..]
    );
    assert_eq!(e["digest"], img.manifest.digest());
    let images = h.ok(&["images"]);
    assert!(
        images.contains(&format!("{}/{repo}:v1", reg.host)),
        "{images}"
    );
    assert!(images.contains("linux/amd64"), "{images}");

    reg.settle();
    let (m0, b0) = (
        reg.requests(&repo, "manifests").len(),
        reg.requests(&repo, "blobs").len(),
    );
    assert_eq!(b0, 4, "config and 3 layers fetched once each");
    h.ok(&["pull", &r]);
    reg.settle();
    assert_eq!(
        reg.requests(&repo, "manifests").len(),
        m0 + 1,
        "a cached tag costs one manifest request"
    );
    assert_eq!(
        reg.requests(&repo, "blobs").len(),
        b0,
        "and no blob request"
    );
    let by_digest = format!("{}/{repo}@{}", reg.host, img.manifest.digest());
    h.ok(&["pull", &by_digest]);
    reg.settle();
    assert_eq!(
        reg.requests(&repo, "manifests").len(),
        m0 + 1,
        "a cached digest costs no request"
    );
    let fsck = h.ok(&["fsck"]);
    assert!(fsck.contains("cache is consistent"), "{fsck}");
}

#[test]
fn layers_shared_between_images_are_fetched_once() {
    let reg = &registries().plain;
    let repo = unique_repo("shared");
    let (a, b) = crate::harness::shared_base_pair(30, 300);
    reg.push_image(&repo, "a", &a);
    reg.push_image(&repo, "b", &b);
    let h = Hoist::new();
    h.ok(&["pull", &format!("{}/{repo}:a", reg.host)]);
    reg.settle();
    let before = reg.requests(&repo, "blobs").len();
    let out = h.ok(&["--json", "pull", &format!("{}/{repo}:b", reg.host)]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["blobs_fetched"], 1, "{out}");
    reg.settle();
    let shared = &a.layers[0].digest();
    let after = reg.requests(&repo, "blobs");
    assert_eq!(after.len(), before + 2, "config + the one new layer");
    assert!(
        !after[before..].iter().any(|l| l.contains(shared)),
        "shared layer fetched again"
    );
    assert_eq!(h.ok(&["images"]).lines().count(), 3);
}

#[test]
fn docker_media_types_pull_and_map_to_oci_in_the_index() {
    let reg = &registries().plain;
    let repo = unique_repo("docker");
    let img = Builder::new().docker().layer(&[("f", b"docker")]).build();
    reg.push_image(&repo, "v2s2", &img);
    let h = Hoist::new();
    let r = format!("{}/{repo}:v2s2", reg.host);
    let v: serde_json::Value = serde_json::from_str(&h.ok(&["--json", "inspect", &r])).unwrap();
    assert_eq!(v["media_type"], hoist_spec::media::DOCKER_MANIFEST);
    assert_eq!(v["layers"][0]["compression"], "gzip");
    h.ok(&["pull", &r]);
    let index = std::fs::read_to_string(h.layout().join("index.json")).unwrap();
    assert!(index.contains(hoist_spec::media::OCI_MANIFEST), "{index}");
}

#[test]
fn multi_platform_index_selects_first_match_and_caches_platform_digest() {
    let reg = &registries().plain;
    let repo = unique_repo("multi");
    let amd = Builder::new().layer(&[("p", b"amd64")]).build();
    let amd2 = Builder::new().layer(&[("p", b"amd64-second")]).build();
    let arm = Builder::new()
        .platform("linux", "arm64", Some("v8"))
        .layer(&[("p", b"arm64")])
        .build();
    let unlabelled = Builder::new().layer(&[("p", b"none")]).build();
    let s390 = Builder::new()
        .platform("linux", "s390x", None)
        .layer(&[("p", b"s390x")])
        .build();
    for (t, i) in [
        ("amd", &amd),
        ("amd2", &amd2),
        ("arm", &arm),
        ("none", &unlabelled),
        ("s390x", &s390),
    ] {
        reg.push_image(&repo, t, i);
    }
    let p = |os: &str, arch: &str, v: Option<&str>| {
        let mut j = serde_json::json!({"os": os, "architecture": arch});
        if let Some(v) = v {
            j["variant"] = v.into();
        }
        Some(j)
    };
    let idx = image::index(
        &[
            (&arm.manifest, p("linux", "arm64", Some("v8"))),
            (&amd.manifest, p("linux", "amd64", None)),
            (&amd2.manifest, p("linux", "amd64", None)),
        ],
        false,
    );
    reg.push_manifest(&repo, "index", &idx);
    // A Docker manifest list whose first entry has no platform (= linux/amd64),
    // nested inside an OCI index.
    let list = image::index(
        &[
            (&unlabelled.manifest, None),
            (&amd.manifest, p("linux", "amd64", None)),
        ],
        true,
    );
    reg.push_manifest(&repo, "list", &list);
    let nested = image::index(
        &[(&s390.manifest, p("linux", "s390x", None)), (&list, None)],
        false,
    );
    reg.push_manifest(&repo, "nested", &nested);

    let h = Hoist::new();
    let r = |t: &str| format!("{}/{repo}:{t}", reg.host);
    assert_eq!(
        h.ok(&["pull", &r("index")]).trim(),
        amd.manifest.digest(),
        "first amd64 entry wins"
    );
    assert_eq!(
        h.ok(&["--platform", "linux/arm64", "pull", &r("index")])
            .trim(),
        arm.manifest.digest()
    );
    assert_eq!(
        h.ok(&["--platform", "linux/arm64/v8", "pull", &r("index")])
            .trim(),
        arm.manifest.digest()
    );
    assert_eq!(
        h.ok(&["pull", &r("nested")]).trim(),
        unlabelled.manifest.digest(),
        "nested list, unlabelled = amd64"
    );
    assert_eq!(
        h.ok(&["--platform", "linux/s390x", "pull", &r("nested")])
            .trim(),
        s390.manifest.digest()
    );
    let e = h.fails(&["--platform", "linux/riscv64", "pull", &r("index")], 3);
    assert!(
        e.contains("linux/riscv64") && e.contains("linux/arm64/v8, linux/amd64, linux/amd64"),
        "{e}"
    );
    // A pull by the index digest, once cached, needs no request at all.
    reg.settle();
    let before = reg.requests(&repo, "manifests").len();
    let by_digest = format!("{}/{repo}@{}", reg.host, idx.digest());
    assert_eq!(h.ok(&["pull", &by_digest]).trim(), amd.manifest.digest());
    reg.settle();
    assert_eq!(reg.requests(&repo, "manifests").len(), before);
    h.assert_blobs_verified();
}

#[test]
fn plain_manifest_for_another_platform_is_an_error_naming_both() {
    let reg = &registries().plain;
    let repo = unique_repo("arm-only");
    let arm = Builder::new()
        .platform("linux", "arm64", None)
        .layer(&[("p", b"arm")])
        .build();
    reg.push_image(&repo, "v1", &arm);
    let h = Hoist::new();
    let r = format!("{}/{repo}:v1", reg.host);
    let e = h.fails(&["--platform", "linux/amd64", "pull", &r], 1);
    assert!(
        e.contains("linux/arm64") && e.contains("linux/amd64"),
        "{e}"
    );
    h.ok(&["--platform", "linux/arm64", "pull", &r]);
}

#[test]
fn buildkit_cache_manifest_is_named_not_an_image() {
    let reg = &registries().plain;
    let repo = unique_repo("buildkit");
    let img = Builder::new()
        .config_media_type("application/vnd.buildkit.cacheconfig.v0")
        .layer(&[("x", b"x")])
        .build();
    reg.push_image(&repo, "cache", &img);
    let h = Hoist::new();
    let e = h.fails(&["pull", &format!("{}/{repo}:cache", reg.host)], 1);
    assert!(
        e.contains("not a container image") && e.contains("buildkit.cacheconfig"),
        "{e}"
    );
}

#[test]
fn skopeo_and_umoci_read_the_cache() {
    let reg = &registries().plain;
    let repo = unique_repo("peers");
    let img = sample_image(3, 32);
    reg.push_image(&repo, "v1", &img);
    let h = Hoist::new();
    let digest = h.ok(&["pull", &format!("{}/{repo}:v1", reg.host)]);
    let hex = &digest.trim()[7..];
    let layout = h.layout();
    let out = std::process::Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci:{}:{hex}", layout.display()))
        .output()
        .expect("skopeo is installed (bash .ci/run installs it)");
    assert!(
        out.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["Digest"], digest.trim());
    assert_eq!(v["Layers"].as_array().unwrap().len(), 3);
    let bundle = h.home.path().join("bundle");
    let mut umoci = std::process::Command::new("umoci");
    umoci.arg("unpack");
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        umoci.arg("--rootless");
    }
    let out = umoci
        .arg("--image")
        .arg(format!("{}:{hex}", layout.display()))
        .arg(&bundle)
        .output()
        .expect("umoci is installed (bash .ci/run installs it)");
    assert!(
        out.status.success(),
        "umoci: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(bundle.join("rootfs/etc/seed")).unwrap(),
        b"seed 3\n"
    );
    assert_eq!(
        std::fs::read(bundle.join("rootfs/etc/hello")).unwrap(),
        b"hello\n"
    );
}
