//! Targets and sockets: the loopback guard, source-address spreading and the WebSocket connect.
//!
//! `wsload` only ever talks to this machine: a target whose host is not in 127.0.0.0/8,
//! `localhost` or `::1` is refused before any socket opens. Client sockets are bound to
//! 127.0.0.1..127.0.0.N before connecting, because one source address has only ~28k ephemeral
//! ports and a benchmark of tens of thousands of sessions (plus their reconnects, whose old
//! ports linger in TIME_WAIT) would run out of them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{WebSocketStream, client_async_with_config, tungstenite};

/// A client WebSocket over plain TCP (loopback needs no TLS).
pub type Ws = WebSocketStream<TcpStream>;

/// A loopback WebSocket or HTTP endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// As given, e.g. `ws://127.0.0.1:8080/ws`.
    pub url: String,
    pub addr: SocketAddr,
    /// The path with query, e.g. `/ws`.
    pub path: String,
}

impl Target {
    /// Parses `ws://host:port/path` or `http://host:port/path`, refusing any host that is not
    /// loopback. No name resolution happens: `localhost` is taken as 127.0.0.1.
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let (scheme, rest) = url
            .split_once("://")
            .with_context(|| format!("{url:?}: expected scheme://host:port/path"))?;
        let default_port = match scheme {
            "ws" | "http" => 80,
            "wss" | "https" => bail!("{url:?}: TLS targets are not supported (loopback only)"),
            other => bail!("{url:?}: unsupported scheme {other:?}"),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) =
            split_host_port(authority).with_context(|| format!("{url:?}: malformed host:port"))?;
        let port = port.unwrap_or(default_port);
        let ip = loopback_ip(host).with_context(|| {
            format!("{url:?}: only loopback targets (127.0.0.0/8, localhost, ::1) are allowed")
        })?;
        Ok(Self {
            url: url.to_owned(),
            addr: SocketAddr::new(ip, port),
            path: path.to_owned(),
        })
    }
}

fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        return Some((host, port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host, Some(port.parse().ok()?))),
        None => Some((authority, None)),
    }
}

/// The address of a loopback host, or `None` for anything else.
pub fn loopback_ip(host: &str) -> Option<IpAddr> {
    if host.eq_ignore_ascii_case("localhost") {
        return Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    let ip: IpAddr = host.parse().ok()?;
    let ok = match ip {
        IpAddr::V4(v4) => v4.octets()[0] == 127,
        IpAddr::V6(v6) => v6 == Ipv6Addr::LOCALHOST,
    };
    ok.then_some(ip)
}

/// Parses every URL, failing on the first non-loopback one.
pub fn targets(urls: &[String]) -> anyhow::Result<Vec<Target>> {
    if urls.is_empty() {
        bail!("at least one --url is required");
    }
    urls.iter().map(|u| Target::parse(u)).collect()
}

/// Why a connection attempt failed.
#[derive(Debug)]
pub enum ConnectError {
    /// The server answered the upgrade with an HTTP status (503 draining/full, 429, …).
    Refused(u16),
    /// Anything else: TCP refused, timeout, protocol.
    Failed(String),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused(status) => write!(f, "upgrade refused with HTTP {status}"),
            Self::Failed(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ConnectError {}

/// How client sockets are opened: source addresses and WebSocket buffer sizes.
#[derive(Debug)]
pub struct Net {
    sources: u32,
    next: AtomicU32,
    pub connect_timeout: Duration,
    config: WebSocketConfig,
}

impl Net {
    /// `sources` source addresses 127.0.0.1..=127.0.0.N are used in turn (IPv4 targets only).
    pub fn new(sources: u32) -> Self {
        Self {
            sources: sources.clamp(1, 250),
            next: AtomicU32::new(0),
            connect_timeout: Duration::from_secs(10),
            // Small buffers: tens of thousands of idle client sockets must not cost gigabytes
            // (tungstenite's default read buffer is 128 KiB).
            config: WebSocketConfig::default()
                .read_buffer_size(8 * 1024)
                .write_buffer_size(0)
                .max_write_buffer_size(4 << 20),
        }
    }

    fn source_for(&self, target: &Target) -> SocketAddr {
        match target.addr {
            SocketAddr::V4(_) => {
                let i = self.next.fetch_add(1, Ordering::Relaxed) % self.sources;
                SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + i as u8)), 0)
            }
            SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 0),
        }
    }

    /// Opens a TCP connection from the next source address and upgrades it.
    pub async fn connect(&self, target: &Target) -> Result<Ws, ConnectError> {
        let attempt = async {
            let socket = match target.addr {
                SocketAddr::V4(_) => TcpSocket::new_v4(),
                SocketAddr::V6(_) => TcpSocket::new_v6(),
            }
            .map_err(|e| ConnectError::Failed(format!("socket: {e}")))?;
            socket
                .bind(self.source_for(target))
                .map_err(|e| ConnectError::Failed(format!("bind: {e}")))?;
            let stream = socket
                .connect(target.addr)
                .await
                .map_err(|e| ConnectError::Failed(format!("connect {}: {e}", target.addr)))?;
            let _ = stream.set_nodelay(true);
            let url = format!("ws://{}{}", target.addr, target.path);
            match client_async_with_config(url, stream, Some(self.config)).await {
                Ok((ws, _)) => Ok(ws),
                Err(tungstenite::Error::Http(response)) => {
                    Err(ConnectError::Refused(response.status().as_u16()))
                }
                Err(e) => Err(ConnectError::Failed(format!("upgrade: {e}"))),
            }
        };
        tokio::time::timeout(self.connect_timeout, attempt)
            .await
            .unwrap_or_else(|_| Err(ConnectError::Failed("connect timed out".into())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets_are_accepted() {
        for ok in [
            "ws://127.0.0.1:8080/ws",
            "ws://localhost:1/ws",
            "ws://127.5.6.7:9/x",
            "ws://[::1]:8080/ws",
            "http://127.0.0.1:9090",
        ] {
            assert!(Target::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "ws://10.0.0.1:8080/ws",
            "ws://192.168.1.2/ws",
            "ws://example.com/ws",
            "ws://[::2]:1/ws",
            "wss://127.0.0.1/ws",
            "ws://128.0.0.1/ws",
            "127.0.0.1:8080",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
        let t = Target::parse("ws://localhost:81/ws?x=1").unwrap();
        assert_eq!(t.addr, "127.0.0.1:81".parse().unwrap());
        assert_eq!(t.path, "/ws?x=1");
    }

    #[test]
    fn sources_rotate_over_loopback() {
        let net = Net::new(3);
        let t = Target::parse("ws://127.0.0.1:1/ws").unwrap();
        let got: Vec<_> = (0..4)
            .map(|_| net.source_for(&t).ip().to_string())
            .collect();
        assert_eq!(got, ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.1"]);
    }
}
