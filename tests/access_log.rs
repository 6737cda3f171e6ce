//! Issue 18: the access log line of each request, read back.
//!
//! A binary of its own: the log is captured by the process-wide
//! subscriber. A thread's own subscriber (`set_default`) loses lines while
//! other tests run: tracing caches a callsite's interest as "never" when
//! another thread hits it first.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{json, Value};
use support::{client, now, sign_hs256, user, TestGateway, Upstream, SECRET};

/// Every access log line of the process.
#[derive(Clone, Default)]
struct CapturedLog(Arc<Mutex<Vec<u8>>>);

impl Write for CapturedLog {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for CapturedLog {
    type Writer = CapturedLog;

    fn make_writer(&'a self) -> CapturedLog {
        self.clone()
    }
}

impl CapturedLog {
    /// The process's log, capturing from the first call on.
    fn get() -> &'static CapturedLog {
        static LOG: OnceLock<CapturedLog> = OnceLock::new();
        LOG.get_or_init(|| {
            let log = CapturedLog::default();
            tracing_subscriber::fmt()
                .with_env_filter("authgate::access=info")
                .with_writer(log.clone())
                .with_ansi(false)
                .init();
            log
        })
    }

    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }

    /// The `auth` field of the line with this request id.
    fn auth_of(&self, request_id: &str) -> String {
        let text = self.text();
        let line = text
            .lines()
            .find(|line| line.contains(&format!("request_id=\"{request_id}\"")))
            .unwrap_or_else(|| panic!("no access log line for {request_id}:\n{text}"));
        let value = line.split(" auth=").nth(1).expect("an auth field");
        let value = value.split(' ').next().unwrap();
        value.trim_matches('"').to_string()
    }
}

/// Claims as authgate mints them, valid for ten minutes, changed by
/// `changes` (a `null` removes the claim).
fn claims(changes: Value) -> Value {
    let now = now();
    let mut claims = json!({"sub": "alice", "iat": now, "nbf": now, "exp": now + 600,
                            "iss": "authgate", "jti": "x", "roles": ["dev"]});
    for (name, value) in changes.as_object().unwrap() {
        match value {
            Value::Null => claims.as_object_mut().unwrap().remove(name),
            value => claims
                .as_object_mut()
                .unwrap()
                .insert(name.clone(), value.clone()),
        };
    }
    claims
}

/// The access log says why each token was refused, and never shows one.
#[tokio::test]
async fn the_access_log_names_why_a_token_was_refused() {
    let log = CapturedLog::get();
    let up = Upstream::start("api").await;
    let routes = format!(
        "[[routes]]\nprefix = \"/api\"\nupstream = \"{}\"\nauth = \"required\"\n",
        up.url()
    );
    let gw = TestGateway::start(&routes, &[user("alice", "alice-pw", &["dev"])]).await;
    let token = |changes: Value| sign_hs256(&claims(changes), SECRET);
    let mut naming_a_kid = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    naming_a_kid.kid = Some("nobody".into());
    let now = now();
    let cases: Vec<(&str, Option<String>)> = vec![
        ("ok", Some(token(json!({})))),
        ("missing", None),
        ("malformed", Some("not.a.token".into())),
        (
            "bad_signature",
            Some(sign_hs256(
                &claims(json!({})),
                "another-secret-that-is-also-32-bytes-long",
            )),
        ),
        ("expired", Some(token(json!({"exp": now - 60})))),
        ("not_yet_valid", Some(token(json!({"nbf": now + 600})))),
        ("wrong_issuer", Some(token(json!({"iss": "someone-else"})))),
        // No key_id is configured: a token naming any kid is refused.
        (
            "unknown_kid",
            Some(
                jsonwebtoken::encode(
                    &naming_a_kid,
                    &claims(json!({})),
                    &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
                )
                .unwrap(),
            ),
        ),
        ("missing_claim:jti", Some(token(json!({"jti": null})))),
        ("missing_claim:nbf", Some(token(json!({"nbf": null})))),
        (
            "lifetime_beyond_access_ttl",
            Some(token(json!({"exp": now + 86_400}))),
        ),
    ];
    for (n, (reason, token)) in cases.iter().enumerate() {
        let request_id = format!("why-{n}");
        let mut request = client()
            .get(gw.url("/api/x"))
            .header("x-request-id", &request_id);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let status = if *reason == "ok" { 200 } else { 401 };
        assert_eq!(response.status(), status, "{reason}");
        assert_eq!(log.auth_of(&request_id), *reason);
    }
    let text = log.text();
    for (reason, token) in &cases {
        if let Some(token) = token {
            assert!(!text.contains(token.as_str()), "{reason}: token logged");
        }
    }
}
