//! One login test suite, run against every user store: the users file and
//! a PostgreSQL schema (issue 9). Each test is an async fn taking the
//! backend; `both!` makes a `file::NAME` and a `postgres::NAME` test of it.

mod support;

use serde_json::{json, Value};
use support::postgres::{self as pg, PgSchema};
use support::{client, cookie_value, set_cookies, user, TestGateway, TestUser, Upstream};

#[derive(Debug, Clone, Copy)]
enum Backend {
    File,
    Postgres,
}

fn people() -> Vec<TestUser> {
    let mut carol = user("carol", "carol-pw", &["dev"]);
    carol.disabled = true;
    let mut dave = user("dave", "dave-pw", &[]);
    dave.email = None;
    vec![
        user("alice", "alice-pw", &["admin", "dev"]),
        user("bob", "bob-pw", &["dev"]),
        carol,
        dave,
    ]
}

/// A gateway whose users come from `backend`, with `/api` proxied to a
/// recording upstream (login required).
struct Setup {
    gw: TestGateway,
    up: Upstream,
    _schema: Option<PgSchema>,
}

async fn setup(backend: Backend) -> Setup {
    let up = Upstream::start("api").await;
    let routes = format!(
        "[[routes]]\nprefix = \"/api\"\nupstream = \"{}\"\nauth = \"required\"\n",
        up.url()
    );
    match backend {
        Backend::File => Setup {
            gw: TestGateway::start(&routes, &people()).await,
            up,
            _schema: None,
        },
        Backend::Postgres => {
            let schema = PgSchema::migrated("login").await;
            schema.insert(&people()).await;
            let toml = format!("{routes}{}", schema.users_toml(pg::shared_env()));
            Setup {
                gw: TestGateway::start(&toml, &[]).await,
                up,
                _schema: Some(schema),
            }
        }
    }
}

async fn post_form(gw: &TestGateway, fields: &[(&str, &str)]) -> reqwest::Response {
    client()
        .post(gw.url("/token"))
        .form(fields)
        .send()
        .await
        .unwrap()
}

/// A refused login: 401 `invalid_grant`, a Bearer challenge, no cookies.
async fn assert_refused(response: reqwest::Response) {
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    assert!(response.headers().get("set-cookie").is_none());
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({"error": "invalid_grant", "detail": "Incorrect username or password"})
    );
}

async fn form_login(backend: Backend) {
    let s = setup(backend).await;
    let response = post_form(
        &s.gw,
        &[
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", "alice-pw"),
            ("scope", ""),
        ],
    )
    .await;
    assert_eq!(response.status(), 200);
    let cookies = set_cookies(response.headers());
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["token_type"], "bearer");
    let access = body["access_token"].as_str().unwrap();
    assert_eq!(
        cookie_value(&cookies, "access_token").as_deref(),
        Some(access)
    );
    assert_eq!(
        cookie_value(&cookies, "refresh_token").as_deref(),
        body["refresh_token"].as_str()
    );
    assert_eq!(s.gw.userinfo(access).await["sub"], "alice");
}

async fn json_login(backend: Backend) {
    let s = setup(backend).await;
    let response = client()
        .post(s.gw.url("/token"))
        .json(&json!({"username": "bob", "password": "bob-pw"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let info = s.gw.userinfo(body["access_token"].as_str().unwrap()).await;
    assert_eq!(info["sub"], "bob");
}

async fn wrong_password(backend: Backend) {
    let s = setup(backend).await;
    assert_refused(post_form(&s.gw, &[("username", "alice"), ("password", "bob-pw")]).await).await;
}

async fn unknown_user(backend: Backend) {
    let s = setup(backend).await;
    assert_refused(post_form(&s.gw, &[("username", "mallory"), ("password", "alice-pw")]).await)
        .await;
}

async fn disabled_user(backend: Backend) {
    let s = setup(backend).await;
    assert_refused(post_form(&s.gw, &[("username", "carol"), ("password", "carol-pw")]).await)
        .await;
}

async fn missing_fields(backend: Backend) {
    let s = setup(backend).await;
    let form = post_form(&s.gw, &[("username", "alice")]).await;
    let json = client()
        .post(s.gw.url("/token"))
        .json(&json!({"password": "alice-pw"}))
        .send()
        .await
        .unwrap();
    let empty = client().post(s.gw.url("/token")).send().await.unwrap();
    for response in [form, json, empty] {
        assert_eq!(response.status(), 400);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "invalid_request");
    }
}

async fn identity_in_token_and_headers(backend: Backend) {
    let s = setup(backend).await;
    let token = s.gw.access_token("alice", "alice-pw").await;
    let info = s.gw.userinfo(&token).await;
    assert_eq!(info["email"], "alice@example.com");
    assert_eq!(info["roles"], json!(["admin", "dev"]));
    let response = client()
        .get(s.gw.url("/api/whoami"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = s.up.last();
    assert_eq!(seen.headers["x-auth-user"], "alice");
    assert_eq!(seen.headers["x-auth-email"], "alice@example.com");
    assert_eq!(seen.headers["x-auth-roles"], "admin,dev");

    // No email and no roles: no email claim, empty roles.
    let token = s.gw.access_token("dave", "dave-pw").await;
    let info = s.gw.userinfo(&token).await;
    assert!(info.get("email").is_none(), "{info}");
    assert_eq!(info["roles"], json!([]));
}

macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod file {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Backend::File).await
            })*
        }
        mod postgres {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Backend::Postgres).await
            })*
        }
    };
}

both!(
    form_login,
    json_login,
    wrong_password,
    unknown_user,
    disabled_user,
    missing_fields,
    identity_in_token_and_headers,
);
