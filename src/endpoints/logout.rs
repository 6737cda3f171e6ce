//! `POST /logout` (and `GET`, from a link): ends the session of the
//! refresh token in the body or the refresh cookie, and clears the cookies.

use http::{Method, Request, Response, StatusCode};

use super::{read_fields, refresh_cookie, sign_in};
use crate::gateway::Gateway;
use crate::observe::audit::{AuditEvent, Record};
use crate::request::RequestContext;
use crate::response::{self, Body, GatewayError, RequestBody};

pub async fn logout<B: RequestBody>(
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
        None => refresh_cookie(gw, &parts)?,
    };
    if let Some(token) = presented {
        let ended = gw
            .session_service
            .logout(&token)
            .await
            .map_err(|e| GatewayError::Unavailable(Box::new(e)))?;
        if let Some((family, username)) = ended {
            tracing::info!(
                event = "logout",
                request_id = ctx.request_id.to_str().unwrap_or("-")
            );
            gw.audit.record(
                Record::new(AuditEvent::Logout)
                    .user(&username)
                    .session(&family)
                    .origin(ctx.origin(gw, &parts.headers)),
            );
        }
    }
    ctx.clear_session_cookies(gw);
    if method == Method::GET {
        return Ok(sign_in::signed_out(&gw.paths.login));
    }
    let mut response = Response::new(response::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    Ok(response)
}
