//! Issue 9: the PostgreSQL user store against the real server, a fresh
//! schema per test: migrations, the CLI, refresh re-reading the table,
//! mapped existing tables, and outages (a closed port, a relay taken down
//! and brought back, connections terminated by the server).

mod support;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};
use support::postgres::{self as pg, PgSchema, Relay};
use support::{client, now, sign_hs256, tokens, user, TestGateway, Upstream, SECRET};

use authgate::config::Config;
use authgate::gateway::Gateway;

fn routes(up: &Upstream) -> String {
    format!(
        "[[routes]]\nprefix = \"/api\"\nupstream = \"{}\"\nauth = \"required\"\n",
        up.url()
    )
}

/// A gateway whose users live in `schema`, its URL read from `url_env`,
/// with `/api` proxied to a recording upstream.
async fn gateway(schema: &PgSchema, url_env: &str) -> (Upstream, TestGateway) {
    let up = Upstream::start("api").await;
    let toml = format!("{}{}", routes(&up), schema.users_toml(url_env));
    (up, TestGateway::start(&toml, &[]).await)
}

/// Runs the authgate binary with `dir/gateway.toml` and the test database
/// URL in its environment; `stdin` is piped in when given.
fn cli(dir: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(support::binary())
        .current_dir(dir)
        .arg("-c")
        .arg(dir.join("gateway.toml"))
        .args(args)
        .env(pg::URL_ENV, pg::url())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A directory with a gateway.toml whose users live in `schema`.
fn config_dir(schema: &PgSchema, extra: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("gateway.toml"),
        format!("{}{extra}", schema.users_toml(pg::URL_ENV)),
    )
    .unwrap();
    dir
}

/// Builds a gateway in-process, for start-up outcomes.
async fn build(toml: &str) -> anyhow::Result<Gateway> {
    support::init();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        format!("{toml}\n[jwt]\nsecret_env = \"{}\"\n", support::SECRET_ENV),
    )
    .unwrap();
    Gateway::build(Config::load(&path).unwrap()).await
}

async fn readyz(gw: &TestGateway) -> (u16, Value) {
    let response = gw.get("/readyz").await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// 503 `temporarily_unavailable`: neither a 500 nor a pass.
async fn assert_unavailable(response: reqwest::Response) {
    assert_eq!(response.status(), 503);
    assert!(response.headers().get("retry-after").is_some());
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "temporarily_unavailable");
}

async fn get_api(gw: &TestGateway, token: &str) -> reqwest::Response {
    client()
        .get(gw.url("/api/data"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn migrate_twice_is_idempotent() {
    let schema = PgSchema::new("migrate").await;
    let dir = config_dir(&schema, "");
    let first = cli(dir.path(), &["users", "migrate"], None);
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(
        stdout(&first).contains("applied migration 1 (users), migration 2 (totp)"),
        "{}",
        stdout(&first)
    );
    let second = cli(dir.path(), &["users", "migrate"], None);
    assert!(second.status.success(), "{}", stderr(&second));
    assert!(
        stdout(&second).contains("is up to date"),
        "{}",
        stdout(&second)
    );

    let db = schema.client();
    let versions: Vec<i32> = db
        .query(
            &format!("SELECT version FROM \"{}\".schema_migrations", schema.name),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, vec![1, 2]);
    let columns: Vec<(String, String)> = db
        .query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns \
             WHERE table_schema = $1 AND table_name = 'users' ORDER BY ordinal_position",
            &[&schema.name],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let expected = [
        ("user_id", "uuid"),
        ("username", "text"),
        ("email", "text"),
        ("hashed_password", "text"),
        ("roles", "ARRAY"),
        ("disabled", "boolean"),
        ("created_at", "timestamp with time zone"),
        ("updated_at", "timestamp with time zone"),
        ("totp_secret", "text"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(c, t)| (c.to_string(), t.to_string()))
        .collect();
    assert_eq!(columns, expected);
    // The login query's index.
    let unique: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_indexes WHERE schemaname = $1 AND tablename = 'users' \
             AND indexdef LIKE 'CREATE UNIQUE INDEX % (username)'",
            &[&schema.name],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(unique, 1);
}

#[tokio::test]
async fn concurrent_migrations_apply_once() {
    let schema = PgSchema::new("concurrent").await;
    let run = |name: String| async move {
        let mut db = pg::connect(&pg::url()).await;
        authgate::users::postgres::migrate::migrate(&mut db, &name)
            .await
            .unwrap()
            .len()
    };
    let (a, b) = tokio::join!(run(schema.name.clone()), run(schema.name.clone()));
    assert_eq!(a + b, authgate::users::postgres::migrate::MIGRATIONS.len());
    assert!(a == 0 || b == 0, "{a} and {b}");
}

#[tokio::test]
async fn gateway_refuses_a_missing_or_outdated_schema() {
    let schema = PgSchema::new("refuse").await;
    let users = schema.users_toml(pg::shared_env());

    let error = build(&users).await.unwrap_err().to_string();
    assert!(error.contains("users.schema"), "{error}");
    assert!(error.contains("authgate users migrate"), "{error}");
    // The CLI says the same.
    let dir = config_dir(&schema, "");
    let out = cli(dir.path(), &["users", "list"], None);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("authgate users migrate"),
        "{}",
        stderr(&out)
    );

    let mut db = pg::connect(&pg::url()).await;
    authgate::users::postgres::migrate::migrate(&mut db, &schema.name)
        .await
        .unwrap();
    build(&users).await.expect("a migrated schema starts");
    let checksum: String = db
        .query_one(
            &format!(
                "SELECT checksum FROM \"{}\".schema_migrations WHERE version = 1",
                schema.name
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);

    let applied = format!(
        "SELECT version, name, checksum FROM \"{}\".schema_migrations WHERE version > 1",
        schema.name
    );
    let later: Vec<(i32, String, String)> = db
        .query(&applied, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();

    // Outdated: a migration is missing.
    schema
        .execute("DELETE FROM {schema}.schema_migrations")
        .await;
    let error = build(&users).await.unwrap_err().to_string();
    assert!(error.contains("is at migration 0"), "{error}");
    assert!(error.contains("authgate users migrate"), "{error}");

    // Migrated by a build whose migration 1 differs.
    schema
        .execute(
            "INSERT INTO {schema}.schema_migrations (version, name, checksum) VALUES (1, 'users', 'x')",
        )
        .await;
    let error = build(&users).await.unwrap_err().to_string();
    assert!(error.contains("differs"), "{error}");

    // Migrated further by a newer authgate: starts.
    schema
        .execute(&format!(
            "UPDATE {{schema}}.schema_migrations SET checksum = '{}';
             INSERT INTO {{schema}}.schema_migrations (version, name, checksum) VALUES (99, 'future', 'y')",
            checksum
        ))
        .await;
    for (version, name, checksum) in &later {
        schema
            .execute(&format!(
                "INSERT INTO {{schema}}.schema_migrations (version, name, checksum) \
                 VALUES ({version}, '{name}', '{checksum}')"
            ))
            .await;
    }
    build(&users).await.expect("a newer schema starts");
}

#[tokio::test]
async fn cli_round_trip_then_login_through_the_gateway() {
    let schema = PgSchema::new("cli").await;
    let dir = config_dir(&schema, "");
    assert!(cli(dir.path(), &["users", "migrate"], None)
        .status
        .success());
    let add = [
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
    ];
    let out = cli(dir.path(), &add, Some("erin-pw\n"));
    assert!(out.status.success(), "{}", stderr(&out));
    let again = cli(dir.path(), &add, Some("erin-pw\n"));
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("\"erin\" already exists"),
        "{}",
        stderr(&again)
    );

    let (_up, gw) = gateway(&schema, pg::shared_env()).await;
    let access = tokens(gw.password_grant("erin", "erin-pw").await)
        .await
        .access;
    let info = gw.userinfo(&access).await;
    assert_eq!(info["roles"], json!(["ops", "dev"]));
    assert_eq!(info["email"], "erin@example.com");

    let list = cli(dir.path(), &["users", "list"], None);
    assert!(
        stdout(&list).contains("erin\terin@example.com\tops,dev"),
        "{}",
        stdout(&list)
    );

    let out = cli(
        dir.path(),
        &["users", "passwd", "erin", "--password-stdin"],
        Some("new-pw\n"),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(gw.password_grant("erin", "erin-pw").await.status(), 401);
    assert_eq!(gw.password_grant("erin", "new-pw").await.status(), 200);
    let changed: bool = schema
        .client()
        .query_one(
            &format!(
                "SELECT updated_at > created_at FROM \"{}\".users WHERE username = 'erin'",
                schema.name
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(changed, "updated_at follows the password change");

    assert!(cli(dir.path(), &["users", "del", "erin"], None)
        .status
        .success());
    assert_eq!(gw.password_grant("erin", "new-pw").await.status(), 401);
    let out = cli(dir.path(), &["users", "del", "erin"], None);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no user \"erin\""),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn refresh_picks_up_role_changes_made_in_the_database() {
    let schema = PgSchema::migrated("refresh").await;
    schema.insert(&[user("alice", "alice-pw", &["dev"])]).await;
    let (up, gw) = gateway(&schema, pg::shared_env()).await;
    let login = tokens(gw.password_grant("alice", "alice-pw").await).await;
    assert_eq!(gw.userinfo(&login.access).await["roles"], json!(["dev"]));

    schema
        .execute("UPDATE {schema}.users SET roles = '{auditor,ops}' WHERE username = 'alice'")
        .await;
    let refreshed = tokens(gw.refresh_grant(&login.refresh).await).await;
    assert_eq!(
        gw.userinfo(&refreshed.access).await["roles"],
        json!(["auditor", "ops"])
    );
    get_api(&gw, &refreshed.access).await;
    assert_eq!(up.last().headers["x-auth-roles"], "auditor,ops");

    // Disabled in the database: the session ends at the next refresh.
    schema
        .execute("UPDATE {schema}.users SET disabled = true WHERE username = 'alice'")
        .await;
    let response = gw.refresh_grant(&refreshed.refresh).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "invalid_grant");
}

#[tokio::test]
async fn mapped_existing_table_is_read_only() {
    let schema = PgSchema::new("mapped").await;
    schema
        .execute(
            "CREATE SCHEMA {schema};
             CREATE TABLE {schema}.accounts (
                 id     serial PRIMARY KEY,
                 login  varchar(64) NOT NULL UNIQUE,
                 pw     varchar(100),
                 mail   text,
                 groups varchar(32)[],
                 locked boolean
             );",
        )
        .await;
    let hash = |password: &str, prefix: &str| {
        bcrypt::hash(password, 4)
            .unwrap()
            .replacen("$2b$", prefix, 1)
    };
    let insert = format!(
        "INSERT INTO \"{}\".accounts (login, pw, mail, groups, locked) VALUES ($1, $2, $3, $4, $5)",
        schema.name
    );
    let rows = [
        (
            "php",
            hash("php-pw", "$2y$"),
            Some("php@example.com"),
            Some(vec!["admin"]),
            Some(false),
        ),
        ("old", hash("old-pw", "$2a$"), None, None, None),
        (
            "new",
            hash("new-pw", "$2b$"),
            None,
            Some(vec!["dev", "ops"]),
            Some(false),
        ),
        ("gone", hash("gone-pw", "$2b$"), None, None, Some(true)),
    ];
    for (login, pw, mail, groups, locked) in &rows {
        schema
            .client()
            .execute(&insert, &[login, pw, mail, groups, locked])
            .await
            .unwrap();
    }
    let columns = "table = \"accounts\"\n[users.columns]\nusername = \"login\"\n\
                   password_hash = \"pw\"\nemail = \"mail\"\nroles = \"groups\"\ndisabled = \"locked\"\n";
    let toml = format!(
        "{}\n[users]\nbackend = \"postgres\"\nurl_env = \"{}\"\nschema = \"{}\"\nbcrypt_cost = 4\n{columns}",
        routes(&Upstream::start("api").await),
        pg::shared_env(),
        schema.name
    );
    let gw = TestGateway::start(&toml, &[]).await;

    let access = tokens(gw.password_grant("php", "php-pw").await)
        .await
        .access;
    let info = gw.userinfo(&access).await;
    assert_eq!(info["roles"], json!(["admin"]));
    assert_eq!(info["email"], "php@example.com");
    let access = tokens(gw.password_grant("old", "old-pw").await)
        .await
        .access;
    assert_eq!(gw.userinfo(&access).await["roles"], json!([]));
    let access = tokens(gw.password_grant("new", "new-pw").await)
        .await
        .access;
    assert_eq!(gw.userinfo(&access).await["roles"], json!(["dev", "ops"]));
    assert_eq!(gw.password_grant("gone", "gone-pw").await.status(), 401);
    assert_eq!(gw.password_grant("php", "old-pw").await.status(), 401);
    assert_eq!(gw.password_grant("nobody", "php-pw").await.status(), 401);

    // The CLI reads it, and refuses to write it.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("gateway.toml"),
        format!(
            "[users]\nbackend = \"postgres\"\nurl_env = \"{}\"\nschema = \"{}\"\n{columns}",
            pg::URL_ENV,
            schema.name
        ),
    )
    .unwrap();
    let list = cli(dir.path(), &["users", "list"], None);
    assert!(list.status.success(), "{}", stderr(&list));
    assert_eq!(
        stdout(&list),
        "gone\t-\t\tdisabled\nnew\t-\tdev,ops\nold\t-\t\nphp\tphp@example.com\tadmin\n"
    );
    for args in [
        &["users", "add", "eve", "--password-stdin"][..],
        &["users", "passwd", "php", "--password-stdin"],
        &["users", "del", "php"],
    ] {
        // No password given: the refusal comes before any prompt.
        let out = cli(dir.path(), args, None);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            stderr(&out).contains("only reads"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    let out = cli(dir.path(), &["users", "migrate"], None);
    assert!(out.status.success());
    assert!(
        stdout(&out).contains("nothing to migrate"),
        "{}",
        stdout(&out)
    );
    let migrations: bool = schema
        .client()
        .query_one(
            "SELECT to_regclass(format('%I.schema_migrations', $1::text)) IS NOT NULL",
            &[&schema.name],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!migrations, "a mapped schema is left alone");
    assert_eq!(gw.password_grant("php", "php-pw").await.status(), 200);

    // A column that is not there stops the gateway at start, named.
    let wrong = toml.replace("disabled = \"locked\"", "disabled = \"blocked\"");
    let error = build(&wrong).await.unwrap_err().to_string();
    assert!(error.contains("users.table"), "{error}");
    assert!(error.contains("blocked"), "{error}");
}

#[tokio::test]
async fn unreachable_database_means_503_and_tokens_keep_working() {
    let up = Upstream::start("api").await;
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/test",
        support::closed_port()
    );
    let toml = format!(
        "{}\n[users]\nbackend = \"postgres\"\nurl_env = \"{}\"\nschema = \"nowhere\"\nbcrypt_cost = 4\n",
        routes(&up),
        pg::url_env(&url)
    );
    let gw = TestGateway::start(&toml, &[]).await;

    assert_unavailable(gw.password_grant("alice", "alice-pw").await).await;
    let json_login = client()
        .post(gw.url("/token"))
        .json(&json!({"username": "alice", "password": "alice-pw"}))
        .send()
        .await
        .unwrap();
    assert_unavailable(json_login).await;
    // A well-formed refresh token is refused before the session store is
    // touched, with 503 rather than "invalid".
    let token = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 48]>());
    assert_unavailable(gw.refresh_grant(&token).await).await;
    let (status, body) = readyz(&gw).await;
    assert_eq!(status, 503);
    assert_eq!(body["checks"]["users"], "unavailable");
    assert_eq!(body["checks"]["sessions"], "ok");

    // An access token signed with the gateway's secret needs no database.
    let now = now();
    let token = sign_hs256(
        &json!({"sub": "alice", "iat": now, "nbf": now, "exp": now + 60, "iss": "authgate",
                "jti": "t1", "roles": ["dev"], "email": "alice@example.com"}),
        SECRET,
    );
    assert_eq!(get_api(&gw, &token).await.status(), 200);
    assert_eq!(up.last().headers["x-auth-user"], "alice");
}

/// The database is down at start, comes up, goes down (every connection
/// cut, as by a restart), and comes back.
/// The user store fails only for the user's own lookup (the table gone,
/// the server still answering `SELECT 1`) while a refresh runs: the token
/// must not have rotated, so the client's retry works even after the reuse
/// grace. (It rotated first and looked the user up after: the retry was
/// taken for theft and the session ended.)
#[tokio::test]
async fn a_refresh_that_cannot_read_its_user_does_not_rotate() {
    let schema = PgSchema::migrated("refreshrace").await;
    schema.insert(&[user("alice", "alice-pw", &["dev"])]).await;
    let (_up, gw) = gateway(&schema, pg::shared_env()).await;
    let login = tokens(gw.password_grant("alice", "alice-pw").await).await;

    schema
        .execute("ALTER TABLE {schema}.users RENAME TO users_away")
        .await;
    let failed = gw.refresh_grant(&login.refresh).await;
    assert!(failed.status().is_server_error(), "{}", failed.status());
    schema
        .execute("ALTER TABLE {schema}.users_away RENAME TO users")
        .await;

    gw.clock.advance(std::time::Duration::from_secs(11));
    let retried = tokens(gw.refresh_grant(&login.refresh).await).await;
    assert_eq!(gw.userinfo(&retried.access).await["sub"], "alice");
}

#[tokio::test]
async fn outage_and_recovery() {
    let schema = PgSchema::migrated("outage").await;
    schema.insert(&[user("alice", "alice-pw", &["dev"])]).await;
    let mut relay = Relay::down();
    let (_up, gw) = gateway(&schema, &pg::url_env(&relay.url())).await;
    assert_eq!(readyz(&gw).await.0, 503);
    assert_unavailable(gw.password_grant("alice", "alice-pw").await).await;

    relay.start().await;
    assert_eq!(readyz(&gw).await.0, 200);
    let login = tokens(gw.password_grant("alice", "alice-pw").await).await;

    relay.stop().await;
    assert_unavailable(gw.password_grant("alice", "alice-pw").await).await;
    assert_unavailable(gw.refresh_grant(&login.refresh).await).await;
    let (status, body) = readyz(&gw).await;
    assert_eq!(status, 503);
    assert_eq!(body["checks"]["users"], "unavailable");
    assert_eq!(get_api(&gw, &login.access).await.status(), 200);

    relay.start().await;
    // The refresh refused during the outage did not rotate the token.
    let access = tokens(gw.refresh_grant(&login.refresh).await).await.access;
    assert_eq!(gw.userinfo(&access).await["sub"], "alice");
    assert_eq!(gw.password_grant("alice", "alice-pw").await.status(), 200);
    assert_eq!(readyz(&gw).await.0, 200);
}

/// Down at start with an unmigrated schema: once the database answers, the
/// schema is checked, and the gateway stays not ready until it is migrated.
#[tokio::test]
async fn schema_is_checked_when_the_database_comes_back() {
    let schema = PgSchema::new("late").await;
    let mut relay = Relay::down();
    let (_up, gw) = gateway(&schema, &pg::url_env(&relay.url())).await;
    relay.start().await;
    assert_eq!(readyz(&gw).await.0, 503);
    assert_unavailable(gw.password_grant("alice", "alice-pw").await).await;

    let mut db = pg::connect(&pg::url()).await;
    authgate::users::postgres::migrate::migrate(&mut db, &schema.name)
        .await
        .unwrap();
    schema.insert(&[user("alice", "alice-pw", &["dev"])]).await;
    assert_eq!(readyz(&gw).await.0, 200);
    assert_eq!(gw.password_grant("alice", "alice-pw").await.status(), 200);
}

/// The server ends every connection of the gateway (`pg_terminate_backend`,
/// what a restart does to them): the next login still succeeds.
#[tokio::test]
async fn pool_replaces_connections_the_server_closed() {
    let schema = PgSchema::migrated("terminate").await;
    schema.insert(&[user("alice", "alice-pw", &["dev"])]).await;
    let app = schema.name.clone();
    let url = format!("{}?application_name={app}", pg::url());
    let (_up, gw) = gateway(&schema, &pg::url_env(&url)).await;
    for _ in 0..3 {
        assert_eq!(gw.password_grant("alice", "alice-pw").await.status(), 200);
        let ended: i64 = schema
            .client()
            .query_one(
                "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = $1) AS t",
                &[&app],
            )
            .await
            .unwrap()
            .get(0);
        assert!(ended >= 1, "the gateway held no connection");
    }
    assert_eq!(gw.password_grant("alice", "alice-pw").await.status(), 200);
    assert_eq!(readyz(&gw).await.0, 200);
}

/// A server that accepts connections and never says a word: the timeouts
/// turn it into a 503 (the test client would give up after 30 s).
#[tokio::test]
async fn silent_database_means_503_not_a_hang() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let schema = PgSchema::new("silent").await;
    let url = format!("postgres://postgres@127.0.0.1:{port}/test");
    let (_up, gw) = gateway(&schema, &pg::url_env(&url)).await;
    assert_unavailable(gw.password_grant("alice", "alice-pw").await).await;
    let (status, body) = readyz(&gw).await;
    assert_eq!(status, 503);
    assert_eq!(body["checks"]["users"], "unavailable");
}

/// `sslmode=require` speaks TLS and verifies the server's certificate: the
/// local server's self-signed (snakeoil) certificate is refused, never
/// silently accepted.
#[test]
fn sslmode_require_verifies_the_server_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        "[users]\nbackend = \"postgres\"\nschema = \"authgate_tls_probe\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(support::binary())
        .arg("-c")
        .arg(&config)
        .args(["users", "migrate"])
        .env(
            "AUTHGATE_DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/test?sslmode=require",
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "TLS to an untrusted certificate was accepted"
    );
    assert!(stderr.to_lowercase().contains("certificate"), "{stderr}");
}

/// Issue 18: a row whose role holds a comma (which upstreams would read as
/// two roles in `X-Auth-Roles`) or whose email holds a control character
/// (which would silently drop `X-Auth-Email`) is refused at login as the
/// server-side data problem it is: 500, not a wrong password, and never a
/// token. A row spoiled after login refuses the refresh the same way and
/// leaves the session alone, so it works again once the row is fixed.
#[tokio::test]
async fn a_row_with_a_comma_in_a_role_or_a_control_character_is_refused_at_login() {
    let schema = PgSchema::migrated("bad_rows").await;
    let mut crlf = user("carol", "carol-pw", &["dev"]);
    crlf.email = Some("carol@example.com\r\nX-Auth-Roles: admin".into());
    schema
        .insert(&[
            user("alice", "alice-pw", &["dev"]),
            user("mallory", "mallory-pw", &["dev,admin"]),
            user("tab", "tab-pw", &["dev\tadmin"]),
            crlf,
        ])
        .await;
    let (up, gw) = gateway(&schema, pg::shared_env()).await;
    for name in ["mallory", "tab", "carol"] {
        let response = gw.password_grant(name, &format!("{name}-pw")).await;
        assert_eq!(response.status(), 500, "{name}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "internal_error", "{name}");
    }

    let login = tokens(gw.password_grant("alice", "alice-pw").await).await;
    schema
        .execute("UPDATE {schema}.users SET roles = '{\"dev,admin\"}' WHERE username = 'alice'")
        .await;
    assert_eq!(gw.refresh_grant(&login.refresh).await.status(), 500);
    schema
        .execute("UPDATE {schema}.users SET roles = '{dev,admin}' WHERE username = 'alice'")
        .await;
    let refreshed = tokens(gw.refresh_grant(&login.refresh).await).await;
    get_api(&gw, &refreshed.access).await;
    assert_eq!(up.last().headers["x-auth-roles"], "dev,admin");
    assert_eq!(up.count(), 1);
}

/// The operator learns which row to fix: one log line with the user and
/// the field, from the real binary.
#[tokio::test]
async fn a_refused_row_is_logged_with_the_user_and_the_field() {
    let schema = PgSchema::migrated("bad_row_log").await;
    schema
        .insert(&[user("mallory", "mallory-pw", &["dev,admin"])])
        .await;
    let port = support::closed_port();
    let dir = config_dir(
        &schema,
        &format!("[server]\nlisten = \"127.0.0.1:{port}\"\nlog_format = \"json\"\n"),
    );
    let log_path = dir.path().join("log");
    let mut command = support::process::serve_command(&dir.path().join("gateway.toml"));
    command
        .env(pg::URL_ENV, pg::url())
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(&log_path).unwrap());
    let gw = support::process::AuthgateProcess::spawn(command, port).await;

    let response = support::password_grant(gw.url("/token"), "mallory", "mallory-pw").await;
    assert_eq!(response.status(), 500);
    let line = support::process::log_line(&log_path, "user_row_invalid").await;
    let line: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(line["user"], "mallory", "{line}");
    assert_eq!(line["field"], "roles", "{line}");
}
