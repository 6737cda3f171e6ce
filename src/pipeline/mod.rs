//! The request pipeline. Every request passes these phases, in this order
//! (see [`process`]):
//!
//! 1. **check**: head size, framing, path normalization — or 400/431
//! 2. **own endpoints**: `/token`, `/logout`, `/userinfo`, `/healthz`, ...
//! 3. **route**: longest prefix (and host) on the normalized path — or 404
//! 4. **authenticate** ([`crate::auth::authenticate`]): Bearer header, else
//!    access cookie; on a missing or expired cookie with a refresh cookie, a
//!    silent refresh; a cookie credential on an unsafe method passes the
//!    [`csrf`] check first
//! 5. **authorize**: the route's policy and roles → a [`Permit`], or 401/403
//! 6. **mutate**: strip hop-by-hop, spoofed identity headers and our
//!    cookies; inject identity and forwarding headers
//! 7. **forward**: the route's pooled upstream client — or 502/504, or 400
//!    when the client's own body breaks off mid-stream (malformed chunked
//!    framing); an answered WebSocket upgrade is then spliced (see
//!    [`websocket`])
//! 8. **response filter** (on every response, errors included): request
//!    id, `Set-Cookie`, `Connection: close` when an HTTP/1 request body was
//!    left unread, one log line

pub mod path;
pub mod websocket;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{AUTHORIZATION, CONTENT_LENGTH, HOST, SET_COOKIE, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderValue, Request, Response, Version};
use http_body_util::BodyExt;

use crate::auth::authenticate::{bearer_credentials, Anonymous, AuthOutcome, Authn};
use crate::auth::csrf;
use crate::auth::refresh::{RefreshError, TokenPair};
use crate::auth::Identity;
use crate::config::AuthPolicy;
use crate::cookies;
use crate::gateway::Gateway;
use crate::headers;
use crate::response::{Body, GatewayError, RequestBody};
use crate::routes::Route;
use crate::upstream::{self, UpstreamClient};

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
    /// the answer closes the connection (see [`response_filter`]).
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

/// Entry point from the server: never fails, always answers.
pub async fn handle<B: RequestBody>(
    gw: Arc<Gateway>,
    req: Request<B>,
    peer: SocketAddr,
) -> Response<Body> {
    let mut ctx = RequestContext::new(req.headers(), peer);
    ctx.request_body_unread = sends_http1_body(&req);
    let logged = access_logged(&req);
    let response = match process(&gw, req, &mut ctx).await {
        Ok(response) => response,
        Err(error) => error_response(error, &ctx),
    };
    finish(&gw, response, &mut ctx, logged)
}

/// Whether the request comes with a body on an HTTP/1 connection, where an
/// unread body stands between this request and the next. HTTP/2 frames
/// each stream apart (and forbids `Connection`).
fn sends_http1_body<B>(req: &Request<B>) -> bool {
    let headers = req.headers();
    matches!(req.version(), Version::HTTP_10 | Version::HTTP_11)
        && (headers.contains_key(TRANSFER_ENCODING)
            || headers
                .get(CONTENT_LENGTH)
                .is_some_and(|length| length.as_bytes() != b"0"))
}

/// Method and URI, kept for the log line only when there is one: the
/// access log is off by default, and the copy would cost every request.
fn access_logged<B>(req: &Request<B>) -> Option<(http::Method, http::Uri)> {
    tracing::enabled!(target: "authgate::access", tracing::Level::INFO)
        .then(|| (req.method().clone(), req.uri().clone()))
}

fn error_response(error: GatewayError, ctx: &RequestContext) -> Response<Body> {
    match &error {
        GatewayError::Unavailable(_) => crate::observe::metrics::get().store_error("store"),
        GatewayError::UpstreamUnreachable(_) => {
            crate::observe::metrics::get().upstream_error("connect")
        }
        GatewayError::UpstreamTimeout => crate::observe::metrics::get().upstream_error("timeout"),
        _ => {}
    }
    if error.status().is_server_error() {
        tracing::warn!(
            event = "request_failed",
            request_id = ?ctx.request_id,
            error = %error,
            source = ?std::error::Error::source(&error),
        );
    }
    error.into_response()
}

/// Phase 8 and what follows it, on every response: the response filter,
/// the metrics and the access log line.
fn finish(
    gw: &Gateway,
    mut response: Response<Body>,
    ctx: &mut RequestContext,
    logged: Option<(http::Method, http::Uri)>,
) -> Response<Body> {
    response_filter(&mut response, ctx);
    record_metrics(gw, ctx, response.status().as_u16());
    let Some((method, uri)) = logged else {
        return response;
    };
    tracing::info!(
        target: "authgate::access",
        method = %method,
        path = uri.path(),
        route = ctx.route.as_ref().map_or("-", |r| r.name.as_str()),
        status = response.status().as_u16(),
        user = ctx.user.as_ref().map_or("-", |user| user.sub.as_str()),
        auth = ctx.auth.label(),
        upstream_ms = ctx.upstream_latency.map(|d| d.as_secs_f64() * 1000.0),
        total_ms = ctx.started.elapsed().as_secs_f64() * 1000.0,
        request_id = ctx.request_id.to_str().unwrap_or("-"),
    );
    response
}

fn record_metrics(gw: &Gateway, ctx: &RequestContext, status: u16) {
    let metrics = crate::observe::metrics::get();
    let route = ctx.route.as_ref().map_or(&gw.own_metrics, |r| &r.metrics);
    route.observe(
        status,
        ctx.started.elapsed().as_secs_f64(),
        ctx.upstream_latency.map(|d| d.as_secs_f64()),
    );
    if let Some(outcome) = ctx.auth.metric_label() {
        metrics.auth_outcome(outcome);
    }
}

/// What a route answers to, as a 405 for CONNECT or TRACE says (any other
/// method is forwarded).
const PROXIED_METHODS: [http::Method; 7] = [
    http::Method::GET,
    http::Method::HEAD,
    http::Method::POST,
    http::Method::PUT,
    http::Method::PATCH,
    http::Method::DELETE,
    http::Method::OPTIONS,
];

/// The phases, top to bottom.
async fn process<B: RequestBody>(
    gw: &Gateway,
    req: Request<B>,
    ctx: &mut RequestContext,
) -> Result<Response<Body>, GatewayError> {
    check_head(gw, &req)?;
    // A reverse proxy forwards requests to its routes; it opens no tunnels.
    // Forwarded, a CONNECT that an upstream answered 2xx would turn the
    // client's connection into a raw pipe past every later check. A TRACE
    // would have the upstream echo the request as it arrived there: the
    // identity headers injected here, sent back to a page that asked
    // (cross-site tracing); nginx refuses it too.
    if matches!(*req.method(), http::Method::CONNECT | http::Method::TRACE) {
        return Err(GatewayError::MethodNotAllowed {
            allow: &PROXIED_METHODS,
        });
    }
    // A clone of the URI shares its bytes: the path borrows from it, not
    // from the request, which moves on to the upstream.
    let uri = req.uri().clone();
    let path = path::normalize(uri.path()).map_err(|e| match e {
        path::PathError::EscapesRoot => GatewayError::BadRequest("Path escapes the root"),
        path::PathError::Malformed => GatewayError::BadRequest("Malformed path"),
    })?;
    if let Some(endpoint) = crate::endpoints::Endpoint::find(gw, &path) {
        return Box::pin(crate::endpoints::serve(gw, endpoint, req, ctx)).await;
    }
    let route = route_request(gw, &req, &path)?;
    ctx.route = Some(route.clone());
    let upgrade = websocket::requested(&req);
    if upgrade && !route.websocket {
        return Err(GatewayError::BadRequest(
            "WebSocket upgrades are not allowed on this route",
        ));
    }
    let authn = if route.auth == AuthPolicy::Public {
        Authn::Anonymous(Anonymous::Missing)
    } else {
        csrf::check_proxied(gw, &req)?;
        authenticate(gw, req.headers(), ctx).await?
    };
    let lifetime = upgrade.then(|| websocket::Lifetime::of(&authn));
    let permit = match authorize(&route, authn, ctx) {
        Err(GatewayError::Unauthenticated(_))
            if !upgrade && sends_to_sign_in(gw, req.headers()) =>
        {
            let original = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
            return Ok(crate::endpoints::sign_in::redirect_to_sign_in(
                &gw.paths.login,
                original,
            ));
        }
        other => other?,
    };
    if let Some(lifetime) = lifetime {
        return Box::pin(websocket::proxy(
            gw, &route, req, &path, permit, lifetime, ctx,
        ))
        .await;
    }
    let upstream_request = mutate(gw, &route, req, &path, permit, ctx)?;
    forward(gw, &route, &route.clients.request, upstream_request, ctx).await
}

/// A browser (it names `text/html`) without an `Authorization` header is
/// sent to the sign-in page instead of a JSON 401.
fn sends_to_sign_in(gw: &Gateway, headers: &HeaderMap) -> bool {
    gw.config.auth.login_redirect
        && !headers.contains_key(AUTHORIZATION)
        && crate::endpoints::sign_in::wants_html(headers)
}

/// Phase 1: the head's size limit, which hyper's buffer only bounds
/// loosely. Framing is hyper's alone: a request with both Content-Length
/// and Transfer-Encoding reaches here framed by Transfer-Encoding, its
/// Content-Length removed, and hyper closes the connection after it
/// (RFC 9112 §6.3).
fn check_head<B>(gw: &Gateway, req: &Request<B>) -> Result<(), GatewayError> {
    let headers = req.headers();
    let head_bytes = req.method().as_str().len()
        + req.uri().path_and_query().map_or(1, |pq| pq.as_str().len())
        + 12
        + headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum::<usize>();
    if head_bytes > gw.config.server.max_header_bytes {
        return Err(GatewayError::HeadTooLarge);
    }
    Ok(())
}

/// The request's host, without port (in the case the client wrote it).
fn request_host<B>(req: &Request<B>) -> Option<&str> {
    let host = req
        .uri()
        .host()
        .or_else(|| req.headers().get(HOST).and_then(|h| h.to_str().ok()))?;
    Some(match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    })
}

/// Phase 3.
fn route_request<B>(
    gw: &Gateway,
    req: &Request<B>,
    path: &str,
) -> Result<Arc<Route>, GatewayError> {
    gw.routes
        .find(request_host(req), path)
        .cloned()
        .ok_or(GatewayError::NoRoute)
}

/// Phase 4 (see [`crate::auth::authenticate`]), its outcome recorded for
/// the response, the log line and the metrics.
pub async fn authenticate(
    gw: &Gateway,
    headers: &HeaderMap,
    ctx: &mut RequestContext,
) -> Result<Authn, GatewayError> {
    let authentication = gw.authenticator().authenticate(headers).await?;
    ctx.auth = authentication.outcome();
    if let Authn::Authenticated { identity, .. } = &authentication.authn {
        ctx.user = Some(identity.clone());
    }
    ctx.set_cookies.extend(authentication.set_cookies);
    if let Some(error) = &authentication.refresh_failure {
        log_refresh_failure(error, ctx);
    }
    Ok(authentication.authn)
}

fn log_refresh_failure(error: &RefreshError, ctx: &RequestContext) {
    tracing::info!(
        event = "refresh_failed",
        request_id = ctx.request_id.to_str().unwrap_or("-"),
        reason = %error,
    );
}

/// The right to forward a request, with the identity it carries. Only
/// [`authorize`] makes one, and [`mutate`] requires one.
#[derive(Debug)]
pub struct Permit {
    identity: Option<(Arc<Identity>, Option<String>)>,
}

/// Phase 5.
pub fn authorize(
    route: &Route,
    authn: Authn,
    ctx: &mut RequestContext,
) -> Result<Permit, GatewayError> {
    match (route.auth, authn) {
        (AuthPolicy::Public, _) => Ok(Permit { identity: None }),
        (
            _,
            Authn::Authenticated {
                identity, token, ..
            },
        ) if identity.has_any_role(&route.roles) => Ok(Permit {
            identity: Some((identity, token)),
        }),
        (AuthPolicy::Required, Authn::Authenticated { .. }) => {
            ctx.auth = AuthOutcome::Forbidden;
            Err(GatewayError::Forbidden)
        }
        (AuthPolicy::Required, Authn::Anonymous(why)) => {
            Err(GatewayError::Unauthenticated(why.challenge()))
        }
        // Optional: anonymous, or signed in without a listed role.
        (AuthPolicy::Optional, _) => Ok(Permit { identity: None }),
    }
}

/// Phase 6: the upstream request.
fn mutate<B: RequestBody>(
    gw: &Gateway,
    route: &Route,
    req: Request<B>,
    path: &str,
    permit: Permit,
    ctx: &mut RequestContext,
) -> Result<Request<Body>, GatewayError> {
    let (mut parts, body) = req.into_parts();
    if let Some(limit) = route.max_body {
        let declared = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(GatewayError::BodyTooLarge);
        }
    }
    let headers = &mut parts.headers;
    // Room for the identity and forwarding headers: one growth, not several.
    headers.reserve(8);
    headers::remove_hop_by_hop(headers);
    gw.identity.strip(headers);
    cookies::remove(headers, &[&gw.cookies.access, &gw.cookies.refresh]);
    if route.auth != AuthPolicy::Public
        && headers
            .get(AUTHORIZATION)
            .and_then(bearer_credentials)
            .is_some()
    {
        headers.remove(AUTHORIZATION);
    }
    if let Some((identity, token)) = &permit.identity {
        gw.identity.inject(headers, identity);
        if let Some(token) = token {
            if let Ok(value) = HeaderValue::from_str(&format!("Bearer {token}")) {
                headers.insert(AUTHORIZATION, value);
            }
        }
    }
    // HTTP/2 clients name the host in `:authority`; the upstream (HTTP/1.1)
    // and X-Forwarded-Host need it as `Host`.
    if !headers.contains_key(HOST) {
        if let Some(Ok(authority)) = parts
            .uri
            .authority()
            .map(|a| HeaderValue::from_str(a.as_str()))
        {
            headers.insert(HOST, authority);
        }
    }
    headers::set_forwarded(headers, ctx.peer.ip(), gw.scheme);
    headers.insert(headers::X_REQUEST_ID.clone(), ctx.request_id.clone());
    if !route.preserve_host || !headers.contains_key(HOST) {
        if let Ok(host) = HeaderValue::from_str(route.authority.as_str()) {
            headers.insert(HOST, host);
        }
    }
    parts.uri = route
        .upstream_uri(path, parts.uri.query())
        .map_err(|_| GatewayError::BadRequest("Malformed request target"))?;
    parts.version = Version::HTTP_11;
    // Marked before the limit wraps it (the limit's own error stays
    // unmarked), so that `forward` tells the client's body failing from
    // the upstream failing: the upstream client reports both alike. The
    // legacy client's HTTP/2 side drops the body's error, hence the flag.
    let body_failed = matches!(route.clients.request, UpstreamClient::Legacy(_))
        .then(upstream::ClientBodyFailed::default);
    if let Some(flag) = &body_failed {
        parts.extensions.insert(flag.clone());
    }
    let body = body.map_err(move |e| {
        if let Some(flag) = &body_failed {
            flag.set();
        }
        upstream::ClientBodyError::new(e)
    });
    let body = match route.max_body {
        Some(limit) => http_body_util::Limited::new(body, limit as usize)
            .map_err(Into::into)
            .boxed_unsync(),
        None => body.map_err(Into::into).boxed_unsync(),
    };
    ctx.request_body_unread = false;
    Ok(Request::from_parts(parts, body))
}

/// Phase 7. The timeout covers the upstream's response head only; bodies
/// (and upgraded connections) stream for as long as they last.
async fn forward(
    gw: &Gateway,
    route: &Route,
    client: &UpstreamClient,
    req: Request<Body>,
    ctx: &mut RequestContext,
) -> Result<Response<Body>, GatewayError> {
    let body_failed = req
        .extensions()
        .get::<upstream::ClientBodyFailed>()
        .cloned();
    let started = tokio::time::Instant::now();
    let result = tokio::time::timeout(gw.config.server.request_timeout, client.request(req)).await;
    ctx.upstream_latency = Some(started.elapsed());
    let mut response = match result {
        Err(_elapsed) => return Err(GatewayError::UpstreamTimeout),
        Ok(Err(e)) if upstream::body_too_large(&*e) => return Err(GatewayError::BodyTooLarge),
        Ok(Err(e))
            if upstream::client_body_failed(&*e)
                || body_failed
                    .as_ref()
                    .is_some_and(upstream::ClientBodyFailed::is_set) =>
        {
            // The upstream connection was dropped mid-body, so the upstream
            // never saw the request end.
            let reason = anyhow::Chain::new(&*e)
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(": ");
            tracing::info!(
                event = "request_body_failed",
                route = %route.name,
                reason,
                request_id = ctx.request_id.to_str().unwrap_or("-"),
            );
            ctx.request_body_unread = true;
            return Err(GatewayError::BadRequest(
                "The request body is malformed or was cut short",
            ));
        }
        Ok(Err(e)) => {
            if let Some(tls) = upstream::tls_failure(&*e) {
                tracing::warn!(
                    event = "upstream_tls_failed",
                    route = %route.name,
                    upstream = %route.authority,
                    reason = %tls,
                    request_id = ctx.request_id.to_str().unwrap_or("-"),
                    "the upstream's TLS handshake failed (certificate not trusted or invalid?); answering 502",
                );
            }
            return Err(GatewayError::UpstreamUnreachable(e));
        }
        Ok(Ok(response)) => response,
    };
    if upstream::response_head_bytes(&response) > upstream::MAX_RESPONSE_HEAD_BYTES {
        // Dropped unread: its connection is not reused.
        return Err(GatewayError::UpstreamUnreachable(
            "the upstream's response head is larger than 64 KiB".into(),
        ));
    }
    headers::remove_hop_by_hop(response.headers_mut());
    Ok(response)
}

/// Phase 8: on every response.
fn response_filter(response: &mut Response<Body>, ctx: &mut RequestContext) {
    let headers = response.headers_mut();
    headers.insert(headers::X_REQUEST_ID.clone(), ctx.request_id.clone());
    // An answer sent before the request's body was read (a 401 to an
    // upload, say) leaves that body on the wire: a client that went on
    // with its next request there would have it read as the body's end.
    if ctx.request_body_unread {
        headers.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    for cookie in ctx.set_cookies.drain(..) {
        headers.append(SET_COOKIE, cookie);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_host_strips_port() {
        let req = Request::builder()
            .uri("/x")
            .header(HOST, "API.example.com:8080")
            .body(())
            .unwrap();
        assert_eq!(request_host(&req), Some("API.example.com"));
    }
}
