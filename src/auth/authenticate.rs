//! Who is calling: the pipeline's authentication phase, without sockets.
//!
//! A Bearer header alone decides; otherwise the access cookie, and when
//! that is missing or expired (never when it is forged), the refresh
//! cookie silently renews the session. Requests with any `Authorization`
//! header are never silently refreshed: API clients refresh on their own,
//! and rotating behind their back would make their refresh look like
//! theft.
//!
//! The result says why a caller is anonymous down to the token's refusal;
//! [`AuthOutcome`] turns it into the access log's `auth` field and the
//! `auth_outcomes` metric, in one place.

use std::sync::Arc;

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue};

use super::jwt::{JwtService, RequiredClaim, TokenRefusal};
use super::refresh::{RefreshError, SessionService, TokenPair};
use super::Identity;
use crate::cookies::{self, CookieJar};
use crate::response::{AuthFailure, GatewayError};

/// What authentication needs of the gateway (see
/// [`crate::gateway::Gateway::authenticator`]).
#[derive(Debug, Clone, Copy)]
pub struct Authenticator<'a> {
    pub jwt: &'a JwtService,
    pub cookies: &'a CookieJar,
    pub sessions: &'a SessionService,
    /// `[identity] forward_token`: keep the access token for the upstream.
    pub forward_token: bool,
}

/// Where the credential came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Bearer,
    Cookie,
    Refresh,
}

/// Who the caller is, or why they are nobody.
#[derive(Debug)]
pub enum Authn {
    Authenticated {
        /// Shared with the token cache.
        identity: Arc<Identity>,
        /// The access token, kept only for `[identity] forward_token`.
        token: Option<String>,
        via: Via,
    },
    Anonymous(Anonymous),
}

/// Why a caller is anonymous.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anonymous {
    /// No credential: no Bearer token, no access cookie (and no refresh
    /// cookie to renew one).
    Missing,
    /// A Bearer token or access cookie was refused.
    Refused(TokenRefusal),
    /// The access cookie was missing or expired and the refresh cookie did
    /// not renew the session (unknown, expired, revoked or replayed).
    RefreshFailed { access_cookie_expired: bool },
}

impl Anonymous {
    /// What the 401 tells the client (`WWW-Authenticate`): after a failed
    /// refresh, what was wrong with the access cookie, as before the
    /// refresh was tried.
    pub fn challenge(self) -> AuthFailure {
        match self {
            Anonymous::Missing
            | Anonymous::RefreshFailed {
                access_cookie_expired: false,
            } => AuthFailure::Missing,
            Anonymous::Refused(TokenRefusal::Expired)
            | Anonymous::RefreshFailed {
                access_cookie_expired: true,
            } => AuthFailure::Expired,
            Anonymous::Refused(_) => AuthFailure::Invalid,
        }
    }
}

/// The phase's result: the caller, and what the response must carry.
#[derive(Debug)]
pub struct Authentication {
    pub authn: Authn,
    /// `Set-Cookie` values: the renewed pair after a silent refresh, both
    /// cookies cleared after a failed one.
    pub set_cookies: Vec<HeaderValue>,
    /// Why a silent refresh failed, for the security log.
    pub refresh_failure: Option<RefreshError>,
}

impl From<Authn> for Authentication {
    fn from(authn: Authn) -> Authentication {
        Authentication {
            authn,
            set_cookies: Vec::new(),
            refresh_failure: None,
        }
    }
}

impl Authentication {
    pub fn outcome(&self) -> AuthOutcome {
        self.authn.outcome()
    }
}

impl Authn {
    pub fn outcome(&self) -> AuthOutcome {
        match self {
            Authn::Authenticated { via, .. } => AuthOutcome::Authenticated(*via),
            Authn::Anonymous(Anonymous::Missing) => AuthOutcome::Missing,
            Authn::Anonymous(Anonymous::Refused(refusal)) => AuthOutcome::Refused(*refusal),
            Authn::Anonymous(Anonymous::RefreshFailed { .. }) => AuthOutcome::RefreshFailed,
        }
    }
}

/// What a request's authentication came to, as the access log and the
/// metrics name it. Besides the pipeline's own phase, the `/token`
/// endpoint's grants and the authorization phase's refusal end here too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthOutcome {
    /// No credential was looked at (public routes, most own endpoints).
    #[default]
    NotChecked,
    /// A valid token (Bearer or cookie), or a session renewed by a refresh
    /// token (silently, or by a `refresh_token` grant).
    Authenticated(Via),
    Missing,
    Refused(TokenRefusal),
    RefreshFailed,
    /// Authenticated, without a role the route requires.
    Forbidden,
    /// A password grant that succeeded, or failed.
    LoggedIn,
    LoginFailed,
}

impl AuthOutcome {
    /// The access log's `auth` field: why a token was refused, down to the
    /// claim; never the token.
    pub fn label(self) -> &'static str {
        use RequiredClaim as Claim;
        match self {
            AuthOutcome::NotChecked => "-",
            AuthOutcome::Authenticated(Via::Bearer | Via::Cookie) => "ok",
            AuthOutcome::Authenticated(Via::Refresh) => "refreshed",
            AuthOutcome::Missing => "missing",
            AuthOutcome::Refused(refusal) => match refusal {
                TokenRefusal::Malformed => "malformed",
                TokenRefusal::BadSignature => "bad_signature",
                TokenRefusal::Expired => "expired",
                TokenRefusal::NotYetValid => "not_yet_valid",
                TokenRefusal::WrongIssuer => "wrong_issuer",
                TokenRefusal::WrongAudience => "wrong_audience",
                TokenRefusal::UnknownKeyId => "unknown_kid",
                TokenRefusal::MissingClaim(Claim::Sub) => "missing_claim:sub",
                TokenRefusal::MissingClaim(Claim::Exp) => "missing_claim:exp",
                TokenRefusal::MissingClaim(Claim::Nbf) => "missing_claim:nbf",
                TokenRefusal::MissingClaim(Claim::Iat) => "missing_claim:iat",
                TokenRefusal::MissingClaim(Claim::Iss) => "missing_claim:iss",
                TokenRefusal::MissingClaim(Claim::Aud) => "missing_claim:aud",
                TokenRefusal::MissingClaim(Claim::Jti) => "missing_claim:jti",
                TokenRefusal::LifetimeBeyondAccessTtl => "lifetime_beyond_access_ttl",
            },
            AuthOutcome::RefreshFailed => "refresh_failed",
            AuthOutcome::Forbidden => "forbidden",
            AuthOutcome::LoggedIn => "login",
            AuthOutcome::LoginFailed => "login_failed",
        }
    }

    /// The `auth_outcomes` metric's `outcome` label: the log's reasons
    /// folded into a fixed few (every refusal but `expired` is `invalid`),
    /// so a flood of odd tokens cannot grow the label set. Logins have a
    /// metric of their own; `None` counts nothing.
    pub fn metric_label(self) -> Option<&'static str> {
        Some(match self {
            AuthOutcome::NotChecked | AuthOutcome::LoggedIn | AuthOutcome::LoginFailed => {
                return None
            }
            AuthOutcome::Authenticated(Via::Bearer | Via::Cookie) => "ok",
            AuthOutcome::Authenticated(Via::Refresh) => "refreshed",
            AuthOutcome::Missing => "missing",
            AuthOutcome::Refused(TokenRefusal::Expired) => "expired",
            AuthOutcome::Refused(_) => "invalid",
            AuthOutcome::RefreshFailed => "refresh_failed",
            AuthOutcome::Forbidden => "forbidden",
        })
    }
}

/// The token in `Authorization: Bearer` (scheme case-insensitive), if the
/// header is a Bearer one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let token = bearer_credentials(headers.get(AUTHORIZATION)?)?;
    // `str::from_utf8` checks a word at a time; `HeaderValue::to_str`, a
    // byte at a time, over a token of hundreds of bytes. A token that is
    // not visible ASCII fails verification all the same.
    std::str::from_utf8(token).ok().map(str::trim)
}

/// What follows `Bearer ` in an `Authorization` value, unchecked.
pub fn bearer_credentials(value: &HeaderValue) -> Option<&[u8]> {
    let value = value.as_bytes();
    let space = memchr::memchr(b' ', value)?;
    value[..space]
        .eq_ignore_ascii_case(b"bearer")
        .then(|| &value[space + 1..])
}

impl Authenticator<'_> {
    /// Authenticates a request by its headers. `Err` is the gateway's own
    /// failure (a store down, signing failed), never the caller's.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Authentication, GatewayError> {
        if let Some(token) = bearer(headers) {
            return Ok(self.verified(token, Via::Bearer).into());
        }
        let access_cookie_expired = match cookies::get(headers, &self.cookies.access) {
            None => false,
            Some(token) => match self.verified(token, Via::Cookie) {
                Authn::Anonymous(Anonymous::Refused(TokenRefusal::Expired)) => true,
                other => return Ok(other.into()),
            },
        };
        let without_refresh = Authn::Anonymous(if access_cookie_expired {
            Anonymous::Refused(TokenRefusal::Expired)
        } else {
            Anonymous::Missing
        });
        if headers.contains_key(AUTHORIZATION) {
            return Ok(without_refresh.into());
        }
        let Some(refresh_token) = cookies::get(headers, &self.cookies.refresh) else {
            return Ok(without_refresh.into());
        };
        match Box::pin(self.sessions.refresh(refresh_token)).await {
            Ok(pair) => Ok(Authentication {
                set_cookies: self.session_cookies(&pair).to_vec(),
                authn: Authn::Authenticated {
                    identity: Arc::new(self.identity_of(&pair)),
                    token: self.forward_token.then_some(pair.access_token),
                    via: Via::Refresh,
                },
                refresh_failure: None,
            }),
            Err(e) if e.is_unavailable() => Err(GatewayError::Unavailable(Box::new(e))),
            Err(e) if e.is_internal() => Err(GatewayError::Internal(Box::new(e))),
            Err(e) => Ok(Authentication {
                authn: Authn::Anonymous(Anonymous::RefreshFailed {
                    access_cookie_expired,
                }),
                set_cookies: self.cookies.clear().to_vec(),
                refresh_failure: Some(e),
            }),
        }
    }

    /// The `Set-Cookie` values that hand a new token pair to a browser.
    pub fn session_cookies(&self, pair: &TokenPair) -> [HeaderValue; 2] {
        [
            self.cookies
                .set_access(&pair.access_token, self.jwt.access_ttl),
            self.cookies
                .set_refresh(&pair.refresh_token, self.sessions.refresh_ttl),
        ]
    }

    fn verified(&self, token: &str, via: Via) -> Authn {
        match self.jwt.verify(token) {
            Ok(identity) => Authn::Authenticated {
                identity,
                token: self.forward_token.then(|| token.to_owned()),
                via,
            },
            Err(refusal) => Authn::Anonymous(Anonymous::Refused(refusal)),
        }
    }

    /// The identity the just-minted access token carries, without
    /// verifying what was signed a moment ago.
    fn identity_of(&self, pair: &TokenPair) -> Identity {
        Identity {
            sub: pair.user.username.clone(),
            email: pair.user.email.clone(),
            roles: pair.user.roles.clone(),
            extra: pair.user.claims.clone(),
            exp: pair.issued_at + self.jwt.access_ttl.as_secs(),
            session: Some(pair.family),
            header_values: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use http::header::COOKIE;
    use http::Request;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::{json, Value};

    use super::*;
    use crate::clock::Clock;
    use crate::config::Config;
    use crate::sessions::memory::MemorySessionStore;
    use crate::users::memory::MemoryUserStore;
    use crate::users::User;

    const SECRET_ENV: &str = "AUTHENTICATE_TEST_SECRET";
    const SECRET: &str = "authenticate-test-secret-long-enough-0123";

    /// A gateway's authentication parts, on a manual clock, without sockets
    /// or stores outside the process.
    struct Parts {
        jwt: Arc<JwtService>,
        cookies: CookieJar,
        sessions: SessionService,
    }

    impl Parts {
        fn new() -> Parts {
            std::env::set_var(SECRET_ENV, SECRET);
            let toml = format!(
                "[jwt]\nsecret_env = \"{SECRET_ENV}\"\naccess_ttl = \"60s\"\naudience = \"api\"\n"
            );
            let config = Config::parse(Path::new("g.toml"), &toml).unwrap();
            let clock = Clock::manual();
            let jwt = Arc::new(JwtService::from_config(&config.jwt, clock.clone()).unwrap());
            let alice = User {
                username: "alice".into(),
                roles: vec!["admin".into()],
                ..User::default()
            };
            Parts {
                cookies: CookieJar::new(&config.cookies),
                sessions: SessionService {
                    store: Arc::new(MemorySessionStore::new(clock.clone())),
                    users: Arc::new(MemoryUserStore::new([alice])),
                    jwt: jwt.clone(),
                    refresh_ttl: config.jwt.refresh_ttl,
                    reuse_grace: config.sessions.reuse_grace,
                    clock,
                },
                jwt,
            }
        }

        fn authenticator(&self) -> Authenticator<'_> {
            Authenticator {
                jwt: &self.jwt,
                cookies: &self.cookies,
                sessions: &self.sessions,
                forward_token: false,
            }
        }

        async fn authenticate(&self, req: &Request<()>) -> Authentication {
            self.authenticator()
                .authenticate(req.headers())
                .await
                .unwrap()
        }

        fn now(&self) -> u64 {
            self.jwt.clock().unix_secs()
        }

        /// Claims as authgate mints them now, changed by `changes` (a
        /// `null` removes the claim).
        fn claims(&self, changes: Value) -> Value {
            let now = self.now();
            let mut claims = json!({"sub": "alice", "iat": now, "nbf": now, "exp": now + 60,
                                    "iss": "authgate", "aud": "api", "jti": "j"});
            for (name, value) in changes.as_object().unwrap() {
                match value {
                    Value::Null => claims.as_object_mut().unwrap().remove(name),
                    value => claims
                        .as_object_mut()
                        .unwrap()
                        .insert(name.clone(), value.clone()),
                };
            }
            claims
        }

        fn token(&self, changes: Value) -> String {
            sign(&Header::default(), &self.claims(changes), SECRET)
        }

        /// A session for alice: its refresh token.
        async fn refresh_token(&self) -> String {
            let user = self.sessions.users.find("alice").await.unwrap().unwrap();
            self.sessions.start(user).await.unwrap().refresh_token
        }
    }

    fn sign(header: &Header, claims: &Value, secret: &str) -> String {
        jsonwebtoken::encode(header, claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
    }

    fn request(headers: &[(http::HeaderName, &str)]) -> Request<()> {
        let mut req = Request::builder().uri("/api/x");
        for (name, value) in headers {
            req = req.header(name, *value);
        }
        req.body(()).unwrap()
    }

    fn with_bearer(token: &str) -> Request<()> {
        request(&[(AUTHORIZATION, &format!("Bearer {token}"))])
    }

    fn with_cookies(cookies: &str) -> Request<()> {
        request(&[(COOKIE, cookies)])
    }

    #[tokio::test]
    async fn a_valid_bearer_token_authenticates() {
        let parts = Parts::new();
        let got = parts
            .authenticate(&with_bearer(&parts.token(json!({}))))
            .await;
        let Authn::Authenticated { identity, via, .. } = &got.authn else {
            panic!("{got:?}");
        };
        assert_eq!((identity.sub.as_str(), *via), ("alice", Via::Bearer));
        assert_eq!(got.outcome().label(), "ok");
        assert_eq!(got.outcome().metric_label(), Some("ok"));
        assert!(got.set_cookies.is_empty());
    }

    #[tokio::test]
    async fn a_valid_access_cookie_authenticates() {
        let parts = Parts::new();
        let cookie = format!("access_token={}", parts.token(json!({})));
        let got = parts.authenticate(&with_cookies(&cookie)).await;
        assert!(matches!(
            got.authn,
            Authn::Authenticated {
                via: Via::Cookie,
                ..
            }
        ));
        assert_eq!(got.outcome().label(), "ok");
    }

    #[tokio::test]
    async fn no_credential_is_missing() {
        let parts = Parts::new();
        for req in [
            request(&[]),
            request(&[(AUTHORIZATION, "Basic YWxpY2U6cHc=")]),
            with_cookies("other=1"),
        ] {
            let got = parts.authenticate(&req).await;
            assert!(matches!(got.authn, Authn::Anonymous(Anonymous::Missing)));
            assert_eq!(got.outcome().label(), "missing");
            assert_eq!(got.outcome().metric_label(), Some("missing"));
        }
    }

    #[tokio::test]
    async fn a_malformed_bearer_token_is_refused_as_malformed() {
        let parts = Parts::new();
        let got = parts.authenticate(&with_bearer("not.a.jwt")).await;
        assert!(matches!(
            got.authn,
            Authn::Anonymous(Anonymous::Refused(TokenRefusal::Malformed))
        ));
        assert_eq!(got.outcome().label(), "malformed");
        assert_eq!(got.outcome().metric_label(), Some("invalid"));
    }

    #[tokio::test]
    async fn a_token_expires_when_the_clock_passes_exp() {
        let parts = Parts::new();
        let req = with_bearer(&parts.token(json!({})));
        assert_eq!(parts.authenticate(&req).await.outcome().label(), "ok");
        parts.jwt.clock().advance(Duration::from_secs(61));
        let got = parts.authenticate(&req).await;
        assert_eq!(got.outcome().label(), "expired");
        assert_eq!(got.outcome().metric_label(), Some("expired"));
        let Authn::Anonymous(why) = got.authn else {
            panic!("{got:?}");
        };
        assert_eq!(why.challenge(), AuthFailure::Expired);
    }

    #[tokio::test]
    async fn each_refusal_reason_has_its_label() {
        let parts = Parts::new();
        let now = parts.now();
        let unknown_kid = Header {
            kid: Some("nobody".into()),
            ..Header::default()
        };
        let cases = [
            ("x".to_string(), "malformed"),
            (
                sign(
                    &Header::default(),
                    &parts.claims(json!({})),
                    "another-secret-long-enough-0123456789",
                ),
                "bad_signature",
            ),
            (parts.token(json!({"exp": now - 1})), "expired"),
            (parts.token(json!({"nbf": now + 5})), "not_yet_valid"),
            (parts.token(json!({"iss": "elsewhere"})), "wrong_issuer"),
            (parts.token(json!({"aud": "other"})), "wrong_audience"),
            (
                sign(&unknown_kid, &parts.claims(json!({})), SECRET),
                "unknown_kid",
            ),
            (parts.token(json!({"sub": null})), "missing_claim:sub"),
            (parts.token(json!({"exp": null})), "missing_claim:exp"),
            (parts.token(json!({"nbf": null})), "missing_claim:nbf"),
            (parts.token(json!({"iat": null})), "missing_claim:iat"),
            (parts.token(json!({"iss": null})), "missing_claim:iss"),
            (parts.token(json!({"aud": null})), "missing_claim:aud"),
            (parts.token(json!({"jti": null})), "missing_claim:jti"),
            (
                parts.token(json!({"exp": now + 3600})),
                "lifetime_beyond_access_ttl",
            ),
        ];
        for (token, label) in cases {
            let got = parts.authenticate(&with_bearer(&token)).await;
            assert_eq!(got.outcome().label(), label, "{token}");
            let coarse = if label == "expired" {
                "expired"
            } else {
                "invalid"
            };
            assert_eq!(got.outcome().metric_label(), Some(coarse), "{label}");
            let Authn::Anonymous(why) = got.authn else {
                panic!("{label}: {:?}", got.authn);
            };
            let challenge = if label == "expired" {
                AuthFailure::Expired
            } else {
                AuthFailure::Invalid
            };
            assert_eq!(why.challenge(), challenge, "{label}");
        }
    }

    #[tokio::test]
    async fn an_expired_access_cookie_is_renewed_by_the_refresh_cookie() {
        let parts = Parts::new();
        let expired = parts.token(json!({"exp": parts.now() - 1}));
        let refresh = parts.refresh_token().await;
        let cookies = format!("access_token={expired}; refresh_token={refresh}");
        let got = parts.authenticate(&with_cookies(&cookies)).await;
        let Authn::Authenticated { identity, via, .. } = &got.authn else {
            panic!("{got:?}");
        };
        assert_eq!((identity.sub.as_str(), *via), ("alice", Via::Refresh));
        assert!(identity.session.is_some());
        assert_eq!(got.outcome().label(), "refreshed");
        assert_eq!(got.outcome().metric_label(), Some("refreshed"));
        let set: Vec<&str> = got
            .set_cookies
            .iter()
            .map(|c| c.to_str().unwrap())
            .collect();
        assert!(set[0].starts_with("access_token=ey"), "{set:?}");
        assert!(set[1].starts_with("refresh_token="), "{set:?}");
        assert!(!set[1].contains(&refresh), "the refresh token rotated");
    }

    #[tokio::test]
    async fn a_failed_refresh_clears_the_cookies_and_says_why() {
        let parts = Parts::new();
        let expired = parts.token(json!({"exp": parts.now() - 1}));
        for (cookies, access_cookie_expired) in [
            (
                format!("access_token={expired}; refresh_token=garbage"),
                true,
            ),
            ("refresh_token=garbage".to_string(), false),
        ] {
            let got = parts.authenticate(&with_cookies(&cookies)).await;
            assert_eq!(got.authn.outcome(), AuthOutcome::RefreshFailed, "{cookies}");
            let Authn::Anonymous(why) = got.authn else {
                unreachable!()
            };
            assert_eq!(
                why,
                Anonymous::RefreshFailed {
                    access_cookie_expired
                }
            );
            let expected_challenge = if access_cookie_expired {
                AuthFailure::Expired
            } else {
                AuthFailure::Missing
            };
            assert_eq!(why.challenge(), expected_challenge);
            assert_eq!(AuthOutcome::RefreshFailed.label(), "refresh_failed");
            assert_eq!(got.set_cookies.len(), 2);
            assert!(got
                .set_cookies
                .iter()
                .all(|c| c.to_str().unwrap().contains("Max-Age=0")));
            assert!(matches!(got.refresh_failure, Some(RefreshError::Invalid)));
        }
    }

    #[tokio::test]
    async fn forged_cookies_and_any_authorization_header_are_never_refreshed_around() {
        let parts = Parts::new();
        let refresh = parts.refresh_token().await;
        let forged = sign(
            &Header::default(),
            &parts.claims(json!({"exp": parts.now() - 1})),
            "another-secret-long-enough-0123456789",
        );
        let got = parts
            .authenticate(&with_cookies(&format!(
                "access_token={forged}; refresh_token={refresh}"
            )))
            .await;
        assert_eq!(got.outcome().label(), "bad_signature");
        assert!(got.set_cookies.is_empty());

        let expired = parts.token(json!({"exp": parts.now() - 1}));
        let cookies = format!("access_token={expired}; refresh_token={refresh}");
        for authorization in [format!("Bearer {expired}"), "Basic YWxpY2U6cHc=".into()] {
            let req = request(&[(AUTHORIZATION, &authorization), (COOKIE, &cookies)]);
            let got = parts.authenticate(&req).await;
            assert_eq!(got.outcome().label(), "expired", "{authorization}");
            assert!(got.set_cookies.is_empty());
        }
    }

    #[test]
    fn the_metric_keeps_its_few_outcomes() {
        let via = [Via::Bearer, Via::Cookie, Via::Refresh];
        let outcomes = via.map(AuthOutcome::Authenticated).into_iter().chain([
            AuthOutcome::NotChecked,
            AuthOutcome::Missing,
            AuthOutcome::Refused(TokenRefusal::Malformed),
            AuthOutcome::Refused(TokenRefusal::MissingClaim(RequiredClaim::Jti)),
            AuthOutcome::Refused(TokenRefusal::Expired),
            AuthOutcome::RefreshFailed,
            AuthOutcome::Forbidden,
            AuthOutcome::LoggedIn,
            AuthOutcome::LoginFailed,
        ]);
        for outcome in outcomes {
            if let Some(label) = outcome.metric_label() {
                assert!(
                    crate::observe::metrics::AUTH_OUTCOMES.contains(&label),
                    "{outcome:?} counts as {label}"
                );
            }
        }
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_static("bearer abc"));
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(AUTHORIZATION, HeaderValue::from_static("BEARER  abc "));
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(AUTHORIZATION, HeaderValue::from_static("Basic Og=="));
        assert_eq!(bearer(&h), None);
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer"));
        assert_eq!(bearer(&h), None);
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearerx abc"));
        assert_eq!(bearer(&h), None);
        // Not UTF-8: no token, though the scheme is Bearer (the proxy still
        // drops such a header before forwarding).
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_bytes(b"Bearer \xff").unwrap(),
        );
        assert_eq!(bearer(&h), None);
        assert!(bearer_credentials(&h[AUTHORIZATION]).is_some());
    }
}
