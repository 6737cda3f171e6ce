//! Access tokens: signing, verification with the algorithm pinned by
//! configuration, and the JWKS document for asymmetric keys.
//!
//! The token header's `alg` is never trusted: the validation accepts only
//! the configured algorithm, so `none` and HS256-signed-with-the-public-key
//! tokens fail before any key is used. A `kid` selects among the current and
//! the previous (rotation) keys; an unknown `kid` is an invalid token.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::token_cache::TokenCache;
use super::Identity;
use crate::config::{defaults, JwtAlgorithm, JwtConfig, Problem};
use crate::sessions::{hex, unhex, FamilyId};
use crate::users::User;

/// Minimum HMAC secret length: 256 bits, as RFC 7518 §3.2 requires for HS256.
pub const MIN_SECRET_BYTES: usize = 32;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    pub iat: u64,
    pub nbf: u64,
    pub iss: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Value>,
    pub jti: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    /// The session (refresh-token family, hex) the token was minted in;
    /// absent on tokens minted outside a session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Claims {
    pub fn into_identity(self) -> Identity {
        Identity {
            sub: self.sub,
            email: self.email,
            roles: self.roles,
            extra: self.extra,
            exp: self.exp,
            session: self.sid.as_deref().and_then(unhex),
            header_values: OnceLock::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// Signature good, `exp` passed: the only case a refresh may follow.
    Expired,
    /// Anything else: bad signature, wrong issuer or audience, unknown key,
    /// too large, not yet valid, malformed.
    Invalid,
}

pub struct JwtService {
    header: Header,
    encoding: EncodingKey,
    /// Verification keys by `kid`; the current key is also under `None`.
    decoding: HashMap<Option<String>, DecodingKey>,
    select_by_kid: bool,
    validation: Validation,
    issuer: String,
    audience: Option<String>,
    pub access_ttl: std::time::Duration,
    jwks: Option<Bytes>,
    cache: TokenCache,
}

impl std::fmt::Debug for JwtService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtService")
            .field("alg", &self.header.alg)
            .field("kid", &self.header.kid)
            .finish_non_exhaustive()
    }
}

fn algorithm(alg: JwtAlgorithm) -> Algorithm {
    match alg {
        JwtAlgorithm::HS256 => Algorithm::HS256,
        JwtAlgorithm::HS384 => Algorithm::HS384,
        JwtAlgorithm::HS512 => Algorithm::HS512,
        JwtAlgorithm::RS256 => Algorithm::RS256,
        JwtAlgorithm::ES256 => Algorithm::ES256,
        JwtAlgorithm::EdDSA => Algorithm::EdDSA,
    }
}

fn read_secret(env: &crate::config::Located<String>) -> Result<Vec<u8>, Problem> {
    let secret = std::env::var(&env.value).map_err(|_| {
        env.problem(format!(
            "environment variable {} (or its .env entry) is not set",
            env.value
        ))
    })?;
    if secret.len() < MIN_SECRET_BYTES {
        return Err(env.problem(format!(
            "the secret in {} is {} bytes; at least {MIN_SECRET_BYTES} are required",
            env.value,
            secret.len()
        )));
    }
    Ok(secret.into_bytes())
}

fn read_pem(path: &crate::config::Located<std::path::PathBuf>) -> Result<Vec<u8>, Problem> {
    std::fs::read(&path.value)
        .map_err(|e| path.problem(format!("cannot read {}: {e}", path.value.display())))
}

impl JwtService {
    /// Reads secrets and keys named by the configuration. Errors name the key.
    pub fn from_config(config: &JwtConfig) -> Result<JwtService, Vec<Problem>> {
        let alg = algorithm(config.algorithm);
        let mut problems = Vec::new();
        let mut decoding = HashMap::new();
        let mut jwks = Vec::new();

        let encoding = if config.algorithm.is_hmac() {
            match read_secret(&config.secret_env) {
                Ok(secret) => {
                    decoding.insert(None, DecodingKey::from_secret(&secret));
                    Some(EncodingKey::from_secret(&secret))
                }
                Err(p) => {
                    problems.push(p);
                    None
                }
            }
        } else {
            let located = config.private_key.as_ref().expect("validated at load");
            let key = read_pem(located).and_then(|pem| {
                let key = match alg {
                    Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
                    Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
                    _ => EncodingKey::from_ed_pem(&pem),
                }
                .map_err(|e| located.problem(format!("not a usable {alg:?} private key: {e}")))?;
                let mut jwk = Jwk::from_encoding_key(&key, alg)
                    .map_err(|e| located.problem(format!("cannot derive the public key: {e}")))?;
                let decoding_key = DecodingKey::from_jwk(&jwk)
                    .map_err(|e| located.problem(format!("cannot derive the public key: {e}")))?;
                jwk.common.key_id = config.key_id.clone();
                jwk.common.public_key_use = Some(PublicKeyUse::Signature);
                jwk.common.key_algorithm = Some(key_algorithm(alg));
                jwks.push(jwk);
                decoding.insert(None, decoding_key);
                Ok(key)
            });
            key.map_err(|p| problems.push(p)).ok()
        };
        if let (Some(kid), Some(current)) = (&config.key_id, decoding.get(&None).cloned()) {
            decoding.insert(Some(kid.clone()), current);
        }

        for previous in &config.previous_keys {
            let key = if config.algorithm.is_hmac() {
                previous
                    .secret_env
                    .as_ref()
                    .map(|env| read_secret(env).map(|s| DecodingKey::from_secret(&s)))
            } else {
                previous.public_key.as_ref().map(|path| {
                    read_pem(path).and_then(|pem| {
                        let key = match alg {
                            Algorithm::RS256 => DecodingKey::from_rsa_pem(&pem),
                            Algorithm::ES256 => DecodingKey::from_ec_pem(&pem),
                            _ => DecodingKey::from_ed_pem(&pem),
                        }
                        .map_err(|e| path.problem(format!("not a {alg:?} public key: {e}")))?;
                        let mut jwk = Jwk::from_decoding_key(&key, Some(alg))
                            .map_err(|e| path.problem(format!("unusable public key: {e}")))?;
                        jwk.common.key_id = Some(previous.key_id.clone());
                        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
                        jwks.push(jwk);
                        Ok(key)
                    })
                })
            };
            match key {
                Some(Ok(key)) => {
                    decoding.insert(Some(previous.key_id.clone()), key);
                }
                Some(Err(p)) => problems.push(p),
                None => {}
            }
        }

        let Some(encoding) = encoding.filter(|_| problems.is_empty()) else {
            return Err(problems);
        };

        let mut validation = Validation::new(alg);
        validation.leeway = config.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_issuer(&[&config.issuer]);
        let mut required = vec!["exp", "nbf", "iss", "sub"];
        match &config.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);

        let mut header = Header::new(alg);
        header.kid = config.key_id.clone();
        let jwks = (!config.algorithm.is_hmac())
            .then(|| Bytes::from(serde_json::to_vec(&JwkSet { keys: jwks }).unwrap_or_default()));
        Ok(JwtService {
            header,
            encoding,
            select_by_kid: config.key_id.is_some() || !config.previous_keys.is_empty(),
            decoding,
            validation,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            access_ttl: config.access_ttl,
            jwks,
            cache: TokenCache::default(),
        })
    }

    /// Signs an access token for `user`, valid from `iat` for the access TTL.
    /// Deterministic for the same inputs, so parallel refreshes that share a
    /// rotation hand out the same token.
    pub fn issue(
        &self,
        user: &User,
        iat: u64,
        jti: String,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        self.sign(user, iat, jti, None)
    }

    /// [`Self::issue`] for a token that belongs to a session (`sid` claim),
    /// so whatever it opens can end when the session does.
    pub fn issue_in_session(
        &self,
        user: &User,
        iat: u64,
        jti: String,
        family: &FamilyId,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        self.sign(user, iat, jti, Some(hex(family)))
    }

    fn sign(
        &self,
        user: &User,
        iat: u64,
        jti: String,
        sid: Option<String>,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let claims = Claims {
            sub: user.username.clone(),
            exp: iat + self.access_ttl.as_secs(),
            iat,
            nbf: iat,
            iss: self.issuer.clone(),
            aud: self.audience.clone().map(Value::String),
            jti,
            email: user.email.clone(),
            roles: user.roles.clone(),
            sid,
            extra: user.claims.clone(),
        };
        jsonwebtoken::encode(&self.header, &claims, &self.encoding)
    }

    /// Verifies a token, or finds it among those verified before (see
    /// [`TokenCache`]); only a success is remembered.
    pub fn verify(&self, token: &str) -> Result<Arc<Identity>, TokenError> {
        if token.len() > defaults::MAX_TOKEN_BYTES {
            return Err(TokenError::Invalid);
        }
        let now = super::now_secs();
        let cache_key = TokenCache::key(token);
        if let Some(identity) = self.cache.get(&cache_key, now) {
            return Ok(identity);
        }
        let identity = Arc::new(self.verify_uncached(token)?.into_identity());
        self.cache.insert(cache_key, &identity, now);
        Ok(identity)
    }

    fn verify_uncached(&self, token: &str) -> Result<Claims, TokenError> {
        let key = if self.select_by_kid {
            let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Invalid)?;
            self.decoding.get(&header.kid)
        } else {
            self.decoding.get(&None)
        }
        .ok_or(TokenError::Invalid)?;
        match jsonwebtoken::decode::<Claims>(token, key, &self.validation) {
            // No token authgate mints lives longer than the access TTL: an
            // `exp` far beyond it was not minted here (or with this config).
            Ok(data)
                if data.claims.exp
                    > super::now_secs()
                        .saturating_add(self.access_ttl.as_secs())
                        .saturating_add(self.validation.leeway) =>
            {
                Err(TokenError::Invalid)
            }
            Ok(data) => Ok(data.claims),
            Err(e) if *e.kind() == ErrorKind::ExpiredSignature => Err(TokenError::Expired),
            Err(_) => Err(TokenError::Invalid),
        }
    }

    /// The public keys as a JWK Set; `None` for HMAC algorithms.
    pub fn jwks(&self) -> Option<&Bytes> {
        self.jwks.as_ref()
    }
}

fn key_algorithm(alg: Algorithm) -> KeyAlgorithm {
    match alg {
        Algorithm::RS256 => KeyAlgorithm::RS256,
        Algorithm::ES256 => KeyAlgorithm::ES256,
        _ => KeyAlgorithm::EdDSA,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    fn service(toml: &str, env: &str, secret: &str) -> JwtService {
        std::env::set_var(env, secret);
        let config = Config::parse(Path::new("g.toml"), toml).unwrap();
        JwtService::from_config(&config.jwt).unwrap()
    }

    fn alice() -> User {
        User {
            username: "alice".into(),
            email: Some("a@example.com".into()),
            roles: vec!["admin".into()],
            ..User::default()
        }
    }

    #[test]
    fn round_trip_and_expiry() {
        let jwt = service(
            "[jwt]\nsecret_env = \"JWT_TEST_A\"\naccess_ttl = \"60s\"\n",
            "JWT_TEST_A",
            &"k".repeat(32),
        );
        let now = crate::auth::now_secs();
        let token = jwt.issue(&alice(), now, "j1".into()).unwrap();
        let claims = jwt.verify(&token).unwrap();
        assert_eq!(claims.sub, "alice");
        assert_eq!(claims.roles, vec!["admin"]);
        let old = jwt.issue(&alice(), now - 3600, "j2".into()).unwrap();
        assert_eq!(jwt.verify(&old).unwrap_err(), TokenError::Expired);
        let tampered = format!("{}x", &token[..token.len() - 1]);
        assert_eq!(jwt.verify(&tampered).unwrap_err(), TokenError::Invalid);
    }

    #[test]
    fn cached_tokens_verify_the_same_and_still_expire() {
        let jwt = service(
            "[jwt]\nsecret_env = \"JWT_TEST_CACHE\"\naccess_ttl = \"60s\"\n",
            "JWT_TEST_CACHE",
            &"c".repeat(32),
        );
        // Expires two seconds from now (exp = iat + 60).
        let iat = crate::auth::now_secs() - 58;
        let token = jwt.issue(&alice(), iat, "j-cache".into()).unwrap();
        let first = jwt.verify(&token).unwrap();
        assert_eq!(jwt.cache.len(), 1);
        let second = jwt.verify(&token).unwrap();
        assert_eq!(first.sub, "alice");
        // A hit shares the identity (and its header values), not a copy.
        assert!(Arc::ptr_eq(&first, &second));
        // Failures are never remembered.
        let tampered = format!("{}x", &token[..token.len() - 1]);
        assert_eq!(jwt.verify(&tampered).unwrap_err(), TokenError::Invalid);
        assert_eq!(jwt.verify(&tampered).unwrap_err(), TokenError::Invalid);
        assert_eq!(jwt.cache.len(), 1);
        // Once past `exp`, the cached token reports Expired like any other.
        while crate::auth::now_secs() <= first.exp {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert_eq!(jwt.verify(&token).unwrap_err(), TokenError::Expired);
    }

    #[test]
    fn exp_beyond_the_access_ttl_is_invalid() {
        let jwt = service(
            "[jwt]\nsecret_env = \"JWT_TEST_D\"\naccess_ttl = \"60s\"\n",
            "JWT_TEST_D",
            &"d".repeat(32),
        );
        let now = crate::auth::now_secs();
        let token = |exp: u64| {
            let claims = Claims {
                sub: "alice".into(),
                exp,
                iat: now,
                nbf: now,
                iss: "authgate".into(),
                aud: None,
                jti: "j".into(),
                sid: None,
                email: None,
                roles: vec![],
                extra: Map::new(),
            };
            jsonwebtoken::encode(&jwt.header, &claims, &jwt.encoding).unwrap()
        };
        assert!(jwt.verify(&token(now + 60)).is_ok());
        assert_eq!(
            jwt.verify(&token(now + 3600)).unwrap_err(),
            TokenError::Invalid
        );
        assert_eq!(
            jwt.verify(&token(u64::MAX)).unwrap_err(),
            TokenError::Invalid
        );
    }

    #[test]
    fn short_secret_is_refused_with_its_key() {
        std::env::set_var("JWT_TEST_SHORT", "short");
        let config = Config::parse(
            Path::new("g.toml"),
            "[jwt]\nsecret_env = \"JWT_TEST_SHORT\"\n",
        )
        .unwrap();
        let problems = JwtService::from_config(&config.jwt).unwrap_err();
        assert_eq!(problems[0].key, "jwt.secret_env");
        assert_eq!(problems[0].line, Some(2));
    }

    #[test]
    fn other_secret_and_oversized_tokens_are_invalid() {
        let a = service(
            "[jwt]\nsecret_env = \"JWT_TEST_B\"\n",
            "JWT_TEST_B",
            &"a".repeat(32),
        );
        let b = service(
            "[jwt]\nsecret_env = \"JWT_TEST_C\"\n",
            "JWT_TEST_C",
            &"b".repeat(32),
        );
        let token = b
            .issue(&alice(), crate::auth::now_secs(), "j".into())
            .unwrap();
        assert_eq!(a.verify(&token).unwrap_err(), TokenError::Invalid);
        assert_eq!(
            a.verify(&"a".repeat(9000)).unwrap_err(),
            TokenError::Invalid
        );
    }
}
