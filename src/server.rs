//! The listener: accepts connections, bounds how many are open, terminates
//! TLS when configured, serves each with hyper (HTTP/1.1 and HTTP/2 alike),
//! and drains in-flight requests on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::gateway::SharedGateway;
use crate::proxy;
use crate::response::BoxError;

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

/// How hyper serves client connections.
pub type ConnectionBuilder = auto::Builder<TokioExecutor>;

/// Made with each gateway, so a reload reaches the connections accepted
/// after it; the head limits it reads are restart-only settings.
pub fn connection_builder(server: &crate::config::ServerConfig) -> ConnectionBuilder {
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
    // Each connection holds a receiver: `true` asks it to finish, and the
    // drain is over when every receiver is gone.
    let (drain, _) = watch::channel(false);
    // A restart-only setting: the semaphore is made once.
    let permits = Arc::new(Semaphore::new(shared.load().config.server.max_connections));
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
        serve_connection(&shared, drain.subscribe(), stream, peer, permit);
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

fn serve_connection(
    shared: &SharedGateway,
    stop: watch::Receiver<bool>,
    stream: TcpStream,
    peer: SocketAddr,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    crate::metrics::get().open_connections.inc();
    let current = shared.load();
    let conn = Conn {
        peer,
        permit,
        stop,
        shared: shared.clone(),
        builder: current.connections.clone(),
    };
    let tls = current.tls.clone();
    drop(current);
    match tls {
        None => spawn_plain(stream, conn),
        Some(tls) => spawn_tls(stream, conn, tls),
    }
}

type Answer = http::Response<timer::Held<crate::response::Body>>;

/// What a connection keeps for its whole life, across sheds.
struct Conn {
    peer: SocketAddr,
    permit: tokio::sync::OwnedSemaphorePermit,
    stop: watch::Receiver<bool>,
    shared: SharedGateway,
    builder: Arc<ConnectionBuilder>,
}

impl Conn {
    /// The socket wrapped with the deadlines current in the configuration.
    fn timed<T>(&self, io: T, activity: Arc<timer::Activity>) -> timer::TimedIo<T> {
        let current = self.shared.load();
        let server = &current.config.server;
        let framing = framing::Framing::new(max_head(server), server.max_headers);
        timer::TimedIo::new(
            io,
            activity,
            server.header_timeout,
            server.idle_timeout,
            framing,
        )
    }

    /// The pipeline, as hyper calls it for each request.
    fn service(
        &self,
        activity: Arc<timer::Activity>,
    ) -> impl hyper::service::Service<
        http::Request<hyper::body::Incoming>,
        Response = Answer,
        Error = Infallible,
        Future: Send,
    > + Clone
           + Send
           + 'static {
        let shared = self.shared.clone();
        let peer = self.peer;
        let head_timer = Arc::new(proxy::upstream::HeadTimer::default());
        service_fn(move |req| {
            // Each request sees the configuration current when it arrives.
            let gw = shared.load_full();
            let busy = activity.busy();
            // Boxed per request: hyper keeps room for the service's future
            // in every connection, idle ones included, and the pipeline's
            // future is large. Only the pipeline is boxed, not a future
            // around it: that one would carry a second copy of it.
            let smuggled = activity.received_smuggled();
            let response: Pin<Box<dyn Future<Output = _> + Send>> = if smuggled {
                let refused = proxy::refuse_smuggled(&gw, &req, peer, head_timer.clone());
                Box::pin(std::future::ready(refused))
            } else {
                Box::pin(proxy::handle(gw, req, peer, head_timer.clone()))
            };
            async move { Ok::<_, Infallible>(busy.hold(response.await)) }
        })
    }

    fn ended(self, served: Result<(), BoxError>) {
        drop(self.permit);
        crate::metrics::get().open_connections.dec();
        if let Err(e) = served {
            tracing::debug!(event = "connection_error", peer = %self.peer, error = %e);
        }
    }
}

/// Serves a plain-TCP connection with hyper until it ends or is shed (idle
/// between HTTP/1 requests, see `timer`). A shed connection leaves this
/// task, with hyper's connection and buffers, and waits in a small one of
/// its own ([`park`]) for the client's next bytes.
fn spawn_plain(stream: TcpStream, mut conn: Conn) {
    tokio::spawn(async move {
        let activity = timer::Activity::new();
        let service = conn.service(activity.clone());
        let home = Arc::new(std::sync::Mutex::new(None));
        let lent = Lent {
            io: Some(conn.timed(stream, activity)),
            home: home.clone(),
        };
        let served = {
            let http = conn
                .builder
                .serve_connection_with_upgrades(TokioIo::new(lent), service);
            until_done(Box::pin(http.into_owned()), &mut conn.stop).await
        };
        let shed = home.lock().expect("never poisoned").take();
        match shed {
            Some(io) if served.is_ok() => {
                let (stream, idle_until) = io.into_shed();
                tokio::spawn(park(stream, idle_until, conn));
            }
            _ => conn.ended(served),
        }
    });
}

/// A shed connection: only its socket, until the client sends again (then
/// a new task serves it), the idle deadline passes, or the listener drains.
/// Kept small on purpose: this is what each of 10,000 idle keep-alive
/// clients costs.
async fn park(stream: TcpStream, idle_until: tokio::time::Instant, mut conn: Conn) {
    // `poll_read_ready`, not `readable()`: it takes the socket's reader
    // slot, so the waker of the task that served the connection, left
    // there by its last read, is let go (and the task's memory with it).
    let readable = std::future::poll_fn(|cx| stream.poll_read_ready(cx));
    let more = tokio::select! {
        ready = readable => ready.is_ok(),
        () = tokio::time::sleep_until(idle_until) => false,
        _ = conn.stop.wait_for(|stop| *stop) => false,
    };
    if more {
        spawn_plain(stream, conn);
    } else {
        conn.ended(Ok(()));
    }
}

fn spawn_tls(stream: TcpStream, mut conn: Conn, tls: Arc<crate::tls::Tls>) {
    tokio::spawn(async move {
        // The handshake shares the head's deadline: a client that opens a
        // socket and says nothing is let go either way.
        let handshake_timeout = conn.shared.load().config.server.header_timeout;
        let served =
            match tokio::time::timeout(handshake_timeout, tls.acceptor.accept(stream)).await {
                Ok(Ok(stream)) => {
                    let activity = timer::Activity::new();
                    let service = conn.service(activity.clone());
                    let stream = conn.timed(stream, activity);
                    let http = conn
                        .builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service);
                    until_done(Box::pin(http.into_owned()), &mut conn.stop).await
                }
                Ok(Err(e)) => {
                    tracing::debug!(event = "tls_handshake_failed", peer = %conn.peer, error = %e);
                    Ok(())
                }
                Err(_) => {
                    tracing::debug!(event = "tls_handshake_timeout", peer = %conn.peer);
                    Ok(())
                }
            };
        conn.ended(served);
    });
}

/// Runs a hyper connection until it ends; once the listener drains, asks it
/// to finish its in-flight requests and close. Boxed by the caller, so an
/// idle task of `serve_plain` keeps no room for hyper's state.
async fn until_done<C>(
    mut conn: Pin<Box<C>>,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), BoxError>
where
    C: GracefulConnection<Error = BoxError>,
{
    tokio::select! {
        done = conn.as_mut() => return done,
        _ = stop.wait_for(|stop| *stop) => conn.as_mut().graceful_shutdown(),
    }
    conn.await
}

/// A socket lent to one hyper connection. When hyper drops it after a
/// shed, it goes back `home` for the next one; otherwise it closes.
struct Lent {
    io: Option<timer::TimedIo<TcpStream>>,
    home: Arc<std::sync::Mutex<Option<timer::TimedIo<TcpStream>>>>,
}

impl Lent {
    fn io(&mut self) -> Pin<&mut timer::TimedIo<TcpStream>> {
        Pin::new(self.io.as_mut().expect("present until dropped"))
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        if let Some(io) = self.io.take().filter(|io| io.is_shed()) {
            *self.home.lock().expect("never poisoned") = Some(io);
        }
    }
}

impl AsyncRead for Lent {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.io().poll_read(cx, buf)
    }
}

impl AsyncWrite for Lent {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.io().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.io().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(|io| io.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io().poll_shutdown(cx)
    }
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
