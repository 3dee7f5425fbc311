//! Accepting connections without letting idle or slow clients starve the
//! server. `axum::serve` has no header-read timeout, no idle timeout and
//! no cap, so the accept loop is written here, over hyper's HTTP/1
//! connection:
//!
//! - a client must send a request's headers within `header_timeout`
//!   (hyper's own timer);
//! - a connection with no request in flight for `idle_timeout` is closed;
//! - at most `max_connections` are open; when a new client finds the cap
//!   reached, the connection that has been idle longest is closed to make
//!   room (so idle clients, authenticated or not, can never lock out a new
//!   one), and if none is idle the new client waits;
//! - `accept` failing for want of descriptors (EMFILE, ENFILE) closes an
//!   idle connection and backs off instead of spinning.

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tower::ServiceExt;

#[derive(Debug, Clone, Copy)]
pub struct NetOptions {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
}

/// The default cap: what the descriptor limit leaves after a reserve for
/// the state database, the cache, the registry connections and the files
/// of each concurrent build.
pub fn default_max_connections(builds: usize) -> usize {
    let soft = nofile_limit().0;
    let reserve = 64 + 32 * builds as u64;
    soft.saturating_sub(reserve).clamp(8, 16_384) as usize
}

fn nofile_limit() -> (u64, u64) {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) } != 0 {
        return (1024, 1024);
    }
    (l.rlim_cur, l.rlim_max)
}

/// Raise the soft descriptor limit to the hard one, as Go's runtime does:
/// the soft default (1024) is a relic of `select`, which nothing here uses.
pub fn raise_nofile_limit() {
    let (soft, hard) = nofile_limit();
    if soft < hard {
        let l = libc::rlimit {
            rlim_cur: hard,
            rlim_max: hard,
        };
        // SAFETY: setrlimit reads the struct it is given.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &l) };
    }
}

/// One open connection, as the accept loop and the idle sweeper see it.
struct Conn {
    /// Milliseconds since the server's start at the last request start,
    /// body frame or response end.
    last_active: AtomicU64,
    in_flight: AtomicUsize,
    close: tokio::sync::Notify,
}

struct Conns {
    start: Instant,
    next: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Conn>>>,
}

impl Conns {
    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn open(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn add(&self) -> (u64, Arc<Conn>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let c = Arc::new(Conn {
            last_active: AtomicU64::new(self.now()),
            in_flight: AtomicUsize::new(0),
            close: tokio::sync::Notify::new(),
        });
        self.open().insert(id, c.clone());
        (id, c)
    }

    /// Close the connection idle for longest; false if none is idle.
    fn evict_oldest_idle(&self) -> bool {
        let open = self.open();
        let oldest = open
            .values()
            .filter(|c| c.in_flight.load(Ordering::Acquire) == 0)
            .min_by_key(|c| c.last_active.load(Ordering::Acquire));
        match oldest {
            Some(c) => {
                c.close.notify_one();
                true
            }
            None => false,
        }
    }

    fn close_idle_since(&self, limit: Duration) {
        let now = self.now();
        for c in self.open().values() {
            let idle = now.saturating_sub(c.last_active.load(Ordering::Acquire));
            if c.in_flight.load(Ordering::Acquire) == 0 && idle >= limit.as_millis() as u64 {
                c.close.notify_one();
            }
        }
    }
}

/// Held by a request from its start until its response body is done (or
/// dropped): the connection is busy meanwhile, never idle.
struct InFlight {
    conn: Arc<Conn>,
    conns: Arc<Conns>,
}

impl InFlight {
    fn new(conn: Arc<Conn>, conns: Arc<Conns>) -> InFlight {
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        conn.last_active.store(conns.now(), Ordering::Release);
        InFlight { conn, conns }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.conn
            .last_active
            .store(self.conns.now(), Ordering::Release);
        self.conn.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request in flight until it ends.
struct Tracked {
    inner: Body,
    guard: Option<InFlight>,
}

impl http_body::Body for Tracked {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.guard = None,
            Poll::Ready(Some(Ok(_))) => {
                if let Some(g) = &self.guard {
                    g.conn.last_active.store(g.conns.now(), Ordering::Release);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

fn out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Serve `app` on `listener` until `stop` resolves; then stop accepting,
/// let each connection finish its request in flight (up to a few seconds),
/// and return.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    opts: NetOptions,
    stop: impl std::future::Future<Output = ()>,
) {
    let conns = Arc::new(Conns {
        start: Instant::now(),
        next: AtomicU64::new(0),
        open: Mutex::new(HashMap::new()),
    });
    let slots = Arc::new(tokio::sync::Semaphore::new(opts.max_connections.max(1)));
    let (stopping, _) = tokio::sync::watch::channel(false);
    let sweeper = {
        let conns = conns.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                conns.close_idle_since(opts.idle_timeout);
            }
        })
    };
    let mut warned = false;
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = &mut stop => break,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) if out_of_descriptors(&e) => {
                if !warned {
                    tracing::warn!("accept: {e}; closing an idle connection and backing off");
                    warned = true;
                }
                conns.evict_oldest_idle();
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => {
                tracing::debug!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        warned = false;
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                conns.evict_oldest_idle();
                match tokio::time::timeout(Duration::from_secs(10), slots.clone().acquire_owned())
                    .await
                {
                    Ok(Ok(p)) => p,
                    // Every connection busy for that long: this one is
                    // turned away (closed) rather than held unserved.
                    _ => continue,
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let (id, conn) = conns.add();
        let app = app.clone();
        let conns2 = conns.clone();
        let mut stopping = stopping.subscribe();
        tokio::spawn(async move {
            let svc = {
                let (conn, conns) = (conn.clone(), conns2.clone());
                hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                    let guard = InFlight::new(conn.clone(), conns.clone());
                    let app = app.clone();
                    async move {
                        let resp = match app.oneshot(req.map(Body::new)).await {
                            Ok(r) => r,
                            Err(e) => match e {},
                        };
                        Ok::<_, Infallible>(resp.map(|b| Tracked {
                            inner: b,
                            guard: Some(guard),
                        }))
                    }
                })
            };
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(opts.header_timeout)
                .keep_alive(true);
            let served = http.serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(served);
            tokio::select! {
                _ = served.as_mut() => {}
                _ = conn.close.notified() => {
                    served.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), served.as_mut()).await;
                }
                _ = stopping.changed() => {
                    served.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(3), served.as_mut()).await;
                }
            }
            conns2.open().remove(&id);
            drop(permit);
        });
    }
    drop(listener);
    let _ = stopping.send(true);
    sweeper.abort();
    // Let connections finish what they were answering.
    for _ in 0..40 {
        if conns.open().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
