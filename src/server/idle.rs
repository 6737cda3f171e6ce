//! Per-connection deadlines: how long a client may take to send a request
//! head (`[server] header_timeout`), and how long a connection may sit with
//! no request in flight (`[server] idle_timeout`).
//!
//! hyper has a header read timeout, but it also runs while a keep-alive
//! connection waits for its next request, so it would cap the idle time at
//! the head time and leave `idle_timeout` meaningless. Instead the socket
//! is wrapped ([`TimedIo`]) and the service marks each request in flight
//! ([`Activity::busy`]) until its response body is done. With nothing in
//! flight, the connection is in one of two phases:
//!
//! - **head**: from accepting the connection, or from the first byte after
//!   the previous response, the head must be complete (the service called)
//!   within `header_timeout`; else the read fails with `TimedOut` and the
//!   connection is cut (slow-loris);
//! - **idle**: no byte since the previous response: after `idle_timeout`
//!   the read reports end-of-stream and hyper closes the connection cleanly.
//!
//! A plain HTTP/1 connection idle for [`SHED_AFTER`] is *shed*: the socket
//! asks its driver ([`Activity::shed_wanted`]) to end hyper's connection
//! gracefully. hyper closes an idle connection at once and hands back the
//! socket and whatever it had buffered (`into_parts`), its own buffers
//! freed; the shutdown it sends on the way is not passed on. The listener
//! then waits for the client's next bytes holding only the socket, and
//! serves them with a fresh hyper connection. No byte is lost: what hyper
//! had read of a next request comes back in its read buffer, and hyper,
//! not this module, says where a message ends. That is what keeps 10,000
//! idle keep-alive clients cheap.
//!
//! HTTP/2 connections (recognized by their preface) carry pings and other
//! control frames between requests, so for them only the idle deadline
//! applies, counted from the last stream's end. After a protocol upgrade
//! (`101`, e.g. WebSocket) the connection belongs to the upgraded protocol
//! and no deadline applies.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http::{Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

/// What the service and the socket of one connection share.
#[derive(Debug)]
pub struct Activity {
    started: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `started` when the last request finished.
    idle_since_ms: AtomicU64,
    /// Requests finished so far: tells a head that started after the last
    /// one from a stale one, even within the same millisecond.
    finished: AtomicU64,
    upgraded: AtomicBool,
    /// The socket asks the connection's driver to shed it.
    shed: Notify,
    /// Request bodies not (yet) read to their end. One dropped before its
    /// end keeps this above zero for good: hyper then closes the
    /// connection, and the rest of that body must never be read as a
    /// request, so such a connection is never shed.
    open_bodies: AtomicUsize,
    /// The socket's reader, to re-arm its deadline when a request ends.
    reader: AtomicWaker,
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            started: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            finished: AtomicU64::new(0),
            upgraded: AtomicBool::new(false),
            shed: Notify::new(),
            open_bodies: AtomicUsize::new(0),
            reader: AtomicWaker::new(),
        })
    }

    /// Marks a request in flight until the returned guard is dropped.
    pub fn busy(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    /// The request's body, counted open until hyper delivers its end.
    pub fn track<B: Body>(self: &Arc<Self>, body: B) -> Tracked<B> {
        let activity = (!body.is_end_stream()).then(|| {
            self.open_bodies.fetch_add(1, Ordering::AcqRel);
            self.clone()
        });
        Tracked { body, activity }
    }

    /// Resolves when the connection has sat idle long enough to be shed:
    /// its driver then ends hyper's side of it gracefully.
    pub async fn shed_wanted(&self) {
        self.shed.notified().await
    }

    /// When the connection's idle deadline passes, counted from the last
    /// response.
    pub fn idle_until(&self, idle_timeout: Duration) -> Instant {
        self.idle_since() + idle_timeout
    }

    fn idle_since(&self) -> Instant {
        self.started + Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire))
    }
}

/// A request in flight.
#[derive(Debug)]
pub struct Busy(Arc<Activity>);

impl Busy {
    /// Keeps the request in flight until `response`'s body is done.
    pub fn hold<B>(self, response: Response<B>) -> Response<Held<B>> {
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            self.0.upgraded.store(true, Ordering::Release);
        }
        response.map(|body| Held { body, _busy: self })
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let activity = &self.0;
        let since = activity.started.elapsed().as_millis() as u64;
        activity.idle_since_ms.store(since, Ordering::Release);
        activity.finished.fetch_add(1, Ordering::AcqRel);
        if activity.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            activity.reader.wake();
        }
    }
}

/// A request body that tells its connection when hyper has delivered its
/// end (see [`Activity::track`]).
#[derive(Debug)]
pub struct Tracked<B> {
    body: B,
    /// Until the end is seen.
    activity: Option<Arc<Activity>>,
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        let ended = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => self.body.is_end_stream(),
            _ => false,
        };
        if ended {
            if let Some(activity) = self.activity.take() {
                activity.open_bodies.fetch_sub(1, Ordering::AcqRel);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A response body that keeps its request in flight.
#[derive(Debug)]
pub struct Held<B> {
    body: B,
    _busy: Busy,
}

impl<B: Body<Data = Bytes> + Unpin> Body for Held<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    Head,
    Idle,
    Shed,
}

/// How long an HTTP/1 connection waits idle before hyper's buffers are
/// given back: long enough that a client sending a steady stream of
/// requests never pays for a new hyper connection, short enough that a
/// burst of new keep-alive clients does not hold a burst of buffers (at one
/// second, 10,000 clients opened in two seconds peaked at 120 MB of them).
pub const SHED_AFTER: Duration = Duration::from_millis(100);

/// A client socket with the deadlines above.
#[derive(Debug)]
pub struct TimedIo<T> {
    io: T,
    activity: Arc<Activity>,
    header_timeout: Duration,
    idle_timeout: Duration,
    /// When the first byte of the head being read arrived, and how many
    /// requests had finished then.
    head_started: Option<(Instant, u64)>,
    http2: Option<bool>,
    /// Whether the driver can take the socket back from hyper (a plain
    /// HTTP/1 connection), and so shed it.
    sheddable: bool,
    /// The last write could not complete: hyper holds unsent bytes.
    write_blocked: bool,
    /// The driver was asked to shed the connection: keep the socket open
    /// when hyper ends its side.
    shedding: bool,
    timer: Pin<Box<Sleep>>,
}

const H2_PREFACE_START: &[u8] = b"PRI * HTTP/2.0";

impl<T> TimedIo<T> {
    /// `http1`: the connection is known to be plain HTTP/1, served by a
    /// driver that sheds it when idle; otherwise the protocol is told by
    /// the first bytes read, and the connection is never shed.
    pub fn new(
        io: T,
        activity: Arc<Activity>,
        header_timeout: Duration,
        idle_timeout: Duration,
        http1: bool,
    ) -> TimedIo<T> {
        let started = activity.started;
        TimedIo {
            io,
            activity,
            header_timeout,
            idle_timeout,
            head_started: Some((started, 0)),
            http2: http1.then_some(false),
            sheddable: http1,
            write_blocked: false,
            shedding: false,
            timer: Box::pin(tokio::time::sleep_until(started + header_timeout)),
        }
    }

    fn deadline(&self) -> Option<(Instant, Expiry)> {
        if self.activity.upgraded.load(Ordering::Acquire)
            || self.activity.in_flight.load(Ordering::Acquire) > 0
        {
            return None;
        }
        match self.head_started {
            Some((at, finished)) if self.is_current(finished) && self.http2 != Some(true) => {
                Some((at + self.header_timeout, Expiry::Head))
            }
            _ => {
                let idle_since = self.activity.idle_since();
                let idle = (idle_since + self.idle_timeout, Expiry::Idle);
                if self.sheddable() && SHED_AFTER < self.idle_timeout {
                    Some((idle_since + SHED_AFTER, Expiry::Shed))
                } else {
                    Some(idle)
                }
            }
        }
    }

    /// Idle with every request body read to its end and every response
    /// written out. Bytes hyper read of a next request are not lost by a
    /// shed (they come back with the socket).
    fn sheddable(&self) -> bool {
        self.sheddable
            && !self.write_blocked
            && self.activity.open_bodies.load(Ordering::Acquire) == 0
    }

    /// The connection is being shed: hyper ends its side, the socket stays
    /// open.
    pub fn is_shed(&self) -> bool {
        self.shedding
    }

    fn is_current(&self, finished: u64) -> bool {
        finished == self.activity.finished.load(Ordering::Acquire)
    }

    fn saw_bytes(&mut self, bytes: &[u8]) {
        if self.http2.is_none() {
            // Clients write the preface at once; a shorter first read is
            // taken for HTTP/1 (the stricter deadlines).
            self.http2 = Some(bytes.starts_with(H2_PREFACE_START));
        }
        if self.activity.in_flight.load(Ordering::Acquire) == 0
            && self.head_started.is_none_or(|(_, f)| !self.is_current(f))
        {
            let finished = self.activity.finished.load(Ordering::Acquire);
            self.head_started = Some((Instant::now(), finished));
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TimedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.shedding {
            // hyper is ending its side and may still read: whatever it
            // reads comes back with the socket.
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.saw_bytes(&buf.filled()[before..]);
                }
                return Poll::Ready(Ok(()));
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {}
        }
        this.activity.reader.register(cx.waker());
        let Some((at, expiry)) = this.deadline() else {
            return Poll::Pending;
        };
        if this.timer.deadline() != at {
            this.timer.as_mut().reset(at);
        }
        if this.timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        match expiry {
            // End of stream: hyper closes an idle connection cleanly.
            Expiry::Idle => Poll::Ready(Ok(())),
            Expiry::Shed => {
                this.shedding = true;
                this.activity.shed.notify_one();
                Poll::Pending
            }
            Expiry::Head => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "request head not received in time",
            ))),
        }
    }
}

impl<T> TimedIo<T> {
    /// After a shed: the socket, and when the connection's idle deadline
    /// passes. Everything else here belonged to the hyper connection that
    /// was shed.
    pub fn into_shed(self) -> (T, Instant) {
        let idle_until = self.activity.idle_until(self.idle_timeout);
        (self.io, idle_until)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TimedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write(cx, buf);
        self.write_blocked = written.is_pending();
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.write_blocked = written.is_pending();
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.shedding {
            // hyper ends its side; the client's connection lives on.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A socket with the deadlines; `shed`: served by a driver that sheds
    /// it when idle.
    async fn timed_pair(
        header: u64,
        idle: u64,
        shed: bool,
    ) -> (
        TimedIo<tokio::io::DuplexStream>,
        tokio::io::DuplexStream,
        Arc<Activity>,
    ) {
        let (a, b) = tokio::io::duplex(1024);
        let activity = Activity::new();
        let io = TimedIo::new(
            a,
            activity.clone(),
            Duration::from_secs(header),
            Duration::from_secs(idle),
            shed,
        );
        (io, b, activity)
    }

    async fn pair(
        header: u64,
        idle: u64,
    ) -> (
        TimedIo<tokio::io::DuplexStream>,
        tokio::io::DuplexStream,
        Arc<Activity>,
    ) {
        timed_pair(header, idle, false).await
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_must_arrive_within_the_header_timeout() {
        let (mut io, mut client, _) = pair(10, 60).await;
        client.write_all(b"GET / HT").await.unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(io.read(&mut buf).await.unwrap(), 8);
        let e = io.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn between_requests_the_idle_timeout_applies() {
        let (mut io, mut client, activity) = pair(10, 60).await;
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        assert!(io.read(&mut buf).await.unwrap() > 0);
        let busy = activity.busy();
        // In flight: no deadline at all.
        let waited = tokio::time::timeout(Duration::from_secs(600), io.read(&mut buf)).await;
        assert!(waited.is_err());
        drop(busy);
        let dropped = Instant::now();
        assert_eq!(io.read(&mut buf).await.unwrap(), 0, "end of stream");
        assert_eq!(dropped.elapsed(), Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_finished_within_the_same_instant_leaves_the_connection_idle() {
        let (mut io, mut client, activity) = pair(10, 60).await;
        let mut buf = [0u8; 64];
        for _ in 0..2 {
            client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
            assert!(io.read(&mut buf).await.unwrap() > 0);
            drop(activity.busy());
        }
        let finished = Instant::now();
        assert_eq!(io.read(&mut buf).await.unwrap(), 0, "idle, not a head");
        assert_eq!(finished.elapsed(), Duration::from_secs(60));
    }

    /// Waits for the socket to ask for a shed; a read must not return
    /// meanwhile (hyper would take an end of stream for a closed client).
    async fn shed_asked(io: &mut TimedIo<tokio::io::DuplexStream>, activity: &Activity) {
        let mut buf = [0u8; 64];
        tokio::select! {
            read = io.read(&mut buf) => panic!("read returned {read:?} instead of a shed"),
            () = activity.shed_wanted() => {}
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_http1_connection_is_shed_but_its_socket_stays_open() {
        let (mut io, mut client, activity) = timed_pair(10, 60, true).await;
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        assert!(io.read(&mut buf).await.unwrap() > 0);
        drop(activity.busy());
        let finished = Instant::now();
        shed_asked(&mut io, &activity).await;
        assert_eq!(finished.elapsed(), SHED_AFTER);
        assert!(io.is_shed());
        io.shutdown().await.unwrap();
        let waited = tokio::time::timeout(Duration::from_secs(600), client.read(&mut buf)).await;
        assert!(waited.is_err(), "the shutdown reached the client");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_not_shed_while_a_request_body_is_unread() {
        // A body dropped before its end: hyper closes such a connection,
        // and the rest of the body must never be read as a request.
        let (mut io, mut client, activity) = timed_pair(10, 60, true).await;
        client
            .write_all(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhe")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        assert!(io.read(&mut buf).await.unwrap() > 0);
        let busy = activity.busy();
        drop(activity.track(http_body_util::Full::new(Bytes::from_static(b"he"))));
        drop(busy);
        let finished = Instant::now();
        assert_eq!(io.read(&mut buf).await.unwrap(), 0, "idle end of stream");
        assert_eq!(finished.elapsed(), Duration::from_secs(60));
        assert!(!io.is_shed());
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_whose_bodies_were_read_to_the_end_is_shed() {
        use http_body_util::BodyExt;
        let (mut io, mut client, activity) = timed_pair(10, 60, true).await;
        client
            .write_all(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        assert!(io.read(&mut buf).await.unwrap() > 0);
        let busy = activity.busy();
        let body = activity.track(http_body_util::Full::new(Bytes::from_static(b"hello")));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "hello");
        drop(busy);
        shed_asked(&mut io, &activity).await;
        assert!(io.is_shed());
    }

    #[tokio::test(start_paused = true)]
    async fn an_upgraded_connection_has_no_deadline() {
        let (mut io, mut client, activity) = pair(10, 60).await;
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        assert!(io.read(&mut buf).await.unwrap() > 0);
        let response = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .body(())
            .unwrap();
        drop(activity.busy().hold(response));
        client.write_all(b"x").await.unwrap();
        assert!(io.read(&mut buf).await.unwrap() > 0);
        let waited = tokio::time::timeout(Duration::from_secs(3600), io.read(&mut buf)).await;
        assert!(waited.is_err(), "cut off after the upgrade");
    }
}
