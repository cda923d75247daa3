//! Saying hello and reporting how it ended (welcome, error or close), and publishing through
//! the admin API.

use std::net::SocketAddr;

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{Client, Closed, WAIT, http};

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
