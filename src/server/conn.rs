//! One client connection, from accept to close.
//!
//! - A TLS connection is served by hyper-util's auto builder (HTTP/1.1 or
//!   HTTP/2, as ALPN and the client's first bytes say).
//! - A plain connection whose first bytes are HTTP/2's preface (h2c by
//!   prior knowledge) is served the same way.
//! - Any other plain connection is HTTP/1, served by hyper's own HTTP/1
//!   connection, whose socket and read buffer can be taken back
//!   (`into_parts`): idle, it is *shed* (see [`idle`](super::idle)) and
//!   waits in a small task of its own ([`park`]) for the client's next
//!   bytes, which a fresh hyper connection then serves.
//!
//! hyper frames every message. Nothing here reads HTTP: the only bytes
//! looked at are the first ones of a plain connection, compared with
//! HTTP/2's fixed 24-byte preface (as hyper-util's auto builder does) to
//! choose which of hyper's engines serves it.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::LazyConfigAcceptor;

use super::idle::{self, Activity, TimedIo};
use super::Builders;
use crate::gateway::SharedGateway;
use crate::pipeline;

/// What the client's first bytes must be for HTTP/2 by prior knowledge
/// (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

type Answer = http::Response<idle::Held<crate::response::Body>>;

/// What a connection keeps for its whole life, across sheds.
struct Conn {
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    stop: watch::Receiver<bool>,
    shared: SharedGateway,
    builders: Arc<Builders>,
    /// Turns at a TLS handshake's key exchange and signature, one per
    /// worker thread (see [`serve_tls`]).
    handshakes: Arc<Semaphore>,
}

/// Serves an accepted connection in a task of its own.
pub(super) fn serve(
    shared: &SharedGateway,
    builders: &Arc<Builders>,
    handshakes: &Arc<Semaphore>,
    stop: watch::Receiver<bool>,
    stream: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    crate::observe::metrics::get().open_connections.inc();
    let conn = Conn {
        peer,
        permit,
        stop,
        shared: shared.clone(),
        builders: builders.clone(),
        handshakes: handshakes.clone(),
    };
    let tls = shared.load().tls.clone();
    tokio::spawn(async move {
        match tls {
            None => serve_plain(stream, conn).await,
            Some(tls) => serve_tls(stream, conn, tls).await,
        }
    });
}

impl Conn {
    /// The socket wrapped with the deadlines current in the configuration.
    fn timed<T>(&self, io: T, activity: Arc<Activity>, http1: bool) -> TimedIo<T> {
        let current = self.shared.load();
        let server = &current.config.server;
        TimedIo::new(
            io,
            activity,
            server.header_timeout,
            server.idle_timeout,
            http1,
        )
    }

    fn header_timeout(&self) -> std::time::Duration {
        self.shared.load().config.server.header_timeout
    }

    /// The pipeline, as hyper calls it for each request.
    fn service(
        &self,
        activity: Arc<Activity>,
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
        service_fn(move |req: http::Request<hyper::body::Incoming>| {
            // Each request sees the configuration current when it arrives.
            let gw = shared.load_full();
            let busy = activity.busy();
            let req = req.map(|body| activity.track(body));
            // Boxed per request: hyper keeps room for the service's future
            // in every connection, idle ones included, and the pipeline's
            // future is large. Only the pipeline is boxed, not a future
            // around it: that one would carry a second copy of it.
            let response: Pin<Box<dyn Future<Output = _> + Send>> =
                Box::pin(pipeline::handle(gw, req, peer));
            async move { Ok::<_, Infallible>(busy.hold(response.await)) }
        })
    }

    fn ended(self, served: Result<(), crate::response::BoxError>) {
        drop(self.permit);
        crate::observe::metrics::get().open_connections.dec();
        if let Err(e) = served {
            tracing::debug!(event = "connection_error", peer = %self.peer, error = %e);
        }
    }
}

/// A plain connection: HTTP/2's preface or HTTP/1, told by its first bytes,
/// which are read within `header_timeout` and handed on to hyper.
async fn serve_plain(mut stream: TcpStream, conn: Conn) {
    let activity = Activity::new();
    let deadline = tokio::time::Instant::now() + conn.header_timeout();
    let first = match tokio::time::timeout_at(deadline, first_bytes(&mut stream)).await {
        Ok(Ok(first)) => first,
        Ok(Err(_)) | Err(_) => return conn.ended(Ok(())),
    };
    if first.as_ref() == H2_PREFACE {
        let io = Prefixed::new(first, stream);
        serve_auto(io, conn, activity).await;
    } else {
        serve_http1(Prefixed::new(first, stream), conn, activity).await;
    }
}

/// Where a plain HTTP/1 connection goes next, each in a task of its own.
enum Next {
    /// Serve it with a fresh hyper connection.
    Serve(Prefixed<TcpStream>),
    /// Shed: wait for the client's next bytes until the idle deadline.
    Park(TcpStream, tokio::time::Instant),
}

fn spawn_next(next: Next, conn: Conn) {
    match next {
        Next::Serve(io) => tokio::spawn(serve_http1(io, conn, Activity::new())),
        Next::Park(stream, idle_until) => tokio::spawn(park(stream, idle_until, conn)),
    };
}

/// Reads until the bytes cannot be HTTP/2's preface, or are all of it.
async fn first_bytes(stream: &mut TcpStream) -> io::Result<Bytes> {
    let mut first = [0u8; H2_PREFACE.len()];
    let mut read = 0;
    while read < first.len() && first[..read] == H2_PREFACE[..read] {
        match stream.read(&mut first[read..]).await? {
            0 => break,
            n => read += n,
        }
    }
    Ok(Bytes::copy_from_slice(&first[..read]))
}

/// Serves plain HTTP/1 with hyper until the connection ends or is shed.
/// A shed connection leaves this task, with hyper's connection and
/// buffers, and waits in a small one of its own ([`park`]) for the
/// client's next bytes; bytes hyper had already read go back in front of
/// the socket for the next hyper connection.
async fn serve_http1(io: Prefixed<TcpStream>, mut conn: Conn, activity: Arc<Activity>) {
    let service = conn.service(activity.clone());
    let timed = conn.timed(io, activity.clone(), true);
    // Boxed: hyper's connection state is large, and the parked task that
    // may follow this one should not carry room for it.
    let mut http = Box::pin(
        conn.builders
            .http1
            .serve_connection(TokioIo::new(timed), service)
            .with_upgrades(),
    );
    let mut ending = false;
    let mut draining = false;
    let served = loop {
        tokio::select! {
            served = http.as_mut() => break served.map_err(Into::into),
            _ = conn.stop.wait_for(|stop| *stop), if !ending => {
                ending = true;
                draining = true;
                http.as_mut().graceful_shutdown();
            }
            () = activity.shed_wanted(), if !ending => {
                ending = true;
                // hyper closes an idle connection at once, without
                // shutting the socket down (`TimedIo` holds that back).
                http.as_mut().graceful_shutdown();
            }
        }
    };
    let parts = match served {
        Ok(()) if !draining => Pin::into_inner(http).into_parts(),
        _ => None,
    };
    let Some(parts) = parts else {
        return conn.ended(served);
    };
    let timed = parts.io.into_inner();
    if !timed.is_shed() {
        return conn.ended(Ok(()));
    }
    let (io, idle_until) = timed.into_shed();
    let (unread, stream) = io.into_parts();
    // What hyper had read of the next request, if anything: served at
    // once by a fresh connection, in the order it arrived.
    let mut buffered = unread;
    if !parts.read_buf.is_empty() {
        let mut joined = Vec::with_capacity(buffered.len() + parts.read_buf.len());
        joined.extend_from_slice(&buffered);
        joined.extend_from_slice(&parts.read_buf);
        buffered = Bytes::from(joined);
    }
    let next = if buffered.is_empty() {
        Next::Park(stream, idle_until)
    } else {
        Next::Serve(Prefixed::new(buffered, stream))
    };
    spawn_next(next, conn);
}

/// A shed connection: only its socket, until the client sends again (then
/// a new hyper connection serves it), the idle deadline passes, or the
/// listener drains. Kept small on purpose: this is what each of 10,000
/// idle keep-alive clients costs.
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
        spawn_next(Next::Serve(Prefixed::new(Bytes::new(), stream)), conn);
    } else {
        conn.ended(Ok(()));
    }
}

async fn serve_tls(stream: TcpStream, conn: Conn, tls: Arc<crate::tls::Tls>) {
    // The handshake shares the head's deadline: a client that opens a
    // socket and says nothing is let go either way, and so is one that
    // waited that long for its turn.
    let deadline = tokio::time::Instant::now() + conn.header_timeout();
    let handshake = async {
        let hello = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream).await?;
        // Answering the ClientHello is the handshake's CPU (the key
        // exchange and the signature: a few hundred microseconds), done
        // right here, synchronously. Handshakes take turns at it, one per
        // worker, and each turn starts after the runtime has polled the
        // sockets (`yield_now` defers the task until then): the requests
        // of established connections are served between two handshakes,
        // not after a flood of them (bench/run.sh, the flood after case
        // 8). `acquire` fails only on a closed semaphore, and this one is
        // never closed: its result is the turn.
        let turn = conn.handshakes.acquire().await;
        tokio::task::yield_now().await;
        let accept = hello.into_stream(tls.acceptor.config().clone());
        drop(turn);
        accept.await
    };
    match tokio::time::timeout_at(deadline, handshake).await {
        Ok(Ok(stream)) => serve_auto(stream, conn, Activity::new()).await,
        Ok(Err(e)) => {
            tracing::debug!(event = "tls_handshake_failed", peer = %conn.peer, error = %e);
            conn.ended(Ok(()));
        }
        Err(_) => {
            tracing::debug!(event = "tls_handshake_timeout", peer = %conn.peer);
            conn.ended(Ok(()));
        }
    }
}

/// Serves with hyper-util's auto builder (HTTP/1.1 or HTTP/2) until the
/// connection ends; once the listener drains, asks it to finish its
/// in-flight requests and close.
async fn serve_auto<T>(io: T, mut conn: Conn, activity: Arc<Activity>)
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let service = conn.service(activity.clone());
    let timed = conn.timed(io, activity, false);
    let mut http = Box::pin(
        conn.builders
            .auto
            .serve_connection_with_upgrades(TokioIo::new(timed), service),
    );
    let mut draining = false;
    let served = loop {
        tokio::select! {
            served = http.as_mut() => break served,
            _ = conn.stop.wait_for(|stop| *stop), if !draining => {
                draining = true;
                http.as_mut().graceful_shutdown();
            }
        }
    };
    conn.ended(served);
}

/// A socket with bytes already read from it put back in front.
struct Prefixed<T> {
    prefix: Bytes,
    io: T,
}

impl<T> Prefixed<T> {
    fn new(prefix: Bytes, io: T) -> Prefixed<T> {
        Prefixed { prefix, io }
    }

    /// The bytes not yet read again, and the socket.
    fn into_parts(self) -> (Bytes, T) {
        (self.prefix, self.io)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.is_empty() {
            return Pin::new(&mut self.io).poll_read(cx, buf);
        }
        let n = self.prefix.len().min(buf.remaining());
        buf.put_slice(&self.prefix[..n]);
        self.prefix.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn prefixed_bytes_are_read_before_the_socket() {
        let (a, mut b) = tokio::io::duplex(64);
        b.write_all(b" world").await.unwrap();
        drop(b);
        let mut io = Prefixed::new(Bytes::from_static(b"hello"), a);
        let mut all = String::new();
        io.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "hello world");
    }
}
