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
use crate::auth::throttle::Attempt;
use crate::auth::Identity;
use crate::gateway::Gateway;
use crate::observe::audit::{AuditEvent, Record};
use crate::observe::metrics;
use crate::request::RequestContext;
use crate::response::{self, Body, GatewayError, RequestBody};
use crate::users::{User, UserStoreError};

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
        let presented_ticket = fields.get("ticket").cloned();
        let mut second_step = None;
        return match grant(gw, &parts, fields, ctx, &mut second_step).await {
            Ok(pair) => {
                ctx.set_session_cookies(gw, &pair);
                Ok(sign_in::redirect(StatusCode::SEE_OTHER, &rd))
            }
            // The password was right: ask for the code, with a ticket
            // rather than the password; after a wrong code, ask again with
            // the same ticket and the error.
            Err(error @ (GatewayError::OtpRequired | GatewayError::OtpInvalid))
                if second_step.is_some() || presented_ticket.is_some() =>
            {
                let first_ask = second_step.is_some();
                let ticket = second_step.or(presented_ticket).unwrap_or_default();
                let (status, message) = if first_ask {
                    (StatusCode::OK, None)
                } else {
                    (error.status(), Some(error.detail()))
                };
                Ok(sign_in::code_page(
                    status,
                    &gw.paths.token,
                    &rd,
                    &ticket,
                    message.as_deref(),
                ))
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
    let pair = grant(gw, &parts, fields, ctx, &mut None).await?;
    Ok(token_response(gw, &pair, ctx))
}

/// Runs a password or refresh grant; each outcome is an audit event.
/// When a password was right but the user's code is still to come,
/// `second_step` receives a sign-in ticket for the page that asks for it.
async fn grant(
    gw: &Gateway,
    parts: &http::request::Parts,
    fields: HashMap<String, String>,
    ctx: &mut RequestContext,
    second_step: &mut Option<String>,
) -> Result<TokenPair, GatewayError> {
    let pair = match login::token_request(fields)? {
        TokenRequest::Password {
            username,
            password,
            otp,
        } => {
            let attempt = begin_attempt(gw, parts, ctx, &username).await?;
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
            if user.totp.is_some() && otp.is_none() {
                *second_step = gw.second_factor.ticket(&user);
            }
            log_in(gw, parts, attempt, user, otp.as_deref(), ctx).await?
        }
        TokenRequest::Ticket { ticket, otp } => {
            let expired = GatewayError::InvalidGrant {
                status: StatusCode::UNAUTHORIZED,
                detail: "The sign-in has expired; sign in again",
            };
            let Some(ticket) = gw.second_factor.redeem(&ticket) else {
                return Err(expired);
            };
            let attempt = begin_attempt(gw, parts, ctx, &ticket.username).await?;
            // The user as they are now: still there, enabled, same password.
            let found = gw
                .users
                .find(&ticket.username)
                .await
                .map_err(users_unavailable)?;
            let failure = match &found {
                Some(user) if user.disabled => Some(LoginFailure::Disabled),
                Some(user) if ticket.matches(user) => None,
                _ => Some(LoginFailure::BadCredentials),
            };
            let (Some(user), None) = (found, failure) else {
                attempt.failed().await?;
                ctx.auth = AuthOutcome::LoginFailed;
                if let Some(failure) = failure {
                    login_failed(gw, parts, ctx, &ticket.username, failure);
                }
                return Err(expired);
            };
            log_in(gw, parts, attempt, user, otp.as_deref(), ctx).await?
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

/// Counts a login attempt in the throttle; a refused one is audited.
async fn begin_attempt<'g>(
    gw: &'g Gateway,
    parts: &http::request::Parts,
    ctx: &RequestContext,
    username: &str,
) -> Result<Attempt<'g>, GatewayError> {
    match gw.throttle.begin(username, &parts.headers, ctx.peer).await {
        Ok(attempt) => Ok(attempt),
        Err(error) => {
            if let GatewayError::TooManyRequests { .. } = error {
                metrics::get().login("throttled");
                login_failed(gw, parts, ctx, username, LoginFailure::Throttled);
            }
            Err(error)
        }
    }
}

/// Finishes a login whose password was right: the second factor (when
/// the user has one), then the session.
async fn log_in(
    gw: &Gateway,
    parts: &http::request::Parts,
    attempt: Attempt<'_>,
    user: User,
    otp: Option<&str>,
    ctx: &mut RequestContext,
) -> Result<TokenPair, GatewayError> {
    match gw.second_factor.check(&user, otp).await {
        Ok(()) => {}
        Err(GatewayError::OtpRequired) => {
            attempt.second_step();
            ctx.auth = AuthOutcome::LoginFailed;
            tracing::info!(
                event = "login_otp_required",
                user = %user.username,
                peer = %ctx.peer.ip(),
                request_id = ctx.request_id.to_str().unwrap_or("-"),
            );
            login_failed(gw, parts, ctx, &user.username, LoginFailure::OtpRequired);
            return Err(GatewayError::OtpRequired);
        }
        Err(GatewayError::OtpInvalid) => {
            attempt.failed().await?;
            metrics::get().login("failure");
            ctx.auth = AuthOutcome::LoginFailed;
            tracing::warn!(
                event = "login_otp_invalid",
                user = %user.username,
                peer = %ctx.peer.ip(),
                request_id = ctx.request_id.to_str().unwrap_or("-"),
            );
            login_failed(gw, parts, ctx, &user.username, LoginFailure::OtpInvalid);
            return Err(GatewayError::OtpInvalid);
        }
        Err(other) => return Err(other),
    }
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
