//! TLS termination, HTTP/2 clients, WebSockets and HTTPS/HTTP-2 upstreams,
//! with certificates made here by rcgen.

mod support;

use std::convert::Infallible;
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use support::ws::*;
use support::*;

/// A certificate authority made for one test.
struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// A PEM certificate and its PEM private key.
struct Leaf {
    cert: String,
    key: String,
    der: Vec<u8>,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        Pki {
            ca: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// A server certificate for `localhost` and `127.0.0.1`.
    fn leaf(&self, name: &str) -> Leaf {
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }
}

impl Leaf {
    fn write(&self, dir: &Path, name: &str) {
        std::fs::write(dir.join(format!("{name}.crt")), &self.cert).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), &self.key).unwrap();
    }

    fn server_config(&self, alpn: &[&[u8]]) -> rustls::ServerConfig {
        use rustls::pki_types::pem::PemObject;
        let certs = vec![rustls::pki_types::CertificateDer::from(self.der.clone())];
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(self.key.as_bytes()).unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config
    }
}

const TLS_SECTION: &str = "[server.tls]\ncert = \"gateway.crt\"\nkey = \"gateway.key\"\n";

/// An in-process authgate with TLS on, its certificate issued by `pki`.
async fn tls_gateway(pki: &Pki, toml: &str, users: &[TestUser]) -> TestGateway {
    init();
    let dir = tempfile::tempdir().unwrap();
    pki.leaf("gateway").write(dir.path(), "gateway");
    TestGateway::start_in(dir, &format!("{TLS_SECTION}\n{toml}"), users).await
}

fn https(gw: &TestGateway, path: &str) -> String {
    format!("https://127.0.0.1:{}{path}", gw.addr.port())
}

/// A client that trusts only `pki`'s CA.
fn https_client(pki: &Pki) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem().as_bytes()).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .tls_info(true)
        .timeout(Duration::from_secs(30))
}

fn peer_certificate(response: &reqwest::Response) -> Vec<u8> {
    response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|info| info.peer_certificate())
        .expect("a TLS response carries the peer certificate")
        .to_vec()
}

async fn https_login(client: &reqwest::Client, url: String) -> (String, Vec<String>) {
    let response = client
        .post(url)
        .form(&[("username", "alice"), ("password", "pw-alice")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let cookies = set_cookies(response.headers());
    let body: serde_json::Value = response.json().await.unwrap();
    (body["access_token"].as_str().unwrap().to_string(), cookies)
}

#[tokio::test]
async fn https_clients_on_http2_and_http11_are_authenticated_and_proxied() {
    let pki = Pki::new("gateway CA");
    let upstream = Upstream::start("api").await;
    let gw = tls_gateway(
        &pki,
        &format!(
            "[[routes]]\nprefix = \"/api\"\nupstream = \"{}\"\n",
            upstream.url()
        ),
        &[user("alice", "pw-alice", &["dev"])],
    )
    .await;

    // ALPN: a client offering h2 and http/1.1 gets h2; one offering only
    // http/1.1 gets that.
    let h2 = https_client(&pki).build().unwrap();
    let h1 = https_client(&pki).http1_only().build().unwrap();
    let (token, cookies) = https_login(&h2, https(&gw, "/token")).await;
    assert!(
        cookies.iter().all(|c| c.contains("; Secure")),
        "{cookies:?}"
    );

    let response = h2
        .get(https(&gw, "/api/two"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let seen = upstream.last();
    assert_eq!(seen.uri, "/api/two");
    assert_eq!(seen.headers["x-auth-user"], "alice");
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    // The h2 client's :authority reaches the HTTP/1.1 upstream as Host.
    let authority = https(&gw, "/")
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .to_string();
    assert_eq!(seen.headers["host"], authority.as_str());
    assert_eq!(seen.headers["x-forwarded-host"], authority.as_str());

    let response = h1
        .get(https(&gw, "/api/one"))
        .header("cookie", cookie_header(&cookies))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_11);
    assert_eq!(response.status(), 200);
    let seen = upstream.last();
    assert_eq!(seen.uri, "/api/one");
    assert_eq!(seen.headers["x-auth-user"], "alice");
    assert!(seen.headers.get("cookie").is_none());

    // Silent refresh over HTTP/2: the refresh cookie alone gets through
    // and new Secure cookies come back.
    let refresh = cookie_value(&cookies, "refresh_token").unwrap();
    let response = h2
        .get(https(&gw, "/api/refreshed"))
        .header("cookie", format!("refresh_token={refresh}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let renewed = set_cookies(response.headers());
    assert!(
        cookie_value(&renewed, "access_token").is_some(),
        "{renewed:?}"
    );
    assert!(renewed.iter().all(|c| c.contains("; Secure")));
    assert_eq!(upstream.last().headers["x-auth-user"], "alice");

    let response = h2.get(https(&gw, "/api/anonymous")).send().await.unwrap();
    assert_eq!(response.status(), 401);

    // Plain HTTP on the TLS port is not served.
    assert!(client().get(gw.url("/healthz")).send().await.is_err());
}

#[tokio::test]
async fn min_version_13_refuses_tls_12_clients() {
    let pki = Pki::new("gateway CA");
    let gw = tls_gateway(&pki, "min_version = \"1.3\"\n", &[]).await;
    let old = https_client(&pki)
        .max_tls_version(reqwest::tls::Version::TLS_1_2)
        .build()
        .unwrap();
    assert!(old.get(https(&gw, "/healthz")).send().await.is_err());
    let current = https_client(&pki).build().unwrap();
    let response = current.get(https(&gw, "/healthz")).send().await.unwrap();
    assert_eq!(response.status(), 200);
}

/// How the second of two handshakes from one client went: the client
/// keeps what the first left it (tickets) and offers it again.
async fn second_handshake(pki: &Pki, gw: &TestGateway) -> rustls::HandshakeKind {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_client_config(pki)));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut kind = None;
    for _ in 0..2 {
        let tcp = TcpStream::connect(gw.addr).await.unwrap();
        let mut tls = connector.connect(name.clone(), tcp).await.unwrap();
        // TLS 1.3 tickets arrive after the handshake: a request and its
        // answer make sure the client has read them.
        tokio::io::AsyncWriteExt::write_all(
            &mut tls,
            b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        let mut answer = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut tls, &mut answer)
            .await
            .unwrap();
        assert!(answer.starts_with(b"HTTP/1.1 200"));
        kind = tls.get_ref().1.handshake_kind();
    }
    kind.unwrap()
}

#[tokio::test]
async fn session_resumption_is_on_by_default_and_can_be_turned_off() {
    let pki = Pki::new("gateway CA");
    let on = tls_gateway(&pki, "", &[]).await;
    assert_eq!(
        second_handshake(&pki, &on).await,
        rustls::HandshakeKind::Resumed
    );
    let off = tls_gateway(&pki, "session_resumption = false\n", &[]).await;
    assert_eq!(
        second_handshake(&pki, &off).await,
        rustls::HandshakeKind::Full
    );
}

/// Many clients at once: each handshake's CPU takes its turn (one per
/// worker; a test's runtime has one), and every one of them completes.
#[tokio::test]
async fn simultaneous_handshakes_take_turns_and_all_complete() {
    let pki = Pki::new("gateway CA");
    let gw = tls_gateway(&pki, "session_resumption = false\n", &[]).await;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_client_config(&pki)));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    // Every ClientHello is sent before any handshake is answered.
    let mut hellos = Vec::new();
    for _ in 0..64 {
        let tcp = TcpStream::connect(gw.addr).await.unwrap();
        hellos.push(connector.connect(name.clone(), tcp));
    }
    let answered = tokio::time::timeout(
        Duration::from_secs(30),
        futures_util::future::join_all(hellos),
    )
    .await
    .expect("every handshake completes");
    for tls in answered {
        assert!(!tls.unwrap().get_ref().1.is_handshaking());
    }
}

/// A client that connects and never sends its ClientHello holds nothing
/// past `header_timeout`.
#[tokio::test]
async fn a_tls_client_that_says_nothing_is_let_go_at_header_timeout() {
    let pki = Pki::new("gateway CA");
    let gw = tls_gateway(&pki, "[server]\nheader_timeout = \"300ms\"\n", &[]).await;
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    let started = Instant::now();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read(&mut tcp, &mut byte),
    )
    .await
    .expect("the gateway closes the connection");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(started.elapsed() >= Duration::from_millis(250));
}

#[tokio::test]
async fn tls13_aes_128_gcm_is_chosen_over_the_clients_first_suite() {
    let pki = Pki::new("gateway CA");
    let gw = tls_gateway(&pki, "", &[]).await;
    // As OpenSSL clients order them: AES-256-GCM first.
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|suite| suite.suite() != rustls::CipherSuite::TLS13_AES_256_GCM_SHA384);
    let tls = connect_with(&gw, &pki, provider).await;
    let suite = tls.get_ref().1.negotiated_cipher_suite().unwrap().suite();
    assert_eq!(suite, rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
}

/// A TLS connection to `gw` by a client with `provider`'s suites and groups.
async fn connect_with(
    gw: &TestGateway,
    pki: &Pki,
    provider: rustls::crypto::CryptoProvider,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    connector.connect(name, tcp).await.unwrap()
}

/// The key exchange group a client offering `groups` gets, in one round
/// trip.
async fn negotiated_group(
    gw: &TestGateway,
    pki: &Pki,
    groups: Vec<&'static dyn rustls::crypto::SupportedKxGroup>,
) -> rustls::NamedGroup {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.kx_groups = groups;
    let tls = connect_with(gw, pki, provider).await;
    let connection = tls.get_ref().1;
    assert_eq!(
        connection.handshake_kind(),
        Some(rustls::HandshakeKind::Full),
        "a key share the server takes: no HelloRetryRequest"
    );
    connection
        .negotiated_key_exchange_group()
        .expect("a TLS 1.3 handshake names its group")
        .name()
}

#[tokio::test]
async fn a_client_offering_the_post_quantum_hybrid_gets_it_and_others_their_first_group() {
    use rustls::crypto::aws_lc_rs::kx_group::{SECP256R1, X25519, X25519MLKEM768};
    use rustls::NamedGroup;
    let pki = Pki::new("gateway CA");
    let gw = tls_gateway(&pki, "", &[]).await;
    // As current Chrome and Firefox: the hybrid first, X25519 beside it.
    assert_eq!(
        negotiated_group(&gw, &pki, vec![X25519MLKEM768, X25519]).await,
        NamedGroup::X25519MLKEM768
    );
    // As OpenSSL 3.0 (curl, wrk, h2load).
    assert_eq!(
        negotiated_group(&gw, &pki, vec![X25519, SECP256R1]).await,
        NamedGroup::X25519
    );
    // As some Java and FIPS-mode clients.
    assert_eq!(
        negotiated_group(&gw, &pki, vec![SECP256R1]).await,
        NamedGroup::secp256r1
    );
}

#[tokio::test]
async fn a_bad_certificate_is_refused_at_start_with_its_key_and_line() {
    init();
    let pki = Pki::new("gateway CA");
    let dir = tempfile::tempdir().unwrap();
    let (one, other) = (pki.leaf("one"), pki.leaf("other"));
    std::fs::write(dir.path().join("gateway.crt"), &one.cert).unwrap();
    std::fs::write(dir.path().join("gateway.key"), &other.key).unwrap();
    let toml = format!(
        "{TLS_SECTION}[[routes]]\nprefix = \"/\"\nupstream = \"http://127.0.0.1:1\"\n\
         [jwt]\nsecret_env = \"{SECRET_ENV}\"\n"
    );
    std::fs::write(dir.path().join("gateway.toml"), &toml).unwrap();
    std::fs::write(dir.path().join("users.toml"), "").unwrap();
    let (ok, stderr) = run_binary(dir.path(), "check-config");
    assert!(!ok);
    assert!(
        stderr.contains("line 3: server.tls.key")
            && stderr.contains("does not belong to the certificate"),
        "{stderr}"
    );

    std::fs::write(dir.path().join("gateway.crt"), "not a certificate").unwrap();
    let (ok, stderr) = run_binary(dir.path(), "serve");
    assert!(!ok);
    assert!(
        stderr.contains("line 2: server.tls.cert") && stderr.contains("no CERTIFICATE block"),
        "{stderr}"
    );
}

/// Runs `authgate -c gateway.toml <command>` in `dir`; whether it
/// succeeded, and its stderr.
fn run_binary(dir: &Path, command: &str) -> (bool, String) {
    let output = Command::new(binary())
        .current_dir(dir)
        .args(["-c", "gateway.toml", command])
        .env(SECRET_ENV, SECRET)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.success(), stderr)
}

#[tokio::test]
async fn websocket_with_cookies_round_trips_and_closes_1008_on_logout() {
    let echo = Echo::start().await;
    let gw = TestGateway::start(&echo.route("/ws"), &[user("alice", "pw-alice", &["dev"])]).await;
    let (_, cookies) = gw.login("alice", "pw-alice").await;
    let (mut ws, response) = open_ws(&gw, "/ws/echo", ("cookie", cookie_header(&cookies))).await;
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    let seen = echo.last_handshake();
    assert_eq!(seen["x-auth-user"], "alice");
    assert!(seen.get("cookie").is_none(), "{seen:?}");
    round_trip(&mut ws).await;

    logout(&gw, &cookies).await;
    assert_eq!(close_code(&mut ws).await, Some(CloseCode::Policy));
    // The upstream is told too.
    let deadline = Instant::now() + Duration::from_secs(10);
    while echo.closes.lock().unwrap().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(*echo.closes.lock().unwrap(), vec![Some(CloseCode::Policy)]);
}

#[tokio::test]
async fn idle_websockets_outlive_the_request_timeout() {
    let echo = Echo::start().await;
    let gw = TestGateway::start(
        &format!(
            "[server]\nrequest_timeout = \"500ms\"\n{}",
            echo.route("/ws")
        ),
        &[user("alice", "pw-alice", &[])],
    )
    .await;
    let token = gw.access_token("alice", "pw-alice").await;
    let (mut ws, _) = open_ws(
        &gw,
        "/ws/echo",
        ("authorization", format!("Bearer {token}")),
    )
    .await;
    // Well past request_timeout: a socket it bounded would be cut by now.
    tokio::time::sleep(Duration::from_millis(900)).await;
    round_trip(&mut ws).await;
}

#[tokio::test]
async fn websocket_silent_refresh_sets_cookies_on_the_101() {
    let echo = Echo::start().await;
    let gw = TestGateway::start(&echo.route("/ws"), &[user("alice", "pw-alice", &["dev"])]).await;
    let (_, cookies) = gw.login("alice", "pw-alice").await;
    let refresh = cookie_value(&cookies, "refresh_token").unwrap();
    let only_refresh = ("cookie", format!("refresh_token={refresh}"));
    let (mut ws, response) = open_ws(&gw, "/ws/echo", only_refresh).await;
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    let renewed: Vec<String> = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert!(
        cookie_value(&renewed, "access_token").is_some(),
        "{renewed:?}"
    );
    assert_ne!(cookie_value(&renewed, "refresh_token"), Some(refresh));
    assert_eq!(echo.last_handshake()["x-auth-user"], "alice");
    round_trip(&mut ws).await;
}

#[tokio::test]
async fn websocket_with_bearer_over_tls_round_trips_and_refuses_without_token() {
    let pki = Pki::new("gateway CA");
    let echo = Echo::start().await;
    let gw = tls_gateway(
        &pki,
        &format!(
            "{}{}websocket = false\n",
            echo.route("/ws"),
            echo.route("/nows")
        ),
        &[user("alice", "pw-alice", &["dev"])],
    )
    .await;
    let client = https_client(&pki).build().unwrap();
    let (token, _) = https_login(&client, https(&gw, "/token")).await;

    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_client_config(&pki)));
    let connect = || async {
        let tcp = TcpStream::connect(gw.addr).await.unwrap();
        connector
            .connect("127.0.0.1".try_into().unwrap(), tcp)
            .await
            .unwrap()
    };
    let url = format!("wss://127.0.0.1:{}/ws/echo", gw.addr.port());

    // Refused before anything reaches the upstream.
    assert_eq!(refused(&url, None, connect().await).await, 401);
    let forged = ("authorization", "Bearer not.a.token".to_string());
    assert_eq!(refused(&url, Some(forged), connect().await).await, 401);
    assert_eq!(echo.connections.load(Ordering::SeqCst), 0);

    // A route that does not allow WebSockets refuses the upgrade.
    let nows = format!("wss://127.0.0.1:{}/nows/echo", gw.addr.port());
    let bearer = ("authorization", format!("Bearer {token}"));
    assert_eq!(
        refused(&nows, Some(bearer.clone()), connect().await).await,
        400
    );
    assert_eq!(echo.connections.load(Ordering::SeqCst), 0);

    let (mut ws, response) =
        tokio_tungstenite::client_async(ws_request(&url, Some(bearer)), connect().await)
            .await
            .unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    let seen = echo.last_handshake();
    assert_eq!(seen["x-auth-user"], "alice");
    assert_eq!(seen["x-forwarded-proto"], "https");
    assert!(seen.get("authorization").is_none());
    round_trip(&mut ws).await;
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn bearer_only_websocket_closes_1008_when_its_token_expires() {
    let echo = Echo::start().await;
    let gw = TestGateway::start(&echo.route("/ws"), &[user("alice", "pw-alice", &[])]).await;
    let issued = now();
    // A token with no session behind it, valid for another minute: it can
    // only expire (within close_code's bound) by the gateway's clock.
    let token = sign_hs256(
        &serde_json::json!({"sub": "alice", "iss": "authgate", "iat": issued, "nbf": issued, "exp": issued + 60, "jti": "t"}),
        SECRET,
    );
    let (mut ws, _) = open_ws(
        &gw,
        "/ws/echo",
        ("authorization", format!("Bearer {token}")),
    )
    .await;
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("still here")
    );
    gw.clock.advance(Duration::from_secs(61));
    assert_eq!(close_code(&mut ws).await, Some(CloseCode::Policy));
}

fn tls_client_config(pki: &Pki) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.der().clone()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

/// An upstream speaking HTTP/1.1 and HTTP/2 (h2c by prior knowledge when
/// plain), over TLS when given a certificate. Answers with the protocol
/// it saw and the identity header.
async fn versioned_upstream(tls: Option<rustls::ServerConfig>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tls.map(|c| tokio_rustls::TlsAcceptor::from(Arc::new(c)));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let service = service_fn(|req: Request<Incoming>| async move {
                    let body = serde_json::json!({
                        "version": format!("{:?}", req.version()),
                        "user": req.headers().get("x-auth-user").and_then(|v| v.to_str().ok()),
                        "path": req.uri().path(),
                    });
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body.to_string()))))
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = match acceptor {
                    Some(acceptor) => {
                        let Ok(stream) = acceptor.accept(stream).await else {
                            return;
                        };
                        builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await
                    }
                    None => {
                        builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await
                    }
                };
            });
        }
    });
    addr
}

#[tokio::test]
async fn https_upstreams_are_verified_against_upstream_ca() {
    init();
    let trusted = Pki::new("internal CA");
    let untrusted = Pki::new("someone else's CA");
    let both: &[&[u8]] = &[b"h2", b"http/1.1"];
    let good = versioned_upstream(Some(trusted.leaf("upstream").server_config(both))).await;
    let bad = versioned_upstream(Some(untrusted.leaf("upstream").server_config(both))).await;
    let h2c = versioned_upstream(None).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("internal-ca.pem"), trusted.ca_pem()).unwrap();
    let toml = format!(
        "[[routes]]\nprefix = \"/good\"\nupstream = \"https://127.0.0.1:{}\"\nupstream_ca = \"internal-ca.pem\"\n\
         [[routes]]\nprefix = \"/good-h2\"\nupstream = \"https://127.0.0.1:{}\"\nupstream_ca = \"internal-ca.pem\"\nupstream_http2 = true\n\
         [[routes]]\nprefix = \"/bad\"\nupstream = \"https://127.0.0.1:{}\"\nupstream_ca = \"internal-ca.pem\"\n\
         [[routes]]\nprefix = \"/h2c\"\nupstream = \"http://127.0.0.1:{}\"\nupstream_http2 = true\n\
         [[routes]]\nprefix = \"/h1\"\nupstream = \"http://127.0.0.1:{}\"\n",
        good.port(),
        good.port(),
        bad.port(),
        h2c.port(),
        h2c.port()
    );
    let gw = TestGateway::start_in(dir, &toml, &[user("alice", "pw-alice", &[])]).await;
    let token = gw.access_token("alice", "pw-alice").await;
    let get = |path: &'static str| {
        let token = token.clone();
        let url = gw.url(path);
        async move {
            let response = client().get(url).bearer_auth(token).send().await.unwrap();
            let status = response.status();
            (status, response.json::<serde_json::Value>().await.unwrap())
        }
    };

    let (status, body) = get("/good/x").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], "HTTP/1.1");
    assert_eq!(body["user"], "alice");

    let (status, body) = get("/good-h2/x").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], "HTTP/2.0");

    let (status, body) = get("/bad/x").await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"], "bad_gateway");

    let (status, body) = get("/h2c/x").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], "HTTP/2.0");
    assert_eq!(body["user"], "alice");

    let (_, body) = get("/h1/x").await;
    assert_eq!(body["version"], "HTTP/1.1");
}

#[tokio::test]
async fn an_unreadable_upstream_ca_is_a_config_problem() {
    init();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), "garbage").unwrap();
    std::fs::write(dir.path().join("users.toml"), "").unwrap();
    let toml = "[[routes]]\nprefix = \"/\"\nupstream = \"https://127.0.0.1:1\"\nupstream_ca = \"ca.pem\"\n\
                [[routes]]\nprefix = \"/x\"\nupstream = \"https://127.0.0.1:1\"\nupstream_ca = \"missing.pem\"\n";
    let toml = format!("{toml}[jwt]\nsecret_env = \"{SECRET_ENV}\"\n");
    std::fs::write(dir.path().join("gateway.toml"), toml).unwrap();
    let config = authgate::config::Config::load(&dir.path().join("gateway.toml")).unwrap();
    let error = authgate::gateway::Gateway::build(config)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("line 4: routes[0].upstream_ca"), "{error}");
    assert!(
        error.contains("line 8: routes[1].upstream_ca") && error.contains("cannot read"),
        "{error}"
    );
}

/// A spawned `authgate serve`, killed when dropped.
struct Running {
    child: Child,
    logs: mpsc::Receiver<serde_json::Value>,
}

impl Running {
    fn start(dir: &Path) -> Running {
        let mut child = Command::new(binary())
            .current_dir(dir)
            .args(["-c", "gateway.toml", "serve"])
            .env(SECRET_ENV, SECRET)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, logs) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                let value = serde_json::from_str(&line).unwrap_or(serde_json::json!({"raw": line}));
                if tx.send(value).is_err() {
                    return;
                }
            }
        });
        Running { child, logs }
    }

    /// The next log line with this `event`, waiting at most 20 s.
    fn event(&self, event: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.logs.recv_timeout(left) {
                Ok(line) if line["event"] == event => return line,
                Ok(_) => {}
                Err(_) => panic!("no {event:?} log line"),
            }
        }
    }

    fn hang_up(&self) {
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn sighup_swaps_the_certificate_for_new_connections_only() {
    init();
    let pki = Pki::new("gateway CA");
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (pki.leaf("first"), pki.leaf("second"));
    first.write(dir.path(), "gateway");
    std::fs::write(dir.path().join("users.toml"), "").unwrap();
    std::fs::write(
        dir.path().join("gateway.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nlog_format = \"json\"\n\
             [server.tls]\ncert = \"gateway.crt\"\nkey = \"gateway.key\"\nredirect_http = \"127.0.0.1:0\"\n\
             [jwt]\nsecret_env = \"{SECRET_ENV}\"\n[users]\nbcrypt_cost = 4\n"
        ),
    )
    .unwrap();
    let gateway = Running::start(dir.path());
    let address: SocketAddr = gateway.event("listening")["address"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let plain: SocketAddr = gateway.event("redirect_listening")["address"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let url = format!("https://127.0.0.1:{}/healthz", address.port());

    // The plain listener sends clients to https, path and query kept.
    let response = client()
        .get(format!("http://{plain}/some/path?q=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 308);
    assert_eq!(
        response.headers()["location"],
        format!("https://127.0.0.1:{}/some/path?q=1", address.port()).as_str()
    );

    let old = https_client(&pki).build().unwrap();
    let response = old.get(&url).send().await.unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(peer_certificate(&response), first.der);

    second.write(dir.path(), "gateway");
    gateway.hang_up();
    gateway.event("tls_reloaded");

    let fresh = https_client(&pki).build().unwrap();
    let response = fresh.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(peer_certificate(&response), second.der);
    // The connection opened before the reload is still up, on the old key.
    let response = old.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(peer_certificate(&response), first.der);

    // A broken certificate at reload keeps the current one.
    std::fs::write(
        dir.path().join("gateway.crt"),
        "-----BEGIN CERTIFICATE-----\nbroken\n",
    )
    .unwrap();
    gateway.hang_up();
    let failure = gateway.event("tls_reload_failed");
    assert!(
        failure["problem"]
            .as_str()
            .unwrap()
            .contains("server.tls.cert"),
        "{failure}"
    );
    let response = https_client(&pki)
        .build()
        .unwrap()
        .get(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(peer_certificate(&response), second.der);
}
