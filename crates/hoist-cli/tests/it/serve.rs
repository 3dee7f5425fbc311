//! `hoist serve`: the real server process, real registries, a real HTTP
//! client. What each test proves is in its name.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::faults::FaultRegistry;
use crate::harness::image::{self, Builder};
use crate::harness::server::{e2fsck_ok, temp_files_under, Server};
use crate::harness::{registries, sample_image, unique_repo, Hoist};

const TOKEN: &str = "t0ken-Secret-42";

#[test]
fn serve_builds_once_per_digest_and_answers_hypemans_image_api() {
    let reg = &registries().plain;
    let repo = unique_repo("serve-api");
    let img = sample_image(801, 64);
    reg.push_image(&repo, "v1", &img);
    reg.push_image(&repo, "v2", &img);
    let (v1, v2) = (
        format!("{}/{repo}:v1", reg.host),
        format!("{}/{repo}:v2", reg.host),
    );
    let h = Hoist::new();
    // DATA/cache is the harness's --cache-dir: the CLI works on it.
    let data = h.home.path().to_path_buf();
    let s = Server::start(&h, &data, Some(TOKEN), &[]);

    // Auth: every route but /healthz wants the token; no token leaks.
    let anon = reqwest::blocking::Client::builder()
        .no_proxy()
        .build()
        .unwrap();
    let r = anon.get(format!("{}/images", s.url)).send().unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = anon
        .get(format!("{}/images", s.url))
        .bearer_auth("wrong")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = anon.get(format!("{}/healthz", s.url)).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = anon.get(format!("{}/metrics", s.url)).send().unwrap();
    assert_eq!(r.status().as_u16(), 401);

    let (st, a) = s.create(&v1);
    assert_eq!(st, 202, "{a}");
    let (st, b) = s.create(&v2);
    assert_eq!(st, 202, "{b}");
    assert_eq!(a["digest"], b["digest"], "two tags, one digest");
    assert_eq!(a["name"], v1);
    let digest = a["digest"].as_str().unwrap().to_string();
    assert_eq!(digest, img.manifest.digest());
    // GET by tag works in every status, pending included.
    let (st, g) = s.image(&v1);
    assert_eq!(st, 200, "{g}");

    let recs = s.wait_ready(&[&v1, &v2], Duration::from_secs(60));
    let r = &recs[0];
    assert_eq!(r["status"], "ready");
    assert_eq!(r["queue_position"], json!(null));
    assert_eq!(r["error"], json!(null));
    assert_eq!(r["format"], "ext4");
    assert_eq!(r["platform"], "linux/amd64");
    assert!(r["created_at"].as_str().unwrap().ends_with('Z'));
    let disk = std::path::PathBuf::from(r["disk_path"].as_str().unwrap());
    assert!(disk.starts_with(data.join("images")), "{disk:?}");
    assert_eq!(
        r["size_bytes"].as_u64().unwrap(),
        std::fs::metadata(&disk).unwrap().len()
    );
    assert!(e2fsck_ok(&disk), "the disk must pass e2fsck -fn");
    // Tags are symlinks to the digest's directory, made when ready.
    let tag_dir = data.join("images").join(format!("{}/{repo}", reg.host));
    for t in ["v1", "v2"] {
        let l = std::fs::read_link(tag_dir.join(t)).unwrap();
        assert_eq!(l.to_str().unwrap(), &digest["sha256:".len()..]);
    }

    // One build for the digest, one pull.
    assert_eq!(
        s.metric("hoist_images_build_duration_seconds_count{status=\"ready\"}"),
        Some(1.0)
    );
    assert_eq!(
        s.metric("hoist_images_pulls_total{status=\"ok\"}"),
        Some(1.0)
    );
    assert_eq!(s.metric("hoist_images_total{status=\"ready\"}"), Some(1.0));
    assert_eq!(s.metric("hoist_images_build_queue_length"), Some(0.0));
    assert!(s.metric("hoist_images_bytes").unwrap() > 0.0);
    assert!(s.metric("hoist_cache_bytes").unwrap() > 0.0);

    // By digest, raw slashes, list and filter.
    let by_digest = format!("{}/{repo}@{digest}", reg.host);
    let (st, d) = s.image(&by_digest);
    assert_eq!((st, d["status"].clone()), (200, json!("ready")), "{d}");
    let (st, raw) = s.get(&format!("/images/{v1}"));
    assert_eq!((st, raw["digest"].clone()), (200, json!(digest)));
    let (_, all) = s.get("/images");
    assert_eq!(all.as_array().unwrap().len(), 2);
    let (_, none) = s.get("/images?status=failed");
    assert_eq!(none, json!([]));
    let (st, e) = s.get("/images?status=bogus");
    assert_eq!((st, e["code"].clone()), (400, json!("invalid_status")));

    // Errors: codes as documented, never a 500.
    let (st, e) = s.create("NOT A NAME");
    assert_eq!((st, e["code"].clone()), (400, json!("invalid_name")));
    let (st, e) = s.create(&format!("{}/{repo}:missing", reg.host));
    assert_eq!((st, e["code"].clone()), (404, json!("not_found")));
    let (st, e) = s.post("/images", json!({"nom": "x"}));
    assert_eq!((st, e["code"].clone()), (400, json!("invalid_request")));
    let (st, e) = s.image(&format!("{}/{repo}:never", reg.host));
    assert_eq!((st, e["code"].clone()), (404, json!("not_found")));

    // The server's cache is the CLI's.
    let out = h.ok(&["images"]);
    assert!(out.contains(&digest[..19]), "{out}");

    // DELETE: a tagged digest is in use; tags go one by one; the image
    // goes with its last name, files and cache entry included.
    let (st, e) = s.delete(&by_digest);
    assert_eq!((st, e["code"].clone()), (409, json!("in_use")));
    assert_eq!(s.delete(&v1).0, 204);
    assert_eq!(s.image(&v1).0, 404);
    assert!(!tag_dir.join("v1").exists());
    assert_eq!(s.image(&v2).1["status"], "ready");
    assert!(disk.exists());
    assert_eq!(s.delete(&v2).0, 204);
    assert!(!disk.exists(), "the last name takes the disk");
    assert_eq!(s.delete(&v2).0, 404);
    let (st, gc) = s.post("/gc", json!({}));
    assert_eq!(st, 200, "{gc}");
    assert_eq!(gc["cache"]["blobs"].as_array().unwrap().len(), 5, "{gc}");
    let out = h.ok(&["fsck"]);
    assert!(out.contains("consistent"), "{out}");

    // A digest-only image is deleted by digest (the Go original: 500).
    let (st, _) = s.create(&by_digest);
    assert_eq!(st, 202);
    s.wait_ready(&[&by_digest], Duration::from_secs(60));
    assert_eq!(s.delete(&by_digest).0, 204);
    assert_eq!(s.image(&by_digest).0, 404);

    // The served routes and the OpenAPI document agree on what exists.
    let (st, doc) = s.get("/openapi.json");
    assert_eq!(st, 200);
    for (m, p) in hoist_serve::ROUTES {
        assert!(doc["paths"][p][m].is_object(), "{m} {p} undocumented");
    }
    // Every documented operation is served: the real server answers it
    // with a route of its own (never the router's bare 404 or a 405).
    let http = reqwest::blocking::Client::builder()
        .no_proxy()
        .build()
        .unwrap();
    let mut ops = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in item.as_object().unwrap().keys() {
            let url = format!("{}{}", s.url, path.replace("{name}", "nope%2Fnope%3Av1"));
            let method: reqwest::Method = m.to_uppercase().parse().unwrap();
            let r = http
                .request(method, &url)
                .bearer_auth(TOKEN)
                .body("{\"name\":\"NOT A NAME\"}")
                .send()
                .unwrap();
            let st = r.status().as_u16();
            let body = r.text().unwrap();
            assert_ne!(st, 405, "{m} {path}");
            assert!(
                st != 404 || body.contains("not_found"),
                "{m} {path}: {st} {body}"
            );
            ops += 1;
        }
    }
    assert_eq!(ops, hoist_serve::ROUTES.len());
    let r = http
        .get(format!("{}/undocumented", s.url))
        .bearer_auth(TOKEN)
        .send()
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        404,
        "an undocumented route is not served"
    );
    let log = s.log.lock().unwrap().clone();
    assert!(!log.contains(TOKEN), "the token must not be logged");
}

#[test]
fn serve_requeues_a_failed_image_and_refuses_images_over_the_limits() {
    let reg = &registries().plain;
    let repo = unique_repo("serve-limits");
    reg.push_image(&repo, "v1", &sample_image(802, 16));
    let name = format!("{}/{repo}:v1", reg.host);
    let h = Hoist::new();
    // DATA/cache is the harness's --cache-dir: the CLI works on it.
    let data = h.home.path().to_path_buf();
    {
        // Three entries allowed; the image has more.
        let s = Server::start(&h, &data, None, &["--max-entries", "2"]);
        assert_eq!(s.create(&name).0, 202);
        let end = Instant::now() + Duration::from_secs(60);
        let rec = loop {
            let (_, r) = s.image(&name);
            if r["status"] == "failed" {
                break r;
            }
            assert!(Instant::now() < end, "{r}");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(rec["error_code"], "too_large", "{rec}");
        assert!(rec["error"].as_str().unwrap().contains("entries"), "{rec}");
        let disk = rec["disk_path"].as_str().unwrap();
        assert!(!std::path::Path::new(disk).exists());
        assert!(temp_files_under(&data.join("images")).is_empty());
        assert_eq!(
            s.metric("hoist_images_build_duration_seconds_count{status=\"failed\"}"),
            Some(1.0)
        );
        // Still failed until asked again (no retry loop behind the user's back).
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(s.image(&name).1["status"], "failed");
        s.kill9();
    }
    // Restarted with the default limits: a failed image is not recovered
    // by itself, and a new POST queues it again (the Go original: never).
    let s = Server::start(&h, &data, None, &[]);
    assert_eq!(s.image(&name).1["status"], "failed");
    let (st, r) = s.create(&name);
    assert_eq!(st, 202);
    assert_ne!(r["status"], "failed", "{r}");
    let recs = s.wait_ready(&[&name], Duration::from_secs(60));
    assert_eq!(recs[0]["error"], json!(null));
}

/// A slow image: a 3 MiB layer served slowly (the pull takes a while) and a
/// layer of 25,000 small files (the export takes a while).
pub(crate) fn slow_many_files(f: &FaultRegistry, seed: u64) -> image::Image {
    let names: Vec<String> = (0..25_000).map(|i| format!("d{}/f{i}", i % 100)).collect();
    let files: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b"x\n"[..])).collect();
    let img = Builder::new()
        .layer(&[("big.bin", &image::noise(seed, 3 << 20))])
        .layer(&files)
        .build();
    f.add_image("v1", &img);
    img
}

#[test]
fn serve_finishes_every_unfinished_build_after_kill_9_at_any_point() {
    let f = FaultRegistry::start();
    slow_many_files(&f, 803);
    let name = format!("{}/crash/serve:v1", f.host());
    let h = Hoist::new();
    // DATA/cache is the harness's --cache-dir: the CLI works on it.
    let data = h.home.path().to_path_buf();
    let mut seen = Vec::new();
    // Each round kills the server as soon as the build reaches the stage
    // it aims at (polled every 10 ms: fixed sleeps missed the export on a
    // fast, idle machine).
    for (round, aim) in [
        "pulling",
        "converting",
        "pulling",
        "converting",
        "pulling",
        "converting",
    ]
    .into_iter()
    .enumerate()
    {
        // Every round starts from scratch in the registry's eyes (a fresh
        // cache would pull again), so each kill lands somewhere new.
        f.set(|p| p.chunk_delay = Duration::from_millis(12));
        let s = Server::start(&h, &data, None, &[]);
        if round == 0 {
            assert_eq!(s.create(&name).0, 202);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let r = loop {
            let (_, r) = s.image(&name);
            if r["status"] == aim || r["status"] == "ready" || std::time::Instant::now() > deadline
            {
                break r;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        seen.push(r["status"].as_str().unwrap_or("?").to_string());
        s.kill9();
        if r["status"] == "ready" {
            // Finished before the kill: start the race again from nothing.
            let s = Server::start(&h, &data, None, &[]);
            assert_eq!(s.delete(&name).0, 204);
            s.post("/gc", json!({}));
            assert_eq!(s.create(&name).0, 202);
            s.kill9();
        }
    }
    f.set(|p| p.chunk_delay = Duration::ZERO);
    let s = Server::start(&h, &data, None, &[]);
    let recs = s.wait_ready(&[&name], Duration::from_secs(120));
    let disk = std::path::PathBuf::from(recs[0]["disk_path"].as_str().unwrap());
    assert!(e2fsck_ok(&disk));
    assert!(
        seen.iter().any(|s| s == "pulling"),
        "no kill landed mid-pull: {seen:?}"
    );
    assert!(
        seen.iter().any(|s| s == "converting"),
        "no kill landed mid-export: {seen:?}"
    );
    let left = temp_files_under(&data.join("images"));
    assert!(left.is_empty(), "killed builds' temp files: {left:?}");
    let out = h.ok(&["fsck"]);
    assert!(out.contains("consistent"), "{out}");
    eprintln!("statuses at the kills: {seen:?}");
}

#[test]
fn sigterm_stops_the_server_within_seconds_and_a_restart_finishes_the_build() {
    let f = FaultRegistry::start();
    slow_many_files(&f, 804);
    f.set(|p| p.chunk_delay = Duration::from_millis(30));
    let name = format!("{}/term/serve:v1", f.host());
    let h = Hoist::new();
    // DATA/cache is the harness's --cache-dir: the CLI works on it.
    let data = h.home.path().to_path_buf();
    let s = Server::start(&h, &data, None, &[]);
    assert_eq!(s.create(&name).0, 202);
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(s.image(&name).1["status"], "pulling");
    let (took, status) = s.terminate();
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(status.success(), "{status:?}");
    f.set(|p| p.chunk_delay = Duration::ZERO);
    let s = Server::start(&h, &data, None, &[]);
    s.wait_ready(&[&name], Duration::from_secs(120));
}

#[test]
fn gc_racing_concurrent_builds_never_takes_a_blob_an_image_needs() {
    let reg = &registries().plain;
    let repo = unique_repo("serve-gc");
    // Four images sharing a base layer, each with its own top layer.
    let base = image::noise(900, 256 << 10);
    let names: Vec<String> = (0..4)
        .map(|i| {
            let top = image::noise(901 + i, 512 << 10);
            let img = Builder::new()
                .layer(&[("base.bin", &base)])
                .layer(&[("top.bin", &top)])
                .build();
            reg.push_image(&repo, &format!("v{i}"), &img);
            format!("{}/{repo}:v{i}", reg.host)
        })
        .collect();
    let h = Hoist::new();
    // DATA/cache is the harness's --cache-dir: the CLI works on it.
    let data = h.home.path().to_path_buf();
    let s = Server::start(&h, &data, None, &["--max-concurrent-builds", "2"]);
    for n in &names {
        assert_eq!(s.create(n).0, 202);
    }
    // GC from the server and from the CLI, over and over, while building.
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let end = Instant::now() + Duration::from_secs(120);
    let mut gcs = 0;
    loop {
        let recs: Vec<serde_json::Value> = refs.iter().map(|n| s.image(n).1).collect();
        for r in &recs {
            assert_ne!(r["status"], "failed", "a build failed while GC ran: {r}");
        }
        if recs.iter().all(|r| r["status"] == "ready") {
            break;
        }
        assert!(Instant::now() < end, "not ready: {recs:?}");
        assert_eq!(s.post("/gc", json!({})).0, 200);
        h.ok(&["gc"]);
        gcs += 1;
    }
    assert!(gcs > 0);
    let recs = s.wait_ready(&refs, Duration::from_secs(10));
    s.post("/gc", json!({}));
    let out = h.ok(&["fsck"]);
    assert!(out.contains("consistent"), "{out}");
    for r in &recs {
        assert!(e2fsck_ok(std::path::Path::new(
            r["disk_path"].as_str().unwrap()
        )));
    }
    // Deleting one image frees its own layer, not the shared base.
    assert_eq!(s.delete(&names[0]).0, 204);
    let (_, gc) = s.post("/gc", json!({}));
    assert_eq!(gc["cache"]["blobs"].as_array().unwrap().len(), 3, "{gc}");
    let out = h.ok(&["fsck"]);
    assert!(out.contains("consistent"), "{out}");
    let out = h.ok(&["--json", "images"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 3);
}

#[test]
fn serve_refuses_registries_outside_the_allowed_list_and_link_local_ones() {
    let reg = &registries().plain;
    let h = Hoist::new();
    // DATA/cache is the harness's --cache-dir: the CLI works on it.
    let data = h.home.path().to_path_buf();
    let s = Server::start(
        &h,
        &data,
        None,
        &["--allowed-registries", "registry.example.com", "*.corp"],
    );
    let (st, e) = s.create(&format!("{}/x/y:z", reg.host));
    assert_eq!(
        (st, e["code"].clone()),
        (403, json!("registry_not_allowed"))
    );
    assert!(
        reg.requests("x/y", "manifests").is_empty(),
        "nothing fetched"
    );
    drop(s);
    let s = Server::start(&h, &data, None, &[]);
    for n in ["169.254.169.254/latest/meta:data", "[fe80::1]:5000/x/y:z"] {
        let (st, e) = s.create(n);
        assert_eq!(
            (st, e["code"].clone()),
            (403, json!("registry_not_allowed")),
            "{n}"
        );
    }
    // A registry that is not there: 502, counted by why in /metrics.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let (st, e) = s.create(&format!("127.0.0.1:{port}/x/y:z"));
    assert_eq!(
        (st, e["code"].clone()),
        (502, json!("registry_unavailable"))
    );
    assert_eq!(
        s.metric("hoist_registry_unreachable_total{kind=\"connect\"}"),
        Some(1.0),
        "{}",
        s.text("/metrics")
    );
}

/// In a network namespace with only loopback, a server that failed to
/// refuse a link-local registry would try to connect and answer 502
/// (network unreachable); the guard answers 403 without a packet.
#[test]
fn link_local_registries_are_refused_without_a_packet_inside_a_loopback_only_netns() {
    let ok = std::process::Command::new("unshare")
        .args(["--net", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        crate::harness::skip("cannot make a network namespace here (unshare --net needs root)");
        return;
    }
    let h = Hoist::new();
    // DATA/cache is the harness's --cache-dir: the CLI works on it.
    let data = h.home.path().to_path_buf();
    let script = format!(
        "ip link set lo up && exec {} --cache-dir {} serve --listen 127.0.0.1:0 --data-dir {}",
        env!("CARGO_BIN_EXE_hoist"),
        h.cache.display(),
        data.display()
    );
    // The server runs in its own netns, so the test talks to it from
    // inside too: curl in the same namespace, through one shell.
    let body = |n: &str| format!("{{\"name\":\"{n}\"}}");
    // A name that resolves to a metadata address (an /etc/hosts of the
    // namespace's own), and a registry on loopback whose every answer is a
    // redirect to one (a tiny python server inside the namespace).
    let hosts = h.home.path().join("hosts");
    std::fs::write(
        &hosts,
        "127.0.0.1 localhost\n169.254.169.254 metadata.test\n",
    )
    .unwrap();
    let redirector = [
        "import http.server as h",
        "class R(h.BaseHTTPRequestHandler):",
        "    def do_GET(self):",
        "        self.send_response(307)",
        "        self.send_header('Location', 'http://169.254.169.254/latest/meta-data')",
        "        self.end_headers()",
        "    def log_message(self, *a):",
        "        pass",
        "h.HTTPServer(('127.0.0.1', 18555), R).serve_forever()",
    ]
    .join("\n");
    let py = h.home.path().join("redirect.py");
    std::fs::write(&py, redirector).unwrap();
    let probe = format!(
        "mount --bind {hosts} /etc/hosts; python3 {py} >/dev/null 2>&1 & rpid=$!; \
         ({script}) >/dev/null 2>{log} & pid=$!; \
         for i in $(seq 100); do grep -q 'listening on' {log} && break; sleep 0.1; done; \
         url=$(sed -n 's/.*listening on //p' {log} | head -1); \
         for n in '{a}' '{b}' '{c}' '{d}'; do curl -s -o /dev/null -w '%{{http_code}}\\n' -XPOST \"$url/images\" -d \"$n\"; done; \
         kill $pid $rpid; wait $pid",
        hosts = hosts.display(),
        py = py.display(),
        log = h.home.path().join("serve.log").display(),
        a = body("169.254.169.254/latest/meta:data"),
        b = body("metadata.test:5000/x/y:z"),
        c = body("127.0.0.1:18555/x/y:z"),
        d = body("10.255.255.1:5000/not/routed:v1"),
    );
    let out = std::process::Command::new("unshare")
        .args(["--net", "--mount", "sh", "-c", &probe])
        .output()
        .unwrap();
    let codes = String::from_utf8_lossy(&out.stdout).to_string();
    let lines: Vec<&str> = codes.lines().collect();
    assert_eq!(
        lines,
        vec!["403", "403", "403", "502"],
        "named, resolved, redirected to link-local: 403; an ordinary unreachable address: 502\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(h.home.path().join("serve.log")).unwrap_or_default()
    );
}

#[test]
fn serve_refuses_to_listen_beyond_loopback_without_a_token() {
    let h = Hoist::new();
    // DATA/cache is the harness's --cache-dir: the CLI works on it.
    let data = h.home.path().to_path_buf();
    let out = h
        .cmd()
        .env_remove("HOIST_TOKEN")
        .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("without a token"));
}

#[test]
fn deleting_a_building_image_cancels_its_build_and_removes_its_files() {
    let f = FaultRegistry::start();
    slow_many_files(&f, 805);
    f.set(|p| p.chunk_delay = Duration::from_millis(40));
    let slow = format!("{}/cancel/serve:v1", f.host());
    let reg = &registries().plain;
    let repo = unique_repo("serve-queue");
    reg.push_image(&repo, "v1", &sample_image(806, 16));
    let next = format!("{}/{repo}:v1", reg.host);
    let h = Hoist::new();
    let data = h.home.path().to_path_buf();
    let s = Server::start(&h, &data, None, &[]);
    assert_eq!(s.create(&slow).0, 202);
    let end = Instant::now() + Duration::from_secs(30);
    while s.image(&slow).1["status"] != "pulling" {
        assert!(Instant::now() < end);
        std::thread::sleep(Duration::from_millis(20));
    }
    // One build at a time: the next image waits, first in line.
    let (_, r) = s.create(&next);
    assert_eq!(r["status"], "pending");
    assert_eq!(r["queue_position"], 1, "{r}");
    // Progress: bytes held of the layers' total, while pulling.
    let p = loop {
        let p = s.image(&slow).1["progress"].clone();
        if p["bytes_done"].as_u64().unwrap_or(0) > 0 {
            break p;
        }
        assert!(Instant::now() < end, "no progress: {p}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        p["bytes_total"].as_u64().unwrap() >= p["bytes_done"].as_u64().unwrap(),
        "{p}"
    );
    assert_eq!(p["layers_total"], 2, "{p}");

    let t = Instant::now();
    assert_eq!(s.delete(&slow).0, 204);
    assert_eq!(s.image(&slow).0, 404);
    s.wait_ready(&[&next], Duration::from_secs(60));
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "the cancelled build held the queue for {:?}",
        t.elapsed()
    );
    assert_eq!(
        s.metric("hoist_images_build_duration_seconds_count{status=\"cancelled\"}"),
        Some(1.0)
    );
    let dir = data
        .join("images")
        .join(format!("{}/cancel/serve", f.host()));
    let left: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn registry_refusals_keep_their_meaning_429_with_retry_after_and_403_denied() {
    let f = FaultRegistry::start();
    f.add_image("v1", &sample_image(807, 4));
    f.set(|p| {
        p.rate_limit = 1;
        p.retry_after_secs = 42;
    });
    let h = Hoist::new();
    let data = h.home.path().to_path_buf();
    let s = Server::start(&h, &data, None, &[]);
    let r = reqwest::blocking::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(format!("{}/images", s.url))
        .body(json!({"name": format!("{}/limited/x:v1", f.host())}).to_string())
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    assert_eq!(r.headers()["retry-after"], "42");
    let v: serde_json::Value = serde_json::from_str(&r.text().unwrap()).unwrap();
    assert_eq!(v["code"], "rate_limited");
    // The token registry refuses anonymous pulls: 403, not a 500.
    let regs = registries();
    let repo = unique_repo("serve-denied");
    regs.token.push_image(&repo, "v1", &sample_image(808, 4));
    let (st, e) = s.create(&format!("{}/{repo}:v1", regs.token.host));
    assert_eq!(
        (st, e["code"].clone()),
        (403, json!("registry_denied")),
        "{e}"
    );
}

/// Two builds at once of two images that share a slow base layer: the
/// shared blob is downloaded once (single flight across operations of the
/// one client the server holds).
#[test]
fn two_concurrent_builds_sharing_a_layer_download_it_once() {
    let f = FaultRegistry::start();
    let (a, b) = crate::harness::shared_base_pair(810, 2 << 10);
    f.add_image("a", &a);
    f.add_image("b", &b);
    f.set(|p| p.chunk_delay = Duration::from_millis(15));
    let h = Hoist::new();
    let data = h.home.path().to_path_buf();
    let s = Server::start(&h, &data, None, &["--max-concurrent-builds", "2"]);
    let (na, nb) = (
        format!("{}/shared/x:a", f.host()),
        format!("{}/shared/x:b", f.host()),
    );
    assert_eq!(s.create(&na).0, 202);
    assert_eq!(s.create(&nb).0, 202);
    s.wait_ready(&[&na, &nb], Duration::from_secs(120));
    let shared = a.layers[0].digest();
    let gets: Vec<String> = f
        .requests("blobs")
        .into_iter()
        .filter(|l| l.contains(&shared))
        .collect();
    assert_eq!(gets.len(), 1, "the shared layer was fetched {gets:?}");
}

#[test]
fn serve_builds_erofs_disks_natively() {
    let reg = &registries().plain;
    let repo = unique_repo("serve-erofs");
    reg.push_image(&repo, "v1", &sample_image(812, 64));
    let name = format!("{}/{repo}:v1", reg.host);
    let h = Hoist::new();
    let data = h.home.path().to_path_buf();
    let s = Server::start(&h, &data, None, &["--format", "erofs"]);
    assert_eq!(s.create(&name).0, 202);
    let recs = s.wait_ready(&[&name], Duration::from_secs(60));
    assert_eq!(recs[0]["format"], "erofs");
    let disk = recs[0]["disk_path"].as_str().unwrap();
    assert!(disk.ends_with("rootfs.erofs"), "{disk}");
    let o = std::process::Command::new("fsck.erofs")
        .arg(disk)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = std::process::Command::new("dump.erofs")
        .arg("--path=/etc/hello")
        .arg(disk)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("Size: 6"),
        "{o:?}"
    );
}
