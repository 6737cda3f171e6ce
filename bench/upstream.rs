//! The benchmark's upstream: as little work per request as hyper allows, on
//! one thread, so it is never what limits the proxy in front of it.
//!
//! - `GET /big`: a body of `BENCH_BIG_BYTES` (default 1 GiB) zero bytes,
//!   sent in 64 KiB chunks of one shared buffer (no copy, no file);
//! - `POST`/`PUT` anything: reads the whole body, then answers its length;
//! - anything else: `200 ok`, keep-alive.
//!
//! Usage: `bench-upstream [ADDR]` (default 127.0.0.1:18001).

use std::convert::Infallible;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

const CHUNK: usize = 64 * 1024;
static ZEROS: [u8; CHUNK] = [0; CHUNK];

type Body = BoxBody<Bytes, Infallible>;

fn big(total: u64) -> Response<Body> {
    let chunks = total.div_ceil(CHUNK as u64);
    let frames = (0..chunks).map(move |i| {
        let len = (total - i * CHUNK as u64).min(CHUNK as u64) as usize;
        Ok::<_, Infallible>(Frame::data(Bytes::from_static(&ZEROS[..len])))
    });
    let body = StreamBody::new(futures_util::stream::iter(frames));
    Response::builder()
        .header("content-length", total)
        .body(BodyExt::boxed(body))
        .expect("valid response")
}

async fn handle(req: Request<Incoming>, big_bytes: u64) -> Result<Response<Body>, hyper::Error> {
    if req.method() == Method::POST || req.method() == Method::PUT {
        let mut body = req.into_body();
        let mut received: u64 = 0;
        while let Some(frame) = body.frame().await {
            if let Some(data) = frame?.data_ref() {
                received += data.len() as u64;
            }
        }
        return Ok(Response::new(
            Full::new(Bytes::from(received.to_string())).boxed(),
        ));
    }
    if req.uri().path() == "/big" {
        return Ok(big(big_bytes));
    }
    Ok(Response::builder()
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from_static(b"ok")).boxed())
        .expect("valid response"))
}

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18001".into());
    let big_bytes: u64 = std::env::var("BENCH_BIG_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 30);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = service_fn(move |req| handle(req, big_bytes));
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}
