//! The listener: accepts connections, bounds how many are open, hands each
//! to [`conn`] (TLS, HTTP/1.1 or HTTP/2, shedding idle ones), and drains
//! in-flight requests on shutdown.

use std::future::Future;
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::gateway::{Gateway, SharedGateway};

mod conn;
mod idle;

/// The floor of hyper's read buffer, which is also its limit for a request
/// head: a streamed request body moves in reads of up to this size (32 KiB
/// cost a third of the upload throughput, bench/run.sh case 7), and the
/// pipeline still answers 431 past `max_header_bytes`.
const MIN_HYPER_BUF: usize = 64 * 1024;

/// The most hyper buffers of a request head.
fn max_head(server: &crate::config::ServerConfig) -> usize {
    (server.max_header_bytes * 2).max(MIN_HYPER_BUF)
}

/// hyper's connection builders, as the configuration at start sets them.
pub(crate) struct Builders {
    /// Plain-TCP HTTP/1 connections, which are shed when idle.
    http1: hyper::server::conn::http1::Builder,
    /// TLS connections (HTTP/1.1 or HTTP/2 by ALPN) and h2c.
    auto: auto::Builder<TokioExecutor>,
}

fn builders(gw: &Gateway) -> Builders {
    let server = &gw.config.server;
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        // `idle::TimedIo` enforces header_timeout: hyper's would also
        // bound the wait between keep-alive requests.
        .header_read_timeout(None)
        // hyper answers a bare 431 past its buffer; below it, the pipeline
        // answers 431 with a JSON body, so leave it headroom.
        .max_buf_size(max_head(server))
        .max_headers(server.max_headers)
        .keep_alive(true);
    let mut auto = auto::Builder::new(TokioExecutor::new());
    auto.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(max_head(server))
        .max_headers(server.max_headers)
        .keep_alive(true);
    auto.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(server.max_header_bytes as u32)
        .keep_alive_interval(Some(server.idle_timeout / 2));
    Builders { http1, auto }
}

/// Serves until `shutdown` resolves, then stops accepting and waits up to
/// `shutdown_grace` for in-flight requests.
pub async fn serve(
    shared: SharedGateway,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    // Each connection holds a receiver: `true` asks it to finish, and the
    // drain is over when every receiver is gone.
    let (drain, _) = watch::channel(false);
    // A restart-only setting: the semaphore is made once.
    let permits = Arc::new(Semaphore::new(shared.load().config.server.max_connections));
    // One TLS handshake's CPU at a time per worker thread (conn::serve_tls).
    let handshakes = Arc::new(Semaphore::new(
        tokio::runtime::Handle::current().metrics().num_workers(),
    ));
    // hyper's builders follow reloads: made again for the first connection
    // accepted after one, from the configuration then current.
    let mut current = shared.load_full();
    let mut builders = Arc::new(builders(&current));
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
        let gw = shared.load_full();
        if !Arc::ptr_eq(&gw, &current) {
            builders = Arc::new(self::builders(&gw));
            current = gw;
        }
        conn::serve(
            &shared,
            &builders,
            &handshakes,
            drain.subscribe(),
            stream,
            peer,
            permit,
        );
    }
    drop(listener);
    let grace = shared.load().config.server.shutdown_grace;
    tracing::info!(
        event = "shutdown",
        grace_secs = grace.as_secs(),
        "draining connections"
    );
    let _ = drain.send(true);
    tokio::select! {
        () = drain.closed() => tracing::info!(event = "drained"),
        () = tokio::time::sleep(grace) => tracing::warn!(event = "drain_timeout", "closing remaining connections"),
    }
    Ok(())
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
