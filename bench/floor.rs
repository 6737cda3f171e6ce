//! The floor of a proxy built on hyper: hyper's HTTP/1 server in front of
//! hyper's HTTP/1 client, and nothing else. No authentication, no header
//! work: each client connection gets one upstream connection of its own,
//! used for its requests in turn. Whatever this costs per request,
//! authgate (which does all of that on top of the same two engines) cannot
//! cost less. `bench/run.sh` measures it beside nginx in case 1.
//!
//! Given a certificate and key, the same over TLS (cases 9 and 10): the
//! handshake by authgate's own rustls configuration (`authgate::tls`, so
//! the same provider, suites and ALPN; TLS 1.3, no resumption), then
//! HTTP/1.1 as above, or, when ALPN picks `h2`, hyper's HTTP/2 server in
//! front of hyper-util's pooled client (HTTP/1 to the upstream, idle
//! connections kept without limit): the floor of an HTTP/2 front on hyper.
//!
//! Usage: `bench-floor LISTEN UPSTREAM [CERT KEY]` (default
//! 127.0.0.1:18040 and 127.0.0.1:18001).

use std::sync::Arc;

use authgate::config::{Located, TlsConfig, TlsVersion};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Mutex;

// The allocator authgate uses, so that the two differ only in what they do.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Pooled = Client<HttpConnector, Incoming>;

/// The request's URI with `authority` (and scheme http) in place of the
/// client's, or none (origin form); the path and query are shared, not
/// parsed again.
fn upstream_uri(uri: &mut Uri, authority: Option<&Authority>) {
    let mut parts = std::mem::take(uri).into_parts();
    parts.scheme = authority.map(|_| Scheme::HTTP);
    parts.authority = authority.cloned();
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    *uri = Uri::from_parts(parts).expect("a path, with or without an authority, is a URI");
}

async fn forward(
    sender: Arc<Mutex<SendRequest<Incoming>>>,
    mut req: Request<Incoming>,
) -> Result<Response<Incoming>, hyper::Error> {
    // Origin form: hyper's client writes the URI as given.
    upstream_uri(req.uri_mut(), None);
    let mut sender = sender.lock().await;
    sender.ready().await?;
    sender.send_request(req).await
}

async fn forward_pooled(
    client: Pooled,
    upstream: Authority,
    mut req: Request<Incoming>,
) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
    // Absolute form for the pool's key; HTTP/1.1 to the upstream.
    upstream_uri(req.uri_mut(), Some(&upstream));
    *req.version_mut() = Version::HTTP_11;
    client.request(req).await
}

/// HTTP/1 on `client`, with one upstream connection of its own.
async fn serve_http1<T>(client: T, upstream: &str)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
        return;
    };
    let _ = server.set_nodelay(true);
    let Ok((sender, connection)) =
        hyper::client::conn::http1::handshake(TokioIo::new(server)).await
    else {
        return;
    };
    tokio::spawn(connection);
    let sender = Arc::new(Mutex::new(sender));
    let service = service_fn(move |req| forward(sender.clone(), req));
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(client), service)
        .await;
}

fn tls_acceptor(cert: String, key: String) -> tokio_rustls::TlsAcceptor {
    let located = |value: String, key| Located {
        value: value.into(),
        key,
        line: None,
    };
    let config = TlsConfig {
        cert: located(cert, "cert"),
        key: located(key, "key"),
        min_version: TlsVersion::V1_3,
        session_resumption: false,
        redirect_http: None,
    };
    match authgate::tls::Tls::from_config(&config) {
        Ok(tls) => tls.acceptor,
        Err(problems) => panic!("the certificate or key: {problems:?}"),
    }
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:18040".into());
    let upstream: Arc<str> = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:18001".into())
        .into();
    let tls = match (args.next(), args.next()) {
        (Some(cert), Some(key)) => Some(tls_acceptor(cert, key)),
        _ => None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let pooled: Pooled = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(usize::MAX)
            .build_http();
        let listener = tokio::net::TcpListener::bind(&listen).await?;
        loop {
            let (client, _) = listener.accept().await?;
            let _ = client.set_nodelay(true);
            let upstream = upstream.clone();
            let Some(tls) = tls.clone() else {
                tokio::spawn(async move { serve_http1(client, &upstream).await });
                continue;
            };
            let pooled = pooled.clone();
            tokio::spawn(async move {
                let Ok(client) = tls.accept(client).await else {
                    return;
                };
                if client.get_ref().1.alpn_protocol() != Some(b"h2") {
                    return serve_http1(client, &upstream).await;
                }
                let Ok(authority) = Authority::try_from(&*upstream) else {
                    return;
                };
                let service =
                    service_fn(move |req| forward_pooled(pooled.clone(), authority.clone(), req));
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(client), service)
                    .await;
            });
        }
    })
}
