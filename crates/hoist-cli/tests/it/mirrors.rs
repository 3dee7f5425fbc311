//! Registry mirrors through containerd's `hosts.toml`: a real pull-through
//! cache (distribution in proxy mode) in front of the plain test registry,
//! a mirror that is down, one that sends wrong bytes (the in-process fault
//! server), and one whose tag points elsewhere.

use std::path::Path;

use crate::harness::faults::FaultRegistry;
use crate::harness::registry::{start_extra, Registry};
use crate::harness::{registries, sample_image, unique_repo, Hoist};

/// A mirror's table body that lets it pull and resolve tags.
const ALL: &str = "  capabilities = [\"pull\", \"resolve\"]\n";
/// A mirror's table body that lets it serve digests only.
const PULL: &str = "  capabilities = [\"pull\"]\n";

/// `DIR/<registry>/hosts.toml`: `server`, then one mirror's table.
fn hosts_toml(dir: &Path, registry: &str, server: &str, mirror: &str, body: &str) {
    let d = dir.join(registry);
    std::fs::create_dir_all(&d).unwrap();
    let t = format!("server = \"{server}\"\n\n[host.\"{mirror}\"]\n{body}");
    std::fs::write(d.join("hosts.toml"), t).unwrap();
}

/// The same for a plain HTTP registry `up` as the server.
fn hosts_dir(dir: &Path, up: &str, mirror: &str, body: &str) {
    hosts_toml(dir, up, &format!("http://{up}"), mirror, body);
}

/// A distribution registry in proxy mode in front of `up`, and a hosts
/// directory that sends `up`'s pulls and resolutions through it.
fn pull_through_cache(name: &str, up: &Registry) -> (Registry, tempfile::TempDir) {
    let mirror = start_extra(name, &format!("proxy:\n  remoteurl: http://{}\n", up.host));
    let conf = tempfile::tempdir().unwrap();
    hosts_dir(
        conf.path(),
        &up.host,
        &format!("http://{}", mirror.host),
        ALL,
    );
    (mirror, conf)
}

fn blob_gets(r: &Registry, repo: &str) -> usize {
    r.all_requests(repo, "blobs").len()
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

/// `hoist -v --json ARGS` must succeed: its JSON and its log.
fn verbose(h: &Hoist, args: &[&str]) -> (serde_json::Value, String) {
    let out = h.cmd().args(["-v", "--json"]).args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{err}");
    (json(&String::from_utf8_lossy(&out.stdout)), err)
}

#[test]
fn a_pull_through_cache_serves_later_pulls_and_a_stopped_one_falls_back_to_upstream() {
    let up = &registries().plain;
    let repo = unique_repo("mirror");
    let img = sample_image(901, 300);
    up.push_image(&repo, "v1", &img);
    let (mirror, conf) = pull_through_cache("proxy", up);
    let dir = conf.path().to_str().unwrap();
    let by_tag = format!("{}/{repo}:v1", up.host);
    let by_digest = format!("{}/{repo}@{}", up.host, img.manifest.digest());

    // Cold: the mirror fills itself from upstream; -v names the host that
    // served each blob.
    let h = Hoist::new();
    let (v, err) = verbose(&h, &["--hosts-dir", dir, "pull", &by_tag]);
    for l in &img.layers {
        assert!(
            err.contains(&format!("blob {} ", l.digest()))
                && err.contains(&format!("from {}", mirror.host)),
            "{err}"
        );
    }
    assert_eq!(v["digest"], img.manifest.digest());
    assert!(
        v["bytes_by_host"][&mirror.host].as_u64().unwrap() > 600 << 10,
        "{v}"
    );
    assert!(v["bytes_by_host"].get(&up.host).is_none(), "{v}");
    h.assert_blobs_verified();
    up.settle();
    let cold = blob_gets(up, &repo);
    assert!(cold >= 4, "upstream served the mirror {cold} blobs");
    // The mirror saw containerd's ns parameter.
    let seen = mirror.all_requests(&repo, "manifests");
    assert!(
        seen.iter()
            .all(|(l, _, _)| l.contains(&format!("ns={}", up.host))),
        "{seen:?}"
    );

    // Warm, into an empty cache: no blob from upstream (the proxy may
    // check the tag there), and by digest no request at all.
    let manifests_before = up.all_requests(&repo, "manifests").len();
    let h2 = Hoist::new();
    h2.ok(&["--hosts-dir", dir, "pull", &by_tag]);
    h2.assert_blobs_verified();
    up.settle();
    assert_eq!(
        blob_gets(up, &repo),
        cold,
        "a warm pull reached upstream for blobs"
    );
    let manifests_tag = up.all_requests(&repo, "manifests").len();
    let h3 = Hoist::new();
    let env = [("HOIST_HOSTS_DIR", conf.path().as_os_str())];
    h3.ok_env(&env, &["pull", &by_digest]);
    h3.assert_blobs_verified();
    up.settle();
    assert_eq!(blob_gets(up, &repo), cold);
    assert_eq!(
        up.all_requests(&repo, "manifests").len(),
        manifests_tag,
        "a pull by digest reached upstream (tag pull: {manifests_before} → {manifests_tag})"
    );

    // The mirror goes away: pulls fall back to upstream and succeed.
    mirror.stop();
    let h4 = Hoist::new();
    let (v, err) = verbose(&h4, &["--hosts-dir", dir, "pull", &by_tag]);
    assert!(
        v["bytes_by_host"][&up.host].as_u64().unwrap() > 600 << 10,
        "{v}"
    );
    assert!(
        err.contains(&mirror.host) && err.contains("trying"),
        "{err}"
    );
    h4.assert_blobs_verified();
}

#[test]
fn a_mirror_that_sends_wrong_bytes_is_skipped_and_nothing_bad_is_cached() {
    let up = &registries().plain;
    let repo = unique_repo("badmirror");
    let img = sample_image(902, 200);
    up.push_image(&repo, "v1", &img);
    let bad = FaultRegistry::start();
    bad.add_image("v1", &img);
    bad.set(|p| p.wrong_bytes = true);
    let conf = tempfile::tempdir().unwrap();
    // The host's headers from hosts.toml go with every request to it.
    let url = format!("http://{}", bad.host());
    let header = format!("  [host.\"{url}\".header]\n    x-fleet = \"rack-7\"\n");
    hosts_dir(conf.path(), &up.host, &url, &format!("{PULL}{header}"));
    let h = Hoist::new();
    let r = format!("{}/{repo}:v1", up.host);
    let (v, err) = verbose(
        &h,
        &["--hosts-dir", conf.path().to_str().unwrap(), "pull", &r],
    );
    assert!(
        err.contains("wrong bytes") && err.contains(&bad.host()),
        "{err}"
    );
    let asked = bad.requests("blobs");
    assert!(!asked.is_empty(), "the mirror was never asked");
    assert!(
        asked.iter().all(|l| l.contains("x-fleet=rack-7")),
        "{asked:?}"
    );
    assert_eq!(v["digest"], img.manifest.digest());
    assert!(h.assert_blobs_verified() >= 4);
    h.ok(&["fsck"]);
}

#[test]
fn a_tag_is_never_resolved_through_a_mirror_without_resolve() {
    let up = &registries().plain;
    let repo = unique_repo("resolve");
    let real = sample_image(903, 64);
    up.push_image(&repo, "v1", &real);
    // A mirror whose v1 is something else.
    let decoy = start_extra("decoy", "");
    let other = sample_image(904, 64);
    decoy.push_image(&repo, "v1", &other);
    let r = format!("{}/{repo}:v1", up.host);

    let conf = tempfile::tempdir().unwrap();
    hosts_dir(
        conf.path(),
        &up.host,
        &format!("http://{}", decoy.host),
        PULL,
    );
    let h = Hoist::new();
    let got = h.ok(&["--hosts-dir", conf.path().to_str().unwrap(), "pull", &r]);
    assert_eq!(
        got.trim(),
        real.manifest.digest(),
        "resolved through the mirror"
    );
    h.assert_blobs_verified();
    decoy.settle();
    assert!(
        decoy
            .requests(&repo, "manifests")
            .iter()
            .all(|l| !l.contains("/manifests/v1")),
        "the tag was asked of a mirror without resolve"
    );

    // The same mirror trusted to resolve answers the tag: the switch is
    // the capability, not chance.
    let trusted = tempfile::tempdir().unwrap();
    hosts_dir(
        trusted.path(),
        &up.host,
        &format!("http://{}", decoy.host),
        ALL,
    );
    let h2 = Hoist::new();
    let got = h2.ok(&["--hosts-dir", trusted.path().to_str().unwrap(), "pull", &r]);
    assert_eq!(got.trim(), other.manifest.digest());
    decoy.stop();
}

#[test]
fn a_mirror_never_receives_the_upstream_credentials() {
    // Upstream: the TLS registry with basic auth, its credentials given on
    // the command line; the mirror (which has nothing) is asked first.
    let regs = registries();
    let up = &regs.tls;
    let repo = unique_repo("creds");
    let img = sample_image(906, 64);
    up.push_image(&repo, "v1", &img);
    // The mirror asks for credentials: hoist has none for it, and must not
    // offer the upstream's.
    let mirror = FaultRegistry::start();
    mirror.add_image("v1", &img);
    mirror.set(|p| p.require_basic = true);
    let conf = tempfile::tempdir().unwrap();
    hosts_toml(
        conf.path(),
        &up.host,
        &format!("https://{}", up.host),
        &format!("http://{}", mirror.host()),
        ALL,
    );
    let h = Hoist::new();
    let creds = format!(
        "{}:{}",
        crate::harness::registry::USER,
        crate::harness::registry::PASS
    );
    let got = h.ok(&[
        "--hosts-dir",
        conf.path().to_str().unwrap(),
        "--ca-cert",
        regs.ca_pem.to_str().unwrap(),
        "--creds",
        &creds,
        "pull",
        &format!("{}/{repo}:v1", up.host),
    ]);
    assert_eq!(got.trim(), img.manifest.digest());
    let asked = mirror.requests("manifests");
    assert!(!asked.is_empty(), "the mirror was not tried");
    let all: Vec<String> = mirror.log.lock().unwrap().clone();
    assert!(all.iter().all(|l| l.ends_with("auth=-")), "{all:?}");
}

#[test]
fn a_tls_mirror_is_trusted_through_its_own_ca_and_gets_its_own_credentials() {
    use base64::Engine;
    // The image is only on the TLS registry (basic auth), configured as a
    // mirror of the plain one with its own `ca`; its credentials come from
    // the docker config under the mirror's own name. No --ca-cert.
    let regs = registries();
    let (up, tls) = (&regs.plain, &regs.tls);
    let repo = unique_repo("tlsmirror");
    let img = sample_image(907, 64);
    tls.push_image(&repo, "v1", &img);
    let conf = tempfile::tempdir().unwrap();
    let write = |extra: &str| {
        let url = format!("https://{}", tls.host);
        hosts_dir(conf.path(), &up.host, &url, &format!("{ALL}{extra}"));
    };
    let h = Hoist::new();
    let dc = h.home.path().join("docker");
    std::fs::create_dir_all(&dc).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        crate::harness::registry::USER,
        crate::harness::registry::PASS
    ));
    std::fs::write(
        dc.join("config.json"),
        format!(r#"{{"auths":{{"{}":{{"auth":"{b64}"}}}}}}"#, tls.host),
    )
    .unwrap();
    let env = [("DOCKER_CONFIG", dc.as_os_str())];
    let r = format!("{}/{repo}:v1", up.host);
    let args = ["--hosts-dir", conf.path().to_str().unwrap(), "pull", &r];
    // Without the mirror's CA its certificate is refused, the upstream has
    // no such image: not found.
    write("");
    let out = h.cmd().envs(env).args(args).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for extra in [
        format!("  ca = \"{}\"\n", regs.ca_pem.display()),
        "  skip_verify = true\n".to_string(),
    ] {
        write(&extra);
        let h2 = Hoist::new();
        let got = h2.ok_env(&env, &args);
        assert_eq!(got.trim(), img.manifest.digest(), "with {extra}");
    }
}

#[test]
fn a_mirror_that_times_out_is_left_for_upstream() {
    let up = &registries().plain;
    let repo = unique_repo("slowmirror");
    let img = sample_image(908, 64);
    up.push_image(&repo, "v1", &img);
    // The mirror has the image but hangs before every blob.
    let slow = FaultRegistry::start();
    slow.add_image("v1", &img);
    slow.set(|p| p.stall = Some((100, std::time::Duration::from_secs(20))));
    let conf = tempfile::tempdir().unwrap();
    hosts_dir(
        conf.path(),
        &up.host,
        &format!("http://{}", slow.host()),
        PULL,
    );
    let h = Hoist::new();
    let t = std::time::Instant::now();
    let r = format!("{}/{repo}:v1", up.host);
    let (v, err) = verbose(
        &h,
        &[
            "--timeout",
            "1",
            "--concurrency",
            "4",
            "--hosts-dir",
            conf.path().to_str().unwrap(),
            "pull",
            &r,
        ],
    );
    assert_eq!(v["digest"], img.manifest.digest());
    assert!(t.elapsed().as_secs() < 15, "{:?}", t.elapsed());
    assert!(
        err.contains(&slow.host()) && err.contains("trying"),
        "{err}"
    );
    h.assert_blobs_verified();
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as
/// PEM files in `dir` (ca.crt, server.crt/.key, client.cert/.key: the names
/// skopeo's --cert-dir expects too).
fn mtls_certs(dir: &Path) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "hoist mtls CA");
    let ca = ca.self_signed(&ca_key).unwrap();
    let srv_key = rcgen::KeyPair::generate().unwrap();
    let mut srv = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    srv.subject_alt_names
        .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let srv = srv.signed_by(&srv_key, &ca, &ca_key).unwrap();
    let cl_key = rcgen::KeyPair::generate().unwrap();
    let mut cl = rcgen::CertificateParams::new(vec!["hoist-client".to_string()]).unwrap();
    cl.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cl = cl.signed_by(&cl_key, &ca, &ca_key).unwrap();
    for (name, pem) in [
        ("ca.crt", ca.pem()),
        ("server.crt", srv.pem()),
        ("server.key", srv_key.serialize_pem()),
        ("client.cert", cl.pem()),
        ("client.key", cl_key.serialize_pem()),
    ] {
        std::fs::write(dir.join(name), pem).unwrap();
    }
}

#[test]
fn a_mirror_that_wants_a_client_certificate_gets_the_one_hosts_toml_names() {
    let up = &registries().plain;
    let certs = tempfile::tempdir().unwrap();
    let c = certs.path();
    mtls_certs(c);
    let mirror = start_extra(
        "mtls",
        &format!(
            "  tls:\n    certificate: {d}/server.crt\n    key: {d}/server.key\n    clientcas:\n      - {d}/ca.crt\n",
            d = c.display()
        ),
    );
    // The image is only on the mirror; skopeo pushes it with the client
    // certificate from the same directory.
    let repo = unique_repo("mtls");
    let skopeo_certs = tempfile::tempdir().unwrap();
    for f in ["ca.crt", "client.cert", "client.key"] {
        std::fs::copy(c.join(f), skopeo_certs.path().join(f)).unwrap();
    }
    let o = std::process::Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-cert-dir"])
        .arg(skopeo_certs.path())
        .arg(format!(
            "oci:{}/../../examples/hello:latest",
            env!("CARGO_MANIFEST_DIR")
        ))
        .arg(format!("docker://{}/{repo}:v1", mirror.host))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let conf = tempfile::tempdir().unwrap();
    let write = |client: &str| {
        let ca = format!("  ca = \"{}\"\n", c.join("ca.crt").display());
        let url = format!("https://{}", mirror.host);
        hosts_dir(conf.path(), &up.host, &url, &format!("{ALL}{ca}{client}"));
    };
    let r = format!("{}/{repo}:v1", up.host);
    let args = ["--hosts-dir", conf.path().to_str().unwrap(), "pull", &r];
    // No client certificate: the mirror's handshake fails, upstream has no
    // such image.
    write("");
    Hoist::new().fails(&args, 3);
    write(&format!(
        "  client = [[\"{}\", \"{}\"]]\n",
        c.join("client.cert").display(),
        c.join("client.key").display()
    ));
    let h = Hoist::new();
    let (v, _) = verbose(&h, &args);
    assert!(
        v["bytes_by_host"][&mirror.host].as_u64().unwrap() > 0,
        "{v}"
    );
    h.assert_blobs_verified();

    // The same registry pulled directly, with its certificates in Docker's
    // certs.d layout (a host directory without hosts.toml), as containerd
    // reads it too.
    let certs_d = tempfile::tempdir().unwrap();
    let own = certs_d.path().join(&mirror.host);
    std::fs::create_dir(&own).unwrap();
    for f in ["ca.crt", "client.cert", "client.key"] {
        std::fs::copy(c.join(f), own.join(f)).unwrap();
    }
    let direct = format!("{}/{repo}:v1", mirror.host);
    let args = [
        "--hosts-dir",
        certs_d.path().to_str().unwrap(),
        "pull",
        &direct,
    ];
    let h = Hoist::new();
    h.ok(&args);
    assert!(h.assert_blobs_verified() > 0);
    // Without the client pair the registry refuses the handshake.
    std::fs::remove_file(own.join("client.cert")).unwrap();
    std::fs::remove_file(own.join("client.key")).unwrap();
    let e = Hoist::new().fails(&args, 1);
    assert!(e.contains(&mirror.host), "{e}");
    mirror.stop();
}

#[test]
fn a_mirror_under_a_path_is_reached_with_and_without_override_path() {
    // distribution serves its API under `prefix` (here /hub/v2/): the
    // mirror URL's path, with /v2 added unless override_path says the path
    // is the API root already.
    let up = &registries().plain;
    let repo = unique_repo("prefixed");
    let img = sample_image(911, 96);
    up.push_image(&repo, "v1", &img);
    let mirror = start_extra(
        "prefixed",
        &format!("  prefix: /hub/\nproxy:\n  remoteurl: http://{}\n", up.host),
    );
    let r = format!("{}/{repo}:v1", up.host);
    let served = |url_path: &str, override_path: bool| {
        let conf = tempfile::tempdir().unwrap();
        let url = format!("http://{}{url_path}", mirror.host);
        let body = format!("{ALL}  override_path = {override_path}\n");
        hosts_dir(conf.path(), &up.host, &url, &body);
        let h = Hoist::new();
        let (v, _) = verbose(
            &h,
            &["--hosts-dir", conf.path().to_str().unwrap(), "pull", &r],
        );
        assert_eq!(v["digest"], img.manifest.digest());
        h.assert_blobs_verified();
        let by = |host: &str| v["bytes_by_host"][host].as_u64().unwrap_or(0);
        (by(&mirror.host), by(&up.host))
    };
    let (m, u) = served("/hub", false);
    assert!(m > 0 && u == 0, "mirror {m}, upstream {u}");
    let (m, u) = served("/hub/v2", true);
    assert!(m > 0 && u == 0, "mirror {m}, upstream {u}");
    // override_path on a path that is not the API root: the mirror answers
    // 404 and upstream serves the pull.
    let (m, u) = served("/hub", true);
    assert!(m == 0 && u > 0, "mirror {m}, upstream {u}");
    mirror.stop();
}

#[test]
fn one_retry_budget_covers_every_loop_of_a_request() {
    // Two 503s, then bodies cut short after 100 bytes, again and again (the
    // server ignores Range): with the retry loops nested, --retries 3 used
    // to mean 3 body attempts after the 503s, 5 requests in all.
    let f = FaultRegistry::start();
    let img = sample_image(905, 512);
    f.add_image("v1", &img);
    f.set(|p| {
        p.blob_503 = 2;
        p.truncate_after = Some((100, 100));
        p.no_range = true;
    });
    let h = Hoist::new();
    let e = h.fails(
        &[
            "--retries",
            "3",
            "--concurrency",
            "1",
            "pull",
            &format!("{}/budget/img:v1", f.host()),
        ],
        1,
    );
    assert!(e.contains("budget/img"), "{e}");
    assert_eq!(f.requests("blobs").len(), 3, "{:?}", f.requests("blobs"));
}

#[test]
fn hoist_serve_builds_through_a_pull_through_cache() {
    let up = &registries().plain;
    let repo = unique_repo("servemirror");
    let img = sample_image(909, 128);
    up.push_image(&repo, "v1", &img);
    let (mirror, conf) = pull_through_cache("serve-proxy", up);
    let h = Hoist::new();
    let data = h.home.path().to_path_buf();
    let s = crate::harness::server::Server::start(
        &h,
        &data,
        None,
        &["--hosts-dir", conf.path().to_str().unwrap()],
    );
    let name = format!("{}/{repo}:v1", up.host);
    assert_eq!(s.create(&name).0, 202);
    let recs = s.wait_ready(&[&name], std::time::Duration::from_secs(60));
    assert_eq!(recs[0]["digest"], img.manifest.digest());
    // Every layer came through the mirror.
    mirror.settle();
    let got = mirror.requests(&repo, "blobs");
    for l in &img.layers {
        assert!(got.iter().any(|r| r.contains(&l.digest())), "{got:?}");
    }
    mirror.stop();
}
