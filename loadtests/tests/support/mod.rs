//! Test harness: in-process gateways (as the gateway's own tests start them), the baseline
//! server on port 0, a fault-injecting WebSocket proxy, and scenario argument parsing.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use clap::{Args, Parser};
use futures_util::{SinkExt, StreamExt};
use gateway::{Config, Listeners};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;

/// A gateway running in this process on loopback ports; stopped when dropped.
pub struct Pod {
    pub public: SocketAddr,
    pub admin: SocketAddr,
    _stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), gateway::GatewayError>>,
}

impl Pod {
    pub async fn start(edit: impl FnOnce(&mut Config)) -> Self {
        let mut c = Config::embedded_default();
        c.listen = "127.0.0.1:0".parse().unwrap();
        c.admin_listen = "127.0.0.1:0".parse().unwrap();
        c.pod_name = Some("pod-0".into());
        c.close_grace = Duration::from_secs(2);
        // Load comes from one address and publishes fast: no abuse limits.
        c.security.unlimited();
        edit(&mut c);
        let listeners = Listeners::bind(&c).await.unwrap();
        let public = listeners.public.local_addr().unwrap();
        let admin = listeners.admin.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(gateway::run(listeners, c, async move {
            let _ = rx.await;
        }));
        Self {
            public,
            admin,
            _stop: tx,
            task,
        }
    }

    /// A pod of a fleet sharing `redis` and `nats`, with fast heartbeats and rebalancing.
    pub async fn in_fleet(
        redis: &str,
        nats: &str,
        name: &str,
        edit: impl FnOnce(&mut Config) + Send + 'static,
    ) -> Self {
        let (r, n, name) = (redis.to_owned(), nats.to_owned(), name.to_owned());
        Self::start(move |c| {
            c.redis_url = Some(r);
            c.nats_url = vec![n];
            c.pod_name = Some(name);
            c.heartbeat_interval = Duration::from_millis(200);
            c.rebalance_interval = Duration::from_millis(300);
            c.rebalance_rate = 200;
            c.topic_resync_interval = Duration::from_millis(500);
            edit(c);
        })
        .await
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.public)
    }

    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The baseline server on a loopback port, for the rest of the test.
pub async fn baseline() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(loadtests::baseline::serve(listener));
    format!("ws://{addr}/ws")
}

/// What the proxy does to the first connection's deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The 3rd message never reaches the client.
    Drop,
    /// The 3rd message reaches the client twice.
    Duplicate,
    /// The 3rd and 4th messages arrive swapped.
    Swap,
}

fn is_delivery(m: &Message) -> bool {
    matches!(m, Message::Text(t) if t.as_str().starts_with(r#"{"type":"message""#))
}

/// A WebSocket proxy to `upstream` that injects `fault` into the first connection it accepts
/// (the scenarios connect subscribers first). Returns its URL.
pub async fn faulty_proxy(upstream: String, fault: Fault) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let first = count.fetch_add(1, Ordering::Relaxed) == 0;
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let Ok(client) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                let Ok((server, _)) = tokio_tungstenite::connect_async(&upstream).await else {
                    return;
                };
                let (mut to_client, mut from_client) = client.split();
                let (mut to_server, mut from_server) = server.split();
                let up = async move {
                    while let Some(Ok(m)) = from_client.next().await {
                        if to_server.send(m).await.is_err() {
                            break;
                        }
                    }
                };
                let down = async move {
                    let (mut n, mut held) = (0, None);
                    while let Some(Ok(m)) = from_server.next().await {
                        if first && is_delivery(&m) {
                            n += 1;
                            match (fault, n) {
                                (Fault::Drop, 3) => continue,
                                (Fault::Duplicate, 3) => {
                                    let _ = to_client.send(m.clone()).await;
                                }
                                (Fault::Swap, 3) => {
                                    held = Some(m);
                                    continue;
                                }
                                (Fault::Swap, 4) => {
                                    let _ = to_client.send(m).await;
                                    if let Some(h) = held.take() {
                                        let _ = to_client.send(h).await;
                                    }
                                    continue;
                                }
                                _ => {}
                            }
                        }
                        if to_client.send(m).await.is_err() {
                            break;
                        }
                    }
                };
                tokio::select! {
                    _ = up => {}
                    _ = down => {}
                }
            });
        }
    });
    format!("ws://{addr}/ws")
}

/// Parses scenario flags as the command line would.
pub fn parse<A: Args>(argv: &[&str]) -> A {
    #[derive(Parser)]
    struct Wrap<A: Args> {
        #[command(flatten)]
        args: A,
    }
    let argv = std::iter::once("wsload").chain(argv.iter().copied());
    Wrap::<A>::try_parse_from(argv).expect("valid flags").args
}
