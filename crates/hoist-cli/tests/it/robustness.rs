//! A killed process, concurrent processes, and proxies.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::harness::faults::FaultRegistry;
use crate::harness::http::{serve, Request};
use crate::harness::image::{self, Builder};
use crate::harness::{hoist_leftovers, registries, sample_image, unique_repo, Hoist};

#[test]
fn sigkill_at_any_point_leaves_a_cache_a_later_pull_completes() {
    let f = FaultRegistry::start();
    let img = sample_image(60, 3 << 10);
    f.add_image("v1", &img);
    // Slow enough that the kills land mid-blob, mid-commit and around the
    // index update.
    f.set(|p| p.chunk_delay = Duration::from_millis(4));
    let r = format!("{}/crash/img:v1", f.host());
    let h = Hoist::new();
    let mut killed_mid_blob = 0;
    for ms in [0u64, 30, 80, 150, 250, 400, 600, 900] {
        let mut child = h.cmd().args(["-q", "pull", &r]).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(ms));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        h.assert_blobs_verified();
        if let Ok(index) = std::fs::read(h.layout().join("index.json")) {
            serde_json::from_slice::<serde_json::Value>(&index)
                .expect("index.json is always whole");
        }
        let fsck = h.run(&["--json", "fsck"]);
        let v: serde_json::Value = serde_json::from_slice(&fsck.stdout).unwrap();
        assert!(
            v["corrupt_blobs"].as_array().unwrap().is_empty(),
            "after kill at {ms} ms: {v}"
        );
        assert!(
            v["incomplete_images"].as_array().unwrap().is_empty(),
            "after kill at {ms} ms: {v}"
        );
        killed_mid_blob += v["stale_temp_files"].as_array().unwrap().len();
    }
    assert!(
        killed_mid_blob > 0,
        "no kill landed during a blob transfer; slow the server down"
    );
    f.set(|p| p.chunk_delay = Duration::ZERO);
    assert_eq!(h.ok(&["pull", &r]).trim(), img.manifest.digest());
    assert_eq!(h.assert_blobs_verified(), 5);
    let out = h.ok(&["fsck", "--repair"]);
    assert!(
        out.contains("consistent") || out.contains("repaired"),
        "{out}"
    );
    assert_eq!(
        std::fs::read_dir(h.layout().join(".hoist/tmp"))
            .unwrap()
            .count(),
        0
    );
    assert!(h.ok(&["fsck"]).contains("cache is consistent"));
}

#[test]
fn concurrent_pulls_into_one_cache_keep_every_entry() {
    let reg = &registries().plain;
    let repo = unique_repo("concurrent");
    let base = image::noise(70, 1 << 20);
    let imgs: Vec<_> = (0..3)
        .map(|i| {
            let own = image::noise(71 + i, 512 << 10);
            Builder::new()
                .layer(&[("base", &base)])
                .layer(&[("own", &own)])
                .build()
        })
        .collect();
    for (i, img) in imgs.iter().enumerate() {
        reg.push_image(&repo, &format!("t{i}"), img);
    }
    let h = Hoist::new();
    let children: Vec<_> = (0..6)
        .map(|n| {
            h.cmd()
                .args(["-q", "pull", &format!("{}/{repo}:t{}", reg.host, n % 3)])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (n, c) in children.into_iter().enumerate() {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "puller {n}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            imgs[n % 3].manifest.digest()
        );
    }
    let v: serde_json::Value = serde_json::from_str(&h.ok(&["--json", "images"])).unwrap();
    let list = v.as_array().unwrap();
    assert_eq!(list.len(), 3, "{v}");
    for (i, img) in imgs.iter().enumerate() {
        let e = list
            .iter()
            .find(|e| e["digest"] == img.manifest.digest())
            .expect("entry kept");
        assert_eq!(e["names"][0], format!("{}/{repo}:t{i}", reg.host));
    }
    assert!(h.ok(&["fsck"]).contains("cache is consistent"));
    assert_eq!(h.assert_blobs_verified(), 3 + 3 + 3 + 1);
}

/// A forwarding HTTP proxy that records the request lines it sees.
fn proxy() -> (u16, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let port = serve(Arc::new(move |req: &Request, client: &mut TcpStream| {
        s2.lock()
            .unwrap()
            .push(format!("{} {}", req.method, req.path));
        let url = req.path.strip_prefix("http://").unwrap_or(&req.path);
        let (host, path) = url.split_at(url.find('/').unwrap_or(url.len()));
        let mut up = TcpStream::connect(host).unwrap();
        let mut head = format!("{} {path}", req.method);
        if !req.query.is_empty() {
            head.push_str(&format!("?{}", req.query));
        }
        head.push_str(&format!(
            " HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
        ));
        for (k, v) in &req.headers {
            if k != "host" && k != "connection" && k != "proxy-connection" {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
        }
        head.push_str("\r\n");
        up.write_all(head.as_bytes()).unwrap();
        let mut resp = Vec::new();
        let _ = up.read_to_end(&mut resp);
        let _ = client.write_all(&resp);
        let _ = client.shutdown(std::net::Shutdown::Write);
    }));
    (port, seen)
}

#[test]
fn http_proxy_and_no_proxy_are_honoured() {
    let reg = &registries().plain;
    let repo = unique_repo("proxy");
    let img = sample_image(80, 16);
    reg.push_image(&repo, "v1", &img);
    let (port, seen) = proxy();
    let r = format!("{}/{repo}:v1", reg.host);
    let h = Hoist::new();
    h.ok_env(
        &[
            ("HTTP_PROXY", format!("http://127.0.0.1:{port}").as_ref()),
            ("NO_PROXY", "".as_ref()),
        ],
        &["pull", &r],
    );
    let n = seen.lock().unwrap().len();
    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(&format!("http://{}/v2/{repo}/manifests/v1", reg.host))),
        "{:?}",
        seen.lock().unwrap()
    );
    let h = Hoist::new();
    h.ok_env(
        &[
            ("HTTP_PROXY", format!("http://127.0.0.1:{port}").as_ref()),
            ("NO_PROXY", "127.0.0.1".as_ref()),
        ],
        &["pull", &r],
    );
    assert_eq!(
        seen.lock().unwrap().len(),
        n,
        "NO_PROXY host went through the proxy"
    );
}

/// `hoist ARGS` against a registry slowed enough that the kills land
/// mid-pull and later, killed at a series of moments; `after` looks at
/// what each kill left.
fn kill_at_moments(h: &Hoist, args: &[&std::ffi::OsStr], mut after: impl FnMut(u64)) {
    for ms in [0u64, 40, 120, 250, 500, 800] {
        let mut child = h.cmd().args(args).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(ms));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        after(ms);
    }
}

/// A slowed registry holding one small image; returns its reference.
fn slow_image(f: &FaultRegistry, seed: u64, repo: &str) -> String {
    f.add_image("v1", &sample_image(seed, 2 << 10));
    f.set(|p| p.chunk_delay = Duration::from_millis(3));
    format!("{}/crash/{repo}:v1", f.host())
}

/// An export killed at any point leaves no image, or a whole one: the
/// output appears only by rename, after the image is complete and synced.
/// The next export to the same file removes what the killed ones left.
#[test]
fn sigkill_during_export_never_leaves_a_partial_image() {
    let f = FaultRegistry::start();
    let r = slow_image(&f, 61, "export");
    let h = Hoist::new();
    let out = h.home.path().join("disk.ext4");
    let fsck_ok = |p: &std::path::Path| {
        std::process::Command::new("e2fsck")
            .arg("-fn")
            .arg(p)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(true) // e2fsck missing: the export tests say so
    };
    let args = [
        "-q".as_ref(),
        "export".as_ref(),
        r.as_ref(),
        "-o".as_ref(),
        out.as_os_str(),
    ];
    kill_at_moments(&h, &args, |ms| {
        if out.exists() {
            assert!(
                fsck_ok(&out),
                "after a kill at {ms} ms the image is not whole"
            );
            std::fs::remove_file(&out).unwrap();
        }
    });
    f.set(|p| p.chunk_delay = Duration::ZERO);
    h.ok(&["-q", "export", &r, "-o", out.to_str().unwrap()]);
    assert!(fsck_ok(&out));
    let left = hoist_leftovers(h.home.path());
    assert!(left.is_empty(), "{left:?}");
}

/// An unpack killed at any point leaves no DIR (it appears only by rename
/// once complete), and the next unpack into it removes the killed ones'
/// temp trees.
#[test]
fn sigkill_during_unpack_leaves_no_dir_and_the_next_unpack_cleans_up() {
    let f = FaultRegistry::start();
    let r = slow_image(&f, 62, "unpack");
    let h = Hoist::new();
    let dir = h.home.path().join("rootfs");
    let args = [
        "-q".as_ref(),
        "unpack".as_ref(),
        r.as_ref(),
        dir.as_os_str(),
    ];
    kill_at_moments(&h, &args, |_| {
        if dir.exists() {
            std::fs::remove_dir_all(&dir).unwrap(); // completed before the kill
        }
    });
    f.set(|p| p.chunk_delay = Duration::ZERO);
    h.ok(&["-q", "unpack", &r, dir.to_str().unwrap()]);
    let left = hoist_leftovers(h.home.path());
    assert!(left.is_empty(), "{left:?}");
}

/// A layer that fails to apply stops the pull of the layers after it: the
/// slow second layer never reaches the cache (before, the pull thread went
/// on downloading every remaining layer after the unpack had failed).
#[test]
fn a_layer_that_fails_to_apply_stops_the_remaining_downloads() {
    let f = FaultRegistry::start();
    // `.wh..` is an invalid whiteout: applying layer 1 fails.
    let bad = crate::harness::image::Builder::new()
        .layer(&[("etc/.wh..", b"")])
        .layer(&[("big.bin", &crate::harness::image::noise(811, 4 << 20))])
        .build();
    f.add_image("v1", &bad);
    f.set(|p| p.chunk_delay = Duration::from_millis(40));
    let h = Hoist::new();
    let r = format!("{}/pipeline/bad:v1", f.host());
    let dir = h.home.path().join("root");
    let err = h.fails(&["-q", "unpack", &r, dir.to_str().unwrap()], 1);
    assert!(err.contains(".wh."), "{err}");
    let big = bad.layers[1].digest();
    let blob = h
        .layout()
        .join("blobs/sha256")
        .join(&big["sha256:".len()..]);
    assert!(
        !blob.exists(),
        "the second layer was downloaded after the failure"
    );
    assert!(!dir.exists());
}

/// A layer whose one entry has a path of `len` bytes (GNU long name).
fn long_path_image(path: &str) -> image::Image {
    let mut t = tar::Builder::new(Vec::new());
    let mut hd = tar::Header::new_gnu();
    hd.set_size(2);
    hd.set_mode(0o644);
    hd.set_entry_type(tar::EntryType::Regular);
    t.append_data(&mut hd, path, &b"x\n"[..]).unwrap();
    let tar = t.into_inner().unwrap();
    let diff_id = image::sha256(&tar);
    let layer = image::Blob {
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
        bytes: image::gzip(&tar),
    };
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [diff_id]}
    });
    image::assemble(vec![layer], &config, false)
}

/// Hostile paths fail fast, with one clear error from the unpacker and the
/// ext4 writer alike (before, the in-memory merge was quadratic in path
/// depth: 4.3 s for one 16 KB path, hours for 1 MB), and a legal deep path
/// (2,000 components, just under PATH_MAX) goes through.
#[test]
fn a_one_megabyte_path_and_a_hundred_thousand_components_fail_fast() {
    let reg = &registries().plain;
    let repo = unique_repo("deep");
    let huge = "n".repeat(1 << 20);
    let many = "a/".repeat(100_000) + "f";
    let legal = "d/".repeat(2_000) + "f";
    reg.push_image(&repo, "huge", &long_path_image(&huge));
    reg.push_image(&repo, "many", &long_path_image(&many));
    reg.push_image(&repo, "legal", &long_path_image(&legal));
    let h = Hoist::new();
    for (tag, want) in [
        ("huge", "longer than PATH_MAX"),
        ("many", "longer than PATH_MAX"),
    ] {
        let r = format!("{}/{repo}:{tag}", reg.host);
        let started = std::time::Instant::now();
        let dir = h.home.path().join(format!("root-{tag}"));
        let e1 = h.fails(&["-q", "unpack", &r, dir.to_str().unwrap()], 1);
        let out = h.home.path().join(format!("{tag}.ext4"));
        let e2 = h.fails(&["-q", "export", &r, "-o", out.to_str().unwrap()], 1);
        let took = started.elapsed();
        for e in [&e1, &e2] {
            assert!(e.contains(want), "{tag}: {e}");
        }
        assert!(!dir.exists() && !out.exists());
        assert!(
            took < Duration::from_secs(20),
            "{tag}: unpack + export took {took:?}"
        );
    }
    let r = format!("{}/{repo}:legal", reg.host);
    let dir = h.home.path().join("root-legal");
    h.ok(&["-q", "unpack", &r, dir.to_str().unwrap()]);
    assert!(dir.join(&legal).exists());
    let out = h.home.path().join("legal.ext4");
    h.ok(&["-q", "export", &r, "-o", out.to_str().unwrap()]);
    assert!(hoist_leftovers(h.home.path()).is_empty());
}
