//! `GET /.well-known/jwks.json`: the public keys that verify authgate's
//! tokens, for services that check them themselves (asymmetric algorithms
//! only; with a shared secret there is nothing to publish: 404).

use http::{HeaderValue, Response};

use crate::gateway::Gateway;
use crate::response::{self, Body, GatewayError};

pub fn jwks(gw: &Gateway) -> Result<Response<Body>, GatewayError> {
    let jwks = gw.jwt.jwks().ok_or(GatewayError::NotFound)?;
    let mut response = Response::new(response::full(jwks.clone()));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}
