//! Phase 6: the upstream request made from the client's, by the header
//! rules of [`crate::headers`]: hop-by-hop headers, spoofed identity
//! headers and authgate's own cookies go; the permit's identity and the
//! forwarding headers come; the URI points at the route's upstream.

use http::header::{AUTHORIZATION, CONTENT_LENGTH, HOST};
use http::{HeaderValue, Request, Version};
use http_body_util::BodyExt;

use super::authorize::Permit;
use crate::auth::authenticate::bearer_credentials;
use crate::config::AuthPolicy;
use crate::cookies;
use crate::gateway::Gateway;
use crate::headers;
use crate::request::RequestContext;
use crate::response::{Body, GatewayError, RequestBody};
use crate::routes::Route;
use crate::upstream::{self, UpstreamClient};

pub fn mutate<B: RequestBody>(
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
    // unmarked), so that the forward phase tells the client's body failing
    // from the upstream failing: the upstream client reports both alike.
    // The legacy client's HTTP/2 side drops the body's error, hence the
    // flag.
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
