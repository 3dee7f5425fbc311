//! One classification of failures for every hoist crate: the registry
//! client says which kind its errors are, the facade wraps them without
//! naming the same fact twice, and the CLI turns a kind into an exit code.

/// What kind of failure, for callers that branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A malformed reference, option or path: the caller's to fix.
    Usage,
    NotFound,
    Auth,
    RateLimited,
    /// A digest or size that does not match.
    Integrity,
    /// The registry could not be reached, or answered 5xx.
    Unavailable,
    Cancelled,
    /// An address or registry that hoist refuses to contact.
    NotAllowed,
    /// The image is over a hard limit (size, entries, layers).
    TooLarge,
    /// Reading or writing a local file failed (a full disk, say).
    Io,
    Other,
}

impl ErrorKind {
    /// The documented exit code of the `hoist` command.
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorKind::Usage => 2,
            ErrorKind::NotFound => 3,
            ErrorKind::Auth => 4,
            ErrorKind::RateLimited => 5,
            ErrorKind::Integrity => 6,
            ErrorKind::TooLarge => 7,
            ErrorKind::Io => 8,
            ErrorKind::Cancelled => 130,
            // Kept at 1, as before these kinds were told apart: scripts
            // already branch on it.
            ErrorKind::Unavailable | ErrorKind::NotAllowed | ErrorKind::Other => 1,
        }
    }
}
