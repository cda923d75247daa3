//! What the lifecycle-event tests share: pods with events on, users' clients, and reading
//! what the webhook receiver got.

use std::time::Duration;

use futures_util::SinkExt;
use serde_json::{Value, json};
use test_support::{NatsServer, RedisServer};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::hostile::{granting, hs256};
use super::webhook::Receiver;
use super::{Client, TestGateway};

/// Generous bound for anything awaited: a loaded machine, never a measure of speed.
pub const LIMIT: Duration = Duration::from_secs(60);

pub fn events_on(
    c: &mut gateway::Config,
    rx: &Receiver,
    redis: &RedisServer,
    nats: &NatsServer,
    pod: &str,
) {
    rx.configure(c);
    c.events.webhook_timeout = Duration::from_secs(1);
    c.events.webhook_retry_max = Duration::from_millis(500);
    c.redis_url = Some(redis.url());
    c.nats_url = vec![nats.url()];
    c.pod_name = Some(pod.into());
    c.heartbeat_interval = Duration::from_millis(200);
    c.store_timeout = Duration::from_secs(1);
    c.drain_rate = 50;
    c.drain_window = Duration::from_secs(1);
    c.security.auth_mode = gateway::auth::AuthMode::Optional;
    c.security.jwt_secret_file = Some(super::hostile::secret_file());
}

pub fn token(user: &str) -> String {
    hs256(&granting(user, &["room.*"], &["room.*"]))
}

/// A client of `user` (granted `room.*`) that said hello.
pub async fn hello_as(gw: &TestGateway, user: &str) -> (Client, Value) {
    let mut c = gw.client().await;
    c.send(json!({"type": "hello", "token": token(user)})).await;
    let welcome = c.expect("welcome").await;
    (c, welcome)
}

/// Closes for good: the client's own close frame with 1000.
pub async fn goodbye(mut c: Client) {
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    };
    c.ws.send(Message::Close(Some(frame))).await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), c.closed()).await;
}

pub fn session_of(welcome: &Value) -> String {
    welcome["session"].as_str().unwrap().to_owned()
}

/// `(type, why)` of the events of `session`, in first-arrival order.
pub fn story(events: &[Value], session: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["session"] == session)
        .map(|e| match e["data"]["why"].as_str() {
            Some(why) => format!("{}:{why}", e["type"].as_str().unwrap()),
            None => e["type"].as_str().unwrap().to_owned(),
        })
        .collect()
}

pub fn topic_events<'a>(events: &'a [Value], topic: &str) -> Vec<&'a str> {
    events
        .iter()
        .filter(|e| e["topic"] == topic && e["type"].as_str().unwrap().starts_with("topic."))
        .map(|e| e["type"].as_str().unwrap())
        .collect()
}

pub async fn wait_metric(admin: std::net::SocketAddr, name: &str, value: f64) {
    for _ in 0..600 {
        if super::faults_data::metric(admin, name).await == value {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{name} never {value}");
}

pub async fn wait_metric_above(admin: std::net::SocketAddr, name: &str, value: f64) {
    for _ in 0..600 {
        if super::faults_data::metric(admin, name).await > value {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{name} never above {value}");
}
