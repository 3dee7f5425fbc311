use thiserror::Error;

/// Errors from parsing and validating OCI data. Each names what it refers to.
#[derive(Debug, Error)]
pub enum SpecError {
    #[error("invalid digest {input:?}: {reason}")]
    InvalidDigest { input: String, reason: String },
    #[error("invalid reference {input:?}: {reason}")]
    InvalidReference { input: String, reason: String },
    #[error("invalid platform {input:?}: {reason} (expected OS/ARCH[/VARIANT], e.g. linux/amd64)")]
    InvalidPlatform { input: String, reason: String },
    #[error("{what} is not valid JSON for its media type: {source}")]
    MalformedJson {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{what} uses Docker image manifest schema 1, which hoist does not support (deprecated since 2017); re-push the image with a current client")]
    Schema1 { what: String },
    #[error("{what} has unsupported media type {media_type:?}")]
    UnsupportedMediaType { what: String, media_type: String },
    #[error("{what} is not a container image: its config media type is {config_media_type:?}")]
    NotAContainerImage {
        what: String,
        config_media_type: String,
    },
    #[error("{what} has a foreign or non-distributable layer {digest} ({media_type}); hoist does not fetch such layers")]
    ForeignLayer {
        what: String,
        digest: String,
        media_type: String,
    },
    #[error("{what}: no manifest for platform {wanted} (available: {available})")]
    PlatformNotFound {
        what: String,
        wanted: String,
        available: String,
    },
    #[error("{what} is for platform {actual}, but {wanted} was requested")]
    PlatformMismatch {
        what: String,
        wanted: String,
        actual: String,
    },
    #[error("{what}: image indexes nest deeper than {limit} levels")]
    IndexTooDeep { what: String, limit: usize },
    #[error("{what} is not valid for unpacking: {reason}")]
    InvalidConfig { what: String, reason: String },
}
