//! Sockets from chosen loopback addresses, WebSocket upgrades over them (with extra headers),
//! refused upgrades, and reading until the peer closes.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite;

use crate::support::Client;

/// A TCP connection to `to` from the loopback address `from` (any of 127.0.0.0/8 on Linux).
pub async fn tcp_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    socket.connect(to).await.unwrap()
}

/// A WebSocket upgrade of `/ws` over an open TCP stream.
pub async fn ws_over(tcp: TcpStream, to: SocketAddr) -> Result<Client, tungstenite::Error> {
    ws_request(tcp, to, &[]).await
}

/// A WebSocket upgrade of `/ws` over an open TCP stream with extra request headers.
pub async fn ws_request(
    tcp: TcpStream,
    to: SocketAddr,
    headers: &[(&str, &str)],
) -> Result<Client, tungstenite::Error> {
    use tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{to}/ws").into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().append(
            tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(tcp))
        .await
        .map(|(ws, _)| Client { ws })
}

pub async fn ws_from(from: IpAddr, to: SocketAddr) -> Result<Client, tungstenite::Error> {
    ws_over(tcp_from(from, to).await, to).await
}

/// The status, `Retry-After` and body of a refused upgrade.
pub fn refusal(result: Result<Client, tungstenite::Error>) -> (u16, Option<u32>, String) {
    match result {
        Err(tungstenite::Error::Http(resp)) => (
            resp.status().as_u16(),
            resp.headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().parse().unwrap()),
            String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned(),
        ),
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("expected an HTTP refusal, the upgrade succeeded"),
    }
}

/// Reads until the peer closes the socket; returns what it sent first. Panics after `limit`.
pub async fn read_until_closed(tcp: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "socket still open after {limit:?}; received {:?}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
}
