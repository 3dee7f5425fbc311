//! Command-line behaviour: references, exit codes, local layouts, JSON.

use crate::harness::{registries, sample_image, unique_repo, Hoist};

#[test]
fn invalid_references_exit_2_before_any_network_call() {
    let h = Hoist::new();
    for bad in [
        "",
        "Alpine",
        "user/App:1",
        "invalid::",
        "a b",
        "x@sha256:123",
        "x:-bad",
    ] {
        // A proxy that does not exist: any network call would fail differently.
        let out = h
            .cmd()
            .env("HTTPS_PROXY", "http://127.0.0.1:9")
            .env("NO_PROXY", "")
            .args(["inspect", bad])
            .output()
            .unwrap();
        let e = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {e}");
        assert!(e.contains("invalid reference"), "{bad:?}: {e}");
    }
    let e = h.fails(&["--platform", "linux", "inspect", "alpine"], 2);
    assert!(e.contains("invalid platform"), "{e}");
    h.fails(&["inspect"], 2);
}

#[test]
fn not_found_exits_3_and_names_registry_repository_and_reference() {
    let reg = &registries().plain;
    let h = Hoist::new();
    let repo = unique_repo("missing");
    let e = h.fails(&["pull", &format!("{}/{repo}:nope", reg.host)], 3);
    assert!(
        e.contains(&format!("{}/{repo}:nope", reg.host)) && e.contains("MANIFEST_UNKNOWN")
            || e.contains("NAME_UNKNOWN"),
        "{e}"
    );
    let out = h.run(&["--json", "pull", &format!("{}/{repo}:nope", reg.host)]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["exit_code"], 3);
}

#[test]
fn oci_layout_source_pull_and_inspect() {
    // A layout written by skopeo from the real registry is a source too.
    let reg = &registries().plain;
    let repo = unique_repo("layout");
    let img = sample_image(20, 16);
    reg.push_image(&repo, "v1", &img);
    let h = Hoist::new();
    let dir = h.home.path().join("layout");
    let st = std::process::Command::new("skopeo")
        .args(["copy", "--quiet", "--src-tls-verify=false"])
        .arg(format!("docker://{}/{repo}:v1", reg.host))
        .arg(format!("oci:{}:mytag", dir.display()))
        .env("NO_PROXY", "127.0.0.1")
        .status()
        .expect("skopeo");
    assert!(st.success());
    let src = format!("oci:{}:mytag", dir.display());
    let v: serde_json::Value = serde_json::from_str(&h.ok(&["--json", "inspect", &src])).unwrap();
    assert_eq!(v["layer_count"], 3);
    let digest = h.ok(&["pull", &src]);
    assert_eq!(digest.trim(), v["digest"].as_str().unwrap());
    h.assert_blobs_verified();
    assert!(h.ok(&["images"]).contains("mytag"));
    let e = h.fails(&["inspect", &format!("oci:{}:other", dir.display())], 3);
    assert!(e.contains("mytag"), "lists the tags there are: {e}");
    // A corrupted blob in the source layout is caught.
    let layer = &img.layers[0].digest()[7..];
    let p = dir.join("blobs/sha256").join(layer);
    if p.exists() {
        let mut b = std::fs::read(&p).unwrap();
        b[10] ^= 1;
        std::fs::write(&p, b).unwrap();
        let h2 = Hoist::new();
        let e = h2.fails(&["pull", &src], 6);
        assert!(e.contains("digest mismatch"), "{e}");
        h2.assert_blobs_verified();
        assert!(
            !h2.layout().join("blobs/sha256").join(layer).exists(),
            "the bad blob got in"
        );
        assert!(
            h2.ok(&["--json", "images"]).trim() == "[]",
            "an incomplete image was recorded"
        );
    }
}

#[test]
fn example_layout_in_the_repo_inspects_offline() {
    let h = Hoist::new();
    let src = concat!(
        "oci:",
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/hello:latest"
    );
    let v: serde_json::Value = serde_json::from_str(&h.ok(&["--json", "inspect", src])).unwrap();
    assert_eq!(v["metadata"]["cmd"][0], "/hello.sh");
    h.ok(&["pull", src]);
    assert!(h.ok(&["fsck"]).contains("consistent"));
}
