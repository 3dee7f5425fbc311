//! Leases, `rm` and garbage collection, all under the store's lock.
//!
//! A lease (containerd's word) protects the digests that work in progress
//! needs: a pull takes one naming the manifest, config and layers before it
//! checks what the cache holds, and drops it once the image is in
//! index.json. GC keeps everything reachable from index.json and from every
//! live lease. A lease is a file in `.hoist/leases/` flocked by its holder,
//! so a lease of a killed process is seen as dead at once — no timeouts.

use std::collections::HashSet;
use std::io::{Seek, Write};
use std::path::{Path, PathBuf};

use hoist_spec::{manifest, Algorithm, Digest};
use serde::Serialize;

use crate::error::StoreError;
use crate::index::{self, IndexEntry};
use crate::temp::TempFile;
use crate::Store;

const MANIFEST_LIMIT: u64 = 16 << 20;

/// Digests held against GC while this value lives.
#[derive(Debug)]
pub struct Lease {
    file: TempFile,
    root: PathBuf,
    digests: Vec<Digest>,
}

impl Lease {
    /// Add digests to the lease. Written under the store's lock, so a GC
    /// run sees the lease either before or after, never half.
    pub fn add(&mut self, more: &[Digest]) -> Result<(), StoreError> {
        let _l = index::lock(&self.root)?;
        for d in more {
            if !self.digests.contains(d) {
                self.digests.push(d.clone());
            }
        }
        let text: String = self.digests.iter().map(|d| format!("{d}\n")).collect();
        let path = self.file.path().to_path_buf();
        let f = self.file.file();
        f.set_len(0).map_err(StoreError::io(&path))?;
        f.rewind().map_err(StoreError::io(&path))?;
        f.write_all(text.as_bytes())
            .map_err(StoreError::io(&path))?;
        Ok(())
    }

    /// Replace the lease's digests (those no longer held are let go).
    pub fn set(&mut self, digests: &[Digest]) -> Result<(), StoreError> {
        self.digests.clear();
        self.add(digests)
    }

    pub fn digests(&self) -> &[Digest] {
        &self.digests
    }
}

/// What `gc` removed (or, with `dry_run`, would remove).
#[derive(Debug, Default, Clone, Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    pub blobs: Vec<Digest>,
    pub blob_bytes: u64,
    pub temp_files: Vec<PathBuf>,
    pub temp_bytes: u64,
    /// Tree metadata of images no longer in the cache.
    pub tree_files: Vec<PathBuf>,
    pub stale_leases: usize,
    pub live_leases: usize,
}

impl GcReport {
    pub fn bytes(&self) -> u64 {
        self.blob_bytes + self.temp_bytes
    }
}

/// What `remove` did for one name.
#[derive(Debug, Clone, Serialize)]
pub struct Removed {
    pub name: String,
    pub digest: Digest,
    /// The entry went too (it had no name left, or a digest was named).
    pub image_removed: bool,
}

fn file_size(p: &Path) -> u64 {
    std::fs::symlink_metadata(p).map(|m| m.len()).unwrap_or(0)
}

impl Store {
    /// A new, empty lease.
    pub fn lease(&self) -> Result<Lease, StoreError> {
        let path = self
            .root()
            .join(".hoist")
            .join("leases")
            .join(format!("{}.lease", crate::temp::rand_tag()));
        let file = TempFile::create(path.clone()).map_err(StoreError::io(&path))?;
        Ok(Lease {
            file,
            root: self.root().to_path_buf(),
            digests: Vec::new(),
        })
    }

    /// Remove the temp files and leases whose writers are gone (what a
    /// killed pull left: `*.partial` blobs, dead leases), and nothing else.
    /// Judged by their locks, so a live writer's are never touched; safe
    /// at any time, without the index lock. Returns what was removed.
    pub fn sweep_temps(&self) -> Result<Vec<PathBuf>, StoreError> {
        let mut out = Vec::new();
        for dir in ["tmp", "leases"] {
            let dir = self.root().join(".hoist").join(dir);
            let (stale, _) = crate::temp::scan(&dir).map_err(StoreError::io(&dir))?;
            for p in stale {
                if std::fs::remove_file(&p).is_ok() {
                    out.push(p);
                }
            }
        }
        Ok(out)
    }

    /// Remove names (`docker.io/library/alpine:latest`) from their images;
    /// an image goes with its last name. A `digest` (an image pulled by
    /// digest, or named by `repo@sha256:…`) removes its entry whatever names
    /// it has. Returns what matched; nothing matched is not an error here.
    pub fn remove(
        &self,
        name: Option<&str>,
        digest: Option<&Digest>,
    ) -> Result<Vec<Removed>, StoreError> {
        index::update(self.root(), |idx| {
            let mut out = Vec::new();
            let mut keep: Vec<IndexEntry> = Vec::new();
            for mut e in std::mem::take(&mut idx.manifests) {
                let Some(d) = e
                    .is_hoist_entry()
                    .then(|| e.digest.parse::<Digest>().ok())
                    .flatten()
                else {
                    keep.push(e);
                    continue;
                };
                if digest == Some(&d) {
                    out.push(Removed {
                        name: name.unwrap_or_default().to_string(),
                        digest: d,
                        image_removed: true,
                    });
                    continue;
                }
                if let Some(n) = name.filter(|_| digest.is_none()) {
                    let names = e.names();
                    if names.iter().any(|x| x == n) {
                        let left: Vec<String> = names.into_iter().filter(|x| x != n).collect();
                        let gone = left.is_empty();
                        out.push(Removed {
                            name: n.to_string(),
                            digest: d,
                            image_removed: gone,
                        });
                        if gone {
                            continue;
                        }
                        e.set_names(&left);
                    }
                }
                keep.push(e);
            }
            idx.manifests = keep;
            out
        })
    }

    /// Delete every blob that neither index.json nor a live lease reaches,
    /// temp files whose writers are gone, dead leases, and the tree metadata
    /// of images no longer recorded. All under the store's lock, so no pull
    /// can record an image or take a lease half-way through.
    pub fn gc(&self, dry_run: bool) -> Result<GcReport, StoreError> {
        let root = self.root().to_path_buf();
        let _l = index::lock(&root)?;
        let mut r = GcReport {
            dry_run,
            ..GcReport::default()
        };
        let Roots {
            digests,
            recorded,
            dead_leases,
            live_leases,
        } = self.roots(&root)?;
        r.stale_leases = dead_leases.len();
        if !dry_run {
            for p in &dead_leases {
                let _ = std::fs::remove_file(p);
            }
        }
        r.live_leases = live_leases;
        let keep = self.reachable(digests);
        for (algo, dir) in [(Algorithm::Sha256, "sha256"), (Algorithm::Sha512, "sha512")] {
            let dir = root.join("blobs").join(dir);
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                let Ok(d) = format!("{}:{name}", algo.as_str()).parse::<Digest>() else {
                    continue; // not ours to judge: fsck reports strays
                };
                if keep.contains(&d) {
                    continue;
                }
                r.blob_bytes += file_size(&e.path());
                if !dry_run {
                    std::fs::remove_file(e.path()).map_err(StoreError::io(e.path()))?;
                }
                r.blobs.push(d);
            }
        }
        let tmp = root.join(".hoist").join("tmp");
        let (stale, _) = crate::temp::scan(&tmp).map_err(StoreError::io(&tmp))?;
        for p in stale {
            r.temp_bytes += file_size(&p);
            if !dry_run {
                let _ = std::fs::remove_file(&p);
            }
            r.temp_files.push(p);
        }
        // A record goes with its blob.
        for (blob, _, path) in self.diff_id_records() {
            if !keep.contains(&blob) && !dry_run {
                let _ = std::fs::remove_file(path);
            }
        }
        let trees = root.join(".hoist").join("trees");
        for e in std::fs::read_dir(&trees)
            .map_err(StoreError::io(&trees))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().to_string();
            let hex = name.split('.').next().unwrap_or("");
            if !recorded.contains(hex) {
                if !dry_run {
                    let _ = std::fs::remove_file(e.path());
                }
                r.tree_files.push(e.path());
            }
        }
        r.blobs.sort_by_key(|d| d.to_string());
        Ok(r)
    }

    /// Delete those of `digests` that nothing keeps: no cache entry reaches
    /// them and no running pull's lease names them (what an import that
    /// failed halfway wrote). Under the index lock, like `gc`. Returns how
    /// many were deleted.
    pub fn discard(&self, digests: &[Digest]) -> Result<usize, StoreError> {
        let root = self.root().to_path_buf();
        let _l = index::lock(&root)?;
        let keep = self.reachable(self.roots(&root)?.digests);
        let mut n = 0;
        for d in digests {
            let p = self.blob_path(d);
            if !keep.contains(d) && p.exists() {
                std::fs::remove_file(&p).map_err(StoreError::io(&p))?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// What keeps blobs alive: the manifests index.json records and the
    /// digests live leases name. The caller holds the index lock.
    fn roots(&self, root: &Path) -> Result<Roots, StoreError> {
        let idx = index::read(&root.join("index.json"))?;
        let mut digests: Vec<Digest> = idx
            .manifests
            .iter()
            .filter_map(|e| e.digest.parse().ok())
            .collect();
        let recorded = digests.iter().map(|d| d.hex().to_string()).collect();
        let leases = root.join(".hoist").join("leases");
        let (dead_leases, live) = crate::temp::scan(&leases).map_err(StoreError::io(&leases))?;
        for p in &live {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            digests.extend(text.lines().filter_map(|l| l.parse::<Digest>().ok()));
        }
        Ok(Roots {
            digests,
            recorded,
            dead_leases,
            live_leases: live.len(),
        })
    }

    /// Every digest reachable from `roots`: manifests name their config and
    /// layers, indexes their manifests. A root that is not in the cache (a
    /// lease naming a blob still downloading) is kept all the same.
    fn reachable(&self, roots: Vec<Digest>) -> HashSet<Digest> {
        let mut seen: HashSet<Digest> = HashSet::new();
        let mut todo = roots;
        while let Some(d) = todo.pop() {
            if !seen.insert(d.clone()) {
                continue;
            }
            let p = self.blob_path(&d);
            // Only small blobs can be manifests; layers are never parsed.
            if std::fs::metadata(&p)
                .map(|m| m.len() > MANIFEST_LIMIT)
                .unwrap_or(true)
            {
                continue;
            }
            let Ok(bytes) = self.read_blob(&d, MANIFEST_LIMIT) else {
                continue;
            };
            if bytes.first() != Some(&b'{') {
                continue;
            }
            // Whatever the document describes (an image, an index, an
            // artifact pushed to the service), what it names is kept.
            if let Ok(r) = manifest::referenced(&bytes, None, "gc") {
                todo.extend(r.descriptors.into_iter().map(|d| d.digest));
            }
        }
        seen
    }
}

/// The roots of one collection (see `Store::roots`).
struct Roots {
    digests: Vec<Digest>,
    /// Hex of the recorded manifests, which name the tree metadata kept.
    recorded: HashSet<String>,
    dead_leases: Vec<PathBuf>,
    live_leases: usize,
}
