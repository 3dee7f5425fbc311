use hoist_spec::Digest;

/// Receives blob transfer events; the CLI draws progress bars from them.
/// Every method has an empty default, so an implementation picks what it
/// needs.
pub trait Progress: Send + Sync {
    /// A blob transfer begins.
    fn start(&self, _digest: &Digest, _size: u64) {}
    /// Bytes of this blob held so far (it can go back to 0 on a restart).
    fn position(&self, _digest: &Digest, _bytes: u64) {}
    /// The blob was verified and committed.
    fn finish(&self, _digest: &Digest) {}
    /// Already in the cache; nothing to fetch.
    fn skipped(&self, _digest: &Digest, _size: u64) {}
}

/// Reports nothing.
pub struct NoProgress;
impl Progress for NoProgress {}
