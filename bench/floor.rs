//! The floor of a proxy built on hyper: hyper's HTTP/1 server in front of
//! hyper's HTTP/1 client, and nothing else. No authentication, no header
//! work, no pool: each client connection gets one upstream connection of
//! its own, used for its requests in turn. Whatever this costs per request,
//! authgate (which does all of that on top of the same two engines) cannot
//! cost less. `bench/run.sh` measures it beside nginx in case 1.
//!
//! Usage: `bench-floor LISTEN UPSTREAM` (default 127.0.0.1:18040 and
//! 127.0.0.1:18001).

use std::sync::Arc;

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::Mutex;

// The allocator authgate uses, so that the two differ only in what they do.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

async fn forward(
    sender: Arc<Mutex<SendRequest<Incoming>>>,
    mut req: Request<Incoming>,
) -> Result<Response<Incoming>, hyper::Error> {
    // Origin form, as the client sent it: hyper's client writes the URI as given.
    let path = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    *req.uri_mut() = Uri::try_from(path).unwrap_or_else(|_| Uri::from_static("/"));
    let mut sender = sender.lock().await;
    sender.ready().await?;
    sender.send_request(req).await
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:18040".into());
    let upstream = args.next().unwrap_or_else(|| "127.0.0.1:18001".into());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&listen).await?;
        loop {
            let (client, _) = listener.accept().await?;
            let _ = client.set_nodelay(true);
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                let _ = server.set_nodelay(true);
                let Ok((sender, connection)) =
                    hyper::client::conn::http1::handshake(TokioIo::new(server)).await
                else {
                    return;
                };
                tokio::spawn(connection);
                let sender = Arc::new(Mutex::new(sender));
                let service = service_fn(move |req| forward(sender.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(client), service)
                    .await;
            });
        }
    })
}
