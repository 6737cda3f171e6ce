//! Issue 7: the sign-in page, browser redirects, GET /logout, the auth path
//! prefix, and the admin listener's metrics.

mod support;

use support::{client, cookie_value, password_grant, set_cookies, user, TestGateway, Upstream};

const HTML: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";

fn routes(up: &Upstream, extra: &str) -> String {
    format!(
        "[[routes]]\nprefix = \"/app\"\nupstream = \"{}\"\nauth = \"required\"\n{extra}",
        up.url()
    )
}

async fn setup(extra: &str) -> (Upstream, TestGateway) {
    let up = Upstream::start("app").await;
    let gw = TestGateway::start(&routes(&up, extra), &[user("alice", "alice-pw", &["dev"])]).await;
    (up, gw)
}

#[tokio::test]
async fn browsers_are_sent_to_sign_in_and_back() {
    let (up, gw) = setup("").await;
    // 1. A protected page, no session: 302 to the sign-in page with rd.
    let response = client()
        .get(gw.url("/app/page?x=1&y=2"))
        .header("accept", HTML)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 302);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    assert_eq!(location, "/login?rd=/app/page%3Fx%3D1%26y%3D2");

    // 2. The sign-in page carries rd in a hidden field and posts to /token.
    let response = client()
        .get(gw.url(&location))
        .header("accept", HTML)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let page = response.text().await.unwrap();
    assert!(page.contains("action=\"/token\""), "{page}");
    assert!(
        page.contains("name=\"rd\" value=\"/app/page?x=1&amp;y=2\""),
        "{page}"
    );
    assert!(page.contains("<label for=\"password\">"), "{page}");
    assert!(!page.contains("<script"), "{page}");

    // 3. A wrong password shows the page again with the error, 401.
    let response = client()
        .post(gw.url("/token"))
        .header("accept", HTML)
        .form(&[
            ("username", "alice"),
            ("password", "nope"),
            ("rd", "/app/page?x=1&y=2"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let page = response.text().await.unwrap();
    assert!(
        page.contains("role=\"alert\">Incorrect username or password"),
        "{page}"
    );
    assert!(page.contains("value=\"alice\""), "{page}");

    // 4. The right password: 303 back to rd, with the cookies.
    let response = client()
        .post(gw.url("/token"))
        .form(&[
            ("username", "alice"),
            ("password", "alice-pw"),
            ("rd", "/app/page?x=1&y=2"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/app/page?x=1&y=2");
    let cookies = set_cookies(response.headers());
    let access = cookie_value(&cookies, "access_token").unwrap();
    let refresh = cookie_value(&cookies, "refresh_token").unwrap();

    // 5. Back on the page with the cookies.
    let response = client()
        .get(gw.url("/app/page?x=1&y=2"))
        .header("accept", HTML)
        .header(
            "cookie",
            format!("access_token={access}; refresh_token={refresh}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(up.last().headers["x-auth-user"], "alice");

    // 6. GET /logout from the browser: a signed-out page, cookies cleared,
    //    the session revoked.
    let response = client()
        .get(gw.url("/logout"))
        .header("accept", HTML)
        .header(
            "cookie",
            format!("access_token={access}; refresh_token={refresh}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let cleared = set_cookies(response.headers());
    assert!(
        cleared.iter().all(|c| c.contains("Max-Age=0")),
        "{cleared:?}"
    );
    assert!(response.text().await.unwrap().contains("Signed out"));
    let response = gw.refresh_grant(&refresh).await;
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn api_clients_keep_the_json_401() {
    let (_, gw) = setup("").await;
    for accept in ["*/*", "application/json", ""] {
        let mut request = client().get(gw.url("/app/x"));
        if !accept.is_empty() {
            request = request.header("accept", accept);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{accept}");
        assert_eq!(response.headers()["content-type"], "application/json");
    }
    // A Bearer header means an API client, even if it asks for HTML.
    let response = client()
        .get(gw.url("/app/x"))
        .header("accept", HTML)
        .bearer_auth("bad")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn login_redirect_can_be_turned_off() {
    let up = Upstream::start("app").await;
    let toml = format!("{}\n[auth]\nlogin_redirect = false\n", routes(&up, ""));
    let gw = TestGateway::start(&toml, &[]).await;
    let response = client()
        .get(gw.url("/app/x"))
        .header("accept", HTML)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn rd_never_leaves_the_site() {
    let (_, gw) = setup("").await;
    for rd in [
        "//evil.com",
        "/\\evil.com",
        "https://evil.com",
        "/%2F%2Fevil.com",
        "%2F%2Fevil.com",
        "/\t/evil.com",
    ] {
        let response = client()
            .post(gw.url("/token"))
            .form(&[("username", "alice"), ("password", "alice-pw"), ("rd", rd)])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 303, "{rd}");
        assert_eq!(response.headers()["location"], "/", "{rd}");
        let page = client()
            .get(gw.url("/login"))
            .query(&[("rd", rd)])
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(page.contains("name=\"rd\" value=\"/\""), "{rd}: {page}");
    }
}

#[tokio::test]
async fn path_prefix_moves_the_gateway_paths() {
    let up = Upstream::start("root").await;
    let toml = format!(
        "[[routes]]\nprefix = \"/\"\nupstream = \"{}\"\nauth = \"optional\"\n[auth]\npath_prefix = \"/auth\"\n",
        up.url()
    );
    let gw = TestGateway::start(&toml, &[user("alice", "alice-pw", &[])]).await;
    // /token now belongs to the upstream.
    let response = gw.password_grant("alice", "alice-pw").await;
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap()["upstream"],
        "root"
    );
    let response = password_grant(gw.url("/auth/token"), "alice", "alice-pw").await;
    assert_eq!(response.status(), 200);
    for path in ["/auth/healthz", "/auth/readyz", "/auth/login"] {
        assert_eq!(gw.get(path).await.status(), 200, "{path}");
    }
    assert_eq!(gw.get("/auth/userinfo").await.status(), 401);
}

#[tokio::test]
async fn admin_listener_serves_metrics() {
    let port = support::closed_port();
    let (_, gw) = setup(&format!("\n[admin]\nlisten = \"127.0.0.1:{port}\"\n")).await;
    let listener = authgate::admin::bind(format!("127.0.0.1:{port}").parse().unwrap())
        .await
        .unwrap();
    authgate::admin::spawn(listener, gw.gateway.clone());
    gw.login("alice", "alice-pw").await;
    gw.get("/app/x").await;
    let text = client()
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "authgate_requests_total{route=\"/app\",status=\"4xx\"}",
        "authgate_logins_total{outcome=\"success\"}",
        "authgate_auth_outcomes_total{outcome=\"missing\"}",
        "authgate_request_duration_seconds_bucket",
        "authgate_open_connections",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
    // Metrics are not on the public listener.
    assert_eq!(gw.get("/metrics").await.status(), 404);
}
