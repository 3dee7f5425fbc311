#![doc = include_str!("../../../README.md")]

mod archive;
mod client;
mod error;
mod export;
mod op;
mod pipeline;
mod progress;
mod shared;
mod source;
mod stale;
mod unpack;

pub use client::{default_cache_dir, Client, ClientOptions, ImageSummary, Inspection, Pulled};
pub use error::{Error, ErrorKind};
pub use export::{ExportOptions, Exported};
pub use hoist_export::{meta_devices, Format, LayerDir, LayerGc};
pub use hoist_unpack::{Ownership, TreeMeta};
pub use op::{Limits, Op, OpId};
pub use progress::{Event, NoProgress, Progress};
pub use shared::LayerDevice;
pub use source::ImageSource;
pub use unpack::{UnpackOptions, Unpacked};

/// The building blocks, for callers that need more than the facade.
pub use hoist_registry::{
    check_registry_host, host_ip, is_refused_ip, Credentials, Endpoint, HostsDir, RefusedHost,
    RegistryError, RegistryOptions, Resolver, RetryPolicy, TransportKind,
};
pub use hoist_spec::manifest::{referenced, Referenced};
pub use hoist_spec::{
    escape_controls, Cancel, Digest, ImageMetadata, Platform, Reference, SpecError,
};
pub use hoist_spec::{media, Algorithm, Descriptor};
pub use hoist_store::temp::{owner_is_gone as temp_owner_is_gone, stale_beside};
pub use hoist_store::{FsckReport, GcReport, Lease, Removed, Store, StoreError, UploadWriter};
