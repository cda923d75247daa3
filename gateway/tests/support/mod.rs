//! Test harness: real gateways on port 0 and tokio-tungstenite clients.
#![allow(dead_code)]

pub mod backend;
pub mod faults;
pub mod faults_data;
pub mod hostile;
pub mod lifecycle;
pub mod process;
pub mod resuming;
pub mod scale;
pub mod webhook;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use gateway::{Config, Listeners};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

pub const WAIT: Duration = Duration::from_secs(10);

/// A gateway running in this process on loopback ports.
pub struct TestGateway {
    pub public: SocketAddr,
    /// `--proxy-listen`, when the config sets it.
    pub proxy: Option<SocketAddr>,
    pub admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    pub task: Option<JoinHandle<Result<(), gateway::GatewayError>>>,
}

pub fn config() -> Config {
    let mut c = Config::embedded_default();
    c.listen = "127.0.0.1:0".parse().unwrap();
    c.admin_listen = "127.0.0.1:0".parse().unwrap();
    c.pod_name = Some("test-pod".into());
    c.close_grace = Duration::from_secs(2);
    // Backend outages in tests are seconds long: readiness follows them within a fraction.
    c.backend_check_interval = Duration::from_millis(100);
    c.unready_after_backend_down = Duration::from_millis(300);
    // Tests connect many clients from one address and publish fast; the abuse limits have
    // tests of their own.
    c.security.unlimited();
    c
}

impl TestGateway {
    pub async fn start() -> Self {
        Self::with(|_| {}).await
    }

    /// A pod named `name` of a fleet on `redis` and `nats`, with short store timeouts and a
    /// quick drain (for the presence tests' drains), then `edit`.
    pub async fn fleet_pod(
        redis: &test_support::RedisServer,
        nats: &test_support::NatsServer,
        name: &str,
        edit: impl FnOnce(&mut Config),
    ) -> Self {
        let (r, n, name) = (redis.url(), nats.url(), name.to_owned());
        Self::with(move |c| {
            c.redis_url = Some(r);
            c.nats_url = vec![n];
            c.pod_name = Some(name);
            c.store_timeout = Duration::from_millis(1_000);
            c.drain_rate = 50;
            c.drain_window = Duration::from_secs(2);
            edit(c);
        })
        .await
    }

    pub async fn with(edit: impl FnOnce(&mut Config)) -> Self {
        let mut c = config();
        edit(&mut c);
        let listeners = Listeners {
            public: TcpListener::bind(c.listen).await.unwrap(),
            proxy: match c.proxy_listen {
                Some(a) => Some(TcpListener::bind(a).await.unwrap()),
                None => None,
            },
            admin: TcpListener::bind(c.admin_listen).await.unwrap(),
            agent: match c.agent_listen {
                Some(a) => Some(TcpListener::bind(a).await.unwrap()),
                None => None,
            },
        };
        let public = listeners.public.local_addr().unwrap();
        let proxy = listeners.proxy.as_ref().map(|l| l.local_addr().unwrap());
        let admin = listeners.admin.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(gateway::run(listeners, c, async move {
            let _ = rx.await;
        }));
        Self {
            public,
            proxy,
            admin,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Waits until `/readyz` answers 200 (store and backplane connected).
    pub async fn ready(&self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while http(self.public, "GET", "/readyz", None, None).await.0 != 200 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "gateway not ready in time"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.public)
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.ws_url()).await
    }

    /// A client that said hello and got its welcome.
    pub async fn hello(&self) -> (Client, Value) {
        let mut c = self.client().await;
        c.send(json!({"type": "hello"})).await;
        let welcome = c.expect("welcome").await;
        (c, welcome)
    }

    /// Starts the shutdown (SIGTERM) without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Starts the shutdown (SIGTERM) and waits for `run` to return.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("gateway stops in time")
                .unwrap()
                .unwrap();
        }
    }

    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        http(self.admin, "GET", path, None, None).await
    }

    pub async fn admin_post(&self, path: &str, body: &str) -> (u16, String) {
        http(self.admin, "POST", path, Some(body), None).await
    }

    pub async fn publish_api(&self, topic: &str, data: Value) -> Value {
        let (status, body) = self
            .admin_post(
                "/api/publish",
                &json!({"topic": topic, "data": data}).to_string(),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Polls `GET /readyz` on `public` until it answers `status`; panics after [`WAIT`].
pub async fn wait_readyz(public: SocketAddr, status: u16) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (got, body) = http(public, "GET", "/readyz", None, None).await;
        if got == status {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz still {got} {body}, expected {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A minimal HTTP/1.1 request over a fresh TCP connection: returns status and body.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: Option<&str>,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}\r\n{body}",
        body.len(),
        headers.unwrap_or("")
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, dechunk(&body))
}

/// Undoes chunked transfer encoding when present (axum streams some bodies).
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    loop {
        let Some((size, after)) = rest.split_once("\r\n") else {
            return body.to_string();
        };
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            return body.to_string();
        };
        if n == 0 {
            return out;
        }
        if after.len() < n {
            return body.to_string();
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// How a client saw its connection end.
#[derive(Debug, PartialEq)]
pub struct Closed {
    pub code: u16,
    pub reason: Value,
}

impl Client {
    pub async fn connect(url: &str) -> Self {
        let (ws, _) = connect_async(url).await.expect("connect");
        Self { ws }
    }

    pub async fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.unwrap();
    }

    pub async fn send_raw(&mut self, m: Message) {
        self.ws.send(m).await.unwrap();
    }

    /// The next text frame as JSON (pings are answered by tungstenite).
    pub async fn next(&mut self) -> Value {
        loop {
            let m = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame in time")
                .expect("stream open")
                .expect("frame ok");
            match m {
                Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
                Message::Close(c) => panic!("closed unexpectedly: {c:?}"),
                _ => continue,
            }
        }
    }

    /// The next frame, which must be of `kind`.
    pub async fn expect(&mut self, kind: &str) -> Value {
        let v = self.next().await;
        assert_eq!(v["type"], kind, "expected {kind}, got {v}");
        v
    }

    /// Skips frames until the close frame; returns its code and parsed reason.
    pub async fn closed(&mut self) -> Closed {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(20), self.ws.next())
                .await
                .expect("close in time");
            match m {
                Some(Ok(Message::Close(Some(c)))) => {
                    return Closed {
                        code: c.code.into(),
                        reason: serde_json::from_str(c.reason.as_str()).unwrap_or(Value::Null),
                    };
                }
                Some(Ok(Message::Close(None))) | None => panic!("closed without a close frame"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("error before close frame: {e}"),
            }
        }
    }

    /// Collects message frames until the close frame; returns both.
    pub async fn messages_until_close(&mut self) -> (Vec<Value>, Closed) {
        let mut out = Vec::new();
        loop {
            let m = tokio::time::timeout(Duration::from_secs(20), self.ws.next())
                .await
                .expect("a frame in time");
            match m {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    assert_eq!(v["type"], "message", "{v}");
                    out.push(v);
                }
                Some(Ok(Message::Close(Some(c)))) => {
                    let closed = Closed {
                        code: c.code.into(),
                        reason: serde_json::from_str(c.reason.as_str()).unwrap_or(Value::Null),
                    };
                    return (out, closed);
                }
                Some(Ok(Message::Close(None))) | None => panic!("closed without a close frame"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("error before close frame: {e}"),
            }
        }
    }

    /// Closes cleanly: sends a close frame and reads until the server's close ends the stream
    /// (the handshake completes, so the server knows what the client read).
    pub async fn leave(&mut self) {
        self.ws.close(None).await.unwrap();
        let _ = tokio::time::timeout(WAIT, async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }

    /// Subscribes and returns the `subscribed` frame.
    pub async fn subscribe(&mut self, topic: &str) -> Value {
        self.send(json!({"type": "subscribe", "topic": topic}))
            .await;
        self.expect("subscribed").await
    }

    /// Publishes and returns the assigned seq (skipping messages that arrive meanwhile).
    pub async fn publish(&mut self, topic: &str, data: Value) -> u64 {
        self.send(json!({"type": "publish", "topic": topic, "data": data, "ref": 99}))
            .await;
        loop {
            let v = self.next().await;
            if v["type"] == "published" {
                return v["seq"].as_u64().unwrap();
            }
        }
    }

    /// Collects `n` message frames of `topic`, asserting nothing else arrives in between.
    pub async fn messages(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::new();
        while out.len() < n {
            let v = self.next().await;
            assert_eq!(v["type"], "message", "{v}");
            out.push(v);
        }
        out
    }

    /// Asserts that no text frame arrives within `d` (pings are answered meanwhile).
    pub async fn silent_for(&mut self, d: Duration) {
        let deadline = tokio::time::Instant::now() + d;
        while let Ok(frame) = tokio::time::timeout_at(deadline, self.ws.next()).await {
            match frame {
                Some(Ok(Message::Text(t))) => panic!("unexpected frame: {t}"),
                Some(Ok(Message::Close(c))) => panic!("unexpected close: {c:?}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("connection failed: {e}"),
                None => panic!("connection ended"),
            }
        }
    }
}

pub fn seqs(msgs: &[Value]) -> Vec<u64> {
    msgs.iter().map(|m| m["seq"].as_u64().unwrap()).collect()
}
