//! Access tokens: signing, verification with the algorithm pinned by
//! configuration, and the JWKS document for asymmetric keys.
//!
//! The token header's `alg` is never trusted: the validation accepts only
//! the configured algorithm, so `none` and HS256-signed-with-the-public-key
//! tokens fail before any key is used. A `kid` selects among the current and
//! the previous (rotation) keys; a `kid` naming none of them is refused,
//! whether or not a `key_id` is configured.
//!
//! Time-based claims are judged against the service's [`Clock`], not by
//! jsonwebtoken (which reads the system clock), so tests move time instead
//! of sleeping.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use jsonwebtoken::jwk::{Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::token_cache::TokenCache;
use super::Identity;
use crate::clock::Clock;
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

/// The claims an incoming token must carry (`aud` only when an audience is
/// configured); a token without one is refused naming it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequiredClaim {
    Sub,
    Exp,
    Nbf,
    Iat,
    Iss,
    Aud,
    Jti,
}

/// Why a presented access token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefusal {
    /// Not a JWT that parses: bad segments, base64 or JSON, a claim of the
    /// wrong type, or larger than [`defaults::MAX_TOKEN_BYTES`].
    Malformed,
    /// The signature does not verify with the selected key, or the token
    /// names another algorithm than the configured one.
    BadSignature,
    /// Signature good, `exp` passed (beyond the leeway): the only refusal
    /// a silent refresh may follow.
    Expired,
    /// `nbf` is still ahead (beyond the leeway).
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    /// The header's `kid` names no configured key.
    UnknownKeyId,
    MissingClaim(RequiredClaim),
    /// `exp` further away than `access_ttl` (plus leeway): no token
    /// authgate mints lives that long, so this one was not minted here (or
    /// not with this configuration).
    LifetimeBeyondAccessTtl,
}

impl TokenRefusal {
    fn from_decoding(error: &jsonwebtoken::errors::Error) -> TokenRefusal {
        match error.kind() {
            ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => TokenRefusal::BadSignature,
            _ => TokenRefusal::Malformed,
        }
    }
}

/// The claims as presented, the required ones optional, so that a missing
/// claim is refused by name rather than as a parse error.
#[derive(Deserialize)]
struct PresentedClaims {
    sub: Option<String>,
    exp: Option<u64>,
    iat: Option<u64>,
    nbf: Option<u64>,
    iss: Option<String>,
    aud: Option<Value>,
    jti: Option<String>,
    email: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
    sid: Option<String>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

pub struct JwtService {
    header: Header,
    encoding: EncodingKey,
    /// Verification keys by `kid`; the current key is also under `None`.
    decoding: HashMap<Option<String>, DecodingKey>,
    /// Signature and algorithm only: the claims are checked by
    /// [`JwtService::check_claims`] against `clock`.
    validation: Validation,
    leeway: u64,
    issuer: String,
    audience: Option<String>,
    pub access_ttl: std::time::Duration,
    /// The public keys (current and previous); empty for HMAC algorithms.
    public_keys: Vec<Jwk>,
    cache: TokenCache,
    clock: Clock,
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
    /// Reads secrets and keys named by the configuration. Errors name the
    /// key. `clock` judges `exp` and `nbf` and dates the tokens minted.
    pub fn from_config(config: &JwtConfig, clock: Clock) -> Result<JwtService, Vec<Problem>> {
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

        // jsonwebtoken would judge `exp` and `nbf` by the system clock and
        // name no missing claim: it checks the signature and algorithm only.
        let mut validation = Validation::new(alg);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.set_required_spec_claims::<&str>(&[]);

        let mut header = Header::new(alg);
        header.kid = config.key_id.clone();
        Ok(JwtService {
            header,
            encoding,
            decoding,
            validation,
            leeway: config.leeway.as_secs(),
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            access_ttl: config.access_ttl,
            public_keys: jwks,
            cache: TokenCache::default(),
            clock,
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

    /// The time tokens are judged and minted by.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// How many verified tokens are remembered now (their memory is most
    /// of what grows with traffic).
    pub fn cached_tokens(&self) -> usize {
        self.cache.len()
    }

    /// Verifies a token, or finds it among those verified before (see
    /// [`TokenCache`]); only a success is remembered.
    pub fn verify(&self, token: &str) -> Result<Arc<Identity>, TokenRefusal> {
        if token.len() > defaults::MAX_TOKEN_BYTES {
            return Err(TokenRefusal::Malformed);
        }
        let now = self.clock.unix_secs();
        let cache_key = TokenCache::key(token);
        if let Some(identity) = self.cache.get(&cache_key, now) {
            return Ok(identity);
        }
        let identity = Arc::new(self.verify_uncached(token, now)?.into_identity());
        self.cache.insert(cache_key, &identity, now);
        Ok(identity)
    }

    fn verify_uncached(&self, token: &str, now: u64) -> Result<Claims, TokenRefusal> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenRefusal::Malformed)?;
        let key = self
            .decoding
            .get(&header.kid)
            .ok_or(TokenRefusal::UnknownKeyId)?;
        let presented = jsonwebtoken::decode::<PresentedClaims>(token, key, &self.validation)
            .map_err(|e| TokenRefusal::from_decoding(&e))?
            .claims;
        self.check_claims(presented, now)
    }

    /// The claim checks, in jsonwebtoken's order (time before issuer and
    /// audience), so a token refused for several reasons reports the same
    /// one as before the checks moved here.
    fn check_claims(&self, presented: PresentedClaims, now: u64) -> Result<Claims, TokenRefusal> {
        use RequiredClaim as Required;
        let missing = TokenRefusal::MissingClaim;
        let sub = presented.sub.ok_or(missing(Required::Sub))?;
        let exp = presented.exp.ok_or(missing(Required::Exp))?;
        let nbf = presented.nbf.ok_or(missing(Required::Nbf))?;
        let iat = presented.iat.ok_or(missing(Required::Iat))?;
        let iss = presented.iss.ok_or(missing(Required::Iss))?;
        let jti = presented.jti.ok_or(missing(Required::Jti))?;
        if self.audience.is_some() && presented.aud.is_none() {
            return Err(missing(Required::Aud));
        }
        if exp.saturating_add(self.leeway) < now {
            return Err(TokenRefusal::Expired);
        }
        if nbf > now.saturating_add(self.leeway) {
            return Err(TokenRefusal::NotYetValid);
        }
        if iss != self.issuer {
            return Err(TokenRefusal::WrongIssuer);
        }
        if let (Some(expected), Some(aud)) = (&self.audience, &presented.aud) {
            audience_names(aud, expected)?;
        }
        let longest = now
            .saturating_add(self.access_ttl.as_secs())
            .saturating_add(self.leeway);
        if exp > longest {
            return Err(TokenRefusal::LifetimeBeyondAccessTtl);
        }
        Ok(Claims {
            sub,
            exp,
            iat,
            nbf,
            iss,
            aud: presented.aud,
            jti,
            email: presented.email,
            roles: presented.roles,
            sid: presented.sid,
            extra: presented.extra,
        })
    }

    /// The public keys that verify access tokens, for the JWKS; none for
    /// HMAC algorithms (the secret is not published).
    pub fn public_keys(&self) -> &[Jwk] {
        &self.public_keys
    }
}

/// `aud` is one string or an array of them (RFC 7519 §4.1.3); either way
/// it must name this gateway's audience.
fn audience_names(aud: &Value, expected: &str) -> Result<(), TokenRefusal> {
    let names = match aud {
        Value::String(one) => one == expected,
        Value::Array(many) => {
            if !many.iter().all(Value::is_string) {
                return Err(TokenRefusal::Malformed);
            }
            many.iter().any(|name| name == expected)
        }
        _ => return Err(TokenRefusal::Malformed),
    };
    if names {
        Ok(())
    } else {
        Err(TokenRefusal::WrongAudience)
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
    use serde_json::json;
    use std::path::Path;
    use std::time::Duration;

    /// A service on a manual clock; `jwt_section` follows `[jwt]` and names
    /// the secret's variable `env`.
    fn service(jwt_section: &str, env: &str, secret: &str) -> JwtService {
        std::env::set_var(env, secret);
        let toml = format!("[jwt]\nsecret_env = \"{env}\"\n{jwt_section}");
        let config = Config::parse(Path::new("g.toml"), &toml).unwrap();
        JwtService::from_config(&config.jwt, Clock::manual()).unwrap()
    }

    fn alice() -> User {
        User {
            username: "alice".into(),
            email: Some("a@example.com".into()),
            roles: vec!["admin".into()],
            ..User::default()
        }
    }

    /// Claims as authgate mints them for `iat`, valid for 60 seconds.
    fn minted(iat: u64) -> Value {
        json!({"sub": "alice", "iat": iat, "nbf": iat, "exp": iat + 60,
               "iss": "authgate", "jti": "j"})
    }

    /// Signs any claims with the service's own key and header.
    fn sign(jwt: &JwtService, claims: &Value) -> String {
        jsonwebtoken::encode(&jwt.header, claims, &jwt.encoding).unwrap()
    }

    /// The token with one signature character changed, still base64.
    fn tamper_signature(token: &str) -> String {
        let at = token.len() - 10;
        let changed = if &token[at..=at] == "A" { "B" } else { "A" };
        format!("{}{changed}{}", &token[..at], &token[at + 1..])
    }

    #[test]
    fn round_trip_and_expiry() {
        let jwt = service("access_ttl = \"60s\"\n", "JWT_TEST_A", &"k".repeat(32));
        let now = jwt.clock().unix_secs();
        let token = jwt.issue(&alice(), now, "j1".into()).unwrap();
        let claims = jwt.verify(&token).unwrap();
        assert_eq!(claims.sub, "alice");
        assert_eq!(claims.roles, vec!["admin"]);
        let old = jwt.issue(&alice(), now - 3600, "j2".into()).unwrap();
        assert_eq!(jwt.verify(&old).unwrap_err(), TokenRefusal::Expired);
        let tampered = tamper_signature(&token);
        assert_eq!(
            jwt.verify(&tampered).unwrap_err(),
            TokenRefusal::BadSignature
        );
    }

    #[test]
    fn cached_tokens_verify_the_same_and_expire_when_the_clock_passes_exp() {
        let jwt = service("access_ttl = \"60s\"\n", "JWT_TEST_CACHE", &"c".repeat(32));
        let token = jwt
            .issue(&alice(), jwt.clock().unix_secs(), "j-cache".into())
            .unwrap();
        let first = jwt.verify(&token).unwrap();
        assert_eq!(jwt.cache.len(), 1);
        let second = jwt.verify(&token).unwrap();
        assert_eq!(first.sub, "alice");
        // A hit shares the identity (and its header values), not a copy.
        assert!(Arc::ptr_eq(&first, &second));
        // Failures are never remembered.
        let tampered = tamper_signature(&token);
        assert_eq!(
            jwt.verify(&tampered).unwrap_err(),
            TokenRefusal::BadSignature
        );
        assert_eq!(jwt.cache.len(), 1);
        // Past `exp`, the cached token reports Expired like any other.
        jwt.clock().advance(Duration::from_secs(61));
        assert_eq!(jwt.verify(&token).unwrap_err(), TokenRefusal::Expired);
    }

    #[test]
    fn the_leeway_stretches_exp_and_nbf_on_the_services_clock() {
        let jwt = service(
            "access_ttl = \"60s\"\nleeway = \"10s\"\n",
            "JWT_TEST_LEEWAY",
            &"l".repeat(32),
        );
        let now = jwt.clock().unix_secs();
        let token = jwt.issue(&alice(), now, "j".into()).unwrap();
        let mut not_yet = minted(now);
        not_yet["nbf"] = json!(now + 10);
        let early = sign(&jwt, &not_yet);
        assert!(jwt.verify(&early).is_ok(), "nbf within the leeway");
        // A manual clock still runs with the system's: margins of seconds.
        jwt.clock().advance(Duration::from_secs(65));
        assert!(jwt.verify(&token).is_ok(), "exp within the leeway");
        jwt.clock().advance(Duration::from_secs(10));
        assert_eq!(jwt.verify(&token).unwrap_err(), TokenRefusal::Expired);
    }

    #[test]
    fn each_refusal_names_its_reason() {
        let jwt = service(
            "access_ttl = \"60s\"\naudience = \"api\"\n",
            "JWT_TEST_REASONS",
            &"r".repeat(32),
        );
        let now = jwt.clock().unix_secs();
        let with = |changes: Value| {
            let mut claims = minted(now);
            claims["aud"] = json!("api");
            for (name, value) in changes.as_object().unwrap() {
                claims[name] = value.clone();
            }
            sign(&jwt, &claims)
        };
        let without = |claim: &str| {
            let mut claims = minted(now);
            claims["aud"] = json!("api");
            claims.as_object_mut().unwrap().remove(claim);
            sign(&jwt, &claims)
        };
        assert!(jwt.verify(&with(json!({}))).is_ok());
        assert!(jwt.verify(&with(json!({"aud": ["other", "api"]}))).is_ok());
        let refusals = [
            ("not a jwt".to_string(), TokenRefusal::Malformed),
            (with(json!({"exp": "soon"})), TokenRefusal::Malformed),
            (with(json!({"aud": 7})), TokenRefusal::Malformed),
            ("a".repeat(9000), TokenRefusal::Malformed),
            (with(json!({"exp": now - 1})), TokenRefusal::Expired),
            (with(json!({"nbf": now + 30})), TokenRefusal::NotYetValid),
            (
                with(json!({"iss": "someone-else"})),
                TokenRefusal::WrongIssuer,
            ),
            (with(json!({"aud": "other"})), TokenRefusal::WrongAudience),
            (with(json!({"aud": ["other"]})), TokenRefusal::WrongAudience),
            (
                with(json!({"exp": now + 3600})),
                TokenRefusal::LifetimeBeyondAccessTtl,
            ),
            (
                with(json!({"exp": u64::MAX})),
                TokenRefusal::LifetimeBeyondAccessTtl,
            ),
        ];
        for (token, refusal) in refusals {
            assert_eq!(jwt.verify(&token).unwrap_err(), refusal, "{token}");
        }
        for (claim, required) in [
            ("sub", RequiredClaim::Sub),
            ("exp", RequiredClaim::Exp),
            ("nbf", RequiredClaim::Nbf),
            ("iat", RequiredClaim::Iat),
            ("iss", RequiredClaim::Iss),
            ("aud", RequiredClaim::Aud),
            ("jti", RequiredClaim::Jti),
        ] {
            assert_eq!(
                jwt.verify(&without(claim)).unwrap_err(),
                TokenRefusal::MissingClaim(required),
                "{claim}"
            );
        }
    }

    #[test]
    fn an_unknown_kid_is_refused_with_or_without_a_configured_key_id() {
        for (jwt_section, env) in [
            ("", "JWT_TEST_NO_KID"),
            ("key_id = \"k1\"\n", "JWT_TEST_KID"),
        ] {
            let jwt = service(jwt_section, env, &"u".repeat(32));
            let claims = minted(jwt.clock().unix_secs());
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some("nobody".into());
            let token = jsonwebtoken::encode(&header, &claims, &jwt.encoding).unwrap();
            assert_eq!(
                jwt.verify(&token).unwrap_err(),
                TokenRefusal::UnknownKeyId,
                "{jwt_section}"
            );
            // No kid at all is the current key.
            header.kid = None;
            let token = jsonwebtoken::encode(&header, &claims, &jwt.encoding).unwrap();
            assert!(jwt.verify(&token).is_ok(), "{jwt_section}");
        }
    }

    #[test]
    fn tokens_are_minted_for_the_time_given_and_verify_on_the_clock() {
        let jwt = service("access_ttl = \"60s\"\n", "JWT_TEST_MINT", &"m".repeat(32));
        jwt.clock().advance(Duration::from_secs(3600));
        let now = jwt.clock().unix_secs();
        let identity = jwt
            .verify(&jwt.issue(&alice(), now, "j".into()).unwrap())
            .unwrap();
        assert_eq!(identity.exp, now + 60);
    }

    #[test]
    fn short_secret_is_refused_with_its_key() {
        std::env::set_var("JWT_TEST_SHORT", "short");
        let config = Config::parse(
            Path::new("g.toml"),
            "[jwt]\nsecret_env = \"JWT_TEST_SHORT\"\n",
        )
        .unwrap();
        let problems = JwtService::from_config(&config.jwt, Clock::system()).unwrap_err();
        assert_eq!(problems[0].key, "jwt.secret_env");
        assert_eq!(problems[0].line, Some(2));
    }

    #[test]
    fn another_secret_is_a_bad_signature() {
        let a = service("", "JWT_TEST_B", &"a".repeat(32));
        let b = service("", "JWT_TEST_C", &"b".repeat(32));
        let token = b
            .issue(&alice(), b.clock().unix_secs(), "j".into())
            .unwrap();
        assert_eq!(a.verify(&token).unwrap_err(), TokenRefusal::BadSignature);
    }
}
