//! WebSockets through a test gateway: an echo upstream that records what
//! it saw, and client helpers.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};

use super::{cookie_value, TestGateway};

/// A WebSocket echo server and what it saw.
pub struct Echo {
    pub addr: SocketAddr,
    /// Request headers of each accepted handshake.
    pub handshakes: Arc<Mutex<Vec<http::HeaderMap>>>,
    /// Close codes received from authgate.
    pub closes: Arc<Mutex<Vec<Option<CloseCode>>>>,
    /// TCP connections accepted.
    pub connections: Arc<AtomicUsize>,
}

impl Echo {
    pub async fn start() -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo = Echo {
            addr: listener.local_addr().unwrap(),
            handshakes: Arc::default(),
            closes: Arc::default(),
            connections: Arc::default(),
        };
        let (seen, closes, count) = (
            echo.handshakes.clone(),
            echo.closes.clone(),
            echo.connections.clone(),
        );
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let (seen, closes) = (seen.clone(), closes.clone());
                tokio::spawn(async move {
                    // The Result type is tungstenite's, not ours to shrink.
                    #[allow(clippy::result_large_err)]
                    let callback = |req: &tungstenite::handshake::server::Request, response| {
                        seen.lock().unwrap().push(req.headers().clone());
                        Ok(response)
                    };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await
                    else {
                        return;
                    };
                    while let Some(Ok(message)) = ws.next().await {
                        match message {
                            // A failed send ends the loop at the next read.
                            Message::Text(_) | Message::Binary(_) => {
                                let _ = ws.send(message).await;
                            }
                            Message::Close(frame) => {
                                closes.lock().unwrap().push(frame.map(|f| f.code));
                                return;
                            }
                            _ => {}
                        }
                    }
                });
            }
        });
        echo
    }

    pub fn last_handshake(&self) -> http::HeaderMap {
        self.handshakes.lock().unwrap().last().unwrap().clone()
    }

    pub fn route(&self, prefix: &str) -> String {
        format!(
            "[[routes]]\nprefix = \"{prefix}\"\nupstream = \"http://{}\"\n",
            self.addr
        )
    }
}

pub fn ws_request(
    url: &str,
    header: Option<(&str, String)>,
) -> tungstenite::handshake::client::Request {
    let mut request = url.into_client_request().unwrap();
    if let Some((name, value)) = header {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    request
}

pub type Handshake = tungstenite::handshake::client::Response;

/// A plain `ws://` socket to `gw` at `path`, with one extra header.
pub async fn open_ws(
    gw: &TestGateway,
    path: &str,
    header: (&str, String),
) -> (tokio_tungstenite::WebSocketStream<TcpStream>, Handshake) {
    open_ws_at(gw.addr, path, header).await
}

/// [`open_ws`] to a gateway listening on `addr`.
pub async fn open_ws_at(
    addr: SocketAddr,
    path: &str,
    header: (&str, String),
) -> (tokio_tungstenite::WebSocketStream<TcpStream>, Handshake) {
    let url = format!("ws://{addr}{path}");
    let stream = TcpStream::connect(addr).await.unwrap();
    tokio_tungstenite::client_async(ws_request(&url, Some(header)), stream)
        .await
        .unwrap()
}

/// The status of a refused handshake.
pub async fn refused<S>(url: &str, header: Option<(&str, String)>, stream: S) -> StatusCode
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match tokio_tungstenite::client_async(ws_request(url, header), stream).await {
        Err(tungstenite::Error::Http(response)) => response.status(),
        Err(e) => panic!("expected a refused handshake, got {e}"),
        Ok((_, response)) => panic!("expected a refused handshake, got {response:?}"),
    }
}

/// Sends a text and a binary message and expects both back.
pub async fn round_trip<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
    let big = vec![7u8; 200_000];
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(big));
}

/// Waits (bounded) for the close frame authgate sends; returns its code.
pub async fn close_code<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Option<CloseCode>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let wait = async {
        while let Some(message) = ws.next().await {
            match message {
                Ok(Message::Close(frame)) => return frame.map(|f| f.code),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    };
    tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .expect("authgate closes the socket within seconds")
}

/// The `Cookie` header of a login's session cookies.
pub fn cookie_header(cookies: &[String]) -> String {
    ["access_token", "refresh_token"]
        .iter()
        .filter_map(|name| cookie_value(cookies, name).map(|v| format!("{name}={v}")))
        .collect::<Vec<_>>()
        .join("; ")
}

/// `POST /logout` with the session of a login.
pub async fn logout(gw: &TestGateway, cookies: &[String]) {
    let refresh = cookie_value(cookies, "refresh_token").unwrap();
    let response = super::client()
        .post(gw.url("/logout"))
        .header("cookie", format!("refresh_token={refresh}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
}
