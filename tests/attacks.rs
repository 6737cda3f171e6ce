//! Issue 8: the attacker's list, played against a running authgate. Each
//! test is named for the attack it plays and asserts the exact refusal;
//! where an attack is about reaching an upstream, the upstreams' records
//! prove what did and did not arrive.

mod support;

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use authgate::auth::redirect::safe_redirect;
use support::{
    client, cookie_value, now, raw, raw_get, redis_prefix, set_cookies, sign_hs256, status_of,
    user, TestGateway, TestUser, Upstream, SECRET, SECRET_ENV,
};

// ---------------------------------------------------------------- set-up

/// `/public` (no login) and `/admin` (login with role admin) on different
/// upstreams; `/api` (login) on the admin upstream.
struct Site {
    public: Upstream,
    admin: Upstream,
    gw: TestGateway,
}

fn routes(public: &Upstream, admin: &Upstream) -> String {
    format!(
        r#"
[[routes]]
prefix = "/public"
upstream = "{p}"
auth = "public"
[[routes]]
prefix = "/admin"
upstream = "{a}"
auth = "required"
roles = ["admin"]
[[routes]]
prefix = "/api"
upstream = "{a}"
auth = "required"
"#,
        p = public.url(),
        a = admin.url()
    )
}

fn people() -> Vec<TestUser> {
    vec![
        user("alice", "alice-pw", &["admin"]),
        user("bob", "bob-pw", &["dev"]),
    ]
}

async fn site(extra: &str) -> Site {
    let public = Upstream::start("public").await;
    let admin = Upstream::start("admin").await;
    let gw = TestGateway::start(&format!("{}{extra}", routes(&public, &admin)), &people()).await;
    Site { public, admin, gw }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A token with exactly this header and payload text, HS256-signed with
/// `secret` (whatever the header claims).
fn forge(header: &str, payload: &str, secret: &[u8]) -> String {
    let message = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
    let signature = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &jsonwebtoken::EncodingKey::from_secret(secret),
        jsonwebtoken::Algorithm::HS256,
    )
    .unwrap();
    format!("{message}.{signature}")
}

fn claims_text(sub: &str, roles: &str) -> String {
    let now = now();
    format!(
        r#"{{"sub":"{sub}","iat":{now},"nbf":{now},"exp":{},"iss":"authgate","jti":"j","roles":{roles}}}"#,
        now + 600
    )
}

const HS256_HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// Sends `token` as a Bearer to `path`; asserts the exact invalid-token
/// refusal.
async fn assert_token_refused(gw: &TestGateway, path: &str, token: &str, attack: &str) {
    let response = client()
        .get(gw.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401, "{attack}");
    assert_eq!(
        response.headers()["www-authenticate"],
        "Bearer error=\"invalid_token\"",
        "{attack}"
    );
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"error": "invalid_token", "detail": "Not authenticated"}),
        "{attack}"
    );
}

async fn json_of(response: reqwest::Response) -> Value {
    response.json().await.unwrap()
}

// ------------------------------------------------------------- JWT forgery

#[tokio::test]
async fn jwt_alg_none_is_refused() {
    let s = site("").await;
    let payload = b64(claims_text("alice", r#"["admin"]"#).as_bytes());
    for header in [
        r#"{"alg":"none","typ":"JWT"}"#,
        r#"{"alg":"None"}"#,
        r#"{"alg":"NONE"}"#,
        r#"{"alg":"nOnE"}"#,
    ] {
        let token = format!("{}.{payload}.", b64(header.as_bytes()));
        assert_token_refused(&s.gw, "/admin/x", &token, header).await;
        let token = format!("{}.{payload}", b64(header.as_bytes()));
        assert_token_refused(&s.gw, "/admin/x", &token, header).await;
    }
    assert_eq!(s.admin.count(), 0);
}

#[tokio::test]
async fn jwt_hs256_signed_with_the_rs256_public_key_is_refused() {
    let public = Upstream::start("public").await;
    let admin = Upstream::start("admin").await;
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let toml = format!(
        "{}\n[jwt]\nalgorithm = \"RS256\"\nprivate_key = \"{fixtures}/rsa.pem\"\n",
        routes(&public, &admin)
    );
    let gw = TestGateway::start(&toml, &people()).await;
    // The real thing works.
    let good = gw.access_token("alice", "alice-pw").await;
    let response = client()
        .get(gw.url("/admin/x"))
        .bearer_auth(&good)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let before = admin.count();
    let pem = std::fs::read(format!("{fixtures}/rsa.pub.pem")).unwrap();
    let jwks: Value = json_of(gw.get("/.well-known/jwks.json").await).await;
    let n = jwks["keys"][0]["n"].as_str().unwrap().to_string();
    let claims = claims_text("alice", r#"["admin"]"#);
    for (what, secret) in [
        ("public key PEM", pem.clone()),
        (
            "PEM without trailing newline",
            pem.trim_ascii_end().to_vec(),
        ),
        ("JWK modulus", n.into_bytes()),
    ] {
        let token = forge(HS256_HEADER, &claims, &secret);
        assert_token_refused(&gw, "/admin/x", &token, what).await;
        // Same, with the header naming the gateway's kid-less key.
        let token = forge(
            r#"{"alg":"HS256","typ":"JWT","kid":null}"#,
            &claims,
            &secret,
        );
        assert_token_refused(&gw, "/admin/x", &token, what).await;
    }
    assert_eq!(admin.count(), before);
}

#[tokio::test]
async fn jwt_unknown_or_injected_kid_is_refused() {
    let public = Upstream::start("public").await;
    let admin = Upstream::start("admin").await;
    let toml = format!(
        "{}\n[jwt]\nsecret_env = \"{SECRET_ENV}\"\nkey_id = \"k1\"\n",
        routes(&public, &admin)
    );
    let gw = TestGateway::start(&toml, &people()).await;
    let claims = claims_text("alice", r#"["admin"]"#);
    // The configured kid with the real secret is accepted.
    let good = forge(r#"{"alg":"HS256","kid":"k1"}"#, &claims, SECRET.as_bytes());
    let response = client()
        .get(gw.url("/admin/x"))
        .bearer_auth(&good)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let before = admin.count();
    let kids = [
        "k2",
        "K1",
        "k1 ",
        "../../../../../../dev/null",
        "/dev/null",
        "file:///dev/null",
        "https://evil.example/jwks.json",
        "' OR '1'='1",
        "k1' UNION SELECT 'secret' --",
        "k1\u{0000}",
        "",
    ];
    for kid in kids {
        let header = json!({"alg": "HS256", "kid": kid}).to_string();
        // Signed with the real secret: an unknown kid is still refused.
        let token = forge(&header, &claims, SECRET.as_bytes());
        assert_token_refused(&gw, "/admin/x", &token, kid).await;
        // Signed with what the kid would make a naive server load.
        for secret in [&b""[..], b"\n", b"secret"] {
            let token = forge(&header, &claims, secret);
            assert_token_refused(&gw, "/admin/x", &token, kid).await;
        }
    }
    // A kid that is not a string at all.
    for header in [
        r#"{"alg":"HS256","kid":1}"#,
        r#"{"alg":"HS256","kid":["k1"]}"#,
        r#"{"alg":"HS256","kid":{"$ne":null}}"#,
    ] {
        let token = forge(header, &claims, SECRET.as_bytes());
        assert_token_refused(&gw, "/admin/x", &token, header).await;
    }
    assert_eq!(admin.count(), before);
}

#[tokio::test]
async fn jwt_tampered_payload_with_the_original_signature_is_refused() {
    let s = site("").await;
    let bob = s.gw.access_token("bob", "bob-pw").await;
    let parts: Vec<&str> = bob.split('.').collect();
    let mut claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    claims["roles"] = json!(["admin"]);
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64(claims.to_string().as_bytes()),
        parts[2]
    );
    assert_token_refused(&s.gw, "/admin/x", &forged, "roles raised").await;
    claims["roles"] = json!(["dev"]);
    claims["sub"] = json!("alice");
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64(claims.to_string().as_bytes()),
        parts[2]
    );
    assert_token_refused(&s.gw, "/api/x", &forged, "subject swapped").await;
    // One flipped bit in the signature.
    let mut sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    sig[0] ^= 1;
    let forged = format!("{}.{}.{}", parts[0], parts[1], b64(&sig));
    assert_token_refused(&s.gw, "/api/x", &forged, "signature bit").await;
    assert_eq!(s.admin.count(), 0);
}

#[tokio::test]
async fn jwt_signature_stripped_is_refused() {
    let s = site("").await;
    let alice = s.gw.access_token("alice", "alice-pw").await;
    let (unsigned, _) = alice.rsplit_once('.').unwrap();
    for token in [
        format!("{unsigned}."),
        unsigned.to_string(),
        format!("{unsigned}.."),
        format!("{unsigned}.="),
    ] {
        assert_token_refused(&s.gw, "/admin/x", &token, &token).await;
    }
    assert_eq!(s.admin.count(), 0);
}

#[tokio::test]
async fn jwt_truncated_and_non_base64_segments_are_refused() {
    let s = site("").await;
    let alice = s.gw.access_token("alice", "alice-pw").await;
    let parts: Vec<&str> = alice.split('.').collect();
    let std_b64 = base64::engine::general_purpose::STANDARD;
    let cases = [
        alice[..alice.len() - 1].to_string(),
        alice[..alice.len() / 2].to_string(),
        parts[0].to_string(),
        format!("{}.", parts[0]),
        ".".into(),
        "..".into(),
        "...".into(),
        format!("{}.{}.{}.{}", parts[0], parts[1], parts[2], parts[2]),
        format!("{}!.{}.{}", parts[0], parts[1], parts[2]),
        format!("{}.{}*.{}", parts[0], parts[1], parts[2]),
        format!("{}.{}.{}%%", parts[0], parts[1], parts[2]),
        // Padded, and standard (not URL-safe) base64.
        format!("{}==.{}.{}", parts[0], parts[1], parts[2]),
        {
            let mut header = URL_SAFE_NO_PAD.decode(parts[0]).unwrap();
            header.push(b' ');
            format!("{}.{}.{}", std_b64.encode(header), parts[1], parts[2])
        },
        // Valid base64, not JSON.
        format!("{}.{}.{}", b64(b"not json"), parts[1], parts[2]),
        format!("{}.{}.{}", parts[0], b64(b"\xff\xfe"), parts[2]),
    ];
    for token in &cases {
        assert_token_refused(&s.gw, "/admin/x", token, token).await;
    }
    assert_eq!(s.admin.count(), 0);
}

#[tokio::test]
async fn jwt_duplicate_json_keys_are_refused() {
    let s = site("").await;
    let now = now();
    let exp = now + 600;
    let base = format!(r#""iat":{now},"nbf":{now},"exp":{exp},"iss":"authgate","jti":"j""#);
    let cases = [
        // Header: a verifier that reads the last `alg` sees "none".
        (
            r#"{"alg":"HS256","typ":"JWT","alg":"none"}"#.to_string(),
            format!(r#"{{"sub":"alice","roles":["admin"],{base}}}"#),
        ),
        (
            r#"{"alg":"HS256","kid":"a","kid":"b"}"#.to_string(),
            format!(r#"{{"sub":"alice","roles":["admin"],{base}}}"#),
        ),
        // Claims: which subject, which roles?
        (
            HS256_HEADER.to_string(),
            format!(r#"{{"sub":"bob","roles":["dev"],{base},"sub":"alice"}}"#),
        ),
        (
            HS256_HEADER.to_string(),
            format!(r#"{{"sub":"bob","roles":["dev"],{base},"roles":["admin"]}}"#),
        ),
        (
            HS256_HEADER.to_string(),
            format!(r#"{{"sub":"bob","roles":["admin"],{base},"exp":1}}"#),
        ),
        (
            HS256_HEADER.to_string(),
            format!(r#"{{"sub":"bob","roles":["admin"],"iss":"evil",{base}}}"#),
        ),
    ];
    for (header, claims) in &cases {
        // Signed with the real secret: only the duplicate is wrong.
        let token = forge(header, claims, SECRET.as_bytes());
        assert_token_refused(&s.gw, "/admin/x", &token, &format!("{header} {claims}")).await;
    }
    assert_eq!(s.admin.count(), 0);
}

#[tokio::test]
async fn jwt_exp_as_string_float_or_huge_number_is_refused() {
    let s = site("").await;
    let now = now();
    let fair = now + 600;
    let exps = [
        format!("\"{fair}\""),
        format!("{fair}.5"),
        format!("{fair}.0"),
        format!("{fair}e0"),
        "1e300".to_string(),
        "18446744073709551615".to_string(),
        "18446744073709551616".to_string(),
        "99999999999999999999999999999".to_string(),
        format!("{}", now + 100 * 365 * 24 * 3600),
        "-1".to_string(),
        "null".to_string(),
        "true".to_string(),
        format!("[{fair}]"),
    ];
    for exp in &exps {
        let claims = format!(
            r#"{{"sub":"alice","roles":["admin"],"iat":{now},"nbf":{now},"exp":{exp},"iss":"authgate","jti":"j"}}"#
        );
        let token = forge(HS256_HEADER, &claims, SECRET.as_bytes());
        assert_token_refused(&s.gw, "/admin/x", &token, exp).await;
    }
    assert_eq!(s.admin.count(), 0);
    // The control: a fair exp passes.
    let token = forge(
        HS256_HEADER,
        &claims_text("alice", r#"["admin"]"#),
        SECRET.as_bytes(),
    );
    let response = client()
        .get(s.gw.url("/admin/x"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn jwt_of_100_kib_is_refused_before_parsing() {
    let s = site("").await;
    let now = now();
    let padding = "p".repeat(100 * 1024);
    let big = sign_hs256(
        &json!({"sub": "alice", "roles": ["admin"], "iat": now, "nbf": now, "exp": now + 600,
                "iss": "authgate", "jti": "j", "pad": padding}),
        SECRET,
    );
    // As a header or a cookie: past the head limit, 431 from the listener.
    let response = raw_get(
        s.gw.addr,
        "/admin/x",
        &format!("Authorization: Bearer {big}\r\n"),
    )
    .await;
    assert_eq!(
        status_of(&response),
        431,
        "{}",
        &response[..64.min(response.len())]
    );
    let response = raw_get(
        s.gw.addr,
        "/admin/x",
        &format!("Cookie: access_token={big}\r\n"),
    )
    .await;
    assert_eq!(status_of(&response), 431);
    // Under the head limit but over the 8 KiB token limit: invalid.
    let nine_kib = sign_hs256(
        &json!({"sub": "alice", "roles": ["admin"], "iat": now, "nbf": now, "exp": now + 600,
                "iss": "authgate", "jti": "j", "pad": "p".repeat(9 * 1024)}),
        SECRET,
    );
    assert_token_refused(&s.gw, "/admin/x", &nine_kib, "9 KiB").await;
    assert_eq!(s.admin.count(), 0);
}

// ------------------------------------------------- spoofed identity headers

/// Every header an upstream might read as identity, in every spelling.
fn spoofs() -> String {
    let mut lines = String::new();
    for name in ["X-Auth-User", "X-Auth-Email", "X-Auth-Roles"] {
        let variants = [
            name.to_string(),
            name.to_ascii_lowercase(),
            name.to_ascii_uppercase(),
            name.replace('-', "_"),
            name.to_ascii_lowercase().replace('-', "_"),
            name.replacen('-', "_", 1),
        ];
        for v in variants {
            lines.push_str(&format!("{v}: root\r\n"));
        }
    }
    // Repeated, and a list in one value.
    lines.push_str("X-Auth-Roles: admin\r\nX-Auth-Roles: superuser\r\n");
    lines.push_str("X-Auth-User: root, alice\r\n");
    lines
}

fn assert_no_spoof(seen: &support::Seen, attack: &str) {
    for (name, value) in &seen.headers {
        let folded = name.as_str().replace('_', "-");
        if folded.starts_with("x-auth-") {
            let value = value.to_str().unwrap();
            for forged in ["root", "admin", "superuser"] {
                assert!(
                    !value.split(',').any(|v| v.trim() == forged),
                    "{attack}: {name}: {value} reached the upstream"
                );
            }
            assert!(!value.contains("root"), "{attack}: {name}: {value}");
        }
    }
}

#[tokio::test]
async fn spoofed_identity_headers_in_every_case_and_underscore_form_are_stripped() {
    let s = site("").await;
    let bob = s.gw.access_token("bob", "bob-pw").await;
    // Anonymous, on a public route: no identity header reaches it at all.
    let response = raw_get(s.gw.addr, "/public/x", &spoofs()).await;
    assert_eq!(status_of(&response), 200, "{response}");
    let seen = s.public.last();
    assert_no_spoof(&seen, "public");
    assert!(
        !seen
            .headers
            .keys()
            .any(|n| n.as_str().replace('_', "-").starts_with("x-auth-")),
        "{:?}",
        seen.headers
    );
    // Authenticated: exactly authgate's own, once each.
    let response = raw_get(
        s.gw.addr,
        "/api/x",
        &format!("Authorization: Bearer {bob}\r\n{}", spoofs()),
    )
    .await;
    assert_eq!(status_of(&response), 200, "{response}");
    let seen = s.admin.last();
    assert_no_spoof(&seen, "api");
    assert_eq!(seen.headers.get_all("x-auth-user").iter().count(), 1);
    assert_eq!(seen.headers["x-auth-user"], "bob");
    assert_eq!(seen.headers.get_all("x-auth-roles").iter().count(), 1);
    assert_eq!(seen.headers["x-auth-roles"], "dev");
    assert_eq!(seen.headers["x-auth-email"], "bob@example.com");
}

#[tokio::test]
async fn spoofed_identity_header_inside_a_folded_header_is_refused() {
    let s = site("").await;
    // obs-fold (RFC 9112 §5.2): a continuation line that a lenient parser
    // would glue onto the previous header — or read as a header of its own.
    for folded in [
        "X-Auth-User: bob\r\n root\r\n",
        "X-Note: a\r\n X-Auth-User: root\r\n",
        "X-Note: a\r\n\tX-Auth-Roles: admin\r\n",
    ] {
        let response = raw_get(s.gw.addr, "/public/x", folded).await;
        assert_eq!(status_of(&response), 400, "{folded:?}: {response}");
    }
    assert_eq!(s.public.count(), 0);
}

#[tokio::test]
async fn spoofed_identity_header_named_in_connection_cannot_drop_the_real_one() {
    let s = site("").await;
    let bob = s.gw.access_token("bob", "bob-pw").await;
    // Hop-by-hop by nomination: a naive proxy would strip its own injected
    // identity after the client listed it in `Connection`.
    let response = raw_get(
        s.gw.addr,
        "/api/x",
        &format!(
            "Authorization: Bearer {bob}\r\nConnection: close, X-Auth-User, X-Auth-Roles\r\nX-Auth-User: root\r\n"
        ),
    )
    .await;
    assert_eq!(status_of(&response), 200, "{response}");
    let seen = s.admin.last();
    assert_eq!(seen.headers["x-auth-user"], "bob");
    assert_eq!(seen.headers["x-auth-roles"], "dev");
    assert_no_spoof(&seen, "connection");
}

// ------------------------------------------------------- request smuggling

/// The value of header `name` in the head of a raw response.
fn raw_header<'a>(raw_response: &'a str, name: &str) -> Option<&'a str> {
    let head = raw_response.split("\r\n\r\n").next()?;
    head.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// How many responses a raw exchange produced.
fn responses_in(raw_response: &str) -> usize {
    raw_response.matches("HTTP/1.1 ").count()
}

/// Content-Length and Transfer-Encoding together (CL.TE / TE.CL): a server
/// behind that frames by the length would read the attacker's second
/// request out of the body. hyper frames it by Transfer-Encoding, removes
/// Content-Length (RFC 9112 §6.3) and closes the connection after the
/// answer: the upstream gets one chunked message, and the bytes after it
/// are never read as a request.
#[tokio::test]
async fn both_content_length_and_transfer_encoding_is_framed_by_transfer_encoding_and_closed() {
    let s = site("").await;
    let heads = [
        "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
        "Content-Length: 60\r\nTransfer-Encoding: chunked\r\n",
        "content-length: 0\r\ntransfer-encoding: chunked\r\n",
    ];
    for (i, head) in heads.iter().enumerate() {
        let request =
            format!("POST /public/x HTTP/1.1\r\nHost: gw\r\n{head}\r\n{CHUNKED_HELLO}{SMUGGLED}");
        let mut stream = TcpStream::connect(s.gw.addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let response = read_response(&mut stream).await;
        assert_eq!(status_of(&response), 200, "{head:?}: {response}");
        assert_eq!(
            raw_header(&response, "connection"),
            Some("close"),
            "{response}"
        );
        assert!(
            closed_within(&mut stream, Duration::from_secs(5)).await,
            "{head:?}: the connection stayed open for the smuggled bytes"
        );
        let seen = s.public.last();
        assert_eq!(seen.body.as_ref(), b"hello", "{head:?}");
        assert!(seen.headers.get("content-length").is_none(), "{head:?}");
        assert_eq!(s.public.count(), i + 1, "{head:?}");
    }
    assert_eq!(s.admin.count(), 0);
}

/// The same behind a good request on one keep-alive connection: both are
/// served, each as one message, and nothing after the second is parsed.
#[tokio::test]
async fn both_lengths_pipelined_after_a_good_request_end_the_connection() {
    let s = site("").await;
    let request = format!(
        "GET /public/first HTTP/1.1\r\nHost: gw\r\n\r\n\
         POST /public/x HTTP/1.1\r\nHost: gw\r\nX-Request-Id: smuggle-2\r\n\
         Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n\
         {CHUNKED_HELLO}{SMUGGLED}"
    );
    let response = raw(s.gw.addr, request.as_bytes()).await;
    assert_eq!(responses_in(&response), 2, "{response}");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let second = &response[response.rfind("HTTP/1.1 ").unwrap()..];
    assert!(second.starts_with("HTTP/1.1 200"), "{response}");
    assert_eq!(raw_header(second, "x-request-id"), Some("smuggle-2"));
    assert_eq!(raw_header(second, "connection"), Some("close"));
    let uris: Vec<String> = s.public.seen().into_iter().map(|seen| seen.uri).collect();
    assert_eq!(uris, ["/public/first", "/public/x"]);
    assert_eq!(s.public.last().body.as_ref(), b"hello");
    assert_eq!(s.admin.count(), 0);
}

const SMUGGLED: &str = "GET /admin/smuggled HTTP/1.1\r\nHost: gw\r\n\r\n";
const CHUNKED_HELLO: &str = "5\r\nhello\r\n0\r\n\r\n";

/// Sends a POST with each of `heads`, then `body` and a smuggled request;
/// each must be answered exactly once, 400, and reach no upstream.
async fn assert_smuggling_refused(s: &Site, heads: &[&str], body: &str) -> Vec<String> {
    let mut responses = Vec::new();
    for head in heads {
        let request = format!("POST /public/x HTTP/1.1\r\nHost: gw\r\n{head}\r\n{body}{SMUGGLED}");
        let response = raw(s.gw.addr, request.as_bytes()).await;
        assert_eq!(status_of(&response), 400, "{head:?}: {response}");
        assert_eq!(responses_in(&response), 1, "{head:?}: {response}");
        responses.push(response);
    }
    assert_eq!(s.public.count(), 0);
    assert_eq!(s.admin.count(), 0);
    responses
}

#[tokio::test]
async fn smuggling_with_two_different_content_lengths_is_400() {
    let s = site("").await;
    let heads = [
        "Content-Length: 5\r\nContent-Length: 44\r\n",
        "Content-Length: 5, 44\r\n",
        "Content-Length: +5\r\n",
        "Content-Length: 0x5\r\n",
    ];
    assert_smuggling_refused(&s, &heads, "hello").await;
}

#[tokio::test]
async fn smuggling_with_transfer_encoding_not_ending_in_chunked_is_400() {
    let s = site("").await;
    let heads = [
        "Transfer-Encoding: chunked, identity\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
        "Transfer-Encoding: identity\r\nContent-Length: 5\r\n",
        "Transfer-Encoding: xchunked\r\n",
        "Transfer-Encoding: chunked \r\nTransfer-Encoding: gzip\r\n",
    ];
    assert_smuggling_refused(&s, &heads, CHUNKED_HELLO).await;
    // Transfer-Encoding in HTTP/1.0, which has none.
    let response = raw(
        s.gw.addr,
        b"POST /public/x HTTP/1.0\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&response), 400, "{response}");
    assert_eq!(s.public.count(), 0);
}

#[tokio::test]
async fn smuggling_with_obsolete_line_folding_is_400() {
    let s = site("").await;
    let heads = [
        "Transfer-Encoding:\r\n chunked\r\n",
        "Content-Length: 5\r\nX-Note: a\r\n Transfer-Encoding: chunked\r\n",
        "Content-Length:\r\n\t5\r\n",
    ];
    assert_smuggling_refused(&s, &heads, CHUNKED_HELLO).await;
}

/// CONNECT asks a proxy for a raw tunnel; authgate is a reverse proxy and
/// opens none, on any route, authenticated or not.
#[tokio::test]
async fn connect_tunnel_request_is_405_and_never_forwarded() {
    refused_on_every_route(
        "CONNECT",
        &[
            ("internal.example:443", false),
            ("127.0.0.1:22", true),
            ("/public/x", false),
        ],
    )
    .await;
}

/// A TRACE echoed by an upstream would carry the identity headers injected
/// here back to the page that sent it (cross-site tracing).
#[tokio::test]
async fn trace_is_405_and_never_echoed_by_an_upstream() {
    refused_on_every_route("TRACE", &[("/public/x", false), ("/admin/x", true)]).await;
}

/// `method` to each target (with bob's Bearer token where marked) is a JSON
/// 405 whose `Allow` leaves `method` out, and reaches no upstream.
async fn refused_on_every_route(method: &str, targets: &[(&str, bool)]) {
    let s = site("").await;
    let bob = s.gw.access_token("bob", "bob-pw").await;
    for &(target, with_token) in targets {
        let auth = if with_token {
            format!("Authorization: Bearer {bob}\r\n")
        } else {
            String::new()
        };
        // An authority-form target (CONNECT's) names the host; a path does not.
        let host = if target.starts_with('/') {
            "localhost"
        } else {
            target
        };
        let response = raw(
            s.gw.addr,
            format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\n{auth}\r\n").as_bytes(),
        )
        .await;
        assert_eq!(status_of(&response), 405, "{method} {target}: {response}");
        assert!(
            response.contains("\"error\":\"method_not_allowed\""),
            "{response}"
        );
        let allow = raw_header(&response, "allow").map(|a| a.to_ascii_lowercase());
        assert!(
            allow.is_some_and(|a| a.contains("get") && !a.contains(&method.to_ascii_lowercase())),
            "{response}"
        );
        assert!(
            !response.to_ascii_lowercase().contains("x-auth-user"),
            "{response}"
        );
    }
    assert_eq!(s.public.count(), 0);
    assert_eq!(s.admin.count(), 0);
}

// ------------------------------------------------------------ route escape

#[tokio::test]
async fn route_escape_paths_never_reach_the_protected_upstream_unauthenticated() {
    let s = site("").await;
    let cases: [(&str, u16); 12] = [
        // Resolved to /admin: the admin route's policy applies.
        ("/public/../admin", 401),
        ("/public/../admin/x", 401),
        ("/public/%2e%2e/admin", 401),
        ("/public/%2E%2E/admin", 401),
        ("/public/.%2e/admin", 401),
        ("//admin", 401),
        ("/public/./../admin", 401),
        // Ambiguous to some upstream: refused outright.
        ("/public/%2E%2E%2Fadmin", 400),
        ("/public/..;/admin", 400),
        ("/public/..%5Cadmin", 400),
        ("/public/%00/../admin", 400),
        ("/public/..\\admin", 400),
    ];
    for (path, status) in cases {
        let response = raw_get(s.gw.addr, path, "").await;
        assert_eq!(status_of(&response), status, "{path}: {response}");
    }
    // A raw NUL byte in the request line never parses.
    let response = raw(
        s.gw.addr,
        b"GET /public/\x00/../admin HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&response), 400, "{response}");
    // Double-encoded dots stay a (public) name, never a dot segment.
    let response = raw_get(s.gw.addr, "/public/%252e%252e/admin", "").await;
    assert_eq!(status_of(&response), 200, "{response}");
    assert_eq!(s.public.last().uri, "/public/%252e%252e/admin");
    assert_eq!(s.admin.count(), 0);
}

// --------------------------------------------------- refresh-token replay

#[tokio::test]
async fn refresh_token_replay_after_rotation_revokes_the_session() {
    let s = site("\n[sessions]\nreuse_grace = \"0s\"\n").await;
    let (body, _) = s.gw.login("bob", "bob-pw").await;
    let stolen = body["refresh_token"].as_str().unwrap().to_string();
    // The user refreshes; the token is rotated.
    let response = s.gw.refresh_grant(&stolen).await;
    assert_eq!(response.status(), 200);
    let rotated = json_of(response).await["refresh_token"]
        .as_str()
        .unwrap()
        .to_string();
    tokio::time::sleep(Duration::from_millis(20)).await;
    // The thief replays the old one: refused, and the whole family revoked.
    let response = s.gw.refresh_grant(&stolen).await;
    assert_eq!(response.status(), 400);
    assert_eq!(
        json_of(response).await,
        json!({"error": "invalid_grant", "detail": "The refresh token is invalid, expired or revoked"})
    );
    let response = s.gw.refresh_grant(&rotated).await;
    assert_eq!(
        response.status(),
        400,
        "the rotated token died with its family"
    );
}

// -------------------------------------------------------------------- CSRF

/// A site whose browser sessions are cookies, with one trusted origin and
/// no reuse grace (so a rotation that should not have happened shows).
async fn csrf_site() -> Site {
    site(
        "\n[sessions]\nreuse_grace = \"0s\"\n\
         [cookies]\nsecure = false\ntrusted_origins = [\"https://app.example.com\"]\n",
    )
    .await
}

struct Browser {
    access: String,
    refresh: String,
}

impl Browser {
    async fn login(gw: &TestGateway) -> Browser {
        let (_, cookies) = gw.login("bob", "bob-pw").await;
        Browser {
            access: cookie_value(&cookies, "access_token").unwrap(),
            refresh: cookie_value(&cookies, "refresh_token").unwrap(),
        }
    }

    fn cookies(&self) -> String {
        format!(
            "access_token={}; refresh_token={}",
            self.access, self.refresh
        )
    }

    /// Cookies with an expired access token: the next request refreshes.
    fn expired_cookies(&self) -> String {
        let now = now();
        let expired = sign_hs256(
            &json!({"sub": "bob", "iat": now - 1000, "nbf": now - 1000, "exp": now - 100,
                    "iss": "authgate", "jti": "old", "roles": ["dev"]}),
            SECRET,
        );
        format!("access_token={expired}; refresh_token={}", self.refresh)
    }
}

async fn post(
    gw: &TestGateway,
    path: &str,
    cookie: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = client()
        .post(gw.url(path))
        .header("cookie", cookie)
        .body("x");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

async fn assert_csrf_refused(response: reqwest::Response, attack: &str) {
    assert_eq!(response.status(), 403, "{attack}");
    assert!(set_cookies(response.headers()).is_empty(), "{attack}");
    assert_eq!(
        json_of(response).await,
        json!({"error": "csrf", "detail": "Cross-site request refused"}),
        "{attack}"
    );
}

#[tokio::test]
async fn csrf_cross_site_post_with_session_cookies_is_refused() {
    let s = csrf_site().await;
    let b = Browser::login(&s.gw).await;
    let own = format!("http://{}", s.gw.addr);
    let refused: [(&str, &[(&str, &str)]); 7] = [
        ("cross-site", &[("sec-fetch-site", "cross-site")]),
        (
            "cross-site from evil",
            &[
                ("sec-fetch-site", "cross-site"),
                ("origin", "https://evil.example"),
            ],
        ),
        (
            "same-site untrusted",
            &[
                ("sec-fetch-site", "same-site"),
                ("origin", "https://blog.example.com"),
            ],
        ),
        ("unknown fetch site", &[("sec-fetch-site", "cross-origin")]),
        (
            "old browser, foreign origin",
            &[("origin", "https://evil.example")],
        ),
        ("old browser, null origin", &[("origin", "null")]),
        (
            "old browser, other scheme",
            &[("origin", "https://127.0.0.1")],
        ),
    ];
    for method in ["POST", "PUT", "PATCH", "DELETE"] {
        for (attack, headers) in refused {
            let mut request = client()
                .request(method.parse().unwrap(), s.gw.url("/api/x"))
                .header("cookie", b.cookies());
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            assert_csrf_refused(request.send().await.unwrap(), &format!("{method} {attack}")).await;
        }
    }
    assert_eq!(s.admin.count(), 0);
    let allowed: [(&str, &[(&str, &str)]); 6] = [
        ("same-origin", &[("sec-fetch-site", "same-origin")]),
        ("user typed it", &[("sec-fetch-site", "none")]),
        (
            "trusted same-site",
            &[
                ("sec-fetch-site", "same-site"),
                ("origin", "https://app.example.com"),
            ],
        ),
        ("old browser, own origin", &[("origin", own.as_str())]),
        (
            "old browser, trusted origin",
            &[("origin", "https://app.example.com")],
        ),
        ("not a browser", &[]),
    ];
    for (case, headers) in allowed {
        let response = post(&s.gw, "/api/x", &b.cookies(), headers).await;
        assert_eq!(response.status(), 200, "{case}");
    }
    assert_eq!(s.admin.count(), allowed.len());
}

#[tokio::test]
async fn csrf_cross_site_post_cannot_trigger_a_silent_refresh() {
    let s = csrf_site().await;
    let b = Browser::login(&s.gw).await;
    let response = post(
        &s.gw,
        "/api/x",
        &b.expired_cookies(),
        &[("sec-fetch-site", "cross-site")],
    )
    .await;
    assert_csrf_refused(response, "expired access cookie + refresh cookie").await;
    // The refresh token was not rotated: with no reuse grace, a rotation
    // would have made this legitimate refresh (a few ms later) a replay.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let response = post(
        &s.gw,
        "/api/x",
        &b.expired_cookies(),
        &[("sec-fetch-site", "same-origin")],
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(set_cookies(response.headers()).len(), 2, "refreshed now");
    assert_eq!(s.admin.count(), 1);
}

#[tokio::test]
async fn csrf_cross_site_token_refresh_and_logout_with_the_cookie_are_refused() {
    let s = csrf_site().await;
    let b = Browser::login(&s.gw).await;
    let cookie = format!("refresh_token={}", b.refresh);
    let response = client()
        .post(s.gw.url("/token"))
        .header("cookie", &cookie)
        .header("sec-fetch-site", "cross-site")
        .form(&[("grant_type", "refresh_token")])
        .send()
        .await
        .unwrap();
    assert_csrf_refused(response, "/token with the refresh cookie").await;
    let response = client()
        .post(s.gw.url("/logout"))
        .header("cookie", &cookie)
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_csrf_refused(response, "/logout with the refresh cookie").await;
    // Neither rotated nor ended the session: it still refreshes.
    let response = client()
        .post(s.gw.url("/token"))
        .header("cookie", &cookie)
        .header("sec-fetch-site", "same-origin")
        .form(&[("grant_type", "refresh_token")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn csrf_cross_site_websocket_handshake_with_session_cookies_is_refused() {
    let s = csrf_site().await;
    let b = Browser::login(&s.gw).await;
    let handshake = |origin: &str| {
        format!(
            "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: {origin}\r\nCookie: {}\r\n",
            b.cookies()
        )
    };
    let response = raw_get(s.gw.addr, "/api/ws", &handshake("https://evil.example")).await;
    assert_eq!(status_of(&response), 403, "{response}");
    assert!(response.contains(r#""error":"csrf""#), "{response}");
    assert_eq!(s.admin.count(), 0);
    // From its own origin it reaches the upstream (which is no WebSocket
    // server, so it answers the plain request).
    let response = raw_get(s.gw.addr, "/api/ws", &handshake("http://gw.test")).await;
    assert_ne!(status_of(&response), 403, "{response}");
    assert_eq!(s.admin.count(), 1);
}

#[tokio::test]
async fn csrf_check_leaves_bearer_safe_methods_and_public_routes_alone() {
    let s = csrf_site().await;
    let b = Browser::login(&s.gw).await;
    let cross = [
        ("sec-fetch-site", "cross-site"),
        ("origin", "https://evil.example"),
    ];
    // Bearer: a third-party page cannot make a browser send one.
    let mut request = client()
        .post(s.gw.url("/api/x"))
        .bearer_auth(&b.access)
        .header("cookie", b.cookies());
    for (name, value) in cross {
        request = request.header(name, value);
    }
    assert_eq!(request.send().await.unwrap().status(), 200);
    // A GET changes nothing.
    let mut request = client()
        .get(s.gw.url("/api/x"))
        .header("cookie", b.cookies());
    for (name, value) in cross {
        request = request.header(name, value);
    }
    assert_eq!(request.send().await.unwrap().status(), 200);
    // A public route carries no credential.
    assert_eq!(
        post(&s.gw, "/public/x", &b.cookies(), &cross)
            .await
            .status(),
        200
    );
    // A refresh token in the form is a credential the page would have to know.
    let response = client()
        .post(s.gw.url("/token"))
        .header("sec-fetch-site", "cross-site")
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", b.refresh.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

// ------------------------------------------------------- password guessing

async fn login_attempt(
    gw: &TestGateway,
    username: &str,
    password: &str,
    xff: Option<&str>,
) -> reqwest::Response {
    let mut request = client()
        .post(gw.url("/token"))
        .form(&[("username", username), ("password", password)]);
    if let Some(xff) = xff {
        request = request.header("x-forwarded-for", xff);
    }
    request.send().await.unwrap()
}

/// `authgate_logins_total{outcome="throttled"}`: the process's metrics,
/// shared by every test here, so only ever compared as growing.
fn throttled_logins() -> u64 {
    support::process_metric("authgate_logins_total{outcome=\"throttled\"}")
}

async fn assert_throttled(response: reqwest::Response, ban_secs: u64, attack: &str) {
    assert_eq!(response.status(), 429, "{attack}");
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=ban_secs).contains(&retry_after),
        "{attack}: Retry-After {retry_after}"
    );
    assert_eq!(
        json_of(response).await,
        json!({"error": "too_many_requests", "detail": "Too many failed attempts; try again later"}),
        "{attack}"
    );
}

#[tokio::test]
async fn password_guessing_on_one_username_gets_429_even_with_the_right_password() {
    let s = site("").await;
    for guess in 0..5 {
        let response = login_attempt(&s.gw, "alice", &format!("guess-{guess}"), None).await;
        assert_eq!(response.status(), 401, "guess {guess}");
    }
    // The sixth attempt is refused before the password is looked at.
    let throttled_before = throttled_logins();
    let response = login_attempt(&s.gw, "alice", "alice-pw", None).await;
    assert_throttled(response, 900, "right password after 5 failures").await;
    assert!(
        throttled_logins() > throttled_before,
        "counted as throttled"
    );
    let response = login_attempt(&s.gw, "ALICE", "alice-pw", None).await;
    assert_throttled(response, 900, "same username, other case").await;
    // Other users are unaffected.
    assert_eq!(
        login_attempt(&s.gw, "bob", "bob-pw", None).await.status(),
        200
    );
}

#[tokio::test]
async fn password_guessing_through_the_sign_in_form_gets_429() {
    let s = site("\n[auth.throttle]\nmax_failures = 2\n").await;
    let form = |password: &'static str| {
        client()
            .post(s.gw.url("/token"))
            .header("accept", "text/html")
            .form(&[
                ("username", "alice"),
                ("password", password),
                ("rd", "/app"),
            ])
            .send()
    };
    for _ in 0..2 {
        assert_eq!(form("nope").await.unwrap().status(), 401);
    }
    let response = form("alice-pw").await.unwrap();
    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key("retry-after"));
    assert!(set_cookies(response.headers()).is_empty());
}

#[tokio::test]
async fn password_guessing_budget_is_restored_by_a_success() {
    let s = site("").await;
    for _ in 0..4 {
        assert_eq!(
            login_attempt(&s.gw, "alice", "nope", None).await.status(),
            401
        );
    }
    assert_eq!(
        login_attempt(&s.gw, "alice", "alice-pw", None)
            .await
            .status(),
        200
    );
    for _ in 0..4 {
        assert_eq!(
            login_attempt(&s.gw, "alice", "nope", None).await.status(),
            401
        );
    }
    assert_eq!(
        login_attempt(&s.gw, "alice", "alice-pw", None)
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn password_spraying_from_one_address_gets_429() {
    let s = site("\n[auth.throttle]\nip_max_failures = 3\nban = \"1m\"\n").await;
    for name in ["u1", "u2", "u3"] {
        assert_eq!(
            login_attempt(&s.gw, name, "spray", None).await.status(),
            401
        );
    }
    let response = login_attempt(&s.gw, "bob", "bob-pw", None).await;
    assert_throttled(response, 60, "fourth username from one address").await;
    // A forged X-Forwarded-For from an untrusted peer changes nothing.
    let response = login_attempt(&s.gw, "bob", "bob-pw", Some("198.51.100.7")).await;
    assert_throttled(response, 60, "forged X-Forwarded-For").await;
}

#[tokio::test]
async fn password_spraying_behind_a_trusted_proxy_is_counted_per_client() {
    let s = site(
        "\n[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n\
         [auth.throttle]\nip_max_failures = 2\nmax_failures = 100\n",
    )
    .await;
    let attacker = Some("203.0.113.66");
    for name in ["u1", "u2"] {
        assert_eq!(
            login_attempt(&s.gw, name, "spray", attacker).await.status(),
            401
        );
    }
    assert_throttled(
        login_attempt(&s.gw, "u3", "spray", attacker).await,
        900,
        "attacker",
    )
    .await;
    // The client left of a trusted hop is believed; one forged further
    // left is not.
    assert_throttled(
        login_attempt(&s.gw, "u3", "spray", Some("192.0.2.1, 203.0.113.66")).await,
        900,
        "forged leftmost",
    )
    .await;
    // Another client behind the same proxy is not.
    assert_eq!(
        login_attempt(&s.gw, "bob", "bob-pw", Some("203.0.113.77"))
            .await
            .status(),
        200
    );
}

fn redis_sessions(prefix: &str) -> String {
    format!(
        "\n[sessions]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:6379\"\nkey_prefix = \"{prefix}\"\n"
    )
}

#[tokio::test]
async fn password_guessing_across_instances_sharing_redis_gets_429() {
    let prefix = redis_prefix("throttle");
    let extra = format!(
        "{}\n[auth.throttle]\nmax_failures = 2\n",
        redis_sessions(&prefix)
    );
    let one = site(&extra).await;
    let two = site(&extra).await;
    assert_eq!(
        login_attempt(&one.gw, "alice", "x", None).await.status(),
        401
    );
    assert_eq!(
        login_attempt(&two.gw, "alice", "y", None).await.status(),
        401
    );
    assert_throttled(
        login_attempt(&one.gw, "alice", "alice-pw", None).await,
        900,
        "instance one",
    )
    .await;
    assert_throttled(
        login_attempt(&two.gw, "alice", "alice-pw", None).await,
        900,
        "instance two",
    )
    .await;
}

#[tokio::test]
async fn password_guessing_while_the_session_store_is_down_is_503_not_unthrottled() {
    let down = format!(
        "\n[sessions]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:{}\"\n",
        support::closed_port()
    );
    let s = site(&down).await;
    for password in ["wrong", "alice-pw"] {
        let response = login_attempt(&s.gw, "alice", password, None).await;
        assert_eq!(response.status(), 503, "{password}");
        assert_eq!(json_of(response).await["error"], "temporarily_unavailable");
    }
}

// --------------------------------------------------------- open redirects

#[test]
fn open_redirect_forms_of_rd_are_refused() {
    for evil in [
        "https://evil.example",
        "http://evil.example/",
        "//evil.example",
        "///evil.example",
        "/\\evil.example",
        "\\/evil.example",
        "/%2Fevil.example",
        "/%2fevil.example",
        "%2F%2Fevil.example",
        "/%5Cevil.example",
        "/%252F%252Fevil.example",
        "/\t/evil.example",
        "/%09/evil.example",
        "/%0D%0ALocation:%20https://evil.example",
        "javascript:alert(document.cookie)",
        "data:text/html,<script>alert(1)</script>",
        "evil.example",
        "",
    ] {
        assert_eq!(safe_redirect(evil), None, "{evil:?}");
    }
    for fine in [
        "/",
        "/app/",
        "/app/settings?tab=2#keys",
        "/search?q=https://x",
    ] {
        assert_eq!(safe_redirect(fine).as_deref(), Some(fine), "{fine:?}");
    }
}

// ------------------------------------------------------------------ limits

#[tokio::test]
async fn header_flood_past_max_headers_is_431() {
    let s = site("\n[server]\nmax_headers = 20\n").await;
    let flood: String = (0..30).map(|i| format!("X-Flood-{i}: {i}\r\n")).collect();
    let response = raw_get(s.gw.addr, "/public/x", &flood).await;
    assert_eq!(status_of(&response), 431, "{response}");
    let few: String = (0..10).map(|i| format!("X-Few-{i}: {i}\r\n")).collect();
    assert_eq!(status_of(&raw_get(s.gw.addr, "/public/x", &few).await), 200);
    assert_eq!(s.public.count(), 1);
}

/// An upstream that answers every request with a response head of `bytes`.
async fn bloated_upstream(bytes: usize) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\nX-Bloat: {}\r\nContent-Length: 2\r\n\r\nok",
                    "b".repeat(bytes)
                );
                let _ = stream.write_all(head.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn upstream_response_heads_past_64_kib_are_502() {
    // Past the read buffer (hyper refuses it), past 64 KiB (authgate does),
    // just under 64 KiB, and small.
    let huge = bloated_upstream(300 * 1024).await;
    let big = bloated_upstream(65 * 1024).await;
    let fits = bloated_upstream(63 * 1024).await;
    let small = bloated_upstream(1024).await;
    let route = |prefix: &str, addr: std::net::SocketAddr| {
        format!(
            "[[routes]]\nprefix = \"{prefix}\"\nupstream = \"http://{addr}\"\nauth = \"public\"\n"
        )
    };
    let toml = [
        route("/huge", huge),
        route("/big", big),
        route("/fits", fits),
        route("/small", small),
    ]
    .concat();
    let gw = TestGateway::start(&toml, &[]).await;
    for refused in ["/huge/x", "/big/x"] {
        let response = gw.get(refused).await;
        assert_eq!(response.status(), 502, "{refused}");
        assert_eq!(json_of(response).await["error"], "bad_gateway");
    }
    for passed in ["/fits/x", "/small/x"] {
        let response = gw.get(passed).await;
        assert_eq!(response.status(), 200, "{passed}");
        assert_eq!(response.text().await.unwrap(), "ok");
    }
}

fn body_limit_site(up: &Upstream) -> String {
    format!(
        "[[routes]]\nprefix = \"/\"\nupstream = \"{}\"\nauth = \"public\"\nmax_body = \"1KiB\"\n",
        up.url()
    )
}

#[tokio::test]
async fn oversized_body_with_content_length_is_413_and_never_forwarded() {
    let up = Upstream::start("up").await;
    let gw = TestGateway::start(&body_limit_site(&up), &[]).await;
    let response = client()
        .post(gw.url("/x"))
        .body(vec![b'a'; 64 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(json_of(response).await["error"], "payload_too_large");
    let response = client()
        .post(gw.url("/x"))
        .body(vec![b'a'; 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn oversized_chunked_body_is_413_and_never_forwarded_whole() {
    let up = Upstream::start("up").await;
    let gw = TestGateway::start(&body_limit_site(&up), &[]).await;
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..16).map(|_| Ok(vec![b'c'; 4096])).collect();
    let outcome = client()
        .post(gw.url("/x"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await;
    match outcome {
        Ok(response) => {
            assert_eq!(response.status(), 413);
            assert_eq!(json_of(response).await["error"], "payload_too_large");
        }
        // Refused while the client was still sending: the connection is cut.
        Err(e) => assert!(e.is_request() || e.is_body(), "{e}"),
    }
    assert!(
        up.seen().iter().all(|s| s.body.len() <= 1024),
        "an oversized body reached the upstream"
    );
    // The same, raw: a chunked body far past the limit.
    let mut request =
        b"POST /x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..8 {
        request.extend_from_slice(format!("400\r\n{}\r\n", "d".repeat(1024)).as_bytes());
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let response = raw(gw.addr, &request).await;
    assert!(
        response.is_empty() || status_of(&response) == 413,
        "{response}"
    );
    assert!(up.seen().iter().all(|s| s.body.len() <= 1024));
}

async fn read_response(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("no response")
            .unwrap();
        assert!(n > 0, "closed before a response");
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize =
                raw_header(head, "content-length").map_or(0, |v| v.parse().unwrap());
            if body.len() >= length {
                return text;
            }
        }
    }
}

/// Whether the server closed `stream` within `within` (EOF or reset).
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    match tokio::time::timeout(within, stream.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(n)) => panic!("unexpected bytes: {:?}", String::from_utf8_lossy(&buf[..n])),
        Err(_) => false,
    }
}

#[tokio::test]
async fn slow_loris_head_is_cut_off_after_header_timeout() {
    let s = site("\n[server]\nheader_timeout = \"1s\"\nidle_timeout = \"60s\"\n").await;
    let mut stream = TcpStream::connect(s.gw.addr).await.unwrap();
    stream
        .write_all(b"GET /public/x HTTP/1.1\r\nHost: gw\r\n")
        .await
        .unwrap();
    // One header byte every 100 ms, for at most 20 s.
    let mut cut = false;
    for i in 0..200 {
        if stream.write_all(&[b'a' + (i % 26) as u8]).await.is_err()
            || closed_within(&mut stream, Duration::from_millis(100)).await
        {
            cut = true;
            break;
        }
    }
    assert!(cut, "the slow-loris client was never cut off");
    // A silent connection is cut off too.
    let mut silent = TcpStream::connect(s.gw.addr).await.unwrap();
    assert!(closed_within(&mut silent, Duration::from_secs(20)).await);
    assert_eq!(s.public.count(), 0);
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed_after_idle_timeout() {
    let s = site("\n[server]\nheader_timeout = \"60s\"\nidle_timeout = \"1s\"\n").await;
    let mut stream = TcpStream::connect(s.gw.addr).await.unwrap();
    // A request that takes longer than idle_timeout is not idle.
    stream
        .write_all(b"GET /public/slow/1500 HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(status_of(&read_response(&mut stream).await), 200);
    // Kept alive for the next request...
    stream
        .write_all(b"GET /public/again HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(status_of(&read_response(&mut stream).await), 200);
    let answered = std::time::Instant::now();
    // ...then closed once idle (well before the 60 s header timeout). It is
    // shed first (`SHED_AFTER` is shorter than the idle timeout): the task
    // that parks its socket keeps the deadline.
    assert!(closed_within(&mut stream, Duration::from_secs(20)).await);
    let waited = answered.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}"
    );
    assert_eq!(s.public.count(), 2);
}

/// Past the 100 ms after which an idle connection is shed (the server's
/// `SHED_AFTER`), with room for a loaded machine.
const SHED_WAIT: Duration = Duration::from_millis(300);

/// An idle keep-alive connection gives back hyper's buffers after 100 ms
/// (docs/security.md, "Idle connections are cheap") while its socket stays open: the requests
/// that follow on it, pipelined or with bodies, are served as before, and a
/// shutdown closes it at once.
#[tokio::test]
async fn idle_keep_alive_connection_is_shed_and_still_serves_its_next_requests() {
    let mut s = site("\n[server]\nheader_timeout = \"60s\"\nidle_timeout = \"60s\"\n").await;
    let mut stream = TcpStream::connect(s.gw.addr).await.unwrap();
    stream
        .write_all(b"GET /public/first HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(status_of(&read_response(&mut stream).await), 200);
    tokio::time::sleep(SHED_WAIT).await;
    stream
        .write_all(b"POST /public/second HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n\r\nhello")
        .await
        .unwrap();
    assert_eq!(status_of(&read_response(&mut stream).await), 200);
    assert_eq!(s.public.last().body.as_ref(), b"hello");
    tokio::time::sleep(SHED_WAIT).await;
    stream
        .write_all(
            b"GET /public/third HTTP/1.1\r\nHost: gw\r\n\r\nGET /public/fourth HTTP/1.1\r\nHost: gw\r\n\r\n",
        )
        .await
        .unwrap();
    let mut both = read_response(&mut stream).await;
    if both.matches("HTTP/1.1 200").count() < 2 {
        both.push_str(&read_response(&mut stream).await);
    }
    assert_eq!(both.matches("HTTP/1.1 200").count(), 2, "{both}");
    let uris: Vec<String> = s.public.seen().into_iter().map(|seen| seen.uri).collect();
    assert_eq!(
        uris,
        [
            "/public/first",
            "/public/second",
            "/public/third",
            "/public/fourth"
        ]
    );
    tokio::time::sleep(SHED_WAIT).await;
    let server = s.gw.begin_shutdown();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("a shed connection holds up the drain")
        .unwrap()
        .unwrap();
    assert!(closed_within(&mut stream, Duration::from_secs(2)).await);
}

/// A shed gives back hyper's buffers, not the bytes in them: the start of
/// a next request that arrived with the previous one is served once the
/// rest of it comes, after the connection was shed.
#[tokio::test]
async fn a_request_begun_before_a_shed_is_served_after_it() {
    let s = site("\n[server]\nheader_timeout = \"60s\"\nidle_timeout = \"60s\"\n").await;
    let mut stream = TcpStream::connect(s.gw.addr).await.unwrap();
    stream
        .write_all(b"GET /public/first HTTP/1.1\r\nHost: gw\r\n\r\nGET /public/sec")
        .await
        .unwrap();
    assert_eq!(status_of(&read_response(&mut stream).await), 200);
    tokio::time::sleep(SHED_WAIT).await;
    stream
        .write_all(b"ond HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(status_of(&read_response(&mut stream).await), 200);
    let uris: Vec<String> = s.public.seen().into_iter().map(|seen| seen.uri).collect();
    assert_eq!(uris, ["/public/first", "/public/second"]);
}

#[tokio::test]
async fn connection_flood_past_max_connections_waits_and_is_served_later() {
    let s = site("\n[server]\nmax_connections = 2\n").await;
    let request = b"GET /public/x HTTP/1.1\r\nHost: gw\r\n\r\n";
    let mut first = TcpStream::connect(s.gw.addr).await.unwrap();
    let mut second = TcpStream::connect(s.gw.addr).await.unwrap();
    for stream in [&mut first, &mut second] {
        stream.write_all(request).await.unwrap();
        assert_eq!(status_of(&read_response(stream).await), 200);
    }
    // Both kept alive: a third connection is not accepted...
    let mut third = TcpStream::connect(s.gw.addr).await.unwrap();
    third.write_all(request).await.unwrap();
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(500), third.read(&mut buf)).await;
    assert!(early.is_err(), "served past max_connections");
    assert_eq!(s.public.count(), 2);
    // ...until another closes; then it is served, and the gateway is fine.
    drop(first);
    assert_eq!(status_of(&read_response(&mut third).await), 200);
    drop(second);
    drop(third);
    let response = s.gw.get("/healthz").await;
    assert_eq!(response.status(), 200);
    assert!(!s.gw.task.as_ref().unwrap().is_finished());
}
