//! The pooled client that carries requests to upstreams.

use std::time::Duration;

use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::response::Body;

/// Idle upstream connections kept per host: enough for every in-flight
/// request of a busy instance to find a warm connection.
pub const POOL_MAX_IDLE_PER_HOST: usize = 1024;
/// How long an idle upstream connection is kept.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// The upstream read buffer: 64 KiB (hyper's default is about 400 KiB). A
/// response head still incomplete when the buffer is full fails with 502;
/// hyper checks before each read, so a head is refused for certain past
/// twice this, and may be accepted up to it.
pub const MAX_RESPONSE_HEAD_BYTES: usize = 64 * 1024;

pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, Body>;

pub fn client() -> UpstreamClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    let builder = match HttpsConnectorBuilder::new().with_native_roots() {
        Ok(builder) => builder,
        Err(_) => HttpsConnectorBuilder::new().with_webpki_roots(),
    };
    let connector = builder.https_or_http().enable_http1().wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_timer(TokioTimer::new())
        .http1_max_buf_size(MAX_RESPONSE_HEAD_BYTES)
        .build(connector)
}

/// Whether a failed upstream request failed because the client's body
/// went past the route's `max_body` (it was cut off mid-stream).
pub fn body_too_large(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cause = e.source();
    }
    false
}
