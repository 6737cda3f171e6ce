//! The second factor (TOTP): enrolled through the CLI, then logins through
//! real gateways on the users file, PostgreSQL and Redis. Codes are computed
//! here from the URI the CLI printed; the gateway's clock is moved where a
//! step boundary matters.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use authgate::clock::Clock;
use authgate::totp::{self, Secret};
use support::postgres::{self as pg, PgSchema};
use support::process::run_authgate;
use support::{client, redis_prefix, user, users_toml, TestGateway, TOTP_KEY, TOTP_KEY_ENV};

const USERS: &str = "\n[users]\npath = \"users.toml\"\nbcrypt_cost = 4\ntotp_key_env = \"AUTHGATE_TEST_TOTP_KEY\"\n";

/// The code of `step`, as an authenticator app shows it.
fn code(secret: &Secret, step: u64) -> String {
    format!("{:06}", secret.code_at(step))
}

/// A six-digit code that is none of the codes accepted around `step`.
fn wrong_code(secret: &Secret, step: u64) -> String {
    let valid: Vec<String> = (step - 2..=step + 2).map(|s| code(secret, s)).collect();
    (0..)
        .map(|n: u32| format!("{:06}", (secret.code_at(step) + 1 + n) % 1_000_000))
        .find(|c| !valid.contains(c))
        .unwrap()
}

/// Moves `clock` to the start of a step when less than 10 s of the current
/// one are left, so a test's code cannot change step under it.
fn settle(clock: &Clock) -> u64 {
    settle_all(&[clock])
}

/// [`settle`] for gateways whose clocks must agree: each moved as much as
/// the first one needs.
fn settle_all(clocks: &[&Clock]) -> u64 {
    let into = clocks[0].unix_millis() % (totp::PERIOD * 1000);
    if into > (totp::PERIOD - 10) * 1000 {
        let by = Duration::from_millis(totp::PERIOD * 1000 - into + 100);
        for clock in clocks {
            clock.advance(by);
        }
    }
    clocks[0].unix_secs() / totp::PERIOD
}

/// `authgate users totp enroll USERNAME`, answering its prompt with the
/// current code of the URI it printed (one line on stdin, as a script
/// does). Returns the secret, what the command printed and the step of the
/// code it typed.
fn enroll(dir: &Path, username: &str, extra_env: &[(&str, String)]) -> (Secret, String, u64) {
    let (secret, printed, step, out) = try_enroll(dir, username, extra_env);
    assert!(
        out.status.success(),
        "enroll failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (secret, printed, step)
}

/// Runs `enroll`, typing the code of the current step: the secret, what it
/// printed, the code's step and how the command ended.
fn try_enroll(
    dir: &Path,
    username: &str,
    extra_env: &[(&str, String)],
) -> (Secret, String, u64, std::process::Output) {
    let mut command = Command::new(support::binary());
    command
        .current_dir(dir)
        .arg("-c")
        .arg(dir.join("gateway.toml"))
        .args(["users", "totp", "enroll", username])
        .env(TOTP_KEY_ENV, TOTP_KEY)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in extra_env {
        command.env(name, value);
    }
    let mut child = command.spawn().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut printed = String::new();
    let secret = loop {
        let mut line = String::new();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "enroll printed no URI: {printed}"
        );
        printed.push_str(&line);
        if line.starts_with("otpauth://") {
            break totp::secret_of_uri(line.trim()).expect("a secret in the URI");
        }
    };
    let now = Clock::system().unix_secs() / totp::PERIOD;
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "{}", code(&secret, now)).unwrap();
    drop(stdin);
    std::io::Read::read_to_string(&mut stdout, &mut printed).unwrap();
    (secret, printed, now, child.wait_with_output().unwrap())
}

async fn grant(gw: &TestGateway, fields: &[(&str, &str)]) -> (u16, Value) {
    let response = client()
        .post(gw.url("/token"))
        .form(fields)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn with_code(gw: &TestGateway, username: &str, password: &str, otp: &str) -> (u16, Value) {
    grant(
        gw,
        &[("username", username), ("password", password), ("otp", otp)],
    )
    .await
}

/// alice logs in with the code of the gateway's current step.
async fn logs_in_with_the_current_code(gw: &TestGateway, secret: &Secret) {
    let step = settle(&gw.clock);
    let answer = with_code(gw, "alice", "alice-pw", &code(secret, step)).await;
    assert_eq!(answer.0, 200, "{answer:?}");
}

fn assert_otp_answer(answer: &(u16, Value), description: &str) {
    assert_eq!(answer.0, 401, "{answer:?}");
    assert_eq!(answer.1["error"], "invalid_grant", "{answer:?}");
    assert_eq!(answer.1["error_description"], description, "{answer:?}");
    assert_eq!(answer.1["detail"], description, "{answer:?}");
}

/// A users-file directory with alice and bob, alice enrolled through the CLI.
fn enrolled_dir() -> (tempfile::TempDir, Secret, String) {
    support::init();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("users.toml"),
        users_toml(&[
            user("alice", "alice-pw", &["dev"]),
            user("bob", "bob-pw", &[]),
        ]),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("gateway.toml"),
        format!(
            "{USERS}\n[jwt]\nsecret_env = \"{}\"\n[cookies]\nsecure = false\n{}",
            support::SECRET_ENV,
            support::AUDIT
        ),
    )
    .unwrap();
    let (secret, printed, _) = enroll(dir.path(), "alice", &[]);
    (dir, secret, printed)
}

#[tokio::test]
async fn enroll_through_the_cli_then_log_in_with_a_code() {
    let (dir, secret, printed) = enrolled_dir();
    // The URI names the issuer ([jwt] issuer) and the user; a QR code
    // is drawn above it.
    assert!(
        printed.contains("otpauth://totp/authgate:alice?secret="),
        "{printed}"
    );
    assert!(printed.contains("&issuer=authgate&"), "{printed}");
    assert!(printed.contains('█'), "{printed}");
    assert!(
        printed.contains("enrolled a second factor for alice"),
        "{printed}"
    );
    // Stored sealed: never the secret itself.
    let file = std::fs::read_to_string(dir.path().join("users.toml")).unwrap();
    assert!(file.contains("totp = \"v1:"), "{file}");
    assert!(!file.contains(&secret.base32()), "{file}");
    let list = run_authgate(&dir.path().join("gateway.toml"), &["users", "list"]);
    let list = String::from_utf8_lossy(&list.stdout).into_owned();
    assert!(
        list.lines()
            .any(|l| l.starts_with("alice\t") && l.ends_with("\ttotp")),
        "{list}"
    );
    assert!(
        list.lines()
            .any(|l| l.starts_with("bob\t") && !l.contains("totp")),
        "{list}"
    );

    // Each failure below counts in the throttle.
    let gw = TestGateway::start_keeping_users(dir, "[auth.throttle]\nmax_failures = 20\n").await;
    let step = settle(&gw.clock);

    // Right password, no code.
    let answer = grant(&gw, &[("username", "alice"), ("password", "alice-pw")]).await;
    assert_otp_answer(&answer, "one-time code required");
    assert!(answer.1.get("access_token").is_none());
    // Wrong code.
    let answer = with_code(&gw, "alice", "alice-pw", &wrong_code(&secret, step)).await;
    assert_otp_answer(&answer, "invalid one-time code");
    let answer = with_code(&gw, "alice", "alice-pw", "12345x").await;
    assert_otp_answer(&answer, "invalid one-time code");

    // A wrong password answers as it does for a user without a second
    // factor, code or not.
    let plain = grant(&gw, &[("username", "bob"), ("password", "wrong")]).await;
    assert_eq!(plain.0, 401);
    for fields in [
        vec![("username", "alice"), ("password", "wrong")],
        vec![
            ("username", "alice"),
            ("password", "wrong"),
            ("otp", "123456"),
        ],
    ] {
        let answer = grant(&gw, &fields).await;
        assert_eq!(answer, plain, "{fields:?}");
    }

    // The right code, as a JSON key this time: logged in.
    let response = client()
        .post(gw.url("/token"))
        .json(&serde_json::json!({"username": "alice", "password": "alice-pw", "otp": code(&secret, step)}))
        .send()
        .await
        .unwrap();
    let tokens = support::tokens(response).await;
    assert_eq!(gw.userinfo(&tokens.access).await["sub"], "alice");
    // A refresh needs no code.
    let refreshed = support::tokens(gw.refresh_grant(&tokens.refresh).await).await;
    assert_eq!(gw.userinfo(&refreshed.access).await["sub"], "alice");
    // bob has no second factor: as before.
    support::tokens(gw.password_grant("bob", "bob-pw").await).await;

    // The audit trail (the CLI and the gateway share the folder's
    // audit.log): each event once, by the action that caused it, and no
    // code or secret in it.
    gw.saw_secret(secret.base32());
    for offset in -1..=1 {
        gw.saw_secret(code(&secret, step.wrapping_add_signed(offset)));
    }
    let remove = run_authgate(
        &gw.path("gateway.toml"),
        &["users", "totp", "remove", "alice"],
    );
    assert!(remove.status.success(), "{remove:?}");
    let lines = gw.audit_lines();
    let of = |event: &str, reason: Option<&str>| -> Vec<&Value> {
        lines
            .iter()
            .filter(|l| l["event"] == event && reason.is_none_or(|r| l["reason"] == r))
            .collect()
    };
    for (event, reason, count) in [
        ("totp_enrolled", None, 1),
        ("login_failed", Some("otp_required"), 1),
        ("login_failed", Some("otp_invalid"), 2),
        ("login_failed", Some("bad_credentials"), 3),
        ("login_succeeded", None, 2),
        ("token_refreshed", Some("explicit"), 1),
        ("totp_removed", None, 1),
    ] {
        let found = of(event, reason);
        assert_eq!(found.len(), count, "{event} {reason:?}: {lines:#?}");
    }
    for event in ["totp_enrolled", "totp_removed"] {
        assert_eq!(of(event, None)[0]["user"], "alice");
    }
    for line in of("login_failed", None) {
        let user = &line["user"];
        assert!(user == "alice" || user == "bob", "{line}");
    }
}

#[tokio::test]
async fn each_code_once_within_one_step_of_tolerance() {
    let (dir, secret, _) = enrolled_dir();
    let gw = TestGateway::start_keeping_users(dir, "").await;
    let step = settle(&gw.clock);
    let login = |otp: String| {
        let gw = &gw;
        async move { with_code(gw, "alice", "alice-pw", &otp).await }
    };
    // One step behind is accepted...
    assert_eq!(login(code(&secret, step - 1)).await.0, 200);
    // ... once.
    assert_otp_answer(
        &login(code(&secret, step - 1)).await,
        "invalid one-time code",
    );
    // The current step's code is newer: accepted, then refused.
    assert_eq!(login(code(&secret, step)).await.0, 200);
    assert_otp_answer(&login(code(&secret, step)).await, "invalid one-time code");
    // Two steps later, the step before is still good, once.
    gw.clock.advance(Duration::from_secs(2 * totp::PERIOD));
    assert_eq!(login(code(&secret, step + 1)).await.0, 200);
    assert_otp_answer(
        &login(code(&secret, step + 1)).await,
        "invalid one-time code",
    );
    // A code two steps old was never used, and is refused all the same.
    gw.clock.advance(Duration::from_secs(2 * totp::PERIOD));
    assert_otp_answer(
        &login(code(&secret, step + 2)).await,
        "invalid one-time code",
    );
    // One step ahead (a phone running fast) is accepted.
    assert_eq!(login(code(&secret, step + 5)).await.0, 200);
}

#[tokio::test]
async fn failed_codes_count_in_the_login_throttle() {
    let (dir, secret, _) = enrolled_dir();
    let gw = TestGateway::start_keeping_users(
        dir,
        "[auth.throttle]\nmax_failures = 3\nwindow = \"5m\"\nban = \"10m\"\nip_max_failures = 0\n",
    )
    .await;
    let step = settle(&gw.clock);
    // Asking for the code is no failure, and does not reset the count.
    let answer = grant(&gw, &[("username", "alice"), ("password", "alice-pw")]).await;
    assert_otp_answer(&answer, "one-time code required");
    for _ in 0..2 {
        let answer = with_code(&gw, "alice", "alice-pw", &wrong_code(&secret, step)).await;
        assert_otp_answer(&answer, "invalid one-time code");
    }
    // The budget of 3 is used: even the right code is refused now.
    let answer = with_code(&gw, "alice", "alice-pw", &code(&secret, step)).await;
    assert_eq!(answer.0, 429, "{answer:?}");
    assert_eq!(answer.1["error"], "too_many_requests");
    // Once the ban has run out, the right code logs in.
    gw.clock.advance(Duration::from_secs(11 * 60));
    logs_in_with_the_current_code(&gw, &secret).await;
}

/// A users file with alice's secret sealed by the test key.
fn sealed_users(secret: &Secret) -> String {
    let sealed = support::totp_key().seal("alice", secret);
    format!(
        "{}totp = \"{sealed}\"\n",
        users_toml(&[user("alice", "alice-pw", &[])])
    )
}

#[tokio::test]
async fn a_code_is_refused_on_a_second_instance_sharing_redis() {
    support::init();
    let secret = Secret::generate();
    let prefix = redis_prefix("totp-replay");
    let toml = format!(
        "{USERS}\n[sessions]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:6379\"\nkey_prefix = \"{prefix}\"\n"
    );
    let start = |toml: String| {
        let secret = secret.clone();
        async move {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("users.toml"), sealed_users(&secret)).unwrap();
            TestGateway::start_keeping_users(dir, &toml).await
        }
    };
    let one = start(toml.clone()).await;
    let two = start(toml).await;
    // Neither clock has moved yet: both read the system time.
    let step = settle_all(&[&one.clock, &two.clock]);
    let otp = code(&secret, step);
    let answer = with_code(&one, "alice", "alice-pw", &otp).await;
    assert_eq!(answer.0, 200, "{answer:?}");
    assert_otp_answer(
        &with_code(&two, "alice", "alice-pw", &otp).await,
        "invalid one-time code",
    );
    assert_otp_answer(
        &with_code(&one, "alice", "alice-pw", &otp).await,
        "invalid one-time code",
    );
    // The next step's code, on the second instance: accepted.
    assert_eq!(
        with_code(&two, "alice", "alice-pw", &code(&secret, step + 1))
            .await
            .0,
        200
    );
}

/// A users-file directory with alice (no second factor yet) whose
/// gateway.toml adds `sessions` (a `[sessions]` table).
fn alice_dir_with(sessions: &str) -> tempfile::TempDir {
    support::init();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("users.toml"),
        users_toml(&[user("alice", "alice-pw", &[])]),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("gateway.toml"),
        format!(
            "{USERS}{sessions}\n[jwt]\nsecret_env = \"{}\"\n",
            support::SECRET_ENV
        ),
    )
    .unwrap();
    dir
}

/// The code that confirmed an enrollment was typed where others may have
/// seen it: with the sessions in Redis, the CLI uses it up, so a gateway
/// sharing that store refuses it for a login while its step is still
/// within the tolerance.
#[tokio::test]
async fn the_code_that_confirmed_enrollment_is_used_up_in_redis() {
    let prefix = redis_prefix("totp-enroll");
    let sessions = format!(
        "\n[sessions]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:6379\"\nkey_prefix = \"{prefix}\"\n"
    );
    let dir = alice_dir_with(&sessions);
    let (secret, _, step) = enroll(dir.path(), "alice", &[]);
    let gw = TestGateway::start_keeping_users(dir, &sessions).await;
    // The gateway's clock reads the system time: the enrollment's step or,
    // past a boundary since, the next one; the code stays within the
    // tolerance either way, so only the record can refuse it.
    assert!(gw.clock.unix_secs() / totp::PERIOD <= step + 1);
    assert_otp_answer(
        &with_code(&gw, "alice", "alice-pw", &code(&secret, step)).await,
        "invalid one-time code",
    );
    // The next step's code is a new one: accepted.
    let answer = with_code(&gw, "alice", "alice-pw", &code(&secret, step + 1)).await;
    assert_eq!(answer.0, 200, "{answer:?}");
}

/// Nothing is saved when the session store cannot record the confirming
/// code as used.
#[test]
fn enrollment_saves_nothing_when_redis_does_not_answer() {
    // A port nothing listens on.
    let dir = alice_dir_with(
        "\n[sessions]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:1\"\ntimeout = \"1s\"\n",
    );
    let (_, _, _, out) = try_enroll(dir.path(), "alice", &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("could not record the code as used") && stderr.contains("nothing saved"),
        "{stderr}"
    );
    let file = std::fs::read_to_string(dir.path().join("users.toml")).unwrap();
    assert!(!file.contains("totp"), "{file}");
}

#[tokio::test]
async fn serve_and_check_config_refuse_a_second_factor_without_its_key() {
    support::init();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("users.toml"),
        sealed_users(&Secret::generate()),
    )
    .unwrap();
    let config = |env: &str| {
        let path = dir.path().join(format!("{env}.toml"));
        std::fs::write(
            &path,
            format!(
                "[users]\npath = \"users.toml\"\nbcrypt_cost = 4\ntotp_key_env = \"{env}\"\n\
                 [jwt]\nsecret_env = \"{}\"\n",
                support::SECRET_ENV
            ),
        )
        .unwrap();
        path
    };
    std::env::set_var(
        "AUTHGATE_TEST_TOTP_OTHER_KEY",
        "b3RoZXItdG90cC1rZXktMzItYnl0ZXMtbG9uZy0wMTI=",
    );
    std::env::set_var("AUTHGATE_TEST_TOTP_SHORT_KEY", "c2hvcnQ=");
    for (env, says) in [
        ("AUTHGATE_TEST_TOTP_UNSET_KEY", "is not set"),
        ("AUTHGATE_TEST_TOTP_OTHER_KEY", "does not open"),
        ("AUTHGATE_TEST_TOTP_SHORT_KEY", "32 random bytes in base64"),
    ] {
        let path = config(env);
        let out = Command::new(support::binary())
            .arg("-c")
            .arg(&path)
            .arg("check-config")
            .env(support::SECRET_ENV, support::SECRET)
            .env(
                "AUTHGATE_TEST_TOTP_OTHER_KEY",
                std::env::var("AUTHGATE_TEST_TOTP_OTHER_KEY").unwrap(),
            )
            .env("AUTHGATE_TEST_TOTP_SHORT_KEY", "c2hvcnQ=")
            .env_remove("AUTHGATE_TEST_TOTP_UNSET_KEY")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{env}: {stderr}");
        assert!(
            stderr.contains(env) && stderr.contains(says),
            "{env}: {stderr}"
        );
        assert!(stderr.contains("users.totp_key_env"), "{env}: {stderr}");
        // serve refuses with the same words.
        let error =
            authgate::gateway::Gateway::build(authgate::config::Config::load(&path).unwrap())
                .await
                .unwrap_err();
        let error = format!("{error:#}");
        assert!(
            error.contains(env) && error.contains(says),
            "{env}: {error}"
        );
    }
    let out = run_authgate(&config(TOTP_KEY_ENV), &["check-config"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn a_reloaded_users_file_whose_second_factor_does_not_open_is_not_taken() {
    support::init();
    let secret = Secret::generate();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("users.toml"), sealed_users(&secret)).unwrap();
    let gw = TestGateway::start_keeping_users(dir, USERS).await;
    // bob arrives with a secret sealed under another key.
    let other = authgate::totp::TotpKey::new(&[5; 32], "X");
    let text = format!(
        "{}{}totp = \"{}\"\n",
        sealed_users(&secret),
        users_toml(&[user("bob", "bob-pw", &[])]),
        other.seal("bob", &Secret::generate())
    );
    std::fs::write(gw.path("users.toml"), text).unwrap();
    gw.gateway.load().users.reload();
    assert!(gw.gateway.load().users.find("bob").await.unwrap().is_none());
    logs_in_with_the_current_code(&gw, &secret).await;
}

#[tokio::test]
async fn postgres_enroll_login_and_remove() {
    support::init();
    let schema = PgSchema::new("totp").await;
    let dir = tempfile::tempdir().unwrap();
    let users = schema.users_toml(pg::shared_env()).replace(
        "[users]\n",
        "[users]\ntotp_key_env = \"AUTHGATE_TEST_TOTP_KEY\"\n",
    );
    std::fs::write(
        dir.path().join("gateway.toml"),
        format!("{users}\n[jwt]\nsecret_env = \"{}\"\n", support::SECRET_ENV),
    )
    .unwrap();
    let env = [(pg::URL_ENV, pg::url())];
    let cli = |args: &[&str]| {
        Command::new(support::binary())
            .arg("-c")
            .arg(dir.path().join("gateway.toml"))
            .args(args)
            .env(pg::URL_ENV, pg::url())
            .env(TOTP_KEY_ENV, TOTP_KEY)
            .output()
            .unwrap()
    };
    let out = cli(&["users", "migrate"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("migration 2 (totp)"));
    schema.insert(&[user("alice", "alice-pw", &[])]).await;
    let (secret, _, _) = enroll(dir.path(), "alice", &env);
    let stored: Option<String> = schema
        .client()
        .query_one(
            &format!(
                "SELECT totp_secret FROM \"{}\".users WHERE username = 'alice'",
                schema.name
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(stored.unwrap().starts_with("v1:"));
    let list = String::from_utf8_lossy(&cli(&["users", "list"]).stdout).into_owned();
    assert!(list.contains("alice\talice@example.com\t\ttotp"), "{list}");

    let gw = TestGateway::start(&users, &[]).await;
    let answer = grant(&gw, &[("username", "alice"), ("password", "alice-pw")]).await;
    assert_otp_answer(&answer, "one-time code required");
    logs_in_with_the_current_code(&gw, &secret).await;

    let out = cli(&["users", "totp", "remove", "alice"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    support::tokens(gw.password_grant("alice", "alice-pw").await).await;
}

#[tokio::test]
async fn a_mapped_table_refuses_enrollment() {
    support::init();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("gateway.toml"),
        format!(
            "[users]\nbackend = \"postgres\"\nurl_env = \"{}\"\ntable = \"accounts\"\n",
            pg::shared_env()
        ),
    )
    .unwrap();
    let out = Command::new(support::binary())
        .arg("-c")
        .arg(dir.path().join("gateway.toml"))
        .args(["users", "totp", "enroll", "alice"])
        .env(pg::URL_ENV, pg::url())
        .env(TOTP_KEY_ENV, TOTP_KEY)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("no place for a second factor"), "{stderr}");
}

/// The value of the hidden `ticket` field of a code page.
fn ticket_of(html: &str) -> String {
    let start = html.find("name=\"ticket\" value=\"").expect("a code page") + 21;
    html[start..].split('"').next().unwrap().to_string()
}

async fn form_page(gw: &TestGateway, fields: &[(&str, &str)]) -> (u16, String) {
    let response = client()
        .post(gw.url("/token"))
        .header("accept", "text/html")
        .form(fields)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// The sign-in form's second step carries a sealed ticket, not the
/// password; the ticket lasts five minutes and no longer than the password.
#[tokio::test]
async fn the_sign_in_ticket_expires_and_follows_the_password() {
    support::init();
    let secret = Secret::generate();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("users.toml"), sealed_users(&secret)).unwrap();
    let gw = TestGateway::start_keeping_users(dir, "").await;
    let first = [
        ("username", "alice"),
        ("password", "alice-pw"),
        ("rd", "/app/x"),
    ];
    let (status, page) = form_page(&gw, &first).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("One-time code"), "{page}");
    assert!(!page.contains("alice-pw"), "{page}");
    assert!(page.contains("name=\"rd\" value=\"/app/x\""), "{page}");
    let ticket = ticket_of(&page);

    // A wrong code: the code page again, same ticket, the error shown.
    let step = settle(&gw.clock);
    let wrong = wrong_code(&secret, step);
    let (status, page) = form_page(
        &gw,
        &[("ticket", &ticket), ("otp", &wrong), ("rd", "/app/x")],
    )
    .await;
    assert_eq!(status, 401);
    assert!(page.contains("invalid one-time code"), "{page}");
    assert_eq!(ticket_of(&page), ticket);

    // Five minutes later the ticket is refused, even with the right code.
    gw.clock.advance(Duration::from_secs(5 * 60));
    let step = settle(&gw.clock);
    let right = code(&secret, step);
    let (status, page) = form_page(
        &gw,
        &[("ticket", &ticket), ("otp", &right), ("rd", "/app/x")],
    )
    .await;
    assert_eq!(status, 401);
    assert!(page.contains("The sign-in has expired"), "{page}");
    assert!(
        page.contains("id=\"password\""),
        "back to the first step: {page}"
    );

    // A fresh ticket works, once the code is right: 303 to rd.
    let (_, page) = form_page(&gw, &first).await;
    let ticket = ticket_of(&page);
    let response = client()
        .post(gw.url("/token"))
        .header("accept", "text/html")
        .form(&[
            ("ticket", ticket.as_str()),
            ("otp", &right),
            ("rd", "/app/x"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/app/x");

    // A password changed since the ticket was issued voids it.
    let (_, page) = form_page(&gw, &first).await;
    let ticket = ticket_of(&page);
    let store = gw.gateway.load().users.clone();
    store
        .set_password("alice", &bcrypt::hash("new-pw", 4).unwrap())
        .await
        .unwrap();
    gw.clock.advance(Duration::from_secs(totp::PERIOD));
    let step = settle(&gw.clock);
    let (status, page) = form_page(
        &gw,
        &[
            ("ticket", &ticket),
            ("otp", &code(&secret, step)),
            ("rd", "/app/x"),
        ],
    )
    .await;
    assert_eq!(status, 401);
    assert!(page.contains("The sign-in has expired"), "{page}");
}
