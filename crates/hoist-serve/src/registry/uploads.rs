//! Blob upload sessions: each streams into a temp file of the cache (hashed
//! as it is written, flocked by this process, so a restart's sweep removes
//! what a killed one left) and joins the cache only when its digest checks.
//! Sessions are bounded in number and removed when idle.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Body;
use hoist::UploadWriter;
use http_body_util::BodyExt;

use super::error::V2Error;

pub(crate) struct Session {
    pub repo: String,
    /// `None` once the session failed or committed.
    pub writer: Option<UploadWriter>,
    pub last: Instant,
}

pub(crate) type Shared = Arc<tokio::sync::Mutex<Session>>;

pub(crate) struct Uploads {
    sessions: Mutex<HashMap<String, Shared>>,
    pub max_sessions: usize,
    pub idle: Duration,
    pub max_bytes: u64,
}

impl Uploads {
    pub fn new(max_sessions: usize, idle: Duration, max_bytes: u64) -> Uploads {
        Uploads {
            sessions: Mutex::new(HashMap::new()),
            max_sessions,
            idle,
            max_bytes,
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Shared>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new session, refused with 429 when as many are open as allowed.
    pub fn start(&self, store: &hoist::Store, repo: &str) -> Result<(String, Shared), V2Error> {
        if self.map().len() >= self.max_sessions {
            self.sweep_idle();
            if self.map().len() >= self.max_sessions {
                return Err(V2Error::new(
                    429,
                    "TOOMANYREQUESTS",
                    format!("{} upload sessions are open", self.max_sessions),
                ));
            }
        }
        let writer = store.upload_writer().map_err(V2Error::internal)?;
        let id = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        let s = Arc::new(tokio::sync::Mutex::new(Session {
            repo: repo.to_string(),
            writer: Some(writer),
            last: Instant::now(),
        }));
        self.map().insert(id.clone(), s.clone());
        Ok((id, s))
    }

    pub fn get(&self, id: &str) -> Option<Shared> {
        self.map().get(id).cloned()
    }

    /// End a session: its temp file goes with its writer.
    pub fn end(&self, id: &str) {
        self.map().remove(id);
    }

    pub fn open(&self) -> usize {
        self.map().len()
    }

    /// Remove sessions idle for longer than the timeout (one in use, whose
    /// lock is held, is never idle).
    pub fn sweep_idle(&self) {
        let mut map = self.map();
        map.retain(|_, s| match s.try_lock() {
            Ok(s) => s.last.elapsed() < self.idle,
            Err(_) => true,
        });
    }
}

/// How much of an oversized body is read and dropped before the 413.
const DRAIN: u64 = 16 << 20;

/// Stream a request body into a session's writer, refusing past
/// `max_bytes` (the session is ended by the caller on error). Returns the
/// bytes written by this request.
pub(crate) async fn stream_into(
    s: &mut Session,
    body: Body,
    max_bytes: u64,
    counted: &prometheus_client::metrics::counter::Counter,
) -> Result<u64, V2Error> {
    let mut body = body;
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| V2Error::new(400, "BLOB_UPLOAD_INVALID", e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        let w = s.writer.as_mut().ok_or_else(V2Error::upload_unknown)?;
        if w.written() + data.len() as u64 > max_bytes {
            // Nothing more is written. A little more of the body is read
            // and dropped, so that a client still sending sees the 413
            // rather than a reset; past that, the connection is cut.
            s.writer = None;
            let mut drained = 0u64;
            while drained < DRAIN {
                match body.frame().await {
                    Some(Ok(f)) => drained += f.data_ref().map_or(0, |d| d.len() as u64),
                    _ => break,
                }
            }
            return Err(V2Error::new(
                413,
                "SIZE_INVALID",
                format!("the blob is over the limit of {max_bytes} bytes (--max-upload-bytes)"),
            ));
        }
        // A page-cache write and a hash of one frame: short enough to make
        // in place, rather than hop to a blocking thread per frame.
        tokio::task::block_in_place(|| w.write_all(&data))
            .map_err(|e| V2Error::internal(format!("writing the upload: {e}")))?;
        n += data.len() as u64;
        counted.inc_by(data.len() as u64);
        s.last = Instant::now();
    }
    s.last = Instant::now();
    Ok(n)
}
