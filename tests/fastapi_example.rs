//! `examples/fastapi` run for real behind a real authgate: a Python venv
//! (made once under `target/fastapi-venv`, remade when the requirements
//! change), uvicorn on a free port, the gateway's JWKS over HTTP. Through
//! the gateway the app answers as the user; called directly it believes no
//! plain header and no assertion it cannot verify.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use support::{client, closed_port, user, TestGateway};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The venv's `bin/`, made (or brought up to date) once per test run.
fn venv() -> &'static Path {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| {
        let dir = root().join("target/fastapi-venv");
        let requirements = root().join("examples/fastapi/requirements.txt");
        let wanted = std::fs::read(&requirements).unwrap();
        // A copy of the requirements it was made from: a changed file
        // installs again, an unchanged one costs nothing.
        let stamp = dir.join("installed-requirements.txt");
        if std::fs::read(&stamp).ok().as_deref() != Some(&wanted[..]) {
            let made = Command::new("python3")
                .args(["-m", "venv"])
                .arg(&dir)
                .status()
                .expect("python3 runs (.ci/run installs python3-venv)");
            assert!(made.success(), "python3 -m venv failed");
            let installed = Command::new(dir.join("bin/pip"))
                .args(["install", "-q", "-r"])
                .arg(&requirements)
                .status()
                .unwrap();
            assert!(installed.success(), "pip install failed");
            std::fs::write(&stamp, &wanted).unwrap();
        }
        dir.join("bin")
    })
}

/// uvicorn serving the example, killed when dropped.
struct App {
    _child: tokio::process::Child,
    origin: String,
}

impl App {
    async fn start(gw: &TestGateway, port: u16) -> App {
        let origin = format!("http://127.0.0.1:{port}");
        let child = tokio::process::Command::new(venv().join("uvicorn"))
            .args(["app:app", "--host", "127.0.0.1", "--log-level", "warning"])
            .args(["--port", &port.to_string()])
            .arg("--app-dir")
            .arg(root().join("examples/fastapi"))
            .env("AUTHGATE_JWKS_URL", gw.url("/.well-known/jwks.json"))
            .env("AUTHGATE_AUDIENCE", &origin)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        for _ in 0..300 {
            if let Ok(response) = client().get(format!("{origin}/healthz")).send().await {
                assert_eq!(response.status(), 200);
                return App {
                    _child: child,
                    origin,
                };
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("uvicorn did not start on {origin}");
    }

    /// `/whoami` called directly, around the gateway.
    async fn whoami(&self, headers: &[(&str, &str)]) -> (u16, Value) {
        let mut request = client().get(format!("{}/whoami", self.origin));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }
}

/// Claims as the gateway would sign them for alice, for `aud`, at `iat`.
fn claims(aud: &str, iat: u64) -> Value {
    json!({"iss": "authgate", "sub": "alice", "email": "alice@example.com",
           "roles": ["admin"], "aud": aud, "iat": iat, "exp": iat + 60})
}

fn sign(claims: &Value, kid: &str, pem: &[u8]) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_ec_pem(pem).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fastapi_example_believes_only_assertions_it_verifies() {
    venv();
    let dir = tempfile::tempdir().unwrap();
    let gateway_key = std::fs::read(root().join("tests/fixtures/ec.pem")).unwrap();
    std::fs::write(dir.path().join("assertion.pem"), &gateway_key).unwrap();
    let port = closed_port();
    let toml = format!(
        "[identity]\nassertion = true\nassertion_key = \"assertion.pem\"\n\
         [[routes]]\nprefix = \"/\"\nupstream = \"http://127.0.0.1:{port}\"\n"
    );
    let people = [
        user("alice", "alice-pw", &["admin"]),
        user("zoë", "zoe-pw", &["dev"]),
    ];
    let gw = TestGateway::start_in(dir, &toml, &people).await;
    let app = App::start(&gw, port).await;

    // Through authgate: the app answers as the user, names exact.
    for (name, password, roles) in [("alice", "alice-pw", "admin"), ("zoë", "zoe-pw", "dev")] {
        let token = gw.access_token(name, password).await;
        let response = client()
            .get(gw.url("/whoami"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{name}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["user"], name);
        assert_eq!(body["roles"], json!([roles]));
    }
    // Without a session the gateway refuses before the app is asked.
    assert_eq!(gw.get("/whoami").await.status(), 401);

    // Around authgate: a plain header is no identity.
    let (status, body) = app.whoami(&[("X-Auth-User", "alice")]).await;
    assert_eq!(status, 401, "{body}");

    let kid = gw.jwks().await.keys[0].common.key_id.clone().unwrap();
    let now = gw.clock.unix_secs();
    // A well-made assertion is accepted when sent directly: so the
    // refusals below are for the one thing each one changes.
    let good = sign(&claims(&app.origin, now), &kid, &gateway_key);
    let (status, body) = app.whoami(&[("X-Auth-Assertion", &good)]).await;
    assert_eq!((status, &body["user"]), (200, &json!("alice")), "{body}");

    let other_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .unwrap()
        .serialize_pem();
    let refused = [
        (
            "another key, the gateway's kid",
            sign(&claims(&app.origin, now), &kid, other_key.as_bytes()),
        ),
        (
            "another key, its own kid",
            sign(&claims(&app.origin, now), "other", other_key.as_bytes()),
        ),
        (
            "expired",
            sign(&claims(&app.origin, now - 600), &kid, &gateway_key),
        ),
        (
            "another audience",
            sign(&claims("http://127.0.0.1:1", now), &kid, &gateway_key),
        ),
        ("another issuer", {
            let mut c = claims(&app.origin, now);
            c["iss"] = json!("someone-else");
            sign(&c, &kid, &gateway_key)
        }),
        ("not a JWT", "not.a.jwt".to_string()),
    ];
    for (what, assertion) in refused {
        let (status, body) = app
            .whoami(&[("X-Auth-Assertion", &assertion), ("X-Auth-User", "alice")])
            .await;
        assert_eq!(status, 401, "{what}: {body}");
    }
}
