//! The signed identity assertion (`[identity] assertion`): the caller's
//! identity as a short-lived JWT that an upstream verifies offline against
//! the gateway's JWKS, so it need not trust the network the way it must to
//! believe a plain `X-Auth-User`.
//!
//! Claims: `iss` (`[jwt] issuer`), `sub`, `email` (when known), `roles` (a
//! JSON array), `aud` (the route's audience: an assertion made for one
//! upstream is refused by another), `iat` and `exp` (`iat` +
//! `assertion_ttl`). The header names the key by `kid`, the RFC 7638
//! thumbprint of the public key, so a new key is a new `kid` without any
//! setting and upstreams caching the JWKS notice the change.
//!
//! Signing costs tens of microseconds (ES256) and a user sends many
//! requests a minute, so the header value is cached per identity and
//! audience until the last quarter of its life: a request then pays one
//! SHA-256 of the identity and a map lookup, and the upstream always
//! receives an assertion with at least a quarter of its lifetime left.
//! Assertions past that leave the cache within
//! [`SWEEP_SECS`](super::token_cache::SWEEP_SECS), as the
//! token cache's expired entries do, so it holds the identities served
//! now rather than every one since start (up to [`MAX_ENTRIES`]).

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::RwLock;

use http::{HeaderMap, HeaderName, HeaderValue};
use jsonwebtoken::jwk::{Jwk, KeyAlgorithm, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::token_cache::{drop_expired, shard_index, KeyHasher};
use super::Identity;
use crate::clock::Clock;
use crate::config::{AssertionConfig, Problem};

/// The most assertions remembered at once (identities × audiences). Each
/// is a header value of about half a KiB plus its key.
pub const MAX_ENTRIES: usize = 32 * 1024;
/// Independent locks, so threads serving different users rarely meet.
const SHARDS: usize = 16;

/// Why an assertion could not be made. With a key that signed a test
/// assertion at load, neither is expected: the request is refused (500)
/// rather than forwarded without the identity the upstream relies on.
#[derive(Debug, thiserror::Error)]
pub enum AssertionError {
    #[error("cannot sign the identity assertion: {0}")]
    Signing(#[source] jsonwebtoken::errors::Error),
    #[error("the signed identity assertion is not a valid header value")]
    NotAHeaderValue,
}

#[derive(Serialize)]
struct AssertionClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<&'a str>,
    roles: &'a [String],
    aud: &'a str,
    iat: u64,
    exp: u64,
}

/// Signs identities into assertions; one per gateway (a reload with new
/// settings makes a new one, with an empty cache).
pub struct Assertions {
    header_name: HeaderName,
    header: Header,
    encoding: EncodingKey,
    /// The public key as published in the JWKS, `kid` included.
    jwk: Jwk,
    issuer: String,
    ttl_secs: u64,
    /// Seconds after `iat` from which a cached assertion is replaced.
    reuse_secs: u64,
    cache: AssertionCache,
    clock: Clock,
}

impl std::fmt::Debug for Assertions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assertions")
            .field("alg", &self.header.alg)
            .field("kid", &self.header.kid)
            .finish_non_exhaustive()
    }
}

impl Assertions {
    /// Reads the key, tells ES256 from EdDSA by what the key is, and signs
    /// and verifies a test assertion, so a key that cannot sign (a P-384
    /// key, say) is refused by `check-config` rather than on a request.
    pub fn from_config(
        config: &AssertionConfig,
        header_name: HeaderName,
        issuer: &str,
        clock: Clock,
    ) -> Result<Assertions, Problem> {
        let located = &config.key;
        let pem = std::fs::read(&located.value).map_err(|e| {
            located.problem(format!("cannot read {}: {e}", located.value.display()))
        })?;
        let (alg, encoding) =
            match EncodingKey::from_ec_pem(&pem) {
                Ok(key) => (Algorithm::ES256, key),
                Err(_) => match EncodingKey::from_ed_pem(&pem) {
                    Ok(key) => (Algorithm::EdDSA, key),
                    Err(_) => return Err(located.problem(
                        "is neither an ES256 (P-256) nor an EdDSA (Ed25519) PKCS#8 PEM private key",
                    )),
                },
            };
        let unusable = |e: jsonwebtoken::errors::Error| {
            located.problem(format!(
                "cannot sign {alg:?} assertions with this key ({e}); \
                 use a P-256 (ES256) or Ed25519 (EdDSA) key"
            ))
        };
        let mut jwk = Jwk::from_encoding_key(&encoding, alg).map_err(unusable)?;
        let kid = jwk.thumbprint(ThumbprintHash::SHA256).map_err(unusable)?;
        let decoding = DecodingKey::from_jwk(&jwk).map_err(unusable)?;
        jwk.common.key_id = Some(kid.clone());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        jwk.common.key_algorithm = Some(match alg {
            Algorithm::ES256 => KeyAlgorithm::ES256,
            _ => KeyAlgorithm::EdDSA,
        });
        let mut header = Header::new(alg);
        header.kid = Some(kid);
        let ttl_secs = config.ttl.as_secs().max(1);
        let assertions = Assertions {
            header_name,
            header,
            encoding,
            jwk,
            issuer: issuer.to_owned(),
            ttl_secs,
            reuse_secs: ttl_secs - ttl_secs / 4,
            cache: AssertionCache::default(),
            clock,
        };
        // The published key must verify what the private key signs.
        let probe = assertions
            .sign(&Identity::named("check"), "check", 0)
            .map_err(|e| located.problem(format!("cannot sign with this key: {e}")))?;
        let mut validation = Validation::new(alg);
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.set_required_spec_claims::<&str>(&[]);
        let probe = probe.to_str().unwrap_or_default();
        jsonwebtoken::decode::<serde_json::Value>(probe, &decoding, &validation)
            .map_err(unusable)?;
        Ok(assertions)
    }

    /// The header the assertion travels in (`[identity] assertion_header`).
    pub fn header_name(&self) -> &HeaderName {
        &self.header_name
    }

    /// The public key for `/.well-known/jwks.json`.
    pub fn jwk(&self) -> &Jwk {
        &self.jwk
    }

    /// The assertion for `identity` at `audience`, signed now or taken
    /// from the cache while it has more than a quarter of its life left.
    pub fn header_value(
        &self,
        identity: &Identity,
        audience: &str,
    ) -> Result<HeaderValue, AssertionError> {
        let now = self.clock.unix_secs();
        let key = cache_key(identity, audience);
        if let Some(value) = self.cache.get(&key, now) {
            return Ok(value);
        }
        let value = self.sign(identity, audience, now)?;
        self.cache
            .insert(key, value.clone(), now + self.reuse_secs, now);
        Ok(value)
    }

    /// Sets the assertion header for `identity` at `audience`, replacing
    /// any other value: what a proxied request and a forward-auth answer
    /// both do.
    pub fn insert(
        &self,
        headers: &mut HeaderMap,
        identity: &Identity,
        audience: &str,
    ) -> Result<(), AssertionError> {
        let value = self.header_value(identity, audience)?;
        headers.insert(self.header_name.clone(), value);
        Ok(())
    }

    fn sign(
        &self,
        identity: &Identity,
        audience: &str,
        iat: u64,
    ) -> Result<HeaderValue, AssertionError> {
        let claims = AssertionClaims {
            iss: &self.issuer,
            sub: &identity.sub,
            email: identity.email.as_deref(),
            roles: &identity.roles,
            aud: audience,
            iat,
            exp: iat + self.ttl_secs,
        };
        let token = jsonwebtoken::encode(&self.header, &claims, &self.encoding)
            .map_err(AssertionError::Signing)?;
        HeaderValue::try_from(token).map_err(|_| AssertionError::NotAHeaderValue)
    }
}

type Key = [u8; 32];

/// What the assertion says, hashed: every field length-prefixed, so no two
/// different identities (`sub` "ab" + role "c" versus "a" + "bc") share a
/// key and receive each other's assertion.
fn cache_key(identity: &Identity, audience: &str) -> Key {
    let mut hash = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(bytes);
    };
    field(identity.sub.as_bytes());
    match &identity.email {
        Some(email) => {
            field(b"1");
            field(email.as_bytes());
        }
        None => field(b"0"),
    }
    field(&(identity.roles.len() as u64).to_le_bytes());
    for role in &identity.roles {
        field(role.as_bytes());
    }
    field(audience.as_bytes());
    hash.finalize().into()
}

#[derive(Debug)]
struct Entry {
    value: HeaderValue,
    /// Served while `now < reuse_until`.
    reuse_until: u64,
}

#[derive(Debug, Default)]
struct Shard {
    entries: HashMap<Key, Entry, BuildHasherDefault<KeyHasher>>,
    /// When the shard last dropped its expired entries (unix seconds).
    swept_at: u64,
}

#[derive(Debug)]
struct AssertionCache {
    shards: Box<[RwLock<Shard>]>,
    per_shard: usize,
}

impl Default for AssertionCache {
    fn default() -> Self {
        AssertionCache {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            per_shard: MAX_ENTRIES.div_ceil(SHARDS),
        }
    }
}

impl AssertionCache {
    fn shard(&self, key: &Key) -> &RwLock<Shard> {
        &self.shards[shard_index(key, SHARDS)]
    }

    fn get(&self, key: &Key, now: u64) -> Option<HeaderValue> {
        let shard = self.shard(key).read().unwrap_or_else(|e| e.into_inner());
        shard
            .entries
            .get(key)
            .filter(|entry| now < entry.reuse_until)
            // A HeaderValue shares its bytes: the clone is a reference count.
            .map(|entry| entry.value.clone())
    }

    fn insert(&self, key: Key, value: HeaderValue, reuse_until: u64, now: u64) {
        let mut shard = self.shard(&key).write().unwrap_or_else(|e| e.into_inner());
        let full = shard.entries.len() >= self.per_shard;
        let Shard { entries, swept_at } = &mut *shard;
        drop_expired(entries, swept_at, full, now, |e| now < e.reuse_until);
        if entries.len() >= self.per_shard {
            // All live: losing them costs a signature each, nothing more,
            // and keeps a flood of identities from growing memory.
            entries.clear();
        }
        entries.insert(key, Entry { value, reuse_until });
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(|e| e.into_inner()).entries.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use jsonwebtoken::jwk::AlgorithmParameters;
    use serde_json::Value;

    use super::*;
    use crate::config::Located;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    fn assertions(key: &str, ttl: u64) -> Assertions {
        let config = AssertionConfig {
            key: Located {
                value: fixture(key),
                key: "identity.assertion_key",
                line: Some(3),
            },
            ttl: Duration::from_secs(ttl),
        };
        Assertions::from_config(
            &config,
            HeaderName::from_static("x-auth-assertion"),
            "https://gw.example",
            Clock::manual(),
        )
        .unwrap()
    }

    fn alice() -> Identity {
        Identity {
            sub: "älice".into(),
            email: Some("alice@example.com".into()),
            roles: vec!["admin".into(), "dev,ops".into()],
            ..Identity::default()
        }
    }

    /// Verifies `value` with the published JWK alone, as an upstream does.
    fn verify(a: &Assertions, value: &HeaderValue, aud: &str) -> (Header, Value) {
        let token = value.to_str().unwrap();
        let key = DecodingKey::from_jwk(a.jwk()).unwrap();
        let mut validation = Validation::new(a.header.alg);
        validation.set_issuer(&["https://gw.example"]);
        validation.set_audience(&[aud]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        // The manual clock runs with the system's here: exp is checked.
        let data = jsonwebtoken::decode::<Value>(token, &key, &validation).unwrap();
        (data.header, data.claims)
    }

    #[test]
    fn claims_and_kid_for_both_key_types() {
        for (key, alg) in [
            ("ec.pem", Algorithm::ES256),
            ("ed25519.pem", Algorithm::EdDSA),
        ] {
            let a = assertions(key, 60);
            let now = a.clock.unix_secs();
            let value = a.header_value(&alice(), "http://127.0.0.1:9000").unwrap();
            let (header, claims) = verify(&a, &value, "http://127.0.0.1:9000");
            assert_eq!(header.alg, alg);
            let kid = a.jwk().common.key_id.clone().unwrap();
            assert_eq!(header.kid.as_deref(), Some(kid.as_str()));
            assert_eq!(claims["sub"], "älice", "names travel as UTF-8");
            assert_eq!(claims["email"], "alice@example.com");
            assert_eq!(claims["roles"], serde_json::json!(["admin", "dev,ops"]));
            assert_eq!(claims["iss"], "https://gw.example");
            let iat = claims["iat"].as_u64().unwrap();
            assert!((now..now + 2).contains(&iat), "{iat} vs {now}");
            assert_eq!(claims["exp"].as_u64().unwrap(), iat + 60);
            // The kid is the key's thumbprint: stable across loads, and
            // the JWK carries no private part.
            assert_eq!(assertions(key, 30).jwk().common.key_id, Some(kid));
            assert!(matches!(
                a.jwk().algorithm,
                AlgorithmParameters::EllipticCurve(_) | AlgorithmParameters::OctetKeyPair(_)
            ));
            assert!(!serde_json::to_string(a.jwk()).unwrap().contains("\"d\""));
        }
        assert_ne!(
            assertions("ec.pem", 60).jwk().common.key_id,
            assertions("ed25519.pem", 60).jwk().common.key_id
        );
    }

    #[test]
    fn an_email_less_identity_has_no_email_claim() {
        let a = assertions("ed25519.pem", 60);
        let bob = Identity::named("bob");
        let (_, claims) = verify(&a, &a.header_value(&bob, "aud").unwrap(), "aud");
        assert!(claims.get("email").is_none(), "{claims}");
        assert_eq!(claims["roles"], serde_json::json!([]));
    }

    #[test]
    fn cached_within_three_quarters_of_the_ttl_then_signed_anew() {
        let a = assertions("ec.pem", 60);
        let first = a.header_value(&alice(), "aud-a").unwrap();
        // ES256 signatures are randomized: equal values mean the cache.
        assert_eq!(a.header_value(&alice(), "aud-a").unwrap(), first);
        a.clock.advance(Duration::from_secs(40));
        assert_eq!(a.header_value(&alice(), "aud-a").unwrap(), first);
        // Another audience, or another identity, is its own assertion.
        assert_ne!(a.header_value(&alice(), "aud-b").unwrap(), first);
        let mut other = alice();
        other.roles.pop();
        assert_ne!(a.header_value(&other, "aud-a").unwrap(), first);
        assert_eq!(a.cache.len(), 3);
        // Past 45 s of 60 (plus a second of the real clock's rounding),
        // a fresh assertion with a later exp replaces it.
        a.clock.advance(Duration::from_secs(7));
        let renewed = a.header_value(&alice(), "aud-a").unwrap();
        assert_ne!(renewed, first);
        let exp = |v: &HeaderValue| verify(&a, v, "aud-a").1["exp"].as_u64().unwrap();
        assert!(exp(&renewed) > exp(&first));
    }

    /// Like the token cache: assertions past their reuse leave within
    /// `SWEEP_SECS`, far below the bound, so the cache follows the
    /// identities served now.
    #[test]
    fn assertions_past_their_reuse_leave_without_the_cache_filling_up() {
        use crate::auth::token_cache::SWEEP_SECS;
        let cache = AssertionCache::default();
        let value = HeaderValue::from_static("a.b.c");
        let key = |name: &str| cache_key(&Identity::named(name), "aud");
        for i in 0..1000 {
            cache.insert(key(&format!("old{i}")), value.clone(), 102, 100);
        }
        assert_eq!(cache.len(), 1000);
        // Past their reuse but within a sweep interval: still held.
        cache.insert(key("early"), value.clone(), 200, 105);
        assert_eq!(cache.len(), 1001);
        let later = 100 + SWEEP_SECS;
        for i in 0..200 {
            cache.insert(key(&format!("new{i}")), value.clone(), later + 60, later);
        }
        assert_eq!(cache.len(), 201, "the expired ones are gone, the live kept");
        assert!(cache.get(&key("early"), later).is_some());
    }

    #[test]
    fn cache_keys_tell_fields_apart() {
        let split = |sub: &str, roles: &[&str]| Identity {
            sub: sub.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            ..Identity::default()
        };
        let keys = [
            cache_key(&split("ab", &["c"]), "x"),
            cache_key(&split("a", &["bc"]), "x"),
            cache_key(&split("a", &["b", "c"]), "x"),
            cache_key(&split("ab", &["c"]), "y"),
            cache_key(
                &Identity {
                    email: Some(String::new()),
                    ..split("ab", &["c"])
                },
                "x",
            ),
        ];
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn keys_that_cannot_sign_assertions_are_refused_naming_the_key() {
        for key in ["rsa.pem", "ec.pub.pem", "missing.pem"] {
            let config = AssertionConfig {
                key: Located {
                    value: fixture(key),
                    key: "identity.assertion_key",
                    line: Some(3),
                },
                ttl: Duration::from_secs(60),
            };
            let problem = Assertions::from_config(
                &config,
                HeaderName::from_static("x-auth-assertion"),
                "authgate",
                Clock::manual(),
            )
            .unwrap_err();
            assert_eq!(
                (problem.key.as_str(), problem.line),
                ("identity.assertion_key", Some(3)),
                "{key}"
            );
        }
    }
}
