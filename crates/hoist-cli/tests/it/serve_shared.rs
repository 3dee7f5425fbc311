//! `hoist serve --format erofs --shared-layers`: each image a META disk
//! over the layer files under DATA/layers/, shared between images, kept
//! while a record needs them, counted in the metrics, and recovered after
//! kill -9.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::harness::faults::FaultRegistry;
use crate::harness::registry::registries;
use crate::harness::server::Server;
use crate::harness::{sample_image, shared_base_pair, unique_repo, Hoist};

const SHARED: &[&str] = &["--format", "erofs", "--shared-layers"];

fn devices(rec: &serde_json::Value) -> Vec<PathBuf> {
    rec["devices"]
        .as_array()
        .unwrap_or_else(|| panic!("no devices: {rec}"))
        .iter()
        .map(|d| PathBuf::from(d.as_str().unwrap()))
        .collect()
}

fn layer_files(data: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(data.join("layers"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".erofs"))
        .collect();
    v.sort();
    v
}

fn fsck_meta(disk: &str, devs: &[PathBuf]) {
    let mut c = std::process::Command::new("fsck.erofs");
    for d in devs {
        c.arg(format!("--device={}", d.display()));
    }
    let o = c.arg(disk).output().unwrap();
    assert!(o.status.success(), "{o:?}");
}

/// Two images on one base: both ready as METAs whose devices name the
/// base's one file; the metrics count the files; deleting one image and
/// running GC removes its own layer file only, never the base the other
/// still needs; deleting the other too and GC empties the directory.
#[test]
fn serve_shares_layer_files_between_images_and_gc_keeps_what_a_record_needs() {
    let reg = &registries().plain;
    let repo = unique_repo("serve-shared");
    let (a, b) = shared_base_pair(91, 1 << 10);
    reg.push_image(&repo, "a", &a);
    reg.push_image(&repo, "b", &b);
    let (na, nb) = (
        format!("{}/{repo}:a", reg.host),
        format!("{}/{repo}:b", reg.host),
    );
    let h = Hoist::new();
    let data = h.home.path().to_path_buf();
    let s = Server::start(&h, &data, None, SHARED);
    assert_eq!(s.create(&na).0, 202);
    assert_eq!(s.create(&nb).0, 202);
    let recs = s.wait_ready(&[&na, &nb], Duration::from_secs(60));
    let (da, db) = (devices(&recs[0]), devices(&recs[1]));
    assert_eq!(da.len(), 2);
    assert_eq!(da[0], db[0], "the base's file is shared");
    assert_ne!(da[1], db[1]);
    for (r, d) in recs.iter().zip([&da, &db]) {
        assert!(d.iter().all(|p| p.starts_with(data.join("layers"))));
        fsck_meta(r["disk_path"].as_str().unwrap(), d);
    }
    assert_eq!(layer_files(&data).len(), 3);
    assert_eq!(s.metric("hoist_layer_files"), Some(3.0));
    let bytes: u64 = [&da[0], &da[1], &db[1]]
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert_eq!(s.metric("hoist_layer_files_bytes"), Some(bytes as f64));

    assert_eq!(s.delete(&na).0, 204);
    let (st, g) = s.post("/gc", serde_json::json!({}));
    assert_eq!(st, 200, "{g}");
    assert_eq!(g["layer_files"]["removed"], 1, "{g}");
    assert!(!da[1].exists() && da[0].exists() && db[1].exists());
    // b still reads whole.
    let (_, rb) = s.image(&nb);
    assert_eq!(rb["status"], "ready");
    fsck_meta(rb["disk_path"].as_str().unwrap(), &devices(&rb));

    assert_eq!(s.delete(&nb).0, 204);
    let (st, g) = s.post("/gc", serde_json::json!({}));
    assert_eq!(st, 200, "{g}");
    assert!(layer_files(&data).is_empty(), "{g}");
}

/// A layer file deleted under the data directory is noticed: the record
/// that needs it is built again, and its devices are whole after.
#[test]
fn a_deleted_layer_file_is_noticed_and_built_again() {
    let reg = &registries().plain;
    let repo = unique_repo("serve-shared-damage");
    reg.push_image(&repo, "v1", &sample_image(92, 64));
    let name = format!("{}/{repo}:v1", reg.host);
    let h = Hoist::new();
    let data = h.home.path().to_path_buf();
    let s = Server::start(&h, &data, None, SHARED);
    assert_eq!(s.create(&name).0, 202);
    let recs = s.wait_ready(&[&name], Duration::from_secs(60));
    let ds = devices(&recs[0]);
    std::fs::remove_file(&ds[1]).unwrap();
    drop(s);
    let s = Server::start(&h, &data, None, SHARED);
    let recs = s.wait_ready(&[&name], Duration::from_secs(60));
    let again = devices(&recs[0]);
    assert_eq!(again, ds);
    assert!(again.iter().all(|p| p.exists()));
    fsck_meta(recs[0]["disk_path"].as_str().unwrap(), &again);
}

/// kill -9 while the server pulls and while it converts: a restart
/// finishes the build, and no temp file of a killed layer build is left.
#[test]
fn serve_with_shared_layers_finishes_its_builds_after_kill_9() {
    let f = FaultRegistry::start();
    f.add_image("v1", &sample_image(93, 2 << 10));
    let name = format!("{}/crash/shared-serve:v1", f.host());
    let h = Hoist::new();
    let data = h.home.path().to_path_buf();
    for (round, aim) in ["pulling", "converting", "converting"]
        .into_iter()
        .enumerate()
    {
        f.set(|p| p.chunk_delay = Duration::from_millis(12));
        let s = Server::start(&h, &data, None, SHARED);
        if round == 0 {
            assert_eq!(s.create(&name).0, 202);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (_, r) = s.image(&name);
            if r["status"] == aim || r["status"] == "ready" || std::time::Instant::now() > deadline
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        s.kill9();
    }
    f.set(|p| p.chunk_delay = Duration::ZERO);
    let s = Server::start(&h, &data, None, SHARED);
    let recs = s.wait_ready(&[&name], Duration::from_secs(60));
    let ds = devices(&recs[0]);
    assert_eq!(ds.len(), 3);
    fsck_meta(recs[0]["disk_path"].as_str().unwrap(), &ds);
    let temps: Vec<String> = std::fs::read_dir(data.join("layers"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(temps.is_empty(), "{temps:?}");
}

/// `--shared-layers` with a format other than erofs is refused at start.
#[test]
fn serve_refuses_shared_layers_without_erofs() {
    let h = Hoist::new();
    let o = h
        .cmd()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(h.home.path())
        .args(["--format", "ext4", "--shared-layers"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("erofs only"), "{err}");
}
