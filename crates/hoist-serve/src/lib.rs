//! `hoist serve`: the image service a VM manager calls. hypeman's image
//! API (`POST/GET/DELETE /images`) on a durable build queue (SQLite),
//! with crash recovery, Prometheus metrics, GC, a bearer token and a guard
//! on which registries a request may reach.
//!
//! Builds run on blocking threads through the `hoist` facade; this crate
//! holds the only async code.

mod api;
mod disks;
mod error;
mod gc;
mod glob;
mod metrics;
mod progress;
mod queue;
mod record;
mod service;
mod state;
mod time;

pub use api::{OPENAPI, ROUTES};
pub use glob::glob_match;
pub use service::ServeOptions;
pub use state::Status;
pub use time::rfc3339;

/// Why the server would not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("refusing to listen on {0} without a token: set --token-file or HOIST_TOKEN, or listen on loopback")]
    NoToken(std::net::SocketAddr),
    #[error("{0}")]
    Setup(String),
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Run the service in the foreground until SIGTERM or SIGINT.
pub fn run(client: hoist::Client, opts: ServeOptions) -> Result<(), ServeError> {
    if opts.token.is_none() && !opts.listen.ip().is_loopback() {
        return Err(ServeError::NoToken(opts.listen));
    }
    limit_malloc_arenas();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .max_blocking_threads(64)
        .build()
        .map_err(|e| ServeError::Setup(e.to_string()))?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(opts.listen)
            .await
            .map_err(|source| ServeError::Listen {
                addr: opts.listen,
                source,
            })?;
        let addr = listener
            .local_addr()
            .map_err(|e| ServeError::Setup(e.to_string()))?;
        let n = opts.max_concurrent_builds.max(1);
        let svc = service::Service::open(client, opts).map_err(ServeError::Setup)?;
        for _ in 0..n {
            tokio::spawn(svc.clone().worker());
        }
        // Tests and scripts wait for this line.
        tracing::info!("listening on http://{addr}");
        eprintln!("hoist serve: listening on http://{addr}");
        let app = api::router(svc.clone());
        let stop = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::info!("shutting down");
        };
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await;
        svc.shutdown().await;
        tracing::info!("stopped after {:?}", svc.uptime());
        served.map_err(|e| ServeError::Setup(e.to_string()))
    })?;
    // Blocking build threads that did not stop in time are left behind.
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    Ok(())
}

/// glibc gives each thread that allocates its own malloc arena (up to 8 per
/// core) and keeps their freed memory: builds run on a changing set of
/// blocking threads, so the arenas add up. Measured with
/// `scripts/bench-serve.py` (six rig images, rig/big among them): peak RSS
/// 154 MiB with glibc's default, 102 MiB with two arenas, and no
/// measurable change in build time or GET latency.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const M_ARENA_MAX: libc::c_int = -8;
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            // SAFETY: called before this process starts any thread of its
            // own; mallopt only changes malloc's tuning.
            unsafe { libc::mallopt(M_ARENA_MAX, 2) };
        }
    }
}
