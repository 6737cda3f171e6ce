//! Issue 7: the browser sign-in flow in a real headless browser. A real
//! authgate and a real HTML upstream, driven by `tests/e2e/signin.mjs`
//! (Debian's chromium through playwright-core): sign-in page, wrong
//! password, sign in, silent refresh past the access TTL, sign out.
//!
//! Needs `/usr/bin/chromium` (or `CHROMIUM`) and `node`; `.ci/run` installs
//! both. `AUTHGATE_UPDATE_SCREENSHOTS=1` writes the screenshots docs/signin.md shows to
//! `docs/` instead of a temporary directory.

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use support::{user, TestGateway, Upstream};

const E2E_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e");
/// Long enough that only the gateway's clock, moved by the script through
/// the clock server below, can make the access token expire.
const ACCESS_TTL_MS: u64 = 60_000;

/// A test-only HTTP server the browser script calls to move the gateway's
/// clock (`POST /advance?ms=N`) instead of waiting out the access TTL, and
/// to read it (`GET /now`: Unix milliseconds) to compute one-time codes.
async fn clock_server(clock: authgate::clock::Clock) -> String {
    use hyper::service::service_fn;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let clock = clock.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let ms = req
                        .uri()
                        .query()
                        .and_then(|q| q.strip_prefix("ms="))
                        .and_then(|ms| ms.parse::<u64>().ok());
                    let mut body = String::new();
                    let status = match ms {
                        Some(ms) if req.method() == http::Method::POST => {
                            clock.advance(Duration::from_millis(ms));
                            204
                        }
                        _ if req.uri().path() == "/now" => {
                            body = clock.unix_millis().to_string();
                            200
                        }
                        _ => 400,
                    };
                    let mut response =
                        http::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
                    *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
                    async move { Ok::<_, std::convert::Infallible>(response) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

fn chromium() -> PathBuf {
    let path = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/usr/bin/chromium".into());
    assert!(
        path.exists(),
        "{} not found: the browser test needs Debian's chromium \
         (apt-get install chromium, as .ci/run does) or CHROMIUM=/path/to/chromium",
        path.display()
    );
    path
}

/// Runs a command to completion, failing the test with its output if it fails.
async fn run(command: &mut tokio::process::Command, what: &str) -> String {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{what}: cannot start it ({e}); the browser test needs node and npm on PATH")
        });
    let output = tokio::time::timeout(Duration::from_secs(300), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{what}: still running after 300 s"))
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    stdout
}

/// `npm ci` once, when `tests/e2e/node_modules` is missing.
async fn ensure_node_modules() {
    if Path::new(E2E_DIR)
        .join("node_modules/playwright-core")
        .exists()
    {
        return;
    }
    run(
        tokio::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(E2E_DIR),
        "npm ci in tests/e2e",
    )
    .await;
}

/// Where the script's screenshots go: `docs/` with
/// `AUTHGATE_UPDATE_SCREENSHOTS`, else `shots`.
fn screenshots_dir(shots: &tempfile::TempDir) -> PathBuf {
    if std::env::var_os("AUTHGATE_UPDATE_SCREENSHOTS").is_some() {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs")
    } else {
        shots.path().to_path_buf()
    }
}

/// `node tests/e2e/signin.mjs` against `gw`, its clock moved through `clock_url`.
fn signin_script(
    gw: &TestGateway,
    shots_dir: &Path,
    chromium: &Path,
    clock_url: &str,
) -> tokio::process::Command {
    let mut command = tokio::process::Command::new("node");
    command
        .arg(Path::new(E2E_DIR).join("signin.mjs"))
        .arg(gw.url(""))
        .arg(shots_dir)
        .env("CHROMIUM", chromium)
        .env("ACCESS_TTL_MS", ACCESS_TTL_MS.to_string())
        .env("CLOCK_URL", clock_url);
    command
}

/// Runs the script, which must pass every step; returns its output.
async fn run_to_the_end(command: &mut tokio::process::Command, what: &str) -> String {
    let out = run(command, what).await;
    println!("{out}");
    assert!(out.contains("all steps passed"), "{out}");
    out
}

/// What the browser did reached the upstream with the injected identity.
fn pages_reached_as_alice(up: &Upstream) {
    let seen = up.seen();
    assert!(seen.len() >= 2, "{seen:?}");
    assert!(seen
        .iter()
        .all(|s| s.uri == "/page" && s.headers["x-auth-user"] == "alice"));
}

/// `/app` (login required) in front of `up`'s pages, with the access TTL
/// the clock server moves past.
fn app_config(up: &Upstream) -> String {
    format!(
        "[jwt]\nsecret_env = \"{}\"\naccess_ttl = \"{}s\"\n\
         [[routes]]\nprefix = \"/app\"\nupstream = \"{}\"\nauth = \"required\"\nstrip_prefix = true\n",
        support::SECRET_ENV,
        ACCESS_TTL_MS / 1000,
        up.url()
    )
}

#[tokio::test]
async fn sign_in_silent_refresh_and_sign_out_in_chromium() {
    let chromium = chromium();
    ensure_node_modules().await;

    let up = Upstream::start("app").await;
    let toml = app_config(&up);
    let gw = TestGateway::start(&toml, &[user("alice", "alice-pw", &["dev"])]).await;
    let clock_url = clock_server(gw.clock.clone()).await;

    let shots = tempfile::tempdir().unwrap();
    let shots_dir = screenshots_dir(&shots);
    let mut command = signin_script(&gw, &shots_dir, &chromium, &clock_url);
    command
        .env("E2E_USER", "alice")
        .env("E2E_PASSWORD", "alice-pw");
    run_to_the_end(&mut command, "node tests/e2e/signin.mjs").await;
    pages_reached_as_alice(&up);
    for name in ["signin.png", "signin-error.png"] {
        let png = std::fs::read(shots_dir.join(name)).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "{name} is no PNG");
    }
}

/// Issue 22: the same flow for a user with a second factor: after the
/// password the page asks for the one-time code (computed by the script
/// from the secret and the gateway's clock), keeps `rd`, answers a wrong
/// code with the error, and the silent refresh needs no code.
#[tokio::test]
async fn sign_in_with_a_one_time_code_in_chromium() {
    let chromium = chromium();
    ensure_node_modules().await;

    let up = Upstream::start("app").await;
    let toml = app_config(&up);
    support::init();
    let secret = authgate::totp::Secret::generate();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("users.toml"),
        format!(
            "{}totp = \"{}\"\n",
            support::users_toml(&[user("alice", "alice-pw", &["dev"])]),
            support::totp_key().seal("alice", &secret)
        ),
    )
    .unwrap();
    let gw = TestGateway::start_keeping_users(dir, &toml).await;
    let clock_url = clock_server(gw.clock.clone()).await;
    let shots = tempfile::tempdir().unwrap();
    let shots_dir = screenshots_dir(&shots);
    let mut command = signin_script(&gw, &shots_dir, &chromium, &clock_url);
    command.env("E2E_TOTP_SECRET", secret.base32());
    let out = run_to_the_end(&mut command, "node tests/e2e/signin.mjs (second factor)").await;
    assert!(out.contains("asks for the code next"), "{out}");
    pages_reached_as_alice(&up);
    let png = std::fs::read(shots_dir.join("signin-code.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG"));
}

/// Issue 19: the same flow with Caddy in front in forward-auth mode
/// (`forward_auth` → `/auth/verify/redirect`, the configuration
/// docs/forward-auth.md gives): the browser is sent to sign in and back to
/// the original absolute URL, and the silent refresh reaches it through
/// the redirect Caddy hands on.
#[tokio::test]
async fn sign_in_and_silent_refresh_through_caddy_forward_auth() {
    let chromium = chromium();
    ensure_node_modules().await;

    let up = Upstream::start("app").await;
    let toml = format!(
        "[jwt]\nsecret_env = \"{}\"\naccess_ttl = \"{}s\"\n\
         [forward_auth]\nenabled = true\n[auth]\npath_prefix = \"/auth\"\n\
         [[routes]]\nprefix = \"/\"\n",
        support::SECRET_ENV,
        ACCESS_TTL_MS / 1000,
    );
    let gw = TestGateway::start(&toml, &[user("alice", "alice-pw", &["dev"])]).await;
    let caddy = support::front::start_caddy(&gw, &up).await;
    let clock_url = clock_server(gw.clock.clone()).await;
    let shots = tempfile::tempdir().unwrap();
    let out = run(
        tokio::process::Command::new("node")
            .arg(Path::new(E2E_DIR).join("signin.mjs"))
            .arg(caddy.url(""))
            .arg(shots.path())
            .env("CHROMIUM", &chromium)
            .env("ACCESS_TTL_MS", ACCESS_TTL_MS.to_string())
            .env("CLOCK_URL", &clock_url)
            .env("E2E_ABSOLUTE_RD", "1")
            .env("E2E_PAGE", "/page")
            .env("E2E_AUTH_PREFIX", "/auth"),
        "node tests/e2e/signin.mjs (through Caddy)",
    )
    .await;
    println!("{out}");
    assert!(out.contains("all steps passed"), "{out}");
    // Everything that reached the upstream (the page, and the favicon the
    // browser asks for once signed in) came with alice's identity.
    let seen = up.seen();
    let pages = seen.iter().filter(|s| s.uri == "/page").count();
    assert!(pages >= 2, "{seen:?}");
    assert!(
        seen.iter().all(|s| s.headers["x-auth-user"] == "alice"),
        "{seen:?}"
    );
}
