//! Helpers for the data-path fault tests (`faults_data.rs`): cluster pods in this process,
//! background readers that record what a client receives, abrupt socket drops, and reading the
//! session record and metrics a pod exposes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use test_support::RedisServer;
use tokio::task::JoinHandle;
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::Message;

use super::{Client, TestGateway, http};

/// A gateway in this process in cluster mode (Redis store, NATS backplane), rebalancing off so
/// no connection of a test is shed because the test's pods are unevenly loaded. Returns once it
/// is ready: connected to both (it starts without waiting for NATS, and what it publishes before
/// it is connected reaches other pods only through their resync).
pub async fn cluster_pod(
    redis_url: &str,
    nats_url: &str,
    name: &str,
    edit: impl FnOnce(&mut gateway::Config),
) -> TestGateway {
    let (r, n, pod) = (redis_url.to_owned(), nats_url.to_owned(), name.to_owned());
    let gw = TestGateway::with(move |c| {
        c.redis_url = Some(r);
        c.nats_url = vec![n];
        c.pod_name = Some(pod);
        c.rebalance_rate = 0;
        c.topic_resync_interval = Duration::from_millis(500);
        c.store_timeout = Duration::from_secs(2);
        edit(c);
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while http(gw.public, "GET", "/readyz", None, None).await.0 != 200 {
        assert!(Instant::now() < deadline, "pod {name} did not get ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gw
}

/// Polls `check` every 20 ms until it holds; panics after `limit`.
pub async fn eventually(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Everything a [`Reader`] saw.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// `seq`s of `message` frames per topic, in arrival order.
    pub seqs: HashMap<String, Vec<u64>>,
    /// Other text frames (by `type`).
    pub other: Vec<Value>,
    /// The close frame, if one came: code and parsed reason.
    pub closed: Option<(u16, Value)>,
    /// The stream ended (after a close frame, an error or EOF).
    pub ended: bool,
}

impl Seen {
    pub fn count(&self, topic: &str) -> usize {
        self.seqs.get(topic).map_or(0, Vec::len)
    }
}

/// A client read continuously by a task of its own, recording what arrives.
pub struct Reader {
    pub seen: Arc<Mutex<Seen>>,
    task: JoinHandle<()>,
}

impl Reader {
    pub fn spawn(mut client: Client) -> Self {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let task = tokio::spawn({
            let seen = seen.clone();
            async move {
                while let Some(frame) = client.ws.next().await {
                    let Ok(frame) = frame else { break };
                    match frame {
                        Message::Text(t) => {
                            let v: Value = serde_json::from_str(t.as_str()).unwrap();
                            let mut s = seen.lock().unwrap();
                            if v["type"] == "message" {
                                let topic = v["topic"].as_str().unwrap().to_owned();
                                s.seqs
                                    .entry(topic)
                                    .or_default()
                                    .push(v["seq"].as_u64().unwrap());
                            } else {
                                s.other.push(v);
                            }
                        }
                        Message::Close(c) => {
                            seen.lock().unwrap().closed = Some(c.map_or((0, Value::Null), |c| {
                                let reason =
                                    serde_json::from_str(c.reason.as_str()).unwrap_or(Value::Null);
                                (c.code.into(), reason)
                            }));
                            break;
                        }
                        _ => {}
                    }
                }
                seen.lock().unwrap().ended = true;
            }
        });
        Self { seen, task }
    }

    pub fn snapshot(&self) -> Seen {
        self.seen.lock().unwrap().clone()
    }

    /// Waits (at most `limit`) until `done` holds for what was seen; returns it.
    pub async fn wait(&self, what: &str, limit: Duration, done: impl Fn(&Seen) -> bool) -> Seen {
        let deadline = Instant::now() + limit;
        loop {
            let s = self.snapshot();
            if done(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; seen so far: {} topics, closed {:?}, ended {}",
                s.seqs.len(),
                s.closed,
                s.ended
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A WebSocket client whose socket receive buffer is fixed at about `bytes` (no autotuning),
/// so how much a client that stops reading leaves in flight does not depend on the machine.
pub async fn connect_with_small_buffer(gateway: SocketAddr, bytes: u32) -> Client {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(bytes).unwrap();
    let stream = socket.connect(gateway).await.unwrap();
    let url = format!("ws://{gateway}/ws");
    let (ws, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream))
        .await
        .expect("websocket handshake");
    Client { ws }
}

/// A client subscribed to `topics` after its welcome.
pub async fn subscriber(url: &str, topics: &[&str]) -> Client {
    let mut c = Client::connect(url).await;
    c.send(json!({"type": "hello"})).await;
    c.expect("welcome").await;
    for t in topics {
        c.subscribe(t).await;
    }
    c
}

/// Closes the client's TCP socket with a reset (zero linger), no close frame: what the server
/// sees when a client crashes or its network drops. Whatever the client had not read is lost.
pub fn drop_abruptly(client: Client) {
    if let MaybeTlsStream::Plain(tcp) = client.ws.get_ref() {
        tcp.set_zero_linger().expect("set zero linger");
    }
    drop(client);
}

/// Publishes `n` messages to `topic` over one WebSocket, pipelined in batches of 100 (reading
/// the acks of each batch, so they never pile up unread), and returns the assigned seqs.
pub async fn publish_many(
    client: &mut Client,
    topic: &str,
    n: usize,
    data: impl Fn(usize) -> Value,
) -> Vec<u64> {
    let mut seqs = Vec::with_capacity(n);
    for batch in (0..n).collect::<Vec<_>>().chunks(100) {
        for &i in batch {
            client
                .send(json!({"type": "publish", "topic": topic, "data": data(i)}))
                .await;
        }
        let until = seqs.len() + batch.len();
        while seqs.len() < until {
            let v = client.next().await;
            match v["type"].as_str() {
                Some("published") => seqs.push(v["seq"].as_u64().unwrap()),
                Some("message") => {}
                _ => panic!("unexpected frame while publishing: {v}"),
            }
        }
    }
    seqs
}

/// `POST /api/publish` on the admin listener at `admin`; returns the assigned seq.
pub async fn api_publish(admin: SocketAddr, topic: &str, data: &Value) -> u64 {
    let body = json!({"topic": topic, "data": data}).to_string();
    let (status, reply) = http(admin, "POST", "/api/publish", Some(&body), None).await;
    assert_eq!(status, 200, "{reply}");
    serde_json::from_str::<Value>(&reply).unwrap()["seq"]
        .as_u64()
        .unwrap()
}

/// One sample (a counter or gauge without labels) from the pod's `/metrics`.
pub async fn metric(admin: SocketAddr, name: &str) -> f64 {
    let (status, text) = http(admin, "GET", "/metrics", None, None).await;
    assert_eq!(status, 200, "{text}");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name}"))
}

/// The session's hash in Redis: the saved record (`r`), generation (`g`) and owner pod (`o`).
pub struct StoredSession {
    pub record: Value,
    pub generation: u64,
    pub owner: String,
}

impl StoredSession {
    pub fn read(redis: &RedisServer, session: &str) -> Self {
        let key = format!("gw:session:{session}");
        let record = redis.cmd(&["HGET", &key, "r"]);
        Self {
            record: serde_json::from_str(&record).unwrap_or(Value::Null),
            generation: redis.cmd(&["HGET", &key, "g"]).parse().unwrap_or(0),
            owner: redis.cmd(&["HGET", &key, "o"]),
        }
    }

    /// The saved position's seq for `topic`.
    pub fn seq(&self, topic: &str) -> Option<u64> {
        self.record["subscriptions"][topic]["seq"].as_u64()
    }
}
