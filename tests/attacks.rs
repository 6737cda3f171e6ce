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
    let jwks: Value = json_of(
        client()
            .get(gw.url("/.well-known/jwks.json"))
            .send()
            .await
            .unwrap(),
    )
    .await;
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

/// How many responses a raw exchange produced.
fn responses_in(raw_response: &str) -> usize {
    raw_response.matches("HTTP/1.1 ").count()
}

/// Content-Length and Transfer-Encoding together (CL.TE / TE.CL). hyper
/// frames the message by Transfer-Encoding (RFC 9112 §6.1), drops the
/// Content-Length, and closes the connection after the response, so the
/// bytes an attacker meant as a second request are never parsed; authgate
/// forwards one request, re-framed. Exactly: 200, one request upstream
/// with the chunked body, nothing on the protected upstream.
#[tokio::test]
async fn smuggling_with_both_content_length_and_transfer_encoding_forwards_one_request() {
    let s = site("").await;
    let smuggled = "GET /admin/smuggled HTTP/1.1\r\nHost: gw\r\n\r\n";
    for head in [
        "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
        "Content-Length: 60\r\nTransfer-Encoding: chunked\r\n",
    ] {
        let before = s.public.count();
        let request = format!(
            "POST /public/x HTTP/1.1\r\nHost: gw\r\n{head}\r\n5\r\nhello\r\n0\r\n\r\n{smuggled}"
        );
        let response = raw(s.gw.addr, request.as_bytes()).await;
        assert_eq!(status_of(&response), 200, "{head:?}: {response}");
        assert_eq!(responses_in(&response), 1, "{head:?}: {response}");
        assert_eq!(s.public.count(), before + 1);
        let seen = s.public.last();
        assert_eq!(seen.uri, "/public/x");
        assert_eq!(seen.body.as_ref(), b"hello");
        assert!(!seen.headers.contains_key("content-length"), "{head:?}");
    }
    assert_eq!(s.admin.count(), 0);
}

#[tokio::test]
async fn smuggling_with_two_different_content_lengths_is_400() {
    let s = site("").await;
    for head in [
        "Content-Length: 5\r\nContent-Length: 44\r\n",
        "Content-Length: 5, 44\r\n",
        "Content-Length: +5\r\n",
        "Content-Length: 0x5\r\n",
    ] {
        let request = format!(
            "POST /public/x HTTP/1.1\r\nHost: gw\r\n{head}\r\nhelloGET /admin/smuggled HTTP/1.1\r\nHost: gw\r\n\r\n"
        );
        let response = raw(s.gw.addr, request.as_bytes()).await;
        assert_eq!(status_of(&response), 400, "{head:?}: {response}");
        assert_eq!(responses_in(&response), 1, "{head:?}: {response}");
    }
    assert_eq!(s.public.count(), 0);
    assert_eq!(s.admin.count(), 0);
}

#[tokio::test]
async fn smuggling_with_transfer_encoding_not_ending_in_chunked_is_400() {
    let s = site("").await;
    for head in [
        "Transfer-Encoding: chunked, identity\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
        "Transfer-Encoding: identity\r\nContent-Length: 5\r\n",
        "Transfer-Encoding: xchunked\r\n",
        "Transfer-Encoding: chunked \r\nTransfer-Encoding: gzip\r\n",
    ] {
        let request = format!(
            "POST /public/x HTTP/1.1\r\nHost: gw\r\n{head}\r\n5\r\nhello\r\n0\r\n\r\nGET /admin/smuggled HTTP/1.1\r\nHost: gw\r\n\r\n"
        );
        let response = raw(s.gw.addr, request.as_bytes()).await;
        assert_eq!(status_of(&response), 400, "{head:?}: {response}");
        assert_eq!(responses_in(&response), 1, "{head:?}: {response}");
    }
    // Transfer-Encoding in HTTP/1.0, which has none.
    let response = raw(
        s.gw.addr,
        b"POST /public/x HTTP/1.0\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&response), 400, "{response}");
    assert_eq!(s.public.count(), 0);
    assert_eq!(s.admin.count(), 0);
}

#[tokio::test]
async fn smuggling_with_obsolete_line_folding_is_400() {
    let s = site("").await;
    for head in [
        "Transfer-Encoding:\r\n chunked\r\n",
        "Content-Length: 5\r\nX-Note: a\r\n Transfer-Encoding: chunked\r\n",
        "Content-Length:\r\n\t5\r\n",
    ] {
        let request = format!(
            "POST /public/x HTTP/1.1\r\nHost: gw\r\n{head}\r\n5\r\nhello\r\n0\r\n\r\nGET /admin/smuggled HTTP/1.1\r\nHost: gw\r\n\r\n"
        );
        let response = raw(s.gw.addr, request.as_bytes()).await;
        assert_eq!(status_of(&response), 400, "{head:?}: {response}");
        assert_eq!(responses_in(&response), 1, "{head:?}: {response}");
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
    let refresh = |token: String| {
        let url = s.gw.url("/token");
        async move {
            client()
                .post(url)
                .form(&[("grant_type", "refresh_token"), ("refresh_token", &token)])
                .send()
                .await
                .unwrap()
        }
    };
    // The user refreshes; the token is rotated.
    let response = refresh(stolen.clone()).await;
    assert_eq!(response.status(), 200);
    let rotated = json_of(response).await["refresh_token"]
        .as_str()
        .unwrap()
        .to_string();
    tokio::time::sleep(Duration::from_millis(20)).await;
    // The thief replays the old one: refused, and the whole family revoked.
    let response = refresh(stolen).await;
    assert_eq!(response.status(), 400);
    assert_eq!(
        json_of(response).await,
        json!({"error": "invalid_grant", "detail": "The refresh token is invalid, expired or revoked"})
    );
    let response = refresh(rotated).await;
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
