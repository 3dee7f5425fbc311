//! What an operation reports as it goes, stage by stage. The CLI draws bars
//! and spinners from these events; the service copies them into the image
//! record's `progress`. Every event carries the operation's id, so one sink
//! can serve many operations at once.

use hoist_spec::Digest;

use crate::op::OpId;

/// One step of an operation.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event<'a> {
    /// Resolving the source to one platform's manifest.
    Resolving { source: &'a str },
    /// The platform manifest: `layers` layer blobs of `bytes` in all.
    Resolved {
        digest: &'a Digest,
        layers: usize,
        bytes: u64,
    },
    /// A blob transfer begins.
    BlobStart { digest: &'a Digest, size: u64 },
    /// Bytes of this blob held so far (it can go back to 0 on a restart).
    BlobProgress { digest: &'a Digest, bytes: u64 },
    /// The blob was verified and is in the cache.
    BlobDone { digest: &'a Digest },
    /// Already in the cache (or fetched by another operation meanwhile).
    BlobCached { digest: &'a Digest, size: u64 },
    /// Every blob of the image is in the cache, verified, and the image is
    /// recorded there: what is left is local work.
    Pulled { digest: &'a Digest },
    /// Layer `index` (of `count`) is being applied: `bytes` of its blob
    /// read so far, `entries` tar entries applied in earlier layers.
    Applying {
        index: usize,
        count: usize,
        bytes: u64,
        size: u64,
    },
    /// Layer `index` is applied.
    LayerApplied {
        index: usize,
        count: usize,
        entries: u64,
    },
    /// The disk image's final pass (inode tables, directories) begins.
    Exporting { format: &'static str },
    /// The operation finished.
    Done,
    /// The operation failed with this message.
    Failed { error: &'a str },
}

/// Receives events; implementations must be cheap, as blob progress comes
/// often.
pub trait Progress: Send + Sync {
    fn event(&self, op: &OpId, event: &Event<'_>);
}

/// Reports nothing.
pub struct NoProgress;
impl Progress for NoProgress {
    fn event(&self, _: &OpId, _: &Event<'_>) {}
}
