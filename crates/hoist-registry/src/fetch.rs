//! Manifest and blob fetches over the endpoint walk: every byte from any
//! host is checked against the digest asked for before it is accepted, and
//! a mirror that fails or sends wrong bytes is skipped for the next host.

use std::io::{self, Read};

use hoist_spec::{media, Digest, Reference};
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, RANGE};

use crate::client::{ctx_of, BlobSink, Call, RawManifest, RegistryClient};
use crate::endpoint::Need;
use crate::error::RegistryError;
use crate::send::{Answer, Request};

impl RegistryClient {
    /// Fetch a manifest or index by tag or digest, verified, never buffering
    /// more than the size limit. A tag is only resolved by a host trusted
    /// to resolve; content by digest may come from any host that can pull.
    pub fn get_manifest(
        &self,
        r: &Reference,
        target: &str,
        call: &Call,
    ) -> Result<RawManifest, RegistryError> {
        let ctx = ctx_of(r, target);
        let limit = self.options().max_manifest_size;
        let pinned = target.parse::<Digest>().ok();
        let need = if pinned.is_some() {
            Need::Pull
        } else {
            Need::Resolve
        };
        let mut req = Request::new(r, ctx.clone(), format!("manifests/{target}"), call, need);
        req.headers
            .insert(ACCEPT, HeaderValue::from_static(media::MANIFEST_ACCEPT));
        loop {
            let Answer {
                resp,
                endpoint: ep,
                more: next,
            } = self.send_any(&mut req)?;
            // What a mirror gets wrong is reason to ask the next host.
            let skip = |e: &RegistryError| {
                if ep.is_mirror() && next {
                    tracing::warn!("{}: {e}; skipping it", ep.host);
                    true
                } else {
                    false
                }
            };
            if let Some(len) = resp.content_length().filter(|&l| l > limit) {
                let e = RegistryError::TooLarge {
                    ctx: ctx.clone(),
                    what: "manifest".into(),
                    size: Some(len),
                    limit,
                };
                if skip(&e) {
                    req.from += 1;
                    continue;
                }
                return Err(e);
            }
            let content_type = resp
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let header_digest = resp
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<Digest>().ok());
            let mut bytes = Vec::new();
            if let Err(e) = resp.take(limit + 1).read_to_end(&mut bytes) {
                let err = RegistryError::Transport {
                    ctx: ctx.clone(),
                    message: format!("reading the manifest: {e}"),
                    source: None,
                };
                if skip(&err) {
                    req.from += 1;
                    continue;
                }
                if self.can_retry(&req.budget) {
                    self.pause(call, &ctx, &req.budget, &e.to_string())?;
                    continue;
                }
                return Err(err);
            }
            call.count(&ep.host, bytes.len() as u64);
            if bytes.len() as u64 > limit {
                return Err(RegistryError::TooLarge {
                    ctx,
                    what: "manifest".into(),
                    size: None,
                    limit,
                });
            }
            let digest = match pinned.clone().or(header_digest) {
                Some(exp) => {
                    let actual = Digest::of(exp.algorithm(), &bytes);
                    if actual != exp {
                        let e = RegistryError::DigestMismatch {
                            ctx: ctx.clone(),
                            what: "manifest".into(),
                            expected: exp,
                            actual,
                        };
                        if skip(&e) {
                            req.from += 1;
                            continue;
                        }
                        return Err(e);
                    }
                    if exp.algorithm() == hoist_spec::Algorithm::Sha256 {
                        exp
                    } else {
                        Digest::sha256_of(&bytes)
                    }
                }
                None => Digest::sha256_of(&bytes),
            };
            if ep.is_mirror() {
                tracing::info!("manifest {digest} from {}", ep.host);
            }
            return Ok(RawManifest {
                bytes,
                content_type,
                digest,
            });
        }
    }

    /// Stream a blob into `sink`, resuming with `Range` after a broken
    /// transfer. A mirror's bytes are checked against the digest before
    /// they are accepted; the caller verifies again when it commits.
    pub fn fetch_blob(
        &self,
        r: &Reference,
        digest: &Digest,
        size: u64,
        sink: &mut dyn BlobSink,
        call: &Call,
    ) -> Result<(), RegistryError> {
        let ctx = ctx_of(r, &digest.to_string());
        let mut req = Request::new(r, ctx.clone(), format!("blobs/{digest}"), call, Need::Pull);
        let mut buf = vec![0u8; 256 << 10];
        let sink_err = |ctx: &crate::ErrorContext, source| RegistryError::Sink {
            ctx: ctx.clone(),
            source,
        };
        loop {
            let offset = sink.written();
            req.headers = HeaderMap::new();
            if offset > 0 {
                // Digits and ASCII only: always a valid header value.
                if let Ok(v) = HeaderValue::from_str(&format!("bytes={offset}-")) {
                    req.headers.insert(RANGE, v);
                }
            }
            let Answer {
                mut resp,
                endpoint: ep,
                more: next,
            } = self.send_any(&mut req)?;
            let mirror_to_skip = ep.is_mirror() && next;
            if offset > 0 {
                let resumed = resp.status().as_u16() == 206
                    && resp
                        .headers()
                        .get("content-range")
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|v| v.starts_with(&format!("bytes {offset}-")));
                if !resumed {
                    tracing::debug!("{digest}: {} ignored Range; starting over", ep.host);
                    sink.reset().map_err(|e| sink_err(&ctx, e))?;
                    if resp.status().as_u16() != 200 {
                        continue;
                    }
                }
            }
            let base = sink.written();
            let mut broken = None;
            // More bytes than the descriptor says: never a transient fault.
            let mut oversize = false;
            if resp.content_length().is_some_and(|len| base + len > size) {
                oversize = true;
                broken = Some(format!(
                    "{} announced more than the blob's {size} bytes",
                    ep.host
                ));
            }
            while broken.is_none() {
                if call.cancel.is_cancelled() {
                    return Err(RegistryError::Cancelled { ctx });
                }
                let remaining = size - sink.written();
                // One byte past the declared size is enough to know a server
                // is sending too much; nothing more is read.
                let want = (remaining.min(buf.len() as u64 - 1) + 1) as usize;
                match resp.read(&mut buf[..want]) {
                    Ok(0) => break,
                    Ok(n) if n as u64 > remaining => {
                        oversize = true;
                        broken = Some(format!("{} sent more than {size} bytes", ep.host));
                    }
                    Ok(n) => {
                        call.count(&ep.host, n as u64);
                        sink.write_all(&buf[..n]).map_err(|e| sink_err(&ctx, e))?;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => broken = Some(e.to_string()),
                }
            }
            if sink.written() == size && broken.is_none() {
                match sink.check() {
                    Ok(()) => {
                        tracing::info!("blob {digest} ({size} bytes) from {}", ep.host);
                        return Ok(());
                    }
                    Err(actual) if mirror_to_skip => {
                        tracing::warn!(
                            "{} sent wrong bytes for {digest} (they hash to {actual}); skipping it",
                            ep.host
                        );
                        sink.reset().map_err(|e| sink_err(&ctx, e))?;
                        req.from += 1;
                        continue;
                    }
                    Err(actual) => {
                        return Err(RegistryError::DigestMismatch {
                            ctx,
                            what: "blob".into(),
                            expected: digest.clone(),
                            actual,
                        })
                    }
                }
            }
            let why = broken.unwrap_or_else(|| {
                format!("connection closed after {} of {size} bytes", sink.written())
            });
            if mirror_to_skip {
                // Start over at the next host: nothing of a failed mirror's
                // is kept.
                tracing::info!("{}: {why}; trying the next host", ep.host);
                sink.reset().map_err(|e| sink_err(&ctx, e))?;
                req.from += 1;
                continue;
            }
            if oversize {
                return Err(RegistryError::SizeMismatch {
                    ctx,
                    digest: digest.clone(),
                    expected: size,
                    actual: sink.written().max(size + 1),
                });
            }
            if self.can_retry(&req.budget) {
                self.pause(call, &ctx, &req.budget, &why)?;
                continue;
            }
            return Err(RegistryError::Transport {
                ctx,
                message: format!("blob download failed: {why}"),
                source: None,
            });
        }
    }
}
