//! The request pipeline. Every request passes these phases, in this order
//! (see [`process`]), each in a module of its own:
//!
//! 1. **[`check`]**: head size, CONNECT/TRACE refusal, path normalization
//!    — or 400/405/431
//! 2. **own endpoints** ([`crate::endpoints`]): `/token`, `/logout`,
//!    `/userinfo`, `/healthz`, ...
//! 3. **[`route`]**: longest prefix (and host) on the normalized path — or
//!    404
//! 4. **authenticate** ([`crate::auth::authenticate`]): Bearer header, else
//!    access cookie; on a missing or expired cookie with a refresh cookie, a
//!    silent refresh; a cookie credential on an unsafe method passes the
//!    [`crate::auth::csrf`] check first
//! 5. **[`authorize`]**: the route's policy and roles → a [`Permit`], or
//!    401 (a browser: the sign-in page) or 403
//! 6. **[`mutate`]**: strip hop-by-hop, spoofed identity headers and our
//!    cookies; inject identity and forwarding headers
//! 7. **[`forward`]**: the route's pooled upstream client — or 502/504, or
//!    400 when the client's own body breaks off mid-stream (malformed
//!    chunked framing); an answered WebSocket upgrade is then spliced (see
//!    [`websocket`])
//! 8. **response filter** ([`respond`], on every response, errors
//!    included): request id, `Set-Cookie`, `Connection: close` when an
//!    HTTP/1 request body was left unread, metrics, one log line

pub mod authorize;
pub mod check;
pub mod forward;
pub mod mutate;
pub mod path;
pub mod respond;
pub mod route;
pub mod websocket;

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response};

use crate::auth::authenticate::{Anonymous, Authn};
use crate::auth::csrf::Credential;
use crate::config::AuthPolicy;
use crate::endpoints::{self, sign_in, Endpoint};
use crate::gateway::Gateway;
use crate::response::{Body, GatewayError, RequestBody};
use authorize::{authorize, Permit};
use forward::forward;
use mutate::mutate;

use crate::request::RequestContext;

/// Entry point from the server: never fails, always answers.
pub async fn handle<B: RequestBody>(
    gw: Arc<Gateway>,
    req: Request<B>,
    peer: SocketAddr,
) -> Response<Body> {
    let mut ctx = RequestContext::new(req.headers(), peer);
    ctx.request_body_unread = respond::sends_http1_body(&req);
    let logged = respond::access_logged(&req);
    let response = match process(&gw, req, &mut ctx).await {
        Ok(response) => response,
        Err(error) => respond::error_response(error, &ctx),
    };
    respond::finish(&gw, response, &mut ctx, logged)
}

/// The phases, top to bottom.
async fn process<B: RequestBody>(
    gw: &Gateway,
    req: Request<B>,
    ctx: &mut RequestContext,
) -> Result<Response<Body>, GatewayError> {
    check::head(&req, gw.config.server.max_header_bytes)?;
    check::method(req.method())?;
    // A clone of the URI shares its bytes: the path borrows from it, not
    // from the request, which moves on to the upstream.
    let uri = req.uri().clone();
    let path = check::path(&uri)?;
    if let Some(endpoint) = Endpoint::find(gw, &path) {
        return Box::pin(endpoints::serve(gw, endpoint, req, ctx)).await;
    }
    let route = route::route(&gw.routes, &req, &path)?;
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
        gw.csrf.check(
            req.method(),
            req.uri(),
            req.headers(),
            Credential::Authentication,
        )?;
        ctx.authenticated(gw.authenticator().authenticate(req.headers()).await?)
    };
    let lifetime = upgrade.then(|| websocket::Lifetime::of(&authn));
    let permit = match authorize(&route, authn, ctx) {
        Err(GatewayError::Unauthenticated(_))
            if !upgrade && authorize::sends_to_sign_in(gw, req.headers()) =>
        {
            let original = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
            return Ok(sign_in::redirect_to_sign_in(&gw.paths.login, original));
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
