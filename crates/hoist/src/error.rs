use hoist_export::ExportError;
use hoist_registry::RegistryError;
use hoist_spec::SpecError;
use hoist_store::StoreError;
use hoist_unpack::UnpackError;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("cache: {0}")]
    Store(#[from] StoreError),
    /// A blob that failed verification, with the image it belongs to.
    #[error("integrity: {image}: {source}")]
    Blob {
        image: String,
        #[source]
        source: StoreError,
    },
    #[error("{layout}: {reason}")]
    Layout { layout: String, reason: String },
    #[error("unpacking {image}: {source}")]
    Unpack {
        image: String,
        #[source]
        source: UnpackError,
    },
    #[error("{path}: {reason}")]
    Target { path: String, reason: String },
    /// Writing the output failed here (a full disk, a read-only file
    /// system): said as a write, naming the output.
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("exporting {image}: {source}")]
    Export {
        image: String,
        #[source]
        source: ExportError,
    },
    #[error("cancelled")]
    Cancelled,
    #[error("not in the cache: {}", names.join(", "))]
    NotInCache { names: Vec<String> },
    /// An image over one of the operation's hard limits.
    #[error("{image}: {actual} {what} is more than the limit of {limit}")]
    Limit {
        image: String,
        what: &'static str,
        limit: u64,
        actual: u64,
    },
    #[error("{layout}: no image tagged {tag:?} (tags: {available})")]
    LayoutTagNotFound {
        layout: String,
        tag: String,
        available: String,
    },
}

pub use hoist_spec::ErrorKind;

fn store_kind(e: &StoreError) -> ErrorKind {
    match e {
        StoreError::DigestMismatch { .. } | StoreError::SizeMismatch { .. } => ErrorKind::Integrity,
        _ => ErrorKind::Other,
    }
}

impl Error {
    /// For a registry that gave no answer, why (timeout, connect, TLS,
    /// reset), from the transport error kept as the source.
    pub fn transport_kind(&self) -> Option<hoist_registry::TransportKind> {
        match self {
            Error::Registry(e) => e.transport_kind(),
            _ => None,
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Spec(
                SpecError::InvalidReference { .. }
                | SpecError::InvalidDigest { .. }
                | SpecError::InvalidPlatform { .. },
            ) => ErrorKind::Usage,
            Error::Spec(SpecError::PlatformNotFound { .. }) => ErrorKind::NotFound,
            Error::Spec(_) => ErrorKind::Other,
            Error::Registry(e) => e.kind(),
            Error::Store(e) | Error::Blob { source: e, .. } => store_kind(e),
            Error::LayoutTagNotFound { .. } => ErrorKind::NotFound,
            Error::Unpack {
                source: UnpackError::DiffIdMismatch { .. } | UnpackError::BlobMismatch { .. },
                ..
            } => ErrorKind::Integrity,
            Error::Unpack {
                source: UnpackError::TooManyEntries { .. },
                ..
            } => ErrorKind::TooLarge,
            Error::Unpack {
                source: UnpackError::Cancelled,
                ..
            } => ErrorKind::Cancelled,
            Error::Unpack {
                source: UnpackError::Io { .. } | UnpackError::Write(_),
                ..
            } => ErrorKind::Io,
            Error::Unpack { .. } => ErrorKind::Other,
            Error::Write { .. } => ErrorKind::Io,
            Error::Cancelled => ErrorKind::Cancelled,
            Error::NotInCache { .. } => ErrorKind::NotFound,
            Error::Limit { .. } => ErrorKind::TooLarge,
            Error::Target { .. } => ErrorKind::Usage,
            Error::Export {
                source: ExportError::TooSmall { .. },
                ..
            } => ErrorKind::Usage,
            Error::Export {
                source: ExportError::Io { .. } | ExportError::Write(_),
                ..
            } => ErrorKind::Io,
            Error::Export { .. } => ErrorKind::Other,
            Error::Layout { .. } => ErrorKind::Other,
        }
    }
}
