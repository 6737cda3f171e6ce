//! The listener: accepts connections, bounds how many are open, terminates
//! TLS when configured, serves each with hyper (HTTP/1.1 and HTTP/2 alike),
//! and drains in-flight requests on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::gateway::{Gateway, SharedGateway};
use crate::proxy;

mod framing;
mod timer;

/// The floor of hyper's read buffer, which is also its limit for a request
/// head: a streamed request body moves in reads of up to this size (32 KiB
/// cost a third of the upload throughput, bench/run.sh case 7), and the
/// pipeline still answers 431 past `max_header_bytes`.
const MIN_HYPER_BUF: usize = 64 * 1024;

/// The most hyper buffers of a request head.
fn max_head(server: &crate::config::ServerConfig) -> usize {
    (server.max_header_bytes * 2).max(MIN_HYPER_BUF)
}

fn builder(gw: &Gateway) -> auto::Builder<TokioExecutor> {
    let server = &gw.config.server;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // `timer::TimedIo` enforces header_timeout: hyper's would also
        // bound the wait between keep-alive requests.
        .header_read_timeout(None)
        // hyper answers a bare 431 past its buffer; below it, the pipeline
        // answers 431 with a JSON body, so leave it headroom.
        .max_buf_size(max_head(server))
        .max_headers(server.max_headers)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(server.max_header_bytes as u32)
        .keep_alive_interval(Some(server.idle_timeout / 2));
    builder
}

/// Serves until `shutdown` resolves, then stops accepting and waits up to
/// `shutdown_grace` for in-flight requests.
pub async fn serve(
    shared: SharedGateway,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    // Connection-level settings are fixed for the process (a reload reports
    // them as needing a restart); everything per request follows reloads.
    let gw = shared.load_full();
    let builder = Arc::new(builder(&gw));
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(gw.config.server.max_connections));
    let grace = gw.config.server.shutdown_grace;
    tokio::pin!(shutdown);
    loop {
        // Waiting for a permit before accepting leaves excess connections
        // in the kernel's backlog instead of exhausting memory or files.
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::error!(event = "accept_failed", error = %e);
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        serve_connection(&shared, &builder, &graceful, stream, peer, permit);
    }
    drop(listener);
    tracing::info!(
        event = "shutdown",
        grace_secs = grace.as_secs(),
        "draining connections"
    );
    tokio::select! {
        () = graceful.shutdown() => tracing::info!(event = "drained"),
        () = tokio::time::sleep(grace) => tracing::warn!(event = "drain_timeout", "closing remaining connections"),
    }
    Ok(())
}

fn serve_connection(
    shared: &SharedGateway,
    builder: &Arc<auto::Builder<TokioExecutor>>,
    graceful: &GracefulShutdown,
    stream: TcpStream,
    peer: SocketAddr,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let current = shared.load();
    let tls = current.tls.clone();
    let server = &current.config.server;
    let (header_timeout, idle_timeout) = (server.header_timeout, server.idle_timeout);
    let framing = framing::Framing::new(max_head(server), server.max_headers);
    let handshake_timeout = header_timeout;
    drop(current);
    let activity = timer::Activity::new();
    let shared = shared.clone();
    // Boxed per request: hyper keeps room for the service's future in every
    // connection, idle ones included, and the pipeline's future is large.
    let service = {
        let activity = activity.clone();
        service_fn(move |req| {
            // Each request sees the configuration current when it arrives.
            let gw = shared.load_full();
            let busy = activity.busy();
            let smuggled = activity.received_smuggled();
            Box::pin(async move {
                let response = if smuggled {
                    refuse_smuggled(peer)
                } else {
                    proxy::handle(gw, req, peer).await
                };
                Ok::<_, Infallible>(busy.hold(response))
            })
        })
    };
    let builder = builder.clone();
    let watcher = graceful.watcher();
    crate::metrics::get().open_connections.inc();
    tokio::spawn(async move {
        let _permit = permit;
        let served = match tls {
            None => {
                let stream =
                    timer::TimedIo::new(stream, activity, header_timeout, idle_timeout, framing);
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                watcher.watch(conn.into_owned()).await
            }
            Some(tls) => {
                // The handshake shares the head's deadline: a client that
                // opens a socket and says nothing is let go either way.
                match tokio::time::timeout(handshake_timeout, tls.acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let stream = timer::TimedIo::new(
                            stream,
                            activity,
                            header_timeout,
                            idle_timeout,
                            framing,
                        );
                        let conn =
                            builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                        watcher.watch(conn.into_owned()).await
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(event = "tls_handshake_failed", peer = %peer, error = %e);
                        Ok(())
                    }
                    Err(_) => {
                        tracing::debug!(event = "tls_handshake_timeout", peer = %peer);
                        Ok(())
                    }
                }
            }
        };
        crate::metrics::get().open_connections.dec();
        if let Err(e) = served {
            tracing::debug!(event = "connection_error", peer = %peer, error = %e);
        }
    });
}

/// A request that carried both Content-Length and Transfer-Encoding: a
/// server behind could frame it by the length and read a second request
/// from its body (request smuggling), so it is refused, not re-framed, and
/// the connection closed, since where the next request starts is in doubt.
fn refuse_smuggled(peer: SocketAddr) -> http::Response<crate::response::Body> {
    tracing::warn!(event = "request_smuggling", peer = %peer, "Content-Length with Transfer-Encoding");
    let mut response =
        crate::response::GatewayError::BadRequest("Content-Length and Transfer-Encoding together")
            .into_response();
    response.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    response
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
    tracing::info!(event = "signal", "shutdown requested");
}
