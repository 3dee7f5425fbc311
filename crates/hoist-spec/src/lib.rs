//! Pure OCI types and rules for hoist: no I/O happens in this crate.
//!
//! Everything that crosses a crate boundary is parsed once into a newtype
//! ([`Reference`], [`Digest`], [`Platform`]) and never passed around as `&str`.

pub mod cancel;
pub mod digest;
pub mod error;
pub mod kind;
pub mod manifest;
pub mod media;
pub mod metadata;
pub mod platform;
pub mod reference;
pub mod text;

pub use cancel::{Cancel, Cancelled};
pub use digest::{Algorithm, Digest, Hasher};
pub use error::SpecError;
pub use kind::ErrorKind;
pub use manifest::{Descriptor, ImageIndex, ImageManifest, Layer, Manifest};
pub use metadata::{ImageConfig, ImageMetadata};
pub use platform::Platform;
pub use reference::Reference;
pub use text::escape_controls;
