//! Authentication of requests: which credentials go to which host, the
//! auth mode each host asked for (learned from its 401), and bearer tokens
//! fetched from the realm it names, cached per host, scope and identity.

use std::io::Read;

use reqwest::blocking::Response;
use reqwest::header::AUTHORIZATION;

use crate::auth::{parse_challenge, Challenge, Token, TokenReply};
use crate::client::{describe, retry_after, HostAuth, RegistryClient};
use crate::creds::Credentials;
use crate::endpoint::Endpoint;
use crate::error::{self, RegistryError};
use crate::send::Request;

const MAX_TOKEN_BODY: u64 = 1 << 20;

impl RegistryClient {
    /// The credentials to send to `ep`: a mirror's own, looked up under its
    /// host; the registry's from the call, `--creds`, or the sources.
    pub(crate) fn credentials(
        &self,
        ep: &Endpoint,
        req: &Request<'_>,
    ) -> Result<Option<Credentials>, RegistryError> {
        let key = if ep.is_mirror() {
            ep.host.as_str()
        } else {
            if let Some(c) = &req.call.credentials {
                return Ok(Some(c.clone()));
            }
            if let Some(c) = &self.options().credentials {
                return Ok(Some(c.clone()));
            }
            req.reference.registry()
        };
        if let Some(c) = self.state().creds.get(key) {
            return Ok(c.clone());
        }
        let c = self.options().credential_sources.lookup(key)?;
        self.state().creds.insert(key.to_string(), c.clone());
        Ok(c)
    }

    /// The Authorization header for this host and scope, fetching a token
    /// when the host uses bearer auth and none is fresh.
    pub(crate) fn auth_header(
        &self,
        ep: &Endpoint,
        req: &mut Request<'_>,
        scope: &str,
    ) -> Result<Option<String>, RegistryError> {
        let host = ep.host.as_str();
        let mode = self.state().auth.get(host).cloned();
        match mode {
            None => Ok(None),
            Some(HostAuth::Basic) => Ok(self.credentials(ep, req)?.map(|c| c.basic_header())),
            Some(HostAuth::Bearer { realm, service }) => {
                let who = if ep.is_mirror() {
                    String::new()
                } else {
                    req.call.identity()
                };
                let key = (host.to_string(), scope.to_string(), who);
                if let Some(t) = self.state().tokens.get(&key) {
                    if t.is_fresh() {
                        return Ok(Some(format!("Bearer {}", t.value)));
                    }
                }
                let t = self.fetch_token(ep, req, &realm, service.as_deref(), scope)?;
                let h = format!("Bearer {}", t.value);
                self.state().tokens.insert(key, t);
                Ok(Some(h))
            }
        }
    }

    fn fetch_token(
        &self,
        ep: &Endpoint,
        req: &mut Request<'_>,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<Token, RegistryError> {
        let ctx = req.ctx.clone();
        let mut url = url::Url::parse(realm).map_err(|e| RegistryError::Protocol {
            ctx: ctx.clone(),
            message: format!("bad token realm {realm:?}: {e}"),
        })?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            q.append_pair("scope", scope);
        }
        // A registry chooses the realm: it is guarded like the registry.
        if self.options().refuse_link_local {
            if let Some(ip) = crate::guard::refused_in_url(url.as_str()) {
                return Err(RegistryError::AddressRefused {
                    ctx,
                    address: ip.to_string(),
                });
            }
        }
        let realm_host = match (url.host_str(), url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (h, None) => h.unwrap_or("").to_string(),
            (None, Some(_)) => String::new(),
        };
        let creds = self.credentials(ep, req)?;
        loop {
            req.budget.attempt();
            let mut get = self.client_for(&realm_host).get(url.clone());
            if let Some(c) = &creds {
                get = get.header(AUTHORIZATION, c.basic_header());
            }
            let resp = match get.send() {
                Ok(resp) => resp,
                Err(e) if self.can_retry(&req.budget) => {
                    self.pause(req.call, &ctx, &req.budget, &describe(&e))?;
                    continue;
                }
                Err(e) => {
                    return Err(RegistryError::Transport {
                        ctx,
                        message: format!("token request: {}", describe(&e)),
                        source: Some(e),
                    })
                }
            };
            let status = resp.status().as_u16();
            if matches!(status, 408 | 500 | 502 | 503 | 504) && self.can_retry(&req.budget) {
                self.pause(
                    req.call,
                    &ctx,
                    &req.budget,
                    &format!("token endpoint HTTP {status}"),
                )?;
                continue;
            }
            let ra = retry_after(&resp);
            let mut body = Vec::new();
            let _ = resp.take(MAX_TOKEN_BODY).read_to_end(&mut body);
            if !(200..300).contains(&status) {
                let msg = error::parse_body(&body);
                return Err(error::from_status(ctx, status, msg, ra));
            }
            let reply: TokenReply =
                serde_json::from_slice(&body).map_err(|e| RegistryError::Protocol {
                    ctx: ctx.clone(),
                    message: format!("token endpoint sent an unreadable reply: {e}"),
                })?;
            return reply.into_token().ok_or_else(|| RegistryError::Protocol {
                ctx,
                message: "token endpoint sent no token".into(),
            });
        }
    }

    /// Learn how a host wants to be authenticated from its 401; false when
    /// there is nothing to try (no challenge we know, or Basic without
    /// credentials).
    pub(crate) fn learn_auth(
        &self,
        ep: &Endpoint,
        req: &Request<'_>,
        resp: &Response,
    ) -> Result<bool, RegistryError> {
        let challenge = resp
            .headers()
            .get_all("www-authenticate")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(parse_challenge);
        let mode = match challenge {
            Some(Challenge::Basic) => {
                if self.credentials(ep, req)?.is_none() {
                    return Ok(false);
                }
                HostAuth::Basic
            }
            Some(Challenge::Bearer { realm, service, .. }) => HostAuth::Bearer { realm, service },
            None => return Ok(false),
        };
        let mut st = self.state();
        st.auth.insert(ep.host.clone(), mode);
        st.tokens.retain(|(h, _, _), _| *h != ep.host);
        Ok(true)
    }
}
