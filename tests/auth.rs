//! Issue 3: login, JWT validation, route policy, identity headers — end to
//! end through the real listener with a real upstream.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;
use support::process::run_authgate;
use support::{
    binary, client, cookie_value, now, set_cookies, sign_hs256, tokens, user, TestGateway,
    TestUser, Upstream, SECRET,
};

fn routes(up: &Upstream) -> String {
    format!(
        r#"
[[routes]]
prefix = "/api"
upstream = "{u}"
auth = "required"
[[routes]]
prefix = "/admin"
upstream = "{u}"
auth = "required"
roles = ["admin"]
[[routes]]
prefix = "/maybe"
upstream = "{u}"
auth = "optional"
[[routes]]
prefix = "/open"
upstream = "{u}"
auth = "public"
"#,
        u = up.url()
    )
}

fn people() -> Vec<TestUser> {
    let mut carol = user("carol", "carol-pw", &["dev"]);
    carol.disabled = true;
    vec![
        user("alice", "alice-pw", &["admin", "dev"]),
        user("bob", "bob-pw", &["dev"]),
        carol,
    ]
}

async fn setup() -> (Upstream, TestGateway) {
    let up = Upstream::start("api").await;
    let gw = TestGateway::start(&routes(&up), &people()).await;
    (up, gw)
}

/// For tests that poll a login until a users-file edit shows: every failed
/// poll would count against the login throttle.
async fn setup_unthrottled() -> (Upstream, TestGateway) {
    let up = Upstream::start("api").await;
    let toml = format!(
        "{}\n[auth.throttle]\nmax_failures = 0\nip_max_failures = 0\n",
        routes(&up)
    );
    let gw = TestGateway::start(&toml, &people()).await;
    (up, gw)
}

fn claims(sub: &str, exp_offset: i64) -> serde_json::Value {
    let now = now() as i64;
    json!({"sub": sub, "iat": now, "nbf": now - 1, "exp": now + exp_offset, "iss": "authgate",
           "jti": "x", "roles": ["admin"], "email": "x@example.com"})
}

async fn get_with_bearer(gw: &TestGateway, path: &str, token: &str) -> reqwest::Response {
    client()
        .get(gw.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn login_with_form_answers_tokens_and_cookies() {
    let (_, gw) = setup().await;
    let response = client()
        .post(gw.url("/token"))
        .form(&[
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", "alice-pw"),
            ("scope", ""),
            ("client_id", "swagger"),
            ("client_secret", ""),
        ])
        .basic_auth("", Some(""))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let cookies = set_cookies(response.headers());
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["expires_in"], 900);
    let access = body["access_token"].as_str().unwrap();
    let refresh = body["refresh_token"].as_str().unwrap();
    assert_eq!(
        cookie_value(&cookies, "access_token").as_deref(),
        Some(access)
    );
    assert_eq!(
        cookie_value(&cookies, "refresh_token").as_deref(),
        Some(refresh)
    );
    let access_cookie = cookies
        .iter()
        .find(|c| c.starts_with("access_token="))
        .unwrap();
    assert!(access_cookie.contains("; Max-Age=900"), "{access_cookie}");
    assert!(access_cookie.contains("; HttpOnly"), "{access_cookie}");
    assert!(access_cookie.contains("; SameSite=Lax"), "{access_cookie}");
    assert!(access_cookie.contains("; Path=/"), "{access_cookie}");
    let refresh_cookie = cookies
        .iter()
        .find(|c| c.starts_with("refresh_token="))
        .unwrap();
    assert!(
        refresh_cookie.contains("; Max-Age=604800"),
        "{refresh_cookie}"
    );
    assert!(refresh_cookie.contains("; HttpOnly"), "{refresh_cookie}");

    // The claims, as /userinfo shows them.
    let info: serde_json::Value = get_with_bearer(&gw, "/userinfo", access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(info["sub"], "alice");
    assert_eq!(info["email"], "alice@example.com");
    assert_eq!(info["roles"], json!(["admin", "dev"]));
}

#[tokio::test]
async fn login_with_json_body() {
    let (_, gw) = setup().await;
    let response = client()
        .post(gw.url("/token"))
        .json(&json!({"username": "bob", "password": "bob-pw"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(body["access_token"].is_string());
}

#[tokio::test]
async fn secure_cookie_attributes_follow_config() {
    let up = Upstream::start("api").await;
    let toml = format!(
        "{}\n[cookies]\nsecure = true\nsame_site = \"strict\"\ndomain = \"example.com\"\n",
        routes(&up)
    );
    let gw = TestGateway::start(&toml, &people()).await;
    let (_, cookies) = gw.login("alice", "alice-pw").await;
    for cookie in cookies {
        assert!(cookie.contains("; Secure"), "{cookie}");
        assert!(cookie.contains("; SameSite=Strict"), "{cookie}");
        assert!(cookie.contains("; Domain=example.com"), "{cookie}");
        assert!(cookie.contains("; HttpOnly"), "{cookie}");
    }
}

#[tokio::test]
async fn bad_credentials_are_indistinguishable_401s() {
    let (_, gw) = setup().await;
    for (username, password) in [
        ("alice", "wrong"),
        ("nobody", "alice-pw"),
        ("carol", "carol-pw"),
    ] {
        let response = gw.password_grant(username, password).await;
        assert_eq!(response.status(), 401, "{username}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        assert!(response.headers().get("set-cookie").is_none());
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(
            body,
            json!({"error": "invalid_grant", "detail": "Incorrect username or password"}),
            "{username}"
        );
    }
}

#[tokio::test]
async fn basic_header_is_never_the_users_credentials() {
    let (_, gw) = setup().await;
    let response = client()
        .post(gw.url("/token"))
        .basic_auth("alice", Some("alice-pw"))
        .form(&[("grant_type", "password")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap()["error"],
        "invalid_request"
    );
}

#[tokio::test]
async fn malformed_token_requests_are_400() {
    let (_, gw) = setup().await;
    let post = |body: &'static str, content_type: &'static str| {
        let url = gw.url("/token");
        async move {
            let r = client()
                .post(url)
                .header("content-type", content_type)
                .body(body)
                .send()
                .await
                .unwrap();
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap()["error"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        }
    };
    assert_eq!(
        post("username=alice", "application/x-www-form-urlencoded").await,
        (400, "invalid_request".into())
    );
    assert_eq!(
        post("{\"username\": ", "application/json").await,
        (400, "invalid_request".into())
    );
    assert_eq!(
        post("[1,2]", "application/json").await,
        (400, "invalid_request".into())
    );
    assert_eq!(
        post("username=a&password=b", "text/plain").await,
        (400, "invalid_request".into())
    );
    assert_eq!(
        post("", "application/x-www-form-urlencoded").await,
        (400, "invalid_request".into())
    );
    assert_eq!(
        post(
            "grant_type=client_credentials&username=a&password=b",
            "application/x-www-form-urlencoded"
        )
        .await,
        (400, "unsupported_grant_type".into())
    );
    let r = gw.get("/token").await;
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "POST");
}

#[tokio::test]
async fn bearer_and_cookie_tokens_reach_the_upstream_as_identity() {
    let (up, gw) = setup().await;
    let (body, cookies) = gw.login("alice", "alice-pw").await;
    let access = body["access_token"].as_str().unwrap();

    let response = get_with_bearer(&gw, "/api/items", access).await;
    assert_eq!(response.status(), 200);
    let seen = up.last();
    assert_eq!(seen.headers["x-auth-user"], "alice");
    assert_eq!(seen.headers["x-auth-email"], "alice@example.com");
    assert_eq!(seen.headers["x-auth-roles"], "admin,dev");
    assert!(
        seen.headers.get("authorization").is_none(),
        "the token reached the upstream"
    );

    // Lower-case scheme works too.
    let response = client()
        .get(gw.url("/api/x"))
        .header("authorization", format!("bearer {access}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // The cookie alone authenticates; our cookies never reach the upstream,
    // the application's own cookies do.
    let cookie_header = format!(
        "theme=dark; access_token={}; refresh_token={}",
        cookie_value(&cookies, "access_token").unwrap(),
        cookie_value(&cookies, "refresh_token").unwrap()
    );
    let response = client()
        .get(gw.url("/api/c"))
        .header("cookie", cookie_header)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = up.last();
    assert_eq!(seen.headers["x-auth-user"], "alice");
    assert_eq!(seen.headers["cookie"], "theme=dark");
}

/// The plain listener also speaks HTTP/2 by prior knowledge (h2c), as a
/// load balancer talking h2c to its backends does: the same pipeline, the
/// same identity, the same refusals.
#[tokio::test]
async fn h2c_clients_on_the_plain_listener_are_authenticated_and_proxied() {
    let (up, gw) = setup().await;
    let access = gw.access_token("alice", "alice-pw").await;
    let h2c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = h2c
        .get(gw.url("/api/h2c"))
        .bearer_auth(&access)
        .header("x-auth-user", "mallory")
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-request-id"));
    let seen = up.last();
    assert_eq!(seen.uri, "/api/h2c");
    assert_eq!(seen.headers["x-auth-user"], "alice");
    assert_eq!(seen.headers.get_all("x-auth-user").iter().count(), 1);
    // The client's :authority reaches the HTTP/1.1 upstream as Host.
    assert_eq!(
        seen.headers["host"],
        gw.url("")
            .trim_start_matches("http://")
            .trim_end_matches('/')
    );
    assert!(seen.headers.get("authorization").is_none());

    let response = h2c.get(gw.url("/api/h2c")).send().await.unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
}

#[tokio::test]
async fn bearer_header_alone_decides() {
    let (_, gw) = setup().await;
    let (body, _) = gw.login("alice", "alice-pw").await;
    let access = body["access_token"].as_str().unwrap();
    // A bad Bearer token is not rescued by a good cookie.
    let response = client()
        .get(gw.url("/api/x"))
        .bearer_auth("garbage")
        .header("cookie", format!("access_token={access}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn invalid_tokens_are_refused() {
    let (up, gw) = setup().await;
    let now = now() as i64;
    let mut cases: Vec<(&str, String)> = vec![
        ("expired", sign_hs256(&claims("alice", -60), SECRET)),
        (
            "not yet valid",
            sign_hs256(
                &json!({"sub": "alice", "iat": now, "nbf": now + 600, "exp": now + 900, "iss": "authgate", "jti": "x"}),
                SECRET,
            ),
        ),
        (
            "wrong issuer",
            sign_hs256(
                &json!({"sub": "alice", "iat": now, "nbf": now, "exp": now + 900, "iss": "someone-else", "jti": "x"}),
                SECRET,
            ),
        ),
        (
            "wrong secret",
            sign_hs256(
                &claims("alice", 600),
                "another-secret-that-is-also-32-bytes-long",
            ),
        ),
        ("garbage", "not.a.token".into()),
        (
            "oversized",
            sign_hs256(
                &json!({"sub": "alice", "iat": now, "nbf": now, "exp": now + 900, "iss": "authgate", "pad": "p".repeat(9000)}),
                SECRET,
            ),
        ),
    ];
    // Tampered: valid signature of other claims.
    let good = sign_hs256(&claims("bob", 600), SECRET);
    let parts: Vec<&str> = good.split('.').collect();
    let forged_payload = base64_url(&claims("alice", 600).to_string());
    cases.push((
        "tampered",
        format!("{}.{}.{}", parts[0], forged_payload, parts[2]),
    ));
    // alg: none.
    let none_header = base64_url(r#"{"alg":"none","typ":"JWT"}"#);
    cases.push((
        "alg none",
        format!(
            "{none_header}.{}.",
            base64_url(&claims("alice", 600).to_string())
        ),
    ));
    // Signature stripped.
    cases.push(("no signature", format!("{}.{}.", parts[0], parts[1])));

    for (name, token) in &cases {
        let response = get_with_bearer(&gw, "/api/x", token).await;
        assert_eq!(response.status(), 401, "{name}");
        let challenge = response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            challenge.starts_with("Bearer error=\"invalid_token\""),
            "{name}: {challenge}"
        );
        assert_eq!(
            response.json::<serde_json::Value>().await.unwrap()["error"],
            "invalid_token"
        );
    }
    assert_eq!(up.count(), 0);
    // Expired says so.
    let response = get_with_bearer(&gw, "/api/x", &cases[0].1).await;
    assert!(response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("token expired"));
}

fn base64_url(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

#[tokio::test]
async fn audience_is_checked_when_configured() {
    let up = Upstream::start("api").await;
    let toml = format!(
        "{}\n[jwt]\nsecret_env = \"{}\"\naudience = \"my-api\"\n",
        routes(&up),
        support::SECRET_ENV
    );
    let gw = TestGateway::start(&toml, &people()).await;
    let token = gw.access_token("alice", "alice-pw").await;
    assert_eq!(get_with_bearer(&gw, "/api/x", &token).await.status(), 200);
    let mut other = claims("alice", 600);
    other["aud"] = json!("other-api");
    assert_eq!(
        get_with_bearer(&gw, "/api/x", &sign_hs256(&other, SECRET))
            .await
            .status(),
        401
    );
    let missing = claims("alice", 600);
    assert_eq!(
        get_with_bearer(&gw, "/api/x", &sign_hs256(&missing, SECRET))
            .await
            .status(),
        401
    );
}

#[tokio::test]
async fn route_policies() {
    let (up, gw) = setup().await;
    let alice = gw.access_token("alice", "alice-pw").await;
    let bob = gw.access_token("bob", "bob-pw").await;

    // required, no token: a plain challenge.
    let response = gw.get("/api/x").await;
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap(),
        json!({"error": "invalid_token", "detail": "Not authenticated"})
    );

    // roles.
    assert_eq!(get_with_bearer(&gw, "/admin/x", &alice).await.status(), 200);
    let response = get_with_bearer(&gw, "/admin/x", &bob).await;
    assert_eq!(response.status(), 403);
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap()["error"],
        "forbidden"
    );

    // optional: forwarded either way, identity only when valid.
    let before = up.count();
    assert_eq!(gw.get("/maybe/x").await.status(), 200);
    assert!(up.last().headers.get("x-auth-user").is_none());
    assert_eq!(
        get_with_bearer(&gw, "/maybe/x", "garbage").await.status(),
        200
    );
    assert!(up.last().headers.get("x-auth-user").is_none());
    assert_eq!(get_with_bearer(&gw, "/maybe/x", &bob).await.status(), 200);
    assert_eq!(up.last().headers["x-auth-user"], "bob");
    assert_eq!(up.count(), before + 3);

    // public: no check, no identity even with a valid token.
    assert_eq!(get_with_bearer(&gw, "/open/x", &alice).await.status(), 200);
    assert!(up.last().headers.get("x-auth-user").is_none());
}

#[tokio::test]
async fn spoofed_identity_headers_never_reach_the_upstream() {
    let (up, gw) = setup().await;
    let bob = gw.access_token("bob", "bob-pw").await;
    let spoofs = [
        "X-Auth-User: root\r\n",
        "x-auth-user: root\r\n",
        "X-AUTH-USER: root\r\n",
        "X_Auth_User: root\r\n",
        "x_auth-user: root\r\n",
        "X-Auth-Roles: admin\r\nX-Auth-Roles: superuser\r\n",
        "X_AUTH_ROLES: admin\r\n",
        "X-Auth-Email: root@example.com\r\n",
        "x-auth_email: root@example.com\r\n",
    ]
    .concat();
    for (path, auth) in [
        ("/api/s", Some(&bob)),
        ("/maybe/s", None),
        ("/open/s", Some(&bob)),
    ] {
        let auth_header = auth
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let response = support::raw_get(gw.addr, path, &format!("{auth_header}{spoofs}")).await;
        assert_eq!(support::status_of(&response), 200, "{path}: {response}");
        let seen = up.last();
        for (name, value) in seen.headers.iter() {
            let folded = name.as_str().replace('_', "-");
            if folded.starts_with("x-auth-") {
                assert_ne!(value, "root", "{path}: spoofed {name}");
                assert_ne!(value, "admin", "{path}: spoofed {name}");
                assert_ne!(value, "superuser", "{path}: spoofed {name}");
                assert_ne!(value, "root@example.com", "{path}: spoofed {name}");
            }
        }
        if path == "/api/s" {
            assert_eq!(seen.headers.get_all("x-auth-user").iter().count(), 1);
            assert_eq!(seen.headers["x-auth-user"], "bob");
            assert_eq!(seen.headers["x-auth-roles"], "dev");
        }
    }
}

#[tokio::test]
async fn forward_token_sends_the_access_token_upstream() {
    let up = Upstream::start("api").await;
    let toml = format!(
        "{}\n[identity]\nforward_token = true\nclaims = {{ \"X-Auth-Jti\" = \"jti\" }}\n",
        routes(&up)
    );
    let gw = TestGateway::start(&toml, &people()).await;
    let (body, cookies) = gw.login("alice", "alice-pw").await;
    let access = body["access_token"].as_str().unwrap();
    client()
        .get(gw.url("/api/x"))
        .header(
            "cookie",
            format!(
                "access_token={}",
                cookie_value(&cookies, "access_token").unwrap()
            ),
        )
        .send()
        .await
        .unwrap();
    let seen = up.last();
    assert_eq!(
        seen.headers["authorization"],
        format!("Bearer {access}").as_str()
    );
    assert!(seen.headers.get("x-auth-user").is_some());
}

#[tokio::test]
async fn userinfo_requires_a_token() {
    let (_, gw) = setup().await;
    let response = gw.get("/userinfo").await;
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn users_file_edits_apply_without_restart() {
    let (_, gw) = setup_unthrottled().await;
    let response = gw.password_grant("dave", "dave-pw").await;
    assert_eq!(response.status(), 401);
    let mut users = people();
    users.push(user("dave", "dave-pw", &[]));
    // Make the file's size change with the edit as well as its mtime.
    std::fs::write(gw.path("users.toml"), support::users_toml(&users)).unwrap();
    let mut status = 0;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        status = gw.password_grant("dave", "dave-pw").await.status().as_u16();
        if status == 200 {
            break;
        }
    }
    assert_eq!(status, 200, "the edit was not picked up");
    // A broken edit keeps the last good version.
    std::fs::write(
        gw.path("users.toml"),
        "[[users]]\nusername = \"dave\"\nbroken =\n",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    gw.login("dave", "dave-pw").await;
}

#[tokio::test]
async fn cli_round_trip_add_then_login() {
    let (_, gw) = setup_unthrottled().await;
    let config = gw.path("gateway.toml");
    let mut child = Command::new(binary())
        .arg("-c")
        .arg(&config)
        .args([
            "users",
            "add",
            "erin",
            "--email",
            "erin@example.com",
            "--role",
            "ops",
            "--role",
            "dev",
            "--password-stdin",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"erin-pw\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The running gateway sees the new user without a restart.
    let mut token = None;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let response = gw.password_grant("erin", "erin-pw").await;
        if response.status() == 200 {
            token = Some(tokens(response).await.access);
            break;
        }
    }
    let token = token.expect("erin could not log in");
    let info: serde_json::Value = get_with_bearer(&gw, "/userinfo", &token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(info["roles"], json!(["ops", "dev"]));
    assert_eq!(info["email"], "erin@example.com");

    let list = run_authgate(&config, &["users", "list"]);
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(text.contains("erin\terin@example.com\tops,dev"), "{text}");

    // passwd and del.
    let mut child = Command::new(binary())
        .arg("-c")
        .arg(&config)
        .args(["users", "passwd", "erin", "--password-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"new-pw\n").unwrap();
    assert!(child.wait().unwrap().success());
    let out = run_authgate(&config, &["users", "del", "erin"]);
    assert!(out.status.success());
    let out = run_authgate(&config, &["users", "del", "erin"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("erin"));
}

/// An asymmetric gateway: tokens verify, JWKS publishes the public key, and
/// an HS256 token signed with that public key as the secret is refused.
async fn asymmetric(algorithm: &str, key: &str) {
    let up = Upstream::start("api").await;
    let dir = tempfile::tempdir().unwrap();
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    std::fs::copy(
        fixtures.join(format!("{key}.pem")),
        dir.path().join("jwt.pem"),
    )
    .unwrap();
    let toml = format!(
        "{}\n[jwt]\nalgorithm = \"{algorithm}\"\nprivate_key = \"jwt.pem\"\nkey_id = \"k1\"\n",
        routes(&up)
    );
    let gw = TestGateway::start_in(dir, &toml, &people()).await;
    let token = gw.access_token("alice", "alice-pw").await;
    let header: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            token.split('.').next().unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(header["alg"], algorithm);
    assert_eq!(header["kid"], "k1");
    assert_eq!(get_with_bearer(&gw, "/api/x", &token).await.status(), 200);

    let jwks: serde_json::Value = gw.get("/.well-known/jwks.json").await.json().await.unwrap();
    let jwk = &jwks["keys"][0];
    assert_eq!(jwk["kid"], "k1");
    assert_eq!(jwk["use"], "sig");
    // The published key verifies the token on its own.
    let decoding =
        jsonwebtoken::DecodingKey::from_jwk(&serde_json::from_value(jwk.clone()).unwrap()).unwrap();
    let alg: jsonwebtoken::Algorithm = algorithm.parse().unwrap();
    let mut validation = jsonwebtoken::Validation::new(alg);
    validation.set_issuer(&["authgate"]);
    jsonwebtoken::decode::<serde_json::Value>(&token, &decoding, &validation).unwrap();
    assert!(
        !jwks.to_string().contains("\"d\""),
        "private key material published"
    );

    // Algorithm confusion: the public key PEM as an HMAC secret.
    let public_pem = std::fs::read_to_string(fixtures.join(format!("{key}.pub.pem"))).unwrap();
    let mut confused_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    confused_header.kid = Some("k1".into());
    let confused = jsonwebtoken::encode(
        &confused_header,
        &claims("alice", 600),
        &jsonwebtoken::EncodingKey::from_secret(public_pem.as_bytes()),
    )
    .unwrap();
    assert_eq!(
        get_with_bearer(&gw, "/api/x", &confused).await.status(),
        401
    );
}

#[tokio::test]
async fn rs256_tokens_and_jwks() {
    asymmetric("RS256", "rsa").await;
}

#[tokio::test]
async fn es256_tokens_and_jwks() {
    asymmetric("ES256", "ec").await;
}

#[tokio::test]
async fn eddsa_tokens_and_jwks() {
    asymmetric("EdDSA", "ed25519").await;
}

#[tokio::test]
async fn hmac_gateways_publish_no_jwks() {
    let (_, gw) = setup().await;
    assert_eq!(gw.get("/.well-known/jwks.json").await.status(), 404);
}

#[tokio::test]
async fn key_rotation_with_kid() {
    let up = Upstream::start("api").await;
    // A token from the old key, with its kid.
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some("old".into());
    let old_token = jsonwebtoken::encode(
        &header,
        &claims("alice", 600),
        &jsonwebtoken::EncodingKey::from_secret(support::OLD_SECRET.as_bytes()),
    )
    .unwrap();
    let toml = format!(
        "{}\n[jwt]\nsecret_env = \"{}\"\nkey_id = \"new\"\n[[jwt.previous_keys]]\nkey_id = \"old\"\nsecret_env = \"{}\"\n",
        routes(&up),
        support::SECRET_ENV,
        support::OLD_SECRET_ENV
    );
    let gw = TestGateway::start(&toml, &people()).await;
    assert_eq!(
        get_with_bearer(&gw, "/api/x", &old_token).await.status(),
        200
    );
    let new_token = gw.access_token("alice", "alice-pw").await;
    assert_eq!(
        get_with_bearer(&gw, "/api/x", &new_token).await.status(),
        200
    );
    // Unknown or injected kids are refused.
    for kid in [
        "other",
        "../../etc/passwd",
        "' OR 1=1 --",
        "http://evil/jwks",
    ] {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some(kid.into());
        let token = jsonwebtoken::encode(
            &header,
            &claims("alice", 600),
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert_eq!(
            get_with_bearer(&gw, "/api/x", &token).await.status(),
            401,
            "{kid}"
        );
    }
    // Old-key tokens without the rotation config: refused.
    let plain = TestGateway::start(&routes(&up), &people()).await;
    assert_eq!(
        get_with_bearer(&plain, "/api/x", &old_token).await.status(),
        401
    );
}

#[tokio::test]
async fn eddsa_rotation_verifies_old_public_key() {
    let up = Upstream::start("api").await;
    let dir = tempfile::tempdir().unwrap();
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    std::fs::copy(fixtures.join("ed25519.pem"), dir.path().join("jwt.pem")).unwrap();
    std::fs::copy(
        fixtures.join("ed25519-old.pub.pem"),
        dir.path().join("old.pub.pem"),
    )
    .unwrap();
    let old_private = std::fs::read(fixtures.join("ed25519-old.pem")).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some("old".into());
    let old_token = jsonwebtoken::encode(
        &header,
        &claims("alice", 600),
        &jsonwebtoken::EncodingKey::from_ed_pem(&old_private).unwrap(),
    )
    .unwrap();
    let toml = format!(
        "{}\n[jwt]\nalgorithm = \"EdDSA\"\nprivate_key = \"jwt.pem\"\nkey_id = \"new\"\n[[jwt.previous_keys]]\nkey_id = \"old\"\npublic_key = \"old.pub.pem\"\n",
        routes(&up)
    );
    let gw = TestGateway::start_in(dir, &toml, &people()).await;
    assert_eq!(
        get_with_bearer(&gw, "/api/x", &old_token).await.status(),
        200
    );
    let jwks: serde_json::Value = gw.get("/.well-known/jwks.json").await.json().await.unwrap();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids, vec!["new", "old"]);
}
