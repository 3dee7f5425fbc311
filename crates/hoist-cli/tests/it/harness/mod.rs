pub mod faults;
pub mod http;
pub mod image;
pub mod registry;
pub mod server;
pub mod token;
pub mod treesum;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

pub use registry::registries;

/// A fresh `hoist` command: private HOME (no stray docker config), no
/// proxies, its own cache dir.
pub struct Hoist {
    pub home: tempfile::TempDir,
    pub cache: PathBuf,
}

impl Hoist {
    pub fn new() -> Hoist {
        let home = tempfile::tempdir().unwrap();
        let cache = home.path().join("cache");
        Hoist { home, cache }
    }

    /// The OCI layout inside the cache.
    pub fn layout(&self) -> PathBuf {
        self.cache.join("oci-v1")
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_hoist"));
        for v in [
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "http_proxy",
            "https_proxy",
            "all_proxy",
            "DOCKER_CONFIG",
            "REGISTRY_AUTH_FILE",
            "XDG_RUNTIME_DIR",
            "XDG_CACHE_HOME",
            "RUST_LOG",
            "HOIST_CACHE_DIR",
        ] {
            c.env_remove(v);
        }
        c.env("HOME", self.home.path())
            .env("NO_PROXY", "127.0.0.1,localhost")
            .arg("--cache-dir")
            .arg(&self.cache);
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    /// Run and require success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "hoist {args:?} failed ({:?}):\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Run with extra environment variables and require success; returns
    /// stdout.
    pub fn ok_env(&self, env: &[(&str, &std::ffi::OsStr)], args: &[&str]) -> String {
        let mut c = self.cmd();
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.args(args).output().unwrap();
        assert!(
            out.status.success(),
            "hoist {args:?} with {env:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Run, require the exit code, return stderr.
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(
            out.status.code(),
            Some(code),
            "hoist {args:?}: wrong exit code; stderr:\n{stderr}"
        );
        stderr
    }

    /// Every blob file's sha256 equals its name; returns how many there are.
    pub fn assert_blobs_verified(&self) -> usize {
        assert_blobs_verified(&self.layout())
    }
}

/// A test that cannot run here says SKIPPED, and fails under CI, where
/// everything it needs is installed and it runs as root.
pub fn skip(why: &str) {
    assert!(std::env::var_os("CI").is_none(), "under CI: {why}");
    eprintln!("SKIPPED: {why}");
}

pub fn assert_blobs_verified(layout: &Path) -> usize {
    let dir = layout.join("blobs/sha256");
    let mut n = 0;
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return 0;
    };
    for e in entries {
        let p = e.unwrap().path();
        let bytes = std::fs::read(&p).unwrap();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        assert_eq!(
            image::sha256(&bytes),
            format!("sha256:{name}"),
            "blob {} is corrupt",
            p.display()
        );
        n += 1;
    }
    n
}

/// The hoist binary copied into `dir` (world-readable), for runs as another
/// user: the build tree may sit below a directory they cannot enter.
pub fn hoist_for_anyone(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let exe = dir.join("hoist");
    if !exe.exists() {
        std::fs::copy(env!("CARGO_BIN_EXE_hoist"), &exe).unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    exe
}

/// A repository name no other test uses.
pub fn unique_repo(prefix: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "hoist-test/{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// A three-layer image of unique content, about `layer_kib` KiB a layer.
pub fn sample_image(seed: u64, layer_kib: usize) -> image::Image {
    let a = image::noise(seed, layer_kib * 1024);
    let b = image::noise(seed + 1, layer_kib * 1024);
    let c = format!("seed {seed}\n");
    image::Builder::new()
        .layer(&[("etc/hello", b"hello\n"), ("data/a.bin", &a)])
        .layer(&[("data/b.bin", &b)])
        .layer(&[("etc/seed", c.as_bytes())])
        .build()
}

/// Two images over one shared base layer of `base_kib` KiB, each with a
/// small top layer of its own (`a`, `b`).
pub fn shared_base_pair(seed: u64, base_kib: usize) -> (image::Image, image::Image) {
    let base = image::noise(seed, base_kib << 10);
    let one = |name: &str| {
        image::Builder::new()
            .layer(&[("base", &base)])
            .layer(&[(name, name.as_bytes())])
            .build()
    };
    let (a, b) = (one("a"), one("b"));
    assert_eq!(a.layers[0].digest(), b.layers[0].digest());
    (a, b)
}

/// hoist's temp files and trees (`.NAME.hoist-…`) left in `dir`.
pub fn hoist_leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains(".hoist-"))
        .collect()
}
