//! `POST /token`: a password or refresh grant, answered with a token pair
//! as JSON, or, for a browser's sign-in form, with cookies and a redirect
//! (or the form again, with the error).

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode};
use serde_json::json;

use super::{read_fields, refresh_cookie, sign_in};
use crate::auth::authenticate::{AuthOutcome, Via};
use crate::auth::login::{self, LoginFailure, TokenRequest};
use crate::auth::redirect::{safe_redirect_to, RedirectHosts};
use crate::auth::refresh::{RefreshError, TokenPair};
use crate::auth::Identity;
use crate::gateway::Gateway;
use crate::observe::audit::{AuditEvent, Record};
use crate::observe::metrics;
use crate::request::RequestContext;
use crate::response::{self, Body, GatewayError, RequestBody};
use crate::users::UserStoreError;

pub async fn token<B: RequestBody>(
    gw: &Gateway,
    req: Request<B>,
    ctx: &mut RequestContext,
) -> Result<Response<Body>, GatewayError> {
    let browser_html = sign_in::wants_html(req.headers());
    let (parts, fields) = read_fields(req, ctx).await?;
    let fields = fields
        .ok_or_else(|| GatewayError::InvalidRequest("username and password are required".into()))?;
    // A browser's form post (it asks for HTML, or carries `rd`) gets pages
    // and redirects instead of JSON.
    if browser_html || fields.contains_key("rd") {
        let rd = fields
            .get("rd")
            .and_then(|rd| {
                let hosts = RedirectHosts::new(&parts.headers, gw.config.cookies.domain.as_deref());
                safe_redirect_to(rd, &hosts)
            })
            .unwrap_or_else(|| "/".into());
        let username = fields.get("username").cloned().unwrap_or_default();
        return match grant(gw, &parts, fields, ctx).await {
            Ok(pair) => {
                ctx.set_session_cookies(gw, &pair);
                Ok(sign_in::redirect(StatusCode::SEE_OTHER, &rd))
            }
            Err(error) => {
                let mut page = sign_in::sign_in(
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

/// Runs a password or refresh grant; each outcome is an audit event.
async fn grant(
    gw: &Gateway,
    parts: &http::request::Parts,
    fields: HashMap<String, String>,
    ctx: &mut RequestContext,
) -> Result<TokenPair, GatewayError> {
    let pair = match login::token_request(fields)? {
        TokenRequest::Password { username, password } => {
            let attempt = match gw.throttle.begin(&username, &parts.headers, ctx.peer).await {
                Ok(attempt) => attempt,
                Err(error) => {
                    if let GatewayError::TooManyRequests { .. } = error {
                        login_failed(gw, parts, ctx, &username, LoginFailure::Throttled);
                    }
                    return Err(error);
                }
            };
            let checked = login::check_password(&*gw.users, &gw.passwords, &username, password)
                .await
                .map_err(users_unavailable)?;
            let user = match checked {
                Ok(user) => user,
                Err(failure) => {
                    attempt.failed().await?;
                    metrics::get().login("failure");
                    ctx.auth = AuthOutcome::LoginFailed;
                    tracing::warn!(
                        event = "login_failed",
                        user = %username,
                        peer = %ctx.peer.ip(),
                        request_id = ctx.request_id.to_str().unwrap_or("-"),
                    );
                    login_failed(gw, parts, ctx, &username, failure);
                    return Err(GatewayError::InvalidGrant {
                        status: StatusCode::UNAUTHORIZED,
                        detail: "Incorrect username or password",
                    });
                }
            };
            attempt.succeeded().await?;
            metrics::get().login("success");
            ctx.user = Some(Arc::new(Identity::named(&user.username)));
            ctx.auth = AuthOutcome::LoggedIn;
            let pair = gw
                .session_service
                .start(user)
                .await
                .map_err(|e| refresh_error(gw, parts, e, ctx))?;
            gw.audit.record(
                Record::new(AuditEvent::LoginSucceeded)
                    .user(&pair.user.username)
                    .session(&pair.family)
                    .origin(ctx.origin(gw, &parts.headers)),
            );
            pair
        }
        TokenRequest::Refresh { refresh_token } => {
            let presented = match refresh_token {
                Some(token) => token,
                None => refresh_cookie(gw, parts)?.ok_or_else(|| {
                    GatewayError::InvalidRequest("refresh_token is required".into())
                })?,
            };
            let pair = gw
                .session_service
                .refresh(&presented)
                .await
                .map_err(|e| refresh_error(gw, parts, e, ctx))?;
            ctx.user = Some(Arc::new(Identity::named(&pair.user.username)));
            ctx.auth = AuthOutcome::Authenticated(Via::Refresh);
            gw.audit.record(
                Record::new(AuditEvent::TokenRefreshed)
                    .user(&pair.user.username)
                    .session(&pair.family)
                    .reason("explicit")
                    .origin(ctx.origin(gw, &parts.headers)),
            );
            pair
        }
    };
    Ok(pair)
}

/// The `login_failed` audit event; `username` is the one tried.
fn login_failed(
    gw: &Gateway,
    parts: &http::request::Parts,
    ctx: &RequestContext,
    username: &str,
    failure: LoginFailure,
) {
    gw.audit.record(
        Record::new(AuditEvent::LoginFailed)
            .user(username)
            .reason(failure.audit_reason())
            .origin(ctx.origin(gw, &parts.headers)),
    );
}

fn users_unavailable(e: UserStoreError) -> GatewayError {
    match e {
        UserStoreError::Unavailable(source) => GatewayError::Unavailable(source),
        other => GatewayError::Internal(Box::new(other)),
    }
}

fn refresh_error(
    gw: &Gateway,
    parts: &http::request::Parts,
    error: RefreshError,
    ctx: &mut RequestContext,
) -> GatewayError {
    if error.is_unavailable() {
        return GatewayError::Unavailable(Box::new(error));
    }
    if error.is_internal() {
        return GatewayError::Internal(Box::new(error));
    }
    tracing::info!(event = "refresh_failed", reason = %error, request_id = ctx.request_id.to_str().unwrap_or("-"));
    error.audit(&gw.audit, ctx.origin(gw, &parts.headers));
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
