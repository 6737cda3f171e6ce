//! Issue 7: hot reload of gateway.toml through `authgate reload` (pid file)
//! and SIGHUP, without dropping an in-flight request.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::process::{run_authgate, serve_command, AuthgateProcess};
use support::{client, closed_port, password_grant, tokens, user, users_toml, Upstream};

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
    tokio::time::sleep(Duration::from_millis(200)).await;

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
    tokio::time::sleep(Duration::from_millis(500)).await;
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
