use thiserror::Error;

#[derive(Debug, Error)]
pub enum UnpackError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid layer archive: {0}")]
    InvalidArchive(String),
    /// A layer whose meaning depends on the layers around it, which a
    /// layer-shared disk cannot hold (export it whole instead).
    #[error("this layer cannot be shared: {0}; export the image without --shared-layers")]
    NotStandalone(String),
    #[error("invalid layer archive: {0} has a parent that is not a directory")]
    NotADirectory(String),
    #[error("reading the layer: {0}")]
    Read(#[source] std::io::Error),
    /// The output could not be written (a full disk, say); the caller
    /// names the output.
    #[error("writing the output: {0}")]
    Write(#[source] std::io::Error),
    #[error(
        "layer {layer}: uncompressed digest (diff_id) mismatch: expected {expected}, got {actual}"
    )]
    DiffIdMismatch {
        layer: String,
        expected: String,
        actual: String,
    },
    #[error("layer {layer}: compressed digest mismatch: expected {expected}, got {actual}")]
    BlobMismatch {
        layer: String,
        expected: String,
        actual: String,
    },
    #[error("cancelled")]
    Cancelled,
    /// Longer than Linux's PATH_MAX: no file system hoist writes can hold
    /// it, and refusing it early keeps path handling linear.
    #[error("invalid layer archive: {path}: a path of {len} bytes, longer than PATH_MAX ({max})", max = crate::path::PATH_MAX)]
    PathTooLong { path: String, len: usize },
    #[error("invalid layer archive: {path}: a name of {len} bytes, longer than NAME_MAX ({max})", max = crate::path::NAME_MAX)]
    NameTooLong { path: String, len: usize },
    #[error("the image has more than {limit} entries (--max-entries)")]
    TooManyEntries { limit: u64 },
    #[error("this kernel lacks openat2(RESOLVE_IN_ROOT) (Linux 5.6+), which hoist needs to unpack safely")]
    NoOpenat2,
}

/// Render a tar path for messages: lossy UTF-8 is fine there.
pub(crate) fn show(p: &[u8]) -> String {
    if p.is_empty() {
        "/".into()
    } else {
        format!("/{}", String::from_utf8_lossy(p))
    }
}

pub(crate) fn io(op: &'static str, path: &[u8]) -> impl FnOnce(std::io::Error) -> UnpackError {
    let path = show(path);
    move |source| UnpackError::Io { op, path, source }
}

pub(crate) fn errno(
    op: &'static str,
    path: &[u8],
) -> impl FnOnce(rustix::io::Errno) -> UnpackError {
    let path = show(path);
    move |e| UnpackError::Io {
        op,
        path,
        source: e.into(),
    }
}
