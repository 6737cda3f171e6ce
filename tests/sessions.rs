//! Issue 4: refresh tokens, rotation with reuse detection, silent refresh
//! and logout — end to end through the real listener, against both session
//! backends (the same test fns run for `memory` and for `redis`, each Redis
//! test under its own key prefix), two authgate processes sharing one
//! Redis, and a test-owned redis-server that is killed and restarted.

mod support;

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use reqwest::header::{AUTHORIZATION, COOKIE, WWW_AUTHENTICATE};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::task::JoinSet;

use authgate::clock::Clock;
use authgate::sessions::{FamilyInfo, SessionStore};
use support::process::AuthgateProcess;
use support::{
    binary, client, closed_port, cookie_value, now, password_grant, redis_prefix, refresh_grant,
    set_cookies, sign_hs256, tokens, user, users_toml, TestGateway, TestUser, Tokens, Upstream,
    SECRET, SECRET_ENV,
};

const REDIS_URL: &str = "redis://127.0.0.1:6379/0";
const EXPIRED_CHALLENGE: &str =
    r#"Bearer error="invalid_token", error_description="token expired""#;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Memory,
    Redis,
}

/// The suite: every fn here runs once per backend.
macro_rules! for_both_backends {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Backend::Memory).await
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Backend::Redis).await
                }
            )*
        }
    };
}

for_both_backends!(
    silent_refresh_renews_an_expired_cookie_session,
    parallel_refreshes_share_one_successor,
    replay_after_the_grace_revokes_the_family,
    refresh_grant_answers_like_a_login,
    bad_refresh_grants_are_invalid_grant,
    logout_ends_the_session,
    expired_bearer_is_never_silently_refreshed,
    forged_access_cookie_is_never_refreshed_around,
    failed_silent_refresh_is_401_and_clears_both_cookies,
    deleted_or_disabled_user_cannot_refresh,
    changed_roles_and_email_apply_at_refresh,
    sessions_kept_alive_by_refreshing_stay_listed_and_revocable,
    sessions_commands,
    rotation_is_atomic_under_parallelism,
    sessions_expire_by_the_clock,
    throttle_windows_and_bans_end_by_the_clock,
    one_time_code_steps_are_used_once_per_key,
);

// ---------------------------------------------------------------- set-up

fn people() -> Vec<TestUser> {
    vec![
        user("alice", "alice-pw", &["user"]),
        user("bob", "bob-pw", &["user"]),
        user("carol", "carol-pw", &["user"]),
    ]
}

fn password(username: &str) -> String {
    format!("{username}-pw")
}

struct Options {
    access_ttl: &'static str,
    refresh_ttl: &'static str,
    reuse_grace: &'static str,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            access_ttl: "1s",
            refresh_ttl: "1h",
            reuse_grace: "10s",
        }
    }
}

fn sessions_toml(backend: Backend, prefix: &str, url: &str, grace: &str) -> String {
    match backend {
        Backend::Memory => format!("[sessions]\nbackend = \"memory\"\nreuse_grace = \"{grace}\"\n"),
        Backend::Redis => format!(
            "[sessions]\nbackend = \"redis\"\nredis_url = \"{url}\"\nkey_prefix = \"{prefix}\"\nreuse_grace = \"{grace}\"\n"
        ),
    }
}

/// `/` needs a login, `/admin/` the admin role, `/maybe/` is optional.
fn gateway_toml(up: &Upstream, options: &Options, sessions: &str) -> String {
    format!(
        r#"
[[routes]]
prefix = "/"
upstream = "{u}"
auth = "required"

[[routes]]
prefix = "/admin/"
upstream = "{u}"
auth = "required"
roles = ["admin"]
strip_prefix = true

[[routes]]
prefix = "/maybe/"
upstream = "{u}"
auth = "optional"
strip_prefix = true

[jwt]
secret_env = "{SECRET_ENV}"
access_ttl = "{access}"
refresh_ttl = "{refresh}"

{sessions}
"#,
        u = up.url(),
        access = options.access_ttl,
        refresh = options.refresh_ttl,
    )
}

/// One gateway with its upstream, for one test.
struct Setup {
    up: Upstream,
    gw: TestGateway,
    /// The Redis key prefix (redis backend only).
    prefix: String,
}

/// A browser's cookies after a login or a refresh.
#[derive(Debug, Clone)]
struct Session {
    access: String,
    refresh: String,
}

impl Session {
    fn cookies(&self) -> String {
        format!(
            "theme=dark; access_token={}; refresh_token={}",
            self.access, self.refresh
        )
    }

    fn from_set_cookies(set: &[String]) -> Session {
        Session {
            access: cookie_value(set, "access_token").expect("an access_token cookie"),
            refresh: cookie_value(set, "refresh_token").expect("a refresh_token cookie"),
        }
    }
}

impl Setup {
    async fn start(backend: Backend, test: &str, options: Options) -> Setup {
        Self::start_with_url(backend, test, options, REDIS_URL).await
    }

    async fn start_with_url(backend: Backend, test: &str, options: Options, url: &str) -> Setup {
        let up = Upstream::start("app").await;
        let prefix = redis_prefix(test);
        let sessions = sessions_toml(backend, &prefix, url, options.reuse_grace);
        let gw = TestGateway::start(&gateway_toml(&up, &options, &sessions), &people()).await;
        Setup { up, gw, prefix }
    }

    /// Moves the gateway's clock past the access token's `exp` (leeway is 0).
    fn expire(&self, access_token: &str) {
        let exp_ms = claims_of(access_token)["exp"].as_u64().unwrap() * 1000;
        let now_ms = self.gw.clock.unix_millis();
        self.gw.clock.advance(Duration::from_millis(
            (exp_ms + 1000).saturating_sub(now_ms),
        ));
    }

    fn store(&self) -> std::sync::Arc<dyn SessionStore> {
        self.gw.gateway.load().sessions.clone()
    }

    async fn login(&self, username: &str) -> Session {
        let (body, set) = self.gw.login(username, &password(username)).await;
        let session = Session::from_set_cookies(&set);
        assert_eq!(body["refresh_token"], session.refresh.as_str());
        assert_eq!(body["access_token"], session.access.as_str());
        session
    }

    async fn get(&self, path: &str, cookie: &str) -> reqwest::Response {
        client()
            .get(self.gw.url(path))
            .header(COOKIE, cookie)
            .send()
            .await
            .unwrap()
    }

    async fn refresh_grant(&self, refresh_token: &str) -> reqwest::Response {
        self.gw.refresh_grant(refresh_token).await
    }

    /// The successor of `refresh_token`; panics unless the grant succeeds.
    async fn refreshed(&self, refresh_token: &str) -> Session {
        let Tokens { access, refresh } = tokens(self.refresh_grant(refresh_token).await).await;
        Session { access, refresh }
    }

    async fn assert_refresh_refused(&self, refresh_token: &str) {
        let response = self.refresh_grant(refresh_token).await;
        assert_eq!(response.status(), 400);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "invalid_grant", "{body}");
    }

    async fn families(&self, username: &str) -> Vec<FamilyInfo> {
        self.store().list_user(username).await.unwrap()
    }

    async fn only_family(&self, username: &str) -> FamilyInfo {
        let mut families = self.families(username).await;
        assert_eq!(families.len(), 1, "{families:?}");
        families.pop().unwrap()
    }

    /// Rewrites the users file and waits until the gateway has re-read it.
    async fn replace_users(
        &self,
        users: &[TestUser],
        applied: impl Fn(Option<authgate::users::User>) -> bool,
        probe: &str,
    ) {
        std::fs::write(self.gw.path("users.toml"), users_toml(users)).unwrap();
        for _ in 0..100 {
            if applied(self.gw.gateway.load().users.find(probe).await.unwrap()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the users file edit was not picked up");
    }
}

/// GETs every URL at once with the same cookies; each must succeed with
/// the same new pair (no fork), which is returned.
async fn parallel_silent_refreshes(urls: Vec<String>, cookie: &str) -> Session {
    let mut requests = JoinSet::new();
    for url in urls {
        let cookie = cookie.to_string();
        requests.spawn(async move {
            let response = client()
                .get(url)
                .header(COOKIE, cookie)
                .send()
                .await
                .unwrap();
            (response.status(), set_cookies(response.headers()))
        });
    }
    let mut pairs = Vec::new();
    while let Some(result) = requests.join_next().await {
        let (status, set) = result.unwrap();
        assert_eq!(status, 200);
        let pair = Session::from_set_cookies(&set);
        pairs.push((pair.access, pair.refresh));
    }
    pairs.dedup();
    assert_eq!(pairs.len(), 1, "the family forked: {pairs:?}");
    let (access, refresh) = pairs.pop().unwrap();
    Session { access, refresh }
}

/// The claims of a JWT, read without verification (the test's own view).
fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// `token` once expired, for a gateway in another process (whose clock a
/// test cannot move): the same claims with every instant moved back by the
/// token's lifetime and a second, signed again with the suite's secret.
fn expired_copy(token: &str) -> String {
    let mut claims = claims_of(token);
    let instant = |claims: &Value, name: &str| claims[name].as_u64().unwrap();
    let back = instant(&claims, "exp") - instant(&claims, "iat") + 1;
    for name in ["iat", "nbf", "exp"] {
        claims[name] = json!(instant(&claims, name) - back);
    }
    sign_hs256(&claims, SECRET)
}

/// A well-formed refresh token that was never issued.
fn unknown_refresh_token() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 48]>())
}

fn assert_cookies_cleared(set: &[String]) {
    for name in ["access_token", "refresh_token"] {
        assert!(
            set.iter()
                .any(|c| c.starts_with(&format!("{name}=; Max-Age=0;"))),
            "{name} not cleared: {set:?}"
        );
    }
}

async fn error_code(response: reqwest::Response) -> String {
    let body: Value = response.json().await.unwrap();
    body["error"].as_str().unwrap_or_default().to_string()
}

async fn redis_connection(url: &str) -> ::redis::aio::MultiplexedConnection {
    ::redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Every key under `prefix`.
async fn redis_keys(url: &str, prefix: &str) -> Vec<String> {
    let mut conn = redis_connection(url).await;
    let mut keys = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<String>) = ::redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .unwrap();
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    keys.sort();
    keys
}

/// Moves every retirement under `prefix` back by `by`, as if that long had
/// passed since: for gateways in other processes, whose clock a test
/// cannot move (the grace is judged from the retirement's `used_at`).
async fn backdate_retirements(url: &str, prefix: &str, by: Duration) {
    let mut conn = redis_connection(url).await;
    let mut moved = 0;
    for key in redis_keys(url, prefix).await {
        if !key.contains(":t:") {
            continue;
        }
        let used_at: Option<i64> = ::redis::cmd("HGET")
            .arg(&key)
            .arg("used_at")
            .query_async(&mut conn)
            .await
            .unwrap();
        if used_at.is_some() {
            let () = ::redis::cmd("HINCRBY")
                .arg(&key)
                .arg("used_at")
                .arg(-(by.as_millis() as i64))
                .query_async(&mut conn)
                .await
                .unwrap();
            moved += 1;
        }
    }
    assert!(moved > 0, "no retired token under {prefix}");
}

/// The `state` of every refresh-token key under `prefix` ("live"/"used").
async fn token_states(url: &str, prefix: &str) -> Vec<String> {
    let mut conn = redis_connection(url).await;
    let mut states = Vec::new();
    for key in redis_keys(url, prefix).await {
        if key.contains(":t:") {
            let state: String = ::redis::cmd("HGET")
                .arg(&key)
                .arg("state")
                .query_async(&mut conn)
                .await
                .unwrap();
            states.push(state);
        }
    }
    states.sort();
    states
}

// ------------------------------------------------------- the suite (both)

/// Login, let the access token expire, and a request with only the
/// cookies goes through as the user and comes back with a new pair,
/// keeping the upstream's own Set-Cookie.
async fn silent_refresh_renews_an_expired_cookie_session(backend: Backend) {
    let s = Setup::start(backend, "silent", Options::default()).await;
    let old = s.login("alice").await;
    s.expire(&old.access);

    let response = s.get("/set-cookie", &old.cookies()).await;
    assert_eq!(response.status(), 200);
    let set = set_cookies(response.headers());
    assert!(set.contains(&"upstream=1; Path=/".to_string()), "{set:?}");
    let new = Session::from_set_cookies(&set);
    assert_ne!(new.access, old.access);
    assert_ne!(new.refresh, old.refresh);
    assert_eq!(new.refresh.len(), 64);
    let claims = claims_of(&new.access);
    assert_eq!(claims["sub"], "alice");
    assert!(claims["exp"].as_u64().unwrap() > claims_of(&old.access)["exp"].as_u64().unwrap());
    let refresh_cookie = set
        .iter()
        .find(|c| c.starts_with("refresh_token="))
        .unwrap();
    assert!(
        refresh_cookie.contains("; Max-Age=3600; Path=/; HttpOnly"),
        "{refresh_cookie}"
    );

    let seen = s.up.last();
    assert_eq!(seen.uri, "/set-cookie");
    assert_eq!(seen.headers["x-auth-user"], "alice");
    assert_eq!(seen.headers["x-auth-email"], "alice@example.com");
    assert_eq!(seen.headers["x-auth-roles"], "user");
    // Our cookies are not the upstream's business; the others pass.
    assert_eq!(seen.headers["cookie"], "theme=dark");

    // The new refresh token is the live one.
    let family = s.only_family("alice").await;
    assert!(family.last_used_ms > family.created_ms);
    s.refreshed(&new.refresh).await;
}

/// 20 parallel requests with one expired access cookie and one refresh
/// cookie: all succeed, all get the same new pair, the family does not fork.
async fn parallel_refreshes_share_one_successor(backend: Backend) {
    let s = Setup::start(backend, "parallel", Options::default()).await;
    let old = s.login("alice").await;
    s.expire(&old.access);

    let urls = (0..20).map(|i| s.gw.url(&format!("/page/{i}"))).collect();
    let Session {
        access,
        refresh: successor,
    } = parallel_silent_refreshes(urls, &old.cookies()).await;
    assert_ne!(successor, old.refresh);
    assert_eq!(claims_of(&access)["sub"], "alice");
    assert_eq!(s.up.count(), 20);
    assert!(s
        .up
        .seen()
        .iter()
        .all(|r| r.headers["x-auth-user"] == "alice"));

    let family = s.only_family("alice").await;
    assert!(!family.revoked);
    if backend == Backend::Redis {
        // The retired token (kept for reuse detection) and its one successor.
        assert_eq!(token_states(REDIS_URL, &s.prefix).await, ["live", "used"]);
    }
    // Within the grace the retired token still maps to that successor...
    let again = s.refreshed(&old.refresh).await;
    assert_eq!(
        (again.access, again.refresh.clone()),
        (access, successor.clone())
    );
    // ...and the successor is live.
    s.refreshed(&successor).await;
    assert!(!s.only_family("alice").await.revoked);
}

/// A retired token presented after `reuse_grace` is theft: the family is
/// revoked, and the successor the thief or the user holds stops working.
async fn replay_after_the_grace_revokes_the_family(backend: Backend) {
    let options = Options {
        reuse_grace: "1s",
        ..Options::default()
    };
    let s = Setup::start(backend, "replay", options).await;
    let stolen = s.login("alice").await;
    let current = s.refreshed(&stolen.refresh).await;
    s.gw.clock.advance(Duration::from_secs(2));

    // Replayed as a cookie: 401 and the cookies go.
    let response = s
        .get("/x", &format!("refresh_token={}", stolen.refresh))
        .await;
    assert_eq!(response.status(), 401);
    assert_cookies_cleared(&set_cookies(response.headers()));
    assert!(s.only_family("alice").await.revoked);

    // The legitimate successor is dead too, silently and explicitly.
    let response = s
        .get("/x", &format!("refresh_token={}", current.refresh))
        .await;
    assert_eq!(response.status(), 401);
    s.assert_refresh_refused(&current.refresh).await;
    assert_eq!(s.up.count(), 0);
    // Another login of the same user is another family, untouched.
    let other = s.login("alice").await;
    s.refreshed(&other.refresh).await;
}

/// `grant_type=refresh_token`, from the form field, the cookie or JSON,
/// answers with the same JSON and cookies as a login.
async fn refresh_grant_answers_like_a_login(backend: Backend) {
    let s = Setup::start(backend, "grant", Options::default()).await;
    let (login_body, login_set) = s.gw.login("alice", "alice-pw").await;
    let r0 = login_body["refresh_token"].as_str().unwrap().to_string();

    let response = s.refresh_grant(&r0).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let set = set_cookies(response.headers());
    let body: Value = response.json().await.unwrap();
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&body), keys(&login_body));
    assert_eq!(body["token_type"], login_body["token_type"]);
    assert_eq!(body["expires_in"], login_body["expires_in"]);
    let r1 = body["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(r1, r0);
    assert_eq!(cookie_value(&set, "refresh_token").unwrap(), r1);
    assert_eq!(
        cookie_value(&set, "access_token").unwrap(),
        body["access_token"].as_str().unwrap()
    );
    // Same cookie attributes as the login's.
    let attributes = |set: &[String]| {
        let mut a: Vec<String> = set
            .iter()
            .map(|c| c.split_once(';').unwrap().1.to_string())
            .collect();
        a.sort();
        a
    };
    assert_eq!(attributes(&set), attributes(&login_set));
    let claims = claims_of(body["access_token"].as_str().unwrap());
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["roles"], json!(["user"]));

    // The refresh cookie instead of the field.
    let response = client()
        .post(s.gw.url("/token"))
        .header(COOKIE, format!("refresh_token={r1}"))
        .form(&[("grant_type", "refresh_token")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let r2 = body["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(r2, r1);

    // A JSON body.
    let response = client()
        .post(s.gw.url("/token"))
        .json(&json!({"grant_type": "refresh_token", "refresh_token": r2}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_ne!(body["refresh_token"], r2.as_str());
    assert_eq!(s.only_family("alice").await.username, "alice");
}

/// Bad, unknown and malformed refresh tokens: 400 `invalid_grant`
/// (RFC 6749 §5.2), and the cookies are cleared; none at all: 400
/// `invalid_request`.
async fn bad_refresh_grants_are_invalid_grant(backend: Backend) {
    let s = Setup::start(backend, "badgrant", Options::default()).await;
    let good = s.login("alice").await;
    let mut forged = URL_SAFE_NO_PAD.decode(&good.refresh).unwrap();
    forged[47] ^= 1; // same family, wrong secret
    for bad in [
        "garbage".to_string(),
        unknown_refresh_token(),
        URL_SAFE_NO_PAD.encode(&forged),
        format!("{}A", good.refresh),
    ] {
        let response = s.refresh_grant(&bad).await;
        assert_eq!(response.status(), 400, "{bad}");
        assert_eq!(response.headers()["cache-control"], "no-store");
        assert_cookies_cleared(&set_cookies(response.headers()));
        assert_eq!(error_code(response).await, "invalid_grant");
    }
    let response = client()
        .post(s.gw.url("/token"))
        .form(&[("grant_type", "refresh_token")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(error_code(response).await, "invalid_request");
    // The forged sibling did not hurt the real session.
    assert!(!s.only_family("alice").await.revoked);
    s.refreshed(&good.refresh).await;
}

/// `POST /logout` revokes the family (cookie or form field), answers 204
/// and clears both cookies.
async fn logout_ends_the_session(backend: Backend) {
    let s = Setup::start(backend, "logout", Options::default()).await;
    let a = s.login("alice").await;
    let response = client()
        .post(s.gw.url("/logout"))
        .header(COOKIE, a.cookies())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert_cookies_cleared(&set_cookies(response.headers()));
    s.assert_refresh_refused(&a.refresh).await;
    let response = s.get("/x", &format!("refresh_token={}", a.refresh)).await;
    assert_eq!(response.status(), 401);

    // The form field, and after a rotation (the retired token ends it too).
    let b = s.login("alice").await;
    let b1 = s.refreshed(&b.refresh).await;
    let response = client()
        .post(s.gw.url("/logout"))
        .form(&[("refresh_token", b.refresh.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    s.assert_refresh_refused(&b1.refresh).await;

    // Nothing to end: still 204, cookies cleared.
    let response = client().post(s.gw.url("/logout")).send().await.unwrap();
    assert_eq!(response.status(), 204);
    assert_cookies_cleared(&set_cookies(response.headers()));
    let families = s.families("alice").await;
    assert_eq!(families.len(), 2);
    assert!(families.iter().all(|f| f.revoked), "{families:?}");
}

/// API clients keep their refresh token from the JSON body and refresh it
/// themselves: an expired Bearer token is never refreshed behind their
/// back, even with a refresh cookie riding along.
async fn expired_bearer_is_never_silently_refreshed(backend: Backend) {
    let s = Setup::start(backend, "bearer", Options::default()).await;
    let a = s.login("alice").await;
    s.expire(&a.access);

    for cookie in [a.cookies(), format!("refresh_token={}", a.refresh)] {
        let response = client()
            .get(s.gw.url("/x"))
            .bearer_auth(&a.access)
            .header(COOKIE, cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
        assert_eq!(response.headers()[WWW_AUTHENTICATE], EXPIRED_CHALLENGE);
        assert!(set_cookies(response.headers()).is_empty());
    }
    // Any Authorization header at all rules the refresh out.
    let response = client()
        .get(s.gw.url("/x"))
        .header(AUTHORIZATION, "Basic YWxpY2U6YWxpY2UtcHc=")
        .header(COOKIE, format!("refresh_token={}", a.refresh))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert!(set_cookies(response.headers()).is_empty());
    assert_eq!(s.up.count(), 0);

    let family = s.only_family("alice").await;
    assert_eq!(
        family.last_used_ms, family.created_ms,
        "rotated behind the client's back"
    );
    // The client's own refresh is a first use, not a replay.
    s.refreshed(&a.refresh).await;
    let family = s.only_family("alice").await;
    assert!(family.last_used_ms > family.created_ms);
    assert!(!family.revoked);
}

/// A token with a bad signature is an attack, not an expiry: no refresh.
async fn forged_access_cookie_is_never_refreshed_around(backend: Backend) {
    let s = Setup::start(backend, "forged", Options::default()).await;
    let a = s.login("alice").await;
    let t = now();
    let wrong_secret = "not-the-gateway-secret-but-long-enough-0123";
    let forged_claims = |exp: u64| {
        json!({"sub": "alice", "iat": t - 5, "nbf": t - 5, "exp": exp, "iss": "authgate",
               "jti": "forged", "roles": ["admin"]})
    };
    let mut tampered = claims_of(&a.access);
    tampered["roles"] = json!(["admin"]);
    let header = a.access.split('.').next().unwrap();
    let signature = a.access.rsplit('.').next().unwrap();
    let payload = URL_SAFE_NO_PAD.encode(tampered.to_string());
    for forged in [
        sign_hs256(&forged_claims(t + 600), wrong_secret),
        sign_hs256(&forged_claims(t - 60), wrong_secret),
        format!("{header}.{payload}.{signature}"),
        "not-a-jwt".to_string(),
    ] {
        let cookie = format!("access_token={forged}; refresh_token={}", a.refresh);
        let response = s.get("/x", &cookie).await;
        assert_eq!(response.status(), 401, "{forged}");
        assert_eq!(
            response.headers()[WWW_AUTHENTICATE],
            r#"Bearer error="invalid_token""#
        );
        assert!(set_cookies(response.headers()).is_empty());
    }
    assert_eq!(s.up.count(), 0);
    let family = s.only_family("alice").await;
    assert_eq!(family.last_used_ms, family.created_ms);
}

/// When the refresh token is bad too: 401 as before, and both cookies are
/// cleared so the browser stops sending them.
async fn failed_silent_refresh_is_401_and_clears_both_cookies(backend: Backend) {
    let s = Setup::start(backend, "failed", Options::default()).await;
    let a = s.login("alice").await;
    s.expire(&a.access);
    for refresh in [unknown_refresh_token(), "garbage".to_string()] {
        let response = s
            .get(
                "/x",
                &format!("access_token={}; refresh_token={refresh}", a.access),
            )
            .await;
        assert_eq!(response.status(), 401);
        assert_eq!(response.headers()[WWW_AUTHENTICATE], EXPIRED_CHALLENGE);
        assert_cookies_cleared(&set_cookies(response.headers()));
    }
    // No access cookie at all, a dead refresh cookie.
    let response = s
        .get("/x", &format!("refresh_token={}", unknown_refresh_token()))
        .await;
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()[WWW_AUTHENTICATE], "Bearer");
    assert_cookies_cleared(&set_cookies(response.headers()));
    // On an optional route the request goes on anonymously, cookies cleared.
    let response = s
        .get(
            "/maybe/x",
            &format!("refresh_token={}", unknown_refresh_token()),
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_cookies_cleared(&set_cookies(response.headers()));
    assert!(s.up.last().headers.get("x-auth-user").is_none());
    assert_eq!(s.up.count(), 1);
}

/// At each refresh the user is read again: a deleted or disabled user
/// cannot refresh, and their family is revoked.
async fn deleted_or_disabled_user_cannot_refresh(backend: Backend) {
    let s = Setup::start(backend, "gone", Options::default()).await;
    let b = s.login("bob").await;
    let c = s.login("carol").await;
    let a = s.login("alice").await;
    let mut carol = user("carol", "carol-pw", &["user"]);
    carol.disabled = true;
    let users = vec![user("alice", "alice-pw", &["user"]), carol];
    s.replace_users(&users, |bob| bob.is_none(), "bob").await;
    assert!(
        s.gw.gateway
            .load()
            .users
            .find("carol")
            .await
            .unwrap()
            .unwrap()
            .disabled
    );

    s.assert_refresh_refused(&b.refresh).await;
    s.expire(&c.access);
    let response = s.get("/x", &c.cookies()).await;
    assert_eq!(response.status(), 401);
    assert_cookies_cleared(&set_cookies(response.headers()));
    assert_eq!(s.up.count(), 0);
    assert!(s.only_family("bob").await.revoked);
    assert!(s.only_family("carol").await.revoked);
    // The ones who remain are unaffected.
    s.refreshed(&a.refresh).await;
}

/// Changed roles and email take effect in the access token minted at the
/// next refresh, and in the identity headers of the refreshed request.
async fn changed_roles_and_email_apply_at_refresh(backend: Backend) {
    let s = Setup::start(backend, "roles", Options::default()).await;
    let a = s.login("alice").await;
    let response = s.get("/admin/panel", &a.cookies()).await;
    assert_eq!(response.status(), 403);

    let mut alice = user("alice", "alice-pw", &["admin", "user"]);
    alice.email = Some("alice@new.example".into());
    s.replace_users(
        &[alice, user("bob", "bob-pw", &["user"])],
        |u| u.is_some_and(|u| u.roles.len() == 2),
        "alice",
    )
    .await;
    s.expire(&a.access);
    let response = s.get("/admin/panel", &a.cookies()).await;
    assert_eq!(response.status(), 200);
    let new = Session::from_set_cookies(&set_cookies(response.headers()));
    let seen = s.up.last();
    assert_eq!(seen.uri, "/panel");
    assert_eq!(seen.headers["x-auth-roles"], "admin,user");
    assert_eq!(seen.headers["x-auth-email"], "alice@new.example");
    let claims = claims_of(&new.access);
    assert_eq!(claims["roles"], json!(["admin", "user"]));
    assert_eq!(claims["email"], "alice@new.example");
}

/// A session kept alive by refreshing outlives its login's `refresh_ttl`;
/// it must still be listed and revocable ("log out everywhere").
async fn sessions_kept_alive_by_refreshing_stay_listed_and_revocable(backend: Backend) {
    let options = Options {
        refresh_ttl: "3s",
        ..Options::default()
    };
    let s = Setup::start(backend, "keepalive", options).await;
    let a = s.login("alice").await;
    s.gw.clock.advance(Duration::from_secs(2));
    let a1 = s.refreshed(&a.refresh).await;
    // Past the login's refresh_ttl, within the rotated one.
    s.gw.clock.advance(Duration::from_millis(1500));
    assert_eq!(s.families("alice").await.len(), 1);
    assert_eq!(s.store().revoke_user("alice").await.unwrap(), 1);
    s.assert_refresh_refused(&a1.refresh).await;
}

/// `authgate sessions list|revoke USERNAME` against Redis; with the memory
/// backend they explain why they cannot and exit 1.
async fn sessions_commands(backend: Backend) {
    let s = Setup::start(backend, "cli", Options::default()).await;
    let config = s.gw.path("gateway.toml");
    if backend == Backend::Memory {
        for command in ["list", "revoke"] {
            let out = authgate_cli(&config, &["sessions", command, "alice"]).await;
            assert_eq!(out.status.code(), Some(1));
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains("\"memory\""), "{stderr}");
            assert!(stderr.contains("redis"), "{stderr}");
        }
        return;
    }
    let a1 = s.login("alice").await;
    let a2 = s.login("alice").await;
    let b = s.login("bob").await;
    s.refreshed(&a2.refresh).await;

    let out = authgate_cli(&config, &["sessions", "list", "alice"]).await;
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    let families = s.families("alice").await;
    for (line, family) in lines.iter().zip(&families) {
        assert!(line.starts_with(&family.family), "{line}");
        assert!(line.contains("\tcreated 20"), "{line}");
        assert!(line.contains("\tlast used 20"), "{line}");
        assert!(!line.contains("revoked"), "{line}");
    }

    let out = authgate_cli(&config, &["sessions", "revoke", "alice"]).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "revoked 2 session(s) of alice\n"
    );
    s.assert_refresh_refused(&a1.refresh).await;
    s.assert_refresh_refused(&a2.refresh).await;
    s.refreshed(&b.refresh).await;

    let out = authgate_cli(&config, &["sessions", "list", "alice"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        stdout.lines().filter(|l| l.ends_with("\trevoked")).count(),
        2,
        "{stdout}"
    );
    let out = authgate_cli(&config, &["sessions", "list", "nobody"]).await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "no sessions for nobody\n"
    );
}

async fn authgate_cli(config: &Path, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(binary())
        .arg("-c")
        .arg(config)
        .args(args)
        .env(SECRET_ENV, SECRET)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap()
}

/// The store's check-and-rotate, driven directly and concurrently: one
/// winner, every other caller gets the winner's sealed successor, exactly
/// one successor is live, and reuse after the grace revokes. For Redis the
/// callers use two separate connections (as two processes would). Both
/// stores must tell the same story.
async fn rotation_is_atomic_under_parallelism(backend: Backend) {
    use authgate::sessions::{memory::MemorySessionStore, redis::RedisSessionStore};
    use authgate::sessions::{RotateRequest, Rotation};
    use std::sync::Arc;

    let prefix = redis_prefix("atomic");
    let clock = Clock::manual();
    let stores: Vec<Arc<dyn SessionStore>> = match backend {
        Backend::Memory => vec![Arc::new(MemorySessionStore::new(clock.clone()))],
        Backend::Redis => vec![
            Arc::new(
                RedisSessionStore::new(REDIS_URL, &prefix, None, clock.clone())
                    .await
                    .unwrap(),
            ),
            Arc::new(
                RedisSessionStore::new(REDIS_URL, &prefix, None, clock.clone())
                    .await
                    .unwrap(),
            ),
        ],
    };
    let ttl = Duration::from_secs(60);
    let grace = Duration::from_millis(1000);
    let family: [u8; 16] = rand::random();
    let first: [u8; 32] = rand::random();
    let t0 = clock.unix_millis();
    stores[0]
        .create(&family, "alice", &first, t0, ttl)
        .await
        .unwrap();

    let candidates: Vec<([u8; 32], [u8; 32])> =
        (0..50).map(|_| (rand::random(), rand::random())).collect();
    let mut callers = JoinSet::new();
    for (i, &(successor, sealed)) in candidates.iter().enumerate() {
        let store = stores[i % stores.len()].clone();
        callers.spawn(async move {
            let outcome = store
                .rotate(RotateRequest {
                    family: &family,
                    presented: &first,
                    successor: &successor,
                    sealed_successor: &sealed,
                    now_ms: t0 + 10 + i as u64,
                    grace,
                    ttl,
                })
                .await
                .unwrap();
            (i, outcome)
        });
    }
    let mut winners = Vec::new();
    let mut shared = Vec::new();
    while let Some(result) = callers.join_next().await {
        match result.unwrap() {
            (i, Rotation::Rotated { username, at_ms }) => {
                assert_eq!(username, "alice");
                winners.push((i, at_ms));
            }
            (
                _,
                Rotation::Successor {
                    username,
                    at_ms,
                    sealed,
                },
            ) => {
                assert_eq!(username, "alice");
                shared.push((at_ms, sealed));
            }
            (_, other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    let (winner, at_ms) = winners[0];
    assert_eq!(shared.len(), 49);
    assert!(shared.iter().all(|&s| s == (at_ms, candidates[winner].1)));

    // Exactly the winner's successor is live; the losers never were.
    let rotate = |presented: [u8; 32], now_ms: u64| {
        let store = stores[stores.len() - 1].clone();
        async move {
            let next: [u8; 32] = rand::random();
            store
                .rotate(RotateRequest {
                    family: &family,
                    presented: &presented,
                    successor: &next,
                    sealed_successor: &rand::random(),
                    now_ms,
                    grace,
                    ttl,
                })
                .await
                .unwrap()
        }
    };
    for (i, &(successor, _)) in candidates.iter().enumerate() {
        let outcome = rotate(successor, at_ms + 20).await;
        if i == winner {
            assert!(matches!(outcome, Rotation::Rotated { .. }), "{outcome:?}");
        } else {
            assert_eq!(outcome, Rotation::Invalid);
        }
    }
    // Unknown tokens are invalid; a retired one after the grace is reuse,
    // which revokes the family for everyone.
    assert_eq!(rotate(rand::random(), at_ms + 30).await, Rotation::Invalid);
    let late = at_ms + grace.as_millis() as u64 + 1;
    assert_eq!(
        rotate(first, late).await,
        Rotation::Reused {
            username: "alice".into()
        }
    );
    assert_eq!(rotate(first, late + 1).await, Rotation::Invalid);
    let families = stores[0].list_user("alice").await.unwrap();
    assert_eq!(families.len(), 1);
    assert!(families[0].revoked);
    // Revoking what is already revoked ends nothing.
    assert!(stores[0].revoke(&family, &first).await.unwrap().is_none());
    assert_eq!(stores[0].revoke_user("alice").await.unwrap(), 0);
}

/// A store of `backend` whose expiries `clock` judges (Redis: under a
/// prefix of its own).
async fn store_on(backend: Backend, test: &str, clock: &Clock) -> Arc<dyn SessionStore> {
    use authgate::sessions::{memory::MemorySessionStore, redis::RedisSessionStore};
    match backend {
        Backend::Memory => Arc::new(MemorySessionStore::new(clock.clone())),
        Backend::Redis => Arc::new(
            RedisSessionStore::new(REDIS_URL, &redis_prefix(test), None, clock.clone())
                .await
                .unwrap(),
        ),
    }
}

/// Families and tokens end when the clock passes their expiry, which each
/// rotation extends for the family and the successor only. Redis's TTLs
/// run on real time and are nowhere near lapsing: the store must judge by
/// the clock itself.
async fn sessions_expire_by_the_clock(backend: Backend) {
    use authgate::sessions::{RotateRequest, Rotation};

    let clock = Clock::manual();
    let store = store_on(backend, "expiry", &clock).await;
    let minutes = |n: u64| Duration::from_secs(60 * n);
    let ttl = minutes(60);
    let family: [u8; 16] = rand::random();
    let tokens: [[u8; 32]; 4] = rand::random();
    let rotate = |presented: usize| {
        let (store, now_ms) = (store.clone(), clock.unix_millis());
        async move {
            store
                .rotate(RotateRequest {
                    family: &family,
                    presented: &tokens[presented],
                    successor: &tokens[presented + 1],
                    sealed_successor: &rand::random(),
                    now_ms,
                    grace: Duration::from_secs(10),
                    ttl,
                })
                .await
                .unwrap()
        }
    };
    store
        .create(&family, "dora", &tokens[0], clock.unix_millis(), ttl)
        .await
        .unwrap();

    clock.advance(minutes(30));
    assert!(matches!(rotate(0).await, Rotation::Rotated { .. }));
    // 75 minutes in: past the login's ttl, within the rotation's.
    clock.advance(minutes(45));
    assert!(store.family_alive(&family).await.unwrap());
    assert_eq!(store.list_user("dora").await.unwrap().len(), 1);
    // The first token expired with the login's ttl: unknown, not a replay.
    assert_eq!(rotate(0).await, Rotation::Invalid);
    assert!(matches!(rotate(1).await, Rotation::Rotated { .. }));

    clock.advance(minutes(61));
    assert!(!store.family_alive(&family).await.unwrap());
    assert!(store.list_user("dora").await.unwrap().is_empty());
    assert_eq!(rotate(2).await, Rotation::Invalid);
    assert!(store.revoke(&family, &tokens[2]).await.unwrap().is_none());
    assert_eq!(store.revoke_user("dora").await.unwrap(), 0);
}

/// A throttle key's window and ban end by the clock, not by Redis's TTLs.
async fn throttle_windows_and_bans_end_by_the_clock(backend: Backend) {
    use authgate::sessions::FailureLimits;

    let clock = Clock::manual();
    let store = store_on(backend, "throttle", &clock).await;
    let limits = FailureLimits {
        window: Duration::from_secs(60),
        limit: 2,
        ban: Duration::from_secs(120),
    };
    let attempt = async || store.count_attempt("user:dora", limits).await.unwrap();
    let ban_left = async || {
        let left = store.ban_remaining("user:dora").await.unwrap();
        left.map(|d| d.as_secs_f64().round() as u64)
    };

    assert_eq!(attempt().await, None);
    clock.advance(Duration::from_secs(61));
    // The window of the first attempt has lapsed: two more fit.
    assert_eq!(attempt().await, None);
    assert_eq!(attempt().await, None);
    assert_eq!(attempt().await, Some(limits.ban));
    assert_eq!(ban_left().await, Some(120));

    clock.advance(Duration::from_secs(60));
    assert_eq!(ban_left().await, Some(60));
    let refused = attempt().await.map(|d| d.as_secs_f64().round() as u64);
    assert_eq!(refused, Some(60));

    clock.advance(Duration::from_secs(61));
    assert_eq!(ban_left().await, None);
    assert_eq!(attempt().await, None);
}

/// The replay record of one-time codes: a step once per key, never an
/// older one after a newer; keys apart; forgotten after its ttl.
async fn one_time_code_steps_are_used_once_per_key(backend: Backend) {
    let clock = Clock::manual();
    let store = store_on(backend, "otp", &clock).await;
    let ttl = Duration::from_millis(300);
    let used = async |key: &str, step: u64| store.use_otp_step(key, step, ttl).await.unwrap();
    assert!(used("otp:dora", 100).await);
    assert!(!used("otp:dora", 100).await);
    assert!(!used("otp:dora", 99).await);
    assert!(used("otp:eve", 100).await);
    assert!(used("otp:dora", 101).await);
    assert!(!used("otp:dora", 100).await);
    // The record is only kept as long as a step can still be presented:
    // memory judges by the gateway's clock, Redis by the key's PX (its own
    // clock, hence the short real wait).
    clock.advance(Duration::from_secs(1));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(used("otp:dora", 101).await);
}

// ------------------------------------------------------------ redis only

/// The user's index (what `sessions list` reads) lives a quarter of the
/// ttl past the family, and a rotation extends it only once that slack is
/// used up: a session kept alive by refreshing stays listed well past its
/// first ttl, and the index key never outlives its families by more.
#[tokio::test]
async fn a_session_kept_alive_by_refreshing_stays_listed() {
    use authgate::sessions::redis::RedisSessionStore;
    use authgate::sessions::{RotateRequest, Rotation};

    let prefix = redis_prefix("index");
    // Real time: what is under test is Redis's own TTL on the index.
    let clock = Clock::system();
    let store = RedisSessionStore::new(REDIS_URL, &prefix, None, clock.clone())
        .await
        .unwrap();
    let ttl = Duration::from_millis(1200);
    let family: [u8; 16] = rand::random();
    let mut token: [u8; 32] = rand::random();
    store
        .create(&family, "carol", &token, clock.unix_millis(), ttl)
        .await
        .unwrap();
    let mut redis = redis_connection(REDIS_URL).await;
    let index_ttl = async |redis: &mut ::redis::aio::MultiplexedConnection| -> i64 {
        ::redis::cmd("PTTL")
            .arg(format!("{prefix}u:carol"))
            .query_async(redis)
            .await
            .unwrap()
    };
    assert!(index_ttl(&mut redis).await > 1200, "slack past the ttl");
    // Refresh every 200 ms for three ttls.
    for _ in 0..18 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let next: [u8; 32] = rand::random();
        let outcome = store
            .rotate(RotateRequest {
                family: &family,
                presented: &token,
                successor: &next,
                sealed_successor: &rand::random(),
                now_ms: clock.unix_millis(),
                grace: Duration::from_millis(100),
                ttl,
            })
            .await
            .unwrap();
        assert!(matches!(outcome, Rotation::Rotated { .. }), "{outcome:?}");
        token = next;
        let left = index_ttl(&mut redis).await;
        assert!(left > 1200 - 200 && left <= 1500, "index ttl {left} ms");
    }
    assert_eq!(store.list_user("carol").await.unwrap().len(), 1);
}

/// No raw refresh token, nor its secret in any encoding, is ever written to
/// Redis: every key and value under the prefix is scanned.
#[tokio::test]
async fn no_raw_refresh_token_is_stored_in_redis() {
    let s = Setup::start(Backend::Redis, "raw", Options::default()).await;
    let mut tokens = Vec::new();
    let a = s.login("alice").await;
    tokens.push(a.refresh.clone());
    let a1 = s.refreshed(&a.refresh).await;
    tokens.push(a1.refresh.clone());
    s.expire(&a1.access);
    let response = s.get("/x", &a1.cookies()).await;
    assert_eq!(response.status(), 200);
    let a2 = Session::from_set_cookies(&set_cookies(response.headers()));
    tokens.push(a2.refresh.clone());
    let b = s.login("bob").await;
    tokens.push(b.refresh.clone());
    let response = client()
        .post(s.gw.url("/logout"))
        .header(COOKIE, b.cookies())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);

    // Everything under the prefix, keys and values, as bytes.
    let mut conn = redis_connection(REDIS_URL).await;
    let keys = redis_keys(REDIS_URL, &s.prefix).await;
    assert!(keys.len() >= 6, "{keys:?}");
    let mut stored: Vec<Vec<u8>> = Vec::new();
    for key in &keys {
        stored.push(key.as_bytes().to_vec());
        let kind: String = ::redis::cmd("TYPE")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let values: Vec<Vec<u8>> = match kind.as_str() {
            "hash" => ::redis::cmd("HGETALL")
                .arg(key)
                .query_async(&mut conn)
                .await
                .unwrap(),
            "set" => ::redis::cmd("SMEMBERS")
                .arg(key)
                .query_async(&mut conn)
                .await
                .unwrap(),
            "string" => vec![::redis::cmd("GET")
                .arg(key)
                .query_async(&mut conn)
                .await
                .unwrap()],
            other => panic!("unexpected {other} at {key}"),
        };
        stored.extend(values);
    }
    let contains = |needle: &[u8]| {
        stored
            .iter()
            .any(|hay| hay.windows(needle.len()).any(|w| w == needle))
    };
    for token in &tokens {
        let raw = URL_SAFE_NO_PAD.decode(token).unwrap();
        let secret = &raw[16..];
        let hex = |b: &[u8]| authgate::sessions::hex(b);
        let needles: Vec<Vec<u8>> = vec![
            token.as_bytes().to_vec(),
            raw.clone(),
            STANDARD.encode(&raw).into_bytes(),
            hex(&raw).into_bytes(),
            secret.to_vec(),
            URL_SAFE_NO_PAD.encode(secret).into_bytes(),
            STANDARD.encode(secret).into_bytes(),
            hex(secret).into_bytes(),
            hex(secret).to_uppercase().into_bytes(),
        ];
        for needle in needles {
            assert!(
                !contains(&needle),
                "a form of a refresh token is stored in Redis"
            );
        }
    }
    // The check can fail: the family id (not secret) is in the keys.
    assert!(contains(
        authgate::sessions::hex(&URL_SAFE_NO_PAD.decode(&a.refresh).unwrap()[..16]).as_bytes()
    ));
}

// ------------------------------------------------ two processes, one Redis

/// An `authgate serve` process on its own port, signing in as the suite does.
struct Process(AuthgateProcess);

impl Process {
    async fn start(
        dir: &Path,
        name: &str,
        up: &Upstream,
        prefix: &str,
        url: &str,
        options: &Options,
    ) -> Process {
        let port = closed_port();
        let sessions = sessions_toml(Backend::Redis, prefix, url, options.reuse_grace);
        let toml = format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n{}\n[users]\npath = \"users.toml\"\nbcrypt_cost = 4\n\n[cookies]\nsecure = false\n",
            gateway_toml(up, options, &sessions)
        );
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, toml).unwrap();
        Process(AuthgateProcess::start(&config, port).await)
    }

    fn url(&self, path: &str) -> String {
        self.0.url(path)
    }

    async fn login(&self, username: &str) -> Session {
        let response = password_grant(self.url("/token"), username, &password(username)).await;
        assert_eq!(response.status(), 200);
        Session::from_set_cookies(&set_cookies(response.headers()))
    }

    async fn refresh_grant(&self, refresh_token: &str) -> reqwest::Response {
        refresh_grant(self.url("/token"), refresh_token).await
    }
}

struct TwoProcesses {
    _dir: tempfile::TempDir,
    up: Upstream,
    prefix: String,
    a: Process,
    b: Process,
}

async fn two_processes(test: &str, options: &Options) -> TwoProcesses {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("users.toml"), users_toml(&people())).unwrap();
    let up = Upstream::start("app").await;
    let prefix = redis_prefix(test);
    let a = Process::start(dir.path(), "a", &up, &prefix, REDIS_URL, options).await;
    let b = Process::start(dir.path(), "b", &up, &prefix, REDIS_URL, options).await;
    TwoProcesses {
        _dir: dir,
        up,
        prefix,
        a,
        b,
    }
}

/// Refresh at one process, replay at the other after the grace: caught.
/// Logout at one holds at the other.
#[tokio::test]
async fn two_processes_catch_replay_and_share_logout() {
    let options = Options {
        reuse_grace: "1s",
        ..Options::default()
    };
    let TwoProcesses { a, b, prefix, .. } = two_processes("two-replay", &options).await;
    let stolen = a.login("alice").await;
    let response = a.refresh_grant(&stolen.refresh).await;
    assert_eq!(response.status(), 200);
    let current = Session::from_set_cookies(&set_cookies(response.headers()));
    // Within the grace, the other process maps it to the same successor.
    let response = b.refresh_grant(&stolen.refresh).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        Session::from_set_cookies(&set_cookies(response.headers())).refresh,
        current.refresh
    );
    backdate_retirements(REDIS_URL, &prefix, Duration::from_secs(2)).await;
    let response = b.refresh_grant(&stolen.refresh).await;
    assert_eq!(response.status(), 400);
    let response = a.refresh_grant(&current.refresh).await;
    assert_eq!(response.status(), 400);
    assert_eq!(error_code(response).await, "invalid_grant");

    let session = b.login("bob").await;
    let response = client()
        .post(a.url("/logout"))
        .header(COOKIE, session.cookies())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let response = client()
        .get(b.url("/x"))
        .header(COOKIE, format!("refresh_token={}", session.refresh))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(b.refresh_grant(&session.refresh).await.status(), 400);
}

/// 20 parallel silent refreshes spread over two processes: one successor.
#[tokio::test]
async fn two_processes_parallel_refresh_does_not_fork() {
    let TwoProcesses {
        up, prefix, a, b, ..
    } = two_processes("two-parallel", &Options::default()).await;
    let mut old = a.login("alice").await;
    old.access = expired_copy(&old.access);
    let urls = (0..20)
        .map(|i| if i % 2 == 0 { a.url("/p") } else { b.url("/p") })
        .collect();
    let new = parallel_silent_refreshes(urls, &old.cookies()).await;
    assert_ne!(new.refresh, old.refresh);
    assert_eq!(up.count(), 20);
    assert_eq!(token_states(REDIS_URL, &prefix).await, ["live", "used"]);
    let response = b.refresh_grant(&new.refresh).await;
    assert_eq!(response.status(), 200);
}

// ------------------------------------------------------------ Redis outage

/// A redis-server owned by this test, on its own port, without persistence.
struct RedisServer {
    port: u16,
    child: Option<tokio::process::Child>,
}

impl RedisServer {
    async fn start(port: u16) -> RedisServer {
        let child = tokio::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server is installed");
        let url = format!("redis://127.0.0.1:{port}/0");
        for _ in 0..100 {
            if let Ok(client) = ::redis::Client::open(url.as_str()) {
                if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                    let pong: ::redis::RedisResult<String> =
                        ::redis::cmd("PING").query_async(&mut conn).await;
                    if pong.is_ok() {
                        return RedisServer {
                            port,
                            child: Some(child),
                        };
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("redis-server did not start on {port}");
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    async fn kill(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().await.unwrap();
    }
}

/// Redis stopped mid-test: valid access tokens still pass, refresh and
/// login get 503, readiness goes 503, nothing is forwarded without an
/// identity; restarted, everything recovers by itself.
#[tokio::test]
async fn redis_outage_fails_closed_and_recovers() {
    let port = closed_port();
    let mut server = RedisServer::start(port).await;
    let options = Options {
        access_ttl: "60s",
        ..Options::default()
    };
    let s = Setup::start_with_url(Backend::Redis, "outage", options, &server.url()).await;
    let readyz = || async { s.gw.get("/readyz").await };
    assert_eq!(readyz().await.status(), 200);
    let a = s.login("alice").await;

    server.kill().await;
    // Access tokens are verified without Redis.
    let response = client()
        .get(s.gw.url("/x"))
        .bearer_auth(&a.access)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(s.get("/y", &a.cookies()).await.status(), 200);
    assert_eq!(s.up.count(), 2);

    let response = s.refresh_grant(&a.refresh).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_code(response).await, "temporarily_unavailable");
    let response = s.gw.password_grant("alice", "alice-pw").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_code(response).await, "temporarily_unavailable");
    // A silent refresh cannot happen: 503, never forwarded anonymously.
    for path in ["/z", "/maybe/z"] {
        let response = s.get(path, &format!("refresh_token={}", a.refresh)).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(set_cookies(response.headers()).is_empty());
    }
    assert_eq!(s.up.count(), 2);
    let response = readyz().await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["checks"]["sessions"], "unavailable");

    // Back (empty: it kept nothing), and authgate reconnects by itself.
    let _server = RedisServer::start(port).await;
    let mut ready = false;
    for _ in 0..100 {
        if readyz().await.status() == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "readiness did not recover");
    let b = s.login("alice").await;
    let b1 = s.refreshed(&b.refresh).await;
    let response = s.get("/w", &format!("refresh_token={}", b1.refresh)).await;
    assert_eq!(response.status(), 200);
    // The old session lived only in the lost data.
    s.assert_refresh_refused(&a.refresh).await;
}
