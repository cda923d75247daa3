//! `gateway client`: a small terminal client, to try a gateway in a minute.
//!
//! It says `hello`, subscribes to the given topics, prints every frame it receives as one JSON
//! line, and publishes each line typed on stdin: `TOPIC JSON` (e.g. `chat {"text":"hi"}`), or
//! plain text, which is sent as a JSON string to the first subscribed topic.

use clap::Args;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Gateway WebSocket URL.
    #[arg(long, env = "GATEWAY_URL", default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,
    /// Topics to subscribe to (repeat or comma-separate).
    #[arg(long, short, value_delimiter = ',')]
    pub subscribe: Vec<String>,
    /// A JWT for `hello`, when the gateway requires one.
    #[arg(long, env = "GATEWAY_CLIENT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("websocket: {0}")]
    Ws(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("stdin: {0}")]
    Io(#[from] std::io::Error),
}

/// Runs the client until the server closes or stdin ends.
pub async fn run(args: ClientArgs) -> Result<(), ClientError> {
    let (ws, _) = tokio_tungstenite::connect_async(args.url.as_str()).await?;
    let (mut tx, mut rx) = ws.split();
    let mut hello = serde_json::json!({"type": "hello"});
    if let Some(token) = &args.token {
        hello["token"] = token.clone().into();
    }
    tx.send(Message::text(hello.to_string())).await?;
    for (i, topic) in args.subscribe.iter().enumerate() {
        let frame = serde_json::json!({"type": "subscribe", "topic": topic, "ref": i + 1});
        tx.send(Message::text(frame.to_string())).await?;
    }
    let default_topic = args.subscribe.first().cloned();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut next_ref = 1_000u64;
    let mut stdin_open = true;
    loop {
        tokio::select! {
            frame = rx.next() => match frame {
                Some(Ok(Message::Text(text))) => println!("{text}"),
                Some(Ok(Message::Close(close))) => {
                    if let Some(c) = close {
                        println!("{{\"closed\":{},\"reason\":{:?}}}", u16::from(c.code), c.reason.as_str());
                    }
                    return Ok(());
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => return Ok(()),
            },
            line = lines.next_line(), if stdin_open => match line? {
                None => stdin_open = false,
                Some(line) if line.trim().is_empty() => {}
                Some(line) => {
                    next_ref += 1;
                    if let Some(frame) = publish_frame(&line, default_topic.as_deref(), next_ref) {
                        tx.send(Message::text(frame)).await?;
                    } else {
                        eprintln!("type `TOPIC JSON`, or subscribe to a topic to send plain text");
                    }
                }
            },
        }
    }
}

/// `TOPIC JSON` publishes JSON to TOPIC; anything else is a string for the default topic.
fn publish_frame(line: &str, default_topic: Option<&str>, reference: u64) -> Option<String> {
    let line = line.trim();
    let (topic, data) = match line.split_once(' ') {
        Some((topic, rest)) if serde_json::from_str::<serde_json::Value>(rest).is_ok() => {
            (topic.to_owned(), serde_json::from_str(rest).ok()?)
        }
        _ => (
            default_topic?.to_owned(),
            serde_json::Value::String(line.to_owned()),
        ),
    };
    Some(
        serde_json::json!({"type": "publish", "topic": topic, "data": data, "ref": reference})
            .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_become_publishes() {
        let f = publish_frame(r#"chat {"a":1}"#, None, 3).unwrap();
        assert!(f.contains(r#""topic":"chat""#) && f.contains(r#""data":{"a":1}"#));
        let f = publish_frame("hello there", Some("room"), 4).unwrap();
        assert!(f.contains(r#""topic":"room""#) && f.contains(r#""data":"hello there""#));
        assert!(publish_frame("hello there", None, 5).is_none());
    }
}
