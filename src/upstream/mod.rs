//! The pooled clients that carry requests to upstreams.
//!
//! Every plain http:// HTTP/1.1 upstream, the common case, is reached
//! through one pool ([`http1`]): one pool per host:port, shared by the
//! routes that name it, with one retry rule and one idle reaper, for
//! ordinary requests and WebSocket upgrades alike. https:// and HTTP/2
//! upstreams go through hyper-util's legacy client, which also speaks TLS
//! and HTTP/2, behind the same [`UpstreamClient`] and under the same retry
//! rule: a request is sent again only when no byte of it was written.
//! Routes differ in what they trust (`upstream_ca`) and speak
//! (`upstream_http2`), so there is one such client per distinct pair,
//! shared by the routes that need it. Every https:// upstream is verified
//! against the system roots plus the route's CA; there is no switch to turn
//! verification off.

pub mod http1;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::Either;
use http::uri::{Authority, Scheme};
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

use crate::config::{Problem, RouteConfig};
use crate::response::{Body, BoxError};
use http1::Http1Pool;

/// How long an idle upstream connection is kept.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a TCP connect to an upstream may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The most an upstream connection's read buffer grows to (hyper's
/// default is about 400 KiB). It starts at 8 KiB and grows only while
/// reads fill it, as they do when a large body streams: with 64 KiB, a
/// 1 GiB download moved a third slower than with this (bench/run.sh
/// case 7). It also bounds a response head hyper will parse.
pub const UPSTREAM_READ_BUFFER: usize = 256 * 1024;
/// The largest upstream response head forwarded (status line and
/// headers); a larger one is answered 502.
pub const MAX_RESPONSE_HEAD_BYTES: usize = 64 * 1024;

/// The size of a response head as it came on the wire, give or take the
/// status line's reason phrase.
pub fn response_head_bytes<B>(response: &Response<B>) -> usize {
    const STATUS_LINE: usize = "HTTP/1.1 200 \r\n".len();
    STATUS_LINE
        + response
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum::<usize>()
        + 2
}

pub type LegacyClient = Client<HttpsConnector<HttpConnector>, Body>;

/// How a route reaches its upstream.
#[derive(Debug, Clone)]
pub enum UpstreamClient {
    Http1(Arc<Http1Pool>),
    Legacy(Box<LegacyClient>),
}

impl UpstreamClient {
    /// Sends a request with an absolute URI. Not an `async fn`: the common
    /// HTTP/1 future is returned as it is, without a layer that would keep
    /// a second copy of the request (see `pipeline::forward`).
    pub fn request(
        &self,
        req: Request<Body>,
    ) -> impl Future<Output = Result<Response<Body>, BoxError>> + Send + 'static {
        match self {
            UpstreamClient::Http1(pool) => Either::Left(pool.clone().send(req)),
            UpstreamClient::Legacy(client) => {
                let client = client.clone();
                // Boxed: its future is large, and every request's future
                // would otherwise carry room for it.
                Either::Right(Box::pin(async move {
                    let response = client.request(req).await?;
                    Ok(response.map(|body| body.map_err(Into::into).boxed_unsync()))
                }))
            }
        }
    }
}

/// The clients one route forwards with.
#[derive(Debug, Clone)]
pub struct RouteClients {
    /// Ordinary requests.
    pub request: UpstreamClient,
    /// `Upgrade` requests, which only HTTP/1.1 can carry.
    pub upgrade: UpstreamClient,
}

/// What makes two routes need different clients: the extra CA file and
/// whether the upstream speaks HTTP/2.
type ClientKey = (Option<PathBuf>, bool);

/// Every client the routes need. Cloning shares the pools: a reload hands
/// the running gateway's warm connections to the new one.
#[derive(Debug, Clone)]
pub struct Upstreams {
    clients: HashMap<ClientKey, LegacyClient>,
    http1: HashMap<Authority, Arc<Http1Pool>>,
    keepalive: usize,
    /// The certificates read from each `upstream_ca`, to tell whether a
    /// reload found the same ones.
    ca_certificates: HashMap<PathBuf, Vec<CertificateDer<'static>>>,
}

impl Upstreams {
    /// Reads each route's `upstream_ca` and builds the clients, each
    /// keeping up to `keepalive` idle connections per host:port. Errors
    /// name the route's key and line.
    pub fn from_routes(
        routes: &[RouteConfig],
        keepalive: usize,
    ) -> Result<Upstreams, Vec<Problem>> {
        Self::reusing(None, routes, keepalive)
    }

    /// [`Self::from_routes`], taking from `running` every pool that would
    /// be built the same (same host:port, same CA certificates, same
    /// `keepalive`), so a reload keeps their warm connections.
    pub fn reusing(
        running: Option<&Upstreams>,
        routes: &[RouteConfig],
        keepalive: usize,
    ) -> Result<Upstreams, Vec<Problem>> {
        let running = running.filter(|running| running.keepalive == keepalive);
        let system = system_roots();
        let mut clients = HashMap::new();
        let mut problems = Vec::new();
        let mut add = |ca: Option<PathBuf>, roots: &RootCertStore, reuse: bool| {
            for http2 in [false, true] {
                let key = (ca.clone(), http2);
                let client = running
                    .filter(|_| reuse)
                    .and_then(|running| running.clients.get(&key).cloned())
                    .unwrap_or_else(|| client(roots.clone(), http2, keepalive));
                clients.insert(key, client);
            }
        };
        add(None, &system, true);
        let mut http1 = HashMap::new();
        let mut ca_certificates = HashMap::new();
        for (i, route) in routes.iter().enumerate() {
            if let Some(authority) = plain_http1(route) {
                http1.entry(authority.clone()).or_insert_with(|| {
                    running
                        .and_then(|running| running.http1.get(authority).cloned())
                        .unwrap_or_else(|| Http1Pool::new(authority, keepalive))
                });
            }
            let Some(ca) = &route.upstream_ca else {
                continue;
            };
            if ca_certificates.contains_key(&ca.value) {
                continue;
            }
            let mut roots = system.clone();
            let added = crate::tls::read_certificates(ca).and_then(|certs| {
                match roots.add_parsable_certificates(certs.iter().cloned()) {
                    (0, _) => {
                        Err(ca.problem(format!("{}: no usable CA certificate", ca.value.display())))
                    }
                    _ => Ok(certs),
                }
            });
            match added {
                Ok(certs) => {
                    let unchanged = running.is_some_and(|running| {
                        running.ca_certificates.get(&ca.value) == Some(&certs)
                    });
                    add(Some(ca.value.clone()), &roots, unchanged);
                    ca_certificates.insert(ca.value.clone(), certs);
                }
                Err(mut problem) => {
                    problem.key = format!("routes[{i}].upstream_ca");
                    problems.push(problem);
                    ca_certificates.insert(ca.value.clone(), Vec::new());
                }
            }
        }
        if problems.is_empty() {
            Ok(Upstreams {
                clients,
                http1,
                keepalive,
                ca_certificates,
            })
        } else {
            Err(problems)
        }
    }

    /// None for a route without upstream (forward auth only).
    pub fn for_route(&self, route: &RouteConfig) -> Option<RouteClients> {
        let upstream = route.upstream.as_ref()?;
        let ca = route.upstream_ca.as_ref().map(|ca| ca.value.clone());
        let get = |http2: bool| {
            self.clients
                .get(&(ca.clone(), http2))
                .expect("built for every route by from_routes")
                .clone()
        };
        let request = if plain_http1(route).is_some() {
            UpstreamClient::Http1(
                self.http1
                    .get(&upstream.authority)
                    .expect("built for every plain HTTP/1.1 route by from_routes")
                    .clone(),
            )
        } else {
            UpstreamClient::Legacy(Box::new(get(route.upstream_http2)))
        };
        // Upgrades speak HTTP/1.1, through the route's pool when it has one.
        let upgrade = match &request {
            UpstreamClient::Http1(pool) => UpstreamClient::Http1(pool.clone()),
            UpstreamClient::Legacy(_) => UpstreamClient::Legacy(Box::new(get(false))),
        };
        Some(RouteClients { request, upgrade })
    }
}

/// The upstream's host:port when the route's requests go through the lean
/// HTTP/1.1 pool.
fn plain_http1(route: &RouteConfig) -> Option<&Authority> {
    let upstream = route.upstream.as_ref()?;
    (upstream.scheme == Scheme::HTTP && !route.upstream_http2).then_some(&upstream.authority)
}

/// The operating system's trusted roots, else the Mozilla set.
pub fn system_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if roots.is_empty() {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    roots
}

fn client(roots: RootCertStore, http2: bool, keepalive: usize) -> LegacyClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let tls = crate::tls::client_config(roots);
    let builder = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    // h2 alone in ALPN: an upstream configured for HTTP/2 that cannot speak
    // it fails loudly rather than being spoken to in the wrong protocol.
    let connector = if http2 {
        builder.enable_http2().wrap_connector(http)
    } else {
        builder.enable_http1().wrap_connector(http)
    };
    let mut client = Client::builder(TokioExecutor::new());
    client
        .pool_max_idle_per_host(keepalive)
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_timer(TokioTimer::new())
        .http1_max_buf_size(UPSTREAM_READ_BUFFER)
        .timer(TokioTimer::new())
        // The same rule as the HTTP/1 pool's: a request is sent again only
        // when hyper knows no byte of it was written (an idle connection
        // found closed). The default, set here so it stays the rule.
        .retry_canceled_requests(true)
        .http2_only(http2);
    client.build(connector)
}

/// The TLS failure behind an upstream error, if that is what it was.
pub fn tls_failure<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        // An io::Error hides its payload from `source()`: step into it.
        next = match e.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}

/// Whether a failed upstream request failed because the client's body
/// went past the route's `max_body` (it was cut off mid-stream).
pub fn body_too_large(error: &(dyn std::error::Error + 'static)) -> bool {
    caused_by::<http_body_util::LengthLimitError>(error)
}

/// The client's request body failed while it streamed to the upstream:
/// malformed chunked framing (a bad size line, a size that overflows, data
/// longer than its size), or the client gone mid-body. The upstream client
/// reports it as its own failure; this marks it as the client's, so the
/// answer is a 400 and not a 502 counted against the upstream.
#[derive(Debug, thiserror::Error)]
#[error("the client's request body failed")]
pub struct ClientBodyError(#[source] BoxError);

impl ClientBodyError {
    pub fn new(error: impl Into<BoxError>) -> ClientBodyError {
        ClientBodyError(error.into())
    }
}

/// Set when the client's body fails. hyper's HTTP/2 client keeps that
/// error to itself (it logs it and resets the stream): its caller sees only
/// the reset, as if the upstream had sent it. Carried in the request's
/// extensions from `mutate` to `forward`, for the legacy client only.
#[derive(Debug, Clone, Default)]
pub struct ClientBodyFailed(Arc<std::sync::atomic::AtomicBool>);

impl ClientBodyFailed {
    pub fn set(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }

    pub fn is_set(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Whether a failed upstream request failed because of the client's body
/// (see [`ClientBodyError`]).
pub fn client_body_failed(error: &(dyn std::error::Error + 'static)) -> bool {
    caused_by::<ClientBodyError>(error)
}

fn caused_by<E: std::error::Error + 'static>(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.is::<E>() {
            return true;
        }
        cause = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_failures_are_found_inside_nested_io_errors() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let inner = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
        let outer = std::io::Error::other(inner);
        assert!(matches!(
            tls_failure(&outer),
            Some(rustls::Error::InvalidCertificate(_))
        ));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(tls_failure(&refused).is_none());
    }
}
