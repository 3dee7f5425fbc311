//! Apply OCI image layers under a root directory, knowing nothing of where
//! the layers come from (umoci's `UnpackLayer(root, reader, opts)`).
//!
//! Every path is resolved inside the root by the kernel
//! (`openat2(RESOLVE_IN_ROOT)`) and the last component is never followed, so
//! nothing outside the root is created, written, chmodded, chowned, linked
//! or deleted, whatever a layer contains.

mod error;
mod guard;
#[cfg(feature = "isal")]
mod isal_gzip;
mod layer;
mod listing;
mod merge;
mod meta;
pub mod path;
mod root;
mod spool;
mod stream;

pub use error::UnpackError;
pub use guard::Guard;
pub use layer::{LayerOptions, LayerStats, Ownership, Unpacker};
pub use listing::{Listed, ListedBody, OVERLAY_OPAQUE};
pub use merge::{write_failed, Body, ContentSink, MergedTree, Node, NodeId, WriteFailed, ROOT};
pub use meta::{EntryMeta, EntryType, TreeMeta};
pub use root::remove_tree;
pub use stream::{gzip_backend, Gate, LayerStream, StreamDigests, StreamOptions};

#[cfg(test)]
mod tests;
