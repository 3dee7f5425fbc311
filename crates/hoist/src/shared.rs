//! `Client::export` with `shared_layers`: an erofs META image whose files'
//! data stay in one erofs file per layer, in a directory every image that
//! has the layer shares. Layers whose files are there already (and
//! verify) are neither downloaded nor inflated; the others are built from
//! their streams and join the directory once their digests check.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use hoist_export::{build_meta, LayerDir, LayerFile, Pending};
use hoist_spec::Digest;
use hoist_unpack::Guard;
use serde::Serialize;

use crate::client::Client;
use crate::error::Error;
use crate::op::Op;
use crate::pipeline::{Apply, Streamed};
use crate::progress::Event;
use crate::source::ImageSource;

/// One extra device of a META image, in the order the guest's
/// `mount -o device=` options and the VMM's disks must follow.
#[derive(Debug, Clone, Serialize)]
pub struct LayerDevice {
    pub path: PathBuf,
    pub diff_id: Digest,
    pub bytes: u64,
    /// Whether the file was already in the directory.
    pub reused: bool,
}

/// What a shared export made, before the rename.
pub(crate) struct SharedMade {
    pub pulled: crate::client::Pulled,
    pub config: hoist_spec::ImageConfig,
    pub content_bytes: u64,
    pub devices: Vec<LayerDevice>,
}

struct ShareApply<'a> {
    dir: &'a LayerDir,
    lz4: bool,
    found: &'a Mutex<HashMap<Digest, LayerFile>>,
    layers: Vec<Option<LayerFile>>,
    pending: Option<(usize, Pending)>,
    op: &'a Op,
    what: String,
}

/// An export error as the facade reports it: a layer's or the merge's
/// own error (a limit, a cancellation, a bad archive) keeps its kind.
fn export_error(image: &str, e: hoist_export::ExportError) -> Error {
    match e {
        hoist_export::ExportError::Unpack(source) => Error::Unpack {
            image: image.to_string(),
            source,
        },
        source => Error::Export {
            image: image.to_string(),
            source,
        },
    }
}

impl ShareApply<'_> {
    fn exp(&self, e: hoist_export::ExportError) -> Error {
        export_error(&self.what, e)
    }

    fn guard(&self) -> Guard {
        Guard::new(
            Some(self.op.cancel.clone()),
            Some(self.op.limits.max_entries),
        )
    }

    fn put(&mut self, index: usize, f: LayerFile) {
        if self.layers.len() <= index {
            self.layers.resize(index + 1, None);
        }
        self.layers[index] = Some(f);
    }
}

impl Apply for ShareApply<'_> {
    fn layer(
        &mut self,
        index: usize,
        diff_id: &Digest,
        stream: &mut dyn std::io::Read,
    ) -> Result<u64, Error> {
        let lock = self.dir.lock(diff_id, self.lz4).map_err(|e| self.exp(e))?;
        // Another export may have built it while this one waited.
        if let Some(f) = self.dir.find(diff_id, self.lz4) {
            drop(lock);
            // Read to its end all the same: its digests are checked.
            std::io::copy(stream, &mut std::io::sink()).map_err(|e| Error::Unpack {
                image: self.what.clone(),
                source: hoist_unpack::UnpackError::Read(e),
            })?;
            let n = f.entries();
            self.put(index, f);
            return Ok(n);
        }
        let p = self
            .dir
            .build(
                diff_id,
                self.lz4,
                stream,
                lock,
                self.guard(),
                Some(self.op.cancel.clone()),
            )
            .map_err(|e| self.exp(e))?;
        let n = p.entries();
        self.pending = Some((index, p));
        Ok(n)
    }

    fn skipped(&mut self, index: usize, diff_id: &Digest) -> Result<(), Error> {
        let f = self
            .found
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(diff_id)
            .cloned()
            .ok_or_else(|| Error::Target {
                path: self.dir.root().display().to_string(),
                reason: format!("the layer file of {diff_id} went away"),
            })?;
        self.put(index, f);
        Ok(())
    }

    fn verified(&mut self, index: usize) -> Result<(), Error> {
        if let Some((i, p)) = self.pending.take() {
            debug_assert_eq!(i, index);
            let f = p.commit().map_err(|e| self.exp(e))?;
            self.put(index, f);
        }
        Ok(())
    }
}

impl Client {
    pub(crate) fn export_erofs_shared(
        &self,
        src: &ImageSource,
        tmp: &Path,
        lz4: bool,
        dir: &Path,
        op: &Op,
    ) -> Result<SharedMade, Error> {
        let what = src.to_string();
        let exp = |e| export_error(&what, e);
        let dir = LayerDir::open(dir).map_err(exp)?;
        let found: Mutex<HashMap<Digest, LayerFile>> = Mutex::new(HashMap::new());
        let skip = |d: &Digest| match dir.find(d, lz4) {
            Some(f) => {
                found
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(d.clone(), f);
                true
            }
            None => false,
        };
        let streamed = self.pull_and_stream_skipping(
            src,
            false,
            &skip,
            || {
                Ok(ShareApply {
                    dir: &dir,
                    lz4,
                    found: &found,
                    layers: Vec::new(),
                    pending: None,
                    op,
                    what: what.clone(),
                })
            },
            op,
        );
        let Streamed {
            pulled,
            config,
            applier,
            ..
        } = streamed.map_err(|f| f.error)?;
        let layers: Vec<LayerFile> = applier
            .layers
            .into_iter()
            .collect::<Option<_>>()
            .filter(|l: &Vec<LayerFile>| l.len() == config.diff_ids.len())
            .ok_or_else(|| Error::Target {
                path: what.clone(),
                reason: "a layer has no layer file".into(),
            })?;
        op.emit(Event::Exporting { format: "erofs" });
        let devices = layers
            .iter()
            .map(|l| LayerDevice {
                path: l.path.clone(),
                diff_id: l.diff_id.clone(),
                bytes: l.bytes,
                reused: l.reused,
            })
            .collect();
        let (_, content_bytes) = build_meta(
            tmp,
            &layers,
            lz4,
            crate::export::ids_of(&pulled.digest).0,
            Guard::new(Some(op.cancel.clone()), Some(op.limits.max_entries)),
            Some(op.cancel.clone()),
        )
        .map_err(exp)?;
        Ok(SharedMade {
            pulled,
            config,
            content_bytes,
            devices,
        })
    }
}
