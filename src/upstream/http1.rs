//! The pool for plain http:// HTTP/1.1 upstreams, the common case.
//!
//! hyper-util's legacy client costs, on every request, a hashed pool key,
//! a checkout future, a channel to its pool and often a spawned task to put
//! the connection back. Here a connection is hyper's own
//! [`SendRequest`] on a stack of idle ones per host:port behind a mutex:
//! a request pops the newest (so the warm connections stay warm and the
//! rest age out), and its response body pushes it back once it has been
//! read to the end. Each connection's task is spawned once, when it is
//! dialed.
//!
//! After a burst (an HTTP/2 client's hundred streams at once, say) more
//! than `max_idle` come back; the surplus stays for [`SURPLUS_IDLE`], so
//! that the next burst finds them open. Closed at once, each burst dialed
//! them again: at 1,000 streams in flight, one request in three paid for
//! a new upstream connection (bench/run.sh case 10).

use std::collections::VecDeque;
use std::fmt;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::client::legacy::connect::HttpConnector;
use tower_service::Service;

use super::{CONNECT_TIMEOUT, POOL_IDLE_TIMEOUT, UPSTREAM_READ_BUFFER};
use crate::response::{Body, BoxError};

/// How long idle connections beyond `max_idle` are kept after a burst.
pub const SURPLUS_IDLE: Duration = Duration::from_secs(1);

/// The connections to one upstream host:port.
pub struct Http1Pool {
    /// `http://host:port/`, what the connector dials.
    target: Uri,
    connector: HttpConnector,
    /// Oldest at the front, most recently returned at the back.
    idle: Mutex<VecDeque<Idle>>,
    /// The idle connections kept; more only for [`SURPLUS_IDLE`].
    max_idle: usize,
    reaper_started: AtomicBool,
}

struct Idle {
    sender: SendRequest<Body>,
    /// tokio's clock, which tests can move.
    since: tokio::time::Instant,
}

impl fmt::Debug for Http1Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Http1Pool")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl Http1Pool {
    pub fn new(authority: &Authority, max_idle: usize) -> Arc<Http1Pool> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let target = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .expect("a scheme and an authority make a valid URI");
        Arc::new(Http1Pool {
            target,
            connector,
            idle: Mutex::new(VecDeque::new()),
            max_idle,
            reaper_started: AtomicBool::new(false),
        })
    }

    /// Sends `req` (an absolute URI, sent in origin form) on an idle
    /// connection, or a new one when none is left.
    ///
    /// The retry rule: a request is sent again, on a freshly dialed
    /// connection, only when hyper gives it back unsent (the idle
    /// connection turned out closed before a byte of it was written).
    /// Once any byte has left, a failure is the caller's: the upstream may
    /// have acted on it, and only the client may decide to send it again.
    pub async fn send(self: Arc<Self>, mut req: Request<Body>) -> Result<Response<Body>, BoxError> {
        origin_form(req.uri_mut());
        if let Some(mut sender) = self.checkout() {
            match sender.try_send_request(req).await {
                Ok(response) => return Ok(self.response(response, sender)),
                Err(mut e) => match e.take_message() {
                    // The upstream closed this connection while it sat idle
                    // (the others idle as long may be closed too): not
                    // lost, so it goes on a new connection.
                    Some(unsent) => req = unsent,
                    None => return Err(e.into_error().into()),
                },
            }
        }
        // Boxed: dialing is rare, and its future is large.
        let mut sender = Box::pin(self.connect()).await?;
        let response = sender.send_request(req).await?;
        Ok(self.response(response, sender))
    }

    fn idle(&self) -> MutexGuard<'_, VecDeque<Idle>> {
        // Nothing panics while holding the lock; a poisoned stack is still
        // a valid one.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn checkout(&self) -> Option<SendRequest<Body>> {
        let mut idle = self.idle();
        while let Some(conn) = idle.pop_back() {
            if conn.since.elapsed() >= POOL_IDLE_TIMEOUT {
                // Everything below has been idle longer still.
                idle.clear();
                return None;
            }
            // Not ready: its connection ended (the upstream closed it).
            if conn.sender.is_ready() {
                return Some(conn.sender);
            }
        }
        None
    }

    async fn connect(self: &Arc<Self>) -> Result<SendRequest<Body>, BoxError> {
        let mut connector = self.connector.clone();
        poll_fn(|cx| connector.poll_ready(cx)).await?;
        let io = connector.call(self.target.clone()).await?;
        let (sender, connection) = http1::Builder::new()
            .max_buf_size(UPSTREAM_READ_BUFFER)
            .handshake(io)
            .await?;
        tokio::spawn(async move {
            // With upgrades: a WebSocket's 101 hands the connection over to
            // the splice instead of ending it.
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(event = "upstream_connection_failed", error = %e);
            }
        });
        self.start_reaper();
        Ok(sender)
    }

    /// The response, whose body returns `sender` to the pool once it has
    /// been read to the end.
    fn response(
        self: &Arc<Self>,
        response: Response<Incoming>,
        sender: SendRequest<Body>,
    ) -> Response<Body> {
        if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            // The connection now belongs to the upgraded protocol.
            drop(sender);
            return response.map(|body| body.map_err(Into::into).boxed_unsync());
        }
        response.map(|body| {
            let conn = if body.is_end_stream() {
                self.put(sender);
                None
            } else {
                Some((self.clone(), sender))
            };
            PooledBody { body, conn }.boxed_unsync()
        })
    }

    fn put(self: &Arc<Self>, sender: SendRequest<Body>) {
        if sender.is_ready() {
            self.push(sender);
        } else if !sender.is_closed() {
            // Its connection task has not yet finished the exchange (it runs
            // on another worker, or the request body is still being
            // written): wait for it off the request's path.
            let pool = self.clone();
            tokio::spawn(async move {
                let mut sender = sender;
                if sender.ready().await.is_ok() {
                    pool.push(sender);
                }
            });
        }
    }

    fn push(&self, sender: SendRequest<Body>) {
        if self.max_idle == 0 {
            return;
        }
        let mut idle = self.idle();
        // Read under the lock, so the stack stays in time order.
        let since = tokio::time::Instant::now();
        self.drop_surplus(&mut idle, since, self.max_idle - 1);
        idle.push_back(Idle { sender, since });
    }

    /// Closes the oldest idle connections beyond `keep` that have been
    /// idle [`SURPLUS_IDLE`].
    fn drop_surplus(&self, idle: &mut VecDeque<Idle>, now: tokio::time::Instant, keep: usize) {
        while idle.len() > keep
            && idle
                .front()
                .is_some_and(|c| now.saturating_duration_since(c.since) >= SURPLUS_IDLE)
        {
            idle.pop_front();
        }
    }

    /// Closes, every [`SURPLUS_IDLE`], the connections idle
    /// [`POOL_IDLE_TIMEOUT`] and a burst's surplus, for as long as the pool
    /// is in use; a checkout alone would leave them open on an upstream
    /// that is no longer called.
    fn start_reaper(self: &Arc<Self>) {
        if self.reaper_started.swap(true, Ordering::Relaxed) {
            return;
        }
        let pool: Weak<Http1Pool> = Arc::downgrade(self);
        tokio::spawn(async move {
            let start = tokio::time::Instant::now() + SURPLUS_IDLE;
            let mut tick = tokio::time::interval_at(start, SURPLUS_IDLE);
            loop {
                tick.tick().await;
                let Some(pool) = pool.upgrade() else {
                    return;
                };
                pool.drop_expired();
            }
        });
    }

    fn drop_expired(&self) {
        let now = tokio::time::Instant::now();
        let mut idle = self.idle();
        idle.retain(|c| {
            now.saturating_duration_since(c.since) < POOL_IDLE_TIMEOUT && !c.sender.is_closed()
        });
        self.drop_surplus(&mut idle, now, self.max_idle);
    }

    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.idle().len()
    }
}

/// hyper's HTTP/1 client writes the URI as given.
fn origin_form(uri: &mut Uri) {
    let mut parts = std::mem::take(uri).into_parts();
    parts.scheme = None;
    parts.authority = None;
    if parts.path_and_query.is_some() {
        *uri = Uri::from_parts(parts).expect("a path alone is a valid URI");
    }
}

/// A response body that returns its connection to the pool when it ends.
/// Dropped before its end, it drops the connection too: the rest of the
/// response is still on the wire.
struct PooledBody {
    body: Incoming,
    conn: Option<(Arc<Http1Pool>, SendRequest<Body>)>,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some((pool, sender)) = self.conn.take() {
            pool.put(sender);
        }
    }
}

impl http_body::Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.release(),
            // A body with a length ends with its last byte: the server may
            // not poll again.
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.release(),
            Poll::Ready(Some(Err(_))) => this.conn = None,
            _ => {}
        }
        polled.map(|frame| frame.map(|result| result.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn get(addr: std::net::SocketAddr) -> Request<Body> {
        Request::get(format!("http://{addr}/x"))
            .header(http::header::HOST, addr.to_string())
            .body(crate::response::empty())
            .unwrap()
    }

    /// An upstream that answers each request on a connection with `ok`,
    /// counting connections; with `close_after_first`, it closes every
    /// connection after one answer (as if its keep-alive timeout passed).
    async fn upstream(close_after_first: bool) -> (std::net::SocketAddr, Arc<Mutex<usize>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(Mutex::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                *count.lock().unwrap() += 1;
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    loop {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                        if stream.write_all(answer).await.is_err() || close_after_first {
                            return;
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    async fn text(response: Response<Body>) -> Bytes {
        response.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_body_is_read() {
        let (addr, accepted) = upstream(false).await;
        let pool = Http1Pool::new(&addr.to_string().parse().unwrap(), 16);
        for _ in 0..3 {
            let response = pool.clone().send(get(addr)).await.unwrap();
            assert_eq!(pool.idle_count(), 0, "returned before its body was read");
            assert_eq!(text(response).await, "ok");
            tokio::task::yield_now().await;
            assert_eq!(pool.idle_count(), 1);
        }
        assert_eq!(*accepted.lock().unwrap(), 1);
    }

    #[tokio::test]
    async fn a_connection_closed_while_idle_is_replaced_without_failing() {
        let (addr, accepted) = upstream(true).await;
        let pool = Http1Pool::new(&addr.to_string().parse().unwrap(), 16);
        for _ in 0..3 {
            let response = pool.clone().send(get(addr)).await.unwrap();
            assert_eq!(text(response).await, "ok");
            // Give the upstream's close time to arrive, or not: either way
            // the next request must succeed.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(*accepted.lock().unwrap(), 3);
    }

    /// An upstream that reads each request and closes without answering.
    async fn hanging_up_upstream() -> (std::net::SocketAddr, Arc<Mutex<usize>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(0));
        let count = requests.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                if matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {
                    *count.lock().unwrap() += 1;
                }
            }
        });
        (addr, requests)
    }

    #[tokio::test]
    async fn a_request_that_was_written_is_never_sent_again() {
        let (addr, requests) = hanging_up_upstream().await;
        let pool = Http1Pool::new(&addr.to_string().parse().unwrap(), 16);
        assert!(pool.clone().send(get(addr)).await.is_err());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(
            *requests.lock().unwrap(),
            1,
            "sent again after it was written"
        );
    }

    #[tokio::test]
    async fn a_body_dropped_unread_takes_its_connection_along() {
        let (addr, accepted) = upstream(false).await;
        let pool = Http1Pool::new(&addr.to_string().parse().unwrap(), 16);
        let response = pool.clone().send(get(addr)).await.unwrap();
        drop(response);
        assert_eq!(pool.idle_count(), 0);
        let response = pool.clone().send(get(addr)).await.unwrap();
        assert_eq!(text(response).await, "ok");
        assert_eq!(*accepted.lock().unwrap(), 2);
    }

    /// Sends `n` requests at once and reads their answers.
    async fn burst(pool: &Arc<Http1Pool>, addr: std::net::SocketAddr, n: usize) {
        let responses =
            futures_util::future::join_all((0..n).map(|_| pool.clone().send(get(addr)))).await;
        for response in responses {
            assert_eq!(text(response.unwrap()).await, "ok");
        }
        tokio::task::yield_now().await;
    }

    #[tokio::test]
    async fn a_burst_finds_the_last_bursts_connections_open() {
        let (addr, accepted) = upstream(false).await;
        let pool = Http1Pool::new(&addr.to_string().parse().unwrap(), 2);
        burst(&pool, addr, 4).await;
        assert_eq!(pool.idle_count(), 4, "the surplus went at once");
        burst(&pool, addr, 4).await;
        assert_eq!(*accepted.lock().unwrap(), 4, "dialed again");
    }

    #[tokio::test]
    async fn no_more_than_max_idle_connections_stay_once_the_surplus_time_passes() {
        let (addr, accepted) = upstream(false).await;
        let pool = Http1Pool::new(&addr.to_string().parse().unwrap(), 2);
        // Four in flight at once open four connections; two stay.
        burst(&pool, addr, 4).await;
        assert_eq!(*accepted.lock().unwrap(), 4);
        tokio::time::pause();
        tokio::time::advance(SURPLUS_IDLE - Duration::from_millis(1)).await;
        pool.drop_expired();
        assert_eq!(pool.idle_count(), 4);
        tokio::time::advance(Duration::from_millis(1)).await;
        pool.drop_expired();
        assert_eq!(pool.idle_count(), 2);
    }
}
