//! `authgate serve --dev`: the whole flow with no files, like
//! `vault server -dev`. A memory session store, a random HS256 secret, a
//! `dev` user with a random password, cookies without `Secure`, and a
//! built-in echo upstream at `/` that shows what it received.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use crate::config::{AuthPolicy, Config, Located, RouteConfig, Upstream};
use crate::gateway::Gateway;
use crate::response::{self, Body};
use crate::users::memory::MemoryUserStore;
use crate::users::User;

/// The env var dev mode keeps its random secret in (set before any thread).
pub const DEV_SECRET_ENV: &str = "AUTHGATE_DEV_JWT_SECRET";

/// Must be called before the runtime starts threads.
pub fn prepare_secret() {
    let secret: [u8; 48] = rand::random();
    std::env::set_var(DEV_SECRET_ENV, URL_SAFE_NO_PAD.encode(secret));
}

pub async fn serve(listen: SocketAddr) -> anyhow::Result<ExitCode> {
    if !listen.ip().is_loopback() {
        anyhow::bail!(
            "--dev refuses to listen on {listen}: development mode is for loopback addresses only"
        );
    }
    crate::observe::logs::init(
        crate::config::LogFormat::Text,
        crate::config::defaults::ACCESS_LOG_QUEUE,
    );
    let echo = spawn_echo().await?;
    let mut config = Config::dev(listen);
    config.jwt.secret_env = Located {
        value: DEV_SECRET_ENV.into(),
        key: "jwt.secret_env",
        line: None,
    };
    config.users.bcrypt_cost = 10;
    config.routes = vec![RouteConfig {
        prefix: "/".into(),
        host: None,
        upstream: Some(Upstream {
            scheme: http::uri::Scheme::HTTP,
            authority: echo.to_string().parse()?,
            base_path: String::new(),
        }),
        auth: AuthPolicy::Required,
        strip_prefix: false,
        preserve_host: true,
        roles: Vec::new(),
        max_body: None,
        upstream_ca: None,
        upstream_http2: false,
        websocket: crate::config::defaults::WEBSOCKET,
        audience: format!("http://{echo}"),
    }];
    let password = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 12]>());
    let hash = crate::auth::password::hash_blocking(&password, config.users.bcrypt_cost)?;
    let users = Arc::new(MemoryUserStore::new([User {
        username: "dev".into(),
        password_hash: hash,
        email: Some("dev@localhost".into()),
        roles: vec!["admin".into(), "dev".into()],
        ..User::default()
    }]));
    let gw = crate::gateway::shared(Gateway::with_users(config, users).await?);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let address = listener.local_addr()?;
    tracing::warn!("DEVELOPMENT MODE: random secret, in-memory sessions, insecure cookies. Never use this in production.");
    println!("authgate development mode — NOT FOR PRODUCTION");
    println!("url: http://{address}");
    println!("user: dev");
    println!("password: {password}");
    println!("try:  curl -s -d username=dev -d password={password} http://{address}/token");
    crate::server::serve(gw, listener, crate::server::shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// An upstream that answers every request with a JSON picture of it.
async fn spawn_echo() -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(echo))
                    .await;
            });
        }
    });
    Ok(address)
}

async fn echo(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_string(),
                String::from_utf8_lossy(value.as_bytes())
                    .into_owned()
                    .into(),
            )
        })
        .collect();
    let identity: serde_json::Map<String, serde_json::Value> = headers
        .iter()
        .filter(|(name, _)| name.starts_with("x-auth-"))
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    Ok(response::json(
        StatusCode::OK,
        &serde_json::json!({
            "method": req.method().as_str(),
            "path": req.uri().path(),
            "query": req.uri().query(),
            "identity": identity,
            "headers": headers,
        }),
    ))
}
