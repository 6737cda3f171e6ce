//! Issue 18: a request body the gateway cannot pass on whole. A malformed
//! chunked body is the client's fault (400, never an upstream failure, and
//! the upstream never sees the request complete); an answer sent before
//! the body was read closes the connection, since where the next request
//! starts is unknown.

mod support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
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
    support::process_metric("authgate_upstream_errors_total")
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

/// An HTTP/2 (h2c) upstream that counts the requests whose body arrived
/// whole. hyper's HTTP/2 client keeps a failed request body's error to
/// itself and resets the stream, unlike its HTTP/1 client.
async fn http2_upstream() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let completed = Arc::new(AtomicUsize::new(0));
    let count = completed.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: http::Request<Incoming>| {
                    let count = count.clone();
                    async move {
                        if req.into_body().collect().await.is_ok() {
                            count.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from("ok"))))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, completed)
}

#[tokio::test]
async fn a_malformed_chunked_body_to_an_http2_upstream_is_a_bad_request_too() {
    let (addr, completed) = http2_upstream().await;
    let gw = TestGateway::start(
        &format!(
            "[[routes]]\nprefix = \"/\"\nupstream = \"http://{addr}\"\nauth = \"public\"\n\
             upstream_http2 = true\n"
        ),
        &[],
    )
    .await;
    let fine = raw(
        gw.addr,
        chunked_post("/x", "5\r\nhello\r\n0\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status_of(&fine), 200, "{fine}");
    assert_eq!(completed.load(Ordering::SeqCst), 1);
    let errors = upstream_errors();

    let answer = raw(
        gw.addr,
        chunked_post("/x", "5\r\nhello\r\nzz\r\nworld\r\n0\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status_of(&answer), 400, "{answer}");
    assert_eq!(json_body(&answer)["error"], "bad_request");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        completed.load(Ordering::SeqCst),
        1,
        "the upstream saw it whole"
    );
    assert_eq!(upstream_errors(), errors, "counted as an upstream error");
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
