//! The per-call operation context, in the manner of go-containerregistry's
//! `remote.WithContext`, `WithPlatform` and `WithProgress`: every `Client`
//! operation takes one, so a service can cancel a build, tell its progress
//! apart from others', and pull for one caller with that caller's
//! credentials and platform, on one shared client.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use hoist_registry::Credentials;
use hoist_spec::{Cancel, Platform};

use crate::progress::{Event, NoProgress, Progress};

/// An operation's id, for logs and progress sinks.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OpId(String);

impl OpId {
    pub fn new(id: impl Into<String>) -> OpId {
        OpId(id.into())
    }
    fn random() -> OpId {
        OpId(format!("op-{:016x}", fastrand::u64(..)))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Hard limits on what an untrusted image may make hoist read or write.
/// The defaults pass every real image we know of (rig/big: 4 layers, 68,218
/// entries, 683 MiB) with wide room, and stop hostile ones early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Uncompressed bytes of all layers together (tar streams).
    pub max_image_bytes: u64,
    /// Tar entries of all layers together.
    pub max_entries: u64,
    pub max_layers: usize,
    /// Past 1 GiB inflated, a layer whose uncompressed stream is more than
    /// this many times its compressed size is a decompression bomb. Real
    /// layers compress 2–20×; gzip cannot exceed ~1,032×, zstd can.
    pub max_ratio: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_image_bytes: 64 << 30,
            max_entries: 5_000_000,
            max_layers: 256,
            max_ratio: 200,
        }
    }
}

/// The context of one call. `Op::default()` has a fresh id and token, no
/// progress, the client's platform and credentials, and default limits.
#[derive(Clone)]
pub struct Op {
    pub id: OpId,
    pub cancel: Cancel,
    pub progress: Arc<dyn Progress>,
    /// Overrides the client's platform for this call.
    pub platform: Option<Platform>,
    /// Win over every configured credential source, for this call only.
    pub credentials: Option<Credentials>,
    pub limits: Limits,
    /// Use only what the cache holds: a registry source makes no request,
    /// and whatever the cache lacks is not found.
    pub offline: bool,
    /// Bytes each registry host (a mirror, the registry) served this op.
    served: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl Default for Op {
    fn default() -> Self {
        Op {
            id: OpId::random(),
            cancel: Cancel::new(),
            progress: Arc::new(NoProgress),
            platform: None,
            credentials: None,
            limits: Limits::default(),
            offline: false,
            served: Arc::default(),
        }
    }
}

impl fmt::Debug for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Op")
            .field("id", &self.id)
            .field("cancelled", &self.cancel.is_cancelled())
            .field("platform", &self.platform)
            .field(
                "credentials",
                &self.credentials.as_ref().map(|_| "<redacted>"),
            )
            .field("limits", &self.limits)
            .finish()
    }
}

impl Op {
    pub fn new() -> Op {
        Op::default()
    }
    pub fn with_id(mut self, id: OpId) -> Op {
        self.id = id;
        self
    }
    pub fn with_cancel(mut self, c: Cancel) -> Op {
        self.cancel = c;
        self
    }
    pub fn with_progress(mut self, p: Arc<dyn Progress>) -> Op {
        self.progress = p;
        self
    }
    pub fn with_platform(mut self, p: Platform) -> Op {
        self.platform = Some(p);
        self
    }
    pub fn with_credentials(mut self, c: Credentials) -> Op {
        self.credentials = Some(c);
        self
    }
    /// Only the cache: no registry is contacted (a pushed image, say).
    pub fn offline(mut self) -> Op {
        self.offline = true;
        self
    }

    pub fn with_limits(mut self, l: Limits) -> Op {
        self.limits = l;
        self
    }

    pub(crate) fn emit(&self, e: Event<'_>) {
        self.progress.event(&self.id, &e);
    }

    /// Report the end of the operation. Any error of a cancelled operation
    /// is reported as `Cancelled`: what broke after the cancel (a closed
    /// pipe, an interrupted write) is its consequence, not news.
    pub(crate) fn finished<T>(&self, r: Result<T, crate::Error>) -> Result<T, crate::Error> {
        let r = match r {
            Err(_) if self.cancel.is_cancelled() => Err(crate::Error::Cancelled),
            r => r,
        };
        match &r {
            Ok(_) => self.emit(Event::Done),
            Err(e) => self.emit(Event::Failed {
                error: &e.to_string(),
            }),
        }
        r
    }

    /// The same operation with a child token: cancelling it stops this
    /// call's other half only (the pull/apply pipeline).
    pub(crate) fn child(&self) -> Op {
        let mut o = self.clone();
        o.cancel = self.cancel.child();
        o
    }

    pub(crate) fn call(&self) -> hoist_registry::Call {
        hoist_registry::Call {
            cancel: self.cancel.clone(),
            credentials: self.credentials.clone(),
            served: self.served.clone(),
        }
    }

    /// Bytes of manifests and blobs each registry host served so far.
    pub fn bytes_by_host(&self) -> BTreeMap<String, u64> {
        self.served.lock().expect("lock").clone()
    }
}
