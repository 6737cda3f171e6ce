//! One request's state, made when it arrives and handed to every phase of
//! the pipeline and to the endpoints, which fill in what the response, the
//! metrics and the access log line need. It lives outside the pipeline so
//! that the endpoints can take it without importing the pipeline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue};

use crate::auth::authenticate::{AuthOutcome, Authentication, Authn, Via};
use crate::auth::refresh::TokenPair;
use crate::auth::Identity;
use crate::gateway::Gateway;
use crate::headers;
use crate::observe::audit::{AuditEvent, Origin, Record};
use crate::routes::Route;

/// Per-request state, created once and passed to every phase.
#[derive(Debug)]
pub struct RequestContext {
    pub request_id: HeaderValue,
    pub started: Instant,
    pub peer: SocketAddr,
    pub route: Option<Arc<Route>>,
    /// Who the request is from, for the log line.
    pub user: Option<Arc<Identity>>,
    /// Cookies to set on the response (a silent refresh or a login).
    pub set_cookies: Vec<HeaderValue>,
    pub upstream_latency: Option<Duration>,
    /// Authentication outcome, for the log line and the metrics.
    pub auth: AuthOutcome,
    /// An HTTP/1 request body that nothing has read to its end: not handed
    /// on to an upstream or an own endpoint, or broken off by bad framing.
    /// Where the next request on the connection starts is then unknown, so
    /// the answer closes the connection (see the pipeline's response
    /// filter).
    pub request_body_unread: bool,
}

impl RequestContext {
    pub fn new(headers: &HeaderMap, peer: SocketAddr) -> RequestContext {
        let request_id = headers
            .get(&headers::X_REQUEST_ID)
            .filter(|v| headers::valid_request_id(v))
            .cloned()
            .unwrap_or_else(new_request_id);
        RequestContext {
            request_id,
            started: Instant::now(),
            peer,
            route: None,
            user: None,
            set_cookies: Vec::new(),
            upstream_latency: None,
            auth: AuthOutcome::NotChecked,
            request_body_unread: false,
        }
    }

    /// Keeps what an authentication means for the response (its cookies),
    /// the log line and the metrics (its outcome and user), and hands on
    /// who the caller is.
    /// A silent refresh, done or refused for a replayed token, is an
    /// audit event.
    pub fn authenticated(
        &mut self,
        gw: &Gateway,
        headers: &HeaderMap,
        authentication: Authentication,
    ) -> Authn {
        self.auth = authentication.outcome();
        if let Authn::Authenticated { identity, via, .. } = &authentication.authn {
            self.user = Some(identity.clone());
            if *via == Via::Refresh {
                let mut record = Record::new(AuditEvent::TokenRefreshed)
                    .user(&identity.sub)
                    .reason("silent")
                    .origin(self.origin(gw, headers));
                if let Some(family) = &identity.session {
                    record = record.session(family);
                }
                gw.audit.record(record);
            }
        }
        self.set_cookies.extend(authentication.set_cookies);
        if let Some(error) = &authentication.refresh_failure {
            tracing::info!(
                event = "refresh_failed",
                request_id = self.request_id.to_str().unwrap_or("-"),
                reason = %error,
            );
            error.audit(&gw.audit, self.origin(gw, headers));
        }
        authentication.authn
    }

    /// Where this request came from, for the audit trail: the client's
    /// address after `trusted_proxies` (as the login throttle keys it),
    /// its `User-Agent` and the request id.
    pub fn origin<'a>(&'a self, gw: &Gateway, headers: &'a HeaderMap) -> Origin<'a> {
        Origin {
            client_ip: gw.proxies.client_ip(headers, self.peer.ip()),
            user_agent: headers
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok()),
            request_id: self.request_id.to_str().unwrap_or("-"),
        }
    }

    /// Remembers a new token pair for the response's `Set-Cookie`.
    pub fn set_session_cookies(&mut self, gw: &Gateway, pair: &TokenPair) {
        self.set_cookies
            .extend(gw.authenticator().session_cookies(pair));
    }

    pub fn clear_session_cookies(&mut self, gw: &Gateway) {
        self.set_cookies.extend(gw.cookies.clear());
    }
}

/// A random (v4) UUID from the thread's userspace generator: `Uuid::new_v4`
/// asks the kernel for every id, one `getrandom` syscall per request.
fn new_request_id() -> HeaderValue {
    let id = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    id.hyphenated().encode_lower(&mut text);
    // Owned by its `Bytes`: one allocation, and the copies for the upstream
    // and the response share it.
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(text))
        .expect("a uuid is a valid header value")
}
