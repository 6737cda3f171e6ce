//! The paths authgate answers itself: `/token`, `/logout`, `/userinfo`,
//! `/healthz`, `/readyz` (all under `[auth] path_prefix`) and
//! `/.well-known/jwks.json`. They take precedence over routes.

pub mod sign_in;

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::json;

use crate::auth::authenticate::{AuthOutcome, Authn, Via};
use crate::auth::login::{self, BodyKind, TokenRequest};
use crate::auth::redirect::safe_redirect;
use crate::auth::refresh::{RefreshError, TokenPair};
use crate::auth::Identity;
use crate::cookies;
use crate::gateway::Gateway;
use crate::pipeline::{authenticate, RequestContext};
use crate::response::{self, Body, GatewayError, RequestBody};
use crate::users::UserStoreError;

/// How long `/readyz` waits for each store.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Login,
    Token,
    Logout,
    Userinfo,
    Healthz,
    Readyz,
    Jwks,
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
    if !endpoint.methods().contains(req.method()) {
        return Err(GatewayError::MethodNotAllowed {
            allow: endpoint.methods(),
        });
    }
    match endpoint {
        Endpoint::Login => Ok(login_page(gw, &req)),
        Endpoint::Token => token(gw, req, ctx).await,
        Endpoint::Logout => logout(gw, req, ctx).await,
        Endpoint::Userinfo => userinfo(gw, req, ctx).await,
        Endpoint::Healthz => Ok(response::json(StatusCode::OK, &json!({"status": "ok"}))),
        Endpoint::Readyz => Ok(readiness(gw).await),
        Endpoint::Jwks => match gw.jwt.jwks() {
            Some(jwks) => {
                let mut response = Response::new(response::full(jwks.clone()));
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                Ok(response)
            }
            None => Err(GatewayError::NotFound),
        },
    }
}

/// Reads a small form or JSON body into fields.
async fn read_fields<B: RequestBody>(
    req: Request<B>,
    ctx: &mut RequestContext,
) -> Result<
    (
        http::request::Parts,
        Option<std::collections::HashMap<String, String>>,
    ),
    GatewayError,
> {
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

fn users_unavailable(e: UserStoreError) -> GatewayError {
    match e {
        UserStoreError::Unavailable(source) => GatewayError::Unavailable(source),
        other => GatewayError::Internal(Box::new(other)),
    }
}

async fn token<B: RequestBody>(
    gw: &Gateway,
    req: Request<B>,
    ctx: &mut RequestContext,
) -> Result<Response<Body>, GatewayError> {
    let browser_html = crate::endpoints::sign_in::wants_html(req.headers());
    let (parts, fields) = read_fields(req, ctx).await?;
    let fields = fields
        .ok_or_else(|| GatewayError::InvalidRequest("username and password are required".into()))?;
    // A browser's form post (it asks for HTML, or carries `rd`) gets pages
    // and redirects instead of JSON.
    if browser_html || fields.contains_key("rd") {
        let rd = fields
            .get("rd")
            .and_then(|rd| safe_redirect(rd))
            .unwrap_or_else(|| "/".into());
        let username = fields.get("username").cloned().unwrap_or_default();
        return match grant(gw, &parts, fields, ctx).await {
            Ok(pair) => {
                ctx.set_session_cookies(gw, &pair);
                Ok(crate::endpoints::sign_in::redirect(
                    StatusCode::SEE_OTHER,
                    &rd,
                ))
            }
            Err(error) => {
                let mut page = crate::endpoints::sign_in::sign_in(
                    error.status(),
                    &gw.paths.token,
                    &rd,
                    &username,
                    Some(&error.detail()),
                );
                if let GatewayError::TooManyRequests { retry_after_secs } = error {
                    page.headers_mut()
                        .insert(http::header::RETRY_AFTER, retry_after_secs.into());
                }
                Ok(page)
            }
        };
    }
    let pair = grant(gw, &parts, fields, ctx).await?;
    Ok(token_response(gw, &pair, ctx))
}

/// Runs a password or refresh grant.
async fn grant(
    gw: &Gateway,
    parts: &http::request::Parts,
    fields: std::collections::HashMap<String, String>,
    ctx: &mut RequestContext,
) -> Result<TokenPair, GatewayError> {
    let pair = match login::token_request(fields)? {
        TokenRequest::Password { username, password } => {
            let attempt = gw
                .throttle
                .begin(&username, &parts.headers, ctx.peer)
                .await?;
            let user = login::check_password(&*gw.users, &gw.passwords, &username, password)
                .await
                .map_err(users_unavailable)?;
            let Some(user) = user else {
                attempt.failed().await?;
                crate::observe::metrics::get().login("failure");
                ctx.auth = AuthOutcome::LoginFailed;
                tracing::warn!(
                    event = "login_failed",
                    user = %username,
                    peer = %ctx.peer.ip(),
                    request_id = ctx.request_id.to_str().unwrap_or("-"),
                );
                return Err(GatewayError::InvalidGrant {
                    status: StatusCode::UNAUTHORIZED,
                    detail: "Incorrect username or password",
                });
            };
            attempt.succeeded().await?;
            crate::observe::metrics::get().login("success");
            ctx.user = Some(Arc::new(Identity::named(&user.username)));
            ctx.auth = AuthOutcome::LoggedIn;
            gw.session_service
                .start(user)
                .await
                .map_err(|e| refresh_error(gw, e, ctx))?
        }
        TokenRequest::Refresh { refresh_token } => {
            let presented = match refresh_token {
                Some(token) => token,
                None => {
                    let cookie =
                        cookies::get(&parts.headers, &gw.cookies.refresh).ok_or_else(|| {
                            GatewayError::InvalidRequest("refresh_token is required".into())
                        })?;
                    gw.csrf
                        .check(&parts.method, &parts.uri, &parts.headers, gw.scheme)?;
                    cookie.to_string()
                }
            };
            let pair = gw
                .session_service
                .refresh(&presented)
                .await
                .map_err(|e| refresh_error(gw, e, ctx))?;
            ctx.user = Some(Arc::new(Identity::named(&pair.user.username)));
            ctx.auth = AuthOutcome::Authenticated(Via::Refresh);
            pair
        }
    };
    Ok(pair)
}

fn login_page<B>(gw: &Gateway, req: &Request<B>) -> Response<Body> {
    let rd = req
        .uri()
        .query()
        .and_then(|q| {
            serde_urlencoded::from_str::<Vec<(String, String)>>(q)
                .ok()?
                .into_iter()
                .find_map(|(k, v)| (k == "rd").then_some(v))
        })
        .and_then(|rd| safe_redirect(&rd))
        .unwrap_or_else(|| "/".into());
    crate::endpoints::sign_in::sign_in(StatusCode::OK, &gw.paths.token, &rd, "", None)
}

fn refresh_error(gw: &Gateway, error: RefreshError, ctx: &mut RequestContext) -> GatewayError {
    if error.is_unavailable() {
        return GatewayError::Unavailable(Box::new(error));
    }
    if error.is_internal() {
        return GatewayError::Internal(Box::new(error));
    }
    tracing::info!(event = "refresh_failed", reason = %error, request_id = ctx.request_id.to_str().unwrap_or("-"));
    ctx.auth = AuthOutcome::RefreshFailed;
    ctx.clear_session_cookies(gw);
    GatewayError::InvalidGrant {
        status: StatusCode::BAD_REQUEST,
        detail: "The refresh token is invalid, expired or revoked",
    }
}

fn token_response(gw: &Gateway, pair: &TokenPair, ctx: &mut RequestContext) -> Response<Body> {
    let mut response = response::json(
        StatusCode::OK,
        &json!({
            "access_token": pair.access_token,
            "token_type": "bearer",
            "expires_in": gw.jwt.access_ttl.as_secs(),
            "refresh_token": pair.refresh_token,
        }),
    );
    let headers = response.headers_mut();
    headers.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    headers.insert(http::header::PRAGMA, HeaderValue::from_static("no-cache"));
    ctx.set_session_cookies(gw, pair);
    response
}

async fn logout<B: RequestBody>(
    gw: &Gateway,
    req: Request<B>,
    ctx: &mut RequestContext,
) -> Result<Response<Body>, GatewayError> {
    let method = req.method().clone();
    let (parts, fields) = read_fields(req, ctx).await?;
    let presented = match fields
        .as_ref()
        .and_then(|f| f.get("refresh_token").cloned())
    {
        Some(token) => Some(token),
        None => match cookies::get(&parts.headers, &gw.cookies.refresh) {
            Some(cookie) => {
                gw.csrf
                    .check(&parts.method, &parts.uri, &parts.headers, gw.scheme)?;
                Some(cookie.to_string())
            }
            None => None,
        },
    };
    if let Some(token) = presented {
        let ended = gw
            .session_service
            .logout(&token)
            .await
            .map_err(|e| GatewayError::Unavailable(Box::new(e)))?;
        if ended {
            tracing::info!(
                event = "logout",
                request_id = ctx.request_id.to_str().unwrap_or("-")
            );
        }
    }
    ctx.clear_session_cookies(gw);
    if method == Method::GET {
        return Ok(crate::endpoints::sign_in::signed_out(&gw.paths.login));
    }
    let mut response = Response::new(response::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    Ok(response)
}

async fn userinfo<B: RequestBody>(
    gw: &Gateway,
    req: Request<B>,
    ctx: &mut RequestContext,
) -> Result<Response<Body>, GatewayError> {
    match authenticate(gw, req.headers(), ctx).await? {
        Authn::Authenticated { identity, .. } => {
            let mut claims = identity.extra.clone();
            claims.insert("sub".into(), identity.sub.clone().into());
            if let Some(email) = &identity.email {
                claims.insert("email".into(), email.clone().into());
            }
            claims.insert("roles".into(), identity.roles.clone().into());
            claims.insert("exp".into(), identity.exp.into());
            let mut response = response::json(StatusCode::OK, &claims);
            response.headers_mut().insert(
                http::header::CACHE_CONTROL,
                HeaderValue::from_static("no-store"),
            );
            Ok(response)
        }
        Authn::Anonymous(why) => Err(GatewayError::Unauthenticated(why.challenge())),
    }
}

pub async fn readiness(gw: &Gateway) -> Response<Body> {
    let sessions = tokio::time::timeout(READY_TIMEOUT, gw.sessions.ping()).await;
    let users = tokio::time::timeout(READY_TIMEOUT, gw.users.check()).await;
    let sessions_ok = matches!(sessions, Ok(Ok(())));
    let users_ok = matches!(users, Ok(Ok(())));
    let status = if sessions_ok && users_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let word = |ok: bool| if ok { "ok" } else { "unavailable" };
    response::json(
        status,
        &json!({
            "status": if status == StatusCode::OK { "ready" } else { "not_ready" },
            "checks": { "sessions": word(sessions_ok), "users": word(users_ok) },
        }),
    )
}
