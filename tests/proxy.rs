//! Issue 2: the reverse-proxy core through a real listener and upstream.

mod support;

use std::time::Duration;

use support::{client, closed_port, raw, raw_get, status_of, TestGateway, Upstream};

fn public_route(prefix: &str, upstream: &Upstream, extra: &str) -> String {
    format!(
        "[[routes]]\nprefix = \"{prefix}\"\nupstream = \"{}\"\nauth = \"public\"\n{extra}\n",
        upstream.url()
    )
}

#[tokio::test]
async fn request_arrives_intact() {
    let up = Upstream::start("a").await;
    let gw = TestGateway::start(&public_route("/", &up, ""), &[]).await;
    let response = client()
        .post(gw.url("/items/7?sort=desc&q=a%20b"))
        .header("x-custom", "v1")
        .header("content-type", "text/plain")
        .body("hello body")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = up.last();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.uri, "/items/7?sort=desc&q=a%20b");
    assert_eq!(seen.headers["x-custom"], "v1");
    assert_eq!(seen.headers["content-type"], "text/plain");
    assert_eq!(seen.body.as_ref(), b"hello body");
    // Host is kept as the client sent it.
    assert_eq!(seen.headers["host"], gw.addr.to_string());
}

#[tokio::test]
async fn preserve_host_false_sends_upstream_host() {
    let up = Upstream::start("a").await;
    let gw = TestGateway::start(&public_route("/", &up, "preserve_host = false"), &[]).await;
    gw.get("/x").await;
    assert_eq!(up.last().headers["host"], up.addr.to_string());
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_both_ways() {
    let up = Upstream::start("a").await;
    let gw = TestGateway::start(&public_route("/", &up, ""), &[]).await;
    let response = raw(
        gw.addr,
        b"GET /hop HTTP/1.1\r\nHost: gw\r\nConnection: close, x-private\r\nx-private: 1\r\n\
          Keep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\n\
          Proxy-Connection: keep-alive\r\nUpgrade: h2c\r\nx-kept: yes\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&response), 200, "{response}");
    let seen = up.last();
    for gone in [
        "x-private",
        "keep-alive",
        "te",
        "proxy-authorization",
        "proxy-connection",
        "upgrade",
    ] {
        assert!(
            !seen.headers.contains_key(gone),
            "{gone} reached the upstream"
        );
    }
    assert_eq!(seen.headers["x-kept"], "yes");
    // The upstream's own Connection-named header stays on its hop.
    assert!(
        !response.to_ascii_lowercase().contains("x-upstream-private"),
        "{response}"
    );
}

#[tokio::test]
async fn forwarding_headers_and_request_id() {
    let up = Upstream::start("a").await;
    let gw = TestGateway::start(&public_route("/", &up, ""), &[]).await;
    let response = client()
        .get(gw.url("/fwd"))
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "https")
        .header("x-request-id", "client-id-123")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "client-id-123");
    let seen = up.last();
    assert_eq!(seen.headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-forwarded-host"], gw.addr.to_string());
    assert_eq!(seen.headers["x-request-id"], "client-id-123");

    // An invalid id is replaced by a generated one, the same both ways.
    let response = client()
        .get(gw.url("/fwd"))
        .header("x-request-id", "bad id with spaces")
        .send()
        .await
        .unwrap();
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_ne!(id, "bad id with spaces");
    assert_eq!(id.len(), 36);
    assert_eq!(up.last().headers["x-request-id"], id.as_str());
}

#[tokio::test]
async fn longest_prefix_and_strip_prefix() {
    let root = Upstream::start("root").await;
    let api = Upstream::start("api").await;
    let movies = Upstream::start("movies").await;
    let toml = format!(
        "{}{}{}",
        public_route("/", &root, ""),
        public_route("/api", &api, ""),
        public_route("/api/movies/", &movies, "strip_prefix = true"),
    );
    let gw = TestGateway::start(&toml, &[]).await;
    let get = |path: &'static str| {
        let url = gw.url(path);
        async move {
            let body: serde_json::Value = client()
                .get(url)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            (
                body["upstream"].as_str().unwrap().to_string(),
                body["path"].as_str().unwrap().to_string(),
            )
        }
    };
    assert_eq!(
        get("/api/movies/42?x=1").await,
        ("movies".into(), "/42?x=1".into())
    );
    assert_eq!(get("/api/movies").await, ("movies".into(), "/".into()));
    assert_eq!(
        get("/api/moviesX").await,
        ("api".into(), "/api/moviesX".into())
    );
    assert_eq!(get("/api/other").await, ("api".into(), "/api/other".into()));
    assert_eq!(get("/apix").await, ("root".into(), "/apix".into()));
}

#[tokio::test]
async fn host_routes_match_the_host_header() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let toml = format!(
        "{}{}",
        public_route("/", &a, ""),
        public_route("/", &b, "host = \"api.example.com\""),
    );
    let gw = TestGateway::start(&toml, &[]).await;
    let response = raw(
        gw.addr,
        b"GET /h HTTP/1.1\r\nHost: API.example.com:8080\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(response.contains("\"upstream\":\"b\""), "{response}");
    let response = raw(
        gw.addr,
        b"GET /h HTTP/1.1\r\nHost: other\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(response.contains("\"upstream\":\"a\""), "{response}");
}

#[tokio::test]
async fn paths_are_normalized_before_routing() {
    let public = Upstream::start("public").await;
    let admin = Upstream::start("admin").await;
    let toml = format!(
        "{}{}",
        public_route("/public", &public, ""),
        public_route("/admin", &admin, ""),
    );
    let gw = TestGateway::start(&toml, &[]).await;
    let response = raw_get(gw.addr, "/public/../admin/x", "").await;
    assert_eq!(status_of(&response), 200);
    assert!(response.contains("\"upstream\":\"admin\""), "{response}");
    assert_eq!(admin.last().uri, "/admin/x");
    let response = raw_get(gw.addr, "//admin//y/./z", "").await;
    assert!(response.contains("\"upstream\":\"admin\""), "{response}");
    assert_eq!(admin.last().uri, "/admin/y/z");
    let response = raw_get(gw.addr, "/public/%2e%2e/admin/q?a=1", "").await;
    assert_eq!(admin.last().uri, "/admin/q?a=1", "{response}");
}

#[tokio::test]
async fn malformed_paths_are_400() {
    let up = Upstream::start("a").await;
    let gw = TestGateway::start(&public_route("/", &up, ""), &[]).await;
    for path in [
        "/../etc/passwd",
        "/public/..;/admin",
        "/public/%2E%2E%2Fadmin",
        "/a%00b",
    ] {
        let response = raw_get(gw.addr, path, "").await;
        assert_eq!(status_of(&response), 400, "{path}: {response}");
        assert!(response.contains("\"error\":\"bad_request\""), "{response}");
    }
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn no_route_is_404_json() {
    let up = Upstream::start("a").await;
    let gw = TestGateway::start(&public_route("/api", &up, ""), &[]).await;
    let response = gw.get("/elsewhere").await;
    assert_eq!(response.status(), 404);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "not_found");
    assert!(body["detail"].is_string());
}

#[tokio::test]
async fn unreachable_upstream_is_502() {
    let toml = format!(
        "[[routes]]\nprefix = \"/\"\nupstream = \"http://127.0.0.1:{}\"\nauth = \"public\"\n",
        closed_port()
    );
    let gw = TestGateway::start(&toml, &[]).await;
    let response = gw.get("/x").await;
    assert_eq!(response.status(), 502);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "bad_gateway");
    assert!(
        !body.to_string().contains("127.0.0.1"),
        "internal details leaked: {body}"
    );
}

/// A gateway whose upstream timeout is 300 ms, in front of one public route.
async fn with_300ms_timeout() -> (Upstream, TestGateway) {
    let up = Upstream::start("a").await;
    let toml = format!(
        "[server]\nrequest_timeout = \"300ms\"\n{}",
        public_route("/", &up, "")
    );
    (up, TestGateway::start(&toml, &[]).await)
}

#[tokio::test]
async fn slow_upstream_is_504() {
    let (_up, gw) = with_300ms_timeout().await;
    let response = gw.get("/slow/2000").await;
    assert_eq!(response.status(), 504);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "gateway_timeout");
    // A fast answer on the same gateway still passes.
    assert_eq!(gw.get("/slow/10").await.status(), 200);
}

/// The upstream timeout is one timer per client connection, re-armed for
/// each request: on one keep-alive connection, each request gets its own
/// full deadline, after a fast answer as after a timeout.
#[tokio::test]
async fn each_request_on_a_connection_gets_its_own_timeout() {
    let (_up, gw) = with_300ms_timeout().await;
    let get = |path: &str, last: bool| {
        let close = if last { "Connection: close\r\n" } else { "" };
        format!("GET {path} HTTP/1.1\r\nHost: gw.test\r\n{close}\r\n")
    };
    // Pipelined on one connection: fast, slow (timed out), fast again (the
    // timer that fired is re-armed, not left elapsed), nearly as slow as the
    // timeout (a deadline from its own start, not the first request's).
    let requests = [
        get("/slow/10", false),
        get("/slow/3000", false),
        get("/slow/10", false),
        get("/slow/200", true),
    ]
    .concat();
    let started = std::time::Instant::now();
    let answers = raw(gw.addr, requests.as_bytes()).await;
    let statuses: Vec<&str> = answers
        .match_indices("HTTP/1.1 ")
        .map(|(at, _)| &answers[at + 9..at + 12])
        .collect();
    assert_eq!(statuses, ["200", "504", "200", "200"], "{answers}");
    // 10 + 300 + 10 + 200 ms and round trips: the timeout fired on time.
    assert!(started.elapsed() < Duration::from_millis(1500));
}

#[tokio::test]
async fn oversized_head_is_431() {
    let up = Upstream::start("a").await;
    let toml = format!(
        "[server]\nmax_header_bytes = 4096\n{}",
        public_route("/", &up, "")
    );
    let gw = TestGateway::start(&toml, &[]).await;
    let big = "v".repeat(5000);
    let response = client()
        .get(gw.url("/x"))
        .header("x-big", &big)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 431);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "request_header_fields_too_large");
    // Far past the limit hyper itself refuses, still with 431.
    let huge = "v".repeat(40_000);
    let response = raw_get(gw.addr, "/x", &format!("x-huge: {huge}\r\n")).await;
    assert_eq!(status_of(&response), 431, "{response}");
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn malformed_request_is_400() {
    let up = Upstream::start("a").await;
    let gw = TestGateway::start(&public_route("/", &up, ""), &[]).await;
    let response = raw(
        gw.addr,
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    )
    .await;
    assert_eq!(status_of(&response), 400, "{response}");
    let response = raw(
        gw.addr,
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: abc\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&response), 400, "{response}");
    let response = raw(gw.addr, b"NOT A REQUEST\r\n\r\n").await;
    assert_eq!(status_of(&response), 400, "{response}");
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn healthz_answers_from_the_gateway() {
    let gw = TestGateway::start("", &[]).await;
    let response = gw.get("/healthz").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap(),
        serde_json::json!({"status": "ok"})
    );
    let response = gw.get("/readyz").await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let up = Upstream::start("a").await;
    let mut gw = TestGateway::start(&public_route("/", &up, ""), &[]).await;
    let url = gw.url("/slow/800");
    let in_flight = tokio::spawn(async move { client().get(url).send().await.map(|r| r.status()) });
    // Let the request reach the upstream, then ask for shutdown.
    for _ in 0..100 {
        if up.count() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let server = gw.begin_shutdown();
    assert_eq!(in_flight.await.unwrap().unwrap(), 200);
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // No longer listening.
    assert!(tokio::net::TcpStream::connect(gw.addr).await.is_err());
}
