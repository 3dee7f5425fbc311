#![doc = include_str!("../../../README.md")]

mod client;
mod error;
mod export;
mod progress;
mod source;
mod stale;
mod unpack;

pub use client::{default_cache_dir, Client, ClientOptions, ImageSummary, Inspection, Pulled};
pub use error::{Error, ErrorKind};
pub use export::{ExportOptions, Exported};
pub use hoist_export::Format;
pub use hoist_unpack::{Ownership, TreeMeta};
pub use progress::{NoProgress, Progress};
pub use source::ImageSource;
pub use unpack::{UnpackOptions, Unpacked};

/// The building blocks, for callers that need more than the facade.
pub use hoist_registry::{Credentials, RegistryOptions, RetryPolicy};
pub use hoist_spec::{Digest, ImageMetadata, Platform, Reference};
pub use hoist_store::FsckReport;
