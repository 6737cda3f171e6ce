//! `GET /userinfo`: the caller's claims, as the access token carries them.

use http::{HeaderValue, Request, Response, StatusCode};

use crate::auth::authenticate::Authn;
use crate::gateway::Gateway;
use crate::request::RequestContext;
use crate::response::{self, Body, GatewayError, RequestBody};

pub async fn userinfo<B: RequestBody>(
    gw: &Gateway,
    req: Request<B>,
    ctx: &mut RequestContext,
) -> Result<Response<Body>, GatewayError> {
    let authentication = gw.authenticator().authenticate(req.headers()).await?;
    match ctx.authenticated(gw, req.headers(), authentication) {
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
