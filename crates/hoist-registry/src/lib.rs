//! hoist's client for the OCI distribution API.
//!
//! Written on `reqwest` rather than `oci-client` because hoist needs control
//! that crate does not give: the raw manifest bytes with a size cap applied
//! before buffering, blob bodies streamed into a caller's sink with `Range`
//! resume, retry and 429 policy, and errors typed from the registry's JSON
//! body with the image named in each.

mod auth;
mod client;
mod creds;
mod endpoint;
mod error;
mod fetch;
mod guard;
mod hosts;
mod retry;
mod send;
mod tokens;

pub use client::{
    BlobSink, Call, RawManifest, RegistryClient, RegistryOptions, DEFAULT_MAX_MANIFEST_SIZE,
};
pub use creds::{CredentialSources, Credentials};
pub use endpoint::{Capabilities, Direct, Endpoint, Need, Resolver, Scheme, Tls};
pub use error::{ErrorContext, ErrorKind, RegistryError, RegistryMessage, TransportKind};
pub use guard::{check_registry_host, host_ip, is_refused_ip, RefusedHost};
pub use hosts::HostsDir;
pub use retry::RetryPolicy;
