//! A webhook receiver for lifecycle events, on a loopback port in the test process: it checks
//! every batch's `X-Gateway-Signature` with its own HMAC (not the gateway's code), records the
//! events in arrival order, and can be "down" (answering 503 to everything) for a while.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

pub const SECRET: &str = "webhook-secret-for-tests";

#[derive(Default)]
struct Inner {
    /// Every event of every accepted batch, duplicates included, in arrival order.
    events: Mutex<Vec<Value>>,
    up: AtomicBool,
    batches: AtomicU64,
    refused_while_down: AtomicU64,
    bad_signatures: AtomicU64,
}

pub struct Receiver {
    inner: Arc<Inner>,
    pub url: String,
    pub secret_file: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.secret_file);
    }
}

fn valid(headers: &HeaderMap, body: &[u8]) -> bool {
    let Some(given) = headers
        .get("x-gateway-signature")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("sha256="))
        .and_then(|hex| hex::decode(hex).ok())
    else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    mac.verify_slice(&given).is_ok()
}

async fn receive(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    if !valid(&headers, &body) {
        inner.bad_signatures.fetch_add(1, Ordering::Relaxed);
        return StatusCode::UNAUTHORIZED;
    }
    if !inner.up.load(Ordering::Relaxed) {
        inner.refused_while_down.fetch_add(1, Ordering::Relaxed);
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let Ok(batch) = serde_json::from_slice::<Value>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    let Some(events) = batch["events"].as_array() else {
        return StatusCode::BAD_REQUEST;
    };
    inner.batches.fetch_add(1, Ordering::Relaxed);
    inner.events.lock().unwrap().extend(events.iter().cloned());
    StatusCode::NO_CONTENT
}

impl Receiver {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let inner = Arc::new(Inner::default());
        inner.up.store(true, Ordering::Relaxed);
        let app = axum::Router::new()
            .route("/events", axum::routing::post(receive))
            .with_state(inner.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        let secret_file = std::env::temp_dir().join(format!(
            "webhook-{}-{}.secret",
            std::process::id(),
            addr.port()
        ));
        std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
        Self {
            inner,
            url: format!("http://{addr}/events"),
            secret_file,
            task,
        }
    }

    /// Points an in-process gateway at this receiver.
    pub fn configure(&self, c: &mut gateway::Config) {
        c.events.webhook_url = Some(self.url.clone());
        c.events.webhook_secret_file = Some(self.secret_file.clone());
    }

    /// The same as flags of a gateway process.
    pub fn flags(&self) -> Vec<String> {
        vec![
            "--webhook-url".into(),
            self.url.clone(),
            "--webhook-secret-file".into(),
            self.secret_file.display().to_string(),
        ]
    }

    pub fn set_up(&self, up: bool) {
        self.inner.up.store(up, Ordering::Relaxed);
    }

    /// Every event received, duplicates included.
    pub fn received(&self) -> Vec<Value> {
        self.inner.events.lock().unwrap().clone()
    }

    /// Events in first-arrival order, each id once.
    pub fn unique(&self) -> Vec<Value> {
        let mut seen = std::collections::HashSet::new();
        self.received()
            .into_iter()
            .filter(|e| seen.insert(e["id"].as_str().unwrap_or("").to_owned()))
            .collect()
    }

    pub fn refused_while_down(&self) -> u64 {
        self.inner.refused_while_down.load(Ordering::Relaxed)
    }

    pub fn bad_signatures(&self) -> u64 {
        self.inner.bad_signatures.load(Ordering::Relaxed)
    }

    /// Waits (bounded) until `done` holds for the unique events.
    pub async fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let events = self.unique();
            if done(&events) {
                return events;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not within {limit:?}; got {}",
                serde_json::to_string_pretty(&events).unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The unique events of `type` (and with `field` equal to `value`, when given).
pub fn of<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}
