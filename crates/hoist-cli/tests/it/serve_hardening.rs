//! `hoist serve` tried as a hostile client, a race and a crash would try
//! it. Each test is named after what broke before it was fixed.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::faults::FaultRegistry;
use crate::harness::server::{e2fsck_ok, temp_files_under, Server};
use crate::harness::{registries, sample_image, unique_repo, Hoist};
use crate::serve::slow_many_files;

const TOKEN: &str = "hardening-T0ken";

/// Poll GET until `done` says the record is where it should be.
fn wait_for(s: &Server, name: &str, secs: u64, done: impl Fn(&Value) -> bool) -> Value {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        let (_, r) = s.image(name);
        if done(&r) {
            return r;
        }
        assert!(
            Instant::now() < end,
            "{name}: still {r}\n{}",
            s.log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn status_is(want: &'static str) -> impl Fn(&Value) -> bool {
    move |r| r["status"] == want
}

/// A pending record always says where it stands in the queue.
fn assert_pending_has_a_place(r: &Value) {
    if r["status"] == "pending" {
        assert!(r["queue_position"].is_u64(), "pending without a place: {r}");
    }
}

/// Regression: the guard parsed hosts with its own strict parser while the
/// URL library read numeric spellings as addresses, so `2852039166:80`,
/// `0xa9fea9fe:80`, `0251.0376.0251.0376` and `169.254.43518` reached
/// 169.254.169.254, and `0:5010` reached 0.0.0.0 (services on loopback).
#[test]
fn no_spelling_of_a_link_local_or_unspecified_host_reaches_a_listener_there() {
    let ok = std::process::Command::new("unshare")
        .args(["--net", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        crate::harness::skip("cannot make a network namespace here (unshare --net needs root)");
        return;
    }
    let h = Hoist::new();
    let dir = h.home.path();
    let data = dir.join("data");
    let seen = dir.join("seen.log");
    let listener = dir.join("listen.py");
    std::fs::write(
        &listener,
        format!(
            "import socket, threading\n\
             log = open({seen:?}, 'a')\n\
             def serve(addr, port):\n\
             \x20   s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             \x20   s.bind((addr, port)); s.listen(64)\n\
             \x20   while True:\n\
             \x20       c, a = s.accept(); log.write(f'{{addr}}:{{port}}\\n'); log.flush(); c.close()\n\
             ts = [threading.Thread(target=serve, args=a, daemon=True) for a in \
             [('169.254.169.254', 80), ('169.254.169.254', 443), ('169.254.169.254', 5000), ('127.0.0.1', 5010)]]\n\
             [t.start() for t in ts]\n\
             open({ready:?}, 'w').close()\n\
             [t.join() for t in ts]\n",
            seen = seen.display().to_string(),
            ready = dir.join("ready").display().to_string(),
        ),
    )
    .unwrap();
    let names = [
        "2852039166:80/x:y",
        "0xa9fea9fe:80/x:y",
        "0251.0376.0251.0376/x:y",
        "169.254.43518/x:y",
        "169.254.169.254:5000/x:y",
        "0:5010/x:y",
        "0.0.0.0:5010/x:y",
        "0x0:5010/x:y",
        "[::]:5010/x:y",
        "[::ffff:169.254.169.254]:80/x:y",
        "[::ffff:a9fe:a9fe]:80/x:y",
    ];
    let posts: String = names
        .iter()
        .map(|n| {
            format!(
                "curl -s -w '\\n%{{http_code}}\\n' -XPOST \"$url/images\" -d '{{\"name\":\"{n}\"}}'; "
            )
        })
        .collect();
    let log = dir.join("serve.log");
    let script = format!(
        "ip link set lo up && ip addr add 169.254.169.254/32 dev lo || exit 9; \
         python3 {listener} & lpid=$!; \
         for i in $(seq 100); do [ -e {ready} ] && break; sleep 0.1; done; \
         {hoist} --cache-dir {cache} serve --listen 127.0.0.1:0 --data-dir {data} >/dev/null 2>{log} & pid=$!; \
         for i in $(seq 100); do grep -q 'listening on' {log} && break; sleep 0.1; done; \
         url=$(sed -n 's/.*listening on //p' {log} | head -1); \
         {posts} \
         curl -s -o /dev/null --max-time 2 http://169.254.169.254:80/control; \
         kill $pid $lpid; wait $pid",
        listener = listener.display(),
        ready = dir.join("ready").display(),
        hoist = env!("CARGO_BIN_EXE_hoist"),
        cache = h.cache.display(),
        data = data.display(),
        log = log.display(),
    );
    let out = std::process::Command::new("unshare")
        .args(["--net", "sh", "-c", &script])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let lines: Vec<&str> = stdout.lines().collect();
    let server_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        lines.len(),
        2 * names.len(),
        "{stdout}\n{}\n{server_log}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut messages = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let body: Value = serde_json::from_str(lines[2 * i]).unwrap_or(Value::Null);
        assert_eq!(lines[2 * i + 1], "403", "{n}: {}", lines[2 * i]);
        assert_eq!(body["code"], "registry_not_allowed", "{n}: {body}");
        let m = body["message"].as_str().unwrap().to_string();
        assert!(
            m.contains("link-local, metadata or unspecified"),
            "{n}: {m}"
        );
        messages.push(m);
    }
    // Only the control request (sent by curl itself) reached a listener:
    // the listener works, and no POST made the server connect.
    let seen = std::fs::read_to_string(&seen).unwrap_or_default();
    assert_eq!(
        seen.lines().collect::<Vec<_>>(),
        vec!["169.254.169.254:80"],
        "{server_log}"
    );
}

/// Regression: a DELETE while `converting`, then a POST at once, left the
/// record `pending` with no queue position forever (the cancelled build
/// was still listed as running, so the new one was never queued); and a
/// first POST could briefly answer `pending` with `queue_position: null`.
#[test]
fn an_image_deleted_while_converting_and_posted_again_is_built_anew() {
    let f = FaultRegistry::start();
    slow_many_files(&f, 1501);
    let name = format!("{}/requeue/x:v1", f.host());
    let h = Hoist::new();
    let data = h.home.path().to_path_buf();
    let s = Arc::new(Server::start(&h, &data, None, &[]));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (s, stop, name) = (s.clone(), stop.clone(), name.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let (st, r) = s.image(&name);
                if st == 200 {
                    assert_pending_has_a_place(&r);
                    n += 1;
                }
            }
            n
        })
    };
    let (st, r) = s.create(&name);
    assert_eq!(st, 202, "{r}");
    assert_pending_has_a_place(&r);
    wait_for(&s, &name, 60, status_is("converting"));
    assert_eq!(s.delete(&name).0, 204);
    let (st, r) = s.create(&name);
    assert_eq!(st, 202, "{r}");
    assert_pending_has_a_place(&r);
    let r = wait_for(&s, &name, 120, |r| {
        r["status"] == "ready" || r["status"] == "failed"
    });
    assert_eq!(r["status"], "ready", "{r}");
    stop.store(true, Ordering::Relaxed);
    assert!(watcher.join().unwrap() > 10);
    assert!(e2fsck_ok(Path::new(r["disk_path"].as_str().unwrap())));
}

/// Regression: POSTs and DELETEs of one name in parallel panicked the
/// server (`expect("just written")`): 3,350 of 18,545 requests got 500.
#[test]
fn posts_deletes_and_gcs_of_one_name_in_parallel_never_answer_5xx_and_settle() {
    let reg = &registries().plain;
    let repo = unique_repo("race");
    reg.push_image(&repo, "v1", &sample_image(1502, 32));
    let name = format!("{}/{repo}:v1", reg.host);
    let h = Hoist::new();
    let data = h.home.path().to_path_buf();
    let s = Arc::new(Server::start(
        &h,
        &data,
        None,
        &["--max-concurrent-builds", "2"],
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..6)
        .map(|i| {
            let (s, stop, name, answers, count) = (
                s.clone(),
                stop.clone(),
                name.clone(),
                answers.clone(),
                count.clone(),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let (st, body) = match i % 3 {
                        0 => s.create(&name),
                        1 => s.delete(&name),
                        _ => s.post("/gc", json!({})),
                    };
                    assert!(st < 500, "{st} {body}");
                    if st == 200 || st == 202 {
                        assert_pending_has_a_place(&body);
                    }
                    *answers.lock().unwrap().entry(st).or_insert(0) += 1;
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(8));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    eprintln!("answers: {:?}", answers.lock().unwrap());
    assert!(count.load(Ordering::Relaxed) > 100);
    // Whatever state the race left, it settles: ready, failed or gone.
    let (st, r) = s.image(&name);
    if st == 200 {
        let r = wait_for(&s, &name, 60, |r| {
            r["status"] == "ready" || r["status"] == "failed"
        });
        assert_eq!(r["status"], "ready", "{r}");
    } else {
        assert_eq!(st, 404, "{r}");
    }
    // And a last POST builds a good disk.
    assert_eq!(s.create(&name).0, 202);
    let r = wait_for(&s, &name, 60, status_is("ready"));
    assert!(e2fsck_ok(Path::new(r["disk_path"].as_str().unwrap())));
    let log = s.log.lock().unwrap().clone();
    assert!(!log.contains("panicked"), "{log}");
}

/// Regression: records kept absolute disk paths; after the data dir moved,
/// GET answered `ready` with a path that did not exist and GC deleted the
/// real disks as orphans.
#[test]
fn a_moved_or_symlinked_data_dir_keeps_every_disk_through_gc() {
    let reg = &registries().plain;
    let repo = unique_repo("moved");
    reg.push_image(&repo, "v1", &sample_image(1503, 16));
    let name = format!("{}/{repo}:v1", reg.host);
    let h = Hoist::new();
    let first = h.home.path().join("first");
    let s = Server::start(&h, &first, None, &[]);
    assert_eq!(s.create(&name).0, 202);
    wait_for(&s, &name, 60, status_is("ready"));
    let (_, status) = s.terminate();
    assert!(status.success());
    let moved = h.home.path().join("moved");
    std::fs::rename(&first, &moved).unwrap();
    let link = h.home.path().join("via-link");
    std::os::unix::fs::symlink(&moved, &link).unwrap();
    for dir in [&moved, &link] {
        let s = Server::start(&h, dir, None, &[]);
        let r = wait_for(&s, &name, 10, status_is("ready"));
        let disk = r["disk_path"].as_str().unwrap().to_string();
        assert!(disk.starts_with(&dir.display().to_string()), "{disk}");
        assert!(Path::new(&disk).is_file(), "{disk}");
        let (st, gc) = s.post("/gc", json!({}));
        assert_eq!(st, 200);
        assert_eq!(gc["disk_files"], json!([]), "{gc}");
        assert!(Path::new(&disk).is_file(), "GC took the disk");
        assert!(e2fsck_ok(Path::new(&disk)));
        let (_, status) = s.terminate();
        assert!(status.success());
    }
}

/// Regression: every kill -9 during a pull leaked its `.partial` blobs;
/// neither a restart nor the finished rebuild removed them, and `hoist
/// fsck` listed them but exited 0.
#[test]
fn a_restart_sweeps_the_partial_blobs_of_a_killed_pull_and_fsck_flags_them_before() {
    let f = FaultRegistry::start();
    slow_many_files(&f, 1504);
    f.set(|p| p.chunk_delay = Duration::from_millis(20));
    let name = format!("{}/partial/x:v1", f.host());
    let h = Hoist::new();
    let data = h.home.path().to_path_buf();
    let tmp = h.layout().join(".hoist/tmp");
    let s = Server::start(&h, &data, None, &[]);
    assert_eq!(s.create(&name).0, 202);
    let end = Instant::now() + Duration::from_secs(30);
    while std::fs::read_dir(&tmp).map_or(0, |d| d.count()) == 0 {
        assert!(Instant::now() < end, "no blob was being written");
        std::thread::sleep(Duration::from_millis(10));
    }
    s.kill9();
    let partials: Vec<_> = std::fs::read_dir(&tmp).unwrap().flatten().collect();
    assert!(!partials.is_empty());
    let out = h.run(&["fsck"]);
    assert_eq!(
        out.status.code(),
        Some(6),
        "fsck must fail on a dead writer's temp file: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    f.set(|p| p.chunk_delay = Duration::ZERO);
    let s = Server::start(&h, &data, None, &[]);
    wait_for(&s, &name, 120, status_is("ready"));
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(temp_files_under(&data).is_empty());
    let out = h.ok(&["fsck"]);
    assert!(out.contains("consistent"), "{out}");
}

/// Set RLIMIT_NOFILE of the child to `n` (soft and hard).
fn nofile(c: &mut std::process::Command, n: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setrlimit is async-signal-safe; nothing else runs in pre_exec.
    unsafe {
        c.pre_exec(move || {
            let l = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &l) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn idle_clients(url: &str, n: usize) -> Vec<TcpStream> {
    let addr = url.trim_start_matches("http://");
    (0..n)
        .filter_map(|_| TcpStream::connect(addr).ok())
        .collect()
}

fn fresh_client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap()
}

/// Regression: no header-read timeout, no idle timeout, no cap: under a
/// 128-descriptor limit, 150 idle connections stopped the server from
/// answering anyone. Now the cap (derived from that limit) closes the
/// longest-idle connection for a new client; and with a cap above the
/// limit, accept's EMFILE backs off and frees a descriptor the same way.
#[test]
fn idle_connections_at_the_cap_or_the_descriptor_limit_never_lock_out_a_new_client() {
    for extra in [vec![], vec!["--max-connections", "1000"]] {
        let h = Hoist::new();
        let data = h.home.path().to_path_buf();
        let mut args = vec!["--header-timeout", "120", "--idle-timeout", "120"];
        args.extend(extra.iter().copied());
        let s = Server::start_with(&h, &data, Some(TOKEN), &args, |c| nofile(c, 128));
        let _held = idle_clients(&s.url, 150);
        let http = fresh_client();
        let t = Instant::now();
        let r = http.get(format!("{}/healthz", s.url)).send().unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let r = http
            .get(format!("{}/images", s.url))
            .bearer_auth(TOKEN)
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{extra:?}");
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        let log = s.log.lock().unwrap().clone();
        if extra.is_empty() {
            assert!(log.contains("at most 32 connections"), "{log}");
        } else {
            assert!(log.contains("Too many open files"), "{log}");
        }
    }
}

/// A client that sends half a header, or sits on a kept-alive connection,
/// is closed after the configured timeout.
#[test]
fn slow_headers_and_idle_keep_alive_connections_are_closed() {
    let h = Hoist::new();
    let data = h.home.path().to_path_buf();
    let s = Server::start(
        &h,
        &data,
        None,
        &["--header-timeout", "1", "--idle-timeout", "2"],
    );
    let addr = s.url.trim_start_matches("http://").to_string();
    let closed_within = |mut c: TcpStream, secs: u64| {
        c.set_read_timeout(Some(Duration::from_secs(secs))).unwrap();
        let t = Instant::now();
        let mut buf = Vec::new();
        let r = c.read_to_end(&mut buf);
        assert!(r.is_ok(), "not closed within {secs} s: {r:?}");
        (t.elapsed(), String::from_utf8_lossy(&buf).to_string())
    };
    let mut slow = TcpStream::connect(&addr).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let (took, _) = closed_within(slow, 6);
    assert!(took < Duration::from_secs(4), "{took:?}");
    let mut kept = TcpStream::connect(&addr).unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (took, answer) = closed_within(kept, 8);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(took < Duration::from_secs(6), "{took:?}");
}

/// Regression: a ready image whose disk was deleted still said `ready` and
/// was never rebuilt; a truncated one too.
#[test]
fn a_deleted_or_truncated_disk_is_noticed_and_built_again_from_the_cache() {
    let reg = &registries().plain;
    let repo = unique_repo("lost-disk");
    reg.push_image(&repo, "v1", &sample_image(1505, 32));
    let name = format!("{}/{repo}:v1", reg.host);
    let h = Hoist::new();
    let data = h.home.path().to_path_buf();
    let s = Server::start(&h, &data, None, &[]);
    assert_eq!(s.create(&name).0, 202);
    let r = wait_for(&s, &name, 60, status_is("ready"));
    let disk = std::path::PathBuf::from(r["disk_path"].as_str().unwrap());
    let blob_gets = reg.requests(&repo, "blobs").len();
    // Deleted while the server runs: the next GET notices.
    std::fs::remove_file(&disk).unwrap();
    let (_, r) = s.image(&name);
    assert_ne!(r["status"], "ready", "{r}");
    assert_pending_has_a_place(&r);
    wait_for(&s, &name, 60, status_is("ready"));
    assert!(e2fsck_ok(&disk));
    // Truncated while the server is down: the start notices.
    let (_, status) = s.terminate();
    assert!(status.success());
    let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    f.set_len(4096).unwrap();
    drop(f);
    let s = Server::start(&h, &data, None, &[]);
    let (_, r) = s.image(&name);
    assert_ne!(r["status"], "ready", "{r}");
    let r = wait_for(&s, &name, 60, status_is("ready"));
    assert_eq!(
        r["size_bytes"].as_u64().unwrap(),
        std::fs::metadata(&disk).unwrap().len()
    );
    assert!(e2fsck_ok(&disk));
    assert_eq!(
        reg.requests(&repo, "blobs").len(),
        blob_gets,
        "rebuilt from the cache, not the registry"
    );
}

/// Regression: a database garbled in the middle let the server start and
/// then answer 500.
#[test]
fn a_database_garbled_in_the_middle_is_refused_at_start_with_what_to_do() {
    let reg = &registries().plain;
    let repo = unique_repo("garbled");
    reg.push_image(&repo, "v1", &sample_image(1506, 8));
    let name = format!("{}/{repo}:v1", reg.host);
    let h = Hoist::new();
    let data = h.home.path().to_path_buf();
    let s = Server::start(&h, &data, None, &[]);
    assert_eq!(s.create(&name).0, 202);
    wait_for(&s, &name, 60, status_is("ready"));
    let (_, status) = s.terminate();
    assert!(status.success());
    let db = data.join("state.db");
    let len = std::fs::metadata(&db).unwrap().len();
    assert!(len >= 8192, "{len}");
    let mut bytes = std::fs::read(&db).unwrap();
    let mid = (len / 2) as usize / 4096 * 4096;
    for (i, b) in bytes[mid..mid + 4096].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(37) ^ 0x5a;
    }
    std::fs::write(&db, bytes).unwrap();
    // A server that starts anyway would run on: 30 s is its answer.
    let mut c = h.cmd();
    let out = std::process::Command::new("timeout")
        .arg("30")
        .arg(c.get_program())
        .args(c.get_args())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .envs(c.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .output()
        .unwrap();
    let _ = &mut c;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && out.status.code() != Some(124),
        "started on a garbled database: {err}"
    );
    assert!(err.contains("state.db") && err.contains("damaged"), "{err}");
    assert!(err.contains("move it aside"), "{err}");
    assert!(!err.contains("listening on"), "{err}");
}

/// Regression: a database truncated to 0 bytes let the server start empty,
/// and the next GC deleted every disk as an orphan.
#[test]
fn a_database_truncated_to_nothing_rebuilds_its_records_from_the_disks_and_gc_keeps_them() {
    let reg = &registries().plain;
    let repo = unique_repo("lost-db");
    reg.push_image(&repo, "a", &sample_image(1507, 8));
    reg.push_image(&repo, "b", &sample_image(1508, 8));
    let names = [
        format!("{}/{repo}:a", reg.host),
        format!("{}/{repo}:b", reg.host),
    ];
    let h = Hoist::new();
    let data = h.home.path().to_path_buf();
    let s = Server::start(&h, &data, None, &[]);
    let mut before = Vec::new();
    for n in &names {
        assert_eq!(s.create(n).0, 202);
        before.push(wait_for(&s, n, 60, status_is("ready")));
    }
    let (_, status) = s.terminate();
    assert!(status.success());
    std::fs::File::create(data.join("state.db")).unwrap();
    for ext in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(data.join(format!("state.db{ext}")));
    }
    let s = Server::start(&h, &data, None, &[]);
    for (n, b) in names.iter().zip(&before) {
        let (st, r) = s.image(n);
        assert_eq!(st, 200, "{n}: {r}");
        assert_eq!(r["status"], "ready", "{r}");
        assert_eq!(r["digest"], b["digest"]);
        assert_eq!(r["disk_path"], b["disk_path"]);
        assert_eq!(r["cmd"], b["cmd"], "metadata from the cache");
    }
    let (_, gc) = s.post("/gc", json!({}));
    assert_eq!(gc["disk_files"], json!([]), "{gc}");
    for b in &before {
        assert!(e2fsck_ok(Path::new(b["disk_path"].as_str().unwrap())));
    }
    assert!(s.log.lock().unwrap().contains("rebuilt"));
}

/// Regression: colour codes in a log written to a pipe; a registry's error
/// message logged with its newlines, so a registry could forge log lines.
#[test]
fn a_registry_cannot_forge_log_lines_or_colour_a_log_that_is_not_a_terminal() {
    let f = FaultRegistry::start();
    f.add_image("v1", &sample_image(1509, 4));
    let evil = "no\n2026-12-05T00:00:00.000000Z  INFO FORGED line\r\u{1b}[31mred\u{7}";
    // The config is served (the POST resolves it); the layers are denied.
    f.set(|p| p.blob_denied = Some((1, evil.into())));
    let name = format!("{}/forge/x:v1", f.host());
    let h = Hoist::new();
    let data = h.home.path().to_path_buf();
    // TERM says colour would be fine: it is the pipe that rules it out.
    let s = Server::start_with(&h, &data, None, &[], |c| {
        c.env("TERM", "xterm-256color").env_remove("NO_COLOR");
    });
    assert_eq!(s.create(&name).0, 202);
    let r = wait_for(&s, &name, 60, status_is("failed"));
    let err = r["error"].as_str().unwrap();
    assert!(err.contains("FORGED"), "{err}");
    assert!(!err.chars().any(|c| c.is_control()), "{err:?}");
    std::thread::sleep(Duration::from_millis(200));
    let log = s.log.lock().unwrap().clone();
    assert!(log.contains("FORGED"), "the message is logged: {log}");
    assert!(
        !log.contains('\u{1b}'),
        "colour or escape in a piped log: {log:?}"
    );
    assert!(!log.contains('\r') && !log.contains('\u{7}'), "{log:?}");
    for line in log.lines() {
        assert!(
            !line.contains("FORGED") || line.contains("failed"),
            "{line}"
        );
        assert!(!line.starts_with("2026-12-05T00:00:00"), "forged: {line}");
    }
}

/// Regression: 413 answered text/plain, 405 an empty body, `%ff` and
/// duplicate query parameters were not JSON, and unknown body fields were
/// silently ignored.
#[test]
fn every_error_under_images_gc_and_metrics_is_the_documented_json() {
    let h = Hoist::new();
    let data = h.home.path().to_path_buf();
    let s = Server::start(&h, &data, Some(TOKEN), &[]);
    let big = format!("{{\"name\":\"{}\"}}", "a".repeat(200 << 10));
    for (m, path, body, status, code) in [
        ("POST", "/images", big.as_str(), 413, "body_too_large"),
        ("PUT", "/images", "", 405, "method_not_allowed"),
        ("PATCH", "/images/x%2Fy%3Az", "", 405, "method_not_allowed"),
        ("GET", "/gc", "", 405, "method_not_allowed"),
        ("GET", "/images/%ff%fe", "", 400, "invalid_name"),
        (
            "GET",
            "/images?status=ready&status=failed",
            "",
            400,
            "invalid_request",
        ),
        ("POST", "/gc?dry_run=yes", "", 400, "invalid_request"),
        ("GET", "/nope", "", 404, "not_found"),
        (
            "POST",
            "/images",
            "{\"name\":\"a:b\",\"force\":true}",
            400,
            "invalid_request",
        ),
        ("POST", "/images", "not json", 400, "invalid_request"),
    ] {
        let (st, ct, text) = s.raw(m, path, body);
        assert_eq!(st, status, "{m} {path}: {text}");
        assert!(
            ct.starts_with("application/json"),
            "{m} {path}: {ct} {text}"
        );
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["code"], code, "{m} {path}: {v}");
        assert!(v["message"].is_string(), "{v}");
    }
    let (_, _, text) = s.raw("POST", "/images", "{\"name\":\"a:b\",\"force\":true}");
    assert!(text.contains("force"), "the unknown field is named: {text}");
    // Without the token, JSON too, with its challenge.
    let r = fresh_client()
        .get(format!("{}/metrics", s.url))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let v: Value = serde_json::from_str(&r.text().unwrap()).unwrap();
    assert_eq!(v["code"], "unauthorized");
}
