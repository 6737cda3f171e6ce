//! Shared test support: a real authgate listener on port 0, a real upstream
//! HTTP server that records what reaches it, users files, Redis prefixes.
#![allow(dead_code)]

pub mod front;
pub mod postgres;
pub mod process;
pub mod redis;
pub mod ws;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use authgate::clock::Clock;
use authgate::config::Config;
use authgate::gateway::{Gateway, SharedGateway};

/// The HMAC secret every test gateway signs with (env var name).
pub const SECRET_ENV: &str = "AUTHGATE_TEST_SECRET";
pub const SECRET: &str = "test-secret-that-is-long-enough-0123456789";
/// A second secret, for key-rotation tests.
pub const OLD_SECRET_ENV: &str = "AUTHGATE_TEST_OLD_SECRET";
pub const OLD_SECRET: &str = "old-test-secret-that-is-long-enough-987654";

/// The key of second-factor secrets in tests (`[users] totp_key_env`).
pub const TOTP_KEY_ENV: &str = "AUTHGATE_TEST_TOTP_KEY";
/// 32 bytes, base64.
pub const TOTP_KEY: &str = "dGVzdC10b3RwLWtleS0zMi1ieXRlcy1sb25nLTAxMjM=";

/// The test key, as the gateway reads it.
pub fn totp_key() -> authgate::totp::TotpKey {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(TOTP_KEY)
        .unwrap();
    authgate::totp::TotpKey::new(&bytes.try_into().unwrap(), TOTP_KEY_ENV)
}

/// Sets the test secrets once, before any test reads them.
pub fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::env::set_var(SECRET_ENV, SECRET);
        std::env::set_var(OLD_SECRET_ENV, OLD_SECRET);
        std::env::set_var(TOTP_KEY_ENV, TOTP_KEY);
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        if std::env::var("TEST_LOG").is_ok() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter("debug")
                .with_test_writer()
                .try_init();
        }
    });
}

/// What the upstream saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A real HTTP/1.1 upstream; it records each request whose body arrived
/// whole. Paths it understands:
/// - `/slow/<ms>`: answers after that many milliseconds
/// - `/download/<bytes>`: streams that many bytes in 64 KiB chunks
/// - `/upload`: counts the streamed body and answers the count (not recorded)
/// - `/set-cookie`: answers with its own `Set-Cookie: upstream=1`
/// - `/page`: a small HTML page greeting the `X-Auth-User` it received
/// - anything else: 200 with JSON `{"path": ..., "upstream": name}`
pub struct Upstream {
    pub addr: SocketAddr,
    pub name: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    pub async fn start(name: &str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (seen2, name2) = (seen.clone(), name.to_string());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (seen, name) = (seen2.clone(), name2.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let (seen, name) = (seen.clone(), name.clone());
                        async move { Ok::<_, Infallible>(upstream_answer(req, seen, &name).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            name: name.to_string(),
            seen,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Seen {
        self.seen().pop().expect("the upstream saw no request")
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

type TestBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn upstream_answer(
    req: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
    name: &str,
) -> Response<TestBody> {
    let path = req.uri().path().to_string();
    if path == "/upload" {
        let mut body = req.into_body();
        let mut total: u64 = 0;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                total += data.len() as u64;
            }
        }
        return Response::new(Full::new(Bytes::from(total.to_string())).boxed());
    }
    let (parts, body) = req.into_parts();
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        // The request never completed (its body broke off): not recorded,
        // and the connection is gone, so no answer reaches anyone.
        return Response::new(Full::new(Bytes::new()).boxed());
    };
    seen.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        headers: parts.headers.clone(),
        body: body.clone(),
    });
    if let Some(ms) = path.strip_prefix("/slow/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
    }
    if let Some(n) = path.strip_prefix("/download/") {
        let total: usize = n.parse().unwrap();
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let stream = futures_util::stream::unfold(total, move |left| {
            let chunk = chunk.clone();
            async move {
                if left == 0 {
                    return None;
                }
                let n = left.min(chunk.len());
                Some((Ok::<_, Infallible>(Frame::data(chunk.slice(..n))), left - n))
            }
        });
        return Response::new(StreamBody::new(stream).boxed());
    }
    if path == "/page" {
        return html_page(&parts.headers);
    }
    let mut response = Response::new(
        Full::new(Bytes::from(
            serde_json::json!({"path": parts.uri.to_string(), "upstream": name, "body": String::from_utf8_lossy(&body)})
                .to_string(),
        ))
        .boxed(),
    );
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    response
        .headers_mut()
        .insert("connection", "x-upstream-private".parse().unwrap());
    response
        .headers_mut()
        .insert("x-upstream-private", "1".parse().unwrap());
    if path == "/set-cookie" {
        response
            .headers_mut()
            .append("set-cookie", "upstream=1; Path=/".parse().unwrap());
    }
    *response.status_mut() = StatusCode::OK;
    response
}

fn html_page(headers: &HeaderMap) -> Response<TestBody> {
    let user = headers
        .get("x-auth-user")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("nobody");
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>App</title></head>\
         <body><h1>App page</h1><p id=\"user\">Signed in as {}</p></body></html>",
        authgate::endpoints::sign_in::escape(user)
    );
    let mut response = Response::new(Full::new(Bytes::from(html)).boxed());
    response
        .headers_mut()
        .insert("content-type", "text/html; charset=utf-8".parse().unwrap());
    response
}

/// A user to put in the users file (hashed with bcrypt cost 4).
#[derive(Debug, Clone)]
pub struct TestUser {
    pub username: String,
    pub password: String,
    pub email: Option<String>,
    pub roles: Vec<String>,
    pub disabled: bool,
}

pub fn user(username: &str, password: &str, roles: &[&str]) -> TestUser {
    TestUser {
        username: username.into(),
        password: password.into(),
        email: Some(format!("{username}@example.com")),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        disabled: false,
    }
}

pub fn users_toml(users: &[TestUser]) -> String {
    let mut text = String::new();
    for u in users {
        let hash = bcrypt::hash(&u.password, 4).unwrap();
        text.push_str(&format!(
            "[[users]]\nusername = {:?}\npassword_hash = {:?}\nroles = {:?}\n",
            u.username, hash, u.roles
        ));
        if let Some(email) = &u.email {
            text.push_str(&format!("email = {email:?}\n"));
        }
        if u.disabled {
            text.push_str("disabled = true\n");
        }
    }
    text
}

/// A unique Redis key prefix for one test.
pub fn redis_prefix(test: &str) -> String {
    format!("authgate-test:{test}:{:016x}:", rand::random::<u64>())
}

/// A running in-process authgate on 127.0.0.1:0.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub gateway: SharedGateway,
    /// The gateway's clock: move it forward instead of sleeping until
    /// something expires.
    pub clock: Clock,
    shutdown: Option<oneshot::Sender<()>>,
    pub task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    /// What must never reach the audit trail: the users' passwords, and
    /// what a test adds with [`TestGateway::saw_secret`].
    secrets: Mutex<Vec<String>>,
}

impl TestGateway {
    /// `toml` is the body of `gateway.toml`; `[users]`, `[jwt]` and
    /// `[cookies]` lines pointing at the test users file and secret, with
    /// cost-4 bcrypt and non-Secure cookies, are added unless the test
    /// writes those sections itself.
    pub async fn start(toml: &str, users: &[TestUser]) -> TestGateway {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, toml, users).await
    }

    pub async fn start_in(dir: tempfile::TempDir, toml: &str, users: &[TestUser]) -> TestGateway {
        std::fs::write(dir.path().join("users.toml"), users_toml(users)).unwrap();
        let gateway = Self::start_keeping_users(dir, toml).await;
        for user in users {
            gateway.saw_secret(user.password.clone());
        }
        gateway
    }

    /// [`Self::start_in`] with the users file `dir` already holds.
    pub async fn start_keeping_users(dir: tempfile::TempDir, toml: &str) -> TestGateway {
        init();
        let toml = complete_config(toml);
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, &toml).unwrap();
        let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}\n{toml}"));
        let clock = Clock::manual();
        let gateway = Gateway::build_with_clock(config, clock.clone());
        let gateway = authgate::gateway::shared(gateway.await.unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(authgate::server::serve(gateway.clone(), listener, async {
            let _ = rx.await;
        }));
        TestGateway {
            addr,
            dir,
            gateway,
            clock,
            shutdown: Some(tx),
            task: Some(task),
            secrets: Mutex::new(Vec::new()),
        }
    }

    /// Adds a value (a code, a secret) the audit trail must never hold.
    pub fn saw_secret(&self, secret: impl Into<String>) {
        self.secrets.lock().unwrap().push(secret.into());
    }

    /// The audit trail's lines so far (`[audit]` is a file, `audit.log`,
    /// unless the test's config says otherwise), every one written.
    pub fn audit_lines(&self) -> Vec<serde_json::Value> {
        assert!(self.gateway.load().audit.flush(), "audit lines unwritten");
        let text = std::fs::read_to_string(self.path("audit.log")).unwrap_or_default();
        text.lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Asks the server to stop; returns its join handle.
    pub fn begin_shutdown(&mut self) -> tokio::task::JoinHandle<anyhow::Result<()>> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.take().unwrap()
    }

    /// A GET of `path` with no credentials.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        client().get(self.url(path)).send().await.unwrap()
    }

    /// `/.well-known/jwks.json`, which must be served.
    pub async fn jwks(&self) -> jsonwebtoken::jwk::JwkSet {
        let response = self.get("/.well-known/jwks.json").await;
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    pub async fn password_grant(&self, username: &str, password: &str) -> reqwest::Response {
        password_grant(self.url("/token"), username, password).await
    }

    pub async fn refresh_grant(&self, refresh_token: &str) -> reqwest::Response {
        refresh_grant(self.url("/token"), refresh_token).await
    }

    /// Logs in with the form; returns the JSON body and the Set-Cookie values.
    pub async fn login(&self, username: &str, password: &str) -> (serde_json::Value, Vec<String>) {
        let response = self.password_grant(username, password).await;
        assert_eq!(response.status(), 200, "login of {username} failed");
        let cookies = set_cookies(response.headers());
        (response.json().await.unwrap(), cookies)
    }

    pub async fn access_token(&self, username: &str, password: &str) -> String {
        let (body, _) = self.login(username, password).await;
        body["access_token"].as_str().unwrap().to_string()
    }

    /// The claims `/userinfo` shows for `token` (which must be valid).
    pub async fn userinfo(&self, token: &str) -> serde_json::Value {
        let response = client()
            .get(self.url("/userinfo"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "/userinfo refused the token");
        response.json().await.unwrap()
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if !std::thread::panicking() {
            self.check_audit_holds_no_secret();
        }
    }
}

impl TestGateway {
    /// Issue 22: no audit line of any test holds a password, token or
    /// secret. Checked as each gateway ends, against what it saw: its
    /// users' passwords, every password any test sent to `/token`, the
    /// signing secrets, and anything shaped like a token (a JWT, a refresh
    /// token: a long base64url run).
    fn check_audit_holds_no_secret(&self) {
        let gw = self.gateway.load();
        gw.audit.flush();
        let Ok(text) = std::fs::read_to_string(self.path("audit.log")) else {
            return;
        };
        let mut secrets = self.secrets.lock().unwrap().clone();
        secrets.extend(sent_passwords());
        secrets.extend([SECRET.to_string(), OLD_SECRET.to_string()]);
        for line in text.lines() {
            for secret in &secrets {
                assert!(
                    secret.is_empty() || !line.contains(secret.as_str()),
                    "the audit trail holds the secret {secret:?}: {line}"
                );
            }
            assert!(
                longest_base64url_run(line) < 40,
                "the audit trail holds something like a token: {line}"
            );
        }
    }
}

/// Every password sent through [`password_grant`] by this test binary
/// (six characters or more: shorter ones are too likely to occur in a
/// line by chance).
fn sent_passwords() -> Vec<String> {
    SENT_PASSWORDS.lock().unwrap().clone()
}

static SENT_PASSWORDS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn longest_base64url_run(line: &str) -> usize {
    line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        .map(str::len)
        .max()
        .unwrap_or(0)
}

/// Every test gateway keeps its audit trail beside its config, where
/// `audit_lines` reads it and the drop checks it for secrets. (A test that
/// rewrites gateway.toml for a reload keeps it: `[audit]` is restart-only.)
pub const AUDIT: &str = "\n[audit]\ntarget = \"file\"\npath = \"audit.log\"\n";

fn complete_config(toml: &str) -> String {
    let mut text = toml.to_string();
    if !toml.contains("[jwt]") {
        text.push_str(&format!("\n[jwt]\nsecret_env = \"{SECRET_ENV}\"\n"));
    }
    if !toml.contains("[users]") {
        text.push_str(&format!(
            "\n[users]\npath = \"users.toml\"\nbcrypt_cost = 4\ntotp_key_env = \"{TOTP_KEY_ENV}\"\n"
        ));
    }
    if !toml.contains("[cookies]") {
        text.push_str("\n[cookies]\nsecure = false\n");
    }
    if !toml.contains("[audit]") {
        text.push_str(AUDIT);
    }
    text
}

/// The sum of this process's metric samples whose line starts with
/// `prefix` (a name, or a name with its labels), 0 when none does. The
/// registry is the process's, shared by every test of one binary.
pub fn process_metric(prefix: &str) -> u64 {
    authgate::observe::metrics::get()
        .encode()
        .lines()
        .filter(|line| line.starts_with(prefix))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// A client that follows no redirects and keeps no cookies.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// `POST /token` with a username and password in the form, at the token
/// URL of any authgate: in-process or a spawned binary.
pub async fn password_grant(
    token_url: impl reqwest::IntoUrl,
    username: &str,
    password: &str,
) -> reqwest::Response {
    if password.len() >= 6 {
        SENT_PASSWORDS.lock().unwrap().push(password.to_string());
    }
    client()
        .post(token_url)
        .form(&[("username", username), ("password", password)])
        .send()
        .await
        .unwrap()
}

/// `POST /token` with `grant_type=refresh_token` in the form.
pub async fn refresh_grant(
    token_url: impl reqwest::IntoUrl,
    refresh_token: &str,
) -> reqwest::Response {
    client()
        .post(token_url)
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ])
        .send()
        .await
        .unwrap()
}

/// The token pair in the JSON body of a grant.
#[derive(Debug, Clone)]
pub struct Tokens {
    pub access: String,
    pub refresh: String,
}

/// The tokens of a grant that must have succeeded.
pub async fn tokens(response: reqwest::Response) -> Tokens {
    assert_eq!(response.status(), 200, "the grant was refused");
    let body: serde_json::Value = response.json().await.unwrap();
    Tokens {
        access: body["access_token"].as_str().unwrap().to_string(),
        refresh: body["refresh_token"].as_str().unwrap().to_string(),
    }
}

pub fn set_cookies(headers: &reqwest::header::HeaderMap) -> Vec<String> {
    headers
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

/// The value of cookie `name` among Set-Cookie strings.
pub fn cookie_value(set_cookies: &[String], name: &str) -> Option<String> {
    set_cookies.iter().find_map(|c| {
        let first = c.split(';').next()?;
        let (n, v) = first.split_once('=')?;
        (n == name).then(|| v.to_string())
    })
}

/// Path of the authgate binary built for these tests, or of the one
/// `AUTHGATE_BIN` names (to measure another build with the same test).
pub fn binary() -> &'static Path {
    static BINARY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BINARY.get_or_init(|| {
        std::env::var_os("AUTHGATE_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_authgate")))
    })
}

/// Signs arbitrary claims with the test secret (for crafted tokens).
pub fn sign_hs256(claims: &serde_json::Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// Seconds since the Unix epoch, on the system clock.
pub fn now() -> u64 {
    authgate::clock::Clock::system().unix_secs()
}

/// Sends raw bytes on a fresh connection and returns the whole response
/// text (the connection is closed by `Connection: close` or a 2 s pause).
pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A GET with the path sent exactly as given (no client-side normalization).
pub async fn raw_get(addr: SocketAddr, path: &str, extra_headers: &str) -> String {
    raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n{extra_headers}\r\n")
            .as_bytes(),
    )
    .await
}

pub fn status_of(raw_response: &str) -> u16 {
    raw_response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// A TCP port nothing listens on, often for a listener a test starts
/// later. Taken below the kernel's ephemeral range (32768 and up by
/// default), where a port from `bind(0)` would be: an outbound connection
/// made in the meantime (to Redis, PostgreSQL, an upstream) could take
/// that one as its source port, and the later bind fail with "address in
/// use". Never the same port twice in one test process.
pub fn closed_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = rand::random_range(20_000..32_768);
        if given.contains(&port) {
            continue;
        }
        // Free now: nothing listens, nothing is bound.
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
}

/// Two distinct free ports (a listener and its admin listener):
/// [`closed_port`] never hands out the same one twice.
pub fn two_ports() -> (u16, u16) {
    (closed_port(), closed_port())
}
