//! A client that behaves like the SDK: follows close advice, reconnects, resumes with its
//! token and positions, and records every message so tests can check for loss and order.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::net::{IpAddr, SocketAddr};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, client_async, connect_async};

#[derive(Debug, Default, Clone)]
pub struct ClientState {
    /// Every `seq` received on the topic, in arrival order (across connections).
    pub got: Vec<u64>,
    /// The pod of the current connection (empty between connections).
    pub pod: String,
    /// Close codes received, with when.
    pub closes: Vec<(u16, Instant)>,
    /// Seconds from a close to the next `welcome`.
    pub reconnect_secs: Vec<f64>,
    /// `recovered: false` seen on resume.
    pub unrecovered: u32,
    pub connected: bool,
}

pub struct ResumingClient {
    pub state: Arc<Mutex<ClientState>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl ResumingClient {
    pub fn spawn(url: String, topic: &'static str) -> Self {
        Self::spawn_from(url, topic, Vec::new())
    }

    /// As [`spawn`](Self::spawn), with connection attempt `n` made from `sources[n]` (the last
    /// one for every later attempt): a client that first came through one load balancer pod
    /// and reconnects through another.
    pub fn spawn_from(url: String, topic: &'static str, sources: Vec<IpAddr>) -> Self {
        let state = Arc::new(Mutex::new(ClientState::default()));
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(url, topic, sources, state.clone(), stop_rx));
        Self { state, stop, task }
    }

    pub fn snapshot(&self) -> ClientState {
        self.state.lock().unwrap().clone()
    }

    pub async fn stop(self) -> ClientState {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
        self.state.lock().unwrap().clone()
    }
}

/// Connects to `url` from `source` (any local address when `None`).
async fn connect(
    url: &str,
    source: Option<IpAddr>,
) -> Result<WebSocketStream<MaybeTlsStream<TcpStream>>, tungstenite::Error> {
    let Some(source) = source else {
        return Ok(connect_async(url).await?.0);
    };
    let request = url.into_client_request()?;
    let host = request
        .uri()
        .authority()
        .expect("host:port")
        .as_str()
        .to_owned();
    let to: SocketAddr = host.parse().expect("a loopback address");
    let socket = TcpSocket::new_v4().map_err(tungstenite::Error::Io)?;
    socket
        .bind(SocketAddr::new(source, 0))
        .map_err(tungstenite::Error::Io)?;
    let tcp = socket.connect(to).await.map_err(tungstenite::Error::Io)?;
    Ok(client_async(request, MaybeTlsStream::Plain(tcp)).await?.0)
}

async fn run(
    url: String,
    topic: &'static str,
    sources: Vec<IpAddr>,
    state: Arc<Mutex<ClientState>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut resume: Option<Value> = None;
    let mut epoch = Value::Null;
    let mut closed_at: Option<Instant> = None;
    let mut wait = Duration::ZERO;
    let mut attempt = 0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
        wait = Duration::from_millis(100);
        let source = sources.get(attempt.min(sources.len().max(1) - 1)).copied();
        attempt += 1;
        let Ok(Ok(mut ws)) =
            tokio::time::timeout(Duration::from_secs(5), connect(&url, source)).await
        else {
            continue;
        };
        let last = state.lock().unwrap().got.last().copied();
        let mut hello = json!({"type": "hello"});
        if let Some(r) = &resume {
            hello["resume"] = r.clone();
            if let Some(seq) = last {
                hello["positions"] = json!({topic: {"seq": seq, "epoch": epoch}});
            }
        }
        if ws.send(Message::text(hello.to_string())).await.is_err() {
            continue;
        }
        loop {
            let frame = tokio::select! {
                f = ws.next() => f,
                _ = stop.changed() => {
                    let _ = ws.close(None).await;
                    return;
                }
            };
            let Some(Ok(frame)) = frame else {
                state.lock().unwrap().connected = false;
                break;
            };
            match frame {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    match v["type"].as_str() {
                        Some("welcome") => {
                            let resumed = v["resumed"] == true;
                            {
                                let mut s = state.lock().unwrap();
                                s.pod = v["pod"].as_str().unwrap_or_default().to_owned();
                                s.connected = true;
                                if let Some(at) = closed_at.take() {
                                    s.reconnect_secs.push(at.elapsed().as_secs_f64());
                                }
                                if resumed && v["topics"][topic]["recovered"] == false {
                                    s.unrecovered += 1;
                                }
                            }
                            resume = Some(v["resume"].clone());
                            if !resumed {
                                let sub = json!({"type": "subscribe", "topic": topic});
                                let _ = ws.send(Message::text(sub.to_string())).await;
                            }
                        }
                        Some("subscribed") => epoch = v["epoch"].clone(),
                        Some("message") => {
                            if let Some(e) = v.get("epoch") {
                                epoch = e.clone();
                            }
                            state.lock().unwrap().got.push(v["seq"].as_u64().unwrap());
                        }
                        _ => {}
                    }
                }
                Message::Close(c) => {
                    let advice = {
                        let mut s = state.lock().unwrap();
                        s.connected = false;
                        s.pod.clear();
                        c.map(|c| {
                            s.closes.push((c.code.into(), Instant::now()));
                            serde_json::from_str::<Value>(c.reason.as_str()).unwrap_or(Value::Null)
                        })
                    };
                    closed_at = Some(Instant::now());
                    // Complete the close handshake, as browsers do.
                    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
                    if let Some(advice) = advice {
                        if advice["reconnect"] == false {
                            return;
                        }
                        wait = Duration::from_millis(advice["after_ms"].as_u64().unwrap_or(100));
                    }
                    break;
                }
                _ => {}
            }
        }
    }
}

/// Asserts `got` is exactly `first..=last` with no gap, duplicate or reordering.
pub fn assert_complete(got: &[u64], last: u64) {
    let first = *got.first().expect("received something");
    let expected: Vec<u64> = (first..=last).collect();
    assert_eq!(got, &expected[..], "gap, duplicate or reorder");
}
