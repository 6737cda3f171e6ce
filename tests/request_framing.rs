//! Issue 18: a request body the gateway cannot pass on whole. A malformed
//! chunked body is the client's fault (400, never an upstream failure, and
//! the upstream never sees the request complete); an answer sent before
//! the body was read closes the connection, since where the next request
//! starts is unknown.

mod support;

use std::time::Duration;

use support::{client, raw, status_of, user, TestGateway, Upstream};

fn config(up: &Upstream) -> String {
    format!(
        "[[routes]]\nprefix = \"/open\"\nupstream = \"{url}\"\nauth = \"public\"\n\
         [[routes]]\nprefix = \"/api\"\nupstream = \"{url}\"\nauth = \"required\"\n\
         [[routes]]\nprefix = \"/admin\"\nupstream = \"{url}\"\nauth = \"required\"\nroles = [\"admin\"]\n",
        url = up.url()
    )
}

/// The sum of `authgate_upstream_errors_total` over its kinds.
fn upstream_errors() -> u64 {
    authgate::metrics::get()
        .encode()
        .lines()
        .filter(|line| line.starts_with("authgate_upstream_errors_total"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn chunked_post(path: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\
         Content-Type: text/plain\r\n\r\n{body}"
    )
}

fn json_body(raw_response: &str) -> serde_json::Value {
    let (_, body) = raw_response
        .split_once("\r\n\r\n")
        .expect("a response head");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {raw_response}"))
}

fn header<'a>(raw_response: &'a str, name: &str) -> Option<&'a str> {
    let (head, _) = raw_response.split_once("\r\n\r\n")?;
    head.lines().skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test]
async fn a_malformed_chunked_body_is_a_bad_request_not_an_upstream_failure() {
    let up = Upstream::start("api").await;
    let gw = TestGateway::start(&config(&up), &[]).await;

    // The same request, well framed, goes through whole.
    let fine = raw(
        gw.addr,
        chunked_post("/open/echo", "5\r\nhello\r\n0\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status_of(&fine), 200, "{fine}");
    assert_eq!(up.last().body, "hello");
    let completed = up.count();
    let errors = upstream_errors();

    let cases = [
        (
            "a size line that is not hex",
            "5\r\nhello\r\nzz\r\nworld\r\n0\r\n\r\n",
        ),
        (
            "a size that overflows",
            "5\r\nhello\r\nfffffffffffffffff1\r\nworld\r\n0\r\n\r\n",
        ),
        (
            "data longer than its size",
            "5\r\nhello\r\n3\r\nworld\r\n0\r\n\r\n",
        ),
    ];
    for (what, body) in cases {
        let answer = raw(gw.addr, chunked_post("/open/echo", body).as_bytes()).await;
        assert_eq!(status_of(&answer), 400, "{what}: {answer}");
        assert_eq!(json_body(&answer)["error"], "bad_request", "{what}");
        assert_eq!(header(&answer, "connection"), Some("close"), "{what}");
        // Time for a request the upstream did complete to be recorded.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(up.count(), completed, "{what}: the upstream saw it whole");
        assert_eq!(
            upstream_errors(),
            errors,
            "{what}: counted as an upstream error"
        );
    }
}

/// 401, 403, 404 and 405 to requests with a body the gateway never read.
#[tokio::test]
async fn an_answer_before_the_body_was_read_closes_the_connection() {
    let up = Upstream::start("api").await;
    let gw = TestGateway::start(&config(&up), &[user("bob", "bob-pw", &["dev"])]).await;
    let bob = gw.access_token("bob", "bob-pw").await;

    let refused = [
        (client().post(gw.url("/api/upload")), 401),
        (
            client().post(gw.url("/admin/upload")).bearer_auth(&bob),
            403,
        ),
        (client().post(gw.url("/nowhere")), 404),
        (client().put(gw.url("/healthz")), 405),
        (client().post(gw.url("/userinfo")).bearer_auth(&bob), 405),
    ];
    for (request, status) in refused {
        let response = request.body("some upload").send().await.unwrap();
        assert_eq!(response.status(), status, "{response:?}");
        assert_eq!(
            response
                .headers()
                .get("connection")
                .map(|v| v.to_str().unwrap()),
            Some("close"),
            "{response:?}"
        );
    }
    let chunked = raw(
        gw.addr,
        chunked_post("/api/upload", "5\r\nhello\r\n0\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status_of(&chunked), 401, "{chunked}");
    assert_eq!(header(&chunked, "connection"), Some("close"), "{chunked}");

    // Bodies that were read, and requests without one, keep the connection.
    let kept = [
        (
            client()
                .post(gw.url("/api/echo"))
                .bearer_auth(&bob)
                .body("data"),
            200,
        ),
        (client().post(gw.url("/open/echo")).body("data"), 200),
        (
            client()
                .post(gw.url("/token"))
                .form(&[("username", "bob"), ("password", "wrong")]),
            401,
        ),
        (client().get(gw.url("/api/x")), 401),
        (client().get(gw.url("/nowhere")), 404),
    ];
    for (request, status) in kept {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), status, "{response:?}");
        assert!(
            response.headers().get("connection").is_none(),
            "{response:?}"
        );
    }
}
