use std::path::Path;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ExportError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the image: {0}")]
    Write(#[source] std::io::Error),
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Unpack(#[from] hoist_unpack::UnpackError),
    #[error("{0} changed while it was being exported")]
    Changed(String),
    #[error(
        "the contents need at least {needed} bytes, more than the requested size of {size} bytes"
    )]
    TooSmall { size: u64, needed: u64 },
}

impl ExportError {
    pub(crate) fn io(op: &'static str, path: &Path, source: std::io::Error) -> ExportError {
        ExportError::Io {
            op,
            path: path.display().to_string(),
            source,
        }
    }
}
