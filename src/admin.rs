//! The admin listener: `/metrics` (Prometheus text format), `/healthz` and
//! `/readyz`, on its own address so it is never exposed with the public one.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::gateway::{Gateway, SharedGateway};
use crate::response::{self, Body};

pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on admin address {addr}: {e}"))
}

/// Serves the admin endpoints until the process ends.
pub fn spawn(listener: TcpListener, shared: SharedGateway) {
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let gw: Arc<Gateway> = shared.load_full();
                    async move { Ok::<_, Infallible>(answer(&gw, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

async fn answer(gw: &Gateway, req: Request<Incoming>) -> Response<Body> {
    match req.uri().path() {
        "/metrics" => {
            let mut response =
                Response::new(response::full(crate::observe::metrics::get().encode()));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            response
        }
        "/healthz" => response::json(StatusCode::OK, &serde_json::json!({"status": "ok"})),
        "/readyz" => crate::endpoints::health::readiness(gw).await,
        _ => crate::response::GatewayError::NotFound.into_response(),
    }
}
