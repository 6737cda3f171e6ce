//! Issue 7: hot reload of gateway.toml through `authgate reload` (pid file)
//! and SIGHUP, without dropping an in-flight request.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::process::{log_line, run_authgate, serve_command, AuthgateProcess};
use support::{
    client, closed_port, password_grant, raw, status_of, tokens, user, users_toml, TestGateway,
    Upstream, SECRET_ENV,
};

fn config(port: u16, routes: &str, extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\n{routes}\n[users]\nbcrypt_cost = 4\n[cookies]\nsecure = false\n{extra}"
    )
}

fn route(prefix: &str, upstream: &Upstream, auth: &str) -> String {
    format!("[[routes]]\nprefix = \"{prefix}\"\nupstream = \"{}\"\nauth = \"{auth}\"\nstrip_prefix = true\n", upstream.url())
}

async fn wait_for(mut check: impl AsyncFnMut() -> bool, what: &str) {
    for _ in 0..100 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_routes_and_identity_without_dropping_requests() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("users.toml"),
        users_toml(&[user("alice", "alice-pw", &["dev"])]),
    )
    .unwrap();
    let path = dir.path().join("gateway.toml");
    let port = closed_port();
    std::fs::write(&path, config(port, &route("/a", &a, "public"), "")).unwrap();
    let log = std::fs::File::create(dir.path().join("log")).unwrap();
    let mut command = serve_command(&path);
    // Info level: the reload events are asserted in the log below.
    command.env("RUST_LOG", "info").stderr(Stdio::from(log));
    let mut gw = AuthgateProcess::spawn(command, port).await;
    assert!(dir.path().join("authgate.pid").exists(), "no pid file");
    assert_eq!(
        client().get(gw.url("/b/x")).send().await.unwrap().status(),
        404
    );

    // A slow request in flight across the reload.
    let slow_url = gw.url("/a/slow/1500");
    let in_flight =
        tokio::spawn(async move { client().get(slow_url).send().await.map(|r| r.status()) });
    wait_for(async || a.count() == 1, "the slow request at the upstream").await;

    // New route, renamed identity header, and a listen change (restart only).
    let routes = format!(
        "{}{}",
        route("/a", &a, "public"),
        route("/b", &b, "required")
    );
    std::fs::write(
        &path,
        config(closed_port(), &routes, "[identity]\nuser = \"X-User\"\n"),
    )
    .unwrap();
    let out = run_authgate(&path, &["reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    wait_for(
        async || {
            client()
                .get(gw.url("/b/x"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 401)
        },
        "the new route",
    )
    .await;
    assert_eq!(
        in_flight.await.unwrap().unwrap(),
        200,
        "the in-flight request was dropped"
    );
    // Still on the old port: listen needs a restart.
    let token = tokens(password_grant(gw.url("/token"), "alice", "alice-pw").await)
        .await
        .access;
    let response = client()
        .get(gw.url("/b/x"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(b.last().headers["x-user"], "alice");
    assert!(b.last().headers.get("x-auth-user").is_none());

    // A broken file is refused by `reload` and by a raw SIGHUP alike.
    std::fs::write(
        &path,
        config(port, &routes, "[identity]\nuser = \"X User\"\n"),
    )
    .unwrap();
    let out = run_authgate(&path, &["reload"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("identity.user"));
    let pid = std::fs::read_to_string(dir.path().join("authgate.pid")).unwrap();
    assert!(Command::new("kill")
        .args(["-HUP", pid.trim()])
        .status()
        .unwrap()
        .success());
    // `reload` refused without signalling: this line is the SIGHUP's.
    log_line(&dir.path().join("log"), "config_reload_failed").await;
    let response = client()
        .get(gw.url("/b/x"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "the running configuration was lost");
    assert_eq!(b.last().headers["x-user"], "alice");

    let log = std::fs::read_to_string(dir.path().join("log")).unwrap();
    assert!(log.contains("config_reloaded"), "{log}");
    assert!(
        log.contains("config_restart_needed") && log.contains("server.listen"),
        "{log}"
    );
    assert!(log.contains("config_reload_failed"), "{log}");

    // The pid file goes with the process.
    gw.terminate().await;
    assert!(!dir.path().join("authgate.pid").exists());
}

/// A whole gateway.toml for an in-process gateway: `[server]` keys, then
/// routes; the users file, secret and cookies the test support expects.
fn in_process_config(server: &str, routes: &str) -> String {
    format!(
        "[server]\n{server}\n{routes}\n[jwt]\nsecret_env = \"{SECRET_ENV}\"\n\
         [users]\npath = \"users.toml\"\nbcrypt_cost = 4\n[cookies]\nsecure = false\n"
    )
}

fn public_route(prefix: &str, upstream: &str) -> String {
    format!("[[routes]]\nprefix = \"{prefix}\"\nupstream = \"{upstream}\"\nauth = \"public\"\n")
}

/// Rewrites the gateway's file and reloads it as SIGHUP does; returns the
/// settings that wait for a restart.
async fn reload_with(gw: &TestGateway, toml: &str) -> Vec<&'static str> {
    std::fs::write(gw.path("gateway.toml"), format!("{toml}{}", support::AUDIT)).unwrap();
    authgate::gateway::reload(&gw.gateway).await.unwrap()
}

/// A GET whose head is `bytes` long, give or take a few, with one large header.
async fn status_of_head(addr: SocketAddr, bytes: usize) -> u16 {
    let start = "GET /a/x HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\nX-Filler: ";
    let filler = "f".repeat(bytes - start.len() - 4);
    status_of(&raw(addr, format!("{start}{filler}\r\n\r\n").as_bytes()).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_running_head_limit_everywhere_and_names_it() {
    let upstream = Upstream::start("a").await;
    let routes = public_route("/a", &upstream.url());
    let gw = TestGateway::start(&in_process_config("max_header_bytes = 4096", &routes), &[]).await;
    assert_eq!(status_of_head(gw.addr, 3000).await, 200);
    assert_eq!(status_of_head(gw.addr, 6000).await, 431);

    let restart = reload_with(
        &gw,
        &in_process_config("max_header_bytes = 8192\nrequest_timeout = \"7s\"", &routes),
    )
    .await;
    assert_eq!(restart, ["server.max_header_bytes"]);
    // The head between the old and the new limit gets the answer it got
    // before: the pipeline and hyper both still use the running limit.
    assert_eq!(status_of_head(gw.addr, 6000).await, 431);
    assert_eq!(status_of_head(gw.addr, 3000).await, 200);
    let current = gw.gateway.load();
    assert_eq!(current.config.server.max_header_bytes, 4096);
    // The rest of the file is applied.
    assert_eq!(
        current.config.server.request_timeout,
        Duration::from_secs(7)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_sends_a_route_to_its_new_upstream() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let gw = TestGateway::start(&in_process_config("", &public_route("/a", &a.url())), &[]).await;
    assert_eq!(gw.get("/a/x").await.status(), 200);
    assert_eq!((a.count(), b.count()), (1, 0));

    let restart = reload_with(&gw, &in_process_config("", &public_route("/a", &b.url()))).await;
    assert!(restart.is_empty(), "{restart:?}");
    let answer: serde_json::Value = gw.get("/a/x").await.json().await.unwrap();
    assert_eq!(answer["upstream"], "b");
    assert_eq!((a.count(), b.count()), (1, 1));
}

/// An upstream that answers 200 to everything and counts the connections
/// it accepted.
async fn counting_upstream() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(
                hyper_util::rt::TokioIo::new(stream),
                hyper::service::service_fn(|_| async {
                    Ok::<_, Infallible>(http::Response::new(http_body_util::Full::new(
                        bytes::Bytes::from_static(b"ok"),
                    )))
                }),
            ));
        }
    });
    (url, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_sessions_and_warm_upstream_connections() {
    let (warm, accepted) = counting_upstream().await;
    let other = Upstream::start("other").await;
    let gw = TestGateway::start(
        &in_process_config("", &public_route("/warm", &warm)),
        &[user("alice", "alice-pw", &["dev"])],
    )
    .await;
    let before = tokens(gw.password_grant("alice", "alice-pw").await).await;
    for _ in 0..2 {
        assert_eq!(gw.get("/warm/x").await.status(), 200);
        // Time for the connection to go back to the gateway's pool.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);

    // Another route, another identity header, a new upstream: none of it
    // concerns the warm pool or the session store.
    let routes = format!(
        "{}{}",
        public_route("/warm", &warm),
        public_route("/other", &other.url())
    );
    let restart = reload_with(
        &gw,
        &format!(
            "{}[identity]\nuser = \"X-User\"\n",
            in_process_config("", &routes)
        ),
    )
    .await;
    assert!(restart.is_empty(), "{restart:?}");
    assert_eq!(gw.get("/other/x").await.status(), 200);
    assert_eq!(gw.get("/warm/x").await.status(), 200);
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "the reload dropped the warm upstream connection"
    );
    // The refresh token of the login before the reload still rotates: the
    // in-memory session store survived it.
    let refreshed = gw.refresh_grant(&before.refresh).await;
    assert_eq!(refreshed.status(), 200, "the session was lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_equal_configuration_reports_nothing_and_changes_nothing() {
    let upstream = Upstream::start("a").await;
    let toml = in_process_config(
        "max_header_bytes = 4096\nmax_connections = 100",
        &public_route("/a", &upstream.url()),
    );
    let gw = TestGateway::start(&toml, &[]).await;
    let before = gw.gateway.load_full();
    // Moved down two lines: equal settings wherever they are written.
    let restart = reload_with(&gw, &format!("# reloaded\n\n{toml}")).await;
    assert!(restart.is_empty(), "{restart:?}");
    let after = gw.gateway.load_full();
    assert!(!Arc::ptr_eq(&before, &after), "the gateway was not swapped");
    assert_eq!(after.config, before.config);
    assert!(Arc::ptr_eq(&after.sessions, &before.sessions));
    assert!(Arc::ptr_eq(&after.users, &before.users));
    assert_eq!(gw.get("/a/x").await.status(), 200);
}
