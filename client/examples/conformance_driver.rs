//! The conformance driver of the Rust client (see clients/conformance/README.md): reads commands
//! as JSON lines on stdin, prints the client's events as JSON lines on stdout.

use std::time::Duration;

use futures_util::StreamExt;
use gateway_client::{Client, ClientConfig, Event, Events, Position, PublishOptions};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Prints an event with the driver's monotonic clock (`at_ms`): the runner's checks on waits
/// use it.
fn emit(mut v: Value) {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(std::time::Instant::now);
    v["at_ms"] = json!(start.elapsed().as_secs_f64() * 1000.0);
    println!("{v}");
}

fn position(p: &Position) -> Value {
    json!({"seq": p.seq, "epoch": p.epoch})
}

fn event_json(event: &Event) -> Option<Value> {
    Some(match event {
        Event::Connected {
            session,
            pod,
            resumed,
            ..
        } => json!({"event": "connected", "session": session, "pod": pod, "resumed": resumed}),
        Event::Subscribed { topic, position: p } => {
            json!({"event": "subscribed", "topic": topic, "position": position(p)})
        }
        Event::Unsubscribed { topic, reason } => {
            json!({"event": "unsubscribed", "topic": topic, "reason": reason})
        }
        Event::Message(m) => {
            let data: Value = serde_json::from_str(m.data.get()).unwrap_or(Value::Null);
            json!({"event": "message", "topic": m.topic, "seq": m.seq, "epoch": m.epoch, "data": data})
        }
        Event::Gap(g) => json!({
            "event": "gap", "topic": g.topic, "reason": g.reason.as_str(),
            "from": g.from.as_ref().map(position), "to": position(&g.to),
        }),
        Event::Duplicate { topic, seq } => {
            json!({"event": "duplicate", "topic": topic, "seq": seq})
        }
        Event::Disconnected { code, advice, .. } => json!({
            "event": "disconnected", "code": code,
            "error": advice.as_ref().and_then(|a| a.error.clone()),
            "after_ms": advice.as_ref().and_then(|a| a.after_ms),
        }),
        Event::Reconnecting { attempt, delay } => {
            json!({"event": "reconnecting", "attempt": attempt, "delay_ms": delay.as_millis() as u64})
        }
        Event::Refreshed { exp } => json!({"event": "refreshed", "exp": exp}),
        // Not part of the conformance scenarios (yet).
        Event::Presence(_) | Event::PresenceList { .. } => return None,
        Event::Error(e) => json!({"event": "error", "code": e.code(), "message": e.to_string()}),
        Event::Closed { error: Some(e) } => json!({"event": "stopped", "error": e.to_string()}),
        Event::Closed { error: None } => return None,
    })
}

fn config(cmd: &Value) -> ClientConfig {
    let urls: Vec<String> = cmd["urls"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|u| u.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let ms = |key: &str, default: u64| {
        Duration::from_millis(cmd["backoff"][key].as_u64().unwrap_or(default))
    };
    let mut config = ClientConfig::new(urls).backoff(ms("initial_ms", 500), ms("max_ms", 30_000));
    config.ping_interval = None;
    if !cmd["auto_refresh"].as_bool().unwrap_or(false) {
        config.refresh_before = None;
    }
    if let Some(token) = cmd["token"].as_str() {
        config = config.token(token);
    }
    if let Some(file) = cmd["token_file"].as_str() {
        let file = file.to_owned();
        config = config.token_source(move || {
            let file = file.clone();
            async move {
                emit(json!({"event": "token_requested"}));
                Ok(tokio::fs::read_to_string(&file).await?.trim().to_owned())
            }
        });
    }
    config
}

async fn forward(mut events: Events) {
    while let Some(event) = events.next().await {
        if let Some(v) = event_json(&event) {
            emit(v);
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut client: Option<Client> = None;
    let mut forwarder = None;
    while let Some(line) = lines.next_line().await? {
        let cmd: Value = serde_json::from_str(&line)?;
        match cmd["cmd"].as_str().unwrap_or_default() {
            "connect" => {
                let (c, events) = gateway_client::connect(config(&cmd));
                forwarder = Some(tokio::spawn(forward(events)));
                client = Some(c);
            }
            "subscribe" => {
                let Some(c) = client.clone() else { continue };
                let topic = cmd["topic"].as_str().unwrap_or_default().to_owned();
                let since: Option<Position> = serde_json::from_value(cmd["since"].clone()).ok();
                tokio::spawn(async move {
                    if let Err(e) = c.subscribe(&topic, since).await {
                        emit(
                            json!({"event": "error", "code": e.code(), "message": e.to_string(), "topic": topic}),
                        );
                    }
                });
            }
            "publish" => {
                let Some(c) = client.clone() else { continue };
                tokio::spawn(async move {
                    let topic = cmd["topic"].as_str().unwrap_or_default();
                    let options = PublishOptions {
                        id: cmd["id"].as_str(),
                        exclude_self: cmd["exclude_self"].as_bool().unwrap_or(false),
                    };
                    match c.publish_with(topic, &cmd["data"], options).await {
                        Ok(seq) => emit(json!({"event": "published", "topic": topic, "seq": seq})),
                        Err(e) => emit(
                            json!({"event": "publish_error", "topic": topic, "code": e.code(), "message": e.to_string()}),
                        ),
                    }
                });
            }
            "close" => {
                if let Some(c) = client.take() {
                    c.close().await;
                }
                if let Some(f) = forwarder.take() {
                    f.await?;
                }
                emit(json!({"event": "closed"}));
            }
            other => emit(json!({"event": "error", "code": "unknown_command", "message": other})),
        }
    }
    if let Some(c) = client {
        c.close().await;
    }
    Ok(())
}
