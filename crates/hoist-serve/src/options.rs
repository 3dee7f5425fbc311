//! What `hoist serve` is configured with. `Default` holds the defaults the
//! CLI shows; the CLI takes them from here rather than repeating them.

use std::path::PathBuf;
use std::time::Duration;

use hoist::{Format, Limits};

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: std::net::SocketAddr,
    pub data_dir: PathBuf,
    pub max_concurrent_builds: usize,
    pub format: Format,
    /// Bearer token every endpoint but `/healthz` requires.
    pub token: Option<String>,
    /// Host globs (`*.example.com`, `127.0.0.1:*`) a request may name;
    /// empty allows every registry.
    pub allowed_registries: Vec<String>,
    pub limits: Limits,
    /// Open connections at most; `None`: derived from the descriptor limit
    /// ([`crate::net::default_max_connections`]).
    pub max_connections: Option<usize>,
    /// The name this server goes by as a registry (`HOST[:PORT]`): pushed
    /// images are named under it. `None` until the listen address is known.
    pub registry_name: Option<String>,
    /// A pushed blob over this is refused while it streams.
    pub max_upload_bytes: u64,
    /// Upload sessions open at once.
    pub max_upload_sessions: usize,
    /// An upload session idle this long is removed, with its bytes.
    pub upload_timeout: Duration,
    /// A client must send a request's headers within this.
    pub header_timeout: Duration,
    /// A kept-alive connection with no request in flight is closed after
    /// this.
    pub idle_timeout: Duration,
    /// erofs only: build each image as a META image whose file data stay
    /// in one erofs file per layer under `DATA/layers/`, shared by every
    /// image that has the layer.
    pub shared_layers: bool,
}

/// `$XDG_DATA_HOME/hoist`, else `~/.local/share/hoist`.
pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("hoist");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| ".".into());
    home.join(".local").join("share").join("hoist")
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 7070)),
            data_dir: default_data_dir(),
            max_concurrent_builds: 1,
            format: Format::Ext4,
            token: None,
            allowed_registries: Vec::new(),
            limits: Limits::default(),
            max_connections: None,
            registry_name: None,
            max_upload_bytes: Limits::default().max_image_bytes,
            max_upload_sessions: 64,
            upload_timeout: Duration::from_secs(600),
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            shared_layers: false,
        }
    }
}
