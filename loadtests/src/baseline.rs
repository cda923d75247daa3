//! `wsload baseline-server`: the raw tokio-tungstenite broadcast server every figure is
//! compared with.
//!
//! It does the least a pub/sub server can: a client sends `sub <topic>` (answered `ok`); any
//! other text frame `<topic> <payload>` is broadcast, unchanged and shared (one allocation per
//! message, not per subscriber), to that topic's subscribers by the topic's fan-out task. No JSON, no sessions, no history,
//! no backplane. Delivery works like the gateway's so the comparison is fair: each connection
//! has one task and a bounded queue (a full queue drops the subscriber, as the gateway's 1013
//! does), and the task feeds every queued frame (up to a batch) and flushes once. It answers a
//! client's close frame, as the gateway does and RFC 6455 requires.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Frames written per flush at most (the gateway's batch bound).
const MAX_BATCH: usize = 256;
/// Queued frames per subscriber before it counts as too slow (the gateway's default).
const QUEUE: usize = 1024;

type Subscribers = HashMap<u64, mpsc::Sender<Utf8Bytes>>;

#[derive(Debug, Default)]
struct State {
    topics: RwLock<HashMap<String, Subscribers>>,
    /// One fan-out task per published topic, fed by the publishers' connections (as the
    /// gateway's hub has one task per topic): a publisher's reads never wait for a fan-out.
    feeds: Mutex<HashMap<String, mpsc::UnboundedSender<Utf8Bytes>>>,
    next_id: AtomicU64,
}

/// Serves until the process ends (or the returned future is dropped).
pub async fn serve(listener: TcpListener) -> anyhow::Result<()> {
    let state = Arc::new(State::default());
    loop {
        let (stream, peer) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(stream, peer, state.clone()));
    }
}

/// Binds `addr` (loopback only) and serves.
pub async fn run(addr: SocketAddr) -> anyhow::Result<()> {
    anyhow::ensure!(
        crate::net::loopback_ip(&addr.ip().to_string()).is_some(),
        "baseline-server listens on loopback only"
    );
    let listener = TcpListener::bind(addr).await?;
    eprintln!("baseline-server listening on {}", listener.local_addr()?);
    serve(listener).await
}

async fn connection(stream: TcpStream, _peer: SocketAddr, state: Arc<State>) {
    // The same buffer sizes as the gateway's defaults.
    let config = WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(32 * 1024)
        .max_write_buffer_size(32 * 1024 + 64 * 1024 + 1024)
        .max_message_size(Some(64 * 1024));
    let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await else {
        return;
    };
    let id = state.next_id.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::channel::<Utf8Bytes>(QUEUE);
    let mut subscribed: Vec<String> = Vec::new();
    loop {
        tokio::select! {
            Some(first) = rx.recv() => {
                let mut next = Some(first);
                let mut written = 0;
                let mut failed = false;
                while let Some(frame) = next.take() {
                    if ws.feed(Message::Text(frame)).await.is_err() {
                        failed = true;
                        break;
                    }
                    written += 1;
                    if written < MAX_BATCH {
                        next = rx.try_recv().ok();
                    }
                }
                if failed || ws.flush().await.is_err() {
                    break;
                }
            }
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    if let Some(topic) = text.as_str().strip_prefix("sub ") {
                        state
                            .topics
                            .write()
                            .expect("topics lock")
                            .entry(topic.to_owned())
                            .or_default()
                            .insert(id, tx.clone());
                        subscribed.push(topic.to_owned());
                        if ws.send(Message::text("ok")).await.is_err() {
                            break;
                        }
                    } else if let Some((topic, _)) = text.as_str().split_once(' ') {
                        feed(&state, topic, text.clone());
                    }
                }
                Some(Ok(Message::Close(_))) => {
                    // tungstenite queued the reply when it read the close; send it, as RFC 6455
                    // asks of a server (and as the gateway does).
                    let _ = ws.flush().await;
                    break;
                }
                Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
        }
    }
    let mut topics = state.topics.write().expect("topics lock");
    for topic in subscribed {
        if let Some(subs) = topics.get_mut(&topic) {
            subs.remove(&id);
            if subs.is_empty() {
                topics.remove(&topic);
            }
        }
    }
}

/// Hands `frame` to `topic`'s fan-out task, starting it on the topic's first message.
fn feed(state: &Arc<State>, topic: &str, frame: Utf8Bytes) {
    let mut feeds = state.feeds.lock().expect("feeds lock");
    let tx = feeds.entry(topic.to_owned()).or_insert_with(|| {
        let (tx, mut rx) = mpsc::unbounded_channel::<Utf8Bytes>();
        let (state, topic) = (state.clone(), topic.to_owned());
        tokio::spawn(async move {
            while let Some(frame) = rx.recv().await {
                broadcast(&state, &topic, &frame);
            }
        });
        tx
    });
    let _ = tx.send(frame);
}

fn broadcast(state: &State, topic: &str, frame: &Utf8Bytes) {
    let topics = state.topics.read().expect("topics lock");
    let Some(subs) = topics.get(topic) else {
        return;
    };
    for tx in subs.values() {
        // A full queue: this subscriber misses the frame (the gateway would close it with
        // 1013); the load generator then reports the loss.
        let _ = tx.try_send(frame.clone());
    }
}
