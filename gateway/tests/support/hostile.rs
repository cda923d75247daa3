//! Hostile clients for the security suites: tokens (valid, forged and broken), a well-behaved
//! witness that must keep receiving during every attack, sockets from chosen loopback addresses,
//! gateway processes with a captured log, and a raw WebSocket client that writes frames byte by
//! byte (any header bits, its own masking, any declared length).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::StreamExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::{self, Message};

use super::process::Pod;
use super::{Client, Closed, WAIT, http};

/// The HS256 secret of every suite gateway (written to [`secret_file`]).
pub const SECRET: &str = "hostile-suite-hs256-secret-long-enough-for-the-gateway";

pub fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// A test key of `tests/keys/`.
pub fn key_path(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/keys")
        .join(file)
}

/// A file holding [`SECRET`], written once per test binary.
pub fn secret_file() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let path = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("hostile-secret-{}", std::process::id()));
        std::fs::write(&path, SECRET).unwrap();
        path
    })
    .clone()
}

/// `sub`, `iat` and an `exp` ten minutes ahead.
pub fn claims(sub: &str) -> Value {
    json!({"sub": sub, "iat": now(), "exp": now() + 600})
}

/// `claims` with a `gw` claim granting exactly these patterns.
pub fn granting(sub: &str, subscribe: &[&str], publish: &[&str]) -> Value {
    let mut c = claims(sub);
    c["gw"] = json!({"sub": subscribe, "pub": publish});
    c
}

pub fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
}

pub fn hs256(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        claims,
    )
}

/// Signed with a private key of `tests/keys/`.
pub fn signed_with(alg: Algorithm, private_pem: &str, claims: &Value) -> String {
    let pem = std::fs::read(key_path(private_pem)).unwrap();
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
        other => panic!("no fixture for {other:?}"),
    }
    .unwrap();
    sign(alg, &key, claims)
}

pub fn rs256(claims: &Value) -> String {
    signed_with(Algorithm::RS256, "rsa_private.pem", claims)
}

/// An unsigned token whose header names `alg` (e.g. `none`): header and claims, empty signature.
pub fn unsigned(alg: &str, claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(json!({"alg": alg, "typ": "JWT"}).to_string());
    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{body}.")
}

/// Algorithm confusion: an HS256 token "signed" with the RSA public key's PEM as the secret.
pub fn confused(claims: &Value) -> String {
    let public = std::fs::read(key_path("rsa_public.pem")).unwrap();
    sign(Algorithm::HS256, &EncodingKey::from_secret(&public), claims)
}

/// How a `hello` ended.
pub enum Outcome {
    Welcome(Client, Value),
    Error(Client, Value),
    Closed(Closed),
}

impl Outcome {
    pub fn welcome(self) -> (Client, Value) {
        match self {
            Outcome::Welcome(c, w) => (c, w),
            Outcome::Error(_, e) => panic!("expected welcome, got {e}"),
            Outcome::Closed(c) => panic!("expected welcome, got {c:?}"),
        }
    }

    pub fn closed(self) -> Closed {
        match self {
            Outcome::Closed(c) => c,
            Outcome::Welcome(_, w) => panic!("expected a close, got {w}"),
            Outcome::Error(_, e) => panic!("expected a close, got {e}"),
        }
    }
}

/// The next text frame or the close frame.
pub async fn frame_or_close(c: &mut Client) -> Result<Value, Closed> {
    loop {
        let m = tokio::time::timeout(WAIT, c.ws.next())
            .await
            .expect("a frame in time");
        match m {
            Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(t.as_str()).unwrap()),
            Some(Ok(Message::Close(Some(f)))) => {
                return Err(Closed {
                    code: f.code.into(),
                    reason: serde_json::from_str(f.reason.as_str()).unwrap_or(Value::Null),
                });
            }
            Some(Ok(Message::Close(None))) | None => panic!("closed without a close frame"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("error before a frame: {e}"),
        }
    }
}

/// Sends `hello` (with `token`, and `extra` fields merged in) on `c` and reports the answer.
pub async fn hello_on(mut c: Client, token: Option<&str>, extra: Value) -> Outcome {
    let mut hello = json!({"type": "hello"});
    if let Some(t) = token {
        hello["token"] = json!(t);
    }
    if let Value::Object(fields) = extra {
        for (k, v) in fields {
            hello[k] = v;
        }
    }
    c.send(hello).await;
    match frame_or_close(&mut c).await {
        Ok(v) if v["type"] == "welcome" => Outcome::Welcome(c, v),
        Ok(v) => Outcome::Error(c, v),
        Err(closed) => Outcome::Closed(closed),
    }
}

pub async fn hello(url: &str, token: Option<&str>) -> Outcome {
    hello_on(Client::connect(url).await, token, json!({})).await
}

/// Publishes through the admin API; returns the HTTP status.
pub async fn admin_publish(
    admin: SocketAddr,
    headers: Option<&str>,
    topic: &str,
    data: Value,
) -> u16 {
    let body = json!({"topic": topic, "data": data}).to_string();
    http(admin, "POST", "/api/publish", Some(&body), headers)
        .await
        .0
}

/// A well-behaved client subscribed to `witness`: during every attack it must keep receiving
/// what is published to it, in order.
pub struct Witness {
    pub client: Client,
    pub admin: SocketAddr,
    /// Extra request headers for the admin API (its token).
    pub admin_headers: Option<String>,
    pub topic: String,
    /// Messages published to the topic so far (the `n` of the next one).
    pub sent: u64,
}

impl Witness {
    /// Says hello on `client` (with `token`) and subscribes to `witness`.
    pub async fn on(client: Client, admin: SocketAddr, token: Option<&str>) -> Self {
        Self::on_topic(client, admin, token, "witness").await
    }

    /// Says hello on `client` (with `token`) and subscribes to `topic`.
    pub async fn on_topic(
        client: Client,
        admin: SocketAddr,
        token: Option<&str>,
        topic: &str,
    ) -> Self {
        let (mut client, _) = hello_on(client, token, json!({})).await.welcome();
        client.subscribe(topic).await;
        Self {
            client,
            admin,
            admin_headers: None,
            topic: topic.into(),
            sent: 0,
        }
    }

    pub async fn join(url: &str, admin: SocketAddr, token: Option<&str>) -> Self {
        Self::on(Client::connect(url).await, admin, token).await
    }

    /// Publishes one message through the admin API and asserts it is the next frame.
    pub async fn check(&mut self) {
        self.sent += 1;
        let status = admin_publish(
            self.admin,
            self.admin_headers.as_deref(),
            &self.topic,
            json!({"n": self.sent}),
        )
        .await;
        assert_eq!(status, 200, "admin publish for the witness");
        self.receive(1).await;
    }

    /// Starts publishing `n` messages, one every `every`, in the background: run the attack,
    /// then [`Self::receive`] them.
    pub fn stream(&mut self, n: u64, every: Duration) -> JoinHandle<()> {
        let (admin, headers, topic, first) = (
            self.admin,
            self.admin_headers.clone(),
            self.topic.clone(),
            self.sent + 1,
        );
        self.sent += n;
        tokio::spawn(async move {
            for i in first..first + n {
                let status =
                    admin_publish(admin, headers.as_deref(), &topic, json!({"n": i})).await;
                assert_eq!(status, 200);
                tokio::time::sleep(every).await;
            }
        })
    }

    /// Asserts that the next `n` frames are the witness's next messages, in order and complete.
    pub async fn receive(&mut self, n: u64) {
        let first = self.sent + 1 - n;
        for i in first..=self.sent {
            let m = self.client.next().await;
            assert_eq!(m["type"], "message", "witness got {m}");
            assert_eq!(m["data"]["n"], i, "witness got {m}");
        }
    }
}

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

/// A gateway process on loopback whose stderr (its log, at `rust_log`) goes to `log`. `args`
/// must not set `--listen` or `--admin-listen`.
pub fn start_logged(args: &[&str], rust_log: &str, log: &Path) -> Pod {
    start_exposed("127.0.0.1", args, rust_log, log)
}

/// As [`start_logged`], with the admin port on `admin_host` (e.g. `0.0.0.0`). Ports are picked
/// free and picked again if another test took one in the meantime.
pub fn start_exposed(admin_host: &str, args: &[&str], rust_log: &str, log: &Path) -> Pod {
    for _ in 0..10 {
        let port = test_support::free_port();
        // Free for the admin host itself: a wildcard address collides with more sockets.
        let admin = std::net::TcpListener::bind((admin_host, 0))
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let mut process = test_support::spawn_guarded(
            Command::new(env!("CARGO_BIN_EXE_gateway"))
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .args(["--admin-listen", &format!("{admin_host}:{admin}")])
                .args(super::process::unlimited(args))
                .args(args)
                .env("RUST_LOG", rust_log)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(log).unwrap()),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Pod {
                    process,
                    port,
                    admin,
                };
            }
            if process.wait_timeout(Duration::ZERO).is_some() {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                assert!(
                    text.contains("Address already in use"),
                    "gateway exited: {text}"
                );
                break;
            }
            assert!(Instant::now() < deadline, "gateway did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("no free ports for a gateway after 10 tries");
}

/// A fresh path for a log file in the target's temporary directory.
pub fn log_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "hostile-{name}-{}-{}.log",
        std::process::id(),
        test_support::free_port()
    ))
}

// ---------------------------------------------------------------------------------------------
// Raw WebSocket frames.

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// How a frame's payload length is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Length {
    /// The shortest form, matching the payload.
    Minimal,
    /// The 16-bit form, whatever the payload (non-minimal for short payloads).
    Forced16,
    /// The 64-bit form, whatever the payload.
    Forced64,
    /// The 64-bit form with this value, whatever the payload actually is (a lie).
    Declared(u64),
}

/// One frame, bit by bit.
#[derive(Debug, Clone)]
pub struct Frame {
    pub fin: bool,
    /// RSV1..3 as the low three bits.
    pub rsv: u8,
    pub opcode: u8,
    /// `None`: an unmasked client frame (a protocol violation).
    pub mask: Option<[u8; 4]>,
    pub payload: Vec<u8>,
    pub length: Length,
}

impl Frame {
    /// A well-formed, final, masked frame.
    pub fn new(opcode: u8, payload: impl Into<Vec<u8>>) -> Self {
        Self {
            fin: true,
            rsv: 0,
            opcode,
            mask: Some(rand::random()),
            payload: payload.into(),
            length: Length::Minimal,
        }
    }

    pub fn text(text: impl Into<Vec<u8>>) -> Self {
        Self::new(OP_TEXT, text)
    }

    pub fn fin(mut self, fin: bool) -> Self {
        self.fin = fin;
        self
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.payload.len() + 14);
        out.push(u8::from(self.fin) << 7 | (self.rsv & 0x7) << 4 | (self.opcode & 0x0f));
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let len = self.payload.len() as u64;
        match self.length {
            Length::Minimal if len < 126 => out.push(mask_bit | len as u8),
            Length::Minimal if len <= 0xffff => {
                out.push(mask_bit | 126);
                out.extend((len as u16).to_be_bytes());
            }
            Length::Forced16 => {
                out.push(mask_bit | 126);
                out.extend((len as u16).to_be_bytes());
            }
            Length::Minimal | Length::Forced64 => {
                out.push(mask_bit | 127);
                out.extend(len.to_be_bytes());
            }
            Length::Declared(declared) => {
                out.push(mask_bit | 127);
                out.extend(declared.to_be_bytes());
            }
        }
        match self.mask {
            Some(mask) => {
                out.extend(mask);
                out.extend(
                    self.payload
                        .iter()
                        .enumerate()
                        .map(|(i, b)| b ^ mask[i % 4]),
                );
            }
            None => out.extend(&self.payload),
        }
        out
    }
}

/// What the server sent on a raw connection.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    Text(Value),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    /// A close frame: its code (if any) and its reason.
    Close(Option<u16>, String),
    /// The socket was closed (EOF or reset).
    End,
}

/// A WebSocket client speaking raw bytes.
#[derive(Debug)]
pub struct RawWs {
    pub tcp: TcpStream,
    buf: Vec<u8>,
}

impl RawWs {
    /// Opens `/ws` with a hand-written upgrade request.
    pub async fn connect(addr: SocketAddr) -> Self {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
        let req = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        let end = loop {
            let n = tokio::time::timeout(WAIT, tcp.read(&mut chunk))
                .await
                .expect("upgrade response in time")
                .unwrap();
            assert!(n > 0, "closed during the upgrade");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
        Self {
            tcp,
            buf: buf[end..].to_vec(),
        }
    }

    /// Writes bytes; `false` when the server has already closed the socket.
    pub async fn send(&mut self, bytes: &[u8]) -> bool {
        self.tcp.write_all(bytes).await.is_ok()
    }

    pub async fn send_frame(&mut self, frame: &Frame) -> bool {
        self.send(&frame.encode()).await
    }

    pub async fn send_json(&mut self, v: Value) -> bool {
        self.send_frame(&Frame::text(v.to_string())).await
    }

    async fn fill(&mut self, need: usize, deadline: tokio::time::Instant) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        while self.buf.len() < need {
            match tokio::time::timeout_at(deadline, self.tcp.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return false,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Err(_) => panic!("no frame from the server in time"),
            }
        }
        true
    }

    /// The next frame from the server (whole; the server never fragments).
    pub async fn next(&mut self) -> Incoming {
        let deadline = tokio::time::Instant::now() + WAIT;
        if !self.fill(2, deadline).await {
            return Incoming::End;
        }
        let (b0, b1) = (self.buf[0], self.buf[1]);
        assert_eq!(b1 & 0x80, 0, "the server masked a frame");
        let (len, header) = match b1 & 0x7f {
            126 => {
                if !self.fill(4, deadline).await {
                    return Incoming::End;
                }
                (
                    usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]])),
                    4,
                )
            }
            127 => {
                if !self.fill(10, deadline).await {
                    return Incoming::End;
                }
                let mut l = [0u8; 8];
                l.copy_from_slice(&self.buf[2..10]);
                (usize::try_from(u64::from_be_bytes(l)).unwrap(), 10)
            }
            n => (usize::from(n), 2),
        };
        if !self.fill(header + len, deadline).await {
            return Incoming::End;
        }
        let payload: Vec<u8> = self.buf.drain(..header + len).skip(header).collect();
        match b0 & 0x0f {
            OP_TEXT => Incoming::Text(
                serde_json::from_slice(&payload)
                    .unwrap_or_else(|e| panic!("server text is not JSON ({e})")),
            ),
            OP_BINARY => Incoming::Binary(payload),
            OP_PING => Incoming::Ping(payload),
            OP_PONG => Incoming::Pong(payload),
            OP_CLOSE => {
                if payload.len() >= 2 {
                    Incoming::Close(
                        Some(u16::from_be_bytes([payload[0], payload[1]])),
                        String::from_utf8_lossy(&payload[2..]).into_owned(),
                    )
                } else {
                    Incoming::Close(None, String::new())
                }
            }
            other => panic!("server sent opcode {other}"),
        }
    }

    /// The next frame that is not a server ping.
    pub async fn next_reply(&mut self) -> Incoming {
        loop {
            match self.next().await {
                Incoming::Ping(_) => continue,
                other => return other,
            }
        }
    }
}
