//! `gateway client`: a small terminal client, to try a gateway in a minute.
//!
//! Built on the `gateway-client` crate, so it reconnects, resumes and de-duplicates like any
//! app would: it subscribes to the given topics, prints what happens as one JSON line each
//! (`welcome`, `subscribed`, `published`, `message`, `gap`, `disconnected`, `reconnecting`),
//! and publishes each line typed on stdin: `TOPIC JSON` (e.g. `chat {"text":"hi"}`), or plain
//! text, which is sent as a JSON string to the first subscribed topic.

use clap::Args;
use futures_util::StreamExt;
use gateway_client::{ClientConfig, Event};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Gateway WebSocket URL (comma-separate several: tried in turn on each reconnect).
    #[arg(
        long,
        env = "GATEWAY_URL",
        default_value = "ws://127.0.0.1:8080/ws",
        value_delimiter = ','
    )]
    pub url: Vec<String>,
    /// Topics to subscribe to (repeat or comma-separate).
    #[arg(long, short, value_delimiter = ',')]
    pub subscribe: Vec<String>,
    /// A JWT for `hello`, when the gateway requires one.
    #[arg(long, env = "GATEWAY_CLIENT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Re-read the token from this file whenever a new one is needed (`token_expired`, and
    /// before `exp`), e.g. a file a token agent keeps fresh.
    #[arg(long, env = "GATEWAY_CLIENT_TOKEN_FILE")]
    pub token_file: Option<std::path::PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Client(#[from] gateway_client::ClientError),
    #[error("stdin: {0}")]
    Io(#[from] std::io::Error),
}

fn config(args: &ClientArgs) -> ClientConfig {
    let mut config = ClientConfig::new(args.url.clone());
    if let Some(token) = &args.token {
        config = config.token(token.clone());
    }
    if let Some(file) = args.token_file.clone() {
        config = config.token_source(move || {
            let file = file.clone();
            async move { Ok(tokio::fs::read_to_string(&file).await?.trim().to_owned()) }
        });
    }
    config
}

/// One JSON line for an event (`None`: nothing to print).
fn event_line(event: &Event) -> Option<Value> {
    Some(match event {
        Event::Connected {
            session,
            pod,
            user,
            resumed,
        } => {
            json!({"type": "welcome", "session": session, "pod": pod, "user": user, "resumed": resumed})
        }
        Event::Subscribed { topic, position } => {
            json!({"type": "subscribed", "topic": topic, "seq": position.seq, "epoch": position.epoch})
        }
        Event::Message(m) => {
            let data: Value = serde_json::from_str(m.data.get()).ok()?;
            json!({"type": "message", "topic": m.topic, "seq": m.seq, "epoch": m.epoch, "data": data})
        }
        Event::Gap(g) => json!({
            "type": "gap", "topic": g.topic, "reason": g.reason.as_str(),
            "from": g.from.as_ref().map(|p| p.seq), "to": g.to.seq, "epoch": g.to.epoch,
        }),
        Event::Unsubscribed { topic, reason } => {
            json!({"type": "unsubscribed", "topic": topic, "reason": reason})
        }
        Event::Disconnected { code, reason, .. } => {
            json!({"type": "disconnected", "code": code, "reason": reason})
        }
        Event::Reconnecting { attempt, delay } => {
            json!({"type": "reconnecting", "attempt": attempt, "delay_ms": delay.as_millis() as u64})
        }
        Event::Refreshed { exp } => json!({"type": "refreshed", "exp": exp}),
        Event::Presence(e) => json!({
            "type": if e.join { "join" } else { "leave" }, "topic": e.topic, "pseq": e.pseq,
            "epoch": e.epoch, "member": {"user": e.member.user, "session": e.member.session},
        }),
        Event::PresenceList {
            topic,
            members,
            pseq,
            epoch,
        } => json!({
            "type": "presence", "topic": topic, "pseq": pseq, "epoch": epoch, "recovered": false,
            "members": members.iter().map(|m| json!({"user": m.user, "session": m.session})).collect::<Vec<_>>(),
        }),
        Event::Error(e) => json!({"type": "error", "code": e.code(), "message": e.to_string()}),
        Event::Duplicate { .. } | Event::Closed { .. } => return None,
    })
}

/// Runs the client until stdin ends (then closes cleanly) or the gateway says not to reconnect.
pub async fn run(args: ClientArgs) -> Result<(), ClientError> {
    let (client, mut events) = gateway_client::connect(config(&args));
    for topic in &args.subscribe {
        let client = client.clone();
        let topic = topic.clone();
        // Subscriptions are confirmed (and printed) by the event stream; errors come there too.
        tokio::spawn(async move { client.subscribe(&topic, None).await });
    }
    let default_topic = args.subscribe.first().cloned();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Event::Closed { error }) => return error.map_or(Ok(()), |e| Err(e.into())),
                Some(event) => {
                    if let Some(line) = event_line(&event) {
                        println!("{line}");
                    }
                }
                None => return Ok(()),
            },
            line = lines.next_line(), if stdin_open => match line? {
                None => {
                    stdin_open = false;
                    client.close().await;
                }
                Some(line) if line.trim().is_empty() => {}
                Some(line) => match parse_line(&line, default_topic.as_deref()) {
                    Some((topic, data)) => {
                        let client = client.clone();
                        tokio::spawn(async move {
                            match client.publish(&topic, &data, None).await {
                                Ok(seq) => println!("{}", json!({"type": "published", "topic": topic, "seq": seq})),
                                Err(e) => println!("{}", json!({"type": "error", "code": e.code(), "message": e.to_string()})),
                            }
                        });
                    }
                    None => eprintln!("type `TOPIC JSON`, or subscribe to a topic to send plain text"),
                },
            },
        }
    }
}

/// `TOPIC JSON` publishes JSON to TOPIC; anything else is a string for the default topic.
fn parse_line(line: &str, default_topic: Option<&str>) -> Option<(String, Value)> {
    let line = line.trim();
    match line.split_once(' ') {
        Some((topic, rest)) if gateway_client::valid_topic(topic) => {
            if let Ok(data) = serde_json::from_str::<Value>(rest) {
                return Some((topic.to_owned(), data));
            }
        }
        _ => {}
    }
    Some((default_topic?.to_owned(), Value::String(line.to_owned())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_become_publishes() {
        assert_eq!(
            parse_line(r#"chat {"a":1}"#, None),
            Some(("chat".into(), json!({"a": 1})))
        );
        assert_eq!(
            parse_line("hello there", Some("room")),
            Some(("room".into(), json!("hello there")))
        );
        assert_eq!(parse_line("hello there", None), None);
    }
}
