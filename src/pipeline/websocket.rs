//! WebSockets. An `Upgrade: websocket` request runs the same phases as any
//! other (authentication, silent refresh, authorization, header rules);
//! when the upstream answers 101, the two upgraded connections are spliced
//! until either side closes.
//!
//! A socket lives no longer than the session that opened it, and a Bearer
//! socket no longer than its token's `exp`: the instance's
//! [`SocketWatch`](crate::sessions::watch) tells it when either ends (a
//! revocation message, or its batched check). Then authgate finishes the
//! frame in flight in each direction, sends both sides a close frame with
//! code 1008 (policy violation), and drops the connections.

use std::future::Future;
use std::io;
use std::time::Duration;

use http::header::{CONNECTION, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use super::{Permit, RequestContext};
use crate::auth::authenticate::{Authn, Via};
use crate::gateway::Gateway;
use crate::response::{Body, GatewayError};
use crate::routes::Route;
use crate::sessions::watch::SocketWatch;
use crate::sessions::FamilyId;
/// After the session ends, how long a frame in flight may take to finish
/// before the connections are dropped without a close frame.
pub const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Close code 1008: the endpoint's policy no longer allows the connection.
pub const CLOSE_POLICY_VIOLATION: u16 = 1008;
const CLOSE_REASON: &[u8] = b"session ended";
const BUFFER_BYTES: usize = 16 * 1024;

/// Whether `req` asks for a WebSocket (RFC 6455 §4.1; HTTP/1.1 only).
pub fn requested<B>(req: &Request<B>) -> bool {
    req.method() == Method::GET
        && req.version() == Version::HTTP_11
        && has_token(req.headers(), &UPGRADE, "websocket")
        && has_token(req.headers(), &CONNECTION, "upgrade")
}

fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The hop-by-hop pair an upgrade needs, dropped by the header rules and
/// put back for this one hop.
fn set_upgrade_headers(headers: &mut HeaderMap) {
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
}

/// What bounds a socket's life.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    /// Close when this session is logged out, revoked or expired.
    session: Option<FamilyId>,
    /// Close after this `exp` (seconds since the epoch).
    expires: Option<u64>,
}

impl Lifetime {
    /// A cookie session is bounded by the session alone: the browser would
    /// refresh its token, the socket cannot, so `exp` would cut it short.
    /// A Bearer token is bounded by its `exp` and, when it names one, its
    /// session too.
    pub fn of(authn: &Authn) -> Lifetime {
        match authn {
            Authn::Anonymous(_) => Lifetime::default(),
            Authn::Authenticated { identity, via, .. } => Lifetime {
                session: identity.session,
                expires: (*via == Via::Bearer || identity.session.is_none())
                    .then_some(identity.exp),
            },
        }
    }
}

/// Forwards an upgrade request; on 101, splices the connections in a task
/// of their own (not bounded by the request timeout, which covers only the
/// upstream's response head).
pub(super) async fn proxy<B: crate::response::RequestBody>(
    gw: &Gateway,
    route: &Route,
    mut req: Request<B>,
    path: &str,
    permit: Permit,
    lifetime: Lifetime,
    ctx: &mut RequestContext,
) -> Result<Response<Body>, GatewayError> {
    // An anonymous socket on an optional or public route has no session.
    let lifetime = if permit.identity.is_some() {
        lifetime
    } else {
        Lifetime::default()
    };
    let client_side = hyper::upgrade::on(&mut req);
    let mut upstream_request = super::mutate(gw, route, req, path, permit, ctx)?;
    set_upgrade_headers(upstream_request.headers_mut());
    let mut response = super::forward(
        gw,
        route,
        &route.target()?.clients.upgrade,
        upstream_request,
        ctx,
    )
    .await?;
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(response);
    }
    set_upgrade_headers(response.headers_mut());
    let upstream_side = hyper::upgrade::on(&mut response);
    let request_id = ctx.request_id.to_str().unwrap_or("-").to_string();
    let ended = session_ended(lifetime, &gw.sockets);
    tokio::spawn(async move {
        let (client, upstream) = match tokio::try_join!(client_side, upstream_side) {
            Ok(both) => both,
            Err(e) => {
                tracing::debug!(event = "websocket_upgrade_failed", request_id, error = %e);
                return;
            }
        };
        let outcome = relay(TokioIo::new(client), TokioIo::new(upstream), ended).await;
        tracing::info!(event = "websocket_closed", request_id, reason = outcome);
    });
    Ok(response)
}

/// Resolves, with the reason, when the socket must close; never for an
/// unbounded one. Watched from now on, so a revocation during the
/// upstream's handshake is not missed.
fn session_ended(
    lifetime: Lifetime,
    sockets: &SocketWatch,
) -> impl Future<Output = &'static str> + Send + 'static {
    let watched = (lifetime != Lifetime::default())
        .then(|| sockets.watch(lifetime.session, lifetime.expires));
    async move {
        match watched {
            Some(mut watched) => watched.ended().await,
            None => std::future::pending().await,
        }
    }
}

/// How one direction of the splice ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The reader closed; the writer has been shut down.
    Eof,
    /// Stopped on request, at a frame boundary; the writer is still open.
    Stopped,
}

/// Splices `client` and `upstream` both ways until both directions end,
/// either fails, or `ended` resolves. Returns why it stopped.
async fn relay<C, U>(
    client: C,
    upstream: U,
    ended: impl Future<Output = &'static str>,
) -> &'static str
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (client_read, client_write) = tokio::io::split(client);
    let (upstream_read, upstream_write) = tokio::io::split(upstream);
    let (stop, stopped) = watch::channel(false);
    let up = pump(client_read, upstream_write, stopped.clone());
    let down = pump(upstream_read, client_write, stopped);
    tokio::pin!(up, down, ended);
    let grace = tokio::time::sleep(Duration::from_secs(365 * 24 * 3600));
    tokio::pin!(grace);
    let (mut up_done, mut down_done) = (None, None);
    let mut first_close = None;
    let mut reason = None;
    while up_done.is_none() || down_done.is_none() {
        tokio::select! {
            done = &mut up, if up_done.is_none() => {
                let Ok((writer, how)) = done else { return reason.unwrap_or("error") };
                first_close.get_or_insert("client_closed");
                up_done = Some((writer, how));
            }
            done = &mut down, if down_done.is_none() => {
                let Ok((writer, how)) = done else { return reason.unwrap_or("error") };
                first_close.get_or_insert("upstream_closed");
                down_done = Some((writer, how));
            }
            why = &mut ended, if reason.is_none() => {
                reason = Some(why);
                let _ = stop.send(true);
                grace.as_mut().reset(tokio::time::Instant::now() + CLOSE_GRACE);
            }
            () = &mut grace => break,
        }
    }
    let Some(reason) = reason else {
        return first_close.unwrap_or("closed");
    };
    let close = async {
        if let Some((mut to_client, Ended::Stopped)) = down_done {
            let _ = to_client.write_all(&close_frame(None)).await;
            let _ = to_client.shutdown().await;
        }
        if let Some((mut to_upstream, Ended::Stopped)) = up_done {
            let _ = to_upstream
                .write_all(&close_frame(Some(rand::random())))
                .await;
            let _ = to_upstream.shutdown().await;
        }
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, close).await;
    reason
}

/// Copies `from` to `to`. Once `stop` turns true, finishes the frame in
/// flight and returns the writer, so a close frame can follow it.
async fn pump<R, W>(
    mut from: R,
    mut to: W,
    mut stop: watch::Receiver<bool>,
) -> io::Result<(W, Ended)>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut frames = FrameCursor::default();
    let mut buf = vec![0u8; BUFFER_BYTES];
    loop {
        let stopping = *stop.borrow_and_update();
        if stopping && frames.at_boundary() {
            return Ok((to, Ended::Stopped));
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => read?,
            changed = stop.changed(), if !stopping => {
                if changed.is_err() {
                    // The relay is gone; nothing is listening for us.
                    return Err(io::ErrorKind::BrokenPipe.into());
                }
                continue;
            }
        };
        if n == 0 {
            to.shutdown().await?;
            return Ok((to, Ended::Eof));
        }
        let data = &buf[..n];
        let forward = if stopping {
            frames.step(data)
        } else {
            frames.advance(data);
            n
        };
        to.write_all(&data[..forward]).await?;
        // TLS buffers records; a message must not wait for the next one.
        to.flush().await?;
    }
}

/// Where a byte stream stands in WebSocket framing (RFC 6455 §5.2): only
/// the headers are read, to know where one frame ends and the next begins.
/// Public for the `websocket_frames` fuzz target.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FrameCursor {
    /// Header bytes of the current frame read so far (at most 14).
    header: [u8; 14],
    have: usize,
    /// Payload bytes of the current frame still to come.
    payload_left: u64,
}

impl FrameCursor {
    /// Whether the bytes consumed so far end exactly at a frame's end.
    pub fn at_boundary(&self) -> bool {
        self.have == 0 && self.payload_left == 0
    }

    /// Consumes `data` up to the end of the current frame (or all of it);
    /// returns how many bytes that was.
    pub fn step(&mut self, data: &[u8]) -> usize {
        let mut used = 0;
        if self.payload_left == 0 {
            loop {
                let Some(&byte) = data.get(used) else {
                    return used;
                };
                self.header[self.have] = byte;
                self.have += 1;
                used += 1;
                if let Some(len) = self.payload_len() {
                    self.have = 0;
                    self.payload_left = len;
                    break;
                }
            }
        }
        let take = self.payload_left.min((data.len() - used) as u64);
        self.payload_left -= take;
        used + take as usize
    }

    /// Consumes all of `data`.
    pub fn advance(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let used = self.step(data);
            data = &data[used..];
        }
    }

    /// The payload length once the header is complete.
    fn payload_len(&self) -> Option<u64> {
        if self.have < 2 {
            return None;
        }
        let short = self.header[1] & 0x7f;
        let extended = match short {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
        if self.have < 2 + extended + mask {
            return None;
        }
        Some(match short {
            126 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
            127 => u64::from_be_bytes(self.header[2..10].try_into().expect("8 bytes")),
            n => u64::from(n),
        })
    }
}

/// A close frame with code 1008; masked with `mask` when it goes to the
/// upstream (a client's frames must be masked, a server's must not be).
fn close_frame(mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut payload = CLOSE_POLICY_VIOLATION.to_be_bytes().to_vec();
    payload.extend_from_slice(CLOSE_REASON);
    let mut frame = vec![0x88];
    match mask {
        None => {
            frame.push(payload.len() as u8);
            frame.extend_from_slice(&payload);
        }
        Some(mask) => {
            frame.push(0x80 | payload.len() as u8);
            frame.extend_from_slice(&mask);
            frame.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
        }
    }
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload_len: usize, masked: bool) -> Vec<u8> {
        let mut f = vec![0x82];
        let mask_bit = if masked { 0x80 } else { 0 };
        match payload_len {
            0..=125 => f.push(mask_bit | payload_len as u8),
            126..=0xffff => {
                f.push(mask_bit | 126);
                f.extend_from_slice(&(payload_len as u16).to_be_bytes());
            }
            _ => {
                f.push(mask_bit | 127);
                f.extend_from_slice(&(payload_len as u64).to_be_bytes());
            }
        }
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend(std::iter::repeat_n(7u8, payload_len));
        f
    }

    #[test]
    fn cursor_finds_boundaries_across_any_split() {
        let frames = [
            frame(0, false),
            frame(5, true),
            frame(300, false),
            frame(70_000, true),
        ];
        let stream: Vec<u8> = frames.concat();
        let ends: Vec<usize> = frames
            .iter()
            .scan(0, |at, f| {
                *at += f.len();
                Some(*at)
            })
            .collect();
        for chunk in [1, 2, 3, 7, 100, 4096, stream.len()] {
            let mut cursor = FrameCursor::default();
            let mut boundaries = Vec::new();
            let mut at = 0;
            for piece in stream.chunks(chunk) {
                let mut rest = piece;
                while !rest.is_empty() {
                    let used = cursor.step(rest);
                    at += used;
                    rest = &rest[used..];
                    if cursor.at_boundary() {
                        boundaries.push(at);
                    }
                }
            }
            assert_eq!(boundaries, ends, "chunk size {chunk}");
        }
    }

    /// splitmix64: a fixed sequence per seed, so a failure names its case.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// The reference encoder: any first byte, masked or not, and the length
    /// in any of the three forms that fits it, minimal or not (the cursor
    /// must not rely on minimal lengths, which only the endpoints check).
    fn encode(rng: &mut Rng, payload_len: usize) -> Vec<u8> {
        let mask_bit = if rng.below(2) == 0 { 0x80 } else { 0 };
        let mut f = vec![rng.next() as u8];
        let form = match payload_len {
            0..=125 => rng.below(3),
            126..=0xffff => 1 + rng.below(2),
            _ => 2,
        };
        match form {
            0 => f.push(mask_bit | payload_len as u8),
            1 => {
                f.push(mask_bit | 126);
                f.extend_from_slice(&(payload_len as u16).to_be_bytes());
            }
            _ => {
                f.push(mask_bit | 127);
                f.extend_from_slice(&(payload_len as u64).to_be_bytes());
            }
        }
        if mask_bit != 0 {
            f.extend_from_slice(&rng.next().to_le_bytes()[..4]);
        }
        // Payload bytes that look like headers, so a cursor that read into
        // the payload would go astray.
        f.extend_from_slice(&[0x82, 0xff, 0x7e, 0x7f].repeat(payload_len / 4 + 1)[..payload_len]);
        f
    }

    /// A stream of a few frames and the offset at which each one ends.
    fn frames(rng: &mut Rng) -> (Vec<u8>, Vec<usize>) {
        let mut stream = Vec::new();
        let mut ends = Vec::new();
        for _ in 0..rng.below(6) {
            let len = match rng.below(20) {
                0..=11 => rng.below(130),
                12..=18 => rng.below(600),
                _ => 0xfff0 + rng.below(0x20),
            };
            stream.extend(encode(rng, len));
            ends.push(stream.len());
        }
        (stream, ends)
    }

    /// Cuts `len` bytes at a few random points.
    fn cuts(rng: &mut Rng, len: usize) -> Vec<usize> {
        let mut at: Vec<usize> = (0..rng.below(8)).map(|_| rng.below(len + 1)).collect();
        at.push(len);
        at.sort_unstable();
        at
    }

    #[test]
    fn cursor_matches_the_reference_encoder_across_random_splits() {
        for seed in 0..3000 {
            let mut rng = Rng(seed);
            let (stream, ends) = frames(&mut rng);
            // Sometimes the last frame is cut short, as by a read that
            // ends mid-frame: its end must not be reported.
            let (stream, ends) = match ends.len() {
                n if n > 0 && rng.below(3) == 0 => {
                    let start = if n > 1 { ends[n - 2] } else { 0 };
                    let keep = start + rng.below(ends[n - 1] - start);
                    (stream[..keep].to_vec(), ends[..n - 1].to_vec())
                }
                _ => (stream, ends),
            };
            let mut cursor = FrameCursor::default();
            let mut boundaries = Vec::new();
            let mut at = 0;
            for cut in cuts(&mut rng, stream.len()) {
                while at < cut {
                    let used = cursor.step(&stream[at..cut]);
                    assert!(used >= 1, "seed {seed}");
                    at += used;
                    if cursor.at_boundary() {
                        boundaries.push(at);
                    } else {
                        assert_eq!(at, cut, "seed {seed}: stopped mid-frame");
                    }
                }
            }
            assert_eq!(boundaries, ends, "seed {seed}");
            let complete = ends.last().copied().unwrap_or(0) == stream.len();
            assert_eq!(cursor.at_boundary(), complete, "seed {seed}");
            let mut whole = FrameCursor::default();
            whole.advance(&stream);
            assert_eq!(whole, cursor, "seed {seed}");
        }
    }

    /// Hands out the stream in the given pieces, then EOF; turns `stop`
    /// true as it hands out piece `stop_at`.
    struct Pieces {
        pieces: std::collections::VecDeque<Vec<u8>>,
        stop: watch::Sender<bool>,
        stop_at: usize,
        given: usize,
    }

    impl AsyncRead for Pieces {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            if let Some(piece) = self.pieces.pop_front() {
                buf.put_slice(&piece);
                if self.given == self.stop_at {
                    let _ = self.stop.send(true);
                }
                self.given += 1;
            }
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn stopping_forwards_exactly_to_the_end_of_the_frame_in_flight() {
        for seed in 0..300 {
            let mut rng = Rng(seed);
            let (stream, ends) = frames(&mut rng);
            let at = cuts(&mut rng, stream.len());
            let pieces: std::collections::VecDeque<Vec<u8>> = std::iter::once(0)
                .chain(at.iter().copied())
                .zip(at.iter().copied())
                .filter(|(from, to)| from < to)
                .flat_map(|(from, to)| stream[from..to].chunks(BUFFER_BYTES))
                .map(<[u8]>::to_vec)
                .collect();
            let count = pieces.len();
            let stop_at = rng.below(count + 1);
            let read_before_stop: usize = pieces.iter().take(stop_at + 1).map(Vec::len).sum();
            let (stop, stopped) = watch::channel(false);
            let reader = Pieces {
                pieces,
                stop,
                stop_at,
                given: 0,
            };
            let (forwarded, how) = pump(reader, Vec::new(), stopped).await.unwrap();
            let expected = if stop_at == count {
                (stream.len(), Ended::Eof)
            } else {
                let end = *ends.iter().find(|&&e| e >= read_before_stop).unwrap();
                (end, Ended::Stopped)
            };
            assert_eq!((forwarded.len(), how), expected, "seed {seed}");
            assert_eq!(forwarded, stream[..forwarded.len()], "seed {seed}");
        }
    }

    #[test]
    fn close_frames_carry_1008() {
        let plain = close_frame(None);
        assert_eq!(
            &plain[..4],
            &[0x88, 2 + CLOSE_REASON.len() as u8, 0x03, 0xf0]
        );
        let masked = close_frame(Some([9, 8, 7, 6]));
        assert_eq!(masked[1], 0x80 | (2 + CLOSE_REASON.len() as u8));
        assert_eq!([masked[6] ^ 9, masked[7] ^ 8], [0x03, 0xf0]);
        let mut cursor = FrameCursor::default();
        cursor.advance(&masked);
        assert!(cursor.at_boundary());
    }

    #[test]
    fn bearer_sockets_end_with_the_token_cookie_ones_with_the_session() {
        let identity = crate::auth::Identity {
            exp: 100,
            session: Some([1; 16]),
            ..Default::default()
        };
        let of = |via| {
            Lifetime::of(&Authn::Authenticated {
                identity: std::sync::Arc::new(identity.clone()),
                token: None,
                via,
            })
        };
        assert_eq!(of(Via::Bearer).expires, Some(100));
        assert_eq!(of(Via::Cookie).expires, None);
        assert_eq!(of(Via::Refresh).session, Some([1; 16]));
        let anonymous = Lifetime::of(&Authn::Anonymous(
            crate::auth::authenticate::Anonymous::Missing,
        ));
        assert_eq!(anonymous, Lifetime::default());
    }
}
