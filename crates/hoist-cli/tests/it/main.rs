//! hoist's one integration-test binary. Tests run the real `hoist` binary
//! against real `docker-registry` processes (plain, TLS + basic auth, token
//! auth), with an in-process server only for faults.

mod harness;

mod archives;
mod auth;
mod cli;
mod erofs_fields;
mod export;
mod faults;
mod gc;
mod mirrors;
mod pull;
mod push;
mod robustness;
mod serve;
mod serve_hardening;
mod serve_shared;
mod shared;
mod unpack;
