//! TLS, basic auth, token auth and credential sources, against real
//! registries; secrets never show up in output.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::sync::atomic::Ordering;

use base64::Engine;

use crate::harness::registry::{PASS, USER};
use crate::harness::{registries, sample_image, unique_repo, Hoist};

fn tls_image() -> (String, String) {
    let regs = registries();
    let repo = unique_repo("tls");
    let img = sample_image(10, 16);
    regs.tls.push_image(&repo, "v1", &img);
    (
        format!("{}/{repo}:v1", regs.tls.host),
        img.manifest.digest(),
    )
}

fn ca() -> String {
    registries().ca_pem.display().to_string()
}

#[test]
fn tls_basic_auth_with_creds_flag() {
    let (r, digest) = tls_image();
    let h = Hoist::new();
    let creds = format!("{USER}:{PASS}");
    assert_eq!(
        h.ok(&["--ca-cert", &ca(), "--creds", &creds, "pull", &r])
            .trim(),
        digest
    );
    h.assert_blobs_verified();
}

#[test]
fn tls_without_credentials_or_with_wrong_ones_exits_4() {
    let (r, _) = tls_image();
    let h = Hoist::new();
    let e = h.fails(&["--ca-cert", &ca(), "pull", &r], 4);
    assert!(e.contains("unauthorized"), "{e}");
    let e = h.fails(
        &[
            "--ca-cert",
            &ca(),
            "--creds",
            "hoist:wrong-password",
            "-vv",
            "pull",
            &r,
        ],
        4,
    );
    assert!(
        !e.contains("wrong-password"),
        "a password leaked into the output:\n{e}"
    );
}

#[test]
fn tls_unknown_ca_is_an_error_and_insecure_registry_skips_verification() {
    let (r, digest) = tls_image();
    let h = Hoist::new();
    let creds = format!("{USER}:{PASS}");
    let e = h.fails(&["--creds", &creds, "inspect", &r], 1);
    assert!(e.contains("certificate"), "{e}");
    let host = registries().tls.host.clone();
    let out = h.ok(&["--insecure-registry", &host, "--creds", &creds, "pull", &r]);
    assert_eq!(out.trim(), digest);
}

#[test]
fn password_stdin() {
    let (r, digest) = tls_image();
    let h = Hoist::new();
    let mut child = h
        .cmd()
        .args([
            "--ca-cert",
            &ca(),
            "--username",
            USER,
            "--password-stdin",
            "pull",
            &r,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{PASS}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), digest);
}

#[test]
fn docker_config_auths_and_containers_auth_json() {
    let (r, digest) = tls_image();
    let host = registries().tls.host.clone();
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASS}"));
    // docker config.json with an https:// key
    let h = Hoist::new();
    let dc = h.home.path().join("docker");
    std::fs::create_dir_all(&dc).unwrap();
    std::fs::write(
        dc.join("config.json"),
        format!(r#"{{"auths":{{"https://{host}":{{"auth":"{b64}"}}}}}}"#),
    )
    .unwrap();
    let out = h.ok_env(
        &[("DOCKER_CONFIG", dc.as_ref())],
        &["--ca-cert", &ca(), "pull", &r],
    );
    assert_eq!(out.trim(), digest);
    // containers auth.json through REGISTRY_AUTH_FILE
    let h = Hoist::new();
    let af = h.home.path().join("auth.json");
    std::fs::write(
        &af,
        format!(r#"{{"auths":{{"{host}":{{"auth":"{b64}"}}}}}}"#),
    )
    .unwrap();
    h.ok_env(
        &[("REGISTRY_AUTH_FILE", af.as_ref())],
        &["--ca-cert", &ca(), "pull", &r],
    );
    // --creds wins over a wrong file entry
    let bad = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:nope"));
    std::fs::write(
        &af,
        format!(r#"{{"auths":{{"{host}":{{"auth":"{bad}"}}}}}}"#),
    )
    .unwrap();
    let creds = format!("{USER}:{PASS}");
    h.ok_env(
        &[("REGISTRY_AUTH_FILE", af.as_ref())],
        &["--ca-cert", &ca(), "--creds", &creds, "inspect", &r],
    );
}

/// Writes `docker-credential-NAME` into a bin dir; returns the PATH to use.
fn helper(h: &Hoist, name: &str, script: &str) -> String {
    let bin = h.home.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let p = bin.join(format!("docker-credential-{name}"));
    std::fs::write(&p, script).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

#[test]
fn credential_helpers_run_with_server_on_stdin_and_a_time_limit() {
    let (r, digest) = tls_image();
    let host = registries().tls.host.clone();
    let h = Hoist::new();
    let dc = h.home.path().join("docker");
    std::fs::create_dir_all(&dc).unwrap();
    let log = h.home.path().join("helper.log");
    let path = helper(
        &h,
        "hoisttest",
        &format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread server\necho \"$server\" > {}\nprintf '{{\"ServerURL\":\"%s\",\"Username\":\"{USER}\",\"Secret\":\"{PASS}\"}}' \"$server\"\n",
            log.display()
        ),
    );
    std::fs::write(
        dc.join("config.json"),
        format!(r#"{{"credHelpers":{{"{host}":"hoisttest"}}}}"#),
    )
    .unwrap();
    let out = h.ok_env(
        &[("DOCKER_CONFIG", dc.as_ref()), ("PATH", path.as_ref())],
        &["--ca-cert", &ca(), "pull", &r],
    );
    assert_eq!(out.trim(), digest);
    assert_eq!(std::fs::read_to_string(&log).unwrap().trim(), host);

    // credsStore, and a helper that hangs: a clear error, not a hang.
    let path = helper(&h, "hangs", "#!/bin/sh\nsleep 60\n");
    std::fs::write(dc.join("config.json"), r#"{"credsStore":"hangs"}"#).unwrap();
    let t = std::time::Instant::now();
    let out = h
        .cmd()
        .env("DOCKER_CONFIG", &dc)
        .env("PATH", &path)
        .args(["--ca-cert", &ca(), "inspect", &r])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{e}");
    assert!(e.contains("did not answer"), "{e}");
    assert!(t.elapsed().as_secs() < 30);
}

#[test]
fn token_auth_flow_against_a_real_registry() {
    let regs = registries();
    let repo = unique_repo("token");
    let img = sample_image(11, 64);
    regs.token.push_image(&repo, "v1", &img);
    let r = format!("{}/{repo}:v1", regs.token.host);
    let h = Hoist::new();
    let e = h.fails(&["inspect", &r], 4);
    assert!(e.contains("unauthorized") || e.contains("401"), "{e}");
    let before = regs.issuer.issued.load(Ordering::SeqCst);
    let creds = format!("{USER}:{PASS}");
    let out = h.run(&["--creds", &creds, "-vv", "pull", &r]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        img.manifest.digest()
    );
    let issued = regs.issuer.issued.load(Ordering::SeqCst) - before;
    assert_eq!(
        issued, 1,
        "one token serves the manifest, config and all layers"
    );
    assert!(!stderr.contains(PASS), "password in the verbose log");
    assert!(!stderr.contains("eyJ"), "a JWT in the verbose log");
    h.assert_blobs_verified();
}
