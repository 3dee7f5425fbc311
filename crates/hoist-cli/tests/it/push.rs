//! The registry door of `hoist serve` (`/v2`), driven by real clients
//! (skopeo, buildah, a Rust client written here for every upload form)
//! against the real server process. Disks are cpio archives: written from
//! the merged tree alone, so two images with the same tree give the same
//! bytes whatever their manifests, media types or compression.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::image::{self, Blob, Builder};
use crate::harness::server::{temp_files_under, Server};
use crate::harness::{registries, sample_image, unique_repo, Hoist};

pub(crate) const TOKEN: &str = "push-T0ken";
/// The name the test servers go by as registries (`--registry-name`): the
/// same across restarts, whatever port they listen on.
pub(crate) const NAME: &str = "hoist.test:5999";

pub(crate) fn host_of(s: &Server) -> String {
    s.url.trim_start_matches("http://").to_string()
}

pub(crate) fn skopeo(args: &[&str]) -> String {
    let out = Command::new("skopeo")
        .args(["--insecure-policy"])
        .args(args)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "skopeo {args:?}:\n{text}");
    text
}

/// `skopeo copy` from the plain test registry into hoist, with the token.
pub(crate) fn push(from: &str, to: &str, extra: &[&str]) -> String {
    let creds = format!("ci:{TOKEN}");
    let mut args = vec![
        "copy",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        "--dest-creds",
        &creds,
    ];
    args.extend_from_slice(extra);
    let (src, dst) = (format!("docker://{from}"), format!("docker://{to}"));
    args.push(&src);
    args.push(&dst);
    skopeo(&args)
}

pub(crate) fn wait_done(s: &Server, name: &str, secs: u64) -> Value {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        let (st, r) = s.image(name);
        if st == 200 && (r["status"] == "ready" || r["status"] == "failed") {
            return r;
        }
        assert!(
            Instant::now() < end,
            "{name}: {st} {r}\n{}",
            s.log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn disk_sha(r: &Value) -> String {
    assert_eq!(r["status"], "ready", "{r}");
    image::sha256(&std::fs::read(r["disk_path"].as_str().unwrap()).unwrap())
}

/// The image built through `POST /images` from the registry: the
/// reference every pushed copy must equal.
fn reference_disk(s: &Server, name: &str) -> String {
    assert_eq!(s.create(name).0, 202);
    disk_sha(&wait_done(s, name, 120))
}

fn blobs_in(data: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(data.join("cache/oci-v1/blobs/sha256"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn start(h: &Hoist, data: &Path, extra: &[&str]) -> Server {
    let mut args = vec!["--format", "cpio", "--registry-name", NAME];
    args.extend_from_slice(extra);
    Server::start(h, data, Some(TOKEN), &args)
}

#[test]
fn skopeo_pushes_of_docker_oci_gzip_and_zstd_images_become_the_same_disk_as_a_pull() {
    let reg = &registries().plain;
    let repo = unique_repo("push-forms");
    let img = sample_image(1701, 256);
    reg.push_image(&repo, "v1", &img);
    let src = format!("{}/{repo}:v1", reg.host);
    let h = Hoist::new();
    let data = h.home.path().to_path_buf();
    let s = start(&h, &data, &[]);
    let host = host_of(&s);
    let mut digests = Vec::new();
    let creds = format!("x:{TOKEN}");
    let raw_of = |host: &str, tag: &str| {
        skopeo(&[
            "inspect",
            "--raw",
            "--tls-verify=false",
            "--creds",
            &creds,
            &format!("docker://{host}/team/app:{tag}"),
        ])
    };
    // zstd into a server of its own: where the gzip blobs already are,
    // skopeo reuses them instead of compressing again (as it should).
    let hz = Hoist::new();
    let sz = start(&hz, hz.home.path(), &[]);
    push(
        &src,
        &format!("{}/team/app:zstd", host_of(&sz)),
        &["--dest-compress", "--dest-compress-format", "zstd"],
    );
    let rz = wait_done(&sz, &format!("{NAME}/team/app:zstd"), 120);
    assert!(raw_of(&host_of(&sz), "zstd").contains("tar+zstd"));
    digests.push(rz["digest"].as_str().unwrap().to_string());
    let zstd_disk = disk_sha(&rz);
    for (tag, extra, layer_type) in [
        ("oci", vec![], "image.layer.v1.tar+gzip"),
        ("docker", vec!["--format", "v2s2"], "rootfs.diff.tar.gzip"),
    ] {
        push(&src, &format!("{host}/team/app:{tag}"), &extra);
        let name = format!("{NAME}/team/app:{tag}");
        let r = wait_done(&s, &name, 120);
        assert_eq!(disk_sha(&r), zstd_disk, "{tag}: {r}");
        assert_eq!(r["name"], name);
        let raw = raw_of(&host, tag);
        assert!(raw.contains(layer_type), "{tag}: {raw}");
        digests.push(r["digest"].as_str().unwrap().to_string());
    }
    // And the same tree as the image pulled through POST /images.
    assert_eq!(reference_disk(&s, &src), zstd_disk);
    digests.sort();
    digests.dedup();
    assert_eq!(digests.len(), 3, "three manifests, kept as pushed");
    // A pushed tag survives kill -9 and is still served and built.
    s.kill9();
    let s = start(&h, &data, &[]);
    let (st, r) = s.image(&format!("{NAME}/team/app:oci"));
    assert_eq!((st, r["status"].clone()), (200, json!("ready")), "{r}");
    // POST of a pushed name builds from what was pushed, with no request
    // (the name resolves nowhere); a name nothing was pushed as is 404.
    assert_eq!(s.delete(&format!("{NAME}/team/app:docker")).0, 204);
    let (st, r) = s.create(&format!("{NAME}/team/app:docker"));
    assert_eq!(st, 202, "{r}");
    assert_eq!(
        disk_sha(&wait_done(&s, &format!("{NAME}/team/app:docker"), 60)),
        zstd_disk
    );
    let (st, e) = s.create(&format!("{NAME}/team/app:never"));
    assert_eq!((st, e["code"].clone()), (404, json!("not_found")), "{e}");
}

#[test]
fn a_multi_platform_index_pushed_with_all_is_built_for_the_service_platform() {
    let reg = &registries().plain;
    let repo = unique_repo("push-index");
    let amd = Builder::new().layer(&[("etc/arch", b"amd64\n")]).build();
    let arm = Builder::new()
        .platform("linux", "arm64", Some("v8"))
        .layer(&[("etc/arch", b"arm64\n")])
        .build();
    reg.push_image(&repo, "amd", &amd);
    reg.push_image(&repo, "arm", &arm);
    let idx = image::index(
        &[
            (
                &amd.manifest,
                Some(json!({"os": "linux", "architecture": "amd64"})),
            ),
            (
                &arm.manifest,
                Some(json!({"os": "linux", "architecture": "arm64", "variant": "v8"})),
            ),
        ],
        false,
    );
    reg.push_manifest(&repo, "multi", &idx);
    let h = Hoist::new();
    let data = h.home.path().to_path_buf();
    let s = start(&h, &data, &[]);
    push(
        &format!("{}/{repo}:multi", reg.host),
        &format!("{}/team/multi:v1", host_of(&s)),
        &["--all"],
    );
    let r = wait_done(&s, &format!("{NAME}/team/multi:v1"), 60);
    assert_eq!(r["status"], "ready", "{r}");
    assert_eq!(
        r["digest"],
        amd.manifest.digest(),
        "the platform manifest's digest"
    );
    assert_eq!(r["platform"], "linux/amd64");
    // The arm64 child was stored (served by digest) but not built: every
    // record (one per name) is of the amd64 manifest.
    let (_, all) = s.get("/images");
    for r in all.as_array().unwrap() {
        assert_eq!(r["digest"], amd.manifest.digest(), "{all}");
    }
    let out = skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--creds",
        &format!("x:{TOKEN}"),
        "--raw",
        &format!(
            "docker://{}/team/multi@{}",
            host_of(&s),
            arm.manifest.digest()
        ),
    ]);
    assert!(out.contains("\"config\""), "{out}");
}

#[test]
fn buildah_pushes_an_image_it_pulled_and_it_becomes_the_same_disk() {
    if unsafe_not_root() {
        crate::harness::skip("buildah needs root here");
        return;
    }
    let reg = &registries().plain;
    let repo = unique_repo("push-buildah");
    reg.push_image(&repo, "v1", &sample_image(1702, 64));
    let src = format!("{}/{repo}:v1", reg.host);
    let h = Hoist::new();
    let data = h.home.path().to_path_buf();
    let s = start(&h, &data, &[]);
    let want = reference_disk(&s, &src);
    let w = h.home.path();
    let buildah = |args: &[&str]| {
        let out = Command::new("buildah")
            .arg("--storage-driver=vfs")
            .arg("--root")
            .arg(w.join("buildah-root"))
            .arg("--runroot")
            .arg(w.join("buildah-run"))
            .args(args)
            .env("NO_PROXY", "127.0.0.1,localhost")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "buildah {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    buildah(&[
        "pull",
        "--quiet",
        "--tls-verify=false",
        &format!("docker://{src}"),
    ]);
    buildah(&[
        "push",
        "--quiet",
        "--tls-verify=false",
        "--creds",
        &format!("ci:{TOKEN}"),
        &src,
        &format!("docker://{}/team/built:v1", host_of(&s)),
    ]);
    assert_eq!(
        disk_sha(&wait_done(&s, &format!("{NAME}/team/built:v1"), 120)),
        want
    );
}

fn unsafe_not_root() -> bool {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    unsafe { libc::geteuid() != 0 }
}

/// A client written here, for every upload form the spec allows.
struct V2 {
    base: String,
    http: reqwest::blocking::Client,
}

impl V2 {
    fn new(s: &Server) -> V2 {
        V2 {
            base: s.url.clone(),
            http: reqwest::blocking::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
        }
    }
    fn req(&self, m: &str, path: &str) -> reqwest::blocking::RequestBuilder {
        let url = if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}{path}", self.base)
        };
        self.http
            .request(m.parse().unwrap(), url)
            .basic_auth("ci", Some(TOKEN))
    }
    fn send(
        &self,
        rb: reqwest::blocking::RequestBuilder,
    ) -> (u16, reqwest::header::HeaderMap, String) {
        let r = rb.send().unwrap();
        let st = r.status().as_u16();
        let h = r.headers().clone();
        assert_eq!(
            h.get("docker-distribution-api-version")
                .map(|v| v.to_str().unwrap()),
            Some("registry/2.0"),
            "every answer says the API version"
        );
        (st, h, r.text().unwrap_or_default())
    }
    fn start(&self, repo: &str) -> String {
        let (st, h, body) = self.send(self.req("POST", &format!("/v2/{repo}/blobs/uploads/")));
        assert_eq!(st, 202, "{body}");
        assert_eq!(h["range"], "0-0");
        assert!(h.contains_key("docker-upload-uuid"));
        h["location"].to_str().unwrap().to_string()
    }
}

fn code_of(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    v["errors"][0]["code"].as_str().unwrap_or("").to_string()
}

#[test]
fn every_upload_form_of_the_spec_works_and_nothing_unverified_is_kept() {
    let h = Hoist::new();
    let data = h.home.path().to_path_buf();
    let s = start(
        &h,
        &data,
        &["--max-upload-bytes", "1M", "--max-manifest-size", "64K"],
    );
    let c = V2::new(&s);
    let a = image::noise(1703, 300 << 10);
    let b = image::noise(1704, 100 << 10);
    let da = image::sha256(&a);
    let db = image::sha256(&b);

    // Chunked PATCH with Content-Range, a chunk out of order (416), the
    // status, then PUT with the final chunk.
    let loc = c.start("up/a");
    let (st, h1, _) = c.send(
        c.req("PATCH", &loc)
            .header("Content-Range", format!("0-{}", 100_000 - 1))
            .header("Content-Type", "application/octet-stream")
            .body(a[..100_000].to_vec()),
    );
    assert_eq!(st, 202);
    assert_eq!(h1["range"], "0-99999");
    let loc = h1["location"].to_str().unwrap().to_string();
    let (st, h2, body) = c.send(
        c.req("PATCH", &loc)
            .header("Content-Range", "200000-299999")
            .body(a[200_000..300_000].to_vec()),
    );
    assert_eq!((st, code_of(&body).as_str()), (416, "BLOB_UPLOAD_INVALID"));
    assert_eq!(h2["range"], "0-99999", "416 says where the upload stands");
    let (st, h3, _) = c.send(c.req("GET", &loc));
    assert_eq!(st, 204);
    assert_eq!(h3["range"], "0-99999");
    let (st, _, _) = c.send(
        c.req("PATCH", &loc)
            .header("Content-Range", "100000-199999")
            .body(a[100_000..200_000].to_vec()),
    );
    assert_eq!(st, 202);
    let (st, h4, body) = c.send(
        c.req("PUT", &format!("{loc}?digest={da}"))
            .body(a[200_000..].to_vec()),
    );
    assert_eq!(st, 201, "{body}");
    assert_eq!(h4["docker-content-digest"], da.as_str());
    assert_eq!(h4["location"], format!("/v2/up/a/blobs/{da}").as_str());

    // One streaming PATCH without Content-Range (docker, skopeo), then an
    // empty PUT.
    let loc = c.start("up/b");
    let (st, h5, _) = c.send(c.req("PATCH", &loc).body(b.clone()));
    assert_eq!(st, 202);
    let loc = h5["location"].to_str().unwrap().to_string();
    let (st, _, body) = c.send(c.req("PUT", &format!("{loc}?digest={db}")));
    assert_eq!(st, 201, "{body}");

    // A monolithic POST ?digest= with the body (containerd's single PUT
    // after POST is the same session form as above).
    let m = image::noise(1705, 10 << 10);
    let dm = image::sha256(&m);
    let (st, _, body) = c.send(
        c.req("POST", &format!("/v2/up/c/blobs/uploads/?digest={dm}"))
            .body(m.clone()),
    );
    assert_eq!(st, 201, "{body}");

    // A mount from another repository: 201 when the blob is here, else an
    // ordinary session.
    let (st, h6, _) = c.send(c.req(
        "POST",
        &format!("/v2/up/d/blobs/uploads/?mount={da}&from=up/a"),
    ));
    assert_eq!(st, 201);
    assert_eq!(h6["docker-content-digest"], da.as_str());
    let missing = format!("sha256:{}", "9".repeat(64));
    let (st, hm, _) = c.send(c.req(
        "POST",
        &format!("/v2/up/d/blobs/uploads/?mount={missing}&from=up/a"),
    ));
    assert_eq!(st, 202);
    // An open session holds its temp file; cancelled, it goes.
    let (st, _, _) = c.send(c.req("DELETE", hm["location"].to_str().unwrap()));
    assert_eq!(st, 204);

    // Blobs read back under any name, with Range.
    let r = c
        .req("GET", &format!("/v2/elsewhere/blobs/{db}"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["docker-content-digest"], db.as_str());
    assert_eq!(image::sha256(&r.bytes().unwrap()), db);
    let r = c
        .req("GET", &format!("/v2/up/a/blobs/{da}"))
        .header("Range", "bytes=10-19")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 10-19/307200");
    assert_eq!(r.bytes().unwrap().to_vec(), a[10..20].to_vec());

    // GET and DELETE of a session.
    let loc = c.start("up/e");
    let (st, _, _) = c.send(c.req("DELETE", &loc));
    assert_eq!(st, 204);
    let (st, _, body) = c.send(c.req("GET", &loc));
    assert_eq!((st, code_of(&body).as_str()), (404, "BLOB_UPLOAD_UNKNOWN"));

    let before = blobs_in(&data);
    assert!(before.contains(&da[7..].to_string()) && before.contains(&db[7..].to_string()));

    // Refusals, each leaving nothing behind.
    let loc = c.start("up/f");
    let wrong = format!("sha256:{}", "0".repeat(64));
    let (st, _, body) = c.send(
        c.req("PUT", &format!("{loc}?digest={wrong}"))
            .body(m.clone()),
    );
    assert_eq!(
        (st, code_of(&body).as_str()),
        (400, "DIGEST_INVALID"),
        "{body}"
    );
    let (st, _, body) = c.send(
        c.req("POST", "/v2/up/f/blobs/uploads/?digest=md5:abc")
            .body(m.clone()),
    );
    assert_eq!(
        (st, code_of(&body).as_str()),
        (415, "UNSUPPORTED"),
        "{body}"
    );
    let big = image::noise(1706, 2 << 20);
    let loc = c.start("up/g");
    let (st, _, body) = c.send(c.req("PATCH", &loc).body(big.clone()));
    assert_eq!(
        (st, code_of(&body).as_str()),
        (413, "SIZE_INVALID"),
        "{body}"
    );
    let (st, _, body) = c.send(c.req("GET", &loc));
    assert_eq!(
        (st, code_of(&body).as_str()),
        (404, "BLOB_UPLOAD_UNKNOWN"),
        "the session is gone"
    );
    let cfg = Blob {
        media_type: "application/vnd.oci.image.config.v1+json".into(),
        bytes: b"{}".to_vec(),
    };
    let ghost = Blob {
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
        bytes: b"never pushed".to_vec(),
    };
    let img = image::assemble(
        vec![ghost],
        &json!({"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:00"]}}),
        false,
    );
    let (st, _, body) = c.send(
        c.req("PUT", "/v2/up/h/manifests/v1")
            .header("Content-Type", img.manifest.media_type.clone())
            .body(img.manifest.bytes.clone()),
    );
    assert_eq!(
        (st, code_of(&body).as_str()),
        (400, "MANIFEST_BLOB_UNKNOWN"),
        "{body}"
    );
    let _ = cfg;
    let (st, _, body) = c.send(
        c.req("PUT", &format!("/v2/up/h/manifests/{wrong}"))
            .header("Content-Type", img.manifest.media_type.clone())
            .body(img.manifest.bytes.clone()),
    );
    assert_eq!(
        (st, code_of(&body).as_str()),
        (400, "DIGEST_INVALID"),
        "{body}"
    );
    let huge = vec![b' '; 70 << 10];
    let (st, _, body) = c.send(
        c.req("PUT", "/v2/up/h/manifests/v2")
            .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
            .body(huge),
    );
    assert_eq!(
        (st, code_of(&body).as_str()),
        (413, "SIZE_INVALID"),
        "{body}"
    );
    assert_eq!(blobs_in(&data), before, "no refused byte joined the cache");
    assert!(temp_files_under(&data).is_empty());
    assert_eq!(
        std::fs::read_dir(data.join("cache/oci-v1/.hoist/tmp"))
            .unwrap()
            .count(),
        0,
        "no upload temp file is left"
    );
    let (_, idx) = s.get("/images");
    assert_eq!(idx, json!([]), "no record for a refused push");

    // Without credentials: 401 with a challenge clients follow.
    let r = reqwest::blocking::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("{}/v2/", s.url))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Basic realm=\"hoist\"");
    assert_eq!(
        r.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );
    assert_eq!(code_of(&r.text().unwrap()), "UNAUTHORIZED");
    let (st, _, _) = c.send(c.req("GET", "/v2/"));
    assert_eq!(st, 200);
    let r = c
        .http
        .get(format!("{}/v2/", s.url))
        .bearer_auth(TOKEN)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "the token as a bearer works too");
}

#[test]
fn a_second_push_uploads_nothing_and_hoist_serves_pushed_and_pulled_images_byte_for_byte() {
    let reg = &registries().plain;
    let repo = unique_repo("push-serve");
    let img = sample_image(1707, 128);
    reg.push_image(&repo, "v1", &img);
    let src = format!("{}/{repo}:v1", reg.host);
    let h = Hoist::new();
    let data = h.home.path().to_path_buf();
    let s = start(&h, &data, &[]);
    let host = host_of(&s);
    let name = format!("{host}/team/served:v1");
    push(&src, &name, &[]);
    wait_done(&s, &format!("{NAME}/team/served:v1"), 60);
    let uploaded = s.metric("hoist_registry_upload_bytes_total").unwrap();
    assert!(uploaded > 0.0);
    push(&src, &name, &[]);
    assert_eq!(
        s.metric("hoist_registry_upload_bytes_total"),
        Some(uploaded),
        "a re-push sends no blob byte"
    );
    // Pulled through POST /images, served under its repository path.
    assert_eq!(s.create(&src).0, 202);
    wait_done(&s, &src, 60);
    let creds = format!("x:{TOKEN}");
    for (from, dir) in [
        (name.clone(), "pushed"),
        (format!("{host}/{repo}:v1"), "pulled"),
    ] {
        let out = h.home.path().join(dir);
        skopeo(&[
            "copy",
            "--src-tls-verify=false",
            "--src-creds",
            &creds,
            &format!("docker://{from}"),
            &format!("oci:{}:x", out.display()),
        ]);
        for b in img.layers.iter().chain([&img.config, &img.manifest]) {
            let got = std::fs::read(out.join("blobs/sha256").join(&b.digest()[7..]))
                .unwrap_or_else(|e| panic!("{dir}: {} missing: {e}", b.digest()));
            assert_eq!(got, b.bytes, "{dir}: {} byte for byte", b.digest());
        }
    }
    let (_, tags) = s.get("/v2/team/served/tags/list");
    assert_eq!(tags["tags"], json!(["v1"]), "{tags}");
}

/// hosts.toml naming the first hoist as a mirror of the plain registry.
fn mirror_hosts(dir: &Path, registry: &str, mirror: &str) -> PathBuf {
    let d = dir.join("hosts").join(registry);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join("hosts.toml"),
        format!(
            "server = \"http://{registry}\"\n\n[host.\"http://{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        ),
    )
    .unwrap();
    dir.join("hosts")
}

#[test]
fn a_fleet_host_pulls_through_another_hoist_listed_as_its_mirror() {
    let reg = &registries().plain;
    let repo = unique_repo("push-mirror");
    reg.push_image(&repo, "v1", &sample_image(1708, 256));
    let src = format!("{}/{repo}:v1", reg.host);
    let h1 = Hoist::new();
    let s1 = Server::start(&h1, h1.home.path(), None, &[]);
    assert_eq!(s1.create(&src).0, 202);
    wait_done(&s1, &src, 60);
    reg.settle();
    let blob_gets = reg.requests(&repo, "blobs").len();
    let manifest_gets = reg.requests(&repo, "manifests").len();
    let h2 = Hoist::new();
    let hosts = mirror_hosts(h2.home.path(), &reg.host, &host_of(&s1));
    let out = h2.ok(&[
        "--hosts-dir",
        hosts.to_str().unwrap(),
        "-v",
        "--json",
        "pull",
        &src,
    ]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["bytes_by_host"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        vec![&host_of(&s1)],
        "every byte from the first hoist: {v}"
    );
    reg.settle();
    assert_eq!(
        reg.requests(&repo, "blobs").len(),
        blob_gets,
        "no blob upstream"
    );
    assert_eq!(
        reg.requests(&repo, "manifests").len(),
        manifest_gets,
        "no manifest upstream"
    );
    h2.assert_blobs_verified();
}

#[test]
fn kill_9_mid_upload_and_mid_build_leaves_nothing_half_made() {
    let reg = &registries().plain;
    let repo = unique_repo("push-kill");
    // Big enough that the upload is still running when it is killed, and
    // 20,000 files so that the build takes a while.
    let names: Vec<String> = (0..20_000).map(|i| format!("d{}/f{i}", i % 50)).collect();
    let files: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b"x\n"[..])).collect();
    let big = image::noise(1709, 48 << 20);
    let img = Builder::new()
        .layer(&[("big.bin", &big)])
        .layer(&files)
        .build();
    reg.push_image(&repo, "v1", &img);
    let src = format!("{}/{repo}:v1", reg.host);
    let h = Hoist::new();
    let data = h.home.path().to_path_buf();
    let s = start(&h, &data, &[]);
    let dest = format!("{}/team/kill:v1", host_of(&s));
    let name = format!("{NAME}/team/kill:v1");
    // Kill the server while skopeo streams the big layer.
    let mut child = Command::new("skopeo")
        .args([
            "--insecure-policy",
            "copy",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            "--dest-creds",
            &format!("ci:{TOKEN}"),
            &format!("docker://{src}"),
            &format!("docker://{dest}"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let tmp = data.join("cache/oci-v1/.hoist/tmp");
    let end = Instant::now() + Duration::from_secs(60);
    while std::fs::read_dir(&tmp).map_or(0, |d| d.count()) == 0 {
        assert!(Instant::now() < end, "no upload seen");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(200));
    s.kill9();
    let _ = child.wait();
    let s = start(&h, &data, &[]);
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "the killed upload's temp file is swept at start"
    );
    push(&src, &format!("{}/team/kill:v1", host_of(&s)), &[]);
    // Now kill it while it builds the pushed image.
    let end = Instant::now() + Duration::from_secs(60);
    let seen = loop {
        let (_, r) = s.image(&name);
        if r["status"] == "converting" || r["status"] == "ready" {
            break r["status"].clone();
        }
        assert!(Instant::now() < end, "{r}");
        std::thread::sleep(Duration::from_millis(2));
    };
    s.kill9();
    let s = start(&h, &data, &[]);
    let r = wait_done(&s, &name, 120);
    assert_eq!(r["status"], "ready", "{r}");
    eprintln!("status at the kill during the build: {seen}");
    assert!(temp_files_under(&data).is_empty());
    let out = h.ok(&["fsck"]);
    assert!(out.contains("consistent"), "{out}");
}

/// A Docker engine of the test's own (Debian's `dockerd`, as root, with
/// its own data and exec roots and socket, no iptables, no bridge),
/// stopped by its pid when the value is dropped.
struct Dockerd {
    dir: PathBuf,
    child: Option<std::process::Child>,
}

impl Dockerd {
    fn start(dir: &Path) -> Option<Dockerd> {
        if unsafe_not_root() || !Path::new("/usr/sbin/dockerd").exists() {
            return None;
        }
        std::fs::create_dir_all(dir).unwrap();
        let log = std::fs::File::create(dir.join("dockerd.log")).unwrap();
        let child = Command::new("/usr/sbin/dockerd")
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("pid"))
            .arg("--host")
            .arg(format!("unix://{}", dir.join("sock").display()))
            .args(["--iptables=false", "--bridge=none"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let d = Dockerd {
            dir: dir.to_path_buf(),
            child: Some(child),
        };
        let end = Instant::now() + Duration::from_secs(60);
        while !d
            .cmd()
            .arg("info")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            assert!(
                Instant::now() < end,
                "dockerd did not start: {}",
                std::fs::read_to_string(dir.join("dockerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        Some(d)
    }

    fn cmd(&self) -> Command {
        let client = ["/usr/bin/docker", "/usr/local/bin/docker"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("docker");
        let mut c = Command::new(client);
        c.arg("-H")
            .arg(format!("unix://{}", self.dir.join("sock").display()))
            .env("DOCKER_CONFIG", self.dir.join("client"));
        c
    }

    fn run(&self, args: &[&str], stdin: Option<&str>) -> String {
        use std::io::Write;
        let mut c = self.cmd();
        c.args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = c.spawn().unwrap();
        if let Some(s) = stdin {
            child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
        }
        drop(child.stdin.take());
        let out = child.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "docker {args:?}:\n{text}");
        text
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on the daemon this test started.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let end = Instant::now() + Duration::from_secs(20);
            while c.try_wait().ok().flatten().is_none() {
                if Instant::now() > end {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

#[test]
fn docker_login_and_docker_push_with_the_real_engine_make_the_same_disk() {
    let h = Hoist::new();
    let Some(dockerd) = Dockerd::start(&h.home.path().join("dk")) else {
        crate::harness::skip("docker push needs root and Debian's docker.io (dockerd)");
        return;
    };
    let reg = &registries().plain;
    let repo = unique_repo("push-docker");
    reg.push_image(&repo, "v1", &sample_image(1710, 128));
    let src = format!("{}/{repo}:v1", reg.host);
    let data = h.home.path().join("data");
    let s = start(&h, &data, &[]);
    let want = reference_disk(&s, &src);
    // No registry for the engine to pull from: an archive skopeo made.
    let archive = h.home.path().join("img.tar");
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{src}"),
        &format!("docker-archive:{}:team/docked:v1", archive.display()),
    ]);
    dockerd.run(&["load", "-i", archive.to_str().unwrap()], None);
    let dest = format!("{}/team/docked:v1", host_of(&s));
    dockerd.run(&["tag", "team/docked:v1", &dest], None);
    let out = dockerd.run(
        &["login", "-u", "ci", "--password-stdin", &host_of(&s)],
        Some(TOKEN),
    );
    assert!(out.contains("Login Succeeded"), "{out}");
    dockerd.run(&["push", &dest], None);
    let r = wait_done(&s, &format!("{NAME}/team/docked:v1"), 120);
    assert_eq!(disk_sha(&r), want, "{r}");
}

#[test]
fn pushed_tags_move_artifacts_fail_clearly_sessions_are_bounded_and_gc_keeps_what_a_push_needs() {
    let h = Hoist::new();
    let data = h.home.path().to_path_buf();
    let s = start(
        &h,
        &data,
        &["--max-upload-sessions", "2", "--upload-timeout", "1"],
    );
    let c = V2::new(&s);
    let put_blob = |repo: &str, b: &Blob| {
        let (st, _, body) = c.send(
            c.req(
                "POST",
                &format!("/v2/{repo}/blobs/uploads/?digest={}", b.digest()),
            )
            .body(b.bytes.clone()),
        );
        assert_eq!(st, 201, "{body}");
    };
    let put_manifest = |repo: &str, r: &str, m: &Blob| {
        let (st, h, body) = c.send(
            c.req("PUT", &format!("/v2/{repo}/manifests/{r}"))
                .header("Content-Type", m.media_type.clone())
                .body(m.bytes.clone()),
        );
        assert_eq!(st, 201, "{body}");
        assert_eq!(h["docker-content-digest"], m.digest().as_str());
        assert_eq!(
            h["location"],
            format!("/v2/{repo}/manifests/{}", m.digest()).as_str()
        );
    };
    let one = sample_image(1711, 16);
    let two = sample_image(1712, 16);
    for b in one.layers.iter().chain([&one.config]) {
        put_blob("team/moving", b);
    }
    // Uploaded, no manifest yet: GC keeps the blobs (held for an hour).
    let (_, gc) = s.post("/gc", json!({}));
    assert_eq!(gc["cache"]["blobs"], json!([]), "{gc}");
    put_manifest("team/moving", "v1", &one.manifest);
    let name = format!("{NAME}/team/moving:v1");
    let r = wait_done(&s, &name, 60);
    assert_eq!(r["digest"], one.manifest.digest());
    // Re-pushing the tag to another image moves it, as a registry does.
    for b in two.layers.iter().chain([&two.config]) {
        put_blob("team/moving", b);
    }
    put_manifest("team/moving", "v1", &two.manifest);
    let r = wait_done(&s, &name, 60);
    assert_eq!(r["digest"], two.manifest.digest(), "{r}");
    let raw = c
        .req("GET", "/v2/team/moving/manifests/v1")
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert_eq!(raw.to_vec(), two.manifest.bytes, "served as pushed");
    // An artifact (its config is not an image config) is stored and
    // answered 201, and its record says why it was not built.
    let art = Builder::new()
        .config_media_type("application/vnd.example.artifact.config.v1+json")
        .layer(&[("readme", b"not an image")])
        .build();
    for b in art.layers.iter().chain([&art.config]) {
        put_blob("team/artifact", b);
    }
    put_manifest("team/artifact", "v1", &art.manifest);
    let r = wait_done(&s, &format!("{NAME}/team/artifact:v1"), 30);
    assert_eq!(r["status"], "failed");
    assert_eq!(r["error_code"], "not_an_image", "{r}");
    // Sessions: at most two open; an idle one goes after the timeout.
    let a = c.start("team/s");
    c.start("team/s");
    let (st, _, body) = c.send(c.req("POST", "/v2/team/s/blobs/uploads/"));
    assert_eq!((st, code_of(&body).as_str()), (429, "TOOMANYREQUESTS"));
    std::thread::sleep(Duration::from_secs(7));
    let (st, _, _) = c.send(c.req("GET", &a));
    assert_eq!(st, 404, "the idle session was removed");
    assert_eq!(
        std::fs::read_dir(data.join("cache/oci-v1/.hoist/tmp"))
            .unwrap()
            .count(),
        0
    );
    // With the server down, the CLI's GC keeps every pushed tag's blobs.
    let (_, status) = s.terminate();
    assert!(status.success());
    h.ok(&["gc"]);
    for b in two
        .layers
        .iter()
        .chain([&two.config, &two.manifest, &art.manifest, &art.config])
    {
        assert!(
            data.join("cache/oci-v1/blobs/sha256")
                .join(&b.digest()[7..])
                .exists(),
            "gc took {}",
            b.digest()
        );
    }
    let out = h.ok(&["fsck"]);
    assert!(out.contains("consistent"), "{out}");
}
