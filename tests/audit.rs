//! Issue 22: the audit trail. Each event is written once by the action
//! that causes it, with who, from where and which session; real gateways,
//! real users file, real Redis, real `authgate` processes for the CLI and
//! the metric. (That no line holds a secret is checked for every test
//! gateway of every test binary when it is dropped: tests/support.)

mod support;

use std::time::Duration;

use serde_json::Value;
use support::process::{run_authgate, AuthgateProcess};
use support::{
    client, cookie_value, redis_prefix, set_cookies, tokens, two_ports, user, users_toml,
    TestGateway, TestUser, Upstream,
};

const AGENT: &str = "audit-test/1.0";
/// The client as the trusted proxy in front (127.0.0.1) names it.
const CLIENT_IP: &str = "203.0.113.9";

fn users() -> Vec<TestUser> {
    let mut dave = user("dave", "dave-pw-1", &[]);
    dave.disabled = true;
    vec![user("alice", "alice-pw-1", &["dev"]), dave]
}

/// A gateway behind a trusted proxy at 127.0.0.1, sessions in Redis under
/// a prefix of its own.
async fn gateway(upstream: &Upstream, extra: &str) -> TestGateway {
    let toml = format!(
        "[server]\ntrusted_proxies = [\"127.0.0.1\"]\n\
         [[routes]]\nprefix = \"/\"\nupstream = \"{}\"\n\
         [sessions]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:6379\"\nkey_prefix = \"{}\"\nreuse_grace = \"2s\"\n{extra}",
        upstream.url(),
        redis_prefix("audit"),
    );
    TestGateway::start(&toml, &users()).await
}

/// A request as a browser behind the proxy sends it.
fn post(gw: &TestGateway, path: &str) -> reqwest::RequestBuilder {
    client()
        .post(gw.url(path))
        .header("user-agent", AGENT)
        .header("x-forwarded-for", CLIENT_IP)
}

async fn grant(gw: &TestGateway, form: &[(&str, &str)]) -> reqwest::Response {
    post(gw, "/token").form(form).send().await.unwrap()
}

/// The lines of `event` only.
fn events(gw: &TestGateway, event: &str) -> Vec<Value> {
    gw.audit_lines()
        .into_iter()
        .filter(|line| line["event"] == event)
        .collect()
}

/// The one line of `event`, which must have been written exactly once.
fn only(gw: &TestGateway, event: &str) -> Value {
    let lines = events(gw, event);
    assert_eq!(lines.len(), 1, "{event}: {lines:#?}");
    lines.into_iter().next().unwrap()
}

/// The fields every event a request caused carries.
fn assert_from_request(line: &Value, response: &reqwest::Response) {
    assert_eq!(line["client_ip"], CLIENT_IP, "{line}");
    assert_eq!(line["user_agent"], AGENT, "{line}");
    assert_eq!(
        line["request_id"],
        response.headers()["x-request-id"].to_str().unwrap(),
        "{line}"
    );
    let time = line["time"].as_str().unwrap();
    assert!(humantime::parse_rfc3339(time).is_ok(), "{time}");
}

fn session_of(line: &Value) -> &str {
    let session = line["session"].as_str().expect("a session");
    assert_eq!(session.len(), 32, "{session}");
    assert!(session.bytes().all(|b| b.is_ascii_hexdigit()));
    session
}

#[tokio::test]
async fn logins_are_audited_with_who_where_and_why() {
    let upstream = Upstream::start("u").await;
    let gw = gateway(
        &upstream,
        "[auth.throttle]\nmax_failures = 3\nip_max_failures = 0\n",
    )
    .await;

    let ok = grant(&gw, &[("username", "alice"), ("password", "alice-pw-1")]).await;
    assert_eq!(ok.status(), 200);
    let line = only(&gw, "login_succeeded");
    assert_eq!(line["user"], "alice");
    assert_from_request(&line, &ok);
    let session = session_of(&line).to_string();
    assert!(line.get("reason").is_none(), "{line}");

    // Wrong password, unknown user, disabled user (right password): one
    // answer for the client, the reason only in the trail, and an unknown
    // user is a bad credential there too.
    let tries = [
        ("alice", "wrong-password-1", "bad_credentials"),
        ("nobody", "whatever-pw-1", "bad_credentials"),
        ("dave", "dave-pw-1", "disabled"),
    ];
    let mut bodies = Vec::new();
    for (i, (username, password, reason)) in tries.into_iter().enumerate() {
        let refused = grant(&gw, &[("username", username), ("password", password)]).await;
        assert_eq!(refused.status(), 401);
        let failed = events(&gw, "login_failed");
        assert_eq!(failed.len(), i + 1, "{failed:#?}");
        let line = &failed[i];
        assert_eq!(
            (&line["user"], &line["reason"]),
            (&username.into(), &reason.into())
        );
        assert_from_request(line, &refused);
        assert!(line.get("session").is_none());
        bodies.push(refused.text().await.unwrap());
    }
    assert!(bodies.iter().all(|b| b == &bodies[0]), "{bodies:?}");

    // Failures of alice's name go on until the throttle refuses it before
    // any password check.
    let mut throttled = None;
    for _ in 0..5 {
        let response = grant(
            &gw,
            &[("username", "alice"), ("password", "wrong-password-2")],
        )
        .await;
        if response.status() == 429 {
            throttled = Some(response);
            break;
        }
        assert_eq!(response.status(), 401);
    }
    let throttled = throttled.expect("alice's name was never throttled");
    let failed = events(&gw, "login_failed");
    let (last, before) = failed.split_last().unwrap();
    assert_eq!(last["reason"], "throttled");
    assert_eq!(last["user"], "alice");
    assert_from_request(last, &throttled);
    assert!(
        before.iter().all(|l| l["reason"] != "throttled"),
        "{before:#?}"
    );
    // Still only the one success, of the session first made.
    assert_eq!(session_of(&only(&gw, "login_succeeded")), session);
}

#[tokio::test]
async fn refreshes_reuse_and_logout_are_audited_with_their_session() {
    let upstream = Upstream::start("u").await;
    let gw = gateway(&upstream, "").await;
    let login = grant(&gw, &[("username", "alice"), ("password", "alice-pw-1")]).await;
    let first = tokens(login).await;
    let session = session_of(&only(&gw, "login_succeeded")).to_string();

    // An explicit refresh grant.
    let refreshed = grant(
        &gw,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &first.refresh),
        ],
    )
    .await;
    assert_eq!(refreshed.status(), 200);
    let headers = refreshed.headers().clone();
    let second = tokens(refreshed).await;
    let line = only(&gw, "token_refreshed");
    assert_eq!(
        (&line["user"], &line["reason"]),
        (&"alice".into(), &"explicit".into())
    );
    assert_eq!(session_of(&line), session);
    assert_eq!(line["client_ip"], CLIENT_IP);
    assert_eq!(
        line["request_id"],
        headers["x-request-id"].to_str().unwrap()
    );

    // A silent refresh: the access cookie has expired, the refresh cookie
    // renews it behind a proxied request.
    gw.clock.advance(Duration::from_secs(16 * 60));
    let silent = client()
        .get(gw.url("/app"))
        .header("user-agent", AGENT)
        .header("x-forwarded-for", CLIENT_IP)
        .header(
            "cookie",
            format!(
                "access_token={}; refresh_token={}",
                second.access, second.refresh
            ),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(silent.status(), 200);
    let renewed = cookie_value(&set_cookies(silent.headers()), "refresh_token").unwrap();
    let refreshes = events(&gw, "token_refreshed");
    assert_eq!(refreshes.len(), 2, "{refreshes:#?}");
    assert_eq!(refreshes[1]["reason"], "silent");
    assert_eq!(refreshes[1]["user"], "alice");
    assert_eq!(session_of(&refreshes[1]), session);
    assert_from_request(&refreshes[1], &silent);

    // The first refresh token, retired long ago, replayed: the family is
    // revoked, once.
    let replay = grant(
        &gw,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &first.refresh),
        ],
    )
    .await;
    assert_eq!(replay.status(), 400);
    let line = only(&gw, "refresh_reuse_detected");
    assert_eq!(line["user"], "alice");
    assert_eq!(session_of(&line), session);
    assert_eq!(line["reason"], "family_revoked");
    assert_from_request(&line, &replay);
    assert_eq!(events(&gw, "token_refreshed").len(), 2);

    // A new session, ended by logout.
    let again =
        tokens(grant(&gw, &[("username", "alice"), ("password", "alice-pw-1")]).await).await;
    let logins = events(&gw, "login_succeeded");
    let new_session = session_of(&logins[1]).to_string();
    assert_ne!(new_session, session);
    let logout = post(&gw, "/logout")
        .form(&[("refresh_token", again.refresh.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), 204);
    let line = only(&gw, "logout");
    assert_eq!(line["user"], "alice");
    assert_eq!(session_of(&line), new_session);
    assert_from_request(&line, &logout);
    // A second logout of the same token ends nothing and says nothing.
    let _ = post(&gw, "/logout")
        .form(&[("refresh_token", again.refresh.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(events(&gw, "logout").len(), 1);
    // The renewed token of the revoked family is refused without an event
    // of its own: the family is already gone.
    let _ = grant(
        &gw,
        &[("grant_type", "refresh_token"), ("refresh_token", &renewed)],
    )
    .await;
    assert_eq!(events(&gw, "refresh_reuse_detected").len(), 1);
}

#[tokio::test]
async fn every_reload_is_audited_with_its_outcome() {
    let upstream = Upstream::start("u").await;
    let gw = gateway(&upstream, "").await;
    let config = gw.path("gateway.toml");
    let good = std::fs::read_to_string(&config).unwrap();
    authgate::gateway::reload(&gw.gateway).await.unwrap();
    let line = only(&gw, "config_reloaded");
    assert_eq!(line["reason"], "ok");

    std::fs::write(&config, format!("{good}\n[server]\nlisten = \"nope\"\n")).unwrap();
    let refused = authgate::gateway::reload(&gw.gateway).await.unwrap_err();
    let lines = events(&gw, "config_reloaded");
    assert_eq!(lines.len(), 2, "{lines:#?}");
    let reason = lines[1]["reason"].as_str().unwrap();
    assert_eq!(reason, format!("{refused:#}"));
    assert!(reason.contains("gateway.toml"), "{reason}");
}

/// `gateway.toml` for a spawned authgate: file users, Redis sessions, the
/// audit trail in `audit.log`, metrics on `admin`.
fn process_config(port: u16, admin: u16, prefix: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\n\
         [admin]\nlisten = \"127.0.0.1:{admin}\"\n\
         [users]\npath = \"users.toml\"\nbcrypt_cost = 4\n\
         [cookies]\nsecure = false\n\
         [sessions]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:6379\"\nkey_prefix = \"{prefix}\"\n\
         [audit]\ntarget = \"file\"\npath = \"audit.log\"\n"
    )
}

fn file_lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn run_with_stdin(config: &std::path::Path, args: &[&str], stdin: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = std::process::Command::new(support::binary())
        .arg("-c")
        .arg(config)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_commands_write_to_the_configured_trail_and_events_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("users.toml"), users_toml(&users())).unwrap();
    let (port, admin) = two_ports();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        process_config(port, admin, &redis_prefix("audit-cli")),
    )
    .unwrap();
    let audit = dir.path().join("audit.log");

    let added = run_with_stdin(
        &config,
        &["users", "add", "erin", "--password-stdin"],
        "erin-pw-123\n",
    );
    assert!(added.status.success(), "{added:?}");
    let changed = run_with_stdin(
        &config,
        &["users", "passwd", "erin", "--password-stdin"],
        "erin-pw-456\n",
    );
    assert!(changed.status.success(), "{changed:?}");
    let lines = file_lines(&audit);
    let names: Vec<&str> = lines.iter().map(|l| l["event"].as_str().unwrap()).collect();
    assert_eq!(names, ["user_created", "user_changed"]);
    assert!(lines
        .iter()
        .all(|l| l["user"] == "erin" && l.get("client_ip").is_none()));

    // The gateway: a login, a failed one, then the metric counts each once.
    let mut gw = AuthgateProcess::start(&config, port).await;
    assert_eq!(
        support::password_grant(gw.url("/token"), "erin", "erin-pw-456")
            .await
            .status(),
        200
    );
    assert_eq!(
        support::password_grant(gw.url("/token"), "erin", "erin-pw-123")
            .await
            .status(),
        401
    );
    let metrics = client()
        .get(format!("http://127.0.0.1:{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (event, count) in [("login_succeeded", 1), ("login_failed", 1), ("logout", 0)] {
        let expected = format!("authgate_audit_events_total{{event=\"{event}\"}} {count}\n");
        assert!(metrics.contains(&expected), "{expected}\n{metrics}");
    }

    // The gateway's writer gathers lines for up to 50 ms: the CLI's events
    // come after its own.
    for _ in 0..100 {
        if file_lines(&audit).len() == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let revoked = run_authgate(&config, &["sessions", "revoke", "erin"]);
    assert!(revoked.status.success(), "{revoked:?}");
    let deleted = run_authgate(&config, &["users", "del", "erin"]);
    assert!(deleted.status.success(), "{deleted:?}");
    gw.terminate().await;

    let lines = file_lines(&audit);
    let names: Vec<&str> = lines.iter().map(|l| l["event"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "user_created",
            "user_changed",
            "login_succeeded",
            "login_failed",
            "sessions_revoked",
            "user_deleted"
        ]
    );
    assert_eq!(lines[4]["reason"], "1 session(s)");
    assert_eq!(lines[4]["user"], "erin");
    assert_eq!(lines[5]["user"], "erin");
    let text = std::fs::read_to_string(&audit).unwrap();
    for secret in ["erin-pw-123", "erin-pw-456", support::SECRET] {
        assert!(!text.contains(secret), "{secret} in\n{text}");
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&audit).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode & !0o640, 0, "audit.log is {mode:o}");
}

/// The check every test gateway runs when dropped does fail on a secret.
#[tokio::test]
#[should_panic(expected = "the audit trail holds the secret")]
async fn the_drop_check_finds_a_secret_in_the_trail() {
    let upstream = Upstream::start("u").await;
    let gw = gateway(&upstream, "").await;
    gw.saw_secret("123456");
    let _ = grant(&gw, &[("username", "alice"), ("password", "alice-pw-1")]).await;
    let mut text = std::fs::read_to_string(gw.path("audit.log")).unwrap();
    text.push_str("{\"event\":\"planted\",\"reason\":\"code 123456\"}\n");
    std::fs::write(gw.path("audit.log"), text).unwrap();
    drop(gw);
}
