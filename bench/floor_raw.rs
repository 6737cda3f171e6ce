//! The floor of a proxy on tokio without hyper: each request head parsed
//! with httparse and its bytes written to the upstream as they came, each
//! response head parsed and the response copied back by its
//! Content-Length. No authentication, no header work, no pool: one
//! upstream connection per client connection, as in `bench/floor.rs`.
//!
//! It is not a proxy anyone should run: it forwards only what case 1
//! sends (bodiless requests, responses with a Content-Length) and closes
//! the connection on anything else. It answers one question for the
//! benchmark: how fast could a gateway go on tokio if it wrote its own
//! HTTP/1 engine instead of using hyper's? `bench/run.sh` measures it in
//! case 1 beside `bench/floor.rs` and nginx.
//!
//! Usage: `bench-floor-raw LISTEN UPSTREAM` (default 127.0.0.1:18041 and
//! 127.0.0.1:18001).

use std::io;

use bytes::{Buf, BytesMut};
use httparse::Status;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// The allocator authgate uses, as in `bench/floor.rs`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const MAX_HEADERS: usize = 64;

/// The length of the complete request head at the start of `buf`, if it
/// is complete; an error for a head this floor does not forward.
fn request_head(buf: &[u8]) -> io::Result<Option<usize>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(Status::Complete(len)) => {
            let has_body = req.headers.iter().any(|h| {
                h.name.eq_ignore_ascii_case("transfer-encoding")
                    || (h.name.eq_ignore_ascii_case("content-length") && h.value != b"0")
            });
            if has_body {
                return Err(io::Error::other("request bodies are not forwarded"));
            }
            Ok(Some(len))
        }
        Ok(Status::Partial) => Ok(None),
        Err(e) => Err(io::Error::other(e)),
    }
}

/// The length of the complete response (head and body) at the start of
/// `buf`, once its head is complete.
fn response_length(buf: &[u8]) -> io::Result<Option<usize>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut headers);
    match res.parse(buf) {
        Ok(Status::Complete(head)) => {
            let length = res
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| {
                    std::str::from_utf8(h.value)
                        .ok()?
                        .trim()
                        .parse::<usize>()
                        .ok()
                })
                .ok_or_else(|| io::Error::other("responses without Content-Length"))?;
            Ok(Some(head + length))
        }
        Ok(Status::Partial) => Ok(None),
        Err(e) => Err(io::Error::other(e)),
    }
}

async fn serve(mut client: TcpStream, upstream: &str) -> io::Result<()> {
    let mut server = TcpStream::connect(upstream).await?;
    server.set_nodelay(true)?;
    let mut from_client = BytesMut::with_capacity(8 * 1024);
    let mut from_server = BytesMut::with_capacity(8 * 1024);
    loop {
        let head = loop {
            if let Some(len) = request_head(&from_client)? {
                break len;
            }
            if client.read_buf(&mut from_client).await? == 0 {
                return Ok(());
            }
        };
        server.write_all(&from_client[..head]).await?;
        from_client.advance(head);
        let whole = loop {
            if let Some(len) = response_length(&from_server)? {
                break len;
            }
            if server.read_buf(&mut from_server).await? == 0 {
                return Ok(());
            }
        };
        while from_server.len() < whole {
            from_server.reserve(whole - from_server.len());
            if server.read_buf(&mut from_server).await? == 0 {
                return Ok(());
            }
        }
        client.write_all(&from_server[..whole]).await?;
        from_server.advance(whole);
    }
}

fn main() -> io::Result<()> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:18041".into());
    let upstream: &'static str = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:18001".into())
        .leak();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&listen).await?;
        loop {
            let (client, _) = listener.accept().await?;
            client.set_nodelay(true)?;
            tokio::spawn(async move {
                let _ = serve(client, upstream).await;
            });
        }
    })
}
