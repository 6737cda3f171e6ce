//! The signed identity assertion through a real gateway and upstream: what
//! the upstream receives verifies against the gateway's JWKS alone, with
//! `iss`, `aud` and `exp` checked; a client's own copy never gets through;
//! `check-config` refuses the setting without a usable key.

mod support;

use std::path::Path;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use support::process::run_authgate;
use support::{client, user, TestGateway, TestUser, Upstream};

fn fixtures() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"))
}

fn people() -> Vec<TestUser> {
    vec![
        user("alice", "alice-pw", &["admin", "dev"]),
        user("zoë", "zoe-pw", &["dev"]),
    ]
}

/// A gateway signing assertions with `key` (a fixture), HS256 access
/// tokens unless `jwt` says otherwise; `/api` required, `/pub` public,
/// `/other` required with its own audience.
async fn gateway(up: &Upstream, key: &str, jwt: &str) -> TestGateway {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixtures().join(key), dir.path().join("assertion.pem")).unwrap();
    std::fs::copy(fixtures().join("rsa.pem"), dir.path().join("rsa.pem")).unwrap();
    let toml = format!(
        "[identity]\nassertion = true\nassertion_key = \"assertion.pem\"\n\
         [[routes]]\nprefix = \"/api\"\nupstream = \"{u}\"\n\
         [[routes]]\nprefix = \"/pub\"\nupstream = \"{u}\"\nauth = \"public\"\n\
         [[routes]]\nprefix = \"/other\"\nupstream = \"{u}\"\naudience = \"api://other\"\n\
         {jwt}",
        u = up.url()
    );
    TestGateway::start_in(dir, &toml, &people()).await
}

/// The upstream's origin: the default audience.
fn origin(up: &Upstream) -> String {
    format!("http://{}", up.addr)
}

async fn get(gw: &TestGateway, path: &str, token: &str, extra: &[(&str, &str)]) -> u16 {
    let mut request = client().get(gw.url(path)).bearer_auth(token);
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap().status().as_u16()
}

/// The assertions the upstream received on its last request.
fn received(up: &Upstream) -> Vec<String> {
    up.last()
        .headers
        .get_all("x-auth-assertion")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

/// Verifies `assertion` as an upstream would: the key picked from the
/// gateway's JWKS by `kid`, then signature, `iss`, `aud` and `exp`.
async fn verify(
    gw: &TestGateway,
    assertion: &str,
    audience: &str,
) -> Result<Value, jsonwebtoken::errors::Error> {
    let jwks = gw.jwks().await;
    let header = jsonwebtoken::decode_header(assertion)?;
    let kid = header.kid.expect("the assertion names its key");
    let jwk = jwks.find(&kid).expect("the kid is in the JWKS");
    let key = DecodingKey::from_jwk(jwk)?;
    let mut validation = Validation::new(header.alg);
    validation.set_issuer(&["authgate"]);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    validation.leeway = 0;
    jsonwebtoken::decode::<Value>(assertion, &key, &validation).map(|data| data.claims)
}

#[tokio::test]
async fn the_upstream_receives_an_assertion_that_verifies_against_the_jwks() {
    for (key, alg) in [
        ("ec.pem", Algorithm::ES256),
        ("ed25519.pem", Algorithm::EdDSA),
    ] {
        let up = Upstream::start("api").await;
        let gw = gateway(&up, key, "").await;
        let token = gw.access_token("alice", "alice-pw").await;
        assert_eq!(get(&gw, "/api/x", &token, &[]).await, 200);
        let assertions = received(&up);
        assert_eq!(assertions.len(), 1, "{key}");
        let assertion = &assertions[0];
        assert_eq!(jsonwebtoken::decode_header(assertion).unwrap().alg, alg);
        let claims = verify(&gw, assertion, &origin(&up)).await.unwrap();
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["email"], "alice@example.com");
        assert_eq!(claims["roles"], serde_json::json!(["admin", "dev"]));
        let iat = claims["iat"].as_u64().unwrap();
        assert_eq!(claims["exp"].as_u64().unwrap(), iat + 60);
        assert!(iat.abs_diff(gw.clock.unix_secs()) <= 1, "iat is now");
        // Made for this upstream: refused for any other audience.
        let error = verify(&gw, assertion, "api://other").await.unwrap_err();
        assert_eq!(
            *error.kind(),
            jsonwebtoken::errors::ErrorKind::InvalidAudience
        );
        // A route with its own audience gets its own assertion.
        assert_eq!(get(&gw, "/other/x", &token, &[]).await, 200);
        let other = received(&up).pop().unwrap();
        assert_ne!(&other, assertion);
        assert_eq!(
            verify(&gw, &other, "api://other").await.unwrap()["sub"],
            "alice"
        );
        // HS256 access tokens: the JWKS holds just the assertion key.
        let jwks: Value = gw.get("/.well-known/jwks.json").await.json().await.unwrap();
        assert_eq!(jwks["keys"].as_array().unwrap().len(), 1, "{jwks}");
        assert!(!jwks.to_string().contains("\"d\""), "private key published");
    }
}

#[tokio::test]
async fn a_non_ascii_name_travels_exactly_in_the_assertion() {
    let up = Upstream::start("api").await;
    let gw = gateway(&up, "ec.pem", "").await;
    let token = gw.access_token("zoë", "zoe-pw").await;
    assert_eq!(get(&gw, "/api/x", &token, &[]).await, 200);
    let seen = up.last();
    // The plain header carries the raw UTF-8 bytes, which a Latin-1
    // decoder turns into "zoÃ«"; the assertion's JSON says "zoë".
    assert_eq!(seen.headers["x-auth-user"].as_bytes(), "zoë".as_bytes());
    let claims = verify(&gw, &received(&up)[0], &origin(&up)).await.unwrap();
    assert_eq!(claims["sub"], "zoë");
}

#[tokio::test]
async fn asymmetric_access_tokens_and_the_assertion_share_the_jwks() {
    let up = Upstream::start("api").await;
    let gw = gateway(
        &up,
        "ed25519.pem",
        "[jwt]\nalgorithm = \"RS256\"\nprivate_key = \"rsa.pem\"\nkey_id = \"k1\"\n",
    )
    .await;
    let kids: Vec<String> = gw
        .jwks()
        .await
        .keys
        .into_iter()
        .filter_map(|k| k.common.key_id)
        .collect();
    assert_eq!(kids.len(), 2, "{kids:?}");
    assert_eq!(kids[0], "k1");
    let token = gw.access_token("alice", "alice-pw").await;
    assert_eq!(get(&gw, "/api/x", &token, &[]).await, 200);
    let assertion = &received(&up)[0];
    let kid = jsonwebtoken::decode_header(assertion).unwrap().kid.unwrap();
    assert_eq!(kid, kids[1]);
    verify(&gw, assertion, &origin(&up)).await.unwrap();
}

#[tokio::test]
async fn the_signed_assertion_is_reused_until_late_in_its_life() {
    let up = Upstream::start("api").await;
    let gw = gateway(&up, "ec.pem", "").await;
    let token = gw.access_token("alice", "alice-pw").await;
    assert_eq!(get(&gw, "/api/x", &token, &[]).await, 200);
    let first = received(&up).pop().unwrap();
    assert_eq!(get(&gw, "/api/y", &token, &[]).await, 200);
    // ES256 signatures are randomized: the same value is the cache's.
    assert_eq!(received(&up).pop().unwrap(), first);
    // Past three quarters of the 60 s, a new one with a later exp.
    gw.clock.advance(Duration::from_secs(47));
    assert_eq!(get(&gw, "/api/z", &token, &[]).await, 200);
    let renewed = received(&up).pop().unwrap();
    assert_ne!(renewed, first);
    let exp = |claims: Value| claims["exp"].as_u64().unwrap();
    let first_exp = exp(verify(&gw, &first, &origin(&up)).await.unwrap());
    assert!(exp(verify(&gw, &renewed, &origin(&up)).await.unwrap()) >= first_exp + 47);
}

#[tokio::test]
async fn a_clients_own_assertion_never_reaches_the_upstream() {
    let up = Upstream::start("api").await;
    let gw = gateway(&up, "ec.pem", "").await;
    let forged = [
        ("X-Auth-Assertion", "forged-1"),
        ("x_auth_assertion", "forged-2"),
        ("X_AUTH-Assertion", "forged-3"),
    ];
    // Public route, anonymous: no assertion at all.
    let mut request = client().get(gw.url("/pub/x"));
    for (name, value) in forged {
        request = request.header(name, value);
    }
    assert_eq!(request.send().await.unwrap().status(), 200);
    let seen = up.last();
    assert!(
        !seen
            .headers
            .keys()
            .any(|name| name.as_str().replace('_', "-") == "x-auth-assertion"),
        "{:?}",
        seen.headers
    );
    // Authenticated: exactly one, the gateway's.
    let token = gw.access_token("alice", "alice-pw").await;
    assert_eq!(get(&gw, "/api/x", &token, &forged).await, 200);
    let seen = up.last();
    let names: Vec<_> = seen
        .headers
        .keys()
        .filter(|name| name.as_str().replace('_', "-") == "x-auth-assertion")
        .collect();
    assert_eq!(names, ["x-auth-assertion"], "{:?}", seen.headers);
    let assertions = received(&up);
    assert_eq!(assertions.len(), 1);
    verify(&gw, &assertions[0], &origin(&up)).await.unwrap();
}

#[test]
fn check_config_refuses_the_assertion_without_a_usable_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixtures().join("rsa.pem"), dir.path().join("rsa.pem")).unwrap();
    std::fs::copy(fixtures().join("ec.pem"), dir.path().join("ec.pem")).unwrap();
    let path = dir.path().join("gateway.toml");
    let check = |identity: &str| {
        std::fs::write(
            &path,
            format!(
                "[jwt]\nsecret_env = \"{}\"\n[identity]\n{identity}",
                support::SECRET_ENV
            ),
        )
        .unwrap();
        let out = run_authgate(&path, &["check-config"]);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, stderr) = check("assertion = true\n");
    assert!(!ok);
    assert!(
        stderr.contains("line 4: identity.assertion_key: is required"),
        "{stderr}"
    );
    let (ok, stderr) = check("assertion = true\nassertion_key = \"rsa.pem\"\n");
    assert!(!ok);
    assert!(
        stderr.contains("line 5: identity.assertion_key"),
        "{stderr}"
    );
    let (ok, stderr) = check("assertion = true\nassertion_key = \"missing.pem\"\n");
    assert!(!ok);
    assert!(stderr.contains("identity.assertion_key"), "{stderr}");
    let (ok, stderr) = check("assertion = true\nassertion_key = \"ec.pem\"\n");
    assert!(ok, "{stderr}");
    let stdout = run_authgate(&path, &["check-config"]).stdout;
    let stdout = String::from_utf8_lossy(&stdout);
    assert!(
        stdout.contains("identity assertion: x-auth-assertion signed with"),
        "{stdout}"
    );
}

/// A forward-auth answer carries the assertion too, for the front proxy to
/// copy: made for the route's audience, or, on a route with no upstream of
/// authgate's, for the origin the original request went to.
#[tokio::test]
async fn a_forward_auth_answer_carries_an_assertion_for_its_audience() {
    let up = Upstream::start("api").await;
    let gw = gateway(
        &up,
        "ec.pem",
        "[forward_auth]\nenabled = true\n[[routes]]\nprefix = \"/fa\"\n",
    )
    .await;
    let token = gw.access_token("alice", "alice-pw").await;
    let ask = |original: &'static str| {
        client()
            .get(gw.url("/verify"))
            .header("X-Original-URL", original)
            .bearer_auth(&token)
            .send()
    };
    for (original, audience) in [
        (
            "https://app.example.com/fa/x",
            "https://app.example.com".to_string(),
        ),
        ("https://app.example.com/api/x", origin(&up)),
        ("https://app.example.com/other/x", "api://other".to_string()),
    ] {
        let answer = ask(original).await.unwrap();
        assert_eq!(answer.status(), 200, "{original}");
        let assertion = answer.headers()["x-auth-assertion"]
            .to_str()
            .unwrap()
            .to_string();
        let claims = verify(&gw, &assertion, &audience).await.unwrap();
        assert_eq!(claims["sub"], "alice", "{original}");
        assert_eq!(claims["aud"], audience.as_str(), "{original}");
    }
    // Anonymous on a public route: no identity, so no assertion.
    let answer = client()
        .get(gw.url("/verify"))
        .header("X-Original-URL", "https://app.example.com/pub/x")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert!(answer.headers().get("x-auth-assertion").is_none());
    assert_eq!(up.count(), 0, "forward-auth forwards nothing");
}
