//! `hoist serve`: the image service a VM manager calls. hypeman's image
//! API (`POST/GET/DELETE /images`) on a durable build queue (SQLite),
//! with crash recovery, Prometheus metrics, GC, a bearer token and a guard
//! on which registries a request may reach.
//!
//! Modules by job: `api` translates HTTP and nothing else; `book` is the
//! records' state machine and the queue; `worker` runs builds through the
//! facade on blocking threads; `disks` owns the files under `images/`;
//! `db` the SQLite state; `error` the one error type and its HTTP
//! mapping; `net` the accept loop, its timeouts and its connection cap.

mod api;
mod book;
mod db;
mod disks;
mod error;
mod gc;
mod glob;
mod metrics;
mod net;
mod options;
mod progress;
mod record;
mod registry;
mod service;
mod time;
mod worker;

use std::path::PathBuf;

pub use api::{OPENAPI, ROUTES};
pub use db::Status;
pub use glob::glob_match;
pub use net::default_max_connections;
pub use options::{default_data_dir, ServeOptions};
pub use time::rfc3339;

/// Why the server would not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("refusing to listen on {0} without a token: set --token-file or HOIST_TOKEN, or listen on loopback")]
    NoToken(std::net::SocketAddr),
    #[error(
        "state database {p} is damaged: {reason}. hoist serve will not start on it. \
         Stop here, move it aside (mv {p} {p}.damaged, with its -wal and -shm files) and start \
         again: the records of ready disks are rebuilt from the disks under images/, and \
         images that were still building must be POSTed again",
        p = path.display()
    )]
    Database { path: PathBuf, reason: String },
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
    net::raise_nofile_limit();
    let net_opts = net::NetOptions {
        max_connections: opts
            .max_connections
            .unwrap_or_else(|| default_max_connections(opts.max_concurrent_builds)),
        header_timeout: opts.header_timeout,
        idle_timeout: opts.idle_timeout,
    };
    let listen = opts.listen;
    let builds = opts.max_concurrent_builds.max(1);
    let listener = std::net::TcpListener::bind(listen).map_err(|source| ServeError::Listen {
        addr: listen,
        source,
    })?;
    let addr = listener
        .local_addr()
        .map_err(|e| ServeError::Setup(e.to_string()))?;
    let mut opts = opts;
    if opts.registry_name.is_none() {
        opts.registry_name = Some(addr.to_string());
    }
    // The state is checked (and refused if damaged) before anything is
    // accepted.
    let svc = service::Service::open(client, opts)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .max_blocking_threads(64)
        .build()
        .map_err(|e| ServeError::Setup(e.to_string()))?;
    rt.block_on(async move {
        listener
            .set_nonblocking(true)
            .map_err(|e| ServeError::Setup(e.to_string()))?;
        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(|e| ServeError::Setup(e.to_string()))?;
        for _ in 0..builds {
            tokio::spawn(svc.clone().worker());
        }
        // Tests and scripts wait for this line.
        tracing::info!(
            "at most {} connections; listening on http://{addr}",
            net_opts.max_connections
        );
        eprintln!("hoist serve: listening on http://{addr}");
        let app = api::router(svc.clone()).merge(registry::router(svc.clone()));
        {
            // Idle upload sessions go, with their bytes.
            let svc = svc.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
                loop {
                    tick.tick().await;
                    svc.registry.uploads.sweep_idle();
                    svc.metrics
                        .upload_sessions
                        .set(svc.registry.uploads.open() as i64);
                }
            });
        }
        let stop = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = tokio::signal::ctrl_c() => {}
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
            tracing::info!("shutting down");
        };
        net::serve(listener, app, net_opts, stop).await;
        svc.shutdown().await;
        tracing::info!("stopped after {:?}", svc.uptime());
        Ok::<(), ServeError>(())
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
