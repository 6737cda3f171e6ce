//! The paths authgate answers itself: `/login`, `/token`, `/logout`,
//! `/userinfo`, `/healthz`, `/readyz` (all under `[auth] path_prefix`) and
//! `/.well-known/jwks.json`, and with `[forward_auth] enabled` `/verify`
//! and `/verify/redirect`, one module each. They take precedence over
//! routes. The pipeline hands them the request and its
//! [`RequestContext`]; they import nothing of the pipeline.

pub mod health;
pub mod jwks;
pub mod logout;
pub mod sign_in;
pub mod token;
pub mod userinfo;
pub mod verify;

use std::collections::HashMap;

use http::{Method, Request, Response};
use http_body_util::BodyExt;

use crate::auth::csrf::Credential;
use crate::auth::login::{self, BodyKind};
use crate::cookies;
use crate::gateway::Gateway;
use crate::request::RequestContext;
use crate::response::{Body, GatewayError, RequestBody};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Login,
    Token,
    Logout,
    Userinfo,
    Healthz,
    Readyz,
    Jwks,
    /// Forward auth, when `[forward_auth] enabled`.
    Verify(verify::Flavor),
}

impl Endpoint {
    pub fn find(gw: &Gateway, path: &str) -> Option<Endpoint> {
        let p = &gw.paths;
        Some(match path {
            _ if path == p.login => Endpoint::Login,
            _ if path == p.token => Endpoint::Token,
            _ if path == p.logout => Endpoint::Logout,
            _ if path == p.userinfo => Endpoint::Userinfo,
            _ if path == p.healthz => Endpoint::Healthz,
            _ if path == p.readyz => Endpoint::Readyz,
            _ if path == p.jwks => Endpoint::Jwks,
            _ if !gw.config.forward_auth.enabled => return None,
            _ if path == p.verify => Endpoint::Verify(verify::Flavor::Verify),
            _ if path == p.verify_redirect => Endpoint::Verify(verify::Flavor::Redirect),
            // Envoy's ext_authz appends the original path to /verify.
            _ if verify::suffix(&p.verify, path).is_some() => {
                Endpoint::Verify(verify::Flavor::Verify)
            }
            _ => return None,
        })
    }

    fn methods(self) -> &'static [Method] {
        match self {
            Endpoint::Token => &[Method::POST],
            Endpoint::Logout => &[Method::POST, Method::GET],
            _ => &[Method::GET, Method::HEAD],
        }
    }
}

pub async fn serve<B: RequestBody>(
    gw: &Gateway,
    endpoint: Endpoint,
    req: Request<B>,
    ctx: &mut RequestContext,
) -> Result<Response<Body>, GatewayError> {
    // A front proxy asks with the original request's method (nginx's auth
    // subrequest), whatever it is.
    let any_method = matches!(endpoint, Endpoint::Verify(_));
    if !any_method && !endpoint.methods().contains(req.method()) {
        return Err(GatewayError::MethodNotAllowed {
            allow: endpoint.methods(),
        });
    }
    match endpoint {
        Endpoint::Login => Ok(sign_in::login_page(gw, &req)),
        Endpoint::Token => token::token(gw, req, ctx).await,
        Endpoint::Logout => logout::logout(gw, req, ctx).await,
        Endpoint::Userinfo => userinfo::userinfo(gw, req, ctx).await,
        Endpoint::Healthz => Ok(health::liveness()),
        Endpoint::Readyz => Ok(health::readiness(gw).await),
        Endpoint::Jwks => jwks::jwks(gw),
        Endpoint::Verify(flavor) => verify::verify(gw, flavor, req, ctx).await,
    }
}

/// Reads a small form or JSON body into fields.
async fn read_fields<B: RequestBody>(
    req: Request<B>,
    ctx: &mut RequestContext,
) -> Result<(http::request::Parts, Option<HashMap<String, String>>), GatewayError> {
    let (parts, body) = req.into_parts();
    let kind = BodyKind::from_content_type(
        parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
    );
    let bytes = http_body_util::Limited::new(body, login::MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|_| GatewayError::InvalidRequest("The body is too large or was cut short".into()))?
        .to_bytes();
    ctx.request_body_unread = false;
    if bytes.is_empty() {
        return Ok((parts, None));
    }
    let kind = kind.ok_or_else(|| {
        GatewayError::InvalidRequest(
            "Content-Type must be application/x-www-form-urlencoded or application/json".into(),
        )
    })?;
    Ok((parts, Some(login::fields(kind, &bytes)?)))
}

/// The refresh cookie, for `/token` and `/logout` when the body names no
/// refresh token. The browser attached it, perhaps to a request another
/// site started: the CSRF rule decides whether it may be used.
fn refresh_cookie(
    gw: &Gateway,
    parts: &http::request::Parts,
) -> Result<Option<String>, GatewayError> {
    let Some(cookie) = cookies::get(&parts.headers, &gw.cookies.refresh) else {
        return Ok(None);
    };
    gw.csrf.check(
        &parts.method,
        &parts.uri,
        &parts.headers,
        Credential::RefreshCookie,
    )?;
    Ok(Some(cookie.to_string()))
}
