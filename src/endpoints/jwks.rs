//! `GET /.well-known/jwks.json`: the public keys that verify what authgate
//! signs, for services that check it themselves: the access-token keys
//! (asymmetric algorithms only; a shared secret is never published) and
//! the identity assertion's key. With neither there is nothing to
//! publish: 404.

use bytes::Bytes;
use http::{HeaderValue, Response};
use jsonwebtoken::jwk::JwkSet;

use crate::auth::assertion::Assertions;
use crate::auth::jwt::JwtService;
use crate::gateway::Gateway;
use crate::response::{self, Body, GatewayError};

/// The JWK Set, made once per gateway; `None` when there is no public key.
pub fn document(jwt: &JwtService, assertions: Option<&Assertions>) -> Option<Bytes> {
    let keys: Vec<_> = jwt
        .public_keys()
        .iter()
        .chain(assertions.map(Assertions::jwk))
        .cloned()
        .collect();
    if keys.is_empty() {
        return None;
    }
    // A JwkSet of keys that came from parsed PEM always serializes.
    serde_json::to_vec(&JwkSet { keys }).ok().map(Bytes::from)
}

pub fn jwks(gw: &Gateway) -> Result<Response<Body>, GatewayError> {
    let jwks = gw.jwks.as_ref().ok_or(GatewayError::NotFound)?;
    let mut response = Response::new(response::full(jwks.clone()));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}
