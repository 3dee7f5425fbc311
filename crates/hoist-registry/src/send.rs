//! Sending one request: the walk over a registry's endpoints (mirrors
//! first, the registry last) and one endpoint's send, split by concern:
//! preparing the request (URL guard, headers, auth), a transport failure
//! (scheme fallback, retry), and an answer's status (auth round trip, 429,
//! retryable 5xx, typed errors).

use std::io::Read;
use std::time::Duration;

use hoist_spec::Reference;
use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};

use crate::client::{describe, is_loopback, retry_after, Call, RegistryClient};
use crate::endpoint::{Endpoint, Need, Scheme};
use crate::error::{self, ErrorContext, RegistryError};
use crate::retry::RetryBudget;

const MAX_ERROR_BODY: u64 = 64 << 10;

/// One request's whole context, and its progress through the endpoints.
pub(crate) struct Request<'a> {
    pub reference: &'a Reference,
    pub ctx: ErrorContext,
    /// Below the repository: `manifests/TAG`, `blobs/DIGEST`.
    pub path: String,
    pub headers: HeaderMap,
    pub call: &'a Call,
    pub need: Need,
    /// Every attempt of every loop this request goes through.
    pub budget: RetryBudget,
    /// The endpoint to ask next, among those allowed `need`; left at the
    /// one that answered, so a caller can move past it.
    pub from: usize,
}

impl<'a> Request<'a> {
    pub fn new(
        reference: &'a Reference,
        ctx: ErrorContext,
        path: String,
        call: &'a Call,
        need: Need,
    ) -> Request<'a> {
        Request {
            reference,
            ctx,
            path,
            headers: HeaderMap::new(),
            call,
            need,
            budget: RetryBudget::new(),
            from: 0,
        }
    }

    fn cancelled(&self) -> RegistryError {
        RegistryError::Cancelled {
            ctx: self.ctx.clone(),
        }
    }
}

/// A 2xx answer, from which endpoint, and whether another endpoint follows
/// it (so a caller may skip a mirror that sends something wrong).
pub(crate) struct Answer {
    pub resp: Response,
    pub endpoint: Endpoint,
    pub more: bool,
}

/// What to do after a failed attempt.
enum Then {
    Again,
    Answer(Response),
}

impl RegistryClient {
    /// GET the request's path from the first endpoint that has the
    /// capability and answers, starting at `req.from`. A mirror gets one
    /// attempt (and its auth round trip); whatever it fails with, the next
    /// host is tried, and the registry itself last, with the rest of the
    /// budget.
    pub(crate) fn send_any(&self, req: &mut Request<'_>) -> Result<Answer, RegistryError> {
        let all = self.endpoints(req.reference)?;
        let eligible: Vec<&Endpoint> = all
            .iter()
            .filter(|e| e.capabilities.allows(req.need))
            .collect();
        if eligible.is_empty() {
            return Err(RegistryError::Protocol {
                ctx: req.ctx.clone(),
                message: format!(
                    "no configured host of {} may {}",
                    req.reference.registry(),
                    match req.need {
                        Need::Resolve => "resolve tags",
                        Need::Pull => "pull",
                    }
                ),
            });
        }
        loop {
            let i = req.from.min(eligible.len() - 1);
            let ep = eligible[i];
            let last = i + 1 == eligible.len();
            match self.send(ep, req, last) {
                Ok(resp) => {
                    req.from = i;
                    return Ok(Answer {
                        resp,
                        endpoint: ep.clone(),
                        more: !last,
                    });
                }
                Err(e) if !last && !matches!(e, RegistryError::Cancelled { .. }) => {
                    tracing::info!("{}: {e}; trying {} next", ep.host, eligible[i + 1].host);
                    req.from = i + 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// GET from one endpoint, with auth, scheme fallback and (when `retry`)
    /// retries from the budget; a 2xx answer or a typed error.
    fn send(
        &self,
        ep: &Endpoint,
        req: &mut Request<'_>,
        retry: bool,
    ) -> Result<Response, RegistryError> {
        let client = self.client_of(ep)?;
        let scope = format!("repository:{}:pull", req.reference.repository());
        let mut reauthed = false;
        // Set while trying plain HTTP after HTTPS failed: if HTTP fails too,
        // the HTTPS error is the one worth showing (say, an unknown CA).
        let mut https_error: Option<String> = None;
        loop {
            req.budget.attempt();
            if req.call.cancel.is_cancelled() {
                return Err(req.cancelled());
            }
            let plain = match ep.scheme {
                Scheme::Http => true,
                Scheme::Https => false,
                Scheme::Auto => self.state().plain_http.contains(&ep.host),
            };
            let get = self.prepare(&client, ep, req, plain, &scope)?;
            let resp = match get.send() {
                Ok(resp) => resp,
                Err(e) => {
                    self.transport_failure(ep, req, e, plain, &mut https_error, retry)?;
                    continue;
                }
            };
            if let Some(first) = https_error.take() {
                // An HTTPS server answers a plain request with 400.
                if resp.status().as_u16() == 400 {
                    self.state().plain_http.remove(&ep.host);
                    return Err(RegistryError::Transport {
                        ctx: req.ctx.clone(),
                        message: first,
                        source: None,
                    });
                }
            }
            match self.judge(ep, req, resp, &mut reauthed, retry)? {
                Then::Answer(resp) => return Ok(resp),
                Then::Again => continue,
            }
        }
    }

    /// The request for one attempt: its URL (checked by the link-local
    /// guard as the connection will parse it), headers, and auth.
    fn prepare(
        &self,
        client: &Client,
        ep: &Endpoint,
        req: &mut Request<'_>,
        plain: bool,
        scope: &str,
    ) -> Result<RequestBuilder, RegistryError> {
        let scheme = if plain { "http" } else { "https" };
        let url = ep.url(scheme, req.reference.repository(), &req.path);
        if self.options().refuse_link_local {
            if let Some(ip) = crate::guard::refused_in_url(&url) {
                return Err(RegistryError::AddressRefused {
                    ctx: req.ctx.clone(),
                    address: ip.to_string(),
                });
            }
        }
        let mut get = client.get(&url).headers(req.headers.clone());
        for (k, v) in &ep.headers {
            if let (Ok(k), Ok(v)) = (HeaderName::try_from(k), HeaderValue::try_from(v)) {
                get = get.header(k, v);
            }
        }
        if let Some(h) = self.auth_header(ep, req, scope)? {
            let mut v = HeaderValue::from_str(&h).map_err(|_| RegistryError::Protocol {
                ctx: req.ctx.clone(),
                message: "credentials hold characters not allowed in a header".into(),
            })?;
            v.set_sensitive(true);
            get = get.header(AUTHORIZATION, v);
        }
        tracing::debug!("GET {url}");
        Ok(get)
    }

    /// No answer: a refused address, a fall back from HTTPS to plain HTTP
    /// (loopback and insecure registries), a retry, or the error. `Ok`
    /// means try again.
    fn transport_failure(
        &self,
        ep: &Endpoint,
        req: &mut Request<'_>,
        e: reqwest::Error,
        plain: bool,
        https_error: &mut Option<String>,
        retry: bool,
    ) -> Result<(), RegistryError> {
        let ctx = &req.ctx;
        if let Some(address) = crate::guard::find_refused(&e) {
            return Err(RegistryError::AddressRefused {
                ctx: ctx.clone(),
                address,
            });
        }
        let host = ep.host.as_str();
        if let Some(first) = https_error.take() {
            self.state().plain_http.remove(host);
            if retry && self.can_retry(&req.budget) {
                return self.pause(req.call, ctx, &req.budget, &first);
            }
            return Err(RegistryError::Transport {
                ctx: ctx.clone(),
                message: format!("{first} (plain HTTP failed too: {})", describe(&e)),
                source: Some(e),
            });
        }
        if ep.scheme == Scheme::Auto
            && !plain
            && e.is_connect()
            && (self.is_insecure(host) || is_loopback(host))
        {
            tracing::debug!(
                "https to {host} failed ({}); trying plain http",
                describe(&e)
            );
            *https_error = Some(describe(&e));
            self.state().plain_http.insert(host.to_string());
            req.budget.refund();
            return Ok(());
        }
        if retry && self.can_retry(&req.budget) {
            return self.pause(req.call, ctx, &req.budget, &describe(&e));
        }
        Err(RegistryError::Transport {
            ctx: ctx.clone(),
            message: describe(&e),
            source: Some(e),
        })
    }

    /// An answer's status: 2xx is the answer; a first 401 teaches the
    /// host's auth; 429 waits when allowed; 408 and 5xx are retried; the
    /// rest is a typed error from the registry's JSON body.
    fn judge(
        &self,
        ep: &Endpoint,
        req: &mut Request<'_>,
        resp: Response,
        reauthed: &mut bool,
        retry: bool,
    ) -> Result<Then, RegistryError> {
        let status = resp.status().as_u16();
        let can_retry = retry && self.can_retry(&req.budget);
        match status {
            200..=299 => return Ok(Then::Answer(resp)),
            401 if !*reauthed => {
                *reauthed = true;
                if self.learn_auth(ep, req, &resp)? {
                    req.budget.refund();
                    return Ok(Then::Again);
                }
            }
            429 => {
                let ra = retry_after(&resp);
                if let Some(cap) = self.options().rate_limit_wait {
                    let wait = ra.unwrap_or(Duration::from_secs(1));
                    if wait <= cap && can_retry {
                        tracing::info!(
                            "rate limited by {}; waiting {wait:?} (Retry-After)",
                            ep.host
                        );
                        req.call.cancel.sleep(wait).map_err(|_| req.cancelled())?;
                        return Ok(Then::Again);
                    }
                    return Err(RegistryError::RateLimited {
                        ctx: req.ctx.clone(),
                        retry_after: ra,
                        waited: true,
                    });
                }
            }
            408 | 500 | 502 | 503 | 504 if can_retry => {
                self.pause(req.call, &req.ctx, &req.budget, &format!("HTTP {status}"))?;
                return Ok(Then::Again);
            }
            _ => {}
        }
        let ra = retry_after(&resp);
        let mut body = Vec::new();
        let _ = resp.take(MAX_ERROR_BODY).read_to_end(&mut body);
        Err(error::from_status(
            req.ctx.clone(),
            status,
            error::parse_body(&body),
            ra,
        ))
    }
}
